"""The admin API of enrollment: tokens, issued certificates, the CA, and the APNs push
certificate.

* ``POST /api/v1/enrollment/tokens`` creates a token (its value is shown in this answer
  only), ``GET`` lists them (``?org=``), ``GET|DELETE .../tokens/{id}`` shows or revokes one;
* ``GET /api/v1/enrollment/certificates`` pages through issued certificates
  (``?device_id=&after=&limit=``), ``GET .../certificates/{serial}`` shows one with its PEM,
  ``POST .../certificates/{serial}/revoke`` revokes it;
* ``GET /api/v1/enrollment/ca`` is the CA certificate devices and proxies trust;
* ``PUT|GET /api/v1/apns/certificate`` uploads or shows the MDM push certificate.

On a gateway without enrollment (no :class:`EnrollmentApi`), these operations answer 503.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding
from msgspec import Meta, Struct

from mdmgate.enrollment import push_certificate
from mdmgate.enrollment.service import EnrollmentService, EnrollmentUnavailable
from mdmgate.server.api_base import (
    _ORG_PATTERN,
    _PATTERNS,
    Error,
    OrgPath,
    _check_content_type,
    _decode,
    _json,
    _query,
    _query_limit,
    _Refusal,
    _refuse,
)
from mdmgate.server.routes import Handler, Operation, QueryParam
from mdmgate.server.types import Request, Response
from mdmgate.storage.enrollment import EnrollmentToken, IssuedCertificate

__all__ = ["REQUEST_TYPES", "RESPONSE_TYPES", "EnrollmentApi", "operations"]

#: The longest a token may live: a year (re-issue rather than hand out a forever-token).
MAX_TOKEN_HOURS = 24 * 366


class TokenIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A new enrollment token: devices that enrol with it land in `org`."""

    org: OrgPath
    expires_in_hours: Annotated[
        float, Meta(gt=0, le=MAX_TOKEN_HOURS, description="How long it is usable, in hours.")
    ] = 24.0
    max_uses: (
        Annotated[int, Meta(ge=1, description="How many devices may enrol with it.")] | None
    ) = None
    platforms: Annotated[
        list[Literal["windows", "apple"]],
        Meta(description="The platforms it enrols; empty: both."),
    ] = []
    description: Annotated[str, Meta(max_length=1024)] = ""


class TokenOut(Struct):
    id: str
    org: str
    state: Annotated[Literal["active", "expired", "exhausted", "revoked"], Meta(description="Now.")]
    created_at: str
    expires_at: str
    max_uses: int | None
    uses: int
    platforms: list[str]
    description: str
    revoked_at: str | None


class TokenCreated(Struct):
    token: TokenOut
    value: Annotated[
        str,
        Meta(
            description="The token itself, shown only here: the password for Windows"
            " enrollment, the `token` of the Apple profile URL."
        ),
    ]
    apple_profile_url: Annotated[
        str, Meta(description="Where an Apple device downloads its enrollment profile.")
    ]


class TokenList(Struct):
    tokens: list[TokenOut]


class CertificateOut(Struct):
    serial: str
    sha256: str
    subject: str
    org: str
    platform: str
    device_id: str | None
    token_id: str | None
    issued_at: str
    not_after: str
    renews: str | None
    revoked_at: str | None
    revocation_reason: str | None
    pem: str | None = None


class CertificateList(Struct):
    certificates: list[CertificateOut]
    next: Annotated[str | None, Meta(description="`after` for the next page; `null`: done.")]


class RevokeIn(Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=512)] = "revoked by an administrator"


class CaOut(Struct):
    subject: str
    serial: str
    sha256: str
    not_after: str
    pem: str


class PushCertificateIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """The MDM push certificate: `pem` (certificate and private key, the key encrypted with
    `password` or not), or `pkcs12` (base64 of the .p12 file) with its `password`."""

    pem: str | None = None
    pkcs12: str | None = None
    password: Annotated[str, Meta(max_length=1024)] | None = None


