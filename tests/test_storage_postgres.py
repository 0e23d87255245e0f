"""What only the PostgreSQL store has to show: migrations shared by nodes starting at once,
refusal of a newer schema, writes cancelled half-way, stores on two connections racing on
one device's queue, a licence pool and a notification, the change feed's LISTEN connection
lost, and the URLs ``--db`` takes. The conformance suite (tests/test_storage*.py) runs on
PostgreSQL too; this adds what it cannot say for every backend.

Nothing sleeps to arrange an interleaving: a write is held on a lock that another connection
holds, and the test polls the server until the write is seen waiting for it.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from mdmgate.catalogue.model import CommandBatch, LicenceGrant, Notification
from mdmgate.events import command_answered
from mdmgate.server.app import ConfigError, load_config, open_store
from mdmgate.storage import (
    DeliveryState,
    Device,
    RevisionConflict,
    Store,
    pgwire,
)
from mdmgate.storage import postgres_schema as sql
from mdmgate.storage.pgwire import Connection
from mdmgate.storage.postgres import PostgresStore, SchemaTooNew, redact_url
from mdmgate.storage.postgres_schema import MIGRATIONS
from tests.postgres_server import PostgresServer
from tests.stores import database_url, open_backend, open_peer

pytest_plugins = ["tests.conftest_pg"]

DEVICES = [f"dev-{i}" for i in range(5)]


@pytest.fixture(params=["postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path)
    await s.upsert_devices([Device(d, "ios", "/acme") for d in DEVICES])
    yield s
    await s.aclose()


@pytest.fixture
def url(store: Store, tmp_path: Path) -> str:
    found = database_url("postgresql", tmp_path)
    assert found is not None
    return found


@pytest.fixture
async def peer(store: Store, tmp_path: Path) -> AsyncIterator[Store]:
    """A second store on the same database: another gateway node's connections."""
    s = await open_peer("postgresql", tmp_path)
    yield s
    await s.aclose()


@pytest.fixture
async def raw(url: str) -> AsyncIterator[Connection]:
    async with await pgwire.connect(url) as conn:
        yield conn


async def until(conn: Connection, sql: str, *params: pgwire.Param) -> None:
    """Polls ``sql`` until it returns true (a condition on the server, not a time)."""
    with trio.fail_after(10):
        while not await conn.fetchval(sql, *params):
            await trio.sleep(0.005)


_WAITING_ON_LOCK = (
    "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database()"
    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
)
_NONE_WAITING = _WAITING_ON_LOCK.replace("count(*) > 0", "count(*) = 0")


def note(notification_id: str, **fields: Any) -> Notification:
    return msgspec.convert({"id": notification_id, "app_id": "app-1", **fields}, Notification)


# -- schema -------------------------------------------------------------------------------


async def test_a_newer_schema_is_refused_naming_both_versions(
    store: Store, url: str, raw: Connection
) -> None:
    assert await raw.fetchval("SELECT version FROM schema_version") == len(MIGRATIONS)
    await raw.execute("UPDATE schema_version SET version = 99")
    try:
        with pytest.raises(SchemaTooNew) as refused:
            await PostgresStore.open(url)
        assert (refused.value.found, refused.value.known) == (99, len(MIGRATIONS))
        assert f"schema version 99 is newer than this mdmgate ({len(MIGRATIONS)})" in str(
            refused.value
        )
        with pytest.raises(OSError, match="schema version 99 is newer"):
            await open_store(url)
        # Nothing was changed by the refusal.
        assert await raw.fetchval("SELECT version FROM schema_version") == 99
    finally:
        await raw.execute("UPDATE schema_version SET version = $1", len(MIGRATIONS))


async def test_nodes_starting_at_once_migrate_once(postgres_server: PostgresServer) -> None:
    # A schema of its own (URL options: search_path), empty: every node finds no schema.
    schema = f"nodes_{secrets.token_hex(4)}"
    admin_url = postgres_server.dsn("mdmgate_test")
    url = postgres_server.dsn("mdmgate_test", options=f"-csearch_path={schema}")
    async with await pgwire.connect(admin_url) as admin:
        await admin.execute_script(f"CREATE SCHEMA {schema}")
        try:
            stores: list[Store] = []

            async def start(i: int) -> None:
                s = await PostgresStore.open(url, pool_size=1)
                stores.append(s)
                await s.upsert_devices([Device(f"node-{i}", "ios")])

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    for i in range(4):
                        nursery.start_soon(start, i)
            for s in stores:
                await s.aclose()
            versions = await admin.fetch(f"SELECT version FROM {schema}.schema_version")
            assert versions == [(len(MIGRATIONS),)]
            assert await admin.fetchval(f"SELECT count(*) FROM {schema}.devices") == 4
        finally:
            await admin.execute_script(f"DROP SCHEMA {schema} CASCADE")


