"""The Windows endpoint's policy, called directly: certificate auth, refusals, overload,
and a bad message in the middle of a session."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import pytest
import trio
import trio.testing

from mdmgate import syncml
from mdmgate.events import FACT_LAST_SEEN
from mdmgate.server.admin import AdminApi
from mdmgate.server.types import Request, Response
from mdmgate.storage import Delivery, Device, FactsMerge, MessageContext
from mdmgate.storage.memory import MemoryStore
from mdmgate.syncml import Command, Header, Item, Message
from mdmgate.windows import auth
from mdmgate.windows.service import FACT_NONCE, WindowsService

XML = "application/vnd.syncml.dm+xml"
CERT = b"0\x82\x01\x0a fake DER certificate of win-cert"


def package(device_id: str, msg_id: str = "1", session_id: str = "1A") -> bytes:
    header = Header(session_id=session_id, msg_id=msg_id, target="https://gw", source=device_id)
    commands = [
        Command("Alert", cmd_id="1", data="1201"),
        Command("Replace", cmd_id="2", items=[Item(source="./DevInfo/Mod", data="Surface")]),
    ]
    return Message(header, commands, True).encode()


def post(body: bytes, *, cert: bytes | None = None, kind: str = XML) -> Request:
    return Request(
        "POST",
        "/ManagementServer/MDM.svc",
        "",
        (("content-type", kind),),
        body,
        "1.1",
        "127.0.0.1:5000",
        cert,
    )


def header_status(response: Response) -> str:
    assert response.status == 200, response.body
    first = syncml.decode(response.body).commands[0]
    assert first.cmd == "SyncHdr"
    return str(first.data)


@pytest.fixture
async def store() -> MemoryStore:
    s = MemoryStore()
    fingerprint = hashlib.sha256(CERT).hexdigest()
    await s.upsert_devices(
        [
            Device("win-cert", "windows", auth={"method": "certificate", "sha256": fingerprint}),
            Device("win-bare", "windows"),
        ]
    )
    return s


async def test_certificate_bound_to_the_device(store: MemoryStore) -> None:
    service = WindowsService(store)
    assert header_status(await service(post(package("win-cert"), cert=CERT))) == "212"
    assert (
        header_status(await service(post(package("win-cert", session_id="2"), cert=b"x"))) == "403"
    )
    assert header_status(await service(post(package("win-cert", session_id="3")))) == "403"


async def test_no_credentials_configured_is_refused_outside_dev(store: MemoryStore) -> None:
    assert header_status(await WindowsService(store)(post(package("win-bare")))) == "403"
    assert header_status(await WindowsService(store, dev=True)(post(package("win-bare")))) == "200"


async def test_replayed_message_is_400_and_the_session_goes_on(store: MemoryStore) -> None:
    service = WindowsService(store)
    await store.enqueue(
        "c1",
        "syncml",
        b"<Get><CmdID>1</CmdID><Item><Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>",
        ["win-cert"],
    )
    first = await service(post(package("win-cert"), cert=CERT))
    reply = syncml.decode(first.body)
    get = next(c for c in reply.commands if c.name == "Get")
    # Message 1 again, without the Alert 1201 that would open a new session in its place.
    again = Message(
        Header(session_id="1A", msg_id="1", target="https://gw", source="win-cert"),
        [Command("Replace", cmd_id="1", items=[Item(source="./DevInfo/Mod", data="Surface")])],
        True,
    )
    replay = await service(post(again.encode(), cert=CERT))
    assert replay.status == 400
    assert b"MsgID" in replay.body
    # The session is intact: the device answers the Get in message 2 and the session ends.
    header = Header(session_id="1A", msg_id="2", target="https://gw", source="win-cert")
    answer = Message(
        header,
        [
            Command("Status", cmd_id="1", msg_ref="1", cmd_ref="0", cmd="SyncHdr", data="200"),
            Command("Status", cmd_id="2", msg_ref="1", cmd_ref=get.cmd_id, cmd="Get", data="200"),
            Command(
                "Results",
                cmd_id="3",
                msg_ref="1",
                cmd_ref=get.cmd_id,
                items=[Item(source="./DevDetail/SwV", data="10.0.26100")],
            ),
        ],
        True,
    )
    last = await service(post(answer.encode(), cert=CERT))
    assert header_status(last) == "200"
    assert not await service.session_open("win-cert", "1A")
    status = await store.command_status("c1")
    assert status is not None
    (delivery,) = status.deliveries
    assert delivery.state == "acknowledged"
    assert delivery.result is not None
    assert json.loads(delivery.result)[0]["data"] == "10.0.26100"


class WriteLog(MemoryStore):
    """Records the writes the service asks for, by name, with the facts they carry."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.takes = 0

    async def merge_facts(self, device_id: str, facts: Any, **kwargs: Any) -> bool:
        self.writes.append(("merge_facts", dict(facts)))
        return await super().merge_facts(device_id, facts, **kwargs)

    async def take(self, *args: Any, **kwargs: Any) -> list[Delivery]:
        self.takes += 1
        return await super().take(*args, **kwargs)

    async def save_session(self, *args: Any, facts: FactsMerge | None = None, **kwargs: Any) -> int:
        self.writes.append(("save_session", dict(facts.facts) if facts is not None else {}))
        return await super().save_session(*args, facts=facts, **kwargs)


