"""The catalogue's rules, without I/O: where a file version comes from, what an upload
does to versions and assignments, when automatic updates check, whether a device installs
silently, and which command a device is sent.

The rules are those of a UEM console's manual (versions and assignments) and a Japanese
MDM's manual (install notifications and automatic updates); ``docs/apps.md`` restates
them and says where the gateway chose.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from mdmgate import plist, versions
from mdmgate.apple import commands as apple_commands
from mdmgate.apple import schema as apple_schema
from mdmgate.apple.errors import CommandValidationError
from mdmgate.catalogue.model import App, AppVersion, AutoUpdate
from mdmgate.errors import MdmgateError, UnknownPlatform
from mdmgate.windows import apps as windows_apps

__all__ = [
    "CatalogueRefused",
    "Deployment",
    "UploadResult",
    "auto_update_refusal",
    "check_before",
    "check_file_version",
    "command_kind",
    "deployment",
    "device_platform",
    "file_version_from_source",
    "installs_silently",
    "latest_active",
    "next_check",
    "reported_os_version",
    "take_over_refusal",
    "upload",
    "user_installed",
    "version_platform",
]


class CatalogueRefused(MdmgateError, ValueError):
    """A catalogue change or roll-out the rules do not allow; ``field`` names the part of
    the request at fault (a JSONPath), ``reason`` is a stable code for consoles."""

    def __init__(self, message: str, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason


def version_platform(platform: str) -> str:
    """The version rules of an app platform (see :mod:`mdmgate.versions`)."""
    return "ios" if platform == "ipados" else platform


def device_platform(platform: str) -> str:
    """The app platform a device of ``platform`` runs apps of (iPadOS runs iOS apps)."""
    return "ios" if platform == "ipados" else platform


# --- file versions -------------------------------------------------------------------------

_IDENTITY_VERSION = re.compile(
    r"<(?:\w+:)?Identity\b[^>]*?\sVersion\s*=\s*([\"'])([^\"']*)\1", re.IGNORECASE | re.DOTALL
)
_ANY_VERSION = re.compile(r"\sVersion\s*=\s*([\"'])([^\"']*)\1", re.DOTALL)


def check_file_version(file_version: str, platform: str, field: str = "$.file_version") -> str:
    """``file_version`` if the app platform's version rule reads it; refused otherwise."""
    try:
        versions.sort_key(file_version, platform=version_platform(platform))
    except versions.InvalidVersion as exc:
        raise CatalogueRefused(str(exc), field, "invalid_version") from None
    return file_version


def file_version_from_source(
    platform: str, source: dict[str, Any], field: str = "$.source"
) -> tuple[str, str | None]:
    """``(file_version, display_version)`` from what the platform's package says:

    * android: ``{"version_code": 42, "version_name": "4.2"}`` (the code decides; the
      name is only shown);
    * ios/macos: ``{"info_plist": "<base64 of Info.plist, XML or binary>"}`` or
      ``{"CFBundleVersion": ..., "CFBundleShortVersionString": ...}``; CFBundleVersion
      decides when present, else CFBundleShortVersionString;
    * windows: ``{"manifest": "<AppxManifest.xml or WMAppManifest.xml text>"}``: the
      ``Version="X.X.X.X"`` of its Identity (or App) element, of which three parts count.
    """
    if platform == "android":
        code = source.get("version_code")
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 2**31 - 1:
            raise CatalogueRefused(
                "an Android versionCode is an integer 0..2147483647",
                f"{field}.version_code",
                "invalid_version",
            )
        name = source.get("version_name")
        return str(code), name if isinstance(name, str) else None
    if platform in ("ios", "macos"):
        info: Any = source
        if "info_plist" in source:
            raw = source["info_plist"]
            try:
                info = plist.loads(base64.b64decode(str(raw), validate=True))
            except (binascii.Error, ValueError) as exc:
                raise CatalogueRefused(
                    f"info_plist is not a base64 plist: {exc}",
                    f"{field}.info_plist",
                    "invalid_source",
                ) from None
            if not isinstance(info, dict):
                raise CatalogueRefused(
                    "Info.plist is not a dictionary", f"{field}.info_plist", "invalid_source"
                )
        bundle = info.get("CFBundleVersion")
        short = info.get("CFBundleShortVersionString")
        chosen = bundle if isinstance(bundle, str) and bundle else short
        if not isinstance(chosen, str) or not chosen:
            raise CatalogueRefused(
                "the Info.plist has neither CFBundleVersion nor CFBundleShortVersionString",
                field,
                "invalid_source",
            )
        shown = short if isinstance(short, str) and short else chosen
        return check_file_version(chosen, platform, field), shown
    if platform == "windows":
        manifest = source.get("manifest")
        if not isinstance(manifest, str):
            raise CatalogueRefused(
                "a Windows source is {'manifest': '<AppxManifest.xml text>'}",
                f"{field}.manifest",
                "invalid_source",
            )
        found = _IDENTITY_VERSION.search(manifest) or _ANY_VERSION.search(manifest)
        if found is None:
            raise CatalogueRefused(
                'the manifest has no Version="X.X.X.X"', f"{field}.manifest", "invalid_source"
            )
        full = found.group(2).strip()
        shown = ".".join(full.split(".")[:3])
        return check_file_version(full, platform, f"{field}.manifest"), shown
    raise CatalogueRefused(f"no file version source for platform {platform!r}", field)


