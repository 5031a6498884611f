"""Pictures for people: predictions, training curves, confusion matrix, first-layer weights.

``predictions_grid`` shows test digits beside the network's predictions;
``training_curves`` the loss and accuracies per epoch (plus a CSV of them);
``confusion`` an annotated confusion matrix; ``first_layer_weights`` what
each hidden unit responds to; ``distortion_grid`` one training digit as the
elastic and affine distortions present it, epoch after epoch.

matplotlib runs on the Agg backend (no display needed) unless ``show`` asks
for a window. Files are written like every other output (fastnn.files.write_output:
atomically over a regular file, straight into a device or FIFO).
"""

import numpy as np

from fastnn.files import write_output, write_text


def _finish(plt, fig, path, show):
    """Lay out, write fig to path atomically, show it if asked; always close it."""
    try:
        fig.tight_layout()
        write_output(path, lambda f: fig.savefig(f, format="png", dpi=100))
        if show:
            plt.show()
    finally:
        plt.close(fig)


def _pyplot(show):
    import matplotlib

    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def predictions_grid(images, labels, preds, path, show=False, rows=4, cols=8,
                     class_names=None):
    """Write a PNG grid of the first rows*cols images: 'pred P / true T', mistakes in red.

    images: (n, 784) uint8; labels, preds: (n,) int64; class_names: 10 labels
    to print instead of the class numbers (Fashion-MNIST's "Sneaker", ...).
    """
    name = (lambda c: class_names[c]) if class_names else str
    plt = _pyplot(show)
    count = min(rows * cols, len(images))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5))
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if k >= count:
            continue
        ax.imshow(images[k].reshape(28, 28), cmap="gray_r", vmin=0, vmax=255)
        wrong = preds[k] != labels[k]
        ax.set_title(f"pred {name(preds[k])}\ntrue {name(labels[k])}" if class_names
                     else f"pred {preds[k]} / true {labels[k]}", fontsize=8,
                     color="red" if wrong else "black", fontweight="bold" if wrong else "normal",
                     y=1.0)  # a fixed y: matplotlib skips placing 32 titles one by one
    accuracy = float(np.mean(preds == labels))
    fig.suptitle(f"fastnn predictions on the first {count} test images "
                 f"(test accuracy {100 * accuracy:.2f}%)", fontsize=10)
    _finish(plt, fig, path, show)


CURVE_COLUMNS = ("epoch", "loss", "train_accuracy", "test_accuracy", "seconds",
                 "samples_per_second", "lr")


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".10g")
    return str(value)


def curves_csv(history) -> str:
    """The history as CSV text, one row per epoch; a missing key is an empty cell."""
    rows = [",".join(CURVE_COLUMNS)]
    rows += [",".join(_cell(row.get(key)) for key in CURVE_COLUMNS) for row in history]
    return "\n".join(rows) + "\n"


def training_curves(history, png_path, csv_path=None, show=False):
    """Loss and train/test accuracy per epoch: a two-panel PNG and (optionally) a CSV.

    history: list of dicts with epoch, loss, train_accuracy, test_accuracy (as
    train.py's JSON ``epochs``); accuracies are fractions in [0, 1].
    """
    if not history:
        raise ValueError("no epochs to plot: the history is empty")
    plt = _pyplot(show)

    def column(key):
        return np.array([np.nan if row.get(key) is None else row[key] for row in history],
                        dtype=np.float64)

    epochs = column("epoch")
    marker = "o" if len(history) <= 30 else None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, column("loss"), marker=marker, color="tab:purple")
    left.set(title="training loss (mean cross-entropy)", xlabel="epoch", ylabel="loss")
    for key, label, color in (("train_accuracy", "train", "tab:blue"),
                              ("test_accuracy", "test", "tab:orange")):
        right.plot(epochs, 100 * column(key), marker=marker, label=label, color=color)
    right.set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    final = history[-1].get("test_accuracy")
    if final is not None:
        fig.suptitle(f"fastnn training: test accuracy {100 * final:.2f}% after "
                     f"{len(history)} epochs", fontsize=11)
    _finish(plt, fig, png_path, show)
    if csv_path is not None:  # after the PNG: a failed picture leaves no CSV either
        write_text(csv_path, curves_csv(history))


