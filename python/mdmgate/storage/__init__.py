"""Storage for devices and their command queues, behind one interface.

Every backend passes the same conformance suite (``tests/test_storage.py``). The interface
speaks in domain terms (devices, commands, per-device deliveries) and promises what the
protocol layers rely on:

* a command body is stored once, however many devices it is queued for, and queuing it for
  many devices is one atomic, set-based operation;
* once :meth:`Store.enqueue` has returned, the command survives a crash (durable backends);
* each device sees its queue in enqueue order; a delivery moves ``queued`` -> ``sent`` (in a
  session) -> ``acknowledged`` / ``error``, or ``not_now`` (offered again later), or
  ``accepted`` (the device will report the outcome later; not offered again);
* deliveries sent in a session whose result never came are offered again (at-least-once),
  up to a cap the caller may set: then they end ``failed`` (a command that crashes the device
  or whose answer cannot be read must not break every later session);
* results are stored once per (command, device): a repeated report changes nothing.

Nothing here assumes SQLite or a single writer: several gateway nodes share one PostgreSQL
database, and every promise below holds for concurrent writers. The interface is split into
roles (:class:`DeviceStore`, :class:`QueueStore`, ...); :class:`Store` is their union.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from mdmgate.storage.enrollment import EnrollmentStore, EnrollmentToken, IssuedCertificate
from mdmgate.storage.events import (
    ApiToken,
    ApiTokenStore,
    Event,
    EventStore,
    NewEvent,
    Webhook,
    WebhookFailure,
    WebhookStore,
)

if TYPE_CHECKING:
    from mdmgate.catalogue.model import App, CommandBatch, LicenceGrant, Notification, Org

__all__ = [
    "ApiToken",
    "ApiTokenStore",
    "CatalogueStore",
    "Change",
    "ChangeFeed",
    "CommandExists",
    "CommandStatus",
    "CommandSummary",
    "DeclarationStore",
    "Delivery",
    "DeliveryState",
    "Device",
    "DeviceStore",
    "EnrollmentStore",
    "EnrollmentToken",
    "Event",
    "EventStore",
    "FactsMerge",
    "IssuedCertificate",
    "LeaseStore",
    "LicencesExhausted",
    "MessageContext",
    "NewEvent",
    "NotificationStore",
    "QueueStore",
    "RevisionConflict",
    "SessionStore",
    "Store",
    "StoreError",
    "StoredDeclaration",
    "StoredSession",
    "UnknownDevices",
    "Webhook",
    "WebhookFailure",
    "WebhookStore",
    "fan_out_devices",
    "offers_exhausted",
    "org_covers",
]


class DeliveryState(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    #: The device took the command and will report its outcome later (OMA-DM Status 202,
    #: e.g. an app install finishing with Alert 1226): not offered again, still open.
    ACCEPTED = "accepted"
    ACKNOWLEDGED = "acknowledged"
    ERROR = "error"
    NOT_NOW = "not_now"
    #: Given up by the gateway: handed out ``max_offers`` times without any answer (the
    #: device crashed on it, cut the session, or its answer could not be read); the status
    #: says so. Final, like ``acknowledged`` and ``error``.
    FAILED = "failed"

    @property
    def final(self) -> bool:
        """Whether the delivery is over: answered for good, or given up."""
        return self in (DeliveryState.ACKNOWLEDGED, DeliveryState.ERROR, DeliveryState.FAILED)


class StoreError(Exception):
    """A storage operation that cannot be carried out as asked."""


class CommandExists(StoreError):
    """``enqueue(..., new=True)`` for a command id the store already holds."""

    def __init__(self, command_id: str) -> None:
        super().__init__(f"command id {command_id!r} is taken")
        self.command_id = command_id


class RevisionConflict(StoreError):
    """A replacement based on a revision that is no longer the stored one (someone else
    changed the record in between), or the creation of a record that exists."""

    def __init__(self, what: str, expected: int | None, stored: int | None) -> None:
        if expected is None:
            message = f"{what} exists already (revision {stored})"
        elif stored is None:
            message = f"{what} does not exist"
        else:
            message = f"{what} is at revision {stored}, not {expected}: it changed meanwhile"
        super().__init__(message)
        self.expected = expected
        self.stored = stored


class LicencesExhausted(StoreError):
    """A licence grant that would assign more licences of an app than its pool holds."""

    def __init__(self, app_id: str, total: int, needed: int) -> None:
        super().__init__(
            f"app {app_id!r}: {needed} licence(s) would be assigned, the pool holds {total}"
        )
        self.app_id = app_id
        self.total = total
        self.needed = needed


class UnknownDevices(StoreError, LookupError):
    """Devices named in an operation that the store does not know."""

    def __init__(self, device_ids: Sequence[str]) -> None:
        shown = ", ".join(device_ids[:5]) + (" ..." if len(device_ids) > 5 else "")
        super().__init__(f"{len(device_ids)} unknown device(s): {shown}")
        self.device_ids = list(device_ids)


class Device(msgspec.Struct, frozen=True):
    # A Struct: built in C on every device read, several times faster than a dataclass.
    id: str
    platform: str
    org: str = "/"
    os_version: str | None = None
    supervised: bool | None = None
    auth: dict[str, Any] = msgspec.field(default_factory=dict)
    facts: dict[str, Any] = msgspec.field(default_factory=dict)


class StoredDeclaration(msgspec.Struct, frozen=True):
    """A declaration (Apple DDM) and whom it is assigned to."""

    identifier: str
    type: str
    payload: dict[str, Any]
    server_token: str
    devices: tuple[str, ...] = ()
    orgs: tuple[str, ...] = ()
    #: Assignment order: set by the store when first stored.
    seq: int = 0


def offers_exhausted(offers: int) -> str:
    """The status of a delivery given up after ``offers`` offers without an answer."""
    return f"offered {offers} times without an answer"


def fan_out_devices(batches: Sequence[CommandBatch], licences: LicenceGrant | None) -> list[str]:
    """Every device a fan-out names (its batches', then its licence grant's), each once, in
    first-named order: what must be known before anything is written."""
    named: dict[str, None] = {}
    for batch in batches:
        named.update(dict.fromkeys(batch.device_ids))
    if licences is not None:
        named.update(dict.fromkeys(licences.device_ids))
    return list(named)


def org_covers(target: str, org: str) -> bool:
    """Whether org path ``target`` is ``org`` or one of its ancestors."""
    target = target.rstrip("/") or "/"
    return target in ("/", org) or org.startswith(target + "/")


@dataclass(frozen=True)
class Delivery:
    """One command on one device's queue."""

    command_id: str
    device_id: str
    kind: str
    body: bytes
    state: DeliveryState
    session: str | None = None
    result: bytes | None = None
    status: str | None = None
    #: How many times :meth:`Store.take` handed it out (a NotNow answer starts the count
    #: again); more than one while unanswered means the earlier offers got no answer.
    offers: int = 0


