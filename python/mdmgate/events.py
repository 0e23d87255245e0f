"""The events the gateway writes to its log (:mod:`mdmgate.storage.events`), and what each
one carries, so that every emitter and the documentation agree.

Every event is written in the same store call as the change it reports (the ``events=``
keyword of the mutating store methods, or ``take(..., delivered_event=True)``), so a console
that follows the log (``GET /api/v1/events``, webhooks) sees each change once it committed,
and only then. The constructors below build them; the store numbers them (``seq``) and
stamps them (``at``).

========================== ========== ================= ==========================================
type                       device_id  subject           data
========================== ========== ================= ==========================================
command.delivered          device     command id        ``session`` (the store's exchange name),
                                                        ``offers`` (times handed out). Written by
                                                        the store in ``take``.
command.acknowledged       device     command id        ``status`` (the device's status: OMA-DM
                                                        code, ``Acknowledged``, an install code)
command.error              device     command id        ``status`` (the device's error code or
                                                        text; ``413``: too large for the device)
command.not_now            device     command id        ``status`` (``NotNow``): offered again
                                                        after the device's next Idle
command.failed             device     command id        ``status``: given up after ``max_offers``
                                                        offers without an answer. Written by
                                                        the store in ``take``.
command.cancelled          device     command id        ``status``: ended by an administrator
                                                        before it was handed out
device.enrolled            device     --                ``platform``, ``org``, ``via``
                                                        (``windows``: MS-MDE2 with a token;
                                                        ``apple``: the TokenUpdate that completed
                                                        an MDM enrollment)
device.unenrolled          device     --                ``reason`` (the user removed the work
                                                        account, the MDM profile was removed,
                                                        an administrator retired it); its open
                                                        deliveries end with it (status
                                                        ``unenrolled``, ``checked out`` or
                                                        ``retired``), without an event each
device.checked_in          device     --                ``platform``, ``last_seen`` (Unix
                                                        seconds), ``previous`` (the one before,
                                                        or ``null``): at most one per
                                                        :data:`LAST_SEEN_RESOLUTION`
device.inventory_changed   device     --                ``added`` and ``removed`` (``identifier``,
                                                        ``version``, ``name``) and ``changed``
                                                        (``identifier``, ``from``, ``to``): the
                                                        apps that differ from the last inventory
declaration.status         device     --                ``changed``: the status items (Apple DDM)
                                                        whose value changed, nested as the
                                                        device reports them (a removed one is
                                                        ``null``); ``errors``: the report's
rollout.wave_ran           --         notification id   ``app_id``, ``wave`` (from 1),
                                                        ``devices`` (sent the command in this
                                                        wave), ``command_ids`` (new in it),
                                                        ``state`` (``running`` or ``done``),
                                                        ``counts`` (devices per outcome, all
                                                        waves so far)
rollout.finished           --         notification id   ``app_id``, ``state`` (``done``,
                                                        ``failed``, ``cancelled``), ``waves``,
                                                        ``counts``, ``error``
licences.exhausted         --         app id            ``notification_id``, ``total`` (the
                                                        pool), ``without_licence`` (devices
                                                        left without one): with a roll-out's
                                                        first wave when the pool is short, or
                                                        a wave refused because other
                                                        roll-outs took the licences meanwhile
========================== ========== ================= ==========================================

A type filter (:func:`check_types`) names types exactly, or a family with ``.*``
(``command.*``).

A roll-out wave that queues commands is written by the store's ``fan_out`` (deliveries,
licences and the notification in one step), and its ``rollout.wave_ran`` (with
``rollout.finished`` and ``licences.exhausted`` when they apply) in that same step; a wave
that queues nothing, a failure and a cancel are written by ``put_notification`` with theirs.
A wave refused because its licences ran out meanwhile writes only ``licences.exhausted``
(the next wave evaluates again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mdmgate.catalogue.model import Notification
from mdmgate.storage import DeliveryState, Device, DeviceStore
from mdmgate.storage.events import NewEvent

__all__ = [
    "COMMAND_ACKNOWLEDGED",
    "COMMAND_CANCELLED",
    "COMMAND_DELIVERED",
    "COMMAND_ERROR",
    "COMMAND_FAILED",
    "COMMAND_NOT_NOW",
    "DECLARATION_STATUS",
    "DEVICE_CHECKED_IN",
    "DEVICE_ENROLLED",
    "DEVICE_INVENTORY_CHANGED",
    "DEVICE_UNENROLLED",
    "EVENT_TYPES",
    "FACT_LAST_SEEN",
    "LAST_SEEN_RESOLUTION",
    "LICENCES_EXHAUSTED",
    "ROLLOUT_FINISHED",
    "ROLLOUT_WAVE_RAN",
    "UnknownEventType",
    "check_in",
    "check_types",
    "command_answered",
    "command_cancelled",
    "declaration_status",
    "device_enrolled",
    "device_unenrolled",
    "inventory_changed",
    "licences_exhausted",
    "record_check_in",
    "rollout_finished",
    "rollout_wave_ran",
]

COMMAND_DELIVERED = "command.delivered"
COMMAND_ACKNOWLEDGED = "command.acknowledged"
COMMAND_ERROR = "command.error"
COMMAND_NOT_NOW = "command.not_now"
COMMAND_FAILED = "command.failed"
COMMAND_CANCELLED = "command.cancelled"
DEVICE_ENROLLED = "device.enrolled"
DEVICE_UNENROLLED = "device.unenrolled"
DEVICE_CHECKED_IN = "device.checked_in"
DEVICE_INVENTORY_CHANGED = "device.inventory_changed"
DECLARATION_STATUS = "declaration.status"
ROLLOUT_WAVE_RAN = "rollout.wave_ran"
ROLLOUT_FINISHED = "rollout.finished"
LICENCES_EXHAUSTED = "licences.exhausted"

#: Every type the gateway writes, in the order of the table above.
EVENT_TYPES: tuple[str, ...] = (
    COMMAND_DELIVERED,
    COMMAND_ACKNOWLEDGED,
    COMMAND_ERROR,
    COMMAND_NOT_NOW,
    COMMAND_FAILED,
    COMMAND_CANCELLED,
    DEVICE_ENROLLED,
    DEVICE_UNENROLLED,
    DEVICE_CHECKED_IN,
    DEVICE_INVENTORY_CHANGED,
    DECLARATION_STATUS,
    ROLLOUT_WAVE_RAN,
    ROLLOUT_FINISHED,
    LICENCES_EXHAUSTED,
)
_FAMILIES = frozenset(t.split(".")[0] for t in EVENT_TYPES)

#: The fact a device's last check-in is kept in: Unix seconds (the device listing filters
#: on it; :data:`mdmgate.devices.service.FACT_LAST_SEEN` names the same fact).
FACT_LAST_SEEN = "last_seen"

#: Seconds ``last_seen`` may lag behind: a check-in writes it (and a ``device.checked_in``
#: event) only when the stored one is at least this old. One device session is several
#: messages within seconds (an OMA-DM package exchange, an Apple Idle and its answers):
#: writing on every message would double the writes of the devices' hot path. A minute is
#: finer than anything a console shows or filters a fleet by ("seen in the last hour"), and
#: bounds the cost at one write per device per minute, however chatty the device.
LAST_SEEN_RESOLUTION = 60.0

_ANSWERS = {
    DeliveryState.ACKNOWLEDGED: COMMAND_ACKNOWLEDGED,
    DeliveryState.ERROR: COMMAND_ERROR,
    DeliveryState.NOT_NOW: COMMAND_NOT_NOW,
}


class UnknownEventType(ValueError):
    """A type filter naming no event type the gateway writes."""

    def __init__(self, given: str) -> None:
        known = ", ".join(EVENT_TYPES)
        super().__init__(
            f"unknown event type {given!r}: name one of {known}, or a family as command.*"
        )
        self.given = given


def check_types(given: Iterable[str]) -> list[str]:
    """The type filter ``given`` (exact types, or ``family.*``), each once, in order;
    :class:`UnknownEventType` for one the gateway never writes."""
    checked: dict[str, None] = {}
    for name in given:
        family, dot, rest = name.partition(".")
        known = name in EVENT_TYPES or (dot and rest == "*" and family in _FAMILIES)
        if not known:
            raise UnknownEventType(name)
        checked[name] = None
    return list(checked)


def command_answered(
    device_id: str, command_id: str, state: DeliveryState, status: str | None
) -> list[NewEvent]:
    """The event of a device's answer stored as ``state``: none for ``accepted`` (the
    outcome comes later, as its own answer)."""
    found = _ANSWERS.get(state)
    if found is None:
        return []
    data = {"status": _scrub(status)}
    return [NewEvent(found, device_id=device_id, subject=command_id, data=data)]


def command_cancelled(device_id: str, command_id: str, status: str) -> NewEvent:
    return NewEvent(
        COMMAND_CANCELLED, device_id=device_id, subject=command_id, data={"status": status}
    )


def device_enrolled(device_id: str, *, platform: str, org: str, via: str) -> NewEvent:
    return NewEvent(
        DEVICE_ENROLLED, device_id=device_id, data={"platform": platform, "org": org, "via": via}
    )


def device_unenrolled(device_id: str, *, reason: str) -> NewEvent:
    return NewEvent(DEVICE_UNENROLLED, device_id=device_id, data={"reason": reason})


def check_in(device: Device, now: float) -> tuple[dict[str, Any], NewEvent] | None:
    """What a message from ``device`` at ``now`` writes: the ``last_seen`` fact and its
    ``device.checked_in`` event, or ``None`` while the stored ``last_seen`` is within
    :data:`LAST_SEEN_RESOLUTION` of ``now`` (a clock that went back that far counts as
    stale too). To be merged in one call (``feed=False``: no index reads it)."""
    stored = device.facts.get(FACT_LAST_SEEN)
    previous = stored if _is_time(stored) else None
    if previous is not None and abs(now - previous) < LAST_SEEN_RESOLUTION:
        return None
    seen = int(now)
    event = NewEvent(
        DEVICE_CHECKED_IN,
        device_id=device.id,
        data={"platform": device.platform, "last_seen": seen, "previous": previous},
    )
    return {FACT_LAST_SEEN: seen}, event


async def record_check_in(store: DeviceStore, device: Device, now: float) -> None:
    """Writes :func:`check_in`'s fact and event, when due, in one call (kept off the
    change feed: no index reads ``last_seen``)."""
    seen = check_in(device, now)
    if seen is not None:
        facts, event = seen
        await store.merge_facts(device.id, facts, feed=False, events=[event])


def inventory_changed(
    device_id: str, old: object, new: Sequence[Mapping[str, Any]]
) -> NewEvent | None:
    """The event of an inventory (fact ``apps``: entries with ``identifier``, ``version``,
    ``name``) going from ``old`` to ``new``; ``None`` when no app was added, removed or
    changed version. An app listed twice (Windows: in the user and the device scope) counts
    once, as listed first."""
    before = _by_identifier(old if isinstance(old, list) else [])
    after = _by_identifier(new)
    added = [_app(entry) for key, entry in after.items() if key not in before]
    removed = [_app(entry) for key, entry in before.items() if key not in after]
    changed = [
        {"identifier": key, "from": before[key].get("version"), "to": entry.get("version")}
        for key, entry in after.items()
        if key in before and before[key].get("version") != entry.get("version")
    ]
    if not (added or removed or changed):
        return None
    return NewEvent(
        DEVICE_INVENTORY_CHANGED,
        device_id=device_id,
        data=_scrub({"added": added, "removed": removed, "changed": changed}),
    )


def declaration_status(
    device_id: str, old: object, new: Mapping[str, Any], errors: object
) -> NewEvent:
    """The event of a DDM status report that took the device's status items from ``old``
    to ``new`` (written with the report, only when the stored status changes): the items
    whose value changed, and the report's errors."""
    changed = _changed(old if isinstance(old, dict) else {}, new)
    reported = errors if isinstance(errors, list) else []
    return NewEvent(
        DECLARATION_STATUS,
        device_id=device_id,
        data={"changed": _scrub(changed), "errors": _scrub(reported)},
    )


