"""Capacity: how many devices one gateway process carries per core at a 15-minute check-in
cadence, measured with ``mdmgate simulate`` against ``mdmgate serve`` on SQLite and PostgreSQL.

    python benches/bench_capacity.py                  # 100,000 devices, SQLite then PostgreSQL
    python benches/bench_capacity.py --backend sqlite --devices 10000 --rate 250,300,350
    python benches/bench_capacity.py --quick          # CI smoke: 500 devices, about 20 s each

Per backend (and ``--rate``): a fresh database and one ``mdmgate serve`` process, no workers,
started by ``tests/cluster.py`` (cleartext HTTP/1.1, an API token, ``[apns]`` pointed at the
simulator's APNs stand-in, connection limits above the fleet's concurrency, all else default):
a SQLite file in a temporary directory (durability full), or a database on a PostgreSQL server
started here (``tests/postgres_server.py``: initdb and its socket in a temporary directory,
durability off as for every test server, stopped at the end).

The fleet (the scenario TOML written here): 60% Apple (iPhone 45%, iPad 7.5%, Mac 7.5%), 40%
Windows, each device checking in every 15 minutes of device time (jitter 10%); an app
inventory in every 4th Windows session (``--inventory-bytes`` of StructData, about the ~30
packages of a stock Windows install); one app install per 10 devices (Windows hosted installs,
202 and then Alert 1226 a session later; App Store installs, the gateway pushing to wake the
device). No error, NotNow or silent rates. Time is compressed so that the fleet asks for
``--rate`` check-ins a second: each device checks in every ``devices / rate`` seconds.

The run: registration, the first check-ins spread over four intervals (the ramp-up), then
``--duration`` seconds measured (default two intervals), then the drain and the ledger check.
Four intervals because a device's first session enrolls it (once in its life: kept out of the
window), and because the simulator queues an inventory after every 4th session *of each
device*: devices that all started within one interval would take their inventories in the same
interval, four times the fleet's rate then and none in between. Spread over four intervals their
turns are out of step, as in a fleet that enrolled over time. The window starts a twentieth of
an interval (at least 1 s) after the ramp-up and ends with the check-ins. The installs are
queued by this script through the admin API, spread over the window's first interval, for every
10th device (the simulator would queue them at half the run: inside the ramp-up here).

Measured over the window: sessions (one session = one device check-in as the scenario mixes
them: a Windows OMA-DM session with all its round trips, an Apple ``Idle`` and every command
until the server has none, those a push started included), from the simulator's per-second
timeline; the gateway's CPU seconds (user + system of the ``serve`` process, all threads, from
``/proc/<pid>/stat`` sampled four times a second, read at the window's ends), PostgreSQL's
apart; the simulator's CPU (one Trio thread: it saturates at one core), this script's, and the
machine's busy CPU and steal (``/proc/stat``): the rest is other processes and the kernel. The
run's start is placed on this script's clock by the simulator's first progress line (at 10 s).

    devices per core at a 15-minute check-in cadence = sessions per gateway CPU-second x 900 s

(a core serving S check-ins per CPU-second carries S x 900 devices that check in every 900 s);
on PostgreSQL also per CPU-second of the gateway and PostgreSQL together.

The knee: the asked rate met within 10%, no session failed (the scenario asks for no errors:
any is the gateway refusing or timing out) and the median second's p99 latency under 500 ms;
otherwise the run is "over the knee". Seconds the simulator spent above 90% of a core (where it
measures itself) are counted. Find the knee with a few ``--rate`` values on a smaller fleet: a
check-in's cost barely depends on the fleet's size, the run's length does (six intervals, and
a ledger check that reads every device's deliveries).

The exit status is non-zero when a run fails or its ledger is not clean (a command lost,
duplicated, misattributed or stored with another answer). ``--quick``: 500 devices, an 8 s
window, no knee verdict.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import math
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from itertools import islice, zip_longest
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import cluster as harness
from tests.postgres_server import PostgresServer, find_bindir, running

from mdmgate.simulate.ledger import PROBLEMS
from mdmgate.simulate.scenario import APPLE_PLATFORMS, build_profiles, parse_scenario

#: The check-in cadence of the figure (seconds of device time between two check-ins).
CADENCE = 900.0
TOPIC = "com.apple.mgmt.External.mdmgate-simulate"
#: Check-ins a second the fleet asks for by default: the knee on the project's 2-core VM with
#: the simulator on the same machine (RESULTS.md, "Capacity").
DEFAULT_RATE = 250.0
WINDOWS_SHARE = 0.4
INVENTORY_EVERY = 4
INSTALL_PER = 10
#: Devices per install request.
INSTALL_BATCH = 500
#: About the StructData of the ~30 packages a stock Windows 11 install reports.
INVENTORY_BYTES = 131_072
#: Intervals measured: each device checks in about this many times in the window.
MEASURED_INTERVALS = 2
#: Sessions in flight at most: below the gateway's default max_in_flight (256), with room
#: for the simulator's admin API requests.
CONCURRENCY = 200
#: The gateway's connection limits: every simulated device connects from 127.0.0.1.
MAX_CONNECTIONS = 4096
#: Knee criteria: the asked rate met within this share, and the median second's p99 under
#: this many seconds.
RATE_SHORTFALL = 0.9
SANE_P99 = 0.5
#: A simulator above this share of a core measures itself (as ``mdmgate simulate`` says).
SATURATED_CPU = 0.9
#: Seconds between two CPU samples.
SAMPLE_EVERY = 0.25
#: The simulator's progress lines (stderr, not a terminal) start with the run's H:MM:SS.
PROGRESS = re.compile(r"^(\d+):(\d\d):(\d\d) active ")
DONE = re.compile(r"^done \d+:\d\d:\d\d ")


class Failed(Exception):
    """A run that could not be made or measured."""


@dataclass(frozen=True)
class Options:
    devices: int
    rates: tuple[float, ...]
    duration: float | None
    backends: tuple[str, ...]
    inventory_bytes: int
    inventory_every: int
    install_per: int
    windows_share: float
    seed: int
    grace: float
    quick: bool
    keep: Path | None
    tmp: Path


@dataclass(frozen=True)
class Plan:
    """The timing of one run, in seconds of wall-clock time from the simulator's start."""

    devices: int
    rate: float
    interval: float  # each device checks in this often
    ramp_up: float  # the first check-ins spread over this long
    window_start: int  # the measured seconds: [window_start, window_end)
    window_end: int

    @property
    def time_factor(self) -> float:
        return CADENCE / self.interval

    @classmethod
    def make(cls, devices: int, rate: float, duration: float | None, inventory_every: int) -> Plan:
        interval = devices / rate
        # Spread over as many intervals as sessions between two inventories, the devices'
        # session counts (which pick the inventory sessions) are out of step, as in a fleet.
        ramp_up = max(inventory_every, 1) * interval
        start = math.ceil(ramp_up + max(1.0, interval / 20))
        length = math.ceil(duration if duration is not None else MEASURED_INTERVALS * interval)
        return cls(devices, rate, interval, ramp_up, start, start + max(length, 1))


