"""Who an Apple message comes from: the CMS detached signature (``Mdm-Signature``), the
identity of a request, the authorization decision for bound, expired and revoked
certificates, and the binding of a certificate the built-in CA issued at Authenticate."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
from typing import Any

import msgspec
import pytest
from asn1crypto import algos, cms  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgate import plist
from mdmgate.apple import identity
from mdmgate.apple.identity import (
    NOT_VERIFIED,
    IdentityRefused,
    authorize,
    authorize_authenticate,
    bound_identity,
    certificate_auth,
    certificate_sha256,
    enrollment_refusal,
    request_identity,
)
from mdmgate.apple.service import AppleService
from mdmgate.enrollment import cms as cms_module
from mdmgate.enrollment.ca import CaPolicy, CertificateAuthority, fingerprint, serial_hex
from mdmgate.enrollment.cms import BadSignature, SignatureMismatch, verify_detached
from mdmgate.server.types import Request
from mdmgate.storage import Device
from mdmgate.storage.enrollment import IssuedCertificate, revoked_auth
from mdmgate.storage.memory import MemoryStore
from tests.pki_helpers import PrivateKey, certificate, csr_der, der, ec_key, rsa_key

CHECKIN = "application/x-apple-aspen-mdm-checkin"
BODY = plist.dumps({"Status": "Idle", "UDID": "UDID-1"})
NOW = 1_770_000_000.0


RSA_KEY = rsa_key()
RSA_CERT = certificate("rsa device", RSA_KEY)
EC_KEY = ec_key()
EC_CERT = certificate("ec device", EC_KEY)
OTHER_KEY = rsa_key()
OTHER_CERT = certificate("other device", OTHER_KEY)


def library_signature(
    body: bytes,
    signers: list[tuple[x509.Certificate, PrivateKey]],
    *,
    attributes: bool = True,
    extra: tuple[x509.Certificate, ...] = (),
) -> bytes:
    """A detached signature as cryptography builds it (SHA-256)."""
    builder = pkcs7.PKCS7SignatureBuilder().set_data(body)
    for cert, key in signers:
        builder = builder.add_signer(cert, key, hashes.SHA256())
    # After the signers: cryptography drops certificates added before a signer.
    for cert in extra:
        builder = builder.add_certificate(cert)
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    if not attributes:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    return builder.sign(serialization.Encoding.DER, options)


_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
    "md5": hashes.MD5(),
}


def handmade_signature(
    body: bytes,
    cert: x509.Certificate,
    key: PrivateKey,
    digest: str,
    *,
    attributes: bool = True,
    message_digest: bytes | None = None,
) -> bytes:
    """A detached SignedData built field by field (any digest, SHA-1 included, which
    cryptography's builder refuses): what older devices send."""
    algorithm = _HASHES[digest]
    if attributes:
        computed = hashlib.new(digest, body).digest()
        signed_attrs = cms.CMSAttributes(
            [
                cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
                cms.CMSAttribute(
                    {"type": "message_digest", "values": [message_digest or computed]}
                ),
            ]
        )
        # The signature covers the attributes as a SET (their universal tag).
        to_sign = b"\x31" + signed_attrs.dump()[1:]
    else:
        signed_attrs = None
        to_sign = body
    if isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(to_sign, padding.PKCS1v15(), algorithm)
        signature_algorithm = "rsassa_pkcs1v15"
    else:
        raw = key.sign(to_sign, ec.ECDSA(algorithm))
        signature_algorithm = f"{digest}_ecdsa"
    parsed = cms.Certificate.load(der(cert))
    info: dict[str, Any] = {
        "version": "v1",
        "sid": cms.SignerIdentifier(
            {
                "issuer_and_serial_number": {
                    "issuer": parsed.issuer,
                    "serial_number": parsed.serial_number,
                }
            }
        ),
        "digest_algorithm": {"algorithm": digest},
        "signature_algorithm": {"algorithm": signature_algorithm},
        "signature": raw,
    }
    if signed_attrs is not None:
        info["signed_attrs"] = signed_attrs
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": digest})],
            "encap_content_info": {"content_type": "data"},
            "certificates": [parsed],
            "signer_infos": [cms.SignerInfo(info)],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()  # type: ignore[no-any-return]


def edited(signature: bytes, change: Any) -> bytes:
    """The signature with ``change(signed_data)`` applied (asn1crypto re-encodes it)."""
    info = cms.ContentInfo.load(signature)
    signed_data = info["content"]
    change(signed_data)
    return cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()  # type: ignore[no-any-return]


# -- verify_detached


@pytest.mark.parametrize("attributes", [True, False])
@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha384", "sha512"])
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_verify_detached_signers_and_digests(kind: str, digest: str, attributes: bool) -> None:
    cert, key = (RSA_CERT, RSA_KEY) if kind == "rsa" else (EC_CERT, EC_KEY)
    signature = handmade_signature(BODY, cert, key, digest, attributes=attributes)
    assert verify_detached(signature, BODY) == der(cert)
    with pytest.raises(SignatureMismatch):
        verify_detached(signature, BODY + b"\n")


def test_verify_detached_library_signatures_signer_not_first() -> None:
    for attributes in (True, False):
        signature = library_signature(
            BODY, [(RSA_CERT, RSA_KEY)], attributes=attributes, extra=(OTHER_CERT, EC_CERT)
        )
        # DER sorts the SET: the (shorter) EC certificate comes before the RSA signer's.
        carried = [
            c.chosen.dump() for c in cms.ContentInfo.load(signature)["content"]["certificates"]
        ]
        assert len(carried) == 3
        assert carried[0] == der(EC_CERT)
        assert verify_detached(signature, BODY) == der(RSA_CERT)
    both = library_signature(BODY, [(EC_CERT, EC_KEY), (RSA_CERT, RSA_KEY)])
    assert verify_detached(both, BODY) in (der(EC_CERT), der(RSA_CERT))


def test_verify_detached_the_signer_that_verifies_counts() -> None:
    both = library_signature(BODY, [(EC_CERT, EC_KEY), (RSA_CERT, RSA_KEY)])

    def break_first(signed_data: Any) -> None:
        first = signed_data["signer_infos"][0]
        first["signature"] = bytes(64)

    assert verify_detached(edited(both, break_first), BODY) == der(RSA_CERT)

    def break_second_digest(signed_data: Any) -> None:
        second = signed_data["signer_infos"][1]
        for attribute in second["signed_attrs"]:
            if attribute["type"].native == "message_digest":
                attribute["values"] = [bytes(32)]

    assert verify_detached(edited(both, break_second_digest), BODY) == der(EC_CERT)


def test_verify_detached_mismatches() -> None:
    signature = library_signature(BODY, [(RSA_CERT, RSA_KEY)])
    with pytest.raises(SignatureMismatch, match="message digest"):
        verify_detached(signature, b"other body")
    bare = library_signature(BODY, [(RSA_CERT, RSA_KEY)], attributes=False)
    with pytest.raises(SignatureMismatch, match="no certificate"):
        verify_detached(bare, b"other body")

    def swap_certificate(signed_data: Any) -> None:
        signed_data["certificates"] = [cms.Certificate.load(der(OTHER_CERT))]

    with pytest.raises(SignatureMismatch):
        verify_detached(edited(signature, swap_certificate), BODY)
    wrong_digest = handmade_signature(
        BODY, RSA_CERT, RSA_KEY, "sha256", message_digest=hashlib.sha256(b"x").digest()
    )
    with pytest.raises(SignatureMismatch, match="digest"):
        verify_detached(wrong_digest, BODY)
    assert issubclass(SignatureMismatch, cms_module.CmsError)
    assert issubclass(BadSignature, cms_module.CmsError)


def test_verify_detached_unreadable_signatures_name_what() -> None:
    signature = library_signature(BODY, [(RSA_CERT, RSA_KEY)])
    cases: dict[str, bytes] = {
        "empty": b"",
        "not DER": b"garbage",
        "truncated": signature[:-10],
        "trailing": signature + b"\x00",
        "an INTEGER": b"\x02\x01\x01",
        "data, not SignedData": cms.ContentInfo(
            {"content_type": "data", "content": b"hello"}
        ).dump(),
    }

    def no_certificates(signed_data: Any) -> None:
        del signed_data["certificates"]

    def no_signers(signed_data: Any) -> None:
        signed_data["signer_infos"] = []

    def no_message_digest(signed_data: Any) -> None:
        info = signed_data["signer_infos"][0]
        info["signed_attrs"] = [
            a for a in info["signed_attrs"] if a["type"].native != "message_digest"
        ]

    cases["no certificates"] = edited(signature, no_certificates)
    cases["no signers"] = edited(signature, no_signers)
    cases["no message digest"] = edited(signature, no_message_digest)
    cases["md5"] = handmade_signature(BODY, RSA_CERT, RSA_KEY, "md5")
    expected = {
        "data, not SignedData": "SignedData",
        "no certificates": "no certificate",
        "no signers": "no signer",
        "no message digest": "messageDigest",
        "md5": "unsupported digest algorithm md5",
    }
    for case, value in cases.items():
        with pytest.raises(BadSignature) as refused:
            verify_detached(value, BODY)
        assert str(refused.value), case
        if case in expected:
            assert expected[case] in str(refused.value), (case, str(refused.value))


def test_verify_detached_skips_certificates_it_cannot_read() -> None:
    signature = library_signature(BODY, [(RSA_CERT, RSA_KEY)], extra=(EC_CERT,))
    version = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2: X.509 v3
    signer = der(RSA_CERT)
    start = signature.index(signer)
    at = signature.index(version, start)
    broken = signature[: at + 4] + b"\x07" + signature[at + 5 :]  # no such version
    with pytest.raises(SignatureMismatch):
        verify_detached(broken, BODY)
    # The unreadable one is another certificate: the signer still verifies.
    other = der(EC_CERT)
    at = signature.index(version, signature.index(other))
    assert verify_detached(signature[: at + 4] + b"\x07" + signature[at + 5 :], BODY) == signer


VALID = library_signature(BODY, [(RSA_CERT, RSA_KEY)], extra=(EC_CERT,))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_verify_detached_arbitrary_bytes_only_refuse(data: bytes) -> None:
    with pytest.raises((BadSignature, SignatureMismatch)):
        verify_detached(data, BODY)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(VALID) - 1),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=1, max_value=4),
)
def test_verify_detached_mutated_signature_only_refuses(at: int, value: int, span: int) -> None:
    mutated = bytearray(VALID)
    mutated[at : at + span] = bytes([value]) * len(mutated[at : at + span])
    try:
        found = verify_detached(bytes(mutated), BODY)
    except (BadSignature, SignatureMismatch):
        return
    # A change the signature does not cover: in the unused certificate, or in the signer's
    # certificate outside its key (no chain is checked; the identity is then another one).
    assert x509.load_der_x509_certificate(found).public_key() == RSA_CERT.public_key()


