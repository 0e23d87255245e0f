"""The Apple endpoints: ``PUT /mdm/apple/checkin`` and ``PUT /mdm/apple/connect``.

:class:`AppleService` reads check-in messages (:mod:`mdmgate.apple.checkin`) and command
reports (:mod:`mdmgate.apple.reports`), proves who sent them, turns them into stored state
(enrollment, push token, app inventory, install outcomes, declarative-management status)
and hands the device its queued commands one at a time. The models hold the protocol; this
module holds the I/O and the policy, but for the DeclarativeManagement check-in, which
:mod:`mdmgate.apple.declarative` answers.

Identity. The device proves itself with its identity certificate (mTLS, or the
``Mdm-Signature`` header); :mod:`mdmgate.apple.identity` reads it and decides whether it
may speak for the device. ``Authenticate`` binds it to the device (``auth = {"method":
"certificate", "sha256": ...}``); every later message must come with that certificate.
Refusals are 403 (400 for an unreadable signature), never 401: a 401 can make a device
remove its enrollment. A caller whose identity is not proven gets one answer, whether its
UDID is unknown, registered or enrolled (:data:`NOT_VERIFIED`): the refusal does not tell
which UDIDs the gateway knows.

Enrollment with the gateway's CA. An ``Authenticate`` whose certificate the built-in CA
issued for Apple (``Store.certificate_by_sha256``), unrevoked, unexpired and not bound to
another device, enrolls the device: it is registered (or moved) into the certificate's org,
bound to the certificate (``auth`` with its serial and expiry, ``Store.bind_certificate``)
and the event is recorded in fact ``enrollment_events``. Such a certificate that is
revoked, expired or another device's is refused like an unknown device.

Enrollment. ``Authenticate`` stores what the device says about itself (fact
``apple_enrollment``, and its ``os_version``, which the install-mode decision and the
schema checks read) every time. It starts a fresh enrollment: when the device is enrolled
(a ``TokenUpdate`` was accepted since its last ``Authenticate`` and it has not checked out),
its open commands end as ``re-enrolled``; commands queued for a device that is not
enrolled yet (registered, queued, then enrolling, or retrying an enrollment that failed
before its ``TokenUpdate``) wait for it.

Schema checks. A command report is checked against the command's response keys for the
device's platform and OS version; the problems go to the access log (``schema_warnings``),
never to the device.

Exchanges. An ``Idle`` report starts a new command exchange, named by a fresh key (the
``session`` of ``Store.take``); a command the device answers ``NotNow`` is not handed out
again in the same exchange (the device would spin) and is offered again after the next
``Idle``. The key lives in the store (its ``SessionStore`` role, kind :data:`EXCHANGE_KIND`,
keyed by device id), not in a process, so an ``Idle`` answered by one gateway node and the
``Acknowledged`` answered by another belong to one exchange; it expires ``exchange_ttl``
after its ``Idle``, and ``Authenticate`` and ``CheckOut`` end it. The body of a command the
device answers is read back from the store with its delivery, never kept in a process.

Events (:mod:`mdmgate.events`) are written by the store call that makes each change: the
TokenUpdate that completes an enrollment, the commands handed out and their answers,
inventory changes, a CheckOut that ends an enrollment, and a check-in (fact ``last_seen``)
at most once per ``LAST_SEEN_RESOLUTION``.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from mdmgate import plist
from mdmgate.apple import declarative, reports, schema
from mdmgate.apple.checkin import (
    Authenticate,
    CheckinMessage,
    CheckOut,
    DeclarativeManagement,
    GetBootstrapToken,
    SetBootstrapToken,
    TokenUpdate,
    UserAuthenticate,
    decode_checkin,
)
from mdmgate.apple.declarative import (
    ACTIVATION_IDENTIFIER,
    ACTIVATION_TYPE,
    FACT_DDM_STATUS,
    FACT_DDM_TOKENS,
)
from mdmgate.apple.errors import AppleDecodeError
from mdmgate.apple.identity import (
    NOT_VERIFIED,
    IdentityRefused,
    authorize,
    authorize_authenticate,
    bound_identity,
    certificate_auth,
    enrollment_refusal,
    request_identity,
)
from mdmgate.apple.reports import CommandReport, CommandStatus
from mdmgate.enrollment.history import FACT_EVENTS, with_event
from mdmgate.events import (
    command_answered,
    device_enrolled,
    device_unenrolled,
    inventory_changed,
    record_check_in,
)
from mdmgate.server.types import Request, Response
from mdmgate.storage import Delivery, DeliveryState, Device, Store, StoredSession
from mdmgate.storage.enrollment import IssuedCertificate
from mdmgate.windows.enrollment import reenrolled

__all__ = [
    "ACTIVATION_IDENTIFIER",
    "ACTIVATION_TYPE",
    "CHECKIN_CONTENT_TYPE",
    "EXCHANGE_KIND",
    "FACT_DDM_STATUS",
    "FACT_DDM_TOKENS",
    "NOT_VERIFIED",
    "AppleService",
    "expected_install_mode",
]

_log = logging.getLogger("mdmgate.apple")

CHECKIN_CONTENT_TYPE = "application/x-apple-aspen-mdm-checkin"
CHECKIN_PATH = "/mdm/apple/checkin"
CONNECT_PATH = "/mdm/apple/connect"

#: Facts keys this module writes (:mod:`mdmgate.apple.declarative` writes ``ddm_status``
#: and ``ddm_tokens``).
FACT_ENROLLMENT = "apple_enrollment"
FACT_APNS = "apns"
FACT_APPLE_APPS = "apple_apps"
FACT_APPS = "apps"
FACT_MANAGED_APPS = "managed_apps"
FACT_INSTALLS = "app_installs"

#: Auth keys this module writes besides ``method``/``sha256`` (never shown by the API).
AUTH_UNLOCK_TOKEN = "unlock_token"
AUTH_BOOTSTRAP_TOKEN = "bootstrap_token"

_XML = (("content-type", "application/xml"),)

#: At most this many schema warnings of one report are written to the access log.
_MAX_LOGGED_WARNINGS = 10

#: The states of a command the device holds and may report on.
_ANSWERABLE = frozenset({DeliveryState.SENT, DeliveryState.NOT_NOW})
_RESULT_STATES = {
    CommandStatus.ACKNOWLEDGED: DeliveryState.ACKNOWLEDGED,
    CommandStatus.ERROR: DeliveryState.ERROR,
    CommandStatus.COMMAND_FORMAT_ERROR: DeliveryState.ERROR,
}


#: The SessionStore kind of Apple command exchanges (keyed by device id).
EXCHANGE_KIND = "apple"


class _Exchange(msgspec.Struct, array_like=True, frozen=True, tag=1):
    """One device's current command exchange (from its last Idle), as the store holds it
    (msgpack, versioned by the tag)."""

    #: The store's name for the exchange (``take``).
    key: str


_EXCHANGE = msgspec.msgpack.Decoder(_Exchange)


#: Default cap on how often a command goes out without any answer. A healthy device answers
#: every command it gets (Acknowledged, Error, NotNow; a NotNow starts the count again); one
#: that asks for the next command instead has lost this one. Five in a row means the command
#: itself is the problem, and it must not stand in front of the device's queue for ever.
MAX_OFFERS = 5


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class AppleService:
    """The Apple MDM handlers. ``dev`` accepts unregistered devices (registering them under
    org ``/`` at Authenticate) and devices without a certificate, as ``mdmgate serve --dev``
    promises; never the default. A certificate bound to a device is checked even in
    development mode."""

    def __init__(
        self,
        store: Store,
        *,
        dev: bool = False,
        on_devices_changed: Callable[[Iterable[str]], None] | None = None,
        max_offers: int = MAX_OFFERS,
        exchange_ttl: float = 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_offers < 1:
            raise ValueError("max_offers must be at least 1")
        self.store = store
        #: A command handed out this often without any answer (the device asked for the
        #: next one instead: it crashed on it, or its answer never arrived) ends ``failed``.
        self.max_offers = max_offers
        #: Told when a device is registered or reports its inventory (the fleet index).
        self.on_devices_changed = on_devices_changed
        self.dev = dev
        #: Seconds an exchange lives after the Idle that started it (a later report without
        #: one starts a new exchange).
        self.exchange_ttl = exchange_ttl
        #: Unix time (the store's expiry is in Unix time); tests move it.
        self.clock = clock
        self._next_sweep = 0.0

    def _changed(self, device_id: str) -> None:
        if self.on_devices_changed is not None:
            self.on_devices_changed((device_id,))

    async def __call__(self, request: Request) -> Response:
        """Dispatches by path (for servers that mount one handler for both endpoints)."""
        if request.path == CHECKIN_PATH:
            return await self.checkin(request)
        if request.path == CONNECT_PATH:
            return await self.connect(request)
        return _text(404, f"no Apple endpoint at {request.path}")

    # -- check-in

    async def checkin(self, request: Request) -> Response:
        """``PUT /mdm/apple/checkin``."""
        try:
            if request.method != "PUT":
                raise _Refused(_text(405, "PUT a check-in message here", (("allow", "PUT"),)))
            content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
            if content_type != CHECKIN_CONTENT_TYPE:
                shown = content_type or "(none)"
                raise _Refused(_text(415, f"content type {shown!r} is not {CHECKIN_CONTENT_TYPE}"))
            try:
                message = decode_checkin(request.body)
            except AppleDecodeError as exc:
                raise _Refused(_text(400, f"malformed check-in: {exc}")) from None
            device_id = message.device_id
            if not device_id:
                raise _Refused(_text(400, "check-in without UDID or EnrollmentID"))
            if isinstance(message, UserAuthenticate) or message.channel == "user":
                # Only the device channel is served: 410 tells the device not to set up
                # the user channel (and is no auth failure, so it keeps its enrollment).
                return _text(410, "the user channel is not supported")
            identity = self._identity(request)
            device = await self.store.get_device(device_id)
            if isinstance(message, Authenticate):
                return await self._authenticate(message, device_id, device, identity)
            device = self._authorize(device_id, device, identity)
            return await self._checkin(message, device)
        except _Refused as refused:
            return refused.response

    async def _authenticate(
        self, message: Authenticate, device_id: str, device: Device | None, identity: str | None
    ) -> Response:
        """A fresh enrollment: bind the certificate, store what the device says about
        itself, void the queue of an earlier enrollment."""
        facts: dict[str, Any] = {FACT_ENROLLMENT: _enrollment(message)}
        issued = await self._issued(identity)
        org: str | None
        if issued is not None:
            bound, org = await self._enroll(device_id, device, issued, facts)
        else:
            bound, org = self._trust(device_id, device, identity)
        if device is None:
            created = Device(
                device_id,
                _platform(message),
                org or "/",
                message.os_version,
                auth=bound,
                facts=facts,
            )
            await self.store.upsert_devices([created])
            self._changed(device_id)
            return _plist_response({}, device_id, "Authenticate")
        # A fresh enrollment: the tokens of the old one (unlock, bootstrap) are void too.
        if bound and dict(device.auth) != bound:
            await self.store.set_auth(device_id, bound)
        if _dict(device.facts.get(FACT_ENROLLMENT)).get("enrolled") is True:
            # Enrolled and enrolling again (a reset device, a new profile): what was
            # queued for the old enrollment is void. A device not enrolled yet keeps the
            # commands queued for it.
            await self.store.cancel_open(device_id, "re-enrolled")
        await self.store.merge_facts(device_id, facts)
        fields: dict[str, Any] = {}
        if org is not None and org != device.org:
            fields["org"] = org
        if message.os_version and message.os_version != device.os_version:
            fields["os_version"] = message.os_version
        if fields:
            await self._update_device(device_id, fields)
        await self.store.drop_session(EXCHANGE_KIND, device_id)
        return _plist_response({}, device_id, "Authenticate")

    async def _enroll(
        self,
        device_id: str,
        device: Device | None,
        issued: IssuedCertificate,
        facts: dict[str, Any],
    ) -> tuple[dict[str, Any], str]:
        """A certificate of the gateway's CA enrolls the device into its org: bound to it
        (or refused like an unknown device, the log saying why), the event added to
        ``facts`` when the binding is new. The ``auth`` and org to store."""
        reason = enrollment_refusal(issued, device_id, now=self.clock())
        previous = bound_identity(device) if device is not None else None
        replacing = device is not None and previous is not None and previous != issued.sha256
        enrolled = device is not None and (
            _dict(device.facts.get(FACT_ENROLLMENT)).get("enrolled") is True
        )
        if reason is None and replacing and enrolled and device and device.org != issued.org:
            # Another org's token must not take over a device someone else manages.
            reason = f"enrolled in {device.org} with another certificate: retire it first"
        if reason is None and not await self.store.bind_certificate(issued.serial, device_id):
            reason = "certificate revoked or bound to another device meanwhile"
        if reason is not None:
            _log.info(
                "Apple device %r: Authenticate with certificate %s refused: %s",
                device_id,
                issued.serial,
                reason,
            )
            raise _Refused(_not_verified())
        if replacing and device is not None and isinstance(device.auth.get("serial"), str):
            # Enrolled again (a new profile): the certificate it replaces stops working.
            await self.store.revoke_certificates(
                serial=device.auth["serial"],
                reason="superseded by a new enrollment",
                at=self.clock(),
            )
        bound = certificate_auth(issued)
        if device is None or bound_identity(device) != bound["sha256"]:
            why = f"certificate {issued.serial} (token {issued.token_id or 'none'})"
            known = device.facts if device is not None else {}
            # A retired (unenrolled) device enrolling again is no longer unenrolled.
            facts.update(reenrolled(known, "enrolled again"))
            facts[FACT_EVENTS] = with_event(known, "enrolled", why, self.clock())
            _log.info("Apple device %r enrolls into %s: %s", device_id, issued.org, why)
        return bound, issued.org

    def _trust(
        self, device_id: str, device: Device | None, identity: str | None
    ) -> tuple[dict[str, Any], str | None]:
        """An Authenticate without a certificate of the gateway's CA: a registered device
        binds its first certificate (trust on first use), an unregistered one is refused
        outside development mode. The ``auth`` and org (``None``: as it is) to store."""
        bound = {"method": "certificate", "sha256": identity} if identity else {}
        if device is None:
            if not self.dev:
                _log.info("unregistered Apple device %r refused", device_id)
                raise _Refused(_not_verified())
            return bound, "/"
        try:
            authorize_authenticate(device, identity, dev=self.dev, now=self.clock())
        except IdentityRefused as refused:
            raise _refusal(device_id, "Authenticate", refused) from None
        return bound, None

    async def _issued(self, identity: str | None) -> IssuedCertificate | None:
        """The certificate of the gateway's CA that ``identity`` is, if any."""
        if identity is None:
            return None
        return await self.store.certificate_by_sha256(identity)

    async def _update_device(self, device_id: str, fields: Mapping[str, Any]) -> None:
        """Stores a device's own fields (the OS version it reported, the org it enrolled
        into), leaving its auth and facts as they are (one atomic step: a fact merged
        meanwhile is kept), and tells the fleet index."""
        if await self.store.update_device(device_id, fields):
            self._changed(device_id)

    async def _checkin(self, message: CheckinMessage, device: Device) -> Response:
        kind = message.message_type
        if not isinstance(message, CheckOut):
            await record_check_in(self.store, device, self.clock())
        if isinstance(message, TokenUpdate):
            return await self._token_update(message, device)
        if isinstance(message, CheckOut):
            old = _dict(device.facts.get(FACT_ENROLLMENT))
            enrollment = {**old, "enrolled": False}
            reason = "checked out (MDM profile removed)"
            # Reported when it ends an enrollment (not for a repeated CheckOut).
            gone = [device_unenrolled(device.id, reason=reason)] if old.get("enrolled") else []
            await self.store.merge_facts(device.id, {FACT_ENROLLMENT: enrollment}, events=gone)
            await self.store.cancel_open(device.id, "checked out")
            await self.store.drop_session(EXCHANGE_KIND, device.id)
            # The MDM profile is gone: so is the identity it installed, on every node.
            await self.store.revoke_certificates(
                device_id=device.id, reason=reason, at=self.clock()
            )
            return _plist_response({}, device.id, kind)
        if isinstance(message, GetBootstrapToken):
            stored = device.auth.get(AUTH_BOOTSTRAP_TOKEN)
            answer = {"BootstrapToken": base64.b64decode(stored)} if stored else {}
            return _plist_response(answer, device.id, kind)
        if isinstance(message, SetBootstrapToken):
            auth = dict(device.auth)
            if message.bootstrap_token:
                auth[AUTH_BOOTSTRAP_TOKEN] = base64.b64encode(message.bootstrap_token).decode()
            else:  # no token: the device asks to remove it
                auth.pop(AUTH_BOOTSTRAP_TOKEN, None)
            if auth != device.auth:
                await self.store.set_auth(device.id, auth)
            return _plist_response({}, device.id, kind)
        if isinstance(message, DeclarativeManagement):
            return await declarative.respond(self.store, message, device)
        return _text(400, f"check-in MessageType {kind!r} is not supported")

    async def _token_update(self, message: TokenUpdate, device: Device) -> Response:
        if not message.token or not message.push_magic:
            return _text(400, "TokenUpdate without Token or PushMagic")
        apns = {"token": message.token.hex(), "push_magic": message.push_magic}
        if message.topic is not None:
            apns["topic"] = message.topic
        old_enrollment = _dict(device.facts.get(FACT_ENROLLMENT))
        enrollment = {
            **old_enrollment,
            "enrolled": True,
            "awaiting_configuration": message.awaiting_configuration,
        }
        changes: dict[str, Any] = {}
        if device.facts.get(FACT_APNS) != apns:
            changes[FACT_APNS] = apns
        if old_enrollment != enrollment:
            changes[FACT_ENROLLMENT] = enrollment
        enrolled = []
        if old_enrollment.get("enrolled") is not True:
            # The TokenUpdate that completes an enrollment: the device can be pushed now.
            enrolled.append(
                device_enrolled(device.id, platform=device.platform, org=device.org, via="apple")
            )
        if changes:  # devices repeat TokenUpdate unchanged: no write then
            await self.store.merge_facts(device.id, changes, events=enrolled)
        if message.unlock_token:
            unlock = base64.b64encode(message.unlock_token).decode()
            if device.auth.get(AUTH_UNLOCK_TOKEN) != unlock:
                await self.store.set_auth(device.id, {**device.auth, AUTH_UNLOCK_TOKEN: unlock})
        return _plist_response({}, device.id, "TokenUpdate")

    # -- command channel

    async def connect(self, request: Request) -> Response:
        """``PUT /mdm/apple/connect``: record the report, hand out the next command."""
        try:
            if request.method != "PUT":
                raise _Refused(_text(405, "PUT a command report here", (("allow", "PUT"),)))
            try:
                report = reports.decode_report(request.body)
            except AppleDecodeError as exc:
                raise _Refused(_text(400, f"malformed command report: {exc}")) from None
            device_id = report.device_id
            if not device_id:
                raise _Refused(_text(400, "command report without UDID or EnrollmentID"))
            status = report.known_status
            if status is None:
                raise _Refused(_text(400, f"unknown command report Status {report.status!r}"))
            if status is not CommandStatus.IDLE and not report.command_uuid:
                raise _Refused(_text(400, f"{report.status} report without CommandUUID"))
            if report.user_id is not None or report.enrollment_user_id is not None:
                return _text(410, "the user channel is not supported")
            identity = self._identity(request)
            fresh = status is CommandStatus.IDLE
            # One read: the device, the exchange a report continues, whether anything waits,
            # and the delivery the report answers.
            context = await self.store.message_context(
                device_id, EXCHANGE_KIND, device_id, command_id=report.command_uuid
            )
            stored = None if fresh else context.session
            device = self._authorize(device_id, context.device, identity)
        except _Refused as refused:
            return refused.response
        await record_check_in(self.store, device, self.clock())
        key = await self._exchange(device_id, stored, fresh=fresh)
        log = {"device": device_id, "status": report.status}
        if status is CommandStatus.IDLE:
            taken = []
            if context.offered:  # most Idle check-ins find nothing: no take then
                taken = await self.store.take(
                    device_id, key, 1, max_offers=self.max_offers, delivered_event=True
                )
        else:
            assert report.command_uuid is not None
            warnings, taken = await self._record(
                device, report, status, request.body, key, delivery=context.delivery
            )
            log["schema_warnings"] = _warnings_text(warnings)
        if not taken:
            return Response(200, (), b"", log)
        (delivery,) = taken
        log["command"] = delivery.command_id
        return Response(200, _XML, delivery.body, log)

    async def _exchange(self, device_id: str, stored: StoredSession | None, *, fresh: bool) -> str:
        """The key of the device's current exchange (``stored``: as read with the device): a
        new one after an Idle (or when none is stored), kept in the store for whichever node
        gets the device's next report."""
        now = self.clock()
        if now >= self._next_sweep:
            self._next_sweep = now + 60.0
            await self.store.expire_sessions(now)
        if not fresh and stored is not None:
            try:
                return _EXCHANGE.decode(stored.state).key
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                _log.warning("Apple exchange of %r dropped: %s", device_id, exc)
        key = uuid.uuid4().hex
        state = msgspec.msgpack.encode(_Exchange(key))
        # A new exchange replaces whatever the device had (expected_rev None).
        await self.store.save_session(
            EXCHANGE_KIND, device_id, state, expected_rev=None, expires_at=now + self.exchange_ttl
        )
        return key

    async def _record(
        self,
        device: Device,
        report: CommandReport,
        status: CommandStatus,
        raw: bytes,
        exchange: str,
        *,
        delivery: Delivery | None,
    ) -> tuple[list[schema.SchemaIssue], list[Delivery]]:
        """Stores the result and the facts it brings, and hands out the next command.
        Returns the report's schema problems (for the command's RequestType, the device's
        platform and OS version) and the command taken."""
        command_id = report.command_uuid or ""
        if status is CommandStatus.NOT_NOW:
            state = DeliveryState.NOT_NOW
            _, taken = await self._answer_and_take(
                device.id, command_id, state, "NotNow", None, exchange=exchange
            )
            return [], taken
        # The body of the command answered (``delivery``: from the store, read with the
        # device, whichever node handed it out): what it asked for tells how to read the
        # answer.
        body = delivery.body if delivery is not None and delivery.state in _ANSWERABLE else None
        command = _command(body)
        request_type = command.get("RequestType")
        facts = _result_facts(device, report, status, command, command_id)
        state = _RESULT_STATES[status]
        if not facts:
            # Most answers bring no facts: the answer and the next command are one write.
            changed, taken = await self._answer_and_take(
                device.id, command_id, state, report.status, raw, exchange=exchange
            )
            warnings = _schema_warnings(device, report, request_type) if changed else []
            return warnings, taken
        # The facts are stored after the answer and before the next command goes out, so
        # that the event log reads in that order.
        events = command_answered(device.id, command_id, state, report.status)
        changed = await self.store.record_result(
            device.id, command_id, state, report.status, raw, events=events
        )
        warnings = []
        if changed:  # else a repeated report, or a command the device does not hold
            warnings = _schema_warnings(device, report, request_type)
            inventory = None
            if FACT_APPS in facts:
                inventory = inventory_changed(
                    device.id, device.facts.get(FACT_APPS), facts[FACT_APPS]
                )
            await self.store.merge_facts(
                device.id, facts, events=[inventory] if inventory is not None else ()
            )
            # The fleet index reads both: installed versions, and which copies are managed
            # (a user's copy is what a take-over roll-out takes).
            if FACT_APPS in facts or FACT_MANAGED_APPS in facts:
                self._changed(device.id)
        taken = await self.store.take(
            device.id, exchange, 1, max_offers=self.max_offers, delivered_event=True
        )
        return warnings, taken

    async def _answer_and_take(
        self,
        device_id: str,
        command_id: str,
        state: DeliveryState,
        status: str,
        raw: bytes | None,
        *,
        exchange: str,
    ) -> tuple[bool, list[Delivery]]:
        """The device's answer stored and its next command handed out, in one write."""
        return await self.store.record_and_take(
            device_id,
            command_id,
            state,
            status,
            raw,
            events=command_answered(device_id, command_id, state, status),
            session=exchange,
            limit=1,
            max_offers=self.max_offers,
            delivered_event=True,
        )

    # -- identity

    def _identity(self, request: Request) -> str | None:
        """The identity a request comes with (:func:`~mdmgate.apple.identity.request_identity`),
        ``_Refused`` for a signature that cannot be read or does not verify."""
        try:
            return request_identity(request, dev=self.dev)
        except IdentityRefused as refused:
            raise _Refused(_text(refused.status, refused.text)) from None

    def _authorize(self, device_id: str, device: Device | None, identity: str | None) -> Device:
        """The device a message after Authenticate comes from, if it is who it says. The
        refusals are all alike (the log tells them apart)."""
        try:
            return authorize(device, identity, dev=self.dev, now=self.clock())
        except IdentityRefused as refused:
            raise _refusal(device_id, "message", refused) from None


