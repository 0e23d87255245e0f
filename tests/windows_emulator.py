"""A Windows (OMA-DM) device for the tests: it runs whole sessions against a real server.

It answers what a Windows MDM client answers: Status for the SyncHdr and every command in
order, Results after the Status of each Get (its configuration tree is a dict of LocURI ->
(format, data)), 202 for a hosted install whose outcome it reports in the next session with
Alert 1226, and large Results in chunks (MoreData) when they exceed ``chunk_size``.

Options (all off by default) make it a stricter or a broken client: ``auth_type`` sends basic
credentials instead of MD5; ``server_username``/``server_secret`` make it require the server
to authenticate (OMA-DM mutual authentication: the server's MD5 ``Cred`` over the nonce the
device issued, ``server_nonce``; until then it answers 401/407 with a ``Chal`` and refuses
every command with ``refusal_status``); ``crash_on`` stops the session without an answer when
a command targets that LocURI; ``mangle_on`` answers such a command with a message the server
must refuse (a replayed MsgID); :meth:`WindowsDevice.request_unenrollment` queues the user's
unenrollment alert for the next session.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from mdmgate import syncml
from mdmgate.syncml import Command, Header, Item, Message

XML = "application/vnd.syncml.dm+xml"
WBXML = "application/vnd.syncml.dm+wbxml"
PATH = "/ManagementServer/MDM.svc?mode=Maintenance&Platform=WoA"
EMM = "./Device/Vendor/MSFT/EnterpriseModernAppManagement"
UNENROLL_TYPE = "com.microsoft:mdm.unenrollment.userrequest"


def md5_credentials(username: str, secret: str, nonce: bytes) -> str:
    """The OMA-DM MD5 digest, written here independently of the gateway's own."""
    inner = base64.b64encode(hashlib.md5(f"{username}:{secret}".encode()).digest())
    return base64.b64encode(hashlib.md5(inner + b":" + nonce).digest()).decode()


@dataclass
class Exchange:
    """One HTTP round trip of a session, as the device saw it."""

    sent: Message
    status: int
    reply: Message | None
    size: int
    text: str = ""


