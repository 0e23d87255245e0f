"""Windows enrollment end to end: a real ``mdmgate serve`` (TLS, SQLite, the built-in CA on)
and a Windows device built in this file from MS-MDE2's own sample messages
(tests/data/mde2/): discovery, GetPolicies with the enrollment token as password,
RequestSecurityToken with a certificate request made here. What the gateway answers is read
with xml.etree, the certificates it issues are judged by ``openssl verify``, and the device
then runs OMA-DM sessions (tests/windows_emulator.py) over mutual TLS with the issued
certificate and no SyncML credentials at all.

Then the certificate's life: renewal (the renewal sample over mutual TLS), the user's
unenrollment (Alert 1226), retirement and an administrator's revocation, each of which ends
what the certificate opens. And the refusals: each a SOAP fault whose code, subcode and reason
name the problem, with nothing issued (the admin API's certificate list unchanged).
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from tests.enrollment_helpers import (
    ENROLL,
    PROVISION_DOC,
    SAMPLE_DEVICE_ID,
    SAMPLE_HW_DEV_ID,
    SAMPLE_PASSWORD,
    SOAP_CONTENT_TYPE,
    WSSE,
    WST,
    XCEP,
    A,
    EnrollmentGateway,
    Identity,
    S,
    Token,
    ca_pem,
    certificates,
    create_token,
    enrollment_config,
    enrollment_gateway,
    get_policies,
    openssl_verify,
    renewal_request,
    request_security_token,
    revoke_token,
    sample,
    write_identity,
    write_pem,
)
from tests.pki_helpers import csr_der, public_key_der, rsa_key
from tests.windows_emulator import WindowsDevice

DISCOVERY_PATH = "/EnrollmentServer/Discovery.svc"
POLICY_PATH = "/EnrollmentServer/Policy.svc"
ENROLLMENT_PATH = "/EnrollmentServer/Enrollment.svc"
# The samples' MessageIDs, which a fault answers.
DISCOVER_MESSAGE_ID = "urn:uuid: 748132ec-a575-4329-b01b-6171a9cf8478"
POLICIES_MESSAGE_ID = "urn:uuid:72048B64-0F19-448F-8C2E-B4C661860AA0"
ENROLLMENT_MESSAGE_ID = "urn:uuid:0d5a1441-5891-453b-becf-a2e5f6ea3749"
RENEWAL_MESSAGE_ID = "urn:uuid:61a17f2c-42e9-4a45-9c85-f15c1c8baee8"
SW_VERSION = "./DevDetail/SwV"


def get_command(uri: str) -> dict[str, str]:
    """The admin API's raw Windows command: Get one node."""
    return {
        "raw": f"<Get><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>"
    }


# -- the device's messages: MS-MDE2's samples, filled in (tests/enrollment_helpers.py)


