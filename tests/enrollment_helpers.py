"""What the enrollment tests share: a real ``mdmgate serve`` (tests/cluster.py) under TLS
with the built-in CA on, its admin API (tokens, issued certificates, the CA), device
identities on disk for mutual TLS, ``openssl verify`` as the judge of what was issued, and
MS-MDE2's own sample messages (tests/data/mde2/) filled in as a Windows device sends them.

Nothing here comes from ``mdmgate.enrollment``: the tests check the gateway's certificates
with tools of their own (tests/pki_helpers.py), and spell out MS-MDE2's namespaces here, so
that a typo in the gateway cannot agree with itself.
"""

from __future__ import annotations

import base64
import re
import ssl
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.cluster import Cluster, Node, Pki
from tests.pki_helpers import Credential, key_pem

__all__ = [
    "ENROLL",
    "MDE2_SAMPLES",
    "PASSPHRASE",
    "PKI",
    "PROVISION_DOC",
    "SAMPLE_CSR",
    "SAMPLE_DEVICE_ID",
    "SAMPLE_HW_DEV_ID",
    "SAMPLE_PASSWORD",
    "SAMPLE_PKCS7",
    "SAMPLE_SECURITY_TOKEN",
    "SOAP_CONTENT_TYPE",
    "WSSE",
    "WST",
    "XCEP",
    "XML_NS",
    "XSI",
    "A",
    "EnrollmentGateway",
    "Identity",
    "S",
    "Token",
    "b64",
    "ca_pem",
    "certificates",
    "create_token",
    "enrollment_config",
    "enrollment_gateway",
    "fill",
    "get_policies",
    "openssl_verify",
    "renewal_request",
    "request_security_token",
    "revoke_token",
    "sample",
    "write_identity",
    "write_pem",
]

#: The CA key's passphrase in the tests' config.
PASSPHRASE = "enrollment end-to-end passphrase"


def enrollment_config(*, passphrase: str | None = PASSPHRASE, extra: str = "") -> str:
    """A config whose ``[enrollment]`` table turns the built-in CA on with ``passphrase``
    (``None``: off) and a 2048-bit root (quick to make); ``extra`` lines go into the same
    table (e.g. ``apple_topic = "..."``), other tables after them."""
    lines = ["[enrollment]", 'root_key = "rsa-2048"']
    if passphrase is not None:
        lines.append(f'ca_passphrase = "{passphrase}"')
    return "\n".join(lines) + "\n" + extra + ("\n" if extra else "")


@dataclass(frozen=True)
class Identity(Credential):
    """A device's certificate and private key, also as PEM files (for TLS and openssl)."""

    key: rsa.RSAPrivateKey
    cert_path: Path
    key_path: Path

    @property
    def serial(self) -> str:
        """The serial as the admin API spells it (lower-case hex)."""
        return format(self.cert.serial_number, "x")


@dataclass
class EnrollmentGateway:
    """One running gateway (``cluster``'s nodes share its database) and the PKI its TLS
    server certificate comes from (``pki``; devices trust its CA)."""

    cluster: Cluster
    pki: Pki
    root: Path

    @property
    def node(self) -> Node:
        return self.cluster.nodes[0]

    @property
    def base_url(self) -> str:
        return self.node.base_url

    def admin(self, node: Node | None = None) -> httpx.AsyncClient:
        """The admin API, with the token."""
        return self.cluster.admin(node)

    def tls_context(self, identity: Identity | None = None) -> ssl.SSLContext:
        """Trusts the gateway's server certificate; presents ``identity`` if given."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_file))
        if identity is not None:
            context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        return context

    def device_client(
        self, identity: Identity | None = None, node: Node | None = None
    ) -> httpx.AsyncClient:
        """A device's HTTPS client to ``node`` (default the first), with no admin token."""
        base = (node or self.node).base_url
        return httpx.AsyncClient(base_url=base, verify=self.tls_context(identity), timeout=60)


