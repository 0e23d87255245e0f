"""Device-facing enrollment endpoints: they translate HTTP to the enrollment service and
back, nothing more.

Windows (MS-MDE2), on the OMA-DM endpoint's port:

* ``GET|POST /EnrollmentServer/Discovery.svc``: the reachability probe and Discover;
* ``POST /EnrollmentServer/Policy.svc``: MS-XCEP GetPolicies;
* ``POST /EnrollmentServer/Enrollment.svc``: MS-WSTEP RequestSecurityToken (issue, renew).

Apple:

* ``GET /mdm/apple/enroll?token=...``: the signed enrollment profile;
* ``GET|POST /mdm/apple/scep?operation=...``: the SCEP server (RFC 8894).

Refusals: SOAP faults for Windows (``s:Sender`` faults with 400, others 500, as SOAP 1.2's
HTTP binding says), a failure CertRep for a SCEP request that was read but refused, plain
text with 4xx/503 otherwise, each naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, quote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from mdmgate.enrollment import apple as profiles
from mdmgate.enrollment import cms, scep, windows_provisioning
from mdmgate.enrollment import windows as mde2
from mdmgate.enrollment.service import EnrollmentRefused, EnrollmentService, EnrollmentUnavailable
from mdmgate.server.types import Handler, Request, Response
from mdmgate.storage.enrollment import EnrollmentToken

__all__ = [
    "APPLE_ENROLL_PATH",
    "DISCOVERY_PATH",
    "ENROLLMENT_PATH",
    "PATHS",
    "POLICY_PATH",
    "SCEP_PATH",
    "EnrollmentEndpoints",
]

_log = logging.getLogger("mdmgate.enrollment")

DISCOVERY_PATH = "/EnrollmentServer/Discovery.svc"
POLICY_PATH = "/EnrollmentServer/Policy.svc"
ENROLLMENT_PATH = "/EnrollmentServer/Enrollment.svc"
APPLE_ENROLL_PATH = "/mdm/apple/enroll"
SCEP_PATH = "/mdm/apple/scep"
PATHS = (DISCOVERY_PATH, POLICY_PATH, ENROLLMENT_PATH, APPLE_ENROLL_PATH, SCEP_PATH)

#: A Host header we are willing to echo into URLs (no userinfo, paths or spaces).
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

#: Token reasons that mean "who are you" rather than "you may not".
_UNAUTHENTICATED = frozenset({"malformed", "unknown", "wrong_secret"})


def _text(status: int, message: str) -> Response:
    return Response(
        status, (("content-type", "text/plain; charset=utf-8"),), (message + "\n").encode()
    )


class EnrollmentEndpoints:
    """The handlers of :data:`PATHS`. ``tls`` says whether this gateway's port speaks
    HTTPS (for URLs built from a request's Host when ``public_url`` is not set);
    ``push_topic`` is the MDM push topic profiles name when ``[enrollment] apple_topic``
    does not."""

    def __init__(
        self,
        service: EnrollmentService,
        *,
        tls: bool,
        push_topic: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.service = service
        self.settings = service.settings
        self.tls = tls
        self.push_topic = push_topic
        self.handlers: dict[str, Handler] = {
            DISCOVERY_PATH: self.discovery,
            POLICY_PATH: self.policy,
            ENROLLMENT_PATH: self.enrollment,
            APPLE_ENROLL_PATH: self.apple_profile,
            SCEP_PATH: self.scep,
        }

    def base_url(self, request: Request) -> str | None:
        """Where devices reach this gateway: ``public_url``, else this request's Host."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        host = request.header("host")
        if host is None or not _HOST.match(host.strip()):
            return None
        return f"{'https' if self.tls else 'http'}://{host.strip()}"

    def profile_url(self, request: Request, token_value: str) -> str:
        base = self.base_url(request) or ""
        return f"{base}{APPLE_ENROLL_PATH}?token={quote(token_value, safe='')}"

    # -- Windows

    async def discovery(self, request: Request) -> Response:
        if request.method.upper() == "GET":
            # Windows probes the URL with a GET before it sends Discover.
            return Response(200, (("content-type", "text/html; charset=utf-8"),), b"")
        return await self._soap(request, self._discover)

    async def _discover(self, request: Request, read: list[str]) -> bytes:
        message = mde2.parse_discover(request.body)
        read.append(message.message_id)
        base = self._soap_base(request)
        policy_url = self.settings.windows_policy_url or base + POLICY_PATH
        enrollment_url = self.settings.windows_enrollment_url or base + ENROLLMENT_PATH
        if self.settings.windows_enrollment_url is None:
            self.service.ca  # noqa: B018 (refuses before the device is sent on)
        return mde2.discover_response(
            message,
            auth_policy="Federated"
            if self.settings.windows_auth_policy == "Federated"
            else "OnPremise",
            policy_url=policy_url,
            enrollment_url=enrollment_url,
            authentication_url=self.settings.windows_federated_url
            if self.settings.windows_auth_policy == "Federated"
            else None,
        )

    async def policy(self, request: Request) -> Response:
        return await self._soap(request, self._policies)

    async def _policies(self, request: Request, read: list[str]) -> bytes:
        message = mde2.parse_get_policies(request.body)
        read.append(message.message_id)
        if self.settings.windows_enrollment_url is None:
            self.service.ca  # noqa: B018 (no policy to hand out when nothing would be issued)
        credential = message.password or message.security_token or ""
        await self.service.check_token(credential, platform="windows")
        return mde2.policies_response(message, min_key_bits=self.settings.min_rsa_bits)

    async def enrollment(self, request: Request) -> Response:
        return await self._soap(request, self._enroll)

    async def _enroll(self, request: Request, read: list[str]) -> bytes:
        message = mde2.parse_enrollment(request.body)
        read.append(message.message_id)
        base = self._soap_base(request)
        s = self.settings
        settings = windows_provisioning.DmClientSettings(
            server_url=base + "/ManagementServer/MDM.svc",
            renewal_url=base + ENROLLMENT_PATH,
            encoding="wbxml" if s.windows_encoding == "wbxml" else "xml",
            first_interval_minutes=s.windows_first_poll_minutes,
            first_retries=s.windows_first_polls,
            second_interval_minutes=s.windows_poll_minutes,
            renew_period_days=s.windows_renew_days,
        )
        if message.request_type == "renew":
            # The current certificate: the TLS client's, else the renewal's verified signer.
            identity = request.client_cert or message.signer_certificate_der
            if identity is None:
                raise EnrollmentRefused(
                    "unknown",
                    "a renewal must be signed with, or sent over TLS with, the current certificate",
                )
            issued = await self.service.renew_windows(
                identity_der=identity, csr_der=message.csr_der
            )
            doc = windows_provisioning.renewal_doc(
                device_der=issued.der, enrollment_type=message.enrollment_type, settings=settings
            )
            return mde2.enrollment_response(message, doc)
        device_id = message.device_id or ""
        # OMA-DM credentials the provisioning document must carry (MS-MDE2 wants both
        # levels); kept with the device so that the gateway can answer a server challenge.
        account = windows_provisioning.DmCredentials.random(device_id or "device")
        issued = await self.service.enroll_windows(
            token_value=message.password or message.security_token or "",
            csr_der=message.csr_der,
            context=message.context,
            account={
                "server_username": settings.provider_id,
                "server_secret": account.server_secret,
                "server_nonce": account.server_nonce,
            },
        )
        doc = windows_provisioning.provisioning_doc(
            ca_der=issued.ca_der,
            device_der=issued.der,
            enrollment_type=message.enrollment_type,
            settings=settings,
            device_id=device_id,
            upn=message.username,
            credentials=account,
        )
        return mde2.enrollment_response(message, doc)

    def _soap_base(self, request: Request) -> str:
        base = self.base_url(request)
        if base is None:
            raise mde2.EnrollmentFault(
                "s:Sender", "s:MessageFormat", "no usable Host header to build the service URLs"
            )
        return base

    async def _soap(
        self, request: Request, answer: Callable[[Request, list[str]], Awaitable[bytes]]
    ) -> Response:
        if request.method.upper() != "POST":
            return _text(405, f"{request.path} takes POST")
        # The MessageID once the request is read: a refusal after that answers it.
        read: list[str] = []
        try:
            try:
                body = await answer(request, read)
            except EnrollmentRefused as refused:
                _log.info("Windows enrollment refused (%s): %s", refused.reason, refused)
                raise _fault_of(refused) from None
            except EnrollmentUnavailable as e:
                raise mde2.EnrollmentFault("s:Receiver", "s:EnrollmentServer", str(e)) from None
        except mde2.EnrollmentFault as fault:
            return self._fault(fault, fault.message_id or (read[0] if read else None))
        return Response(200, (("content-type", mde2.CONTENT_TYPE),), body)

    @staticmethod
    def _fault(fault: mde2.EnrollmentFault, relates_to: str | None) -> Response:
        body = mde2.soap_fault(fault, relates_to=relates_to)
        headers = (("content-type", mde2.CONTENT_TYPE),)
        return Response(fault.http_status, headers, body, {"error": str(fault)})

    # -- Apple

    async def apple_profile(self, request: Request) -> Response:
        if request.method.upper() != "GET":
            return _text(405, f"{APPLE_ENROLL_PATH} takes GET")
        value = dict(parse_qsl(request.query)).get("token", "")
        base = self.base_url(request)
        topic = self.settings.apple_topic or self.push_topic()
        if base is None or not topic:
            return _text(
                400 if base is None else 503,
                "no usable Host header to build the profile's URLs"
                if base is None
                else "no MDM push topic: upload the push certificate"
                " (PUT /api/v1/apns/certificate) or set [enrollment] apple_topic",
            )
        try:
            profile = await self._profile(value, base, topic)
        except profiles.EnrollmentProfileError as e:
            # A setting (topic, URL) the profile cannot carry: the operator's to fix.
            _log.error("Apple enrollment profile cannot be built: %s", e)
            return _text(500, f"the gateway's enrollment settings are unusable: {e}")
        except EnrollmentRefused as refused:
            _log.info("Apple profile refused (%s): %s", refused.reason, refused)
            status = 401 if refused.reason in _UNAUTHENTICATED else 403
            return _text(status, f"enrollment token refused: {refused}")
        except EnrollmentUnavailable as e:
            return _text(503, str(e))
        return Response(
            200,
            (
                ("content-type", "application/x-apple-aspen-config"),
                ("content-disposition", 'attachment; filename="enroll.mobileconfig"'),
            ),
            profile,
        )

    async def _profile(self, token_value: str, base: str, topic: str) -> bytes:
        """The signed profile for one download with ``token_value`` (one use counted)."""
        token = await self.service.apple_profile_token(token_value)
        mdm = profiles.MdmSettings(
            server_url=base + "/mdm/apple/connect",
            checkin_url=base + "/mdm/apple/checkin",
            topic=topic,
        )
        profile = profiles.enrollment_profile(
            mdm=mdm,
            identity=self._identity(token, base),
            ca_der=self.service.ca.der,
            organization=self.settings.apple_organization,
            identifier=f"mdmgate.enrollment.{token.id}",
            display_name=f"{self.settings.apple_organization} device management",
            allow_http=base.startswith("http://"),
        )
        return self._sign(profile)

    def _identity(
        self, token: EnrollmentToken, base: str
    ) -> profiles.ScepIdentity | profiles.AcmeIdentity:
        s = self.settings
        org = self.settings.apple_organization
        if s.apple_acme_url:
            return profiles.AcmeIdentity(directory_url=s.apple_acme_url, client_identifier=token.id)
        if s.apple_scep_url:
            return profiles.ScepIdentity(
                url=s.apple_scep_url,
                challenge=s.apple_scep_challenge or "",
                subject=f"CN=mdmgate device/O={org}",
                name=org,
            )
        return profiles.ScepIdentity(
            url=base + SCEP_PATH,
            challenge=self.service.scep_challenge(token),
            subject=f"CN=mdmgate device/O={org}",
            name=org,
        )

    def _sign(self, profile: bytes) -> bytes:
        s = self.settings
        if s.apple_profile_cert and s.apple_profile_key:
            with open(s.apple_profile_cert, "rb") as f:
                certs = x509.load_pem_x509_certificates(f.read())
            with open(s.apple_profile_key, "rb") as f:
                key = load_pem_private_key(f.read(), (s.ca_passphrase or "").encode() or None)
            return cms.sign_attached(profile, certs[0], key, chain=certs[1:])  # type: ignore[arg-type]
        return self.service.ca.sign(profile)

    async def scep(self, request: Request) -> Response:
        query = dict(parse_qsl(request.query, keep_blank_values=True))
        operation = query.get("operation", "")
        try:
            ca = self.service.ca
        except EnrollmentUnavailable as e:
            return _text(503, str(e))
        if operation == "GetCACaps":
            return Response(200, (("content-type", "text/plain"),), scep.ca_caps_response())
        if operation == "GetCACert":
            content_type, body = scep.ca_cert_response(ca.der)
            return Response(200, (("content-type", content_type),), body)
        if operation != "PKIOperation":
            return _text(400, f"unknown SCEP operation {operation!r}")
        return await self._pki_operation(request, query.get("message"))

    async def _pki_operation(self, request: Request, query_message: str | None) -> Response:
        ca = self.service.ca
        message = request.body
        if request.method.upper() != "POST":
            try:
                message = base64.b64decode(query_message or "", validate=False)
            except (binascii.Error, ValueError):
                return _text(400, "SCEP message is not base64")
        try:
            pki = scep.parse_pki_message(message, ca_cert=ca.certificate, ca_key=ca.rsa_key())
        except scep.ScepRefused as refused:
            # Read far enough to answer: a failure CertRep says why (RFC 8894 3.3.2).
            _log.info("SCEP request refused: %s", refused)
            reply = scep.cert_rep(
                refused.transaction,
                ca_cert=ca.certificate,
                ca_key=ca.rsa_key(),
                fail_info=refused.fail_info,
                fail_text=str(refused),
            )
            return Response(
                200, (("content-type", scep.CONTENT_TYPE_PKI),), reply, {"error": str(refused)}
            )
        except scep.ScepError as e:
            return _text(400, f"SCEP: {e}")
        log: dict[str, str] = {}
        try:
            issued = await self.service.issue_scep(challenge=pki.challenge, csr_der=pki.csr_der)
            reply = scep.cert_rep(
                pki, ca_cert=ca.certificate, ca_key=ca.rsa_key(), issued=issued.certificate
            )
        except EnrollmentRefused as refused:
            _log.info("SCEP %s refused (%s): %s", pki.transaction_id, refused.reason, refused)
            log["error"] = f"SCEP refused: {refused}"
            reply = scep.cert_rep(
                pki,
                ca_cert=ca.certificate,
                ca_key=ca.rsa_key(),
                fail_info=scep.FailInfo.BAD_REQUEST,
                fail_text=str(refused),
            )
        return Response(200, (("content-type", scep.CONTENT_TYPE_PKI),), reply, log)


def _fault_of(refused: EnrollmentRefused) -> mde2.EnrollmentFault:
    if refused.reason in _UNAUTHENTICATED:
        return mde2.EnrollmentFault("s:Sender", "s:Authentication", str(refused))
    if refused.reason in ("weak_key", "bad_request"):
        return mde2.EnrollmentFault("s:Sender", "s:CertificateRequest", str(refused))
    return mde2.EnrollmentFault("s:Sender", "s:Authorization", str(refused))
