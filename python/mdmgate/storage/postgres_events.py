"""The event log, webhooks, API tokens and command listing/cancelling of the PostgreSQL store:
a mixin of :class:`~mdmgate.storage.postgres.PostgresStore`, whose schema version 3 creates
its tables (:mod:`.postgres_schema`).

**Why events are numbered under a lock.** A ``bigserial`` hands out numbers when rows are
inserted, not when they commit: a transaction that took seq 11 may commit after the one that
took 12, and a reader that was given 12 and asks for ``after=12`` would never see 11. So
every transaction that appends events takes the transaction-level advisory lock
:data:`~mdmgate.storage.postgres_schema.EVENT_LOCK` right before its insert and holds it to
its commit (the insert is its last statement, pipelined with the COMMIT: the lock is held for
no round trip). Appends therefore commit one after the other in the order of their numbers,
and a reader's snapshot that holds seq N holds every lower number that will ever commit. The
other choice, a commit-ordered high-water mark readers stop at, needs a table every append
updates and readers that wait for stragglers; the lock costs nothing more, as a NOTIFY (every
append sends one) already serialises the commits of notifying transactions. A transaction
that also writes the change feed takes its lock first and this one second, so the two cannot
deadlock.

:meth:`PostgresEvents.last_event` is the sequence's last value read under the same lock,
shared: no append is then in flight, so every number handed out is committed or abandoned,
and the answer never goes back, also once events are pruned.

An event rides on its change in the same pipelined transaction: after the change's
statements (:func:`append`). A change that turns out not to happen (a final delivery, an
unknown device) aborts the transaction from inside (``mdmgate_refuse`` with
:data:`~mdmgate.storage.postgres_schema.REFUSED_NOTHING`), so its events go with it. A
change whose events depend on what it wrote (``take``'s reports, ``cancel_deliveries``) is
one statement whose last step appends them. ``record_and_take`` is three statements (the
device's queue locked, the answer, the take and every event) in one transaction: the earlier
ones leave marks for the last (``set_config`` local to the transaction), which appends the
answer's events only when it was stored and hands out only under the lock.

Waiters wake through ``NOTIFY mdmgate_events`` (payload: the last seq appended) on the
store's LISTEN connection, which also carries the change feed's channel: both logs' readers
are here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec
import trio

from mdmgate.storage import Change, CommandSummary, pgwire
from mdmgate.storage.event_records import (
    API_TOKEN_COLUMNS,
    FAILURE_COLUMNS,
    WEBHOOK_COLUMNS,
    EncodedEvent,
    api_token_from_row,
    api_token_row,
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
from mdmgate.storage.pgwire import Param, PgError, Result, Row
from mdmgate.storage.postgres_schema import (
    ANSWER,
    COMMAND_OF_TAKEN,
    EVENT_LOCK,
    NOT_IN_SESSION,
    REFUSED_NOTHING,
    TAKE_LOCK,
    TAKE_STEPS,
    TAKEN,
    Statement,
    first_offered,
    retry_spent,
    take_steps,
    text_array,
)

__all__ = [
    "ANSWERED_TAKE",
    "ANSWER_LOCK",
    "ANSWER_MARKED",
    "GIVE_UP_REPORTED",
    "REFUSE_UNKNOWN_DEVICE",
    "TAKE_REPORTED",
    "PostgresEvents",
    "append",
    "event_array",
    "refuse_unless",
]

#: Without a LISTEN connection (not up yet, or lost), waiters read the logs this often.
POLL_SECONDS = 0.5
#: Waits between attempts to bring the LISTEN connection back (doubling up to the last).
RELISTEN_SECONDS = (0.05, 5.0)

_LOCK = f"SELECT pg_advisory_xact_lock({EVENT_LOCK})"
#: $1: a JSON array of [type, device_id, subject, data]; $2: when.
_APPEND = (
    "WITH appended AS (INSERT INTO events (type, at, device_id, subject, data)"
    " SELECT e.v->>0, $2::float8, e.v->>1, e.v->>2, e.v->3"
    " FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(v, n) ORDER BY e.n"
    " RETURNING seq)"
    " SELECT max(seq), pg_notify(mdmgate_events_channel(), max(seq)::text) FROM appended"
)
#: The lock and the notification of an append that follows a write: ``{rows}`` names the
#: CTE whose rows are reported; ``{select}`` the event columns from ``r`` (one of them).
_APPENDED_AFTER = (
    # count(*), not EXISTS: the write is complete (its row locks taken) before the lock.
    f", ordered AS (SELECT pg_advisory_xact_lock({EVENT_LOCK})"
    " WHERE (SELECT count(*) FROM {rows}) > 0),"
    " appended AS (INSERT INTO events (type, at, device_id, subject, data)"
    " SELECT {select} FROM {rows} r, ordered ORDER BY r.seq RETURNING seq)"
)
_NOTIFY = (
    "(SELECT pg_notify(mdmgate_events_channel(), max(seq)::text) FROM appended HAVING count(*) > 0)"
)
#: take() reporting what it gave up on ($6: when; $1..$5 as GIVE_UP).
GIVE_UP_REPORTED = (
    "WITH failed AS (UPDATE deliveries SET state = 'failed',"
    " status = $3::text || offers::text || $4::text, updated = now()"
    f" WHERE device_id = $1 AND {retry_spent('$5')}"
    " AND NOT (state IN ('sent', 'not_now') AND session IS NOT DISTINCT FROM $2)"
    " RETURNING seq, command_id, status)"
    + _APPENDED_AFTER.format(
        rows="failed",
        select="'command.failed', $6::float8, $1, r.command_id,"
        " jsonb_build_object('status', r.status)",
    )
    + f" SELECT {_NOTIFY}"
)
#: take() reporting what it hands out ($5: when; $1..$4 as TAKE); rows as TAKE's and the
#: notification.
TAKE_REPORTED = (
    TAKE_STEPS
    + _APPENDED_AFTER.format(
        rows="taken",
        select="'command.delivered', $5::float8, $1, r.command_id,"
        " jsonb_build_object('session', $2::text, 'offers', r.offers)",
    )
    + TAKEN.replace(" FROM taken t", f", {_NOTIFY} FROM taken t")
)
#: The marks of record_and_take(): the device whose queue is locked; the answer stored ('1').
_LOCKED = "mdmgate.locked_queue"
_ANSWERED = "mdmgate.answered"
#: record_and_take(), first: the device's queue ($1) locked and marked, when anything but
#: the answered delivery ($3) is offered to the session ($2), or the answer ($4) is NotNow
#: (which offers that delivery again). Else, as take() would find nothing, only the answer
#: is written.
ANSWER_LOCK = (
    f"SELECT set_config('{_LOCKED}', $1, true), {TAKE_LOCK.removeprefix('SELECT ')}"
    " WHERE $4::text = 'not_now' OR"
    f" {first_offered(f' AND {NOT_IN_SESSION} AND command_id <> $3')}"
)
#: Then the answer (ANSWER's parameters), marked stored or not.
ANSWER_MARKED = (
    f"WITH answered AS ({ANSWER} RETURNING 1)"
    f" SELECT set_config('{_ANSWERED}', count(*)::text, true) FROM answered"
)
_TAKING = f"current_setting('{_LOCKED}', true) = $1"
#: Last: take() (parameters $1..$4 as TAKE's), only under the lock, with GIVE_UP in the
#: same statement ($5: max_offers, $6 || offers || $7: the status), so that one append
#: numbers every event: the answer's ($8) when it was stored, then, with $10, the reports of
#: take() ($9: when). Rows as TAKEN's and the notification; one with no command when
#: nothing is taken.
ANSWERED_TAKE = (
    take_steps(f" AND {_TAKING} AND ($5::int4 IS NULL OR offers < $5::int4)")
    + ", failed AS (UPDATE deliveries SET state = 'failed',"
    " status = $6::text || offers::text || $7::text, updated = now()"
    f" WHERE device_id = $1 AND {_TAKING} AND {retry_spent('$5::int4')}"
    f" AND {NOT_IN_SESSION} RETURNING seq, command_id, status),"
    " reported AS (SELECT 0 AS k, e.n, e.v->>0 AS type, e.v->>1 AS device_id,"
    "  e.v->>2 AS subject, e.v->3 AS data FROM jsonb_array_elements($8::jsonb)"
    f"  WITH ORDINALITY AS e(v, n) WHERE current_setting('{_ANSWERED}', true) = '1'"
    " UNION ALL SELECT 1, f.seq, 'command.failed', $1, f.command_id,"
    "  jsonb_build_object('status', f.status) FROM failed f WHERE $10::boolean"
    " UNION ALL SELECT 2, t.seq, 'command.delivered', $1, t.command_id,"
    "  jsonb_build_object('session', $2::text, 'offers', t.offers) FROM taken t"
    "  WHERE $10::boolean),"
    # The writes complete (their row locks taken) before the lock, reported or not.
    f" ordered AS (SELECT pg_advisory_xact_lock({EVENT_LOCK})"
    "  WHERE (SELECT count(*) FROM failed) + (SELECT count(*) FROM taken) >= 0"
    "  AND (SELECT count(*) FROM reported) > 0),"
    " appended AS (INSERT INTO events (type, at, device_id, subject, data)"
    " SELECT r.type, $9::float8, r.device_id, r.subject, r.data FROM reported r, ordered"
    " ORDER BY r.k, r.n RETURNING seq)"
    f" SELECT t.command_id, c.kind, c.body, t.offers, {_NOTIFY} FROM (SELECT) AS one"
    f" LEFT JOIN (taken t CROSS JOIN {COMMAND_OF_TAKEN}) ON true ORDER BY t.seq"
)
#: Aborts the transaction when the device $1 is unknown (devices are never deleted: one
#: found here is there for the write after it).
REFUSE_UNKNOWN_DEVICE = (
    f"SELECT mdmgate_refuse('{REFUSED_NOTHING}', '')"
    " WHERE NOT EXISTS (SELECT FROM devices WHERE id = $1)"
)
_CANCEL = (
    "WITH ended AS (UPDATE deliveries SET state = 'error', status = $2, updated = now()"
    " WHERE command_id = $1 AND state IN ('queued', 'not_now')"
    " AND ($3::text[] IS NULL OR device_id = ANY($3::text[])) RETURNING seq, device_id),"
    # The events of devices whose delivery was ended, and those about no device.
    " reported AS (SELECT e.n AS seq, e.v FROM jsonb_array_elements($4::jsonb)"
    "  WITH ORDINALITY AS e(v, n)"
    "  WHERE e.v->>1 IS NULL OR e.v->>1 IN (SELECT device_id FROM ended))"
    + _APPENDED_AFTER.format(
        rows="reported", select="r.v->>0, $5::float8, r.v->>1, r.v->>2, r.v->3"
    )
    + " SELECT (SELECT coalesce(json_agg(device_id ORDER BY seq), '[]')::text FROM ended),"
    + f" {_NOTIFY}"
)
_LAST_EVENT: list[Statement] = [
    (f"SELECT pg_advisory_xact_lock_shared({EVENT_LOCK})", ()),
    ("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_seq_seq", ()),
]
_EVENT_COLUMNS = "seq, type, at, device_id, subject, data::text"
_WEBHOOK_VALUES = ", ".join(f"${i}" for i in range(1, len(WEBHOOK_COLUMNS.split(", ")) + 1))
_WEBHOOK_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in WEBHOOK_COLUMNS.split(", ")[1:])
_IDS = msgspec.json.Decoder(list[str])


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def event_array(events: Sequence[EncodedEvent]) -> str:
    """The events as one JSON array of ``[type, device_id, subject, data]`` (data is JSON
    already)."""
    rows = (f"[{_json(e.type)},{_json(e.device_id)},{_json(e.subject)},{e.data}]" for e in events)
    return f"[{','.join(rows)}]"


def append(events: Sequence[EncodedEvent]) -> list[Statement]:
    """The statements that append checked ``events``: the last of a transaction (the lock
    they take is held to its commit)."""
    if not events:
        return []
    return [(_LOCK, ()), (_APPEND, (event_array(events), time.time()))]


def refuse_unless(write: str) -> str:
    """``write`` (a data-modifying statement with ``RETURNING``) that aborts the
    transaction with :data:`REFUSED_NOTHING` when it writes nothing."""
    return (
        f"WITH w AS ({write}) SELECT mdmgate_refuse('{REFUSED_NOTHING}', '')"
        " WHERE NOT EXISTS (SELECT FROM w)"
    )


class PostgresEvents:
    """The roles :class:`~mdmgate.storage.EventStore`, :class:`~mdmgate.storage.WebhookStore`,
    :class:`~mdmgate.storage.ApiTokenStore` and :class:`~mdmgate.storage.ChangeFeed`, and
    the command listing and cancelling of :class:`~mdmgate.storage.QueueStore`, on the
    store's pool and its LISTEN connection."""

    if TYPE_CHECKING:
        _dsn: str
        _nursery: trio.Nursery | None
        _listener: bool
        _listening: bool
        _notified: int
        _wake: trio.Event
        _events_notified: int
        _events_wake: trio.Event

        async def _fetch(self, query: str, *params: Param) -> list[Row]: ...

        async def _fetchval(self, query: str, *params: Param) -> Any: ...

        async def _execute(self, query: str, *params: Param) -> int: ...

        async def _write(self, statements: Sequence[Statement]) -> list[Result]: ...

    # -- the change feed, and the LISTEN connection both logs wake through ---------------

    async def changes(self, after: int, limit: int) -> list[Change]:
        if limit <= 0:
            return []
        query = "SELECT seq, kind, key FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2"
        rows = await self._fetch(query, after, limit)
        return [Change(cast(int, seq), cast(str, kind), cast(str, key)) for seq, kind, key in rows]

    async def last_change(self) -> int:
        return int(await self._fetchval("SELECT coalesce(max(seq), 0) FROM changes"))

    async def wait_for_changes(self, after: int) -> None:
        self._start_listening()
        while self._notified <= after:
            # Read once LISTEN is up: a change committed after the read is notified, and
            # the notification (or the loss of the LISTEN connection) sets this event.
            wake, listening = self._wake, self._listening
            if await self.last_change() > after:
                return
            with trio.move_on_after(math.inf if listening else POLL_SECONDS):
                await wake.wait()

    def _start_listening(self) -> None:
        if not self._listener and self._nursery is not None:
            self._listener = True
            self._nursery.start_soon(self._listen)

    def _wake_all(self, *, changes: bool = True, events: bool = True) -> None:
        if changes:
            self._wake.set()
            self._wake = trio.Event()
        if events:
            self._events_wake.set()
            self._events_wake = trio.Event()

    async def _listen(self) -> None:
        """The store's LISTEN connection (the change feed's channel and the event log's),
        brought back when lost. Wakes the waiters of a log on each of its notifications, and
        every waiter when it goes up or down (they then read the logs)."""
        pause = RELISTEN_SECONDS[0]
        while True:
            try:
                async with await pgwire.connect(self._dsn) as conn:
                    channels = await conn.fetchrow(
                        "SELECT mdmgate_channel(), mdmgate_events_channel()"
                    )
                    assert channels is not None
                    changes, events = (str(c) for c in channels)
                    await conn.listen(changes, events)
                    self._listening, pause = True, RELISTEN_SECONDS[0]
                    self._wake_all()
                    async for note in conn.notifications():
                        of_events = note.channel == events
                        if note.payload.isdigit() and of_events:
                            self._events_notified = max(self._events_notified, int(note.payload))
                        elif note.payload.isdigit():
                            self._notified = max(self._notified, int(note.payload))
                        self._wake_all(changes=not of_events, events=of_events)
            except Exception:
                pass
            finally:
                self._listening = False
                self._wake_all()
            await trio.sleep(pause)
            pause = min(pause * 2, RELISTEN_SECONDS[1])

    # -- the event log ---------------------------------------------------------------------

    async def append_events(self, events: Sequence[NewEvent]) -> int:
        checked = checked_events(events)
        if not checked:
            return await self.last_event()
        results = await self._write(append(checked))
        return int(cast(int, results[-1].rows[0][0]))

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
        conditions = ["seq > $1"]
        params: list[Param] = [after, limit]
        if device_id is not None:
            params.append(device_id)
            conditions.append(f"device_id = ${len(params)}")
        if wanted is not None:
            params += [text_array(wanted.exact), text_array(wanted.prefixes)]
            conditions.append(
                f"(type = ANY(${len(params) - 1}::text[]) OR EXISTS (SELECT FROM"
                f" unnest(${len(params)}::text[]) AS p(prefix) WHERE starts_with(type, p.prefix)))"
            )
        query = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(conditions)}"
            " ORDER BY seq LIMIT $2"
        )
        return [event_from_row(r) for r in await self._fetch(query, *params)]

    async def last_event(self) -> int:
        results = await self._write(_LAST_EVENT)
        return int(cast(int, results[-1].rows[0][0]))

    async def wait_for_events(self, after: int) -> None:
        check_page(after, 0)
        self._start_listening()
        while self._events_notified <= after:
            # Read once LISTEN is up: an append committed after the read is notified, and
            # the notification (or the loss of the LISTEN connection) sets this event.
            wake, listening = self._events_wake, self._listening
            if await self._fetchval("SELECT EXISTS (SELECT FROM events WHERE seq > $1)", after):
                return
            with trio.move_on_after(math.inf if listening else POLL_SECONDS):
                await wake.wait()

    async def prune_events(self, before: float) -> int:
        before = checked_time("prune_events", "before", before)
        return await self._execute("DELETE FROM events WHERE at < $1", before)

    # -- webhooks --------------------------------------------------------------------------

    async def put_webhook(self, webhook: Webhook) -> None:
        w = checked_webhook(webhook)
        # An upsert: a replaced subscription keeps its dead letters.
        query = (
            f"INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES ({_WEBHOOK_VALUES})"
            f" ON CONFLICT (id) DO UPDATE SET {_WEBHOOK_UPDATES}"
        )
        await self._execute(query, *webhook_row(w, _json(list(w.types))))

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        query = f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
        rows = await self._fetch(query, webhook_id)
        return webhook_from_row(rows[0]) if rows else None

    async def list_webhooks(self) -> list[Webhook]:
        query = f"SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"
        return [webhook_from_row(r) for r in await self._fetch(query)]

    async def delete_webhook(self, webhook_id: str) -> bool:
        return await self._execute("DELETE FROM webhooks WHERE id = $1", webhook_id) > 0

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
        letters = _json([[f.seq, f.at, f.attempts, f.error] for f in o.failed])
        # One statement: a second writer (deliverer or pause) waits for the first's row
        # lock, then finds the cursor or the state moved (READ COMMITTED checks the
        # condition again on the new row).
        query = (
            "WITH moved AS (UPDATE webhooks SET cursor = $3, state = $4, attempts = $5,"
            " next_attempt_at = $6, last_error = $7, last_success_at = $8"
            " WHERE id = $1 AND cursor = $2 AND ($10::text IS NULL OR state = $10)"
            " RETURNING id),"
            " letters AS (INSERT INTO webhook_failures (webhook_id, seq, at, attempts, error)"
            " SELECT m.id, (f.v->>0)::int8, (f.v->>1)::float8, (f.v->>2)::int8, f.v->>3"
            " FROM moved m, jsonb_array_elements($9::jsonb) AS f(v)"
            " ON CONFLICT (webhook_id, seq) DO UPDATE SET at = excluded.at,"
            " attempts = excluded.attempts, error = excluded.error)"
            " SELECT count(*) FROM moved"
        )
        moved = await self._fetchval(
            query, webhook_id, expected_cursor, *o[:6], letters, expected_state
        )
        return bool(moved)

    async def webhook_failures(
        self, webhook_id: str, *, after: int = 0, limit: int = 100
    ) -> list[WebhookFailure]:
        check_page(after, limit)
        query = (
            f"SELECT {FAILURE_COLUMNS} FROM webhook_failures WHERE webhook_id = $1"
            " AND seq > $2 ORDER BY seq LIMIT $3"
        )
        rows = await self._fetch(query, webhook_id, after, max(limit, 0))
        return [WebhookFailure(*cast(tuple[Any, ...], r)) for r in rows]

    # -- API tokens ------------------------------------------------------------------------

    async def put_api_token(self, token: ApiToken) -> None:
        t = checked_api_token(token)
        query = f"INSERT INTO api_tokens ({API_TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        try:
            await self._execute(query, *api_token_row(t))
        except PgError as e:
            # The primary key, or the unique index on live names, decides between racers.
            if e.is_unique_violation and e.constraint in (
                "api_tokens_pkey",
                "api_tokens_live_name",
            ):
                raise api_token_taken(t, same_id=e.constraint == "api_tokens_pkey") from None
            raise

    async def get_api_token(self, token_id: str) -> ApiToken | None:
        query = f"SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"
        rows = await self._fetch(query, token_id)
        return api_token_from_row(rows[0]) if rows else None

    async def list_api_tokens(self) -> list[ApiToken]:
        query = f"SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
        return [api_token_from_row(r) for r in await self._fetch(query)]

    async def revoke_api_token(self, token_id: str, *, at: float) -> ApiToken | None:
        at = checked_time(f"API token {token_id!r}", "at", at)
        query = (
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1"
            f" RETURNING {API_TOKEN_COLUMNS}"
        )
        rows = await self._fetch(query, token_id, at)
        return api_token_from_row(rows[0]) if rows else None

    async def touch_api_token(self, token_id: str, *, at: float) -> None:
        at = checked_time(f"API token {token_id!r}", "at", at)
        query = (
            "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1"
            " AND (last_used_at IS NULL OR last_used_at <= $3)"
        )
        await self._execute(query, token_id, at, at - TOUCH_SECONDS)

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
        conditions = ["c.seq > coalesce((SELECT seq FROM commands WHERE id = $2), 0)"]
        params: list[Param] = [limit, after]
        if kind is not None:
            params.append(kind)
            conditions.append(f"c.kind = ${len(params)}")
        if device_id is not None:
            params.append(device_id)
            conditions.append(
                "EXISTS (SELECT FROM deliveries d WHERE d.command_id = c.id"
                f" AND d.device_id = ${len(params)})"
            )
        query = (
            "SELECT c.id, c.kind, c.seq, extract(epoch FROM c.created)::float8,"
            " (SELECT coalesce(json_object_agg(s.state, s.n), '{}')::text FROM"
            "  (SELECT state, count(*) AS n FROM deliveries d WHERE d.command_id = c.id"
            "  GROUP BY state) s), c.body"
            f" FROM commands c WHERE {' AND '.join(conditions)} ORDER BY c.seq LIMIT $1"
        )
        return [
            CommandSummary(
                cast(str, r[0]),
                cast(str, r[1]),
                cast(int, r[2]),
                cast(float, r[3]),
                msgspec.json.decode(cast(str, r[4]), type=dict[str, int]),
                cast(bytes, r[5]),
            )
            for r in await self._fetch(query, *params)
        ]

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
        ids = None if device_ids is None else text_array(dict.fromkeys(device_ids))
        ended = await self._fetchval(
            _CANCEL, command_id, status, ids, event_array(checked), time.time()
        )
        return _IDS.decode(cast(str, ended))
