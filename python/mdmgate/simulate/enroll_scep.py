"""The SCEP requester (RFC 8894) of a simulated Apple device, as pure functions over bytes.

:func:`pkcs_req` builds the PKCSReq a device sends after installing its enrollment profile:
its PKCS#10 request (with the profile's challenge) enveloped for the CA's RSA key (PKCS#1
v1.5 key transport, AES-CBC content) and signed with the device's new key under a
self-signed certificate, as RFC 8894 section 2.3 has a requester without a certificate do.
:func:`read_cert_rep` checks the reply as a careful device does (the CA's signature over
the signed attributes, the message digest, the echoed transaction ID and nonce) and, on
SUCCESS, opens the envelope addressed to the device and picks its certificate out of the
certs-only SignedData inside. :func:`ca_certificates` reads a GetCACert answer.

Nothing here comes from the gateway's own SCEP server (``mdmgate.enrollment``): the
simulator drives any gateway, and a bug on one side must not be mirrored on the other. Only
what a device needs is supported: RSA signing keys (SCEP envelopes the reply to them),
SHA-256, AES-128/192/256-CBC.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms, core  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

__all__ = [
    "FAILURE",
    "PENDING",
    "SUCCESS",
    "CertRep",
    "PkcsReq",
    "ScepReplyError",
    "ca_certificates",
    "pkcs_req",
    "read_cert_rep",
]

# RFC 8894 section 3.2.1: the SCEP attributes (id-VeriSign pki attributes).
_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
_PKI_STATUS = "2.16.840.1.113733.1.9.3"
_FAIL_INFO = "2.16.840.1.113733.1.9.4"
_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
# RFC 8894 section 3.2.1.4.2: failInfoText.
_FAIL_INFO_TEXT = "1.3.6.1.5.5.7.24.1"
_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_RSA = "1.2.840.113549.1.1.1"
_SHA256 = "2.16.840.1.101.3.4.2.1"

_PKCS_REQ = "19"
_CERT_REP = "3"
SUCCESS, FAILURE, PENDING = 0, 2, 3
#: failInfo values (RFC 8894 section 3.2.1.4), as a device shows them.
_FAIL_NAMES = {
    "0": "badAlg",
    "1": "badMessageCheck",
    "2": "badRequest",
    "3": "badTime",
    "4": "badCertId",
}
# The AES content ciphers by OID, and their key lengths.
_AES = {
    "2.16.840.1.101.3.4.1.2": 16,
    "2.16.840.1.101.3.4.1.22": 24,
    "2.16.840.1.101.3.4.1.42": 32,
}
_AES128_CBC = "2.16.840.1.101.3.4.1.2"
_DIGESTS: dict[str, hashes.HashAlgorithm] = {
    _SHA256: hashes.SHA256(),
    "2.16.840.1.101.3.4.2.3": hashes.SHA512(),
    "1.3.14.3.2.26": hashes.SHA1(),
}


class ScepReplyError(ValueError):
    """An answer a device would not accept (not a CertRep, a signature that does not
    verify, another transaction's reply...): the message says which check failed."""


@dataclass(frozen=True)
class PkcsReq:
    """A PKCSReq as sent (``body``), with what its reply must echo and the self-signed
    certificate the reply's envelope is addressed to."""

    body: bytes
    transaction_id: str
    sender_nonce: bytes
    signer: x509.Certificate


@dataclass(frozen=True)
class CertRep:
    """A verified CertRep: ``status`` :data:`SUCCESS` with the ``certificate`` issued for the
    device's key, or :data:`FAILURE` with ``fail_info`` (its name) and ``fail_text``, or
    :data:`PENDING`."""

    status: int
    certificate: x509.Certificate | None = None
    fail_info: str | None = None
    fail_text: str | None = None


def ca_certificates(content_type: str, body: bytes) -> list[x509.Certificate]:
    """The certificates of a GetCACert answer: one DER certificate, or a degenerate PKCS#7
    holding the CA (and an RA, if the server has one)."""
    kind = content_type.split(";", maxsplit=1)[0].strip().lower()
    try:
        if kind == "application/x-x509-ca-ra-cert":
            return list(pkcs7.load_der_pkcs7_certificates(body))
        return [x509.load_der_x509_certificate(body)]
    except ValueError as e:
        raise ScepReplyError(f"GetCACert answered no certificate ({kind}): {e}") from None


def recipient(certificates: list[x509.Certificate]) -> x509.Certificate:
    """The certificate a request is enveloped to: an RA's when the server has one (the
    certificate that is not a CA), else the CA's."""
    for cert in certificates:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca and isinstance(cert.public_key(), rsa.RSAPublicKey):
            return cert
    if not certificates or not isinstance(certificates[0].public_key(), rsa.RSAPublicKey):
        raise ScepReplyError("the SCEP server's certificate has no RSA key to envelope to")
    return certificates[0]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _issuer_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    parsed = asn1_x509.Certificate.load(_der(cert))
    return cms.IssuerAndSerialNumber(
        {"issuer": parsed.issuer, "serial_number": parsed.serial_number}
    )


def _self_signed(key: rsa.RSAPrivateKey, subject: x509.Name) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _envelope(content: bytes, to: x509.Certificate, key_bytes: int) -> bytes:
    public_key = to.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)  # recipient() picked an RSA one
    content_key, iv = os.urandom(key_bytes), os.urandom(16)
    padder = block_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padder.update(content) + padder.finalize()) + (
        encryptor.finalize()
    )
    oid = next(o for o, n in _AES.items() if n == key_bytes)
    transport = cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": cms.RecipientIdentifier(
                name="issuer_and_serial_number", value=_issuer_serial(to)
            ),
            "key_encryption_algorithm": {"algorithm": _RSA},
            "encrypted_key": public_key.encrypt(content_key, padding.PKCS1v15()),
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [cms.RecipientInfo(name="ktri", value=transport)],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {
                    "algorithm": oid,
                    "parameters": core.OctetString(iv),
                },
                "encrypted_content": encrypted,
            },
        }
    )
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump())