@dataclass(frozen=True)
class CommandStatus:
    command_id: str
    kind: str
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True)
class CommandSummary:
    """A command and how far it got: deliveries by state name."""

    command_id: str
    kind: str
    #: Queue order across commands (the store's own numbering, increasing).
    seq: int
    #: Unix time it was first queued.
    created_at: float
    counts: dict[str, int]
    body: bytes


class StoredSession(msgspec.Struct, frozen=True):
    """A protocol exchange between two device messages, as its engine serialized it."""

    state: bytes
    #: Compare-and-set revision: 1 when first saved.
    rev: int
    #: Unix time (the wall clock every node shares, not a process's monotonic clock) from
    #: which it is stale: expired once ``expires_at <= now``.
    expires_at: float


class MessageContext(msgspec.Struct, frozen=True):
    """What a device's message needs first (:meth:`SessionStore.message_context`)."""

    device: Device | None
    session: StoredSession | None
    #: Whether the device has a delivery ``take`` could hand out, to this session or any
    #: other: when not, a message that changes nothing in the queue needs no ``take``.
    offered: bool
    #: The delivery the message answers, when asked for (``get_delivery``).
    delivery: Delivery | None = None


class FactsMerge(msgspec.Struct, frozen=True):
    """Facts of one device, merged as :meth:`DeviceStore.merge_facts` with ``feed=False``
    merges them: protocol bookkeeping (an OMA-DM nonce rotated in the message) saved with
    the session it belongs to, in one write instead of two."""

    device_id: str
    facts: Mapping[str, Any]


