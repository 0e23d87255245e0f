"""Windows enrollment over [MS-MDE2] as pure functions: bytes in, typed request out; typed
values in, response bytes out. No sockets, no storage, no certificate issuing.

A device enrolls in three SOAP 1.2 exchanges, every body of type :data:`CONTENT_TYPE`:
discovery (:func:`parse_discover`, :func:`discover_response`: where the next two are),
enrollment policy, [MS-XCEP] GetPolicies (:func:`parse_get_policies`,
:func:`policies_response`: the key size and hash of its certificate request) and enrollment,
[MS-WSTEP] RequestSecurityToken (:func:`parse_enrollment`, a first certificate or a renewal,
answered by :func:`enrollment_response` with the document of :func:`provisioning_doc`, or of
:func:`renewal_doc`, that installs the certificates and configures the OMA-DM client). A
request the server will not serve is answered with :func:`soap_fault`.

Bodies are read namespace-aware by expat, as UTF-8, at most :data:`MAX_MESSAGE_BYTES` and 32
levels deep; a document type declaration is refused as it starts, so no entity is ever
defined, expanded or fetched. Unknown elements are ignored. Responses are produced by an XML
writer, which escapes every value, echoed ones included.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import BytesIO
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import quote, urlsplit
from xml.parsers import expat
from xml.sax.saxutils import XMLGenerator
from xml.sax.xmlreader import AttributesNSImpl

from asn1crypto import cms as asn1_cms  # type: ignore[import-untyped]
from cryptography import x509

from mdmgate.enrollment import cms
from mdmgate.errors import MdmgateError

__all__ = [
    "CONTENT_TYPE",
    "DISCOVER_ACTION",
    "DISCOVER_RESPONSE_ACTION",
    "FAULT_ACTION",
    "GET_POLICIES_ACTION",
    "GET_POLICIES_RESPONSE_ACTION",
    "MAX_MESSAGE_BYTES",
    "RSTRC_ACTION",
    "RST_ACTION",
    "SHA256_OID",
    "DiscoverRequest",
    "DmClientSettings",
    "DmCredentials",
    "EnrollmentFault",
    "EnrollmentRequest",
    "PolicyRequest",
    "discover_response",
    "enrollment_response",
    "parse_discover",
    "parse_enrollment",
    "parse_get_policies",
    "policies_response",
    "provisioning_doc",
    "renewal_doc",
    "soap_fault",
]

CONTENT_TYPE = "application/soap+xml; charset=utf-8"
#: Larger bodies are refused unread: the largest real request, an enrollment carrying
#: attestation claims, is a few kilobytes.
MAX_MESSAGE_BYTES = 256 * 1024
_MAX_DEPTH = 32

_SOAP = "http://www.w3.org/2003/05/soap-envelope"
_SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
_ADDRESSING = "http://www.w3.org/2005/08/addressing"
_DISCOVERY = "http://schemas.microsoft.com/windows/management/2012/01/enrollment"
_XCEP = "http://schemas.microsoft.com/windows/pki/2009/01/enrollmentpolicy"
_TRUST = "http://docs.oasis-open.org/ws-sx/ws-trust/200512"
_SECEXT = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
_UTILITY = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_AUTHORIZATION = "http://schemas.xmlsoap.org/ws/2006/12/authorization"
_PKI = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"

DISCOVER_ACTION = _DISCOVERY + "/IDiscoveryService/Discover"
DISCOVER_RESPONSE_ACTION = _DISCOVERY + "/IDiscoveryService/DiscoverResponse"
GET_POLICIES_ACTION = _XCEP + "/IPolicy/GetPolicies"
GET_POLICIES_RESPONSE_ACTION = _XCEP + "/IPolicy/GetPoliciesResponse"
RST_ACTION = _PKI + "/RST/wstep"
RSTRC_ACTION = _PKI + "/RSTRC/wstep"
#: WS-Addressing's fault action (MS-MDE2's own sample fault uses the response's action).
FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"

_CONFIG_MANAGER = "http://schemas.microsoft.com/5.0.0.0/ConfigurationManager/Enrollment/"
_USER_TOKEN = _CONFIG_MANAGER + "DeviceEnrollmentUserToken"
_ENROLLMENT_TOKEN = _CONFIG_MANAGER + "DeviceEnrollmentToken"
_PROVISION_DOC = _CONFIG_MANAGER + "DeviceEnrollmentProvisionDoc"
_BASE64 = _SECEXT + "#base64binary"
_PASSWORD_TEXT = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordText"
)
_PKCS10 = _PKI + "#PKCS10"
# MS-MDE2 3.5.4.1.1.1 names the first; MS-MDE (version 1) the second.
_PKCS7 = (_SECEXT + "#PKCS7", _PKI + "#PKCS7")
_REQUEST_TYPES: dict[str, Literal["issue", "renew"]] = {
    _TRUST + "/Issue": "issue",
    _TRUST + "/Renew": "renew",
}

#: SHA-256, what policies ask certificate requests to be hashed with unless told otherwise.
SHA256_OID = "2.16.840.1.101.3.4.2.1"
_HASH_NAMES = {
    "1.3.14.3.2.26": "szOID_OIWSEC_sha1",
    SHA256_OID: "szOID_NIST_sha256",
    "2.16.840.1.101.3.4.2.2": "szOID_NIST_sha384",
    "2.16.840.1.101.3.4.2.3": "szOID_NIST_sha512",
}
# MS-MDE2 3.1.4.1.3.2: 4.0 needs Windows 10 1703; 5.0 and later add TPM attestation.
_ENROLLMENT_VERSIONS = ("3.0", "4.0", "5.0", "6.0", "7.0")
_FAULT_SUBCODES = (
    *("s:MessageFormat", "s:Authentication", "s:Authorization", "s:CertificateRequest"),
    *("s:EnrollmentServer", "a:InternalServiceFault", "a:InvalidSecurity"),
)
# MS-MDE2 2.2.10: what a DeviceEnrollmentServiceError detail may name.
_ERROR_TYPES = (
    *("DeviceCapReached", "DeviceNotSupported", "NotSupported", "NotEligibleToRenew"),
    *("InMaintenance", "UserLicense", "InvalidEnrollmentData", "CustomServerError"),
)


class EnrollmentFault(MdmgateError):
    """A refusal the device understands: a SOAP 1.2 fault with ``code`` ``s:Sender`` (the
    request is at fault) or ``s:Receiver`` (the server is), an MS-MDE2 2.2.10 ``subcode``
    (``s:MessageFormat``, ``s:Authentication``, ``s:Authorization``, ``s:CertificateRequest``,
    ``s:EnrollmentServer``, ``a:InternalServiceFault``, ``a:InvalidSecurity``) and a
    ``message`` naming the problem; ``error_type`` adds a DeviceEnrollmentServiceError detail
    (e.g. ``NotEligibleToRenew``). Parsers set ``message_id`` once they have read the
    request's MessageID: the fault answers it."""

    def __init__(
        self, code: str, subcode: str, message: str, *, error_type: str | None = None
    ) -> None:
        if code not in ("s:Sender", "s:Receiver"):
            raise ValueError(f"fault code must be s:Sender or s:Receiver, not {code!r}")
        if subcode not in _FAULT_SUBCODES:
            raise ValueError(f"fault subcode {subcode!r} is not one of MS-MDE2's")
        if error_type is not None and error_type not in _ERROR_TYPES:
            raise ValueError(f"fault error_type {error_type!r} is not one of MS-MDE2's")
        super().__init__(message)
        self.code, self.subcode, self.message = code, subcode, message
        self.error_type = error_type
        self.message_id: str | None = None

    def __str__(self) -> str:
        return f"{self.subcode}: {self.message}"

    def __reduce__(self) -> tuple[type[EnrollmentFault], tuple[str, str, str], dict[str, Any]]:
        state = {"error_type": self.error_type, "message_id": self.message_id}
        return (type(self), (self.code, self.subcode, self.message), state)

    @property
    def http_status(self) -> int:
        """The status to send the fault with (SOAP 1.2 HTTP binding): 400 for the sender's
        faults, 500 for the receiver's."""
        return 400 if self.code == "s:Sender" else 500


