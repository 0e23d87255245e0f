"""Device exchanges per second and gateway CPU per exchange through real ``mdmgate serve``
nodes, on SQLite (1 process) and PostgreSQL (1 and 2 processes), and the fleet index's
catch-up lag across nodes, in one run.

    python benches/bench_cluster.py [--duration 4] [--warmup 1]     # about 2 min
    python benches/bench_cluster.py --quick                          # CI smoke, no verdicts

Configurations, each a fresh database seeded directly through ``open_store`` (what the nodes
open), then served by ``tests/cluster.py``'s :class:`Cluster` (``python -m mdmgate serve
--listen ... --db URL --tls-cert ... --client-ca ...``, one process per node):

* ``sqlite``, 1 process: the embedded default (a file, WAL, durability full);
* ``postgresql``, 1 process and 2 processes (two nodes on two ports, the devices split between
  them): a throwaway server from ``tests/postgres_server.py`` (durability off there, as for
  every test server), started once for the run, a database per configuration.

Two paths, one after the other on the same nodes, every device on one keep-alive HTTP/1.1
connection over TLS with one request in flight (the load generator is this process):

* Windows: one exchange is one whole OMA-DM session in one message (``bench_omadm``'s
  :class:`Handset`: package 1 with SyncML MD5 credentials over the nonce the device was last
  given; the answer is 212 with the next nonce). ``--windows-devices`` devices (16).
* Apple: one exchange is one command's round: ``Idle`` (or the ``Acknowledged`` report of the
  previous command, with its QueryResponses) answered with the next queued
  ``DeviceInformation`` (``bench_apple``'s :class:`Phone` and :func:`drive`); each device
  presents its identity certificate, bound in the store. ``--apple-devices`` devices (16),
  each with ``--commands`` queued (enough for 3,000 exchanges/s; a queue that runs dry voids
  the row).

Before timing, each path is verified once per configuration: every device's session is
decoded and checked (``bench_omadm.check_reply``), every device's first command plist too
(``bench_apple.check_command``). Timing: ``--warmup`` seconds of load, then the exchanges that
complete within ``--duration`` seconds: exchanges/s, p50/p99 latency, and CPU: the gateway's
(user + system time of every ``mdmgate serve`` process, from ``/proc/<pid>/stat``, divided by
the exchanges: SQLite's work is inside the gateway, PostgreSQL's is not) and, shown apart, the
PostgreSQL server's (its process tree). The ratios compare gateway CPU per exchange on
PostgreSQL with SQLite's; the target (issue 15) is at most 1.3x.

Catch-up lag: two nodes on one database (SQLite, then PostgreSQL). ``--lag-devices`` iPhones
(10,000) reporting version 1.0 of an app are registered through node A and the preview of node
B converges on them (untimed). Then all of them report 2.0 through node A (bulk updates of
2,000); the lag is the time from the last update's answer to the first preview of node B that
sees every device at 2.0 (polled back to back). Target: under 1 s.

``--quick``: short windows, fewer devices, 1,000 changes, and no verdicts: it checks that the
benchmark runs and the servers answer rightly. The exit status is non-zero when a server
answers wrongly or a configuration cannot run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import math
import os
import platform
import secrets
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import cluster as harness
from tests.postgres_server import PostgresServer, find_bindir, running

import bench_apple
import bench_omadm
from bench_omadm import Connection, Handset
from bench_server import HOST, Failed, Stats, fmt_ms, percentile
from mdmgate.server.app import open_store
from mdmgate.storage import Device
from mdmgate.windows.service import FACT_NONCE

TARGET_CPU_RATIO = 1.3
TARGET_LAG = 1.0
#: Apple exchanges per second the queued commands provide for (with room to spare; a deeper
#: queue than needed is not free: on SQLite, taking a command costs more the more a device has
#: queued).
PROVISIONED_RATE = 3000
SECRET = "bench-cluster-secret"
LAG_APP = "lagapp"
LAG_IDENTIFIER = "com.bench.lag"


@dataclass(frozen=True)
class Setup:
    backend: str  # "sqlite" or "postgresql"
    nodes: int

    @property
    def label(self) -> str:
        return f"{self.backend}, {self.nodes} process{'es' if self.nodes > 1 else ''}"


EXCHANGES = (Setup("sqlite", 1), Setup("postgresql", 1), Setup("postgresql", 2))
LAGS = (Setup("sqlite", 2), Setup("postgresql", 2))


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    windows: int
    apple: int
    commands: int
    lag_devices: int
    quick: bool
    tmp: Path
    pki: bench_apple.Pki


@dataclass
class Row:
    path: str
    setup: Setup
    exchanges: int = 0
    wall: float = 0.0
    gateway_cpu: float = 0.0
    db_cpu: float | None = None
    latencies: list[float] = field(default_factory=list)
    failure: str = ""

    @property
    def rate(self) -> float:
        return self.exchanges / self.wall if self.wall else 0.0

    @property
    def cpu_per_exchange(self) -> float | None:
        return self.gateway_cpu / self.exchanges if self.exchanges else None

    @property
    def db_per_exchange(self) -> float | None:
        return None if self.db_cpu is None or not self.exchanges else self.db_cpu / self.exchanges


@dataclass
class Lag:
    setup: Setup
    seconds: float | None = None
    writes: float = 0.0
    failure: str = ""


# --- databases ----------------------------------------------------------------------------------


class Databases:
    """Fresh databases: SQLite files, and PostgreSQL ones on one server started on first use."""

    def __init__(self, tmp: Path, stack: contextlib.ExitStack) -> None:
        self.tmp = tmp
        self.stack = stack
        self.server: PostgresServer | None = None
        self.pg_error = ""

    def url(self, backend: str) -> str:
        if backend == "sqlite":
            return harness.Cluster.sqlite_url(self.tmp / f"bench-{secrets.token_hex(4)}.db")
        if self.server is None:
            if self.pg_error:
                raise Failed(self.pg_error)
            if find_bindir() is None:
                self.pg_error = "PostgreSQL is not installed (bash .ci/postgres-install)"
                raise Failed(self.pg_error)
            self.server = self.stack.enter_context(running())
        return harness.postgres_database(self.server, "bench")

    def cpu(self) -> float | None:
        """CPU seconds used so far by the PostgreSQL server's processes."""
        if self.server is None:
            return None
        pid = self.server._postmaster_pid()
        return None if pid is None else harness.process_cpu_seconds(harness.process_tree(pid))


