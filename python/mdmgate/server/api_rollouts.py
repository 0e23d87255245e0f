"""The admin API's roll-outs: install notifications (one app or several), what one would do
(preview), and which version of an app a device gets and why.

Bodies and shared helpers are :mod:`~mdmgate.server.catalogue_api`'s; scheduling and waves
are :class:`~mdmgate.catalogue.service.Catalogue`'s.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from mdmgate.catalogue.model import App, Notification
from mdmgate.catalogue.service import OUTCOME_NAMES, RETIRED, Preview, device_list
from mdmgate.server.api_base import _check_content_type, _decode, _json, _refuse
from mdmgate.server.catalogue_api import (
    BulkNotificationIn,
    CatalogueApi,
    DeviceAppOut,
    DevicePreviewOut,
    LicenceNeedOut,
    NotificationIn,
    NotificationOut,
    NotificationsOut,
    OutcomeOut,
    PreviewIn,
    PreviewOut,
    _instant,
    _norm,
    _time,
    translating,
)
from mdmgate.server.routes import Operation
from mdmgate.server.types import Request, Response

__all__ = ["RolloutsApi", "operations"]


class RolloutsApi(CatalogueApi):
    """The handlers of install notifications, previews and a device's outcome."""

    async def notify(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
        _check_content_type(request)
        given = _decode(request.body, NotificationIn)
        app = await self._app(app_id)
        made = await self.catalogue.submit(self._notification(app, given))
        return _json(202, _notification_out(made))

    async def app_notifications(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
        await self._app(app_id)
        found = await self.store.list_notifications(app_id)
        return _json(200, NotificationsOut([_notification_out(n) for n in found]))

    async def show_notification(self, request: Request, params: Mapping[str, str]) -> Response:
        notification_id = params["notification_id"]
        found = await self.store.get_notification(notification_id)
        if found is None:
            raise _refuse(404, f"no install notification {notification_id!r}")
        return _json(200, _notification_out(found))

    async def cancel(self, request: Request, params: Mapping[str, str]) -> Response:
        notification_id = params["notification_id"]
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

    async def bulk_notify(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        given = _decode(request.body, BulkNotificationIn)
        apps = [await self._app(a) for a in dict.fromkeys(given.apps)]
        drafts = [self._notification(app, given) for app in apps]
        for draft in drafts:
            # Check every app before queuing anything for any.
            await self.catalogue.check(draft)
        made = [await self.catalogue.submit(d) for d in drafts]
        return _json(202, NotificationsOut([_notification_out(n) for n in made]))

    async def preview(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
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

    async def device_app(self, request: Request, params: Mapping[str, str]) -> Response:
        device_id, app_id = params["id"], params["app_id"]
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


_APP = {"app_id": "The app's catalogue id."}
_NOTIFICATION = {"notification_id": "The notification id."}


def operations(api: RolloutsApi) -> list[Operation]:
    """The roll-out operations, with their handlers."""
    return [
        Operation(
            "GET",
            "/api/v1/apps/{app_id}/install-notifications",
            translating(api.app_notifications),
            "The app's install notifications and automatic update runs.",
            ("200", "Oldest first.", "NotificationsOut"),
            ("404",),
            params=_APP,
        ),
        Operation(
            "POST",
            "/api/v1/apps/{app_id}/install-notifications",
            translating(api.notify),
            "Notify devices to install (or update to) a version: now, at a set time,"
            " for a stable percentage, in paced waves.",
            ("202", "The notification (its first wave ran if it was due).", "NotificationOut"),
            ("400", "404", "415", "422"),
            request="NotificationIn",
            params=_APP,
            not_found="UnknownDevicesError",
        ),
        Operation(
            "POST",
            "/api/v1/apps/{app_id}/preview",
            translating(api.preview),
            "What a notification would do now, per device and why; nothing is queued.",
            ("200", "Counts per outcome and sample devices.", "PreviewOut"),
            ("400", "404", "415", "422"),
            request="PreviewIn",
            params=_APP,
            not_found="UnknownDevicesError",
            # A preview changes nothing: a read token may ask for one.
            scope="read",
        ),
        Operation(
            "POST",
            "/api/v1/install-notifications",
            translating(api.bulk_notify),
            "Install notifications of several apps to the same devices.",
            ("202", "One notification per app.", "NotificationsOut"),
            ("400", "404", "415", "422"),
            request="BulkNotificationIn",
            not_found="UnknownDevicesError",
        ),
        Operation(
            "GET",
            "/api/v1/install-notifications/{notification_id}",
            translating(api.show_notification),
            "A notification: state, waves, counts per outcome, commands.",
            ("200", "The notification.", "NotificationOut"),
            ("404",),
            params=_NOTIFICATION,
        ),
        Operation(
            "DELETE",
            "/api/v1/install-notifications/{notification_id}",
            translating(api.cancel),
            "Cancel a scheduled or running notification (queued commands stay queued); a"
            " wave running meanwhile queues nothing more. 409 when it is done, failed or"
            " cancelled already, or its last wave finished first.",
            ("200", "The cancelled notification.", "NotificationOut"),
            ("404", "409"),
            params=_NOTIFICATION,
        ),
        Operation(
            "GET",
            "/api/v1/devices/{id}/apps/{app_id}",
            translating(api.device_app),
            "Which version of the app a device gets, and why not another.",
            ("200", "The device's outcome.", "DeviceAppOut"),
            ("404",),
            params={"id": "The device id (percent-encoded).", **_APP},
        ),
    ]
