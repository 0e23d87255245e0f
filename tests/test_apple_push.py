"""The APNs client (mdmgate.apple.push) against the local APNs server in tests/apns_server.py:
the request format, multiplexing under the server's stream limit, dead tokens, retries,
GOAWAY, pacing on Trio's mock clock, TLS client certificates and ES256 provider tokens."""

from __future__ import annotations

import base64
import itertools
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.testing
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mdmgate.apple.push import ApnsClient, PushResult, TokenBucket, es256_jwt_signer

from .apns_server import (
    BAD_DEVICE_TOKEN,
    TOO_MANY,
    UNAVAILABLE,
    UNREGISTERED,
    ApnsServer,
    Reply,
    running,
)

TOPIC = "com.apple.mgmt.External.6a8a8b7e-0000-4000-8000-000000000001"
LIMIT = 10.0  # seconds any one test may take


def token(n: int) -> str:
    return f"{n:064x}"


def magic(n: int) -> str:
    return f"MAGIC-{n:04d}-0000-1111"


def fast(url: str, **kwargs: object) -> ApnsClient:
    """A client with short backoff so retry tests finish quickly."""
    options: dict[str, object] = {"backoff": 0.01, "max_backoff": 0.05, "max_attempts": 4}
    options.update(kwargs)
    return ApnsClient(url, topic=TOPIC, **options)  # type: ignore[arg-type]


@pytest.fixture
async def server_url() -> AsyncIterator[tuple[ApnsServer, str]]:
    server = ApnsServer()
    async with running(server) as url:
        yield server, url


# ---------------------------------------------------------------------------------------------
# The request


async def test_push_request_format(server_url: tuple[ApnsServer, str]) -> None:
    server, url = server_url
    with trio.fail_after(LIMIT):
        async with fast(url) as client:
            result = await client.push(token(1), magic(1))
    assert result.ok
    assert result == PushResult(
        token(1), 200, None, result.apns_id, dead=False, retry_after=None, attempts=1
    )
    (push,) = server.pushes
    assert push.method == "POST"
    assert push.path == f"/3/device/{token(1)}"
    assert push.headers["apns-topic"] == TOPIC
    assert push.headers["apns-push-type"] == "mdm"
    assert push.headers["apns-priority"] == "10"
    assert push.headers["content-type"] == "application/json"
    assert push.payload == {"mdm": magic(1)}
    assert push.headers["apns-id"] == result.apns_id
    assert "authorization" not in push.headers
    assert "apns-expiration" not in push.headers


async def test_expiration_header(server_url: tuple[ApnsServer, str]) -> None:
    server, url = server_url
    with trio.fail_after(LIMIT):
        async with fast(url) as client:
            assert (await client.push(token(1), magic(1), expiration=0)).ok
    assert server.pushes[0].headers["apns-expiration"] == "0"


async def test_bad_token_is_refused_before_sending(server_url: tuple[ApnsServer, str]) -> None:
    server, url = server_url
    async with fast(url) as client:
        with pytest.raises(ValueError, match="hexadecimal"):
            await client.push("abc/../x", magic(1))
        with pytest.raises(ValueError, match="hexadecimal"):
            await client.push_many([(token(1), magic(1)), ("", magic(2))])
    assert server.pushes == []


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="base_url"):
        ApnsClient("ftp://example.com", topic=TOPIC)
    with pytest.raises(ValueError, match="topic"):
        ApnsClient("https://example.com", topic="")
    with pytest.raises(ValueError, match="at least 1"):
        ApnsClient("https://example.com", topic=TOPIC, connections=0)


# ---------------------------------------------------------------------------------------------
# Multiplexing


async def test_pushes_share_one_connection_up_to_stream_limit() -> None:
    server = ApnsServer(max_concurrent_streams=4, response_delay=0.05)
    items = [(token(n), magic(n)) for n in range(24)]
    with trio.fail_after(LIMIT):
        async with running(server) as url, fast(url) as client:
            results = await client.push_many(items)
            assert client.connections_opened == 1
    assert [r.token for r in results] == [t for t, _ in items]
    assert all(r.ok for r in results)
    assert server.connections == 1
    assert 1 < server.max_in_flight <= 4
    assert sorted(p.token for p in server.pushes) == sorted(t for t, _ in items)


async def test_several_connections_when_streams_are_full() -> None:
    server = ApnsServer(max_concurrent_streams=2, response_delay=0.05)
    items = [(token(n), magic(n)) for n in range(12)]
    with trio.fail_after(LIMIT):
        async with running(server) as url, fast(url, connections=3) as client:
            results = await client.push_many(items)
    assert all(r.ok for r in results)
    assert server.connections == 3
    assert 2 < server.max_in_flight <= 6


# ---------------------------------------------------------------------------------------------
# Errors and retries


