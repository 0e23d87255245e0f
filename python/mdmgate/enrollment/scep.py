"""SCEP (RFC 8894), the certificate authority's side, as pure functions over bytes.

No sockets, storage or issuing policy: :func:`parse_pki_message` turns a request body into
a :class:`PkiRequest`, the caller decides (challenge, token, CA) and :func:`cert_rep` turns
the decision into the reply. :func:`ca_caps_response` and :func:`ca_cert_response` answer
GetCACaps and GetCACert.

Supported, and nothing more is claimed in :data:`CA_CAPS`: requests signed with RSA
PKCS#1 v1.5 over SHA-1, SHA-256 or SHA-512 (rsaEncryption or the matching
shaNWithRSAEncryption) with signed attributes; envelopes with RSA PKCS#1 v1.5 key transport
to the CA certificate (named by issuer and serial or by subject key identifier) and content
in AES-128/192/256-CBC or DES-EDE3-CBC; PKCSReq (19) and RenewalReq (17). CertPoll
(GetCertInitial, 20), GetCert (21) and GetCRL (22) get a CertRep FAILURE, badRequest: this
CA never answers PENDING, so there is nothing to poll for. Replies are signed with the
request's digest and, on success, carry the issued certificate in a degenerate certs-only
SignedData, enveloped to the requester's signing certificate in the request's own cipher
(the one the requester is known to have).

:class:`ScepError` means there is nothing to answer (not CMS, no transaction ID, an
envelope for somebody else): the HTTP adapter answers 400. Its subclass
:class:`ScepRefused` means the request is answered with a CertRep FAILURE, which tells the
requester why::

    try:
        request = parse_pki_message(body, ca_cert=ca_cert, ca_key=ca_key)
    except ScepRefused as refused:
        reply = cert_rep(refused.transaction, ca_cert=ca_cert, ca_key=ca_key,
                         fail_info=refused.fail_info, fail_text=refused.message)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import hmac
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms, core  # type: ignore[import-untyped]
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mdmgate.enrollment import scep_cms
from mdmgate.errors import MdmgateError

__all__ = [
    "CA_CAPS",
    "CONTENT_TYPE_CA_CERT",
    "CONTENT_TYPE_CA_RA_CERT",
    "CONTENT_TYPE_PKI",
    "MAX_MESSAGE_BYTES",
    "FailInfo",
    "MessageType",
    "PkiRequest",
    "ScepError",
    "ScepRefused",
    "ScepTransaction",
    "ca_caps_response",
    "ca_cert_response",
    "cert_rep",
    "parse_pki_message",
]

#: GetCACaps keywords (RFC 8894 section 3.5.2). SCEPStandard implies AES, POSTPKIOperation
#: and SHA-256. DES3 and SHA-1 requests are accepted from old clients but not advertised,
#: so that no client is invited to pick them; Renewal needs issuing policy (is the signer
#: a certificate we issued?) that belongs to the service, not to this layer.
CA_CAPS: tuple[str, ...] = ("AES", "POSTPKIOperation", "SHA-256", "SHA-512", "SCEPStandard")

CONTENT_TYPE_PKI = "application/x-pki-message"
CONTENT_TYPE_CA_CERT = "application/x-x509-ca-cert"
CONTENT_TYPE_CA_RA_CERT = "application/x-x509-ca-ra-cert"

#: Cap on a request body. A PKCSReq with a 4096-bit key is about 5 KB.
MAX_MESSAGE_BYTES = 64 * 1024


class MessageType(enum.IntEnum):
    """SCEP messageType values (RFC 8894 section 3.2.1.2)."""

    CERT_REP = 3
    RENEWAL_REQ = 17
    PKCS_REQ = 19
    CERT_POLL = 20
    GET_CERT = 21
    GET_CRL = 22


class FailInfo(enum.IntEnum):
    """SCEP failInfo values (RFC 8894 section 3.2.1.4)."""

    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4


class ScepError(MdmgateError, ValueError):
    """A SCEP message this layer will not take. ``message`` names the problem. A plain
    ScepError has nothing to answer (unreadable, no transaction to echo, or not meant for
    this CA): the HTTP adapter answers 400. See :class:`ScepRefused` for the others."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, kw_only=True)
