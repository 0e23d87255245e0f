"""Devices and their commands, between the entry points and the store.

The rules here are the ones an entry point (the admin API today, a CLI or another API
tomorrow) would otherwise have to repeat, and could forget:

* a device written here is told to the fleet index at once (``on_devices_changed``), so a
  question asked right after sees it;
* a new device names its org (an update may leave it out, keeping the stored one); a device
  registered again with credentials is admitted again if it had been unenrolled;
* retiring a device marks it unenrolled, ends its open deliveries and revokes its
  certificates, keeping its record and its history;
* Apple devices that got commands are woken (``on_enqueued``, the APNs pusher): they fetch
  commands only when pushed;
* cancelling a command ends only the deliveries not handed out yet (or deferred by the
  device with NotNow); what a device has in hand is left to finish.

Listing pages through the fleet by id with a bounded scan per call (:data:`SCAN_BUDGET`
devices read): a page may come back short, even empty, with a cursor to go on from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from mdmgate import events
from mdmgate.errors import MdmgateError
from mdmgate.events import device_unenrolled
from mdmgate.storage import DeliveryState, Device, Store, org_covers
from mdmgate.storage.enrollment import revoked_auth
from mdmgate.windows import enrollment

__all__ = [
    "CANCELLED_STATUS",
    "FACT_LAST_SEEN",
    "RETIRED_REASON",
    "SCAN_BUDGET",
    "Cancelled",
    "CommandService",
    "DeviceChange",
    "DevicePage",
    "DeviceQuery",
    "DeviceRefused",
    "DeviceService",
    "NotInCommand",
    "Retired",
]

#: Devices one listing call reads at most: a selective filter over a large fleet answers a
#: short page (and a cursor) rather than holding a connection for a full scan.
SCAN_BUDGET = 5000
#: Devices read per store call while listing (more when the page needs more).
_CHUNK = 200

#: The fact the device services set at check-in: Unix seconds.
FACT_LAST_SEEN = events.FACT_LAST_SEEN

RETIRED_REASON = "retired by an administrator"
#: The status a cancelled delivery ends with.
CANCELLED_STATUS = "cancelled by an administrator"

_CANCELLABLE = frozenset({DeliveryState.QUEUED, DeliveryState.NOT_NOW})


class DeviceRefused(MdmgateError, ValueError):
    """A device change the fleet refuses: the ``index`` of the change in the call and the
    ``field`` at fault (``org``, ``id``)."""

    def __init__(self, message: str, index: int, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.field = field


class NotInCommand(MdmgateError, LookupError):
    """Devices named for a command that has no delivery for them."""

    def __init__(self, command_id: str, device_ids: Sequence[str]) -> None:
        shown = ", ".join(device_ids[:5]) + (" ..." if len(device_ids) > 5 else "")
        super().__init__(f"{len(device_ids)} device(s) without command {command_id!r}: {shown}")
        self.device_ids = list(device_ids)


@dataclass(frozen=True)
class DeviceChange:
    """A device to register or update. A field left :data:`~msgspec.UNSET` keeps its stored
    value (a new device must give ``org``); ``None`` clears it. ``apps`` is the known
    inventory (entries ``{identifier, version, name, source}``), replacing the stored one."""

    id: str
    platform: str
    org: str | UnsetType = UNSET
    os_version: str | UnsetType | None = UNSET
    supervised: bool | UnsetType | None = UNSET
    auth: Mapping[str, Any] | UnsetType | None = UNSET
    apps: Sequence[Mapping[str, Any]] | UnsetType | None = UNSET


@dataclass(frozen=True)
class DeviceQuery:
    """Which devices a listing keeps; every condition given must hold.

    ``org`` covers its sub-organisations (``/acme`` keeps ``/acme/x``); ``enrolled`` is
    whether the fact ``unenrolled`` is absent; ``last_seen_*`` compare the fact
    :data:`FACT_LAST_SEEN` (a device without it matches neither); ``app`` keeps devices
    whose inventory holds the identifier, at ``app_version`` when given; ``facts`` are
    top-level facts equal to a text: a string fact equals it as is, any other value when
    its JSON text does (``1``, ``true``, ``null``)."""

    platforms: frozenset[str] = frozenset()
    org: str | None = None
    enrolled: bool | None = None
    last_seen_after: float | None = None
    last_seen_before: float | None = None
    app: str | None = None
    app_version: str | None = None
    facts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.app_version is not None and self.app is None:
            raise ValueError("app_version needs app (the identifier it is the version of)")

    def matches(self, device: Device) -> bool:
        facts = device.facts
        return (
            (not self.platforms or device.platform in self.platforms)
            and (self.org is None or org_covers(self.org, device.org))
            and (self.enrolled is None or (enrollment.FACT_UNENROLLED in facts) != self.enrolled)
            and self._seen_in_range(facts.get(FACT_LAST_SEEN))
            and (self.app is None or self._has_app(facts.get("apps")))
            and all(
                name in facts and _fact_equals(facts[name], text)
                for name, text in self.facts.items()
            )
        )

    def _seen_in_range(self, seen: Any) -> bool:
        if self.last_seen_after is None and self.last_seen_before is None:
            return True
        if not isinstance(seen, int | float) or isinstance(seen, bool):
            return False  # never seen, or a value that is no time
        after, before = self.last_seen_after, self.last_seen_before
        return (after is None or seen > after) and (before is None or seen < before)

    def _has_app(self, apps: Any) -> bool:
        if not isinstance(apps, list):
            return False
        return any(
            isinstance(entry, dict)
            and entry.get("identifier") == self.app
            and (self.app_version is None or entry.get("version") == self.app_version)
            for entry in apps
        )


def _fact_equals(value: Any, text: str) -> bool:
    if isinstance(value, str):
        return value == text
    try:
        return msgspec.json.encode(value).decode() == text
    except (TypeError, msgspec.EncodeError):
        return False


@dataclass(frozen=True)
class DevicePage:
    """Devices in id order. ``next`` is the ``after`` of the following page, ``None`` when
    the fleet was read to its end; ``scanned`` is how many devices were read."""

    devices: list[Device]
    next: str | None
    scanned: int


@dataclass(frozen=True)
class Retired:
    device_id: str
    at: float
    #: Serials of the certificates revoked now.
    revoked: list[str]
    #: Open deliveries ended.
    ended: int


@dataclass(frozen=True)
class Cancelled:
    command_id: str
    #: Devices whose delivery this call ended.
    cancelled: list[str]
    #: The other deliveries asked about, left as they were: device id -> state.
    left: dict[str, DeliveryState]


class DeviceService:
    """Registering, listing and retiring devices (see the module documentation)."""

    def __init__(
        self,
        store: Store,
        *,
        on_devices_changed: Callable[[Iterable[str]], None] | None = None,
        scan_budget: int = SCAN_BUDGET,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if scan_budget < 1:
            raise ValueError("scan_budget must be at least 1")
        self.store = store
        #: Told which devices were written here (the fleet index); must not block.
        self.on_devices_changed = on_devices_changed
        self.scan_budget = scan_budget
        self.clock = clock

    async def register(self, changes: Sequence[DeviceChange]) -> int:
        """Registers new devices and updates known ones; returns how many were written.
        Raises :class:`DeviceRefused` for an id given twice or a new device without org
        (nothing is written then)."""
        seen: dict[str, int] = {}
        for index, change in enumerate(changes):
            if change.id in seen:
                raise DeviceRefused(
                    f"device {change.id!r} is given twice (also at {seen[change.id]})", index, "id"
                )
            seen[change.id] = index
        stored = await self.store.get_devices(list(seen))
        for index, change in enumerate(changes):
            if change.org is UNSET and change.id not in stored:
                raise DeviceRefused(
                    f"device {change.id!r} is new: it needs an org (/ for the root)", index, "org"
                )
        devices = [_merged(change, stored.get(change.id)) for change in changes]
        # An inventory given here is reported as one a device sent would be.
        reported = []
        for device in devices:
            before = stored.get(device.id)
            old = before.facts.get("apps") if before is not None else None
            found = events.inventory_changed(device.id, old, device.facts.get("apps") or [])
            if found is not None:
                reported.append(found)
        written = await self.store.upsert_devices(devices, events=reported) if devices else 0
        self._changed(d.id for d in devices)
        return written

    async def page(self, query: DeviceQuery, *, after: str | None, limit: int) -> DevicePage:
        """Up to ``limit`` devices matching ``query`` with ids above ``after``, reading at
        most :attr:`scan_budget` devices."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        found: list[Device] = []
        cursor = after
        scanned = 0
        while True:
            room = min(self.scan_budget - scanned, max(limit - len(found), _CHUNK))
            # One device more than is examined: whether the fleet goes on after this chunk.
            chunk = await self.store.list_devices(cursor, room + 1)
            for device in chunk[:room]:
                if query.matches(device):
                    if len(found) == limit:
                        # A match beyond the page: the next page starts after the last shown.
                        return DevicePage(found, found[-1].id, scanned)
                    found.append(device)
                scanned += 1
                cursor = device.id
            if len(chunk) <= room:
                return DevicePage(found, None, scanned)
            if scanned >= self.scan_budget:
                return DevicePage(found, cursor, scanned)

    async def retire(self, device_id: str, reason: str = RETIRED_REASON) -> Retired | None:
        """The device is no longer managed: it is marked unenrolled (its later sessions are
        refused as an unknown device's until it is registered or enrols again), its open
        deliveries end (status ``retired``) and its certificates are revoked (a
        certificate binding made without this CA is dropped too). The record and its
        history stay. ``None`` for an unknown device."""
        device = await self.store.get_device(device_id)
        if device is None:
            return None
        now = self.clock()
        # Reported once: retiring it again changes nothing a console follows.
        once = enrollment.FACT_UNENROLLED not in device.facts
        gone = [device_unenrolled(device_id, reason=reason)] if once else []
        await self.store.merge_facts(
            device_id, enrollment.unenrolled(device.facts, reason), events=gone
        )
        ended = await self.store.cancel_open(device_id, "retired")
        revoked = await self.store.revoke_certificates(device_id=device_id, reason=reason, at=now)
        if device.auth.get("method") == "certificate" and not revoked:
            await self.store.set_auth(device_id, revoked_auth([]))
        self._changed([device_id])
        return Retired(device_id, now, [c.serial for c in revoked], ended)

    def _changed(self, device_ids: Iterable[str]) -> None:
        if self.on_devices_changed is not None:
            self.on_devices_changed(device_ids)


