"""The embedded default store: one SQLite file in WAL mode.

Durability is ``full`` by default: a transaction is on disk before :meth:`SQLiteStore.enqueue`
returns, so a command the admin API acknowledged survives a power cut. ``normal`` trades the
last transactions before a power cut (not a process crash) for fewer fsyncs.

Writes and long reads block, so they run in a worker thread (``trio.to_thread``) on one
connection: SQLite serialises writers anyway. Calls that arrive while a transaction commits
are grouped into the next one (each in its own savepoint), so a burst of check-ins costs one
thread round trip and one fsync, not one per call.

Concurrent writers: every write runs inside ``BEGIN IMMEDIATE``, which takes the database's
write lock (for every connection and process on the file) before the first read, so a step
that reads then writes (``take``, the licence check of ``fan_out``, the revision checks) sees
the latest committed state and nobody commits in between: several stores on one file, in one
process or several (``--workers N``), keep the contract of :class:`mdmgate.storage.Store`.
``merge_facts`` and ``update_device`` are moreover single ``UPDATE`` statements, computed by
SQLite from the row as it is, not from a copy read earlier.

The change feed (table ``changes``) is written in the same transaction as the change, and so
are the events a call reports (the event log and the roles beside it:
:mod:`.sqlite_events`). Another process's writes are seen by polling ``max(seq)`` on the read
connection (:attr:`SQLiteStore.poll_interval`); this store's own writes wake waiters at once.
The change log is not trimmed yet: it grows by one row per recorded change (a few dozen
bytes). Trimming it must keep the newest row, so that ``max(seq)`` never goes back.

Point reads by primary key (a device by id, a few devices) run on the Trio thread instead, on
a second, read-only connection. A thread round trip costs about 25 times the ~9 µs such a read
takes, and it serialised every device lookup behind the writer (benches/RESULTS.md). The
read is bounded (a B-tree descent over pages the OS has cached), WAL gives it a consistent
snapshot while the writer commits, and it never waits for a lock: its busy timeout is zero,
and when SQLite answers "busy" (a WAL recovery under way) the read is retried on the worker
thread.
"""

from __future__ import annotations

import collections
import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec
import outcome
import trio

from mdmgate.catalogue.model import App, CommandBatch, LicenceGrant, Notification, Org
from mdmgate.storage import (
    Change,
    CommandExists,
    CommandStatus,
    Delivery,
    DeliveryState,
    Device,
    FactsMerge,
    LicencesExhausted,
    MessageContext,
    NewEvent,
    RevisionConflict,
    StoredDeclaration,
    StoredSession,
    StoreError,
    UnknownDevices,
    fan_out_devices,
    offers_exhausted,
)
from mdmgate.storage.event_records import EncodedEvent, checked_events, take_event
from mdmgate.storage.sqlite_enrollment import MIGRATION as ENROLLMENT_MIGRATION
from mdmgate.storage.sqlite_enrollment import SQLiteEnrollment
from mdmgate.storage.sqlite_events import MIGRATION as EVENTS_MIGRATION
from mdmgate.storage.sqlite_events import SQLiteEvents, append

__all__ = ["SQLiteStore"]

T = TypeVar("T")

Durability = Literal["full", "normal"]

# Each entry moves the schema one version up; applied in order inside one transaction.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        org TEXT NOT NULL,
        os_version TEXT,
        supervised INTEGER,
        auth TEXT NOT NULL,
        facts TEXT NOT NULL
    );
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        command_id TEXT NOT NULL REFERENCES commands(id),
        device_id TEXT NOT NULL REFERENCES devices(id),
        state TEXT NOT NULL,
        session TEXT,
        status TEXT,
        result BLOB,
        updated REAL NOT NULL,
        UNIQUE (command_id, device_id)
    );
    CREATE INDEX deliveries_open ON deliveries (device_id, seq)
        WHERE state IN ('queued', 'sent', 'not_now');
    """,
    """
    CREATE TABLE declarations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        identifier TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        server_token TEXT NOT NULL
    );
    CREATE TABLE declaration_targets (
        identifier TEXT NOT NULL REFERENCES declarations(identifier) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('device', 'org')),
        target TEXT NOT NULL,
        PRIMARY KEY (identifier, kind, target)
    );
    CREATE INDEX declaration_targets_by_target ON declaration_targets (kind, target);
    """,
    # The app catalogue: apps, orgs and notifications are JSON documents (msgspec), with the
    # columns their queries need beside them; licences grow with the fleet, so they are rows.
    """
    CREATE TABLE apps (
        id TEXT PRIMARY KEY,
        rev INTEGER NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE TABLE orgs (
        path TEXT PRIMARY KEY,
        doc TEXT NOT NULL
    );
    CREATE TABLE licences (
        app_id TEXT NOT NULL,
        device_id TEXT NOT NULL REFERENCES devices(id),
        PRIMARY KEY (app_id, device_id)
    );
    CREATE TABLE notifications (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        state TEXT NOT NULL,
        due_at REAL NOT NULL,
        created_at REAL NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX notifications_by_app ON notifications (app_id, created_at, id);
    CREATE INDEX notifications_by_created ON notifications (created_at, id);
    CREATE INDEX notifications_due ON notifications (due_at, created_at, id)
        WHERE state IN ('scheduled', 'running');
    """,
    # How many times each delivery was handed out since its last answer (the offer cap).
    """
    ALTER TABLE deliveries ADD COLUMN offers INTEGER NOT NULL DEFAULT 0;
    """,
    # Scale-out: protocol sessions, the change feed, leases, and notification revisions
    # (notifications stored before count as revision 1, in the column and the document).
    """
    CREATE TABLE sessions (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        state BLOB NOT NULL,
        rev INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE INDEX sessions_by_expiry ON sessions (expires_at);
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        key TEXT NOT NULL
    );
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        until REAL NOT NULL
    );
    ALTER TABLE notifications ADD COLUMN rev INTEGER NOT NULL DEFAULT 1;
    UPDATE notifications SET doc = json_set(doc, '$.rev', 1);
    """,
    # Enrollment: the CA's material, tokens, issued certificates, one-time claims.
    ENROLLMENT_MIGRATION,
    # The event log, webhooks, API tokens, and the queue order of commands.
    EVENTS_MIGRATION,
    # A device's deliveries in every state (its delivery list, cancel_open): without it each
    # such read scanned the whole table, minutes for a simulated fleet's ledger check.
    """
    CREATE INDEX deliveries_by_device ON deliveries (device_id, seq);
    CREATE INDEX deliveries_retried ON deliveries (device_id, seq)
        WHERE state IN ('queued', 'sent', 'not_now') AND offers > 0;
    """,
)

#: What take() hands out (the partial index deliveries_open covers these).
_OFFERED = "('queued', 'sent', 'not_now')"
#: Not yet answered for good: also what the device accepted and will report on later.
_OPEN = "('queued', 'sent', 'not_now', 'accepted')"
_FINAL = "('acknowledged', 'error', 'failed')"
#: Notifications still to run (the partial index notifications_due covers these).
_PENDING = "('scheduled', 'running')"


class _Connection(sqlite3.Connection):
    """The writer's connection: knows how deep in savepoints its current step is."""

    #: Savepoints open. A step inside another step's savepoint takes none of its own: an
    #: error in it leaves the outer one too, which rolls both back (nothing here catches an
    #: error between the two), and a savepoint costs two statements.
    savepoints = 0


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A transaction, or a savepoint inside the one already open (a group commit's)."""
    depth = getattr(db, "savepoints", 0)
    if depth:
        yield
        return
    if db.in_transaction:
        db.execute("SAVEPOINT step")
        if isinstance(db, _Connection):
            db.savepoints = 1
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK TO step")
            db.execute("RELEASE step")
            raise
        finally:
            if isinstance(db, _Connection):
                db.savepoints = 0
        db.execute("RELEASE step")
        return
    # The connection is in autocommit mode, so transactions are explicit; IMMEDIATE takes the
    # write lock up front instead of failing halfway through.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class _Job:
    """One call waiting for the writer: its function, and then its outcome."""

    __slots__ = ("atomic", "error", "fn", "point", "result", "task")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], point: bool, atomic: bool = False
    ) -> None:
        self.fn = fn
        #: A point write (a few rows by key): may run on the Trio thread.
        self.point = point
        #: Writes with one statement at most, and raises only before it or when it failed:
        #: SQLite undoes a failed statement by itself, so the step needs no savepoint.
        self.atomic = atomic
        self.result: Any = None
        self.error: BaseException | None = None
        #: The caller, woken once the job's group is committed; None once it stopped waiting.
        self.task: trio.lowlevel.Task | None = trio.lowlevel.current_task()


