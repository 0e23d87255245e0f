"""Runs a simulated fleet against a gateway and checks the ledger afterwards.

The phases of a run:

1. the profiles and devices are built from the scenario (deterministic from its seed);
2. with an API token, the devices are registered (``POST /api/v1/devices``, in batches), or,
   with enrollment on, enroll at their first check-in (:mod:`.enrollment_phase`); the
   scenario's app installs are queued;
3. for ``duration`` seconds devices check in on their cadence (compressed by the time
   factor, with jitter; the first check-ins spread over the ramp-up), at most
   ``concurrency`` sessions at once and ``max_rate`` started per second; a push to the APNs
   stand-in wakes its Apple device soon; every Nth Windows session gets an inventory;
4. the fleet drains: devices with anything open at the gateway (or, without a token,
   anything unsettled in their own ledger) check in again, round after round, for at most
   ``grace`` seconds;
5. each device's deliveries are read from the admin API and held against the ledger
   (:func:`mdmgate.simulate.ledger.compare`).

Device behaviour draws from one generator seeded from the scenario: a generator per device
would cost more than the rest of the device, and the order of sessions follows the clock
anyway.
"""

from __future__ import annotations

import contextlib
import heapq
import importlib
import importlib.metadata
import math
import platform
import random
import resource
import tempfile
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import trio

from mdmgate import __version__
from mdmgate.simulate.checking import check_ledger
from mdmgate.simulate.ledger import GatewayReader, GatewayUnreadable, Ledger, LedgerResult
from mdmgate.simulate.registration import load_issuer, needs_identity, registration
from mdmgate.simulate.scenario import (
    APPLE_PLATFORMS,
    MAX_DEVICES,
    DeviceProfile,
    Scenario,
    build_profiles,
)
from mdmgate.simulate.stats import SIMULATOR, Stats
from mdmgate.simulate.transport import (
    AdminApi,
    ApiFailure,
    ClientCert,
    HttpClient,
    Reply,
    Target,
    TransportError,
    parse_target,
)

if TYPE_CHECKING:
    from mdmgate.simulate.enrollment_phase import EnrollmentPhase

__all__ = ["RunError", "RunOptions", "RunOutcome", "check_target", "run"]

#: Devices per registration request, and registration requests in flight.
REGISTER_BATCH = 500
REGISTER_PARALLEL = 4
#: Devices per workload command request.
WORKLOAD_BATCH = 1000
#: Deliveries read in parallel for the drain and the check.
FETCH_PARALLEL = 32
#: A pushed device checks in this soon (seconds, uniformly), as a real one would.
PUSH_DELAY = (0.05, 0.5)
#: Problems the runner itself had (admin API refusals...), each text kept once.
MAX_NOTES = 20
#: A device whose enrollment failed but may pass tries again at most this soon (seconds).
ENROLL_RETRY = 5.0


class RunError(Exception):
    """A run that cannot start as asked (bad target, unreachable gateway, refused token)."""


