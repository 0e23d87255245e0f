"""The correctness ledger: every command each simulated device received and answered, and
the check of it against what the gateway stored.

Recording. A device calls :meth:`Ledger.received` for each command it takes out of a server
message and :meth:`Ledger.answered` for each answer it puts into its next message, *before*
sending that message. The runner's exchange wrapper then tells the ledger whether the message
reached the gateway: :meth:`Ledger.exchange_ok` (a reply came: the answers are
*confirmed*) or :meth:`Ledger.exchange_failed` (a transport error: the gateway may or may
not have stored them, they are *in doubt*). A command may be answered more than once: NotNow
and then a final answer (Apple), 202 and then the outcome by Alert 1226 (Windows); the last
answer is the one the gateway must hold.

Redelivery. A command received again is legitimate (*retried*) when the device's last answer
to it was NotNow, was in doubt, or never left (the device went silent or its session broke
before answering). Received again after a confirmed final answer is a *duplicate*.

The check (:func:`compare`, one device at a time) holds the ledger against the device's
deliveries from ``GET /api/v1/devices/{id}/deliveries``:

* ``ok``: answered at the gateway with the state the device last answered;
* ``not_now`` / ``accepted``: open at the gateway in that state, as the device answered;
* ``unfinished``: queued or handed out and not answered yet when the run ended;
* ``failed``: given up by the gateway after unanswered offers the device never answered;
* problems: ``lost`` (the device's confirmed answer is not stored), ``duplicated``,
  ``misattributed`` (the device received a command not queued for it, or the gateway holds an
  answer from a device that never received the command), ``mismatched`` (stored with another
  answer than the device gave), ``phantom`` (stored as answered, though the device received
  it and never answered).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import msgspec
import trio

from mdmgate.simulate.transport import AdminApi, ApiFailure

__all__ = [
    "CATEGORIES",
    "PROBLEMS",
    "GatewayDelivery",
    "GatewayReader",
    "GatewayUnreadable",
    "Ledger",
    "LedgerResult",
    "Observed",
    "Problem",
    "compare",
]

#: Device answers, in the gateway's delivery-state words.
ANSWERS = frozenset(("acknowledged", "error", "not_now", "accepted"))
#: Answers after which the command must not come again.
_FINAL_ANSWERS = frozenset(("acknowledged", "error", "accepted"))
#: Gateway delivery states that hold a device's answer for good.
_STORED_FINAL = frozenset(("acknowledged", "error"))
#: Gateway delivery states that hold an answer of the device (final or not).
_ANSWERED = _STORED_FINAL | {"not_now", "accepted"}

#: How far an answer got: sent in a message whose reply came, or whose exchange failed.
PENDING, CONFIRMED, IN_DOUBT = "pending", "confirmed", "in_doubt"

PROBLEMS = ("lost", "duplicated", "misattributed", "mismatched", "phantom")
CATEGORIES = ("ok", "not_now", "accepted", "unfinished", "failed", "retried", *PROBLEMS)
#: Problems kept in detail; the rest are only counted.
MAX_DETAILS = 20


class _Entry:
    """One device's history of one command."""

    __slots__ = ("answers", "duplicates", "name", "received", "retried")

    def __init__(self, name: str) -> None:
        self.name = name
        self.received = 0
        self.duplicates = 0
        self.retried = 0
        # [status, confirmation] per answer, oldest first.
        self.answers: list[list[str]] = []


class Observed(msgspec.Struct, frozen=True):
    """What one device saw of one command: the ledger's side of :func:`compare`."""

    name: str
    received: int
    answers: tuple[tuple[str, str], ...] = ()  # (status, confirmation), oldest first
    duplicates: int = 0
    retried: int = 0

    @property
    def last(self) -> tuple[str, str] | None:
        return self.answers[-1] if self.answers else None


class GatewayDelivery(msgspec.Struct, frozen=True):
    """What the gateway holds of one command for one device (the admin API's delivery)."""

    command_id: str
    state: str
    status: str | None = None
    offers: int = 0
    kind: str = ""


