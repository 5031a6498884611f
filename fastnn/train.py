"""`python -m fastnn.train`: train the MNIST network and report how it went.

Parses flags, loads data, drives a backend's ``train_epoch`` through seeded
batches, evaluates, and writes the optional JSON, checkpoint and PNG. All
arithmetic lives in the kernels; this module only orchestrates and reports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from fastnn import augment, cli, config, files, memory, model, optim
from fastnn.kernels import KERNELS, get_kernel

# Every flag's value when neither a preset nor the command line sets it.
DEFAULTS = dict(
    kernel="numba", hidden=[10], epochs=10, batch_size=32, lr=0.05, seed=0,
    dtype="float32", init="he", dataset="mnist", optimizer="sgd", momentum=0.9, beta1=0.9,
    beta2=0.999, eps=1e-8, weight_decay=0.0, schedule="constant", warmup=0, shift=0,
    elastic=0.0, elastic_sigma=4.0, rotate=0.0, scale=0.0, shear=0.0,
)
# The distortion settings, in augment.Distortion's order after its key
DISTORTION = ("elastic", "elastic_sigma", "rotate", "scale", "shear")
# --elastic with no value: Simard et al.'s MNIST setting (alpha 34, sigma 4)
SIMARD_ALPHA = 34.0
PRESETS = {
    "default": {},
    # The original script: 784-10-10, U(-0.5, 0.5) init, full-batch gradient
    # descent at lr 0.10 for 500 iterations (one iteration = one "epoch").
    "seed": dict(hidden=[10], init="uniform", batch_size=0, lr=0.1, epochs=500),
    # The classic 800-hidden-unit MLP: momentum SGD on a cosine schedule, with
    # random 1-pixel shifts as cheap augmentation; >= 98.4% test accuracy.
    "best": dict(hidden=[800], optimizer="momentum", lr=0.05, batch_size=128,
                 schedule="cosine", shift=1, epochs=15),
    # Simard, Steinkraus and Platt's record for this net (ICDAR 2003, 0.7% error): the
    # same 784-800-10 MLP trained on images distorted afresh every epoch, elastically and
    # by a small random affine map. The elastic field is a little smoother than their
    # alpha 34, sigma 4 (it lifted all three seeds tried by ~0.1%); lr, epochs and
    # distortion chosen by measurement (README, Results).
    "record": dict(hidden=[800], optimizer="momentum", lr=0.1, batch_size=128,
                   schedule="cosine", elastic=38.0, elastic_sigma=5.0, rotate=10.0,
                   scale=0.1, shear=0.2, epochs=40),
}


MAX_SEED = 2**63 - 1  # seeds fit a signed 64-bit integer, for whatever reads the JSON
MAX_SHIFT = 27  # a shift of 28 px moves every pixel out of the 28x28 field


def _seed(text):
    value = cli.non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SEED} (2^63 - 1), got {value}")
    return value


def _shift(text):
    value = cli.non_negative_int(text)
    if value > MAX_SHIFT:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_SHIFT} pixels, got {value}: a shift of 28 or more moves "
            "every image out of the 28x28 field")
    return value


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastnn.train",
        description="Train a from-scratch MNIST network (784-hidden-10, ReLU, softmax, SGD).",
    )
    p.add_argument("--preset", choices=list(PRESETS), default="default",
                   help="starting settings; explicit flags override (seed = the original script)")
    p.add_argument("--kernel", choices=list(KERNELS),
                   help=f"backend (default: {DEFAULTS['kernel']})")
    p.add_argument("--hidden", type=cli.positive_int, nargs="+", metavar="N",
                   help="hidden layer widths, e.g. --hidden 256 128 (default: 10)")
    p.add_argument("--epochs", type=cli.positive_int,
                   help=f"passes over the training set (default: {DEFAULTS['epochs']})")
    p.add_argument("--batch-size", type=cli.non_negative_int, metavar="N",
                   help=f"minibatch size; 0 = full batch (default: {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=cli.positive_float,
                   help=f"learning rate (default: {DEFAULTS['lr']})")
    p.add_argument("--seed", type=_seed,
                   help=f"seed for init and shuffling (default: {DEFAULTS['seed']})")
    p.add_argument("--dtype", choices=list(model.DTYPES),
                   help=f"float type (default: {DEFAULTS['dtype']})")
    p.add_argument("--init", choices=list(model.INITS),
                   help="he = N(0, 2/fan_in); uniform = U(-0.5, 0.5) as the seed (default: he)")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist", "fashion"],
                   help="MNIST digits or Fashion-MNIST clothes (default: mnist)")
    p.add_argument("--optimizer", choices=list(optim.OPTIMIZERS),
                   help=f"update rule (default: {DEFAULTS['optimizer']})")
    p.add_argument("--momentum", type=cli.unit_float,
                   help="momentum coefficient (default: 0.9)")
    p.add_argument("--beta1", type=cli.unit_float, help="Adam's beta1 (default: 0.9)")
    p.add_argument("--beta2", type=cli.unit_float, help="Adam's beta2 (default: 0.999)")
    p.add_argument("--eps", type=cli.positive_float, help="Adam's epsilon (default: 1e-8)")
    p.add_argument("--weight-decay", type=cli.non_negative_float, metavar="X",
                   help="L2 weight decay added to every gradient (default: 0)")
    p.add_argument("--schedule", choices=list(optim.SCHEDULES),
                   help="learning-rate schedule over epochs (default: constant); step "
                        "divides by 10 every third of the run")
    p.add_argument("--warmup", type=cli.non_negative_int, metavar="N",
                   help="epochs of linear learning-rate warm-up (default: 0)")
    p.add_argument("--shift", type=_shift, metavar="PX",
                   help="augment: move each training image by a random (dy, dx) in "
                        "[-PX, PX] pixels, drawn per epoch (default: 0 = off)")
    p.add_argument("--elastic", type=distortion_type("alpha"), nargs="?", const=SIMARD_ALPHA,
                   metavar="ALPHA",
                   help="augment: elastic distortion (Simard 2003), a smooth random "
                        "displacement field drawn per sample and epoch, about ALPHA/(6 SIGMA) "
                        f"pixels rms (alone: {SIMARD_ALPHA:g}, 1.4 px at sigma 4; default: 0 = "
                        "off)")
    p.add_argument("--elastic-sigma", type=distortion_type("sigma"), metavar="SIGMA",
                   help="smoothness of the elastic field: the Gaussian's standard deviation "
                        "in pixels (default: 4)")
    p.add_argument("--rotate", type=distortion_type("rotate"), metavar="DEG",
                   help="augment: random rotation within [-DEG, DEG] degrees (default: 0)")
    p.add_argument("--scale", type=distortion_type("scale"), metavar="X",
                   help="augment: random scaling by a factor within [1-X, 1+X] (default: 0)")
    p.add_argument("--shear", type=distortion_type("shear"), metavar="X",
                   help="augment: random horizontal shear within [-X, X] (default: 0)")
    p.add_argument("--data-dir", type=cli.path, metavar="DIR",
                   help="where the IDX files live or are cached (default: $FASTNN_DATA or "
                        "a per-user cache dir)")
    p.add_argument("--threads", type=cli.positive_int, metavar="N",
                   help="Numba threads (default: all cores)")
    p.add_argument("--save", type=cli.path, metavar="PATH",
                   help="write a checkpoint (.npz: model, optimizer state, history) at each "
                        "epoch end")
    p.add_argument("--resume", type=cli.path, metavar="PATH",
                   help="continue the run saved in a checkpoint (same settings; --epochs may "
                        "extend it)")
    p.add_argument("--json", type=cli.path, metavar="PATH",
                   help="write metrics as one JSON object")
    p.add_argument("--plot", type=cli.png_path, metavar="PATH",
                   help=f"PNG of test digits with predicted and true labels (default: "
                        f"{DEFAULT_PLOT}, never replacing a file there that is not a PNG)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--plots-dir", type=cli.path, metavar="DIR",
                   help="also write training curves (PNG + CSV), the confusion matrix and the "
                        "first layer's weights as pictures into DIR")
    p.add_argument("--show", action="store_true", help="also open the plot in a window")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.add_argument("--compare", action="store_true",
                   help="train every backend through the same batches and report agreement "
                        "and speed instead of a normal run")
    p.add_argument("--compare-steps", type=cli.positive_int, default=300, metavar="N",
                   help="training steps per backend with --compare (default: 300)")
    return p


def distortion_type(name):
    """An argparse type for a distortion setting: a number in augment.RANGES[name]."""
    ok, allowed = augment.RANGES[name]

    def parse(text):
        value = cli.number(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be in {allowed}, got {text}")
        return value

    return parse


def distorting(args):
    """Whether the run distorts its training images (elastic or affine)."""
    return any(getattr(args, k) > 0 for k in ("elastic", "rotate", "scale", "shear"))


def augmentation_text(args):
    """The run's augmentation for the header line: '' when there is none."""
    parts = [f"shift {args.shift} px"] if args.shift else []
    if args.elastic:
        parts.append(f"elastic alpha {args.elastic:g} sigma {args.elastic_sigma:g}")
    parts += [f"{k} {getattr(args, k):g}{unit}" for k, unit in
              (("rotate", " deg"), ("scale", ""), ("shear", "")) if getattr(args, k)]
    return "".join(", " + p for p in parts)


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.explicit = {k for k in DEFAULTS if getattr(args, k) is not None}
    resolved = dict(DEFAULTS, **PRESETS[args.preset])
    for key in DEFAULTS:
        if getattr(args, key) is None:
            setattr(args, key, resolved[key])
    if args.threads is not None and args.threads > config.max_threads():
        n = config.max_threads()
        parser.error(f"--threads {args.threads}: at most {n} thread{'s' * (n > 1)} available "
                     f"here; choose 1..{n}")
    if args.compare and (args.resume or args.save):
        parser.error("--compare trains from scratch and saves nothing: drop --resume/--save")
    ignored = [flag for flag, given in (("--kernel", "kernel" in args.explicit),
                                        ("--epochs", "epochs" in args.explicit),
                                        ("--plots-dir", args.plots_dir), ("--show", args.show))
               if given]
    if args.compare and ignored:
        parser.error(f"--compare runs every backend for --compare-steps steps and draws no "
                     f"pictures: drop {'/'.join(ignored)}")
    if args.plot and args.no_plot:
        parser.error(f"--plot {args.plot} and --no-plot contradict each other: keep one")
    args.default_plot = args.plot is None and not args.no_plot
    if args.default_plot:
        args.plot = DEFAULT_PLOT
    if args.show and not args.plot:
        parser.error("--show needs --plot PATH")
    for key, optimizers in OPTIMIZER_FLAGS.items():
        if key in args.explicit and args.optimizer not in optimizers and not args.resume:
            parser.error(f"--{key} is a setting of --optimizer {' or '.join(optimizers)}; "
                         f"this run's optimizer is {args.optimizer}: drop --{key} or choose "
                         "that optimizer")
    problem = settings_problem(args)
    if problem:
        parser.error(problem)
    return args