# -- the identity of a request


def request(
    *, cert: bytes | None = None, signature: str | None = None, body: bytes = BODY
) -> Request:
    headers: list[tuple[str, str]] = [("content-type", CHECKIN)]
    if signature is not None:
        headers.append(("mdm-signature", signature))
    return Request("PUT", "/mdm/apple/connect", "", tuple(headers), body, "1.1", "h:1", cert)


def test_request_identity() -> None:
    assert request_identity(request(), dev=False) is None
    assert request_identity(request(cert=b"mtls"), dev=False) == hashlib.sha256(b"mtls").hexdigest()
    signed = base64.b64encode(library_signature(BODY, [(EC_CERT, EC_KEY)])).decode()
    assert request_identity(request(signature=signed), dev=False) == certificate_sha256(
        der(EC_CERT)
    )
    # Folded over lines, as some HTTP stacks pass long headers on.
    folded = " ".join(signed[i : i + 64] for i in range(0, len(signed), 64))
    assert request_identity(request(signature=folded), dev=False) == certificate_sha256(
        der(EC_CERT)
    )
    # mTLS wins: the header is not even read.
    assert request_identity(request(cert=b"mtls", signature="%%%"), dev=False) == (
        hashlib.sha256(b"mtls").hexdigest()
    )
    cases = {
        "%%%": (400, "Mdm-Signature is not base64"),
        base64.b64encode(b"\x30\x03\x02\x01\x01").decode(): (400, "Mdm-Signature: "),
        base64.b64encode(library_signature(b"other", [(EC_CERT, EC_KEY)])).decode(): (
            403,
            "Mdm-Signature does not verify",
        ),
    }
    for header, (status, text) in cases.items():
        with pytest.raises(IdentityRefused) as refused:
            request_identity(request(signature=header), dev=False)
        assert refused.value.status == status
        assert refused.value.text.startswith(text), refused.value.text


