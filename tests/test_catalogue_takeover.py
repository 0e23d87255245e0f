"""Taking user-installed apps under management (issue 14, items 18 and 19).

A roll-out with ``take_over`` takes a copy the user installed themselves under management
(``InstallApplication`` with ``ChangeManagementState: Managed``) whatever its version, and
the preview says so (``take_over``). ``ChangeManagementState`` exists on iOS/iPadOS 9 and
macOS 11 and later (Apple's facts): older devices (and devices of unknown OS version) get
a plain install, or are skipped as ``take_over_unsupported`` when the user's copy is
there, and the single-device ``apple_app`` take-over is refused for them.

Driven through the admin API on every store backend, and end to end with the Apple device
emulator over TLS."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mdmgate import plist
from mdmgate.apple.push import ApnsClient
from mdmgate.apple.pusher import DevicePusher
from mdmgate.apple.service import AppleService
from mdmgate.catalogue import rules
from mdmgate.catalogue.service import Catalogue
from mdmgate.server.admin import AdminApi
from mdmgate.server.app import build_handler
from mdmgate.server.http import Limits, Server, listener_port, open_listeners, server_ssl_context
from mdmgate.server.metrics import Metrics
from mdmgate.storage import DeliveryState, Device
from mdmgate.storage.sqlite import SQLiteStore
from tests.apns_server import ApnsServer, running
from tests.stores import BACKENDS, open_backend
from tests.test_apple_e2e import TOKEN, TOPIC, AppleDevice, Gateway, Pki, pki
from tests.test_catalogue_scenarios import STORE_APP, Clock, Console

__all__ = ["pki"]  # the emulator's PKI fixture, used by the end-to-end tests below

TOKYO = dt.timezone(dt.timedelta(hours=9))
CHAT = "com.example.chat"


@pytest.fixture(params=BACKENDS)
async def console(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Console]:
    store = await open_backend(request.param, tmp_path)
    yield Console(store, Clock(dt.datetime(2026, 11, 20, 10, 0, tzinfo=TOKYO)))
    await store.aclose()


def device(
    device_id: str,
    *,
    os_version: str | None = "17.5",
    platform: str = "ios",
    supervised: bool = True,
    chat: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A device of ``/acme``; ``chat`` is ``(version, source)`` of the app it reports."""
    out: dict[str, Any] = {
        "id": device_id,
        "platform": platform,
        "org": "/acme",
        "os_version": os_version,
        "supervised": supervised,
        "apps": [],
    }
    if chat is not None:
        out["apps"] = [{"identifier": CHAT, "version": chat[0], "source": chat[1]}]
    return out


async def chat_app(console: Console, *, platform: str = "ios", licences: int = 50) -> None:
    await console.ok(
        "POST", "/apps", {**STORE_APP, "platform": platform, "licences": licences}, 201
    )
    await console.ok("POST", "/apps/chat/versions", {"file_version": "2.0"}, 201)


async def managed_list(console: Console, device_id: str, apps: dict[str, Any]) -> None:
    """What a ManagedApplicationList report leaves in the device's facts."""
    assert await console.store.merge_facts(device_id, {"managed_apps": apps})
    console.catalogue.note_devices([device_id])


def outcomes(preview: dict[str, Any]) -> dict[str, str]:
    return {d["id"]: d["outcome"] for d in preview["devices"]}


async def command_of(console: Console, command_id: str) -> dict[str, Any]:
    command = plist.loads(await console.body(command_id))["Command"]
    assert isinstance(command, dict)
    return command


# --- item 18: a user-installed copy at any version is taken over ---------------------------------