@asynccontextmanager
async def enrollment_gateway(
    tmp_path: Path,
    *,
    config: str | None = None,
    db: str | None = None,
    nodes: int = 1,
    env: dict[str, str] | None = None,
) -> AsyncIterator[EnrollmentGateway]:
    """Real ``mdmgate serve`` nodes under TLS on ``db`` (default a new SQLite file), with
    ``config`` (default :func:`enrollment_config`). The CA passphrase comes from the config
    only: ``MDMGATE_CA_PASSPHRASE`` is emptied for the nodes unless ``env`` sets it. On a
    failure the nodes' logs are printed (pytest shows them with it)."""
    pki = Pki.create(tmp_path / "pki")
    cluster = Cluster(
        tmp_path,
        db or Cluster.sqlite_url(tmp_path / "mdmgate.db"),
        nodes=nodes,
        config=enrollment_config() if config is None else config,
        pki=pki,
        env={"MDMGATE_CA_PASSPHRASE": "", **(env or {})},
    )
    async with cluster:
        try:
            yield EnrollmentGateway(cluster, pki, tmp_path)
        except BaseException:
            print(cluster.logs(60))
            raise


# -- the admin API


@dataclass(frozen=True)
class Token:
    """An enrollment token as created: its id, the value shown once, and the answer."""

    id: str
    value: str
    org: str
    created: dict[str, Any]


