"""Webhook delivery: every subscription follows the event log from its own cursor, on one node
at a time, at least once, in order.

**One task per subscription.** :class:`WebhookDeliverer` (one per node) reads the
subscriptions every :data:`RESCAN_SECONDS` (at once when this node's admin API changes one)
and runs a task for each that is not paused, so a receiver that is slow or down delays
nobody else's events.

**One node per subscription.** A task delivers only while it holds the lease
``webhook:<id>`` (:class:`~mdmgate.storage.LeaseStore`), renewed before every request and
every third of its lifetime while idle; the others try to claim it every third of its
lifetime, and take over once a node that died stops renewing. The lease outlives a request
by a wide margin (:func:`lease_seconds`), and a task that finds too little of it left renews
before sending. Recording an outcome is a compare-and-set on the cursor and the state
(``advance_webhook(expected_cursor=..., expected_state=...)``): a node that lost its lease
while its request was in flight can never move the cursor back, nor record over another
node's progress or over a pause.

**Batches, in order.** A request carries the events after the cursor, oldest first, up to
:data:`BATCH_EVENTS` events or :data:`BATCH_BYTES` of JSON; a 2xx answer acknowledges them
all and the cursor moves to the last. One cursor per subscription means its events go out
strictly in log order, so every device's events arrive in the order they happened; batching
keeps a subscription that fell behind (a receiver that was down) from needing one round trip
per event to catch up. The body is::

    {"webhook_id": "<id>", "events": [{"seq": 41, "type": "command.acknowledged",
      "at": "2026-12-03T06:30:00.5Z", "device_id": "...", "subject": "...", "data": {...}},
      ...]}

signed as :mod:`~mdmgate.webhooks.signing` documents, with the headers
``Mdmgate-Webhook-Id`` and ``Mdmgate-Signature``.

**Retries.** Anything but a 2xx (an error status, a redirect, no answer within ``timeout``,
an address refused by :mod:`~mdmgate.webhooks.ssrf`) fails the attempt: the subscription
turns ``failing``, and after :meth:`RetryPolicy.delay` it tries again, with the oldest
pending event alone (so that, if one event is what the receiver cannot take, only that one
goes to the dead letters). ``max_attempts`` failed attempts at that event put it in the dead
letters (:class:`~mdmgate.storage.WebhookFailure`, listed by the API) and the cursor moves
past it; the next event gets its own attempts. The first success makes the subscription
``active`` again.

**Pausing.** A paused subscription's task stops and gives its lease up; it is never
cancelled mid-request (that could cut it between a 2xx and its record).
:func:`pause_webhook` returns once no node holds the lease any more; from then on nothing is
sent until :func:`resume_webhook`. The outcome of a request in flight when the pause lands is
recorded only if the state its node read is still stored: one that read the webhook before
the pause records nothing, and its events go out again after the resume. A test request
(:func:`ping_event`, ``seq`` 0) goes out beside the log, moving nothing.

**At least once.** The cursor moves only after a 2xx, so an event is delivered again when
the answer is lost (the node died after the receiver took it, or the request timed out after
the receiver acted on it): receivers drop repeats by ``seq``. A node killed before an event
was delivered loses nothing: the event is in the log, the cursor before it, and the next
holder of the lease sends it.
"""

from __future__ import annotations

import datetime
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import trio

from mdmgate.storage import Event, EventStore, LeaseStore, Webhook, WebhookFailure, WebhookStore
from mdmgate.webhooks.client import MAX_EXCERPT, DeliveryFailed, post
from mdmgate.webhooks.settings import WebhookSettings
from mdmgate.webhooks.signing import SIGNATURE_HEADER, sign
from mdmgate.webhooks.ssrf import Resolver, UrlRefused, parse_webhook_url, system_resolver

__all__ = [
    "BATCH_BYTES",
    "BATCH_EVENTS",
    "LEASE_PREFIX",
    "PING_TYPE",
    "RESCAN_SECONDS",
    "WEBHOOK_ID_HEADER",
    "DeliveryStore",
    "Outcome",
    "RetryPolicy",
    "WebhookBusy",
    "WebhookDeliverer",
    "lease_seconds",
    "pause_webhook",
    "ping_event",
    "resume_webhook",
    "send_once",
    "webhook_request",
]