def signed(device_id: str, session_id: str, nonce: bytes, secret: str = "s3cret") -> bytes:
    header = Header(
        session_id=session_id,
        msg_id="1",
        target="https://gw",
        source=device_id,
        cred_meta={"Type": "syncml:auth-md5", "Format": "b64"},
        cred_data=auth.md5_digest("win-md5", secret, nonce),
    )
    commands = [Command("Alert", cmd_id="1", data="1201")]
    return Message(header, commands, True).encode()


async def test_the_nonce_rotation_is_written_with_the_session() -> None:
    """A message that goes on makes one write, its session with the rotated nonce; a
    refused one writes the nonce alone; either way the digest is never accepted twice."""
    store = WriteLog()
    account = {"method": "md5", "username": "win-md5", "secret": "s3cret"}
    first = b"first nonce"
    # Seen a moment ago: no check-in is due, whose fact would be a write of its own.
    facts = {FACT_NONCE: base64.b64encode(first).decode(), FACT_LAST_SEEN: int(time.time())}
    await store.upsert_devices([Device("win-md5", "windows", auth=account, facts=facts)])
    get = (
        b"<Get><CmdID>1</CmdID><Item><Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>"
    )
    await store.enqueue("c1", "syncml", get, ["win-md5"])
    service = WindowsService(store)
    store.writes.clear()

    async def nonce() -> str:
        device = await store.get_device("win-md5")
        assert device is not None
        return str(device.facts[FACT_NONCE])

    assert header_status(await service(post(signed("win-md5", "1", first)))) == "212"
    assert store.writes == [("save_session", {FACT_NONCE: await nonce()})]
    assert await nonce() != facts[FACT_NONCE]
    # The same digest again: refused, with a fresh nonce written on its own.
    store.writes.clear()
    rotated = await nonce()
    assert header_status(await service(post(signed("win-md5", "2", first)))) == "401"
    assert store.writes == [("merge_facts", {FACT_NONCE: await nonce()})]
    assert await nonce() != rotated
    # The nonce the refusal carried is the one that works now.
    current = base64.b64decode(await nonce())
    assert header_status(await service(post(signed("win-md5", "3", current)))) == "212"


async def test_a_check_in_with_nothing_queued_takes_nothing() -> None:
    """The first read says whether anything waits: a check-in that finds nothing queued
    and answers nothing makes no take (one store call fewer per check-in), and a command
    queued afterwards goes out in the next session."""
    store = WriteLog()
    await store.upsert_devices([Device("win-dev", "windows")])
    service = WindowsService(store, dev=True)
    assert header_status(await service(post(package("win-dev", session_id="1")))) == "200"
    assert store.takes == 0
    get = (
        b"<Get><CmdID>1</CmdID><Item><Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>"
    )
    await store.enqueue("c1", "syncml", get, ["win-dev"])
    reply = syncml.decode((await service(post(package("win-dev", session_id="2")))).body)
    assert store.takes == 1
    assert [c.name for c in reply.commands if c.name != "Status"] == ["Get"]


