"""The Apple enrollment profile (``.mobileconfig``) that ``GET /mdm/apple/enroll`` answers.

:func:`enrollment_profile` writes an unsigned XML property list of type
``Configuration`` holding these payloads, certificates first (Apple installs certificate
payloads before the MDM payload):

1. ``com.apple.security.root``: the gateway's CA, so that the device trusts the server's
   certificate chain (and the SCEP CA) when they are ours (an issuing CA below an
   enterprise root goes in ``com.apple.security.pkcs1``, followed by its chain);
2. the device identity: ``com.apple.security.scep`` (the gateway's own SCEP server with a
   one-time challenge, or an external one) or ``com.apple.security.acme`` (iOS 16,
   macOS 13.1 and later);
3. ``com.apple.mdm``, whose ``IdentityCertificateUUID`` is the identity payload's
   ``PayloadUUID``.

Every payload has ``PayloadVersion`` 1 and a fresh upper-case UUID. Signing the profile
(CMS) is the caller's job. Inputs are checked against Apple's documented rules; a problem
raises :class:`EnrollmentProfileError` naming the field (``mdm.topic``,
``identity.subject``, ``ca_der``...).
"""

from __future__ import annotations

import plistlib
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from mdmgate.errors import MdmgateError

__all__ = [
    "ACCESS_RIGHTS_ALL",
    "SERVER_CAPABILITIES",
    "AcmeIdentity",
    "EnrollmentProfileError",
    "MdmSettings",
    "ScepIdentity",
    "enrollment_profile",
]

#: The MDM payload's AccessRights bits (Apple, "MDM" payload), ORed together:
#: 1 inspect configuration profiles, 2 install/remove configuration profiles, 4 device
#: lock and passcode removal, 8 device erase, 16 query device information, 32 query
#: network information, 64 inspect provisioning profiles, 128 install/remove provisioning
#: profiles, 256 inspect installed applications, 512 restriction-related queries, 1024
#: security-related queries, 2048 manipulate settings, 4096 app management. 8191 is all.
ACCESS_RIGHTS_ALL = 8191

#: ServerCapabilities values Apple defines: user-channel connections (required for macOS
#: and Shared iPad), Bootstrap Token escrow (macOS 11+), and the GetToken check-in.
SERVER_CAPABILITIES = frozenset(
    {
        "com.apple.mdm.per-user-connections",
        "com.apple.mdm.bootstraptoken",
        "com.apple.mdm.token",
    }
)


