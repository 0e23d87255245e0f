"""How a simulated device enrolls with the gateway before its first check-in, as the real
one does, through the same endpoints:

* **Windows** ([MS-MDE2]): the reachability probe and ``Discover`` on
  ``/EnrollmentServer/Discovery.svc``; MS-XCEP ``GetPolicies`` with the enrollment token as
  the password (OnPremise) or as the user token (Federated: the token the sign-in page
  would have handed over), which tells the minimum RSA key size; MS-WSTEP
  ``RequestSecurityToken`` with a PKCS#10 request for a fresh key (RSA of that size, or EC
  P-256 when the run asks for cheap keys: the gateway certifies both) and the device's
  ``AdditionalContext`` (its ``DeviceID`` is the simulated device's id). The answer's
  wap-provisioningdoc holds the certificate (store ``My``), which the device then shows as
  its TLS client certificate in every OMA-DM session.
* **Apple**: the enrollment profile (``GET`` of the token's profile URL, a CMS-signed
  ``.mobileconfig``); from its SCEP payload ``GetCACaps``, ``GetCACert`` and a PKCSReq
  (:mod:`mdmgate.simulate.enroll_scep`) with the payload's one-time challenge, subject and
  key size (RSA: SCEP envelopes its reply to the device's key); from its MDM payload the
  push topic. The certificate issued is the identity of ``Authenticate`` and everything
  after it.

A refusal raises :class:`EnrollFailed` with an error kind and whether trying again could
help (``final``): a refused token will be refused again, a dropped connection may not be.
The kinds: ``enroll_token_invalid`` (an unknown, malformed or wrong token: SOAP
``s:Authentication``, HTTP 401), ``enroll_token_refused`` (expired, revoked, used up, for
the other platform, or the device is another org's: ``s:Authorization``, HTTP 403),
``enroll_key_refused`` (``s:CertificateRequest``), ``enroll_scep_failed`` (a SCEP FAILURE),
``enroll_not_set_up`` (``s:EnrollmentServer``, HTTP 503), ``enroll_unsupported`` (what the
simulator cannot do: an ACME payload, SCEP without AES), ``enroll_refused`` (another fault
or 4xx), ``enroll_protocol`` (an answer the protocol does not allow), and
``enroll_http_<status>``, ``enroll_transport_<kind>``. Messages are counted in the stats as
they are sent; the latency and the outcome of the whole enrollment are the caller's.

Keys: :func:`new_key` makes the device's key before the caller starts timing (a device
makes it on its own). An RSA-2048 key takes about 0.1 s of CPU, so RSA keys are made in
worker threads, at most :data:`KEY_THREADS` at once, and the fleet's Trio thread stays
responsive.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import uuid
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit
from xml.sax.saxutils import escape

import trio
from asn1crypto import cms  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AttributeOID, NameOID

from mdmgate import plist
from mdmgate.enrollment.windows_soap import Element, EnrollmentFault, read_xml
from mdmgate.errors import PlistDecodeError
from mdmgate.simulate import enroll_scep
from mdmgate.simulate.apple import DeviceIdentity
from mdmgate.simulate.scenario import DeviceProfile
from mdmgate.simulate.stats import Stats
from mdmgate.simulate.transport import Exchange, Reply, TransportError

__all__ = [
    "AppleEnrollment",
    "EnrollFailed",
    "enroll_apple",
    "enroll_windows",
    "new_key",
]

#: RSA keys made at once in worker threads.
KEY_THREADS: Final = max(os.cpu_count() or 1, 1)
# Not bound to a Trio run: one limiter serves every run of the process.
_KEYS = trio.CapacityLimiter(KEY_THREADS)
#: Larger RSA keys than this are not made for a policy that asks for them.
_MAX_RSA_BITS: Final = 4096

_SOAP: Final = "http://www.w3.org/2003/05/soap-envelope"
_ADDRESSING: Final = "http://www.w3.org/2005/08/addressing"
_DISCOVERY: Final = "http://schemas.microsoft.com/windows/management/2012/01/enrollment"
_XCEP: Final = "http://schemas.microsoft.com/windows/pki/2009/01/enrollmentpolicy"
_PKI: Final = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment"
_TRUST: Final = "http://docs.oasis-open.org/ws-sx/ws-trust/200512"
_SECEXT: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
_UTILITY: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
)
_CONFIG_MANAGER: Final = "http://schemas.microsoft.com/5.0.0.0/ConfigurationManager/Enrollment/"
_PASSWORD_TEXT: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordText"
)
_SOAP_TYPE: Final = "application/soap+xml; charset=utf-8"
_USER_AGENT: Final = "ENROLLClient"
DISCOVERY_PATH: Final = "/EnrollmentServer/Discovery.svc"
_PKI_MESSAGE: Final = "application/x-pki-message"


class EnrollFailed(Exception):
    """An enrollment that did not end with a certificate: ``kind`` is the error kind,
    ``detail`` what the gateway said, ``final`` whether trying again is pointless."""

    def __init__(self, kind: str, detail: str, *, final: bool = True) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.final = final


# -- talking -----------------------------------------------------------------------------------


async def _send(
    exchange: Exchange,
    stats: Stats,
    platform: str,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> Reply:
    stats.message(platform)
    try:
        return await exchange(method, path, headers, body)
    except TransportError as e:
        raise EnrollFailed(f"enroll_transport_{e.kind}", str(e), final=False) from None


def _status_failure(reply: Reply, what: str) -> EnrollFailed:
    """The failure an unexpected HTTP status means, the gateway's words as the detail."""
    text = reply.body[:300].decode("utf-8", "replace").strip()
    detail = f"{what}: HTTP {reply.status} {text}".strip()
    status = reply.status
    if status == 401:
        return EnrollFailed("enroll_token_invalid", detail)
    if status == 403:
        return EnrollFailed("enroll_token_refused", detail)
    if status == 503:
        return EnrollFailed("enroll_not_set_up", detail)
    # Overload or a server fault may pass; a refusal of the request will not.
    return EnrollFailed(
        f"enroll_http_{status}", detail, final=400 <= status < 500 and status != 429
    )


