"""One webhook request: HTTP/1.1 (h11) over Trio, to an address :mod:`~mdmgate.webhooks.ssrf`
vetted on this very attempt.

The host name is resolved, every address checked, and the connection made to a checked
address (the next one when it refuses), never to the name: so no second resolution can
point it elsewhere. TLS names the host (SNI) and verifies the certificate against it. One
connection per request (``Connection: close``): a delivery is a handful of requests per
subscription, and a kept connection would outlive the check that let it in. Redirects are
answers like any other (not followed: the target could be anything).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import h11
import trio

from mdmgate import __version__
from mdmgate.webhooks.ssrf import (
    Resolver,
    WebhookUrl,
    system_resolver,
    vetted_addresses,
)

__all__ = ["MAX_EXCERPT", "Answer", "DeliveryFailed", "post"]

#: How much of an answer's body is kept (for the error a failure records).
MAX_EXCERPT = 512

_USER_AGENT = f"mdmgate/{__version__} (webhooks)"


class DeliveryFailed(Exception):
    """A request that got no HTTP answer: no connection, TLS refused, no answer in time,
    or a malformed one; the message says which."""


@dataclass(frozen=True)
class Answer:
    status: int
    #: The start of the body (up to :data:`MAX_EXCERPT` bytes).
    excerpt: bytes


async def post(
    target: WebhookUrl,
    body: bytes,
    headers: Sequence[tuple[str, str]],
    *,
    allow_private: bool,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    resolve: Resolver = system_resolver,
) -> Answer:
    """POSTs ``body`` (JSON) with ``headers`` to ``target`` and returns the answer's status,
    all within ``timeout`` seconds (resolution included). Raises
    :class:`~mdmgate.webhooks.ssrf.UrlRefused` when the host resolves to an address it may not
    reach (unless ``allow_private``), :class:`DeliveryFailed` when there is no answer.
    ``ssl_context`` defaults to the system's trust store."""
    with trio.move_on_after(timeout) as scope:
        addresses = await vetted_addresses(target, allow_private=allow_private, resolve=resolve)
        stream = await _connect(target, [str(a) for a in addresses], ssl_context)
        try:
            return await _exchange(stream, target, body, headers)
        finally:
            await trio.aclose_forcefully(stream)
    assert scope.cancelled_caught
    raise DeliveryFailed(f"no answer within {timeout:g} s")


async def _connect(
    target: WebhookUrl, addresses: list[str], ssl_context: ssl.SSLContext | None
) -> trio.abc.Stream:
    errors: list[str] = []
    for address in addresses:
        try:
            tcp = await trio.open_tcp_stream(address, target.port)
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or exc}")
            continue
        if target.scheme != "https":
            return tcp
        context = ssl_context if ssl_context is not None else ssl.create_default_context()
        tls = trio.SSLStream(tcp, context, server_hostname=target.host, https_compatible=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            await trio.aclose_forcefully(tls)
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise DeliveryFailed(f"TLS with {target.host} ({address}) failed: {cause}") from None
        return tls
    raise DeliveryFailed(f"cannot connect to {target.host}:{target.port}: {'; '.join(errors)}")


async def _exchange(
    stream: trio.abc.Stream,
    target: WebhookUrl,
    body: bytes,
    headers: Sequence[tuple[str, str]],
) -> Answer:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="POST",
        target=target.target,
        headers=[
            ("Host", target.host_header),
            ("User-Agent", _USER_AGENT),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *headers,
        ],
    )
    status: int | None = None
    excerpt = b""
    try:
        await stream.send_all(conn.send(request) + conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data and status is not None:
                    break  # the answer's status is what counts; its body may be cut short
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                excerpt = (excerpt + bytes(event.data))[:MAX_EXCERPT]
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    except (trio.BrokenResourceError, h11.ProtocolError) as exc:
        if status is None:
            raise DeliveryFailed(f"no answer from {target.host}: {exc}") from None
    if status is None:
        raise DeliveryFailed(f"{target.host} closed the connection without an answer")
    return Answer(status, excerpt)