async def test_stores_in_two_schemas_of_one_database_keep_apart(
    postgres_server: PostgresServer,
) -> None:
    schemas = [f"apart_{secrets.token_hex(4)}" for _ in range(2)]
    async with await pgwire.connect(postgres_server.dsn("mdmgate_test")) as admin:
        for schema in schemas:
            await admin.execute_script(f"CREATE SCHEMA {schema}")
        stores = [
            await PostgresStore.open(
                postgres_server.dsn("mdmgate_test", options=f"-csearch_path={s}"), pool_size=2
            )
            for s in schemas
        ]
        try:
            first, second = stores
            await first.upsert_devices([Device("a", "ios")])
            await second.upsert_devices([Device("b", "ios")])
            assert await first.get_device("b") is None
            woken = trio.Event()

            async def wait() -> None:
                await first.wait_for_changes(await first.last_change())
                woken.set()

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wait)
                    # The other schema's changes are notified on another channel.
                    await until(
                        admin,
                        "SELECT count(*) = 1 FROM pg_stat_activity"
                        " WHERE datname = current_database() AND query LIKE 'LISTEN%'",
                    )
                    await second.merge_facts("b", {"x": 1})
                    await trio.testing.wait_all_tasks_blocked()
                    assert not woken.is_set()
                    await first.merge_facts("a", {"x": 1})
                    await woken.wait()
        finally:
            for s in stores:
                await s.aclose()
            for schema in schemas:
                await admin.execute_script(f"DROP SCHEMA {schema} CASCADE")


# -- cancelled writes ---------------------------------------------------------------------


async def test_a_fan_out_cancelled_half_way_leaves_nothing(store: Store, raw: Connection) -> None:
    await store.fan_out([], licences=LicenceGrant("app-1", 10, ["dev-0"]))
    last = await store.last_change()
    # Another node holds the app's licence pool: the fan-out has queued its deliveries
    # (not committed) and waits for the pool when it is cancelled. Its COMMIT was sent in
    # the same pipeline: the pool is released once the server has cancelled the statement
    # (else the transaction would go on and commit, whole: see the next test).
    async with raw.transaction():
        await raw.execute("SELECT FROM licence_pools WHERE app_id = 'app-1' FOR UPDATE")
        async with trio.open_nursery() as nursery:
            cancelled = trio.CancelScope()

            async def fan_out() -> None:
                with cancelled:
                    await store.fan_out(
                        [CommandBatch("wave", "apple", b"x", DEVICES[1:4])],
                        licences=LicenceGrant("app-1", 10, DEVICES[1:4]),
                        notification=note("n-1", state="running"),
                    )

            nursery.start_soon(fan_out)
            await until(raw, _WAITING_ON_LOCK)
            cancelled.cancel()
        await until(raw, _NONE_WAITING)
    assert cancelled.cancelled_caught
    assert await store.command_status("wave") is None
    assert await store.queue_depth() == 0
    assert await store.licence_holders("app-1") == ["dev-0"]
    assert await store.get_notification("n-1") is None
    assert await store.changes(last, 10) == []
    # The store goes on (its connection was cancelled on the server and rolled back).
    made = await store.fan_out(
        [CommandBatch("wave", "apple", b"x", DEVICES[1:4])],
        licences=LicenceGrant("app-1", 10, DEVICES[1:4]),
    )
    assert made == 3
    assert await store.licence_holders("app-1") == DEVICES[:4]


