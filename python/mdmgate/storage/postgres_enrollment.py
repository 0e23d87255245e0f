"""The enrollment role of the PostgreSQL store (:class:`~mdmgate.storage.EnrollmentStore`):
a mixin of :class:`~mdmgate.storage.postgres.PostgresStore`, whose schema version 2 creates
its tables (:mod:`.postgres_schema`).

Every write is one statement, decided by the server, so nothing is read by one round trip
and written by the next. Under concurrent writers from any number of nodes (READ COMMITTED):

* ``put_material``: an upsert whose ``DO UPDATE`` keeps the stored value unless replacing,
  and returns it. A ``DO NOTHING`` would return nothing to the second of two creators, and
  a read after it might not see the first one's row in its snapshot.
* ``use_token``: one ``UPDATE ... WHERE`` usable; a use that waited for another's row lock
  checks the count again on the row as the other left it (so ``max_uses`` is never passed).
* ``claim_once``: an upsert whose ``DO UPDATE`` happens only over an expired claim; the
  same statement-level recheck makes exactly one of concurrent claims win.
* ``record_certificate``: the primary key and the unique SHA-256 decide.
* ``revoke_certificates``: one statement revokes and rewrites the auth of the devices
  bound to what it revoked. It rewrites every such device row (to itself when its auth
  names none of the certificates), so the auth it compares is the latest committed one,
  also when another node changed it after the statement began. Like ``set_auth``, it
  records no change in the feed: no index reads credentials.

Run again after a lost connection, ``put_material``, ``revoke_token``, ``bind_certificate``
and ``revoke_certificates`` (which then returns nothing) end as if run once; ``put_token``
and ``record_certificate`` raise :class:`~mdmgate.storage.RevisionConflict`, ``use_token``
counts one more use and ``claim_once`` answers False.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

from mdmgate.storage.enrollment import EnrollmentToken, IssuedCertificate
from mdmgate.storage.enrollment_records import (
    CERTIFICATE_COLUMNS,
    CLAIM_SWEEP,
    IN_SERIAL_ORDER,
    TOKEN_COLUMNS,
    EnrollmentRole,
    certificate_from_row,
    certificate_row,
    certificate_taken,
    token_from_row,
    token_row,
    token_taken,
)
from mdmgate.storage.event_records import EncodedEvent
from mdmgate.storage.pgwire import Param, PgError, Result, Row
from mdmgate.storage.postgres_events import append
from mdmgate.storage.postgres_schema import Statement, text_array

__all__ = ["PostgresEnrollment"]

_SELECT_TOKEN = TOKEN_COLUMNS.replace("platforms", "array_to_json(platforms)::text")

_PUT_MATERIAL = (
    "INSERT INTO enrollment_material (name, value) VALUES ($1, $2) ON CONFLICT (name)"
    " DO UPDATE SET value = CASE WHEN $3::boolean THEN excluded.value"
    " ELSE enrollment_material.value END RETURNING value"
)
_USE_TOKEN = (
    "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = $1 AND revoked_at IS NULL"
    " AND expires_at > $2 AND (max_uses IS NULL OR uses < max_uses)"
    f" RETURNING {_SELECT_TOKEN}"
)
_CLAIM = (
    "INSERT INTO claims (kind, key, until) VALUES ($1, $2, $3) ON CONFLICT (kind, key)"
    " DO UPDATE SET until = excluded.until WHERE claims.until <= $4"
)
# After the claim, and skipping locked rows: a claim waits at most for its own key, never
# for a sweep, so two claims cannot deadlock.
_FORGET_CLAIMS = (
    "DELETE FROM claims WHERE ctid = ANY(ARRAY(SELECT ctid FROM claims WHERE until <= $1"
    " LIMIT $2 FOR UPDATE SKIP LOCKED))"
)

#: Revokes the certificates chosen by ``{where}`` ($1: when, $2: why) and, in the same
#: statement, gives every device bound to one of them whose auth names one (current or
#: previous, hex in either case) the auth :func:`~mdmgate.storage.enrollment.revoked_auth`
#: builds: its shape is repeated here, and the conformance tests compare the two.
_REVOKE = (
    "WITH revoked AS ("
    "  UPDATE certificates SET revoked_at = $1, revocation_reason = $2"
    f"  WHERE revoked_at IS NULL AND {{where}} RETURNING {CERTIFICATE_COLUMNS}),"
    " hashes AS (SELECT array_agg(sha256) AS named FROM revoked),"
    " bound AS (SELECT device_id, array_agg(serial ORDER BY serial) AS serials"
    "  FROM revoked WHERE device_id IS NOT NULL GROUP BY device_id),"
    " unbound AS (UPDATE devices d SET auth = CASE"
    "  WHEN lower(d.auth->>'sha256') COLLATE \"C\" = ANY(h.named)"
    "  OR lower(d.auth->>'previous_sha256') COLLATE \"C\" = ANY(h.named)"
    "  THEN jsonb_build_object('method', 'certificate', 'revoked', to_jsonb(b.serials))"
    "  ELSE d.auth END"
    "  FROM bound b, hashes h WHERE d.id = b.device_id)"
    f" SELECT {CERTIFICATE_COLUMNS} FROM revoked"
)


class PostgresEnrollment(EnrollmentRole):
    """The enrollment role, on the store's pooled calls."""

    if TYPE_CHECKING:

        async def _fetch(self, query: str, *params: Param) -> list[Row]: ...

        async def _fetchval(self, query: str, *params: Param) -> Any: ...

        async def _execute(self, query: str, *params: Param) -> int: ...

        async def _write(self, statements: Sequence[Statement]) -> list[Result]: ...

    async def get_material(self, name: str) -> bytes | None:
        value = await self._fetchval("SELECT value FROM enrollment_material WHERE name = $1", name)
        return None if value is None else cast(bytes, value)

    async def _store_material(self, name: str, value: bytes, replace: bool) -> bytes:
        return cast(bytes, await self._fetchval(_PUT_MATERIAL, name, value, replace))

    async def _insert_token(self, token: EnrollmentToken) -> None:
        written = await self._execute(
            f"INSERT INTO enrollment_tokens ({TOKEN_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text[], $10) ON CONFLICT (id) DO NOTHING",
            *token_row(token, text_array(token.platforms)),
        )
        if written == 0:
            raise token_taken(token.id)

    async def _one_token(self, query: str, *params: Param) -> EnrollmentToken | None:
        rows = await self._fetch(query, *params)
        return token_from_row(rows[0]) if rows else None

    async def get_token(self, token_id: str) -> EnrollmentToken | None:
        query = f"SELECT {_SELECT_TOKEN} FROM enrollment_tokens WHERE id = $1"
        return await self._one_token(query, token_id)

    async def list_tokens(self, org: str | None = None) -> list[EnrollmentToken]:
        # Newest first; tokens made in the same instant by id.
        if org is None:
            query = f"SELECT {_SELECT_TOKEN} FROM enrollment_tokens ORDER BY created_at DESC, id"
            rows = await self._fetch(query)
        else:
            query = (
                f"SELECT {_SELECT_TOKEN} FROM enrollment_tokens WHERE org = $1"
                " ORDER BY created_at DESC, id"
            )
            rows = await self._fetch(query, org)
        return [token_from_row(r) for r in rows]

    async def revoke_token(self, token_id: str, *, at: float) -> EnrollmentToken | None:
        query = (
            "UPDATE enrollment_tokens SET revoked_at = coalesce(revoked_at, $2)"
            f" WHERE id = $1 RETURNING {_SELECT_TOKEN}"
        )
        return await self._one_token(query, token_id, float(at))

    async def use_token(self, token_id: str, *, now: float) -> EnrollmentToken | None:
        return await self._one_token(_USE_TOKEN, token_id, float(now))

    async def _claim(self, kind: str, key: str, until: float, now: float) -> bool:
        claimed, _ = await self._write(
            [(_CLAIM, (kind, key, until, now)), (_FORGET_CLAIMS, (now, CLAIM_SWEEP))]
        )
        return claimed.rowcount > 0

    async def _insert_certificate(self, certificate: IssuedCertificate) -> None:
        c = certificate
        try:
            await self._execute(
                f"INSERT INTO certificates ({CERTIFICATE_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                *certificate_row(c),
            )
        except PgError as e:
            if not e.is_unique_violation:
                raise
            same = e.constraint == "certificates_pkey"
            raise certificate_taken(c.serial, c.sha256, same_serial=same) from None

    async def _certificate_by(
        self, key: Literal["serial", "sha256"], value: str
    ) -> IssuedCertificate | None:
        query = f"SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE {key} = $1"
        rows = await self._fetch(query, value)
        return certificate_from_row(rows[0]) if rows else None

    async def _certificates_after(
        self, start: tuple[int, str] | None, device_id: str | None, limit: int
    ) -> list[IssuedCertificate]:
        conditions: list[str] = []
        params: list[Param] = [limit]
        if device_id is not None:
            params.append(device_id)
            conditions.append(f"device_id = ${len(params)}")
        if start is not None:
            params += start
            conditions.append(f"(digits, serial) > (${len(params) - 1}::int4, ${len(params)})")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        query = f"SELECT {CERTIFICATE_COLUMNS} FROM certificates {where} {IN_SERIAL_ORDER} LIMIT $1"
        return [certificate_from_row(r) for r in await self._fetch(query, *params)]

    async def bind_certificate(self, serial: str, device_id: str) -> bool:
        query = (
            "UPDATE certificates SET device_id = $2 WHERE serial = $1 AND revoked_at IS NULL"
            " AND (device_id IS NULL OR device_id = $2)"
        )
        return await self._execute(query, serial, device_id) > 0

    async def _revoke(
        self,
        reason: str,
        at: float,
        device_id: str | None,
        serial: str | None,
        events: Sequence[EncodedEvent],
    ) -> list[IssuedCertificate]:
        conditions: list[str] = []
        params: list[Param] = [at, reason]
        if device_id is not None:
            params.append(device_id)
            conditions.append(f"device_id = ${len(params)}")
        if serial is not None:
            params.append(serial)
            conditions.append(f"serial = ${len(params)}")
        query = _REVOKE.format(where=" AND ".join(conditions))
        results = await self._write([(query, params), *append(events)])
        return [certificate_from_row(r) for r in results[0].rows]
