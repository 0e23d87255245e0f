"""The SCEP server messages (RFC 8894) against an independent requester
(tests/scep_client.py) and, for the CA's signature and envelope, the openssl command line."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest
from asn1crypto import cms  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdmgate.enrollment import scep
from mdmgate.enrollment.scep import FailInfo, PkiRequest, ScepError, ScepRefused
from tests import scep_client as client
from tests.pki_helpers import Credential, certificate, rsa_key


def make_ca(common_name: str, issuer: Credential | None = None) -> Credential:
    key = rsa_key()
    signer = None if issuer is None else issuer.issuer
    return Credential(key, certificate(common_name, key, issuer=signer, days=30, ca=True))


def issue(ca: Credential, csr_der: bytes) -> x509.Certificate:
    """The test's stand-in for the issuing service: certifies the CSR's key and subject."""
    csr = x509.load_der_x509_csr(csr_der)
    return certificate(csr.subject, csr.public_key(), issuer=ca.issuer)


@pytest.fixture(scope="module")
def ca() -> Credential:
    return make_ca("mdmgate test CA")


@pytest.fixture(scope="module")
def other_ca() -> Credential:
    return make_ca("some other CA")


@pytest.fixture(scope="module")
def requester() -> client.Requester:
    return client.new_requester("device-0001")


@pytest.fixture(scope="module")
def csr_der(requester: client.Requester) -> bytes:
    return client.make_csr(requester.key, "device-0001", "one-time-secret")


def parse(ca: Credential, body: bytes) -> PkiRequest:
    return scep.parse_pki_message(body, ca_cert=ca.cert, ca_key=ca.key)


def refusal(ca: Credential, body: bytes) -> ScepRefused:
    with pytest.raises(ScepRefused) as caught:
        parse(ca, body)
    return caught.value


def run_openssl(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, check=False)


# --- GetCACaps and GetCACert --------------------------------------------------------------


def test_the_requester_loads_nothing_of_the_gateway() -> None:
    # The requester finds the server module's mistakes only while it cannot share them:
    # nothing it (or its PKI helpers) imports may come from mdmgate.
    probe = (
        "import sys, tests.scep_client;"
        " print(sorted(m for m in sys.modules if m.partition('.')[0] == 'mdmgate'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_ca_caps_claim_only_what_the_server_implements() -> None:
    assert scep.ca_caps_response() == b"AES\nPOSTPKIOperation\nSHA-256\nSHA-512\nSCEPStandard\n"
    assert scep.CA_CAPS == ("AES", "POSTPKIOperation", "SHA-256", "SHA-512", "SCEPStandard")
    # Renewal needs issuing policy this layer does not have; DES3 and SHA-1 are accepted
    # from old clients but never advertised, so that nobody is invited to choose them.
    assert not {"Renewal", "DES3", "SHA-1", "GetNextCACert"} & set(scep.CA_CAPS)


def test_ca_cert_alone_is_its_der(ca: Credential) -> None:
    assert scep.ca_cert_response(ca.der) == ("application/x-x509-ca-cert", ca.der)


def test_ca_cert_with_a_chain_is_a_certs_only_signed_data(ca: Credential) -> None:
    issuing = make_ca("mdmgate issuing CA", issuer=ca)
    issuing_der = issuing.cert.public_bytes(serialization.Encoding.DER)
    content_type, body = scep.ca_cert_response(issuing_der, [ca.der])
    assert content_type == "application/x-x509-ca-ra-cert"
    # A CMS certificate set is a DER SET OF: its order is the encoding's, not the chain's.
    assert set(pkcs7.load_der_pkcs7_certificates(body)) == {issuing.cert, ca.cert}
    signed = cms.ContentInfo.load(body)["content"]
    assert len(signed["signer_infos"]) == 0
    assert signed["encap_content_info"]["content"].native is None
    printed = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-print_certs", "-noout"],
        input=body,
        capture_output=True,
        check=True,
    )
    assert b"mdmgate issuing CA" in printed.stdout
    assert b"mdmgate test CA" in printed.stdout


@pytest.mark.parametrize(
    ("ca_der", "chain", "field"),
    [(b"not a certificate", (), "ca_der"), (None, (b"\x30\x03\x02\x01\x01",), "chain[0]")],
)
def test_ca_cert_refuses_what_is_not_a_certificate(
    ca: Credential, ca_der: bytes | None, chain: tuple[bytes, ...], field: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        scep.ca_cert_response(ca_der if ca_der is not None else ca.der, chain)


def test_ca_cert_refuses_a_certificate_of_unknown_version(ca: Credential) -> None:
    version_3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2
    assert ca.der.count(version_3) == 1
    version_10 = ca.der.replace(version_3, b"\xa0\x03\x02\x01\x09")
    with pytest.raises(ValueError, match=r"^chain\[0\]: not a DER X\.509 certificate"):
        scep.ca_cert_response(ca.der, [version_10])


# --- PKCSReq and CertRep ------------------------------------------------------------------


CIPHER_NAMES = {
    "aes128": "aes128_cbc",
    "aes192": "aes192_cbc",
    "aes256": "aes256_cbc",
    "des3": "des_ede3_cbc",
}


@pytest.mark.parametrize(
    ("cipher", "digest"),
    [
        ("aes128", "sha256"),
        ("aes192", "sha256"),
        ("aes256", "sha256"),
        ("des3", "sha256"),
        ("aes256", "sha1"),
        ("aes128", "sha512"),
    ],
)
def test_enrolment_round_trip(
    ca: Credential, requester: client.Requester, csr_der: bytes, cipher: str, digest: str
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert, cipher=cipher, digest=digest)
    request = parse(ca, sent.body)
    assert request.message_type == client.PKCS_REQ
    assert request.transaction_id == sent.transaction_id
    assert request.sender_nonce == sent.sender_nonce
    assert request.signer_der == requester.cert.public_bytes(serialization.Encoding.DER)
    assert request.csr_der == csr_der
    assert request.challenge == "one-time-secret"
    assert request.digest_algorithm == digest
    assert request.content_encryption == CIPHER_NAMES[cipher]

    issued = issue(ca, request.csr_der)
    reply = scep.cert_rep(request, ca_cert=ca.cert, ca_key=ca.key, issued=issued)
    got = client.read_cert_rep(reply, ca_cert=ca.cert, requester=requester, request=sent)
    assert got.status == 0
    assert got.certificates == [issued]
    # The reply answers in the request's own algorithms, which the requester is known to have.
    assert got.cipher == cipher
    assert got.digest == digest
    assert got.recipient_nonce == sent.sender_nonce
    assert got.sender_nonce != sent.sender_nonce


def test_cert_rep_verifies_with_openssl(
    ca: Credential, requester: client.Requester, csr_der: bytes, tmp_path: Path
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert)
    request = parse(ca, sent.body)
    issued = issue(ca, request.csr_der)
    reply = scep.cert_rep(request, ca_cert=ca.cert, ca_key=ca.key, issued=issued)
    (tmp_path / "reply.der").write_bytes(reply)
    (tmp_path / "device.pem").write_bytes(requester.cert_pem)
    (tmp_path / "device.key").write_bytes(requester.key_pem)

    verified = run_openssl(
        "cms", "-verify", "-inform", "DER", "-noverify", "-binary",
        "-in", tmp_path / "reply.der", "-out", tmp_path / "envelope.der",
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert b"Verification successful" in verified.stderr
    got = client.read_cert_rep(reply, ca_cert=ca.cert, requester=requester, request=sent)
    assert (tmp_path / "envelope.der").read_bytes() == got.envelope

    opened = run_openssl(
        "cms", "-decrypt", "-inform", "DER", "-binary",
        "-in", tmp_path / "envelope.der", "-recip", tmp_path / "device.pem",
        "-inkey", tmp_path / "device.key", "-out", tmp_path / "certs.der",
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    assert pkcs7.load_der_pkcs7_certificates((tmp_path / "certs.der").read_bytes()) == [issued]


def test_failure_cert_rep_verifies_with_openssl_and_carries_no_content(
    ca: Credential, requester: client.Requester, csr_der: bytes, tmp_path: Path
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert)
    request = parse(ca, sent.body)
    reply = scep.cert_rep(
        request, ca_cert=ca.cert, ca_key=ca.key, fail_info=FailInfo.BAD_REQUEST,
        fail_text="the challenge was used before",
    )  # fmt: skip
    got = client.read_cert_rep(reply, ca_cert=ca.cert, requester=requester, request=sent)
    assert (got.status, got.fail_info) == (2, 2)
    assert got.fail_text == "the challenge was used before"
    assert got.certificates == []
    (tmp_path / "reply.der").write_bytes(reply)
    (tmp_path / "empty").write_bytes(b"")
    # No content: the messageDigest is over the empty string, as for detached content.
    verified = run_openssl(
        "cms", "-verify", "-inform", "DER", "-noverify", "-binary",
        "-in", tmp_path / "reply.der", "-content", tmp_path / "empty",
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr


def test_client_rejects_a_reply_to_another_request(
    ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    """The client's checks are real: it is no rubber stamp for whatever the server sends."""
    first = client.pkcs_req(csr_der, requester, ca.cert)
    second = client.pkcs_req(csr_der, requester, ca.cert)
    request = parse(ca, first.body)
    reply = scep.cert_rep(
        request, ca_cert=ca.cert, ca_key=ca.key, issued=issue(ca, request.csr_der)
    )
    with pytest.raises(client.CertRepRejected, match="recipientNonce"):
        client.read_cert_rep(reply, ca_cert=ca.cert, requester=requester, request=second)
    other = make_ca("mdmgate test CA")  # same name, other key: only the signature tells
    with pytest.raises(client.CertRepRejected):
        client.read_cert_rep(reply, ca_cert=other.cert, requester=requester, request=first)


