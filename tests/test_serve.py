"""`mdmgate serve` as a user runs it: a separate process, real sockets, real HTTP clients."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import httpx
import pytest
import trio

from tests.test_http_server import H2Client

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def gateway(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {**os.environ, "MDMGATE_API_TOKEN": TOKEN}
    # The log goes to a file: a pipe nobody reads would stall a busy server once full.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdmgate", "serve", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
            if not line.startswith("mdmgate listening on "):
                proc.wait(timeout=30)
                log.seek(0)
                raise AssertionError(line + log.read())
            yield proc, line.split()[-1]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def test_serves_both_protocols_and_drains_on_sigterm(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'g.db'}"
    with gateway("--db", db) as (proc, base):
        for http2 in (False, True):
            with httpx.Client(http1=not http2, http2=http2, base_url=base) as client:
                r = client.get("/healthz")
                assert (r.status_code, r.text, r.http_version) == (
                    200,
                    "ok\n",
                    "HTTP/2" if http2 else "HTTP/1.1",
                )
        with httpx.Client(base_url=base) as client:
            assert client.get("/api/v1/openapi.json").status_code == 401
            assert (
                client.get("/api/v1/openapi.json", headers=AUTH).json()["openapi"].startswith("3")
            )
            metrics = client.get("/metrics", headers=AUTH).text
            assert "mdmgate_http_requests_total" in metrics
            assert "mdmgate_queue_depth" in metrics
            r = client.post("/ManagementServer/MDM.svc", content=b"<SyncML/>")
            assert r.status_code == 415
            assert "application/vnd.syncml.dm+xml" in r.text
            assert "mdmgate_omadm_sessions" in metrics
            r = client.put("/mdm/apple/checkin", content=b"x")
            assert r.status_code == 415
            assert "application/x-apple-aspen-mdm-checkin" in r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_acknowledged_command_survives_sigkill(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'g.db'}"
    get = (
        "<Get><CmdID>1</CmdID><Item><Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>"
    )
    with gateway("--db", db) as (proc, base):
        with httpx.Client(base_url=base, headers=AUTH) as client:
            r = client.post(
                "/api/v1/devices", json=[{"id": "win-1", "platform": "windows", "org": "/"}]
            )
            assert r.status_code == 200, r.text
            r = client.post("/api/v1/commands", json={"devices": ["win-1"], "raw": get})
            assert r.status_code == 202, r.text
            command_id = r.json()["command_id"]
        proc.kill()  # SIGKILL right after the 2xx: no chance to flush anything else
        proc.wait(timeout=30)
    with gateway("--db", db) as (_, base), httpx.Client(base_url=base, headers=AUTH) as client:
        status = client.get(f"/api/v1/commands/{command_id}").json()
        assert [(d["device_id"], d["state"]) for d in status["deliveries"]] == [("win-1", "queued")]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--workers", "2", "--db", "memory:"], "several workers need a shared database"),
        (["--listen", "nowhere"], "is not HOST:PORT"),
        (["--db", "mysql://x"], "unsupported database URL"),
        (["--db", "postgresql://nobody@127.0.0.1:1/none"], "cannot use the database"),
        (["--apns-url", "ftp://push.example"], "is not an http(s) URL"),
        (["--metrics-listen", "nowhere"], "is not HOST:PORT"),
    ],
)
def test_bad_configuration_is_one_line(args: list[str], needle: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mdmgate", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode in (1, 2)
    assert needle in r.stderr
    assert r.stdout == ""


def test_apns_config_table(tmp_path: Path) -> None:
    from mdmgate.server.app import ConfigError, load_config  # noqa: PLC0415

    good = tmp_path / "good.toml"
    good.write_text('[apns]\ntopic = "com.apple.mgmt.External.x"\nrate = 50.0\n')
    config = load_config(str(good), {"apns_url": "http://127.0.0.1:2197"})
    assert (config.apns_topic, config.apns_rate, config.apns_url) == (
        "com.apple.mgmt.External.x",
        50.0,
        "http://127.0.0.1:2197",
    )
    for text, needle in (
        ('[apns]\ntopik = "x"\n', "unknown apns keys: topik"),
        ('[apns]\ncert = "c.pem"\n', "apns cert and key go together"),
        ('[apns]\nkey_id = "K"\n', "auth_key, key_id and team_id go together"),
        ("[apns]\nrate = 0\n", "positive number of pushes"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            load_config(str(bad), {})


# ---------------------------------------------------------------------------------------------
# Issue 14: correct with real clients (the HTTP edge)

ATTACKER = "127.0.0.1"
#: Another loopback address: on Linux the whole 127.0.0.0/8 answers without setup.
NEIGHBOUR = "127.0.0.2"


async def _hold_idle_connection(
    port: int, kind: int, held: list[trio.SocketStream], seen: collections.Counter[str]
) -> None:
    """One of the flood's connections, kept open: ``kind`` 0 sends nothing, 1 sends half a
    request head (slowloris), 2 makes a request and then idles on the keep-alive connection."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=ATTACKER)
    except OSError:
        seen["connect failed"] += 1
        return
    held.append(stream)
    try:
        if kind == 1:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elif kind == 2:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await stream.receive_some(65536)
            seen[data.split(b"\r\n\r\n")[0].decode().split("\r\n")[0] if data else "closed"] += 1
            if b" 429 " in data[:16]:
                assert b"retry-after: " in data
                assert b"connection: close" in data
                assert b"connections from your address" in data
    except trio.BrokenResourceError:
        seen["reset"] += 1


