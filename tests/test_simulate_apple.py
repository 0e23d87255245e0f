"""The simulated Apple device and the APNs stand-in, against a real `mdmgate serve` process
(SQLite, API token, `[apns] topic`, `--apns-url` at the stand-in over TLS)."""

from __future__ import annotations

import base64
import os
import random
import ssl
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from mdmgate.apple.push import ApnsClient
from mdmgate.enrollment.cms import verify_detached
from mdmgate.simulate.apns import ApnsStandIn
from mdmgate.simulate.apple import IdentityIssuer, SimulatedAppleDevice
from mdmgate.simulate.ledger import GatewayDelivery, Ledger, LedgerResult, compare
from mdmgate.simulate.scenario import DeviceProfile
from mdmgate.simulate.stats import Stats
from mdmgate.simulate.transport import (
    ClientCert,
    Exchange,
    HttpClient,
    Reply,
    TransportError,
    parse_target,
)

TOKEN = "simulate-apple-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TOPIC = "com.apple.mgmt.External.simulate-test"
APPS = (("com.microsoft.Office.Outlook", "4.2420.0"), ("com.example.Notes", "2.1"))


class Pushes:
    """What the stand-in told the runner: tokens pushed, waited on with a deadline."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self._changed = trio.Event()

    def __call__(self, token: str) -> None:
        self.seen[token] += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, token: str, count: int = 1) -> None:
        with trio.fail_after(15):
            while self.seen[token] < count:
                await self._changed.wait()


class Fleet:
    """The stand-in, the gateway and an admin client, for one test."""

    def __init__(
        self,
        base: str,
        apns: ApnsStandIn,
        pushes: Pushes,
        admin: httpx.AsyncClient,
        cacert: str | None = None,
    ) -> None:
        self.base = base
        self.apns = apns
        self.pushes = pushes
        self.admin = admin
        self.http = HttpClient(parse_target(base), cacert=cacert)
        self.stats = Stats(trio.current_time)
        self.ledger = Ledger()
        self.tokens: set[str] = set()

    def device(
        self,
        udid: str,
        rng: random.Random | None = None,
        *,
        auth: str = "signature",
        issuer: IdentityIssuer | None = None,
        error_rate: float = 0.0,
        not_now_rate: float = 0.0,
        timeout_rate: float = 0.0,
    ) -> Device:
        profile = DeviceProfile(
            id=udid,
            platform="ios",
            org="/sim",
            os_version="17.5.1",
            model="iPhone15,3",
            serial=f"F{udid[-11:]:>11}".replace(" ", "0"),
            apps=APPS,
            auth=auth,
            error_rate=error_rate,
            not_now_rate=not_now_rate,
            timeout_rate=timeout_rate,
        )
        device = SimulatedAppleDevice(
            profile,
            rng=rng or random.Random(7),
            stats=self.stats,
            ledger=self.ledger,
            topic=TOPIC,
            issuer=issuer,
        )
        self.tokens.add(device.push_token)
        return Device(device, self)

    async def register(self, *udids: str) -> None:
        devices = [
            {"id": u, "platform": "ios", "org": "/sim", "os_version": "17.5.1", "auth": {}}
            for u in udids
        ]
        r = await self.admin.post("/api/v1/devices", json=devices)
        assert r.status_code == 200, r.text

    async def enqueue(self, udid: str, command: dict[str, Any]) -> str:
        r = await self.admin.post(f"/api/v1/devices/{udid}/commands", json=command)
        assert r.status_code == 202, r.text
        command_id: str = r.json()["command_id"]
        return command_id

    async def delivery(self, command_id: str) -> dict[str, Any]:
        r = await self.admin.get(f"/api/v1/commands/{command_id}")
        assert r.status_code == 200, r.text
        (found,) = r.json()["deliveries"]
        assert isinstance(found, dict)
        return found

    async def facts(self, udid: str) -> dict[str, Any]:
        r = await self.admin.get(f"/api/v1/devices/{udid}")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    async def check_ledger(self, udid: str) -> LedgerResult:
        """The simulator's end-of-run check of one device against the gateway."""
        r = await self.admin.get(f"/api/v1/devices/{udid}/deliveries")
        assert r.status_code == 200, r.text
        deliveries = [
            GatewayDelivery(d["command_id"], d["state"], d.get("status"), d.get("offers", 0))
            for d in r.json()["deliveries"]
        ]
        result = LedgerResult()
        compare(udid, self.ledger.observed(udid), deliveries, result)
        return result

    def errors(self) -> dict[str, int]:
        found: dict[str, int] = self.stats.totals()["platforms"].get("ios", {}).get("errors", {})
        return found


