"""The storage conformance suite: every backend runs every test here."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from mdmgate.events import command_answered
from mdmgate.storage import (
    Change,
    CommandExists,
    DeliveryState,
    Device,
    FactsMerge,
    MessageContext,
    RevisionConflict,
    Store,
    StoredDeclaration,
    StoredSession,
    StoreError,
    UnknownDevices,
)
from mdmgate.storage.sqlite import SQLiteStore
from tests.stores import (
    BACKENDS,
    SHARED_BACKENDS,
    claim_each,
    database_url,
    merge_keys,
    open_backend,
    open_peer,
    race_in_processes,
    take_all,
)


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


async def test_sqlite_a_one_statement_write_that_fails_is_undone_alone(tmp_path: Path) -> None:
    # Such writes take no savepoint: SQLite undoes the failed statement, and the group's
    # other writes, with savepoints or without, still commit together.
    store = await SQLiteStore.open(tmp_path / "alone.db")
    await store.upsert_devices([Device(f"d{i}", "windows") for i in range(12)])
    store._db.execute("UPDATE devices SET facts = 'not JSON' WHERE id IN ('d2', 'd3')")
    commits: list[str] = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    failed: list[int] = []

    async def merge(i: int) -> None:
        try:
            # Even numbers: one statement; odd: with the change feed's row, a savepoint.
            await store.merge_facts(f"d{i}", {"n": i}, feed=i % 2 == 1)
        except sqlite3.Error:
            failed.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(merge, i)
        nursery.start_soon(lambda: store.merge_facts("d4", {"m": 1}, feed=False))
    store._db.set_trace_callback(None)
    assert sorted(failed) == [2, 3]
    assert 1 <= len(commits) < 13
    for i in set(range(12)) - {2, 3}:
        device = await store.get_device(f"d{i}")
        assert device is not None
        assert device.facts == ({"n": i, "m": 1} if i == 4 else {"n": i})
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


async def test_one_delivery_by_its_key(store: Store) -> None:
    await store.enqueue("c1", "apple", b"a", ["dev-1", "dev-2"])
    await store.enqueue("c2", "apple", b"b", ["dev-1"])
    assert await store.get_delivery("dev-1", "c9") is None
    assert await store.get_delivery("dev-9", "c1") is None
    assert await store.get_delivery("dev-2", "c2") is None
    [c1, _] = await store.take("dev-1", "s1", 10)
    assert await store.get_delivery("dev-1", "c1") == c1
    assert await store.record_result("dev-1", "c1", DeliveryState.ERROR, "Error", b"why")
    answered = await store.get_delivery("dev-1", "c1")
    assert answered is not None
    assert (answered.state, answered.status, answered.result) == (
        DeliveryState.ERROR,
        "Error",
        b"why",
    )
    assert (answered.kind, answered.body, answered.offers) == ("apple", b"a", 1)
    other = await store.get_delivery("dev-2", "c1")
    assert other is not None
    assert (other.state, other.session, other.offers) == (DeliveryState.QUEUED, None, 0)


async def test_record_and_take_is_an_answer_then_a_take(store: Store) -> None:
    await store.enqueue("c1", "apple", b"a", ["dev-1"])
    await store.enqueue("c2", "apple", b"b", ["dev-1"])
    [c1] = await store.take("dev-1", "s1", 1)
    answered = command_answered("dev-1", "c1", DeliveryState.ACKNOWLEDGED, "Acknowledged")
    recorded, taken = await store.record_and_take(
        "dev-1",
        "c1",
        DeliveryState.ACKNOWLEDGED,
        "Acknowledged",
        b"report",
        events=answered,
        session="s1",
        limit=1,
        delivered_event=True,
    )
    assert recorded
    assert [(d.command_id, d.state, d.offers) for d in taken] == [("c2", DeliveryState.SENT, 1)]
    stored = await store.get_delivery("dev-1", "c1")
    assert stored is not None
    assert (stored.state, stored.result) == (DeliveryState.ACKNOWLEDGED, b"report")
    kinds = [(e.type, e.subject) for e in await store.events(0, 100, device_id="dev-1")]
    assert kinds[-2:] == [("command.acknowledged", "c1"), ("command.delivered", "c2")]
    # The same report again: not stored twice, no event, and the queue is empty.
    again = await store.record_and_take(
        "dev-1",
        "c1",
        DeliveryState.ERROR,
        "Error",
        b"other",
        events=command_answered("dev-1", "c1", DeliveryState.ERROR, "Error"),
        session="s1",
        limit=1,
    )
    assert again == (False, [])
    assert len(await store.events(0, 100, device_id="dev-1")) == len(kinds)
    # NotNow in the exchange: the next command comes, the deferred one waits.
    await store.enqueue("c3", "apple", b"c", ["dev-1"])
    recorded, taken = await store.record_and_take(
        "dev-1", "c2", DeliveryState.NOT_NOW, "NotNow", None, session="s1", limit=1
    )
    assert recorded
    assert [d.command_id for d in taken] == ["c3"]
    assert [d.command_id for d in await store.take("dev-1", "s2", 10)] == ["c2", "c3"]
    assert c1.command_id == "c1"


async def _answer_and_take(
    store: Store, command_id: str, state: DeliveryState, session: str, max_offers: int = 1
) -> tuple[bool, list[tuple[str, int]]]:
    """An Apple exchange on dev-1: the report on ``command_id``, with its event, and the
    next command, with the reports of what was given up and handed out."""
    status = "NotNow" if state is DeliveryState.NOT_NOW else state.value
    recorded, taken = await store.record_and_take(
        "dev-1",
        command_id,
        state,
        status,
        None,
        events=command_answered("dev-1", command_id, state, status),
        session=session,
        limit=1,
        max_offers=max_offers,
        delivered_event=True,
    )
    return recorded, [(d.command_id, d.offers) for d in taken]


async def test_record_and_take_reports_in_the_order_of_the_two_calls(store: Store) -> None:
    for c in ("c1", "c2", "c3", "c4"):
        await store.enqueue(c, "apple", c.encode(), ["dev-1"])
    await store.take("dev-1", "s0", 2)
    # c1's report comes in a later exchange: c2, offered once without an answer, is given
    # up (after the answer is stored, before c3 is handed out).
    assert await _answer_and_take(store, "c1", DeliveryState.ACKNOWLEDGED, "s1") == (
        True,
        [("c3", 1)],
    )
    # The same report again: nothing stored and no event, but the exchange goes on.
    assert await _answer_and_take(store, "c1", DeliveryState.ERROR, "s1") == (False, [("c4", 1)])
    reported = [(e.type, e.subject, e.data) for e in await store.events(0, 100, device_id="dev-1")]
    assert reported == [
        ("command.acknowledged", "c1", {"status": "acknowledged"}),
        ("command.failed", "c2", {"status": "offered 1 times without an answer"}),
        ("command.delivered", "c3", {"session": "s1", "offers": 1}),
        ("command.delivered", "c4", {"session": "s1", "offers": 1}),
    ]
    c2 = await store.get_delivery("dev-1", "c2")
    assert c2 is not None
    assert c2.state is DeliveryState.FAILED


async def test_record_and_take_offers_what_an_earlier_exchange_deferred(store: Store) -> None:
    await store.enqueue("c1", "apple", b"a", ["dev-1"])
    await store.take("dev-1", "s0", 1)
    # NotNow for a command of an earlier exchange, and nothing else queued: the offer count
    # starts again, and the command goes out again at once (a take after the answer would).
    assert await _answer_and_take(store, "c1", DeliveryState.NOT_NOW, "s1") == (True, [("c1", 1)])
    # Deferred within the exchange it was handed out in: not again in that one.
    assert await _answer_and_take(store, "c1", DeliveryState.NOT_NOW, "s1") == (True, [])
    assert await store.take("dev-1", "s1", 10) == []
    [again] = await store.take("dev-1", "s2", 10)
    assert (again.command_id, again.offers) == ("c1", 1)


async def _exchanges(store: Store, session: str, *, answering: bool) -> tuple[list[Any], int]:
    """dev-1's commands taken in ``session`` until none is left (``max_offers=1``: a second
    offer would be given up, never made), each answered in the exchange that takes the next
    when ``answering``. Returns ``(command_id, offers)`` of each one handed out, and how many
    answers were stored."""
    got: list[Any] = []
    stored = 0
    taken = [
        (d.command_id, d.offers)
        for d in await store.take("dev-1", session, 1, max_offers=1, delivered_event=True)
    ]
    while taken:
        got += taken
        if answering:
            [(command_id, _)] = taken
            recorded, taken = await _answer_and_take(
                store, command_id, DeliveryState.ACKNOWLEDGED, session
            )
            stored += recorded
        else:
            found = await store.take("dev-1", session, 1, max_offers=1, delivered_event=True)
            taken = [(d.command_id, d.offers) for d in found]
    return got, stored


async def _race_exchanges(stores: Sequence[Store]) -> None:
    """Sessions of dev-1 on each store, half answering as they take: every command is
    handed out once, and each hand-out, answer and give-up reported once."""
    commands = [f"c{i:02d}" for i in range(40)]
    for c in commands:
        await stores[0].enqueue(c, "apple", c.encode(), ["dev-1"])
    results: list[tuple[list[Any], int]] = []

    async def session(store: Store, name: str, answering: bool) -> None:
        results.append(await _exchanges(store, name, answering=answering))

    async with trio.open_nursery() as nursery:
        for n, store in enumerate(stores):
            for i in range(4):
                nursery.start_soon(session, store, f"s{n}-{i}", i % 2 == 0)
    _check_handed_out_once([[list(t) for t in got] for got, _ in results], commands)
    events = await stores[-1].events(0, 1000, device_id="dev-1")
    by_type = {t: sorted(e.subject or "" for e in events if e.type == t) for t in _REPORTED}
    assert by_type["command.delivered"] == commands
    states = {
        d.command_id: d.state for d in await stores[-1].deliveries("dev-1", list(DeliveryState))
    }
    assert len(by_type["command.acknowledged"]) == sum(n for _, n in results)
    assert by_type["command.acknowledged"] == sorted(
        c for c, s in states.items() if s is DeliveryState.ACKNOWLEDGED
    )
    assert by_type["command.failed"] == sorted(
        c for c, s in states.items() if s is DeliveryState.FAILED
    )


_REPORTED = ("command.delivered", "command.acknowledged", "command.failed")


async def test_exchanges_of_one_device_racing_hand_out_each_command_once(store: Store) -> None:
    await _race_exchanges([store])


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


async def test_sqlite_reads_a_devices_deliveries_by_index(tmp_path: Path) -> None:
    """Listing one device's deliveries (any state), one delivery by key, or the ones take
    gives up on walks an index, not the whole table or the device's whole queue: with a
    fleet's worth of rows a scan took milliseconds per read."""
    store = await SQLiteStore.open(tmp_path / "plan.db")
    await store.aclose()
    db = sqlite3.connect(tmp_path / "plan.db")
    try:
        queries = {
            "deliveries": "SELECT d.command_id FROM deliveries d JOIN commands c"
            " ON c.id = d.command_id WHERE d.device_id = ?"
            " AND d.state IN (SELECT value FROM json_each(?)) ORDER BY d.seq",
            "one delivery": "SELECT c.kind FROM deliveries d JOIN commands c"
            " ON c.id = d.command_id WHERE d.command_id = ? AND d.device_id = ?",
            # take's search for deliveries offered too often without an answer.
            "given up": "SELECT d.seq FROM deliveries d WHERE d.device_id = ?"
            " AND state IN ('queued', 'sent', 'not_now') AND offers > 0 AND offers >= ?",
        }
        for name, query in queries.items():
            plan = " | ".join(
                row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {query}", ("a", "b"))
            )
            assert "SCAN d" not in plan, (name, plan)
            assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (name, plan)
            if name == "given up":  # not every delivery of the device: the retried ones
                assert "deliveries_retried" in plan, plan
    finally:
        db.close()


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