async def test_take_over_takes_a_user_installed_copy_at_any_version(console: Console) -> None:
    await console.devices(
        device("user-same", chat=("2.0", "user")),
        device("user-below", chat=("1.5", "user"), supervised=False),
        device("user-above", chat=("3.0", "user")),
        device("managed-same", chat=("2.0", "managed")),
        device("missing"),
        # Reported by the device: InstalledApplicationList, then ManagedApplicationList.
        device("listed-unmanaged", chat=("2.0", "installed")),
        device("listed-user-installed", chat=("2.0", "installed")),
        device("listed-managed", chat=("2.0", "installed")),
        device("managed-state-unknown", chat=("2.0", "installed")),
    )
    await managed_list(console, "listed-unmanaged", {"com.example.other": {"status": "Managed"}})
    await managed_list(console, "listed-user-installed", {CHAT: {"status": "UserInstalledApp"}})
    await managed_list(console, "listed-managed", {CHAT: {"status": "Managed"}})
    await chat_app(console)

    # Without take_over nothing changes: the user's copy at the version is left alone.
    plain = await console.ok("POST", "/apps/chat/preview", {"orgs": ["/acme"]})
    assert outcomes(plain)["user-same"] == "already_at_version"
    assert outcomes(plain)["user-below"] == "update"

    body = {"orgs": ["/acme"], "take_over": True}
    preview = await console.ok("POST", "/apps/chat/preview", body)
    assert outcomes(preview) == {
        "user-same": "take_over",
        "user-below": "take_over",
        # A store install cannot go back: the platform's downgrade rule stands.
        "user-above": "downgrade_not_allowed",
        "managed-same": "already_at_version",
        "missing": "install",
        "listed-unmanaged": "take_over",
        "listed-user-installed": "take_over",
        "listed-managed": "already_at_version",
        "managed-state-unknown": "already_at_version",
    }
    assert preview["counts"] == {
        "take_over": 4,
        "install": 1,
        "already_at_version": 3,
        "downgrade_not_allowed": 1,
    }
    assert (preview["silent"], preview["prompt"]) == (4, 1)
    assert preview["licences"] == {"free": 50, "needed": 5}
    (taken,) = [d for d in preview["devices"] if d["id"] == "user-same"]
    assert taken == {
        "id": "user-same",
        "outcome": "take_over",
        "version": "2.0",
        "installs": "silent",
    }
    only = await console.ok("POST", "/apps/chat/preview", {**body, "outcome": "take_over"})
    assert sorted(d["id"] for d in only["devices"]) == [
        "listed-unmanaged",
        "listed-user-installed",
        "user-below",
        "user-same",
    ]

    sent = await console.ok("POST", "/apps/chat/install-notifications", body, 202)
    assert sent["counts"] == {"queued": 5, "already_at_version": 3, "downgrade_not_allowed": 1}
    queued = await console.queued(sent["command_ids"])
    assert sorted(queued) == [
        "listed-unmanaged",
        "listed-user-installed",
        "missing",
        "user-below",
        "user-same",
    ]
    command = await command_of(console, queued["user-same"])
    assert command == {
        "RequestType": "InstallApplication",
        "iTunesStoreID": 1234567,
        "Options": {"PurchaseMethod": 1},
        "ChangeManagementState": "Managed",
    }
    licences = await console.ok("GET", "/apps/chat/licences")
    assert licences == {"total": 50, "assigned": 5, "free": 45}

    # Once the device reports the copy managed, the next take-over leaves it alone.
    await console.devices(device("user-same", chat=("2.0", "managed")))
    again = await console.ok(
        "POST", "/apps/chat/preview", {"devices": ["user-same"], "take_over": True}
    )
    assert outcomes(again) == {"user-same": "already_at_version"}


async def test_take_over_needs_a_licence_and_falls_in_the_rollout(console: Console) -> None:
    await console.devices(device("a", chat=("2.0", "user")), device("b", chat=("2.0", "user")))
    await chat_app(console, licences=1)
    preview = await console.ok(
        "POST", "/apps/chat/preview", {"devices": ["a", "b"], "take_over": True}
    )
    assert preview["counts"] == {"take_over": 1, "no_licence": 1}
    none = await console.ok(
        "POST", "/apps/chat/preview", {"devices": ["a", "b"], "take_over": True, "percent": 0}
    )
    assert none["counts"] == {"outside_rollout": 2}


async def test_preview_outcome_filter_is_checked(console: Console) -> None:
    await console.devices(device("a"))
    await chat_app(console)
    status, error = await console.call(
        "POST", "/apps/chat/preview", {"devices": ["a"], "outcome": "taken_over"}
    )
    assert status == 422, error
    assert error["field"] == "$.outcome"
    assert "take_over" in error["error"]


