"""Protocol state that no process holds alone: every message of a Windows OMA-DM session, and
every report of an Apple device, goes to the next of two gateway nodes (service instances
with their own servers, ports and store connections) sharing one database, as behind a load
balancer without affinity. Then the edges of keeping sessions in the store: one message
answered by two nodes at once, a stale session replaced on another node, expiry, state this
version cannot read, the end of an Apple exchange."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from mdmgate import syncml
from mdmgate.apple.service import EXCHANGE_KIND, AppleService
from mdmgate.server.admin import AdminApi
from mdmgate.server.app import build_handler
from mdmgate.server.http import Limits, Server, listener_port, open_listeners, server_ssl_context
from mdmgate.server.metrics import Metrics
from mdmgate.storage import Device, Store
from mdmgate.storage.memory import MemoryStore
from mdmgate.syncml import Command, Header, Item, Message
from mdmgate.windows.service import FACT_NONCE, SESSION_KIND, WindowsService, session_key
from tests.stores import BACKENDS, open_backend, open_peer
from tests.test_apple_e2e import TOPIC, AppleDevice, Pki
from tests.test_windows_service import CERT, header_status, package, post
from tests.windows_emulator import EMM, WindowsDevice

TOKEN = "across-nodes-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PASSWORD = "correct horse"
NONCE = b"enrolment-nonce!"
SERVER_ID = "mdmgate.example"
SERVER_SECRET = "server battery staple"
PFN = "Contoso.Tasks_8wekyb3d8bbwe"


class Alternating(httpx.AsyncBaseTransport):
    """Sends each request to the next node in turn: a balancer without affinity, and a
    device that opens a new connection for every message."""

    def __init__(self, ports: list[int], **options: Any) -> None:
        self.ports = ports
        self.sent: list[int] = []
        self._inner = httpx.AsyncHTTPTransport(**options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        port = self.ports[len(self.sent) % len(self.ports)]
        self.sent.append(port)
        request.url = request.url.copy_with(port=port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca, cert, key, ca_file)


@dataclass
class Node:
    store: Store
    port: int
    windows: WindowsService | None = None
    apple: AppleService | None = None


@asynccontextmanager
async def nodes(
    backend: str, tmp_path: Path, *, pki: Pki | None = None, **windows: Any
) -> AsyncIterator[list[Node]]:
    """Two gateway nodes on one database: Windows, or Apple over TLS when ``pki`` is given."""
    first = await open_backend(backend, tmp_path)
    second = first if backend == "memory" else await open_peer(backend, tmp_path)
    found: list[Node] = []
    try:
        async with trio.open_nursery() as nursery:
            for store in (first, second):
                metrics = Metrics()
                node = Node(store, 0)
                context = None
                if pki is None:
                    node.windows = WindowsService(store, **windows)
                    handler = build_handler(store, AdminApi(store, TOKEN), metrics, node.windows)
                else:
                    node.apple = AppleService(store)
                    admin = AdminApi(store, TOKEN)
                    handler = build_handler(store, admin, metrics, None, node.apple)
                    context = server_ssl_context(pki.server_cert, pki.server_key, pki.ca_file)
                listeners = await open_listeners("127.0.0.1", 0, context)
                await nursery.start(Server(handler, Limits(), metrics=metrics).run, listeners)
                node.port = listener_port(listeners[0])
                found.append(node)
            try:
                yield found
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await first.aclose()
        if second is not first:
            await second.aclose()


# --- Windows: every message of a session to the other node -----------------------------------


def raw(name: str, uri: str, data: str | None = None) -> dict[str, str]:
    body = f"<Data>{data}</Data>" if data is not None else ""
    return {
        "raw": f"<{name}><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target>"
        f"{body}</Item></{name}>"
    }


HOSTED_INSTALL = {
    "windows_app": {
        "action": "hosted_install",
        "scope": "user",
        "package_family": PFN,
        "package_uri": "https://apps.example/tasks.appx",
    }
}


async def windows_device(
    store: Store, admin: httpx.AsyncClient, index: int
) -> tuple[WindowsDevice, dict[str, str]]:
    """A registered device with its commands queued: Gets, an Add of a node it has (418,
    retried as a Replace), a Replace, a hosted install (202, completed by Alert 1226 in the
    next session). Odd devices speak WBXML and require the server to authenticate. Every
    third device gets a Get whose Results come in chunks (a large object reassembled over
    messages); the others have a small MaxMsgSize, so the gateway's package spans messages.
    (Not both: the emulator sends its chunks without running what the gateway sends
    meanwhile.)"""
    name = f"win-{index}"
    big = "./Vendor/MSFT/Big/Value"
    tree = {
        "./DevDetail/SwV": ("chr", f"10.0.{26100 + index}"),
        big: ("chr", "".join(f"{i:04d}" for i in range(400))),
        "./Vendor/MSFT/Exists": ("node", ""),
    }
    for i in range(6):
        tree[f"./Vendor/MSFT/Leaf{i}"] = ("chr", f"leaf {i} of {name}")
    mutual = index % 2 == 1
    chunked = index % 3 == 0
    device = WindowsDevice(
        name,
        tree=tree,
        wbxml=mutual,
        max_msg_size=None if chunked else 2200,
        chunk_size=500,
        username=name,
        secret=PASSWORD,
        nonce=NONCE,
        server_username=SERVER_ID if mutual else None,
        server_secret=SERVER_SECRET if mutual else None,
        server_nonce=b"issued by the client",
    )
    auth = {"method": "md5", "username": name, "secret": PASSWORD}
    await store.upsert_devices([Device(name, "windows", "/acme", auth=auth)])
    await store.merge_facts(name, {FACT_NONCE: base64.b64encode(NONCE).decode()})
    bodies = {
        "swv": raw("Get", "./DevDetail/SwV"),
        **({"big": raw("Get", big)} if chunked else {}),
        "add": raw("Add", "./Vendor/MSFT/Exists"),
        "replace": raw("Replace", "./Vendor/MSFT/Setting", "on"),
        **{f"leaf{i}": raw("Get", f"./Vendor/MSFT/Leaf{i}") for i in range(6)},
        "install": HOSTED_INSTALL,
    }
    commands = {}
    for label, body in bodies.items():
        r = await admin.post(f"/api/v1/devices/{name}/commands", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        commands[label] = r.json()["command_id"]
    return device, commands


def broken(log: list[Any]) -> bool:
    """A session that went wrong: an HTTP error, or a refused SyncHdr."""
    for exchange in log:
        if exchange.status != 200 or exchange.reply is None:
            return True
        first = exchange.reply.commands[0]
        if first.data not in ("200", "212"):
            return True
    return False


@pytest.mark.parametrize("backend", BACKENDS)
async def test_windows_sessions_whose_every_message_goes_to_the_other_node(
    backend: str, tmp_path: Path
) -> None:
    async with (
        nodes(backend, tmp_path, server_username=SERVER_ID, server_secret=SERVER_SECRET) as two,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{two[0].port}") as admin,
    ):
        devices = [await windows_device(two[0].store, admin, i) for i in range(10)]
        logs: dict[str, list[list[Any]]] = {}
        ports: dict[str, list[int]] = {}

        async def run(device: WindowsDevice) -> None:
            transport = Alternating([n.port for n in two])
            async with httpx.AsyncClient(
                base_url="http://127.0.0.1", transport=transport, timeout=30
            ) as client:
                # Two sessions: the second carries the install's Alert 1226.
                logs[device.device_id] = [await device.session(client) for _ in range(2)]
            ports[device.device_id] = transport.sent

        async with trio.open_nursery() as nursery:
            for device, _ in devices:
                nursery.start_soon(run, device)

        sessions = [log for device_logs in logs.values() for log in device_logs]
        assert len(sessions) == 20
        assert [log for log in sessions if broken(log)] == []
        for device, commands in devices:
            name = device.device_id
            sent = ports[name]
            assert len(sent) >= 3
            assert all(a != b for a, b in itertools.pairwise(sent))
            # Every command once (the 418'd Add once more, as a Replace), none offered again.
            user_emm = EMM.replace("./Device", "./User")
            install = f"{user_emm}/AppInstallation/{PFN}"
            assert Counter(device.received) == Counter(
                [
                    ("Get", "./DevDetail/SwV"),
                    *([("Get", "./Vendor/MSFT/Big/Value")] if "big" in commands else []),
                    ("Add", "./Vendor/MSFT/Exists"),
                    ("Replace", "./Vendor/MSFT/Exists"),
                    ("Replace", "./Vendor/MSFT/Setting"),
                    *(("Get", f"./Vendor/MSFT/Leaf{i}") for i in range(6)),
                    ("Add", install),
                    ("Exec", f"{install}/HostedInstall"),
                ]
            )
            if device.server_username is not None:
                # Refused (407) by the device until the gateway sent its Cred, then 212.
                assert device.server_auth_log[:2] == ["407", "212"]
                assert device.refused  # offered again in the same session, on the other node
            for label, command_id in commands.items():
                r = await admin.get(f"/api/v1/commands/{command_id}", headers=AUTH)
                (delivery,) = r.json()["deliveries"]
                expected = "0" if label == "install" else "200"
                assert (label, delivery["state"], delivery["status"]) == (
                    label,
                    "acknowledged",
                    expected,
                )
                assert delivery["offers"] == 1
                if label == "big":  # a large object reassembled across nodes
                    (item,) = json.loads(delivery["result"])
                    assert item["data"] == device.tree["./Vendor/MSFT/Big/Value"][1]
            for session_id in ("1", "2"):
                windows = two[0].windows
                assert windows is not None
                assert not await windows.session_open(name, session_id)


# --- Windows: races and edges of sessions in the store --------------------------------------


class Gated:
    """The shared store, as a node sees it; its next ``save_session`` waits for ``gate``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.gate: trio.Event | None = None
        self.waiting = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def save_session(self, *args: Any, **kwargs: Any) -> int:
        gate, self.gate = self.gate, None
        if gate is not None:
            self.waiting.set()
            await gate.wait()
        return int(await self._store.save_session(*args, **kwargs))