def test_request_identity_without_cms_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "CMS_SUPPORTED", False)
    with pytest.raises(IdentityRefused) as refused:
        request_identity(request(signature="AAAA"), dev=False)
    assert refused.value.status == 400
    assert "no CMS support" in refused.value.text
    assert request_identity(request(signature="AAAA"), dev=True) is None


# -- authorization


def device(auth: dict[str, Any] | None = None) -> Device:
    return Device("UDID-1", "ios", "/acme", "17.4", auth=auth or {})


ID_A = "a" * 64
ID_B = "b" * 64


def refused(call: Any) -> IdentityRefused:
    with pytest.raises(IdentityRefused) as caught:
        call()
    assert caught.value.status == 403
    assert caught.value.text == NOT_VERIFIED
    return caught.value


def test_bound_identity_and_certificate_auth() -> None:
    assert bound_identity(device()) is None
    assert bound_identity(device({"method": "certificate", "sha256": ID_A.upper()})) == ID_A
    assert bound_identity(device({"method": "md5", "sha256": ID_A})) is None
    assert bound_identity(device(revoked_auth(["abc"]))) is None
    issued = IssuedCertificate(
        "1f", ID_A, "CN=UDID-1", "/acme", "apple", NOW - 10, NOW + 100, b"der"
    )
    assert certificate_auth(issued) == {
        "method": "certificate",
        "sha256": ID_A,
        "serial": "1f",
        "not_after": NOW + 100,
    }