class HeldStore(MemoryStore):
    """Holds the next message's first read (``message_context``) once ``gate`` is set,
    until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: trio.Event | None = None
        self.entered = trio.Event()

    async def message_context(self, device_id: str, kind: str, key: str) -> MessageContext:
        gate, self.gate = self.gate, None
        if gate is not None:
            self.entered.set()
            await gate.wait()
        return await super().message_context(device_id, kind, key)


async def test_too_many_messages_in_flight_is_429_for_new_sessions(
    store: MemoryStore, nursery: trio.Nursery
) -> None:
    held = HeldStore()
    device = await store.get_device("win-cert")
    assert device is not None
    await held.upsert_devices([device])
    await held.enqueue(
        "c1",
        "syncml",
        b"<Get><CmdID>1</CmdID><Item><Target><LocURI>./A</LocURI></Target></Item></Get>",
        ["win-cert"],
    )
    service = WindowsService(held, max_sessions=1)
    assert header_status(await service(post(package("win-cert"), cert=CERT))) == "212"
    # Waiting for the Get's status: open in the store, no message in flight.
    assert await service.session_open("win-cert", "1A")
    assert service.open_sessions == 0
    gate = held.gate = trio.Event()
    done: list[Response] = []
    finished = trio.Event()

    async def slow() -> None:
        done.append(await service(post(package("win-cert", session_id="2"), cert=CERT)))
        finished.set()

    nursery.start_soon(slow)
    await held.entered.wait()
    assert service.open_sessions == 1
    # The node is busy: a new session is told to come back later...
    busy = await service(post(package("win-cert", session_id="other"), cert=CERT))
    assert busy.status == 429
    assert dict(busy.headers)["retry-after"] == "5"
    # ... and a message of an open session is still served.
    header = Header(session_id="1A", msg_id="2", target="https://gw", source="win-cert")
    status = Command("Status", cmd_id="1", msg_ref="1", cmd_ref="0", cmd="SyncHdr", data="200")
    assert header_status(await service(post(Message(header, [status], True).encode(), cert=CERT)))
    gate.set()
    await finished.wait()
    assert header_status(done[0]) == "212"
    assert service.open_sessions == 0


async def test_windows_app_refusals_name_the_field(store: MemoryStore) -> None:
    api = AdminApi(store, "t")

    async def enqueue(device: str, body: object) -> tuple[int, dict[str, object]]:
        request = Request(
            "POST",
            f"/api/v1/devices/{device}/commands",
            "",
            (("authorization", "Bearer t"), ("content-type", "application/json")),
            json.dumps(body).encode(),
            "1.1",
            "127.0.0.1:5000",
        )
        response = await api(request)
        return response.status, json.loads(response.body)

    status, error = await enqueue(
        "win-cert",
        {
            "windows_app": {
                "action": "store_install",
                "scope": "device",
                "package_family": "Contoso.Tasks_8wekyb3d8bbwe",
                "product_id": "9WZDNCRFJ3TJ",
                "skuid": "0016",
            }
        },
    )
    assert status == 422
    assert error["field"] == "$.windows_app.scope"
    status, error = await enqueue(
        "win-cert",
        {
            "windows_app": {
                "action": "remove_provisioned",
                "package_family": "Contoso.Tasks_8wekyb3d8bbwe",
            }
        },
    )
    assert status == 422
    assert "IsProvisioned" in str(error["error"])
    await store.upsert_devices([Device("mac-1", "macos")])
    status, error = await enqueue(
        "mac-1", {"windows_app": {"action": "update_scan", "scope": "device"}}
    )
    assert status == 422
    assert error["field"] == "$.windows_app"


async def test_the_messages_of_one_session_take_turns() -> None:
    """One message of a session at a time, in order of arrival; one that stops waiting
    (cancelled) neither takes nor skips anyone's turn, and nothing stays behind."""
    service = WindowsService(MemoryStore())
    entered: list[int] = []
    inside = most = 0
    release = {i: trio.Event() for i in range(1, 5)}

    async def message(i: int, scope: trio.CancelScope | None = None) -> None:
        nonlocal inside, most
        with scope or trio.CancelScope():
            async with service._turn("dev/1"):
                entered.append(i)
                inside += 1
                most = max(most, inside)
                await release[i].wait()
                inside -= 1

    waiter = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(message, 1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(message, 2)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(message, 3, waiter)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(message, 4)
        await trio.testing.wait_all_tasks_blocked()
        waiter.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert entered == [1]
        async with service._turn("dev/2"):  # another session is not held up
            pass
        for i in (1, 2, 4):
            release[i].set()
            await trio.testing.wait_all_tasks_blocked()
    assert entered == [1, 2, 4]
    assert most == 1
    assert service._locks == {}
