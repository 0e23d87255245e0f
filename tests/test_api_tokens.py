"""Named API tokens: made, used and revoked through the API and ``mdmgate tokens``, on real
``mdmgate serve`` nodes sharing one database (SQLite, and PostgreSQL), over real sockets.

A token made on one node opens the other at once; one revoked on one node is refused by the
other from its next request; a ``read`` token looks but changes nothing, ``/metrics``
included; nobody but a ``full`` token manages tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from mdmgate.api_tokens import ApiTokens
from mdmgate.server.admin import AdminApi
from mdmgate.server.api_tokens import RESPONSE_TYPES, TokensApi, operations
from mdmgate.server.types import Request
from mdmgate.storage.memory import MemoryStore
from tests.cluster import TOKEN, Cluster, Node, postgres_database
from tests.postgres_server import PostgresServer

DEADLINE = 120


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def cli(node: Node, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``mdmgate tokens ARGS`` as a user runs it, against ``node``."""
    env = {**os.environ, "MDMGATE_URL": node.base_url, "MDMGATE_API_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "mdmgate", "tokens", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def scenario(cluster: Cluster) -> None:
    first, second = cluster.nodes
    async with (
        httpx.AsyncClient(base_url=first.base_url, timeout=30) as one,
        httpx.AsyncClient(base_url=second.base_url, timeout=30) as other,
    ):
        # Made with the CLI (the bootstrap token), printed once on stdout.
        made = await trio.to_thread.run_sync(cli, first, TOKEN, "create", "console")
        assert made.returncode == 0, made.stderr
        reader = made.stdout.strip()
        assert reader.startswith("mdmgate_")
        assert "not shown again" in made.stderr
        writer = (
            await one.post(
                "/api/v1/tokens", json={"name": "deploy", "scope": "full"}, headers=bearer(TOKEN)
            )
        ).json()["token"]

        # The read token opens reads on the other node, /metrics too, and no change.
        r = await other.get("/api/v1/devices", headers=bearer(reader))
        assert r.status_code == 200, r.text
        assert (await other.get("/metrics", headers=bearer(reader))).status_code == 200
        device = {"id": "win-tok", "platform": "windows", "org": "/acme"}
        r = await other.post("/api/v1/devices", json=[device], headers=bearer(reader))
        assert r.status_code == 403
        assert "scope full" in r.json()["error"]
        assert (await other.get("/api/v1/tokens", headers=bearer(reader))).status_code == 403
        denied = await trio.to_thread.run_sync(cli, second, reader, "create", "sneaky")
        assert denied.returncode == 2
        assert "403" in denied.stderr

        # The full token changes things, and manages tokens.
        r = await other.post("/api/v1/devices", json=[device], headers=bearer(writer))
        assert r.status_code == 200, r.text
        listed = await trio.to_thread.run_sync(cli, second, writer, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        tokens = {t["name"]: t for t in json.loads(listed.stdout)}
        assert {n: t["scope"] for n, t in tokens.items()} == {"console": "read", "deploy": "full"}
        assert "token" not in tokens["console"]
        assert tokens["console"]["last_used_at"] is not None
        assert reader.split("_")[1] == tokens["console"]["id"]

        # A name is taken while its token lives.
        r = await one.post(
            "/api/v1/tokens", json={"name": "console", "scope": "read"}, headers=bearer(writer)
        )
        assert r.status_code == 409
        assert r.json()["field"] == "$.name"

        # Revoked on one node: refused by the other from its next request.
        gone = await trio.to_thread.run_sync(cli, first, writer, "revoke", tokens["console"]["id"])
        assert gone.returncode == 0, gone.stderr
        assert "revoked" in gone.stdout
        r = await other.get("/api/v1/devices", headers=bearer(reader))
        assert r.status_code == 401
        assert (await other.get("/metrics", headers=bearer(reader))).status_code == 401
        shown = await other.get(f"/api/v1/tokens/{tokens['console']['id']}", headers=bearer(writer))
        assert shown.json()["revoked_at"] is not None
        # Revoked, its name may be given again.
        r = await one.post(
            "/api/v1/tokens", json={"name": "console", "scope": "read"}, headers=bearer(writer)
        )
        assert r.status_code == 201

        # A token that is almost right opens nothing.
        forged = reader[:-1] + ("A" if reader[-1] != "A" else "B")
        assert (await one.get("/api/v1/devices", headers=bearer(forged))).status_code == 401


async def test_tokens_across_two_nodes_on_sqlite(tmp_path: Path) -> None:
    db = Cluster.sqlite_url(tmp_path / "mdmgate.db")
    with trio.fail_after(DEADLINE):
        async with Cluster(tmp_path, db, nodes=2) as cluster:
            await scenario(cluster)


async def test_tokens_across_two_nodes_on_postgres(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    db = postgres_database(postgres_server, "tokens")
    with trio.fail_after(DEADLINE):
        async with Cluster(tmp_path, db, nodes=2) as cluster:
            await scenario(cluster)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "x", "scope": "admin"}, 422, "$.scope"),
        ({"name": "", "scope": "read"}, 422, "$.name"),
        ({"name": "a\nb", "scope": "read"}, 422, "$.name"),
        ({"name": "x"}, 422, None),
        ({"name": "x", "scope": "read", "scopes": ["full"]}, 422, "$.scopes"),
    ],
)
async def test_bad_token_requests_name_the_problem(
    tmp_path: Path, body: dict[str, object], status: int, field: str | None
) -> None:
    store = MemoryStore()
    tokens = ApiTokens(store)
    admin = AdminApi(
        store,
        TOKEN,
        token_scope=tokens.scope_of,
        extra_operations=operations(TokensApi(tokens)),
        extra_types=RESPONSE_TYPES,
    )
    request = Request(
        "POST",
        "/api/v1/tokens",
        "",
        (("authorization", f"Bearer {TOKEN}"), ("content-type", "application/json")),
        json.dumps(body).encode(),
        "1.1",
        "127.0.0.1:1",
    )
    answer = await admin(request)
    assert answer.status == status
    error = json.loads(answer.body)
    if field is not None:
        assert error["field"] == field, error
    assert await store.list_api_tokens() == []


async def test_a_token_of_another_shape_is_never_looked_up() -> None:
    store = MemoryStore()
    tokens = ApiTokens(store)
    issued = await tokens.issue("ci", "full")
    assert await tokens.scope_of(issued.bearer) == "full"
    token_id = issued.record.id
    for wrong in ("", TOKEN, f"mdmgate_{token_id}_", f"mdmgate_{token_id}", issued.bearer + "x"):
        assert await tokens.scope_of(wrong) is None
