"""`python -m fastnn.bench`: the pytest-benchmark suite of fastnn/bench/suite.py (every
case checked against the reference before it is timed), rendered by fastnn/bench/report.py."""

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile

from fastnn import cli, config, files, memory, model
from fastnn.kernels import KERNELS
from fastnn.peers import PEERS

DEFAULT_NETS = [(10, 32), (10, 128), (128, 128), (800, 128)]  # (hidden, batch size)
TRAIN_IMAGES = 60000  # a batch size above it would train in batches of this many
ROUNDS = 5  # timed rounds a case gets at least (--rounds)
MAX_ROUNDS = 1000  # a round is a full epoch: 1000 of 784-800-10 already take an hour
# A case's timed rounds last at least this long in all (not with --quick): an epoch of
# 784-10-10 takes ~35 ms, and five of them measured which phase of a noisy machine they
# met more than the kernel (back to back with the training command: 0.6-1.6x its figure)
MIN_CASE_SECONDS = 1.0


def rounds(text):
    value = cli.positive_int(text)
    if value > MAX_ROUNDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_ROUNDS}, got {value}")
    return value


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastnn.bench",
        description="Check every backend and peer against the reference, then time training "
                    "(full 60,000-image epochs), inference, thread scaling and compilation. "
                    "Default grid: 784-10-10 at batch 32 and 128, 784-128-10 and 784-800-10 at "
                    "batch 128, float32. Peers that are not installed are left out (say how "
                    "to install them).")
    p.add_argument("--hidden", type=cli.positive_int, nargs="+", metavar="N",
                   help="hidden widths (with --batch-size: every pair; default batch 128)")
    p.add_argument("--batch-size", type=cli.positive_int, nargs="+", metavar="N",
                   help="batch sizes (default hidden: 10 128 800)")
    p.add_argument("--dtype", nargs="+", choices=list(model.DTYPES), default=["float32"])
    p.add_argument("--only", nargs="+", metavar="NAME", choices=[*KERNELS, *PEERS],
                   help=f"backends and peers to run (default: all of {', '.join(KERNELS)}, "
                        f"{', '.join(PEERS)})")
    p.add_argument("--rounds", type=rounds,
                   help=f"timed epochs per case, 1..{MAX_ROUNDS} (default {ROUNDS}); a fast "
                        "case runs more, to last about a second")
    p.add_argument("--threads", type=cli.positive_int,
                   help="threads for every backend and peer (default: all)")
    p.add_argument("--data", choices=["auto", "mnist", "synthetic"], default="auto",
                   help="MNIST (downloaded if needed), or synthetic images of the same shape")
    p.add_argument("--no-scaling", action="store_true", help="skip numba at 1 thread")
    p.add_argument("--no-compile", action="store_true", help="skip cold compile times")
    p.add_argument("--no-contention", action="store_true",
                   help="skip numba's epochs with another busy process running")
    p.add_argument("--no-distortion", action="store_true",
                   help="skip numba's epochs with --preset record's distortion")
    p.add_argument("--quick", action="store_true",
                   help="check the machinery: 784-10-10 at batch 128, 1 round, no scaling, "
                        "compile times, contention or distortion")
    p.add_argument("--json", metavar="PATH", type=cli.path,
                   help="also write the report as JSON")
    return p


def settings(args):
    """fastnn.bench.suite.SETTINGS as the flags ask for them."""
    if args.hidden or args.batch_size:
        nets = [(h, b) for h in args.hidden or [10, 128, 800] for b in args.batch_size or [128]]
    else:
        nets = [(10, 128)] if args.quick else DEFAULT_NETS
    nets = list(dict.fromkeys(nets))  # a value named twice is timed once (one figure a case)
    return dict(hidden=[h for h, _ in nets], batch_size=[b for _, b in nets],
                dtype=list(dict.fromkeys(args.dtype)),
                names=list(dict.fromkeys(args.only or [*KERNELS, *PEERS])),
                rounds=1 if args.quick else args.rounds or ROUNDS, data=args.data,
                min_seconds=0.0 if args.quick else MIN_CASE_SECONDS,
                scaling=not (args.quick or args.no_scaling),
                compile=not (args.quick or args.no_compile),
                contention=not (args.quick or args.no_contention),
                distortion=not (args.quick or args.no_distortion), threads=args.threads)


