"""Plots: each function writes a valid PNG (and the curves' CSV), atomically."""

import csv

import matplotlib.figure
import numpy as np
import pytest
from helpers import FAST, call

from fastnn import plots, train

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


def png_size(path):
    """(width, height) in pixels from the PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.fixture
def figures(monkeypatch):
    """Every figure the plots module closes, so its axes can be inspected."""
    import matplotlib.pyplot as plt

    seen, close = [], plt.close

    def keep(fig=None):
        seen.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return seen


def test_curves_figure_has_loss_and_accuracy_axes(tmp_path, figures):
    plots.training_curves(HISTORY, tmp_path / "c.png")
    w, h = png_size(tmp_path / "c.png")
    assert w > 400 and h > 200
    axes = figures[-1].axes
    assert len(axes) == 2
    assert "loss" in axes[0].get_title().lower() and axes[0].get_xlabel() == "epoch"
    assert "accuracy" in axes[1].get_title().lower()
    assert [line.get_label() for line in axes[1].get_lines()] == ["train", "test"]
    assert list(axes[0].get_lines()[0].get_ydata()) == [0.57, 0.31, 0.25]


def test_confusion_figure_shows_every_count(tmp_path, figures):
    cm = sample_cm()
    plots.confusion(cm, tmp_path / "cm.png")
    w, h = png_size(tmp_path / "cm.png")
    assert w > 300 and h > 300
    ax = figures[-1].axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {str(v) for v in cm.ravel() if v} <= texts  # every non-zero count is on the map
    labels = (ax.get_xlabel() + ax.get_ylabel()).lower()
    assert "predicted" in labels and "true" in labels


@pytest.mark.parametrize("hidden", [3, 10, 100])
def test_weights_figure_has_one_28x28_image_per_unit(tmp_path, figures, hidden):
    W = np.random.default_rng(1).standard_normal((hidden, 784))
    plots.first_layer_weights(W, tmp_path / "w.png")
    images = [ax.images[0] for ax in figures[-1].axes if ax.images]
    assert len(images) == min(hidden, 64)
    assert all(im.get_array().shape == (28, 28) for im in images)


def test_predictions_grid_marks_mistakes_and_names_classes(tmp_path, figures):
    images = np.zeros((32, 784), np.uint8)
    labels = np.arange(32) % 10
    preds = labels.copy()
    preds[3] = 9  # one mistake
    names = [f"class{c}" for c in range(10)]
    plots.predictions_grid(images, labels, preds, tmp_path / "p.png", class_names=names)
    assert png_size(tmp_path / "p.png")[0] > 600
    titles = [ax.get_title() for ax in figures[-1].axes]
    assert len(titles) == 32
    assert titles[3] == "pred class9\ntrue class3"
    colors = [ax.title.get_color() for ax in figures[-1].axes]
    assert colors[3] == "red" and colors.count("red") == 1


def test_distortion_grid_shows_the_original_then_each_draw(tmp_path, figures):
    rng = np.random.default_rng(2)
    original, versions = rng.random(784), rng.random((23, 784))
    plots.distortion_grid(original, versions, tmp_path / "d.png", "elastic alpha 34 sigma 4")
    assert is_png(tmp_path / "d.png") and png_size(tmp_path / "d.png")[0] > 600
    shown = [ax for ax in figures[-1].axes if ax.images]
    assert len(shown) == 24
    assert shown[0].get_title() == "original" and shown[5].get_title() == "draw 5"
    assert np.array_equal(shown[0].images[0].get_array(), original.reshape(28, 28))
    assert np.array_equal(shown[7].images[0].get_array(), versions[6].reshape(28, 28))
    assert "elastic alpha 34 sigma 4" in figures[-1].texts[0].get_text()
    with pytest.raises(ValueError, match="784-pixel"):
        plots.distortion_grid(original, versions[:, :100], tmp_path / "bad.png", "")


@pytest.mark.parametrize("augment", [[], ["--elastic", "--shear", "0.2"]],
                         ids=["plain", "distorted"])
def test_plots_dir_writes_every_picture(tmp_path, capsys, data_dir, augment):
    """--plots-dir: curves, confusion, weights, and for a distorting run distortions.png."""
    pics = tmp_path / "pics"
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST, "--plots-dir", pics,
                                       *augment], capsys)
    assert code == 0, err
    want = {"curves.png", "curves.csv", "confusion.png", "weights.png"}
    if augment:
        want.add("distortions.png")
        assert "elastic alpha 34 sigma 4, shear 0.2" in out  # the header names the settings
    assert {p.name for p in pics.iterdir()} == want
    assert all(is_png(pics / name) for name in want if name.endswith(".png"))