class Device:
    """A simulated device and the exchange a runner gives it for each session."""

    def __init__(self, sim: SimulatedAppleDevice, fleet: Fleet) -> None:
        self.sim = sim
        self.fleet = fleet
        self.client_cert: ClientCert | None = None

    async def session(self, fail: FailAfterSending | None = None) -> None:
        exchange = self.fleet.http.exchange(client_cert=self.client_cert)
        confirmed = Confirming(exchange, self.fleet.ledger, self.sim.id, fail)
        try:
            await self.sim.session(confirmed)
        finally:
            self.fleet.ledger.session_ended(self.sim.id)
            await exchange.aclose()


class FailAfterSending:
    """Loses the reply to the ``index``-th message of a session (the gateway got it)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.sent = 0


class Confirming:
    """What the runner wraps around a device's exchange: tells the ledger whether each
    message reached the gateway."""

    def __init__(
        self, inner: Exchange, ledger: Ledger, device_id: str, fail: FailAfterSending | None
    ) -> None:
        self.inner = inner
        self.ledger = ledger
        self.device_id = device_id
        self.fail = fail
        self.paths: list[str] = []

    async def __call__(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Reply:
        self.paths.append(path)
        try:
            reply = await self.inner(method, path, headers, body)
            if self.fail is not None:
                self.fail.sent += 1
                if self.fail.sent == self.fail.index:
                    raise TransportError("reset", "reply lost (test)")
        except TransportError:
            self.ledger.exchange_failed(self.device_id)
            raise
        self.ledger.exchange_ok(self.device_id)
        return reply


async def _first_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    with trio.fail_after(60):
        while b"\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").split("\n", 1)[0]


@asynccontextmanager
async def running_fleet(
    tmp_path: Path, *extra: str, cacert: str | None = None
) -> AsyncIterator[Fleet]:
    pushes = Pushes()
    fleet_tokens: set[str] = set()
    apns = ApnsStandIn(pushes, tokens=fleet_tokens)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[apns]\ntopic = "{TOPIC}"\nrate = 1000.0\n')
    async with trio.open_nursery() as nursery:
        await nursery.start(apns.serve)
        assert apns.url.startswith("https://")
        assert apns.ca_file is not None
        # The gateway trusts APNs through the default store, which SSL_CERT_FILE replaces.
        env = {**os.environ, "MDMGATE_API_TOKEN": TOKEN, "SSL_CERT_FILE": str(apns.ca_file)}
        args = [sys.executable, "-m", "mdmgate", "serve", "--listen", "127.0.0.1:0"]
        args += ["--db", f"sqlite:///{tmp_path / 'gateway.db'}", "--config", str(config)]
        args += ["--apns-url", apns.url, *extra]
        with (tmp_path / "gateway.log").open("w") as log:
            process = await trio.lowlevel.open_process(
                args, stdout=subprocess.PIPE, stderr=log, env=env
            )
        try:
            assert process.stdout is not None
            line = await _first_line(process.stdout)
            if not line.startswith("mdmgate listening on "):
                raise AssertionError(line + (tmp_path / "gateway.log").read_text())
            base = line.split()[-1]
            verify: ssl.SSLContext | bool = True
            if cacert is not None:
                verify = ssl.create_default_context(cafile=cacert)
            async with httpx.AsyncClient(base_url=base, headers=AUTH, verify=verify) as admin:
                fleet = Fleet(base, apns, pushes, admin, cacert)
                fleet.tokens = fleet_tokens
                yield fleet
        finally:
            process.kill()
            with trio.move_on_after(30):
                await process.wait()
            nursery.cancel_scope.cancel()


class Scripted(random.Random):
    """A random source whose ``random()`` gives these values in turn."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values: Iterator[float] = iter(values)

    def random(self) -> float:
        return next(self.values)


