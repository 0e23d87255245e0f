"""HTTP/1.1 and HTTP/2 on one port, in cleartext or under TLS, for Trio.

One listener speaks both protocols. Under TLS the ALPN choice decides (``h2`` or
``http/1.1``); in cleartext a connection that opens with the HTTP/2 client preface
(``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``, "prior knowledge") is HTTP/2 and anything else is
HTTP/1.1. HTTP/1.1 is parsed by the Rust core (:mod:`~mdmgate.server.http1` holds its
connections), HTTP/2 by h2; both turn into the protocol-neutral
:class:`~mdmgate.server.types.Request` and :class:`~mdmgate.server.types.Response`.

Everything a client can make the server hold is bounded by :class:`Limits`: request bodies and
header blocks, the time to send a request, idle keep-alive, HTTP/2 streams per connection,
queued response bytes per connection, connections per client address and across the server,
and requests in flight. Past the last ones the server answers at once (429 or 503, with
``Retry-After``) instead of queueing. HTTP/2 clients that reset streams or send PING/SETTINGS
frames faster than their budget (the "rapid reset" and control-frame floods) get ``GOAWAY
ENHANCE_YOUR_CALM`` and lose their connection; nobody else notices.

Idle connections cannot lock others out: one address gets at most
``max_connections_per_client`` (429 beyond), and near ``max_connections`` each new
connection closes the one that has waited longest, idle or still without a complete request
head (``shed_idle_at``); only when none waits are new ones refused.

Choices worth knowing:

* An HTTP/1.1 request whose body exceeds ``max_body_bytes`` is answered ``413`` and the
  connection closed. The server reads on (discarding) up to another ``max_body_bytes`` (at least
  1 MiB) first, so an ordinary client that writes its whole body before reading sees the 413
  rather than a reset; a bigger body is cut off.
* On HTTP/2 a too-large body gets a complete ``413`` response on its stream followed by
  ``RST_STREAM NO_ERROR`` (RFC 9113 section 8.1: "stop sending, the response is complete"). The
  connection and its other streams carry on. A header block over ``max_header_bytes`` gets
  ``431`` the same way; one over twice that is not even decoded: the connection is closed with
  ``ENHANCE_YOUR_CALM`` (HPACK state cannot survive an abandoned block).
* Requests are handed to the handler only once complete (the handler receives ``bytes``).
* A malformed HTTP/1.1 request head is answered ``400`` (``431`` when too large, ``501`` for a
  transfer coding other than chunked, ``505`` for an HTTP version other than 1.0 and 1.1) and
  the connection closed; :mod:`~mdmgate.server.http1` lists what is refused.
* An HTTP/1.1 request with both ``Content-Length`` and ``Transfer-Encoding`` gets ``400`` and
  the connection is closed: behind a proxy that frames by the other header, the body would be
  read as a second request (request smuggling). On HTTP/2 ``Transfer-Encoding`` (like any
  connection-specific header, or a bad name, value or pseudo-header) makes the request
  malformed: ``400`` on that stream, then ``RST_STREAM PROTOCOL_ERROR`` if the client is still
  sending; the connection and its other streams carry on (RFC 9113 section 8.1.1).
* Graceful drain (:meth:`Server.drain`): listeners close, idle connections close, HTTP/2
  connections get ``GOAWAY`` (new streams are refused with ``REFUSED_STREAM``, safe to retry),
  in-flight requests finish and HTTP/1.1 responses carry ``Connection: close``; after
  ``Limits.drain_grace`` seconds whatever is left is cancelled.
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import logging
import math
import os
import re
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.utilities
import msgspec
import trio

from .metrics import Metrics
from .types import Handler, Request, Response

if TYPE_CHECKING:
    from .http1 import H1Connection

__all__ = [
    "Limits",
    "Listener",
    "Server",
    "listener_port",
    "open_listeners",
    "serve",
    "server_ssl_context",
]

_log = logging.getLogger("mdmgate.server")
_access_log = logging.getLogger("mdmgate.access")

#: What :func:`serve` listens on: plain TCP, or TLS over TCP.
Listener = trio.SocketListener | trio.SSLListener[trio.SocketStream]
_Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_READ_CHUNK = 65536
_WRITE_CHUNK = 65536
_MIN_DISCARD = 1024 * 1024
_LINGER_SECONDS = 1.0
_MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client (or all of them) can make the server hold or wait for.

    HTTP/1.1 timeouts are checked by one sweep over the connections every tenth of the
    shortest timeout (at most every second), so they fire up to that much late; a sweep
    costs far less than a timer per read and write.
    """

    max_body_bytes: int = 16 * _MiB
    """16 MiB: a 1.6 MB SyncML inventory (reassembled) fits ten times over; Apple reports are
    smaller. Larger bodies get 413."""

    max_header_bytes: int = 16 * 1024
    """16 KiB for the request line and headers (HTTP/2: the decoded header list, counted as
    RFC 9113 does, 32 bytes per field extra). Device requests carry a few hundred bytes;
    larger blocks get 431."""

    header_timeout: float = 10.0
    """10 s to deliver the TLS handshake and the request head once the connection (or the
    request) starts. A client trickling bytes is dropped (408) rather than holding a slot."""

    read_timeout: float = 10.0
    """10 s to receive the whole request, head and body, once it starts: enough for a 1.6 MB
    body at 160 KB/s. HTTP/2 applies it per stream."""

    idle_timeout: float = 60.0
    """60 s of keep-alive with no request in progress before the server closes the
    connection; devices poll far less often, so they reconnect either way."""

    write_timeout: float = 30.0
    """30 s for the client to accept the next 64 KiB of response; a client that stops
    reading is dropped."""

    max_concurrent_streams: int = 100
    """100 HTTP/2 streams per connection, advertised in SETTINGS (the RFC's suggested
    minimum); each stream's request is handled in its own task."""

    max_resets: int = 100
    """100 client RST_STREAMs per connection per ``abuse_window``. Honest clients reset
    rarely; past the budget ("rapid reset", CVE-2023-44487) the connection gets GOAWAY
    ENHANCE_YOUR_CALM and is closed."""

    max_control_frames: int = 500
    """500 PING, SETTINGS, PRIORITY, unknown or empty DATA frames per connection per
    ``abuse_window``: each costs work (and PING/SETTINGS an answer) without a request. Past
    the budget: GOAWAY ENHANCE_YOUR_CALM."""

    abuse_window: float = 10.0
    """10 s: the window over which ``max_resets`` and ``max_control_frames`` are counted."""

    max_outbound_bytes: int = 1 * _MiB
    """1 MiB of response bytes queued but not yet taken by the socket, per connection.
    Response bodies wait below half of it; a client that makes the server queue more (by
    never reading while asking for PING answers, say) is dropped."""

    max_connection_body_bytes: int = 64 * _MiB
    """64 MiB of request bodies buffered at once across the streams of one HTTP/2
    connection; a stream that would exceed it is refused (RST_STREAM REFUSED_STREAM, safe to
    retry)."""

    max_connections: int = 1000
    """1000 open client connections. Near it (``shed_idle_at``) the server makes room by
    closing connections that wait; past it, with none waiting, new ones get 503 with
    Retry-After (a tenth of the limit at a time; the rest are closed at once) instead of
    queueing."""

    max_connections_per_client: int = 250
    """250 connections at once from one client address (an IPv6 client: its /64), a quarter
    of ``max_connections``: one address alone cannot fill the server, whatever it opens
    and leaves idle. More get 429 with Retry-After and are closed (up to a tenth of the
    budget at a time waits for its request to hear that; the rest are closed at once).

    Devices behind one NAT address share the budget. A device holds a connection only while
    it talks to the gateway, and those behind one address seldom all talk at once (APNs
    wakes them at ``[apns] rate``), so a site of thousands of devices stays inside 250. A
    reverse proxy or load balancer that connects on behalf of every device belongs in
    ``trusted_proxies``; for a big site behind one NAT, raise this. With ``--workers N``
    each process counts for itself."""

    trusted_proxies: tuple[str, ...] = ()
    """Empty: addresses or networks (``"10.0.0.5"``, ``"10.0.0.0/8"``, ``"fd00::/8"``) whose
    connections are exempt from ``max_connections_per_client`` (they still count towards
    ``max_connections``). List your reverse proxies and load balancers here, and the
    proxy's loopback address when it runs on the same host. Nothing a client sends is
    trusted to say who it is: the budget is decided when a connection opens, from its
    address, before any ``Forwarded`` or ``X-Forwarded-For`` header could be read."""

    shed_idle_at: float = 0.9
    """0.9: once open connections reach this share of ``max_connections``, each new
    connection makes the server close the one that has waited longest: a keep-alive
    connection idle between requests (HTTP/2: with no stream open), or one still without a
    complete request head (TLS handshake included; answered 503 if it had begun one).
    Connections with a request in progress are never shed. Only when no connection waits
    are new ones refused (503). Above 1, the server never sheds. Idle and slow connections
    from many addresses (slowloris) thus cost well-behaved clients a reconnection at most,
    not their service."""

    max_in_flight: int = 256
    """256 requests being handled at once across the server; more get 429 with
    Retry-After at once. Enough to saturate storage while keeping latency bounded."""

    retry_after: int = 1
    """1 s: the Retry-After sent with 429 and 503."""

    drain_grace: float = 30.0
    """30 s for in-flight requests to finish after :meth:`Server.drain` before they are
    cancelled."""

    def __post_init__(self) -> None:
        proxies = self.trusted_proxies
        # A config file gives a list (or one string): kept as a tuple, checked.
        proxies = (proxies,) if isinstance(proxies, str) else tuple(proxies)
        object.__setattr__(self, "trusted_proxies", proxies)
        for entry in proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except (TypeError, ValueError):
                raise ValueError(
                    f"Limits.trusted_proxies: {entry!r} is not an IP address or network"
                ) from None
        for name, value in vars(self).items():
            if name == "trusted_proxies":
                continue
            if not value > 0 or (isinstance(value, float) and math.isnan(value)):
                raise ValueError(f"Limits.{name} must be positive, got {value!r}")