def _refused(message: str, subcode: str = "s:MessageFormat") -> EnrollmentFault:
    return EnrollmentFault("s:Sender", subcode, message)


# -- reading untrusted XML

# How missing elements are named in faults.
_SHOWN = {_SOAP: "s:", _ADDRESSING: "a:", _TRUST: "wst:", _SECEXT: "wsse:"}


class _Element:
    """A parsed element: namespace, local name, attributes (``"namespace name"`` or
    ``name``), child elements and its own character data."""

    __slots__ = ("attributes", "children", "name", "namespace", "parts")

    def __init__(self, namespace: str, name: str, attributes: dict[str, str]) -> None:
        self.namespace, self.name, self.attributes = namespace, name, attributes
        self.children: list[_Element] = []
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        """Its own character data without the XML whitespace around it (layout)."""
        return "".join(self.parts).strip(" \t\r\n")

    def all(self, namespace: str, name: str) -> list[_Element]:
        return [c for c in self.children if c.name == name and c.namespace == namespace]

    def find(self, namespace: str, name: str) -> _Element | None:
        return next(iter(self.all(namespace, name)), None)

    def need(self, namespace: str, name: str) -> _Element:
        found = self.find(namespace, name)
        if found is None:
            shown = _SHOWN.get(namespace, "") + name
            raise _refused(f"the request has no {shown} element (in {self.name})")
        return found

    def attribute(self, name: str) -> str | None:
        """An attribute, unqualified or wsse-qualified (devices send both)."""
        return self.attributes.get(name, self.attributes.get(f"{_SECEXT} {name}"))