# -- the APNs stand-in on its own, driven by the gateway's own APNs client


@pytest.mark.parametrize("tls", [True, False])
async def test_stand_in_answers_like_apns(tls: bool) -> None:
    pushes = Pushes()
    known = "ab" * 32
    apns = ApnsStandIn(pushes, tokens={known}, tls=tls, max_body=256)
    async with trio.open_nursery() as nursery:
        await nursery.start(apns.serve)
        context = None
        if tls:
            assert apns.ca_file is not None
            assert apns.ca_file.exists()
            context = ssl.create_default_context(cafile=str(apns.ca_file))
        else:
            assert apns.url.startswith("http://")
            assert apns.ca_file is None
        async with ApnsClient(apns.url, topic=TOPIC, ssl_context=context, max_attempts=1) as c:
            ok = await c.push(known.upper(), "magic")
            unknown = await c.push("cd" * 32, "magic")
            odd = await c.push("abc", "magic")
            too_large = await c.push(known, "m" * 300)
        nursery.cancel_scope.cancel()
    assert (ok.status, ok.apns_id is not None) == (200, True)
    assert (unknown.status, unknown.reason, unknown.dead) == (400, "BadDeviceToken", True)
    assert (odd.status, odd.reason) == (400, "BadDeviceToken")
    assert (too_large.status, too_large.reason) == (413, "PayloadTooLarge")
    assert pushes.seen == Counter({known: 1})
    assert apns.pushes == 1
    assert apns.refused == {"BadDeviceToken": 2, "PayloadTooLarge": 1}


def test_identity_signs_what_the_gateway_verifies() -> None:
    issuer = IdentityIssuer()
    identity = issuer.issue("00008110-SIGNED")
    sign = identity.signer()
    body = b"<plist>any body</plist>"
    assert verify_detached(base64.b64decode(sign(body)), body) == identity.cert_der
    assert b"BEGIN CERTIFICATE" in identity.pem()
    assert b"PRIVATE KEY" in identity.pem()
    assert b"BEGIN CERTIFICATE" in issuer.ca_pem()
    assert issuer.issued == 1


# -- against the gateway


async def test_enrollment_binds_the_device(tmp_path: Path) -> None:
    async with running_fleet(tmp_path) as fleet:
        udid = "00008110-000A00000001"
        await fleet.register(udid)
        device = fleet.device(udid)
        assert not device.sim.enrolled
        await device.session()
        assert device.sim.enrolled
        assert fleet.errors() == {}
        out = await fleet.facts(udid)
        assert out["auth_configured"] is True
        facts = out["facts"]
        assert facts["apns"]["token"] == device.sim.push_token
        assert facts["apns"]["topic"] == TOPIC
        enrollment = facts["apple_enrollment"]
        assert enrollment["enrolled"] is True
        assert (enrollment["os_version"], enrollment["product"]) == ("17.5.1", "iPhone15,3")
        # Bound to this device's identity: another identity for the same UDID is refused.
        impostor = fleet.device(udid)
        await impostor.session()
        assert fleet.errors() == {"http_403": 1}
        # An unregistered device is refused too (no --dev): nothing is bound.
        stranger = fleet.device("00008110-000A0000000F")
        await stranger.session()
        assert fleet.errors() == {"http_403": 2}
        assert not stranger.sim.enrolled


