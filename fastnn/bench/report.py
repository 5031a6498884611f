"""Markdown tables and the JSON report, from pytest-benchmark's JSON: no timing here.

A training figure is samples/s over a full epoch (60,000 images / one
round's seconds): the median round, and the spread of all rounds as
+-(max - min) / 2 of the median. Every round's figure is kept in the JSON.
"""

from fastnn.kernels import KERNELS, REFERENCE
from fastnn.peers import PEERS

ORDER = [*KERNELS, *PEERS]
FAST, BASELINE = "numba", "numpy-fast"


def _runs(bench):
    """samples/s of every round of one benchmark."""
    samples = bench["extra_info"]["samples"]
    return [samples / t for t in bench["stats"]["data"]]


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] + xs[(n - 1) // 2]) / 2


def _rows(benchmarks, test, key):
    """{row key: {"runs": {name: [samples/s]}, ...}} for one test function's benchmarks."""
    rows = {}
    for b in benchmarks:
        if b["name"].split("[")[0] != test:
            continue
        info = b["extra_info"]
        row = rows.setdefault(tuple(info[k] for k in key), dict(
            {k: info[k] for k in key}, runs={}, compile_seconds={}, train_flop=info["train_flop"],
            predict_flop=info["predict_flop"]))
        row["runs"][info["name"]] = _runs(b)
        row["compile_seconds"][info["name"]] = info["compile_seconds"]
    for row in rows.values():
        row["samples_per_second"] = {n: _median(r) for n, r in row["runs"].items()}
        rate = row["samples_per_second"]
        peers = {n: v for n, v in rate.items() if n in PEERS}
        if FAST in rate and peers:
            best = max(peers, key=peers.get)
            row["best_peer"] = best
            row["ratios"] = {f"{FAST} / {best}": rate[FAST] / peers[best]}
            if BASELINE in rate:
                row["ratios"][f"{FAST} / {BASELINE}"] = rate[FAST] / rate[BASELINE]
    return list(rows.values())


def _cell(runs):
    med = _median(runs)
    spread = (max(runs) - min(runs)) / 2 / med if med else 0.0
    text = f"{med / 1e6:.2f}M" if med >= 1e6 else f"{med / 1e3:.1f}k"
    return f"{text} ±{100 * spread:.0f}%" if len(runs) > 1 else text


def _table(head, body):
    return (["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1))
             + "|"] + ["| " + " | ".join(map(str, r)) + " |" for r in body])


def _throughput(rows, first_cols, title):
    names = [n for n in ORDER if any(n in r["runs"] for r in rows)]
    ratios = list(dict.fromkeys(k for r in rows for k in r.get("ratios", {})))
    body = [[*(r[c] for c, _ in first_cols),
             *(_cell(r["runs"][n]) if n in r["runs"] else "-" for n in names),
             *(f"{r['ratios'][k]:.2f}" if k in r.get("ratios", {}) else "-" for k in ratios)]
            for r in rows]
    return [title, "", *_table([h for _, h in first_cols] + names + ratios, body), ""]


def render(bench_json):
    """(markdown lines, report dict) from a pytest-benchmark JSON document."""
    benches = bench_json["benchmarks"]
    train = _rows(benches, "test_train_epoch", ("net", "batch_size", "dtype", "threads"))
    infer = _rows(benches, "test_predict", ("net", "dtype", "threads"))
    compiled = [dict(name=b["extra_info"]["name"], dtype=b["extra_info"]["dtype"],
                     cold_seconds=b["extra_info"]["cold_seconds"],
                     warm_seconds=b["extra_info"]["warm_seconds"])
                for b in benches if b["name"].startswith("test_compile")]
    machine = bench_json["machine_info"]
    report = dict(machine=machine, commit=bench_json.get("commit_info"),
                  datetime=bench_json.get("datetime"), reference=REFERENCE, train=train,
                  inference=infer, compile=compiled)
    lines = ["# fastnn benchmark report", "", *machine.get("fastnn_lines", []), ""]
    cols = [("net", "net"), ("batch_size", "batch"), ("dtype", "dtype"), ("threads", "threads")]
    lines += _throughput(train, cols, "## Training: samples/s over full 60,000-image epochs "
                         "(median of the rounds, ±half their range)")
    lines += _throughput(infer, [c for c in cols if c[0] != "batch_size"],
                         "## Inference: samples/s, predict over the 10,000 test images")
    lines += _scaling(train) + _gflops(train, machine)
    if compiled:
        lines += ["## Compile time (seconds): warmup() in a fresh interpreter, empty and then "
                  "filled Numba cache", "", *_table(
                      ["backend", "dtype", "cold", "warm"],
                      [[c["name"], c["dtype"], f"{c['cold_seconds']:.1f}",
                        f"{c['warm_seconds']:.2f}"] for c in compiled]), ""]
    return lines, report


def _scaling(train):
    one = {(r["net"], r["batch_size"], r["dtype"]): r for r in train if r["threads"] == 1}
    body = []
    for r in train:
        base = one.get((r["net"], r["batch_size"], r["dtype"]))
        if r["threads"] > 1 and base and FAST in base["runs"] and FAST in r["runs"]:
            a, b = base["samples_per_second"][FAST], r["samples_per_second"][FAST]
            body.append([r["net"], r["batch_size"], r["dtype"], _cell(base["runs"][FAST]),
                         f"{_cell(r['runs'][FAST])} ({r['threads']})", f"{b / a:.2f}"])
    if not body:
        return []
    return [f"## Thread scaling of {FAST}", "", *_table(
        ["net", "batch", "dtype", "1 thread", "all threads", "ratio"], body), ""]


def _gflops(train, machine):
    ceiling = machine.get("sgemm_gflops") or {}
    body = [[r["net"], r["batch_size"], r["threads"],
             f"{r['train_flop'] * r['samples_per_second'][FAST] / 1e9:.0f}",
             f"{ceiling.get(str(r['threads']), float('nan')):.0f}"]
            for r in train if FAST in r["samples_per_second"]]
    if not body:
        return []
    return [f"## {FAST}'s training GFLOP/s against the machine's sgemm", "",
            "FLOPs per sample: 2 n_in n_out per layer forward, as much for the weight "
            "gradient, and again for the input gradient of every layer but the first.", "",
            *_table(["net", "batch", "threads", "GFLOP/s", "sgemm GFLOP/s"], body), ""]