async def _flood_and_measure(port: int, requests: int) -> tuple[int, float, dict[str, int]]:
    """1,200 idle and slowloris connections from ATTACKER, held open while a well-behaved
    client on NEIGHBOUR makes ``requests`` requests (half on its keep-alive connection, half
    on a new connection each). Answered requests, the seconds taken, and what the flood saw."""
    held: list[trio.SocketStream] = []
    seen: collections.Counter[str] = collections.Counter()
    answered = 0
    start = trio.current_time()
    try:
        with trio.fail_after(90):
            limiter = trio.CapacityLimiter(64)

            async def one(kind: int) -> None:
                async with limiter:
                    await _hold_idle_connection(port, kind, held, seen)

            async with trio.open_nursery() as nursery:
                for number in range(1200):
                    nursery.start_soon(one, number % 3)
            transport = httpx.AsyncHTTPTransport(local_address=NEIGHBOUR)
            async with httpx.AsyncClient(
                transport=transport, base_url=f"http://127.0.0.1:{port}", timeout=10
            ) as client:
                for number in range(requests):
                    headers = {"connection": "close"} if number % 2 else {}
                    try:
                        response = await client.get("/healthz", headers=headers)
                    except httpx.HTTPError as e:
                        seen[f"neighbour: {type(e).__name__}"] += 1
                        continue
                    if response.status_code == 200:
                        answered += 1
                    else:
                        seen[f"neighbour: {response.status_code}"] += 1
            elapsed = trio.current_time() - start
    finally:
        for stream in held:
            await trio.aclose_forcefully(stream)
    return answered, elapsed, dict(seen)


async def _scrape(port: int) -> str:
    transport = httpx.AsyncHTTPTransport(local_address=NEIGHBOUR)
    async with httpx.AsyncClient(transport=transport, headers=AUTH) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200, response.text
        return response.text


