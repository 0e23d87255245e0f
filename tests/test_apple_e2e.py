"""Apple devices end to end: a device emulator (plist bodies, real HTTP over TLS with its
identity certificate) against the real server and a local APNs-protocol HTTP/2 server."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import plistlib
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
from mdmgate.apple.service import MAX_OFFERS, AppleService
from mdmgate.server.admin import AdminApi
from mdmgate.server.app import ConfigError, build_handler, load_config
from mdmgate.server.http import Limits, Server, listener_port, open_listeners, server_ssl_context
from mdmgate.server.metrics import Metrics
from mdmgate.storage import Device
from mdmgate.storage.memory import MemoryStore
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

    def anonymous(self) -> httpx.AsyncClient:
        """A client without a device certificate (nor the admin token)."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_file))
        return httpx.AsyncClient(base_url=self.base, verify=context)

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

    async def authenticate(self, **about: Any) -> httpx.Response:
        """Authenticate, as an iPhone on iOS 17.5 unless ``about`` says otherwise (a key
        given as ``None`` is left out)."""
        message = {
            "MessageType": "Authenticate",
            "Topic": TOPIC,
            "OSVersion": "17.5",
            "ProductName": "iPhone15,2",
            "SerialNumber": "F2LXYZ",
            **about,
        }
        return await self.checkin({k: v for k, v in message.items() if v is not None})

    async def enroll(self, **about: Any) -> None:
        r = await self.authenticate(**about)
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


async def test_a_command_never_answered_fails_after_max_offers(tmp_path: Path, pki: Pki) -> None:
    async with gateway(tmp_path, pki) as gw, gw.admin() as admin:
        identity, _ = pki.device_identity(tmp_path, "phone-poison")
        await register(gw, "udid-poison")
        async with gw.device(identity) as client:
            phone = AppleDevice(client, "udid-poison", bytes.fromhex("0bad0bad"))
            await phone.enroll()
            poison = await enqueue(admin, "udid-poison", "DeviceInformation", Queries=["UDID"])
            after = await enqueue(admin, "udid-poison", "DeviceInformation", Queries=["Model"])
            # The device's MDM client dies on the command: it never answers, and asks for
            # the next one when it comes back.
            for _ in range(MAX_OFFERS):
                command = await phone.next_command()
                assert command is not None
                assert command["CommandUUID"] == poison
            found = await delivery(admin, poison)
            assert (found["state"], found["status"]) == ("sent", None)
            # Offered MAX_OFFERS times without an answer: given up, and the queue moves on.
            command = await phone.next_command()
            assert command is not None
            assert command["CommandUUID"] == after
            found = await delivery(admin, poison)
            assert (found["state"], found["status"]) == (
                "failed",
                f"offered {MAX_OFFERS} times without an answer",
            )


def test_apple_max_offers_config(tmp_path: Path) -> None:
    assert AppleService(MemoryStore()).max_offers == MAX_OFFERS == 5
    config = tmp_path / "mdmgate.toml"
    config.write_text("[apple]\nmax_offers = 2\n")
    assert load_config(str(config), {}).apple_max_offers == 2
    for bad, needle in (("[apple]\nmax_offers = 0\n", "max_offers"), ("[apple]\nx = 1\n", "x")):
        config.write_text(bad)
        with pytest.raises(ConfigError, match=needle):
            load_config(str(config), {})


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


