"""One simulated Windows device (an OMA-DM 1.2 / MS-MDM client) for ``mdmgate simulate``.

A session is one check-in: package 1 (Alert 1201, Alert 1224 LoginStatus, the install
results it owes as Alert 1226, a Replace of ``./DevInfo``), with MD5 or basic ``Cred`` in the
SyncHdr (or none: certificate devices are known by the runner's TLS client certificate). A
401/407 with a ``Chal`` is answered once more in the same session with the new nonce, and
the nonce of every SyncHdr status is kept for the next session. Then the device answers every
server message until the server's final message holds statuses only: Status for the SyncHdr
and for each command in order, Results after the Status of each Get, Alert 1222 when the
server's message lacks Final (its package goes on). The device's own messages respect the
server's MaxMsgSize (or, when the server announces none, the device's own): Results that do
not fit go on in the next messages of the package (without Final), and an Item too large for
any message goes as a large object (``MoreData`` chunks, ``Size`` on the first).

What it runs (its tree is :mod:`mdmgate.simulate.windows_tree`, built on demand):
EnterpriseModernAppManagement inventory Gets (``?list=StructData``, padded to the profile's
``inventory_bytes``), StoreInstall (200, the app appears), HostedInstall (202; the outcome
follows by Alert 1226 ``install_delay_sessions`` later, at least one), uninstall (Delete,
200, the app goes), install status Gets; any other Get from the tree (404 for unknown nodes),
Replace/Add/Delete/Exec 200 (a top-level Add of a node that exists: 418). At
``error_rate`` a command is answered 500 (a hosted install fails in its Alert 1226 instead);
at ``timeout_rate`` a session goes silent on the first server message that carries commands
(it takes them and never answers; a session that gets none ends as usual). A session that
fails records its error kind in the words of :mod:`mdmgate.simulate.stats`: ``silent``,
``transport_<kind>``, ``http_<status>``, ``syncml_<code>`` (the SyncHdr status refused it) or
``protocol``.

Ledger ids. The gateway gives every SyncML command fresh CmdIDs per message and sends no
command id of its own, so the device cannot see which queued command it got. A delivery is
one stored body: one SyncML command, or, for ``windows_app`` installs, an Add of
``.../AppInstallation/{PFN}`` followed by an Exec below it (the device groups exactly that
pair, which the gateway always places together). Its ledger id is ``{key}#{n}``:

* ``key`` = :func:`content_key` of its SyncML commands: a digest of names, Meta, Items
  (Target, Source, Meta, Data) and nested commands, CmdIDs left out. The checker computes
  the same from the stored body (``body_text`` of ``GET /api/v1/commands/{id}``) with
  :func:`delivery_key`;
* ``n`` numbers the device's deliveries of that content, in enqueue order. The gateway hands
  out a device's open deliveries in that order, each once per session, and a delivery whose
  answer it has is no longer open. So in a session the k-th delivery of a content is number
  ``c + k``, where ``c`` counts those of its deliveries whose answers reached the gateway in
  earlier sessions: one whose answer was never sent, or is in doubt (the exchange failed),
  comes again under its own number, and so does each one after it. :func:`ledger_ids` maps
  a device's deliveries (in the order of ``GET /api/v1/devices/{id}/deliveries``, with each
  one's body and ``offers``) to these ids.

Limits of that mapping: identical bodies whose answer was lost *after* the gateway stored it
(the reply never came) and that are queued again are counted as one; a delivery the gateway
gave up (``failed``) followed by another with the same content likewise; a raw Add followed
by a raw Exec below it, queued separately, reads as one install.

The ledger hears of each answer when a message carries it, before it is sent; an answer to a
successful Get when the package's final message carries it (the gateway waits for the end of
the package: Results may span messages). Answers: 2xx ``acknowledged``, 202 ``accepted``
(then the Alert 1226 outcome, ``acknowledged`` or ``error``), anything else ``error``; for an
Add+Exec pair the worst of both. A 418 is no answer: the gateway retries the Add as a Replace,
whose status answers for it.

Per device the object keeps the profile, the nonce, a session counter, what changed since
enrolment and the count of answered deliveries per content (a few hundred bytes); a
session's state lives only while it runs.
"""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from random import Random
from typing import Final, NamedTuple

