"""The admin API's catalogue resources: organisations, apps, versions, assignments,
VPP licences, automatic updates, install notifications and outcome previews.

Mounted by :class:`~mdmgate.server.admin.AdminApi` (same token, same error shape); the
rules behind each resource are in :mod:`mdmgate.catalogue.rules` and ``docs/apps.md``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from mdmgate.catalogue import rules
from mdmgate.catalogue.model import (
    App,
    AppVersion,
    AutoUpdate,
    Notification,
    Org,
    WindowsDeployment,
)
from mdmgate.catalogue.rules import CatalogueRefused
from mdmgate.catalogue.service import OUTCOME_NAMES, RETIRED, Catalogue, Preview, device_list
from mdmgate.server.api_base import (
    DeviceId,
    Error,
    OrgPath,
    _check_content_type,
    _decode,
    _json,
    _operation,
    _Refusal,
    _refuse,
    _unknown,
)
from mdmgate.server.types import Request, Response
from mdmgate.storage import RevisionConflict, UnknownDevices

__all__ = ["CatalogueApi", "openapi_paths"]

AppId = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$",
        description="The catalogue's id of the app (letters, digits, . _ ~ -).",
        examples=["com.acme.sales"],
    ),
]
AppPlatformIn = Literal["ios", "macos", "windows", "android"]


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
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    platform: AppPlatformIn
    kind: Literal["store", "internal"]
    identifier: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=512,
            description="What device inventories report: bundle id, package family name or"
            " Android package.",
        ),
    ]
    itunes_store_id: Annotated[int, Meta(ge=1)] | None = None
    windows: WindowsDeploymentIn | None = None
    managed: Annotated[bool, Meta(description="Distributed as a managed app.")] = True
    system: Annotated[bool, Meta(description="A platform's built-in app.")] = False
    vpp: Annotated[bool, Meta(description="Installs take a VPP licence from the pool.")] = False
    licences: (
        Annotated[int, Meta(ge=0, description="The VPP pool's total; leave out if not set up.")]
        | None
    ) = None


class AppPatchIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """Changes to an app; fields left out keep their value. `rev` must be the app's
    current revision (409 otherwise: someone changed it meanwhile)."""

    rev: int
    name: str | UnsetType = UNSET
    identifier: str | UnsetType = UNSET
    itunes_store_id: int | UnsetType | None = UNSET
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
        dt.datetime | None,
        Meta(description="When the store published it (RFC 3339 with offset); default now."),
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

    total: Annotated[int, Meta(ge=0)]


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
    check_time: Annotated[str, Meta(pattern=r"^[0-2][0-9]:[0-5][0-9]$")] = "04:00"
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
    at: dt.datetime | None = None
    percent: Annotated[float, Meta(ge=0, le=100)] | None = None
    seed: Annotated[str, Meta(max_length=128)] | None = None
    pace_per_minute: Annotated[int, Meta(ge=1)] | None = None


class BulkNotificationIn(NotificationIn, kw_only=True, forbid_unknown_fields=True):
    """Install notifications for several apps to the same devices (the "from devices"
    flow): one notification per app."""

    apps: Annotated[list[AppId], Meta(min_length=1, max_length=100)]


class PreviewIn(NotificationIn, kw_only=True, forbid_unknown_fields=True):
    """What a notification would do now, nothing queued: counts and up to `limit`
    devices (of one `outcome` if given)."""

    limit: Annotated[int, Meta(ge=0, le=10000)] = 100
    outcome: Annotated[
        str | None,
        Meta(description="List only the devices of this outcome (a name of `counts`)."),
    ] = None


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


def _instant(value: dt.datetime, field: str) -> float:
    if value.tzinfo is None:
        raise _refuse(422, "a time needs its UTC offset (RFC 3339)", field)
    return value.timestamp()


def _windows(given: WindowsDeploymentIn | None) -> WindowsDeployment | None:
    return None if given is None else msgspec.convert(msgspec.to_builtins(given), WindowsDeployment)


def _windows_out(given: WindowsDeployment | None) -> WindowsDeploymentIn | None:
    if given is None:
        return None
    shown = msgspec.to_builtins(given)
    if shown.get("license_blob"):
        shown["license_blob"] = "(set)"  # a licence is a secret of the tenant
    return msgspec.convert(shown, WindowsDeploymentIn)


_Handler = Callable[..., Awaitable[Response]]


def _refusal(exc: CatalogueRefused, status: int = 422) -> _Refusal:
    return _Refusal(status, CatalogueError(exc.message, exc.field, reason=exc.reason))


class CatalogueApi:
    """Routes for the catalogue resources; see the module documentation."""

    def __init__(self, catalogue: Catalogue, *, now: Callable[[], float] | None = None) -> None:
        self.catalogue = catalogue
        self.store = catalogue.store
        self.now = now if now is not None else catalogue.now
        self._table = self._routes()

    async def route(
        self, request: Request, parts: list[str], allow: Callable[..., None]
    ) -> Response | None:
        """The response for a catalogue path, or ``None`` when the path is not one."""
        try:
            return await self._route(request, parts, allow)
        except CatalogueRefused as exc:
            raise _refusal(exc) from None
        except UnknownDevices as exc:
            raise _unknown(exc.device_ids, "$.devices") from None
        except RevisionConflict as exc:
            raise _refuse(409, str(exc)) from None

    def _routes(self) -> list[tuple[tuple[str | None, ...], dict[str, _Handler]]]:
        # None in a pattern matches any non-empty segment, passed to the handler in order.
        return [
            (("orgs",), {"GET": self._orgs, "POST": self._put_org}),
            (("apps",), {"GET": self._apps, "POST": self._create_app}),
            (("apps", None), {"GET": self._get_app, "PATCH": self._patch_app}),
            (("apps", None, "versions"), {"POST": self._upload}),
            (("apps", None, "versions", None), {"PATCH": self._version_state}),
            (("apps", None, "versions", None, "assignments"), {"PUT": self._assign}),
            (("apps", None, "licences"), {"GET": self._get_licences, "PUT": self._set_licences}),
            (("apps", None, "licences", "release"), {"POST": self._release}),
            (
                ("apps", None, "auto-update"),
                {"GET": self._get_auto_update, "PUT": self._set_auto_update},
            ),
            (
                ("apps", None, "install-notifications"),
                {"GET": self._app_notifications, "POST": self._notify},
            ),
            (("apps", None, "preview"), {"POST": self._preview}),
            (("install-notifications",), {"POST": self._bulk_notify}),
            (
                ("install-notifications", None),
                {"GET": self._get_notification, "DELETE": self._cancel},
            ),
            (("devices", None, "apps", None), {"GET": self._device_app}),
        ]

    async def _route(
        self, request: Request, parts: list[str], allow: Callable[..., None]
    ) -> Response | None:
        for pattern, methods in self._table:
            if len(pattern) != len(parts):
                continue
            if all(
                p == part if p is not None else bool(part)
                for p, part in zip(pattern, parts, strict=True)
            ):
                allow(*methods)
                args = [part for p, part in zip(pattern, parts, strict=True) if p is None]
                return await methods[request.method.upper()](request, *args)
        return None

    async def _apps(self, request: Request) -> Response:
        apps = await self.store.list_apps()
        return _json(200, AppsOut([await self._app_out(a) for a in apps]))

    async def _get_app(self, request: Request, app_id: str) -> Response:
        return _json(200, await self._app_out(await self._app(app_id)))

    async def _get_licences(self, request: Request, app_id: str) -> Response:
        return _json(200, await self._licences_out(await self._app(app_id)))

    async def _get_auto_update(self, request: Request, app_id: str) -> Response:
        app = await self._app(app_id)
        if app.auto_update is None:
            raise _refuse(404, f"{app_id} has no automatic updates configured")
        return _json(200, self._auto_out(app))

    async def _notify(self, request: Request, app_id: str) -> Response:
        _check_content_type(request)
        given = _decode(request.body, NotificationIn)
        app = await self._app(app_id)
        made = await self.catalogue.submit(self._notification(app, given))
        return _json(202, _notification_out(made))

    async def _app_notifications(self, request: Request, app_id: str) -> Response:
        await self._app(app_id)
        found = await self.store.list_notifications(app_id)
        return _json(200, NotificationsOut([_notification_out(n) for n in found]))

    async def _get_notification(self, request: Request, notification_id: str) -> Response:
        found = await self.store.get_notification(notification_id)
        if found is None:
            raise _refuse(404, f"no install notification {notification_id!r}")
        return _json(200, _notification_out(found))

    async def _cancel(self, request: Request, notification_id: str) -> Response:
        found = await self.store.get_notification(notification_id)
        if found is None:
            raise _refuse(404, f"no install notification {notification_id!r}")
        if found.state not in ("scheduled", "running"):
            raise _refuse(409, f"the notification is {found.state} already")
        # A wave running meanwhile (on any node) does not undo the cancel: it is retried at
        # the new revision. Only a wave that was the last one makes it a conflict.
        cancelled = await self.catalogue.cancel(notification_id)
        if cancelled is None:
            raise _refuse(404, f"no install notification {notification_id!r}")
        if cancelled.state != "cancelled":
            raise _refuse(409, f"the notification is {cancelled.state} already")
        return _json(200, _notification_out(cancelled))

    # --- orgs ---------------------------------------------------------------------------------

    async def _put_org(self, request: Request) -> Response:
        _check_content_type(request)
        given = _decode(request.body, OrgIn)
        await self.store.put_org(
            Org(path=_norm(given.path), name=given.name, created_at=self.now())
        )
        return _json(201, await self._org_out(_norm(given.path)))

    async def _orgs(self, request: Request | None = None) -> Response:
        return _json(200, OrgsOut(await self._org_list()))

    async def _org_list(self) -> list[OrgOut]:
        fleet = await self.catalogue.fleet()
        names = {o.path: o.name for o in await self.store.list_orgs()}
        direct = [0] * len(fleet.tree)
        for org in fleet.orgs:
            direct[org] += 1
        out = []
        for org in range(len(fleet.tree)):
            path = fleet.tree.path(org)
            first, last = fleet.tree.range(path)
            out.append(OrgOut(path, names.get(path), direct[org], sum(direct[first : last + 1])))
        return out

    async def _org_out(self, path: str) -> OrgOut:
        for org in await self._org_list():
            if org.path == path:
                return org
        raise _refuse(404, f"no organisation {path!r}")

    # --- apps ---------------------------------------------------------------------------------

    async def _app(self, app_id: str) -> App:
        app = await self.store.get_app(app_id)
        if app is None:
            raise _refuse(404, f"no app {app_id!r}")
        return app

    async def _create_app(self, request: Request) -> Response:
        _check_content_type(request)
        given = _decode(request.body, CatalogueAppIn)
        app = App(
            id=given.id,
            name=given.name,
            platform=given.platform,
            kind=given.kind,
            identifier=given.identifier,
            itunes_store_id=given.itunes_store_id,
            windows=_windows(given.windows),
            managed=given.managed,
            system=given.system,
            vpp=given.vpp,
            licence_total=given.licences,
            created_at=self.now(),
        )
        _check_app(app)
        stored = await self.store.put_app(app, expected_rev=None)
        self.catalogue.wake()
        return _json(201, await self._app_out(stored))

    async def _patch_app(self, request: Request, app_id: str) -> Response:
        _check_content_type(request)
        given = _decode(request.body, AppPatchIn)
        app = await self._app(app_id)
        changes: dict[str, Any] = {
            name: getattr(given, name)
            for name in ("name", "identifier", "itunes_store_id", "managed", "system", "vpp")
            if getattr(given, name) is not UNSET
        }
        if given.windows is not UNSET:
            changes["windows"] = _windows(given.windows)
        updated = msgspec.structs.replace(app, **changes)
        _check_app(updated)
        stored = await self.store.put_app(updated, expected_rev=given.rev)
        self.catalogue.wake()
        return _json(200, await self._app_out(stored))

    async def _upload(self, request: Request, app_id: str) -> Response:
        _check_content_type(request)
        given = _decode(request.body, VersionIn)
        app = await self._app(app_id)
        if (given.file_version is None) == (given.source is None):
            raise _refuse(422, "give exactly one of file_version and source", "$.file_version")
        if given.source is not None:
            file_version, shown = rules.file_version_from_source(app.platform, given.source)
        else:
            assert given.file_version is not None
            file_version, shown = given.file_version, given.file_version
            rules.check_file_version(file_version, app.platform)
        now = self.now()
        published = (
            now if given.published_at is None else _instant(given.published_at, "$.published_at")
        )
        new = AppVersion(
            file_version=file_version,
            display_version=shown,
            label=given.label,
            uploaded_at=now,
            published_at=published,
            package_url=given.package_url,
            manifest_url=given.manifest_url,
            assigned_orgs=tuple(_norm(o) for o in given.orgs),
            assigned_devices=tuple(dict.fromkeys(given.devices)),
        )
        await self._check_devices(new.assigned_devices, "$.devices")
        done = rules.upload(app, new, retire_previous=given.retire_previous)
        stored = await self.store.put_app(done.app, expected_rev=app.rev)
        self.catalogue.wake()
        return _json(
            201,
            UploadOut(
                await self._app_out(stored),
                file_version,
                done.latest,
                list(done.previous),
                list(done.retired),
            ),
        )

    async def _version_state(self, request: Request, app_id: str, wanted: str) -> Response:
        _check_content_type(request)
        given = _decode(request.body, VersionStateIn)
        app = await self._app(app_id)
        version = rules.find_version(app, wanted)
        if version is None:
            raise _refuse(404, f"{app_id} has no version {wanted}")
        updated = _replace_version(app, version, state=given.state)
        stored = await self.store.put_app(updated, expected_rev=app.rev)
        return _json(200, await self._app_out(stored))

    async def _assign(self, request: Request, app_id: str, wanted: str) -> Response:
        _check_content_type(request)
        given = _decode(request.body, AssignmentsIn)
        app = await self._app(app_id)
        version = rules.find_version(app, wanted)
        if version is None:
            raise _refuse(404, f"{app_id} has no version {wanted}")
        devices = tuple(dict.fromkeys(given.devices))
        await self._check_devices(devices, "$.devices")
        updated = _replace_version(
            app,
            version,
            assigned_orgs=tuple(dict.fromkeys(_norm(o) for o in given.orgs)),
            assigned_devices=devices,
        )
        stored = await self.store.put_app(updated, expected_rev=app.rev)
        return _json(200, await self._app_out(stored))

    async def _check_devices(self, devices: Sequence[str], field: str) -> None:
        if not devices:
            return
        known = await self.store.get_devices(devices)
        missing = [d for d in devices if d not in known]
        if missing:
            raise _unknown(missing, field)

    # --- licences -----------------------------------------------------------------------------

    async def _set_licences(self, request: Request, app_id: str) -> Response:
        _check_content_type(request)
        given = _decode(request.body, LicencesIn)
        app = await self._app(app_id)
        if not app.vpp:
            raise _refusal(
                CatalogueRefused(f"{app_id} is not a VPP app (set vpp first)", "$.total", "not_vpp")
            )
        assigned = await self.catalogue.licence_count(app_id)
        if given.total < assigned:
            raise _refusal(
                CatalogueRefused(
                    f"{assigned} licences are assigned; release some before lowering the"
                    f" total to {given.total}",
                    "$.total",
                    "licences_in_use",
                )
            )
        stored = await self.store.put_app(
            msgspec.structs.replace(app, licence_total=given.total), expected_rev=app.rev
        )
        self.catalogue.wake()
        return _json(200, await self._licences_out(stored))

    async def _release(self, request: Request, app_id: str) -> Response:
        _check_content_type(request)
        given = _decode(request.body, LicenceReleaseIn)
        app = await self._app(app_id)
        await self.store.release_licences(app_id, given.devices)
        return _json(200, await self._licences_out(app))

    async def _licences_out(self, app: App) -> LicencesOut:
        assigned = await self.catalogue.licence_count(app.id)
        free = None if app.licence_total is None else app.licence_total - assigned
        return LicencesOut(app.licence_total, assigned, free)

    # --- automatic updates --------------------------------------------------------------------

    async def _set_auto_update(self, request: Request, app_id: str) -> Response:
        _check_content_type(request)
        given = _decode(request.body, AutoUpdateIn)
        app = await self._app(app_id)
        if given.enabled:
            refused = rules.auto_update_refusal(app)
            if refused is not None:
                reason, message = refused
                raise _refusal(CatalogueRefused(message, None, reason))
        rules.check_clock(given.check_time)
        rules.next_check(AutoUpdate(check_time=given.check_time, timezone=given.timezone), 0.0)
        fleet = await self.catalogue.fleet()
        unknown = [o for o in given.orgs if o not in fleet.tree]
        if unknown:
            raise _refusal(
                CatalogueRefused(
                    f"unknown organisation(s): {', '.join(unknown)}", "$.orgs", "unknown_org"
                )
            )
        old = app.auto_update
        auto = AutoUpdate(
            enabled=given.enabled,
            orgs=tuple(_norm(o) for o in given.orgs),
            check_time=given.check_time,
            timezone=given.timezone,
            # Enabling starts from now: versions published earlier go out at the next check.
            last_check=old.last_check if old is not None and old.last_check else self.now(),
            last_version=old.last_version if old is not None else None,
        )
        stored = await self.store.put_app(
            msgspec.structs.replace(app, auto_update=auto), expected_rev=app.rev
        )
        self.catalogue.wake()
        return _json(200, self._auto_out(stored))

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

    # --- notifications ------------------------------------------------------------------------

    def _notification(self, app: App, given: NotificationIn) -> Notification:
        targets = sum((bool(given.orgs or given.devices), given.all_devices))
        if targets != 1 and not given.assignments:
            raise _refuse(
                422, "name orgs and/or devices, or set all_devices (one of the two)", "$.orgs"
            )
        if given.take_over and (app.platform not in ("ios", "macos") or app.kind != "store"):
            raise _refuse(422, "take_over is for Apple store apps", "$.take_over")
        if given.assignments and given.version is not None:
            raise _refuse(422, "assignments decide the version; leave version out", "$.version")
        now = self.now()
        due = now if given.at is None else _instant(given.at, "$.at")
        return Notification(
            id=uuid.uuid4().hex,
            app_id=app.id,
            kind="assignment" if given.assignments else "notify",
            version=given.version,
            orgs=tuple(dict.fromkeys(_norm(o) for o in given.orgs)),
            devices=tuple(dict.fromkeys(given.devices)),
            all_devices=given.all_devices,
            installed_only=given.installed_only,
            take_over=given.take_over,
            percent=given.percent,
            seed=given.seed or "",
            pace_per_minute=given.pace_per_minute,
            due_at=due,
            created_at=now,
            updated_at=now,
        )

    async def _bulk_notify(self, request: Request) -> Response:
        _check_content_type(request)
        given = _decode(request.body, BulkNotificationIn)
        apps = [await self._app(a) for a in dict.fromkeys(given.apps)]
        drafts = [self._notification(app, given) for app in apps]
        for draft in drafts:
            # Check every app before queuing anything for any.
            await self.catalogue.check(draft)
        made = [await self.catalogue.submit(d) for d in drafts]
        return _json(202, NotificationsOut([_notification_out(n) for n in made]))

    async def _preview(self, request: Request, app_id: str) -> Response:
        _check_content_type(request)
        given = _decode(request.body, PreviewIn)
        known = [*OUTCOME_NAMES.values(), RETIRED]
        if given.outcome is not None and given.outcome not in known:
            raise _refuse(
                422, f"outcome {given.outcome!r} is not one of {', '.join(known)}", "$.outcome"
            )
        app = await self._app(app_id)
        notification = self._notification(app, given)
        preview = await self.catalogue.evaluate(app, notification)
        return _json(
            200,
            _preview_out(preview, device_list(preview, limit=given.limit, outcome=given.outcome)),
        )

    async def _device_app(self, request: Request, device_id: str, app_id: str) -> Response:
        app = await self._app(app_id)
        device = await self.store.get_device(device_id)
        if device is None:
            raise _refuse(404, f"no device {device_id!r}")
        outcomes = await self.catalogue.device_outcomes(app, device_id)
        installed = None
        for entry in device.facts.get("apps", []) or []:
            if isinstance(entry, dict) and entry.get("identifier") == app.identifier:
                value = entry.get("version")
                installed = value if isinstance(value, str) else None
        holders = await self.store.licence_holders(app.id)
        by_source = {source: OutcomeOut(outcome, version) for source, outcome, version in outcomes}
        return _json(
            200,
            DeviceAppOut(
                device_id,
                app.id,
                installed,
                device_id in holders,
                by_source["assignment"],
                by_source.get("latest"),
            ),
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


def _norm(path: str) -> str:
    return "/" + "/".join(p for p in path.split("/") if p)


def _check_app(app: App) -> None:
    if app.platform in ("ios", "macos") and app.kind == "store" and app.itunes_store_id is None:
        raise _refuse(422, "an Apple store app needs itunes_store_id", "$.itunes_store_id")
    if app.platform == "windows" and app.windows is None:
        raise _refuse(422, "a Windows app needs its windows deployment settings", "$.windows")
    if app.platform != "windows" and app.windows is not None:
        raise _refuse(422, "windows settings are for Windows apps", "$.windows")
    if app.platform not in {"ios", "macos"} and app.itunes_store_id is not None:
        raise _refuse(422, "itunes_store_id is for Apple apps", "$.itunes_store_id")
    if app.vpp and app.platform not in ("ios", "macos"):
        raise _refuse(422, "VPP licences are for Apple apps", "$.vpp")


def _replace_version(app: App, version: AppVersion, **changes: Any) -> App:
    return msgspec.structs.replace(
        app,
        versions=tuple(
            msgspec.structs.replace(v, **changes) if v is version else v for v in app.versions
        ),
    )


def _notification_out(n: Notification) -> NotificationOut:
    return NotificationOut(
        n.id,
        n.app_id,
        n.kind,
        n.state,
        n.version,
        n.resolved_version,
        list(n.orgs),
        list(n.devices),
        n.all_devices,
        n.installed_only,
        n.percent,
        n.seed,
        n.pace_per_minute,
        _time(n.due_at),
        n.waves,
        dict(n.counts),
        list(n.command_ids),
        n.error,
        _time(n.created_at),
        _time(n.updated_at),
    )


def _preview_out(preview: Preview, devices: Sequence[Any]) -> PreviewOut:
    return PreviewOut(
        preview.version,
        preview.counts,
        preview.silent,
        preview.prompt,
        LicenceNeedOut(preview.licences_free, preview.licences_needed),
        [DevicePreviewOut(d.id, d.outcome, d.version, d.installs) for d in devices],
    )


_PATH_PARAMETERS = {
    "app_id": "The app's catalogue id.",
    "version": "A file version of the app.",
    "id": "The device id (percent-encoded).",
    "notification_id": "The notification id.",
}


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI path items of the catalogue resources, every path parameter declared."""
    paths = _paths()
    for path, item in paths.items():
        for operation in item.values():
            declared = {p["name"] for p in operation.get("parameters", [])}
            for name in re.findall(r"\{(\w+)\}", path):
                if name not in declared:
                    operation.setdefault("parameters", []).append(
                        {
                            "name": name,
                            "in": "path",
                            "required": True,
                            "description": _PATH_PARAMETERS[name],
                            "schema": {"type": "string"},
                        }
                    )
    return paths


