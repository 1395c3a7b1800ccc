"""The argparse pieces every command shares: a parser that reports a usage error in one line
(exit code 2), number types with bounds, and the one-line report of a user error found later.

    parser = command_parser(__doc__, prog)     # description: the doc's first paragraph
    parser.add_argument("--steps", type=at_least(int, 1))
    ...
    except ConfigError as err:
        return user_error(err)                 # "error: ..." on stderr, exit code 2
"""

import argparse
import sys

USER_ERROR = 2  # exit code of every command for a bad argument, file or config


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single line (exit code 2)."""

    def error(self, message):
        self.exit(USER_ERROR, f"{self.prog}: error: {message}\n")


def command_parser(doc: str, prog: str | None = None) -> OneLineParser:
    """A command's parser: the first paragraph of its module doc as the description, the rest
    (examples, outputs, exit codes) as the epilog of --help. prog: the name in messages
    (default: the script's file name)."""
    description, _, epilog = doc.strip().partition("\n\n")
    return OneLineParser(
        prog=prog,
        description=" ".join(description.split()),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def at_least(kind: type, minimum, strict: bool = False):
    """argparse type: a number of `kind` (int or float) >= minimum (> minimum if strict)."""
    name = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {name}: {text!r}") from None
        if not (value > minimum if strict else value >= minimum):  # NaN too
            relation = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"must be {relation} {minimum:g}, got {value}")
        return value

    return parse


positive_int = at_least(int, 1)
non_negative_int = at_least(int, 0)
positive_float = at_least(float, 0, strict=True)
non_negative_float = at_least(float, 0)


def user_error(err: Exception) -> int:
    """Reports a user error found after parsing as one `error:` line; the exit code 2."""
    print(f"error: {err}", file=sys.stderr)
    return USER_ERROR