# --- versions and assignments --------------------------------------------------------------


class UploadResult(msgspec.Struct, frozen=True):
    app: App
    #: The highest active version afterwards.
    latest: str
    #: Active versions below the new one, whose assignments moved to it.
    previous: tuple[str, ...]
    retired: tuple[str, ...]


def _version_set(app: App) -> versions.VersionSet:
    return versions.VersionSet(
        version_platform(app.platform),
        [
            versions.AppVersion(v.file_version, v.file_version, v.state == "active")
            for v in app.versions
        ],
    )


def _union(*groups: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item for group in groups for item in group))


def upload(app: App, new: AppVersion, *, retire_previous: bool) -> UploadResult:
    """Adds a version as a console upload does. A version lower than the latest is
    accepted; the assignments of the active versions below the new one move to it (the
    latest keeps its own); ``retire_previous`` retires those lower versions, never the
    latest. A file version ordering equal to an uploaded one is refused."""
    try:
        done = _version_set(app).upload(new.file_version, retire_previous=retire_previous)
    except versions.DuplicateVersion:
        raise CatalogueRefused(
            f"file version {new.file_version} orders equal to one already uploaded",
            "$.file_version",
            "duplicate_version",
        ) from None
    previous = {v.file_version for v in done.previous}
    retired = {v.file_version for v in done.retired}
    moved_orgs = _union(*(v.assigned_orgs for v in app.versions if v.file_version in previous))
    moved_devices = _union(
        *(v.assigned_devices for v in app.versions if v.file_version in previous)
    )
    kept = [
        msgspec.structs.replace(
            v,
            assigned_orgs=(),
            assigned_devices=(),
            state="retired" if v.file_version in retired else v.state,
        )
        if v.file_version in previous
        else v
        for v in app.versions
    ]
    added = msgspec.structs.replace(
        new,
        assigned_orgs=_union(new.assigned_orgs, moved_orgs),
        assigned_devices=_union(new.assigned_devices, moved_devices),
    )
    after = msgspec.structs.replace(app, versions=(*kept, added))
    return UploadResult(
        after,
        done.latest.file_version,
        tuple(v.file_version for v in done.previous),
        tuple(v.file_version for v in done.retired),
    )


def ordered(app: App, *, descending: bool = False) -> list[AppVersion]:
    """The app's versions in file-version order."""
    order = versions.argsort(
        [v.file_version for v in app.versions],
        platform=version_platform(app.platform),
        reverse=descending,
    )
    return [app.versions[i] for i in order]


