"""Two gateway nodes on one store: two :class:`Catalogue` instances (with their admin APIs),
each with its own index, scheduler and node id, on every store backend (a backend whose
database can be shared gives the second node its own store on it, as another process
would have). What one node is told, the other answers from the store's change feed; each
due wave runs on one node, once; a cancel is never undone by a wave.

Time is Trio's :class:`~trio.testing.MockClock` (:func:`virtual_clock`) where leases and
schedules matter; the wall clock the nodes read follows it. It jumps to the next deadline
once every task waits, but never while a store call is in flight (:func:`virtual_clock`: a
task waiting for SQLite's writer thread or PostgreSQL's socket waits too, and a jump then
would let a lease expire, or a connection time out, in no real time at all); the tests
wait for writes, not for time (:func:`until`). Where a test needs a wave held between its
read and its write, a node's store holds the write until the test lets it go.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from mdmgate.catalogue.model import CommandBatch, LicenceGrant, Notification
from mdmgate.storage import LicencesExhausted, RevisionConflict, Store, StoreError
from tests.stores import BACKENDS, SHARED_BACKENDS, open_backend, open_peer
from tests.test_catalogue_scenarios import STORE_APP, Clock, Console, ios, store_app

BASE = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)


#: Store calls in flight (through :class:`Counted`).
IN_FLIGHT = [0]


@pytest.fixture
def virtual_clock() -> trio.testing.MockClock:
    """A mock clock that jumps when every task has waited 5 ms (real), unless a store call
    is in flight: then it looks again 5 ms later."""
    clock = trio.testing.MockClock(autojump_threshold=0.005)
    jump = clock._autojump  # (trio's autojump hook: private, and tested here)

    def autojump() -> None:
        if IN_FLIGHT[0] == 0:
            jump()

    clock._autojump = autojump  # type: ignore[method-assign]
    return clock


class Counted:
    """A store whose calls count in :data:`IN_FLIGHT` (but ``wait_for_changes``, which
    waits for others)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if name == "wait_for_changes" or not inspect.iscoroutinefunction(found):
            return found

        async def call(*args: Any, **kwargs: Any) -> Any:
            IN_FLIGHT[0] += 1
            try:
                return await found(*args, **kwargs)
            finally:
                IN_FLIGHT[0] -= 1

        return call


async def soon(event: trio.Event) -> None:
    """Waits for ``event``, failing (not hanging) when it does not come within 10 minutes
    of virtual time."""
    with trio.fail_after(600):
        await event.wait()


class Writes:
    """Wakes whoever waits for the nodes' writes (waves and notification updates)."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def note(self) -> None:
        self.event.set()
        self.event = trio.Event()


async def until(condition: Callable[[], Awaitable[bool]], writes: Writes, *, within: float) -> None:
    """Waits, looking again after each write, until ``condition`` holds; fails after
    ``within`` virtual seconds."""
    with trio.fail_after(within):
        while True:
            event = writes.event
            if await condition():
                return
            await event.wait()


class VirtualClock(Clock):
    """The wall clock as Trio's (mock) clock moves it, ``rate`` times as fast (a test
    deployment may run its catalogue's clock faster)."""

    def __init__(self, start: dt.datetime, *, rate: float = 1.0) -> None:
        super().__init__(start)
        self.origin = trio.current_time()
        self.rate = rate

    def __call__(self) -> float:
        return self.value + (trio.current_time() - self.origin) * self.rate

    def at(self, seconds: float) -> str:
        """The RFC 3339 time ``seconds`` from now."""
        return dt.datetime.fromtimestamp(self() + seconds, dt.UTC).isoformat()


