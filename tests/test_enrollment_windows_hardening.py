"""Hardening of the MS-MDE2 parsers: what a hostile or broken client sends gets an
EnrollmentFault naming the problem, never an entity expansion, a crash or silent acceptance.

Example-based tests first (DTDs, missing elements, bad tokens, wrong actions, size and depth
caps, escaping), then property tests: arbitrary bytes; the specification's samples
(tests/data/mde2/) mutated byte by byte; arbitrary and mutated DER inside the base64 request
token; arbitrary text in the fields a device fills in. Each parser must answer with its typed
request or an EnrollmentFault, never another exception, and what it accepts must be what the
spec allows (a real PKCS#10, a MessageID echoed back exactly).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mdmgate.enrollment import windows
from mdmgate.enrollment.windows import (
    EnrollmentFault,
    discover_response,
    parse_discover,
    parse_enrollment,
    parse_get_policies,
    soap_fault,
)
from tests.enrollment_helpers import MDE2_SAMPLES, S, b64, request_security_token, sample
from tests.test_enrollment_windows import (
    HTTPS,
    TOKEN,
    envelope,
    fault_of,
    get_policies_federated,
    get_policies_onpremise,
    header_value,
    material,
    rst_federated,
    rst_onpremise,
    rst_renew,
)

PARSERS: tuple[Callable[[bytes], Any], ...] = (parse_discover, parse_get_policies, parse_enrollment)


@pytest.fixture
def pki() -> dict[str, Any]:
    return material()


# -- hardening

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE s:Envelope [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>&lol9;</s:Body></s:Envelope>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE s:Envelope [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>&secret;</s:Body></s:Envelope>
"""


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["laughs", "external"])
def test_a_document_type_declaration_is_refused_before_expansion(parse: Any, body: bytes) -> None:
    fault = fault_of(parse, body)

    assert fault.subcode == "s:MessageFormat"
    assert fault.code == "s:Sender"
    assert "DTD" in fault.message


def test_a_dtd_after_a_valid_looking_start_is_refused_too() -> None:
    data = (MDE2_SAMPLES / "discover_onpremise.xml").read_bytes()
    data = data.replace(b'<?xml version="1.0"?>', b'<?xml version="1.0"?><!DOCTYPE x>')

    assert "DTD" in fault_of(parse_discover, data).message


def test_unknown_elements_are_ignored() -> None:
    data = sample("discover_onpremise.xml")
    data = data.replace("<s:Header>", '<s:Header><x:Trace xmlns:x="urn:x">1</x:Trace>')
    data = data.replace("<AuthPolicies>", "<FutureThing>a</FutureThing><AuthPolicies>")
    data = data.replace(
        "</request>", '<EmailAddress xmlns="urn:other">not@this.one</EmailAddress></request>'
    )

    request = parse_discover(data.encode())

    assert request.email == "user@contoso.com"
    assert request.auth_policies == ("OnPremise",)


@pytest.mark.parametrize(
    ("message", "element"),
    [
        ("discover", "a:MessageID"),
        ("discover", "a:Action"),
        ("discover", "EmailAddress"),
        ("discover", "RequestVersion"),
        ("policies", "GetPolicies"),
        ("rst", "wst:RequestType"),
        ("rst", "wst:TokenType"),
        ("rst", "wsse:BinarySecurityToken"),
        ("rst", "ac:AdditionalContext"),
    ],
)
def test_a_missing_required_element_is_named(
    pki: dict[str, Any], message: str, element: str
) -> None:
    text = {
        "discover": sample("discover_onpremise.xml"),
        "policies": get_policies_onpremise().decode(),
        "rst": rst_onpremise(pki).decode(),
    }[message]
    parse = {"discover": parse_discover, "policies": parse_get_policies, "rst": parse_enrollment}
    removed, count = re.subn(rf"<{element}\b[^>]*>.*?</{element}>", "", text, count=1, flags=re.S)
    assert count == 1
    fault = fault_of(parse[message], removed.encode())

    assert fault.subcode == "s:MessageFormat"
    assert element.rsplit(":", maxsplit=1)[-1] in fault.message


def test_a_binary_security_token_that_is_not_base64_is_named(pki: dict[str, Any]) -> None:
    data = rst_onpremise(pki).replace(b64(pki["csr_der"]).encode(), b"not*base64!")

    fault = fault_of(parse_enrollment, data)

    assert fault.subcode == "s:MessageFormat"
    assert "BinarySecurityToken" in fault.message
    assert fault.message_id == "urn:uuid:0d5a1441-5891-453b-becf-a2e5f6ea3749"


@pytest.mark.parametrize("content", [b"\x30\x03\x02\x01\x01", b"plain bytes", b""])
def test_a_binary_security_token_that_is_not_a_request_is_named(content: bytes) -> None:
    fault = fault_of(parse_enrollment, request_security_token(TOKEN, content))

    assert fault.subcode in ("s:CertificateRequest", "s:MessageFormat")
    assert "PKCS#10" in fault.message