async def seed(url: str, options: Options) -> None:
    """The devices and their queues, written before the nodes start."""
    store = await open_store(url)
    try:
        windows = bench_omadm.device_ids(options.windows)
        await store.upsert_devices(
            [
                Device(i, "windows", auth={"method": "md5", "username": i, "secret": SECRET})
                for i in windows
            ]
        )
        for i in windows:
            nonce = base64.b64encode(bench_omadm.initial_nonce(i)).decode()
            await store.merge_facts(i, {FACT_NONCE: nonce})
        udids = bench_apple.udids(options.apple)
        bound = _bound(options.pki)
        await store.upsert_devices(
            [bench_apple.enrolled(i, u, bound.get(u)) for i, u in enumerate(udids)]
        )
        await bench_apple.fill_queues(store, udids, options.commands)
    finally:
        await store.aclose()
    await bench_omadm.analyze(url)


def _bound(pki: bench_apple.Pki) -> dict[str, str]:
    import json  # noqa: PLC0415

    found: dict[str, str] = json.loads(pki.identities.read_text())
    return found


def cluster_pki(pki: bench_apple.Pki) -> harness.Pki:
    return harness.Pki(None, pki.ca, pki.server_cert, pki.server_key)


# --- the load -----------------------------------------------------------------------------------


def client_context(pki: bench_apple.Pki) -> ssl.SSLContext:
    return pki.client_context(None)


async def open_tls(port: int, context: ssl.SSLContext) -> Connection:
    tcp = await trio.open_tcp_stream(HOST, port)
    tls = trio.SSLStream(tcp, context, server_hostname=HOST)
    await tls.do_handshake()
    return Connection(tls)  # type: ignore[arg-type]


@dataclass
class Window:
    """Clocks at the start of the timed window."""

    wall: float
    gateway: float
    db: float | None


def snapshot(nodes: harness.Cluster, dbs: Databases) -> Window:
    return Window(time.perf_counter(), nodes.cpu_seconds(), dbs.cpu())


def close_row(row: Row, start: Window, nodes: harness.Cluster, dbs: Databases) -> None:
    end = snapshot(nodes, dbs)
    row.wall = end.wall - start.wall
    row.gateway_cpu = end.gateway - start.gateway
    if start.db is not None and end.db is not None:
        row.db_cpu = end.db - start.db