class Device(Protocol):
    id: str

    async def session(self, exchange: Any) -> None: ...


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What ``mdmgate simulate`` was asked to do."""

    target: str
    scenario: Scenario
    scenario_name: str = "built-in default"
    token: str | None = None
    cacert: str | None = None
    register: bool = True
    allow_hosts: tuple[str, ...] = ()
    #: Where the APNs stand-in listens (``HOST:PORT``; port 0: any), or None for none.
    apns_listen: str | None = "127.0.0.1:0"
    apns_topic: str | None = None
    #: A CA (certificate and key, PEM) issuing the devices' TLS client identities.
    device_ca: str | None = None
    #: An enrollment token value every device enrolls with (enrollment on, no token made).
    enrollment_token: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 30.0


@dataclass
class RunOutcome:
    stats: Stats
    ledger: LedgerResult | None
    meta: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    #: Devices that were to enroll and ended the run not enrolled.
    not_enrolled: int = 0

    @property
    def exit_status(self) -> int:
        unclean = self.ledger is not None and not self.ledger.clean
        return 1 if unclean or self.not_enrolled else 0


def check_target(url: str, allow_hosts: Sequence[str]) -> Target:
    """The target, if it may be loaded: loopback, or a host the user named."""
    try:
        target = parse_target(url)
    except ValueError as e:
        raise RunError(str(e)) from None
    allowed = {h.lower().strip("[]") for h in allow_hosts}
    if not target.is_loopback() and target.host.lower() not in allowed:
        raise RunError(
            f"target host {target.host!r} is not loopback: name it with --allow-host "
            f"{target.host} to load it (a simulated fleet is a load test)"
        )
    return target


def _raise_file_limit(wanted: int) -> None:
    # Each session in flight holds a socket; the default soft limit (often 1024) is lower
    # than a big run's concurrency.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class _Tracked:
    """The exchange a device session gets: tells the ledger whether each message (and the
    answers it carried) reached the gateway."""

    __slots__ = ("_device_id", "_exchange", "_ledger", "failed")

    def __init__(self, exchange: Any, ledger: Ledger, device_id: str) -> None:
        self._exchange = exchange
        self._ledger = ledger
        self._device_id = device_id
        self.failed = False

    async def __call__(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Reply:
        try:
            reply: Reply = await self._exchange(method, path, headers, body)
        except BaseException:
            self.failed = True
            self._ledger.exchange_failed(self._device_id)
            raise
        if 200 <= reply.status < 300:
            self._ledger.exchange_ok(self._device_id)
        else:
            # Refused or failed at the gateway: what it kept of the message is unknown.
            self.failed = True
            self._ledger.exchange_failed(self._device_id)
        return reply


class Run:
    """One run; :func:`run` is the way in."""

    def __init__(
        self, options: RunOptions, target: Target, *, progress: TextIO | None, tty: bool
    ) -> None:
        scenario = options.scenario
        self.options = options
        self.scenario = scenario
        self.progress = progress
        self.tty = tty
        self.stats = Stats()
        self.ledger = Ledger()
        self.notes: list[str] = []
        self.api_failures = 0
        self.rng = random.Random(scenario.seed ^ 0x5EED)
        self.client = HttpClient(
            target,
            cacert=options.cacert,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
        )
        self.api = (
            AdminApi(self.client, options.token, connections=FETCH_PARALLEL)
            if options.token
            else None
        )
        self.reader = GatewayReader(self.api, self.note, FETCH_PARALLEL) if self.api else None
        self.profiles = list(build_profiles(scenario))
        self.enrollment: EnrollmentPhase | None = None
        if scenario.enrollment.enabled or options.enrollment_token:
            self.enrollment = self._enrollment(options.enrollment_token)
        count = len(self.profiles)
        self.devices: list[Device] = []
        self.due = array("d", [math.inf]) * count
        self.sessions = array("I", [0]) * count
        self.busy = bytearray(count)
        self.woken = bytearray(count)
        # When the device's open inventory was queued (0: none open).
        self.inventory_at = array("d", [0.0]) * count
        self.index = {p.id: i for i, p in enumerate(self.profiles)}
        self.heap: list[tuple[float, int]] = []
        self.wake = trio.Event()
        self.slots = trio.Semaphore(scenario.run.concurrency)
        self.next_start = 0.0
        self.running = False
        self.by_token: dict[str, int] = {}
        self.inventory_due: list[str] = []
        self.cert_dir: tempfile.TemporaryDirectory[str] | None = None
        self.certs: dict[int, ClientCert] = {}
        self.identities: dict[int, Any] = {}
        self.issuer: Any = None
        if self.enrollment is None and any(needs_identity(p) for p in self.profiles):
            if options.device_ca is None:
                raise RunError(
                    "the scenario's devices show TLS client certificates (apple.auth = mtls or "
                    "windows.auth = certificate): give --device-ca, a CA the gateway trusts"
                )
            if not target.tls:
                raise RunError("TLS client certificates need an https:// target")
            try:
                self.issuer = load_issuer(options.device_ca)
            except ValueError as e:
                raise RunError(str(e)) from None
        self.apns_url: str | None = None
        self.apns: Any = None

    # -- setting up

    def _enrollment(self, token: str | None) -> EnrollmentPhase:
        from mdmgate.simulate import enrollment_phase as phase  # noqa: PLC0415 - --enroll only

        self.profiles = phase.enrolling_profiles(self.profiles)
        try:
            return phase.EnrollmentPhase(
                client=self.client,
                api=self.api,
                stats=self.stats,
                profiles=self.profiles,
                scenario=self.scenario,
                token=token,
                note=self.note,
            )
        except phase.EnrollmentUnusable as e:
            raise RunError(str(e)) from None

    def build_devices(self) -> None:
        topic = self.options.apns_topic
        platforms = {p.platform for p in self.profiles}
        # Each platform's module is loaded only for a fleet that has it.
        windows: Any = _device_class("windows") if "windows" in platforms else None
        apple: Any = _device_class("apple") if platforms & APPLE_PLATFORMS else None
        extra: dict[str, Any] = {"topic": topic} if topic else {}
        if self.issuer is not None:
            extra["issuer"] = self.issuer
        for index, profile in enumerate(self.profiles):
            if profile.platform == "windows":
                device = windows(profile, rng=self.rng, stats=self.stats, ledger=self.ledger)
            else:
                device = apple(profile, rng=self.rng, stats=self.stats, ledger=self.ledger, **extra)
                self.by_token[device.push_token] = index
            self.devices.append(device)

    def note(self, text: str) -> None:
        if text not in self.notes and len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    async def register(self) -> None:
        assert self.api is not None
        api = self.api
        batches = [
            self.profiles[i : i + REGISTER_BATCH]
            for i in range(0, len(self.profiles), REGISTER_BATCH)
        ]
        failures: list[str] = []

        async def worker(queue: Iterable[list[DeviceProfile]]) -> None:
            for batch in queue:
                try:
                    entries = [registration(p, self.identity_sha256(p)) for p in batch]
                    await api.call("POST", "/api/v1/devices", entries)
                except ApiFailure as e:
                    failures.append(str(e))
                    return

        queue = iter(batches)
        async with trio.open_nursery() as nursery:
            for _ in range(REGISTER_PARALLEL):
                nursery.start_soon(worker, queue)
        if failures:
            raise RunError(f"registering the fleet failed: {failures[0]}")

    async def queue_command(self, device_ids: list[str], command: dict[str, Any]) -> list[str]:
        """One command for many devices of one channel; the devices it may have been queued
        for (a refusal is noted, not fatal). Never retried: a request whose answer was lost
        may have queued it, and the same content twice is ambiguous to a Windows ledger."""
        queued: list[str] = []
        if self.api is None:
            return queued
        for start in range(0, len(device_ids), WORKLOAD_BATCH):
            batch = device_ids[start : start + WORKLOAD_BATCH]
            try:
                await self.api.call(
                    "POST", "/api/v1/commands", {"devices": batch, **command}, retry=False
                )
            except ApiFailure as e:
                self.api_failures += 1
                self.note(f"queuing workload: {e}")
                if e.status == 0:
                    queued.extend(batch)
            else:
                queued.extend(batch)
        return queued

    async def queue_installs(self, delay: float) -> None:
        every = self.scenario.workload.install_per
        if not every:
            return
        await trio.sleep(delay)
        work = self.scenario.workload
        chosen = self.profiles[::every]
        if self.enrollment is not None:
            # Commands go to devices the gateway knows: wait (within reason) for the fleet
            # to enroll.
            with trio.move_on_after(max(self.scenario.run.duration / 2 - delay, 0.0)):
                await self.enrollment.settled.wait()
            chosen = [p for p in chosen if self.known(self.index[p.id])]
        windows_ids = [p.id for p in chosen if p.platform == "windows"]
        apple_ids = [p.id for p in chosen if p.platform in APPLE_PLATFORMS]
        await self.queue_command(
            windows_ids,
            {
                "windows_app": {
                    "action": "hosted_install",
                    "scope": "user",
                    "package_family": work.windows_package_family,
                    "package_uri": work.windows_package_uri,
                }
            },
        )
        await self.queue_command(
            apple_ids,
            {
                "apple_app": {
                    "action": "install_store_app",
                    "itunes_store_id": work.apple_itunes_store_id,
                }
            },
        )

    async def flush_inventory(self) -> None:
        due, self.inventory_due = self.inventory_due, []
        if not due:
            return
        command = {"windows_app": {"action": "inventory", "scope": "device"}}
        now = trio.current_time()
        for device_id in await self.queue_command(due, command):
            self.inventory_at[self.index[device_id]] = now

    async def inventory_loop(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await trio.sleep(0.5)
                await self.flush_inventory()

    def identity(self, index: int) -> Any:
        """The device's TLS identity (an :class:`~.apple.DeviceIdentity`), made at first use:
        an Apple device keeps its own, a Windows device's is kept here."""
        device = self.devices[index] if index < len(self.devices) else None
        if device is not None and hasattr(device, "identity"):
            return device.identity
        found = self.identities.get(index)
        if found is None:
            found = self.identities[index] = self.issuer.issue(self.profiles[index].id)
        return found

    def identity_sha256(self, profile: DeviceProfile) -> str | None:
        if profile.platform in APPLE_PLATFORMS or not needs_identity(profile):
            return None
        sha256: str = self.identity(self.index[profile.id]).sha256
        return sha256

    def client_cert(self, index: int) -> ClientCert | None:
        if not needs_identity(self.profiles[index]):
            return None
        cert = self.certs.get(index)
        if cert is None:
            if self.cert_dir is None:
                self.cert_dir = tempfile.TemporaryDirectory(prefix="mdmgate-simulate-")
            path = Path(self.cert_dir.name) / f"{index}.pem"
            path.touch(mode=0o600)
            path.write_bytes(self.identity(index).pem())
            cert = self.certs[index] = ClientCert(str(path))
        return cert

    # -- the schedule

    def interval(self, index: int) -> float:
        scenario = self.scenario
        cadence = scenario.cadence
        base = cadence.of(self.profiles[index].platform) / scenario.run.time_factor
        return base * (1.0 + cadence.jitter * (2.0 * self.rng.random() - 1.0))

    def plan(self, index: int, at: float) -> None:
        self.due[index] = at
        heapq.heappush(self.heap, (at, index))
        if self.heap[0][1] == index:
            self.wake.set()

    def on_push(self, token: str) -> None:
        index = self.by_token.get(token)
        if index is None or not self.running:
            return
        if self.busy[index]:
            self.woken[index] = 1
            return
        soon = trio.current_time() + self.rng.uniform(*PUSH_DELAY)
        if soon < self.due[index]:
            self.plan(index, soon)

    async def schedule(self, nursery: trio.Nursery, stop_at: float) -> None:
        run = self.scenario.run
        start = trio.current_time()
        for index in range(len(self.devices)):
            self.due[index] = start + self.rng.random() * run.ramp_up
        self.heap = [(self.due[i], i) for i in range(len(self.devices))]
        heapq.heapify(self.heap)
        self.running = True
        spacing = 1.0 / run.max_rate if run.max_rate else 0.0
        self.next_start = start
        heap = self.heap
        while True:
            now = trio.current_time()
            if now >= stop_at:
                break
            if not heap or heap[0][0] > now:
                self.wake = trio.Event()
                with trio.move_on_at(min(heap[0][0] if heap else math.inf, stop_at)):
                    await self.wake.wait()
                continue
            at, index = heapq.heappop(heap)
            if at != self.due[index]:
                continue  # planned again since
            self.due[index] = math.inf
            if self.busy[index]:
                self.woken[index] = 1
                continue
            if spacing:
                begin = max(self.next_start, now)
                self.next_start = begin + spacing
                await trio.sleep_until(begin)
            await self.slots.acquire()
            self.busy[index] = 1
            nursery.start_soon(self.session, index, True)
        self.running = False

    async def session(self, index: int, again: bool) -> None:
        """One session of device ``index`` (its slot already taken); plans the next."""
        device = self.devices[index]
        profile = self.profiles[index]
        self.stats.active += 1
        started = trio.current_time()
        tracked: _Tracked | None = None
        checked_in = False
        try:
            if await self.enrolled(index):
                checked_in = True
                exchange = self.client.exchange(
                    new_connection=profile.new_connection, client_cert=self.client_cert(index)
                )
                tracked = _Tracked(exchange, self.ledger, device.id)
                try:
                    await device.session(tracked)
                finally:
                    await exchange.aclose()
        except Exception as e:  # a device bug must not end the run
            self.stats.session(profile.platform, 0.0, SIMULATOR)
            self.note(f"device {device.id}: {type(e).__name__}: {e}")
        finally:
            self.ledger.session_ended(device.id)
            self.stats.active -= 1
            self.busy[index] = 0
            self.slots.release()
        if self.enrollment is not None and self.known(index):
            self.enrollment.arrived(index)
        if not checked_in:
            assert self.enrollment is not None
            if again and self.running and not self.enrollment.gave_up(index):
                self.plan(index, trio.current_time() + min(self.interval(index), ENROLL_RETRY))
            return
        self.sessions[index] += 1
        if profile.platform == "windows" and self.scenario.workload.inventory_every:
            self.plan_inventory(index, started, tracked is not None and not tracked.failed)
        if again and self.running:
            now = trio.current_time()
            if self.woken[index]:
                self.woken[index] = 0
                self.plan(index, now + self.rng.uniform(*PUSH_DELAY))
            else:
                self.plan(index, now + self.interval(index))

    def known(self, index: int) -> bool:
        """Whether the gateway knows device ``index``: registered, or enrolled (an Apple
        device once its Authenticate and TokenUpdate were taken)."""
        phase = self.enrollment
        if phase is None:
            return True
        return phase.enrolled(index) and bool(getattr(self.devices[index], "enrolled", True))

    async def enrolled(self, index: int) -> bool:
        """Whether device ``index`` may check in: enrolled (now, if it had not yet), or in a
        run without enrollment."""
        phase = self.enrollment
        if phase is None or phase.enrolled(index):
            return True
        identity = await phase.enroll(index, self.devices[index])
        if identity is None:
            return False
        self.identities[index] = identity
        return True

    def plan_inventory(self, index: int, started: float, clean: bool) -> None:
        """An inventory with every Nth session, never two at once: a Windows ledger numbers
        the same content by the answers it saw reach the gateway (:mod:`.windows`), and one
        stored though its reply was lost would shift the next; so the next waits for a clean
        session that started after the last was queued."""
        device_id = self.profiles[index].id
        queued_at = self.inventory_at[index]
        if queued_at and started > queued_at and clean and not self.ledger.waiting(device_id):
            self.inventory_at[index] = queued_at = 0.0
        every = self.scenario.workload.inventory_every
        if not queued_at and (self.sessions[index] + 1) % every == 0:
            self.inventory_due.append(device_id)

    async def sessions_for(self, indexes: Sequence[int], deadline: float) -> None:
        """One session for each of these devices, ``concurrency`` at once, none started
        after ``deadline``."""
        async with trio.open_nursery() as nursery:
            for index in indexes:
                await self.slots.acquire()
                if trio.current_time() >= deadline:
                    self.slots.release()
                    break
                self.busy[index] = 1
                nursery.start_soon(self.session, index, False)

    # -- drain and check

    async def drain(self, grace: float) -> int:
        """Sessions until nothing is open, started for at most ``grace`` seconds (those in
        flight then finish: cut short, they would leave answers in doubt); how many rounds
        ran."""
        deadline = trio.current_time() + grace
        rounds = 0
        while trio.current_time() < deadline:
            if self.api is not None:
                try:
                    pending = sorted(
                        self.index[d]
                        for d in await self._reader().open_devices()
                        if d in self.index
                    )
                except GatewayUnreadable as e:
                    self.note(str(e))
                    break
            elif rounds < 3:
                # Without the gateway's view an answer in doubt stays in doubt: a few rounds
                # give redeliveries their chance, no more.
                pending = [
                    i for i in range(len(self.devices)) if self.ledger.waiting(self.profiles[i].id)
                ]
            else:
                break
            if not pending:
                break
            rounds += 1
            await self.sessions_for(pending, deadline)
        return rounds

    def _reader(self) -> GatewayReader:
        assert self.reader is not None
        return self.reader

    async def check(self) -> LedgerResult:
        if self.api is None:
            return LedgerResult()
        # A device that never enrolled has nothing at the gateway; it fails the run anyway.
        profiles = [p for i, p in enumerate(self.profiles) if self.known(i)]
        return await check_ledger(self._reader(), self.ledger, profiles, self.note)

    # -- the whole run

    async def preflight(self) -> None:
        try:
            stream = await self.client.connect(None)
        except TransportError as e:
            raise RunError(f"cannot reach the target: {e}") from None
        await trio.aclose_forcefully(stream)
        if self.api is not None:
            try:
                await self.api.call("GET", "/api/v1/devices?limit=1", retry=False)
            except ApiFailure as e:
                raise RunError(f"the admin API refused the token or failed: {e}") from None

    async def main(self) -> RunOutcome:
        options, scenario = self.options, self.scenario
        _raise_file_limit(scenario.run.concurrency * 2 + FETCH_PARALLEL + 256)
        await self.preflight()
        meta: dict[str, Any] = {
            "target": self.client.target.scheme
            + "://"
            + self.client.target.host_header
            + self.client.target.prefix,
            "scenario": options.scenario_name,
            "devices": len(self.profiles),
            "duration": scenario.run.duration,
            "versions": _versions(),
            "seed": scenario.seed,
            "time_factor": scenario.run.time_factor,
            "concurrency": scenario.run.concurrency,
            "platforms": _platform_counts(self.profiles),
            "registered": False,
        }
        self.build_devices()
        if self.enrollment is not None:
            # Before any task runs: a RunError here ends the run plainly (exit status 2).
            await self.prepare_enrollment()
        async with trio.open_nursery() as outer:
            if options.apns_listen is not None:
                self.apns_url = await self.start_apns(outer, options.apns_listen)
                meta["apns_stand_in"] = self.apns_url
                self.say(f"APNs stand-in at {self.apns_url} (the gateway's --apns-url)")
            if self.enrollment is None and self.api is not None and options.register:
                self.say(f"registering {len(self.profiles):,} devices")
                await self.register()
                meta["registered"] = True
            self.stats.start()
            live = self.live()
            if live is not None:
                outer.start_soon(live.run)
            outer.start_soon(self.ticker)
            async with trio.open_nursery() as fleet:
                inventory = trio.CancelScope()
                if self.api is not None and scenario.workload.inventory_every:
                    fleet.start_soon(self.inventory_loop, inventory)
                if self.api is not None and scenario.workload.install_per:
                    # Once the fleet has checked in (and the Apple devices have push tokens),
                    # the way apps get assigned to a running fleet.
                    delay = min(scenario.run.ramp_up + 1.0, scenario.run.duration / 2)
                    fleet.start_soon(self.queue_installs, delay)
                await self.schedule(fleet, trio.current_time() + scenario.run.duration)
                # Sessions in flight finish (bounded by the transport's timeouts).
                inventory.cancel()
            await self.flush_inventory()
            meta["drain_rounds"] = await self.drain(scenario.run.grace)
            self.stats.stop()
            if live is not None:
                live.final()
            result = await self.check() if self.api is not None else None
            outer.cancel_scope.cancel()
        if self.cert_dir is not None:
            self.cert_dir.cleanup()
        if self.api is not None:
            await self.api.aclose()
        return self.outcome(meta, result)

    async def prepare_enrollment(self) -> None:
        """Checks the gateway enrolls and makes the enrollment tokens (nothing to do for a
        token value the run was given)."""
        phase = self.enrollment
        assert phase is not None
        from mdmgate.simulate.enrollment_phase import EnrollmentUnusable  # noqa: PLC0415

        try:
            await phase.prepare()
        except EnrollmentUnusable as e:
            raise RunError(str(e)) from None
        made = len(phase.token_ids)
        self.say(
            f"{len(self.profiles):,} devices enroll at their first check-in"
            + (f" ({made} enrollment tokens made)" if made else "")
        )

    def outcome(self, meta: dict[str, Any], result: LedgerResult | None) -> RunOutcome:
        meta["api_failures"] = self.api_failures + (self.reader.failures if self.reader else 0)
        if self.apns is not None:
            meta["pushes"] = self.apns.pushes
        not_enrolled = 0
        if self.enrollment is not None:
            not_enrolled = sum(1 for i in range(len(self.profiles)) if not self.known(i))
            meta["enrollment"] = {**self.enrollment.summary(), "not_enrolled": not_enrolled}
            if not_enrolled:
                self.note(f"{not_enrolled:,} devices did not enroll: the run fails")
        if self.api is None:
            self.note("no API token: the ledger was not checked against the gateway")
        # The report shows them with the run: admin API refusals, simulator faults.
        meta["notes"] = list(self.notes)
        return RunOutcome(self.stats, result, meta, self.notes, not_enrolled)

    async def start_apns(self, nursery: trio.Nursery, listen: str) -> str:
        from mdmgate.simulate.apns import ApnsStandIn  # noqa: PLC0415

        host, _, port = listen.rpartition(":")
        stand_in = ApnsStandIn(
            self.on_push,
            tokens=frozenset(self.by_token),
            tls=False,
            host=host.strip("[]") or "127.0.0.1",
            port=int(port),
        )
        await nursery.start(stand_in.serve)
        self.apns = stand_in
        return stand_in.url

    def live(self) -> Any:
        if self.progress is None:
            return None
        from mdmgate.simulate.progress import Live  # noqa: PLC0415

        return Live(self.stats, self.progress, tty=self.tty)

    async def ticker(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.stats.tick()

    def say(self, text: str) -> None:
        if self.progress is not None:
            print(text, file=self.progress, flush=True)


def _device_class(module: str) -> Any:
    name = "SimulatedWindowsDevice" if module == "windows" else "SimulatedAppleDevice"
    return getattr(importlib.import_module(f"mdmgate.simulate.{module}"), name)


def _versions() -> dict[str, str]:
    """What ran the fleet: a run is compared with others by these."""
    return {
        "mdmgate": __version__,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "h11": importlib.metadata.version("h11"),
    }


def _platform_counts(profiles: Iterable[DeviceProfile]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for profile in profiles:
        counts[profile.platform] = counts.get(profile.platform, 0) + 1
    return counts


async def run(
    options: RunOptions, *, progress: TextIO | None = None, tty: bool = False
) -> RunOutcome:
    """Runs the fleet; :class:`RunError` when it cannot start (exit status 2)."""
    target = check_target(options.target, options.allow_hosts)
    devices = options.scenario.fleet.devices
    if not 1 <= devices <= MAX_DEVICES:
        raise RunError(f"devices must be 1 .. {MAX_DEVICES:,}, not {devices}")
    try:
        return await Run(options, target, progress=progress, tty=tty).main()
    except BaseExceptionGroup as group:
        # A task that found the run cannot go on (registration refused, say) ends it as
        # plainly as a check before the start does.
        refused, rest = group.split(RunError)
        if refused is not None and rest is None:
            raise _first(refused) from None
        raise


def _first(group: BaseExceptionGroup[RunError]) -> RunError:
    found = group.exceptions[0]
    return _first(found) if isinstance(found, BaseExceptionGroup) else found