def test_a_renewal_whose_pkcs7_is_not_one_is_named(pki: dict[str, Any]) -> None:
    fault = fault_of(parse_enrollment, rst_renew(pki, pki["renewal_csr"]))

    assert fault.subcode == "s:CertificateRequest"
    assert "PKCS#7" in fault.message


def test_an_issue_request_must_carry_a_pkcs10(pki: dict[str, Any]) -> None:
    data = rst_onpremise(pki).replace(b"enrollment#PKCS10", b"enrollment#PKCS7")

    fault = fault_of(parse_enrollment, data)

    assert "PKCS10" in fault.message


@pytest.mark.parametrize(
    ("parse", "file", "expected"),
    [
        (parse_discover, "get_policies_onpremise.xml", "IDiscoveryService/Discover"),
        (parse_get_policies, "discover_onpremise.xml", "IPolicy/GetPolicies"),
        (parse_enrollment, "discover_onpremise.xml", "RST/wstep"),
    ],
)
def test_the_wrong_action_names_the_one_expected(parse: Any, file: str, expected: str) -> None:
    fault = fault_of(parse, (MDE2_SAMPLES / file).read_bytes())

    assert fault.subcode == "s:MessageFormat"
    assert expected in fault.message


@pytest.mark.parametrize("parse", [parse_get_policies, parse_enrollment])
def test_a_request_without_credentials_is_an_invalid_security_header(
    pki: dict[str, Any], parse: Any
) -> None:
    data = get_policies_onpremise() if parse is parse_get_policies else rst_onpremise(pki)
    text = data.decode()
    start, end = text.index("<wsse:Security"), text.index("</wsse:Security>")
    data = (text[:start] + text[end + len("</wsse:Security>") :]).encode()

    fault = fault_of(parse, data)

    assert fault.subcode == "a:InvalidSecurity"


def test_a_soap_11_envelope_is_refused() -> None:
    data = (MDE2_SAMPLES / "discover_onpremise.xml").read_bytes()
    data = data.replace(S.encode(), b"http://schemas.xmlsoap.org/soap/envelope/")

    fault = fault_of(parse_discover, data)

    assert "SOAP 1.2" in fault.message


@pytest.mark.parametrize(
    "body", [b"", b"not xml", b"<a>", "<a>\u00e9</a>".encode("latin-1"), b"\x00" * 16]
)
def test_bytes_that_are_not_xml_are_a_message_format_fault(body: bytes) -> None:
    fault = fault_of(parse_discover, body)

    assert fault.subcode == "s:MessageFormat"


def test_a_message_over_the_size_cap_is_refused_unread() -> None:
    data = b"<x>" + b" " * (windows.MAX_MESSAGE_BYTES + 1) + b"</x>"

    assert "bytes" in fault_of(parse_discover, data).message


def test_deep_nesting_is_refused() -> None:
    data = b"<a>" * 1000 + b"</a>" * 1000

    assert "deep" in fault_of(parse_discover, data).message


def test_an_echoed_message_id_is_escaped_and_read_back_exactly() -> None:
    odd = "urn:uuid:<evil attr=\"1\"> & ]]> 'quoted'"
    escaped = odd.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = sample("discover_onpremise.xml").replace(
        "urn:uuid: 748132ec-a575-4329-b01b-6171a9cf8478", escaped
    )
    request = parse_discover(text.encode())
    assert request.message_id == odd

    for answer in (
        discover_response(
            request,
            auth_policy="OnPremise",
            policy_url=HTTPS + "/p",
            enrollment_url=HTTPS + "/e",
        ),
        soap_fault(EnrollmentFault("s:Sender", "s:MessageFormat", odd), relates_to=odd),
    ):
        header, _ = envelope(answer)
        assert header_value(header, "RelatesTo") == odd


# -- properties

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def samples() -> list[bytes]:
    pki = material()
    return [
        (MDE2_SAMPLES / "discover_onpremise.xml").read_bytes(),
        (MDE2_SAMPLES / "discover_federated.xml").read_bytes(),
        get_policies_onpremise(),
        get_policies_federated(),
        rst_onpremise(pki),
        rst_federated(pki),
        rst_renew(pki),
    ]


def answer(parse: Callable[[bytes], Any], data: bytes) -> Any:
    """What ``parse`` makes of ``data``: its request, or ``None`` for a fault, which must be
    a well-formed one. Any other exception fails the test."""
    try:
        request = parse(data)
    except EnrollmentFault as fault:
        event(f"{parse.__name__}: {fault.subcode}")
        assert fault.code in ("s:Sender", "s:Receiver")
        assert fault.message
        ET.fromstring(soap_fault(fault, relates_to=fault.message_id))
        return None
    event(f"{parse.__name__}: request")
    return request


