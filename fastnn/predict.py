"""`python -m fastnn.predict`: classify test-set digits or your own image files.

Loads a checkpoint written by ``python -m fastnn.train --save``, turns each
input into a uint8 (784,) MNIST image (test-set rows as they are, files via
``fastnn.images``), runs the backend's ``forward`` and prints one line per
input with the top classes and their probabilities.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from fastnn import cli, files, model
from fastnn.data import ALIASES, SHA256, canonical, class_names
from fastnn.kernels import get_kernel
from fastnn.kernels.numpy_ref import to_float


def _top_k(text):
    value = cli.integer(text, f"an integer 1..{model.N_CLASSES}")
    if not 1 <= value <= model.N_CLASSES:
        raise argparse.ArgumentTypeError(f"must be 1..{model.N_CLASSES}, got {value}")
    return value


def _index(text):
    return cli.integer(text, "a test-image index")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastnn.predict",
        description="Classify MNIST test images by index, or image files (PNG, JPEG, ...), "
                    "with a saved fastnn model.",
    )
    cli.add_model_flags(p, kernel_default="numpy")  # numpy needs no JIT compile
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--index", type=_index, nargs="+", metavar="N",
                     help="test-set image indices (0..9999 for MNIST)")
    src.add_argument("--image", type=cli.path, nargs="+", metavar="FILE",
                     help="image files of one digit each; dark-on-light or light-on-dark")
    p.add_argument("--top", type=_top_k, default=3, metavar="K",
                   help="how many classes to show per input, 1..10 (default: 3)")
    p.add_argument("--json", type=cli.path, metavar="PATH",
                   help="also write the results as JSON")
    return p


def dataset_of(meta, path="the checkpoint") -> str:
    """The dataset a checkpoint was trained on: its config's, else "mnist".

    A name fastnn does not know is refused (ModelError naming ``path``): a hand-edited
    or foreign checkpoint, whose test set cannot be loaded."""
    cfg = meta.get("config") if isinstance(meta, dict) else None
    dataset = cfg.get("dataset", "mnist") if isinstance(cfg, dict) else "mnist"
    if not (isinstance(dataset, str) and canonical(dataset) in SHA256):
        known = ", ".join(sorted({*SHA256, *ALIASES}))
        raise model.ModelError(f"{path}: its config names the dataset {dataset!r}, which "
                               f"fastnn does not know ({known}); it was edited or written "
                               "by other code: fix the name or retrain the model")
    return dataset


def check_paths(args, output):
    """cli.check_paths for predict and evaluate: ``output`` (flag, path) must not replace
    the model, an input image or a data file."""
    from fastnn.data import local_files

    inputs = [("--model", args.model), *[("--image", f) for f in getattr(args, "image", None)
                                          or []],
              *[("--data-dir", p) for p in local_files(args.data_dir)]]
    cli.check_paths([output], inputs)


def gather_inputs(args, dataset):
    """(names, images uint8 (n, 784), true labels (n,) or None) for --index or --image."""
    if args.image:
        from fastnn.images import load_image

        fashion = canonical(dataset) == "fashion-mnist"  # its own picture steps
        return list(args.image), np.stack([load_image(f, fashion) for f in args.image]), None
    from fastnn.data import load_mnist

    images, labels = load_mnist("test", args.data_dir, dataset)
    bad = [i for i in args.index if not 0 <= i < len(images)]
    if bad:
        raise cli.UsageError(f"--index {bad[0]} is out of range: the {dataset} test set has "
                         f"{len(images)} images, use 0..{len(images) - 1}")
    idx = np.array(args.index, dtype=np.int64)
    return [f"test image {i}" for i in args.index], images[idx], labels[idx]


def display_names(dataset):
    """The class names to print: Fashion-MNIST's garments; None for MNIST (its numbers)."""
    return class_names(dataset) if canonical(dataset) != "mnist" else None


def top_classes(P, k):
    """P (n, 10) probabilities -> (classes (n, k), probabilities (n, k)), most likely first."""
    order = np.argsort(-P, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(P, order, axis=1)


def format_line(name, width, truth, classes, probs, labels=None):
    """One input's line; ``labels`` names the classes (default: their numbers), each padded
    to the longest name so that the lines' columns align."""
    label = (lambda c: labels[c]) if labels else str
    w = max(map(len, labels)) if labels else 1
    true = f"true {label(truth)}" if truth is not None else ""
    guesses = "  ".join(f"{label(c) + ':':<{w + 1}} {100 * p:6.2f}%"
                        for c, p in zip(classes, probs))
    wrong = "  (wrong)" if truth is not None and classes[0] != truth else ""
    return f"{name:<{width}}  {true:<{w + 5}}  {guesses}{wrong}"


def run(args, out=None):
    out = out or sys.stdout
    check_paths(args, ("--json", args.json))
    params, meta = model.load(args.model)
    dataset = dataset_of(meta, args.model)
    names, images, truths = gather_inputs(args, dataset)
    labels = display_names(dataset)
    kernel = get_kernel(args.kernel)
    P = np.asarray(kernel.forward(params, to_float(images, params[0][0].dtype)))
    classes, probs = top_classes(P, args.top)
    width = max(len(n) for n in names)
    results = []
    for i, name in enumerate(names):
        truth = None if truths is None else int(truths[i])
        print(format_line(name, width, truth, classes[i], probs[i], labels), file=out)
        results.append(dict(input=name, true_label=truth,
                            top=[dict(label=int(c), probability=float(p))
                                 for c, p in zip(classes[i], probs[i])]))
    if args.json:
        report = dict(model=args.model, kernel=args.kernel, predictions=results)
        with cli.writing("--json"):
            files.write_text(args.json, json.dumps(report, indent=2) + "\n")
    return results


def main(argv=None):
    from fastnn.images import ImageError

    return cli.main(build_parser(), run, argv, (ImageError,))


if __name__ == "__main__":
    sys.exit(main())