# -- results as state


def _result_facts(
    device: Device,
    report: CommandReport,
    status: CommandStatus,
    command: dict[str, Any],
    command_id: str,
) -> dict[str, Any]:
    """The facts an answer brings: the installed or managed apps, an install's outcome."""
    request_type = command.get("RequestType")
    facts: dict[str, Any] = {}
    if status is CommandStatus.ACKNOWLEDGED:
        if request_type == "InstalledApplicationList" or (
            request_type is None and "InstalledApplicationList" in report.extra
        ):
            facts.update(_installed(device, report, command))
        elif request_type == "ManagedApplicationList" or (
            request_type is None and "ManagedApplicationList" in report.extra
        ):
            facts.update(_managed(device, report, command))
    if request_type == "InstallApplication":
        facts.update(_install_outcome(device, report, command, command_id))
    return facts


def _schema_warnings(
    device: Device, report: CommandReport, request_type: Any
) -> list[schema.SchemaIssue]:
    """The problems of a report's result keys for the device's platform and OS version."""
    if not isinstance(request_type, str):
        return []
    platform = device.platform if device.platform in schema.PLATFORM_OS else None
    os_version = device.os_version or _dict(device.facts.get(FACT_ENROLLMENT)).get("os_version")
    return schema.validate_response(
        request_type,
        {"Status": report.status, **report.extra},
        platform=platform,
        channel="device",
        os_version=os_version if isinstance(os_version, str) else None,
    )


