"""The shared store: PostgreSQL, for several gateway nodes behind one load balancer.

Every call is one round trip on a pooled connection (:mod:`mdmgate.storage.pgwire`: libpq in
non-blocking mode, prepared statements): a write of several statements goes out as one
pipelined transaction (BEGIN, the statements, COMMIT), and what must be decided inside the
transaction is decided by the server, so no lock is held across a round trip. A refusal found
half-way (an unknown device, a licence pool that would overflow, a stale revision) aborts the
transaction from inside (``mdmgate_refuse``), so nothing of it lands. A transaction that loses
a deadlock is run again. The schema and the longer statements: :mod:`.postgres_schema`.

How the contract holds under concurrent writers, from any number of nodes:

* ``take``: the device's queue is locked to the commit (``pg_advisory_xact_lock`` on the device
  id: takes of one device run one after the other, in queue order, as with ``SELECT ... FOR
  UPDATE`` on its row; but it writes nothing, so an empty check-in commits read-only, and it
  never waits for an enqueue's foreign-key lock on the row). The offers are then chosen and
  marked in one statement that checks each row's state again, so an answer or a cancel that
  commits meanwhile wins over the hand-out. ``record_and_take`` locks the queue the same way
  (first, when anything is offered besides the delivery answered), then stores the answer,
  then takes: one transaction (:mod:`.postgres_events`).
* ``merge_facts``: one ``UPDATE ... SET facts = (facts || $2) - $3``: no read-modify-write.
* ``fan_out``: the app's licence pool row is locked (``SELECT ... FOR UPDATE``) before its
  holders are counted. ``put_app``, ``put_notification`` and ``save_session`` compare and set
  the revision in the write itself; ``claim_lease`` is one upsert whose WHERE checks expiry and
  holder; ``enqueue(new=True)`` leaves the race to the primary key of ``commands``.
* The change feed: changes are written by their own transaction, in its last statement, under
  one advisory lock held to the commit, with ``NOTIFY mdmgate_changes`` (payload: the last seq).
  So seq follows commit order, and a reader never skips a change that commits late (a seq
  taken at insert time would not: a transaction that took seq 11 may commit after the one that
  took 12). NOTIFY already serialises the commits of notifying transactions; the lock adds no
  more waiting. The event log is numbered the same way, under a lock of its own
  (:mod:`.postgres_events`), and its events are written in the transaction of the change they
  report.

A write interrupted after its COMMIT was sent may or may not have landed (the pipeline holds
BEGIN to COMMIT, so that is any write that was sent; pgwire cancels it on the server and rolls
back what did not commit). Run again, most writes end as if run once: ``upsert_devices``,
``set_auth``, ``merge_facts``, ``update_device``, ``record_result``, ``cancel_open``,
``put_declaration``, ``put_org``, ``release_licences``, ``claim_lease``, ``release_lease``,
``drop_session`` (without a revision), ``expire_sessions``, ``enqueue`` without ``new`` and
``fan_out`` without a notification (a command already queued for a device, or a licence
already held, is left as it is: callers derive command ids from what they queue). Not so:
``enqueue(new=True)`` (the retry raises :class:`CommandExists`), the compare-and-set writes
(``put_app``, ``put_notification``, ``fan_out`` with a notification, ``save_session`` and
``drop_session`` with a revision: the retry finds ``expected + 1``, or nothing, stored) and
``take`` and ``record_and_take`` (what it handed out counts one more offer and is offered
again in a later session: at-least-once, as for a session that died). A write run again
appends its ``events`` again when the first run had landed: a reader may see such an event
twice, never lose one.

Facts and auth are ``jsonb``: a JSON string with U+0000 cannot be stored (PostgreSQL refuses
it), and a float written with an exponent comes back as the number it is (``1e300`` as an int).
"""

from __future__ import annotations

import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar, cast

import msgspec
import psycopg
import trio
from psycopg import pq

from mdmgate.catalogue.model import App, CommandBatch, LicenceGrant, Notification, Org
from mdmgate.storage import (
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
    UnknownDevices,
    fan_out_devices,
    offers_exhausted,
    pgwire,
)
from mdmgate.storage import postgres_schema as sql
from mdmgate.storage.event_records import checked_events
from mdmgate.storage.pgwire import Connection, Param, PgError, Pool, Result, Row
from mdmgate.storage.postgres_enrollment import PostgresEnrollment
from mdmgate.storage.postgres_events import (
    ANSWER_LOCK,
    ANSWER_MARKED,
    ANSWERED_TAKE,
    GIVE_UP_REPORTED,
    REFUSE_UNKNOWN_DEVICE,
    TAKE_REPORTED,
    PostgresEvents,
    append,
    event_array,
    refuse_unless,
)
from mdmgate.storage.postgres_schema import (
    OPEN,
    PENDING,
    REFUSED_LICENCES,
    REFUSED_NOTHING,
    REFUSED_REVISION,
    REFUSED_UNKNOWN,
    SchemaTooNew,
    Statement,
    logged,
    migrate,
    text_array,
)

