"""The admin API's commands: queue one for a device or many, list them, show one with the body
it sends and its deliveries, and cancel what devices have not been handed yet.

What a command request may be, and the body it becomes, is :mod:`~mdmgate.server.
api_command_input`'s; queuing and cancelling (and waking Apple devices) are
:class:`~mdmgate.devices.service.CommandService`'s.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from mdmgate import plist
from mdmgate.devices.service import CommandService, NotInCommand
from mdmgate.errors import PlistDecodeError, SyncMLDecodeError
from mdmgate.server.api_base import (
    DeviceId,
    UnknownDevicesError,
    _check_content_type,
    _decode,
    _json,
    _query,
    _query_limit,
    _Refusal,
    _refuse,
    _unknown,
)
from mdmgate.server.api_command_input import (
    CommandIn,
    DeviceCommandIn,
    prepare,
    syncml_command,
)
from mdmgate.server.routes import Operation, QueryParam
from mdmgate.server.types import Request, Response
from mdmgate.storage import CommandExists, CommandSummary, Delivery, DeliveryState, UnknownDevices

__all__ = [
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "CancelIn",
    "CancelledOut",
    "CommandAccepted",
    "CommandListOut",
    "CommandStatusOut",
    "CommandSummaryOut",
    "CommandsApi",
    "DeliveryOut",
    "DeliveryResult",
    "delivery_result",
    "operations",
]


class CommandAccepted(Struct):
    command_id: str
    kind: Literal["syncml", "apple"]
    deliveries: Annotated[
        int,
        Meta(
            description="How many deliveries were queued (devices already holding the command"
            " are skipped)."
        ),
    ]


class DeliveryOut(Struct):
    device_id: str
    state: DeliveryState
    status: Annotated[
        str | None,
        Meta(description="The device's status: the SyncML status code, or Apple's `Status`."),
    ]
    result: Annotated[
        str | None,
        Meta(
            description="The device's result: text when it is UTF-8, else base64 (see"
            " `result_encoding`)."
        ),
    ]
    result_encoding: Literal["text", "base64"] | None
    offers: Annotated[
        int,
        Meta(
            description="How many times it was handed out to the device (from 0 again after"
            " a NotNow). A Windows delivery handed out `[windows] max_offers` times without"
            " an answer ends `failed`."
        ),
    ] = 0
    result_json: Annotated[
        Any,
        Meta(
            description="The result decoded: Apple's report plist as JSON (data as base64),"
            " the Windows results as stored (JSON); `null` when none or it does not decode."
        ),
    ] = None


class CommandStatusOut(Struct):
    command_id: str
    kind: str
    deliveries: list[DeliveryOut]
    body: Annotated[
        Any,
        Meta(
            description="The command as sent, decoded: the SyncML command as a dict"
            ' (`{"Get": {"CmdID": ..., "Item": [...]}}`), a list of them when it is sent as'
            " several (an app install: `Add` then `Exec`), or the Apple command plist as"
            " JSON (data as base64); `null` if it does not decode."
        ),
    ] = None
    body_text: Annotated[
        str, Meta(description="The command as sent: XML text, or base64 (`body_encoding`).")
    ] = ""
    body_encoding: Literal["text", "base64"] = "text"


class CommandSummaryOut(Struct):
    command_id: str
    kind: str
    name: Annotated[
        str | None,
        Meta(
            description="What it asks: Apple's `RequestType`, or the SyncML command (`Get`;"
            " `Add+Exec` for several)."
        ),
    ]
    created_at: Annotated[str, Meta(description="When it was first queued (RFC 3339, UTC).")]
    counts: Annotated[dict[str, int], Meta(description="Its deliveries by state.")]


class CommandListOut(Struct):
    """Commands in the order they were first queued."""

    commands: list[CommandSummaryOut]
    next: Annotated[str | None, Meta(description="`after` for the next page; `null`: done.")]


class CancelIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """Which devices to cancel the command for; left out (or no body): every device."""

    devices: Annotated[list[DeviceId], Meta(min_length=1)] | None = None


class CancelledOut(Struct):
    command_id: str
    cancelled: Annotated[
        list[str],
        Meta(description="Devices whose delivery ended now (`error`, status cancelled)."),
    ]
    left: Annotated[
        dict[str, DeliveryState],
        Meta(
            description="The other devices asked about, by their delivery's state: handed out"
            " already (left to finish) or over."
        ),
    ]


REQUEST_TYPES: tuple[type[Any], ...] = (CancelIn,)
RESPONSE_TYPES: tuple[type[Any], ...] = (
    CommandAccepted,
    CommandStatusOut,
    CommandListOut,
    CancelledOut,
    UnknownDevicesError,
)


@dataclass(frozen=True)
class DeliveryResult:
    """A device's result, shown several ways."""

    text: str | None
    encoding: Literal["text", "base64"] | None
    base64: str | None
    json: Any