_log = logging.getLogger("mdmgate.webhooks")

#: Leases of subscriptions: ``webhook:<id>``.
LEASE_PREFIX = "webhook:"
#: Events per request at most.
BATCH_EVENTS = 100
#: JSON bytes per request at most (one event larger than this still goes, alone).
BATCH_BYTES = 1 << 20
#: How often a node reads the subscriptions (to see those created or resumed elsewhere).
RESCAN_SECONDS = 5.0
#: The type of the event a test request carries (:func:`ping_event`).
PING_TYPE = "webhook.ping"
WEBHOOK_ID_HEADER = "Mdmgate-Webhook-Id"
#: How long a task waits after the store failed it before trying again.
_STORE_RETRY_SECONDS = 2.0
#: Compare-and-set rounds a state change tries before giving up (each one lost to a
#: delivery that moved the cursor, or another state change, meanwhile).
_STATE_TRIES = 50
#: How often a pause looks whether the subscription's lease is free yet.
_PAUSE_POLL_SECONDS = 0.1

_encoder = msgspec.json.Encoder()


class DeliveryStore(EventStore, WebhookStore, LeaseStore, Protocol):
    """The store roles delivery uses."""


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed delivery is tried again: after the ``n``-th failed attempt, a wait drawn
    from the upper half of ``min(cap, base * 2**(n-1))`` seconds. Doubling gives a receiver
    that is down time to come back without a flood of requests; the cap keeps a long outage
    from pushing the next try hours away; the jitter keeps the subscriptions of one
    receiver, failed together, from retrying together."""

    base: float = 1.0
    cap: float = 600.0

    def delay(self, attempts: int, *, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``attempts`` (from 1) failed attempts."""
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        # The exponent is bounded: 2**1000 floats overflow long after the cap is reached.
        ceiling = min(self.cap, self.base * 2.0 ** min(attempts - 1, 64))
        return ceiling * (0.5 + 0.5 * rng())


def lease_seconds(timeout: float) -> float:
    """How long a subscription's lease lasts: three requests' worth plus a margin, so a
    renewal made before a request always outlasts it, and a dead node's subscriptions move
    on within about half a minute (with the default 10 s timeout: 35 s)."""
    return 3 * timeout + 5


@dataclass(frozen=True)
class Outcome:
    """What one request came to: ``error`` is ``None`` for a 2xx."""

    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def webhook_request(
    webhook: Webhook, events: Sequence[Event], *, now: float
) -> tuple[bytes, list[tuple[str, str]]]:
    """The body and headers (signed at ``now``) of a request carrying ``events``."""
    body = _encoder.encode({"webhook_id": webhook.id, "events": [_wire(e) for e in events]})
    headers = [
        (WEBHOOK_ID_HEADER, webhook.id),
        (SIGNATURE_HEADER, sign(webhook.secret, body, math.floor(now))),
    ]
    return body, headers


async def send_once(
    webhook: Webhook,
    events: Sequence[Event],
    *,
    settings: WebhookSettings,
    now: float,
    ssl_context: ssl.SSLContext | None = None,
    resolve: Resolver = system_resolver,
) -> Outcome:
    """One request to the webhook's URL; never raises for the receiver's faults."""
    body, headers = webhook_request(webhook, events, now=now)
    try:
        target = parse_webhook_url(webhook.url, allow_private=settings.allow_private)
        answer = await post(
            target,
            body,
            headers,
            allow_private=settings.allow_private,
            timeout=settings.timeout,
            ssl_context=ssl_context,
            resolve=resolve,
        )
    except UrlRefused as exc:
        return Outcome(None, f"refused: {exc}")
    except DeliveryFailed as exc:
        return Outcome(None, str(exc))
    if 200 <= answer.status < 300:
        return Outcome(answer.status, None)
    excerpt = answer.excerpt[:MAX_EXCERPT].decode("utf-8", "replace").strip()
    return Outcome(answer.status, f"HTTP {answer.status}" + (f": {excerpt}" if excerpt else ""))