GET_A = b"<Get><CmdID>1</CmdID><Item><Target><LocURI>./A</LocURI></Target></Item></Get>"
GET_B = b"<Get><CmdID>1</CmdID><Item><Target><LocURI>./B</LocURI></Target></Item></Get>"


async def cert_store() -> MemoryStore:
    store = MemoryStore()
    auth = {"method": "certificate", "sha256": hashlib.sha256(CERT).hexdigest()}
    await store.upsert_devices([Device("win-cert", "windows", auth=auth)])
    return store


def answer(msg_id: str, reply: bytes, only: str | None = None, final: bool = True) -> bytes:
    """The device's answer to ``reply``: a Status (and Results) for each Get (only the one
    on ``only`` when given)."""
    decoded = syncml.decode(reply)
    ref = decoded.header.msg_id
    commands = [Command("Status", msg_ref=ref, cmd_ref="0", cmd="SyncHdr", data="200")]
    for c in decoded.commands:
        target = c.items[0].target if c.items else None
        if c.name != "Get" or (only is not None and target != only):
            continue
        commands.append(Command("Status", msg_ref=ref, cmd_ref=c.cmd_id, cmd="Get", data="200"))
        item = Item(source=target, data=f"value of {target}")
        commands.append(Command("Results", msg_ref=ref, cmd_ref=c.cmd_id, items=[item]))
    for index, command in enumerate(commands, 1):
        command.cmd_id = str(index)
    header = Header(session_id="1A", msg_id=msg_id, target="https://gw", source="win-cert")
    return Message(header, commands, final).encode()