def _read(body: bytes) -> _Element:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"an enrollment message is bytes, not {type(body).__name__}")
    if len(body) > MAX_MESSAGE_BYTES:
        raise _refused(f"the message is {len(body)} bytes; at most {MAX_MESSAGE_BYTES} are read")
    # UTF-8 whatever the declaration says: the content type says so, and no codec is looked up.
    parser = expat.ParserCreate("utf-8", " ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    stack: list[_Element] = []
    roots: list[_Element] = []

    def start(name: str, attributes: dict[str, str]) -> None:
        if len(stack) >= _MAX_DEPTH:
            raise _refused(f"elements are nested deeper than {_MAX_DEPTH} levels")
        namespace, _, local = name.rpartition(" ")
        element = _Element(namespace, local, attributes)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def characters(data: str) -> None:
        if stack:
            stack[-1].parts.append(data)

    def document_type(*_: object) -> None:
        raise _refused("a DTD (<!DOCTYPE ...>) is not accepted: enrollment messages have none")

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _name: stack.pop()
    parser.CharacterDataHandler = characters
    parser.StartDoctypeDeclHandler = document_type
    parser.EntityDeclHandler = document_type
    try:
        parser.Parse(bytes(body), True)
    except (expat.ExpatError, ValueError, LookupError) as exc:
        raise _refused(f"the message is not well-formed UTF-8 XML: {exc}") from None
    return roots[0]


_T = TypeVar("_T")


def _parse(body: bytes, action: str, build: Callable[[_Element, _Element, str], _T]) -> _T:
    """Opens a SOAP 1.2 envelope, checks its action and hands header, body and MessageID to
    ``build``; every fault from then on answers the MessageID."""
    root = _read(body)
    if (root.namespace, root.name) == (_SOAP11, "Envelope"):
        raise _refused(f"the envelope is SOAP 1.1; Windows enrollment speaks SOAP 1.2 ({_SOAP})")
    if (root.namespace, root.name) != (_SOAP, "Envelope"):
        raise _refused(f"the message is not a SOAP 1.2 s:Envelope but {root.name!r}")
    header = root.need(_SOAP, "Header")
    message_id = header.need(_ADDRESSING, "MessageID").text
    if not message_id:
        raise _refused("the a:MessageID is empty")
    try:
        given = header.need(_ADDRESSING, "Action").text
        if given != action:
            raise _refused(f"the a:Action is {given!r}; this endpoint takes {action}")
        return build(header, root.need(_SOAP, "Body"), message_id)
    except EnrollmentFault as fault:
        fault.message_id = message_id
        raise


def _base64(text: str, what: str, subcode: str = "s:MessageFormat") -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _refused(f"the {what} is not base64", subcode) from None


def _credentials(header: _Element, *, required: bool) -> tuple[str | None, ...]:
    """(username, password, token) from wsse:Security: a UsernameToken (OnPremise) or a
    DeviceEnrollmentUserToken (Federated: the device base64-encodes the token it was given)."""
    security = header.find(_SECEXT, "Security") or _Element("", "", {})
    account = security.find(_SECEXT, "UsernameToken")
    if account is not None:
        password = account.find(_SECEXT, "Password") or _Element("", "", {})
        if password.attribute("Type") not in (None, _PASSWORD_TEXT):
            raise _refused("a wsse:Password that is not PasswordText", "a:InvalidSecurity")
        return account.need(_SECEXT, "Username").text, password.text, None
    for token in security.all(_SECEXT, "BinarySecurityToken"):
        if token.attribute("ValueType") == _USER_TOKEN:
            raw = _base64(token.text, "wsse:BinarySecurityToken", "a:InvalidSecurity")
            try:
                return None, None, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _refused("the user token is not UTF-8 text", "a:InvalidSecurity") from None
    if required:
        raise _refused(
            "the wsse:Security header carries neither a UsernameToken nor a BinarySecurityToken"
            " of ValueType DeviceEnrollmentUserToken",
            "a:InvalidSecurity",
        )
    return None, None, None


# -- discovery


@dataclass(frozen=True)
class DiscoverRequest:
    """A Discover request (MS-MDE2 3.1.4.1.3.1); ``request_version`` is the enrollment
    version the device speaks (``"1.0"`` to ``"7.0"``). Windows 10 and later send every
    field; ``None`` (and no ``auth_policies``) only from older clients."""

    message_id: str
    email: str
    request_version: str
    device_type: str | None
    application_version: str | None
    os_edition: int | None
    auth_policies: tuple[str, ...]


def parse_discover(body: bytes) -> DiscoverRequest:
    """Reads a Discover request (its namespace with or without the trailing slash MS-MDE2's
    own samples have); :class:`EnrollmentFault` ``s:MessageFormat`` names what is wrong."""

    def build(_header: _Element, body: _Element, message_id: str) -> DiscoverRequest:
        discover = body.find(_DISCOVERY, "Discover") or body.find(_DISCOVERY + "/", "Discover")
        if discover is None:
            raise _refused("the request has no Discover element (in Body)")
        ns = discover.namespace
        request = discover.need(ns, "request")
        version = request.need(ns, "RequestVersion").text
        if not re.fullmatch(r"[0-9]{1,2}(\.[0-9]{1,2})?", version):
            raise _refused(f"the RequestVersion {version!r} is not a version such as 4.0")
        edition = _optional(request, ns, "OSEdition")
        if edition is not None and not re.fullmatch(r"[0-9]{1,9}", edition):
            raise _refused(f"the OSEdition {edition!r} is not an unsigned integer")
        policies = request.find(ns, "AuthPolicies") or _Element("", "", {})
        return DiscoverRequest(
            message_id=message_id,
            email=request.need(ns, "EmailAddress").text,
            request_version=version,
            device_type=_optional(request, ns, "DeviceType"),
            application_version=_optional(request, ns, "ApplicationVersion"),
            os_edition=None if edition is None else int(edition),
            auth_policies=tuple(p.text for p in policies.all(ns, "AuthPolicy") if p.text),
        )

    return _parse(body, DISCOVER_ACTION, build)


def _optional(parent: _Element, namespace: str, name: str) -> str | None:
    found = parent.find(namespace, name)
    return None if found is None else found.text


def discover_response(
    req: DiscoverRequest,
    *,
    auth_policy: Literal["OnPremise", "Federated"],
    policy_url: str,
    enrollment_url: str,
    authentication_url: str | None = None,
    enrollment_version: str = "4.0",
) -> bytes:
    """The DiscoverResponse naming the policy and enrollment services (https, on one host:
    Windows requires it) and, for ``Federated``, the https page that hands the device its
    token (``authentication_url``). The EnrollmentVersion is ``enrollment_version`` (4.0:
    every Windows 10 since 1703 speaks it; 5.0 and later only add TPM attestation, which is
    not checked here) or the device's RequestVersion if lower, none for clients before 3.0.

    :class:`EnrollmentFault` ``s:Authentication`` when the device does not offer
    ``auth_policy``; ``ValueError`` names a parameter a device cannot use."""
    if auth_policy not in ("OnPremise", "Federated"):
        raise ValueError(f"auth_policy must be OnPremise or Federated, not {auth_policy!r}")
    if _https(enrollment_url, "enrollment_url") != _https(policy_url, "policy_url"):
        raise ValueError("policy_url and enrollment_url must be on the same host")
    if (auth_policy == "Federated") != (authentication_url is not None):
        raise ValueError("authentication_url is needed for Federated, and only for it")
    if authentication_url is not None:
        _https(authentication_url, "authentication_url")
    if enrollment_version not in _ENROLLMENT_VERSIONS:
        raise ValueError(f"enrollment_version must be one of {', '.join(_ENROLLMENT_VERSIONS)}")
    offered = req.auth_policies or ("OnPremise",)  # all that clients before AuthPolicies knew
    if auth_policy not in offered:
        fault = EnrollmentFault(
            "s:Sender",
            "s:Authentication",
            f"the device offers {', '.join(offered)}; this server enrolls with {auth_policy}",
        )
        fault.message_id = req.message_id
        raise fault
    ceiling = min(Decimal(enrollment_version), Decimal(req.request_version))
    versions = [v for v in _ENROLLMENT_VERSIONS if Decimal(v) <= ceiling]
    result = [
        _x("AuthPolicy", auth_policy),
        *[_x("EnrollmentVersion", v) for v in versions[-1:]],
        _x("EnrollmentPolicyServiceUrl", policy_url),
        _x("EnrollmentServiceUrl", enrollment_url),
        *[_x("AuthenticationServiceUrl", url) for url in (authentication_url,) if url],
    ]
    answer = _x("DiscoverResponse", [_x("DiscoverResult", result)], {"xmlns": _DISCOVERY})
    return _soap(DISCOVER_RESPONSE_ACTION, req.message_id, [answer])


def _https(url: str, name: str) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme != "https" or not parts.hostname or _XML_BAD.search(url):
        raise ValueError(f"{name} must be an https:// URL, not {url!r}")
    return parts.hostname


# -- enrollment policy


@dataclass(frozen=True)
class PolicyRequest:
    """A GetPolicies request (MS-MDE2 3.3.4.1.1.1) with the caller's credentials: OnPremise
    ``username`` and ``password``, or Federated ``security_token`` (the token the
    authentication page handed the device), the others ``None``."""

    message_id: str
    username: str | None
    password: str | None
    security_token: str | None


def parse_get_policies(body: bytes) -> PolicyRequest:
    """Reads a GetPolicies request. :class:`EnrollmentFault` ``s:MessageFormat`` names a
    missing element or the wrong action; ``a:InvalidSecurity``: no credentials read here."""

    def build(header: _Element, body: _Element, message_id: str) -> PolicyRequest:
        body.need(_XCEP, "GetPolicies")
        return PolicyRequest(message_id, *_credentials(header, required=True))

    return _parse(body, GET_POLICIES_ACTION, build)


def policies_response(
    req: PolicyRequest,
    *,
    min_key_bits: int,
    hash_algorithm_oid: str = SHA256_OID,
    validity_days: int = 365,
    renewal_days: int = 42,
) -> bytes:
    """The GetPoliciesResponse: one policy (schema 3) asking for an RSA key of at least
    ``min_key_bits`` and a request hashed with ``hash_algorithm_oid`` (SHA-1/256/384/512),
    referenced as MS-MDE2 3.3.4.1.1.2 requires: an OID of group 1, the hash algorithms.
    ``validity_days``/``renewal_days`` tell the device the certificate's life and renewal
    window (the CA decides the real ones). ``ValueError`` names an unusable parameter."""
    for name, number in (("min_key_bits", min_key_bits), ("validity_days", validity_days)):
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError(f"{name} must be a whole number")
    if not 2048 <= min_key_bits <= 16384:
        raise ValueError("min_key_bits must be from 2048 to 16384")
    if hash_algorithm_oid not in _HASH_NAMES:
        raise ValueError(f"hash_algorithm_oid {hash_algorithm_oid!r} is not SHA-1/256/384/512")
    if isinstance(renewal_days, bool) or not isinstance(renewal_days, int):
        raise ValueError("renewal_days must be a whole number")
    if not 1 <= renewal_days < validity_days:
        raise ValueError("renewal_days must be at least 1 and under validity_days")
    seconds = {"validityPeriodSeconds": validity_days, "renewalPeriodSeconds": renewal_days}
    key = [_x("minimalKeyLength", str(min_key_bits))]
    key += _nils("keySpec keyUsageProperty permissions algorithmOIDReference cryptoProviders")
    attributes = [
        _x("commonName", "mdmgate device"),
        _x("policySchema", "3"),
        _x("certificateValidity", [_x(k, str(v * 86400)) for k, v in seconds.items()]),
        _x("permission", [_x("enroll", "true"), _x("autoEnroll", "false")]),
        _x("privateKeyAttributes", key),
        _x("revision", [_x("majorRevision", "101"), _x("minorRevision", "0")]),
        *_nils("supersededPolicies privateKeyFlags subjectNameFlags enrollmentFlags generalFlags"),
        _x("hashAlgorithmOIDReference", "0"),
        *_nils("rARequirements keyArchivalAttributes extensions"),
    ]
    policy = [_x("policyOIDReference", "0"), *_nils("cAs"), _x("attributes", attributes)]
    response = [
        _x("policyID", ""),
        *_nils("policyFriendlyName nextUpdateHours policiesNotChanged"),
        _x("policies", [_x("policy", policy)]),
    ]
    oid = [
        _x("value", hash_algorithm_oid),
        _x("group", "1"),
        _x("oIDReferenceID", "0"),
        _x("defaultName", _HASH_NAMES[hash_algorithm_oid]),
    ]
    answer = [_x("response", response), *_nils("cAs"), _x("oIDs", [_x("oID", oid)])]
    body = _x("GetPoliciesResponse", answer, {"xmlns": _XCEP})
    return _soap(GET_POLICIES_RESPONSE_ACTION, req.message_id, [body])


def _nils(names: str) -> list[_Node]:
    return [_x(name, None, {"xsi:nil": "true"}) for name in names.split()]


# -- enrollment


@dataclass(frozen=True)
class EnrollmentRequest:
    """A RequestSecurityToken (MS-MDE2 3.4.4.1.1.1; renewal 3.5.4.1.1.1).

    ``request_type`` ``"issue"``: a first certificate, with credentials as in
    :class:`PolicyRequest`; ``"renew"``: the device authenticates with TLS and its current
    certificate (header credentials, if any, are passed on). ``csr_der`` is the PKCS#10
    request (DER), for a renewal the one inside the PKCS#7. ``signer_certificate_der`` is the
    certificate whose key signed that PKCS#7: its signature is verified (a renewal whose
    signature does not verify is refused), its chain is not, so the service still checks it
    is a certificate it issued; ``None`` when the PKCS#7 carries no certificate. ``context``
    maps each AdditionalContext item to its value (the first of a repeated name such as
    ``MAC``); ``context_items`` has them all, in order."""

    message_id: str
    request_type: Literal["issue", "renew"]
    username: str | None
    password: str | None
    security_token: str | None
    csr_der: bytes
    signer_certificate_der: bytes | None
    context: Mapping[str, str]
    context_items: tuple[tuple[str, str], ...] = ()

    @property
    def device_id(self) -> str | None:
        """The device's identifier (context ``DeviceID``)."""
        return self.context.get("DeviceID")

    @property
    def hw_dev_id(self) -> str | None:
        """The hardware identifier, 64 hex digits (context ``HWDevID``)."""
        return self.context.get("HWDevID")

    @property
    def enrollment_type(self) -> Literal["Full", "Device"]:
        """``Full`` (a user's enrollment: the certificate goes to the user's store) or
        ``Device`` (the machine's); ``Full`` when the device sends none, as older ones did."""
        return "Device" if self.context.get("EnrollmentType", "").lower() == "device" else "Full"


def parse_enrollment(body: bytes) -> EnrollmentRequest:
    """Reads a RequestSecurityToken, first issue or renewal. :class:`EnrollmentFault`
    ``s:MessageFormat`` names a missing or wrong element, a token that is not base64 or of
    the wrong ValueType; ``s:CertificateRequest``: the token is not a PKCS#10 (issue) or a
    PKCS#7 SignedData holding one (renewal); ``a:InvalidSecurity``: an issue request without
    credentials."""

    def build(header: _Element, body: _Element, message_id: str) -> EnrollmentRequest:
        request = body.need(_TRUST, "RequestSecurityToken")
        token_type = request.need(_TRUST, "TokenType").text
        if token_type != _ENROLLMENT_TOKEN:
            raise _refused(f"the wst:TokenType is {token_type!r}, not {_ENROLLMENT_TOKEN}")
        given = request.need(_TRUST, "RequestType").text
        kind = _REQUEST_TYPES.get(given)
        if kind is None:
            raise _refused(f"the wst:RequestType {given!r} is not served (Issue or Renew)")
        token = request.need(_SECEXT, "BinarySecurityToken")
        if token.attribute("EncodingType") not in (None, _BASE64):
            raise _refused("the wsse:BinarySecurityToken EncodingType is not base64binary")
        data = _base64(token.text, "wsse:BinarySecurityToken")
        value_type, signer = token.attribute("ValueType"), None
        if kind == "issue" and value_type != _PKCS10:
            raise _refused(f"an Issue request's token must be of ValueType {_PKCS10}")
        if kind == "renew" and value_type not in _PKCS7:
            raise _refused(f"a Renew request's token must be of ValueType {_PKCS7[0]}")
        if kind == "issue":
            csr = _pkcs10(data, "the wsse:BinarySecurityToken")
        else:
            csr, signer = _pkcs7(data)
        context = request.find(_AUTHORIZATION, "AdditionalContext")
        context = context or request.find(_PKI, "AdditionalContext")
        if context is None:
            raise _refused("the request has no ac:AdditionalContext element")
        items = []
        for item in context.all(context.namespace, "ContextItem"):
            if not (name := (item.attribute("Name") or "").strip()):
                raise _refused("an ac:ContextItem has no Name")
            items.append((name, _optional(item, context.namespace, "Value") or ""))
        first: dict[str, str] = {}
        for name, value in items:
            first.setdefault(name, value)
        if first.get("EnrollmentType", "Full").lower() not in ("full", "device"):
            raise _refused(f"the EnrollmentType {first['EnrollmentType']!r} is not Full or Device")
        username, password, security_token = _credentials(header, required=kind == "issue")
        return EnrollmentRequest(
            message_id=message_id,
            request_type=kind,
            username=username,
            password=password,
            security_token=security_token,
            csr_der=csr,
            signer_certificate_der=signer,
            context=MappingProxyType(first),
            context_items=tuple(items),
        )

    return _parse(body, RST_ACTION, build)


def _pkcs10(data: bytes, what: str) -> bytes:
    try:
        x509.load_der_x509_csr(data)
    except ValueError:
        message = f"{what} is not a PKCS#10 certificate request (DER)"
        raise _refused(message, "s:CertificateRequest") from None
    return data


def _pkcs7(data: bytes) -> tuple[bytes, bytes | None]:
    """The PKCS#10 in a renewal's SignedData (DER; base64 as manual renewal has it) and the
    certificate whose key signed it, if the SignedData carries certificates."""
    try:
        signed = asn1_cms.ContentInfo.load(data, strict=True)
        if signed["content_type"].native != "signed_data":
            raise ValueError("not SignedData")
        inner = signed["content"]["encap_content_info"]["content"].native
        carries_certificates = bool(signed["content"]["certificates"])
    # asn1crypto parses lazily: malformed DER surfaces while it is read, here, as ValueError or
    # TypeError by its contract; whatever it raises on a device's bytes must become a fault.
    except Exception:
        message = "the wsse:BinarySecurityToken is not a PKCS#7 SignedData"
        raise _refused(message, "s:CertificateRequest") from None
    if not isinstance(inner, bytes):
        raise _refused("the PKCS#7 carries no content", "s:CertificateRequest")
    signer = None
    if carries_certificates:
        try:
            signer = cms.verify_detached(data, inner)
        except cms.CmsError as exc:
            message = f"the PKCS#7's signature does not verify: {exc}"
            raise _refused(message, "s:CertificateRequest") from None
    what = "the PKCS#7's content"
    try:
        return _pkcs10(inner, what), signer
    except EnrollmentFault:
        decoded = _base64(inner.decode("latin-1"), what, "s:CertificateRequest")
        return _pkcs10(decoded, what), signer


def enrollment_response(
    req: EnrollmentRequest, provisioning: bytes, *, now: datetime | None = None
) -> bytes:
    """The RequestSecurityTokenResponseCollection carrying ``provisioning`` (a
    wap-provisioningdoc from :func:`provisioning_doc` or :func:`renewal_doc`) base64-encoded
    as the DeviceEnrollmentProvisionDoc token, RequestID 0, and a five-minute security
    timestamp from ``now`` (default: the clock). ``ValueError`` when ``provisioning`` is not a
    wap-provisioningdoc."""
    try:
        root = _read(provisioning)
    except EnrollmentFault as fault:
        raise ValueError(f"provisioning is not a wap-provisioningdoc: {fault.message}") from None
    if (root.namespace, root.name) != ("", "wap-provisioningdoc"):
        raise ValueError(f"provisioning is not a wap-provisioningdoc but {root.name!r}")
    created = now or datetime.now(UTC)
    times = [_x("u:Created", _instant(created))]
    times.append(_x("u:Expires", _instant(created + timedelta(minutes=5))))
    stamp = _x("u:Timestamp", times, {"u:Id": "_0"})
    security = _x("o:Security", [stamp], {"s:mustUnderstand": "1"})
    token = _x(
        "BinarySecurityToken",
        base64.b64encode(provisioning).decode(),
        {"xmlns": _SECEXT, "ValueType": _PROVISION_DOC, "EncodingType": _BASE64},
    )
    response = [
        _x("TokenType", _ENROLLMENT_TOKEN),
        _x("DispositionMessage", None, {"xmlns": _PKI}),
        _x("RequestedSecurityToken", [token]),
        _x("RequestID", "0", {"xmlns": _PKI}),
    ]
    collection = [_x("RequestSecurityTokenResponse", response)]
    body = _x("RequestSecurityTokenResponseCollection", collection, {"xmlns": _TRUST})
    return _soap(RSTRC_ACTION, req.message_id, [body], [security])


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- the provisioning document


@dataclass(frozen=True)
class DmCredentials:
    """The OMA-DM credentials of the device's w7 account. MS-MDE2 2.2.9.5 requires both
    levels even where TLS client certificates authenticate the device: APPSRV, the device's
    (``client_name``, ``client_secret``, ``client_nonce`` for its first MD5 digest), and
    CLIENT, the server's (``server_secret``, and ``server_nonce`` for the server's first
    digest, which the device checks). Record what you give if digests are to be checked."""

    client_name: str
    client_secret: str
    client_nonce: bytes
    server_secret: str
    server_nonce: bytes

    def __post_init__(self) -> None:
        for name in ("client_name", "client_secret", "server_secret"):
            _check_text(getattr(self, name), name)
        for name in ("client_nonce", "server_nonce"):
            if not isinstance(getattr(self, name), bytes) or not getattr(self, name):
                raise ValueError(f"{name} must be non-empty bytes")

    @classmethod
    def random(cls, client_name: str) -> DmCredentials:
        """Fresh random secrets and nonces: for a device that authenticates by certificate,
        nothing ever needs to check them."""
        return cls(
            client_name=client_name,
            client_secret=secrets.token_urlsafe(24),
            client_nonce=secrets.token_bytes(16),
            server_secret=secrets.token_urlsafe(24),
            server_nonce=secrets.token_bytes(16),
        )


@dataclass(frozen=True)
class DmClientSettings:
    """How an enrolled device reaches the gateway (w7 APPLICATION, DMClient and
    CertificateStore CSPs of the provisioning document).

    ``server_url`` is the OMA-DM endpoint (ADDR), ``renewal_url`` the enrollment service
    that renews certificates (both https). ``provider_id`` names the account on the device
    (PROVIDER-ID and the DMClient node: up to 64 letters, digits, spaces, ``.``, ``_``,
    ``-``); ``server_name`` is what Settings shows. ``encoding`` is what the device sends,
    ``xml`` or ``wbxml`` (the gateway answers in kind).

    The poll schedule (DMClient ``Provider/<id>/Poll``), three schedules run in order,
    intervals in minutes, a count of 0 repeating that schedule forever:

    * first: every 15 minutes, 8 times. A new device checks in eight times in its first two
      hours, so the policies queued for it at enrollment land while its user is setting it
      up. Windows requires this schedule.
    * second: every 480 minutes (8 hours, Windows' own maintenance rhythm), forever. Without
      push notifications this bounds how late a queued command is picked up, at about three
      sessions a day per device.
    * remaining: off (0). Windows requires it, when used, to be at least 1440 minutes: give
      the second schedule a count and use this one for a daily long-run poll.
    * ``poll_on_login``: also a session whenever a user signs in.

    Renewal (CertificateStore ``My/WSTEP/Renew``): the device starts renewing its certificate
    ``renew_period_days`` before it expires (42, the CSP's own default, inside the 40-60 days
    Microsoft recommends: a device never renews an expired certificate) and after a failure
    retries every ``renew_retry_days`` (4: Microsoft advises every few days rather than
    weekly, so that retries fall on different weekdays).

    ``ValueError`` names a setting a device would reject."""

    server_url: str
    renewal_url: str
    provider_id: str = "mdmgate"
    server_name: str = "mdmgate"
    encoding: Literal["xml", "wbxml"] = "xml"
    first_interval_minutes: int = 15
    first_retries: int = 8
    second_interval_minutes: int = 480
    second_retries: int = 0
    remaining_interval_minutes: int = 0
    remaining_retries: int = 0
    poll_on_login: bool = True
    renew_period_days: int = 42
    renew_retry_days: int = 4

    def __post_init__(self) -> None:
        _https(self.server_url, "server_url")
        _https(self.renewal_url, "renewal_url")
        if not isinstance(self.provider_id, str) or not re.fullmatch(
            r"[A-Za-z0-9._-]([A-Za-z0-9 ._-]{0,62}[A-Za-z0-9._-])?", self.provider_id
        ):
            raise ValueError(f"provider_id {self.provider_id!r} must be 1-64 letters or digits")
        _check_text(self.server_name, "server_name")
        if self.encoding not in ("xml", "wbxml"):
            raise ValueError(f"encoding must be xml or wbxml, not {self.encoding!r}")
        if not isinstance(self.poll_on_login, bool):
            raise ValueError("poll_on_login must be true or false")
        for number in (f.name for f in fields(self) if f.type == "int"):
            value, lowest = getattr(self, number), 1 if number in _AT_LEAST_ONE else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"{number} must be a whole number of at least {lowest}")
        if 0 < self.remaining_interval_minutes < 1440:
            raise ValueError("remaining_interval_minutes must be 0 (off) or at least 1440")
        forever = self.second_interval_minutes > 0 and self.second_retries == 0
        if forever and self.remaining_interval_minutes:
            raise ValueError(
                "second_retries 0 repeats the second schedule forever (infinite): the"
                " remaining one would never run; set remaining_interval_minutes to 0"
            )
        if self.renew_period_days > 1000:
            raise ValueError("renew_period_days must be at most 1000 (the CSP's limit)")
        if self.renew_retry_days > self.renew_period_days:
            raise ValueError("renew_retry_days must not exceed renew_period_days")