# ---------------------------------------------------------------------------------------------
# TLS and listeners


def server_ssl_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    client_ca_file: str | os.PathLike[str] | None = None,
    *,
    client_ca_data: bytes | None = None,
) -> ssl.SSLContext:
    """A server TLS context offering ALPN ``h2`` and ``http/1.1``.

    TLS 1.2 or later with AEAD ciphers only (RFC 9113 section 9.2), no compression and no
    renegotiation. With ``client_ca_file`` and/or ``client_ca_data`` (PEM), clients may
    present a certificate issued by those CAs (``CERT_OPTIONAL``: devices without one can
    still enrol or reach ``/healthz``); a verified certificate reaches handlers as
    ``Request.client_cert`` (DER).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if client_ca_file is not None:
        context.load_verify_locations(cafile=client_ca_file)
    if client_ca_data is not None:
        context.load_verify_locations(cadata=client_ca_data.decode("ascii"))
    if client_ca_file is not None or client_ca_data is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


async def open_listeners(
    host: str | None, port: int, ssl_context: ssl.SSLContext | None = None
) -> list[Listener]:
    """TCP listeners on ``host``:``port`` (``port`` 0 picks a free one), under TLS when
    ``ssl_context`` is given."""
    listeners: list[Listener] = []
    for tcp in await trio.open_tcp_listeners(port, host=host):
        if ssl_context is None:
            listeners.append(tcp)
        else:
            listeners.append(trio.SSLListener(tcp, ssl_context, https_compatible=True))
    return listeners


def listener_port(listener: Listener) -> int:
    """The local port ``listener`` is bound to."""
    tcp = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    assert isinstance(tcp, trio.SocketListener)
    port: int = tcp.socket.getsockname()[1]
    return port


# ---------------------------------------------------------------------------------------------
# Responses


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
)


class _DateHeader:
    """The ``Date`` header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True).encode()
        return self._value


