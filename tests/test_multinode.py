"""Several gateway nodes sharing one database (issue 15), with real ``mdmgate serve`` processes
(tests/cluster.py): three nodes on three ports, or one node with ``--workers 2``, on SQLite or
PostgreSQL.

The scenario: a fleet of 10,000 iPhones registered in bulk through the nodes in turn; Windows
devices whose every OMA-DM message goes to another node; Apple devices whose every request goes
to another node (TLS with their identity certificates); a roll-out of a VPP app paced in waves
over the fleet, with fewer licences than devices, during which one node is SIGKILLed and
started again. It must end with no broken session, no lost or duplicated delivery, every wave
run once, the licences granted exactly up to the pool, and every node previewing the same.

Then one focused test per finding of the issue's "Why" list, each of which failed with the
gateway as it was (one process's memory held the sessions and the fleet index, every process
ran every wave, a wave wrote back its stale copy of a notification, no PostgreSQL).

A paced roll-out sends one wave per minute: the nodes run with ``[testing] clock_scale`` (the
catalogue's clock runs faster, the same on every node), so a minute passes in two seconds.
Nothing here sleeps for timing: every wait polls for what it waits for, under ``fail_after``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mdmgate.server.app import ConfigError, load_config
from mdmgate.server.cluster import node_name, readiness_handler, scaled_clock
from mdmgate.server.types import Request
from tests.apns_server import OK, UNAVAILABLE, ApnsServer, running
from tests.cluster import Balancer, Cluster, Node, Pki, postgres_database
from tests.test_apple_e2e import TOPIC, AppleDevice
from tests.windows_emulator import WindowsDevice

#: The roll-out: devices, licences bought, devices per wave, and so the waves.
FLEET = 10_000
POOL = 7_500
PACE = 1_500
WAVES = -(-POOL // PACE)
#: The catalogue's clock runs this much faster: a paced minute passes in 2 s.
CLOCK_SCALE = 30.0
WINDOWS_DEVICES = 12
WINDOWS_COMMANDS = 3
APPLE_DEVICES = 6
APPLE_COMMANDS = 2
#: The whole scenario, startup included, must end within this.
SCENARIO_SECONDS = 240
PASSWORD = "multinode secret"

BACKENDS = ["sqlite", "postgresql"]


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of the parametrized backend (``backend``)."""
    backend: str = request.param
    if backend == "sqlite":
        return Cluster.sqlite_url(tmp_path / "cluster.db")
    return postgres_database(request.getfixturevalue("postgres_server"))


@dataclass(frozen=True)
class FastClock:
    """The nodes' catalogue clock (``[testing]``): ``scale`` times as fast from ``epoch``."""

    scale: float = CLOCK_SCALE
    epoch: float = field(default_factory=lambda: round(time.time(), 3))

    def now(self) -> float:
        return self.epoch + (time.time() - self.epoch) * self.scale

    def config(self, extra: str = "") -> str:
        """The nodes' config: ``extra`` and the clock."""
        return f"{extra}\n[testing]\nclock_scale = {self.scale}\nclock_epoch = {self.epoch}\n"


