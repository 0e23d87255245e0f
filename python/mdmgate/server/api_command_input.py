"""The command a request gives, as JSON, and the body the gateway stores for it.

One command is exactly one of ``raw`` (the text of a SyncML command or an Apple command
plist), ``apple`` (a typed Apple command), ``apple_app`` (an Apple app command),
``syncml`` (a SyncML command in the dict form of ``mdmgate syncml decode``) or
``windows_app`` (a Windows app lifecycle command). :func:`prepare` checks it against the
devices' command channel and builds what :meth:`~mdmgate.storage.QueueStore.enqueue` stores:

* ``syncml`` (Windows): the UTF-8 XML of exactly one SyncML command element
  (``<Get>...</Get>``); its ``CmdID`` may be missing or arbitrary, the session layer
  numbers commands itself when it builds a message;
* ``apple`` (iOS, iPadOS, macOS): an XML plist ``{CommandUUID, Command: {RequestType, ...}}``
  whose ``CommandUUID`` is the command id.

Refusals are 422 naming the field (``$.raw``, ``$.apple.payload.Queries``...).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from mdmgate import plist, syncml
from mdmgate.apple import commands as apple_commands
from mdmgate.apple.commands import Command as AppleCommand
from mdmgate.apple.commands import build as build_apple_command
from mdmgate.apple.errors import CommandValidationError
from mdmgate.catalogue import rules as catalogue_rules
from mdmgate.errors import (
    MdmgateError,
    PlistDecodeError,
    PlistEncodeError,
    SyncMLDecodeError,
    SyncMLEncodeError,
)
from mdmgate.server.api_base import (
    _PATTERNS,
    _UUID,
    _UUID_PATTERN,
    CommandUuid,
    DeviceId,
    _Refusal,
    _refuse,
)
from mdmgate.server.catalogue_api import CatalogueError
from mdmgate.storage import Device
from mdmgate.windows import apps

__all__ = [
    "REQUEST_TYPES",
    "AppleAppIn",
    "AppleCommandIn",
    "CommandIn",
    "DeviceCommandIn",
    "InstallEnterpriseApp",
    "InstallStoreApp",
    "Prepared",
    "RefreshInventory",
    "RemoveApp",
    "TakeOverApp",
    "prepare",
    "syncml_command",
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


REQUEST_TYPES: tuple[type[Any], ...] = (CommandIn, DeviceCommandIn)


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


class Prepared(Struct):
    """What is stored for a command."""

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


def syncml_command(fragment: bytes) -> dict[str, Any] | list[dict[str, Any]]:
    """A stored SyncML command in the dict form (``{"Get": {...}}``), or the list of them
    when it is sent as several (an app install: the Add of its node, then the Exec); raises
    :class:`~mdmgate.errors.SyncMLDecodeError` when it does not decode."""
    message = syncml.to_dict(_SYNCML_PREFIX + fragment + _SYNCML_SUFFIX)
    body: list[dict[str, Any]] = message.get("SyncBody", [])
    if not body:
        raise SyncMLDecodeError("expected a SyncML command, got none", 0, "structure")
    return body[0] if len(body) == 1 else body


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
            CatalogueError(message, "$.apple_app.action", reason="take_over_unsupported"),
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


def prepare(
    command: DeviceCommandIn, devices: Sequence[Device], devices_field: str | None
) -> Prepared:
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
            return Prepared("syncml", uuid.uuid4().hex, fragment)
        command_id, body, chosen = _apple_from_raw(command.raw)
        return Prepared("apple", command_id, body, chosen)
    if command.apple is not None:
        if kind != "apple":
            raise _refuse(422, "apple commands are for iOS, iPadOS and macOS devices", "$.apple")
        command_id, body, chosen = _apple_typed(command.apple, platforms)
        return Prepared("apple", command_id, body, chosen)
    if command.apple_app is not None:
        if kind != "apple":
            raise _refuse(
                422, "apple_app commands are for iOS, iPadOS and macOS devices", "$.apple_app"
            )
        _check_take_over(command.apple_app, devices)
        command_id, body, chosen = _apple_app(command.apple_app, platforms)
        return Prepared("apple", command_id, body, chosen)
    if command.windows_app is not None:
        if kind != "syncml":
            raise _refuse(422, "windows_app commands are for Windows devices", "$.windows_app")
        return Prepared("syncml", uuid.uuid4().hex, _windows_app(command.windows_app, devices))
    assert command.syncml is not None
    if kind != "syncml":
        raise _refuse(422, "syncml commands are for Windows devices", "$.syncml")
    return Prepared("syncml", uuid.uuid4().hex, _syncml_from_dict(command.syncml))
