"""The Trio PostgreSQL driver (mdmgate.storage.pgwire) against a real server."""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgate.storage import pgwire
from mdmgate.storage.pgwire import Connection, ConnectionLost, PgError, UnsupportedType
from tests.postgres_server import PostgresServer

pytest_plugins = ["tests.conftest_pg"]

_tables = itertools.count()


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[Connection]:
    async with await pgwire.connect(pg_dsn) as c:
        yield c


async def new_table(conn: Connection, columns: str) -> str:
    """A fresh table (unique name within the session) with ``columns``."""
    name = f"t{next(_tables)}_{secrets.token_hex(4)}"
    await conn.execute_script(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns})")
    return name


async def test_point_reads(conn: Connection) -> None:
    t = await new_table(conn, "id text PRIMARY KEY, org text NOT NULL, rev int8 NOT NULL")
    await conn.pipeline(
        [(f"INSERT INTO {t} VALUES ($1, $2, $3)", (f"d{i}", "/a", i)) for i in range(20)]
    )
    for i in (0, 7, 19):
        assert await conn.fetchrow(f"SELECT id, org, rev FROM {t} WHERE id = $1", f"d{i}") == (
            f"d{i}",
            "/a",
            i,
        )
    assert await conn.fetchrow(f"SELECT id FROM {t} WHERE id = $1", "missing") is None
    assert await conn.fetchval(f"SELECT count(*) FROM {t}") == 20
    assert await conn.execute(f"UPDATE {t} SET rev = rev + 1 WHERE org = $1", "/a") == 20


_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=300)
_int8 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=60, deadline=None)
@given(text=_text, data=st.binary(max_size=300), number=_int8)
async def test_parameters_round_trip(pg_dsn: str, text: str, data: bytes, number: int) -> None:
    async with await pgwire.connect(pg_dsn) as c:
        row = await c.fetchrow(
            "SELECT $1::text, $2::bytea, $3::int8, $4::text", text, data, number, None
        )
    assert row == (text, data, number, None)


async def test_large_values_round_trip(conn: Connection) -> None:
    # Larger than the socket buffers: sending has to wait for the socket (and read meanwhile).
    text = "é€" * 1_500_000
    data = bytes(range(256)) * 16_384
    assert await conn.fetchrow("SELECT $1::text, $2::bytea", text, data) == (text, data)
    assert await conn.fetchrow("SELECT $1::text, $2::bytea", "", b"") == ("", b"")


async def test_result_types(conn: Connection) -> None:
    row = await conn.fetchrow(
        "SELECT true, 7::int2, -8::int4, 9::int8, 1.5::float4, $1::float8, 'v'::varchar, "
        "'b'::char(2), 'n'::name, '{\"k\": [1]}'::jsonb, '{\"k\":1}'::json, "
        "to_timestamp(1700000000.25), 'infinity'::timestamptz, 26::oid, pg_sleep(0), null::int8",
        0.1,
    )
    assert row == (
        True,
        7,
        -8,
        9,
        1.5,
        0.1,
        "v",
        "b ",
        "n",
        '{"k": [1]}',
        '{"k":1}',
        1700000000.25,
        math.inf,
        26,
        None,
        None,
    )
    # Floats go as their shortest exact text, infinities and NaN included.
    for value in (math.inf, -math.inf, 1e308, 5e-324):
        assert await conn.fetchval("SELECT $1::float8", value) == value
    assert math.isnan(await conn.fetchval("SELECT $1::float8", math.nan))  # type: ignore[arg-type]
    # Untyped parameters take the type their context gives them, as literals do.
    t = await new_table(conn, "i int4, b bool, j jsonb")
    await conn.execute(f"INSERT INTO {t} VALUES ($1, $2, $3)", 5, True, '{"x": 1}')
    assert await conn.fetchrow(f"SELECT i, b, j FROM {t}") == (5, True, '{"x": 1}')


