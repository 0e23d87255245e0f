"""Windows devices end to end: the emulator in windows_emulator.py runs whole OMA-DM sessions
against the real server (real sockets, HTTP/1.1 and HTTP/2) over the SQLite store, and the
admin API shows what came back."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mdmgate import syncml
from mdmgate.server.admin import AdminApi
from mdmgate.server.app import build_handler
from mdmgate.server.http import Limits, Server, listener_port, open_listeners
from mdmgate.server.metrics import Metrics
from mdmgate.storage import Device
from mdmgate.storage.sqlite import SQLiteStore
from mdmgate.windows.service import FACT_NONCE, WindowsService
from tests.windows_emulator import EMM, PATH, WBXML, XML, WindowsDevice

TOKEN = "windows-e2e-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PFN = "Contoso.Tasks_8wekyb3d8bbwe"
PASSWORD = "correct horse"


def get(uri: str) -> dict[str, str]:
    """A raw Windows command: Get one node."""
    return {
        "raw": f"<Get><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>"
    }


NONCE = b"enrolment-nonce!"
HOSTED_INSTALL = {
    "windows_app": {
        "action": "hosted_install",
        "scope": "user",
        "package_family": PFN,
        "package_uri": "https://apps.example/tasks.appx",
    }
}


class Gateway:
    def __init__(self, store: SQLiteStore, port: int, windows: WindowsService) -> None:
        self.store = store
        self.base = f"http://127.0.0.1:{port}"
        self.windows = windows

    def client(self, *, http2: bool = False) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, http1=not http2, http2=http2, timeout=30)

    async def enroll(self, device: WindowsDevice, *, method: str = "md5", **auth: str) -> None:
        """Registers the device with credentials (MD5 unless ``method`` says otherwise, more
        ``auth`` keys such as server credentials) and the nonce of its enrolment."""
        device.username, device.secret, device.nonce = device.device_id, PASSWORD, NONCE
        credentials = {"method": method, "username": device.device_id, "secret": PASSWORD}
        await self.store.upsert_devices(
            [Device(device.device_id, "windows", "/acme", auth={**credentials, **auth})]
        )
        await self.store.merge_facts(
            device.device_id, {FACT_NONCE: base64.b64encode(NONCE).decode()}
        )

    async def command(self, client: httpx.AsyncClient, device_id: str, body: dict[str, Any]) -> str:
        r = await client.post(f"/api/v1/devices/{device_id}/commands", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        command_id: str = r.json()["command_id"]
        return command_id

    async def state(self, client: httpx.AsyncClient, command_id: str) -> tuple[str, str | None]:
        r = await client.get(f"/api/v1/commands/{command_id}", headers=AUTH)
        assert r.status_code == 200, r.text
        (delivery,) = r.json()["deliveries"]
        return delivery["state"], delivery["status"]

    async def facts(self, client: httpx.AsyncClient, device_id: str) -> dict[str, Any]:
        r = await client.get(f"/api/v1/devices/{device_id}", headers=AUTH)
        assert r.status_code == 200, r.text
        facts: dict[str, Any] = r.json()["facts"]
        return facts


@asynccontextmanager
async def gateway(tmp_path: Path, *, dev: bool = False, **options: Any) -> AsyncIterator[Gateway]:
    """The real server on a free port over SQLite; ``options`` go to WindowsService."""
    store = await SQLiteStore.open(tmp_path / "mdmgate.db")
    metrics = Metrics()
    windows = WindowsService(store, dev=dev, **options)
    handler = build_handler(store, AdminApi(store, TOKEN, dev=dev), metrics, windows)
    listeners = await open_listeners("127.0.0.1", 0)
    server = Server(handler, Limits(), metrics=metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, listeners)
        try:
            yield Gateway(store, listener_port(listeners[0]), windows)
        finally:
            nursery.cancel_scope.cancel()
    await store.aclose()


def header_status(exchange_reply: syncml.Message | None) -> str | None:
    assert exchange_reply is not None
    first = exchange_reply.commands[0]
    assert first.name == "Status"
    assert first.cmd == "SyncHdr"
    return first.data if isinstance(first.data, str) else None


def inventory_tree(count: int, scope: str = "./Device") -> dict[str, tuple[str, str]]:
    tree: dict[str, tuple[str, str]] = {}
    base = f"{scope}/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement"
    for i in range(count):
        family = f"Contoso.App{i}_8wekyb3d8bbwe"
        full = f"Contoso.App{i}_1.{i}.0.0_x64__8wekyb3d8bbwe"
        node = f"{base}/AppStore/{family}/{full}"
        tree[f"{base}/AppStore/{family}"] = ("node", "")
        tree[node] = ("node", "")
        for leaf, value in (
            ("Name", f"Contoso App {i}"),
            ("Version", f"1.{i}.0.0"),
            ("Publisher", "CN=Contoso"),
            ("Architecture", "9"),
            ("InstallLocation", f"C:\\Program Files\\WindowsApps\\{full}"),
            ("IsFramework", "0"),
            ("IsBundle", "0"),
            ("InstallDate", "2026-11-01T10:00:00Z"),
            ("ResourceID", ""),
            ("PackageStatus", "0"),
            ("RequiresReinstall", "0"),
            ("Users", "S-1-5-21-1"),
            ("IsProvisioned", "0"),
        ):
            tree[f"{node}/{leaf}"] = ("chr", value)
    return tree


# --- check-in, authentication ----------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["HTTP/1.1", "HTTP/2"])
async def test_check_in_with_devinfo(tmp_path: Path, http2: bool) -> None:
    async with gateway(tmp_path) as gw, gw.client(http2=http2) as client:
        device = WindowsDevice("win-checkin")
        await gw.enroll(device)
        log = await device.session(client)
        assert len(log) == 1  # nothing queued: statuses only, the session ends at once
        reply = log[0].reply
        assert reply is not None
        assert reply.final
        assert header_status(reply) == "212"
        # Status for the SyncHdr first, then one per command in the order received.
        sent = [c.cmd_id for c in log[0].sent.commands]
        refs = [c.cmd_ref for c in reply.commands if c.name == "Status"]
        assert refs == ["0", *sent]
        assert all(c.data == "200" for c in reply.commands[1:] if c.name == "Status")
        r = await client.get("/api/v1/devices/win-checkin", headers=AUTH)
        facts = r.json()["facts"]
        assert facts["devinfo"]["Mod"] == "Surface Laptop"
        assert facts["devinfo"]["Lang"] == "it-IT"
        assert not await gw.windows.session_open("win-checkin", "1")


async def test_md5_challenge_then_wrong_password(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-md5")
        await gw.enroll(device)
        device.nonce = b"stale"  # the device lost its nonce: the server challenges it
        log = await device.session(client)
        assert log[-1].reply is not None
        assert header_status(log[-1].reply) == "401"
        assert device.nonce != b"stale"  # it learnt the NextNonce from the Chal
        log = await device.session(client)
        assert log[0].reply is not None
        assert header_status(log[0].reply) == "212"
        # A wrong password is refused, with a fresh challenge, and nothing is handed out.
        await gw.command(
            client,
            "win-md5",
            get("./DevDetail/SwV"),
        )
        device.secret = "wrong"
        log = await device.session(client)
        assert log[0].reply is not None
        assert header_status(log[0].reply) == "401"
        # Statuses only: the SyncHdr's and each command's, all 401 (nothing executed).
        assert {(c.name, c.data) for c in log[0].reply.commands} == {("Status", "401")}
        assert device.received == []


async def test_unknown_device_is_refused(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-ghost", username="x", secret="y")
        log = await device.session(client)
        assert log[0].reply is not None
        assert header_status(log[0].reply) == "403"
        r = await client.get("/api/v1/devices/win-ghost", headers=AUTH)
        assert r.status_code == 404


async def test_dev_mode_registers_unknown_devices(tmp_path: Path) -> None:
    async with gateway(tmp_path, dev=True) as gw, gw.client() as client:
        log = await WindowsDevice("win-new").session(client)
        assert log[0].reply is not None
        assert header_status(log[0].reply) == "200"
        r = await client.get("/api/v1/devices/win-new", headers=AUTH)
        assert r.json()["org"] == "/"


async def test_malformed_syncml_leaves_the_session_intact(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        for body, kind in (
            (b"<SyncML><SyncHdr>", XML),
            (b"<!DOCTYPE x [<!ENTITY a 'b'>]><SyncML/>", XML),
            (b"\x03\x01\x6a\x00\x6d\x6c\x71", WBXML),
            (b"<SyncML/>", "text/plain"),
            (b"<SyncML/>", WBXML),
        ):
            r = await client.post(PATH, content=body, headers={"content-type": kind})
            assert r.status_code in (400, 415), (body, r.status_code)
            assert r.text.strip()
        device = WindowsDevice("win-ok")
        await gw.enroll(device)
        log = await device.session(client)
        assert log[0].reply is not None
        assert header_status(log[0].reply) == "212"


# --- the app lifecycle -----------------------------------------------------------------------


async def test_inventory_round_trip(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client(http2=True) as client:
        device = WindowsDevice("win-inv", tree=inventory_tree(3))
        await gw.enroll(device)
        command_id = await gw.command(
            client, "win-inv", {"windows_app": {"action": "inventory", "scope": "device"}}
        )
        await device.session(client)
        assert await gw.state(client, command_id) == ("acknowledged", "200")
        r = await client.get("/api/v1/devices/win-inv", headers=AUTH)
        apps = {a["identifier"]: a for a in r.json()["apps"]}
        assert sorted(apps) == [f"Contoso.App{i}_8wekyb3d8bbwe" for i in range(3)]
        assert apps["Contoso.App2_8wekyb3d8bbwe"]["version"] == "1.2.0.0"
        assert apps["Contoso.App2_8wekyb3d8bbwe"]["source"] == "AppStore"


async def test_hosted_install_accepted_then_completed_by_alert(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-install")
        await gw.enroll(device)
        command_id = await gw.command(client, "win-install", HOSTED_INSTALL)
        await device.session(client)
        # Add before Exec, both in the first session; the Exec answered 202.
        assert [n for n, _ in device.received] == ["Add", "Exec"]
        user_emm = EMM.replace("./Device", "./User")
        assert device.received[1][1] == f"{user_emm}/AppInstallation/{PFN}/HostedInstall"
        assert await gw.state(client, command_id) == ("accepted", "202")
        # The next session does not hand it out again; its Alert 1226 completes it.
        await device.session(client)
        assert len(device.received) == 2
        assert await gw.state(client, command_id) == ("acknowledged", "0")


async def test_hosted_install_failure_with_last_error(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-fail", install_outcome={PFN: 0x80073CF3})
        await gw.enroll(device)
        command_id = await gw.command(client, "win-fail", HOSTED_INSTALL)
        await device.session(client)
        await device.session(client)
        state, status = await gw.state(client, command_id)
        assert state == "error"
        assert status == str(0x80073CF3)
        # The install-status query reports the failure with LastError as a fact.
        base = f"./User/Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation/{PFN}"
        device.tree.update(
            {
                base: ("node", ""),
                f"{base}/Status": ("int", "2"),
                f"{base}/LastError": ("int", str(0x80073CF3)),
                f"{base}/LastErrorDesc": ("chr", "Package failed updates"),
                f"{base}/ProgressStatus": ("int", "0"),
            }
        )
        await gw.command(
            client,
            "win-fail",
            {"windows_app": {"action": "install_status", "scope": "user", "package_family": PFN}},
        )
        await device.session(client)
        r = await client.get("/api/v1/devices/win-fail", headers=AUTH)
        install = r.json()["facts"]["app_installs"][PFN]
        assert install["status"] == "failed"
        assert install["last_error"] == 0x80073CF3
        assert install["last_error_desc"] == "Package failed updates"


async def test_uninstall(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        tree = inventory_tree(2, scope="./User")
        device = WindowsDevice("win-uninst", tree=tree)
        await gw.enroll(device)
        family = "Contoso.App1_8wekyb3d8bbwe"
        command_id = await gw.command(
            client,
            "win-uninst",
            {
                "windows_app": {
                    "action": "uninstall",
                    "scope": "user",
                    "classification": "AppStore",
                    "package_family": family,
                }
            },
        )
        await device.session(client)
        user_emm = EMM.replace("./Device", "./User")
        assert device.received == [("Delete", f"{user_emm}/AppManagement/AppStore/{family}")]
        assert await gw.state(client, command_id) == ("acknowledged", "200")
        assert not any(family in uri for uri in device.tree)


# --- session mechanics through the server ----------------------------------------------------


async def test_max_msg_size_with_200_queued_commands(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice(
            "win-small",
            max_msg_size=16384,
            tree={f"./Vendor/MSFT/Test/Node{i}": ("chr", f"value {i}") for i in range(200)},
        )
        await gw.enroll(device)
        ids = []
        for i in range(200):
            ids.append(
                await gw.command(
                    client,
                    "win-small",
                    get(f"./Vendor/MSFT/Test/Node{i}"),
                )
            )
        log = await device.session(client, limit=200)
        assert len(log) > 2  # split over several messages
        assert all(e.size <= 16384 for e in log)
        # Final only on the message that carries the last command (and the closing one).
        finals = [e.reply.final for e in log if e.reply is not None]
        with_commands = [
            e.reply.final
            for e in log
            if e.reply is not None and any(c.name == "Get" for c in e.reply.commands)
        ]
        assert with_commands[:-1] == [False] * (len(with_commands) - 1)
        assert finals[-1]
        targets = [t for n, t in device.received if n == "Get"]
        assert targets == [f"./Vendor/MSFT/Test/Node{i}" for i in range(200)]
        for command_id in ids[::37]:
            assert await gw.state(client, command_id) == ("acknowledged", "200")


async def test_one_megabyte_result_in_chunks(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        big = "".join(f"<Package id='{i:06d}'/>" for i in range(45_000))[: 1024 * 1024]
        device = WindowsDevice("win-big", tree={"./Vendor/MSFT/Big": ("chr", big)})
        await gw.enroll(device)
        command_id = await gw.command(
            client,
            "win-big",
            get("./Vendor/MSFT/Big"),
        )
        log = await device.session(client, limit=100)
        chunk_replies = [e.reply for e in log[1:-1] if e.reply is not None]
        assert len(chunk_replies) >= 15  # 1 MiB in 64 KiB chunks
        assert all(
            any(c.name == "Status" and c.data == "213" for c in reply.commands)
            for reply in chunk_replies
        )
        r = await client.get(f"/api/v1/commands/{command_id}", headers=AUTH)
        (delivery,) = r.json()["deliveries"]
        assert delivery["state"] == "acknowledged"
        assert big in delivery["result"]


async def test_one_megabyte_inventory_over_several_messages(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client(http2=True) as client:
        tree = inventory_tree(600)
        device = WindowsDevice("win-fleet", tree=tree)
        await gw.enroll(device)
        command_id = await gw.command(
            client, "win-fleet", {"windows_app": {"action": "inventory", "scope": "device"}}
        )
        log = await device.session(client, limit=200)
        sent = sum(len(e.sent.encode()) for e in log)
        assert sent > 1024 * 1024
        assert len(log) > 16  # the Results came in many messages of one package
        assert all(not e.sent.final for e in log[1:-2])
        assert await gw.state(client, command_id) == ("acknowledged", "200")
        r = await client.get("/api/v1/devices/win-fleet", headers=AUTH)
        apps = r.json()["apps"]
        assert len(apps) == 600
        assert {a["identifier"] for a in apps} == {
            f"Contoso.App{i}_8wekyb3d8bbwe" for i in range(600)
        }


async def test_wbxml_session(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client(http2=True) as client:
        device = WindowsDevice("win-wbxml", wbxml=True, tree=inventory_tree(2))
        await gw.enroll(device)
        command_id = await gw.command(
            client, "win-wbxml", {"windows_app": {"action": "inventory", "scope": "device"}}
        )
        log = await device.session(client)
        assert log[0].reply is not None
        assert header_status(log[0].reply) == "212"
        assert await gw.state(client, command_id) == ("acknowledged", "200")