def _local_path(url: str, prefix: str) -> str:
    """The path (and query) of a URL the gateway handed out, as the exchange wants it: the
    exchange talks to the run's target and adds its path prefix itself."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if prefix and path.startswith(prefix + "/"):
        path = path[len(prefix) :]
    return path + (f"?{parts.query}" if parts.query else "")


def _message_id(device_id: str, step: str) -> str:
    # Derived, not drawn: the run's generator stays the devices' alone.
    digest = hashlib.sha256(f"{device_id}/{step}".encode()).digest()
    return f"urn:uuid:{uuid.UUID(bytes=digest[:16])}"


async def _rsa_key(bits: int) -> rsa.RSAPrivateKey:
    make = functools.partial(rsa.generate_private_key, 65537, bits)
    return await trio.to_thread.run_sync(make, limiter=_KEYS)


_Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


async def new_key(kind: str = "rsa") -> _Key:
    """A fresh key for an enrollment: RSA-2048 (what SCEP and the usual policy ask), or EC
    P-256 (``kind`` ``"ec"``). A device makes it on its own before it asks the gateway, so
    the caller makes it before it starts timing the enrollment."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return await _rsa_key(2048)


async def _big_enough(key: _Key, bits: int) -> _Key:
    """``key``, or a larger RSA key when the gateway asks for more than it has."""
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < bits:
        return await _rsa_key(min(bits, _MAX_RSA_BITS))
    return key


def _identity(key: _Key, cert_der: bytes) -> DeviceIdentity:
    key_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return DeviceIdentity(key_der, cert_der)


def _same_key(cert: x509.Certificate, key: _Key) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


# -- Windows -----------------------------------------------------------------------------------


def _children(element: Element, name: str) -> list[Element]:
    return [c for c in element.children if c.name == name]


def _first(element: Element, *path: str) -> Element | None:
    """The first element down ``path`` by local names (gateways differ in namespaces)."""
    found: Element | None = element
    for name in path:
        if found is None:
            return None
        found = next(iter(_children(found, name)), None)
    return found


def _descendants(element: Element, name: str) -> list[Element]:
    out, todo = [], [element]
    while todo:
        current = todo.pop()
        if current.name == name:
            out.append(current)
        todo.extend(reversed(current.children))
    return out


