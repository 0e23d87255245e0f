"""A push certificate uploaded on any node takes effect on every node, without a restart.

First the client's part (:meth:`ApnsClient.use_credentials`) against the local APNs server of
tests/apns_server.py under TLS, which checks the client certificate and records which one
each push came with: new connections use the new certificate and topic, pushes in flight
finish on the old connection, which is closed after them. Then real ``mdmgate serve`` nodes
(tests/cluster.py) on one database, started without push credentials: a certificate uploaded
on one node makes the other push with it, and a later upload switches both; credentials in
``[apns]`` win over uploads.
"""

from __future__ import annotations

import datetime as dt
import ssl
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mdmgate.apple.push import ApnsClient, PushResult
from tests.apns_server import ApnsServer, RecordedPush, running
from tests.cluster import Cluster, Node
from tests.enrollment_helpers import enrollment_config
from tests.test_apple_e2e import AppleDevice

LIMIT = 10.0  # seconds any one client test may take
#: A node re-reads the stored certificate every few seconds; this is the most a switch may take.
SWITCH_DEADLINE = 60.0
#: How often a test queues another command while it waits for a node to switch.
ENQUEUE_EVERY = 0.5


def token(n: int) -> str:
    return f"{n:064x}"


def new_topic() -> str:
    return f"com.apple.mgmt.External.{uuid.uuid4()}"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# ---------------------------------------------------------------------------------------------
# Push certificates, issued by a stand-in for Apple's CA


@dataclass(frozen=True)
class PushIdentity:
    """An MDM push certificate (the topic in the subject's UID) and its key."""

    topic: str
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def upload(self) -> dict[str, str]:
        """The body of ``PUT /api/v1/apns/certificate``."""
        return {"pem": (self.cert_pem() + self.key_pem()).decode()}

    def client_context(self, trusted: trustme.CA) -> ssl.SSLContext:
        """A client context presenting this certificate to a server of ``trusted``."""
        context = ssl.create_default_context()
        trusted.configure_trust(context)
        with tempfile.TemporaryDirectory() as folder:
            context.load_cert_chain(*self.files(Path(folder)))
        return context

    def files(self, folder: Path) -> tuple[str, str]:
        """The certificate and key as PEM files in ``folder``."""
        cert, key = folder / f"{self.topic}.pem", folder / f"{self.topic}.key"
        cert.write_bytes(self.cert_pem())
        key.write_bytes(self.key_pem())
        return str(cert), str(key)


class PushCa:
    """Issues push certificates, as the Apple Push Certificates Portal does."""

    def __init__(self) -> None:
        self.key = rsa_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stand-in Apple push CA")])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, topic: str) -> PushIdentity:
        key = rsa_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.USER_ID, topic),
                x509.NameAttribute(NameOID.COMMON_NAME, f"APSP:{topic.rsplit('.', 1)[-1]}"),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(self.key, hashes.SHA256())
        )
        return PushIdentity(topic, cert, key)


@dataclass
class Apns:
    """The APNs stand-in's PKI: its server certificate (from ``tls``, a CA the gateway is
    told to trust) and the push CA whose client certificates it requires."""

    tls: trustme.CA
    push_ca: PushCa
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def apns_pki() -> Apns:
    tls = trustme.CA()
    push_ca = PushCa()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.issue_cert("127.0.0.1").configure_cert(context)
    context.load_verify_locations(cadata=push_ca.pem())
    context.verify_mode = ssl.CERT_REQUIRED  # certificate auth: no push without one
    context.set_alpn_protocols(["h2"])
    return Apns(tls, push_ca, context)


def seen_with(push: RecordedPush) -> tuple[bytes | None, str]:
    return push.client_cert, push.headers["apns-topic"]


# ---------------------------------------------------------------------------------------------
# The client


async def test_new_credentials_serve_new_connections_and_the_idle_old_one_closes(
    apns_pki: Apns,
) -> None:
    first, second = apns_pki.push_ca.issue(new_topic()), apns_pki.push_ca.issue(new_topic())
    server = ApnsServer()
    with trio.fail_after(LIMIT):
        async with (
            running(server, apns_pki.server_context) as url,
            ApnsClient(
                url, topic=first.topic, ssl_context=first.client_context(apns_pki.tls)
            ) as client,
        ):
            assert (await client.push(token(1), "magic-1")).ok
            client.use_credentials(second.client_context(apns_pki.tls), second.topic)
            # Nothing was in flight on the first connection: it goes at once.
            await server.until(lambda: 0 in server.closed)
            assert (await client.push(token(2), "magic-2")).ok
            assert client.connections_opened == 2
    before, after = server.pushes
    assert (before.connection, seen_with(before)) == (0, (first.der, first.topic))
    assert (after.connection, seen_with(after)) == (1, (second.der, second.topic))


