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

This module holds the three exchanges and is where callers import from. The SOAP layer
(reader, writer, :class:`EnrollmentFault`, :func:`soap_fault`) lives in
:mod:`mdmgate.enrollment.windows_soap`, the provisioning document (:class:`DmClientSettings`,
:class:`DmCredentials`, :func:`provisioning_doc`, :func:`renewal_doc`) in
:mod:`mdmgate.enrollment.windows_provisioning`; both are re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Literal

from asn1crypto import cms as asn1_cms  # type: ignore[import-untyped]
from cryptography import x509

from mdmgate.enrollment import cms
from mdmgate.enrollment.windows_provisioning import (
    DmClientSettings,
    DmCredentials,
    provisioning_doc,
    renewal_doc,
)
from mdmgate.enrollment.windows_soap import (
    CONTENT_TYPE,
    FAULT_ACTION,
    MAX_MESSAGE_BYTES,
    PKI,
    SECEXT,
    TRUST,
    Element,
    EnrollmentFault,
    Node,
    envelope,
    https_host,
    node,
    parse_envelope,
    read_xml,
    refused,
    soap_fault,
)

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

_DISCOVERY = "http://schemas.microsoft.com/windows/management/2012/01/enrollment"
_XCEP = "http://schemas.microsoft.com/windows/pki/2009/01/enrollmentpolicy"
_AUTHORIZATION = "http://schemas.xmlsoap.org/ws/2006/12/authorization"

DISCOVER_ACTION = _DISCOVERY + "/IDiscoveryService/Discover"
DISCOVER_RESPONSE_ACTION = _DISCOVERY + "/IDiscoveryService/DiscoverResponse"
GET_POLICIES_ACTION = _XCEP + "/IPolicy/GetPolicies"
GET_POLICIES_RESPONSE_ACTION = _XCEP + "/IPolicy/GetPoliciesResponse"
RST_ACTION = PKI + "/RST/wstep"
RSTRC_ACTION = PKI + "/RSTRC/wstep"

