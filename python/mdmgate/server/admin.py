"""The admin HTTP API under ``/api/v1/``: devices, commands, declarations (Apple DDM) and the
OpenAPI document.

:class:`AdminApi` is a plain :data:`~mdmgate.server.types.Handler`: it takes a
:class:`~mdmgate.server.types.Request` and answers a
:class:`~mdmgate.server.types.Response`, with no sockets, so the HTTP layer mounts it and
tests call it directly. Every answer, errors included, is JSON
(``Content-Type: application/json``); errors are ``{"error": "...", "field": ...}`` where
``field`` is a JSONPath into the request body (``$[2].platform``, ``$.raw``) or ``null``.

Status codes:

* 400: the body is not JSON (or nested too deeply);
* 401: no, or the wrong, bearer token, or no token configured (and not ``--dev``);
* 404: unknown path, device, command or declaration; a command or declaration naming
  unknown devices (listed in ``devices``);
* 405: a known path with the wrong method (``Allow`` lists the right ones);
* 409: a command whose ``CommandUUID`` (which becomes its command id) is already taken;
* 415: a body that is not ``application/json``;
* 422: JSON of the wrong shape (msgspec's message, and the field), a raw command its
  decoder refuses, a command for devices of more than one command channel, or a
  declaration that breaks Apple's schema (``field`` is ``$.payload.<dotted key>``).

Commands are stored through :meth:`~mdmgate.storage.Store.enqueue` with ``kind``
``"syncml"`` or ``"apple"``:

* ``syncml`` (Windows): the body is the UTF-8 XML of exactly one SyncML command element
  (``<Get>...</Get>``), as the admin gave it; its ``CmdID`` may be missing or arbitrary,
  so the session layer numbers commands itself when it builds a message.
* ``apple`` (iOS, iPadOS, macOS): the body is an XML plist
  ``{CommandUUID, Command: {RequestType, ...}}`` whose ``CommandUUID`` is the command id.

Declarations (``POST /api/v1/declarations``) are built with :func:`mdmgate.apple.ddm.declaration`
(``ServerToken`` derived from the content), validated with :func:`mdmgate.apple.ddm.validate`
and stored with their device and org targets; posting the same identifier again replaces the
declaration and its targets (keeping its place in the assignment order).
``GET /api/v1/devices/{id}/declarations/effective`` shows what the device ends up with: the
combined ``softwareupdate.settings`` (each key with the declarations that decided it) and the
``softwareupdate.enforcement.specific`` declaration it processes now, for its stored
``os_version``.
"""

from __future__ import annotations

import base64
import hmac
import inspect
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from mdmgate import __version__, plist, syncml, versions
from mdmgate.apple import commands as apple_commands
from mdmgate.apple import ddm
from mdmgate.apple.commands import Command as AppleCommand
from mdmgate.apple.commands import build as build_apple_command
from mdmgate.apple.errors import CommandValidationError
from mdmgate.catalogue import rules as catalogue_rules
from mdmgate.catalogue.service import Catalogue
from mdmgate.errors import (
    InvalidVersion,
    MdmgateError,
    PlistDecodeError,
    PlistEncodeError,
    SyncMLDecodeError,
    SyncMLEncodeError,
)
from mdmgate.server import catalogue_api, enrollment_api
from mdmgate.server.api_base import (
    _ERROR_RESPONSES,
    _JSON_HEADERS,
    _PATTERNS,
    _UUID,
    _UUID_PATTERN,
    CommandUuid,
    DeviceId,
    Error,
    OrgPath,
    Platform,
    UnknownDevicesError,
    _check_content_type,
    _decode,
    _json,
    _json_content,
    _operation,
    _ref,
    _Refusal,
    _refuse,
    _unknown,
)
from mdmgate.server.catalogue_api import CatalogueApi
from mdmgate.server.device_auth_api import REQUEST_TYPES as AUTH_REQUEST_TYPES
from mdmgate.server.device_auth_api import RESPONSE_TYPES as AUTH_RESPONSE_TYPES
from mdmgate.server.device_auth_api import DeviceAuthApi
from mdmgate.server.device_auth_api import openapi_paths as auth_openapi_paths
from mdmgate.server.enrollment_api import EnrollmentApi
from mdmgate.server.types import Request, Response
from mdmgate.storage import (
    CommandExists,
    CommandStatus,
    Delivery,
    DeliveryState,
    Device,
    Store,
    StoredDeclaration,
    UnknownDevices,
)
from mdmgate.windows import apps, enrollment