def _warnings_text(warnings: Sequence[schema.SchemaIssue]) -> str:
    shown = "; ".join(str(w) for w in warnings[:_MAX_LOGGED_WARNINGS])
    more = len(warnings) - _MAX_LOGGED_WARNINGS
    return f"{shown} (and {more} more)" if more > 0 else shown


def _command(body: bytes | None) -> dict[str, Any]:
    """The ``Command`` dictionary of a stored command body (empty when unknown)."""
    if not body:
        return {}
    try:
        value = plist.loads(body)
    except Exception:  # the codec's own errors: a raw body queued by an admin
        return {}
    command = value.get("Command") if isinstance(value, dict) else None
    return command if isinstance(command, dict) else {}


def _installed(device: Device, report: CommandReport, command: Mapping[str, Any]) -> dict[str, Any]:
    """``apple_apps`` (full records) and ``apps`` (what counts as installed)."""
    result = reports.installed_applications(report, validate=False)
    records: list[dict[str, Any]] = []
    for app in result.apps:
        if not app.identifier:
            continue
        record = {k: v for k, v in msgspec.structs.asdict(app).items() if v is not None}
        if not record.get("extra"):
            record.pop("extra", None)
        record["installing"] = bool(app.installing)
        records.append(msgspec.to_builtins(record))
    # A list filtered by Identifiers or ManagedAppsOnly covers only part of the device:
    # replace what it covers and keep the rest.
    wanted = command.get("Identifiers")
    if isinstance(wanted, list) or command.get("ManagedAppsOnly"):
        covered = {str(i) for i in wanted} if isinstance(wanted, list) else set()
        covered |= {r["identifier"] for r in records}
        old = [
            r
            for r in device.facts.get(FACT_APPLE_APPS, [])
            if isinstance(r, dict) and r.get("identifier") not in covered
        ]
        records = old + records
    summary = [
        {
            "identifier": r["identifier"],
            "version": r.get("short_version", r.get("version")),
            "name": r.get("name"),
            "source": "installed",
        }
        for r in records
        if not r.get("installing")  # an app still installing is not installed yet
    ]
    return {FACT_APPLE_APPS: records, FACT_APPS: summary}