async def test_queued_commands_are_pushed_delivered_and_stored(tmp_path: Path) -> None:
    async with running_fleet(tmp_path) as fleet:
        udid = "00008110-000A00000002"
        await fleet.register(udid)
        device = fleet.device(udid)
        await device.session()
        queries = ["OSVersion", "SerialNumber", "DeviceCapacity", "iTunesStoreAccountHash"]
        info = await fleet.enqueue(
            udid, {"apple": {"request_type": "DeviceInformation", "payload": {"Queries": queries}}}
        )
        await fleet.pushes.wait(device.sim.push_token)
        install = await fleet.enqueue(
            udid, {"apple_app": {"action": "install_store_app", "itunes_store_id": 361309726}}
        )
        inventory = await fleet.enqueue(udid, {"apple_app": {"action": "refresh_inventory"}})
        await fleet.pushes.wait(device.sim.push_token, 3)
        assert fleet.apns.pushes >= 3
        await device.session()
        assert fleet.errors() == {}
        got = await fleet.delivery(info)
        assert (got["state"], got["status"]) == ("acknowledged", "Acknowledged")
        answers = got["result_json"]["QueryResponses"]
        assert answers["OSVersion"] == "17.5.1"
        assert isinstance(answers["DeviceCapacity"], float)
        assert "iTunesStoreAccountHash" not in answers
        assert (await fleet.delivery(install))["state"] == "acknowledged"
        got = await fleet.delivery(inventory)
        assert got["state"] == "acknowledged"
        out = await fleet.facts(udid)
        facts = out["facts"]
        installed = {a["identifier"]: a["version"] for a in out["apps"]}
        # The profile's apps, and the one installed just before the inventory.
        assert installed == {**dict(APPS), "com.simulated.store.361309726": "1.0"}
        assert facts["app_installs"]["com.simulated.store.361309726"]["state"] == "Installing"
        for command_id in (info, install, inventory):
            seen = fleet.ledger.observed(udid)[command_id]
            assert (seen.received, seen.answers) == (1, (("acknowledged", "confirmed"),))
        result = await fleet.check_ledger(udid)
        assert (result.clean, result.counts["ok"]) == (True, 3), result.to_builtins()


async def test_not_now_is_redelivered_next_session(tmp_path: Path) -> None:
    async with running_fleet(tmp_path) as fleet:
        udid = "00008110-000A00000003"
        await fleet.register(udid)
        device = fleet.device(udid, Scripted(0.1, 0.9), not_now_rate=0.5)
        await device.session()
        command = await fleet.enqueue(udid, {"apple": {"request_type": "ProfileList"}})
        await fleet.pushes.wait(device.sim.push_token)
        await device.session()
        got = await fleet.delivery(command)
        assert (got["state"], got["status"]) == ("not_now", "NotNow")
        await device.session()
        got = await fleet.delivery(command)
        assert (got["state"], got["status"]) == ("acknowledged", "Acknowledged")
        (profile,) = got["result_json"]["ProfileList"]
        assert profile["PayloadIdentifier"] == "com.mdmgate.simulate.enrollment"
        seen = fleet.ledger.observed(udid)[command]
        assert seen.received == 2
        assert [a for a, _ in seen.answers] == ["not_now", "acknowledged"]
        result = await fleet.check_ledger(udid)
        assert (result.clean, result.counts["ok"]) == (True, 1), result.to_builtins()


async def test_error_rate_one_ends_every_delivery_in_error(tmp_path: Path) -> None:
    async with running_fleet(tmp_path) as fleet:
        udid = "00008110-000A00000004"
        await fleet.register(udid)
        device = fleet.device(udid, error_rate=1.0)
        await device.session()
        commands = [
            await fleet.enqueue(udid, {"apple": {"request_type": name}})
            for name in ("ProfileList", "SecurityInfo")
        ]
        await device.session()
        for command_id in commands:
            got = await fleet.delivery(command_id)
            assert (got["state"], got["status"]) == ("error", "Error")
            (error,) = got["result_json"]["ErrorChain"]
            assert error["ErrorDomain"] == "MCMDMErrorDomain"
        assert fleet.errors() == {}  # an Error answer is the device's, not a failed session
        result = await fleet.check_ledger(udid)
        assert (result.clean, result.counts["ok"]) == (True, 2), result.to_builtins()


