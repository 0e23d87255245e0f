"""The sans-IO OMA-DM session: statuses, placement under MaxMsgSize, answers, large objects,
aborts and the session's end, driven by device messages built with the SyncML codec."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdmgate import syncml
from mdmgate.syncml import Command, Header, Item, Message
from mdmgate.windows import auth
from mdmgate.windows.session import (
    CommandAnswered,
    CommandTooLarge,
    DeviceAlert,
    DeviceCommand,
    DeviceInfo,
    Event,
    Outgoing,
    PartStatus,
    Reply,
    Session,
    SessionAborted,
    SessionError,
    opens_session,
)

SERVER = "https://mdm.example.com/ManagementServer/MDM.svc"
DEVICE = "42C4F0B2A7D94A6E"
SESSION = "1A"


# ---------------------------------------------------------------- helpers


def device_message(
    msg_id: int,
    commands: Iterable[Command],
    *,
    final: bool = True,
    max_msg_size: int | None = None,
    session_id: str = SESSION,
    source: str = DEVICE,
    wbxml: bool = False,
) -> Message:
    """A device message as the session gets it: encoded by the codec, then decoded."""
    meta: dict[str, str | list[str]] | None = (
        {"MaxMsgSize": str(max_msg_size)} if max_msg_size is not None else None
    )
    header = Header(
        session_id=session_id, msg_id=str(msg_id), target=SERVER, source=source, meta=meta
    )
    numbered = list(commands)
    for index, command in enumerate(numbered, start=1):
        command.cmd_id = str(index)
    return syncml.decode(Message(header, numbered, final).encode(wbxml=wbxml))


def new_session(**kwargs: int) -> Session:
    return Session(device_id=DEVICE, session_id=SESSION, server_uri=SERVER, **kwargs)


def alert(code: int, *items: Item) -> Command:
    return Command("Alert", data=str(code), items=list(items))


def devinfo() -> Command:
    values = {"DevId": DEVICE, "Man": "Microsoft Corporation", "Mod": "Windows", "Lang": "en-US"}
    return Command(
        "Replace", items=[Item(source=f"./DevInfo/{k}", data=v) for k, v in values.items()]
    )


def get_body(uri: str) -> bytes:
    return (
        f"<Get><CmdID>9</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>".encode()
    )


def replace_body(uri: str, data: str) -> bytes:
    return (
        f"<Replace><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target>"
        f"<Data>{data}</Data></Item></Replace>"
    ).encode()


def server_commands(reply: Reply) -> list[Command]:
    return [c for c in syncml.decode(reply.data).commands if c.name != "Status"]


def statuses(reply: Reply) -> list[Command]:
    return [c for c in syncml.decode(reply.data).commands if c.name == "Status"]


def answers(
    reply: Reply, codes: dict[str, str] | None = None, results: dict[str, str] | None = None
) -> list[Command]:
    """What a device answers to a server message: a Status per command (200 unless ``codes``
    names the target LocURI), and Results for every successful Get."""
    message = syncml.decode(reply.data)
    out: list[Command] = [
        Command("Status", msg_ref=message.header.msg_id, cmd_ref="0", cmd="SyncHdr", data="200")
    ]
    for command in message.commands:
        if command.name == "Status":
            continue
        target = command.items[0].target if command.items else None
        code = (codes or {}).get(target or "", "200")
        out.append(
            Command(
                "Status",
                msg_ref=message.header.msg_id,
                cmd_ref=command.cmd_id,
                cmd=command.name,
                data=code,
            )
        )
        if command.name == "Get" and code == "200":
            value = (results or {}).get(target or "", f"value of {target}")
            out.append(
                Command(
                    "Results",
                    msg_ref=message.header.msg_id,
                    cmd_ref=command.cmd_id,
                    items=[Item(source=target, data=value)],
                )
            )
    return out


def answered(events: list[Event]) -> dict[str, CommandAnswered]:
    return {e.command_id: e for e in events if isinstance(e, CommandAnswered)}


def status_codes(reply: Reply) -> list[tuple[str, str, str]]:
    return [(s.cmd_ref or "", s.cmd or "", str(s.data)) for s in statuses(reply)]


def start(session: Session, **kwargs: int) -> tuple[list[Event], Reply]:
    """Package 1: Alert 1201 and DevInfo, Final."""
    events = session.receive(device_message(1, [alert(1201), devinfo()], **kwargs))
    return events, session.reply()


# ---------------------------------------------------------------- header and statuses


def test_header_and_statuses_in_received_order() -> None:
    session = new_session()
    message = device_message(
        3,
        [
            alert(1201),
            Command("Status", msg_ref="9", cmd_ref="4", cmd="Get", data="200"),
            devinfo(),
            Command("Results", msg_ref="9", cmd_ref="5", items=[Item(source="./X", data="1")]),
            alert(1224, Item(meta={"Type": "com.microsoft/MDM/LoginStatus"}, data="user")),
        ],
    )
    events = session.receive(message)
    reply = session.reply()
    decoded = syncml.decode(reply.data)
    header = decoded.header
    assert (header.ver_dtd, header.ver_proto) == ("1.2", "DM/1.2")
    assert (header.session_id, header.msg_id) == (SESSION, "1")
    assert (header.target, header.source) == (DEVICE, SERVER)
    first = decoded.commands[0]
    assert (first.name, first.cmd_ref, first.cmd, first.msg_ref) == ("Status", "0", "SyncHdr", "3")
    assert (first.target_refs, first.source_refs, first.data) == ([SERVER], [DEVICE], "200")
    # One Status per command in received order; the device's Status gets none, Results do.
    assert status_codes(reply)[1:] == [
        ("1", "Alert", "200"),
        ("3", "Replace", "200"),
        ("4", "Results", "200"),
        ("5", "Alert", "200"),
    ]
    assert all(s.msg_ref == "3" for s in statuses(reply))
    ids = [c.cmd_id for c in decoded.commands]
    assert len(set(ids)) == len(ids)
    assert "0" not in ids
    assert reply.final
    assert reply.ended  # statuses only, answering a Final message, nothing queued
    kinds = [type(e) for e in events]
    assert kinds == [DeviceAlert, DeviceInfo, DeviceCommand, DeviceAlert]
    assert isinstance(events[0], DeviceAlert)
    assert events[0].code == 1201
    assert isinstance(events[1], DeviceInfo)
    assert events[1].values["DevId"] == DEVICE
    assert events[1].values["Lang"] == "en-US"
    assert isinstance(events[3], DeviceAlert)
    assert events[3].code == 1224
    assert events[3].items[0].data == "user"


def test_msg_ids_count_up_and_session_id_is_copied_verbatim() -> None:
    session = Session(device_id=DEVICE, session_id="00fF", server_uri=SERVER)
    session.offer(Outgoing(f"c{i}", get_body(f"./Vendor/MSFT/N{i}")) for i in range(3))
    msg_ids = []
    session.receive(device_message(1, [alert(1201)], session_id="00fF", final=False))
    reply = session.reply()
    msg_ids.append(syncml.decode(reply.data).header.msg_id)
    for n in (2, 3):
        session.receive(device_message(n, answers(reply), session_id="00fF"))
        reply = session.reply()
        decoded = syncml.decode(reply.data)
        msg_ids.append(decoded.header.msg_id)
        assert decoded.header.session_id == "00fF"
    assert msg_ids == ["1", "2", "3"]


def test_status_for_chooses_device_command_statuses() -> None:
    session = new_session()
    seen: list[str] = []

    def status_for(command: Command) -> int:
        seen.append(command.name)
        return 405 if command.name == "Exec" else 200

    message = device_message(
        1,
        [alert(1201), Command("Exec", items=[Item(target="./Vendor/X")]), devinfo()],
    )
    events = session.receive(message, status_for=status_for)
    assert seen == ["Exec"]  # not for alerts or DevInfo
    assert [e.command.name for e in events if isinstance(e, DeviceCommand)] == ["Exec"]
    assert status_codes(session.reply())[1:] == [
        ("1", "Alert", "200"),
        ("2", "Exec", "405"),
        ("3", "Replace", "200"),
    ]


def test_lenient_device_commands() -> None:
    # Devices send commands without CmdID, and alerts with codes that are no numbers.
    raw = (
        b"<SyncML><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>"
        b"<SessionID>1A</SessionID><MsgID>1</MsgID><Target><LocURI>"
        + SERVER.encode()
        + b"</LocURI></Target><Source><LocURI>"
        + DEVICE.encode()
        + b"</LocURI></Source>"
        b"</SyncHdr><SyncBody><Alert><Data>1201</Data></Alert>"
        b"<Alert><CmdID>2</CmdID><Data>later</Data></Alert><Final/></SyncBody></SyncML>"
    )
    session = new_session()
    events = session.receive(syncml.decode(raw))
    assert events == [DeviceAlert(1201, ())]
    # No Status can refer to the first alert; the second is a bad request.
    assert status_codes(session.reply())[1:] == [("2", "Alert", "400")]


def test_devinfo_in_unsolicited_results() -> None:
    session = new_session()
    results = Command(
        "Results",
        msg_ref="1",
        cmd_ref="1",
        items=[
            Item(source="./DevInfo/Mod", data="Surface"),
            Item(source="./DevInfo/DmV", data="1.3"),
        ],
    )
    events = session.receive(device_message(1, [alert(1201), results]))
    assert events[1:] == [DeviceInfo({"Mod": "Surface", "DmV": "1.3"})]
    assert status_codes(session.reply())[2] == ("2", "Results", "200")


def test_devinfo_and_other_items_in_one_replace() -> None:
    # A Dell laptop on Windows 11: DMClient/HWDevID in the same Replace as ./DevInfo/*.
    session = new_session()
    hwdevid = Item(source="./Vendor/MSFT/DMClient/HWDevID", data="A4B2")
    replace = devinfo()
    replace.items = [*replace.items, hwdevid]
    add = Command("Add", items=[Item(source="./Vendor/MSFT/X", data="1")])
    events = session.receive(device_message(1, [alert(1201), replace, add]))
    info = [e for e in events if isinstance(e, DeviceInfo)]
    assert [sorted(e.values) for e in info] == [["DevId", "Lang", "Man", "Mod"]]
    others = [e.command for e in events if isinstance(e, DeviceCommand)]
    assert [(c.name, [i.source for i in c.items]) for c in others] == [
        ("Replace", ["./Vendor/MSFT/DMClient/HWDevID"]),
        ("Add", ["./Vendor/MSFT/X"]),
    ]
    assert status_codes(session.reply())[1:] == [
        ("1", "Alert", "200"),
        ("2", "Replace", "200"),
        ("3", "Add", "200"),
    ]


def test_opens_session() -> None:
    assert opens_session(device_message(1, [alert(1201), devinfo()]))
    assert opens_session(device_message(1, [alert(1200)]))
    assert not opens_session(device_message(2, [alert(1201)]))
    assert not opens_session(device_message(1, [devinfo()]))
    assert not opens_session(device_message(1, [alert(1224, Item(data="user"))]))


# ---------------------------------------------------------------- Final, 1222, the end


def test_message_without_final_gets_statuses_and_1222_only() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./DevDetail/SwV"))])
    session.receive(device_message(1, [alert(1201)], final=False))
    reply = session.reply()
    assert [c.name for c in syncml.decode(reply.data).commands] == ["Status", "Status", "Alert"]
    assert server_commands(reply)[0].data == "1222"
    assert (reply.final, reply.ended, reply.sent) == (False, False, ())
    assert session.pending == 1
    # The rest of the device's package, with Final: now the command goes out.
    session.receive(device_message(2, [devinfo()]))
    reply = session.reply()
    assert reply.sent == ("c1",)
    assert [c.name for c in server_commands(reply)] == ["Get"]
    assert reply.final
    assert not reply.ended
    assert (session.pending, session.in_flight) == (0, 1)


def test_device_1222_without_final_continues_sending() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./A")), Outgoing("c2", get_body("./B"))])
    session.receive(device_message(1, [alert(1201), alert(1222)], final=False))
    reply = session.reply()
    assert reply.sent == ("c1", "c2")
    assert reply.final
    # Nothing left to send, but the device's package goes on: no end yet.
    session.receive(device_message(2, [*answers(reply), alert(1222)], final=False))
    reply = session.reply()
    assert server_commands(reply) == []
    assert reply.final
    assert not reply.ended
    session.receive(device_message(3, [alert(1224, Item(data="user"))]))
    reply = session.reply()
    assert reply.ended


def test_session_ends_with_statuses_only_and_never_resends() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./DevDetail/SwV"))])
    _, reply = start(session)
    assert reply.sent == ("c1",)
    # Offering the same stored command again does not send it again.
    session.offer([Outgoing("c1", get_body("./DevDetail/SwV"))])
    assert session.pending == 0
    events = session.receive(device_message(2, answers(reply)))
    assert list(answered(events)) == ["c1"]
    last = session.reply()
    assert server_commands(last) == []
    assert (last.final, last.ended, last.sent) == (True, True, ())
    assert session.ended
    with pytest.raises(SessionError, match="ended"):
        session.receive(device_message(3, []))
    with pytest.raises(RuntimeError, match="ended"):
        session.reply()
    with pytest.raises(RuntimeError, match="ended"):
        session.offer([])


def test_statuses_only_to_a_final_message_ends_even_with_commands_unanswered() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./A")), Outgoing("c2", get_body("./B"))])
    _, reply = start(session)
    partial = answers(reply)[:2]  # the SyncHdr's and c1's statuses: no Results, nothing for c2
    events = session.receive(device_message(2, partial))
    last = session.reply()
    assert last.ended
    assert answered(events)["c1"].results == ()  # the package ended: no Results will come
    assert session.in_flight_ids == ("c2",)


def test_get_waits_for_results_in_a_later_message_of_the_package() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./A"))])
    _, reply = start(session)
    status, results = answers(reply)[1:]
    events = session.receive(device_message(2, [status], final=False))
    assert answered(events) == {}
    session.reply()
    events = session.receive(device_message(3, [results]))
    done = answered(events)["c1"]
    assert [i.data for i in done.results] == ["value of ./A"]


def test_results_over_several_messages_of_the_package_are_joined() -> None:
    # A big StructData inventory: Status and the first Results, then more Results for the
    # same Get in the next messages of the device's package.
    session = new_session()
    session.offer([Outgoing("c1", get_body("./A"))])
    _, reply = start(session)
    status, results = answers(reply)[1:]
    more = [
        Command(
            "Results",
            msg_ref=results.msg_ref,
            cmd_ref=results.cmd_ref,
            items=[Item(source=f"./A/{n}", data=n)],
        )
        for n in ("x", "y")
    ]
    assert answered(session.receive(device_message(2, [status, results], final=False))) == {}
    session.reply()
    assert answered(session.receive(device_message(3, [more[0]], final=False))) == {}
    session.reply()
    done = answered(session.receive(device_message(4, [more[1]])))["c1"]
    assert [i.data for i in done.results] == ["value of ./A", "x", "y"]


def test_get_without_results_is_answered_when_the_package_ends() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./A"))])
    _, reply = start(session)
    status = answers(reply)[1]
    events = session.receive(device_message(2, [status]))
    assert answered(events)["c1"].results == ()
    assert answered(events)["c1"].statuses == (PartStatus("Get", 200, "./A", None),)


# ---------------------------------------------------------------- placement


def test_200_gets_under_max_msg_size_16384() -> None:
    session = new_session()
    uris = [f"./Vendor/MSFT/Policy/Config/Area{i:03d}/SomeSettingName" for i in range(200)]
    session.offer(Outgoing(f"get-{i}", get_body(uri)) for i, uri in enumerate(uris))
    events, reply = start(session, max_msg_size=16384)
    placed: list[str] = []
    sent: list[str] = []
    done: dict[str, CommandAnswered] = {}
    finals: list[bool] = []
    msg_id = 1
    while not reply.ended:
        assert len(reply.data) <= 16384
        commands = server_commands(reply)
        placed += [c.items[0].target or "" for c in commands if c.name == "Get"]
        sent += reply.sent
        if commands:
            finals.append(reply.final)
        msg_id += 1
        # The device answers and keeps its MaxMsgSize.
        events = session.receive(device_message(msg_id, answers(reply), max_msg_size=16384))
        done |= answered(events)
        reply = session.reply()
        assert msg_id < 100
    assert len(finals) >= 3  # split over several messages
    assert finals == [False] * (len(finals) - 1) + [True]
    assert placed == uris
    assert sent == [f"get-{i}" for i in range(200)]
    assert sorted(done) == sorted(sent)
    assert [r.data for r in done["get-7"].results] == [f"value of {uris[7]}"]
    assert session.in_flight == 0


def test_stored_commands_are_placed_whole_or_not_at_all() -> None:
    session = new_session()
    two = replace_body("./A/1", "x" * 10) + replace_body("./A/2", "y" * 2500)
    session.offer([Outgoing("small", replace_body("./S", "s" * 1500)), Outgoing("two", two)])
    _, reply = start(session, max_msg_size=4000)
    assert reply.sent == ("small",)
    assert [c.items[0].target for c in server_commands(reply)] == ["./S"]
    assert not reply.final
    session.receive(device_message(2, answers(reply)))
    reply = session.reply()
    assert reply.sent == ("two",)
    assert [c.items[0].target for c in server_commands(reply)] == ["./A/1", "./A/2"]
    assert reply.final


def test_a_command_too_large_for_any_message_is_dropped() -> None:
    session = new_session()
    session.offer(
        [
            Outgoing("a", get_body("./A")),
            Outgoing("huge", replace_body("./H", "h" * 5000)),
            Outgoing("b", get_body("./B")),
        ]
    )
    _, reply = start(session, max_msg_size=2000)
    assert reply.dropped == (CommandTooLarge("huge"),)
    assert reply.sent == ("a", "b")
    assert reply.final
    assert session.pending == 0


def test_statuses_that_do_not_fit_go_in_the_next_message() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./A"))])
    generic = [alert(1226, Item(source="./Vendor/MSFT/X", data="d" * 40)) for _ in range(40)]
    session.receive(device_message(1, generic, max_msg_size=2000))
    reply = session.reply()
    assert (reply.final, reply.sent) == (False, ())
    assert 0 < len(statuses(reply)) - 1 < 40
    answered_refs: list[tuple[str, str]] = []
    msg_id = 1
    while True:
        assert len(reply.data) <= 2000
        assert statuses(reply)[0].msg_ref == str(msg_id)  # the SyncHdr status comes first
        answered_refs += [(s.msg_ref or "", s.cmd_ref or "") for s in statuses(reply)[1:]]
        if reply.sent:
            break
        msg_id += 1
        session.receive(device_message(msg_id, [alert(1222)], final=False))
        reply = session.reply()
        assert msg_id < 60
    # Every command got one status, in order: the 40 alerts, then each 1222.
    expected = [("1", str(i)) for i in range(1, 41)] + [(str(m), "1") for m in range(2, msg_id + 1)]
    assert answered_refs == expected
    assert reply.sent == ("c1",)


# ---------------------------------------------------------------- answers


def test_statuses_and_results_make_one_answer_and_repeats_are_ignored() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./DevDetail/SwV") + get_body("./DevDetail/OEM"))])
    _, reply = start(session)
    events = session.receive(device_message(2, answers(reply) + answers(reply)[1:]))
    done = answered(events)["c1"]
    assert [s.code for s in done.statuses] == [200, 200]
    assert [s.target for s in done.statuses] == ["./DevDetail/SwV", "./DevDetail/OEM"]
    assert [r.data for r in done.results] == [
        "value of ./DevDetail/SwV",
        "value of ./DevDetail/OEM",
    ]
    # The Results get a Status each, repeats included; the device's Statuses get none.
    assert [s.cmd for s in statuses(session.reply())] == ["SyncHdr"] + ["Results"] * 4


def test_item_level_statuses_and_windows_error_detail() -> None:
    session = new_session()
    session.offer([Outgoing("c1", replace_body("./V/A", "1"))])
    _, reply = start(session)
    cmd_id = server_commands(reply)[0].cmd_id
    failed = Command(
        "Status",
        msg_ref="1",
        cmd_ref=cmd_id,
        cmd="Replace",
        target_refs=["./V/A"],
        data="500",
        data_attrs={"msft:originalerror": "0x80070057"},
    )
    events = session.receive(device_message(2, [failed]))
    assert answered(events)["c1"].statuses == (PartStatus("Replace", 500, "./V/A", "0x80070057"),)


def test_status_data_that_is_no_number() -> None:
    session = new_session()
    session.offer([Outgoing("a", get_body("./A")), Outgoing("b", get_body("./B"))])
    _, reply = start(session)
    device = answers(reply, codes={"./A": "0", "./B": " OK "})
    device = [c for c in device if c.name != "Results"]
    done = answered(session.receive(device_message(2, device)))
    assert done["a"].statuses == (PartStatus("Get", 0, "./A", None),)
    assert done["b"].statuses == (PartStatus("Get", 0, "./B", " OK ", numeric=False),)
    assert done["a"].statuses[0].numeric


def test_atomic_stored_command() -> None:
    session = new_session()
    body = (
        b"<Atomic><CmdID>1</CmdID>"
        + replace_body("./V/A", "1").replace(b"<CmdID>1</CmdID>", b"<CmdID>2</CmdID>")
        + replace_body("./V/B", "2").replace(b"<CmdID>1</CmdID>", b"<CmdID>3</CmdID>")
        + b"</Atomic>"
    )
    session.offer([Outgoing("atomic", body)])
    _, reply = start(session)
    atomic = server_commands(reply)[0]
    assert atomic.name == "Atomic"
    ids = [atomic.cmd_id] + [c.cmd_id for c in atomic.commands]
    assert len(set(ids)) == 3
    device = [
        Command("Status", msg_ref="1", cmd_ref=atomic.cmd_id, cmd="Atomic", data="507"),
        Command("Status", msg_ref="1", cmd_ref=ids[1], cmd="Replace", data="216"),
        Command("Status", msg_ref="1", cmd_ref=ids[2], cmd="Replace", data="500"),
    ]
    events = session.receive(device_message(2, device))
    assert [(s.cmd, s.code) for s in answered(events)["atomic"].statuses] == [
        ("Atomic", 507),
        ("Replace", 216),
        ("Replace", 500),
    ]


def test_418_inside_atomic_is_not_retried_and_stays_an_error() -> None:
    session = new_session()
    add = b"<Add><CmdID>2</CmdID><Item><Target><LocURI>./V/Node</LocURI></Target></Item></Add>"
    session.offer([Outgoing("atomic", b"<Atomic><CmdID>1</CmdID>" + add + b"</Atomic>")])
    _, reply = start(session)
    atomic = server_commands(reply)[0]
    device = [
        Command("Status", msg_ref="1", cmd_ref=atomic.cmd_id, cmd="Atomic", data="200"),
        Command("Status", msg_ref="1", cmd_ref=atomic.commands[0].cmd_id, cmd="Add", data="418"),
    ]
    events = session.receive(device_message(2, device))
    statuses = answered(events)["atomic"].statuses
    # Only a top-level Add is retried as a Replace: this 418 is the answer itself.
    assert [(s.cmd, s.code, s.retried) for s in statuses] == [
        ("Atomic", 200, False),
        ("Add", 418, False),
    ]
    assert server_commands(session.reply()) == []


def test_retried_418_is_marked() -> None:
    session = new_session()
    add = b"<Add><CmdID>1</CmdID><Item><Target><LocURI>./V/Node</LocURI></Target></Item></Add>"
    session.offer([Outgoing("add", add)])
    _, reply = start(session)
    session.receive(device_message(2, answers(reply, codes={"./V/Node": "418"})))
    reply = session.reply()
    events = session.receive(device_message(3, answers(reply)))
    statuses = answered(events)["add"].statuses
    assert [(s.cmd, s.code, s.retried) for s in statuses] == [
        ("Add", 418, True),
        ("Replace", 200, False),
    ]


def test_noresp_commands_are_answered_without_a_status() -> None:
    session = new_session()
    body = (
        b"<Replace><CmdID>1</CmdID><NoResp/><Item><Target><LocURI>./V/A</LocURI></Target>"
        b"<Data>1</Data></Item></Replace>"
    )
    session.offer([Outgoing("quiet", body)])
    _, reply = start(session)
    assert server_commands(reply)[0].no_resp
    events = session.receive(device_message(2, answers(reply)[:1]))
    assert answered(events)["quiet"].statuses == ()
    assert session.reply().ended


def test_418_on_add_is_retried_as_replace() -> None:
    session = new_session()
    add = (
        b"<Add><CmdID>1</CmdID><Item><Target><LocURI>./V/Node</LocURI></Target>"
        b"<Meta><Format xmlns='syncml:metinf'>int</Format></Meta><Data>5</Data></Item></Add>"
    )
    session.offer([Outgoing("add", add), Outgoing("get", get_body("./G"))])
    _, reply = start(session)
    session.offer([Outgoing("later", get_body("./L"))])
    events = session.receive(device_message(2, answers(reply, codes={"./V/Node": "418"})))
    assert list(answered(events)) == ["get"]
    assert session.in_flight_ids == ("add",)
    reply = session.reply()
    retry = server_commands(reply)
    # The Replace goes first, with the same item, then what was queued after.
    assert [c.name for c in retry] == ["Replace", "Get"]
    assert retry[0].items[0].target == "./V/Node"
    assert (retry[0].items[0].data, retry[0].items[0].format) == ("5", "int")
    assert reply.sent == ("later",)
    events = session.receive(device_message(3, answers(reply)))
    done = answered(events)
    assert [(s.cmd, s.code) for s in done["add"].statuses] == [("Add", 418), ("Replace", 200)]
    assert "later" in done


def test_later_commands_on_an_added_node_wait_for_the_add() -> None:
    session = new_session()
    add = (
        b"<Add><CmdID>1</CmdID><Item><Target><LocURI>./V/Node</LocURI></Target>"
        b"<Data>5</Data></Item></Add>"
    )
    delete = (
        b"<Delete><CmdID>1</CmdID><Item><Target><LocURI>./V/Node</LocURI></Target></Item></Delete>"
    )
    session.offer(
        [
            Outgoing("add", add),
            Outgoing("other", get_body("./G")),
            Outgoing("delete", delete),
            Outgoing("child", get_body("./V/Node/Child?list=StructData")),
        ]
    )
    _, reply = start(session)
    # The Delete touches the node of an Add in the same message: it and what follows wait.
    assert [c.name for c in server_commands(reply)] == ["Add", "Get"]
    assert (reply.sent, reply.final, reply.ended) == (("add", "other"), False, False)
    session.receive(device_message(2, answers(reply, codes={"./V/Node": "418"})))
    reply = session.reply()
    # The Replace for the 418 comes first, then the held commands, in order.
    names = [(c.name, c.items[0].target) for c in server_commands(reply)]
    assert names == [
        ("Replace", "./V/Node"),
        ("Delete", "./V/Node"),
        ("Get", "./V/Node/Child?list=StructData"),
    ]
    assert (reply.sent, reply.final) == (("delete", "child"), True)
    events = session.receive(device_message(3, answers(reply)))
    assert sorted(answered(events)) == ["add", "child", "delete"]
    assert session.reply().ended


def test_held_commands_follow_an_add_answered_200() -> None:
    session = new_session()
    add = b"<Add><CmdID>1</CmdID><Item><Target><LocURI>./V/A/B</LocURI></Target></Item></Add>"
    session.offer([Outgoing("add", add), Outgoing("parent", replace_body("./V/A", "x"))])
    _, reply = start(session)
    assert reply.sent == ("add",)
    session.receive(device_message(2, answers(reply)))
    reply = session.reply()
    assert [c.name for c in server_commands(reply)] == ["Replace"]
    assert reply.sent == ("parent",)


# ---------------------------------------------------------------- large objects


def chunked_results(
    msg_ref: str, cmd_ref: str, uri: str, chunks: list[str | bytes], declared: int | None
) -> list[Command]:
    out = []
    for index, chunk in enumerate(chunks):
        meta: dict[str, str | list[str]] | None = None
        if index == 0 and declared is not None:
            meta = {"Size": str(declared)}
        item = Item(source=uri, meta=meta, data=chunk, more_data=index < len(chunks) - 1)
        out.append(Command("Results", msg_ref=msg_ref, cmd_ref=cmd_ref, items=[item]))
    return out


def deliver_chunks(
    session: Session,
    reply: Reply,
    chunks: list[str | bytes],
    *,
    declared: int | None,
    wbxml: bool = False,
) -> tuple[list[Event], list[Reply]]:
    """The device answers the Get in ``reply`` with a chunked Results, one chunk a message."""
    get = server_commands(reply)[0]
    uri = get.items[0].target or ""
    parts = chunked_results("1", get.cmd_id or "", uri, chunks, declared)
    events: list[Event] = []
    replies = []
    previous = reply
    for index, results in enumerate(parts):
        last = index == len(parts) - 1
        # Statuses for the server's message (its 1222 included) come before the chunk.
        commands = [c for c in answers(previous) if c.name == "Status"]
        commands.append(results)
        events += session.receive(device_message(index + 2, commands, final=last, wbxml=wbxml))
        previous = session.reply(wbxml=wbxml)
        replies.append(previous)
    return events, replies


def test_one_megabyte_results_in_chunks() -> None:
    session = new_session()
    session.offer(
        [
            Outgoing(
                "inv", get_body("./Vendor/MSFT/EnterpriseModernAppManagement/AppInventoryResults")
            )
        ]
    )
    _, reply = start(session)
    text = ("<App Name='Contoso.Caf\u00e9' Version='1.0.0.0'/>" * 30000)[: 1024 * 1024]
    chunks: list[str | bytes] = [text[i : i + 65536] for i in range(0, len(text), 65536)]
    events, replies = deliver_chunks(session, reply, chunks, declared=len(text.encode()))
    codes = [status_codes(r)[-1][2] for r in replies]
    assert codes == ["213"] * (len(chunks) - 1) + ["200"]
    # Until the last chunk: Alert 1222, no Final; the last answer ends the session.
    assert all(not r.final and server_commands(r)[0].data == "1222" for r in replies[:-1])
    assert replies[-1].ended
    done = answered(events)["inv"]
    assert len(done.results) == 1
    assert done.results[0].data == text
    assert done.results[0].more_data is False
    assert [s.code for s in done.statuses] == [200]


def test_binary_chunks_join_as_bytes_or_text() -> None:
    session = new_session()
    session.offer([Outgoing("a", get_body("./A")), Outgoing("b", get_body("./B"))])
    _, reply = start(session)
    gets = server_commands(reply)
    # "é" split across chunks: neither chunk is UTF-8, the whole is.
    split = chunked_results("1", gets[0].cmd_id or "", "./A", [b"a\xc3", b"\xa9b"], None)
    binary = chunked_results("1", gets[1].cmd_id or "", "./B", [b"\xff\x00", b"\x80"], 3)
    status = [Command("Status", msg_ref="1", cmd_ref=g.cmd_id, cmd="Get", data="200") for g in gets]
    session.receive(device_message(2, [*status, split[0]], final=False, wbxml=True))
    session.reply(wbxml=True)
    events = session.receive(device_message(3, [split[1], binary[0]], final=False, wbxml=True))
    session.reply(wbxml=True)
    events += session.receive(device_message(4, [binary[1]], wbxml=True))
    done = answered(events)
    assert done["a"].results[0].data == "a\u00e9b"
    assert done["b"].results[0].data == b"\xff\x00\x80"


def test_size_mismatch_is_424_and_drops_the_object() -> None:
    session = new_session()
    session.offer([Outgoing("c", get_body("./A"))])
    _, reply = start(session)
    events, replies = deliver_chunks(session, reply, ["x" * 50, "y" * 40], declared=100)
    assert [status_codes(r)[-1][2] for r in replies] == ["213", "424"]
    done = answered(events)["c"]
    assert done.results == ()
    assert done.statuses[-1] == PartStatus("Results", 424, "./A", "size mismatch")


def test_object_larger_than_max_object_size_is_refused() -> None:
    session = new_session(max_object_size=1000)
    session.offer([Outgoing("c", get_body("./A"))])
    _, reply = start(session)
    events, replies = deliver_chunks(session, reply, ["x" * 600] * 3, declared=None)
    assert [status_codes(r)[-1][2] for r in replies] == ["213", "413", "413"]
    done = answered(events)["c"]
    assert [s.code for s in done.statuses] == [200, 413]
    assert done.results == ()
    # A declared Size over the limit is refused at the first chunk.
    session = new_session(max_object_size=1000)
    session.offer([Outgoing("c", get_body("./A"))])
    _, reply = start(session)
    events, replies = deliver_chunks(session, reply, ["x" * 10, "y"], declared=5000)
    assert [status_codes(r)[-1][2] for r in replies] == ["413", "413"]


def test_a_new_command_instead_of_the_next_chunk_gets_alert_1225() -> None:
    session = new_session()
    session.offer([Outgoing("c", get_body("./Big"))])
    _, reply = start(session)
    get = server_commands(reply)[0]
    first = chunked_results("1", get.cmd_id or "", "./Big", ["a" * 10, "b"], None)[0]
    session.receive(
        device_message(
            2,
            [Command("Status", msg_ref="1", cmd_ref=get.cmd_id, cmd="Get", data="200"), first],
            final=False,
        )
    )
    assert status_codes(session.reply())[-1][2] == "213"
    events = session.receive(device_message(3, [alert(1226, Item(data="event"))]))
    reply = session.reply()
    sent = server_commands(reply)
    assert [(c.name, c.data) for c in sent] == [("Alert", "1225")]
    assert sent[0].items[0].source == "./Big"
    assert status_codes(reply)[-1] == ("1", "Alert", "200")
    assert not reply.ended  # the 1225 needs an answer
    assert any(isinstance(e, DeviceAlert) and e.code == 1226 for e in events)
    done = answered(events)["c"]
    assert done.statuses[-1].code == 1225
    assert done.results == ()


def test_interrupted_object_in_a_message_without_final() -> None:
    session = new_session()
    session.receive(device_message(1, [alert(1201)], final=False))
    session.reply()
    chunk = Command("Replace", items=[Item(source="./Vendor/X", data="abc", more_data=True)])
    other = Command("Replace", items=[Item(source="./Vendor/Y", data="1")])
    events = session.receive(device_message(2, [chunk, other], final=False))
    reply = session.reply()
    assert status_codes(reply)[1:] == [("1", "Replace", "213"), ("2", "Replace", "200")]
    assert [(c.name, c.data) for c in server_commands(reply)] == [
        ("Alert", "1225"),
        ("Alert", "1222"),
    ]
    assert server_commands(reply)[0].items[0].source == "./Vendor/X"
    assert [
        [i.source for i in e.command.items] for e in events if isinstance(e, DeviceCommand)
    ] == [["./Vendor/Y"]]


def test_a_retransmitted_object_is_read_again_after_1225() -> None:
    session = new_session()
    session.offer([Outgoing("c", get_body("./Big"))])
    _, reply = start(session)
    get = server_commands(reply)[0]
    status = Command("Status", msg_ref="1", cmd_ref=get.cmd_id, cmd="Get", data="200")
    chunks = chunked_results("1", get.cmd_id or "", "./Big", ["a" * 10, "b"], 11)
    session.receive(device_message(2, [status, chunks[0]], final=False))
    session.reply()
    events = session.receive(device_message(3, [alert(1226, Item(data="x"))], final=False))
    assert [c.data for c in server_commands(session.reply())] == ["1225", "1222"]
    assert answered(events) == {}  # the package goes on: the device may send it again
    # The device sends the whole object again: not a repeat, read and delivered.
    again = chunked_results("1", get.cmd_id or "", "./Big", ["a" * 10, "b"], 11)
    session.receive(device_message(4, [again[0]], final=False))
    assert status_codes(session.reply())[-1][2] == "213"
    events = session.receive(device_message(5, [again[1]]))
    assert status_codes(session.reply())[-1][2] == "200"
    done = answered(events)["c"]
    assert [s.code for s in done.statuses] == [200]
    assert [r.data for r in done.results] == ["a" * 10 + "b"]


def test_alert_1222_and_statuses_do_not_interrupt_an_object() -> None:
    session = new_session()
    session.receive(device_message(1, [alert(1201)], final=False))
    session.reply()
    first = Command(
        "Replace",
        items=[
            Item(source="./Vendor/Whole", data="w"),
            Item(source="./Vendor/X", data="abc", more_data=True),
        ],
    )
    session.receive(device_message(2, [first], final=False))
    assert status_codes(session.reply())[-1][2] == "213"
    last = Command("Replace", items=[Item(source="./Vendor/X", data="def")])
    hdr = Command("Status", msg_ref="2", cmd_ref="0", cmd="SyncHdr", data="200")
    events = session.receive(device_message(3, [hdr, alert(1222), last]))
    reply = session.reply()
    assert status_codes(reply)[1:] == [("2", "Alert", "200"), ("3", "Replace", "200")]
    assert server_commands(reply) == []
    (event,) = [e for e in events if isinstance(e, DeviceCommand)]
    # The item before the chunked one is kept, in order.
    assert [(i.source, i.data) for i in event.command.items] == [
        ("./Vendor/Whole", "w"),
        ("./Vendor/X", "abcdef"),
    ]


def test_more_data_on_an_item_that_is_not_last_is_refused() -> None:
    session = new_session()
    bad = Command(
        "Replace",
        items=[Item(source="./A", data="1", more_data=True), Item(source="./B", data="2")],
    )
    events = session.receive(device_message(1, [bad], final=False))
    assert events == []
    assert status_codes(session.reply())[-1] == ("1", "Replace", "400")


def test_final_without_the_last_chunk_gets_alert_1225() -> None:
    session = new_session()
    session.receive(device_message(1, [alert(1201)], final=False))
    session.reply()
    chunk = Command("Replace", items=[Item(source="./Vendor/X", data="abc", more_data=True)])
    events = session.receive(device_message(2, [chunk]))
    reply = session.reply()
    assert status_codes(reply)[-1] == ("1", "Replace", "213")
    assert [(c.name, c.data, c.items[0].source) for c in server_commands(reply)] == [
        ("Alert", "1225", "./Vendor/X")
    ]
    assert not any(isinstance(e, DeviceCommand) for e in events)


def test_chunked_device_replace_is_delivered_whole() -> None:
    session = new_session()
    session.receive(device_message(1, [alert(1201)], final=False))
    session.reply()
    first = Command("Replace", items=[Item(source="./Vendor/X", data="abc", more_data=True)])
    session.receive(device_message(2, [first], final=False))
    assert status_codes(session.reply())[-1][2] == "213"
    last = Command("Replace", items=[Item(source="./Vendor/X", data="def")])
    events = session.receive(device_message(3, [last]))
    assert status_codes(session.reply())[-1][2] == "200"
    (event,) = [e for e in events if isinstance(e, DeviceCommand)]
    assert [(i.source, i.data) for i in event.command.items] == [("./Vendor/X", "abcdef")]


# ---------------------------------------------------------------- abort, encoding, errors


def test_alert_1223_aborts() -> None:
    session = new_session()
    session.offer([Outgoing(f"c{i}", get_body(f"./N{i}")) for i in range(3)])
    events = session.receive(device_message(1, [alert(1201), alert(1223)]))
    assert events[-1] == SessionAborted()
    reply = session.reply()
    assert server_commands(reply) == []
    assert status_codes(reply)[1:] == [("1", "Alert", "200"), ("2", "Alert", "200")]
    assert (reply.ended, reply.final, reply.sent) == (True, True, ())
    assert session.ended
    assert session.pending_ids == ("c0", "c1", "c2")


def test_wbxml_reply_decodes_back() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./DevDetail/SwV"))])
    session.receive(device_message(1, [alert(1201), devinfo()], wbxml=True))
    reply = session.reply(wbxml=True)
    assert syncml.detect(reply.data) == "wbxml"
    decoded = syncml.decode(reply.data)
    assert decoded.header.target == DEVICE
    assert [c.name for c in decoded.commands] == ["Status", "Status", "Status", "Get"]
    assert decoded.commands[-1].items[0].target == "./DevDetail/SwV"
    assert decoded.final


def test_session_errors() -> None:
    session = new_session()
    with pytest.raises(SessionError, match="SessionID"):
        session.receive(device_message(1, [alert(1201)], session_id="other"))
    with pytest.raises(SessionError, match="not a number"):
        session.receive(
            syncml.decode(
                Message(
                    Header(session_id=SESSION, msg_id="x", target=SERVER, source=DEVICE), []
                ).encode()
            )
        )
    session.receive(device_message(2, [alert(1201)], final=False))
    session.reply()
    for replayed in (2, 1):
        with pytest.raises(SessionError, match="MsgID"):
            session.receive(device_message(replayed, []))
    with pytest.raises(SessionError, match="Source"):
        session.receive(device_message(3, [], source="someone-else"))
    # A refused message changed nothing: the next good one is taken.
    session.receive(device_message(3, []))
    with pytest.raises(RuntimeError, match="reply"):
        session.receive(device_message(4, []))


def test_offer_refuses_bodies_that_are_not_commands() -> None:
    session = new_session()
    for body in (b"<Get><CmdID>1</CmdID>", b"", b"<Final/>", b"<Status><CmdID>1</CmdID></Status>"):
        with pytest.raises(ValueError, match="stored command 'bad'"):
            session.offer([Outgoing("ok", get_body("./A")), Outgoing("bad", body)])
    assert session.pending == 0
    session.offer([Outgoing("ok", get_body("./A")), Outgoing("ok", get_body("./B"))])
    assert session.pending_ids == ("ok",)


# ---------------------------------------------------------------- authentication failures


def test_refusing_a_message_without_receive() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./A"))])
    nonce = auth.new_nonce()
    first = device_message(1, [alert(1201), devinfo()])
    reply = session.reply(header_status=407, chal=auth.challenge(nonce), to=first)
    decoded = syncml.decode(reply.data)
    status = decoded.commands[0]
    assert (status.cmd, status.msg_ref, status.data) == ("SyncHdr", "1", "407")
    # Every command of the refused message has its Status too: not executed, 407.
    assert status_codes(reply)[1:] == [("1", "Alert", "407"), ("2", "Replace", "407")]
    assert status.chal == auth.challenge(nonce)
    assert (reply.final, reply.ended, reply.sent) == (True, False, ())
    # The device retries with credentials: everything starts normally.
    session.receive(device_message(2, [alert(1201), devinfo()]))
    reply = session.reply(header_status=212)
    decoded = syncml.decode(reply.data)
    assert decoded.header.msg_id == "2"
    assert (decoded.commands[0].msg_ref, decoded.commands[0].data) == ("2", "212")
    assert reply.sent == ("c1",)


def test_refusing_without_the_message_uses_what_the_session_knows() -> None:
    session = new_session()
    reply = session.reply(header_status=401, chal=auth.challenge(b"n"))
    (status,) = syncml.decode(reply.data).commands
    assert (status.msg_ref, status.data, status.source_refs) == ("1", "401", [DEVICE])
    assert syncml.decode(reply.data).header.target == DEVICE


def test_refusing_after_receive_rolls_the_message_back() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./A"))])
    _, reply = start(session)
    device = answers(reply)
    events = session.receive(device_message(2, device))
    assert list(answered(events)) == ["c1"]
    refused = session.reply(header_status=401, chal=auth.challenge(b"n"))
    assert [(c.cmd, c.data) for c in syncml.decode(refused.data).commands] == [
        ("SyncHdr", "401"),
        ("Results", "401"),
    ]
    assert session.in_flight_ids == ("c1",)
    # The same message again (even the same MsgID) is taken as new.
    events = session.receive(device_message(2, device))
    assert list(answered(events)) == ["c1"]
    assert session.reply().ended


def test_a_refused_message_gets_a_status_for_every_command() -> None:
    session = new_session()
    session.offer([Outgoing("c1", get_body("./A"))])
    message = device_message(
        4,
        [
            alert(1201),
            Command("Status", msg_ref="3", cmd_ref="2", cmd="Get", data="200"),
            devinfo(),
            Command("Exec", items=[Item(target="./Vendor/X")]),
        ],
    )
    for code in (401, 407):
        reply = session.reply(header_status=code, chal=auth.challenge(b"n"), to=message)
        decoded = syncml.decode(reply.data)
        assert [(s.msg_ref, s.cmd_ref, s.cmd, s.data) for s in decoded.commands] == [
            ("4", "0", "SyncHdr", str(code)),
            ("4", "1", "Alert", str(code)),
            ("4", "3", "Replace", str(code)),
            ("4", "4", "Exec", str(code)),
        ]
        assert decoded.commands[0].chal is not None
        assert all(c.chal is None for c in decoded.commands[1:])
        assert (reply.final, reply.sent) == (True, ())
    # Nothing was executed: the same message, authenticated, is taken as new.
    events = session.receive(message)
    assert [type(e) for e in events] == [DeviceAlert, DeviceInfo, DeviceCommand]


def test_reply_needs_a_received_message() -> None:
    session = new_session()
    with pytest.raises(RuntimeError, match="receive"):
        session.reply()


# ---------------------------------------------------------------- generated sessions


@st.composite
def _stored(draw: st.DrawFn) -> list[list[int]]:
    """Stored commands as lists of data sizes, one per SyncML command."""
    return draw(
        st.lists(st.lists(st.integers(0, 3000), min_size=1, max_size=3), min_size=1, max_size=25)
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored=_stored(), max_size=st.integers(1200, 12000), wbxml=st.booleans())
def test_any_commands_under_any_max_msg_size(
    stored: list[list[int]], max_size: int, wbxml: bool
) -> None:
    session = new_session()
    bodies = [
        b"".join(replace_body(f"./N{i}/{j}", "x" * size) for j, size in enumerate(sizes))
        for i, sizes in enumerate(stored)
    ]
    session.offer(Outgoing(f"c{i}", body) for i, body in enumerate(bodies))
    session.receive(device_message(1, [alert(1201)], max_msg_size=max_size, wbxml=wbxml))
    reply = session.reply(wbxml=wbxml)
    placed: list[str] = []
    sent: list[str] = []
    dropped: list[str] = []
    msg_id = 1
    while True:
        assert len(reply.data) <= max_size
        groups: dict[str, list[str]] = {}
        for command in server_commands(reply):
            uri = command.items[0].target or ""
            groups.setdefault(uri.split("/")[1], []).append(uri)
            placed.append(uri)
        # Every stored command in the message is there whole.
        for name, uris in groups.items():
            assert len(uris) == len(stored[int(name[1:])])
        sent += reply.sent
        dropped += [d.command_id for d in reply.dropped]
        if reply.ended:
            break
        msg_id += 1
        session.receive(device_message(msg_id, answers(reply), max_msg_size=max_size, wbxml=wbxml))
        reply = session.reply(wbxml=wbxml)
        assert msg_id < 200
    # Each command sent once, in order; the rest dropped, and those really cannot fit.
    assert sorted(sent + dropped, key=lambda c: int(c[1:])) == [f"c{i}" for i in range(len(stored))]
    assert sent == sorted(sent, key=lambda c: int(c[1:]))
    expected = [f"./N{i}/{j}" for i in (int(c[1:]) for c in sent) for j in range(len(stored[i]))]
    assert placed == expected
    for name in dropped:
        i = int(name[1:])
        alone = Message(
            Header(session_id=SESSION, msg_id="99", target=DEVICE, source=SERVER),
            [
                Command(
                    "Status",
                    cmd_id="1",
                    msg_ref="1",
                    cmd_ref="0",
                    cmd="SyncHdr",
                    target_refs=[SERVER],
                    source_refs=[DEVICE],
                    data="200",
                ),
                *(
                    Command(
                        "Replace",
                        cmd_id=str(j + 2),
                        items=[Item(target=f"./N{i}/{j}", data="x" * size)],
                    )
                    for j, size in enumerate(stored[i])
                ),
            ],
        ).encode(wbxml=wbxml)
        assert len(alone) > max_size - 16
    assert session.in_flight == 0
