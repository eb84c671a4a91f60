"""How every `smartclip-*` command ends: a user error is one line on stderr and exit status 2, success is status 0.

A user error is what the package and the libraries it drives raise for bad input: `ValueError` (the package's
checks, `HfArgumentParser`, `TrainingArguments`, `datasets`) and `OSError` (missing or unreadable files and folders,
Hub downloads, a port that cannot be bound). Anything else is a bug and keeps its traceback.

    def main(argv=None):
        with user_errors("smartclip-x"):
            args = parse_args(argv)
            run(args)
"""

import argparse
import contextlib
import difflib
import sys
from collections.abc import Iterator

USER_ERRORS = (ValueError, OSError)
USAGE_ERROR_STATUS = 2  # argparse's status for a bad command line, kept for every user error


def one_line(error: BaseException) -> str:
    """The error's message on one line (the type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Inside, a `USER_ERRORS` exception becomes `"<prog>: error: <message>"` on stderr and `SystemExit(2)`."""
    try:
        yield
    except USER_ERRORS as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR_STATUS) from None


def raise_parse_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Makes `parser` raise a `ValueError` for a bad command line instead of printing its whole usage (for
    `HfArgumentParser`, over a hundred flags) and exiting: `user_errors` then prints it as one line."""

    def error(message: str):
        raise ValueError(f"{message} (see --help)")

    parser.error = error
    return parser


def unknown_flags_error(unknown: list[str], parser: argparse.ArgumentParser) -> ValueError:
    """A `ValueError` naming the arguments `parser` does not know, with the closest known flag for each."""
    known = [option for action in parser._actions for option in action.option_strings]
    named = []
    for argument in [argument for argument in unknown if argument.startswith("-")] or unknown:  # flags, not values
        close = difflib.get_close_matches(argument.split("=", 1)[0], known, n=1)
        named.append(f"{argument} (did you mean {close[0]}?)" if close else argument)
    return ValueError(f"unrecognized arguments: {', '.join(named)} (see --help)")


__all__ = ["USER_ERRORS", "one_line", "raise_parse_errors", "unknown_flags_error", "user_errors"]
