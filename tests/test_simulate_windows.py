"""The simulated Windows device against a real ``mdmgate serve`` (subprocess, SQLite, admin
API token): every answer it gives must land in the gateway as the device gave it, and its
ledger must check clean against the gateway's deliveries."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest

from mdmgate import syncml
from mdmgate.simulate.ledger import GatewayDelivery as Delivery
from mdmgate.simulate.ledger import Ledger, LedgerResult, compare
from mdmgate.simulate.scenario import DeviceProfile
from mdmgate.simulate.stats import Stats
from mdmgate.simulate.transport import Reply, TransportError
from mdmgate.simulate.windows import (
    SimulatedWindowsDevice,
    content_key,
    delivery_key,
    ledger_ids,
)
from mdmgate.simulate.windows_tree import DeviceTree
from mdmgate.syncml import Command, Header, Item, Message

TOKEN = "sim-windows-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PORTAL = "Microsoft.CompanyPortal_8wekyb3d8bbwe"
TASKS = "Contoso.Tasks_8wekyb3d8bbwe"
NOTES = "Contoso.Notes_8wekyb3d8bbwe"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('gw') / 'g.db'}"
    env = {**os.environ, "MDMGATE_API_TOKEN": TOKEN}
    # The log goes to a file: a pipe nobody reads would stall the server once full.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdmgate", "serve", "--listen", "127.0.0.1:0", "--db", url],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
            if not line.startswith("mdmgate listening on "):
                proc.wait(timeout=30)
                log.seek(0)
                raise AssertionError(line + log.read())
            yield line.split()[-1]
        finally:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
async def api(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, headers=AUTH, timeout=30) as client:
        yield client


class RecordingStats(Stats):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str | None] = []
        self.messages = 0
        self.events: list[str] = []

    def session(self, platform: str, seconds: float, error: str | None = None) -> None:
        assert platform == "windows"
        assert seconds >= 0
        self.errors.append(error)
        super().session(platform, seconds, error)

    def message(self, platform: str) -> None:
        self.messages += 1
        super().message(platform)

    def command(self, platform: str, event: str) -> None:
        self.events.append(event)
        super().command(platform, event)


class HttpExchange:
    """The runner's part of an exchange, over httpx: tells the ledger whether each message
    reached the gateway. ``announce`` makes the gateway's replies carry a MaxMsgSize (this
    gateway announces none), as another OMA-DM server's would."""

    def __init__(
        self, client: httpx.AsyncClient, ledger: Ledger, device_id: str, announce: int = 0
    ) -> None:
        self.client, self.ledger, self.device_id, self.announce = (
            client,
            ledger,
            device_id,
            announce,
        )
        self.sizes: list[int] = []
        #: The request with this number (1, 2, ...) is lost on the way: the connection breaks.
        self.break_at = 0
        #: Or the first request after these many that ends the device's package (Final).
        self.break_final_after = 0

    async def __call__(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Reply:
        self.sizes.append(len(body))
        final = len(self.sizes) > self.break_final_after > 0 and body.endswith(
            b"<Final/></SyncBody></SyncML>"
        )
        if len(self.sizes) == self.break_at or final:
            self.break_final_after = 0
            self.ledger.exchange_failed(self.device_id)
            raise TransportError("reset", "the connection broke")
        try:
            r = await self.client.request(method, path, headers=list(headers), content=body)
        except httpx.TransportError as exc:
            self.ledger.exchange_failed(self.device_id)
            raise TransportError("reset", str(exc)) from None
        self.ledger.exchange_ok(self.device_id)
        data = r.content
        if self.announce and r.status_code == 200:
            data = _with_max_msg_size(data, self.announce)
        return Reply(r.status_code, tuple((k.lower(), v) for k, v in r.headers.items()), data)


def _with_max_msg_size(data: bytes, size: int) -> bytes:
    message = syncml.decode(data)
    h = message.header
    header = Header(
        session_id=h.session_id,
        msg_id=h.msg_id,
        target=h.target,
        source=h.source,
        cred_meta=h.cred_meta,
        cred_data=h.cred_data,
        meta={**(h.meta or {}), "MaxMsgSize": str(size)},
    )
    wbxml = syncml.detect(data) == "wbxml"
    return Message(header, message.commands, message.final).encode(wbxml=wbxml)


def profile(device_id: str, **changes: Any) -> DeviceProfile:
    fields: dict[str, Any] = {
        "id": device_id,
        "platform": "windows",
        "org": "/sim",
        "os_version": "10.0.22631.3447",
        "model": "Surface Laptop 5",
        "serial": "0F3K9QZ2M7XD",
        "apps": ((PORTAL, "11.2.179.0"), ("Contoso.Expenses_8wekyb3d8bbwe", "1.1.0.0")),
        "username": device_id,
        "secret": "p4ss-" + device_id,
        **changes,
    }
    return DeviceProfile(**fields)


class Rig:
    """One simulated device, its exchange and what it recorded."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        prof: DeviceProfile,
        *,
        seed: int = 7,
        announce: int = 0,
        ledger: Ledger | None = None,
    ) -> None:
        self.ledger = ledger or Ledger()
        self.stats = RecordingStats()
        self.device = SimulatedWindowsDevice(
            prof, rng=random.Random(seed), stats=self.stats, ledger=self.ledger
        )
        self.exchange = HttpExchange(client, self.ledger, prof.id, announce)

    async def session(self) -> str | None:
        await self.device.session(self.exchange)
        return self.stats.errors[-1]


async def register(api: httpx.AsyncClient, prof: DeviceProfile, secret: str | None = None) -> None:
    auth = {"method": prof.auth, "username": prof.username, "secret": secret or prof.secret}
    r = await api.post(
        "/api/v1/devices",
        json=[{"id": prof.id, "platform": "windows", "org": "/", "auth": auth}],
    )
    assert r.status_code == 200, r.text


async def enqueue(api: httpx.AsyncClient, device_id: str, command: dict[str, Any]) -> str:
    r = await api.post(f"/api/v1/devices/{device_id}/commands", json=command)
    assert r.status_code == 202, r.text
    command_id: str = r.json()["command_id"]
    return command_id


async def deliveries(api: httpx.AsyncClient, device_id: str) -> dict[str, dict[str, Any]]:
    r = await api.get(f"/api/v1/devices/{device_id}/deliveries")
    assert r.status_code == 200, r.text
    return {d["command_id"]: d for d in r.json()["deliveries"]}


async def device_facts(api: httpx.AsyncClient, device_id: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/devices/{device_id}")
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def check_ledger(api: httpx.AsyncClient, rig: Rig) -> LedgerResult:
    """What the simulate runner does at the end of a run, for one device: the ledger's ids
    mapped to the gateway's command ids through the stored bodies, then compared."""
    device_id = rig.device.id
    r = await api.get(f"/api/v1/devices/{device_id}/deliveries")
    found = r.json()["deliveries"]
    bodies = {}
    for d in found:
        shown = (await api.get(f"/api/v1/commands/{d['command_id']}")).json()
        assert shown["body_encoding"] == "text"
        bodies[d["command_id"]] = shown["body_text"].encode()
    ids = ledger_ids((d["command_id"], bodies[d["command_id"]], d["offers"]) for d in found)
    observed = {ids.get(k, k): v for k, v in rig.ledger.observed(device_id).items()}
    result = LedgerResult()
    gateway = [
        Delivery(d["command_id"], d["state"], d["status"], d["offers"], d["kind"]) for d in found
    ]
    compare(device_id, observed, gateway, result)
    assert result.clean, result.to_builtins()
    return result


def get(uri: str) -> dict[str, Any]:
    return {
        "raw": f"<Get><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>"
    }


def replace(uri: str, data: str, fmt: str = "chr") -> dict[str, Any]:
    item = {"Target": {"LocURI": uri}, "Meta": {"Format": fmt}, "Data": data}
    return {"syncml": {"Replace": {"Item": [item]}}}


def inventory(**fields: Any) -> dict[str, Any]:
    return {"windows_app": {"action": "inventory", "scope": "user", **fields}}


def results(delivery: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = delivery["result_json"]
    return found


# -- against the gateway ----------------------------------------------------------------------


async def test_package_one_is_accepted_and_the_nonce_kept(api: httpx.AsyncClient) -> None:
    prof = profile("sim-win-devinfo")
    await register(api, prof)
    rig = Rig(api, prof)
    assert await rig.session() is None
    # No nonce yet: challenged (401 + NextNonce), then accepted in the same session.
    assert rig.stats.messages == 2
    facts = (await device_facts(api, prof.id))["facts"]
    assert facts["devinfo"] == {
        "DevId": prof.id,
        "Man": "Microsoft Corporation",
        "Mod": "Surface Laptop 5",
        "DmV": "1.3",
        "Lang": "en-US",
    }
    assert await rig.session() is None
    assert rig.stats.messages == 3  # the nonce the 212 gave opens the next session at once


@pytest.mark.parametrize("wbxml", [False, True], ids=["xml", "wbxml"])
async def test_queued_commands_are_answered_as_the_device_answered(
    api: httpx.AsyncClient, wbxml: bool
) -> None:
    prof = profile(f"sim-win-cmds-{int(wbxml)}", wbxml=wbxml)
    await register(api, prof)
    rig = Rig(api, prof)
    swv = await enqueue(api, prof.id, get("./DevDetail/SwV"))
    setting = "./Device/Vendor/MSFT/Policy/Config/Sim/Setting"
    write = await enqueue(api, prof.id, replace(setting, "42 < 43 & é", "chr"))
    read = await enqueue(api, prof.id, get(setting))
    missing = await enqueue(api, prof.id, get("./DevDetail/Ext/Nothing"))
    tree = await enqueue(api, prof.id, get("./DevDetail/URI?list=StructData"))
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    assert found[swv]["state"] == "acknowledged"
    assert results(found[swv]) == [
        {"source": "./DevDetail/SwV", "format": "chr", "type": None, "data": "10.0.22631.3447"}
    ]
    assert (found[write]["state"], found[write]["status"]) == ("acknowledged", "200")
    assert [r["data"] for r in results(found[read])] == ["42 < 43 & é"]
    assert (found[missing]["state"], found[missing]["status"]) == ("error", "404")
    assert [r["source"] for r in results(found[tree])] == [
        "./DevDetail/URI/MaxDepth",
        "./DevDetail/URI/MaxTotLen",
        "./DevDetail/URI/MaxSegLen",
    ]
    assert (await device_facts(api, prof.id))["facts"]["devinfo"]["DevId"] == prof.id
    result = await check_ledger(api, rig)
    assert result.counts["ok"] == 5
    # The same content queued again is a new delivery for the ledger too, twice at once
    # as well.
    again = [await enqueue(api, prof.id, get("./DevDetail/SwV")) for _ in range(2)]
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    assert [found[c]["state"] for c in again] == ["acknowledged"] * 2
    assert (await check_ledger(api, rig)).counts["ok"] == 7


async def test_an_add_of_an_existing_node_is_answered_by_its_retry(
    api: httpx.AsyncClient,
) -> None:
    prof = profile("sim-win-add-418")
    await register(api, prof)
    rig = Rig(api, prof)
    node = "./Vendor/MSFT/Sim/Flag"
    add = {"syncml": {"Add": {"Item": [{"Target": {"LocURI": node}, "Data": "1"}]}}}
    first = await enqueue(api, prof.id, add)
    second = await enqueue(api, prof.id, add)
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    # The second Add finds the node: 418, then the gateway's Replace of it gets 200.
    assert [(found[c]["state"], found[c]["status"]) for c in (first, second)] == [
        ("acknowledged", "200"),
        ("acknowledged", "200"),
    ]
    # The gateway holds the second Add for a message of its own; its retry is no new delivery.
    assert rig.stats.events == ["received", "answered", "received", "answered"]
    # Package 1 twice (challenged), the first Add, the second's 418, the Replace's 200.
    assert rig.stats.messages == 5
    await check_ledger(api, rig)


async def test_the_servers_package_over_several_messages(api: httpx.AsyncClient) -> None:
    # A small MaxMsgSize and more commands than the gateway hands out at once: its messages
    # lack Final, and the device asks for the next with Alert 1222.
    prof = profile("sim-win-server-package", max_msg_size=4096)
    await register(api, prof)
    rig = Rig(api, prof)
    ids = [
        await enqueue(api, prof.id, replace(f"./Vendor/MSFT/Sim/K{i}", str(i))) for i in range(60)
    ]
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    assert [found[c]["state"] for c in ids] == ["acknowledged"] * 60
    assert rig.stats.messages > 5
    assert max(rig.exchange.sizes) <= 4096
    assert (await check_ledger(api, rig)).counts["ok"] == 60


async def test_inventory_split_under_the_servers_max_msg_size(api: httpx.AsyncClient) -> None:
    prof = profile("sim-win-inventory", inventory_bytes=200_000)
    await register(api, prof)
    rig = Rig(api, prof, announce=16384)
    command = await enqueue(api, prof.id, inventory())
    assert await rig.session() is None
    assert max(rig.exchange.sizes) <= 16384
    assert rig.stats.messages > 10  # about 200 KB in messages of 16 KB
    found = await deliveries(api, prof.id)
    assert found[command]["state"] == "acknowledged"
    sent = sum(len(r["source"]) + len(r["data"] or "") + 112 for r in results(found[command]))
    assert 200_000 <= sent < 215_000
    apps = {a["identifier"]: a for a in (await device_facts(api, prof.id))["apps"]}
    assert apps[PORTAL]["version"] == "11.2.179.0"
    assert apps[PORTAL]["source"] == "AppStore"
    assert "Contoso.Expenses_8wekyb3d8bbwe" in apps
    assert len(apps) > 30  # padded with the packages every Windows install carries
    await check_ledger(api, rig)


async def test_a_package_cut_short_leaves_the_inventory_for_the_next_session(
    api: httpx.AsyncClient,
) -> None:
    prof = profile("sim-win-inventory-cut", inventory_bytes=100_000)
    await register(api, prof)
    rig = Rig(api, prof, announce=16384)
    rig.exchange.break_at = 4  # package 1 (2 with the challenge), then the inventory's 2nd
    command = await enqueue(api, prof.id, inventory())
    assert await rig.session() == "transport_reset"
    # The gateway waits for the end of the device's package; the ledger must not hold the
    # answer as delivered either.
    assert (await deliveries(api, prof.id))[command]["state"] == "sent"
    await check_ledger(api, rig)
    rig.exchange.break_at = 0
    assert await rig.session() is None
    found = (await deliveries(api, prof.id))[command]
    assert (found["state"], found["offers"]) == ("acknowledged", 2)
    result = await check_ledger(api, rig)
    assert (result.counts["ok"], result.counts["retried"]) == (1, 1)


async def test_a_get_is_answered_with_the_end_of_the_package(api: httpx.AsyncClient) -> None:
    prof = profile("sim-win-package-end")
    await register(api, prof)
    rig = Rig(api, prof, announce=4096)
    listed = await enqueue(api, prof.id, inventory())
    # Their statuses come after the inventory's Results and fill more messages.
    writes = [
        await enqueue(api, prof.id, replace(f"./Vendor/MSFT/Sim/N{i}", "1")) for i in range(40)
    ]
    rig.exchange.break_final_after = 2  # package 1 is two messages (challenged)
    assert await rig.session() == "transport_reset"
    found = await deliveries(api, prof.id)
    assert found[listed]["state"] == "sent"  # the Results were whole, the package was not
    assert found[writes[0]]["state"] == "acknowledged"
    assert found[writes[-1]]["state"] == "sent"
    await check_ledger(api, rig)
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    assert {d["state"] for d in found.values()} == {"acknowledged"}
    await check_ledger(api, rig)


@pytest.mark.parametrize("wbxml", [False, True], ids=["xml", "wbxml"])
async def test_a_value_larger_than_any_message_goes_in_chunks(
    api: httpx.AsyncClient, wbxml: bool
) -> None:
    prof = profile(f"sim-win-large-{int(wbxml)}", wbxml=wbxml)
    await register(api, prof)
    rig = Rig(api, prof, announce=8192)
    node = "./Vendor/MSFT/Sim/Blob"
    value = "".join(f"line {i}: <ä & ö>\r\n" for i in range(1500))  # ~30 KB, non-ASCII
    await enqueue(api, prof.id, replace(node, value))
    read = await enqueue(api, prof.id, get(node))
    assert await rig.session() is None, rig.stats.errors
    assert max(rig.exchange.sizes) <= 8192
    found = await deliveries(api, prof.id)
    assert [r["data"] for r in results(found[read])] == [value]
    await check_ledger(api, rig)


async def test_app_installs_and_removal(api: httpx.AsyncClient) -> None:
    prof = profile("sim-win-apps")
    await register(api, prof)
    rig = Rig(api, prof)
    store = await enqueue(
        api,
        prof.id,
        {
            "windows_app": {
                "action": "store_install",
                "package_family": TASKS,
                "product_id": "9WZDNCRFJ3TJ",
                "skuid": "0010",
            }
        },
    )
    hosted = await enqueue(
        api,
        prof.id,
        {
            "windows_app": {
                "action": "hosted_install",
                "scope": "user",
                "package_family": NOTES,
                "package_uri": "https://apps.example.com/Contoso.Notes.msix",
            }
        },
    )
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    assert (found[store]["state"], found[store]["status"]) == ("acknowledged", "200")
    assert (found[hosted]["state"], found[hosted]["status"]) == ("accepted", "202")
    await check_ledger(api, rig)
    # The next session opens with the install's outcome (Alert 1226).
    listed = await enqueue(api, prof.id, inventory())
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    assert (found[hosted]["state"], found[hosted]["status"]) == ("acknowledged", "0")
    assert found[listed]["state"] == "acknowledged"
    apps = {a["identifier"]: a["source"] for a in (await device_facts(api, prof.id))["apps"]}
    assert apps == {
        PORTAL: "AppStore",
        "Contoso.Expenses_8wekyb3d8bbwe": "AppStore",
        TASKS: "AppStore",
        NOTES: "nonStore",
    }
    status = await enqueue(
        api, prof.id, {"windows_app": {"action": "install_status", "scope": "user"}}
    )
    removal = await enqueue(
        api,
        prof.id,
        {"windows_app": {"action": "uninstall", "scope": "user", "package_family": PORTAL}},
    )
    await enqueue(api, prof.id, inventory())
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    assert found[status]["state"] == "acknowledged"
    assert found[removal]["state"] == "acknowledged"
    installs = (await device_facts(api, prof.id))["facts"]["app_installs"]
    assert installs[NOTES]["status"] == "installed"
    assert installs[TASKS]["status"] == "installed"
    remaining = {a["identifier"] for a in (await device_facts(api, prof.id))["apps"]}
    assert remaining == {"Contoso.Expenses_8wekyb3d8bbwe", TASKS, NOTES}
    result = await check_ledger(api, rig)
    assert result.counts["ok"] == 6


async def test_every_command_fails_at_error_rate_one(api: httpx.AsyncClient) -> None:
    prof = profile("sim-win-errors", error_rate=1.0)
    await register(api, prof)
    rig = Rig(api, prof)
    ids = [
        await enqueue(api, prof.id, get("./DevDetail/SwV")),
        await enqueue(api, prof.id, replace("./Vendor/MSFT/Sim/X", "1")),
        await enqueue(
            api,
            prof.id,
            {
                "windows_app": {
                    "action": "hosted_install",
                    "scope": "device",
                    "package_family": NOTES,
                    "package_uri": "https://apps.example.com/Contoso.Notes.msix",
                }
            },
        ),
    ]
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    assert [(found[i]["state"], found[i]["status"]) for i in ids] == [("error", "500")] * 3
    await check_ledger(api, rig)
    # The install ran anyway and failed: its outcome comes and changes nothing.
    assert await rig.session() is None
    assert found == await deliveries(api, prof.id)


async def test_hosted_install_failing_reports_the_error(api: httpx.AsyncClient) -> None:
    # A device that fails half its commands; this seed fails the install, not the Add.
    prof = profile("sim-win-install-fails", error_rate=0.5)
    await register(api, prof)
    rig = Rig(api, prof, seed=_seed_failing_only_the_install())
    hosted = await enqueue(
        api,
        prof.id,
        {
            "windows_app": {
                "action": "hosted_install",
                "scope": "user",
                "package_family": NOTES,
                "package_uri": "https://apps.example.com/Contoso.Notes.msix",
            }
        },
    )
    assert await rig.session() is None
    assert (await deliveries(api, prof.id))[hosted]["state"] == "accepted"
    assert await rig.session() is None
    found = (await deliveries(api, prof.id))[hosted]
    assert (found["state"], found["status"]) == ("error", str(0x80073CF9))
    await check_ledger(api, rig)


def _seed_failing_only_the_install() -> int:
    # The first session draws twice: the Add's error roll, then the install's outcome.
    for seed in range(100):
        rng = random.Random(seed)
        if rng.random() >= 0.5 and rng.random() < 0.5:
            return seed
    raise AssertionError("no seed")


async def test_wrong_secret_and_unknown_device_are_session_errors(api: httpx.AsyncClient) -> None:
    prof = profile("sim-win-wrong-secret")
    await register(api, prof, secret="another")
    rig = Rig(api, prof)
    await enqueue(api, prof.id, get("./DevDetail/SwV"))
    assert await rig.session() == "syncml_401"
    assert rig.stats.messages == 2  # challenged once, refused again
    stranger = Rig(api, profile("sim-win-stranger"))
    assert await stranger.session() == "syncml_403"
    basic = profile("sim-win-basic", auth="basic")
    await register(api, basic)
    assert await Rig(api, basic).session() is None
    # No client certificate over plain HTTP: refused, and no Cred was sent to retry with.
    certificate = profile("sim-win-cert", auth="certificate")
    r = await api.post(
        "/api/v1/devices",
        json=[
            {
                "id": certificate.id,
                "platform": "windows",
                "org": "/",
                "auth": {"method": "certificate", "sha256": "ab" * 32},
            }
        ],
    )
    assert r.status_code == 200, r.text
    rig = Rig(api, certificate)
    assert await rig.session() == "syncml_403"
    assert rig.stats.messages == 1


async def test_silent_session_leaves_the_command_for_the_next(api: httpx.AsyncClient) -> None:
    prof = profile("sim-win-silent", timeout_rate=0.5)
    await register(api, prof)
    rig = Rig(api, prof, seed=_seed_silent_then_not())
    command = await enqueue(api, prof.id, get("./DevDetail/SwV"))
    assert await rig.session() == "silent"
    found = (await deliveries(api, prof.id))[command]
    assert (found["state"], found["offers"]) == ("sent", 1)
    assert rig.stats.events == ["received"]
    assert await rig.session() is None
    found = (await deliveries(api, prof.id))[command]
    assert (found["state"], found["offers"]) == ("acknowledged", 2)
    result = await check_ledger(api, rig)
    assert (result.counts["ok"], result.counts["retried"]) == (1, 1)


async def test_identical_commands_in_one_session_are_two_deliveries(
    api: httpx.AsyncClient,
) -> None:
    prof = profile("sim-win-twins")
    await register(api, prof)
    rig = Rig(api, prof)
    twins = [await enqueue(api, prof.id, get("./DevDetail/SwV")) for _ in range(2)]
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    assert [found[c]["state"] for c in twins] == ["acknowledged"] * 2
    # Two ledger ids, one per delivery, each received and answered once.
    seen = rig.ledger.observed(prof.id)
    key = delivery_key(get("./DevDetail/SwV")["raw"].encode())
    assert sorted(seen) == [f"{key}#1", f"{key}#2"]
    assert [(o.received, len(o.answers)) for o in seen.values()] == [(1, 1)] * 2
    result = await check_ledger(api, rig)
    assert (result.counts["ok"], result.counts["retried"]) == (2, 0)


@pytest.mark.parametrize("cut", ["silent", "answers-lost"])
async def test_identical_commands_offered_again_keep_their_ids(
    api: httpx.AsyncClient, cut: str
) -> None:
    # The first session takes both and the gateway never hears an answer: the device goes
    # silent, or the message carrying both answers breaks on the way. The next session is
    # offered both again: the same two deliveries, not a third and a fourth.
    prof = profile(f"sim-win-twins-{cut}", timeout_rate=0.5 if cut == "silent" else 0.0)
    await register(api, prof)
    rig = Rig(api, prof, seed=_seed_silent_then_not() if cut == "silent" else 7)
    if cut == "answers-lost":
        rig.exchange.break_at = 3  # package 1 twice (challenged), then the answers
    twins = [await enqueue(api, prof.id, get("./DevDetail/SwV")) for _ in range(2)]
    assert await rig.session() == ("silent" if cut == "silent" else "transport_reset")
    found = await deliveries(api, prof.id)
    assert [(found[c]["state"], found[c]["offers"]) for c in twins] == [("sent", 1)] * 2
    rig.exchange.break_at = 0
    assert await rig.session() is None
    found = await deliveries(api, prof.id)
    assert [(found[c]["state"], found[c]["offers"]) for c in twins] == [("acknowledged", 2)] * 2
    assert len(rig.ledger.observed(prof.id)) == 2
    result = await check_ledger(api, rig)
    assert (result.counts["ok"], result.counts["retried"]) == (2, 2)
    # Queued again once they are answered: new deliveries, numbered on.
    third = await enqueue(api, prof.id, get("./DevDetail/SwV"))
    assert await rig.session() is None
    assert (await deliveries(api, prof.id))[third]["state"] == "acknowledged"
    assert len(rig.ledger.observed(prof.id)) == 3
    assert (await check_ledger(api, rig)).counts["ok"] == 3


def _seed_silent_then_not() -> int:
    for seed in range(100):
        rng = random.Random(seed)
        if rng.random() < 0.5 <= rng.random():
            return seed
    raise AssertionError("no seed")


# -- without a gateway ------------------------------------------------------------------------


class CannedExchange:
    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    async def __call__(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Reply:
        assert (method, path) == ("POST", "/ManagementServer/MDM.svc?mode=Maintenance&Platform=WoA")
        assert ("content-type", "application/vnd.syncml.dm+xml") in headers
        syncml.decode(body)
        return self.reply


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (Reply(429, (("retry-after", "5"),), b"busy"), "http_429"),
        (Reply(200, (), b"<html>not SyncML</html>"), "protocol"),
        (Reply(200, (), b"\x02\x00\x00junk"), "protocol"),
    ],
)
async def test_server_failures_are_recorded_not_raised(reply: Reply, kind: str) -> None:
    stats = RecordingStats()
    device = SimulatedWindowsDevice(
        profile("sim-win-canned"), rng=random.Random(1), stats=stats, ledger=Ledger()
    )
    await device.session(CannedExchange(reply))
    assert stats.errors == [kind]
    assert stats.messages == 1


def test_content_key_survives_the_gateways_renumbering() -> None:
    body = (
        b"<Add><CmdID>1</CmdID><Item><Target><LocURI>./User/Vendor/MSFT/"
        b"EnterpriseModernAppManagement/AppInstallation/A_8wekyb3d8bbwe</LocURI></Target></Item>"
        b"</Add><Exec><CmdID>2</CmdID><Item><Target><LocURI>./User/Vendor/MSFT/"
        b"EnterpriseModernAppManagement/AppInstallation/A_8wekyb3d8bbwe/HostedInstall</LocURI>"
        b'</Target><Meta><Format xmlns="syncml:metinf">xml</Format></Meta><Data>'
        b"&lt;Application PackageUri=&quot;https://x/a.msix&quot;/&gt;</Data></Item></Exec>"
    )
    header = Header(session_id="1", msg_id="3", target="dev", source="gw")
    stored = syncml.decode(
        b'<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2'
        b"</VerProto><SessionID>1</SessionID><MsgID>1</MsgID><Target><LocURI>d</LocURI>"
        b"</Target><Source><LocURI>s</LocURI></Source></SyncHdr><SyncBody>"
        + body
        + b"</SyncBody></SyncML>"
    ).commands
    for command, cmd_id in zip(stored, ("17", "18"), strict=True):
        command.cmd_id = cmd_id
    for wbxml in (False, True):
        seen = syncml.decode(Message(header, stored, final=True).encode(wbxml=wbxml)).commands
        assert content_key(seen) == delivery_key(body)
    assert content_key(seen[:1]) != delivery_key(body)
    other = Command("Get", cmd_id="1", items=[Item(target="./DevDetail/SwV")])
    assert content_key([other]) != content_key(seen[:1])


def test_ledger_ids_number_repeated_contents_and_skip_unseen() -> None:
    a = b"<Get><CmdID>1</CmdID><Item><Target><LocURI>./A</LocURI></Target></Item></Get>"
    b = b"<Get><CmdID>1</CmdID><Item><Target><LocURI>./B</LocURI></Target></Item></Get>"
    ids = ledger_ids([("c1", a, 1), ("c2", b, 2), ("cancelled", a, 0), ("c3", a, 1)])
    key_a, key_b = delivery_key(a), delivery_key(b)
    assert ids == {f"{key_a}#1": "c1", f"{key_b}#1": "c2", f"{key_a}#2": "c3"}


def test_a_device_is_small() -> None:
    stats, ledger, rng = Stats(), Ledger(), random.Random(1)
    profiles = [profile(f"sim-win-{i:06d}") for i in range(2000)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    devices = [SimulatedWindowsDevice(p, rng=rng, stats=stats, ledger=ledger) for p in profiles]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(devices) == 2000
    assert used / 2000 < 512, used / 2000


def test_the_inventory_is_the_same_every_time() -> None:
    prof = profile("sim-win-det", inventory_bytes=50_000)
    uri = "./User/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement?list=StructData"
    listed = [list(DeviceTree(prof).get(uri)[1] or ()) for _ in range(2)]
    assert listed[0] == listed[1]
    assert sum(112 + len(n.uri) + len(n.format) + len(n.data) for n in listed[0]) >= 50_000
    # A partial inventory agrees with the whole one.
    store = "./User/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/AppStore"
    part = list(DeviceTree(prof).get(store + "?list=StructData")[1] or ())
    assert part == [n for n in listed[0] if n.uri.startswith(store + "/")]