class PushCertificateOut(Struct):
    topic: str
    subject: str
    not_after: str
    days_left: float
    expiring: Annotated[
        bool, Meta(description=f"Fewer than {push_certificate.WARN_DAYS} days left: renew it.")
    ]


REQUEST_TYPES: tuple[type[Any], ...] = (TokenIn, RevokeIn, PushCertificateIn)
RESPONSE_TYPES: tuple[type[Any], ...] = (
    TokenOut,
    TokenCreated,
    TokenList,
    CertificateOut,
    CertificateList,
    CaOut,
    PushCertificateOut,
)


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _token_state(
    token: EnrollmentToken, now: float
) -> Literal["active", "expired", "exhausted", "revoked"]:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at <= now:
        return "expired"
    if token.max_uses is not None and token.uses >= token.max_uses:
        return "exhausted"
    return "active"


def token_out(token: EnrollmentToken, now: float) -> TokenOut:
    return TokenOut(
        id=token.id,
        org=token.org,
        state=_token_state(token, now),
        created_at=_iso(token.created_at) or "",
        expires_at=_iso(token.expires_at) or "",
        max_uses=token.max_uses,
        uses=token.uses,
        platforms=list(token.platforms),
        description=token.description,
        revoked_at=_iso(token.revoked_at),
    )


def certificate_out(cert: IssuedCertificate, *, pem: bool = False) -> CertificateOut:
    text = None
    if pem:
        body = base64.encodebytes(cert.der).decode("ascii")
        text = f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"
    return CertificateOut(
        serial=cert.serial,
        sha256=cert.sha256,
        subject=cert.subject,
        org=cert.org,
        platform=cert.platform,
        device_id=cert.device_id,
        token_id=cert.token_id,
        issued_at=_iso(cert.issued_at) or "",
        not_after=_iso(cert.not_after) or "",
        renews=cert.renews,
        revoked_at=_iso(cert.revoked_at),
        revocation_reason=cert.revocation_reason,
        pem=text,
    )


def push_out(
    pushed: push_certificate.PushCertificate, now: datetime.datetime
) -> PushCertificateOut:
    left = pushed.days_left(now)
    return PushCertificateOut(
        topic=pushed.topic,
        subject=pushed.certificate.subject.rfc4514_string(),
        not_after=pushed.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        days_left=round(left, 2),
        expiring=left < push_certificate.WARN_DAYS,
    )


