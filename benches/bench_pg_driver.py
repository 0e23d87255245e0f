"""Client cost of a PostgreSQL round trip from Trio: mdmgate.storage.pgwire against psycopg's
sync API run in threads, same server, same run.

    python benches/bench_pg_driver.py            # about 1 min
    python benches/bench_pg_driver.py --quick    # smoke run for CI, a few seconds, no verdict

The server is a real PostgreSQL started for the run by tests/postgres_server.py (unix socket,
fsync off), holding ``devices`` (1,000 rows: id, org, facts jsonb, rev) and an empty
``events`` table. ``--tasks`` Trio tasks share a pool of ``--pool`` connections and do:

* point read: ``SELECT id, org, facts, rev FROM devices WHERE id = $1`` on a random id;
* write transaction, three statements: bump the device's ``rev``, insert an event, update
  the device's facts. pgwire sends them in one pipeline (BEGIN..COMMIT, one round trip).

The baseline is psycopg 3's sync ``Connection`` (prepared statements, autocommit, a
``conn.transaction()`` block for the writes), one ``trio.to_thread.run_sync`` call per
operation, connections lent by a ``trio.Semaphore`` pool of the same size: what the gateway
would do without a Trio driver.

Per operation: client CPU (``time.process_time`` of this process, all threads, over the run
divided by the operations) and wall time (elapsed divided by operations: the inverse of
throughput). Each driver runs ``--rounds`` times, alternating, and keeps its best round. The
ratio is the baseline's cost over pgwire's; the target is pgwire at least
``TARGET_CPU_RATIO`` times cheaper in client CPU for both operations.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import trio

from mdmgate.storage import pgwire

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.postgres_server import running

TARGET_CPU_RATIO = 2.0
DEVICES = 1000

READ = "SELECT id, org, facts, rev FROM devices WHERE id = $1"
WRITES = (
    "UPDATE devices SET rev = rev + 1 WHERE id = $1",
    "INSERT INTO events (device_id, at, body) VALUES ($1, now(), $2)",
    "UPDATE devices SET facts = jsonb_set(facts, '{seen}', to_jsonb($2::int8)) WHERE id = $1",
)
SCHEMA = """
CREATE TABLE devices (id text PRIMARY KEY, org text NOT NULL, facts jsonb NOT NULL,
                      rev int8 NOT NULL);
CREATE TABLE events (seq bigserial PRIMARY KEY, device_id text NOT NULL,
                     at timestamptz NOT NULL, body text NOT NULL);
INSERT INTO devices SELECT 'dev-' || i, '/acme/' || (i % 10), '{"model": "x"}', 0
FROM generate_series(0, 999) AS i;
"""

Op = Callable[[str, int], Awaitable[None]]


def psycopg_sql(sql: str) -> str:
    """The same statement with psycopg's placeholders."""
    for n in range(9, 0, -1):
        sql = sql.replace(f"${n}::int8", f"%({n})s::int8").replace(f"${n}", f"%({n})s")
    return sql


async def run(ops: int, tasks: int, op: Op) -> tuple[float, float]:
    """(CPU s, wall s) per operation for ``ops`` operations spread over ``tasks`` tasks."""
    rng = random.Random(7)
    ids = [f"dev-{rng.randrange(DEVICES)}" for _ in range(ops)]

    async def worker(k: int) -> None:
        for i in range(k, ops, tasks):
            await op(ids[i], i)

    cpu, wall = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(tasks):
            nursery.start_soon(worker, k)
    return (time.process_time() - cpu) / ops, (time.perf_counter() - wall) / ops


