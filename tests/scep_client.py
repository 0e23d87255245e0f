"""An independent SCEP requester (RFC 8894) for the tests.

It builds PKCSReq messages and reads CertRep replies from asn1crypto structures and
cryptography primitives only (its keys and certificates with tests/pki_helpers.py, which is
free of the product too). Nothing comes from ``mdmgate.enrollment.scep``: the tests use this
client to find the server module's mistakes, so the two must not share code (or bugs).

Every check a careful device makes on a reply is made here and fails with
:class:`CertRepRejected`: the CA's signature and messageDigest, the echoed transaction ID
and nonce, the status and failInfo values, and what the envelope holds.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from asn1crypto import cms, core  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import AttributeOID, NameOID

from tests.pki_helpers import Credential, certificate, rsa_key

# RFC 8894 section 3.2.1: the SCEP attributes live under id-VeriSign pki attributes.
OID_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
OID_PKI_STATUS = "2.16.840.1.113733.1.9.3"
OID_FAIL_INFO = "2.16.840.1.113733.1.9.4"
OID_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
OID_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
OID_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
OID_FAIL_INFO_TEXT = "1.3.6.1.5.5.7.24.1"
OID_DATA = "1.2.840.113549.1.7.1"

PKCS_REQ = 19
RENEWAL_REQ = 17
CERT_POLL = 20
CERT_REP = 3

# name -> (OID, key bytes, block bytes, algorithm factory)
CIPHERS: dict[str, tuple[str, int, int, Any]] = {
    "aes128": ("2.16.840.1.101.3.4.1.2", 16, 16, algorithms.AES),
    "aes192": ("2.16.840.1.101.3.4.1.22", 24, 16, algorithms.AES),
    "aes256": ("2.16.840.1.101.3.4.1.42", 32, 16, algorithms.AES),
    "des3": ("1.2.840.113549.3.7", 24, 8, TripleDES),
    # Single DES, which the server must refuse: TripleDES with k1 = k2 = k3 is DES.
    "des": ("1.3.14.3.2.7", 8, 8, lambda key: TripleDES(key * 3)),
}
CIPHER_BY_OID = {oid: name for name, (oid, *_rest) in CIPHERS.items()}

DIGESTS: dict[str, tuple[str, hashes.HashAlgorithm]] = {
    "sha1": ("1.3.14.3.2.26", hashes.SHA1()),
    "sha256": ("2.16.840.1.101.3.4.2.1", hashes.SHA256()),
    "sha512": ("2.16.840.1.101.3.4.2.3", hashes.SHA512()),
    "md5": ("1.2.840.113549.2.5", hashes.MD5()),
}
DIGEST_BY_OID = {oid: name for name, (oid, _algorithm) in DIGESTS.items()}


class CertRepRejected(AssertionError):
    """A CertRep a careful requester would not accept; the message says which check failed."""


@dataclass(frozen=True)
class Requester(Credential):
    """A device about to enrol: its key pair and the self-signed certificate it signs with."""

    #: RSA: the CA encrypts the reply's envelope to it.
    key: rsa.RSAPrivateKey


@dataclass(frozen=True)
class PkcsReq:
    """A PKCSReq as sent, with the values its reply must echo."""

    body: bytes
    transaction_id: str
    sender_nonce: bytes
    digest: str
    cipher: str


@dataclass(frozen=True)
class CertRep:
    """What the requester read out of a verified CertRep."""

    status: int
    fail_info: int | None
    fail_text: str | None
    transaction_id: str
    sender_nonce: bytes
    recipient_nonce: bytes
    digest: str
    #: The content-encryption algorithm of the envelope (``None`` without one).
    cipher: str | None
    certificates: list[x509.Certificate] = field(default_factory=list)
    #: The envelope as carried (EnvelopedData ContentInfo), for cross-checks with openssl.
    envelope: bytes | None = None


def new_requester(common_name: str = "device", key: rsa.RSAPrivateKey | None = None) -> Requester:
    """A requester with a self-signed signing certificate, as RFC 8894 section 2.3 has it."""
    key = key or rsa_key()
    return Requester(key=key, cert=certificate(common_name, key))


def make_csr(
    key: rsa.RSAPrivateKey,
    common_name: str = "device",
    challenge: str | None = None,
    *,
    challenge_tag: int | None = None,
) -> bytes:
    """A PKCS#10 request, with a challengePassword attribute when ``challenge`` is given
    (as UTF8String unless ``challenge_tag`` names another universal tag)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if challenge is not None:
        if challenge_tag is None:
            builder = builder.add_attribute(
                AttributeOID.CHALLENGE_PASSWORD, challenge.encode("utf-8")
            )
        else:
            encoded = challenge.encode("utf-16-be") if challenge_tag == 30 else challenge.encode()
            builder = builder.add_attribute(
                AttributeOID.CHALLENGE_PASSWORD,
                encoded,
                _tag=x509.name._ASN1Type(challenge_tag),
            )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    return cms.IssuerAndSerialNumber(
        {"issuer": parsed.issuer, "serial_number": parsed.serial_number}
    )


