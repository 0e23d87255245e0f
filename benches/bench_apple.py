"""Apple command-channel exchanges per second through the gateway, on SQLite and on PostgreSQL,
against a bare Trio+h11 server, and MDM pushes per second to a local APNs server, same run, same
client.

    python benches/bench_apple.py [--duration 5] [--warmup 1] [--rounds 3]   # about 2.5 min
    python benches/bench_apple.py --backend sqlite     # SQLite only (postgresql: PostgreSQL only)
    python benches/bench_apple.py --quick          # smoke run for CI, no verdicts, about 15 s
    python benches/bench_apple.py --cleartext      # no TLS: dev mode, devices not bound
    python benches/bench_apple.py --profile DIR --pushes 1000   # py-spy the gateway (1 round)

Exchanges. ``--connections`` devices (16), each an iPhone registered in the store, enrolled
(``apple_enrollment``, ``apns`` facts) and bound to its own identity certificate (``auth =
{"method": "certificate", "sha256": ...}``), each on one keep-alive HTTP/1.1 connection with
one request in flight. Every request is ``PUT /mdm/apple/connect`` with an XML plist body: the
first ``{UDID, Status: Idle}``, then ``{UDID, Status: Acknowledged, CommandUUID: <the command
just received>, QueryResponses: {...}}`` (816 bytes). The answer is the device's next command:
the gateway decodes the report, checks the certificate against the bound identity, stores the
result (a durable write), takes the next command from the queue (another) and answers its plist
(a 656-byte ``DeviceInformation``). The client takes the CommandUUID from the answer with a
regex and builds the next request before starting the clock. Each device's queue is filled in
the server process before it reports its port, ``--commands`` per device (by default enough for
10,000 exchanges/s over the warm-up and the timed window); a device whose queue runs dry voids
the row (raise ``--commands``). Commands are queued to the whole fleet at once (one command id,
one delivery per device), as an admin does through the API.

Identity. ``AppleService`` accepts a request without a certificate in development mode only for
a device with no bound certificate ("a certificate bound to a device is checked even in
development mode"). The devices here are bound, so by default both servers run under the same
TLS (``mdmgate.server.http.server_ssl_context`` with the test CA as client CA, through
``open_listeners``): each device presents its certificate (trustme, ECDSA) in the handshake, once
per connection, and the gateway sees it as ``Request.client_cert`` on every request. The bare
server gets the same handshakes and encrypts the same bytes, so the ratio compares the work
behind TLS. ``--cleartext`` runs both without TLS and the gateway with ``dev=True`` over
unbound devices (no certificate check at all): informative; the ``transport:`` line of the
output says which was run.

Servers, each in its own process (``--serve``, started by this script), one at a time:

* bare: ``bench_server``'s Trio+h11 loop answering every request with 200 and a fixed body, a
  command plist of the gateway captured when verifying it (so the same size);
* gateway: ``mdmgate.server.http.Server(build_handler(store, AdminApi(store, token), metrics,
  None, AppleService(store)), Limits(), metrics=metrics)`` over each ``--backend`` (both by
  default), a row each: ``SQLiteStore`` (the embedded default, durability full, a fresh file in
  a temporary directory) or ``PostgresStore`` (a pool of 8 connections, as ``mdmgate serve``
  opens it) on a fresh database of the PostgreSQL server the run starts and stops
  (``bench_omadm.Postgres``: ``tests/postgres_server.py``, unix socket, durability off, on this
  machine). The queues are filled the same way on both.

The load generator is this process (``bench_omadm``'s HTTP/1.1 client; no GIL shared with the
server). Before timing, each server is verified once (each gateway on its backend; as in
``bench_omadm``, ``--quick`` verifies each in the process it then times, its queues deeper by
the four commands the verification takes): the gateway hands every device four
commands in turn (acknowledging three), each answer a valid command plist (read with
``plistlib``) naming a queued command not handed out before; the admin API then shows the three
deliveries ``acknowledged`` with the device's report stored; a connection without a
certificate, and one with another device's, get 403. The bare server must answer the captured
plist. The timing then follows ``bench_omadm``: ``--warmup`` seconds, then the exchanges that
complete in ``--duration`` seconds: requests/s and p50/p99 latency; ``--rounds`` rounds, each
server keeps its best, the spread beside it; CPU shares of the server process (all its threads,
so SQLite's worker too) and of the load generator; "per CPU-s" is requests/s divided by the
server's CPU share. On PostgreSQL its processes' CPU is shown apart ("PG CPU", from ``/proc``),
and "with PG" is requests/s per CPU-second of the gateway and PostgreSQL together. Targets (the
issue: "at least 50% of bare throughput per core" on SQLite, "at least 40%" on PostgreSQL):
gateway/bare >= 50% on SQLite and >= 40% on PostgreSQL, printed for requests/s and per
CPU-second of the server process; on PostgreSQL the ratio with its CPU counted too, informative.
``--quick`` prints the ratios without verdicts.

Pushes. An APNs-protocol HTTP/2 server (``tests/apns_server.py``'s ``ApnsServer``, cleartext by
prior knowledge, 100 concurrent streams, every push answered 200) runs in a child process (so
it has its own core); this process pushes ``--pushes`` MDM pushes to it with
``ApnsClient.push_many`` (one connection, no pacing) over 1,000 device tokens, after 200 pushes
that open the connection. The baseline is a minimal client written here on ``h2``: the same
POSTs (same headers, a fresh ``apns-id`` each, same body) on one connection with up to 100
streams in flight. Every push must be answered 200. Best of ``--rounds``, a fresh server each
time; before timing, both clients push to an in-process server that checks path, headers and
payload. There is no target for pushes: the figures say how fast the gateway can wake a fleet.

``--profile DIR`` runs ``py-spy record`` (250 Hz, all threads, raw stacks in
``DIR/apple-gateway-BACKEND.txt``) on each gateway over its timed window and prints the
functions with the most samples, own and inclusive; py-spy stops the process for each sample, so
those figures are lower. The exit status is non-zero only when a server answers wrongly (or
PostgreSQL cannot start: ``--backend sqlite`` runs without it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import plistlib
import re
import secrets
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h11
import httpx
import trio
import trustme

import bench_omadm
import bench_server
from bench_omadm import BARE, Best, Connection, Measured, Postgres, Setup, Snapshot
from bench_server import (
    HOST,
    READ_CHUNK,
    Failed,
    Stats,
    fmt_cpu,
    stop_server,
)
from mdmgate.apple import commands
from mdmgate.apple.push import ApnsClient, PushResult
from mdmgate.apple.service import AppleService
from mdmgate.server.admin import AdminApi
from mdmgate.server.app import APPLE_CONNECT_PATH, build_handler
from mdmgate.server.http import (
    Limits,
    Server,
    listener_port,
    open_listeners,
    server_ssl_context,
)
from mdmgate.server.metrics import Metrics
from mdmgate.storage import Device, Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.apns_server import ApnsServer, running

TOPIC = "com.apple.mgmt.External.bench"
PLIST_TYPE = "application/xml"
#: What the queued DeviceInformation commands ask, and what the devices answer.
QUERIES = {
    "DeviceName": "Bench iPhone",
    "OSVersion": "17.5",
    "BuildVersion": "21F79",
    "ModelName": "iPhone",
    "Model": "MQ9U3",
    "ProductName": "iPhone15,2",
    "SerialNumber": "F2LXYZ0000",
    "IsSupervised": True,
}
#: The answer's CommandUUID (the bodies are the gateway's own plists, as plist.dumps writes).
COMMAND_UUID = re.compile(rb"<key>CommandUUID</key>\s*<string>([^<]+)</string>")
#: Exchanges per second the default --commands provides for (with room to spare).
PROVISIONED_RATE = 10000
VERIFY_EXCHANGES = 3
PUSH_WARMUP = 200
PUSH_TOKENS = 1000
PUSH_STREAMS = 100
SERVE_KINDS = ("bare", "gateway", "apns")


# --- the fleet (the same in the server and the client) ----------------------------------------


def udids(count: int) -> list[str]:
    """iPhone-like UDIDs (``00008110-`` and 16 hex digits)."""
    return [f"00008110-{i + 1:016X}" for i in range(count)]


def push_token(index: int) -> str:
    """A 32-byte device token, hex."""
    return hashlib.sha256(f"mdmgate-bench-token-{index}".encode()).hexdigest()


def push_magic(index: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mdmgate-bench-magic-{index}")).upper()


@dataclass(frozen=True)
class Pki:
    """The certificates in the temporary directory (``--cleartext``: none)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def identities(self) -> Path:
        """UDID -> SHA-256 of its certificate's DER (what the store binds)."""
        return self.directory / "identities.json"

    def identity(self, index: int) -> Path:
        """Device ``index``'s identity: its private key and certificate, PEM."""
        return self.directory / f"device-{index}.pem"

    @classmethod
    def create(cls, directory: Path, devices: Sequence[str]) -> Pki:
        pki = cls(directory)
        ca = trustme.CA()
        server = ca.issue_cert(HOST)
        server.cert_chain_pems[0].write_to_path(str(pki.server_cert))
        server.private_key_pem.write_to_path(str(pki.server_key))
        ca.cert_pem.write_to_path(str(pki.ca))
        bound = {}
        for index, udid in enumerate(devices):
            cert = ca.issue_cert(f"device-{index}.devices.example", common_name=udid)
            cert.private_key_and_cert_chain_pem.write_to_path(str(pki.identity(index)))
            der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
            bound[udid] = hashlib.sha256(der).hexdigest()
        pki.identities.write_text(json.dumps(bound))
        return pki

    def server_context(self) -> ssl.SSLContext:
        return server_ssl_context(self.server_cert, self.server_key, self.ca)

    def client_context(self, index: int | None) -> ssl.SSLContext:
        """A device's TLS context: its identity certificate (none for ``None``)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.set_alpn_protocols(["http/1.1"])
        if index is not None:
            context.load_cert_chain(str(self.identity(index)))
        return context


# --- the servers (run in a child process: --serve KIND) ---------------------------------------


async def fill_queues(store: Store, devices: list[str], per_device: int) -> None:
    """``per_device`` DeviceInformation commands, each queued to every device; the calls run
    concurrently, so the store commits them in groups."""
    bodies = [
        commands.device_information(
            list(QUERIES), command_uuid=str(uuid.uuid4()).upper(), platform="ios"
        )
        for _ in range(per_device)
    ]
    limit = trio.CapacityLimiter(256)

    async def enqueue(command: commands.Command) -> None:
        async with limit:
            await store.enqueue(command.command_uuid, "apple", command.to_plist(), devices)

    async with trio.open_nursery() as nursery:
        for command in bodies:
            nursery.start_soon(enqueue, command)


def enrolled(index: int, udid: str, identity: str | None) -> Device:
    """A device as the gateway leaves it after Authenticate and TokenUpdate."""
    enrollment = {
        "enrolled": True,
        "awaiting_configuration": False,
        "topic": TOPIC,
        "os_version": QUERIES["OSVersion"],
        "build_version": QUERIES["BuildVersion"],
        "product": QUERIES["ProductName"],
        "serial": f"F2LXYZ{index:04d}",
    }
    apns = {"token": push_token(index), "push_magic": push_magic(index), "topic": TOPIC}
    return Device(
        udid,
        "ios",
        "/",
        str(QUERIES["OSVersion"]),
        True,
        {"method": "certificate", "sha256": identity} if identity else {},
        {"apple_enrollment": enrollment, "apns": apns},
    )


async def serve_gateway(args: argparse.Namespace, pki: Pki | None) -> None:
    # The verification's refused certificates are logged as warnings: not news here.
    logging.getLogger("mdmgate.apple").setLevel(logging.ERROR)
    store = await bench_omadm.open_store(args.db)
    devices = udids(args.devices)
    bound = json.loads(pki.identities.read_text()) if pki else {}
    await store.upsert_devices([enrolled(i, u, bound.get(u)) for i, u in enumerate(devices)])
    await fill_queues(store, devices, args.commands)
    await bench_omadm.analyze(args.db)
    metrics = Metrics()
    apple = AppleService(store, dev=pki is None)
    handler = build_handler(store, AdminApi(store, args.token), metrics, None, apple)
    server = Server(handler, Limits(), metrics=metrics)
    listeners = await open_listeners(HOST, 0, pki.server_context() if pki else None)
    print(f"port {listener_port(listeners[0])}", flush=True)
    await server.run(listeners)


async def serve_bare(args: argparse.Namespace, pki: Pki | None) -> None:
    # bench_server's loop answers its module's BARE_BODY: make it a gateway command plist.
    bench_server.BARE_BODY = Path(args.body).read_bytes()
    bench_server.BARE_H1_HEADERS = [
        ("content-type", PLIST_TYPE),
        ("content-length", str(len(bench_server.BARE_BODY))),
    ]
    if pki is None:
        await bench_server.serve_bare("bare-h1")
        return

    async def connection(stream: trio.SSLStream[trio.SocketStream]) -> None:
        with contextlib.suppress(trio.BrokenResourceError, h11.RemoteProtocolError):
            await bench_server.bare_h1(stream)  # type: ignore[arg-type]

    # The gateway's TLS listeners (same context, same handshake), serving the bare loop.
    listeners = await open_listeners(HOST, 0, pki.server_context())
    print(f"port {listener_port(listeners[0])}", flush=True)
    await trio.serve_listeners(connection, listeners)


async def serve_apns() -> None:
    async with running(ApnsServer()) as url:
        print(f"port {url.rpartition(':')[2]}", flush=True)
        await trio.sleep_forever()


async def serve(args: argparse.Namespace) -> None:
    pki = Pki(Path(args.pki)) if args.pki else None
    if args.serve == "gateway":
        await serve_gateway(args, pki)
    elif args.serve == "bare":
        await serve_bare(args, pki)
    else:
        await serve_apns()


def serve_main(args: argparse.Namespace) -> int:
    """The child process: serves until SIGINT (``stop_server``)."""
    try:
        trio.run(serve, args)
    except* KeyboardInterrupt:
        pass
    return 0


@dataclass(frozen=True)
class Options:
    token: str
    devices: int
    commands: int
    tmp: Path
    pki: Pki | None
    warmup: float
    duration: float
    profile: str | None
    postgres: Postgres | None = None
    backends: tuple[str, ...] = ()

    @property
    def body(self) -> Path:
        """The bare server's body: a command plist of the gateway (written when verifying)."""
        return self.tmp / "gateway-command.plist"