__all__ = [
    "API_PREFIX",
    "AdminApi",
    "AppIn",
    "AppOut",
    "AppleCommandIn",
    "CommandAccepted",
    "CommandIn",
    "CommandStatusOut",
    "DeclarationIn",
    "DeclarationOut",
    "DeclarationTargetsIn",
    "DeclarationWritten",
    "DeliveryOut",
    "DeviceCommandIn",
    "DeviceIn",
    "DeviceOut",
    "DevicesWritten",
    "EffectiveDeclarationsOut",
    "EffectiveSettingOut",
    "EnforcementOut",
    "EnforcementStateOut",
    "Error",
    "SkippedDeclarationOut",
    "UnknownDevicesError",
    "openapi_document",
]

_log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"

# --- request and response bodies -------------------------------------------------------------


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


class _AppleApp(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True, tag_field="action"):
    command_uuid: CommandUuid | None = None


_FLAGS = Meta(
    description="ManagementFlags: 1 removes the app with the MDM profile, 4 prevents backing up"
    " its data (5 both)."
)


class InstallStoreApp(_AppleApp, tag="install_store_app", frozen=True):
    """Install or update an App Store app (`InstallApplication` with `iTunesStoreID`);
    updating is sending it again. `vpp` licenses it through Apps and Books (PurchaseMethod 1),
    which installs silently on supervised devices."""

    itunes_store_id: Annotated[int, Meta(gt=0)]
    vpp: bool = True
    management_flags: Annotated[int, _FLAGS] | None = None
    configuration: dict[str, Any] | None = None


class InstallEnterpriseApp(_AppleApp, tag="install_enterprise_app", frozen=True):
    """Install or update an in-house app from its manifest (`ManifestURL`, https)."""

    manifest_url: Annotated[str, Meta(min_length=9)]
    management_flags: Annotated[int, _FLAGS] | None = None
    configuration: dict[str, Any] | None = None


class TakeOverApp(_AppleApp, tag="take_over", frozen=True):
    """Take a user-installed app under management (`ChangeManagementState: Managed`);
    where the app is missing this is a plain install. Only for devices with the key
    (iOS/iPadOS 9 and macOS 11 or later, by their registered or enrollment OS version):
    any other device, or one of unknown OS version, is refused (422, reason
    `take_over_unsupported`); send such a device `install_store_app` instead."""

    identifier: Annotated[str, Meta(min_length=1, description="The app's bundle id.")]
    itunes_store_id: Annotated[int, Meta(gt=0)] | None = None
    vpp: bool = True


class RemoveApp(_AppleApp, tag="remove", frozen=True):
    """Remove a managed app (`RemoveApplication`)."""

    identifier: Annotated[str, Meta(min_length=1, description="The app's bundle id.")]


class RefreshInventory(_AppleApp, tag="refresh_inventory", frozen=True):
    """Ask for the app inventory: `InstalledApplicationList` (the device's apps; the
    result replaces the device's `apps`), or with `managed: true` `ManagedApplicationList`
    (the state of each managed app: Installing, Prompting, UserRejected, Failed...)."""

    managed: bool = False
    identifiers: list[str] | None = None


