"""Apple MDM commands the gateway sends, built and checked against Apple's schema.

Every builder returns a :class:`Command`; its plist is
``{CommandUUID, Command: {RequestType, ...}}``. Commands are checked strictly against the
schema facts (:mod:`mdmgate.apple.schema`) when they are built and again when they are
encoded, so a command that reaches a device has the right types, its required keys, only
known keys and allowed values, and only text a plist carries exactly. A problem raises
:class:`~mdmgate.apple.errors.CommandValidationError` whose ``path`` names the key
(``Command.Options.PurchaseMethod``).

``platform`` (``ios``, ``ipados``, ``macos``, ``tvos``, ``visionos``, ``watchos``) and
``channel`` (``device``/``user``, macOS), when given, also refuse keys the platform or
channel does not have (``InstallAsManaged`` is macOS only, ``Attributes`` iOS only).

Besides the schema, builders enforce these rules of Apple's documentation:

* ``InstallApplication`` names its app in exactly one of ``iTunesStoreID``,
  ``Identifier`` and ``ManifestURL``; a store id is positive; a manifest URL is an
  absolute ``https`` URL.
* Every command has a non-empty ``CommandUUID`` (a new UUID unless given).

>>> command = remove_application("com.example.app", command_uuid="0F1E")
>>> command.to_dict()["Command"]
{'RequestType': 'RemoveApplication', 'Identifier': 'com.example.app'}
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from mdmgate import plist
from mdmgate.apple.schema import Channel, SchemaIssue, check_command, raise_for_issues

__all__ = [
    "Command",
    "application_attributes_setting",
    "application_configuration_setting",
    "build",
    "declarative_management",
    "device_information",
    "device_name_setting",
    "host_name_setting",
    "install_application",
    "installed_application_list",
    "managed_application_list",
    "remove_application",
    "setting",
    "settings",
]


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """A command for one device: ``payload`` holds the keys of the ``Command``
    dictionary besides ``RequestType``. ``platform``/``channel`` are what it was checked
    for."""

    command_uuid: str
    request_type: str
    payload: dict[str, Any]
    platform: str | None = None
    channel: Channel | None = None

    def validate(self) -> None:
        """Checks the command strictly; raises
        :class:`~mdmgate.apple.errors.CommandValidationError` on any problem."""
        issues = _uuid_issues(self.command_uuid)
        issues += check_command(
            self.request_type, self.payload, platform=self.platform, channel=self.channel
        )
        raise_for_issues(self.request_type, issues)

    def to_dict(self) -> dict[str, Any]:
        """``{"CommandUUID": ..., "Command": {"RequestType": ..., **payload}}``."""
        return {
            "CommandUUID": self.command_uuid,
            "Command": {"RequestType": self.request_type, **self.payload},
        }

    def to_plist(self, binary: bool = False) -> bytes:
        """The command as plist bytes (XML, or binary with ``binary``), after checking it
        again."""
        self.validate()
        return plist.dumps(self.to_dict(), binary=binary)


def _uuid_issues(command_uuid: object) -> list[SchemaIssue]:
    if not isinstance(command_uuid, str):
        return [SchemaIssue("CommandUUID", "type", "expected a string")]
    if not command_uuid.strip():
        return [SchemaIssue("CommandUUID", "value", "must not be empty")]
    return []


def _plain(value: Any) -> Any:
    """A builder argument given as a mapping or iterable, as the dict or list a plist
    encoder takes (one level; nested values are checked as they are)."""
    if isinstance(value, Mapping) and not isinstance(value, dict):
        return dict(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return value


def _listed(values: Iterable[Any] | None) -> Any:
    """An iterable argument as a list; a string (a mistake) is passed on for the schema
    check to refuse."""
    if values is None or isinstance(values, str | bytes | list):
        return values
    return list(values)


def build(
    request_type: str,
    payload: Mapping[str, Any] | None = None,
    *,
    command_uuid: str | None = None,
    platform: str | None = None,
    channel: Channel | None = None,
    rules: Iterable[SchemaIssue] = (),
) -> Command:
    """Any command of the schema facts, checked strictly.

    ``rules`` are problems a caller's own rules found; they are raised together with the
    schema's.
    """
    body = {k: v for k, v in (payload or {}).items() if v is not None}
    command = Command(
        command_uuid=str(uuid.uuid4()).upper() if command_uuid is None else command_uuid,
        request_type=request_type,
        payload=body,
        platform=platform,
        channel=channel,
    )
    issues = _uuid_issues(command.command_uuid) + list(rules)
    issues += check_command(request_type, body, platform=platform, channel=channel)
    raise_for_issues(request_type, issues)
    return command


# --- apps ------------------------------------------------------------------------------------


def install_application(
    *,
    itunes_store_id: int | None = None,
    identifier: str | None = None,
    manifest_url: str | None = None,
    purchase_method: int | None = None,
    management_flags: int | None = None,
    change_management_state: Literal["Managed"] | None = None,
    install_as_managed: bool | None = None,
    configuration: Mapping[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
    ios_app: bool | None = None,
    command_uuid: str | None = None,
    platform: str | None = None,
    channel: Channel | None = None,
) -> Command:
    """``InstallApplication``: install (or update, or take under management) one app.

    The app is named by exactly one of ``itunes_store_id`` (App Store app),
    ``identifier`` (bundle id) and ``manifest_url`` (enterprise app). A VPP-licensed
    store app is ``purchase_method=1``; updating it is sending this command again.
    ``management_flags``: 1 removes the app with the MDM profile, 4 prevents backing up
    its data (5 both; 0 none, macOS). ``change_management_state="Managed"`` takes a
    user-installed app under management (iOS 9+; a plain install where it is missing).
    ``install_as_managed`` and ``ios_app`` are macOS keys, ``attributes`` iOS ones.
    """
    rules: list[SchemaIssue] = []
    named = [
        key
        for key, value in (
            ("iTunesStoreID", itunes_store_id),
            ("Identifier", identifier),
            ("ManifestURL", manifest_url),
        )
        if value is not None
    ]
    if len(named) != 1:
        rules.append(
            SchemaIssue(
                "Command.iTunesStoreID" if not named else f"Command.{named[1]}",
                "rule",
                "name the app with exactly one of iTunesStoreID, Identifier, ManifestURL"
                + (f" (got {', '.join(named)})" if named else ""),
            )
        )
    if type(itunes_store_id) is int and itunes_store_id <= 0:
        rules.append(SchemaIssue("Command.iTunesStoreID", "range", "must be positive"))
    if isinstance(manifest_url, str):
        parts = urlsplit(manifest_url)
        if parts.scheme.lower() != "https" or not parts.netloc:
            rules.append(
                SchemaIssue("Command.ManifestURL", "value", "must be an absolute https URL")
            )
    payload: dict[str, Any] = {
        "iTunesStoreID": itunes_store_id,
        "Identifier": identifier,
        "ManifestURL": manifest_url,
        "Options": None if purchase_method is None else {"PurchaseMethod": purchase_method},
        "ManagementFlags": management_flags,
        "ChangeManagementState": change_management_state,
        "InstallAsManaged": install_as_managed,
        "Configuration": _plain(configuration),
        "Attributes": _plain(attributes),
        "iOSApp": ios_app,
    }
    return build(
        "InstallApplication",
        payload,
        command_uuid=command_uuid,
        platform=platform,
        channel=channel,
        rules=rules,
    )


def remove_application(
    identifier: str,
    *,
    command_uuid: str | None = None,
    platform: str | None = None,
    channel: Channel | None = None,
) -> Command:
    """``RemoveApplication``: remove the managed app with this bundle id."""
    return build(
        "RemoveApplication",
        {"Identifier": identifier},
        command_uuid=command_uuid,
        platform=platform,
        channel=channel,
    )


def installed_application_list(
    *,
    identifiers: Iterable[str] | None = None,
    managed_apps_only: bool | None = None,
    items: Iterable[str] | None = None,
    command_uuid: str | None = None,
    platform: str | None = None,
    channel: Channel | None = None,
) -> Command:
    """``InstalledApplicationList``: the apps on the device, optionally only the given
    bundle ids, only managed apps, or only some keys per app (``items``, iOS/tvOS 14+)."""
    return build(
        "InstalledApplicationList",
        {
            "Identifiers": _listed(identifiers),
            "ManagedAppsOnly": managed_apps_only,
            "Items": _listed(items),
        },
        command_uuid=command_uuid,
        platform=platform,
        channel=channel,
    )


def managed_application_list(
    *,
    identifiers: Iterable[str] | None = None,
    command_uuid: str | None = None,
    platform: str | None = None,
    channel: Channel | None = None,
) -> Command:
    """``ManagedApplicationList``: the state of every managed app (or of the given
    bundle ids)."""
    return build(
        "ManagedApplicationList",
        {"Identifiers": _listed(identifiers)},
        command_uuid=command_uuid,
        platform=platform,
        channel=channel,
    )


# --- declarative management, device information, settings ---------------------------------


def declarative_management(
    tokens: Mapping[str, Any] | bytes | None = None,
    *,
    command_uuid: str | None = None,
    platform: str | None = None,
    channel: Channel | None = None,
) -> Command:
    """``DeclarativeManagement``: start (or nudge) declarative management.

    ``tokens`` becomes ``Data``: the JSON bytes of the synchronization tokens
    (``{"SyncTokens": {"DeclarationsToken": ..., "Timestamp": ...}}``), given either as
    those bytes or as a mapping (encoded as compact JSON with sorted keys).
    """
    rules: list[SchemaIssue] = []
    data: Any = tokens
    if isinstance(tokens, Mapping):
        try:
            data = msgspec.json.encode(dict(tokens), order="sorted")
        except (TypeError, msgspec.EncodeError) as exc:
            rules.append(SchemaIssue("Command.Data", "type", f"tokens are not JSON: {exc}"))
            data = None
    elif isinstance(tokens, bytes):
        try:
            msgspec.json.decode(tokens)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            rules.append(SchemaIssue("Command.Data", "value", f"Data is not JSON: {exc}"))
    return build(
        "DeclarativeManagement",
        {"Data": data},
        command_uuid=command_uuid,
        platform=platform,
        channel=channel,
        rules=rules,
    )


def device_information(
    queries: Iterable[str],
    *,
    command_uuid: str | None = None,
    platform: str | None = None,
    channel: Channel | None = None,
) -> Command:
    """``DeviceInformation``: ask for the named queries (``OSVersion``, ``IsSupervised``,
    …; the names the schema lists)."""
    return build(
        "DeviceInformation",
        {"Queries": _listed(queries)},
        command_uuid=command_uuid,
        platform=platform,
        channel=channel,
    )


def settings(
    items: Iterable[Mapping[str, Any]],
    *,
    command_uuid: str | None = None,
    platform: str | None = None,
    channel: Channel | None = None,
) -> Command:
    """``Settings``: change device settings; each item is a dictionary whose ``Item``
    names the setting (see :func:`setting` and the helpers below)."""
    return build(
        "Settings",
        {"Settings": [_plain(item) for item in items]},
        command_uuid=command_uuid,
        platform=platform,
        channel=channel,
    )


def setting(item: str, **values: Any) -> dict[str, Any]:
    """One ``Settings`` item: ``setting("Bluetooth", Enabled=True)``. ``None`` values are
    left out."""
    return {"Item": item, **{k: v for k, v in values.items() if v is not None}}


def application_attributes_setting(
    identifier: str, attributes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Sets a managed app's attributes (``VPNUUID``, ``Removable``, …; iOS, tvOS)."""
    return setting("ApplicationAttributes", Identifier=identifier, Attributes=_plain(attributes))


def application_configuration_setting(
    identifier: str, configuration: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Sets (or, without ``configuration``, clears) a managed app's configuration."""
    return setting(
        "ApplicationConfiguration", Identifier=identifier, Configuration=_plain(configuration)
    )


def device_name_setting(name: str) -> dict[str, Any]:
    """Renames the device (supervised iOS, macOS)."""
    return setting("DeviceName", DeviceName=name)


def host_name_setting(name: str) -> dict[str, Any]:
    """Sets the host name (macOS)."""
    return setting("HostName", HostName=name)
