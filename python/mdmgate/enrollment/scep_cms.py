"""The CMS (RFC 5652) that SCEP (RFC 8894) is made of, for :mod:`mdmgate.enrollment.scep`:
the content ciphers and digests it speaks, SignedData and EnvelopedData built for a reply
(:func:`sign`, :func:`envelope`, :func:`certs_only`), and the pieces of a request found and
opened (:func:`signer_certificate`, :func:`recipient_for`, :func:`decrypt_content`).

asn1crypto reads and writes the structures, cryptography does the maths. Nothing here knows
SCEP's messages or refusals: what a request lacks is the caller's to name.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms, core  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "CIPHERS",
    "CIPHERS_BY_NAME",
    "CONTENT_TYPE_OID",
    "DIGESTS",
    "DIGEST_OIDS",
    "MESSAGE_DIGEST_OID",
    "RSA_ENCRYPTION",
    "ContentCipher",
    "attribute",
    "certs_only",
    "decrypt_content",
    "digest",
    "envelope",
    "hash_algorithm",
    "recipient_for",
    "sign",
    "signer_certificate",
]

#: rsaEncryption: the key transport of envelopes and the signature algorithm of replies.
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
#: The signed attributes every SignedData of SCEP carries (RFC 5652 section 11).
CONTENT_TYPE_OID = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST_OID = "1.2.840.113549.1.9.4"

#: The digest algorithms spoken, by OID, under the names :func:`hash_algorithm` takes.
DIGESTS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
DIGEST_OIDS = {name: oid for oid, name in DIGESTS.items()}


@dataclass(frozen=True)
class ContentCipher:
    """A CBC content-encryption algorithm: its asn1crypto ``name``, ``oid``, key and block
    sizes in bytes (the IV is one block)."""

    name: str
    oid: str
    key_bytes: int
    block_bytes: int

    def algorithm(self, key: bytes) -> algorithms.AES | TripleDES:
        """The block cipher keyed with ``key``."""
        return TripleDES(key) if self.block_bytes == 8 else algorithms.AES(key)


#: The content ciphers spoken, by OID.
CIPHERS = {
    c.oid: c
    for c in (
        ContentCipher("aes128_cbc", "2.16.840.1.101.3.4.1.2", 16, 16),
        ContentCipher("aes192_cbc", "2.16.840.1.101.3.4.1.22", 24, 16),
        ContentCipher("aes256_cbc", "2.16.840.1.101.3.4.1.42", 32, 16),
        ContentCipher("des_ede3_cbc", "1.2.840.113549.3.7", 24, 8),
    )
}
CIPHERS_BY_NAME = {c.name: c for c in CIPHERS.values()}


def certs_only(ders: Sequence[bytes]) -> bytes:
    """A degenerate SignedData: certificates, no content, no signers (RFC 8894 3.4)."""
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [],
            "encap_content_info": {"content_type": "data"},
            "certificates": [asn1_x509.Certificate.load(der) for der in ders],
            "signer_infos": [],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


def signer_certificate(signed: Any, sid: Any) -> bytes | None:
    """The DER of the carried certificate that ``sid`` names, or None."""
    certificates = signed["certificates"]
    if isinstance(certificates, core.Void):
        return None
    for choice in certificates:
        if choice.name != "certificate":
            continue
        cert = choice.chosen
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if (
                cert.serial_number == wanted["serial_number"].native
                and cert.issuer.dump() == wanted["issuer"].dump()
            ):
                return bytes(cert.dump())
        elif cert.key_identifier is not None and cert.key_identifier == sid.chosen.native:
            return bytes(cert.dump())
    return None


def recipient_for(recipient_infos: Any, ours: Any) -> tuple[Any, list[str]]:
    """The KeyTransRecipientInfo addressed to ``ours`` (an asn1crypto certificate, named by
    issuer and serial or by subject key identifier), or None, and a description of every
    other recipient."""
    others: list[str] = []
    for info in recipient_infos:
        if info.name != "ktri":
            others.append(f"a {info.name} recipient")
            continue
        ktri = info.chosen
        rid = ktri["rid"]
        if rid.name == "issuer_and_serial_number":
            issuer, serial = rid.chosen["issuer"], rid.chosen["serial_number"].native
            if serial == ours.serial_number and issuer.dump() == ours.issuer.dump():
                return ktri, others
            others.append(f"{issuer.human_friendly}, serial {serial:x}")
        else:
            key_id = rid.chosen.native
            if ours.key_identifier is not None and key_id == ours.key_identifier:
                return ktri, others
            others.append(f"subject key identifier {key_id.hex()}")
    return None, others


def decrypt_content(
    ca_key: rsa.RSAPrivateKey, encrypted_key: bytes, cipher: ContentCipher, iv: bytes, data: bytes
) -> bytes | None:
    """The content ``data`` decrypted: the content key from ``encrypted_key`` (RSA PKCS#1
    v1.5 with ``ca_key``), then ``cipher`` in CBC mode from ``iv``, PKCS#7 padding removed.
    None however it fails, so that a failure tells nothing about why."""
    try:
        content_key = ca_key.decrypt(encrypted_key, padding.PKCS1v15())
    except ValueError:
        return None
    if len(content_key) != cipher.key_bytes or not data or len(data) % cipher.block_bytes:
        return None
    decryptor = Cipher(cipher.algorithm(content_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = block_padding.PKCS7(cipher.block_bytes * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        return None


def attribute(oid: str, value: Any) -> Any:
    """A CMS attribute ``oid`` with the one ``value`` (an asn1crypto value)."""
    return cms.CMSAttribute({"type": oid, "values": [value]})


def _issuer_and_serial(cert_der: bytes) -> Any:
    cert = asn1_x509.Certificate.load(cert_der)
    return cms.IssuerAndSerialNumber({"issuer": cert.issuer, "serial_number": cert.serial_number})


def envelope(plaintext: bytes, recipient_der: bytes, cipher: ContentCipher) -> bytes:
    """``plaintext`` enveloped for ``recipient_der``'s RSA key (PKCS#1 v1.5 transport)."""
    public_key = x509.load_der_x509_certificate(recipient_der).public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError("the requester's certificate has no RSA key to envelope the reply to")
    content_key = secrets.token_bytes(cipher.key_bytes)
    iv = secrets.token_bytes(cipher.block_bytes)
    padder = block_padding.PKCS7(cipher.block_bytes * 8).padder()
    encryptor = Cipher(cipher.algorithm(content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(plaintext) + padder.finalize())
    ciphertext += encryptor.finalize()
    recipient = cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": cms.RecipientIdentifier(
                name="issuer_and_serial_number", value=_issuer_and_serial(recipient_der)
            ),
            "key_encryption_algorithm": {"algorithm": RSA_ENCRYPTION},
            "encrypted_key": public_key.encrypt(content_key, padding.PKCS1v15()),
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [cms.RecipientInfo(name="ktri", value=recipient)],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {
                    "algorithm": cipher.oid,
                    "parameters": core.OctetString(iv),
                },
                "encrypted_content": ciphertext,
            },
        }
    )
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump())