@dataclass
class WindowsDevice:
    device_id: str
    tree: dict[str, tuple[str, str]] = field(default_factory=dict)
    wbxml: bool = False
    max_msg_size: int | None = None
    #: Results bigger than this go in chunks (MoreData), one per message.
    chunk_size: int = 64 * 1024
    username: str | None = None
    secret: str | None = None
    nonce: bytes = b""
    #: Exit code each hosted install reports (package family -> code; 0 by default).
    install_outcome: dict[str, int] = field(default_factory=dict)
    #: Alerts to send at the start of the next session: (code, Item).
    pending_alerts: list[tuple[int, Item]] = field(default_factory=list)
    #: Commands the device received, by name and target, in order, across sessions.
    received: list[tuple[str, str | None]] = field(default_factory=list)
    session_count: int = 0
    #: The credential type it sends: "md5" or "basic".
    auth_type: str = "md5"
    #: Set both to require the server to authenticate with these (mutual authentication).
    server_username: str | None = None
    server_secret: str | None = None
    #: The nonce the device issued to the server (the server's MD5 Cred must use it).
    server_nonce: bytes = b""
    #: Issue the server a new nonce with every 212 (it does on every 401/407 anyway).
    rotate_server_nonce: bool = True
    #: What it answers each command with while the server is not authenticated.
    refusal_status: str = "407"
    #: The SyncHdr status it gave each server message it checked (server authentication).
    server_auth_log: list[str] = field(default_factory=list)
    #: Commands refused because the server was not authenticated, by name and target.
    refused: list[tuple[str, str | None]] = field(default_factory=list)
    #: A command targeting this LocURI makes the device stop mid-session (it crashed).
    crash_on: str | None = None
    #: A command targeting this LocURI is answered with a message the server must refuse.
    mangle_on: str | None = None
    _server_ok: bool = False
    _mangle_next: bool = False
    #: More items for package 1's Replace, after the ./DevInfo ones (LocURI -> data), as a
    #: Dell laptop sends ./Vendor/MSFT/DMClient/HWDevID.
    extra_replace_items: dict[str, str] = field(default_factory=dict)
    #: Answer every server command with this Status Data (e.g. "0") without running it.
    command_status: str | None = None
    #: Resend a refused message (SyncHdr 401/407) with credentials, but only when every
    #: command of it got a Status of that code too (as some clients do).
    resend_when_refused: bool = False

    # -- one session

    async def session(
        self,
        client: httpx.AsyncClient,
        *,
        limit: int = 100,
        session_id: str | None = None,
        cut_after: int | None = None,
    ) -> list[Exchange]:
        """Runs one session to its end (or ``limit`` round trips). ``session_id`` replaces
        the counter's SessionID; ``cut_after`` N ends the session after N round trips as if
        the connection broke: the last reply is neither run nor answered."""
        self.session_count += 1
        session_id = format(self.session_count, "X") if session_id is None else session_id
        msg_id = 0
        self._server_ok = False
        self._mangle_next = False
        log: list[Exchange] = []
        #: Device messages still to send: (commands, final).
        queue: list[tuple[list[Command], bool]] = [(self._package_one(), True)]
        resends = 0
        for _ in range(limit):
            body, final = queue.pop(0)
            if self._mangle_next:
                self._mangle_next = False  # the same MsgID again: a message it cannot take
            else:
                msg_id += 1
            message = Message(self._header(session_id, str(msg_id)), _number(body), final)
            exchange = await self._post(client, message)
            log.append(exchange)
            reply = exchange.reply
            if reply is None or len(log) == cut_after:
                return log
            if self.resend_when_refused and resends < 3 and _refused_whole(message, reply):
                resends += 1
                queue.insert(0, (body, final))  # the same commands, now with the new nonce
                continue
            if queue:
                continue  # more chunks of a large object: the server asked for them (1222)
            if reply.final and self._only_statuses(reply):
                return log  # the server had nothing more to say: the session is over
            if self._crashes_on(reply):
                return log  # the client died on a command: no answer, the session is cut
            answers, chunks = self._answer(reply)
            if not reply.final:
                # The server's package goes on: ask for its next message.
                answers.append(Command("Alert", data="1222"))
            if chunks:
                # One chunk per message; only the last closes the package.
                for i, chunk in enumerate(chunks):
                    queue.append(((answers if i == 0 else []) + [chunk], i == len(chunks) - 1))
            else:
                queue.append((answers, True))
        raise AssertionError(f"session did not end within {limit} messages")

    def _package_one(self) -> list[Command]:
        """Alert 1201, LoginStatus, the pending alerts, and the DevInfo Replace."""
        commands: list[Command] = [
            Command("Alert", data="1201"),
            Command(
                "Alert",
                data="1224",
                items=[Item(meta={"Type": "com.microsoft/MDM/LoginStatus"}, data="user")],
            ),
        ]
        for code, item in self.pending_alerts:
            commands.append(Command("Alert", data=str(code), items=[item]))
        self.pending_alerts = []
        commands.append(
            Command(
                "Replace",
                items=[
                    Item(source=f"./DevInfo/{name}", data=value)
                    for name, value in (
                        ("DevId", self.device_id),
                        ("Man", "Contoso"),
                        ("Mod", "Surface Laptop"),
                        ("DmV", "1.3"),
                        ("Lang", "it-IT"),
                    )
                ]
                + [Item(source=uri, data=value) for uri, value in self.extra_replace_items.items()],
            )
        )
        return commands

    async def resume(
        self, client: httpx.AsyncClient, session_id: str, msg_id: int, reply: Message
    ) -> Exchange:
        """Answers ``reply`` (of a session cut with ``cut_after``) as message ``msg_id`` of
        ``session_id``, with Final: one round trip of the old session."""
        answers, _ = self._answer(reply)
        message = Message(self._header(session_id, str(msg_id)), _number(answers), True)
        return await self._post(client, message)

    def _header(self, session_id: str, msg_id: str) -> Header:
        meta = {"MaxMsgSize": str(self.max_msg_size)} if self.max_msg_size else None
        cred_meta = cred_data = None
        if self.username is not None and self.secret is not None and self.auth_type == "basic":
            cred_meta = {"Type": "syncml:auth-basic", "Format": "b64"}
            cred_data = base64.b64encode(f"{self.username}:{self.secret}".encode()).decode()
        elif self.username is not None and self.secret is not None:
            cred_meta = {"Type": "syncml:auth-md5", "Format": "b64"}
            cred_data = md5_credentials(self.username, self.secret, self.nonce)
        return Header(
            session_id=session_id,
            msg_id=msg_id,
            target="https://mdm.example/ManagementServer/MDM.svc",
            source=self.device_id,
            meta=meta,
            cred_meta=cred_meta,
            cred_data=cred_data,
        )

    async def _post(self, client: httpx.AsyncClient, message: Message) -> Exchange:
        kind = WBXML if self.wbxml else XML
        data = message.encode(wbxml=self.wbxml)
        response = await client.post(PATH, content=data, headers={"content-type": kind})
        if response.status_code != 200:
            return Exchange(message, response.status_code, None, 0, response.text)
        assert response.headers["content-type"] == kind, response.headers
        reply = syncml.decode(response.content)
        for command in reply.commands:
            if command.name == "Status" and command.cmd == "SyncHdr" and command.chal:
                nonce = command.chal.get("NextNonce")
                if isinstance(nonce, str):
                    self.nonce = base64.b64decode(nonce)
        return Exchange(message, 200, reply, len(response.content))

    @staticmethod
    def _only_statuses(reply: Message) -> bool:
        return all(c.name in ("Status", "Results") for c in reply.commands)

    def request_unenrollment(self) -> None:
        """The user removes the work account: Alert 1226 in the next session."""
        item = Item(meta={"Type": UNENROLL_TYPE, "Format": "int"}, data="1")
        self.pending_alerts.append((1226, item))

    def _crashes_on(self, reply: Message) -> bool:
        for command in reply.commands:
            target = command.items[0].target if command.items else None
            if self.crash_on is not None and target == self.crash_on:
                self.received.append((command.name, target))
                return True
        return False

    def _check_server(self, reply: Message) -> tuple[str, dict[str, str | list[str]] | None]:
        """The SyncHdr status for the server's message, and the Chal to put on it."""
        if self.server_username is None or self.server_secret is None or self._server_ok:
            return "200", None
        expected = md5_credentials(self.server_username, self.server_secret, self.server_nonce)
        kind = (reply.header.cred_meta or {}).get("Type")
        given = reply.header.cred_data
        if given is None:
            code = "407"
        elif kind == "syncml:auth-md5" and given.strip() == expected:
            code = "212"
            self._server_ok = True
        else:
            code = "401"
        self.server_auth_log.append(code)
        if code == "212" and not self.rotate_server_nonce:
            return code, None
        self.server_nonce = secrets.token_bytes(16)
        nonce = base64.b64encode(self.server_nonce).decode()
        return code, {"Type": "syncml:auth-md5", "Format": "b64", "NextNonce": nonce}

    # -- answering the server

    def _answer(self, reply: Message) -> tuple[list[Command], list[Command]]:
        """Statuses (and Results) for the server's message, and the chunks of a large
        Results when one is too big for one message."""
        msg_ref = reply.header.msg_id
        header_code, chal = self._check_server(reply)
        answers: list[Command] = [
            Command(
                "Status",
                msg_ref=msg_ref,
                cmd_ref="0",
                cmd="SyncHdr",
                data=header_code,
                target_refs=[reply.header.target or ""],
                source_refs=[reply.header.source or ""],
                chal=chal,
            )
        ]
        chunks: list[Command] = []
        for command in reply.commands:
            if command.name in ("Status", "Results"):
                continue
            target = command.items[0].target if command.items else None
            if header_code in ("401", "407"):
                # The server did not prove itself: nothing runs.
                self.refused.append((command.name, target))
                answers.append(
                    Command(
                        "Status",
                        msg_ref=msg_ref,
                        cmd_ref=command.cmd_id,
                        cmd=command.name,
                        data=self.refusal_status,
                    )
                )
                continue
            self.received.append((command.name, target))
            if self.mangle_on is not None and target == self.mangle_on:
                self._mangle_next = True
            if self.command_status is not None:
                answers.append(
                    Command(
                        "Status",
                        msg_ref=msg_ref,
                        cmd_ref=command.cmd_id,
                        cmd=command.name,
                        data=self.command_status,
                    )
                )
                continue
            code, results = self._run(command)
            status = Command(
                "Status", msg_ref=msg_ref, cmd_ref=command.cmd_id, cmd=command.name, data=str(code)
            )
            if command.name == "Alert":
                status = Command(
                    "Status", msg_ref=msg_ref, cmd_ref=command.cmd_id, cmd="Alert", data="200"
                )
            answers.append(status)
            if results is None:
                continue
            size = sum(len(i.data or "") + len(i.source or "") for i in results)
            if size > self.chunk_size and len(results) == 1:
                chunks = list(self._chunks(msg_ref, command.cmd_id or "", results[0]))
            elif size > self.chunk_size:
                chunks = list(self._split(msg_ref, command.cmd_id or "", results))
            else:
                answers.append(
                    Command("Results", msg_ref=msg_ref, cmd_ref=command.cmd_id, items=results)
                )
        return answers, chunks

    def _split(self, msg_ref: str, cmd_ref: str, items: list[Item]) -> Iterator[Command]:
        """Many Items (a big StructData inventory) over several messages of one package."""
        group: list[Item] = []
        size = 0
        for item in items:
            length = len(item.data or "") + len(item.source or "") + 64
            if group and size + length > self.chunk_size:
                yield Command("Results", msg_ref=msg_ref, cmd_ref=cmd_ref, items=group)
                group, size = [], 0
            group.append(item)
            size += length
        yield Command("Results", msg_ref=msg_ref, cmd_ref=cmd_ref, items=group)

    def _chunks(self, msg_ref: str, cmd_ref: str, item: Item) -> Iterator[Command]:
        data = item.data if isinstance(item.data, str) else ""
        total = len(data.encode())
        for start in range(0, len(data), self.chunk_size):
            piece = data[start : start + self.chunk_size]
            last = start + self.chunk_size >= len(data)
            meta = dict(item.meta or {})
            if start == 0:
                meta["Size"] = str(total)
            yield Command(
                "Results",
                msg_ref=msg_ref,
                cmd_ref=cmd_ref,
                items=[Item(source=item.source, meta=meta, data=piece, more_data=not last)],
            )

    def _run(self, command: Command) -> tuple[int, list[Item] | None]:  # noqa: PLR0912
        if command.name == "Alert":
            return 200, None
        if not command.items:
            return 400, None
        target = command.items[0].target or ""
        if command.name == "Get":
            base, _, query = target.partition("?")
            if query == "list=StructData":
                found = [
                    Item(source=uri, meta={"Format": fmt}, data=data)
                    for uri, (fmt, data) in self.tree.items()
                    if uri == base or uri.startswith(base + "/")
                ]
                return (200, found) if found else (404, None)
            if target in self.tree:
                fmt, data = self.tree[target]
                return 200, [Item(source=target, meta={"Format": fmt}, data=data)]
            return 404, None
        if command.name == "Add":
            if target in self.tree:
                return 418, None
            self.tree[target] = ("node", "")
            return 200, None
        if command.name == "Replace":
            for item in command.items:
                data = item.data if isinstance(item.data, str) else ""
                self.tree[item.target or ""] = (item.format or "chr", data)
            return 200, None
        if command.name == "Delete":
            gone = [u for u in self.tree if u == target or u.startswith(target + "/")]
            for uri in gone:
                del self.tree[uri]
            return (200, None) if gone else (404, None)
        if command.name == "Exec":
            if target.endswith("/HostedInstall"):
                family = target.split("/AppInstallation/")[1].split("/")[0]
                code = self.install_outcome.get(family, 0)
                item = Item(
                    source=target,
                    meta={
                        "Type": "com.microsoft.mdm.EnterpriseHostedAppInstall.result",
                        "Format": "int",
                    },
                    data=str(code),
                )
                self.pending_alerts.append((1226, item))
                return 202, None
            return 200, None
        return 406, None


def _refused_whole(sent: Message, reply: Message) -> bool:
    """The SyncHdr was refused (401/407) and so was every command of ``sent``, by a Status
    of the same code that refers to it."""
    head = reply.commands[0] if reply.commands else None
    if head is None or head.cmd != "SyncHdr" or head.data not in ("401", "407"):
        return False
    refused = {
        c.cmd_ref
        for c in reply.commands
        if c.name == "Status" and c.msg_ref == sent.header.msg_id and c.data == head.data
    }
    return all(c.cmd_id in refused for c in sent.commands if c.name != "Status")


def _number(commands: list[Command]) -> list[Command]:
    """The same commands with CmdIDs 1, 2, 3 ... (the device's own numbering)."""
    return [renumbered(c, index) for index, c in enumerate(commands, 1)]


def renumbered(c: Command, index: int) -> Command:
    """``c`` with CmdID ``index``, everything else kept."""
    return Command(
        c.name,
        cmd_id=str(index),
        items=c.items,
        meta=c.meta,
        data=c.data,
        msg_ref=c.msg_ref,
        cmd_ref=c.cmd_ref,
        cmd=c.cmd,
        target_refs=c.target_refs,
        source_refs=c.source_refs,
        chal=c.chal,
    )