async def test_bad_parameters_refused_before_sending(conn: Connection) -> None:
    with pytest.raises(ValueError, match=r"\$2: text cannot contain NUL"):
        await conn.fetch("SELECT $1::text, $2::text", "ok", "a\x00b")
    with pytest.raises(ValueError, match=r"\$1: text is not valid Unicode"):
        await conn.fetch("SELECT $1::text", "\ud800")
    with pytest.raises(TypeError, match=r"\$1: dict is not supported"):
        await conn.fetch("SELECT $1::text", {"a": 1})  # type: ignore[arg-type]
    assert await conn.fetchval("SELECT 1") == 1


async def test_unknown_result_type_refused_clearly(conn: Connection) -> None:
    with pytest.raises(UnsupportedType, match=r'column "amount" has type numeric.*cast it'):
        await conn.fetch("SELECT 1.5::numeric AS amount")
    with pytest.raises(UnsupportedType, match=r'column "d" has type date'):
        await conn.fetch("SELECT current_date AS d")
    assert await conn.fetchval("SELECT 1.5::numeric::float8") == 1.5


async def test_prepared_statements_reused(conn: Connection) -> None:
    query = "SELECT $1::int8 + 1"
    for i in range(5):
        assert await conn.fetchval(query, i) == i + 1
    rows = await conn.fetch(
        "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements "
        "WHERE statement = $1",
        query,
    )
    assert len(rows) == 1, rows  # prepared once, under one name
    assert rows[0][1] == 5  # and executed five times


async def test_statement_that_fails_to_prepare_is_not_cached(conn: Connection) -> None:
    with pytest.raises(PgError) as bad:
        await conn.fetch("SELEC 1")
    assert bad.value.sqlstate == "42601"
    with pytest.raises(PgError):
        await conn.fetch("SELEC 1")  # prepared again, and refused again
    t = await new_table(conn, "id int PRIMARY KEY")
    with pytest.raises(PgError) as missing:
        await conn.fetch("SELECT nope FROM " + t)
    assert missing.value.sqlstate == "42703"
    assert "nope" in str(missing.value)


async def test_pipeline_commits_atomically(conn: Connection) -> None:
    t = await new_table(conn, "id int PRIMARY KEY, v text")
    results = await conn.pipeline(
        [
            (f"INSERT INTO {t} VALUES ($1, $2)", (1, "a")),
            (f"INSERT INTO {t} VALUES ($1, $2)", (2, "b")),
            (f"SELECT id, v FROM {t} ORDER BY id", ()),
        ]
    )
    assert [r.rowcount for r in results] == [1, 1, 2]
    assert results[2].rows == [(1, "a"), (2, "b")]

    with pytest.raises(PgError) as failed:
        await conn.pipeline(
            [
                (f"INSERT INTO {t} VALUES ($1, $2)", (3, "c")),
                (f"INSERT INTO {t} VALUES ($1, $2)", (1, "dup")),
                (f"UPDATE {t} SET v = $1", ("z",)),
            ]
        )
    assert failed.value.is_unique_violation
    assert failed.value.constraint == f"{t}_pkey"
    assert not conn.in_transaction
    # Nothing of the failed transaction stayed, and the connection goes on.
    assert await conn.fetch(f"SELECT id, v FROM {t} ORDER BY id") == [(1, "a"), (2, "b")]
    await conn.pipeline([(f"INSERT INTO {t} VALUES ($1, $2)", (3, "c"))])
    assert await conn.fetchval(f"SELECT count(*) FROM {t}") == 3


