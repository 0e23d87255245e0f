"""What every backend checks of the event log's, webhooks' and API tokens' input, how events
are matched by type, and how the SQL backends lay these records out in rows: one place, so
that memory, SQLite and PostgreSQL refuse the same input with the same message and agree on
what a filter selects.

A bad value raises ``ValueError`` naming the field, before anything is written. An event
rides on the change it reports, so an event that one backend could not store (data that is
not JSON, or a string holding U+0000, which PostgreSQL's ``jsonb`` refuses) must fail the
call on every backend alike, not only on the one that happens to refuse it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import msgspec

from mdmgate.storage import RevisionConflict
from mdmgate.storage.events import ApiToken, Event, NewEvent, Webhook, WebhookFailure

__all__ = [
    "API_TOKEN_COLUMNS",
    "FAILURE_COLUMNS",
    "TOKEN_SCOPES",
    "WEBHOOK_COLUMNS",
    "WEBHOOK_STATES",
    "EncodedEvent",
    "Outcome",
    "TypeFilter",
    "api_token_from_row",
    "api_token_row",
    "api_token_taken",
    "check_page",
    "checked_api_token",
    "checked_events",
    "checked_outcome",
    "checked_time",
    "checked_webhook",
    "decode_data",
    "event_from_row",
    "take_event",
    "type_filter",
    "webhook_from_row",
    "webhook_row",
]

WEBHOOK_STATES = ("active", "paused", "failing")
TOKEN_SCOPES = ("read", "full")

#: The SQL backends' columns, in the order of the structs' fields: a row read in this order
#: is the struct's positional arguments (webhook types as a JSON array's text).
WEBHOOK_COLUMNS = ", ".join(Webhook.__struct_fields__)
API_TOKEN_COLUMNS = ", ".join(ApiToken.__struct_fields__)
FAILURE_COLUMNS = ", ".join(WebhookFailure.__struct_fields__)

_TYPES_AT = Webhook.__struct_fields__.index("types")
_TYPE_LIST = msgspec.json.Decoder(tuple[str, ...])
_DATA = msgspec.json.Decoder(dict[str, Any])
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INT64 = 2**63 - 1


class EncodedEvent(NamedTuple):
    """A checked :class:`~mdmgate.storage.NewEvent`, its ``data`` as JSON text."""

    type: str
    device_id: str | None
    subject: str | None
    data: str


def _text(what: str, name: str, value: Any, *, optional: bool = False, empty: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ValueError(f"{what}: {name} must be a string, not {value!r:.60}")
    if not empty and not value:
        raise ValueError(f"{what}: {name} must not be empty")


def checked_time(what: str, name: str, value: Any) -> float:
    """``value`` as a float, or ``ValueError`` when it is not a finite Unix time."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what}: {name} must be a Unix time in seconds, not {value!r:.60}")
    return float(value)


def _maybe_time(what: str, name: str, value: Any) -> float | None:
    return None if value is None else checked_time(what, name, value)