# --- item 19: ChangeManagementState only where Apple's facts say it exists -----------------------


async def test_take_over_only_for_ios_9_and_later(console: Console) -> None:
    await console.devices(
        device("ios8-user", os_version="8.4", chat=("2.0", "user")),
        device("ios8-user-below", os_version="8.4.1", chat=("1.0", "user"), platform="ipados"),
        device("ios8-missing", os_version="8.4"),
        device("ios8-managed-below", os_version="8.4", chat=("1.0", "managed")),
        device("ios9-user", os_version="9.0", chat=("2.0", "user")),
        device("ios9-missing", os_version="9.0"),
        device("unknown-user", os_version=None, chat=("2.0", "user")),
        device("unknown-missing", os_version=None),
    )
    await chat_app(console)
    body = {"orgs": ["/acme"], "take_over": True}
    preview = await console.ok("POST", "/apps/chat/preview", body)
    assert outcomes(preview) == {
        "ios8-user": "take_over_unsupported",
        "ios8-user-below": "take_over_unsupported",
        "ios8-missing": "install",
        "ios8-managed-below": "update",
        "ios9-user": "take_over",
        "ios9-missing": "install",
        "unknown-user": "take_over_unsupported",
        "unknown-missing": "install",
    }
    assert preview["counts"] == {
        "take_over_unsupported": 3,
        "install": 3,
        "update": 1,
        "take_over": 1,
    }
    sent = await console.ok("POST", "/apps/chat/install-notifications", body, 202)
    assert sent["counts"] == {"queued": 5, "take_over_unsupported": 3}
    queued = await console.queued(sent["command_ids"])
    cms = {
        device_id: (await command_of(console, command_id)).get("ChangeManagementState")
        for device_id, command_id in queued.items()
    }
    assert cms == {
        "ios8-missing": None,
        "ios8-managed-below": None,
        "ios9-user": "Managed",
        "ios9-missing": "Managed",
        "unknown-missing": None,
    }
    # A plain install to an old device is still the app's install (VPP).
    plain = await command_of(console, queued["ios8-missing"])
    assert plain == {
        "RequestType": "InstallApplication",
        "iTunesStoreID": 1234567,
        "Options": {"PurchaseMethod": 1},
    }


async def test_take_over_on_macos_follows_apples_facts(console: Console) -> None:
    await console.devices(
        device("mac-10", platform="macos", os_version="10.15.7", chat=("2.0", "user")),
        device("mac-11", platform="macos", os_version="11.0", chat=("2.0", "user")),
    )
    await chat_app(console, platform="macos")
    preview = await console.ok("POST", "/apps/chat/preview", {"orgs": ["/acme"], "take_over": True})
    assert outcomes(preview) == {"mac-10": "take_over_unsupported", "mac-11": "take_over"}


async def test_single_device_take_over_refused_where_unsupported(console: Console) -> None:
    await console.devices(
        device("iphone-8", os_version="8.4"),
        device("iphone-9", os_version="9.3"),
        device("ipad-unknown", os_version=None, platform="ipados"),
        device("mac-10", os_version="10.15", platform="macos"),
        device("mac-14", os_version="14.5", platform="macos"),
    )
    take_over = {"action": "take_over", "identifier": CHAT, "itunes_store_id": 1234567}
    for device_id, words in (
        ("iphone-8", "iOS 8.4"),
        ("ipad-unknown", "unknown"),
        ("mac-10", "macOS 10.15"),
    ):
        status, error = await console.call(
            "POST", f"/devices/{device_id}/commands", {"apple_app": take_over}
        )
        assert status == 422, error
        assert error["field"] == "$.apple_app.action"
        assert error["reason"] == "take_over_unsupported"
        assert device_id in error["error"]
        assert words in error["error"]
    # Several devices: refused as a whole, nothing queued for anyone.
    status, error = await console.call(
        "POST", "/commands", {"devices": ["iphone-9", "iphone-8"], "apple_app": take_over}
    )
    assert (status, error["field"]) == (422, "$.apple_app.action"), error
    assert "iphone-8" in error["error"]
    assert "iphone-9" not in error["error"]
    assert await console.store.deliveries("iphone-9", list(DeliveryState)) == []
    for device_id in ("iphone-9", "mac-14"):
        accepted = await console.ok(
            "POST", f"/devices/{device_id}/commands", {"apple_app": take_over}, 202
        )
        command = await command_of(console, accepted["command_id"])
        assert command["ChangeManagementState"] == "Managed"
    # A plain install is what an old device can take.
    install = {"action": "install_store_app", "itunes_store_id": 1234567}
    accepted = await console.ok("POST", "/devices/iphone-8/commands", {"apple_app": install}, 202)
    assert "ChangeManagementState" not in await command_of(console, accepted["command_id"])


