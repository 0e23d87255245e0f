"""A Windows device's enrolment state, kept in its facts (pure functions, no I/O).

When the user removes the work account, Windows sends Alert 1226 with the type
``com.microsoft:mdm.unenrollment.userrequest``. The gateway then marks the device unenrolled
(fact ``unenrolled``: when and why), ends its open deliveries and refuses its later sessions
until it is registered again with credentials (``POST /api/v1/devices`` with ``auth``) or
enrols again (the future enrolment service calls :func:`reenrolled` likewise).

Every change is also appended to fact ``enrollment_events`` (the last
:data:`MAX_EVENTS`, each ``{"at", "event", "reason"}``), which outlives re-registration: the
durable record until the gateway has an event log (``/api/v1/events``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mdmgate.enrollment.history import FACT_EVENTS, MAX_EVENTS, stamp, with_event
from mdmgate.syncml import Item

__all__ = [
    "FACT_EVENTS",
    "FACT_UNENROLLED",
    "MAX_EVENTS",
    "UNENROLL_ALERT",
    "UNENROLL_TYPE",
    "is_unenroll_request",
    "reenrolled",
    "unenrolled",
]

#: Present while the device is unenrolled: ``{"at": ISO 8601 UTC, "reason": ...}``.
FACT_UNENROLLED = "unenrolled"

UNENROLL_ALERT = 1226
UNENROLL_TYPE = "com.microsoft:mdm.unenrollment.userrequest"
USER_REQUEST = "user requested unenrollment (Alert 1226)"


def is_unenroll_request(code: int, items: tuple[Item, ...] | list[Item]) -> bool:
    """Whether a device Alert is the user's unenrolment request."""
    if code != UNENROLL_ALERT:
        return False
    for item in items:
        kind = (item.meta or {}).get("Type")
        kinds = kind if isinstance(kind, list) else [kind]
        if any(isinstance(k, str) and k.strip() == UNENROLL_TYPE for k in kinds):
            return True
    return False


def unenrolled(facts: Mapping[str, Any], reason: str = USER_REQUEST) -> dict[str, Any]:
    """The facts to merge to mark a device unenrolled (and record the event)."""
    now = time.time()
    return {
        FACT_UNENROLLED: {"at": stamp(now), "reason": reason},
        FACT_EVENTS: with_event(facts, "unenrolled", reason, now),
    }


def reenrolled(facts: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The facts to merge when an unenrolled device is registered or enrols again: the
    mark is removed (``None``) and the event recorded. Empty when it was not unenrolled."""
    if FACT_UNENROLLED not in facts:
        return {}
    return {
        FACT_UNENROLLED: None,
        FACT_EVENTS: with_event(facts, "re-registered", reason, time.time()),
    }