class ScepTransaction:
    """What a reply must echo: enough of a request to answer it, even with a FAILURE.

    ``digest_algorithm`` is the one the reply is signed with: the request's when it is
    supported (``"sha1"``, ``"sha256"``, ``"sha512"``), otherwise ``"sha256"``."""

    message_type: int
    transaction_id: str
    sender_nonce: bytes
    digest_algorithm: str


@dataclass(frozen=True, kw_only=True)
class PkiRequest(ScepTransaction):
    """A verified and decrypted PKCSReq (19) or RenewalReq (17).

    ``signer_der`` is the certificate the requester signed with (self-signed for PKCSReq;
    for RenewalReq, whether it is one this CA issued is the caller's policy). ``csr_der``
    is the PKCS#10 request, whose self-signature has been checked; ``challenge`` its
    challengePassword (``None`` when it has none). ``content_encryption`` is the envelope's
    algorithm: ``"aes128_cbc"``, ``"aes192_cbc"``, ``"aes256_cbc"`` or ``"des_ede3_cbc"``.
    """

    signer_der: bytes
    csr_der: bytes
    challenge: str | None
    content_encryption: str


class ScepRefused(ScepError):
    """A request read far enough to be answered with a CertRep FAILURE: answer it with
    ``cert_rep(refused.transaction, ..., fail_info=refused.fail_info)``.

    badMessageCheck: the signature, the messageDigest, the CSR's self-signature or the
    envelope's decryption fails, or the signer's certificate is not in the message (the
    signer cannot be trusted). badAlg: a digest, signature, key transport or cipher
    algorithm that is not supported. badRequest: a message type this CA does not serve, or
    content that is not what the type promises."""

    def __init__(self, message: str, fail_info: FailInfo, transaction: ScepTransaction) -> None:
        super().__init__(message)
        self.fail_info = fail_info
        self.transaction = transaction

    def __reduce__(self) -> tuple[type[ScepRefused], tuple[str, FailInfo, ScepTransaction]]:
        return (type(self), (self.message, self.fail_info, self.transaction))


# --- object identifiers and algorithms ---------------------------------------------------

_ID_DATA = "1.2.840.113549.1.7.1"
# RFC 8894 section 3.2.1: id-VeriSign pki attributes, and id-scep (id-pkix 24).
_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
_PKI_STATUS = "2.16.840.1.113733.1.9.3"
_FAIL_INFO = "2.16.840.1.113733.1.9.4"
_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
_FAIL_INFO_TEXT = "1.3.6.1.5.5.7.24.1"

_STATUS_SUCCESS = "0"
_STATUS_FAILURE = "2"
_NONCE_BYTES = 16

_DEFAULT_DIGEST = "sha256"
# Signature algorithms a signer may name, and the digest each one fixes (None: any).
_SIGNATURES: dict[str, str | None] = {
    scep_cms.RSA_ENCRYPTION: None,
    "1.2.840.113549.1.1.5": "sha1",
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.13": "sha512",
}


# asn1crypto parses lazily and reports malformed input with these.
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)


@contextlib.contextmanager
def _reading(what: str, transaction: ScepTransaction | None = None) -> Iterator[None]:
    """Turns a decoding failure inside the block into a ScepError naming ``what`` (a
    badRequest refusal once there is a ``transaction`` to answer)."""
    try:
        yield
    except ScepError:
        raise
    except _DECODE_ERRORS as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        message = f"{what} is malformed: {detail}"
        if transaction is None:
            raise ScepError(message) from None
        raise ScepRefused(message, FailInfo.BAD_REQUEST, transaction) from None


# --- GetCACaps, GetCACert ----------------------------------------------------------------


def ca_caps_response() -> bytes:
    """The GetCACaps body (``text/plain``): one :data:`CA_CAPS` keyword a line."""
    return "".join(f"{keyword}\n" for keyword in CA_CAPS).encode("ascii")


def ca_cert_response(ca_der: bytes, chain: Sequence[bytes] = ()) -> tuple[str, bytes]:
    """The GetCACert answer as ``(content type, body)``.

    A lone CA certificate goes out as its DER (``application/x-x509-ca-cert``). With a
    ``chain`` (the certificates above ``ca_der``), the body is a degenerate certs-only
    SignedData holding all of them (``application/x-x509-ca-ra-cert``; a CMS certificate
    set is a DER SET OF, so their order is the encoding's).
    Raises ``ValueError`` naming the argument that is not a DER certificate.
    """
    certificates = [("ca_der", ca_der)] + [(f"chain[{i}]", der) for i, der in enumerate(chain)]
    for field, der in certificates:
        _certificate(der, field)
    if not chain:
        return CONTENT_TYPE_CA_CERT, bytes(ca_der)
    return CONTENT_TYPE_CA_RA_CERT, scep_cms.certs_only([der for _field, der in certificates])


