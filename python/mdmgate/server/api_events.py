"""The admin API's event log: ``GET /api/v1/events`` for consoles that pull.

A console keeps one number, the ``next`` of its last answer, and asks again with
``after=<next>``: it sees every event once, in the order of the log, whichever node wrote
it. With ``wait`` the call is a long poll: it answers as soon as there is an event to show,
or with an empty list when ``wait`` seconds pass (then ask again with the same cursor).

``next`` may run ahead of the last event shown: when a filtered answer is not full, every
matching event up to the log's end was shown, and ``next`` is that end, so the next call
(and its wait) starts from there rather than sifting the same unmatched events again.

What each event type carries is :mod:`mdmgate.events`'s table. Events older than the
retention (``[events] retention_days``) are pruned: a console away longer than that must
read the resources again.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import trio
from msgspec import Meta, Struct

from mdmgate.events import EVENT_TYPES, UnknownEventType, check_types
from mdmgate.server.api_base import (
    _MAX_CURSOR,
    _event_cursor,
    _json,
    _query,
    _query_limit,
    _refuse,
)
from mdmgate.server.routes import Operation, QueryParam
from mdmgate.server.types import Request, Response
from mdmgate.storage.events import Event, EventStore

__all__ = ["MAX_WAIT", "RESPONSE_TYPES", "EventOut", "EventsApi", "EventsPage", "operations"]

#: The longest long poll, in seconds: below the idle timeouts of common proxies and load
#: balancers (60 s), so a waiting request is not cut by something in between.
MAX_WAIT = 30.0

# A plain decimal or exponent form, as a client's float formatting writes it (1e-05).
_NUMBER = re.compile(r"^[0-9]{1,20}(?:\.[0-9]{0,20})?(?:[eE][+-]?[0-9]{1,3})?$")
#: The largest cursor: event numbers are signed 64-bit in every store.
#: What ``types`` may name: an event type, or a family of them as ``family.*``.
_TYPE_NAMES = [*EVENT_TYPES, *sorted(dict.fromkeys(f"{t.split('.')[0]}.*" for t in EVENT_TYPES))]


class EventOut(Struct):
    """One event of the log."""

    seq: Annotated[int, Meta(description="Its place in the log (from 1, increasing).")]
    type: Annotated[str, Meta(description="Dotted, such as `command.acknowledged`.")]
    at: Annotated[dt.datetime, Meta(description="When the gateway wrote it.")]
    device_id: Annotated[str | None, Meta(description="The device it is about, if one.")]
    subject: Annotated[
        str | None,
        Meta(description="What else it is about: a command, notification or app id."),
    ]
    data: Annotated[dict[str, Any], Meta(description="Its details, by type.")]


class EventsPage(Struct):
    """Events after the cursor asked for, oldest first."""

    events: list[EventOut]
    next: Annotated[
        int, Meta(ge=0, description="Pass as `after` to read on from here (the same if none).")
    ]


#: Schemas the OpenAPI document needs for these operations.
RESPONSE_TYPES: tuple[type[Any], ...] = (EventOut, EventsPage)

_PARAMS = ("after", "limit", "types", "device_id", "wait")


class EventsApi:
    """The handler of ``GET /api/v1/events`` over ``store``; ``max_wait`` bounds ``wait``."""

    def __init__(self, store: EventStore, *, max_wait: float = MAX_WAIT) -> None:
        self.store = store
        self.max_wait = max_wait

    async def list_events(self, request: Request, params: Mapping[str, str]) -> Response:
        query = _query(request, _PARAMS, repeated=("types",))
        after = _event_cursor(query.get("after"))
        limit = _query_limit(query.get("limit"))
        types = _types(query.get("types"))
        device_id = _device(query.get("device_id"))
        wait = _wait(query.get("wait"), self.max_wait)
        page, cursor = await self._read(after, limit, types, device_id)
        if not page and wait > 0:
            with trio.move_on_after(wait):
                while not page:
                    await self.store.wait_for_events(cursor)
                    page, cursor = await self._read(cursor, limit, types, device_id)
        return _json(200, EventsPage([_out(e) for e in page], cursor))

    async def _read(
        self, after: int, limit: int, types: list[str] | None, device_id: str | None
    ) -> tuple[list[Event], int]:
        """The events after ``after``, and the cursor to go on from."""
        # The end first: every event up to it is readable, so a page that is not full
        # has shown every match up to it.
        end = await self.store.last_event()
        page = await self.store.events(after, limit, types=types, device_id=device_id)
        if len(page) == limit:
            return page, page[-1].seq
        return page, max(after, end, page[-1].seq if page else 0)


def _out(event: Event) -> EventOut:
    return EventOut(
        event.seq,
        event.type,
        dt.datetime.fromtimestamp(event.at, dt.UTC),
        event.device_id,
        event.subject,
        dict(event.data),
    )


def _types(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    names = [name.strip() for value in values for name in value.split(",")]
    if any(not name for name in names):
        raise _refuse(422, "types holds an empty name (types=a,b names two)", "types")
    try:
        return check_types(names)
    except UnknownEventType as exc:
        raise _refuse(422, str(exc), "types") from None


def _device(values: Sequence[str] | None) -> str | None:
    if values is None:
        return None
    if not values[0]:
        raise _refuse(422, "device_id is empty", "device_id")
    return values[0]


def _wait(values: Sequence[str] | None, most: float) -> float:
    if not values:
        return 0.0
    text = values[0]
    if _NUMBER.fullmatch(text) and float(text) <= most:
        return float(text)
    raise _refuse(422, f"wait must be a number of seconds from 0 to {most:g}, not {text!r}", "wait")


def operations(api: EventsApi) -> list[Operation]:
    """The event log's operations, with their handlers."""
    return [
        Operation(
            "GET",
            "/api/v1/events",
            api.list_events,
            "Events after a cursor, oldest first; with `wait`, a long poll.",
            ("200", "Events and the cursor to read on from.", "EventsPage"),
            ("400", "422"),
            description=(
                "Read on with `after` set to the answer's `next`: every event is seen once,"
                " in log order. With `wait` the answer comes as soon as an event matches, or"
                f" empty after `wait` seconds (at most {api.max_wait:g}). Event types: "
                + ", ".join(f"`{t}`" for t in EVENT_TYPES)
                + ". Events older than the retention (`[events] retention_days`) are pruned."
            ),
            query=(
                QueryParam(
                    "after",
                    "The `next` of the last answer; 0 (the default): from the oldest kept.",
                    {"type": "integer", "minimum": 0, "maximum": _MAX_CURSOR},
                ),
                QueryParam(
                    "limit",
                    "At most this many events (default 100).",
                    {"type": "integer", "minimum": 1, "maximum": 1000},
                ),
                QueryParam(
                    "types",
                    "Event types (comma-separated, or the parameter repeated), or families"
                    " as `command.*`; default all.",
                    {"type": "string", "enum": _TYPE_NAMES},
                    repeated=True,
                ),
                QueryParam(
                    "device_id",
                    "Only events about this device.",
                    {"type": "string", "minLength": 1},
                ),
                QueryParam(
                    "wait",
                    "Seconds to wait for an event when there is none yet (default 0).",
                    {"type": "number", "minimum": 0, "maximum": api.max_wait},
                ),
            ),
        )
    ]
