"""The enrollment role of the SQLite store (:class:`~mdmgate.storage.EnrollmentStore`): a
mixin of :class:`~mdmgate.storage.sqlite.SQLiteStore`, whose migration 6 creates its tables.

Every write is one job of the store's writer: it runs in a savepoint of a ``BEGIN
IMMEDIATE`` transaction, which holds the database's write lock (for every connection and
process on the file) from its first read to its commit. So a step that reads then writes
(``record_certificate``'s duplicate check, ``revoke_certificates``' auth replacement) sees
the latest committed state and nobody commits in between; ``use_token``,
``bind_certificate`` and the claim of ``claim_once`` are moreover single conditional
statements, computed by SQLite from the row as it is. Point reads (by name, id, serial or
SHA-256) run on the read connection, like device reads. A revocation rewrites devices' auth
without a change in the feed, as ``set_auth`` does: no index reads credentials.

Certificates are listed in the order of their serial numbers: by the length of the hex
(``digits``), then its text (for canonical serials, the order of the numbers), which the
indexes hold, so that a page starts with one index seek.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from mdmgate.storage.enrollment import EnrollmentToken, IssuedCertificate
from mdmgate.storage.enrollment_records import (
    CERTIFICATE_COLUMNS,
    CLAIM_SWEEP,
    IN_SERIAL_ORDER,
    TOKEN_COLUMNS,
    EnrollmentRole,
    auth_after_revocation,
    certificate_from_row,
    certificate_row,
    certificate_taken,
    token_from_row,
    token_row,
    token_taken,
)
from mdmgate.storage.event_records import EncodedEvent
from mdmgate.storage.sqlite_events import append

__all__ = ["MIGRATION", "SQLiteEnrollment"]

T = TypeVar("T")

#: The tables of the enrollment role (the store's migration 6). No comment in it may hold a
#: semicolon: the migration runs statement by statement.
MIGRATION = """
    CREATE TABLE enrollment_material (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE enrollment_tokens (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        max_uses INTEGER,
        uses INTEGER NOT NULL,
        revoked_at REAL,
        -- A JSON array of platform names.
        platforms TEXT NOT NULL,
        description TEXT NOT NULL
    );
    CREATE INDEX enrollment_tokens_by_org ON enrollment_tokens (org, created_at);
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        org TEXT NOT NULL,
        platform TEXT NOT NULL,
        issued_at REAL NOT NULL,
        not_after REAL NOT NULL,
        der BLOB NOT NULL,
        token_id TEXT,
        device_id TEXT,
        renews TEXT,
        revoked_at REAL,
        revocation_reason TEXT,
        -- The listing order is (digits, serial): SQLite seeks an index on a column for a
        -- row value, not one on length(serial).
        digits INTEGER GENERATED ALWAYS AS (length(serial)) VIRTUAL
    );
    CREATE INDEX certificates_in_order ON certificates (digits, serial);
    CREATE INDEX certificates_by_device ON certificates (device_id, digits, serial)
        WHERE device_id IS NOT NULL;
    CREATE TABLE claims (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE INDEX claims_by_expiry ON claims (until);
"""


def _one_token(
    db: sqlite3.Connection, query: str, params: tuple[Any, ...]
) -> EnrollmentToken | None:
    # fetchall: a statement with RETURNING must run to its end before the savepoint is let go.
    rows = db.execute(query, params).fetchall()
    return token_from_row(rows[0]) if rows else None


class SQLiteEnrollment(EnrollmentRole):
    """The enrollment role, on the store's writer (``_run``) and read connection
    (``_read_inline``)."""

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read_inline(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def get_material(self, name: str) -> bytes | None:
        def read(db: sqlite3.Connection) -> bytes | None:
            row = db.execute(
                "SELECT value FROM enrollment_material WHERE name = ?", (name,)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._read_inline(read)

    async def _store_material(self, name: str, value: bytes, replace: bool) -> bytes:
        def write(db: sqlite3.Connection) -> bytes:
            db.execute(
                "INSERT INTO enrollment_material VALUES (?1, ?2) ON CONFLICT (name)"
                " DO UPDATE SET value = excluded.value WHERE ?3",
                (name, value, replace),
            )
            row = db.execute(
                "SELECT value FROM enrollment_material WHERE name = ?", (name,)
            ).fetchone()
            return bytes(row[0])

        return await self._run(write)

    async def _insert_token(self, token: EnrollmentToken) -> None:
        row = token_row(token, json.dumps(list(token.platforms)))

        def write(db: sqlite3.Connection) -> None:
            cursor = db.execute(
                f"INSERT INTO enrollment_tokens ({TOKEN_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                row,
            )
            if cursor.rowcount == 0:
                raise token_taken(token.id)

        await self._run(write)

    async def get_token(self, token_id: str) -> EnrollmentToken | None:
        query = f"SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = ?"
        return await self._read_inline(lambda db: _one_token(db, query, (token_id,)))

    async def list_tokens(self, org: str | None = None) -> list[EnrollmentToken]:
        def read(db: sqlite3.Connection) -> list[EnrollmentToken]:
            # Newest first; tokens made in the same instant by id.
            if org is None:
                rows = db.execute(
                    f"SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at DESC, id"
                )
            else:
                rows = db.execute(
                    f"SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE org = ?"
                    " ORDER BY created_at DESC, id",
                    (org,),
                )
            return [token_from_row(r) for r in rows]

        return await self._run(read)

    async def revoke_token(self, token_id: str, *, at: float) -> EnrollmentToken | None:
        query = (
            "UPDATE enrollment_tokens SET revoked_at = coalesce(revoked_at, ?)"
            f" WHERE id = ? RETURNING {TOKEN_COLUMNS}"
        )
        return await self._run(lambda db: _one_token(db, query, (float(at), token_id)))

    async def use_token(self, token_id: str, *, now: float) -> EnrollmentToken | None:
        # One statement: the checks and the count are one step for every process.
        query = (
            "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ? AND revoked_at IS NULL"
            " AND expires_at > ? AND (max_uses IS NULL OR uses < max_uses)"
            f" RETURNING {TOKEN_COLUMNS}"
        )
        return await self._run(lambda db: _one_token(db, query, (token_id, now)))

    async def _claim(self, kind: str, key: str, until: float, now: float) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            # Taken when new or expired: one statement, like a lease.
            won = db.execute(
                "INSERT INTO claims VALUES (?1, ?2, ?3) ON CONFLICT (kind, key)"
                " DO UPDATE SET until = excluded.until WHERE claims.until <= ?4",
                (kind, key, until, now),
            ).rowcount
            db.execute(
                "DELETE FROM claims WHERE rowid IN"
                " (SELECT rowid FROM claims WHERE until <= ? LIMIT ?)",
                (now, CLAIM_SWEEP),
            )
            return won > 0

        return await self._run(write)

    async def _insert_certificate(self, certificate: IssuedCertificate) -> None:
        c = certificate
        row = certificate_row(c)

        def write(db: sqlite3.Connection) -> None:
            # Under the write lock: nobody records either key between this read and the insert.
            taken = db.execute(
                "SELECT serial FROM certificates WHERE serial = ? OR sha256 = ?",
                (c.serial, c.sha256),
            ).fetchall()
            if taken:
                same = any(r[0] == c.serial for r in taken)
                raise certificate_taken(c.serial, c.sha256, same_serial=same)
            db.execute(
                f"INSERT INTO certificates ({CERTIFICATE_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._run(write)

    async def _certificate_by(
        self, key: Literal["serial", "sha256"], value: str
    ) -> IssuedCertificate | None:
        def read(db: sqlite3.Connection) -> IssuedCertificate | None:
            row = db.execute(
                f"SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE {key} = ?", (value,)
            ).fetchone()
            return None if row is None else certificate_from_row(row)

        return await self._read_inline(read)

    async def _certificates_after(
        self, start: tuple[int, str] | None, device_id: str | None, limit: int
    ) -> list[IssuedCertificate]:
        conditions: list[str] = []
        params: list[Any] = []
        if device_id is not None:
            conditions.append("device_id = ?")
            params.append(device_id)
        if start is not None:
            conditions.append("(digits, serial) > (?, ?)")
            params += start
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        query = f"SELECT {CERTIFICATE_COLUMNS} FROM certificates {where} {IN_SERIAL_ORDER} LIMIT ?"

        def read(db: sqlite3.Connection) -> list[IssuedCertificate]:
            return [certificate_from_row(r) for r in db.execute(query, (*params, limit))]

        return await self._run(read)

    async def bind_certificate(self, serial: str, device_id: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE certificates SET device_id = ?2 WHERE serial = ?1 AND revoked_at IS NULL"
                " AND (device_id IS NULL OR device_id = ?2)",
                (serial, device_id),
            )
            return cursor.rowcount > 0

        return await self._run(write)

    async def _revoke(
        self,
        reason: str,
        at: float,
        device_id: str | None,
        serial: str | None,
        events: Sequence[EncodedEvent],
    ) -> list[IssuedCertificate]:
        conditions, params = ["revoked_at IS NULL"], [at, reason]
        if device_id is not None:
            conditions.append("device_id = ?")
            params.append(device_id)
        if serial is not None:
            conditions.append("serial = ?")
            params.append(serial)
        revoke = (
            "UPDATE certificates SET revoked_at = ?, revocation_reason = ?"
            f" WHERE {' AND '.join(conditions)} RETURNING {CERTIFICATE_COLUMNS}"
        )

        def write(db: sqlite3.Connection) -> list[IssuedCertificate]:
            revoked = [certificate_from_row(r) for r in db.execute(revoke, params).fetchall()]

            def auth_of(bound: str) -> dict[str, Any] | None:
                row = db.execute("SELECT auth FROM devices WHERE id = ?", (bound,)).fetchone()
                if row is None:
                    return None
                auth: dict[str, Any] = json.loads(row[0])
                return auth

            # In the same transaction, under the write lock: the auth read is the latest.
            for bound, auth in auth_after_revocation(revoked, auth_of).items():
                db.execute("UPDATE devices SET auth = ? WHERE id = ?", (json.dumps(auth), bound))
            append(db, events)
            return revoked

        return await self._run(write)