async def test_a_write_cancelled_after_its_commit_was_sent_lands_whole_or_not(
    store: Store, raw: Connection
) -> None:
    await store.fan_out([], licences=LicenceGrant("app-1", 10, ["dev-0"]))
    # As above, but the pool is released at once: the server may run the rest of the
    # pipeline (its COMMIT included) before the cancel request reaches it, or not.
    async with raw.transaction():
        await raw.execute("SELECT FROM licence_pools WHERE app_id = 'app-1' FOR UPDATE")
        async with trio.open_nursery() as nursery:
            cancelled = trio.CancelScope()

            async def fan_out() -> None:
                with cancelled:
                    await store.fan_out(
                        [CommandBatch("wave", "apple", b"x", DEVICES[1:4])],
                        licences=LicenceGrant("app-1", 10, DEVICES[1:4]),
                    )

            nursery.start_soon(fan_out)
            await until(raw, _WAITING_ON_LOCK)
            cancelled.cancel()
    await until(raw, _NONE_WAITING)
    status = await store.command_status("wave")
    holders = await store.licence_holders("app-1")
    if status is None:
        assert holders == ["dev-0"]
    else:
        assert [d.device_id for d in status.deliveries] == DEVICES[1:4]
        assert holders == DEVICES[:4]
    # Run again (what a caller does with an outcome it does not know): the same end state.
    await store.fan_out(
        [CommandBatch("wave", "apple", b"x", DEVICES[1:4])],
        licences=LicenceGrant("app-1", 10, DEVICES[1:4]),
    )
    assert await store.licence_holders("app-1") == DEVICES[:4]
    assert await store.queue_depth() == 3


async def test_a_take_cancelled_while_waiting_hands_out_nothing(
    store: Store, raw: Connection
) -> None:
    for c in ("c1", "c2"):
        await store.enqueue(c, "syncml", c.encode(), ["dev-1"])
    # Another session of the device is taking (holds the device's queue).
    async with raw.transaction():
        await raw.execute("SELECT pg_advisory_xact_lock(hashtextextended('device:dev-1', 0))")
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                cancelled = trio.CancelScope()

                async def take() -> None:
                    with cancelled:
                        await store.take("dev-1", "s1", 10)

                nursery.start_soon(take)
                await until(raw, _WAITING_ON_LOCK)
                cancelled.cancel()
            await until(raw, _NONE_WAITING)
    # Neither handed out nor counted: the same session gets both, each at its first offer.
    got = await store.take("dev-1", "s1", 10)
    assert [(d.command_id, d.offers) for d in got] == [("c1", 1), ("c2", 1)]


async def test_writes_retried_after_an_unknown_outcome(store: Store) -> None:
    # What a caller does when its write was cancelled after COMMIT was sent: run it again.
    assert await store.enqueue("c1", "syncml", b"x", DEVICES[:2]) == 2
    assert await store.enqueue("c1", "syncml", b"x", DEVICES[:2]) == 0
    grant = LicenceGrant("app-1", 3, DEVICES[:3])
    batches = [CommandBatch("install", "apple", b"i", DEVICES[:3])]
    assert await store.fan_out(batches, licences=grant) == 3
    last = await store.last_change()
    assert await store.fan_out(batches, licences=grant) == 0
    assert await store.licence_holders("app-1") == DEVICES[:3]
    assert await store.changes(last, 10) == []  # no licence moved
    first = await store.put_notification(note("n-1"))
    replaced = await store.put_notification(note("n-1", state="done"), expected_rev=first.rev)
    with pytest.raises(RevisionConflict) as landed:
        await store.put_notification(note("n-1", state="done"), expected_rev=first.rev)
    assert landed.value.stored == replaced.rev == first.rev + 1  # the first attempt landed