def signed_renewal(current: Identity, new_csr: bytes) -> bytes:
    """The new request in a PKCS#7 signed with the current certificate (what Windows sends)."""
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(new_csr)
        .add_signer(current.cert, current.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


# -- reading the gateway's answers


def soap_body(response: httpx.Response) -> ET.Element:
    assert response.headers["content-type"] == SOAP_CONTENT_TYPE, response.headers
    root = ET.fromstring(response.content)
    assert root.tag == f"{{{S}}}Envelope", root.tag
    body = root.find(f"{{{S}}}Body")
    assert body is not None
    return body


def text_of(parent: ET.Element, path: str) -> str:
    found = parent.find(path)
    assert found is not None, f"{path} missing"
    return (found.text or "").strip()


@dataclass(frozen=True)
class Fault:
    status: int
    code: str
    subcode: str
    reason: str


def fault_of(response: httpx.Response, relates_to: str | None = None) -> Fault:
    """The SOAP 1.2 fault a refusal must be (MS-MDE2 2.2.10), answering the request's
    MessageID ``relates_to`` (``None``: the request was not read far enough to have one)."""
    root = ET.fromstring(response.content)
    related = root.find(f"{{{S}}}Header/{{{A}}}RelatesTo")
    assert (None if related is None else related.text) == relates_to, response.text
    fault = soap_body(response).find(f"{{{S}}}Fault")
    assert fault is not None, response.text
    return Fault(
        response.status_code,
        text_of(fault, f"{{{S}}}Code/{{{S}}}Value"),
        text_of(fault, f"{{{S}}}Code/{{{S}}}Subcode/{{{S}}}Value"),
        text_of(fault, f"{{{S}}}Reason/{{{S}}}Text"),
    )


def characteristics(parent: ET.Element, kind: str) -> list[ET.Element]:
    return [c for c in parent.findall("characteristic") if c.get("type") == kind]


def parms(parent: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in parent.findall("parm")}


def certificate_nodes(store: ET.Element) -> dict[str, bytes]:
    """Thumbprint -> DER of each certificate a CertificateStore node installs."""
    return {
        node.get("type", ""): base64.b64decode(parms(node)["EncodedCertificate"])
        for node in store.findall("characteristic")
        if "EncodedCertificate" in parms(node)
    }


def only(found: list[ET.Element], what: str) -> ET.Element:
    assert len(found) == 1, f"{len(found)} {what}"
    return found[0]


def provisioning_doc(response: httpx.Response) -> ET.Element:
    """The wap-provisioningdoc in a RequestSecurityTokenResponseCollection (base64 in its
    BinarySecurityToken)."""
    assert response.status_code == 200, response.text
    body = soap_body(response)
    token = body.find(
        f"{{{WST}}}RequestSecurityTokenResponseCollection/{{{WST}}}RequestSecurityTokenResponse"
        f"/{{{WST}}}RequestedSecurityToken/{{{WSSE}}}BinarySecurityToken"
    )
    assert token is not None, response.text
    assert token.get("ValueType") == PROVISION_DOC
    doc = ET.fromstring(base64.b64decode(token.text or ""))
    assert doc.tag == "wap-provisioningdoc"
    return doc


@dataclass(frozen=True)
class Provisioned:
    """What a first enrollment's document gives the device."""

    ca_der: bytes
    device_der: bytes
    #: The w7 APPLICATION's parms (ADDR, PROVIDER-ID, ...), and its APPAUTH by level.
    account: dict[str, str]
    appauth: dict[str, dict[str, str]]
    #: Where the device renews its certificate (CertificateStore My/WSTEP/Renew).
    renewal_url: str


def read_provisioning(doc: ET.Element) -> Provisioned:
    stores = characteristics(doc, "CertificateStore")
    root = only([r for s in stores for r in characteristics(s, "Root")], "Root stores")
    my = only([m for s in stores for m in characteristics(s, "My")], "My stores")
    (ca_der,) = certificate_nodes(only(characteristics(root, "System"), "Root/System")).values()
    # EnrollmentType Full (the sample's): the user's store.
    installed = certificate_nodes(only(characteristics(my, "User"), "My/User"))
    ((thumbprint, device_der),) = installed.items()
    assert thumbprint == hashlib.sha1(device_der).hexdigest().upper()
    renew = only(characteristics(only(characteristics(my, "WSTEP"), "WSTEP"), "Renew"), "Renew")
    application = only(characteristics(doc, "APPLICATION"), "APPLICATION")
    account = parms(application)
    assert account["APPID"] == "w7"
    appauth = {}
    for node in characteristics(application, "APPAUTH"):
        values = parms(node)
        appauth[values["AAUTHLEVEL"]] = values
    return Provisioned(ca_der, device_der, account, appauth, parms(renew)["ServerURL"])


# -- the device


@dataclass
class Enrollee:
    """A Windows device enrolling over HTTPS as MS-MDE2 describes."""

    client: httpx.AsyncClient
    device_id: str = SAMPLE_DEVICE_ID

    async def post(self, url: str, body: bytes) -> httpx.Response:
        return await self.client.post(
            url, content=body, headers={"content-type": SOAP_CONTENT_TYPE}
        )

    async def discover(self) -> dict[str, str]:
        """Probe, then Discover: the DiscoverResult's fields by name."""
        probe = await self.client.get(DISCOVERY_PATH)
        assert probe.status_code == 200, probe.text
        r = await self.post(DISCOVERY_PATH, sample("discover_onpremise.xml").encode())
        assert r.status_code == 200, r.text
        result = soap_body(r).find(f"{{{ENROLL}}}DiscoverResponse/{{{ENROLL}}}DiscoverResult")
        assert result is not None, r.text
        return {child.tag.partition("}")[2]: (child.text or "").strip() for child in result}

    async def policies(self, url: str, token: str) -> httpx.Response:
        return await self.post(url, get_policies(token))

    async def enroll(self, url: str, token: str, csr: bytes) -> httpx.Response:
        return await self.post(url, request_security_token(token, csr, device_id=self.device_id))


def minimal_key_length(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    policy = soap_body(response).find(
        f"{{{XCEP}}}GetPoliciesResponse/{{{XCEP}}}response/{{{XCEP}}}policies/{{{XCEP}}}policy"
    )
    assert policy is not None, response.text
    return int(
        text_of(
            policy,
            f"{{{XCEP}}}attributes/{{{XCEP}}}privateKeyAttributes/{{{XCEP}}}minimalKeyLength",
        )
    )


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    #: The certificate request it sent (DER), and what came of it.
    csr: bytes
    identity: Identity
    provisioned: Provisioned
    ca_file: Path


async def enroll(
    gw: EnrollmentGateway, token: Token, device_id: str = SAMPLE_DEVICE_ID
) -> Enrolled:
    """Discovery, policies and enrollment, as a device does them; the certificates it was
    given are on disk (``<device_id>-<serial>.pem``/``.key``, ``ca.pem``)."""
    key = rsa_key()
    csr = csr_der(key, device_id)
    async with gw.device_client() as client:
        device = Enrollee(client, device_id)
        found = await device.discover()
        policies = await device.policies(found["EnrollmentPolicyServiceUrl"], token.value)
        assert minimal_key_length(policies) == 2048
        r = await device.enroll(found["EnrollmentServiceUrl"], token.value, csr)
    provisioned = read_provisioning(provisioning_doc(r))
    directory = gw.root / "devices"
    serial = format(x509.load_der_x509_certificate(provisioned.device_der).serial_number, "x")
    identity = write_identity(directory, f"{device_id}-{serial}", provisioned.device_der, key)
    ca_file = write_pem(directory / "ca.pem", provisioned.ca_der)
    return Enrolled(device_id, csr, identity, provisioned, ca_file)


def oma_dm_client(gw: EnrollmentGateway, identity: Identity, addr: str) -> httpx.AsyncClient:
    """The device's OMA-DM connection: to the w7 ADDR, presenting ``identity``."""
    parts = urlsplit(addr)
    return httpx.AsyncClient(
        base_url=f"{parts.scheme}://{parts.netloc}", verify=gw.tls_context(identity), timeout=60
    )


async def queue_get(admin: httpx.AsyncClient, device_id: str, uri: str = SW_VERSION) -> str:
    r = await admin.post(f"/api/v1/devices/{device_id}/commands", json=get_command(uri))
    assert r.status_code == 202, r.text
    command_id: str = r.json()["command_id"]
    return command_id


async def delivery(admin: httpx.AsyncClient, command_id: str) -> dict[str, Any]:
    r = await admin.get(f"/api/v1/commands/{command_id}")
    assert r.status_code == 200, r.text
    (found,) = r.json()["deliveries"]
    assert isinstance(found, dict)
    return found


def header_status(device_log: list[Any]) -> str:
    reply = device_log[0].reply
    assert reply is not None, device_log[0].text
    first = reply.commands[0]
    assert (first.name, first.cmd) == ("Status", "SyncHdr")
    return str(first.data)


async def session(
    gw: EnrollmentGateway,
    enrolled: Enrolled,
    identity: Identity | None = None,
    *,
    unenroll: bool = False,
) -> tuple[WindowsDevice, list[Any]]:
    """One OMA-DM session of the enrolled device to its w7 ADDR, over mutual TLS with
    ``identity`` (default the enrolled one); ``unenroll``: the user removes the work account
    (Alert 1226 in this session)."""
    device = WindowsDevice(enrolled.device_id, tree={SW_VERSION: ("chr", "10.0.26100")})
    if unenroll:
        device.request_unenrollment()
    addr = enrolled.provisioned.account["ADDR"]
    async with oma_dm_client(gw, identity or enrolled.identity, addr) as client:
        log = await device.session(client)
    return device, log


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[EnrollmentGateway]:
    async with enrollment_gateway(tmp_path) as gateway:
        yield gateway


# -- the whole flow


async def test_enrolled_device_runs_its_session_over_mutual_tls(gw: EnrollmentGateway) -> None:
    async with gw.admin() as admin:
        token = await create_token(admin, "/acme", platforms=["windows"])
        enrolled = await enroll(gw, token)
        identity, provisioned = enrolled.identity, enrolled.provisioned
        # The CA in the document is the gateway's, and it issued the device's certificate.
        assert enrolled.ca_file.read_bytes() == await ca_pem(admin)
        openssl_verify(enrolled.ca_file, identity.cert_path)
        csr = x509.load_der_x509_csr(enrolled.csr)
        assert public_key_der(identity.cert) == public_key_der(csr)
        assert provisioned.account["ADDR"] == f"{gw.base_url}/ManagementServer/MDM.svc"

        # The device is in the token's org, bound to its certificate.
        r = await admin.get(f"/api/v1/devices/{SAMPLE_DEVICE_ID}")
        assert r.status_code == 200, r.text
        assert (r.json()["org"], r.json()["platform"]) == ("/acme", "windows")
        assert r.json()["facts"]["enrollment"]["hw_dev_id"] == SAMPLE_HW_DEV_ID
        r = await admin.get(f"/api/v1/devices/{SAMPLE_DEVICE_ID}/auth")
        assert r.status_code == 200, r.text
        assert r.json()["method"] == "certificate"
        (issued,) = await certificates(admin)
        assert issued["serial"] == identity.serial
        assert (issued["device_id"], issued["org"], issued["token_id"]) == (
            SAMPLE_DEVICE_ID,
            "/acme",
            token.id,
        )
        assert issued["revoked_at"] is None

        # Its first session, over mutual TLS and without SyncML credentials: the certificate
        # is what lets it in. Without it, or with another one its TLS server trusts too,
        # the gateway refuses the device and hands nothing out.
        command_id = await queue_get(admin, SAMPLE_DEVICE_ID)
        stranger, _ = gw.pki.identity(gw.root, "stranger")
        for context in (gw.tls_context(), gw.pki.client_context(stranger)):
            device = WindowsDevice(SAMPLE_DEVICE_ID, tree={SW_VERSION: ("chr", "10.0.26100")})
            async with httpx.AsyncClient(base_url=gw.base_url, verify=context) as client:
                log = await device.session(client)
            assert header_status(log) == "403"
            assert device.received == []
        assert (await delivery(admin, command_id))["state"] == "queued"
        device, log = await session(gw, enrolled)
        assert all(e.sent.header.cred_data is None for e in log)
        assert header_status(log) == "212"
        assert device.received == [("Get", SW_VERSION)]
        assert (await delivery(admin, command_id))["state"] == "acknowledged"


@pytest.mark.parametrize(
    ("server_auth", "verdicts"),
    [("on_challenge", ["407", "212"]), ("required", ["212"])],
    ids=["on_challenge", "required"],
)
async def test_the_documents_server_credentials_authenticate_the_gateway(
    tmp_path: Path, server_auth: str, verdicts: list[str]
) -> None:
    """A device that makes the server prove itself (OMA-DM's server authentication) with
    what the document configured: the server is PROVIDER-ID, its secret and first nonce
    the CLIENT level of APPAUTH. With ``[windows] server_auth = "required"`` the gateway's
    first message carries its Cred over that very nonce; else the device challenges it
    first (407, with a nonce of its own)."""
    config = enrollment_config(extra=f'[windows]\nserver_auth = "{server_auth}"')
    async with enrollment_gateway(tmp_path, config=config) as gw, gw.admin() as admin:
        enrolled = await enroll(gw, await create_token(admin, "/acme"))
        account, server = enrolled.provisioned.account, enrolled.provisioned.appauth["CLIENT"]
        assert server["AAUTHTYPE"] == "DIGEST"
        command_id = await queue_get(admin, SAMPLE_DEVICE_ID)
        device = WindowsDevice(
            SAMPLE_DEVICE_ID,
            tree={SW_VERSION: ("chr", "10.0.26100")},
            server_username=account["PROVIDER-ID"],
            server_secret=server["AAUTHSECRET"],
            server_nonce=base64.b64decode(server["AAUTHDATA"]),
        )
        async with oma_dm_client(gw, enrolled.identity, account["ADDR"]) as client:
            await device.session(client)
        assert device.server_auth_log == verdicts
        assert device.received == [("Get", SW_VERSION)]
        assert (await delivery(admin, command_id))["state"] == "acknowledged"


# -- the certificate's life


def renewed_certificate(doc: ET.Element) -> bytes:
    """The one certificate a renewal's document installs (CertificateStore My/<store>)."""
    (store,) = characteristics(doc, "CertificateStore")
    my = only(characteristics(store, "My"), "My stores")
    found = [der for s in my.findall("characteristic") for der in certificate_nodes(s).values()]
    assert len(found) == 1, found
    return found[0]


async def test_renewal_over_mutual_tls_gives_a_certificate_the_next_session_uses(
    gw: EnrollmentGateway,
) -> None:
    async with gw.admin() as admin:
        enrolled = await enroll(gw, await create_token(admin, "/acme"))
        old = enrolled.identity
        new_key = rsa_key()
        new_csr = csr_der(new_key, SAMPLE_DEVICE_ID)
        # The renewal sample, to the document's renewal URL, over TLS with the current
        # certificate (what Windows' automatic renewal does).
        async with gw.device_client(old) as client:
            r = await Enrollee(client).post(
                enrolled.provisioned.renewal_url, renewal_request(signed_renewal(old, new_csr))
            )
        renewed = write_identity(
            gw.root / "devices", "renewed", renewed_certificate(provisioning_doc(r)), new_key
        )
        openssl_verify(enrolled.ca_file, renewed.cert_path)
        assert public_key_der(renewed.cert) == public_key_der(new_key)
        assert renewed.serial != old.serial
        listed = {c["serial"]: c for c in await certificates(admin, SAMPLE_DEVICE_ID)}
        assert set(listed) == {old.serial, renewed.serial}
        assert listed[renewed.serial]["renews"] == old.serial
        assert listed[renewed.serial]["org"] == "/acme"
        # The old one is not revoked: a session in flight with it is not cut.
        assert listed[old.serial]["revoked_at"] is None

        command_id = await queue_get(admin, SAMPLE_DEVICE_ID)
        device, log = await session(gw, enrolled, renewed)
        assert header_status(log) == "212"
        assert device.received == [("Get", SW_VERSION)]
        assert (await delivery(admin, command_id))["state"] == "acknowledged"
        # Until it expires, the certificate it renewed still opens a session too.
        _, log = await session(gw, enrolled, old)
        assert header_status(log) == "212"


async def refused_session(
    gw: EnrollmentGateway, admin: httpx.AsyncClient, enrolled: Enrolled
) -> None:
    """A session with the enrolled certificate is refused: the SyncHdr's status is 403 (over
    HTTP 200, as OMA-DM answers), nothing else is said, and the command queued for the device
    is not handed out."""
    command_id = await queue_get(admin, enrolled.device_id)
    device, log = await session(gw, enrolled)
    assert len(log) == 1
    assert log[0].status == 200
    assert header_status(log) == "403"
    reply = log[0].reply
    assert reply is not None
    assert [c.name for c in reply.commands] == ["Status"] * len(reply.commands)
    assert device.received == []
    assert (await delivery(admin, command_id))["state"] == "queued"


async def test_unenrollment_alert_revokes_the_certificate(gw: EnrollmentGateway) -> None:
    async with gw.admin() as admin:
        enrolled = await enroll(gw, await create_token(admin, "/acme"))
        _, log = await session(gw, enrolled, unenroll=True)
        assert header_status(log) == "212"
        (cert,) = await certificates(admin, SAMPLE_DEVICE_ID)
        assert cert["serial"] == enrolled.identity.serial
        assert cert["revoked_at"] is not None
        assert "unenrolled" in cert["revocation_reason"]
        await refused_session(gw, admin, enrolled)


async def test_retiring_the_device_revokes_its_certificate(gw: EnrollmentGateway) -> None:
    async with gw.admin() as admin:
        enrolled = await enroll(gw, await create_token(admin, "/acme"))
        r = await admin.delete(f"/api/v1/devices/{SAMPLE_DEVICE_ID}")
        assert r.status_code == 200, r.text
        assert r.json()["revoked"] == [enrolled.identity.serial]
        (cert,) = await certificates(admin, SAMPLE_DEVICE_ID)
        assert cert["revoked_at"] is not None
        assert cert["revocation_reason"] == "retired by an administrator"
        await refused_session(gw, admin, enrolled)


async def test_a_revoked_certificate_opens_no_session_and_renews_nothing(
    gw: EnrollmentGateway,
) -> None:
    async with gw.admin() as admin:
        enrolled = await enroll(gw, await create_token(admin, "/acme"))
        serial = enrolled.identity.serial
        r = await admin.post(f"/api/v1/enrollment/certificates/{serial}/revoke")
        assert r.status_code == 200, r.text
        assert r.json()["revoked_at"] is not None
        # The TLS handshake succeeds (the CA still vouches for it); the gateway refuses it.
        await refused_session(gw, admin, enrolled)
        # Nor does it renew itself into a new certificate.
        new_csr = csr_der(rsa_key(), SAMPLE_DEVICE_ID)
        async with gw.device_client(enrolled.identity) as client:
            r = await Enrollee(client).post(
                enrolled.provisioned.renewal_url,
                renewal_request(signed_renewal(enrolled.identity, new_csr)),
            )
        assert fault_of(r, RENEWAL_MESSAGE_ID) == Fault(
            400, "s:Sender", "s:Authorization", "the certificate is revoked"
        )
        assert [c["serial"] for c in await certificates(admin)] == [serial]


# -- refusals: a fault naming the problem, and nothing issued


async def post_soap(gw: EnrollmentGateway, path: str, body: bytes) -> httpx.Response:
    async with gw.device_client() as client:
        return await Enrollee(client).post(path, body)


async def token_uses(admin: httpx.AsyncClient, token: Token) -> int:
    r = await admin.get(f"/api/v1/enrollment/tokens/{token.id}")
    assert r.status_code == 200, r.text
    uses: int = r.json()["uses"]
    return uses


async def nothing_issued(admin: httpx.AsyncClient, token: Token) -> None:
    """No certificate at all, no device, and the token's use not counted."""
    assert await certificates(admin) == []
    r = await admin.get(f"/api/v1/devices/{SAMPLE_DEVICE_ID}")
    assert r.status_code == 404, r.text
    assert await token_uses(admin, token) == 0


async def expired(admin: httpx.AsyncClient, token: Token) -> None:
    """Returns once the gateway says the token has expired (polling its state)."""
    with trio.fail_after(30):
        while True:
            r = await admin.get(f"/api/v1/enrollment/tokens/{token.id}")
            assert r.status_code == 200, r.text
            if r.json()["state"] == "expired":
                return
            await trio.sleep(0.05)  # a poll interval, not a wait for the outcome


def refusal(subcode: str, reason: str) -> Fault:
    return Fault(400, "s:Sender", subcode, reason)


@pytest.mark.parametrize("ending", ["expired", "revoked"])
async def test_an_expired_or_revoked_token_is_refused(gw: EnrollmentGateway, ending: str) -> None:
    async with gw.admin() as admin:
        if ending == "expired":
            token = await create_token(admin, "/acme", expires_in_hours=0.2 / 3600)
            await expired(admin, token)
            refused = refusal("s:Authorization", "the enrollment token has expired")
        else:
            token = await create_token(admin, "/acme")
            await revoke_token(admin, token.id)
            refused = refusal("s:Authorization", "the enrollment token was revoked")
        r = await post_soap(gw, POLICY_PATH, get_policies(token.value))
        assert fault_of(r, POLICIES_MESSAGE_ID) == refused
        body = request_security_token(token.value, csr_der(rsa_key(), SAMPLE_DEVICE_ID))
        r = await post_soap(gw, ENROLLMENT_PATH, body)
        assert fault_of(r, ENROLLMENT_MESSAGE_ID) == refused
        await nothing_issued(admin, token)


async def test_a_used_up_token_enrolls_no_second_device(gw: EnrollmentGateway) -> None:
    async with gw.admin() as admin:
        token = await create_token(admin, "/acme", max_uses=1)
        first = await enroll(gw, token)
        second = "0E4B2C1D-5A6F-4B7C-8D9E-0F1A2B3C4D5E"
        body = request_security_token(token.value, csr_der(rsa_key(), second), device_id=second)
        r = await post_soap(gw, ENROLLMENT_PATH, body)
        assert fault_of(r, ENROLLMENT_MESSAGE_ID) == refusal(
            "s:Authorization", "the enrollment token has been used as often as it may"
        )
        r = await admin.get(f"/api/v1/devices/{second}")
        assert r.status_code == 404, r.text
        assert [c["serial"] for c in await certificates(admin)] == [first.identity.serial]
        assert await token_uses(admin, token) == 1


async def test_another_orgs_token_does_not_take_over_an_enrolled_device(
    gw: EnrollmentGateway,
) -> None:
    async with gw.admin() as admin:
        acme = await create_token(admin, "/acme")
        globex = await create_token(admin, "/globex")
        enrolled = await enroll(gw, acme)
        body = request_security_token(globex.value, csr_der(rsa_key(), SAMPLE_DEVICE_ID))
        r = await post_soap(gw, ENROLLMENT_PATH, body)
        assert fault_of(r, ENROLLMENT_MESSAGE_ID) == refusal(
            "s:Authorization", "the device is enrolled in /acme: retire it there first"
        )
        # Nothing changed: the device, its certificate and its sessions are /acme's.
        (cert,) = await certificates(admin)
        assert (cert["serial"], cert["revoked_at"]) == (enrolled.identity.serial, None)
        r = await admin.get(f"/api/v1/devices/{SAMPLE_DEVICE_ID}")
        assert r.json()["org"] == "/acme"
        assert await token_uses(admin, globex) == 0
        _, log = await session(gw, enrolled)
        assert header_status(log) == "212"


@pytest.mark.parametrize("ended_by", ["retirement", "unenrollment"])
async def test_another_org_enrolls_the_device_once_its_enrollment_ended(
    gw: EnrollmentGateway, ended_by: str
) -> None:
    async with gw.admin() as admin:
        first = await enroll(gw, await create_token(admin, "/acme"))
        if ended_by == "retirement":
            r = await admin.delete(f"/api/v1/devices/{SAMPLE_DEVICE_ID}")
            assert r.status_code == 200, r.text
        else:
            _, log = await session(gw, first, unenroll=True)
            assert header_status(log) == "212"
        second = await enroll(gw, await create_token(admin, "/globex"))
        r = await admin.get(f"/api/v1/devices/{SAMPLE_DEVICE_ID}")
        assert r.json()["org"] == "/globex"
        listed = {c["serial"]: c for c in await certificates(admin, SAMPLE_DEVICE_ID)}
        assert listed[first.identity.serial]["revoked_at"] is not None
        assert listed[second.identity.serial]["org"] == "/globex"
        assert listed[second.identity.serial]["revoked_at"] is None
        _, log = await session(gw, second)
        assert header_status(log) == "212"
        _, log = await session(gw, first)
        assert header_status(log) == "403"


async def test_a_weak_key_is_refused(gw: EnrollmentGateway) -> None:
    async with gw.admin() as admin:
        token = await create_token(admin, "/acme")
        weak = csr_der(rsa_key(1024), SAMPLE_DEVICE_ID)
        r = await post_soap(gw, ENROLLMENT_PATH, request_security_token(token.value, weak))
        assert fault_of(r, ENROLLMENT_MESSAGE_ID) == refusal(
            "s:CertificateRequest", "RSA key of 1024 bits; at least 2048"
        )
        await nothing_issued(admin, token)


async def test_a_replayed_enrollment_is_refused(gw: EnrollmentGateway) -> None:
    async with gw.admin() as admin:
        token = await create_token(admin, "/acme")  # any number of devices
        body = request_security_token(token.value, csr_der(rsa_key(), SAMPLE_DEVICE_ID))
        first = await post_soap(gw, ENROLLMENT_PATH, body)
        device_der = read_provisioning(provisioning_doc(first)).device_der
        serial = format(x509.load_der_x509_certificate(device_der).serial_number, "x")
        again = await post_soap(gw, ENROLLMENT_PATH, body)
        assert fault_of(again, ENROLLMENT_MESSAGE_ID) == refusal(
            "s:Authorization",
            "this key pair was enrolled already: a replayed enrollment request",
        )
        # The first certificate stands, alone and unrevoked; one use counted.
        (cert,) = await certificates(admin)
        assert (cert["serial"], cert["revoked_at"]) == (serial, None)
        assert await token_uses(admin, token) == 1


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("{id}.not-the-secret", "the enrollment token is not valid"),
        ("et_0123456789abcdef.no-such-token", "the enrollment token is not known"),
        (SAMPLE_PASSWORD, "the enrollment token is malformed"),
    ],
    ids=["wrong secret", "unknown token", "not a token"],
)
async def test_a_wrong_password_is_refused(
    gw: EnrollmentGateway, password: str, reason: str
) -> None:
    async with gw.admin() as admin:
        token = await create_token(admin, "/acme")
        wrong = password.format(id=token.id)
        refused = refusal("s:Authentication", reason)
        r = await post_soap(gw, POLICY_PATH, get_policies(wrong))
        assert fault_of(r, POLICIES_MESSAGE_ID) == refused
        body = request_security_token(wrong, csr_der(rsa_key(), SAMPLE_DEVICE_ID))
        r = await post_soap(gw, ENROLLMENT_PATH, body)
        assert fault_of(r, ENROLLMENT_MESSAGE_ID) == refused
        await nothing_issued(admin, token)


