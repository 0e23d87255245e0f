"""Scratch PostgreSQL databases for the store tests (the ``postgresql`` backend of
tests/stores.py).

The server is the session's (``postgres_server`` from tests/conftest_pg.py), handed over by
the root conftest.py for every test parametrized with ``postgresql``; code that runs outside
such a test starts its own on first use.

A test gets a database of its own, named after its ``tmp_path`` so that another store or
process of the same test finds it (:func:`database_url`). Databases are copied from a
template migrated once, and reused: once a test is over (:func:`release`), its database is
emptied (``DELETE`` of every table, sequences reset: a few ms) and handed to the next test.
Creating one per test would cost 0.1-0.5 s (``CREATE DATABASE`` checkpoints), and ``TRUNCATE``
about 0.1 s, hundreds of times per run.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from mdmgate.storage import pgwire
from mdmgate.storage.postgres import PostgresStore
from tests.postgres_server import PostgresServer

TEMPLATE = "mdmgate_template"
#: Connections per store: enough for the concurrency tests, few for hundreds of tests.
POOL_SIZE = 4

_server: PostgresServer | None = None
_template_on: PostgresServer | None = None  # the server whose template is migrated
_free: list[str] = []  # databases of tests that are over: emptied before reuse
_owned: dict[str, str] = {}  # the running test's databases, by tmp_path
_names = itertools.count()

# Every table but schema_version, emptied without regard to foreign keys (replica role:
# no triggers), and every sequence of the schema restarted.
_EMPTY = """
DO $$
DECLARE t record;
BEGIN
    SET LOCAL session_replication_role = replica;
    FOR t IN SELECT tablename FROM pg_tables
             WHERE schemaname = current_schema() AND tablename <> 'schema_version' LOOP
        EXECUTE format('DELETE FROM %I', t.tablename);
    END LOOP;
    FOR t IN SELECT c.relname FROM pg_class c
             WHERE c.relkind = 'S' AND c.relnamespace = current_schema()::regnamespace LOOP
        PERFORM setval(format('%I', t.relname)::regclass, 1, false);
    END LOOP;
END
$$
"""


def use_server(server: PostgresServer) -> None:
    """Makes ``server`` the one the scratch databases live on."""
    global _server  # noqa: PLW0603 - the session's server, handed over by a fixture
    if server is not _server:
        _free.clear()
        _owned.clear()
    _server = server


def release() -> None:
    """The running test is over: its databases may be emptied and reused."""
    _free.extend(_owned.values())
    _owned.clear()


def _current() -> PostgresServer:
    if _server is None:
        server = PostgresServer()  # stopped at exit (atexit)
        server.start()
        use_server(server)
    assert _server is not None
    return _server


def database_url(tmp_path: Path) -> str:
    """The URL of the database :func:`open_fresh` opened for the test of ``tmp_path``."""
    name = _owned.get(str(tmp_path))
    if name is None:
        raise LookupError(f"no PostgreSQL database was opened for {tmp_path}")
    return _current().dsn(name)


async def open_fresh(tmp_path: Path) -> PostgresStore:
    """A store on an empty database for the test of ``tmp_path``; the same database again
    when that test opens it a second time (as a restarted node would)."""
    global _template_on  # noqa: PLW0603 - migrated once per server
    server = _current()
    name = _owned.get(str(tmp_path))
    if name is None:
        if _free:
            name = _free.pop()
            async with await pgwire.connect(server.dsn(name)) as conn:
                await conn.execute_script(_EMPTY)
        else:
            name = f"mdmgate_test_{next(_names)}"
            async with await pgwire.connect(server.dsn("postgres")) as admin:
                if _template_on is not server:
                    await admin.execute_script(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
                    await admin.execute_script(f'CREATE DATABASE "{TEMPLATE}"')
                    migrated = await PostgresStore.open(server.dsn(TEMPLATE), pool_size=1)
                    await migrated.aclose()
                    _template_on = server
                await admin.execute_script(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.execute_script(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        _owned[str(tmp_path)] = name
    return await PostgresStore.open(server.dsn(name), pool_size=POOL_SIZE)


async def open_peer(tmp_path: Path) -> PostgresStore:
    """Another store (its own connections) on the test's database."""
    return await PostgresStore.open(database_url(tmp_path), pool_size=POOL_SIZE)