async def test_an_answer_and_the_next_command_are_one_round_trip(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for c in ("c1", "c2"):
        await store.enqueue(c, "apple", c.encode(), ["dev-1"])
    await store.take("dev-1", "s1", 1)
    sent: list[list[str]] = []
    request = pgwire.Connection._request

    async def counted(conn: Connection, statements: list[Any]) -> Any:
        sent.append([sql for sql, *_ in statements])
        return await request(conn, statements)

    monkeypatch.setattr(pgwire.Connection, "_request", counted)
    for command_id, taken in (("c1", ["c2"]), ("c2", [])):
        recorded, got = await store.record_and_take(
            "dev-1",
            command_id,
            DeliveryState.ACKNOWLEDGED,
            "Acknowledged",
            None,
            events=command_answered("dev-1", command_id, DeliveryState.ACKNOWLEDGED, "200"),
            session="s1",
            limit=1,
            max_offers=3,
            delivered_event=True,
        )
        assert (recorded, [d.command_id for d in got]) == (True, taken)
        [statements] = sent  # one transaction, whether or not anything is handed out
        assert statements.count("COMMIT") == 1
        sent.clear()


async def test_an_answer_waits_for_the_queue_only_when_more_is_offered(
    store: Store, raw: Connection
) -> None:
    await store.enqueue("c1", "apple", b"a", ["dev-1"])
    for c in ("c2", "c3"):
        await store.enqueue(c, "apple", c.encode(), ["dev-2"])
    await store.take("dev-1", "s1", 1)
    await store.take("dev-2", "s1", 1)
    got: list[tuple[bool, list[str]]] = []

    async def exchange(device_id: str, command_id: str) -> None:
        recorded, taken = await store.record_and_take(
            device_id, command_id, DeliveryState.ACKNOWLEDGED, "200", None, session="s1", limit=1
        )
        got.append((recorded, [d.command_id for d in taken]))

    lock = "SELECT pg_advisory_xact_lock(hashtextextended('device:' || $1, 0))"
    stored = "SELECT state FROM deliveries WHERE command_id = $1"
    # Other sessions of both devices are taking (each holds its device's queue).
    async with trio.open_nursery() as nursery, raw.transaction():
        await raw.execute(lock, "dev-1")
        await raw.execute(lock, "dev-2")
        # Nothing more for dev-1: its answer is stored without waiting.
        with trio.fail_after(10):
            await exchange("dev-1", "c1")
        assert got == [(True, [])]
        # c3 is queued for dev-2: the exchange waits for the queue, answer and all.
        nursery.start_soon(exchange, "dev-2", "c2")
        await until(raw, _WAITING_ON_LOCK)
        assert await raw.fetchval(stored, "c2") == "sent"
    assert got == [(True, []), (True, ["c3"])]
    assert await raw.fetchval(stored, "c2") == "acknowledged"


async def test_an_answer_hands_out_nothing_when_it_did_not_lock_the_queue(
    store: Store, raw: Connection, url: str
) -> None:
    await store.enqueue("c1", "apple", b"a", ["dev-1"])
    await store.take("dev-1", "s1", 1)
    got: list[tuple[bool, list[str]]] = []
    done = trio.Event()

    async def exchange() -> None:
        recorded, taken = await store.record_and_take(
            "dev-1",
            "c1",
            DeliveryState.ACKNOWLEDGED,
            "200",
            None,
            session="s1",
            limit=5,
            max_offers=1,
        )
        got.append((recorded, [d.command_id for d in taken]))
        done.set()

    lock = "SELECT pg_advisory_xact_lock(hashtextextended('device:dev-1', 0))"
    async with (
        await pgwire.connect(url) as other,
        trio.open_nursery() as nursery,
        other.transaction(),
    ):
        # Another session of the device is taking: it holds the device's queue.
        await other.execute(lock)
        async with raw.transaction():
            # A write holds c1 while it queues c2 and c3 (this one as if offered already):
            # the exchange finds nothing more offered (so takes no lock), then waits for c1.
            await raw.execute("SELECT FROM deliveries WHERE command_id = 'c1' FOR UPDATE")
            await raw.execute(
                "INSERT INTO commands (id, kind, body) VALUES ('c2', 'a', ''), ('c3', 'a', '')"
            )
            await raw.execute(
                "INSERT INTO deliveries (command_id, device_id, state, session, offers)"
                " VALUES ('c2', 'dev-1', 'queued', NULL, 0), ('c3', 'dev-1', 'sent', 's0', 1)"
            )
            nursery.start_soon(exchange)
            await until(other, _WAITING_ON_LOCK)
        # c2 and c3 are there now, but the take in progress holds the queue: neither is
        # handed out, nor given up.
        with trio.fail_after(10):
            await done.wait()
        assert got == [(True, [])]
    left = await store.deliveries("dev-1", list(DeliveryState))
    assert [(d.command_id, d.state) for d in left] == [
        ("c1", DeliveryState.ACKNOWLEDGED),
        ("c2", DeliveryState.QUEUED),
        ("c3", DeliveryState.SENT),
    ]


# -- two connections racing ---------------------------------------------------------------


async def test_takes_of_one_device_from_two_stores_lose_no_offer(store: Store, peer: Store) -> None:
    await store.enqueue("c1", "syncml", b"x", ["dev-2"])
    got: list[int] = []

    async def session(s: Store, name: str) -> None:
        [delivery] = await s.take("dev-2", name, 10)
        got.append(delivery.offers)

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(session, store if i % 2 else peer, f"s{i}")
    # Each session found the one before it and offered again: no count was lost.
    assert sorted(got) == list(range(1, 13))
    status = await store.command_status("c1")
    assert status is not None
    assert status.deliveries[0].offers == 12


async def test_a_cancel_and_a_wave_from_two_stores_one_wins(store: Store, peer: Store) -> None:
    created = await store.put_notification(note("n-1", state="running"))
    outcome: dict[str, object] = {}

    async def wave() -> None:
        try:
            outcome["wave"] = await store.fan_out(
                [CommandBatch("wave-1", "apple", b"x", DEVICES)],
                licences=LicenceGrant("app-1", 10, DEVICES),
                notification=msgspec.structs.replace(created, waves=1),
                expected_rev=created.rev,
            )
        except RevisionConflict as e:
            outcome["wave"] = e

    async def cancel() -> None:
        try:
            outcome["cancel"] = await peer.put_notification(
                msgspec.structs.replace(created, state="cancelled"), expected_rev=created.rev
            )
        except RevisionConflict as e:
            outcome["cancel"] = e

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wave)
        nursery.start_soon(cancel)
    stored = await peer.get_notification("n-1")
    assert stored is not None
    assert stored.rev == 2
    if isinstance(outcome["wave"], RevisionConflict):
        assert stored.state == "cancelled"
        assert await store.command_status("wave-1") is None
        assert await store.licence_holders("app-1") == []
    else:
        assert outcome["wave"] == 5
        assert isinstance(outcome["cancel"], RevisionConflict)
        assert (stored.state, stored.waves) == ("running", 1)


