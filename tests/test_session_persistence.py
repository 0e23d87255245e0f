"""OMA-DM session snapshots: a session restored from :meth:`Session.snapshot` after every
message answers exactly as one that never left memory (replies byte for byte, every event),
under random device behaviour: statuses of every kind, Results, chunked large objects, 418
retries, MaxMsgSize splits, refusals, aborts and replays."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mdmgate import syncml
from mdmgate.errors import MdmgateError
from mdmgate.syncml import Command, Header, Item, Message
from mdmgate.windows.session import (
    SNAPSHOT_VERSION,
    Outgoing,
    Reply,
    Session,
    SessionError,
    SnapshotError,
)
from tests.windows_emulator import renumbered

SERVER = "https://mdm.example.com/ManagementServer/MDM.svc"
DEVICE = "42C4F0B2A7D94A6E"
SESSION = "1A"
NODES = [
    "./Vendor/MSFT/A",
    "./Vendor/MSFT/A/B",
    "./Device/Vendor/MSFT/A/B",
    "./Vendor/MSFT/C",
    "./DevDetail/SwV",
]


# ---------------------------------------------------------------- comparing sessions


def plain(value: Any) -> Any:
    """Events, replies and codec objects as comparable plain data (the codec's pyclasses
    compare by identity)."""
    if isinstance(value, Item):
        return (
            "Item",
            value.target,
            value.source,
            value.meta,
            value.data,
            value.data_attrs,
            value.more_data,
            value.target_name,
            value.source_name,
        )
    if isinstance(value, Command):
        return (
            "Command",
            value.name,
            value.cmd_id,
            value.msg_ref,
            value.cmd_ref,
            value.cmd,
            value.data,
            value.meta,
            value.data_attrs,
            value.no_resp,
            value.target_refs,
            value.source_refs,
            value.chal,
            value.correlator,
            value.target,
            value.source,
            [plain(i) for i in value.items],
            [plain(c) for c in value.commands],
        )
    if isinstance(value, msgspec.Struct):
        return (type(value).__name__, *(plain(v) for v in msgspec.structs.astuple(value)))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            *(plain(getattr(value, f.name)) for f in dataclasses.fields(value)),
        )
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class Both(Exception):
    """Both sessions raised the same error (``error``)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Twin:
    """Two sessions driven alike: ``a`` stays in memory, ``b`` is snapshotted and restored
    after every device message. Every call must give both the same outcome."""

    def __init__(self, **kwargs: int) -> None:
        self.a = Session(device_id=DEVICE, session_id=SESSION, server_uri=SERVER, **kwargs)
        self.b = Session.restore(self.a.snapshot())
        self.messages = 0
        self.snapshot_sizes: list[int] = []
        #: What the example exercised (for hypothesis' statistics).
        self.seen: set[str] = set()

    def call(self, action: Callable[[Session], Any]) -> Any:
        outcomes = []
        for session in (self.a, self.b):
            try:
                outcomes.append(("ok", action(session)))
            except (MdmgateError, ValueError, RuntimeError) as exc:
                outcomes.append(("error", exc))
        (kind_a, a), (kind_b, b) = outcomes
        if kind_a == "error":
            assert kind_b == "error", f"only the original raised {a!r}"
            assert (type(a), str(a)) == (type(b), str(b))
            self.seen.add(f"error {type(a).__name__}: {str(a)[:40]}")
            raise Both(a)
        assert kind_b == "ok", f"only the restored session raised {b!r}"
        assert plain(a) == plain(b)
        self._note(a)
        return a

    def _note(self, outcome: Any) -> None:
        if isinstance(outcome, Reply):
            if outcome.dropped:
                self.seen.add("command too large")
            if not outcome.final:
                self.seen.add("server package split")
        elif isinstance(outcome, list):
            for e in outcome:
                self.seen.add(f"event {type(e).__name__}")
                for status in getattr(e, "statuses", ()):
                    if status.retried:
                        self.seen.add("418 retried")
                    if status.cmd == "Results":
                        self.seen.add(f"chunked Results failed {status.code}")

    def check(self) -> None:
        """Same visible state, same snapshot; then ``b`` goes through a snapshot."""
        a, b = self.a, self.b
        assert (a.pending_ids, a.in_flight_ids, a.ended) == (
            b.pending_ids,
            b.in_flight_ids,
            b.ended,
        )
        assert (a.pending, a.in_flight) == (b.pending, b.in_flight)
        data = a.snapshot()
        assert b.snapshot() == data
        progress = a._progress  # what the snapshot had to carry (statistics only)
        for name, held in (
            ("a large object", progress.obj is not None),
            ("a 418 retry", progress.retries),
            ("statuses carried over", progress.outbox),
            ("commands not placed yet", a.pending),
            ("a server Cred", a.server_cred),
        ):
            if held:
                self.seen.add(f"snapshot with {name}")
        self.b = Session.restore(data)
        assert self.b.snapshot() == data  # restoring is exact: nothing lost or added
        self.messages += 1
        self.snapshot_sizes.append(len(data))