class EnrollmentApi:
    """The handlers of ``/api/v1/enrollment/...`` and ``/api/v1/apns/certificate``.
    ``profile_url`` gives the Apple profile URL of a token value (where the gateway is
    reached depends on the deployment)."""

    def __init__(
        self,
        service: EnrollmentService,
        profile_url: Callable[[Request, str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.profile_url = profile_url
        self.clock = clock

    async def create_token(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        given = _decode(request.body, TokenIn)
        now = self.clock()
        try:
            token, value = await self.service.create_token(
                given.org,
                expires_at=now + given.expires_in_hours * 3600.0,
                max_uses=given.max_uses,
                platforms=sorted(set(given.platforms)),
                description=given.description,
            )
        except ValueError as e:
            raise _refuse(422, str(e)) from None
        created = TokenCreated(token_out(token, now), value, self.profile_url(request, value))
        return _json(201, created)

    async def list_tokens(self, request: Request, params: Mapping[str, str]) -> Response:
        org = _query(request, ("org",)).get("org", [""])[0] or None
        if org is not None and re.fullmatch(_ORG_PATTERN, org) is None:
            raise _refuse(422, f"org must be {_PATTERNS[_ORG_PATTERN]}", "org")
        found = await self.service.store.list_tokens(org)
        now = self.clock()
        return _json(200, TokenList([token_out(t, now) for t in found]))

    async def show_token(self, request: Request, params: Mapping[str, str]) -> Response:
        return await self._token(params["id"], revoke=False)

    async def revoke_token(self, request: Request, params: Mapping[str, str]) -> Response:
        return await self._token(params["id"], revoke=True)

    async def _token(self, token_id: str, *, revoke: bool) -> Response:
        store = self.service.store
        found = await (
            store.revoke_token(token_id, at=self.clock()) if revoke else store.get_token(token_id)
        )
        if found is None:
            raise _refuse(404, f"no enrollment token {token_id!r}")
        return _json(200, token_out(found, self.clock()))

    async def list_certificates(self, request: Request, params: Mapping[str, str]) -> Response:
        query = _query(request, ("device_id", "after", "limit"))
        limit = _query_limit(query.get("limit"))
        found = await self.service.store.list_certificates(
            device_id=query.get("device_id", [""])[0] or None,
            after=query.get("after", [""])[0] or None,
            limit=limit,
        )
        following = found[-1].serial if len(found) == limit else None
        return _json(200, CertificateList([certificate_out(c) for c in found], following))

    async def show_certificate(self, request: Request, params: Mapping[str, str]) -> Response:
        serial = params["serial"]
        found = await self.service.store.get_certificate(serial.lower())
        if found is None:
            raise _refuse(404, f"no certificate with serial {serial!r}")
        return _json(200, certificate_out(found, pem=True))

    async def revoke_certificate(self, request: Request, params: Mapping[str, str]) -> Response:
        serial = params["serial"]
        reason = RevokeIn().reason
        if request.body.strip():
            _check_content_type(request)
            reason = _decode(request.body, RevokeIn).reason
        serial = serial.lower()
        if await self.service.store.get_certificate(serial) is None:
            raise _refuse(404, f"no certificate with serial {serial!r}")
        await self.service.revoke_certificate(serial, reason)
        found = await self.service.store.get_certificate(serial)
        assert found is not None
        return _json(200, certificate_out(found, pem=True))

    async def show_ca(self, request: Request, params: Mapping[str, str]) -> Response:
        ca = self.service.ca
        cert = ca.certificate
        return _json(
            200,
            CaOut(
                subject=cert.subject.rfc4514_string(),
                serial=format(cert.serial_number, "x"),
                sha256=cert.fingerprint(SHA256()).hex(),
                not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                pem=cert.public_bytes(Encoding.PEM).decode("ascii"),
            ),
        )

    async def put_push(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        given = _decode(request.body, PushCertificateIn)
        password = given.password.encode() if given.password is not None else None
        try:
            if (given.pem is None) == (given.pkcs12 is None):
                raise _refuse(422, "give pem or pkcs12 (one of them)", "$")
            if given.pem is not None:
                pushed = push_certificate.from_pem(given.pem.encode(), password)
            else:
                try:
                    raw = base64.b64decode(given.pkcs12 or "", validate=True)
                except (binascii.Error, ValueError):
                    raise _refuse(422, "pkcs12 must be base64", "$.pkcs12") from None
                pushed = push_certificate.from_pkcs12(raw, password)
        except push_certificate.PushCertificateError as e:
            raise _refuse(422, str(e), "$.pkcs12" if given.pkcs12 else "$.pem") from None
        await self.service.put_push_certificate(pushed)
        return _json(200, push_out(pushed, self._now()))

    async def show_push(self, request: Request, params: Mapping[str, str]) -> Response:
        pushed = await self.service.push_certificate()
        if pushed is None:
            raise _refuse(404, "no push certificate uploaded (PUT /api/v1/apns/certificate)")
        return _json(200, push_out(pushed, self._now()))

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)


def _served(api: EnrollmentApi | None, pick: Callable[[EnrollmentApi], Handler]) -> Handler:
    """The handler ``pick`` chooses of ``api``, answering the service's unavailability as
    503; a gateway without enrollment answers 503 for every operation."""

    async def handle(request: Request, params: Mapping[str, str]) -> Response:
        if api is None:
            raise _refuse(503, "enrollment is not set up on this gateway")
        try:
            return await pick(api)(request, params)
        except EnrollmentUnavailable as e:
            raise _Refusal(503, Error(str(e))) from None

    return handle


def operations(api: EnrollmentApi | None) -> list[Operation]:
    """The enrollment operations, with their handlers (answering 503 without ``api``)."""
    token = {"id": "The token id (`et_...`)."}
    serial = {"serial": "The certificate's serial number, lower-case hex."}
    return [
        Operation(
            "POST",
            "/api/v1/enrollment/tokens",
            _served(api, lambda a: a.create_token),
            "Create an enrollment token for an org; its value is shown once.",
            ("201", "The token and its value.", "TokenCreated"),
            ("400", "415", "422", "503"),
            request="TokenIn",
        ),
        Operation(
            "GET",
            "/api/v1/enrollment/tokens",
            _served(api, lambda a: a.list_tokens),
            "List enrollment tokens (`?org=` for one org), newest first.",
            ("200", "The tokens.", "TokenList"),
            ("400", "422", "503"),
            query=(
                QueryParam(
                    "org",
                    "Only the tokens of this org (not its sub-organisations).",
                    {"type": "string", "pattern": _ORG_PATTERN},
                ),
            ),
        ),
        Operation(
            "GET",
            "/api/v1/enrollment/tokens/{id}",
            _served(api, lambda a: a.show_token),
            "One enrollment token.",
            ("200", "The token.", "TokenOut"),
            ("404", "503"),
            params=token,
        ),
        Operation(
            "DELETE",
            "/api/v1/enrollment/tokens/{id}",
            _served(api, lambda a: a.revoke_token),
            "Revoke an enrollment token: no device enrols with it afterwards.",
            ("200", "The token, revoked.", "TokenOut"),
            ("404", "503"),
            params=token,
        ),
        Operation(
            "GET",
            "/api/v1/enrollment/certificates",
            _served(api, lambda a: a.list_certificates),
            "Issued certificates in serial order (`?device_id=`, `?after=`, `?limit=`).",
            ("200", "A page of certificates.", "CertificateList"),
            ("400", "422", "503"),
            query=(
                QueryParam("device_id", "Only this device's certificates; empty: all."),
                QueryParam("after", "The `next` of the previous page: serials above this one."),
                QueryParam(
                    "limit",
                    "Certificates per page (default 100).",
                    {"type": "integer", "minimum": 1, "maximum": 1000},
                ),
            ),
        ),
        Operation(
            "GET",
            "/api/v1/enrollment/certificates/{serial}",
            _served(api, lambda a: a.show_certificate),
            "One issued certificate, with its PEM.",
            ("200", "The certificate.", "CertificateOut"),
            ("404", "503"),
            params=serial,
        ),
        Operation(
            "POST",
            "/api/v1/enrollment/certificates/{serial}/revoke",
            _served(api, lambda a: a.revoke_certificate),
            "Revoke a certificate: device endpoints refuse it from now on.",
            ("200", "The certificate, revoked.", "CertificateOut"),
            ("400", "404", "415", "422", "503"),
            request="RevokeIn",
            request_required=False,
            params=serial,
        ),
        Operation(
            "GET",
            "/api/v1/enrollment/ca",
            _served(api, lambda a: a.show_ca),
            "The CA certificate that issues device identities.",
            ("200", "The CA.", "CaOut"),
            ("503",),
        ),
        Operation(
            "GET",
            "/api/v1/apns/certificate",
            _served(api, lambda a: a.show_push),
            "The MDM push certificate: topic and expiry.",
            ("200", "The certificate.", "PushCertificateOut"),
            ("404", "503"),
        ),
        Operation(
            "PUT",
            "/api/v1/apns/certificate",
            _served(api, lambda a: a.put_push),
            "Upload the MDM push certificate (PEM or PKCS #12); its topic is read from it.",
            ("200", "The certificate as stored.", "PushCertificateOut"),
            ("400", "415", "422", "503"),
            request="PushCertificateIn",
        ),
    ]
