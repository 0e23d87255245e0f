"""The ``mdmgate`` command.

Bad input to any command prints one line naming the problem on stderr, nothing on
stdout, and exits with status 2.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from mdmgate import __version__, syncml, versions
from mdmgate.errors import MdmgateError

USAGE_ERROR = 2

EPILOG = """\
examples:
  mdmgate version compare --platform ios 1.2b3 1.2        prints <
  mdmgate version compare --platform windows 1.2.3.4 1.2.3.9   prints = (4th part ignored)
  printf '10\\n9\\n100\\n' | mdmgate version sort --platform android
  mdmgate syncml decode request.xml > request.json
  mdmgate syncml encode --wbxml request.json > request.wbxml
  mdmgate syncml decode request.wbxml | mdmgate syncml encode    (WBXML to XML)
"""

SYNCML_EPILOG = """\
The JSON uses SyncML's element names as keys and keeps command order; docs/syncml.md
describes it. Binary WBXML data that is not UTF-8 appears as {"base64": "..."}.

examples:
  mdmgate syncml decode request.xml > request.json
  mdmgate syncml encode --wbxml request.json > request.wbxml
  mdmgate syncml decode request.wbxml | mdmgate syncml encode    (WBXML to XML)
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

    sync = commands.add_parser(
        "syncml",
        help="convert OMA-DM SyncML messages (XML, WBXML) to and from JSON",
        description="Convert OMA-DM SyncML 1.2 messages between XML/WBXML and JSON.",
        epilog=SYNCML_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sync_actions = sync.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    sync_actions.required = True
    decode = sync_actions.add_parser(
        "decode",
        help="SyncML (XML or WBXML, detected) to JSON on stdout",
        description=(
            "Read a SyncML message (XML or WBXML, detected from its first byte) and print it "
            "as JSON. Hostile input (DTD subsets, entity tricks, oversized or deeply nested "
            "messages) is refused with the byte offset of the problem."
        ),
        epilog=SYNCML_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decode.add_argument("file", nargs="?", default="-", metavar="FILE", help="input, - for stdin")
    encode = sync_actions.add_parser(
        "encode",
        help="JSON to SyncML bytes on stdout (XML unless --wbxml)",
        description=(
            "Read the JSON form of a message and write SyncML XML (or WBXML with --wbxml). "
            'Every command needs a unique CmdID other than "0".'
        ),
        epilog=SYNCML_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    encode.add_argument("file", nargs="?", default="-", metavar="FILE", help="input, - for stdin")
    encode.add_argument("--wbxml", action="store_true", help="write WBXML instead of XML")
    return parser


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        raise _InputError(f"cannot read {name}: {e.strerror}") from None


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"base64"} and isinstance(value["base64"], str):
            try:
                return base64.b64decode(value["base64"], validate=True)
            except ValueError:
                raise _InputError('a {"base64": ...} value is not valid base64') from None
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _syncml_decode(args: argparse.Namespace) -> str:
    message = syncml.to_dict(_read_input(args.file))
    return json.dumps(_json_safe(message), indent=2, ensure_ascii=False) + "\n"


def _syncml_encode(args: argparse.Namespace) -> bytes:
    data = _read_input(args.file)
    try:
        message = json.loads(data)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
        raise _InputError(f"input is not JSON: {e.msg} ({where})") from None
    except UnicodeDecodeError as e:
        raise _InputError(f"input is not UTF-8 (at byte {e.start})") from None
    if not isinstance(message, dict):
        raise _InputError("input must be a JSON object with SyncHdr and SyncBody")
    return syncml.from_dict(_from_json(message), wbxml=args.wbxml)


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
    handlers: dict[tuple[str, str], Callable[[argparse.Namespace], str | bytes]] = {
        ("version", "compare"): _version_compare,
        ("version", "sort"): _version_sort,
        ("syncml", "decode"): _syncml_decode,
        ("syncml", "encode"): _syncml_encode,
    }
    handler = handlers[(args.command, args.action)]
    try:
        output = handler(args)
    except (MdmgateError, _InputError) as e:
        print(f"mdmgate: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    try:
        if isinstance(output, bytes):
            sys.stdout.buffer.write(output)
        else:
            sys.stdout.write(output)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`); not an error of ours.
        sys.stderr.close()
    return 0