def _encrypt(cipher: str, key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    _oid, _key_size, block, factory = CIPHERS[cipher]
    padder = block_padding.PKCS7(block * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(factory(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def _decrypt(cipher: str, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    _oid, _key_size, block, factory = CIPHERS[cipher]
    decryptor = Cipher(factory(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = block_padding.PKCS7(block * 8).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def envelope(content: bytes, recipient: x509.Certificate, cipher: str = "aes256") -> bytes:
    """``content`` in a CMS EnvelopedData (ContentInfo DER) for ``recipient``'s RSA key."""
    oid, key_size, block, _factory = CIPHERS[cipher]
    content_key = os.urandom(key_size)
    iv = os.urandom(block)
    public_key = recipient.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    recipient_info = cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": cms.RecipientIdentifier(
                name="issuer_and_serial_number", value=_issuer_and_serial(recipient)
            ),
            "key_encryption_algorithm": {"algorithm": "1.2.840.113549.1.1.1"},
            "encrypted_key": public_key.encrypt(content_key, padding.PKCS1v15()),
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [cms.RecipientInfo(name="ktri", value=recipient_info)],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {
                    "algorithm": oid,
                    "parameters": core.OctetString(iv),
                },
                "encrypted_content": _encrypt(cipher, content_key, iv, content),
            },
        }
    )
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def open_envelope(der: bytes, requester: Requester) -> tuple[bytes, str]:
    """Decrypts an EnvelopedData addressed to ``requester``; returns content and cipher."""
    info = cms.ContentInfo.load(der)
    if info["content_type"].native != "enveloped_data":
        raise CertRepRejected(f"envelope is {info['content_type'].native}, not EnvelopedData")
    enveloped = info["content"]
    wanted = _issuer_and_serial(requester.cert).dump()
    content_key = None
    for recipient in enveloped["recipient_infos"]:
        if recipient.name != "ktri":
            continue
        rid = recipient.chosen["rid"]
        if rid.name == "issuer_and_serial_number" and rid.chosen.dump() == wanted:
            algorithm = recipient.chosen["key_encryption_algorithm"]["algorithm"].dotted
            if algorithm != "1.2.840.113549.1.1.1":
                raise CertRepRejected(f"key transport {algorithm} is not rsaEncryption")
            content_key = requester.key.decrypt(
                recipient.chosen["encrypted_key"].native, padding.PKCS1v15()
            )
    if content_key is None:
        raise CertRepRejected("the envelope is not addressed to the requester's certificate")
    encrypted = enveloped["encrypted_content_info"]
    algorithm = encrypted["content_encryption_algorithm"]
    cipher = CIPHER_BY_OID.get(algorithm["algorithm"].dotted)
    if cipher is None or cipher == "des":
        raise CertRepRejected(f"unexpected content encryption {algorithm['algorithm'].dotted}")
    if len(content_key) != CIPHERS[cipher][1]:
        raise CertRepRejected("content key has the wrong length for the cipher")
    iv = algorithm["parameters"].native
    return _decrypt(cipher, content_key, iv, encrypted["encrypted_content"].native), cipher


def _attribute(oid: str, value: Any) -> cms.CMSAttribute:
    return cms.CMSAttribute({"type": oid, "values": [value]})


def sign(
    content: bytes | None,
    attributes: list[cms.CMSAttribute],
    signer_cert: x509.Certificate,
    signer_key: rsa.RSAPrivateKey,
    digest: str = "sha256",
    *,
    carry_signer_cert: bool = True,
) -> bytes:
    """A CMS SignedData (ContentInfo DER) over ``content`` (id-data) with signed
    attributes: contentType, messageDigest and ``attributes``. The signer's certificate
    travels in the message unless ``carry_signer_cert`` is false."""
    digest_oid, algorithm = DIGESTS[digest]
    hasher = hashes.Hash(algorithm)
    hasher.update(content or b"")
    signed_attrs = cms.CMSAttributes(
        [
            _attribute("1.2.840.113549.1.9.3", cms.ContentType(OID_DATA)),
            _attribute("1.2.840.113549.1.9.4", core.OctetString(hasher.finalize())),
            *attributes,
        ]
    )
    # The signature covers the attributes as a DER SET OF (RFC 5652 section 5.4).
    signature = signer_key.sign(signed_attrs.dump(), padding.PKCS1v15(), algorithm)
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                name="issuer_and_serial_number", value=_issuer_and_serial(signer_cert)
            ),
            "digest_algorithm": {"algorithm": digest_oid},
            "signed_attrs": signed_attrs,
            "signature_algorithm": {"algorithm": "1.2.840.113549.1.1.1"},
            "signature": signature,
        }
    )
    encap: dict[str, Any] = {"content_type": "data"}
    if content is not None:
        encap["content"] = content
    signed_fields: dict[str, Any] = {
        "version": "v1",
        "digest_algorithms": [{"algorithm": digest_oid}],
        "encap_content_info": encap,
        "signer_infos": [signer_info],
    }
    if carry_signer_cert:
        signed_fields["certificates"] = [
            asn1_x509.Certificate.load(signer_cert.public_bytes(serialization.Encoding.DER))
        ]
    signed = cms.SignedData(signed_fields)
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def pkcs_req(
    csr_der: bytes,
    requester: Requester,
    ca_cert: x509.Certificate,
    *,
    cipher: str = "aes256",
    digest: str = "sha256",
    message_type: int = PKCS_REQ,
    transaction_id: str | None = None,
    sender_nonce: bytes | None = None,
    recipient: x509.Certificate | None = None,
    omit: tuple[str, ...] = (),
    carry_signer_cert: bool = True,
    pki_envelope: bytes | None = None,
) -> PkcsReq:
    """A PKCSReq (or, with ``message_type``, another request type) carrying ``csr_der``
    encrypted to ``recipient`` (the CA by default) and signed by the requester. For
    malformed requests, ``omit`` names SCEP attributes (by OID) to leave out and
    ``pki_envelope`` replaces the envelope with the given bytes (still properly signed)."""
    transaction_id = (
        transaction_id
        or hashlib.sha256(
            requester.key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).hexdigest()
    )
    sender_nonce = sender_nonce if sender_nonce is not None else secrets.token_bytes(16)
    attributes = [
        _attribute(OID_MESSAGE_TYPE, core.PrintableString(str(message_type))),
        _attribute(OID_TRANSACTION_ID, core.PrintableString(transaction_id)),
        _attribute(OID_SENDER_NONCE, core.OctetString(sender_nonce)),
    ]
    body = sign(
        pki_envelope
        if pki_envelope is not None
        else envelope(csr_der, recipient or ca_cert, cipher),
        [a for a in attributes if a["type"].dotted not in omit],
        requester.cert,
        requester.key,
        digest,
        carry_signer_cert=carry_signer_cert,
    )
    return PkcsReq(body, transaction_id, sender_nonce, digest, cipher)


