"""What the command-line tools share: argparse types and the exit-code policy.

The types return the value or raise ArgumentTypeError with a message that
says what is allowed. ``run_command`` maps outcomes to exit codes: 0 done,
2 a usage error (argparse style), 1 a runtime problem (bad data, a bad
checkpoint, ...), 130 Ctrl-C; user errors print one message, no traceback.
"""

import argparse
import sys

import numpy as np


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
    except (DataError, ModelError, OSError, *runtime_errors) as e:
        print(f"fastnn: error: {e}", file=sys.stderr)
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