def settings_problem(args):
    """What the settings ask that the arithmetic or the memory cannot hold, or None.

    Checked before anything runs, on the command line's settings and again on a resumed
    checkpoint's: the learning rate must not round to 0 or inf in the dtype; Adam divides
    by sqrt(v) + eps and by 1 - beta^t, so eps must not round to 0 either, nor a beta to
    1; the net must fit in memory.
    """
    dtype = np.dtype(model.DTYPES[args.dtype])
    with np.errstate(over="ignore"):
        lr = dtype.type(args.lr)
    if lr == 0 or not np.isfinite(lr):  # nothing would train, or everything diverge
        info = np.finfo(dtype)
        return (f"--lr {args.lr} rounds to {lr} in {args.dtype}; use a rate between "
                f"{info.smallest_normal:.2g} and {info.max:.2g}"
                + (" or --dtype float64" if dtype == np.float32 else ""))
    if args.optimizer == "adam":
        tiny = np.finfo(dtype).tiny
        if args.eps < tiny:
            return (f"--eps {args.eps} is below the smallest normal {args.dtype} number "
                    f"({tiny:.2g}), so Adam's update could divide by zero; use --eps >= "
                    f"{tiny:.2g}" + (" or --dtype float64" if dtype == np.float32 else ""))
        for key in ("beta1", "beta2"):
            if dtype.type(getattr(args, key)) >= 1:
                below = np.format_float_positional(np.nextafter(dtype.type(1), dtype.type(0)))
                return (f"--{key} {getattr(args, key)} rounds to 1 in {args.dtype}, and Adam "
                        f"divides by 1 - {key}^t; use at most {below}")
    from fastnn.data import MAX_ITEMS

    sizes = model.layer_sizes(args.hidden)
    n_params = model.n_params(sizes)
    batch = min(args.batch_size or MAX_ITEMS, MAX_ITEMS)
    # parameters, gradients and optimizer state (one set per backend for --compare),
    # the float64 draw that initialises them, and a batch's inputs, activations and deltas
    sets = (2 + optim.Optimizer(args.optimizer).n_slots()) * (len(KERNELS) + 1 if args.compare
                                                              else 1)
    need = n_params * (8 + sets * dtype.itemsize) + 3 * batch * sum(sizes) * dtype.itemsize
    too_big = memory.too_large(need, f"training a {'-'.join(map(str, sizes))} net "
                                     f"({n_params:,} parameters, {args.dtype})")
    if too_big:
        return (f"--hidden {' '.join(map(str, args.hidden))}: {too_big}; choose smaller "
                "widths (or a smaller --batch-size)")
    return None


