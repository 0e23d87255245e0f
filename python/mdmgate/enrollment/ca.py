"""The certificate authority that issues device identity certificates (Windows over
MS-WSTEP, Apple over SCEP).

Either a self-signed root the gateway creates on its first start (:func:`load_or_create`:
kept in the store, its key encrypted with a passphrase, shared by every node), or an
enterprise's own issuing CA read from files (:meth:`CertificateAuthority.from_files`).
Everything here is pure: no store access but through :func:`load_or_create`'s argument, no
clock but the ``now`` the caller passes.

A device certificate names the device (CN) and, optionally, its organization; it is good
for TLS client authentication only, never for issuing (CA:FALSE). The CA checks every
request before it signs: the request's own signature (proof that the requester holds the
key) and the key's strength (:class:`CaPolicy`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mdmgate.enrollment import cms

if TYPE_CHECKING:
    from mdmgate.storage.enrollment import EnrollmentStore

__all__ = [
    "EC_CURVES",
    "MATERIAL_NAME",
    "ROOT_KEYS",
    "CaError",
    "CaKey",
    "CaPolicy",
    "CertificateAuthority",
    "CsrRefused",
    "fingerprint",
    "load_or_create",
    "serial_hex",
]

#: The private keys a CA may have.
CaKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: The root keys :meth:`CertificateAuthority.create` makes, and their size in bits.
ROOT_KEYS = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}

#: The curves a device key may be on (cryptography's names, and what people call them).
EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

#: Larger RSA keys cost every TLS handshake and signature check dearly, and no device makes
#: them: a request for one is more likely an attempt to burn CPU than a real device.
MAX_RSA_BITS = 8192

#: The store's name for the CA's material (:meth:`CertificateAuthority.dump`).
MATERIAL_NAME = "ca"

#: Certificates start this long before "now": a device whose clock is a little behind must
#: not see a certificate that is not valid yet.
CLOCK_SKEW = dt.timedelta(minutes=5)

#: RFC 5280: a serial number is a positive integer of at most 20 octets (so at most 159
#: bits, as DER integers are signed).
_MAX_SERIAL = 1 << 159

#: X.520's upper bound on a name attribute (ub-common-name, ub-organization-name...).
_MAX_NAME = 64

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----\r?\n?", re.DOTALL)

#: The setting that holds the passphrase of the CA kept in the store (enrollment.settings).
_PASSPHRASE_SETTING = "[enrollment] ca_passphrase (or MDMGATE_CA_PASSPHRASE)"


class CaError(Exception):
    """The CA material cannot be used: a wrong passphrase, a certificate that is not a CA, a
    key that is not the certificate's, an unreadable file. The message says which."""


class CsrRefused(ValueError):
    """A certificate signing request the CA will not sign; the message names why (an
    unreadable request, a signature that does not verify, a weak or unsupported key)."""


@dataclass(frozen=True)
class CaPolicy:
    """What the CA creates and what it signs.

    ``root_key``: the root's key when the gateway creates its own CA. RSA, because SCEP
    clients encrypt their request to the CA's key (key transport), which an EC key cannot
    do; 3072 bits because the root outlives 2030, after which NIST retires 2048-bit RSA
    (SP 800-131A). ``rsa-2048``, ``rsa-3072`` or ``rsa-4096``.

    ``root_validity_days``: ten years. Every enrolled device trusts the root; when it
    expires, every device must enrol again at once.

    ``device_validity_days``: one year. Windows renews its certificate before it expires
    (MS-WSTEP renewal) and Apple devices re-enrol with a new profile; a lost device's
    certificate stops working within a year even if nobody revokes it. At most
    ``root_validity_days`` (a device certificate never outlives its CA anyway).

    ``min_rsa_bits``: the smallest RSA key a device may have certified: 2048, NIST's
    minimum, and never less. EC keys are accepted on P-256, P-384 and P-521
    (:data:`EC_CURVES`); other curves and key types are refused.
    """

    root_key: str = "rsa-3072"
    root_validity_days: int = 3650
    device_validity_days: int = 365
    min_rsa_bits: int = 2048

    def check(self) -> None:
        """``ValueError`` naming the first value that cannot be used."""
        if self.root_key not in ROOT_KEYS:
            raise ValueError(f"root_key {self.root_key!r} is not one of {', '.join(ROOT_KEYS)}")
        for name in ("root_validity_days", "device_validity_days", "min_rsa_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number, not {value!r}")
        if self.root_validity_days < 1:
            raise ValueError("root_validity_days must be at least 1")
        if not 1 <= self.device_validity_days <= self.root_validity_days:
            raise ValueError("device_validity_days must be from 1 to root_validity_days")
        if not 2048 <= self.min_rsa_bits <= MAX_RSA_BITS:
            raise ValueError(f"min_rsa_bits must be from 2048 to {MAX_RSA_BITS}")