def ports(nodes: harness.Cluster) -> list[int]:
    return [n.port for n in nodes.nodes]


async def verify_windows(
    nodes: harness.Cluster, devices: list[Handset], context: ssl.SSLContext
) -> None:
    for number, device in enumerate(devices):
        port = ports(nodes)[number % len(nodes.nodes)]
        conn = await open_tls(port, context)
        async with conn.stream:
            status, data = await conn.exchange(device.request(f"{HOST}:{port}".encode()))
        code = device.answer(data)
        if status != 200 or code != 212:
            raise Failed(f"windows, {device.device_id}: HTTP {status}, SyncHdr {code}: {data!r}")
        bench_omadm.check_reply("gateway", device, data)


async def run_windows(nodes: harness.Cluster, dbs: Databases, row: Row, options: Options) -> None:
    devices = [
        Handset(i, SECRET, bench_omadm.initial_nonce(i))
        for i in bench_omadm.device_ids(options.windows)
    ]
    context = client_context(options.pki)
    await verify_windows(nodes, devices, context)
    stats = Stats()

    async def drive(number: int, device: Handset, scope: trio.CancelScope) -> None:
        port = ports(nodes)[number % len(nodes.nodes)]
        host = f"{HOST}:{port}".encode()
        try:
            conn = await open_tls(port, context)
            while True:
                request = device.request(host)
                started = time.perf_counter()
                status, data = await conn.exchange(request)
                done = time.perf_counter()
                code = device.answer(data)
                if status != 200 or code != 212:
                    stats.fail(f"HTTP {status}, SyncHdr status {code}: {data[:200]!r}")
                if stats.recording:
                    stats.latencies.append(done - started)
        except Exception as exc:
            stats.broken = stats.broken or f"{type(exc).__name__}: {exc}"
            scope.cancel()

    await timed(nodes, dbs, row, options, stats=stats, drive=drive, devices=devices)


async def run_apple(nodes: harness.Cluster, dbs: Databases, row: Row, options: Options) -> None:
    udids = bench_apple.udids(options.apple)
    phones = []
    for index, udid in enumerate(udids):
        port = ports(nodes)[index % len(nodes.nodes)]
        phones.append((port, bench_apple.Phone(index, udid, port)))
    apple_options = bench_apple.Options(
        token=harness.TOKEN,
        devices=options.apple,
        commands=options.commands,
        tmp=options.tmp,
        pki=options.pki,
        warmup=options.warmup,
        duration=options.duration,
        profile=None,
    )
    # Verification: each device's first command is a whole, new DeviceInformation plist.
    for port, phone in phones:
        conn = await phone.connect(port, options.pki)
        async with conn.stream:
            body, command_uuid = await bench_apple.next_command(conn, phone.idle, phone.udid)
        bench_apple.check_command(f"apple, {phone.udid}", body, command_uuid, set())
    stats = Stats()

    async def drive(number: int, item: tuple[int, Any], scope: trio.CancelScope) -> None:
        del number
        port, phone = item
        await bench_apple.drive(phone, port, apple_options, stats, scope)

    await timed(nodes, dbs, row, options, stats=stats, drive=drive, devices=phones)


async def timed(
    nodes: harness.Cluster,
    dbs: Databases,
    row: Row,
    options: Options,
    *,
    stats: Stats,
    drive: Any,
    devices: list[Any],
) -> None:
    """Runs ``drive`` for every device: warm-up, then the timed window."""
    async with trio.open_nursery() as nursery:
        for number, device in enumerate(devices):
            nursery.start_soon(drive, number, device, nursery.cancel_scope)
        await trio.sleep(options.warmup)
        start = snapshot(nodes, dbs)
        stats.recording = True
        await trio.sleep(options.duration)
        stats.recording = False
        close_row(row, start, nodes, dbs)
        nursery.cancel_scope.cancel()
    if stats.broken:
        raise Failed(f"{row.path}: {stats.broken}")
    if stats.errors:
        raise Failed(f"{row.path}: {stats.errors} wrong answers, the first: {stats.first_error}")
    if not stats.latencies:
        raise Failed(f"{row.path}: no exchange completed in the timed window")
    row.exchanges = len(stats.latencies)
    row.latencies = sorted(stats.latencies)