class NodeStore:
    """A node's view of the store: records what the node's scheduler and index do, and
    can hold a wave's write (``gate``), make a node die in it (``die``: ``before_write``,
    ``after_write`` or ``partly_written``), fail the feed (``fail_changes``) or hold a
    cancel between its read and its write (``cancel_gate``)."""

    def __init__(self, store: Store, writes: Writes) -> None:
        self._store = store
        self.writes = writes
        #: (wall time, notification id, expected rev) of every wave write begun.
        self.attempts: list[tuple[float, str, int | None]] = []
        #: (wall time, notification id, deliveries made) of every wave write that landed.
        self.written: list[tuple[float, str, int]] = []
        self.conflicts = 0
        #: Wave writes refused for want of licences (another roll-out took them meanwhile).
        self.refused = 0
        #: (name, now, until, won) of every lease claim.
        self.claims: list[tuple[str, float, float, bool]] = []
        self.device_reads = 0
        self.reached = trio.Event()
        self.landed = trio.Event()
        self.gate: trio.Event | None = None
        self.die: str | None = None
        self.fail_changes = 0
        self.cancel_gate: trio.Event | None = None
        self.cancel_reached = trio.Event()
        #: Answer every lease claim "held by another node" (as if this node had stalled
        #: past its lease and another had claimed it).
        self.lose_leases = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def as_store(self) -> Store:
        return cast(Store, self)

    async def fan_out(
        self,
        batches: list[CommandBatch],
        *,
        licences: LicenceGrant | None = None,
        notification: Notification | None = None,
        expected_rev: int | None = None,
        events: Any = (),
    ) -> int:
        assert notification is not None, "a wave writes its notification with its deliveries"
        self.attempts.append((notification.updated_at, notification.id, expected_rev))
        if self.die == "partly_written":
            # What a node without the atomic write could leave: some deliveries, no counts.
            for batch in batches:
                await self._store.enqueue(
                    batch.command_id, batch.kind, batch.body, list(batch.device_ids)[:3]
                )
        self.reached.set()
        if self.die in ("before_write", "partly_written"):
            await trio.sleep_forever()
        if self.gate is not None:
            await self.gate.wait()
        try:
            made = await self._store.fan_out(
                batches,
                licences=licences,
                notification=notification,
                expected_rev=expected_rev,
                events=events,
            )
        except RevisionConflict:
            self.conflicts += 1
            raise
        except LicencesExhausted:
            self.refused += 1
            raise
        self.written.append((notification.updated_at, notification.id, made))
        self.landed.set()
        self.writes.note()
        if self.die == "after_write":
            await trio.sleep_forever()  # the write landed; its answer never came
        return made

    async def put_notification(
        self, notification: Notification, *, expected_rev: int | None = None, events: Any = ()
    ) -> Notification:
        if notification.state == "cancelled" and self.cancel_gate is not None:
            self.cancel_reached.set()
            await self.cancel_gate.wait()
        try:
            put = await self._store.put_notification(
                notification, expected_rev=expected_rev, events=events
            )
        except RevisionConflict:
            self.conflicts += 1
            raise
        self.writes.note()
        return put

    async def claim_lease(self, name: str, holder: str, *, now: float, until: float) -> bool:
        if self.lose_leases:
            self.claims.append((name, now, until, False))
            return False
        won = await self._store.claim_lease(name, holder, now=now, until=until)
        self.claims.append((name, now, until, won))
        return won

    async def changes(self, after: int, limit: int) -> Any:
        if self.fail_changes:
            self.fail_changes -= 1
            raise StoreError("the database went away")
        return await self._store.changes(after, limit)

    async def get_devices(self, device_ids: Any) -> Any:
        self.device_reads += 1
        return await self._store.get_devices(device_ids)

    async def list_devices(self, after: str | None, limit: int) -> Any:
        self.device_reads += 1
        return await self._store.list_devices(after, limit)


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Counts as a store call in flight (opening and closing stores)."""
    IN_FLIGHT[0] += 1
    try:
        yield
    finally:
        IN_FLIGHT[0] -= 1


@pytest.fixture(params=BACKENDS)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Store]]:
    """The store of node A and of node B: one store (memory), or two on one database."""
    with busy():
        first = await open_backend(request.param, tmp_path)
        second = first
        if request.param in SHARED_BACKENDS:
            second = await open_peer(request.param, tmp_path)
    counted = cast(Store, Counted(first))
    yield [counted, counted if second is first else cast(Store, Counted(second))]
    with busy():
        if second is not first:
            await second.aclose()
        await first.aclose()


def nodes(stores: list[Store], clock: Clock) -> tuple[Console, Console, NodeStore, NodeStore]:
    writes = Writes()
    seen = [NodeStore(s, writes) for s in stores]
    a = Console(seen[0].as_store(), clock, node_id="node-a")
    b = Console(seen[1].as_store(), clock, node_id="node-b")
    return a, b, seen[0], seen[1]


async def deliveries(store: Store, command_ids: list[str]) -> list[str]:
    """Device ids of every delivery of the commands (a device twice if queued twice)."""
    out: list[str] = []
    for command_id in command_ids:
        status = await store.command_status(command_id)
        assert status is not None
        out += [d.device_id for d in status.deliveries]
    return out


async def stored(store: Store, notification_id: str) -> Notification:
    found = await store.get_notification(notification_id)
    assert found is not None
    return found


# --- the index follows the change feed -------------------------------------------------------


async def test_a_device_registered_on_one_node_is_in_the_others_next_preview(
    stores: list[Store],
) -> None:
    clock = Clock(BASE)
    a, b, _, _ = nodes(stores, clock)
    await a.devices(*(ios(f"d{i:03}", "/acme/tokyo") for i in range(10)))
    await store_app(a, licences=500)
    await a.ok("POST", "/apps/chat/versions", {"file_version": "2.0"}, 201)
    org_wide = {"orgs": ["/acme"], "limit": 0}
    for node in (a, b):  # both indexes built
        assert (await node.ok("POST", "/apps/chat/preview", org_wide))["counts"] == {"install": 10}

    # Through A: 200 devices in an organisation B has never seen, and 5 inventories written
    # straight to the store (as a device endpoint does, telling no catalogue at all).
    await a.devices(*(ios(f"e{i:03}", "/acme/osaka") for i in range(200)))
    for i in range(5):
        chat = [{"identifier": "com.example.chat", "version": "2.0"}]
        assert await stores[0].merge_facts(f"d{i:03}", {"apps": chat})
    expected = {"install": 205, "already_at_version": 5}
    assert (await b.ok("POST", "/apps/chat/preview", org_wide))["counts"] == expected
    assert (await a.ok("POST", "/apps/chat/preview", org_wide))["counts"] == expected

    sent = await b.ok("POST", "/apps/chat/install-notifications", {"orgs": ["/acme"]}, 202)
    assert sent["counts"] == {"queued": 205, "already_at_version": 5}
    reached = await deliveries(stores[0], sent["command_ids"])
    assert len(reached) == len(set(reached)) == 205

    # Licences granted by B's roll-out, one released through A: B's index knows both.
    one = {"devices": ["e000"], "limit": 0}
    assert (await b.ok("POST", "/apps/chat/preview", one))["licences"]["needed"] == 0
    await a.ok("POST", "/apps/chat/licences/release", {"devices": ["e000"]})
    assert (await b.ok("POST", "/apps/chat/preview", one))["licences"] == {
        "free": 296,
        "needed": 1,
    }
    # An organisation created through A, and a device moved into it.
    await a.ok("POST", "/orgs", {"path": "/acme/kyoto", "name": "Kyoto"}, 201)
    await a.devices(ios("e001", "/acme/kyoto"))
    orgs = {o["path"]: o for o in (await b.ok("GET", "/orgs"))["orgs"]}
    assert (orgs["/acme/kyoto"]["name"], orgs["/acme/kyoto"]["devices"]) == ("Kyoto", 1)
    kyoto = {"orgs": ["/acme/kyoto"], "limit": 5}
    assert [d["id"] for d in (await b.ok("POST", "/apps/chat/preview", kyoto))["devices"]] == [
        "e001"
    ]
    # A new app through A: B evaluates it from every inventory.
    other = {**STORE_APP, "id": "chat2", "identifier": "com.example.chat2", "licences": 500}
    await a.ok("POST", "/apps", other, 201)
    await a.ok("POST", "/apps/chat2/versions", {"file_version": "2.0"}, 201)
    assert (await b.ok("POST", "/apps/chat2/preview", org_wide))["counts"] == {"install": 210}


async def test_the_follower_keeps_the_index_warm(
    stores: list[Store], virtual_clock: trio.testing.MockClock
) -> None:
    clock = VirtualClock(BASE)
    a, b, _, b_seen = nodes(stores, clock)
    await store_app(a, licences=500)
    await a.ok("POST", "/apps/chat/versions", {"file_version": "2.0"}, 201)
    async with trio.open_nursery() as nursery:
        await nursery.start(b.catalogue.follow)
        for batch in range(3):
            await a.devices(*(ios(f"d{batch}-{i:02}", f"/acme/{batch}") for i in range(40)))
            start = trio.current_time()
            # Applied without a question to B (B is told nothing: the feed wakes it, or its
            # poll of another connection's writes does), within the poll interval.
            with trio.fail_after(1.0):
                while b.catalogue.cursor < await stores[0].last_change():
                    await trio.sleep(0.01)
            assert trio.current_time() - start <= 0.1
        reads = b_seen.device_reads
        preview = await b.ok("POST", "/apps/chat/preview", {"all_devices": True, "limit": 0})
        assert preview["counts"] == {"install": 120}
        assert b_seen.device_reads == reads  # the question found nothing left to read

        # The feed fails for a while: the follower carries on once it is back.
        b_seen.fail_changes = 3
        await a.devices(ios("late", "/acme/late"))
        with trio.fail_after(30):
            while b.catalogue.cursor < await stores[0].last_change():
                await trio.sleep(0.25)
        assert b_seen.fail_changes == 0
        nursery.cancel_scope.cancel()
    preview = await b.ok("POST", "/apps/chat/preview", {"orgs": ["/acme/late"], "limit": 0})
    assert preview["counts"] == {"install": 1}


# --- each wave runs once -----------------------------------------------------------------------


async def test_every_wave_runs_once_with_both_schedulers_running(
    stores: list[Store], virtual_clock: trio.testing.MockClock
) -> None:
    clock = VirtualClock(BASE)
    a, b, a_seen, b_seen = nodes(stores, clock)
    await a.devices(
        *(ios(f"a{i:02}", "/acme/a") for i in range(25)),
        *(ios(f"b{i:02}", "/acme/b") for i in range(25)),
    )
    await store_app(a, licences=30)  # 50 devices want one
    await a.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    notes = {**STORE_APP, "id": "notes", "identifier": "com.example.notes", "vpp": False}
    await b.ok("POST", "/apps", {**notes, "itunes_store_id": 99}, 201)
    await b.ok("POST", "/apps/notes/versions", {"file_version": "3.0"}, 201)
    at = clock.at(60)
    paced = {"pace_per_minute": 10, "at": at}
    made = [
        await a.ok("POST", "/apps/chat/install-notifications", {"orgs": ["/acme/a"], **paced}, 202),
        await b.ok("POST", "/apps/chat/install-notifications", {"orgs": ["/acme/b"], **paced}, 202),
        await a.ok(
            "POST",
            "/apps/notes/install-notifications",
            {"all_devices": True, "pace_per_minute": 7, "at": at},
            202,
        ),
    ]
    assert {m["state"] for m in made} == {"scheduled"}
    store = stores[0]

    async def finished() -> bool:
        found = [await store.get_notification(m["id"]) for m in made]
        return all(n is not None and n.state not in ("scheduled", "running") for n in found)

    async with trio.open_nursery() as nursery:
        await nursery.start(a.catalogue.run)
        await nursery.start(b.catalogue.run)
        await until(finished, a_seen.writes, within=1200)
        await trio.sleep(180)  # and nothing more happens
        nursery.cancel_scope.cancel()

    chat_a, chat_b, notes_run = [await stored(store, m["id"]) for m in made]
    assert {n.state for n in (chat_a, chat_b, notes_run)} == {"done"}
    # Licences exactly up to the pool, one per device reached, every device reached once.
    holders = await store.licence_holders("chat")
    assert len(holders) == 30
    reached = await deliveries(store, [*chat_a.command_ids, *chat_b.command_ids])
    assert sorted(reached) == holders
    assert chat_a.counts["queued"] + chat_b.counts["queued"] == 30
    # The app without licences: 50 devices in 8 waves of at most 7, counted once.
    assert notes_run.counts == {"queued": 50}
    assert notes_run.waves == math.ceil(50 / 7)
    assert sorted(await deliveries(store, list(notes_run.command_ids))) == sorted(
        [f"a{i:02}" for i in range(25)] + [f"b{i:02}" for i in range(25)]
    )
    # Each wave was evaluated and written by one node only: no node lost a race for one.
    attempts = a_seen.attempts + b_seen.attempts
    written = a_seen.written + b_seen.written
    assert a_seen.conflicts == b_seen.conflicts == 0
    assert len(attempts) == len(written) + a_seen.refused + b_seen.refused
    per_notification = {m["id"]: 0 for m in made}
    for _, notification_id, _made in written:
        per_notification[notification_id] += 1
    assert per_notification[notes_run.id] == notes_run.waves


@pytest.mark.parametrize("when", ["before_write", "after_write", "partly_written"])
async def test_a_node_that_dies_mid_wave_leaves_it_to_the_other(
    stores: list[Store], virtual_clock: trio.testing.MockClock, when: str
) -> None:
    clock = VirtualClock(BASE)
    a, b, a_seen, b_seen = nodes(stores, clock)
    await a.devices(*(ios(f"d{i:02}", "/acme") for i in range(20)))
    await store_app(a, licences=100)
    await a.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    made = await a.ok(
        "POST", "/apps/chat/install-notifications", {"all_devices": True, "at": clock.at(60)}, 202
    )
    a_seen.die = when
    async with trio.open_nursery() as nursery:
        node_a = trio.CancelScope()

        async def run_a() -> None:
            with node_a:
                await a.catalogue.run()

        nursery.start_soon(run_a)
        await soon(a_seen.reached)
        if when == "after_write":
            await soon(a_seen.landed)
        node_a.cancel()  # A dies: it never releases its lease
        lease = f"notification:{made['id']}"
        expires = max(until for name, _, until, won in a_seen.claims if won and name == lease)
        await nursery.start(b.catalogue.run)
        if when != "after_write":

            async def taken_over() -> bool:
                return bool(b_seen.written)

            await until(taken_over, b_seen.writes, within=300)
        await trio.sleep(300)
        nursery.cancel_scope.cancel()

    done = await stored(stores[0], made["id"])
    assert (done.state, done.waves) == ("done", 1)
    # Stored, then one wave: nothing written twice (after a partial write by a node that
    # wrote deliveries without counts, a second write takes back what it did not queue).
    assert done.rev == (3 if when == "partly_written" else 2)
    reached = await deliveries(stores[0], list(done.command_ids))
    assert sorted(reached) == [f"d{i:02}" for i in range(20)]  # each device once
    assert len(await stores[0].licence_holders("chat")) == 20
    b_claims = [(now, won) for name, now, _, won in b_seen.claims if name == lease]
    if when == "after_write":
        # A's write landed with its counts: B finds nothing due.
        assert done.counts == {"queued": 20}
        assert not b_seen.attempts
        return
    # B claimed the wave only once A's lease had expired, and ran it once.
    assert [won for _, won in b_claims].count(True) == 1
    assert all(now >= expires for now, won in b_claims if won)
    assert any(not won for _, won in b_claims)
    assert len(b_seen.written) == 1
    (_, _, b_made) = b_seen.written[0]
    # Counts are what the finishing wave queued: never more than the deliveries.
    assert done.counts == {"queued": b_made}
    assert b_made == (20 if when == "before_write" else 17)


@pytest.mark.parametrize("rate", [1.0, 60.0])
async def test_a_long_wave_keeps_its_lease(
    stores: list[Store], virtual_clock: trio.testing.MockClock, rate: float
) -> None:
    clock = VirtualClock(BASE, rate=rate)
    a, b, a_seen, b_seen = nodes(stores, clock)
    await a.devices(*(ios(f"d{i:02}", "/acme") for i in range(20)))
    await store_app(a, licences=100)
    await a.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    a_seen.gate = trio.Event()
    answers: list[tuple[int, Any]] = []
    async with trio.open_nursery() as nursery:

        async def submit() -> None:
            body = {"all_devices": True}
            answers.append(await a.call("POST", "/apps/chat/install-notifications", body))

        nursery.start_soon(submit)
        await soon(a_seen.reached)  # A's wave is held in its write ...
        await nursery.start(b.catalogue.run)
        held = 100 if rate == 1 else 10  # Trio seconds: many lease lengths of the clock
        await trio.sleep(held)
        released = clock()
        a_seen.gate.set()
        await soon(a_seen.landed)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    ((status, answer),) = answers
    assert (status, answer["state"], answer["counts"]) == (202, "done", {"queued": 20})
    (_, notification_id, _) = a_seen.attempts[0]
    lease = f"notification:{notification_id}"
    renewals = [won for name, _, _, won in a_seen.claims if name == lease]
    assert all(renewals)
    assert len(renewals) >= held * rate / 30 * 2  # a third of a lease apart at most
    tried = [(now, won) for name, now, _, won in b_seen.claims if name == lease]
    assert tried
    assert not any(won for now, won in tried if now < released)  # B tried, never got it
    assert not b_seen.attempts
    assert a_seen.conflicts == 0


async def test_a_wave_that_loses_its_lease_stops(
    stores: list[Store], virtual_clock: trio.testing.MockClock
) -> None:
    clock = VirtualClock(BASE)
    a, b, a_seen, b_seen = nodes(stores, clock)
    await a.devices(*(ios(f"d{i:02}", "/acme") for i in range(20)))
    await store_app(a, licences=100)
    await a.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    a_seen.gate = trio.Event()
    answers: list[tuple[int, Any]] = []
    async with trio.open_nursery() as nursery:

        async def submit() -> None:
            body = {"all_devices": True}
            answers.append(await a.call("POST", "/apps/chat/install-notifications", body))

        nursery.start_soon(submit)
        await soon(a_seen.reached)
        a_seen.lose_leases = True  # A stalls: its next renewal finds the lease gone
        await nursery.start(b.catalogue.run)

        async def taken_over() -> bool:
            return bool(b_seen.written)

        await until(taken_over, b_seen.writes, within=300)
        a_seen.gate.set()  # (too late: A's wave was stopped)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    ((status, answer),) = answers
    # A's wave stopped when its lease was found lost: the answer is the notification as
    # stored then, left to the node that holds it.
    assert (status, answer["state"], answer["waves"]) == (202, "scheduled", 0)
    assert not a_seen.written
    assert len(b_seen.written) == 1
    done = await stored(stores[0], answer["id"])
    assert (done.counts, done.waves, done.rev) == ({"queued": 20}, 1, 2)
    assert sorted(await deliveries(stores[0], list(done.command_ids))) == [
        f"d{i:02}" for i in range(20)
    ]


# --- cancels ---------------------------------------------------------------------------------


async def test_a_cancel_during_a_wave_wins(stores: list[Store]) -> None:
    clock = Clock(BASE)
    a, b, a_seen, _ = nodes(stores, clock)
    await a.devices(*(ios(f"d{i:02}", "/acme") for i in range(10)))
    await store_app(a, licences=100)
    await a.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    a_seen.gate = trio.Event()
    answers: list[tuple[int, Any]] = []
    async with trio.open_nursery() as nursery:

        async def submit() -> None:
            answers.append(
                await a.call("POST", "/apps/chat/install-notifications", {"all_devices": True})
            )

        nursery.start_soon(submit)
        await soon(a_seen.reached)  # A's wave read the notification; its write is held
        (_, notification_id, rev) = a_seen.attempts[0]
        assert rev == 1
        cancelled = await b.ok("DELETE", f"/install-notifications/{notification_id}")
        assert cancelled["state"] == "cancelled"
        a_seen.gate.set()
    ((status, answer),) = answers
    assert (status, answer["state"]) == (202, "cancelled")
    assert a_seen.conflicts == 1
    assert not a_seen.written
    after = await stored(stores[0], notification_id)
    assert (after.state, after.waves, after.counts, after.command_ids) == ("cancelled", 0, {}, ())
    assert await stores[0].queue_depth() == 0
    assert await stores[0].licence_holders("chat") == []
    clock.advance(3600)
    assert await a.catalogue.run_due() == []
    assert await b.catalogue.run_due() == []
    assert await stores[0].queue_depth() == 0


@pytest.mark.parametrize("last", [False, True])
async def test_a_cancel_read_before_a_wave_is_retried_at_its_revision(
    stores: list[Store], last: bool
) -> None:
    clock = Clock(BASE)
    a, b, _, b_seen = nodes(stores, clock)
    count = 4 if last else 6
    await a.devices(*(ios(f"d{i:02}", "/acme") for i in range(count)))
    await store_app(a, licences=100)
    await a.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    made = await a.ok(
        "POST",
        "/apps/chat/install-notifications",
        {"all_devices": True, "pace_per_minute": 2},
        202,
    )
    assert (made["state"], made["counts"]) == ("running", {"queued": 2})
    b_seen.cancel_gate = trio.Event()
    answers: list[tuple[int, Any]] = []
    async with trio.open_nursery() as nursery:

        async def cancel() -> None:
            answers.append(await b.call("DELETE", f"/install-notifications/{made['id']}"))

        nursery.start_soon(cancel)
        await soon(b_seen.cancel_reached)  # B read the notification at its first wave's rev
        clock.advance(60)
        (second,) = await a.catalogue.run_due()  # ... and A's second wave lands first
        assert second.counts == {"queued": 4}
        b_seen.cancel_gate.set()
    ((status, answer),) = answers
    assert b_seen.conflicts == 1
    final = await stored(stores[0], made["id"])
    if last:
        # The second wave was the last: nothing is left to cancel.
        assert status == 409, answer
        assert final.state == "done"
    else:
        assert (status, answer["state"], answer["waves"]) == (200, "cancelled", 2)
        assert final.state == "cancelled"
        clock.advance(60)
        assert await a.catalogue.run_due() == []
        assert await b.catalogue.run_due() == []
    assert final.counts == {"queued": 4}
    assert len(await deliveries(stores[0], list(final.command_ids))) == 4


# --- automatic updates ---------------------------------------------------------------------


async def test_an_automatic_update_check_due_on_both_nodes_runs_once(stores: list[Store]) -> None:
    clock = Clock(BASE)
    a, b, _, _ = nodes(stores, clock)
    await a.devices(
        *(ios(f"d{i}", "/acme", apps={"com.example.chat": "1.0"}) for i in range(4)),
        ios("bare", "/acme"),
    )
    await store_app(a, licences=10)
    await a.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    await a.ok("PUT", "/apps/chat/auto-update", {"check_time": "04:00", "timezone": "UTC"})
    published = (BASE + dt.timedelta(hours=1)).isoformat()
    await b.ok(
        "POST", "/apps/chat/versions", {"file_version": "2.0", "published_at": published}, 201
    )
    clock.advance(86400)
    ran: list[list[Notification]] = []
    async with trio.open_nursery() as nursery:
        for node in (a, b):

            async def check(node: Console = node) -> None:
                ran.append(await node.catalogue.run_due())

            nursery.start_soon(check)
    assert sorted(len(r) for r in ran) == [0, 1]
    (run,) = await stores[0].list_notifications("chat")
    assert (run.kind, run.state, run.resolved_version) == ("auto_update", "done", "2.0")
    assert run.counts == {"queued": 4, "not_installed": 1}
    assert sorted(await deliveries(stores[0], list(run.command_ids))) == [
        "d0",
        "d1",
        "d2",
        "d3",
    ]
    clock.advance(3600)
    assert await a.catalogue.run_due() == []
    assert await b.catalogue.run_due() == []
    assert len(await stores[0].list_notifications("chat")) == 1