async def test_a_document_type_declaration_is_refused(gw: EnrollmentGateway) -> None:
    async with gw.admin() as admin:
        token = await create_token(admin, "/acme")
        # The password is an entity that would be the token, were it ever expanded.
        body = request_security_token("&token;", csr_der(rsa_key(), SAMPLE_DEVICE_ID)).decode()
        dtd = f'<!DOCTYPE s:Envelope [<!ENTITY token "{token.value}">]>\n'
        body = body.replace("<s:Envelope", dtd + "<s:Envelope", 1)
        r = await post_soap(gw, ENROLLMENT_PATH, body.encode())
        assert fault_of(r) == refusal(
            "s:MessageFormat",
            "a DTD (<!DOCTYPE ...>) is not accepted: enrollment messages have none",
        )
        await nothing_issued(admin, token)


async def test_without_a_ca_passphrase_enrollment_says_how_to_turn_it_on(tmp_path: Path) -> None:
    off = (
        "enrollment is not set up: give the CA key a passphrase"
        " ([enrollment] ca_passphrase or MDMGATE_CA_PASSPHRASE) and restart"
    )
    async with (
        enrollment_gateway(tmp_path, config=enrollment_config(passphrase=None)) as gw,
        gw.admin() as admin,
    ):
        unavailable = Fault(500, "s:Receiver", "s:EnrollmentServer", off)
        r = await post_soap(gw, DISCOVERY_PATH, sample("discover_onpremise.xml").encode())
        assert fault_of(r, DISCOVER_MESSAGE_ID) == unavailable
        token = await create_token(admin, "/acme")
        body = request_security_token(token.value, csr_der(rsa_key(), SAMPLE_DEVICE_ID))
        r = await post_soap(gw, ENROLLMENT_PATH, body)
        assert fault_of(r, ENROLLMENT_MESSAGE_ID) == unavailable
        r = await admin.get("/api/v1/enrollment/ca")
        assert r.status_code == 503, r.text
        assert r.json()["error"] == off
        await nothing_issued(admin, token)