DEFAULT_PLOT = "predictions.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _not_a_png(path):
    """Is there a regular file at path that is not a PNG (so not an earlier run's picture)?"""
    try:
        with files.open_regular(path, what="a picture") as f:
            return f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE
    except (files.FileError, OSError):
        return False  # nothing there, or not a regular file: check_paths has its say


PLOTS_DIR_FILES = ("curves.png", "curves.csv", "confusion.png", "weights.png")


def plots_dir_paths(args):
    """What --plots-dir writes: PLOTS_DIR_FILES, and distortions.png when distorting."""
    names = PLOTS_DIR_FILES + (("distortions.png",) if distorting(args) else ())
    return [os.path.join(args.plots_dir, name) for name in names]


def check_paths(args):
    """No two outputs on one file, none on an input, each writable: before anything runs."""
    from fastnn.data import local_files

    data_files = local_files(args.data_dir)
    outputs = [("--json", args.json)]
    if not args.compare:  # --compare writes only the JSON
        outputs += [("--save", args.save), ("--plot", args.plot)]
        # the default picture replaces an earlier run's, never a file the user put there
        if args.plot and args.default_plot and _not_a_png(args.plot):
            raise cli.UsageError(f"{args.plot} (the default --plot) is there and is not a PNG: "
                                 "fastnn will not replace it; move it, or pass --plot PATH or "
                                 "--no-plot")
        if args.plots_dir:
            outputs += [("--plots-dir", path) for path in plots_dir_paths(args)]
            # its files would land among the data files (none replaced, but the user's
            # data dir, or a download cache, filled with pictures): surely a slip
            for folder in {os.path.dirname(p) for p in data_files}:
                if files.same_file(args.plots_dir, folder):
                    raise cli.UsageError(f"--plots-dir {args.plots_dir} is the data directory "
                                         f"{folder}, which this command reads; give "
                                         "--plots-dir another directory")
    inputs = [("--resume", args.resume)] + [("--data-dir", p) for p in data_files]
    cli.check_paths(outputs, inputs, may_replace={("--save", "--resume")})


