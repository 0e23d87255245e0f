"""Who an Apple MDM message comes from, and whether it may speak for its device (pure
functions, no I/O).

Identity. A device proves itself with its identity certificate: the mTLS client
certificate (``Request.client_cert``), or else the ``Mdm-Signature`` header, a CMS detached
signature of the body whose signer certificate is the identity
(:func:`mdmgate.enrollment.cms.verify_detached`). The identity is the SHA-256 (lower-case
hex) of the certificate's DER.

Binding. A device's ``auth`` names the certificate it is bound to:

* ``{"method": "certificate", "sha256": ...}``: bound at its first ``Authenticate`` (trust
  on first use, for a device registered beforehand);
* ``{"method": "certificate", "sha256", "serial", "not_after"}``: bound at enrollment to a
  certificate the gateway's CA issued (:func:`certificate_auth`); a message after
  ``not_after`` (Unix seconds) is refused;
* ``{"method": "certificate", "revoked": [serials]}``
  (:func:`mdmgate.storage.enrollment.revoked_auth`): its certificate was revoked. Every
  message is refused, in development mode too, and nothing binds it again by trust on first
  use: only a new certificate from the CA (a new enrollment) does.

Refusals. A caller whose identity is not proven gets one answer, 403 :data:`NOT_VERIFIED`,
whether its UDID is unknown, registered, enrolled with another certificate, expired or
revoked: the answer does not tell which UDIDs the gateway knows (the ``reason`` of
:class:`IdentityRefused` is for the log). An unreadable signature is 400. Never 401: a 401
can make a device remove its enrollment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Mapping
from typing import Any

from mdmgate.server.types import Request
from mdmgate.storage import Device
from mdmgate.storage.enrollment import IssuedCertificate

try:
    from mdmgate.enrollment.cms import BadSignature, SignatureMismatch, verify_detached
except ImportError:  # pragma: no cover - depends on the environment
    CMS_SUPPORTED = False
else:
    CMS_SUPPORTED = True

__all__ = [
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "CMS_SUPPORTED",
    "NOT_VERIFIED",
    "IdentityRefused",
    "authorize",
    "authorize_authenticate",
    "bound_identity",
    "certificate_auth",
    "certificate_sha256",
    "enrollment_refusal",
    "is_revoked",
    "request_identity",
]

#: The answer to a caller whose identity is not proven, whatever its UDID (unknown,
#: registered, enrolled with another certificate): 403, never 401.
NOT_VERIFIED = "device identity not verified"

# Why a message was refused: for the log, never for the caller.
UNKNOWN_DEVICE = "unknown device"
NOT_BOUND = "not bound to a certificate yet"
OTHER_CERTIFICATE = "a different certificate"
NO_IDENTITY = "no identity certificate"
CERTIFICATE_EXPIRED = "certificate expired"
CERTIFICATE_REVOKED = "certificate revoked"
BAD_EXPIRY = "the bound certificate's expiry is unreadable"
# Why a certificate the CA issued cannot enrol a device.
NOT_APPLE = "not an Apple certificate"
OTHER_DEVICE = "certificate bound to another device"

#: The ``method`` of a certificate-bound ``auth``.
METHOD = "certificate"


class IdentityRefused(Exception):
    """A message that is not accepted: answer ``status`` (400 or 403) with ``text``; log
    ``reason``. ``suspicious``: someone presents a certificate that is not the device's (a
    UDID claimed with another device's certificate), worth a warning."""

    def __init__(self, status: int, text: str, reason: str, *, suspicious: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.text = text
        self.reason = reason
        self.suspicious = suspicious


def _not_verified(reason: str, *, suspicious: bool = False) -> IdentityRefused:
    return IdentityRefused(403, NOT_VERIFIED, reason, suspicious=suspicious)


def certificate_sha256(der: bytes) -> str:
    """The identity a certificate stands for: lower-case hex SHA-256 of its DER."""
    return hashlib.sha256(der).hexdigest()


def request_identity(request: Request, *, dev: bool) -> str | None:
    """The identity of the certificate a request comes with: its mTLS client certificate,
    else the signer of its ``Mdm-Signature``; ``None`` with neither.

    :class:`IdentityRefused`: 400 for a header that is not base64 or not a readable
    signature, or when this installation cannot verify CMS (then, in development mode
    only, the request counts as coming without an identity); 403 for a signature that does
    not sign the body."""
    if request.client_cert:
        return certificate_sha256(request.client_cert)
    header = request.header("mdm-signature")
    if not header:
        return None
    if not CMS_SUPPORTED:
        if dev:
            return None  # development mode: accepted, unverified, not bound
        raise IdentityRefused(
            400, "Mdm-Signature cannot be verified here (no CMS support)", "no CMS support"
        )
    try:
        signature = base64.b64decode("".join(header.split()), validate=True)
    except ValueError:
        raise IdentityRefused(400, "Mdm-Signature is not base64", "bad Mdm-Signature") from None
    try:
        cert = verify_detached(signature, request.body)
    except BadSignature as exc:
        raise IdentityRefused(400, f"Mdm-Signature: {exc}", "bad Mdm-Signature") from None
    except SignatureMismatch as exc:
        raise IdentityRefused(
            403, f"Mdm-Signature does not verify: {exc}", "Mdm-Signature does not verify"
        ) from None
    return certificate_sha256(cert)


def bound_identity(device: Device) -> str | None:
    """The identity the device is bound to (lower-case), or ``None``: nothing bound, or
    its certificate revoked (:func:`is_revoked` tells these apart)."""
    if device.auth.get("method") != METHOD:
        return None
    value = device.auth.get("sha256")
    return str(value).lower() if value else None


def is_revoked(auth: Mapping[str, Any]) -> bool:
    """Whether ``auth`` is that of a device whose certificate was revoked."""
    return auth.get("method") == METHOD and "revoked" in auth


def certificate_auth(certificate: IssuedCertificate) -> dict[str, Any]:
    """The ``auth`` that binds a device to a certificate the CA issued: its identity,
    serial and expiry."""
    return {
        "method": METHOD,
        "sha256": certificate.sha256.lower(),
        "serial": certificate.serial,
        "not_after": certificate.not_after,
    }


def _same(identity: str, expected: str) -> bool:
    # Bytes: compare_digest refuses non-ASCII text, and an auth may hold anything.
    return hmac.compare_digest(
        identity.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def _expired(auth: Mapping[str, Any], now: float) -> str | None:
    """Why a bound certificate is no longer good at ``now`` (``None``: it is)."""
    if "not_after" not in auth:
        return None  # bound by trust on first use: no expiry known
    not_after = auth["not_after"]
    if isinstance(not_after, bool) or not isinstance(not_after, int | float):
        return BAD_EXPIRY
    if not math.isfinite(not_after):
        return BAD_EXPIRY
    return CERTIFICATE_EXPIRED if now > not_after else None


def authorize(device: Device | None, identity: str | None, *, dev: bool, now: float) -> Device:
    """The device a message after ``Authenticate`` comes from, if ``identity`` may speak
    for it at ``now``: it is bound to that identity and the certificate has not expired
    (development mode also accepts a device with nothing bound, whatever the identity).
    Else :class:`IdentityRefused` 403 :data:`NOT_VERIFIED`: unknown device, nothing bound,
    another certificate, expired, revoked."""
    if device is None:
        raise _not_verified(UNKNOWN_DEVICE)
    if is_revoked(device.auth):
        raise _not_verified(CERTIFICATE_REVOKED)
    expected = bound_identity(device)
    if expected is None:
        if dev:
            return device
        raise _not_verified(NOT_BOUND)
    if identity is None:
        raise _not_verified(NO_IDENTITY)
    if not _same(identity, expected):
        raise _not_verified(OTHER_CERTIFICATE, suspicious=True)
    expired = _expired(device.auth, now)
    if expired is not None:
        raise _not_verified(expired)
    return device


def authorize_authenticate(device: Device, identity: str | None, *, dev: bool, now: float) -> None:
    """Whether a known device's ``Authenticate`` with ``identity`` is accepted (not through
    a certificate the CA issued: :func:`enrollment_refusal` covers those). Bound: only
    with that certificate, unexpired. Nothing bound: with any identity (bound by trust on
    first use), or without one in development mode. Revoked: never.
    :class:`IdentityRefused` 403 :data:`NOT_VERIFIED` otherwise."""
    if is_revoked(device.auth):
        raise _not_verified(CERTIFICATE_REVOKED)
    expected = bound_identity(device)
    if expected is not None:
        if identity is None or not _same(identity, expected):
            # A UDID claimed with another device's certificate (or none at all).
            raise _not_verified(OTHER_CERTIFICATE, suspicious=True)
        expired = _expired(device.auth, now)
        if expired is not None:
            raise _not_verified(expired)
        return
    if identity is None and not dev:
        raise _not_verified(NO_IDENTITY)


def enrollment_refusal(certificate: IssuedCertificate, device_id: str, *, now: float) -> str | None:
    """Why a certificate the CA issued cannot enrol ``device_id`` at ``now`` (``None``: it
    can): not issued for Apple, revoked, expired (``now`` past ``not_after``), or
    bound to another device."""
    if certificate.platform != "apple":
        return NOT_APPLE
    if certificate.revoked_at is not None:
        return CERTIFICATE_REVOKED
    if now > certificate.not_after:
        return CERTIFICATE_EXPIRED
    if certificate.device_id is not None and certificate.device_id != device_id:
        return OTHER_DEVICE
    return None
