"""How the runner registers a fleet through the admin API (``POST /api/v1/devices``), and
the TLS client identities of devices that show one, issued from ``--device-ca``."""

from __future__ import annotations

from typing import Any

from mdmgate.simulate.scenario import APPLE_PLATFORMS, DeviceProfile

__all__ = ["load_issuer", "needs_identity", "registration"]


def registration(profile: DeviceProfile, sha256: str | None) -> dict[str, Any]:
    """The device's entry in a registration request; ``sha256``: its client certificate's."""
    entry: dict[str, Any] = {
        "id": profile.id,
        "platform": profile.platform,
        "org": profile.org,
        "os_version": profile.os_version,
    }
    if profile.platform in APPLE_PLATFORMS:
        # Bound by trust on first use to the identity it enrolls with.
        entry["auth"] = {}
    elif profile.auth in ("md5", "basic"):
        entry["auth"] = {
            "method": profile.auth,
            "username": profile.username,
            "secret": profile.secret,
        }
    elif sha256 is not None:
        entry["auth"] = {"method": "certificate", "sha256": sha256}
    return entry


def needs_identity(profile: DeviceProfile) -> bool:
    """Whether the device shows a TLS client certificate."""
    return profile.auth == ("mtls" if profile.platform in APPLE_PLATFORMS else "certificate")


def load_issuer(device_ca: str) -> Any:
    """The :class:`~mdmgate.simulate.apple.IdentityIssuer` of a CA certificate and its EC
    key (one PEM file); ``ValueError`` naming the problem."""
    from cryptography import x509  # noqa: PLC0415 - mTLS fleets only
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    from mdmgate.simulate.apple import IdentityIssuer  # noqa: PLC0415

    try:
        with open(device_ca, "rb") as f:
            pem = f.read()
        cert = x509.load_pem_x509_certificate(pem)
        key = serialization.load_pem_private_key(pem, None)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(
            f"--device-ca {device_ca}: not a CA certificate and its unencrypted key (PEM): {e}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"--device-ca {device_ca}: the CA key must be an EC key")
    return IdentityIssuer(cert, key)