# ---------------------------------------------------------------- stored commands


def _item(uri: str, data: str | None = None, fmt: str | None = None) -> str:
    meta = f"<Meta><Format xmlns='syncml:metinf'>{fmt}</Format></Meta>" if fmt else ""
    payload = f"<Data>{data}</Data>" if data is not None else ""
    return f"<Item><Target><LocURI>{uri}</LocURI></Target>{meta}{payload}</Item>"


@st.composite
def stored_body(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            [
                "Get",
                "Get",
                "Get",
                "Replace",
                "Add",
                "Add",
                "Delete",
                "Exec",
                "Atomic",
                "Sequence",
                "NoResp",
            ]
        )
    )
    uri = draw(st.sampled_from(NODES))
    size = draw(st.sampled_from([0, 10, 300, 1500, 4000]))
    if kind == "Get":
        query = draw(st.sampled_from(["", "?list=StructData"]))
        body = f"<Get><CmdID>9</CmdID>{_item(uri + query)}</Get>"
    elif kind == "Replace":
        body = f"<Replace><CmdID>1</CmdID>{_item(uri, 'x' * size, 'chr')}</Replace>"
    elif kind == "Add":
        body = f"<Add><CmdID>1</CmdID>{_item(uri, '5', 'int')}</Add>"
    elif kind == "Delete":
        body = f"<Delete><CmdID>1</CmdID>{_item(uri)}</Delete>"
    elif kind == "Exec":
        body = f"<Exec><CmdID>1</CmdID>{_item(uri + '/HostedInstall', 'go')}</Exec>"
    elif kind == "NoResp":
        body = f"<Replace><CmdID>1</CmdID><NoResp/>{_item(uri, 'q')}</Replace>"
    else:
        other = draw(st.sampled_from(NODES))
        body = (
            f"<{kind}><CmdID>1</CmdID><Add><CmdID>2</CmdID>{_item(uri, '1', 'int')}</Add>"
            f"<Replace><CmdID>3</CmdID>{_item(other, 'y' * (size // 4))}</Replace></{kind}>"
        )
    if draw(st.integers(0, 5)) == 0:  # two SyncML commands in one stored command
        body += f"<Get><CmdID>4</CmdID>{_item(draw(st.sampled_from(NODES)))}</Get>"
    return body.encode()


class Queue:
    """The admin's queue: fresh command ids, now and then one offered already."""

    def __init__(self) -> None:
        self.next = 0

    def batch(self, data: st.DataObject, least: int = 0) -> list[Outgoing]:
        out = []
        for _ in range(data.draw(st.integers(least, least + 3), label="batch size")):
            if self.next and data.draw(st.integers(0, 6)) == 0:
                command_id = f"c{data.draw(st.integers(0, self.next - 1))}"
            else:
                command_id = f"c{self.next}"
                self.next += 1
            out.append(Outgoing(command_id, data.draw(stored_body())))
        return out


# ---------------------------------------------------------------- the device


def _status(msg_ref: str, command: Command, code: str, target: str | None = None) -> Command:
    return Command(
        "Status",
        msg_ref=msg_ref,
        cmd_ref=command.cmd_id,
        cmd=command.name,
        data=code,
        target_refs=[target] if target else None,
    )


