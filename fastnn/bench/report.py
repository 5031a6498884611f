"""The report of `python -m fastnn.bench`: its lines about the machine (this module is the
suite's pytest plugin), then tables and JSON from pytest-benchmark's JSON; no timing here.

A figure is samples/s: the median round, ±(max - min) / 2 of the rounds as the
spread; the JSON keeps every round's figure.
"""

import datetime
import os
from statistics import median

import pytest

from fastnn.kernels import KERNELS, REFERENCE
from fastnn.peers import PEERS

ORDER = [*KERNELS, *PEERS]
FAST, BASELINE = "numba", "numpy-fast"


def pytest_benchmark_update_machine_info(config, machine_info):
    """Besides the CPU, Python and commit: the vector ISA, the BLAS and its kernel (a forced
    one warned about), the sgemm GFLOP/s at 1 and all threads (the ceiling), the versions."""
    import numba
    import numpy as np

    from fastnn import blas, peers
    from fastnn.bench.suite import SETTINGS, THREADS

    cpu = machine_info.get("cpu", {})
    versions = {"numpy": np.__version__, "numba": numba.__version__}
    for name in SETTINGS["names"]:
        if name in PEERS and not peers.available([name])[name]:
            versions[name] = peers.get_peer(name).version()
    warning = blas.forced_kernel_warning()
    gflops = blas.sgemm_gflops()
    isa = next((isa for isa, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"))
                if flag in cpu.get("flags", [])), "SSE or other")
    machine_info.update(
        isa=isa, blas=blas.libraries(), blas_warning=warning,
        sgemm_gflops={str(k): v for k, v in gflops.items()}, versions=versions,
        threads=THREADS, date=datetime.datetime.now().astimezone().isoformat(timespec="minutes"))
    machine_info["fastnn_lines"] = [
        f"Machine: {cpu.get('brand_raw', machine_info.get('processor'))} (family "
        f"{cpu.get('family')}, model {cpu.get('model')}; {isa}), {cpu.get('count')} cores, "
        f"{machine_info['system']} {machine_info['machine']}, Python "
        f"{machine_info['python_version']}, " + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; {machine_info['date']}",
        f"BLAS: {blas.summary()}.",
        "sgemm ceiling: " + ", ".join(f"{v:.0f} GFLOP/s on {k} thread{'s' * (k > 1)}"
                                      for k, v in gflops.items()) + "."
    ] + ([warning] if warning else [])


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own
def pytest_benchmark_generate_commit_info(config):
    """The commit of the git checkout that holds the fastnn measured ("unknown" outside
    one), not pytest-benchmark's default, the working directory's."""
    from pytest_benchmark.utils import get_commit_info

    import fastnn

    here = os.getcwd()
    os.chdir(os.path.dirname(os.path.abspath(fastnn.__file__)))
    try:
        return get_commit_info("fastnn")
    finally:
        os.chdir(here)


def _rows(benchmarks, test, key):
    """A row per value of the ``key`` fields among one test function's benchmarks."""
    rows = {}
    for b in benchmarks:
        info = b["extra_info"]
        if b["name"].split("[")[0] != test:
            continue
        row = rows.setdefault(tuple(info[k] for k in key), dict(
            {k: info[k] for k in key}, runs={}, compile_seconds={}, worst_difference={},
            train_flop=info["train_flop"], data=info["data"]))
        row["runs"][info["name"]] = [info["samples"] / t for t in b["stats"]["data"]]
        if "sgemm_then" in info:
            row["sgemm_then"] = info["sgemm_then"]
        if "seconds_on_threads" in info:
            row.setdefault("seconds_on_threads", {})[info["name"]] = info["seconds_on_threads"]
        row["compile_seconds"][info["name"]] = info["compile_seconds"]
        row["worst_difference"][info["name"]] = info["worst_difference"]
    for row in rows.values():
        rate = row["samples_per_second"] = {n: median(r) for n, r in row["runs"].items()}
        peers = {n: v for n, v in rate.items() if n in PEERS}
        if FAST in rate and peers:
            best = row["best_peer"] = max(peers, key=peers.get)
            row["ratios"] = {f"{FAST} / {best}": rate[FAST] / peers[best]}
            if BASELINE in rate:
                row["ratios"][f"{FAST} / {BASELINE}"] = rate[FAST] / rate[BASELINE]
    return list(rows.values())