def _managed(device: Device, report: CommandReport, command: Mapping[str, Any]) -> dict[str, Any]:
    """``managed_apps`` by bundle id, every state kept (Prompting, UserRejected, Failed...),
    and the state of the installs the gateway tracks."""
    result = reports.managed_applications(report, validate=False)
    apps = {
        bundle_id: {
            "status": app.status,
            "management_flags": app.management_flags,
            "external_version_id": app.external_version_identifier,
        }
        for bundle_id, app in result.apps.items()
    }
    if isinstance(command.get("Identifiers"), list):  # a partial list
        apps = {**_dict(device.facts.get(FACT_MANAGED_APPS)), **apps}
    facts: dict[str, Any] = {FACT_MANAGED_APPS: apps}
    installs = _dict(device.facts.get(FACT_INSTALLS))
    updated = dict(installs)
    for bundle_id, app in result.apps.items():
        tracked = installs.get(bundle_id)
        if isinstance(tracked, dict) and app.status and tracked.get("state") != app.status:
            updated[bundle_id] = {**tracked, "state": app.status}
    if updated != installs:
        facts[FACT_INSTALLS] = updated
    return facts


def _install_outcome(
    device: Device, report: CommandReport, command: Mapping[str, Any], command_id: str
) -> dict[str, Any]:
    """``app_installs[bundle id]``: the device's answer to InstallApplication and how the
    install was expected to happen (silently or with a prompt)."""
    result = reports.install_application_result(report)
    key = result.identifier or command.get("Identifier")
    if not key and command.get("iTunesStoreID") is not None:
        key = f"itunes:{command['iTunesStoreID']}"  # no bundle id known yet
    if not key and command.get("ManifestURL"):
        key = str(command["ManifestURL"])
    if not key:
        return {}
    record: dict[str, Any] = {
        "state": result.state,
        "expected": expected_install_mode(device),
        "command_id": command_id,
    }
    if report.status != CommandStatus.ACKNOWLEDGED:
        record["state"] = result.state or "Failed"
        record["error"] = "; ".join(str(e) for e in report.error_chain) or report.status
    for name, value in (
        ("rejection_reason", result.rejection_reason),
        ("itunes_store_id", command.get("iTunesStoreID")),
        ("manifest_url", command.get("ManifestURL")),
    ):
        if value is not None:
            record[name] = value
    installs = {**_dict(device.facts.get(FACT_INSTALLS)), str(key): record}
    return {FACT_INSTALLS: installs}


