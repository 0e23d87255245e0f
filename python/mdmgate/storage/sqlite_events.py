"""The event log, webhooks, API tokens and command listing/cancelling of the SQLite store: a
mixin of :class:`~mdmgate.storage.sqlite.SQLiteStore`, whose migration 7 creates its tables.

Every write is one job of the store's writer, inside a ``BEGIN IMMEDIATE`` transaction that
holds the database's write lock (for every connection and process on the file) from its first
statement to its commit. So events, whether appended alone or by :func:`append` in the job of
the change they report, are numbered (``INTEGER PRIMARY KEY AUTOINCREMENT``) in commit order:
a reader that was given ``seq`` N never finds a lower one later. ``AUTOINCREMENT`` also keeps
the highest number ever used in ``sqlite_sequence``, so a number is never reused after
pruning, and :meth:`SQLiteEvents.last_event` reads it from there. Another process's appends
are seen by polling (:attr:`SQLiteEvents.poll_interval`), this store's wake waiters at once.

``advance_webhook`` and ``touch_api_token`` are one conditional ``UPDATE`` each
(compare-and-set on the cursor and the state; on the last use) and ``put_api_token`` checks
the id and the live name under the write lock, with a partial unique index on live names
behind it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from mdmgate.storage import CommandSummary
from mdmgate.storage.event_records import (
    API_TOKEN_COLUMNS,
    FAILURE_COLUMNS,
    WEBHOOK_COLUMNS,
    EncodedEvent,
    api_token_from_row,
    api_token_taken,
    check_page,
    checked_api_token,
    checked_events,
    checked_outcome,
    checked_time,
    checked_webhook,
    event_from_row,
    type_filter,
    webhook_from_row,
    webhook_row,
)
from mdmgate.storage.events import (
    TOUCH_SECONDS,
    ApiToken,
    Event,
    NewEvent,
    Webhook,
    WebhookFailure,
)

__all__ = ["MIGRATION", "SQLiteEvents", "append"]

T = TypeVar("T")

#: The tables of the event log, webhooks and API tokens, and the queue order of commands
#: (the store's migration 7; commands stored before are numbered in the order they were
#: first queued). No comment in it may hold a semicolon: it runs statement by statement.
MIGRATION = """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL,
        at REAL NOT NULL,
        device_id TEXT,
        subject TEXT,
        data TEXT NOT NULL
    );
    CREATE INDEX events_by_device ON events (device_id, seq) WHERE device_id IS NOT NULL;
    CREATE INDEX events_by_age ON events (at);
    CREATE TABLE webhooks (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        secret TEXT NOT NULL,
        -- A JSON array of event types.
        types TEXT NOT NULL,
        created_at REAL NOT NULL,
        description TEXT NOT NULL,
        cursor INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        last_success_at REAL
    );
    CREATE TABLE webhook_failures (
        webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        PRIMARY KEY (webhook_id, seq)
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        scope TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL,
        last_used_at REAL
    );
    CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;
    ALTER TABLE commands ADD COLUMN seq INTEGER;
    UPDATE commands SET seq = o.n FROM (
        SELECT id, row_number() OVER (ORDER BY created, id) AS n FROM commands
    ) AS o WHERE commands.id = o.id;
    CREATE UNIQUE INDEX commands_in_order ON commands (seq);