_CONFIG_MANAGER = "http://schemas.microsoft.com/5.0.0.0/ConfigurationManager/Enrollment/"
_USER_TOKEN = _CONFIG_MANAGER + "DeviceEnrollmentUserToken"
_ENROLLMENT_TOKEN = _CONFIG_MANAGER + "DeviceEnrollmentToken"
_PROVISION_DOC = _CONFIG_MANAGER + "DeviceEnrollmentProvisionDoc"
_BASE64 = SECEXT + "#base64binary"
_PASSWORD_TEXT = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordText"
)
_PKCS10 = PKI + "#PKCS10"
# MS-MDE2 3.5.4.1.1.1 names the first; MS-MDE (version 1) the second.
_PKCS7 = (SECEXT + "#PKCS7", PKI + "#PKCS7")
_REQUEST_TYPES: dict[str, Literal["issue", "renew"]] = {
    TRUST + "/Issue": "issue",
    TRUST + "/Renew": "renew",
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


# -- reading a request


def _base64(text: str, what: str, subcode: str = "s:MessageFormat") -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise refused(f"the {what} is not base64", subcode) from None


def _credentials(header: Element, *, required: bool) -> tuple[str | None, ...]:
    """(username, password, token) from wsse:Security: a UsernameToken (OnPremise) or a
    DeviceEnrollmentUserToken (Federated: the device base64-encodes the token it was given)."""
    security = header.find(SECEXT, "Security") or Element("", "", {})
    account = security.find(SECEXT, "UsernameToken")
    if account is not None:
        password = account.find(SECEXT, "Password") or Element("", "", {})
        if password.attribute("Type") not in (None, _PASSWORD_TEXT):
            raise refused("a wsse:Password that is not PasswordText", "a:InvalidSecurity")
        return account.need(SECEXT, "Username").text, password.text, None
    for token in security.all(SECEXT, "BinarySecurityToken"):
        if token.attribute("ValueType") == _USER_TOKEN:
            raw = _base64(token.text, "wsse:BinarySecurityToken", "a:InvalidSecurity")
            try:
                return None, None, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise refused("the user token is not UTF-8 text", "a:InvalidSecurity") from None
    if required:
        raise refused(
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

    def build(_header: Element, body: Element, message_id: str) -> DiscoverRequest:
        discover = body.find(_DISCOVERY, "Discover") or body.find(_DISCOVERY + "/", "Discover")
        if discover is None:
            raise refused("the request has no Discover element (in Body)")
        ns = discover.namespace
        request = discover.need(ns, "request")
        version = request.need(ns, "RequestVersion").text
        if not re.fullmatch(r"[0-9]{1,2}(\.[0-9]{1,2})?", version):
            raise refused(f"the RequestVersion {version!r} is not a version such as 4.0")
        edition = _optional(request, ns, "OSEdition")
        if edition is not None and not re.fullmatch(r"[0-9]{1,9}", edition):
            raise refused(f"the OSEdition {edition!r} is not an unsigned integer")
        policies = request.find(ns, "AuthPolicies") or Element("", "", {})
        return DiscoverRequest(
            message_id=message_id,
            email=request.need(ns, "EmailAddress").text,
            request_version=version,
            device_type=_optional(request, ns, "DeviceType"),
            application_version=_optional(request, ns, "ApplicationVersion"),
            os_edition=None if edition is None else int(edition),
            auth_policies=tuple(p.text for p in policies.all(ns, "AuthPolicy") if p.text),
        )

    return parse_envelope(body, DISCOVER_ACTION, build)


def _optional(parent: Element, namespace: str, name: str) -> str | None:
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
    if https_host(enrollment_url, "enrollment_url") != https_host(policy_url, "policy_url"):
        raise ValueError("policy_url and enrollment_url must be on the same host")
    if (auth_policy == "Federated") != (authentication_url is not None):
        raise ValueError("authentication_url is needed for Federated, and only for it")
    if authentication_url is not None:
        https_host(authentication_url, "authentication_url")
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
        node("AuthPolicy", auth_policy),
        *[node("EnrollmentVersion", v) for v in versions[-1:]],
        node("EnrollmentPolicyServiceUrl", policy_url),
        node("EnrollmentServiceUrl", enrollment_url),
        *[node("AuthenticationServiceUrl", url) for url in (authentication_url,) if url],
    ]
    answer = node("DiscoverResponse", [node("DiscoverResult", result)], {"xmlns": _DISCOVERY})
    return envelope(DISCOVER_RESPONSE_ACTION, req.message_id, [answer])


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

    def build(header: Element, body: Element, message_id: str) -> PolicyRequest:
        body.need(_XCEP, "GetPolicies")
        return PolicyRequest(message_id, *_credentials(header, required=True))

    return parse_envelope(body, GET_POLICIES_ACTION, build)


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
    key = [node("minimalKeyLength", str(min_key_bits))]
    key += _nils("keySpec keyUsageProperty permissions algorithmOIDReference cryptoProviders")
    attributes = [
        node("commonName", "mdmgate device"),
        node("policySchema", "3"),
        node("certificateValidity", [node(k, str(v * 86400)) for k, v in seconds.items()]),
        node("permission", [node("enroll", "true"), node("autoEnroll", "false")]),
        node("privateKeyAttributes", key),
        node("revision", [node("majorRevision", "101"), node("minorRevision", "0")]),
        *_nils("supersededPolicies privateKeyFlags subjectNameFlags enrollmentFlags generalFlags"),
        node("hashAlgorithmOIDReference", "0"),
        *_nils("rARequirements keyArchivalAttributes extensions"),
    ]
    policy = [node("policyOIDReference", "0"), *_nils("cAs"), node("attributes", attributes)]
    response = [
        node("policyID", ""),
        *_nils("policyFriendlyName nextUpdateHours policiesNotChanged"),
        node("policies", [node("policy", policy)]),
    ]
    oid = [
        node("value", hash_algorithm_oid),
        node("group", "1"),
        node("oIDReferenceID", "0"),
        node("defaultName", _HASH_NAMES[hash_algorithm_oid]),
    ]
    answer = [node("response", response), *_nils("cAs"), node("oIDs", [node("oID", oid)])]
    body = node("GetPoliciesResponse", answer, {"xmlns": _XCEP})
    return envelope(GET_POLICIES_RESPONSE_ACTION, req.message_id, [body])


def _nils(names: str) -> list[Node]:
    return [node(name, None, {"xsi:nil": "true"}) for name in names.split()]


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

    def build(header: Element, body: Element, message_id: str) -> EnrollmentRequest:
        request = body.need(TRUST, "RequestSecurityToken")
        token_type = request.need(TRUST, "TokenType").text
        if token_type != _ENROLLMENT_TOKEN:
            raise refused(f"the wst:TokenType is {token_type!r}, not {_ENROLLMENT_TOKEN}")
        given = request.need(TRUST, "RequestType").text
        kind = _REQUEST_TYPES.get(given)
        if kind is None:
            raise refused(f"the wst:RequestType {given!r} is not served (Issue or Renew)")
        token = request.need(SECEXT, "BinarySecurityToken")
        if token.attribute("EncodingType") not in (None, _BASE64):
            raise refused("the wsse:BinarySecurityToken EncodingType is not base64binary")
        data = _base64(token.text, "wsse:BinarySecurityToken")
        value_type, signer = token.attribute("ValueType"), None
        if kind == "issue" and value_type != _PKCS10:
            raise refused(f"an Issue request's token must be of ValueType {_PKCS10}")
        if kind == "renew" and value_type not in _PKCS7:
            raise refused(f"a Renew request's token must be of ValueType {_PKCS7[0]}")
        if kind == "issue":
            csr = _pkcs10(data, "the wsse:BinarySecurityToken")
        else:
            csr, signer = _pkcs7(data)
        context = request.find(_AUTHORIZATION, "AdditionalContext")
        context = context or request.find(PKI, "AdditionalContext")
        if context is None:
            raise refused("the request has no ac:AdditionalContext element")
        items = []
        for item in context.all(context.namespace, "ContextItem"):
            if not (name := (item.attribute("Name") or "").strip()):
                raise refused("an ac:ContextItem has no Name")
            items.append((name, _optional(item, context.namespace, "Value") or ""))
        first: dict[str, str] = {}
        for name, value in items:
            first.setdefault(name, value)
        if first.get("EnrollmentType", "Full").lower() not in ("full", "device"):
            raise refused(f"the EnrollmentType {first['EnrollmentType']!r} is not Full or Device")
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

    return parse_envelope(body, RST_ACTION, build)


def _pkcs10(data: bytes, what: str) -> bytes:
    try:
        x509.load_der_x509_csr(data)
    except ValueError:
        message = f"{what} is not a PKCS#10 certificate request (DER)"
        raise refused(message, "s:CertificateRequest") from None
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
        raise refused(message, "s:CertificateRequest") from None
    if not isinstance(inner, bytes):
        raise refused("the PKCS#7 carries no content", "s:CertificateRequest")
    signer = None
    if carries_certificates:
        try:
            signer = cms.verify_detached(data, inner)
        except cms.CmsError as exc:
            message = f"the PKCS#7's signature does not verify: {exc}"
            raise refused(message, "s:CertificateRequest") from None
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
        root = read_xml(provisioning)
    except EnrollmentFault as fault:
        raise ValueError(f"provisioning is not a wap-provisioningdoc: {fault.message}") from None
    if (root.namespace, root.name) != ("", "wap-provisioningdoc"):
        raise ValueError(f"provisioning is not a wap-provisioningdoc but {root.name!r}")
    created = now or datetime.now(UTC)
    times = [node("u:Created", _instant(created))]
    times.append(node("u:Expires", _instant(created + timedelta(minutes=5))))
    stamp = node("u:Timestamp", times, {"u:Id": "_0"})
    security = node("o:Security", [stamp], {"s:mustUnderstand": "1"})
    token = node(
        "BinarySecurityToken",
        base64.b64encode(provisioning).decode(),
        {"xmlns": SECEXT, "ValueType": _PROVISION_DOC, "EncodingType": _BASE64},
    )
    response = [
        node("TokenType", _ENROLLMENT_TOKEN),
        node("DispositionMessage", None, {"xmlns": PKI}),
        node("RequestedSecurityToken", [token]),
        node("RequestID", "0", {"xmlns": PKI}),
    ]
    collection = [node("RequestSecurityTokenResponse", response)]
    body = node("RequestSecurityTokenResponseCollection", collection, {"xmlns": TRUST})
    return envelope(RSTRC_ACTION, req.message_id, [body], [security])


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