import trio

from mdmgate import syncml
from mdmgate.errors import SyncMLDecodeError, SyncMLEncodeError
from mdmgate.simulate import windows_inventory as packing
from mdmgate.simulate import windows_tree as tree
from mdmgate.simulate.ledger import Ledger
from mdmgate.simulate.scenario import DeviceProfile
from mdmgate.simulate.stats import SILENT, Stats
from mdmgate.simulate.transport import Exchange, TransportError
from mdmgate.syncml import Command, Header, Item, Message

__all__ = [
    "PATH",
    "SERVER_URL",
    "SimulatedWindowsDevice",
    "content_key",
    "delivery_key",
    "ledger_ids",
]

PLATFORM: Final = "windows"
PATH: Final = "/ManagementServer/MDM.svc?mode=Maintenance&Platform=WoA"
#: The SyncHdr Target when the runner names none (the gateway does not check it).
SERVER_URL: Final = "https://mdmgate/ManagementServer/MDM.svc"
XML_TYPE: Final = "application/vnd.syncml.dm+xml"
WBXML_TYPE: Final = "application/vnd.syncml.dm+wbxml"
_ACCEPT: Final = f"{XML_TYPE}, {WBXML_TYPE}, application/octet-stream"
_USER_AGENT: Final = "MSFT OMA DM Client/1.2.0.1"
_HEADERS: Final = {
    enc: (("content-type", kind), ("accept", _ACCEPT), ("user-agent", _USER_AGENT))
    for enc, kind in ((False, XML_TYPE), (True, WBXML_TYPE))
}
#: A server that never ends the session would hold the device for ever.
MAX_MESSAGES: Final = 2000
#: Contents whose answered deliveries the device counts: bounded, so a long soak cannot grow
#: a device without limit.
MAX_KNOWN: Final = 256
#: Alerts the server sends for the session's own sake, not as queued commands.
_SESSION_ALERTS: Final = frozenset({"1222", "1223", "1225"})
_HOSTED_RESULT: Final = "Reversed-Domain-Name:com.microsoft.mdm.EnterpriseHostedAppInstall.result"
#: ERROR_INSTALL_FAILED as Windows reports a failed deployment (HRESULT 0x80073CF9).
INSTALL_FAILED: Final = 0x80073CF9

# -- ledger ids -------------------------------------------------------------------------------


def _feed_meta(h: hashlib.blake2b, meta: dict[str, str | list[str]] | None) -> None:
    for name in sorted(meta or ()):
        value = (meta or {})[name]
        h.update(name.encode() + b"=")
        h.update("\x1f".join(value).encode() if isinstance(value, list) else value.encode())
        h.update(b"\x1e")
    h.update(b"\x1d")


def _feed(h: hashlib.blake2b, command: Command) -> None:
    h.update(command.name.encode() + b"\x1c")
    _feed_meta(h, command.meta)
    for item in command.items:
        h.update(f"\x01{item.target or ''}\x00{item.source or ''}\x00".encode())
        _feed_meta(h, item.meta)
        data = item.data
        h.update(data.encode() if isinstance(data, str) else data or b"")
        h.update(b"\x02" if item.more_data else b"\x00")
    for nested in command.commands:
        h.update(b"\x03")
        _feed(h, nested)
    h.update(b"\x04")


def content_key(commands: Sequence[Command]) -> str:
    """The digest of a delivery's SyncML commands as the device receives them (CmdIDs, which
    the gateway renumbers per message, left out)."""
    h = hashlib.blake2b(digest_size=8)
    for command in commands:
        _feed(h, command)
    return h.hexdigest()


_WRAP_HEAD: Final = (
    b'<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>'
    b"<SessionID>1</SessionID><MsgID>1</MsgID><Target><LocURI>device</LocURI></Target>"
    b"<Source><LocURI>gateway</LocURI></Source></SyncHdr><SyncBody>"
)
_WRAP_TAIL: Final = b"</SyncBody></SyncML>"


