"""The floor under a durable session write on SQLite, from Python.

    python benches/bench_sqlite_write.py             # 5,000 sessions per row, a few seconds

What a Windows package-1 session must store at the least: read the device's row, rotate its
nonce (one UPDATE), make it durable. Measured straight on ``sqlite3`` as ``SQLiteStore`` opens
its database (WAL, ``synchronous = FULL``), with the commit alone and shared by 4 and 16
sessions (the store's group commit shares one among the calls that arrive while the previous
one commits). CPU per session is process time, so the fsync's wait is not in it; wall time is.
This is what the issue-19 note in RESULTS.md compares the store's own cost with: no gateway,
no Trio, no store layer.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path


def open_database(path: Path, devices: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE devices (id TEXT PRIMARY KEY, facts TEXT NOT NULL)")
    facts = json.dumps({"nonce": "A" * 24, "devinfo": {"Man": "Microsoft", "Lang": "en-US"}})
    db.executemany(
        "INSERT INTO devices VALUES (?, ?)", [(f"dev-{i}", facts) for i in range(devices)]
    )
    return db


def sessions(db: sqlite3.Connection, count: int, per_commit: int, devices: int) -> float:
    """``count`` sessions (a read and an UPDATE each), ``per_commit`` to a transaction;
    returns CPU seconds per session."""
    started = time.process_time()
    for first in range(0, count, per_commit):
        db.execute("BEGIN IMMEDIATE")
        for n in range(first, first + per_commit):
            device = f"dev-{n % devices}"
            db.execute("SELECT facts FROM devices WHERE id = ?", (device,)).fetchone()
            db.execute(
                "UPDATE devices SET facts = json_set(facts, '$.nonce', ?) WHERE id = ?",
                (f"{n:024d}", device),
            )
        db.execute("COMMIT")
    return (time.process_time() - started) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000, help="per row (5,000)")
    parser.add_argument("--devices", type=int, default=16, help="rows written in turn (16)")
    args = parser.parse_args()
    print(
        f"sqlite {sqlite3.sqlite_version}, WAL, synchronous FULL; {args.sessions:,} sessions a row"
    )
    with tempfile.TemporaryDirectory(prefix="mdmgate-sqlite-write-") as tmp:
        db = open_database(Path(tmp) / "floor.db", args.devices)
        for per_commit in (1, 4, 16):
            wall = time.perf_counter()
            cpu = sessions(db, args.sessions, per_commit, args.devices)
            wall = (time.perf_counter() - wall) / args.sessions
            print(
                f"  read + UPDATE, {per_commit:>2} per commit: {cpu * 1e6:6.1f} us CPU,"
                f" {wall * 1e6:6.1f} us wall per session"
            )
        db.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
