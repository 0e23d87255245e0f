"""The Apple enrollment profile: read back with plistlib, payload by payload, and every
input it refuses."""

from __future__ import annotations

import dataclasses
import plistlib
import uuid
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgate.enrollment.apple import (
    AcmeIdentity,
    EnrollmentProfileError,
    MdmSettings,
    ScepIdentity,
    enrollment_profile,
)
from tests.pki_helpers import Issuer, PrivateKey, certificate, der, ec_key


def make_cert(common_name: str, issuer: Issuer | None) -> tuple[bytes, x509.Name, PrivateKey]:
    """A CA certificate for a new P-256 key, signed by ``issuer`` (or by itself): its DER,
    its name and its key."""
    key = ec_key()
    cert = certificate(common_name, key, issuer=issuer, days=365, ca=True)
    return der(cert), cert.subject, key


ROOT_DER, ROOT_NAME, ROOT_KEY = make_cert("mdmgate root", None)
INTERMEDIATE_DER, _, _ = make_cert("mdmgate intermediate", (ROOT_NAME, ROOT_KEY))
# Names itself as its issuer, but another key signed it.
FORGED_ROOT_DER, _, _ = make_cert("mdmgate root", (ROOT_NAME, ec_key()))

MDM = MdmSettings(
    server_url="https://mdm.example.com/mdm/apple/connect",
    checkin_url="https://mdm.example.com/mdm/apple/checkin",
    topic="com.apple.mgmt.External.0b1c4b5e-5a3f-4d0e-9a53-a1f1e8d0c001",
)
SCEP = ScepIdentity(
    url="https://mdm.example.com/scep",
    challenge="one-time-challenge",
    subject="CN=mdmgate device/O=Example & Sons <Ltd>",
    name="Example",
)
ACME = AcmeIdentity(
    directory_url="https://acme.example.com/directory",
    client_identifier="token-123",
    subject="CN=mdmgate device",
)


def build(**changes: Any) -> bytes:
    arguments: dict[str, Any] = {
        "mdm": MDM,
        "identity": SCEP,
        "ca_der": ROOT_DER,
        "organization": "Example & Sons",
        "identifier": "com.example.mdm.enroll",
        "display_name": "Example device management",
    }
    arguments.update(changes)
    return enrollment_profile(**arguments)


def payloads(profile: bytes) -> dict[str, dict[str, Any]]:
    content = plistlib.loads(profile)["PayloadContent"]
    by_type = {payload["PayloadType"]: payload for payload in content}
    assert len(by_type) == len(content)
    return by_type


def test_scep_profile_has_root_identity_and_mdm_payloads() -> None:
    profile = plistlib.loads(build(profile_uuid="0A1B2C3D-0000-4000-8000-000000000001"))
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    assert profile["PayloadUUID"] == "0A1B2C3D-0000-4000-8000-000000000001"
    assert profile["PayloadIdentifier"] == "com.example.mdm.enroll"
    assert profile["PayloadDisplayName"] == "Example device management"
    assert profile["PayloadOrganization"] == "Example & Sons"
    content = profile["PayloadContent"]
    # Certificates first: the device must trust the chain before the MDM payload connects.
    assert [p["PayloadType"] for p in content] == [
        "com.apple.security.root",
        "com.apple.security.scep",
        "com.apple.mdm",
    ]
    uuids = [profile["PayloadUUID"]] + [p["PayloadUUID"] for p in content]
    assert len(set(uuids)) == 4
    for payload in content:
        assert payload["PayloadVersion"] == 1
        assert str(uuid.UUID(payload["PayloadUUID"])).upper() == payload["PayloadUUID"]
        assert payload["PayloadIdentifier"].startswith("com.example.mdm.enroll.")
        assert payload["PayloadOrganization"] == "Example & Sons"

    root, identity, mdm = content
    assert root["PayloadContent"] == ROOT_DER
    assert identity["PayloadContent"] == {
        "URL": "https://mdm.example.com/scep",
        "Name": "Example",
        "Challenge": "one-time-challenge",
        "Subject": [[["CN", "mdmgate device"]], [["O", "Example & Sons <Ltd>"]]],
        "Keysize": 2048,
        "Key Type": "RSA",
        "Key Usage": 5,
    }
    assert mdm["IdentityCertificateUUID"] == identity["PayloadUUID"]
    assert mdm["Topic"] == MDM.topic
    assert mdm["ServerURL"] == MDM.server_url
    assert mdm["CheckInURL"] == MDM.checkin_url
    assert mdm["AccessRights"] == 8191
    assert mdm["SignMessage"] is True
    assert mdm["CheckOutWhenRemoved"] is True
    assert mdm["ServerCapabilities"] == [
        "com.apple.mdm.per-user-connections",
        "com.apple.mdm.bootstraptoken",
    ]
    assert "UseDevelopmentAPNS" not in mdm


