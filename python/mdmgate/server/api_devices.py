"""The admin API's devices: register and update in bulk, list with filters and a cursor,
show one, retire one, and list its deliveries.

The rules (a new device names its org, the fleet index hears of every write, what retiring
does) are :class:`~mdmgate.devices.service.DeviceService`'s; this module translates between
HTTP and it.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, get_args

from msgspec import UNSET, Meta, Struct, UnsetType

from mdmgate.devices.service import (
    FACT_LAST_SEEN,
    SCAN_BUDGET,
    DeviceChange,
    DeviceQuery,
    DeviceRefused,
    DeviceService,
)
from mdmgate.server.api_base import (
    _ORG_PATTERN,
    _PATTERNS,
    DeviceId,
    OrgPath,
    Platform,
    _check_content_type,
    _decode,
    _json,
    _query,
    _query_limit,
    _refuse,
)
from mdmgate.server.api_commands import delivery_result
from mdmgate.server.routes import Operation, QueryParam
from mdmgate.server.types import Request, Response
from mdmgate.storage import Delivery, DeliveryState, Device, Store

__all__ = [
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "AppIn",
    "AppOut",
    "DeviceDeliveriesOut",
    "DeviceDeliveryOut",
    "DeviceIn",
    "DeviceOut",
    "DevicePageOut",
    "DevicesApi",
    "DevicesWritten",
    "RetiredOut",
    "device_out",
    "operations",
]


class AppIn(Struct, kw_only=True, forbid_unknown_fields=True):
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


class DeviceIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A device to register or update. A new device needs `org` (`/` for the root); fields
    left out of an update keep their stored value (`null` clears them). An unknown field is
    refused (422 naming it), so a misspelt one is never silently dropped."""

    id: DeviceId
    platform: Platform
    org: Annotated[
        OrgPath | UnsetType,
        Meta(description="Required for a new device; an update may leave it out."),
    ] = UNSET
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


class DevicePageOut(Struct):
    """A page of devices in id order."""

    devices: list[DeviceOut]
    next: Annotated[
        str | None,
        Meta(
            description="`after` for the next page; `null` when the fleet was read to its end."
            " A page may be short, even empty, and still have a `next`."
        ),
    ]
    scanned: Annotated[int, Meta(description="How many devices were read for this page.")]


class RetiredOut(Struct):
    id: str
    retired_at: str
    revoked: Annotated[list[str], Meta(description="Serials of the certificates revoked now.")]
    ended: Annotated[int, Meta(description="Open deliveries ended (status `retired`).")]


class DeviceDeliveryOut(Struct):
    """One command on the device's queue, and how far it got."""

    command_id: str
    kind: str
    state: DeliveryState
    status: Annotated[
        str | None,
        Meta(description="The device's status: the SyncML status code, or Apple's `Status`."),
    ]
    result: Annotated[
        str | None,
        Meta(description="The device's result: text when it is UTF-8, else base64."),
    ]
    result_encoding: Annotated[
        str | None, Meta(description="`text` or `base64`: how `result` is given.")
    ]
    result_base64: Annotated[str | None, Meta(description="The raw result, base64.")]
    result_json: Annotated[
        Any,
        Meta(
            description="The result decoded: Apple's report plist as JSON (data as base64,"
            " dates as RFC 3339), the Windows results as stored (JSON); `null` when there is"
            " none or it does not decode."
        ),
    ]
    offers: Annotated[int, Meta(description="How many times it was handed out.")]


class DeviceDeliveriesOut(Struct):
    device_id: str
    deliveries: Annotated[list[DeviceDeliveryOut], Meta(description="In enqueue order.")]


REQUEST_TYPES: tuple[type[Any], ...] = (DeviceIn,)
RESPONSE_TYPES: tuple[type[Any], ...] = (
    DevicesWritten,
    DeviceOut,
    DevicePageOut,
    RetiredOut,
    DeviceDeliveriesOut,
)

#: The bulk upsert takes an array of devices, which has no Struct of its own.
EXTRA_SCHEMAS: dict[str, Any] = {
    "DeviceList": {"type": "array", "items": {"$ref": "#/components/schemas/DeviceIn"}}
}

_PLATFORMS: tuple[str, ...] = get_args(Platform)
_STATES = [s.value for s in DeliveryState]
_FACT_PREFIX = "fact."
_LIST_PARAMS = (
    "platform",
    "org",
    "enrolled",
    "last_seen_after",
    "last_seen_before",
    "app",
    "app_version",
    "after",
    "limit",
)


