"""Both simulated platforms name a failed session with the same words: ``silent`` when the
device went quiet on purpose, ``transport_<kind>`` when the exchange failed on the way; and
only the gateway's or the network's failures count against the gateway."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from mdmgate import plist, syncml
from mdmgate.simulate import cli as simulate_cli
from mdmgate.simulate import runner
from mdmgate.simulate.apple import CHECKIN_PATH, SimulatedAppleDevice
from mdmgate.simulate.ledger import Ledger
from mdmgate.simulate.scenario import DeviceProfile
from mdmgate.simulate.stats import Stats, gateway_fault
from mdmgate.simulate.transport import Reply, TransportError
from mdmgate.simulate.windows import SimulatedWindowsDevice
from mdmgate.syncml import Command, Header, Item, Message


def windows_reply() -> bytes:
    """The gateway accepting package 1 and handing out a Get."""
    header = Header(session_id="1", msg_id="1", target="SIM-W", source="https://gw/")
    status = Command("Status", cmd_id="1", msg_ref="1", cmd_ref="0", cmd="SyncHdr", data="200")
    get = Command("Get", cmd_id="2", items=[Item(target="./DevDetail/SwV")])
    return Message(header, [status, get], final=True).encode(wbxml=False)


def apple_reply(path: str) -> bytes:
    """Check-ins accepted; the command channel hands out a command."""
    if path == CHECKIN_PATH:
        return b""
    command = {"CommandUUID": "c-1", "Command": {"RequestType": "ProfileList"}}
    return plist.dumps(command)


class Server:
    """A gateway that answers like a real one, or whose exchange times out."""

    def __init__(self, platform: str, *, times_out: bool) -> None:
        self.platform = platform
        self.times_out = times_out
        self.requests = 0

    async def __call__(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Reply:
        self.requests += 1
        if self.times_out:
            raise TransportError("timeout", "no answer within the read timeout")
        if self.platform == "windows":
            syncml.decode(body)
            return Reply(200, (), windows_reply())
        return Reply(200, (), apple_reply(path))


def device(
    platform: str, timeout_rate: float
) -> tuple[SimulatedWindowsDevice | SimulatedAppleDevice, Stats, Ledger]:
    profile = DeviceProfile(
        id=f"SIM-{platform}",
        platform=platform,
        org="/sim",
        os_version="17.5.1" if platform == "ios" else "10.0.22631.3447",
        model="iPhone15,3" if platform == "ios" else "Surface Laptop 5",
        serial="F17ZQ0000001",
        apps=(),
        auth="signature" if platform == "ios" else "md5",
        username="u",
        secret="s",
        timeout_rate=timeout_rate,
    )
    stats, ledger = Stats(), Ledger()
    cls = SimulatedWindowsDevice if platform == "windows" else SimulatedAppleDevice
    return cls(profile, rng=random.Random(1), stats=stats, ledger=ledger), stats, ledger


@pytest.mark.parametrize("platform", ["windows", "ios"])
async def test_a_device_going_silent_is_silent_on_every_platform(platform: str) -> None:
    sim, stats, ledger = device(platform, timeout_rate=1.0)
    server = Server(platform, times_out=False)
    await sim.session(server)
    totals = stats.totals()["platforms"][platform]
    assert totals["errors"] == {"silent": 1}
    # It took the command and never answered it.
    assert (totals["received"], totals["answered"]) == (1, 0)
    (seen,) = ledger.observed(sim.id).values()
    assert (seen.received, seen.answers) == (1, ())


@pytest.mark.parametrize("platform", ["windows", "ios"])
async def test_a_transport_timeout_is_transport_timeout_on_every_platform(platform: str) -> None:
    sim, stats, _ = device(platform, timeout_rate=0.0)
    server = Server(platform, times_out=True)
    await sim.session(server)
    assert server.requests == 1
    assert stats.totals()["platforms"][platform]["errors"] == {"transport_timeout": 1}


def test_only_the_gateways_and_the_networks_failures_count_against_it() -> None:
    against = ["http_503", "syncml_401", "transport_timeout", "transport_reset", "protocol"]
    assert all(gateway_fault(kind) for kind in against)
    assert not gateway_fault("silent")
    assert not gateway_fault("simulator")


def test_the_summary_lists_silent_sessions_apart_from_errors() -> None:
    stats = Stats()
    stats.session("windows", 0.1, "silent")
    stats.session("windows", 0.1, "silent")
    stats.session("ios", 0.1, "transport_reset")
    stats.session("ios", 0.1, "simulator")
    lines = simulate_cli._describe(runner.RunOutcome(stats, None, {}, []))
    assert "session errors: transport_reset 1" in lines
    assert (
        "sessions silent on purpose: 2 (the scenario's rates.timeout, not the gateway's doing)"
        in lines
    )
    assert "simulator faults: 1 (see the notes)" in lines