def _certificate(der: bytes, field: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(bytes(der))
    except (ValueError, TypeError, x509.InvalidVersion) as exc:
        raise ValueError(f"{field}: not a DER X.509 certificate ({exc})") from None


# --- PKIOperation: the request -----------------------------------------------------------


def parse_pki_message(
    body: bytes, *, ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey
) -> PkiRequest:
    """Reads a PKIOperation request: DER (POST) or base64 of it (the ``message`` of a GET,
    already URL-decoded by the HTTP adapter; MIME line breaks are allowed).

    Checks the requester's signature with the certificate the message carries and the
    messageDigest, decrypts the envelope with ``ca_key`` and checks the CSR's
    self-signature. Raises :class:`ScepRefused` when the answer is a CertRep FAILURE and
    :class:`ScepError` when there is nothing to answer (see the module documentation).
    """
    der = _der_or_base64(body)
    with _reading("SCEP message (CMS ContentInfo)"):
        info = cms.ContentInfo.load(der, strict=True)
        content_type = info["content_type"].native
        signed = info["content"]
    if content_type != "signed_data":
        raise ScepError(f"SCEP message is a {content_type} ContentInfo, not SignedData")
    with _reading("SignedData"):
        signers = len(signed["signer_infos"])
        signer = signed["signer_infos"][0] if signers == 1 else None
        attributes = _attributes(signer) if signer is not None else {}
    if signer is None:
        raise ScepError(f"SignedData has {signers} signers; a SCEP request has exactly one")
    transaction = _transaction(signer, attributes)
    signer_der = _verify_signer(signed, signer, attributes, transaction)
    _check_message_type(transaction)
    with _reading("pkcsPKIEnvelope", transaction):
        content = signed["encap_content_info"]["content"].native
    if not isinstance(content, bytes) or not content:
        raise ScepRefused("request without a pkcsPKIEnvelope", FailInfo.BAD_REQUEST, transaction)
    csr_der, cipher = _open_envelope(content, ca_cert, ca_key, transaction)
    challenge = _read_csr(csr_der, transaction)
    return PkiRequest(
        message_type=transaction.message_type,
        transaction_id=transaction.transaction_id,
        sender_nonce=transaction.sender_nonce,
        digest_algorithm=transaction.digest_algorithm,
        signer_der=signer_der,
        csr_der=csr_der,
        challenge=challenge,
        content_encryption=cipher.name,
    )


def _der_or_base64(body: bytes) -> bytes:
    if not body:
        raise ScepError("empty SCEP message")
    if len(body) > MAX_MESSAGE_BYTES * 2:
        raise ScepError(f"SCEP message of {len(body)} bytes is over the {MAX_MESSAGE_BYTES} cap")
    if body[0] == 0x30:  # a DER SEQUENCE: the ContentInfo itself
        der = bytes(body)
    else:
        try:
            text = bytes(body).replace(b"\r", b"").replace(b"\n", b"")
            der = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ScepError("SCEP message is neither DER nor base64") from None
        if not der or der[0] != 0x30:
            raise ScepError("base64 SCEP message does not decode to a DER ContentInfo")
    if len(der) > MAX_MESSAGE_BYTES:
        raise ScepError(f"SCEP message of {len(der)} bytes is over the {MAX_MESSAGE_BYTES} cap")
    return der


def _attributes(signer: Any) -> dict[str, list[Any]]:
    """The signed attributes by OID; each type once (RFC 5652 section 5.3)."""
    signed_attrs = signer["signed_attrs"]
    if isinstance(signed_attrs, core.Void):
        raise ScepError("SignerInfo has no signed attributes; SCEP carries its fields there")
    found: dict[str, list[Any]] = {}
    for attribute in signed_attrs:
        oid = str(attribute["type"].dotted)
        if oid in found:
            raise ScepError(f"signed attribute {oid} appears twice")
        found[oid] = list(attribute["values"])
    return found


def _one(attributes: dict[str, list[Any]], oid: str, name: str, spec: Any) -> Any:
    values = attributes.get(oid)
    if values is None:
        raise ScepError(f"signed attribute {name} is missing")
    if len(values) != 1:
        raise ScepError(f"signed attribute {name} has {len(values)} values, not one")
    value = values[0]
    with _reading(f"signed attribute {name}"):
        if isinstance(value, core.Any):
            value = value.parse(spec)
        elif not isinstance(value, spec):
            raise ScepError(f"signed attribute {name} is not a {spec.__name__}")
        return value.native


def _transaction(signer: Any, attributes: dict[str, list[Any]]) -> ScepTransaction:
    message_type = _one(attributes, _MESSAGE_TYPE, "messageType", core.PrintableString)
    if not (message_type.isascii() and message_type.isdigit() and len(message_type) < 4):
        raise ScepError(f"messageType {message_type!r} is not a SCEP message type number")
    transaction_id = _one(attributes, _TRANSACTION_ID, "transactionID", core.PrintableString)
    if not transaction_id or len(transaction_id) > 256:
        raise ScepError("transactionID must have 1 to 256 characters")
    sender_nonce = _one(attributes, _SENDER_NONCE, "senderNonce", core.OctetString)
    if len(sender_nonce) != _NONCE_BYTES:
        raise ScepError(f"senderNonce has {len(sender_nonce)} bytes, not {_NONCE_BYTES}")
    with _reading("SignerInfo digestAlgorithm"):
        digest_oid = str(signer["digest_algorithm"]["algorithm"].dotted)
        digest_name = str(signer["digest_algorithm"]["algorithm"].native)
    transaction = ScepTransaction(
        message_type=int(message_type),
        transaction_id=transaction_id,
        sender_nonce=sender_nonce,
        digest_algorithm=scep_cms.DIGESTS.get(digest_oid, _DEFAULT_DIGEST),
    )
    if digest_oid not in scep_cms.DIGESTS:
        raise ScepRefused(
            f"digest algorithm {digest_name} ({digest_oid}) is not supported;"
            " use SHA-256 or SHA-512",
            FailInfo.BAD_ALG,
            transaction,
        )
    return transaction


def _verify_signer(
    signed: Any, signer: Any, attributes: dict[str, list[Any]], transaction: ScepTransaction
) -> bytes:
    """Finds the signer's certificate in the message (returns its DER) and checks
    contentType, messageDigest and the signature over the signed attributes."""
    with _reading("SignerInfo", transaction):
        signature_oid = str(signer["signature_algorithm"]["algorithm"].dotted)
        signature = bytes(signer["signature"].native)
        signer_der = scep_cms.signer_certificate(signed, signer["sid"])
        # The signature covers the attributes as received, re-tagged as a SET OF.
        signed_bytes = bytes(cms.CMSAttributes(contents=signer["signed_attrs"].contents).dump())
        content = signed["encap_content_info"]["content"].native
        content_type = str(signed["encap_content_info"]["content_type"].dotted)
    fixed = _SIGNATURES.get(signature_oid, "unsupported")
    if fixed not in (None, transaction.digest_algorithm):
        raise ScepRefused(
            f"signature algorithm {signature_oid} is not RSA PKCS#1 v1.5 with the"
            f" {transaction.digest_algorithm} digest",
            FailInfo.BAD_ALG,
            transaction,
        )
    if signer_der is None:
        raise ScepRefused(
            "the signer certificate is not in the message, so the signature cannot be checked",
            FailInfo.BAD_MESSAGE_CHECK,
            transaction,
        )
    try:
        public_key = x509.load_der_x509_certificate(signer_der).public_key()
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion):
        raise ScepRefused(
            "the signer certificate is unreadable", FailInfo.BAD_MESSAGE_CHECK, transaction
        ) from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ScepRefused(
            "the signer certificate's key is not RSA, which SCEP needs for the reply's envelope",
            FailInfo.BAD_ALG,
            transaction,
        )
    if content_type != _ID_DATA:
        raise ScepRefused(
            f"encapsulated content type {content_type} is not id-data",
            FailInfo.BAD_REQUEST,
            transaction,
        )
    try:
        declared_type = _one(attributes, scep_cms.CONTENT_TYPE_OID, "contentType", cms.ContentType)
        expected = _one(attributes, scep_cms.MESSAGE_DIGEST_OID, "messageDigest", core.OctetString)
    except ScepError as missing:
        raise ScepRefused(missing.message, FailInfo.BAD_MESSAGE_CHECK, transaction) from None
    if declared_type != "data":
        raise ScepRefused(
            "the contentType attribute is not id-data", FailInfo.BAD_MESSAGE_CHECK, transaction
        )
    digest = scep_cms.hash_algorithm(transaction.digest_algorithm)
    actual = scep_cms.digest(digest, content if isinstance(content, bytes) else b"")
    if not hmac.compare_digest(expected, actual):
        raise ScepRefused(
            "the messageDigest attribute does not match the content",
            FailInfo.BAD_MESSAGE_CHECK,
            transaction,
        )
    try:
        public_key.verify(signature, signed_bytes, padding.PKCS1v15(), digest)
    except (InvalidSignature, ValueError):
        raise ScepRefused(
            "the requester's signature does not verify", FailInfo.BAD_MESSAGE_CHECK, transaction
        ) from None
    return signer_der