async def test_unregistered_is_dead_and_not_retried(server_url: tuple[ApnsServer, str]) -> None:
    server, url = server_url
    server.script(token(7), UNREGISTERED)
    with trio.fail_after(LIMIT):
        async with fast(url) as client:
            result = await client.push(token(7), magic(7))
    assert (result.status, result.reason, result.dead) == (410, "Unregistered", True)
    assert result.timestamp == UNREGISTERED.timestamp
    assert result.attempts == 1
    assert len(server.pushes) == 1


async def test_bad_device_token_is_dead_and_not_retried(
    server_url: tuple[ApnsServer, str],
) -> None:
    server, url = server_url
    server.script(token(1), BAD_DEVICE_TOKEN)
    server.script(token(2), Reply(400, "DeviceTokenNotForTopic"))
    server.script(token(3), Reply(400, "BadTopic"))
    with trio.fail_after(LIMIT):
        async with fast(url) as client:
            first, second, third = await client.push_many(
                [(token(1), magic(1)), (token(2), magic(2)), (token(3), magic(3))]
            )
    assert (first.status, first.reason, first.dead) == (400, "BadDeviceToken", True)
    assert (second.reason, second.dead) == ("DeviceTokenNotForTopic", True)
    assert (third.status, third.reason, third.dead) == (400, "BadTopic", False)
    assert len(server.pushes) == 3


async def test_429_then_200_is_retried(server_url: tuple[ApnsServer, str]) -> None:
    server, url = server_url
    server.script(token(5), TOO_MANY, Reply(200))
    with trio.fail_after(LIMIT):
        async with fast(url) as client:
            result = await client.push(token(5), magic(5))
    assert result.ok
    assert result.attempts == 2
    assert [p.status for p in server.pushes] == [429, 200]
    # the retry carries the same apns-id
    assert len({p.headers["apns-id"] for p in server.pushes}) == 1


async def test_retry_after_is_reported_and_attempts_are_bounded(
    server_url: tuple[ApnsServer, str],
) -> None:
    server, url = server_url
    server.script(token(5), Reply(503, "ServiceUnavailable", retry_after=0))
    server.script(token(6), UNAVAILABLE)
    with trio.fail_after(LIMIT):
        async with fast(url, max_attempts=3) as client:
            five, six = await client.push_many([(token(5), magic(5)), (token(6), magic(6))])
    assert (five.status, five.reason, five.retry_after, five.attempts) == (
        503,
        "ServiceUnavailable",
        0.0,
        3,
    )
    assert (six.status, six.dead, six.attempts) == (503, False, 3)
    assert len(server.pushes) == 6


async def test_goaway_mid_burst_delivers_each_push_exactly_once() -> None:
    server = ApnsServer(
        max_concurrent_streams=5, response_delay=0.02, goaway_after=7, goaway_connections=2
    )
    items = [(token(n), magic(n)) for n in range(30)]
    with trio.fail_after(LIMIT):
        async with running(server) as url, fast(url) as client:
            results = await client.push_many(items)
            opened = client.connections_opened
    assert server.goaways == 2
    assert opened == server.connections >= 3
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    for t, m in items:
        (accepted,) = server.accepted(t)
        assert accepted.payload == {"mdm": m}
    assert len(server.pushes) == len(items)  # nothing beyond a GOAWAY was processed


async def test_unreachable_server_is_reported_not_lost() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(LIMIT):
        async with fast(f"http://127.0.0.1:{port}", max_attempts=2) as client:
            results = await client.push_many([(token(1), magic(1)), (token(2), magic(2))])
    for result in results:
        assert (result.status, result.dead, result.attempts) == (0, False, 2)
        assert result.reason is not None
        assert "connect" in result.reason


async def test_server_closing_without_answers_is_retried() -> None:
    """A server that drops the connection mid-request: the push is retried elsewhere."""
    server = ApnsServer()
    dropped = 0

    async def flaky(stream: trio.abc.Stream) -> None:
        nonlocal dropped
        if dropped == 0:
            dropped += 1
            await stream.receive_some(65536)  # read the preface and request, then hang up
            await trio.aclose_forcefully(stream)
            return
        await server.serve_stream(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, flaky, listeners)
            async with fast(f"http://127.0.0.1:{port}") as client:
                result = await client.push(token(3), magic(3))
            nursery.cancel_scope.cancel()
    assert result.ok
    assert result.attempts == 2
    assert len(server.accepted(token(3))) == 1


# ---------------------------------------------------------------------------------------------
# Pacing, on Trio's mock clock (in-memory streams: no sockets, no real sleeping)


@dataclass
class MemoryNet:
    server: ApnsServer
    nursery: trio.Nursery

    async def connect(self) -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.serve_stream, server_end)
        return client_end


async def test_push_many_is_paced(autojump_clock: trio.testing.MockClock) -> None:
    server = ApnsServer(max_concurrent_streams=100)
    count, rate = 40, 20.0
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net = MemoryNet(server, nursery)
            async with ApnsClient(
                "https://api.push.apple.com",
                topic=TOPIC,
                max_pushes_per_second=rate,
                stream_factory=net.connect,
            ) as client:
                start = trio.current_time()
                results = await client.push_many([(token(n), magic(n)) for n in range(count)])
                elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    assert all(r.ok for r in results)
    assert elapsed == pytest.approx((count - 1) / rate, abs=0.05)
    times = sorted(p.at for p in server.pushes)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 1 / rate - 1e-6
    # the authority is the configured host (443 is the default port)
    assert server.pushes[0].headers[":authority"] == "api.push.apple.com"
    assert server.pushes[0].headers[":scheme"] == "https"