class Ledger:
    """What the fleet saw, per device and command (ids as the device knows them: the Apple
    CommandUUID; for Windows, see :mod:`mdmgate.simulate.windows`)."""

    def __init__(self) -> None:
        self._devices: dict[str, dict[str, _Entry]] = {}
        # Answers recorded since the device's last exchange: what the next exchange carries.
        self._unsent: dict[str, list[list[str]]] = {}
        self.received_total = 0
        self.answered_total = 0

    def received(self, device_id: str, command_id: str, name: str) -> None:
        """The device was handed command ``command_id`` (its request type is ``name``)."""
        commands = self._devices.get(device_id)
        if commands is None:
            commands = self._devices[device_id] = {}
        entry = commands.get(command_id)
        if entry is None:
            entry = commands[command_id] = _Entry(name)
        elif entry.answers and entry.answers[-1][0] in _FINAL_ANSWERS:
            # Still pending here means it was recorded after the reply that took it.
            if entry.answers[-1][1] == IN_DOUBT:
                entry.retried += 1
            else:
                entry.duplicates += 1
        else:
            # Never answered (the device went silent, the session broke) or NotNow.
            entry.retried += 1
        entry.received += 1
        self.received_total += 1

    def answered(self, device_id: str, command_id: str, status: str) -> None:
        """The device answered ``command_id``: acknowledged, error, not_now or accepted."""
        if status not in ANSWERS:
            raise ValueError(f"answer {status!r} is not one of {', '.join(sorted(ANSWERS))}")
        commands = self._devices.get(device_id)
        if commands is None:
            commands = self._devices[device_id] = {}
        entry = commands.get(command_id)
        if entry is None:
            # An answer to something never received: kept, so the check can name it.
            entry = commands[command_id] = _Entry("")
        answer = [status, PENDING]
        entry.answers.append(answer)
        unsent = self._unsent.get(device_id)
        if unsent is None:
            self._unsent[device_id] = [answer]
        else:
            unsent.append(answer)
        self.answered_total += 1

    def exchange_ok(self, device_id: str) -> None:
        """The device's message got a reply: the answers it carried reached the gateway."""
        for answer in self._unsent.pop(device_id, ()):
            answer[1] = CONFIRMED

    def exchange_failed(self, device_id: str) -> None:
        """The device's message got no reply: the gateway may not have its answers."""
        for answer in self._unsent.pop(device_id, ()):
            answer[1] = IN_DOUBT

    def session_ended(self, device_id: str) -> None:
        """The session is over; answers recorded but never sent did not leave the device."""
        for answer in self._unsent.pop(device_id, ()):
            answer[1] = IN_DOUBT

    def devices(self) -> Iterator[str]:
        return iter(self._devices)

    def observed(self, device_id: str) -> dict[str, Observed]:
        """One device's ledger, for :func:`compare`."""
        return {
            command_id: Observed(
                entry.name,
                entry.received,
                tuple((a[0], a[1]) for a in entry.answers),
                entry.duplicates,
                entry.retried,
            )
            for command_id, entry in self._devices.get(device_id, {}).items()
        }

    def waiting(self, device_id: str) -> bool:
        """Whether the device has a command not settled yet: received and not answered for
        good (NotNow, in doubt, never answered) or accepted with its outcome to come."""
        for entry in self._devices.get(device_id, {}).values():
            if not entry.answers:
                return True
            status, confirmation = entry.answers[-1]
            # NotNow comes again; a 202 still owes its outcome.
            if status in ("not_now", "accepted") or confirmation != CONFIRMED:
                return True
        return False


class Problem(msgspec.Struct, frozen=True):
    """One thing the check found wrong, with what each side said."""

    category: str
    device_id: str
    command_id: str
    detail: str