def _envelope(action: str, message_id: str, to: str, security: str, body: str) -> bytes:
    return (
        f'<s:Envelope xmlns:s="{_SOAP}" xmlns:a="{_ADDRESSING}" xmlns:u="{_UTILITY}" '
        f'xmlns:wsse="{_SECEXT}" xmlns:wst="{_TRUST}" '
        'xmlns:ac="http://schemas.xmlsoap.org/ws/2006/12/authorization">'
        f'<s:Header><a:Action s:mustUnderstand="1">{action}</a:Action>'
        f"<a:MessageID>{message_id}</a:MessageID>"
        f"<a:ReplyTo><a:Address>{_ADDRESSING}/anonymous</a:Address></a:ReplyTo>"
        f'<a:To s:mustUnderstand="1">{escape(to)}</a:To>{security}</s:Header>'
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def _security(username: str, token: str, federated: bool) -> str:
    if federated:
        # The value the sign-in page posted back as wresult: the device sends it base64.
        value = base64.b64encode(token.encode()).decode()
        return (
            '<wsse:Security s:mustUnderstand="1"><wsse:BinarySecurityToken '
            f'ValueType="{_CONFIG_MANAGER}DeviceEnrollmentUserToken" '
            f'EncodingType="{_SECEXT}#base64binary">{value}</wsse:BinarySecurityToken>'
            "</wsse:Security>"
        )
    return (
        '<wsse:Security s:mustUnderstand="1"><wsse:UsernameToken u:Id="uuid-0">'
        f"<wsse:Username>{escape(username)}</wsse:Username>"
        f'<wsse:Password wsse:Type="{_PASSWORD_TEXT}">{escape(token)}</wsse:Password>'
        "</wsse:UsernameToken></wsse:Security>"
    )


#: MS-MDE2 2.2.10 fault subcodes (without their prefix) and what they mean here.
_FAULT_KINDS: Final = {
    "Authentication": "enroll_token_invalid",
    "Authorization": "enroll_token_refused",
    "CertificateRequest": "enroll_key_refused",
    "EnrollmentServer": "enroll_not_set_up",
}


def _soap_answer(reply: Reply, what: str) -> Element:
    """The s:Body of a SOAP answer; :class:`EnrollFailed` for a fault or another status."""
    root: Element | None = None
    if reply.body and "xml" in (reply.header("content-type") or "xml"):
        try:
            root = read_xml(reply.body)
        except EnrollmentFault as e:
            if reply.status == 200:
                raise EnrollFailed("enroll_protocol", f"{what}: {e.message}") from None
    body = _first(root, "Body") if root is not None else None
    fault = _first(body, "Fault") if body is not None else None
    if fault is not None:
        subcode = _first(fault, "Code", "Subcode", "Value")
        reason = _first(fault, "Reason", "Text")
        code = subcode.text if subcode is not None else ""
        detail = f"{what}: {code} {reason.text if reason is not None else ''}".strip()
        kind = _FAULT_KINDS.get(code.rpartition(":")[2], "enroll_refused")
        # A receiver's fault other than "not set up" (an internal one) may pass.
        raise EnrollFailed(kind, detail, final=reply.status < 500 or kind != "enroll_refused")
    if reply.status != 200:
        raise _status_failure(reply, what)
    if body is None:
        raise EnrollFailed("enroll_protocol", f"{what}: the answer is not a SOAP envelope")
    return body


async def _soap(exchange: Exchange, stats: Stats, path: str, envelope: bytes, what: str) -> Element:
    headers = [("content-type", _SOAP_TYPE), ("user-agent", _USER_AGENT)]
    reply = await _send(exchange, stats, "windows", "POST", path, headers=headers, body=envelope)
    return _soap_answer(reply, what)


def _context(profile: DeviceProfile) -> list[tuple[str, str]]:
    digest = hashlib.sha256(f"hw/{profile.id}/{profile.serial}".encode()).hexdigest().upper()
    mac = hashlib.sha256(f"mac/{profile.id}".encode()).digest()[:6].hex(":").upper()
    return [
        ("UXInitiated", "true"),
        ("EnrollmentType", "Full"),
        ("DeviceType", "CIMClient_Windows"),
        ("ApplicationVersion", profile.os_version),
        ("OSVersion", profile.os_version),
        ("OSEdition", "48"),
        ("DeviceName", f"DESKTOP-{profile.serial[:7]}"),
        ("MAC", mac),
        ("Locale", "en-US"),
        ("TargetedUserLoggedIn", "true"),
        ("DeviceID", profile.id),
        ("HWDevID", digest),
    ]


async def enroll_windows(
    exchange: Exchange,
    profile: DeviceProfile,
    token: str,
    *,
    stats: Stats,
    key: _Key,
    base_url: str,
    prefix: str = "",
) -> DeviceIdentity:
    """Enrolls a Windows device with the enrollment ``token`` and its new ``key`` (replaced
    by a larger RSA key if the policy asks for one); its new identity. ``base_url`` is the
    gateway as the device names it (the SOAP ``To``), ``prefix`` the target's path prefix.
    :class:`EnrollFailed` says why not."""
    reply = await _send(exchange, stats, "windows", "GET", DISCOVERY_PATH)
    if reply.status != 200:
        raise _status_failure(reply, "discovery probe")
    email = f"{profile.username or 'user'}@simulated.mdmgate.example"
    discover = (
        f'<Discover xmlns="{_DISCOVERY}"><request '
        'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
        f"<EmailAddress>{escape(email)}</EmailAddress><RequestVersion>4.0</RequestVersion>"
        f"<DeviceType>CIMClient_Windows</DeviceType>"
        f"<ApplicationVersion>{escape(profile.os_version)}</ApplicationVersion>"
        "<OSEdition>48</OSEdition><AuthPolicies><AuthPolicy>OnPremise</AuthPolicy>"
        "<AuthPolicy>Federated</AuthPolicy></AuthPolicies></request></Discover>"
    )
    action = _DISCOVERY + "/IDiscoveryService/Discover"
    envelope = _envelope(
        action, _message_id(profile.id, "discover"), base_url + DISCOVERY_PATH, "", discover
    )
    body = await _soap(exchange, stats, DISCOVERY_PATH, envelope, "Discover")
    result = _first(body, "DiscoverResponse", "DiscoverResult")
    if result is None:
        raise EnrollFailed("enroll_protocol", "Discover: no DiscoverResult")
    policy_url = _first(result, "EnrollmentPolicyServiceUrl")
    enrollment_url = _first(result, "EnrollmentServiceUrl")
    policy = _first(result, "AuthPolicy")
    if policy_url is None or enrollment_url is None or not enrollment_url.text:
        raise EnrollFailed("enroll_protocol", "Discover: no policy and enrollment service URLs")
    if policy is not None and policy.text not in ("OnPremise", "Federated"):
        raise EnrollFailed("enroll_unsupported", f"Discover: auth policy {policy.text!r}")
    federated = policy is not None and policy.text == "Federated"
    security = _security(email, token, federated)

    bits = 2048
    if policy_url.text:
        request = (
            f'<GetPolicies xmlns="{_XCEP}"><client><lastUpdate xsi:nil="true" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/><preferredLanguage '
            'xsi:nil="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/></client>'
            '<requestFilter xsi:nil="true" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/></GetPolicies>'
        )
        envelope = _envelope(
            _XCEP + "/IPolicy/GetPolicies",
            _message_id(profile.id, "policies"),
            policy_url.text,
            security,
            request,
        )
        path = _local_path(policy_url.text, prefix)
        answer = await _soap(exchange, stats, path, envelope, "GetPolicies")
        sizes = [e.text for e in _descendants(answer, "minimalKeyLength")]
        if sizes and sizes[0].isdigit():
            bits = max(bits, int(sizes[0]))
    key = await _big_enough(key, bits)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, profile.id)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    items = "".join(
        f'<ac:ContextItem Name="{escape(name)}"><ac:Value>{escape(value)}</ac:Value>'
        "</ac:ContextItem>"
        for name, value in _context(profile)
    )
    rst = (
        "<wst:RequestSecurityToken>"
        f"<wst:TokenType>{_CONFIG_MANAGER}DeviceEnrollmentToken</wst:TokenType>"
        f"<wst:RequestType>{_TRUST}/Issue</wst:RequestType>"
        f'<wsse:BinarySecurityToken ValueType="{_PKI}#PKCS10" '
        f'EncodingType="{_SECEXT}#base64binary">{base64.b64encode(csr).decode()}'
        "</wsse:BinarySecurityToken>"
        f'<ac:AdditionalContext xmlns="http://schemas.xmlsoap.org/ws/2006/12/authorization">'
        f"{items}</ac:AdditionalContext></wst:RequestSecurityToken>"
    )
    envelope = _envelope(
        _PKI + "/RST/wstep", _message_id(profile.id, "rst"), enrollment_url.text, security, rst
    )
    path = _local_path(enrollment_url.text, prefix)
    answer = await _soap(exchange, stats, path, envelope, "RequestSecurityToken")
    cert = _provisioned_certificate(answer)
    if not _same_key(cert, key):
        raise EnrollFailed("enroll_protocol", "the issued certificate is not for the device's key")
    return _identity(key, cert.public_bytes(serialization.Encoding.DER))


