"""What every backend checks of the enrollment role's input before storing it, the orders it
lists records in, and how the SQL backends lay records out in rows: one place, so that
memory, SQLite and PostgreSQL refuse the same records with the same message and agree on
every order.

:class:`EnrollmentRole` holds the role's checked methods; a backend implements its
primitives, which see checked values only. A bad record raises ``ValueError`` naming the
field, before anything is written: a serial in upper case or with leading zeros would never
be found by the lookups that use the canonical form, and a timestamp that is NaN would make
every comparison false.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec

from mdmgate.storage import RevisionConflict
from mdmgate.storage.enrollment import EnrollmentToken, IssuedCertificate, revoked_auth
from mdmgate.storage.event_records import EncodedEvent, checked_events
from mdmgate.storage.events import NewEvent

__all__ = [
    "CERTIFICATE_COLUMNS",
    "CLAIM_SWEEP",
    "IN_SERIAL_ORDER",
    "PLATFORMS",
    "TOKEN_COLUMNS",
    "EnrollmentRole",
    "auth_after_revocation",
    "certificate_from_row",
    "certificate_row",
    "certificate_taken",
    "check_claim",
    "check_revocation",
    "checked_certificate",
    "checked_material",
    "checked_token",
    "serial_order",
    "token_from_row",
    "token_row",
    "token_taken",
]

#: The platforms a token may be limited to, and a certificate issued for.
PLATFORMS = ("windows", "apple")
#: How many expired one-time claims each claim forgets: more than one, so that the claims
#: left over never outnumber the live ones for long, and few, so that a claim stays cheap.
CLAIM_SWEEP = 8

#: The SQL backends' token and certificate columns, in the order of the structs' fields: a
#: row read in this order is the struct's positional arguments.
TOKEN_COLUMNS = ", ".join(EnrollmentToken.__struct_fields__)
CERTIFICATE_COLUMNS = ", ".join(IssuedCertificate.__struct_fields__)
#: The SQL backends' certificate order, :func:`serial_order`, which their indexes hold
#: (``digits`` is the length of the serial).
IN_SERIAL_ORDER = "ORDER BY digits, serial"

_PLATFORMS_AT = EnrollmentToken.__struct_fields__.index("platforms")
_DER_AT = IssuedCertificate.__struct_fields__.index("der")
_PLATFORM_LIST = msgspec.json.Decoder(tuple[str, ...])
_SERIAL = re.compile(r"0|[1-9a-f][0-9a-f]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INT64 = 2**63 - 1


def serial_order(serial: str) -> tuple[int, str]:
    """The key certificates are listed by: the length of the hex, then its code points.
    For canonical serials (lower-case hex, no leading zeros) that is the order of the
    numbers; the backends index the same pair."""
    return len(serial), serial


def _time(what: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what}: {name} must be a Unix time in seconds, not {value!r}")
    return float(value)


def _maybe_time(what: str, name: str, value: Any) -> float | None:
    return None if value is None else _time(what, name, value)


def _text(what: str, name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ValueError(f"{what}: {name} must be a string, not {value!r}")


def _count(what: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _INT64:
        raise ValueError(f"{what}: {name} must be a whole number of at least {low}, not {value!r}")


def checked_token(token: EnrollmentToken) -> EnrollmentToken:
    """``token`` as every backend stores it (times as floats, platforms a tuple), or
    ``ValueError`` naming what is wrong with it."""
    _text("enrollment token", "id", token.id)
    what = f"enrollment token {token.id!r}"
    if not token.id:
        raise ValueError("enrollment token: id must not be empty")
    for name in ("org", "secret_sha256", "description"):
        _text(what, name, getattr(token, name))
    if token.max_uses is not None:
        _count(what, "max_uses", token.max_uses, 1)
    _count(what, "uses", token.uses, 0)
    platforms = token.platforms
    if isinstance(platforms, str) or not all(p in PLATFORMS for p in platforms):
        raise ValueError(f"{what}: platforms must be some of {PLATFORMS}, not {platforms!r}")
    return msgspec.structs.replace(
        token,
        created_at=_time(what, "created_at", token.created_at),
        expires_at=_time(what, "expires_at", token.expires_at),
        revoked_at=_maybe_time(what, "revoked_at", token.revoked_at),
        platforms=tuple(platforms),
    )


def checked_certificate(certificate: IssuedCertificate) -> IssuedCertificate:
    """``certificate`` as every backend stores it (times as floats, the DER as bytes), or
    ``ValueError`` naming what is wrong with it."""
    c = certificate
    if not isinstance(c.serial, str) or not _SERIAL.fullmatch(c.serial):
        raise ValueError(
            f"certificate serial {c.serial!r} is not lower-case hex without leading zeros"
        )
    what = f"certificate {c.serial}"
    if not isinstance(c.sha256, str) or not _SHA256.fullmatch(c.sha256):
        raise ValueError(f"{what}: sha256 {c.sha256!r} is not 64 lower-case hex digits")
    if c.platform not in PLATFORMS:
        raise ValueError(f"{what}: platform must be one of {PLATFORMS}, not {c.platform!r}")
    for name in ("subject", "org"):
        _text(what, name, getattr(c, name))
    for name in ("token_id", "device_id", "renews", "revocation_reason"):
        _text(what, name, getattr(c, name), optional=True)
    if not isinstance(c.der, bytes | bytearray | memoryview) or not c.der:
        raise ValueError(f"{what}: der must be the certificate's DER bytes, not {c.der!r:.40}")
    return msgspec.structs.replace(
        c,
        issued_at=_time(what, "issued_at", c.issued_at),
        not_after=_time(what, "not_after", c.not_after),
        revoked_at=_maybe_time(what, "revoked_at", c.revoked_at),
        der=bytes(c.der),
    )


def checked_material(name: str, value: bytes) -> bytes:
    """``value`` as bytes, or ``ValueError`` when it is not bytes-like."""
    _text("material", "name", name)
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ValueError(f"material {name!r} must be bytes, not {type(value).__name__}")
    return bytes(value)


def check_claim(kind: str, key: str, *, until: float, now: float) -> None:
    """``ValueError`` for a claim that would be expired as it is made (or has no times)."""
    _text("claim", "kind", kind)
    _text("claim", "key", key)
    what = f"claim of {kind} {key!r}"
    if _time(what, "now", now) >= _time(what, "until", until):
        raise ValueError(f"{what}: until ({until}) must be after now ({now})")


def check_revocation(device_id: str | None, serial: str | None) -> None:
    """``ValueError`` for a revocation that names neither a device nor a serial: revoking
    every certificate at once is not something to do by leaving out an argument."""
    if device_id is None and serial is None:
        raise ValueError("a revocation names a device_id or a serial (or both)")


def token_taken(token_id: str) -> RevisionConflict:
    # Tokens have no revisions: one that exists counts as the first.
    return RevisionConflict(f"enrollment token {token_id!r}", None, 1)


def certificate_taken(serial: str, sha256: str, *, same_serial: bool) -> RevisionConflict:
    what = f"certificate serial {serial}" if same_serial else f"certificate SHA-256 {sha256}"
    return RevisionConflict(what, None, 1)


def _names_one_of(auth: Mapping[str, Any], hashes: Collection[str]) -> bool:
    # Either hash, in either case: an administrator may have pasted the hex in upper case.
    return any(
        isinstance(auth.get(k), str) and auth[k].lower() in hashes
        for k in ("sha256", "previous_sha256")
    )


def auth_after_revocation(
    revoked: Iterable[IssuedCertificate], auth_of: Callable[[str], Mapping[str, Any] | None]
) -> dict[str, dict[str, object]]:
    """The ``auth`` each device bound to one of the just ``revoked`` certificates gets: for a
    device whose current auth (``auth_of(device_id)``; ``None``: the device is gone) names
    one of them as its current certificate (``sha256``) or the one it renewed
    (``previous_sha256``), :func:`~mdmgate.storage.enrollment.revoked_auth` of its revoked
    serials. A device whose auth names none of them keeps it and is not in the result."""
    revoked = list(revoked)
    hashes = {c.sha256 for c in revoked}
    serials: dict[str, list[str]] = {}
    for c in revoked:
        if c.device_id is not None:
            serials.setdefault(c.device_id, []).append(c.serial)
    replaced: dict[str, dict[str, object]] = {}
    for device_id, bound in serials.items():
        auth = auth_of(device_id)
        if auth is not None and _names_one_of(auth, hashes):
            replaced[device_id] = revoked_auth(bound)
    return replaced


# -- rows of the SQL backends


def token_row(token: EnrollmentToken, platforms: str) -> tuple[Any, ...]:
    """The values of :data:`TOKEN_COLUMNS` for a checked ``token``, with ``platforms`` (the
    backend's encoding of ``token.platforms``) in their place."""
    values = msgspec.structs.astuple(token)
    return (*values[:_PLATFORMS_AT], platforms, *values[_PLATFORMS_AT + 1 :])


def certificate_row(certificate: IssuedCertificate) -> tuple[Any, ...]:
    """The values of :data:`CERTIFICATE_COLUMNS` for a checked ``certificate``."""
    return msgspec.structs.astuple(certificate)


def token_from_row(row: Sequence[Any]) -> EnrollmentToken:
    """The token in a row of :data:`TOKEN_COLUMNS` whose platforms are a JSON array's text
    (as both SQL backends read them)."""
    values = list(row)
    values[_PLATFORMS_AT] = _PLATFORM_LIST.decode(values[_PLATFORMS_AT])
    return EnrollmentToken(*values)


def certificate_from_row(row: Sequence[Any]) -> IssuedCertificate:
    """The certificate in a row of :data:`CERTIFICATE_COLUMNS` (its DER as bytes, whatever
    buffer the driver gave)."""
    values = list(row)
    values[_DER_AT] = bytes(values[_DER_AT])
    return IssuedCertificate(*values)


# -- the role's checked methods


class EnrollmentRole(abc.ABC):
    """The methods of :class:`~mdmgate.storage.EnrollmentStore` that check records or
    arguments, or are alike on every backend, written once: each checks (``ValueError``
    naming the problem, nothing written) and hands checked values, times as floats, to the
    backend's primitive. The contracts are the protocol's; the primitives' are below."""

    async def put_material(self, name: str, value: bytes, *, replace: bool = False) -> bytes:
        return await self._store_material(name, checked_material(name, value), replace)

    async def put_token(self, token: EnrollmentToken) -> None:
        await self._insert_token(checked_token(token))

    async def claim_once(self, kind: str, key: str, *, until: float, now: float) -> bool:
        check_claim(kind, key, until=until, now=now)
        return await self._claim(kind, key, float(until), float(now))

    async def record_certificate(self, certificate: IssuedCertificate) -> None:
        await self._insert_certificate(checked_certificate(certificate))

    async def get_certificate(self, serial: str) -> IssuedCertificate | None:
        return await self._certificate_by("serial", serial)

    async def certificate_by_sha256(self, sha256: str) -> IssuedCertificate | None:
        return await self._certificate_by("sha256", sha256)

    async def list_certificates(
        self, *, device_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[IssuedCertificate]:
        if limit <= 0:
            return []
        start = None if after is None else serial_order(after)
        return await self._certificates_after(start, device_id, limit)

    async def revoke_certificates(
        self,
        *,
        reason: str,
        at: float,
        device_id: str | None = None,
        serial: str | None = None,
        events: Sequence[NewEvent] = (),
    ) -> list[IssuedCertificate]:
        check_revocation(device_id, serial)
        appended = checked_events(events)
        revoked = await self._revoke(reason, float(at), device_id, serial, appended)
        return sorted(revoked, key=lambda c: serial_order(c.serial))

    @abc.abstractmethod
    async def _store_material(self, name: str, value: bytes, replace: bool) -> bytes:
        """Stores ``value`` unless ``name`` has one and not ``replace``: what is stored."""

    @abc.abstractmethod
    async def _insert_token(self, token: EnrollmentToken) -> None:
        """Records ``token``; :func:`token_taken` if its id is."""

    @abc.abstractmethod
    async def _claim(self, kind: str, key: str, until: float, now: float) -> bool:
        """Claims ``(kind, key)`` until ``until`` unless an unexpired claim holds it, and
        forgets at most :data:`CLAIM_SWEEP` expired claims: whether it was claimed."""

    @abc.abstractmethod
    async def _insert_certificate(self, certificate: IssuedCertificate) -> None:
        """Records ``certificate``; :func:`certificate_taken` if its serial or SHA-256 is."""

    @abc.abstractmethod
    async def _certificate_by(
        self, key: Literal["serial", "sha256"], value: str
    ) -> IssuedCertificate | None:
        """The certificate whose ``key`` is ``value``, or ``None``."""

    @abc.abstractmethod
    async def _certificates_after(
        self, start: tuple[int, str] | None, device_id: str | None, limit: int
    ) -> list[IssuedCertificate]:
        """Up to ``limit`` (at least 1) certificates (of ``device_id``) whose
        :func:`serial_order` is after ``start``, in that order."""

    @abc.abstractmethod
    async def _revoke(
        self,
        reason: str,
        at: float,
        device_id: str | None,
        serial: str | None,
        events: Sequence[EncodedEvent],
    ) -> list[IssuedCertificate]:
        """Revokes the unrevoked certificates of ``device_id`` and/or ``serial`` (at least one
        given) and, in the same atomic step, gives the devices bound to them the auth
        :func:`auth_after_revocation` says and appends ``events``: the certificates revoked
        now, in any order."""