class Clocks(NamedTuple):
    """CPU seconds used so far (the machine's: ticks of all its CPUs)."""

    gateway: float
    client: float
    db: float  # NaN without PostgreSQL
    bench: float  # this script's own
    busy: float  # the machine's CPU ticks not idle
    total: float
    steal: float


@dataclass
class Row:
    backend: str
    plan: Plan
    failure: str = ""
    exit_status: int | None = None
    installs: int = 0
    seconds: float = 0.0
    sessions: int = 0
    messages: int = 0
    received: int = 0
    answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    p50: float | None = None  # the median second's
    p99: float | None = None  # the median second's
    p99_worst: float | None = None
    gateway_cpu: float = 0.0
    client_cpu: float = 0.0
    client_cpu_timeline: float = 0.0
    saturated_seconds: int = 0
    db_cpu: float | None = None
    bench_cpu: float = 0.0
    machine_cores: float | None = None
    steal: float | None = None
    ledger: dict[str, Any] | None = None
    platforms: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sessions / self.seconds if self.seconds else 0.0

    @property
    def per_cpu_second(self) -> float | None:
        return self.sessions / self.gateway_cpu if self.gateway_cpu > 0 else None

    @property
    def per_cpu_second_with_db(self) -> float | None:
        if self.db_cpu is None or self.gateway_cpu + self.db_cpu <= 0:
            return None
        return self.sessions / (self.gateway_cpu + self.db_cpu)

    @property
    def other_cores(self) -> float | None:
        """Cores the rest of the machine (the kernel's threads included) kept busy in the
        window."""
        if self.machine_cores is None or not self.seconds:
            return None
        ours = self.gateway_cpu + self.client_cpu + (self.db_cpu or 0.0) + self.bench_cpu
        return self.machine_cores - ours / self.seconds

    @property
    def clean(self) -> bool:
        return self.ledger is not None and bool(self.ledger.get("passed"))

    def knee_problems(self) -> list[str]:
        """Why the run is over the knee (empty: the gateway kept up with sane latency)."""
        found = []
        if self.rate < RATE_SHORTFALL * self.plan.rate:
            found.append(f"{self.rate:,.0f} sessions/s of {self.plan.rate:,.0f} asked")
        failed = sum(self.errors.values())
        if failed:
            found.append(f"{failed:,} sessions failed")
        if self.p99 is not None and self.p99 > SANE_P99:
            found.append(f"p99 {fmt_ms(self.p99)} in the median second")
        return found