def latest_active(app: App, *, published_by: float | None = None) -> AppVersion | None:
    """The highest active version (published at or before ``published_by``, if given)."""
    for version in ordered(app, descending=True):
        if version.state == "active" and (
            published_by is None or version.published_at <= published_by
        ):
            return version
    return None


def find_version(app: App, file_version: str) -> AppVersion | None:
    """The version ordering equal to ``file_version``."""
    platform = version_platform(app.platform)
    try:
        key = versions.sort_key(file_version, platform=platform)
    except versions.InvalidVersion:
        return None
    for version in app.versions:
        if versions.sort_key(version.file_version, platform=platform) == key:
            return version
    return None


# --- automatic updates ---------------------------------------------------------------------


def auto_update_refusal(app: App) -> tuple[str, str] | None:
    """``(reason, message)`` when automatic updates cannot be used for the app."""
    if app.system:
        return "system_app", f"{app.id} is a system app: it is updated with the OS"
    if app.kind != "store" or not app.vpp or app.licence_total is None:
        return (
            "vpp_not_set_up",
            f"{app.id} has no VPP licence pool: set up VPP (vpp and licences) first",
        )
    if not app.managed:
        return "not_managed", f"{app.id} is not distributed as a managed app"
    return None


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise CatalogueRefused(
            f"unknown time zone {name!r} (an IANA name such as Asia/Tokyo)",
            "$.timezone",
            "invalid_timezone",
        ) from None


def check_clock(check_time: str) -> dt.time:
    """The ``HH:MM`` of a daily check."""
    try:
        hours, minutes = check_time.split(":")
        if not all(len(p) == 2 and p.isascii() and p.isdigit() for p in (hours, minutes)):
            raise ValueError(check_time)
        return dt.time(int(hours), int(minutes))
    except ValueError:
        raise CatalogueRefused(
            f"check_time {check_time!r} is not HH:MM (00:00 to 23:59)",
            "$.check_time",
            "invalid_check_time",
        ) from None


def _check_on(day: dt.date, clock: dt.time, zone: zoneinfo.ZoneInfo) -> float:
    # A wall time skipped by a DST change resolves to the instant after the gap (fold=0
    # reads it with the offset before the change), so every day has one check.
    local = dt.datetime.combine(day, clock, tzinfo=zone)
    return local.timestamp()


def next_check(auto: AutoUpdate, after: float) -> float:
    """The first daily check strictly after ``after`` (Unix time)."""
    zone = _zone(auto.timezone)
    clock = check_clock(auto.check_time)
    day = dt.datetime.fromtimestamp(after, zone).date()
    for offset in range(3):
        at = _check_on(day + dt.timedelta(days=offset), clock, zone)
        if at > after:
            return at
    raise AssertionError("a daily check within three days")  # pragma: no cover


def check_before(auto: AutoUpdate, now: float) -> float:
    """The latest daily check at or before ``now``."""
    zone = _zone(auto.timezone)
    clock = check_clock(auto.check_time)
    day = dt.datetime.fromtimestamp(now, zone).date()
    for offset in range(3):
        at = _check_on(day - dt.timedelta(days=offset), clock, zone)
        if at <= now:
            return at
    raise AssertionError("a daily check within three days")  # pragma: no cover


# --- devices and commands ------------------------------------------------------------------


def installs_silently(platform: str, os_version: str | None, supervised: bool | None) -> bool:
    """Whether an install command completes without asking the user: on iOS and iPadOS
    only supervised devices on iOS 10 or later; macOS and Windows install MDM apps
    without a prompt; Android (no command channel here) is counted as prompting."""
    if platform in ("ios", "ipados"):
        if not supervised or not os_version:
            return False
        try:
            return versions.compare(os_version, "10", platform="ios") >= 0
        except versions.InvalidVersion:
            return False
    return platform in ("macos", "windows")


#: ManagedApplicationList states of an app that is on the device but not (yet) managed:
#: the user installed it before MDM asked, declined management, or is being asked.
USER_INSTALLED_STATES = frozenset(
    {"UserInstalledApp", "ManagementRejected", "PromptingForManagement"}
)