async def create_token(
    admin: httpx.AsyncClient,
    org: str,
    *,
    platforms: Sequence[str] = (),
    max_uses: int | None = None,
    expires_in_hours: float = 24.0,
) -> Token:
    body: dict[str, Any] = {"org": org, "expires_in_hours": expires_in_hours}
    if platforms:
        body["platforms"] = list(platforms)
    if max_uses is not None:
        body["max_uses"] = max_uses
    r = await admin.post("/api/v1/enrollment/tokens", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return Token(created["token"]["id"], created["value"], org, created)


async def revoke_token(admin: httpx.AsyncClient, token_id: str) -> dict[str, Any]:
    r = await admin.delete(f"/api/v1/enrollment/tokens/{token_id}")
    assert r.status_code == 200, r.text
    token: dict[str, Any] = r.json()
    assert token["state"] == "revoked", token
    return token


async def certificates(
    admin: httpx.AsyncClient, device_id: str | None = None, *, page_size: int = 1000
) -> list[Any]:
    """Every issued certificate (of ``device_id``), in serial order, read ``page_size`` at a
    time."""
    found: list[Any] = []
    after = None
    while True:
        params = {"limit": str(page_size), **({"after": after} if after else {})}
        if device_id is not None:
            params["device_id"] = device_id
        r = await admin.get("/api/v1/enrollment/certificates", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        found += page["certificates"]
        after = page["next"]
        if after is None:
            return found


async def ca_pem(admin: httpx.AsyncClient) -> bytes:
    """The CA certificate devices are issued under, as the admin API gives it."""
    r = await admin.get("/api/v1/enrollment/ca")
    assert r.status_code == 200, r.text
    pem: str = r.json()["pem"]
    return pem.encode()


# -- certificates on disk


def write_pem(path: Path, der: bytes) -> Path:
    """Writes a DER certificate as PEM to ``path``."""
    certificate = x509.load_der_x509_certificate(der)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def write_identity(directory: Path, name: str, cert_der: bytes, key: rsa.RSAPrivateKey) -> Identity:
    """``<name>.pem`` (the certificate) and ``<name>.key`` (its key) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = write_pem(directory / f"{name}.pem", cert_der)
    key_path = directory / f"{name}.key"
    key_path.write_bytes(key_pem(key))
    return Identity(key, x509.load_der_x509_certificate(cert_der), cert_path, key_path)


def openssl_verify(ca_file: Path, cert_file: Path) -> str:
    """``openssl verify -CAfile ca_file cert_file``, which must succeed; its output."""
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_file), str(cert_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.strip() == f"{cert_file}: OK", output
    return output


# -- MS-MDE2: the specification's sample messages, filled in

MDE2_SAMPLES = Path(__file__).parent / "data" / "mde2"

# MS-MDE2's namespaces and values, spelled out here rather than taken from the gateway.
S = "http://www.w3.org/2003/05/soap-envelope"
A = "http://www.w3.org/2005/08/addressing"
ENROLL = "http://schemas.microsoft.com/windows/management/2012/01/enrollment"
XCEP = "http://schemas.microsoft.com/windows/pki/2009/01/enrollmentpolicy"
WST = "http://docs.oasis-open.org/ws-sx/ws-trust/200512"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PKI = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XML_NS = "http://www.w3.org/XML/1998/namespace"
PROVISION_DOC = (
    "http://schemas.microsoft.com/5.0.0.0/ConfigurationManager/Enrollment/"
    "DeviceEnrollmentProvisionDoc"
)
SOAP_CONTENT_TYPE = "application/soap+xml; charset=utf-8"

# What the samples carry where a test puts its own values.
SAMPLE_PASSWORD = "mypassword"
SAMPLE_SECURITY_TOKEN = "B64EncodedSampleBinarySecurityToken"
SAMPLE_CSR = "DER format PKCS#10 certificate request in Base64 encoding Insterted Here"
SAMPLE_PKCS7 = "PKCS#7 renewal request in Base64 Inserted Here"
SAMPLE_DEVICE_ID = "7BA748C8-703E-4DF2-A74A-92984117346A"
SAMPLE_HW_DEV_ID = "F" * 64


def sample(name: str) -> str:
    """The sample message ``name`` (e.g. ``rst_onpremise.xml``) as published."""
    return (MDE2_SAMPLES / name).read_text(encoding="utf-8")


def fill(text: str, placeholder: str, value: str) -> str:
    """``text`` with ``value`` (XML: put in as it is) in place of ``placeholder`` where it
    starts the content of an element, which must be in exactly one place. The samples'
    comments name the placeholders too, and stay as they are: a value with ``--`` in a
    comment would end it."""
    filled, count = re.subn(rf"(>\s*){re.escape(placeholder)}", lambda m: m[1] + value, text)
    assert count == 1, f"{placeholder!r} starts {count} elements' content, not one"
    return filled


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def get_policies(token: str, *, federated: bool = False) -> bytes:
    """MS-MDE2 4.2.1's GetPolicies request carrying ``token``: on premise as its password,
    federated (base64) as its BinarySecurityToken."""
    if federated:
        return fill(
            sample("get_policies_federated.xml"), SAMPLE_SECURITY_TOKEN, b64(token)
        ).encode()
    return fill(sample("get_policies_onpremise.xml"), SAMPLE_PASSWORD, token).encode()


def request_security_token(
    token: str, csr: bytes, *, device_id: str = SAMPLE_DEVICE_ID, federated: bool = False
) -> bytes:
    """MS-MDE2 4.3.1's RequestSecurityToken carrying ``token`` (as :func:`get_policies`
    does), the PKCS#10 request ``csr`` (DER) and ``device_id`` as its DeviceID."""
    if federated:
        # The published sample has a stray quote after its token.
        text = fill(sample("rst_federated.xml"), SAMPLE_SECURITY_TOKEN + '"', b64(token))
    else:
        text = fill(sample("rst_onpremise.xml"), SAMPLE_PASSWORD, token)
    text = fill(text, SAMPLE_CSR, b64(csr))
    return fill(text, SAMPLE_DEVICE_ID, device_id).encode()


def renewal_request(signed: bytes) -> bytes:
    """The renewal RequestSecurityToken (tests/data/mde2/rst_renew.xml) carrying ``signed``,
    the PKCS#7 Windows sends: the new request signed with the current certificate."""
    return fill(sample("rst_renew.xml"), SAMPLE_PKCS7, b64(signed)).encode()
