"""The admin HTTP API under ``/api/v1/``: devices, commands and the OpenAPI document.

:class:`AdminApi` is a plain :data:`~mdmgate.server.types.Handler`: it takes a
:class:`~mdmgate.server.types.Request` and answers a
:class:`~mdmgate.server.types.Response`, with no sockets, so the HTTP layer mounts it and
tests call it directly. Every answer, errors included, is JSON
(``Content-Type: application/json``); errors are ``{"error": "...", "field": ...}`` where
``field`` is a JSONPath into the request body (``$[2].platform``, ``$.raw``) or ``null``.

Status codes:

* 400: the body is not JSON (or nested too deeply);
* 401: no, or the wrong, bearer token, or no token configured (and not ``--dev``);
* 404: unknown path, device or command; a command naming unknown devices (listed in
  ``devices``);
* 405: a known path with the wrong method (``Allow`` lists the right ones);
* 409: a command whose ``CommandUUID`` (which becomes its command id) is already taken;
* 415: a body that is not ``application/json``;
* 422: JSON of the wrong shape (msgspec's message, and the field), a raw command its
  decoder refuses, or a command for devices of more than one command channel.

Commands are stored through :meth:`~mdmgate.storage.Store.enqueue` with ``kind``
``"syncml"`` or ``"apple"``:

* ``syncml`` (Windows): the body is the UTF-8 XML of exactly one SyncML command element
  (``<Get>...</Get>``), as the admin gave it; its ``CmdID`` may be missing or arbitrary,
  so the session layer numbers commands itself when it builds a message.
* ``apple`` (iOS, iPadOS, macOS): the body is an XML plist
  ``{CommandUUID, Command: {RequestType, ...}}`` whose ``CommandUUID`` is the command id.
"""

from __future__ import annotations

import base64
import hmac
import inspect
import logging
import re
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from mdmgate import __version__, plist, syncml
from mdmgate.apple.commands import build as build_apple_command
from mdmgate.apple.errors import CommandValidationError
from mdmgate.errors import (
    MdmgateError,
    PlistDecodeError,
    PlistEncodeError,
    SyncMLDecodeError,
    SyncMLEncodeError,
)
from mdmgate.server.types import Request, Response
from mdmgate.storage import (
    CommandExists,
    CommandStatus,
    Delivery,
    DeliveryState,
    Device,
    Store,
    UnknownDevices,
)
from mdmgate.windows import apps

__all__ = [
    "API_PREFIX",
    "AdminApi",
    "AppIn",
    "AppOut",
    "AppleCommandIn",
    "CommandAccepted",
    "CommandIn",
    "CommandStatusOut",
    "DeliveryOut",
    "DeviceCommandIn",
    "DeviceIn",
    "DeviceOut",
    "DevicesWritten",
    "Error",
    "UnknownDevicesError",
    "openapi_document",
]

_log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"

# --- request and response bodies -------------------------------------------------------------

Platform = Literal["windows", "ios", "ipados", "macos", "android"]
DeviceId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=512,
        description="Windows: the SyncHdr Source device id; Apple: the UDID or EnrollmentID.",
    ),
]
_ORG_PATTERN = r"^/(?:[^/\x00-\x1f]+(?:/[^/\x00-\x1f]+)*)?$"
OrgPath = Annotated[
    str,
    Meta(
        pattern=_ORG_PATTERN,
        max_length=1024,
        description="An organisation path such as /acme/sales/tokyo; / is the root.",
    ),
]
_UUID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}$"
_UUID = re.compile(_UUID_PATTERN)
CommandUuid = Annotated[
    str,
    Meta(
        pattern=_UUID_PATTERN,
        description="Becomes the command id; must not be taken by another command.",
    ),
]


class AppIn(Struct, kw_only=True):
    """One app of a device's known inventory, as a console imports it."""

    identifier: Annotated[str, Meta(min_length=1, max_length=1024)]
    version: str | None = None
    name: str | None = None
    source: Annotated[
        str | None,
        Meta(
            description="Where the entry comes from, or how it is classified (`managed`, `user`,"
            " ...); `import` when not given."
        ),
    ] = None