def _attribute(oid: str, value: Any) -> cms.CMSAttribute:
    return cms.CMSAttribute({"type": oid, "values": [value]})


def pkcs_req(
    *,
    key: rsa.RSAPrivateKey,
    csr_der: bytes,
    to: x509.Certificate,
    subject: x509.Name | None = None,
    aes_key_bytes: int = 16,
) -> PkcsReq:
    """The PKCSReq carrying ``csr_der`` (a PKCS#10 signed by ``key``) enveloped for ``to``
    (:func:`recipient`) and signed by ``key`` under a fresh self-signed certificate of
    ``subject`` (the device's own name by default)."""
    default = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    signer = _self_signed(key, subject or default)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # RFC 8894 section 3.2.1.1: a transaction names the key it certifies.
    transaction_id = hashlib.sha256(public).hexdigest()
    nonce = os.urandom(16)
    content = _envelope(csr_der, to, aes_key_bytes)
    digest = hashlib.sha256(content).digest()
    signed_attributes = cms.CMSAttributes(
        [
            _attribute(_CONTENT_TYPE, cms.ContentType("data")),
            _attribute(_MESSAGE_DIGEST, core.OctetString(digest)),
            _attribute(_MESSAGE_TYPE, core.PrintableString(_PKCS_REQ)),
            _attribute(_TRANSACTION_ID, core.PrintableString(transaction_id)),
            _attribute(_SENDER_NONCE, core.OctetString(nonce)),
        ]
    )
    # The signature covers the attributes' DER as a SET OF (RFC 5652 section 5.4).
    signature = key.sign(signed_attributes.dump(), padding.PKCS1v15(), hashes.SHA256())
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                name="issuer_and_serial_number", value=_issuer_serial(signer)
            ),
            "digest_algorithm": {"algorithm": _SHA256},
            "signed_attrs": signed_attributes,
            "signature_algorithm": {"algorithm": _RSA},
            "signature": signature,
        }
    )
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": _SHA256}],
            "encap_content_info": {"content_type": "data", "content": content},
            "certificates": [asn1_x509.Certificate.load(_der(signer))],
            "signer_infos": [signer_info],
        }
    )
    body = bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())
    return PkcsReq(body, transaction_id, nonce, signer)


def _value(attributes: dict[str, Any], oid: str, spec: Any) -> Any:
    found = attributes.get(oid)
    if found is None:
        return None
    values = list(found["values"])
    if len(values) != 1:
        raise ScepReplyError(f"the reply's attribute {oid} has {len(values)} values")
    value = values[0]
    if isinstance(value, core.Any):
        value = value.parse(spec)
    return value.native


def _signer_of(signer_info: Any, certificates: list[x509.Certificate]) -> x509.Certificate | None:
    sid = signer_info["sid"]
    if sid.name == "issuer_and_serial_number":
        wanted = sid.chosen.dump()
        return next((c for c in certificates if _issuer_serial(c).dump() == wanted), None)
    for cert in certificates:
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            continue
        if ski.digest == sid.chosen.native:
            return cert
    return None


def _verify(signed: Any, trusted: list[x509.Certificate]) -> dict[str, Any]:
    """The signed attributes by OID, once the signature of one of ``trusted`` verifies."""
    infos = list(signed["signer_infos"])
    if len(infos) != 1:
        raise ScepReplyError(f"the reply has {len(infos)} signers, not one")
    info = infos[0]
    cert = _signer_of(info, trusted)
    if cert is None:
        raise ScepReplyError("the reply is not signed by the SCEP server's certificate")
    algorithm = _DIGESTS.get(info["digest_algorithm"]["algorithm"].dotted)
    if algorithm is None:
        raise ScepReplyError("the reply's digest algorithm is not SHA-1, SHA-256 or SHA-512")
    attributes = info["signed_attrs"]
    if not len(attributes):
        raise ScepReplyError("the reply has no signed attributes")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ScepReplyError("the reply's signer has no RSA key")
    try:
        key.verify(
            info["signature"].native, attributes.untag().dump(), padding.PKCS1v15(), algorithm
        )
    except InvalidSignature:
        raise ScepReplyError("the reply's signature does not verify") from None
    found = {a["type"].dotted: a for a in attributes}
    content = signed["encap_content_info"]["content"].native or b""
    h = hashes.Hash(algorithm)
    h.update(content)
    if _value(found, _MESSAGE_DIGEST, core.OctetString) != h.finalize():
        raise ScepReplyError("the reply's messageDigest does not match its content")
    return found