def delivery_key(body: bytes) -> str:
    """:func:`content_key` of a stored command body (its XML, as the admin API's
    ``body_text`` shows it); raises :class:`~mdmgate.errors.SyncMLDecodeError` for a body
    that is not SyncML."""
    return content_key(syncml.decode(_WRAP_HEAD + body + _WRAP_TAIL).commands)


def ledger_ids(deliveries: Iterable[tuple[str, bytes, int]]) -> dict[str, str]:
    """Ledger id -> gateway command id for one device, from its deliveries in enqueue order
    as ``(command_id, body, offers)``. Deliveries never handed out (``offers`` 0) have none:
    the device cannot have seen them, and they would shift the count of later ones."""
    counts: dict[str, int] = {}
    out: dict[str, str] = {}
    for command_id, body, offers in deliveries:
        if offers <= 0:
            continue
        key = delivery_key(body)
        n = counts.get(key, 0) + 1
        counts[key] = n
        out[f"{key}#{n}"] = command_id
    return out


# -- one session's working state -------------------------------------------------------------


class _Answer(NamedTuple):
    """An answer to a delivery, told to the ledger when a message carries it."""

    ledger_id: str
    status: str
    #: The content key of the delivery answered (None: an Alert 1226 outcome).
    key: str | None = None
    #: A hosted install to follow up once the answer reached the gateway: (family, LocURI
    #: of the Exec, outcome code).
    install: tuple[str, str, int] | None = None


class _Fixed:
    """A command of the device's package, with the answers that travel with it."""

    __slots__ = ("answers", "command", "final_only")

    def __init__(self, command: Command) -> None:
        self.command = command
        self.answers: list[_Answer] = []
        self.final_only = False


class _Stream(packing.ResultsStream):
    """The Results of one Get, with the answers that travel with their last part."""

    __slots__ = ("answers", "final_only")

    def __init__(self, msg_ref: str, cmd_ref: str, nodes: Iterator[tree.Node]) -> None:
        super().__init__(msg_ref, cmd_ref, nodes)
        self.answers: list[_Answer] = []
        self.final_only = False


class _Run:
    __slots__ = (
        "at_final",
        "limit",
        "msg_id",
        "numbered",
        "outbox",
        "retries",
        "session_id",
        "wbxml",
    )

    def __init__(self, session_id: str, limit: int, wbxml: bool) -> None:
        self.session_id = session_id
        self.msg_id = 0
        self.limit = limit
        self.wbxml = wbxml
        self.outbox: deque[_Fixed | _Stream] = deque()
        #: Answers that go with the package's final message.
        self.at_final: list[_Answer] = []
        #: Adds answered 418, by their items' targets: the Replace the gateway retries them
        #: with answers for them (ledger id, content key).
        self.retries: dict[tuple[str, ...], tuple[str, str]] = {}
        #: Content key -> the number of its latest delivery in this session: the gateway
        #: hands a delivery out once per session, so the same content again is the next one.
        self.numbered: dict[str, int] = {}