def _single(attributes: dict[str, list[Any]], oid: str, spec: Any, required: bool) -> Any:
    values = attributes.get(oid)
    if values is None:
        if required:
            raise CertRepRejected(f"signed attribute {oid} is missing")
        return None
    if len(values) != 1:
        raise CertRepRejected(f"signed attribute {oid} has {len(values)} values")
    value = values[0]
    if not isinstance(value, spec):
        value = value.parse(spec) if isinstance(value, core.Any) else spec.load(value.dump())
    return value.native


def _verified(signed: Any, ca_cert: x509.Certificate) -> tuple[str, dict[str, list[Any]]]:
    """Checks the CA's signature on a reply SignedData; returns its digest algorithm and
    its signed attributes by OID."""
    if len(signed["signer_infos"]) != 1:
        raise CertRepRejected("reply does not have exactly one signer")
    signer = signed["signer_infos"][0]
    if signer["sid"].name != "issuer_and_serial_number":
        raise CertRepRejected("reply signer is not named by issuer and serial number")
    if signer["sid"].chosen.dump() != _issuer_and_serial(ca_cert).dump():
        raise CertRepRejected("reply is not signed by the CA certificate")
    digest = DIGEST_BY_OID.get(signer["digest_algorithm"]["algorithm"].dotted)
    if digest is None or digest == "md5":
        raise CertRepRejected("reply digest algorithm is not SHA-1/256/512")
    if signer["signature_algorithm"]["algorithm"].native not in (
        "rsassa_pkcs1v15",
        f"{digest}_rsa",
    ):
        raise CertRepRejected("reply signature algorithm is not RSA PKCS#1 v1.5")
    listed = {a["algorithm"].dotted for a in signed["digest_algorithms"]}
    if DIGESTS[digest][0] not in listed:
        raise CertRepRejected("the signer's digest algorithm is not in digestAlgorithms")
    if signer["signed_attrs"].native is None or len(signer["signed_attrs"]) == 0:
        raise CertRepRejected("reply has no signed attributes")
    public_key = ca_cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    try:
        public_key.verify(
            signer["signature"].native,
            signer["signed_attrs"].untag().dump(),
            padding.PKCS1v15(),
            DIGESTS[digest][1],
        )
    except InvalidSignature:
        raise CertRepRejected("the CA's signature does not verify") from None
    attributes: dict[str, list[Any]] = {}
    for attribute in signer["signed_attrs"]:
        oid = attribute["type"].dotted
        if oid in attributes:
            raise CertRepRejected(f"signed attribute {oid} appears twice")
        attributes[oid] = list(attribute["values"])
    return digest, attributes


