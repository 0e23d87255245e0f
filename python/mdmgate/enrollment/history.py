"""A device's enrollment history, kept in its facts (pure functions): fact
``enrollment_events``, the last :data:`MAX_EVENTS` changes, each ``{"at", "event",
"reason"}`` (``enrolled``, ``unenrolled``, ``re-registered``), oldest first. It outlives
re-registration and re-enrollment: the durable record until the gateway has an event log."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

__all__ = ["FACT_EVENTS", "MAX_EVENTS", "stamp", "with_event"]

FACT_EVENTS = "enrollment_events"
MAX_EVENTS = 20


def stamp(at: float) -> str:
    """Unix time as ISO 8601 UTC, to the second."""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_event(facts: Mapping[str, Any], event: str, reason: str, at: float) -> list[Any]:
    """The value of :data:`FACT_EVENTS` with one event more (at Unix time ``at``)."""
    old = facts.get(FACT_EVENTS)
    events = list(old) if isinstance(old, list) else []
    events.append({"at": stamp(at), "event": event, "reason": reason})
    return events[-MAX_EVENTS:]