def test_authorize_later_messages() -> None:
    bound = device({"method": "certificate", "sha256": ID_A})
    assert authorize(bound, ID_A, dev=False, now=NOW) is bound
    assert authorize(device(), None, dev=True, now=NOW).id == "UDID-1"
    assert refused(lambda: authorize(None, ID_A, dev=True, now=NOW)).reason == ("unknown device")
    assert "not bound" in refused(lambda: authorize(device(), ID_A, dev=False, now=NOW)).reason
    odd = device({"method": "certificate", "sha256": "é\ud800"})  # whatever an auth holds
    assert refused(lambda: authorize(odd, ID_A, dev=False, now=NOW)).suspicious
    other = refused(lambda: authorize(bound, ID_B, dev=True, now=NOW))
    assert other.reason == "a different certificate"
    assert refused(lambda: authorize(bound, None, dev=True, now=NOW)).reason


def test_authorize_refuses_expired_and_revoked_certificates() -> None:
    enrolled = device(
        {"method": "certificate", "sha256": ID_A, "serial": "1f", "not_after": NOW + 60}
    )
    assert authorize(enrolled, ID_A, dev=False, now=NOW + 60) is enrolled
    late = refused(lambda: authorize(enrolled, ID_A, dev=False, now=NOW + 61))
    assert late.reason == "certificate expired"
    revoked = device(revoked_auth(["1f"]))
    for dev in (False, True):  # development mode does not undo a revocation
        for who in (ID_A, ID_B, None):
            gone = refused(lambda d=dev, w=who: authorize(revoked, w, dev=d, now=NOW))
            assert gone.reason == "certificate revoked"
    broken = device({"method": "certificate", "sha256": ID_A, "not_after": "soon"})
    assert refused(lambda: authorize(broken, ID_A, dev=False, now=NOW)).reason


def test_authorize_authenticate_of_a_known_device() -> None:
    bound = device({"method": "certificate", "sha256": ID_A, "not_after": NOW + 60})
    authorize_authenticate(bound, ID_A, dev=False, now=NOW)
    assert refused(lambda: authorize_authenticate(bound, ID_B, dev=True, now=NOW)).suspicious
    assert (
        refused(lambda: authorize_authenticate(bound, ID_A, dev=False, now=NOW + 61)).reason
        == "certificate expired"
    )
    # Registered, nothing bound: binds on first use, with an identity (or in development).
    authorize_authenticate(device(), ID_A, dev=False, now=NOW)
    authorize_authenticate(device(), None, dev=True, now=NOW)
    assert refused(lambda: authorize_authenticate(device(), None, dev=False, now=NOW))
    # Revoked: never bound again by trust on first use, not even in development.
    revoked = device(revoked_auth(["1f"]))
    for dev in (False, True):
        gone = refused(lambda d=dev: authorize_authenticate(revoked, ID_B, dev=d, now=NOW))
        assert gone.reason == "certificate revoked"


