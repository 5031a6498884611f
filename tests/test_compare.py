"""`python -m fastnn.train --compare`: the agreement report must pass real kernels
and catch a broken one.

Needs real MNIST (the `mnist` fixture decides between skip and fail).
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastnn import compare, train
from fastnn.kernels import KERNELS, REFERENCE, get_kernel

REPO = Path(__file__).resolve().parents[1]
STEPS = "50"


def _rows(report, backend):
    return {row["quantity"]: row for row in report["backends"][backend]["agreement"]}


@pytest.mark.slow
def test_compare_cli_agrees(mnist, tmp_path):
    out = tmp_path / "out.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(
        [sys.executable, "-m", "fastnn.train", "--compare", "--compare-steps", STEPS,
         "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    for name in KERNELS:
        if name != REFERENCE:
            assert f"{name} vs {REFERENCE}" in text
    for quantity in ("probabilities", "loss", "dW1", "db2", f"W1 after {STEPS} steps"):
        assert quantity in text
    assert "all backends agree within tolerance" in text
    assert " NO" not in text and "DISAGREEMENT" not in text

    report = json.loads(out.read_text())
    assert report["agree"] is True
    assert report["config"]["steps"] == int(STEPS)
    assert report["config"]["sizes"] == [784, 10, 10]
    assert set(report["backends"]) == set(KERNELS)
    for name, backend in report["backends"].items():
        speedup = backend["speedup"]
        assert np.isfinite(speedup) and speedup > 0
        assert 0.2 < backend["test_accuracy"] <= 1.0  # 50 steps learn something (chance: 0.1)
        if name == REFERENCE:
            assert speedup == 1.0 and "agreement" not in backend
            continue
        rows = _rows(report, name)
        expected = {"probabilities", "loss"} | {
            f"d{p}{i}" for i in (1, 2) for p in ("W", "b")} | {
            f"{p}{i} after {STEPS} steps" for i in (1, 2) for p in ("W", "b")}
        assert set(rows) == expected
        for row in rows.values():
            assert row["ok"] is True and row["max_abs"] >= 0 and row["rtol"] > 0


def _run_in_process(monkeypatch, tmp_path, *extra):
    """main([... --compare ...]) in this process; returns (exit code, printed text, report)."""
    buf = io.StringIO()
    real_run = compare.run
    # compare.run's default `out` is the sys.stdout of import time: hand it ours
    monkeypatch.setattr(compare, "run", lambda args, data: real_run(args, data, out=buf))
    out = tmp_path / "out.json"
    code = train.main(["--compare", "--compare-steps", STEPS, "--json", str(out), *extra])
    return code, buf.getvalue(), json.loads(out.read_text())


def _broken_loss_and_grads(monkeypatch):
    numba = get_kernel("numba")  # only this name's object is patched, not its variants
    real = numba.loss_and_grads

    def loss_and_grads(params, X, y):
        loss, grads = real(params, X, y)
        (dW1, db1), *rest = grads
        return loss, [(dW1 * dW1.dtype.type(1.001), db1), *rest]

    monkeypatch.setattr(numba, "loss_and_grads", loss_and_grads)
    return "dW1"


def _broken_train_epoch(monkeypatch):
    numba = get_kernel("numba")
    real = numba.train_epoch

    def train_epoch(params, images, labels, order, batch_size, lr):
        stats = real(params, images, labels, order, batch_size, lr)
        W1 = params[0][0]
        W1 *= W1.dtype.type(1.001)  # in place, as the update itself is
        return stats

    monkeypatch.setattr(numba, "train_epoch", train_epoch)
    return f"W1 after {STEPS} steps"


@pytest.mark.slow
@pytest.mark.parametrize("breakage", [_broken_loss_and_grads, _broken_train_epoch],
                         ids=["loss_and_grads", "train_epoch"])
def test_compare_catches_a_broken_kernel(mnist, monkeypatch, tmp_path, breakage):
    bad_row = breakage(monkeypatch)
    code, text, report = _run_in_process(monkeypatch, tmp_path)
    assert code == 1, text
    assert "DISAGREEMENT" in text
    bad_lines = [line for line in text.splitlines() if line.rstrip().endswith(" NO")]
    assert bad_lines and all(bad_row in line for line in bad_lines), text
    assert report["agree"] is False
    rows = _rows(report, "numba")
    assert [q for q, row in rows.items() if not row["ok"]] == [bad_row]
    # the other backends are untouched and still agree
    for name in KERNELS:
        if name not in (REFERENCE, "numba"):
            assert all(row["ok"] for row in _rows(report, name).values()), name


@pytest.mark.slow
def test_compare_deep_float64_agrees_in_process(mnist, monkeypatch, tmp_path):
    code, text, report = _run_in_process(monkeypatch, tmp_path, "--dtype", "float64",
                                         "--hidden", "16", "8", "--batch-size", "20")
    assert code == 0, text
    assert report["agree"] is True
    assert report["config"]["sizes"] == [784, 16, 8, 10]
    assert report["config"]["dtype"] == "float64" and report["config"]["batch_size"] == 20
    for name in KERNELS:
        if name != REFERENCE:
            rows = _rows(report, name)
            assert "dW3" in rows and f"b3 after {STEPS} steps" in rows
            assert all(row["ok"] for row in rows.values())


AUGMENTED = ["--hidden", "12", "--batch-size", "16", "--elastic", "--rotate", "10", "--shift",
             "1"]


@pytest.mark.slow
def test_compare_covers_distortion(mnist, monkeypatch, tmp_path):
    """Elastic + affine distortion and shifts: the batch's images are compared, and every
    backend trains through the same distorted batches."""
    code, text, report = _run_in_process(monkeypatch, tmp_path, *AUGMENTED)
    assert code == 0, text
    assert report["agree"] is True and "elastic alpha 34" in report["config"]["augmentation"]
    for name in KERNELS:
        if name != REFERENCE:
            row = _rows(report, name)["augmented images"]
            assert row["ok"] and 0 < row["atol"] < 1e-3 and row["max_abs"] <= row["atol"]


@pytest.mark.slow
def test_compare_catches_a_broken_distortion(mnist, monkeypatch, tmp_path):
    numba = get_kernel("numba")  # a gather that moves one pixel's intensity
    real = numba.gather

    def gather(images, order, dtype, shifts=None, distort=None):
        out = real(images, order, dtype, shifts, distort)
        out[0, 400] += 0.01
        return out

    monkeypatch.setattr(numba, "gather", gather)
    code, text, report = _run_in_process(monkeypatch, tmp_path, *AUGMENTED)
    assert code == 1 and "DISAGREEMENT" in text
    assert [q for q, row in _rows(report, "numba").items() if not row["ok"]] == [
        "augmented images"]