async def test_cancel_open_and_results_racing_a_take(store: Store, peer: Store) -> None:
    for i in range(30):
        await store.enqueue(f"c{i:02d}", "syncml", b"x", ["dev-3"])

    async def take_and_answer() -> None:
        while got := await store.take("dev-3", "s1", 3):
            for d in got:
                await store.record_result(
                    "dev-3", d.command_id, DeliveryState.ACKNOWLEDGED, "200", None
                )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_and_answer)
        await trio.testing.wait_all_tasks_blocked()
        ended = await peer.cancel_open("dev-3", "re-enrolled")
    # Every delivery ended exactly once: answered, or cancelled; none left open.
    done = await store.deliveries("dev-3", [DeliveryState.ACKNOWLEDGED])
    errors = await store.deliveries("dev-3", [DeliveryState.ERROR])
    assert len(done) + len(errors) == 30
    assert len(errors) == ended
    assert {d.status for d in errors} <= {"re-enrolled"}
    assert await store.queue_depth() == 0


# -- the change feed ----------------------------------------------------------------------


async def test_a_follower_misses_no_change_of_concurrent_writers(store: Store, peer: Store) -> None:
    # Changes commit in another order than they are written in: a follower reading the log
    # while they do sees each one once, in seq order, and skips none.
    start = await store.last_change()
    seen: list[int] = []
    progressed = [trio.Event()]

    async def follow() -> None:
        after = start
        while True:
            await store.wait_for_changes(after)
            for change in await store.changes(after, 1000):
                seen.append(change.seq)
                after = change.seq
            progressed[0].set()
            progressed[0] = trio.Event()

    async def write(s: Store, n: int) -> None:
        for i in range(15):
            await s.merge_facts(DEVICES[(n + i) % 5], {f"k{n}-{i}": i})

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            async with trio.open_nursery() as writers:
                for n in range(6):
                    writers.start_soon(write, store if n % 2 else peer, n)
            target = await peer.last_change()
            while not seen or seen[-1] < target:
                await progressed[0].wait()
            nursery.cancel_scope.cancel()
    every = [c.seq for c in await store.changes(start, 1000)]
    assert len(every) == 6 * 15
    assert seen == every


async def test_waiters_are_woken_after_the_listen_connection_is_lost(
    store: Store, peer: Store, raw: Connection
) -> None:
    last = await store.last_change()
    listening = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE 'LISTEN%'"
    )
    woken = 0

    async def wait() -> None:
        nonlocal woken
        await store.wait_for_changes(last)
        woken += 1

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(wait)
            await until(raw, f"SELECT count(*) = 1 FROM ({listening}) l")  # one per store
            await raw.execute(f"SELECT pg_terminate_backend(pid, 5000) FROM ({listening}) l")
            await peer.update_device("dev-4", {"org": "/moved"})
    assert woken == 10


# -- connections and URLs -----------------------------------------------------------------


async def test_connections_dropped_by_the_server_are_replaced(
    store: Store, raw: Connection
) -> None:
    await store.merge_facts("dev-0", {"before": 1})
    await raw.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert await store.merge_facts("dev-0", {"after": 2})
    device = await store.get_device("dev-0")
    assert device is not None
    assert device.facts == {"before": 1, "after": 2}


