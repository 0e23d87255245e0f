"""The event log, webhook subscriptions and API tokens: what a console embedding the gateway
follows and how it is let in.

The event log is one durable, ordered sequence. An event is written in the same transaction
as the change it reports: the mutating store methods that report something take
``events=[NewEvent(...)]`` and write them with the change, so an event is never lost (the
change committed, the event did not) nor invented (the event committed, the change did
not). ``seq`` orders events across every node; a reader that has seen up to ``seq`` asks
for ``after=seq``.

Webhooks: a subscription names a URL and the event types it wants; each subscription has its
own cursor (the last event it acknowledged), so one slow receiver never holds back another.
Exactly one node delivers a subscription at a time: the deliverer holds the lease
``webhook:<id>`` (:class:`~mdmgate.storage.LeaseStore`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

import msgspec

__all__ = [
    "TOUCH_SECONDS",
    "ApiToken",
    "ApiTokenStore",
    "Event",
    "EventStore",
    "NewEvent",
    "Webhook",
    "WebhookFailure",
    "WebhookStore",
]


class NewEvent(msgspec.Struct, frozen=True):
    """An event to append: ``type`` is dotted (``command.acknowledged``), ``device_id`` the
    device it is about (if one), ``subject`` the other thing it is about (a command id, an
    app id, a roll-out notification id), ``data`` its details (JSON-compatible)."""

    type: str
    device_id: str | None = None
    subject: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class Event(msgspec.Struct, frozen=True):
    """An event as stored: ``seq`` (from 1, strictly increasing in commit order of
    :meth:`EventStore.events`' answers) and ``at`` (Unix time the store wrote it)."""

    seq: int
    type: str
    at: float
    device_id: str | None = None
    subject: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class EventStore(Protocol):
    async def append_events(self, events: Sequence[NewEvent]) -> int:
        """Appends events that report no store change of their own (e.g. a device checked
        in without anything changing); returns the last ``seq`` written (or the current
        last when ``events`` is empty)."""
        ...

    async def events(
        self,
        after: int,
        limit: int,
        *,
        types: Collection[str] | None = None,
        device_id: str | None = None,
    ) -> list[Event]:
        """Up to ``limit`` events with ``seq > after`` in ``seq`` order (of ``types`` /
        ``device_id`` when given). Every event an answer skips over is committed: a later
        call never returns a ``seq`` lower than one returned before (backends that number
        before commit must hold back past the first uncommitted number)."""
        ...

    async def last_event(self) -> int:
        """The highest ``seq`` readers may see (0 before any)."""
        ...

    async def wait_for_events(self, after: int) -> None:
        """Returns once an event with ``seq > after`` is readable (at once if one is).
        Cancellable; PostgreSQL wakes through LISTEN/NOTIFY, others poll or wake
        in-process."""
        ...

    async def prune_events(self, before: float) -> int:
        """Deletes events with ``at < before``; returns how many."""
        ...


class Webhook(msgspec.Struct, frozen=True):
    id: str
    url: str
    #: The HMAC-SHA256 key the receiver verifies signatures with.
    secret: str
    #: Event types it receives (``command.*`` style prefixes allowed); empty: all.
    types: tuple[str, ...]
    created_at: float
    description: str = ""
    #: The last event it acknowledged (2xx); it starts at the log's end when created.
    cursor: int = 0
    #: ``active``, ``paused`` (by an administrator) or ``failing`` (retrying).
    state: str = "active"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    last_success_at: float | None = None


class WebhookFailure(msgspec.Struct, frozen=True):
    """An event a webhook gave up on after its retries (the dead letters)."""

    webhook_id: str
    seq: int
    at: float
    attempts: int
    error: str


class WebhookStore(Protocol):
    async def put_webhook(self, webhook: Webhook) -> None:
        """Creates or replaces a subscription (by id)."""
        ...

    async def get_webhook(self, webhook_id: str) -> Webhook | None: ...

    async def list_webhooks(self) -> list[Webhook]:
        """Every subscription, oldest first."""
        ...

    async def delete_webhook(self, webhook_id: str) -> bool: ...

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
        """Records a delivery outcome: moves the cursor (and the retry state) only if it is
        still ``expected_cursor`` (a deliverer that lost its lease cannot move it back) and,
        when ``expected_state`` is given, the state is still that (a pause written after
        the deliverer read the webhook is not overwritten), and stores ``failed`` dead
        letters in the same transaction. False when either moved meanwhile or the webhook
        is gone."""
        ...

    async def webhook_failures(
        self, webhook_id: str, *, after: int = 0, limit: int = 100
    ) -> list[WebhookFailure]:
        """Dead letters of a webhook, in ``seq`` order after ``after``."""
        ...


#: How much later than the stored ``last_used_at`` a use must be to be written.
TOUCH_SECONDS = 60.0


class ApiToken(msgspec.Struct, frozen=True):
    """A named admin API token; the store keeps the SHA-256 of its secret only."""

    id: str
    name: str
    #: ``read`` (GET only) or ``full``.
    scope: str
    secret_sha256: str
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None


class ApiTokenStore(Protocol):
    async def put_api_token(self, token: ApiToken) -> None:
        """Creates a token; :class:`~mdmgate.storage.RevisionConflict` if the id or the
        name is taken by an unrevoked token."""
        ...

    async def get_api_token(self, token_id: str) -> ApiToken | None: ...

    async def list_api_tokens(self) -> list[ApiToken]:
        """Every token, oldest first (revoked ones too)."""
        ...

    async def revoke_api_token(self, token_id: str, *, at: float) -> ApiToken | None:
        """Revokes (keeping the first time); the token afterwards, ``None`` if unknown."""
        ...

    async def touch_api_token(self, token_id: str, *, at: float) -> None:
        """Records a use at ``at`` as ``last_used_at``, only when that is unset or at least
        :data:`TOUCH_SECONDS` older: a busy token costs one write a minute, and an earlier
        use seen late moves nothing back. One conditional write, no read first; an unknown
        id changes nothing."""
        ...
