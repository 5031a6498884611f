"""`python -m fastnn.bench`: the report's structure and JSON keys (never its timings).

The end-to-end test runs `--quick --no-compile` in a subprocess on synthetic
data (FASTNN_BENCH_DATA=synthetic): tiny grid, 1 repeat, no cold compile
(that section costs ~10-20 s per backend; plain `python -m fastnn.bench`
measures it).
The other tests check that a backend that disagrees with the reference is
reported and stops the report, and that the strict checks raise.
"""

import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from fastnn import bench, benchkit
from fastnn.kernels import KERNELS, REFERENCE, get_kernel


def test_quick_report(tmp_path):
    out_json = tmp_path / "bench.json"
    env = dict(os.environ, FASTNN_BENCH_DATA="synthetic")
    run = subprocess.run([sys.executable, "-m", "fastnn.bench", "--quick", "--no-compile",
                          "--json", str(out_json)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert text.index("Machine: ") < text.index("## Agreement") < text.index(
        "## Training throughput") < text.index("## Inference throughput") < text.index(
        "## Thread scaling")
    assert "Data: synthetic" in text
    assert "All backends agree with the reference." in text
    assert "torch" in text  # the peer column, or the hint to install it

    report = json.loads(out_json.read_text())
    assert {"machine", "data", "reference", "backends", "settings", "agreement", "agree",
            "train", "inference", "scaling", "compile", "peer"} <= report.keys()
    assert {"cpu", "cores", "date", "commit", "numpy", "numba"} <= report["machine"].keys()
    assert report["agree"] is True and report["reference"] == REFERENCE
    assert report["settings"]["repeats"] == 1
    assert set(KERNELS) <= set(report["backends"])
    names = report["backends"]
    assert {r["backend"] for r in report["agreement"]} == set(names) - {REFERENCE}
    for row in report["train"] + report["inference"]:
        assert set(row["samples_per_second"]) == set(names)
        assert set(row["speedup"]) == set(names) - {REFERENCE}
        assert all(len(v) == 1 for v in row["repeats"].values())
    assert {"net", "batch_size", "dtype", "samples"} <= report["train"][0].keys()
    assert {r["backend"] for r in report["scaling"]} == set(KERNELS) - {REFERENCE}
    for row in report["scaling"]:  # every run kept, like the throughput rows
        assert row["repeats"].keys() == row["threads"].keys()
        assert all(len(v) == 1 for runs in row["repeats"].values() for v in runs.values())
    assert report["settings"]["min_run_seconds"] == benchkit.MIN_RUN_SECONDS
    assert report["compile"] == []
    assert (report["peer"]["version"] is None) == (report["peer"]["note"] is not None)


@pytest.fixture
def broken_backend(monkeypatch):
    """A registered backend whose forward is off by 1%: must never pass as agreeing."""
    ref = get_kernel(REFERENCE)
    fake = types.ModuleType("fastnn_broken_backend")
    for attr in ("loss_and_grads", "train_epoch", "predict", "warmup"):
        setattr(fake, attr, getattr(ref, attr))
    fake.forward = lambda params, X: ref.forward(params, X) * 1.01
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setitem(KERNELS, "broken", fake.__name__)
    return "broken"


def test_disagreement_stops_report(broken_backend):
    data = benchkit.Data(*benchkit.synthetic(256), *benchkit.synthetic(64, 1), "synthetic")
    lines = []
    ok, rows = bench.agreement([(10, 32, "float32")], data, False, lines.append)
    assert not ok
    assert [r["ok"] for r in rows if r["backend"] == broken_backend] == [False]
    assert any("DISAGREEMENT" in line for line in lines)


def test_strict_check_raises(broken_backend):
    params = benchkit.make_params(10, np.float32)
    X, _ = benchkit.batch(*benchkit.synthetic(64), 32, np.float32)
    with pytest.raises(AssertionError, match="disagrees with reference"):
        benchkit.check_forward(broken_backend, params, X)


class _CountingKernel:
    """Stands in for a backend: each call sleeps, and counts itself."""

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, 0

    def _call(self, *args):
        self.calls += 1
        time.sleep(self.seconds)

    train_epoch = predict = _call


@pytest.mark.parametrize("what", ["train", "predict"])
def test_runs_last_min_seconds(what):
    kernel = _CountingKernel(0.01)
    params = benchkit.make_params(10, "float32")
    images, labels = benchkit.synthetic(50)
    if what == "train":
        rates = benchkit.train_rates(kernel, params, images, labels, 32, 40, 2,
                                     min_seconds=0.05)
        per_call = 64  # 40 samples rounded up to 2 batches of 32
    else:
        rates = benchkit.predict_rates(kernel, params, images, 2, min_seconds=0.05)
        per_call = 50
    assert len(rates) == 2
    assert kernel.calls >= 2 * 5  # each run called again until it lasted 0.05 s
    # every call of a run counts: about one call's samples per 0.01 s (a sleep may
    # overrun on a busy machine, never end early), not one call's per 0.05 s run
    assert all(per_call / 0.01 * 0.5 <= r <= per_call / 0.01 * 1.01 for r in rates)


def test_one_call_per_run_by_default():
    kernel = _CountingKernel(0.0)
    images, _ = benchkit.synthetic(20)
    benchkit.predict_rates(kernel, benchkit.make_params(10, "float32"), images, 3)
    assert kernel.calls == 3