def _provisioned_certificate(body: Element) -> x509.Certificate:
    """The device certificate in the wap-provisioningdoc of an enrollment answer (the
    certificate stores' ``My``)."""
    tokens = _descendants(body, "BinarySecurityToken")
    try:
        document = base64.b64decode("".join(tokens[0].text.split()), validate=True)
        root = read_xml(document)
    except (IndexError, binascii.Error, ValueError, EnrollmentFault):
        raise EnrollFailed(
            "enroll_protocol", "RequestSecurityToken: no readable provisioning document"
        ) from None
    for store in _descendants(root, "characteristic"):
        if store.attributes.get("type") != "My":
            continue
        for parm in _descendants(store, "parm"):
            if parm.attributes.get("name") == "EncodedCertificate":
                try:
                    der = base64.b64decode(parm.attributes.get("value", ""), validate=True)
                    return x509.load_der_x509_certificate(der)
                except (binascii.Error, ValueError):
                    break
    raise EnrollFailed("enroll_protocol", "the provisioning document has no device certificate")


# -- Apple -------------------------------------------------------------------------------------


class AppleEnrollment:
    """What an Apple device keeps of its enrollment: its identity and the push topic the
    profile names."""

    __slots__ = ("identity", "topic")

    def __init__(self, identity: DeviceIdentity, topic: str | None) -> None:
        self.identity = identity
        self.topic = topic


