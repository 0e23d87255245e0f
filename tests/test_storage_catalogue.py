"""Conformance suite for the app catalogue part of the store (apps, orgs, notifications,
licences, fan-out, device paging): every backend runs every test here."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import trio

from mdmgate.catalogue.model import (
    App,
    AppVersion,
    AutoUpdate,
    CommandBatch,
    LicenceGrant,
    Notification,
    Org,
    WindowsDeployment,
)
from mdmgate.storage import (
    Device,
    LicencesExhausted,
    RevisionConflict,
    Store,
    UnknownDevices,
)
from mdmgate.storage.sqlite import MIGRATIONS, SQLiteStore
from tests.stores import (
    BACKENDS,
    SHARED_BACKENDS,
    database_url,
    grant_each,
    open_backend,
    open_peer,
    race_in_processes,
)

DEVICES = [f"dev-{i}" for i in range(6)]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path)
    await s.upsert_devices([Device(d, "ios", "/acme") for d in DEVICES])
    yield s
    await s.aclose()


@pytest.fixture(params=SHARED_BACKENDS)
def shared(request: pytest.FixtureRequest) -> str:
    """A backend whose database several stores and processes share."""
    kind: str = request.param
    return kind


def full_app(app_id: str = "app-1") -> App:
    """An app with every field set away from its default."""
    return App(
        id=app_id,
        name="Expenses",
        platform="windows",
        kind="store",
        identifier="Contoso.Expenses_8wekyb3d8bbwe",
        itunes_store_id=123456789,
        windows=WindowsDeployment(
            method="store",
            product_id="9NBLGGH4R32N",
            skuid="0016",
            license_id="lic-1",
            license_blob="PExpY2Vuc2U+",
            context="device",
        ),
        managed=False,
        system=True,
        vpp=True,
        licence_total=25,
        versions=(
            AppVersion(
                file_version="1.2.3.0",
                display_version="1.2.3",
                label="spring",
                state="retired",
                uploaded_at=1_700_000_000.25,
                published_at=1_700_000_100.5,
                package_url="https://cdn.example/expenses-1.2.3.msix",
                manifest_url="https://cdn.example/manifest.plist",
                assigned_orgs=("/acme", "/acme/sales"),
                assigned_devices=("dev-1", "dev-2"),
            ),
            AppVersion(file_version="1.3.0.0", assigned_orgs=("/",)),
        ),
        auto_update=AutoUpdate(
            enabled=False,
            orgs=("/acme/tokyo",),
            check_time="03:30",
            timezone="Asia/Tokyo",
            last_check=1_700_000_200.0,
            last_version="1.3.0.0",
        ),
        created_at=1_699_999_999.125,
    )


def simple_app(app_id: str, name: str = "App") -> App:
    return App(id=app_id, name=name, platform="ios", kind="internal", identifier=f"com.{app_id}")


def full_notification(notification_id: str = "n-1") -> Notification:
    return Notification(
        id=notification_id,
        app_id="app-1",
        kind="auto_update",
        version="1.3.0.0",
        orgs=("/acme",),
        devices=("dev-1", "dev-3"),
        all_devices=True,
        installed_only=True,
        percent=12.5,
        seed="seed-1",
        pace_per_minute=60,
        due_at=1_700_000_500.75,
        state="running",
        created_at=1_700_000_000.5,
        updated_at=1_700_000_400.0,
        waves=3,
        cursor="dev-3",
        counts={"queued": 10, "not_licensed": 2},
        command_ids=("cmd-a", "cmd-b"),
        resolved_version="1.3.0.0",
        error="partial: licences",
    )


def note(
    notification_id: str,
    *,
    app_id: str = "app-1",
    due_at: float = 0.0,
    created_at: float = 0.0,
    state: str = "scheduled",
) -> Notification:
    return msgspec.convert(
        {
            "id": notification_id,
            "app_id": app_id,
            "due_at": due_at,
            "created_at": created_at,
            "state": state,
        },
        Notification,
    )


# -- apps ---------------------------------------------------------------------------------


async def test_app_create_replace_and_conflicts(store: Store) -> None:
    created = await store.put_app(
        msgspec.structs.replace(simple_app("a"), rev=7), expected_rev=None
    )
    assert created.rev == 1  # the store sets the revision, whatever the caller passed
    assert await store.get_app("a") == created

    renamed = await store.put_app(msgspec.structs.replace(created, name="Renamed"), expected_rev=1)
    assert (renamed.rev, renamed.name) == (2, "Renamed")
    assert await store.get_app("a") == renamed

    # A replacement based on a stale revision: someone changed it meanwhile.
    with pytest.raises(RevisionConflict) as stale:
        await store.put_app(msgspec.structs.replace(created, name="Lost update"), expected_rev=1)
    assert (stale.value.expected, stale.value.stored) == (1, 2)
    # Creating what exists.
    with pytest.raises(RevisionConflict) as exists:
        await store.put_app(simple_app("a", "Duplicate"), expected_rev=None)
    assert (exists.value.expected, exists.value.stored) == (None, 2)
    # Replacing what does not exist.
    with pytest.raises(RevisionConflict) as missing:
        await store.put_app(simple_app("ghost"), expected_rev=1)
    assert (missing.value.expected, missing.value.stored) == (1, None)
    assert "does not exist" in str(missing.value)

    # None of the refused writes changed anything.
    assert await store.get_app("a") == renamed
    assert await store.get_app("ghost") is None
    assert [a.id for a in await store.list_apps()] == ["a"]
    third = await store.put_app(msgspec.structs.replace(renamed, name="Third"), expected_rev=2)
    assert third.rev == 3


async def test_app_round_trips_every_field(store: Store) -> None:
    app = full_app()
    stored = await store.put_app(app, expected_rev=None)
    assert stored == msgspec.structs.replace(app, rev=1)
    fetched = await store.get_app("app-1")
    assert fetched == stored
    assert fetched is not None
    assert fetched.windows is not None
    assert fetched.windows.context == "device"
    assert fetched.versions[0].assigned_devices == ("dev-1", "dev-2")
    assert fetched.auto_update is not None
    assert fetched.auto_update.timezone == "Asia/Tokyo"
    assert await store.list_apps() == [stored]


async def test_list_apps_in_id_order(store: Store) -> None:
    assert await store.list_apps() == []
    for app_id in ["m", "B", "a", "é", "Z1"]:
        await store.put_app(simple_app(app_id), expected_rev=None)
    assert [a.id for a in await store.list_apps()] == ["B", "Z1", "a", "m", "é"]


# -- orgs ---------------------------------------------------------------------------------


async def test_orgs_in_path_order_and_replaced(store: Store) -> None:
    assert await store.list_orgs() == []
    await store.put_org(Org(path="/acme/sales", name="Sales", created_at=2.5))
    await store.put_org(Org(path="/acme", name="ACME", created_at=1.0))
    await store.put_org(Org(path="/acme/sales/emea"))
    await store.put_org(Org(path="/acme/sales", name="Sales & Marketing", created_at=2.5))
    assert await store.list_orgs() == [
        Org(path="/acme", name="ACME", created_at=1.0),
        Org(path="/acme/sales", name="Sales & Marketing", created_at=2.5),
        Org(path="/acme/sales/emea"),
    ]


# -- notifications ------------------------------------------------------------------------


async def test_notification_crud(store: Store) -> None:
    assert await store.get_notification("n-1") is None
    full = await store.put_notification(msgspec.structs.replace(full_notification(), rev=9))
    assert full == msgspec.structs.replace(full_notification(), rev=1)  # the store sets it
    assert await store.get_notification("n-1") == full

    done = msgspec.structs.replace(
        full, state="done", waves=4, counts={"queued": 12}, cursor=None, error=None
    )
    done = await store.put_notification(done, expected_rev=1)
    assert done.rev == 2
    assert await store.get_notification("n-1") == done
    assert await store.list_notifications() == [done]

    await store.put_notification(note("n-2", app_id="app-2", created_at=1.0))
    await store.put_notification(note("n-0", app_id="app-1", created_at=2_000_000_000.0))
    # Same created_at as n-2: the id decides.
    await store.put_notification(note("n-10", app_id="app-2", created_at=1.0))
    assert [n.id for n in await store.list_notifications()] == ["n-10", "n-2", "n-1", "n-0"]
    assert [n.id for n in await store.list_notifications("app-1")] == ["n-1", "n-0"]
    assert [n.id for n in await store.list_notifications("app-2")] == ["n-10", "n-2"]
    assert await store.list_notifications("nothing") == []


async def test_due_notifications_and_next_due(store: Store) -> None:
    assert await store.due_notifications(1e12) == []
    assert await store.next_due() is None
    await store.put_notification(note("late", due_at=300.0, created_at=1.0))
    await store.put_notification(note("tie-new", due_at=100.0, created_at=20.0))
    await store.put_notification(note("tie-old", due_at=100.0, created_at=10.0, state="running"))
    await store.put_notification(note("early", due_at=50.0, created_at=30.0))
    for state in ("done", "cancelled", "failed"):
        await store.put_notification(note(f"ended-{state}", due_at=1.0, state=state))

    assert await store.next_due() == 50.0
    assert [n.id for n in await store.due_notifications(49.9)] == []
    assert [n.id for n in await store.due_notifications(100.0)] == [
        "early",
        "tie-old",
        "tie-new",
    ]
    assert [n.id for n in await store.due_notifications(1e12)] == [
        "early",
        "tie-old",
        "tie-new",
        "late",
    ]

    # A notification that finishes, or moves its due time, leaves or moves in the schedule.
    first = await store.get_notification("early")
    assert first is not None
    await store.put_notification(msgspec.structs.replace(first, state="done"), expected_rev=1)
    assert await store.next_due() == 100.0
    tie_old = await store.get_notification("tie-old")
    assert tie_old is not None
    await store.put_notification(msgspec.structs.replace(tie_old, due_at=500.0), expected_rev=1)
    assert [n.id for n in await store.due_notifications(1e12)] == ["tie-new", "late", "tie-old"]


async def test_notifications_compare_and_set(store: Store) -> None:
    created = await store.put_notification(note("n-1", due_at=10.0))
    assert created.rev == 1
    # Creating what exists, replacing what does not: refused, nothing changes.
    with pytest.raises(RevisionConflict) as exists:
        await store.put_notification(note("n-1", due_at=99.0))
    assert (exists.value.expected, exists.value.stored) == (None, 1)
    with pytest.raises(RevisionConflict) as missing:
        await store.put_notification(note("ghost"), expected_rev=1)
    assert (missing.value.expected, missing.value.stored) == (1, None)
    assert await store.get_notification("ghost") is None

    # A wave reads the notification, a cancel lands, the wave writes its stale copy back.
    wave = await store.get_notification("n-1")
    assert wave is not None
    running = await store.put_notification(
        msgspec.structs.replace(wave, state="running"), expected_rev=wave.rev
    )
    assert running.rev == 2
    wave = await store.get_notification("n-1")
    assert wave == running
    cancelled = await store.put_notification(
        msgspec.structs.replace(running, state="cancelled"), expected_rev=running.rev
    )
    assert cancelled.rev == 3
    with pytest.raises(RevisionConflict) as stale:
        await store.put_notification(
            msgspec.structs.replace(wave, waves=1, counts={"queued": 5}), expected_rev=wave.rev
        )
    assert (stale.value.expected, stale.value.stored) == (2, 3)
    # The cancel won: stored as it was written, and out of the schedule.
    assert await store.get_notification("n-1") == cancelled
    assert await store.due_notifications(1e12) == []
    assert await store.next_due() is None


async def test_concurrent_notification_writers_one_wins(store: Store) -> None:
    await store.put_notification(note("n-1"))
    won: list[int] = []

    async def write(i: int) -> None:
        try:
            await store.put_notification(note("n-1", due_at=float(i)), expected_rev=1)
        except RevisionConflict as exc:
            assert exc.stored == 2
            return
        won.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(write, i)
    assert len(won) == 1
    stored = await store.get_notification("n-1")
    assert stored is not None
    assert (stored.rev, stored.due_at) == (2, float(won[0]))


async def test_fan_out_stores_the_notification_in_the_same_step(store: Store) -> None:
    made = await store.fan_out(
        [CommandBatch("c1", "apple", b"x", ["dev-0", "dev-1"])],
        licences=LicenceGrant("app-1", 5, ["dev-0", "dev-1"]),
        notification=note("n-1", state="running"),
    )
    assert made == 2
    created = await store.get_notification("n-1")
    assert created is not None
    assert (created.rev, created.state) == (1, "running")
    wave = msgspec.structs.replace(created, waves=1, counts={"queued": 2}, cursor="dev-1")
    made = await store.fan_out(
        [CommandBatch("c1", "apple", b"x", ["dev-2"])], notification=wave, expected_rev=1
    )
    assert made == 1
    assert await store.get_notification("n-1") == msgspec.structs.replace(wave, rev=2)


async def test_a_cancel_during_a_wave_wins_and_the_wave_writes_nothing(store: Store) -> None:
    await store.put_app(simple_app("app-1"), expected_rev=None)
    created = await store.put_notification(note("n-1", state="running"))
    wave = msgspec.structs.replace(created, waves=1, counts={"queued": 3}, cursor="dev-2")
    # The cancel lands between the wave's read and its write.
    cancelled = await store.put_notification(
        msgspec.structs.replace(created, state="cancelled"), expected_rev=created.rev
    )
    last = await store.last_change()
    depth = await store.queue_depth()
    with pytest.raises(RevisionConflict) as conflict:
        await store.fan_out(
            [CommandBatch("wave-1", "apple", b"x", DEVICES[:3])],
            licences=LicenceGrant("app-1", 10, DEVICES[:3]),
            notification=wave,
            expected_rev=created.rev,
        )
    assert (conflict.value.expected, conflict.value.stored) == (1, 2)
    # Nothing of the wave was written: no deliveries, no licences, no counts, no changes.
    assert await store.get_notification("n-1") == cancelled
    assert await store.command_status("wave-1") is None
    assert await store.queue_depth() == depth
    assert await store.licence_holders("app-1") == []
    assert await store.changes(last, 10) == []
    # Nor when the fan-out itself fails: the notification is not written either.
    with pytest.raises(UnknownDevices):
        await store.fan_out(
            [CommandBatch("wave-1", "apple", b"x", ["ghost"])],
            notification=msgspec.structs.replace(cancelled, waves=9),
            expected_rev=cancelled.rev,
        )
    await store.fan_out([], licences=LicenceGrant("app-1", 1, ["dev-5"]))
    with pytest.raises(LicencesExhausted):
        await store.fan_out(
            [CommandBatch("wave-1", "apple", b"x", ["dev-4"])],
            licences=LicenceGrant("app-1", 1, ["dev-4"]),
            notification=note("n-new"),
        )
    assert await store.get_notification("n-1") == cancelled
    assert await store.get_notification("n-new") is None
    assert await store.command_status("wave-1") is None


async def test_catalogue_writes_are_in_the_change_feed(store: Store) -> None:
    last = await store.last_change()
    await store.put_org(Org(path="/acme"))
    app = await store.put_app(simple_app("app-1"), expected_rev=None)
    with pytest.raises(RevisionConflict):
        await store.put_app(simple_app("app-1"), expected_rev=None)
    await store.put_app(app, expected_rev=1)
    await store.fan_out([CommandBatch("c1", "apple", b"x", ["dev-0"])])  # no licences
    await store.fan_out([], licences=LicenceGrant("app-1", 3, ["dev-0", "dev-1"]))
    await store.fan_out([], licences=LicenceGrant("app-1", 3, ["dev-1"]))  # held: no move
    with pytest.raises(LicencesExhausted):
        await store.fan_out([], licences=LicenceGrant("app-1", 3, DEVICES[2:]))
    assert await store.release_licences("app-1", ["dev-5"]) == 0
    assert await store.release_licences("app-1", ["dev-0"]) == 1
    await store.put_notification(note("n-1"))
    found = await store.changes(last, 100)
    assert [(c.kind, c.key) for c in found] == [
        ("org", "/acme"),
        ("app", "app-1"),
        ("app", "app-1"),
        ("licence", "app-1"),
        ("licence", "app-1"),
    ]
    assert [c.seq for c in found] == sorted({c.seq for c in found})
    assert found[0].seq > last


# -- device paging ------------------------------------------------------------------------

# Code-point order: ASCII upper before lower, then Latin-1, CJK, fullwidth (U+FF21) and an
# astral character (U+1D518) last. UTF-16 order would put the astral one before U+FF21;
# a locale collation would mix cases.
_ODD_IDS = ["A", "Z", "a", "z", "é", "日本", "\uff21", "\U0001d518"]


async def test_list_devices_pages_in_code_point_order(store: Store) -> None:
    await store.upsert_devices([Device(i, "windows") for i in reversed(_ODD_IDS)])
    everything = ["A", "Z", "a", *DEVICES, "z", "é", "日本", "\uff21", "\U0001d518"]
    assert everything == sorted([*_ODD_IDS, *DEVICES])

    first = await store.list_devices(None, 4)
    assert [d.id for d in first] == ["A", "Z", "a", "dev-0"]
    assert first[3] == Device("dev-0", "ios", "/acme")
    seen: list[str] = []
    after: str | None = None
    while page := await store.list_devices(after, 4):
        assert len(page) <= 4
        seen += [d.id for d in page]
        after = page[-1].id
    assert seen == everything
    # ``after`` need not be an id the store holds.
    assert [d.id for d in await store.list_devices("dev-35", 2)] == ["dev-4", "dev-5"]
    assert [d.id for d in await store.list_devices("日", 10)] == _ODD_IDS[5:]
    assert await store.list_devices("\U0001d518", 10) == []
    assert await store.list_devices(None, 0) == []


async def test_list_devices_large_pages_and_new_devices(store: Store) -> None:
    await store.upsert_devices([Device(f"fleet-{i:03d}", "ios") for i in range(150)])
    page = await store.list_devices("dev-5", 100)  # above what a backend may read inline
    assert [d.id for d in page] == [f"fleet-{i:03d}" for i in range(100)]
    # Devices registered between two pages show up in the later page when they sort there.
    await store.upsert_devices([Device("fleet-100a", "ios"), Device("aaa", "ios")])
    rest = await store.list_devices(page[-1].id, 100)
    assert [d.id for d in rest][:3] == ["fleet-100", "fleet-100a", "fleet-101"]
    assert len(rest) == 51
    assert [d.id for d in await store.list_devices(None, 1)] == ["aaa"]


# -- fan-out and licences -----------------------------------------------------------------


async def test_fan_out_queues_every_batch_once(store: Store) -> None:
    made = await store.fan_out(
        [
            CommandBatch("c1", "apple", b"one", ("dev-0", "dev-1")),
            CommandBatch("c2", "apple", b"two", ["dev-1", "dev-2", "dev-1"]),
        ]
    )
    assert made == 4
    status = await store.command_status("c2")
    assert status is not None
    assert [(d.device_id, d.body) for d in status.deliveries] == [
        ("dev-1", b"two"),
        ("dev-2", b"two"),
    ]
    assert [d.command_id for d in await store.take("dev-1", "s1", 10)] == ["c1", "c2"]

    # Again, to more devices: only those not holding the command get it; the body is the
    # one first stored.
    again = await store.fan_out([CommandBatch("c1", "apple", b"changed", DEVICES[:4])])
    assert again == 2
    status = await store.command_status("c1")
    assert status is not None
    assert [d.device_id for d in status.deliveries] == DEVICES[:4]
    assert {d.body for d in status.deliveries} == {b"one"}
    assert await store.fan_out([CommandBatch("c1", "apple", b"one", DEVICES[:4])]) == 0
    assert await store.queue_depth() == 6
    assert await store.fan_out([]) == 0


async def test_fan_out_with_an_unknown_device_writes_nothing(store: Store) -> None:
    await store.fan_out([CommandBatch("before", "apple", b"x", ["dev-0"])])
    depth = await store.queue_depth()
    # The ghosts are in the second batch and in the licence grant, not the first batch.
    with pytest.raises(UnknownDevices) as info:
        await store.fan_out(
            [
                CommandBatch("c1", "apple", b"one", ["dev-1", "dev-2"]),
                CommandBatch("c2", "apple", b"two", ["dev-3", "ghost-1"]),
            ],
            licences=LicenceGrant("app-1", 100, ["dev-1", "ghost-2", "ghost-1"]),
        )
    assert info.value.device_ids == ["ghost-1", "ghost-2"]
    assert await store.command_status("c1") is None
    assert await store.command_status("c2") is None
    assert await store.licence_holders("app-1") == []
    assert await store.queue_depth() == depth
    assert await store.take("dev-1", "s1", 10) == []


async def test_licence_exhaustion_writes_nothing(store: Store) -> None:
    assert await store.fan_out([], licences=LicenceGrant("app-1", 3, ["dev-0"])) == 0
    assert await store.licence_holders("app-1") == ["dev-0"]
    with pytest.raises(LicencesExhausted) as info:
        await store.fan_out(
            [CommandBatch("install", "apple", b"x", DEVICES[:4])],
            licences=LicenceGrant("app-1", 3, DEVICES[:4]),
        )
    assert (info.value.app_id, info.value.total, info.value.needed) == ("app-1", 3, 4)
    assert await store.licence_holders("app-1") == ["dev-0"]
    assert await store.command_status("install") is None
    assert await store.queue_depth() == 0

    # dev-0 holds one already: it does not count twice.
    made = await store.fan_out(
        [CommandBatch("install", "apple", b"x", DEVICES[:3])],
        licences=LicenceGrant("app-1", 3, DEVICES[:3]),
    )
    assert made == 3
    assert await store.licence_holders("app-1") == DEVICES[:3]
    # Devices holding a licence get commands even with the pool used up.
    assert (
        await store.fan_out(
            [CommandBatch("update", "apple", b"y", ["dev-2", "dev-0"])],
            licences=LicenceGrant("app-1", 3, ["dev-2", "dev-0"]),
        )
        == 2
    )
    # A pool shrunk below what is assigned refuses new holders, not the ones it has.
    assert await store.fan_out([], licences=LicenceGrant("app-1", 2, ["dev-1"])) == 0
    with pytest.raises(LicencesExhausted) as shrunk:
        await store.fan_out([], licences=LicenceGrant("app-1", 2, ["dev-5"]))
    assert shrunk.value.needed == 4
    # Pools are per app.
    await store.fan_out([], licences=LicenceGrant("app-2", 1, ["dev-5"]))
    assert await store.licence_holders("app-2") == ["dev-5"]
    assert await store.licence_holders("app-1") == DEVICES[:3]


async def test_release_licences_returns_them_to_the_pool(store: Store) -> None:
    await store.fan_out([], licences=LicenceGrant("app-1", 2, ["dev-0", "dev-1"]))
    with pytest.raises(LicencesExhausted):
        await store.fan_out([], licences=LicenceGrant("app-1", 2, ["dev-2"]))
    assert await store.release_licences("app-1", ["dev-1", "dev-3", "ghost", "dev-1"]) == 1
    assert await store.release_licences("app-2", ["dev-0"]) == 0
    assert await store.licence_holders("app-1") == ["dev-0"]
    await store.fan_out([], licences=LicenceGrant("app-1", 2, ["dev-2"]))
    assert await store.licence_holders("app-1") == ["dev-0", "dev-2"]
    assert await store.release_licences("app-1", []) == 0


async def test_concurrent_grants_cannot_overdraw_the_pool(store: Store) -> None:
    outcomes: dict[str, object] = {}

    async def grant(name: str, devices: list[str]) -> None:
        try:
            outcomes[name] = await store.fan_out(
                [CommandBatch(f"install-{name}", "apple", b"x", devices)],
                licences=LicenceGrant("app-1", 5, devices),
            )
        except LicencesExhausted as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(grant, "first", DEVICES[:3])
        nursery.start_soon(grant, "second", DEVICES[3:6])

    won = [name for name, outcome in outcomes.items() if outcome == 3]
    lost = [name for name, outcome in outcomes.items() if isinstance(outcome, LicencesExhausted)]
    assert len(won) == 1
    assert len(lost) == 1
    error = outcomes[lost[0]]
    assert isinstance(error, LicencesExhausted)
    assert error.needed == 6
    holders = await store.licence_holders("app-1")
    assert holders == (DEVICES[:3] if won == ["first"] else DEVICES[3:6])
    assert await store.command_status(f"install-{lost[0]}") is None
    assert await store.queue_depth() == 3


async def test_concurrent_grants_from_two_stores_stay_in_the_pool(
    shared: str, tmp_path: Path
) -> None:
    first = await open_backend(shared, tmp_path)
    fleet = [f"fleet-{i:02d}" for i in range(40)]
    await first.upsert_devices([Device(d, "ios") for d in fleet])
    second = await open_peer(shared, tmp_path)
    try:
        granted: list[list[str]] = []

        async def grant(s: Store, devices: list[str]) -> None:
            granted.append(await grant_each(s, "app-1", 13, devices))

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(grant, first if i % 2 else second, fleet[i::4])
        every = _check_pool(granted, 13)
        assert await second.licence_holders("app-1") == sorted(every)
        for device in fleet:
            status = await first.command_status(f"install-{device}")
            assert (status is not None) == (device in every)
    finally:
        await first.aclose()
        await second.aclose()


async def test_concurrent_grants_from_two_processes_stay_in_the_pool(
    shared: str, tmp_path: Path
) -> None:
    store = await open_backend(shared, tmp_path)
    try:
        fleet = [f"fleet-{i:02d}" for i in range(60)]
        await store.upsert_devices([Device(d, "ios") for d in fleet])
        url = database_url(shared, tmp_path)
        assert url is not None
        granted = await race_in_processes(
            url,
            [
                ("grant_each", {"app": "app-1", "total": 25, "devices": fleet[i::2]})
                for i in range(2)
            ],
        )
        every = _check_pool(granted, 25)
        assert await store.licence_holders("app-1") == sorted(every)
    finally:
        await store.aclose()


def _check_pool(granted: list[list[str]], total: int) -> list[str]:
    """Exactly ``total`` grants succeeded, each device at most once; returns them."""
    every = [device for some in granted for device in some]
    assert len(every) == len(set(every)) == total
    return every


# -- SQLite specifics ---------------------------------------------------------------------


async def test_sqlite_catalogue_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.db"
    store = await SQLiteStore.open(path)
    await store.upsert_devices([Device(d, "windows") for d in DEVICES])
    app = await store.put_app(full_app(), expected_rev=None)
    await store.put_org(Org(path="/acme", name="ACME"))
    notification = await store.put_notification(full_notification())
    await store.fan_out(
        [CommandBatch("install", "syncml", b"<Exec/>", DEVICES[:2])],
        licences=LicenceGrant("app-1", 25, DEVICES[:2]),
    )
    await store.aclose()

    store = await SQLiteStore.open(path)
    try:
        assert await store.get_app("app-1") == app
        assert await store.list_orgs() == [Org(path="/acme", name="ACME")]
        assert await store.get_notification("n-1") == notification
        assert await store.next_due() == full_notification().due_at
        assert await store.licence_holders("app-1") == DEVICES[:2]
        [delivery] = await store.take("dev-1", "s1", 10)
        assert delivery.command_id == "install"
        replaced = await store.put_app(msgspec.structs.replace(app, name="New"), expected_rev=1)
        assert replaced.rev == 2
    finally:
        await store.aclose()


async def test_sqlite_schema_2_is_migrated_keeping_devices(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for script in MIGRATIONS[:2]:
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("INSERT INTO schema_version VALUES (2)")
    db.execute(
        "INSERT INTO devices VALUES ('old-1', 'ios', '/acme', '17.0', 1, '{}', '{\"m\": 1}')"
    )
    db.close()

    store = await SQLiteStore.open(path)
    try:
        assert await store.get_device("old-1") == Device(
            "old-1", "ios", "/acme", "17.0", True, {}, {"m": 1}
        )
        await store.fan_out(
            [CommandBatch("c1", "apple", b"x", ["old-1"])],
            licences=LicenceGrant("app-1", 1, ["old-1"]),
        )
        assert await store.licence_holders("app-1") == ["old-1"]
        assert (await store.put_app(simple_app("a"), expected_rev=None)).rev == 1
    finally:
        await store.aclose()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
    finally:
        db.close()


async def test_sqlite_schema_4_notifications_get_revisions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for script in MIGRATIONS[:4]:
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("INSERT INTO schema_version VALUES (4)")
    old = full_notification()
    doc = msgspec.json.encode(old).decode().replace(',"rev":0', "")
    assert '"rev"' not in doc  # as an older mdmgate wrote it
    db.execute(
        "INSERT INTO notifications VALUES (?, ?, ?, ?, ?, ?)",
        (old.id, old.app_id, old.state, old.due_at, old.created_at, doc),
    )
    db.close()

    store = await SQLiteStore.open(path)
    try:
        stored = await store.get_notification(old.id)
        assert stored == msgspec.structs.replace(old, rev=1)
        assert await store.list_notifications() == [stored]
        with pytest.raises(RevisionConflict):
            await store.put_notification(old)
        replaced = await store.put_notification(
            msgspec.structs.replace(old, state="done"), expected_rev=1
        )
        assert replaced.rev == 2
        assert await store.last_change() == 0
        assert await store.load_session("omadm", "x") is None
        assert await store.claim_lease("wave:x", "a", now=0.0, until=1.0)
    finally:
        await store.aclose()