def start_server(
    setup: Setup, options: Options, commands_per_device: int | None = None
) -> tuple[subprocess.Popen[str], int]:
    db = bench_omadm.database(setup, options.tmp, options.postgres)
    per_device = options.commands if commands_per_device is None else commands_per_device
    command = [sys.executable, __file__, "--serve", setup.kind, "--db", db]
    command += [f"--token={options.token}", "--devices", str(options.devices)]
    command += ["--commands", str(per_device), f"--body={options.body}"]
    if options.pki is not None:
        command += ["--pki", str(options.pki.directory)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    said = proc.stdout.readline()
    if not said.startswith("port "):
        stop_server(proc)
        raise Failed(f"the {setup.label} server did not start (said {said!r})")
    return proc, int(said.split()[1])


# --- the device side ---------------------------------------------------------------------------


def report(udid: str, status: str, command_uuid: str | None = None) -> bytes:
    """A command report, as an iPhone writes it (XML plist)."""
    body: dict[str, Any] = {"UDID": udid, "Status": status}
    if command_uuid is not None:
        body["CommandUUID"] = command_uuid
        body["QueryResponses"] = QUERIES
    return plistlib.dumps(body)


class Phone:
    """One device's requests: Idle first, then the acknowledgement of the last command,
    built from a template split around the CommandUUID."""

    #: 36 characters, like the CommandUUIDs it stands for.
    MARK = "MARK0000-0000-0000-0000-000000000000"

    def __init__(self, index: int, udid: str, port: int) -> None:
        self.index = index
        self.udid = udid
        self.head = (
            f"PUT {APPLE_CONNECT_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Content-Type: application/x-apple-aspen-mdm\r\nUser-Agent: MDM/1.0\r\n"
            "Content-Length: %d\r\n\r\n"
        ).encode()
        self.idle = self.request(report(udid, "Idle"))
        self.before, _, self.after = report(udid, "Acknowledged", self.MARK).partition(
            self.MARK.encode()
        )

    def request(self, body: bytes) -> bytes:
        return self.head % len(body) + body

    def acknowledge(self, command_uuid: bytes) -> bytes:
        return self.request(self.before + command_uuid + self.after)

    async def connect(self, port: int, pki: Pki | None, identity: int | None = -1) -> Connection:
        """A connection; under TLS with this device's certificate (``identity`` -1), another
        device's (its index) or none (``None``)."""
        tcp = await trio.open_tcp_stream(HOST, port)
        if pki is None:
            return Connection(tcp)
        context = pki.client_context(self.index if identity == -1 else identity)
        tls = trio.SSLStream(tcp, context, server_hostname=HOST)
        await tls.do_handshake()
        return Connection(tls)  # type: ignore[arg-type]


def phones(options: Options, port: int) -> list[Phone]:
    return [Phone(i, u, port) for i, u in enumerate(udids(options.devices))]


async def next_command(conn: Connection, request: bytes, where: str) -> tuple[bytes, bytes]:
    """Sends a report; returns the answer (a command plist) and its CommandUUID."""
    status, body = await conn.exchange(request)
    found = COMMAND_UUID.search(body) if status == 200 else None
    if found is None:
        raise Failed(
            f"{where}: HTTP {status} without a command (a queue ran dry? raise --commands): "
            f"{body[:200]!r}"
        )
    return body, found[1]


# --- verification ------------------------------------------------------------------------------


def check_command(where: str, body: bytes, command_uuid: bytes, seen: set[str]) -> str:
    """A whole command plist, read by plistlib: a new DeviceInformation with the queries."""
    try:
        value = plistlib.loads(body)
    except Exception as exc:
        raise Failed(f"{where}: the answer is not a plist: {exc}: {body[:200]!r}") from None
    command = value.get("Command") if isinstance(value, dict) else None
    ident = value.get("CommandUUID") if isinstance(value, dict) else None
    if not isinstance(command, dict) or command.get("RequestType") != "DeviceInformation":
        raise Failed(f"{where}: not a DeviceInformation command: {value!r}")
    if command.get("Queries") != list(QUERIES) or ident != command_uuid.decode():
        raise Failed(f"{where}: queries or CommandUUID wrong: {value!r}")
    if ident in seen:
        raise Failed(f"{where}: command {ident} handed out twice")
    seen.add(ident)
    return str(ident)


async def verify_exchanges(
    setup: Setup, port: int, options: Options
) -> tuple[bytes, list[tuple[str, str]]]:
    """Three commands per device through whole exchanges (the bare server: one answer).
    Returns a command plist and the (device, command) pairs acknowledged."""
    acknowledged: list[tuple[str, str]] = []
    first = b""
    for phone in phones(options, port):
        where = f"{setup.label}, device {phone.udid}"
        conn = await phone.connect(port, options.pki)
        async with conn.stream:
            body, command_uuid = await next_command(conn, phone.idle, where)
            if setup == BARE:
                if body != options.body.read_bytes():
                    raise Failed(f"{where}: not the captured command: {body[:200]!r}")
                continue
            first = first or body
            seen: set[str] = set()
            for _ in range(VERIFY_EXCHANGES):
                ident = check_command(where, body, command_uuid, seen)
                request = phone.acknowledge(command_uuid)
                body, command_uuid = await next_command(conn, request, where)
                acknowledged.append((phone.udid, ident))
            check_command(where, body, command_uuid, seen)
    if setup.kind == "gateway" and options.pki is not None:
        await verify_refusals(setup, port, options)
    return first, acknowledged


async def verify_refusals(setup: Setup, port: int, options: Options) -> None:
    """Device 0's UDID without a certificate, and with device 1's: both 403."""
    phone, other = phones(options, port)[0], 1 if options.devices > 1 else None
    for identity, what in ((None, "no certificate"), (other, "another device's certificate")):
        conn = await phone.connect(port, options.pki, identity)
        async with conn.stream:
            status, body = await conn.exchange(phone.idle)
        if status != 403:
            raise Failed(
                f"{setup.label}: device 0 with {what} got {status}, not 403: {body[:200]!r}"
            )


def verify_store(
    setup: Setup, port: int, options: Options, acknowledged: list[tuple[str, str]]
) -> None:
    """The admin API shows every acknowledged command's delivery and the stored report."""
    scheme = "https" if options.pki else "http"
    verify: str | bool = str(options.pki.ca) if options.pki else False
    headers = {"Authorization": f"Bearer {options.token}"}
    with httpx.Client(base_url=f"{scheme}://{HOST}:{port}", verify=verify, timeout=10) as client:
        for udid, command_id in acknowledged:
            response = client.get(f"/api/v1/commands/{command_id}", headers=headers)
            if response.status_code != 200:
                raise Failed(f"{setup.label}: command {command_id}: {response.status_code}")
            mine = [d for d in response.json()["deliveries"] if d["device_id"] == udid]
            if len(mine) != 1 or (mine[0]["state"], mine[0]["status"]) != (
                "acknowledged",
                "Acknowledged",
            ):
                raise Failed(f"{setup.label}: {udid}'s delivery of {command_id}: {mine!r}")
            stored = plistlib.loads(mine[0]["result"].encode())
            if stored.get("QueryResponses") != QUERIES or stored.get("CommandUUID") != command_id:
                raise Failed(f"{setup.label}: the stored report of {command_id}: {stored!r}")


def verify_all(setups: list[Setup], options: Options, quick: bool) -> Best:
    """Every server (the bare one last: it answers a command the gateway handed out) and both
    pushers. ``quick`` checks each server in the process it then times, as bench_omadm's
    ``run_servers`` does, and returns those rows."""
    exchanges = Best()
    for setup in bench_omadm.verify_order(setups):
        if quick:
            row, command = measure(setup, options, checked=True)
            exchanges.add(setup, row)
        else:
            command = verify(setup, options)
        if setup.kind == "gateway" and not options.body.exists():
            options.body.write_bytes(command)
    trio.run(verify_pushes)
    return exchanges


def check(setup: Setup, port: int, options: Options) -> bytes:
    """The exchanges, and what the admin API shows of them; returns a command plist."""
    body, acknowledged = trio.run(verify_exchanges, setup, port, options)
    if setup.kind == "gateway":
        verify_store(setup, port, options, acknowledged)
    return body


def verify(setup: Setup, options: Options) -> bytes:
    """Starts ``setup`` (a short queue), checks it, stops it; returns a command plist."""
    proc, port = start_server(setup, options, VERIFY_EXCHANGES + 1)
    try:
        return check(setup, port, options)
    finally:
        stop_server(proc)


# --- the timed exchanges ----------------------------------------------------------------------


async def drive(
    phone: Phone, port: int, options: Options, stats: Stats, scope: trio.CancelScope
) -> None:
    """One device, one exchange after another, until cancelled."""
    clock = time.perf_counter
    try:
        conn = await phone.connect(port, options.pki)
        request = phone.idle
        while True:
            started = clock()
            _, command_uuid = await next_command(conn, request, phone.udid)
            if stats.recording:
                stats.latencies.append(clock() - started)
            request = phone.acknowledge(command_uuid)
    except Exception as exc:  # a failure voids the row: keep the first, stop the others
        stats.broken = stats.broken or f"{type(exc).__name__}: {exc}"
        scope.cancel()


async def profile_window(pid: int, seconds: float, out: str, done: trio.Event) -> None:
    """py-spy over the gateway's timed window, all threads, raw (collapsed) stacks."""
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(math.ceil(seconds))]
    command += ["--rate", "250", "--threads", "--format", "raw", "--output", out]
    try:
        await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    finally:
        done.set()