async def test_interactive_transaction(conn: Connection) -> None:
    t = await new_table(conn, "id int PRIMARY KEY, n int8")
    async with conn.transaction():
        await conn.execute(f"INSERT INTO {t} VALUES (1, 0)")
        assert conn.in_transaction
    assert not conn.in_transaction

    async def fail_half_way() -> None:
        async with conn.transaction():
            await conn.execute(f"UPDATE {t} SET n = 100")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_half_way()
    assert await conn.fetchval(f"SELECT n FROM {t}") == 0
    with pytest.raises(PgError):
        async with conn.transaction(isolation="serializable"):
            await conn.execute(f"INSERT INTO {t} VALUES (1, 1)")
    assert not conn.in_transaction
    async with conn.transaction():
        pass  # nothing sent

    async def swallow_error() -> None:
        async with conn.transaction():
            await conn.execute(f"UPDATE {t} SET n = 7")
            with pytest.raises(PgError):
                await conn.execute(f"INSERT INTO {t} VALUES (1, 1)")

    # COMMIT after a failed statement would quietly roll back: it is an error instead.
    with pytest.raises(PgError, match="rolled back") as rolled_back:
        await swallow_error()
    assert rolled_back.value.sqlstate == "25P02"
    assert await conn.fetchval(f"SELECT n FROM {t}") == 0
    with pytest.raises(RuntimeError, match="no nesting"):
        async with conn.transaction(), conn.transaction():
            pass


async def test_for_update_two_connections_lose_no_update(pg_dsn: str, conn: Connection) -> None:
    t = await new_table(conn, "id int PRIMARY KEY, n int8 NOT NULL")
    await conn.execute(f"INSERT INTO {t} VALUES (1, 0)")

    async def increment(times: int) -> None:
        async with await pgwire.connect(pg_dsn) as c:
            for _ in range(times):
                async with c.transaction():
                    n = await c.fetchval(f"SELECT n FROM {t} WHERE id = 1 FOR UPDATE")
                    assert isinstance(n, int)
                    await trio.lowlevel.checkpoint()  # let the other task queue on the lock
                    await c.execute(f"UPDATE {t} SET n = $1 WHERE id = 1", n + 1)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(increment, 200)
            nursery.start_soon(increment, 200)
    assert await conn.fetchval(f"SELECT n FROM {t}") == 400


async def test_serialization_failure_is_recognised(pg_dsn: str, conn: Connection) -> None:
    t = await new_table(conn, "id int PRIMARY KEY, n int8 NOT NULL")
    await conn.execute(f"INSERT INTO {t} VALUES (1, 0)")
    async with await pgwire.connect(pg_dsn) as other:

        async def race() -> None:
            async with conn.transaction(isolation="repeatable read"):
                assert await conn.fetchval(f"SELECT n FROM {t} WHERE id = 1") == 0
                await other.execute(f"UPDATE {t} SET n = 5 WHERE id = 1")
                await conn.execute(f"UPDATE {t} SET n = n + 1 WHERE id = 1")

        with pytest.raises(PgError) as lost:
            await race()
    assert lost.value.is_serialization_failure
    assert lost.value.sqlstate == "40001"
    assert await conn.fetchval(f"SELECT n FROM {t}") == 5


async def test_cancelled_query_is_cancelled_on_the_server_and_repooled(pg_dsn: str) -> None:
    async with pgwire.open_pool(pg_dsn, size=1) as pool:
        async with pool.connection() as c:
            pid = c.backend_pid
        with trio.fail_after(3):  # the sleep is 10 s: only a server-side cancel ends it in time
            with trio.move_on_after(0.2) as scope:
                async with pool.connection() as c:
                    await c.fetch("SELECT pg_sleep(10)")
            assert scope.cancelled_caught
            assert pool.in_use == 1  # recovering in the background, not idle
            async with pool.connection() as c:
                assert c.backend_pid == pid  # the same session, healthy again
                assert not c.in_transaction
                assert await c.fetchval("SELECT 1") == 1


async def test_cancelled_transaction_is_rolled_back(pg_dsn: str, conn: Connection) -> None:
    t = await new_table(conn, "id int PRIMARY KEY")
    async with pgwire.open_pool(pg_dsn, size=1) as pool:
        with trio.fail_after(3), trio.move_on_after(0.2):
            async with pool.connection() as c, c.transaction():
                await c.execute(f"INSERT INTO {t} VALUES (1)")
                await c.fetch("SELECT pg_sleep(10)")
        async with pool.connection() as c:
            assert not c.in_transaction
            assert await c.fetchval(f"SELECT count(*) FROM {t}") == 0


