"""Webhooks (issue 17): signatures, the refusal of addresses a webhook must not reach
(server-side request forgery), retry timing, the deliverer against a store, the admin API,
and the done-when scenario with real ``mdmgate serve`` processes and a real local receiver.

Signatures are checked against an HMAC computed here with :mod:`hmac` from the documented
recipe, not with the module under test.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import h11
import httpx
import msgspec
import pytest
import trio
import trustme

from mdmgate.server import api_webhooks
from mdmgate.server.admin import AdminApi
from mdmgate.server.api_webhooks import WebhooksApi
from mdmgate.server.config import ConfigError, load_config, webhook_settings
from mdmgate.server.types import Request
from mdmgate.storage import NewEvent, Store, Webhook, WebhookFailure
from mdmgate.storage.memory import MemoryStore
from mdmgate.webhooks import client, signing, ssrf
from mdmgate.webhooks.delivery import (
    RetryPolicy,
    WebhookDeliverer,
    pause_webhook,
    resume_webhook,
)
from mdmgate.webhooks.settings import WebhookSettings, WebhookSettingsError
from tests.cluster import Cluster, Node, postgres_database
from tests.stores import BACKENDS, open_backend, open_peer
from tests.windows_emulator import WindowsDevice

SECRET = "s3cret-of-the-subscription"


def reference_signature(secret: str, body: bytes, timestamp: int) -> str:
    """The documented recipe: hex HMAC-SHA256 of ``<t>.<body>`` keyed with the secret."""
    return hmac.new(
        secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256
    ).hexdigest()


# --- a receiver --------------------------------------------------------------------------------


@dataclass
class Received:
    """One request the receiver read."""

    webhook_id: str
    headers: dict[str, str]
    body: bytes
    #: Whether the signature verified under the webhook's secret (the receiver's own check).
    signed: bool
    #: What it answered; 0 while held, or when it hung up without answering.
    status: int = 0

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in json.loads(self.body)["events"]]

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.body)["events"]
        return events


@dataclass
class Receiver:
    """A webhook receiver (Trio + h11) on 127.0.0.1: verifies each request's signature with
    the recipe of the docs, answers 200 (or ``status``), 500 to the next ``fail_next``
    requests (or the first ``fail_each`` of each webhook), or holds requests unanswered while
    ``holding`` (hanging up on them once
    released). Records every request, and any webhook with two requests in flight at once."""

    ssl_context: ssl.SSLContext | None = None
    secrets: dict[str, str] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    fail_next: int = 0
    #: Answer 500 to the first this many requests of each webhook (counted from when set).
    fail_each: int = 0
    status: int = 200
    holding: bool = False
    overlaps: list[str] = field(default_factory=list)
    port: int = 0
    _in_flight: Counter[str] = field(default_factory=Counter)
    _failed: Counter[str] = field(default_factory=Counter)
    _changed: trio.Event = field(default_factory=trio.Event)
    _released: trio.Event = field(default_factory=trio.Event)

    def url(self, path: str = "/hook") -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def accepted(self, webhook_id: str | None = None) -> list[Received]:
        """The requests answered 2xx (of one webhook), in arrival order."""
        return [
            r for r in self.requests if 200 <= r.status < 300 and webhook_id in (None, r.webhook_id)
        ]

    def accepted_seqs(self, webhook_id: str | None = None) -> list[int]:
        return [seq for r in self.accepted(webhook_id) for seq in r.seqs]

    def release(self) -> None:
        """Stops holding: held requests are hung up on, later ones answered."""
        self.holding = False
        self._released.set()
        self._released = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        """Waits (under a deadline) until ``condition()`` holds; re-checked on each request."""
        with trio.fail_after(timeout):
            while not condition():
                await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        served: list[Any] = list(listeners)
        if self.ssl_context is not None:
            served = [trio.SSLListener(lst, self.ssl_context) for lst in listeners]
        task_status.started()
        await trio.serve_listeners(self._connection, served)

    async def _connection(self, stream: trio.abc.Stream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER)
            with suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError
            ):
                await self._exchange(stream, conn)

    async def _exchange(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        read = await _read_request(stream, conn)
        if read is None:
            return
        headers, body = read
        webhook_id = headers.get("mdmgate-webhook-id", "")
        received = Received(webhook_id, headers, body, self._verify(headers, body))
        self.requests.append(received)
        self._in_flight[webhook_id] += 1
        if self._in_flight[webhook_id] > 1:
            self.overlaps.append(webhook_id)
        self._notify()
        try:
            if self.holding:
                await self._released.wait()
                return  # hung up without an answer
            status = self._status(received)
            reply = conn.send(h11.Response(status_code=status, headers=[("content-length", "2")]))
            await stream.send_all(reply + conn.send(h11.Data(data=b"ok")))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            received.status = status
        finally:
            self._in_flight[webhook_id] -= 1
            self._notify()

    def _verify(self, headers: dict[str, str], body: bytes) -> bool:
        """The documented check, written here: timestamp within 300 s, HMAC matches."""
        secret = self.secrets.get(headers.get("mdmgate-webhook-id", ""))
        header = headers.get("mdmgate-signature", "")
        if secret is None or not header.startswith("t="):
            return False
        stamp, _, given = header.partition(",v1=")
        t = int(stamp.removeprefix("t="))
        fresh = abs(time.time() - t) <= 300
        return fresh and hmac.compare_digest(given, reference_signature(secret, body, t))

    def _status(self, received: Received) -> int:
        if not received.signed:
            return 401
        if self.fail_next > 0:
            self.fail_next -= 1
            return 500
        if self._failed[received.webhook_id] < self.fail_each:
            self._failed[received.webhook_id] += 1
            return 500
        return self.status


async def _read_request(
    stream: trio.abc.Stream, conn: h11.Connection
) -> tuple[dict[str, str], bytes] | None:
    """The headers (lower-case names) and body of one request; ``None`` on hang-up."""
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return {k.decode().lower(): v.decode() for k, v in request.headers}, body


@asynccontextmanager
async def receiving(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(ssl_context)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.run)
        yield receiver
        nursery.cancel_scope.cancel()


# --- signing ------------------------------------------------------------------------------------


def test_the_header_is_the_documented_hmac_of_timestamp_dot_body() -> None:
    body = b'{"events":[{"seq":1}]}'
    header = signing.sign(SECRET, body, 1_700_000_000)
    expected = reference_signature(SECRET, body, 1_700_000_000)
    assert header == f"t=1700000000,v1={expected}"
    # A fixed vector, so that a change of recipe cannot pass by changing both sides.
    assert signing.signature("key", b"body", 1) == (
        hmac.new(b"key", b"1.body", hashlib.sha256).hexdigest()
    )


def test_verify_accepts_a_fresh_signature_and_refuses_each_kind_of_bad_one() -> None:
    body = b'{"events":[]}'
    t = 1_700_000_000
    header = f"t={t},v1={reference_signature(SECRET, body, t)}"
    assert signing.verify(SECRET, body, header, now=t + 299) == t
    assert signing.verify(SECRET, body, header, now=t - 299) == t
    # Spaces, unknown schemes and a second (rotated) signature are allowed.
    rotated = f" t={t} , v0=zzz, v1={'0' * 64}, v1={reference_signature(SECRET, body, t)}"
    assert signing.verify(SECRET, body, rotated, now=t) == t
    assert signing.verify(["old", SECRET], body, header, now=t) == t
    with pytest.raises(signing.StaleSignature, match="replay window"):
        signing.verify(SECRET, body, header, now=t + 301)
    with pytest.raises(signing.StaleSignature):
        signing.verify(SECRET, body, header, now=t - 301)
    with pytest.raises(signing.SignatureMismatch):
        signing.verify(SECRET, body + b" ", header, now=t)
    with pytest.raises(signing.SignatureMismatch):
        signing.verify("another secret", body, header, now=t)
    # The timestamp is signed: moving it breaks the signature.
    moved = header.replace(f"t={t}", f"t={t + 1}")
    with pytest.raises(signing.SignatureMismatch):
        signing.verify(SECRET, body, moved, now=t)
    for bad, reason in [
        (f"v1={reference_signature(SECRET, body, t)}", "no t"),
        (f"t={t}", "no v1"),
        (f"t=soon,v1={'a' * 64}", "not Unix seconds"),
        (f"t={t},t={t},v1={'a' * 64}", "t twice"),
        (f"t={t},v1=abc", "64 hex digits"),
        (f"t={t};v1={'a' * 64}", "not Unix seconds"),
        ("garbage", "not key=value"),
    ]:
        with pytest.raises(signing.MalformedSignature, match=reason):
            signing.verify(SECRET, body, bad, now=t)


def test_signing_refuses_what_cannot_be_signed() -> None:
    with pytest.raises(ValueError, match="timestamp"):
        signing.sign(SECRET, b"", -1)
    with pytest.raises(ValueError, match="secret"):
        signing.sign("", b"", 1)
    first, second = signing.new_secret(), signing.new_secret()
    assert first != second
    assert len(first) >= 43


# --- server-side request forgery -------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("192.0.2.1", "private"),  # documentation
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1: loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped 10.0.0.1: private"),
        ("::ffff:169.254.169.254", "IPv4-mapped 169.254.169.254: link-local"),
        ("64:ff9b::a00:1", "NAT64 10.0.0.1: private"),
        ("2002:7f00:1::", "6to4 127.0.0.1: loopback"),
        ("::7f00:1", "IPv4-compatible 127.0.0.1: loopback"),
    ],
)
def test_addresses_a_webhook_must_not_reach_are_refused_by_class(address: str, reason: str) -> None:
    found = ssrf.address_refusal(ipaddress.ip_address(address))
    assert found is not None
    assert found.startswith(reason)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert ssrf.address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/x", "https"),
        ("ftp://hooks.example.com/x", "https"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https:///x", "no host"),
        ("https://hooks.example.com:0/x", "port"),
        ("https://hooks.example.com:99999/x", "port"),
        ("https://hooks.example.com/x#frag", "fragment"),
        ("https://hooks.example.com/a b", "space or control"),
        ("hooks.example.com/x", "https"),
        ("https://" + "a" * 2100 + ".example.com/", "longer than"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://[::1]:8443/x", "loopback"),
        ("https://[::ffff:127.0.0.1]/x", "IPv4-mapped"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
    ],
)
def test_a_url_is_refused_naming_the_problem(url: str, reason: str) -> None:
    with pytest.raises(ssrf.UrlRefused, match=reason):
        ssrf.parse_webhook_url(url, allow_private=False)


def test_a_url_is_split_for_the_request() -> None:
    target = ssrf.parse_webhook_url("https://Hooks.Example.com/in?a=1", allow_private=False)
    assert (target.scheme, target.host, target.port, target.target) == (
        "https",
        "hooks.example.com",
        443,
        "/in?a=1",
    )
    assert target.host_header == "hooks.example.com"
    local = ssrf.parse_webhook_url("http://[::1]:8080", allow_private=True)
    assert (local.host, local.port, local.target, local.host_header) == (
        "::1",
        8080,
        "/",
        "[::1]:8080",
    )


async def test_hostnames_are_resolved_and_refused_if_any_address_is_private() -> None:
    # The system resolver: localhost and the numeric forms getaddrinfo accepts are loopback.
    for url in ["https://localhost/x", "https://2130706433/x", "https://127.1/x"]:
        target = ssrf.parse_webhook_url(url, allow_private=False)
        with pytest.raises(ssrf.UrlRefused, match="loopback"):
            await ssrf.vetted_addresses(target, allow_private=False)

    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    target = ssrf.parse_webhook_url("https://hooks.example.com/x", allow_private=False)
    with pytest.raises(ssrf.UrlRefused, match=r"hooks\.example\.com resolves to 10\.0\.0\.7"):
        await ssrf.vetted_addresses(target, allow_private=False, resolve=mixed)
    allowed = await ssrf.vetted_addresses(target, allow_private=True, resolve=mixed)
    assert [str(a) for a in allowed] == ["93.184.216.34", "10.0.0.7"]

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "2606:2800:220:1::248", "93.184.216.34"]

    vetted = await ssrf.vetted_addresses(target, allow_private=False, resolve=public)
    assert [str(a) for a in vetted] == ["93.184.216.34", "2606:2800:220:1::248"]

    async def nothing(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(ssrf.UrlRefused, match=r"cannot resolve hooks\.example\.com"):
        await ssrf.vetted_addresses(target, allow_private=False, resolve=nothing)


def test_allow_private_lets_local_receivers_in() -> None:
    for url in ["http://127.0.0.1:9000/hook", "https://[::1]/x", "http://10.0.0.1/"]:
        assert ssrf.parse_webhook_url(url, allow_private=True).url == url


# --- settings and retry timing ----------------------------------------------------------------


def test_settings_come_from_the_config_table_and_refuse_bad_values() -> None:
    settings = WebhookSettings.from_table({})
    assert (settings.allow_private, settings.max_attempts, settings.timeout) == (False, 15, 10.0)
    given = WebhookSettings.from_table({"allow_private": True, "max_attempts": 3, "timeout": 2})
    assert (given.allow_private, given.max_attempts, given.timeout) == (True, 3, 2.0)
    for table, reason in [
        ({"allow_privat": True}, "unknown webhooks keys: allow_privat"),
        ({"allow_private": "yes"}, "allow_private must be true or false"),
        ({"max_attempts": 0}, "max_attempts must be a whole number from 1 to 100"),
        ({"max_attempts": True}, "max_attempts must be a whole number"),
        ({"timeout": 0}, "timeout must be a number of seconds above 0, at most 120"),
        ({"timeout": 500}, "timeout must be"),
        ([], "webhooks must be a table"),
    ]:
        with pytest.raises(WebhookSettingsError, match=reason):
            WebhookSettings.from_table(table)


def test_the_config_table_reaches_the_settings_and_dev_allows_private(tmp_path: Path) -> None:
    path = tmp_path / "mdmgate.toml"
    path.write_text("[webhooks]\nmax_attempts = 4\ntimeout = 3\n")
    config = load_config(str(path), {})
    settings = webhook_settings(config)
    assert (settings.allow_private, settings.max_attempts, settings.timeout) == (False, 4, 3)
    assert webhook_settings(load_config(str(path), {"dev": True})).allow_private
    path.write_text("[webhooks]\nallow_private = 1\n")
    with pytest.raises(ConfigError, match="allow_private must be true or false"):
        load_config(str(path), {})
    path.write_text("[webhooks]\nretries = 4\n")
    with pytest.raises(ConfigError, match="unknown webhooks keys: retries"):
        load_config(str(path), {})


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap() -> None:
    policy = RetryPolicy(base=1.0, cap=600.0)
    assert [policy.delay(n, rng=lambda: 1.0) for n in range(1, 13)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 600.0, 600.0,
    ]  # fmt: skip
    # Jitter spreads a retry over the upper half of its interval, never below it.
    assert policy.delay(4, rng=lambda: 0.0) == 4.0
    assert policy.delay(4, rng=lambda: 0.5) == 6.0
    assert policy.delay(10_000, rng=lambda: 1.0) == 600.0
    with pytest.raises(ValueError, match="attempts"):
        policy.delay(0)
    # The default schedule: 15 attempts span between about half an hour and an hour.
    default = RetryPolicy()
    shortest = sum(default.delay(n, rng=lambda: 0.0) for n in range(1, 15))
    longest = sum(default.delay(n, rng=lambda: 1.0) for n in range(1, 15))
    assert shortest >= 28 * 60
    assert longest <= 60 * 60


# --- one request ----------------------------------------------------------------------------------


def signed_headers(webhook_id: str, body: bytes) -> list[tuple[str, str]]:
    return [
        ("Mdmgate-Webhook-Id", webhook_id),
        (signing.SIGNATURE_HEADER, signing.sign(SECRET, body, int(time.time()))),
    ]


async def test_a_request_goes_to_the_vetted_address_and_its_answer_is_read() -> None:
    async with receiving() as receiver:
        receiver.secrets["w1"] = SECRET
        body = json.dumps({"events": [{"seq": 7}]}).encode()
        target = ssrf.parse_webhook_url(receiver.url("/in?x=1"), allow_private=True)
        answer = await client.post(
            target, body, signed_headers("w1", body), allow_private=True, timeout=10
        )
        assert answer.status == 200
        (got,) = receiver.requests
        assert got.signed
        assert got.seqs == [7]
        assert got.headers["content-type"] == "application/json"
        assert got.headers["host"] == f"127.0.0.1:{receiver.port}"
        assert got.headers["user-agent"].startswith("mdmgate/")
        # Without allow_private the same URL is refused before any connection.
        with pytest.raises(ssrf.UrlRefused, match="loopback"):
            await client.post(target, body, [], allow_private=False, timeout=10)
        assert len(receiver.requests) == 1
        # A redirect is an answer like any other: not followed (it could lead anywhere).
        receiver.status = 302
        answer = await client.post(
            target, body, signed_headers("w1", body), allow_private=True, timeout=10
        )
        assert answer.status == 302
        assert len(receiver.requests) == 2


@pytest.fixture(scope="module")
def hooks_ca() -> trustme.CA:
    return trustme.CA()


def tls_receiver_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.example.com").configure_cert(context)
    return context


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_tls_checks_the_host_name_on_the_vetted_address_and_rebinding_is_refused(
    hooks_ca: trustme.CA,
) -> None:
    async with receiving(tls_receiver_context(hooks_ca)) as receiver:
        receiver.secrets["w1"] = SECRET
        answers = {"now": ["93.184.216.34"]}

        async def rebinding(host: str, port: int) -> list[str]:
            assert host == "hooks.example.com"
            return answers["now"]

        url = f"https://hooks.example.com:{receiver.port}/hook"
        target = ssrf.parse_webhook_url(url, allow_private=False)
        # Checked when created: a public address.
        vetted = await ssrf.vetted_addresses(target, allow_private=False, resolve=rebinding)
        assert [str(a) for a in vetted] == ["93.184.216.34"]
        # The name now points at loopback, where the receiver is: the request would reach it,
        # as the allowed case shows (TLS verified for hooks.example.com on 127.0.0.1) ...
        answers["now"] = ["127.0.0.1"]
        body = b'{"events":[]}'
        answer = await client.post(
            target,
            body,
            signed_headers("w1", body),
            allow_private=True,
            timeout=10,
            ssl_context=trusting(hooks_ca),
            resolve=rebinding,
        )
        assert answer.status == 200
        assert receiver.requests[-1].headers["host"] == f"hooks.example.com:{receiver.port}"
        # ... and is refused when delivering, before connecting.
        with pytest.raises(ssrf.UrlRefused, match=r"hooks\.example\.com resolves to 127\.0\.0\.1"):
            await client.post(
                target,
                body,
                signed_headers("w1", body),
                allow_private=False,
                timeout=10,
                ssl_context=trusting(hooks_ca),
                resolve=rebinding,
            )
        assert len(receiver.requests) == 1
        # A certificate for another name is refused.
        other = ssrf.parse_webhook_url(
            f"https://localhost:{receiver.port}/hook", allow_private=True
        )
        with pytest.raises(client.DeliveryFailed, match="TLS"):
            await client.post(
                other, body, [], allow_private=True, timeout=10, ssl_context=trusting(hooks_ca)
            )


async def test_no_answer_in_time_and_no_listener_are_failures_naming_the_cause() -> None:
    async with receiving() as receiver:
        receiver.secrets["w1"] = SECRET
        receiver.holding = True
        target = ssrf.parse_webhook_url(receiver.url(), allow_private=True)
        body = b'{"events":[]}'
        started = trio.current_time()
        with pytest.raises(client.DeliveryFailed, match=r"no answer within 0\.5 s"):
            await client.post(
                target, body, signed_headers("w1", body), allow_private=True, timeout=0.5
            )
        assert trio.current_time() - started < 5
        receiver.release()
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nobody = ssrf.parse_webhook_url(f"http://127.0.0.1:{port}/", allow_private=True)
    with pytest.raises(client.DeliveryFailed, match=r"cannot connect to 127\.0\.0\.1"):
        await client.post(nobody, b"{}", [], allow_private=True, timeout=10)


# --- the deliverer, against each store ---------------------------------------------------------

#: Retries in tests: milliseconds, not minutes.
QUICK = RetryPolicy(base=0.02, cap=0.1)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_backend(request.param, tmp_path)
    try:
        yield opened
    finally:
        await opened.aclose()


async def subscribe(
    store: Store, receiver: Receiver, webhook_id: str = "w1", types: tuple[str, ...] = ()
) -> Webhook:
    """A webhook to ``receiver``, its cursor at the log's end (as the API creates them)."""
    webhook = Webhook(
        id=webhook_id,
        url=receiver.url(f"/{webhook_id}"),
        secret=f"secret of {webhook_id}",
        types=types,
        created_at=time.time(),
        cursor=await store.last_event(),
    )
    await store.put_webhook(webhook)
    receiver.secrets[webhook_id] = webhook.secret
    return webhook


