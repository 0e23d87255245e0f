"""Enrollment on several gateway nodes sharing one PostgreSQL database (issue 16): real
``mdmgate serve`` processes (tests/cluster.py) under TLS, devices enrolled through one node and
served by the other.

What must hold across nodes, each with a test: one CA however many nodes start at once on an
empty database; a Windows device enrolled through node A (MS-MDE2's own sample messages, a CSR
made here) runs its OMA-DM session over mTLS on node B and gets its queued command; a token's
``max_uses`` holds for enrollments split over both nodes at once; a certificate revoked on one
node is refused by the other; a SCEP challenge from a profile downloaded on one node is good
once, on any node.

Nothing here sleeps for timing: every wait is a request's answer, under ``fail_after``.
"""

from __future__ import annotations

import base64
import hashlib
import plistlib
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio
from asn1crypto import cms  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests import scep_client
from tests.cluster import Cluster, Node, Pki, postgres_database
from tests.enrollment_helpers import (
    ENROLL,
    SOAP_CONTENT_TYPE,
    WSSE,
    WST,
    S,
    certificates,
    get_policies,
    openssl_verify,
    request_security_token,
    sample,
    write_pem,
)
from tests.pki_helpers import csr_der, key_pem, public_key_der, rsa_key
from tests.postgres_server import PostgresServer
from tests.windows_emulator import WindowsDevice

PASSPHRASE = "cluster CA passphrase"
TOPIC = f"com.apple.mgmt.External.{uuid.UUID(int=0x16)}"
CONFIG = f"""\
[enrollment]
ca_passphrase = "{PASSPHRASE}"
root_key = "rsa-2048"
apple_topic = "{TOPIC}"
"""

SOAP = {"content-type": SOAP_CONTENT_TYPE}
DISCOVERY = "/EnrollmentServer/Discovery.svc"
ENROLLMENT = "/EnrollmentServer/Enrollment.svc"
SCEP = "/mdm/apple/scep"
SCEP_CHALLENGE_PAYLOAD = "com.apple.security.scep"


# --- the cluster ---------------------------------------------------------------------------------


@pytest.fixture
def database(postgres_server: PostgresServer) -> str:
    """A new, empty PostgreSQL database (no schema yet: the nodes make it)."""
    return postgres_database(postgres_server, "enrollment")


@asynccontextmanager
async def two_nodes(
    tmp_path: Path, database: str, *, together: bool = False
) -> AsyncIterator[tuple[Cluster, Node, Node]]:
    """Two nodes under TLS on ``database``, with the built-in CA; the nodes' logs are
    printed on a failure."""
    pki = Pki.create(tmp_path / "pki")
    cluster = Cluster(tmp_path, database, nodes=2, config=CONFIG, pki=pki, together=together)
    with trio.fail_after(180):
        async with cluster:
            try:
                yield cluster, cluster.nodes[0], cluster.nodes[1]
            except BaseException:
                print(cluster.logs(60))
                raise


def node_client(cluster: Cluster, node: Node, identity: Path | None = None) -> httpx.AsyncClient:
    """A device's client of ``node``: it trusts the nodes' server certificate and presents
    ``identity`` (a PEM file with key and certificate), if any."""
    assert cluster.pki is not None
    context = cluster.pki.client_context(identity)
    return httpx.AsyncClient(base_url=node.base_url, verify=context, timeout=60)


async def create_token(cluster: Cluster, node: Node, **fields: Any) -> dict[str, Any]:
    async with cluster.admin(node) as admin:
        r = await admin.post("/api/v1/enrollment/tokens", json={"org": "/acme", **fields})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def certificates_on(cluster: Cluster, node: Node) -> list[dict[str, Any]]:
    """Every issued certificate as ``node`` lists it, two to a page (so that paging runs)."""
    async with cluster.admin(node) as admin:
        return await certificates(admin, page_size=2)


async def queue_get(cluster: Cluster, node: Node, device_id: str, uri: str) -> str:
    raw = f"<Get><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>"
    async with cluster.admin(node) as admin:
        r = await admin.post(f"/api/v1/devices/{device_id}/commands", json={"raw": raw})
    assert r.status_code == 202, r.text
    command_id: str = r.json()["command_id"]
    return command_id