class Change(msgspec.Struct, frozen=True):
    """One entry of the change feed: something a node's in-process index derives from
    changed (``kind`` ``device``: a device's fields or facts, ``key`` its id; ``org``: an
    organisation, ``key`` its path; ``app``: an app, ``key`` its id; ``licence``: an app's
    licence holders, ``key`` the app id)."""

    seq: int
    kind: str
    key: str


class DeviceStore(Protocol):
    """Devices: who they are, how they prove themselves, and what they reported. Every
    operation stays inside one device's row, except the bulk reads and ``upsert_devices``."""

    async def upsert_devices(
        self, devices: Sequence[Device], *, events: Sequence[NewEvent] = ()
    ) -> int:
        """Registers or replaces devices; returns how many were written. Records a
        ``device`` change for each. ``events`` are appended in the same transaction."""
        ...

    async def get_device(self, device_id: str) -> Device | None: ...

    async def get_devices(self, device_ids: Sequence[str]) -> dict[str, Device]:
        """The known devices among ``device_ids``, by id, in one round trip (unknown ids are
        left out)."""
        ...

    async def list_devices(self, after: str | None, limit: int) -> list[Device]:
        """Up to ``limit`` devices with ids above ``after`` (all when ``None``), in id order
        (code-point order of the id): pages through the fleet."""
        ...

    async def set_auth(
        self, device_id: str, auth: Mapping[str, Any], *, events: Sequence[NewEvent] = ()
    ) -> bool:
        """Replaces how the device proves itself (e.g. the identity certificate bound at an
        Apple Authenticate). Records no change (no index reads credentials). False when the
        device is unknown. ``events`` are appended in the same transaction (not when False)."""
        ...

    async def merge_facts(
        self,
        device_id: str,
        facts: Mapping[str, Any],
        *,
        feed: bool = True,
        events: Sequence[NewEvent] = (),
    ) -> bool:
        """Sets the given facts of a device in one atomic step (a key set to ``None`` is
        removed; other facts are kept). Concurrent merges of different keys, from any
        connection or process, all survive (no read-modify-write in the caller or the
        backend). Records a ``device`` change, unless ``feed`` is False: protocol bookkeeping
        no index derives anything from (an OMA-DM nonce, rotated in every session) must not
        make every node re-read the device. False when the device is unknown. ``events`` are
        appended in the same transaction (not when False), with or without ``feed``."""
        ...

    async def update_device(
        self, device_id: str, fields: Mapping[str, Any], *, events: Sequence[NewEvent] = ()
    ) -> bool:
        """Sets some of a device's own fields (``org`` and ``platform``: str;
        ``os_version``: str or None; ``supervised``: bool or None; any other name, or a value
        of another type, raises ``ValueError``) in one atomic step, keeping
        its auth and facts as they are at that moment (an OS version reported at check-in
        must not undo a fact merged meanwhile). Records a ``device`` change. False when the
        device is unknown. ``events`` are appended in the same transaction (not when False)."""
        ...


