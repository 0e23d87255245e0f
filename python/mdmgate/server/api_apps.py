"""The admin API's organisations and apps: the org tree, the app catalogue, versions and
their assignments, VPP licence pools and automatic updates.

Bodies and shared helpers are :mod:`~mdmgate.server.catalogue_api`'s; the rules are
:mod:`mdmgate.catalogue.rules`'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec import UNSET

from mdmgate.catalogue import rules
from mdmgate.catalogue.model import App, AppVersion, AutoUpdate, Org
from mdmgate.catalogue.rules import CatalogueRefused
from mdmgate.server.api_base import _check_content_type, _decode, _json, _refuse
from mdmgate.server.catalogue_api import (
    AppPatchIn,
    AppsOut,
    AssignmentsIn,
    AutoUpdateIn,
    CatalogueApi,
    CatalogueAppIn,
    LicenceReleaseIn,
    LicencesIn,
    OrgIn,
    OrgOut,
    OrgsOut,
    UploadOut,
    VersionIn,
    VersionStateIn,
    _instant,
    _norm,
    _refusal,
    _windows,
    translating,
)
from mdmgate.server.routes import Operation
from mdmgate.server.types import Request, Response

__all__ = ["AppsApi", "operations"]


class AppsApi(CatalogueApi):
    """The handlers of ``/api/v1/orgs`` and ``/api/v1/apps[/...]`` (but previews and
    install notifications)."""

    async def list_apps(self, request: Request, params: Mapping[str, str]) -> Response:
        apps = await self.store.list_apps()
        return _json(200, AppsOut([await self._app_out(a) for a in apps]))

    async def show_app(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
        return _json(200, await self._app_out(await self._app(app_id)))

    async def show_licences(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
        return _json(200, await self._licences_out(await self._app(app_id)))

    async def show_auto_update(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
        app = await self._app(app_id)
        if app.auto_update is None:
            raise _refuse(404, f"{app_id} has no automatic updates configured")
        return _json(200, self._auto_out(app))

    # --- orgs ---------------------------------------------------------------------------------

    async def put_org(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        given = _decode(request.body, OrgIn)
        await self.store.put_org(
            Org(path=_norm(given.path), name=given.name, created_at=self.now())
        )
        return _json(201, await self._org_out(_norm(given.path)))

    async def list_orgs(self, request: Request, params: Mapping[str, str]) -> Response:
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

    async def create_app(self, request: Request, params: Mapping[str, str]) -> Response:
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

    async def patch_app(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
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

    async def upload(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
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

    async def version_state(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id, wanted = params["app_id"], params["version"]
        _check_content_type(request)
        given = _decode(request.body, VersionStateIn)
        app = await self._app(app_id)
        version = rules.find_version(app, wanted)
        if version is None:
            raise _refuse(404, f"{app_id} has no version {wanted}")
        updated = _replace_version(app, version, state=given.state)
        stored = await self.store.put_app(updated, expected_rev=app.rev)
        return _json(200, await self._app_out(stored))

    async def assign(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id, wanted = params["app_id"], params["version"]
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

    # --- licences -----------------------------------------------------------------------------

    async def set_licences(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
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

    async def release(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
        _check_content_type(request)
        given = _decode(request.body, LicenceReleaseIn)
        app = await self._app(app_id)
        await self.store.release_licences(app_id, given.devices)
        return _json(200, await self._licences_out(app))

    # --- automatic updates --------------------------------------------------------------------

    async def set_auto_update(self, request: Request, params: Mapping[str, str]) -> Response:
        app_id = params["app_id"]
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


_APP = {"app_id": "The app's catalogue id."}
_VERSION = {**_APP, "version": "A file version of the app."}


def operations(api: AppsApi) -> list[Operation]:
    """The org and app operations, with their handlers."""
    return [
        Operation(
            "GET",
            "/api/v1/orgs",
            translating(api.list_orgs),
            "Organisations (created, or named by devices), with device counts.",
            ("200", "The org tree in pre-order.", "OrgsOut"),
        ),
        Operation(
            "POST",
            "/api/v1/orgs",
            translating(api.put_org),
            "Create or rename an organisation.",
            ("201", "The organisation.", "OrgOut"),
            ("400", "415", "422"),
            request="OrgIn",
        ),
        Operation(
            "GET",
            "/api/v1/apps",
            translating(api.list_apps),
            "The app catalogue.",
            ("200", "Every app.", "AppsOut"),
        ),
        Operation(
            "POST",
            "/api/v1/apps",
            translating(api.create_app),
            "Add an app to the catalogue.",
            ("201", "The app.", "CatalogueAppOut"),
            ("400", "409", "415", "422"),
            request="CatalogueAppIn",
        ),
        Operation(
            "GET",
            "/api/v1/apps/{app_id}",
            translating(api.show_app),
            "An app, its versions with their roles and assignments, its licences and"
            " automatic updates.",
            ("200", "The app.", "CatalogueAppOut"),
            ("404",),
            params=_APP,
        ),
        Operation(
            "PATCH",
            "/api/v1/apps/{app_id}",
            translating(api.patch_app),
            "Change an app (with its current rev).",
            ("200", "The app.", "CatalogueAppOut"),
            ("400", "404", "409", "415", "422"),
            request="AppPatchIn",
            params=_APP,
        ),
        Operation(
            "POST",
            "/api/v1/apps/{app_id}/versions",
            translating(api.upload),
            "Add a version (file version given or read from the package's source);"
            " assignments of lower active versions move to it.",
            ("201", "The app after the upload, and the versions' roles.", "UploadOut"),
            ("400", "404", "409", "415", "422"),
            request="VersionIn",
            params=_APP,
        ),
        Operation(
            "PATCH",
            "/api/v1/apps/{app_id}/versions/{version}",
            translating(api.version_state),
            "Retire or reactivate a version.",
            ("200", "The app.", "CatalogueAppOut"),
            ("400", "404", "409", "415", "422"),
            request="VersionStateIn",
            params=_VERSION,
        ),
        Operation(
            "PUT",
            "/api/v1/apps/{app_id}/versions/{version}/assignments",
            translating(api.assign),
            "Replace who a version is assigned to (orgs inherit to sub-organisations).",
            ("200", "The app.", "CatalogueAppOut"),
            ("400", "404", "409", "415", "422"),
            request="AssignmentsIn",
            params=_VERSION,
        ),
        Operation(
            "GET",
            "/api/v1/apps/{app_id}/licences",
            translating(api.show_licences),
            "The VPP licence pool: total, assigned, free.",
            ("200", "The pool.", "LicencesOut"),
            ("404",),
            params=_APP,
        ),
        Operation(
            "PUT",
            "/api/v1/apps/{app_id}/licences",
            translating(api.set_licences),
            "Set the pool's total.",
            ("200", "The pool.", "LicencesOut"),
            ("400", "404", "409", "415", "422"),
            request="LicencesIn",
            params=_APP,
        ),
        Operation(
            "POST",
            "/api/v1/apps/{app_id}/licences/release",
            translating(api.release),
            "Return devices' licences to the pool.",
            ("200", "The pool.", "LicencesOut"),
            ("400", "404", "415", "422"),
            request="LicenceReleaseIn",
            params=_APP,
        ),
        Operation(
            "GET",
            "/api/v1/apps/{app_id}/auto-update",
            translating(api.show_auto_update),
            "Automatic update settings and the next check.",
            ("200", "The settings.", "AutoUpdateOut"),
            ("404",),
            params=_APP,
        ),
        Operation(
            "PUT",
            "/api/v1/apps/{app_id}/auto-update",
            translating(api.set_auto_update),
            "Configure automatic updates (refused with a reason code when VPP is not set"
            " up, the app is not managed, or it is a system app).",
            ("200", "The settings.", "AutoUpdateOut"),
            ("400", "404", "409", "415", "422"),
            request="AutoUpdateIn",
            params=_APP,
        ),
    ]
