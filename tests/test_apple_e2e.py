"""Apple devices end to end: a device emulator (plist bodies, real HTTP over TLS with its
identity certificate) against the real server and a local APNs-protocol HTTP/2 server."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from mdmgate import plist
from mdmgate.apple.push import ApnsClient
from mdmgate.apple.pusher import DevicePusher
from mdmgate.apple.service import AppleService
from mdmgate.server.admin import AdminApi
from mdmgate.server.app import build_handler
from mdmgate.server.http import Limits, Server, listener_port, open_listeners, server_ssl_context
from mdmgate.server.metrics import Metrics
from mdmgate.storage import Device
from mdmgate.storage.sqlite import SQLiteStore
from tests.apns_server import UNREGISTERED, ApnsServer, running

TOKEN = "apple-e2e-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TOPIC = "com.apple.mgmt.External.e2e"
CHECKIN = "application/x-apple-aspen-mdm-checkin"


@dataclass
class Pki:
    ca: trustme.CA
    server_cert: Path
    server_key: Path
    ca_file: Path

    def device_identity(self, tmp: Path, name: str) -> tuple[Path, bytes]:
        """A device identity certificate (PEM file with key) and its DER."""
        cert = self.ca.issue_cert(f"{name}.devices.example")
        pem = tmp / f"{name}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
        der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
        return pem, der


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca, cert, key, ca_file)


class Gateway:
    def __init__(self, store: SQLiteStore, base: str, apns: ApnsServer, pki: Pki) -> None:
        self.store = store
        self.base = base
        self.apns = apns
        self.pki = pki

    def admin(self) -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=str(self.pki.ca_file))
        return httpx.AsyncClient(base_url=self.base, verify=context, headers=AUTH)

    def device(self, identity: Path, *, http2: bool = False) -> httpx.AsyncClient:
        """A client presenting the device's identity certificate (mTLS)."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_file))
        context.load_cert_chain(str(identity))
        return httpx.AsyncClient(base_url=self.base, verify=context, http1=not http2, http2=http2)


@asynccontextmanager
async def gateway(tmp_path: Path, pki: Pki) -> AsyncIterator[Gateway]:
    store = await SQLiteStore.open(tmp_path / "mdmgate.db")
    apns = ApnsServer()
    metrics = Metrics()
    admin = AdminApi(store, TOKEN)
    apple = AppleService(store)
    handler = build_handler(store, admin, metrics, None, apple)
    context = server_ssl_context(pki.server_cert, pki.server_key, pki.ca_file)
    listeners = await open_listeners("127.0.0.1", 0, context)
    server = Server(handler, Limits(), metrics=metrics)
    async with running(apns) as apns_url, ApnsClient(apns_url, topic=TOPIC) as client:
        pusher = DevicePusher(store, client)
        admin.on_enqueued = pusher.wake
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.run)
            await nursery.start(server.run, listeners)
            try:
                yield Gateway(store, f"https://127.0.0.1:{listener_port(listeners[0])}", apns, pki)
            finally:
                nursery.cancel_scope.cancel()
    await store.aclose()


class AppleDevice:
    """What an iPhone's MDM client sends."""

    def __init__(self, client: httpx.AsyncClient, udid: str, token: bytes) -> None:
        self.client = client
        self.udid = udid
        self.token = token
        self.push_magic = f"magic-{udid}"

    async def checkin(self, message: dict[str, Any]) -> httpx.Response:
        body = plist.dumps({"UDID": self.udid, **message})
        return await self.client.put(
            "/mdm/apple/checkin", content=body, headers={"content-type": CHECKIN}
        )

    async def enroll(self) -> None:
        r = await self.checkin(
            {
                "MessageType": "Authenticate",
                "Topic": TOPIC,
                "OSVersion": "17.5",
                "ProductName": "iPhone15,2",
                "SerialNumber": "F2LXYZ",
            }
        )
        assert r.status_code == 200, r.text
        r = await self.checkin(
            {
                "MessageType": "TokenUpdate",
                "Topic": TOPIC,
                "Token": self.token,
                "PushMagic": self.push_magic,
                "UnlockToken": b"unlock",
            }
        )
        assert r.status_code == 200, r.text

    async def connect(self, status: str, **fields: Any) -> httpx.Response:
        body = plist.dumps({"UDID": self.udid, "Status": status, **fields})
        return await self.client.put("/mdm/apple/connect", content=body)

    async def next_command(self, status: str = "Idle", **fields: Any) -> dict[str, Any] | None:
        r = await self.connect(status, **fields)
        assert r.status_code == 200, r.text
        if not r.content:
            return None
        command = plist.loads(r.content)
        assert isinstance(command, dict)
        return command