def _check_message_type(transaction: ScepTransaction) -> None:
    kind = transaction.message_type
    if kind in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
        return
    reasons: dict[int, str] = {
        MessageType.CERT_POLL: "CertPoll (GetCertInitial) is not served: this CA never"
        " answers PENDING, so there is nothing to poll for",
        MessageType.GET_CERT: "GetCert is not served by this CA",
        MessageType.GET_CRL: "GetCRL is not served by this CA",
        MessageType.CERT_REP: "a CertRep is a reply, not a request",
    }
    reason = reasons.get(kind, f"messageType {kind} is not a SCEP request type")
    raise ScepRefused(reason, FailInfo.BAD_REQUEST, transaction)


def _open_envelope(
    content: bytes, ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey, txn: ScepTransaction
) -> tuple[bytes, scep_cms.ContentCipher]:
    """Decrypts the pkcsPKIEnvelope; returns the plaintext and its cipher."""
    ours = asn1_x509.Certificate.load(ca_cert.public_bytes(serialization.Encoding.DER))
    with _reading("pkcsPKIEnvelope", txn):
        info = cms.ContentInfo.load(content, strict=True)
        kind = info["content_type"].native
        enveloped = info["content"]
        recipient, others = scep_cms.recipient_for(enveloped["recipient_infos"], ours)
        if recipient is not None:
            key_transport = str(recipient["key_encryption_algorithm"]["algorithm"].dotted)
            encrypted_key = bytes(recipient["encrypted_key"].native)
        encrypted = enveloped["encrypted_content_info"]
        cipher_oid = str(encrypted["content_encryption_algorithm"]["algorithm"].dotted)
        iv = encrypted["content_encryption_algorithm"]["parameters"].native
        ciphertext = encrypted["encrypted_content"].native
    if kind != "enveloped_data":
        raise ScepRefused(
            f"pkcsPKIEnvelope is {kind}, not EnvelopedData", FailInfo.BAD_REQUEST, txn
        )
    if recipient is None:
        raise ScepError(
            f"the pkcsPKIEnvelope is not addressed to this CA ({ca_cert.subject.rfc4514_string()},"
            f" serial {ca_cert.serial_number:x}); it is for {'; '.join(others) or 'nobody'}"
        )
    if key_transport != scep_cms.RSA_ENCRYPTION:
        raise ScepRefused(
            f"key transport {key_transport} is not supported; use rsaEncryption",
            FailInfo.BAD_ALG,
            txn,
        )
    cipher = scep_cms.CIPHERS.get(cipher_oid)
    if cipher is None:
        raise ScepRefused(
            f"content encryption {cipher_oid} is not supported;"
            " use AES-128/192/256-CBC or DES-EDE3-CBC",
            FailInfo.BAD_ALG,
            txn,
        )
    if not isinstance(iv, bytes) or len(iv) != cipher.block_bytes:
        raise ScepRefused(
            f"{cipher.name} needs a {cipher.block_bytes}-byte IV", FailInfo.BAD_REQUEST, txn
        )
    if not isinstance(ciphertext, bytes):
        raise ScepRefused("the pkcsPKIEnvelope has no encrypted content", FailInfo.BAD_REQUEST, txn)
    plaintext = scep_cms.decrypt_content(ca_key, encrypted_key, cipher, iv, ciphertext)
    if plaintext is None:
        # One answer for every way decryption fails, so it tells an attacker nothing.
        raise ScepRefused("the pkcsPKIEnvelope does not decrypt", FailInfo.BAD_MESSAGE_CHECK, txn)
    return plaintext, cipher