def test_an_issuing_ca_travels_as_a_certificate_payload_with_its_chain() -> None:
    """An enterprise issuing CA is no root: it goes in com.apple.security.pkcs1, and the
    roots above it (if given) in com.apple.security.root, all before the MDM payload."""
    content = plistlib.loads(build(ca_der=INTERMEDIATE_DER, ca_chain=[ROOT_DER]))["PayloadContent"]
    assert [(p["PayloadType"], p.get("PayloadContent")) for p in content[:2]] == [
        ("com.apple.security.pkcs1", INTERMEDIATE_DER),
        ("com.apple.security.root", ROOT_DER),
    ]
    assert [p["PayloadType"] for p in content[2:]] == ["com.apple.security.scep", "com.apple.mdm"]
    assert content[0]["PayloadIdentifier"] != content[1]["PayloadIdentifier"]


def test_uuids_are_fresh_for_every_profile() -> None:
    first, second = plistlib.loads(build()), plistlib.loads(build())
    assert first["PayloadUUID"] != second["PayloadUUID"]
    assert {p["PayloadUUID"] for p in first["PayloadContent"]}.isdisjoint(
        p["PayloadUUID"] for p in second["PayloadContent"]
    )


def test_acme_profile_points_the_mdm_payload_at_the_acme_payload() -> None:
    by_type = payloads(build(identity=ACME))
    assert set(by_type) == {"com.apple.security.root", "com.apple.security.acme", "com.apple.mdm"}
    acme = by_type["com.apple.security.acme"]
    assert by_type["com.apple.mdm"]["IdentityCertificateUUID"] == acme["PayloadUUID"]
    assert {k: v for k, v in acme.items() if not k.startswith("Payload")} == {
        "DirectoryURL": "https://acme.example.com/directory",
        "ClientIdentifier": "token-123",
        "KeyType": "ECSECPrimeRandom",
        "KeySize": 384,
        "HardwareBound": False,
        "Attest": False,
        "Subject": [[["CN", "mdmgate device"]]],
    }


def test_acme_subject_defaults_to_the_client_identifier() -> None:
    identity = AcmeIdentity(directory_url="https://acme.example.com/d", client_identifier="t-9")
    acme = payloads(build(identity=identity))["com.apple.security.acme"]
    assert acme["Subject"] == [[["CN", "t-9"]]]


def test_acme_hardware_bound_attested_key() -> None:
    identity = dataclasses.replace(ACME, hardware_bound=True, attest=True, key_size=256)
    acme = payloads(build(identity=identity))["com.apple.security.acme"]
    assert (acme["HardwareBound"], acme["Attest"], acme["KeySize"]) == (True, True, 256)


def test_external_scep_without_a_challenge_leaves_it_out() -> None:
    for challenge in (None, ""):
        identity = dataclasses.replace(SCEP, challenge=challenge)
        scep = payloads(build(identity=identity))["com.apple.security.scep"]["PayloadContent"]
        assert "Challenge" not in scep


def test_optional_mdm_keys() -> None:
    mdm = dataclasses.replace(
        MDM,
        checkin_url=None,
        access_rights=1 | 2 | 16,
        sign_message=False,
        check_out_when_removed=False,
        server_capabilities=(),
        use_development_apns=True,
    )
    payload = payloads(build(mdm=mdm))["com.apple.mdm"]
    assert "CheckInURL" not in payload
    assert "ServerCapabilities" not in payload
    assert payload["AccessRights"] == 19
    assert payload["SignMessage"] is False
    assert payload["CheckOutWhenRemoved"] is False
    assert payload["UseDevelopmentAPNS"] is True


def test_subject_values_may_hold_slashes_and_dotted_oids() -> None:
    identity = dataclasses.replace(SCEP, subject="/CN=a/b device/2.5.4.5=SN-1/OU=IT")
    scep = payloads(build(identity=identity))["com.apple.security.scep"]["PayloadContent"]
    assert scep["Subject"] == [[["CN", "a/b device"]], [["2.5.4.5", "SN-1"]], [["OU", "IT"]]]