def deliverer(store: Store, node: str = "node-a", **settings: Any) -> WebhookDeliverer:
    values: dict[str, Any] = {"allow_private": True, "max_attempts": 15, "timeout": 5.0}
    values.update(settings)
    return WebhookDeliverer(store, node, WebhookSettings(**values), retry=QUICK, rescan=0.05)


@asynccontextmanager
async def delivering(*deliverers: WebhookDeliverer) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for each in deliverers:
            await nursery.start(each.run)
        yield
        nursery.cancel_scope.cancel()


async def cursor_reaches(store: Store, webhook_id: str, seq: int) -> Webhook:
    """The webhook once its cursor is at ``seq`` (the receiver may have answered before the
    deliverer recorded it); polled under a deadline."""
    with trio.fail_after(30):
        while True:
            found = await store.get_webhook(webhook_id)
            assert found is not None
            if found.cursor >= seq:
                return found
            await trio.sleep(0.01)


def device_events(count: int, devices: tuple[str, ...] = ("dev-a", "dev-b")) -> list[NewEvent]:
    """``count`` events, the devices taking turns, each device's numbered in order."""
    return [
        NewEvent(
            "command.acknowledged",
            device_id=devices[i % len(devices)],
            subject=f"cmd-{i}",
            data={"n": i // len(devices)},
        )
        for i in range(count)
    ]


def in_device_order(events: list[dict[str, Any]]) -> bool:
    """Whether each device's events come in the order they were written."""
    seen: dict[str, int] = {}
    for event in events:
        n = event["data"]["n"]
        if seen.get(event["device_id"], -1) + 1 != n:
            return False
        seen[event["device_id"]] = n
    return True


async def test_events_arrive_signed_batched_in_order_and_the_cursor_follows(store: Store) -> None:
    await store.append_events([NewEvent("device.enrolled", device_id="before")])
    async with receiving() as receiver:
        webhook = await subscribe(store, receiver)
        first = await store.append_events(device_events(6))
        async with delivering(deliverer(store)):
            await receiver.until(lambda: len(receiver.accepted_seqs()) == 6)
            # Idle, it wakes for what is written next.
            last = await store.append_events(device_events(4, ("dev-c",)))
            await receiver.until(lambda: len(receiver.accepted_seqs()) == 10)
            stored = await cursor_reaches(store, webhook.id, last)
        assert all(r.signed for r in receiver.requests)
        assert receiver.accepted_seqs() == sorted(receiver.accepted_seqs())
        assert receiver.accepted_seqs()[0] == first - 5  # nothing from before it existed
        assert receiver.accepted_seqs()[-1] == last
        events = [e for r in receiver.accepted() for e in r.events]
        assert in_device_order(events)
        # Six events written at once went in one request.
        assert len(receiver.accepted()[0].events) == 6
        assert events[0].keys() >= {"seq", "type", "at", "device_id", "subject", "data"}
        assert json.loads(receiver.requests[0].body)["webhook_id"] == webhook.id
        assert (stored.cursor, stored.state, stored.attempts) == (last, "active", 0)
        assert stored.last_success_at is not None


async def test_a_failing_receiver_is_retried_with_backoff_until_it_takes_the_events(
    store: Store,
) -> None:
    async with receiving() as receiver:
        webhook = await subscribe(store, receiver)
        receiver.fail_next = 3
        last = await store.append_events(device_events(5))
        async with delivering(deliverer(store)):
            await receiver.until(lambda: len(receiver.requests) == 2)
            failing = await store.get_webhook(webhook.id)
            assert failing is not None
            assert failing.state == "failing"
            assert failing.attempts >= 1
            assert failing.last_error == "HTTP 500: ok"
            await receiver.until(lambda: len(receiver.accepted_seqs()) == 5)
            stored = await cursor_reaches(store, webhook.id, last)
        statuses = [r.status for r in receiver.requests]
        assert statuses[:3] == [500, 500, 500]
        # The first attempt carried everything; the retries carry the oldest event alone.
        assert [len(r.seqs) for r in receiver.requests[:4]] == [5, 1, 1, 1]
        assert receiver.accepted_seqs() == sorted(receiver.accepted_seqs())
        assert len(set(receiver.accepted_seqs())) == 5  # once each after the 2xx
        assert (stored.state, stored.attempts, stored.last_error) == ("active", 0, None)
        assert await store.webhook_failures(webhook.id) == []


async def test_after_max_attempts_the_event_is_dead_lettered_and_the_rest_delivered(
    store: Store,
) -> None:
    async with receiving() as receiver:
        webhook = await subscribe(store, receiver)
        receiver.fail_next = 2
        last = await store.append_events(device_events(3))
        async with delivering(deliverer(store, max_attempts=2)):
            await receiver.until(lambda: len(receiver.accepted_seqs()) == 2)
            stored = await cursor_reaches(store, webhook.id, last)
        head = last - 2
        assert receiver.accepted_seqs() == [head + 1, head + 2]
        (failure,) = await store.webhook_failures(webhook.id)
        assert (failure.seq, failure.attempts, failure.error) == (head, 2, "HTTP 500: ok")
        assert (stored.cursor, stored.state) == (last, "active")


async def test_one_slow_receiver_does_not_hold_back_another(store: Store) -> None:
    async with receiving() as slow, receiving() as quick:
        await subscribe(store, slow, "slow")
        await subscribe(store, quick, "quick")
        slow.holding = True
        await store.append_events(device_events(3))
        async with delivering(deliverer(store)):
            await slow.until(lambda: len(slow.requests) == 1)
            await quick.until(lambda: len(quick.accepted_seqs()) == 3)
            more = await store.append_events(device_events(2))
            await quick.until(lambda: more in quick.accepted_seqs())
            assert slow.accepted() == []
            slow.release()
            await slow.until(lambda: len(slow.accepted_seqs()) == 5)


async def test_types_select_events_and_a_paused_webhook_waits_for_resume(store: Store) -> None:
    async with receiving() as receiver:
        webhook = await subscribe(store, receiver, types=("device.*", "command.error"))
        last = await store.append_events(
            [
                NewEvent("command.acknowledged", device_id="d"),
                NewEvent("device.enrolled", device_id="d"),
                NewEvent("command.error", device_id="d"),
                NewEvent("devices.other", device_id="d"),
            ]
        )
        running = deliverer(store)
        async with delivering(running):
            await receiver.until(lambda: len(receiver.accepted_seqs()) == 2)
            types = [e["type"] for r in receiver.accepted() for e in r.events]
            assert types == ["device.enrolled", "command.error"]
            # Recorded before the pause (a pause that wins over the record has the two
            # sent again after the resume: the race test below).
            await cursor_reaches(store, webhook.id, last - 1)
            paused = await pause_webhook(store, webhook.id, settle=5.0)
            assert paused is not None
            assert paused.state == "paused"
            # Once the pause returned, nothing is sent any more.
            sent = len(receiver.requests)
            await store.append_events([NewEvent("device.checked_in", device_id="d")])
            with trio.move_on_after(0.5):  # a paused webhook stays quiet (bounded look)
                await receiver.until(lambda: len(receiver.requests) > sent)
            assert len(receiver.requests) == sent
            resumed = await resume_webhook(store, webhook.id)
            assert resumed is not None
            assert resumed.state == "active"
            running.wake(webhook.id)
            await receiver.until(lambda: len(receiver.accepted_seqs()) == 3)


class PausedBeforeTheRecord:
    """A store on which an administrator pauses the webhook between the deliverer's last
    read and its first record (the race a compare-and-set on the cursor alone loses)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        #: Set once that first record was tried; ``moved``: whether it was written.
        self.recorded = trio.Event()
        self.moved: bool | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def advance_webhook(self, webhook_id: str, **outcome: Any) -> bool:
        if self.recorded.is_set():
            return await self._store.advance_webhook(webhook_id, **outcome)
        # settle=0: the pause is written, without waiting for this very delivery.
        await pause_webhook(self._store, webhook_id, settle=0.0)
        self.moved = await self._store.advance_webhook(webhook_id, **outcome)
        self.recorded.set()
        return self.moved


async def test_a_pause_landing_while_an_outcome_is_recorded_holds(store: Store) -> None:
    async with receiving() as receiver:
        webhook = await subscribe(store, receiver)
        last = await store.append_events(device_events(3))
        racing = PausedBeforeTheRecord(store)
        running = deliverer(cast(Store, racing))
        async with delivering(running):
            await receiver.until(lambda: len(receiver.accepted_seqs()) == 3)
            with trio.fail_after(30):
                await racing.recorded.wait()
            # The 2xx that came back after the pause recorded nothing over it.
            assert racing.moved is False
            held = await store.get_webhook(webhook.id)
            assert held is not None
            assert (held.state, held.cursor) == ("paused", webhook.cursor)
            # Resumed: the same events go again (at least once), and this time count.
            await resume_webhook(store, webhook.id)
            running.wake(webhook.id)
            await receiver.until(lambda: len(receiver.accepted_seqs()) == 6)
            stored = await cursor_reaches(store, webhook.id, last)
        first, again = receiver.accepted_seqs()[:3], receiver.accepted_seqs()[3:]
        assert first == again == [last - 2, last - 1, last]
        assert (stored.state, stored.attempts) == ("active", 0)


async def test_a_url_that_resolves_to_a_private_address_fails_delivery(store: Store) -> None:
    async with receiving() as receiver:
        webhook = await subscribe(store, receiver)
        # Created while private addresses were allowed, say, and delivered now they are not.
        url = f"https://localhost:{receiver.port}/w1"
        await store.put_webhook(msgspec.structs.replace(webhook, url=url))
        await store.append_events(device_events(1))
        async with delivering(deliverer(store, allow_private=False, max_attempts=1)):
            with trio.fail_after(30):
                while not await store.webhook_failures(webhook.id):
                    await trio.sleep(0.01)
        assert receiver.requests == []
        (failure,) = await store.webhook_failures(webhook.id)
        assert failure.error.startswith("refused: localhost resolves to ")
        assert failure.error.endswith("loopback: webhooks may not reach it")


async def test_two_deliverers_never_deliver_one_subscription_at_once(
    store: Store, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    kind = request.node.callspec.params["store"]
    other = store if kind == "memory" else await open_peer(kind, tmp_path)
    try:
        async with receiving() as receiver:
            for name in ("w1", "w2", "w3"):
                await subscribe(store, receiver, name)
            async with delivering(deliverer(store, "node-a"), deliverer(other, "node-b")):
                for _ in range(5):
                    await store.append_events(device_events(4))
                    await other.append_events(device_events(2, ("dev-c",)))
                await receiver.until(lambda: len(receiver.accepted_seqs()) == 3 * 30)
            assert receiver.overlaps == []
            for name in ("w1", "w2", "w3"):
                seqs = receiver.accepted_seqs(name)
                assert seqs == sorted(set(seqs))
                assert len(seqs) == 30
    finally:
        if other is not store:
            await other.aclose()


# --- the admin API -----------------------------------------------------------------------------

API_TOKEN = "webhook-test-token"


def admin_api(store: Store, *, allow_private: bool = True) -> AdminApi:
    settings = WebhookSettings(allow_private=allow_private, max_attempts=3, timeout=5.0)
    webhooks = WebhooksApi(store, settings)
    return AdminApi(
        store,
        API_TOKEN,
        extra_operations=api_webhooks.operations(webhooks),
        extra_types=(*api_webhooks.REQUEST_TYPES, *api_webhooks.RESPONSE_TYPES),
    )


async def call(api: AdminApi, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = [("authorization", f"Bearer {API_TOKEN}")]
    data = b""
    if body is not None:
        headers.append(("content-type", "application/json"))
        data = json.dumps(body).encode()
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    response = await api(Request(method, path, query, tuple(headers), data, "1.1", "127.0.0.1:1"))
    return response.status, json.loads(response.body)


async def test_a_webhook_is_created_with_its_secret_shown_once_then_listed() -> None:
    store = MemoryStore()
    await store.append_events(device_events(3))
    api = admin_api(store)
    status, created = await call(
        api,
        "POST",
        "/api/v1/webhooks",
        {"url": "http://127.0.0.1:9/in", "types": ["command.*"], "description": "console"},
    )
    assert status == 201, created
    assert len(created["secret"]) >= 43
    assert created["cursor"] == 3  # from the log's end: what it gets is what happens next
    assert (created["state"], created["types"], created["description"]) == (
        "active",
        ["command.*"],
        "console",
    )
    stored = await store.get_webhook(created["id"])
    assert stored is not None
    assert stored.secret == created["secret"]
    status, listed = await call(api, "GET", "/api/v1/webhooks")
    assert status == 200
    (shown,) = listed["webhooks"]
    assert "secret" not in shown
    assert shown["id"] == created["id"]
    status, one = await call(api, "GET", f"/api/v1/webhooks/{created['id']}")
    assert status == 200
    assert "secret" not in one
    assert (one["attempts"], one["last_error"], one["next_attempt_at"]) == (0, None, None)
    status, document = await call(api, "GET", "/api/v1/openapi.json")
    assert status == 200
    assert "/api/v1/webhooks/{id}/failures" in document["paths"]
    assert "WebhookCreated" in document["components"]["schemas"]


@pytest.mark.parametrize(
    ("body", "status", "field", "reason"),
    [
        ({"url": "https://127.0.0.1/x"}, 422, "$.url", "loopback"),
        ({"url": "https://169.254.169.254/"}, 422, "$.url", "link-local"),
        ({"url": "https://localhost/x"}, 422, "$.url", "resolves to"),
        ({"url": "http://hooks.example.com/x"}, 422, "$.url", "https"),
        ({"url": "https://hooks.example.com/x", "types": ["command.*", "comand.x"]}, 422,
         "$.types[1]", "unknown event type 'comand.x'"),
        ({"url": "https://hooks.example.com/x", "secret": "mine"}, 422, "$.secret", "unknown"),
        ({"types": ["command.*"]}, 422, "$.url", "missing required field"),
        ({"url": "https://hooks.example.com/x", "description": "d" * 501}, 422,
         "$.description", "length"),
    ],
)  # fmt: skip
async def test_creation_refuses_bad_input_naming_the_field(
    body: dict[str, Any], status: int, field: str, reason: str
) -> None:
    store = MemoryStore()
    got, answer = await call(
        admin_api(store, allow_private=False), "POST", "/api/v1/webhooks", body
    )
    assert (got, answer["field"]) == (status, field), answer
    assert reason in answer["error"]
    assert await store.list_webhooks() == []


async def test_pause_resume_failures_and_delete_through_the_api() -> None:
    store = MemoryStore()
    api = admin_api(store)
    _, created = await call(api, "POST", "/api/v1/webhooks", {"url": "http://127.0.0.1:9/"})
    hook = created["id"]
    status, paused = await call(api, "POST", f"/api/v1/webhooks/{hook}/pause")
    assert (status, paused["state"]) == (200, "paused")
    status, again = await call(api, "POST", f"/api/v1/webhooks/{hook}/pause")
    assert (status, again["state"]) == (200, "paused")
    status, resumed = await call(api, "POST", f"/api/v1/webhooks/{hook}/resume")
    assert (status, resumed["state"]) == (200, "active")
    letters = [
        WebhookFailure(hook, seq, 1_700_000_000.0, 3, f"HTTP 500 ({seq})") for seq in (4, 9, 12)
    ]
    assert await store.advance_webhook(
        hook,
        expected_cursor=0,
        cursor=12,
        state="failing",
        attempts=0,
        next_attempt_at=0.0,
        last_error="HTTP 500 (12)",
        last_success_at=None,
        failed=letters,
    )
    status, page = await call(api, "GET", f"/api/v1/webhooks/{hook}/failures?limit=2")
    assert status == 200
    assert [f["seq"] for f in page["failures"]] == [4, 9]
    assert page["failures"][0]["error"] == "HTTP 500 (4)"
    assert page["failures"][0]["attempts"] == 3
    assert page["next"] == 9
    status, rest = await call(api, "GET", f"/api/v1/webhooks/{hook}/failures?after=9")
    assert ([f["seq"] for f in rest["failures"]], rest["next"]) == ([12], None)
    status, shown = await call(api, "GET", f"/api/v1/webhooks/{hook}")
    assert (shown["state"], shown["last_error"]) == ("failing", "HTTP 500 (12)")
    status, bad = await call(api, "GET", f"/api/v1/webhooks/{hook}/failures?limit=0")
    assert (status, bad["field"]) == (422, "limit")
    status, deleted = await call(api, "DELETE", f"/api/v1/webhooks/{hook}")
    assert (status, deleted["id"]) == (200, hook)
    for method, path in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("GET", "/failures"),
        ("POST", "/test"),
    ]:
        status, answer = await call(api, method, f"/api/v1/webhooks/{hook}{path}")
        assert status == 404, (method, path)
        assert hook in answer["error"]


async def test_the_test_operation_sends_a_signed_ping_outside_the_log() -> None:
    store = MemoryStore()
    api = admin_api(store)
    async with receiving() as receiver:
        _, created = await call(api, "POST", "/api/v1/webhooks", {"url": receiver.url()})
        receiver.secrets[created["id"]] = created["secret"]
        status, answer = await call(api, "POST", f"/api/v1/webhooks/{created['id']}/test")
        assert (status, answer) == (200, {"ok": True, "status": 200, "error": None})
        (ping,) = receiver.requests
        assert ping.signed
        assert [(e["seq"], e["type"]) for e in ping.events] == [(0, "webhook.ping")]
        receiver.fail_next = 1
        status, answer = await call(api, "POST", f"/api/v1/webhooks/{created['id']}/test")
        assert (status, answer) == (200, {"ok": False, "status": 500, "error": "HTTP 500: ok"})
    stored = await store.get_webhook(created["id"])
    assert stored is not None
    assert (stored.cursor, stored.attempts, stored.state) == (0, 0, "active")


async def test_an_https_url_whose_every_address_is_public_is_accepted() -> None:
    async def public(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example.com", 8443)
        return ["93.184.216.34", "2606:2800:220:1::248"]

    store = MemoryStore()
    settings = WebhookSettings(allow_private=False)
    api = AdminApi(
        store,
        API_TOKEN,
        extra_operations=api_webhooks.operations(WebhooksApi(store, settings, resolve=public)),
        extra_types=(*api_webhooks.REQUEST_TYPES, *api_webhooks.RESPONSE_TYPES),
    )
    url = "https://hooks.example.com:8443/in"
    status, created = await call(api, "POST", "/api/v1/webhooks", {"url": url})
    assert (status, created["url"]) == (201, url)


# --- the done-when scenario: real gateways, a real receiver -------------------------------------
#
# Two ``mdmgate serve`` nodes share a database; Windows devices (tests/windows_emulator.py) run
# OMA-DM sessions against them, so the events are the gateway's own (command.delivered and
# command.acknowledged from the Windows service, device.checked_in), written with the changes
# they report. The receiver above runs in this process on 127.0.0.1 (``allow_private``).

SCENARIO_CONFIG = """
[webhooks]
allow_private = true
max_attempts = 20
timeout = 2
"""
DEVICE_PASSWORD = "webhook device secret"
HOOKS = 3


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return Cluster.sqlite_url(tmp_path / "gateway.db")
    return postgres_database(request.getfixturevalue("postgres_server"), "webhooks")


def windows_device(index: int) -> WindowsDevice:
    device = WindowsDevice(f"hook-win-{index}")
    device.username, device.secret = device.device_id, DEVICE_PASSWORD
    device.tree = {f"./Vendor/Acme/Probe{k}": ("chr", f"{index}-{k}") for k in range(2)}
    return device


async def queue_and_run(cluster: Cluster, node: Node, devices: list[WindowsDevice]) -> None:
    """Queues a Get for each LocURI of each device, then runs each device's sessions against
    ``node`` until its queue is empty: each command is delivered and acknowledged."""
    async with cluster.admin(node) as admin:
        for device in devices:
            for uri in sorted(device.tree):
                target = f"<Target><LocURI>{uri}</LocURI></Target>"
                raw = f"<Get><CmdID>1</CmdID><Item>{target}</Item></Get>"
                r = await admin.post(
                    f"/api/v1/devices/{device.device_id}/commands", json={"raw": raw}
                )
                assert r.status_code == 202, r.text
    async with httpx.AsyncClient(base_url=node.base_url, timeout=60) as http:
        for device in devices:
            for _ in range(4):
                before = len(device.received)
                await device.session(http)
                if len(device.received) == before and device.session_count > 1:
                    break


async def logged_events(cluster: Cluster, after: int) -> list[dict[str, Any]]:
    """The event log after ``after``, read through the admin API."""
    found: list[dict[str, Any]] = []
    async with cluster.admin() as admin:
        while True:
            r = await admin.get("/api/v1/events", params={"after": after, "limit": 1000})
            assert r.status_code == 200, r.text
            page = r.json()
            found += page["events"]
            if not page["events"]:
                return found
            after = page["next"]


def check_per_device_order(events: list[dict[str, Any]]) -> None:
    """Each command's delivery comes before its acknowledgement, and each device's events
    come in ``seq`` order."""
    by_device: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event["device_id"] is not None:
            by_device.setdefault(event["device_id"], []).append(event)
    for device, seen in by_device.items():
        assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen), device
        delivered: set[str] = set()
        for event in seen:
            if event["type"] == "command.delivered":
                delivered.add(event["subject"])
            if event["type"] == "command.acknowledged":
                assert event["subject"] in delivered, (device, event)


async def test_webhooks_end_to_end_with_real_gateways_and_a_real_receiver(
    database: str, tmp_path: Path
) -> None:
    devices = [windows_device(i) for i in range(3)]
    async with (
        receiving() as receiver,
        Cluster(tmp_path, database, nodes=2, config=SCENARIO_CONFIG) as cluster,
    ):
        async with cluster.admin() as admin:
            r = await admin.post(
                "/api/v1/devices",
                json=[
                    {
                        "id": d.device_id,
                        "platform": "windows",
                        "org": "/hooks",
                        "auth": {"method": "md5", "username": d.username, "secret": d.secret},
                    }
                    for d in devices
                ],
            )
            assert r.status_code == 200, r.text
            hooks: list[str] = []
            for n in range(HOOKS):
                r = await admin.post("/api/v1/webhooks", json={"url": receiver.url(f"/h{n}")})
                assert r.status_code == 201, r.text
                hooks.append(r.json()["id"])
                receiver.secrets[hooks[-1]] = r.json()["secret"]
            start = r.json()["cursor"]

        # 1. Events arrive signed and in order; the receiver fails for a while first.
        receiver.fail_each = 3
        await queue_and_run(cluster, cluster.nodes[0], devices[:2])
        first = await logged_events(cluster, start)
        assert {e["type"] for e in first} >= {"command.delivered", "command.acknowledged"}
        for hook in hooks:
            await receiver.until(
                lambda hook=hook: set(receiver.accepted_seqs(hook)) >= {e["seq"] for e in first}
            )
        for hook in hooks:
            statuses = [r.status for r in receiver.requests if r.webhook_id == hook]
            assert statuses[:4] == [500, 500, 500, 200], hook
        assert all(r.signed for r in receiver.requests)

        # 2. SIGKILL between the change and its delivery: the receiver holds the request it
        # got (no answer), both nodes die, the receiver hangs up, the nodes come back.
        receiver.holding = True
        held = len(receiver.requests)
        await queue_and_run(cluster, cluster.nodes[1], devices[2:])
        # One request per subscription in flight (each sends one at a time): all held.
        await receiver.until(lambda: len(receiver.requests) == held + HOOKS)
        for node in cluster.nodes:
            cluster.kill(node)
        receiver.release()
        for node in cluster.nodes:
            await cluster.start(node)
        logged = await logged_events(cluster, start)
        assert len(logged) > len(first)
        for hook in hooks:
            await receiver.until(
                lambda hook=hook: set(receiver.accepted_seqs(hook)) == {e["seq"] for e in logged},
                timeout=90,
            )

        # 3. Once per successful receipt, in order, never two deliveries of one at once.
        assert receiver.overlaps == []
        for hook in hooks:
            seqs = receiver.accepted_seqs(hook)
            assert seqs == sorted(set(seqs)), [
                (r.webhook_id[:4], r.seqs, r.status) for r in receiver.requests
            ]  # no repeat after a 2xx, log order
            events = [e for r in receiver.accepted(hook) for e in r.events]
            check_per_device_order(events)
        assert any(r.status == 0 for r in receiver.requests)  # the held ones got no answer

        async with cluster.admin(cluster.nodes[1]) as admin:
            r = await admin.get(f"/api/v1/webhooks/{hooks[0]}")
            assert r.status_code == 200, r.text
            shown = r.json()
            assert (shown["state"], shown["cursor"]) == ("active", logged[-1]["seq"])
            assert shown["last_error"] is None