async def run_exchanges(setup: Setup, port: int, options: Options, pid: int) -> Measured:
    stats = Stats()
    profiled = trio.Event()
    postgres = bench_omadm.postgres_of(setup, options.postgres)
    async with trio.open_nursery() as nursery:
        for phone in phones(options, port):
            nursery.start_soon(drive, phone, port, options, stats, nursery.cancel_scope)
        await trio.sleep(options.warmup)
        if options.profile and setup.kind == "gateway":
            out = str(profile_path(options.profile, setup))
            nursery.start_soon(profile_window, pid, options.duration, out, profiled)
        else:
            profiled.set()
        start = Snapshot.now(pid, postgres)
        stats.recording = True
        await trio.sleep(options.duration)
        stats.recording = False
        end = Snapshot.now(pid, postgres)
        await profiled.wait()  # py-spy samples under the same load until it is done
        nursery.cancel_scope.cancel()
    if stats.broken:
        raise Failed(f"{setup.label}: {stats.broken}")
    if not stats.latencies:
        raise Failed(f"{setup.label}: no exchange completed in the timed window")
    return start.row_until(end, setup.label, stats.latencies)


def profile_path(directory: str, setup: Setup) -> Path:
    return Path(directory) / f"apple-{setup.kind}-{setup.backend}.txt"


