"""CMS SignedData (RFC 5652): signing with the content attached, verifying a detached
signature.

:func:`sign_attached` wraps content the way a signed Apple ``.mobileconfig`` is wrapped.
:func:`verify_detached` checks what an Apple device sends in its ``Mdm-Signature`` header
(a detached signature of the request body) and tells which certificate signed.

asn1crypto reads the structure, cryptography does the maths. Only the fields a
verification needs are read: the certificates carried, and of each signer its identifier,
digest algorithm, signed attributes and signature.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import cms as asn1_cms  # type: ignore[import-untyped]
from asn1crypto import core
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

__all__ = [
    "DIGESTS",
    "BadSignature",
    "CmsError",
    "SignatureMismatch",
    "sign_attached",
    "verify_detached",
]


class CmsError(Exception):
    """A CMS signature that is not accepted."""


class BadSignature(CmsError):
    """The signature cannot be read (not DER, not a SignedData, no signer, no certificate,
    an unsupported algorithm...); the message names what."""


class SignatureMismatch(CmsError):
    """The signature is well formed, but no certificate it carries signed this body."""


#: The digest algorithms a signer may use (asn1crypto's names).
DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

#: asn1crypto's signature algorithm families accepted, by the key type they need.
_RSA = "rsassa_pkcs1v15"
_ECDSA = "ecdsa"

#: What malformed DER makes asn1crypto raise, somewhere inside its lazy parsing.
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError)


def sign_attached(
    content: bytes,
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    chain: Sequence[x509.Certificate] = (),
) -> bytes:
    """``content`` in a DER SignedData, signed by ``key`` (SHA-256; RSA PKCS #1 v1.5 or
    ECDSA) with signed attributes, carrying ``cert`` and then ``chain``. The content is
    signed byte for byte (no S/MIME line-ending conversion)."""
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(cert, key, hashes.SHA256())
    for extra in chain:
        builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


@dataclass(frozen=True)
class _Signer:
    digest: str
    #: ``rsassa_pkcs1v15`` or ``ecdsa``.
    algorithm: str
    #: The signed attributes as signed (a SET), or ``None``: the body itself is signed.
    attributes: bytes | None
    message_digest: bytes | None
    signature: bytes
    #: From the signer identifier: what the signer's certificate has (to try it first).
    serial: int | None
    key_identifier: bytes | None


def verify_detached(signature: bytes, body: bytes) -> bytes:
    """The DER of the certificate that signed ``body`` with the detached CMS signature
    ``signature`` (DER ContentInfo of a SignedData, as ``Mdm-Signature`` carries it once
    base64-decoded).

    A signer with signed attributes must have a ``messageDigest`` equal to the body's
    digest, and its signature is checked over the attributes; without attributes, over the
    body. RSA PKCS #1 v1.5 and ECDSA; SHA-1, SHA-256, SHA-384, SHA-512. Of several
    signers and certificates, the first certificate that verifies a signer is the answer
    (the one the signer names is tried first). No chain is checked: the certificate is
    bound to the device at enrollment, and mTLS deployments check chains in TLS. Content
    carried in the signature is ignored: ``body`` is what is verified.

    :class:`BadSignature` when the signature cannot be read, :class:`SignatureMismatch`
    when it is well formed but does not sign ``body``.
    """
    certificates, signers = _read(signature)
    parsed = [(der, _certificate(der)) for der in certificates]
    digests: dict[str, bytes] = {}
    reason = "no certificate in the signature signed this body"
    for signer in signers:
        if signer.attributes is not None:
            if signer.digest not in digests:
                digests[signer.digest] = hashlib.new(signer.digest, body).digest()
            if not hmac.compare_digest(signer.message_digest or b"", digests[signer.digest]):
                reason = "the message digest is not the body's"
                continue
            signed = signer.attributes
        else:
            signed = body
        for der, cert in sorted(parsed, key=lambda pair: not _named(pair[1], signer)):
            if cert is not None and _verifies(cert, signer, signed):
                return der
    raise SignatureMismatch(reason)


def _read(signature: bytes) -> tuple[list[bytes], list[_Signer]]:
    """The certificates' DER and the signers of a SignedData (:class:`BadSignature`)."""
    try:
        info = asn1_cms.ContentInfo.load(signature, strict=True)
        content_type = info["content_type"].native
        if content_type != "signed_data":
            raise BadSignature(f"not a CMS SignedData (content type {content_type})")
        signed_data = info["content"]
        certificates = _certificate_ders(signed_data["certificates"])
        signers = [_signer(info) for info in signed_data["signer_infos"]]
    except _PARSE_ERRORS as exc:
        raise BadSignature(f"not a readable CMS SignedData ({_first_line(exc)})") from None
    if not certificates:
        raise BadSignature("the signature carries no certificate")
    if not signers:
        raise BadSignature("the signature has no signer")
    return certificates, signers


def _certificate_ders(certificates: object) -> list[bytes]:
    if isinstance(certificates, core.Void):
        return []
    # Attribute certificates and other kinds cannot sign: only X.509 certificates count.
    return [c.chosen.dump() for c in certificates if c.name == "certificate"]  # type: ignore[attr-defined]


def _signer(info: asn1_cms.SignerInfo) -> _Signer:
    digest = info["digest_algorithm"]["algorithm"].native
    if digest not in DIGESTS:
        raise BadSignature(f"unsupported digest algorithm {digest}")
    try:
        algorithm = info["signature_algorithm"].signature_algo
    except ValueError:
        algorithm = info["signature_algorithm"]["algorithm"].native
    if algorithm not in (_RSA, _ECDSA):
        raise BadSignature(f"unsupported signature algorithm {algorithm}")
    attributes = info["signed_attrs"]
    signed: bytes | None = None
    message_digest: bytes | None = None
    if not isinstance(attributes, core.Void):
        for attribute in attributes:
            if attribute["type"].native == "message_digest":
                values = attribute["values"]
                if len(values) != 1:
                    raise BadSignature("a messageDigest attribute without exactly one value")
                message_digest = values[0].native
        if message_digest is None:
            raise BadSignature("signed attributes without a messageDigest")
        # The signature covers the attributes encoded as a SET: their own tag, not [0].
        signed = b"\x31" + attributes.dump()[1:]
    sid = info["sid"]
    serial = sid.chosen["serial_number"].native if sid.name == "issuer_and_serial_number" else None
    key_identifier = sid.chosen.native if sid.name == "subject_key_identifier" else None
    return _Signer(
        digest=digest,
        algorithm=algorithm,
        attributes=signed,
        message_digest=message_digest,
        signature=info["signature"].native,
        serial=serial,
        key_identifier=key_identifier,
    )


def _certificate(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion):
        return None  # one unreadable certificate does not spoil the others


def _named(cert: x509.Certificate | None, signer: _Signer) -> bool:
    """Whether ``cert`` is the one the signer names (a hint for the order of tries)."""
    if cert is None:
        return False
    if signer.serial is not None:
        return cert.serial_number == signer.serial
    if signer.key_identifier is not None:
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except (x509.ExtensionNotFound, ValueError):
            return False
        return ski.value.digest == signer.key_identifier
    return False


def _verifies(cert: x509.Certificate, signer: _Signer, signed: bytes) -> bool:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return False
    algorithm = DIGESTS[signer.digest]()
    try:
        if isinstance(key, rsa.RSAPublicKey) and signer.algorithm == _RSA:
            key.verify(signer.signature, signed, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and signer.algorithm == _ECDSA:
            key.verify(signer.signature, signed, ec.ECDSA(algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
