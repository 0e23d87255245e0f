"""PostgreSQL for Trio: libpq driven in non-blocking mode through psycopg's ``psycopg.pq``.

Why this and not psycopg's connections: the sync API needs a thread per query (262-285 µs of
client CPU per point read in issue 15's probe, and a cancelled task waits for its query), and
the async API needs asyncio or psycopg's undocumented internals. Here a request is queued
with libpq's non-blocking calls and the task waits on libpq's socket with
``trio.lowlevel.wait_readable``/``wait_writable`` (44-74 µs per read in the same probe).

* :func:`connect` takes a libpq URL or ``key=value`` string; what it leaves out comes from the
  ``PG*`` environment variables and libpq's defaults. The handshake is non-blocking and TCP
  host names are resolved by Trio and handed to libpq as ``hostaddr``, so no libpq call
  blocks the Trio thread (a ``service`` file's host is the exception: libpq resolves it).
* Every request goes out in pipeline mode, ending with one Sync: a statement is prepared
  (named, cached per connection) in the same round trip as its first execution, and
  :meth:`Connection.pipeline` sends BEGIN, the statements and COMMIT in one round trip.
  :meth:`Connection.transaction` is the interactive form (read, decide, write); its BEGIN
  travels with its first statement.
* Parameters: ``str``, ``int``, ``float``, ``bool`` go as text with no declared type, so the
  server types them from context as it types a literal (``$1::int8`` where the context does
  not say); ``bytes`` go as binary ``bytea``; ``None`` is NULL. Results come back in binary
  and are converted for the small, explicit set of types in ``_DECODERS``; any other type is
  refused with :class:`UnsupportedType` naming the column: cast it in the query.
* :func:`open_pool` lends at most ``size`` connections. A connection whose request was
  interrupted (its task cancelled) is never lent again as is: a background task, shielded and
  time-bounded, cancels the query on the server, reads the rest of its results, rolls back
  and puts it back, or closes it. Connections the server dropped are replaced.
* :meth:`Connection.notifications` delivers LISTEN/NOTIFY to a Trio task.

A write cancelled after its COMMIT was sent may or may not have committed: make such writes
idempotent.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Literal, NamedTuple, Self

import psycopg
import trio
from psycopg import pq

from mdmgate.errors import MdmgateError

log = logging.getLogger(__name__)

Param = str | int | float | bytes | bytearray | memoryview | None
Value = str | int | float | bool | bytes | None
Row = tuple[Value, ...]
Isolation = Literal["read committed", "repeatable read", "serializable"]
PGconn = pq.abc.PGconn
PGresult = pq.abc.PGresult

# Beyond this many prepared statements a connection runs new ones unnamed (still one round
# trip): the store's statements are a fixed set, so only generated SQL ever gets here.
MAX_PREPARED = 256
# How long a shielded clean-up may take before the connection is closed instead.
RECOVER_TIMEOUT = 5.0

_OK = pq.ConnStatus.OK
_BAD = pq.ConnStatus.BAD
_IDLE = pq.TransactionStatus.IDLE
_INERROR = pq.TransactionStatus.INERROR
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_FATAL = pq.ExecStatus.FATAL_ERROR
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_BINARY = pq.Format.BINARY
_F = pq.DiagnosticField
_BYTEA = 17


class PgError(MdmgateError):
    """An error reported by PostgreSQL or libpq.

    ``sqlstate`` is the five-character SQLSTATE; connection failures use ``08001`` (cannot
    connect: libpq does not pass on the server's code) or ``08006`` (connection lost), and
    errors found on this side (:class:`UnsupportedType`) have none.
    """

    def __init__(
        self,
        message: str,
        sqlstate: str | None = None,
        *,
        detail: str | None = None,
        hint: str | None = None,
        constraint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint
        self.constraint = constraint

    def __str__(self) -> str:
        text = f"[{self.sqlstate}] {self.message}" if self.sqlstate else self.message
        if self.detail:
            text += f"\nDETAIL: {self.detail}"
        if self.hint:
            text += f"\nHINT: {self.hint}"
        return text

    @property
    def is_serialization_failure(self) -> bool:
        """The transaction lost a race (40001) or a deadlock (40P01): run it again."""
        return self.sqlstate in ("40001", "40P01")

    @property
    def is_unique_violation(self) -> bool:
        """A unique or primary key constraint refused the row (23505); see ``constraint``."""
        return self.sqlstate == "23505"


class ConnectionLost(PgError):
    """The connection is unusable (closed, dropped by the server, or the network failed)."""


class UnsupportedType(PgError):
    """A result column of a type this module does not convert."""


class Result(NamedTuple):
    rows: list[Row]
    rowcount: int  # rows returned, or affected by INSERT/UPDATE/DELETE


class Notification(NamedTuple):
    channel: str
    payload: str
    pid: int  # the backend that sent it


# --- values ----------------------------------------------------------------------------------

_float4 = struct.Struct("!f").unpack
_float8 = struct.Struct("!d").unpack
_PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01, PostgreSQL's epoch, in Unix µs
_TS_INFINITY = (1 << 63) - 1


def _int(v: bytes) -> int:
    return int.from_bytes(v, "big", signed=True)


def _text(v: bytes) -> str:
    return v.decode()


def _jsonb(v: bytes) -> str:
    # Binary jsonb is a version byte (1) and the JSON text; callers parse it themselves.
    if v[:1] != b"\x01":
        raise UnsupportedType(f"jsonb binary format version {v[:1]!r} is not supported")
    return v[1:].decode()


def _timestamptz(v: bytes) -> float:
    # µs since 2000-01-01 UTC, returned as Unix seconds (the stores keep times as floats).
    us = _int(v)
    if us in (_TS_INFINITY, -_TS_INFINITY - 1):
        return float("inf") if us > 0 else float("-inf")
    return (us + _PG_EPOCH_US) / 1e6


# By type OID. Text: name, text, json, unknown (an untyped literal), bpchar, varchar.
_DECODERS: dict[int, Callable[[bytes], Value]] = {
    **dict.fromkeys((19, 25, 114, 705, 1042, 1043), _text),
    **dict.fromkeys((20, 21, 23), _int),  # int8, int2, int4
    16: lambda v: v == b"\x01",  # bool
    17: bytes,  # bytea
    26: lambda v: int.from_bytes(v, "big"),  # oid
    700: lambda v: _float4(v)[0],  # float4
    701: lambda v: _float8(v)[0],  # float8
    1184: _timestamptz,
    2278: lambda v: None,  # void (what pg_sleep returns)
    3802: _jsonb,
}
# Names for the refusal message only.
_TYPE_NAMES = {1082: "date", 1114: "timestamp", 1186: "interval", 1700: "numeric", 2950: "uuid"}


def _encode(
    params: Sequence[Param],
) -> tuple[tuple[int, ...], list[bytes | None], list[int] | None]:
    """(type OIDs, values, formats) for libpq; OID 0 lets the server type the value."""
    oids: list[int] = []
    values: list[bytes | None] = []
    for i, p in enumerate(params, 1):
        oid = 0
        if p is None:
            value = None
        elif isinstance(p, str):
            # libpq sends text values as C strings: a NUL would silently cut the value short.
            if "\x00" in p:
                raise ValueError(f"parameter ${i}: text cannot contain NUL; use bytes")
            try:
                value = p.encode()
            except UnicodeEncodeError as e:
                raise ValueError(f"parameter ${i}: text is not valid Unicode ({e.reason})") from e
        elif isinstance(p, bool):
            value = b"t" if p else b"f"
        elif isinstance(p, int):
            value = b"%d" % p
        elif isinstance(p, float):
            value = float.__repr__(p).encode()  # shortest exact form; PostgreSQL reads inf/nan
        elif isinstance(p, bytes | bytearray | memoryview):
            oid, value = _BYTEA, bytes(p)
        else:
            raise TypeError(
                f"parameter ${i}: {type(p).__name__} is not supported "
                "(str, int, float, bool, bytes or None)"
            )
        oids.append(oid)
        values.append(value)
    formats = [int(o == _BYTEA) for o in oids] if _BYTEA in oids else None
    return tuple(oids), values, formats


def _decode(res: PGresult) -> Result:
    if res.status != _TUPLES_OK:
        return Result([], res.command_tuples or 0)
    decoders: list[Callable[[bytes], Value]] = []
    for c in range(res.nfields):
        oid = res.ftype(c)
        decoder = _DECODERS.get(oid)
        if decoder is None:
            column = (res.fname(c) or b"?").decode()
            name = _TYPE_NAMES.get(oid, f"OID {oid}")
            raise UnsupportedType(
                f'column "{column}" has type {name}, which pgwire does not convert: cast it in '
                "the query (to ::text, ::float8, ::int8 ...)"
            )
        decoders.append(decoder)
    get, cols = res.get_value, range(res.nfields)
    rows = [
        tuple([None if (v := get(r, c)) is None else decoders[c](v) for c in cols])
        for r in range(res.ntuples)
    ]
    return Result(rows, len(rows))


def _error(res: PGresult) -> PgError:
    def field(code: pq.DiagnosticField) -> str | None:
        value = res.error_field(code)
        return value.decode(errors="replace") if value else None

    return PgError(
        field(_F.MESSAGE_PRIMARY) or res.get_error_message(),
        field(_F.SQLSTATE),
        detail=field(_F.MESSAGE_DETAIL),
        hint=field(_F.MESSAGE_HINT),
        constraint=field(_F.CONSTRAINT_NAME),
    )


def _begin_sql(isolation: Isolation | None) -> str:
    if isolation is None:
        return "BEGIN"
    if isolation not in ("read committed", "repeatable read", "serializable"):
        raise ValueError(f"unknown isolation level {isolation!r}")
    return f"BEGIN ISOLATION LEVEL {isolation.upper()}"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- connecting ------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def _addresses(host: str) -> list[str]:
    """The hostaddr entries for one libpq host entry ("" for a socket directory)."""
    if not host or host.startswith(("/", "@")):
        return [""]
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return [host]
    try:
        infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_STREAM)
    except OSError as e:
        raise PgError(f'could not resolve host name "{host}": {e}', "08001") from e
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_conninfo(dsn: str = "") -> str:
    """``dsn`` as a ``key=value`` string, with every TCP host name resolved (by Trio).

    Each address of a name becomes one more libpq host entry (``host`` kept for TLS and
    ``.pgpass``, ``hostaddr`` set), so libpq tries them in turn as it would after its own
    lookup. ``PGHOST``/``PGPORT`` are read when the string names no host/port.
    """
    try:
        options = pq.Conninfo.parse(dsn.encode())
    except psycopg.Error as e:
        raise PgError(f"invalid connection string: {e}", "08001") from e
    opts = {o.keyword.decode(): o.val.decode() for o in options if o.val is not None}
    opts["client_encoding"] = "UTF8"  # results are decoded as UTF-8
    opts.setdefault("fallback_application_name", "mdmgate")
    hosts = opts.get("host", os.environ.get("PGHOST", ""))
    if hosts and "hostaddr" not in opts and "PGHOSTADDR" not in os.environ:
        names = hosts.split(",")
        port_list = opts.get("port", os.environ.get("PGPORT", "")).split(",")
        ports = port_list * len(names) if len(port_list) == 1 else port_list
        if len(ports) == len(names):  # otherwise libpq reports the mismatch itself
            entries = [
                (n, a, p) for n, p in zip(names, ports, strict=True) for a in await _addresses(n)
            ]
            opts["host"] = ",".join(e[0] for e in entries)
            if any(e[1] for e in entries):  # "" entries: socket directories
                opts["hostaddr"] = ",".join(e[1] for e in entries)
            if any(e[2] for e in entries):
                opts["port"] = ",".join(e[2] for e in entries)
    return " ".join(f"{key}={_quote(value)}" for key, value in opts.items())


def _connect_error(pg: PGconn) -> PgError:
    message = pg.get_error_message().strip() or "connection failed"
    return PgError(message, "08001")


async def _handshake(conninfo: str) -> PGconn:
    pg = pq.PGconn.connect_start(conninfo.encode())
    try:
        while True:
            if pg.status == _BAD:
                raise _connect_error(pg)
            state = pg.connect_poll()
            if state == pq.PollingStatus.OK:
                pg.nonblocking = 1
                return pg
            # The socket can change between polls (libpq tries the hosts in turn): re-read it.
            if state == pq.PollingStatus.READING:
                await trio.lowlevel.wait_readable(pg.socket)
            elif state == pq.PollingStatus.WRITING:
                await trio.lowlevel.wait_writable(pg.socket)
            else:
                raise _connect_error(pg)
    except psycopg.Error as e:
        pg.finish()
        raise PgError(str(e), "08001") from e
    except BaseException:
        pg.finish()
        raise


async def connect(dsn: str = "", *, timeout: float = 10.0) -> Connection:
    """Open a connection; ``timeout`` bounds name resolution and the handshake together."""
    with trio.move_on_after(timeout):
        return Connection(await _handshake(await resolve_conninfo(dsn)))
    raise PgError(f"could not connect within {timeout:g} s", "08001")


# --- connections -----------------------------------------------------------------------------

_Encoded = tuple[str, tuple[int, ...], list[bytes | None], list[int] | None]


class Connection:
    """One server session, used by one task at a time (another gets ``trio.BusyResourceError``).

    A request interrupted by cancellation leaves results in flight; the connection is then
    brought back (cancel on the server, drain, roll back) before its next use, or by the pool
    in the background. Close it with :meth:`close` or ``async with``.
    """

    def __init__(self, pg: PGconn) -> None:
        self._pg = pg
        self._fd = pg.socket
        self._statements: dict[tuple[str, tuple[int, ...]], bytes] = {}
        self._names = itertools.count()
        self._busy = False  # a request was sent and its results are not all read
        self._using = False  # a task is inside an operation
        self._begin: str | None = None  # a transaction's BEGIN, not sent yet
        self._in_tx = False
        self.closed = False
        pg.notice_handler = self._on_notice

    def _on_notice(self, res: PGresult) -> None:
        severity = res.error_field(_F.SEVERITY_NONLOCALIZED) or b""
        message = (res.error_field(_F.MESSAGE_PRIMARY) or b"").decode(errors="replace")
        log.debug("postgres %s: %s", severity.decode(errors="replace"), message)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(RuntimeError):  # outside Trio nothing can be waiting
            trio.lowlevel.notify_closing(self._fd)  # wakes a task waiting on the socket
        self._pg.finish()

    @property
    def backend_pid(self) -> int:
        return self._pg.backend_pid

    @property
    def in_transaction(self) -> bool:
        return not self.closed and (self._in_tx or self._pg.transaction_status != _IDLE)

    # The public calls. Params are positional: ``fetch("... WHERE id = $1", device_id)``.

    async def execute(self, sql: str, *params: Param) -> int:
        """Run one statement; the number of rows it affected (or returned)."""
        return (await self._execute([(sql, params)]))[0].rowcount

    async def fetch(self, sql: str, *params: Param) -> list[Row]:
        return (await self._execute([(sql, params)]))[0].rows

    async def fetchrow(self, sql: str, *params: Param) -> Row | None:
        rows = (await self._execute([(sql, params)]))[0].rows
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *params: Param) -> Value:
        """The first column of the first row; None when there is no row."""
        rows = (await self._execute([(sql, params)]))[0].rows
        return rows[0][0] if rows else None

    async def pipeline(
        self,
        statements: Sequence[tuple[str, Sequence[Param]]],
        *,
        isolation: Isolation | None = None,
    ) -> list[Result]:
        """Run ``statements`` as one transaction in one round trip: BEGIN, them, COMMIT.

        If one fails, none takes effect and its error is raised; the connection stays usable.
        Inside :meth:`transaction` they join the open transaction instead.
        """
        if self._in_tx or (len(statements) == 1 and isolation is None):
            # One statement alone is a transaction of its own: BEGIN and COMMIT around it
            # would cost the server two more statements for nothing.
            return await self._execute(statements)
        wrapped = [(_begin_sql(isolation), ()), *statements, ("COMMIT", ())]
        try:
            return (await self._execute(wrapped))[1:-1]
        except ConnectionLost:
            raise
        except PgError:
            # An explicit transaction stays open (failed) past the Sync: end it.
            if not self.closed and not self._busy and self._pg.transaction_status != _IDLE:
                await self._execute([("ROLLBACK", ())])
            raise

    def transaction(self, isolation: Isolation | None = None) -> Transaction:
        """``async with conn.transaction():`` commits on success, rolls back on an exception."""
        return Transaction(self, _begin_sql(isolation))

    async def execute_script(self, sql: str) -> None:
        """Run several ``;``-separated statements without parameters (schema migrations)."""
        await self._claim()
        try:
            if self._begin is not None:
                sql, self._begin = f"{self._begin};{sql}", None
            try:
                self._pg.send_query(sql.encode())
                self._busy = True
                await self._flush()
                error = None
                while (res := await self._next_result()) is not None:
                    if res.status == _FATAL and error is None:
                        error = _error(res)
                self._busy = False
            except psycopg.Error as e:
                raise self._lost(e) from e
            if error is not None:
                raise error
        finally:
            self._using = False

    async def listen(self, *channels: str) -> None:
        await self.execute_script("".join(f"LISTEN {_identifier(c)};" for c in channels))

    async def notifications(self) -> AsyncIterator[Notification]:
        """Notifications for the channels this connection listens to, as they arrive.

        Use a dedicated connection: a query from another task while one iterates here fails
        with ``trio.BusyResourceError``. Ends when the connection is closed.
        """
        pg = self._pg
        while not self.closed:
            note = pg.notifies()
            if note is not None:
                yield Notification(note.relname.decode(), note.extra.decode(), note.be_pid)
                continue
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:
                return
            try:
                pg.consume_input()
            except psycopg.Error as e:
                raise self._lost(e) from e

    # --- the machinery ---

    async def _claim(self) -> None:
        """Mark the connection in use by this task; first recover it if a cancelled request
        left results in flight."""
        if self._using:
            raise trio.BusyResourceError("another task is using this PostgreSQL connection")
        if self.closed:
            raise ConnectionLost("the connection is closed", "08003")
        self._using = True
        if self._busy:
            # Recovery forgets any transaction; keep the one this call may be opening.
            begin, in_tx = self._begin, self._in_tx
            try:
                recovered = await self._recover(RECOVER_TIMEOUT)
            finally:
                self._using = False
            if not recovered:
                raise ConnectionLost("lost while recovering from a cancelled request", "08006")
            self._using, self._begin, self._in_tx = True, begin, in_tx

    async def _execute(self, statements: Sequence[tuple[str, Sequence[Param]]]) -> list[Result]:
        await self._claim()
        try:
            return await self._run(statements)
        finally:
            self._using = False

    async def _run(self, statements: Sequence[tuple[str, Sequence[Param]]]) -> list[Result]:
        # Encode everything before sending anything: a bad parameter sends nothing.
        encoded: list[_Encoded] = [(sql, *_encode(params)) for sql, params in statements]
        skip = 0
        if self._begin is not None:
            encoded.insert(0, (self._begin, (), [], None))
            self._begin, skip = None, 1
        return [_decode(res) for res in (await self._request(encoded))[skip:]]

    async def _request(self, statements: list[_Encoded]) -> list[PGresult]:
        """Send ``statements`` in one pipeline ending with Sync; their results, or the first error.

        The first use of a statement prepares it (Parse) in the same pipeline; the name is
        cached only once the server has accepted it, so a request interrupted half-way never
        leaves the cache naming a statement the server does not have.
        """
        pg = self._pg
        parses: dict[int, tuple[tuple[str, tuple[int, ...]], bytes]] = {}
        pending: dict[tuple[str, tuple[int, ...]], bytes] = {}
        executions: list[int] = []
        results: list[PGresult | None] = []
        try:
            pg.enter_pipeline_mode()
            self._busy = True
            for sql, oids, values, formats in statements:
                key = (sql, oids)
                name = self._statements.get(key) or pending.get(key)
                if name is None and len(self._statements) + len(pending) < MAX_PREPARED:
                    name = b"pgwire_%d" % next(self._names)
                    pg.send_prepare(name, sql.encode(), oids)
                    parses[len(executions) + len(parses)] = (key, name)
                    pending[key] = name
                if name is None:
                    pg.send_query_params(sql.encode(), values, oids, formats, _BINARY)
                else:
                    pg.send_query_prepared(name, values, formats, _BINARY)
                executions.append(len(executions) + len(parses))
            pg.pipeline_sync()
            await self._flush()
            results += [None] * (len(executions) + len(parses))
            await self._read_pipeline(results)
            pg.exit_pipeline_mode()
            self._busy = False
        except psycopg.Error as e:
            raise self._lost(e, results) from e
        for i, (key, name) in parses.items():
            if (res := results[i]) is not None and res.status == _COMMAND_OK:
                self._statements[key] = name
        for res in results:
            if res is not None and res.status == _FATAL:
                error = _error(res)
                if error.sqlstate in ("26000", "0A000"):
                    # Statements deallocated behind our back, or a cached plan gone stale
                    # after a schema change: prepare afresh next time.
                    self._statements.clear()
                raise error
        done = [res for i in executions if (res := results[i]) is not None]
        if len(done) != len(executions):
            raise self._lost(None)  # a command without a result: the protocol is out of step
        return done

    async def _read_pipeline(self, results: list[PGresult | None]) -> None:
        """Fill in each command's result (None separates commands) up to the Sync's."""
        i = 0
        while True:
            res = await self._next_result()
            if res is None:
                if self._pg.status == _BAD or i >= len(results):
                    raise self._lost(None, results)
                i += 1
            elif res.status == _SYNC:
                return
            elif i < len(results) and results[i] is None:
                results[i] = res

    async def _next_result(self) -> PGresult | None:
        pg = self._pg
        while pg.is_busy():
            await trio.lowlevel.wait_readable(self._fd)
            pg.consume_input()
        return pg.get_result()

    async def _flush(self) -> None:
        while self._pg.flush():
            # The socket is full. The server may be blocked sending us results we have not
            # read, so wait for either direction and read what came.
            await self._wait_either()
            self._pg.consume_input()

    async def _wait_either(self) -> None:
        async with trio.open_nursery() as nursery:

            async def wait(fn: Callable[[int], Awaitable[None]]) -> None:
                await fn(self._fd)
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait, trio.lowlevel.wait_readable)
            nursery.start_soon(wait, trio.lowlevel.wait_writable)

    def _lost(
        self, cause: BaseException | None, results: Sequence[PGresult | None] = ()
    ) -> ConnectionLost:
        # The server's reason, when it gave one before closing (57P01 for
        # pg_terminate_backend), says more than libpq's "server closed the connection".
        for res in results:
            if res is not None and res.status == _FATAL and res.error_field(_F.SQLSTATE):
                said = _error(res)
                self.close()
                return ConnectionLost(said.message, said.sqlstate, detail=said.detail)
        message = "" if self.closed else self._pg.get_error_message().strip()
        self.close()
        return ConnectionLost(message or str(cause or "the connection was lost"), "08006")

    def _reusable(self) -> bool:
        return not (
            self.closed or self._busy or self._using or self._in_tx or self._begin is not None
        ) and (self._pg.transaction_status == _IDLE)

    def _alive(self) -> bool:
        """Whether an idle connection still looks usable: reads what the server sent while it
        sat idle (a FATAL before the server drops us), without waiting."""
        if self.closed:
            return False
        try:
            # Twice: the first read may take what the server said before closing the socket
            # (pg_terminate_backend, a shutdown), the second then sees the end of the stream.
            self._pg.consume_input()
            self._pg.consume_input()
        except psycopg.Error:
            return False
        return self._pg.status == _OK

    async def _recover(self, timeout: float) -> bool:
        """Bring the connection back to idle after an interrupted request; close it if that
        fails or takes longer than ``timeout``. Shielded: it runs to the end (or the timeout)
        even when the calling task is cancelled."""
        with trio.move_on_after(timeout, shield=True):
            try:
                cancelled = self._busy
                if self._busy:
                    await self._flush()
                    await self._cancel_on_server()
                    await self._drain()
                self._begin, self._in_tx = None, False
                if cancelled or self._pg.transaction_status != _IDLE:
                    await self._rollback(retry=cancelled)
                return True
            except _RECOVERY_FAILURES:
                pass
        self.close()
        return False

    async def _cancel_on_server(self) -> None:
        # libpq's cancel request opens its own connection and waits for the server: blocking,
        # so it runs in a thread. Made here (non-blocking) from the connection's parameters.
        send: Callable[[], None]
        try:
            send = functools.partial(_cancel_blocking, self._pg.cancel_conn())  # libpq >= 17
        except psycopg.NotSupportedError:
            send = self._pg.get_cancel().cancel
        await trio.to_thread.run_sync(send, abandon_on_cancel=True)

    async def _drain(self) -> None:
        pg = self._pg
        if pg.pipeline_status:
            while True:
                res = await self._next_result()
                if res is None and pg.status == _BAD:
                    raise self._lost(None)
                if res is not None and res.status == _SYNC:
                    break
            pg.exit_pipeline_mode()
        else:
            while await self._next_result() is not None:
                pass
        self._busy = False

    async def _rollback(self, *, retry: bool) -> None:
        # After a cancel request, a query that had already finished leaves the cancel to hit
        # the next statement: this ROLLBACK, which is then run once more. Outside a
        # transaction ROLLBACK only warns (logged at debug level).
        try:
            await self._run([("ROLLBACK", ())])
        except PgError as e:
            if not retry or e.sqlstate != "57014":
                raise
            await self._run([("ROLLBACK", ())])


def _cancel_blocking(cancel: pq.abc.PGcancelConn) -> None:
    # Sends the cancel request with the session's own TLS settings (PQcancelBlocking).
    try:
        cancel.blocking()
    finally:
        cancel.finish()


class Transaction:
    """An interactive transaction (see :meth:`Connection.transaction`)."""

    __slots__ = ("_begin", "_conn")

    def __init__(self, conn: Connection, begin: str) -> None:
        self._conn = conn
        self._begin = begin

    async def __aenter__(self) -> Connection:
        conn = self._conn
        if conn._in_tx:
            raise RuntimeError("a transaction is already open on this connection (no nesting)")
        if conn.closed:
            raise ConnectionLost("the connection is closed", "08003")
        conn._begin, conn._in_tx = self._begin, True  # sent with the first statement
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        conn = self._conn
        conn._in_tx = False
        if conn._begin is not None:  # no statement ran: nothing was sent
            conn._begin = None
            return
        if conn.closed:
            return
        if exc_type is None:
            if conn._pg.transaction_status != _INERROR:
                await conn._execute([("COMMIT", ())])
                return
            # A statement failed and the block caught its error: COMMIT would quietly roll
            # back. Say so instead.
            await conn._execute([("ROLLBACK", ())])
            raise PgError("the transaction was rolled back: a statement in it failed", "25P02")
        if conn._busy:
            return  # interrupted mid-request: recovered (cancel, drain, roll back) before reuse
        with trio.move_on_after(RECOVER_TIMEOUT, shield=True):
            with contextlib.suppress(PgError):
                await conn._execute([("ROLLBACK", ())])
                return
        conn.close()


# --- the pool --------------------------------------------------------------------------------


class Pool:
    """At most ``size`` connections to one database; made by :func:`open_pool`."""

    def __init__(self, dsn: str, nursery: trio.Nursery, size: int, timeouts: tuple[float, float]):
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self.size = size
        self._dsn = dsn
        self._nursery = nursery
        self._connect_timeout, self._recover_timeout = timeouts
        self._slots = trio.Semaphore(size)  # one per connection lent, opening or recovering
        self._idle: list[Connection] = []
        self._closed = False

    def connection(self) -> _Lease:
        """``async with pool.connection() as conn:`` lends a connection for the block."""
        return _Lease(self)

    @property
    def in_use(self) -> int:
        """Connections lent, being opened or being recovered."""
        return self.size - self._slots.value

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def _acquire(self) -> Connection:
        if self._closed:
            raise RuntimeError("the pool is closed")
        try:
            # A free slot is taken without a checkpoint (a whole trip through the scheduler
            # per store call); the request that follows waits on the socket anyway.
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()  # the most recently used: its pages are warm
                if conn._alive():
                    return conn
                conn.close()  # dropped by the server while idle: replaced below
            return await connect(self._dsn, timeout=self._connect_timeout)
        except BaseException:
            self._slots.release()
            raise

    def _release(self, conn: Connection) -> None:
        # Synchronous, so a cancelled task hands its connection back without a checkpoint.
        if conn.closed or self._closed:
            conn.close()
            self._slots.release()
        elif conn._reusable():
            self._idle.append(conn)
            self._slots.release()
        else:
            # A request in flight or a transaction left open: never lent as is. Its slot
            # stays taken until the recovery ends, so the bound holds.
            self._nursery.start_soon(self._recover, conn)

    async def _recover(self, conn: Connection) -> None:
        ok = False
        try:
            ok = await conn._recover(self._recover_timeout)
        finally:
            if ok and not self._closed:
                self._idle.append(conn)
            else:
                conn.close()
            self._slots.release()

    def _close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()


_RECOVERY_FAILURES = (
    PgError,
    psycopg.Error,
    OSError,
    trio.BusyResourceError,
    trio.ClosedResourceError,
)


class _Lease:
    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def __aenter__(self) -> Connection:
        self._conn = await self._pool._acquire()
        return self._conn

    async def __aexit__(self, *exc_info: object) -> None:
        self._pool._release(self._conn)


@asynccontextmanager
async def open_pool(
    dsn: str = "",
    *,
    size: int = 8,
    connect_timeout: float = 10.0,
    recover_timeout: float = RECOVER_TIMEOUT,
) -> AsyncIterator[Pool]:
    """A pool of at most ``size`` connections, opened as needed, closed on exit (after the
    background recoveries, each bounded by ``recover_timeout``, end)."""
    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            pool = Pool(dsn, nursery, size, (connect_timeout, recover_timeout))
            try:
                yield pool
            except BaseException as e:
                raised = e
                raise
            finally:
                pool._close()
    except BaseExceptionGroup as group:
        # The background tasks never raise: give the caller its own exception, not a group.
        if raised is not None and group.exceptions == (raised,):
            raise raised from None
        raise
