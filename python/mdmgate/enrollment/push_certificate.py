"""The APNs MDM push certificate an administrator uploads (pure functions, no I/O).

Apple issues it (through the Apple Push Certificates Portal) with the push topic in the
subject's UID attribute, ``com.apple.mgmt.External.<uuid>``: the topic is read from there,
never typed in. It is kept in the store (material ``apns``) so that every node pushes with
it, its private key encrypted with the CA passphrase like the CA's own.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

__all__ = [
    "MATERIAL",
    "WARN_DAYS",
    "PushCertificate",
    "PushCertificateError",
    "decrypt",
    "from_pem",
    "from_pkcs12",
]

#: The store material holding it.
MATERIAL = "apns"
#: Apple's certificates last a year and lapse silently: warn this long before.
WARN_DAYS = 30


class PushCertificateError(ValueError):
    """An upload that is not a usable MDM push certificate; the message says why."""


@dataclass(frozen=True)
class PushCertificate:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @property
    def topic(self) -> str:
        found = self.certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
        return str(found[0].value) if found else ""

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def days_left(self, now: datetime.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400.0

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key in the clear (PKCS #8), for a TLS context; never stored."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def dump(self, passphrase: bytes) -> bytes:
        """What the store keeps: the certificate and the key encrypted with ``passphrase``."""
        key = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        return self.cert_pem() + key


def _checked(cert: x509.Certificate, key: object) -> PushCertificate:
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PushCertificateError("the private key is neither RSA nor EC")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise PushCertificateError("the private key does not belong to the certificate")
    pushed = PushCertificate(cert, key)
    if not pushed.topic.startswith("com.apple.mgmt."):
        raise PushCertificateError(
            "the certificate's subject has no MDM push topic (UID com.apple.mgmt...):"
            " upload the MDM push certificate from the Apple Push Certificates Portal"
        )
    return pushed


def from_pem(data: bytes, password: bytes | None = None) -> PushCertificate:
    """The certificate and key from PEM text holding both (the key encrypted with
    ``password`` or in the clear)."""
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise PushCertificateError("no PEM certificate in the upload") from None
    try:
        key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError) as e:
        raise PushCertificateError(f"the private key cannot be read: {e}") from None
    return _checked(cert, key)


def from_pkcs12(data: bytes, password: bytes | None) -> PushCertificate:
    """The certificate and key from a PKCS #12 (.p12) file, as Keychain exports it."""
    try:
        key, cert, _ = pkcs12.load_key_and_certificates(data, password)
    except (ValueError, TypeError) as e:
        raise PushCertificateError(f"not a PKCS #12 file with this password: {e}") from None
    if cert is None or key is None:
        raise PushCertificateError("the PKCS #12 file lacks the certificate or its key")
    return _checked(cert, key)


def decrypt(stored: bytes, passphrase: bytes) -> PushCertificate:
    """What :meth:`PushCertificate.dump` wrote, read back."""
    return from_pem(stored, passphrase)