def provisioning_doc(
    *,
    ca_der: bytes,
    device_der: bytes,
    enrollment_type: str,
    settings: DmClientSettings,
    device_id: str | None = None,
    upn: str | None = None,
    credentials: DmCredentials | None = None,
) -> bytes:
    """The wap-provisioningdoc of a first enrollment (MS-MDE2 2.2.9.1):

    * CertificateStore: the CA (``ca_der``) into Root/System, the device's certificate
      (``device_der``) into My/User for a ``Full`` enrollment or My/System for ``Device``,
      each under its SHA-1 thumbprint, with the PrivateKeyContainer that pairs it with the
      device's key; WSTEP/Renew: the renewal settings and ``settings.renewal_url``;
    * APPLICATION w7: the OMA-DM account (PROVIDER-ID, NAME, ADDR, DEFAULTENCODING), the TLS
      client certificate to present (SSLCLIENTCERTSEARCHCRITERIA: its subject, in its own RDN
      order, URI-escaped, in the store it went to) and both APPAUTH levels (``credentials``,
      else fresh random ones);
    * DMClient Provider/<provider_id>: ``device_id`` as EntDMID (Windows requires it before
      it renews), ``upn`` as UPN, the poll schedule.

    ``ValueError`` names an unusable argument."""
    store, device = _store(enrollment_type), _certificate(device_der, "device_der")
    _certificate(ca_der, "ca_der")
    for value, name in ((device_id, "device_id"), (upn, "upn")):
        if value is not None:
            _check_text(value, name)
    subject = ",".join(rdn.rfc4514_string() for rdn in device.subject.rdns)
    account = credentials or DmCredentials.random(device_id or settings.provider_id)
    renew = _characteristic(
        "Renew",
        _parm("ROBOSupport", "true", "boolean"),
        _parm("RenewPeriod", str(settings.renew_period_days), "integer"),
        _parm("RetryInterval", str(settings.renew_retry_days), "integer"),
        _parm("ServerURL", settings.renewal_url, "string"),
    )
    key = _characteristic("PrivateKeyContainer")
    certificate = _characteristic(store, _cert_node(device_der), key)
    application = _characteristic(
        "APPLICATION",
        _parm("APPID", "w7"),
        _parm("PROVIDER-ID", settings.provider_id),
        _parm("NAME", settings.server_name),
        _parm("ADDR", settings.server_url),
        _parm("BACKCOMPATRETRYDISABLED"),  # DM 1.2 only: no retrying a package as 1.1
        _parm("DEFAULTENCODING", f"application/vnd.syncml.dm+{settings.encoding}"),
        _parm(
            "SSLCLIENTCERTSEARCHCRITERIA",
            f"Subject={quote(subject, safe=_URI_MARKS)}&Stores=My%5C{store}",
        ),
        _appauth("CLIENT", None, account.server_secret, account.server_nonce),
        _appauth("APPSRV", account.client_name, account.client_secret, account.client_nonce),
    )
    poll = [_parm(name, str(getattr(settings, field)), "integer") for name, field in _POLL]
    poll.append(_parm("PollOnLogin", str(settings.poll_on_login).lower(), "boolean"))
    about = [_parm(n, v, "string") for n, v in (("EntDMID", device_id), ("UPN", upn)) if v]
    provider = _characteristic(settings.provider_id, *about, _characteristic("Poll", *poll))
    root = _characteristic("Root", _characteristic("System", _cert_node(ca_der)))
    my = _characteristic("My", certificate, _characteristic("WSTEP", renew))
    document = [
        _characteristic("CertificateStore", root),
        _characteristic("CertificateStore", my),
        application,
        _characteristic("DMClient", _characteristic("Provider", provider)),
    ]
    return _write(_x("wap-provisioningdoc", document, {"version": "1.1"}))