def rfc3339(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat()


@asynccontextmanager
async def explained(cluster: Cluster) -> AsyncIterator[None]:
    """On a failure, prints the tail of every node's log (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        print(cluster.logs(60))
        raise


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], within: float = 60) -> None:
    """Polls ``check`` until it holds; fails naming ``what`` after ``within`` seconds."""
    with trio.move_on_after(within):
        while not await check():
            await trio.sleep(0.05)  # a poll interval, not a wait for the outcome
        return
    raise AssertionError(f"{what}: not within {within:g} s")


async def register(cluster: Cluster, devices: list[dict[str, Any]], batch: int = 2000) -> None:
    """Registers devices in bulk through the nodes in turn."""
    for number, start in enumerate(range(0, len(devices), batch)):
        node = cluster.nodes[number % len(cluster.nodes)]
        async with cluster.admin(node) as admin:
            r = await admin.post("/api/v1/devices", json=devices[start : start + batch])
            assert r.status_code == 200, r.text


def fleet(count: int, prefix: str = "ios") -> list[dict[str, Any]]:
    """iPhones in four sub-organisations of ``/fleet``, supervised, on iOS 17.5."""
    regions = ("east", "west", "north", "south")
    return [
        {
            "id": f"{prefix}-{i:05d}",
            "platform": "ios",
            "org": f"/fleet/{regions[i % 4]}",
            "os_version": "17.5",
            "supervised": True,
        }
        for i in range(count)
    ]


async def create_vpp_app(admin: httpx.AsyncClient, app_id: str, licences: int) -> None:
    r = await admin.post(
        "/api/v1/apps",
        json={
            "id": app_id,
            "name": app_id.title(),
            "platform": "ios",
            "kind": "store",
            "identifier": f"com.acme.{app_id}",
            "itunes_store_id": 1234567890,
            "vpp": True,
            "licences": licences,
        },
    )
    assert r.status_code == 201, r.text
    r = await admin.post(f"/api/v1/apps/{app_id}/versions", json={"file_version": "2.0.0"})
    assert r.status_code in (200, 201), r.text


async def preview(admin: httpx.AsyncClient, app_id: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await admin.post(f"/api/v1/apps/{app_id}/preview", json={**body, "limit": 0})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return {"counts": answer["counts"], "licences": answer["licences"]}


async def previews(cluster: Cluster, app_id: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The same preview asked of every node running."""
    found = []
    for node in cluster.nodes:
        async with cluster.admin(node) as admin:
            found.append(await preview(admin, app_id, body))
    return found


async def converged_previews(
    cluster: Cluster, app_id: str, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Waits until every node previews ``expected`` (each node's index follows the store's
    change feed: it converges within a bounded lag)."""

    async def agree() -> bool:
        return all(p == expected for p in await previews(cluster, app_id, body))

    await wait_for("every node's preview", agree)


async def notification(admin: httpx.AsyncClient, notification_id: str) -> dict[str, Any]:
    r = await admin.get(f"/api/v1/install-notifications/{notification_id}")
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def deliveries(admin: httpx.AsyncClient, command_ids: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for command_id in command_ids:
        r = await admin.get(f"/api/v1/commands/{command_id}")
        assert r.status_code == 200, r.text
        found += r.json()["deliveries"]
    return found


async def licences(admin: httpx.AsyncClient, app_id: str) -> dict[str, Any]:
    r = await admin.get(f"/api/v1/apps/{app_id}/licences")
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def get_command(uri: str) -> dict[str, str]:
    return {
        "raw": f"<Get><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>"
    }


# --- Windows devices whose every message goes to another node -----------------------------------


@dataclass
class WindowsRun:
    """What one Windows device saw over its sessions."""

    device: WindowsDevice
    commands: dict[str, str]  # command id -> LocURI
    sessions: int = 0
    statuses: list[int] = field(default_factory=list)
    header_codes: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)


def windows_device(index: int) -> WindowsDevice:
    device = WindowsDevice(f"win-{index:02d}")
    device.username, device.secret = device.device_id, PASSWORD
    device.tree = {
        f"./Vendor/Acme/Probe{k}": ("chr", f"{device.device_id}-{k}")
        for k in range(WINDOWS_COMMANDS)
    }
    return device


def windows_registrations(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"win-{i:02d}",
            "platform": "windows",
            "org": "/windows",
            "auth": {"method": "md5", "username": f"win-{i:02d}", "secret": PASSWORD},
        }
        for i in range(count)
    ]


async def queue_windows_commands(cluster: Cluster, runs: list[WindowsRun]) -> None:
    for number, run in enumerate(runs):
        node = cluster.nodes[number % len(cluster.nodes)]
        async with cluster.admin(node) as admin:
            for uri in sorted(run.device.tree):
                r = await admin.post(
                    f"/api/v1/devices/{run.device.device_id}/commands", json=get_command(uri)
                )
                assert r.status_code == 202, r.text
                run.commands[r.json()["command_id"]] = uri


async def windows_sessions(balancer: Balancer, run: WindowsRun, fresh: bool) -> None:
    """Sessions until one hands out nothing more, every message to the next node."""
    transport = balancer.transport(fresh_connections=fresh)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway", timeout=60
    ) as client:
        while run.sessions < 8:
            before = len(run.device.received)
            log = await run.device.session(client)
            run.sessions += 1
            for exchange in log:
                run.statuses.append(exchange.status)
                reply = exchange.reply
                if reply is not None and reply.commands and reply.commands[0].cmd == "SyncHdr":
                    data = reply.commands[0].data
                    run.header_codes.append(data if isinstance(data, str) else "?")
            got_nothing = len(run.device.received) == before
            if got_nothing and run.header_codes and run.header_codes[-1] != "401":
                break
    run.nodes = transport.sent_to


async def check_windows(admin: httpx.AsyncClient, runs: list[WindowsRun], rotated: bool) -> None:
    broken = []
    for run in runs:
        got = Counter(target for _, target in run.device.received)
        states = {d["state"] for d in await deliveries(admin, list(run.commands))}
        # The first session may be challenged (the device had no nonce yet); none after.
        codes = run.header_codes[1:] if run.header_codes[:1] == ["401"] else run.header_codes
        if (
            any(code not in ("200", "212") for code in codes)
            or any(status != 200 for status in run.statuses)
            or got != Counter(run.commands.values())
            or states != {"acknowledged"}
        ):
            broken.append((run.device.device_id, dict(got), states, run.header_codes))
    assert broken == [], (
        f"{len(broken)} of {len(runs)} Windows devices had broken sessions: "
        "(device, commands received, delivery states, SyncHdr codes) "
        f"{broken[:3]}"
    )
    if rotated:
        for run in runs:
            # Every message went to another node than the one before it.
            assert all(a != b for a, b in zip(run.nodes, run.nodes[1:], strict=False)), run.nodes


# --- Apple devices alternating nodes ------------------------------------------------------------


@dataclass
class AppleRun:
    udid: str
    identity: Path
    token: bytes
    commands: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)


async def apple_exchanges(balancer: Balancer, pki: Pki, run: AppleRun) -> None:
    """Enrolls (Authenticate, TokenUpdate), then Idle -> command -> Acknowledged until the
    queue is empty, every request to the next node."""
    transport = balancer.transport(ssl_context=pki.client_context(run.identity))
    async with httpx.AsyncClient(
        transport=transport, base_url="https://gateway", timeout=60
    ) as client:
        phone = AppleDevice(client, run.udid, run.token)
        command = await phone.next_command()
        while command is not None:
            uuid_ = command["CommandUUID"]
            run.received.append(uuid_)
            command = await phone.next_command(
                "Acknowledged", CommandUUID=uuid_, QueryResponses={"OSVersion": "17.5"}
            )


async def enroll_apple(balancer: Balancer, pki: Pki, run: AppleRun) -> None:
    transport = balancer.transport(ssl_context=pki.client_context(run.identity))
    async with httpx.AsyncClient(
        transport=transport, base_url="https://gateway", timeout=60
    ) as client:
        await AppleDevice(client, run.udid, run.token).enroll()


async def queue_apple_commands(cluster: Cluster, runs: list[AppleRun]) -> None:
    for number, run in enumerate(runs):
        for k in range(APPLE_COMMANDS):
            node = cluster.nodes[(number + k) % len(cluster.nodes)]
            async with cluster.admin(node) as admin:
                r = await admin.post(
                    f"/api/v1/devices/{run.udid}/commands",
                    json={
                        "apple": {
                            "request_type": "DeviceInformation",
                            "payload": {"Queries": ["OSVersion"]},
                        }
                    },
                )
                assert r.status_code == 202, r.text
                run.commands.append(r.json()["command_id"])


async def check_apple(admin: httpx.AsyncClient, runs: list[AppleRun], apns: ApnsServer) -> None:
    for run in runs:
        assert sorted(run.received) == sorted(run.commands), run
        states = {d["state"] for d in await deliveries(admin, run.commands)}
        assert states == {"acknowledged"}, (run.udid, states)
        # Every enqueue woke the device, whichever node took it.
        assert apns.accepted(run.token.hex()), run.udid


# --- the scenario ---------------------------------------------------------------------------------


async def prepare(
    cluster: Cluster, tmp_path: Path, body: dict[str, Any]
) -> tuple[list[WindowsRun], list[AppleRun]]:
    """The fleet, the Windows and Apple devices, registered through the nodes in turn; the
    VPP app; the devices' commands queued and the Apple devices enrolled."""
    pki = cluster.pki
    assert pki is not None
    await register(cluster, fleet(FLEET))
    await register(cluster, windows_registrations(WINDOWS_DEVICES))
    apple_runs = []
    for i in range(APPLE_DEVICES):
        identity, _ = pki.identity(tmp_path, f"phone-{i}")
        apple_runs.append(AppleRun(f"udid-{i:02d}", identity, bytes([0xA0, i + 1, 0x5E, 0x11])))
    await register(
        cluster,
        [
            {"id": r.udid, "platform": "ios", "org": "/apple", "os_version": "17.5"}
            for r in apple_runs
        ],
    )
    async with cluster.admin(cluster.nodes[-1]) as admin:
        await create_vpp_app(admin, "field", POOL)
    before = {
        "counts": {"install": POOL, "no_licence": FLEET - POOL},
        "licences": {"free": POOL, "needed": POOL},
    }
    await converged_previews(cluster, "field", body, before)
    windows_runs = [WindowsRun(windows_device(i), {}) for i in range(WINDOWS_DEVICES)]
    await queue_windows_commands(cluster, windows_runs)
    async with trio.open_nursery() as nursery:
        for run in apple_runs:
            nursery.start_soon(enroll_apple, cluster.balancer, pki, run)
    await queue_apple_commands(cluster, apple_runs)
    return windows_runs, apple_runs


async def scenario(
    cluster: Cluster, tmp_path: Path, apns: ApnsServer, *, victim: Node, fresh: bool
) -> None:
    """The issue's multi-node scenario on a started cluster (see the module's docstring)."""
    pki = cluster.pki
    assert pki is not None
    balancer = cluster.balancer
    body = {"orgs": ["/fleet"]}
    windows_runs, apple_runs = await prepare(cluster, tmp_path, body)

    async def state() -> dict[str, Any]:
        # A client per question: the node it asks may have been killed since the last one.
        async with cluster.admin(cluster.nodes[0]) as admin:
            return await notification(admin, rollout)

    async with trio.open_nursery() as nursery:
        for wrun in windows_runs:
            nursery.start_soon(windows_sessions, balancer, wrun, fresh)
        for arun in apple_runs:
            nursery.start_soon(apple_exchanges, balancer, pki, arun)
        async with cluster.admin(cluster.nodes[0]) as admin:
            r = await admin.post(
                "/api/v1/apps/field/install-notifications", json={**body, "pace_per_minute": PACE}
            )
        assert r.status_code == 202, r.text
        rollout = r.json()["id"]

        async def second_wave() -> bool:
            return int((await state())["waves"]) >= 2

        async def finished() -> bool:
            return (await state())["state"] in ("done", "failed")

        # Mid-roll-out, one node dies (SIGKILL) and comes back. The balancer takes it out of
        # rotation first and lets its requests finish: a device whose request is cut by a
        # crash must resend it, which no gateway can prevent.
        await wait_for("the second wave", second_wave)
        assert not await finished(), "the roll-out ended before a node could be killed"
        await balancer.take_out(victim)
        cluster.kill(victim)
        await cluster.start(victim)
        balancer.put_back(victim)
        await wait_for("the roll-out's end", finished)

    async with cluster.admin(cluster.nodes[1 % len(cluster.nodes)]) as admin:
        done = await notification(admin, rollout)
        assert (done["state"], done["error"]) == ("done", None), done
        # Every wave ran once: counted once, queued once.
        assert done["waves"] == WAVES, done
        assert done["counts"] == {"queued": POOL, "no_licence": FLEET - POOL}, done
        sent = await deliveries(admin, done["command_ids"])
        devices = Counter(d["device_id"] for d in sent)
        assert len(devices) == POOL, "lost deliveries"
        assert max(devices.values()) == 1, "duplicated deliveries"
        assert {d["state"] for d in sent} == {"queued"}
        # Licences granted exactly up to the pool.
        assert await licences(admin, "field") == {"total": POOL, "assigned": POOL, "free": 0}
        # No broken session, nothing lost or offered twice.
        await check_windows(admin, windows_runs, rotated=not fresh)
        await check_apple(admin, apple_runs, apns)
    # Every node (the restarted one too) previews the same.
    after = await previews(cluster, "field", body)
    assert all(p == after[0] for p in after), after
    assert after[0]["licences"]["free"] == 0


@asynccontextmanager
async def apns_and_config(tmp_path: Path) -> AsyncIterator[tuple[ApnsServer, str, list[str]]]:
    """A local APNs server, the nodes' config pushing to it, and the serve arguments."""
    apns = ApnsServer()
    async with running(apns) as url:
        config = FastClock().config(f'[apns]\ntopic = "{TOPIC}"\nrate = 1000.0\n')
        yield apns, config, ["--apns-url", url]


@pytest.mark.parametrize("database", BACKENDS, indirect=True)
async def test_three_nodes_share_one_database(tmp_path: Path, database: str) -> None:
    pki = Pki.create(tmp_path / "pki")
    async with apns_and_config(tmp_path) as (apns, config, args):
        cluster = Cluster(tmp_path, database, nodes=3, config=config, pki=pki, args=args)
        with trio.fail_after(SCENARIO_SECONDS):
            async with cluster, explained(cluster):
                await scenario(cluster, tmp_path, apns, victim=cluster.nodes[1], fresh=False)


async def test_two_workers_share_one_sqlite_database(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki")
    database = Cluster.sqlite_url(tmp_path / "workers.db")
    async with apns_and_config(tmp_path) as (apns, config, args):
        cluster = Cluster(tmp_path, database, nodes=1, workers=2, config=config, pki=pki, args=args)
        with trio.fail_after(SCENARIO_SECONDS):
            async with cluster, explained(cluster):
                # One port, two processes: a new connection per message lets the kernel pick
                # the worker each time.
                await scenario(cluster, tmp_path, apns, victim=cluster.nodes[0], fresh=True)
                assert len(cluster.nodes[0].pids) >= 3  # the serve process and its 2 workers


# --- the "Why", one finding at a time ------------------------------------------------


async def test_why_windows_sessions_across_workers(tmp_path: Path) -> None:
    """`--workers 2`, the messages of one session reaching different workers: 40 of 40
    sessions were broken (the second worker had no session in memory)."""
    database = Cluster.sqlite_url(tmp_path / "why1.db")
    cluster = Cluster(tmp_path, database, nodes=1, workers=2)
    with trio.fail_after(120):
        async with cluster, explained(cluster):
            await register(cluster, windows_registrations(40))
            runs = [WindowsRun(windows_device(i), {}) for i in range(40)]
            await queue_windows_commands(cluster, runs)
            async with trio.open_nursery() as nursery:
                for run in runs:
                    nursery.start_soon(windows_sessions, cluster.balancer, run, True)
            async with cluster.admin() as admin:
                await check_windows(admin, runs, rotated=False)


@pytest.mark.parametrize("layout", ["two nodes", "two workers"])
async def test_why_roll_out_reaches_devices_registered_elsewhere(
    tmp_path: Path, layout: str
) -> None:
    """Devices registered through one process, an org-wide roll-out through another: 10 of
    210 devices were reached, and the previews of the two disagreed (210 vs 10)."""
    database = Cluster.sqlite_url(tmp_path / "why2.db")
    nodes, workers = (2, 1) if layout == "two nodes" else (1, 2)
    cluster = Cluster(tmp_path, database, nodes=nodes, workers=workers)
    first, second = cluster.nodes[0], cluster.nodes[-1]
    body = {"orgs": ["/fleet"]}
    with trio.fail_after(120):
        async with cluster, explained(cluster):
            devices = fleet(210)
            await register(cluster, devices[:10])
            async with cluster.admin(first) as admin:
                await create_vpp_app(admin, "notes", 1000)
            # Both processes build their index now (with workers, a new connection per preview
            # reaches a worker the kernel picks: 24 miss one of two once in 8 million).
            for _ in range(24 // len(cluster.nodes)):
                await previews(cluster, "notes", body)
            async with cluster.admin(first, limits=httpx.Limits(max_keepalive_connections=0)) as a:
                for start in range(10, 210, 10):
                    r = await a.post("/api/v1/devices", json=devices[start : start + 10])
                    assert r.status_code == 200, r.text
            expected = {
                "counts": {"install": 210},
                "licences": {"free": 1000, "needed": 210},
            }
            limits = httpx.Limits(max_keepalive_connections=0)
            async with cluster.admin(second, limits=limits) as admin:

                async def agree() -> bool:
                    return all([await preview(admin, "notes", body) == expected for _ in range(4)])

                await wait_for("the other process's preview of all 210 devices", agree, 20)
                r = await admin.post("/api/v1/apps/notes/install-notifications", json=body)
                assert r.status_code == 202, r.text
                assert r.json()["counts"] == {"queued": 210}


async def test_why_each_wave_runs_once(tmp_path: Path) -> None:
    """Every process ran the roll-out scheduler: a due wave ran on each of them, and its
    counts were added as often."""
    database = Cluster.sqlite_url(tmp_path / "why3.db")
    clock = FastClock()
    cluster = Cluster(tmp_path, database, nodes=3, config=clock.config())
    devices, pace = 3000, 1000
    with trio.fail_after(120):
        async with cluster, explained(cluster):
            await register(cluster, fleet(devices))
            async with cluster.admin() as admin:
                await create_vpp_app(admin, "maps", devices)
                # Due a (scaled) minute from now: every node's scheduler finds it due at once.
                r = await admin.post(
                    "/api/v1/apps/maps/install-notifications",
                    json={
                        "orgs": ["/fleet"],
                        "pace_per_minute": pace,
                        "at": rfc3339(clock.now() + 60),
                    },
                )
                assert r.status_code == 202, r.text
                rollout = r.json()["id"]
                assert r.json()["state"] == "scheduled"

                async def finished() -> bool:
                    return (await notification(admin, rollout))["state"] in ("done", "failed")

                await wait_for("the roll-out's end", finished)
                done = await notification(admin, rollout)
                assert done["waves"] == devices // pace, done
                assert done["counts"] == {"queued": devices}, done
                sent = await deliveries(admin, done["command_ids"])
                assert len(sent) == len({d["device_id"] for d in sent}) == devices


async def test_why_a_cancel_during_a_wave_is_kept(tmp_path: Path) -> None:
    """A cancel that landed while a wave ran was lost, even in one process: the wave wrote
    back its stale copy of the notification."""
    database = Cluster.sqlite_url(tmp_path / "why4.db")
    cluster = Cluster(tmp_path, database, nodes=1, config=FastClock().config())
    with trio.fail_after(180):
        async with cluster, explained(cluster):
            await register(cluster, fleet(FLEET))
            async with cluster.admin() as admin, cluster.admin() as canceller:
                overlapped = None
                for attempt in range(5):
                    app_id = f"cancel{attempt}"
                    await create_vpp_app(admin, app_id, FLEET)
                    overlapped = await _cancel_during_first_wave(admin, canceller, app_id)
                    if overlapped is not None:
                        break
                assert overlapped is not None, "no cancel landed while the first wave ran"
                rollout, answered = overlapped
                assert answered["state"] == "cancelled"
                # The wave that ran meanwhile has ended (its request was answered): the cancel
                # is still what is stored, so no later wave can run; and what the wave queued
                # is what it counted.
                stored = await notification(admin, rollout)
                assert stored["state"] == "cancelled", stored
                assert stored["waves"] <= 1, stored
                sent = await deliveries(admin, stored["command_ids"])
                assert len(sent) == stored["counts"].get("queued", 0), stored


async def _cancel_during_first_wave(
    admin: httpx.AsyncClient, canceller: httpx.AsyncClient, app_id: str
) -> tuple[str, dict[str, Any]] | None:
    """Submits a paced roll-out (its first wave runs inside the request) and cancels it from
    another connection as soon as it is stored. Returns its id and the cancel's answer when
    the cancel was answered before the submission (so during the wave), else ``None``."""
    submitted = trio.Event()
    found: list[tuple[str, dict[str, Any]]] = []

    async def submit() -> None:
        r = await admin.post(
            f"/api/v1/apps/{app_id}/install-notifications",
            json={"orgs": ["/fleet"], "pace_per_minute": FLEET // 2},
        )
        assert r.status_code == 202, r.text
        submitted.set()

    async def cancel() -> None:
        while not submitted.is_set():
            r = await canceller.get(f"/api/v1/apps/{app_id}/install-notifications")
            listed = r.json()["notifications"] if r.status_code == 200 else []
            if listed:
                ident = listed[0]["id"]
                r = await canceller.delete(f"/api/v1/install-notifications/{ident}")
                if not submitted.is_set() and r.status_code == 200:
                    found.append((ident, r.json()))
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit)
        nursery.start_soon(cancel)
    return found[0] if found else None


@pytest.mark.parametrize("database", BACKENDS, indirect=True)
async def test_why_concurrent_writers_through_two_nodes(tmp_path: Path, database: str) -> None:
    """The store's atomicity rested on SQLite's single writer: `take`, fact merges and the
    licence check of a roll-out were races for concurrent writers. Through two nodes at once:
    two roll-outs never grant more licences than the pool, and facts a device reports at once
    through two nodes all survive. (`take` is raced at the store's level, two connections and
    two processes, in tests/test_storage.py: over HTTP, a second session may legitimately be
    offered what an earlier session left unanswered.)"""
    pki = Pki.create(tmp_path / "pki")
    cluster = Cluster(tmp_path, database, nodes=2, pki=pki)
    a, b = cluster.nodes
    with trio.fail_after(180):
        async with cluster, explained(cluster):
            await _race_licences(cluster, a, b)
            await _race_facts(cluster, tmp_path, pki, a, b)


async def _race_licences(cluster: Cluster, a: Node, b: Node) -> None:
    await register(cluster, fleet(400, prefix="race"))
    async with cluster.admin(a) as admin:
        await create_vpp_app(admin, "scarce", 300)
    bodies = [{"orgs": ["/fleet/east", "/fleet/west"]}, {"orgs": ["/fleet/north", "/fleet/south"]}]

    async def notify(node: Node, body: dict[str, Any]) -> None:
        async with cluster.admin(node) as admin:
            r = await admin.post("/api/v1/apps/scarce/install-notifications", json=body)
            assert r.status_code == 202, r.text

    async with trio.open_nursery() as nursery:
        nursery.start_soon(notify, a, bodies[0])
        nursery.start_soon(notify, b, bodies[1])
    async with cluster.admin(b) as admin:
        held = await licences(admin, "scarce")
        assert held["assigned"] <= held["total"] == 300, held
        r = await admin.get("/api/v1/apps/scarce/install-notifications")
        listed = r.json()["notifications"]
        queued = sum(n["counts"].get("queued", 0) for n in listed)
        assert queued == held["assigned"], (queued, held)


async def _race_facts(cluster: Cluster, tmp_path: Path, pki: Pki, a: Node, b: Node) -> None:
    phones = 12
    runs = []
    for i in range(phones):
        identity, _ = pki.identity(tmp_path, f"racer-{i}")
        runs.append(AppleRun(f"racer-{i:02d}", identity, bytes([0xB0, i + 1])))
    await register(cluster, [{"id": r.udid, "platform": "ios", "org": "/apple"} for r in runs])
    for run in runs:
        await enroll_apple(cluster.balancer, pki, run)

    async def token_update(run: AppleRun, node: Node) -> None:
        async with httpx.AsyncClient(
            base_url=node.base_url, verify=pki.client_context(run.identity), timeout=60
        ) as client:
            r = await AppleDevice(client, run.udid, run.token).checkin(
                {
                    "MessageType": "TokenUpdate",
                    "Topic": TOPIC,
                    "Token": run.token + b"\x99",
                    "PushMagic": f"new-magic-{run.udid}",
                }
            )
            assert r.status_code == 200, r.text

    async def ddm_status(run: AppleRun, node: Node) -> None:
        async with httpx.AsyncClient(
            base_url=node.base_url, verify=pki.client_context(run.identity), timeout=60
        ) as client:
            status = {
                "StatusItems": {"softwareupdate": {"install-state": "none", "pending-version": {}}},
                "Errors": [],
            }
            r = await AppleDevice(client, run.udid, run.token).checkin(
                {
                    "MessageType": "DeclarativeManagement",
                    "Endpoint": "status",
                    "Data": json.dumps(status).encode(),
                }
            )
            assert r.status_code == 200, r.text

    async with trio.open_nursery() as nursery:
        for run in runs:
            nursery.start_soon(token_update, run, a)
            nursery.start_soon(ddm_status, run, b)
    async with cluster.admin(a) as admin:
        for run in runs:
            facts = (await admin.get(f"/api/v1/devices/{run.udid}")).json()["facts"]
            assert facts["apns"]["push_magic"] == f"new-magic-{run.udid}", facts
            assert "ddm_status" in facts, facts


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_why_postgresql_serves_several_nodes(tmp_path: Path, database: str) -> None:
    """There was no PostgreSQL backend, so nothing ran on more than one machine."""
    cluster = Cluster(tmp_path, database, nodes=2)
    a, b = cluster.nodes
    with trio.fail_after(120):
        async with cluster, explained(cluster):
            async with cluster.admin(a) as admin:
                r = await admin.post(
                    "/api/v1/devices", json=[{"id": "pg-win", "platform": "windows", "org": "/"}]
                )
                assert r.status_code == 200, r.text
            async with cluster.admin(b) as admin:
                r = await admin.post(
                    "/api/v1/commands",
                    json={"devices": ["pg-win"], **get_command("./DevDetail/SwV")},
                )
                assert r.status_code == 202, r.text
                command_id = r.json()["command_id"]
                assert (await admin.get("/readyz")).text == "ready\n"
            async with cluster.admin(a) as admin:
                (found,) = await deliveries(admin, [command_id])
                assert (found["device_id"], found["state"]) == ("pg-win", "queued")


# --- the cluster's pieces ---------------------------------------------------------------------


async def metric(cluster: Cluster, node: Node, name: str) -> float | None:
    async with cluster.admin(node) as admin:
        text = (await admin.get("/metrics")).text
    found = re.search(rf'^{name}{{node="{re.escape(node.name)}"}} (\S+)$', text, re.M)
    return float(found[1]) if found else None


async def test_health_readiness_and_node_labels(tmp_path: Path) -> None:
    database = Cluster.sqlite_url(tmp_path / "health.db")
    cluster = Cluster(tmp_path, database, nodes=2)
    with trio.fail_after(90):
        async with cluster, explained(cluster):
            for node in cluster.nodes:
                async with cluster.admin(node) as admin:
                    assert (await admin.get("/healthz")).text == "ok\n"
                    r = await admin.get("/readyz", headers={"authorization": ""})
                    assert (r.status_code, r.text) == (200, "ready\n")
                    text = (await admin.get("/metrics")).text
                samples = [s for s in text.splitlines() if s and not s.startswith("#")]
                labelled = re.compile(rf'[a-z_:]+\{{node="{re.escape(node.name)}"[,}}]')
                assert samples
                assert all(labelled.match(s) for s in samples), samples

            async def all_seen() -> bool:
                return all(
                    [await metric(cluster, n, "mdmgate_cluster_nodes") == 2 for n in cluster.nodes]
                )

            await wait_for("both nodes' leases", all_seen)
            # A SIGKILLed node is gone from /healthz; the other keeps answering.
            cluster.kill(cluster.nodes[1])
            async with cluster.admin(cluster.nodes[0]) as admin:
                assert (await admin.get("/readyz")).status_code == 200
            # Stopped cleanly, a node drains and exits 0.
            assert await cluster.stop(cluster.nodes[0]) == 0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_nodes_started_at_once_on_a_new_database(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Three nodes started together on an empty database, five times (a race is not lost
    every time): one of them creates the schema, the others wait for it and use it (none
    fails on a schema half made, or made twice)."""
    for attempt in range(5):
        root = tmp_path / f"attempt-{attempt}"
        if backend == "sqlite":
            url = Cluster.sqlite_url(root / "new.db")
        else:
            url = postgres_database(request.getfixturevalue("postgres_server"))
        cluster = Cluster(root, url, nodes=3, together=True)
        with trio.fail_after(90):
            async with cluster, explained(cluster):
                await register(cluster, fleet(30))
                for node in cluster.nodes:
                    async with cluster.admin(node) as admin:
                        assert (await admin.get("/readyz")).status_code == 200


async def test_apns_budget_is_shared_by_the_cluster(tmp_path: Path) -> None:
    """`[apns] rate` is the whole cluster's budget: three nodes push at a third of it each,
    together at most the budget; every wake reaches APNs, whichever node queued it, and pushes
    APNs refused for a while are tried again."""
    rate, devices = 30.0, 60
    apns = ApnsServer()
    async with running(apns) as url:
        config = f'dev = true\n[apns]\ntopic = "{TOPIC}"\nrate = {rate}\n'
        cluster = Cluster(
            tmp_path,
            Cluster.sqlite_url(tmp_path / "apns.db"),
            nodes=3,
            config=config,
            args=["--apns-url", url],
        )
        with trio.fail_after(120):
            async with cluster, explained(cluster):

                async def shared() -> bool:
                    for node in cluster.nodes:
                        if await metric(cluster, node, "mdmgate_apns_push_rate") != rate / 3:
                            return False
                    return True

                await wait_for("every node at its share", shared)
                tokens = {f"apns-{i:02d}": bytes([0xC0, i]) for i in range(devices)}
                for token in list(tokens.values())[:5]:
                    apns.script(token.hex(), UNAVAILABLE, UNAVAILABLE, OK)
                transport = cluster.balancer.transport()
                async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                    for udid, token in tokens.items():
                        phone = AppleDevice(client, udid, token)
                        await phone.enroll()
                started = trio.current_time()

                async def enqueue(node: Node, udids: list[str]) -> None:
                    async with cluster.admin(node) as admin:
                        r = await admin.post(
                            "/api/v1/commands",
                            json={
                                "devices": udids,
                                "apple": {"request_type": "ProfileList", "payload": {}},
                            },
                        )
                        assert r.status_code == 202, r.text

                ids = list(tokens)
                async with trio.open_nursery() as nursery:
                    for k, node in enumerate(cluster.nodes):
                        nursery.start_soon(enqueue, node, ids[k::3])

                async def all_woken() -> bool:
                    return all(apns.accepted(t.hex()) for t in tokens.values())

                await wait_for("every device's push", all_woken)
    # Together the nodes kept to the budget: at most `rate` attempts in any second (plus the
    # first slot of each node's bucket).
    times = sorted(p.at for p in apns.pushes if p.at >= started)
    busiest = max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times))
    assert busiest <= rate + 3, busiest


async def test_readiness_answers_503_when_the_database_does_not() -> None:
    class Store:
        def __init__(self) -> None:
            self.mode = "ok"

        async def get_device(self, device_id: str) -> None:
            if self.mode == "slow":
                await trio.sleep_forever()
            if self.mode == "down":
                raise ConnectionError("connection refused")

    store, draining = Store(), [False]
    ready = readiness_handler(store, timeout=0.05, draining=lambda: draining[0])  # type: ignore[arg-type]
    request = Request("GET", "/readyz", "", (), b"", "1.1", "127.0.0.1:1")
    answers = []
    for mode, drain in (("ok", False), ("slow", False), ("down", False), ("ok", True)):
        store.mode, draining[0] = mode, drain
        response = await ready(request)
        answers.append((response.status, response.body.decode()))
    assert answers == [
        (200, "ready\n"),
        (503, "not ready: the database did not answer in 0.05 s\n"),
        (503, "not ready: the database failed (ConnectionError)\n"),
        (503, "not ready: draining\n"),
    ]


def test_cluster_config_keys(tmp_path: Path) -> None:
    config = tmp_path / "mdmgate.toml"
    config.write_text('node_name = "gw-1"\n[testing]\nclock_scale = 30.0\nclock_epoch = 1.5\n')
    loaded = load_config(str(config), {})
    assert (loaded.node_name, loaded.testing_clock_scale, loaded.testing_clock_epoch) == (
        "gw-1",
        30.0,
        1.5,
    )
    assert load_config(str(config), {"node_name": "gw-2"}).node_name == "gw-2"
    assert node_name("gw-1", 3) == "gw-1/3"
    clock = scaled_clock(60.0, time.time() - 1.0)
    assert 59.0 < clock() - (time.time() - 1.0) < 62.0
    for text, needle in (
        ('node_name = ""\n', "node_name must be"),
        ("[testing]\nclock_scale = 30.0\n", "needs clock_epoch"),
        ("[testing]\nclock_scale = 0\nclock_epoch = 1.0\n", "clock_scale must be"),
        ("[testing]\ntick = 1\n", "unknown testing keys: tick"),
    ):
        config.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            load_config(str(config), {})