class CertificateAuthority:
    """A CA certificate with its private key, and the policy it issues under.

    Built by :meth:`create`, :meth:`load`, :meth:`from_files` (or directly from a
    certificate and key), which all check that the certificate is a CA (basicConstraints
    CA:TRUE, keyCertSign if it has a keyUsage), that the key is RSA or EC and is the
    certificate's, and the policy (:class:`CaError`, or ``ValueError`` for the policy).
    """

    def __init__(self, certificate: x509.Certificate, private_key: CaKey, policy: CaPolicy) -> None:
        policy.check()
        if not isinstance(private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise CaError(f"unsupported CA key type {_key_type(private_key)}: RSA or EC")
        _check_is_ca(certificate)
        try:
            public = certificate.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CaError(f"the CA certificate's public key cannot be read: {exc}") from None
        if _spki(public) != _spki(private_key.public_key()):
            raise CaError("the CA private key does not match the CA certificate")
        self.certificate = certificate
        self.policy = policy
        self._key = private_key
        self._der = certificate.public_bytes(serialization.Encoding.DER)

    # -- making and keeping

    @classmethod
    def create(
        cls, common_name: str, policy: CaPolicy, *, now: dt.datetime
    ) -> CertificateAuthority:
        """A new self-signed root named ``common_name``, with a new ``policy.root_key`` RSA
        key: CA:TRUE with path length 0 (it issues device certificates only), keyUsage
        keyCertSign and cRLSign, and digitalSignature and keyEncipherment because SCEP signs
        its replies with this certificate and devices encrypt their requests to it. Valid
        from five minutes before ``now`` (clock skew) for ``policy.root_validity_days``."""
        policy.check()
        now = _aware(now)
        subject = x509.Name([_name_attribute(NameOID.COMMON_NAME, common_name, "common name")])
        key = rsa.generate_private_key(public_exponent=65537, key_size=ROOT_KEYS[policy.root_key])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=policy.root_validity_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key, policy)

    def dump(self, passphrase: bytes) -> bytes:
        """The CA as one blob: its certificate (PEM) and its private key (PEM, PKCS #8),
        encrypted with ``passphrase``. ``ValueError`` for an empty passphrase: the key is
        never kept in the clear."""
        if not passphrase:
            raise ValueError("the CA passphrase is empty: the CA key is never kept in the clear")
        key = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        return self.pem + key

    @classmethod
    def load(cls, blob: bytes, passphrase: bytes, policy: CaPolicy) -> CertificateAuthority:
        """The CA :meth:`dump` wrote. :class:`CaError` for a wrong passphrase, a blob without
        a certificate or key, or a key that is not the certificate's."""
        blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(blob)]
        cert_pem = next((b for kind, b in blocks if kind == b"CERTIFICATE"), None)
        key_pem = next((b for kind, b in blocks if kind.endswith(b"PRIVATE KEY")), None)
        if cert_pem is None:
            raise CaError("the CA material holds no certificate")
        if key_pem is None:
            raise CaError("the CA material holds no private key")
        certificate = _certificate(cert_pem, "the CA material's certificate")
        key = _private_key(key_pem, passphrase, "the CA key")
        return cls(certificate, key, policy)

    @classmethod
    def from_files(
        cls,
        cert_path: str | Path,
        key_path: str | Path,
        passphrase: bytes | None,
        policy: CaPolicy,
    ) -> CertificateAuthority:
        """An enterprise's own issuing CA: its certificate (PEM or DER; the first one of a
        PEM file) and its private key (PEM or DER, PKCS #8 or the traditional format),
        encrypted with ``passphrase`` (``None``: in the clear). :class:`CaError` names the
        file that cannot be read or used."""
        certificate = _certificate(_read(cert_path, "certificate"), f"CA certificate {cert_path}")
        key = _private_key(_read(key_path, "key"), passphrase, f"CA key {key_path}")
        return cls(certificate, key, policy)

    # -- what it is

    @property
    def der(self) -> bytes:
        """The CA certificate, DER."""
        return self._der

    @property
    def pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def private_key(self) -> CaKey:
        return self._key

    def rsa_key(self) -> rsa.RSAPrivateKey:
        """The CA's key for SCEP, which decrypts what devices encrypt to it: :class:`CaError`
        when the key is not RSA."""
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise CaError("the CA key is not RSA: SCEP needs an RSA CA")
        return self._key

    # -- issuing

    def check_csr(self, csr_der: bytes) -> x509.CertificateSigningRequest:
        """The PKCS #10 request in ``csr_der`` (DER, or PEM), if the CA would sign it: its
        signature verifies with its own key (the requester holds the key), and the key is
        RSA of ``policy.min_rsa_bits`` to :data:`MAX_RSA_BITS` bits or EC on a curve of
        :data:`EC_CURVES`. :class:`CsrRefused` naming why not."""
        try:
            if csr_der.lstrip().startswith(b"-----BEGIN"):
                csr = x509.load_pem_x509_csr(csr_der)
            else:
                csr = x509.load_der_x509_csr(csr_der)
        except (ValueError, x509.InvalidVersion):
            raise CsrRefused("not a PKCS #10 request") from None
        self._check_request(csr)
        return csr

    def _check_request(self, csr: x509.CertificateSigningRequest) -> None:
        try:
            key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise CsrRefused("unsupported key type: the request's key cannot be read") from None
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < self.policy.min_rsa_bits:
                raise CsrRefused(
                    f"RSA key of {key.key_size} bits; at least {self.policy.min_rsa_bits}"
                )
            if key.key_size > MAX_RSA_BITS:
                raise CsrRefused(f"RSA key of {key.key_size} bits; at most {MAX_RSA_BITS}")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in EC_CURVES:
                allowed = ", ".join(EC_CURVES.values())
                raise CsrRefused(f"unsupported key type: EC on {key.curve.name}; {allowed}")
        else:
            raise CsrRefused(f"unsupported key type {_key_type(key)}; RSA or EC")
        try:
            valid = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm):
            valid = False
        if not valid:
            raise CsrRefused("signature does not verify")

    def issue(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        common_name: str,
        now: dt.datetime,
        organization: str | None = None,
        organizational_unit: str | None = None,
        validity_days: int | None = None,
        serial: int | None = None,
    ) -> x509.Certificate:
        """A device certificate for the key of ``csr`` (checked again as
        :meth:`check_csr` does: :class:`CsrRefused`).

        Subject CN=``common_name`` (and O, OU when given; each 1 to 64 characters); nothing
        else of the request is copied (a device does not choose its name or extensions).
        Serial ``serial`` or a random one; CA:FALSE; keyUsage digitalSignature, plus
        keyEncipherment for an RSA key (RFC 5480 forbids it for EC keys); extended key usage
        clientAuth; subject and authority key identifiers. Valid from five minutes before
        ``now`` for ``validity_days`` (default ``policy.device_validity_days``), never past
        the CA's own end. :class:`CaError` once the CA has expired; ``ValueError`` for a
        bad name, validity or serial."""
        now = _aware(now)
        self._check_request(csr)
        days = self.policy.device_validity_days if validity_days is None else validity_days
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"validity_days must be a whole number of at least 1, not {days!r}")
        if serial is None:
            serial = x509.random_serial_number()
        elif isinstance(serial, bool) or not 0 < serial < _MAX_SERIAL:
            raise ValueError("serial must be positive and fit 20 octets (RFC 5280)")
        ca_end = self.certificate.not_valid_after_utc
        if now >= ca_end:
            raise CaError(f"the CA certificate expired at {ca_end.isoformat()}")
        attributes = [_name_attribute(NameOID.COMMON_NAME, common_name, "common name")]
        if organization is not None:
            attributes.append(
                _name_attribute(NameOID.ORGANIZATION_NAME, organization, "organization")
            )
        if organizational_unit is not None:
            attributes.append(
                _name_attribute(
                    NameOID.ORGANIZATIONAL_UNIT_NAME, organizational_unit, "organizational unit"
                )
            )
        key = csr.public_key()
        assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)  # checked above
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=isinstance(key, rsa.RSAPublicKey),
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.certificate.subject)
            .public_key(key)
            .serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + dt.timedelta(days=days), ca_end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        return builder.sign(self._key, _signature_hash(self._key))

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            # An enterprise CA without one: the usual SHA-1 of its key, which is what its
            # issuer would have put there.
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)

    def sign(self, content: bytes) -> bytes:
        """``content`` in a CMS SignedData (DER) signed by the CA with SHA-256, the CA
        certificate carried: what a signed Apple ``.mobileconfig`` is."""
        return cms.sign_attached(content, self.certificate, self._key)


