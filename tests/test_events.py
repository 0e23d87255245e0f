"""The event log as consoles see it: each event type written by a real flow (OMA-DM sessions
of the Windows emulator over real sockets, Apple check-ins and reports, enrollment, a
retirement, roll-out waves under a test clock), once, in the same store call as its change;
``GET /api/v1/events`` over real sockets (paging, filters, the long poll woken by another
store connection); and the hourly pruning, done by one node an hour. Every flow runs on
every store backend."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from mdmgate import events, plist
from mdmgate.apple import commands
from mdmgate.apple.service import AppleService
from mdmgate.catalogue.model import App, AppVersion, Notification
from mdmgate.catalogue.service import Catalogue
from mdmgate.devices import service as devices
from mdmgate.enrollment.service import EnrollmentService
from mdmgate.enrollment.settings import EnrollmentSettings
from mdmgate.server import api_events
from mdmgate.server.admin import AdminApi
from mdmgate.server.app import EventPruning, build_handler
from mdmgate.server.config import ConfigError, load_config
from mdmgate.server.http import Limits, Server, listener_port, open_listeners
from mdmgate.server.metrics import Metrics
from mdmgate.server.types import Request, Response
from mdmgate.storage import DeliveryState, Device, Event, NewEvent, Store
from mdmgate.windows.enrollment import USER_REQUEST
from mdmgate.windows.service import FACT_NONCE, WindowsService
from tests.cluster import Cluster
from tests.pki_helpers import csr_der, rsa_key
from tests.stores import BACKENDS, SHARED_BACKENDS, open_backend, open_peer
from tests.windows_emulator import WindowsDevice

TOKEN = "events-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PASSWORD = "correct horse"
NONCE = b"enrolment-nonce!"
SWV = "./DevDetail/SwV"
EMM = "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement"
CHECKIN = "application/x-apple-aspen-mdm-checkin"
CERT = b"0\x82\x01\x0a fake DER identity certificate"
UDID = "UDID-EV"
DAY = 86_400.0


class Clock:
    """Unix time that moves only when a test moves it (from the real now: stored session
    expiries are compared with the wall clock)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path)
    yield s
    await s.aclose()


async def logged(store: Store, after: int, **filters: Any) -> list[Event]:
    return await store.events(after, 1000, **filters)


def summary(found: list[Event]) -> list[tuple[str, str | None, str | None]]:
    return [(e.type, e.device_id, e.subject) for e in found]


def one(found: list[Event], kind: str) -> Event:
    (event,) = [e for e in found if e.type == kind]
    return event


# --- the catalogue ---------------------------------------------------------------------------


def test_check_in_is_written_once_per_resolution() -> None:
    now = 1_800_000_000.0
    device = Device("d", "windows")
    first = events.check_in(device, now)
    assert first is not None
    facts, event = first
    assert facts == {events.FACT_LAST_SEEN: int(now)}
    assert event == NewEvent(
        "device.checked_in",
        device_id="d",
        data={"platform": "windows", "last_seen": int(now), "previous": None},
    )
    seen = Device("d", "windows", facts=facts)
    assert events.check_in(seen, now + events.LAST_SEEN_RESOLUTION - 1) is None
    later = events.check_in(seen, now + events.LAST_SEEN_RESOLUTION)
    assert later is not None
    assert later[1].data["previous"] == int(now)
    # A clock that went back, or a value that is no time, is stale.
    assert events.check_in(seen, now - events.LAST_SEEN_RESOLUTION) is not None
    for junk in ("yesterday", True, float("nan")):
        stale = events.check_in(Device("d", "ios", facts={"last_seen": junk}), now)
        assert stale is not None
        assert stale[1].data["previous"] is None
    # The fact the device listing filters on.
    assert events.FACT_LAST_SEEN == devices.FACT_LAST_SEEN


def test_inventory_changes_name_the_apps_and_versions() -> None:
    old = [
        {"identifier": "a", "version": "1", "name": "A"},
        {"identifier": "b", "version": "2", "name": "B"},
        {"identifier": "b", "version": "9", "name": "B (user)"},
    ]
    new = [
        {"identifier": "b", "version": "3", "name": "B"},
        {"identifier": "c", "version": "1", "name": "C"},
    ]
    event = events.inventory_changed("d", old, new)
    assert event is not None
    assert event.data == {
        "added": [{"identifier": "c", "version": "1", "name": "C"}],
        "removed": [{"identifier": "a", "version": "1", "name": "A"}],
        "changed": [{"identifier": "b", "from": "2", "to": "3"}],
    }
    assert events.inventory_changed("d", new, list(reversed(new))) is None
    assert events.inventory_changed("d", None, new) is not None