AppleAppIn = InstallStoreApp | InstallEnterpriseApp | TakeOverApp | RemoveApp | RefreshInventory


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
    apple_app: Annotated[
        AppleAppIn | None,
        Meta(
            description="An Apple app command (App Store or in-house install and update,"
            " take-over, removal, inventory refresh), built and checked for each platform."
        ),
    ] = None
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
    offers: Annotated[
        int,
        Meta(
            description="How many times it was handed out to the device (from 0 again after"
            " a NotNow). A Windows delivery handed out `[windows] max_offers` times without"
            " an answer ends `failed`."
        ),
    ] = 0


class CommandStatusOut(Struct):
    command_id: str
    kind: str
    deliveries: list[DeliveryOut]


# --- declarations (Apple DDM) ----------------------------------------------------------------

DeclarationType = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=256,
        description="The declaration type, one Apple's schema knows.",
        examples=[ddm.SETTINGS_TYPE, ddm.ENFORCEMENT_TYPE],
    ),
]
DeclarationIdentifier = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=512,
        description="The declaration's `Identifier`, unique on the gateway: posting the same"
        " identifier again replaces the declaration.",
        examples=["com.acme.swupdate.defer-30"],
    ),
]


class DeclarationTargetsIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """Whom a declaration is assigned to: devices by id, and organisations (an org covers
    its sub-organisations: `/acme` reaches a device in `/acme/sales`). At least one device
    or org. Duplicates are ignored."""

    devices: Annotated[
        list[DeviceId],
        Meta(description="Registered device ids; an unknown one refuses the whole request."),
    ] = msgspec.field(default_factory=list)
    orgs: Annotated[
        list[OrgPath],
        Meta(description="Org paths; `/` is every device."),
    ] = msgspec.field(default_factory=list)


class DeclarationIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A declaration (Apple declarative device management) and its targets.

    The gateway computes the `ServerToken` from the content (type, identifier, payload):
    the same content keeps its token, any change gives a new one, so devices fetch the
    declaration again exactly when it changed. The payload is checked against Apple's
    schema for the type (unknown keys, types, ranges, allowed values, required keys;
    `TargetLocalDateTime` as local `YYYY-MM-DDTHH:MM:SS` without offset); a refusal names
    the key as `$.payload.<dotted key>`. Posting an identifier that exists replaces the
    declaration and its targets; it keeps its place in the assignment order."""

    type: DeclarationType
    identifier: DeclarationIdentifier
    payload: Annotated[
        dict[str, Any],
        Meta(
            description="The declaration's `Payload`, as Apple documents it for the type.",
            examples=[{"Deferrals": {"CombinedPeriodInDays": 30}, "Notifications": True}],
        ),
    ]
    targets: DeclarationTargetsIn


class DeclarationWritten(Struct):
    """A declaration as stored, with its targets."""

    identifier: str
    type: str
    server_token: Annotated[
        str, Meta(description="The `ServerToken` devices see (derived from the content).")
    ]
    devices: Annotated[list[str], Meta(description="The device ids it is assigned to.")]
    orgs: Annotated[list[str], Meta(description="The org paths it is assigned to.")]


class DeclarationOut(DeclarationWritten):
    """A declaration as stored, with its payload and targets."""

    payload: dict[str, Any]


class EffectiveSettingOut(Struct):
    """The value a device ends up with for one key, and the declarations that decided it
    (per the key's combine rule: e.g. the largest deferral, the enum value latest in
    Apple's list, AND of booleans, the union of arrays, the first assigned)."""

    value: Any
    declarations: list[str]


class EnforcementOut(Struct):
    """One `softwareupdate.enforcement.specific` declaration, read."""

    declaration: Annotated[str, Meta(description="The declaration's identifier.")]
    target_os_version: str
    target_build_version: str | None
    target_local_datetime: Annotated[
        str, Meta(description="The device-local deadline, `YYYY-MM-DDTHH:MM:SS`.")
    ]
    details_url: str | None


class EnforcementStateOut(Struct):
    """Which enforcement declaration the device processes now, evaluated against its stored
    `os_version`: targets at or below it are ignored, the newer ones queue by earliest
    `TargetLocalDateTime` (ties: lower target version, then identifier). Updating the
    device's `os_version` (`POST /api/v1/devices`) re-evaluates it."""

    active: Annotated[
        EnforcementOut | None,
        Meta(description="The one processed now (the first of `pending`), or `null`."),
    ]
    pending: Annotated[
        list[EnforcementOut],
        Meta(
            description="Every enforcement still to be processed, in processing order; the"
            " first is `active`, the rest wait."
        ),
    ]
    os_version: Annotated[
        str | None, Meta(description="The device's OS version the evaluation used.")
    ]
    note: Annotated[
        str | None,
        Meta(
            description="Why nothing could be evaluated (no `os_version`, a platform without"
            " software-update enforcement, an unreadable version), else `null`."
        ),
    ] = None


class SkippedDeclarationOut(Struct):
    """A stored declaration left out of the evaluation, and why."""

    identifier: str
    error: str


class EffectiveDeclarationsOut(Struct):
    """What a device ends up with from the declarations assigned to it (by id or through
    its org and the orgs above it)."""

    device_id: str
    declarations: Annotated[
        list[str],
        Meta(description="Every declaration assigned to the device, oldest assignment first."),
    ]
    softwareupdate_settings: Annotated[
        dict[str, EffectiveSettingOut],
        Meta(
            description="The combined `com.apple.configuration.softwareupdate.settings`, by"
            " dotted key (`Deferrals.CombinedPeriodInDays`); keys no declaration sets are"
            " absent (the device's default applies)."
        ),
    ]
    enforcement: EnforcementStateOut
    skipped: Annotated[
        list[SkippedDeclarationOut],
        Meta(
            description="Assigned declarations that no longer pass validation (or whose"
            " target version does not parse for the device's platform), left out."
        ),
    ] = msgspec.field(default_factory=list)


_REQUEST_TYPES: tuple[type[Any], ...] = (DeviceIn, CommandIn, DeviceCommandIn, DeclarationIn)
_RESPONSE_TYPES: tuple[type[Any], ...] = (
    DevicesWritten,
    DeviceOut,
    CommandAccepted,
    CommandStatusOut,
    DeclarationWritten,
    DeclarationOut,
    EffectiveDeclarationsOut,
    Error,
    UnknownDevicesError,
)

# --- helpers ---------------------------------------------------------------------------------


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


def _apple_app_command(app: AppleAppIn, command_id: str, platform: str) -> AppleCommand:
    if isinstance(app, InstallStoreApp):
        return apple_commands.install_application(
            itunes_store_id=app.itunes_store_id,
            purchase_method=1 if app.vpp else None,
            management_flags=app.management_flags,
            configuration=app.configuration,
            command_uuid=command_id,
            platform=platform,
        )
    if isinstance(app, InstallEnterpriseApp):
        return apple_commands.install_application(
            manifest_url=app.manifest_url,
            management_flags=app.management_flags,
            configuration=app.configuration,
            command_uuid=command_id,
            platform=platform,
        )
    if isinstance(app, TakeOverApp):
        return apple_commands.install_application(
            identifier=None if app.itunes_store_id else app.identifier,
            itunes_store_id=app.itunes_store_id,
            purchase_method=1 if app.vpp and app.itunes_store_id else None,
            change_management_state="Managed",
            command_uuid=command_id,
            platform=platform,
        )
    if isinstance(app, RemoveApp):
        return apple_commands.remove_application(
            app.identifier, command_uuid=command_id, platform=platform
        )
    if app.managed:
        return apple_commands.managed_application_list(
            identifiers=app.identifiers, command_uuid=command_id, platform=platform
        )
    return apple_commands.installed_application_list(
        identifiers=app.identifiers, command_uuid=command_id, platform=platform
    )


#: The apple_app field behind each key of the command a builder refused.
_APPLE_APP_FIELDS = {
    "iTunesStoreID": "itunes_store_id",
    "ManifestURL": "manifest_url",
    "Identifier": "identifier",
    "ManagementFlags": "management_flags",
    "Configuration": "configuration",
    "Identifiers": "identifiers",
}


def _apple_app(app: AppleAppIn, platforms: Sequence[str]) -> tuple[str, bytes, bool]:
    """The command id, plist body and whether the client chose the id."""
    chosen = app.command_uuid is not None
    if app.command_uuid is None:
        command_id = uuid.uuid4().hex
    else:
        command_id = _command_uuid(app.command_uuid, "$.apple_app.command_uuid")
    body = b""
    for platform in platforms:
        try:
            body = _apple_app_command(app, command_id, platform).to_plist()
        except CommandValidationError as exc:
            key = exc.path.removeprefix("Command.").split(".")[0]
            known = _APPLE_APP_FIELDS.get(key)
            field = "$.apple_app" + (f".{known}" if known else "")
            raise _refuse(422, f"{exc.message} (for {platform})", field) from None
    return command_id, body, chosen


def _check_take_over(app: AppleAppIn, devices: Sequence[Device]) -> None:
    """Refuses a take-over for devices without ChangeManagementState (iOS/iPadOS before 9,
    macOS before 11, or an unknown OS version), naming each and why."""
    if not isinstance(app, TakeOverApp):
        return
    refused = []
    for device in devices:
        os_version = catalogue_rules.reported_os_version(device.os_version, device.facts)
        why = catalogue_rules.take_over_refusal(device.platform, os_version)
        if why is not None:
            refused.append(f"{device.id}: {why}")
    if refused:
        message = (
            "take_over cannot be sent (send install_store_app for a plain install): "
            + "; ".join(refused)
        )
        raise _Refusal(
            422,
            catalogue_api.CatalogueError(
                message, "$.apple_app.action", reason="take_over_unsupported"
            ),
        )


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
            ("apple_app", command.apple_app),
        )
        if value is not None
    ]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        names = "raw, apple, apple_app, syncml, windows_app"
        raise _refuse(422, f"give exactly one of {names}{got}", "$")
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
    if command.apple_app is not None:
        if kind != "apple":
            raise _refuse(
                422, "apple_app commands are for iOS, iPadOS and macOS devices", "$.apple_app"
            )
        _check_take_over(command.apple_app, devices)
        command_id, body, chosen = _apple_app(command.apple_app, platforms)
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


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API, schemas generated from the Structs."""
    _, schemas = msgspec.json.schema_components(
        _REQUEST_TYPES
        + _RESPONSE_TYPES
        + AUTH_REQUEST_TYPES
        + AUTH_RESPONSE_TYPES
        + enrollment_api.REQUEST_TYPES
        + enrollment_api.RESPONSE_TYPES
        + catalogue_api.REQUEST_TYPES
        + catalogue_api.RESPONSE_TYPES,
        ref_template="#/components/schemas/{name}",
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
        "/api/v1/declarations": {
            "post": _operation(
                "Create or replace a declaration (Apple DDM) and its targets. The ServerToken"
                " is derived from the content; the payload is checked against Apple's schema.",
                ("201", "A new declaration was stored.", "DeclarationWritten"),
                ("400", "415", "422"),
                request="DeclarationIn",
                not_found="UnknownDevicesError",
                replaced=("200", "A declaration with this identifier was replaced."),
            )
        },
        "/api/v1/declarations/{identifier}": {
            "get": _operation(
                "A declaration, its payload and its targets.",
                ("200", "The declaration.", "DeclarationOut"),
                ("404",),
                parameter=("identifier", "The declaration identifier (percent-encoded)."),
            )
        },
        "/api/v1/devices/{id}/declarations/effective": {
            "get": _operation(
                "What a device ends up with from its declarations: the combined software-update"
                " settings (each key with the declarations that decided it) and the"
                " enforcement it processes now for its stored os_version.",
                ("200", "The device's effective declarations.", "EffectiveDeclarationsOut"),
                ("404",),
                parameter=device,
            )
        },
    }
    paths.update(catalogue_api.openapi_paths())
    paths.update(auth_openapi_paths())
    for path, operations in enrollment_api.openapi_paths().items():
        paths.setdefault(path, {}).update(operations)
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
                "Devices, their command queues and their declarations (Apple declarative"
                " device management). Every request needs "
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

    def __init__(
        self,
        store: Store,
        token: str | None,
        *,
        dev: bool = False,
        on_enqueued: Callable[[Sequence[str]], None] | None = None,
        catalogue: Catalogue | None = None,
        enrollment: EnrollmentApi | None = None,
    ) -> None:
        self.store = store
        #: Tokens, certificates, the CA and the push certificate (``None``: 404s).
        self.enrollment = enrollment
        self.dev = dev
        #: Told which devices got new commands (e.g. to push Apple devices); must not block.
        self.on_enqueued = on_enqueued
        #: The app catalogue and its roll-outs (also told when devices change).
        self.catalogue = catalogue if catalogue is not None else Catalogue(store)
        self._catalogue_api = CatalogueApi(self.catalogue)
        self._device_auth_api = DeviceAuthApi(store)
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

    def token_refusal(self, request: Request) -> Response | None:
        """The 401 answer for a request without the admin API's token, ``None`` when it
        carries it (or needs none: ``--dev`` without a token). For other resources guarded
        by the same token, such as ``/metrics``."""
        try:
            self._authorize(request)
        except _Refusal as refusal:
            return _json(refusal.status, refusal.body, refusal.headers)
        return None

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
                allow("GET", "DELETE")
                return await self._device(device_id, retire=method == "DELETE")
            case ["commands", *_] | ["devices", _, "commands"]:
                return await self._route_commands(request, parts, allow)
            case ["declarations", *_] | ["devices", _, "declarations", *_]:
                return await self._route_declarations(request, parts, allow)
        return await self._route_catalogue(request, parts, allow)

    async def _device(self, device_id: str, *, retire: bool) -> Response:
        if retire:
            return await enrollment_api.retire_device(self.store, device_id)
        return await self._get_device(device_id)

    async def _route_catalogue(
        self, request: Request, parts: list[str], allow: Callable[..., None]
    ) -> Response:
        # /devices/{id}/auth[/rotate] (Windows credentials), then the catalogue's resources.
        found = await self._device_auth_api.route(request, parts, allow)
        if found is None and self.enrollment is not None:
            found = await self.enrollment.route(request, parts, allow)
        if found is None:
            found = await self._catalogue_api.route(request, parts, allow)
        if found is None:
            raise _refuse(404, f"no such resource: {request.path}")
        return found

    async def _route_commands(
        self, request: Request, parts: list[str], allow: Callable[..., None]
    ) -> Response:
        match parts:
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

    async def _route_declarations(
        self, request: Request, parts: list[str], allow: Callable[..., None]
    ) -> Response:
        match parts:
            case ["declarations"]:
                allow("POST")
                return await self._put_declaration(request)
            case ["declarations", identifier] if identifier:
                allow("GET")
                return await self._get_declaration(identifier)
            case ["devices", device_id, "declarations", "effective"] if device_id:
                allow("GET")
                return await self._effective_declarations(device_id)
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
        self.catalogue.note_devices(d.id for d in devices)
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
        if item.auth and old is not None:
            # Registered again with credentials: an unenrolled device is admitted again.
            for key, value in enrollment.reenrolled(
                facts, "registered again with credentials (POST /api/v1/devices)"
            ).items():
                if value is None:
                    facts.pop(key, None)
                else:
                    facts[key] = value
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
        if self.on_enqueued is not None and prepared.kind == "apple":
            # Apple devices fetch commands only when woken by a push.
            self.on_enqueued(wanted)
        return _json(202, CommandAccepted(prepared.command_id, prepared.kind, queued))

    async def _command_status(self, command_id: str) -> Response:
        status: CommandStatus | None = await self.store.command_status(command_id)
        if status is None:
            raise _refuse(404, f"no command {command_id!r}")
        out = CommandStatusOut(
            status.command_id, status.kind, [_delivery(d) for d in status.deliveries]
        )
        return _json(200, out)

    async def _put_declaration(self, request: Request) -> Response:
        _check_content_type(request)
        given = _decode(request.body, DeclarationIn)
        for index, org in enumerate(given.targets.orgs):
            if org.endswith("\n"):
                # The pattern's "$" also matches before a final newline.
                raise _refuse(422, "an org path has no line breaks", f"$.targets.orgs[{index}]")
        devices = list(dict.fromkeys(given.targets.devices))
        orgs = list(dict.fromkeys(given.targets.orgs))
        if not devices and not orgs:
            raise _refuse(
                422, "a declaration needs at least one target (a device or an org)", "$.targets"
            )
        decl = _build_declaration(given)
        known = await self.store.get_devices(devices)
        unknown = [i for i in devices if i not in known]
        if unknown:
            raise _unknown(unknown, "$.targets.devices")
        # Two concurrent first writes of one identifier may both answer 201; the store
        # keeps one of them whole.
        old = await self.store.get_declaration(decl.identifier)
        await self.store.put_declaration(
            StoredDeclaration(
                identifier=decl.identifier,
                type=decl.type,
                payload=decl.payload,
                server_token=decl.server_token,
                devices=tuple(devices),
                orgs=tuple(orgs),
            )
        )
        out = DeclarationWritten(decl.identifier, decl.type, decl.server_token, devices, orgs)
        return _json(201 if old is None else 200, out)

    async def _get_declaration(self, identifier: str) -> Response:
        stored = await self.store.get_declaration(identifier)
        if stored is None:
            raise _refuse(404, f"no declaration {identifier!r}")
        out = DeclarationOut(
            identifier=stored.identifier,
            type=stored.type,
            server_token=stored.server_token,
            devices=list(stored.devices),
            orgs=list(stored.orgs),
            payload=stored.payload,
        )
        return _json(200, out)

    async def _effective_declarations(self, device_id: str) -> Response:
        device = await self.store.get_device(device_id)
        if device is None:
            raise _refuse(404, f"no device {device_id!r}")
        stored = await self.store.declarations_for(device.id, device.org)
        usable: list[ddm.Declaration] = []
        skipped: list[SkippedDeclarationOut] = []
        for item in stored:
            decl = ddm.Declaration(item.type, item.identifier, item.payload, item.server_token)
            problem = _stored_problem(decl, device.platform)
            if problem is None:
                usable.append(decl)
            else:
                skipped.append(SkippedDeclarationOut(item.identifier, problem))
        settings = {
            key: EffectiveSettingOut(c.value, list(c.declarations))
            for key, c in ddm.effective_settings(usable).items()
        }
        out = EffectiveDeclarationsOut(
            device_id=device.id,
            declarations=[item.identifier for item in stored],
            softwareupdate_settings=settings,
            enforcement=_enforcement_state(usable, device),
            skipped=skipped,
        )
        return _json(200, out)


# --- declarations ----------------------------------------------------------------------------

#: Platforms software-update enforcement exists on; the names ``versions`` orders by.
_ENFORCEMENT_PLATFORMS = ("ios", "ipados", "macos")
_EVALUATED_TYPES = (ddm.SETTINGS_TYPE, ddm.ENFORCEMENT_TYPE)


def _declaration_field(key: str) -> str | None:
    """The JSONPath into the request body for a :class:`~mdmgate.apple.ddm.DeclarationError`
    key."""
    if key == "Type":
        return "$.type"
    if key == "Identifier":
        return "$.identifier"
    if key == "ServerToken":
        return None  # computed here: cannot be the client's
    if not key:
        return "$.payload"
    return "$.payload" + ("" if key.startswith("[") else ".") + key


def _target_version_problem(decl: ddm.Declaration, platforms: Sequence[str]) -> str | None:
    """Why an enforcement declaration's TargetOSVersion cannot be ordered on one of
    ``platforms``, or ``None``."""
    target = decl.payload.get("TargetOSVersion")
    if decl.type != ddm.ENFORCEMENT_TYPE or not isinstance(target, str):
        return None
    for platform in platforms:
        try:
            versions.sort_key(target, platform=platform)
        except InvalidVersion as exc:
            return f"{decl.type} {decl.identifier!r}: TargetOSVersion: {exc}"
    return None


def _build_declaration(given: DeclarationIn) -> ddm.Declaration:
    """The declaration with its content-derived token, checked against Apple's schema (and,
    for enforcement, a TargetOSVersion that orders on every platform it exists on)."""
    try:
        decl = ddm.declaration(given.type, given.identifier, given.payload)
        ddm.validate(decl)
    except ddm.DeclarationError as exc:
        raise _refuse(422, exc.message, _declaration_field(exc.key)) from None
    except RecursionError:
        raise _refuse(400, "JSON is nested too deeply") from None
    problem = _target_version_problem(decl, _ENFORCEMENT_PLATFORMS)
    if problem is not None:
        raise _refuse(422, problem, "$.payload.TargetOSVersion")
    return decl


def _stored_problem(decl: ddm.Declaration, platform: str) -> str | None:
    """Why a stored declaration cannot be evaluated for a device (it was valid when written;
    the schema facts may have changed since), or ``None``. Types not evaluated here pass."""
    if decl.type not in _EVALUATED_TYPES:
        return None
    try:
        ddm.validate(decl)
    except ddm.DeclarationError as exc:
        return exc.message
    except RecursionError:
        return "the payload is nested too deeply"
    if platform in _ENFORCEMENT_PLATFORMS:
        return _target_version_problem(decl, (platform,))
    return None


def _enforcement_out(item: ddm.Enforcement) -> EnforcementOut:
    return EnforcementOut(
        declaration=item.declaration,
        target_os_version=item.target_os_version,
        target_build_version=item.target_build_version,
        target_local_datetime=item.target_local_datetime.isoformat(timespec="seconds"),
        details_url=item.details_url,
    )


def _enforcement_state(decls: Sequence[ddm.Declaration], device: Device) -> EnforcementStateOut:
    """The enforcement the device processes now, and the queue, for its stored OS version;
    empty with a note when it cannot be evaluated."""
    os_version = device.os_version

    def nothing(note: str | None) -> EnforcementStateOut:
        return EnforcementStateOut(None, [], os_version, note)

    if device.platform not in _ENFORCEMENT_PLATFORMS:
        return nothing(
            "software-update enforcement exists on iOS, iPadOS and macOS, not on"
            f" {device.platform!r} devices"
        )
    if not os_version:
        return nothing(
            "the device has no os_version: it has not reported one, and none was registered"
        )
    try:
        pending = ddm.pending_enforcements(decls, os_version=os_version, platform=device.platform)
    except InvalidVersion as exc:
        return nothing(f"the device's os_version cannot be ordered: {exc}")
    except ddm.DeclarationError as exc:  # screened out before; kept for safety
        return nothing(f"cannot evaluate: {exc.message}")
    out = [_enforcement_out(item) for item in pending]
    return EnforcementStateOut(out[0] if out else None, out, os_version)


def _delivery(delivery: Delivery) -> DeliveryOut:
    result, encoding = _as_text(delivery.result)
    return DeliveryOut(
        delivery.device_id, delivery.state, delivery.status, result, encoding, delivery.offers
    )