@pytest.mark.parametrize(
    ("challenge", "tag"),
    [("s3cr3t-ÄÖ", None), ("PrintableOnly 123", 19), ("bmp-Ω", 30)],
)
def test_challenge_password_is_read(
    ca: Credential, requester: client.Requester, challenge: str, tag: int | None
) -> None:
    csr = client.make_csr(requester.key, "device", challenge, challenge_tag=tag)
    assert parse(ca, client.pkcs_req(csr, requester, ca.cert).body).challenge == challenge


def test_challenge_is_none_when_the_csr_has_none(
    ca: Credential, requester: client.Requester
) -> None:
    csr = client.make_csr(requester.key, "device", None)
    assert parse(ca, client.pkcs_req(csr, requester, ca.cert).body).challenge is None


def test_renewal_request_is_read_with_its_type(
    ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert, message_type=client.RENEWAL_REQ)
    assert parse(ca, sent.body).message_type == client.RENEWAL_REQ


def test_base64_body_as_in_a_get_query(
    ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert)
    from_der = parse(ca, sent.body)
    assert parse(ca, base64.b64encode(sent.body)) == from_der
    assert parse(ca, base64.encodebytes(sent.body)) == from_der  # MIME line breaks


# --- refusals -----------------------------------------------------------------------------


def reply_to(
    ca: Credential, refused: ScepRefused, requester: client.Requester, sent: client.PkcsReq
) -> client.CertRep:
    body = scep.cert_rep(
        refused.transaction, ca_cert=ca.cert, ca_key=ca.key, fail_info=refused.fail_info,
        fail_text=refused.message,
    )  # fmt: skip
    return client.read_cert_rep(body, ca_cert=ca.cert, requester=requester, request=sent)