class SuiteError(Exception):
    """The suite could not run or timed nothing; the message says why."""


class _Interrupted:
    """A pytest plugin: was the run stopped by Ctrl-C? (pytest's INTERRUPTED exit code
    also means a collection error.)"""

    seen = False

    def pytest_keyboard_interrupt(self, excinfo):
        self.seen = True


def run(args, out=sys.stdout):
    """Run the suite, print the report; return (exit code, report)."""
    missing = [m for m in ("pytest_benchmark", "threadpoolctl")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise SuiteError(f"python -m fastnn.bench needs {' and '.join(missing)}: install "
                         "fastnn's bench extra (pip install '.[bench]' in a checkout)")
    import pytest

    from fastnn.bench import report

    os.environ["FASTNN_BENCH"] = json.dumps(settings(args))
    with tempfile.TemporaryDirectory(prefix="fastnn-bench-") as tmp:
        raw, ini = os.path.join(tmp, "benchmarks.json"), os.path.join(tmp, "pytest.ini")
        with open(ini, "w") as f:  # none of a checkout's pytest settings
            f.write("[pytest]\n")
        # pytest's progress goes to stderr; stdout is the report
        interrupted = _Interrupted()
        with contextlib.redirect_stdout(sys.stderr):
            code = pytest.main(["--pyargs", "fastnn.bench.suite", "-p", "fastnn.bench.report",
                                "-p", "no:cacheprovider", "--benchmark-enable",
                                "--benchmark-json", raw, "--benchmark-save-data",
                                "--benchmark-columns=median,min,max,rounds", "-q", "-rfs",
                                # the plugin is imported before pytest could rewrite it
                                "-W", "ignore::pytest.PytestAssertRewriteWarning",
                                "-c", ini, "--rootdir", tmp], plugins=[interrupted])
        if interrupted.seen:
            raise KeyboardInterrupt
        if not os.path.exists(raw):
            why = ("every case was skipped" if code in (pytest.ExitCode.OK,
                                                        pytest.ExitCode.NO_TESTS_COLLECTED)
                   else "no case got as far as its timing")
            raise SuiteError(f"nothing was timed: {why} (see pytest's summary above; a peer "
                             "that is not installed says how to install it, a backend that "
                             f"disagrees with the reference what it got wrong; pytest exit "
                             f"code {code:d})")
        with open(raw) as f:
            lines, data = report.render(json.load(f))
    print("\n".join(lines), file=out, flush=True)
    if code != 0:
        print("Some cases failed (see pytest's summary above): a backend that disagrees with "
              "the reference is never timed.", file=out)
    return (0 if code == 0 else 1), data


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads and args.threads > config.max_threads():
        parser.error(f"--threads {args.threads}: at most {config.max_threads()} here")
    if args.quick and args.rounds:
        parser.error("--quick times one round a case: drop --rounds (or --quick)")
    if args.batch_size and max(args.batch_size) > TRAIN_IMAGES:
        parser.error(f"--batch-size {max(args.batch_size)}: larger than the {TRAIN_IMAGES:,} "
                     "training images; use at most that")
    for hidden in sorted(set(settings(args)["hidden"])):
        sizes = model.layer_sizes([hidden])
        # float64 draw, params, a gradient per lane, peers' copies: about 16 floats each
        too_big = memory.too_large(model.n_params(sizes) * 16 * 8,
                                   f"benchmarking a {'-'.join(map(str, sizes))} net")
        if too_big:
            parser.error(f"--hidden {hidden}: {too_big}; choose smaller widths")

    def body():
        cli.check_paths([("--json", args.json)])  # before the run, not after it
        code, data = run(args)
        if args.json:
            with cli.writing("--json"):
                files.write_text(args.json, json.dumps(data, indent=2) + "\n")
            print(f"JSON written to {args.json}")
        return code

    return cli.run_command(parser, body, runtime_errors=(SuiteError,))