# --- measuring ------------------------------------------------------------------------------


def machine_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) CPU ticks of the whole machine so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    ticks += [0] * (8 - len(ticks))
    total = sum(ticks[:8])
    return total - ticks[3] - ticks[4], total, ticks[7]  # idle, iowait


class Sampler:
    """CPU clocks of the gateway, the simulator and PostgreSQL, a few times a second."""

    def __init__(self, gateway: int, db: PostgresServer | None) -> None:
        self.gateway = gateway
        self.client: int | None = None
        self.db = db
        self.times: list[float] = []
        self.clocks: list[Clocks] = []

    def take(self) -> None:
        db = math.nan
        pid = None if self.db is None else self.db._postmaster_pid()
        if pid is not None:
            db = harness.process_cpu_seconds(harness.process_tree(pid))
        client = harness.process_cpu_seconds([self.client]) if self.client else 0.0
        gateway = harness.process_cpu_seconds([self.gateway])
        bench = harness.process_cpu_seconds([os.getpid()])
        self.times.append(time.monotonic())
        self.clocks.append(Clocks(gateway, client, db, bench, *machine_ticks()))

    async def run(self) -> None:
        while True:
            self.take()
            await trio.sleep(SAMPLE_EVERY)

    def at(self, moment: float) -> Clocks:
        """The clocks at ``moment`` (monotonic), interpolated between the samples around it."""
        times = self.times
        if not times or not times[0] <= moment <= times[-1]:
            raise Failed("the CPU samples do not cover the measured window")
        after = bisect.bisect_left(times, moment)
        before = max(after - 1, 0)
        span = times[after] - times[before]
        share = (moment - times[before]) / span if span else 0.0
        a, b = self.clocks[before], self.clocks[after]
        return Clocks(*(x + (y - x) * share for x, y in zip(a, b, strict=True)))


@dataclass
class Progress:
    """What the simulator's stderr told: when its run started and its drain ended."""

    began: float  # the simulator started (time.monotonic())
    started: float | None = None  # its run started: registration is over
    done: float | None = None  # its drain ended
    ended: float = 0.0  # it exited
    lines: list[str] = field(default_factory=list)
    known: trio.Event = field(default_factory=trio.Event)