class _Failed(Exception):
    """The session ends with this error kind (never leaves the device)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


# -- the device -------------------------------------------------------------------------------


class SimulatedWindowsDevice:
    """One Windows MDM client; :meth:`session` runs one check-in. ``server_url`` is the
    SyncHdr Target it names, ``path`` what it POSTs to (the exchange adds the host)."""

    __slots__ = (
        "_alerts",
        "_known",
        "_ledger",
        "_nonce",
        "_profile",
        "_rng",
        "_sessions",
        "_stats",
        "_target",
        "_tree",
        "id",
    )

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        rng: Random,
        stats: Stats,
        ledger: Ledger,
        server_url: str = SERVER_URL,
        path: str = PATH,
    ) -> None:
        self.id = profile.id
        self._profile = profile
        self._rng = rng
        self._stats = stats
        self._ledger = ledger
        self._target = (server_url, path)
        #: The nonce the gateway issued for the next MD5 Cred (none yet: it challenges).
        self._nonce = b""
        self._sessions = 0
        self._tree = tree.DeviceTree(profile)
        #: Hosted-install outcomes owed: (due session, Exec LocURI, family, code, ledger id).
        self._alerts: list[tuple[int, str, str, int, str | None]] | None = None
        #: Content key -> how many of its deliveries the gateway has the answer of (see
        #: :func:`ledger_ids`).
        self._known: dict[str, int] | None = None

    @property
    def profile(self) -> DeviceProfile:
        return self._profile

    async def session(self, exchange: Exchange) -> None:
        """One whole check-in; records stats and ledger entries, raises nothing for what
        the server or the network does."""
        started = trio.current_time()
        error: str | None = None
        try:
            await self._session(exchange)
        except _Failed as failed:
            error = failed.kind
        except TransportError as exc:
            error = f"transport_{exc.kind}"
        except SyncMLEncodeError:
            error = "protocol"  # the server made the device echo what SyncML cannot carry
        self._stats.session(PLATFORM, trio.current_time() - started, error)

    # -- the session

    async def _session(self, exchange: Exchange) -> None:
        profile = self._profile
        self._sessions += 1
        run = _Run(format(self._sessions, "X"), profile.max_msg_size, profile.wbxml)
        silent = profile.timeout_rate > 0 and self._rng.random() < profile.timeout_rate
        server = await self._open(exchange, run)
        for _ in range(MAX_MESSAGES):
            commands = [c for c in server.commands if c.name not in ("Status", "Results")]
            if not commands and server.final and not run.outbox:
                return  # the server has nothing more: the session is over
            if commands and silent:
                for group in _groups(commands):
                    self._receive(group, run)
                raise _Failed(SILENT)
            pending = bool(run.outbox)
            self._answer(server, commands, run)
            if not server.final and not pending:
                run.outbox.append(_Fixed(Command("Alert", data="1222")))
            body, answers = self._compose(run)
            server = await self._send(exchange, run, body, answers)
        raise _Failed("protocol")

    async def _open(self, exchange: Exchange, run: _Run) -> Message:
        """Package 1, sent again once with the new nonce if the server challenges it."""
        alerts = self._due_alerts()
        for attempt in range(2):
            commands = self._package_one(alerts)
            run.msg_id += 1
            message = Message(self._header(run, credentials=True), commands, final=True)
            answers = [
                _Answer(ledger_id, "acknowledged" if code == 0 else "error")
                for (_, _, _, code, ledger_id) in alerts
                if ledger_id is not None
            ]
            self._tell(answers)
            reply = await self._post(exchange, run, message.encode(wbxml=run.wbxml))
            code, nonce = _header_status(reply)
            if nonce is not None:
                self._nonce = nonce
            if code in (401, 407) and attempt == 0 and self._profile.auth in ("md5", "basic"):
                continue
            if code is None:
                raise _Failed("protocol")
            if not 200 <= code < 300:
                raise _Failed(f"syncml_{code}")
            self._alerts_delivered(alerts, commands, message.header.msg_id, reply)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _package_one(self, alerts: list[tuple[int, str, str, int, str | None]]) -> list[Command]:
        commands = [
            Command("Alert", data="1201"),
            Command(
                "Alert",
                data="1224",
                items=[Item(meta={"Type": "com.microsoft/MDM/LoginStatus"}, data="user")],
            ),
        ]
        for _, source, _, code, _ in alerts:
            meta: dict[str, str | list[str]] = {"Type": _HOSTED_RESULT, "Format": "int"}
            item = Item(source=source, meta=meta, data=str(code))
            commands.append(Command("Alert", data="1226", items=[item]))
        commands.append(
            Command(
                "Replace",
                items=[
                    Item(source=f"./DevInfo/{name}", data=value)
                    for name, value in tree.devinfo(self._profile)
                ],
            )
        )
        for number, command in enumerate(commands, 1):
            command.cmd_id = str(number)
        return commands

    def _header(self, run: _Run, *, credentials: bool = False) -> Header:
        profile = self._profile
        cred_meta: dict[str, str | list[str]] | None = None
        cred_data: str | None = None
        if credentials and profile.auth == "md5":
            cred_meta = {"Type": "syncml:auth-md5", "Format": "b64"}
            inner = base64.b64encode(
                hashlib.md5(f"{profile.username}:{profile.secret}".encode()).digest()
            )
            cred_data = base64.b64encode(hashlib.md5(inner + b":" + self._nonce).digest()).decode()
        elif credentials and profile.auth == "basic":
            cred_meta = {"Type": "syncml:auth-basic", "Format": "b64"}
            cred_data = base64.b64encode(f"{profile.username}:{profile.secret}".encode()).decode()
        return Header(
            session_id=run.session_id,
            msg_id=str(run.msg_id),
            target=self._target[0],
            source=self.id,
            meta={"MaxMsgSize": str(profile.max_msg_size)},
            cred_meta=cred_meta,
            cred_data=cred_data,
        )

    async def _post(self, exchange: Exchange, run: _Run, body: bytes) -> Message:
        self._stats.message(PLATFORM)
        reply = await exchange("POST", self._target[1], _HEADERS[run.wbxml], body)
        if reply.status != 200:
            raise _Failed(f"http_{reply.status}")
        try:
            message = syncml.decode(reply.body)
        except SyncMLDecodeError:
            raise _Failed("protocol") from None
        # The server's MaxMsgSize bounds what the device sends; without one, its own does.
        run.limit = message.header.max_msg_size or self._profile.max_msg_size
        return message

    async def _send(
        self, exchange: Exchange, run: _Run, body: bytes, answers: list[_Answer]
    ) -> Message:
        self._tell(answers)
        reply = await self._post(exchange, run, body)
        self._answered(answers)
        for answer in answers:
            if answer.install is not None:
                self._install_accepted(*answer.install, answer.ledger_id, answer.status)
        return reply

    def _tell(self, answers: list[_Answer]) -> None:
        for answer in answers:
            self._ledger.answered(self.id, answer.ledger_id, answer.status)
            self._stats.command(PLATFORM, "answered")

    def _answered(self, answers: list[_Answer]) -> None:
        """The gateway has these answers: their deliveries are closed, and the next of the
        same content in a later session is numbered after them."""
        for answer in answers:
            if answer.key is None:
                continue
            known = self._known
            if known is None:
                known = self._known = {}
            known[answer.key] = known.pop(answer.key, 0) + 1
            if len(known) > MAX_KNOWN:
                del known[next(iter(known))]

    # -- receiving

    def _receive(self, group: list[Command], run: _Run) -> tuple[str, str] | None:
        """The ledger id and content key of a delivery the device was handed, told to the
        ledger; None for the session's own alerts and for the Replace that retries an Add
        (the Add's delivery, already received)."""
        first = group[0]
        if len(group) == 1 and first.name == "Alert" and _text(first.data) in _SESSION_ALERTS:
            return None
        if len(group) == 1 and first.name == "Replace":
            retried = run.retries.pop(tuple(i.target or "" for i in first.items), None)
            if retried is not None:
                return retried
        key = content_key(group)
        before = run.numbered.get(key)
        if before is None:
            before = (self._known or {}).get(key, 0)
        n = run.numbered[key] = before + 1
        ledger_id = f"{key}#{n}"
        self._ledger.received(self.id, ledger_id, "+".join(c.name for c in group))
        self._stats.command(PLATFORM, "received")
        return ledger_id, key

    def _answer(self, server: Message, commands: list[Command], run: _Run) -> None:
        """Queues the answers to ``server``: the SyncHdr status first in the next message,
        then one answer per delivery, in order, after what is still owed."""
        msg_ref = server.header.msg_id
        run.outbox.appendleft(
            _Fixed(
                Command(
                    "Status",
                    msg_ref=msg_ref,
                    cmd_ref="0",
                    cmd="SyncHdr",
                    data="200",
                    target_refs=[server.header.target or ""],
                    source_refs=[server.header.source or ""],
                )
            )
        )
        for group in _groups(commands):
            received = self._receive(group, run)
            pieces: list[_Fixed | _Stream] = []
            codes: list[int] = []
            install: tuple[str, str, int] | None = None
            for command in group:
                hosted = self._run_command(command, msg_ref, pieces, codes, len(group) == 1)
                install = install or hosted
            run.outbox.extend(pieces)
            if received is None or not pieces:
                continue  # the session's own alert, or nothing to refer to
            if 418 in codes:
                # No answer yet: the gateway retries the Add as a Replace, which answers it.
                run.retries[tuple(i.target or "" for i in group[0].items)] = received
                continue
            ledger_id, key = received
            last = pieces[-1]
            last.answers.append(_Answer(ledger_id, _outcome(codes), key, install))
            last.final_only = any(isinstance(p, _Stream) for p in pieces)

    def _run_command(
        self,
        command: Command,
        msg_ref: str,
        pieces: list[_Fixed | _Stream],
        codes: list[int],
        alone: bool,
    ) -> tuple[str, str, int] | None:
        """Runs one command (and those nested in it): appends its Status, and Results, to
        ``pieces`` and its codes to ``codes``; returns a hosted install it accepted."""
        name = command.name
        hosted: tuple[str, str, int] | None = None
        results: Iterator[tree.Node] | None = None
        if name == "Alert":
            code = 200
        elif name == "Exec" and _target(command).endswith("/HostedInstall"):
            code = 0  # its failure shows in the Alert 1226 outcome instead
        else:
            code = 500 if self._fails() else 0
        if code == 0:
            code, results, hosted = self._execute(command, alone)
        codes.append(code)
        if command.cmd_id:
            pieces.append(_Fixed(_status(msg_ref, command, code)))
            if results is not None:
                pieces.append(_Stream(msg_ref, command.cmd_id, results))
        for inner in command.commands if name in ("Atomic", "Sequence") else ():
            if code >= 300:
                if inner.cmd_id:
                    pieces.append(_Fixed(_status(msg_ref, inner, 215)))
                codes.append(215)
                continue
            hosted = self._run_command(inner, msg_ref, pieces, codes, False) or hosted
        return hosted

    def _fails(self) -> bool:
        rate = self._profile.error_rate
        return rate > 0 and self._rng.random() < rate

    def _execute(
        self, command: Command, alone: bool
    ) -> tuple[int, Iterator[tree.Node] | None, tuple[str, str, int] | None]:
        name = command.name
        if name in ("Atomic", "Sequence"):
            return 200, None, None
        if not command.items:
            return 400, None, None
        target = _target(command)
        if name == "Get":
            code, nodes = self._tree.get(target)
            return code, nodes, None
        if name == "Exec":
            return self._exec(target)
        return self._change(command, alone), None, None

    def _change(self, command: Command, alone: bool) -> int:
        name = command.name
        if name == "Add":
            return self._tree.add(command.items, alone)
        if name == "Replace":
            for item in command.items:
                self._tree.write(item.target or "", item.format or "chr", item.data or "")
            return 200
        if name == "Delete":
            self._tree.delete(_target(command))
            return 200
        return 200 if name == "Copy" else 406

    def _exec(self, target: str) -> tuple[int, None, tuple[str, str, int] | None]:
        emm = tree.emm_path(target)
        segments = emm.segments if emm is not None else ()
        if len(segments) == 3 and segments[0] == "AppInstallation":
            family, action = segments[1], segments[2]
            if action == "StoreInstall":
                self._tree.installed(tree.App(family, "1.0.0.0", "AppStore"))
                return 200, None, None
            if action == "HostedInstall":
                code = INSTALL_FAILED if self._fails() else 0
                return 202, None, (family, target, code)
        return 200, None, None

    # -- hosted installs

    def _install_accepted(
        self, family: str, source: str, code: int, ledger_id: str, status: str
    ) -> None:
        """The gateway has the 202: the install runs, and its outcome is owed."""
        self._tree.set_install(family, tree.Install(tree.INSTALLING, 0))
        due = self._sessions + max(1, self._profile.install_delay_sessions)
        if self._alerts is None:
            self._alerts = []
        # An Add+Exec answered error already ended at the gateway: the outcome changes nothing.
        owed = ledger_id if status == "accepted" else None
        self._alerts.append((due, source, family, code, owed))

    def _due_alerts(self) -> list[tuple[int, str, str, int, str | None]]:
        if not self._alerts:
            return []
        return [a for a in self._alerts if a[0] <= self._sessions]

    def _alerts_delivered(
        self,
        alerts: list[tuple[int, str, str, int, str | None]],
        commands: list[Command],
        msg_id: str,
        reply: Message,
    ) -> None:
        if not alerts or self._alerts is None:
            return
        taken = {
            c.cmd_ref
            for c in reply.commands
            if c.name == "Status" and c.msg_ref == msg_id and _code(c.data) // 100 == 2
        }
        sent = [c for c in commands if c.name == "Alert" and _text(c.data) == "1226"]
        for alert, command in zip(alerts, sent, strict=True):
            if command.cmd_id not in taken:
                continue  # not taken: owed again next session
            self._alerts.remove(alert)
            _, _, family, code, _ = alert
            if code == 0:
                self._tree.installed(tree.App(family, "1.0.0.0", "nonStore"))
            else:
                self._tree.set_install(family, tree.Install(tree.FAILED, code))
        if not self._alerts:
            self._alerts = None

    # -- building the device's messages

    def _compose(self, run: _Run) -> tuple[bytes, list[_Answer]]:
        """The next message of the device's package, from the front of the outbox, and the
        answers it carries."""
        run.msg_id += 1
        out = packing.Outgoing(self._header(run), run.limit, run.wbxml)
        outbox = run.outbox
        answers: list[_Answer] = []
        while outbox:
            piece = outbox[0]
            if isinstance(piece, _Fixed):
                if not out.push(piece.command):
                    break
                if piece.command.name != "Status":
                    out.content = True
            elif not packing.fill(out, piece):
                break
            outbox.popleft()
            (run.at_final if piece.final_only else answers).extend(piece.answers)
        if outbox and len(out.pushed) < 2:
            raise _Failed("protocol")  # the server's MaxMsgSize cannot hold one answer
        final = not outbox
        if final:
            answers.extend(run.at_final)
            run.at_final = []
        return out.builder.finish(final=final), answers


# -- helpers -------------------------------------------------------------------------------


def _groups(commands: list[Command]) -> list[list[Command]]:
    """The server's commands as deliveries: an Add of a node followed by an Exec below it
    (``windows_app`` installs) is one; anything else stands alone."""
    groups: list[list[Command]] = []
    index = 0
    while index < len(commands):
        command = commands[index]
        following = commands[index + 1] if index + 1 < len(commands) else None
        if (
            command.name == "Add"
            and following is not None
            and following.name == "Exec"
            and _target(command)
            and _target(following).startswith(_target(command) + "/")
        ):
            groups.append([command, following])
            index += 2
        else:
            groups.append([command])
            index += 1
    return groups


def _target(command: Command) -> str:
    for item in command.items:
        if item.target:
            return item.target
    return ""


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace").strip()
    return (data or "").strip()


def _code(data: str | bytes | None) -> int:
    try:
        return int(_text(data))
    except ValueError:
        return 0


def _status(msg_ref: str, command: Command, code: int) -> Command:
    return Command(
        "Status", msg_ref=msg_ref, cmd_ref=command.cmd_id, cmd=command.name, data=str(code)
    )


def _outcome(codes: list[int]) -> str:
    """The delivery state the gateway makes of the statuses of one delivery."""
    if any(not 200 <= c < 300 or c in (214, 215, 216) for c in codes):
        return "error"
    return "accepted" if 202 in codes else "acknowledged"


def _header_status(reply: Message) -> tuple[int | None, bytes | None]:
    """The server's Status for the device's SyncHdr, and the NextNonce of its Chal."""
    for command in reply.commands:
        if command.name != "Status" or command.cmd_ref != "0":
            continue
        nonce = (command.chal or {}).get("NextNonce")
        decoded = None
        if isinstance(nonce, str):
            try:
                decoded = base64.b64decode(nonce.strip(), validate=True)
            except ValueError:
                decoded = None
        return _code(command.data) or None, decoded
    return None, None