async def state(store: Store, command_id: str) -> tuple[str, int]:
    status = await store.command_status(command_id)
    assert status is not None
    (delivery,) = status.deliveries
    return delivery.state, delivery.offers


async def test_one_message_answered_by_two_nodes_at_once() -> None:
    store = await cert_store()
    await store.enqueue("a", "syncml", GET_A, ["win-cert"])
    await store.enqueue("b", "syncml", GET_B, ["win-cert"])
    gated = Gated(store)
    node_a, node_b = WindowsService(store), WindowsService(gated)  # type: ignore[arg-type]
    first = await node_a(post(package("win-cert"), cert=CERT))
    assert header_status(first) == "212"
    # The device answers the first Get; its package goes on (no Final), so the session
    # is saved, not ended.
    second = answer("2", first.body, only="./A", final=False)
    # Node B handles message 2 and is slow to save; meanwhile the device (or a balancer)
    # sends it again and node A answers it.
    gated.gate = gate = trio.Event()
    slow: list[Any] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def on_b() -> None:
                slow.append(await node_b(post(second, cert=CERT)))

            nursery.start_soon(on_b)
            await gated.waiting.wait()
            fast = await node_a(post(second, cert=CERT))
            assert header_status(fast) == "200"
            gate.set()
    # B's reply never goes out: the session is A's, and B answers as to a replay.
    (lost,) = slow
    assert lost.status == 400
    assert b"answered meanwhile" in lost.body
    # The session goes on from A's reply, on B: the answer to the second Get ends it.
    third = await node_b(post(answer("3", first.body, only="./B"), cert=CERT))
    assert header_status(third) == "200"
    assert await state(store, "a") == ("acknowledged", 1)
    assert await state(store, "b") == ("acknowledged", 1)
    assert not await node_a.session_open("win-cert", "1A")