def apple_profile_path(token: str, profile_url: str | None, prefix: str = "") -> str:
    """Where the device downloads its profile: the URL the gateway gave with the token, or
    the gateway's own path for a token value handed to the run."""
    if profile_url:
        return _local_path(profile_url, prefix)
    return "/mdm/apple/enroll?" + urlencode({"token": token}, quote_via=quote)


def _profile_payloads(body: bytes) -> list[dict[str, Any]]:
    """The payloads of a (CMS-signed, or plain) enrollment profile."""
    content = body
    if not body.lstrip().startswith(b"<"):
        try:
            info = cms.ContentInfo.load(body)
            if info["content_type"].native != "signed_data":
                raise ValueError("not SignedData")
            content = info["content"]["encap_content_info"]["content"].native
        # asn1crypto reads lazily: what it cannot read surfaces as any of these.
        except (ValueError, TypeError, KeyError):
            raise EnrollFailed("enroll_protocol", "the profile is not a signed plist") from None
    try:
        profile = plist.loads(content)
    except (PlistDecodeError, ValueError, TypeError):
        raise EnrollFailed("enroll_protocol", "the profile is not a property list") from None
    payloads = profile.get("PayloadContent") if isinstance(profile, dict) else None
    if not isinstance(payloads, list):
        raise EnrollFailed("enroll_protocol", "the profile has no PayloadContent")
    return [p for p in payloads if isinstance(p, dict)]


_NAME_TYPES = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
}


def _subject(value: Any, fallback: str) -> x509.Name:
    """A SCEP payload's Subject (Apple's array of RDNs of [type, value] pairs)."""
    attributes = []
    for rdn in value if isinstance(value, list) else ():
        for pair in rdn if isinstance(rdn, list) else ():
            if not (isinstance(pair, list) and len(pair) == 2):
                continue
            kind, text = pair
            oid = _NAME_TYPES.get(str(kind))
            if oid is None and isinstance(kind, str) and kind.replace(".", "").isdigit():
                oid = x509.ObjectIdentifier(kind)
            if oid is not None and isinstance(text, str) and text:
                attributes.append(x509.NameAttribute(oid, text))
    if not attributes:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, fallback))
    return x509.Name(attributes)