def test_http_urls_only_when_allowed() -> None:
    mdm = dataclasses.replace(MDM, server_url="http://127.0.0.1:8080/connect", checkin_url=None)
    identity = dataclasses.replace(SCEP, url="http://127.0.0.1:8080/scep")
    with pytest.raises(EnrollmentProfileError, match=r"^mdm\.server_url: "):
        build(mdm=mdm)
    with pytest.raises(EnrollmentProfileError, match=r"^identity\.url: "):
        build(identity=identity)
    by_type = payloads(build(mdm=mdm, identity=identity, allow_http=True))
    assert by_type["com.apple.mdm"]["ServerURL"] == "http://127.0.0.1:8080/connect"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"mdm": dataclasses.replace(MDM, server_url="http://mdm.example.com")}, "mdm.server_url"),
        ({"mdm": dataclasses.replace(MDM, server_url="https:///no-host")}, "mdm.server_url"),
        ({"mdm": dataclasses.replace(MDM, server_url="https://u:p@h/x")}, "mdm.server_url"),
        ({"mdm": dataclasses.replace(MDM, checkin_url="ftp://h/x")}, "mdm.checkin_url"),
        ({"mdm": dataclasses.replace(MDM, topic="")}, "mdm.topic"),
        ({"mdm": dataclasses.replace(MDM, topic="com.example.push")}, "mdm.topic"),
        ({"mdm": dataclasses.replace(MDM, access_rights=0)}, "mdm.access_rights"),
        ({"mdm": dataclasses.replace(MDM, access_rights=8192)}, "mdm.access_rights"),
        ({"mdm": dataclasses.replace(MDM, access_rights=2)}, "mdm.access_rights"),
        ({"mdm": dataclasses.replace(MDM, access_rights=128)}, "mdm.access_rights"),
        (
            {"mdm": dataclasses.replace(MDM, server_capabilities=("com.apple.mdm.typo",))},
            "mdm.server_capabilities",
        ),
        (
            {
                "mdm": dataclasses.replace(
                    MDM,
                    server_capabilities=(
                        "com.apple.mdm.bootstraptoken",
                        "com.apple.mdm.bootstraptoken",
                    ),
                )
            },
            "mdm.server_capabilities",
        ),
        ({"identity": dataclasses.replace(SCEP, url="http://h/scep")}, "identity.url"),
        ({"identity": dataclasses.replace(SCEP, key_size=1024)}, "identity.key_size"),
        ({"identity": dataclasses.replace(SCEP, key_usage=2)}, "identity.key_usage"),
        ({"identity": dataclasses.replace(SCEP, subject="")}, "identity.subject"),
        ({"identity": dataclasses.replace(SCEP, subject="CN")}, "identity.subject"),
        ({"identity": dataclasses.replace(SCEP, subject="XX=a")}, "identity.subject"),
        ({"identity": dataclasses.replace(SCEP, subject="CN=")}, "identity.subject"),
        ({"identity": dataclasses.replace(SCEP, challenge="a\x00b")}, "identity.challenge"),
        ({"identity": dataclasses.replace(ACME, directory_url="x")}, "identity.directory_url"),
        (
            {"identity": dataclasses.replace(ACME, client_identifier="")},
            "identity.client_identifier",
        ),
        ({"identity": dataclasses.replace(ACME, key_type="DSA")}, "identity.key_type"),
        ({"identity": dataclasses.replace(ACME, key_size=512)}, "identity.key_size"),
        (
            {"identity": dataclasses.replace(ACME, key_type="RSA", key_size=2047)},
            "identity.key_size",
        ),
        (
            {
                "identity": dataclasses.replace(
                    ACME, key_type="RSA", key_size=2048, hardware_bound=True
                )
            },
            "identity.hardware_bound",
        ),
        (
            {"identity": dataclasses.replace(ACME, key_size=521, hardware_bound=True)},
            "identity.key_size",
        ),
        ({"identity": dataclasses.replace(ACME, attest=True)}, "identity.attest"),
        ({"ca_der": b"not a certificate"}, "ca_der"),
        ({"ca_der": FORGED_ROOT_DER}, "ca_der"),
        ({"ca_der": ROOT_DER.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x09")}, "ca_der"),
        ({"ca_chain": [b"junk"]}, "ca_chain[0]"),
        ({"ca_chain": [ROOT_DER]}, "ca_chain[0]"),
        ({"organization": ""}, "organization"),
        ({"display_name": "tab\there"}, "display_name"),
        ({"identifier": "has space"}, "identifier"),
        ({"identifier": ""}, "identifier"),
        ({"profile_uuid": "not-a-uuid"}, "profile_uuid"),
    ],
)
def test_bad_input_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(EnrollmentProfileError) as caught:
        build(**changes)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert isinstance(caught.value, ValueError)


def test_identity_must_be_scep_or_acme() -> None:
    with pytest.raises(EnrollmentProfileError, match=r"^identity: "):
        build(identity="https://scep.example.com")


@settings(max_examples=200, deadline=None)
@given(ca_der=st.binary(max_size=400))
def test_fuzz_ca_der_raises_only_profile_errors(ca_der: bytes) -> None:
    try:
        build(ca_der=ca_der)
    except EnrollmentProfileError as error:
        assert error.field == "ca_der"


@settings(max_examples=200, deadline=None)
@given(subject=st.text(max_size=60), challenge=st.text(max_size=30))
def test_fuzz_text_fields_raise_only_profile_errors(subject: str, challenge: str) -> None:
    identity = dataclasses.replace(SCEP, subject=subject, challenge=challenge)
    try:
        profile = build(identity=identity)
    except EnrollmentProfileError as error:
        assert error.field in {"identity.subject", "identity.challenge"}
        return
    scep = payloads(profile)["com.apple.security.scep"]["PayloadContent"]
    assert scep.get("Challenge", "") == challenge
