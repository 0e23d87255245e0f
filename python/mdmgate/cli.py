"""The ``mdmgate`` command.

Bad input to any command prints one line naming the problem on stderr, nothing on
stdout, and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from mdmgate import __version__, versions
from mdmgate.errors import MdmgateError

USAGE_ERROR = 2

EPILOG = """\
examples:
  mdmgate version compare --platform ios 1.2b3 1.2        prints <
  mdmgate version compare --platform windows 1.2.3.4 1.2.3.9   prints = (4th part ignored)
  printf '10\\n9\\n100\\n' | mdmgate version sort --platform android
"""


class _InputError(Exception):
    """Bad input found by a command; the message is the whole error line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other input error of the command.
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mdmgate",
        description="mdmgate: a device-management gateway for Windows and Apple fleets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mdmgate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    version = commands.add_parser(
        "version",
        help="compare and sort app versions by platform rules",
        description=(
            "Order app versions the way the platform does. Platforms: "
            + ", ".join(versions.PLATFORMS)
            + " (ipados is accepted as ios). See docs/versions.md for each rule."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = version.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True

    compare = actions.add_parser(
        "compare",
        help="print <, = or > for two versions",
        description="Print '<', '=' or '>' as A is lower than, equal to or higher than B.",
    )
    compare.add_argument("--platform", required=True, metavar="P", help="version rule to use")
    compare.add_argument("a", metavar="A")
    compare.add_argument("b", metavar="B")

    sort = actions.add_parser(
        "sort",
        help="sort versions read one per line from stdin",
        description=(
            "Read versions one per line from stdin and print them ascending. Blank lines "
            "are skipped; versions that order equal keep their input order."
        ),
    )
    sort.add_argument("--platform", required=True, metavar="P", help="version rule to use")
    sort.add_argument("--reverse", action="store_true", help="print the highest first")
    return parser


def _version_compare(args: argparse.Namespace) -> str:
    result = versions.compare(args.a, args.b, platform=args.platform)
    return "<=>"[result + 1] + "\n"


def _version_sort(args: argparse.Namespace) -> str:
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _InputError(f"stdin is not UTF-8 (at byte {e.start})") from None
    lines: list[str] = []
    line_numbers: list[int] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if line.strip():
            lines.append(line)
            line_numbers.append(number)
    try:
        ordered = versions.sort(lines, platform=args.platform, reverse=args.reverse)
    except versions.InvalidVersion as e:
        if e.index is None:
            raise
        detail = e.message.removeprefix(f"item {e.index}: ")
        raise _InputError(f"line {line_numbers[e.index]}: {detail}") from None
    return "".join(f"{v}\n" for v in ordered)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    handlers = {
        ("version", "compare"): _version_compare,
        ("version", "sort"): _version_sort,
    }
    handler = handlers[(args.command, args.action)]
    try:
        output = handler(args)
    except (MdmgateError, _InputError) as e:
        print(f"mdmgate: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    try:
        sys.stdout.write(output)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`); not an error of ours.
        sys.stderr.close()
    return 0
