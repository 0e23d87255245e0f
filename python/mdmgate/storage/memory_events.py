"""The event log, webhooks and API tokens of the in-memory store: a mixin of
:class:`~mdmgate.storage.memory.MemoryStore`.

Like the rest of that store, every operation runs on the Trio thread without awaiting in the
middle, so each is one atomic step: an append is numbered in the order it happens (a reader
never finds a lower number later), ``advance_webhook`` compares (the cursor and the state)
and sets at once, and a token name is checked and taken at once. The store's mutating calls
append the events they report through :meth:`MemoryEvents._append`, in the same step as
their change.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Collection, Sequence

import msgspec
import trio

from mdmgate.storage.event_records import (
    EncodedEvent,
    api_token_taken,
    check_page,
    checked_api_token,
    checked_events,
    checked_outcome,
    checked_time,
    checked_webhook,
    decode_data,
    type_filter,
)
from mdmgate.storage.events import (
    TOUCH_SECONDS,
    ApiToken,
    Event,
    NewEvent,
    Webhook,
    WebhookFailure,
)

__all__ = ["MemoryEvents"]


class MemoryEvents:
    """The roles :class:`~mdmgate.storage.EventStore`, :class:`~mdmgate.storage.WebhookStore`
    and :class:`~mdmgate.storage.ApiTokenStore`, in memory."""

    def __init__(self) -> None:
        super().__init__()
        #: The event log in seq order (pruning leaves gaps), and the last seq written.
        self._events: list[Event] = []
        self._last_event = 0
        #: Set (and replaced) on every append: wakes wait_for_events.
        self._appended = trio.Event()
        self._webhooks: dict[str, Webhook] = {}
        self._failures: dict[str, dict[int, WebhookFailure]] = {}
        self._api_tokens: dict[str, ApiToken] = {}

    def _append(self, events: Sequence[EncodedEvent]) -> int:
        """Appends checked events (each with a decoded copy of its data, as a durable
        backend would read it back); the last seq."""
        at = time.time()
        for e in events:
            self._last_event += 1
            data = decode_data(e.data)
            self._events.append(Event(self._last_event, e.type, at, e.device_id, e.subject, data))
        if events:
            self._appended.set()
            self._appended = trio.Event()
        return self._last_event

    # -- the event log ---------------------------------------------------------------------

    async def append_events(self, events: Sequence[NewEvent]) -> int:
        return self._append(checked_events(events))

    async def events(
        self,
        after: int,
        limit: int,
        *,
        types: Collection[str] | None = None,
        device_id: str | None = None,
    ) -> list[Event]:
        check_page(after, limit)
        wanted = type_filter(types)
        start = bisect.bisect_right(self._events, after, key=lambda e: e.seq)
        found: list[Event] = []
        for i in range(start, len(self._events)):
            if len(found) >= limit:
                break
            e = self._events[i]
            if (wanted is None or wanted.matches(e.type)) and device_id in (None, e.device_id):
                found.append(e)
        return found

    async def last_event(self) -> int:
        return self._last_event

    async def wait_for_events(self, after: int) -> None:
        check_page(after, 0)
        await trio.lowlevel.checkpoint()
        while not self._events or self._events[-1].seq <= after:
            await self._appended.wait()

    async def prune_events(self, before: float) -> int:
        before = checked_time("prune_events", "before", before)
        kept = [e for e in self._events if e.at >= before]
        pruned = len(self._events) - len(kept)
        self._events = kept
        return pruned

    # -- webhooks --------------------------------------------------------------------------

    async def put_webhook(self, webhook: Webhook) -> None:
        checked = checked_webhook(webhook)
        self._webhooks[checked.id] = checked

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        return self._webhooks.get(webhook_id)

    async def list_webhooks(self) -> list[Webhook]:
        return sorted(self._webhooks.values(), key=lambda w: (w.created_at, w.id))

    async def delete_webhook(self, webhook_id: str) -> bool:
        self._failures.pop(webhook_id, None)
        return self._webhooks.pop(webhook_id, None) is not None

    async def advance_webhook(
        self,
        webhook_id: str,
        *,
        expected_cursor: int,
        cursor: int,
        state: str,
        attempts: int,
        next_attempt_at: float,
        last_error: str | None,
        last_success_at: float | None,
        failed: Sequence[WebhookFailure] = (),
        expected_state: str | None = None,
    ) -> bool:
        o = checked_outcome(
            webhook_id,
            expected_cursor=expected_cursor,
            cursor=cursor,
            state=state,
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            last_error=last_error,
            last_success_at=last_success_at,
            failed=failed,
            expected_state=expected_state,
        )
        hook = self._webhooks.get(webhook_id)
        if hook is None or hook.cursor != expected_cursor:
            return False
        if expected_state is not None and hook.state != expected_state:
            return False
        self._webhooks[webhook_id] = msgspec.structs.replace(
            hook,
            cursor=o.cursor,
            state=o.state,
            attempts=o.attempts,
            next_attempt_at=o.next_attempt_at,
            last_error=o.last_error,
            last_success_at=o.last_success_at,
        )
        self._failures.setdefault(webhook_id, {}).update((f.seq, f) for f in o.failed)
        return True

    async def webhook_failures(
        self, webhook_id: str, *, after: int = 0, limit: int = 100
    ) -> list[WebhookFailure]:
        check_page(after, limit)
        letters = self._failures.get(webhook_id, {})
        return [letters[s] for s in sorted(letters) if s > after][: max(limit, 0)]

    # -- API tokens ------------------------------------------------------------------------

    async def put_api_token(self, token: ApiToken) -> None:
        t = checked_api_token(token)
        if t.id in self._api_tokens:
            raise api_token_taken(t, same_id=True)
        live = (o for o in self._api_tokens.values() if o.revoked_at is None)
        if t.revoked_at is None and any(o.name == t.name for o in live):
            raise api_token_taken(t, same_id=False)
        self._api_tokens[t.id] = t

    async def get_api_token(self, token_id: str) -> ApiToken | None:
        return self._api_tokens.get(token_id)

    async def list_api_tokens(self) -> list[ApiToken]:
        return sorted(self._api_tokens.values(), key=lambda t: (t.created_at, t.id))

    async def revoke_api_token(self, token_id: str, *, at: float) -> ApiToken | None:
        token = self._api_tokens.get(token_id)
        if token is None or token.revoked_at is not None:
            return token
        at = checked_time(f"API token {token_id!r}", "at", at)
        self._api_tokens[token_id] = msgspec.structs.replace(token, revoked_at=at)
        return self._api_tokens[token_id]

    async def touch_api_token(self, token_id: str, *, at: float) -> None:
        at = checked_time(f"API token {token_id!r}", "at", at)
        token = self._api_tokens.get(token_id)
        if token is not None and (
            token.last_used_at is None or token.last_used_at <= at - TOUCH_SECONDS
        ):
            self._api_tokens[token_id] = msgspec.structs.replace(token, last_used_at=at)
