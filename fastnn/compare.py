"""`python -m fastnn.train --compare`: every backend, same start, same batches.

Checks each backend against the reference on one batch (probabilities, loss,
every gradient, and the batch's images as shifted and distorted when the run
asks for that), then trains each from the same initial parameters through
the same ``--compare-steps`` batches (augmented likewise) and compares the
parameters, test accuracy and speed. Exit code 1 when any difference
exceeds tolerances.py.
"""

import json
import sys
import time

import numpy as np

from fastnn import config, model, tolerances
from fastnn import train as train_cli
from fastnn.kernels import KERNELS, REFERENCE, get_kernel, numpy_ref
from fastnn.kernels.numpy_ref import to_float


def _names(params):
    return [f"{w}{i + 1}" for i in range(len(params)) for w in ("W", "b")]


def _flat(params_or_grads):
    return [a for pair in params_or_grads for a in pair]


def measure(name, params0, train, test, order, batch_size, lr, shifts=None, distort=None):
    """Everything --compare needs from one backend, from a fresh copy of params0."""
    kernel = get_kernel(name)
    dtype = params0[0][0].dtype
    compile_seconds = kernel.warmup(model.sizes_of(params0), dtype)
    idx = order[:batch_size]
    X, y = to_float(train[0][idx], dtype), train[1][idx]
    P = kernel.forward(params0, X)
    loss, grads = kernel.loss_and_grads(params0, X, y)
    augmented = {}  # only when asked: a backend without augmentation still compares
    if shifts is not None or distort is not None:
        augmented = dict(shifts=shifts, distort=distort)
        images = kernel.gather(train[0], idx, dtype, None if shifts is None else
                               shifts[:batch_size], distort)
    params = model.copy_params(params0)
    t0 = time.perf_counter()
    kernel.train_epoch(params, train[0], train[1], order, batch_size, lr, **augmented)
    seconds = time.perf_counter() - t0
    accuracy = float(np.mean(kernel.predict(params, test[0]) == test[1]))
    return dict(probabilities=P, loss=np.array(loss), grads=_flat(grads), params=_flat(params),
                test_accuracy=accuracy, seconds=seconds, images=images if augmented else None,
                samples_per_second=len(order) / seconds, compile_seconds=compile_seconds)


def run(args, data, out=None):
    out = out or sys.stdout
    train, test = data
    config.set_threads(args.threads)
    dtype = model.DTYPES[args.dtype]
    sizes = model.layer_sizes(args.hidden)
    bs = args.batch_size or len(train[0])
    params0 = model.init_params(sizes, seed=args.seed, dtype=dtype, init=args.init)
    rng = np.random.default_rng(args.seed)
    n_samples = args.compare_steps * bs
    order = np.concatenate([rng.permutation(len(train[0]))
                            for _ in range(-(-n_samples // len(train[0])))])[:n_samples]
    shifts = (rng.integers(-args.shift, args.shift + 1, size=(n_samples, 2)) if args.shift
              else None)
    distort = train_cli.draw_distortion(rng, args)

    results = {name: measure(name, params0, train, test, order, bs, args.lr, shifts, distort)
               for name in KERNELS}
    ref = results[REFERENCE]
    names = _names(params0)
    # softmax outputs and the loss get tolerances scaled by the logits' size
    zscale = tolerances.logit_scale(numpy_ref.logits(params0, to_float(train[0][order[:bs]],
                                                                       dtype)))
    checks = [("probabilities", "probabilities", None, False, zscale),
              ("loss", "loss", None, False, zscale)]
    checks += [(f"d{n}", "grads", i, False, 1.0) for i, n in enumerate(names)]
    checks += [(f"{n} after {args.compare_steps} steps", "params", i, True, 1.0)
               for i, n in enumerate(names)]

    report, ok = {"config": dict(sizes=sizes, dtype=args.dtype, batch_size=bs, lr=args.lr,
                                 steps=args.compare_steps, seed=args.seed,
                                 threads=config.set_threads(None),
                                 augmentation=train_cli.augmentation_text(args)[2:] or None),
                   "backends": {}}, True
    lines = [f"fastnn --compare: {'-'.join(map(str, sizes))}, {args.dtype}, batch {bs}, "
             f"{args.compare_steps} steps{train_cli.augmentation_text(args)}, "
             f"reference = {REFERENCE}", ""]
    for name, res in results.items():
        if name == REFERENCE:
            continue
        lines += [f"{name} vs {REFERENCE}", f"  {'quantity':<24} {'max abs diff':>13} "
                  f"{'max rel diff':>13} {'rtol':>10}  ok"]
        rows = []
        if res["images"] is not None:
            # an absolute bound for intensities in [0, 1] (tolerances.distortion_atol; an
            # integer shift alone is exact)
            atol = (tolerances.distortion_atol(dtype, distort.alpha, distort.sigma)
                    if distort is not None else 0.0)
            abs_diff, rel_diff = tolerances.differences(res["images"], ref["images"])
            passed = abs_diff <= atol
            ok &= passed
            rows.append(dict(quantity="augmented images", max_abs=abs_diff, max_rel=rel_diff,
                             atol=atol, ok=passed))
            lines.append(f"  {'augmented images (atol)':<24} {abs_diff:13.3e} {rel_diff:13.3e} "
                         f"{atol:10.1e}  {'yes' if passed else 'NO'}")
        for label, key, i, traj, scale in checks:
            a = res[key] if i is None else res[key][i]
            r = ref[key] if i is None else ref[key][i]
            rtol = tolerances.rtol_for(dtype, traj, scale)
            passed = tolerances.worst_ratio(a, r, rtol) <= 1.0
            abs_diff, rel_diff = tolerances.differences(a, r)
            ok &= passed
            rows.append(dict(quantity=label, max_abs=abs_diff, max_rel=rel_diff, rtol=rtol,
                             ok=passed))
            lines.append(f"  {label:<24} {abs_diff:13.3e} {rel_diff:13.3e} {rtol:10.1e}  "
                         f"{'yes' if passed else 'NO'}")
        report["backends"][name] = dict(agreement=rows)
        lines.append("")
    lines.append(f"  {'backend':<12} {'test acc':>9} {'samples/s':>12} {'speed-up':>9} "
                 f"{'compile s':>10}")
    for name, res in results.items():
        speedup = res["samples_per_second"] / ref["samples_per_second"]
        lines.append(f"  {name:<12} {100 * res['test_accuracy']:8.2f}% "
                     f"{res['samples_per_second']:12,.0f} {speedup:8.2f}x "
                     f"{res['compile_seconds']:10.2f}")
        report["backends"].setdefault(name, {}).update(
            test_accuracy=res["test_accuracy"], samples_per_second=res["samples_per_second"],
            speedup=speedup, train_seconds=res["seconds"], compile_seconds=res["compile_seconds"])
    report["agree"] = ok
    lines += ["", "all backends agree within tolerance" if ok
              else "DISAGREEMENT: a backend exceeds the tolerance (see rows marked NO)"]
    print("\n".join(lines), file=out, flush=True)
    if args.json:
        model.atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1