__all__ = [
    "POSTGRES_SCHEMES",
    "PostgresStore",
    "SchemaTooNew",
    "check_postgres_url",
    "redact_url",
]

T = TypeVar("T")

#: The URL schemes libpq reads (a ``key=value`` string works too, but not as ``--db``).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: How many times a call is run again after losing a deadlock or a serialization race, or
#: after finding its prepared statement stale (another node migrated the schema).
RETRIES = 5

_RETRIED = ("40001", "40P01", "0A000", "26000")
_DEVICE_FIELDS = {"org": "text", "platform": "text", "os_version": "text", "supervised": "boolean"}
_DEVICE = msgspec.json.Decoder(Device)
_DEVICES = msgspec.json.Decoder(list[Device])
_OBJECT = msgspec.json.Decoder(dict[str, Any])
_TARGETS = msgspec.json.Decoder(list[tuple[str, str]])
_IDS = msgspec.json.Decoder(list[str])
_APP = msgspec.json.Decoder(App)
_ORG = msgspec.json.Decoder(Org)
_NOTIFICATION = msgspec.json.Decoder(Notification)
#: offers_exhausted(n) as the text around n, for GIVE_UP.
_EXHAUSTED = offers_exhausted(1_234_567).split("1234567")


_DEVICE_SESSION_COLUMNS = (
    "(SELECT row_to_json(d)::text FROM devices d WHERE id = $1), s.state, s.rev, s.expires_at"
)
_SESSION_JOIN = (
    " FROM (SELECT) AS one LEFT JOIN sessions s"
    " ON s.kind = $2 AND s.key = $3 AND s.expires_at >= $4"
)
#: One row: the device ($1) as JSON, or NULL; its session ($2, $3) live at $4, or NULLs.
_DEVICE_AND_SESSION = f"SELECT {_DEVICE_SESSION_COLUMNS}{_SESSION_JOIN}"
#: The same, whether anything is offered to the device (as HAS_OFFERED), and the delivery
#: $5 (none when NULL; as get_delivery).
_MESSAGE_CONTEXT = (
    f"SELECT {_DEVICE_SESSION_COLUMNS}, {sql.first_offered()},"
    " a.kind, a.body, a.state, a.session, a.status, a.result, a.offers"
    + _SESSION_JOIN
    + " LEFT JOIN LATERAL (SELECT c.kind, c.body, d.state, d.session, d.status, d.result,"
    " d.offers FROM deliveries d JOIN commands c ON c.id = d.command_id"
    " WHERE d.command_id = $5 AND d.device_id = $1) AS a ON true"
)


def _merged_facts(first: int) -> str:
    """The SET of a facts merge: the members of ``$first`` set, the keys of ``$first+1``
    removed (their values, from :func:`_facts_patch`)."""
    return f"facts = (facts || ${first}::jsonb) - ${first + 1}::text[]"


def _facts_patch(facts: Mapping[str, Any]) -> tuple[str, str]:
    """A merge's two parameters: the facts to set, the keys to remove (set to None)."""
    kept = {k: v for k, v in facts.items() if v is not None}
    return _json(kept), text_array(k for k, v in facts.items() if v is None)


def _device_session(row: Row) -> tuple[Device | None, StoredSession | None]:
    """The device and session of a row that starts with _DEVICE_SESSION_COLUMNS."""
    device, state, rev, expires_at = row[:4]
    session = None
    if state is not None:
        session = StoredSession(cast(bytes, state), cast(int, rev), cast(float, expires_at))
    return (None if device is None else _DEVICE.decode(cast(str, device))), session


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _declaration(row: Row) -> StoredDeclaration:
    seq, identifier, kind, payload, token, targets = row
    pairs = _TARGETS.decode(cast(str, targets)) if targets is not None else []
    return StoredDeclaration(
        cast(str, identifier),
        cast(str, kind),
        _OBJECT.decode(cast(str, payload)),
        cast(str, token),
        tuple(t for k, t in pairs if k == "device"),
        tuple(t for k, t in pairs if k == "org"),
        cast(int, seq),
    )


def _delivery(command_id: str, device_id: str, kind: str, body: bytes, row: Row) -> Delivery:
    state, session, status, result, offers = row
    return Delivery(
        command_id,
        device_id,
        kind,
        body,
        DeliveryState(cast(str, state)),
        cast("str | None", session),
        cast("bytes | None", result),
        cast("str | None", status),
        cast(int, offers),
    )