def _cell(runs):
    med = median(runs)
    spread = (max(runs) - min(runs)) / 2 / med if med else 0.0
    text = f"{med / 1e6:.2f}M" if med >= 1e6 else f"{med / 1e3:.1f}k"
    return f"{text} ±{100 * spread:.0f}%" if len(runs) > 1 else text


def _table(title, head, body, *notes):
    """A titled markdown table, any notes between the title and the table."""
    return [title, "", *notes, "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
            *("| " + " | ".join(map(str, r)) + " |" for r in body), ""]


def _throughput(title, rows, cols):
    names = [n for n in ORDER if any(n in r["runs"] for r in rows)]
    ratios = list(dict.fromkeys(k for r in rows for k in r.get("ratios", {})))
    body = [[*(r[c] for c, _ in cols),
             *(_cell(r["runs"][n]) if n in r["runs"] else "-" for n in names),
             *(f"{r['ratios'][k]:.2f}" if k in r.get("ratios", {}) else "-" for k in ratios)]
            for r in rows]
    return _table(title, [h for _, h in cols] + names + ratios, body)


def _paired(rows, bases, key):
    """(base, row, base's FAST samples/s, row's) for each row with a base of the same
    ``key`` fields, both timing FAST."""
    index = {tuple(b[k] for k in key): b for b in bases}
    for r in rows:
        base = index.get(tuple(r[k] for k in key))
        if base and FAST in base["runs"] and FAST in r["runs"]:
            yield base, r, base["samples_per_second"][FAST], r["samples_per_second"][FAST]


def _scaling(train):
    """Rows of 1 thread, all threads, their ratio, the share of the all-threads case's time
    its pacer ran on all threads, and sgemm's ratio at all threads over 1 measured right
    after the 1-thread case (its sgemm_then; "-" without it)."""
    def machine(base, threads):
        g = base.get("sgemm_then") or {}
        return f"{g[str(threads)] / g['1']:.2f}" if str(threads) in g and "1" in g else "-"

    def share(r):
        seconds = r.get("seconds_on_threads", {}).get(FAST) or {}
        total = sum(seconds.values())
        return f"{100 * seconds.get(str(r['threads']), 0.0) / total:.0f}%" if total else "-"

    return [[r["net"], r["batch_size"], r["dtype"], _cell(base["runs"][FAST]),
             f"{_cell(r['runs'][FAST])} ({r['threads']})", f"{b / a:.2f}", share(r),
             machine(base, r["threads"])]
            for base, r, a, b in _paired([r for r in train if r["threads"] > 1],
                                         [r for r in train if r["threads"] == 1],
                                         ("net", "batch_size", "dtype"))]


def _distortion_cost(train, distorted, alone):
    """Per case: plain and distorted epochs, the distorted epoch's extra time (its
    distorting, and the wider spans of ink its digits give the first layer) and the
    share of distorting alone (the same images distorted, no training, timed right after)."""
    key = ("net", "batch_size", "dtype", "threads")
    only = {tuple(r[k] for k in key): r["samples_per_second"].get(FAST) for r in alone}
    return [[*(r[k] for k in key), _cell(base["runs"][FAST]), _cell(r["runs"][FAST]),
             f"{100 * (1 - b / a):.0f}%",
             f"{100 * b / c:.0f}%" if (c := only.get(tuple(r[k] for k in key))) else "-"]
            for base, r, a, b in _paired(distorted, train, key)]


def _commit_line(info):
    """What was measured: pytest-benchmark's commit_info (pytest_benchmark_generate_commit_info)."""
    if not info.get("id") or info["id"] in ("unversioned", "unknown"):
        return "Commit: unknown (fastnn was not imported from a git checkout)."
    return (f"Commit: {info['id'][:7]}" + (" with uncommitted changes" if info.get("dirty")
                                           else "") + ".")