async def enqueue(admin: httpx.AsyncClient, udid: str, request_type: str, **payload: Any) -> str:
    r = await admin.post(
        f"/api/v1/devices/{udid}/commands",
        json={"apple": {"request_type": request_type, "payload": payload}},
    )
    assert r.status_code == 202, r.text
    command_id: str = r.json()["command_id"]
    return command_id


async def delivery(admin: httpx.AsyncClient, command_id: str) -> dict[str, Any]:
    r = await admin.get(f"/api/v1/commands/{command_id}")
    (found,) = r.json()["deliveries"]
    assert isinstance(found, dict)
    return found


async def pushed(apns: ApnsServer, token: bytes, count: int) -> None:
    with trio.fail_after(10):
        while len(apns.accepted(token.hex())) < count:
            await trio.sleep(0.01)


async def register(gw: Gateway, udid: str, **extra: Any) -> None:
    await gw.store.upsert_devices([Device(udid, "ios", "/acme", "17.5", True, {}, {}, **extra)])


async def test_enroll_push_command_and_inventory(tmp_path: Path, pki: Pki) -> None:
    async with gateway(tmp_path, pki) as gw, gw.admin() as admin:
        identity, der = pki.device_identity(tmp_path, "phone-1")
        await register(gw, "udid-1")
        async with gw.device(identity, http2=True) as client:
            phone = AppleDevice(client, "udid-1", bytes.fromhex("a1b2c3d4"))
            await phone.enroll()
            stored = await gw.store.get_device("udid-1")
            assert stored is not None
            assert stored.auth["sha256"] == hashlib.sha256(der).hexdigest()
            # Enqueue -> a push with the device's PushMagic -> Idle -> the command.
            r = await admin.post(
                "/api/v1/devices/udid-1/commands",
                json={"apple_app": {"action": "install_store_app", "itunes_store_id": 361309726}},
            )
            assert r.status_code == 202, r.text
            install = r.json()["command_id"]
            await pushed(gw.apns, phone.token, 1)
            push = gw.apns.accepted(phone.token.hex())[0]
            assert push.payload == {"mdm": phone.push_magic}
            assert push.headers["apns-push-type"] == "mdm"
            command = await phone.next_command()
            assert command is not None
            assert command["CommandUUID"] == install
            assert command["Command"]["RequestType"] == "InstallApplication"
            assert command["Command"]["iTunesStoreID"] == 361309726
            assert command["Command"]["Options"] == {"PurchaseMethod": 1}
            # Acknowledged: stored, and nothing more to do.
            after = await phone.next_command(
                "Acknowledged",
                CommandUUID=install,
                Identifier="com.example.app",
                State="Installing",
            )
            assert after is None
            assert (await delivery(admin, install))["state"] == "acknowledged"
            # The inventory: InstalledApplicationList, an app still installing is not installed.
            inventory = await enqueue(admin, "udid-1", "InstalledApplicationList")
            command = await phone.next_command()
            assert command is not None
            assert command["CommandUUID"] == inventory
            apps = [
                {
                    "Identifier": "com.example.notes",
                    "Name": "Notes",
                    "ShortVersion": "3.2",
                    "Version": "320",
                    "Installing": False,
                },
                {
                    "Identifier": "com.example.app",
                    "Name": "App",
                    "ShortVersion": "1.0",
                    "Version": "1",
                    "Installing": True,
                },
            ]
            assert (
                await phone.next_command(
                    "Acknowledged", CommandUUID=inventory, InstalledApplicationList=apps
                )
                is None
            )
            r = await admin.get("/api/v1/devices/udid-1")
            listed = {a["identifier"]: a["version"] for a in r.json()["apps"]}
            assert listed == {"com.example.notes": "3.2"}


