"""Plots: each function writes a valid PNG (and the curves' CSV), atomically."""

import csv

import matplotlib.figure
import numpy as np
import pytest

from fastnn import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

HISTORY = [
    dict(epoch=1, loss=0.57, train_accuracy=0.83, test_accuracy=0.90, seconds=0.1,
         samples_per_second=600000.0, lr=0.05),
    dict(epoch=2, loss=0.31, train_accuracy=0.91, test_accuracy=0.92, seconds=0.1,
         samples_per_second=610000.0, lr=0.05),
    dict(epoch=3, loss=0.25, train_accuracy=0.93, test_accuracy=0.93),  # older run: no timing
]


def is_png(path):
    return path.read_bytes()[:8] == PNG_SIGNATURE


def sample_cm():
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 20, size=(10, 10))
    cm[np.diag_indices(10)] = rng.integers(800, 1100, size=10)
    return cm


def test_training_curves_png_and_csv(tmp_path):
    png, csv_path = tmp_path / "curves.png", tmp_path / "curves.csv"
    plots.training_curves(HISTORY, png, csv_path)
    assert is_png(png)
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "train_accuracy", "test_accuracy", "seconds",
                       "samples_per_second", "lr"]
    assert len(rows) == 1 + len(HISTORY)
    assert [float(v) for v in rows[1]] == [1, 0.57, 0.83, 0.90, 0.1, 600000.0, 0.05]
    assert rows[3][:4] == ["3", "0.25", "0.93", "0.93"] and rows[3][4:] == ["", "", ""]


def test_training_curves_without_csv_and_empty_history(tmp_path):
    plots.training_curves(HISTORY[:1], tmp_path / "one.png")
    assert is_png(tmp_path / "one.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png"]
    with pytest.raises(ValueError, match="empty"):
        plots.training_curves([], tmp_path / "none.png", tmp_path / "none.csv")


def test_confusion_png(tmp_path):
    plots.confusion(sample_cm(), tmp_path / "cm.png")
    assert is_png(tmp_path / "cm.png")
    with pytest.raises(ValueError, match="square"):
        plots.confusion(np.zeros((3, 4), dtype=int), tmp_path / "bad.png")


@pytest.mark.parametrize("hidden", [10, 100])
def test_first_layer_weights_png(tmp_path, hidden):
    W = np.random.default_rng(1).standard_normal((hidden, 784)).astype(np.float32)
    plots.first_layer_weights(W, tmp_path / "w.png", max_units=64)
    assert is_png(tmp_path / "w.png")


def test_first_layer_weights_rejects_other_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\(hidden, 784\)"):
        plots.first_layer_weights(np.zeros((10, 10)), tmp_path / "w.png")


def test_predictions_grid_still_works(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, size=(40, 784), dtype=np.uint8)
    labels = np.arange(40) % 10
    plots.predictions_grid(images, labels, (labels + (labels == 3)) % 10, tmp_path / "p.png")
    assert is_png(tmp_path / "p.png")


@pytest.mark.parametrize("draw", [
    lambda d: plots.training_curves(HISTORY, d / "c.png", d / "c.csv"),
    lambda d: plots.confusion(sample_cm(), d / "cm.png"),
    lambda d: plots.first_layer_weights(np.ones((4, 784)), d / "w.png"),
], ids=["training_curves", "confusion", "first_layer_weights"])
def test_failed_savefig_leaves_no_files(tmp_path, monkeypatch, draw):
    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        draw(tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the PNG, the CSV nor a temp file