_date = _DateHeader()


class _Reply(msgspec.Struct):
    """A validated response: lower-case header names, no framing or hop-by-hop headers.
    Built once per response and owned by the connection that sends it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    log: dict[str, str] = msgspec.field(default_factory=dict)


_DROPPED = (b"", b"")
#: Header pairs already checked and encoded. Handlers send the same few pairs
#: (content-type and the like) over and over; the cap bounds what varying values can fill.
_checked_headers: dict[tuple[str, str], tuple[bytes, bytes]] = {}
_CHECKED_HEADERS_MAX = 4096


def _check_header(name: str, value: str) -> tuple[bytes, bytes]:
    """The pair as sent (``_DROPPED`` for framing and hop-by-hop headers); ``ValueError``
    when it cannot be sent."""
    lower = name.lower()
    if not _TOKEN.match(lower):
        raise ValueError(f"invalid header name {name!r}")
    if _BAD_VALUE.search(value):
        raise ValueError(f"invalid value for header {name!r}")
    if lower in _HOP_BY_HOP or lower == "content-length":
        return _DROPPED
    return lower.encode("ascii"), value.strip().encode("latin-1")


def _encode_reply(response: Response) -> _Reply:
    """Check a handler's response; ``ValueError``/``TypeError`` when it cannot be sent."""
    if not isinstance(response, Response):
        raise TypeError(f"handler returned {type(response).__name__}, not Response")
    if not 200 <= response.status <= 599:
        raise ValueError(f"status {response.status} is not a final status")
    if not isinstance(response.body, bytes):
        raise TypeError("Response.body must be bytes")
    headers: list[tuple[bytes, bytes]] = []
    has_date = False
    for pair in response.headers:
        checked = _checked_headers.get(pair)
        if checked is None:
            checked = _check_header(*pair)
            if len(_checked_headers) < _CHECKED_HEADERS_MAX:
                _checked_headers[pair] = checked
        if checked is _DROPPED:
            continue
        has_date = has_date or checked[0] == b"date"
        headers.append(checked)
    if not has_date:
        headers.append((b"date", _date()))
    return _Reply(response.status, headers, response.body, response.log)


def _text_reply(status: int, message: str, retry_after: int | None = None) -> _Reply:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"date", _date())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return _Reply(status, headers, message.encode() + b"\n")


def _split_target(target: str) -> tuple[str, str]:
    """``(path, query)`` of an origin-form (``/a?b``) or absolute-form request target."""
    if target.startswith("/") or target == "*":
        path, _, query = target.partition("?")
        return path, query
    parts = urllib.parse.urlsplit(target)
    return parts.path or "/", parts.query


def _peer_name(stream: _Stream) -> str:
    tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    try:
        address = tcp.socket.getpeername()
    except OSError:
        return "unknown"
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


async def _linger_close(stream: _Stream) -> None:
    """Half-close and read until the client closes (briefly), so that unread request bytes
    do not make the kernel reset the connection before the client has read our response."""
    with trio.move_on_after(_LINGER_SECONDS):
        try:
            if isinstance(stream, trio.SocketStream):
                await stream.send_eof()
            discarded = 0
            while discarded < _MIN_DISCARD:
                data = await stream.receive_some(_READ_CHUNK)
                if not data:
                    return
                discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


# ---------------------------------------------------------------------------------------------
# The server


class _Close(Exception):
    """Stop serving this connection now (no response is possible or worth it)."""


@dataclass(frozen=True, slots=True)
class _ConnectionInfo:
    peer: str
    client_cert: bytes | None
    #: When the connection was accepted (Trio clock).
    connected: float
    #: Turned away (over the connection limit, or its client's budget): answer the first
    #: request with this, and close.
    reject: _Reply | None
    #: The connection's place in the server's books.
    slot: _Slot


class _Pending:
    """A connection still in its TLS handshake or first bytes: drain() and shed() just
    cancel it."""

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.shed_requested = False

    def drain(self) -> None:
        if self.scope is not None:
            self.scope.cancel()

    def shed(self) -> None:
        self.shed_requested = True
        self.drain()


class _Slot:
    """An accepted connection's place in the server's books: the client it counts against,
    and what to tell to close it when it is shed. While it waits (idle between requests, or
    without a complete request head) it sits in ``Server._waiting``, oldest first."""

    __slots__ = ("client", "rejecting", "released", "shed", "target")

    def __init__(self, client: str | None, rejecting: bool) -> None:
        #: The budget key (``None``: exempt, a trusted proxy).
        self.client = client
        #: Being turned away: counted in ``Server._rejecting``, never waiting.
        self.rejecting = rejecting
        #: Counted out of the books already (shed, or closed).
        self.released = False
        #: Shed before the connection had a phase to tell.
        self.shed = False
        self.target: _Pending | H1Connection | _H2Connection | None = None