def expected_install_mode(device: Device) -> str:
    """``"silent"`` or ``"prompt"``: how an ``InstallApplication`` is expected to reach
    the user. Supervised iOS/iPadOS 10 and later install (and update) store apps without
    asking; supervised Macs too. Anything else, or an unknown supervision or OS version,
    may show a prompt the user can decline."""
    if not device.supervised:
        return "prompt"
    if device.platform == "macos":
        return "silent"
    if device.platform in ("ios", "ipados"):
        version = device.os_version or _dict(device.facts.get(FACT_ENROLLMENT)).get("os_version")
        try:
            major = int(str(version).split(".")[0])
        except ValueError:
            return "prompt"
        return "silent" if major >= 10 else "prompt"
    return "prompt"


# -- small helpers


def _refusal(device_id: str, what: str, refused: IdentityRefused) -> _Refused:
    """The answer to a refused device (the same for every reason), the reason logged."""
    log = _log.warning if refused.suspicious else _log.info
    log("Apple device %r: %s refused: %s", device_id, what, refused.reason)
    return _Refused(_text(refused.status, refused.text))


def _enrollment(message: Authenticate) -> dict[str, Any]:
    """Fact ``apple_enrollment`` of an Authenticate: what the device says about itself."""
    enrollment = {
        "enrolled": False,
        "topic": message.topic,
        "os_version": message.os_version,
        "build_version": message.build_version,
        "product": message.product_name,
        "model": message.model,
        "model_name": message.model_name,
        "device_name": message.device_name,
        "serial": message.serial_number,
        "imei": message.imei,
        "meid": message.meid,
    }
    return {k: v for k, v in enrollment.items() if v is not None}


def _platform(message: Authenticate) -> str:
    """The platform of a device seen first at Authenticate (development mode)."""
    name = message.product_name or message.model or message.model_name or ""
    if name.startswith("iPad"):
        return "ipados"
    if "Mac" in name:
        return "macos"
    return "ios"


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _plist_response(value: Mapping[str, Any], device_id: str, kind: str) -> Response:
    return Response(200, _XML, plist.dumps(dict(value)), {"device": device_id, "message": kind})


def _not_verified() -> Response:
    return _text(403, NOT_VERIFIED)


def _text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(
        status,
        (("content-type", "text/plain; charset=utf-8"), *headers),
        message.encode() + b"\n",
    )