class QueueStore(Protocol):
    """Per-device command queues. Every operation but ``enqueue`` (one body, many devices),
    ``command_status`` and ``queue_depth`` stays inside one device's deliveries, so the
    queue can be partitioned by device id without changing this contract."""

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
        """Stores the body once and queues it for every device, atomically: either all are
        queued or none (unknown devices raise :class:`UnknownDevices`). Returns the number of
        deliveries. Queuing the same command id again for a device already holding it is a
        no-op for that device. With ``new``, a command id the store already holds raises
        :class:`CommandExists` instead (checked in the same atomic step, so two callers
        choosing the same id cannot both succeed). ``events`` are appended in the same
        transaction (none when it raises)."""
        ...

    async def take(
        self,
        device_id: str,
        session: str,
        limit: int,
        *,
        max_offers: int | None = None,
        delivered_event: bool = False,
    ) -> list[Delivery]:
        """Marks up to ``limit`` deliveries as sent in ``session`` and returns them, in
        enqueue order: queued ones, and ``sent``/``not_now`` ones from an earlier session
        (sent without a result, or deferred by the device). What this session was already
        given, or what the device deferred in it, is not handed out again. Each one handed
        out counts one more offer (:attr:`Delivery.offers`, in the same atomic step).

        With ``max_offers`` (at least 1): a delivery already handed out ``max_offers``
        times without an answer ends :attr:`DeliveryState.FAILED` with the status
        ``"offered N times without an answer"`` instead; and one handed out before without
        an answer (a retry: offers > 0) is handed out alone, as the only delivery of the
        call, or not in this call when others come before it, so that a command that kills
        the device's session does not take the commands behind it down too.

        Exclusive under concurrent callers: two sessions of the same device taking at once,
        on any connection or process, never get the same delivery from one round of calls
        (a per-device lock or row locks; the order of the device's queue is kept).

        With ``delivered_event``, the same transaction appends a ``command.failed`` event
        (``data``: ``{"status": ...}``) for each delivery it gave up on, then a
        ``command.delivered`` event (``data``: ``{"session": ..., "offers": ...}``) for each
        one handed out, in queue order, ``device_id`` the device and ``subject`` the
        command id."""
        ...

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
        """Stores the device's answer. ``state`` is ACKNOWLEDGED, ERROR, ACCEPTED or NOT_NOW
        (which also starts the offer count again). Returns False (and changes nothing) when
        the delivery is already final (a result stored, or given up), or does not exist.
        ``events`` are appended in the same transaction, only when the answer is stored (a
        repeated report appends nothing)."""
        ...

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
        """:meth:`record_result` and then :meth:`take` for the same device: what an Apple
        device's report and the next command cost. A backend may do both in one
        transaction (one durable write per exchange); the outcome is as if called in turn.
        Returns ``record_result``'s answer and ``take``'s deliveries."""
        ...

    async def command_status(self, command_id: str) -> CommandStatus | None: ...

    async def deliveries(self, device_id: str, states: Collection[DeliveryState]) -> list[Delivery]:
        """The device's deliveries in ``states``, in enqueue order (e.g. the installs a
        device accepted, to match the result it reports later)."""
        ...

    async def get_delivery(self, device_id: str, command_id: str) -> Delivery | None:
        """One delivery by its key, whatever its state (the command a device reports on:
        a point read, however long the device's queue is)."""
        ...

    async def cancel_open(
        self, device_id: str, status: str, *, events: Sequence[NewEvent] = ()
    ) -> int:
        """Ends every delivery of the device not yet answered for good, as ``error`` with
        ``status`` (a device that enrolls again starts with an empty queue). Returns how
        many were ended. ``events`` are appended in the same transaction."""
        ...

    async def queue_depth(self) -> int:
        """Deliveries not yet answered for good, across all devices."""
        ...

    async def list_commands(
        self,
        *,
        after: str | None = None,
        limit: int = 100,
        device_id: str | None = None,
        kind: str | None = None,
    ) -> list[CommandSummary]:
        """Commands in the order they were first queued (:attr:`CommandSummary.seq`),
        those after the command ``after`` (a command id; unknown: from the start), of
        ``device_id`` / ``kind`` when given, with their delivery counts by state."""
        ...

    async def cancel_deliveries(
        self,
        command_id: str,
        device_ids: Sequence[str] | None,
        status: str,
        *,
        events: Sequence[NewEvent] = (),
    ) -> list[str]:
        """Ends the command's deliveries that were never handed out or were deferred
        (``queued``, ``not_now``) for ``device_ids`` (all when ``None``) as ``error`` with
        ``status``, in one atomic step with ``events`` (one ``command.cancelled`` per
        device is the caller's to pass; the store adds nothing). Deliveries already sent,
        accepted or final are left alone. Returns the devices whose delivery was ended, in
        the order the command was queued for them (none for an unknown command).

        Of ``events``, those about a device (``device_id`` set) whose delivery was not
        ended are not appended: one handed out between the caller's look and this call
        reports no cancellation it did not get."""
        ...