class Server:
    """Serves ``handler`` on listeners until cancelled, or until :meth:`drain` has done its work.

    Usage::

        server = Server(handler, Limits(), metrics=metrics)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, listeners)
            ...
            server.drain()   # run() returns once in-flight requests are done
    """

    def __init__(
        self, handler: Handler, limits: Limits | None = None, *, metrics: Metrics | None = None
    ) -> None:
        self.handler = handler
        self.limits = limits if limits is not None else Limits()
        self.metrics = metrics if metrics is not None else Metrics()
        self._drain_requested = trio.Event()
        self._connections: set[_Pending | H1Connection | _H2Connection] = set()
        #: HTTP/1.1 connections whose deadlines the sweeper checks.
        self._watched: set[H1Connection] = set()
        #: How often the sweeper runs: timeouts fire up to this late.
        limits = self.limits
        shortest = min(
            limits.header_timeout, limits.read_timeout, limits.idle_timeout, limits.write_timeout
        )
        self.sweep_interval = min(1.0, shortest / 10)
        self._open = 0
        self._rejecting = 0
        self._in_flight = 0
        self._max_rejecting = max(8, limits.max_connections // 10)
        #: Connections held per client (served or being turned away), by budget key.
        self._clients: dict[str, int] = {}
        #: A client's connections beyond which even the 429 answer is not waited for.
        self._client_ceiling = limits.max_connections_per_client + max(
            8, limits.max_connections_per_client // 10
        )
        self._trusted = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in limits.trusted_proxies
        )
        #: Connections that wait (see _Slot), in the order they started waiting.
        self._waiting: dict[_Slot, None] = {}
        #: Open connections from which each new one sheds a waiting one.
        self._shed_from = math.ceil(limits.shed_idle_at * limits.max_connections)

    @property
    def open_connections(self) -> int:
        """Client connections currently open (including those being turned away)."""
        return self._open + self._rejecting

    @property
    def in_flight(self) -> int:
        """Requests currently in the handler."""
        return self._in_flight

    @property
    def draining(self) -> bool:
        return self._drain_requested.is_set()

    def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (up to ``Limits.drain_grace``), then
        make :meth:`run` return. Safe to call more than once, and before :meth:`run`."""
        if self._drain_requested.is_set():
            return
        self._drain_requested.set()
        for connection in list(self._connections):
            connection.drain()

    async def run(
        self,
        listeners: Sequence[Listener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve connections on ``listeners`` (closing them when done) until
        cancelled or drained. ``task_status.started()`` is called once accepting."""
        try:
            async with trio.open_nursery() as sweeper:
                sweeper.start_soon(self._sweep_deadlines)
                async with trio.open_nursery() as connections:
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(self._accept_loop, listener, connections)
                        task_status.started()
                        await self._drain_requested.wait()
                        acceptors.cancel_scope.cancel()
                    for listener in listeners:
                        await trio.aclose_forcefully(listener)
                    for connection in list(self._connections):
                        connection.drain()
                    deadline = trio.current_time() + self.limits.drain_grace
                    connections.cancel_scope.deadline = deadline
                sweeper.cancel_scope.cancel()
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _sweep_deadlines(self) -> None:
        """Ends the HTTP/1.1 connections whose current phase has run out of time."""
        while True:
            await trio.sleep(self.sweep_interval)
            now = trio.current_time()
            for connection in list(self._watched):
                connection.check_deadline(now)

    def _client_of(self, stream: _Stream) -> str | None:
        """The key ``stream``'s client is budgeted under: its IPv4 address, or its IPv6
        /64 (what one subscriber holds); ``None`` for a trusted proxy (or no IP peer)."""
        tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        try:
            peer = tcp.socket.getpeername()
            address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
        except (OSError, ValueError, IndexError, TypeError):
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self._trusted):
            return None
        if isinstance(address, ipaddress.IPv4Address):
            return str(address)
        return str(ipaddress.IPv6Network((address, 64), strict=False))

    def _now_waiting(self, slot: _Slot) -> None:
        """``slot`` waits from now on (a keep-alive connection between requests)."""
        if not (slot.released or slot.rejecting) and slot not in self._waiting:
            self._waiting[slot] = None

    def _busy(self, slot: _Slot) -> None:
        """``slot`` has a request in progress: not to be shed."""
        self._waiting.pop(slot, None)

    def _release(self, slot: _Slot) -> None:
        """Count a connection out of the books (once)."""
        if slot.released:
            return
        slot.released = True
        self._waiting.pop(slot, None)
        if slot.rejecting:
            self._rejecting -= 1
        else:
            self._open -= 1
            self.metrics.open_connections -= 1
        if slot.client is not None:
            left = self._clients[slot.client] - 1
            if left:
                self._clients[slot.client] = left
            else:
                del self._clients[slot.client]

    def _shed_one(self) -> bool:
        """Close the connection that has waited longest; whether there was one."""
        slot = next(iter(self._waiting), None)
        if slot is None:
            return False
        self._release(slot)
        slot.shed = True
        if slot.target is not None:
            slot.target.shed()
        self.metrics.connections.inc("shed")
        return True

    def _admission(self, held: int) -> tuple[str, _Reply | None]:
        """What becomes of a new connection whose client holds ``held`` others: the outcome
        (``accepted``, ``over_budget``, ``rejected`` or ``dropped``) and, when it is turned
        away, the answer to its request."""
        limits = self.limits
        if held >= limits.max_connections_per_client:
            if held >= self._client_ceiling or self._rejecting >= self._max_rejecting:
                return "dropped", None
            message = (
                "Too many connections from your address"
                f" (at most {limits.max_connections_per_client})"
            )
            return "over_budget", _text_reply(429, message, limits.retry_after)
        if self._open >= self._shed_from:
            self._shed_one()
        if self._open < limits.max_connections:
            return "accepted", None
        if self._rejecting < self._max_rejecting:
            message = "Server at its connection limit"
            return "rejected", _text_reply(503, message, limits.retry_after)
        return "dropped", None

    async def _accept_loop(self, listener: Listener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                # Out of file descriptors or similar: wait for connections to close.
                _log.error("accept failed: %s", exc)
                self.metrics.error("accept")
                await trio.sleep(0.1)
                continue
            client = self._client_of(stream)
            held = 0 if client is None else self._clients.get(client, 0)
            outcome, reject = self._admission(held)
            self.metrics.connections.inc(outcome)
            if outcome == "dropped":
                await trio.aclose_forcefully(stream)
                continue
            slot = _Slot(client, rejecting=reject is not None)
            if client is not None:
                self._clients[client] = held + 1
            if reject is None:
                self._open += 1
                self.metrics.open_connections += 1
                self._waiting[slot] = None  # no request head yet
            else:
                self._rejecting += 1
            nursery.start_soon(self._handle, stream, slot, reject)

    async def _handle(self, stream: _Stream, slot: _Slot, reject: _Reply | None) -> None:
        try:
            if reject is not None:
                # Turned away: answer one request, within a hard deadline.
                with trio.move_on_after(self.limits.header_timeout + _LINGER_SECONDS):
                    await self._serve_stream(stream, slot, reject)
            elif not slot.shed:
                await self._serve_stream(stream, slot, None)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Close):
            pass
        except Exception:
            _log.exception("connection failed")
            self.metrics.error("connection")
        finally:
            self._release(slot)
            await trio.aclose_forcefully(stream)

    async def _serve_stream(self, stream: _Stream, slot: _Slot, reject: _Reply | None) -> None:
        connected = trio.current_time()
        pending = _Pending()
        slot.target = pending
        self._connections.add(pending)
        try:
            opening = await self._opening(stream, connected, pending)
        finally:
            self._connections.discard(pending)
        if opening is None:
            return
        alpn, client_cert, initial = opening
        info = _ConnectionInfo(_peer_name(stream), client_cert, connected, reject, slot)
        # Imported here: http1 builds on this module's helpers.
        from .http1 import H1Connection  # noqa: PLC0415

        connection: H1Connection | _H2Connection
        if alpn == "h2" or initial.startswith(_PREFACE):
            connection = _H2Connection(self, stream, info, initial)
        else:
            connection = H1Connection(self, stream, info, initial)
        slot.target = connection
        self._connections.add(connection)
        if self.draining:
            connection.drain()
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    async def _opening(
        self, stream: _Stream, connected: float, pending: _Pending
    ) -> tuple[str | None, bytes | None, bytes] | None:
        """TLS handshake and the first bytes, within ``header_timeout``: the ALPN protocol,
        the client certificate and the bytes read; ``None`` when the connection is done."""
        with trio.CancelScope(deadline=connected + self.limits.header_timeout) as scope:
            pending.scope = scope
            if self.draining:
                return None
            alpn: str | None = None
            client_cert: bytes | None = None
            if isinstance(stream, trio.SSLStream):
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError:
                    self.metrics.error("tls_handshake")
                    return None
                alpn = stream.selected_alpn_protocol()
                client_cert = stream.getpeercert(binary_form=True) or None
            initial = b""
            if alpn != "h2":
                # Read until the bytes are, or cannot be, the HTTP/2 client preface.
                while len(initial) < len(_PREFACE) and _PREFACE.startswith(initial):
                    data = await stream.receive_some(_READ_CHUNK)
                    if not data:
                        return None
                    initial += data
            return alpn, client_cert, initial
        if not self.draining and not pending.shed_requested:
            self.metrics.error("header_timeout")
        return None

    async def _dispatch(self, request: Request) -> _Reply:
        """Run the handler within the in-flight budget; never raises (except Cancelled)."""
        if self._in_flight >= self.limits.max_in_flight:
            self.metrics.error("overloaded")
            return _text_reply(429, "Too many requests in flight", self.limits.retry_after)
        self._in_flight += 1
        self.metrics.in_flight += 1
        try:
            return _encode_reply(await self.handler(request))
        except Exception:
            _log.exception("handler failed on %s %s", request.method, request.path)
            self.metrics.error("handler")
            return _text_reply(500, "Internal Server Error")
        finally:
            self._in_flight -= 1
            self.metrics.in_flight -= 1

    def _record(
        self,
        *,
        method: str,
        path: str,
        status: int,
        protocol: str,
        started: float,
        peer: str,
        bytes_in: int,
        bytes_out: int,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Metrics and one access-log line for an answered (or abandoned) request."""
        seconds = max(0.0, trio.current_time() - started)
        self.metrics.observe_request(method, status, protocol, seconds)
        if _access_log.isEnabledFor(logging.INFO):
            entry: dict[str, object] = {
                "method": method,
                "path": path,
                "status": status,
                "protocol": protocol,
                "duration_ms": round(seconds * 1000, 3),
                "peer": peer,
                "bytes": bytes_out,
                "bytes_in": bytes_in,
            }
            for key, value in (extra or {}).items():
                entry.setdefault(key, value)
            _access_log.info(msgspec.json.encode(entry).decode())


async def serve(
    handler: Handler,
    listeners: Sequence[Listener],
    limits: Limits,
    *,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``listeners`` until cancelled (see :class:`Server` for draining)."""
    await Server(handler, limits, metrics=metrics).run(listeners, task_status=task_status)


# ---------------------------------------------------------------------------------------------
# HTTP/2


class _Budget:
    """Events allowed per fixed window."""

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._start = -math.inf
        self._used = 0

    def spend(self, now: float) -> bool:
        if now - self._start >= self._window:
            self._start = now
            self._used = 0
        self._used += 1
        return self._used <= self._limit


@dataclass(eq=False)
class _H2Stream:
    stream_id: int
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    started: float
    deadline: float
    body: bytearray = field(default_factory=bytearray)
    #: The client has sent END_STREAM: the request is complete.
    ended: bool = False
    #: The client reset the stream.
    reset: bool = False
    scope: trio.CancelScope | None = None
    window: trio.Event = field(default_factory=trio.Event)


def _h2_request_head(
    raw: Sequence[tuple[bytes, bytes]],
) -> tuple[str, str, str, list[tuple[str, str]], int, int | None]:
    """``(method, path, authority, headers, size, content_length)`` of a decoded HTTP/2
    header block; ``size`` counted as for SETTINGS_MAX_HEADER_LIST_SIZE."""
    method = path = authority = ""
    headers: list[tuple[str, str]] = []
    size = 0
    content_length: int | None = None
    for raw_name, raw_value in raw:
        name = bytes(raw_name).decode("latin-1")
        value = bytes(raw_value).decode("latin-1")
        size += len(name) + len(value) + 32
        if name == ":method":
            method = value
        elif name == ":path":
            path = value
        elif name == ":authority":
            authority = value
        elif not name.startswith(":"):
            headers.append((name, value))
            if name == "content-length" and value.isdigit():
                content_length = int(value)
    return method, path, authority, headers, size, content_length


_PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
_H2_REQUEST = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_H2_TRAILERS = _H2_REQUEST._replace(is_trailer=True)


def _h2_malformed(
    raw: Sequence[tuple[bytes, bytes]], flags: h2.utilities.HeaderValidationFlags
) -> str | None:
    """What makes a received header block malformed (RFC 9113 section 8.2), by h2's own
    rules; ``None`` when it is well-formed."""
    try:
        for _ in h2.utilities.validate_headers(raw, flags):
            pass
    except h2.exceptions.ProtocolError as exc:
        return str(exc)
    return None


def _goaway_frame(last_stream_id: int, error_code: int) -> bytes:
    """A GOAWAY frame built by hand: h2 considers the connection closed once it sends one, but
    a graceful drain must keep answering the streams it already has."""
    payload = last_stream_id.to_bytes(4, "big") + error_code.to_bytes(4, "big")
    return len(payload).to_bytes(3, "big") + b"\x07\x00" + b"\x00\x00\x00\x00" + payload


class _H2Connection:
    def __init__(
        self, server: Server, stream: _Stream, info: _ConnectionInfo, initial: bytes
    ) -> None:
        self._server = server
        self._limits = limits = server.limits
        self._metrics = server.metrics
        self._stream = stream
        self._peer = info.peer
        self._client_cert = info.client_cert
        self._initial = initial
        self._reject = info.reject
        self._slot = info.slot
        # Outbound headers come from _Reply, already lower-case, stripped and checked
        # (_check_header); h2 checking them again cost about 6% of a request. Inbound
        # headers are validated with h2's own rules, by _on_request and _on_trailers: h2
        # would make a malformed request a connection error, taking the client's other
        # streams down with it, where RFC 9113 section 8.1.1 asks for a stream error.
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config)
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            },
        )
        # Blocks up to twice the advertised size are decoded (and answered 431); beyond that
        # h2 refuses to decode and the connection ends with ENHANCE_YOUR_CALM.
        self._h2.decoder.max_header_list_size = 2 * limits.max_header_bytes
        self._streams: dict[int, _H2Stream] = {}
        self._buffered_body = 0
        self._resets = _Budget(limits.max_resets, limits.abuse_window)
        self._control = _Budget(limits.max_control_frames, limits.abuse_window)
        self._outbuf = bytearray()
        self._sending = 0
        self._wake_writer = trio.Event()
        self._progress = trio.Event()
        self._low_water = limits.max_outbound_bytes // 2
        self._nursery: trio.Nursery | None = None
        self._read_scope: trio.CancelScope | None = None
        self._started = info.connected
        self._last_activity = self._started
        self._settings_received = False
        #: No more reading: the connection is being closed.
        self._closing = False
        #: h2 has sent or received GOAWAY and will not send anything more.
        self._terminated = False
        self._draining = False
        self._goaway_last: int | None = None
        #: The client closed its side.
        self._eof = False
        #: Torn down without ceremony (write timeout, queue overflow).
        self._aborted = False
        #: Closed to make room for a newcomer: no lingering.
        self._shed = False

    # -- life cycle

    def drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        if self._nursery is not None:  # else run() sends GOAWAY after the SETTINGS preface
            self._announce_goaway()
        self._poke()

    def shed(self) -> None:
        """Close to make room: no stream is open (the connection waits)."""
        self._shed = True
        self._close(h2.errors.ErrorCodes.NO_ERROR)

    def _announce_goaway(self) -> None:
        """The first, graceful GOAWAY: no new streams; the ones we have still get answers."""
        if not self._terminated:
            self._flush()
            self._goaway_last = self._h2.highest_inbound_stream_id
            self._queue(_goaway_frame(self._goaway_last, h2.errors.ErrorCodes.NO_ERROR))

    async def run(self) -> None:
        self._h2.initiate_connection()
        self._flush()
        if self._draining:
            self._announce_goaway()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._writer)
            if self._initial:
                self._process(self._initial)
            await self._read_loop()
            with trio.move_on_after(min(self._limits.write_timeout, _LINGER_SECONDS)):
                while self._outbuf or self._sending:
                    await self._progress.wait()
            nursery.cancel_scope.cancel()
        if not self._eof and not self._aborted and not self._shed:
            # Let the final GOAWAY reach the client before the socket closes.
            await _linger_close(self._stream)

    def _abort(self) -> None:
        self._closing = True
        self._aborted = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _close(self, error_code: int) -> None:
        """Send the final GOAWAY and stop reading."""
        if not self._terminated:
            self._terminated = True
            last = self._h2.highest_inbound_stream_id
            if self._goaway_last is not None:
                last = min(last, self._goaway_last)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection(error_code=error_code, last_stream_id=last)
            self._flush()
        self._closing = True
        self._poke()

    # -- reading

    def _next_deadline(self) -> float:
        if self._closing or (self._draining and not self._streams):
            return -math.inf
        if not self._settings_received:
            return self._started + self._limits.header_timeout
        receiving = [s.deadline for s in self._streams.values() if not s.ended]
        if receiving:
            return min(receiving)
        if self._streams:
            return math.inf  # handlers at work: their own business
        return self._last_activity + self._limits.idle_timeout

    def _poke(self) -> None:
        """Make the reader re-evaluate its deadline (state changed under it)."""
        if self._read_scope is not None:
            self._read_scope.deadline = self._next_deadline()

    async def _read_loop(self) -> None:
        while True:
            if self._draining and not self._streams:
                self._close(h2.errors.ErrorCodes.NO_ERROR)
            if self._closing:
                return
            with trio.CancelScope(deadline=self._next_deadline()) as scope:
                self._read_scope = scope
                try:
                    data = await self._stream.receive_some(_READ_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            self._read_scope = None
            if scope.cancelled_caught:
                self._on_deadline()
            elif not data:
                self._eof = self._closing = True  # client gone: in-flight handlers are cancelled
            else:
                self._process(bytes(data))

    def _on_deadline(self) -> None:
        now = trio.current_time()
        if self._closing or (self._draining and not self._streams):
            return
        if not self._settings_received:
            self._metrics.error("header_timeout")
            self._close(h2.errors.ErrorCodes.NO_ERROR)
            return
        for s in list(self._streams.values()):
            if not s.ended and s.deadline <= now:
                self._metrics.error("read_timeout")
                self._drop(s)
                self._refuse(s.stream_id, 408, "Request not received in time", s, client_done=False)
        if not self._streams and self._last_activity + self._limits.idle_timeout <= now:
            self._close(h2.errors.ErrorCodes.NO_ERROR)
        self._flush()

    def _process(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued GOAWAY with the right error code.
            kind = (
                "h2_calm" if isinstance(exc, h2.exceptions.DenialOfServiceError) else "h2_protocol"
            )
            self._metrics.error(kind)
            _log.debug("HTTP/2 protocol error from %s: %s", self._peer, exc)
            self._terminated = True
            self._closing = True
            self._flush()
            return
        if events:
            self._last_activity = trio.current_time()
        for event in events:
            if self._closing:
                break
            self._on_event(event)
        self._flush()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.TrailersReceived):
            self._on_trailers(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._on_stream_ended(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._on_reset(event)
        elif isinstance(event, h2.events.WindowUpdated):
            self._wake_senders(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._settings_received = True
            self._spend_control()
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._wake_senders(0)
        elif isinstance(
            event,
            h2.events.PingReceived | h2.events.PriorityUpdated | h2.events.UnknownFrameReceived,
        ):
            self._spend_control()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # The client's GOAWAY: h2 will not send anything after it.
            self._terminated = True
            self._closing = True

    def _spend_control(self) -> None:
        if not self._control.spend(trio.current_time()):
            self._metrics.error("control_flood")
            _log.warning("HTTP/2 control frame flood from %s: closing", self._peer)
            self._close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        limits = self._limits
        now = trio.current_time()
        if self._goaway_last is not None and stream_id > self._goaway_last:
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if len(self._streams) >= limits.max_concurrent_streams:
            self._metrics.error("too_many_streams")
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        method, path, authority, headers, size, content_length = _h2_request_head(event.headers)
        client_done = event.stream_ended is not None
        probe = _H2Stream(stream_id, method or "-", path or "-", "", (), now, now)
        refusal = self._head_refusal(event.headers, method, path, size, content_length)
        if refusal is not None:
            kind, status, message = refusal
            self._metrics.error(kind)
            # A malformed request is a stream error (RFC 9113 section 8.1.1): after the
            # 400, RST_STREAM PROTOCOL_ERROR if the client is still sending.
            reset = _PROTOCOL_ERROR if status == 400 else h2.errors.ErrorCodes.NO_ERROR
            reply = _text_reply(status, message)
            self._send_reply_now(stream_id, reply, probe, client_done, reset)
            return
        if self._reject is not None:
            self._send_reply_now(stream_id, self._reject, probe, client_done)
            self.drain()
            return
        if authority and not any(name == "host" for name, _ in headers):
            headers.insert(0, ("host", authority))
        path, query = _split_target(path)
        self._streams[stream_id] = _H2Stream(
            stream_id, method, path, query, tuple(headers), now, now + limits.read_timeout
        )
        self._server._busy(self._slot)

    def _head_refusal(
        self,
        raw: Sequence[tuple[bytes, bytes]],
        method: str,
        path: str,
        size: int,
        content_length: int | None,
    ) -> tuple[str, int, str] | None:
        """``(error kind, status, message)`` when a request head is refused."""
        limits = self._limits
        if size > limits.max_header_bytes:
            return "header_too_large", 431, "Request header fields too large"
        problem = _h2_malformed(raw, _H2_REQUEST)
        if problem is not None:
            # Transfer-Encoding, Connection and the like, bad names or values, pseudo-header
            # trouble.
            return "bad_request", 400, f"Bad request: malformed HTTP/2 request: {problem}"
        if not method or not path:
            return "bad_request", 400, "Bad request: no :method or :path"
        if content_length is not None and content_length > limits.max_body_bytes:
            return "body_too_large", 413, f"Request body exceeds {limits.max_body_bytes} bytes"
        return None

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        s = self._streams.get(event.stream_id)
        if s is None or s.ended:
            return
        problem = _h2_malformed(event.headers, _H2_TRAILERS)
        if problem is not None:
            self._metrics.error("bad_request")
            self._drop(s)
            reply = _text_reply(400, f"Bad request: malformed HTTP/2 trailers: {problem}")
            self._send_reply_now(s.stream_id, reply, s, True, _PROTOCOL_ERROR)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        if event.flow_controlled_length:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        data = event.data
        if not data and event.stream_ended is None:
            self._spend_control()  # empty DATA frames are free to send and cost us work
        s = self._streams.get(stream_id)
        if s is None or s.ended:
            return
        limits = self._limits
        if len(s.body) + len(data) > limits.max_body_bytes:
            self._metrics.error("body_too_large")
            self._drop(s)
            message = f"Request body exceeds {limits.max_body_bytes} bytes"
            self._refuse(stream_id, 413, message, s, client_done=event.stream_ended is not None)
            return
        if self._buffered_body + len(data) > limits.max_connection_body_bytes:
            self._metrics.error("connection_body_limit")
            self._drop(s)
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        s.body += data
        self._buffered_body += len(data)

    def _on_stream_ended(self, stream_id: int) -> None:
        s = self._streams.get(stream_id)
        if s is None or s.ended:
            return
        s.ended = True
        assert self._nursery is not None
        self._nursery.start_soon(self._run_stream, s)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        if event.remote_reset and not self._resets.spend(trio.current_time()):
            self._metrics.error("rapid_reset")
            _log.warning("HTTP/2 rapid reset from %s: closing", self._peer)
            self._close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        s = self._streams.get(event.stream_id)
        if s is not None:
            s.reset = True
            self._drop(s)
            if s.scope is not None:
                s.scope.cancel()
            s.window.set()

    def _drop(self, s: _H2Stream) -> None:
        """Forget a stream's buffered request and stop tracking it."""
        self._buffered_body -= len(s.body)
        s.body = bytearray()
        self._streams.pop(s.stream_id, None)
        if not self._streams:
            self._server._now_waiting(self._slot)
        self._poke()

    def _wake_senders(self, stream_id: int) -> None:
        if stream_id == 0:
            for s in self._streams.values():
                s.window.set()
        else:
            waiting = self._streams.get(stream_id)
            if waiting is not None:
                waiting.window.set()

    # -- answering

    def _reset(self, stream_id: int, error_code: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.reset_stream(stream_id, error_code)

    def _refuse(
        self, stream_id: int, status: int, message: str, s: _H2Stream, client_done: bool
    ) -> None:
        self._send_reply_now(stream_id, _text_reply(status, message), s, client_done)

    def _send_reply_now(
        self,
        stream_id: int,
        reply: _Reply,
        s: _H2Stream,
        client_done: bool,
        reset: int = h2.errors.ErrorCodes.NO_ERROR,
    ) -> None:
        """Answer a stream at once with a small reply (no waiting on flow control: the body
        goes only if the window allows it). When the client is still sending, the stream is
        then reset with ``reset`` (by default NO_ERROR: the response is complete, the rest
        of the request unwanted)."""
        headers = [(b":status", b"%d" % reply.status), *reply.headers]
        sent = 0
        try:
            self._h2.send_headers(stream_id, headers)
            window = self._h2.local_flow_control_window(stream_id)
            if len(reply.body) <= min(window, self._h2.max_outbound_frame_size):
                self._h2.send_data(stream_id, reply.body, end_stream=True)
                sent = len(reply.body)
            else:
                self._h2.end_stream(stream_id)
            if not client_done:
                self._h2.reset_stream(stream_id, reset)
        except h2.exceptions.ProtocolError:
            pass
        self._flush()
        self._server._record(
            method=s.method,
            path=s.path,
            status=reply.status,
            protocol="HTTP/2",
            started=s.started,
            peer=self._peer,
            bytes_in=0,
            bytes_out=sent,
        )

    async def _run_stream(self, s: _H2Stream) -> None:
        request = Request(
            method=s.method,
            path=s.path,
            query=s.query,
            headers=s.headers,
            body=bytes(s.body),
            http_version="2",
            peer=self._peer,
            client_cert=self._client_cert,
        )
        self._buffered_body -= len(s.body)
        s.body = bytearray()
        status = 499  # the client reset the stream before the response was complete
        sent = 0
        extra: dict[str, str] | None = None
        with trio.CancelScope() as scope:
            s.scope = scope
            if s.reset:
                scope.cancel()
            reply = await self._server._dispatch(request)
            extra = reply.log
            try:
                sent = await self._send_reply(s, reply)
            except Exception:  # a bug here must cost one stream, not the connection
                _log.exception("sending the response on stream %d failed", s.stream_id)
                self._metrics.error("h2_send")
                self._reset(s.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self._flush()
                sent = -1
            if sent >= 0:
                status = reply.status
        self._streams.pop(s.stream_id, None)
        if not self._streams:
            self._server._now_waiting(self._slot)
        self._last_activity = trio.current_time()
        self._poke()
        self._server._record(
            method=s.method,
            path=s.path,
            status=status,
            protocol="HTTP/2",
            started=s.started,
            peer=self._peer,
            bytes_in=len(request.body),
            bytes_out=max(sent, 0),
            extra=extra,
        )

    async def _send_reply(self, s: _H2Stream, reply: _Reply) -> int:
        """Send ``reply`` as flow control allows; body bytes sent, or -1 if the stream died."""
        stream_id = s.stream_id
        no_body = s.method == "HEAD" or reply.status in (204, 304) or not reply.body
        headers = [(b":status", b"%d" % reply.status), *reply.headers]
        if reply.status not in (204, 304):
            headers.append((b"content-length", b"%d" % len(reply.body)))
        body = memoryview(reply.body)
        sent = 0
        try:
            await self._writable()
            self._h2.send_headers(stream_id, headers, end_stream=no_body)
            window = self._h2.local_flow_control_window(stream_id)
            if not no_body and len(body) <= min(window, self._h2.max_outbound_frame_size):
                # The usual small answer: HEADERS and DATA in one go.
                self._h2.send_data(stream_id, reply.body, end_stream=True)
                sent = len(body)
            self._flush()
            while not no_body and sent < len(body):
                await self._writable()
                window = self._h2.local_flow_control_window(stream_id)
                if window <= 0:
                    s.window = trio.Event()
                    await s.window.wait()
                    continue
                size = min(window, self._h2.max_outbound_frame_size, _WRITE_CHUNK, len(body) - sent)
                end = sent + size == len(body)
                self._h2.send_data(stream_id, body[sent : sent + size], end_stream=end)
                sent += size
                self._flush()
        except h2.exceptions.ProtocolError:
            return -1  # reset by the client, or the connection is closing
        return sent

    # -- writing

    def _queue(self, data: bytes) -> None:
        self._outbuf += data
        self._wake_writer.set()
        if len(self._outbuf) + self._sending > self._limits.max_outbound_bytes:
            self._metrics.error("outbound_overflow")
            _log.warning("%s is not reading its responses: closing", self._peer)
            self._abort()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self._queue(data)

    async def _writable(self) -> None:
        """Wait until the unsent bytes are below the low-water mark."""
        while len(self._outbuf) + self._sending > self._low_water:
            await self._progress.wait()

    async def _writer(self) -> None:
        while True:
            if not self._outbuf:
                self._wake_writer = trio.Event()
                await self._wake_writer.wait()
                continue
            chunk = bytes(self._outbuf[:_WRITE_CHUNK])
            del self._outbuf[: len(chunk)]
            self._sending = len(chunk)
            with trio.move_on_after(self._limits.write_timeout) as scope:
                try:
                    await self._stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._abort()
                    return
            self._sending = 0
            if scope.cancelled_caught:
                self._metrics.error("write_timeout")
                self._abort()
                return
            self._progress.set()
            self._progress = trio.Event()
