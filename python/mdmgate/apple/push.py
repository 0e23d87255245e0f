"""Apple MDM pushes over the APNs HTTP/2 provider API, for Trio.

An MDM push is ``POST /3/device/<hex token>`` with the body ``{"mdm": "<PushMagic>"}`` and the
headers ``apns-topic`` (the topic of the MDM push certificate), ``apns-push-type: mdm`` and
``apns-priority: 10``. APNs answers 200 (with ``apns-id``) or an error status with a JSON body
``{"reason": ...}`` (410 adds ``timestamp``, milliseconds since the epoch, when the token
stopped being valid).

:class:`ApnsClient` owns one or more persistent HTTP/2 connections (``h2`` by ALPN under TLS,
or cleartext by prior knowledge when the base URL is ``http://``, which only test servers
speak). Streams are multiplexed up to the server's ``SETTINGS_MAX_CONCURRENT_STREAMS``;
a push goes to the least busy connection, and a new one is opened (up to ``connections``) when
all are full. Authentication is either the TLS client certificate in ``ssl_context`` or a
provider token from ``jwt_signer`` (see :func:`es256_jwt_signer`) sent as
``authorization: bearer <jwt>``.

Credentials can change while pushing (:meth:`ApnsClient.use_credentials`). A connection
keeps the certificate and topic it was opened with, so no push pairs one certificate with
another's topic, and a change neither loses a push nor sends one twice.

Failures and retries (at most ``max_attempts`` attempts per push, exponential backoff with
jitter between them, capped at ``max_backoff``):

* 429, 500 and 503 are retried (waiting at least the ``retry-after`` the server gave, if any).
* A lost connection, a GOAWAY, a refused or reset stream or a per-attempt timeout: the push
  is retried on another (or a new) connection. Streams above the GOAWAY's last stream id were
  never processed, so their retry cannot duplicate; a push whose connection died after it was
  sent may have been delivered, and its retry can wake the device twice (harmless for MDM: a
  push only asks the device to check in).
* Everything else is final. 410 and 400 ``BadDeviceToken``/``DeviceTokenNotForTopic`` are
  marked :attr:`PushResult.dead`: stop pushing to that token.
* A push that never got an answer after all attempts is reported with ``status`` 0 and the
  last error as ``reason``; nothing is dropped silently.

Pacing: with ``max_pushes_per_second`` every attempt takes a slot from a token bucket (bucket
size ``burst``) on the Trio clock, so a bulk :meth:`ApnsClient.push_many` does not wake the
whole fleet at once (every woken device checks in). The pace can be changed while pushing
(:meth:`ApnsClient.set_max_pushes_per_second`): a node of a cluster takes its share of one
budget for the whole cluster (:mod:`mdmgate.apple.pusher`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import random
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio

__all__ = [
    "APNS_DEVELOPMENT_URL",
    "APNS_PRODUCTION_URL",
    "ApnsClient",
    "PushResult",
    "TokenBucket",
    "es256_jwt_signer",
]

_log = logging.getLogger("mdmgate.apple.push")

#: Apple's production provider API.
APNS_PRODUCTION_URL = "https://api.push.apple.com"
#: Apple's development (sandbox) provider API.
APNS_DEVELOPMENT_URL = "https://api.sandbox.push.apple.com"

#: 400 reasons that mean the token will never work for this topic.
_DEAD_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})
_RETRY_STATUSES = frozenset({429, 500, 503})
_READ_CHUNK = 65536
_MAX_RESPONSE_BODY = 64 * 1024
_MAX_WORKERS = 1000


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class PushResult:
    """The outcome of one push (after any retries)."""

    token: str
    status: int
    """The HTTP status of the last answer; 0 when no attempt got an answer."""
    reason: str | None
    """APNs' ``reason`` (e.g. ``BadDeviceToken``), or the last error when ``status`` is 0."""
    apns_id: str | None
    """The ``apns-id`` APNs answered with (or the one sent, if the answer had none)."""
    dead: bool
    """The token is no longer valid (410, or 400 BadDeviceToken / DeviceTokenNotForTopic)."""
    retry_after: float | None
    """Seconds the server asked to wait (``retry-after``) on the last answer, if any."""
    timestamp: int | None = None
    """With 410: when the token stopped being valid (ms since the epoch), as APNs says."""
    attempts: int = 1
    """How many attempts were made."""

    @property
    def ok(self) -> bool:
        """APNs accepted the push."""
        return self.status == 200