# -- concurrent writers -------------------------------------------------------------------
# Every promise of the contract holds for concurrent writers: tasks on one store (every
# backend), two stores on one database (two connections, as two gateway nodes have), and
# two OS processes. The racers start together; none sleeps to arrange an interleaving.


@pytest.fixture(params=SHARED_BACKENDS)
def shared(request: pytest.FixtureRequest) -> str:
    """A backend whose database several stores and processes share."""
    kind: str = request.param
    return kind


async def _two_stores(kind: str, tmp_path: Path) -> tuple[Store, Store]:
    first = await open_backend(kind, tmp_path)
    await first.upsert_devices([Device(f"dev-{i}", "windows", "/acme") for i in range(5)])
    return first, await open_peer(kind, tmp_path)


# Keys a JSON path handles badly: dots, brackets, quotes, backslashes, non-ASCII, empty.
_ODD_KEYS = ["a.b", "[0]", "$", 'say "hi"', "back\\slash", "x'y", "日本", "\U0001d518", "", "ü"]


async def test_merge_facts_keys_and_values_are_stored_as_given(store: Store) -> None:
    facts: dict[str, Any] = {k: {"key": k, "nested": None, "list": [None, 1.5]} for k in _ODD_KEYS}
    facts["float"] = 0.1 + 0.2  # an untouched value keeps every digit
    facts["big"] = 2**70
    assert await store.merge_facts("dev-1", facts)
    device = await store.get_device("dev-1")
    assert device is not None
    assert device.facts == facts
    # A value replaces the old one whole (no merge of nested objects); None removes a key.
    assert await store.merge_facts("dev-1", {"a.b": {"other": 1}, 'say "hi"': None, "日本": None})
    assert await store.merge_facts("dev-1", {"back\\slash": None, "never there": None})
    expected = {k: v for k, v in facts.items() if k not in ('say "hi"', "日本", "back\\slash")}
    expected["a.b"] = {"other": 1}
    device = await store.get_device("dev-1")
    assert device is not None
    assert device.facts == expected
    # Removing every fact leaves none; a merge of nothing changes nothing.
    assert await store.merge_facts("dev-1", dict.fromkeys(expected))
    assert await store.merge_facts("dev-1", {})
    device = await store.get_device("dev-1")
    assert device is not None
    assert device.facts == {}