class DeclarationStore(Protocol):
    """Apple declarative-management declarations and whom they target."""

    async def put_declaration(self, declaration: StoredDeclaration) -> None:
        """Stores (or replaces, by identifier) a declaration and its targets."""
        ...

    async def get_declaration(self, identifier: str) -> StoredDeclaration | None: ...

    async def declarations_for(self, device_id: str, org: str) -> list[StoredDeclaration]:
        """The declarations targeting the device, by id or by an org path at or above
        ``org`` (``/acme`` covers ``/acme/sales``), oldest first (assignment order)."""
        ...


class CatalogueStore(Protocol):
    """Apps, organisations and licence pools; ``fan_out`` queues a roll-out's commands."""

    async def put_app(self, app: App, *, expected_rev: int | None) -> App:
        """Stores ``app`` and returns it as stored, its ``rev`` set: 1 when
        ``expected_rev`` is ``None`` (the app must not exist), else ``expected_rev + 1``
        (the stored one must be at ``expected_rev``). A mismatch raises
        :class:`RevisionConflict` and changes nothing. Records an ``app`` change."""
        ...

    async def get_app(self, app_id: str) -> App | None: ...

    async def list_apps(self) -> list[App]:
        """Every app, in id order."""
        ...

    async def put_org(self, org: Org) -> None:
        """Creates or replaces an organisation. Records an ``org`` change."""
        ...

    async def list_orgs(self) -> list[Org]:
        """Organisations created through :meth:`put_org`, in path order."""
        ...

    async def fan_out(
        self,
        batches: Sequence[CommandBatch],
        *,
        licences: LicenceGrant | None = None,
        notification: Notification | None = None,
        expected_rev: int | None = None,
        events: Sequence[NewEvent] = (),
    ) -> int:
        """Queues every batch (as :meth:`enqueue` would, without ``new``) and assigns the
        licences, all in one atomic step: if a device is unknown (:class:`UnknownDevices`)
        or the pool would hold fewer licences than are assigned (:class:`LicencesExhausted`),
        nothing is written. With ``notification``, it is stored in the same step as
        :meth:`NotificationStore.put_notification` with ``expected_rev`` would
        (:class:`RevisionConflict`: nothing is written), so a wave's deliveries and the
        counts it adds land together or not at all. ``events`` (the wave's report) are
        appended in that step too: whenever it returns, also when every device held its
        command already, and never when it raises. Returns the deliveries made.

        Crosses devices. Licence grants never exceed the pool under concurrent fan-outs
        from any number of connections or processes (the pool is locked, not counted
        after the fact). Records a ``licence`` change for the app when licences move."""
        ...

    async def licence_holders(self, app_id: str) -> list[str]:
        """Devices holding a licence of the app, in id order."""
        ...

    async def release_licences(self, app_id: str, device_ids: Sequence[str]) -> int:
        """Returns the devices' licences to the pool; returns how many were held. Records a
        ``licence`` change for the app when any was held."""
        ...


class NotificationStore(Protocol):
    """Install notifications and automatic-update runs, with compare-and-set revisions."""

    async def put_notification(
        self,
        notification: Notification,
        *,
        expected_rev: int | None = None,
        events: Sequence[NewEvent] = (),
    ) -> Notification:
        """Stores ``notification`` and returns it as stored, its ``rev`` set: 1 when
        ``expected_rev`` is ``None`` (it must not exist), else ``expected_rev + 1`` (the
        stored one must be at ``expected_rev``). A mismatch raises :class:`RevisionConflict`
        and changes nothing: a cancel that lands while a wave runs is never overwritten by
        the wave's stale copy. ``events`` are appended in the same transaction (none on a
        conflict)."""
        ...

    async def get_notification(self, notification_id: str) -> Notification | None: ...

    async def list_notifications(self, app_id: str | None = None) -> list[Notification]:
        """Notifications (of one app), oldest ``created_at`` first."""
        ...

    async def due_notifications(self, now: float) -> list[Notification]:
        """``scheduled`` or ``running`` notifications with ``due_at <= now``, earliest
        first."""
        ...

    async def next_due(self) -> float | None:
        """The earliest ``due_at`` of a ``scheduled`` or ``running`` notification."""
        ...