def serial_hex(serial: int) -> str:
    """A serial number as the store keys it: lower-case hex, no leading zeros.
    ``ValueError`` for a serial that is not positive."""
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise ValueError(f"a certificate serial is a positive integer, not {serial!r}")
    return format(serial, "x")


def fingerprint(der: bytes) -> str:
    """Lower-case hex SHA-256 of a certificate's DER: what device endpoints compare."""
    return hashlib.sha256(der).hexdigest()


async def load_or_create(
    store: EnrollmentStore,
    *,
    passphrase: bytes,
    policy: CaPolicy,
    common_name: str,
    now: dt.datetime,
) -> CertificateAuthority:
    """The CA kept in the store (material :data:`MATERIAL_NAME`), created on the first
    start: of several nodes that start at once, each may create one, and all use the one
    stored first (``put_material`` keeps the first writer's). :class:`CaError` naming the
    passphrase setting when the stored CA cannot be opened with ``passphrase``."""
    blob = await store.get_material(MATERIAL_NAME)
    if blob is None:
        # Seconds of CPU for a 3072/4096-bit key: off the event loop.
        created = await trio.to_thread.run_sync(
            lambda: CertificateAuthority.create(common_name, policy, now=now)
        )
        ours = created.dump(passphrase)
        blob = await store.put_material(MATERIAL_NAME, ours)
        if blob == ours:
            return created
    try:
        return CertificateAuthority.load(blob, passphrase, policy)
    except CaError as exc:
        raise CaError(
            f"the CA kept in the store cannot be used ({exc}); its passphrase is "
            f"{_PASSPHRASE_SETTING}"
        ) from None