async def test_database_urls(url: str, postgres_server: PostgresServer) -> None:
    # Both schemes libpq reads, through what `serve --db` uses.
    for scheme in ("postgresql://", "postgres://"):
        s = await open_store(scheme + url.removeprefix("postgresql://"))
        try:
            assert await s.get_device("dev-1") is not None
        finally:
            await s.aclose()
    # A server that does not answer, a database that does not exist: OSError, libpq's reason.
    with pytest.raises(OSError, match=r"cannot use the database .*Connection refused"):
        await open_store("postgresql://nobody@127.0.0.1:1/mdmgate")
    with pytest.raises(OSError, match='database "nope" does not exist'):
        await open_store(postgres_server.dsn("nope"))
    # A URL libpq cannot read is a configuration error, found before serving.
    with pytest.raises(ConfigError, match=r"invalid PostgreSQL URL .*bogus"):
        load_config(None, {"db": "postgresql://db.example/mdmgate?bogus=1"})
    assert load_config(None, {"db": url, "workers": 2}).db == url
    # Passwords stay out of messages.
    assert redact_url("postgresql://gw:s3cret@db.example:5432/mdm") == (
        "postgresql://gw:***@db.example:5432/mdm"
    )
    with pytest.raises(OSError, match=r"gw:\*\*\*@") as refused:
        await open_store("postgresql://gw:s3cret@127.0.0.1:1/mdmgate")
    assert "s3cret" not in str(refused.value)


def _rows_read(node: dict[str, Any]) -> int:
    """Rows a plan (EXPLAIN ANALYZE, JSON) read from tables and indexes, those filtered out
    too."""
    read = 0
    if "Relation Name" in node or "Index Name" in node:
        seen = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        read = int(seen) * int(node["Actual Loops"])
    return read + sum(_rows_read(child) for child in node.get("Plans", ()))


async def _rows(raw: Connection, statement: str, types: str, args: str) -> int:
    """Rows ``statement`` reads planned as take() plans it, run in a transaction that is
    rolled back."""
    await raw.execute("BEGIN")
    try:
        await raw.execute(sql.TAKE_PLANS[0])
        await raw.execute(f"PREPARE probe({types}) AS {statement}")
        plan = await raw.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probe({args})")
    finally:
        await raw.execute("ROLLBACK")
        await raw.execute("DEALLOCATE probe")
    text = plan if isinstance(plan, str) else msgspec.json.encode(plan).decode()
    [top] = msgspec.json.decode(text)
    return _rows_read(top["Plan"])


async def _analyze(raw: Connection) -> None:
    await raw.execute("ANALYZE deliveries")
    await raw.execute("ANALYZE commands")


@pytest.mark.parametrize("statistics", ["true", "of a fresh queue"])
async def test_take_on_a_deep_queue_reads_by_index(
    store: Store, raw: Connection, statistics: str
) -> None:
    """A device with thousands of commands behind it, most answered: handing out the next
    one, and looking for ones to give up on, walk indexes and stop, instead of reading
    every open delivery or every command, or the answered ones; also with the statistics
    of the queue before it was worked through (they lag: autovacuum runs at most once a
    minute)."""
    await raw.execute(
        "INSERT INTO commands (id, kind, body)"
        " SELECT 'c' || i, 'apple', convert_to(repeat('x', 400), 'UTF8')"
        " FROM generate_series(1, 4000) i"
    )
    await raw.execute(
        "INSERT INTO deliveries (command_id, device_id, state)"
        " SELECT 'c' || i, 'dev-1', 'queued' FROM generate_series(1, 4000) i ORDER BY i"
    )
    if statistics == "of a fresh queue":
        await _analyze(raw)
    await raw.execute("UPDATE deliveries SET state = 'acknowledged' WHERE seq <= 3000")
    if statistics == "true":
        await _analyze(raw)
    took = await _rows(raw, sql.TAKE, "text, text, int4, boolean", "'dev-1', 's1', 1, true")
    gave_up = await _rows(
        raw, sql.GIVE_UP, "text, text, text, text, int4", "'dev-1', 's1', 'x', 'y', 3"
    )
    # A handful: the delivery handed out (found, then updated) and its command; nothing
    # to give up on.
    assert (took <= 5, gave_up) == (True, 0), took
    [delivery] = await store.take("dev-1", "s1", 1, max_offers=3)
    assert delivery.command_id == "c3001"