class LedgerResult(msgspec.Struct):
    """The check's outcome: counts per category and the first problems in detail."""

    counts: dict[str, int] = msgspec.field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    problems: list[Problem] = msgspec.field(default_factory=list)
    devices_checked: int = 0
    #: Devices whose deliveries could not be read (each error once, with how often).
    unreadable: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def problem_count(self) -> int:
        return sum(self.counts[p] for p in PROBLEMS)

    @property
    def clean(self) -> bool:
        return self.problem_count == 0 and not self.unreadable

    def add(self, category: str, device_id: str, command_id: str, detail: str) -> None:
        self.counts[category] += 1
        if category in PROBLEMS and len(self.problems) < MAX_DETAILS:
            self.problems.append(Problem(category, device_id, command_id, detail))

    def to_builtins(self) -> dict[str, Any]:
        return {
            "passed": self.clean,
            "devices_checked": self.devices_checked,
            "counts": dict(self.counts),
            "problems": [msgspec.to_builtins(p) for p in self.problems],
            "unreadable": dict(self.unreadable),
        }


def _describe(seen: Observed) -> str:
    answers = ", ".join(f"{s} ({c})" for s, c in seen.answers) or "no answer"
    return f"received {seen.received}x, answered: {answers}"


def compare(
    device_id: str,
    observed: dict[str, Observed],
    deliveries: Iterable[GatewayDelivery],
    result: LedgerResult,
) -> None:
    """Holds one device's ledger against its deliveries at the gateway; adds to ``result``."""
    result.devices_checked += 1
    queued: set[str] = set()
    for delivery in deliveries:
        queued.add(delivery.command_id)
        _one(device_id, delivery, observed.get(delivery.command_id), result)
    for command_id, seen in observed.items():
        if command_id not in queued:
            result.add(
                "misattributed",
                device_id,
                command_id,
                f"the device {_describe(seen)}, but the gateway has no such delivery for it",
            )


def _one(
    device_id: str, delivery: GatewayDelivery, seen: Observed | None, result: LedgerResult
) -> None:
    gateway = f"gateway: {delivery.state}" + (
        f" (status {delivery.status})" if delivery.status else ""
    )
    if seen is None:
        _unseen(device_id, delivery, gateway, result)
        return
    command_id = delivery.command_id
    if seen.duplicates:
        result.add(
            "duplicated",
            device_id,
            command_id,
            f"{gateway}; the device {_describe(seen)}: handed out again after a confirmed answer",
        )
    result.counts["retried"] += seen.retried
    if delivery.state in _ANSWERED:
        _answered(device_id, delivery, seen, gateway, result)
        return
    # Open at the gateway (queued, sent) or given up (failed): nothing may be confirmed final.
    last = seen.last
    if last is not None and last[1] == CONFIRMED and last[0] != "not_now":
        result.add(
            "lost",
            device_id,
            command_id,
            f"{gateway}, but the device's answer reached it: the device {_describe(seen)}",
        )
    else:
        result.add(
            "failed" if delivery.state == "failed" else "unfinished", device_id, command_id, gateway
        )


def _unseen(device_id: str, delivery: GatewayDelivery, gateway: str, result: LedgerResult) -> None:
    if delivery.state in _ANSWERED:
        result.add(
            "misattributed",
            device_id,
            delivery.command_id,
            f"{gateway}, but this device never received the command",
        )
    elif delivery.state == "failed":
        # Given up unanswered: possible without the device ever getting it (the replies
        # carrying it were lost on the way); the device agrees that it never answered.
        result.add("failed", device_id, delivery.command_id, gateway)
    else:
        result.add("unfinished", device_id, delivery.command_id, gateway)


def _answered(
    device_id: str, delivery: GatewayDelivery, seen: Observed, gateway: str, result: LedgerResult
) -> None:
    state, last = delivery.state, seen.last
    if last is None:
        category = "phantom"
    elif last[0] == state:
        category = _settled(state)
    elif last[1] != CONFIRMED and any(s == state for s, _ in seen.answers[:-1]):
        # The last answer is in doubt: it may never have arrived, leaving an earlier one
        # (the same device's, for the same command) as the one stored.
        category = _settled(state)
    else:
        category = "mismatched"
    detail = gateway if category not in PROBLEMS else f"{gateway}, but the device {_describe(seen)}"
    result.add(category, device_id, delivery.command_id, detail)


def _settled(state: str) -> str:
    return state if state in ("not_now", "accepted") else "ok"