async def follow(stream: trio.abc.ReceiveStream, progress: Progress, label: str) -> None:
    """Reads the simulator's stderr line by line: echoes it, and places the run's start on
    this process's clock from the first progress line (``H:MM:SS`` since the start)."""
    pending = b""
    async for chunk in stream:
        now = time.monotonic()
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip()
            progress.lines.append(line)
            print(f"  [{label}] {line}", flush=True)
            found = PROGRESS.match(line)
            if found and progress.started is None:
                hours, minutes, seconds = (int(g) for g in found.groups())
                progress.started = now - (hours * 3600 + minutes * 60 + seconds)
                progress.known.set()
            if DONE.match(line):
                progress.done = now


# --- one run --------------------------------------------------------------------------------


def scenario(plan: Plan, options: Options) -> str:
    """The scenario TOML: the fleet, its cadence compressed to the plan's rate, the workload."""
    apple = 1.0 - options.windows_share
    return f"""\
seed = {options.seed}

[fleet]
devices = {plan.devices}
windows = {options.windows_share!r}
ios = {apple * 0.75!r}
ipados = {apple * 0.125!r}
macos = {apple * 0.125!r}

[cadence]
windows = {CADENCE}
ios = {CADENCE}
ipados = {CADENCE}
macos = {CADENCE}
jitter = 0.1

[run]
duration = {float(plan.window_end)}
time_factor = {plan.time_factor!r}
ramp_up = {plan.ramp_up!r}
concurrency = {CONCURRENCY}
grace = {options.grace}

[windows]
inventory_bytes = {options.inventory_bytes}

[workload]
inventory_every = {options.inventory_every}
# The installs are queued by the benchmark, in the measured window (install_requests).
install_per = 0
"""


def install_requests(toml: str, every: int) -> list[dict[str, Any]]:
    """``POST /api/v1/commands`` bodies: an app install for every ``every``-th device of the
    fleet the simulator builds from the same scenario (its workload's apps), Windows and Apple
    batches alternating."""
    if not every:
        return []
    fleet = parse_scenario(tomllib.loads(toml))
    work = fleet.workload
    windows: list[str] = []
    apple: list[str] = []
    for profile in islice(build_profiles(fleet), 0, None, every):
        (apple if profile.platform in APPLE_PLATFORMS else windows).append(profile.id)
    hosted = {
        "windows_app": {
            "action": "hosted_install",
            "scope": "user",
            "package_family": work.windows_package_family,
            "package_uri": work.windows_package_uri,
        }
    }
    store = {
        "apple_app": {"action": "install_store_app", "itunes_store_id": work.apple_itunes_store_id}
    }
    batches = [
        [
            {"devices": ids[i : i + INSTALL_BATCH], **command}
            for i in range(0, len(ids), INSTALL_BATCH)
        ]
        for ids, command in ((windows, hosted), (apple, store))
    ]
    return [body for pair in zip_longest(*batches) for body in pair if body is not None]


async def queue_installs(
    gateway: harness.Cluster, requests: list[dict[str, Any]], progress: Progress, plan: Plan
) -> None:
    """Queues the installs spread over the window's first interval, as an administrator
    assigning an app to part of a running fleet (the gateway pushes to the Apple devices)."""
    if not requests:
        return
    await progress.known.wait()
    assert progress.started is not None
    first = progress.started + plan.window_start
    async with gateway.admin() as api:
        for number, body in enumerate(requests):
            at = first + number * plan.interval / len(requests)
            await trio.sleep(max(0.0, at - time.monotonic()))
            answer = await api.post("/api/v1/commands", json=body)
            if answer.status_code != 202:
                raise Failed(f"queueing installs: HTTP {answer.status_code}: {answer.text[:300]}")


GATEWAY_CONFIG = f"""\
[limits]
max_connections = {MAX_CONNECTIONS}
max_connections_per_client = {MAX_CONNECTIONS}

[apns]
topic = "{TOPIC}"
"""


