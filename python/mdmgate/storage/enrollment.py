"""The enrollment role of the store: the certificate authority's material, enrollment
tokens, the certificates issued to devices, and one-time claims (SCEP challenges, replayed
requests).

Every promise holds for concurrent writers on several nodes: two nodes that start at once
end up with one CA (:meth:`EnrollmentStore.put_material` is first-writer-wins), a token's
use count never goes past its limit however many devices enrol at once
(:meth:`EnrollmentStore.use_token` is one conditional update), a serial number is never
recorded twice, and a one-time key is claimed by exactly one caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec

if TYPE_CHECKING:
    from mdmgate.storage.events import NewEvent

__all__ = [
    "EnrollmentStore",
    "EnrollmentToken",
    "IssuedCertificate",
    "revoked_auth",
]


class EnrollmentToken(msgspec.Struct, frozen=True):
    """A credential an administrator hands out so that devices enrol into ``org``.

    Its value (``<id>.<secret>``) is shown once, at creation; the store keeps the SHA-256
    of the secret only."""

    id: str
    org: str
    secret_sha256: str
    created_at: float
    expires_at: float
    #: ``None``: any number of devices until it expires.
    max_uses: int | None = None
    uses: int = 0
    revoked_at: float | None = None
    #: ``windows``, ``apple``; empty: both.
    platforms: tuple[str, ...] = ()
    description: str = ""


class IssuedCertificate(msgspec.Struct, frozen=True):
    """A certificate the built-in CA issued: a device identity (Windows MS-WSTEP, Apple
    SCEP). ``device_id`` is ``None`` until a device proves itself with it (Apple: at
    Authenticate; Windows knows it at enrollment)."""

    #: Lower-case hex of the serial number, no leading zeros.
    serial: str
    #: Lower-case hex SHA-256 of the DER: what device endpoints compare.
    sha256: str
    subject: str
    org: str
    #: ``windows`` or ``apple``.
    platform: str
    issued_at: float
    not_after: float
    der: bytes
    token_id: str | None = None
    device_id: str | None = None
    #: The serial of the certificate this one renewed.
    renews: str | None = None
    revoked_at: float | None = None
    revocation_reason: str | None = None


def revoked_auth(serials: Sequence[str]) -> dict[str, object]:
    """The ``auth`` a device gets when the certificate it was bound to is revoked: still
    certificate-based (so nothing falls back to trust on first use), bound to none."""
    return {"method": "certificate", "revoked": sorted(serials)}


class EnrollmentStore(Protocol):
    """The CA's material, enrollment tokens, issued certificates and one-time claims."""

    async def get_material(self, name: str) -> bytes | None:
        """A named blob (``ca``: the CA certificate and its encrypted key; ``apns``: the
        push certificate), or ``None``."""
        ...

    async def put_material(self, name: str, value: bytes, *, replace: bool = False) -> bytes:
        """Stores a named blob and returns what is stored afterwards. Without ``replace``
        an existing blob is kept and returned (first writer wins: of two nodes creating a
        CA at once, both end up using the same one)."""
        ...

    async def put_token(self, token: EnrollmentToken) -> None:
        """Records a new token; :class:`~mdmgate.storage.RevisionConflict` if its id is
        taken."""
        ...

    async def get_token(self, token_id: str) -> EnrollmentToken | None: ...

    async def list_tokens(self, org: str | None = None) -> list[EnrollmentToken]:
        """Every token (of ``org`` exactly, when given), newest first."""
        ...

    async def revoke_token(self, token_id: str, *, at: float) -> EnrollmentToken | None:
        """Marks the token revoked (once: a second call keeps the first time); the token
        afterwards, ``None`` if unknown."""
        ...

    async def use_token(self, token_id: str, *, now: float) -> EnrollmentToken | None:
        """Counts one use of the token if it is usable at ``now`` (not revoked,
        ``expires_at > now``, fewer than ``max_uses`` uses), in one atomic step: the token
        after the use, or ``None`` when it is unknown or not usable (nothing counted)."""
        ...

    async def claim_once(self, kind: str, key: str, *, until: float, now: float) -> bool:
        """True for the first claim of ``(kind, key)``; False while a claim of it is
        unexpired (``until > now``), so that of two concurrent claims exactly one wins.
        Expired claims may be forgotten."""
        ...

    async def record_certificate(self, certificate: IssuedCertificate) -> None:
        """Records an issued certificate; :class:`~mdmgate.storage.RevisionConflict` if
        its serial (or SHA-256) is recorded already: the caller issues again with a new
        serial."""
        ...

    async def get_certificate(self, serial: str) -> IssuedCertificate | None: ...

    async def certificate_by_sha256(self, sha256: str) -> IssuedCertificate | None: ...

    async def list_certificates(
        self, *, device_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[IssuedCertificate]:
        """Certificates in serial order after ``after`` (of ``device_id`` when given)."""
        ...

    async def bind_certificate(self, serial: str, device_id: str) -> bool:
        """Names the device a certificate belongs to: True when it was unbound or bound
        to that device already, False when unknown, revoked or another device's."""
        ...

    async def revoke_certificates(
        self,
        *,
        reason: str,
        at: float,
        device_id: str | None = None,
        serial: str | None = None,
        events: Sequence[NewEvent] = (),
    ) -> list[IssuedCertificate]:
        """Revokes the unrevoked certificates of ``device_id`` (or the one ``serial``), and
        in the same transaction replaces the ``auth`` of every device bound to one of them
        whose ``auth["sha256"]`` or ``auth["previous_sha256"]`` is a revoked certificate's
        with :func:`revoked_auth`: from the commit on, no node accepts the certificate.
        Returns the certificates revoked now (already revoked ones are left as they were).
        ``events`` are appended in the same transaction.
        """
        ...
