"""Keys, names, certificate requests and certificates the tests make for themselves, with
``cryptography`` only.

Nothing here comes from ``mdmgate``: the tests judge what the gateway issues and reads with
material of their own, and the independent SCEP requester (tests/scep_client.py) builds on
this module too, so it must stay free of the product.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID

__all__ = [
    "CLOCK_SKEW",
    "Credential",
    "Issuer",
    "PrivateKey",
    "certificate",
    "common_name",
    "csr_der",
    "der",
    "ec_key",
    "key_pem",
    "public_key_der",
    "rsa_key",
]

#: The keys a test certificate is made for or signed with.
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
#: Who signs a certificate: the name it carries as its issuer, and the key that signs it
#: (which need not be the one that name's certificate holds: a forgery is made so).
Issuer = tuple[x509.Name, PrivateKey]
#: How long before "now" a certificate made now starts to be valid: a verifier whose clock
#: is a little behind still accepts it.
CLOCK_SKEW = dt.timedelta(minutes=5)


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    """A key on ``curve`` (default P-256)."""
    return ec.generate_private_key(curve or ec.SECP256R1())


def common_name(name: str) -> x509.Name:
    """The name with one attribute, the common name ``name``."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _name(subject: str | x509.Name) -> x509.Name:
    return common_name(subject) if isinstance(subject, str) else subject


def csr_der(
    key: CertificateIssuerPrivateKeyTypes,
    subject: str | x509.Name,
    *,
    digest: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A PKCS#10 request for ``key`` naming ``subject`` (a string: the common name), signed
    with ``digest`` (default SHA-256), as DER."""
    request = x509.CertificateSigningRequestBuilder().subject_name(_name(subject))
    signed = request.sign(key, digest if digest is not None else hashes.SHA256())  # type: ignore[arg-type]
    return signed.public_bytes(serialization.Encoding.DER)


def certificate(
    subject: str | x509.Name,
    key: PrivateKey | CertificatePublicKeyTypes,
    *,
    issuer: Issuer | None = None,
    now: dt.datetime | None = None,
    days: float = 1,
    ca: bool | None = None,
) -> x509.Certificate:
    """A SHA-256 certificate of ``key``'s public key naming ``subject`` (a string: the common
    name): signed by ``issuer``, or self-signed (``key`` must then be the private key). Made
    at ``now`` (default the clock's): valid from :data:`CLOCK_SKEW` before it until ``days``
    after it. With a critical BasicConstraints extension when ``ca`` is given.

    ``TypeError`` for a self-signed certificate of a public key (nothing could sign it)."""
    name = _name(subject)
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        public = key.public_key()
        issuer = issuer or (name, key)
    elif issuer is None:
        raise TypeError(
            f"a self-signed certificate needs the subject's private key, not {type(key).__name__}"
        )
    else:
        public = key
    made = now or dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0])
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(made - CLOCK_SKEW)
        .not_valid_after(made + dt.timedelta(days=days))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    return builder.sign(issuer[1], hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def key_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_der(
    holder: PrivateKey | x509.Certificate | x509.CertificateSigningRequest,
) -> bytes:
    """The SubjectPublicKeyInfo (DER) of a key, a certificate or a request."""
    return holder.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class Credential:
    """A private key and its certificate: a device's identity, a requester's, a CA's."""

    key: PrivateKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return der(self.cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def issuer(self) -> Issuer:
        """What :func:`certificate` needs to have this credential sign a certificate."""
        return self.cert.subject, self.key
