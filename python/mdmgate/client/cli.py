"""The client commands of ``mdmgate`` (``devices``, ``commands``, ``rollouts``, ``events``,
``tokens``):
their parsers, added to the main command's, and running the one chosen.

Every client command takes the gateway options (``--url``, ``--token``, ``--cacert``,
``--timeout``) and ``--json``, after its action. It exits 0 when it did what it was asked,
2 with one line ``mdmgate: error: ...`` on stderr when it could not (the gateway's refusal as
``<status> <message>``, an unreachable gateway, a bad option), 1 when a watched roll-out
failed or was cancelled, and 130 when interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from mdmgate.client import resources, rollouts
from mdmgate.client.api import ApiClient, ClientError
from mdmgate.client.output import Output, printable

__all__ = ["DEFAULT_URL", "GROUPS", "add_commands", "run"]

DEFAULT_URL = "http://127.0.0.1:8080"
#: The client commands, as the main parser's COMMAND.
GROUPS = ("devices", "commands", "rollouts", "events", "tokens")
USAGE_ERROR = 2
INTERRUPTED = 130
PLATFORMS = ("windows", "ios", "ipados", "macos", "android")

Handler = Callable[[ApiClient, argparse.Namespace, Output], int]
#: Help text is wrapped at this width (the raw formatter keeps the examples as written).
HELP_WIDTH = 88

_ENVIRONMENT = """\
The gateway is $MDMGATE_URL (default http://127.0.0.1:8080), its admin token
$MDMGATE_API_TOKEN (or --url and --token). --json prints JSON for scripts.
"""

DEVICES_LIST_EXAMPLES = """\
examples:
  mdmgate devices list --org /acme --platform ios --platform ipados
  mdmgate devices list --app com.acme.chat --app-version 2.0 --unenrolled
  mdmgate devices list --fact model=Surface --all --json | jq -r '.[].id'
  mdmgate devices list --limit 50 --after DEVICE-ID      (the next page)
"""
DEVICES_SHOW_EXAMPLES = """\
examples:
  mdmgate devices show 8C7F1A2B-0D1E-4F55-9A3B-2C1D0E9F8A7B
  mdmgate devices show win-1 --deliveries        (its queue and history too)
  MDMGATE_URL=https://mdm.example.com mdmgate devices show win-1 --json
"""
COMMANDS_QUEUE_EXAMPLES = (
    "examples:\n"
    "  mdmgate commands queue --device win-1 --device win-2 \\\n"
    "      --raw '<Get><CmdID>1</CmdID><Item><Target><LocURI>./DevDetail/SwV</LocURI>"
    "</Target></Item></Get>'\n"
    "  mdmgate commands queue --device 8C7F1A2B --apple DeviceInformation \\\n"
    '      --payload \'{"Queries": ["OSVersion", "SerialNumber"]}\'\n'
    "  mdmgate commands queue --device win-1 --body command.json"
    "     (any body of POST /api/v1/commands)\n"
    "  mdmgate commands queue --device win-1 --raw-file get.xml --json | jq -r .command_id\n"
)
COMMANDS_SHOW_EXAMPLES = """\
examples:
  mdmgate commands show 0f6b3e0c2a8d4e55b1c7d9e2f3a4b5c6
  mdmgate commands show 0f6b3e0c2a8d4e55b1c7d9e2f3a4b5c6 --json | jq '.deliveries[].state'
"""
COMMANDS_LIST_EXAMPLES = """\
examples:
  mdmgate commands list --device win-1
  mdmgate commands list --kind apple --all --json
"""
COMMANDS_CANCEL_EXAMPLES = """\
examples:
  mdmgate commands cancel 0f6b3e0c2a8d4e55b1c7d9e2f3a4b5c6
  mdmgate commands cancel 0f6b3e0c2a8d4e55b1c7d9e2f3a4b5c6 --device win-2
"""
ROLLOUTS_START_EXAMPLES = """\
examples:
  mdmgate rollouts start com.acme.chat --org /acme/sales --pace 500 --watch
  mdmgate rollouts start com.acme.chat --all-devices --percent 10 --version 2.1
  mdmgate rollouts start com.acme.chat --org /acme --at 2026-12-24T22:00:00Z
  mdmgate rollouts start com.acme.chat --device win-1 --watch --until-delivered --json
"""
ROLLOUTS_SHOW_EXAMPLES = """\
examples:
  mdmgate rollouts show 6addfea618ef4817a35c1f964212a7f2
  mdmgate rollouts show 6addfea618ef4817a35c1f964212a7f2 --watch --interval 5
"""
ROLLOUTS_CANCEL_EXAMPLES = """\
examples:
  mdmgate rollouts cancel 6addfea618ef4817a35c1f964212a7f2
"""
EVENTS_TAIL_EXAMPLES = """\
examples:
  mdmgate events tail --types command.acknowledged,command.error
  mdmgate events tail --follow --device win-1
  mdmgate events tail --after 4711 --follow --json | your-console-sync
"""
TOKENS_CREATE_EXAMPLES = """\
examples:
  mdmgate tokens create console --scope read
  mdmgate tokens create deploy-bot --scope full --json | jq -r .token
"""
TOKENS_LIST_EXAMPLES = """\
examples:
  mdmgate tokens list
  mdmgate tokens list --json | jq -r '.[] | select(.revoked_at == null) | .name'
"""
TOKENS_REVOKE_EXAMPLES = """\
examples:
  mdmgate tokens revoke 3f9c2a7b1d4e6f80
"""

_WATCH_HELP = """\
--watch shows each wave's devices as done (acknowledged), failed (an error, or given up)
or pending, drawn again in place on a terminal and one line per change elsewhere. It ends
with the roll-out: status 0 once its last wave is queued (with --until-delivered: once no
delivery is pending, and no failed one), 1 when it failed or was cancelled.
"""


# --- option types -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _page_size(text: str) -> int:
    value = _positive_int(text)
    if value > resources.MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be at most {resources.MAX_PAGE}, not {value}")
    return value


def _sequence(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an event sequence number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 86400, not {text}")
    return value


def _instant(text: str) -> float:
    """Unix seconds, or an RFC 3339 time with its offset (``Z`` for UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not Unix seconds nor an RFC 3339 time: {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the time's offset (Z for UTC): {text!r}")
    return moment.timestamp()


def _fact(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"must be NAME=VALUE, not {text!r}")
    return name, value


def _types(text: str) -> list[str]:
    found = [t.strip() for t in text.split(",") if t.strip()]
    if not found:
        raise argparse.ArgumentTypeError(f"no event type in {text!r}")
    return found


# --- parsers ------------------------------------------------------------------------------------


def _gateway_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("gateway options")
    group.add_argument(
        "--url",
        metavar="URL",
        help=f"the gateway (default: $MDMGATE_URL, else {DEFAULT_URL})",
    )
    group.add_argument(
        "--token",
        metavar="TOKEN",
        help="the admin API's bearer token (default: $MDMGATE_API_TOKEN, which keeps it out"
        " of the process list)",
    )
    group.add_argument(
        "--cacert",
        metavar="FILE",
        help="trust the CA certificates in this PEM file for an https gateway, instead of"
        " the system's",
    )
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="give up on a gateway silent this long (default 30)",
    )
    options.add_argument("--json", action="store_true", help="print JSON for scripts")
    return options


def _paragraphs(text: str) -> str:
    return "\n\n".join(textwrap.fill(p, HELP_WIDTH) for p in text.split("\n\n"))


class _Group:
    """One client command and its actions' parsers."""

    def __init__(self, commands: Any, name: str, help_: str, description: str) -> None:
        self.name = name
        self.common = _gateway_options()
        self.epilogs: list[str] = []
        self.parser = commands.add_parser(
            name,
            help=help_,
            description=_paragraphs(description),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.actions = self.parser.add_subparsers(
            dest="action", metavar="ACTION", parser_class=type(self.parser)
        )
        self.actions.required = True

    def action(self, name: str, help_: str, description: str, epilog: str) -> Any:
        self.epilogs.append(epilog.removeprefix("examples:\n"))
        return self.actions.add_parser(
            name,
            help=help_,
            description=_paragraphs(description),
            epilog=epilog + "\n" + _ENVIRONMENT,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[self.common],
        )

    def done(self) -> None:
        self.parser.epilog = "examples:\n" + "".join(self.epilogs) + "\n" + _ENVIRONMENT


def _devices(commands: Any) -> None:
    group = _Group(
        commands,
        "devices",
        "list and show a running gateway's devices",
        "List the devices of a running gateway, filtered, or show one with its apps and facts.",
    )
    listing = group.action(
        "list",
        "devices in id order, filtered",
        "List devices in id order; every filter given must hold. Reads pages until --limit"
        " devices (or, with --all, the end); when more are left, stderr says which --after"
        " goes on.",
        DEVICES_LIST_EXAMPLES,
    )
    listing.add_argument(
        "--platform", action="append", choices=PLATFORMS, help="of this platform (repeatable)"
    )
    listing.add_argument("--org", metavar="ORG", help="in this org or below it (/acme: /acme/x)")
    enrolled = listing.add_mutually_exclusive_group()
    enrolled.add_argument("--enrolled", dest="enrolled", action="store_const", const=True)
    enrolled.add_argument("--unenrolled", dest="enrolled", action="store_const", const=False)
    listing.add_argument(
        "--last-seen-after", type=_instant, metavar="TIME", help="Unix or RFC 3339"
    )
    listing.add_argument("--last-seen-before", type=_instant, metavar="TIME")
    listing.add_argument("--app", metavar="IDENTIFIER", help="holding this app")
    listing.add_argument("--app-version", metavar="V", help="with --app: at this version")
    listing.add_argument(
        "--fact",
        action="append",
        type=_fact,
        metavar="NAME=VALUE",
        help="top-level fact NAME equals VALUE (repeatable)",
    )
    listing.add_argument("--after", metavar="ID", help="devices after this id")
    listing.add_argument("--limit", type=_positive_int, default=100, help="at most (default 100)")
    listing.add_argument("--all", action="store_true", help="every device, however many")

    show = group.action(
        "show",
        "a device: its apps, facts and (--deliveries) queue",
        "Show a device: platform, org, OS, its app inventory and its latest facts.",
        DEVICES_SHOW_EXAMPLES,
    )
    show.add_argument("device_id", metavar="DEVICE_ID")
    show.add_argument(
        "--deliveries", action="store_true", help="its commands too: queue and history"
    )
    group.done()


def _commands(commands: Any) -> None:
    group = _Group(
        commands,
        "commands",
        "queue, show, list and cancel commands on a running gateway",
        "Queue commands for devices, see what they sent and how each device answered, and"
        " cancel those not handed out yet.",
    )
    queue = group.action(
        "queue",
        "queue one command for devices",
        "Queue one command for one or more devices of one channel (Windows, or Apple). Give"
        " the command as raw SyncML or plist text, a typed Apple command, SyncML as JSON, or"
        " a whole API body from a file.",
        COMMANDS_QUEUE_EXAMPLES,
    )
    queue.add_argument("--device", action="append", metavar="ID", help="repeatable")
    body = queue.add_mutually_exclusive_group()
    body.add_argument("--raw", metavar="TEXT", help="one SyncML command, or an Apple plist")
    body.add_argument("--raw-file", metavar="FILE", help="--raw from a file (- for stdin)")
    body.add_argument("--apple", metavar="REQUEST_TYPE", help="a typed Apple command")
    body.add_argument("--syncml", metavar="JSON", help="one SyncML command as JSON")
    body.add_argument("--body", metavar="FILE", help="the API's command body (- for stdin)")
    queue.add_argument("--payload", metavar="JSON", help="with --apple: the Command's keys")
    queue.add_argument("--command-uuid", metavar="ID", help="with --apple: the command's id")

    show = group.action(
        "show",
        "a command: its body and each device's delivery",
        "Show a command: the body it sends and each device's delivery state and result.",
        COMMANDS_SHOW_EXAMPLES,
    )
    show.add_argument("command_id", metavar="COMMAND_ID")

    listing = group.action(
        "list",
        "commands in the order they were first queued",
        "List commands in the order they were first queued, with their deliveries pending,"
        " done (acknowledged) and failed.",
        COMMANDS_LIST_EXAMPLES,
    )
    listing.add_argument("--device", metavar="ID", help="queued for this device")
    listing.add_argument("--kind", choices=("syncml", "apple"), help="of this channel")
    listing.add_argument("--after", metavar="COMMAND_ID", help="commands after this one")
    listing.add_argument("--limit", type=_positive_int, default=100, help="at most (default 100)")
    listing.add_argument("--all", action="store_true", help="every command, however many")

    cancel = group.action(
        "cancel",
        "cancel a command not handed out yet",
        "Cancel a command for every device, or those named: deliveries not handed out yet"
        " end; those a device has in hand finish.",
        COMMANDS_CANCEL_EXAMPLES,
    )
    cancel.add_argument("command_id", metavar="COMMAND_ID")
    cancel.add_argument("--device", action="append", metavar="ID", help="only for these")
    group.done()


def _watch_options(parser: Any) -> None:
    parser.add_argument("--watch", action="store_true", help="follow it wave by wave")
    parser.add_argument(
        "--until-delivered",
        action="store_true",
        help="watch until no delivery is pending (implies --watch)",
    )
    parser.add_argument(
        "--interval", type=_seconds, default=1.0, metavar="S", help="look every S seconds"
    )


def _rollouts(commands: Any) -> None:
    group = _Group(
        commands,
        "rollouts",
        "start, watch and cancel app roll-outs on a running gateway",
        "Roll an app of the catalogue out (an install notification): now, at a set time, to"
        " a stable percentage, in paced waves; watch it wave by wave; cancel it.",
    )
    start = group.action(
        "start",
        "notify devices to install (or update to) an app version",
        "Start a roll-out of APP_ID to orgs (with their sub-organisations), devices, or all"
        " devices of its platform.\n\n" + _WATCH_HELP,
        ROLLOUTS_START_EXAMPLES,
    )
    start.add_argument("app_id", metavar="APP_ID")
    start.add_argument("--version", metavar="V", help="default: the latest active")
    start.add_argument("--org", action="append", metavar="ORG", help="repeatable")
    start.add_argument("--device", action="append", metavar="ID", help="repeatable")
    start.add_argument(
        "--all-devices", action="store_true", help="every device of the app's platform"
    )
    start.add_argument("--installed-only", action="store_true", help="devices holding the app")
    start.add_argument("--take-over", action="store_true", help="Apple: manage users' copies")
    start.add_argument("--assignments", action="store_true", help="each device's assigned version")
    start.add_argument("--at", metavar="TIME", help="RFC 3339 with offset (default now)")
    start.add_argument("--percent", type=float, metavar="P", help="a stable P%% of the devices")
    start.add_argument("--seed", metavar="S", help="picks which devices --percent takes")
    start.add_argument("--pace", type=_positive_int, metavar="N", help="N devices a minute")
    _watch_options(start)

    show = group.action(
        "show",
        "a roll-out: state, waves, counts",
        "Show a roll-out: its state, each wave's devices done, failed and pending, and the"
        " devices not sent to by reason.\n\n" + _WATCH_HELP,
        ROLLOUTS_SHOW_EXAMPLES,
    )
    show.add_argument("rollout_id", metavar="ROLLOUT_ID")
    _watch_options(show)

    cancel = group.action(
        "cancel",
        "cancel a scheduled or running roll-out",
        "Cancel a scheduled or running roll-out: no wave runs after it (commands queued"
        " stay queued; cancel those with `mdmgate commands cancel`).",
        ROLLOUTS_CANCEL_EXAMPLES,
    )
    cancel.add_argument("rollout_id", metavar="ROLLOUT_ID")
    group.done()


def _events(commands: Any) -> None:
    group = _Group(
        commands,
        "events",
        "print (and follow) a running gateway's event log",
        "Print the gateway's event log: commands answered, devices enrolled, inventories"
        " changed, roll-out waves run, ...",
    )
    tail = group.action(
        "tail",
        "events after a sequence number, then (--follow) as they come",
        "Print the events after --after (default 0: from the oldest kept) until caught up;"
        " with --follow wait for more, until interrupted. One line per event; --json prints"
        " JSON lines.",
        EVENTS_TAIL_EXAMPLES,
    )
    tail.add_argument(
        "--after",
        type=_sequence,
        default=0,
        metavar="SEQ",
        help="events after this one (the seq of the last one seen; default 0)",
    )
    tail.add_argument(
        "--types",
        action="extend",
        type=_types,
        metavar="T,T",
        help="only these types (comma-separated, repeatable)",
    )
    tail.add_argument("--device", metavar="ID", help="only about this device")
    tail.add_argument("--follow", action="store_true", help="wait for more")
    tail.add_argument(
        "--limit", type=_page_size, default=100, metavar="N", help="events per request"
    )
    group.done()


def _tokens(commands: Any) -> None:
    group = _Group(
        commands,
        "tokens",
        "make, list and revoke a running gateway's named API tokens",
        "Make named admin API tokens for consoles and scripts (scope read: look only; full:"
        " everything), list them and revoke them. Managing tokens needs a full token.",
    )
    create = group.action(
        "create",
        "make a token; prints it, shown this once",
        "Make a named token and print it: the gateway keeps only its hash and never shows it"
        " again.",
        TOKENS_CREATE_EXAMPLES,
    )
    create.add_argument("name", metavar="NAME", help="unique among unrevoked tokens")
    create.add_argument("--scope", choices=("read", "full"), default="read", help="default: read")
    group.action(
        "list",
        "every named token, revoked ones too",
        "List the named tokens, oldest first: scope, when made, last used and revoked.",
        TOKENS_LIST_EXAMPLES,
    )
    revoke = group.action(
        "revoke",
        "revoke a token on every node",
        "Revoke a token: every node refuses it from its next request.",
        TOKENS_REVOKE_EXAMPLES,
    )
    revoke.add_argument("token_id", metavar="TOKEN_ID")
    group.done()


def add_commands(commands: Any) -> None:
    """Adds the client commands to the main parser's sub-commands (``commands``, an
    ``add_subparsers`` action); their parsers are of its parser class."""
    _devices(commands)
    _commands(commands)
    _rollouts(commands)
    _events(commands)
    _tokens(commands)


# --- running ------------------------------------------------------------------------------------

HANDLERS: dict[tuple[str, str], Handler] = {
    ("devices", "list"): resources.devices_list,
    ("devices", "show"): resources.devices_show,
    ("commands", "queue"): resources.commands_queue,
    ("commands", "show"): resources.commands_show,
    ("commands", "list"): resources.commands_list,
    ("commands", "cancel"): resources.commands_cancel,
    ("rollouts", "start"): rollouts.start,
    ("rollouts", "show"): rollouts.show,
    ("rollouts", "cancel"): rollouts.cancel,
    ("events", "tail"): resources.events_tail,
    ("tokens", "create"): resources.tokens_create,
    ("tokens", "list"): resources.tokens_list,
    ("tokens", "revoke"): resources.tokens_revoke,
}


def run(args: argparse.Namespace) -> int:
    """Runs the client command ``args`` names; returns its exit status."""
    handler = HANDLERS[(args.command, args.action)]
    if getattr(args, "until_delivered", False):
        args.watch = True
    out = Output(sys.stdout, sys.stderr, json=args.json, tty=sys.stdout.isatty())
    url = args.url or os.environ.get("MDMGATE_URL") or DEFAULT_URL
    token = args.token if args.token is not None else os.environ.get("MDMGATE_API_TOKEN")
    try:
        with ApiClient(url, token, cacert=args.cacert, timeout=args.timeout) as client:
            return handler(client, args, out)
    except ClientError as exc:
        print(f"mdmgate: error: {printable(str(exc))}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): not an error of ours. Later flushes of stdout
        # (at exit) must not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
