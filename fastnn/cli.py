"""What the command-line tools share: argparse types, path checks and the exit-code policy.

The types return the value or raise ArgumentTypeError with a message that
says what is allowed. ``run_command`` maps outcomes to exit codes: 0 done,
2 a usage error (argparse style), 1 a runtime problem (bad data, a bad
checkpoint, a file that cannot be read or written, ...), 130 Ctrl-C, 141
(quietly) output piped into a program that stopped reading (``| head``);
user errors print one message, no traceback.

``check_paths`` is what every command runs before its work: no two outputs
may name one file, no output may name an input, and every output must be
writable (a directory, a path under a file, ... is refused before a run, not
after it).
"""

import argparse
import contextlib
import os
import signal
import sys
import threading

import numpy as np

from fastnn import files


class UsageError(Exception):
    """A bad flag combination found after parsing (e.g. against the data): exit 2."""


class Interrupted(Exception):
    """Ctrl-C, with a message saying what was kept: exit 130."""


def main(parser, run, argv=None, runtime_errors=()):
    """A command's main(): parse argv, call run(args), return the exit code."""
    args = parser.parse_args(argv)

    def body():
        run(args)
        return 0

    return run_command(parser, body, runtime_errors)


@contextlib.contextmanager
def deferred_interrupt():
    """Ctrl-C (SIGINT) held back until the block ends, then raised there as
    KeyboardInterrupt: a file written in the block and what the program says of it stay
    in step. Only where Python's own handler is in place, in the main thread (elsewhere
    the block runs as it is)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def run_command(parser, body, runtime_errors=()):
    """Call body() -> exit code; turn the tools' expected errors into messages."""
    from fastnn.data import DataError
    from fastnn.model import ModelError

    try:
        return body()
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout's reader has gone (... | head): stop quietly, as other tools do. stdout
        # goes to /dev/null so that Python's flush at exit does not fail on it again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # the shell's status for a tool stopped by the pipe
    except (DataError, ModelError, files.FileError, OSError, *runtime_errors) as e:
        print(f"fastnn: error: {e}", file=sys.stderr)
        return 1
    except MemoryError:  # what the checks up front did not foresee
        print(f"fastnn: error: {parser.prog} ran out of memory; close other programs or ask "
              "for less (a smaller net, batch or data set)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"\nfastnn: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130


def integer(text, expected="an integer"):
    """int(text), or an ArgumentTypeError saying what was expected."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive_int(text):
    value = integer(text, "a positive integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text):
    value = integer(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text):
    value = number(text)
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def non_negative_float(text):
    value = number(text)
    if not (value >= 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def unit_float(text):
    value = number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def number(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def path(text):
    """A file or directory flag: any path but the empty one (``--save ""`` is a mistake,
    not a way to turn the flag off)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


@contextlib.contextmanager
def writing(flag, outcome="nothing was written"):
    """Name ``flag`` in a FileError raised while its output is written (check_paths names
    it before a run, but a FIFO with no reader or a full disk shows only when written),
    and say what became of the output: as it was before (files.write_output), unless
    ``outcome`` says otherwise."""
    try:
        yield
    except files.FileError as e:
        raise files.FileError(f"{flag} {e.path}", f"{e.problem}; {outcome}", e.remedy,
                              e.errno) from None


# suffixes that name another picture format: a PNG written under one would mislead
OTHER_PICTURE_SUFFIXES = (".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".svg",
                          ".pdf", ".eps", ".ps")


def png_path(text):
    """path() for a PNG output: not under a name whose suffix says another format."""
    text = path(text)
    suffix = os.path.splitext(text)[1].lower()
    if suffix in OTHER_PICTURE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text}: fastnn writes PNG pictures, not "
                                         f"{suffix[1:].upper()}; name the file .png")
    return text


def add_model_flags(parser, kernel_default):
    """--model, --kernel and --data-dir: the flags of the commands that use a saved model."""
    from fastnn.kernels import KERNELS

    parser.add_argument("--model", required=True, type=path, metavar="PATH",
                        help="checkpoint written by python -m fastnn.train --save")
    parser.add_argument("--kernel", choices=list(KERNELS), default=kernel_default,
                        help=f"backend (default: {kernel_default})")
    parser.add_argument("--data-dir", type=path, metavar="DIR",
                        help="where the IDX files live or are cached (default: $FASTNN_DATA "
                             "or a per-user cache dir)")


def check_paths(outputs, inputs=(), may_replace=()):
    """Check a command's paths before it starts; call it first thing.

    ``outputs`` and ``inputs`` are (flag, path) pairs, path None when the flag is not
    given; ``may_replace`` holds (output flag, input flag) pairs where writing over the
    input is the point (``--save`` over ``--resume``'s checkpoint). Paths are compared as
    real files, so ``./a.npz``, ``a.npz``, a symlink to it and a hard link all collide;
    devices and FIFOs (``/dev/null``) may take several outputs.

    Raises UsageError (exit 2) when two outputs name one file or an output names an
    input, files.FileError (exit 1) when an output cannot be written (a directory, a path
    under a file, an unwritable directory, ...), naming the flag.
    """
    outputs = [(flag, p) for flag, p in outputs if p is not None]
    inputs = [(flag, p) for flag, p in inputs if p is not None]
    for i, (flag, out) in enumerate(outputs):
        if files.is_stream(out):
            continue
        for other, earlier in outputs[:i]:
            if not files.is_stream(earlier) and files.same_file(out, earlier):
                raise UsageError(f"{other} {earlier} and {flag} {out} name the same file: one "
                                 "would overwrite the other; give each its own path")
        for other, source in inputs:
            if (flag, other) not in may_replace and files.same_file(out, source):
                raise UsageError(f"{flag} {out} would overwrite {other} {source}, which this "
                                 f"command reads; give {flag} another path")
    for flag, out in outputs:
        try:
            files.check_output(out)
        except files.FileError as e:
            remedy = e.remedy
            if flag == "--plots-dir":  # it names the directory; its file names are fixed
                remedy = (f"move {e.path} out of the way, or pass another --plots-dir")
            raise files.FileError(f"{flag} {e.path}", e.problem, remedy) from None


def check_value(parser, dest, value):
    """``value`` as the flag that sets ``dest`` would give it, checked by that flag's own
    type and choices: for settings that come from elsewhere (a checkpoint's config).
    Raises ValueError saying what is wrong."""
    action = next(a for a in parser._actions if a.dest == dest)  # argparse has no public list
    flag = action.option_strings[0]
    many = action.nargs == "+"
    if many and not (isinstance(value, list) and value):
        raise ValueError(f"{flag} {value!r}, not a list of values")
    checked = []
    for item in value if many else [value]:
        # JSON gives str, int, float, bool, None, list, dict: only the kind the flag
        # parses to passes (no "5" for 5, no true for 1)
        if isinstance(item, (bool, list, dict)) or item is None or (
                action.type is not None and isinstance(item, str)):
            raise ValueError(f"{flag} {item!r}, which is not what {flag} takes")
        try:
            parsed = action.type(str(item)) if action.type else str(item)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{flag} {item!r}, which {flag} refuses: {e}") from None
        if action.choices is not None and parsed not in action.choices:
            raise ValueError(f"{flag} {item!r}, not one of {', '.join(action.choices)}")
        checked.append(parsed)
    return checked if many else checked[0]