def _code(data: st.DataObject, command: Command) -> str:
    codes = ["200", "200", "200", "404", "500", "202", "216", "0", "x"]
    if command.name == "Add":
        codes += ["418"] * 6
    return data.draw(st.sampled_from(codes), label=f"status of {command.name}")


def _chunks(
    data: st.DataObject, msg_ref: str, get: Command, wbxml: bool
) -> tuple[list[Command], bool]:
    """A chunked Results for ``get``; True when the chunks stop before the last one."""
    uri = get.items[0].target if get.items else None
    count = data.draw(st.integers(2, 4))
    binary = wbxml and data.draw(st.booleans())
    pieces: list[str | bytes] = []
    for index in range(count):
        size = data.draw(st.integers(1, 400))
        pieces.append(bytes([0x80 + index]) * size if binary else chr(97 + index) * size)
    total = sum(len(p) for p in pieces)
    declared = data.draw(st.sampled_from([total, total, None, total + 7, max(total - 3, 1)]))
    cut = data.draw(st.integers(0, 4)) == 0
    if cut:
        pieces = pieces[:-1]
    out = []
    for index, piece in enumerate(pieces):
        meta: dict[str, str | list[str]] | None = None
        if index == 0 and declared is not None:
            meta = {"Size": str(declared)}
        more = cut or index < len(pieces) - 1
        item = Item(source=uri, meta=meta, data=piece, more_data=more)
        out.append(Command("Results", msg_ref=msg_ref, cmd_ref=get.cmd_id, items=[item]))
    return out, cut


def device_answers(
    data: st.DataObject, reply: Message, wbxml: bool
) -> list[tuple[list[Command], bool]]:
    """The device's next package after ``reply``: statuses (repeated, item-level, missing
    now and then), Results (whole, split over messages, chunked, cut short), its own
    commands, sometimes an abort; as messages (commands, final)."""
    msg_ref = reply.header.msg_id
    first: list[Command] = [
        Command(
            "Status",
            msg_ref=msg_ref,
            cmd_ref="0",
            cmd="SyncHdr",
            data=data.draw(st.sampled_from(["200", "212"])),
            target_refs=[reply.header.target or ""],
            source_refs=[reply.header.source or ""],
        )
    ]
    later: list[list[Command]] = []
    for command in reply.commands:
        if command.name not in ("Status", "Results") and data.draw(st.integers(0, 12)) != 7:
            _answer(data, msg_ref, command, wbxml=wbxml, first=first, later=later)
    _own_commands(data, first, later)
    if not reply.final:
        (later[-1] if later else first).append(Command("Alert", data="1222"))
    messages = [first, *later]
    return [(commands, index == len(messages) - 1) for index, commands in enumerate(messages)]


def _answer(
    data: st.DataObject,
    msg_ref: str,
    command: Command,
    *,
    wbxml: bool,
    first: list[Command],
    later: list[list[Command]],
) -> None:
    """Statuses for one server command in ``first``; the Results of a Get in ``first`` or,
    split or chunked, as ``later`` messages."""
    code = _code(data, command)
    target = command.items[0].target if command.items else None
    item_level = target if data.draw(st.integers(0, 3)) == 0 else None
    first.append(_status(msg_ref, command, code, item_level))
    if data.draw(st.integers(0, 8)) == 5:
        first.append(_status(msg_ref, command, code, item_level))  # a repeat
    for nested in command.commands:
        first.append(_status(msg_ref, nested, _code(data, nested)))
    if command.name != "Get" or not code.startswith("2"):
        return
    how = data.draw(st.sampled_from(["whole", "whole", "none", "split", "chunked", "chunked"]))
    uri = target or ""

    def results(items: list[Item]) -> Command:
        return Command("Results", msg_ref=msg_ref, cmd_ref=command.cmd_id, items=items)

    if how == "whole":
        first.append(results([Item(source=uri, data="v" * data.draw(st.integers(0, 300)))]))
    elif how == "split":
        for index in range(data.draw(st.integers(1, 3))):
            later.append([results([Item(source=f"{uri}/{index}", data="p" * 50)])])
    elif how == "chunked":
        chunks, cut = _chunks(data, msg_ref, command, wbxml)
        later += [[chunk] for chunk in chunks]
        if cut and data.draw(st.booleans()):
            later.append([Command("Alert", data="1226", items=[Item(data="interrupting")])])


