"""Test-session wiring shared by every test directory.

``pytest_plugins`` may only be declared here, in the root conftest: it loads the PostgreSQL
fixtures (tests/conftest_pg.py) for every module. A test parametrized with the
``postgresql`` backend (tests/stores.py) gets the session's server for its scratch
databases (tests/pg_databases.py), reused by the next such test once it is over; the
others never start one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests import pg_databases

pytest_plugins = ["tests.conftest_pg"]


@pytest.fixture(autouse=True)
def _postgres_for_store_backends(request: pytest.FixtureRequest) -> Iterator[None]:
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    if not any(isinstance(p, str) and p == "postgresql" for p in params):
        yield
        return
    pg_databases.use_server(request.getfixturevalue("postgres_server"))
    yield
    pg_databases.release()  # the test is over: its database is emptied and reused
