"""What the enrollment end-to-end tests share, whatever the platform: a real ``mdmgate serve``
(tests/cluster.py) under TLS with the built-in CA on, its admin API (tokens, issued
certificates, the CA), key pairs and certificate requests made in the test, device identities
on disk for mutual TLS, and ``openssl verify`` as the judge of what was issued.

Nothing here comes from ``mdmgate.enrollment``: the tests check the gateway's certificates
with tools of their own.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.cluster import Cluster, Node, Pki

__all__ = [
    "PASSPHRASE",
    "EnrollmentGateway",
    "Identity",
    "Token",
    "ca_pem",
    "certificates",
    "create_token",
    "csr_der",
    "enrollment_config",
    "enrollment_gateway",
    "openssl_verify",
    "public_key_der",
    "revoke_token",
    "rsa_key",
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
class Identity:
    """A device's certificate and private key, as PEM files (for TLS and openssl)."""

    cert_path: Path
    key_path: Path
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def serial(self) -> str:
        """The serial as the admin API spells it (lower-case hex)."""
        return format(self.certificate.serial_number, "x")


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


async def certificates(admin: httpx.AsyncClient, device_id: str | None = None) -> list[Any]:
    """Every issued certificate (of ``device_id``), in serial order."""
    found: list[Any] = []
    after = None
    while True:
        params = {"limit": "1000", **({"after": after} if after else {})}
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


# -- keys, requests, certificates


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def csr_der(key: rsa.RSAPrivateKey, common_name: str) -> bytes:
    """A PKCS#10 request for ``key`` (SHA-256), DER."""
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


def public_key_der(
    holder: rsa.RSAPrivateKey | x509.Certificate | x509.CertificateSigningRequest,
) -> bytes:
    """The SubjectPublicKeyInfo (DER) of a key, a certificate or a request."""
    public = holder.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


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
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    certificate = x509.load_der_x509_certificate(cert_der)
    return Identity(cert_path, key_path, certificate, key)


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
