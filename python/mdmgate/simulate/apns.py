"""An APNs stand-in for simulated runs: the gateway pushes here instead of to Apple.

It speaks the provider API's part a gateway uses: HTTP/2 (``h2``), ``POST /3/device/<hex
token>`` with an ``apns-topic`` header and a JSON body, answered 200 with an ``apns-id``, or
an error status with ``{"reason": ...}`` as Apple words it. Each accepted push calls
``on_push(token)`` so that the runner can wake that device, as a real push would.

TLS or not. ``mdmgate serve`` speaks cleartext HTTP/2 by prior knowledge to an ``http://``
``--apns-url``; under ``https://`` it verifies the server with the system's default trust
store (``ssl.create_default_context()``), which OpenSSL lets ``SSL_CERT_FILE`` replace. So
with ``tls=True`` the stand-in makes a private CA and a server certificate for its address,
and :attr:`ApnsStandIn.ca_file` is the CA to put in the gateway's ``SSL_CERT_FILE``.

Bounds: connections, concurrent streams per connection (advertised, and refused beyond),
header list size, body size (413 ``PayloadTooLarge`` as APNs answers), TLS handshake time.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import ssl
import tempfile
import uuid
from collections.abc import Callable, Container
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["ApnsStandIn"]

_PREFIX = "/3/device/"
#: Apple's tokens are 32 bytes today; longer ones are announced, so only a sane bound.
_MAX_TOKEN_HEX = 200
_RECEIVE = 65536


class _Stream:
    """A request in progress on one connection."""

    __slots__ = ("body", "has_topic", "method", "path", "request_id", "too_large")

    def __init__(self, method: str, path: str, has_topic: bool, request_id: str | None) -> None:
        self.method = method
        self.path = path
        self.has_topic = has_topic
        self.request_id = request_id
        self.body = bytearray()
        self.too_large = False


class ApnsStandIn:
    """Serve with ``await nursery.start(stand_in.serve)``; then :attr:`url` (and, under TLS,
    :attr:`ca_file`) tell the gateway where to push.

    ``on_push(token)``: called for every accepted push with the token in lower-case hex; it
    runs in the connection's task, so it must neither block nor raise (hand the token to a
    channel with ``send_nowait``, set an event). ``tokens``: the tokens the fleet holds;
    a push to any other is answered 400 ``BadDeviceToken`` (``None``: every well-formed token
    is accepted). ``directory``: where the CA file goes (a private temporary directory,
    removed when serving ends, if not given).
    """

    def __init__(
        self,
        on_push: Callable[[str], None] | None = None,
        *,
        tokens: Container[str] | None = None,
        tls: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 64,
        max_streams: int = 1000,
        max_body: int = 4096,
        max_header_list: int = 16384,
        handshake_timeout: float = 10.0,
        directory: str | Path | None = None,
    ) -> None:
        self.on_push = on_push
        self.tokens = tokens
        self.tls = tls
        self.max_connections = max_connections
        self.max_streams = max_streams
        self.max_body = max_body
        self.max_header_list = max_header_list
        self.handshake_timeout = handshake_timeout
        #: Pushes accepted (200).
        self.pushes = 0
        #: Requests answered with an error status, by reason.
        self.refused: dict[str, int] = {}
        #: Connections open now.
        self.connections = 0
        self._host = host
        self._port = port
        self._directory = Path(directory) if directory is not None else None
        self._url: str | None = None
        self._ca_file: Path | None = None

    @property
    def url(self) -> str:
        """The base URL for ``--apns-url`` (once serving)."""
        if self._url is None:
            raise RuntimeError("the APNs stand-in is not serving yet")
        return self._url

    @property
    def ca_file(self) -> Path | None:
        """The PEM file of the CA that issued the server certificate (TLS only, once
        serving): the gateway must trust it (``SSL_CERT_FILE``)."""
        return self._ca_file

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listens, reports started, and serves until cancelled."""
        owned = self._directory is None
        folder = Path(tempfile.mkdtemp(prefix="mdmgate-apns-")) if owned else self._directory
        assert folder is not None
        try:
            listeners = await trio.open_tcp_listeners(self._port, host=self._host)
            port = listeners[0].socket.getsockname()[1]
            wrapped: list[trio.abc.Listener[trio.abc.Stream]] = list(listeners)
            if self.tls:
                context, self._ca_file = _server_context(self._host, folder)
                wrapped = [
                    trio.SSLListener(listener, context, https_compatible=True)
                    for listener in listeners
                ]
            host = f"[{self._host}]" if ":" in self._host else self._host
            self._url = f"{'https' if self.tls else 'http'}://{host}:{port}"
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._connection, wrapped)
                task_status.started()
                await trio.sleep_forever()
        finally:
            if owned:
                shutil.rmtree(folder, ignore_errors=True)

    # -- one connection

    async def _connection(self, stream: trio.abc.Stream) -> None:
        if self.connections >= self.max_connections:
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        try:
            await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the gateway went away, or never finished its handshake
        except h2.exceptions.H2Error:
            pass  # a state h2 refuses: this connection is over, the others go on
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    async def _converse(self, stream: trio.abc.Stream) -> None:
        if isinstance(stream, trio.SSLStream):
            with trio.fail_after(self.handshake_timeout):
                await stream.do_handshake()
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_list,
            },
        )
        conn.initiate_connection()
        streams: dict[int, _Stream] = {}
        await stream.send_all(conn.data_to_send())
        while True:
            data = await stream.receive_some(_RECEIVE)
            if not data:
                return
            try:
                events = conn.receive_data(bytes(data))
            except h2.exceptions.ProtocolError:
                await stream.send_all(conn.data_to_send())  # h2 queued a GOAWAY
                return
            closing = False
            for event in events:
                closing = self._on_event(conn, streams, event) or closing
            pending = conn.data_to_send()
            if pending:
                await stream.send_all(pending)
            if closing:
                return

    def _on_event(
        self, conn: h2.connection.H2Connection, streams: dict[int, _Stream], event: h2.events.Event
    ) -> bool:
        """Handles one event; true when the connection is over."""
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None
            if len(streams) >= self.max_streams:
                # A client that ignored the advertised limit before acknowledging it.
                conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return False
            headers = {str(k): str(v) for k, v in event.headers or ()}
            streams[event.stream_id] = _Stream(
                headers.get(":method", ""),
                headers.get(":path", ""),
                "apns-topic" in headers,
                headers.get("apns-id"),
            )
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            pending = streams.get(event.stream_id)
            if pending is not None and not pending.too_large:
                pending.body += event.data or b""
                if len(pending.body) > self.max_body:
                    pending.too_large = True
                    pending.body = bytearray()
                    self._answer(conn, event.stream_id, pending, 413, "PayloadTooLarge")
                    del streams[event.stream_id]
                    if not event.stream_ended:
                        # Answered before the request ended: the rest of it is not wanted.
                        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            pending = streams.pop(event.stream_id, None)
            if pending is not None:
                self._decide(conn, event.stream_id, pending)
        elif isinstance(event, h2.events.StreamReset):
            streams.pop(event.stream_id or 0, None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            return True
        return False

    def _decide(self, conn: h2.connection.H2Connection, stream_id: int, request: _Stream) -> None:
        if request.method != "POST":
            self._answer(conn, stream_id, request, 405, "MethodNotAllowed")
            return
        if not request.path.startswith(_PREFIX):
            self._answer(conn, stream_id, request, 404, "BadPath")
            return
        token = request.path[len(_PREFIX) :].lower()
        if not _well_formed(token) or (self.tokens is not None and token not in self.tokens):
            self._answer(conn, stream_id, request, 400, "BadDeviceToken")
            return
        if not request.has_topic:
            self._answer(conn, stream_id, request, 400, "MissingTopic")
            return
        if not request.body:
            self._answer(conn, stream_id, request, 400, "PayloadEmpty")
            return
        try:
            json.loads(request.body)
        except ValueError:
            self._answer(conn, stream_id, request, 400, "BadPayload")
            return
        self._answer(conn, stream_id, request, 200, None)
        self.pushes += 1
        if self.on_push is not None:
            self.on_push(token)

    def _answer(
        self,
        conn: h2.connection.H2Connection,
        stream_id: int,
        request: _Stream,
        status: int,
        reason: str | None,
    ) -> None:
        apns_id = request.request_id or str(uuid.uuid4()).upper()
        body = b"" if reason is None else json.dumps({"reason": reason}).encode()
        headers = [(":status", str(status)), ("apns-id", apns_id)]
        if body:
            headers.append(("content-type", "application/json"))
        headers.append(("content-length", str(len(body))))
        if reason is not None:
            self.refused[reason] = self.refused.get(reason, 0) + 1
        try:
            conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                conn.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.StreamClosedError:
            pass  # the gateway gave up on this push meanwhile


def _well_formed(token: str) -> bool:
    if not token or len(token) % 2 or len(token) > _MAX_TOKEN_HEX:
        return False
    try:
        bytes.fromhex(token)
    except ValueError:
        return False
    return True


def _server_context(host: str, folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A TLS server context (ALPN h2) with a fresh CA and a certificate for ``host``; the
    CA's PEM file, written into ``folder``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mdmgate simulate APNs CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "apns-ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file, key_file = folder / "apns-server.pem", folder / "apns-server.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    return context, ca_file


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
