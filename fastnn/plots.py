"""Pictures for people: test digits beside the network's predictions.

matplotlib runs on the Agg backend (no display needed) unless ``show`` asks
for a window. Files are written atomically, like every other output.
"""

import numpy as np

from fastnn.model import atomic_write


def _pyplot(show):
    import matplotlib

    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def predictions_grid(images, labels, preds, path, show=False, rows=4, cols=8):
    """Write a PNG grid of the first rows*cols digits: 'pred P / true T', mistakes in red.

    images: (n, 784) uint8; labels, preds: (n,) int64.
    """
    plt = _pyplot(show)
    count = min(rows * cols, len(images))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5))
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if k >= count:
            continue
        ax.imshow(images[k].reshape(28, 28), cmap="gray_r", vmin=0, vmax=255)
        wrong = preds[k] != labels[k]
        ax.set_title(f"pred {preds[k]} / true {labels[k]}", fontsize=8,
                     color="red" if wrong else "black", fontweight="bold" if wrong else "normal")
    accuracy = float(np.mean(preds == labels))
    fig.suptitle(f"fastnn predictions on the first {count} test digits "
                 f"(test accuracy {100 * accuracy:.2f}%)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    if show:
        plt.show()
    plt.close(fig)
