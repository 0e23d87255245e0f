"""Enrollment as an application service: tokens, the CA, issued certificates and the devices
they bring in. The HTTP adapters (``mdmgate.server.enrollment_http`` for devices,
``mdmgate.server.enrollment_api`` for the admin API) translate to and from these calls.

Invariants kept here, for every node at once (everything lives in the store):

* a token use is counted only when a certificate is about to be issued for it, in one
  conditional update, so a token with ``max_uses`` = n enrols at most n devices however
  many ask at once;
* one key pair is certified once (a replayed enrollment request carries the same key);
* a SCEP challenge is good for one request, and only while its token is not revoked;
* a certificate is recorded before it leaves the gateway, so a certificate a device
  presents is either in the store or was never issued here;
* revoking (unenrollment, retirement, an administrator) changes the device's ``auth`` in the
  same transaction, so no node accepts the certificate after the commit.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from mdmgate.enrollment import history, push_certificate, tokens
from mdmgate.enrollment.ca import (
    CaError,
    CaPolicy,
    CertificateAuthority,
    CsrRefused,
    fingerprint,
    load_or_create,
    serial_hex,
)
from mdmgate.enrollment.settings import EnrollmentSettings
from mdmgate.enrollment.tokens import TokenRefused
from mdmgate.events import device_enrolled
from mdmgate.storage import Device, RevisionConflict, Store
from mdmgate.storage.enrollment import EnrollmentToken, IssuedCertificate
from mdmgate.windows import auth as windows_auth
from mdmgate.windows import enrollment as windows_enrollment

__all__ = [
    "EnrollmentRefused",
    "EnrollmentService",
    "EnrollmentUnavailable",
    "Issued",
]

_log = logging.getLogger("mdmgate.enrollment")

#: Store material: the key that signs SCEP challenges (shared by every node).
CHALLENGE_KEY = "scep-challenge-key"
#: How many fresh serials to try when one is taken (a 159-bit random serial is taken
#: about never; the store's uniqueness makes "about" exact).
_SERIAL_ATTEMPTS = 3
#: X.520's upper bound for CN and O.
_MAX_NAME = 64


class EnrollmentUnavailable(Exception):
    """Enrollment is not set up on this gateway (503): the message says what to set."""


class EnrollmentRefused(Exception):
    """A request this gateway will not issue a certificate for; ``reason`` is a stable code
    (a :class:`~mdmgate.enrollment.tokens.TokenRefused` reason, or ``weak_key``,
    ``bad_request``, ``replayed``, ``not_ours``, ``revoked``, ``other_org``), the message
    says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    record: IssuedCertificate
    ca_der: bytes

    @property
    def der(self) -> bytes:
        return self.record.der