# -- helpers


def _aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(dt.UTC)


def _name_attribute(oid: x509.ObjectIdentifier, value: str, what: str) -> x509.NameAttribute[str]:
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_NAME:
        raise ValueError(f"the {what} must be 1 to {_MAX_NAME} characters, not {value!r}")
    return x509.NameAttribute(oid, value)


def _check_is_ca(certificate: x509.Certificate) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CaError("the CA certificate is not a CA (no basicConstraints CA:TRUE)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise CaError("the CA certificate is not a CA (its keyUsage lacks keyCertSign)")


def _spki(key: object) -> bytes:
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signature_hash(key: CaKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """SHA-256 for RSA; for EC the hash that matches the curve's strength."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _key_type(key: object) -> str:
    names: list[tuple[type, str]] = [
        (ed25519.Ed25519PublicKey, "Ed25519"),
        (ed25519.Ed25519PrivateKey, "Ed25519"),
        (ed448.Ed448PublicKey, "Ed448"),
        (ed448.Ed448PrivateKey, "Ed448"),
        (dsa.DSAPublicKey, "DSA"),
        (dsa.DSAPrivateKey, "DSA"),
    ]
    for kind, label in names:
        if isinstance(key, kind):
            return label
    return type(key).__name__


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CaError(f"cannot read the CA {what} {path}: {exc.strerror or exc}") from None


def _certificate(data: bytes, where: str) -> x509.Certificate:
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion):
        raise CaError(f"{where} is not a readable certificate (PEM or DER)") from None


def _private_key(data: bytes, passphrase: bytes | None, where: str) -> CaKey:
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, passphrase)
        else:
            key = serialization.load_der_private_key(data, passphrase)
    except TypeError:
        if passphrase is None:
            raise CaError(f"{where} is encrypted and no passphrase was given") from None
        raise CaError(
            f"{where} is not encrypted, but a passphrase was given: encrypt it with the "
            "passphrase (the CA key is never kept in the clear)"
        ) from None
    except ValueError as exc:
        if "password" in str(exc).lower():
            raise CaError(f"wrong passphrase for {where}") from None
        raise CaError(f"{where} is not a readable private key") from None
    except UnsupportedAlgorithm:
        raise CaError(f"{where} is of an unsupported type") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CaError(f"unsupported CA key type {_key_type(key)}: RSA or EC")
    return key
