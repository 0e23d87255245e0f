"""The fleet index's catch-up after 10,000 device changes made through another node, in
process: node A writes to the store, node B (a :class:`~mdmgate.catalogue.service.Catalogue`
on its own store connection, as another process would have) follows the change feed.

    python benches/bench_catalogue_lag.py                      # memory, sqlite, postgresql
    python benches/bench_catalogue_lag.py --backends sqlite --fleet 20000 --changes 2000

The fleet: ``--fleet`` iPhones (100,000) in 50 organisations, each reporting version 1.0 of
5 catalogue apps; B's index is built and warm before timing. Then ``--changes`` devices
(10,000) report 2.0 of the first app, three ways:

* ``bulk``: node A writes them in batches of 2,000 (``upsert_devices``, as the admin API's
  bulk registration does), B's follower running;
* ``one by one``: node A writes them one ``merge_facts`` at a time (an inventory per device,
  as the device endpoints do), B's follower running;
* ``cold``: B's follower stopped, node A writes them in bulk, then B is asked one question
  (a preview): the whole catch-up happens at question time.

Lag: from the moment node A's last write returned until B's index has applied every change
(its cursor reaches the feed's last ``seq``), polled every millisecond; for ``cold``, the
question's time. After each, B's preview is checked: every changed device at 2.0. SQLite's
follower sees another connection's commits by polling (``poll_interval``, 50 ms);
PostgreSQL's is woken by LISTEN/NOTIFY; memory's in process. PostgreSQL: a throwaway server
from ``tests/postgres_server.py`` (skipped when its binaries are missing).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.postgres_server import running

from mdmgate.catalogue.model import App, AppVersion, Notification
from mdmgate.catalogue.service import Catalogue
from mdmgate.storage import Device, Store
from mdmgate.storage.memory import MemoryStore
from mdmgate.storage.postgres import PostgresStore
from mdmgate.storage.sqlite import SQLiteStore

APPS = 5
BATCH = 2000


def device(i: int, version: str) -> Device:
    apps = [{"identifier": f"com.bench.app{k}", "version": "1.0"} for k in range(APPS)]
    apps[0] = {"identifier": "com.bench.app0", "version": version}
    return Device(f"phone-{i:06d}", "ios", f"/fleet/{i % 50}", "17.5", True, facts={"apps": apps})


@contextlib.asynccontextmanager
async def two_stores(backend: str, tmp: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Node A's store and node B's, on one database."""
    if backend == "memory":
        memory = MemoryStore()
        yield memory, memory
        await memory.aclose()
        return
    async with contextlib.AsyncExitStack() as stack:
        opened: list[Store] = []
        if backend == "sqlite":
            for _ in range(2):
                opened.append(await SQLiteStore.open(tmp / "lag.db"))
        else:
            server = stack.enter_context(running(tcp=False))
            server.create_database("lag")
            for _ in range(2):
                opened.append(await PostgresStore.open(server.dsn("lag")))
        for store in opened:
            stack.push_async_callback(store.aclose)
        yield opened[0], opened[1]


async def caught_up(node: Catalogue, store: Store) -> float:
    """Seconds until ``node`` has applied every change of the feed."""
    started = time.perf_counter()
    last = await store.last_change()
    while node.cursor < last:
        await trio.sleep(0.001)
    return time.perf_counter() - started


async def check(node: Catalogue, store: Store, version: str, expected: int) -> None:
    """B's preview of ``version`` of the first app finds ``expected`` devices at it."""
    app = await store.get_app("app0")
    assert app is not None
    preview = await node.evaluate(
        app, Notification(id="check", app_id="app0", version=version, all_devices=True)
    )
    if preview.counts.get("already_at_version") != expected:
        raise SystemExit(f"B's preview is wrong: {preview.counts}")


async def measure(backend: str, fleet: int, changes: int, tmp: Path) -> list[str]:
    rows: list[str] = []
    async with two_stores(backend, tmp) as (a, b):
        for start in range(0, fleet, 5000):
            end = min(fleet, start + 5000)
            await a.upsert_devices([device(i, "1.0") for i in range(start, end)])
        for k in range(APPS):
            await a.put_app(
                App(
                    id=f"app{k}",
                    name=f"App {k}",
                    platform="ios",
                    kind="internal",
                    identifier=f"com.bench.app{k}",
                    versions=(AppVersion(file_version="1.0"), AppVersion(file_version="2.0")),
                ),
                expected_rev=None,
            )
        node = Catalogue(b, node_id="node-b")
        started = time.perf_counter()
        await node.fleet()
        built = time.perf_counter() - started
        rows.append(f"{backend:10} index of {fleet:,} devices built in {built:.2f} s")

        async def bulk(version: str) -> None:
            for start in range(0, changes, BATCH):
                end = min(changes, start + BATCH)
                await a.upsert_devices([device(i, version) for i in range(start, end)])

        async def one_by_one(version: str) -> None:
            others = [{"identifier": f"com.bench.app{k}", "version": "1.0"} for k in range(1, APPS)]
            for i in range(changes):
                first = {"identifier": "com.bench.app0", "version": version}
                await a.merge_facts(f"phone-{i:06d}", {"apps": [first, *others]})

        runs: list[tuple[str, Callable[[str], Awaitable[None]], str, int]] = [
            ("bulk", bulk, "2.0", changes),  # 10,000 at 2.0
            ("one by one", one_by_one, "1.0", fleet),  # back to 1.0: every device at it
        ]
        async with trio.open_nursery() as nursery:
            await nursery.start(node.follow)
            await caught_up(node, b)
            for name, write, version, expected in runs:
                started = time.perf_counter()
                await write(version)
                written = time.perf_counter() - started
                lag = await caught_up(node, b)
                rows.append(
                    f"{backend:10} {name:10}: {changes:,} changes written in {written:.2f} s;"
                    f" B caught up {lag * 1e3:.0f} ms after the last one"
                )
                await check(node, b, version, expected)
            nursery.cancel_scope.cancel()
        await bulk("2.0")  # the follower stopped: the next question catches up
        started = time.perf_counter()
        await check(node, b, "2.0", changes)
        asked = time.perf_counter() - started
        rows.append(
            f"{backend:10} cold      : the first question after {changes:,} changes took"
            f" {asked * 1e3:.0f} ms (catch-up included)"
        )
    return rows


async def main(backends: list[str], fleet: int, changes: int) -> None:
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                rows = await measure(backend, fleet, changes, Path(tmp))
            except OSError as exc:  # e.g. no PostgreSQL binaries
                rows = [f"{backend:10} skipped: {type(exc).__name__}: {exc}"]
        for row in rows:
            print(row, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="memory,sqlite,postgresql")
    parser.add_argument("--fleet", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=10_000)
    args = parser.parse_args()
    trio.run(main, args.backends.split(","), args.fleet, args.changes)
