"""An in-memory store: for tests, ``--dev`` and benchmarks. Nothing survives the process.

Every operation runs on the Trio thread without awaiting in the middle, so each is one
atomic step and concurrent callers (tasks) cannot interleave inside it: ``take`` is
exclusive, ``merge_facts`` loses nothing, licence grants are checked and made at once, and
the events a call reports are appended in the same step as its change (checked first, so
that a refused event leaves the change undone too).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import msgspec
import trio

from mdmgate.catalogue.model import App, CommandBatch, LicenceGrant, Notification, Org
from mdmgate.storage import (
    Change,
    CommandExists,
    CommandStatus,
    CommandSummary,
    Delivery,
    DeliveryState,
    Device,
    FactsMerge,
    LicencesExhausted,
    MessageContext,
    NewEvent,
    RevisionConflict,
    StoredDeclaration,
    StoredSession,
    UnknownDevices,
    fan_out_devices,
    offers_exhausted,
    org_covers,
)
from mdmgate.storage.enrollment import EnrollmentToken, IssuedCertificate
from mdmgate.storage.enrollment_records import (
    CLAIM_SWEEP,
    EnrollmentRole,
    auth_after_revocation,
    certificate_taken,
    serial_order,
    token_taken,
)
from mdmgate.storage.event_records import (
    EncodedEvent,
    check_page,
    checked_events,
    take_event,
)
from mdmgate.storage.memory_events import MemoryEvents

__all__ = ["MemoryStore"]

#: What take() hands out; ACCEPTED is open too but waits for the device.
_OFFERED = (DeliveryState.QUEUED, DeliveryState.SENT, DeliveryState.NOT_NOW)
_OPEN = (*_OFFERED, DeliveryState.ACCEPTED)
#: What cancel_deliveries ends: never handed out, or deferred by the device.
_CANCELLABLE = (DeliveryState.QUEUED, DeliveryState.NOT_NOW)
#: Notifications still to run.
_PENDING = ("scheduled", "running")

_APP = msgspec.json.Decoder(App)
_ORG = msgspec.json.Decoder(Org)
_NOTIFICATION = msgspec.json.Decoder(Notification)


#: The fields :meth:`MemoryStore.update_device` may set, and the types they take.
_DEVICE_FIELDS: dict[str, tuple[type, ...]] = {
    "org": (str,),
    "platform": (str,),
    "os_version": (str, type(None)),
    "supervised": (bool, type(None)),
}


def _check_fields(fields: Mapping[str, Any]) -> None:
    wrong = sorted(set(fields) - set(_DEVICE_FIELDS))
    if wrong:
        raise ValueError(f"not a device field that can be updated: {', '.join(wrong)}")
    for name, value in fields.items():
        if not isinstance(value, _DEVICE_FIELDS[name]):
            raise ValueError(f"device field {name}: {value!r} is not of the right type")


@dataclass
class _Entry:
    seq: int
    delivery: Delivery


class MemoryStore(MemoryEvents, EnrollmentRole):
    """The :class:`~mdmgate.storage.Store` in memory. The event log, webhooks and API tokens
    are a mixin (:mod:`.memory_events`)."""

    def __init__(self) -> None:
        super().__init__()
        self._devices: dict[str, Device] = {}
        self._commands: dict[str, tuple[str, bytes]] = {}
        self._queues: dict[str, dict[str, _Entry]] = {}
        #: Each device's entries in queue order (as queued: the numbers only grow), and how
        #: many at its head are answered for good: take starts after those.
        self._order: dict[str, list[_Entry]] = {}
        self._settled: dict[str, int] = {}
        self._seq = itertools.count(1)
        #: Each command's place in the queue order and when it was first queued.
        self._command_order: dict[str, tuple[int, float]] = {}
        self._declarations: dict[str, StoredDeclaration] = {}
        #: Device ids in code-point order (what list_devices pages through); rebuilt on
        #: demand after a new device is added.
        self._ordered: list[str] | None = None
        self._licences: dict[str, set[str]] = {}
        # Catalogue records are kept encoded, as a durable backend keeps them: what a
        # caller reads back is a copy, decoded like any other backend's.
        self._apps: dict[str, tuple[int, bytes]] = {}
        self._orgs: dict[str, bytes] = {}
        self._notifications: dict[str, tuple[Notification, bytes]] = {}
        self._sessions: dict[tuple[str, str], StoredSession] = {}
        #: The change feed: entry i has seq i + 1. Unbounded (a test and dev store).
        self._changes: list[Change] = []
        #: Set (and replaced) on every change: wakes wait_for_changes in this process.
        self._changed = trio.Event()
        self._leases: dict[str, tuple[str, float]] = {}
        # Enrollment records are frozen structs, checked (and so copied) on the way in.
        self._material: dict[str, bytes] = {}
        self._tokens: dict[str, EnrollmentToken] = {}
        self._certificates: dict[str, IssuedCertificate] = {}
        self._by_sha256: dict[str, str] = {}
        self._claims: dict[tuple[str, str], float] = {}

    def _record(self, kind: str, key: str) -> None:
        self._changes.append(Change(len(self._changes) + 1, kind, key))
        self._changed.set()
        self._changed = trio.Event()

    async def upsert_devices(
        self, devices: Sequence[Device], *, events: Sequence[NewEvent] = ()
    ) -> int:
        appended = checked_events(events)
        for d in devices:
            if d.id not in self._devices:
                self._ordered = None
            self._devices[d.id] = d
            self._record("device", d.id)
        self._append(appended)
        return len(devices)

    async def get_device(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    async def get_devices(self, device_ids: Sequence[str]) -> dict[str, Device]:
        return {i: self._devices[i] for i in device_ids if i in self._devices}

    async def enqueue(
        self,
        command_id: str,
        kind: str,
        body: bytes,
        device_ids: Sequence[str],
        *,
        new: bool = False,
        events: Sequence[NewEvent] = (),
    ) -> int:
        appended = checked_events(events)
        if new and command_id in self._commands:
            raise CommandExists(command_id)
        unknown = [d for d in dict.fromkeys(device_ids) if d not in self._devices]
        if unknown:
            raise UnknownDevices(unknown)
        queued = self._queue(command_id, kind, body, device_ids)
        self._append(appended)
        return queued

    def _queue(self, command_id: str, kind: str, body: bytes, device_ids: Sequence[str]) -> int:
        """Stores the command once and queues it for the (known) devices not holding it."""
        if command_id not in self._commands:
            self._commands[command_id] = (kind, body)
            self._command_order[command_id] = (next(self._seq), time.time())
        kind, body = self._commands[command_id]
        added = 0
        for device_id in dict.fromkeys(device_ids):
            queue = self._queues.setdefault(device_id, {})
            if command_id in queue:
                continue
            delivery = Delivery(command_id, device_id, kind, body, DeliveryState.QUEUED)
            entry = queue[command_id] = _Entry(next(self._seq), delivery)
            self._order.setdefault(device_id, []).append(entry)
            added += 1
        return added

    async def take(
        self,
        device_id: str,
        session: str,
        limit: int,
        *,
        max_offers: int | None = None,
        delivered_event: bool = False,
    ) -> list[Delivery]:
        entries = self._order.get(device_id, [])
        start = self._settled.get(device_id, 0)
        while start < len(entries) and entries[start].delivery.state.final:
            start += 1  # a final answer stays final
        self._settled[device_id] = start
        taken: list[Delivery] = []
        failed: list[Delivery] = []
        for index in range(start, len(entries)):
            entry = entries[index]
            if len(taken) >= limit:
                break
            d = entry.delivery
            in_session = d.session == session and d.state is not DeliveryState.QUEUED
            if d.state not in _OFFERED or in_session:
                continue
            retry = max_offers is not None and d.offers > 0
            if max_offers is not None and d.offers >= max_offers:
                entry.delivery = replace(
                    d, state=DeliveryState.FAILED, status=offers_exhausted(d.offers)
                )
                failed.append(entry.delivery)
                continue
            if retry and taken:
                break  # a retry goes out alone
            entry.delivery = replace(
                d, state=DeliveryState.SENT, session=session, offers=d.offers + 1
            )
            taken.append(entry.delivery)
            if retry:
                break
        if delivered_event:
            self._append(
                [
                    take_event("command.failed", device_id, d.command_id, {"status": d.status})
                    for d in failed
                ]
                + [
                    take_event(
                        "command.delivered",
                        device_id,
                        d.command_id,
                        {"session": session, "offers": d.offers},
                    )
                    for d in taken
                ]
            )
        return taken

    async def record_result(
        self,
        device_id: str,
        command_id: str,
        state: DeliveryState,
        status: str | None,
        result: bytes | None,
        *,
        events: Sequence[NewEvent] = (),
    ) -> bool:
        appended = checked_events(events)
        entry = self._queues.get(device_id, {}).get(command_id)
        if entry is None or entry.delivery.state.final:
            return False
        offers = 0 if state is DeliveryState.NOT_NOW else entry.delivery.offers
        entry.delivery = replace(
            entry.delivery, state=state, status=status, result=result, offers=offers
        )
        self._append(appended)
        return True

    async def record_and_take(
        self,
        device_id: str,
        command_id: str,
        state: DeliveryState,
        status: str | None,
        result: bytes | None,
        *,
        events: Sequence[NewEvent] = (),
        session: str,
        limit: int,
        max_offers: int | None = None,
        delivered_event: bool = False,
    ) -> tuple[bool, list[Delivery]]:
        recorded = await self.record_result(
            device_id, command_id, state, status, result, events=events
        )
        taken = await self.take(
            device_id, session, limit, max_offers=max_offers, delivered_event=delivered_event
        )
        return recorded, taken

    async def command_status(self, command_id: str) -> CommandStatus | None:
        if command_id not in self._commands:
            return None
        kind = self._commands[command_id][0]
        found = [
            (q[command_id].seq, q[command_id].delivery)
            for q in self._queues.values()
            if command_id in q
        ]
        return CommandStatus(command_id, kind, tuple(d for _, d in sorted(found)))

    async def deliveries(self, device_id: str, states: Collection[DeliveryState]) -> list[Delivery]:
        entries = sorted(self._queues.get(device_id, {}).values(), key=lambda e: e.seq)
        return [e.delivery for e in entries if e.delivery.state in states]

    async def get_delivery(self, device_id: str, command_id: str) -> Delivery | None:
        entry = self._queues.get(device_id, {}).get(command_id)
        return None if entry is None else entry.delivery

    async def set_auth(
        self, device_id: str, auth: Mapping[str, Any], *, events: Sequence[NewEvent] = ()
    ) -> bool:
        appended = checked_events(events)
        device = self._devices.get(device_id)
        if device is None:
            return False
        self._devices[device_id] = msgspec.structs.replace(device, auth=dict(auth))
        self._append(appended)
        return True

    async def cancel_open(
        self, device_id: str, status: str, *, events: Sequence[NewEvent] = ()
    ) -> int:
        appended = checked_events(events)
        ended = 0
        for entry in self._queues.get(device_id, {}).values():
            if entry.delivery.state in _OPEN:
                entry.delivery = replace(entry.delivery, state=DeliveryState.ERROR, status=status)
                ended += 1
        self._append(appended)
        return ended

    async def list_commands(
        self,
        *,
        after: str | None = None,
        limit: int = 100,
        device_id: str | None = None,
        kind: str | None = None,
    ) -> list[CommandSummary]:
        check_page(0, limit)
        start = self._command_order.get(after, (0, 0.0))[0] if after is not None else 0
        held = self._queues.get(device_id, {}) if device_id is not None else None
        found: list[CommandSummary] = []
        # Insertion order is queue order.
        for command_id, (seq, created_at) in self._command_order.items():
            if len(found) >= limit:
                break
            command_kind, body = self._commands[command_id]
            if seq <= start or (kind is not None and command_kind != kind):
                continue
            if held is not None and command_id not in held:
                continue
            counts = collections.Counter(
                q[command_id].delivery.state.value for q in self._queues.values() if command_id in q
            )
            found.append(
                CommandSummary(command_id, command_kind, seq, created_at, dict(counts), body)
            )
        return found

    async def cancel_deliveries(
        self,
        command_id: str,
        device_ids: Sequence[str] | None,
        status: str,
        *,
        events: Sequence[NewEvent] = (),
    ) -> list[str]:
        appended = checked_events(events)
        if isinstance(device_ids, str):
            raise ValueError(f"device_ids must be a sequence of ids, not the string {device_ids!r}")
        wanted = self._queues if device_ids is None else dict.fromkeys(device_ids)
        chosen = [self._queues.get(d, {}).get(command_id) for d in wanted]
        ended = sorted(
            (e for e in chosen if e is not None and e.delivery.state in _CANCELLABLE),
            key=lambda e: e.seq,
        )
        for entry in ended:
            entry.delivery = replace(entry.delivery, state=DeliveryState.ERROR, status=status)
        devices = [e.delivery.device_id for e in ended]
        self._append([e for e in appended if e.device_id is None or e.device_id in devices])
        return devices

    async def put_declaration(self, declaration: StoredDeclaration) -> None:
        old = self._declarations.get(declaration.identifier)
        seq = old.seq if old is not None else next(self._seq)
        self._declarations[declaration.identifier] = msgspec.structs.replace(declaration, seq=seq)

    async def get_declaration(self, identifier: str) -> StoredDeclaration | None:
        return self._declarations.get(identifier)

    async def declarations_for(self, device_id: str, org: str) -> list[StoredDeclaration]:
        found = [
            d
            for d in self._declarations.values()
            if device_id in d.devices or any(org_covers(o, org) for o in d.orgs)
        ]
        return sorted(found, key=lambda d: d.seq)

    async def merge_facts(
        self,
        device_id: str,
        facts: Mapping[str, Any],
        *,
        feed: bool = True,
        events: Sequence[NewEvent] = (),
    ) -> bool:
        appended = checked_events(events)
        if not self._merge(device_id, facts):
            return False
        if feed:
            self._record("device", device_id)
        self._append(appended)
        return True

    def _merge(self, device_id: str, facts: Mapping[str, Any]) -> bool:
        device = self._devices.get(device_id)
        if device is None:
            return False
        merged = {**device.facts, **facts}
        merged = {k: v for k, v in merged.items() if v is not None}
        self._devices[device_id] = msgspec.structs.replace(device, facts=merged)
        return True

    async def update_device(
        self, device_id: str, fields: Mapping[str, Any], *, events: Sequence[NewEvent] = ()
    ) -> bool:
        _check_fields(fields)
        appended = checked_events(events)
        device = self._devices.get(device_id)
        if device is None:
            return False
        self._devices[device_id] = msgspec.structs.replace(device, **fields)
        self._record("device", device_id)
        self._append(appended)
        return True

    async def list_devices(self, after: str | None, limit: int) -> list[Device]:
        if limit <= 0:
            return []
        if self._ordered is None:
            self._ordered = sorted(self._devices)  # str order is code-point order
        start = 0 if after is None else bisect.bisect_right(self._ordered, after)
        return [self._devices[i] for i in self._ordered[start : start + limit]]

    async def fan_out(
        self,
        batches: Sequence[CommandBatch],
        *,
        licences: LicenceGrant | None = None,
        notification: Notification | None = None,
        expected_rev: int | None = None,
        events: Sequence[NewEvent] = (),
    ) -> int:
        # Everything is checked before anything changes (and nothing here awaits): the
        # whole fan-out happens at once or not at all.
        appended = checked_events(events)
        named = fan_out_devices(batches, licences)
        unknown = [d for d in named if d not in self._devices]
        if unknown:
            raise UnknownDevices(unknown)
        new: list[str] = []
        if licences is not None:
            held = self._licences.get(licences.app_id, set())
            new = [d for d in dict.fromkeys(licences.device_ids) if d not in held]
            if new and len(held) + len(new) > licences.total:
                raise LicencesExhausted(licences.app_id, licences.total, len(held) + len(new))
        if notification is not None:
            self._check_notification(notification.id, expected_rev)
        # Checked: from here on nothing fails.
        if licences is not None and new:
            self._licences.setdefault(licences.app_id, set()).update(new)
            self._record("licence", licences.app_id)
        if notification is not None:
            self._store_notification(notification, expected_rev)
        made = sum(self._queue(b.command_id, b.kind, b.body, b.device_ids) for b in batches)
        self._append(appended)
        return made

    async def licence_holders(self, app_id: str) -> list[str]:
        return sorted(self._licences.get(app_id, ()))

    async def release_licences(self, app_id: str, device_ids: Sequence[str]) -> int:
        held = self._licences.get(app_id, set())
        released = [d for d in dict.fromkeys(device_ids) if d in held]
        held.difference_update(released)
        if released:
            self._record("licence", app_id)
        return len(released)

    async def put_app(self, app: App, *, expected_rev: int | None) -> App:
        found = self._apps.get(app.id)
        stored_rev = None if found is None else found[0]
        if stored_rev != expected_rev:
            raise RevisionConflict(f"app {app.id!r}", expected_rev, stored_rev)
        stored = msgspec.structs.replace(app, rev=1 if expected_rev is None else expected_rev + 1)
        self._apps[app.id] = (stored.rev, msgspec.json.encode(stored))
        self._record("app", app.id)
        return stored

    async def get_app(self, app_id: str) -> App | None:
        found = self._apps.get(app_id)
        return None if found is None else _APP.decode(found[1])

    async def list_apps(self) -> list[App]:
        return [_APP.decode(self._apps[i][1]) for i in sorted(self._apps)]

    async def put_org(self, org: Org) -> None:
        self._orgs[org.path] = msgspec.json.encode(org)
        self._record("org", org.path)

    async def list_orgs(self) -> list[Org]:
        return [_ORG.decode(self._orgs[p]) for p in sorted(self._orgs)]

    def _check_notification(self, notification_id: str, expected_rev: int | None) -> None:
        found = self._notifications.get(notification_id)
        stored_rev = None if found is None else found[0].rev
        if stored_rev != expected_rev:
            raise RevisionConflict(f"notification {notification_id!r}", expected_rev, stored_rev)

    def _store_notification(
        self, notification: Notification, expected_rev: int | None
    ) -> Notification:
        stored = msgspec.structs.replace(
            notification, rev=1 if expected_rev is None else expected_rev + 1
        )
        # The decoded copy answers the queries; the encoding is what readers get.
        encoded = msgspec.json.encode(stored)
        self._notifications[stored.id] = (_NOTIFICATION.decode(encoded), encoded)
        return stored

    async def put_notification(
        self,
        notification: Notification,
        *,
        expected_rev: int | None = None,
        events: Sequence[NewEvent] = (),
    ) -> Notification:
        appended = checked_events(events)
        self._check_notification(notification.id, expected_rev)
        stored = self._store_notification(notification, expected_rev)
        self._append(appended)
        return stored

    async def get_notification(self, notification_id: str) -> Notification | None:
        found = self._notifications.get(notification_id)
        return None if found is None else _NOTIFICATION.decode(found[1])

    async def list_notifications(self, app_id: str | None = None) -> list[Notification]:
        found = [
            (n.created_at, n.id, encoded)
            for n, encoded in self._notifications.values()
            if app_id is None or n.app_id == app_id
        ]
        return [_NOTIFICATION.decode(encoded) for *_, encoded in sorted(found)]

    async def due_notifications(self, now: float) -> list[Notification]:
        found = [
            (n.due_at, n.created_at, n.id, encoded)
            for n, encoded in self._notifications.values()
            if n.state in _PENDING and n.due_at <= now
        ]
        return [_NOTIFICATION.decode(encoded) for *_, encoded in sorted(found)]

    async def next_due(self) -> float | None:
        pending = [n.due_at for n, _ in self._notifications.values() if n.state in _PENDING]
        return min(pending, default=None)

    async def queue_depth(self) -> int:
        return sum(
            1 for q in self._queues.values() for e in q.values() if e.delivery.state in _OPEN
        )

    # -- sessions --------------------------------------------------------------------------

    def _live_session(self, kind: str, key: str) -> StoredSession | None:
        found = self._sessions.get((kind, key))
        if found is not None and found.expires_at <= time.time():
            return None
        return found

    async def load_session(self, kind: str, key: str) -> StoredSession | None:
        return self._live_session(kind, key)

    async def device_and_session(
        self, device_id: str, kind: str, key: str
    ) -> tuple[Device | None, StoredSession | None]:
        return await self.get_device(device_id), self._live_session(kind, key)

    async def message_context(
        self, device_id: str, kind: str, key: str, *, command_id: str | None = None
    ) -> MessageContext:
        entries = self._order.get(device_id, [])
        offered = any(
            entries[i].delivery.state in _OFFERED
            for i in range(self._settled.get(device_id, 0), len(entries))
        )
        entry = None if command_id is None else self._queues.get(device_id, {}).get(command_id)
        return MessageContext(
            self._devices.get(device_id),
            self._live_session(kind, key),
            offered,
            None if entry is None else entry.delivery,
        )

    async def save_session(
        self,
        kind: str,
        key: str,
        state: bytes,
        *,
        expected_rev: int | None,
        expires_at: float,
        facts: FactsMerge | None = None,
    ) -> int:
        if expected_rev is not None:
            found = self._live_session(kind, key)
            stored_rev = None if found is None else found.rev
            if stored_rev != expected_rev:
                raise RevisionConflict(f"{kind} session {key!r}", expected_rev, stored_rev)
        rev = 1 if expected_rev is None else expected_rev + 1
        self._sessions[kind, key] = StoredSession(bytes(state), rev, expires_at)
        if facts is not None:
            self._merge(facts.device_id, facts.facts)
        return rev

    async def drop_session(self, kind: str, key: str, *, expected_rev: int | None = None) -> bool:
        found = self._live_session(kind, key)
        if found is None or (expected_rev is not None and found.rev != expected_rev):
            return False
        del self._sessions[kind, key]
        return True

    async def expire_sessions(self, now: float) -> int:
        stale = [k for k, s in self._sessions.items() if s.expires_at <= now]
        for k in stale:
            del self._sessions[k]
        return len(stale)

    # -- change feed -----------------------------------------------------------------------

    async def changes(self, after: int, limit: int) -> list[Change]:
        start = max(after, 0)
        return self._changes[start : start + max(limit, 0)]

    async def last_change(self) -> int:
        return len(self._changes)

    async def wait_for_changes(self, after: int) -> None:
        await trio.lowlevel.checkpoint()
        while len(self._changes) <= after:
            await self._changed.wait()

    # -- leases ----------------------------------------------------------------------------

    async def claim_lease(self, name: str, holder: str, *, now: float, until: float) -> bool:
        found = self._leases.get(name)
        if found is not None and found[0] != holder and found[1] > now:
            return False
        self._leases[name] = (holder, until)
        return True

    async def release_lease(self, name: str, holder: str) -> bool:
        found = self._leases.get(name)
        if found is None or found[0] != holder:
            return False
        del self._leases[name]
        return True

    async def live_leases(self, prefix: str, *, now: float) -> list[str]:
        return [
            holder
            for name, (holder, until) in sorted(self._leases.items())
            if name.startswith(prefix) and until > now
        ]

    # -- enrollment ------------------------------------------------------------------------

    async def get_material(self, name: str) -> bytes | None:
        return self._material.get(name)

    async def _store_material(self, name: str, value: bytes, replace: bool) -> bytes:
        if replace or name not in self._material:
            self._material[name] = value
        return self._material[name]

    async def _insert_token(self, token: EnrollmentToken) -> None:
        if token.id in self._tokens:
            raise token_taken(token.id)
        self._tokens[token.id] = token

    async def get_token(self, token_id: str) -> EnrollmentToken | None:
        return self._tokens.get(token_id)

    async def list_tokens(self, org: str | None = None) -> list[EnrollmentToken]:
        found = [t for t in self._tokens.values() if org is None or t.org == org]
        # Newest first; tokens made in the same instant by id.
        found.sort(key=lambda t: t.id)
        found.sort(key=lambda t: t.created_at, reverse=True)
        return found

    async def revoke_token(self, token_id: str, *, at: float) -> EnrollmentToken | None:
        token = self._tokens.get(token_id)
        if token is None or token.revoked_at is not None:
            return token
        self._tokens[token_id] = msgspec.structs.replace(token, revoked_at=float(at))
        return self._tokens[token_id]

    async def use_token(self, token_id: str, *, now: float) -> EnrollmentToken | None:
        token = self._tokens.get(token_id)
        if (
            token is None
            or token.revoked_at is not None
            or not token.expires_at > now
            or (token.max_uses is not None and token.uses >= token.max_uses)
        ):
            return None
        self._tokens[token_id] = msgspec.structs.replace(token, uses=token.uses + 1)
        return self._tokens[token_id]

    async def _claim(self, kind: str, key: str, until: float, now: float) -> bool:
        held = self._claims.get((kind, key))
        if held is not None and held > now:
            return False
        self._claims[kind, key] = until
        expired = [k for k, u in itertools.islice(self._claims.items(), 64) if u <= now]
        for k in expired[:CLAIM_SWEEP]:
            del self._claims[k]
        return True

    async def _insert_certificate(self, certificate: IssuedCertificate) -> None:
        c = certificate
        if c.serial in self._certificates or c.sha256 in self._by_sha256:
            raise certificate_taken(c.serial, c.sha256, same_serial=c.serial in self._certificates)
        self._certificates[c.serial] = c
        self._by_sha256[c.sha256] = c.serial

    async def _certificate_by(
        self, key: Literal["serial", "sha256"], value: str
    ) -> IssuedCertificate | None:
        serial = value if key == "serial" else self._by_sha256.get(value)
        return None if serial is None else self._certificates.get(serial)

    async def _certificates_after(
        self, start: tuple[int, str] | None, device_id: str | None, limit: int
    ) -> list[IssuedCertificate]:
        found = [
            c
            for c in self._certificates.values()
            if (device_id is None or c.device_id == device_id)
            and (start is None or serial_order(c.serial) > start)
        ]
        found.sort(key=lambda c: serial_order(c.serial))
        return found[:limit]

    async def bind_certificate(self, serial: str, device_id: str) -> bool:
        c = self._certificates.get(serial)
        if c is None or c.revoked_at is not None or c.device_id not in (None, device_id):
            return False
        self._certificates[serial] = msgspec.structs.replace(c, device_id=device_id)
        return True

    async def _revoke(
        self,
        reason: str,
        at: float,
        device_id: str | None,
        serial: str | None,
        events: Sequence[EncodedEvent],
    ) -> list[IssuedCertificate]:
        revoked = [
            msgspec.structs.replace(c, revoked_at=at, revocation_reason=reason)
            for c in self._certificates.values()
            if c.revoked_at is None
            and (device_id is None or c.device_id == device_id)
            and (serial is None or c.serial == serial)
        ]
        for c in revoked:
            self._certificates[c.serial] = c

        def auth_of(bound: str) -> Mapping[str, Any] | None:
            device = self._devices.get(bound)
            return None if device is None else device.auth

        # No change in the feed, as for set_auth: no index reads credentials.
        for bound, auth in auth_after_revocation(revoked, auth_of).items():
            self._devices[bound] = msgspec.structs.replace(self._devices[bound], auth=auth)
        self._append(events)
        return revoked

    async def aclose(self) -> None:
        return None
