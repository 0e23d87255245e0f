"""The admin API's webhooks: subscriptions to the event log that the gateway pushes to.

A subscription names a URL and the event types it wants (exact, or a family as
``command.*``; none: all). Its secret, with which every request is signed
(:mod:`mdmgate.webhooks.signing`), is shown once, in the answer that creates it. It starts at
the log's end: it receives what happens from then on. Delivery, retries and dead letters are
:mod:`mdmgate.webhooks.delivery`'s; which URLs are refused, :mod:`mdmgate.webhooks.ssrf`'s.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from msgspec import Meta, Struct

from mdmgate.events import UnknownEventType, check_types
from mdmgate.server.api_base import (
    _MAX_CURSOR,
    _check_content_type,
    _decode,
    _event_cursor,
    _json,
    _query,
    _query_limit,
    _refuse,
)
from mdmgate.server.routes import Operation, QueryParam
from mdmgate.server.types import Request, Response
from mdmgate.storage import Webhook, WebhookFailure
from mdmgate.webhooks.delivery import (
    DeliveryStore,
    WebhookBusy,
    pause_webhook,
    ping_event,
    resume_webhook,
    send_once,
)
from mdmgate.webhooks.settings import WebhookSettings
from mdmgate.webhooks.signing import new_secret
from mdmgate.webhooks.ssrf import (
    MAX_URL_LENGTH,
    Resolver,
    UrlRefused,
    parse_webhook_url,
    system_resolver,
    vetted_addresses,
)

__all__ = [
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "PingOut",
    "WebhookCreated",
    "WebhookFailureOut",
    "WebhookFailuresOut",
    "WebhookIn",
    "WebhookOut",
    "WebhooksApi",
    "WebhooksOut",
    "operations",
]

#: Event types one subscription may name at most.
MAX_TYPES = 50


class WebhookIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A new subscription."""

    url: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_URL_LENGTH,
            description=(
                "Where the events are POSTed: https, on a host whose every address is"
                " public (loopback, private, link-local and other internal addresses are"
                " refused unless `[webhooks] allow_private` or `--dev`)."
            ),
        ),
    ]
    types: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=100)]],
        Meta(
            max_length=MAX_TYPES,
            description="Event types, or families as `command.*`; empty (the default): all.",
        ),
    ] = []
    description: Annotated[str, Meta(max_length=500)] = ""


class WebhookOut(Struct, kw_only=True):
    """A subscription and how its delivery goes (never its secret)."""

    id: str
    url: str
    types: list[str]
    description: str
    state: Annotated[
        str,
        Meta(
            description=(
                "`active`, `failing` (retrying; `last_error` says why) or `paused` (by an"
                " administrator)."
            )
        ),
    ]
    cursor: Annotated[
        int, Meta(description="The last event it acknowledged (or skipped as a dead letter).")
    ]
    attempts: Annotated[int, Meta(description="Failed attempts at the oldest pending event.")]
    next_attempt_at: Annotated[
        dt.datetime | None, Meta(description="When a failing subscription tries again.")
    ]
    last_error: str | None
    last_success_at: dt.datetime | None
    created_at: dt.datetime


class WebhookCreated(WebhookOut, kw_only=True):
    """A new subscription, with its secret: shown this once."""

    secret: Annotated[
        str,
        Meta(
            description=(
                "The HMAC-SHA256 key of the `Mdmgate-Signature` header: keep it, it is not"
                " shown again."
            )
        ),
    ]


class WebhooksOut(Struct):
    webhooks: list[WebhookOut]


class WebhookFailureOut(Struct):
    """An event given up after its attempts (a dead letter); the event stays in the log
    (``GET /api/v1/events``) until pruned."""

    seq: int
    at: dt.datetime
    attempts: int
    error: str


class WebhookFailuresOut(Struct):
    failures: list[WebhookFailureOut]
    next: Annotated[
        int | None, Meta(description="Pass as `after` for the next page; `null`: no more.")
    ]


class PingOut(Struct):
    """What the receiver made of a ``webhook.ping`` event."""

    ok: Annotated[bool, Meta(description="Whether it answered 2xx.")]
    status: Annotated[int | None, Meta(description="Its HTTP status, if it answered.")]
    error: str | None


REQUEST_TYPES: tuple[type[Any], ...] = (WebhookIn,)
RESPONSE_TYPES: tuple[type[Any], ...] = (
    WebhookOut,
    WebhookCreated,
    WebhooksOut,
    WebhookFailureOut,
    WebhookFailuresOut,
    PingOut,
)