@st.composite
def mutated(draw: st.DrawFn, sources: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(sources)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        edit = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "repeat"]))
        if edit == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_get_a_request_or_a_fault(data: bytes) -> None:
    for parse in PARSERS:
        assert answer(parse, data) is None


@FUZZ
@given(mutated(samples()))
def test_mutated_sample_messages_get_a_request_or_a_fault(data: bytes) -> None:
    for parse in PARSERS:
        answer(parse, data)


def _der_sources() -> list[bytes]:
    pki = material()
    return [pki["csr_der"], pki["renewal_pkcs7"], pki["device_der"], pki["renewal_csr"]]


@FUZZ
@given(
    st.one_of(st.binary(max_size=1024), mutated(_der_sources())),
    st.sampled_from(["issue", "renew"]),
)
def test_any_token_content_gets_a_request_with_a_real_pkcs10_or_a_fault(
    content: bytes, kind: str
) -> None:
    if kind == "issue":
        data = request_security_token(TOKEN, content)
    else:
        data = rst_renew(material(), content)

    request = answer(parse_enrollment, data)

    if request is not None:
        x509.load_der_x509_csr(request.csr_der)


# Where a device fills in text: (message, what the sample has there, the same with {} for it).
FIELDS = [
    ("discover", "<OSEdition>3</OSEdition>", "<OSEdition>{}</OSEdition>"),
    ("discover", "<RequestVersion>3.0</RequestVersion>", "<RequestVersion>{}</RequestVersion>"),
    ("discover", "<EmailAddress>user@contoso.com<", "<EmailAddress>{}<"),
    ("discover", "<AuthPolicy>OnPremise<", "<AuthPolicy>{}<"),
    ("rst", "urn:uuid:0d5a1441-5891-453b-becf-a2e5f6ea3749", "{}"),
    ("rst", "ws-trust/200512/Issue</wst:RequestType>", "{}</wst:RequestType>"),
    ("rst", 'Name="DeviceID"', 'Name="{}"'),
    ("rst", "<ac:Value>Full</ac:Value>", "<ac:Value>{}</ac:Value>"),
    ("rst", "<wsse:Username>user@contoso.com<", "<wsse:Username>{}<"),
]
NEAR_VALID = st.from_regex(r"[ 0-9a-zA-Z.:@_\-]{0,16}", fullmatch=True)
# Decimal digits of every script: "\u0663" is a digit to Python, not to MS-MDE2.
ANY_DIGITS = st.text(st.characters(categories=["Nd"]), min_size=1, max_size=3)


@FUZZ
@given(st.sampled_from(FIELDS), st.one_of(st.text(max_size=80), NEAR_VALID, ANY_DIGITS))
def test_any_text_in_a_field_gets_a_request_or_a_fault(
    where: tuple[str, str, str], text: str
) -> None:
    message, original, template = where
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    if message == "discover":
        data, parse = (
            sample("discover_onpremise.xml"),
            parse_discover,
        )
    else:
        data, parse = rst_onpremise(material()).decode(), parse_enrollment
    data = data.replace(original, template.format(escaped), 1)

    request = answer(parse, data.encode("utf-8", "surrogatepass"))

    # XML reads every line break as \n; layout whitespace around the value is not in it.
    value = text.replace("\r\n", "\n").replace("\r", "\n").strip(" \t\n")
    if request is not None and original.startswith("<OSEdition>"):
        assert value.isascii()
        assert request.os_edition == int(value)
    if request is not None and original.startswith("<RequestVersion>"):
        assert request.request_version == value
        assert value.replace(".", "", 1).isascii()
    if request is not None and original.startswith("urn:uuid:"):
        assert request.message_id == value


@FUZZ
@given(st.text(max_size=80))
def test_any_message_id_accepted_is_echoed_back_exactly(text: str) -> None:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;")
    data = sample("discover_onpremise.xml")
    data = data.replace("urn:uuid: 748132ec-a575-4329-b01b-6171a9cf8478", escaped)

    request = answer(parse_discover, data.encode("utf-8", "surrogatepass"))

    if request is not None:
        reply = discover_response(
            request, auth_policy="OnPremise", policy_url=HTTPS + "/p", enrollment_url=HTTPS + "/e"
        )
        relates_to = ET.fromstring(reply).find(
            "{http://www.w3.org/2003/05/soap-envelope}Header/"
            "{http://www.w3.org/2005/08/addressing}RelatesTo"
        )
        assert relates_to is not None
        assert relates_to.text == request.message_id


def test_the_unmutated_samples_are_all_accepted() -> None:
    # The mutations start from messages that parse: the property tests exercise the parsers,
    # not only their first refusal.
    kinds = [parse_discover] * 2 + [parse_get_policies] * 2 + [parse_enrollment] * 3
    for parse, data in zip(kinds, samples(), strict=True):
        parse(data)
    # The request the mutations start from carries a real PKCS#10, not the placeholder.
    assert parse_enrollment(samples()[4]).csr_der == material()["csr_der"]