def _paths() -> dict[str, Any]:
    app = ("app_id", "The app's catalogue id.")
    return {
        "/api/v1/orgs": {
            "get": _operation(
                "Organisations (created, or named by devices), with device counts.",
                ("200", "The org tree in pre-order.", "OrgsOut"),
                (),
            ),
            "post": _operation(
                "Create or rename an organisation.",
                ("201", "The organisation.", "OrgOut"),
                ("400", "415", "422"),
                request="OrgIn",
            ),
        },
        "/api/v1/apps": {
            "get": _operation("The app catalogue.", ("200", "Every app.", "AppsOut"), ()),
            "post": _operation(
                "Add an app to the catalogue.",
                ("201", "The app.", "CatalogueAppOut"),
                ("400", "409", "415", "422"),
                request="CatalogueAppIn",
            ),
        },
        "/api/v1/apps/{app_id}": {
            "get": _operation(
                "An app, its versions with their roles and assignments, its licences and"
                " automatic updates.",
                ("200", "The app.", "CatalogueAppOut"),
                ("404",),
                parameter=app,
            ),
            "patch": _operation(
                "Change an app (with its current rev).",
                ("200", "The app.", "CatalogueAppOut"),
                ("400", "404", "409", "415", "422"),
                request="AppPatchIn",
                parameter=app,
            ),
        },
        "/api/v1/apps/{app_id}/versions": {
            "post": _operation(
                "Add a version (file version given or read from the package's source);"
                " assignments of lower active versions move to it.",
                ("201", "The app after the upload, and the versions' roles.", "UploadOut"),
                ("400", "404", "409", "415", "422"),
                request="VersionIn",
                parameter=app,
            )
        },
        "/api/v1/apps/{app_id}/versions/{version}": {
            "patch": _operation(
                "Retire or reactivate a version.",
                ("200", "The app.", "CatalogueAppOut"),
                ("400", "404", "409", "415", "422"),
                request="VersionStateIn",
                parameter=app,
            )
        },
        "/api/v1/apps/{app_id}/versions/{version}/assignments": {
            "put": _operation(
                "Replace who a version is assigned to (orgs inherit to sub-organisations).",
                ("200", "The app.", "CatalogueAppOut"),
                ("400", "404", "409", "415", "422"),
                request="AssignmentsIn",
                parameter=app,
            )
        },
        "/api/v1/apps/{app_id}/licences": {
            "get": _operation(
                "The VPP licence pool: total, assigned, free.",
                ("200", "The pool.", "LicencesOut"),
                ("404",),
                parameter=app,
            ),
            "put": _operation(
                "Set the pool's total.",
                ("200", "The pool.", "LicencesOut"),
                ("400", "404", "409", "415", "422"),
                request="LicencesIn",
                parameter=app,
            ),
        },
        "/api/v1/apps/{app_id}/licences/release": {
            "post": _operation(
                "Return devices' licences to the pool.",
                ("200", "The pool.", "LicencesOut"),
                ("400", "404", "415", "422"),
                request="LicenceReleaseIn",
                parameter=app,
            )
        },
        "/api/v1/apps/{app_id}/auto-update": {
            "get": _operation(
                "Automatic update settings and the next check.",
                ("200", "The settings.", "AutoUpdateOut"),
                ("404",),
                parameter=app,
            ),
            "put": _operation(
                "Configure automatic updates (refused with a reason code when VPP is not set"
                " up, the app is not managed, or it is a system app).",
                ("200", "The settings.", "AutoUpdateOut"),
                ("400", "404", "409", "415", "422"),
                request="AutoUpdateIn",
                parameter=app,
            ),
        },
        "/api/v1/apps/{app_id}/install-notifications": {
            "get": _operation(
                "The app's install notifications and automatic update runs.",
                ("200", "Oldest first.", "NotificationsOut"),
                ("404",),
                parameter=app,
            ),
            "post": _operation(
                "Notify devices to install (or update to) a version: now, at a set time,"
                " for a stable percentage, in paced waves.",
                ("202", "The notification (its first wave ran if it was due).", "NotificationOut"),
                ("400", "404", "415", "422"),
                request="NotificationIn",
                parameter=app,
                not_found="UnknownDevicesError",
            ),
        },
        "/api/v1/apps/{app_id}/preview": {
            "post": _operation(
                "What a notification would do now, per device and why; nothing is queued.",
                ("200", "Counts per outcome and sample devices.", "PreviewOut"),
                ("400", "404", "415", "422"),
                request="PreviewIn",
                parameter=app,
                not_found="UnknownDevicesError",
            )
        },
        "/api/v1/install-notifications": {
            "post": _operation(
                "Install notifications of several apps to the same devices.",
                ("202", "One notification per app.", "NotificationsOut"),
                ("400", "404", "415", "422"),
                request="BulkNotificationIn",
                not_found="UnknownDevicesError",
            )
        },
        "/api/v1/install-notifications/{notification_id}": {
            "get": _operation(
                "A notification: state, waves, counts per outcome, commands.",
                ("200", "The notification.", "NotificationOut"),
                ("404",),
                parameter=("notification_id", "The notification id."),
            ),
            "delete": _operation(
                "Cancel a scheduled or running notification (queued commands stay queued); a"
                " wave running meanwhile queues nothing more. 409 when it is done, failed or"
                " cancelled already, or its last wave finished first.",
                ("200", "The cancelled notification.", "NotificationOut"),
                ("404", "409"),
                parameter=("notification_id", "The notification id."),
            ),
        },
        "/api/v1/devices/{id}/apps/{app_id}": {
            "get": _operation(
                "Which version of the app a device gets, and why not another.",
                ("200", "The device's outcome.", "DeviceAppOut"),
                ("404",),
                parameter=("id", "The device id (percent-encoded)."),
            )
        },
    }