def _text(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    return value if isinstance(value, str) else None


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


def device_out(device: Device) -> DeviceOut:
    return DeviceOut(
        id=device.id,
        platform=device.platform,
        org=device.org,
        os_version=device.os_version,
        supervised=device.supervised,
        auth_configured=bool(device.auth),
        apps=_apps_from_facts(device.facts.get("apps")),
        facts={k: v for k, v in device.facts.items() if k != "apps"},
    )


def _delivery_out(delivery: Delivery) -> DeviceDeliveryOut:
    result = delivery_result(delivery.kind, delivery.result)
    return DeviceDeliveryOut(
        command_id=delivery.command_id,
        kind=delivery.kind,
        state=delivery.state,
        status=delivery.status,
        result=result.text,
        result_encoding=result.encoding,
        result_base64=result.base64,
        result_json=result.json,
        offers=delivery.offers,
    )


def _change(item: DeviceIn) -> DeviceChange:
    apps: list[dict[str, Any]] | UnsetType | None = UNSET
    if item.apps is not UNSET:
        apps = None
        if item.apps is not None:
            apps = [
                {
                    "identifier": app.identifier,
                    "version": app.version,
                    "name": app.name,
                    "source": app.source or "import",
                }
                for app in item.apps
            ]
    return DeviceChange(
        id=item.id,
        platform=item.platform,
        org=item.org,
        os_version=item.os_version,
        supervised=item.supervised,
        auth=item.auth,
        apps=apps,
    )


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _instant(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _refuse(422, f"{name} must be Unix seconds (a finite number), not {text!r}", name)
    return value


def _device_query(query: Mapping[str, list[str]]) -> DeviceQuery:
    platforms = query.get("platform", [])
    for platform in platforms:
        if platform not in _PLATFORMS:
            raise _refuse(
                422, f"platform {platform!r} is not one of {', '.join(_PLATFORMS)}", "platform"
            )
    org = _one(query, "org")
    if org is not None and re.fullmatch(_ORG_PATTERN, org) is None:
        raise _refuse(422, f"org must be {_PATTERNS[_ORG_PATTERN]}", "org")
    enrolled_text = _one(query, "enrolled")
    if enrolled_text not in (None, "true", "false"):
        raise _refuse(422, f"enrolled must be true or false, not {enrolled_text!r}", "enrolled")
    facts: dict[str, str] = {}
    for name, values in query.items():
        if name.startswith(_FACT_PREFIX):
            if name == _FACT_PREFIX:
                raise _refuse(422, "fact. needs a fact name (fact.NAME=VALUE)", name)
            facts[name.removeprefix(_FACT_PREFIX)] = values[0]
    app, app_version = _one(query, "app"), _one(query, "app_version")
    if app_version is not None and app is None:
        raise _refuse(422, "app_version needs app (the identifier it is the version of)", "app")
    return DeviceQuery(
        platforms=frozenset(platforms),
        org=org,
        enrolled=None if enrolled_text is None else enrolled_text == "true",
        last_seen_after=_instant(_one(query, "last_seen_after"), "last_seen_after"),
        last_seen_before=_instant(_one(query, "last_seen_before"), "last_seen_before"),
        app=app,
        app_version=app_version,
        facts=facts,
    )


class DevicesApi:
    """The handlers of ``/api/v1/devices[/{id}[/deliveries]]``."""

    def __init__(self, devices: DeviceService) -> None:
        self.devices = devices
        self.store: Store = devices.store

    async def upsert(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        given = _decode(request.body, list[DeviceIn])
        for index, item in enumerate(given):
            if isinstance(item.org, str) and item.org.endswith("\n"):
                # The pattern's "$" also matches before a final newline.
                raise _refuse(422, "an org path has no line breaks", f"$[{index}].org")
        try:
            written = await self.devices.register([_change(item) for item in given])
        except DeviceRefused as exc:
            raise _refuse(422, exc.message, f"$[{exc.index}].{exc.field}") from None
        return _json(200, DevicesWritten(written))

    async def list(self, request: Request, params: Mapping[str, str]) -> Response:
        query = _query(request, _LIST_PARAMS, repeated=("platform",), prefixes=(_FACT_PREFIX,))
        wanted = _device_query(query)
        page = await self.devices.page(
            wanted, after=_one(query, "after"), limit=_query_limit(query.get("limit"))
        )
        out = DevicePageOut([device_out(d) for d in page.devices], page.next, page.scanned)
        return _json(200, out)

    async def show(self, request: Request, params: Mapping[str, str]) -> Response:
        device = await self.store.get_device(params["id"])
        if device is None:
            raise _refuse(404, f"no device {params['id']!r}")
        return _json(200, device_out(device))

    async def retire(self, request: Request, params: Mapping[str, str]) -> Response:
        done = await self.devices.retire(params["id"])
        if done is None:
            raise _refuse(404, f"no device {params['id']!r}")
        at = datetime.datetime.fromtimestamp(done.at, datetime.UTC)
        out = RetiredOut(
            done.device_id, at.strftime("%Y-%m-%dT%H:%M:%SZ"), done.revoked, done.ended
        )
        return _json(200, out)

    async def deliveries(self, request: Request, params: Mapping[str, str]) -> Response:
        query = _query(request, ("state",), repeated=("state",))
        states: Sequence[DeliveryState] = list(DeliveryState)
        if "state" in query:
            for value in query["state"]:
                if value not in _STATES:
                    raise _refuse(
                        422, f"state {value!r} is not one of {', '.join(_STATES)}", "state"
                    )
            states = [DeliveryState(v) for v in dict.fromkeys(query["state"])]
        device_id = params["id"]
        if await self.store.get_device(device_id) is None:
            raise _refuse(404, f"no device {device_id!r}")
        found = await self.store.deliveries(device_id, states)
        return _json(200, DeviceDeliveriesOut(device_id, [_delivery_out(d) for d in found]))


_DEVICE = {"id": "The device id (percent-encoded)."}

_LIST_DESCRIPTION = (
    "Devices in id order, filtered; every filter given must hold. Page with `after` (the"
    " `next` of the previous page) and `limit`. Each call reads at most"
    f" {SCAN_BUDGET} devices: with a selective filter a page may come back short, even"
    " empty, with a `next` cursor to go on from; `next` is `null` only once the fleet was"
    " read to its end. `fact.NAME=VALUE` keeps devices whose top-level fact NAME equals"
    " VALUE (a string fact as is, any other value by its JSON text: `1`, `true`)."
)


def operations(api: DevicesApi) -> list[Operation]:
    """The device operations, with their handlers."""
    number = {"type": "number"}
    return [
        Operation(
            "GET",
            "/api/v1/devices",
            api.list,
            "List devices, filtered, with cursor pagination.",
            ("200", "A page of devices.", "DevicePageOut"),
            ("400", "422"),
            description=_LIST_DESCRIPTION,
            query=(
                QueryParam(
                    "platform",
                    "Devices of these platforms (repeat for several).",
                    {"type": "string", "enum": list(_PLATFORMS)},
                    repeated=True,
                ),
                QueryParam(
                    "org",
                    "Devices in this org or below it (`/acme` keeps `/acme/x`).",
                    {"type": "string", "pattern": _ORG_PATTERN},
                ),
                QueryParam(
                    "enrolled",
                    "`true`: enrolled devices (no `unenrolled` fact); `false`: unenrolled ones.",
                    {"type": "string", "enum": ["true", "false"]},
                ),
                QueryParam(
                    "last_seen_after", f"Fact `{FACT_LAST_SEEN}` above this Unix time.", number
                ),
                QueryParam(
                    "last_seen_before", f"Fact `{FACT_LAST_SEEN}` below this Unix time.", number
                ),
                QueryParam("app", "Devices whose inventory holds this app identifier."),
                QueryParam("app_version", "With `app`: at this version."),
                QueryParam("after", "The `next` of the previous page: ids above this one."),
                QueryParam(
                    "limit",
                    "Devices per page (default 100).",
                    {"type": "integer", "minimum": 1, "maximum": 1000},
                ),
            ),
        ),
        Operation(
            "POST",
            "/api/v1/devices",
            api.upsert,
            "Register or update devices in bulk. Fields left out keep their stored value;"
            " a new device needs its org.",
            ("200", "How many devices were written.", "DevicesWritten"),
            ("400", "415", "422"),
            request="DeviceList",
        ),
        Operation(
            "GET",
            "/api/v1/devices/{id}",
            api.show,
            "A device, its app inventory and its latest facts.",
            ("200", "The device.", "DeviceOut"),
            ("404",),
            params=_DEVICE,
        ),
        Operation(
            "DELETE",
            "/api/v1/devices/{id}",
            api.retire,
            "Retire a device: open deliveries end, certificates are revoked, later"
            " sessions are refused until it is registered or enrols again; its record and"
            " history stay.",
            ("200", "What was done.", "RetiredOut"),
            ("404",),
            params=_DEVICE,
        ),
        Operation(
            "GET",
            "/api/v1/devices/{id}/deliveries",
            api.deliveries,
            "The device's deliveries (its queue and history) with their states and results.",
            ("200", "The deliveries, in enqueue order.", "DeviceDeliveriesOut"),
            ("400", "404", "422"),
            params=_DEVICE,
            query=(
                QueryParam(
                    "state",
                    "Only deliveries in these states (repeat for several); all by default.",
                    {"type": "string", "enum": _STATES},
                    repeated=True,
                ),
            ),
        ),
    ]
