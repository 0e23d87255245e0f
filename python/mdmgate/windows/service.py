"""The Windows endpoint: ``POST /ManagementServer/MDM.svc``.

Drives one :class:`~mdmgate.windows.session.Session` per device session: decodes the message,
authenticates the device, turns the session's events into stored state (results, app
inventory, install outcomes) and hands the device its queued commands. The session object
holds the protocol; this module holds the I/O and the policy.

Sessions live in the store (its ``SessionStore`` role, kind :data:`SESSION_KIND`, keyed by
device id and SessionID), not in a process: every message is load, engine, save. The engine's
:meth:`~mdmgate.windows.session.Session.snapshot` travels with what this module knows about the
session (the store's name for it, the bodies of the commands handed out and not yet
answered, the server-authentication state, whether the device asked to be unenrolled), so
any gateway node, or any worker, answers any message of any session: Windows opens new
connections mid-session. The state is saved with compare-and-set on its revision *before* the
reply goes out; of two nodes that answered the same message at once (a device, or a load
balancer, that sent it twice) one saves, and the other answers 400 as a replayed message,
exactly as one process does when the same message comes twice. A session whose reply ended
it is dropped; one left idle expires ``session_ttl`` after its last message.

A session cut short (restart, expiry) loses nothing: what it handed out without an answer is
offered again in the next session, up to ``max_offers`` times; then it ends ``failed`` (a
command that crashes the device, or whose answer cannot be read, must not break every later
session).

Overload: ``max_sessions`` bounds the OMA-DM messages one node handles at once; past it, a
message that would open a new session gets 429 with ``Retry-After`` (Windows comes back
later), and messages of open sessions are still served. :attr:`WindowsService.open_sessions`
(the ``mdmgate_omadm_sessions`` gauge) counts those messages in flight on this node: the store
holds the sessions themselves, and counting them there would cost a scan per new session.

Authentication is mutual when the device wants it: the gateway then puts its own ``Cred`` in
its SyncHdr (server credentials of the device, or the gateway's), over the nonce the device
issued to it; nonces both ways are kept in the device's facts, so every process shares them.
A device that refused a message because the server was not authenticated ran none of its
commands: they are offered again, with the gateway's ``Cred``, in the same session.

Events (:mod:`mdmgate.events`) are written by the store call that makes each change: the
deliveries handed out, the device's answers, inventory changes, the user's unenrollment, and
a check-in (fact ``last_seen``) at most once per ``LAST_SEEN_RESOLUTION``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import trio

from mdmgate import syncml
from mdmgate.errors import SyncMLDecodeError
from mdmgate.events import (
    command_answered,
    device_unenrolled,
    inventory_changed,
    record_check_in,
)
from mdmgate.server.types import Request, Response
from mdmgate.storage import (
    DeliveryState,
    Device,
    FactsMerge,
    RevisionConflict,
    Store,
    StoredSession,
)
from mdmgate.syncml import Message
from mdmgate.windows import apps, auth, enrollment
from mdmgate.windows.session import (
    CommandAnswered,
    DeviceAlert,
    DeviceCommand,
    DeviceInfo,
    Outgoing,
    PartStatus,
    Session,
    SessionError,
    SnapshotError,
    opens_session,
)

__all__ = ["CONTENT_TYPES", "SESSION_KIND", "WindowsService", "session_key"]

_log = logging.getLogger("mdmgate.windows")

#: Accepted request types, and whether each is WBXML. The reply uses the request's type.
CONTENT_TYPES = {
    "application/vnd.syncml.dm+xml": False,
    "application/vnd.syncml.dm+wbxml": True,
    "application/vnd.syncml+xml": False,
    "application/vnd.syncml+wbxml": True,
}

#: Facts keys this module writes.
FACT_DEVINFO = "devinfo"
FACT_APPS = "apps"
FACT_WINDOWS_APPS = "windows_apps"
FACT_INSTALLS = "app_installs"
#: Other nodes the device reported in its own Add/Replace (LocURI -> data), merged.
FACT_NODES = "nodes"
#: Bounds on FACT_NODES: a value longer than this is not kept, nor nodes past the count.
NODE_VALUE_MAX = 64 * 1024
NODES_MAX = 1000
#: The nonce the device must use in its next MD5 credentials (base64).
FACT_NONCE = "syncml_nonce"


#: The SessionStore kind of OMA-DM sessions.
SESSION_KIND = "omadm"


def session_key(device_id: str, session_id: str) -> str:
    """The SessionStore key of a device's OMA-DM session: a SessionID is unique only per
    device (and only among its live sessions). The length prefix keeps it unambiguous
    whatever the device id holds."""
    return f"{len(device_id)}:{device_id}:{session_id}"


class _Saved(msgspec.Struct, array_like=True, frozen=True, tag=1):
    """What the store holds per session between two messages (msgpack, versioned by the
    tag: a session saved in another format starts over)."""

    engine: bytes
    key: str
    bodies: dict[str, bytes]
    server_authenticated: bool
    server_challenged: bool
    server_refusals: int
    server_nonce: bytes | None
    unenrolled: bool


_SAVED = msgspec.msgpack.Decoder(_Saved)
_ENCODER = msgspec.msgpack.Encoder()


@dataclass
class _Live:
    """One session while one of its messages is handled: loaded from the store, saved back
    before the reply goes out."""

    session: Session
    #: Its SessionStore key (:func:`session_key`).
    name: str
    #: The store's name for this session (``take``): device SessionIDs repeat across sessions.
    key: str
    #: The stored revision this message continues; None: a session this message opens.
    rev: int | None = None
    #: A session this message opens in place of a stale one with its SessionID: that one's
    #: revision (the new one replaces it only if nobody changed it meanwhile).
    stale_rev: int | None = None
    authenticated: bool = False
    #: The stored bodies of the commands handed out, by command id, until answered.
    bodies: dict[str, bytes] = field(default_factory=dict)
    #: Server authentication: the device answered the gateway's Cred with 212 (for the
    #: whole session), asked for it (401/407), how often it refused, and the nonce it
    #: issued last (None: the stored one).
    server_authenticated: bool = False
    server_challenged: bool = False
    server_refusals: int = 0
    server_nonce: bytes | None = None
    #: The device message being handled refused the gateway's last message (401/407 on
    #: its SyncHdr): the statuses of its commands are no answers; they go out again.
    #: (This message only: not saved.)
    refusing: bool = False
    refused: list[Outgoing] = field(default_factory=list)
    #: The device asked to be unenrolled in this session: nothing more is handed out.
    unenrolled: bool = False
    #: Whether the device had anything offered when the message came, and whether handling
    #: it wrote what could change that (an answer, an install's outcome): when neither,
    #: there is nothing to take.
    offered: bool = True
    answered: bool = False
    #: Facts this message rotated (nonces; no index reads them), written with the session
    #: (one write per message), or on their own when the message ends without a save.
    bookkeeping: dict[str, Any] = field(default_factory=dict)

    def saved(self) -> bytes:
        return _ENCODER.encode(
            _Saved(
                self.session.snapshot(),
                self.key,
                self.bodies,
                self.server_authenticated,
                self.server_challenged,
                self.server_refusals,
                self.server_nonce,
                self.unenrolled,
            )
        )

    @classmethod
    def restored(cls, name: str, stored: StoredSession) -> _Live:
        """The session as saved; SnapshotError when it cannot be read."""
        try:
            saved = _SAVED.decode(stored.state)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SnapshotError(f"unreadable OMA-DM session state: {exc}") from None
        return cls(
            Session.restore(saved.engine),
            name,
            saved.key,
            rev=stored.rev,
            authenticated=True,  # only authenticated sessions are saved
            bodies=dict(saved.bodies),
            server_authenticated=saved.server_authenticated,
            server_challenged=saved.server_challenged,
            server_refusals=saved.server_refusals,
            server_nonce=saved.server_nonce,
            unenrolled=saved.unenrolled,
        )


class _KeyLock:
    """A session's turn: ``users`` counts its holder and those waiting for it. The holder
    holds no object: a semaphore is made only when a second message of the session comes
    meanwhile (rare), and hands the turn to the next waiter in order."""

    __slots__ = ("handoff", "users")

    def __init__(self) -> None:
        self.users = 0
        self.handoff: trio.Semaphore | None = None


class _Turn:
    """Holds a session's turn for one message. Written out rather than with
    ``asynccontextmanager``, and without a checkpoint or a lock object when nobody else
    holds it (nearly always): all three showed up in a check-in's profile."""

    __slots__ = ("_entry", "_locks", "_name")

    def __init__(self, locks: dict[str, _KeyLock], name: str, entry: _KeyLock) -> None:
        self._locks, self._name, self._entry = locks, name, entry

    async def __aenter__(self) -> None:
        entry = self._entry
        entry.users += 1
        if entry.users == 1:
            return
        if entry.handoff is None:
            entry.handoff = trio.Semaphore(0)
        try:
            await entry.handoff.acquire()
        except BaseException:  # cancelled while waiting: the holder still holds it
            self._uncount()
            raise

    async def __aexit__(self, *exc: object) -> None:
        if self._uncount():
            # Someone waits (or is about to): the turn is theirs, in order of arrival.
            assert self._entry.handoff is not None
            self._entry.handoff.release()

    def _uncount(self) -> bool:
        """Counts this message out; whether others are still counted."""
        entry = self._entry
        entry.users -= 1
        if not entry.users:
            del self._locks[self._name]
            return False
        return True