async def test_concurrent_fact_merges_all_survive(store: Store) -> None:
    keys = [f"k{i}" for i in range(40)] + _ODD_KEYS
    async with trio.open_nursery() as nursery:
        for i, key in enumerate(keys):
            nursery.start_soon(store.merge_facts, "dev-2", {key: i})
            # The same device's fields change meanwhile: nothing merged is undone.
            if i % 10 == 0:
                nursery.start_soon(store.update_device, "dev-2", {"os_version": f"10.{i}"})
    device = await store.get_device("dev-2")
    assert device is not None
    assert device.facts == {key: i for i, key in enumerate(keys)}
    assert device.os_version is not None


async def test_fact_merges_from_two_stores_all_survive(shared: str, tmp_path: Path) -> None:
    first, second = await _two_stores(shared, tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            for n, s in enumerate((first, second)):
                for t in range(4):
                    keys = [f"s{n}-t{t}-{i}" for i in range(15)]
                    nursery.start_soon(merge_keys, s, "dev-3", keys)
        for s in (first, second):
            device = await s.get_device("dev-3")
            assert device is not None
            assert len(device.facts) == 2 * 4 * 15
    finally:
        await first.aclose()
        await second.aclose()


async def test_fact_merges_from_two_processes_all_survive(shared: str, tmp_path: Path) -> None:
    store = await open_backend(shared, tmp_path)
    try:
        await store.upsert_devices([Device("dev-1", "windows")])
        url = database_url(shared, tmp_path)
        assert url is not None
        keys = [[f"p{p}-{i}" for i in range(60)] for p in range(2)]
        await race_in_processes(url, [("merge_keys", {"device": "dev-1", "keys": k}) for k in keys])
        device = await store.get_device("dev-1")
        assert device is not None
        assert sorted(device.facts) == sorted(keys[0] + keys[1])
        assert device.facts["p1-59"] == {"n": 59, "by": "p1-59"}
    finally:
        await store.aclose()


async def test_update_device_sets_fields_and_keeps_the_rest(store: Store) -> None:
    await store.upsert_devices(
        [Device("mac-1", "macos", "/acme", "14.0", None, {"cert": "c"}, {"model": "Mac"})]
    )
    assert await store.update_device("mac-1", {"os_version": "15.1", "supervised": True})
    assert await store.get_device("mac-1") == Device(
        "mac-1", "macos", "/acme", "15.1", True, {"cert": "c"}, {"model": "Mac"}
    )
    assert await store.update_device("mac-1", {"org": "/acme/sales", "os_version": None})
    assert await store.update_device("mac-1", {"platform": "ios", "supervised": False})
    assert await store.update_device("mac-1", {})
    assert await store.get_device("mac-1") == Device(
        "mac-1", "ios", "/acme/sales", None, False, {"cert": "c"}, {"model": "Mac"}
    )
    assert not await store.update_device("ghost", {"org": "/x"})
    wrong_fields: list[dict[str, Any]] = [
        {"facts": {}},
        {"auth": {}},
        {"id": "other"},
        {"org": "/y", "colour": "red"},
    ]
    for wrong in wrong_fields:
        with pytest.raises(ValueError, match="not a device field"):
            await store.update_device("mac-1", wrong)
    device = await store.get_device("mac-1")
    assert device is not None
    assert device.org == "/acme/sales"


async def test_update_device_from_another_store_keeps_merged_facts(
    shared: str, tmp_path: Path
) -> None:
    first, second = await _two_stores(shared, tmp_path)
    try:

        async def check_ins(s: Store, n: int) -> None:
            for i in range(20):
                await s.update_device("dev-4", {"os_version": f"{n}.{i}"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(merge_keys, first, "dev-4", [f"a{i}" for i in range(20)])
            nursery.start_soon(merge_keys, second, "dev-4", [f"b{i}" for i in range(20)])
            nursery.start_soon(check_ins, first, 1)
            nursery.start_soon(check_ins, second, 2)
        device = await first.get_device("dev-4")
        assert device is not None
        assert len(device.facts) == 40
        assert device.os_version in ("1.19", "2.19")
    finally:
        await first.aclose()
        await second.aclose()


def _check_handed_out_once(results: list[list[list[Any]]], commands: list[str]) -> None:
    """Each delivery was handed out exactly once, to exactly one racer (``max_offers=1``:
    a second offer would be a double hand-out), and every one was handed out."""
    handed = [command for got in results for command, _ in got]
    assert sorted(handed) == sorted(commands)
    assert {offers for got in results for _, offers in got} == {1}


async def test_concurrent_sessions_never_take_the_same_delivery(store: Store) -> None:
    commands = [f"c{i:03d}" for i in range(60)]
    for c in commands:
        await store.enqueue(c, "syncml", c.encode(), ["dev-0"])
    results: list[list[list[Any]]] = []

    async def session(name: str) -> None:
        results.append(await take_all(store, "dev-0", name, 3))

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(session, f"s{i}")
    _check_handed_out_once(results, commands)
    # Each session got its share in enqueue order.
    for got in results:
        assert [c for c, _ in got] == sorted(c for c, _ in got)


async def test_two_stores_never_take_the_same_delivery(shared: str, tmp_path: Path) -> None:
    first, second = await _two_stores(shared, tmp_path)
    try:
        commands = [f"c{i:03d}" for i in range(80)]
        await first.enqueue("bulk", "syncml", b"x", ["dev-1"])
        for c in commands:
            await second.enqueue(c, "syncml", c.encode(), ["dev-1"])
        results: list[list[list[Any]]] = []

        async def session(s: Store, name: str) -> None:
            results.append(await take_all(s, "dev-1", name, 2))

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(session, first, f"a{i}")
                nursery.start_soon(session, second, f"b{i}")
        _check_handed_out_once(results, ["bulk", *commands])
    finally:
        await first.aclose()
        await second.aclose()


async def test_exchanges_on_two_stores_hand_out_each_command_once(
    shared: str, tmp_path: Path
) -> None:
    first, second = await _two_stores(shared, tmp_path)
    try:
        await _race_exchanges([first, second])
    finally:
        await first.aclose()
        await second.aclose()


async def test_two_processes_never_take_the_same_delivery(shared: str, tmp_path: Path) -> None:
    store = await open_backend(shared, tmp_path)
    try:
        await store.upsert_devices([Device("dev-1", "windows")])
        commands = [f"c{i:03d}" for i in range(150)]
        for c in commands:
            await store.enqueue(c, "syncml", c.encode(), ["dev-1"])
        url = database_url(shared, tmp_path)
        assert url is not None
        results = await race_in_processes(
            url,
            [("take_all", {"device": "dev-1", "session": f"p{i}", "limit": 2}) for i in range(2)],
        )
        _check_handed_out_once(results, commands)
        assert await store.take("dev-1", "after", 10) == []
    finally:
        await store.aclose()


# -- sessions -----------------------------------------------------------------------------


async def test_session_saved_with_facts_in_one_write(store: Store) -> None:
    """The facts a message rotated go with its session: both, or (on a conflict) neither."""
    later = time.time() + 3600
    await store.upsert_devices([Device("dev-1", "windows", facts={"kept": 1, "nonce": "n0"})])
    last = await store.last_change()
    rotated = FactsMerge("dev-1", {"nonce": "n1", "server_nonce": "s1"})
    assert (
        await store.save_session(
            "omadm", "dev-1/1", b"a", expected_rev=None, expires_at=later, facts=rotated
        )
        == 1
    )
    device = await store.get_device("dev-1")
    assert device is not None
    assert device.facts == {"kept": 1, "nonce": "n1", "server_nonce": "s1"}
    # Bookkeeping: no index reads it, so no change is announced.
    assert await store.last_change() == last
    assert (
        await store.save_session(
            "omadm",
            "dev-1/1",
            b"b",
            expected_rev=1,
            expires_at=later,
            facts=FactsMerge("dev-1", {"server_nonce": None}),
        )
        == 2
    )
    device = await store.get_device("dev-1")
    assert device is not None
    assert device.facts == {"kept": 1, "nonce": "n1"}
    # Another node saved this revision first: its nonces stand, this one's are not written.
    with pytest.raises(RevisionConflict):
        await store.save_session(
            "omadm",
            "dev-1/1",
            b"lost",
            expected_rev=1,
            expires_at=later,
            facts=FactsMerge("dev-1", {"nonce": "lost"}),
        )
    device = await store.get_device("dev-1")
    assert device is not None
    assert device.facts["nonce"] == "n1"
    assert await store.load_session("omadm", "dev-1/1") == StoredSession(b"b", 2, later)
    # An unknown device merges nothing; the session is saved all the same.
    assert (
        await store.save_session(
            "omadm",
            "ghost/1",
            b"g",
            expected_rev=None,
            expires_at=later,
            facts=FactsMerge("ghost", {"nonce": "x"}),
        )
        == 1
    )
    assert await store.get_device("ghost") is None
    assert await store.load_session("omadm", "ghost/1") == StoredSession(b"g", 1, later)


async def test_sessions_compare_and_set(store: Store) -> None:
    later = time.time() + 3600
    assert await store.load_session("omadm", "dev-1/7") is None
    assert await store.save_session("omadm", "dev-1/7", b"one", expected_rev=None, expires_at=later)
    assert await store.load_session("omadm", "dev-1/7") == StoredSession(b"one", 1, later)
    assert (
        await store.save_session("omadm", "dev-1/7", b"two", expected_rev=1, expires_at=later + 1)
        == 2
    )
    # Another node answered the same message from revision 1: it cannot save.
    with pytest.raises(RevisionConflict) as stale:
        await store.save_session("omadm", "dev-1/7", b"lost", expected_rev=1, expires_at=later)
    assert (stale.value.expected, stale.value.stored) == (1, 2)
    assert await store.load_session("omadm", "dev-1/7") == StoredSession(b"two", 2, later + 1)
    # Kinds and keys are separate exchanges.
    assert await store.load_session("apple", "dev-1/7") is None
    with pytest.raises(RevisionConflict) as missing:
        await store.save_session("apple", "dev-1/7", b"x", expected_rev=1, expires_at=later)
    assert (missing.value.expected, missing.value.stored) == (1, None)
    assert await store.load_session("apple", "dev-1/7") is None
    # A new exchange (expected_rev None) replaces the stale one, whatever its revision.
    assert await store.save_session("omadm", "dev-1/7", b"new", expected_rev=None, expires_at=later)
    assert await store.load_session("omadm", "dev-1/7") == StoredSession(b"new", 1, later)
    # Dropping: only at the given revision, once.
    assert not await store.drop_session("omadm", "dev-1/7", expected_rev=2)
    assert await store.drop_session("omadm", "dev-1/7", expected_rev=1)
    assert not await store.drop_session("omadm", "dev-1/7")
    assert await store.load_session("omadm", "dev-1/7") is None
    await store.save_session(
        "apple", "dev-2", bytes(range(256)), expected_rev=None, expires_at=later
    )
    assert await store.drop_session("apple", "dev-2")


async def test_sessions_expire(store: Store) -> None:
    now = time.time()
    await store.save_session("omadm", "stale", b"s", expected_rev=None, expires_at=now - 10)
    await store.save_session("omadm", "fresh", b"f", expected_rev=None, expires_at=now + 3600)
    await store.save_session("apple", "stale", b"s", expected_rev=None, expires_at=now - 5)
    # An expired exchange is gone for readers and compare-and-set, before it is dropped.
    assert await store.load_session("omadm", "stale") is None
    with pytest.raises(RevisionConflict):
        await store.save_session("omadm", "stale", b"x", expected_rev=1, expires_at=now + 60)
    assert not await store.drop_session("omadm", "stale")
    assert await store.expire_sessions(now) == 2
    assert await store.expire_sessions(now) == 0
    fresh = await store.load_session("omadm", "fresh")
    assert fresh is not None
    assert fresh.state == b"f"
    # A new exchange may reuse an expired key.
    await store.save_session("apple", "stale", b"again", expected_rev=None, expires_at=now + 60)
    again = await store.load_session("apple", "stale")
    assert again is not None
    assert (again.state, again.rev) == (b"again", 1)
    assert await store.expire_sessions(now + 3601) == 2


async def test_device_and_session_read_together(store: Store) -> None:
    now = time.time()
    device = await store.get_device("dev-1")
    assert device is not None
    assert await store.device_and_session("dev-1", "omadm", "dev-1/7") == (device, None)
    await store.save_session("omadm", "dev-1/7", b"s", expected_rev=None, expires_at=now + 60)
    await store.save_session("omadm", "dev-1/8", b"old", expected_rev=None, expires_at=now - 1)
    together = await store.device_and_session("dev-1", "omadm", "dev-1/7")
    assert together == (device, StoredSession(b"s", 1, now + 60))
    # Each half is what its own read says: an unknown device, an expired or other session.
    assert await store.device_and_session("nobody", "omadm", "dev-1/7") == (
        None,
        StoredSession(b"s", 1, now + 60),
    )
    assert await store.device_and_session("dev-1", "omadm", "dev-1/8") == (device, None)
    assert await store.device_and_session("dev-1", "apple", "dev-1/7") == (device, None)


async def test_message_context_says_whether_anything_is_offered(store: Store) -> None:
    """The device, its session and whether take could hand anything out, in one read; the
    device and session are what device_and_session says."""
    now = time.time()
    await store.save_session("omadm", "dev-1/7", b"s", expected_rev=None, expires_at=now + 60)
    device, session = await store.device_and_session("dev-1", "omadm", "dev-1/7")
    assert await store.message_context("dev-1", "omadm", "dev-1/7") == MessageContext(
        device, session, offered=False
    )
    assert await store.message_context("nobody", "omadm", "dev-1/8") == MessageContext(
        None, None, offered=False
    )

    async def offered() -> bool:
        return (await store.message_context("dev-1", "omadm", "dev-1/7")).offered

    await store.enqueue("c1", "syncml", b"<Get/>", ["dev-1"])
    assert await offered()
    # Handed out to a session, it is still offered (to the next one, if never answered).
    (sent,) = await store.take("dev-1", "s1", 5)
    assert await offered()
    await store.record_result("dev-1", sent.command_id, DeliveryState.NOT_NOW, "NotNow", None)
    assert await offered()
    # Accepted (the outcome comes later) and answered for good: nothing to take.
    await store.take("dev-1", "s2", 5)
    await store.record_result("dev-1", "c1", DeliveryState.ACCEPTED, "202", None)
    assert not await offered()
    await store.record_result("dev-1", "c1", DeliveryState.ACKNOWLEDGED, "200", None)
    assert not await offered()
    # Another device's queue is its own.
    await store.enqueue("c2", "syncml", b"<Get/>", ["dev-2"])
    assert not await offered()
    assert (await store.message_context("dev-2", "omadm", "x")).offered
    # With a command id, the delivery a report answers comes along (as get_delivery).
    for device_id, command_id in (
        ("dev-1", "c1"),
        ("dev-2", "c2"),
        ("dev-1", "c2"),
        ("dev-1", "no"),
    ):
        context = await store.message_context(device_id, "omadm", "x", command_id=command_id)
        assert context.delivery == await store.get_delivery(device_id, command_id)
    answered = await store.message_context("dev-1", "omadm", "dev-1/7", command_id="c1")
    assert answered.delivery is not None
    assert (answered.delivery.state, answered.delivery.status) == ("acknowledged", "200")
    assert answered.session == session
    assert (await store.message_context("dev-1", "omadm", "x")).delivery is None


async def test_two_nodes_answering_one_message_cannot_both_save(store: Store) -> None:
    later = time.time() + 60
    await store.save_session("omadm", "k", b"0", expected_rev=None, expires_at=later)
    saved: list[bytes] = []

    async def answer(state: bytes) -> None:
        with contextlib.suppress(RevisionConflict):
            await store.save_session("omadm", "k", state, expected_rev=1, expires_at=later)
            saved.append(state)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(answer, str(i).encode())
    assert len(saved) == 1
    assert await store.load_session("omadm", "k") == StoredSession(saved[0], 2, later)


async def test_sessions_saved_by_one_store_are_read_by_another(shared: str, tmp_path: Path) -> None:
    first, second = await _two_stores(shared, tmp_path)
    try:
        later = time.time() + 60
        await first.save_session("omadm", "k", b"1", expected_rev=None, expires_at=later)
        loaded = await second.load_session("omadm", "k")
        assert loaded == StoredSession(b"1", 1, later)
        outcomes: list[tuple[str, int | None]] = []

        async def answer(s: Store, state: bytes) -> None:
            try:
                rev = await s.save_session("omadm", "k", state, expected_rev=1, expires_at=later)
            except RevisionConflict as exc:
                outcomes.append(("conflict", exc.stored))
            else:
                outcomes.append(("saved", rev))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(answer, first, b"first")
                nursery.start_soon(answer, second, b"second")
        # One saved revision 2; every other found it there.
        assert sorted(outcomes) == [("conflict", 2)] * 5 + [("saved", 2)]
        loaded = await second.load_session("omadm", "k")
        assert loaded is not None
        assert loaded.rev == 2
    finally:
        await first.aclose()
        await second.aclose()


# -- change feed --------------------------------------------------------------------------


def _kinds(changes: Sequence[Change]) -> list[tuple[str, str]]:
    return [(c.kind, c.key) for c in changes]


async def test_device_writes_are_in_the_change_feed(store: Store) -> None:
    # The fixture registered dev-0..dev-4: five changes, numbered from 1, in order.
    first = await store.changes(0, 100)
    assert _kinds(first) == [("device", f"dev-{i}") for i in range(5)]
    assert [c.seq for c in first] == sorted({c.seq for c in first})
    assert first[0].seq >= 1
    last = await store.last_change()
    assert last == first[-1].seq
    await store.upsert_devices([Device("new-1", "ios"), Device("dev-0", "ios")])
    assert await store.merge_facts("dev-1", {"model": "x"})
    assert await store.update_device("dev-2", {"org": "/other"})
    # What changes nothing the index derives from, or fails, records nothing.
    assert not await store.merge_facts("ghost", {"model": "x"})
    assert not await store.update_device("ghost", {"org": "/x"})
    with pytest.raises(ValueError, match="not a device field"):
        await store.update_device("dev-1", {"colour": "red"})
    await store.enqueue("c1", "syncml", b"x", ["dev-1"])
    await store.take("dev-1", "s", 10)
    later = await store.changes(last, 100)
    assert _kinds(later) == [
        ("device", "new-1"),
        ("device", "dev-0"),
        ("device", "dev-1"),
        ("device", "dev-2"),
    ]
    seqs = [c.seq for c in later]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 4
    assert seqs[0] > last
    assert await store.last_change() == seqs[-1]
    # Paging: limit and after.
    assert await store.changes(last, 2) == later[:2]
    assert await store.changes(later[1].seq, 100) == later[2:]
    assert await store.changes(seqs[-1], 100) == []
    assert await store.changes(0, 0) == []


async def test_change_feed_from_concurrent_writers_is_complete_and_ordered(store: Store) -> None:
    last = await store.last_change()
    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(store.merge_facts, f"dev-{i % 5}", {f"k{i}": i})
    found = await store.changes(last, 1000)
    assert len(found) == 30
    assert sorted(_kinds(found)) == sorted(("device", f"dev-{i % 5}") for i in range(30))
    assert [c.seq for c in found] == sorted({c.seq for c in found})


async def test_wait_for_changes_wakes_on_a_write_from_another_task(store: Store) -> None:
    last = await store.last_change()
    with trio.fail_after(5):
        await store.wait_for_changes(last - 1)  # one exists: at once
        woken = trio.Event()

        async def wait() -> None:
            await store.wait_for_changes(last)
            woken.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert not woken.is_set()
            await store.merge_facts("dev-3", {"x": 1})
            await woken.wait()
    # Cancellable.
    with trio.move_on_after(0.01) as scope:
        await store.wait_for_changes(await store.last_change())
    assert scope.cancelled_caught


async def test_wait_for_changes_sees_another_store(shared: str, tmp_path: Path) -> None:
    first, second = await _two_stores(shared, tmp_path)
    try:
        last = await first.last_change()
        assert await second.last_change() == last
        woken = trio.Event()

        async def wait() -> None:
            await first.wait_for_changes(last)
            woken.set()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                assert not woken.is_set()
                await second.update_device("dev-0", {"org": "/moved"})
                await woken.wait()
        [change] = await first.changes(last, 10)
        assert (change.kind, change.key) == ("device", "dev-0")
    finally:
        await first.aclose()
        await second.aclose()


# -- leases -------------------------------------------------------------------------------


async def test_leases_are_exclusive_until_they_expire(store: Store) -> None:
    assert await store.claim_lease("wave:n-1", "node-a", now=100.0, until=110.0)
    assert not await store.claim_lease("wave:n-1", "node-b", now=105.0, until=200.0)
    # The holder renews.
    assert await store.claim_lease("wave:n-1", "node-a", now=105.0, until=120.0)
    assert not await store.claim_lease("wave:n-1", "node-b", now=119.9, until=200.0)
    assert await store.live_leases("wave:", now=119.9) == ["node-a"]
    # Expired: anyone takes it (a node that died mid-wave loses its wave).
    assert await store.live_leases("wave:", now=120.0) == []
    assert await store.claim_lease("wave:n-1", "node-b", now=120.0, until=130.0)
    assert not await store.claim_lease("wave:n-1", "node-a", now=121.0, until=140.0)
    # Only the holder releases.
    assert not await store.release_lease("wave:n-1", "node-a")
    assert not await store.release_lease("wave:none", "node-b")
    assert await store.release_lease("wave:n-1", "node-b")
    assert not await store.release_lease("wave:n-1", "node-b")
    assert await store.claim_lease("wave:n-1", "node-a", now=122.0, until=140.0)


async def test_live_leases_by_prefix(store: Store) -> None:
    assert await store.live_leases("node:", now=0.0) == []
    await store.claim_lease("node:b", "b", now=0.0, until=100.0)
    await store.claim_lease("node:a", "a", now=0.0, until=100.0)
    await store.claim_lease("node:old", "old", now=0.0, until=50.0)
    await store.claim_lease("nodes", "not a node", now=0.0, until=100.0)
    await store.claim_lease("wave:1", "a", now=0.0, until=100.0)
    # A prefix is a prefix (not a LIKE pattern): "_" and "%" are characters.
    await store.claim_lease("n_%x", "odd", now=0.0, until=100.0)
    await store.claim_lease("nX%x", "other", now=0.0, until=100.0)
    assert sorted(await store.live_leases("node:", now=60.0)) == ["a", "b"]
    assert sorted(await store.live_leases("node:", now=10.0)) == ["a", "b", "old"]
    assert await store.live_leases("n_%", now=10.0) == ["odd"]
    assert sorted(await store.live_leases("", now=10.0)) == [
        "a",
        "a",
        "b",
        "not a node",
        "odd",
        "old",
        "other",
    ]


async def test_one_of_many_concurrent_claims_wins(store: Store) -> None:
    won: list[str] = []

    async def claim(holder: str) -> None:
        if await store.claim_lease("wave:n-9", holder, now=1.0, until=60.0):
            won.append(holder)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(claim, f"node-{i}")
    assert len(won) == 1
    assert await store.live_leases("wave:", now=2.0) == won


async def test_leases_claimed_by_two_stores_and_two_processes(shared: str, tmp_path: Path) -> None:
    first, second = await _two_stores(shared, tmp_path)
    names = [f"wave:{i}" for i in range(40)]
    try:
        async with trio.open_nursery() as nursery:
            results: dict[str, list[str]] = {}

            async def claim(s: Store, holder: str) -> None:
                results[holder] = await claim_each(s, names, holder)

            nursery.start_soon(claim, first, "a")
            nursery.start_soon(claim, second, "b")
        assert sorted(results["a"] + results["b"]) == sorted(names)
        url = database_url(shared, tmp_path)
        assert url is not None
        others = [f"other:{i}" for i in range(60)]
        won = await race_in_processes(
            url, [("claim_each", {"names": others, "holder": f"p{i}"}) for i in range(2)]
        )
        assert sorted(won[0] + won[1]) == sorted(others)
        assert len(await first.live_leases("other:", now=2.0)) == 60
    finally:
        await first.aclose()
        await second.aclose()


async def test_sqlite_closed_with_writes_in_flight(tmp_path: Path) -> None:
    """Writes racing aclose() either commit or fail with a StoreError naming the closed
    store; the writer never dies with an exception (a system task's error ends the run)."""
    for attempt in range(20):
        store = await SQLiteStore.open(tmp_path / f"closing-{attempt}.db")
        await store.upsert_devices([Device("d", "windows")])
        outcomes: list[str] = []

        async def merge(key: str, store: SQLiteStore = store, out: list[str] = outcomes) -> None:
            try:
                await store.merge_facts("d", {key: 1})
                out.append("committed")
            except StoreError as exc:
                assert "closed" in str(exc)
                out.append("refused")

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(merge, f"k{i}")
            await trio.sleep(0)
            await store.aclose()
        assert len(outcomes) == 3


async def test_merge_facts_kept_off_the_change_feed(store: Store) -> None:
    """Bookkeeping facts (a rotated nonce) are stored, but announced to no index."""
    await store.upsert_devices([Device("d", "windows")])
    before = await store.last_change()
    assert await store.merge_facts("d", {"syncml_nonce": "bm9uY2U="}, feed=False)
    assert await store.last_change() == before
    device = await store.get_device("d")
    assert device is not None
    assert device.facts["syncml_nonce"] == "bm9uY2U="
    assert await store.merge_facts("d", {"devinfo": {"Man": "Dell"}})
    assert [c.kind for c in await store.changes(before, 10)] == ["device"]