def rollout_wave_ran(
    before: Notification,
    after: Notification,
    *,
    devices: int,
    without_licence: int,
    licence_total: int | None,
) -> list[NewEvent]:
    """The events of a wave that took a roll-out from ``before`` to ``after`` and sent the
    command to ``devices`` devices: ``rollout.wave_ran``; ``rollout.finished`` when it was
    the last; ``licences.exhausted`` when it is the first wave and its evaluation left
    ``without_licence`` devices without a licence of the pool (later waves evaluate the
    same pool: they would report the same shortage again)."""
    found = [
        NewEvent(
            ROLLOUT_WAVE_RAN,
            subject=after.id,
            data={
                "app_id": after.app_id,
                "wave": after.waves,
                "devices": devices,
                "command_ids": [c for c in after.command_ids if c not in before.command_ids],
                "state": after.state,
                "counts": dict(after.counts),
            },
        )
    ]
    if after.state not in ("scheduled", "running"):
        found.append(rollout_finished(after))
    if before.waves == 0 and without_licence:
        found.append(
            licences_exhausted(
                after.app_id,
                notification_id=after.id,
                total=licence_total or 0,
                without_licence=without_licence,
            )
        )
    return found


def rollout_finished(notification: Notification) -> NewEvent:
    """The event of a roll-out stored in a final state (done, failed, cancelled)."""
    return NewEvent(
        ROLLOUT_FINISHED,
        subject=notification.id,
        data={
            "app_id": notification.app_id,
            "state": notification.state,
            "waves": notification.waves,
            "counts": dict(notification.counts),
            "error": notification.error,
        },
    )


def licences_exhausted(
    app_id: str, *, notification_id: str, total: int, without_licence: int
) -> NewEvent:
    return NewEvent(
        LICENCES_EXHAUSTED,
        subject=app_id,
        data={
            "notification_id": notification_id,
            "total": total,
            "without_licence": without_licence,
        },
    )


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _scrub(value: Any) -> Any:
    """``value`` with U+0000 in its texts (keys too) replaced by U+FFFD: devices can send it
    (binary plists, JSON), the event log cannot keep it, and one odd byte in an app's name
    must not fail the device's whole exchange."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _by_identifier(entries: Iterable[object]) -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for entry in entries:
        if isinstance(entry, Mapping) and isinstance(entry.get("identifier"), str):
            found.setdefault(entry["identifier"], entry)
    return found


def _app(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "identifier": entry["identifier"],
        "version": entry.get("version"),
        "name": entry.get("name"),
    }


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``new`` whose value differs from ``old``'s, nested objects compared key
    by key; a key ``new`` no longer has is ``None``."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = _changed(before, value)
            if inner:
                out[key] = inner
        elif key not in old or before != value:
            out[key] = value
    for key in old:
        if key not in new:
            out[key] = None
    return out