def _merged(change: DeviceChange, old: Device | None) -> Device:
    """The device as stored after ``change``: fields left out keep their value, and facts
    (reported by the device) are kept."""
    base = old or Device(change.id, change.platform)
    facts = dict(base.facts)
    if change.apps is not UNSET:
        if change.apps is None:
            facts.pop("apps", None)
        else:
            facts["apps"] = [dict(entry) for entry in change.apps]
    if change.auth and old is not None:
        # Registered again with credentials: an unenrolled device is admitted again.
        for key, value in enrollment.reenrolled(
            facts, "registered again with credentials (POST /api/v1/devices)"
        ).items():
            if value is None:
                facts.pop(key, None)
            else:
                facts[key] = value
    auth = base.auth if change.auth is UNSET else dict(change.auth or {})
    return Device(
        id=change.id,
        platform=change.platform,
        org=base.org if change.org is UNSET else change.org,
        os_version=base.os_version if change.os_version is UNSET else change.os_version,
        supervised=base.supervised if change.supervised is UNSET else change.supervised,
        auth=auth,
        facts=facts,
    )


class CommandService:
    """Queuing and cancelling commands (see the module documentation)."""

    def __init__(
        self, store: Store, *, on_enqueued: Callable[[Sequence[str]], None] | None = None
    ) -> None:
        self.store = store
        #: Told which devices got new Apple commands (e.g. to push them); must not block.
        self.on_enqueued = on_enqueued

    async def enqueue(
        self, command_id: str, kind: str, body: bytes, device_ids: Sequence[str], *, new: bool
    ) -> int:
        """Queues the command for the devices (see :meth:`~mdmgate.storage.QueueStore.enqueue`
        for ``new`` and the errors) and wakes the Apple ones; returns the deliveries made."""
        queued = await self.store.enqueue(command_id, kind, body, device_ids, new=new)
        if self.on_enqueued is not None and kind == "apple":
            # Apple devices fetch commands only when woken by a push.
            self.on_enqueued(device_ids)
        return queued

    async def cancel(
        self, command_id: str, device_ids: Sequence[str] | None = None
    ) -> Cancelled | None:
        """Ends the command's deliveries not handed out yet (queued, or deferred with
        NotNow) for ``device_ids`` (all when ``None``) as ``error`` with
        :data:`CANCELLED_STATUS`, with one ``command.cancelled`` event each. ``None`` for an
        unknown command; :class:`NotInCommand` when a device named has no delivery of it."""
        status = await self.store.command_status(command_id)
        if status is None:
            return None
        states = {d.device_id: d.state for d in status.deliveries}
        wanted = list(states) if device_ids is None else list(dict.fromkeys(device_ids))
        missing = [d for d in wanted if d not in states]
        if missing:
            raise NotInCommand(command_id, missing)
        # The store appends only the events of the deliveries it ends: one handed out
        # between this look and the cancel reports nothing.
        cancelled = [
            events.command_cancelled(device, command_id, CANCELLED_STATUS)
            for device in wanted
            if states[device] in _CANCELLABLE
        ]
        ended = await self.store.cancel_deliveries(
            command_id, wanted, CANCELLED_STATUS, events=cancelled
        )
        done = set(ended)
        after = await self.store.command_status(command_id)
        now = {d.device_id: d.state for d in after.deliveries} if after is not None else states
        left = {d: now.get(d, states[d]) for d in wanted if d not in done}
        return Cancelled(command_id, [d for d in wanted if d in done], left)