def test_tampered_signature_is_answered_bad_message_check(
    ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    """RFC 8894 answers a message whose signature does not verify with a CertRep FAILURE
    (failInfo badMessageCheck), not with an HTTP error: the requester learns why."""
    sent = client.pkcs_req(csr_der, requester, ca.cert)
    tampered = bytearray(sent.body)
    tampered[-1] ^= 0x01  # the SignerInfo comes last, and its signature ends it
    refused = refusal(ca, bytes(tampered))
    assert refused.fail_info is FailInfo.BAD_MESSAGE_CHECK
    assert "signature" in refused.message
    assert refused.transaction.transaction_id == sent.transaction_id
    answer = reply_to(ca, refused, requester, sent)
    assert (answer.status, answer.fail_info) == (2, FailInfo.BAD_MESSAGE_CHECK)
    assert answer.digest == "sha256"


def test_tampered_content_fails_the_message_digest(
    ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert)
    signed = cms.ContentInfo.load(sent.body)["content"]
    carried = signed["encap_content_info"]["content"].native
    at = sent.body.index(carried) + len(carried) - 3  # inside the encrypted content
    tampered = bytearray(sent.body)
    tampered[at] ^= 0x80
    refused = refusal(ca, bytes(tampered))
    assert refused.fail_info is FailInfo.BAD_MESSAGE_CHECK
    assert "messageDigest" in refused.message


def test_message_without_the_signer_certificate_is_bad_message_check(
    ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert, carry_signer_cert=False)
    refused = refusal(ca, sent.body)
    assert refused.fail_info is FailInfo.BAD_MESSAGE_CHECK
    assert "signer certificate" in refused.message


def test_envelope_for_another_recipient_is_named(
    ca: Credential, other_ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert, recipient=other_ca.cert)
    with pytest.raises(ScepError) as caught:
        parse(ca, sent.body)
    assert not isinstance(caught.value, ScepRefused)
    text = str(caught.value)
    assert "not addressed to this CA" in text
    assert "some other CA" in text
    assert format(other_ca.cert.serial_number, "x") in text


def test_cert_poll_is_refused_politely(
    ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    """This server never answers PENDING, so a CertPoll (GetCertInitial) has nothing to
    poll for: it gets a FAILURE badRequest the requester can read."""
    sent = client.pkcs_req(csr_der, requester, ca.cert, message_type=client.CERT_POLL)
    refused = refusal(ca, sent.body)
    assert refused.fail_info is FailInfo.BAD_REQUEST
    assert refused.transaction.message_type == client.CERT_POLL
    answer = reply_to(ca, refused, requester, sent)
    assert (answer.status, answer.fail_info) == (2, FailInfo.BAD_REQUEST)
    assert "CertPoll" in (answer.fail_text or "")


@pytest.mark.parametrize(
    ("options", "named"),
    [({"cipher": "des"}, "1.3.14.3.2.7"), ({"digest": "md5"}, "md5")],
)
def test_unsupported_algorithms_are_bad_alg(
    ca: Credential, requester: client.Requester, csr_der: bytes, options: dict[str, str], named: str
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert, **options)  # type: ignore[arg-type]
    refused = refusal(ca, sent.body)
    assert refused.fail_info is FailInfo.BAD_ALG
    assert named in refused.message
    answer = reply_to(ca, refused, requester, sent)
    assert (answer.status, answer.fail_info) == (2, FailInfo.BAD_ALG)
    assert answer.digest == "sha256"  # never answers in the algorithm it refused


def test_csr_with_a_broken_self_signature_is_bad_message_check(
    ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    broken = bytearray(csr_der)
    broken[-1] ^= 0x01
    refused = refusal(ca, client.pkcs_req(bytes(broken), requester, ca.cert).body)
    assert refused.fail_info is FailInfo.BAD_MESSAGE_CHECK
    assert "CSR" in refused.message


def test_envelope_that_is_no_csr_is_bad_request(
    ca: Credential, requester: client.Requester
) -> None:
    refused = refusal(ca, client.pkcs_req(b"\x30\x00", requester, ca.cert).body)
    assert refused.fail_info is FailInfo.BAD_REQUEST
    assert "PKCS#10" in refused.message


@pytest.mark.parametrize(
    ("attribute", "named"),
    [
        (client.OID_TRANSACTION_ID, "transactionID"),
        (client.OID_SENDER_NONCE, "senderNonce"),
        (client.OID_MESSAGE_TYPE, "messageType"),
    ],
)
def test_missing_scep_attribute_cannot_be_answered(
    ca: Credential, requester: client.Requester, csr_der: bytes, attribute: str, named: str
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert, omit=(attribute,))
    with pytest.raises(ScepError, match=named) as caught:
        parse(ca, sent.body)
    assert not isinstance(caught.value, ScepRefused)


def test_short_sender_nonce_is_refused(
    ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    sent = client.pkcs_req(csr_der, requester, ca.cert, sender_nonce=b"\x01" * 8)
    with pytest.raises(ScepError, match="senderNonce"):
        parse(ca, sent.body)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"", "empty"),
        (b"hello, world", "base64"),
        (b"\x30\x03\x02\x01\x01", "ContentInfo"),
        (None, "SignedData"),
    ],
)
def test_unreadable_bodies_are_named(ca: Credential, body: bytes | None, named: str) -> None:
    if body is None:  # well-formed CMS, but the wrong kind
        body = cms.ContentInfo({"content_type": "data", "content": b"hi"}).dump()
    with pytest.raises(ScepError, match=named):
        parse(ca, body)


def test_cert_rep_arguments_are_checked(
    ca: Credential, requester: client.Requester, csr_der: bytes
) -> None:
    request = parse(ca, client.pkcs_req(csr_der, requester, ca.cert).body)
    issued = issue(ca, request.csr_der)
    with pytest.raises(ValueError, match="issued or fail_info"):
        scep.cert_rep(request, ca_cert=ca.cert, ca_key=ca.key)
    with pytest.raises(ValueError, match="issued or fail_info"):
        scep.cert_rep(
            request, ca_cert=ca.cert, ca_key=ca.key, issued=issued,
            fail_info=FailInfo.BAD_REQUEST,
        )  # fmt: skip
    stranger = client.make_csr(rsa_key(), "someone else")
    with pytest.raises(ValueError, match="public key"):
        scep.cert_rep(request, ca_cert=ca.cert, ca_key=ca.key, issued=issue(ca, stranger))
    with pytest.raises(ValueError, match="fail_text"):
        scep.cert_rep(
            request, ca_cert=ca.cert, ca_key=ca.key, issued=issued, fail_text="no failure"
        )


# --- fuzzing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_body(ca: Credential, requester: client.Requester, csr_der: bytes) -> bytes:
    return client.pkcs_req(csr_der, requester, ca.cert).body


def outcome(ca: Credential, body: bytes) -> str:
    """Parses ``body``: a request or a ScepError; anything else escapes and fails the test."""
    try:
        parse(ca, body)
    except ScepRefused:
        return "refused"
    except ScepError:
        return "error"
    return "request"


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_raise_only_scep_errors(ca: Credential, body: bytes) -> None:
    outcome(ca, body)
    outcome(ca, base64.b64encode(body))


_edits = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "cut", "insert", "truncate"]),
        st.integers(min_value=0),
        st.integers(min_value=0, max_value=255),
    ),
    min_size=1,
    max_size=4,
)