async def test_not_now_then_idle(tmp_path: Path, pki: Pki) -> None:
    async with gateway(tmp_path, pki) as gw, gw.admin() as admin:
        identity, _ = pki.device_identity(tmp_path, "phone-2")
        await register(gw, "udid-2")
        async with gw.device(identity) as client:
            phone = AppleDevice(client, "udid-2", bytes.fromhex("0badc0de"))
            await phone.enroll()
            first = await enqueue(admin, "udid-2", "DeviceInformation", Queries=["OSVersion"])
            command = await phone.next_command()
            assert command is not None
            # Busy: NotNow. The same exchange does not get it back (no spinning).
            assert await phone.next_command("NotNow", CommandUUID=first) is None
            assert (await delivery(admin, first))["state"] == "not_now"
            # The next wake-up offers it again.
            command = await phone.next_command()
            assert command is not None
            assert command["CommandUUID"] == first
            assert (
                await phone.next_command(
                    "Acknowledged", CommandUUID=first, QueryResponses={"OSVersion": "17.5"}
                )
                is None
            )
            assert (await delivery(admin, first))["state"] == "acknowledged"


async def test_dead_token_from_apns(tmp_path: Path, pki: Pki) -> None:
    async with gateway(tmp_path, pki) as gw, gw.admin() as admin:
        identity, _ = pki.device_identity(tmp_path, "phone-3")
        await register(gw, "udid-3")
        async with gw.device(identity) as client:
            phone = AppleDevice(client, "udid-3", bytes.fromhex("deadbeef"))
            await phone.enroll()
        gw.apns.script(phone.token.hex(), UNREGISTERED)
        await enqueue(admin, "udid-3", "DeviceInformation", Queries=["OSVersion"])
        with trio.fail_after(10):
            while True:
                device = await gw.store.get_device("udid-3")
                assert device is not None
                if device.facts.get("apns", {}).get("dead"):
                    break
                await trio.sleep(0.01)


async def test_forged_udid_on_another_devices_certificate(tmp_path: Path, pki: Pki) -> None:
    async with gateway(tmp_path, pki) as gw:
        mine, _ = pki.device_identity(tmp_path, "phone-a")
        theirs, _ = pki.device_identity(tmp_path, "phone-b")
        await register(gw, "udid-a")
        await register(gw, "udid-b")
        async with gw.device(mine) as client:
            await AppleDevice(client, "udid-a", b"\x01").enroll()
        async with gw.device(theirs) as client:
            forged = AppleDevice(client, "udid-a", b"\x02")
            r = await forged.checkin({"MessageType": "Authenticate", "Topic": TOPIC})
            assert 400 <= r.status_code < 500
            assert r.status_code != 401
            r = await forged.connect("Idle")
            assert 400 <= r.status_code < 500
            assert r.status_code != 401


async def test_ddm_sync_from_tokens_to_status(tmp_path: Path, pki: Pki) -> None:
    async with gateway(tmp_path, pki) as gw, gw.admin() as admin:
        identity, _ = pki.device_identity(tmp_path, "phone-d")
        await register(gw, "udid-d")
        r = await admin.post(
            "/api/v1/declarations",
            json={
                "type": "com.apple.configuration.softwareupdate.settings",
                "identifier": "acme.updates",
                "payload": {"Deferrals": {"CombinedPeriodInDays": 30}, "Notifications": True},
                "targets": {"orgs": ["/acme"]},
            },
        )
        assert r.status_code == 201, r.text
        async with gw.device(identity) as client:
            phone = AppleDevice(client, "udid-d", b"\x0d")
            await phone.enroll()

            async def ddm(endpoint: str, data: Any = None) -> Any:
                message: dict[str, Any] = {
                    "MessageType": "DeclarativeManagement",
                    "Endpoint": endpoint,
                }
                if data is not None:
                    message["Data"] = json.dumps(data).encode()
                answer = await phone.checkin(message)
                assert answer.status_code == 200, answer.text
                return answer.json() if answer.content else None

            tokens = await ddm("tokens")
            items = await ddm("declaration-items")
            assert items["DeclarationsToken"] == tokens["SyncTokens"]["DeclarationsToken"]
            configurations = items["Declarations"]["Configurations"]
            assert [c["Identifier"] for c in configurations] == ["acme.updates"]
            (activation,) = items["Declarations"]["Activations"]
            body = await ddm(f"declaration/activation/{activation['Identifier']}")
            assert body["Payload"]["StandardConfigurations"] == ["acme.updates"]
            body = await ddm("declaration/configuration/acme.updates")
            assert body["Payload"]["Deferrals"] == {"CombinedPeriodInDays": 30}
            assert body["ServerToken"] == configurations[0]["ServerToken"]
            status = {
                "StatusItems": {"softwareupdate": {"install-state": "none", "pending-version": {}}},
                "Errors": [],
            }
            await ddm("status", status)
            device = await gw.store.get_device("udid-d")
            assert device is not None
            assert "softwareupdate" in json.dumps(device.facts.get("ddm_status"))