class DeviceIn(Struct, kw_only=True):
    """A device to register or update. Fields left out keep their stored value when the
    device exists (``null`` clears them); a new device gets org ``/`` and nothing else.
    Unknown fields are ignored."""

    id: DeviceId
    platform: Platform
    org: OrgPath | UnsetType = UNSET
    os_version: str | UnsetType | None = UNSET
    supervised: bool | UnsetType | None = UNSET
    auth: Annotated[
        dict[str, Any] | UnsetType | None,
        Meta(description="How the device proves itself; never echoed back."),
    ] = UNSET
    apps: Annotated[
        list[AppIn] | UnsetType | None,
        Meta(description="The known app inventory; replaces the stored one when given."),
    ] = UNSET


class DevicesWritten(Struct):
    written: int


class AppOut(Struct):
    identifier: str
    version: str | None
    name: str | None
    source: str | None


class DeviceOut(Struct):
    id: str
    platform: str
    org: str
    os_version: str | None
    supervised: bool | None
    auth_configured: Annotated[
        bool,
        Meta(description="Whether the device has credentials stored (their content is not shown)."),
    ]
    apps: list[AppOut]
    facts: Annotated[
        dict[str, Any],
        Meta(description="The latest facts the gateway holds about the device (besides `apps`)."),
    ]


class AppleCommandIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A typed Apple command, checked strictly against Apple's schema for the devices'
    platforms."""

    request_type: Annotated[str, Meta(min_length=1, examples=["DeviceInformation"])]
    payload: Annotated[
        dict[str, Any],
        Meta(description="The keys of the `Command` dictionary besides `RequestType`."),
    ] = msgspec.field(default_factory=dict)
    command_uuid: CommandUuid | None = None


class DeviceCommandIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """One command; exactly one of ``raw``, ``apple``, ``syncml`` and ``windows_app``.

    ``raw`` is, for Windows devices, the XML of one SyncML command (``<Get>...</Get>``) and,
    for Apple devices, a command plist ``{CommandUUID?, Command: {RequestType, ...}}`` as
    text (a missing ``CommandUUID`` is filled in; a given one becomes the command id).
    ``syncml`` is one SyncML command in the dict form of ``mdmgate syncml decode``
    (``{"Get": {"Item": [...]}}``; ``CmdID`` defaults to ``"1"``)."""

    raw: Annotated[str, Meta(min_length=1)] | None = None
    apple: AppleCommandIn | None = None
    syncml: dict[str, Any] | None = None
    windows_app: Annotated[
        apps.AppCommand | None,
        Meta(
            description="A Windows app lifecycle command (EnterpriseModernAppManagement and"
            " the ApplicationManagement policies), expanded into the manual's SyncML."
        ),
    ] = None


class CommandIn(DeviceCommandIn, kw_only=True, forbid_unknown_fields=True):
    """One command for many devices, all on the same command channel (Windows, or Apple)."""

    devices: Annotated[list[DeviceId], Meta(min_length=1)]


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


class CommandStatusOut(Struct):
    command_id: str
    kind: str
    deliveries: list[DeliveryOut]


class Error(Struct):
    error: str
    field: Annotated[
        str | None,
        Meta(description="Where in the request body the problem is (JSONPath), or `null`."),
    ] = None


class UnknownDevicesError(Error, kw_only=True):
    devices: Annotated[
        list[str], Meta(description="Every device named in the request that is not registered.")
    ]


_REQUEST_TYPES: tuple[type[Any], ...] = (DeviceIn, CommandIn, DeviceCommandIn)
_RESPONSE_TYPES: tuple[type[Any], ...] = (
    DevicesWritten,
    DeviceOut,
    CommandAccepted,
    CommandStatusOut,
    Error,
    UnknownDevicesError,
)

# --- helpers ---------------------------------------------------------------------------------


class _Refusal(Exception):
    """An answer other than success, raised from deep inside a request and turned into a
    JSON error response at the top."""

    def __init__(self, status: int, body: Error, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(body.error)
        self.status = status
        self.body = body
        self.headers = headers


def _refuse(status: int, message: str, field: str | None = None) -> _Refusal:
    return _Refusal(status, Error(message, field))


def _enc_hook(value: Any) -> Any:
    # Facts come from devices and may hold values JSON has no form for.
    return str(value)


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)

_JSON_HEADERS = (("content-type", "application/json"), ("cache-control", "no-store"))


def _json(status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    log = {"error": body.error} if isinstance(body, Error) else {}
    return Response(status, _JSON_HEADERS + headers, _encoder.encode(body), log)


_T = TypeVar("_T")

_AT = re.compile(r" - at `(\$[^`]*)`$")
_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]*)`")


#: What the patterns mean, for messages.
_PATTERNS = {
    _ORG_PATTERN: "an org path: / or /name/name..., no empty names or control characters",
    _UUID_PATTERN: "1-128 of A-Z a-z 0-9 . _ : ~ -, starting with a letter or digit",
}


def _error_field(message: str) -> tuple[str, str]:
    """Splits msgspec's ``... - at `$.a[0]``` into the message and the JSONPath; a missing
    or unknown field is named in the path (``$.a[0].platform``)."""
    found = _AT.search(message)
    path = found.group(1) if found else "$"
    text = message[: found.start()] if found else message
    for pattern, meaning in _PATTERNS.items():
        text = text.replace(f"matching regex {pattern!r}", f"that is {meaning}")
    named = _NAMED.match(text)
    if named:
        path += "." + named.group(1)
    return text, path


def _decode(body: bytes, kind: type[_T]) -> _T:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        # A typed decode stops at the first value of the wrong type, which may come before
        # a syntax error further on: malformed JSON is a 400 wherever it is.
        _check_syntax(body)
        text, path = _error_field(str(exc))
        raise _refuse(422, text, path) from None
    except msgspec.DecodeError as exc:
        raise _refuse(400, str(exc)) from None
    except RecursionError:
        raise _refuse(400, "JSON is nested too deeply") from None


def _check_syntax(body: bytes) -> None:
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _refuse(400, str(exc)) from None
    except RecursionError:
        raise _refuse(400, "JSON is nested too deeply") from None


def _check_content_type(request: Request) -> None:
    value = request.header("content-type")
    if value is None:
        raise _refuse(415, "Content-Type must be application/json (none was given)")
    media, *params = (part.strip() for part in value.split(";"))
    if media.lower() != "application/json":
        raise _refuse(415, f"Content-Type must be application/json, not {media!r}")
    for param in params:
        name, _, arg = param.partition("=")
        if name.strip().lower() == "charset" and arg.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise _refuse(415, f"JSON must be UTF-8, not charset {arg.strip()!r}")


def _as_text(data: bytes | None) -> tuple[str | None, Literal["text", "base64"] | None]:
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _apps_from_facts(value: Any) -> list[AppOut]:
    """The app inventory kept in ``facts["apps"]``; entries of another shape (written by
    a later component) are shown as far as they fit, never refused."""
    if not isinstance(value, list):
        return []
    return [
        AppOut(
            entry["identifier"],
            _text(entry, "version"),
            _text(entry, "name"),
            _text(entry, "source"),
        )
        for entry in value
        if isinstance(entry, dict) and isinstance(entry.get("identifier"), str)
    ]


def _text(entry: dict[str, Any], key: str) -> str | None:
    value = entry.get(key)
    return value if isinstance(value, str) else None


# --- commands --------------------------------------------------------------------------------

#: The command channel of each platform; Android has none yet.
_KINDS: dict[str, Literal["syncml", "apple"]] = {
    "windows": "syncml",
    "ios": "apple",
    "ipados": "apple",
    "macos": "apple",
}

#: SyncML commands a server sends (Status, Results and Map are answers, not commands).
_SYNCML_COMMANDS = frozenset(
    {"Add", "Alert", "Atomic", "Copy", "Delete", "Exec", "Get", "Replace", "Sequence"}
)

_SYNCML_HEADER = {
    "VerDTD": "1.2",
    "VerProto": "DM/1.2",
    "SessionID": "1",
    "MsgID": "1",
    "Target": {"LocURI": "device"},
    "Source": {"LocURI": "mdmgate"},
}
_SYNCML_PREFIX = (
    b"<SyncML><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>1</SessionID>"
    b"<MsgID>1</MsgID><Target><LocURI>device</LocURI></Target><Source><LocURI>mdmgate</LocURI>"
    b"</Source></SyncHdr><SyncBody>"
)
_SYNCML_SUFFIX = b"</SyncBody></SyncML>"
_AT_BYTE = re.compile(r" at byte \d+$")


class _Prepared(Struct):
    kind: Literal["syncml", "apple"]
    command_id: str
    body: bytes
    #: Whether the client chose the id (then it must not be taken).
    chosen: bool = False


def _check_syncml_fragment(fragment: bytes, field: str) -> None:
    """Refuses anything but exactly one SyncML command a server may send."""
    try:
        message = syncml.to_dict(_SYNCML_PREFIX + fragment + _SYNCML_SUFFIX)
    except SyncMLDecodeError as exc:
        text = _AT_BYTE.sub("", exc.message)
        offset = exc.offset - len(_SYNCML_PREFIX)
        if 0 <= offset < len(fragment):
            text += f" at byte {offset}"
        elif offset >= len(fragment):
            text += " at the end"
        raise _refuse(422, f"not a SyncML command: {text}", field) from None
    if message.get("Final"):
        raise _refuse(422, "not a SyncML command: <Final/> belongs to the message", field)
    body: list[dict[str, Any]] = message.get("SyncBody", [])
    if len(body) != 1:
        raise _refuse(422, f"expected exactly one SyncML command, got {len(body)}", field)
    (name,) = body[0]
    if name not in _SYNCML_COMMANDS:
        allowed = ", ".join(sorted(_SYNCML_COMMANDS))
        raise _refuse(422, f"{name} is not a command the server sends (one of {allowed})", field)


def _syncml_from_dict(command: dict[str, Any]) -> bytes:
    """The XML of one command given in the dict form."""
    if len(command) == 1:
        ((name, fields),) = command.items()
        if isinstance(fields, dict) and "CmdID" not in fields:
            command = {name: {"CmdID": "1", **fields}}
    message = {"SyncHdr": _SYNCML_HEADER, "SyncBody": [command], "Final": False}
    try:
        encoded = syncml.from_dict(message)
    except SyncMLEncodeError as exc:
        path = exc.path.removeprefix("SyncBody[0]")
        text = exc.message.removeprefix(f"{exc.path}: ")
        raise _refuse(422, f"invalid SyncML command: {text}", "$.syncml" + path) from None
    start = encoded.index(b"<SyncBody>") + len(b"<SyncBody>")
    fragment = encoded[start : encoded.rindex(b"</SyncBody>")]
    _check_syncml_fragment(fragment, "$.syncml")
    return fragment


def _windows_app(command: apps.AppCommand, devices: Sequence[Device]) -> bytes:
    """The SyncML of a typed app command; refused when any device's inventory forbids it
    (e.g. removing a provisioned app the inventory does not show as provisioned)."""
    body = b""
    for device in devices:
        records = [
            msgspec.convert(r, apps.AppRecord)
            for r in device.facts.get("windows_apps", [])
            if isinstance(r, dict)
        ]
        try:
            body = apps.expand(command, inventory=records)
        except apps.AppCommandRefused as exc:
            where = f" on device {device.id!r}" if len(devices) > 1 else ""
            raise _refuse(422, f"{exc.message}{where}", exc.field) from None
    return body


def _apple_from_raw(raw: str) -> tuple[str, bytes, bool]:
    """The command id, plist body and whether the client chose the id."""
    try:
        value = plist.loads(raw.encode("utf-8", "surrogatepass"))
    except PlistDecodeError as exc:
        raise _refuse(422, f"not a plist: {exc.message}", "$.raw") from None
    if not isinstance(value, dict):
        raise _refuse(422, "an Apple command plist is a dictionary", "$.raw")
    command = value.get("Command")
    if not isinstance(command, dict):
        raise _refuse(422, "an Apple command plist needs a Command dictionary", "$.raw")
    request_type = command.get("RequestType")
    if not isinstance(request_type, str) or not request_type:
        raise _refuse(422, "the Command dictionary needs a RequestType string", "$.raw")
    given = value.get("CommandUUID")
    if given is None:
        command_id, chosen = uuid.uuid4().hex, False
        value["CommandUUID"] = command_id
    else:
        command_id, chosen = _command_uuid(given, "$.raw"), True
    try:
        body = plist.dumps(value)
    except (PlistEncodeError, TypeError, OverflowError) as exc:
        raise _refuse(422, f"the command cannot be written as a plist: {exc}", "$.raw") from None
    return command_id, body, chosen


def _command_uuid(value: object, field: str) -> str:
    # The pattern's "$" also matches before a final newline: refuse that by hand.
    if isinstance(value, str) and _UUID.match(value) and not value.endswith("\n"):
        return value
    raise _refuse(422, f"CommandUUID must be {_PATTERNS[_UUID_PATTERN]}", field)


def _apple_typed(command: AppleCommandIn, platforms: Sequence[str]) -> tuple[str, bytes, bool]:
    chosen = command.command_uuid is not None
    if command.command_uuid is None:
        command_id = uuid.uuid4().hex
    else:
        command_id = _command_uuid(command.command_uuid, "$.apple.command_uuid")
    body = b""
    for platform in platforms:
        try:
            built = build_apple_command(
                command.request_type,
                command.payload,
                command_uuid=command_id,
                platform=platform,
            )
            body = built.to_plist()
        except CommandValidationError as exc:
            if exc.path == "Command.RequestType":
                field = "$.apple.request_type"
            else:
                field = "$.apple.payload" + exc.path.removeprefix("Command")
            raise _refuse(422, f"{exc.message} (for {platform})", field) from None
        except (MdmgateError, TypeError, OverflowError) as exc:
            raise _refuse(422, f"invalid Apple command: {exc}", "$.apple") from None
    return command_id, body, chosen


def _prepare(
    command: DeviceCommandIn, devices: Sequence[Device], devices_field: str | None
) -> _Prepared:
    """Validates the command for the devices' command channel and builds what is stored."""
    given = [
        name
        for name, value in (
            ("raw", command.raw),
            ("apple", command.apple),
            ("syncml", command.syncml),
            ("windows_app", command.windows_app),
        )
        if value is not None
    ]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise _refuse(422, f"give exactly one of raw, apple, syncml, windows_app{got}", "$")
    platforms = sorted({d.platform for d in devices})
    kinds = {_KINDS.get(p) for p in platforms}
    if None in kinds:
        missing = ", ".join(p for p in platforms if p not in _KINDS)
        raise _refuse(422, f"no command channel for platform {missing}", devices_field)
    if len(kinds) != 1:
        raise _refuse(
            422,
            "one command cannot go to both Windows and Apple devices (platforms: "
            + ", ".join(platforms)
            + ")",
            devices_field,
        )
    kind = _KINDS[platforms[0]]
    if command.raw is not None:
        if kind == "syncml":
            fragment = command.raw.strip().encode("utf-8", "surrogatepass")
            _check_syncml_fragment(fragment, "$.raw")
            return _Prepared("syncml", uuid.uuid4().hex, fragment)
        command_id, body, chosen = _apple_from_raw(command.raw)
        return _Prepared("apple", command_id, body, chosen)
    if command.apple is not None:
        if kind != "apple":
            raise _refuse(422, "apple commands are for iOS, iPadOS and macOS devices", "$.apple")
        command_id, body, chosen = _apple_typed(command.apple, platforms)
        return _Prepared("apple", command_id, body, chosen)
    if command.windows_app is not None:
        if kind != "syncml":
            raise _refuse(422, "windows_app commands are for Windows devices", "$.windows_app")
        return _Prepared("syncml", uuid.uuid4().hex, _windows_app(command.windows_app, devices))
    assert command.syncml is not None
    if kind != "syncml":
        raise _refuse(422, "syncml commands are for Windows devices", "$.syncml")
    return _Prepared("syncml", uuid.uuid4().hex, _syncml_from_dict(command.syncml))