def _read_csr(csr_der: bytes, transaction: ScepTransaction) -> str | None:
    """Checks the PKCS#10 request's self-signature; returns its challengePassword."""
    try:
        csr = x509.load_der_x509_csr(csr_der)
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise ScepRefused(
            f"the pkcsPKIEnvelope does not hold a PKCS#10 request ({exc})",
            FailInfo.BAD_REQUEST,
            transaction,
        ) from None
    if not valid:
        raise ScepRefused(
            "the CSR's self-signature does not verify", FailInfo.BAD_MESSAGE_CHECK, transaction
        )
    challenges: list[Any] = []
    with _reading("the CSR's challengePassword", transaction):
        info = asn1_csr.CertificationRequest.load(csr_der)["certification_request_info"]
        for attribute in info["attributes"]:
            if attribute["type"].native == "challenge_password":
                challenges.extend(value.native for value in attribute["values"])
    if not challenges:
        return None
    if len(challenges) != 1 or not isinstance(challenges[0], str):
        raise ScepRefused(
            "the CSR has more than one challengePassword", FailInfo.BAD_REQUEST, transaction
        )
    return challenges[0]


# --- PKIOperation: the reply -------------------------------------------------------------


def cert_rep(
    request: ScepTransaction,
    *,
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    issued: x509.Certificate | None = None,
    fail_info: FailInfo | None = None,
    fail_text: str | None = None,
) -> bytes:
    """The CertRep (messageType 3) answering ``request``: SUCCESS with the ``issued``
    certificate, or FAILURE with ``fail_info`` (and ``fail_text`` as failInfoText).

    Signed by ``ca_key`` with the request's digest; the signed attributes are
    contentType, messageDigest, messageType, pkiStatus, failInfo (on failure), the
    request's transactionID, its senderNonce as recipientNonce and a fresh senderNonce.
    On success the content is the envelope described in the module documentation; a
    FAILURE has no content (its messageDigest is that of the empty string).

    A success needs the :class:`PkiRequest` itself and a certificate for the CSR's key;
    ``ValueError`` otherwise, or when not exactly one of ``issued``/``fail_info`` is given.
    """
    if (issued is None) == (fail_info is None):
        raise ValueError("cert_rep needs exactly one of issued or fail_info")
    if fail_text is not None and fail_info is None:
        raise ValueError("fail_text goes with fail_info, not with an issued certificate")
    digest_name = request.digest_algorithm
    if digest_name not in scep_cms.DIGEST_OIDS:
        digest_name = _DEFAULT_DIGEST
    attributes = [
        scep_cms.attribute(_MESSAGE_TYPE, core.PrintableString(str(int(MessageType.CERT_REP)))),
        scep_cms.attribute(_TRANSACTION_ID, core.PrintableString(request.transaction_id)),
        scep_cms.attribute(_RECIPIENT_NONCE, core.OctetString(request.sender_nonce)),
        scep_cms.attribute(_SENDER_NONCE, core.OctetString(secrets.token_bytes(_NONCE_BYTES))),
    ]
    content: bytes | None = None
    if fail_info is not None:
        attributes.append(scep_cms.attribute(_PKI_STATUS, core.PrintableString(_STATUS_FAILURE)))
        attributes.append(
            scep_cms.attribute(_FAIL_INFO, core.PrintableString(str(int(FailInfo(fail_info)))))
        )
        if fail_text is not None:
            attributes.append(scep_cms.attribute(_FAIL_INFO_TEXT, core.UTF8String(fail_text)))
    elif issued is not None:
        if not isinstance(request, PkiRequest):
            raise ValueError("a SUCCESS answers a PkiRequest: it needs the requester's certificate")
        csr_key = x509.load_der_x509_csr(request.csr_der).public_key()
        if issued.public_key() != csr_key:
            raise ValueError("the issued certificate's public key is not the CSR's")
        cipher = scep_cms.CIPHERS_BY_NAME.get(
            request.content_encryption, scep_cms.CIPHERS_BY_NAME["aes256_cbc"]
        )
        certs = scep_cms.certs_only([issued.public_bytes(serialization.Encoding.DER)])
        content = scep_cms.envelope(certs, request.signer_der, cipher)
        attributes.append(scep_cms.attribute(_PKI_STATUS, core.PrintableString(_STATUS_SUCCESS)))
    return scep_cms.sign(content, attributes, ca_cert, ca_key, digest_name)