@pytest.mark.parametrize(
    ("platform", "os_version", "why"),
    [
        ("ios", "9.0", None),
        ("ipados", "9", None),
        ("ios", "8.4.1", "it runs iOS 8.4.1"),
        ("ios", None, "unknown"),
        ("ios", "", "unknown"),
        ("ios", "9..1", "cannot be read"),
        ("macos", "11.0", None),
        ("macos", "10.15.7", "it runs macOS 10.15.7"),
        ("windows", "10.0.22631", "no ChangeManagementState"),
    ],
)
def test_take_over_refusal(platform: str, os_version: str | None, why: str | None) -> None:
    found = rules.take_over_refusal(platform, os_version)
    if why is None:
        assert found is None
    else:
        assert found is not None
        assert why in found


@pytest.mark.parametrize(
    ("entry", "managed_apps", "user"),
    [
        ({"source": "user"}, None, True),
        ({"source": "managed"}, {}, False),
        ({"source": "import"}, None, False),
        ({"source": "installed"}, None, False),
        ({"source": "installed"}, {}, True),
        ({"source": "installed"}, {CHAT: {"status": "Managed"}}, False),
        ({"source": "installed"}, {CHAT: {"status": "Installing"}}, False),
        ({"source": "installed"}, {CHAT: {"status": "UserInstalledApp"}}, True),
        ({"source": "installed"}, {CHAT: {"status": "ManagementRejected"}}, True),
        ({"source": "installed"}, {CHAT: "garbage"}, False),
        (None, {}, False),
    ],
)
def test_user_installed_from_facts(
    entry: dict[str, Any] | None, managed_apps: dict[str, Any] | None, user: bool
) -> None:
    facts: dict[str, Any] = {"apps": [] if entry is None else [{"identifier": CHAT, **entry}]}
    if managed_apps is not None:
        facts["managed_apps"] = managed_apps
    assert rules.user_installed(facts, CHAT) is user
    assert rules.reported_os_version(None, {"apple_enrollment": {"os_version": "8.4"}}) == "8.4"
    assert rules.reported_os_version("17.5", {"apple_enrollment": {"os_version": "8.4"}}) == "17.5"


# --- end to end: the Apple device emulator against the real server ------------------------------


@asynccontextmanager
async def takeover_gateway(tmp_path: Path, pki: Pki) -> AsyncIterator[Gateway]:
    """The served gateway as ``mdmgate serve`` wires it: the catalogue hears of every
    inventory the Apple service records, and its roll-outs push the devices."""
    store = await SQLiteStore.open(tmp_path / "mdmgate.db")
    apns = ApnsServer()
    metrics = Metrics()
    catalogue = Catalogue(store)
    admin = AdminApi(store, TOKEN, catalogue=catalogue)
    apple = AppleService(store, on_devices_changed=catalogue.note_devices)
    handler = build_handler(store, admin, metrics, None, apple)
    context = server_ssl_context(pki.server_cert, pki.server_key, pki.ca_file)
    listeners = await open_listeners("127.0.0.1", 0, context)
    server = Server(handler, Limits(), metrics=metrics)
    async with running(apns) as apns_url, ApnsClient(apns_url, topic=TOPIC) as client:
        pusher = DevicePusher(store, client)
        admin.on_enqueued = catalogue.on_enqueued = pusher.wake
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.run)
            await nursery.start(server.run, listeners)
            try:
                yield Gateway(store, f"https://127.0.0.1:{listener_port(listeners[0])}", apns, pki)
            finally:
                nursery.cancel_scope.cancel()
    await store.aclose()