def user_installed(facts: Mapping[str, Any], identifier: str) -> bool:
    """Whether the device's copy of the app ``identifier`` is its user's own (unmanaged),
    as its facts say: an ``apps`` entry with ``source`` ``user`` (a console's import) or,
    for an entry the device reported, its last ``ManagedApplicationList`` (``managed_apps``)
    either not listing the app or listing it as the user's (:data:`USER_INSTALLED_STATES`).
    A device that never reported a ManagedApplicationList, or an entry with ``source``
    ``managed``, is not known to hold the user's copy: ``False``."""
    apps = facts.get("apps")
    if not isinstance(apps, list):
        return False
    entry = next(
        (e for e in apps if isinstance(e, dict) and e.get("identifier") == identifier), None
    )
    if entry is None:
        return False
    source = entry.get("source")
    if source in ("user", "managed"):
        return bool(source == "user")
    managed = facts.get("managed_apps")
    if not isinstance(managed, dict):
        return False
    state = managed.get(identifier)
    if state is None:
        return True
    return isinstance(state, dict) and bool(state.get("status") in USER_INSTALLED_STATES)


def reported_os_version(os_version: str | None, facts: Mapping[str, Any]) -> str | None:
    """A device's OS version: the registered one, else what it said when it enrolled."""
    if os_version:
        return os_version
    enrollment = facts.get("apple_enrollment")
    found = enrollment.get("os_version") if isinstance(enrollment, dict) else None
    return found if isinstance(found, str) and found else None


@functools.cache
def _take_over_since() -> dict[str, str | None]:
    """Per facts OS name, the first version with ``ChangeManagementState`` (``None``: every
    version), from Apple's facts for ``InstallApplication``."""
    command = apple_schema.facts().commands["InstallApplication"]
    (key,) = [k for k in command.payloadkeys if k.key == "ChangeManagementState"]
    since: dict[str, str | None] = {}
    for os_name, entry in key.supported_os.items():
        introduced = entry.get("introduced")
        if introduced != "n/a":
            since[os_name] = introduced if isinstance(introduced, str) else None
    return since


@functools.lru_cache(maxsize=4096)  # a fleet has few distinct (platform, OS version) pairs
def take_over_refusal(platform: str, os_version: str | None) -> str | None:
    """Why a device cannot take a user-installed app under management
    (``ChangeManagementState``), or ``None`` when it can. Apple's facts give iOS/iPadOS
    9.0 and macOS 11.0; a device whose OS version is unknown (or unreadable) is not
    assumed to have it."""
    try:
        os_name = apple_schema.facts_os(platform)
    except UnknownPlatform:
        os_name = None
    since = _take_over_since()
    if os_name is None or os_name not in since:
        return f"{platform} devices have no ChangeManagementState"
    first = since[os_name]
    needs = f"ChangeManagementState needs {os_name} {first} or later"
    if not os_version:
        return f"its OS version is unknown ({needs})"
    if first is None:
        return None
    try:
        newer = versions.compare(os_version, first, platform=version_platform(platform)) >= 0
    except (versions.InvalidVersion, UnknownPlatform):
        return f"its OS version {os_version!r} cannot be read ({needs})"
    return None if newer else f"it runs {os_name} {os_version} ({needs})"


def command_kind(platform: str) -> Literal["apple", "syncml"] | None:
    """The command channel of an app platform (Android has none in this gateway)."""
    return {"ios": "apple", "macos": "apple", "windows": "syncml"}.get(device_platform(platform))  # type: ignore[return-value]


class Deployment(msgspec.Struct, frozen=True):
    kind: str
    body: bytes


