"""The simulated devices' HTTP/1.1 client: Trio streams, h11, optional TLS and mTLS.

A device talks through an :class:`Exchange`: one request, one :class:`Reply`. The
:class:`HttpClient` hands each device its own :class:`DeviceExchange`, which keeps one
connection alive across the messages of a session (or opens one per message when the device
is configured so) and closes it when the session ends, so open connections are bounded by
the sessions in flight, not by the fleet. Every failure is a :class:`TransportError` of one
of four kinds; nothing is retried here, because a resent device message is itself something
the correctness ledger has to see.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

import h11
import msgspec
import trio

__all__ = [
    "ClientCert",
    "DeviceExchange",
    "Exchange",
    "HttpClient",
    "Reply",
    "Target",
    "TransportError",
    "parse_target",
]

#: The kinds of :class:`TransportError`.
KINDS = ("connect", "timeout", "reset", "protocol")
#: Bytes read from the socket at once.
_CHUNK = 65536
#: A kept-alive connection idle longer than this is replaced rather than reused: servers close
#: idle connections on their own schedule, and a request lost to that race is ambiguous.
_IDLE_REUSE_SECONDS = 4.0


class Reply(msgspec.Struct, frozen=True):
    """A server's answer to one request."""

    status: int
    headers: tuple[tuple[str, str], ...]  # lower-case names
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or ``None``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class TransportError(Exception):
    """The request got no usable answer: ``kind`` is connect, timeout, reset or protocol."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class Exchange(Protocol):
    """Sends one request of a device and returns the server's reply."""

    async def __call__(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Reply: ...


class Target(msgspec.Struct, frozen=True):
    """Where the gateway is: ``scheme://host:port`` and the path prefix of every request."""

    scheme: str
    host: str
    port: int
    prefix: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    def is_loopback(self) -> bool:
        if self.host == "localhost" or self.host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_target(url: str) -> Target:
    """``http(s)://host[:port][/prefix]``; raises :class:`ValueError` naming the problem."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"target {url!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"target {url!r} has no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"target {url!r} may only have a scheme, host, port and path")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"target {url!r} has an invalid port") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


class ClientCert(msgspec.Struct, frozen=True):
    """A device's TLS client identity: PEM files (the key may sit in the certificate file)."""

    certfile: str
    keyfile: str | None = None


class _Connection:
    """One open connection and its HTTP/1.1 state machine."""

    __slots__ = ("h11", "idle_since", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0


class HttpClient:
    """Shared settings and TLS contexts of the fleet's connections."""

    def __init__(
        self,
        target: Target,
        *,
        cacert: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_response_bytes: int = 16 * 1024 * 1024,
        max_tls_contexts: int = 256,
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_response_bytes = max_response_bytes
        self._cacert = cacert
        self._max_contexts = max_tls_contexts
        # Each client identity needs its own context; building one reads files and keys, so
        # they are kept, but only so many (an mTLS fleet has one identity per device).
        self._contexts: OrderedDict[ClientCert | None, ssl.SSLContext] = OrderedDict()
        self._sni = None if _is_ip(target.host) else target.host

    def exchange(
        self, *, new_connection: bool = False, client_cert: ClientCert | None = None
    ) -> DeviceExchange:
        """A device's exchange for one session; ``aclose()`` it when the session ends."""
        return DeviceExchange(self, new_connection, client_cert)

    def tls_context(self, cert: ClientCert | None) -> ssl.SSLContext:
        context = self._contexts.get(cert)
        if context is not None:
            self._contexts.move_to_end(cert)
            return context
        context = ssl.create_default_context(cafile=self._cacert)
        context.set_alpn_protocols(["http/1.1"])
        if cert is not None:
            context.load_cert_chain(cert.certfile, cert.keyfile)
        self._contexts[cert] = context
        if len(self._contexts) > self._max_contexts:
            self._contexts.popitem(last=False)
        return context

    async def connect(self, cert: ClientCert | None) -> trio.abc.Stream:
        target = self.target
        try:
            with trio.fail_after(self.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
                if target.tls:
                    tls = trio.SSLStream(stream, self.tls_context(cert), server_hostname=self._sni)
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(stream)
                        raise
                    stream = tls
        except trio.TooSlowError:
            raise TransportError("timeout", "connecting took too long") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as e:
            raise TransportError("connect", _describe(e)) from None
        # trio's SocketStream already sets TCP_NODELAY: each device message is one write.
        return stream


class DeviceExchange:
    """One device's :class:`Exchange` for a session: its own connection, reused or not."""

    __slots__ = ("_cert", "_client", "_conn", "_new_connection")

    def __init__(
        self, client: HttpClient, new_connection: bool, client_cert: ClientCert | None
    ) -> None:
        self._client = client
        self._new_connection = new_connection
        self._cert = client_cert
        self._conn: _Connection | None = None

    async def __call__(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Reply:
        client = self._client
        conn = self._conn
        self._conn = None
        if conn is not None and (
            conn.h11.our_state is not h11.IDLE
            or trio.current_time() - conn.idle_since > _IDLE_REUSE_SECONDS
        ):
            await trio.aclose_forcefully(conn.stream)
            conn = None
        if conn is None:
            conn = _Connection(await client.connect(self._cert))
        try:
            reply = await self._roundtrip(conn, method, path, headers, body)
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
        state = conn.h11
        if (
            not self._new_connection
            and state.our_state is h11.DONE
            and state.their_state is h11.DONE
        ):
            state.start_next_cycle()
            conn.idle_since = trio.current_time()
            self._conn = conn
        else:
            await trio.aclose_forcefully(conn.stream)
        return reply

    async def aclose(self) -> None:
        """Close the session's connection, if one is open."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await trio.aclose_forcefully(conn.stream)

    async def _roundtrip(
        self,
        conn: _Connection,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> Reply:
        client = self._client
        target = client.target
        head = [("host", target.host_header), ("content-length", str(len(body)))]
        if self._new_connection:
            head.append(("connection", "close"))
        head.extend((k, v) for k, v in headers if k.lower() not in ("host", "content-length"))
        state = conn.h11
        try:
            request = h11.Request(method=method, target=target.prefix + path, headers=head)
            data = state.send(request) or b""
            if body:
                data += state.send(h11.Data(data=body)) or b""
            data += state.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as e:
            raise TransportError("protocol", f"cannot send the request: {e}") from None
        try:
            with trio.fail_after(client.read_timeout):
                await conn.stream.send_all(data)
                return await self._receive(conn)
        except trio.TooSlowError:
            raise TransportError("timeout", "no complete answer in time") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as e:
            raise TransportError("reset", _describe(e)) from None

    async def _receive(self, conn: _Connection) -> Reply:
        limit = self._client.max_response_bytes
        state = conn.h11
        status = 0
        reply_headers: tuple[tuple[str, str], ...] = ()
        body = bytearray()
        while True:
            try:
                event = state.next_event()
            except h11.RemoteProtocolError as e:
                if state.their_state is h11.ERROR and _closed_early(e):
                    raise TransportError("reset", "the server closed the connection") from None
                raise TransportError("protocol", f"bad answer: {e}") from None
            if event is h11.NEED_DATA:
                chunk = await conn.stream.receive_some(_CHUNK)
                state.receive_data(bytes(chunk))
                if not chunk and state.their_state is h11.SEND_RESPONSE and status == 0:
                    raise TransportError("reset", "the server closed the connection")
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                reply_headers = tuple(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers
                )
                declared = _content_length(reply_headers)
                if declared is not None and declared > limit:
                    raise TransportError("protocol", f"answer of {declared} bytes is too large")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise TransportError("protocol", f"answer over {limit} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return Reply(status, reply_headers, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                raise TransportError("reset", "the server closed the connection")


def _content_length(headers: tuple[tuple[str, str], ...]) -> int | None:
    for key, value in headers:
        if key == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _closed_early(error: h11.RemoteProtocolError) -> bool:
    # h11 reports a peer that hung up mid-answer as a protocol error; for the fleet it is a
    # dropped connection, like a reset.
    return "peer closed" in str(error) or "incomplete" in str(error)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ApiFailure(Exception):
    """The admin API did not do what was asked: ``status`` 0 when no answer came."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminApi:
    """The gateway's admin API (bearer token, JSON) over a few kept-alive connections.

    Calls are repeated with backoff for ``patience`` seconds while the gateway refuses them
    for load (429, 503) and, unless ``retry=False`` (a call that must not be repeated once
    it may have been carried out), while it cannot be reached: a simulated run outlives a
    gateway restart.
    """

    def __init__(
        self, client: HttpClient, token: str, *, connections: int = 16, patience: float = 60.0
    ) -> None:
        self._client = client
        self._auth = ("authorization", f"Bearer {token}")
        self._idle: list[DeviceExchange] = []
        self._slots = trio.Semaphore(connections)
        self.patience = patience

    async def call(
        self, method: str, path: str, body: object = None, *, retry: bool = True
    ) -> tuple[int, object]:
        """The status and decoded JSON of a call; :class:`ApiFailure` for an answer that is
        not 2xx (its message as the gateway gave it) or none at all."""
        headers = [self._auth, ("accept", "application/json")]
        data = b""
        if body is not None:
            headers.append(("content-type", "application/json"))
            data = msgspec.json.encode(body)
        deadline = trio.current_time() + self.patience
        delay = 0.1
        async with self._slots:
            exchange = self._idle.pop() if self._idle else self._client.exchange()
            try:
                while True:
                    try:
                        reply = await exchange(method, path, headers, data)
                    except TransportError as e:
                        if not retry or trio.current_time() + delay > deadline:
                            raise ApiFailure(0, f"{method} {path}: {e}") from None
                        await trio.sleep(delay)
                        delay = min(delay * 2, 2.0)
                        continue
                    # Refused before any work (overload, shedding): always safe to repeat.
                    if reply.status in (429, 503) and trio.current_time() + delay < deadline:
                        await trio.sleep(delay)
                        delay = min(delay * 2, 2.0)
                        continue
                    break
            finally:
                self._idle.append(exchange)
        try:
            decoded: object = msgspec.json.decode(reply.body) if reply.body else None
        except msgspec.DecodeError:
            decoded = None
        if not 200 <= reply.status < 300:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            text = message if isinstance(message, str) else reply.body[:200].decode("latin-1")
            raise ApiFailure(reply.status, f"{method} {path}: {reply.status} {text}")
        return reply.status, decoded

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for exchange in idle:
            await exchange.aclose()