def _count(what: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64:
        raise ValueError(f"{what}: {name} must be a whole number of at least 0, not {value!r:.60}")


def checked_events(events: Sequence[NewEvent]) -> list[EncodedEvent]:
    """``events`` checked and encoded, or ``ValueError`` naming the first bad one."""
    if events == ():  # most writes carry none: no ABC check
        return []
    if isinstance(events, NewEvent) or not isinstance(events, Sequence):
        raise ValueError(f"events must be a sequence of NewEvent, not {events!r:.60}")
    encoded = []
    for i, event in enumerate(events):
        what = f"event {i}"
        if not isinstance(event, NewEvent):
            raise ValueError(f"{what} must be a NewEvent, not {event!r:.60}")
        _text(what, "type", event.type, empty=False)
        _text(what, "device_id", event.device_id, optional=True)
        _text(what, "subject", event.subject, optional=True)
        if not isinstance(event.data, dict):
            raise ValueError(f"{what} ({event.type}): data must be a dict, not {event.data!r:.60}")
        try:
            data = msgspec.json.encode(event.data).decode()
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{what} ({event.type}): data is not JSON: {e}") from None
        if "\\u0000" in data:
            raise ValueError(f"{what} ({event.type}): data holds U+0000, which is not stored")
        for name in ("type", "device_id", "subject"):
            if "\x00" in (getattr(event, name) or ""):
                raise ValueError(f"{what}: {name} holds U+0000, which is not stored")
        encoded.append(EncodedEvent(event.type, event.device_id, event.subject, data))
    return encoded


def take_event(kind: str, device_id: str, command_id: str, data: dict[str, Any]) -> EncodedEvent:
    """An event ``take`` reports about a delivery (``command.delivered``, ``command.failed``)."""
    return EncodedEvent(kind, device_id, command_id, msgspec.json.encode(data).decode())


def decode_data(text: str | bytes) -> dict[str, Any]:
    return _DATA.decode(text)


def event_from_row(row: Sequence[Any]) -> Event:
    """The event in a row of ``seq, type, at, device_id, subject, data`` (data: JSON text)."""
    seq, kind, at, device_id, subject, data = row
    return Event(int(seq), kind, float(at), device_id, subject, _DATA.decode(data))


class TypeFilter(NamedTuple):
    """Which event types a reader wants: these exactly, or any starting with a prefix (an
    entry ``command.*`` is the prefix ``command.``)."""

    exact: tuple[str, ...]
    prefixes: tuple[str, ...]

    def matches(self, kind: str) -> bool:
        return kind in self.exact or kind.startswith(self.prefixes)


def type_filter(types: Collection[str] | None) -> TypeFilter | None:
    """The filter ``types`` names; ``None`` (every type) for ``None`` or an empty collection,
    as a webhook with no types receives everything."""
    if types is None:
        return None
    if isinstance(types, str) or not isinstance(types, Collection):
        raise ValueError(f"types must be a collection of event types, not {types!r:.60}")
    exact: list[str] = []
    prefixes: list[str] = []
    for entry in types:
        _text("types", "each entry", entry, empty=False)
        if entry.endswith(".*"):
            prefixes.append(entry[:-1])
        else:
            exact.append(entry)
    return TypeFilter(tuple(exact), tuple(prefixes)) if exact or prefixes else None


def check_page(after: Any, limit: Any) -> None:
    """``ValueError`` for a position or a page size that is not a whole number."""
    for name, value in (("after", after), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, not {value!r:.60}")


# -- webhooks


def _state(what: str, name: str, value: Any) -> None:
    if value not in WEBHOOK_STATES:
        raise ValueError(f"{what}: {name} must be one of {WEBHOOK_STATES}, not {value!r:.60}")


def checked_webhook(webhook: Webhook) -> Webhook:
    """``webhook`` as every backend stores it (times as floats, types a tuple), or
    ``ValueError`` naming what is wrong with it."""
    w = webhook
    _text("webhook", "id", w.id, empty=False)
    what = f"webhook {w.id!r}"
    _text(what, "url", w.url, empty=False)
    _text(what, "secret", w.secret)
    _text(what, "description", w.description)
    _text(what, "last_error", w.last_error, optional=True)
    if isinstance(w.types, str) or not isinstance(w.types, Sequence):
        raise ValueError(f"{what}: types must be a sequence of event types, not {w.types!r:.60}")
    for entry in w.types:
        _text(what, "types", entry, empty=False)
    _state(what, "state", w.state)
    _count(what, "cursor", w.cursor)
    _count(what, "attempts", w.attempts)
    return msgspec.structs.replace(
        w,
        types=tuple(w.types),
        created_at=checked_time(what, "created_at", w.created_at),
        next_attempt_at=checked_time(what, "next_attempt_at", w.next_attempt_at),
        last_success_at=_maybe_time(what, "last_success_at", w.last_success_at),
    )


class Outcome(NamedTuple):
    """A checked delivery outcome of :meth:`~mdmgate.storage.WebhookStore.advance_webhook`."""

    cursor: int
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    last_success_at: float | None
    failed: list[WebhookFailure]


def checked_outcome(
    webhook_id: str,
    *,
    expected_cursor: int,
    cursor: int,
    state: str,
    attempts: int,
    next_attempt_at: float,
    last_error: str | None,
    last_success_at: float | None,
    failed: Sequence[WebhookFailure],
    expected_state: str | None = None,
) -> Outcome:
    """The outcome checked (times as floats), or ``ValueError`` naming what is wrong."""
    what = f"webhook {webhook_id!r}"
    _text("webhook", "id", webhook_id)
    _count(what, "expected_cursor", expected_cursor)
    _count(what, "cursor", cursor)
    _count(what, "attempts", attempts)
    _state(what, "state", state)
    if expected_state is not None:
        _state(what, "expected_state", expected_state)
    _text(what, "last_error", last_error, optional=True)
    letters = []
    for f in failed:
        if not isinstance(f, WebhookFailure) or f.webhook_id != webhook_id:
            raise ValueError(f"{what}: a dead letter of another webhook: {f!r:.80}")
        _count(what, "a dead letter's seq", f.seq)
        _count(what, "a dead letter's attempts", f.attempts)
        _text(what, "a dead letter's error", f.error)
        letters.append(
            msgspec.structs.replace(f, at=checked_time(what, "a dead letter's at", f.at))
        )
    return Outcome(
        cursor,
        state,
        attempts,
        checked_time(what, "next_attempt_at", next_attempt_at),
        last_error,
        _maybe_time(what, "last_success_at", last_success_at),
        letters,
    )


def webhook_row(webhook: Webhook, types: str) -> tuple[Any, ...]:
    """The values of :data:`WEBHOOK_COLUMNS` for a checked ``webhook``, with ``types`` (its
    types as a JSON array's text) in their place."""
    values = msgspec.structs.astuple(webhook)
    return (*values[:_TYPES_AT], types, *values[_TYPES_AT + 1 :])


def webhook_from_row(row: Sequence[Any]) -> Webhook:
    """The webhook in a row of :data:`WEBHOOK_COLUMNS` (types as a JSON array's text)."""
    values = list(row)
    values[_TYPES_AT] = _TYPE_LIST.decode(values[_TYPES_AT])
    return Webhook(*values)


# -- API tokens


def checked_api_token(token: ApiToken) -> ApiToken:
    """``token`` as every backend stores it (times as floats), or ``ValueError`` naming
    what is wrong with it."""
    t = token
    _text("API token", "id", t.id, empty=False)
    what = f"API token {t.id!r}"
    _text(what, "name", t.name, empty=False)
    if t.scope not in TOKEN_SCOPES:
        raise ValueError(f"{what}: scope must be one of {TOKEN_SCOPES}, not {t.scope!r:.60}")
    if not isinstance(t.secret_sha256, str) or not _SHA256.fullmatch(t.secret_sha256):
        raise ValueError(f"{what}: secret_sha256 must be 64 lower-case hex digits")
    return msgspec.structs.replace(
        t,
        created_at=checked_time(what, "created_at", t.created_at),
        revoked_at=_maybe_time(what, "revoked_at", t.revoked_at),
        last_used_at=_maybe_time(what, "last_used_at", t.last_used_at),
    )


def api_token_taken(token: ApiToken, *, same_id: bool) -> RevisionConflict:
    # Tokens have no revisions: one that exists counts as the first.
    what = f"API token {token.id!r}" if same_id else f"API token name {token.name!r}"
    return RevisionConflict(what, None, 1)


def api_token_row(token: ApiToken) -> tuple[Any, ...]:
    """The values of :data:`API_TOKEN_COLUMNS` for a checked ``token``."""
    return msgspec.structs.astuple(token)


def api_token_from_row(row: Sequence[Any]) -> ApiToken:
    return ApiToken(*row)
