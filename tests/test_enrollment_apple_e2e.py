"""Apple enrollment end to end, against a real ``mdmgate serve`` (one node, SQLite, TLS; see
tests/enrollment_helpers.py) and clients that share no code with the gateway's enrollment
modules.

The flow a device goes through: an administrator creates a token; the device downloads the
profile at the token's URL; the profile's CMS signature verifies with ``openssl cms -verify``
against the CA the admin API shows, and its payloads are read with ``plistlib``; the device
runs SCEP against the URL the profile names (tests/scep_client.py), with the profile's
challenge; the certificate it gets verifies with ``openssl verify`` and certifies the CSR's
key; with it over mTLS the device sends Authenticate (it lands in the token's org) and
TokenUpdate, and an Idle hands it the command queued for it, which it acknowledges. The
push topic the profile names comes from ``[enrollment] apple_topic``, or from the push
certificate uploaded through ``PUT /api/v1/apns/certificate``: both are driven. The same
device behind a proxy that ends TLS proves itself with ``Mdm-Signature`` instead, and a
retired device enrols again with a new profile.

The refusals: tokens expired, revoked, used up, for Windows only, not valid; SCEP challenges
wrong, forged, missing, used again (a replay); a 1024-bit key; a revoked certificate on the
check-in and command endpoints (403, never 401: a 401 can make a device drop its
enrollment); CheckOut revoking the certificate; a certificate speaking for another device,
or for a device another org manages. After each, the admin API's certificate list shows
that nothing was issued.

Nothing here sleeps for timing: the one wait (for the node to re-read an uploaded push
certificate) polls for what it waits for, under ``fail_after``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import plistlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import AttributeOID, NameOID

from mdmgate.enrollment import tokens
from mdmgate.storage.sqlite import SQLiteStore
from tests import scep_client
from tests.enrollment_helpers import (
    EnrollmentGateway,
    Identity,
    Token,
    ca_pem,
    certificates,
    create_token,
    enrollment_config,
    enrollment_gateway,
    revoke_token,
    write_identity,
)
from tests.pki_helpers import certificate, public_key_der, rsa_key

TOPIC = "com.apple.mgmt.External.3f1c2a9e-8d4b-4c57-a0e6-5b7d9c1e2f40"
CHECKIN_TYPE = "application/x-apple-aspen-mdm-checkin"
PKI_MESSAGE = "application/x-pki-message"
NOT_VERIFIED = "device identity not verified"
#: RFC 8894 pkiStatus and failInfo values, as the requester reads them.
SUCCESS, FAILURE = 0, 2
BAD_REQUEST = 2


# --- the gateway -----------------------------------------------------------------------------


@asynccontextmanager
async def gateway(tmp_path: Path, *, topic: str | None = TOPIC) -> AsyncIterator[EnrollmentGateway]:
    """One node, its push topic from ``[enrollment] apple_topic`` (``None``: none set)."""
    extra = f'apple_topic = "{topic}"' if topic is not None else ""
    async with enrollment_gateway(tmp_path, config=enrollment_config(extra=extra)) as gw:
        yield gw


async def apple_token(admin: httpx.AsyncClient, org: str = "/acme", **fields: Any) -> Token:
    return await create_token(admin, org, platforms=fields.pop("platforms", ["apple"]), **fields)


def profile_url(token: Token) -> str:
    url: str = token.created["apple_profile_url"]
    return url


async def ca_file(gw: EnrollmentGateway, admin: httpx.AsyncClient) -> Path:
    """The CA the admin API shows, written where openssl reads it."""
    path = gw.root / "enrollment-ca.pem"
    path.write_bytes(await ca_pem(admin))
    return path


async def token_uses(admin: httpx.AsyncClient, token: Token) -> int:
    uses: int = (await admin.get(f"/api/v1/enrollment/tokens/{token.id}")).json()["uses"]
    return uses


async def openssl(*args: str) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(
        ["openssl", *args], capture_stdout=True, capture_stderr=True, check=False
    )


# --- the profile -----------------------------------------------------------------------------


@dataclass
class Profile:
    plist: dict[str, Any]
    root: dict[str, Any]
    scep: dict[str, Any]
    mdm: dict[str, Any]

    @property
    def challenge(self) -> str:
        value: str = self.scep["PayloadContent"]["Challenge"]
        return value

    @property
    def scep_url(self) -> str:
        value: str = self.scep["PayloadContent"]["URL"]
        return value

    @property
    def topic(self) -> str:
        value: str = self.mdm["Topic"]
        return value


async def download(gw: EnrollmentGateway, url: str) -> httpx.Response:
    async with gw.device_client() as client:
        return await client.get(url)


async def fetch_profile(gw: EnrollmentGateway, admin: httpx.AsyncClient, token: Token) -> Profile:
    """The profile at the token's URL, once ``openssl cms -verify`` has checked its
    signature against the CA the admin API shows; read with plistlib, payloads by type."""
    r = await download(gw, profile_url(token))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-apple-aspen-config"
    signed, content = gw.root / "profile.p7m", gw.root / "profile.plist"
    signed.write_bytes(r.content)
    done = await openssl(
        "cms", "-verify", "-inform", "DER", "-CAfile", str(await ca_file(gw, admin)),
        "-in", str(signed), "-out", str(content),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert b"Verification successful" in done.stderr
    plist = plistlib.loads(content.read_bytes())
    by_type = {p["PayloadType"]: p for p in plist["PayloadContent"]}
    assert len(by_type) == len(plist["PayloadContent"]) == 3
    return Profile(
        plist,
        by_type["com.apple.security.root"],
        by_type["com.apple.security.scep"],
        by_type["com.apple.mdm"],
    )


# --- SCEP ------------------------------------------------------------------------------------


def device_csr(key: rsa.RSAPrivateKey, profile: Profile, challenge: str | None) -> bytes:
    """The PKCS #10 a device makes from the SCEP payload: its ``Subject`` (RDNs of
    [type, value] pairs) and ``challenge`` as challengePassword."""
    oids = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME}
    subject = profile.scep["PayloadContent"]["Subject"]
    name = x509.Name([x509.NameAttribute(oids[t], v) for rdn in subject for t, v in rdn])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class ScepDevice:
    """A device's SCEP client: the CA's capabilities and certificate, then PKIOperation."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.ca: x509.Certificate | None = None

    async def get_ca(self) -> x509.Certificate:
        r = await self.client.get(self.url, params={"operation": "GetCACaps"})
        assert r.status_code == 200, r.text
        # What an Apple device needs to POST a SHA-256 signed, AES encrypted request.
        assert {"POSTPKIOperation", "SHA-256", "AES"} <= set(r.text.split()), r.text
        r = await self.client.get(self.url, params={"operation": "GetCACert"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-x509-ca-cert"
        self.ca = x509.load_der_x509_certificate(r.content)
        return self.ca

    async def send(self, request: scep_client.PkcsReq) -> httpx.Response:
        return await self.client.post(
            self.url,
            params={"operation": "PKIOperation"},
            content=request.body,
            headers={"content-type": PKI_MESSAGE},
        )

    async def enroll(
        self, key: rsa.RSAPrivateKey, csr: bytes
    ) -> tuple[scep_client.CertRep, scep_client.PkcsReq, scep_client.Requester]:
        """A PKCSReq for ``csr`` signed with ``key``; the verified CertRep."""
        ca = self.ca or await self.get_ca()
        requester = scep_client.new_requester("mdmgate device", key)
        request = scep_client.pkcs_req(csr, requester, ca)
        return await self.read(await self.send(request), request, requester), request, requester

    async def read(
        self, r: httpx.Response, request: scep_client.PkcsReq, requester: scep_client.Requester
    ) -> scep_client.CertRep:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == PKI_MESSAGE
        assert self.ca is not None
        return scep_client.read_cert_rep(
            r.content, ca_cert=self.ca, requester=requester, request=request
        )


async def scep_attempt(
    gw: EnrollmentGateway, profile: Profile, challenge: str | None, *, key_bits: int = 2048
) -> scep_client.CertRep:
    key = rsa_key(key_bits)
    async with gw.device_client() as client:
        device = ScepDevice(client, profile.scep_url)
        rep, _, _ = await device.enroll(key, device_csr(key, profile, challenge))
    return rep


async def scep_identity(
    gw: EnrollmentGateway, admin: httpx.AsyncClient, profile: Profile, *, name: str
) -> Identity:
    """SCEP as the profile says, checked: the certificate verifies with ``openssl verify``
    against the CA, as a TLS client's, and certifies the CSR's key."""
    key = rsa_key()
    csr = device_csr(key, profile, profile.challenge)
    async with gw.device_client() as client:
        rep, _, _ = await ScepDevice(client, profile.scep_url).enroll(key, csr)
    assert rep.status == SUCCESS, rep.fail_text
    requested = x509.load_der_x509_csr(csr)
    (issued,) = [c for c in rep.certificates if public_key_der(c) == public_key_der(requested)]
    # One file pair per certificate: a device enrolling again must not overwrite its old one.
    file_name = f"{name}-{format(issued.serial_number, 'x')}"
    identity = write_identity(
        gw.root / "identities", file_name, issued.public_bytes(serialization.Encoding.DER), key
    )
    ca = await ca_file(gw, admin)
    done = await openssl(
        "verify", "-purpose", "sslclient", "-CAfile", str(ca), str(identity.cert_path)
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert done.stdout.decode().strip() == f"{identity.cert_path}: OK"
    return identity


def sha256(identity: Identity) -> str:
    return identity.cert.fingerprint(hashes.SHA256()).hex()


# --- the MDM client --------------------------------------------------------------------------


def mdm_signature(body: bytes, signer: Identity) -> str:
    """The ``Mdm-Signature`` header of a profile with ``SignMessage``: base64 of a CMS
    detached signature of the body by the device's identity."""
    signature = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(body)
        .add_signer(signer.cert, signer.key, hashes.SHA256())
        # Binary: the body's bytes as they are (no S/MIME newline canonicalization).
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        )
    )
    return base64.b64encode(signature).decode("ascii")


class AppleDevice:
    """What a device's MDM client sends, as plists written with the standard library;
    with ``signer``, each body signed in an ``Mdm-Signature`` header."""

    def __init__(
        self, client: httpx.AsyncClient, udid: str, topic: str, signer: Identity | None = None
    ) -> None:
        self.client = client
        self.udid = udid
        self.topic = topic
        self.signer = signer

    async def put(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        if self.signer is not None:
            headers = {**headers, "mdm-signature": mdm_signature(body, self.signer)}
        return await self.client.put(path, content=body, headers=headers)

    async def checkin(self, message_type: str, **fields: Any) -> httpx.Response:
        body = {"MessageType": message_type, "UDID": self.udid, "Topic": self.topic, **fields}
        return await self.put(
            "/mdm/apple/checkin", plistlib.dumps(body), {"content-type": CHECKIN_TYPE}
        )

    async def authenticate(self) -> httpx.Response:
        return await self.checkin(
            "Authenticate",
            OSVersion="17.5",
            BuildVersion="21F79",
            ProductName="iPhone15,2",
            SerialNumber="F2LE2E0001",
            DeviceName="Test iPhone",
        )

    async def token_update(self) -> httpx.Response:
        return await self.checkin(
            "TokenUpdate",
            Token=hashlib.sha256(self.udid.encode()).digest(),
            PushMagic=f"magic-{self.udid}",
            UnlockToken=b"unlock",
        )

    async def connect(self, status: str, **fields: Any) -> httpx.Response:
        body = {"UDID": self.udid, "Status": status, **fields}
        return await self.put("/mdm/apple/connect", plistlib.dumps(body), {})

    async def enroll(self) -> None:
        r = await self.authenticate()
        assert r.status_code == 200, r.text
        r = await self.token_update()
        assert r.status_code == 200, r.text


async def enqueue(admin: httpx.AsyncClient, udid: str) -> str:
    r = await admin.post(
        f"/api/v1/devices/{udid}/commands",
        json={"apple": {"request_type": "DeviceInformation", "payload": {"Queries": ["UDID"]}}},
    )
    assert r.status_code == 202, r.text
    command_id: str = r.json()["command_id"]
    return command_id


async def delivery(admin: httpx.AsyncClient, command_id: str) -> tuple[str, str | None]:
    """The state and status of the command's one delivery."""
    r = await admin.get(f"/api/v1/commands/{command_id}")
    assert r.status_code == 200, r.text
    (found,) = r.json()["deliveries"]
    return found["state"], found["status"]


@dataclass
class Enrolled:
    """A device that went through the whole flow."""

    udid: str
    profile: Profile
    identity: Identity


async def enroll_device(
    gw: EnrollmentGateway, admin: httpx.AsyncClient, udid: str, *, org: str = "/acme"
) -> Enrolled:
    """Token, profile, SCEP, then Authenticate and TokenUpdate over mTLS."""
    profile = await fetch_profile(gw, admin, await apple_token(admin, org))
    identity = await scep_identity(gw, admin, profile, name=udid)
    async with gw.device_client(identity) as client:
        await AppleDevice(client, udid, profile.topic).enroll()
    return Enrolled(udid, profile, identity)


async def refused_everywhere(sends: dict[str, Any]) -> None:
    """Each of ``sends`` (what -> a coroutine function) is answered 403
    :data:`NOT_VERIFIED`: never 401, which can make a device drop its enrollment."""
    for what, send in sends.items():
        r = await send()
        assert r.status_code == 403, (what, r.text)
        assert r.text.strip() == NOT_VERIFIED, what


def every_send(device: AppleDevice) -> dict[str, Any]:
    """What ``device`` sends on the check-in and command endpoints, for
    :func:`refused_everywhere`."""
    return {
        "Idle": functools.partial(device.connect, "Idle"),
        "TokenUpdate": device.token_update,
        "Authenticate": device.authenticate,
    }


# --- push certificates -----------------------------------------------------------------------


def push_certificate(topic: str | None, *, days: int = 365) -> tuple[x509.Certificate, Any]:
    """A self-signed stand-in for Apple's MDM push certificate: the topic in the subject's
    UID, as the Apple Push Certificates Portal issues it."""
    key = rsa_key()
    suffix = topic.rsplit(".", 1)[-1] if topic else "no topic"
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, f"APSP:{suffix}")]
    if topic is not None:
        attributes.insert(0, x509.NameAttribute(NameOID.USER_ID, topic))
    return certificate(x509.Name(attributes), key, days=days), key