class Phone(AppleDevice):
    """An iPhone on a given iOS version, answering the inventory commands."""

    def __init__(self, client: httpx.AsyncClient, udid: str, os_version: str) -> None:
        super().__init__(client, udid, udid.encode())
        self.os_version = os_version

    async def enroll(self) -> None:
        for message in (
            {"MessageType": "Authenticate", "Topic": TOPIC, "OSVersion": self.os_version},
            {
                "MessageType": "TokenUpdate",
                "Topic": TOPIC,
                "Token": self.token,
                "PushMagic": self.push_magic,
            },
        ):
            r = await self.checkin(message)
            assert r.status_code == 200, r.text

    async def answer(
        self, admin: httpx.AsyncClient, refresh: dict[str, Any], **result: Any
    ) -> None:
        """Asks the device for an inventory through the admin API; it answers ``result``."""
        r = await admin.post(f"/api/v1/devices/{self.udid}/commands", json={"apple_app": refresh})
        assert r.status_code == 202, r.text
        command = await self.next_command()
        assert command is not None
        assert command["CommandUUID"] == r.json()["command_id"]
        assert (
            await self.next_command("Acknowledged", CommandUUID=command["CommandUUID"], **result)
            is None
        )

    async def report_chat(self, admin: httpx.AsyncClient, managed: dict[str, Any]) -> None:
        """The user installed Chat 2.0 from the App Store; ``managed`` is what the device's
        ManagedApplicationList says."""
        await self.answer(
            admin, {"action": "refresh_inventory", "managed": True}, ManagedApplicationList=managed
        )
        installed = [{"Identifier": CHAT, "Name": "Chat", "ShortVersion": "2.0", "Version": "200"}]
        await self.answer(
            admin, {"action": "refresh_inventory"}, InstalledApplicationList=installed
        )


async def register(gw: Gateway, udid: str, os_version: str) -> None:
    await gw.store.upsert_devices([Device(udid, "ios", "/acme", os_version, True, {}, {})])


async def publish_chat(admin: httpx.AsyncClient) -> None:
    app = {**STORE_APP, "licences": 10}
    r = await admin.post("/api/v1/apps", json=app)
    assert r.status_code == 201, r.text
    r = await admin.post("/api/v1/apps/chat/versions", json={"file_version": "2.0"})
    assert r.status_code == 201, r.text