#: Calls run in one transaction at most; bounds how long one commit holds the write lock.
GROUP_MAX = 256
#: How long the worker thread waits for the write lock another connection holds.
BUSY_TIMEOUT_MS = 5000


def _run_group(db: _Connection, jobs: list[_Job]) -> None:
    """Runs the jobs in one transaction, each in its own savepoint: a job that fails is
    undone alone; one commit (one fsync) makes all the others durable together."""
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        for job in jobs:
            job.error = exc
        return
    finally:
        db.execute("PRAGMA busy_timeout = 0")
    _finish_group(db, jobs, jobs)


def _run_steps(db: _Connection, jobs: list[_Job]) -> None:
    """The jobs' steps inside the open transaction, each in its own savepoint."""
    # _transaction's work, spelled out: this runs for every write of every caller.
    execute = db.execute
    for job in jobs:
        if job.atomic:
            db.savepoints = 1
            try:
                job.result = job.fn(db)
            except BaseException as exc:
                if not isinstance(exc, Exception) or not db.in_transaction:
                    raise  # an error that ended the transaction fails the whole group
                job.error = exc
            finally:
                db.savepoints = 0
            continue
        execute("SAVEPOINT step")
        db.savepoints = 1
        try:
            job.result = job.fn(db)
        except BaseException as exc:
            db.savepoints = 0
            execute("ROLLBACK TO step")
            execute("RELEASE step")
            if not isinstance(exc, Exception):
                raise
            job.error = exc
            continue
        db.savepoints = 0
        execute("RELEASE step")


def _finish_group(db: _Connection, group: list[_Job], rest: list[_Job]) -> None:
    """Runs ``rest`` in the open transaction and commits the whole ``group``."""
    _run_steps(db, rest)
    try:
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        db.execute("ROLLBACK")
        for job in group:
            if job.error is None:
                job.result, job.error = None, exc


class _CommitThread:
    """Runs the blocking part of each group (its commit and fsync, and the steps too long for
    the Trio thread) on a thread of its own, fed by a queue. ``trio.to_thread.run_sync`` cost
    about 50 µs of CPU per call here, twice this hand-off, once per group. The thread ends
    after a while without work and starts again when needed."""

    #: Seconds without work after which the thread ends.
    idle = 10.0

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[tuple[Callable[[], None], Callable[[Any], None]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[], None]) -> None:
        """Runs ``fn`` on the thread; not cancellable (a commit under way must finish)."""
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def done(result: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._work.put((fn, done))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="mdmgate-sqlite-commit", daemon=True
                )
                self._thread.start()
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    def _serve(self) -> None:
        while True:
            try:
                fn, done = self._work.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:
                    # Work put before this check is served; after it, run() starts a thread.
                    if self._work.empty():
                        self._thread = None
                        return
                continue
            done(outcome.capture(fn))