def renewal_doc(
    *,
    device_der: bytes,
    enrollment_type: str,
    settings: DmClientSettings,
    ca_der: bytes | None = None,
) -> bytes:
    """The wap-provisioningdoc answering a renewal (MS-MDE2 3.5.4.1.1.2): only the new
    certificate with its PrivateKeyContainer, in the store of ``enrollment_type``, the CA if
    ``ca_der`` is given (needed only by a device that lacks it) and the account's
    PROVIDER-ID. ``ValueError`` names an unusable argument."""
    store = _store(enrollment_type)
    _certificate(device_der, "device_der")
    stores = []
    if ca_der is not None:
        _certificate(ca_der, "ca_der")
        stores.append(_characteristic("Root", _characteristic("System", _cert_node(ca_der))))
    certificate = _cert_node(device_der, _characteristic("PrivateKeyContainer"))
    stores.append(_characteristic("My", _characteristic(store, certificate)))
    document = [
        _characteristic("CertificateStore", *stores),
        _characteristic("APPLICATION", _parm("PROVIDER-ID", settings.provider_id)),
    ]
    return _write(_x("wap-provisioningdoc", document, {"version": "1.1"}))


# Windows refuses a first schedule that never polls; a renewal period or retry of 0 days.
_AT_LEAST_ONE = ("first_interval_minutes", "first_retries", "renew_period_days", "renew_retry_days")
_POLL = (
    ("IntervalForFirstSetOfRetries", "first_interval_minutes"),
    ("NumberOfFirstRetries", "first_retries"),
    ("IntervalForSecondSetOfRetries", "second_interval_minutes"),
    ("NumberOfSecondRetries", "second_retries"),
    ("IntervalForRemainingScheduledRetries", "remaining_interval_minutes"),
    ("NumberOfRemainingScheduledRetries", "remaining_retries"),
)
# RFC 2396's unreserved marks: SSLCLIENTCERTSEARCHCRITERIA URI-escapes everything else.
_URI_MARKS = "-_.!~*'()"