async def test_e2e_user_installed_copy_is_taken_over(tmp_path: Path, pki: Pki) -> None:
    async with takeover_gateway(tmp_path, pki) as gw, gw.admin() as admin:
        await register(gw, "udid-user", "17.5")
        await register(gw, "udid-asked", "16.1")
        identity, _ = pki.device_identity(tmp_path, "phone-user")
        other, _ = pki.device_identity(tmp_path, "phone-asked")
        async with gw.device(identity) as client, gw.device(other, http2=True) as client2:
            phone = Phone(client, "udid-user", "17.5")
            asked = Phone(client2, "udid-asked", "16.1")
            await phone.enroll()
            await asked.enroll()
            await publish_chat(admin)
            body = {"devices": ["udid-user", "udid-asked"], "take_over": True}
            r = await admin.post("/api/v1/apps/chat/preview", json=body)
            assert r.json()["counts"] == {"install": 2}, r.text
            # Not in the managed list at all: the user's own copy.
            await phone.report_chat(admin, {"com.example.other": {"Status": "Managed"}})
            # Listed as the user's: MDM asked before and the device said so.
            await asked.report_chat(admin, {CHAT: {"Status": "UserInstalledApp"}})
            r = await admin.post("/api/v1/apps/chat/preview", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["counts"] == {"take_over": 2}
            r = await admin.post("/api/v1/apps/chat/install-notifications", json=body)
            assert r.status_code == 202, r.text
            assert r.json()["counts"] == {"queued": 2}
            for device in (phone, asked):
                command = await device.next_command()
                assert command is not None, f"{device.udid} was sent nothing"
                assert command["Command"] == {
                    "RequestType": "InstallApplication",
                    "iTunesStoreID": 1234567,
                    "Options": {"PurchaseMethod": 1},
                    "ChangeManagementState": "Managed",
                }
                answer = await device.next_command(
                    "Acknowledged",
                    CommandUUID=command["CommandUUID"],
                    Identifier=CHAT,
                    State="Managed",
                )
                assert answer is None
            r = await admin.get("/api/v1/apps/chat/licences")
            assert r.json()["assigned"] == 2


async def test_e2e_managed_list_after_the_inventory_reaches_the_index(
    tmp_path: Path, pki: Pki
) -> None:
    async with takeover_gateway(tmp_path, pki) as gw, gw.admin() as admin:
        await register(gw, "udid-late", "17.5")
        identity, _ = pki.device_identity(tmp_path, "phone-late")
        async with gw.device(identity) as client:
            phone = Phone(client, "udid-late", "17.5")
            await phone.enroll()
            await publish_chat(admin)
            # By org, the fleet index answers as the devices reported (named devices would
            # be read from the store first). Asked once, so the index is built now.
            body = {"orgs": ["/acme"], "take_over": True}
            r = await admin.post("/api/v1/apps/chat/preview", json=body)
            assert r.json()["counts"] == {"install": 1}, r.text
            # The installed list first: a device that never sent a managed list counts as
            # managed, so Chat 2.0 is at the version.
            installed = [{"Identifier": CHAT, "ShortVersion": "2.0", "Version": "200"}]
            await phone.answer(
                admin, {"action": "refresh_inventory"}, InstalledApplicationList=installed
            )
            r = await admin.post("/api/v1/apps/chat/preview", json=body)
            assert r.json()["counts"] == {"already_at_version": 1}, r.text
            # Then a managed list that leaves Chat out: the copy is the user's.
            await phone.answer(
                admin,
                {"action": "refresh_inventory", "managed": True},
                ManagedApplicationList={"com.example.other": {"Status": "Managed"}},
            )
            r = await admin.post("/api/v1/apps/chat/preview", json=body)
            assert r.json()["counts"] == {"take_over": 1}, r.text


async def test_e2e_ios_8_gets_no_change_management_state(tmp_path: Path, pki: Pki) -> None:
    async with takeover_gateway(tmp_path, pki) as gw, gw.admin() as admin:
        await register(gw, "udid-8-user", "8.4")
        await register(gw, "udid-8-new", "8.4")
        identity, _ = pki.device_identity(tmp_path, "phone-8-user")
        other, _ = pki.device_identity(tmp_path, "phone-8-new")
        async with gw.device(identity) as client, gw.device(other) as client2:
            user = Phone(client, "udid-8-user", "8.4")
            new = Phone(client2, "udid-8-new", "8.4")
            await user.enroll()
            await new.enroll()
            await user.report_chat(admin, {})
            await publish_chat(admin)
            body = {"devices": ["udid-8-user", "udid-8-new"], "take_over": True}
            r = await admin.post("/api/v1/apps/chat/install-notifications", json=body)
            assert r.status_code == 202, r.text
            # The device without the app gets a plain install.
            command = await new.next_command()
            assert command is not None
            assert command["Command"] == {
                "RequestType": "InstallApplication",
                "iTunesStoreID": 1234567,
                "Options": {"PurchaseMethod": 1},
            }
            assert r.json()["counts"] == {"queued": 1, "take_over_unsupported": 1}
            # The user's copy on iOS 8 cannot be taken over: nothing is sent.
            assert await user.next_command() is None
            # Nor by hand.
            take_over = {"action": "take_over", "identifier": CHAT, "itunes_store_id": 1234567}
            r = await admin.post(
                "/api/v1/devices/udid-8-user/commands", json={"apple_app": take_over}
            )
            assert r.status_code == 422, r.text
            assert r.json()["reason"] == "take_over_unsupported"
            assert await user.next_command() is None