async def enroll_apple(
    exchange: Exchange,
    profile: DeviceProfile,
    profile_path: str,
    *,
    stats: Stats,
    key: rsa.RSAPrivateKey,
    prefix: str = "",
) -> AppleEnrollment:
    """Enrolls an Apple device with its new RSA ``key`` (replaced by a larger one if the
    profile asks for it): profile, then SCEP; its identity and the profile's topic.
    :class:`EnrollFailed` says why not."""
    reply = await _send(
        exchange, stats, profile.platform, "GET", profile_path, headers=[("user-agent", "MDM")]
    )
    if reply.status != 200:
        raise _status_failure(reply, "enrollment profile")
    by_type = {p.get("PayloadType"): p for p in _profile_payloads(reply.body)}
    mdm = by_type.get("com.apple.mdm") or {}
    topic = mdm.get("Topic") if isinstance(mdm.get("Topic"), str) else None
    scep = by_type.get("com.apple.security.scep")
    if scep is None:
        found = "an ACME payload" if "com.apple.security.acme" in by_type else "no SCEP payload"
        raise EnrollFailed("enroll_unsupported", f"the profile has {found}")
    settings = scep.get("PayloadContent")
    if not isinstance(settings, dict) or not isinstance(settings.get("URL"), str):
        raise EnrollFailed("enroll_protocol", "the SCEP payload has no URL")
    identity = await _scep(exchange, profile, settings, stats=stats, key=key, prefix=prefix)
    return AppleEnrollment(identity, topic)


async def _scep(
    exchange: Exchange,
    profile: DeviceProfile,
    settings: dict[str, Any],
    *,
    stats: Stats,
    key: rsa.RSAPrivateKey,
    prefix: str,
) -> DeviceIdentity:
    """GetCACaps, GetCACert and a PKCSReq as the profile's SCEP payload (``settings``) says."""
    platform = profile.platform
    path = _local_path(settings["URL"], prefix)
    joiner = "&" if "?" in path else "?"
    reply = await _send(exchange, stats, platform, "GET", f"{path}{joiner}operation=GetCACaps")
    if reply.status != 200:
        raise _status_failure(reply, "SCEP GetCACaps")
    caps = {c.strip().upper() for c in reply.body.decode("latin-1").split()}
    if not caps & {"AES", "SCEPSTANDARD"}:
        raise EnrollFailed("enroll_unsupported", "the SCEP server offers no AES")
    reply = await _send(exchange, stats, platform, "GET", f"{path}{joiner}operation=GetCACert")
    if reply.status != 200:
        raise _status_failure(reply, "SCEP GetCACert")
    try:
        authorities = enroll_scep.ca_certificates(reply.header("content-type") or "", reply.body)
        to = enroll_scep.recipient(authorities)
    except enroll_scep.ScepReplyError as e:
        raise EnrollFailed("enroll_protocol", str(e)) from None
    size = settings.get("Keysize")
    # The profile names the size (Apple's default is 1024: never below 2048 here).
    wanted = await _big_enough(key, size if isinstance(size, int) else 2048)
    assert isinstance(wanted, rsa.RSAPrivateKey)  # an RSA key stays RSA
    key = wanted
    subject = _subject(settings.get("Subject"), profile.id)
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    challenge = settings.get("Challenge")
    if isinstance(challenge, str) and challenge:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    csr = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    request = enroll_scep.pkcs_req(key=key, csr_der=csr, to=to, subject=subject)
    operation = f"{path}{joiner}operation=PKIOperation"
    if caps & {"POSTPKIOPERATION", "SCEPSTANDARD"}:
        headers = [("content-type", _PKI_MESSAGE)]
        reply = await _send(
            exchange, stats, platform, "POST", operation, headers=headers, body=request.body
        )
    else:
        message = quote(base64.b64encode(request.body).decode(), safe="")
        reply = await _send(exchange, stats, platform, "GET", f"{operation}&message={message}")
    if reply.status != 200:
        raise _status_failure(reply, "SCEP PKIOperation")
    try:
        answer = enroll_scep.read_cert_rep(
            reply.body, request=request, key=key, trusted=authorities
        )
    except enroll_scep.ScepReplyError as e:
        raise EnrollFailed("enroll_protocol", f"SCEP: {e}") from None
    if answer.status == enroll_scep.FAILURE:
        detail = f"SCEP FAILURE {answer.fail_info}: {answer.fail_text or ''}".strip()
        raise EnrollFailed("enroll_scep_failed", detail)
    if answer.status == enroll_scep.PENDING or answer.certificate is None:
        raise EnrollFailed("enroll_scep_pending", "SCEP: the request is pending", final=False)
    return _identity(key, answer.certificate.public_bytes(serialization.Encoding.DER))