# --- the OpenAPI document --------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERROR_RESPONSES: dict[str, tuple[str, str]] = {
    "400": ("BadRequest", "The body is not JSON."),
    "401": ("Unauthorized", "No bearer token, a wrong one, or none configured."),
    "404": ("NotFound", "No such resource."),
    "405": ("MethodNotAllowed", "The path does not take this method."),
    "409": ("Conflict", "The command id is taken."),
    "415": ("UnsupportedMediaType", "The body is not application/json."),
    "422": ("UnprocessableContent", "The JSON does not fit the schema, or the command is refused."),
}


def _operation(
    summary: str,
    ok: tuple[str, str, str],
    errors: Sequence[str],
    *,
    request: str | None = None,
    parameter: tuple[str, str] | None = None,
    not_found: str | None = None,
) -> dict[str, Any]:
    status, description, schema = ok
    responses: dict[str, Any] = {
        status: {"description": description, "content": _json_content(_ref(schema))}
    }
    for code in ("401", "405", *errors):
        responses[code] = {"$ref": f"#/components/responses/{_ERROR_RESPONSES[code][0]}"}
    if not_found is not None:
        responses["404"] = {
            "description": "Unknown devices; they are listed.",
            "content": _json_content(_ref(not_found)),
        }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if request is not None:
        operation["requestBody"] = {"required": True, "content": _json_content(_ref(request))}
    if parameter is not None:
        name, text = parameter
        operation["parameters"] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": text,
                "schema": {"type": "string"},
            }
        ]
    return operation


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API, schemas generated from the Structs."""
    _, schemas = msgspec.json.schema_components(
        _REQUEST_TYPES + _RESPONSE_TYPES, ref_template="#/components/schemas/{name}"
    )
    for schema in schemas.values():
        if "description" in schema:
            schema["description"] = inspect.cleandoc(schema["description"])
    # The bulk upsert takes an array of devices, which has no Struct of its own.
    schemas["DeviceList"] = {"type": "array", "items": _ref("DeviceIn")}
    device = ("id", "The device id (percent-encoded).")
    paths: dict[str, Any] = {
        "/api/v1/openapi.json": {
            "get": _operation(
                "This document.",
                ("200", "The OpenAPI document.", "OpenApiDocument"),
                (),
            )
        },
        "/api/v1/devices": {
            "post": _operation(
                "Register or update devices in bulk. Fields left out keep their stored value.",
                ("200", "How many devices were written.", "DevicesWritten"),
                ("400", "415", "422"),
                request="DeviceList",
            )
        },
        "/api/v1/devices/{id}": {
            "get": _operation(
                "A device, its app inventory and its latest facts.",
                ("200", "The device.", "DeviceOut"),
                ("404",),
                parameter=device,
            )
        },
        "/api/v1/devices/{id}/commands": {
            "post": _operation(
                "Enqueue one command for one device.",
                ("202", "The command is queued.", "CommandAccepted"),
                ("400", "409", "415", "422"),
                request="DeviceCommandIn",
                parameter=device,
                not_found="UnknownDevicesError",
            )
        },
        "/api/v1/commands": {
            "post": _operation(
                "Enqueue one command for many devices of one command channel.",
                ("202", "The command is queued.", "CommandAccepted"),
                ("400", "409", "415", "422"),
                request="CommandIn",
                not_found="UnknownDevicesError",
            )
        },
        "/api/v1/commands/{command_id}": {
            "get": _operation(
                "Per-device delivery state and result of a command.",
                ("200", "The command's deliveries.", "CommandStatusOut"),
                ("404",),
                parameter=("command_id", "The command id from CommandAccepted."),
            )
        },
    }
    schemas["OpenApiDocument"] = {"type": "object", "description": "An OpenAPI 3.1 document."}
    responses = {
        name: {"description": description, "content": _json_content(_ref("Error"))}
        for name, description in _ERROR_RESPONSES.values()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mdmgate admin API",
            "version": __version__,
            "description": (
                "Devices and their command queues. Every request needs "
                "`Authorization: Bearer <MDMGATE_API_TOKEN>`. Errors are "
                '`{"error": "...", "field": "<JSONPath into the body> or null"}`.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


_OPENAPI: bytes | None = None


def _openapi_bytes() -> bytes:
    global _OPENAPI  # noqa: PLW0603 - built once, on first use
    if _OPENAPI is None:
        _OPENAPI = msgspec.json.encode(openapi_document())
    return _OPENAPI


# --- the handler -----------------------------------------------------------------------------


class AdminApi:
    """The admin API as a handler for paths under ``/api/v1/``.

    ``token`` is the bearer token (``MDMGATE_API_TOKEN``); ``None`` (or empty) disables the
    API, every call answering 401, unless ``dev`` is true: then calls need no token (a
    warning is logged once). A configured token is required in ``dev`` mode too. ``dev``
    is kept as :attr:`dev` for the device-facing side (auto-registration).
    """

    def __init__(self, store: Store, token: str | None, *, dev: bool = False) -> None:
        self.store = store
        self.dev = dev
        self._token = token.encode("utf-8") if token else None
        self.unauthenticated = self._token is None and dev
        if self.unauthenticated:
            _log.warning("development mode without MDMGATE_API_TOKEN: the admin API needs no token")

    async def __call__(self, request: Request) -> Response:
        try:
            if not request.path.startswith(API_PREFIX):
                # Not ours: the HTTP layer should not have sent it here.
                raise _refuse(404, f"no such resource: {request.path}")
            self._authorize(request)
            return await self._route(request)
        except _Refusal as refusal:
            return _json(refusal.status, refusal.body, refusal.headers)

    def _authorize(self, request: Request) -> None:
        # Everything under /api/v1/ needs the token, the OpenAPI document included: the
        # admin API shares its port with the device-facing endpoints, which face the
        # internet, and the document maps out what the token opens; admin clients hold
        # the token anyway.
        if self.unauthenticated:
            return
        if self._token is None:
            raise _Refusal(
                401,
                Error("the admin API is disabled: MDMGATE_API_TOKEN is not configured"),
                (("www-authenticate", 'Bearer realm="mdmgate"'),),
            )
        value = request.header("authorization")
        scheme, _, credentials = (value or "").strip().partition(" ")
        if value is None or scheme.lower() != "bearer" or not credentials.strip():
            raise _Refusal(
                401,
                Error("missing bearer token (Authorization: Bearer <token>)"),
                (("www-authenticate", 'Bearer realm="mdmgate"'),),
            )
        given = credentials.strip().encode("utf-8", "replace")
        if not hmac.compare_digest(given, self._token):
            raise _Refusal(
                401,
                Error("wrong bearer token"),
                (("www-authenticate", 'Bearer realm="mdmgate", error="invalid_token"'),),
            )

    async def _route(self, request: Request) -> Response:
        parts = [unquote(p) for p in request.path[len(API_PREFIX) :].split("/")]
        method = request.method.upper()

        def allow(*methods: str) -> None:
            if method not in methods:
                raise _Refusal(
                    405,
                    Error(f"{method} is not allowed here (allowed: {', '.join(methods)})"),
                    (("allow", ", ".join(methods)),),
                )

        match parts:
            case ["openapi.json"]:
                allow("GET")
                return Response(200, _JSON_HEADERS, _openapi_bytes())
            case ["devices"]:
                allow("POST")
                return await self._upsert_devices(request)
            case ["devices", device_id] if device_id:
                allow("GET")
                return await self._get_device(device_id)
            case ["devices", device_id, "commands"] if device_id:
                allow("POST")
                _check_content_type(request)
                command = _decode(request.body, DeviceCommandIn)
                return await self._enqueue(command, [device_id], None)
            case ["commands"]:
                allow("POST")
                _check_content_type(request)
                bulk = _decode(request.body, CommandIn)
                return await self._enqueue(bulk, bulk.devices, "$.devices")
            case ["commands", command_id] if command_id:
                allow("GET")
                return await self._command_status(command_id)
        raise _refuse(404, f"no such resource: {request.path}")

    async def _upsert_devices(self, request: Request) -> Response:
        _check_content_type(request)
        given = _decode(request.body, list[DeviceIn])
        seen: dict[str, int] = {}
        for index, item in enumerate(given):
            if item.id in seen:
                raise _refuse(
                    422,
                    f"device {item.id!r} is given twice (also at {seen[item.id]})",
                    f"$[{index}].id",
                )
            seen[item.id] = index
            if isinstance(item.org, str) and item.org.endswith("\n"):
                # The pattern's "$" also matches before a final newline.
                raise _refuse(422, "an org path has no line breaks", f"$[{index}].org")
        stored = await self.store.get_devices([item.id for item in given])
        devices = [self._merge(item, stored.get(item.id)) for item in given]
        written = await self.store.upsert_devices(devices) if devices else 0
        return _json(200, DevicesWritten(written))

    @staticmethod
    def _merge(item: DeviceIn, old: Device | None) -> Device:
        """The device as stored after the update: fields left out keep their value, and
        facts (reported by the device) are kept."""
        base = old or Device(item.id, item.platform)
        facts = dict(base.facts)
        if item.apps is not UNSET:
            if item.apps is None:
                facts.pop("apps", None)
            else:
                facts["apps"] = [
                    {
                        "identifier": app.identifier,
                        "version": app.version,
                        "name": app.name,
                        "source": app.source or "import",
                    }
                    for app in item.apps
                ]
        return Device(
            id=item.id,
            platform=item.platform,
            org=base.org if item.org is UNSET else item.org,
            os_version=base.os_version if item.os_version is UNSET else item.os_version,
            supervised=base.supervised if item.supervised is UNSET else item.supervised,
            auth=base.auth if item.auth is UNSET else (item.auth or {}),
            facts=facts,
        )

    async def _get_device(self, device_id: str) -> Response:
        device = await self.store.get_device(device_id)
        if device is None:
            raise _refuse(404, f"no device {device_id!r}")
        facts = {k: v for k, v in device.facts.items() if k != "apps"}
        out = DeviceOut(
            id=device.id,
            platform=device.platform,
            org=device.org,
            os_version=device.os_version,
            supervised=device.supervised,
            auth_configured=bool(device.auth),
            apps=_apps_from_facts(device.facts.get("apps")),
            facts=facts,
        )
        return _json(200, out)

    async def _enqueue(
        self, command: DeviceCommandIn, device_ids: Sequence[str], field: str | None
    ) -> Response:
        wanted = list(dict.fromkeys(device_ids))
        stored = await self.store.get_devices(wanted)
        devices = [stored[i] for i in wanted if i in stored]
        unknown = [i for i in wanted if i not in stored]
        if unknown:
            raise _unknown(unknown, field)
        prepared = _prepare(command, devices, field)
        try:
            queued = await self.store.enqueue(
                prepared.command_id, prepared.kind, prepared.body, wanted, new=prepared.chosen
            )
        except UnknownDevices as exc:
            raise _unknown(exc.device_ids, field) from None
        except CommandExists:
            where = "$.raw" if command.raw is not None else "$.apple.command_uuid"
            raise _refuse(409, f"command id {prepared.command_id!r} is taken", where) from None
        return _json(202, CommandAccepted(prepared.command_id, prepared.kind, queued))

    async def _command_status(self, command_id: str) -> Response:
        status: CommandStatus | None = await self.store.command_status(command_id)
        if status is None:
            raise _refuse(404, f"no command {command_id!r}")
        out = CommandStatusOut(
            status.command_id, status.kind, [_delivery(d) for d in status.deliveries]
        )
        return _json(200, out)


def _delivery(delivery: Delivery) -> DeliveryOut:
    result, encoding = _as_text(delivery.result)
    return DeliveryOut(delivery.device_id, delivery.state, delivery.status, result, encoding)


def _unknown(device_ids: Sequence[str], field: str | None) -> _Refusal:
    shown = ", ".join(device_ids[:5]) + (" ..." if len(device_ids) > 5 else "")
    message = f"{len(device_ids)} unknown device(s): {shown}"
    return _Refusal(404, UnknownDevicesError(message, field, devices=list(device_ids)))