def deployment(
    app: App,
    version: AppVersion,
    *,
    command_id: str,
    first_install: bool,
    take_over: bool = False,
) -> Deployment:
    """The command that installs (or updates to) ``version`` of ``app``.

    Apple: ``InstallApplication`` by iTunes store id (VPP: ``PurchaseMethod`` 1) or by
    the version's manifest URL; ``take_over`` (store apps) asks for
    ``ChangeManagementState`` Managed, which takes the user's own copy under management
    and is a plain install where the app is missing: give it only for devices that have
    the key (:func:`take_over_refusal`). Windows: StoreInstall
    (user context) or HostedInstall from the version's package URL (user or device
    context), with the offline licence first only when ``first_install``.
    """
    kind = command_kind(app.platform)
    if kind == "apple":
        if app.kind == "store":
            if app.itunes_store_id is None:
                raise CatalogueRefused(
                    f"{app.id} has no itunes_store_id", "$.itunes_store_id", "incomplete_app"
                )
            try:
                command = apple_commands.install_application(
                    itunes_store_id=app.itunes_store_id,
                    purchase_method=1 if app.vpp else None,
                    change_management_state="Managed" if take_over else None,
                    command_uuid=command_id,
                    platform=app.platform,
                )
            except CommandValidationError as exc:
                # An app stored before its fields were bounded as Apple's schema bounds them.
                raise CatalogueRefused(
                    f"{app.id}: {exc.message}", "$.itunes_store_id", "invalid_apple_command"
                ) from None
        else:
            if version.manifest_url is None:
                raise CatalogueRefused(
                    f"version {version.file_version} of {app.id} has no manifest_url",
                    "$.manifest_url",
                    "incomplete_app",
                )
            try:
                command = apple_commands.install_application(
                    manifest_url=version.manifest_url,
                    command_uuid=command_id,
                    platform=app.platform,
                )
            except CommandValidationError as exc:
                raise CatalogueRefused(
                    f"version {version.file_version} of {app.id}: {exc.message}",
                    "$.manifest_url",
                    "invalid_apple_command",
                ) from None
        return Deployment("apple", command.to_plist())
    if kind == "syncml":
        return Deployment("syncml", _windows_body(app, version, first_install))
    raise CatalogueRefused(
        f"{app.platform} devices have no command channel in this gateway",
        "$.platform",
        "no_command_channel",
    )


def _windows_body(app: App, version: AppVersion, first_install: bool) -> bytes:
    deploy = app.windows
    if deploy is None:
        raise CatalogueRefused(
            f"{app.id} has no windows deployment settings", "$.windows", "incomplete_app"
        )
    scope: Literal["user", "device"] = deploy.context
    steps: list[windows_apps.AppCommand] = []
    if first_install and deploy.license_id and deploy.license_blob:
        steps.append(
            windows_apps.AddLicense(
                scope=scope, license_id=deploy.license_id, license_blob=deploy.license_blob
            )
        )
    try:
        if deploy.method == "store":
            if not deploy.product_id or not deploy.skuid:
                raise CatalogueRefused(
                    f"{app.id}: a Store install needs product_id and skuid",
                    "$.windows",
                    "incomplete_app",
                )
            steps.append(
                windows_apps.StoreInstall(
                    package_family=app.identifier,
                    product_id=deploy.product_id,
                    skuid=deploy.skuid,
                    scope="user",
                )
            )
        else:
            if version.package_url is None:
                raise CatalogueRefused(
                    f"version {version.file_version} of {app.id} has no package_url",
                    "$.package_url",
                    "incomplete_app",
                )
            steps.append(
                windows_apps.HostedInstall(
                    scope=scope, package_family=app.identifier, package_uri=version.package_url
                )
            )
        bodies = [windows_apps.expand(step) for step in steps]
    except windows_apps.AppCommandRefused as exc:
        raise CatalogueRefused(exc.message, exc.field, "invalid_windows_command") from None
    return _renumber(bodies)


def _renumber(bodies: Sequence[bytes]) -> bytes:
    # Each expansion numbers its CmdIDs from 1; the session renumbers on delivery, but a
    # stored body stays a valid command list only with each placeholder once.
    out: list[bytes] = []
    next_id = 1

    def swap(match: re.Match[bytes]) -> bytes:
        nonlocal next_id
        value = b"<CmdID>%d</CmdID>" % next_id
        next_id += 1
        return value

    for body in bodies:
        out.append(re.sub(rb"<CmdID>\d+</CmdID>", swap, body))
    return b"".join(out)
