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

from fastnn import cli, config, files, model, tolerances
from fastnn import train as train_cli
from fastnn.kernels import KERNELS, REFERENCE, get_kernel
from fastnn.kernels.numpy_ref import to_float


def sample_order(seed, n, n_samples, batch_size, shift=0):
    """The --compare batches: (order, shifts) pieces, order the sample indices,
    permutations of range(n) one after another cut to n_samples, and shifts each
    position's (dy, dx) within +-shift (None without). In pieces of whole batches
    (about one permutation each), so memory stays O(n) however many --compare-steps
    are asked for."""
    rng = np.random.default_rng(seed)
    piece = batch_size * -(-n // batch_size)
    pending = np.empty(0, dtype=np.int64)
    while n_samples > 0:
        take = min(piece, n_samples)
        while len(pending) < take:
            pending = np.concatenate([pending, rng.permutation(n)])
        shifts = rng.integers(-shift, shift + 1, size=(take, 2)) if shift else None
        yield pending[:take], shifts
        pending, n_samples = pending[take:], n_samples - take


def measure(name, params0, train, test, pieces, batch_size, lr, distort=None):
    """Everything --compare needs from one backend, from a fresh copy of params0;
    ``pieces()`` yields the batches' (order, shifts) in pieces (sample_order)."""
    kernel = get_kernel(name)
    dtype = params0[0][0].dtype
    order, shifts = next(pieces())
    # augmentation arguments only when asked: a backend without augmentation still compares
    augmenting = shifts is not None or distort is not None
    compile_seconds = kernel.warmup(model.sizes_of(params0), dtype, batch_size, augmenting)
    idx = order[:batch_size]
    X, y = to_float(train[0][idx], dtype), train[1][idx]
    # the first batch: probabilities, loss and gradients against the reference's
    rows = None if name == REFERENCE else tolerances.batch_rows(kernel, params0, X, y)
    images = (kernel.gather(train[0], idx, dtype, None if shifts is None else
                            shifts[:batch_size], distort) if augmenting else None)
    params = model.copy_params(params0)
    seconds = samples = 0
    for order, shifts in pieces():
        t0 = time.perf_counter()
        augmented = dict(shifts=shifts, distort=distort) if augmenting else {}
        kernel.train_epoch(params, train[0], train[1], order, batch_size, lr, **augmented)
        seconds += time.perf_counter() - t0
        samples += len(order)
    accuracy = float(np.mean(kernel.predict(params, test[0]) == test[1]))
    return dict(batch_rows=rows, params=params, test_accuracy=accuracy,
                seconds=seconds, images=images, samples_per_second=samples / seconds,
                compile_seconds=compile_seconds)


def run(args, data, out=None):
    out = out or sys.stdout
    train, test = data
    config.set_threads(args.threads)
    dtype = model.DTYPES[args.dtype]
    sizes = model.layer_sizes(args.hidden)
    bs = args.batch_size or len(train[0])
    params0 = model.init_params(sizes, seed=args.seed, dtype=dtype, init=args.init)

    def pieces():
        return sample_order(args.seed, len(train[0]), args.compare_steps * bs, bs, args.shift)

    # the distortion's key from a generator of its own: the batches stay those of an
    # unaugmented run
    distort = train_cli.draw_distortion(np.random.default_rng(args.seed), args)
    results = {name: measure(name, params0, train, test, pieces, bs, args.lr, distort)
               for name in KERNELS}
    ref = results[REFERENCE]

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
        rows = ([] if res["images"] is None else
                [tolerances.images_row(res["images"], ref["images"], dtype, distort)])
        rows += res["batch_rows"]
        rows += tolerances.params_rows(res["params"], ref["params"], args.compare_steps, dtype)
        for r in rows:
            ok &= r["ok"]
            label, bound = ((r["quantity"] + " (atol)", r["atol"]) if "atol" in r
                            else (r["quantity"], r["rtol"]))
            lines.append(f"  {label:<24} {r['max_abs']:13.3e} {r['max_rel']:13.3e} "
                         f"{bound:10.1e}  {'yes' if r['ok'] else 'NO'}")
        report["backends"][name] = dict(agreement=rows)
        lines.append("")
    w = max(len(name) for name in results)
    lines.append(f"  {'backend':<{w}} {'test acc':>9} {'samples/s':>12} {'speed-up':>9} "
                 f"{'compile s':>10}")
    for name, res in results.items():
        speedup = res["samples_per_second"] / ref["samples_per_second"]
        lines.append(f"  {name:<{w}} {100 * res['test_accuracy']:8.2f}% "
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
        with cli.writing("--json"):
            files.write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1