async def test_a_stale_session_is_replaced_on_another_node() -> None:
    store = await cert_store()
    await store.enqueue("a", "syncml", GET_A, ["win-cert"])
    node_a, node_b = WindowsService(store), WindowsService(store)
    cut = await node_a(post(package("win-cert"), cert=CERT))
    assert [c.name for c in syncml.decode(cut.body).commands if c.name != "Status"] == ["Get"]
    stale = await store.load_session(SESSION_KIND, session_key("win-cert", "1A"))
    assert stale is not None
    # The device lost the reply and starts over, same SessionID, on the other node.
    again = await node_b(post(package("win-cert"), cert=CERT))
    assert header_status(again) == "212"
    replaced = await store.load_session(SESSION_KIND, session_key("win-cert", "1A"))
    assert replaced is not None
    assert replaced.rev == stale.rev + 1  # a stale writer's compare-and-set now fails
    assert await state(store, "a") == ("sent", 2)  # handed out again in the new session
    done = await node_a(post(answer("2", again.body), cert=CERT))
    assert header_status(done) == "200"
    assert await state(store, "a") == ("acknowledged", 2)
    assert not await node_b.session_open("win-cert", "1A")


async def test_a_session_past_its_ttl_is_not_continued() -> None:
    store = await cert_store()
    await store.enqueue("a", "syncml", GET_A, ["win-cert"])
    # Node A's clock is far behind: what it saves has expired for everyone else.
    node_a = WindowsService(store, clock=lambda: 1_000_000.0)
    node_b = WindowsService(store)
    first = await node_a(post(package("win-cert"), cert=CERT))
    assert header_status(first) == "212"
    assert not await node_b.session_open("win-cert", "1A")
    # Message 2 finds no session: a new one, which knows nothing of the Get's answer and
    # hands the Get out again (at least once).
    late = await node_b(post(answer("2", first.body), cert=CERT))
    assert [c.name for c in syncml.decode(late.body).commands if c.name != "Status"] == ["Get"]
    assert await state(store, "a") == ("sent", 2)
    assert await store.expire_sessions(1_000_000.0 + 601) == 0  # the old one is gone


async def test_state_this_version_cannot_read_starts_over() -> None:
    store = await cert_store()
    await store.enqueue("a", "syncml", GET_A, ["win-cert"])
    node = WindowsService(store)
    first = await node(post(package("win-cert"), cert=CERT))
    name = session_key("win-cert", "1A")
    stored = await store.load_session(SESSION_KIND, name)
    assert stored is not None
    await store.save_session(
        SESSION_KIND, name, b"\x92\x07\xa3new", expected_rev=stored.rev, expires_at=2e9
    )
    answered = await node(post(answer("2", first.body), cert=CERT))
    assert answered.status == 200  # a fresh session (the Get again), not a 500
    assert await state(store, "a") == ("sent", 2)


def test_session_keys_are_unambiguous() -> None:
    assert session_key("a:1", "2") != session_key("a", "1:2")
    assert session_key("dev", "1A") == "3:dev:1A"


# --- Apple: an Idle on one node, the answer on the other ------------------------------------


async def apple_device(
    admin: httpx.AsyncClient, store: Store, index: int
) -> tuple[str, dict[str, str]]:
    udid = f"udid-{index}"
    await store.upsert_devices([Device(udid, "ios", "/acme", "17.5", True)])
    bodies = {
        "info": {"apple": {"request_type": "DeviceInformation", "payload": {"Queries": ["UDID"]}}},
        "apps": {"apple": {"request_type": "InstalledApplicationList", "payload": {}}},
        "install": {"apple_app": {"action": "install_store_app", "itunes_store_id": 361309726}},
        "profiles": {"apple": {"request_type": "ProfileList", "payload": {}}},
    }
    commands = {}
    for label, body in bodies.items():
        r = await admin.post(f"/api/v1/devices/{udid}/commands", json=body)
        assert r.status_code == 202, r.text
        commands[label] = r.json()["command_id"]
    return udid, commands


APPS = [{"Identifier": "com.example.notes", "Name": "Notes", "ShortVersion": "3.2"}]