def _store(enrollment_type: str) -> str:
    if enrollment_type not in ("Full", "Device"):
        raise ValueError(f"enrollment_type must be Full or Device, not {enrollment_type!r}")
    return "User" if enrollment_type == "Full" else "System"


def _certificate(der: bytes, name: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a DER X.509 certificate") from None


def _cert_node(der: bytes, *more: _Node) -> _Node:
    # The CSP names a certificate by its SHA-1 thumbprint (MS-MDE2 2.2.9.2).
    thumbprint = hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()
    encoded = _parm("EncodedCertificate", base64.b64encode(der).decode())
    return _characteristic(thumbprint, encoded, *more)


def _appauth(level: str, name: str | None, secret: str, nonce: bytes) -> _Node:
    # MS-MDE2 2.2.9.5: CLIENT must be DIGEST; APPSRV is too, no secret sent as BASIC.
    parms = [_parm("AAUTHLEVEL", level), _parm("AAUTHTYPE", "DIGEST")]
    parms += [_parm("AAUTHNAME", name)] if name is not None else []
    parms += [_parm("AAUTHSECRET", secret), _parm("AAUTHDATA", base64.b64encode(nonce).decode())]
    return _characteristic("APPAUTH", *parms)


def _characteristic(kind: str, *children: _Node) -> _Node:
    return _x("characteristic", list(children), {"type": kind})


def _parm(name: str, value: str | None = None, datatype: str | None = None) -> _Node:
    given = {"name": name, "value": value, "datatype": datatype}
    return _x("parm", None, {k: v for k, v in given.items() if v is not None})


# -- faults


def soap_fault(
    fault: EnrollmentFault, *, relates_to: str | None, action: str | None = None
) -> bytes:
    """The SOAP 1.2 envelope of ``fault`` (MS-MDE2 2.2.10): code and subcode as QNames of
    the envelope's own ``s:``/``a:`` prefixes, the message as its en-US reason, and a
    DeviceEnrollmentServiceError detail when it has an ``error_type``. ``relates_to`` is the
    request's MessageID (``fault.message_id`` when a parser raised it; ``None`` if it could
    not be read); ``action`` defaults to :data:`FAULT_ACTION`. Send with
    ``fault.http_status``."""
    subcode = _x("s:Subcode", [_x("s:Value", fault.subcode)])
    parts = [
        _x("s:Code", [_x("s:Value", fault.code), subcode]),
        _x("s:Reason", [_x("s:Text", fault.message, {"xml:lang": "en-US"})]),
    ]
    if fault.error_type is not None:
        error = [_x("ErrorType", fault.error_type), _x("Message", fault.message)]
        detail = _x("DeviceEnrollmentServiceError", error, {"xmlns": _PKI})
        parts.append(_x("s:Detail", [detail]))
    return _soap(action or FAULT_ACTION, relates_to, [_x("s:Fault", parts)])


# -- writing

#: An element to write: qualified name, attributes, then text, children or nothing. A
#: ``prefix:`` of :data:`_PREFIXES` names the namespace (the writer declares it on the root);
#: an ``xmlns`` attribute sets the default namespace of the element and its subtree.
_Node: TypeAlias = tuple[str, dict[str, str], "str | list[_Node] | None"]

_PREFIXES = {"s": _SOAP, "a": _ADDRESSING, "o": _SECEXT, "u": _UTILITY, "xsi": _XSI}
_XML = "http://www.w3.org/XML/1998/namespace"
# Characters XML 1.0 cannot carry, not even escaped.
_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(
    name: str, content: str | list[_Node] | None = None, attributes: dict[str, str] | None = None
) -> _Node:
    return (name, attributes or {}, content)


def _soap(
    action: str, relates_to: str | None, body: list[_Node], headers: list[_Node] | None = None
) -> bytes:
    header = [_x("a:Action", action, {"s:mustUnderstand": "1"})]
    header += [_x("a:RelatesTo", relates_to)] if relates_to is not None else []
    return _write(_x("s:Envelope", [_x("s:Header", header + (headers or [])), _x("s:Body", body)]))


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str) or not value or re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError(f"{name} must be non-empty text without control characters")
    if _XML_BAD.search(value):
        raise ValueError(f"{name} has a character XML cannot carry")


