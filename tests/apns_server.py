"""A small APNs provider-API server for tests (Trio + h2).

It speaks the part of Apple's HTTP/2 protocol a provider sees: ``POST /3/device/<token>`` with
``apns-*`` headers and a JSON payload, answered 200 with ``apns-id`` or an error status with a
JSON ``{"reason": ...}`` body (410 adds ``timestamp``). Every push is recorded. Answers follow
a per-token script; the server can advertise any ``SETTINGS_MAX_CONCURRENT_STREAMS``, hold
answers for a while (so streams overlap), send GOAWAY after N requests on a connection, run
under TLS (requiring a client certificate, if the context says so; each push records the
certificate its connection came with) and check ES256 provider tokens. Tests can hold every
answer until they open a gate, and wait for any condition on what the server saw.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    reason: str | None = None
    timestamp: int | None = None
    retry_after: int | None = None


OK = Reply()
UNREGISTERED = Reply(410, "Unregistered", timestamp=1_700_000_000_000)
BAD_DEVICE_TOKEN = Reply(400, "BadDeviceToken")
TOO_MANY = Reply(429, "TooManyRequests")
UNAVAILABLE = Reply(503, "ServiceUnavailable")


@dataclass(frozen=True)
class RecordedPush:
    """A request the server processed (answered or about to be)."""

    token: str
    method: str
    path: str
    headers: dict[str, str]
    payload: object
    connection: int
    stream_id: int
    at: float
    """Trio clock time the request was complete."""
    status: int = 0
    client_cert: bytes | None = None
    """The DER certificate the client presented on this connection (TLS), if any."""


@dataclass
class _Stream:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ApnsServer:
    """The server. Serve connections with :meth:`serve_stream` (any Trio stream) or listen
    with :func:`running`.

    * ``max_concurrent_streams``: advertised in the first SETTINGS frame (h2 enforces it).
    * ``response_delay``: seconds each answer is held (Trio clock).
    * ``goaway_after``: on each of the first ``goaway_connections`` connections, process
      that many requests, answer them, then send GOAWAY (last stream id = the last one
      processed) and close. Later requests on that connection are neither recorded nor answered.
    * ``jwt_public_key``: require ``authorization: bearer <ES256 JWT>`` signed by this key
      (403 ``MissingProviderToken`` / ``InvalidProviderToken`` otherwise).
    * ``gate``: while it is an unset event, every answer is held until it is set (the
      request is recorded and counted in flight meanwhile).

    :attr:`closed` names the connections (their index, as in :attr:`RecordedPush.connection`)
    that have ended; :meth:`until` waits for any condition on the server's state.
    """

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        response_delay: float = 0.0,
        goaway_after: int | None = None,
        goaway_connections: int = 1,
        jwt_public_key: ec.EllipticCurvePublicKey | None = None,
    ) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.response_delay = response_delay
        self.goaway_after = goaway_after
        self.goaway_connections = goaway_connections
        self.jwt_public_key = jwt_public_key
        self.scripts: dict[str, list[Reply]] = {}
        self.pushes: list[RecordedPush] = []
        self.connections = 0
        self.client_certs: list[bytes | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.goaways = 0
        self.closed: set[int] = set()
        self.gate: trio.Event | None = None
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, check: Callable[[], bool]) -> None:
        """Returns once ``check()`` is true, checking again whenever a push is recorded or
        answered or a connection ends (put a deadline around it)."""
        while not check():
            await self._changed.wait()

    def script(self, token: str, *replies: Reply) -> None:
        """Answer ``token``'s pushes with ``replies`` in turn; the last one repeats."""
        self.scripts[token] = list(replies)

    def _next_reply(self, token: str) -> Reply:
        replies = self.scripts.get(token)
        if not replies:
            return OK
        return replies.pop(0) if len(replies) > 1 else replies[0]

    def accepted(self, token: str) -> list[RecordedPush]:
        """The pushes to ``token`` that were answered 200."""
        return [p for p in self.pushes if p.token == token and p.status == 200]

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until it closes (never raises for connection trouble)."""
        connection = _ServerConnection(self, stream)
        try:
            await connection.run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self.closed.add(connection.index)
            self._notify()


class _ServerConnection:
    def __init__(self, server: ApnsServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.index = server.connections
        server.connections += 1
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: server.max_concurrent_streams
            },
        )
        self.send_lock = trio.Lock()
        self.streams: dict[int, _Stream] = {}
        self.processed: list[int] = []
        self.answered = 0
        self.closed = False
        self.client_cert: bytes | None = None
        self.goaway_after = server.goaway_after if self.index < server.goaway_connections else None

    async def flush(self) -> None:
        async with self.send_lock:
            data = self.h2.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def run(self) -> None:
        if isinstance(self.stream, trio.SSLStream):
            await self.stream.do_handshake()
            self.client_cert = self.stream.getpeercert(binary_form=True)
            self.server.client_certs.append(self.client_cert)
        self.h2.initiate_connection()
        await self.flush()
        async with trio.open_nursery() as nursery:
            while not self.closed:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                for event in self.h2.receive_data(bytes(data)):
                    self.on_event(event, nursery)
                await self.flush()
            nursery.cancel_scope.cancel()

    def on_event(self, event: h2.events.Event, nursery: trio.Nursery) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = {str(k): str(v) for k, v in event.headers}
            self.streams[event.stream_id] = _Stream(headers)
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            s = self.streams.get(event.stream_id)
            if s is not None:
                s.body += event.data
        elif isinstance(event, h2.events.StreamEnded):
            s = self.streams.pop(event.stream_id, None)
            if s is None:
                return
            if self.goaway_after is not None and len(self.processed) >= self.goaway_after:
                return  # beyond the GOAWAY: never processed, never answered
            self.processed.append(event.stream_id)
            nursery.start_soon(self.answer, event.stream_id, s)
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id, None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def check_jwt(self, authorization: str | None) -> str | None:
        """The 403 reason, or None when the token verifies."""
        key = self.server.jwt_public_key
        if key is None:
            return None
        if not authorization or not authorization.lower().startswith("bearer "):
            return "MissingProviderToken"
        try:
            header_b64, claims_b64, signature_b64 = authorization[7:].split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            raw = _b64url_decode(signature_b64)
            if header.get("alg") != "ES256" or not header.get("kid") or len(raw) != 64:
                return "InvalidProviderToken"
            if not isinstance(claims.get("iss"), str) or not isinstance(claims.get("iat"), int):
                return "InvalidProviderToken"
            r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
            key.verify(
                encode_dss_signature(r, s),
                f"{header_b64}.{claims_b64}".encode(),
                ec.ECDSA(hashes.SHA256()),
            )
        except (ValueError, InvalidSignature):
            return "InvalidProviderToken"
        return None

    def decide(self, s: _Stream, token: str) -> Reply:
        headers = s.headers
        method, path = headers.get(":method"), headers.get(":path", "")
        if method != "POST":
            return Reply(405, "MethodNotAllowed")
        if not path.startswith("/3/device/") or not token:
            return Reply(404, "BadPath")
        if "apns-topic" not in headers:
            return Reply(400, "MissingTopic")
        jwt_problem = self.check_jwt(headers.get("authorization"))
        if jwt_problem is not None:
            return Reply(403, jwt_problem)
        try:
            json.loads(s.body)
        except ValueError:
            return Reply(400, "PayloadEmpty" if not s.body else "BadPayload")
        return self.server._next_reply(token)

    async def answer(self, stream_id: int, s: _Stream) -> None:
        server = self.server
        path = s.headers.get(":path", "")
        token = path.removeprefix("/3/device/") if path.startswith("/3/device/") else ""
        reply = self.decide(s, token)
        try:
            payload: object = json.loads(s.body)
        except ValueError:
            payload = None
        server.pushes.append(
            RecordedPush(
                token=token,
                method=s.headers.get(":method", ""),
                path=path,
                headers=dict(s.headers),
                payload=payload,
                connection=self.index,
                stream_id=stream_id,
                at=trio.current_time(),
                status=reply.status,
                client_cert=self.client_cert,
            )
        )
        server.in_flight += 1
        server.max_in_flight = max(server.max_in_flight, server.in_flight)
        server._notify()
        try:
            if server.gate is not None:
                await server.gate.wait()
            if server.response_delay:
                await trio.sleep(server.response_delay)
            apns_id = s.headers.get("apns-id") or str(uuid.uuid4()).upper()
            headers = [(":status", str(reply.status)), ("apns-id", apns_id)]
            body = b""
            if reply.status != 200:
                document: dict[str, object] = {"reason": reply.reason}
                if reply.timestamp is not None:
                    document["timestamp"] = reply.timestamp
                body = json.dumps(document).encode()
                headers.append(("content-type", "application/json"))
            if reply.retry_after is not None:
                headers.append(("retry-after", str(reply.retry_after)))
            headers.append(("content-length", str(len(body))))
            try:
                self.h2.send_headers(stream_id, headers, end_stream=not body)
                if body:
                    self.h2.send_data(stream_id, body, end_stream=True)
            except h2.exceptions.StreamClosedError:
                return  # the client gave up on this stream
        finally:
            # The stream is over once its answer is queued: the client may open another as
            # soon as the bytes (flushed by any task) reach it.
            server.in_flight -= 1
            server._notify()
        await self.flush()
        self.answered += 1
        if self.goaway_after is not None and self.answered == self.goaway_after:
            server.goaways += 1
            self.h2.close_connection(
                error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=max(self.processed)
            )
            await self.flush()
            self.closed = True
            await trio.aclose_forcefully(self.stream)


@asynccontextmanager
async def running(
    server: ApnsServer, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Listen on 127.0.0.1 (TLS with ``ssl_context``); yields the base URL."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    wrapped: list[trio.abc.Listener[trio.abc.Stream]] = []
    for listener in listeners:
        if ssl_context is None:
            wrapped.append(listener)
        else:
            wrapped.append(trio.SSLListener(listener, ssl_context, https_compatible=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.serve_stream, wrapped)
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()