def _issued_certificates(
    content: bytes, requester: Requester
) -> tuple[list[x509.Certificate], str]:
    """Opens a SUCCESS reply's envelope; returns the certificates of the certs-only
    SignedData inside and the envelope's cipher."""
    inner, cipher = open_envelope(content, requester)
    certs_only = cms.ContentInfo.load(inner)
    if certs_only["content_type"].native != "signed_data":
        raise CertRepRejected("the envelope does not hold a SignedData")
    degenerate = certs_only["content"]
    if len(degenerate["signer_infos"]) != 0:
        raise CertRepRejected("the certs-only SignedData has signers")
    if degenerate["encap_content_info"]["content"].native is not None:
        raise CertRepRejected("the certs-only SignedData has content")
    certificates = [
        x509.load_der_x509_certificate(choice.chosen.dump())
        for choice in degenerate["certificates"]
        if choice.name == "certificate"
    ]
    if not certificates:
        raise CertRepRejected("the certs-only SignedData holds no certificate")
    return certificates, cipher


def _echoed(attributes: dict[str, list[Any]], request: PkcsReq) -> tuple[str, bytes, bytes]:
    """Checks messageType and what a reply echoes; returns transactionID, senderNonce and
    recipientNonce."""
    message_type = _single(attributes, OID_MESSAGE_TYPE, core.PrintableString, True)
    if message_type != str(CERT_REP):
        raise CertRepRejected(f"messageType is {message_type!r}, not CertRep")
    transaction_id = _single(attributes, OID_TRANSACTION_ID, core.PrintableString, True)
    if transaction_id != request.transaction_id:
        raise CertRepRejected("transactionID is not the request's")
    recipient_nonce = _single(attributes, OID_RECIPIENT_NONCE, core.OctetString, True)
    if recipient_nonce != request.sender_nonce:
        raise CertRepRejected("recipientNonce is not the request's senderNonce")
    sender_nonce = _single(attributes, OID_SENDER_NONCE, core.OctetString, True)
    if len(sender_nonce) != 16:
        raise CertRepRejected("senderNonce is not 16 bytes")
    return transaction_id, sender_nonce, recipient_nonce


