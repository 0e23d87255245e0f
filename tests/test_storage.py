"""The storage conformance suite: every backend runs every test here."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from mdmgate.storage import (
    CommandExists,
    DeliveryState,
    Device,
    Store,
    StoredDeclaration,
    UnknownDevices,
)
from mdmgate.storage.sqlite import SQLiteStore
from tests.stores import BACKENDS, open_backend


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path)
    await s.upsert_devices([Device(f"dev-{i}", "windows", "/acme") for i in range(5)])
    yield s
    await s.aclose()


async def test_devices_round_trip(store: Store) -> None:
    d = Device("mac-1", "macos", "/acme/sales", "15.1", True, {"cert": "abc"}, {"model": "Mac"})
    assert await store.upsert_devices([d]) == 1
    assert await store.get_device("mac-1") == d
    changed = Device("mac-1", "macos", "/acme/tokyo")
    await store.upsert_devices([changed])
    assert await store.get_device("mac-1") == changed
    assert await store.get_device("nope") is None


async def test_bulk_device_read(store: Store) -> None:
    assert await store.get_devices([]) == {}
    found = await store.get_devices(["dev-3", "ghost", "dev-1", "dev-3"])
    assert sorted(found) == ["dev-1", "dev-3"]
    assert found["dev-3"] == await store.get_device("dev-3")
    # More ids than a backend may read in one go on the event loop (see INLINE_READ_MAX).
    many = [Device(f"bulk-{i}", "ios", facts={"n": i}) for i in range(300)]
    await store.upsert_devices(many)
    wanted = [f"bulk-{i}" for i in range(0, 300, 2)] + ["ghost"]
    found = await store.get_devices(wanted)
    assert len(found) == 150
    assert found["bulk-298"].facts == {"n": 298}


async def test_reads_see_every_acknowledged_write(store: Store) -> None:
    # A device read right after a write returns the write, whichever connection serves it.
    for i in range(20):
        await store.upsert_devices([Device("flip", "windows", f"/org/{i}")])
        device = await store.get_device("flip")
        assert device is not None
        assert device.org == f"/org/{i}"
        assert (await store.get_devices(["flip"]))["flip"].org == f"/org/{i}"


async def test_enqueue_is_set_based_and_atomic(store: Store) -> None:
    devices = [f"dev-{i}" for i in range(5)]
    assert await store.enqueue("c1", "syncml", b"<Get/>", devices) == 5
    # Unknown devices refuse the whole operation: nothing is queued for the known ones.
    with pytest.raises(UnknownDevices) as info:
        await store.enqueue("c2", "syncml", b"x", ["dev-0", "ghost-1", "ghost-2"])
    assert info.value.device_ids == ["ghost-1", "ghost-2"]
    assert await store.command_status("c2") is None
    assert await store.queue_depth() == 5
    # Queuing the same command again for a device that has it changes nothing.
    assert await store.enqueue("c1", "syncml", b"<Get/>", ["dev-0", "dev-0"]) == 0
    status = await store.command_status("c1")
    assert status is not None
    assert [d.device_id for d in status.deliveries] == devices
    assert {d.body for d in status.deliveries} == {b"<Get/>"}


async def test_a_new_command_id_is_taken_once(store: Store) -> None:
    outcomes: list[str] = []

    async def attempt(body: bytes) -> None:
        try:
            await store.enqueue("chosen-1", "apple", body, ["dev-0"], new=True)
            outcomes.append(body.decode())
        except CommandExists as exc:
            assert exc.command_id == "chosen-1"
            outcomes.append("taken")

    # Two callers choose the same id at once: one wins, whole; the other is told.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, b"first")
        nursery.start_soon(attempt, b"second")
    assert sorted(outcomes) in (["first", "taken"], ["second", "taken"])
    status = await store.command_status("chosen-1")
    assert status is not None
    assert [d.body.decode() for d in status.deliveries] == [o for o in outcomes if o != "taken"]
    # Without new=True the same id adds devices to the stored command, as before.
    assert await store.enqueue("chosen-1", "apple", b"ignored", ["dev-1"]) == 1


async def test_accepted_waits_for_the_device_and_is_not_offered_again(store: Store) -> None:
    await store.enqueue("install", "syncml", b"<Exec/>", ["dev-0"])
    await store.enqueue("get", "syncml", b"<Get/>", ["dev-0"])
    assert [d.command_id for d in await store.take("dev-0", "s1", 10)] == ["install", "get"]
    assert await store.record_result("dev-0", "install", DeliveryState.ACCEPTED, "202", None)
    # A later session gets the unanswered Get again, never the accepted install.
    assert [d.command_id for d in await store.take("dev-0", "s2", 10)] == ["get"]
    assert await store.queue_depth() == 2
    accepted = await store.deliveries("dev-0", [DeliveryState.ACCEPTED])
    assert [(d.command_id, d.body, d.status) for d in accepted] == [("install", b"<Exec/>", "202")]
    # The asynchronous result completes it.
    assert await store.record_result("dev-0", "install", DeliveryState.ACKNOWLEDGED, "0", b"ok")
    assert await store.deliveries("dev-0", [DeliveryState.ACCEPTED]) == []
    done = await store.deliveries("dev-0", [DeliveryState.ACKNOWLEDGED, DeliveryState.SENT])
    assert [(d.command_id, d.state) for d in done] == [
        ("install", DeliveryState.ACKNOWLEDGED),
        ("get", DeliveryState.SENT),
    ]


async def test_merge_facts(store: Store) -> None:
    assert await store.merge_facts("dev-1", {"model": "Surface", "apps": [{"identifier": "a"}]})
    assert await store.merge_facts("dev-1", {"lang": "it-IT", "model": None})
    device = await store.get_device("dev-1")
    assert device is not None
    assert device.facts == {"apps": [{"identifier": "a"}], "lang": "it-IT"}
    assert not await store.merge_facts("ghost", {"x": 1})


async def test_concurrent_writes_succeed_or_fail_alone(store: Store) -> None:
    outcomes: dict[int, object] = {}

    async def enqueue(i: int) -> None:
        devices = ["dev-0", "ghost"] if i % 5 == 0 else [f"dev-{i % 5}"]
        try:
            outcomes[i] = await store.enqueue(f"c{i}", "syncml", b"<Get/>", devices)
        except UnknownDevices as exc:
            outcomes[i] = exc.device_ids

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(enqueue, i)
    assert outcomes == {i: ["ghost"] if i % 5 == 0 else 1 for i in range(40)}
    for i in range(40):
        status = await store.command_status(f"c{i}")
        assert (status is None) == (i % 5 == 0)
    assert await store.queue_depth() == 32


async def test_sqlite_groups_concurrent_writes_into_one_commit(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "group.db")
    await store.upsert_devices([Device(f"d{i}", "windows") for i in range(30)])
    commits: list[str] = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(store.merge_facts, f"d{i}", {"n": i})
    store._db.set_trace_callback(None)
    assert 1 <= len(commits) < 30
    for i in range(30):
        device = await store.get_device(f"d{i}")
        assert device is not None
        assert device.facts == {"n": i}
    await store.aclose()


async def test_set_auth_and_cancel_open(store: Store) -> None:
    assert await store.set_auth("dev-2", {"method": "certificate", "sha256": "ab"})
    device = await store.get_device("dev-2")
    assert device is not None
    assert device.auth == {"method": "certificate", "sha256": "ab"}
    assert not await store.set_auth("ghost", {})
    for c in ("a", "b", "c"):
        await store.enqueue(c, "apple", b"<plist/>", ["dev-2"])
    await store.take("dev-2", "s1", 1)
    assert await store.record_result("dev-2", "a", DeliveryState.ACKNOWLEDGED, "ok", None)
    # Re-enrolment: what was not answered for good ends; the answered one stays as it was.
    assert await store.cancel_open("dev-2", "re-enrolled") == 2
    status = await store.command_status("b")
    assert status is not None
    assert [(d.state, d.status) for d in status.deliveries] == [
        (DeliveryState.ERROR, "re-enrolled")
    ]
    assert await store.take("dev-2", "s2", 10) == []
    done = await store.command_status("a")
    assert done is not None
    assert done.deliveries[0].state == DeliveryState.ACKNOWLEDGED


async def test_declarations_by_device_and_org(store: Store) -> None:
    def decl(
        identifier: str, devices: tuple[str, ...] = (), orgs: tuple[str, ...] = ()
    ) -> StoredDeclaration:
        return StoredDeclaration(
            identifier,
            "com.apple.configuration.softwareupdate.settings",
            {"Notifications": True},
            f"t-{identifier}",
            devices,
            orgs,
        )

    await store.put_declaration(decl("all", orgs=("/",)))
    await store.put_declaration(decl("acme", orgs=("/acme",)))
    await store.put_declaration(decl("tokyo", orgs=("/acme/sales/tokyo",)))
    await store.put_declaration(decl("mine", devices=("dev-1",)))
    await store.put_declaration(decl("acmes", orgs=("/acmes",)))  # a prefix, not a parent
    found = await store.declarations_for("dev-1", "/acme/sales")
    assert [d.identifier for d in found] == ["all", "acme", "mine"]
    assert [d.identifier for d in await store.declarations_for("dev-9", "/acme/sales/tokyo")] == [
        "all",
        "acme",
        "tokyo",
    ]
    # Replacing keeps the assignment order and swaps the targets.
    await store.put_declaration(decl("all", devices=("dev-9",)))
    assert [d.identifier for d in await store.declarations_for("dev-1", "/acme")] == [
        "acme",
        "mine",
    ]
    again = await store.get_declaration("all")
    assert again is not None
    assert (again.devices, again.orgs, again.payload) == (("dev-9",), (), {"Notifications": True})
    assert again.seq < (await store.get_declaration("acme") or again).seq
    assert await store.get_declaration("none") is None


async def test_take_hands_out_in_order_once_per_session(store: Store) -> None:
    for i in range(4):
        await store.enqueue(f"c{i}", "apple", f"body{i}".encode(), ["dev-1"])
    first = await store.take("dev-1", "s1", 3)
    assert [d.command_id for d in first] == ["c0", "c1", "c2"]
    assert all(d.state is DeliveryState.SENT and d.session == "s1" for d in first)
    # The same session is not handed the same commands again.
    assert [d.command_id for d in await store.take("dev-1", "s1", 10)] == ["c3"]
    assert await store.take("dev-1", "s1", 10) == []
    assert await store.take("dev-2", "s1", 10) == []


async def test_at_least_once_across_sessions(store: Store) -> None:
    await store.enqueue("c1", "syncml", b"a", ["dev-1"])
    await store.enqueue("c2", "syncml", b"b", ["dev-1"])
    await store.take("dev-1", "s1", 10)
    assert await store.record_result("dev-1", "c1", DeliveryState.ACKNOWLEDGED, "200", b"ok")
    # c2's status never came back in s1: the next session gets it again.
    again = await store.take("dev-1", "s2", 10)
    assert [d.command_id for d in again] == ["c2"]


async def test_results_are_stored_once(store: Store) -> None:
    await store.enqueue("c1", "apple", b"a", ["dev-1", "dev-2"])
    await store.take("dev-1", "s1", 10)
    assert await store.record_result("dev-1", "c1", DeliveryState.ERROR, "Error", b"first")
    assert not await store.record_result("dev-1", "c1", DeliveryState.ACKNOWLEDGED, "200", b"2nd")
    assert not await store.record_result("dev-9", "c1", DeliveryState.ACKNOWLEDGED, None, None)
    status = await store.command_status("c1")
    assert status is not None
    by_device = {d.device_id: d for d in status.deliveries}
    assert by_device["dev-1"].state is DeliveryState.ERROR
    assert (by_device["dev-1"].status, by_device["dev-1"].result) == ("Error", b"first")
    assert by_device["dev-2"].state is DeliveryState.QUEUED
    assert await store.queue_depth() == 1


async def test_not_now_is_offered_again_later(store: Store) -> None:
    await store.enqueue("c1", "apple", b"a", ["dev-1"])
    await store.enqueue("c2", "apple", b"b", ["dev-1"])
    [c1] = await store.take("dev-1", "s1", 1)
    assert await store.record_result("dev-1", "c1", DeliveryState.NOT_NOW, "NotNow", None)
    # In the same exchange the device gets the next command, not the one it deferred.
    assert [d.command_id for d in await store.take("dev-1", "s1", 1)] == ["c2"]
    # On the next wake-up the deferred one comes back first, in enqueue order, followed by c2,
    # whose answer never came (at-least-once).
    assert [d.command_id for d in await store.take("dev-1", "s2", 5)] == ["c1", "c2"]
    assert c1.command_id == "c1"
    assert await store.record_result("dev-1", "c1", DeliveryState.ACKNOWLEDGED, "200", None)


async def test_large_fan_out(store: Store) -> None:
    devices = [Device(f"fleet-{i}", "ios", "/acme") for i in range(20_000)]
    await store.upsert_devices(devices)
    assert await store.enqueue("big", "apple", b"x" * 100, [d.id for d in devices]) == 20_000
    assert await store.queue_depth() == 20_000
    status = await store.command_status("big")
    assert status is not None
    assert len(status.deliveries) == 20_000


_ENQUEUE_THEN_WAIT = textwrap.dedent(
    """
    import sys, trio
    from mdmgate.storage import Device
    from mdmgate.storage.sqlite import SQLiteStore

    async def main():
        store = await SQLiteStore.open(sys.argv[1])
        await store.upsert_devices([Device("dev-1", "windows")])
        await store.enqueue("c-acked", "syncml", b"<Exec/>", ["dev-1"])
        print("acknowledged", flush=True)
        await trio.sleep_forever()

    trio.run(main)
    """
)


async def test_acknowledged_enqueue_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _ENQUEUE_THEN_WAIT, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "acknowledged"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    store = await SQLiteStore.open(path)
    try:
        [delivery] = await store.take("dev-1", "after-restart", 10)
        assert (delivery.command_id, delivery.body) == ("c-acked", b"<Exec/>")
    finally:
        await store.aclose()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    store = await SQLiteStore.open(path)
    await store.aclose()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this mdmgate"):
        await SQLiteStore.open(path)


class _BusyReader:
    """Stands in for the store's read connection while SQLite reports it busy (a WAL
    recovery by another process, which cannot be staged portably)."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.calls = 0

    def execute(self, *args: object) -> sqlite3.Cursor:
        self.calls += 1
        exc = sqlite3.OperationalError("database is locked")
        exc.sqlite_errorcode = self.code
        raise exc