def _sent(device_id: str, session: str, rows: Sequence[Row]) -> list[Delivery]:
    """The deliveries take() handed out, from TAKEN's rows (one with no command: none)."""
    return [
        Delivery(
            cast(str, command_id),
            device_id,
            cast(str, kind),
            cast(bytes, body),
            DeliveryState.SENT,
            session,
            offers=cast(int, offers),
        )
        for command_id, kind, body, offers, *_ in rows
        if command_id is not None
    ]


def _notification_row(n: Notification, expected_rev: int | None) -> tuple[Param, ...]:
    row = (n.id, n.app_id, n.state, float(n.due_at), float(n.created_at), n.rev, _json(n))
    return row if expected_rev is None else (*row, expected_rev)


class PostgresStore(PostgresEvents, PostgresEnrollment):
    """The :class:`~mdmgate.storage.Store` on PostgreSQL; made by :meth:`open`. The
    enrollment role is a mixin (:mod:`.postgres_enrollment`), and so are the event log,
    webhooks, API tokens and command listing (:mod:`.postgres_events`)."""

    def __init__(self, dsn: str, pool_size: int) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: Pool | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = trio.Event()
        self._closing = trio.Event()
        self._closed = trio.Event()
        # The wake-ups of the change feed and the event log (see postgres_events).
        self._listener = False
        self._listening = False
        self._notified = 0
        self._wake = trio.Event()
        self._events_notified = 0
        self._events_wake = trio.Event()

    @classmethod
    async def open(cls, url: str = "", *, pool_size: int = 8) -> PostgresStore:
        """Connects to ``url`` (a libpq URL or ``key=value`` string; what it leaves out comes
        from the ``PG*`` environment variables) and brings the schema up to date, in the
        first schema of the ``search_path``. Raises :class:`~mdmgate.storage.pgwire.PgError`
        when the server cannot be reached, and :class:`SchemaTooNew` for a database migrated
        by a newer mdmgate. At most ``pool_size`` connections, and one more to LISTEN once
        :meth:`wait_for_changes` is called."""
        if pool_size < 1:
            raise ValueError("a pool needs at least one connection")
        store = cls(url, pool_size)
        trio.lowlevel.spawn_system_task(store._host, name="mdmgate-postgres")
        await store._ready.wait()
        try:
            async with store._connection() as conn:
                await migrate(conn)
        except BaseException:
            store._closing.set()
            with trio.CancelScope(shield=True):
                await store._closed.wait()
            raise
        return store

    async def _host(self) -> None:
        """Owns the pool (and its background recoveries) and the LISTEN task until closed."""
        try:
            async with (
                pgwire.open_pool(self._dsn, size=self._pool_size) as pool,
                trio.open_nursery() as nursery,
            ):
                self._pool, self._nursery = pool, nursery
                self._ready.set()
                await self._closing.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._pool = self._nursery = None
            self._ready.set()
            self._closed.set()

    async def aclose(self) -> None:
        self._closing.set()
        await self._closed.wait()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        if self._pool is None:
            raise RuntimeError("the store is closed")
        async with self._pool.connection() as conn:
            yield conn

    async def _call(self, op: Callable[[Connection], Awaitable[T]]) -> T:
        """``op`` on a pooled connection; run again when it lost a deadlock or found a
        prepared statement stale (each is rolled back whole, so running again is safe)."""
        attempt = 0
        while True:
            if self._pool is None:
                raise RuntimeError("the store is closed")
            try:
                # The lease itself, not the _connection generator: this runs on every call.
                async with self._pool.connection() as conn:
                    return await op(conn)
            except PgError as e:
                attempt += 1
                if e.sqlstate not in _RETRIED or attempt > RETRIES:
                    raise

    async def _fetch(self, query: str, *params: Param) -> list[Row]:
        return await self._call(lambda conn: conn.fetch(query, *params))

    async def _fetchval(self, query: str, *params: Param) -> Any:
        return await self._call(lambda conn: conn.fetchval(query, *params))

    async def _execute(self, query: str, *params: Param) -> int:
        """One statement, in a transaction of its own; the rows it changed."""
        return await self._call(lambda conn: conn.execute(query, *params))

    async def _write(self, statements: Sequence[Statement]) -> list[Result]:
        """One transaction, in one round trip."""
        return await self._call(lambda conn: conn.pipeline(statements))

    async def _rev(self, table: str, where: str, *params: Param) -> int | None:
        """The stored revision, for the message of a compare-and-set that failed."""
        value = await self._fetchval(f"SELECT rev FROM {table} WHERE {where}", *params)
        return None if value is None else int(value)

    # --- devices -------------------------------------------------------------------------

    async def upsert_devices(
        self, devices: Sequence[Device], *, events: Sequence[NewEvent] = ()
    ) -> int:
        appended = append(checked_events(events))
        # Written in id order (the last of a repeated id wins): concurrent upserts of
        # overlapping sets lock rows in the same order and cannot deadlock. The changes
        # are numbered in the order given.
        latest = {d.id: d for d in devices}
        write = (
            "INSERT INTO devices (id, platform, org, os_version, supervised, auth, facts)"
            " SELECT r.id, r.platform, r.org, r.os_version, r.supervised, r.auth, r.facts"
            " FROM jsonb_to_recordset($1::jsonb) AS r(id text, platform text, org text,"
            " os_version text, supervised boolean, auth jsonb, facts jsonb)"
            " ON CONFLICT (id) DO UPDATE SET platform = excluded.platform, org = excluded.org,"
            " os_version = excluded.os_version, supervised = excluded.supervised,"
            " auth = excluded.auth, facts = excluded.facts RETURNING id AS key"
        )
        if latest:
            rows = _json([latest[i] for i in sorted(latest)])
            statement = logged(write, "device", order="$2::text[]")
            await self._write([(statement, (rows, text_array(latest))), *appended])
        elif appended:
            await self._write(appended)
        return len(devices)

    async def get_device(self, device_id: str) -> Device | None:
        query = "SELECT row_to_json(d)::text FROM devices d WHERE id = $1"
        found = await self._fetchval(query, device_id)
        return None if found is None else _DEVICE.decode(found)

    async def get_devices(self, device_ids: Sequence[str]) -> dict[str, Device]:
        ids = list(dict.fromkeys(device_ids))
        if not ids:
            return {}
        query = "SELECT json_agg(d)::text FROM devices d WHERE id = ANY($1::text[])"
        found = await self._fetchval(query, text_array(ids))
        return {} if found is None else {d.id: d for d in _DEVICES.decode(found)}

    async def list_devices(self, after: str | None, limit: int) -> list[Device]:
        if limit <= 0:
            return []
        # ids are COLLATE "C": code-point order. Two statements, so that each plan starts
        # the index scan where the page starts.
        page = "SELECT json_agg(p ORDER BY p.id)::text FROM (SELECT * FROM devices {} LIMIT $1) p"
        if after is None:
            found = await self._fetchval(page.format("ORDER BY id"), limit)
        else:
            found = await self._fetchval(page.format("WHERE id > $2 ORDER BY id"), limit, after)
        return [] if found is None else _DEVICES.decode(found)

    async def set_auth(
        self, device_id: str, auth: Mapping[str, Any], *, events: Sequence[NewEvent] = ()
    ) -> bool:
        appended = append(checked_events(events))
        query = "UPDATE devices SET auth = $2::jsonb WHERE id = $1"
        if not appended:
            return await self._execute(query, device_id, _json(dict(auth))) > 0
        change = (refuse_unless(query + " RETURNING 1"), (device_id, _json(dict(auth))))
        return await self._reported([change, *appended])

    async def _reported(self, steps: Sequence[Statement]) -> bool:
        """Runs a change and its events (``steps``): False when the change refused itself
        (:data:`REFUSED_NOTHING`), and nothing of it was written."""
        try:
            await self._write(steps)
        except PgError as e:
            if e.sqlstate == REFUSED_NOTHING:
                return False
            raise
        return True

    async def merge_facts(
        self,
        device_id: str,
        facts: Mapping[str, Any],
        *,
        feed: bool = True,
        events: Sequence[NewEvent] = (),
    ) -> bool:
        appended = append(checked_events(events))
        write = f"UPDATE devices SET {_merged_facts(2)} WHERE id = $1 RETURNING id AS key"
        params = (device_id, *_facts_patch(facts))
        change = (logged(write, "device") if feed else write, params)
        if appended:
            return await self._reported([(REFUSE_UNKNOWN_DEVICE, (device_id,)), change, *appended])
        [result] = await self._write([change])
        return result.rowcount > 0

    async def update_device(
        self, device_id: str, fields: Mapping[str, Any], *, events: Sequence[NewEvent] = ()
    ) -> bool:
        unknown = sorted(set(fields) - set(_DEVICE_FIELDS))
        if unknown:
            raise ValueError(f"not a device field: {', '.join(unknown)}")
        for name in ("org", "platform"):
            if name in fields and not isinstance(fields[name], str):
                raise ValueError(f"device {name} must be a string")
        appended = append(checked_events(events))
        names = sorted(fields)
        if not names and not appended:
            return await self.get_device(device_id) is not None
        sets = ", ".join(f"{n} = ${i}::{_DEVICE_FIELDS[n]}" for i, n in enumerate(names, 2))
        write = f"UPDATE devices SET {sets or 'id = id'} WHERE id = $1 RETURNING id AS key"
        params = (device_id, *(fields[n] for n in names))
        change = (logged(write, "device"), params)
        if appended:
            return await self._reported([(REFUSE_UNKNOWN_DEVICE, (device_id,)), change, *appended])
        [result] = await self._write([change])
        return result.rowcount > 0

    # --- queues --------------------------------------------------------------------------

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
        appended = append(checked_events(events))
        ids = list(dict.fromkeys(device_ids))
        steps: list[Statement] = [(sql.REFUSE_UNKNOWN, (text_array(ids),))]
        if new:
            # The primary key decides between two callers choosing the same id at once.
            steps.append((sql.INSERT_COMMAND, (command_id, kind, body)))
            steps.append((sql.QUEUE, (command_id, text_array(ids))))
        else:
            steps += sql.queue(command_id, kind, body, ids)
        queued = len(steps) - 1
        try:
            results = await self._write([*steps, *appended])
        except PgError as e:
            if new and e.is_unique_violation and e.constraint == "commands_pkey":
                raise CommandExists(command_id) from None
            raise _refusal(e) from None
        return results[queued].rowcount

    async def take(
        self,
        device_id: str,
        session: str,
        limit: int,
        *,
        max_offers: int | None = None,
        delivered_event: bool = False,
    ) -> list[Delivery]:
        if limit <= 0:
            return []
        # Most check-ins find nothing queued: one indexed read answers them, without the
        # locking transaction (a delivery queued a moment later waits for the next take, as
        # it would had it been queued after the transaction).
        if not await self._fetchval(sql.HAS_OFFERED, device_id):
            return []
        steps: list[Statement] = [sql.TAKE_PLANS, (sql.TAKE_LOCK, (device_id,))]
        give_up: tuple[Param, ...] = (device_id, session, *_EXHAUSTED, max_offers)
        take: tuple[Param, ...] = (device_id, session, limit, max_offers is not None)
        if delivered_event:
            # Reported in the statements that give up and hand out (what they wrote).
            now = time.time()
            if max_offers is not None:
                steps.append((GIVE_UP_REPORTED, (*give_up, now)))
            steps.append((TAKE_REPORTED, (*take, now)))
        else:
            if max_offers is not None:
                steps.append((sql.GIVE_UP, give_up))
            steps.append((sql.TAKE, take))
        return _sent(device_id, session, (await self._write(steps))[-1].rows)

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
        appended = append(checked_events(events))
        params = (device_id, command_id, DeliveryState(state).value, status, result)
        if not appended:
            return await self._execute(sql.ANSWER, *params) > 0
        answer = refuse_unless(sql.ANSWER + " RETURNING 1")
        return await self._reported([(answer, params), *appended])

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
        if limit <= 0:
            answered = await self.record_result(
                device_id, command_id, state, status, result, events=events
            )
            return answered, []
        # One transaction (see ANSWER_LOCK). The queue is locked before the answer's row,
        # as take() locks it before the rows it hands out: the two cannot deadlock.
        value = DeliveryState(state).value
        reported = event_array(checked_events(events))
        capped = max_offers is not None
        take = (device_id, session, limit, capped, max_offers, *_EXHAUSTED, reported)
        _, _, answer, taken = await self._write(
            [
                sql.TAKE_PLANS,
                (ANSWER_LOCK, (device_id, session, command_id, value)),
                (ANSWER_MARKED, (device_id, command_id, value, status, result)),
                (ANSWERED_TAKE, (*take, time.time(), delivered_event)),
            ]
        )
        return answer.rows[0][0] == "1", _sent(device_id, session, taken.rows)

    async def command_status(self, command_id: str) -> CommandStatus | None:
        statements: list[Statement] = [
            ("SELECT kind, body FROM commands WHERE id = $1", (command_id,)),
            (
                "SELECT device_id, state, session, status, result, offers FROM deliveries"
                " WHERE command_id = $1 ORDER BY seq",
                (command_id,),
            ),
        ]
        command, rows = await self._call(
            lambda conn: conn.pipeline(statements, isolation="repeatable read")
        )
        if not command.rows:
            return None
        kind, body = cast(tuple[str, bytes], command.rows[0])
        found = (_delivery(command_id, cast(str, r[0]), kind, body, r[1:]) for r in rows.rows)
        return CommandStatus(command_id, kind, tuple(found))

    async def deliveries(self, device_id: str, states: Collection[DeliveryState]) -> list[Delivery]:
        wanted = text_array(sorted(DeliveryState(s).value for s in states))
        rows = await self._fetch(
            "SELECT d.command_id, c.kind, c.body, d.state, d.session, d.status, d.result,"
            " d.offers FROM deliveries d JOIN commands c ON c.id = d.command_id"
            " WHERE d.device_id = $1 AND d.state = ANY($2::text[]) ORDER BY d.seq",
            device_id,
            wanted,
        )
        return [
            _delivery(cast(str, r[0]), device_id, cast(str, r[1]), cast(bytes, r[2]), r[3:])
            for r in rows
        ]

    async def get_delivery(self, device_id: str, command_id: str) -> Delivery | None:
        rows = await self._fetch(
            "SELECT c.kind, c.body, d.state, d.session, d.status, d.result, d.offers"
            " FROM deliveries d JOIN commands c ON c.id = d.command_id"
            " WHERE d.command_id = $1 AND d.device_id = $2",
            command_id,
            device_id,
        )
        if not rows:
            return None
        r = rows[0]
        return _delivery(command_id, device_id, cast(str, r[0]), cast(bytes, r[1]), r[2:])

    async def cancel_open(
        self, device_id: str, status: str, *, events: Sequence[NewEvent] = ()
    ) -> int:
        appended = append(checked_events(events))
        query = (
            "UPDATE deliveries SET state = 'error', status = $2, updated = now()"
            f" WHERE device_id = $1 AND state IN {OPEN}"
        )
        results = await self._write([(query, (device_id, status)), *appended])
        return results[0].rowcount

    async def queue_depth(self) -> int:
        return int(await self._fetchval(f"SELECT count(*) FROM deliveries WHERE state IN {OPEN}"))

    # --- declarations --------------------------------------------------------------------

    async def put_declaration(self, declaration: StoredDeclaration) -> None:
        d = declaration
        targets = [("device", t) for t in dict.fromkeys(d.devices)]
        targets += [("org", t) for t in dict.fromkeys(d.orgs)]
        kinds, names = text_array(k for k, _ in targets), text_array(t for _, t in targets)
        await self._write(
            [
                # An update keeps its place (seq) in the assignment order.
                (
                    "INSERT INTO declarations (identifier, type, payload, server_token)"
                    " VALUES ($1, $2, $3::json, $4) ON CONFLICT (identifier) DO UPDATE SET"
                    " type = excluded.type, payload = excluded.payload,"
                    " server_token = excluded.server_token",
                    (d.identifier, d.type, _json(d.payload), d.server_token),
                ),
                ("DELETE FROM declaration_targets WHERE identifier = $1", (d.identifier,)),
                (
                    "INSERT INTO declaration_targets (identifier, kind, target, pos)"
                    " SELECT $1, t.kind, t.target, t.n"
                    " FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(kind, target, n)",
                    (d.identifier, kinds, names),
                ),
            ]
        )

    async def get_declaration(self, identifier: str) -> StoredDeclaration | None:
        query = sql.SELECT_DECLARATIONS.format(where="d.identifier = $1")
        rows = await self._fetch(query, identifier)
        return _declaration(rows[0]) if rows else None

    async def declarations_for(self, device_id: str, org: str) -> list[StoredDeclaration]:
        # The org paths at or above the device's: "/", "/acme", "/acme/sales", ...
        parts = [p for p in org.split("/") if p]
        orgs = ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
        query = sql.SELECT_DECLARATIONS.format(
            where="d.identifier IN (SELECT identifier FROM declaration_targets"
            " WHERE (kind = 'device' AND target = $1)"
            " OR (kind = 'org' AND target = ANY($2::text[])))"
        )
        return [_declaration(r) for r in await self._fetch(query, device_id, text_array(orgs))]

    # --- catalogue -----------------------------------------------------------------------

    async def put_app(self, app: App, *, expected_rev: int | None) -> App:
        stored = msgspec.structs.replace(app, rev=1 if expected_rev is None else expected_rev + 1)
        if expected_rev is None:
            write = (
                "INSERT INTO apps (id, rev, doc) VALUES ($1, $2, $3::json)"
                " ON CONFLICT (id) DO NOTHING RETURNING id AS key"
            )
            params: tuple[Param, ...] = (app.id, stored.rev, _json(stored))
        else:
            write = (
                "UPDATE apps SET rev = $2, doc = $3::json WHERE id = $1 AND rev = $4"
                " RETURNING id AS key"
            )
            params = (app.id, stored.rev, _json(stored), expected_rev)
        [result] = await self._write([(logged(write, "app"), params)])
        if result.rowcount == 0:
            stored_rev = await self._rev("apps", "id = $1", app.id)
            raise RevisionConflict(f"app {app.id!r}", expected_rev, stored_rev)
        return stored

    async def get_app(self, app_id: str) -> App | None:
        doc = await self._fetchval("SELECT doc FROM apps WHERE id = $1", app_id)
        return None if doc is None else _APP.decode(doc)

    async def list_apps(self) -> list[App]:
        rows = await self._fetch("SELECT doc FROM apps ORDER BY id")
        return [_APP.decode(cast(str, r[0])) for r in rows]

    async def put_org(self, org: Org) -> None:
        write = (
            "INSERT INTO orgs (path, doc) VALUES ($1, $2::json) ON CONFLICT (path)"
            " DO UPDATE SET doc = excluded.doc RETURNING path AS key"
        )
        await self._write([(logged(write, "org"), (org.path, _json(org)))])

    async def list_orgs(self) -> list[Org]:
        rows = await self._fetch("SELECT doc FROM orgs ORDER BY path")
        return [_ORG.decode(cast(str, r[0])) for r in rows]

    async def fan_out(
        self,
        batches: Sequence[CommandBatch],
        *,
        licences: LicenceGrant | None = None,
        notification: Notification | None = None,
        expected_rev: int | None = None,
        events: Sequence[NewEvent] = (),
    ) -> int:
        appended = append(checked_events(events))
        named = fan_out_devices(batches, licences)
        steps: list[Statement] = []
        if named:
            steps.append((sql.REFUSE_UNKNOWN, (text_array(named),)))
        if notification is not None:
            rev = 1 if expected_rev is None else expected_rev + 1
            row = _notification_row(msgspec.structs.replace(notification, rev=rev), expected_rev)
            steps.append((sql.put_notification(expected_rev), row))
        first = len(steps)
        for b in batches:
            steps += sql.queue(b.command_id, b.kind, b.body, dict.fromkeys(b.device_ids))
        queued = range(first + 1, len(steps), 2)  # each batch's deliveries
        if licences is not None:
            ids = dict.fromkeys(licences.device_ids)
            steps += sql.grant(licences.app_id, licences.total, ids)
        # The append is last: its lock is held to the commit (see postgres_events).
        steps += appended
        if not steps:
            return 0
        try:
            results = await self._write(steps)
        except PgError as e:
            if e.sqlstate == REFUSED_REVISION and notification is not None:
                stored_rev = await self._rev("notifications", "id = $1", notification.id)
                what = f"notification {notification.id!r}"
                raise RevisionConflict(what, expected_rev, stored_rev) from None
            if e.sqlstate == REFUSED_LICENCES and licences is not None:
                needed = int(e.detail or 0)
                raise LicencesExhausted(licences.app_id, licences.total, needed) from None
            raise _refusal(e) from None
        return sum(results[i].rowcount for i in queued)

    async def licence_holders(self, app_id: str) -> list[str]:
        query = "SELECT device_id FROM licences WHERE app_id = $1 ORDER BY device_id"
        return [cast(str, r[0]) for r in await self._fetch(query, app_id)]

    async def release_licences(self, app_id: str, device_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(device_ids))
        if not ids:
            return 0
        write = (
            "DELETE FROM licences WHERE app_id = $1 AND device_id = ANY($2::text[])"
            " RETURNING app_id AS key"
        )
        [result] = await self._write([(logged(write, "licence"), (app_id, text_array(ids)))])
        return int(cast(int, result.rows[0][0])) if result.rows else 0

    # --- notifications -------------------------------------------------------------------

    async def put_notification(
        self,
        notification: Notification,
        *,
        expected_rev: int | None = None,
        events: Sequence[NewEvent] = (),
    ) -> Notification:
        appended = append(checked_events(events))
        stored = msgspec.structs.replace(
            notification, rev=1 if expected_rev is None else expected_rev + 1
        )
        row = _notification_row(stored, expected_rev)
        try:
            await self._write([(sql.put_notification(expected_rev), row), *appended])
        except PgError as e:
            if e.sqlstate != REFUSED_REVISION:
                raise
            stored_rev = await self._rev("notifications", "id = $1", notification.id)
            what = f"notification {notification.id!r}"
            raise RevisionConflict(what, expected_rev, stored_rev) from None
        return stored

    async def get_notification(self, notification_id: str) -> Notification | None:
        doc = await self._fetchval("SELECT doc FROM notifications WHERE id = $1", notification_id)
        return None if doc is None else _NOTIFICATION.decode(doc)

    async def list_notifications(self, app_id: str | None = None) -> list[Notification]:
        if app_id is None:
            rows = await self._fetch("SELECT doc FROM notifications ORDER BY created_at, id")
        else:
            query = "SELECT doc FROM notifications WHERE app_id = $1 ORDER BY created_at, id"
            rows = await self._fetch(query, app_id)
        return [_NOTIFICATION.decode(cast(str, r[0])) for r in rows]

    async def due_notifications(self, now: float) -> list[Notification]:
        rows = await self._fetch(
            f"SELECT doc FROM notifications WHERE state IN {PENDING} AND due_at <= $1"
            " ORDER BY due_at, created_at, id",
            float(now),
        )
        return [_NOTIFICATION.decode(cast(str, r[0])) for r in rows]

    async def next_due(self) -> float | None:
        due = await self._fetchval(
            f"SELECT due_at FROM notifications WHERE state IN {PENDING} ORDER BY due_at LIMIT 1"
        )
        return None if due is None else float(due)

    # --- protocol sessions ---------------------------------------------------------------
    # Expired (expires_at before now) is gone for every reader and compare-and-set, whether
    # or not expire_sessions dropped it yet.

    async def load_session(self, kind: str, key: str) -> StoredSession | None:
        rows = await self._fetch(
            "SELECT state, rev, expires_at FROM sessions"
            " WHERE kind = $1 AND key = $2 AND expires_at >= $3",
            kind,
            key,
            time.time(),
        )
        if not rows:
            return None
        state, rev, expires_at = rows[0]
        return StoredSession(cast(bytes, state), cast(int, rev), cast(float, expires_at))

    async def device_and_session(
        self, device_id: str, kind: str, key: str
    ) -> tuple[Device | None, StoredSession | None]:
        rows = await self._fetch(_DEVICE_AND_SESSION, device_id, kind, key, time.time())
        return _device_session(rows[0])

    async def message_context(
        self, device_id: str, kind: str, key: str, *, command_id: str | None = None
    ) -> MessageContext:
        rows = await self._fetch(_MESSAGE_CONTEXT, device_id, kind, key, time.time(), command_id)
        device, session = _device_session(rows[0])
        offered, command_kind, body, *delivery = rows[0][4:]
        answered = None
        if command_id is not None and command_kind is not None:
            kind_text, body_bytes = cast(str, command_kind), cast(bytes, body)
            answered = _delivery(command_id, device_id, kind_text, body_bytes, tuple(delivery))
        return MessageContext(device, session, bool(offered), answered)

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
        if expected_rev is None:
            # A new exchange supersedes whatever was saved under the key.
            query = (
                "INSERT INTO sessions (kind, key, state, rev, expires_at)"
                " VALUES ($1, $2, $3, 1, $4) ON CONFLICT (kind, key) DO UPDATE"
                " SET state = excluded.state, rev = 1, expires_at = excluded.expires_at"
                " RETURNING rev"
            )
            params: tuple[Param, ...] = (kind, key, bytes(state), float(expires_at))
        else:
            query = (
                "UPDATE sessions SET state = $3, rev = rev + 1, expires_at = $4"
                " WHERE kind = $1 AND key = $2 AND rev = $5 AND expires_at >= $6 RETURNING rev"
            )
            params = (kind, key, bytes(state), float(expires_at), expected_rev, time.time())
        if facts is not None:
            # The same statement: merged only when the session was saved (a data-modifying
            # WITH runs whatever reads it), one round trip for both.
            n = len(params)
            query = (
                f"WITH saved AS ({query}), merged AS (UPDATE devices SET {_merged_facts(n + 2)}"
                f" WHERE id = ${n + 1} AND EXISTS (SELECT FROM saved))"
                " SELECT rev FROM saved"
            )
            params = (*params, facts.device_id, *_facts_patch(facts.facts))
        rev = await self._fetchval(query, *params)
        if rev is None:
            where = "kind = $1 AND key = $2 AND expires_at >= $3"
            stored = await self._rev("sessions", where, kind, key, time.time())
            raise RevisionConflict(f"{kind} session {key!r}", expected_rev, stored)
        return int(rev)

    async def drop_session(self, kind: str, key: str, *, expected_rev: int | None = None) -> bool:
        query = (
            "DELETE FROM sessions WHERE kind = $1 AND key = $2 AND expires_at >= $4"
            " AND ($3::int4 IS NULL OR rev = $3::int4)"
        )
        return await self._execute(query, kind, key, expected_rev, time.time()) > 0

    async def expire_sessions(self, now: float) -> int:
        return await self._execute("DELETE FROM sessions WHERE expires_at < $1", float(now))

    # --- leases --------------------------------------------------------------------------

    async def claim_lease(self, name: str, holder: str, *, now: float, until: float) -> bool:
        query = (
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $4)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until"
            " WHERE leases.holder = excluded.holder OR leases.until <= $3"
        )
        return await self._execute(query, name, holder, float(now), float(until)) > 0

    async def release_lease(self, name: str, holder: str) -> bool:
        query = "DELETE FROM leases WHERE name = $1 AND holder = $2"
        return await self._execute(query, name, holder) > 0

    async def live_leases(self, prefix: str, *, now: float) -> list[str]:
        query = "SELECT holder FROM leases WHERE starts_with(name, $1) AND until > $2 ORDER BY name"
        return [cast(str, r[0]) for r in await self._fetch(query, prefix, float(now))]


def check_postgres_url(url: str) -> None:
    """Raises ``ValueError`` with libpq's reason when it cannot parse ``url``."""
    try:
        pq.Conninfo.parse(url.encode())
    except psycopg.Error as e:
        reason = str(e).removeprefix("invalid connection string: ").strip()
        raise ValueError(f"invalid PostgreSQL URL {redact_url(url)!r}: {reason}") from None


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    with contextlib.suppress(ValueError):
        parts = urllib.parse.urlsplit(url)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rpartition("@")[2]
            return parts._replace(netloc=f"{user}:***@{host}").geturl()
    return url


def _refusal(e: PgError) -> Exception:
    """The domain error for an ``mdmgate_refuse`` that names no context, else ``e``."""
    if e.sqlstate == REFUSED_UNKNOWN:
        return UnknownDevices(_IDS.decode(e.detail or "[]"))
    return e