def read_cert_rep(
    body: bytes, *, ca_cert: x509.Certificate, requester: Requester, request: PkcsReq
) -> CertRep:
    """Verifies a CertRep as the requester of ``request`` would, and reads it."""
    info = cms.ContentInfo.load(body)
    if info["content_type"].native != "signed_data":
        raise CertRepRejected(f"reply is {info['content_type'].native}, not SignedData")
    signed = info["content"]
    digest, attributes = _verified(signed, ca_cert)
    encap = signed["encap_content_info"]
    if encap["content_type"].dotted != OID_DATA:
        raise CertRepRejected("encapsulated content type is not id-data")
    content = encap["content"].native
    hasher = hashes.Hash(DIGESTS[digest][1])
    hasher.update(content or b"")
    if _single(attributes, "1.2.840.113549.1.9.4", core.OctetString, True) != hasher.finalize():
        raise CertRepRejected("messageDigest does not match the content")
    if _single(attributes, "1.2.840.113549.1.9.3", cms.ContentType, True) != "data":
        raise CertRepRejected("contentType attribute is not id-data")
    echoed = (*_echoed(attributes, request), digest)
    status = _single(attributes, OID_PKI_STATUS, core.PrintableString, True)
    fail_info = _single(attributes, OID_FAIL_INFO, core.PrintableString, False)
    fail_text = _single(attributes, OID_FAIL_INFO_TEXT, core.UTF8String, False)
    if status == "2":
        if fail_info not in ("0", "1", "2", "3", "4"):
            raise CertRepRejected(f"FAILURE with failInfo {fail_info!r}")
        if content is not None:
            raise CertRepRejected("FAILURE reply carries content")
        return CertRep(2, int(fail_info), fail_text, *echoed, cipher=None)
    if fail_info is not None or fail_text is not None:
        raise CertRepRejected("failInfo on a reply that is not FAILURE")
    if status == "3":
        return CertRep(3, None, None, *echoed, cipher=None)
    if status != "0":
        raise CertRepRejected(f"pkiStatus {status!r} is not SUCCESS, FAILURE or PENDING")
    if content is None:
        raise CertRepRejected("SUCCESS reply without an envelope")
    certificates, cipher = _issued_certificates(content, requester)
    return CertRep(0, None, None, *echoed, cipher, certificates, content)


__all__ = [
    "CERT_POLL",
    "CERT_REP",
    "CIPHERS",
    "DIGESTS",
    "PKCS_REQ",
    "RENEWAL_REQ",
    "CertRep",
    "CertRepRejected",
    "PkcsReq",
    "Requester",
    "envelope",
    "make_csr",
    "new_requester",
    "open_envelope",
    "pkcs_req",
    "read_cert_rep",
    "sign",
]
