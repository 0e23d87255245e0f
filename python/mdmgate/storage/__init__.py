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

Nothing here assumes SQLite: the PostgreSQL backend for multi-node deployments implements the
same protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

if TYPE_CHECKING:
    from mdmgate.catalogue.model import App, CommandBatch, LicenceGrant, Notification, Org

__all__ = [
    "CommandExists",
    "CommandStatus",
    "Delivery",
    "DeliveryState",
    "Device",
    "LicencesExhausted",
    "RevisionConflict",
    "Store",
    "StoreError",
    "StoredDeclaration",
    "UnknownDevices",
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


class Store(Protocol):
    """What every backend provides. All methods are async. Blocking work runs off the Trio
    thread; a backend may answer bounded point reads (a device by id) on it when that is
    cheaper than a thread round trip, as long as they never wait for a lock."""

    async def upsert_devices(self, devices: Sequence[Device]) -> int:
        """Registers or replaces devices; returns how many were written."""
        ...

    async def get_device(self, device_id: str) -> Device | None: ...

    async def get_devices(self, device_ids: Sequence[str]) -> dict[str, Device]:
        """The known devices among ``device_ids``, by id, in one round trip (unknown ids are
        left out)."""
        ...

    async def enqueue(
        self,
        command_id: str,
        kind: str,
        body: bytes,
        device_ids: Sequence[str],
        *,
        new: bool = False,
    ) -> int:
        """Stores the body once and queues it for every device, atomically: either all are
        queued or none (unknown devices raise :class:`UnknownDevices`). Returns the number of
        deliveries. Queuing the same command id again for a device already holding it is a
        no-op for that device. With ``new``, a command id the store already holds raises
        :class:`CommandExists` instead (checked in the same atomic step, so two callers
        choosing the same id cannot both succeed)."""
        ...

    async def take(
        self, device_id: str, session: str, limit: int, *, max_offers: int | None = None
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
        the device's session does not take the commands behind it down too."""
        ...

    async def record_result(
        self,
        device_id: str,
        command_id: str,
        state: DeliveryState,
        status: str | None,
        result: bytes | None,
    ) -> bool:
        """Stores the device's answer. ``state`` is ACKNOWLEDGED, ERROR, ACCEPTED or NOT_NOW
        (which also starts the offer count again). Returns False (and changes nothing) when
        the delivery is already final (a result stored, or given up), or does not exist."""
        ...

    async def command_status(self, command_id: str) -> CommandStatus | None: ...

    async def deliveries(self, device_id: str, states: Collection[DeliveryState]) -> list[Delivery]:
        """The device's deliveries in ``states``, in enqueue order (e.g. the installs a
        device accepted, to match the result it reports later)."""
        ...

    async def set_auth(self, device_id: str, auth: Mapping[str, Any]) -> bool:
        """Replaces how the device proves itself (e.g. the identity certificate bound at an
        Apple Authenticate). False when the device is unknown."""
        ...

    async def cancel_open(self, device_id: str, status: str) -> int:
        """Ends every delivery of the device not yet answered for good, as ``error`` with
        ``status`` (a device that enrolls again starts with an empty queue). Returns how
        many were ended."""
        ...

    async def put_declaration(self, declaration: StoredDeclaration) -> None:
        """Stores (or replaces, by identifier) a declaration and its targets."""
        ...

    async def get_declaration(self, identifier: str) -> StoredDeclaration | None: ...

    async def declarations_for(self, device_id: str, org: str) -> list[StoredDeclaration]:
        """The declarations targeting the device, by id or by an org path at or above
        ``org`` (``/acme`` covers ``/acme/sales``), oldest first (assignment order)."""
        ...

    async def merge_facts(self, device_id: str, facts: Mapping[str, Any]) -> bool:
        """Sets the given facts of a device in one atomic step (a key set to ``None`` is
        removed; other facts are kept). False when the device is unknown."""
        ...

    async def list_devices(self, after: str | None, limit: int) -> list[Device]:
        """Up to ``limit`` devices with ids above ``after`` (all when ``None``), in id order
        (code-point order of the id): pages through the fleet."""
        ...

    async def fan_out(
        self, batches: Sequence[CommandBatch], *, licences: LicenceGrant | None = None
    ) -> int:
        """Queues every batch (as :meth:`enqueue` would, without ``new``) and assigns the
        licences, all in one atomic step: if a device is unknown (:class:`UnknownDevices`)
        or the pool would hold fewer licences than are assigned (:class:`LicencesExhausted`),
        nothing is written. Returns the deliveries made."""
        ...

    async def licence_holders(self, app_id: str) -> list[str]:
        """Devices holding a licence of the app, in id order."""
        ...

    async def release_licences(self, app_id: str, device_ids: Sequence[str]) -> int:
        """Returns the devices' licences to the pool; returns how many were held."""
        ...

    async def put_app(self, app: App, *, expected_rev: int | None) -> App:
        """Stores ``app`` and returns it as stored, its ``rev`` set: 1 when
        ``expected_rev`` is ``None`` (the app must not exist), else ``expected_rev + 1``
        (the stored one must be at ``expected_rev``). A mismatch raises
        :class:`RevisionConflict` and changes nothing."""
        ...

    async def get_app(self, app_id: str) -> App | None: ...

    async def list_apps(self) -> list[App]:
        """Every app, in id order."""
        ...

    async def put_org(self, org: Org) -> None:
        """Creates or replaces an organisation."""
        ...

    async def list_orgs(self) -> list[Org]:
        """Organisations created through :meth:`put_org`, in path order."""
        ...

    async def put_notification(self, notification: Notification) -> None:
        """Creates or replaces (by id) a notification."""
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

    async def queue_depth(self) -> int:
        """Deliveries not yet answered for good, across all devices."""
        ...

    async def aclose(self) -> None: ...