async def delivery_state(cluster: Cluster, node: Node, command_id: str) -> str:
    async with cluster.admin(node) as admin:
        r = await admin.get(f"/api/v1/commands/{command_id}")
    assert r.status_code == 200, r.text
    (delivery,) = r.json()["deliveries"]
    state: str = delivery["state"]
    return state


# --- Windows: MS-MDE2's samples, filled in ------------------------------------------------------


@dataclass(frozen=True)
class WindowsEnrollment:
    """What an enrolled device keeps: its certificate and key (as one PEM file, for TLS) and
    the CA the provisioning document installed."""

    device_id: str
    certificate: x509.Certificate
    ca_der: bytes
    identity: Path


def provisioned(answer: bytes) -> tuple[bytes, bytes]:
    """The CA and device certificates (DER) of an enrollment answer's provisioning document:
    the CertificateStore's Root and My entries."""
    body = ET.fromstring(answer).find(f"{{{S}}}Body")
    assert body is not None
    token = body.find(f".//{{{WST}}}RequestedSecurityToken/{{{WSSE}}}BinarySecurityToken")
    assert token is not None, answer
    document = ET.fromstring(base64.b64decode(token.text or "", validate=True))
    found: dict[str, bytes] = {}
    for store in document.findall("characteristic[@type='CertificateStore']"):
        for kind in store.findall("characteristic"):
            for parm in kind.iter("parm"):
                if parm.get("name") == "EncodedCertificate":
                    found[kind.get("type", "")] = base64.b64decode(parm.get("value", ""))
    return found["Root"], found["My"]


def fault_subcode(answer: bytes) -> tuple[str, str]:
    """The SOAP fault's subcode and reason text."""
    body = ET.fromstring(answer).find(f"{{{S}}}Body")
    assert body is not None
    subcode = body.find(f"{{{S}}}Fault/{{{S}}}Code/{{{S}}}Subcode/{{{S}}}Value")
    reason = body.find(f"{{{S}}}Fault/{{{S}}}Reason/{{{S}}}Text")
    assert subcode is not None, answer
    assert reason is not None, answer
    return subcode.text or "", reason.text or ""


async def enroll_windows(
    client: httpx.AsyncClient, token: str, device_id: str, key: rsa.RSAPrivateKey
) -> httpx.Response:
    return await client.post(
        ENROLLMENT,
        content=request_security_token(token, csr_der(key, device_id), device_id=device_id),
        headers=SOAP,
    )


async def enrolled_windows(
    cluster: Cluster, node: Node, token: str, device_id: str, directory: Path
) -> WindowsEnrollment:
    """A Windows device enrolled through ``node`` as Windows does it: discovery (the
    sample), policy, enrollment; its certificate checked with openssl against the CA the
    document installed, and carrying the CSR's key."""
    key = rsa_key()
    async with node_client(cluster, node) as client:
        assert (await client.get(DISCOVERY)).status_code == 200
        r = await client.post(DISCOVERY, content=sample("discover_onpremise.xml"), headers=SOAP)
        assert r.status_code == 200, r.text
        result = ET.fromstring(r.content).find(f".//{{{ENROLL}}}DiscoverResult")
        assert result is not None
        urls = {e.tag.split("}")[1]: (e.text or "").strip() for e in result}
        policy = urls["EnrollmentPolicyServiceUrl"].removeprefix(node.base_url)
        assert urls["EnrollmentServiceUrl"] == node.base_url + ENROLLMENT
        r = await client.post(policy, content=get_policies(token), headers=SOAP)
        assert r.status_code == 200, r.text
        r = await enroll_windows(client, token, device_id, key)
        assert r.status_code == 200, r.text
    ca_der, device_der = provisioned(r.content)
    certificate = x509.load_der_x509_certificate(device_der)
    assert public_key_der(certificate) == public_key_der(key)
    directory.mkdir(parents=True, exist_ok=True)
    openssl_verify(
        write_pem(directory / "ca.pem", ca_der), write_pem(directory / "device.pem", device_der)
    )
    identity = directory / "identity.pem"
    identity.write_bytes(key_pem(key) + certificate.public_bytes(serialization.Encoding.PEM))
    return WindowsEnrollment(device_id, certificate, ca_der, identity)