def measure(setup: Setup, options: Options, *, checked: bool = False) -> tuple[Measured, bytes]:
    """A timed row of a fresh server process; ``checked``: the process is verified first (its
    queues deeper by what that takes) and a command plist returned."""
    extra = VERIFY_EXCHANGES + 1 if checked else 0
    proc, port = start_server(setup, options, options.commands + extra)
    try:
        body = check(setup, port, options) if checked else b""
        return trio.run(run_exchanges, setup, port, options, proc.pid), body
    finally:
        stop_server(proc)


# --- pushes -----------------------------------------------------------------------------------


def push_items(count: int) -> list[tuple[str, str]]:
    """``count`` pushes over a fleet of PUSH_TOKENS devices."""
    fleet = [(push_token(i), push_magic(i)) for i in range(PUSH_TOKENS)]
    return [fleet[i % PUSH_TOKENS] for i in range(count)]


class RawPusher:
    """The baseline: the same POSTs written with ``h2`` directly, one connection, up to
    ``streams`` in flight, nothing else (no retries, no pacing, no result objects)."""

    def __init__(self, stream: trio.SocketStream, authority: bytes, streams: int) -> None:
        self.stream = stream
        self.authority = authority
        self.streams = streams
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)

    @classmethod
    async def open(cls, port: int, streams: int = PUSH_STREAMS) -> RawPusher:
        pusher = cls(await trio.open_tcp_stream(HOST, port), f"{HOST}:{port}".encode(), streams)
        pusher.h2.initiate_connection()
        await pusher.stream.send_all(pusher.h2.data_to_send())
        return pusher

    def _post(self, token: str, magic: str) -> None:
        stream_id = self.h2.get_next_available_stream_id()
        body = json.dumps({"mdm": magic}, separators=(",", ":")).encode()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", self.authority),
            (b":path", f"/3/device/{token}".encode()),
            (b"apns-topic", TOPIC.encode()),
            (b"apns-push-type", b"mdm"),
            (b"apns-priority", b"10"),
            (b"apns-id", str(uuid.uuid4()).encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ]
        self.h2.send_headers(stream_id, headers)
        self.h2.send_data(stream_id, body, end_stream=True)

    async def push_many(self, items: list[tuple[str, str]]) -> list[int]:
        """The status of every push, in the order the answers came."""
        statuses: list[int] = []
        sent = in_flight = 0
        while len(statuses) < len(items):
            room = min(self.streams, self.h2.remote_settings.max_concurrent_streams)
            while in_flight < room and sent < len(items):
                self._post(*items[sent])
                sent += 1
                in_flight += 1
            out = self.h2.data_to_send()
            if out:
                await self.stream.send_all(out)
            data = await self.stream.receive_some(READ_CHUNK)
            if not data:
                raise Failed("raw h2: the server closed the connection")
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses.append(int(dict(event.headers)[b":status"]))
                elif isinstance(event, h2.events.StreamEnded):
                    in_flight -= 1
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    raise Failed(f"raw h2: {event}")
        return statuses