async def exchanges(setup: Setup, dbs: Databases, options: Options) -> list[Row]:
    rows = [Row("windows", setup), Row("apple", setup)]
    try:
        url = dbs.url(setup.backend)
        await seed(url, options)
        root = options.tmp / f"{setup.backend}-{setup.nodes}-{secrets.token_hex(2)}"
        nodes = harness.Cluster(root, url, nodes=setup.nodes, pki=cluster_pki(options.pki))
        async with nodes:
            try:
                await run_windows(nodes, dbs, rows[0], options)
                await run_apple(nodes, dbs, rows[1], options)
            except BaseException:
                print(nodes.logs(15), file=sys.stderr)
                raise
    except Exception as exc:  # a configuration that cannot run: said, and the run goes on
        for row in rows:
            if not row.exchanges:
                row.failure = f"{type(exc).__name__}: {exc}"
    return rows


# --- the fleet index's catch-up lag ---------------------------------------------------------------


def lag_devices(count: int, version: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"lag-{i:05d}",
            "platform": "ios",
            "org": f"/lag/{i % 8}",
            "os_version": "17.5",
            "supervised": True,
            "apps": [{"identifier": LAG_IDENTIFIER, "version": version}],
        }
        for i in range(count)
    ]


async def lag(setup: Setup, dbs: Databases, options: Options) -> Lag:
    found = Lag(setup)
    try:
        url = dbs.url(setup.backend)
        root = options.tmp / f"lag-{setup.backend}-{secrets.token_hex(2)}"
        nodes = harness.Cluster(root, url, nodes=2)
        async with nodes:
            try:
                await measure_lag(nodes, options, found)
            except BaseException:
                print(nodes.logs(15), file=sys.stderr)
                raise
    except Exception as exc:
        found.failure = f"{type(exc).__name__}: {exc}"
    return found


async def measure_lag(nodes: harness.Cluster, options: Options, found: Lag) -> None:
    a, b = nodes.nodes
    count, batch = options.lag_devices, 2000
    body = {"all_devices": True, "installed_only": True, "limit": 0}
    async with nodes.admin(a) as writer, nodes.admin(b) as reader:
        registered = lag_devices(count, "1.0")
        for start in range(0, count, batch):
            r = await writer.post("/api/v1/devices", json=registered[start : start + batch])
            r.raise_for_status()
        r = await writer.post(
            "/api/v1/apps",
            json={
                "id": LAG_APP,
                "name": "Lag",
                "platform": "ios",
                "kind": "internal",
                "identifier": LAG_IDENTIFIER,
            },
        )
        r.raise_for_status()
        r = await writer.post(
            f"/api/v1/apps/{LAG_APP}/versions",
            json={"file_version": "2.0", "manifest_url": "https://apps.example/lag.plist"},
        )
        r.raise_for_status()

        async def counts() -> dict[str, int]:
            r = await reader.post(f"/api/v1/apps/{LAG_APP}/preview", json=body)
            r.raise_for_status()
            answer: dict[str, int] = r.json()["counts"]
            return answer

        deadline = 20.0 if options.quick else 60.0
        with trio.move_on_after(deadline):
            while (await counts()).get("update") != count:
                pass
        if (await counts()).get("update") != count:
            raise Failed(f"node B never saw the {count:,} devices registered through node A")
        updated = lag_devices(count, "2.0")
        started = time.perf_counter()
        for start in range(0, count, batch):
            r = await writer.post("/api/v1/devices", json=updated[start : start + batch])
            r.raise_for_status()
        written = time.perf_counter()
        found.writes = written - started
        with trio.move_on_after(deadline):
            while (await counts()).get("already_at_version") != count:
                pass
            found.seconds = time.perf_counter() - written
        if found.seconds is None:
            found.failure = f"node B had not caught up after {deadline:g} s"


# --- reporting ----------------------------------------------------------------------------------


def fmt_us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.0f} µs"


def print_rows(rows: list[Row]) -> None:
    print(
        f"{'path':<9}{'database':<24}{'exchanges/s':>12}{'p50':>11}{'p99':>11}"
        f"{'gateway CPU/exch':>18}{'PostgreSQL CPU/exch':>21}"
    )
    for row in rows:
        if row.failure:
            print(f"{row.path:<9}{row.setup.label:<24}  not measured: {row.failure}")
            continue
        print(
            f"{row.path:<9}{row.setup.label:<24}{row.rate:>12,.0f}"
            f"{fmt_ms(percentile(row.latencies, 0.5)):>11}"
            f"{fmt_ms(percentile(row.latencies, 0.99)):>11}"
            f"{fmt_us(row.cpu_per_exchange):>18}{fmt_us(row.db_per_exchange):>21}"
        )