async def test_commands_queued_before_the_first_authenticate_are_kept(
    tmp_path: Path, pki: Pki
) -> None:
    async with gateway(tmp_path, pki) as gw, gw.admin() as admin:
        identity, _ = pki.device_identity(tmp_path, "phone-q")
        await register(gw, "udid-q")
        # The documented flow: register, queue, then the device enrolls.
        early = await enqueue(admin, "udid-q", "DeviceInformation", Queries=["OSVersion"])
        async with gw.device(identity) as client:
            phone = AppleDevice(client, "udid-q", b"\x0e")
            await phone.enroll()
            assert (await delivery(admin, early))["state"] == "queued"
            command = await phone.next_command()
            assert command is not None
            assert command["CommandUUID"] == early
            queries = {"OSVersion": "17.5"}
            assert (
                await phone.next_command("Acknowledged", CommandUUID=early, QueryResponses=queries)
                is None
            )
            assert (await delivery(admin, early))["state"] == "acknowledged"
            # An enrolled device that enrolls again starts over: its open commands end.
            late = await enqueue(admin, "udid-q", "DeviceInformation", Queries=["OSVersion"])
            await phone.enroll()
            ended = await delivery(admin, late)
            assert (ended["state"], ended["status"]) == ("error", "re-enrolled")
            assert await phone.next_command() is None
            assert (await delivery(admin, early))["state"] == "acknowledged"


async def test_an_enrollment_retried_before_token_update_keeps_the_queue(
    tmp_path: Path, pki: Pki
) -> None:
    async with gateway(tmp_path, pki) as gw, gw.admin() as admin:
        identity, _ = pki.device_identity(tmp_path, "phone-r")
        await register(gw, "udid-r")
        early = await enqueue(admin, "udid-r", "DeviceInformation", Queries=["OSVersion"])
        async with gw.device(identity) as client:
            phone = AppleDevice(client, "udid-r", b"\x0f")
            # The profile failed to install after Authenticate; the user tries again.
            assert (await phone.authenticate()).status_code == 200
            await phone.enroll()
            command = await phone.next_command()
            assert command is not None
            assert command["CommandUUID"] == early


async def test_authenticate_again_updates_os_version_and_model(tmp_path: Path, pki: Pki) -> None:
    async with gateway(tmp_path, pki) as gw, gw.admin() as admin:
        identity, _ = pki.device_identity(tmp_path, "phone-u")
        await gw.store.upsert_devices([Device("udid-u", "ios", "/acme", "9.3.5", True)])
        async with gw.device(identity) as client:
            phone = AppleDevice(client, "udid-u", b"\x10")

            async def install() -> str:
                r = await admin.post(
                    "/api/v1/devices/udid-u/commands",
                    json={"apple_app": {"action": "install_store_app", "itunes_store_id": 1}},
                )
                assert r.status_code == 202, r.text
                command = await phone.next_command()
                assert command is not None
                uuid = command["CommandUUID"]
                answer = {"Identifier": "com.example.app", "State": "Installing"}
                assert await phone.next_command("Acknowledged", CommandUUID=uuid, **answer) is None
                r = await admin.get("/api/v1/devices/udid-u")
                expected: str = r.json()["facts"]["app_installs"]["com.example.app"]["expected"]
                return expected

            await phone.enroll(OSVersion="9.3.5", ProductName="iPhone8,1", BuildVersion="13G36")
            assert await install() == "prompt"  # supervised iOS 9: the user is asked
            # The device is updated to iOS 17 and enrolls again.
            await phone.enroll(OSVersion="17.5.1", ProductName="iPhone15,2", BuildVersion="21F90")
            r = await admin.get("/api/v1/devices/udid-u")
            shown = r.json()
            assert shown["os_version"] == "17.5.1"
            enrollment = shown["facts"]["apple_enrollment"]
            assert (enrollment["os_version"], enrollment["product"]) == ("17.5.1", "iPhone15,2")
            assert enrollment["build_version"] == "21F90"
            assert await install() == "silent"
            # An Authenticate without OSVersion keeps the one known.
            await phone.enroll(OSVersion=None)
            stored = await gw.store.get_device("udid-u")
            assert stored is not None
            assert stored.os_version == "17.5.1"