class WebhookBusy(Exception):
    """A state change that kept losing its compare-and-set (to deliveries moving the cursor,
    or other state changes)."""


async def _set_state(store: DeliveryStore, webhook_id: str, state: str) -> Webhook | None:
    """Sets ``state`` (``paused``, or ``active`` with the retries started afresh) by a
    compare-and-set on the cursor and the state; the webhook afterwards, ``None`` when there
    is none."""
    for _ in range(_STATE_TRIES):
        found = await store.get_webhook(webhook_id)
        if found is None or found.state == state:
            return found
        resuming = state != "paused"
        if await store.advance_webhook(
            webhook_id,
            expected_cursor=found.cursor,
            cursor=found.cursor,
            state=state,
            attempts=0 if resuming else found.attempts,
            next_attempt_at=0.0 if resuming else found.next_attempt_at,
            last_error=found.last_error,
            last_success_at=found.last_success_at,
            expected_state=found.state,
        ):
            return await store.get_webhook(webhook_id)
    raise WebhookBusy(f"webhook {webhook_id!r} kept changing; try again")


async def pause_webhook(
    store: DeliveryStore,
    webhook_id: str,
    *,
    settle: float,
    clock: Callable[[], float] = time.time,
    notify: Callable[[], None] | None = None,
) -> Webhook | None:
    """Pauses the webhook and returns once no node delivers it any more: its lease is free,
    or ``settle`` seconds passed (at least a request's timeout: by then a request in flight
    when it was paused has ended, and its node has seen the pause). ``None`` when
    there is no such webhook; :class:`WebhookBusy` when the cursor kept moving.
    ``notify()`` is called once it is written (to wake this node's deliverer).

    No delivery records over the pause (each compares the state it read), so it holds once
    written; the wait is for a request already in flight, which may still reach the
    receiver."""
    deadline = trio.current_time() + settle
    paused = await _set_state(store, webhook_id, "paused")
    if paused is None:
        return None
    if notify is not None:
        notify()
    while trio.current_time() < deadline and await store.live_leases(
        LEASE_PREFIX + webhook_id, now=clock()
    ):
        await trio.sleep(_PAUSE_POLL_SECONDS)
    return await store.get_webhook(webhook_id)


async def resume_webhook(store: DeliveryStore, webhook_id: str) -> Webhook | None:
    """Makes a paused webhook ``active`` with its retries started afresh (the next attempt
    at once); a webhook that is not paused is left as it is. ``None`` when there is none."""
    found = await store.get_webhook(webhook_id)
    if found is None or found.state != "paused":
        return found
    return await _set_state(store, webhook_id, "active")


def ping_event(webhook_id: str, now: float) -> Event:
    """The event a test request carries: :data:`PING_TYPE`, ``seq`` 0 (not from the log: a
    receiver must not take it as a position in the log)."""
    return Event(0, PING_TYPE, now, data={"webhook_id": webhook_id})


def _wire(event: Event) -> dict[str, Any]:
    """An event as the events API shows it (``at`` in RFC 3339), so a console reads pulled
    and pushed events alike."""
    return {
        "seq": event.seq,
        "type": event.type,
        "at": datetime.datetime.fromtimestamp(event.at, datetime.UTC),
        "device_id": event.device_id,
        "subject": event.subject,
        "data": event.data,
    }


def _batch(events: Sequence[Event]) -> list[Event]:
    """The longest prefix of ``events`` within :data:`BATCH_BYTES` (at least one)."""
    size = 0
    for count, event in enumerate(events):
        size += len(_encoder.encode(_wire(event))) + 1
        if size > BATCH_BYTES and count > 0:
            return list(events[:count])
    return list(events)


