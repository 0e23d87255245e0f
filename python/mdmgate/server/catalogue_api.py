"""The admin API's catalogue resources: organisations, apps, versions, assignments,
VPP licences, automatic updates, install notifications and outcome previews.

This module holds their request and response bodies and what the two resource modules
share (:class:`CatalogueApi`: finding an app, showing one; the refusal translation); the
handlers are in :mod:`~mdmgate.server.api_apps` (orgs, apps, versions, assignments,
licences, automatic updates) and :mod:`~mdmgate.server.api_rollouts` (install notifications,
previews, a device's outcome). Same token, same error shape as the rest of the admin API;
the rules behind each resource are in :mod:`mdmgate.catalogue.rules` and ``docs/apps.md``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from mdmgate.catalogue import rules
from mdmgate.catalogue.model import App, WindowsDeployment
from mdmgate.catalogue.rules import CatalogueRefused
from mdmgate.catalogue.service import OUTCOME_NAMES, RETIRED, Catalogue
from mdmgate.server.api_base import (
    DeviceId,
    Error,
    OrgPath,
    _checked,
    _Refusal,
    _refuse,
    _unknown,
)
from mdmgate.server.routes import Handler
from mdmgate.server.types import Request, Response
from mdmgate.storage import RevisionConflict, UnknownDevices

__all__ = [
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "AppId",
    "CatalogueApi",
    "CatalogueError",
    "translating",
]

AppId = Annotated[
    str,
    Meta(
        pattern=_checked(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$"),
        description="The catalogue's id of the app (letters, digits, . _ ~ -).",
        examples=["com.acme.sales"],
    ),
]
AppPlatformIn = Literal["ios", "macos", "windows", "android"]
#: The largest count or store id a request may give: SQLite, the fleet index and a plist
#: integer hold signed 64 bits.
INT64 = 2**63 - 1
AppName = Annotated[str, Meta(min_length=1, max_length=256)]
AppIdentifier = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=512,
        description="What device inventories report: bundle id, package family name or"
        " Android package.",
    ),
]
ItunesStoreId = Annotated[int, Meta(ge=1, le=INT64)]
#: The largest revision a change may name: revisions are 32-bit in PostgreSQL, and the
#: revision after it must fit too.
REV_MAX = 2**31 - 2
#: A point in time in a request: RFC 3339 with its UTC offset, from 1970 to 9998 (UTC).
Instant = Annotated[dt.datetime, Meta(extra_json_schema={"format": "date-time"})]


# --- request bodies --------------------------------------------------------------------------


class OrgIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """An organisation. Devices and assignments name it by path; sub-organisations inherit
    what is assigned to it."""

    path: OrgPath
    name: Annotated[str, Meta(max_length=256)] | None = None


class WindowsDeploymentIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """How a Windows app is installed: `store` (StoreInstall, user context; needs
    product_id and skuid) or `hosted` (HostedInstall from each version's package_url).
    An offline licence (license_id and license_blob) goes with the first install only."""

    method: Literal["store", "hosted"] = "hosted"
    product_id: str | None = None
    skuid: str | None = None
    license_id: str | None = None
    license_blob: str | None = None
    context: Annotated[
        Literal["user", "device"],
        Meta(description="`device` provisions the app for every user (hosted, desktop)."),
    ] = "user"


class CatalogueAppIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A catalogue app. Store apps: iTunes store id (Apple), package family name and
    Store product (Windows), package (Android). Internal apps get versions uploaded."""

    id: AppId
    name: AppName
    platform: AppPlatformIn
    kind: Literal["store", "internal"]
    identifier: AppIdentifier
    itunes_store_id: ItunesStoreId | None = None
    windows: WindowsDeploymentIn | None = None
    managed: Annotated[bool, Meta(description="Distributed as a managed app.")] = True
    system: Annotated[bool, Meta(description="A platform's built-in app.")] = False
    vpp: Annotated[bool, Meta(description="Installs take a VPP licence from the pool.")] = False
    licences: (
        Annotated[
            int, Meta(ge=0, le=INT64, description="The VPP pool's total; leave out if not set up.")
        ]
        | None
    ) = None


class AppPatchIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """Changes to an app; fields left out keep their value. `rev` must be the app's
    current revision (409 otherwise: someone changed it meanwhile)."""

    rev: Annotated[int, Meta(ge=1, le=REV_MAX)]
    name: AppName | UnsetType = UNSET
    identifier: AppIdentifier | UnsetType = UNSET
    itunes_store_id: ItunesStoreId | UnsetType | None = UNSET
    windows: WindowsDeploymentIn | UnsetType | None = UNSET
    managed: bool | UnsetType = UNSET
    system: bool | UnsetType = UNSET
    vpp: bool | UnsetType = UNSET


class VersionIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A version to add: give `file_version`, or the platform's `source` it is read from
    (Android `{"version_code", "version_name"}`; iOS/macOS `{"info_plist": base64}` or
    the two CFBundle keys; Windows `{"manifest": AppxManifest text}`). Assignments of the
    active versions below it move to it; `retire_previous` retires those versions."""

    file_version: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    source: dict[str, Any] | None = None
    label: Annotated[str, Meta(max_length=128)] | None = None
    published_at: Annotated[
        Instant | None,
        Meta(description="When the store published it (RFC 3339, from 1970 to 9998); default now."),
    ] = None
    package_url: Annotated[str, Meta(max_length=2048)] | None = None
    manifest_url: Annotated[str, Meta(max_length=2048)] | None = None
    retire_previous: bool = False
    orgs: list[OrgPath] = msgspec.field(default_factory=list)
    devices: list[DeviceId] = msgspec.field(default_factory=list)


class VersionStateIn(Struct, kw_only=True, forbid_unknown_fields=True):
    state: Literal["active", "retired"]


class AssignmentsIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """Who a version is assigned to; replaces its assignments."""

    orgs: list[OrgPath] = msgspec.field(default_factory=list)
    devices: list[DeviceId] = msgspec.field(default_factory=list)


class LicencesIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """The VPP pool's total number of licences (as bought)."""

    total: Annotated[int, Meta(ge=0, le=INT64)]


class LicenceReleaseIn(Struct, kw_only=True, forbid_unknown_fields=True):
    devices: list[DeviceId]


class AutoUpdateIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """Automatic updates: a daily check at `check_time` in `timezone`; a version published
    after a check goes out at the next one. Refused (422 with `reason`) when VPP is not set
    up, the app is not managed, or it is a system app."""

    enabled: bool = True
    orgs: Annotated[
        list[OrgPath], Meta(description="Organisations; empty is the whole company.")
    ] = msgspec.field(default_factory=list)
    check_time: Annotated[str, Meta(pattern=_checked(r"^[0-2][0-9]:[0-5][0-9]$"))] = "04:00"
    timezone: Annotated[str, Meta(max_length=64, examples=["Asia/Tokyo"])] = "UTC"


class NotificationIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """An install notification: which devices (orgs with their sub-organisations, named
    devices, or all devices of the app's platform), which version (default: the latest
    active), only devices that have the app (`installed_only`), when (`at`, default now),
    a stable percentage of them, and how fast (`pace_per_minute`). With `assignments`
    each device gets the highest active version assigned to it instead."""

    version: str | None = None
    orgs: list[OrgPath] = msgspec.field(default_factory=list)
    devices: list[DeviceId] = msgspec.field(default_factory=list)
    all_devices: bool = False
    installed_only: bool = False
    take_over: Annotated[
        bool,
        Meta(
            description="Apple store apps: take a copy the user installed under management"
            " (`ChangeManagementState: Managed`, outcome `take_over`) at or below the version"
            " (one above it is `downgrade_not_allowed`), on iOS/iPadOS 9+ and macOS 11+."
            " On older devices, or of unknown OS version, such a copy is skipped"
            " (`take_over_unsupported`) and the other devices' commands go without the key."
        ),
    ] = False
    assignments: bool = False
    at: Annotated[
        Instant | None,
        Meta(description="When to start (RFC 3339, from 1970 to 9998); default now."),
    ] = None
    percent: Annotated[float, Meta(ge=0, le=100)] | None = None
    seed: Annotated[str, Meta(max_length=128)] | None = None
    pace_per_minute: Annotated[int, Meta(ge=1, le=INT64)] | None = None


class BulkNotificationIn(NotificationIn, kw_only=True, forbid_unknown_fields=True):
    """Install notifications for several apps to the same devices (the "from devices"
    flow): one notification per app."""

    apps: Annotated[list[AppId], Meta(min_length=1, max_length=100)]


class PreviewIn(NotificationIn, kw_only=True, forbid_unknown_fields=True):
    """What a notification would do now, nothing queued: counts and up to `limit`
    devices (of one `outcome` if given)."""

    limit: Annotated[int, Meta(ge=0, le=10000)] = 100
    outcome: (
        Annotated[
            str,
            Meta(
                description="List only the devices of this outcome (a name of `counts`).",
                extra_json_schema={"enum": [*OUTCOME_NAMES.values(), RETIRED]},
            ),
        ]
        | None
    ) = None


# --- response bodies -------------------------------------------------------------------------


class OrgOut(Struct):
    path: str
    name: str | None
    devices: Annotated[int, Meta(description="Devices directly in it.")]
    devices_in_subtree: int


class OrgsOut(Struct):
    orgs: list[OrgOut]


class VersionOut(Struct):
    file_version: str
    display_version: str | None
    label: str | None
    state: str
    role: Annotated[
        Literal["latest", "previous", "retired"],
        Meta(description="latest: the highest active version; previous: other active ones."),
    ]
    uploaded_at: dt.datetime
    published_at: dt.datetime
    package_url: str | None
    manifest_url: str | None
    orgs: list[str]
    devices: list[str]


class LicencesOut(Struct):
    total: int | None
    assigned: int
    free: int | None


class AutoUpdateOut(Struct):
    enabled: bool
    orgs: list[str]
    check_time: str
    timezone: str
    next_check: dt.datetime | None
    last_check: dt.datetime | None
    last_version: str | None
    refused: Annotated[
        str | None, Meta(description="Why it does not run (a reason code), if it does not.")
    ] = None


class CatalogueAppOut(Struct):
    id: str
    name: str
    platform: str
    kind: str
    identifier: str
    itunes_store_id: int | None
    windows: WindowsDeploymentIn | None
    managed: bool
    system: bool
    vpp: bool
    rev: int
    versions: list[VersionOut]
    licences: LicencesOut | None
    auto_update: AutoUpdateOut | None


class AppsOut(Struct):
    apps: list[CatalogueAppOut]


class UploadOut(Struct):
    app: CatalogueAppOut
    new: str
    latest: str
    previous: list[str]
    retired: list[str]


class NotificationOut(Struct):
    id: str
    app_id: str
    kind: str
    state: str
    version: str | None
    resolved_version: str | None
    orgs: list[str]
    devices: list[str]
    all_devices: bool
    installed_only: bool
    percent: float | None
    seed: str
    pace_per_minute: int | None
    due_at: dt.datetime
    waves: int
    counts: dict[str, int]
    command_ids: list[str]
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class NotificationsOut(Struct):
    notifications: list[NotificationOut]


class DevicePreviewOut(Struct):
    id: str
    outcome: Annotated[
        str,
        Meta(
            description="install, update, downgrade, take_over (sent); already_at_version,"
            " downgrade_not_allowed, not_installed, platform_mismatch, no_licence,"
            " outside_rollout, take_over_unsupported, retired (skipped)."
        ),
    ]
    version: str | None
    installs: Annotated[
        Literal["silent", "prompt"] | None,
        Meta(
            description="For a device sent the version: silently (supervised iOS 10+,"
            " macOS, Windows) or with a prompt the user may decline."
        ),
    ]


class LicenceNeedOut(Struct):
    free: int | None
    needed: int


class PreviewOut(Struct):
    version: Annotated[str | None, Meta(description="The version sent (null when several are).")]
    counts: dict[str, int]
    silent: int
    prompt: int
    licences: LicenceNeedOut
    devices: list[DevicePreviewOut]


class OutcomeOut(Struct):
    outcome: str
    version: str | None


class DeviceAppOut(Struct):
    device_id: str
    app_id: str
    installed: str | None
    licensed: bool
    assignment: Annotated[
        OutcomeOut, Meta(description="What the app's assignments give the device, and why.")
    ]
    latest: Annotated[
        OutcomeOut | None,
        Meta(description="What an install notification of the latest version would do."),
    ]


class CatalogueError(Error, kw_only=True):
    reason: Annotated[
        str | None,
        Meta(
            description="A stable code: vpp_not_set_up, not_managed, system_app, retired,"
            " unknown_version, duplicate_version, unknown_org, ..."
        ),
    ] = None


REQUEST_TYPES: tuple[type[Any], ...] = (
    OrgIn,
    CatalogueAppIn,
    AppPatchIn,
    VersionIn,
    VersionStateIn,
    AssignmentsIn,
    LicencesIn,
    LicenceReleaseIn,
    AutoUpdateIn,
    NotificationIn,
    BulkNotificationIn,
    PreviewIn,
)
RESPONSE_TYPES: tuple[type[Any], ...] = (
    OrgOut,
    OrgsOut,
    CatalogueAppOut,
    AppsOut,
    UploadOut,
    LicencesOut,
    AutoUpdateOut,
    NotificationOut,
    NotificationsOut,
    PreviewOut,
    DeviceAppOut,
    CatalogueError,
)


# --- conversions -----------------------------------------------------------------------------


def _time(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.UTC)


_EARLIEST = 0.0
_LATEST = dt.datetime(9999, 1, 1, tzinfo=dt.UTC).timestamp()
_INSTANT_RANGE = "from 1970-01-01 to 9998-12-31 (UTC)"


def _instant(value: dt.datetime, field: str) -> float:
    if value.tzinfo is None:
        raise _refuse(422, "a time needs its UTC offset (RFC 3339)", field)
    # Kept as Unix seconds and shown in UTC: an offset may carry a time at either end of
    # the years datetime knows out of them, and waves paced after a time near the end
    # would run past it.
    try:
        seconds = value.timestamp()
    except (OverflowError, ValueError):
        seconds = math.nan
    if not _EARLIEST <= seconds < _LATEST:
        raise _refuse(422, f"the time must be {_INSTANT_RANGE}", field)
    return seconds


def _windows(given: WindowsDeploymentIn | None) -> WindowsDeployment | None:
    return None if given is None else msgspec.convert(msgspec.to_builtins(given), WindowsDeployment)


def _windows_out(given: WindowsDeployment | None) -> WindowsDeploymentIn | None:
    if given is None:
        return None
    shown = msgspec.to_builtins(given)
    if shown.get("license_blob"):
        shown["license_blob"] = "(set)"  # a licence is a secret of the tenant
    return msgspec.convert(shown, WindowsDeploymentIn)


def _refusal(exc: CatalogueRefused, status: int = 422) -> _Refusal:
    return _Refusal(status, CatalogueError(exc.message, exc.field, reason=exc.reason))


def translating(handler: Handler) -> Handler:
    """``handler`` with the catalogue's refusals answered: a rule's refusal is 422 with its
    reason code, unknown devices 404 (listed), a revision conflict 409."""

    async def translated(request: Request, params: Mapping[str, str]) -> Response:
        try:
            return await handler(request, params)
        except CatalogueRefused as exc:
            raise _refusal(exc) from None
        except UnknownDevices as exc:
            raise _unknown(exc.device_ids, "$.devices") from None
        except RevisionConflict as exc:
            raise _refuse(409, str(exc)) from None

    return translated


def _norm(path: str) -> str:
    return "/" + "/".join(p for p in path.split("/") if p)


class CatalogueApi:
    """What the catalogue's resource handlers share: the catalogue, its store, the clock,
    and finding and showing apps."""

    def __init__(self, catalogue: Catalogue, *, now: Callable[[], float] | None = None) -> None:
        self.catalogue = catalogue
        self.store = catalogue.store
        self._now = now

    def now(self) -> float:
        """The given clock, else the catalogue's (read at each call, so a test may swap it)."""
        return self._now() if self._now is not None else self.catalogue.now()

    async def _app(self, app_id: str) -> App:
        app = await self.store.get_app(app_id)
        if app is None:
            raise _refuse(404, f"no app {app_id!r}")
        return app

    async def _check_devices(self, devices: Sequence[str], field: str) -> None:
        if not devices:
            return
        known = await self.store.get_devices(devices)
        missing = [d for d in devices if d not in known]
        if missing:
            raise _unknown(missing, field)

    async def _licences_out(self, app: App) -> LicencesOut:
        assigned = await self.catalogue.licence_count(app.id)
        free = None if app.licence_total is None else app.licence_total - assigned
        return LicencesOut(app.licence_total, assigned, free)

    def _auto_out(self, app: App) -> AutoUpdateOut:
        auto = app.auto_update
        assert auto is not None
        refused = rules.auto_update_refusal(app)
        upcoming = None
        if auto.enabled and refused is None:
            upcoming = _time(rules.next_check(auto, auto.last_check or app.created_at))
        return AutoUpdateOut(
            auto.enabled,
            list(auto.orgs),
            auto.check_time,
            auto.timezone,
            upcoming,
            None if auto.last_check is None else _time(auto.last_check),
            auto.last_version,
            None if refused is None else refused[0],
        )

    async def _app_out(self, app: App) -> CatalogueAppOut:
        latest = rules.latest_active(app)
        out_versions = [
            VersionOut(
                v.file_version,
                v.display_version,
                v.label,
                v.state,
                "retired"
                if v.state == "retired"
                else "latest"
                if latest is not None and v.file_version == latest.file_version
                else "previous",
                _time(v.uploaded_at),
                _time(v.published_at),
                v.package_url,
                v.manifest_url,
                list(v.assigned_orgs),
                list(v.assigned_devices),
            )
            for v in rules.ordered(app)
        ]
        licences = await self._licences_out(app) if app.vpp else None
        return CatalogueAppOut(
            app.id,
            app.name,
            app.platform,
            app.kind,
            app.identifier,
            app.itunes_store_id,
            _windows_out(app.windows),
            app.managed,
            app.system,
            app.vpp,
            app.rev,
            out_versions,
            licences,
            None if app.auto_update is None else self._auto_out(app),
        )