def resolved_config(args, n_train):
    cfg = {k: getattr(args, k) for k in DEFAULTS}
    cfg.update(preset=args.preset, data_dir=args.data_dir, threads=config.set_threads(None),
               sizes=model.layer_sizes(args.hidden),
               batch_size=args.batch_size or n_train)
    return cfg


def make_optimizer(args):
    return optim.Optimizer(args.optimizer, momentum=args.momentum, beta1=args.beta1,
                           beta2=args.beta2, eps=args.eps, weight_decay=args.weight_decay)


# The optimizers that use each flag (the others would silently ignore it)
OPTIMIZER_FLAGS = {"momentum": ("momentum",), "beta1": ("adam",), "beta2": ("adam",),
                   "eps": ("adam",)}
# Settings a resumed run takes from its checkpoint; changing them would not
# continue the same run.
RESUME_FIXED = ("hidden", "dtype", "init", "seed", "batch_size", "lr", "optimizer", "momentum",
                "beta1", "beta2", "eps", "weight_decay", "schedule", "warmup", "shift",
                *DISTORTION, "dataset")
# The keys of a history row (run_epoch's dict): a resumed history must have them all.
HISTORY_KEYS = ("epoch", "loss", "train_accuracy", "test_accuracy", "seconds",
                "samples_per_second", "lr")


def _same_setting(key, a, b):
    """Is a setting unchanged? "fashion-mnist" and "fashion" are one dataset."""
    if key == "dataset" and isinstance(a, str) and isinstance(b, str):
        from fastnn.data import canonical

        return canonical(a) == canonical(b)
    return a == b