def sign(
    content: bytes | None,
    attributes: list[Any],
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    digest_name: str,
) -> bytes:
    """A SignedData of ``content`` (id-data; absent when None) signed by ``ca_key`` with RSA
    PKCS#1 v1.5 over the ``digest_name`` digest (a name of :data:`DIGESTS`), carrying
    ``ca_cert``. Its signed attributes: contentType, messageDigest, then ``attributes``."""
    algorithm = hash_algorithm(digest_name)
    signed_attrs = cms.CMSAttributes(
        [
            attribute(CONTENT_TYPE_OID, cms.ContentType("data")),
            attribute(MESSAGE_DIGEST_OID, core.OctetString(digest(algorithm, content or b""))),
            *attributes,
        ]
    )
    # asn1crypto sorts a SET OF when it encodes it, as DER (and so every verifier) wants.
    signature = ca_key.sign(bytes(signed_attrs.dump()), padding.PKCS1v15(), algorithm)
    ca_der = ca_cert.public_bytes(serialization.Encoding.DER)
    digest_algorithm = {"algorithm": DIGEST_OIDS[digest_name]}
    signer = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                name="issuer_and_serial_number", value=_issuer_and_serial(ca_der)
            ),
            "digest_algorithm": digest_algorithm,
            "signed_attrs": signed_attrs,
            "signature_algorithm": {"algorithm": RSA_ENCRYPTION},
            "signature": signature,
        }
    )
    encapsulated: dict[str, Any] = {"content_type": "data"}
    if content is not None:
        encapsulated["content"] = content
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": encapsulated,
            "certificates": [asn1_x509.Certificate.load(ca_der)],
            "signer_infos": [signer],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    """The digest named ``name`` (``sha1``, ``sha512``); SHA-256 for any other name."""
    if name == "sha1":
        return hashes.SHA1()
    return hashes.SHA512() if name == "sha512" else hashes.SHA256()


def digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    """The ``algorithm`` digest of ``data``."""
    hasher = hashes.Hash(algorithm)
    hasher.update(data)
    return hasher.finalize()