def _schema_warnings(caplog: pytest.LogCaptureFixture, device: str) -> list[str]:
    """The schema warnings the access log shows for the device's command reports."""
    found = []
    for record in caplog.records:
        if record.name != "mdmgate.access":
            continue
        entry = json.loads(record.getMessage())
        if entry.get("device") == device and entry.get("path") == "/mdm/apple/connect":
            found.append(entry.get("schema_warnings", ""))
    return found


async def test_schema_warnings_follow_the_os_version(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mdmgate.access")
    update = {
        "ProductKey": "iOSUpdate15G77",
        "HumanReadableName": "iOS 11.4.1",
        "ProductName": "iOS 11.4.1",
        "Version": "11.4.1",
        "Build": "15G77",
        "DownloadSize": 123456,
        "InstallSize": 654321,
        "RestartRequired": True,
    }
    profile = {
        "PayloadIdentifier": "com.example.wifi",
        "PayloadUUID": "6D8A5C4E-0000-4000-8000-000000000001",
        "PayloadVersion": 1,
        "PayloadContent": [
            {"PayloadType": "com.apple.wifi.managed", "PayloadVersion": 1, "PayloadIdentifier": "w"}
        ],
    }
    mac_update = {
        "ProductKey": "091-87654",
        "HumanReadableName": "Security Update 2018-004",
        "HumanReadableNameLocale": "en",
        "MetadataURL": "https://swscan.apple.com/x.dist",
        "Version": "10.13.6",
        "Build": "17G65",
        "DownloadSize": 1234,
        "AppIdentifiersToClose": [],
    }
    async with gateway(tmp_path, pki) as gw, gw.admin() as admin:

        async def exchange(phone: AppleDevice, request_type: str, **result: Any) -> None:
            uuid = await enqueue(admin, phone.udid, request_type)
            command = await phone.next_command()
            assert command is not None
            assert command["CommandUUID"] == uuid
            assert await phone.next_command("Acknowledged", CommandUUID=uuid, **result) is None

        for name, platform, about in (
            ("old", "ios", {"OSVersion": "11.4.1", "ProductName": "iPhone10,1"}),
            ("new", "ios", {"OSVersion": "17.5", "ProductName": "iPhone15,2"}),
            ("mac", "macos", {"OSVersion": "10.13.6", "ProductName": "iMac18,3"}),
        ):
            identity, _ = pki.device_identity(tmp_path, f"phone-{name}")
            await gw.store.upsert_devices([Device(f"udid-{name}", platform, "/acme", None, True)])
            async with gw.device(identity) as client:
                phone = AppleDevice(client, f"udid-{name}", name.encode())
                await phone.enroll(**about)
                if platform == "ios":
                    await exchange(phone, "AvailableOSUpdates", AvailableOSUpdates=[update])
                    await exchange(phone, "ProfileList", ProfileList=[profile])
                else:
                    await exchange(phone, "AvailableOSUpdates", AvailableOSUpdates=[mac_update])
                    scan = {"OSUpdateSettings": {"PreviousScanResult": 0, "CatalogURL": "x"}}
                    uuid = await enqueue(
                        admin, phone.udid, "DeviceInformation", Queries=["OSUpdateSettings"]
                    )
                    command = await phone.next_command()
                    assert command is not None
                    assert command["CommandUUID"] == uuid
                    answer = {"QueryResponses": scan}
                    assert (
                        await phone.next_command("Acknowledged", CommandUUID=uuid, **answer) is None
                    )
        # iOS 11 and macOS 10.13 predate IsSecurityResponse and PayloadContent's
        # PayloadUUID; macOS sends PreviousScanResult as an integer: nothing to report.
        # (Each exchange is an Idle that gets the command, then the report.)
        assert _schema_warnings(caplog, "udid-old") == ["", "", "", ""]
        assert _schema_warnings(caplog, "udid-mac") == ["", "", "", ""]
        # iOS 17.5 has both: their absence is reported.
        new = _schema_warnings(caplog, "udid-new")
        assert len(new) == 4
        assert "AvailableOSUpdates[0].IsSecurityResponse: required key" in new[1]
        assert "ProfileList[0].PayloadContent[0].PayloadUUID: required key" in new[3]


async def test_refusals_do_not_tell_enrolled_devices_from_unknown_ones(
    tmp_path: Path, pki: Pki
) -> None:
    async with gateway(tmp_path, pki) as gw:
        mine, _ = pki.device_identity(tmp_path, "phone-e")
        stranger, _ = pki.device_identity(tmp_path, "phone-s")
        await register(gw, "udid-enrolled")
        await register(gw, "udid-registered")  # registered, not enrolled yet
        async with gw.device(mine) as client:
            await AppleDevice(client, "udid-enrolled", b"\x11").enroll()
        token = {"MessageType": "TokenUpdate", "Topic": TOPIC, "Token": b"t", "PushMagic": "m"}
        refusals: dict[str, httpx.Response] = {}
        async with gw.device(stranger) as other, gw.anonymous() as nobody:
            for who, client in (("stranger", other), ("no certificate", nobody)):
                for udid in ("udid-enrolled", "udid-unknown", "udid-registered"):
                    device = AppleDevice(client, udid, b"\x12")
                    if not (who == "stranger" and udid == "udid-registered"):
                        # (a registered device's first Authenticate binds its certificate)
                        refusals[f"{who} Authenticate {udid}"] = await device.authenticate()
                    refusals[f"{who} TokenUpdate {udid}"] = await device.checkin(token)
                    refusals[f"{who} CheckOut {udid}"] = await device.checkin(
                        {"MessageType": "CheckOut", "Topic": TOPIC}
                    )
                    refusals[f"{who} Idle {udid}"] = await device.connect("Idle")

        def seen(r: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
            headers = [(k, v) for k, v in r.headers.multi_items() if k.lower() != "date"]
            return r.status_code, r.content, headers

        reference = seen(refusals["stranger TokenUpdate udid-unknown"])
        assert reference[0] == 403  # never 401: that can make a device unenroll
        assert b"identity" in reference[1]
        different = {name: seen(r) for name, r in refusals.items() if seen(r) != reference}
        assert different == {}
        # Nothing changed for the enrolled device.
        stored = await gw.store.get_device("udid-enrolled")
        assert stored is not None
        assert stored.facts["apple_enrollment"]["enrolled"] is True


async def test_data_with_extra_base64_padding_from_a_device(tmp_path: Path, pki: Pki) -> None:
    async with gateway(tmp_path, pki) as gw:
        identity, _ = pki.device_identity(tmp_path, "phone-p")
        await register(gw, "udid-p")
        async with gw.device(identity) as client:
            phone = AppleDevice(client, "udid-p", b"")
            assert (await phone.authenticate()).status_code == 200
            # A TokenUpdate whose data values carry more padding than base64 needs, and
            # padding split by line breaks: plistlib reads it, so must the gateway.
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict>'
                "<key>MessageType</key><string>TokenUpdate</string>"
                f"<key>Topic</key><string>{TOPIC}</string>"
                "<key>UDID</key><string>udid-p</string>"
                "<key>PushMagic</key><string>magic-p</string>"
                "<key>Token</key><data>obLD1A====</data>"
                "<key>UnlockToken</key><data>\n\tdW5sb2Nr\n\t=\n\t=\n</data>"
                "</dict></plist>"
            ).encode()
            assert plistlib.loads(body)["Token"] == bytes.fromhex("a1b2c3d4")
            r = await client.put(
                "/mdm/apple/checkin", content=body, headers={"content-type": CHECKIN}
            )
            assert r.status_code == 200, r.text
            device = await gw.store.get_device("udid-p")
            assert device is not None
            assert device.facts["apns"]["token"] == "a1b2c3d4"
            assert base64.b64decode(device.auth["unlock_token"]) == b"unlock"