def history_problem(history, epochs):
    """What is wrong with a checkpoint's history for ``epochs`` finished epochs, or None."""
    if len(history) != epochs:
        return f"its history has {len(history)} rows for {epochs} finished epochs"
    for i, row in enumerate(history, 1):
        if not isinstance(row, dict):
            return f"row {i} of its history is {row!r}, not an object"
        missing = [key for key in HISTORY_KEYS if key not in row]
        if missing:
            return f"row {i} of its history lacks {', '.join(missing)}"
        for key in HISTORY_KEYS:
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                return f"row {i} of its history has {key} {value!r}, not a finite number"
        if row["epoch"] != i:
            return f"row {i} of its history is for epoch {row['epoch']!r}"
    return None


def resume_from(args, parser):
    """Load --resume PATH: (params, optimizer, first epoch, history); args take its config.

    Nothing in the checkpoint is trusted: every setting passes its flag's own checks
    (``cli.check_value``) and ``settings_problem``, the config must describe the weights
    it comes with, and every history row must be complete.
    """
    path = args.resume
    params, meta, state = model.load_checkpoint(path)

    def unusable(problem):
        return model.ModelError(f"{path}: {problem}; it cannot be resumed (it was edited, "
                                "damaged or written by other code), but predict and evaluate "
                                "can still use its weights")

    saved = meta.get("config") if isinstance(meta, dict) else None
    if not (isinstance(saved, dict) and isinstance(meta.get("epoch"), int)
            and isinstance(meta.get("optimizer_step"), int)
            and isinstance(saved.get("epochs"), int) and isinstance(meta.get("history"), list)):
        raise model.ModelError(f"{path}: a model without usable training state (not "
                               "written by python -m fastnn.train --save); it cannot be "
                               "resumed, but predict and evaluate can use it")
    saved = dict(saved)
    for key in (*RESUME_FIXED, "epochs"):
        if key in saved:
            try:
                saved[key] = cli.check_value(parser, key, saved[key])
            except ValueError as e:
                if key == "dataset":  # predict and evaluate need a known one too
                    raise model.ModelError(f"{path}: its config has {e}; it was edited or "
                                           "written by other code: fix the name or retrain "
                                           "the model") from None
                raise unusable(f"its config has {e}") from None
    sizes = model.sizes_of(params)
    if model.layer_sizes(saved.get("hidden", sizes[1:-1])) != sizes:
        raise unusable(f"its config says hidden {saved['hidden']}, but its weights are a "
                       f"{'-'.join(map(str, sizes))} net")
    if saved.get("dtype", str(params[0][0].dtype)) != str(params[0][0].dtype):
        raise unusable(f"its config says dtype {saved['dtype']}, but its weights are "
                       f"{params[0][0].dtype}")
    if meta["epoch"] < 1 or meta["optimizer_step"] < 0:
        raise unusable(f"it says epoch {meta['epoch']}, optimizer step "
                       f"{meta['optimizer_step']}")
    problem = history_problem(meta["history"], meta["epoch"])
    if problem:
        raise unusable(problem)
    preset = PRESETS[args.preset]  # asked for too: a difference is not dropped silently
    for key in RESUME_FIXED:
        if ((key in args.explicit or key in preset)
                and not _same_setting(key, getattr(args, key), saved.get(key))):
            flag = f"--{key.replace('_', '-')} {getattr(args, key)}"
            raise cli.UsageError((flag if key in args.explicit else
                                  f"--preset {args.preset}'s {flag}")
                                 + f" differs from the checkpoint's {saved.get(key)}; a resumed "
                                 "run keeps its settings")
        setattr(args, key, saved.get(key, getattr(args, key)))
    if "epochs" not in args.explicit:
        args.epochs = saved["epochs"]
    problem = settings_problem(args)
    if problem:
        raise unusable(f"its settings do not hold here: {problem}")
    if meta["epoch"] >= args.epochs:
        raise cli.UsageError(f"{path} already holds {meta['epoch']} epoch"
                             f"{'s' * (meta['epoch'] > 1)}; pass "
                             f"--epochs N with N > {meta['epoch']} to train further")
    opt = make_optimizer(args)
    if len(state) != opt.n_slots():
        raise unusable(f"it holds {len(state)} optimizer state arrays per parameter, but "
                       f"{args.optimizer} keeps {opt.n_slots()}")
    opt.step, opt.state = meta["optimizer_step"], state
    try:
        opt.ensure_state(params)
    except ValueError as e:
        raise unusable(str(e)) from None
    return params, opt, meta["epoch"] + 1, list(meta["history"])