def _is_dead(status: int, reason: str | None) -> bool:
    return status == 410 or (status == 400 and reason in _DEAD_REASONS)


def _validate_token(token: str) -> None:
    if not token or len(token) > 200 or any(c not in "0123456789abcdefABCDEF" for c in token):
        raise ValueError(f"device token must be hexadecimal, got {token!r}")


# ---------------------------------------------------------------------------------------------
# Pacing


class TokenBucket:
    """A token bucket on the Trio clock: at most ``burst`` takes at once, then ``rate`` per
    second. Takers are served in arrival order (each reserves its slot before waiting)."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be positive and finite, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self._interval = 1.0 / rate
        self._burst = burst
        self._next: float | None = None  # theoretical time of the next take (GCRA)

    @property
    def rate(self) -> float:
        """Takes per second."""
        return 1.0 / self._interval

    def set_rate(self, rate: float) -> None:
        """Paces the takes from now on at ``rate`` (slots already reserved keep their time)."""
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be positive and finite, got {rate!r}")
        self._interval = 1.0 / rate

    async def take(self) -> None:
        """Wait for a slot."""
        now = trio.current_time()
        due = now if self._next is None else max(self._next, now)
        allowed = due - (self._burst - 1) * self._interval
        self._next = due + self._interval
        if allowed > now:
            await trio.sleep_until(allowed)
        else:
            await trio.lowlevel.checkpoint()


# ---------------------------------------------------------------------------------------------
# Provider tokens


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def es256_jwt_signer(
    key_pem: bytes,
    key_id: str,
    team_id: str,
    *,
    lifetime: float = 50 * 60,
    clock: Callable[[], float] = time.time,
) -> Callable[[], str]:
    """A callable returning an APNs provider token: an ES256 JWT with header
    ``{"alg": "ES256", "kid": key_id}`` and claims ``{"iss": team_id, "iat": <now>}``, signed
    with the P-256 key in ``key_pem`` (the ``.p8`` file Apple issues, PKCS#8 PEM).

    The token is cached and signed again once it is ``lifetime`` seconds old (default 50
    minutes: Apple rejects tokens older than an hour and refreshes more often than every 20
    minutes). ``clock`` gives UNIX time (injectable for tests). Needs ``cryptography``.
    """
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.utils import (  # noqa: PLC0415
        decode_dss_signature,
    )

    if not 0 < lifetime <= 60 * 60:
        raise ValueError(f"lifetime must be in (0, 3600] seconds, got {lifetime!r}")
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("APNs provider tokens need an EC P-256 private key")
    header = _b64url(json.dumps({"alg": "ES256", "kid": key_id}, separators=(",", ":")).encode())
    cache: list[tuple[float, str]] = []

    def sign() -> str:
        now = clock()
        if cache and 0 <= now - cache[0][0] < lifetime:
            return cache[0][1]
        claims = json.dumps({"iss": team_id, "iat": int(now)}, separators=(",", ":"))
        signing_input = f"{header}.{_b64url(claims.encode())}"
        der = key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        token = f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        cache[:] = [(now, token)]
        return token

    return sign


# ---------------------------------------------------------------------------------------------
# One HTTP/2 connection


class _ConnectionLost(Exception):
    """The attempt got no answer (connection failed or closed, GOAWAY, stream reset, timeout);
    the push may be retried."""


class _Retired(Exception):
    """The connection was retired before the request went out: send it on another."""


@dataclass(frozen=True, slots=True)
class _Credentials:
    """What a connection authenticates with: the TLS context (client certificate) and the
    topic every push on it names."""

    ssl_context: ssl.SSLContext | None
    topic: bytes


@dataclass(slots=True)
class _Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


@dataclass(slots=True)
class _Pending:
    stream_id: int
    done: trio.Event = field(default_factory=trio.Event)
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    error: str | None = None


class _Connection:
    """A client HTTP/2 connection: one reader task, writers serialised by a lock; every
    request names the topic of the ``credentials`` it was opened with."""

    def __init__(
        self, stream: trio.abc.Stream, authority: bytes, scheme: bytes, credentials: _Credentials
    ) -> None:
        self._stream = stream
        self.credentials = credentials
        self._authority = authority
        self._scheme = scheme
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config=config)
        self._send_lock = trio.Lock()
        self._pending: dict[int, _Pending] = {}
        self._changed = trio.Event()
        self._settings = trio.Event()
        self.closing = False
        self.retired = False
        self.dead: str | None = None

    # -- state

    @property
    def usable(self) -> bool:
        return self.dead is None and not self.closing and not self.retired

    @property
    def max_streams(self) -> int:
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def in_flight(self) -> int:
        # Our own count of unanswered streams: h2's open_outbound_streams scans every
        # stream on each call (a quarter of the client's time in the push benchmark).
        return len(self._pending)

    @property
    def load(self) -> float:
        return self.in_flight / max(self.max_streams, 1)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _forget(self, stream_id: int) -> bool:
        """Drops a stream the request gave up on; True if it was still pending."""
        forgotten = self._pending.pop(stream_id, None) is not None
        self._notify()
        return forgotten

    def retire(self) -> None:
        """Takes no new request from now on; those in flight go on. Requests still waiting
        for a stream raise :class:`_Retired`."""
        self.retired = True
        self._notify()

    async def idle(self) -> None:
        """Returns once no request is in flight (or the connection is dead)."""
        while self._pending and self.dead is None:
            await self._changed.wait()

    def _die(self, why: str) -> None:
        if self.dead is None:
            self.dead = why
            _log.debug("APNs connection closed: %s", why)
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = why
                pending.done.set()
        self._pending.clear()
        self._settings.set()
        self._notify()

    # -- lifecycle

    async def start(self, nursery: trio.Nursery, timeout: float) -> None:
        """Send the preface and wait for the server's first SETTINGS."""
        self._h2.initiate_connection()
        nursery.start_soon(self._reader)
        await self._flush()
        with trio.move_on_after(timeout):
            await self._settings.wait()
        if self.dead is not None:
            raise _ConnectionLost(self.dead)
        if not self._settings.is_set():
            await self.aclose()
            raise _ConnectionLost("no SETTINGS from the server in time")

    async def aclose(self) -> None:
        if self.dead is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection()
            with trio.move_on_after(1), contextlib.suppress(_ConnectionLost):
                await self._flush()
            self._die("closed by the client")
        await trio.aclose_forcefully(self._stream)

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._h2.data_to_send()
            if not data:
                return
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._die(f"send failed: {exc!r}")
                raise _ConnectionLost(self.dead) from exc

    async def _reader(self) -> None:
        try:
            while self.dead is None:
                data = await self._stream.receive_some(_READ_CHUNK)
                if not data:
                    self._die("connection closed by the server")
                    break
                events = self._h2.receive_data(bytes(data))
                for event in events:
                    self._on_event(event)
                if self.dead is None:
                    await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._die(f"connection lost: {exc!r}")
        except h2.exceptions.ProtocolError as exc:
            self._die(f"HTTP/2 protocol error: {exc!r}")
        except _ConnectionLost:
            pass
        except Exception as exc:  # a bug here must cost this connection only
            _log.exception("APNs connection reader failed")
            self._die(f"reader failed: {exc!r}")
        if self.closing or self.dead is not None:
            await trio.aclose_forcefully(self._stream)

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            pending = self._pending.get(event.stream_id)
            if pending is not None:
                for name, value in event.headers:
                    pending.headers[bytes(name)] = bytes(value)
                with contextlib.suppress(ValueError):
                    pending.status = int(pending.headers.get(b":status", b"0"))
        elif isinstance(event, h2.events.DataReceived):
            if event.flow_controlled_length:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self._h2.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            pending = self._pending.get(event.stream_id)
            if pending is not None and len(pending.body) < _MAX_RESPONSE_BODY:
                pending.body += event.data
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            self._on_stream_closed(event)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._settings.set()
            self._notify()
        elif isinstance(event, h2.events.WindowUpdated):
            self._notify()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)

    def _on_stream_closed(self, event: h2.events.StreamEnded | h2.events.StreamReset) -> None:
        pending = self._pending.pop(event.stream_id, None)
        if pending is not None:
            if isinstance(event, h2.events.StreamReset):
                pending.error = f"stream reset by the server ({event.error_code!r})"
            pending.done.set()
        self._notify()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        # h2 accepts no frames after a GOAWAY, so every stream still waiting is lost; those
        # above last_stream_id were never processed by the server.
        self.closing = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = event.error_code
        for stream_id, pending in list(self._pending.items()):
            processed = "unprocessed" if stream_id > last else "maybe processed"
            pending.error = f"GOAWAY ({code!r}, last stream {last}): {processed}"
            pending.done.set()
        self._pending.clear()
        self._die(f"GOAWAY ({code!r})")

    # -- requests

    async def request(
        self, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> _Response:
        """One request; :class:`_ConnectionLost` when no answer arrives. Cancel-safe: a
        cancelled request resets its stream."""
        while True:
            if self.retired and self.dead is None:
                raise _Retired
            if not self.usable:
                raise _ConnectionLost(self.dead or "connection is closing")
            if self.in_flight < self.max_streams:
                break
            await self._changed.wait()
        stream_id = self._h2.get_next_available_stream_id()
        all_headers = [
            (b":method", b"POST"),
            (b":scheme", self._scheme),
            (b":authority", self._authority),
            (b":path", path),
            (b"apns-topic", self.credentials.topic),
            *headers,
            (b"content-length", b"%d" % len(body)),
        ]
        pending = _Pending(stream_id)
        self._pending[stream_id] = pending
        try:
            self._h2.send_headers(stream_id, all_headers, end_stream=not body)
            sent = 0
            while sent < len(body):
                window = min(
                    self._h2.local_flow_control_window(stream_id),
                    self._h2.max_outbound_frame_size,
                )
                if window <= 0:  # wait for a WINDOW_UPDATE (or the end)
                    await self._flush()
                    if pending.done.is_set():
                        break
                    await self._changed.wait()
                    continue
                size = min(window, len(body) - sent)
                end = sent + size == len(body)
                self._h2.send_data(stream_id, body[sent : sent + size], end_stream=end)
                sent += size
            await self._flush()
            await pending.done.wait()
        except h2.exceptions.ProtocolError as exc:
            self._forget(stream_id)
            raise _ConnectionLost(f"stream {stream_id} failed: {exc!r}") from exc
        except BaseException:
            if self._forget(stream_id) and self.dead is None and not self.closing:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            raise
        if pending.error is not None:
            raise _ConnectionLost(pending.error)
        return _Response(pending.status, pending.headers, bytes(pending.body))


# ---------------------------------------------------------------------------------------------
# The client


StreamFactory = Callable[[], Awaitable[trio.abc.Stream]]


class _Slot:
    def __init__(self) -> None:
        self.connection: _Connection | None = None
        self.lock = trio.Lock()


class ApnsClient:
    """An APNs provider client; use as ``async with ApnsClient(...) as client:``.

    ``base_url``: ``https://host[:port]`` (e.g. :data:`APNS_PRODUCTION_URL`) or, for test
    servers, ``http://host:port`` (cleartext HTTP/2 by prior knowledge). ``topic``: the MDM
    push certificate's topic. ``ssl_context``: client TLS context (carry the push certificate
    for certificate auth); ALPN ``h2`` is set on it. Default: the system trust store.
    ``jwt_signer``: returns the provider token for each request (token auth).
    ``max_pushes_per_second``: pace every attempt through a :class:`TokenBucket` of size
    ``burst``. ``connections``: at most this many HTTP/2 connections at once.
    ``max_attempts``, ``backoff``, ``max_backoff``: retries (see the module docs).
    ``connect_timeout``: TCP + TLS + first SETTINGS; ``request_timeout``: per attempt.
    ``stream_factory``: open the transport yourself (tests: in-memory streams).

    :meth:`use_credentials` replaces ``ssl_context`` and ``topic`` while pushing; connections
    being closed after such a change do not count towards ``connections``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        topic: str,
        ssl_context: ssl.SSLContext | None = None,
        jwt_signer: Callable[[], str] | None = None,
        max_pushes_per_second: float | None = None,
        connections: int = 1,
        burst: int = 1,
        max_attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        stream_factory: StreamFactory | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(
                f"base_url must be https://host[:port] or http://..., got {base_url!r}"
            )
        if connections < 1 or max_attempts < 1:
            raise ValueError("connections and max_attempts must be at least 1")
        if not topic:
            raise ValueError("topic is required")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = parts.scheme == "https"
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = self._port == (443 if self._tls else 80)
        self._authority = (host if default_port else f"{host}:{self._port}").encode("ascii")
        self._prefix = parts.path.rstrip("/")
        self._credentials = self._credentials_for(ssl_context, topic)
        self._jwt_signer = jwt_signer
        self._burst = burst
        self._bucket = (
            TokenBucket(max_pushes_per_second, burst) if max_pushes_per_second is not None else None
        )
        self._slots = [_Slot() for _ in range(connections)]
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._stream_factory = stream_factory
        self._nursery: trio.Nursery | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.connections_opened = 0
        """How many connections this client has opened so far."""

    async def __aenter__(self) -> ApnsClient:
        stack = contextlib.AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        assert self._nursery is not None
        try:
            with trio.CancelScope(shield=True):
                for slot in self._slots:
                    if slot.connection is not None:
                        await slot.connection.aclose()
                        slot.connection = None
            self._nursery.cancel_scope.cancel()  # (retired connections close as it ends)
        finally:
            stack, self._stack, self._nursery = self._stack, None, None
            result = await stack.__aexit__(exc_type, exc, tb)
        return result

    @property
    def max_pushes_per_second(self) -> float | None:
        """The current pace (``None``: unpaced)."""
        return None if self._bucket is None else self._bucket.rate

    def set_max_pushes_per_second(self, rate: float) -> None:
        """Paces every attempt from now on at ``rate`` per second: e.g. this node's share of
        a budget for a whole cluster of gateways, which changes as nodes come and go."""
        if self._bucket is None:
            self._bucket = TokenBucket(rate, self._burst)
        else:
            self._bucket.set_rate(rate)

    # -- credentials

    def _credentials_for(self, ssl_context: ssl.SSLContext | None, topic: str) -> _Credentials:
        if not topic:
            raise ValueError("topic is required")
        if not self._tls:
            return _Credentials(None, topic.encode())
        context = ssl_context or ssl.create_default_context()
        context.set_alpn_protocols(["h2"])
        return _Credentials(context, topic.encode())

    @property
    def topic(self) -> str:
        """The topic new pushes name."""
        return self._credentials.topic.decode()

    def use_credentials(self, ssl_context: ssl.SSLContext | None, topic: str) -> None:
        """Pushes with the client certificate in ``ssl_context`` and with ``topic`` from now
        on (e.g. a renewed push certificate); never waits. New connections use them; open ones
        take no new push and close once the pushes they carry are answered (with the old
        credentials); a push waiting for a stream there moves, not counting as an attempt.
        ``ssl_context`` as in the constructor; a cleartext (``http://``) client takes none.
        Raises ``ValueError`` for an empty topic or a TLS context for a cleartext client.
        """
        if ssl_context is not None and not self._tls:
            raise ValueError("a cleartext (http://) APNs client takes no TLS context")
        self._credentials = self._credentials_for(ssl_context, topic)
        for slot in self._slots:
            connection, slot.connection = slot.connection, None
            if connection is not None:
                self._retire(connection)

    def _retire(self, connection: _Connection) -> None:
        connection.retire()
        if self._nursery is not None:  # (a connection exists only inside `async with`)
            self._nursery.start_soon(self._close_when_idle, connection)

    @staticmethod
    async def _close_when_idle(connection: _Connection) -> None:
        try:
            await connection.idle()
        finally:
            with trio.CancelScope(shield=True):
                await connection.aclose()

    # -- connections

    async def _open_stream(self, context: ssl.SSLContext | None) -> trio.abc.Stream:
        if self._stream_factory is not None:
            return await self._stream_factory()
        tcp = await trio.open_tcp_stream(self._host, self._port)
        if context is None:
            return tcp
        tls = trio.SSLStream(tcp, context, server_hostname=self._host)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        if tls.selected_alpn_protocol() != "h2":
            await trio.aclose_forcefully(tls)
            raise _ConnectionLost("the server did not agree to HTTP/2 (ALPN h2)")
        return tls

    async def _connect(self) -> _Connection:
        if self._nursery is None:
            raise RuntimeError("use ApnsClient as `async with ApnsClient(...) as client:`")
        credentials = self._credentials
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await self._open_stream(credentials.ssl_context)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise _ConnectionLost(f"cannot connect to {self._host}:{self._port}: {exc!r}") from exc
        scheme = b"https" if self._tls else b"http"
        connection = _Connection(stream, self._authority, scheme, credentials)
        self.connections_opened += 1
        await connection.start(self._nursery, self._connect_timeout)
        return connection

    async def _pick(self) -> _Connection:
        """The least busy usable connection with room; else open one in a free slot; else
        the least busy one (the request then waits for a stream)."""
        live = [s.connection for s in self._slots if s.connection and s.connection.usable]
        roomy = [c for c in live if c.in_flight < c.max_streams]
        if roomy:
            return min(roomy, key=lambda c: c.load)
        empty = [s for s in self._slots if not (s.connection and s.connection.usable)]
        if empty:
            slot = min(empty, key=lambda s: s.lock.locked())  # prefer one nobody is opening
            async with slot.lock:
                while True:
                    current = slot.connection
                    if current is not None and current.usable:
                        return current
                    if current is not None:
                        await current.aclose()
                        slot.connection = None
                    connection = await self._connect()
                    if connection.credentials is self._credentials:
                        slot.connection = connection
                        return connection
                    await connection.aclose()  # opened with credentials replaced meanwhile
        return min(live, key=lambda c: c.load)

    # -- pushing

    def _delay(self, attempt: int) -> float:
        base = min(self._max_backoff, self._backoff * 2.0 ** (attempt - 1))
        return random.uniform(0.5, 1.0) * base

    async def push(
        self, token: str, push_magic: str, *, expiration: int | None = None
    ) -> PushResult:
        """Send one MDM push (``{"mdm": push_magic}``) to the device ``token`` (hex).

        ``expiration``: ``apns-expiration`` (UNIX seconds; 0 means "deliver now or never");
        omitted by default. Raises ``ValueError`` for a token that is not hex.
        """
        _validate_token(token)
        apns_id = str(uuid.uuid4())
        path = f"{self._prefix}/3/device/{token}".encode("ascii")
        body = json.dumps({"mdm": push_magic}, separators=(",", ":")).encode()
        last: PushResult | None = None
        for attempt in range(1, self._max_attempts + 1):
            if self._bucket is not None:
                await self._bucket.take()
            headers = [
                (b"apns-push-type", b"mdm"),
                (b"apns-priority", b"10"),
                (b"apns-id", apns_id.encode()),
                (b"content-type", b"application/json"),
            ]
            if expiration is not None:
                headers.append((b"apns-expiration", str(int(expiration)).encode()))
            if self._jwt_signer is not None:
                headers.append((b"authorization", b"bearer " + self._jwt_signer().encode()))
            delay = self._delay(attempt)
            try:
                response = await self._send(path, headers, body)
            except (_ConnectionLost, trio.TooSlowError) as exc:
                reason = str(exc) or "request timed out"
                last = PushResult(token, 0, reason, None, False, None, attempts=attempt)
            else:
                last = _result(token, apns_id, response, attempt)
                if last.status not in _RETRY_STATUSES:
                    return last
                if last.retry_after is not None:
                    delay = max(delay, min(last.retry_after, self._max_backoff))
            if attempt < self._max_attempts:
                _log.debug("push to %s: %s, retrying in %.2fs", token, last.reason, delay)
                await trio.sleep(delay)
        assert last is not None
        return last

    async def _send(
        self, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> _Response:
        """One attempt, on a connection of the current credentials."""
        while True:
            connection = await self._pick()
            try:
                with trio.fail_after(self._request_timeout):
                    return await connection.request(path, headers, body)
            except _Retired:
                continue

    async def push_many(self, items: Iterable[tuple[str, str]]) -> list[PushResult]:
        """Push to every ``(token, push_magic)``, concurrently (paced by
        ``max_pushes_per_second``); results in the order of ``items``. All tokens are
        checked first (``ValueError`` before anything is sent)."""
        work = list(items)
        for token, _ in work:
            _validate_token(token)
        results: list[PushResult | None] = [None] * len(work)
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(work):
                index = next_index
                next_index += 1
                token, magic = work[index]
                results[index] = await self.push(token, magic)

        async with trio.open_nursery() as nursery:
            for _ in range(min(len(work), _MAX_WORKERS)):
                nursery.start_soon(worker)
        return [r for r in results if r is not None]


def _result(token: str, apns_id: str, response: _Response, attempt: int) -> PushResult:
    reason: str | None = None
    timestamp: int | None = None
    if response.body:
        try:
            decoded = json.loads(response.body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            value = decoded.get("reason")
            reason = value if isinstance(value, str) else None
            stamp = decoded.get("timestamp")
            timestamp = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else None
    retry_after: float | None = None
    raw = response.headers.get(b"retry-after")
    if raw is not None:
        with contextlib.suppress(ValueError):
            value_s = float(raw)
            retry_after = value_s if math.isfinite(value_s) and value_s >= 0 else None
    answered_id = response.headers.get(b"apns-id")
    return PushResult(
        token=token,
        status=response.status,
        reason=reason,
        apns_id=answered_id.decode("latin-1") if answered_id else apns_id,
        dead=_is_dead(response.status, reason),
        retry_after=retry_after,
        timestamp=timestamp,
        attempts=attempt,
    )