@pytest.mark.parametrize(
    ("limits", "outcome"),
    [
        # The defaults: the flood runs into its address's connection budget.
        ("", "over_budget"),
        # No budget to speak of: the server sheds the flood's idle connections instead.
        ("max_connections_per_client = 100000\n", "shed"),
    ],
    ids=["per-client-budget", "shedding"],
)
async def test_one_client_cannot_lock_its_neighbours_out(
    tmp_path: Path, limits: str, outcome: str
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[limits]\n" + limits)
    requests = 200
    with gateway("--db", "memory:", "--config", str(config)) as (_, base):
        port = int(base.rsplit(":", 1)[1])
        answered, elapsed, seen = await _flood_and_measure(port, requests)
        print(f"\nneighbour answered {answered}/{requests} in {elapsed:.2f} s; flood saw {seen}")
        assert answered >= 0.99 * requests, seen
        metrics = await _scrape(port)
    assert re.search(
        rf'^mdmgate_http_connections_total{{node="[^"]+:\d+",outcome="{outcome}"}} [1-9]',
        metrics,
        re.M,
    )


def _send_raw(base: str, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        with contextlib.suppress(TimeoutError):  # kept open: what came is the evidence
            while chunk := sock.recv(65536):
                received += chunk
        return received


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"transfer-encoding: chunked\r\ncontent-length: 0\r\n",
    ],
)
def test_content_length_with_chunked_is_refused(framing: bytes) -> None:
    # A front proxy that frames by Content-Length would pass the "body" on as a second
    # request: the classic smuggling vector. Refused outright, and the connection closed.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    request = b"POST /healthz HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n0\r\n\r\n" + smuggled
    with gateway("--db", "memory:") as (_, base):
        received = _send_raw(base, request)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), received
        assert b"\r\nconnection: close" in head.lower()
        assert b"Content-Length" in body
        assert b"Transfer-Encoding" in body
        assert received.count(b"HTTP/1.1 ") == 1  # the smuggled request was not answered
        with httpx.Client(base_url=base) as client:  # and the server is fine
            assert client.get("/healthz").status_code == 200


async def test_http2_transfer_encoding_is_a_stream_error() -> None:
    # RFC 9113 8.2.2: Transfer-Encoding makes an HTTP/2 request malformed; that is a stream
    # error, not grounds to accept it, nor to take the client's other streams down with it.
    with gateway("--db", "memory:") as (_, base):
        host, port = base.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        client = H2Client(stream)
        client.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        await client.start()
        with trio.fail_after(10):
            extra = [("content-length", "5"), ("transfer-encoding", "chunked")]
            bad = await client.request("POST", "/healthz", b"0\r\n\r\n", extra)
            assert bad.status == 400
            assert b"transfer-encoding" in bad.body
            good = await client.request("GET", "/healthz")
            assert (good.status, good.body) == (200, b"ok\n")
            assert not client.goaways
        await stream.aclose()


def test_metrics_need_the_token_by_default() -> None:
    with gateway("--db", "memory:") as (_, base), httpx.Client(base_url=base) as client:
        r = client.get("/metrics")
        assert r.status_code == 401
        assert "mdmgate_http" not in r.text
        r = client.get("/metrics", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = client.get("/metrics", headers=AUTH)
        assert r.status_code == 200
        assert "mdmgate_http_requests_total" in r.text


def test_metrics_on_their_own_address_are_open(tmp_path: Path) -> None:
    with gateway("--db", "memory:", "--metrics-listen", "127.0.0.1:0") as (proc, base):
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("mdmgate metrics on http://127.0.0.1:"), line
        scrape_url = line.split()[-1]
        assert scrape_url.endswith("/metrics")
        r = httpx.get(scrape_url)  # the Prometheus convention: no token on its own address
        assert r.status_code == 200
        assert "mdmgate_http_requests_total" in r.text
        assert (
            httpx.get(scrape_url.removesuffix("/metrics") + "/api/v1/openapi.json").status_code
            == 404
        )
        # ...and no longer on the public port, token or not.
        assert httpx.get(base + "/metrics", headers=AUTH).status_code == 404
    config = tmp_path / "gateway.toml"
    config.write_text('metrics = "token"\nmetrics_listen = "127.0.0.1:0"\n')
    with gateway("--db", "memory:", "--config", str(config)) as (proc, _):
        assert proc.stdout is not None
        scrape_url = proc.stdout.readline().split()[-1]
        assert httpx.get(scrape_url).status_code == 401
        assert httpx.get(scrape_url, headers=AUTH).status_code == 200


def test_metrics_open_on_the_public_port_when_asked(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('metrics = "open"\n')
    with gateway("--db", "memory:", "--config", str(config)) as (_, base):
        r = httpx.get(base + "/metrics")
        assert r.status_code == 200
        assert "mdmgate_http_requests_total" in r.text
    config.write_text('metrics = "public"\n')
    r = subprocess.run(
        [sys.executable, "-m", "mdmgate", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2
    assert "metrics must be" in r.stderr