def _as_text(data: bytes) -> tuple[str, Literal["text", "base64"]]:
    try:
        return data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _plist_json(data: bytes) -> Any:
    try:
        return plist.loads(data)
    except (PlistDecodeError, RecursionError):
        return None


def delivery_result(kind: str, data: bytes | None) -> DeliveryResult:
    """``data`` as text (or base64), as base64, and decoded: Apple results are report
    plists, Windows results are stored as JSON."""
    if data is None:
        return DeliveryResult(None, None, None, None)
    text, encoding = _as_text(data)
    decoded: Any = None
    if kind == "apple":
        decoded = _plist_json(data)
    elif kind == "syncml":
        try:
            decoded = msgspec.json.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            decoded = None
    return DeliveryResult(text, encoding, base64.b64encode(data).decode("ascii"), decoded)


def _delivery(delivery: Delivery) -> DeliveryOut:
    result = delivery_result(delivery.kind, delivery.result)
    return DeliveryOut(
        delivery.device_id,
        delivery.state,
        delivery.status,
        result.text,
        result.encoding,
        delivery.offers,
        result.json,
    )


def _body(kind: str, body: bytes) -> Any:
    """The stored body decoded, or ``None``."""
    if kind == "apple":
        return _plist_json(body)
    if kind == "syncml":
        try:
            return syncml_command(body)
        except (SyncMLDecodeError, RecursionError):
            return None
    return None


def _name(kind: str, decoded: Any) -> str | None:
    if kind == "apple" and isinstance(decoded, dict):
        command = decoded.get("Command")
        if isinstance(command, dict) and isinstance(command.get("RequestType"), str):
            return str(command["RequestType"])
    if kind == "syncml":
        parts = decoded if isinstance(decoded, list) else [decoded]
        names = [next(iter(p)) for p in parts if isinstance(p, dict) and len(p) == 1]
        if names and len(names) == len(parts):
            return "+".join(names)
    return None


def _summary(found: CommandSummary) -> CommandSummaryOut:
    at = datetime.datetime.fromtimestamp(found.created_at, datetime.UTC)
    return CommandSummaryOut(
        found.command_id,
        found.kind,
        _name(found.kind, _body(found.kind, found.body)),
        at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        dict(found.counts),
    )


