"""Windows clients as they really behave (issue 14), end to end: the emulator in
windows_emulator.py runs whole OMA-DM sessions against the real server over real sockets.

Each test is one reported client behaviour: vendor nodes in the DevInfo Replace, a client
answering with non-standard status codes, a 418 retry and a later command for the same
node, a session cut off and opened again with the same SessionID, and a client that resends
only when its commands are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_windows_e2e import AUTH, gateway, get, header_status
from tests.windows_emulator import WindowsDevice

NODE = "./Vendor/MSFT/Test/Node"
SWV = {"./DevDetail/SwV": ("chr", "10.0.26100")}


def raw(name: str, uri: str, data: str | None = None) -> dict[str, str]:
    """A raw Windows command on one node."""
    body = f"<Data>{data}</Data>" if data is not None else ""
    return {
        "raw": f"<{name}><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target>"
        f"{body}</Item></{name}>"
    }


# --- item 1: DevInfo with vendor nodes in the same Replace ------------------------------------


async def test_devinfo_and_vendor_nodes_in_one_replace(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        hwdevid = "./Vendor/MSFT/DMClient/HWDevID"
        device = WindowsDevice(
            "win-dell",
            extra_replace_items={hwdevid: "A4B2C1D9E8F7", "./DevDetail/SwV": "10.0.22631"},
        )
        await gw.enroll(device)
        log = await device.session(client)
        reply = log[0].reply
        assert reply is not None
        assert header_status(reply) == "212"
        assert all(c.data == "200" for c in reply.commands[1:] if c.name == "Status")
        facts = (await client.get("/api/v1/devices/win-dell", headers=AUTH)).json()["facts"]
        assert facts["devinfo"]["Mod"] == "Surface Laptop"
        assert facts["devinfo"]["DevId"] == "win-dell"
        assert facts["nodes"] == {hwdevid: "A4B2C1D9E8F7", "./DevDetail/SwV": "10.0.22631"}
        # A later check-in merges: a changed value replaces the old one, the others stay.
        device.extra_replace_items = {hwdevid: "FFFF0000"}
        await device.session(client)
        facts = (await client.get("/api/v1/devices/win-dell", headers=AUTH)).json()["facts"]
        assert facts["nodes"] == {hwdevid: "FFFF0000", "./DevDetail/SwV": "10.0.22631"}


# --- item 2: only defined success codes are success -------------------------------------------


# 214 cancelled, 215 not executed, 216 rolled back: 2xx codes saying the command did not run.
@pytest.mark.parametrize("code", ["0", "101", "OK", "214", "215", "216", "300", "418"])
async def test_non_standard_status_is_an_error_with_its_code(tmp_path: Path, code: str) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-zero", command_status=code)
        await gw.enroll(device)
        ids = [
            await gw.command(client, "win-zero", get("./DevDetail/SwV")),
            await gw.command(client, "win-zero", raw("Replace", NODE, "1")),
        ]
        await device.session(client)
        assert [name for name, _ in device.received] == ["Get", "Replace"]
        for command_id in ids:
            assert await gw.state(client, command_id) == ("error", code)


# --- item 3: a 418 retry keeps the device's order ---------------------------------------------


async def test_418_retry_runs_before_a_later_delete_of_the_node(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-418", tree={NODE: ("chr", "old"), **SWV})
        await gw.enroll(device)
        add = await gw.command(client, "win-418", raw("Add", NODE, "new"))
        other = await gw.command(client, "win-418", get("./DevDetail/SwV"))
        delete = await gw.command(client, "win-418", raw("Delete", NODE))
        await device.session(client)
        # The Add exists already (418): its Replace runs before the Delete queued later.
        assert [c for c in device.received if c[1] == NODE] == [
            ("Add", NODE),
            ("Replace", NODE),
            ("Delete", NODE),
        ]
        assert NODE not in device.tree
        assert await gw.state(client, add) == ("acknowledged", "200")
        assert await gw.state(client, other) == ("acknowledged", "200")
        assert await gw.state(client, delete) == ("acknowledged", "200")


# --- item 4: a stale session does not lock the device out -------------------------------------


async def test_a_cut_session_is_replaced_by_a_new_one_with_the_same_session_id(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-cut", tree=dict(SWV))
        await gw.enroll(device)
        command_id = await gw.command(client, "win-cut", get("./DevDetail/SwV"))
        log = await device.session(client, session_id="5", cut_after=1)
        reply = log[0].reply
        assert reply is not None
        assert [c.name for c in reply.commands if c.name != "Status"] == ["Get"]
        assert await gw.windows.session_open("win-cut", "5")
        # The device starts over with the same SessionID: a new session, the Get again.
        log = await device.session(client, session_id="5")
        assert log[0].status == 200, log[0].text
        assert log[0].reply is not None
        assert header_status(log[0].reply) == "212"
        assert device.received == [("Get", "./DevDetail/SwV")]
        assert await gw.state(client, command_id) == ("acknowledged", "200")
        assert not await gw.windows.session_open("win-cut", "5")


async def test_an_unauthenticated_first_message_leaves_the_live_session(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-live", tree=dict(SWV))
        await gw.enroll(device)
        command_id = await gw.command(client, "win-live", get("./DevDetail/SwV"))
        log = await device.session(client, session_id="9", cut_after=1)
        cut = log[0].reply
        assert cut is not None
        # Someone opens a session with the same SessionID and wrong credentials: refused.
        intruder = WindowsDevice(
            "win-live", username="win-live", secret="guess", nonce=device.nonce
        )
        log = await intruder.session(client, session_id="9")
        assert log[0].reply is not None
        assert header_status(log[0].reply) == "401"
        assert await gw.windows.session_open("win-live", "9")
        # The live session goes on: the device answers the Get in its message 2.
        exchange = await device.resume(client, "9", 2, cut)
        assert exchange.status == 200, exchange.text
        assert exchange.reply is not None
        assert header_status(exchange.reply) == "200"
        assert await gw.state(client, command_id) == ("acknowledged", "200")


# --- item 7: statuses for the commands of a refused message -----------------------------------


async def test_client_that_resends_only_refused_commands_authenticates(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-resend", tree=dict(SWV), resend_when_refused=True)
        await gw.enroll(device)
        device.nonce = b"stale"  # its first digest is refused, with a new nonce
        command_id = await gw.command(client, "win-resend", get("./DevDetail/SwV"))
        log = await device.session(client)
        first = log[0].reply
        assert first is not None
        assert header_status(first) == "401"
        sent = [c for c in log[0].sent.commands if c.name != "Status"]
        refused = [c for c in first.commands[1:] if c.name == "Status"]
        assert [(s.msg_ref, s.cmd_ref, s.cmd, s.data) for s in refused] == [
            ("1", c.cmd_id, c.name, "401") for c in sent
        ]
        assert [c.name for c in first.commands] == ["Status"] * (len(sent) + 1)
        # The client resent the same commands in message 2 of the session: authenticated.
        second = log[1].reply
        assert second is not None
        assert log[1].sent.header.msg_id == "2"
        assert header_status(second) == "212"
        assert device.received == [("Get", "./DevDetail/SwV")]
        assert await gw.state(client, command_id) == ("acknowledged", "200")
        facts = (await client.get("/api/v1/devices/win-resend", headers=AUTH)).json()["facts"]
        assert facts["devinfo"]["Mod"] == "Surface Laptop"


# --- scale-out: a session's bookkeeping is not announced to every node's index -------------


async def test_a_repeated_check_in_writes_nothing_to_the_change_feed(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-quiet")
        await gw.enroll(device)
        await device.session(client)
        before = await gw.store.last_change()
        # The same DevInfo again and a rotated MD5 nonce: nothing an index reads changed.
        log = await device.session(client)
        assert header_status(log[0].reply) == "212"
        assert await gw.store.last_change() == before