#: Default cap on how often a delivery is handed out without any answer before it ends
#: ``failed``. A healthy device answers in the session it gets a command; a session cut by
#: the network now and then may cost one more offer. Five sessions in a row without an
#: answer (about a day and a half on Windows' 8-hour schedule, minutes when pushed) means the
#: command itself kills the session, and every later session with it.
MAX_OFFERS = 5
#: Times a device may refuse the gateway's credentials in one session before the gateway
#: stops offering the refused commands again (they wait for a later session).
SERVER_AUTH_TRIES = 2

ServerAuth = Literal["on_challenge", "required"]


class WindowsService:
    """The OMA-DM handler. ``dev`` accepts unknown and credential-less devices (registering
    them under org ``/``), as ``mdmgate serve --dev`` promises; never the default."""

    def __init__(
        self,
        store: Store,
        *,
        dev: bool = False,
        server_uri: str = "https://mdmgate/ManagementServer/MDM.svc",
        batch: int = 50,
        session_ttl: float = 600.0,
        max_sessions: int = 100_000,
        on_devices_changed: Callable[[Iterable[str]], None] | None = None,
        max_offers: int = MAX_OFFERS,
        server_username: str | None = None,
        server_secret: str | None = None,
        server_auth: ServerAuth = "on_challenge",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_offers < 1:
            raise ValueError("max_offers must be at least 1")
        if (server_username is None) != (server_secret is None):
            raise ValueError("server_username and server_secret go together")
        self.store = store
        #: A delivery handed out this often without an answer ends ``failed``.
        self.max_offers = max_offers
        #: The gateway's own credentials for devices that require the server to
        #: authenticate (a device's ``auth.server_username``/``server_secret`` win), and
        #: when to send them: once the device asks, or from its first message on.
        self.server_username = server_username
        self.server_secret = server_secret
        self.server_auth = server_auth
        #: Told when a device is registered or reports its inventory (the fleet index).
        self.on_devices_changed = on_devices_changed
        self.dev = dev
        self.server_uri = server_uri
        self.batch = batch
        #: Seconds a session lives after its last message (the store drops it then).
        self.session_ttl = session_ttl
        #: OMA-DM messages this node handles at once before it refuses new sessions (429).
        self.max_sessions = max_sessions
        #: Unix time (the store's expiry is in Unix time); tests move it.
        self.clock = clock
        self._in_flight = 0
        #: Messages of one session on this node take turns (a repeat waits, then is refused
        #: as a replay, instead of racing the original to the store).
        self._locks: dict[str, _KeyLock] = {}
        self._next_sweep = 0.0

    def _changed(self, device_id: str) -> None:
        if self.on_devices_changed is not None:
            self.on_devices_changed((device_id,))

    @property
    def open_sessions(self) -> int:
        """OMA-DM messages this node is handling right now (the ``mdmgate_omadm_sessions``
        gauge; the sessions themselves are in the store)."""
        return self._in_flight

    async def session_open(self, device_id: str, session_id: str) -> bool:
        """Whether the store holds a live session of the device with this SessionID (one
        that neither ended nor expired)."""
        stored = await self.store.load_session(SESSION_KIND, session_key(device_id, session_id))
        return stored is not None

    async def __call__(self, request: Request) -> Response:
        try:
            message, wbxml, content_type = _read(request)
        except _Refused as refused:
            return refused.response
        device_id = message.header.source or ""
        name = session_key(device_id, message.header.session_id)
        self._in_flight += 1
        try:
            now = self.clock()
            if now >= self._next_sweep:
                self._next_sweep = now + min(60.0, self.session_ttl)
                await self.store.expire_sessions(now)
            async with self._turn(name):
                context = await self.store.message_context(device_id, SESSION_KIND, name)
                device, stored = context.device, context.session
                # SessionIDs are unique only among live sessions: a message that opens a
                # session (MsgID 1, Alert 1200/1201) starts a new one, which replaces a stale
                # one holding the same SessionID once it authenticates.
                live = None
                if stored is not None and not opens_session(message):
                    live = _restore(name, stored)
                if live is None:
                    if stored is None and self._in_flight > self.max_sessions:
                        # Windows honours 429 + Retry-After and comes back later.
                        return _text(
                            429, "too many OMA-DM messages in flight", (("retry-after", "5"),)
                        )
                    live = _Live(self._new_session(message), name, os.urandom(16).hex())
                    live.stale_rev = stored.rev if stored is not None else None
                live.offered = context.offered
                try:
                    response = await self._exchange(
                        live, message, request, wbxml, content_type, device=device
                    )
                except BaseException:
                    await self._flush(device_id, live, shield=True)
                    raise
                await self._flush(device_id, live)
                return response
        finally:
            self._in_flight -= 1

    def _turn(self, name: str) -> _Turn:
        entry = self._locks.get(name)
        if entry is None:
            entry = self._locks[name] = _KeyLock()
        return _Turn(self._locks, name, entry)

    def _new_session(self, message: Message) -> Session:
        return Session(
            device_id=message.header.source or "",
            session_id=message.header.session_id,
            server_uri=self.server_uri,
        )

    async def _save(self, device_id: str, live: _Live) -> bool:
        """Saves the session for its next message (compare-and-set), with the facts the
        message rotated: False when another node saved it meanwhile, so this message's reply
        must not go out (nor its nonces: that node's are the ones the device gets)."""
        expected = live.rev if live.rev is not None else live.stale_rev
        facts, live.bookkeeping = live.bookkeeping, {}
        try:
            await self.store.save_session(
                SESSION_KIND,
                live.name,
                live.saved(),
                expected_rev=expected,
                expires_at=self.clock() + self.session_ttl,
                facts=FactsMerge(device_id, facts) if facts else None,
            )
        except RevisionConflict:
            return False
        return True

    async def _flush(self, device_id: str, live: _Live, *, shield: bool = False) -> None:
        """Writes the facts the message rotated when no save takes them: a refused or ended
        message, an error. ``shield``: after an error or a cancellation (a nonce checked
        must not stay valid because the request went away)."""
        if not live.bookkeeping:
            return
        facts, live.bookkeeping = live.bookkeeping, {}
        if not shield:
            await self.store.merge_facts(device_id, facts, feed=False)
            return
        with trio.CancelScope(shield=True):
            await self.store.merge_facts(device_id, facts, feed=False)

    async def _drop(self, live: _Live) -> bool:
        """Forgets a session that ended (or a stale one a new session ended at once): False
        when another node changed it meanwhile."""
        if live.rev is not None:
            return await self.store.drop_session(SESSION_KIND, live.name, expected_rev=live.rev)
        if live.stale_rev is not None:
            # The device started over and was done at once: the stale one goes too, unless
            # it changed meanwhile (then it expires).
            await self.store.drop_session(SESSION_KIND, live.name, expected_rev=live.stale_rev)
        return True

    async def _admit(
        self, live: _Live, message: Message, request: Request, wbxml: bool, device: Device | None
    ) -> tuple[Device, int, dict[str, str] | None] | bytes:
        """The device (``device``: as stored, read with the session) and the SyncHdr status
        (and Chal) for a message it may send, or the refusal to answer it with."""
        device_id = message.header.source or ""
        session = live.session
        if device is None:
            if not self.dev:
                _log.info("unknown Windows device %r refused", device_id)
                if live.rev is not None:  # removed mid-session: the session goes too
                    await self.store.drop_session(SESSION_KIND, live.name, expected_rev=live.rev)
                return session.reply(header_status=403, wbxml=wbxml, to=message).data
            device = Device(device_id, "windows")
            await self.store.upsert_devices([device])
            self._changed(device_id)
        if live.authenticated:
            return device, 200, None
        if enrollment.FACT_UNENROLLED in device.facts:
            # Refused exactly as an unknown device is, before any credentials are checked:
            # an unauthenticated caller must not learn that this id was ever enrolled.
            _log.info(
                "unenrolled Windows device %r refused: %s",
                device_id,
                device.facts[enrollment.FACT_UNENROLLED],
            )
            return session.reply(header_status=403, wbxml=wbxml, to=message).data
        verdict = self._authenticate(device, message, request, live.bookkeeping)
        if verdict.status >= 300:
            # Not saved: a refused opening leaves a live session with its SessionID.
            reply = session.reply(
                header_status=verdict.status, chal=verdict.chal, wbxml=wbxml, to=message
            )
            return reply.data
        live.authenticated = True
        if live.stale_rev is not None:
            _log.info("Windows device %r reopened session %r", device_id, session.session_id)
        return device, verdict.status, verdict.chal

    async def _exchange(
        self,
        live: _Live,
        message: Message,
        request: Request,
        wbxml: bool,
        content_type: str,
        *,
        device: Device | None,
    ) -> Response:
        device_id = message.header.source or ""
        session = live.session
        headers = (("content-type", content_type),)
        admitted = await self._admit(live, message, request, wbxml, device)
        if isinstance(admitted, bytes):
            return Response(200, headers, admitted)
        device, header_status, chal = admitted
        await record_check_in(self.store, device, self.clock())
        try:
            events = session.receive(message)
        except SessionError as exc:
            return _text(400, f"SyncML session error: {exc}")
        self._server_status(device, message, live)
        for event in events:
            await self._apply(device, event, live)
        if live.refused:
            self._offer_refused(device, live)
        more = False
        if (
            message.final
            and session.pending < self.batch
            and not live.unenrolled
            and (live.offered or live.answered)
        ):
            taken = await self.store.take(
                device_id, live.key, self.batch, max_offers=self.max_offers, delivered_event=True
            )
            for delivery in taken:
                live.bodies[delivery.command_id] = delivery.body
            session.offer(Outgoing(d.command_id, d.body) for d in taken)
            # A full batch: the queue may hold more, so the package must not end yet.
            more = len(taken) == self.batch
        session.server_cred = await self._server_cred(device, live)
        reply = session.reply(header_status=header_status, chal=chal, wbxml=wbxml, more=more)
        for dropped in reply.dropped:
            await self.store.record_result(
                device_id,
                dropped.command_id,
                DeliveryState.ERROR,
                "413",
                b"the command does not fit the device's MaxMsgSize",
                events=command_answered(device_id, dropped.command_id, DeliveryState.ERROR, "413"),
            )
        saved = await (self._drop(live) if reply.ended else self._save(device_id, live))
        if not saved:
            # Another node answered this very message first (the device, or a balancer,
            # sent it twice): that answer stands, and this one is a replay's (its nonces
            # too: the device gets the other node's).
            live.bookkeeping.clear()
            _log.info(
                "Windows device %r: message %s of session %r answered elsewhere meanwhile",
                device_id,
                message.header.msg_id,
                session.session_id,
            )
            return _text(
                400,
                f"SyncML session error: MsgID {message.header.msg_id} was answered meanwhile:"
                " a replayed or reordered message",
            )
        return Response(200, headers, reply.data)

    # -- authentication

    def _authenticate(
        self, device: Device, message: Message, request: Request, rotated: dict[str, Any]
    ) -> _Verdict:
        """Checks the message's credentials; a nonce it uses up is replaced in ``rotated``
        (written before the answer goes out)."""
        method = device.auth.get("method") if device.auth else None
        if method is None:
            if self.dev:
                return _Verdict(200)
            # The SyncHdr Source alone proves nothing.
            _log.warning("Windows device %r has no credentials configured: refused", device.id)
            return _Verdict(403)
        if method == "certificate":
            return _Verdict(212 if _certificate_matches(device, request.client_cert) else 403)
        if method in ("md5", "basic"):
            username = str(device.auth.get("username", ""))
            secret = str(device.auth.get("secret", ""))
            stored = device.facts.get(FACT_NONCE)
            nonce = base64.b64decode(stored) if isinstance(stored, str) else None
            # Only the registered type: no downgrade from a digest to the secret itself.
            outcome = auth.check_credentials(
                message.header.cred_meta,
                message.header.cred_data,
                username=username,
                secret=secret,
                nonce=nonce,
                method="md5" if method == "md5" else "basic",
            )
            # A fresh nonce with every answer: a digest is never accepted twice.
            next_nonce = auth.new_nonce()
            rotated[FACT_NONCE] = base64.b64encode(next_nonce).decode()
            challenge = auth.challenge(next_nonce, method="md5" if method == "md5" else "basic")
            if outcome == "ok":
                return _Verdict(212, challenge if method == "md5" else None)
            return _Verdict(407 if outcome == "missing" else 401, challenge)
        _log.warning("Windows device %r has unknown auth method %r", device.id, method)
        return _Verdict(403)

    # -- server authentication (the device authenticates the gateway)

    def _server_account(self, device: Device) -> tuple[str, str] | None:
        """The server credentials for this device: its own, else the gateway's."""
        username = device.auth.get("server_username")
        secret = device.auth.get("server_secret")
        if isinstance(username, str) and isinstance(secret, str):
            return username, secret
        if self.server_username is not None and self.server_secret is not None:
            return self.server_username, self.server_secret
        return None

    def _server_status(self, device: Device, message: Message, live: _Live) -> None:
        """Reads the device's Status for the gateway's last SyncHdr: 212 authenticated for
        the session, 401/407 refused (a Chal's NextNonce is the nonce to use next)."""
        live.refusing = False
        found = _server_auth_status(message)
        if found is None:
            return
        code, next_nonce = found
        changes: dict[str, Any] = {}
        if next_nonce is not None:
            live.server_nonce = next_nonce
            changes[auth.FACT_SERVER_NONCE] = base64.b64encode(next_nonce).decode()
        if code in (401, 407):
            live.refusing = True
            live.server_authenticated = False
            live.server_challenged = True
            live.server_refusals += 1
            if device.facts.get(auth.FACT_SERVER_AUTH) != "required":
                changes[auth.FACT_SERVER_AUTH] = "required"
            _log.info(
                "Windows device %r refused the server's credentials (%d): its commands were"
                " not run",
                device.id,
                code,
            )
        elif code == 212:
            live.server_authenticated = True
        live.bookkeeping.update(changes)

    def _offer_refused(self, device: Device, live: _Live) -> None:
        """Offers the commands the device refused unexecuted again in this session, now
        with the gateway's Cred, unless it has refused too often: they then wait (sent, not
        answered) for a later session."""
        refused, live.refused = live.refused, []
        if self._server_account(device) is None:
            _log.warning(
                "Windows device %r requires the server to authenticate, and no server"
                " credentials are configured (auth.server_username/server_secret, or"
                " [windows] in the config)",
                device.id,
            )
            return
        if live.server_refusals > SERVER_AUTH_TRIES:
            _log.warning(
                "Windows device %r keeps refusing the server's credentials: check its"
                " server_username/server_secret and server nonce",
                device.id,
            )
            return
        for outgoing in refused:
            live.bodies[outgoing.command_id] = outgoing.body
        live.session.forget(o.command_id for o in refused)
        live.session.offer(refused)

    async def _server_cred(self, device: Device, live: _Live) -> tuple[dict[str, str], str] | None:
        """The gateway's Cred for its next message, when the device requires one and has
        not accepted the gateway for the session yet."""
        if live.server_authenticated:
            return None
        mode = device.auth.get("server_auth", self.server_auth)
        asked = live.server_challenged or device.facts.get(auth.FACT_SERVER_AUTH) == "required"
        if mode != "required" and not asked:
            return None
        account = self._server_account(device)
        if account is None:
            return None
        nonce = live.server_nonce
        if nonce is None:
            nonce = _b64_fact(device.facts.get(auth.FACT_SERVER_NONCE)) or b""
        return auth.server_credentials(*account, nonce)

    # -- state

    async def _apply(self, device: Device, event: object, live: _Live) -> None:
        if isinstance(event, DeviceInfo):
            _check_enrolled_id(device, event.values)
            values = {**device.facts.get(FACT_DEVINFO, {}), **event.values}
            if values != device.facts.get(FACT_DEVINFO):  # every session sends the same
                await self.store.merge_facts(device.id, {FACT_DEVINFO: values})
        elif isinstance(event, DeviceAlert) and enrollment.is_unenroll_request(
            event.code, event.items
        ):
            await self._unenroll(device, live)
        elif isinstance(event, DeviceAlert):
            result = apps.parse_app_alert(event.code, event.items)
            if result is not None:
                live.answered = True
                await self._complete_from_alert(device, result)
        elif isinstance(event, CommandAnswered) and live.refusing:
            # Refused because the gateway had not authenticated: not run, no answer.
            body = live.bodies.pop(event.command_id, b"")
            live.refused.append(Outgoing(event.command_id, body))
        elif isinstance(event, CommandAnswered):
            live.answered = True
            await self._record_answer(device, event, live.bodies.pop(event.command_id, b""))
        elif isinstance(event, DeviceCommand) and event.command.name in ("Add", "Replace"):
            await self._store_nodes(device, event.command)

    async def _store_nodes(self, device: Device, command: syncml.Command) -> None:
        """Merges the nodes of a device's own Add/Replace into FACT_NODES (its DevInfo
        items come as DeviceInfo). Binary data that is not UTF-8 is kept base64-encoded."""
        values: dict[str, str] = {}
        for item in command.items:
            uri = item.source or item.target
            if not uri:
                continue
            data = item.data
            if isinstance(data, bytes):
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    text = base64.b64encode(data).decode()
            else:
                text = data or ""
            if len(text) > NODE_VALUE_MAX:
                _log.info("node %r of %r too large to keep as a fact", uri, device.id)
                continue
            values[uri] = text
        known = device.facts.get(FACT_NODES)
        if not values or (
            isinstance(known, dict) and all(known.get(u) == t for u, t in values.items())
        ):
            return  # every session sends the same: no read, no write
        # Read again: an earlier command of this message may have merged nodes meanwhile.
        current = await self.store.get_device(device.id)
        stored = current.facts.get(FACT_NODES) if current is not None else None
        nodes: dict[str, Any] = dict(stored) if isinstance(stored, dict) else {}
        merged = dict(nodes)
        for uri, text in values.items():
            if uri in merged or len(merged) < NODES_MAX:
                merged[uri] = text
        if merged != nodes:
            await self.store.merge_facts(device.id, {FACT_NODES: merged})

    async def _unenroll(self, device: Device, live: _Live) -> None:
        """The user removed the work account: the device is marked unenrolled (and the
        event recorded in its facts), its open deliveries end, and its later sessions are
        refused until it is registered or enrols again."""
        live.unenrolled = True
        current = await self.store.get_device(device.id)
        facts = current.facts if current is not None else device.facts
        if enrollment.FACT_UNENROLLED in facts:
            return  # the same alert again
        await self.store.merge_facts(
            device.id,
            enrollment.unenrolled(facts),
            events=[device_unenrolled(device.id, reason=enrollment.USER_REQUEST)],
        )
        ended = await self.store.cancel_open(device.id, "unenrolled")
        # Its identity certificate dies with the enrollment, on every node at once.
        await self.store.revoke_certificates(
            device_id=device.id, reason="unenrolled at the user's request", at=time.time()
        )
        _log.warning(
            "Windows device %r unenrolled at the user's request: %d open deliveries ended,"
            " later sessions refused until it is registered again",
            device.id,
            ended,
        )

    async def _record_answer(self, device: Device, event: CommandAnswered, body: bytes) -> None:
        codes = [s.code for s in event.statuses]
        # Only 200-299 are success; 0, 1xx or no number at all is the device's error. A 418
        # on an Add that is retried is not: its Replace's status stands in.
        failed = [s for s in event.statuses if not _succeeded(s) and not s.retried]
        if failed:
            state, status = DeliveryState.ERROR, _status_text(failed[0])
        elif 202 in codes:
            state, status = DeliveryState.ACCEPTED, "202"
        else:
            state, status = DeliveryState.ACKNOWLEDGED, str(codes[-1] if codes else 200)
        result = _result_json(event) if event.results else None
        installs = apps.parse_install_status(event.results) if event.results else []
        await self.store.record_result(
            device.id,
            event.command_id,
            state,
            status,
            result,
            events=command_answered(device.id, event.command_id, state, status),
        )
        if state is not DeliveryState.ERROR:
            for target in apps.command_targets(body):
                covered = _inventory_scope(target)
                if covered is not None:
                    records = apps.parse_inventory(
                        [
                            i
                            for i in event.results
                            if (i.source or "").startswith(target.split("?")[0])
                        ]
                    )
                    await self._store_inventory(device.id, covered, records)
        for install in installs:
            await self._complete_from_status(device, install)

    async def _store_inventory(
        self, device_id: str, covered: _Coverage, records: list[apps.AppRecord]
    ) -> None:
        """Replaces the records the inventory query covered (a scope, maybe one
        classification, maybe one family) and keeps the rest."""
        device = await self.store.get_device(device_id)
        if device is None:
            return
        old = [
            msgspec.convert(r, apps.AppRecord)
            for r in device.facts.get(FACT_WINDOWS_APPS, [])
            if isinstance(r, dict)
        ]
        merged = [r for r in old if not covered.covers(r)] + records
        summary = [
            {
                "identifier": r.package_family,
                "version": r.version,
                "name": r.name,
                "source": r.classification,
            }
            for r in merged
        ]
        changed = inventory_changed(device_id, device.facts.get(FACT_APPS), summary)
        await self.store.merge_facts(
            device_id,
            {FACT_WINDOWS_APPS: msgspec.to_builtins(merged), FACT_APPS: summary},
            events=[changed] if changed is not None else (),
        )
        self._changed(device_id)

    async def _complete_from_alert(self, device: Device, result: apps.AppResult) -> None:
        """An install or uninstall result (Alert 1226/1224) completes the accepted command
        that targeted the same node."""
        for delivery in await self.store.deliveries(
            device.id, [DeliveryState.ACCEPTED, DeliveryState.SENT]
        ):
            if not apps.result_matches(result, apps.command_targets(delivery.body)):
                continue
            state = DeliveryState.ACKNOWLEDGED if result.success else DeliveryState.ERROR
            await self.store.record_result(
                device.id,
                delivery.command_id,
                state,
                str(result.code),
                msgspec.json.encode(result),
                events=command_answered(device.id, delivery.command_id, state, str(result.code)),
            )
            return
        _log.info("app result from %s matches no open command: %s", device.id, result)

    async def _complete_from_status(self, device: Device, install: apps.InstallState) -> None:
        """An AppInstallation status of 2 (failed) or 3 (installed) completes the accepted
        install of that package family; any status is kept as a fact."""
        current = await self.store.get_device(device.id)
        facts = current.facts if current is not None else device.facts
        installs = dict(facts.get(FACT_INSTALLS, {}) or {})
        installs[install.package_family] = msgspec.to_builtins(install)
        await self.store.merge_facts(device.id, {FACT_INSTALLS: installs})
        if install.status not in ("failed", "installed"):
            return
        for delivery in await self.store.deliveries(device.id, [DeliveryState.ACCEPTED]):
            targets = apps.command_targets(delivery.body)
            if not any(f"/AppInstallation/{install.package_family}" in t for t in targets):
                continue
            ok = install.status == "installed"
            code = "0" if ok else str(install.last_error if install.last_error is not None else 2)
            state = DeliveryState.ACKNOWLEDGED if ok else DeliveryState.ERROR
            await self.store.record_result(
                device.id,
                delivery.command_id,
                state,
                code,
                msgspec.json.encode(install),
                events=command_answered(device.id, delivery.command_id, state, code),
            )


def _restore(name: str, stored: StoredSession) -> _Live | None:
    """The saved session, or None (it then starts over) when this gateway cannot read it
    (saved by another version)."""
    try:
        return _Live.restored(name, stored)
    except SnapshotError as exc:
        _log.warning("OMA-DM session state dropped: %s", exc)
        return None


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _read(request: Request) -> tuple[Message, bool, str]:
    """The message, whether it is WBXML, and its content type; ``_Refused`` with the HTTP
    answer when the request cannot be a SyncML message (no header: no session to answer)."""
    if request.method != "POST":
        raise _Refused(_text(405, "POST a SyncML message here", (("allow", "POST"),)))
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type not in CONTENT_TYPES:
        allowed = ", ".join(CONTENT_TYPES)
        shown = content_type or "(none)"
        raise _Refused(_text(415, f"content type {shown!r} is not one of {allowed}"))
    wbxml = CONTENT_TYPES[content_type]
    if not request.body:
        raise _Refused(_text(400, "empty body: expected a SyncML message"))
    if (syncml.detect(request.body) == "wbxml") != wbxml:
        what = "WBXML" if wbxml else "XML"
        raise _Refused(_text(400, f"the body is not {what} as {content_type} says"))
    try:
        message = syncml.decode(request.body)
    except SyncMLDecodeError as exc:
        raise _Refused(_text(400, f"malformed SyncML: {exc}")) from None
    if not message.header.source:
        raise _Refused(_text(400, "the SyncHdr has no Source LocURI (the device id)"))
    return message, wbxml, content_type


@dataclass(frozen=True)
class _Verdict:
    status: int
    chal: dict[str, str] | None = None


@dataclass(frozen=True)
class _Coverage:
    """What an inventory query asked for: the records it replaces."""

    scope: str
    classification: str | None
    family: str | None

    def covers(self, record: apps.AppRecord) -> bool:
        return (
            record.scope == self.scope
            and self.classification in (None, record.classification)
            and self.family in (None, record.package_family)
        )


_EMM_APPS = "/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement"


def _inventory_scope(target: str) -> _Coverage | None:
    """The coverage of a ``Get .../AppManagement[/{class}[/{family}]]?list=StructData``."""
    path, _, query = target.partition("?")
    if query != "list=StructData":
        return None
    for prefix, scope in (("./Device", "device"), ("./User", "user"), (".", "device")):
        if path.startswith(prefix + _EMM_APPS):
            rest = [p for p in path[len(prefix + _EMM_APPS) :].split("/") if p]
            if len(rest) > 2:
                return None
            padded: list[str | None] = [*rest, None, None]
            return _Coverage(scope, padded[0], padded[1])
    return None


#: 2xx codes that say the command did not run: 214 cancelled, 215 not executed, 216 rolled
#: back with its Atomic. Recorded as the device's error, keeping the code.
NOT_RUN = frozenset({214, 215, 216})


def _succeeded(status: PartStatus) -> bool:
    return status.numeric and 200 <= status.code < 300 and status.code not in NOT_RUN


def _status_text(status: PartStatus) -> str:
    """The delivery status for a device Status: its code, or what it sent instead."""
    if status.numeric:
        return str(status.code)
    return (status.data or "").strip()[:64]


def _b64_fact(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def _server_auth_status(message: Message) -> tuple[int, bytes | None] | None:
    """The device's Status for the gateway's SyncHdr (code, and the NextNonce its Chal
    issues), or None when the message carries none."""
    for command in message.commands:
        if command.name != "Status" or command.cmd_ref != "0":
            continue
        data = command.data if isinstance(command.data, str) else ""
        try:
            code = int(data.strip())
        except ValueError:
            code = 0
        nonce = (command.chal or {}).get("NextNonce")
        return code, _b64_fact(nonce.strip()) if isinstance(nonce, str) else None
    return None


def _result_json(event: CommandAnswered) -> bytes:
    items: list[dict[str, Any]] = []
    for item in event.results:
        data = item.data
        items.append(
            {
                "source": item.source,
                "format": item.format,
                "type": item.type,
                "data": base64.b64encode(data).decode() if isinstance(data, bytes) else data,
            }
        )
    return msgspec.json.encode(items)


def _text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(
        status,
        (("content-type", "text/plain; charset=utf-8"), *headers),
        message.encode() + b"\n",
    )


def _certificate_matches(device: Device, cert: bytes | None) -> bool:
    """Whether the TLS client certificate is the one the device is bound to (or, during a
    renewal's grace, the one it renewed). A revoked binding names none."""
    if not cert:
        return False
    given = hashlib.sha256(cert).hexdigest()
    for name in ("sha256", "previous_sha256"):
        expected = device.auth.get(name)
        if isinstance(expected, str) and hmac.compare_digest(given, expected.lower()):
            return True
    return False


def _check_enrolled_id(device: Device, devinfo: dict[str, str]) -> None:
    """DevInfo's DevId is the DeviceID the device enrolled with (and its certificate's
    subject): a different one means the enrollment and the OMA-DM client disagree about
    who this is, worth an administrator's look."""
    enrolled = device.facts.get("enrollment")
    reported = devinfo.get("DevId")
    if (
        isinstance(enrolled, dict)
        and reported
        and enrolled.get("device_id") not in (None, reported)
    ):
        _log.warning(
            "Windows device %r reports DevId %r, enrolled as %r",
            device.id,
            reported,
            enrolled.get("device_id"),
        )