def mutate(body: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(body)
    for kind, position, value in edits:
        if not data:
            break
        at = position % len(data)
        if kind == "flip":
            data[at] ^= 1 << (value % 8)
        elif kind == "set":
            data[at] = value
        elif kind == "cut":
            del data[at : at + 1 + value % 16]
        elif kind == "insert":
            data[at:at] = bytes([value]) * (1 + value % 3)
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_edits, as_base64=st.booleans())
def test_fuzz_mutated_requests_raise_only_scep_errors(
    ca: Credential, valid_body: bytes, edits: list[tuple[str, int, int]], as_base64: bool
) -> None:
    body = mutate(valid_body, edits)
    outcome(ca, base64.b64encode(body) if as_base64 else body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_edits, layer=st.sampled_from(["csr", "envelope"]))
def test_fuzz_mutated_inner_layers_raise_only_scep_errors(
    ca: Credential,
    requester: client.Requester,
    csr_der: bytes,
    edits: list[tuple[str, int, int]],
    layer: str,
) -> None:
    """Mutations under a valid signature, so that the envelope and CSR readers are reached."""
    if layer == "csr":
        sent = client.pkcs_req(mutate(csr_der, edits), requester, ca.cert)
    else:
        inner = mutate(client.envelope(csr_der, ca.cert), edits)
        sent = client.pkcs_req(csr_der, requester, ca.cert, pki_envelope=inner)
    outcome(ca, sent.body)


@settings(max_examples=300, deadline=None)
@given(edits=_edits, arbitrary=st.binary(max_size=300))
def test_fuzz_ca_cert_response_raises_only_value_errors(
    ca: Credential, edits: list[tuple[str, int, int]], arbitrary: bytes
) -> None:
    """GetCACert input is configuration, not a request: bad DER is a ValueError naming it."""
    for der in (mutate(ca.der, edits), arbitrary):
        try:
            content_type, body = scep.ca_cert_response(ca.der, [der])
        except ValueError as error:
            assert str(error).startswith("chain[0]: ")
        else:
            assert content_type == "application/x-x509-ca-ra-cert"
            assert der in body