class EnrollmentService:
    def __init__(
        self,
        store: Store,
        settings: EnrollmentSettings,
        *,
        clock: Callable[[], float] = time.time,
        on_devices_changed: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.on_devices_changed = on_devices_changed
        self._ca: CertificateAuthority | None = None
        self._challenge_key: bytes | None = None

    # -- set-up

    async def start(self) -> None:
        """Loads the CA (the configured files, else the store's, created on first start by
        whichever node gets there first) and the SCEP challenge key. Without a passphrase
        the built-in CA stays off and :attr:`ca` says how to turn it on."""
        if not self.settings.builtin_ca:
            _log.info("enrollment: no CA passphrase configured, the built-in CA is off")
            return
        policy = self.policy
        passphrase = (self.settings.ca_passphrase or "").encode()
        if self.settings.ca_cert is not None and self.settings.ca_key is not None:
            self._ca = CertificateAuthority.from_files(
                self.settings.ca_cert, self.settings.ca_key, passphrase, policy
            )
        else:
            self._ca = await load_or_create(
                self.store,
                passphrase=passphrase,
                policy=policy,
                common_name=self.settings.ca_name,
                now=self._now(),
            )
        self._challenge_key = await self.store.put_material(CHALLENGE_KEY, secrets.token_bytes(32))
        _log.info(
            "enrollment: CA %s, serial %s",
            self._ca.certificate.subject.rfc4514_string(),
            serial_hex(self._ca.certificate.serial_number),
        )

    @property
    def policy(self) -> CaPolicy:
        s = self.settings
        return CaPolicy(
            root_key=s.root_key,
            root_validity_days=s.root_validity_days,
            device_validity_days=s.device_validity_days,
            min_rsa_bits=s.min_rsa_bits,
        )

    @property
    def ready(self) -> bool:
        return self._ca is not None

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            raise EnrollmentUnavailable(
                "enrollment is not set up: give the CA key a passphrase"
                " ([enrollment] ca_passphrase or MDMGATE_CA_PASSPHRASE) and restart"
            )
        return self._ca

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)

    # -- tokens

    async def create_token(
        self,
        org: str,
        *,
        expires_at: float,
        max_uses: int | None,
        platforms: Sequence[str] = (),
        description: str = "",
    ) -> tuple[EnrollmentToken, str]:
        """A new token and its value (shown once; the store keeps a hash)."""
        token, value = tokens.new_token(
            org,
            now=self.clock(),
            expires_at=expires_at,
            max_uses=max_uses,
            platforms=platforms,
            description=description,
        )
        await self.store.put_token(token)
        return token, value

    async def check_token(self, value: str, *, platform: str) -> EnrollmentToken:
        """The token ``value`` names, if it could enrol a ``platform`` device now (no use is
        counted); else :class:`EnrollmentRefused` with the token's reason."""
        try:
            token_id, secret = tokens.split_value(value)
        except TokenRefused as e:
            raise EnrollmentRefused(e.reason, str(e)) from None
        token = await self.store.get_token(token_id)
        if token is not None and not tokens.secret_matches(token, secret):
            raise EnrollmentRefused("wrong_secret", "the enrollment token is not valid")
        refused = tokens.refusal(token, now=self.clock(), platform=platform)
        if refused is not None:
            raise EnrollmentRefused(refused.reason, str(refused))
        assert token is not None
        return token

    async def _use_token(self, token: EnrollmentToken, *, platform: str) -> EnrollmentToken:
        used = await self.store.use_token(token.id, now=self.clock())
        if used is None:
            # Someone else took the last use (or revoked it) since it was checked.
            latest = await self.store.get_token(token.id)
            refused = tokens.refusal(latest, now=self.clock(), platform=platform)
            reason = refused.reason if refused is not None else "exhausted"
            raise EnrollmentRefused(reason, str(refused or "the enrollment token is used up"))
        return used

    # -- issuing

    def _check_csr(self, csr_der: bytes) -> x509.CertificateSigningRequest:
        try:
            return self.ca.check_csr(csr_der)
        except CsrRefused as e:
            raise EnrollmentRefused(
                "weak_key" if "bits" in str(e) else "bad_request", str(e)
            ) from None

    async def _claim_key(self, csr: x509.CertificateSigningRequest, kind: str) -> None:
        """One certificate per key pair: a replayed request carries the same key."""
        key = csr.public_key().public_bytes(
            encoding=Encoding.DER, format=PublicFormat.SubjectPublicKeyInfo
        )
        until = self.clock() + self.settings.device_validity_days * 86400.0
        claimed = await self.store.claim_once(
            kind, hashlib.sha256(key).hexdigest(), until=until, now=self.clock()
        )
        if not claimed:
            raise EnrollmentRefused(
                "replayed", "this key pair was enrolled already: a replayed enrollment request"
            )

    async def _issue(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        common_name: str,
        org: str,
        platform: str,
        token_id: str | None,
        device_id: str | None = None,
        renews: str | None = None,
    ) -> Issued:
        ca = self.ca
        for _ in range(_SERIAL_ATTEMPTS):
            now = self._now()
            # X.520 caps O at 64 characters; a deeper org path is in the records only.
            named = org if len(org) <= _MAX_NAME else None
            cert = ca.issue(csr, common_name=common_name[:_MAX_NAME], now=now, organization=named)
            der = cert.public_bytes(Encoding.DER)
            record = IssuedCertificate(
                serial=serial_hex(cert.serial_number),
                sha256=fingerprint(der),
                subject=cert.subject.rfc4514_string(),
                org=org,
                platform=platform,
                issued_at=now.timestamp(),
                not_after=cert.not_valid_after_utc.timestamp(),
                der=der,
                token_id=token_id,
                device_id=device_id,
                renews=renews,
            )
            try:
                await self.store.record_certificate(record)
            except RevisionConflict:
                continue
            _log.info(
                "enrollment: issued %s certificate %s to %s (%s)",
                platform,
                record.serial,
                device_id or common_name,
                org,
            )
            return Issued(cert, record, ca.der)
        raise EnrollmentRefused("bad_request", "no free serial number: try again")

    # -- Windows (MS-WSTEP)

    async def enroll_windows(
        self,
        *,
        token_value: str,
        csr_der: bytes,
        context: Mapping[str, str],
        account: Mapping[str, Any] | None = None,
    ) -> Issued:
        """Issues the device certificate of a Windows enrollment request and registers the
        device in the token's org, bound to that certificate (its DeviceID is the SyncHdr
        Source it will use, and the certificate's subject). ``account``: the server's OMA-DM
        credentials the provisioning document gives the device (``server_username``,
        ``server_secret``, ``server_nonce`` bytes), kept so that the gateway can prove
        itself if the device asks."""
        device_id = (context.get("DeviceID") or "").strip()
        if not device_id:
            raise EnrollmentRefused("bad_request", "the request names no DeviceID")
        token = await self.check_token(token_value, platform="windows")
        existing = await self.store.get_device(device_id)
        if (
            existing is not None
            and existing.org != token.org
            and windows_enrollment.FACT_UNENROLLED not in existing.facts
        ):
            # Another org's token must not take over a device someone else manages.
            raise EnrollmentRefused(
                "other_org",
                f"the device is enrolled in {existing.org}: retire it there first",
            )
        csr = self._check_csr(csr_der)
        await self._claim_key(csr, "wstep-key")
        token = await self._use_token(token, platform="windows")
        # A device enrolling again: its earlier certificates stop working.
        await self.store.revoke_certificates(
            device_id=device_id, reason="superseded by a new enrollment", at=self.clock()
        )
        issued = await self._issue(
            csr,
            common_name=device_id,
            org=token.org,
            platform="windows",
            token_id=token.id,
            device_id=device_id,
        )
        facts: dict[str, Any] = {
            "enrollment": {
                "platform": "windows",
                "token_id": token.id,
                "device_id": device_id,
                "hw_dev_id": context.get("HWDevID"),
                "enrollment_type": context.get("EnrollmentType"),
                "device_type": context.get("DeviceType"),
                "device_name": context.get("DeviceName"),
                "os_edition": context.get("OSEdition"),
                "enrolled_at": self.clock(),
            }
        }
        auth = _certificate_auth(issued.record)
        if account is not None:
            auth["server_username"] = account["server_username"]
            auth["server_secret"] = account["server_secret"]
            nonce = account["server_nonce"]
            facts[windows_auth.FACT_SERVER_NONCE] = base64.b64encode(nonce).decode("ascii")
        await self._register(
            device_id,
            platform="windows",
            org=token.org,
            os_version=context.get("OSVersion") or None,
            auth=auth,
            facts=facts,
        )
        return issued

    async def renew_windows(self, *, identity_der: bytes, csr_der: bytes) -> Issued:
        """Renews the certificate a Windows device proved itself with (mTLS, or the signer
        of its renewal request): same device, same org, a new key; the old certificate stays
        good until it expires, so a session in flight is not cut."""
        current = await self.store.certificate_by_sha256(fingerprint(identity_der))
        if current is None or current.platform != "windows" or current.device_id is None:
            raise EnrollmentRefused("not_ours", "the certificate was not issued by this gateway")
        if current.revoked_at is not None:
            raise EnrollmentRefused("revoked", "the certificate is revoked")
        if current.not_after <= self.clock():
            raise EnrollmentRefused("expired", "the certificate has expired: enrol again")
        csr = self._check_csr(csr_der)
        await self._claim_key(csr, "wstep-key")
        issued = await self._issue(
            csr,
            common_name=current.device_id,
            org=current.org,
            platform="windows",
            token_id=current.token_id,
            device_id=current.device_id,
            renews=current.serial,
        )
        auth = _certificate_auth(issued.record)
        auth["previous_sha256"] = current.sha256
        await self.store.set_auth(current.device_id, auth)
        return issued

    # -- Apple (SCEP)

    def scep_challenge(self, token: EnrollmentToken) -> str:
        """A one-time SCEP challenge for a profile downloaded with ``token``."""
        if self._challenge_key is None:
            raise self._unavailable()
        until = min(token.expires_at, self.clock() + self.settings.challenge_minutes * 60.0)
        # Never shorter than a few minutes: the device asks right after installing.
        until = max(until, self.clock() + 300.0)
        return tokens.scep_challenge(self._challenge_key, token.id, expires_at=until)

    def _unavailable(self) -> EnrollmentUnavailable:
        try:
            self.ca  # noqa: B018 (raises with the message)
        except EnrollmentUnavailable as e:
            return e
        return EnrollmentUnavailable("enrollment is starting")

    async def apple_profile_token(self, value: str) -> EnrollmentToken:
        """Counts the use of a token for one Apple profile download (each download is one
        device's enrollment)."""
        token = await self.check_token(value, platform="apple")
        return await self._use_token(token, platform="apple")

    async def issue_scep(self, *, challenge: str | None, csr_der: bytes) -> Issued:
        """Issues an Apple identity certificate for a SCEP request with a challenge this
        gateway handed out (once), in the org of the challenge's token."""
        if self._challenge_key is None:
            raise self._unavailable()
        if not challenge:
            raise EnrollmentRefused("malformed", "the request carries no challenge password")
        try:
            token_id, nonce = tokens.check_scep_challenge(
                self._challenge_key, challenge, now=self.clock()
            )
        except TokenRefused as e:
            raise EnrollmentRefused(e.reason, f"SCEP challenge: {e}") from None
        token = await self.store.get_token(token_id)
        if token is None or token.revoked_at is not None:
            raise EnrollmentRefused("revoked", "the enrollment token of this challenge is revoked")
        csr = self._check_csr(csr_der)
        expires = self.clock() + self.settings.challenge_minutes * 60.0 + 86400.0
        if not await self.store.claim_once(
            "scep-challenge", nonce, until=expires, now=self.clock()
        ):
            raise EnrollmentRefused("replayed", "the SCEP challenge was used already")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else "mdmgate Apple device"
        return await self._issue(
            csr, common_name=common_name, org=token.org, platform="apple", token_id=token.id
        )

    # -- revocation

    async def revoke_device(self, device_id: str, reason: str) -> list[IssuedCertificate]:
        """Revokes every certificate of the device (unenrollment, retirement)."""
        revoked = await self.store.revoke_certificates(
            device_id=device_id, reason=reason, at=self.clock()
        )
        for cert in revoked:
            _log.info(
                "enrollment: revoked certificate %s of %s: %s", cert.serial, device_id, reason
            )
        return revoked

    async def revoke_certificate(self, serial: str, reason: str) -> list[IssuedCertificate]:
        return await self.store.revoke_certificates(serial=serial, reason=reason, at=self.clock())

    # -- the APNs push certificate

    async def put_push_certificate(self, pushed: push_certificate.PushCertificate) -> None:
        """Keeps the uploaded push certificate for every node, its key encrypted with the
        CA passphrase (which it therefore needs)."""
        if not self.settings.ca_passphrase:
            raise EnrollmentUnavailable(
                "uploading the push certificate needs [enrollment] ca_passphrase (or"
                " MDMGATE_CA_PASSPHRASE): its key is never stored in the clear"
            )
        blob = pushed.dump(self.settings.ca_passphrase.encode())
        await self.store.put_material(push_certificate.MATERIAL, blob, replace=True)

    async def push_certificate(self) -> push_certificate.PushCertificate | None:
        """The uploaded push certificate, or ``None``."""
        blob = await self.store.get_material(push_certificate.MATERIAL)
        if blob is None or not self.settings.ca_passphrase:
            return None
        return push_certificate.decrypt(blob, self.settings.ca_passphrase.encode())

    # -- devices

    async def _register(
        self,
        device_id: str,
        *,
        platform: str,
        org: str,
        os_version: str | None,
        auth: Mapping[str, Any],
        facts: Mapping[str, Any],
    ) -> None:
        existing = await self.store.get_device(device_id)
        if existing is None:
            await self.store.upsert_devices(
                [Device(device_id, platform, org, os_version, None, dict(auth), {})]
            )
            existing = Device(device_id, platform, org)
        else:
            fields: dict[str, Any] = {"org": org, "platform": platform}
            if os_version is not None:
                fields["os_version"] = os_version
            await self.store.update_device(device_id, fields)
            await self.store.set_auth(device_id, auth)
        merged = dict(facts)
        merged.update(windows_enrollment.reenrolled(existing.facts, "enrolled again"))
        merged[history.FACT_EVENTS] = history.with_event(
            existing.facts, "enrolled", f"enrolled into {org}", self.clock()
        )
        enrolled = device_enrolled(device_id, platform=platform, org=org, via=platform)
        await self.store.merge_facts(device_id, merged, events=[enrolled])
        if self.on_devices_changed is not None:
            self.on_devices_changed([device_id])


def _certificate_auth(record: IssuedCertificate) -> dict[str, Any]:
    return {
        "method": "certificate",
        "sha256": record.sha256,
        "serial": record.serial,
        "not_after": record.not_after,
    }


def read_pem_pair(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    """The bytes of a PEM certificate and key file pair, or :class:`CaError` naming the
    file that cannot be read."""
    out = []
    for path in (cert_path, key_path):
        try:
            out.append(Path(path).read_bytes())
        except OSError as e:
            raise CaError(f"cannot read {path}: {e.strerror}") from None
    return out[0], out[1]