async def test_cancelled_connection_replaced_when_recovery_cannot_finish(pg_dsn: str) -> None:
    # A recovery given no time closes the connection; the pool opens a new one.
    async with pgwire.open_pool(pg_dsn, size=1, recover_timeout=0) as pool:
        with trio.fail_after(3):
            with trio.move_on_after(0.2):
                async with pool.connection() as c:
                    pid = c.backend_pid
                    await c.fetch("SELECT pg_sleep(10)")
            async with pool.connection() as c:
                assert c.backend_pid != pid
                assert await c.fetchval("SELECT 1") == 1


async def test_standalone_connection_recovers_before_next_use(conn: Connection) -> None:
    t = await new_table(conn, "id int PRIMARY KEY")
    with trio.fail_after(3):
        with trio.move_on_after(0.2):
            await conn.pipeline([("SELECT pg_sleep(10)", ()), ("SELECT 1", ())])
        assert await conn.fetchval("SELECT 2") == 2
        assert not conn.in_transaction
        with trio.move_on_after(0.2):
            await conn.execute_script("SELECT pg_sleep(10); SELECT 1")

        # A transaction opened on a connection still to recover is a transaction.
        async def insert_twice() -> None:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {t} VALUES (1)")
                await conn.execute(f"INSERT INTO {t} VALUES (1)")

        with pytest.raises(PgError, match="duplicate key"):
            await insert_twice()
        assert await conn.fetchval(f"SELECT count(*) FROM {t}") == 0


async def test_pool_bound_respected_under_50_tasks(pg_dsn: str, conn: Connection) -> None:
    size, tasks = 8, 50
    dsn = pg_dsn + "&application_name=pgwire_bound"
    peak = current = 0
    pids: set[int] = set()
    server_peak = 0
    async with pgwire.open_pool(dsn, size=size) as pool:

        async def work() -> None:
            nonlocal peak, current, server_peak
            for _ in range(4):
                async with pool.connection() as c:
                    current += 1
                    peak = max(peak, current)
                    pids.add(c.backend_pid)
                    await c.fetchval("SELECT pg_sleep(0.001)")
                    current -= 1
                    assert pool.in_use <= size

        async def observe() -> None:
            nonlocal server_peak
            while True:
                n = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    "pgwire_bound",
                )
                assert isinstance(n, int)
                server_peak = max(server_peak, n)

        with trio.fail_after(30):
            async with trio.open_nursery() as watcher:
                watcher.start_soon(observe)
                async with trio.open_nursery() as nursery:
                    for _ in range(tasks):
                        nursery.start_soon(work)
                watcher.cancel_scope.cancel()
    assert peak == size
    assert len(pids) <= size
    assert 0 < server_peak <= size


async def test_listen_notify(pg_dsn: str, conn: Connection) -> None:
    async with await pgwire.connect(pg_dsn) as listener:
        await listener.listen("mdm_wake", "mdm other")
        got: list[pgwire.Notification] = []
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    async for note in listener.notifications():
                        got.append(note)
                        if len(got) == 3:
                            nursery.cancel_scope.cancel()

                nursery.start_soon(receive)
                await conn.execute("SELECT pg_notify($1, $2)", "mdm_wake", "dev-1")
                await conn.pipeline(
                    [
                        ("NOTIFY mdm_wake, 'dev-2'", ()),
                        ("SELECT pg_notify($1, $2)", ("mdm other", "")),
                    ]
                )
        assert [(n.channel, n.payload) for n in got] == [
            ("mdm_wake", "dev-1"),
            ("mdm_wake", "dev-2"),
            ("mdm other", ""),
        ]
        assert got[0].pid == conn.backend_pid