PUSHERS = {"client": "ApnsClient.push_many", "raw": "raw h2 client"}


@dataclass(frozen=True)
class PushRow:
    pusher: str
    rate: float
    client_cpu: float
    server_cpu: float | None
    steal: float | None


def push_statuses(results: list[PushResult] | list[int]) -> list[int]:
    return [r if isinstance(r, int) else r.status for r in results]


async def timed_pushes(kind: str, port: int, items: list[tuple[str, str]], pid: int) -> PushRow:
    """Warms the connection up, then pushes ``items``; every answer must be 200."""
    warm = push_items(PUSH_WARMUP)
    async with contextlib.AsyncExitStack() as stack:
        if kind == "client":
            client = await stack.enter_async_context(
                ApnsClient(f"http://{HOST}:{port}", topic=TOPIC)
            )
            push = client.push_many
        else:
            raw = await RawPusher.open(port)
            stack.push_async_callback(raw.stream.aclose)
            push = raw.push_many  # type: ignore[assignment]
        statuses = push_statuses(await push(warm))
        start = Snapshot.now(pid)
        statuses = push_statuses(await push(items))
        end = Snapshot.now(pid)
    wrong = [s for s in statuses if s != 200]
    if len(statuses) != len(items) or wrong:
        raise Failed(f"{PUSHERS[kind]}: {len(statuses)} answers, {len(wrong)} not 200")
    wall = end.wall - start.wall
    server = None
    if start.server is not None and end.server is not None:
        server = (end.server - start.server) / wall
    steal = None
    if start.machine and end.machine and end.machine[1] > start.machine[1]:
        steal = (end.machine[0] - start.machine[0]) / (end.machine[1] - start.machine[1])
    return PushRow(kind, len(items) / wall, (end.client - start.client) / wall, server, steal)