class CommandsApi:
    """The handlers of ``/api/v1/commands[...]`` and ``/api/v1/devices/{id}/commands``."""

    def __init__(self, commands: CommandService) -> None:
        self.commands = commands
        self.store = commands.store

    async def enqueue_one(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        command = _decode(request.body, DeviceCommandIn)
        return await self._enqueue(command, [params["id"]], None)

    async def enqueue_many(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        bulk = _decode(request.body, CommandIn)
        return await self._enqueue(bulk, bulk.devices, "$.devices")

    async def _enqueue(
        self, command: DeviceCommandIn, device_ids: Sequence[str], field: str | None
    ) -> Response:
        wanted = list(dict.fromkeys(device_ids))
        stored = await self.store.get_devices(wanted)
        unknown = [i for i in wanted if i not in stored]
        if unknown:
            raise _unknown(unknown, field)
        prepared = prepare(command, [stored[i] for i in wanted], field)
        try:
            queued = await self.commands.enqueue(
                prepared.command_id, prepared.kind, prepared.body, wanted, new=prepared.chosen
            )
        except UnknownDevices as exc:
            raise _unknown(exc.device_ids, field) from None
        except CommandExists:
            where = "$.raw" if command.raw is not None else "$.apple.command_uuid"
            raise _refuse(409, f"command id {prepared.command_id!r} is taken", where) from None
        return _json(202, CommandAccepted(prepared.command_id, prepared.kind, queued))

    async def list(self, request: Request, params: Mapping[str, str]) -> Response:
        query = _query(request, ("device_id", "kind", "after", "limit"))
        kind = query.get("kind", [None])[0]
        if kind not in (None, "syncml", "apple"):
            raise _refuse(422, f"kind must be syncml or apple, not {kind!r}", "kind")
        limit = _query_limit(query.get("limit"))
        found = await self.store.list_commands(
            after=query.get("after", [None])[0],
            limit=limit,
            device_id=query.get("device_id", [None])[0],
            kind=kind,
        )
        following = found[-1].command_id if len(found) == limit else None
        return _json(200, CommandListOut([_summary(c) for c in found], following))

    async def show(self, request: Request, params: Mapping[str, str]) -> Response:
        command_id = params["command_id"]
        status = await self.store.command_status(command_id)
        if status is None or not status.deliveries:
            raise _refuse(404, f"no command {command_id!r}")
        body = status.deliveries[0].body
        text, encoding = _as_text(body)
        out = CommandStatusOut(
            status.command_id,
            status.kind,
            [_delivery(d) for d in status.deliveries],
            _body(status.kind, body),
            text,
            encoding,
        )
        return _json(200, out)

    async def cancel(self, request: Request, params: Mapping[str, str]) -> Response:
        command_id = params["command_id"]
        devices = None
        if request.body.strip():
            _check_content_type(request)
            devices = _decode(request.body, CancelIn).devices
        try:
            done = await self.commands.cancel(command_id, devices)
        except NotInCommand as exc:
            raise _Refusal(
                404, UnknownDevicesError(str(exc), "$.devices", devices=exc.device_ids)
            ) from None
        if done is None:
            raise _refuse(404, f"no command {command_id!r}")
        return _json(200, CancelledOut(done.command_id, done.cancelled, done.left))


_COMMAND = {"command_id": "The command id from CommandAccepted (percent-encoded)."}


def operations(api: CommandsApi) -> list[Operation]:
    """The command operations, with their handlers."""
    return [
        Operation(
            "POST",
            "/api/v1/devices/{id}/commands",
            api.enqueue_one,
            "Enqueue one command for one device.",
            ("202", "The command is queued.", "CommandAccepted"),
            ("400", "409", "415", "422"),
            request="DeviceCommandIn",
            params={"id": "The device id (percent-encoded)."},
            not_found="UnknownDevicesError",
        ),
        Operation(
            "GET",
            "/api/v1/commands",
            api.list,
            "Commands in the order they were first queued, with their deliveries by state.",
            ("200", "A page of commands.", "CommandListOut"),
            ("400", "422"),
            query=(
                QueryParam("device_id", "Only commands queued for this device."),
                QueryParam(
                    "kind",
                    "Only commands of this channel.",
                    {"type": "string", "enum": ["syncml", "apple"]},
                ),
                QueryParam("after", "The `next` of the previous page (a command id)."),
                QueryParam(
                    "limit",
                    "Commands per page (default 100).",
                    {"type": "integer", "minimum": 1, "maximum": 1000},
                ),
            ),
        ),
        Operation(
            "POST",
            "/api/v1/commands",
            api.enqueue_many,
            "Enqueue one command for many devices of one command channel.",
            ("202", "The command is queued.", "CommandAccepted"),
            ("400", "409", "415", "422"),
            request="CommandIn",
            not_found="UnknownDevicesError",
        ),
        Operation(
            "GET",
            "/api/v1/commands/{command_id}",
            api.show,
            "A command: the body it sends (decoded and as text) and each device's delivery"
            " state and result.",
            ("200", "The command and its deliveries.", "CommandStatusOut"),
            ("404",),
            params=_COMMAND,
        ),
        Operation(
            "POST",
            "/api/v1/commands/{command_id}/cancel",
            api.cancel,
            "Cancel a command for every device or those named: deliveries not handed out yet"
            " (queued, or deferred with NotNow) end; those a device has in hand finish.",
            ("200", "What was cancelled, and what was left.", "CancelledOut"),
            ("400", "404", "415", "422"),
            request="CancelIn",
            request_required=False,
            params=_COMMAND,
            not_found="UnknownDevicesError",
        ),
    ]
