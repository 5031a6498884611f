"""`python -m fastnn.bench`: the suite runs end to end, the report says what it measured,
and a backend that disagrees with the reference is caught before it could be timed.

The timings themselves are never asserted (speed goals live in the report).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from fastnn import tolerances
from fastnn.bench import report
from fastnn.kernels import KERNELS, REFERENCE, get_kernel
from fastnn.model import init_params


def test_quick_report_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "fastnn.bench", "--quick", "--data",
                          "synthetic", "--only", "numpy", "numba", "numba:simple", "numpy-fast",
                          "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout
    assert text.index("Machine: ") < text.index("## Training") < text.index("## Inference")
    assert "sgemm ceiling:" in text and "BLAS:" in text
    assert "Commit: " in text
    assert "Data: synthetic images of MNIST's shapes (--data synthetic)." in text
    data = json.loads(out.read_text())
    (row,) = data["train"]
    assert row["data"].startswith("synthetic")
    assert set(row["worst_difference"]) == set(row["runs"])  # each case's check, kept
    assert (row["net"], row["batch_size"], row["dtype"]) == ("784-10-10", 128, "float32")
    assert set(row["samples_per_second"]) == {"numpy", "numba", "numba:simple", "numpy-fast"}
    assert all(len(runs) == 1 for runs in row["runs"].values())  # --quick: one round each
    assert row["ratios"] == {"numba / numpy-fast": pytest.approx(
        row["samples_per_second"]["numba"] / row["samples_per_second"]["numpy-fast"])}
    assert data["machine"]["isa"] in ("AVX-512", "AVX2", "AVX", "SSE or other")
    assert {"numpy", "numba"} <= set(data["machine"]["versions"])


def test_headline_cases_are_timed_back_to_back(monkeypatch):
    """Per net, numba (at all threads, then at 1), jax-scan and numpy-fast come first,
    one right after the other, whatever order --only names them in."""
    from fastnn.bench import suite

    monkeypatch.setattr(suite, "THREADS", 2)
    monkeypatch.setitem(suite.SETTINGS, "scaling", True)
    monkeypatch.setitem(suite.SETTINGS, "hidden", [10, 800])
    monkeypatch.setitem(suite.SETTINGS, "batch_size", [32, 128])
    monkeypatch.setitem(suite.SETTINGS, "dtype", ["float32"])
    monkeypatch.setitem(suite.SETTINGS, "names", ["numpy", "numpy-fast", "torch", "jax-scan",
                                                  "numba"])
    assert [(n, h, t) for n, h, _, _, t in suite._cases()] == [
        ("numba", 10, 2), ("numba", 10, 1), ("jax-scan", 10, 2), ("numpy-fast", 10, 2),
        ("numpy", 10, 2), ("torch", 10, 2),
        ("numba", 800, 2), ("numba", 800, 1), ("jax-scan", 800, 2), ("numpy-fast", 800, 2),
        ("numpy", 800, 2), ("torch", 800, 2)]
    monkeypatch.setitem(suite.SETTINGS, "names", ["torch", "numpy-fast"])  # no numba
    assert [n for n, *_ in suite._cases()] == ["numpy-fast", "torch"] * 2


def _bench(name, hidden, rounds_seconds, samples=60000, test="test_train_epoch", **info):
    return dict(name=f"{test}[{name}-{hidden}]", stats=dict(data=rounds_seconds),
                extra_info=dict(dict(name=name, net=f"784-{hidden}-10", batch_size=128,
                                     dtype="float32", threads=2, samples=samples,
                                     train_flop=100, compile_seconds=0.0, data="MNIST",
                                     worst_difference=0.0),
                                **info))


def test_report_takes_medians_ratios_and_keeps_every_round():
    doc = dict(machine_info=dict(fastnn_lines=["Machine: test"], sgemm_gflops={"2": 400.0}),
               commit_info=dict(id="0123456789abcdef", dirty=True),
               benchmarks=[_bench("numba", 10, [0.5, 0.6, 0.4]),  # 120k, 100k, 150k
                           _bench("numpy-fast", 10, [2.0, 3.0]),  # 30k, 20k
                           _bench("jax-scan", 10, [1.0]),  # 60k
                           _bench("numpy", 10, [6.0])])
    lines, data = report.render(doc)
    (row,) = data["train"]
    assert row["runs"]["numba"] == pytest.approx([120e3, 100e3, 150e3])
    assert row["samples_per_second"]["numba"] == pytest.approx(120e3)
    assert row["samples_per_second"]["numpy-fast"] == pytest.approx(25e3)
    assert row["best_peer"] == "jax-scan"
    assert row["ratios"] == {"numba / jax-scan": pytest.approx(2.0),
                             "numba / numpy-fast": pytest.approx(4.8)}
    table = "\n".join(lines)
    assert lines[2:4] == ["Machine: test", "Commit: 0123456 with uncommitted changes."]
    assert "| 784-10-10 | 128 | float32 | 2 | 10.0k | 120.0k ±21% |" in table
    assert "| 784-10-10 | 128 | 2 | 0 | 400 |" in table  # 100 FLOP x 120k/s = 0.012 GFLOP/s


def test_scaling_table_sets_the_machines_own_ratio_beside_the_kernels():
    doc = dict(machine_info={}, benchmarks=[
        _bench("numba", 10, [0.5], seconds_on_threads={"2": 0.3, "1": 0.1}),  # 120k/s
        _bench("numba", 10, [0.75], threads=1, sgemm_then={"1": 100.0, "2": 150.0}),  # 80k
        _bench("numba", 10, [0.5], test="test_train_epoch_contended",
               seconds_on_threads={"1": 0.5}),  # the pacer ran it all on one thread
        _bench("numba", 10, [1.0], test="test_train_epoch_contended", threads=1),
    ])
    lines, data = report.render(doc)
    table = "\n".join(lines)
    # 0.3 s of the 0.4 s on all threads; sgemm gained 1.50 from them at that minute
    assert "| 784-10-10 | 128 | float32 | 80.0k | 120.0k (2) | 1.50 | 75% | 1.50 |" in table
    assert data["train"][1]["sgemm_then"] == {"1": 100.0, "2": 150.0}
    assert data["train"][0]["seconds_on_threads"] == {"numba": {"2": 0.3, "1": 0.1}}
    # the contended table has no sgemm column: nothing measured it there
    assert "| 784-10-10 | 128 | float32 | 60.0k | 120.0k (2) | 2.00 | 0% |\n" in table


def test_scaling_table_without_the_pacers_times():
    """A report of a run that did not record them (or a backend without a pacer): "-"."""
    doc = dict(machine_info={}, benchmarks=[
        _bench("numba", 10, [0.5]), _bench("numba", 10, [0.75], threads=1)])
    table = "\n".join(report.render(doc)[0])
    assert "| 784-10-10 | 128 | float32 | 80.0k | 120.0k (2) | 1.50 | - | - |" in table


def test_report_shows_the_distortions_share_of_an_epoch():
    doc = dict(machine_info={}, benchmarks=[
        _bench("numba", 800, [1.0, 1.0]),  # 60k/s plain
        _bench("numba", 800, [1.2], test="test_train_epoch_distorted", distortion="elastic 34",
               part="epoch"),
        _bench("numba", 800, [0.12, 0.12], test="test_train_epoch_distorted",  # 500k/s
               distortion="elastic 34", part="distorting"),
    ])
    lines, data = report.render(doc)
    (row,) = data["distorted"]
    assert row["samples_per_second"]["numba"] == pytest.approx(50e3)
    (alone,) = data["distorting"]
    assert alone["samples_per_second"]["numba"] == pytest.approx(500e3)
    # 1 - 50k / 60k of the epoch is extra; distorting alone takes 50k / 500k of it
    assert "| 784-800-10 | 128 | float32 | 2 | 60.0k ±0% | 50.0k | 17% | 10% |" in "\n".join(lines)


def test_distorted_and_contended_epochs_reach_the_report(tmp_path):
    """The suite's distortion and contention cases (not in --quick) run, checked, and
    reach the report; the contended epochs at 1 thread too, though --no-scaling leaves
    out the plain ones (the contention table pairs its own two)."""
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "fastnn.bench", "--data", "synthetic",
                          "--only", "numba", "--hidden", "10", "--rounds", "1", "--no-scaling",
                          "--no-compile", "--json", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--preset record's distortion (elastic alpha 38 sigma 5, rotate 10 deg" in run.stdout
    data = json.loads(out.read_text())
    for key in ("distorted", "distorting"):  # the distorted epochs, the distorting alone
        (row,) = data[key]
        assert row["net"] == "784-10-10" and len(row["runs"]["numba"]) >= 1
    assert all(r["threads"] > 1 for r in data["train"])  # --no-scaling
    if data["machine"]["threads"] > 1:
        assert sorted(r["threads"] for r in data["contended"]) == [1, data["machine"]["threads"]]
        assert "## numba with another busy process" in run.stdout


def test_values_named_twice_are_timed_once():
    from fastnn.bench import build_parser, settings

    got = settings(build_parser().parse_args(["--hidden", "10", "10", "--batch-size", "32",
                                              "--only", "numba", "numba", "--dtype",
                                              "float32", "float32"]))
    assert (got["hidden"], got["batch_size"], got["names"], got["dtype"]) == (
        [10], [32], ["numba"], ["float32"])


@pytest.mark.parametrize("args, code, needle", [
    (["--batch-size", "70000"], 2, "larger than the 60,000 training images"),
    (["--quick", "--rounds", "3"], 2, "--quick times one round a case: drop --rounds"),
    # every case skipped: the JAX peers run only at all threads (or are not installed)
    (["--quick", "--data", "synthetic", "--only", "jax-scan", "--threads", "1"], 1,
     "nothing was timed: every case was skipped"),
])
def test_bench_errors_exit_with_a_message(args, code, needle):
    run = subprocess.run([sys.executable, "-m", "fastnn.bench", *args], capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == code and needle in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr


def test_bench_without_its_tools_says_which_extra(monkeypatch, capsys):
    import importlib.util

    from fastnn import bench

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytest_benchmark"
                        else find_spec(name, *a))
    assert bench.main(["--quick"]) == 1
    assert "needs pytest_benchmark: install fastnn's bench extra" in capsys.readouterr().err


class _Broken:
    """The reference with one gradient 0.1% off: must never pass as agreeing."""

    def __getattr__(self, attr):
        return getattr(get_kernel(REFERENCE), attr)

    def loss_and_grads(self, params, X, y):
        loss, grads = get_kernel(REFERENCE).loss_and_grads(params, X, y)
        (dW1, db1), *rest = grads
        return loss, [(dW1 * dW1.dtype.type(1.001), db1), *rest]


@pytest.mark.parametrize("name", [n for n in KERNELS if n != REFERENCE] + ["broken"])
def test_check_backend_passes_real_kernels_and_catches_a_broken_one(name):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (600, 784)).astype(np.uint8)
    labels = rng.integers(0, 10, 600)
    params = init_params([784, 32, 10], seed=1)
    X = images[:64].astype(np.float32) / np.float32(255)
    backend = _Broken() if name == "broken" else get_kernel(name)
    rows = tolerances.check_backend(backend, params, X, labels[:64], images, labels,
                                    np.arange(128), 32, 0.05, images[200:])
    assert {r["quantity"] for r in rows} >= {"probabilities", "loss", "dW1", "db2",
                                             "W1 after 4 steps", "predicted labels"}
    if name == "broken":
        assert [r["quantity"] for r in rows if not r["ok"]] == ["dW1"]
        with pytest.raises(AssertionError, match="broken disagrees.*dW1"):
            tolerances.assert_rows(rows, "broken")
    else:
        tolerances.assert_rows(rows, name)