async def bench_pgwire(dsn: str, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    async with pgwire.open_pool(dsn, size=args.pool) as pool:

        async def read(device: str, i: int) -> None:
            async with pool.connection() as conn:
                row = await conn.fetchrow(READ, device)
            assert row is not None
            assert row[0] == device

        async def write(device: str, i: int) -> None:
            params: list[tuple[pgwire.Param, ...]] = [
                (device,),
                (device, f"event {i}"),
                (device, i),
            ]
            async with pool.connection() as conn:
                await conn.pipeline(list(zip(WRITES, params, strict=True)))

        await run(args.pool * 20, args.tasks, read)  # open the connections, prepare
        await run(args.pool * 5, args.tasks, write)
        return {
            "read": await run(args.reads, args.tasks, read),
            "write": await run(args.writes, args.tasks, write),
        }


async def bench_threads(dsn: str, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    read_sql = psycopg_sql(READ)
    write_sql = [psycopg_sql(w) for w in WRITES]
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(args.pool)]
    slots = trio.Semaphore(args.pool)

    def do_read(conn: psycopg.Connection[tuple[object, ...]], device: str) -> None:
        row = conn.execute(read_sql, {"1": device}, prepare=True).fetchone()
        assert row is not None
        assert row[0] == device

    def do_write(conn: psycopg.Connection[tuple[object, ...]], device: str, i: int) -> None:
        with conn.transaction():
            conn.execute(write_sql[0], {"1": device}, prepare=True)
            conn.execute(write_sql[1], {"1": device, "2": f"event {i}"}, prepare=True)
            conn.execute(write_sql[2], {"1": device, "2": i}, prepare=True)

    async def read(device: str, i: int) -> None:
        async with slots:
            conn = conns.pop()
            try:
                await trio.to_thread.run_sync(do_read, conn, device)
            finally:
                conns.append(conn)

    async def write(device: str, i: int) -> None:
        async with slots:
            conn = conns.pop()
            try:
                await trio.to_thread.run_sync(do_write, conn, device, i)
            finally:
                conns.append(conn)

    try:
        await run(args.pool * 20, args.tasks, read)
        await run(args.pool * 5, args.tasks, write)
        return {
            "read": await run(args.reads, args.tasks, read),
            "write": await run(args.writes, args.tasks, write),
        }
    finally:
        for conn in conns:
            conn.close()


def us(seconds: float) -> str:
    return f"{seconds * 1e6:7.1f} µs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=32, help="Trio tasks (32)")
    parser.add_argument("--pool", type=int, default=8, help="connections in each pool (8)")
    parser.add_argument("--reads", type=int, help="point reads per round (20000)")
    parser.add_argument("--writes", type=int, help="write transactions per round (5000)")
    parser.add_argument("--rounds", type=int, help="rounds per driver, best kept (3)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --reads 1000 --writes 300 --rounds 1"
    )
    args = parser.parse_args()

    def pick(value: int | None, normal: int, smoke: int) -> int:
        return value if value is not None else (smoke if args.quick else normal)

    args.reads = pick(args.reads, 20_000, 1000)
    args.writes = pick(args.writes, 5000, 300)
    rounds = pick(args.rounds, 3, 1)
    if min(args.tasks, args.pool, args.reads, args.writes, rounds) < 1:
        parser.error("the counts must be at least 1")
    print(f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"psycopg {psycopg.__version__} (pq {psycopg.pq.__impl__}, libpq {psycopg.pq.version()})")
    print(
        f"{args.tasks} Trio tasks, pool of {args.pool}, {args.reads} reads and "
        f"{args.writes} write transactions per round, best of {rounds}"
    )
    drivers = {"pgwire": bench_pgwire, "threads": bench_threads}
    best: dict[str, dict[str, tuple[float, float]]] = {}
    with running(tcp=False) as server:
        dsn = server.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
        for _ in range(rounds):
            for name, bench in drivers.items():
                got = trio.run(bench, dsn, args)
                for op, (cpu, wall) in got.items():
                    old = best.setdefault(name, {}).get(op)
                    best[name][op] = (
                        (cpu, wall) if old is None else (min(old[0], cpu), min(old[1], wall))
                    )
    print(f"\n{'per operation':<62} {'client CPU':>10} {'wall':>10}")
    labels = {"read": "point read", "write": "write transaction (3 statements)"}
    for op, label in labels.items():
        for name in drivers:
            cpu, wall = best[name][op]
            who = "pgwire (libpq non-blocking)" if name == "pgwire" else "psycopg sync + to_thread"
            print(f"{label + ', ' + who:<62} {us(cpu)} {us(wall)}")
        ratio_cpu = best["threads"][op][0] / best["pgwire"][op][0]
        ratio_wall = best["threads"][op][1] / best["pgwire"][op][1]
        print(f"{label}: baseline / pgwire = {ratio_cpu:.1f}x CPU, {ratio_wall:.1f}x wall")
    if not args.quick:
        ok = all(
            best["threads"][op][0] / best["pgwire"][op][0] >= TARGET_CPU_RATIO for op in labels
        )
        print(
            f"target: pgwire at least {TARGET_CPU_RATIO:g}x cheaper in client CPU per read and per "
            f"write transaction: {'met' if ok else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