class SessionStore(Protocol):
    """Protocol state between two device messages (an OMA-DM session, an Apple command
    exchange), so that any node can answer any message: ``kind`` names the protocol
    (``omadm``, ``apple``), ``key`` the exchange (e.g. device id and SessionID)."""

    async def load_session(self, kind: str, key: str) -> StoredSession | None:
        """The saved state, or ``None`` (never saved, dropped, or expired)."""
        ...

    async def device_and_session(
        self, device_id: str, kind: str, key: str
    ) -> tuple[Device | None, StoredSession | None]:
        """``get_device(device_id)`` and ``load_session(kind, key)`` together: a device's
        message needs both first, and a server database answers both in one round trip."""
        ...

    async def message_context(
        self, device_id: str, kind: str, key: str, *, command_id: str | None = None
    ) -> MessageContext:
        """``device_and_session`` and whether anything is offered to the device, and with
        ``command_id`` that delivery of the device (``get_delivery``), together: one read
        (one round trip to a server database) for what a device's message needs first."""
        ...

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
        """Saves the state and returns its new revision: 1 when ``expected_rev`` is
        ``None`` (a new exchange; one already saved under the key is replaced, whatever its
        revision: a device that opens a new session supersedes its stale one), else
        ``expected_rev + 1`` (the saved one must be at ``expected_rev``: two nodes that
        answered the same message cannot both save; the loser gets
        :class:`RevisionConflict`). ``facts`` are merged in the same transaction, or not at
        all: not when the save conflicts (the node that won wrote its own), and not when
        the device is unknown (the session is saved all the same)."""
        ...

    async def drop_session(self, kind: str, key: str, *, expected_rev: int | None = None) -> bool:
        """Removes the state (only at ``expected_rev`` when given). True when it was there."""
        ...

    async def expire_sessions(self, now: float) -> int:
        """Drops every state whose ``expires_at`` has passed; returns how many."""
        ...


class ChangeFeed(Protocol):
    """A monotonically numbered log of the changes in-process indexes follow (the fleet
    index of every node): written in the same transaction as the change itself, so a
    reader that has applied every change up to ``seq`` and reads the store's state is
    current as of ``seq``."""

    async def changes(self, after: int, limit: int) -> list[Change]:
        """Up to ``limit`` changes with ``seq > after``, in ``seq`` order."""
        ...

    async def last_change(self) -> int:
        """The highest ``seq`` so far (0 before any change)."""
        ...

    async def wait_for_changes(self, after: int) -> None:
        """Returns once a change with ``seq > after`` exists (at once if one does).
        PostgreSQL is woken by LISTEN/NOTIFY; other backends poll or wake in-process.
        Cancellable."""
        ...


class LeaseStore(Protocol):
    """Time-bounded claims: exactly one node runs a due roll-out wave, and nodes announce
    that they are alive (``node:...`` leases) so a budget can be shared among them."""

    async def claim_lease(self, name: str, holder: str, *, now: float, until: float) -> bool:
        """Takes (or renews) the lease ``name`` for ``holder`` until ``until``: True when
        nobody else holds it at ``now`` (free, expired, or already ``holder``'s), in one
        atomic step, so that of two nodes claiming at once exactly one wins."""
        ...

    async def release_lease(self, name: str, holder: str) -> bool:
        """Gives the lease up if ``holder`` holds it."""
        ...

    async def live_leases(self, prefix: str, *, now: float) -> list[str]:
        """The holders of unexpired leases (``until > now``) whose names start with
        ``prefix``, in no particular order."""
        ...


class Store(
    DeviceStore,
    QueueStore,
    DeclarationStore,
    CatalogueStore,
    NotificationStore,
    SessionStore,
    ChangeFeed,
    LeaseStore,
    EnrollmentStore,
    EventStore,
    WebhookStore,
    ApiTokenStore,
    Protocol,
):
    """What every backend provides: the union of the roles. A consumer names the roles it
    uses. All methods are async; blocking work runs off the Trio thread (a backend may
    answer bounded point reads on it when that is cheaper, as long as they never wait for
    a lock). Every promise holds for concurrent writers, from several connections and
    processes: none rests on one backend having a single writer.
    """

    async def aclose(self) -> None: ...
