"""Fixtures for tests against a real PostgreSQL server (tests/postgres_server.py).

A test module that needs them says ``pytest_plugins = ["tests.conftest_pg"]``. The server is
started once per session, on first use, and stopped at the end. Without PostgreSQL installed
the tests fail (they do not skip): install it with ``.ci/postgres-install``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres_server import INSTALL_HINT, PostgresServer, find_bindir, running

TEST_DATABASE = "mdmgate_test"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if find_bindir() is None:
        pytest.fail(f"PostgreSQL is not installed (no initdb found): {INSTALL_HINT}", pytrace=False)
    with running(timeout=60.0) as server:
        server.create_database(TEST_DATABASE)
        yield server


@pytest.fixture(scope="session")
def pg_dsn(postgres_server: PostgresServer) -> str:
    """A libpq URL to an empty database of the session's server (over its unix socket)."""
    return postgres_server.dsn(TEST_DATABASE)