def pem_upload(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> dict[str, str]:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return {"pem": (cert.public_bytes(serialization.Encoding.PEM) + key_pem).decode()}


def pkcs12_upload(cert: x509.Certificate, key: rsa.RSAPrivateKey, password: str) -> dict[str, str]:
    p12 = pkcs12.serialize_key_and_certificates(
        b"mdm push", key, cert, None, serialization.BestAvailableEncryption(password.encode())
    )
    return {"pkcs12": base64.b64encode(p12).decode(), "password": password}


def not_after(cert: x509.Certificate) -> str:
    return cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


async def metrics_expiry(admin: httpx.AsyncClient) -> float:
    r = await admin.get("/metrics")
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith("mdmgate_apns_certificate_expiry_seconds{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no mdmgate_apns_certificate_expiry_seconds in:\n{r.text}")


async def until_expiry_shows(admin: httpx.AsyncClient, cert: x509.Certificate) -> float:
    """Polls /metrics until the node has re-read the uploaded certificate (it does with its
    gauges, every few seconds); the gauge's value then."""
    with trio.fail_after(30):
        while True:
            seconds = await metrics_expiry(admin)
            if abs(seconds - (cert.not_valid_after_utc.timestamp() - time.time())) < 120:
                return seconds
            await trio.sleep(0.2)


def new_topic() -> str:
    return f"com.apple.mgmt.External.{uuid.uuid4()}"


# --- the flow --------------------------------------------------------------------------------


def check_profile(profile: Profile, gw: EnrollmentGateway, *, topic: str, ca_der: bytes) -> None:
    """The payloads as Apple documents them, pointing at this gateway."""
    assert profile.plist["PayloadType"] == "Configuration"
    assert all(p["PayloadVersion"] == 1 for p in profile.plist["PayloadContent"])
    assert len({p["PayloadUUID"] for p in profile.plist["PayloadContent"]}) == 3
    assert profile.root["PayloadContent"] == ca_der
    scep = profile.scep["PayloadContent"]
    assert scep["URL"] == f"{gw.base_url}/mdm/apple/scep"
    assert scep["Challenge"]
    assert (scep["Key Type"], scep["Keysize"]) == ("RSA", 2048)
    mdm = profile.mdm
    assert mdm["ServerURL"] == f"{gw.base_url}/mdm/apple/connect"
    assert mdm["CheckInURL"] == f"{gw.base_url}/mdm/apple/checkin"
    assert mdm["Topic"] == topic
    assert mdm["IdentityCertificateUUID"] == profile.scep["PayloadUUID"]
    assert mdm["SignMessage"] is True
    assert mdm["CheckOutWhenRemoved"] is True
    assert mdm["AccessRights"] == 8191


async def check_in_and_take_the_command(
    gw: EnrollmentGateway, admin: httpx.AsyncClient, identity: Identity, topic: str
) -> None:
    """Over mTLS with ``identity``: a device nobody registered enrols into /acme, and the
    command queued for it goes out at Idle and comes back acknowledged."""
    udid = "00008110-000A1B2C3D4E5F60"
    assert (await admin.get(f"/api/v1/devices/{udid}")).status_code == 404
    async with gw.device_client(identity) as client:
        phone = AppleDevice(client, udid, topic)
        r = await phone.authenticate()
        assert r.status_code == 200, r.text
        r = await admin.get(f"/api/v1/devices/{udid}")
        assert r.status_code == 200, r.text
        device = r.json()
        assert (device["org"], device["platform"], device["os_version"]) == ("/acme", "ios", "17.5")
        assert device["auth_configured"] is True
        bound = await admin.get(f"/api/v1/enrollment/certificates/{identity.serial}")
        assert bound.json()["device_id"] == udid
        r = await phone.token_update()
        assert r.status_code == 200, r.text

        command_id = await enqueue(admin, udid)
        r = await phone.connect("Idle")
        assert r.status_code == 200, r.text
        command = plistlib.loads(r.content)
        assert command["CommandUUID"] == command_id
        assert command["Command"] == {"RequestType": "DeviceInformation", "Queries": ["UDID"]}
        r = await phone.connect(
            "Acknowledged", CommandUUID=command_id, QueryResponses={"UDID": udid}
        )
        assert r.status_code == 200, r.text
        assert r.content == b""
        assert (await delivery(admin, command_id))[0] == "acknowledged"


@pytest.mark.parametrize("topic_from", ["config", "upload"])
async def test_profile_scep_and_mtls_check_in_deliver_the_queued_command(
    tmp_path: Path, topic_from: str
) -> None:
    configured = TOPIC if topic_from == "config" else None
    async with gateway(tmp_path, topic=configured) as gw, gw.admin() as admin:
        topic = TOPIC
        if topic_from == "upload":
            topic = new_topic()
            cert, key = push_certificate(topic)
            r = await admin.put("/api/v1/apns/certificate", json=pem_upload(cert, key))
            assert r.status_code == 200, r.text
            await until_expiry_shows(admin, cert)
        token = await apple_token(admin, "/acme", max_uses=5)
        assert profile_url(token) == f"{gw.base_url}/mdm/apple/enroll?token={token.value}"

        # The profile: signed by the CA the admin API shows; one download, one use.
        ca_der = x509.load_pem_x509_certificate(await ca_pem(admin)).public_bytes(
            serialization.Encoding.DER
        )
        profile = await fetch_profile(gw, admin, token)
        check_profile(profile, gw, topic=topic, ca_der=ca_der)
        assert await token_uses(admin, token) == 1

        # SCEP: GetCACert gives the profile's root; the certificate is listed, unbound.
        async with gw.device_client() as client:
            ca_cert = await ScepDevice(client, profile.scep_url).get_ca()
            assert ca_cert.public_bytes(serialization.Encoding.DER) == ca_der
        assert await certificates(admin) == []
        identity = await scep_identity(gw, admin, profile, name="phone-1")
        (listed,) = await certificates(admin)
        assert (listed["serial"], listed["sha256"]) == (identity.serial, sha256(identity))
        assert (listed["org"], listed["platform"]) == ("/acme", "apple")
        assert listed["token_id"] == token.id
        assert (listed["device_id"], listed["revoked_at"]) == (None, None)

        await check_in_and_take_the_command(gw, admin, identity, profile.topic)


async def test_signed_messages_without_mtls_are_accepted_and_forgeries_are_not(
    tmp_path: Path,
) -> None:
    """The profile asks for SignMessage: behind a proxy that ends TLS, the device's identity
    reaches the gateway as the Mdm-Signature of each body, and that is enough."""
    async with gateway(tmp_path) as gw, gw.admin() as admin:
        profile = await fetch_profile(gw, admin, await apple_token(admin))
        assert profile.mdm["SignMessage"] is True
        identity = await scep_identity(gw, admin, profile, name="signed")
        udid = "udid-signed"
        async with gw.device_client() as client:
            phone = AppleDevice(client, udid, profile.topic, signer=identity)
            await phone.enroll()
            assert (await admin.get(f"/api/v1/devices/{udid}")).json()["org"] == "/acme"
            command_id = await enqueue(admin, udid)
            r = await phone.connect("Idle")
            assert r.status_code == 200, r.text
            assert plistlib.loads(r.content)["CommandUUID"] == command_id
            r = await phone.connect(
                "Acknowledged", CommandUUID=command_id, QueryResponses={"UDID": udid}
            )
            assert r.status_code == 200, r.text
            assert (await delivery(admin, command_id))[0] == "acknowledged"

            # A signature of another body, and no signature at all.
            body = plistlib.dumps({"UDID": udid, "Status": "Idle"})
            forged = mdm_signature(plistlib.dumps({"UDID": udid, "Status": "NotNow"}), identity)
            r = await client.put(
                "/mdm/apple/connect", content=body, headers={"mdm-signature": forged}
            )
            assert r.status_code == 403, r.text
            assert r.text.startswith("Mdm-Signature does not verify")
            r = await client.put("/mdm/apple/connect", content=body)
            assert r.status_code == 403, r.text
            assert r.text.strip() == NOT_VERIFIED


# --- the push certificate --------------------------------------------------------------------


async def test_uploaded_push_certificate_gives_the_topic_and_its_expiry(tmp_path: Path) -> None:
    async with gateway(tmp_path, topic=None) as gw, gw.admin() as admin:
        r = await admin.get("/api/v1/apns/certificate")
        assert r.status_code == 404, r.text
        assert "PUT /api/v1/apns/certificate" in r.json()["error"]
        # No topic anywhere: a profile would not reach the device's MDM client.
        token = await apple_token(admin, max_uses=1)
        r = await download(gw, profile_url(token))
        assert r.status_code == 503, r.text
        assert "no MDM push topic" in r.text
        assert await token_uses(admin, token) == 0

        # PEM: certificate and key, the key in the clear.
        first = new_topic()
        cert, key = push_certificate(first)
        r = await admin.put("/api/v1/apns/certificate", json=pem_upload(cert, key))
        assert r.status_code == 200, r.text
        shown = r.json()
        assert (shown["topic"], shown["not_after"]) == (first, not_after(cert))
        assert shown["expiring"] is False
        assert 364 < shown["days_left"] <= 365
        assert (await admin.get("/api/v1/apns/certificate")).json() == shown

        # PKCS #12 with a password, ten days left: it replaces the first, and warns.
        second = new_topic()
        cert, key = push_certificate(second, days=10)
        r = await admin.put("/api/v1/apns/certificate", json=pkcs12_upload(cert, key, "p12 pw"))
        assert r.status_code == 200, r.text
        shown = r.json()
        assert (shown["topic"], shown["not_after"]) == (second, not_after(cert))
        assert shown["expiring"] is True
        assert (await admin.get("/api/v1/apns/certificate")).json() == shown
        # Kept for every node, its key encrypted with the CA passphrase.
        store = await SQLiteStore.open(gw.root / "mdmgate.db")
        try:
            kept = await store.get_material("apns")
        finally:
            await store.aclose()
        assert kept is not None
        assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in kept
        assert b"-----BEGIN PRIVATE KEY-----" not in kept
        assert b"-----BEGIN RSA PRIVATE KEY-----" not in kept

        # /metrics (behind the admin token) carries the expiry; the profile names the topic.
        async with gw.device_client() as anonymous:
            assert (await anonymous.get("/metrics")).status_code == 401
        seconds = await until_expiry_shows(admin, cert)
        assert 9 * 86400 < seconds <= 10 * 86400
        profile = await fetch_profile(gw, admin, token)
        assert profile.topic == second


async def test_push_certificates_without_a_topic_or_their_key_are_refused(tmp_path: Path) -> None:
    async with gateway(tmp_path, topic=None) as gw, gw.admin() as admin:
        no_uid, no_uid_key = push_certificate(None)
        cert, key = push_certificate(new_topic())
        _other, other_key = push_certificate(new_topic())
        no_topic = "no MDM push topic (UID com.apple.mgmt...)"
        refused = {
            "no UID topic (PEM)": (pem_upload(no_uid, no_uid_key), no_topic, "$.pem"),
            "no UID topic (PKCS #12)": (
                pkcs12_upload(no_uid, no_uid_key, "pw"),
                no_topic,
                "$.pkcs12",
            ),
            "another certificate's key": (
                pem_upload(cert, other_key),
                "the private key does not belong to the certificate",
                "$.pem",
            ),
            "the wrong PKCS #12 password": (
                {**pkcs12_upload(cert, key, "right"), "password": "wrong"},
                "not a PKCS #12 file with this password",
                "$.pkcs12",
            ),
            "neither form": ({}, "give pem or pkcs12 (one of them)", "$"),
        }
        for what, (body, message, field) in refused.items():
            r = await admin.put("/api/v1/apns/certificate", json=body)
            assert r.status_code == 422, (what, r.text)
            assert message in r.json()["error"], (what, r.text)
            assert r.json()["field"] == field, (what, r.text)
        assert (await admin.get("/api/v1/apns/certificate")).status_code == 404
        assert await metrics_expiry(admin) == 0


# --- refusals: tokens ------------------------------------------------------------------------


async def put_expired_token(gw: EnrollmentGateway, org: str) -> tuple[str, str]:
    """A token that expired an hour ago, written to the gateway's database as the admin API
    would have an hour earlier (the API takes no expiry in the past); its id and value."""
    an_hour_ago = time.time() - 3600.0
    token, value = tokens.new_token(
        org, now=an_hour_ago - 60.0, expires_at=an_hour_ago, max_uses=None, platforms=["apple"]
    )
    store = await SQLiteStore.open(gw.root / "mdmgate.db")
    try:
        await store.put_token(token)
    finally:
        await store.aclose()
    return token.id, value


async def test_unusable_tokens_get_no_profile_and_nothing_is_issued(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.admin() as admin:
        expired_id, expired = await put_expired_token(gw, "/acme")
        shown = await admin.get(f"/api/v1/enrollment/tokens/{expired_id}")
        assert shown.json()["state"] == "expired"
        revoked = await apple_token(admin)
        downloaded = await fetch_profile(gw, admin, revoked)
        await revoke_token(admin, revoked.id)
        once = await apple_token(admin, max_uses=1)
        assert (await download(gw, profile_url(once))).status_code == 200
        shown = await admin.get(f"/api/v1/enrollment/tokens/{once.id}")
        assert shown.json()["state"] == "exhausted"
        windows = await apple_token(admin, platforms=["windows"])
        good = await apple_token(admin)
        token_id, secret = good.value.split(".")
        enroll = f"{gw.base_url}/mdm/apple/enroll"

        refused = {
            "expired": (f"{enroll}?token={expired}", 403, "the enrollment token has expired"),
            "revoked": (profile_url(revoked), 403, "the enrollment token was revoked"),
            "used up": (
                profile_url(once),
                403,
                "the enrollment token has been used as often as it may",
            ),
            "for Windows": (profile_url(windows), 403, "the enrollment token is for windows"),
            "wrong secret": (
                f"{enroll}?token={token_id}.{secret[::-1]}",
                401,
                "the enrollment token is not valid",
            ),
            "unknown": (
                f"{enroll}?token=et_{'0' * 16}.{secret}",
                401,
                "the enrollment token is not known",
            ),
            "malformed": (f"{enroll}?token=not-a-token", 401, "the enrollment token is malformed"),
            "missing": (enroll, 401, "the enrollment token is malformed"),
        }
        for what, (url, status, message) in refused.items():
            r = await download(gw, url)
            assert r.status_code == status, (what, r.text)
            assert r.headers["content-type"].startswith("text/plain"), what
            assert r.text.startswith(f"enrollment token refused: {message}"), (what, r.text)
        assert await token_uses(admin, revoked) == 1
        assert await token_uses(admin, windows) == 0
        # The challenge of a profile downloaded before the token was revoked is void too.
        rep = await scep_attempt(gw, downloaded, downloaded.challenge)
        assert (rep.status, rep.fail_info) == (FAILURE, BAD_REQUEST)
        assert rep.fail_text == "the enrollment token of this challenge is revoked"
        assert await certificates(admin) == []


# --- refusals: SCEP --------------------------------------------------------------------------


def forged(challenge: str) -> str:
    """The challenge with another MAC: same token, expiry and nonce."""
    token_id, expiry, nonce, mac = challenge.split(".")
    return ".".join((token_id, expiry, nonce, mac[::-1]))


async def test_refused_scep_requests_issue_nothing_and_leave_the_challenge_usable(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as gw, gw.admin() as admin:
        profile = await fetch_profile(gw, admin, await apple_token(admin))
        challenge = profile.challenge
        refused = {
            "made up": (
                "not-the-challenge",
                2048,
                "SCEP challenge: the SCEP challenge is malformed",
            ),
            "forged": (forged(challenge), 2048, "SCEP challenge: the SCEP challenge is not valid"),
            "missing": (None, 2048, "the request carries no challenge password"),
            "a weak key": (challenge, 1024, "RSA key of 1024 bits; at least 2048"),
        }
        for what, (sent, bits, message) in refused.items():
            rep = await scep_attempt(gw, profile, sent, key_bits=bits)
            assert (rep.status, rep.fail_info) == (FAILURE, BAD_REQUEST), (what, rep)
            assert rep.fail_text == message, what
            assert rep.certificates == [], what
        assert await certificates(admin) == []
        # Nothing above spent the profile's challenge.
        identity = await scep_identity(gw, admin, profile, name="after")
        assert [c["serial"] for c in await certificates(admin)] == [identity.serial]


async def test_a_challenge_is_good_for_one_certificate(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.admin() as admin:
        profile = await fetch_profile(gw, admin, await apple_token(admin))
        key = rsa_key()
        async with gw.device_client() as client:
            device = ScepDevice(client, profile.scep_url)
            first, request, requester = await device.enroll(
                key, device_csr(key, profile, profile.challenge)
            )
            assert first.status == SUCCESS, first.fail_text
            # The same message again (a replay), then another key with the same challenge.
            replay = await device.read(await device.send(request), request, requester)
            assert (replay.status, replay.fail_info) == (FAILURE, BAD_REQUEST)
            assert replay.fail_text == "the SCEP challenge was used already"
        second = await scep_attempt(gw, profile, profile.challenge)
        assert (second.status, second.fail_info) == (FAILURE, BAD_REQUEST)
        assert second.fail_text == "the SCEP challenge was used already"
        (issued,) = await certificates(admin)
        assert issued["sha256"] == first.certificates[0].fingerprint(hashes.SHA256()).hex()


# --- refusals: certificates on the device endpoints ------------------------------------------


@pytest.mark.parametrize("how", ["revoke", "retire"])
async def test_a_revoked_certificate_is_refused_on_check_in_and_connect(
    tmp_path: Path, how: str
) -> None:
    async with gateway(tmp_path) as gw, gw.admin() as admin:
        phone = await enroll_device(gw, admin, "udid-revoked")
        command_id = await enqueue(admin, phone.udid)
        serial = phone.identity.serial
        if how == "revoke":
            r = await admin.post(
                f"/api/v1/enrollment/certificates/{serial}/revoke",
                json={"reason": "reported stolen"},
            )
            reason = "reported stolen"
        else:
            r = await admin.delete(f"/api/v1/devices/{phone.udid}")
            assert r.json()["revoked"] == [serial]
            reason = "retired by an administrator"
        assert r.status_code == 200, r.text
        shown = (await admin.get(f"/api/v1/enrollment/certificates/{serial}")).json()
        assert shown["revocation_reason"] == reason
        assert shown["revoked_at"] is not None
        async with gw.device_client(phone.identity) as client:
            device = AppleDevice(client, phone.udid, phone.profile.topic)
            await refused_everywhere(every_send(device))
        # Nothing went out: still queued, or ended by the retirement.
        expected = ("queued", None) if how == "revoke" else ("error", "retired")
        assert await delivery(admin, command_id) == expected


async def test_a_certificate_speaks_for_its_own_device_only(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.admin() as admin:
        first = await enroll_device(gw, admin, "udid-first")
        second = await enroll_device(gw, admin, "udid-second")
        command_id = await enqueue(admin, second.udid)
        async with gw.device_client(first.identity) as client:
            other = AppleDevice(client, second.udid, first.profile.topic)
            new_device = AppleDevice(client, "udid-new", other.topic)
            await refused_everywhere({**every_send(other), "a new device": new_device.authenticate})
        assert (await admin.get("/api/v1/devices/udid-new")).status_code == 404
        assert await delivery(admin, command_id) == ("queued", None)
        by_serial = {c["serial"]: c for c in await certificates(admin)}
        assert by_serial[first.identity.serial]["device_id"] == first.udid
        assert by_serial[second.identity.serial]["device_id"] == second.udid
        assert all(c["revoked_at"] is None for c in by_serial.values())


async def test_check_out_revokes_the_certificate(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.admin() as admin:
        phone = await enroll_device(gw, admin, "udid-checkout")
        async with gw.device_client(phone.identity) as client:
            device = AppleDevice(client, phone.udid, phone.profile.topic)
            r = await device.checkin("CheckOut")
            assert r.status_code == 200, r.text
            shown = (
                await admin.get(f"/api/v1/enrollment/certificates/{phone.identity.serial}")
            ).json()
            assert shown["revoked_at"] is not None
            assert shown["revocation_reason"] == "checked out (MDM profile removed)"
            facts = (await admin.get(f"/api/v1/devices/{phone.udid}")).json()["facts"]
            assert facts["apple_enrollment"]["enrolled"] is False
            await refused_everywhere({"Idle": functools.partial(device.connect, "Idle")})


async def test_another_orgs_certificate_cannot_take_over_an_enrolled_device(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as gw, gw.admin() as admin:
        udid = "udid-globex"
        globex = await enroll_device(gw, admin, udid, org="/globex")
        # Another org's token: its profile and SCEP work, the certificate is issued...
        profile = await fetch_profile(gw, admin, await apple_token(admin, "/acme"))
        acme = await scep_identity(gw, admin, profile, name="acme")
        # ...but it does not take the device /globex manages.
        async with gw.device_client(acme) as client:
            takeover = AppleDevice(client, udid, profile.topic)
            await refused_everywhere({"Authenticate": takeover.authenticate})
        assert (await admin.get(f"/api/v1/devices/{udid}")).json()["org"] == "/globex"
        by_serial = {c["serial"]: c for c in await certificates(admin)}
        assert by_serial[acme.serial]["device_id"] is None
        assert by_serial[globex.identity.serial]["device_id"] == udid
        assert by_serial[globex.identity.serial]["revoked_at"] is None
        # The device keeps working with its own certificate.
        command_id = await enqueue(admin, udid)
        async with gw.device_client(globex.identity) as client:
            device = AppleDevice(client, udid, globex.profile.topic)
            r = await device.connect("Idle")
            assert r.status_code == 200, r.text
            assert plistlib.loads(r.content)["CommandUUID"] == command_id
            # Once it has left /globex (its profile removed), /acme's certificate enrols it.
            r = await device.checkin("CheckOut")
            assert r.status_code == 200, r.text
        async with gw.device_client(acme) as client:
            r = await AppleDevice(client, udid, profile.topic).authenticate()
            assert r.status_code == 200, r.text
        assert (await admin.get(f"/api/v1/devices/{udid}")).json()["org"] == "/acme"


async def test_a_retired_device_enrols_again_with_a_new_profile(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.admin() as admin:
        old = await enroll_device(gw, admin, "udid-retired")
        r = await admin.delete(f"/api/v1/devices/{old.udid}")
        assert r.status_code == 200, r.text
        facts = (await admin.get(f"/api/v1/devices/{old.udid}")).json()["facts"]
        assert facts["unenrolled"]["reason"] == "retired by an administrator"

        new = await enroll_device(gw, admin, old.udid)
        async with gw.device_client(new.identity) as client:
            r = await AppleDevice(client, new.udid, new.profile.topic).connect("Idle")
            assert r.status_code == 200, r.text
        async with gw.device_client(old.identity) as client:
            device = AppleDevice(client, old.udid, old.profile.topic)
            await refused_everywhere({"Idle": functools.partial(device.connect, "Idle")})
        # Enrolled again: no longer marked unenrolled, and the history says so.
        facts = (await admin.get(f"/api/v1/devices/{old.udid}")).json()["facts"]
        assert "unenrolled" not in facts, facts
        assert [e["event"] for e in facts["enrollment_events"]] == [
            "enrolled",
            "unenrolled",
            "enrolled",
        ]
        by_serial = {c["serial"]: c for c in await certificates(admin)}
        assert by_serial[old.identity.serial]["revoked_at"] is not None
        assert by_serial[new.identity.serial]["device_id"] == old.udid
        assert by_serial[new.identity.serial]["revoked_at"] is None
