"""`python -m fastnn.bench`: do the backends agree, and how fast do they train and predict?

One process, in this order:

1. a machine line (CPU, cores, versions, commit, date) and which data was used;
2. agreement: every backend (and the PyTorch peer, when importable) against
   the reference, per config: forward, loss and every gradient on one batch,
   the params after 4 train_epoch steps, the predicted test labels; any
   disagreement stops the report with exit code 1;
3. throughput: training samples/s (``train_epoch`` over the same seeded
   samples, median of ``--repeats``) and inference samples/s (``predict``
   over the 10000 test images), each backend's ratio to the reference;
4. thread scaling of the non-reference backends (1 thread vs all threads);
5. compile time of the non-reference backends in fresh interpreters: cold
   (empty NUMBA_CACHE_DIR) and warm (the cache the cold run wrote).

Markdown tables on stdout (pasteable into the README), ``--json PATH`` for
the same numbers. Every backend is compiled before it is timed. The backends
being compared are timed in rounds, one run each per round, each run after a
short idle pause (see SETTLE_SECONDS), so that neither a slow phase of a
shared machine nor another backend's idling threads favour one of them; a
run repeats its call until it has lasted benchkit.MIN_RUN_SECONDS, so a fast
backend's runs are not too short to measure.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from fastnn import benchkit, cli, config, model, peers
from fastnn.kernels import KERNELS, REFERENCE, get_kernel

DEFAULT_GRID = [(10, 32), (10, 128), (128, 128), (800, 128)]  # (hidden, batch size)
QUICK_GRID = [(10, 128)]
SCALING_CONFIG = (128, 128)  # (hidden, batch size) of the thread-scaling table
DEFAULT_SAMPLES, QUICK_SAMPLES = 20000, 2048
DEFAULT_REPEATS = 9  # rounds: the machine this was tuned on swings 20-50% within seconds
PEER = "torch"


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastnn.bench",
        description="Check every backend against the reference, then measure training and "
        "inference samples/s, thread scaling and compile time. Default grid: 784-10-10 at "
        "batch 32 and 128, 784-128-10 and 784-800-10 at batch 128, float32.")
    p.add_argument("--hidden", type=cli.positive_int, nargs="+", metavar="N",
                   help="hidden widths to measure (with --batch-size: their product; "
                   "default batch 128)")
    p.add_argument("--batch-size", type=cli.positive_int, nargs="+", metavar="N",
                   help="batch sizes to measure (default hidden: 10 128 800)")
    p.add_argument("--dtype", nargs="+", choices=list(model.DTYPES), default=None,
                   help="float types (default: float32)")
    p.add_argument("--repeats", type=cli.positive_int,
                   help=f"timed runs per figure, the median is reported (default "
                   f"{DEFAULT_REPEATS}, 1 with --quick)")
    p.add_argument("--samples", type=cli.positive_int,
                   help=f"training samples per timed run, rounded up to whole batches, at "
                   f"least 8 batches (default {DEFAULT_SAMPLES}, {QUICK_SAMPLES} with --quick)")
    p.add_argument("--threads", type=cli.positive_int,
                   help="threads for the numba backends and PyTorch (default: all)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the compile-time section (each cold compile takes ~10-20 s)")
    p.add_argument("--quick", action="store_true",
                   help="tiny run to check the machinery: 784-10-10 at batch 128, 1 repeat")
    return p


def resolve(args):
    """The configs [(hidden, batch, dtype)], repeats and samples the flags ask for."""
    if args.hidden or args.batch_size:
        hidden = args.hidden or sorted({h for h, _ in DEFAULT_GRID})
        pairs = list(itertools.product(hidden, args.batch_size or [128]))
    else:
        pairs = QUICK_GRID if args.quick else DEFAULT_GRID
    dtypes = args.dtype or ["float32"]
    configs = [(h, b, d) for d in dtypes for h, b in pairs]
    repeats = args.repeats or (1 if args.quick else DEFAULT_REPEATS)
    samples = args.samples or (QUICK_SAMPLES if args.quick else DEFAULT_SAMPLES)
    return configs, repeats, samples


# ---------------------------------------------------------------- machine line


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit():
    """Short commit of the checkout fastnn is imported from (+dirty), or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        def git(*a):
            return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _peer_version():
    """The PyTorch peer's version, or None when it cannot be imported."""
    return None if peers.reason(PEER) else peers.get_peer(PEER).version()


def machine_info():
    import numba

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # older numpy: no dict mode
        blas = None
    return dict(cpu=_cpu_model(), cores=os.cpu_count(), os=f"{platform.system()} "
                f"{platform.machine()}", python=platform.python_version(),
                numpy=np.__version__, blas=blas, numba=numba.__version__,
                torch=_peer_version(), commit=_git_commit(),
                date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))