def measure_pushes(kind: str, options: Options, items: list[tuple[str, str]]) -> PushRow:
    proc, port = start_server(Setup("apns"), options, 0)
    try:
        return trio.run(timed_pushes, kind, port, items, proc.pid)
    finally:
        stop_server(proc)


async def verify_pushes() -> None:
    """Both pushers against an in-process server that records what it got."""
    apns = ApnsServer()
    items = push_items(50)
    async with running(apns) as url:
        port = int(url.rpartition(":")[2])
        async with ApnsClient(url, topic=TOPIC) as client:
            results = await client.push_many(items)
        raw = await RawPusher.open(port)
        async with raw.stream:
            statuses = await raw.push_many(items)
    if [r.status for r in results] + statuses != [200] * 2 * len(items):
        raise Failed("pushes: not every push was answered 200")
    for push in apns.pushes:
        headers = push.headers
        if (headers.get("apns-topic"), headers.get("apns-push-type")) != (TOPIC, "mdm"):
            raise Failed(f"pushes: headers {headers}")
    got = sorted((p.token, json.dumps(p.payload)) for p in apns.pushes)
    wanted = sorted((t, json.dumps({"mdm": m})) for t, m in items * 2)
    if got != wanted:
        raise Failed("pushes: the server did not record the pushes sent")


