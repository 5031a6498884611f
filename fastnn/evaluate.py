"""`python -m fastnn.evaluate`: how good is a saved model, class by class?

Runs a checkpoint over the whole test set and prints the accuracy, each
class's precision, recall and count, and the 10x10 confusion matrix (rows:
true class, columns: predicted); ``--plot PATH`` also draws the matrix. The
metrics are small pure NumPy functions, kept apart from the printing.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from fastnn import cli, model
from fastnn.kernels import get_kernel
from fastnn.predict import check_paths, dataset_of, display_names


def confusion_matrix(y_true, y_pred, k=model.N_CLASSES):
    """cm[t, p] = how many samples of true class t were predicted as p; int64 (k, k)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equally "
                         "long 1-D arrays")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"{name} holds labels outside 0..{k - 1}")
    return np.bincount(k * y_true + y_pred, minlength=k * k).reshape(k, k)


def precision_recall(cm):
    """Per-class (precision, recall, count) from a confusion matrix.

    precision[c] = cm[c, c] / (predicted as c), recall[c] = cm[c, c] / (truly c),
    count[c] = truly c. A ratio with nothing to divide by is NaN.
    """
    cm = np.asarray(cm, dtype=np.int64)
    hits = np.diag(cm).astype(np.float64)
    predicted, count = cm.sum(axis=0), cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, hits / predicted, np.nan)
        recall = np.where(count > 0, hits / count, np.nan)
    return precision, recall, count


def accuracy(cm) -> float:
    cm = np.asarray(cm)
    return float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")


def _pct(x):
    return "      -" if np.isnan(x) else f"{100 * x:6.2f}%"


def format_report(cm, names=None) -> str:
    """Accuracy line, per-class table (with the classes' ``names`` when given: Fashion-MNIST's)
    and the confusion matrix as aligned text."""
    precision, recall, count = precision_recall(cm)
    k = len(cm)
    w = max(map(len, names)) + 2 if names else 0
    lines = [f"accuracy {100 * accuracy(cm):.2f}% ({int(np.trace(cm))} of {int(cm.sum())})", "",
             "class" + f"{'':{w}}" + "  precision   recall  count"]
    for c in range(k):
        label = f"{c:>5}" + (f"  {names[c]:<{w - 2}}" if names else "")
        lines.append(f"{label}    {_pct(precision[c])}  {_pct(recall[c])}  {count[c]:>5}")
    lines.append(f"{'mean':>5}{'':{w}}    {_pct(np.nanmean(precision))}  "
                 f"{_pct(np.nanmean(recall))}  {int(count.sum()):>5}")
    width = max(5, len(str(int(cm.max()))) + 1)
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              "true" + "".join(f"{c:>{width}}" for c in range(k)) + f"{'total':>{width + 2}}"]
    for t in range(k):
        lines.append(f"{t:>4}" + "".join(f"{v:>{width}}" for v in cm[t])
                     + f"{int(cm[t].sum()):>{width + 2}}")
    lines.append(f"{'all':>4}" + "".join(f"{v:>{width}}" for v in cm.sum(axis=0))
                 + f"{int(cm.sum()):>{width + 2}}")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastnn.evaluate",
        description="Test-set accuracy, per-class precision/recall and the confusion matrix "
                    "of a saved fastnn model.",
    )
    cli.add_model_flags(p, kernel_default="numba")
    p.add_argument("--plot", type=cli.png_path, metavar="PATH",
                   help="also write the confusion matrix as a PNG")
    return p


def run(args, out=None):
    out = out or sys.stdout
    from fastnn.data import load_mnist

    check_paths(args, ("--plot", args.plot))
    params, meta = model.load(args.model)
    dataset = dataset_of(meta, args.model)
    images, labels = load_mnist("test", args.data_dir, dataset)
    preds = get_kernel(args.kernel).predict(params, images)
    cm = confusion_matrix(labels, preds)
    sizes = "-".join(map(str, model.sizes_of(params)))
    print(f"fastnn: {args.model}: {sizes} net, {params[0][0].dtype}, {args.kernel} kernel, "
          f"{len(images)} {dataset} test images", file=out)
    print(format_report(cm, display_names(dataset)), file=out)
    if args.plot:
        from fastnn import plots

        title = (f"{os.path.basename(args.model)} on the {dataset} test set "
                 f"(accuracy {100 * accuracy(cm):.2f}%)")
        with cli.writing("--plot"):
            plots.confusion(cm, args.plot, title=title)
        print(f"wrote {args.plot}", file=out)
    return cm


def main(argv=None):
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
