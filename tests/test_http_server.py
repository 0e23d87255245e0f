"""The gateway's HTTP layer over real loopback sockets: HTTP/1.1, HTTP/2 (prior knowledge and
ALPN), TLS with client certificates, limits and abuse, graceful drain, metrics and logs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import h11
import httpx
import pytest
import trio
import trio.testing
import trustme

from mdmgate.server.http import (
    Limits,
    Listener,
    Server,
    listener_port,
    open_listeners,
    serve,
    server_ssl_context,
)
from mdmgate.server.metrics import Counter, Histogram, Metrics
from mdmgate.server.types import Handler, Request, Response

#: Small timeouts so that abuse tests finish quickly.
FAST = Limits(
    header_timeout=1.0,
    read_timeout=1.0,
    idle_timeout=5.0,
    write_timeout=2.0,
    drain_grace=5.0,
)


#: What ``/big`` answers: more than loopback socket buffers hold.
BIG = b"z" * 24_000_000


async def echo(request: Request) -> Response:
    """Echoes the body; method, path and more come back as headers."""
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path == "/big":
        return Response(200, body=BIG)
    headers = [
        ("x-method", request.method),
        ("x-path", request.path),
        ("x-query", request.query),
        ("x-version", request.http_version),
        ("x-peer", request.peer),
        ("x-host", request.header("host") or ""),
        ("content-type", "application/octet-stream"),
    ]
    if request.client_cert is not None:
        headers.append(("x-client-cert", hashlib.sha256(request.client_cert).hexdigest()))
    return Response(200, tuple(headers), request.body, log={"note": "echoed"})


_opened: list[trio.SocketStream] = []


async def connect(port: int) -> trio.SocketStream:
    """A client connection to the server, closed after the test if the test does not."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    _opened.append(stream)
    return stream


@pytest.fixture(autouse=True)
async def _close_client_sockets() -> AsyncIterator[None]:
    yield
    while _opened:
        await trio.aclose_forcefully(_opened.pop())


@asynccontextmanager
async def running(
    handler: Handler = echo, limits: Limits = FAST, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Server, int]]:
    listeners: Sequence[Listener] = await open_listeners("127.0.0.1", 0, ssl_context)
    port = listener_port(listeners[0])
    server = Server(handler, limits, metrics=Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, listeners)
        yield server, port
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Small raw clients, for what httpx will not do on purpose.


class H1Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.conn.send(event)
            if data:
                await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
                continue
            assert isinstance(event, h11.Event)
            return event

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, dict[str, str], bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("host", "test"), ("content-length", str(len(body))), *headers]
        await self.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())
        return await self.read_response()

    async def read_response(self) -> tuple[int, dict[str, str], bytes]:
        status = 0
        headers: dict[str, str] = {}
        body = b""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, body


async def read_raw_response(stream: trio.abc.Stream) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response read with a fresh h11 client (the request went out raw)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    status = 0
    headers: dict[str, str] = {}
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, body


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


@dataclass
class H2Response:
    status: int
    headers: dict[str, str]
    body: bytes