def _open(content: bytes, request: PkcsReq, key: rsa.RSAPrivateKey) -> bytes:
    info = cms.ContentInfo.load(content)
    if info["content_type"].native != "enveloped_data":
        raise ScepReplyError("a SUCCESS reply without an EnvelopedData")
    enveloped = info["content"]
    mine = _issuer_serial(request.signer).dump()
    content_key = None
    for choice in enveloped["recipient_infos"]:
        if choice.name != "ktri":
            continue
        rid = choice.chosen["rid"]
        if rid.name == "issuer_and_serial_number" and rid.chosen.dump() != mine:
            continue
        try:
            content_key = key.decrypt(choice.chosen["encrypted_key"].native, padding.PKCS1v15())
        except ValueError:
            raise ScepReplyError("the reply's content key does not decrypt") from None
    if content_key is None:
        raise ScepReplyError("the reply's envelope is not addressed to the device")
    encrypted = enveloped["encrypted_content_info"]
    algorithm = encrypted["content_encryption_algorithm"]
    size = _AES.get(algorithm["algorithm"].dotted)
    if size is None or len(content_key) != size:
        raise ScepReplyError(f"the reply's cipher {algorithm['algorithm'].dotted} is not AES")
    decryptor = Cipher(
        algorithms.AES(content_key), modes.CBC(algorithm["parameters"].native)
    ).decryptor()
    padded = decryptor.update(encrypted["encrypted_content"].native) + decryptor.finalize()
    unpadder = block_padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise ScepReplyError("the reply's envelope does not decrypt") from None


def _issued(inner: bytes, key: rsa.RSAPrivateKey) -> x509.Certificate:
    try:
        certificates = pkcs7.load_der_pkcs7_certificates(inner)
    except ValueError as e:
        raise ScepReplyError(f"the reply's envelope holds no certificates: {e}") from None
    ours = key.public_key().public_numbers()
    for cert in certificates:
        public = cert.public_key()
        if isinstance(public, rsa.RSAPublicKey) and public.public_numbers() == ours:
            return cert
    raise ScepReplyError("the reply holds no certificate for the device's key")


def read_cert_rep(
    body: bytes, *, request: PkcsReq, key: rsa.RSAPrivateKey, trusted: list[x509.Certificate]
) -> CertRep:
    """Reads the CertRep answering ``request``, signed by one of ``trusted`` (the GetCACert
    certificates); :class:`ScepReplyError` when a device would not accept it."""
    try:
        info = cms.ContentInfo.load(body)
        if info["content_type"].native != "signed_data":
            raise ScepReplyError("the reply is not a SignedData")
        signed = info["content"]
        attributes = _verify(signed, trusted)
        if _value(attributes, _MESSAGE_TYPE, core.PrintableString) != _CERT_REP:
            raise ScepReplyError("the reply is not a CertRep")
        if _value(attributes, _TRANSACTION_ID, core.PrintableString) != request.transaction_id:
            raise ScepReplyError("the reply answers another transaction")
        if _value(attributes, _RECIPIENT_NONCE, core.OctetString) != request.sender_nonce:
            raise ScepReplyError("the reply's recipientNonce is not the request's senderNonce")
        status = _value(attributes, _PKI_STATUS, core.PrintableString)
        if status == str(FAILURE):
            code = _value(attributes, _FAIL_INFO, core.PrintableString)
            text = _value(attributes, _FAIL_INFO_TEXT, core.UTF8String)
            return CertRep(FAILURE, fail_info=_FAIL_NAMES.get(str(code), str(code)), fail_text=text)
        if status == str(PENDING):
            return CertRep(PENDING)
        if status != str(SUCCESS):
            raise ScepReplyError(f"the reply's pkiStatus {status!r} is not one of RFC 8894's")
        content = signed["encap_content_info"]["content"].native
        if not content:
            raise ScepReplyError("a SUCCESS reply without content")
        return CertRep(SUCCESS, certificate=_issued(_open(content, request, key), key))
    except ScepReplyError:
        raise
    # asn1crypto parses lazily: bytes it cannot read surface here as ValueError, TypeError
    # or KeyError, whichever field is touched first.
    except (ValueError, TypeError, KeyError) as e:
        raise ScepReplyError(f"the reply is not a readable CMS message: {e}") from None