class Databases:
    """Fresh databases: SQLite files, and PostgreSQL ones on one server started on first use."""

    def __init__(self, tmp: Path, stack: contextlib.ExitStack) -> None:
        self.tmp = tmp
        self.stack = stack
        self.server: PostgresServer | None = None

    def url(self, backend: str) -> str:
        if backend == "sqlite":
            return harness.Cluster.sqlite_url(self.tmp / f"capacity-{secrets.token_hex(4)}.db")
        if self.server is None:
            if find_bindir() is None:
                raise Failed("PostgreSQL is not installed (bash .ci/postgres-install)")
            self.server = self.stack.enter_context(running())
        return harness.postgres_database(self.server, "capacity")


async def measure(backend: str, plan: Plan, dbs: Databases, options: Options) -> Row:
    row = Row(backend, plan)
    try:
        url = dbs.url(backend)
        root = options.tmp / f"{backend}-{plan.rate:g}-{secrets.token_hex(2)}"
        root.mkdir(parents=True)
        apns_port = harness.free_port()
        gateway = harness.Cluster(
            root,
            url,
            nodes=1,
            config=GATEWAY_CONFIG,
            args=["--apns-url", f"http://{harness.HOST}:{apns_port}"],
            start_timeout=120.0,
        )
        (root / "scenario.toml").write_text(scenario(plan, options))
        async with gateway:
            try:
                progress, sampler = await simulate(
                    row,
                    gateway,
                    apns_port=apns_port,
                    dbs=dbs,
                    root=root,
                    install_per=options.install_per,
                )
            except BaseException:
                print(gateway.logs(15), file=sys.stderr)
                raise
        analyse(row, root, progress, sampler)
        if options.keep is not None:
            keep_reports(row, root, options.keep)
    except (Failed, OSError, RuntimeError, harness.NodeFailed) as exc:
        row.failure = f"{type(exc).__name__}: {exc}"
    return row


async def simulate(
    row: Row,
    gateway: harness.Cluster,
    *,
    apns_port: int,
    dbs: Databases,
    root: Path,
    install_per: int,
) -> tuple[Progress, Sampler]:
    """Runs ``mdmgate simulate`` against the gateway while sampling the CPU clocks and
    queueing the installs; the report lands in ``root / "report"``."""
    plan = row.plan
    node = gateway.nodes[0]
    scenario_file = root / "scenario.toml"
    installs = install_requests(scenario_file.read_text(), install_per)
    row.installs = sum(len(body["devices"]) for body in installs)
    argv = [sys.executable, "-m", "mdmgate", "simulate", "--target", node.base_url]
    argv += ["--scenario", str(scenario_file), "--apns-listen", f"{harness.HOST}:{apns_port}"]
    argv += ["--report", str(root / "report"), "--json"]
    env = {**os.environ, "MDMGATE_API_TOKEN": harness.TOKEN}
    sampler = Sampler(node.pids[0], dbs.server)
    progress = Progress(began=time.monotonic())
    with (root / "simulate.json").open("wb") as out:
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, env=env
        )
        sampler.client = proc.pid
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sampler.run)
                nursery.start_soon(queue_installs, gateway, installs, progress, plan)
                assert proc.stderr is not None
                await follow(proc.stderr, progress, f"{row.backend} {plan.rate:g}/s")
                await proc.wait()
                sampler.take()
                nursery.cancel_scope.cancel()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
    progress.ended = time.monotonic()
    row.exit_status = proc.returncode
    if proc.returncode not in (0, 1):
        tail = "\n".join(progress.lines[-5:])
        raise Failed(f"mdmgate simulate exited with status {proc.returncode}:\n{tail}")
    return progress, sampler