async def test_declarative_management_runs_a_ddm_sync(tmp_path: Path) -> None:
    async with running_fleet(tmp_path) as fleet:
        udid = "00008110-000A00000005"
        await fleet.register(udid)
        r = await fleet.admin.post(
            "/api/v1/declarations",
            json={
                "type": "com.apple.configuration.softwareupdate.settings",
                "identifier": "sim.updates",
                "payload": {"Notifications": True},
                "targets": {"devices": [udid]},
            },
        )
        assert r.status_code == 201, r.text
        device = fleet.device(udid)
        await device.session()
        command = await fleet.enqueue(udid, {"apple": {"request_type": "DeclarativeManagement"}})
        await device.session()
        assert fleet.errors() == {}
        assert (await fleet.delivery(command))["state"] == "acknowledged"
        facts = (await fleet.facts(udid))["facts"]
        assert facts["ddm_tokens"]["token"]
        declarations = facts["ddm_status"]["StatusItems"]["management"]["declarations"]
        assert [d["identifier"] for d in declarations["configurations"]] == ["sim.updates"]
        assert [d["identifier"] for d in declarations["activations"]] == ["mdmgate.activation"]
        assert all(d["valid"] == "valid" for d in declarations["configurations"])
        # Nothing changed: the next sync asks for the tokens only.
        await fleet.enqueue(udid, {"apple": {"request_type": "DeclarativeManagement"}})
        exchange = fleet.http.exchange()
        watched = Confirming(exchange, fleet.ledger, udid, None)
        await device.sim.session(watched)
        await exchange.aclose()
        # Idle (the command), Acknowledged (nothing more), then the DDM tokens only.
        assert watched.paths == ["/mdm/apple/connect"] * 2 + ["/mdm/apple/checkin"]


async def test_silent_session_and_lost_reply(tmp_path: Path) -> None:
    async with running_fleet(tmp_path) as fleet:
        udid = "00008110-000A00000006"
        await fleet.register(udid)
        # Session draws: enrolling (not silent); silent; not silent + the answer; not silent.
        device = fleet.device(udid, Scripted(0.9, 0.1, 0.9, 0.9, 0.9), timeout_rate=0.5)
        await device.session()
        command = await fleet.enqueue(udid, {"apple": {"request_type": "DeviceLock"}})
        await device.session()
        assert fleet.errors() == {"silent": 1}
        got = await fleet.delivery(command)
        assert (got["state"], got["offers"]) == ("sent", 1)
        # Offered again; the gateway stores the answer, but its reply never comes back
        # (second message: Idle, then the answer).
        await device.session(FailAfterSending(2))
        assert fleet.errors() == {"silent": 1, "transport_reset": 1}
        assert (await fleet.delivery(command))["state"] == "acknowledged"
        # The device sends its answer again: harmless, and no duplicate for the ledger.
        await device.session()
        assert fleet.errors() == {"silent": 1, "transport_reset": 1}
        seen = fleet.ledger.observed(udid)[command]
        assert (seen.received, seen.duplicates) == (2, 0)
        assert seen.answers[-1] == ("acknowledged", "confirmed")
        result = await fleet.check_ledger(udid)
        assert (result.clean, result.counts["ok"]) == (True, 1), result.to_builtins()


async def test_mtls_identity_from_the_gateway_client_ca(tmp_path: Path) -> None:
    # The devices' issuer is the gateway's --client-ca; the server certificate is another CA's.
    issuer = IdentityIssuer()
    client_ca = tmp_path / "devices-ca.pem"
    client_ca.write_bytes(issuer.ca_pem())
    server_ca = trustme.CA()
    server = server_ca.issue_cert("127.0.0.1")
    cert, key, cacert = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    server_ca.cert_pem.write_to_path(str(cacert))
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--client-ca", str(client_ca)]
    async with running_fleet(tmp_path, *tls, cacert=str(cacert)) as fleet:
        assert fleet.base.startswith("https://")
        udid = "00008110-000A00000007"
        await fleet.register(udid)
        device = fleet.device(udid, auth="mtls", issuer=issuer)
        identity = tmp_path / "device.pem"
        identity.write_bytes(device.sim.identity_pem())
        device.client_cert = ClientCert(str(identity))
        await device.session()
        command = await fleet.enqueue(udid, {"apple": {"request_type": "ProfileList"}})
        await fleet.pushes.wait(device.sim.push_token)
        await device.session()
        assert fleet.errors() == {}
        assert (await fleet.delivery(command))["state"] == "acknowledged"
        # Without its certificate (and without a signature) the device is not heard.
        device.client_cert = None
        await fleet.enqueue(udid, {"apple": {"request_type": "ProfileList"}})
        await device.session()
        assert fleet.errors() == {"http_403": 1}