async def test_listener_ends_when_closed(pg_dsn: str) -> None:
    listener = await pgwire.connect(pg_dsn)
    await listener.listen("mdm_close")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                async for _ in listener.notifications():
                    pass

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            listener.close()


async def test_connection_used_by_two_tasks_is_refused(conn: Connection) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.fetch, "SELECT pg_sleep(0.2)")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await conn.fetch("SELECT 1")
    assert await conn.fetchval("SELECT 1") == 1


async def test_idle_connection_killed_by_server_is_replaced(pg_dsn: str, conn: Connection) -> None:
    async with pgwire.open_pool(pg_dsn, size=1) as pool:
        async with pool.connection() as c:
            pid = c.backend_pid
        # Waits (up to 5 s) until the backend is gone.
        assert await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", pid) is True
        async with pool.connection() as c:
            assert c.backend_pid != pid
            assert await c.fetchval("SELECT 1") == 1


async def test_connection_killed_mid_use_raises_and_is_replaced(
    pg_dsn: str, conn: Connection
) -> None:
    async with pgwire.open_pool(pg_dsn, size=1) as pool:
        async with pool.connection() as c:
            pid = c.backend_pid

        async def killed() -> None:
            async with pool.connection() as c:
                assert c.backend_pid == pid
                await c.fetch("SELECT pg_terminate_backend(pg_backend_pid())")

        with pytest.raises(ConnectionLost) as lost:
            await killed()
        assert lost.value.sqlstate == "57P01"  # the server's reason, not just "closed"
        assert "terminating connection due to administrator command" in str(lost.value)
        async with pool.connection() as c:
            assert c.backend_pid != pid
            assert await c.fetchval("SELECT 1") == 1


async def test_connect_errors_name_the_problem(postgres_server: PostgresServer) -> None:
    with pytest.raises(PgError, match='database "no_such_db" does not exist') as db:
        await pgwire.connect(postgres_server.dsn("no_such_db"))
    assert db.value.sqlstate == "08001"
    bad_user = postgres_server.dsn().replace("postgres@", "ghost@")
    with pytest.raises(PgError, match='role "ghost" does not exist'):
        await pgwire.connect(bad_user)
    with pytest.raises(PgError, match=r"/nonexistent/sockets/\.s\.PGSQL\.\d+.*No such file"):
        await pgwire.connect("postgresql://postgres@/postgres?host=/nonexistent/sockets")
    with pytest.raises(PgError, match="invalid connection string"):
        await pgwire.connect("postgresql://postgres@/postgres?nonsense=1")


async def test_host_names_resolved_by_trio(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.tcp_dsn("postgres", host="localhost")
    conninfo = await pgwire.resolve_conninfo(dsn)
    assert "hostaddr='127.0.0.1" in conninfo or "hostaddr='::1" in conninfo
    async with await pgwire.connect(dsn) as c:
        assert await c.fetchval("SELECT inet_server_addr()::text") == "127.0.0.1/32"
    # Several hosts: each is resolved; a socket directory entry stays as it is.
    multi = f"host=localhost,{postgres_server.socket_dir} port={postgres_server.port}"
    conninfo = await pgwire.resolve_conninfo(multi)
    assert f"host='localhost,{postgres_server.socket_dir}'" in conninfo
    assert "hostaddr='127.0.0.1,'" in conninfo


async def test_environment_variables_honoured(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGHOST", str(postgres_server.socket_dir))
    monkeypatch.setenv("PGPORT", str(postgres_server.port))
    monkeypatch.setenv("PGUSER", postgres_server.user)
    monkeypatch.setenv("PGDATABASE", "mdmgate_test")
    monkeypatch.setenv("PGAPPNAME", "from_env")
    async with await pgwire.connect() as c:
        row = await c.fetchrow(
            "SELECT current_database()::text, current_setting('application_name')"
        )
    assert row == ("mdmgate_test", "from_env")