async def test_pushes_in_flight_finish_on_the_old_connection_and_waiting_ones_move(
    apns_pki: Apns,
) -> None:
    first, second = apns_pki.push_ca.issue(new_topic()), apns_pki.push_ca.issue(new_topic())
    server = ApnsServer(max_concurrent_streams=2)
    server.gate = trio.Event()  # no answer until the test says so
    results: list[PushResult] = []
    with trio.fail_after(LIMIT):
        async with (
            running(server, apns_pki.server_context) as url,
            ApnsClient(
                url, topic=first.topic, ssl_context=first.client_context(apns_pki.tls)
            ) as client,
        ):

            async def push_six() -> None:
                results.extend(await client.push_many((token(n), f"m{n}") for n in range(6)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(push_six)
                # Two pushes are on the wire, four wait for a stream of that connection.
                await server.until(lambda: server.in_flight == 2)
                client.use_credentials(second.client_context(apns_pki.tls), second.topic)
                # The waiting four move to a new connection (two streams at a time there),
                # while the old one is kept open for its two unanswered pushes.
                await server.until(lambda: server.in_flight == 4)
                assert server.closed == set()
                server.gate.set()
            await server.until(lambda: 0 in server.closed)
    assert [r.ok for r in results] == [True] * 6
    assert [r.attempts for r in results] == [1] * 6, "a push was lost and sent again"
    by_connection: dict[int, set[tuple[bytes | None, str]]] = {}
    for push in server.pushes:
        by_connection.setdefault(push.connection, set()).add(seen_with(push))
    assert by_connection == {0: {(first.der, first.topic)}, 1: {(second.der, second.topic)}}
    assert [p.connection for p in server.pushes].count(0) == 2
    assert server.connections == 2


async def test_a_connection_being_opened_during_the_switch_is_not_used() -> None:
    server = ApnsServer()
    connecting, go_on = trio.Event(), trio.Event()
    old, new = new_topic(), new_topic()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:

            async def stream() -> trio.abc.Stream:
                if not connecting.is_set():
                    connecting.set()
                    await go_on.wait()
                ours, theirs = trio.testing.memory_stream_pair()
                nursery.start_soon(server.serve_stream, theirs)
                return ours

            async with ApnsClient("http://apns.test", topic=old, stream_factory=stream) as client:
                outcome: list[PushResult] = []

                async def push() -> None:
                    outcome.append(await client.push(token(1), "magic"))

                async with trio.open_nursery() as pushing:
                    pushing.start_soon(push)
                    await connecting.wait()
                    client.use_credentials(None, new)
                    go_on.set()
                await server.until(lambda: 0 in server.closed)
            nursery.cancel_scope.cancel()
    assert outcome[0].ok
    ((topic, connection),) = [(p.headers["apns-topic"], p.connection) for p in server.pushes]
    assert (topic, connection) == (new, 1)


async def test_bad_credentials_are_refused_by_name(apns_pki: Apns) -> None:
    identity = apns_pki.push_ca.issue(new_topic())
    cleartext = ApnsClient("http://127.0.0.1:1", topic=identity.topic)
    with pytest.raises(ValueError, match="topic is required"):
        cleartext.use_credentials(None, "")
    with pytest.raises(ValueError, match="cleartext"):
        cleartext.use_credentials(identity.client_context(apns_pki.tls), identity.topic)
    tls = ApnsClient("https://127.0.0.1:1", topic=identity.topic)
    with pytest.raises(ValueError, match="topic is required"):
        tls.use_credentials(identity.client_context(apns_pki.tls), "")


# ---------------------------------------------------------------------------------------------
# Real nodes


def gateway_config(apns_url: str, extra: str = "") -> str:
    """Devices check in without certificates (dev); the CA passphrase keeps uploads;
    ``[apns]`` names the stand-in (and ``extra`` lines)."""
    return (
        "dev = true\n" + enrollment_config() + f'[apns]\nurl = "{apns_url}"\nrate = 200.0\n' + extra
    )


def nodes(tmp_path: Path, apns: Apns, config: str, count: int) -> Cluster:
    trust = tmp_path / "apns-server-ca.pem"
    apns.tls.cert_pem.write_to_path(str(trust))
    return Cluster(
        tmp_path,
        Cluster.sqlite_url(tmp_path / "mdmgate.db"),
        nodes=count,
        config=config,
        # The nodes trust the stand-in's server certificate as they would Apple's.
        env={"SSL_CERT_FILE": str(trust), "MDMGATE_CA_PASSPHRASE": ""},
    )


@dataclass(frozen=True)
class Phone:
    udid: str
    push_token: bytes

    async def enroll(self, node: Node) -> None:
        """Authenticate and TokenUpdate through ``node``: the gateway keeps its push token."""
        async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as client:
            await AppleDevice(client, self.udid, self.push_token).enroll()


async def upload(cluster: Cluster, node: Node, identity: PushIdentity) -> None:
    async with cluster.admin(node) as admin:
        r = await admin.put("/api/v1/apns/certificate", json=identity.upload())
        assert r.status_code == 200, r.text
        assert r.json()["topic"] == identity.topic


async def pushed_with(
    cluster: Cluster,
    node: Node,
    server: ApnsServer,
    phone: Phone,
    wanted: Callable[[RecordedPush], bool],
) -> RecordedPush:
    """Queues commands for ``phone`` on ``node`` (so ``node`` pushes) until a push to it that
    is ``wanted`` reaches APNs; that push."""

    def found() -> list[RecordedPush]:
        return [p for p in server.pushes if p.token == phone.push_token.hex() and wanted(p)]

    async with cluster.admin(node) as admin:
        with trio.fail_after(SWITCH_DEADLINE):
            while not found():
                r = await admin.post(
                    "/api/v1/commands",
                    json={
                        "devices": [phone.udid],
                        "apple": {"request_type": "ProfileList", "payload": {}},
                    },
                )
                assert r.status_code == 202, r.text
                with trio.move_on_after(ENQUEUE_EVERY):
                    await server.until(lambda: bool(found()))
    return found()[0]


def came_with(identity: PushIdentity) -> Callable[[RecordedPush], bool]:
    return lambda push: seen_with(push) == (identity.der, identity.topic)


async def test_an_upload_on_one_node_switches_every_node(tmp_path: Path, apns_pki: Apns) -> None:
    first, second = apns_pki.push_ca.issue(new_topic()), apns_pki.push_ca.issue(new_topic())
    # Each phone's commands are queued on one node only, which therefore pushes them.
    of_one, of_two = Phone("phone-of-node-1", b"\x01" * 32), Phone("phone-of-node-2", b"\x02" * 32)
    server = ApnsServer()
    async with running(server, apns_pki.server_context) as url:
        cluster = nodes(tmp_path, apns_pki, gateway_config(url), 2)
        async with cluster:
            one, two = cluster.nodes
            try:
                await of_one.enroll(one)
                await of_two.enroll(one)
                # Both nodes started without push credentials; one upload serves both.
                await upload(cluster, one, first)
                await pushed_with(cluster, two, server, of_two, came_with(first))
                old = await pushed_with(cluster, one, server, of_one, came_with(first))

                # Another certificate uploaded on node 2: node 1 switches to it.
                await upload(cluster, two, second)
                await pushed_with(cluster, one, server, of_one, came_with(second))
                await pushed_with(cluster, two, server, of_two, came_with(second))
                # Node 1's connection of the first certificate is closed once idle.
                with trio.fail_after(SWITCH_DEADLINE):
                    await server.until(lambda: old.connection in server.closed)
            except BaseException:
                print(cluster.logs(60))
                raise
    assert all(p.status == 200 for p in server.pushes)
    # Never a certificate with the other's topic.
    pairs = {seen_with(p) for p in server.pushes}
    assert pairs == {(first.der, first.topic), (second.der, second.topic)}


async def test_apns_credentials_in_the_config_win_over_uploads(
    tmp_path: Path, apns_pki: Apns
) -> None:
    configured, uploaded = apns_pki.push_ca.issue(new_topic()), apns_pki.push_ca.issue(new_topic())
    cert, key = configured.files(tmp_path)
    extra = f'topic = "{configured.topic}"\ncert = "{cert}"\nkey = "{key}"\n'
    phone = Phone("phone", b"\x03" * 32)
    notice = "is not used for pushing"
    server = ApnsServer()
    async with running(server, apns_pki.server_context) as url:
        cluster = nodes(tmp_path, apns_pki, gateway_config(url, extra), 1)
        async with cluster:
            (node,) = cluster.nodes
            try:
                await phone.enroll(node)
                await upload(cluster, node, uploaded)
                with trio.fail_after(SWITCH_DEADLINE):
                    while notice not in cluster.log_tail(node, 400):
                        await trio.sleep(ENQUEUE_EVERY)
                await pushed_with(cluster, node, server, phone, lambda _: True)
                log = cluster.log_tail(node, 400)
            except BaseException:
                print(cluster.logs(60))
                raise
    assert {seen_with(p) for p in server.pushes} == {(configured.der, configured.topic)}
    assert log.count(notice) == 1, log