def cpu_ratios(rows: list[Row]) -> Iterator[tuple[str, str, float | None]]:
    """(path, PostgreSQL setup, its gateway CPU per exchange / SQLite's)."""
    for path in ("windows", "apple"):
        base = next((r for r in rows if r.path == path and r.setup.backend == "sqlite"), None)
        for row in rows:
            if row.path != path or row.setup.backend != "postgresql":
                continue
            a, b = row.cpu_per_exchange, base.cpu_per_exchange if base else None
            yield path, row.setup.label, (a / b if a is not None and b else None)


def verdict(met: bool, quick: bool) -> str:
    return "" if quick else (" met" if met else " MISSED")


def print_summary(rows: list[Row], lags: list[Lag], options: Options) -> None:
    print(
        "ratios: gateway CPU per exchange on PostgreSQL / on SQLite (1 process)"
        + ("" if options.quick else f", target <= {TARGET_CPU_RATIO:g}x")
    )
    for path, label, ratio in cpu_ratios(rows):
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        met = ratio is not None and ratio <= TARGET_CPU_RATIO
        print(f"  {path:<8} {label:<24} {shown}{verdict(met, options.quick) if ratio else ''}")
    print(
        f"fleet index catch-up after {options.lag_devices:,} device changes through another node"
        + ("" if options.quick else f", target < {TARGET_LAG:g} s")
    )
    for found in lags:
        if found.seconds is None:
            print(f"  {found.setup.label:<24} not measured: {found.failure}")
            continue
        met = found.seconds < TARGET_LAG
        print(
            f"  {found.setup.label:<24} {found.seconds:.3f} s{verdict(met, options.quick)}"
            f" (the updates took {found.writes:.2f} s to write)"
        )


# --- main ---------------------------------------------------------------------------------------


async def run_all(options: Options, stack: contextlib.ExitStack) -> tuple[list[Row], list[Lag]]:
    dbs = Databases(options.tmp, stack)
    rows: list[Row] = []
    for setup in EXCHANGES:
        rows += await exchanges(setup, dbs, options)
    lags = [await lag(setup, dbs, options) for setup in LAGS]
    return rows, lags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, help="seconds timed per path (4; quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of load before timing (1; quick 0.3)")
    parser.add_argument("--windows-devices", type=int, help="Windows devices (16; quick 4)")
    parser.add_argument("--apple-devices", type=int, help="Apple devices (16; quick 4)")
    parser.add_argument("--lag-devices", type=int, help="device changes (10,000; quick 1,000)")
    parser.add_argument(
        "--commands", type=int, help="commands queued per Apple device (enough for 3,000/s)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run for CI, no verdicts")
    args = parser.parse_args()
    quick = args.quick
    duration = args.duration if args.duration is not None else (1.0 if quick else 4.0)
    warmup = args.warmup if args.warmup is not None else (0.3 if quick else 1.0)
    windows = args.windows_devices or (4 if quick else 16)
    apple = args.apple_devices or (4 if quick else 16)
    changes = args.lag_devices or (1000 if quick else 10_000)
    if duration <= 0 or warmup < 0 or min(windows, apple, changes) < 1:
        parser.error("--duration must be positive, --warmup not negative, the counts at least 1")
    commands = args.commands or math.ceil(PROVISIONED_RATE * (warmup + duration + 1) / apple)
    with (
        tempfile.TemporaryDirectory(prefix="mdmgate-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        pki = bench_apple.Pki.create(Path(tmp), bench_apple.udids(apple))
        options = Options(
            duration, warmup, windows, apple, commands, changes, quick, Path(tmp), pki
        )
        print(
            f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} CPUs; "
            f"{duration:g} s timed per path after {warmup:g} s of warm-up; {windows} Windows and "
            f"{apple} Apple devices, one keep-alive HTTP/1.1 connection over TLS each; "
            f"{commands:,} commands queued per Apple device"
        )
        rows, lags = trio.run(run_all, options, stack)
    print_rows(rows)
    print_summary(rows, lags, options)
    failed = [r for r in rows if r.failure] + [x for x in lags if x.seconds is None]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