def machine_line(m):
    parts = [f"{m['cpu']} ({m['cores']} cores)", m["os"], f"Python {m['python']}",
             f"numpy {m['numpy']}" + (f" ({m['blas']})" if m["blas"] else ""),
             f"numba {m['numba']}"]
    if m["torch"]:
        parts.append(f"torch {m['torch']}")
    parts += [f"fastnn {m['commit'] or 'unknown commit'}", m["date"]]
    return "Machine: " + ", ".join(parts)


# ---------------------------------------------------------------- sections


def _net(hidden):
    return "-".join(map(str, model.layer_sizes([hidden])))


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(
        "---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def _rate(x):
    return f"{x:,.0f}" if x is not None else "-"


def _ratio(x):
    return f"{x:.2f}x" if x is not None else "-"


def _ok(row):
    if not row["ok"]:
        return "NO"
    return "yes*" if any("note" in c for c in row["checks"]) else "yes"


def _backend(name):
    """A registered backend, or the PyTorch peer module (same functions) for PEER."""
    return peers.get_peer(PEER) if name == PEER else get_kernel(name)


def agreement(configs, data, peer, emit):
    """Every backend but the reference, per config: forward, loss and grads on one
    batch, 4 training steps (train_epoch) and the predicted test labels."""
    others = [k for k in KERNELS if k != REFERENCE] + ([PEER] if peer else [])
    rows = []
    for (hidden, bs, dtype), name in itertools.product(configs, others):
        params = benchkit.make_params(hidden, dtype)
        X, y = benchkit.batch(data.train_images, data.train_labels, bs, dtype)
        backend = _backend(name)
        kw = dict(strict=False)
        step = benchkit.check_loss_and_grads(backend, params, X, y, **kw)
        train = benchkit.check_train(backend, params, data.train_images, data.train_labels,
                                     bs, **kw)
        pred = benchkit.check_predict(backend, params, data.test_images, **kw)
        checks = benchkit.check_forward(backend, params, X, **kw) + step + train + pred
        rows.append(dict(backend=name, net=_net(hidden), hidden=hidden, batch_size=bs,
                         dtype=dtype, forward=checks[0]["max_rel"],
                         loss=step[0]["max_rel"], grads=benchkit.worst(step[1:]),
                         train=benchkit.worst(train), predict=pred[0]["max_rel"],
                         rtol=checks[0]["rtol"], ok=all(c["ok"] for c in checks),
                         checks=checks))
    emit(f"## Agreement with the reference ({REFERENCE}): one batch per config")
    emit("")
    emit("Largest |difference| relative to max|reference| (fastnn.tolerances: rtol, plus "
         "atol = rtol*max|ref|; params after 4 train_epoch steps: the trajectory rtol); "
         "predict = fraction of the test labels that differ (near-ties allowed).")
    emit("")
    for line in _table(["backend", "net", "batch", "dtype", "forward", "loss", "grads",
                        "4 steps", "predict", "rtol", "ok"],
                       [[r["backend"], r["net"], r["batch_size"], r["dtype"],
                         f"{r['forward']:.1e}", f"{r['loss']:.1e}", f"{r['grads']:.1e}",
                         f"{r['train']:.1e}", f"{r['predict']:.4f}", f"{r['rtol']:g}", _ok(r)]
                        for r in rows]):
        emit(line)
    ok = all(r["ok"] for r in rows)
    emit("")
    if any(_ok(r) == "yes*" for r in rows):
        emit("yes* = outside the tolerance only where a pre-activation sits within rounding "
             "of 0 (a ReLU kink): the backend is no further from float64 than the reference.")
        emit("")
    emit("All backends agree with the reference." if ok else
         "DISAGREEMENT: a backend exceeds the tolerance (rows marked NO); not timing it.")
    emit("")
    return ok, rows


def _samples(samples, bs):
    """Training samples per timed run: ``samples`` rounded up to whole batches, >= 8 batches."""
    return max(-(-samples // bs), 8) * bs


def _median(xs):
    return float(np.median(xs))


# Seconds of idle before each timed run. After a NumPy matmul, OpenBLAS's worker
# threads spin for ~0.1 s waiting for more work; a Numba run started inside
# that window shares its cores with them (measured: 784-10-10 numba at batch
# 128 ran at ~0.5x right after NumPy runs, at full speed after a pause).
SETTLE_SECONDS = 0.25


def _interleaved(runs, repeats):
    """{key: run() -> samples/s} timed round-robin: ``repeats`` rounds, each key once
    per round (the first key rotating), after SETTLE_SECONDS of idle. Slow phases
    of a shared machine then hit every key alike. Returns {key: (median, rates)}."""
    keys = list(runs)
    rates = {key: [] for key in keys}
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            time.sleep(SETTLE_SECONDS)
            rates[key].append(runs[key]())
    return {key: (_median(x), x) for key, x in rates.items()}


def _warm(name, params):
    """Compile (or load) a backend's kernels for params: never timed."""
    backend = _backend(name)
    backend.warmup(model.sizes_of(params), params[0][0].dtype)
    return backend


def _train_run(backend, params, data, bs, samples):
    return lambda: benchkit.train_rates(backend, params, data.train_images, data.train_labels,
                                        bs, samples, 1, min_seconds=benchkit.MIN_RUN_SECONDS)[0]


def _predict_run(backend, params, data):
    return lambda: benchkit.predict_rates(backend, params, data.test_images, 1,
                                          min_seconds=benchkit.MIN_RUN_SECONDS)[0]


def throughput(configs, data, names, samples, repeats, emit):
    """Training rows per (hidden, batch, dtype) and inference rows per (hidden, dtype)."""
    others = [n for n in names if n != REFERENCE]
    train_rows, infer_rows = [], {}
    for hidden, bs, dtype in configs:
        params = benchkit.make_params(hidden, dtype)
        row = dict(net=_net(hidden), hidden=hidden, batch_size=bs, dtype=dtype,
                   samples=_samples(samples, bs), samples_per_second={}, repeats={})
        backends = {name: _warm(name, params) for name in names}
        timed = _interleaved({name: _train_run(backends[name], params, data, bs, row["samples"])
                              for name in names}, repeats)
        for name in names:
            row["samples_per_second"][name], row["repeats"][name] = timed[name]
        ref = row["samples_per_second"][REFERENCE]
        row["speedup"] = {n: row["samples_per_second"][n] / ref for n in names if n != REFERENCE}
        train_rows.append(row)
        if (hidden, dtype) not in infer_rows:
            irow = dict(net=_net(hidden), hidden=hidden, dtype=dtype,
                        images=len(data.test_images), samples_per_second={}, repeats={})
            timed = _interleaved({name: _predict_run(backends[name], params, data)
                                  for name in names}, repeats)
            for name in names:
                irow["samples_per_second"][name], irow["repeats"][name] = timed[name]
            ref = irow["samples_per_second"][REFERENCE]
            irow["speedup"] = {n: irow["samples_per_second"][n] / ref
                               for n in names if n != REFERENCE}
            infer_rows[hidden, dtype] = irow
    infer_rows = list(infer_rows.values())

    emit(f"## Training throughput (samples/s, median of {repeats})")
    emit("")
    emit("train_epoch over the same seeded samples (the `samples` column), from the same "
         f"initial params, called again until a run has lasted {benchkit.MIN_RUN_SECONDS:g} s; "
         "x = ratio to the reference.")
    emit("")
    head = ["net", "batch", "dtype", "samples", *names, *[f"{n} / {REFERENCE}" for n in others]]
    for line in _table(head, [[r["net"], r["batch_size"], r["dtype"], r["samples"],
                               *[_rate(r["samples_per_second"][n]) for n in names],
                               *[_ratio(r["speedup"][n]) for n in others]]
                              for r in train_rows]):
        emit(line)
    emit("")
    emit(f"## Inference throughput (samples/s, median of {repeats}): predict over the "
         f"{len(data.test_images)} test images, again until a run has lasted "
         f"{benchkit.MIN_RUN_SECONDS:g} s")
    emit("")
    head = ["net", "dtype", *names, *[f"{n} / {REFERENCE}" for n in others]]
    for line in _table(head, [[r["net"], r["dtype"],
                               *[_rate(r["samples_per_second"][n]) for n in names],
                               *[_ratio(r["speedup"][n]) for n in others]]
                              for r in infer_rows]):
        emit(line)
    emit("")
    return train_rows, infer_rows


def _with_threads(n, run):
    def timed():
        config.set_threads(n)
        return run()
    return timed


def scaling(cfg, data, samples, repeats, emit):
    """Training and inference samples/s of every non-reference backend at 1 and all threads."""
    hidden, bs, dtype = cfg
    counts = sorted({1, config.max_threads()})
    params = benchkit.make_params(hidden, dtype)
    rows = []
    for name in (n for n in KERNELS if n != REFERENCE):
        row = dict(backend=name, net=_net(hidden), batch_size=bs, dtype=dtype,
                   samples=_samples(samples, bs), threads={})
        backend = _warm(name, params)
        for what, run in (("train", _train_run(backend, params, data, bs, row["samples"])),
                          ("inference", _predict_run(backend, params, data))):
            timed = _interleaved({t: _with_threads(t, run) for t in counts}, repeats)
            for t in counts:
                row["threads"].setdefault(t, {})[what] = timed[t][0]
                row.setdefault("repeats", {}).setdefault(t, {})[what] = timed[t][1]
        rows.append(row)
    emit(f"## Thread scaling (numba threads, median of {repeats})")
    emit("")
    head = ["backend", "net", "batch", "dtype"]
    for t in counts:
        head += [f"train {t} thr", f"infer {t} thr"]
    if len(counts) > 1:
        head += [f"train {counts[-1]}/1", f"infer {counts[-1]}/1"]
    body = []
    for r in rows:
        th = r["threads"]
        line = [r["backend"], r["net"], r["batch_size"], r["dtype"]]
        for t in counts:
            line += [_rate(th[t]["train"]), _rate(th[t]["inference"])]
        if len(counts) > 1:
            line += [_ratio(th[counts[-1]]["train"] / th[1]["train"]),
                     _ratio(th[counts[-1]]["inference"] / th[1]["inference"])]
        body.append(line)
    for line in _table(head, body):
        emit(line)
    emit("")
    return rows


def compile_times(dtypes, emit):
    """Cold and warm warmup() seconds of every non-reference backend, per dtype."""
    rows = []
    for name, dtype in itertools.product([n for n in KERNELS if n != REFERENCE], dtypes):
        secs = benchkit.compile_seconds(name, dtype)
        rows.append(dict(backend=name, dtype=dtype, cold_seconds=secs["cold"],
                         warm_seconds=secs["warm"]))
    emit("## Compile time (seconds, one run each, fresh interpreters)")
    emit("")
    emit("warmup() of the training and predict kernels: cold = empty NUMBA_CACHE_DIR, "
         f"warm = the cache the cold run wrote. {REFERENCE}: nothing to compile. "
         "Never part of the throughput figures.")
    emit("")
    for line in _table(["backend", "dtype", "cold", "warm"],
                       [[r["backend"], r["dtype"], f"{r['cold_seconds']:.2f}",
                         f"{r['warm_seconds']:.2f}"] for r in rows]):
        emit(line)
    emit("")
    return rows


def run(args, emit=print):
    """The whole report; returns (exit code, JSON-able dict)."""
    configs, repeats, samples = resolve(args)
    data = benchkit.load_data()
    peer_note = peers.reason(PEER)
    peer = peer_note is None
    threads = args.threads or config.max_threads()
    names = list(KERNELS) + ([PEER] if peer else [])
    m = machine_info()
    report = dict(machine=m, data=data.source, reference=REFERENCE, backends=names,
                  settings=dict(threads=threads, repeats=repeats, samples=samples,
                                min_run_seconds=benchkit.MIN_RUN_SECONDS,
                                test_images=len(data.test_images), lr=benchkit.LR,
                                configs=[dict(hidden=h, batch_size=b, dtype=d)
                                         for h, b, d in configs], quick=bool(args.quick)),
                  peer=dict(name=PEER, version=m["torch"],
                            note=peer_note))
    emit("# fastnn benchmark report")
    emit("")
    emit(machine_line(m))
    emit(f"Data: {data.source}. Threads: {threads} (numba"
         + (", torch" if peer else "") + f"). Repeats: {repeats} (medians).")
    if not peer:
        emit(f"No peer column: {peer_note}.")
    emit("")
    ok, report["agreement"] = agreement(configs, data, peer, emit)
    report["agree"] = ok
    if not ok:
        return 1, report
    config.set_threads(threads)
    if peer:
        peers.get_peer(PEER).set_threads(threads)
    report["train"], report["inference"] = throughput(configs, data, names, samples, repeats,
                                                      emit)
    cfg = configs[0] if args.quick else (*SCALING_CONFIG, configs[0][2])
    report["scaling"] = scaling(cfg, data, samples, repeats, emit)
    config.set_threads(threads)
    if args.no_compile:
        report["compile"] = []
        emit("## Compile time: skipped (--no-compile)")
        emit("")
    else:
        report["compile"] = compile_times(sorted({d for _, _, d in configs}), emit)
    return 0, report


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads and args.threads > config.max_threads():
        parser.error(f"--threads {args.threads}: this machine allows at most "
                     f"{config.max_threads()} (NUMBA_NUM_THREADS)")
    before = config.set_threads(None)
    try:
        code, report = run(args, emit=lambda line: print(line, flush=True))
    finally:
        config.set_threads(before)
    if args.json:
        model.atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
