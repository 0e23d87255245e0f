"""MS-MDE2 Windows enrollment messages: the specification's own samples in, typed values out;
typed values in, responses that a namespace-aware XML reader finds the right structure in.

The sample messages are in tests/data/mde2/ (each names its MS-MDE2 section), filled in by
tests/enrollment_helpers.py. Namespaces, actions and value types are spelled out in the tests
(here and there), not imported from the module, so that a typo in the module cannot agree with
itself.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import pickle
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from mdmgate.enrollment import windows
from mdmgate.enrollment.windows import (
    DmClientSettings,
    DmCredentials,
    EnrollmentFault,
    discover_response,
    enrollment_response,
    parse_discover,
    parse_enrollment,
    parse_get_policies,
    policies_response,
    provisioning_doc,
    renewal_doc,
    soap_fault,
)
from tests.enrollment_helpers import (
    ENROLL,
    MDE2_SAMPLES,
    PKI,
    PROVISION_DOC,
    SAMPLE_DEVICE_ID,
    WSSE,
    WST,
    XCEP,
    XML_NS,
    XSI,
    A,
    S,
    b64,
    get_policies,
    renewal_request,
    request_security_token,
    sample,
)
from tests.pki_helpers import certificate, common_name, csr_der, der, rsa_key

DISCOVER_RESPONSE = ENROLL + "/IDiscoveryService/DiscoverResponse"
GET_POLICIES_RESPONSE = XCEP + "/IPolicy/GetPoliciesResponse"
RSTRC = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment/RSTRC/wstep"
TOKEN_TYPE = (
    "http://schemas.microsoft.com/5.0.0.0/ConfigurationManager/Enrollment/DeviceEnrollmentToken"
)
BASE64_ENCODING = WSSE + "#base64binary"

TOKEN = "et_0123456789abcdef.s3cret-value_with-URL-safe-chars"
HTTPS = "https://mdm.example.com"


# -- material made in the test


@functools.cache
def material() -> dict[str, Any]:
    """A CA, a device certificate it issued, the device's PKCS#10 request, and a renewal: a
    new key's request in a PKCS#7 signed with the device's certificate (what Windows sends)."""
    ca_key, device_key, new_key = rsa_key(), rsa_key(), rsa_key()
    ca_name = common_name("mdmgate test CA")
    device_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, SAMPLE_DEVICE_ID),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso & Co"),
        ]
    )
    ca = certificate(ca_name, ca_key, days=365)
    device = certificate(device_name, device_key, issuer=(ca_name, ca_key), days=365)
    renewal_csr = csr_der(new_key, SAMPLE_DEVICE_ID)
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(renewal_csr)
        .add_signer(device, device_key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    return {
        "ca_der": der(ca),
        "device_der": der(device),
        "device_key": device_key,
        "device": device,
        "csr_der": csr_der(device_key, SAMPLE_DEVICE_ID),
        "renewal_csr": renewal_csr,
        "renewal_pkcs7": signed,
    }


@pytest.fixture
def pki() -> dict[str, Any]:
    return material()


def rst_onpremise(pki: dict[str, Any]) -> bytes:
    return request_security_token(TOKEN, pki["csr_der"])


def rst_federated(pki: dict[str, Any]) -> bytes:
    return request_security_token(TOKEN, pki["csr_der"], federated=True)


def rst_renew(pki: dict[str, Any], token: bytes | None = None) -> bytes:
    return renewal_request(pki["renewal_pkcs7"] if token is None else token)


def get_policies_onpremise() -> bytes:
    return get_policies(TOKEN)


def get_policies_federated() -> bytes:
    return get_policies(TOKEN, federated=True)


def settings(**changes: Any) -> DmClientSettings:
    values: dict[str, Any] = {
        "server_url": HTTPS + "/ManagementServer/MDM.svc",
        "renewal_url": HTTPS + "/EnrollmentServer/Enrollment.svc",
    }
    values.update(changes)
    return DmClientSettings(**values)


# -- reading what the module wrote


def envelope(data: bytes) -> tuple[ET.Element, ET.Element]:
    root = ET.fromstring(data)
    assert root.tag == f"{{{S}}}Envelope"
    header, body = root.find(f"{{{S}}}Header"), root.find(f"{{{S}}}Body")
    assert header is not None
    assert body is not None
    return header, body


def header_value(header: ET.Element, name: str) -> str:
    found = header.find(f"{{{A}}}{name}")
    assert found is not None, name
    return found.text or ""


def _one(parent: ET.Element, path: str) -> ET.Element:
    found = parent.find(path)
    assert found is not None, path
    return found


def _characteristic(parent: ET.Element, *types: str) -> ET.Element:
    node = parent
    for kind in types:
        matches = [c for c in node.findall("characteristic") if c.get("type") == kind]
        assert len(matches) == 1, (kind, [c.get("type") for c in node.findall("characteristic")])
        node = matches[0]
    return node


def _parms(node: ET.Element) -> dict[str, tuple[str | None, str | None]]:
    return {p.get("name", ""): (p.get("value"), p.get("datatype")) for p in node.findall("parm")}


def fault_of(call: Any, *args: Any) -> EnrollmentFault:
    with pytest.raises(EnrollmentFault) as caught:
        call(*args)
    return caught.value


# -- discovery


def test_the_discover_sample_reads_as_its_fields() -> None:
    request = parse_discover((MDE2_SAMPLES / "discover_onpremise.xml").read_bytes())

    assert request.message_id == "urn:uuid: 748132ec-a575-4329-b01b-6171a9cf8478"
    assert request.email == "user@contoso.com"
    assert request.request_version == "3.0"
    assert request.device_type == "WindowsPhone"
    assert request.application_version == "10.0.0.0"
    assert request.os_edition == 3
    assert request.auth_policies == ("OnPremise",)


def test_the_discover_response_names_the_services_and_answers_the_message() -> None:
    request = parse_discover((MDE2_SAMPLES / "discover_onpremise.xml").read_bytes())

    answer = discover_response(
        request,
        auth_policy="OnPremise",
        policy_url=HTTPS + "/EnrollmentServer/Policy.svc",
        enrollment_url=HTTPS + "/EnrollmentServer/Enrollment.svc",
    )

    header, body = envelope(answer)
    assert header_value(header, "Action") == DISCOVER_RESPONSE
    assert _one(header, f"{{{A}}}Action").get(f"{{{S}}}mustUnderstand") == "1"
    assert header_value(header, "RelatesTo") == request.message_id
    result = _one(body, f"{{{ENROLL}}}DiscoverResponse/{{{ENROLL}}}DiscoverResult")
    assert _one(result, f"{{{ENROLL}}}AuthPolicy").text == "OnPremise"
    # The device asked for 3.0: it is not answered with a version it did not ask for.
    assert _one(result, f"{{{ENROLL}}}EnrollmentVersion").text == "3.0"
    assert _one(result, f"{{{ENROLL}}}EnrollmentPolicyServiceUrl").text == (
        HTTPS + "/EnrollmentServer/Policy.svc"
    )
    assert _one(result, f"{{{ENROLL}}}EnrollmentServiceUrl").text == (
        HTTPS + "/EnrollmentServer/Enrollment.svc"
    )
    assert result.find(f"{{{ENROLL}}}AuthenticationServiceUrl") is None


def test_a_federated_discover_response_names_the_authentication_page() -> None:
    request = parse_discover((MDE2_SAMPLES / "discover_federated.xml").read_bytes())
    assert request.request_version == "5.0"

    answer = discover_response(
        request,
        auth_policy="Federated",
        policy_url=HTTPS + "/EnrollmentServer/Policy.svc",
        enrollment_url=HTTPS + "/EnrollmentServer/Enrollment.svc",
        authentication_url=HTTPS + "/enroll/windows/login",
    )

    _, body = envelope(answer)
    result = _one(body, f"{{{ENROLL}}}DiscoverResponse/{{{ENROLL}}}DiscoverResult")
    assert _one(result, f"{{{ENROLL}}}AuthPolicy").text == "Federated"
    assert _one(result, f"{{{ENROLL}}}EnrollmentVersion").text == "4.0"
    assert _one(result, f"{{{ENROLL}}}AuthenticationServiceUrl").text == (
        HTTPS + "/enroll/windows/login"
    )


def test_discovery_refuses_a_policy_the_device_does_not_offer() -> None:
    request = parse_discover((MDE2_SAMPLES / "discover_onpremise.xml").read_bytes())

    fault = fault_of(
        lambda: discover_response(
            request,
            auth_policy="Federated",
            policy_url=HTTPS + "/p",
            enrollment_url=HTTPS + "/e",
            authentication_url=HTTPS + "/login",
        )
    )

    assert fault.subcode == "s:Authentication"
    assert "Federated" in fault.message
    assert "OnPremise" in fault.message


def test_an_old_client_without_auth_policies_gets_on_premise_and_no_version() -> None:
    text = sample("discover_onpremise.xml").replace("<RequestVersion>3.0", "<RequestVersion>2.0")
    text = re.sub(r"<AuthPolicies>.*?</AuthPolicies>", "", text, flags=re.S)
    request = parse_discover(text.encode())
    assert request.auth_policies == ()
    urls = {"policy_url": HTTPS + "/p", "enrollment_url": HTTPS + "/e"}

    answer = discover_response(request, auth_policy="OnPremise", **urls)

    _, body = envelope(answer)
    result = _one(body, f"{{{ENROLL}}}DiscoverResponse/{{{ENROLL}}}DiscoverResult")
    # MS-MDE2 3.1.4.1.3.2: EnrollmentVersion starts at 3.0; a 2.0 client gets none.
    assert result.find(f"{{{ENROLL}}}EnrollmentVersion") is None
    with pytest.raises(EnrollmentFault):
        discover_response(
            request, auth_policy="Federated", authentication_url=HTTPS + "/login", **urls
        )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"policy_url": "http://mdm.example.com/p"}, "policy_url"),
        ({"enrollment_url": "ftp://mdm.example.com/e"}, "enrollment_url"),
        ({"enrollment_url": "https://other.example.com/e"}, "same host"),
        ({"auth_policy": "Federated"}, "authentication_url"),
        ({"auth_policy": "Certificate"}, "auth_policy"),
        ({"enrollment_version": "9.0"}, "enrollment_version"),
    ],
)
def test_discovery_refuses_settings_a_device_cannot_use(
    changes: dict[str, Any], named: str
) -> None:
    request = parse_discover((MDE2_SAMPLES / "discover_federated.xml").read_bytes())
    values: dict[str, Any] = {
        "auth_policy": "OnPremise",
        "policy_url": HTTPS + "/p",
        "enrollment_url": HTTPS + "/e",
    }
    values.update(changes)

    with pytest.raises(ValueError, match=named):
        discover_response(request, **values)


# -- enrollment policy


def test_the_on_premise_get_policies_sample_carries_the_password() -> None:
    request = parse_get_policies(get_policies_onpremise())

    assert request.message_id == "urn:uuid:72048B64-0F19-448F-8C2E-B4C661860AA0"
    assert request.username == "user@contoso.com"
    assert request.password == TOKEN
    assert request.security_token is None


def test_the_federated_get_policies_sample_carries_the_token() -> None:
    request = parse_get_policies(get_policies_federated())

    assert request.security_token == TOKEN
    assert request.username is None
    assert request.password is None


def test_the_policies_response_asks_for_the_key_size_and_hash() -> None:
    request = parse_get_policies(get_policies_onpremise())

    answer = policies_response(request, min_key_bits=3072)

    header, body = envelope(answer)
    assert header_value(header, "Action") == GET_POLICIES_RESPONSE
    assert header_value(header, "RelatesTo") == request.message_id
    response = _one(body, f"{{{XCEP}}}GetPoliciesResponse")
    attributes = _one(
        response,
        f"{{{XCEP}}}response/{{{XCEP}}}policies/{{{XCEP}}}policy/{{{XCEP}}}attributes",
    )
    assert _one(attributes, f"{{{XCEP}}}policySchema").text == "3"
    key_length = f"{{{XCEP}}}privateKeyAttributes/{{{XCEP}}}minimalKeyLength"
    assert _one(attributes, key_length).text == "3072"
    reference = _one(attributes, f"{{{XCEP}}}hashAlgorithmOIDReference").text
    oids = response.findall(f"{{{XCEP}}}oIDs/{{{XCEP}}}oID")
    assert len(oids) == 1
    assert _one(oids[0], f"{{{XCEP}}}oIDReferenceID").text == reference
    assert _one(oids[0], f"{{{XCEP}}}value").text == "2.16.840.1.101.3.4.2.1"
    # Group 1 is the hash algorithms (MS-MDE2 3.3.4.1.1.2: "the <group> element value is 1").
    assert _one(oids[0], f"{{{XCEP}}}group").text == "1"
    assert _one(response, f"{{{XCEP}}}cAs").get(f"{{{XSI}}}nil") == "true"


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"min_key_bits": 1024}, "min_key_bits"),
        ({"hash_algorithm_oid": "1.2.840.113549.1.1.11"}, "hash_algorithm_oid"),
    ],
)
def test_the_policies_response_refuses_what_windows_cannot_use(
    changes: dict[str, Any], named: str
) -> None:
    request = parse_get_policies(get_policies_onpremise())
    values: dict[str, Any] = {"min_key_bits": 2048}
    values.update(changes)

    with pytest.raises(ValueError, match=named):
        policies_response(request, **values)


# -- enrollment


def test_the_on_premise_enrollment_sample_reads_with_its_additional_context(
    pki: dict[str, Any],
) -> None:
    request = parse_enrollment(rst_onpremise(pki))

    assert request.message_id == "urn:uuid:0d5a1441-5891-453b-becf-a2e5f6ea3749"
    assert request.request_type == "issue"
    assert request.username == "user@contoso.com"
    assert request.password == TOKEN
    assert request.security_token is None
    assert request.csr_der == pki["csr_der"]
    assert request.signer_certificate_der is None
    assert request.device_id == SAMPLE_DEVICE_ID
    assert request.hw_dev_id == "F" * 64
    assert request.enrollment_type == "Full"
    assert request.context["DeviceType"] == "CIMClient_Windows"
    assert request.context["OfflineAutoPilotEnrollmentCorrelator"] == (
        "ffffffff-ffff-4fff-afff-ffffffffffff"
    )
    # A repeated item keeps every value, in order; the mapping has the first.
    macs = [value for name, value in request.context_items if name == "MAC"]
    assert macs == ["FF:FF:FF:FF:FF:FF", "CC:CC:CC:CC:CC:CC"]
    assert request.context["MAC"] == "FF:FF:FF:FF:FF:FF"


def test_the_federated_enrollment_sample_carries_the_token(pki: dict[str, Any]) -> None:
    request = parse_enrollment(rst_federated(pki))

    assert request.security_token == TOKEN
    assert request.username is None
    assert request.password is None
    assert request.csr_der == pki["csr_der"]
    assert request.context["AADPub"] == "FFFFFFFFFFFF"


def test_a_token_is_filled_in_as_element_content_whatever_it_holds(
    pki: dict[str, Any],
) -> None:
    # Tokens are URL-safe base64 and may hold "--"; the samples' comments name the
    # placeholders too, and "--" in a comment is not XML.
    token = "et_0123456789abcdef.a--b---c--"

    for federated in (False, True):
        enrollment = parse_enrollment(
            request_security_token(token, pki["csr_der"], federated=federated)
        )
        policies = parse_get_policies(get_policies(token, federated=federated))

        sent = (enrollment.security_token, policies.security_token)
        if not federated:
            sent = (enrollment.password, policies.password)
        assert sent == (token, token)
        assert enrollment.csr_der == pki["csr_der"]
        assert enrollment.device_id == SAMPLE_DEVICE_ID


def test_a_renewal_yields_the_pkcs10_inside_the_pkcs7_and_its_signer(
    pki: dict[str, Any],
) -> None:
    request = parse_enrollment(rst_renew(pki))

    assert request.request_type == "renew"
    assert request.csr_der == pki["renewal_csr"]
    assert request.signer_certificate_der == pki["device_der"]
    assert request.enrollment_type == "Device"
    assert request.password == ""


def test_a_renewal_whose_pkcs7_signature_does_not_verify_is_refused(
    pki: dict[str, Any],
) -> None:
    # The signature is the PKCS#7's last field: its last byte changed, nothing verifies it,
    # so the device certificate it carries proves nothing.
    forged = pki["renewal_pkcs7"][:-1] + bytes([pki["renewal_pkcs7"][-1] ^ 1])

    fault = fault_of(parse_enrollment, rst_renew(pki, forged))

    assert fault.subcode == "s:CertificateRequest"
    assert "signature" in fault.message


def test_a_renewal_pkcs7_without_certificates_names_no_signer(pki: dict[str, Any]) -> None:
    bare = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(pki["renewal_csr"])
        .add_signer(pki["device"], pki["device_key"], hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCerts])
    )

    request = parse_enrollment(rst_renew(pki, bare))

    assert request.csr_der == pki["renewal_csr"]
    assert request.signer_certificate_der is None


def test_a_manual_renewal_with_base64_content_yields_the_pkcs10(pki: dict[str, Any]) -> None:
    # Manual renewal base64-encodes the PKCS#7's content (automatic renewal does not).
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(base64.b64encode(pki["renewal_csr"]))
        .add_signer(pki["device"], pki["device_key"], hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )

    request = parse_enrollment(rst_renew(pki, signed))

    assert request.csr_der == pki["renewal_csr"]


def test_the_enrollment_response_carries_the_provisioning_document(pki: dict[str, Any]) -> None:
    request = parse_enrollment(rst_onpremise(pki))
    document = provisioning_doc(
        ca_der=pki["ca_der"],
        device_der=pki["device_der"],
        enrollment_type=request.enrollment_type,
        settings=settings(),
        device_id=request.device_id,
    )

    answer = enrollment_response(request, document)

    header, body = envelope(answer)
    assert header_value(header, "Action") == RSTRC
    assert header_value(header, "RelatesTo") == request.message_id
    response = _one(body, f"{{{WST}}}RequestSecurityTokenResponseCollection")
    response = _one(response, f"{{{WST}}}RequestSecurityTokenResponse")
    assert _one(response, f"{{{WST}}}TokenType").text == TOKEN_TYPE
    assert response.find(f"{{{PKI}}}DispositionMessage") is not None
    token = _one(response, f"{{{WST}}}RequestedSecurityToken/{{{WSSE}}}BinarySecurityToken")
    assert token.get("ValueType") == PROVISION_DOC
    assert token.get("EncodingType") == BASE64_ENCODING
    assert base64.b64decode(token.text or "", validate=True) == document
    assert _one(response, f"{{{PKI}}}RequestID").text == "0"


def test_the_enrollment_response_is_stamped_for_five_minutes(pki: dict[str, Any]) -> None:
    request = parse_enrollment(rst_onpremise(pki))
    document = renewal_doc(
        device_der=pki["device_der"], enrollment_type="Full", settings=settings()
    )
    now = datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC)

    header, _ = envelope(enrollment_response(request, document, now=now))

    utility = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
    stamp = _one(header, f"{{{WSSE}}}Security/{{{utility}}}Timestamp")
    assert _one(stamp, f"{{{utility}}}Created").text == "2024-01-02T03:04:05.678Z"
    assert _one(stamp, f"{{{utility}}}Expires").text == "2024-01-02T03:09:05.678Z"


def test_the_enrollment_response_refuses_what_is_not_a_provisioning_document(
    pki: dict[str, Any],
) -> None:
    request = parse_enrollment(rst_onpremise(pki))

    with pytest.raises(ValueError, match="wap-provisioningdoc"):
        enrollment_response(request, b"<SyncML/>")


# -- the provisioning document


def _thumbprint(der: bytes) -> str:
    return hashlib.sha1(der).hexdigest().upper()  # the CSP names certificates by SHA-1


def test_the_provisioning_document_configures_certificates_account_and_polling(
    pki: dict[str, Any],
) -> None:
    credentials = DmCredentials(
        client_name=SAMPLE_DEVICE_ID,
        client_secret="client-secret",
        client_nonce=b"\x01\x02client",
        server_secret="server-secret",
        server_nonce=b"\x03\x04server",
    )

    document = provisioning_doc(
        ca_der=pki["ca_der"],
        device_der=pki["device_der"],
        enrollment_type="Full",
        settings=settings(provider_id="mdmgate", server_name="Contoso MDM"),
        device_id=SAMPLE_DEVICE_ID,
        upn="user@contoso.com",
        credentials=credentials,
    )

    root = ET.fromstring(document)
    assert root.tag == "wap-provisioningdoc"
    assert root.get("version") == "1.1"
    stores = [c for c in root.findall("characteristic") if c.get("type") == "CertificateStore"]
    ca = _characteristic(stores[0], "Root", "System", _thumbprint(pki["ca_der"]))
    assert _parms(ca)["EncodedCertificate"][0] == b64(pki["ca_der"])
    user = _characteristic(stores[1], "My", "User")
    device = _characteristic(user, _thumbprint(pki["device_der"]))
    assert _parms(device)["EncodedCertificate"][0] == b64(pki["device_der"])
    _characteristic(user, "PrivateKeyContainer")
    renew = _parms(_characteristic(stores[1], "My", "WSTEP", "Renew"))
    assert renew["ROBOSupport"] == ("true", "boolean")
    assert renew["RenewPeriod"] == ("42", "integer")
    assert renew["RetryInterval"] == ("4", "integer")
    assert renew["ServerURL"][0] == HTTPS + "/EnrollmentServer/Enrollment.svc"

    application = _characteristic(root, "APPLICATION")
    parms = _parms(application)
    assert parms["APPID"][0] == "w7"
    assert parms["PROVIDER-ID"][0] == "mdmgate"
    assert parms["NAME"][0] == "Contoso MDM"
    assert parms["ADDR"][0] == HTTPS + "/ManagementServer/MDM.svc"
    assert parms["DEFAULTENCODING"][0] == "application/vnd.syncml.dm+xml"
    assert "BACKCOMPATRETRYDISABLED" in parms
    # The subject in the certificate's own RDN order, URI-escaped; the store it was put in.
    assert parms["SSLCLIENTCERTSEARCHCRITERIA"][0] == (
        f"Subject=CN%3D{SAMPLE_DEVICE_ID}%2CO%3DContoso%20%26%20Co&Stores=My%5CUser"
    )
    auths = {
        _parms(a)["AAUTHLEVEL"][0]: _parms(a)
        for a in application.findall("characteristic")
        if a.get("type") == "APPAUTH"
    }
    assert set(auths) == {"CLIENT", "APPSRV"}
    assert auths["CLIENT"]["AAUTHTYPE"][0] == "DIGEST"
    assert auths["CLIENT"]["AAUTHSECRET"][0] == "server-secret"
    assert auths["CLIENT"]["AAUTHDATA"][0] == b64(b"\x03\x04server")
    assert auths["APPSRV"]["AAUTHTYPE"][0] == "DIGEST"
    assert auths["APPSRV"]["AAUTHNAME"][0] == SAMPLE_DEVICE_ID
    assert auths["APPSRV"]["AAUTHSECRET"][0] == "client-secret"
    assert auths["APPSRV"]["AAUTHDATA"][0] == b64(b"\x01\x02client")

    provider = _characteristic(root, "DMClient", "Provider", "mdmgate")
    assert _parms(provider)["EntDMID"] == (SAMPLE_DEVICE_ID, "string")
    assert _parms(provider)["UPN"] == ("user@contoso.com", "string")
    poll = _parms(_characteristic(provider, "Poll"))
    assert poll == {
        "IntervalForFirstSetOfRetries": ("15", "integer"),
        "NumberOfFirstRetries": ("8", "integer"),
        "IntervalForSecondSetOfRetries": ("480", "integer"),
        "NumberOfSecondRetries": ("0", "integer"),
        "IntervalForRemainingScheduledRetries": ("0", "integer"),
        "NumberOfRemainingScheduledRetries": ("0", "integer"),
        "PollOnLogin": ("true", "boolean"),
    }


def test_a_device_enrollment_uses_the_system_stores(pki: dict[str, Any]) -> None:
    document = provisioning_doc(
        ca_der=pki["ca_der"],
        device_der=pki["device_der"],
        enrollment_type="Device",
        settings=settings(encoding="wbxml"),
    )

    root = ET.fromstring(document)
    stores = [c for c in root.findall("characteristic") if c.get("type") == "CertificateStore"]
    system = _characteristic(stores[1], "My", "System")
    _characteristic(system, _thumbprint(pki["device_der"]))
    _characteristic(system, "PrivateKeyContainer")
    parms = _parms(_characteristic(root, "APPLICATION"))
    assert parms["SSLCLIENTCERTSEARCHCRITERIA"][0].endswith("&Stores=My%5CSystem")
    assert parms["DEFAULTENCODING"][0] == "application/vnd.syncml.dm+wbxml"
    # Without credentials given, both levels are still there (MS-MDE2 2.2.9.5 requires them).
    levels = [
        _parms(a)["AAUTHLEVEL"][0]
        for a in _characteristic(root, "APPLICATION").findall("characteristic")
    ]
    assert sorted(levels) == ["APPSRV", "CLIENT"]


def test_the_provisioning_document_escapes_every_value(pki: dict[str, Any]) -> None:
    awkward = "Contoso <MDM> & \"friends\" 'n' ]]>"

    document = provisioning_doc(
        ca_der=pki["ca_der"],
        device_der=pki["device_der"],
        enrollment_type="Full",
        settings=settings(server_name=awkward),
        device_id=awkward,
    )

    root = ET.fromstring(document)
    assert _parms(_characteristic(root, "APPLICATION"))["NAME"][0] == awkward
    provider = _characteristic(root, "DMClient", "Provider", "mdmgate")
    assert _parms(provider)["EntDMID"][0] == awkward


def test_the_renewal_document_carries_only_the_new_certificate(pki: dict[str, Any]) -> None:
    document = renewal_doc(
        device_der=pki["device_der"], enrollment_type="Full", settings=settings()
    )

    root = ET.fromstring(document)
    store = _characteristic(root, "CertificateStore")
    assert [c.get("type") for c in store.findall("characteristic")] == ["My"]
    certificate = _characteristic(store, "My", "User", _thumbprint(pki["device_der"]))
    assert _parms(certificate)["EncodedCertificate"][0] == b64(pki["device_der"])
    _characteristic(certificate, "PrivateKeyContainer")
    assert _parms(_characteristic(root, "APPLICATION")) == {"PROVIDER-ID": ("mdmgate", None)}


def test_provisioning_refuses_an_unknown_enrollment_type(pki: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="enrollment_type"):
        provisioning_doc(
            ca_der=pki["ca_der"],
            device_der=pki["device_der"],
            enrollment_type="AppManagement",
            settings=settings(),
        )


def test_provisioning_refuses_what_is_not_a_certificate(pki: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="device_der"):
        provisioning_doc(
            ca_der=pki["ca_der"],
            device_der=b"not DER",
            enrollment_type="Full",
            settings=settings(),
        )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"server_url": "http://mdm.example.com/x"}, "server_url"),
        ({"renewal_url": "mdm.example.com/x"}, "renewal_url"),
        ({"provider_id": ""}, "provider_id"),
        ({"provider_id": "a/b"}, "provider_id"),
        ({"encoding": "json"}, "encoding"),
        ({"first_retries": 0}, "first_retries"),
        ({"first_interval_minutes": 0}, "first_interval_minutes"),
        ({"remaining_interval_minutes": 600, "second_retries": 5}, "1440"),
        (
            {"second_retries": 0, "remaining_interval_minutes": 1440, "remaining_retries": 0},
            "infinite",
        ),
        ({"renew_period_days": 0}, "renew_period_days"),
        ({"renew_period_days": 10, "renew_retry_days": 11}, "renew_retry_days"),
        ({"server_name": "bell\x07"}, "server_name"),
        ({"first_retries": True}, "first_retries"),
    ],
)
def test_client_settings_refuse_what_a_device_would_reject(
    changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        settings(**changes)


# -- faults


def test_a_soap_fault_is_one_the_device_understands() -> None:
    fault = EnrollmentFault("s:Receiver", "s:Authorization", "This user may not enroll")

    data = soap_fault(fault, relates_to="urn:uuid:0d5a1441-5891-453b-becf-a2e5f6ea3749")

    header, body = envelope(data)
    assert header_value(header, "Action") == "http://www.w3.org/2005/08/addressing/soap/fault"
    assert header_value(header, "RelatesTo") == "urn:uuid:0d5a1441-5891-453b-becf-a2e5f6ea3749"
    code = _one(body, f"{{{S}}}Fault/{{{S}}}Code")
    assert _one(code, f"{{{S}}}Value").text == "s:Receiver"
    assert _one(code, f"{{{S}}}Subcode/{{{S}}}Value").text == "s:Authorization"
    text = _one(body, f"{{{S}}}Fault/{{{S}}}Reason/{{{S}}}Text")
    assert text.text == "This user may not enroll"
    assert text.get(f"{{{XML_NS}}}lang") == "en-US"
    # The QNames in Value are resolved against the envelope's own prefixes.
    assert b'xmlns:s="http://www.w3.org/2003/05/soap-envelope"' in data
    assert fault.http_status == 500


def test_a_soap_fault_can_name_the_action_and_the_error_type() -> None:
    fault = EnrollmentFault(
        "s:Sender", "a:InvalidSecurity", "no credentials", error_type="NotEligibleToRenew"
    )

    data = soap_fault(fault, relates_to=None, action=RSTRC)

    header, body = envelope(data)
    assert header_value(header, "Action") == RSTRC
    assert header.find(f"{{{A}}}RelatesTo") is None
    assert b'xmlns:a="http://www.w3.org/2005/08/addressing"' in data
    detail = _one(body, f"{{{S}}}Fault/{{{S}}}Detail/{{{PKI}}}DeviceEnrollmentServiceError")
    assert _one(detail, f"{{{PKI}}}ErrorType").text == "NotEligibleToRenew"
    assert _one(detail, f"{{{PKI}}}Message").text == "no credentials"
    assert fault.http_status == 400


def test_a_fault_survives_pickling_with_what_the_parser_set(pki: dict[str, Any]) -> None:
    data = rst_onpremise(pki).replace(b64(pki["csr_der"]).encode(), b"not*base64!")
    fault = fault_of(parse_enrollment, data)

    copy = pickle.loads(pickle.dumps(fault))

    assert (copy.code, copy.subcode, copy.message) == (fault.code, fault.subcode, fault.message)
    assert copy.message_id == fault.message_id == "urn:uuid:0d5a1441-5891-453b-becf-a2e5f6ea3749"


@pytest.mark.parametrize(
    ("code", "subcode"), [("s:Client", "s:MessageFormat"), ("s:Sender", "s:Whatever")]
)
def test_a_fault_refuses_codes_the_protocol_does_not_have(code: str, subcode: str) -> None:
    with pytest.raises(ValueError, match="code"):
        EnrollmentFault(code, subcode, "message")


def test_the_content_type_is_soap_12() -> None:
    assert windows.CONTENT_TYPE == "application/soap+xml; charset=utf-8"