def confusion(cm, png_path, title=None, show=False):
    """Annotated heat map of a confusion matrix (rows: true class, columns: predicted).

    Colour is the share of each true class (a row) on a square-root scale, so
    the few mistakes stay visible beside the large diagonal; numbers are counts.
    """
    from matplotlib.colors import PowerNorm

    cm = np.asarray(cm)
    k = len(cm)
    if cm.ndim != 2 or cm.shape != (k, k):
        raise ValueError(f"a confusion matrix is square, not {cm.shape}")
    plt = _pyplot(show)
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    for t in range(k):
        for p in range(k):
            if cm[t, p]:
                dark = share[t, p] > 0.35
                ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black",
                        fontweight="bold" if t == p else "normal")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set(xlabel="predicted class", ylabel="true class")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class (square-root scale)")
    bar.ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    accuracy = np.trace(cm) / cm.sum() if cm.sum() else float("nan")
    ax.set_title(title or f"confusion matrix (accuracy {100 * accuracy:.2f}%)", fontsize=10)
    _finish(plt, fig, png_path, show)


def first_layer_weights(W, png_path, max_units=64, show=False):
    """Each hidden unit's incoming weights (a row of W1, (hidden, 784)) as a 28x28 picture.

    Red: ink there raises the unit's input; blue: ink there lowers it; white:
    the unit ignores that pixel. Each unit has its own symmetric scale.
    """
    W = np.asarray(W)
    if W.ndim != 2 or W.shape[1] != 28 * 28:
        raise ValueError(f"expected first-layer weights of shape (hidden, 784), got {W.shape}")
    plt = _pyplot(show)
    count = min(len(W), max_units)
    cols = int(np.ceil(np.sqrt(count)))
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.25 + 0.4, rows * 1.35 + 1.1),
                             squeeze=False)
    for u, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if u >= count:
            continue
        scale = float(np.abs(W[u]).max()) or 1.0
        ax.imshow(W[u].reshape(28, 28), cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_title(f"unit {u}", fontsize=8)
    shown = f"the first {count} of {len(W)}" if count < len(W) else f"all {count}"
    fig.suptitle(f"What each hidden unit looks for: its first-layer weights ({shown} units)\n"
                 "red: ink here excites the unit, blue: ink here inhibits it",
                 fontsize=10)
    _finish(plt, fig, png_path, show)


def distortion_grid(original, distorted, png_path, settings, show=False, cols=8):
    """One digit as the network sees it in training: the original (float (784,) in [0, 1])
    first, then its distorted versions (float (n, 784)), one per epoch key.

    settings: the distortion's description for the title (e.g. "elastic alpha 34 sigma 4").
    """
    distorted = np.asarray(distorted)
    if distorted.ndim != 2 or distorted.shape[1] != 28 * 28 or np.size(original) != 28 * 28:
        raise ValueError(f"expected 784-pixel images, got {np.shape(original)} and "
                         f"{distorted.shape}")
    plt = _pyplot(show)
    count = 1 + len(distorted)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.3 + 0.6), squeeze=False)
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if k >= count:
            continue
        image = original if k == 0 else distorted[k - 1]
        ax.imshow(np.reshape(image, (28, 28)), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title("original" if k == 0 else f"draw {k}", fontsize=8,
                     fontweight="bold" if k == 0 else "normal", y=1.0)
    fig.suptitle(f"What the network trains on: one digit, distorted afresh each epoch\n"
                 f"({settings})", fontsize=10)
    _finish(plt, fig, png_path, show)