def load_data(args):
    from fastnn.data import load_splits

    loaded = load_splits(("train", "test"), args.data_dir, args.dataset, quiet=args.quiet)
    train, test = loaded["train"], loaded["test"]
    if args.batch_size > len(train[0]):
        raise cli.UsageError(f"--batch-size {args.batch_size} is larger than the {len(train[0])} "
                         "training images; use at most that, or 0 for full batch")
    return train, test


class Progress:
    """A terminal run's progress bar, and the pieces it cuts an epoch into: each a
    train_epoch call of its own, of about SECONDS of training at the run's samples/s so
    far (the first, before any is known, FIRST_BATCHES batches). A call sets up its
    buffers, wakes the threads and paces them afresh: with an epoch cut into 40 pieces,
    the default run trained at 0.54-0.84x its speed with stderr piped (784-10-10 at batch
    32, 2 cores, Zen 4, three interleaved pairs); in pieces of SECONDS, at 0.95-1.03x."""

    SECONDS = 0.25
    FIRST_BATCHES = 8
    WIDTH = 30

    def __init__(self, epochs, stream=None):
        self.epochs, self.stream = epochs, stream or sys.stderr
        self.epoch, self.samples, self.seconds = 0, 0, 0.0

    def piece(self, batch_size):
        """Samples (whole batches) in the next piece."""
        want = (self.FIRST_BATCHES * batch_size if self.seconds <= 0
                else int(self.samples / self.seconds * self.SECONDS))
        return batch_size * max(1, want // batch_size)

    def advance(self, samples, seconds, done, total):
        """A piece of ``samples`` took ``seconds``; ``done`` of the epoch's ``total``."""
        self.samples, self.seconds = self.samples + samples, self.seconds + seconds
        filled = self.WIDTH * done // total
        self.stream.write(f"\repoch {self.epoch}/{self.epochs} "
                          f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                          f"{100 * done // total:3d}%")
        self.stream.flush()

    def clear(self):
        self.stream.write("\r" + " " * 60 + "\r")


def draw_epoch(rng, n, args):
    """The epoch's sample order and, when augmenting, each sample's (dy, dx) shift and
    the epoch's distortion (its key drawn here; the kernels derive every sample's
    random field from it)."""
    order = rng.permutation(n)
    shifts = rng.integers(-args.shift, args.shift + 1, size=(n, 2)) if args.shift else None
    return order, shifts, draw_distortion(rng, args)


def draw_distortion(rng, args):
    """An epoch's augment.Distortion, its key drawn from rng; None when not distorting."""
    if not distorting(args):
        return None
    key = int(rng.integers(0, 2**64, dtype=np.uint64))
    return augment.Distortion(key, *(getattr(args, k) for k in DISTORTION))


def train_one_epoch(kernel, params, images, labels, order, shifts, distort, batch_size, lr,
                    opt, progress):
    """Run one epoch; in pieces of whole batches when a Progress bar is shown (a
    sample's distortion depends on the epoch's key and the sample, not on the piece)."""
    if progress is None:
        return kernel.train_epoch(params, images, labels, order, batch_size, lr, opt, shifts,
                                  distort)
    loss_sum = correct = 0.0
    lo = 0
    while lo < len(order):
        hi = min(len(order), lo + progress.piece(batch_size))
        t0 = time.perf_counter()
        loss, acc = kernel.train_epoch(params, images, labels, order[lo:hi], batch_size, lr, opt,
                                       None if shifts is None else shifts[lo:hi], distort)
        progress.advance(hi - lo, time.perf_counter() - t0, hi, len(order))
        loss_sum += loss * (hi - lo)
        correct += acc * (hi - lo)
        lo = hi
    return loss_sum / len(order), correct / len(order)


class Diverged(Exception):
    pass


def divergence_remedy(args):
    """The settings that scale the update, as the remedy for a diverged run."""
    knobs = [f"a smaller --lr than {args.lr}"]
    if args.weight_decay:
        knobs.append(f"a smaller --weight-decay than {args.weight_decay}")
    return " or ".join(knobs)


def run_epoch(args, kernel, params, opt, rng, epoch, train_x, train_y, test_x, test_y, bs,
              bar):
    """Train one epoch and evaluate (bar: a Progress or None); its row of the history.
    Raises Diverged."""
    order, shifts, distort = draw_epoch(rng, len(train_x), args)
    lr = optim.learning_rate(epoch, args.lr, args.epochs, args.schedule, args.warmup)
    if bar:
        bar.epoch = epoch
    t0 = time.perf_counter()
    loss, train_acc = train_one_epoch(kernel, params, train_x, train_y, order, shifts, distort,
                                      bs, lr, opt, bar)
    seconds = time.perf_counter() - t0
    if bar:
        bar.clear()
    if not np.isfinite(loss):
        raise Diverged(f"the mean loss is {loss}")
    if not all(np.isfinite(W).all() and np.isfinite(b).all() for W, b in params):
        raise Diverged("the parameters overflowed to inf/NaN")
    test_acc = float(np.mean(kernel.predict(params, test_x) == test_y))
    return dict(epoch=epoch, loss=loss, train_accuracy=train_acc, test_accuracy=test_acc,
                seconds=seconds, samples_per_second=len(order) / seconds, lr=lr)


def run(args, out=None):
    """Train as the flags say, print and write what they ask; return the result dict."""
    return fit(args, out)[0]


def fit(args, out=None):
    """run(), also returning the trained params: (result, params)."""
    out = out or sys.stdout
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=out, flush=True))
    if args.resume:
        params, opt, first_epoch, history = resume_from(args, build_parser())
    (train_x, train_y), (test_x, test_y) = load_data(args)
    config.set_threads(args.threads)
    cfg = resolved_config(args, len(train_x))
    kernel = get_kernel(args.kernel)
    dtype = model.DTYPES[args.dtype]
    if not args.resume:
        params = model.init_params(cfg["sizes"], seed=args.seed, dtype=dtype, init=args.init)
        opt, first_epoch, history = make_optimizer(args), 1, []
    bs = cfg["batch_size"]
    moved = bool(args.shift) or distorting(args)
    compile_seconds = kernel.warmup(cfg["sizes"], dtype, bs, moved)
    warmup = f", {args.warmup} warm-up epoch{'s' * (args.warmup > 1)}" if args.warmup else ""
    # which of the numba variants plain "numba" picked (what --kernel numba:NAME runs)
    picks = getattr(kernel, "strategy_for", None) if args.kernel == "numba" else None
    strategy = f"numba:{picks(cfg['sizes'], train_x, bs, moved)}" if picks else None
    say(f"fastnn: {'-'.join(map(str, cfg['sizes']))} net, {args.kernel} kernel"
        f"{f' ({strategy})' if strategy else ''}, {args.dtype}, "
        f"{args.optimizer} lr {args.lr} ({args.schedule}{warmup}), batch {bs}, "
        f"{args.epochs} epoch{'s' * (args.epochs > 1)}, "
        f"{cfg['threads']} thread{'s' * (cfg['threads'] > 1)}{augmentation_text(args)}"
        + (f", resuming at epoch {first_epoch}" if args.resume else ""))

    rng = np.random.default_rng(args.seed)
    for _ in range(1, first_epoch):  # replay the draws of the epochs already done
        draw_epoch(rng, len(train_x), args)
    bar = Progress(args.epochs) if not args.quiet and sys.stderr.isatty() else None
    log_every = max(1, args.epochs // 25)
    train_seconds = sum(row["seconds"] for row in history)
    # the checkpoint that holds the last finished epoch, and that epoch, for messages
    last_saved, saved_epoch = args.resume, first_epoch - 1

    def kept(resume_hint=False):
        """What the checkpoint on disk still holds, for the messages below."""
        if not last_saved:
            return ""
        # a run resumed without --save keeps nothing it trains: say so in the hint
        hint = (f": continue with --resume {last_saved}"
                + ("" if args.save else f" --save {last_saved} (this run saved nothing)")
                if resume_hint else "")
        return f"; {last_saved} still holds epoch {saved_epoch}{hint}"

    epoch = first_epoch - 1
    try:
        for epoch in range(first_epoch, args.epochs + 1):
            try:
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    row = run_epoch(args, kernel, params, opt, rng, epoch, train_x, train_y,
                                    test_x, test_y, bs, bar)
            except KeyboardInterrupt:
                raise cli.Interrupted(f"interrupted during epoch {epoch}{kept(True)}") from None
            except Diverged as e:
                last = (f"the last epoch's loss was {history[-1]['loss']:.4f}" if history
                        else "no epoch finished with a finite loss")
                raise Diverged(f"training diverged in epoch {epoch}: {e} ({last}); try "
                               f"{divergence_remedy(args)}{kept()}") from None
            train_seconds += row["seconds"]
            history.append(row)
            if epoch % log_every == 0 or epoch == args.epochs or epoch == first_epoch:
                extra = (f"  (+{compile_seconds:.2f} s JIT compile, excluded)"
                         if epoch == first_epoch and compile_seconds > 0 else "")
                say(f"epoch {epoch:3d}/{args.epochs}  loss {row['loss']:.4f}  train "
                    f"{100 * row['train_accuracy']:6.2f}%  test "
                    f"{100 * row['test_accuracy']:6.2f}%  {row['seconds']:6.2f} s  "
                    f"{row['samples_per_second']:>11,.0f} samples/s{extra}")
            if args.save:
                # A Ctrl-C while saving lands once the checkpoint and what the messages
                # say of it agree (cli.deferred_interrupt)
                with cli.deferred_interrupt():
                    try:
                        # a failed write leaves the last checkpoint (kept) as it was
                        with cli.writing("--save", kept()[2:] or "nothing was written"):
                            model.save(args.save, params,
                                       dict(config=cfg, epoch=epoch, history=history,
                                            optimizer_step=opt.step), opt.state)
                    except KeyboardInterrupt:
                        raise cli.Interrupted(f"interrupted while saving epoch {epoch}"
                                              f"{kept(True)}") from None
                    last_saved, saved_epoch = args.save, epoch
    except KeyboardInterrupt:
        # Python raises a Ctrl-C at its next check, which may come after the try that
        # was running when it arrived: between two epochs, once a checkpoint was written
        raise cli.Interrupted(f"interrupted after epoch {epoch}{kept(True)}") from None

    result = dict(kernel=args.kernel, strategy=strategy, config=cfg, epochs=history,
                  test_accuracy=history[-1]["test_accuracy"], train_seconds=train_seconds,
                  compile_seconds=compile_seconds)
    say(f"test accuracy {100 * result['test_accuracy']:.2f}% after {train_seconds:.2f} s of "
        f"training ({compile_seconds:.2f} s compile)")
    if args.json:
        with cli.writing("--json"):
            files.write_text(args.json, json.dumps(result, indent=2) + "\n")
    if args.plot or args.plots_dir:
        write_pictures(args, history, params, kernel.predict(params, test_x), test_x, test_y, say,
                       kernel, train_x)
    return result, params


DISTORTION_DRAWS = 23  # the picture's distorted versions of one digit (with it: 3 rows of 8)


def distortion_examples(args, kernel, train_x, dtype):
    """The first training digit as --plots-dir's distortions.png shows it: (original,
    DISTORTION_DRAWS distorted versions), each drawn as a training epoch would draw it."""
    rng = np.random.default_rng(args.seed)
    versions = []
    for _ in range(DISTORTION_DRAWS):
        _, shifts, distort = draw_epoch(rng, 1, args)
        versions.append(kernel.gather(train_x, np.zeros(1, np.int64), dtype, shifts, distort)[0])
    return kernel.gather(train_x, np.zeros(1, np.int64), dtype)[0], np.array(versions)


def write_pictures(args, history, params, preds, test_x, test_y, say, kernel, train_x):
    from fastnn import evaluate, plots
    from fastnn.data import class_names

    written = []
    if args.plot:
        with cli.writing("--plot"):
            plots.predictions_grid(test_x, test_y, preds, args.plot, show=args.show,
                                   class_names=class_names(args.dataset))
        written.append(args.plot)
    if args.plots_dir:  # the writer creates the directory
        paths = plots_dir_paths(args)
        with cli.writing("--plots-dir", "that file was not written (any before it were)"):
            plots.training_curves(history, paths[0], paths[1])
            plots.confusion(evaluate.confusion_matrix(test_y, preds), paths[2])
            plots.first_layer_weights(params[0][0], paths[3])
            if distorting(args):
                original, versions = distortion_examples(args, kernel, train_x,
                                                         params[0][0].dtype)
                plots.distortion_grid(original, versions, paths[4],
                                      augmentation_text(args)[2:])
        written += paths
    say(f"wrote {', '.join(written)}")


def main(argv=None):
    args = parse_args(argv)

    def body():
        check_paths(args)
        if args.compare:
            from fastnn import compare

            return compare.run(args, load_data(args))
        run(args)
        return 0

    return cli.run_command(build_parser(), body, (Diverged,))


if __name__ == "__main__":
    sys.exit(main())
