"""What every backend checks of the enrollment role's input before storing it, and the
orders it lists records in: one place, so that memory, SQLite and PostgreSQL refuse the same
records with the same message and agree on every order.

A bad record raises ``ValueError`` naming the field, before anything is written: a serial
in upper case or with leading zeros would never be found by the lookups that use the
canonical form, and a timestamp that is NaN would make every comparison false.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import msgspec

from mdmgate.storage import RevisionConflict
from mdmgate.storage.enrollment import EnrollmentToken, IssuedCertificate

__all__ = [
    "CLAIM_SWEEP",
    "PLATFORMS",
    "certificate_taken",
    "check_claim",
    "check_revocation",
    "checked_certificate",
    "checked_material",
    "checked_token",
    "names_one_of",
    "serial_order",
    "serials_by_device",
    "token_taken",
]

#: The platforms a token may be limited to, and a certificate issued for.
PLATFORMS = ("windows", "apple")
#: How many expired one-time claims each claim forgets: more than one, so that the claims
#: left over never outnumber the live ones for long, and few, so that a claim stays cheap.
CLAIM_SWEEP = 8

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


def names_one_of(auth: Mapping[str, Any], hashes: Collection[str]) -> bool:
    """Whether a device's ``auth`` names a certificate of ``hashes`` (lower-case hex) as its
    current one (``sha256``) or the one it renewed (``previous_sha256``), in either case:
    an administrator may have pasted the hex in upper case."""
    return any(
        isinstance(auth.get(k), str) and auth[k].lower() in hashes
        for k in ("sha256", "previous_sha256")
    )


def serials_by_device(revoked: Iterable[IssuedCertificate]) -> dict[str, list[str]]:
    """The serials of the bound certificates among ``revoked``, by device."""
    found: dict[str, list[str]] = {}
    for c in revoked:
        if c.device_id is not None:
            found.setdefault(c.device_id, []).append(c.serial)
    return found