def answer_to(command: dict[str, Any]) -> dict[str, Any]:
    kind = command["Command"]["RequestType"]
    if kind == "InstalledApplicationList":
        return {"InstalledApplicationList": APPS}
    if kind == "InstallApplication":
        return {"Identifier": "com.example.app", "State": "Installing"}
    if kind == "DeviceInformation":
        return {"QueryResponses": {"UDID": "x"}}
    return {"ProfileList": []}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_apple_reports_alternating_nodes(backend: str, tmp_path: Path, pki: Pki) -> None:
    async with nodes(backend, tmp_path, pki=pki) as two:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        base = f"https://127.0.0.1:{two[0].port}"
        async with httpx.AsyncClient(base_url=base, verify=context, headers=AUTH) as admin:
            devices = [await apple_device(admin, two[0].store, i) for i in range(5)]
            received: dict[str, list[str]] = {}

            async def run(index: int, udid: str) -> None:
                identity, _ = pki.device_identity(tmp_path, f"phone-{index}")
                device_context = ssl.create_default_context(cafile=str(pki.ca_file))
                device_context.load_cert_chain(str(identity))
                transport = Alternating([n.port for n in two], verify=device_context)
                async with httpx.AsyncClient(base_url=base, transport=transport) as client:
                    phone = AppleDevice(client, udid, bytes([index + 1]) * 8)
                    await phone.enroll()  # Authenticate on one node, TokenUpdate on the other
                    got = received[udid] = []
                    command = await phone.next_command()  # Idle
                    assert command is not None
                    busy = command["CommandUUID"]
                    got.append(busy)
                    # Busy: NotNow, on the other node. The exchange is the same one there:
                    # the rest of the queue comes, never that command again.
                    command = await phone.next_command("NotNow", CommandUUID=busy)
                    for _ in range(2):  # this exchange, then the next Idle's
                        while command is not None:
                            got.append(command["CommandUUID"])
                            command = await phone.next_command(
                                "Acknowledged",
                                CommandUUID=command["CommandUUID"],
                                **answer_to(command),
                            )
                        if got.count(busy) == 1:
                            command = await phone.next_command()  # a new Idle: offered again
                            assert command is not None
                            assert command["CommandUUID"] == busy
                    assert len(transport.sent) == 9
                    assert all(a != b for a, b in itertools.pairwise(transport.sent))

            async with trio.open_nursery() as nursery:
                for index, (udid, _) in enumerate(devices):
                    nursery.start_soon(run, index, udid)

            for udid, commands in devices:
                got = received[udid]
                # Each command once, the one answered NotNow twice.
                assert Counter(got) == Counter([*commands.values(), got[0]])
                for command_id in commands.values():
                    r = await admin.get(f"/api/v1/commands/{command_id}")
                    (found,) = r.json()["deliveries"]
                    assert found["state"] == "acknowledged"
                # The answers were read with the bodies the other node handed out.
                r = await admin.get(f"/api/v1/devices/{udid}")
                assert {a["identifier"] for a in r.json()["apps"]} == {"com.example.notes"}
                installs = r.json()["facts"]["app_installs"]
                assert installs["com.example.app"]["state"] == "Installing"
                assert await two[1].store.load_session(EXCHANGE_KIND, udid) is not None


async def test_an_apple_exchange_ends_at_checkout_and_authenticate(
    tmp_path: Path, pki: Pki
) -> None:
    async with nodes("memory", tmp_path, pki=pki) as two:
        store = two[0].store
        identity, _ = pki.device_identity(tmp_path, "phone")
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        context.load_cert_chain(str(identity))
        transport = Alternating([n.port for n in two], verify=context)
        async with httpx.AsyncClient(base_url="https://127.0.0.1", transport=transport) as client:
            await store.upsert_devices([Device("udid-x", "ios", "/acme", "17.5", True)])
            phone = AppleDevice(client, "udid-x", b"\x01" * 8)
            await phone.enroll()
            assert await phone.next_command() is None
            exchange = await store.load_session(EXCHANGE_KIND, "udid-x")
            assert exchange is not None
            r = await phone.checkin({"MessageType": "CheckOut", "Topic": TOPIC})
            assert r.status_code == 200
            assert await store.load_session(EXCHANGE_KIND, "udid-x") is None
            assert await phone.next_command() is None
            assert await store.load_session(EXCHANGE_KIND, "udid-x") is not None
            await phone.enroll()
            assert await store.load_session(EXCHANGE_KIND, "udid-x") is None