"""

_APPEND = "INSERT INTO events (type, at, device_id, subject, data) VALUES (?, ?, ?, ?, ?)"
_EVENT_COLUMNS = "seq, type, at, device_id, subject, data"
#: Ended by cancel_deliveries: never handed out, or deferred by the device.
_CANCELLABLE = "('queued', 'not_now')"
_WEBHOOK_VALUES = ", ".join("?" * len(WEBHOOK_COLUMNS.split(", ")))
_WEBHOOK_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in WEBHOOK_COLUMNS.split(", ")[1:])


def append(db: sqlite3.Connection, events: Sequence[EncodedEvent]) -> None:
    """Appends checked events, in the caller's transaction (the write lock is held to its
    commit: the numbers are in commit order)."""
    if events:
        now = time.time()
        db.executemany(_APPEND, [(e.type, now, e.device_id, e.subject, e.data) for e in events])


def _last_event(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return 0 if row is None else int(row[0])


def _one_token(db: sqlite3.Connection, token_id: str) -> ApiToken | None:
    query = f"SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE id = ?"
    row = db.execute(query, (token_id,)).fetchone()
    return None if row is None else api_token_from_row(row)


class SQLiteEvents:
    """The roles :class:`~mdmgate.storage.EventStore`, :class:`~mdmgate.storage.WebhookStore`
    and :class:`~mdmgate.storage.ApiTokenStore`, and the command listing and cancelling of
    :class:`~mdmgate.storage.QueueStore`, on the store's writer (``_run``) and read
    connection (``_read_inline``)."""

    #: How often :meth:`wait_for_events` looks for events appended by other processes.
    poll_interval = 0.05

    if TYPE_CHECKING:
        _committed: trio.Event

        async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read_inline(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    # -- the event log ---------------------------------------------------------------------

    async def append_events(self, events: Sequence[NewEvent]) -> int:
        checked = checked_events(events)

        def write(db: sqlite3.Connection) -> int:
            append(db, checked)
            return _last_event(db)

        if not checked:
            return await self.last_event()
        return await self._run(write)

    async def events(
        self,
        after: int,
        limit: int,
        *,
        types: Collection[str] | None = None,
        device_id: str | None = None,
    ) -> list[Event]:
        check_page(after, limit)
        wanted = type_filter(types)
        if limit <= 0:
            return []
        conditions = ["seq > ?"]
        params: list[Any] = [after]
        if device_id is not None:
            conditions.append("device_id = ?")
            params.append(device_id)
        if wanted is not None:
            either = []
            if wanted.exact:
                either.append("type IN (SELECT value FROM json_each(?))")
                params.append(json.dumps(wanted.exact))
            if wanted.prefixes:
                either.append(
                    # Qualified: json_each has a column named type too.
                    "EXISTS (SELECT 1 FROM json_each(?) p"
                    " WHERE substr(events.type, 1, length(p.value)) = p.value)"
                )
                params.append(json.dumps(wanted.prefixes))
            conditions.append(f"({' OR '.join(either)})")
        query = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(conditions)}"
            " ORDER BY seq LIMIT ?"
        )

        def read(db: sqlite3.Connection) -> list[Event]:
            return [event_from_row(r) for r in db.execute(query, (*params, limit))]

        # A filter may scan far past what it returns: off the Trio thread.
        if wanted is None and device_id is None and limit <= 64:
            return await self._read_inline(read)
        return await self._run(read)

    async def last_event(self) -> int:
        return await self._read_inline(_last_event)

    async def wait_for_events(self, after: int) -> None:
        check_page(after, 0)

        def found(db: sqlite3.Connection) -> bool:
            return db.execute("SELECT 1 FROM events WHERE seq > ?", (after,)).fetchone() is not None

        while True:
            # Taken before looking, so that a commit in between still wakes this wait.
            committed = self._committed
            if await self._read_inline(found):
                return
            with trio.move_on_after(self.poll_interval):
                await committed.wait()

    async def prune_events(self, before: float) -> int:
        before = checked_time("prune_events", "before", before)

        def write(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM events WHERE at < ?", (before,)).rowcount

        return await self._run(write)

    # -- webhooks --------------------------------------------------------------------------

    async def put_webhook(self, webhook: Webhook) -> None:
        w = checked_webhook(webhook)
        row = webhook_row(w, json.dumps(list(w.types)))

        def write(db: sqlite3.Connection) -> None:
            # An upsert, not a REPLACE: a replaced subscription keeps its dead letters.
            db.execute(
                f"INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES ({_WEBHOOK_VALUES})"
                f" ON CONFLICT (id) DO UPDATE SET {_WEBHOOK_UPDATES}",
                row,
            )

        await self._run(write)

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        def read(db: sqlite3.Connection) -> Webhook | None:
            query = f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?"
            row = db.execute(query, (webhook_id,)).fetchone()
            return None if row is None else webhook_from_row(row)

        return await self._read_inline(read)

    async def list_webhooks(self) -> list[Webhook]:
        def read(db: sqlite3.Connection) -> list[Webhook]:
            query = f"SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"
            return [webhook_from_row(r) for r in db.execute(query)]

        return await self._run(read)

    async def delete_webhook(self, webhook_id: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount > 0

        return await self._run(write)

    async def advance_webhook(
        self,
        webhook_id: str,
        *,
        expected_cursor: int,
        cursor: int,
        state: str,
        attempts: int,
        next_attempt_at: float,
        last_error: str | None,
        last_success_at: float | None,
        failed: Sequence[WebhookFailure] = (),
        expected_state: str | None = None,
    ) -> bool:
        o = checked_outcome(
            webhook_id,
            expected_cursor=expected_cursor,
            cursor=cursor,
            state=state,
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            last_error=last_error,
            last_success_at=last_success_at,
            failed=failed,
            expected_state=expected_state,
        )
        letters = [(f.webhook_id, f.seq, f.at, f.attempts, f.error) for f in o.failed]

        def write(db: sqlite3.Connection) -> bool:
            moved = db.execute(
                "UPDATE webhooks SET cursor = ?, state = ?, attempts = ?, next_attempt_at = ?,"
                " last_error = ?, last_success_at = ? WHERE id = ? AND cursor = ?"
                " AND (? IS NULL OR state = ?)",
                (*o[:6], webhook_id, expected_cursor, expected_state, expected_state),
            ).rowcount
            if not moved:
                return False
            db.executemany(
                f"INSERT INTO webhook_failures ({FAILURE_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (webhook_id, seq) DO UPDATE SET at = excluded.at,"
                " attempts = excluded.attempts, error = excluded.error",
                letters,
            )
            return True

        return await self._run(write)

    async def webhook_failures(
        self, webhook_id: str, *, after: int = 0, limit: int = 100
    ) -> list[WebhookFailure]:
        check_page(after, limit)

        def read(db: sqlite3.Connection) -> list[WebhookFailure]:
            rows = db.execute(
                f"SELECT {FAILURE_COLUMNS} FROM webhook_failures WHERE webhook_id = ?"
                " AND seq > ? ORDER BY seq LIMIT ?",
                (webhook_id, after, max(limit, 0)),
            )
            return [WebhookFailure(*r) for r in rows]

        return await self._run(read)

    # -- API tokens ------------------------------------------------------------------------

    async def put_api_token(self, token: ApiToken) -> None:
        t = checked_api_token(token)

        def write(db: sqlite3.Connection) -> None:
            # Under the write lock: nobody inserts between the checks and the insert.
            if db.execute("SELECT 1 FROM api_tokens WHERE id = ?", (t.id,)).fetchone():
                raise api_token_taken(t, same_id=True)
            if (
                t.revoked_at is None
                and db.execute(
                    "SELECT 1 FROM api_tokens WHERE name = ? AND revoked_at IS NULL", (t.name,)
                ).fetchone()
            ):
                raise api_token_taken(t, same_id=False)
            db.execute(
                f"INSERT INTO api_tokens ({API_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    t.id,
                    t.name,
                    t.scope,
                    t.secret_sha256,
                    t.created_at,
                    t.revoked_at,
                    t.last_used_at,
                ),
            )

        await self._run(write)

    async def get_api_token(self, token_id: str) -> ApiToken | None:
        return await self._read_inline(lambda db: _one_token(db, token_id))

    async def list_api_tokens(self) -> list[ApiToken]:
        def read(db: sqlite3.Connection) -> list[ApiToken]:
            query = f"SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
            return [api_token_from_row(r) for r in db.execute(query)]

        return await self._run(read)

    async def revoke_api_token(self, token_id: str, *, at: float) -> ApiToken | None:
        at = checked_time(f"API token {token_id!r}", "at", at)

        def write(db: sqlite3.Connection) -> ApiToken | None:
            db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, token_id),
            )
            return _one_token(db, token_id)

        return await self._run(write)

    async def touch_api_token(self, token_id: str, *, at: float) -> None:
        at = checked_time(f"API token {token_id!r}", "at", at)

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE api_tokens SET last_used_at = ? WHERE id = ?"
                " AND (last_used_at IS NULL OR last_used_at <= ?)",
                (at, token_id, at - TOUCH_SECONDS),
            )

        await self._run(write)

    # -- commands --------------------------------------------------------------------------

    async def list_commands(
        self,
        *,
        after: str | None = None,
        limit: int = 100,
        device_id: str | None = None,
        kind: str | None = None,
    ) -> list[CommandSummary]:
        check_page(0, limit)
        if limit <= 0:
            return []
        conditions = ["c.seq > coalesce((SELECT seq FROM commands WHERE id = ?), 0)"]
        params: list[Any] = [after]
        if kind is not None:
            conditions.append("c.kind = ?")
            params.append(kind)
        if device_id is not None:
            conditions.append(
                "EXISTS (SELECT 1 FROM deliveries d WHERE d.command_id = c.id AND d.device_id = ?)"
            )
            params.append(device_id)
        query = (
            "SELECT c.id, c.kind, c.seq, c.created,"
            " (SELECT json_group_object(state, n) FROM (SELECT state, count(*) AS n"
            "  FROM deliveries d WHERE d.command_id = c.id GROUP BY state)), c.body"
            f" FROM commands c WHERE {' AND '.join(conditions)} ORDER BY c.seq LIMIT ?"
        )

        def read(db: sqlite3.Connection) -> list[CommandSummary]:
            return [
                CommandSummary(r[0], r[1], r[2], float(r[3]), json.loads(r[4]), bytes(r[5]))
                for r in db.execute(query, (*params, limit))
            ]

        return await self._run(read)

    async def cancel_deliveries(
        self,
        command_id: str,
        device_ids: Sequence[str] | None,
        status: str,
        *,
        events: Sequence[NewEvent] = (),
    ) -> list[str]:
        checked = checked_events(events)
        if isinstance(device_ids, str):
            raise ValueError(f"device_ids must be a sequence of ids, not the string {device_ids!r}")
        query = (
            "UPDATE deliveries SET state = 'error', status = ?, updated = ?"
            f" WHERE command_id = ? AND state IN {_CANCELLABLE}"
        )
        params: tuple[Any, ...] = (status, time.time(), command_id)
        if device_ids is not None:
            query += " AND device_id IN (SELECT value FROM json_each(?))"
            params += (json.dumps(list(dict.fromkeys(device_ids))),)

        def write(db: sqlite3.Connection) -> list[str]:
            ended = db.execute(query + " RETURNING seq, device_id", params).fetchall()
            devices = [d for _, d in sorted(ended)]
            done = set(devices)
            append(db, [e for e in checked if e.device_id is None or e.device_id in done])
            return devices

        return await self._run(write)