def _own_commands(data: st.DataObject, first: list[Command], later: list[list[Command]]) -> None:
    """Now and then a command of the device's own: DevInfo and other nodes, an alert, a
    chunked Replace, an abort, a burst of alerts whose statuses may not fit one reply."""
    extra = data.draw(st.integers(0, 24))
    if extra == 1:
        devinfo = Item(source="./DevInfo/Lang", data="it-IT")
        first.append(Command("Replace", items=[devinfo, Item(source="./Vendor/Own", data="x")]))
    elif extra == 2:
        first.append(Command("Alert", data="1226", items=[Item(data="result")]))
    elif extra == 3:
        size = data.draw(st.integers(1, 200))
        chunk = Item(source="./Vendor/MSFT/Big", data="z" * size, more_data=True)
        later.append([Command("Replace", items=[chunk])])
        later.append([Command("Replace", items=[Item(source="./Vendor/MSFT/Big", data="end")])])
    elif extra == 4:
        first.append(Command("Alert", data="1223"))  # the device aborts
    elif extra == 5:
        first.append(Command("Alert", data="notanumber"))
    elif extra in (6, 7):
        for index in range(data.draw(st.integers(5, 40))):
            first.append(Command("Alert", data="1226", items=[Item(data=f"event {index}")]))


def encode(
    msg_id: int, commands: list[Command], final: bool, *, max_size: int | None, wbxml: bool
) -> bytes:
    meta: dict[str, str | list[str]] | None = (
        {"MaxMsgSize": str(max_size)} if max_size is not None else None
    )
    header = Header(session_id=SESSION, msg_id=str(msg_id), target=SERVER, source=DEVICE, meta=meta)
    numbered = [renumbered(c, index) for index, c in enumerate(commands, 1)]
    return Message(header, numbered, final).encode(wbxml=wbxml)


def package_one() -> list[Command]:
    return [
        Command("Alert", data="1201"),
        Command(
            "Replace",
            items=[
                Item(source="./DevInfo/DevId", data=DEVICE),
                Item(source="./DevInfo/Mod", data="Surface"),
            ],
        ),
    ]


def status_for(command: Command) -> int:
    return 405 if command.name == "Alert" else 200


# ---------------------------------------------------------------- the property


CHAL = {"Type": "syncml:auth-md5", "Format": "b64", "NextNonce": "bm9uY2U="}


