"""``mdmgate devices|commands|events|tokens ...``: the handlers, each reading its options from the
parsed arguments, calling the admin API and printing a table (or JSON with ``--json``).

Lists follow the API's cursor: they read pages until ``--limit`` items (or, with ``--all``,
the end) and, when more are left, say on stderr which ``--after`` goes on from there.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mdmgate.client.api import ApiClient, OptionError, Query, resource
from mdmgate.client.output import (
    Output,
    cell,
    fields,
    json_line,
    json_text,
    plural,
    printable,
    table,
    timestamp,
)
from mdmgate.client.rollouts import DONE, FAILED

__all__ = [
    "command_body",
    "commands_cancel",
    "commands_list",
    "commands_queue",
    "commands_show",
    "devices_list",
    "devices_show",
    "events_tail",
    "tokens_create",
    "tokens_list",
    "tokens_revoke",
]

#: The API's largest page.
MAX_PAGE = 1000
#: How long one long poll of ``events tail --follow`` waits at the gateway (its maximum).
FOLLOW_WAIT_SECONDS = 30
#: Longest result shown in a table cell (``--json`` has it whole).
RESULT_WIDTH = 60
FACT_WIDTH = 80


def _pages(
    client: ApiClient,
    path: str,
    query: Query,
    key: str,
    *,
    limit: int | None,
    after: str | None,
) -> tuple[list[Any], str | None]:
    """Up to ``limit`` items (every one when ``None``) from ``after`` on, and the cursor to
    go on from (``None``: the list was read to its end)."""
    items: list[Any] = []
    cursor = after
    while True:
        size = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(items))
        page = client.get(path, {**query, "after": cursor, "limit": size})
        items += page[key]
        cursor = page["next"]
        if cursor is None or (limit is not None and len(items) >= limit):
            return items, cursor


def _more(out: Output, what: str, cursor: str | None) -> None:
    if cursor is not None:
        out.note(f"more {what}: go on with --after {cursor}")


# --- devices ------------------------------------------------------------------------------------


def devices_list(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    query: dict[str, Any] = {
        "platform": args.platform,
        "org": args.org,
        "enrolled": {True: "true", False: "false", None: None}[args.enrolled],
        "last_seen_after": args.last_seen_after,
        "last_seen_before": args.last_seen_before,
        "app": args.app,
        "app_version": args.app_version,
    }
    for name, value in args.fact or ():
        query[f"fact.{name}"] = value
    limit = None if args.all else args.limit
    devices, cursor = _pages(client, "/devices", query, "devices", limit=limit, after=args.after)
    if out.json:
        out.write(json_text(devices))
    else:
        headers = ("ID", "PLATFORM", "ORG", "OS", "SUPERVISED", "ENROLLED", "APPS", "LAST SEEN")
        out.write(table(headers, [_device_row(d) for d in devices]))
    _more(out, "devices", cursor)
    return 0


def _device_row(device: Mapping[str, Any]) -> list[Any]:
    facts = device.get("facts") or {}
    return [
        device["id"],
        device["platform"],
        device["org"],
        device.get("os_version"),
        device.get("supervised"),
        "unenrolled" not in facts,
        len(device.get("apps") or []),
        timestamp(facts.get("last_seen")),
    ]


def devices_show(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    device = client.get(resource("devices", args.device_id))
    deliveries = None
    if args.deliveries:
        deliveries = client.get(resource("devices", args.device_id, "deliveries"))["deliveries"]
    if out.json:
        out.write(json_text(device if deliveries is None else {**device, "deliveries": deliveries}))
        return 0
    facts: Mapping[str, Any] = device.get("facts") or {}
    blocks = [
        fields(
            [
                ("id", device["id"]),
                ("platform", device["platform"]),
                ("org", device["org"]),
                ("os", device.get("os_version")),
                ("supervised", device.get("supervised")),
                ("credentials", device.get("auth_configured")),
                ("enrolled", "unenrolled" not in facts),
                ("last seen", timestamp(facts.get("last_seen"))),
            ]
        ),
        table(
            ("APP", "VERSION", "NAME", "SOURCE"),
            [
                (a["identifier"], a.get("version"), a.get("name"), a.get("source"))
                for a in device.get("apps") or []
            ],
        ),
        table(
            ("FACT", "VALUE"),
            [(name, cell(facts[name], FACT_WIDTH)) for name in sorted(facts)],
        ),
    ]
    if deliveries is not None:
        rows = [
            (
                d["command_id"],
                d["kind"],
                d["state"],
                d.get("status"),
                d.get("offers"),
                cell(d.get("result"), RESULT_WIDTH),
            )
            for d in deliveries
        ]
        headers = ("COMMAND", "KIND", "STATE", "STATUS", "OFFERS", "RESULT")
        blocks.append(table(headers, rows) or "no deliveries\n")
    out.write("\n".join(b for b in blocks if b))
    return 0


# --- commands -----------------------------------------------------------------------------------


def _read_text(name: str, option: str) -> str:
    try:
        if name == "-":
            return sys.stdin.read()
        return Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise OptionError(f"{option}: cannot read {name}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise OptionError(f"{option}: {name} is not UTF-8 (at byte {exc.start})") from None


def _json_option(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise OptionError(f"{option} is not JSON: {exc.msg} ({where})") from None


def command_body(args: argparse.Namespace) -> dict[str, Any]:
    """The API's ``CommandIn`` from ``commands queue``'s options; :class:`OptionError` when
    they do not make one."""
    if args.apple is None and (args.payload is not None or args.command_uuid is not None):
        raise OptionError("--payload and --command-uuid go with --apple")
    body: dict[str, Any]
    if args.raw is not None:
        body = {"raw": args.raw}
    elif args.raw_file is not None:
        body = {"raw": _read_text(args.raw_file, "--raw-file")}
    elif args.apple is not None:
        apple: dict[str, Any] = {"request_type": args.apple}
        if args.payload is not None:
            apple["payload"] = _json_option(args.payload, "--payload")
        if args.command_uuid is not None:
            apple["command_uuid"] = args.command_uuid
        body = {"apple": apple}
    elif args.syncml is not None:
        body = {"syncml": _json_option(args.syncml, "--syncml")}
    elif args.body is not None:
        given = _json_option(_read_text(args.body, "--body"), "--body")
        if not isinstance(given, dict):
            raise OptionError("--body must hold a JSON object (the API's command body)")
        body = given
    else:
        raise OptionError("give the command: one of --raw, --raw-file, --apple, --syncml, --body")
    devices = [*(body.get("devices") or []), *(args.device or [])]
    if not devices:
        raise OptionError("name the devices with --device")
    return {**body, "devices": list(dict.fromkeys(devices))}


def commands_queue(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    accepted = client.post("/commands", command_body(args))
    if out.json:
        out.write(json_text(accepted))
    else:
        count = plural(int(accepted["deliveries"]), "device")
        out.write(printable(f"queued command {accepted['command_id']} ({accepted['kind']})"))
        out.write(f" for {count}\n")
    return 0


def commands_show(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    status = client.get(resource("commands", args.command_id))
    if out.json:
        out.write(json_text(status))
        return 0
    label = "body" if status.get("body_encoding", "text") == "text" else "body (base64)"
    text = printable(str(status.get("body_text") or ""), keep_lines=True).rstrip("\n")
    rows = [
        (
            d["device_id"],
            d["state"],
            d.get("status"),
            d.get("offers"),
            cell(d.get("result"), RESULT_WIDTH),
        )
        for d in status["deliveries"]
    ]
    out.write(fields([("command", status["command_id"]), ("kind", status["kind"])]))
    out.write(f"{label}:\n{text}\n\n")
    out.write(table(("DEVICE", "STATE", "STATUS", "OFFERS", "RESULT"), rows))
    return 0


def _outcomes(counts: Mapping[str, int]) -> tuple[int, int, int]:
    done = sum(n for state, n in counts.items() if state in DONE)
    failed = sum(n for state, n in counts.items() if state in FAILED)
    return sum(counts.values()) - done - failed, done, failed


def commands_list(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    query = {"device_id": args.device, "kind": args.kind}
    limit = None if args.all else args.limit
    found, cursor = _pages(client, "/commands", query, "commands", limit=limit, after=args.after)
    if out.json:
        out.write(json_text(found))
    else:
        rows = [
            (
                c["command_id"],
                c["kind"],
                c.get("name"),
                c.get("created_at"),
                *_outcomes(c["counts"]),
            )
            for c in found
        ]
        headers = ("COMMAND", "KIND", "NAME", "CREATED", "PENDING", "DONE", "FAILED")
        out.write(table(headers, rows))
    _more(out, "commands", cursor)
    return 0


def commands_cancel(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    body = {"devices": args.device} if args.device else None
    answer = client.post(resource("commands", args.command_id, "cancel"), body)
    if out.json:
        out.write(json_text(answer))
        return 0
    cancelled: Sequence[str] = answer["cancelled"]
    text = f"cancelled for {plural(len(cancelled), 'device')}"
    if cancelled:
        text += ": " + ", ".join(cancelled)
    left: Mapping[str, str] = answer.get("left") or {}
    if left:
        text += "\nleft as they were: " + ", ".join(f"{d} ({s})" for d, s in left.items())
    out.write(printable(text, keep_lines=True) + "\n")
    return 0


# --- events -------------------------------------------------------------------------------------


def _event_line(event: Mapping[str, Any]) -> str:
    data = event.get("data")
    return (
        f"{event['seq']:>8}  {timestamp(event.get('at'))}  {cell(event['type']):<26}  "
        f"{cell(event.get('device_id'))}  {cell(event.get('subject'))}  {cell(data or None)}"
    )


def events_tail(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    """Prints the events after ``--after`` page by page until it has caught up; with
    ``--follow`` it then waits for more (long polls) until interrupted."""
    cursor = args.after
    wait = None
    while True:
        query: dict[str, Any] = {
            "after": cursor,
            "limit": args.limit,
            "types": ",".join(args.types) if args.types else None,
            "device_id": args.device,
            "wait": wait,
        }
        # A long poll is answered after up to ``wait`` seconds: the usual patience on top.
        timeout = None if wait is None else wait + client.timeout
        page = client.get("/events", query, timeout=timeout)
        for event in page["events"]:
            out.write(json_line(event) if out.json else _event_line(event) + "\n")
        cursor = page["next"] if page.get("next") is not None else cursor
        if len(page["events"]) < args.limit:
            if not args.follow:
                return 0
            wait = FOLLOW_WAIT_SECONDS
        else:
            wait = None


# --- tokens -------------------------------------------------------------------------------------


def _token_row(token: Mapping[str, Any]) -> list[Any]:
    return [
        token["id"],
        token["name"],
        token["scope"],
        token.get("created_at"),
        token.get("last_used_at"),
        token.get("revoked_at"),
    ]


_TOKEN_HEADERS = ("ID", "NAME", "SCOPE", "CREATED", "LAST USED", "REVOKED")


def tokens_create(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    made = client.post("/tokens", {"name": args.name, "scope": args.scope})
    if out.json:
        out.write(json_text(made))
        return 0
    out.write(made["token"] + "\n")
    out.note(
        f"token {made['id']} ({made['scope']}) for {printable(made['name'])}: keep it, it is"
        " not shown again"
    )
    return 0


def tokens_list(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    found = client.get("/tokens")["tokens"]
    if out.json:
        out.write(json_text(found))
    else:
        out.write(table(_TOKEN_HEADERS, [_token_row(t) for t in found]))
    return 0


def tokens_revoke(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    revoked = client.delete(resource("tokens", args.token_id))
    if out.json:
        out.write(json_text(revoked))
    else:
        out.write(f"revoked {revoked['id']} ({printable(revoked['name'])})\n")
    return 0