def analyse(row: Row, root: Path, progress: Progress, sampler: Sampler) -> None:
    """The window's figures from the simulator's report and the CPU samples."""
    try:
        report = msgspec.json.decode((root / "report" / "report.json").read_bytes())
        outcome = msgspec.json.decode((root / "simulate.json").read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        raise Failed(f"the simulator's report cannot be read: {exc}") from None
    if progress.started is None:
        raise Failed("the simulator printed no progress line (a run under 10 s?)")
    row.notes = [str(n) for n in outcome.get("notes", []) if not str(n).startswith("report: ")]
    row.ledger = report.get("ledger")
    row.platforms = report["totals"]["platforms"]
    window(row, report["timeline"])
    clocks(row, sampler, progress.started)
    drained = progress.done if progress.done is not None else progress.ended
    row.phases = {
        "registration": progress.started - progress.began,
        "check-ins": float(row.plan.window_end),
        "drain": max(drained - progress.started - row.plan.window_end, 0.0),
        "ledger check": progress.ended - drained,
    }


def keep_reports(row: Row, root: Path, keep: Path) -> None:
    plan = row.plan
    kept = keep / f"{row.backend}-{plan.devices}-{plan.rate:g}"
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("report/report.json", "report/report.html", "scenario.toml"):
        if (root / name).exists():
            (kept / Path(name).name).write_bytes((root / name).read_bytes())


def window(row: Row, timeline: list[dict[str, Any]]) -> None:
    """Sessions, errors and latency of the measured seconds, from the simulator's timeline."""
    plan = row.plan
    seconds = [b for b in timeline if plan.window_start <= b["t"] < plan.window_end]
    if len(seconds) < plan.window_end - plan.window_start:
        raise Failed(
            f"the timeline has {len(seconds)} of the {plan.window_end - plan.window_start} "
            "measured seconds"
        )
    row.seconds = float(len(seconds))
    for bucket in seconds:
        row.sessions += bucket["sessions"]
        row.messages += bucket["messages"]
        row.received += bucket["received"]
        row.answered += bucket["answered"]
        row.client_cpu_timeline += bucket["client_cpu"]
        row.saturated_seconds += bucket["client_cpu"] > SATURATED_CPU
        for kind, count in bucket["errors"].items():
            row.errors[kind] = row.errors.get(kind, 0) + count
    p50s = [b["latency_p50"] for b in seconds if b["latency_p50"] is not None]
    p99s = [b["latency_p99"] for b in seconds if b["latency_p99"] is not None]
    row.p50 = statistics.median(p50s) if p50s else None
    row.p99 = statistics.median(p99s) if p99s else None
    row.p99_worst = max(p99s) if p99s else None


def clocks(row: Row, sampler: Sampler, started: float) -> None:
    """The CPU used over the measured window, read from the samples at its two ends."""
    plan = row.plan
    a = sampler.at(started + plan.window_start)
    b = sampler.at(started + plan.window_end)
    row.gateway_cpu = b.gateway - a.gateway
    row.client_cpu = b.client - a.client
    row.db_cpu = None if math.isnan(b.db - a.db) else b.db - a.db
    row.bench_cpu = b.bench - a.bench
    if b.total > a.total:
        row.machine_cores = (b.busy - a.busy) / (b.total - a.total) * (os.cpu_count() or 1)
        row.steal = (b.steal - a.steal) / (b.total - a.total)


# --- reporting ------------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def describe(row: Row, quick: bool) -> list[str]:
    plan, span = row.plan, row.seconds
    lines = [
        f"{row.backend}, {plan.devices:,} devices, {plan.rate:,.0f} check-ins/s asked (each device "
        f"every {plan.interval:,.1f} s: the 15-minute cadence at time factor "
        f"{plan.time_factor:,.2f})"
    ]
    if row.failure:
        return [*lines, f"  not measured: {row.failure}"]
    errors = ", ".join(f"{k} {v:,}" for k, v in sorted(row.errors.items())) or "none"
    per = row.per_cpu_second or math.nan
    with_db = row.per_cpu_second_with_db
    lines += [
        f"  measured seconds {plan.window_start:,}-{plan.window_end:,} of the run: "
        f"{row.sessions:,} sessions, {row.rate:,.1f}/s; {row.messages:,} messages; commands "
        f"received {row.received:,}, answered {row.answered:,}; session errors: {errors}; app "
        f"installs queued in the window's first {plan.interval:,.0f} s: {row.installs:,}",
        f"  latency (per-second percentiles): p50 {fmt_ms(row.p50)}, p99 {fmt_ms(row.p99)} "
        f"(median second), worst second's p99 {fmt_ms(row.p99_worst)}",
        f"  gateway CPU {row.gateway_cpu:,.1f} s ({row.gateway_cpu / span:.0%} of a core): "
        f"{per:,.1f} sessions per gateway CPU-second",
    ]
    if row.db_cpu is not None and with_db is not None:
        lines.append(
            f"  PostgreSQL CPU {row.db_cpu:,.1f} s ({row.db_cpu / span:.0%} of a core): "
            f"{with_db:,.1f} sessions per CPU-second of the gateway and PostgreSQL together"
        )
    lines += [
        f"  client CPU {row.client_cpu:,.1f} s ({row.client_cpu / span:.0%} of a core; its own "
        f"timeline says {row.client_cpu_timeline:,.1f} s), {row.saturated_seconds} seconds over "
        f"{SATURATED_CPU:.0%}; machine {fmt_number(row.machine_cores, '.2f')} of "
        f"{os.cpu_count()} cores busy (this script {row.bench_cpu / span:.2f}, other processes "
        f"{fmt_number(row.other_cores, '.2f')}), steal {fmt_number(row.steal, '.1%')}",
        f"  devices per core at a 15-minute check-in cadence: {per * CADENCE:,.0f} (= {per:,.1f} "
        f"sessions per gateway CPU-second x {CADENCE:g} s)"
        + ("" if with_db is None else f"; with PostgreSQL's CPU: {with_db * CADENCE:,.0f}"),
        "  whole run (ramp-up and drain included): "
        + ", ".join(
            f"{name} {v['sessions']:,} sessions / {v['received']:,} commands"
            for name, v in row.platforms.items()
        ),
        "  phases: " + ", ".join(f"{k} {v:,.0f} s" for k, v in row.phases.items()),
        f"  ledger: {ledger_line(row.ledger)}",
        *(f"  note: {n}" for n in row.notes),
    ]
    if not quick:
        problems = row.knee_problems()
        lines.append(
            "  knee: over it (" + "; ".join(problems) + "): lower --rate"
            if problems
            else "  knee: below it (the asked rate met, no session failed, p99 sane)"
        )
        if row.saturated_seconds:
            lines.append(
                f"  the simulator was above {SATURATED_CPU:.0%} of a core in "
                f"{row.saturated_seconds} seconds: there it measured itself"
            )
    return lines


def ledger_line(ledger: dict[str, Any] | None) -> str:
    if ledger is None:
        return "not checked"
    counts = ledger.get("counts", {})
    shown = ", ".join(f"{k} {v:,}" for k, v in counts.items() if v)
    problems = sum(counts.get(k, 0) for k in PROBLEMS)
    unreadable = sum(ledger.get("unreadable", {}).values())
    verdict = (
        "clean"
        if ledger.get("passed")
        else f"NOT CLEAN: {problems:,} problems, {unreadable:,} devices unreadable"
    )
    return f"{verdict} over {ledger.get('devices_checked', 0):,} devices ({shown})"


def fmt_number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    print()
    print(
        f"{'database':<11}{'devices':>9}{'asked/s':>9}{'sessions':>10}{'/s':>8}{'p50':>10}"
        f"{'p99':>10}{'gw CPU s':>10}{'per CPU-s':>11}{'devices/core':>14}{'client':>8}"
        f"  ledger"
    )
    for row in rows:
        head = f"{row.backend:<11}{row.plan.devices:>9,}{row.plan.rate:>9,.0f}"
        if row.failure:
            print(f"{head}  not measured")
            continue
        per = row.per_cpu_second
        print(
            f"{head}{row.sessions:>10,}{row.rate:>8,.0f}{fmt_ms(row.p50):>10}{fmt_ms(row.p99):>10}"
            f"{row.gateway_cpu:>10,.1f}{fmt_number(per, ',.1f'):>11}"
            f"{'-' if per is None else f'{per * CADENCE:,.0f}':>14}"
            f"{row.client_cpu / row.seconds:>8.0%}  " + ("clean" if row.clean else "NOT CLEAN")
        )


# --- main -----------------------------------------------------------------------------------


async def run_all(options: Options, stack: contextlib.ExitStack) -> list[Row]:
    dbs = Databases(options.tmp, stack)
    rows = []
    for backend in options.backends:
        for rate in options.rates:
            plan = Plan.make(options.devices, rate, options.duration, options.inventory_every)
            row = await measure(backend, plan, dbs, options)
            for line in describe(row, options.quick):
                print(line, flush=True)
            rows.append(row)
    return rows


def parse_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers") from None
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive numbers")
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arg = parser.add_argument
    arg("--devices", type=int, help="fleet size (100,000; quick 500)")
    arg(
        "--rate",
        type=parse_rates,
        help=f"check-ins a second the fleet asks for, or a comma-separated list, one run each "
        f"({DEFAULT_RATE:g}; quick 250)",
    )
    arg("--duration", type=float, help="seconds measured (two check-in intervals; quick 8)")
    arg("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    arg("--windows-share", type=float, default=WINDOWS_SHARE, help="the rest are Apple (0.4)")
    arg("--inventory-every", type=int, default=INVENTORY_EVERY, help="0: none (4)")
    arg("--inventory-bytes", type=int, default=INVENTORY_BYTES, help=f"({INVENTORY_BYTES:,})")
    arg("--install-per", type=int, default=INSTALL_PER, help="devices per app install, 0 none")
    arg("--seed", type=int, default=1, help="the fleet's seed (1)")
    arg("--grace", type=float, help="seconds the fleet may take to drain (120; quick 30)")
    arg("--keep", type=Path, help="copy each run's report and scenario here")
    arg("--quick", action="store_true", help="smoke run for CI, no knee verdict")
    args = parser.parse_args()
    quick = args.quick
    devices = args.devices or (500 if quick else 100_000)
    duration = args.duration if args.duration is not None else (8.0 if quick else None)
    grace = args.grace if args.grace is not None else (30.0 if quick else 120.0)
    if not 1 <= devices <= 1_000_000 or (duration is not None and duration <= 0) or grace < 0:
        parser.error("--devices must be 1 .. 1,000,000, --duration positive, --grace >= 0")
    if not 0 <= args.windows_share <= 1 or min(args.inventory_every, args.install_per) < 0:
        parser.error("--windows-share must be 0 .. 1, the workload's counts >= 0")
    with (
        tempfile.TemporaryDirectory(prefix="mdmgate-capacity-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        options = Options(
            devices=devices,
            rates=args.rate or ((250.0,) if quick else (DEFAULT_RATE,)),
            duration=duration,
            backends=("sqlite", "postgresql") if args.backend == "both" else (args.backend,),
            inventory_bytes=args.inventory_bytes,
            inventory_every=args.inventory_every,
            install_per=args.install_per,
            windows_share=args.windows_share,
            seed=args.seed,
            grace=grace,
            quick=quick,
            keep=args.keep,
            tmp=Path(tmp),
        )
        print(
            f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} CPUs; "
            f"{devices:,} devices ({1 - options.windows_share:.0%} Apple, "
            f"{options.windows_share:.0%} Windows), a check-in every {CADENCE:g} s of device "
            f"time; workload: {workload(options)}; the simulator shares this machine with the "
            "gateway",
            flush=True,
        )
        rows = trio.run(run_all, options, stack)
    print_table(rows)
    return 1 if any(r.failure or not r.clean for r in rows) else 0


def workload(options: Options) -> str:
    parts = []
    if options.inventory_every:
        parts.append(
            f"an inventory in every {options.inventory_every}th Windows session "
            f"({options.inventory_bytes:,} bytes)"
        )
    if options.install_per:
        parts.append(f"an app install per {options.install_per} devices")
    return ", ".join(parts) or "none"


if __name__ == "__main__":
    raise SystemExit(main())
