"""The event log, webhooks, API tokens and command listing/cancelling: every backend runs every
test here (the races on the backends whose database two stores share)."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from mdmgate.catalogue.model import CommandBatch, LicenceGrant, Notification
from mdmgate.storage import (
    ApiToken,
    CommandExists,
    DeliveryState,
    Device,
    LicencesExhausted,
    NewEvent,
    RevisionConflict,
    Store,
    UnknownDevices,
    Webhook,
    WebhookFailure,
)
from mdmgate.storage.enrollment import IssuedCertificate
from mdmgate.storage.sqlite import SQLiteStore
from tests.stores import (
    BACKENDS,
    SHARED_BACKENDS,
    database_url,
    open_backend,
    open_peer,
    race_in_processes,
)

T0 = 1_700_000_000.0


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path)
    await s.upsert_devices([Device(f"dev-{i}", "windows", "/acme") for i in range(4)])
    yield s
    await s.aclose()


@pytest.fixture(params=SHARED_BACKENDS)
def shared(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


async def _new_events(store: Store, after: int) -> list[tuple[str, str | None, str | None]]:
    """(type, device, subject) of every event after ``after``."""
    return [(e.type, e.device_id, e.subject) for e in await store.events(after, 1000)]


def _event(kind: str, device: str | None = None, subject: str | None = None) -> NewEvent:
    return NewEvent(kind, device_id=device, subject=subject, data={"n": 1, "why": kind})


# -- the log ------------------------------------------------------------------------------


async def test_events_are_numbered_in_order_and_read_back(store: Store) -> None:
    start = await store.last_event()
    before = time.time()
    last = await store.append_events(
        [
            NewEvent("command.delivered", "dev-0", "c1", {"session": "s", "offers": 1}),
            NewEvent("device.checked_in", "dev-1"),
            NewEvent("rollout.wave_ran", subject="n1", data={"nested": {"a": [1, 2.5, None]}}),
        ]
    )
    after = time.time()
    found = await store.events(start, 10)
    assert [e.seq for e in found] == sorted({e.seq for e in found})
    assert found[0].seq > start
    assert found[-1].seq == last == await store.last_event()
    assert [(e.type, e.device_id, e.subject, e.data) for e in found] == [
        ("command.delivered", "dev-0", "c1", {"session": "s", "offers": 1}),
        ("device.checked_in", "dev-1", None, {}),
        ("rollout.wave_ran", None, "n1", {"nested": {"a": [1, 2.5, None]}}),
    ]
    assert all(before <= e.at <= after for e in found)
    # Paging: after and limit.
    assert await store.events(found[0].seq, 1) == [found[1]]
    assert await store.events(last, 10) == []
    assert await store.events(start, 0) == []
    # Nothing to append: the current last.
    assert await store.append_events([]) == last


async def test_events_are_filtered_by_type_prefix_and_device(store: Store) -> None:
    start = await store.last_event()
    await store.append_events(
        [
            _event("command.delivered", "dev-0", "c1"),
            _event("commandx.other", "dev-0"),
            _event("device.enrolled", "dev-1"),
            _event("command.acknowledged", "dev-1", "c1"),
            _event("command", "dev-2"),
        ]
    )

    async def types(**filters: Any) -> list[str]:
        return [e.type for e in await store.events(start, 100, **filters)]

    assert await types(types=["command.*"]) == ["command.delivered", "command.acknowledged"]
    assert await types(types=["device.enrolled", "command"]) == ["device.enrolled", "command"]
    assert await types(types=["command.*", "device.*"]) == [
        "command.delivered",
        "device.enrolled",
        "command.acknowledged",
    ]
    assert await types(device_id="dev-1") == ["device.enrolled", "command.acknowledged"]
    assert await types(types=["command.*"], device_id="dev-1") == ["command.acknowledged"]
    assert await types(types=["nothing.*"]) == []
    # The limit counts matching events only.
    assert await store.events(start, 1, types=["device.*"]) == await store.events(
        start, 5, types=["device.enrolled"]
    )


async def test_bad_events_and_filters_are_refused_naming_the_problem(store: Store) -> None:
    start = await store.last_event()
    with pytest.raises(ValueError, match="type"):
        await store.append_events([_event("ok.one"), NewEvent("")])
    with pytest.raises(ValueError, match="data"):
        await store.append_events([NewEvent("x.y", data={"when": object()})])
    with pytest.raises(ValueError, match="device_id"):
        await store.append_events([NewEvent("x.y", device_id=7)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data"):
        await store.append_events([NewEvent("x.y", data={"nul": "a\x00b"})])
    with pytest.raises(ValueError, match="types"):
        await store.events(0, 10, types="command.*")
    # Nothing of a refused call was written, and a refused event fails the call it rides on.
    with pytest.raises(ValueError, match="type"):
        await store.enqueue("c-bad", "syncml", b"<Get/>", ["dev-0"], events=[NewEvent("")])
    assert await store.command_status("c-bad") is None
    assert await store.events(start, 10) == []


async def test_pruning_deletes_by_age_and_never_reuses_a_number(store: Store) -> None:
    await store.append_events([_event("old.one")])
    await store.append_events([_event("old.two")])
    await store.append_events([_event("new.one")])
    found = await store.events(0, 10)
    cut = found[-1].at
    older = [e for e in found if e.at < cut]
    assert older, "the events were written at different times"
    assert await store.prune_events(cut) == len(older)
    assert await store.events(0, 10) == [e for e in found if e.at >= cut]
    assert await store.prune_events(time.time() + 10) == len(found) - len(older)
    assert await store.events(0, 10) == []
    assert await store.last_event() == found[-1].seq
    last = await store.append_events([_event("after.pruning")])
    assert last > found[-1].seq
    assert [e.seq for e in await store.events(0, 10)] == [last]


async def test_wait_for_events_returns_at_once_or_wakes_on_an_append(store: Store) -> None:
    last = await store.append_events([_event("first.one")])
    with trio.fail_after(5):
        await store.wait_for_events(last - 1)
    woke: list[int] = []

    async def waiter() -> None:
        await store.wait_for_events(last)
        woke.append(await store.last_event())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            await store.merge_facts("dev-0", {"k": 1}, events=[_event("device.changed", "dev-0")])
    assert woke
    assert woke[0] > last


async def test_wait_for_events_sees_another_store(shared: str, tmp_path: Path) -> None:
    first = await open_backend(shared, tmp_path)
    other = await open_peer(shared, tmp_path)
    try:
        last = await first.last_event()
        woke = trio.Event()

        async def waiter() -> None:
            await first.wait_for_events(last)
            woke.set()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert not woke.is_set()
                await other.append_events([_event("from.elsewhere")])
                await woke.wait()
        assert [e.type for e in await first.events(last, 10)] == ["from.elsewhere"]
    finally:
        await first.aclose()
        await other.aclose()


async def _tail(store: Store, stop: trio.Event, seen: list[int]) -> None:
    """Reads the log as a console would, in pages, until ``stop`` and nothing is left;
    asserts that no answer goes back."""
    after = 0
    while True:
        done = stop.is_set()
        page = await store.events(after, 7)
        for event in page:
            assert event.seq > after, f"seq {event.seq} after {after}"
            after = event.seq
            seen.append(event.seq)
        if done and not page:
            return
        if not page:
            await trio.sleep(0)


async def test_concurrent_appends_are_read_in_order_without_gaps(
    shared: str, tmp_path: Path
) -> None:
    # Two connections append (alone, and with a change) while a third reads the log: a
    # reader must never skip an event that commits after one with a higher number.
    first = await open_backend(shared, tmp_path)
    await first.upsert_devices([Device(f"dev-{i}", "windows", "/acme") for i in range(2)])
    stores = [first, await open_peer(shared, tmp_path), await open_peer(shared, tmp_path)]
    seen: list[int] = []
    try:

        async def writer(store: Store, name: str) -> None:
            for i in range(40):
                if i % 2:
                    await store.append_events([_event(f"{name}.a"), _event(f"{name}.b")])
                else:
                    await store.merge_facts("dev-1", {name: i}, events=[_event(f"{name}.m")])

        stop = trio.Event()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_tail, stores[2], stop, seen)
                async with trio.open_nursery() as writers:
                    writers.start_soon(writer, stores[0], "one")
                    writers.start_soon(writer, stores[1], "two")
                stop.set()
        everything = [e.seq for e in await stores[2].events(0, 1000)]
        assert len(everything) == 2 * (20 * 2 + 20)
        assert seen == everything
    finally:
        for s in stores:
            await s.aclose()


async def test_appends_from_two_processes_are_read_in_order_without_gaps(
    shared: str, tmp_path: Path
) -> None:
    reader = await open_backend(shared, tmp_path)
    url = database_url(shared, tmp_path)
    assert url is not None
    seen: list[int] = []
    try:
        stop = trio.Event()
        results: list[Any] = []

        async def race() -> None:
            calls = [("append_each", {"kind": f"p{i}.event", "times": 30}) for i in range(2)]
            results.extend(await race_in_processes(url, calls))
            stop.set()

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_tail, reader, stop, seen)
                nursery.start_soon(race)
        appended = sorted(s for r in results for s in r)
        assert seen == appended == [e.seq for e in await reader.events(0, 1000)]
        assert len(appended) == 60
    finally:
        await reader.aclose()


# -- events written with the change they report -------------------------------------------


def _certificate(serial: str, device_id: str) -> IssuedCertificate:
    der = b"\x30\x82" + serial.encode() + bytes(range(64))
    return IssuedCertificate(
        serial,
        hashlib.sha256(der).hexdigest(),
        f"CN={serial}",
        "/acme",
        "apple",
        T0,
        T0 + 86400,
        der,
        device_id=device_id,
    )


async def test_successful_changes_write_their_events(store: Store) -> None:
    start = await store.last_event()
    e = _event
    await store.upsert_devices([Device("dev-9", "apple")], events=[e("device.enrolled", "dev-9")])
    assert await store.merge_facts("dev-9", {"a": 1}, events=[e("inv.changed", "dev-9")])
    assert await store.merge_facts("dev-9", {"b": 1}, feed=False, events=[e("quiet", "dev-9")])
    assert await store.update_device("dev-9", {"org": "/x"}, events=[e("moved", "dev-9")])
    assert await store.set_auth("dev-9", {"m": "t"}, events=[e("auth.set", "dev-9")])
    assert await store.enqueue("c1", "apple", b"x", ["dev-9"], events=[e("queued", "dev-9")])
    assert await store.record_result(
        "dev-9", "c1", DeliveryState.ACCEPTED, None, None, events=[e("accepted", "dev-9", "c1")]
    )
    assert await store.enqueue("c2", "apple", b"x", ["dev-9"]) == 1
    assert await store.cancel_open("dev-9", "gone", events=[e("unenrolled", "dev-9")]) == 2
    n = Notification(id="n1", app_id="app")
    await store.put_notification(n, events=[e("rollout.scheduled", subject="n1")])
    await store.record_certificate(_certificate("a1", "dev-9"))
    revoked = await store.revoke_certificates(
        reason="lost", at=T0, serial="a1", events=[e("cert.revoked", "dev-9", "a1")]
    )
    assert [c.serial for c in revoked] == ["a1"]
    assert await _new_events(store, start) == [
        ("device.enrolled", "dev-9", None),
        ("inv.changed", "dev-9", None),
        ("quiet", "dev-9", None),
        ("moved", "dev-9", None),
        ("auth.set", "dev-9", None),
        ("queued", "dev-9", None),
        ("accepted", "dev-9", "c1"),
        ("unenrolled", "dev-9", None),
        ("rollout.scheduled", None, "n1"),
        ("cert.revoked", "dev-9", "a1"),
    ]
    # The changes themselves landed too.
    device = await store.get_device("dev-9")
    assert device is not None
    assert (device.org, device.facts) == ("/x", {"a": 1, "b": 1})


async def test_failed_changes_write_none_of_their_events(store: Store) -> None:
    start = await store.last_event()
    many = [_event("should.not", "dev-0"), _event("appear.ever")]
    with pytest.raises(UnknownDevices):
        await store.enqueue("c1", "syncml", b"<Get/>", ["dev-0", "ghost"], events=many)
    await store.enqueue("c1", "syncml", b"<Get/>", ["dev-0"])
    with pytest.raises(CommandExists):
        await store.enqueue("c1", "syncml", b"<Get/>", ["dev-1"], new=True, events=many)
    assert await store.record_result("dev-0", "c1", DeliveryState.ERROR, "500", None)
    # A result repeated for a final delivery is not stored: its events are not either.
    again = DeliveryState.ACKNOWLEDGED
    assert not await store.record_result("dev-0", "c1", again, "200", None, events=many)
    assert not await store.record_result("dev-0", "nope", again, "200", None, events=many)
    assert not await store.merge_facts("ghost", {"a": 1}, events=many)
    assert not await store.update_device("ghost", {"org": "/x"}, events=many)
    assert not await store.set_auth("ghost", {"m": "t"}, events=many)
    with pytest.raises(ValueError, match="nope"):
        await store.update_device("dev-0", {"nope": 1}, events=many)
    n = await store.put_notification(Notification(id="n1", app_id="app"))
    with pytest.raises(RevisionConflict):
        await store.put_notification(n, expected_rev=7, events=many)
    with pytest.raises(RevisionConflict):
        await store.put_notification(n, events=many)
    with pytest.raises(ValueError, match="device_id or a serial"):
        await store.revoke_certificates(reason="x", at=T0, events=many)
    assert await store.events(start, 100) == []


async def test_a_fan_out_writes_its_events_with_its_wave(store: Store) -> None:
    start = await store.last_event()
    wave = [_event("rollout.wave_ran", subject="n1"), _event("rollout.finished", subject="n1")]
    made = await store.fan_out(
        [CommandBatch("w1", "apple", b"x", ["dev-0", "dev-1"])],
        licences=LicenceGrant("app-1", 5, ["dev-0", "dev-1"]),
        notification=Notification(id="n1", app_id="app-1", state="done"),
        events=wave,
    )
    assert made == 2
    assert await _new_events(store, start) == [
        ("rollout.wave_ran", None, "n1"),
        ("rollout.finished", None, "n1"),
    ]
    assert (await store.events(start, 1))[0].data == {"n": 1, "why": "rollout.wave_ran"}
    mark = await store.last_event()
    # A wave that queues nothing new (the devices hold the command) is still written: so
    # are its events. So are those of a fan-out with nothing to queue.
    stored = await store.get_notification("n1")
    assert stored is not None
    again = await store.fan_out(
        [CommandBatch("w1", "apple", b"x", ["dev-0"])],
        notification=stored,
        expected_rev=stored.rev,
        events=[_event("again", subject="n1")],
    )
    assert again == 0
    assert await store.fan_out([], events=[_event("nothing.queued")]) == 0
    assert await _new_events(store, mark) == [
        ("again", None, "n1"),
        ("nothing.queued", None, None),
    ]


async def test_a_refused_fan_out_writes_none_of_its_events(store: Store) -> None:
    current = await store.put_notification(Notification(id="n1", app_id="app-1"))
    start = await store.last_event()
    many = [_event("should.not", "dev-0"), _event("appear.ever", subject="n1")]
    with pytest.raises(UnknownDevices):
        await store.fan_out(
            [CommandBatch("w1", "apple", b"x", ["dev-0", "ghost"])],
            notification=current,
            expected_rev=current.rev,
            events=many,
        )
    with pytest.raises(RevisionConflict):
        # A cancel landed since the wave read the notification.
        await store.fan_out(
            [CommandBatch("w1", "apple", b"x", ["dev-0"])],
            notification=current,
            expected_rev=current.rev + 1,
            events=many,
        )
    await store.fan_out([], licences=LicenceGrant("app-1", 1, ["dev-3"]))
    with pytest.raises(LicencesExhausted):
        await store.fan_out(
            [CommandBatch("w1", "apple", b"x", ["dev-0"])],
            licences=LicenceGrant("app-1", 1, ["dev-0"]),
            events=many,
        )
    bad = [_event("fine"), NewEvent("x.y", data={"when": object()})]
    with pytest.raises(ValueError, match="data"):
        await store.fan_out([CommandBatch("w1", "apple", b"x", ["dev-0"])], events=bad)
    assert await store.events(start, 100) == []
    assert await store.command_status("w1") is None
    assert await store.get_notification("n1") == current


async def test_take_reports_what_it_hands_out_and_gives_up_on(store: Store) -> None:
    for c in ("c1", "c2", "c3"):
        await store.enqueue(c, "syncml", b"<Get/>", ["dev-0"])
    await store.enqueue("quiet", "syncml", b"<Get/>", ["dev-1"])
    start = await store.last_event()
    taken = await store.take("dev-0", "s1", 2, delivered_event=True)
    assert [d.command_id for d in taken] == ["c1", "c2"]
    found = await store.events(start, 10)
    assert [(e.type, e.device_id, e.subject, e.data) for e in found] == [
        ("command.delivered", "dev-0", "c1", {"session": "s1", "offers": 1}),
        ("command.delivered", "dev-0", "c2", {"session": "s1", "offers": 1}),
    ]
    # Without the flag (as every existing caller takes): nothing.
    assert [d.command_id for d in await store.take("dev-1", "s1", 5)] == ["quiet"]
    assert await store.events(found[-1].seq, 10) == []
    # Nothing to hand out: nothing reported.
    assert await store.take("dev-3", "s1", 5, delivered_event=True) == []
    mark = await store.last_event()
    assert mark == found[-1].seq
    # c1 and c2 were handed out once without an answer: with a cap of one they end failed,
    # and c3 goes out.
    [third] = await store.take("dev-0", "s2", 5, max_offers=1, delivered_event=True)
    assert third.command_id == "c3"
    status = "offered 1 times without an answer"
    assert [(e.type, e.subject, e.data) for e in await store.events(mark, 10)] == [
        ("command.failed", "c1", {"status": status}),
        ("command.failed", "c2", {"status": status}),
        ("command.delivered", "c3", {"session": "s2", "offers": 1}),
    ]


# -- commands: listing and cancelling -----------------------------------------------------


async def test_commands_are_listed_in_queue_order_with_counts(store: Store) -> None:
    before = time.time()
    await store.enqueue("w1", "syncml", b"<Get/>", ["dev-0", "dev-1", "dev-2"])
    await store.enqueue("a1", "apple", b"<plist/>", ["dev-1"])
    await store.enqueue("w2", "syncml", b"<Exec/>", ["dev-2"])
    await store.enqueue("w1", "syncml", b"<Get/>", ["dev-3"])  # queued again: keeps its place
    await store.take("dev-0", "s", 5)
    await store.record_result("dev-1", "w1", DeliveryState.ACKNOWLEDGED, "200", None)
    found = await store.list_commands()
    assert [c.command_id for c in found] == ["w1", "a1", "w2"]
    assert [c.seq for c in found] == sorted({c.seq for c in found})
    w1 = found[0]
    assert (w1.kind, w1.body) == ("syncml", b"<Get/>")
    assert w1.counts == {"sent": 1, "acknowledged": 1, "queued": 2}
    assert found[1].counts == {"queued": 1}
    assert before <= w1.created_at <= time.time()
    # Paging, and filters.
    assert [c.command_id for c in await store.list_commands(after="w1", limit=1)] == ["a1"]
    assert [c.command_id for c in await store.list_commands(after="a1")] == ["w2"]
    assert [c.command_id for c in await store.list_commands(after="w2")] == []
    assert [c.command_id for c in await store.list_commands(after="unknown")] == ["w1", "a1", "w2"]
    assert [c.command_id for c in await store.list_commands(limit=0)] == []
    by_device = await store.list_commands(device_id="dev-1")
    assert [c.command_id for c in by_device] == ["w1", "a1"]
    assert by_device[0].counts == w1.counts  # counts are the command's, not the device's
    assert [c.command_id for c in await store.list_commands(kind="syncml")] == ["w1", "w2"]
    assert [c.command_id for c in await store.list_commands(kind="apple", device_id="dev-2")] == []
    page = await store.list_commands(after="w1", device_id="dev-2")
    assert [c.command_id for c in page] == ["w2"]


async def test_cancel_ends_only_what_was_not_handed_out(store: Store) -> None:
    await store.enqueue("c1", "syncml", b"<Get/>", ["dev-0", "dev-1", "dev-2", "dev-3"])
    await store.take("dev-0", "s", 5)  # sent
    await store.take("dev-1", "s", 5)
    await store.record_result("dev-1", "c1", DeliveryState.NOT_NOW, "1000", None)  # deferred
    await store.take("dev-2", "s", 5)
    await store.record_result("dev-2", "c1", DeliveryState.ACCEPTED, "202", None)
    start = await store.last_event()
    events = [
        NewEvent("command.cancelled", device_id=d, subject="c1", data={"status": "stop"})
        for d in ("dev-0", "dev-1", "dev-2", "dev-3")
    ]
    ended = await store.cancel_deliveries("c1", None, "stop", events=events)
    assert sorted(ended) == ["dev-1", "dev-3"]
    status = await store.command_status("c1")
    assert status is not None
    states = {d.device_id: (d.state, d.status) for d in status.deliveries}
    assert states == {
        "dev-0": (DeliveryState.SENT, None),
        "dev-1": (DeliveryState.ERROR, "stop"),
        "dev-2": (DeliveryState.ACCEPTED, "202"),
        "dev-3": (DeliveryState.ERROR, "stop"),
    }
    # The events of devices whose delivery was ended, not of those left alone.
    assert sorted(await _new_events(store, start)) == [
        ("command.cancelled", "dev-1", "c1"),
        ("command.cancelled", "dev-3", "c1"),
    ]
    assert await store.cancel_deliveries("c1", None, "stop", events=events) == []
    assert await store.cancel_deliveries("nope", None, "stop") == []
    assert len(await store.events(start, 10)) == 2


async def test_cancel_for_some_devices(store: Store) -> None:
    await store.enqueue("c1", "apple", b"x", ["dev-0", "dev-1", "dev-2"])
    await store.enqueue("c2", "apple", b"x", ["dev-0"])
    start = await store.last_event()
    general = NewEvent("audit.cancel", subject="c1")
    assert await store.cancel_deliveries("c1", ["dev-2", "dev-0", "ghost"], "x", events=[general])
    status = await store.command_status("c1")
    assert status is not None
    assert {d.device_id: d.state for d in status.deliveries} == {
        "dev-0": DeliveryState.ERROR,
        "dev-1": DeliveryState.QUEUED,
        "dev-2": DeliveryState.ERROR,
    }
    other = await store.command_status("c2")
    assert other is not None
    assert [d.state for d in other.deliveries] == [DeliveryState.QUEUED]
    assert await _new_events(store, start) == [("audit.cancel", None, "c1")]
    assert await store.cancel_deliveries("c1", [], "x") == []
    assert await store.queue_depth() == 2


# -- webhooks -----------------------------------------------------------------------------


def _hook(hook_id: str = "wh1", **fields: Any) -> Webhook:
    values: dict[str, Any] = {
        "url": "https://console.example/hook",
        "secret": "s3cret",
        "types": ("command.*",),
        "created_at": T0,
        **fields,
    }
    return Webhook(hook_id, **values)


async def test_webhooks_are_stored_listed_replaced_and_deleted(store: Store) -> None:
    assert await store.get_webhook("wh1") is None
    assert await store.list_webhooks() == []
    second = _hook("wh0", created_at=T0 + 5, types=(), description="all", cursor=9)
    first = _hook("wh1", state="paused", last_error="boom", last_success_at=T0 + 1)
    await store.put_webhook(second)
    await store.put_webhook(first)
    assert await store.get_webhook("wh1") == first
    assert await store.list_webhooks() == [first, second]  # oldest first
    replaced = _hook("wh1", url="https://other.example/", types=("a.b", "c.*"))
    await store.put_webhook(replaced)
    assert await store.get_webhook("wh1") == replaced
    assert await store.delete_webhook("wh1")
    assert not await store.delete_webhook("wh1")
    assert await store.list_webhooks() == [second]
    with pytest.raises(ValueError, match="state"):
        await store.put_webhook(_hook("bad", state="sleeping"))
    with pytest.raises(ValueError, match="types"):
        await store.put_webhook(_hook("bad", types="command.*"))
    with pytest.raises(ValueError, match="id"):
        await store.put_webhook(_hook(""))
    with pytest.raises(ValueError, match="cursor"):
        await store.put_webhook(_hook("bad", cursor=-1))
    assert await store.get_webhook("bad") is None


async def _advance(store: Store, hook: str, expected: int, cursor: int, **fields: Any) -> bool:
    values: dict[str, Any] = {
        "state": "active",
        "attempts": 0,
        "next_attempt_at": 0.0,
        "last_error": None,
        "last_success_at": T0,
        **fields,
    }
    return await store.advance_webhook(hook, expected_cursor=expected, cursor=cursor, **values)


async def test_advancing_a_webhook_is_compare_and_set_with_its_dead_letters(store: Store) -> None:
    await store.put_webhook(_hook(cursor=3))
    assert await _advance(store, "wh1", 3, 5)
    assert not await _advance(store, "wh1", 3, 9)  # a deliverer that lost its lease
    assert not await _advance(store, "ghost", 0, 1)
    failed = [
        WebhookFailure("wh1", 6, T0 + 2, 5, "HTTP 500"),
        WebhookFailure("wh1", 7, T0 + 3, 5, "timed out"),
    ]
    assert await _advance(
        store,
        "wh1",
        5,
        7,
        state="failing",
        attempts=2,
        next_attempt_at=T0 + 60,
        last_error="HTTP 500",
        failed=failed,
    )
    hook = await store.get_webhook("wh1")
    assert hook is not None
    assert (hook.cursor, hook.state, hook.attempts, hook.next_attempt_at) == (
        7,
        "failing",
        2,
        T0 + 60,
    )
    assert (hook.last_error, hook.last_success_at) == ("HTTP 500", T0)
    assert await store.webhook_failures("wh1") == failed
    assert await store.webhook_failures("wh1", after=6) == failed[1:]
    assert await store.webhook_failures("wh1", limit=1) == failed[:1]
    # A failed compare-and-set stores no dead letter.
    late = [WebhookFailure("wh1", 8, T0, 1, "x")]
    assert not await _advance(store, "wh1", 5, 8, failed=late)
    assert await store.webhook_failures("wh1") == failed
    with pytest.raises(ValueError, match="webhook"):
        await _advance(store, "wh1", 7, 8, failed=[WebhookFailure("other", 8, T0, 1, "x")])
    assert (await store.get_webhook("wh1") or hook).cursor == 7
    assert await store.delete_webhook("wh1")
    assert await store.webhook_failures("wh1") == []


async def test_advancing_a_webhook_can_also_compare_its_state(store: Store) -> None:
    await store.put_webhook(_hook(cursor=3))
    assert not await _advance(store, "wh1", 3, 5, expected_state="failing")
    # An administrator pauses it (the cursor stays) while a delivery is in flight ...
    assert await _advance(store, "wh1", 3, 3, state="paused", expected_state="active")
    # ... whose record, made with the state it read before, is refused.
    late = [WebhookFailure("wh1", 4, T0, 5, "HTTP 500")]
    assert not await _advance(
        store, "wh1", 3, 4, state="failing", attempts=0, failed=late, expected_state="active"
    )
    hook = await store.get_webhook("wh1")
    assert hook is not None
    assert (hook.cursor, hook.state) == (3, "paused")
    assert await store.webhook_failures("wh1") == []
    # A delivery that read the pause records its outcome and keeps it.
    assert await _advance(store, "wh1", 3, 5, state="paused", expected_state="paused")
    hook = await store.get_webhook("wh1")
    assert hook is not None
    assert (hook.cursor, hook.state) == (5, "paused")
    # Both compared: the state matching does not make up for a moved cursor.
    assert not await _advance(store, "wh1", 3, 6, expected_state="paused")
    assert not await _advance(store, "ghost", 0, 1, expected_state="active")
    with pytest.raises(ValueError, match="expected_state"):
        await _advance(store, "wh1", 5, 6, expected_state="sleeping")
    assert (await store.get_webhook("wh1") or hook).cursor == 5


async def test_a_pause_and_a_delivery_racing_from_two_stores_one_wins(
    shared: str, tmp_path: Path
) -> None:
    first = await open_backend(shared, tmp_path)
    other = await open_peer(shared, tmp_path)
    try:
        await first.put_webhook(_hook(cursor=0))
        for round_ in range(10):
            won: list[str] = []

            async def pause(won: list[str]) -> None:
                hook = await first.get_webhook("wh1")
                assert hook is not None
                if await _advance(
                    first,
                    "wh1",
                    hook.cursor,
                    hook.cursor,
                    state="paused",
                    expected_state="active",
                ):
                    won.append("pause")

            async def deliver(expected: int, won: list[str]) -> None:
                if await _advance(other, "wh1", expected, expected + 1, expected_state="active"):
                    won.append("delivery")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pause, won)
                nursery.start_soon(deliver, round_, won)
            hook = await first.get_webhook("wh1")
            assert hook is not None
            # A delivery recorded after the pause would have made it active again.
            assert won in (["pause"], ["delivery"], ["delivery", "pause"])
            assert hook.state == ("paused" if "pause" in won else "active")
            # Resumed, past the round's event whichever won.
            if hook.state == "paused":
                assert await _advance(
                    first, "wh1", hook.cursor, round_ + 1, expected_state="paused"
                )
            assert (await first.get_webhook("wh1") or hook).cursor == round_ + 1
    finally:
        await first.aclose()
        await other.aclose()


async def test_two_stores_advancing_one_webhook_one_wins(shared: str, tmp_path: Path) -> None:
    first = await open_backend(shared, tmp_path)
    other = await open_peer(shared, tmp_path)
    try:
        await first.put_webhook(_hook(cursor=0))
        for round_ in range(10):
            won: list[str] = []

            async def deliver(store: Store, name: str, expected: int, won: list[str]) -> None:
                dead = [WebhookFailure("wh1", expected + 1, T0, 1, name)]
                if await _advance(store, "wh1", expected, expected + 1, failed=dead):
                    won.append(name)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(deliver, first, "first", round_, won)
                nursery.start_soon(deliver, other, "other", round_, won)
            assert len(won) == 1
            [letter] = await other.webhook_failures("wh1", after=round_)
            assert letter.error == won[0]
        hook = await first.get_webhook("wh1")
        assert hook is not None
        assert hook.cursor == 10
    finally:
        await first.aclose()
        await other.aclose()


# -- API tokens ---------------------------------------------------------------------------


def _token(token_id: str, name: str, **fields: Any) -> ApiToken:
    values: dict[str, Any] = {
        "scope": "full",
        "secret_sha256": hashlib.sha256(token_id.encode()).hexdigest(),
        "created_at": T0,
        **fields,
    }
    return ApiToken(token_id, name, **values)


async def test_api_tokens_are_unique_by_id_and_by_live_name(store: Store) -> None:
    ci = _token("t1", "ci", scope="read", created_at=T0 + 1)
    ops = _token("t0", "ops", created_at=T0 + 2, last_used_at=T0 + 3)
    await store.put_api_token(ci)
    await store.put_api_token(ops)
    assert await store.get_api_token("t1") == ci
    assert await store.get_api_token("nope") is None
    assert await store.list_api_tokens() == [ci, ops]
    with pytest.raises(RevisionConflict, match="t1"):
        await store.put_api_token(_token("t1", "another"))
    with pytest.raises(RevisionConflict, match="ci"):
        await store.put_api_token(_token("t2", "ci"))
    revoked = await store.revoke_api_token("t1", at=T0 + 10)
    assert revoked is not None
    assert revoked.revoked_at == T0 + 10
    assert await store.revoke_api_token("t1", at=T0 + 20) == revoked  # the first time kept
    assert await store.revoke_api_token("nope", at=T0) is None
    # A revoked token's name is free again; its id is not.
    again = _token("t2", "ci", created_at=T0 + 30)
    await store.put_api_token(again)
    with pytest.raises(RevisionConflict):
        await store.put_api_token(_token("t1", "fresh"))
    assert await store.list_api_tokens() == [revoked, ops, again]
    with pytest.raises(ValueError, match="scope"):
        await store.put_api_token(_token("t3", "x", scope="admin"))
    with pytest.raises(ValueError, match="secret_sha256"):
        await store.put_api_token(_token("t3", "x", secret_sha256="ABC"))
    with pytest.raises(ValueError, match="name"):
        await store.put_api_token(_token("t3", ""))
    assert await store.get_api_token("t3") is None


async def test_touching_a_token_writes_its_last_use_at_most_once_a_minute(store: Store) -> None:
    await store.put_api_token(_token("t1", "ci"))
    await store.put_api_token(_token("t2", "ops", last_used_at=T0 + 500))

    async def last_used(token_id: str) -> float | None:
        token = await store.get_api_token(token_id)
        assert token is not None
        return token.last_used_at

    await store.touch_api_token("t1", at=T0 + 100)  # never used: written
    assert await last_used("t1") == T0 + 100
    await store.touch_api_token("t1", at=T0 + 159.5)  # within the minute
    assert await last_used("t1") == T0 + 100
    await store.touch_api_token("t1", at=T0 + 160)  # a minute later
    assert await last_used("t1") == T0 + 160
    await store.touch_api_token("t1", at=T0 + 10)  # an earlier use (another node's clock)
    assert await last_used("t1") == T0 + 160
    # Each token on its own.
    await store.touch_api_token("t2", at=T0 + 559)
    assert await last_used("t2") == T0 + 500
    await store.touch_api_token("t2", at=T0 + 561)
    assert await last_used("t2") == T0 + 561
    assert await last_used("t1") == T0 + 160
    await store.touch_api_token("nope", at=T0 + 1000)  # unknown: nothing happens
    assert await store.get_api_token("nope") is None
    with pytest.raises(ValueError, match="at"):
        await store.touch_api_token("t1", at=float("nan"))
    assert await last_used("t1") == T0 + 160


async def test_two_stores_creating_one_token_name_one_wins(shared: str, tmp_path: Path) -> None:
    first = await open_backend(shared, tmp_path)
    other = await open_peer(shared, tmp_path)
    try:
        for round_ in range(5):
            won: list[str] = []

            async def create(store: Store, token_id: str, name: str, won: list[str]) -> None:
                try:
                    await store.put_api_token(_token(token_id, name))
                except RevisionConflict:
                    return
                won.append(token_id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(create, first, f"a{round_}", f"name-{round_}", won)
                nursery.start_soon(create, other, f"b{round_}", f"name-{round_}", won)
            assert len(won) == 1
        assert len(await first.list_api_tokens()) == 5
    finally:
        await first.aclose()
        await other.aclose()


# -- upgrades -----------------------------------------------------------------------------


def _old_sqlite(path: Path, version: int) -> None:
    from mdmgate.storage.sqlite import MIGRATIONS  # noqa: PLC0415 - one backend's detail

    db = sqlite3.connect(path)
    for script in MIGRATIONS[:version]:
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (?)", (version,))
    db.execute("INSERT INTO devices VALUES ('w1', 'windows', '/', NULL, NULL, '{}', '{}')")
    db.execute("INSERT INTO commands VALUES ('old-b', 'syncml', x'3c4765742f3e', 20)")
    db.execute("INSERT INTO commands VALUES ('old-a', 'syncml', x'3c4765742f3e', 10)")
    db.execute(
        "INSERT INTO deliveries (command_id, device_id, state, updated)"
        " VALUES ('old-b', 'w1', 'queued', 0), ('old-a', 'w1', 'queued', 0)"
    )
    db.commit()
    db.close()


async def test_sqlite_upgrade_from_version_6_keeps_commands_and_adds_the_log(
    tmp_path: Path,
) -> None:
    from mdmgate.storage.sqlite import MIGRATIONS  # noqa: PLC0415 - one backend's detail

    path = tmp_path / "v6.db"
    _old_sqlite(path, 6)
    store = await SQLiteStore.open(path)
    try:
        # Commands stored before are numbered in the order they were first queued.
        listed = await store.list_commands()
        assert [(c.command_id, c.created_at, c.counts) for c in listed] == [
            ("old-a", 10.0, {"queued": 1}),
            ("old-b", 20.0, {"queued": 1}),
        ]
        await store.enqueue("new", "syncml", b"<Get/>", ["w1"], events=[_event("queued")])
        assert [c.command_id for c in await store.list_commands()] == ["old-a", "old-b", "new"]
        assert [e.type for e in await store.events(0, 10)] == ["queued"]
        await store.put_webhook(_hook())
        await store.put_api_token(_token("t1", "ci"))
        assert [d.command_id for d in await store.take("w1", "s", 5)] == ["old-b", "old-a", "new"]
    finally:
        await store.aclose()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
    db.close()


async def test_postgres_upgrade_keeps_commands_and_adds_the_log(
    postgres_server: Any,
) -> None:
    import secrets  # noqa: PLC0415

    from mdmgate.storage import pgwire  # noqa: PLC0415
    from mdmgate.storage.postgres import PostgresStore  # noqa: PLC0415 - one backend's detail
    from mdmgate.storage.postgres_schema import MIGRATIONS  # noqa: PLC0415

    schema = f"v2_{secrets.token_hex(4)}"
    admin_url = postgres_server.dsn("mdmgate_test")
    url = postgres_server.dsn("mdmgate_test", options=f"-csearch_path={schema}")
    # The schema just before the migration that numbered commands.
    previous = next(i for i, m in enumerate(MIGRATIONS) if "ADD COLUMN seq" in m)
    async with await pgwire.connect(admin_url) as admin:
        await admin.execute_script(f"CREATE SCHEMA {schema}")
        try:
            async with await pgwire.connect(url) as old:
                for script in MIGRATIONS[:previous]:
                    await old.execute_script(script)
                await old.execute_script(
                    "CREATE TABLE schema_version (version integer NOT NULL);"
                    f" INSERT INTO schema_version VALUES ({previous});"
                    " INSERT INTO devices (id, platform, org) VALUES ('m1', 'apple', '/');"
                    " INSERT INTO commands (id, kind, body, created) VALUES"
                    "  ('old-b', 'apple', 'x', to_timestamp(20)),"
                    "  ('old-a', 'apple', 'x', to_timestamp(10));"
                    " INSERT INTO deliveries (command_id, device_id, state)"
                    "  VALUES ('old-b', 'm1', 'queued'), ('old-a', 'm1', 'queued');"
                )
            store = await PostgresStore.open(url, pool_size=2)
            try:
                listed = await store.list_commands()
                assert [(c.command_id, c.created_at) for c in listed] == [
                    ("old-a", 10.0),
                    ("old-b", 20.0),
                ]
                await store.enqueue("new", "apple", b"x", ["m1"], events=[_event("queued")])
                assert [c.command_id for c in await store.list_commands()] == [
                    "old-a",
                    "old-b",
                    "new",
                ]
                assert [e.type for e in await store.events(0, 10)] == ["queued"]
                await store.put_webhook(_hook())
                await store.put_api_token(_token("t1", "ci"))
                with trio.fail_after(10):
                    await store.wait_for_events(0)
            finally:
                await store.aclose()
            version = await admin.fetchval(f"SELECT version FROM {schema}.schema_version")
            assert version == len(MIGRATIONS)
        finally:
            await admin.execute_script(f"DROP SCHEMA {schema} CASCADE")