def serial_of(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


# --- the tests -----------------------------------------------------------------------------------


async def test_nodes_started_at_once_on_an_empty_database_share_one_ca(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """Both nodes find no CA and may each make one: all use the one stored first. Three
    times, each on a new database (a race is not run the same way every time)."""
    for attempt in range(3):
        database = postgres_database(postgres_server, "one_ca")
        root = tmp_path / f"attempt-{attempt}"
        async with two_nodes(root, database, together=True) as (cluster, a, b):
            served = []
            for node in (a, b):
                async with cluster.admin(node) as admin:
                    r = await admin.get("/api/v1/enrollment/ca")
                assert r.status_code == 200, r.text
                served.append(r.json())
        assert served[0] == served[1]
        with psycopg.connect(database) as conn:
            rows = conn.execute("SELECT value FROM enrollment_material WHERE name = 'ca'")
            (stored,) = rows.fetchall()
        ca = x509.load_pem_x509_certificate(bytes(stored[0]))
        assert ca.fingerprint(hashes.SHA256()).hex() == served[0]["sha256"]


async def test_a_device_enrolled_on_one_node_is_served_by_the_other(
    tmp_path: Path, database: str
) -> None:
    async with two_nodes(tmp_path, database) as (cluster, a, b):
        token = (await create_token(cluster, a, max_uses=1))["value"]
        device_id = "B3C4D5E6-0000-4000-8000-00000000000A"
        enrolled = await enrolled_windows(cluster, a, token, device_id, tmp_path / "device")
        async with cluster.admin(b) as admin:
            r = await admin.get("/api/v1/enrollment/ca")
            device = (await admin.get(f"/api/v1/devices/{device_id}")).json()
        served_ca = x509.load_pem_x509_certificate(r.json()["pem"].encode())
        assert served_ca.public_bytes(serialization.Encoding.DER) == enrolled.ca_der
        assert device["org"] == "/acme"
        command_id = await queue_get(cluster, b, device_id, "./DevDetail/SwV")

        emulator = WindowsDevice(device_id, tree={"./DevDetail/SwV": ("chr", "10.0.22631.1")})
        async with node_client(cluster, b, enrolled.identity) as client:
            log = await emulator.session(client)

        assert log[0].reply is not None
        assert log[0].reply.commands[0].data == "212"  # the SyncHdr: authenticated
        assert ("Get", "./DevDetail/SwV") in emulator.received
        assert await delivery_state(cluster, a, command_id) == "acknowledged"


async def test_max_uses_holds_for_enrollments_split_over_both_nodes(
    tmp_path: Path, database: str
) -> None:
    async with two_nodes(tmp_path, database) as (cluster, a, b):
        created = await create_token(cluster, a, max_uses=3, platforms=["windows"])
        token = created["value"]
        keys = [rsa_key() for _ in range(6)]
        answers: dict[str, httpx.Response] = {}

        async def enroll(index: int) -> None:
            node = (a, b)[index % 2]
            device_id = f"C0FFEE00-0000-4000-8000-{index:012d}"
            async with node_client(cluster, node) as client:
                answers[device_id] = await enroll_windows(client, token, device_id, keys[index])

        async with trio.open_nursery() as nursery:
            for index in range(6):
                nursery.start_soon(enroll, index)

        issued = {d: r for d, r in answers.items() if r.status_code == 200}
        refused = {d: r for d, r in answers.items() if r.status_code != 200}
        assert len(issued) == 3, {d: r.status_code for d, r in answers.items()}
        for response in refused.values():
            assert response.status_code == 400
            subcode, reason = fault_subcode(response.content)
            assert subcode == "s:Authorization"
            assert "used as often as it may" in reason
        serials = {
            serial_of(x509.load_der_x509_certificate(provisioned(r.content)[1]))
            for r in issued.values()
        }
        assert len(serials) == 3
        from_a = await certificates_on(cluster, a)
        from_b = await certificates_on(cluster, b)
        assert from_a == from_b
        assert {c["serial"] for c in from_a} == serials
        assert {c["device_id"] for c in from_a} == set(issued)
        assert {c["token_id"] for c in from_a} == {created["token"]["id"]}
        async with cluster.admin(b) as admin:
            shown = (await admin.get(f"/api/v1/enrollment/tokens/{created['token']['id']}")).json()
            for device_id in refused:
                assert (await admin.get(f"/api/v1/devices/{device_id}")).status_code == 404
        assert (shown["uses"], shown["state"]) == (3, "exhausted")


async def test_a_certificate_revoked_on_one_node_is_refused_by_the_other(
    tmp_path: Path, database: str
) -> None:
    async with two_nodes(tmp_path, database) as (cluster, a, b):
        token = (await create_token(cluster, a))["value"]
        device_id = "D1E2F3A4-0000-4000-8000-00000000000B"
        enrolled = await enrolled_windows(cluster, b, token, device_id, tmp_path / "device")
        emulator = WindowsDevice(device_id, tree={"./DevDetail/SwV": ("chr", "10.0.22631.1")})
        async with node_client(cluster, a, enrolled.identity) as client:
            accepted = await emulator.session(client)
        assert accepted[0].reply is not None
        assert accepted[0].reply.commands[0].data == "212"

        serial = serial_of(enrolled.certificate)
        async with cluster.admin(b) as admin:
            r = await admin.post(f"/api/v1/enrollment/certificates/{serial}/revoke")
        assert r.status_code == 200, r.text
        assert r.json()["revoked_at"] is not None
        command_id = await queue_get(cluster, b, device_id, "./DevDetail/SwV")

        async with node_client(cluster, a, enrolled.identity) as client:
            refused = await emulator.session(client)

        exchange = refused[0]
        assert exchange.reply is not None
        header_status = exchange.reply.commands[0]
        assert (header_status.name, header_status.cmd, header_status.data) == (
            "Status",
            "SyncHdr",
            "403",
        )
        # Every command of the device's message refused likewise, none sent to it.
        assert {(c.name, c.data) for c in exchange.reply.commands} == {("Status", "403")}
        assert len(refused) == 1
        assert emulator.received == []
        assert await delivery_state(cluster, a, command_id) == "queued"


def signed_content(profile: bytes, directory: Path) -> bytes:
    """The plist inside a signed profile, its signature checked by ``openssl cms``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "profile.der").write_bytes(profile)
    done = subprocess.run(
        ["openssl", "cms", "-verify", "-noverify", "-inform", "DER", "-in", "profile.der"],
        cwd=directory,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    content: bytes = cms.ContentInfo.load(profile)["content"]["encap_content_info"][
        "content"
    ].native
    assert done.stdout == content
    return content


async def scep_request(
    client: httpx.AsyncClient, ca: x509.Certificate, challenge: str
) -> scep_client.CertRep:
    """One PKCSReq with ``challenge`` and a new key, its CertRep verified and read."""
    requester = scep_client.new_requester("scep device")
    csr = scep_client.make_csr(requester.key, "scep device", challenge)
    request = scep_client.pkcs_req(csr, requester, ca)
    r = await client.post(
        SCEP,
        params={"operation": "PKIOperation"},
        content=request.body,
        headers={"content-type": "application/x-pki-message"},
    )
    assert r.status_code == 200, r.text
    return scep_client.read_cert_rep(r.content, ca_cert=ca, requester=requester, request=request)


async def test_a_scep_challenge_is_good_once_on_any_node(tmp_path: Path, database: str) -> None:
    async with two_nodes(tmp_path, database) as (cluster, a, b):
        token = (await create_token(cluster, a, platforms=["apple"]))["value"]
        async with node_client(cluster, a) as client:
            r = await client.get("/mdm/apple/enroll", params={"token": token})
        assert r.status_code == 200, r.text
        profile = plistlib.loads(signed_content(r.content, tmp_path / "profile"))
        (scep,) = [
            p for p in profile["PayloadContent"] if p["PayloadType"] == SCEP_CHALLENGE_PAYLOAD
        ]
        challenge = scep["PayloadContent"]["Challenge"]
        assert scep["PayloadContent"]["URL"] == a.base_url + SCEP

        async with node_client(cluster, b) as client:
            r = await client.get(SCEP, params={"operation": "GetCACert"})
            assert r.status_code == 200, r.text
            ca = x509.load_der_x509_certificate(r.content)
            on_b = await scep_request(client, ca, challenge)
        assert on_b.status == 0
        (issued,) = on_b.certificates
        async with node_client(cluster, a) as client:
            again_on_a = await scep_request(client, ca, challenge)
        assert (again_on_a.status, again_on_a.fail_info) == (2, 2)  # FAILURE, badRequest
        assert "used already" in (again_on_a.fail_text or "")

        listed = await certificates_on(cluster, a)
        assert [c["serial"] for c in listed] == [serial_of(issued)]
        assert listed == await certificates_on(cluster, b)
        assert (
            hashlib.sha256(issued.public_bytes(serialization.Encoding.DER)).hexdigest()
            == (listed[0]["sha256"])
        )
