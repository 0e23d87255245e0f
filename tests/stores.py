"""The storage backends every store-backed test runs against: add a backend here and the
conformance suite and the protocol services run on it.

A backend with a database that several stores can share (every one but ``memory``) also
runs the concurrency tests that race two stores (two connections) and two OS processes on
one database: give it a :func:`database_url` and an :func:`open_peer`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from mdmgate.catalogue.model import CommandBatch, LicenceGrant
from mdmgate.storage import LicencesExhausted, NewEvent, Store
from mdmgate.storage.memory import MemoryStore
from mdmgate.storage.sqlite import SQLiteStore
from tests import pg_databases

BACKENDS = ["memory", "sqlite", "postgresql"]

#: The backends whose database several stores and processes can share.
SHARED_BACKENDS = [b for b in BACKENDS if b != "memory"]


def database_url(kind: str, tmp_path: Path) -> str | None:
    """The ``--db`` URL of the database :func:`open_backend` opens for ``(kind, tmp_path)``,
    which another process opens with :func:`mdmgate.server.app.open_store`; ``None`` when
    there is nothing to share (memory)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'mdmgate.db'}"
    if kind == "postgresql":
        return pg_databases.database_url(tmp_path)
    return None


async def open_backend(kind: str, tmp_path: Path) -> Store:
    """A fresh, empty store of ``kind`` (one of :data:`BACKENDS`)."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return await SQLiteStore.open(tmp_path / "mdmgate.db")
    if kind == "postgresql":
        # A new database per call, copied from a migrated template; dropped when closed.
        return await pg_databases.open_fresh(tmp_path)
    raise ValueError(f"unknown backend {kind!r}")


async def open_peer(kind: str, tmp_path: Path) -> Store:
    """Another store on the database :func:`open_backend` opened for ``(kind, tmp_path)``
    (its own connections, as another gateway node would have): a backend of
    :data:`SHARED_BACKENDS`."""
    if kind == "sqlite":
        return await SQLiteStore.open(tmp_path / "mdmgate.db")
    if kind == "postgresql":
        return await pg_databases.open_peer(tmp_path)
    raise ValueError(f"backend {kind!r} has no database to share")


# -- racing -------------------------------------------------------------------------------
# The same operations run as tasks on several stores, or in several OS processes
# (race_processes): each loops over a store operation and reports what it got.


async def take_all(store: Store, device: str, session: str, limit: int) -> list[list[Any]]:
    """Takes the device's deliveries in ``session`` (``max_offers=1``: each can be handed
    out once only) until none is left; returns ``[command_id, offers]`` for each."""
    got: list[list[Any]] = []
    while batch := await store.take(device, session, limit, max_offers=1):
        got += [[d.command_id, d.offers] for d in batch]
    return got


async def merge_keys(store: Store, device: str, keys: Sequence[str]) -> int:
    """Merges each key as its own fact, one call per key."""
    for i, key in enumerate(keys):
        assert await store.merge_facts(device, {key: {"n": i, "by": key}})
    return len(keys)


async def grant_each(store: Store, app: str, total: int, devices: Sequence[str]) -> list[str]:
    """One fan-out with a licence grant per device; returns the devices granted."""
    granted = []
    for device in devices:
        try:
            await store.fan_out(
                [CommandBatch(f"install-{device}", "apple", b"x", [device])],
                licences=LicenceGrant(app, total, [device]),
            )
        except LicencesExhausted:
            continue
        granted.append(device)
    return granted


async def claim_each(store: Store, names: Sequence[str], holder: str) -> list[str]:
    """Claims each lease (until far in the future); returns those won."""
    return [n for n in names if await store.claim_lease(n, holder, now=1.0, until=1e12)]


async def use_token_times(store: Store, token_id: str, times: int, now: float) -> list[int]:
    """Tries to use the enrollment token ``times`` times; returns the use count each
    successful use left it at."""
    counts = []
    for _ in range(times):
        token = await store.use_token(token_id, now=now)
        if token is not None:
            counts.append(token.uses)
    return counts


async def append_each(store: Store, kind: str, times: int) -> list[int]:
    """Appends ``times`` events of type ``kind``, one call each; returns their numbers."""
    return [await store.append_events([NewEvent(kind, data={"n": i})]) for i in range(times)]


RACE_OPS: dict[str, Callable[..., Awaitable[Any]]] = {
    "take_all": take_all,
    "merge_keys": merge_keys,
    "grant_each": grant_each,
    "claim_each": claim_each,
    "use_token_times": use_token_times,
    "append_each": append_each,
}

_RACER = textwrap.dedent(
    """
    import json, sys, trio
    from mdmgate.server.app import open_store
    from tests.stores import RACE_OPS

    async def main():
        url, op, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        racer, racers = int(sys.argv[4]), int(sys.argv[5])
        store = await open_store(url)
        print("ready", flush=True)
        sys.stdin.readline()  # the start signal: every racer has opened the store
        try:
            # A barrier in the database, so that the racers start their work together
            # rather than as the OS happens to wake them.
            await store.claim_lease(f"racer:{racer}", str(racer), now=0.0, until=1e12)
            while len(await store.live_leases("racer:", now=1.0)) < racers:
                await trio.sleep(0.001)
            result = await RACE_OPS[op](store, **kwargs)
        finally:
            await store.aclose()
        print(json.dumps(result), flush=True)

    trio.run(main)
    """
)

_ROOT = Path(__file__).resolve().parent.parent


def race_processes(url: str, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Runs each ``(op, kwargs)`` of :data:`RACE_OPS` in its own OS process on the database
    at ``url``, started together once all have opened the store; returns their results.
    Blocking (run it with ``trio.to_thread.run_sync``)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, url, op, json.dumps(kwargs), str(i), str(len(calls))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=_ROOT,
        )
        for i, (op, kwargs) in enumerate(calls)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready", "a racer failed to start"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, f"a racer failed ({p.returncode})"
            results.append(json.loads(out))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


async def race_in_processes(url: str, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
    return await trio.to_thread.run_sync(race_processes, url, calls)