class EnrollmentProfileError(MdmgateError, ValueError):
    """An input :func:`enrollment_profile` will not write. ``field`` names it
    (``mdm.server_url``, ``identity.key_size``, ``ca_der``...); the message starts with it.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple[type[EnrollmentProfileError], tuple[str, str]]:
        return (type(self), (self.field, self.problem))


@dataclass(frozen=True, kw_only=True)
class ScepIdentity:
    """A device identity from a SCEP server (``com.apple.security.scep``).

    ``subject`` is an X.500 name as ``CN=device/O=Example`` (a leading ``/`` is allowed;
    types are C, L, ST, O, OU, CN or dotted OIDs; a value may hold ``/`` unless another
    ``TYPE=`` follows it). ``challenge`` is the pre-shared secret; ``None`` or empty leaves
    it out, for an external server that authenticates otherwise. ``name`` is the CA
    instance (CA-IDENT) some servers want. ``key_usage``: 1 signing, 4 encryption, 5 both
    (the default: the identity signs TLS handshakes and Mdm-Signature, and devices may be
    sent payloads encrypted to it). Keys are RSA, 2048 or 4096 bits.
    """

    url: str
    challenge: str | None
    subject: str
    name: str = ""
    key_size: int = 2048
    key_usage: int = 5


@dataclass(frozen=True, kw_only=True)
class AcmeIdentity:
    """A device identity from an ACME server (``com.apple.security.acme``).

    ``client_identifier`` is what the device presents (a one-time token, for instance).
    ``subject`` defaults to ``CN=<client_identifier>``. ``key_type`` is
    ``ECSECPrimeRandom`` (P-256/384/521, by ``key_size``) or ``RSA`` (2048 to 4096, a
    multiple of 8). ``hardware_bound`` keys live in the Secure Enclave and must be
    P-256 or P-384; ``attest`` (Managed Device Attestation) needs ``hardware_bound``.
    """

    directory_url: str
    client_identifier: str
    subject: str | None = None
    key_type: str = "ECSECPrimeRandom"
    key_size: int = 384
    hardware_bound: bool = False
    attest: bool = False


@dataclass(frozen=True, kw_only=True)
class MdmSettings:
    """The ``com.apple.mdm`` payload.

    ``topic`` is the push topic of the gateway's APNs certificate (``com.apple.mgmt.``
    prefix). ``checkin_url`` ``None`` lets the device check in at ``server_url``.
    ``access_rights`` is :data:`ACCESS_RIGHTS_ALL` by default: the gateway relays whatever
    commands its operators send, so the profile must not forbid any. ``sign_message`` makes
    the device send an ``Mdm-Signature`` header, which the gateway verifies, so messages
    stay authenticated behind a TLS-terminating proxy. ``check_out_when_removed`` makes
    the device send CheckOut when the profile is removed, so the device record is closed
    at once. ``server_capabilities``: ``per-user-connections`` is required to enrol macOS
    (the gateway answers the user channel's UserAuthenticate with 410, which declines it
    cleanly) and ``bootstraptoken`` lets macOS escrow its Bootstrap Token, which the
    gateway stores and returns.
    """

    server_url: str
    checkin_url: str | None = None
    topic: str
    access_rights: int = ACCESS_RIGHTS_ALL
    sign_message: bool = True
    check_out_when_removed: bool = True
    server_capabilities: tuple[str, ...] = (
        "com.apple.mdm.per-user-connections",
        "com.apple.mdm.bootstraptoken",
    )
    use_development_apns: bool = False


def enrollment_profile(
    *,
    mdm: MdmSettings,
    identity: ScepIdentity | AcmeIdentity,
    ca_der: bytes,
    organization: str,
    identifier: str,
    display_name: str,
    profile_uuid: str | None = None,
    allow_http: bool = False,
    ca_chain: Sequence[bytes] = (),
) -> bytes:
    """The enrollment profile as an XML plist (see the module documentation).

    ``identifier`` is the profile's reverse-DNS ``PayloadIdentifier``; the payloads get
    ``<identifier>.ca``, ``.scep``/``.acme`` and ``.mdm``. ``profile_uuid`` fixes the
    profile's UUID (fresh otherwise; the payloads' always are). URLs must be https unless
    ``allow_http`` (for tests on a loopback listener).

    ``ca_der`` is the gateway's CA. A self-signed root goes in ``com.apple.security.root``
    (the device then trusts it); an issuing CA below an enterprise root goes in
    ``com.apple.security.pkcs1``, and ``ca_chain`` adds the certificates above it the
    same way (Apple wants the whole chain in the profile that holds the MDM payload).
    """
    if not isinstance(mdm, MdmSettings):
        raise EnrollmentProfileError("mdm", f"must be MdmSettings, not {type(mdm).__name__}")
    organization = _text(organization, "organization")
    identifier = _identifier(identifier, "identifier")
    display_name = _text(display_name, "display_name")
    if profile_uuid is None:
        profile_uuid = _new_uuid()
    else:
        try:
            profile_uuid = str(uuid.UUID(profile_uuid)).upper()
        except (ValueError, TypeError, AttributeError):
            raise EnrollmentProfileError("profile_uuid", f"{profile_uuid!r} is no UUID") from None

    def payload(kind: str, suffix: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "PayloadType": kind,
            "PayloadVersion": 1,
            "PayloadIdentifier": f"{identifier}.{suffix}",
            "PayloadUUID": _new_uuid(),
            "PayloadDisplayName": name,
            "PayloadOrganization": organization,
            **body,
        }

    if isinstance(ca_chain, bytes | str):
        raise EnrollmentProfileError("ca_chain", "must be a sequence of DER certificates")
    authorities = [(ca_der, "ca_der")] + [(d, f"ca_chain[{i}]") for i, d in enumerate(ca_chain)]
    seen: set[bytes] = set()
    certificates = []
    for index, (der, field) in enumerate(authorities):
        kind, name = _authority(der, field)
        if der in seen:
            raise EnrollmentProfileError(field, "repeats a certificate already in the profile")
        seen.add(der)
        body = {"PayloadContent": der, "PayloadCertificateFileName": f"ca{index}.cer"}
        certificates.append(payload(kind, f"ca{index or ''}", name, body))
    if isinstance(identity, ScepIdentity):
        device = payload(
            "com.apple.security.scep", "scep", "Device identity (SCEP)",
            {"PayloadContent": _scep(identity, allow_http)},
        )  # fmt: skip
    elif isinstance(identity, AcmeIdentity):
        device = payload(
            "com.apple.security.acme", "acme", "Device identity (ACME)",
            _acme(identity, allow_http),
        )  # fmt: skip
    else:
        raise EnrollmentProfileError(
            "identity", f"must be a ScepIdentity or an AcmeIdentity, not {type(identity).__name__}"
        )
    management = payload(
        "com.apple.mdm", "mdm", "Device management", _mdm(mdm, device["PayloadUUID"], allow_http)
    )
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": profile_uuid,
        "PayloadDisplayName": display_name,
        "PayloadOrganization": organization,
        "PayloadContent": [*certificates, device, management],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


# --- payload bodies ----------------------------------------------------------------------


def _authority(der: object, field: str) -> tuple[str, str]:
    """The payload type for a CA certificate (root or not) and a display name for it."""
    if not isinstance(der, bytes) or not der:
        raise EnrollmentProfileError(field, "must be the DER of a certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = _clean(str(names[0].value)) if names else ""
        self_issued = cert.issuer == cert.subject
    except (ValueError, x509.InvalidVersion) as exc:
        raise EnrollmentProfileError(field, f"not a DER X.509 certificate ({exc})") from None
    if not self_issued:
        return "com.apple.security.pkcs1", name or "Certificate authority"
    # A root the device will trust as an anchor: it must at least be what it claims.
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        detail = str(exc) or type(exc).__name__
        raise EnrollmentProfileError(field, f"self-signature does not verify ({detail})") from None
    return "com.apple.security.root", name or "Root certificate authority"


def _scep(identity: ScepIdentity, allow_http: bool) -> dict[str, Any]:
    content: dict[str, Any] = {
        "URL": _url(identity.url, "identity.url", allow_http),
        "Subject": _subject(identity.subject, "identity.subject"),
        "Keysize": identity.key_size,
        "Key Type": "RSA",
        "Key Usage": identity.key_usage,
    }
    # 1024-bit keys are no longer safe for a credential that lives as long as enrollment.
    if identity.key_size not in (2048, 4096):
        raise EnrollmentProfileError("identity.key_size", "must be 2048 or 4096 (RSA bits)")
    if identity.key_usage not in (1, 4, 5):
        raise EnrollmentProfileError(
            "identity.key_usage", "must be 1 (signing), 4 (encryption) or 5 (both)"
        )
    if identity.challenge:
        content["Challenge"] = _text(identity.challenge, "identity.challenge")
    elif identity.challenge is not None and not isinstance(identity.challenge, str):
        raise EnrollmentProfileError("identity.challenge", "must be a string or None")
    if identity.name:
        content["Name"] = _text(identity.name, "identity.name")
    return content


def _acme(identity: AcmeIdentity, allow_http: bool) -> dict[str, Any]:
    client_identifier = _text(identity.client_identifier, "identity.client_identifier")
    subject = identity.subject if identity.subject is not None else f"CN={client_identifier}"
    key_type, size = identity.key_type, identity.key_size
    if key_type == "ECSECPrimeRandom":
        # P-192 offers too little security for a device credential.
        if size not in (256, 384, 521):
            raise EnrollmentProfileError(
                "identity.key_size", "an ECSECPrimeRandom key is 256, 384 or 521 bits"
            )
        if identity.hardware_bound and size == 521:
            raise EnrollmentProfileError(
                "identity.key_size", "a hardware-bound key is P-256 or P-384"
            )
    elif key_type == "RSA":
        if not (2048 <= size <= 4096 and size % 8 == 0):
            raise EnrollmentProfileError(
                "identity.key_size", "an RSA key is 2048 to 4096 bits, a multiple of 8"
            )
        if identity.hardware_bound:
            raise EnrollmentProfileError(
                "identity.hardware_bound", "a hardware-bound key must be ECSECPrimeRandom"
            )
    else:
        raise EnrollmentProfileError(
            "identity.key_type", f"must be ECSECPrimeRandom or RSA, not {key_type!r}"
        )
    if identity.attest and not identity.hardware_bound:
        raise EnrollmentProfileError("identity.attest", "attestation needs hardware_bound")
    return {
        "DirectoryURL": _url(identity.directory_url, "identity.directory_url", allow_http),
        "ClientIdentifier": client_identifier,
        "KeyType": key_type,
        "KeySize": size,
        "HardwareBound": bool(identity.hardware_bound),
        # Written even when false: macOS before 14 requires the key (with false).
        "Attest": bool(identity.attest),
        "Subject": _subject(subject, "identity.subject"),
    }


def _mdm(mdm: MdmSettings, identity_uuid: str, allow_http: bool) -> dict[str, Any]:
    topic = _text(mdm.topic, "mdm.topic")
    if not topic.startswith("com.apple.mgmt.") or any(c.isspace() for c in topic):
        raise EnrollmentProfileError(
            "mdm.topic", f"{topic!r} is not an MDM push topic (com.apple.mgmt.…)"
        )
    rights = mdm.access_rights
    if not isinstance(rights, int) or not 0 < rights <= ACCESS_RIGHTS_ALL:
        raise EnrollmentProfileError("mdm.access_rights", f"must be 1 to 8191, not {rights!r}")
    if rights & 2 and not rights & 1:
        raise EnrollmentProfileError(
            "mdm.access_rights", "2 (install profiles) needs 1 (inspect profiles)"
        )
    if rights & 128 and not rights & 64:
        raise EnrollmentProfileError(
            "mdm.access_rights",
            "128 (install provisioning profiles) needs 64 (inspect provisioning profiles)",
        )
    capabilities = tuple(mdm.server_capabilities)
    unknown = [c for c in capabilities if c not in SERVER_CAPABILITIES]
    if unknown:
        raise EnrollmentProfileError(
            "mdm.server_capabilities", f"unknown capability {unknown[0]!r}"
        )
    if len(set(capabilities)) != len(capabilities):
        raise EnrollmentProfileError("mdm.server_capabilities", "lists a capability twice")
    body: dict[str, Any] = {
        "IdentityCertificateUUID": identity_uuid,
        "Topic": topic,
        "ServerURL": _url(mdm.server_url, "mdm.server_url", allow_http),
        "AccessRights": rights,
        "SignMessage": bool(mdm.sign_message),
        "CheckOutWhenRemoved": bool(mdm.check_out_when_removed),
    }
    if mdm.checkin_url is not None:
        body["CheckInURL"] = _url(mdm.checkin_url, "mdm.checkin_url", allow_http)
    if capabilities:
        body["ServerCapabilities"] = list(capabilities)
    if mdm.use_development_apns:
        body["UseDevelopmentAPNS"] = True
    return body


# --- field checks ------------------------------------------------------------------------

_SUBJECT_TYPES = frozenset({"C", "L", "ST", "O", "OU", "CN"})
# A "/" starts a new RDN only where a "TYPE=" follows it, so values may hold slashes.
_RDN_BREAK = re.compile(r"/(?=(?:[A-Z]+|[0-9]+(?:\.[0-9]+)+)=)")
_DOTTED_OID = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _clean(value: str) -> str:
    return "".join(c for c in value if not _forbidden(c))


def _forbidden(character: str) -> bool:
    # XML 1.0 cannot carry control characters, surrogates, U+FFFE or U+FFFF.
    return unicodedata.category(character) in ("Cc", "Cs") or character in "\ufffe\uffff"


def _text(value: object, field: str) -> str:
    """A non-empty string an XML plist can carry."""
    if not isinstance(value, str) or not value:
        raise EnrollmentProfileError(field, "must be a non-empty string")
    bad = next((c for c in value if _forbidden(c)), None)
    if bad is not None:
        raise EnrollmentProfileError(field, f"holds the character U+{ord(bad):04X}")
    return value


def _identifier(value: object, field: str) -> str:
    text = _text(value, field)
    if not _IDENTIFIER.fullmatch(text):
        raise EnrollmentProfileError(
            field, f"{text!r} is not a reverse-DNS identifier (letters, digits, . _ -)"
        )
    return text


def _url(value: object, field: str, allow_http: bool) -> str:
    text = _text(value, field)
    schemes = ("https", "http") if allow_http else ("https",)
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as exc:
        raise EnrollmentProfileError(field, f"{text!r} is not a URL ({exc})") from None
    if parts.scheme.lower() not in schemes:
        raise EnrollmentProfileError(field, f"{text!r} must be an {' or '.join(schemes)} URL")
    if not parts.hostname:
        raise EnrollmentProfileError(field, f"{text!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise EnrollmentProfileError(field, "a URL must not carry credentials")
    if not port_ok or any(c.isspace() for c in text):
        raise EnrollmentProfileError(field, f"{text!r} is not a valid URL")
    return text


def _subject(value: object, field: str) -> list[list[list[str]]]:
    """``CN=a/O=b`` as Apple's array of RDNs, each an array of [type, value] pairs."""
    text = _text(value, field)
    rdns: list[list[list[str]]] = []
    for part in _RDN_BREAK.split(text.removeprefix("/")):
        kind, equals, content = part.partition("=")
        if not equals:
            raise EnrollmentProfileError(field, f"{part!r} is not TYPE=value")
        if kind not in _SUBJECT_TYPES and not _DOTTED_OID.fullmatch(kind):
            raise EnrollmentProfileError(
                field, f"{kind!r} is not C, L, ST, O, OU, CN or a dotted OID"
            )
        if not content:
            raise EnrollmentProfileError(field, f"{kind} has an empty value")
        rdns.append([[kind, content]])
    return rdns


def _new_uuid() -> str:
    return str(uuid.uuid4()).upper()