def _begin_here(db: sqlite3.Connection) -> bool:
    """Takes the write lock without waiting: False when another connection holds it (or
    the file is busy otherwise), and the group then waits for it on the worker thread."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return False
        raise
    return True


def _set_wal(db: sqlite3.Connection) -> None:
    # Switching to WAL does not always wait through the busy handler (SQLite answers
    # "locked" at once while another connection holds the file); retry for as long as the
    # busy timeout would have waited.
    deadline = time.monotonic() + 5.0
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _migrate(db: sqlite3.Connection) -> None:
    # The version is read inside the write transaction: two processes opening a new
    # database at once must not both run the migrations.
    with _transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        current = row[0] if row else 0
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema version {current} is newer than this mdmgate ({len(MIGRATIONS)})"
            )
        for script in MIGRATIONS[current:]:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        if row is None:
            db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
        elif current != len(MIGRATIONS):
            db.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))


#: Above this many ids a device read goes to the worker thread: it would hold up every
#: connection on the Trio thread for too long (~3 µs per device).
INLINE_READ_MAX = 64

_DEVICE_COLUMNS = "id, platform, org, os_version, supervised, auth, facts"
_SELECT_DEVICE = f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id = ?"
_SELECT_DEVICES = (
    f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id IN (SELECT value FROM json_each(?))"
)


_UNKNOWN_DEVICES = (
    # NOT IN over the primary key: one index probe per id, whatever the size of the fleet.
    "SELECT value FROM json_each(?) WHERE value NOT IN (SELECT id FROM devices)"
)


def _unknown_devices(db: sqlite3.Connection, ids: str) -> list[str]:
    """The ids in the JSON array ``ids`` that name no device."""
    return [r[0] for r in db.execute(_UNKNOWN_DEVICES, (ids,))]


def _queue(
    db: sqlite3.Connection, command_id: str, kind: str, body: bytes, ids: str, *, now: float
) -> int:
    """Stores the command once and queues it for the devices in the JSON array ``ids`` that
    do not hold it yet: two statements, whatever the number of devices."""
    db.execute(
        "INSERT INTO commands (id, kind, body, created, seq)"
        " SELECT ?, ?, ?, ?, coalesce(max(seq), 0) + 1 FROM commands WHERE true"
        " ON CONFLICT (id) DO NOTHING",
        (command_id, kind, body, now),
    )
    cursor = db.execute(
        "INSERT INTO deliveries (command_id, device_id, state, updated)"
        " SELECT ?, value, 'queued', ? FROM json_each(?) WHERE true"
        " ON CONFLICT (command_id, device_id) DO NOTHING",
        (command_id, now, ids),
    )
    return cursor.rowcount


_APP = msgspec.json.Decoder(App)
_ORG = msgspec.json.Decoder(Org)
_NOTIFICATION = msgspec.json.Decoder(Notification)


def _record(db: sqlite3.Connection, kind: str, key: str) -> None:
    """Adds a change to the feed (in the caller's transaction)."""
    db.execute("INSERT INTO changes (kind, key) VALUES (?, ?)", (kind, key))


def _last_change(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
    return int(row[0])


#: The fields update_device may set, and the types they take.
_DEVICE_FIELDS: dict[str, tuple[type, ...]] = {
    "org": (str,),
    "platform": (str,),
    "os_version": (str, type(None)),
    "supervised": (bool, type(None)),
}

# merge_facts in one statement. SQLite's JSON paths cannot name every key (3.40 matches a
# quoted label byte for byte against the stored, escaped text, and has no escape for '"'),
# so no paths are used: json_patch with {key: null, ...} removes every key the merge names
# (a top-level merge patch compares keys as the encoded text, and every document here is
# encoded by json.dumps the same way), and the new members, encoded here, are appended to
# the object that remains. A merge patch cannot set them: it would merge nested objects
# into the old ones and drop the nulls inside them.
_MERGE_FACTS = (
    "UPDATE devices SET facts = ("
    " SELECT CASE WHEN ?2 = '' THEN r WHEN r = '{}' THEN '{' || ?2 || '}'"
    " ELSE substr(r, 1, length(r) - 1) || ',' || ?2 || '}' END"
    " FROM (SELECT json_patch(devices.facts, ?1) AS r)"
    ") WHERE id = ?3"
)


def _facts_merge(facts: Mapping[str, Any]) -> tuple[str, str]:
    """``_MERGE_FACTS``' first two parameters. Encoded before the write lock is taken, and
    refused here if they cannot be (NaN and infinities are not JSON: SQLite would refuse the
    document at the next merge)."""
    removed = json.dumps(dict.fromkeys(facts))
    kept = {k: v for k, v in facts.items() if v is not None}
    return removed, _STRICT_JSON.encode(kept)[1:-1]


#: json.dumps(allow_nan=False) without building an encoder per call (every device message
#: merges facts); the same text as json.dumps otherwise.
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


def _load_session(db: sqlite3.Connection, kind: str, key: str) -> StoredSession | None:
    row = db.execute(
        "SELECT state, rev, expires_at FROM sessions WHERE kind = ? AND key = ? AND expires_at > ?",
        (kind, key, time.time()),
    ).fetchone()
    return None if row is None else StoredSession(bytes(row[0]), row[1], row[2])


def _put_notification(
    db: sqlite3.Connection, notification: Notification, expected_rev: int | None
) -> Notification:
    """Compare-and-set of a notification, in the caller's transaction."""
    n = msgspec.structs.replace(notification, rev=1 if expected_rev is None else expected_rev + 1)
    doc = _document(n)
    if expected_rev is None:
        cursor = db.execute(
            "INSERT INTO notifications (id, app_id, state, due_at, created_at, doc, rev)"
            " VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT (id) DO NOTHING",
            (n.id, n.app_id, n.state, n.due_at, n.created_at, doc),
        )
    else:
        cursor = db.execute(
            "UPDATE notifications SET app_id = ?, state = ?, due_at = ?, created_at = ?,"
            " doc = ?, rev = ? WHERE id = ? AND rev = ?",
            (n.app_id, n.state, n.due_at, n.created_at, doc, n.rev, n.id, expected_rev),
        )
    if cursor.rowcount == 0:
        row = db.execute("SELECT rev FROM notifications WHERE id = ?", (n.id,)).fetchone()
        raise RevisionConflict(
            f"notification {n.id!r}", expected_rev, None if row is None else row[0]
        )
    return n


def _document(value: msgspec.Struct) -> str:
    return msgspec.json.encode(value).decode()


def _device(row: tuple[Any, ...]) -> Device:
    supervised = None if row[4] is None else bool(row[4])
    return Device(row[0], row[1], row[2], row[3], supervised, _loads(row[5]), _loads(row[6]))


_DECODER = msgspec.json.Decoder()


def _loads(document: str) -> Any:
    # msgspec reads a device's documents in a fraction of json's time (every device message
    # reads one); what it refuses (say, a lone surrogate) json still reads.
    try:
        return _DECODER.decode(document)
    except msgspec.DecodeError:
        return json.loads(document)


def _read_declarations(
    db: sqlite3.Connection, where: str, params: tuple[Any, ...]
) -> list[StoredDeclaration]:
    rows = db.execute(
        "SELECT d.seq, d.identifier, d.type, d.payload, d.server_token,"
        " (SELECT json_group_array(json_array(kind, target)) FROM declaration_targets t"
        "  WHERE t.identifier = d.identifier)"
        f" FROM declarations d WHERE {where} ORDER BY d.seq",
        params,
    ).fetchall()
    found = []
    for seq, identifier, kind, payload, token, targets in rows:
        pairs = json.loads(targets)
        found.append(
            StoredDeclaration(
                identifier,
                kind,
                json.loads(payload),
                token,
                tuple(t for k, t in pairs if k == "device"),
                tuple(t for k, t in pairs if k == "org"),
                seq,
            )
        )
    return found


#: What _delivery() reads: deliveries as x, joined to their commands as c.
_DELIVERY_COLUMNS = "c.kind, c.body, x.state, x.session, x.result, x.status, x.offers"
#: message_context's read in one statement (in autocommit, each statement is a read
#: transaction of its own, about as costly here as a point read): the device's columns, its
#: live session's, whether anything is offered, and the delivery of command ?5 (NULL: none).
_MESSAGE_CONTEXT = (
    "SELECT " + ", ".join(f"d.{c}" for c in _DEVICE_COLUMNS.split(", ")) + ","
    " s.state, s.rev, s.expires_at,"
    f" (SELECT 1 FROM deliveries WHERE device_id = ?1 AND state IN {_OFFERED} LIMIT 1),"
    f" {_DELIVERY_COLUMNS}"
    " FROM (SELECT 1) LEFT JOIN devices d ON d.id = ?1"
    " LEFT JOIN sessions s ON s.kind = ?2 AND s.key = ?3 AND s.expires_at > ?4"
    " LEFT JOIN (deliveries x JOIN commands c ON c.id = x.command_id)"
    " ON x.command_id = ?5 AND x.device_id = ?1"
)
_HAS_OFFER = (
    f"SELECT 1 FROM deliveries WHERE device_id = ? AND state IN {_OFFERED}"
    " AND NOT (state IN ('sent', 'not_now') AND session IS ?) LIMIT 1"
)


class _Answer(NamedTuple):
    """A device's answer to one delivery, to record (``record_result``)."""

    device_id: str
    command_id: str
    state: DeliveryState
    status: str | None
    result: bytes | None
    events: list[EncodedEvent]

    def record(self, db: sqlite3.Connection, *, report: bool = True) -> bool:
        """Stores the answer; with ``report``, appends its events too (else the caller
        does, with its own: one INSERT for all)."""
        with _transaction(db):
            # NotNow is an answer: the offer count starts again.
            state = self.state.value
            cursor = db.execute(
                "UPDATE deliveries SET state = ?, status = ?, result = ?, updated = ?,"
                " offers = CASE WHEN ? = 'not_now' THEN 0 ELSE offers END"
                f" WHERE command_id = ? AND device_id = ? AND state NOT IN {_FINAL}",
                (
                    state,
                    self.status,
                    self.result,
                    time.time(),
                    state,
                    self.command_id,
                    self.device_id,
                ),
            )
            if report and cursor.rowcount > 0:
                append(db, self.events)
        return cursor.rowcount > 0


def _take(
    db: sqlite3.Connection,
    device_id: str,
    session: str,
    limit: int,
    *,
    max_offers: int | None,
    delivered_event: bool,
    reported_first: Sequence[EncodedEvent] = (),
) -> list[Delivery]:
    """Hands out the device's next deliveries for ``session`` (:meth:`Store.take`);
    ``reported_first``: events to append before its own, in the same INSERT."""
    now = time.time()
    reported: list[EncodedEvent] = list(reported_first)
    with _transaction(db):
        if max_offers is not None:
            # Given up: offered max_offers times and never answered.
            for seq, offers, command_id in db.execute(
                # offers > 0 (implied by offers >= max_offers) lets SQLite use
                # deliveries_retried: a deep queue of fresh commands is not walked.
                f"SELECT seq, offers, command_id FROM deliveries WHERE device_id = ?"
                f" AND state IN {_OFFERED} AND offers > 0 AND offers >= ?"
                " AND NOT (state IN ('sent', 'not_now') AND session IS ?)"
                " ORDER BY seq",
                (device_id, max_offers, session),
            ).fetchall():
                db.execute(
                    "UPDATE deliveries SET state = 'failed', status = ?, updated = ? WHERE seq = ?",
                    (offers_exhausted(offers), now, seq),
                )
                if delivered_event:
                    status = {"status": offers_exhausted(offers)}
                    failed = take_event("command.failed", device_id, command_id, status)
                    reported.append(failed)
        rows = db.execute(
            "SELECT d.seq, d.command_id, c.kind, c.body, d.offers FROM deliveries d"
            " JOIN commands c ON c.id = d.command_id"
            f" WHERE d.device_id = ? AND d.state IN {_OFFERED}"
            # Neither what this session was already given nor what the device
            # deferred (NotNow) in it: offering that again would spin.
            " AND NOT (d.state IN ('sent', 'not_now') AND d.session IS ?)"
            " ORDER BY d.seq LIMIT ?",
            (device_id, session, limit),
        ).fetchall()
        if max_offers is not None:
            # A retry (handed out before, never answered) goes out alone.
            retry = next((i for i, r in enumerate(rows) if r[4] > 0), None)
            if retry is not None:
                rows = rows[:retry] if retry > 0 else rows[:1]
        db.executemany(
            "UPDATE deliveries SET state = 'sent', session = ?, updated = ?,"
            " offers = offers + 1 WHERE seq = ?",
            [(session, now, r[0]) for r in rows],
        )
        if delivered_event:
            reported += [
                take_event(
                    "command.delivered",
                    device_id,
                    r[1],
                    {"session": session, "offers": r[4] + 1},
                )
                for r in rows
            ]
        append(db, reported)
    return [
        Delivery(r[1], device_id, r[2], bytes(r[3]), DeliveryState.SENT, session, offers=r[4] + 1)
        for r in rows
    ]


_SELECT_DELIVERY = (
    f"SELECT {_DELIVERY_COLUMNS} FROM deliveries x"
    " JOIN commands c ON c.id = x.command_id WHERE x.command_id = ? AND x.device_id = ?"
)


def _read_delivery(db: sqlite3.Connection, device_id: str, command_id: str) -> Delivery | None:
    r = db.execute(_SELECT_DELIVERY, (command_id, device_id)).fetchone()
    return None if r is None else _delivery(device_id, command_id, r)


def _delivery(device_id: str, command_id: str, r: Sequence[Any]) -> Delivery:
    """A delivery from ``_DELIVERY_COLUMNS``."""
    state, session, result = DeliveryState(r[2]), r[3], r[4]
    result = None if result is None else bytes(result)
    return Delivery(command_id, device_id, r[0], bytes(r[1]), state, session, result, r[5], r[6])


def _has_offer(db: sqlite3.Connection, device_id: str, session: str) -> bool:
    return db.execute(_HAS_OFFER, (device_id, session)).fetchone() is not None


def _read_devices(db: sqlite3.Connection, ids: list[str]) -> dict[str, Device]:
    found: dict[str, Device] = {}
    if len(ids) == 1:
        row = db.execute(_SELECT_DEVICE, ids).fetchone()
        if row is not None:
            found[row[0]] = _device(row)
        return found
    for row in db.execute(_SELECT_DEVICES, (json.dumps(ids),)):
        found[row[0]] = _device(row)
    return found


class SQLiteStore(SQLiteEvents, SQLiteEnrollment):
    """The :class:`~mdmgate.storage.Store` on SQLite; made by :meth:`open`. The enrollment
    role is a mixin (:mod:`.sqlite_enrollment`), and so are the event log, webhooks, API
    tokens and command listing (:mod:`.sqlite_events`)."""

    #: How often :meth:`wait_for_changes` looks for changes written by other processes.
    poll_interval = 0.05

    def __init__(self, db: _Connection, reader: sqlite3.Connection) -> None:
        self._db = db
        self._reader = reader
        #: Set (and replaced) after each group of this store's writes commits: wakes
        #: wait_for_changes without waiting for the next poll.
        self._committed = trio.Event()
        #: Calls waiting for the writer, and the writer when it waits for them.
        self._queue: collections.deque[_Job] = collections.deque()
        self._idle_writer: trio.lowlevel.Task | None = None
        self._closing = False
        self._committer = _CommitThread()
        self._writer_done = trio.Event()
        trio.lowlevel.spawn_system_task(self._writer, name="mdmgate-sqlite-writer")

    @classmethod
    async def open(cls, path: str | Path, *, durability: Durability = "full") -> SQLiteStore:
        def connect() -> _Connection:
            db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, factory=_Connection
            )
            # The busy timeout first: several processes opening a new file at once contend
            # for the lock that switching it to WAL takes.
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _set_wal(db)
            db.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
            db.execute("PRAGMA foreign_keys = ON")
            _migrate(db)
            # From here the lock is waited for only on the worker thread (_run_group): the
            # Trio thread takes it only when it is free (_begin_here).
            db.execute("PRAGMA busy_timeout = 0")
            return db

        def connect_reader() -> sqlite3.Connection:
            # Used on the Trio thread, so it must never wait: no busy timeout.
            reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            reader.execute("PRAGMA busy_timeout = 0")
            reader.execute("PRAGMA query_only = ON")
            return reader

        db = await trio.to_thread.run_sync(connect)
        return cls(db, await trio.to_thread.run_sync(connect_reader))

    async def _read_inline(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on the read connection, here; on the worker thread if SQLite is busy."""
        try:
            return fn(self._reader)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
        return await self._run(fn)

    async def _run(
        self, fn: Callable[[sqlite3.Connection], T], *, point: bool = False, atomic: bool = False
    ) -> T:
        """``fn`` on the writer connection, grouped with the calls that arrive while the
        previous group commits (group commit: one thread round trip and one fsync for all of
        them). Returns once ``fn``'s transaction is committed. ``point``: ``fn`` touches a
        few rows by key, so it may run on the Trio thread (see :meth:`_writer`); ``atomic``:
        as :attr:`_Job.atomic`."""
        if self._closing:
            raise StoreError("the SQLite store is closed")
        job = _Job(fn, point, atomic)
        self._queue.append(job)
        self._wake_writer()

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Cancelled: the job runs all the same (it may be in a commit already).
            job.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    def _wake_writer(self) -> None:
        writer, self._idle_writer = self._idle_writer, None
        if writer is not None:
            trio.lowlevel.reschedule(writer)

    async def _writer(self) -> None:
        # The callers wait on the writer directly (no channel, no event per call): this
        # hand-off runs for every write.
        queue = self._queue
        try:
            while True:
                if not queue:
                    if self._closing:
                        return
                    self._idle_writer = trio.lowlevel.current_task()

                    def abort(_: Any) -> trio.lowlevel.Abort:
                        self._idle_writer = None
                        return trio.lowlevel.Abort.SUCCEEDED

                    await trio.lowlevel.wait_task_rescheduled(abort)
                    continue
                jobs = [queue.popleft() for _ in range(min(len(queue), GROUP_MAX))]
                try:
                    await self._commit_group(jobs)
                except Exception as exc:  # a broken connection: fail the calls, not the run
                    for failed in jobs:
                        failed.error = failed.error or exc
                for done in jobs:
                    if done.task is not None:
                        trio.lowlevel.reschedule(done.task)
                self._committed.set()
                self._committed = trio.Event()
                # The callers just woken run before the next group forms: it gets their
                # next writes too.
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._writer_done.set()

    async def _commit_group(self, jobs: list[_Job]) -> None:
        """One group's transaction. Point writes run here, on the Trio thread: a step takes
        microseconds once the write lock is held, whereas running it on the worker thread
        made both threads take turns on the GIL for every statement (a third of a check-in's
        CPU under load). Only the commit (the fsync) and longer steps go to the thread.
        The lock is taken here without waiting; when another process holds it, the whole
        group waits for it on the thread, as the busy timeout says."""
        point = [job for job in jobs if job.point]
        db = self._db
        if point and _begin_here(db):
            _run_steps(db, point)
            rest = [job for job in jobs if not job.point]
            await self._committer.run(lambda: _finish_group(db, jobs, rest))
        else:
            await self._committer.run(lambda: _run_group(db, jobs))

    async def upsert_devices(
        self, devices: Sequence[Device], *, events: Sequence[NewEvent] = ()
    ) -> int:
        appended = checked_events(events)
        rows = [
            (
                d.id,
                d.platform,
                d.org,
                d.os_version,
                None if d.supervised is None else int(d.supervised),
                json.dumps(d.auth),
                json.dumps(d.facts),
            )
            for d in devices
        ]

        def write(db: sqlite3.Connection) -> int:
            with _transaction(db):
                db.executemany(
                    "INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
                    " SET platform = excluded.platform, org = excluded.org,"
                    " os_version = excluded.os_version, supervised = excluded.supervised,"
                    " auth = excluded.auth, facts = excluded.facts",
                    rows,
                )
                db.executemany(
                    "INSERT INTO changes (kind, key) VALUES ('device', ?)",
                    [(r[0],) for r in rows],
                )
                append(db, appended)
            return len(rows)

        return await self._run(write)

    async def get_device(self, device_id: str) -> Device | None:
        found = await self._read_inline(lambda db: _read_devices(db, [device_id]))
        return found.get(device_id)

    async def get_devices(self, device_ids: Sequence[str]) -> dict[str, Device]:
        ids = list(dict.fromkeys(device_ids))
        if not ids:
            return {}
        if len(ids) > INLINE_READ_MAX:
            return await self._run(lambda db: _read_devices(db, ids))
        return await self._read_inline(lambda db: _read_devices(db, ids))

    async def enqueue(
        self,
        command_id: str,
        kind: str,
        body: bytes,
        device_ids: Sequence[str],
        *,
        new: bool = False,
        events: Sequence[NewEvent] = (),
    ) -> int:
        appended = checked_events(events)
        ids = json.dumps(list(dict.fromkeys(device_ids)))

        def write(db: sqlite3.Connection) -> int:
            now = time.time()
            with _transaction(db):
                # One set-based statement per step, whatever the number of devices.
                unknown = _unknown_devices(db, ids)
                if unknown:
                    raise UnknownDevices(unknown)
                if (
                    new
                    and db.execute("SELECT 1 FROM commands WHERE id = ?", (command_id,)).fetchone()
                ):
                    raise CommandExists(command_id)
                queued = _queue(db, command_id, kind, body, ids, now=now)
                append(db, appended)
                return queued

        return await self._run(write)

    async def take(
        self,
        device_id: str,
        session: str,
        limit: int,
        *,
        max_offers: int | None = None,
        delivered_event: bool = False,
    ) -> list[Delivery]:
        # Most check-ins find nothing to hand out: say so from the read connection, without
        # a write transaction. A command queued a moment later waits for the next session,
        # as it would have had it come a moment later still.
        if not await self._read_inline(lambda db: _has_offer(db, device_id, session)):
            return []

        def write(db: sqlite3.Connection) -> list[Delivery]:
            return _take(
                db,
                device_id,
                session,
                limit,
                max_offers=max_offers,
                delivered_event=delivered_event,
            )

        return await self._run(write, point=limit <= INLINE_READ_MAX)

    async def record_result(
        self,
        device_id: str,
        command_id: str,
        state: DeliveryState,
        status: str | None,
        result: bytes | None,
        *,
        events: Sequence[NewEvent] = (),
    ) -> bool:
        answer = _Answer(device_id, command_id, state, status, result, checked_events(events))
        return await self._run(answer.record, point=True)

    async def record_and_take(
        self,
        device_id: str,
        command_id: str,
        state: DeliveryState,
        status: str | None,
        result: bytes | None,
        *,
        events: Sequence[NewEvent] = (),
        session: str,
        limit: int,
        max_offers: int | None = None,
        delivered_event: bool = False,
    ) -> tuple[bool, list[Delivery]]:
        answer = _Answer(device_id, command_id, state, status, result, checked_events(events))

        # No probe first (take's has one): a device that answers has usually more queued,
        # and the probe cost every answer what it saved the last.
        def write(db: sqlite3.Connection) -> tuple[bool, list[Delivery]]:
            with _transaction(db):
                recorded = answer.record(db, report=False)
                return recorded, _take(
                    db,
                    device_id,
                    session,
                    limit,
                    max_offers=max_offers,
                    delivered_event=delivered_event,
                    reported_first=answer.events if recorded else (),
                )

        return await self._run(write, point=limit <= INLINE_READ_MAX)

    async def command_status(self, command_id: str) -> CommandStatus | None:
        def read(db: sqlite3.Connection) -> CommandStatus | None:
            command = db.execute(
                "SELECT kind, body FROM commands WHERE id = ?", (command_id,)
            ).fetchone()
            if command is None:
                return None
            kind, body = command[0], bytes(command[1])
            rows = db.execute(
                "SELECT device_id, state, session, status, result, offers FROM deliveries"
                " WHERE command_id = ? ORDER BY seq",
                (command_id,),
            ).fetchall()
            deliveries = tuple(
                Delivery(
                    command_id,
                    r[0],
                    kind,
                    body,
                    DeliveryState(r[1]),
                    r[2],
                    None if r[4] is None else bytes(r[4]),
                    r[3],
                    r[5],
                )
                for r in rows
            )
            return CommandStatus(command_id, kind, deliveries)

        return await self._run(read)

    async def deliveries(self, device_id: str, states: Collection[DeliveryState]) -> list[Delivery]:
        wanted = json.dumps(sorted(DeliveryState(s).value for s in states))

        def read(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                "SELECT d.command_id, c.kind, c.body, d.state, d.session, d.result, d.status,"
                " d.offers FROM deliveries d JOIN commands c ON c.id = d.command_id"
                " WHERE d.device_id = ? AND d.state IN (SELECT value FROM json_each(?))"
                " ORDER BY d.seq",
                (device_id, wanted),
            ).fetchall()
            return [
                Delivery(
                    r[0],
                    device_id,
                    r[1],
                    bytes(r[2]),
                    DeliveryState(r[3]),
                    r[4],
                    None if r[5] is None else bytes(r[5]),
                    r[6],
                    r[7],
                )
                for r in rows
            ]

        return await self._run(read)

    async def get_delivery(self, device_id: str, command_id: str) -> Delivery | None:
        return await self._read_inline(lambda db: _read_delivery(db, device_id, command_id))

    async def set_auth(
        self, device_id: str, auth: Mapping[str, Any], *, events: Sequence[NewEvent] = ()
    ) -> bool:
        appended = checked_events(events)
        encoded = json.dumps(dict(auth))

        def write(db: sqlite3.Connection) -> bool:
            cursor = db.execute("UPDATE devices SET auth = ? WHERE id = ?", (encoded, device_id))
            if cursor.rowcount > 0:
                append(db, appended)
            return cursor.rowcount > 0

        return await self._run(write)

    async def cancel_open(
        self, device_id: str, status: str, *, events: Sequence[NewEvent] = ()
    ) -> int:
        appended = checked_events(events)

        def write(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE deliveries SET state = 'error', status = ?, updated = ?"
                f" WHERE device_id = ? AND state IN {_OPEN}",
                (status, time.time(), device_id),
            )
            append(db, appended)
            return cursor.rowcount

        return await self._run(write)

    async def put_declaration(self, declaration: StoredDeclaration) -> None:
        payload = json.dumps(declaration.payload)
        targets = [("device", d) for d in dict.fromkeys(declaration.devices)]
        targets += [("org", o) for o in dict.fromkeys(declaration.orgs)]

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                # An update keeps its place (seq) in the assignment order.
                db.execute(
                    "INSERT INTO declarations (identifier, type, payload, server_token)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (identifier) DO UPDATE SET"
                    " type = excluded.type, payload = excluded.payload,"
                    " server_token = excluded.server_token",
                    (declaration.identifier, declaration.type, payload, declaration.server_token),
                )
                db.execute(
                    "DELETE FROM declaration_targets WHERE identifier = ?",
                    (declaration.identifier,),
                )
                db.executemany(
                    "INSERT INTO declaration_targets VALUES (?, ?, ?)",
                    [(declaration.identifier, kind, target) for kind, target in targets],
                )

        await self._run(write)

    async def get_declaration(self, identifier: str) -> StoredDeclaration | None:
        def read(db: sqlite3.Connection) -> StoredDeclaration | None:
            found = _read_declarations(db, "d.identifier = ?", (identifier,))
            return found[0] if found else None

        return await self._read_inline(read)

    async def declarations_for(self, device_id: str, org: str) -> list[StoredDeclaration]:
        # The org paths at or above the device's: "/", "/acme", "/acme/sales", ...
        parts = [p for p in org.split("/") if p]
        orgs = ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]

        def read(db: sqlite3.Connection) -> list[StoredDeclaration]:
            return _read_declarations(
                db,
                "d.identifier IN (SELECT identifier FROM declaration_targets"
                " WHERE (kind = 'device' AND target = ?)"
                " OR (kind = 'org' AND target IN (SELECT value FROM json_each(?))))",
                (device_id, json.dumps(orgs)),
            )

        return await self._read_inline(read)

    async def merge_facts(
        self,
        device_id: str,
        facts: Mapping[str, Any],
        *,
        feed: bool = True,
        events: Sequence[NewEvent] = (),
    ) -> bool:
        appended = checked_events(events)
        removed, members = _facts_merge(facts)

        def write(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                if db.execute(_MERGE_FACTS, (removed, members, device_id)).rowcount == 0:
                    return False
                if feed:
                    _record(db, "device", device_id)
                append(db, appended)
            return True

        return await self._run(write, point=True, atomic=not feed and not appended)

    async def update_device(
        self, device_id: str, fields: Mapping[str, Any], *, events: Sequence[NewEvent] = ()
    ) -> bool:
        wrong = sorted(set(fields) - set(_DEVICE_FIELDS))
        if wrong:
            raise ValueError(f"not a device field that can be updated: {', '.join(wrong)}")
        for name, value in fields.items():
            if not isinstance(value, _DEVICE_FIELDS[name]):
                raise ValueError(f"device field {name}: {value!r} is not of the right type")
        appended = checked_events(events)
        # The names are checked above: nothing the caller wrote reaches the SQL text.
        assignments = ", ".join(f"{name} = ?" for name in fields) or "id = id"
        params = (*fields.values(), device_id)  # a bool is stored as 0/1

        def write(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                # Only the named columns: auth and facts stay as they are at this moment.
                cursor = db.execute(f"UPDATE devices SET {assignments} WHERE id = ?", params)
                if cursor.rowcount == 0:
                    return False
                _record(db, "device", device_id)
                append(db, appended)
            return True

        return await self._run(write, point=True)

    async def list_devices(self, after: str | None, limit: int) -> list[Device]:
        if limit <= 0:
            return []

        def read(db: sqlite3.Connection) -> list[Device]:
            # TEXT compares with BINARY collation: byte order of UTF-8, i.e. code-point order.
            if after is None:
                query = f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY id LIMIT ?"
                return [_device(r) for r in db.execute(query, (limit,))]
            query = f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id > ? ORDER BY id LIMIT ?"
            return [_device(r) for r in db.execute(query, (after, limit))]

        if limit > INLINE_READ_MAX:
            return await self._run(read)
        return await self._read_inline(read)

    async def fan_out(
        self,
        batches: Sequence[CommandBatch],
        *,
        licences: LicenceGrant | None = None,
        notification: Notification | None = None,
        expected_rev: int | None = None,
        events: Sequence[NewEvent] = (),
    ) -> int:
        # Everything is encoded before the write lock is taken: one JSON array of ids per
        # batch, and one of every id named, for the single unknown-device check.
        appended = checked_events(events)
        steps = [
            (b.command_id, b.kind, b.body, json.dumps(list(dict.fromkeys(b.device_ids))))
            for b in batches
        ]
        named = fan_out_devices(batches, licences)
        grant: tuple[str, int, str] | None = None
        if licences is not None:
            grant = (
                licences.app_id,
                licences.total,
                json.dumps(list(dict.fromkeys(licences.device_ids))),
            )
        single = len(steps) == 1 and grant is None
        everyone = steps[0][3] if single else json.dumps(list(named))

        def write(db: sqlite3.Connection) -> int:
            now = time.time()
            with _transaction(db):
                unknown = _unknown_devices(db, everyone)
                if unknown:
                    raise UnknownDevices(unknown)
                if grant is not None:
                    # Inside the write transaction (BEGIN IMMEDIATE holds the database's
                    # write lock): no other connection or process grants in between.
                    app_id, total, ids = grant
                    added = db.execute(
                        "INSERT INTO licences (app_id, device_id)"
                        " SELECT ?, value FROM json_each(?) WHERE true"
                        " ON CONFLICT (app_id, device_id) DO NOTHING",
                        (app_id, ids),
                    ).rowcount
                    if added:
                        held = db.execute(
                            "SELECT count(*) FROM licences WHERE app_id = ?", (app_id,)
                        ).fetchone()[0]
                        if held > total:
                            raise LicencesExhausted(app_id, total, held)  # rolls back
                        _record(db, "licence", app_id)
                if notification is not None:
                    _put_notification(db, notification, expected_rev)  # a conflict rolls back
                append(db, appended)
                return sum(_queue(db, *step, now=now) for step in steps)

        return await self._run(write)

    async def licence_holders(self, app_id: str) -> list[str]:
        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT device_id FROM licences WHERE app_id = ? ORDER BY device_id", (app_id,)
            )
            return [r[0] for r in rows]

        return await self._run(read)

    async def release_licences(self, app_id: str, device_ids: Sequence[str]) -> int:
        ids = json.dumps(list(dict.fromkeys(device_ids)))

        def write(db: sqlite3.Connection) -> int:
            with _transaction(db):
                released = db.execute(
                    "DELETE FROM licences WHERE app_id = ?"
                    " AND device_id IN (SELECT value FROM json_each(?))",
                    (app_id, ids),
                ).rowcount
                if released:
                    _record(db, "licence", app_id)
            return released

        return await self._run(write)

    async def put_app(self, app: App, *, expected_rev: int | None) -> App:
        stored = msgspec.structs.replace(app, rev=1 if expected_rev is None else expected_rev + 1)
        doc = _document(stored)

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                # Compare-and-set: the write itself checks the revision it replaces.
                if expected_rev is None:
                    cursor = db.execute(
                        "INSERT INTO apps VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
                        (app.id, stored.rev, doc),
                    )
                else:
                    cursor = db.execute(
                        "UPDATE apps SET rev = ?, doc = ? WHERE id = ? AND rev = ?",
                        (stored.rev, doc, app.id, expected_rev),
                    )
                if cursor.rowcount == 0:
                    row = db.execute("SELECT rev FROM apps WHERE id = ?", (app.id,)).fetchone()
                    raise RevisionConflict(
                        f"app {app.id!r}", expected_rev, None if row is None else row[0]
                    )
                _record(db, "app", app.id)

        await self._run(write)
        return stored

    async def get_app(self, app_id: str) -> App | None:
        def read(db: sqlite3.Connection) -> App | None:
            row = db.execute("SELECT doc FROM apps WHERE id = ?", (app_id,)).fetchone()
            return None if row is None else _APP.decode(row[0])

        return await self._read_inline(read)

    async def list_apps(self) -> list[App]:
        def read(db: sqlite3.Connection) -> list[App]:
            return [_APP.decode(r[0]) for r in db.execute("SELECT doc FROM apps ORDER BY id")]

        return await self._run(read)

    async def put_org(self, org: Org) -> None:
        doc = _document(org)

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT INTO orgs VALUES (?, ?) ON CONFLICT (path) DO UPDATE"
                    " SET doc = excluded.doc",
                    (org.path, doc),
                )
                _record(db, "org", org.path)

        await self._run(write)

    async def list_orgs(self) -> list[Org]:
        def read(db: sqlite3.Connection) -> list[Org]:
            return [_ORG.decode(r[0]) for r in db.execute("SELECT doc FROM orgs ORDER BY path")]

        return await self._run(read)

    async def put_notification(
        self,
        notification: Notification,
        *,
        expected_rev: int | None = None,
        events: Sequence[NewEvent] = (),
    ) -> Notification:
        appended = checked_events(events)

        def write(db: sqlite3.Connection) -> Notification:
            with _transaction(db):
                stored = _put_notification(db, notification, expected_rev)
                append(db, appended)
                return stored

        return await self._run(write)

    async def get_notification(self, notification_id: str) -> Notification | None:
        def read(db: sqlite3.Connection) -> Notification | None:
            row = db.execute(
                "SELECT doc FROM notifications WHERE id = ?", (notification_id,)
            ).fetchone()
            return None if row is None else _NOTIFICATION.decode(row[0])

        return await self._read_inline(read)

    async def list_notifications(self, app_id: str | None = None) -> list[Notification]:
        def read(db: sqlite3.Connection) -> list[Notification]:
            if app_id is None:
                rows = db.execute("SELECT doc FROM notifications ORDER BY created_at, id")
            else:
                rows = db.execute(
                    "SELECT doc FROM notifications WHERE app_id = ? ORDER BY created_at, id",
                    (app_id,),
                )
            return [_NOTIFICATION.decode(r[0]) for r in rows]

        return await self._run(read)

    async def due_notifications(self, now: float) -> list[Notification]:
        def read(db: sqlite3.Connection) -> list[Notification]:
            rows = db.execute(
                f"SELECT doc FROM notifications WHERE state IN {_PENDING} AND due_at <= ?"
                " ORDER BY due_at, created_at, id",
                (now,),
            )
            return [_NOTIFICATION.decode(r[0]) for r in rows]

        return await self._run(read)

    async def next_due(self) -> float | None:
        def read(db: sqlite3.Connection) -> float | None:
            # One step down the partial index notifications_due.
            row = db.execute(
                f"SELECT due_at FROM notifications WHERE state IN {_PENDING}"
                " ORDER BY due_at LIMIT 1"
            ).fetchone()
            return None if row is None else float(row[0])

        return await self._read_inline(read)

    async def queue_depth(self) -> int:
        def read(db: sqlite3.Connection) -> int:
            row = db.execute(f"SELECT count(*) FROM deliveries WHERE state IN {_OPEN}").fetchone()
            return int(row[0])

        return await self._run(read)

    # -- sessions --------------------------------------------------------------------------

    async def load_session(self, kind: str, key: str) -> StoredSession | None:
        return await self._read_inline(lambda db: _load_session(db, kind, key))

    async def device_and_session(
        self, device_id: str, kind: str, key: str
    ) -> tuple[Device | None, StoredSession | None]:
        def read(db: sqlite3.Connection) -> tuple[Device | None, StoredSession | None]:
            row = db.execute(_SELECT_DEVICE, (device_id,)).fetchone()
            return None if row is None else _device(row), _load_session(db, kind, key)

        return await self._read_inline(read)

    async def message_context(
        self, device_id: str, kind: str, key: str, *, command_id: str | None = None
    ) -> MessageContext:
        def read(db: sqlite3.Connection) -> MessageContext:
            params = (device_id, kind, key, time.time(), command_id)
            row = db.execute(_MESSAGE_CONTEXT, params).fetchone()
            device = None if row[0] is None else _device(row)
            session = None if row[7] is None else StoredSession(bytes(row[7]), row[8], row[9])
            delivery = None
            if command_id is not None and row[11] is not None:
                delivery = _delivery(device_id, command_id, row[11:])
            return MessageContext(device, session, row[10] is not None, delivery)

        return await self._read_inline(read)

    async def save_session(
        self,
        kind: str,
        key: str,
        state: bytes,
        *,
        expected_rev: int | None,
        expires_at: float,
        facts: FactsMerge | None = None,
    ) -> int:
        state = bytes(state)
        merge = None if facts is None else _facts_merge(facts.facts)

        def write(db: sqlite3.Connection) -> int:
            with _transaction(db):
                if merge is not None:
                    assert facts is not None
                    # First: a conflict below rolls it back with the rest of the step.
                    db.execute(_MERGE_FACTS, (*merge, facts.device_id))
                if expected_rev is None:
                    # A new exchange replaces whatever was saved under the key.
                    db.execute(
                        "INSERT INTO sessions VALUES (?, ?, ?, 1, ?) ON CONFLICT (kind, key)"
                        " DO UPDATE SET state = excluded.state, rev = 1,"
                        " expires_at = excluded.expires_at",
                        (kind, key, state, expires_at),
                    )
                    return 1
                now = time.time()
                cursor = db.execute(
                    "UPDATE sessions SET state = ?, rev = ?, expires_at = ?"
                    " WHERE kind = ? AND key = ? AND rev = ? AND expires_at > ?",
                    (state, expected_rev + 1, expires_at, kind, key, expected_rev, now),
                )
                if cursor.rowcount == 0:
                    row = db.execute(
                        "SELECT rev FROM sessions WHERE kind = ? AND key = ? AND expires_at > ?",
                        (kind, key, now),
                    ).fetchone()
                    raise RevisionConflict(
                        f"{kind} session {key!r}", expected_rev, None if row is None else row[0]
                    )
                return expected_rev + 1

        return await self._run(write, point=True, atomic=merge is None)

    async def drop_session(self, kind: str, key: str, *, expected_rev: int | None = None) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                cursor = db.execute(
                    "DELETE FROM sessions WHERE kind = ? AND key = ? AND expires_at > ?"
                    " AND (?4 IS NULL OR rev = ?4)",
                    (kind, key, time.time(), expected_rev),
                )
            return cursor.rowcount > 0

        return await self._run(write, point=True, atomic=True)

    async def expire_sessions(self, now: float) -> int:
        def write(db: sqlite3.Connection) -> int:
            with _transaction(db):
                cursor = db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            return cursor.rowcount

        return await self._run(write)

    # -- change feed -----------------------------------------------------------------------

    async def changes(self, after: int, limit: int) -> list[Change]:
        def read(db: sqlite3.Connection) -> list[Change]:
            rows = db.execute(
                "SELECT seq, kind, key FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
            return [Change(*r) for r in rows]

        if limit > INLINE_READ_MAX:
            return await self._run(read)
        return await self._read_inline(read)

    async def last_change(self) -> int:
        return await self._read_inline(_last_change)

    async def wait_for_changes(self, after: int) -> None:
        while True:
            # Taken before looking, so that a commit in between still wakes this wait.
            committed = self._committed
            if await self._read_inline(_last_change) > after:
                return
            # Another process's writes are seen at the next poll; this store's at once.
            with trio.move_on_after(self.poll_interval):
                await committed.wait()

    # -- leases ----------------------------------------------------------------------------

    async def claim_lease(self, name: str, holder: str, *, now: float, until: float) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                # One statement: taken when free, expired, or already the holder's.
                cursor = db.execute(
                    "INSERT INTO leases VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE"
                    " SET holder = excluded.holder, until = excluded.until"
                    " WHERE leases.holder = excluded.holder OR leases.until <= ?4",
                    (name, holder, until, now),
                )
            return cursor.rowcount > 0

        return await self._run(write)

    async def release_lease(self, name: str, holder: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                cursor = db.execute(
                    "DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)
                )
            return cursor.rowcount > 0

        return await self._run(write)

    async def live_leases(self, prefix: str, *, now: float) -> list[str]:
        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT holder FROM leases WHERE substr(name, 1, length(?1)) = ?1"
                " AND until > ?2 ORDER BY name",
                (prefix, now),
            )
            return [r[0] for r in rows]

        # A few rows (one per node, one per wave being run): read here.
        return await self._read_inline(read)

    async def aclose(self) -> None:
        # Calls already queued are still run; new ones are refused.
        self._closing = True
        self._wake_writer()
        await self._writer_done.wait()
        self._reader.close()
        await trio.to_thread.run_sync(self._db.close)
