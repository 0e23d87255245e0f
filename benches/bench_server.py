"""The gateway's HTTP throughput against bare Trio+h11 / Trio+h2 servers, same run, same client.

    python benches/bench_server.py [--duration 5] [--warmup 1] [--rounds 3]   # about 2 min
    python benches/bench_server.py --quick          # smoke run for CI, about 10 s
    python benches/bench_server.py --access-log     # servers log a line per request (to null)
    python benches/bench_server.py --quick --profile DIR   # cProfile the gateway processes

The request is an authenticated admin API read, ``GET /api/v1/devices/win-1`` with
``Authorization: Bearer <token>``, over HTTP/1.1 and over HTTP/2 (cleartext, prior knowledge).

Servers, each in its own process (``--serve``, started by this script), one at a time:

* bare: a Trio+h11 server (HTTP/1.1) or a Trio+h2 server (HTTP/2) that answers every request
  with 200 and a fixed JSON body of the same size as the gateway's answer, without looking at
  the request: it does nothing;
* gateway: ``mdmgate.server.http.Server`` with ``Limits()`` and ``Metrics()`` serving
  ``build_handler(store, AdminApi(store, token), metrics)`` over the embedded default store,
  ``SQLiteStore`` (a file in a temporary directory) holding one device, ``win-1``;
* gateway (memory): the same over ``MemoryStore``, an informative row (no target).

The load generator is this process, so it does not share a GIL with the server. It is the same
for every server of a protocol, and cheap: HTTP/1.1 writes one prepared request per keep-alive
connection and reads the answer by ``Content-Length`` (``--connections`` connections, one
request in flight on each); HTTP/2 writes prepared HEADERS frames (HPACK-encoded once, the
token never indexed as h2 clients send it) and reads frames with a hand-written parser and an
HPACK decoder (``--h2-connections`` connections with ``--streams`` streams in flight on each;
a finished stream is replaced at once). Every answer is checked: status 200 and the body
length seen when verifying. Before timing, httpx checks that each server answers 200 with the
expected JSON (the gateway: the device ``win-1``; without the right token, 401).

Each server runs ``--warmup`` seconds, then counts the requests that complete in the next
``--duration`` seconds: requests/s, and p50/p99 of their latencies (from writing the request to
reading the end of the answer, nearest rank). ``--rounds`` rounds go over all six servers in
turn (a fresh server process each time) and each server keeps its best round; the spread of its
rounds is printed beside it, as this kind of VM's speed drifts. CPU is the share of one core
used by the server process (all its threads) and by the load generator over the timed window: a
bare server near 100% means the server, not the client, set the pace. "steal" is the share of
the machine's CPU time the hypervisor took over the window. The ratio is the gateway's requests/s
divided by the bare server's, per protocol; the target is 70%. The exit status is non-zero only
when a server does not answer correctly.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import logging
import math
import os
import platform
import pstats
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h11
import hpack
import httpx
import trio

from mdmgate.server.admin import AdminApi
from mdmgate.server.app import build_handler
from mdmgate.server.http import Limits, Server, listener_port, open_listeners
from mdmgate.server.metrics import Metrics
from mdmgate.storage import Device, Store
from mdmgate.storage.memory import MemoryStore
from mdmgate.storage.sqlite import SQLiteStore

TARGET = 0.70
HOST = "127.0.0.1"
PATH = "/api/v1/devices/win-1"
DEVICE_ID = "win-1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
READ_CHUNK = 65536

#: The bare servers' answer: the bytes the gateway answers for ``win-1`` (same size on the
#: wire; the gateway's content is checked separately, so a new field there breaks nothing).
BARE_BODY = (
    b'{"id":"win-1","platform":"windows","org":"/","os_version":null,"supervised":null,'
    b'"auth_configured":false,"apps":[],"facts":{}}'
)
BARE_H1_HEADERS = [
    ("content-type", "application/json"),
    ("content-length", str(len(BARE_BODY))),
]
BARE_H2_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(BARE_BODY)),
]

SERVERS = {
    "bare-h1": "bare Trio+h11",
    "bare-h2": "bare Trio+h2",
    "gateway-sqlite": "gateway (SQLite)",
    "gateway-memory": "gateway (memory)",
}

# --- the servers (run in a child process: --serve KIND) ---------------------------------------


async def bare_h1(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(READ_CHUNK))
        elif isinstance(event, h11.EndOfMessage):
            head = conn.send(h11.Response(status_code=200, headers=BARE_H1_HEADERS))
            body = conn.send(h11.Data(data=BARE_BODY))
            end = conn.send(h11.EndOfMessage())
            await stream.send_all(head + body + end)  # type: ignore[operator]
            conn.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            return


async def bare_h2(stream: trio.SocketStream) -> None:
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    while True:
        data = await stream.receive_some(READ_CHUNK)
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.StreamEnded):
                conn.send_headers(event.stream_id, BARE_H2_HEADERS)
                conn.send_data(event.stream_id, BARE_BODY, end_stream=True)
            elif isinstance(event, h2.events.ConnectionTerminated):
                return
        out = conn.data_to_send()
        if out:
            await stream.send_all(out)


async def serve_bare(kind: str) -> None:
    handler = bare_h1 if kind == "bare-h1" else bare_h2

    async def connection(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, h11.RemoteProtocolError):
            await handler(stream)

    listeners = await trio.open_tcp_listeners(0, host=HOST)
    print(f"port {listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(connection, listeners)


async def serve_gateway(kind: str, token: str, db: str) -> None:
    store: Store = await SQLiteStore.open(db) if kind == "gateway-sqlite" else MemoryStore()
    await store.upsert_devices([Device(DEVICE_ID, "windows")])
    metrics = Metrics()
    server = Server(
        build_handler(store, AdminApi(store, token), metrics), Limits(), metrics=metrics
    )
    listeners = await open_listeners(HOST, 0)
    print(f"port {listener_port(listeners[0])}", flush=True)
    await server.run(listeners)


async def serve_until_signalled(kind: str, token: str, db: str) -> None:
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)
        if kind.startswith("bare"):
            await serve_bare(kind)
        else:
            await serve_gateway(kind, token, db)


def serve_main(kind: str, token: str, db: str, profile: str | None, access_log: bool) -> int:
    """The child process: serve until SIGINT or SIGTERM, then write the profile if asked."""
    if access_log:
        # As `mdmgate serve` configures it (an INFO line per request), written to /dev/null.
        stream = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=stream)
    profiler = cProfile.Profile() if profile else None
    try:
        if profiler is not None:
            profiler.enable()
        trio.run(serve_until_signalled, kind, token, db)
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)
    return 0


# --- the load generator ------------------------------------------------------------------------


class Failed(Exception):
    """A server did not answer as it must."""


@dataclass
class Stats:
    recording: bool = False
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    #: A connection failed (the server closed it, or sent garbage): the row is void.
    broken: str = ""

    def fail(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what


def h1_request(port: int, token: str) -> bytes:
    return (
        f"GET {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "User-Agent: mdmgate-bench\r\nAccept: application/json\r\n\r\n"
    ).encode()


async def h1_client(port: int, request: bytes, body_length: int, stats: Stats) -> None:
    """One keep-alive connection, one request at a time, for ever."""
    stream = await trio.open_tcp_stream(HOST, port)
    buf = bytearray()
    clock = time.perf_counter
    while True:
        started = clock()
        await stream.send_all(request)
        while (end := buf.find(b"\r\n\r\n")) < 0:
            data = await stream.receive_some(READ_CHUNK)
            if not data:
                raise Failed("HTTP/1.1: the server closed the connection")
            buf += data
        head = bytes(buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise Failed(f"HTTP/1.1: no Content-Length in {head!r}")
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        while len(buf) < total:
            data = await stream.receive_some(READ_CHUNK)
            if not data:
                raise Failed("HTTP/1.1: the server closed the connection")
            buf += data
        done = clock()
        del buf[:total]
        if not head.startswith(b"http/1.1 200 ") or length != body_length:
            stats.fail(f"HTTP/1.1: {head.split(b' ', 2)[1].decode()} ({length} bytes)")
        if stats.recording:
            stats.latencies.append(done - started)


# HTTP/2 frame types and flags (RFC 9113 section 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
WINDOW_UPDATE = 0x8
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
WINDOW = 1 << 30


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def h2_header_blocks(port: int, token: str) -> tuple[bytes, bytes]:
    """The first request's HPACK block (it fills the server's dynamic table) and the block of
    every later request (indexed fields, the token as a never-indexed literal)."""
    encoder = hpack.Encoder()
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", f"{HOST}:{port}".encode()),
        (b":path", PATH.encode()),
        hpack.NeverIndexedHeaderTuple(b"authorization", f"Bearer {token}".encode()),
        (b"user-agent", b"mdmgate-bench"),
        (b"accept", b"application/json"),
    ]
    first = encoder.encode(headers)
    steady = encoder.encode(headers)
    if encoder.encode(headers) != steady:
        raise AssertionError("the steady HPACK block changes the dynamic table")
    return first, steady


class H2Client:
    """One connection keeping ``streams`` requests in flight: a finished stream is replaced at
    once, and the new HEADERS frames go out in one write after each read."""

    def __init__(self, blocks: tuple[bytes, bytes], body_length: int, stats: Stats) -> None:
        self.first_block, self.block = blocks
        self.body_length = body_length
        self.stats = stats
        settings = (2).to_bytes(2, "big") + bytes(4)  # ENABLE_PUSH 0
        settings += (4).to_bytes(2, "big") + WINDOW.to_bytes(4, "big")  # INITIAL_WINDOW_SIZE
        self.out = bytearray(PREFACE + frame(SETTINGS, 0, 0, settings))
        self.out += frame(WINDOW_UPDATE, 0, 0, (WINDOW - 65535).to_bytes(4, "big"))
        self.decoder = hpack.Decoder()
        self.started: dict[int, float] = {}
        self.status: dict[int, bytes] = {}
        self.received: dict[int, int] = {}
        self.next_id = 1
        self.unacknowledged = 0

    def start(self) -> None:
        stream_id = self.next_id
        block = self.first_block if stream_id == 1 else self.block
        self.out += frame(HEADERS, END_STREAM | END_HEADERS, stream_id, block)
        self.started[stream_id] = time.perf_counter()
        self.received[stream_id] = 0
        self.next_id += 2

    def finish(self, stream_id: int) -> None:
        done = time.perf_counter()
        code = self.status.pop(stream_id, b"")
        length = self.received.pop(stream_id)
        started = self.started.pop(stream_id)
        if code != b"200" or length != self.body_length:
            self.stats.fail(f"HTTP/2: {code.decode()} ({length} bytes)")
        if self.stats.recording:
            self.stats.latencies.append(done - started)
        self.start()

    def on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not flags & END_HEADERS:
            raise Failed("HTTP/2: a header block in CONTINUATION frames")
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        if flags & PRIORITY:
            payload = payload[5:]
        for name, value in self.decoder.decode(payload, raw=True):
            if name == b":status":
                self.status[stream_id] = value
        if flags & END_STREAM:
            self.finish(stream_id)

    def on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == DATA:
            self.received[stream_id] += len(payload)
            self.unacknowledged += len(payload)
            if flags & END_STREAM:
                self.finish(stream_id)
        elif kind == HEADERS:
            self.on_headers(flags, stream_id, payload)
        elif kind == SETTINGS and not flags & ACK:
            self.out += frame(SETTINGS, ACK, 0, b"")
        elif kind == PING and not flags & ACK:
            self.out += frame(PING, ACK, 0, payload)
        elif kind in (RST_STREAM, GOAWAY):
            raise Failed(f"HTTP/2: frame type {kind} from the server: {payload.hex()}")

    async def run(self, port: int, streams: int) -> None:
        stream = await trio.open_tcp_stream(HOST, port)
        for _ in range(streams):
            self.start()
        buf = bytearray()
        while True:
            if self.unacknowledged > WINDOW // 2:
                self.out += frame(WINDOW_UPDATE, 0, 0, self.unacknowledged.to_bytes(4, "big"))
                self.unacknowledged = 0
            if self.out:
                await stream.send_all(self.out)
                self.out.clear()
            data = await stream.receive_some(READ_CHUNK)
            if not data:
                raise Failed("HTTP/2: the server closed the connection")
            buf += data
            pos = 0
            while len(buf) - pos >= 9:
                end = pos + 9 + int.from_bytes(buf[pos : pos + 3], "big")
                if end > len(buf):
                    break
                stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                self.on_frame(buf[pos + 3], buf[pos + 4], stream_id, bytes(buf[pos + 9 : end]))
                pos = end
            del buf[:pos]


# --- one measured row --------------------------------------------------------------------------


def process_cpu(pid: int) -> float | None:
    """CPU seconds used so far by process ``pid``, all threads (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_times() -> tuple[int, int] | None:
    """(steal, total) CPU ticks of the whole machine so far (Linux): the hypervisor's "steal"
    is time this VM wanted a CPU and did not get one."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    steal = ticks[7] if len(ticks) > 7 else 0
    return steal, sum(ticks[:8])


@dataclass(frozen=True)
class Row:
    protocol: str
    server: str
    rate: float
    p50: float
    p99: float
    server_cpu: float | None
    client_cpu: float
    steal: float | None


@dataclass(frozen=True)
class Load:
    protocol: str  # "HTTP/1.1" or "HTTP/2"
    connections: int
    streams: int  # in flight per connection (1 for HTTP/1.1)
    warmup: float
    duration: float


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def run_load(load: Load, port: int, token: str, body_length: int, pid: int) -> Row:
    stats = Stats()

    async def client(scope: trio.CancelScope) -> None:
        try:
            if load.protocol == "HTTP/1.1":
                await h1_client(port, h1_request(port, token), body_length, stats)
            else:
                h2_client = H2Client(h2_header_blocks(port, token), body_length, stats)
                await h2_client.run(port, load.streams)
        except Exception as exc:  # any failure voids the row: say which, stop the others
            stats.broken = stats.broken or f"{type(exc).__name__}: {exc}"
            scope.cancel()

    async with trio.open_nursery() as nursery:
        for _ in range(load.connections):
            nursery.start_soon(client, nursery.cancel_scope)
        await trio.sleep(load.warmup)
        machine0 = machine_times()
        cpu0, client0, t0 = process_cpu(pid), time.process_time(), time.perf_counter()
        stats.recording = True
        await trio.sleep(load.duration)
        stats.recording = False
        cpu1, client1, t1 = process_cpu(pid), time.process_time(), time.perf_counter()
        machine1 = machine_times()
        nursery.cancel_scope.cancel()
    if stats.broken:
        raise Failed(f"{load.protocol}: a connection failed: {stats.broken}")
    if stats.errors:
        raise Failed(f"{stats.errors} wrong answers, the first: {stats.first_error}")
    if not stats.latencies:
        raise Failed("no request completed in the timed window")
    ordered = sorted(stats.latencies)
    wall = t1 - t0
    return Row(
        load.protocol,
        "",
        len(ordered) / wall,
        percentile(ordered, 0.50),
        percentile(ordered, 0.99),
        None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall,
        (client1 - client0) / wall,
        None
        if machine0 is None or machine1 is None or machine1[1] == machine0[1]
        else (machine1[0] - machine0[0]) / (machine1[1] - machine0[1]),
    )


# --- verification with an independent client -----------------------------------------------


def verify(kind: str, protocol: str, port: int, token: str) -> int:
    """Checks the server's answer with httpx; returns the body length to expect."""
    url = f"http://{HOST}:{port}{PATH}"
    http2 = protocol == "HTTP/2"
    with httpx.Client(http1=not http2, http2=http2, timeout=10) as client:
        response = client.get(url, headers={"Authorization": f"Bearer {token}"})
        where = f"{SERVERS[kind]} over {protocol}"
        if response.http_version != protocol:
            raise Failed(f"{where}: answered over {response.http_version}")
        if response.status_code != 200:
            raise Failed(f"{where}: status {response.status_code}: {response.text!r}")
        if kind.startswith("bare"):
            if response.content != BARE_BODY:
                raise Failed(f"{where}: body {response.content!r}")
            return len(response.content)
        device = response.json()
        if device.get("id") != DEVICE_ID or device.get("platform") != "windows":
            raise Failed(f"{where}: not the device: {device!r}")
        if response.headers.get("content-type") != "application/json":
            raise Failed(f"{where}: content-type {response.headers.get('content-type')!r}")
        if len(response.content) != len(BARE_BODY):
            print(
                f"note: the gateway's body is {len(response.content)} bytes, the bare servers' "
                f"{len(BARE_BODY)}"
            )
        wrong = client.get(url, headers={"Authorization": "Bearer not-the-token"})
        if wrong.status_code != 401:
            raise Failed(f"{where}: a wrong token got {wrong.status_code}, not 401")
        return len(response.content)


# --- running the servers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    token: str
    tmp: str
    profile: str | None
    access_log: bool


def start_server(
    kind: str, options: Options, profile: str | None
) -> tuple[subprocess.Popen[str], int]:
    db = str(Path(options.tmp) / f"{kind}-{secrets.token_hex(4)}.db")
    command = [sys.executable, __file__, "--serve", kind, "--token", options.token, "--db", db]
    if profile:
        command += ["--profile", profile]
    if options.access_log:
        command.append("--access-log")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        proc.wait()
        raise Failed(f"{SERVERS[kind]} did not start (said {line!r})")
    return proc, int(line.split()[1])


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(kind: str, load: Load, options: Options) -> Row:
    profile = None
    if options.profile and kind.startswith("gateway"):
        tag = "h1" if load.protocol == "HTTP/1.1" else "h2"
        profile = str(Path(options.profile) / f"{kind}-{tag}.prof")
    proc, port = start_server(kind, options, profile)
    try:
        body_length = verify(kind, load.protocol, port, options.token)
        row = trio.run(run_load, load, port, options.token, body_length, proc.pid)
    finally:
        stop_server(proc)
    if profile:
        print(f"--- cProfile of {SERVERS[kind]} over {load.protocol} ({profile}), by own time:")
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    return replace(row, server=kind)


# --- reporting ---------------------------------------------------------------------------------


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def fmt_cpu(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def print_table(rows: list[Row], rates: dict[tuple[str, str], list[float]]) -> None:
    """One line per server: its best round, the spread of its rounds' requests/s."""
    print(
        f"{'protocol':<9}{'server':<18}{'requests/s':>11}{'(rounds)':>15}{'p50':>10}{'p99':>10}"
        f"{'server CPU':>11}{'client CPU':>11}{'steal':>7}{'gateway/bare':>14}"
    )
    bare = {row.protocol: row.rate for row in rows if row.server.startswith("bare")}
    for row in rows:
        ratio = ""
        if row.server.startswith("gateway"):
            ratio = f"{row.rate / bare[row.protocol]:.0%}"
            if row.server != "gateway-sqlite":
                ratio += " (info)"
        seen = rates[row.protocol, row.server]
        spread = f"{min(seen):,.0f}-{max(seen):,.0f}" if len(seen) > 1 else ""
        print(
            f"{row.protocol:<9}{SERVERS[row.server]:<18}{row.rate:>11,.0f}{spread:>15}"
            f"{fmt_ms(row.p50):>10}{fmt_ms(row.p99):>10}{fmt_cpu(row.server_cpu):>11}"
            f"{fmt_cpu(row.client_cpu):>11}{fmt_cpu(row.steal):>7}{ratio:>14}"
        )


def print_verdict(rows: list[Row]) -> None:
    parts = []
    for protocol in ("HTTP/1.1", "HTTP/2"):
        bare = next(r for r in rows if r.protocol == protocol and r.server.startswith("bare"))
        gateway = next(r for r in rows if r.protocol == protocol and r.server == "gateway-sqlite")
        ratio = gateway.rate / bare.rate
        if ratio >= TARGET:
            parts.append(f"{protocol} met ({ratio:.0%})")
        else:
            short = (TARGET - ratio) * 100
            parts.append(f"{protocol} MISSED ({ratio:.0%}, {short:.0f} points short)")
    print(f"target: the gateway keeps {TARGET:.0%} of the bare throughput: " + "; ".join(parts))


def add_run_arguments(
    parser: argparse.ArgumentParser, *, profile_help: str, quick_also: str = ""
) -> None:
    """--duration, --warmup, --rounds, --quick and --profile (see :func:`run_lengths`)."""
    parser.add_argument("--duration", type=float, help="seconds timed per row (5)")
    parser.add_argument("--warmup", type=float, help="seconds of load before timing (1)")
    parser.add_argument(
        "--rounds", type=int, help="rounds over the servers; each keeps its best (3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: --duration 0.5 --warmup 0.2 --rounds 1{quick_also} unless given",
    )
    parser.add_argument("--profile", metavar="DIR", help=profile_help)


def run_lengths(args: argparse.Namespace) -> tuple[float, float, int]:
    """--duration, --warmup and --rounds, defaulting as --quick and --profile say (shared by
    the server benchmarks)."""
    duration = args.duration if args.duration is not None else (0.5 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 1.0)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick or args.profile else 3)
    return float(duration), float(warmup), int(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, profile_help="run the gateways under cProfile (one round)")
    parser.add_argument(
        "--connections", type=int, default=16, help="HTTP/1.1 keep-alive connections (16)"
    )
    parser.add_argument("--h2-connections", type=int, default=4, help="HTTP/2 connections (4)")
    parser.add_argument(
        "--streams", type=int, default=16, help="HTTP/2 streams in flight per connection (16)"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="servers log an INFO line per request (to null)"
    )
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_main(args.serve, args.token, args.db, args.profile, args.access_log)
    duration, warmup, rounds = run_lengths(args)
    counts = (args.connections, args.h2_connections, args.streams, rounds)
    if duration <= 0 or warmup < 0 or min(counts) < 1:
        parser.error("--duration must be positive, --warmup not negative, the counts at least 1")
    if args.profile and rounds != 1:
        parser.error("--profile runs one round")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)

    h1 = Load("HTTP/1.1", args.connections, 1, warmup, duration)
    h2_load = Load("HTTP/2", args.h2_connections, args.streams, warmup, duration)
    print(
        f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{rounds} round(s), {duration:g} s timed per server after {warmup:g} s of warm-up; "
        f"HTTP/1.1: {h1.connections} keep-alive connections; HTTP/2: {h2_load.connections} "
        f"connections x {h2_load.streams} streams" + ("; access log on" if args.access_log else "")
    )
    if args.profile:
        print("note: the gateway rows run under cProfile, so their figures are not comparable")
    plan = [
        (h1, "bare-h1"),
        (h1, "gateway-sqlite"),
        (h1, "gateway-memory"),
        (h2_load, "bare-h2"),
        (h2_load, "gateway-sqlite"),
        (h2_load, "gateway-memory"),
    ]
    best: dict[tuple[str, str], Row] = {}
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mdmgate-bench-") as tmp:
        options = Options(secrets.token_urlsafe(32), tmp, args.profile, args.access_log)
        try:
            for _ in range(rounds):
                for load, kind in plan:
                    row = measure(kind, load, options)
                    key = (load.protocol, kind)
                    rates.setdefault(key, []).append(row.rate)
                    if key not in best or row.rate > best[key].rate:
                        best[key] = row
        except (Failed, OSError, httpx.HTTPError) as exc:
            sys.exit(f"verification failed: {exc}")
    rows = [best[load.protocol, kind] for load, kind in plan]
    print_table(rows, rates)
    print_verdict(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
