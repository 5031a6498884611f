"""`python -m fastnn.train`: train the MNIST network and report how it went.

Parses flags, loads data, drives a backend's ``train_epoch`` through seeded
batches, evaluates, and writes the optional JSON, checkpoint and PNG. All
arithmetic lives in the kernels; this module only orchestrates and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from fastnn import augment, cli, config, model, optim
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
    # same 784-800-10 MLP trained on images distorted afresh every epoch, elastically
    # (their alpha 34, sigma 4) and by a small random affine map; lr and epochs chosen
    # by measurement (README, Results). >= 99.3% test accuracy.
    "record": dict(hidden=[800], optimizer="momentum", lr=0.1, batch_size=128,
                   schedule="cosine", elastic=SIMARD_ALPHA, elastic_sigma=4.0, rotate=10.0,
                   scale=0.1, shear=0.2, epochs=60),
}


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
    p.add_argument("--seed", type=int,
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
    p.add_argument("--shift", type=cli.non_negative_int, metavar="PX",
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
    p.add_argument("--data-dir", metavar="DIR",
                   help="where the IDX files live or are cached (default: $FASTNN_DATA or "
                        "a per-user cache dir)")
    p.add_argument("--threads", type=cli.positive_int, metavar="N",
                   help="Numba threads (default: all cores)")
    p.add_argument("--save", metavar="PATH",
                   help="write a checkpoint (.npz: model, optimizer state, history) at each "
                        "epoch end")
    p.add_argument("--resume", metavar="PATH",
                   help="continue the run saved in a checkpoint (same settings; --epochs may "
                        "extend it)")
    p.add_argument("--json", metavar="PATH", help="write metrics as one JSON object")
    p.add_argument("--plot", metavar="PATH", default="predictions.png",
                   help="PNG of test digits with predicted and true labels "
                        "(default: predictions.png)")
    p.add_argument("--no-plot", dest="plot", action="store_const", const=None,
                   help="do not write the PNG")
    p.add_argument("--plots-dir", metavar="DIR",
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
    if args.show and not args.plot:
        parser.error("--show needs --plot PATH")
    return args


def resolved_config(args, n_train):
    cfg = {k: getattr(args, k) for k in DEFAULTS}
    cfg.update(preset=args.preset, data_dir=args.data_dir, threads=config.set_threads(None),
               sizes=model.layer_sizes(args.hidden),
               batch_size=args.batch_size or n_train)
    return cfg


def make_optimizer(args):
    return optim.Optimizer(args.optimizer, momentum=args.momentum, beta1=args.beta1,
                           beta2=args.beta2, eps=args.eps, weight_decay=args.weight_decay)


# Settings a resumed run takes from its checkpoint; changing them would not
# continue the same run.
RESUME_FIXED = ("hidden", "dtype", "init", "seed", "batch_size", "lr", "optimizer", "momentum",
                "beta1", "beta2", "eps", "weight_decay", "schedule", "warmup", "shift",
                *DISTORTION, "dataset")


def resume_from(args):
    """Load --resume PATH: (params, optimizer, first epoch, history); args take its config."""
    params, meta, state = model.load_checkpoint(args.resume)
    saved = meta.get("config") if isinstance(meta, dict) else None
    if not (isinstance(saved, dict) and isinstance(meta.get("epoch"), int)
            and isinstance(meta.get("optimizer_step"), int)
            and isinstance(saved.get("epochs"), int) and isinstance(meta.get("history"), list)):
        raise model.ModelError(f"{args.resume}: a model without usable training state (not "
                               "written by python -m fastnn.train --save); it cannot be "
                               "resumed, but predict and evaluate can use it")
    if saved.get("optimizer", "sgd") not in optim.OPTIMIZERS:
        raise model.ModelError(f"{args.resume}: unknown optimizer {saved.get('optimizer')!r}; "
                               "it cannot be resumed")
    for key in RESUME_FIXED:
        if key in args.explicit and getattr(args, key) != saved.get(key):
            raise cli.UsageError(f"--{key.replace('_', '-')} {getattr(args, key)} differs from the "
                             f"checkpoint's {saved.get(key)}; a resumed run keeps its settings")
        setattr(args, key, saved.get(key, getattr(args, key)))
    if "epochs" not in args.explicit:
        args.epochs = saved["epochs"]
    if meta["epoch"] >= args.epochs:
        raise cli.UsageError(f"{args.resume} already holds {meta['epoch']} epochs; pass "
                         f"--epochs N with N > {meta['epoch']} to train further")
    opt = make_optimizer(args)
    opt.step, opt.state = meta["optimizer_step"], state
    try:
        opt.ensure_state(params)
    except ValueError as e:
        raise model.ModelError(f"{args.resume}: {e}; it cannot be resumed") from None
    return params, opt, meta["epoch"] + 1, list(meta["history"])


def load_data(args):
    from fastnn.data import load_mnist

    train = load_mnist("train", args.data_dir, args.dataset)
    test = load_mnist("test", args.data_dir, args.dataset)
    if args.batch_size > len(train[0]):
        raise cli.UsageError(f"--batch-size {args.batch_size} is larger than the {len(train[0])} "
                         "training images; use at most that, or 0 for full batch")
    return train, test


def _progress(epoch, epochs, done, total, stream=sys.stderr):
    width = 30
    filled = width * done // total
    stream.write(f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] "
                 f"{100 * done // total:3d}%")
    stream.flush()


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
    """Run one epoch; in pieces of whole batches when a progress bar is shown (a
    sample's distortion depends on the epoch's key and the sample, not on the piece)."""
    if progress is None:
        return kernel.train_epoch(params, images, labels, order, batch_size, lr, opt, shifts,
                                  distort)
    n_batches = -(-len(order) // batch_size)
    pieces = min(n_batches, 40)
    loss_sum = correct = 0.0
    for i in range(pieces):
        lo = (n_batches * i // pieces) * batch_size
        hi = min(len(order), (n_batches * (i + 1) // pieces) * batch_size)
        loss, acc = kernel.train_epoch(params, images, labels, order[lo:hi], batch_size, lr, opt,
                                       None if shifts is None else shifts[lo:hi], distort)
        loss_sum += loss * (hi - lo)
        correct += acc * (hi - lo)
        progress(hi, len(order))
    return loss_sum / len(order), correct / len(order)


class Diverged(Exception):
    pass


def run_epoch(args, kernel, params, opt, rng, epoch, train_x, train_y, test_x, test_y, bs,
              show_bar):
    """Train one epoch and evaluate; its row of the history. Raises Diverged."""
    order, shifts, distort = draw_epoch(rng, len(train_x), args)
    lr = optim.learning_rate(epoch, args.lr, args.epochs, args.schedule, args.warmup)
    bar = (lambda d, t: _progress(epoch, args.epochs, d, t)) if show_bar else None
    t0 = time.perf_counter()
    loss, train_acc = train_one_epoch(kernel, params, train_x, train_y, order, shifts, distort,
                                      bs, lr, opt, bar)
    seconds = time.perf_counter() - t0
    if bar:
        sys.stderr.write("\r" + " " * 60 + "\r")
    if not np.isfinite(loss):
        raise Diverged(f"the mean loss is {loss}")
    if not all(np.isfinite(W).all() and np.isfinite(b).all() for W, b in params):
        raise Diverged("the parameters overflowed to inf/NaN")
    test_acc = float(np.mean(kernel.predict(params, test_x) == test_y))
    return dict(epoch=epoch, loss=loss, train_accuracy=train_acc, test_accuracy=test_acc,
                seconds=seconds, samples_per_second=len(order) / seconds, lr=lr)


def run(args, out=None):
    out = out or sys.stdout
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=out, flush=True))
    if args.resume:
        params, opt, first_epoch, history = resume_from(args)
    (train_x, train_y), (test_x, test_y) = load_data(args)
    config.set_threads(args.threads)
    cfg = resolved_config(args, len(train_x))
    kernel = get_kernel(args.kernel)
    dtype = model.DTYPES[args.dtype]
    if not args.resume:
        params = model.init_params(cfg["sizes"], seed=args.seed, dtype=dtype, init=args.init)
        opt, first_epoch, history = make_optimizer(args), 1, []
    compile_seconds = kernel.warmup(cfg["sizes"], dtype)
    bs = cfg["batch_size"]
    say(f"fastnn: {'-'.join(map(str, cfg['sizes']))} net, {args.kernel} kernel, {args.dtype}, "
        f"{args.optimizer} lr {args.lr} ({args.schedule}), batch {bs}, {args.epochs} epochs, "
        f"{cfg['threads']} threads{augmentation_text(args)}"
        + (f", resuming at epoch {first_epoch}" if args.resume else ""))

    rng = np.random.default_rng(args.seed)
    for _ in range(1, first_epoch):  # replay the draws of the epochs already done
        draw_epoch(rng, len(train_x), args)
    show_bar = not args.quiet and sys.stderr.isatty()
    log_every = max(1, args.epochs // 25)
    train_seconds = sum(row["seconds"] for row in history)
    # the checkpoint that holds the last finished epoch, for messages
    last_saved = args.resume

    def kept(epoch, resume_hint=False):
        """What the checkpoint on disk still holds, for the messages below."""
        if not last_saved:
            return ""
        hint = f": continue with --resume {last_saved}" if resume_hint else ""
        return f"; {last_saved} still holds epoch {epoch - 1}{hint}"

    for epoch in range(first_epoch, args.epochs + 1):
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                row = run_epoch(args, kernel, params, opt, rng, epoch, train_x, train_y,
                                test_x, test_y, bs, show_bar)
        except KeyboardInterrupt:
            raise cli.Interrupted(f"interrupted during epoch {epoch}{kept(epoch, True)}") from None
        except Diverged as e:
            last = (f"the last epoch's loss was {history[-1]['loss']:.4f}" if history
                    else "no epoch finished with a finite loss")
            raise Diverged(f"training diverged in epoch {epoch}: {e} ({last}); try a smaller "
                           f"--lr than {args.lr}{kept(epoch)}") from None
        train_seconds += row["seconds"]
        history.append(row)
        if epoch % log_every == 0 or epoch == args.epochs or epoch == first_epoch:
            extra = (f"  (+{compile_seconds:.2f} s JIT compile, excluded)"
                     if epoch == first_epoch and compile_seconds > 0 else "")
            say(f"epoch {epoch:3d}/{args.epochs}  loss {row['loss']:.4f}  train "
                f"{100 * row['train_accuracy']:6.2f}%  test {100 * row['test_accuracy']:6.2f}%"
                f"  {row['seconds']:6.2f} s  {row['samples_per_second']:>11,.0f} samples/s{extra}")
        if args.save:
            try:
                model.save(args.save, params, dict(config=cfg, epoch=epoch, history=history,
                                                   optimizer_step=opt.step), opt.state)
            except KeyboardInterrupt:
                raise cli.Interrupted(f"interrupted while saving epoch {epoch}"
                                      f"{kept(epoch, True)}") from None
            except OSError as e:
                raise OSError(f"cannot write the checkpoint {args.save}: {e.strerror or e}"
                              f"{kept(epoch) or '; nothing was written'}; free some space or "
                              "pass another --save path") from None
            last_saved = args.save

    result = dict(kernel=args.kernel, config=cfg, epochs=history,
                  test_accuracy=history[-1]["test_accuracy"], train_seconds=train_seconds,
                  compile_seconds=compile_seconds)
    say(f"test accuracy {100 * result['test_accuracy']:.2f}% after {train_seconds:.2f} s of "
        f"training ({compile_seconds:.2f} s compile)")
    if args.json:
        model.atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    if args.plot or args.plots_dir:
        write_pictures(args, history, params, kernel.predict(params, test_x), test_x, test_y, say,
                       kernel, train_x)
    return result


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
        plots.predictions_grid(test_x, test_y, preds, args.plot, show=args.show,
                               class_names=class_names(args.dataset))
        written.append(args.plot)
    if args.plots_dir:
        d = args.plots_dir
        os.makedirs(d, exist_ok=True)
        paths = [os.path.join(d, name) for name in
                 ("curves.png", "curves.csv", "confusion.png", "weights.png")]
        plots.training_curves(history, paths[0], paths[1])
        plots.confusion(evaluate.confusion_matrix(test_y, preds), paths[2])
        plots.first_layer_weights(params[0][0], paths[3])
        if distorting(args):
            paths.append(os.path.join(d, "distortions.png"))
            original, versions = distortion_examples(args, kernel, train_x, params[0][0].dtype)
            plots.distortion_grid(original, versions, paths[-1], augmentation_text(args)[2:])
        written += paths
    say(f"wrote {', '.join(written)}")


def main(argv=None):
    args = parse_args(argv)

    def body():
        if args.compare:
            from fastnn import compare

            return compare.run(args, load_data(args))
        run(args)
        return 0

    return cli.run_command(build_parser(), body, (Diverged,))


if __name__ == "__main__":
    sys.exit(main())