class WebhookDeliverer:
    """Delivers every subscription this node holds the lease of (see the module docstring).

    ``node`` names the lease holder (the node's name); ``settings`` the config table;
    ``retry`` the backoff; ``clock`` the Unix clock of leases and retry times;
    ``ssl_context`` and ``resolve`` default to the system's trust store and resolver."""

    def __init__(
        self,
        store: DeliveryStore,
        node: str,
        settings: WebhookSettings,
        *,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        ssl_context: ssl.SSLContext | None = None,
        resolve: Resolver = system_resolver,
        rescan: float = RESCAN_SECONDS,
    ) -> None:
        self.store = store
        self.node = node
        self.settings = settings
        self.retry = retry if retry is not None else RetryPolicy()
        self.clock = clock
        self.rng = rng
        self.ssl_context = ssl_context
        self.resolve = resolve
        self.rescan = rescan
        self.lease_seconds = lease_seconds(settings.timeout)
        #: Subscriptions with a task on this node, by id.
        self.running: dict[str, _Subscription] = {}
        self._rescan = trio.Event()

    def wake(self, webhook_id: str | None = None) -> None:
        """Re-reads the subscriptions now (one was created, paused, resumed or deleted here),
        and nudges ``webhook_id``'s task, if it runs here, to look at it again."""
        self._rescan.set()
        found = self.running.get(webhook_id) if webhook_id is not None else None
        if found is not None:
            found.nudge()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs until cancelled (leases held are given up on the way out)."""
        failing = False
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    webhooks = await self.store.list_webhooks()
                except Exception as exc:  # the database is down: keep what runs
                    if not failing:
                        _log.warning("webhooks: cannot read the subscriptions: %r", exc)
                    failing = True
                else:
                    failing = False
                    self._reconcile(nursery, webhooks)
                with trio.move_on_after(self.rescan):
                    await self._rescan.wait()
                self._rescan = trio.Event()

    def _reconcile(self, nursery: trio.Nursery, webhooks: Sequence[Webhook]) -> None:
        wanted = {w.id for w in webhooks if w.state != "paused"}
        for webhook_id, found in self.running.items():
            if webhook_id not in wanted:
                # Paused or deleted: the task stops by itself once it sees so. Cancelling it
                # could cut it between a receiver's 2xx and its record, sending it all again.
                found.nudge()
        for webhook_id in wanted - set(self.running):
            found = self.running[webhook_id] = _Subscription(self, webhook_id)
            nursery.start_soon(self._follow, found)

    async def _follow(self, subscription: _Subscription) -> None:
        await subscription.run()
        if self.running.get(subscription.webhook_id) is subscription:
            del self.running[subscription.webhook_id]


class _Subscription:
    """The task of one subscription on this node."""

    def __init__(self, deliverer: WebhookDeliverer, webhook_id: str) -> None:
        self.deliverer = deliverer
        self.store = deliverer.store
        self.webhook_id = webhook_id
        self.lease = LEASE_PREFIX + webhook_id
        #: Whether this node holds the lease (as far as it knows).
        self.holding = False
        self.lease_until = 0.0
        #: No event of the subscription's types has ``cursor < seq <= scanned``.
        self.scanned = 0
        self._nudged = trio.Event()
        self._failing = False

    def nudge(self) -> None:
        self._nudged.set()

    async def run(self) -> None:
        """Delivers until the subscription is gone or paused (or the task is cancelled)."""
        try:
            while True:
                try:
                    if not await self._step():
                        return
                    self._failing = False
                except Exception as exc:  # the database failed: try again shortly
                    if not self._failing:
                        _log.warning("webhook %s: %r", self.webhook_id, exc)
                    self._failing = True
                    await self._wait(_STORE_RETRY_SECONDS)
        finally:
            if self.holding:
                with trio.move_on_after(2.0) as scope:
                    scope.shield = True
                    try:
                        await self.store.release_lease(self.lease, self.deliverer.node)
                    except Exception as exc:
                        _log.debug("webhook %s: lease not released: %r", self.webhook_id, exc)

    async def _claim(self) -> bool:
        deliverer = self.deliverer
        now = deliverer.clock()
        until = now + deliverer.lease_seconds
        self.holding = await self.store.claim_lease(
            self.lease, deliverer.node, now=now, until=until
        )
        self.lease_until = until if self.holding else 0.0
        return self.holding

    async def _step(self) -> bool:
        """One round: claim, look, deliver or wait. False once the subscription is gone or
        paused (the lease given up)."""
        deliverer = self.deliverer
        renew_every = deliverer.lease_seconds / 3
        if not await self._claim():
            await self._wait(renew_every)  # another node delivers it
            return True
        webhook = await self.store.get_webhook(self.webhook_id)
        if webhook is None:
            return False
        if webhook.state == "paused":
            return False
        now = deliverer.clock()
        if webhook.next_attempt_at > now:
            await self._wait(min(webhook.next_attempt_at - now, renew_every))
            return True
        await self._deliver(webhook)
        return True

    async def _deliver(self, webhook: Webhook) -> None:
        """Sends what follows the cursor and records the outcome, or waits for events."""
        deliverer = self.deliverer
        after = max(webhook.cursor, self.scanned)
        last = await self.store.last_event()
        limit = BATCH_EVENTS if webhook.attempts == 0 else 1
        events = await self.store.events(after, limit, types=webhook.types or None)
        if not events:
            # Nothing of its types up to ``last``: wait for anything newer.
            self.scanned = max(self.scanned, last)
            await self._wait(
                deliverer.lease_seconds / 3,
                lambda: self.store.wait_for_events(max(after, last)),
            )
            return
        if deliverer.clock() + deliverer.settings.timeout + 1 > self.lease_until:
            return  # too little lease left for a request: renew first
        events = _batch(events)
        outcome = await send_once(
            webhook,
            events,
            settings=deliverer.settings,
            now=deliverer.clock(),
            ssl_context=deliverer.ssl_context,
            resolve=deliverer.resolve,
        )
        # A node stopping now still records what the receiver answered (else it is sent
        # again after the restart).
        with trio.move_on_after(_STORE_RETRY_SECONDS) as recording:
            recording.shield = True
            await self._record(webhook, events, outcome)

    async def _record(self, webhook: Webhook, events: Sequence[Event], outcome: Outcome) -> None:
        deliverer = self.deliverer
        now = deliverer.clock()
        # Paused meanwhile (by an administrator, on any node): recording keeps it paused.
        # A pause (or resume) landing after this read wins the compare-and-set on the state
        # below: nothing is recorded, and the events go out again once it is active.
        latest = await self.store.get_webhook(webhook.id)
        if latest is None:
            return
        paused = latest.state == "paused"
        if outcome.ok:
            if webhook.state == "failing":
                _log.info("webhook %s: delivering again", webhook.id)
            await self.store.advance_webhook(
                webhook.id,
                expected_cursor=webhook.cursor,
                cursor=events[-1].seq,
                state="paused" if paused else "active",
                attempts=0,
                next_attempt_at=0.0,
                last_error=None,
                last_success_at=now,
                expected_state=latest.state,
            )
            return
        attempts = webhook.attempts + 1
        error = outcome.error or "failed"
        if webhook.state != "failing":
            _log.warning("webhook %s: %s (will retry)", webhook.id, error)
        failed: list[WebhookFailure] = []
        cursor, next_at = webhook.cursor, now + deliverer.retry.delay(attempts, rng=deliverer.rng)
        if attempts >= deliverer.settings.max_attempts:
            head = events[0]
            _log.warning(
                "webhook %s: event %d dead-lettered after %d attempts: %s",
                webhook.id,
                head.seq,
                attempts,
                error,
            )
            failed.append(WebhookFailure(webhook.id, head.seq, now, attempts, error))
            cursor, attempts, next_at = head.seq, 0, 0.0
        await self.store.advance_webhook(
            webhook.id,
            expected_cursor=webhook.cursor,
            cursor=cursor,
            state="paused" if paused else "failing",
            attempts=attempts,
            next_attempt_at=next_at,
            last_error=error,
            last_success_at=webhook.last_success_at,
            failed=failed,
            expected_state=latest.state,
        )

    async def _wait(
        self, seconds: float, until: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Waits ``seconds`` at most, less when nudged or when ``until()`` returns."""
        with trio.move_on_after(max(0.0, seconds)):
            async with trio.open_nursery() as nursery:

                async def first(wait: Callable[[], Awaitable[object]]) -> None:
                    await wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first, self._nudged.wait)
                if until is not None:
                    nursery.start_soon(first, until)
        if self._nudged.is_set():
            self._nudged = trio.Event()