def _time(value: float | None) -> dt.datetime | None:
    return None if not value else dt.datetime.fromtimestamp(value, dt.UTC)


def _fields(w: Webhook) -> dict[str, Any]:
    return {
        "id": w.id,
        "url": w.url,
        "types": list(w.types),
        "description": w.description,
        "state": w.state,
        "cursor": w.cursor,
        "attempts": w.attempts,
        "next_attempt_at": _time(w.next_attempt_at) if w.state == "failing" else None,
        "last_error": w.last_error,
        "last_success_at": _time(w.last_success_at),
        "created_at": dt.datetime.fromtimestamp(w.created_at, dt.UTC),
    }


def _out(w: Webhook) -> WebhookOut:
    return WebhookOut(**_fields(w))


class WebhooksApi:
    """The handlers of ``/api/v1/webhooks``. ``settings`` decides which URLs are refused and
    how a test request is sent; ``on_changed(webhook_id)`` is told of every change (the
    node's :meth:`~mdmgate.webhooks.delivery.WebhookDeliverer.wake`)."""

    def __init__(
        self,
        store: DeliveryStore,
        settings: WebhookSettings,
        *,
        on_changed: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        resolve: Resolver = system_resolver,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_changed = on_changed
        self.clock = clock
        self.resolve = resolve

    def _changed(self, webhook_id: str) -> None:
        if self.on_changed is not None:
            self.on_changed(webhook_id)

    async def _webhook(self, webhook_id: str) -> Webhook:
        found = await self.store.get_webhook(webhook_id)
        if found is None:
            raise _refuse(404, f"no webhook {webhook_id!r}")
        return found

    async def create(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        given = _decode(request.body, WebhookIn)
        allow = self.settings.allow_private
        try:
            target = parse_webhook_url(given.url, allow_private=allow)
        except UrlRefused as exc:
            raise _refuse(422, str(exc), "$.url") from None
        for index, name in enumerate(given.types):
            try:
                check_types([name])
            except UnknownEventType as exc:
                raise _refuse(422, str(exc), f"$.types[{index}]") from None
        # Resolved last: everything else is refused without a DNS round trip.
        try:
            await vetted_addresses(target, allow_private=allow, resolve=self.resolve)
        except UrlRefused as exc:
            raise _refuse(422, str(exc), "$.url") from None
        webhook = Webhook(
            id=uuid.uuid4().hex,
            url=given.url,
            secret=new_secret(),
            types=tuple(dict.fromkeys(given.types)),
            created_at=self.clock(),
            description=given.description,
            cursor=await self.store.last_event(),
        )
        await self.store.put_webhook(webhook)
        self._changed(webhook.id)
        return _json(201, WebhookCreated(**_fields(webhook), secret=webhook.secret))

    async def list_all(self, request: Request, params: Mapping[str, str]) -> Response:
        _query(request, ())
        return _json(200, WebhooksOut([_out(w) for w in await self.store.list_webhooks()]))

    async def show(self, request: Request, params: Mapping[str, str]) -> Response:
        return _json(200, _out(await self._webhook(params["id"])))

    async def delete(self, request: Request, params: Mapping[str, str]) -> Response:
        found = await self._webhook(params["id"])
        if not await self.store.delete_webhook(found.id):
            raise _refuse(404, f"no webhook {found.id!r}")
        self._changed(found.id)
        return _json(200, _out(found))

    async def pause(self, request: Request, params: Mapping[str, str]) -> Response:
        webhook_id = params["id"]
        # Returns once no node delivers it: a request in flight is over and recorded.
        settle = self.settings.timeout + 2
        try:
            paused = await pause_webhook(
                self.store,
                webhook_id,
                settle=settle,
                clock=self.clock,
                notify=lambda: self._changed(webhook_id),
            )
        except WebhookBusy as exc:
            raise _refuse(409, str(exc)) from None
        if paused is None:
            raise _refuse(404, f"no webhook {webhook_id!r}")
        return _json(200, _out(paused))

    async def resume(self, request: Request, params: Mapping[str, str]) -> Response:
        webhook_id = params["id"]
        try:
            resumed = await resume_webhook(self.store, webhook_id)
        except WebhookBusy as exc:
            raise _refuse(409, str(exc)) from None
        if resumed is None:
            raise _refuse(404, f"no webhook {webhook_id!r}")
        self._changed(webhook_id)
        return _json(200, _out(resumed))

    async def failures(self, request: Request, params: Mapping[str, str]) -> Response:
        query = _query(request, ("after", "limit"))
        after = _event_cursor(query.get("after"))
        limit = _query_limit(query.get("limit"))
        found = await self._webhook(params["id"])
        letters = await self.store.webhook_failures(found.id, after=after, limit=limit)
        more = letters[-1].seq if len(letters) == limit else None
        return _json(200, WebhookFailuresOut([_failure(f) for f in letters], more))

    async def test(self, request: Request, params: Mapping[str, str]) -> Response:
        found = await self._webhook(params["id"])
        now = self.clock()
        outcome = await send_once(
            found, [ping_event(found.id, now)], settings=self.settings, now=now,
            resolve=self.resolve,
        )  # fmt: skip
        return _json(200, PingOut(outcome.ok, outcome.status, outcome.error))


def _failure(f: WebhookFailure) -> WebhookFailureOut:
    return WebhookFailureOut(f.seq, dt.datetime.fromtimestamp(f.at, dt.UTC), f.attempts, f.error)


_ID = {"id": "The webhook id."}


def operations(api: WebhooksApi) -> list[Operation]:
    """The webhook operations, with their handlers."""
    return [
        Operation(
            "POST",
            "/api/v1/webhooks",
            api.create,
            "Subscribe a URL to events; the answer holds its signing secret, shown once.",
            ("201", "The subscription and its secret.", "WebhookCreated"),
            ("400", "415", "422"),
            request="WebhookIn",
            description=(
                'Events are POSTed in batches (`{"webhook_id": ..., "events": [...]}`),'
                " oldest first, at least once (drop repeats by `seq`), signed with"
                ' `Mdmgate-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.'
                " Anything but a 2xx is retried with exponential backoff; after"
                " `[webhooks] max_attempts` attempts the event is a dead letter and delivery"
                " moves on. The subscription receives what happens after it is created."
            ),
        ),
        Operation(
            "GET",
            "/api/v1/webhooks",
            api.list_all,
            "Every subscription, oldest first.",
            ("200", "The subscriptions (without secrets).", "WebhooksOut"),
            ("400", "422"),
        ),
        Operation(
            "GET",
            "/api/v1/webhooks/{id}",
            api.show,
            "A subscription: state, cursor, attempts, last error.",
            ("200", "The subscription (without its secret).", "WebhookOut"),
            ("404",),
            params=_ID,
        ),
        Operation(
            "DELETE",
            "/api/v1/webhooks/{id}",
            api.delete,
            "Delete a subscription and its dead letters.",
            ("200", "The subscription as it was.", "WebhookOut"),
            ("404",),
            params=_ID,
        ),
        Operation(
            "POST",
            "/api/v1/webhooks/{id}/pause",
            api.pause,
            "Stop delivering (events keep accumulating after its cursor).",
            ("200", "The subscription, paused: no request is in flight any more.", "WebhookOut"),
            ("404", "409"),
            params=_ID,
        ),
        Operation(
            "POST",
            "/api/v1/webhooks/{id}/resume",
            api.resume,
            "Deliver again, from where it stopped, retrying at once.",
            ("200", "The subscription.", "WebhookOut"),
            ("404", "409"),
            params=_ID,
        ),
        Operation(
            "GET",
            "/api/v1/webhooks/{id}/failures",
            api.failures,
            "The dead letters: events given up after their attempts, oldest first.",
            ("200", "A page of dead letters.", "WebhookFailuresOut"),
            ("400", "404", "422"),
            params=_ID,
            query=(
                QueryParam(
                    "after",
                    "The `next` of the last page (an event seq); default 0.",
                    {"type": "integer", "minimum": 0, "maximum": _MAX_CURSOR},
                ),
                QueryParam(
                    "limit",
                    "At most this many (default 100).",
                    {"type": "integer", "minimum": 1, "maximum": 1000},
                ),
            ),
        ),
        Operation(
            "POST",
            "/api/v1/webhooks/{id}/test",
            api.test,
            "Send a signed `webhook.ping` event (seq 0) now, outside the log; the cursor is"
            " left alone.",
            ("200", "What the receiver answered.", "PingOut"),
            ("404",),
            params=_ID,
        ),
    ]