async def test_sqlite_read_falls_back_when_the_database_is_busy(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "busy.db")
    await store.upsert_devices([Device("w1", "windows", "/acme"), Device("w2", "ios")])
    reader, busy = store._reader, _BusyReader(sqlite3.SQLITE_BUSY)
    store._reader = busy  # type: ignore[assignment]
    try:
        # Retried on the writer's connection, on the worker thread: same answers.
        device = await store.get_device("w1")
        assert device is not None
        assert device.org == "/acme"
        assert sorted(await store.get_devices(["w1", "w2", "x"])) == ["w1", "w2"]
        assert busy.calls == 2
        # Any other error is a real failure and is not papered over.
        store._reader = _BusyReader(sqlite3.SQLITE_IOERR)  # type: ignore[assignment]
        with pytest.raises(sqlite3.OperationalError):
            await store.get_device("w1")
    finally:
        store._reader = reader
        await store.aclose()


async def test_offers_are_counted_and_capped(store: Store) -> None:
    for c in ("poison", "next", "last"):
        await store.enqueue(c, "syncml", c.encode(), ["dev-3"])
    # Without a cap (the Apple channel): offers are counted, nothing is given up.
    first = await store.take("dev-3", "s1", 10)
    assert [(d.command_id, d.offers) for d in first] == [("poison", 1), ("next", 1), ("last", 1)]
    # With a cap, a delivery handed out before without an answer goes out alone: a command
    # that kills the session does not take the ones behind it down too.
    assert [
        (d.command_id, d.offers) for d in await store.take("dev-3", "s2", 10, max_offers=3)
    ] == [("poison", 2)]
    assert [d.command_id for d in await store.take("dev-3", "s2", 10, max_offers=3)] == ["next"]
    assert await store.record_result("dev-3", "next", DeliveryState.ACKNOWLEDGED, "200", None)
    assert [d.command_id for d in await store.take("dev-3", "s3", 10, max_offers=3)] == ["poison"]
    # Offered max_offers times without an answer: failed (final, with the reason), and the
    # next one is handed out in its place.
    assert [
        (d.command_id, d.offers) for d in await store.take("dev-3", "s4", 10, max_offers=3)
    ] == [("last", 2)]
    status = await store.command_status("poison")
    assert status is not None
    (failed,) = status.deliveries
    assert (failed.state, failed.status, failed.offers) == (
        DeliveryState.FAILED,
        "offered 3 times without an answer",
        3,
    )
    assert failed.state.final
    assert not await store.record_result("dev-3", "poison", DeliveryState.ACKNOWLEDGED, "200", None)
    assert await store.deliveries("dev-3", [DeliveryState.FAILED]) == [failed]
    assert await store.queue_depth() == 1  # only "last" is open
    # An answer that defers (NotNow) is an answer: the count starts again.
    await store.enqueue("busy", "apple", b"b", ["dev-4"])
    for session in ("a", "b"):
        await store.take("dev-4", session, 1, max_offers=2)
        assert await store.record_result("dev-4", "busy", DeliveryState.NOT_NOW, "NotNow", None)
    [again] = await store.take("dev-4", "c", 1, max_offers=2)
    assert (again.command_id, again.offers) == ("busy", 1)


async def test_sqlite_upgrade_keeps_deliveries_and_counts_their_offers(tmp_path: Path) -> None:
    from mdmgate.storage.sqlite import MIGRATIONS  # noqa: PLC0415 - one backend's detail

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:3]:  # the schema before offers were counted
        db.executescript(script)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (3)")
    db.execute("INSERT INTO devices VALUES ('w1', 'windows', '/', NULL, NULL, '{}', '{}')")
    db.execute("INSERT INTO commands VALUES ('c1', 'syncml', x'3c4765742f3e', 0)")
    db.execute(
        "INSERT INTO deliveries (command_id, device_id, state, session, updated)"
        " VALUES ('c1', 'w1', 'sent', 'old', 0)"
    )
    db.commit()
    db.close()
    store = await SQLiteStore.open(path)
    try:
        [delivery] = await store.take("w1", "new", 10, max_offers=5)
        assert (delivery.command_id, delivery.offers) == ("c1", 1)
    finally:
        await store.aclose()