def render(bench_json):
    """(markdown lines, report dict) from a pytest-benchmark JSON document."""
    benches, machine = bench_json["benchmarks"], bench_json["machine_info"]
    train = _rows(benches, "test_train_epoch", ("net", "batch_size", "dtype", "threads"))
    infer = _rows(benches, "test_predict", ("net", "dtype", "threads"))
    compiled = [{k: b["extra_info"][k] for k in ("name", "dtype", "cold_seconds",
                                                 "warm_seconds")}
                for b in benches if b["name"].startswith("test_compile")]
    contended = _rows(benches, "test_train_epoch_contended",
                      ("net", "batch_size", "dtype", "threads"))
    distorted, alone = ([r for r in _rows(benches, "test_train_epoch_distorted",
                                           ("net", "batch_size", "dtype", "threads",
                                            "distortion", "part")) if r["part"] == part]
                        for part in ("epoch", "distorting"))
    report = dict(machine=machine, commit=bench_json.get("commit_info"),
                  datetime=bench_json.get("datetime"), reference=REFERENCE, train=train,
                  inference=infer, contended=contended, distorted=distorted,
                  distorting=alone, compile=compiled)
    cols = [("net", "net"), ("batch_size", "batch"), ("dtype", "dtype"), ("threads", "threads")]
    data = sorted({b["extra_info"]["data"] for b in benches if "data" in b["extra_info"]})
    lines = ["# fastnn benchmark report", "", *machine.get("fastnn_lines", []),
             _commit_line(bench_json.get("commit_info") or {}),
             *([f"Data: {'; '.join(data)}."] if data else []), ""]
    lines += _throughput("## Training: samples/s over full 60,000-image epochs (median of "
                         "the rounds, ±half their range)", train, cols)
    lines += _throughput("## Inference: samples/s, predict over the 10,000 test images",
                         infer, [c for c in cols if c[0] != "batch_size"])
    head = ["net", "batch", "dtype", "1 thread", "all threads", "ratio", "on all threads"]
    paced = ("All threads: the default, whose pieces of an epoch run on all threads or on "
             "one, whichever is faster (numba_epoch.Pacer); on all threads: the share of "
             "its timed epochs' time they ran on all threads.")
    if scaling := _scaling(train):
        lines += _table(f"## Thread scaling of {FAST}", head + ["sgemm's ratio then"],
                        scaling, paced + " sgemm's ratio then: NumPy's float32 1024x1024 "
                        "product, all threads over 1 (best of 5 each), measured right after "
                        "the 1-thread epochs: what the machine itself gave a second thread at "
                        "that minute.", "")
    if busy := _scaling(contended):
        lines += _table(f"## {FAST} with another busy process (a Python loop) running",
                        head, [r[:-1] for r in busy], paced, "")
    if cost := _distortion_cost(train, distorted, alone):
        what = distorted[0]["distortion"]
        lines += _table(f"## {FAST} with --preset record's distortion ({what})",
                        ["net", "batch", "dtype", "threads", "plain", "distorted",
                         "distorted epoch's extra time", "distorting alone"], cost,
                        "Extra time: 1 - plain / distorted samples/s, the distorting and "
                        "the wider ink of distorted digits (more rows for the first layer). "
                        "Distorting alone: the time to distort the epoch's images (no "
                        "training) over the distorted epoch's.", "")
    ceiling = machine.get("sgemm_gflops") or {}
    if gflops := [[r["net"], r["batch_size"], r["threads"],
                   f"{r['train_flop'] * r['samples_per_second'][FAST] / 1e9:.0f}",
                   f"{ceiling.get(str(r['threads']), float('nan')):.0f}"]
                  for r in train if FAST in r["samples_per_second"]]:
        lines += _table(f"## {FAST}'s training GFLOP/s against the machine's sgemm",
                        ["net", "batch", "threads", "GFLOP/s", "sgemm GFLOP/s"], gflops,
                        "FLOPs per sample: 2 n_in n_out per layer forward, as much for the "
                        "weight gradient, and again for the input gradient of every layer but "
                        "the first: the dense count, what the peers do. numba does fewer: from "
                        "64 first-layer units on images of sparse ink it computes the first "
                        "layer from the inked pixels alone (MNIST: a fifth of them), below "
                        "that it skips each group of four images' blank rows. A figure above "
                        "the sgemm ceiling is the work it did not need to do.",
                        "")
    if compiled:
        lines += _table("## Compile time (seconds): warmup() in a fresh interpreter, empty and "
                        "then filled Numba cache", ["backend", "dtype", "cold", "warm"],
                        [[c["name"], c["dtype"], f"{c['cold_seconds']:.1f}",
                          f"{c['warm_seconds']:.2f}"] for c in compiled])
    return lines, report