async def test_token_bucket_burst(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    start = trio.current_time()
    stamps = []
    for _ in range(5):
        await bucket.take()
        stamps.append(trio.current_time() - start)
    assert stamps == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate=1, burst=0)


# ---------------------------------------------------------------------------------------------
# TLS with a client certificate


@dataclass
class Pki:
    ca: trustme.CA
    server_context: ssl.SSLContext
    client_cert: trustme.LeafCert


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED  # APNs certificate auth: a client cert is a must
    context.set_alpn_protocols(["h2"])
    client_cert = ca.issue_cert("com.apple.mgmt.External.test")
    return Pki(ca, context, client_cert)


async def test_tls_with_client_certificate(pki: Pki) -> None:
    server = ApnsServer()
    client_context = ssl.create_default_context()
    pki.ca.configure_trust(client_context)
    pki.client_cert.configure_cert(client_context)
    with trio.fail_after(LIMIT):
        async with (
            running(server, pki.server_context) as url,
            fast(url, ssl_context=client_context) as client,
        ):
            assert url.startswith("https://")
            results = await client.push_many([(token(n), magic(n)) for n in range(5)])
    assert all(r.ok for r in results)
    assert server.connections == 1
    (der,) = server.client_certs
    expected = ssl.PEM_cert_to_DER_cert(pki.client_cert.cert_chain_pems[0].bytes().decode())
    assert der == expected
    assert server.pushes[0].headers[":scheme"] == "https"


async def test_tls_without_client_certificate_fails_visibly(pki: Pki) -> None:
    server = ApnsServer()
    client_context = ssl.create_default_context()
    pki.ca.configure_trust(client_context)
    with trio.fail_after(LIMIT):
        async with (
            running(server, pki.server_context) as url,
            fast(url, ssl_context=client_context, max_attempts=2) as client,
        ):
            result = await client.push(token(1), magic(1))
    assert (result.status, result.attempts) == (0, 2)
    assert server.pushes == []


# ---------------------------------------------------------------------------------------------
# ES256 provider tokens


def _key() -> tuple[bytes, ec.EllipticCurvePublicKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, private.public_key()


def _decode(part: str) -> object:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_es256_signer_caches_and_refreshes() -> None:
    pem, _ = _key()
    now = [1_000_000.0]
    signer = es256_jwt_signer(pem, "KEY1234567", "TEAM123456", lifetime=1200, clock=lambda: now[0])
    first = signer()
    header, claims, signature = first.split(".")
    assert _decode(header) == {"alg": "ES256", "kid": "KEY1234567"}
    assert _decode(claims) == {"iss": "TEAM123456", "iat": 1_000_000}
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64
    now[0] += 1199
    assert signer() == first
    now[0] += 1
    second = signer()
    assert second != first
    assert _decode(second.split(".")[1]) == {"iss": "TEAM123456", "iat": 1_001_200}


def test_es256_signer_rejects_wrong_keys() -> None:
    rsa_like = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="P-256"):
        es256_jwt_signer(rsa_like, "K", "T")
    pem, _ = _key()
    with pytest.raises(ValueError, match="lifetime"):
        es256_jwt_signer(pem, "K", "T", lifetime=7200)


async def test_jwt_is_sent_verified_and_reused() -> None:
    pem, public = _key()
    now = [2_000_000.0]
    signer = es256_jwt_signer(pem, "KEY1234567", "TEAM123456", clock=lambda: now[0])
    server = ApnsServer(jwt_public_key=public)
    with trio.fail_after(LIMIT):
        async with running(server) as url, fast(url, jwt_signer=signer) as client:
            results = await client.push_many([(token(n), magic(n)) for n in range(3)])
            now[0] += 50 * 60
            later = await client.push(token(9), magic(9))
    assert all(r.ok for r in results)
    assert later.ok
    tokens = [p.headers["authorization"] for p in server.pushes]
    assert all(t.startswith("bearer ") for t in tokens)
    assert len(set(tokens[:3])) == 1  # one signature reused
    assert tokens[3] != tokens[0]  # re-signed after the lifetime


async def test_bad_jwt_is_rejected_by_the_server() -> None:
    pem, _ = _key()
    _, other_public = _key()
    server = ApnsServer(jwt_public_key=other_public)
    with trio.fail_after(LIMIT):
        async with (
            running(server) as url,
            fast(url, jwt_signer=es256_jwt_signer(pem, "K", "T")) as client,
        ):
            result = await client.push(token(1), magic(1))
    assert (result.status, result.reason, result.dead) == (403, "InvalidProviderToken", False)
