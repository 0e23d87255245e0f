"""A sans-IO OMA-DM (SyncML 1.2) server session: device messages in, events and replies out.

The driver owns HTTP, storage and authentication; a :class:`Session` owns one OMA-DM
session's protocol state: which stored commands went out in which message, the statuses
and results coming back, large objects being reassembled, and when the session is over.
One HTTP request is one device message::

    message = syncml.decode(body)                      # SessionError -> HTTP 400
    if not authenticated:                              # see mdmgate.windows.auth
        reply = session.reply(header_status=401, chal=auth.challenge(nonce), to=message)
    else:
        events = session.receive(message)              # DeviceInfo, CommandAnswered, ...
        session.offer(stored_commands)                 # FIFO, each sent at most once
        reply = session.reply(wbxml=body_was_wbxml)
    # send reply.data; mark reply.sent as sent and reply.dropped as failed;
    # forget the session when reply.ended

Authenticate *before* calling :meth:`Session.receive`. A refused message is answered with
``reply(header_status=401 or 407, chal=..., to=message)`` and never touches the session. If
``receive`` was called anyway, a non-2xx ``reply`` rolls the session back to before that
``receive`` (its events must then be ignored). A refusal gives the SyncHdr and every
command of the message the same status (nothing executed), with Final.

Between two device messages the whole session fits in :meth:`Session.snapshot` (compact
bytes: msgpack of plain data, versioned by :data:`SNAPSHOT_VERSION`), which
:meth:`Session.restore` turns back into a session that answers every later message exactly
as the original would; so a driver can keep sessions in a database and let any process
answer any message (``session = Session.restore(saved)`` ... ``saved = session.snapshot()``).
Commands queued and not yet placed stay in the snapshot's bytes until a reply places them,
so a long queue costs a copy per message, not a parse.

Stored commands (:class:`Outgoing`) hold the XML of one or more SyncML commands as an
admin stored them; their CmdIDs are placeholders, replaced by fresh ones per message. The
session places a stored command's SyncML commands whole or not at all, in FIFO order, while
they fit in the device's MaxMsgSize. A stored command that cannot fit even in an otherwise
empty message is dropped and reported in :attr:`Reply.dropped`, not in a later
``receive``: the session may end with that very reply.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from mdmgate import syncml
from mdmgate.errors import MdmgateError, SyncMLDecodeError
from mdmgate.syncml import Command, Header, Item, Message, MessageBuilder

__all__ = [
    "CommandAnswered",
    "CommandTooLarge",
    "DeviceAlert",
    "DeviceCommand",
    "DeviceInfo",
    "Event",
    "Outgoing",
    "PartStatus",
    "Reply",
    "Session",
    "SessionAborted",
    "SessionError",
    "SnapshotError",
    "opens_session",
]

# Alert codes (OMA-DM 1.2).
SERVER_INITIATED = 1200
CLIENT_INITIATED = 1201
NEXT_MESSAGE = 1222
SESSION_ABORT = 1223
END_OF_DATA_MISSING = 1225

# Status codes the session chooses.
OK = 200
CHUNK_BUFFERED = 213
BAD_REQUEST = 400
ALREADY_EXISTS = 418
TOO_LARGE = 413
SIZE_MISMATCH = 424

_DEVINFO = "./DevInfo/"

# A minimal message around a stored body, so the codec can parse the fragment.
_WRAP_HEAD = (
    b'<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>'
    b"<SessionID>0</SessionID><MsgID>1</MsgID><Target><LocURI>stored</LocURI></Target>"
    b"<Source><LocURI>stored</LocURI></Source></SyncHdr><SyncBody>"
)
_WRAP_TAIL = b"</SyncBody></SyncML>"


class SessionError(MdmgateError):
    """A device message that cannot belong to this session (answer it with HTTP 400)."""


class SnapshotError(MdmgateError, ValueError):
    """A snapshot :meth:`Session.restore` cannot read: another format version, or damaged."""


@dataclass(frozen=True)
class Outgoing:
    """A stored command: ``body`` is the XML of one or more SyncML commands."""

    command_id: str
    body: bytes


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class DeviceInfo:
    """``./DevInfo/<Name>`` values the device sent (Replace, Add or Results), by name."""

    values: dict[str, str]


@dataclass(frozen=True)
class DeviceAlert:
    """A device Alert other than 1222 (next message) and 1223 (abort): 1200, 1201, 1224,
    1226, ... ``items`` as sent."""

    code: int
    items: tuple[Item, ...]


@dataclass(frozen=True)
class DeviceCommand:
    """Any other command the device sent (not a Status, or Results the session matched to
    a Get); large objects come reassembled. The ``./DevInfo/*`` items of an Add or Replace
    come as :class:`DeviceInfo` instead: such a command comes here with its other items
    only, and not at all when it has none."""

    command: Command


class PartStatus(msgspec.Struct, frozen=True, array_like=True):
    """One device Status for one SyncML command of a stored command (a frozen value, as
    the events are; a msgspec Struct, so that sessions snapshot it as it is).

    ``code`` is the status code (0 with ``numeric`` False when the device's Data was no
    number; then ``data`` holds it), ``target`` the Status's first TargetRef or the
    command's first target LocURI, ``data`` the ``msft:originalerror`` HRESULT or the Status
    Item's data when present. Only 200-299 are success; any other code (0, 1xx, ...) is
    the device's error.
    A chunked Results the session could not reassemble adds ``cmd="Results"`` with code
    413 (larger than ``max_object_size``), 424 (size mismatch) or 1225 (chunks stopped).
    """

    cmd: str
    code: int
    target: str | None
    data: str | None
    numeric: bool = True
    #: A 418 on an Add that the session retries as a Replace: the Replace's status stands
    #: in for it. A 418 not retried (an Add inside Atomic or Sequence) is an error.
    retried: bool = False


@dataclass(frozen=True)
class CommandAnswered:
    """Every SyncML command of a stored command has its Status; ``results`` holds the
    Results items of its Gets (large objects reassembled), in arrival order."""

    command_id: str
    statuses: tuple[PartStatus, ...]
    results: tuple[Item, ...]


@dataclass(frozen=True)
class CommandTooLarge:
    """A stored command that cannot fit an otherwise empty message under MaxMsgSize; it
    was dropped without being sent."""

    command_id: str


@dataclass(frozen=True)
class SessionAborted:
    """The device sent Alert 1223: the next reply carries statuses only and ends the
    session."""


# CommandTooLarge comes in Reply.dropped, never from receive(); it is here so a driver can
# handle both alike.
Event = (
    DeviceInfo | DeviceAlert | DeviceCommand | CommandAnswered | CommandTooLarge | SessionAborted
)


@dataclass(frozen=True)
class Reply:
    """One server message.

    ``sent`` names the stored commands placed (whole) in it for the first time, ``dropped``
    those given up as too large, ``ended`` says the session is over (the message carries
    statuses only and answers a Final device message, or an abort).
    """

    data: bytes
    sent: tuple[str, ...]
    final: bool
    ended: bool
    dropped: tuple[CommandTooLarge, ...] = ()


# ---------------------------------------------------------------- internal state

# A placed SyncML command: (server MsgID, CmdID), what the device's MsgRef/CmdRef name.
_Ref = tuple[str, str]


class _Entry:
    """A stored command waiting to be placed, or the Replace standing in for an Add that
    got 418 (``replaces`` is that Add's ref).

    A restored session holds its waiting commands as the snapshot's bytes and reads them
    only when it places them: a long queue costs a copy per message, not a parse."""

    __slots__ = ("_commands", "_raw", "command_id", "replaces")

    def __init__(
        self,
        command_id: str,
        commands: tuple[Command, ...] | None,
        replaces: _Ref | None = None,
        *,
        raw: msgspec.Raw | None = None,
    ) -> None:
        self.command_id = command_id
        self.replaces = replaces
        self._commands = commands
        self._raw = raw

    @property
    def commands(self) -> tuple[Command, ...]:
        commands = self._commands
        if commands is None:
            assert self._raw is not None
            commands = tuple(_command_of(c) for c in _COMMANDS.decode(self._raw))
            # From now on the commands are the state (placing them numbers them).
            self._commands, self._raw = commands, None
        return commands

    def raw(self) -> msgspec.Raw:
        if self._raw is not None:
            return self._raw
        assert self._commands is not None
        return msgspec.Raw(_ENCODER.encode([_command_state(c) for c in self._commands]))


class _Part(msgspec.Struct, array_like=True):
    """A placed SyncML command (nested ones too) waiting for its Status."""

    command_id: str
    #: The command's name and first target LocURI: what its Status reports.
    name: str
    target: str | None
    #: An Add's items and meta, which a 418 retries as a Replace (None for other commands).
    add: _CommandState | None = None
    answered: bool = False
    has_results: bool = False
    # A Get answered 2xx whose Results have not come yet.
    awaiting_results: bool = False
    # 418 on an Add: the Replace retry's status stands in; ``retry`` once it is placed.
    superseded: bool = False
    retry: _Ref | None = None
    # Its chunked Results failed; reported unless a retransmission arrives in the package.
    failure: PartStatus | None = None


class _Answer(msgspec.Struct, array_like=True):
    command_id: str
    required: list[_Ref] = []
    refs: list[_Ref] = []
    statuses: list[PartStatus] = []
    # The Results items of its Gets (as plain data until the answer is complete).
    results: list[_ItemState] = []
    # Chunked Results for its Gets still being reassembled.
    objects: int = 0


class _LargeObject(msgspec.Struct, array_like=True):
    kind: str
    loc: str
    first: _ItemState
    chunks: list[Any]  # str | bytes
    size: int
    declared: int | None
    # Complete items that preceded the chunked one in its command.
    held: list[_ItemState]
    # The Get a chunked Results answers.
    ref: _Ref | None
    # MsgRef/CmdRef of the command that brought the first chunk.
    origin: _Ref
    # Refused with 413: later chunks are answered 413 and thrown away.
    refused: bool = False


@dataclass
class _Progress:
    """Everything ``receive`` changes, so a refused message can be rolled back."""

    last_msg_id: int | None = None
    max_msg_size: int | None = None
    parts: dict[_Ref, _Part] = field(default_factory=dict)
    answers: dict[str, _Answer] = field(default_factory=dict)
    seen: set[tuple[str, ...]] = field(default_factory=set)
    retries: list[_Entry] = field(default_factory=list)
    obj: _LargeObject | None = None
    # Statuses and alerts owed to the device, in order (carried over when a reply is full).
    outbox: list[Command] = field(default_factory=list)
    alerts: list[Command] = field(default_factory=list)
    aborted: bool = False

    def clone(self) -> _Progress:
        obj = self.obj
        return _Progress(
            last_msg_id=self.last_msg_id,
            max_msg_size=self.max_msg_size,
            parts={ref: msgspec.structs.replace(part) for ref, part in self.parts.items()},
            answers={
                key: msgspec.structs.replace(
                    a,
                    required=list(a.required),
                    refs=list(a.refs),
                    statuses=list(a.statuses),
                    results=list(a.results),
                )
                for key, a in self.answers.items()
            },
            seen=set(self.seen),
            retries=list(self.retries),
            obj=None
            if obj is None
            else msgspec.structs.replace(obj, chunks=list(obj.chunks), held=list(obj.held)),
            outbox=list(self.outbox),
            alerts=list(self.alerts),
            aborted=self.aborted,
        )


@dataclass(frozen=True)
class _Incoming:
    """The device message being answered."""

    session_id: str
    msg_id: str
    target: str | None
    source: str | None
    final: bool
    asks_next: bool
    # (CmdID, name) of each command owed a Status, in order (what a refusal answers).
    commands: tuple[tuple[str, str], ...] = ()


@dataclass
class _Collected:
    items: list[Item]
    pending: bool = False
    failed: int | None = None


@dataclass
class _Composed:
    data: bytes
    fixed_sent: int
    placed: list[tuple[_Entry, list[str]]]
    dropped: list[_Entry]
    final: bool


_Mode = Literal["place", "ask", "abort"]


# ---------------------------------------------------------------- session


class Session:
    """One OMA-DM session with one device. Not thread-safe; keep one per device session."""

    def __init__(
        self,
        *,
        device_id: str,
        session_id: str,
        server_uri: str,
        default_max_msg_size: int = 512 * 1024,
        max_object_size: int = 16 * 1024 * 1024,
    ) -> None:
        self._device_id = device_id
        self._session_id = session_id
        self._server_uri = server_uri
        self._default_max_msg_size = default_max_msg_size
        self._max_object_size = max_object_size
        self._msg_id = 1
        self._device_source: str | None = None
        self._fresh: deque[_Entry] = deque()
        self._known: set[str] = set()
        self._progress = _Progress()
        self._saved: _Progress | None = None
        self._incoming: _Incoming | None = None
        self._ended = False
        #: The server's own ``Cred`` (Meta, Data) for the SyncHdr of the next reply, when
        #: the device requires the server to authenticate; the driver sets it per message.
        self.server_cred: tuple[Mapping[str, str], str] | None = None

    # ------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """The whole session as compact bytes (msgpack of plain data, versioned), for
        :meth:`restore` in any process: take it after a :meth:`reply` (or a refusal), before
        the next :meth:`receive`; the restored session answers every later message exactly
        as this one would. :attr:`server_cred` is kept too. Raises RuntimeError between
        ``receive`` and ``reply``."""
        if self._incoming is not None:
            raise RuntimeError("a device message awaits its reply(): snapshot after replying")
        p = self._progress
        cred = self.server_cred
        state = _SessionState(
            device_id=self._device_id,
            session_id=self._session_id,
            server_uri=self._server_uri,
            default_max_msg_size=self._default_max_msg_size,
            max_object_size=self._max_object_size,
            msg_id=self._msg_id,
            device_source=self._device_source,
            ended=self._ended,
            server_cred=None if cred is None else (dict(cred[0]), cred[1]),
            fresh=[_EntryState(e.command_id, e.raw(), e.replaces) for e in self._fresh],
            known=sorted(self._known),
            last_msg_id=p.last_msg_id,
            max_msg_size=p.max_msg_size,
            parts=list(p.parts.items()),
            answers=list(p.answers.values()),
            seen=sorted(p.seen),
            retries=[_EntryState(e.command_id, e.raw(), e.replaces) for e in p.retries],
            obj=p.obj,
            outbox=[_command_state(c) for c in p.outbox],
            alerts=[_command_state(c) for c in p.alerts],
            aborted=p.aborted,
        )
        return _ENCODER.encode(state)

    @classmethod
    def restore(cls, data: bytes) -> Session:
        """The session :meth:`snapshot` saved. Raises :class:`SnapshotError` for bytes it
        cannot read (a snapshot of another format version, or damaged)."""
        try:
            state = _DECODER.decode(data)
            session = cls(
                device_id=state.device_id,
                session_id=state.session_id,
                server_uri=state.server_uri,
                default_max_msg_size=state.default_max_msg_size,
                max_object_size=state.max_object_size,
            )
            session._msg_id = state.msg_id
            session._device_source = state.device_source
            session._ended = state.ended
            session.server_cred = state.server_cred
            session._fresh = deque(_entry_of(e) for e in state.fresh)
            session._known = set(state.known)
            session._progress = _Progress(
                last_msg_id=state.last_msg_id,
                max_msg_size=state.max_msg_size,
                parts=dict(state.parts),
                answers={a.command_id: a for a in state.answers},
                seen=set(state.seen),
                retries=[_entry_of(e) for e in state.retries],
                obj=state.obj,
                outbox=[_command_of(c) for c in state.outbox],
                alerts=[_command_of(c) for c in state.alerts],
                aborted=state.aborted,
            )
        except msgspec.ValidationError as exc:
            version = _snapshot_version(data)
            if version is not None and version != SNAPSHOT_VERSION:
                raise SnapshotError(
                    f"OMA-DM session snapshot of format {version}; this gateway reads"
                    f" {SNAPSHOT_VERSION}"
                ) from None
            raise SnapshotError(f"damaged OMA-DM session snapshot: {exc}") from None
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            raise SnapshotError(f"damaged OMA-DM session snapshot: {exc}") from None
        return session

    # ------------------------------------------------------------ public API

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def pending(self) -> int:
        """Stored commands offered but not yet placed in a message."""
        return len(self._fresh)

    @property
    def in_flight(self) -> int:
        """Stored commands placed in a message and not yet fully answered."""
        return len(self._progress.answers)

    @property
    def pending_ids(self) -> tuple[str, ...]:
        """The command_ids counted by :attr:`pending`, in FIFO order."""
        return tuple(entry.command_id for entry in self._fresh)

    @property
    def in_flight_ids(self) -> tuple[str, ...]:
        """The command_ids counted by :attr:`in_flight`: unanswered when the session ends."""
        return tuple(self._progress.answers)

    @property
    def ended(self) -> bool:
        return self._ended

    def forget(self, command_ids: Iterable[str]) -> None:
        """Lets stored commands the device answered in this session be offered again in it
        (a device that refused them unexecuted because the server had not authenticated)."""
        self._known.difference_update(command_ids)

    def offer(self, outgoing: Iterable[Outgoing]) -> None:
        """Queues stored commands (FIFO). A command_id already offered in this session is
        skipped, so nothing is sent twice. Raises ValueError, queueing none of the batch,
        for a body that is not one or more SyncML commands."""
        if self._ended:
            raise RuntimeError("the session has ended")
        batch: list[_Entry] = []
        ids: set[str] = set()
        for item in outgoing:
            if item.command_id in self._known or item.command_id in ids:
                continue
            ids.add(item.command_id)
            batch.append(_Entry(item.command_id, _parse_body(item.command_id, item.body)))
        self._known |= ids
        self._fresh.extend(batch)

    def receive(
        self, message: Message, *, status_for: Callable[[Command], int] | None = None
    ) -> list[Event]:
        """Takes one (authenticated) device message; returns what it says, in order, with
        :class:`CommandAnswered` events last. ``status_for`` chooses the Status code for
        each :class:`DeviceCommand` (200 without it). Raises :class:`SessionError` for a
        message that cannot belong to this session."""
        if self._ended:
            raise SessionError("the session has ended; the device must start a new one")
        if self._incoming is not None:
            raise RuntimeError("the previous device message has not been answered: call reply()")
        header = message.header
        msg_id = self._check(header)
        last = self._progress.last_msg_id
        if last is not None and msg_id <= last:
            raise SessionError(
                f"MsgID {header.msg_id} does not follow {last}: a replayed or reordered message"
            )
        saved = self._progress.clone()
        try:
            events = self._take(message, msg_id, status_for)
        except BaseException:
            self._progress = saved
            raise
        self._saved = saved
        self._device_source = header.source
        self._incoming = _Incoming(
            session_id=header.session_id,
            msg_id=header.msg_id,
            target=header.target,
            source=header.source,
            final=message.final,
            asks_next=any(
                c.name == "Alert" and _alert_code(c) == NEXT_MESSAGE for c in message.commands
            ),
            commands=_owed(message),
        )
        return events

    def reply(
        self,
        *,
        header_status: int = OK,
        chal: dict[str, str] | None = None,
        wbxml: bool = False,
        to: Message | None = None,
        more: bool = False,
    ) -> Reply:
        """The server message answering the last device message.

        ``header_status`` is the SyncHdr status (200, or 212 once authenticated for the
        session); ``chal`` goes on it (a ``NextNonce`` for the next message, say). A non-2xx
        status (401/407 with ``chal``, 403) gives the SyncHdr and every command of that
        message the same status, with Final, and acts on nothing in it: if ``receive``
        took it, the session is rolled back.
        Refusing a message that ``receive`` never saw, pass it as ``to`` so the status
        refers to it exactly; without ``to`` the session uses what it knows (its device id,
        and the MsgID after the last one it accepted, 1 at first).
        ``wbxml`` chooses the encoding: answer in the one the device used. ``more`` says
        the queue holds commands not offered yet: a message carrying commands then has no
        Final, so the package goes on until the queue is empty. Raises
        :class:`SessionError` when the device's MaxMsgSize cannot hold even the SyncHdr
        status."""
        if self._ended:
            raise RuntimeError("the session has ended")
        if not 200 <= header_status < 300:
            return self._refuse(header_status, chal, wbxml=wbxml, to=to)
        incoming = self._incoming
        if incoming is None:
            raise RuntimeError("reply() answers a device message: call receive() first")
        p = self._progress
        header = self._header(incoming)
        size = p.max_msg_size or self._default_max_msg_size
        fixed = [_header_status(incoming, header_status, chal), *p.outbox]
        mode: _Mode
        if p.aborted:
            mode = "abort"  # statuses only: no alerts, no commands (OMA-DM session abort)
        elif incoming.final or incoming.asks_next:
            mode = "place"
            fixed += p.alerts
        else:
            mode = "ask"  # the device's package goes on: statuses and Alert 1222 only
            fixed += p.alerts
        entries = [*p.retries, *self._fresh] if mode == "place" else []
        composed = self._compose(
            header, size, wbxml=wbxml, fixed=fixed, entries=entries, mode=mode, more=more
        )
        if composed.fixed_sent == 0:
            raise SessionError(f"the device's MaxMsgSize {size} cannot hold even a status")
        p.outbox = fixed[composed.fixed_sent :] if mode != "abort" else []
        p.alerts = []
        sent = self._record(composed.placed)
        dropped = self._drop(composed.dropped)
        statuses_only = (
            mode == "place"
            and composed.final
            and not composed.placed
            and all(c.name == "Status" for c in fixed)
        )
        ended = mode == "abort" or (incoming.final and statuses_only)
        self._msg_id += 1
        self._incoming = None
        self._saved = None
        self._ended = ended
        return Reply(
            data=composed.data, sent=sent, final=composed.final, ended=ended, dropped=dropped
        )

    # ------------------------------------------------------------ receiving

    def _check(self, header: Header) -> int:
        if header.session_id != self._session_id:
            raise SessionError(
                f"SessionID {header.session_id!r} is not this session's ({self._session_id!r})"
            )
        try:
            msg_id = int(header.msg_id)
        except ValueError:
            raise SessionError(f"MsgID {header.msg_id!r} is not a number") from None
        if msg_id < 1:
            raise SessionError(f"MsgID {header.msg_id!r} is not positive")
        if self._device_source is not None and header.source != self._device_source:
            raise SessionError(
                f"Source {header.source!r} differs from this session's ({self._device_source!r})"
            )
        return msg_id

    def _take(
        self, message: Message, msg_id: int, status_for: Callable[[Command], int] | None
    ) -> list[Event]:
        p = self._progress
        p.last_msg_id = msg_id
        if message.header.max_msg_size is not None:
            p.max_msg_size = message.header.max_msg_size
        events: list[Event] = []
        for command in message.commands:
            self._handle(command, message.header.msg_id, events, status_for)
        if p.obj is not None and (message.final or p.aborted):
            # The package ended without the last chunk.
            self._interrupt(quiet=p.aborted)
        events.extend(self._completed(final=message.final or p.aborted))
        return events

    def _handle(
        self,
        command: Command,
        msg_id: str,
        events: list[Event],
        status_for: Callable[[Command], int] | None,
    ) -> None:
        p = self._progress
        name = command.name
        if name == "Status":
            self._on_status(command)
            return
        obj = p.obj
        if obj is not None and not _continues(obj, command):
            code = _alert_code(command) if name == "Alert" else None
            if code != NEXT_MESSAGE:
                self._interrupt(quiet=code == SESSION_ABORT)
        if name == "Alert":
            code = self._on_alert(command, events)
        elif name == "Results":
            code = self._on_results(command, events)
        else:
            code = self._on_command(command, events, status_for)
        self._status(command, msg_id, code)

    def _status(self, command: Command, msg_id: str, code: int) -> None:
        if not command.cmd_id:
            return  # nothing to refer to: the encoder needs a CmdRef
        self._progress.outbox.append(
            Command(
                "Status", msg_ref=msg_id, cmd_ref=command.cmd_id, cmd=command.name, data=str(code)
            )
        )

    def _on_alert(self, command: Command, events: list[Event]) -> int:
        code = _alert_code(command)
        if code == NEXT_MESSAGE:
            return OK
        if code == SESSION_ABORT:
            self._progress.aborted = True
            events.append(SessionAborted())
            return OK
        if code is None:
            return BAD_REQUEST
        events.append(DeviceAlert(code=code, items=tuple(command.items)))
        return OK

    def _on_results(self, command: Command, events: list[Event]) -> int:
        p = self._progress
        obj = p.obj
        continuing = obj is not None and _continues(obj, command)
        ref: _Ref | None
        if continuing and obj is not None:
            ref = obj.ref
        else:
            ref = _ref_of(command)
            first = command.items[0] if command.items else None
            key = ("Results", *ref, _loc(first) if first is not None else "")
            if key in p.seen:
                return OK  # a repeat: answered, not acted on twice
            p.seen.add(key)
        part = p.parts.get(ref) if ref is not None else None
        collected = self._collect(command, ref if part is not None else None)
        if collected.failed is not None:
            return collected.failed
        if collected.items:
            info, _ = _split_devinfo(collected.items)
            if part is not None:
                results = self._progress.answers[part.command_id].results
                results.extend(_item_state(i) for i in collected.items)
                part.has_results = True
                part.awaiting_results = False
                part.failure = None
            elif len(info) < len(collected.items):
                events.append(DeviceCommand(_with_items(command, collected.items)))
            if info:
                events.append(DeviceInfo(info))
        return CHUNK_BUFFERED if collected.pending else OK

    def _on_command(
        self,
        command: Command,
        events: list[Event],
        status_for: Callable[[Command], int] | None,
    ) -> int:
        collected = self._collect(command, None)
        if collected.failed is not None:
            return collected.failed
        if collected.pending:
            return CHUNK_BUFFERED
        items = collected.items
        if command.name in ("Replace", "Add"):
            # Package 1 of real devices mixes ./DevInfo/* with other nodes (a Dell laptop
            # sends DMClient/HWDevID in the same Replace): report both.
            info, rest = _split_devinfo(items)
            if info:
                events.append(DeviceInfo(info))
                items = rest
                if not items:
                    return OK
        whole = command if _same_items(items, command.items) else _with_items(command, items)
        events.append(DeviceCommand(whole))
        return status_for(whole) if status_for is not None else OK

    def _on_status(self, command: Command) -> None:
        p = self._progress
        ref: _Ref = (command.msg_ref or "", command.cmd_ref or "")
        key = ("Status", *ref, "\0".join(command.target_refs), "\0".join(command.source_refs))
        if key in p.seen:
            return
        p.seen.add(key)
        part = p.parts.get(ref)
        if part is None:
            return  # our SyncHdr, our own alerts, or something already answered
        code, data, numeric = _status_code(command)
        answer = p.answers[part.command_id]
        target = command.target_refs[0] if command.target_refs else part.target
        retry = (
            code == ALREADY_EXISTS
            and part.name == "Add"
            and ref in answer.required
            and not part.superseded
        )
        answer.statuses.append(
            PartStatus(
                cmd=command.cmd or part.name,
                code=code,
                target=target,
                data=data,
                numeric=numeric,
                retried=retry,
            )
        )
        if retry:
            self._retry_as_replace(ref, part, command)
        if part.answered:
            return  # a further item-level status for the same command
        part.answered = True
        if part.name == "Get" and 200 <= code < 300 and not part.has_results:
            part.awaiting_results = True

    def _retry_as_replace(self, ref: _Ref, part: _Part, status: Command) -> None:
        # Retry only the items the 418 names, when it names any.
        wanted = set(status.target_refs)
        add = part.add
        assert add is not None  # a retry is for an Add
        items = [_item_of(i) for i in add.items if not wanted or i.target in wanted]
        if not items:
            items = [_item_of(i) for i in add.items]
        retry = Command("Replace", items=items, meta=add.meta)
        part.superseded = True
        self._progress.retries.append(_Entry(part.command_id, (retry,), replaces=ref))

    # ------------------------------------------------------------ large objects

    def _collect(self, command: Command, ref: _Ref | None) -> _Collected:
        """Runs a command's items through reassembly: the complete items, whether one is
        still buffered, or the failure code of one that was dropped."""
        p = self._progress
        out = _Collected(items=[])
        items = command.items
        for index, item in enumerate(items):
            obj = p.obj
            if obj is not None and index == 0 and _continues(obj, command):
                self._chunk(obj, item, out)
                continue
            if not item.more_data:
                out.items.append(item)
                continue
            if index != len(items) - 1:
                # Only a command's last item may be chunked (OMA-DM large objects).
                return _Collected(items=[], failed=BAD_REQUEST)
            self._start(command, item, ref, out)
        return out

    def _start(self, command: Command, item: Item, ref: _Ref | None, out: _Collected) -> None:
        p = self._progress
        declared = _declared_size(item)
        obj = _LargeObject(
            kind=command.name,
            loc=_loc(item),
            first=_item_state(item),
            chunks=[],
            size=0,
            declared=declared,
            held=[_item_state(i) for i in out.items],
            ref=ref,
            origin=_ref_of(command),
        )
        out.items = []
        p.obj = obj
        if ref is not None:
            p.answers[p.parts[ref].command_id].objects += 1
        if declared is not None and declared > self._max_object_size:
            self._refuse_object(obj, out)
            return
        self._chunk(obj, item, out)

    def _chunk(self, obj: _LargeObject, item: Item, out: _Collected) -> None:
        p = self._progress
        last = not item.more_data
        if obj.refused:
            out.failed = TOO_LARGE
            if last:
                p.obj = None
            return
        data = item.data if item.data is not None else ""
        obj.size += len(data.encode()) if isinstance(data, str) else len(data)
        if obj.size > self._max_object_size:
            self._refuse_object(obj, out)
            if last:
                p.obj = None
            return
        # Past the declared Size: keep reading to the last chunk, then answer 424.
        if obj.declared is None or obj.size <= obj.declared:
            obj.chunks.append(data)
        if not last:
            out.pending = True
            return
        p.obj = None
        if obj.declared is not None and obj.size != obj.declared:
            out.failed = SIZE_MISMATCH
            self._object_failed(obj, SIZE_MISMATCH, "size mismatch")
            return
        out.items.extend(_item_of(i) for i in obj.held)
        out.items.append(_assembled(obj))
        if obj.ref is not None:
            p.answers[p.parts[obj.ref].command_id].objects -= 1

    def _refuse_object(self, obj: _LargeObject, out: _Collected) -> None:
        obj.refused = True
        obj.chunks.clear()
        obj.held.clear()
        out.failed = TOO_LARGE
        out.pending = False
        self._object_failed(obj, TOO_LARGE, "larger than the session's max_object_size")

    def _object_failed(self, obj: _LargeObject, code: int, why: str) -> None:
        p = self._progress
        # The device may retransmit the whole object: its first chunk is no repeat then.
        p.seen.discard(("Results", *obj.origin, obj.loc))
        if obj.ref is None:
            return
        part = p.parts[obj.ref]
        p.answers[part.command_id].objects -= 1
        part.failure = PartStatus(cmd="Results", code=code, target=obj.loc, data=why)
        obj.ref = None

    def _interrupt(self, *, quiet: bool) -> None:
        """Drops an object whose last chunk never came; tells the device with Alert 1225."""
        p = self._progress
        obj = p.obj
        if obj is None:
            return
        p.obj = None
        if obj.refused:
            return  # already refused with 413
        self._object_failed(obj, END_OF_DATA_MISSING, "end of data for the chunked object missing")
        if not quiet:
            first = obj.first
            p.alerts.append(
                Command(
                    "Alert",
                    data=str(END_OF_DATA_MISSING),
                    items=[Item(target=first.target, source=first.source)],
                )
            )

    def _completed(self, *, final: bool) -> Iterator[CommandAnswered]:
        p = self._progress
        for command_id, answer in list(p.answers.items()):
            if answer.objects:
                continue
            if not all(self._part_done(ref) for ref in answer.required):
                continue
            # A successful Get waits for the end of the device's package: its Results may
            # go on over several messages (a big StructData inventory does).
            if not final and any(
                p.parts[r].awaiting_results or (p.parts[r].name == "Get" and p.parts[r].has_results)
                for r in answer.refs
            ):
                continue
            del p.answers[command_id]
            failures = [part.failure for r in answer.refs if (part := p.parts.pop(r)).failure]
            results = tuple(_item_of(i) for i in answer.results)
            yield CommandAnswered(command_id, (*answer.statuses, *failures), results)

    def _part_done(self, ref: _Ref) -> bool:
        part = self._progress.parts[ref]
        if part.superseded:
            return part.retry is not None and self._part_done(part.retry)
        return part.answered

    # ------------------------------------------------------------ replying

    def _header(self, incoming: _Incoming) -> Header:
        cred = self.server_cred
        cred_meta: dict[str, str | list[str]] | None = dict(cred[0]) if cred else None
        cred_data = cred[1] if cred else None
        return Header(
            session_id=incoming.session_id,
            msg_id=str(self._msg_id),
            target=incoming.source or self._device_id,
            source=self._server_uri,
            cred_meta=cred_meta,
            cred_data=cred_data,
        )

    def _refuse(
        self, header_status: int, chal: dict[str, str] | None, *, wbxml: bool, to: Message | None
    ) -> Reply:
        if to is not None:
            self._check(to.header)
            incoming = _Incoming(
                session_id=to.header.session_id,
                msg_id=to.header.msg_id,
                target=to.header.target,
                source=to.header.source,
                final=to.final,
                asks_next=False,
                commands=_owed(to),
            )
            size = to.header.max_msg_size
        elif self._incoming is not None:
            incoming = self._incoming
            size = self._progress.max_msg_size
        else:
            # Neither seen nor shown: the session's own knowledge, the MsgRef a best guess.
            last = self._progress.last_msg_id
            incoming = _Incoming(
                session_id=self._session_id,
                msg_id=str((last or 0) + 1),
                target=None,
                source=self._device_source or self._device_id,
                final=True,
                asks_next=False,
            )
            size = self._progress.max_msg_size
        if self._saved is not None:
            self._progress = self._saved  # nothing from a refused message is acted on
        builder = MessageBuilder(
            self._header(incoming), size or self._default_max_msg_size, wbxml=wbxml
        )
        if builder.push(_header_status(incoming, header_status, chal)) is None:
            raise SessionError("the device's MaxMsgSize cannot hold even a status")
        # Every command gets the same status, not executed: some clients resend a refused
        # message (with credentials) only when they see its commands refused.
        for cmd_id, name in incoming.commands:
            status = Command(
                "Status", msg_ref=incoming.msg_id, cmd_ref=cmd_id, cmd=name, data=str(header_status)
            )
            if builder.push(status) is None:
                break  # the rest cannot fit: the device has the SyncHdr's status
        data = builder.finish(final=True)
        self._msg_id += 1
        self._incoming = None
        self._saved = None
        return Reply(data=data, sent=(), final=True, ended=False)

    def _compose(
        self,
        header: Header,
        size: int,
        *,
        wbxml: bool,
        fixed: list[Command],
        entries: list[_Entry],
        mode: _Mode,
        more: bool = False,
    ) -> _Composed:
        """Fills one message: the statuses and alerts owed, then whole stored commands in
        order. A push that fails leaves no room for later ones (MessageBuilder), so a
        stored command cut in half or found too large means building the message again.

        A stored command touching the node of an Add placed earlier in the message waits
        for the next message, and so does everything after it: should the Add get 418, its
        Replace must run before them (the device executes in order), and retries go first
        in a message."""
        dropped: list[_Entry] = []
        while True:
            builder = MessageBuilder(header, size, wbxml=wbxml)
            sent = _push_all(builder, fixed)
            placed: list[tuple[_Entry, list[str]]] = []
            blocked: _Entry | None = None
            held = False
            added: list[str] = []
            cut = False
            if sent == len(fixed):
                if mode == "ask":
                    builder.push(Command("Alert", data=str(NEXT_MESSAGE)))
                for entry in entries:
                    if any(entry is d for d in dropped):
                        continue
                    if added and _touches(entry, added):
                        held = True
                        break
                    ids = _push_entry(builder, entry)
                    if isinstance(ids, int):
                        blocked, cut = entry, ids > 0
                        break
                    placed.append((entry, ids))
                    if entry.replaces is None:
                        added += _added_nodes(entry)
            if blocked is not None and not _fits_alone(header, size, wbxml, fixed[0], blocked):
                dropped.append(blocked)
                continue
            if cut:
                builder = MessageBuilder(header, size, wbxml=wbxml)
                _push_all(builder, fixed)
                for index, (entry, _) in enumerate(placed):
                    ids = _push_entry(builder, entry)
                    if isinstance(ids, int):  # same pushes as a moment ago: cannot happen
                        raise RuntimeError("a stored command no longer fits on rebuilding")
                    placed[index] = (entry, ids)
            complete = blocked is None and not held and sent == len(fixed) and not (more and placed)
            final = mode == "abort" or (mode == "place" and complete)
            return _Composed(builder.finish(final=final), sent, placed, dropped, final)

    def _record(self, placed: list[tuple[_Entry, list[str]]]) -> tuple[str, ...]:
        p = self._progress
        msg_id = str(self._msg_id)
        sent: list[str] = []
        for entry, ids in placed:
            if entry.replaces is None:
                answer = _Answer(entry.command_id, required=[], refs=[])
                p.answers[entry.command_id] = answer
                self._fresh.remove(entry)
                sent.append(entry.command_id)
            else:
                answer = p.answers[entry.command_id]
                p.retries.remove(entry)
            for command, cmd_id in zip(entry.commands, ids, strict=True):
                ref = (msg_id, cmd_id)
                if entry.replaces is None:
                    answer.required.append(ref)
                else:
                    p.parts[entry.replaces].retry = ref
                for nested in _walk(command):
                    if nested.cmd_id is not None:
                        nested_ref = (msg_id, nested.cmd_id)
                        # NoResp: no Status will come, so do not wait for one.
                        p.parts[nested_ref] = _Part(
                            entry.command_id,
                            nested.name,
                            _first_target(nested),
                            add=_command_state(nested) if nested.name == "Add" else None,
                            answered=nested.no_resp,
                        )
                        answer.refs.append(nested_ref)
        return tuple(sent)

    def _drop(self, dropped: list[_Entry]) -> tuple[CommandTooLarge, ...]:
        p = self._progress
        out: list[CommandTooLarge] = []
        for entry in dropped:
            if entry.replaces is None:
                self._fresh.remove(entry)
            else:
                # The Replace for a 418'd Add cannot go out: the command fails as too large.
                p.retries.remove(entry)
                answer = p.answers.pop(entry.command_id)
                for ref in answer.refs:
                    p.parts.pop(ref, None)
            out.append(CommandTooLarge(entry.command_id))
        return tuple(out)


# ---------------------------------------------------------------- helpers


def _parse_body(command_id: str, body: bytes) -> tuple[Command, ...]:
    try:
        message = syncml.decode(_WRAP_HEAD + body + _WRAP_TAIL)
    except SyncMLDecodeError as exc:
        raise ValueError(f"stored command {command_id!r} is not SyncML commands: {exc}") from None
    if message.final:
        raise ValueError(f"stored command {command_id!r}: <Final/> belongs to the message")
    if not message.commands:
        raise ValueError(f"stored command {command_id!r} holds no SyncML command")
    for command in message.commands:
        if command.name in ("Status", "Results"):
            raise ValueError(
                f"stored command {command_id!r}: a server does not send {command.name}"
            )
    return tuple(message.commands)


def _walk(command: Command) -> Iterator[Command]:
    yield command
    for nested in command.commands:
        yield from _walk(nested)


def _push_all(builder: MessageBuilder, commands: list[Command]) -> int:
    for index, command in enumerate(commands):
        command.cmd_id = None
        if builder.push(command) is None:
            return index
    return len(commands)


def _fits_alone(
    header: Header, size: int, wbxml: bool, header_status: Command, entry: _Entry
) -> bool:
    """Whether the entry fits a message holding nothing else but the SyncHdr status."""
    builder = MessageBuilder(header, size, wbxml=wbxml)
    _push_all(builder, [header_status])
    return not isinstance(_push_entry(builder, entry), int)


def _push_entry(builder: MessageBuilder, entry: _Entry) -> list[str] | int:
    """The CmdIDs given to the entry's commands, or how many went in before one did not."""
    ids: list[str] = []
    for command in entry.commands:
        for nested in _walk(command):
            nested.cmd_id = None  # placeholders from storage: the builder numbers them
        cmd_id = builder.push(command)
        if cmd_id is None:
            return len(ids)
        ids.append(cmd_id)
    return ids


def _owed(message: Message) -> tuple[tuple[str, str], ...]:
    """The commands of a device message that get a Status (every one with a CmdID but the
    device's own Statuses), as (CmdID, name)."""
    return tuple((c.cmd_id, c.name) for c in message.commands if c.cmd_id and c.name != "Status")


def _node(uri: str) -> str:
    """A LocURI as a node path: no query, device scope spelt one way."""
    path = uri.partition("?")[0].rstrip("/")
    return (
        "./Vendor/" + path[len("./Device/Vendor/") :]
        if path.startswith("./Device/Vendor/")
        else path
    )


def _added_nodes(entry: _Entry) -> list[str]:
    """The nodes of the entry's Adds that a 418 would retry as a Replace (top level)."""
    return [_node(i.target) for c in entry.commands if c.name == "Add" for i in c.items if i.target]


def _touches(entry: _Entry, nodes: list[str]) -> bool:
    """Whether a command of the entry targets one of ``nodes``, inside or above it."""
    for command in entry.commands:
        for nested in _walk(command):
            for item in nested.items:
                if not item.target:
                    continue
                node = _node(item.target)
                for other in nodes:
                    if (
                        node == other
                        or node.startswith(other + "/")
                        or other.startswith(node + "/")
                    ):
                        return True
    return False


def _header_status(incoming: _Incoming, code: int, chal: dict[str, str] | None) -> Command:
    return Command(
        "Status",
        msg_ref=incoming.msg_id,
        cmd_ref="0",
        cmd="SyncHdr",
        target_refs=[incoming.target] if incoming.target else None,
        source_refs=[incoming.source] if incoming.source else None,
        chal=dict(chal) if chal is not None else None,
        data=str(code),
    )


def _alert_code(command: Command) -> int | None:
    data = command.data
    if isinstance(data, bytes):
        return None
    try:
        return int((data or "").strip())
    except ValueError:
        return None


def _status_code(status: Command) -> tuple[int, str | None, bool]:
    """The code, the detail, and whether the device's Data was a number at all."""
    text = _text(status.data) or ""
    try:
        code = int(text.strip())
    except ValueError:
        return 0, text, False
    detail = status.data_attrs.get("msft:originalerror")
    if detail is None and status.items:
        item_data = status.items[0].data
        detail = _text(item_data)
    return code, detail, True


def opens_session(message: Message) -> bool:
    """Whether the message opens a session: MsgID 1 with Alert 1200 or 1201. SessionIDs are
    unique only among live sessions, so such a message may start over a session id that a
    cut-off session still holds (the driver decides, after authenticating it)."""
    try:
        first = int(message.header.msg_id.strip()) == 1
    except ValueError:
        return False
    return first and any(
        c.name == "Alert" and _alert_code(c) in (SERVER_INITIATED, CLIENT_INITIATED)
        for c in message.commands
    )


def _text(data: str | bytes | None) -> str | None:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _ref_of(command: Command) -> _Ref:
    return (command.msg_ref or "", command.cmd_ref or "")


def _loc(item: Item) -> str:
    return item.source or item.target or ""


def _first_target(command: Command) -> str | None:
    for item in command.items:
        if item.target:
            return item.target
    return None


def _continues(obj: _LargeObject, command: Command) -> bool:
    return command.name == obj.kind and bool(command.items) and _loc(command.items[0]) == obj.loc


def _declared_size(item: Item) -> int | None:
    size = (item.meta or {}).get("Size")
    if not isinstance(size, str):
        return None
    try:
        return int(size.strip())
    except ValueError:
        return None


def _assembled(obj: _LargeObject) -> Item:
    """The chunks as one item. All-text chunks join as text; otherwise the bytes join and
    become text again when valid UTF-8, as the codec would have read the whole object."""
    chunks = obj.chunks
    data: str | bytes
    if all(isinstance(c, str) for c in chunks):
        data = "".join(c for c in chunks if isinstance(c, str))
    else:
        joined = b"".join(c.encode() if isinstance(c, str) else c for c in chunks)
        try:
            data = joined.decode()
        except UnicodeDecodeError:
            data = joined
    first = obj.first
    return Item(
        target=first.target,
        source=first.source,
        target_name=first.target_name,
        source_name=first.source_name,
        meta=first.meta,
        data=data,
        data_attrs=first.data_attrs,
    )


def _split_devinfo(items: list[Item]) -> tuple[dict[str, str], list[Item]]:
    """The ``./DevInfo`` leaves among ``items`` by name, and the other items, in one pass
    (every package 1 carries some)."""
    values: dict[str, str] = {}
    rest: list[Item] = []
    cut = len(_DEVINFO)
    for item in items:
        loc = _loc(item)
        if len(loc) > cut and loc.startswith(_DEVINFO):
            values[loc[cut:]] = _text(item.data) or ""
        else:
            rest.append(item)
    return values, rest


def _same_items(a: list[Item], b: list[Item]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _with_items(command: Command, items: list[Item]) -> Command:
    return Command(
        command.name,
        cmd_id=command.cmd_id,
        items=items,
        meta=command.meta,
        data=command.data,
        data_attrs=command.data_attrs,
        no_resp=command.no_resp,
        msg_ref=command.msg_ref,
        cmd_ref=command.cmd_ref,
        target_refs=list(command.target_refs),
        source_refs=list(command.source_refs),
        correlator=command.correlator,
    )


# ---------------------------------------------------------------- snapshots

#: The format of :meth:`Session.snapshot`: the first element of its msgpack array. A
#: change to what a snapshot holds takes a new number (and a reader of the old one, or
#: sessions in flight during an upgrade start over).
SNAPSHOT_VERSION = 1

# Plain data mirroring the session's state, as msgpack arrays (no field names). SyncML
# commands and items keep every attribute of the codec's pyclasses; ``data`` and ``meta``
# stay untyped (Any) because msgpack itself tells str from bytes, which msgspec's typed
# unions cannot.


class _ItemState(msgspec.Struct, array_like=True, frozen=True):
    target: str | None
    source: str | None
    meta: dict[str, Any] | None
    data: Any
    data_attrs: dict[str, str]
    more_data: bool
    target_name: str | None
    source_name: str | None


class _CommandState(msgspec.Struct, array_like=True, frozen=True):
    name: str
    cmd_id: str | None
    msg_ref: str | None
    cmd_ref: str | None
    cmd: str | None
    data: Any
    items: list[_ItemState]
    meta: dict[str, Any] | None
    data_attrs: dict[str, str]
    no_resp: bool
    target_refs: list[str]
    source_refs: list[str]
    chal: dict[str, Any] | None
    correlator: str | None
    target: str | None
    source: str | None
    commands: list[_CommandState]


class _EntryState(msgspec.Struct, array_like=True, frozen=True):
    command_id: str
    #: list[_CommandState], read when the entry is placed (see _Entry).
    commands: msgspec.Raw
    replaces: tuple[str, str] | None


class _SessionState(msgspec.Struct, array_like=True, frozen=True, tag=SNAPSHOT_VERSION):
    device_id: str
    session_id: str
    server_uri: str
    default_max_msg_size: int
    max_object_size: int
    msg_id: int
    device_source: str | None
    ended: bool
    server_cred: tuple[dict[str, str], str] | None
    fresh: list[_EntryState]
    known: list[str]
    last_msg_id: int | None
    max_msg_size: int | None
    parts: list[tuple[tuple[str, str], _Part]]
    answers: list[_Answer]
    seen: list[tuple[str, ...]]
    retries: list[_EntryState]
    obj: _LargeObject | None
    outbox: list[_CommandState]
    alerts: list[_CommandState]
    aborted: bool


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_SessionState)
_COMMANDS = msgspec.msgpack.Decoder(list[_CommandState])


def _snapshot_version(data: bytes) -> int | None:
    """The format number a snapshot claims, when it is a msgpack array at all."""
    try:
        head = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return None
    return head[0] if isinstance(head, list) and head and isinstance(head[0], int) else None


def _item_state(item: Item) -> _ItemState:
    return _ItemState(
        item.target,
        item.source,
        item.meta,
        item.data,
        item.data_attrs,
        item.more_data,
        item.target_name,
        item.source_name,
    )


def _item_of(s: _ItemState) -> Item:
    return Item(
        target=s.target,
        source=s.source,
        meta=s.meta,
        data=s.data,
        data_attrs=s.data_attrs,
        more_data=s.more_data,
        target_name=s.target_name,
        source_name=s.source_name,
    )


def _command_state(c: Command) -> _CommandState:
    return _CommandState(
        c.name,
        c.cmd_id,
        c.msg_ref,
        c.cmd_ref,
        c.cmd,
        c.data,
        [_item_state(i) for i in c.items],
        c.meta,
        c.data_attrs,
        c.no_resp,
        c.target_refs,
        c.source_refs,
        c.chal,
        c.correlator,
        c.target,
        c.source,
        [_command_state(n) for n in c.commands],
    )


def _command_of(s: _CommandState) -> Command:
    return Command(
        s.name,
        cmd_id=s.cmd_id,
        items=[_item_of(i) for i in s.items],
        meta=s.meta,
        data=s.data,
        data_attrs=s.data_attrs,
        no_resp=s.no_resp,
        msg_ref=s.msg_ref,
        cmd_ref=s.cmd_ref,
        cmd=s.cmd,
        target_refs=s.target_refs,
        source_refs=s.source_refs,
        chal=s.chal,
        correlator=s.correlator,
        target=s.target,
        source=s.source,
        commands=[_command_of(n) for n in s.commands],
    )


def _entry_of(s: _EntryState) -> _Entry:
    return _Entry(s.command_id, None, s.replaces, raw=s.commands)