# -- reading the gateway ----------------------------------------------------------------------

#: Delivery states the gateway still holds open: it expects the device again.
OPEN_STATES = frozenset(("queued", "sent", "not_now", "accepted"))


class GatewayUnreadable(Exception):
    """The admin API could not be read where the run needs it; the text says what failed."""


class _DeliveriesOut(msgspec.Struct):
    device_id: str
    deliveries: list[GatewayDelivery]


class _CommandSummary(msgspec.Struct):
    command_id: str
    counts: dict[str, int]


class _CommandPage(msgspec.Struct):
    commands: list[_CommandSummary]
    next: str | None = None


class _DeliveryOf(msgspec.Struct):
    device_id: str
    state: str


class _CommandOut(msgspec.Struct):
    command_id: str
    deliveries: list[_DeliveryOf] = msgspec.field(default_factory=list)
    body_text: str = ""
    body_encoding: str = "text"


class GatewayReader:
    """What the gateway holds, through its admin API, ``parallel`` calls at a time. Calls
    that fail are noted (``note``) and counted in :attr:`failures`; what they would have
    returned is left out."""

    def __init__(self, api: AdminApi, note: Callable[[str], None], parallel: int = 32) -> None:
        self._api = api
        self._note = note
        self._parallel = parallel
        self.failures = 0

    async def _each(self, items: Iterable[str], read: Callable[[str], Any]) -> None:
        work = iter(items)

        async def worker() -> None:
            for item in work:
                try:
                    await read(item)
                except (ApiFailure, msgspec.ValidationError, ValueError) as e:
                    self.failures += 1
                    self._note(str(e))

        async with trio.open_nursery() as nursery:
            for _ in range(self._parallel):
                nursery.start_soon(worker)

    async def deliveries(self, device_ids: Sequence[str]) -> dict[str, list[GatewayDelivery]]:
        """Each device's deliveries (``GET /api/v1/devices/{id}/deliveries``), by id."""
        found: dict[str, list[GatewayDelivery]] = {}

        async def read(device_id: str) -> None:
            path = f"/api/v1/devices/{quote(device_id, safe='')}/deliveries"
            _, data = await self._api.call("GET", path)
            found[device_id] = msgspec.convert(data, _DeliveriesOut).deliveries

        await self._each(device_ids, read)
        return found

    async def bodies(self, command_ids: Iterable[str]) -> dict[str, bytes]:
        """The stored body of each command (``GET /api/v1/commands/{id}``), by id."""
        found: dict[str, bytes] = {}

        async def read(command_id: str) -> None:
            _, data = await self._api.call("GET", f"/api/v1/commands/{quote(command_id, safe='')}")
            out = msgspec.convert(data, _CommandOut)
            binary = out.body_encoding == "base64"
            found[command_id] = (
                base64.b64decode(out.body_text) if binary else out.body_text.encode()
            )

        await self._each(sorted(command_ids), read)
        return found

    async def open_devices(self) -> set[str]:
        """The devices with deliveries still open, read from the commands (with their counts
        per state) rather than device by device: far fewer calls."""
        open_commands: list[str] = []
        after: str | None = None
        try:
            while True:
                query = "?limit=1000" + (f"&after={quote(after, safe='')}" if after else "")
                _, data = await self._api.call("GET", "/api/v1/commands" + query)
                page = msgspec.convert(data, _CommandPage)
                open_commands.extend(
                    c.command_id
                    for c in page.commands
                    if any(c.counts.get(state) for state in OPEN_STATES)
                )
                if not page.next:
                    break
                after = page.next
        except (ApiFailure, msgspec.ValidationError) as e:
            self.failures += 1
            raise GatewayUnreadable(f"reading the open commands: {e}") from None
        found: set[str] = set()

        async def read(command_id: str) -> None:
            _, data = await self._api.call("GET", f"/api/v1/commands/{quote(command_id, safe='')}")
            for delivery in msgspec.convert(data, _CommandOut).deliveries:
                if delivery.state in OPEN_STATES:
                    found.add(delivery.device_id)

        await self._each(open_commands, read)
        return found