def test_a_type_filter_names_known_types_or_families() -> None:
    assert events.check_types(["command.*", "device.enrolled", "command.*"]) == [
        "command.*",
        "device.enrolled",
    ]
    for bad in ("command.acked", "nothing.*", "*", "command"):
        with pytest.raises(events.UnknownEventType, match="unknown event type"):
            events.check_types([bad])


# --- Windows, over real sockets --------------------------------------------------------------


@dataclass
class Gateway:
    store: Store
    base: str
    clock: Clock
    windows: WindowsService
    #: The admin API's catalogue, on ``clock``: a test runs later waves with ``run_due``.
    catalogue: Catalogue

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=30)

    async def enroll(self, device: WindowsDevice) -> WindowsDevice:
        device.username, device.secret, device.nonce = device.device_id, PASSWORD, NONCE
        auth = {"method": "md5", "username": device.device_id, "secret": PASSWORD}
        await self.store.upsert_devices([Device(device.device_id, "windows", "/acme", auth=auth)])
        await self.store.merge_facts(device.device_id, {FACT_NONCE: _b64(NONCE)})
        return device

    async def command(self, client: httpx.AsyncClient, device_id: str, body: Any) -> str:
        r = await client.post(f"/api/v1/devices/{device_id}/commands", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        command_id: str = r.json()["command_id"]
        return command_id


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@asynccontextmanager
async def gateway(
    store: Store, *, events_api: api_events.EventsApi | None = None, **options: Any
) -> AsyncIterator[Gateway]:
    """The server on a free port: the Windows endpoint (``options`` go to its service) and
    the admin API with the event log (``events_api``, or one over ``store``)."""
    clock = Clock()
    metrics = Metrics()
    windows = WindowsService(store, clock=clock, **options)
    handler = events_api if events_api is not None else api_events.EventsApi(store)
    catalogue = Catalogue(store, now=clock)
    admin = AdminApi(
        store,
        TOKEN,
        catalogue=catalogue,
        extra_operations=api_events.operations(handler),
        extra_types=api_events.RESPONSE_TYPES,
    )
    listeners = await open_listeners("127.0.0.1", 0)
    server = Server(build_handler(store, admin, metrics, windows), Limits(), metrics=metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, listeners)
        try:
            base = f"http://127.0.0.1:{listener_port(listeners[0])}"
            yield Gateway(store, base, clock, windows, catalogue)
        finally:
            nursery.cancel_scope.cancel()


def get(uri: str) -> dict[str, str]:
    return {
        "raw": f"<Get><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>"
    }


def inventory(*apps: tuple[str, str]) -> dict[str, tuple[str, str]]:
    """A device's AppStore inventory nodes: (package family, version) each."""
    tree: dict[str, tuple[str, str]] = {}
    for family, version in apps:
        full = f"{family.split('_')[0]}_{version}_x64__8wekyb3d8bbwe"
        node = f"{EMM}/AppStore/{family}/{full}"
        tree[f"{EMM}/AppStore/{family}"] = ("node", "")
        tree[node] = ("node", "")
        tree[f"{node}/Name"] = ("chr", family.split("_")[0])
        tree[f"{node}/Version"] = ("chr", version)
    return tree


INVENTORY = {"windows_app": {"action": "inventory", "scope": "device"}}


async def test_a_windows_session_reports_check_in_deliveries_and_answers(store: Store) -> None:
    async with gateway(store) as gw, gw.client() as client:
        device = await gw.enroll(WindowsDevice("win-ev", tree={SWV: ("chr", "10.0.22631")}))
        ok = await gw.command(client, "win-ev", get(SWV))
        missing = await gw.command(client, "win-ev", get("./Vendor/MSFT/Nothing"))
        start = await store.last_event()
        await device.session(client)
        found = await logged(store, start)
        assert summary(found) == [
            ("device.checked_in", "win-ev", None),
            ("command.delivered", "win-ev", ok),
            ("command.delivered", "win-ev", missing),
            ("command.acknowledged", "win-ev", ok),
            ("command.error", "win-ev", missing),
        ]
        seen = int(gw.clock.now)
        assert found[0].data == {"platform": "windows", "last_seen": seen, "previous": None}
        assert found[1].data["offers"] == 1
        assert found[3].data == {"status": "200"}
        assert found[4].data == {"status": "404"}
        stored = await store.get_device("win-ev")
        assert stored is not None
        assert stored.facts[events.FACT_LAST_SEEN] == seen

        # Within the resolution a session writes no check-in; past it, one with the last.
        mark = await store.last_event()
        await device.session(client)
        assert await logged(store, mark) == []
        gw.clock.now += events.LAST_SEEN_RESOLUTION
        await device.session(client)
        (again,) = await logged(store, mark)
        assert again.type == "device.checked_in"
        assert again.data["previous"] == seen


async def test_windows_inventory_installs_and_unenrollment(store: Store) -> None:
    async with gateway(store) as gw, gw.client() as client:
        tree = inventory(
            ("Contoso.A_8wekyb3d8bbwe", "1.0.0.0"), ("Contoso.B_8wekyb3d8bbwe", "2.0.0.0")
        )
        device = await gw.enroll(WindowsDevice("win-inv", tree=tree))
        await gw.command(client, "win-inv", INVENTORY)
        start = await store.last_event()
        await device.session(client)
        first = one(await logged(store, start), "device.inventory_changed")
        assert first.device_id == "win-inv"
        assert sorted((a["identifier"], a["version"]) for a in first.data["added"]) == [
            ("Contoso.A_8wekyb3d8bbwe", "1.0.0.0"),
            ("Contoso.B_8wekyb3d8bbwe", "2.0.0.0"),
        ]
        assert first.data["removed"] == first.data["changed"] == []

        # The same inventory again: no event. Then A updated, B removed, C installed.
        mark = await store.last_event()
        await gw.command(client, "win-inv", INVENTORY)
        await device.session(client)
        assert "device.inventory_changed" not in [e.type for e in await logged(store, mark)]
        device.tree = inventory(
            ("Contoso.A_8wekyb3d8bbwe", "1.1.0.0"), ("Contoso.C_8wekyb3d8bbwe", "3.0.0.0")
        )
        mark = await store.last_event()
        await gw.command(client, "win-inv", INVENTORY)
        await device.session(client)
        changed = one(await logged(store, mark), "device.inventory_changed")
        assert changed.data["changed"] == [
            {"identifier": "Contoso.A_8wekyb3d8bbwe", "from": "1.0.0.0", "to": "1.1.0.0"}
        ]
        assert [a["identifier"] for a in changed.data["added"]] == ["Contoso.C_8wekyb3d8bbwe"]
        assert [a["identifier"] for a in changed.data["removed"]] == ["Contoso.B_8wekyb3d8bbwe"]

        # A hosted install is accepted (no answer yet), then finished by the device's alert.
        install = await gw.command(
            client,
            "win-inv",
            {
                "windows_app": {
                    "action": "hosted_install",
                    "scope": "user",
                    "package_family": "Contoso.Tasks_8wekyb3d8bbwe",
                    "package_uri": "https://apps.example/tasks.appx",
                }
            },
        )
        mark = await store.last_event()
        await device.session(client)
        assert summary(await logged(store, mark, types=["command.*"])) == [
            ("command.delivered", "win-inv", install)
        ]
        mark = await store.last_event()
        await device.session(client)
        assert summary(await logged(store, mark, types=["command.*"])) == [
            ("command.acknowledged", "win-inv", install)
        ]

        # The user removes the work account: unenrolled, once however often it asks.
        device.request_unenrollment()
        mark = await store.last_event()
        await device.session(client)
        gone = one(await logged(store, mark), "device.unenrolled")
        assert gone.device_id == "win-inv"
        assert gone.data == {"reason": USER_REQUEST}


async def test_a_command_given_up_after_max_offers_is_reported_failed(store: Store) -> None:
    async with gateway(store, max_offers=1) as gw, gw.client() as client:
        target = "./Vendor/MSFT/Crash"
        device = await gw.enroll(WindowsDevice("win-crash", crash_on=target))
        crashing = await gw.command(client, "win-crash", get(target))
        start = await store.last_event()
        await device.session(client)  # handed out, then the device dies on it
        await device.session(client)  # offered once already: given up
        found = await logged(store, start, types=["command.*"])
        assert summary(found) == [
            ("command.delivered", "win-crash", crashing),
            ("command.failed", "win-crash", crashing),
        ]
        assert "offered 1 times" in found[1].data["status"]


# --- enrollment and retirement ---------------------------------------------------------------


async def test_windows_enrollment_and_retirement(store: Store) -> None:
    service = EnrollmentService(
        store, EnrollmentSettings(ca_passphrase="events passphrase", root_key="rsa-2048")
    )
    await service.start()
    _, value = await service.create_token("/acme", expires_at=time.time() + 3600, max_uses=None)
    start = await store.last_event()
    await service.enroll_windows(
        token_value=value,
        csr_der=csr_der(rsa_key(), "win-new"),
        context={"DeviceID": "win-new"},
    )
    (enrolled,) = await logged(store, start)
    assert summary([enrolled]) == [("device.enrolled", "win-new", None)]
    assert enrolled.data == {"platform": "windows", "org": "/acme", "via": "windows"}

    mark = await store.last_event()
    retired = await devices.DeviceService(store).retire("win-new", "lost in a taxi")
    assert retired is not None
    (gone,) = await logged(store, mark)
    assert summary([gone]) == [("device.unenrolled", "win-new", None)]
    assert gone.data == {"reason": "lost in a taxi"}
    # Retired again: unenrolled already, nothing new to report.
    assert await devices.DeviceService(store).retire("win-new") is not None
    assert await logged(store, gone.seq) == []


# --- Apple, the service called directly ------------------------------------------------------


def apple(path: str, value: Any, kind: str = CHECKIN) -> Request:
    return Request(
        "PUT",
        path,
        "",
        (("content-type", kind),),
        plist.dumps(value),
        "1.1",
        "127.0.0.1:5000",
        CERT,
    )


def checkin(message_type: str, **keys: Any) -> Request:
    return apple("/mdm/apple/checkin", {"MessageType": message_type, "UDID": UDID, **keys})


def report(status: str, command_uuid: str | None = None, **keys: Any) -> Request:
    body: dict[str, Any] = {"Status": status, "UDID": UDID, **keys}
    if command_uuid is not None:
        body["CommandUUID"] = command_uuid
    return apple("/mdm/apple/connect", body, "application/x-apple-aspen-mdm")


def command_uuid(response: Response) -> str | None:
    assert response.status == 200, response.body
    if not response.body:
        return None
    found = plist.loads(response.body)
    assert isinstance(found, dict)
    return str(found["CommandUUID"])


def body(uuid: str, request_type: str = "DeviceInformation") -> bytes:
    return plist.dumps({"CommandUUID": uuid, "Command": {"RequestType": request_type}})


async def apple_enrolled(store: Store) -> tuple[AppleService, Clock]:
    """A registered iPhone that authenticated and sent its TokenUpdate."""
    await store.upsert_devices([Device(UDID, "ios", "/acme", "17.4", supervised=True)])
    clock = Clock()
    svc = AppleService(store, clock=clock)
    authenticate = checkin("Authenticate", Topic="com.apple.mgmt.x", OSVersion="17.4")
    assert (await svc.checkin(authenticate)).status == 200
    token_update = checkin(
        "TokenUpdate", Topic="com.apple.mgmt.x", Token=b"\x00\xaa", PushMagic="magic"
    )
    assert (await svc.checkin(token_update)).status == 200
    return svc, clock


async def test_apple_enrollment_commands_and_inventory(store: Store) -> None:
    start = await store.last_event()
    svc, clock = await apple_enrolled(store)
    found = await logged(store, start)
    assert summary(found) == [
        ("device.checked_in", UDID, None),
        ("device.enrolled", UDID, None),
    ]
    assert found[1].data == {"platform": "ios", "org": "/acme", "via": "apple"}
    # The same TokenUpdate again (devices repeat it): enrolled already, nothing new.
    mark = await store.last_event()
    again = checkin("TokenUpdate", Topic="com.apple.mgmt.x", Token=b"\x00\xaa", PushMagic="magic")
    assert (await svc.checkin(again)).status == 200
    assert await logged(store, mark) == []

    inventory_body = commands.installed_application_list(command_uuid="inv").to_plist()
    await store.enqueue("info", "apple", body("info"), [UDID])
    await store.enqueue("inv", "apple", inventory_body, [UDID])
    await store.enqueue("later", "apple", body("later"), [UDID])
    await store.enqueue("bad", "apple", body("bad"), [UDID])
    mark = await store.last_event()
    assert command_uuid(await svc.connect(report("Idle"))) == "info"
    assert command_uuid(await svc.connect(report("Acknowledged", "info"))) == "inv"
    apps = [
        {"Identifier": "com.a", "Name": "A", "ShortVersion": "1.2"},
        {"Identifier": "com.b", "Name": "B", "ShortVersion": "3.0", "Installing": True},
    ]
    inv = report("Acknowledged", "inv", InstalledApplicationList=apps)
    assert command_uuid(await svc.connect(inv)) == "later"
    assert command_uuid(await svc.connect(report("NotNow", "later"))) == "bad"
    chain = [{"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain"}]
    assert command_uuid(await svc.connect(report("Error", "bad", ErrorChain=chain))) is None
    found = await logged(store, mark)
    assert summary(found) == [
        ("command.delivered", UDID, "info"),
        ("command.acknowledged", UDID, "info"),
        ("command.delivered", UDID, "inv"),
        ("command.acknowledged", UDID, "inv"),
        ("device.inventory_changed", UDID, None),
        ("command.delivered", UDID, "later"),
        ("command.not_now", UDID, "later"),
        ("command.delivered", UDID, "bad"),
        ("command.error", UDID, "bad"),
    ]
    assert found[1].data == {"status": "Acknowledged"}
    # An app still installing is not installed yet.
    assert found[4].data == {
        "added": [{"identifier": "com.a", "version": "1.2", "name": "A"}],
        "removed": [],
        "changed": [],
    }
    assert found[6].data == {"status": "NotNow"}
    assert found[8].data == {"status": "Error"}

    # A result reported twice is recorded, and reported, once; one for a command the device
    # does not hold, never.
    mark = await store.last_event()
    assert command_uuid(await svc.connect(report("Acknowledged", "info"))) is None
    assert command_uuid(await svc.connect(report("Acknowledged", "nothing"))) is None
    assert await logged(store, mark) == []

    # A minute on, the device's next message is a check-in again; its CheckOut unenrols it.
    clock.now += events.LAST_SEEN_RESOLUTION
    assert (await svc.checkin(checkin("CheckOut"))).status == 200
    found = await logged(store, mark)
    assert summary(found) == [("device.unenrolled", UDID, None)]
    assert found[0].data == {"reason": "checked out (MDM profile removed)"}
    assert (await svc.connect(report("Idle"))).status == 200
    assert [e.type for e in await logged(store, found[0].seq)] == ["device.checked_in"]


async def test_apple_declaration_status_reports_what_changed(store: Store) -> None:
    svc, _ = await apple_enrolled(store)

    def status(items: dict[str, Any], errors: list[Any] | None = None) -> Request:
        data = {"StatusItems": items, "Errors": errors or []}
        return checkin("DeclarativeManagement", Endpoint="status", Data=json.dumps(data).encode())

    mark = await store.last_event()
    first = {"softwareupdate": {"install-state": "downloading"}, "device": {"model": "iPhone"}}
    assert (await svc.checkin(status(first))).status == 200
    (reported,) = await logged(store, mark)
    assert reported.type == "declaration.status"
    assert reported.device_id == UDID
    assert reported.data == {"changed": first, "errors": []}

    # Incremental: only what changed is reported; the same report again reports nothing.
    mark = reported.seq
    later = {"softwareupdate": {"install-state": "installing"}, "device": {"model": "iPhone"}}
    errors = [{"StatusItem": "x", "Reasons": []}]
    assert (await svc.checkin(status(later, errors))).status == 200
    assert (await svc.checkin(status(later, errors))).status == 200
    (changed,) = await logged(store, mark)
    assert changed.data == {
        "changed": {"softwareupdate": {"install-state": "installing"}},
        "errors": errors,
    }


# --- roll-outs -------------------------------------------------------------------------------


CHAT = App(
    id="chat",
    name="Chat",
    platform="ios",
    kind="store",
    identifier="com.example.chat",
    itunes_store_id=1234567,
    versions=(AppVersion(file_version="2.0"),),
)


async def fleet(store: Store, *ids: str, version: str | None = None) -> None:
    """Supervised iPhones, with Chat at ``version`` (``None``: without it)."""
    apps = [] if version is None else [{"identifier": CHAT.identifier, "version": version}]
    await store.upsert_devices(
        [Device(i, "ios", "/acme", "17.5", supervised=True, facts={"apps": apps}) for i in ids]
    )


def rollout(clock: Clock, **fields: Any) -> Notification:
    return Notification(
        id="n1",
        app_id="chat",
        all_devices=True,
        due_at=clock.now,
        created_at=clock.now,
        updated_at=clock.now,
        **fields,
    )


async def test_a_wave_and_the_end_of_its_rollout_are_reported(store: Store) -> None:
    clock = Clock()
    await store.put_app(CHAT, expected_rev=None)
    await fleet(store, "ios-1", "ios-2", version="2.0")
    catalogue = Catalogue(store, now=clock)
    start = await store.last_event()
    # Every device has the version already: the one wave queues nothing, and ends it.
    done = await catalogue.submit(rollout(clock, pace_per_minute=1))
    assert done.state == "done"
    found = await logged(store, start)
    assert summary(found) == [("rollout.wave_ran", None, "n1"), ("rollout.finished", None, "n1")]
    assert found[0].data == {
        "app_id": "chat",
        "wave": 1,
        "devices": 0,
        "command_ids": [],
        "state": "done",
        "counts": done.counts,
    }
    assert done.counts["already_at_version"] == 2
    assert found[1].data == {
        "app_id": "chat",
        "state": "done",
        "waves": 1,
        "counts": done.counts,
        "error": None,
    }


async def test_a_cancelled_rollout_is_reported_finished(store: Store) -> None:
    clock = Clock()
    await store.put_app(CHAT, expected_rev=None)
    await fleet(store, "ios-1", "ios-2")
    catalogue = Catalogue(store, now=clock)
    await catalogue.submit(rollout(clock, pace_per_minute=1))
    mark = await store.last_event()
    cancelled = await catalogue.cancel("n1")
    assert cancelled is not None
    (finished,) = await logged(store, mark)
    assert finished.type == "rollout.finished"
    assert finished.data["state"] == "cancelled"
    assert finished.data["waves"] == 1
    # Cancelled already: nothing more is written, nor reported.
    await catalogue.cancel("n1")
    assert await logged(store, finished.seq) == []


async def test_an_empty_licence_pool_is_reported_exhausted(store: Store) -> None:
    clock = Clock()
    vpp = App(
        id="chat",
        name="Chat",
        platform="ios",
        kind="store",
        identifier="com.example.chat",
        itunes_store_id=1234567,
        vpp=True,
        licence_total=0,
        versions=(AppVersion(file_version="2.0"),),
    )
    await store.put_app(vpp, expected_rev=None)
    await fleet(store, "ios-1", "ios-2", "ios-3")
    catalogue = Catalogue(store, now=clock)
    start = await store.last_event()
    done = await catalogue.submit(rollout(clock))
    assert done.counts.get("no_licence") == 3
    found = await logged(store, start)
    assert summary(found) == [
        ("rollout.wave_ran", None, "n1"),
        ("rollout.finished", None, "n1"),
        ("licences.exhausted", None, "chat"),
    ]
    assert found[2].data == {"notification_id": "n1", "total": 0, "without_licence": 3}


async def test_waves_that_queue_commands_are_reported_with_them(store: Store) -> None:
    await fleet(store, "ios-1", "ios-2", "ios-3")
    async with gateway(store) as gw, gw.client() as client:

        async def ok(
            method: str, path: str, body: Any = None, status: int = 200, **query: Any
        ) -> Any:
            r = await client.request(
                method, "/api/v1" + path, json=body, params=query, headers=AUTH
            )
            assert r.status_code == status, r.text
            return r.json()

        # Two licences for three iPhones, one device a minute.
        app = {
            "id": "chat",
            "name": "Chat",
            "platform": "ios",
            "kind": "store",
            "identifier": CHAT.identifier,
            "itunes_store_id": CHAT.itunes_store_id,
            "vpp": True,
            "licences": 2,
        }
        await ok("POST", "/apps", app, 201)
        await ok("POST", "/apps/chat/versions", {"file_version": "2.0"}, 201)
        start = await store.last_event()
        body = {"all_devices": True, "pace_per_minute": 1}
        first = await ok("POST", "/apps/chat/install-notifications", body, 202)
        assert (first["state"], first["counts"]["queued"]) == ("running", 1)
        assert first["command_ids"]
        rollouts = "rollout.*,licences.exhausted"
        answer = await ok("GET", "/events", after=start, types=rollouts)
        found = answer["events"]
        assert [(e["type"], e["subject"]) for e in found] == [
            ("rollout.wave_ran", first["id"]),
            ("licences.exhausted", "chat"),
        ]
        assert found[0]["data"] == {
            "app_id": "chat",
            "wave": 1,
            "devices": 1,
            "command_ids": first["command_ids"],
            "state": "running",
            "counts": first["counts"],
        }
        assert found[1]["data"] == {
            "notification_id": first["id"],
            "total": 2,
            "without_licence": 1,
        }

        # A minute on, the second wave takes the other licensed device and ends it.
        gw.clock.now += 60
        assert [n.id for n in await gw.catalogue.run_due()] == [first["id"]]
        last = await ok("GET", f"/install-notifications/{first['id']}")
        assert (last["state"], last["waves"], last["counts"]["queued"]) == ("done", 2, 2)
        answer = await ok("GET", "/events", after=answer["next"], types=rollouts)
        found = answer["events"]
        assert [(e["type"], e["subject"]) for e in found] == [
            ("rollout.wave_ran", first["id"]),
            ("rollout.finished", first["id"]),
        ]
        assert found[0]["data"] == {
            "app_id": "chat",
            "wave": 2,
            "devices": 1,
            "command_ids": [c for c in last["command_ids"] if c not in first["command_ids"]],
            "state": "done",
            "counts": last["counts"],
        }
        assert found[1]["data"] == {
            "app_id": "chat",
            "state": "done",
            "waves": 2,
            "counts": last["counts"],
            "error": None,
        }
        # What the events report is what was written, with them.
        assert await store.licence_holders("chat") == ["ios-1", "ios-2"]
        for device_id, queued in (("ios-1", 1), ("ios-2", 1), ("ios-3", 0)):
            assert len(await store.take(device_id, "s", 5)) == queued


# --- GET /api/v1/events, over real sockets ---------------------------------------------------


async def test_the_events_api_pages_filters_and_refuses_bad_queries(store: Store) -> None:
    await store.upsert_devices([Device("a", "ios", "/"), Device("b", "ios", "/")])
    start = await store.last_event()
    await store.append_events(
        [
            NewEvent("command.acknowledged", device_id="a", subject="c1", data={"status": "x"}),
            NewEvent("device.checked_in", device_id="b", data={"last_seen": 1}),
            NewEvent("command.error", device_id="b", subject="c2"),
            NewEvent("rollout.wave_ran", subject="n1"),
        ]
    )
    async with gateway(store) as gw, gw.client() as client:

        async def page(**query: Any) -> dict[str, Any]:
            r = await client.get("/api/v1/events", params=query, headers=AUTH)
            assert r.status_code == 200, r.text
            answer: dict[str, Any] = r.json()
            return answer

        everything = await page(after=start)
        assert [e["type"] for e in everything["events"]] == [
            "command.acknowledged",
            "device.checked_in",
            "command.error",
            "rollout.wave_ran",
        ]
        first = everything["events"][0]
        assert first["device_id"] == "a"
        assert first["subject"] == "c1"
        assert first["data"] == {"status": "x"}
        assert first["at"].endswith("Z")
        last = everything["events"][-1]["seq"]
        assert everything["next"] == last

        # Two at a time, then on from next.
        two = await page(after=start, limit=2)
        assert len(two["events"]) == 2
        rest = await page(after=two["next"])
        assert [e["seq"] for e in two["events"] + rest["events"]] == [
            e["seq"] for e in everything["events"]
        ]
        # Filters; a filtered answer that is not full reads on from the log's end.
        commands_of_b = await page(after=start, types="command.*,rollout.finished", device_id="b")
        assert [e["type"] for e in commands_of_b["events"]] == ["command.error"]
        assert commands_of_b["next"] == last
        nothing = await page(after=start, types="licences.exhausted")
        assert nothing == {"events": [], "next": last}

        for query, field in (
            ({"after": "-1"}, "after"),
            ({"after": "x"}, "after"),
            ({"limit": "0"}, "limit"),
            ({"types": "command.acked"}, "types"),
            ({"types": "command.error,"}, "types"),
            ({"device_id": ""}, "device_id"),
            ({"wait": "31"}, "wait"),
            ({"wait": "soon"}, "wait"),
            ({"since": "1"}, "since"),
        ):
            r = await client.get("/api/v1/events", params=query, headers=AUTH)
            assert r.status_code == 422, (query, r.text)
            assert r.json()["field"] == field, query
        assert (await client.get("/api/v1/events")).status_code == 401

        # Documented where it is served, its schemas with it.
        document = (await client.get("/api/v1/openapi.json", headers=AUTH)).json()
        operation = document["paths"]["/api/v1/events"]["get"]
        assert [p["name"] for p in operation["parameters"]] == [
            "after",
            "limit",
            "types",
            "device_id",
            "wait",
        ]
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/EventsPage"}
        page = document["components"]["schemas"]["EventsPage"]
        assert page["properties"]["events"]["items"] == {"$ref": "#/components/schemas/EventOut"}


async def test_a_long_poll_answers_empty_when_its_wait_ends(store: Store) -> None:
    async with gateway(store) as gw, gw.client() as client:
        end = await store.last_event()
        r = await client.get("/api/v1/events", params={"after": end, "wait": "0.2"}, headers=AUTH)
        assert r.status_code == 200
        assert r.json() == {"events": [], "next": end}


class Watched(api_events.EventsApi):
    """The real handler over the real store, telling the test the cursor of each read that
    found nothing to answer (after which the long poll waits)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.empty, self.empty_reads = trio.open_memory_channel[int](100)

    async def _read(
        self, after: int, limit: int, types: list[str] | None, device_id: str | None
    ) -> tuple[list[Event], int]:
        page, cursor = await super()._read(after, limit, types, device_id)
        if not page:
            self.empty.send_nowait(cursor)
        return page, cursor


@pytest.mark.parametrize("backend", SHARED_BACKENDS)
async def test_a_long_poll_wakes_when_another_connection_appends(
    backend: str, tmp_path: Path
) -> None:
    store = await open_backend(backend, tmp_path)
    peer = await open_peer(backend, tmp_path)
    watched = Watched(store)
    try:
        await store.append_events([NewEvent("device.checked_in", device_id="noise")])
        end = await store.last_event()
        async with gateway(store, events_api=watched) as gw, gw.client() as client:
            answers: list[httpx.Response] = []

            async def poll() -> None:
                answers.append(
                    await client.get(
                        "/api/v1/events",
                        params={"after": end, "wait": "30", "types": "command.*"},
                        headers=AUTH,
                    )
                )

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(poll)
                    assert await watched.empty_reads.receive() == end
                    # Another node's event the poll does not want: it wakes, reads on past
                    # it, and waits again.
                    await peer.append_events([NewEvent("device.checked_in", device_id="x")])
                    assert await watched.empty_reads.receive() > end
                    assert answers == []
                    await peer.append_events(
                        [NewEvent("command.acknowledged", device_id="x", subject="c")]
                    )
            (answer,) = answers
            assert answer.status_code == 200
            (event,) = answer.json()["events"]
            assert (event["type"], event["subject"]) == ("command.acknowledged", "c")
            assert answer.json()["next"] == event["seq"]
    finally:
        await peer.aclose()
        await store.aclose()


async def test_serve_answers_events_written_through_another_node(tmp_path: Path) -> None:
    db = Cluster.sqlite_url(tmp_path / "mdmgate.db")
    config = "[events]\nretention_days = 7\n"
    async with Cluster(tmp_path, db, nodes=2, config=config) as cluster:
        first, second = cluster.nodes
        async with cluster.admin(first) as one, cluster.admin(second) as other:
            device = {"id": "ios-9", "platform": "ios", "org": "/acme"}
            assert (await one.post("/api/v1/devices", json=[device])).status_code == 200
            end = (await other.get("/api/v1/events")).json()["next"]
            assert (await one.delete("/api/v1/devices/ios-9")).status_code == 200
            r = await other.get(
                "/api/v1/events", params={"after": end, "device_id": "ios-9", "wait": "10"}
            )
            assert r.status_code == 200, r.text
            (event,) = r.json()["events"]
            assert event["type"] == "device.unenrolled"


# --- pruning ---------------------------------------------------------------------------------


async def test_pruning_keeps_the_retention_and_runs_on_one_node_an_hour(store: Store) -> None:
    await store.append_events([NewEvent("device.checked_in", device_id="d")])
    (old,) = await logged(store, 0)
    clock = Clock()
    clock.now += 29 * DAY
    first = EventPruning(store, "node-1", retention_days=30, clock=clock)
    second = EventPruning(store, "node-2", retention_days=30, clock=clock)
    # Within the retention nothing goes; node 1 did this hour's pruning, for every node.
    assert await first.once() == 0
    assert await second.once() is None
    assert await first.once() is None
    assert await logged(store, 0) == [old]
    clock.now += 2 * DAY
    assert await second.once() == 1
    assert await logged(store, 0) == []
    assert await first.once() is None
    clock.now += 3600
    assert await first.once() == 0
    # A pruned number is never handed out again.
    await store.append_events([NewEvent("device.checked_in", device_id="d")])
    (fresh,) = await logged(store, 0)
    assert fresh.seq > old.seq


def test_the_retention_is_configured_in_days(tmp_path: Path) -> None:
    assert load_config(None, {}).events_retention_days == 30
    path = tmp_path / "mdmgate.toml"
    path.write_text("[events]\nretention_days = 7.5\n")
    assert load_config(str(path), {}).events_retention_days == 7.5
    for bad, message in (
        ("retention_days = 0", "retention_days"),
        ("retention_days = true", "retention_days"),
        ("retention_days = 'long'", "retention_days"),
        ("keep = 3", "unknown events keys"),
    ):
        path.write_text(f"[events]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(str(path), {})


async def test_delivery_states_map_to_their_events() -> None:
    assert events.command_answered("d", "c", DeliveryState.ACCEPTED, "202") == []
    (event,) = events.command_answered("d", "c", DeliveryState.NOT_NOW, "NotNow")
    assert event == NewEvent(
        "command.not_now", device_id="d", subject="c", data={"status": "NotNow"}
    )


async def test_an_inventory_registered_through_the_api_is_reported(store: Store) -> None:
    service = devices.DeviceService(store)
    start = await store.last_event()
    chat = {"identifier": "com.acme.chat", "version": "1.0"}
    await service.register([devices.DeviceChange("ios-r", "ios", org="/", apps=[chat])])
    # Changing something else reports nothing; a new version of an app does.
    await service.register([devices.DeviceChange("ios-r", "ios", os_version="17.5")])
    newer = {**chat, "version": "1.1"}
    await service.register([devices.DeviceChange("ios-r", "ios", apps=[newer])])
    found = [e for e in await logged(store, start) if e.type == "device.inventory_changed"]
    assert [e.data for e in found] == [
        {
            "added": [{"identifier": "com.acme.chat", "version": "1.0", "name": None}],
            "removed": [],
            "changed": [],
        },
        {
            "added": [],
            "removed": [],
            "changed": [{"identifier": "com.acme.chat", "from": "1.0", "to": "1.1"}],
        },
    ]


async def test_a_nul_a_device_sends_is_kept_out_of_the_log(store: Store) -> None:
    # Binary plists and DDM JSON may carry U+0000, which the log cannot store: the event is
    # written with U+FFFD instead, and the exchange it rides on does not fail.
    odd = events.inventory_changed("ios-n", [], [{"identifier": "a\x00b", "name": "x\x00"}])
    status = events.declaration_status("ios-n", {}, {"k\x00": ["v\x00"]}, ["e\x00"])
    answers = events.command_answered("ios-n", "c", DeliveryState.ERROR, "bad\x00")
    assert odd is not None
    start = await store.last_event()
    await store.append_events([odd, status, *answers])
    written = [e.data for e in await logged(store, start)]
    assert written[0]["added"] == [{"identifier": "a\ufffdb", "version": None, "name": "x\ufffd"}]
    assert written[1] == {"changed": {"k\ufffd": ["v\ufffd"]}, "errors": ["e\ufffd"]}
    assert written[2] == {"status": "bad\ufffd"}