def _write(root: _Node) -> bytes:
    out = BytesIO()
    writer = XMLGenerator(out, encoding="utf-8", short_empty_elements=True)
    writer.startDocument()
    used: set[str] = set()
    _prefixes(root, used)
    for prefix in sorted(used, key=list(_PREFIXES).index):
        writer.startPrefixMapping(prefix, _PREFIXES[prefix])
    _emit(writer, root, None)
    writer.endDocument()
    return out.getvalue()


def _prefixes(node: _Node, used: set[str]) -> None:
    name, attributes, content = node
    for qualified in (name, *attributes):
        prefix = qualified.partition(":")[0] if ":" in qualified else ""
        if prefix in _PREFIXES:
            used.add(prefix)
    for child in content if isinstance(content, list) else ():
        _prefixes(child, used)


def _emit(writer: XMLGenerator, node: _Node, default: str | None) -> None:
    name, attributes, content = node
    if "xmlns" in attributes:
        default = attributes["xmlns"]
        writer.startPrefixMapping(None, default)
    values = {_qualify(k, None): v for k, v in attributes.items() if k != "xmlns"}
    for value in (*values.values(), content if isinstance(content, str) else ""):
        if _XML_BAD.search(value):
            raise ValueError(f"a value of {name} has a character XML cannot carry")
    writer.startElementNS(_qualify(name, default), name, AttributesNSImpl(values, {}))
    if isinstance(content, str):
        writer.characters(content)
    for child in content if isinstance(content, list) else ():
        _emit(writer, child, default)
    writer.endElementNS(_qualify(name, default), name)
    if "xmlns" in attributes:
        writer.endPrefixMapping(None)


def _qualify(name: str, default: str | None) -> tuple[str | None, str]:
    prefix, _, local = name.rpartition(":")
    return ({"xml": _XML, **_PREFIXES}[prefix] if prefix else default, local)