# --- reporting ---------------------------------------------------------------------------------


def print_pushes(rows: dict[str, PushRow], rates: dict[str, list[float]], count: int) -> None:
    print(
        f"{'pushes':<24}{'pushes/s':>10}{'(rounds)':>15}{'client CPU':>11}{'server CPU':>11}"
        f"{'steal':>7}{'per client CPU-s':>17}"
    )
    for kind, row in rows.items():
        seen = rates[kind]
        spread = f"{min(seen):,.0f}-{max(seen):,.0f}" if len(seen) > 1 else ""
        per_cpu = f"{row.rate / row.client_cpu:,.0f}" if row.client_cpu else "-"
        print(
            f"{PUSHERS[kind]:<24}{row.rate:>10,.0f}{spread:>15}{fmt_cpu(row.client_cpu):>11}"
            f"{fmt_cpu(row.server_cpu):>11}{fmt_cpu(row.steal):>7}{per_cpu:>17}"
        )
    client, raw = rows["client"], rows["raw"]
    print(
        f"pushes: {count:,} per round; ApnsClient/raw h2 {client.rate / raw.rate:.0%} "
        "(informative, no target)"
    )


def print_setting(options: Options, rounds: int) -> None:
    """The output's head: the run, the transport, the stores, the messages."""
    print(
        f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{rounds} round(s), {options.duration:g} s timed per server after "
        f"{options.warmup:g} s of warm-up; {options.devices} keep-alive connections (one "
        f"device each), {options.commands:,} commands queued per device"
    )
    print(
        "transport: "
        + (
            "cleartext HTTP/1.1; the gateway in dev mode, devices not bound (no certificate "
            "checked)"
            if options.pki is None
            else "HTTP/1.1 over TLS for both servers (ECDSA, one handshake per connection "
            "with the device's certificate); the gateway checks it on every request"
        )
    )
    print(bench_omadm.stores_line(options.postgres, options.backends))
    request = Phone(0, udids(1)[0], 0).acknowledge(b"0" * 36).partition(b"\r\n\r\n")[2]
    print(
        f"request: {len(request)} bytes of plist (Acknowledged + QueryResponses); answer: "
        f"{len(options.body.read_bytes())} bytes (DeviceInformation); all servers and both "
        "pushers verified"
    )
    if options.profile:
        print("note: py-spy stops the gateway 250 times a second: its figures are not comparable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_server.add_run_arguments(
        parser,
        profile_help="py-spy the gateway's timed window (one round)",
        quick_also=" --pushes 2000",
    )
    parser.add_argument(
        "--connections", type=int, default=16, help="keep-alive connections, one device each (16)"
    )
    parser.add_argument(
        "--commands", type=int, help="commands queued per device (enough for 10,000/s)"
    )
    parser.add_argument("--pushes", type=int, help="pushes timed per round (10,000)")
    parser.add_argument(
        "--cleartext",
        action="store_true",
        help="no TLS: the gateway in dev mode over devices without a bound certificate",
    )
    bench_omadm.add_backend_argument(parser, "the gateway's")
    parser.add_argument("--serve", choices=SERVE_KINDS, help=argparse.SUPPRESS)
    for hidden in ("--db", "--token", "--body", "--pki"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_main(args)
    duration, warmup, rounds = bench_server.run_lengths(args)
    pushes = args.pushes if args.pushes is not None else (2000 if args.quick else 10000)
    per_device = args.commands or math.ceil(
        PROVISIONED_RATE * (warmup + duration + (2 if args.profile else 0)) / args.connections
    )
    if duration <= 0 or warmup < 0 or min(args.connections, rounds, pushes, per_device) < 1:
        parser.error("--duration must be positive, --warmup not negative, the counts at least 1")
    if args.profile and rounds != 1:
        parser.error("--profile runs one round")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)

    backends = bench_omadm.chosen_backends(args)
    setups = bench_omadm.plan(("gateway",), backends)
    push_rows = Best()
    with (
        tempfile.TemporaryDirectory(prefix="mdmgate-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        pki = None if args.cleartext else Pki.create(Path(tmp), udids(args.connections))
        items = push_items(pushes)
        try:
            options = Options(
                token=secrets.token_urlsafe(32),
                devices=args.connections,
                commands=per_device,
                tmp=Path(tmp),
                pki=pki,
                warmup=warmup,
                duration=duration,
                profile=args.profile,
                postgres=Postgres.start(stack) if "postgresql" in backends else None,
                backends=backends,
            )
            exchanges = verify_all(setups, options, args.quick)
            print_setting(options, rounds)
            for _ in range(rounds - 1 if args.quick else rounds):
                for setup in setups:
                    exchanges.add(setup, measure(setup, options)[0])
            for _ in range(rounds):
                for kind in PUSHERS:
                    push_rows.add(kind, measure_pushes(kind, options, items))
        except (Failed, OSError, httpx.HTTPError) as exc:
            sys.exit(f"verification failed: {exc}")
    bench_omadm.print_table(setups, exchanges.rows, exchanges.rates)
    bench_omadm.print_ratios(exchanges.rows, backends, etree=False, quick=args.quick)
    print_pushes(push_rows.rows, push_rows.rates, pushes)
    if args.profile:
        for setup in setups[1:]:
            summarize_profile(profile_path(args.profile, setup), f"the {setup.label}")
    return 0


LINE_NUMBER = re.compile(r":\d+\)$")


def summarize_profile(path: Path, what: str = "the gateway", top: int = 25) -> None:
    """Own samples and inclusive samples per function, from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [LINE_NUMBER.sub(")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        print(f"--- py-spy: no samples in {path}")
        return
    print(f"--- py-spy of {what} ({path}, {total} samples, all threads)")
    for title, table in (("own", own), ("inclusive", inclusive)):
        print(f"by {title} samples:")
        for name, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {count / total:6.1%}  {name}")


if __name__ == "__main__":
    raise SystemExit(main())