def test_enrollment_refusal() -> None:
    issued = IssuedCertificate(
        "1f", ID_A, "CN=UDID-1", "/acme", "apple", NOW - 10, NOW + 100, b"der"
    )
    assert enrollment_refusal(issued, "UDID-1", now=NOW) is None
    bound_here = msgspec.structs.replace(issued, device_id="UDID-1")
    assert enrollment_refusal(bound_here, "UDID-1", now=NOW) is None
    cases = {
        "certificate revoked": msgspec.structs.replace(issued, revoked_at=NOW - 1),
        "certificate expired": msgspec.structs.replace(issued, not_after=NOW - 1),
        "certificate bound to another device": msgspec.structs.replace(issued, device_id="UDID-2"),
        "not an Apple certificate": msgspec.structs.replace(issued, platform="windows"),
    }
    for reason, refused in cases.items():
        assert enrollment_refusal(refused, "UDID-1", now=NOW) == reason


# -- Authenticate binds a certificate the CA issued


AUTHORITY = CertificateAuthority.create(
    "identity test CA", CaPolicy(root_key="rsa-2048"), now=dt.datetime.now(dt.UTC)
)


async def issue(
    store: MemoryStore,
    key: PrivateKey,
    *,
    platform: str = "apple",
    org: str = "/acme/ipads",
    device_id: str | None = None,
) -> tuple[bytes, IssuedCertificate]:
    """A certificate the CA issues to ``key`` and records, as the SCEP service will."""
    now = dt.datetime.now(dt.UTC)
    cert = AUTHORITY.issue(
        AUTHORITY.check_csr(csr_der(key, "device")), common_name="device", now=now
    )
    cert_der = der(cert)
    record = IssuedCertificate(
        serial=serial_hex(cert.serial_number),
        sha256=fingerprint(cert_der),
        subject=cert.subject.rfc4514_string(),
        org=org,
        platform=platform,
        issued_at=now.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        der=cert_der,
        token_id="et_0123456789abcdef",
        device_id=device_id,
    )
    await store.record_certificate(record)
    return cert_der, record


def checkin_request(message: dict[str, Any], cert: bytes | None) -> Request:
    return Request(
        "PUT",
        "/mdm/apple/checkin",
        "",
        (("content-type", CHECKIN),),
        plist.dumps(message),
        "1.1",
        "h:1",
        cert,
    )


def connect_request(udid: str, cert: bytes | None) -> Request:
    body = plist.dumps({"Status": "Idle", "UDID": udid})
    return Request(
        "PUT",
        "/mdm/apple/connect",
        "",
        (("content-type", "application/x-apple-aspen-mdm"),),
        body,
        "1.1",
        "h:1",
        cert,
    )


def authenticate(udid: str, product: str = "iPad13,1") -> dict[str, Any]:
    return {
        "MessageType": "Authenticate",
        "UDID": udid,
        "Topic": "com.apple.mgmt.External.1",
        "OSVersion": "17.4",
        "ProductName": product,
    }


async def test_authenticate_with_an_issued_certificate_enrolls_the_device() -> None:
    store = MemoryStore()
    cert_der, record = await issue(store, ec_key())
    svc = AppleService(store)
    answer = await svc.checkin(checkin_request(authenticate("NEW-1"), cert_der))
    assert answer.status == 200
    created = await store.get_device("NEW-1")
    assert created is not None
    assert (created.platform, created.org, created.os_version) == ("ipados", "/acme/ipads", "17.4")
    assert created.auth == {
        "method": "certificate",
        "sha256": record.sha256,
        "serial": record.serial,
        "not_after": record.not_after,
    }
    events = created.facts["enrollment_events"]
    assert [e["event"] for e in events] == ["enrolled"]
    assert record.serial in events[0]["reason"]
    assert created.facts["apple_enrollment"]["os_version"] == "17.4"
    bound = await store.get_certificate(record.serial)
    assert bound is not None
    assert bound.device_id == "NEW-1"
    # Later messages come with that certificate; another is refused.
    assert (await svc.connect(connect_request("NEW-1", cert_der))).status == 200
    assert (await svc.connect(connect_request("NEW-1", b"other"))).status == 403
    # Authenticate again with it: still one enrollment event.
    assert (await svc.checkin(checkin_request(authenticate("NEW-1"), cert_der))).status == 200
    again = await store.get_device("NEW-1")
    assert again is not None
    assert len(again.facts["enrollment_events"]) == 1


