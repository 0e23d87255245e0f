"""What the gateway stores about apps, their versions and their roll-outs.

An :class:`App` is one document (its versions, assignments, licence pool and automatic
update settings inside it), replaced as a whole with a revision check, so that two
consoles editing the same app cannot silently undo each other. Per-device licence
assignments and the notifications (roll-outs) live beside it, because they grow with the
fleet.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "App",
    "AppPlatform",
    "AppVersion",
    "AutoUpdate",
    "CommandBatch",
    "LicenceGrant",
    "Notification",
    "NotificationKind",
    "NotificationState",
    "Org",
    "VersionState",
    "WindowsDeployment",
]

#: Platforms an app is built for. iPadOS devices run ``ios`` apps.
AppPlatform = Literal["ios", "macos", "windows", "android"]
VersionState = Literal["active", "retired"]
NotificationKind = Literal["notify", "auto_update", "assignment"]
NotificationState = Literal["scheduled", "running", "done", "cancelled", "failed"]


class AppVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One uploaded (internal app) or published (store app) version."""

    #: The version that decides deployment, as the platform's source gives it (Android
    #: versionCode, CFBundleVersion/CFBundleShortVersionString, Windows Version).
    file_version: str
    #: What people see (Android versionName); the file version when the source has none.
    display_version: str | None = None
    #: The console's own managed version label.
    label: str | None = None
    state: VersionState = "active"
    #: Unix time of the upload.
    uploaded_at: float = 0.0
    #: Unix time the store published it (store apps), or the upload time.
    published_at: float = 0.0
    #: Where devices fetch it: an APK/MSIX/appx URL (Windows HostedInstall, Android).
    package_url: str | None = None
    #: Apple in-house apps: the manifest plist URL.
    manifest_url: str | None = None
    #: Org paths (sub-organisations inherit) and device ids this version is assigned to.
    assigned_orgs: tuple[str, ...] = ()
    assigned_devices: tuple[str, ...] = ()


class AutoUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """Automatic updates of a store app: a daily check at a local time."""

    enabled: bool = True
    #: Org paths; empty is the whole company.
    orgs: tuple[str, ...] = ()
    #: ``HH:MM`` in ``timezone`` (an IANA name such as ``Asia/Tokyo``).
    check_time: str = "04:00"
    timezone: str = "UTC"
    #: Unix time of the last check that ran, and the version it rolled out.
    last_check: float | None = None
    last_version: str | None = None


class WindowsDeployment(msgspec.Struct, frozen=True, kw_only=True):
    """How a Windows app reaches devices: ``store`` (StoreInstall, user context) or
    ``hosted`` (HostedInstall from the version's package URL, user or device context)."""

    method: Literal["store", "hosted"] = "hosted"
    product_id: str | None = None
    skuid: str | None = None
    #: Offline-licensed store apps: the licence sent before the first install only.
    license_id: str | None = None
    license_blob: str | None = None
    #: ``device`` provisions the app for every user (HostedInstall only).
    context: Literal["user", "device"] = "user"


class App(msgspec.Struct, frozen=True, kw_only=True):
    """A catalogue entry."""

    id: str
    name: str
    platform: AppPlatform
    kind: Literal["store", "internal"]
    #: What device inventories report: bundle id, package family name or Android package.
    identifier: str
    itunes_store_id: int | None = None
    windows: WindowsDeployment | None = None
    #: Distributed as a managed app (Apple); required for automatic updates.
    managed: bool = True
    #: A platform's built-in app: never updated automatically.
    system: bool = False
    #: VPP: licences come from the pool below; ``None`` total means VPP is not set up.
    vpp: bool = False
    licence_total: int | None = None
    versions: tuple[AppVersion, ...] = ()
    auto_update: AutoUpdate | None = None
    created_at: float = 0.0
    #: Set by the store: 1 for a new app, one more on each replacement.
    rev: int = 0


class Org(msgspec.Struct, frozen=True, kw_only=True):
    """An organisation: a node of the org tree, named by its path (``/acme/sales``)."""

    path: str
    name: str | None = None
    created_at: float = 0.0


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """An install notification (or an automatic update run): which devices, which version,
    when, and what came of it."""

    id: str
    app_id: str
    kind: NotificationKind = "notify"
    #: A file version; ``None``: the app's latest active version when it runs.
    version: str | None = None
    orgs: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    #: Every device of the app's platform (neither orgs nor devices given).
    all_devices: bool = False
    installed_only: bool = False
    #: Apple: take a user-installed copy under management (ChangeManagementState).
    take_over: bool = False
    percent: float | None = None
    seed: str = ""
    #: Commands per minute; ``None``: everything at once.
    pace_per_minute: int | None = None
    #: Unix time it is due (the next wave's time once running).
    due_at: float = 0.0
    state: NotificationState = "scheduled"
    created_at: float = 0.0
    updated_at: float = 0.0
    #: Waves so far, and the last device id (in id order) a wave reached.
    waves: int = 0
    cursor: str | None = None
    #: Devices per outcome name, summed over the waves.
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    #: The commands it queued (one per distinct command body).
    command_ids: tuple[str, ...] = ()
    #: The version it resolved to when it ran.
    resolved_version: str | None = None
    error: str | None = None
    #: Compare-and-set revision, set by the store (0: never stored).
    rev: int = 0


class CommandBatch(msgspec.Struct, frozen=True):
    """One command body queued for many devices."""

    command_id: str
    kind: str
    body: bytes
    device_ids: tuple[str, ...] | list[str]


class LicenceGrant(msgspec.Struct, frozen=True):
    """Licences of ``app_id`` to assign to ``device_ids`` (those holding one already are
    left as they are), refusing to go above ``total``."""

    app_id: str
    total: int
    device_ids: tuple[str, ...] | list[str]