class Run:
    """One generated session: the device's messages, the gateway's calls, on a Twin."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.max_size = data.draw(st.sampled_from([None, 1400, 2500, 6000, 20000]), "MaxMsgSize")
        self.wbxml = data.draw(st.booleans(), label="wbxml")
        max_object = data.draw(st.sampled_from([700, 16 * 1024 * 1024]), label="max_object_size")
        self.twin = Twin(max_object_size=max_object)
        self.queue = Queue()
        self.pending: list[tuple[list[Command], bool]] = [(package_one(), True)]
        self.reply: Reply | None = None
        self.msg_id = 0
        self.offer(least=2)

    def offer(self, least: int = 0) -> None:
        batch = self.queue.batch(self.data, least)
        self.twin.call(lambda s: s.offer(batch))

    def message(self) -> bool:
        """One device message and its answer (or refusal); False once the session ended."""
        data = self.data
        if not self.pending:
            assert self.reply is not None
            self.pending = device_answers(data, syncml.decode(self.reply.data), self.wbxml)
        commands, final = self.pending.pop(0)
        if self.msg_id and data.draw(st.integers(0, 30)) == 17:
            msg_id = self.msg_id  # the same MsgID again: refused as a replay
        else:
            self.msg_id = msg_id = self.msg_id + 1
        raw = encode(msg_id, commands, final, max_size=self.max_size, wbxml=self.wbxml)
        how = data.draw(st.sampled_from(["answer"] * 8 + ["refuse", "refuse after receive"]))
        twin, wbxml = self.twin, self.wbxml
        try:
            if how == "refuse":
                # Refused before receive (credentials): the device sends it again.
                to = syncml.decode(raw)
                self.reply = twin.call(
                    lambda s: s.reply(header_status=401, chal=CHAL, wbxml=wbxml, to=to)
                )
                self.pending.insert(0, (commands, final))
                twin.check()
                return True
            twin.call(lambda s: s.receive(syncml.decode(raw), status_for=status_for))
        except Both as both:
            if not isinstance(both.error, SessionError):
                raise
            twin.check()
            return True  # answered 400: the device goes on with its next message
        if how == "refuse after receive":
            self.reply = twin.call(lambda s: s.reply(header_status=407, chal=CHAL, wbxml=wbxml))
            self.pending.insert(0, (commands, final))
            twin.check()
            return True
        self.gateway_turn(final)
        twin.check()
        return not self.reply.ended

    def gateway_turn(self, final: bool) -> None:
        """What the driver does between receive and reply: offer, forget, set its Cred."""
        data, twin, msg_id = self.data, self.twin, self.msg_id
        if final:
            self.offer()
        if data.draw(st.integers(0, 9)) == 3:
            forgotten = [f"c{i}" for i in range(self.queue.next) if i % 2]
            twin.call(lambda s: s.forget(forgotten))
        if data.draw(st.integers(0, 4)) == 3:
            cred = ({"Type": "syncml:auth-md5", "Format": "b64"}, f"digest{msg_id}")

            def set_cred(s: Session) -> None:
                s.server_cred = cred

            twin.call(set_cred)
        more = data.draw(st.integers(0, 5)) == 3
        status = 212 if msg_id == 1 else 200
        wbxml = self.wbxml
        self.reply = twin.call(lambda s: s.reply(header_status=status, wbxml=wbxml, more=more))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_a_session_restored_after_every_message_answers_like_the_original(
    data: st.DataObject,
) -> None:
    run = Run(data)
    try:
        for _ in range(data.draw(st.integers(2, 24), label="messages")):
            if not run.message():
                break
    except Both:
        event("stopped by an error both sessions raised")
    event(f"messages: {run.twin.messages // 4 * 4}+")
    for name in sorted(run.twin.seen):
        event(name)


# ---------------------------------------------------------------- the format


def _session_in_flight() -> Session:
    session = Session(device_id=DEVICE, session_id=SESSION, server_uri=SERVER)
    session.offer(
        [
            Outgoing("get", f"<Get><CmdID>1</CmdID>{_item('./DevDetail/SwV')}</Get>".encode()),
            Outgoing("add", f"<Add><CmdID>1</CmdID>{_item('./Vendor/MSFT/A', '1')}</Add>".encode()),
        ]
    )
    session.receive(syncml.decode(encode(1, package_one(), True, max_size=None, wbxml=False)))
    session.server_cred = ({"Type": "syncml:auth-md5", "Format": "b64"}, "ZGlnZXN0")
    session.reply(header_status=212)
    return session


def test_snapshot_is_refused_between_receive_and_reply() -> None:
    session = _session_in_flight()
    session.receive(syncml.decode(encode(2, [], True, max_size=None, wbxml=False)))
    with pytest.raises(RuntimeError, match="reply"):
        session.snapshot()
    session.reply()
    assert Session.restore(session.snapshot()).ended == session.ended


def test_snapshot_keeps_what_is_in_flight_and_the_server_cred() -> None:
    session = _session_in_flight()
    restored = Session.restore(session.snapshot())
    assert restored.in_flight_ids == ("get", "add")
    assert restored.server_cred == session.server_cred
    assert (restored.device_id, restored.session_id) == (DEVICE, SESSION)
    # A command offered again is still known: not sent twice.
    restored.offer([Outgoing("get", b"<Get><CmdID>1</CmdID></Get>")])
    assert restored.pending == 0


def test_unreadable_snapshots_are_refused() -> None:
    data = _session_in_flight().snapshot()
    for bad in (b"", b"\xc1", b"garbage", data[: len(data) // 2], msgspec.msgpack.encode([1])):
        with pytest.raises(SnapshotError, match="damaged"):
            Session.restore(bad)
    future = msgspec.msgpack.encode([SNAPSHOT_VERSION + 1, "whatever"])
    with pytest.raises(SnapshotError, match=f"format {SNAPSHOT_VERSION + 1}"):
        Session.restore(future)