class H2Client:
    """A minimal HTTP/2 client over one stream (prior knowledge)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.resets: dict[int, int] = {}
        self.responses: dict[int, H2Response] = {}
        self.ended: set[int] = set()
        self.closed = False
        #: Error codes of GOAWAY frames received. They are kept from h2, which would refuse
        #: the rest of the streams after one (a server's graceful GOAWAY still answers them).
        self.goaways: list[int] = []
        self._frames = bytearray()

    async def start(self) -> None:
        self.conn.initiate_connection()
        await self.flush()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    def headers(self, method: str, path: str, extra: Sequence[tuple[str, str]] = ()) -> list:
        return [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"test"),
            *((k.encode(), v.encode()) for k, v in extra),
        ]

    async def pump(self) -> None:
        """Read once and process what arrived."""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.closed = True
            return
        self._frames += data
        passed = bytearray()
        while len(self._frames) >= 9:
            end = 9 + int.from_bytes(self._frames[:3], "big")
            if len(self._frames) < end:
                break
            frame = bytes(self._frames[:end])
            del self._frames[:end]
            if frame[3] == 0x7:
                self.goaways.append(int.from_bytes(frame[13:17], "big"))
            else:
                passed += frame
        for event in self.conn.receive_data(bytes(passed)):
            if isinstance(event, h2.events.ResponseReceived):
                headers = {bytes(k).decode(): bytes(v).decode() for k, v in event.headers}
                self.responses[event.stream_id] = H2Response(
                    int(headers.pop(":status")), headers, b""
                )
            elif isinstance(event, h2.events.DataReceived):
                self.responses[event.stream_id].body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
        await self.flush()

    async def request(
        self, method: str, path: str, body: bytes = b"", extra: Sequence[tuple[str, str]] = ()
    ) -> H2Response:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, self.headers(method, path, extra), end_stream=not body)
        await self.flush()
        sent = 0
        while sent < len(body) and stream_id not in self.resets and stream_id not in self.ended:
            window = self.conn.local_flow_control_window(stream_id)
            if window == 0:
                await self.pump()
                continue
            size = min(window, self.conn.max_outbound_frame_size, len(body) - sent)
            self.conn.send_data(
                stream_id, body[sent : sent + size], end_stream=sent + size == len(body)
            )
            sent += size
            await self.flush()
        while stream_id not in self.ended and stream_id not in self.resets:
            await self.pump()
            assert not self.closed, "connection closed"
        return self.responses[stream_id]


def goaway_codes(data: bytes) -> list[int]:
    """Error codes of the GOAWAY frames in a server's byte stream (frames parsed by hand: the
    point is what went over the wire)."""
    codes = []
    position = 0
    while position + 9 <= len(data):
        length = int.from_bytes(data[position : position + 3], "big")
        frame_type = data[position + 3]
        payload = data[position + 9 : position + 9 + length]
        if frame_type == 0x7 and len(payload) >= 8:
            codes.append(int.from_bytes(payload[4:8], "big"))
        position += 9 + length
    return codes


# ---------------------------------------------------------------------------------------------
# HTTP/1.1


async def test_http11_keep_alive_and_access_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mdmgate.access")
    async with running() as (server, port), httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{port}"
        peers = set()
        for number in range(5):
            response = await client.post(
                f"{base}/echo/{number}?n={number}", content=b"hi %d" % number
            )
            assert response.status_code == 200
            assert response.http_version == "HTTP/1.1"
            assert response.content == b"hi %d" % number
            assert response.headers["x-method"] == "POST"
            assert response.headers["x-path"] == f"/echo/{number}"
            assert response.headers["x-query"] == f"n={number}"
            assert response.headers["x-version"] == "1.1"
            assert "date" in response.headers
            peers.add(response.headers["x-peer"])
        assert len(peers) == 1  # one connection, kept alive
        head = await client.head(f"{base}/x")
        assert head.status_code == 200
        assert head.content == b""
        assert server.metrics.requests.value("POST", "2xx", "HTTP/1.1") == 5
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mdmgate.access"]
    assert len(lines) == 6
    first = lines[0]
    assert first["method"] == "POST"
    assert first["path"] == "/echo/0"
    assert first["status"] == 200
    assert first["protocol"] == "HTTP/1.1"
    assert first["bytes"] == 4
    assert first["note"] == "echoed"
    assert first["peer"].startswith("127.0.0.1:")
    assert isinstance(first["duration_ms"], float)


async def test_http11_pipelined_requests_answered_in_order() -> None:
    async with running() as (_, port):
        stream = await connect(port)
        raw = b"".join(
            b"POST /p%d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nb%d" % (n, n)
            for n in range(3)
        )
        await stream.send_all(raw)
        client = H1Client(stream)
        # h11 as a client wants to have sent the requests it reads answers to.
        for number in range(3):
            if client.conn.our_state is h11.DONE:
                client.conn.start_next_cycle()
            client.conn.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
            client.conn.send(h11.EndOfMessage())
            status, headers, body = await client.read_response()
            assert status == 200
            assert headers["x-path"] == f"/p{number}"
            assert body == b"b%d" % number
        await stream.aclose()


async def test_http11_chunked_body_and_100_continue() -> None:
    async with running() as (_, port):
        stream = await connect(port)
        await stream.send_all(
            b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        status, _, body = await read_raw_response(stream)
        assert (status, body) == (200, b"hello world")
        await stream.aclose()

        stream = await connect(port)
        await stream.send_all(
            b"PUT /c HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await stream.receive_some(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"data")
        status, _, body = await read_raw_response(stream)
        assert (status, body) == (200, b"data")
        await stream.aclose()


async def test_http11_malformed_request_gets_400_with_reason() -> None:
    async with running() as (server, port):
        stream = await connect(port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n")
        data = await read_until_eof(stream)
        assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"\r\n\r\nBad request: " in data
        assert server.metrics.errors.value("bad_request") == 1


async def test_http11_oversized_headers_get_431() -> None:
    async with running() as (_, port):
        stream = await connect(port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        data = await read_until_eof(stream)
        assert data.startswith(b"HTTP/1.1 431 ")


async def test_oversized_body_gets_413_and_the_server_stays_up() -> None:
    limits = Limits(max_body_bytes=64 * 1024, header_timeout=1, read_timeout=1)
    async with running(limits=limits) as (server, port):
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{base}/up", content=b"x" * 200_000)
            assert response.status_code == 413
            assert b"exceeds 65536 bytes" in response.content
        async with httpx.AsyncClient() as client:  # a new connection
            response = await client.post(f"{base}/up", content=b"y" * 1000)
            assert response.status_code == 200
            assert response.content == b"y" * 1000
        # Declared too large with Expect: 100-continue: refused before the body is sent.
        stream = await connect(port)
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        status, _, _ = await read_raw_response(stream)
        assert status == 413
        assert server.metrics.errors.value("body_too_large") == 2


async def test_handler_exception_gives_500_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running() as (server, port), httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/boom")
        assert response.status_code == 500
        assert response.text == "Internal Server Error\n"
        assert "handler bug" not in response.text
        again = await client.get(f"http://127.0.0.1:{port}/fine")
        assert again.status_code == 200
        assert server.metrics.errors.value("handler") == 1
    failures = [r for r in caplog.records if r.name == "mdmgate.server" and r.exc_info]
    assert failures
    assert "handler bug" in str(failures[0].exc_info[1])  # type: ignore[index]


async def test_invalid_response_from_handler_gives_500() -> None:
    async def bad(request: Request) -> Response:
        return Response(200, (("x-bad", "line\r\nbreak"),))

    async with running(bad) as (_, port), httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/")
        assert response.status_code == 500


# ---------------------------------------------------------------------------------------------
# HTTP/2


async def test_http2_prior_knowledge_multiplexed() -> None:
    async with (
        running() as (server, port),
        httpx.AsyncClient(http1=False, http2=True) as client,
    ):
        results: dict[int, httpx.Response] = {}

        async def one(number: int) -> None:
            results[number] = await client.post(
                f"http://127.0.0.1:{port}/s/{number}?q=1", content=b"n%d" % number
            )

        async with trio.open_nursery() as nursery:
            for number in range(20):
                nursery.start_soon(one, number)
        assert len({r.headers["x-peer"] for r in results.values()}) == 1  # one connection
        for number, response in results.items():
            assert response.http_version == "HTTP/2"
            assert response.status_code == 200
            assert response.headers["x-version"] == "2"
            assert response.headers["x-path"] == f"/s/{number}"
            assert response.headers["x-query"] == "q=1"
            assert response.headers["x-host"] == f"127.0.0.1:{port}"
            assert response.content == b"n%d" % number
        assert server.metrics.requests.value("POST", "2xx", "HTTP/2") == 20


async def test_http2_five_megabytes_each_way() -> None:
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    async with (
        running() as (_, port),
        httpx.AsyncClient(http1=False, http2=True) as client,
    ):
        response = await client.post(f"http://127.0.0.1:{port}/five", content=body)
        assert response.status_code == 200
        assert response.http_version == "HTTP/2"
        assert response.content == body


async def test_http2_too_large_body_gets_413_and_connection_survives() -> None:
    limits = Limits(max_body_bytes=10_000, header_timeout=1, read_timeout=1)
    async with running(limits=limits) as (_, port):
        stream = await connect(port)
        client = H2Client(stream)
        await client.start()
        # Declared too large: answered from the headers, then "stop sending" (RST NO_ERROR).
        stream_id = client.conn.get_next_available_stream_id()
        extra = [("content-length", "20000")]
        client.conn.send_headers(stream_id, client.headers("POST", "/a", extra))
        await client.flush()
        with trio.fail_after(2):
            while stream_id not in client.resets:
                await client.pump()
        assert client.responses[stream_id].status == 413
        assert client.resets[stream_id] == h2.errors.ErrorCodes.NO_ERROR
        # Not declared: answered once the data passes the limit.
        streamed = await client.request("POST", "/b", b"x" * 20_000)
        assert streamed.status == 413
        ok = await client.request("POST", "/c", b"fine")
        assert (ok.status, ok.body) == (200, b"fine")
        await stream.aclose()


async def test_http2_oversized_header_block_gets_431() -> None:
    limits = Limits(max_header_bytes=4096)
    async with running(limits=limits) as (_, port):
        stream = await connect(port)
        client = H2Client(stream)
        await client.start()
        response = await client.request("GET", "/", extra=[("x-big", "a" * 5000)])
        assert response.status == 431
        ok = await client.request("GET", "/after")
        assert ok.status == 200
        await stream.aclose()


@pytest.mark.parametrize(
    ("header", "named"),
    [
        (("transfer-encoding", "chunked"), b"transfer-encoding"),
        (("connection", "keep-alive"), b"connection"),
        (("te", "gzip"), b"TE header"),
        (("X-Upper", "1"), b"X-Upper"),
    ],
)
async def test_http2_malformed_request_is_a_stream_error(
    header: tuple[str, str], named: bytes
) -> None:
    async with running() as (server, port):
        stream = await connect(port)
        client = H2Client(stream)
        # A client that sends what it is told, malformed or not.
        client.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        await client.start()
        with trio.fail_after(5):
            bad = await client.request("POST", "/", b"body", [header])
            assert bad.status == 400
            assert named in bad.body
            # The client's other streams are not the malformed one's business.
            ok = await client.request("GET", "/after", extra=[("te", "trailers")])
            assert (ok.status, client.goaways) == (200, [])
        assert server.metrics.errors.value("bad_request") == 1
        await stream.aclose()


async def test_http2_malformed_trailers_are_a_stream_error() -> None:
    async with running() as (server, port):
        stream = await connect(port)
        client = H2Client(stream)
        client.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True, header_encoding=None, validate_outbound_headers=False
            )
        )
        await client.start()
        with trio.fail_after(5):
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream_id, client.headers("POST", "/"))
            client.conn.send_data(stream_id, b"body")
            client.conn.send_headers(stream_id, [(b":path", b"/elsewhere")], end_stream=True)
            await client.flush()
            while stream_id not in client.ended:
                await client.pump()
                assert not client.closed, client.goaways
            bad = client.responses[stream_id]
            assert bad.status == 400
            assert b"pseudo-header in trailer" in bad.body
            ok = await client.request("GET", "/after")
            assert (ok.status, client.goaways) == (200, [])
        assert server.metrics.errors.value("bad_request") == 1
        await stream.aclose()


# ---------------------------------------------------------------------------------------------
# TLS


@dataclass
class Pki:
    ca: trustme.CA
    server_context: ssl.SSLContext
    client_cert: trustme.LeafCert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory: Path = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = (directory / name for name in ("cert.pem", "key.pem", "ca.pem"))
    for blob in server_cert.cert_chain_pems:
        blob.write_to_path(cert_file, append=True)
    server_cert.private_key_pem.write_to_path(key_file)
    ca.cert_pem.write_to_path(ca_file)
    context = server_ssl_context(cert_file, key_file, client_ca_file=ca_file)
    return Pki(ca, context, ca.issue_cert("device-42.example"))


def client_context(pki: Pki, *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    if with_cert:
        pki.client_cert.configure_cert(context)
    return context


async def test_tls_alpn_h2_with_client_certificate(pki: Pki) -> None:
    expected = hashlib.sha256(
        ssl.PEM_cert_to_DER_cert(pki.client_cert.cert_chain_pems[0].bytes().decode())
    ).hexdigest()
    context = client_context(pki, with_cert=True)
    async with (
        running(ssl_context=pki.server_context) as (_, port),
        httpx.AsyncClient(http2=True, verify=context) as client,
    ):
        response = await client.post(f"https://127.0.0.1:{port}/mdm", content=b"plist")
        assert response.status_code == 200
        assert response.http_version == "HTTP/2"
        assert response.headers["x-version"] == "2"
        assert response.headers["x-client-cert"] == expected
        assert response.content == b"plist"


async def test_tls_http11_without_client_certificate(pki: Pki) -> None:
    context = client_context(pki, with_cert=False)
    async with (
        running(ssl_context=pki.server_context) as (_, port),
        httpx.AsyncClient(verify=context) as client,
    ):
        response = await client.get(f"https://127.0.0.1:{port}/healthz")
        assert response.status_code == 200
        assert response.http_version == "HTTP/1.1"
        assert "x-client-cert" not in response.headers


# ---------------------------------------------------------------------------------------------
# Abuse and overload


async def test_rapid_reset_closes_only_the_offending_connection() -> None:
    limits = Limits(max_resets=50, header_timeout=1, read_timeout=1)
    async with running(limits=limits) as (server, port):
        attacker = await connect(port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
        conn.initiate_connection()
        headers = [
            (b":method", b"GET"),
            (b":path", b"/"),
            (b":scheme", b"http"),
            (b":authority", b"x"),
        ]
        for number in range(1000):
            stream_id = 1 + 2 * number
            conn.send_headers(stream_id, headers, end_stream=True)
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        good_statuses: list[int] = []

        async def good_client() -> None:
            async with httpx.AsyncClient(http1=False, http2=True) as client:
                for _ in range(20):
                    response = await client.get(f"http://127.0.0.1:{port}/ok")
                    good_statuses.append(response.status_code)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(good_client)
                # The server may hang up before it has read everything.
                with contextlib.suppress(trio.BrokenResourceError):
                    await attacker.send_all(conn.data_to_send())
                received = await read_until_eof(attacker)
        assert h2.errors.ErrorCodes.ENHANCE_YOUR_CALM in goaway_codes(received)
        assert good_statuses == [200] * 20
        assert server.metrics.errors.value("rapid_reset") == 1


async def test_ping_flood_gets_goaway() -> None:
    limits = Limits(max_control_frames=50)
    async with running(limits=limits) as (server, port):
        stream = await connect(port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
        conn.initiate_connection()
        for number in range(200):
            conn.ping(number.to_bytes(8, "big"))
        with trio.fail_after(5):
            await stream.send_all(conn.data_to_send())
            received = await read_until_eof(stream)
        assert h2.errors.ErrorCodes.ENHANCE_YOUR_CALM in goaway_codes(received)
        assert server.metrics.errors.value("control_flood") == 1


async def test_byte_trickling_client_is_cut_off() -> None:
    async with running() as (server, port):  # header_timeout = read_timeout = 1 s
        stream = await connect(port)
        start = trio.current_time()

        async def trickle() -> None:
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaa\r\n\r\n":
                try:
                    await stream.send_all(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                await trio.sleep(0.5)

        with trio.fail_after(4):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                received = await read_until_eof(stream)
                nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
        assert 0.9 <= elapsed < 3.0
        assert received.startswith(b"HTTP/1.1 408 ")
        assert server.metrics.errors.value("read_timeout") == 1


async def test_http2_stream_that_never_finishes_is_timed_out() -> None:
    async with running() as (_, port):
        stream = await connect(port)
        client = H2Client(stream)
        await client.start()
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, client.headers("POST", "/slow"))
        client.conn.send_data(stream_id, b"part")
        await client.flush()
        with trio.fail_after(3):
            while stream_id not in client.ended and stream_id not in client.resets:
                await client.pump()
        assert client.responses[stream_id].status == 408
        await stream.aclose()


async def test_in_flight_storm_gets_429_not_timeouts() -> None:
    release = trio.Event()
    entered = 0
    both_in = trio.Event()

    async def blocking(request: Request) -> Response:
        nonlocal entered
        if request.path == "/block":
            entered += 1
            if entered == 2:
                both_in.set()
            await release.wait()
        return Response(200, body=b"done")

    limits = Limits(max_in_flight=2)
    async with running(blocking, limits) as (server, port), httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{port}"
        blocked: list[int] = []
        async with trio.open_nursery() as nursery:

            async def block() -> None:
                blocked.append((await client.get(f"{base}/block")).status_code)

            nursery.start_soon(block)
            nursery.start_soon(block)
            with trio.fail_after(2):
                await both_in.wait()
            assert server.in_flight == 2
            statuses: list[tuple[int, str | None]] = []
            with trio.fail_after(2):
                async with trio.open_nursery() as storm:
                    for _ in range(10):

                        async def one() -> None:
                            response = await client.get(f"{base}/other")
                            statuses.append(
                                (response.status_code, response.headers.get("retry-after"))
                            )

                        storm.start_soon(one)
            assert statuses == [(429, "1")] * 10
            release.set()
        assert blocked == [200, 200]
        assert server.metrics.errors.value("overloaded") == 10


class Gate:
    """A handler whose ``/block`` requests wait for :meth:`release`; ``entered`` counts them."""

    def __init__(self) -> None:
        self.entered = 0
        self.released = trio.Event()

    async def __call__(self, request: Request) -> Response:
        if request.path == "/block":
            self.entered += 1
            await self.released.wait()
        return Response(200, body=b"done")

    def release(self) -> None:
        self.released.set()


async def test_connections_beyond_the_limit_get_503() -> None:
    # Only when every connection is busy: idle ones would be shed first (next tests).
    gate = Gate()
    limits = Limits(max_connections=2, header_timeout=1, read_timeout=1)
    async with running(gate, limits) as (server, port), trio.open_nursery() as nursery:
        first = H1Client(await connect(port))
        second = H1Client(await connect(port))
        answers: list[int] = []

        async def block(client: H1Client) -> None:
            answers.append((await client.request("GET", "/block"))[0])

        nursery.start_soon(block, first)
        nursery.start_soon(block, second)
        third = await connect(port)
        with trio.fail_after(2):
            await wait_for(lambda: gate.entered == 2)
            await third.send_all(b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = await read_raw_response(third)
        assert status == 503
        assert headers["retry-after"] == "1"
        assert body == b"Server at its connection limit\n"
        await third.aclose()
        assert server.metrics.connections.value("rejected") == 1
        gate.release()
        # Once a connection goes, a new one is served.
        with trio.fail_after(2):
            await wait_for(lambda: answers == [200, 200])
        await first.stream.aclose()
        with trio.fail_after(2):
            await wait_for(lambda: server.open_connections == 1)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/4")).status_code == 200


async def test_http2_connections_beyond_the_limit_get_503() -> None:
    gate = Gate()
    limits = Limits(max_connections=1)
    async with running(gate, limits) as (_, port), trio.open_nursery() as nursery:
        first = H1Client(await connect(port))
        nursery.start_soon(first.request, "GET", "/block")
        client = H2Client(await connect(port))
        await client.start()
        with trio.fail_after(2):
            await wait_for(lambda: gate.entered == 1)
            response = await client.request("GET", "/2")
            assert response.status == 503
            assert response.headers["retry-after"] == "1"
            while not client.closed:
                await client.pump()
        assert client.goaways  # and then the connection went away
        gate.release()


async def test_waiting_connections_are_shed_longest_first_to_make_room() -> None:
    gate = Gate()
    limits = Limits(max_connections=3, header_timeout=5, read_timeout=5, idle_timeout=30)
    async with running(gate, limits) as (server, port):
        with trio.fail_after(5):
            silent = await connect(port)  # connects and says nothing
            await wait_for(lambda: server.open_connections == 1)
            slow = await connect(port)  # half a request head, then nothing
            await slow.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
            await wait_for(lambda: server.open_connections == 2)
            idle = H1Client(await connect(port))  # a finished request, then keep-alive
            assert (await idle.request("GET", "/idle"))[0] == 200
            # At the limit, and everyone waiting: each newcomer is served, and the
            # connection that has waited longest makes room.
            newcomers = [H1Client(await connect(port))]
            assert (await newcomers[0].request("GET", "/1"))[0] == 200
            assert await read_until_eof(silent) == b""
            newcomers.append(H1Client(await connect(port)))
            assert (await newcomers[1].request("GET", "/2"))[0] == 200
            status, headers, body = await read_raw_response(slow)
            assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
            assert body == b"Server busy: request head not received in time\n"
            assert await read_until_eof(slow) == b""
            newcomers.append(H1Client(await connect(port)))
            assert (await newcomers[2].request("GET", "/3"))[0] == 200
            assert await read_until_eof(idle.stream) == b""
            assert server.metrics.connections.value("shed") == 3
            # A connection with a request in progress is never shed: with all three busy,
            # the next one is turned away.
            async with trio.open_nursery() as nursery:
                for client in newcomers:
                    nursery.start_soon(client.request, "GET", "/block")
                await wait_for(lambda: gate.entered == 3)
                late = await connect(port)
                await late.send_all(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_raw_response(late))[0] == 503
                gate.release()
        assert server.metrics.connections.value("shed") == 3
        assert server.metrics.connections.value("rejected") == 1


async def test_idle_http2_connection_is_shed_with_goaway() -> None:
    limits = Limits(max_connections=1)
    async with running(limits=limits) as (server, port):
        h2_client = H2Client(await connect(port))
        await h2_client.start()
        assert (await h2_client.request("GET", "/")).status == 200
        with trio.fail_after(5):
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://127.0.0.1:{port}/")).status_code == 200
            while not h2_client.closed:
                await h2_client.pump()
        assert h2_client.goaways == [h2.errors.ErrorCodes.NO_ERROR]
        assert server.metrics.connections.value("shed") == 1


async def connect_from(port: int, address: str) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=address)
    _opened.append(stream)
    return stream


async def test_connections_over_the_per_client_budget_get_429() -> None:
    limits = Limits(max_connections_per_client=2)
    async with running(limits=limits) as (server, port):
        with trio.fail_after(5):
            mine = [H1Client(await connect_from(port, "127.0.0.1")) for _ in range(2)]
            for client in mine:
                assert (await client.request("GET", "/"))[0] == 200
            extra = await connect_from(port, "127.0.0.1")
            await extra.send_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = await read_raw_response(extra)
            assert (status, headers["retry-after"], headers["connection"]) == (429, "1", "close")
            assert body == b"Too many connections from your address (at most 2)\n"
            assert await read_until_eof(extra) == b""
            # Another address is not affected, and HTTP/2 hears the same answer.
            neighbour = H1Client(await connect_from(port, "127.0.0.2"))
            assert (await neighbour.request("GET", "/"))[0] == 200
            h2_extra = H2Client(await connect_from(port, "127.0.0.1"))
            await h2_extra.start()
            assert (await h2_extra.request("GET", "/")).status == 429
            # When one of its connections closes, the client may open another.
            await mine[0].stream.aclose()
            await wait_for(lambda: server.open_connections == 2)
            again = H1Client(await connect_from(port, "127.0.0.1"))
            assert (await again.request("GET", "/"))[0] == 200
        assert server.metrics.connections.value("over_budget") == 2


async def test_trusted_proxies_are_not_held_to_the_per_client_budget() -> None:
    limits = Limits(max_connections_per_client=1, trusted_proxies=("127.0.0.0/30",))
    async with running(limits=limits) as (_, port):
        with trio.fail_after(5):
            clients = [H1Client(await connect_from(port, "127.0.0.1")) for _ in range(3)]
            for client in clients:
                assert (await client.request("GET", "/"))[0] == 200
            outside = [H1Client(await connect_from(port, "127.0.0.9")) for _ in range(2)]
            assert (await outside[0].request("GET", "/"))[0] == 200
            assert (await outside[1].request("GET", "/"))[0] == 429


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.01)


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
async def test_client_that_never_reads_is_dropped(protocol: str) -> None:
    limits = Limits(write_timeout=0.5)
    async with running(limits=limits) as (server, port):
        stream = await connect(port)
        # A small receive buffer, so that kernel buffers cannot absorb the whole response.
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        if protocol == "HTTP/1.1":
            await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        else:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
            conn.initiate_connection()
            # Open the windows wide: only the socket can hold the server back.
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
            conn.increment_flow_control_window(2**31 - 1 - 65535)
            conn.send_headers(1, H2Client(stream).headers("GET", "/big"), end_stream=True)
            await stream.send_all(conn.data_to_send())
        with trio.fail_after(5):
            await wait_for(lambda: server.metrics.errors.value("write_timeout") == 1)
            received = await read_until_eof(stream)
        assert len(received) < len(BIG)


async def test_idle_connections_are_closed() -> None:
    limits = Limits(idle_timeout=0.3)
    listeners = await open_listeners("127.0.0.1", 0)
    port = listener_port(listeners[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, echo, listeners, limits)
        h1 = H1Client(await connect(port))
        assert (await h1.request("GET", "/"))[0] == 200
        h2_client = H2Client(await connect(port))
        await h2_client.start()
        assert (await h2_client.request("GET", "/")).status == 200
        with trio.fail_after(2):
            assert await read_until_eof(h1.stream) == b""
            while not h2_client.closed:
                await h2_client.pump()
        assert h2_client.goaways == [h2.errors.ErrorCodes.NO_ERROR]
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Drain


async def test_drain_finishes_in_flight_requests_then_returns() -> None:
    release = trio.Event()
    entered = 0
    both_in = trio.Event()

    async def blocking(request: Request) -> Response:
        nonlocal entered
        entered += 1
        if entered == 2:
            both_in.set()
        await release.wait()
        return Response(200, body=b"finished " + request.http_version.encode())

    listeners = await open_listeners("127.0.0.1", 0)
    port = listener_port(listeners[0])
    server = Server(blocking, FAST)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, listeners)
            h1 = H1Client(await connect(port))
            h2_client = H2Client(await connect(port))
            await h2_client.start()
            idle = await connect(port)
            results: dict[str, object] = {}

            async def h1_request() -> None:
                results["h1"] = await h1.request("GET", "/slow")
                await h1.stream.aclose()

            async def h2_request() -> None:
                results["h2"] = await h2_client.request("GET", "/slow")
                # Then the final GOAWAY, after which a client closes.
                while len(h2_client.goaways) < 2:
                    await h2_client.pump()
                await h2_client.stream.aclose()

            nursery.start_soon(h1_request)
            nursery.start_soon(h2_request)
            await both_in.wait()
            server.drain()
            await trio.testing.wait_all_tasks_blocked()
            # No new connections.
            with pytest.raises(OSError, match="connect"):
                await trio.open_tcp_stream("127.0.0.1", port)
            # The idle connection has been closed.
            assert await read_until_eof(idle) == b""
            # The HTTP/2 client hears GOAWAY while its stream is still open.
            while not h2_client.goaways:
                await h2_client.pump()
            assert h2_client.goaways == [h2.errors.ErrorCodes.NO_ERROR]
            release.set()
        # run() has returned: the nursery closed by itself.
    h1_status, h1_headers, h1_body = results["h1"]  # type: ignore[misc]
    assert (h1_status, h1_body) == (200, b"finished 1.1")
    assert h1_headers["connection"] == "close"
    h2_response = results["h2"]
    assert isinstance(h2_response, H2Response)
    assert (h2_response.status, h2_response.body) == (200, b"finished 2")
    assert h2_client.goaways == [h2.errors.ErrorCodes.NO_ERROR] * 2


# ---------------------------------------------------------------------------------------------
# Metrics


async def test_metrics_render_prometheus_text() -> None:
    metrics = Metrics(buckets=(0.1, 1.0), node="gw-1")
    metrics.observe_request("GET", 200, "HTTP/2", 0.05)
    metrics.observe_request("GET", 204, "HTTP/2", 0.5)
    metrics.observe_request("BREW", 418, "HTTP/1.1", 2.0)
    metrics.error("handler")
    depth = [3]
    metrics.register_gauge("mdmgate_queue_depth", "Commands queued.", lambda: depth[0])
    depth[0] = 7
    text = metrics.render().decode()
    assert text.endswith("\n")
    lines = text.splitlines()
    node = 'node="gw-1"'
    assert "# TYPE mdmgate_http_requests_total counter" in lines
    assert (
        f'mdmgate_http_requests_total{{{node},method="GET",status="2xx",protocol="HTTP/2"}} 2'
        in lines
    )
    assert (
        f'mdmgate_http_requests_total{{{node},method="OTHER",status="4xx",protocol="HTTP/1.1"}} 1'
        in lines
    )
    assert "# TYPE mdmgate_http_request_duration_seconds histogram" in lines
    series = f'{node},method="GET",status="2xx",protocol="HTTP/2"'
    assert f'mdmgate_http_request_duration_seconds_bucket{{{series},le="0.1"}} 1' in lines
    assert f'mdmgate_http_request_duration_seconds_bucket{{{series},le="1.0"}} 2' in lines
    assert f'mdmgate_http_request_duration_seconds_bucket{{{series},le="+Inf"}} 2' in lines
    assert f"mdmgate_http_request_duration_seconds_sum{{{series}}} 0.55" in lines
    assert f"mdmgate_http_request_duration_seconds_count{{{series}}} 2" in lines
    assert f'mdmgate_http_errors_total{{{node},kind="handler"}} 1' in lines
    assert "# TYPE mdmgate_queue_depth gauge" in lines
    assert f"mdmgate_queue_depth{{{node}}} 7" in lines
    assert f"mdmgate_http_open_connections{{{node}}} 0" in lines
    # Every series names the node; by default the process (host:pid).
    samples = [line for line in lines if line and not line.startswith("#")]
    assert samples
    assert all(f"{{{node}" in line for line in samples)
    assert Metrics().node == f"{socket.gethostname()}:{os.getpid()}"
    assert 'node="a\\"b"' in Metrics(node='a"b').render().decode()
    with pytest.raises(ValueError, match="already registered"):
        metrics.register_gauge("mdmgate_queue_depth", "again", lambda: 0)
    with pytest.raises(ValueError, match="invalid metric name"):
        metrics.register_gauge("bad name", "no", lambda: 0)


async def test_metrics_escaping_and_failing_gauge() -> None:
    counter = Counter("x_total", "Help with \\ and\nnewline", ("label",))
    counter.inc('a"b\\c\nd')
    assert list(counter.render()) == [
        "# HELP x_total Help with \\\\ and\\nnewline",
        "# TYPE x_total counter",
        'x_total{label="a\\"b\\\\c\\nd"} 1',
    ]
    histogram = Histogram("h_seconds", "h", buckets=(1.0, float("inf")))
    histogram.observe(5.0)
    assert 'h_seconds_bucket{le="+Inf"} 1' in list(histogram.render())
    metrics = Metrics()

    def broken() -> float:
        raise RuntimeError("gauge bug")

    metrics.register_gauge("mdmgate_broken", "fails", broken)
    assert b"mdmgate_broken" not in metrics.render()


async def test_timeouts_are_swept_at_a_tenth_of_the_shortest() -> None:
    assert Server(echo, Limits()).sweep_interval == 1.0
    assert Server(echo, Limits(idle_timeout=0.3)).sweep_interval == pytest.approx(0.03)


async def test_limits_validation() -> None:
    assert Limits().max_body_bytes == 16 * 1024 * 1024
    with pytest.raises(ValueError, match="max_in_flight"):
        Limits(max_in_flight=0)
    with pytest.raises(ValueError, match="trusted_proxies"):
        Limits(trusted_proxies=("10.0.0.0/8", "proxy.example"))
    with pytest.raises(ValueError, match="shed_idle_at"):
        Limits(shed_idle_at=0.0)
    assert Limits(trusted_proxies=["10.0.0.0/8"]).trusted_proxies == ("10.0.0.0/8",)  # type: ignore[arg-type]