async def test_an_issued_certificate_enrolls_a_registered_device_into_its_org() -> None:
    store = MemoryStore()
    await store.upsert_devices(
        [Device("KNOWN-1", "ios", "/", "16.0", auth={"method": "certificate", "sha256": ID_A})]
    )
    cert_der, record = await issue(store, RSA_KEY, org="/acme")
    svc = AppleService(store)
    assert (
        await svc.checkin(checkin_request(authenticate("KNOWN-1", "iPhone15,2"), cert_der))
    ).status == 200
    known = await store.get_device("KNOWN-1")
    assert known is not None
    assert (known.org, known.platform, known.os_version) == ("/acme", "ios", "17.4")
    assert known.auth["sha256"] == record.sha256
    assert [e["event"] for e in known.facts["enrollment_events"]] == ["enrolled"]


async def test_unusable_issued_certificates_are_refused_like_unknown_devices(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    svc = AppleService(store)
    now = dt.datetime.now(dt.UTC).timestamp()
    revoked_der, revoked = await issue(store, rsa_key())
    await store.revoke_certificates(reason="lost", at=now, serial=revoked.serial)
    windows_der, _ = await issue(store, ec_key(), platform="windows")
    taken_der, _ = await issue(store, ec_key(), device_id="OTHER")
    unknown_answer = await svc.checkin(checkin_request(authenticate("NEW-0"), b"never issued"))
    assert unknown_answer.status == 403
    caplog.set_level(logging.INFO, logger="mdmgate.apple")
    for cert_der, reason in (
        (revoked_der, "certificate revoked"),
        (windows_der, "not an Apple certificate"),
        (taken_der, "certificate bound to another device"),
    ):
        caplog.clear()
        answer = await svc.checkin(checkin_request(authenticate("NEW-2"), cert_der))
        assert (answer.status, answer.headers, answer.body) == (
            unknown_answer.status,
            unknown_answer.headers,
            unknown_answer.body,
        )
        assert reason in caplog.text
        assert await store.get_device("NEW-2") is None


async def test_expired_issued_certificate_is_refused() -> None:
    store = MemoryStore()
    cert_der, record = await issue(store, ec_key())
    late = AppleService(store, clock=lambda: record.not_after + 1)
    assert (await late.checkin(checkin_request(authenticate("NEW-3"), cert_der))).status == 403
    assert await store.get_device("NEW-3") is None
    # Enrolled in time, then the certificate runs out: its messages are refused.
    svc = AppleService(store, clock=lambda: record.not_after - 10)
    assert (await svc.checkin(checkin_request(authenticate("NEW-3"), cert_der))).status == 200
    assert (await svc.connect(connect_request("NEW-3", cert_der))).status == 200
    assert (await late.connect(connect_request("NEW-3", cert_der))).status == 403


async def test_a_revoked_binding_is_never_rebound_by_trust_on_first_use() -> None:
    store = MemoryStore()
    cert_der, record = await issue(store, ec_key())
    svc = AppleService(store)
    assert (await svc.checkin(checkin_request(authenticate("NEW-4"), cert_der))).status == 200
    await store.revoke_certificates(reason="stolen", at=NOW, device_id="NEW-4")
    revoked = await store.get_device("NEW-4")
    assert revoked is not None
    assert revoked.auth == revoked_auth([record.serial])
    dev = AppleService(store, dev=True)
    for who in (cert_der, b"a self-made certificate", None):
        assert (await dev.checkin(checkin_request(authenticate("NEW-4"), who))).status == 403
        assert (await dev.connect(connect_request("NEW-4", who))).status == 403
    after = await store.get_device("NEW-4")
    assert after is not None
    assert after.auth == revoked_auth([record.serial])
    # A new certificate from the CA (a new enrollment) enrolls it again.
    fresh_der, fresh = await issue(store, ec_key())
    assert (await svc.checkin(checkin_request(authenticate("NEW-4"), fresh_der))).status == 200
    enrolled = await store.get_device("NEW-4")
    assert enrolled is not None
    assert enrolled.auth["serial"] == fresh.serial


async def test_a_revoked_device_stays_refused_in_development_mode() -> None:
    store = MemoryStore()
    await store.upsert_devices(
        [Device("GONE-1", "ios", "/acme", "17.4", auth=revoked_auth(["1f"]))]
    )
    for svc in (AppleService(store), AppleService(store, dev=True)):
        for cert in (b"any certificate", None):
            assert (await svc.checkin(checkin_request(authenticate("GONE-1"), cert))).status == 403
            assert (await svc.connect(connect_request("GONE-1", cert))).status == 403
    gone = await store.get_device("GONE-1")
    assert gone is not None
    assert gone.auth == revoked_auth(["1f"])
