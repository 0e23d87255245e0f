"""The catalogue's behaviours, driven through the admin API as a console would, on every
store backend, with the wall clock under the test's control."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mdmgate import plist
from mdmgate.catalogue.service import Catalogue
from mdmgate.server.admin import AdminApi
from mdmgate.server.types import Request
from mdmgate.storage import Store
from mdmgate.storage.memory import MemoryStore
from tests.stores import BACKENDS, open_backend

TOKEN = "secret"
HEADERS = (("authorization", f"Bearer {TOKEN}"), ("content-type", "application/json"))
TOKYO = dt.timezone(dt.timedelta(hours=9))


class Clock:
    def __init__(self, start: dt.datetime) -> None:
        self.value = start.timestamp()

    def __call__(self) -> float:
        return self.value

    def set(self, when: dt.datetime) -> None:
        self.value = when.timestamp()

    def advance(self, seconds: float) -> None:
        self.value += seconds


class Console:
    """An admin API client over a handler, plus what a test needs to look behind it."""

    def __init__(self, store: Store, clock: Clock, *, node_id: str | None = None) -> None:
        self.store = store
        self.clock = clock
        self.pushed: list[str] = []
        self.catalogue = Catalogue(
            store, now=clock, on_enqueued=self.pushed.extend, node_id=node_id
        )
        self.api = AdminApi(store, TOKEN, catalogue=self.catalogue)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        response = await self.api(
            Request(method, "/api/v1" + path, "", HEADERS, data, "1.1", "127.0.0.1:5000")
        )
        return response.status, json.loads(response.body)

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, answer = await self.call(method, path, body)
        assert got == status, answer
        return answer

    async def devices(self, *devices: dict[str, Any]) -> None:
        await self.ok("POST", "/devices", list(devices))

    async def queued(self, command_ids: list[str]) -> dict[str, str]:
        """Device id -> command id of every delivery of the commands."""
        out: dict[str, str] = {}
        for command_id in command_ids:
            status = await self.ok("GET", f"/commands/{command_id}")
            for delivery in status["deliveries"]:
                assert delivery["device_id"] not in out, "one command per device"
                out[delivery["device_id"]] = command_id
        return out

    async def body(self, command_id: str) -> bytes:
        found = await self.store.command_status(command_id)
        assert found is not None
        return found.deliveries[0].body


@pytest.fixture(params=BACKENDS)
async def console(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Console]:
    store = await open_backend(request.param, tmp_path)
    yield Console(store, Clock(dt.datetime(2026, 11, 20, 10, 0, tzinfo=TOKYO)))
    await store.aclose()


def ios(device_id: str, org: str, *, apps: dict[str, str] | None = None, **extra: Any) -> Any:
    device: dict[str, Any] = {"id": device_id, "platform": "ios", "org": org}
    device.update({"os_version": "17.5", "supervised": True})
    device.update(extra)
    if apps is not None:
        device["apps"] = [{"identifier": k, "version": v} for k, v in apps.items()]
    return device


STORE_APP = {
    "id": "chat",
    "name": "Chat",
    "platform": "ios",
    "kind": "store",
    "identifier": "com.example.chat",
    "itunes_store_id": 1234567,
    "vpp": True,
}


async def store_app(console: Console, *, licences: int | None, **changes: Any) -> None:
    await console.ok("POST", "/apps", {**STORE_APP, "licences": licences, **changes}, 201)


# --- §B: versions and assignments --------------------------------------------------------------


async def test_seed_example_upload_between_previous_and_latest(console: Console) -> None:
    await console.devices(ios("sales-1", "/acme/sales"), ios("hr-1", "/acme/hr"))
    app = {"id": "field", "name": "Field", "platform": "ios", "kind": "internal"}
    await console.ok("POST", "/apps", {**app, "identifier": "com.acme.field"}, 201)
    url = "https://apps.acme.example/field-{}.plist"
    for version in ("1.1", "3.1"):
        await console.ok(
            "POST",
            "/apps/field/versions",
            {"file_version": version, "manifest_url": url.format(version)},
            201,
        )
    # The console's state in the manual: 3.1 is deployed, 1.1 is kept for part of the fleet.
    await console.ok("PUT", "/apps/field/versions/3.1/assignments", {"orgs": ["/acme/sales"]})
    await console.ok("PUT", "/apps/field/versions/1.1/assignments", {"orgs": ["/acme"]})

    upload = await console.ok(
        "POST",
        "/apps/field/versions",
        {"file_version": "2.1", "manifest_url": url.format("2.1")},
        201,
    )
    assert (upload["new"], upload["latest"], upload["previous"]) == ("2.1", "3.1", ["1.1"])
    versions = {v["file_version"]: v for v in upload["app"]["versions"]}
    assert versions["1.1"]["orgs"] == []  # its assignment moved ...
    assert versions["2.1"]["orgs"] == ["/acme"]  # ... to the new version
    assert versions["3.1"]["orgs"] == ["/acme/sales"]
    assert [versions[v]["role"] for v in ("1.1", "2.1", "3.1")] == [
        "previous",
        "previous",
        "latest",
    ]

    # sales-1 is assigned 2.1 (through /acme) and 3.1: it gets the highest, 3.1.
    preview = await console.ok("POST", "/apps/field/preview", {"assignments": True})
    got = {d["id"]: (d["outcome"], d["version"]) for d in preview["devices"]}
    assert got == {"sales-1": ("install", "3.1"), "hr-1": ("install", "2.1")}
    why = await console.ok("GET", "/devices/sales-1/apps/field")
    assert why["assignment"] == {"outcome": "install", "version": "3.1"}

    sent = await console.ok("POST", "/apps/field/install-notifications", {"assignments": True}, 202)
    assert sent["state"] == "done"
    assert sent["counts"] == {"queued": 2}
    queued = await console.queued(sent["command_ids"])
    for device_id, version in (("sales-1", "3.1"), ("hr-1", "2.1")):
        body = plist.loads(await console.body(queued[device_id]))
        assert body["Command"]["ManifestURL"] == url.format(version)


async def test_retire_previous_never_retires_the_latest(console: Console) -> None:
    await console.devices(ios("hr-1", "/acme/hr"))
    app = {"id": "field", "name": "Field", "platform": "ios", "kind": "internal"}
    await console.ok("POST", "/apps", {**app, "identifier": "com.acme.field"}, 201)
    for version in ("1.1", "3.1"):
        await console.ok("POST", "/apps/field/versions", {"file_version": version}, 201)
    await console.ok("PUT", "/apps/field/versions/1.1/assignments", {"orgs": ["/acme/hr"]})
    upload = await console.ok(
        "POST", "/apps/field/versions", {"file_version": "2.1", "retire_previous": True}, 201
    )
    assert upload["retired"] == ["1.1"]
    states = {v["file_version"]: v["state"] for v in upload["app"]["versions"]}
    assert states == {"1.1": "retired", "2.1": "active", "3.1": "active"}

    # A device whose only assignment is on a retired version is skipped, and says why.
    await console.ok("PATCH", "/apps/field/versions/2.1", {"state": "retired"})
    preview = await console.ok("POST", "/apps/field/preview", {"assignments": True})
    assert preview["counts"] == {"retired": 1}
    assert preview["devices"] == [
        {"id": "hr-1", "outcome": "retired", "version": None, "installs": None}
    ]
    status, refused = await console.call(
        "POST", "/apps/field/install-notifications", {"version": "2.1", "all_devices": True}
    )
    assert (status, refused["reason"]) == (422, "retired")
    status, refused = await console.call("POST", "/apps/field/versions", {"file_version": "2.1.0"})
    assert (status, refused["reason"]) == (422, "duplicate_version")


async def test_downgrades_follow_the_platform(console: Console) -> None:
    await console.devices(
        ios("phone", "/acme", apps={"com.acme.tool": "3.1"}),
        {
            "id": "pixel",
            "platform": "android",
            "org": "/acme",
            "apps": [{"identifier": "com.acme.tool", "version": "31"}],
        },
    )
    for platform, ident, version in (("ios", "tool-ios", "2.1"), ("android", "tool-android", "21")):
        body = {"id": ident, "name": "Tool", "platform": platform, "kind": "internal"}
        await console.ok("POST", "/apps", {**body, "identifier": "com.acme.tool"}, 201)
        await console.ok("POST", f"/apps/{ident}/versions", {"file_version": version}, 201)
    ios_preview = await console.ok("POST", "/apps/tool-ios/preview", {"all_devices": True})
    android_preview = await console.ok("POST", "/apps/tool-android/preview", {"all_devices": True})
    assert ios_preview["counts"] == {"downgrade": 1, "platform_mismatch": 1}
    assert android_preview["counts"] == {"downgrade_not_allowed": 1, "platform_mismatch": 1}


async def test_version_from_the_package_source(console: Console) -> None:
    app = {"id": "field", "name": "Field", "platform": "ios", "kind": "internal"}
    await console.ok("POST", "/apps", {**app, "identifier": "com.acme.field"}, 201)
    info = plist.dumps({"CFBundleVersion": "412", "CFBundleShortVersionString": "4.1"}, binary=True)
    upload = await console.ok(
        "POST",
        "/apps/field/versions",
        {"source": {"info_plist": base64.b64encode(info).decode()}, "label": "April"},
        201,
    )
    (version,) = upload["app"]["versions"]
    assert (version["file_version"], version["display_version"], version["label"]) == (
        "412",
        "4.1",
        "April",
    )
    status, refused = await console.call(
        "POST", "/apps/field/versions", {"source": {"info_plist": "not base64!"}}
    )
    assert status == 422
    assert refused["field"] == "$.source.info_plist"


# --- §A: install notifications, licences, silent or prompt -------------------------------------


async def test_notify_installed_devices_of_an_org_with_licences(console: Console) -> None:
    await console.devices(
        ios("tokyo-1", "/acme/sales/tokyo", apps={"com.example.chat": "1.0"}),
        ios("tokyo-2", "/acme/sales/tokyo", apps={"com.example.chat": "1.0"}, supervised=False),
        ios("osaka-1", "/acme/sales/osaka", apps={"com.example.chat": "1.0"}, os_version="9.3"),
        ios("osaka-2", "/acme/sales/osaka", apps={"com.example.chat": "1.0"}),
        ios("osaka-3", "/acme/sales/osaka"),
        ios("hr-1", "/acme/hr", apps={"com.example.chat": "1.0"}),
        {"id": "mac-1", "platform": "macos", "org": "/acme/sales"},
    )
    await store_app(console, licences=3)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "2.0"}, 201)

    body = {"orgs": ["/acme/sales"], "installed_only": True}
    preview = await console.ok("POST", "/apps/chat/preview", body)
    assert preview["version"] == "2.0"
    assert preview["counts"] == {
        "update": 3,
        "no_licence": 1,
        "not_installed": 1,
        "platform_mismatch": 1,
    }
    assert preview["licences"] == {"free": 3, "needed": 3}
    # The licences go to the first devices in id order: tokyo-2 is left without one.
    assert (preview["silent"], preview["prompt"]) == (2, 1)
    installs = {d["id"]: d["installs"] for d in preview["devices"] if d["outcome"] == "update"}
    # Supervised iOS 10+ installs silently; unsupervised, or iOS 9, prompts.
    assert installs == {"osaka-1": "prompt", "osaka-2": "silent", "tokyo-1": "silent"}

    sent = await console.ok("POST", "/apps/chat/install-notifications", body, 202)
    assert sent["state"] == "done"
    assert sent["counts"]["queued"] == 3
    assert sent["counts"]["no_licence"] == 1
    queued = await console.queued(sent["command_ids"])
    assert sorted(queued) == sorted(installs)
    assert sorted(console.pushed) == sorted(installs)
    command = plist.loads(await console.body(sent["command_ids"][0]))["Command"]
    assert command["RequestType"] == "InstallApplication"
    assert (command["iTunesStoreID"], command["Options"]["PurchaseMethod"]) == (1234567, 1)
    assert await console.ok("GET", "/apps/chat/licences") == {
        "total": 3,
        "assigned": 3,
        "free": 0,
    }

    # More licences: only the device left out takes one; the others keep theirs.
    await console.ok("PUT", "/apps/chat/licences", {"total": 5})
    again = await console.ok("POST", "/apps/chat/install-notifications", body, 202)
    assert again["counts"]["queued"] == 4
    assert await console.ok("GET", "/apps/chat/licences") == {
        "total": 5,
        "assigned": 4,
        "free": 1,
    }
    status, refused = await console.call("PUT", "/apps/chat/licences", {"total": 2})
    assert (status, refused["reason"]) == (422, "licences_in_use")


async def test_licence_exhaustion_sends_nothing_without_a_licence(console: Console) -> None:
    await console.devices(*(ios(f"d{i}", "/acme") for i in range(4)))
    await store_app(console, licences=None)  # VPP not set up: no licence to assign
    await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    sent = await console.ok("POST", "/apps/chat/install-notifications", {"orgs": ["/acme"]}, 202)
    assert sent["counts"] == {"queued": 0, "no_licence": 4}
    assert sent["command_ids"] == []
    assert await console.store.queue_depth() == 0
    await console.ok("PUT", "/apps/chat/licences", {"total": 2})
    sent = await console.ok("POST", "/apps/chat/install-notifications", {"orgs": ["/acme"]}, 202)
    assert sent["counts"] == {"queued": 2, "no_licence": 2}
    assert await console.store.queue_depth() == 2
    released = await console.ok("POST", "/apps/chat/licences/release", {"devices": ["d0"]})
    assert released == {"total": 2, "assigned": 1, "free": 1}


async def test_from_devices_for_several_apps(console: Console) -> None:
    await console.devices(ios("a", "/x"), ios("b", "/y"), ios("c", "/y"))
    await store_app(console, licences=10)
    other = {**STORE_APP, "id": "maps", "identifier": "com.example.maps", "vpp": False}
    await console.ok("POST", "/apps", {**other, "itunes_store_id": 99}, 201)
    for app in ("chat", "maps"):
        await console.ok("POST", f"/apps/{app}/versions", {"file_version": "1.0"}, 201)
    made = await console.ok(
        "POST", "/install-notifications", {"apps": ["chat", "maps"], "devices": ["a", "c"]}, 202
    )
    assert [n["app_id"] for n in made["notifications"]] == ["chat", "maps"]
    for notification in made["notifications"]:
        assert sorted(await console.queued(notification["command_ids"])) == ["a", "c"]
    status, unknown = await console.call(
        "POST", "/install-notifications", {"apps": ["chat"], "devices": ["a", "ghost"]}
    )
    assert (status, unknown["devices"]) == (404, ["ghost"])


async def test_scheduled_notification_fires_at_its_time(console: Console) -> None:
    await console.devices(ios("a", "/acme"))
    await store_app(console, licences=5)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    at = dt.datetime(2026, 11, 21, 4, 0, tzinfo=TOKYO)
    made = await console.ok(
        "POST",
        "/apps/chat/install-notifications",
        {"orgs": ["/acme"], "at": at.isoformat()},
        202,
    )
    assert made["state"] == "scheduled"
    assert made["command_ids"] == []
    assert dt.datetime.fromisoformat(made["due_at"]) == at
    console.clock.set(at - dt.timedelta(seconds=1))
    assert await console.catalogue.run_due() == []
    console.clock.set(at)
    (done,) = await console.catalogue.run_due()
    assert done.state == "done"
    stored = await console.ok("GET", f"/install-notifications/{made['id']}")
    assert stored["counts"] == {"queued": 1}
    assert list(await console.queued(stored["command_ids"])) == ["a"]
    status, _ = await console.call("DELETE", f"/install-notifications/{made['id']}")
    assert status == 409  # done already


async def test_cancel_a_scheduled_notification(console: Console) -> None:
    await console.devices(ios("a", "/acme"))
    await store_app(console, licences=5)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    later = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).isoformat()
    made = await console.ok(
        "POST", "/apps/chat/install-notifications", {"all_devices": True, "at": later}, 202
    )
    cancelled = await console.ok("DELETE", f"/install-notifications/{made['id']}")
    assert cancelled["state"] == "cancelled"
    console.clock.set(dt.datetime(2026, 12, 2, tzinfo=dt.UTC))
    assert await console.catalogue.run_due() == []
    assert await console.store.queue_depth() == 0


async def test_percentage_rollout_is_stable_across_runs(console: Console, tmp_path: Path) -> None:
    await console.devices(*(ios(f"phone-{i:03}", "/fleet") for i in range(300)))
    await store_app(console, licences=1000)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)

    async def chosen(target: Console, percent: float) -> set[str]:
        body = {"orgs": ["/fleet"], "percent": percent, "limit": 1000, "outcome": "install"}
        preview = await target.ok("POST", "/apps/chat/preview", body)
        return {d["id"] for d in preview["devices"]}

    thirty = await chosen(console, 30)
    assert 60 <= len(thirty) <= 120  # about 90 of 300
    # Another gateway process over the same data (a new index) picks the same devices.
    fresh = Console(console.store, console.clock)
    assert await chosen(fresh, 30) == thirty
    sixty = await chosen(fresh, 60)
    assert thirty < sixty  # a larger percentage only adds devices
    sent = await console.ok(
        "POST", "/apps/chat/install-notifications", {"orgs": ["/fleet"], "percent": 30}, 202
    )
    assert set(await console.queued(sent["command_ids"])) == thirty
    assert sent["counts"]["outside_rollout"] == 300 - len(thirty)


async def test_waves_are_paced_and_re_evaluated(console: Console) -> None:
    await console.devices(
        *(ios(f"d{i}", "/acme", apps={"com.example.chat": "1.0"}) for i in range(5))
    )
    await store_app(console, licences=10)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "2.0"}, 201)
    made = await console.ok(
        "POST",
        "/apps/chat/install-notifications",
        {"orgs": ["/acme"], "installed_only": True, "pace_per_minute": 2},
        202,
    )
    assert (made["state"], made["waves"], made["counts"]["queued"]) == ("running", 1, 2)
    assert sorted(console.pushed) == ["d0", "d1"]
    # d3 updated by itself meanwhile: the next wave leaves it out, and is the last.
    await console.devices(ios("d3", "/acme", apps={"com.example.chat": "2.0"}))
    assert await console.catalogue.run_due() == []  # the next wave is a minute away
    console.clock.advance(60)
    (second,) = await console.catalogue.run_due()
    assert (second.state, second.waves, second.counts["queued"]) == ("done", 2, 4)
    queued = await console.queued(list(second.command_ids))
    assert sorted(queued) == ["d0", "d1", "d2", "d4"]
    console.clock.advance(60)
    assert await console.catalogue.run_due() == []


async def test_waves_keep_their_pace(console: Console) -> None:
    await console.devices(*(ios(f"d{i}", "/acme") for i in range(7)))
    await store_app(console, licences=100)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "2.0"}, 201)
    made = await console.ok(
        "POST",
        "/apps/chat/install-notifications",
        {"all_devices": True, "pace_per_minute": 3},
        202,
    )
    waves = [made["counts"]["queued"]]
    while True:
        console.clock.advance(60)
        done = await console.catalogue.run_due()
        if not done:
            break
        waves.append(done[0].counts["queued"])
    assert waves == [3, 6, 7]  # running totals: three a minute


async def test_take_over_and_device_why(console: Console) -> None:
    await console.devices(ios("a", "/acme", apps={"com.example.chat": "2.0"}), ios("b", "/acme"))
    await store_app(console, licences=1)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "2.0"}, 201)
    why = await console.ok("GET", "/devices/a/apps/chat")
    assert why == {
        "device_id": "a",
        "app_id": "chat",
        "installed": "2.0",
        "licensed": False,
        "assignment": {"outcome": "not_assigned", "version": None},
        "latest": {"outcome": "already_at_version", "version": "2.0"},
    }
    sent = await console.ok(
        "POST", "/apps/chat/install-notifications", {"devices": ["b"], "take_over": True}, 202
    )
    command = plist.loads(await console.body(sent["command_ids"][0]))["Command"]
    assert command["ChangeManagementState"] == "Managed"
    why_b = await console.ok("GET", "/devices/b/apps/chat")
    assert why_b["licensed"] is True


# --- automatic updates -------------------------------------------------------------------------


async def test_auto_update_checks_daily_in_its_time_zone(console: Console) -> None:
    await console.devices(
        ios("tokyo-1", "/acme/tokyo", apps={"com.example.chat": "1.0"}),
        ios("tokyo-2", "/acme/tokyo"),  # not installed: auto-update leaves it alone
        ios("paris-1", "/acme/paris", apps={"com.example.chat": "1.0"}),
    )
    await store_app(console, licences=10)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    settings = await console.ok(
        "PUT",
        "/apps/chat/auto-update",
        {"orgs": ["/acme/tokyo"], "check_time": "04:00", "timezone": "Asia/Tokyo"},
    )
    first_check = dt.datetime(2026, 11, 21, 4, 0, tzinfo=TOKYO)
    assert dt.datetime.fromisoformat(settings["next_check"]) == first_check
    assert settings["next_check"].startswith("2026-11-20T19:00:00")  # UTC

    # 2.0 is published before the check, 3.0 a minute after it.
    before = (first_check - dt.timedelta(minutes=30)).isoformat()
    after = (first_check + dt.timedelta(minutes=1)).isoformat()
    await console.ok(
        "POST", "/apps/chat/versions", {"file_version": "2.0", "published_at": before}, 201
    )
    console.clock.set(first_check - dt.timedelta(seconds=1))
    assert await console.catalogue.run_due() == []
    console.clock.set(first_check + dt.timedelta(seconds=30))
    (run,) = await console.catalogue.run_due()
    assert (run.kind, run.resolved_version, run.counts) == (
        "auto_update",
        "2.0",
        {"queued": 1, "not_installed": 1},
    )
    assert list(await console.queued(list(run.command_ids))) == ["tokyo-1"]

    await console.ok(
        "POST", "/apps/chat/versions", {"file_version": "3.0", "published_at": after}, 201
    )
    console.clock.set(first_check + dt.timedelta(hours=23, minutes=59))
    assert await console.catalogue.run_due() == []  # the next-day rule
    settings = await console.ok("GET", "/apps/chat/auto-update")
    assert settings["last_version"] == "2.0"
    assert dt.datetime.fromisoformat(settings["next_check"]) == first_check + dt.timedelta(days=1)
    console.clock.set(first_check + dt.timedelta(days=1))
    (run,) = await console.catalogue.run_due()
    assert run.resolved_version == "3.0"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"system": True}, "system_app"),
        ({"managed": False}, "not_managed"),
        ({"licences": None}, "vpp_not_set_up"),
        ({"vpp": False, "licences": None}, "vpp_not_set_up"),
    ],
)
async def test_auto_update_refusals(console: Console, changes: Any, reason: str) -> None:
    await store_app(console, **{"licences": 5, **changes})
    status, refused = await console.call("PUT", "/apps/chat/auto-update", {"timezone": "UTC"})
    assert (status, refused["reason"]) == (422, reason)
    words = {"system_app": "system app", "not_managed": "managed", "vpp_not_set_up": "VPP"}
    assert words[reason] in refused["error"]


async def test_auto_update_bad_settings(console: Console) -> None:
    await store_app(console, licences=5)
    status, refused = await console.call("PUT", "/apps/chat/auto-update", {"timezone": "Mars/Base"})
    assert (status, refused["reason"]) == (422, "invalid_timezone")
    status, refused = await console.call("PUT", "/apps/chat/auto-update", {"check_time": "25:00"})
    assert status == 422
    assert refused["field"] == "$.check_time"


def test_scheduler_task_runs_what_falls_due() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    base = dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp()

    async def main() -> None:
        store = MemoryStore()
        console = Console(store, Clock(dt.datetime(2026, 11, 20, tzinfo=dt.UTC)))
        console.catalogue.now = lambda: base + trio.current_time()
        await console.devices(ios("a", "/acme"))
        await store_app(console, licences=5)
        await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
        async with trio.open_nursery() as nursery:
            await nursery.start(console.catalogue.run)
            at = dt.datetime.fromtimestamp(base + 3600, dt.UTC).isoformat()
            made = await console.ok(
                "POST", "/apps/chat/install-notifications", {"all_devices": True, "at": at}, 202
            )
            await trio.sleep(3599)  # virtual time: the clock jumps
            assert (await console.ok("GET", f"/install-notifications/{made['id']}"))[
                "state"
            ] == "scheduled"
            await trio.sleep(2)
            done = await console.ok("GET", f"/install-notifications/{made['id']}")
            assert done["state"] == "done"
            assert done["counts"] == {"queued": 1}
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)


# --- Windows deployments -----------------------------------------------------------------------


async def test_windows_store_install_sends_the_licence_on_first_install_only(
    console: Console,
) -> None:
    pfn = "Contoso.Notes_8wekyb3d8bbwe"
    await console.devices(
        {"id": "pc-new", "platform": "windows", "org": "/acme"},
        {
            "id": "pc-old",
            "platform": "windows",
            "org": "/acme",
            "apps": [{"identifier": pfn, "version": "1.0.0.0"}],
        },
    )
    windows = {
        "method": "store",
        "product_id": "9WZDNCRFJ3TJ",
        "skuid": "0010",
        "license_id": "LICENSE1",
        "license_blob": "QUJDRA==",
    }
    app = {"id": "notes", "name": "Notes", "platform": "windows", "kind": "store"}
    created = await console.ok("POST", "/apps", {**app, "identifier": pfn, "windows": windows}, 201)
    assert created["windows"]["license_blob"] == "(set)"
    await console.ok("POST", "/apps/notes/versions", {"file_version": "2.0.0.0"}, 201)
    sent = await console.ok("POST", "/apps/notes/install-notifications", {"orgs": ["/acme"]}, 202)
    queued = await console.queued(sent["command_ids"])
    first = (await console.body(queued["pc-new"])).decode()
    update = (await console.body(queued["pc-old"])).decode()
    assert "AddLicense" in first
    assert first.index("AddLicense") < first.index("StoreInstall")
    assert "AddLicense" not in update
    assert "StoreInstall" in update


async def test_windows_hosted_install_in_device_context(console: Console) -> None:
    pfn = "Contoso.Field_8wekyb3d8bbwe"
    await console.devices({"id": "pc", "platform": "windows", "org": "/acme"})
    app = {"id": "field", "name": "Field", "platform": "windows", "kind": "internal"}
    windows = {"method": "hosted", "context": "device"}
    await console.ok("POST", "/apps", {**app, "identifier": pfn, "windows": windows}, 201)
    manifest = '<Package><Identity Name="Contoso.Field" Version="1.2.3.4"/></Package>'
    upload = await console.ok(
        "POST",
        "/apps/field/versions",
        {"source": {"manifest": manifest}, "package_url": "https://apps.example/field.msix"},
        201,
    )
    assert upload["app"]["versions"][0]["display_version"] == "1.2.3"
    sent = await console.ok("POST", "/apps/field/install-notifications", {"devices": ["pc"]}, 202)
    body = (await console.body(sent["command_ids"][0])).decode()
    assert "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation" in body
    assert "HostedInstall" in body
    assert "https://apps.example/field.msix" in body


# --- refusals ----------------------------------------------------------------------------------


async def test_refusals_name_the_problem(console: Console) -> None:
    await console.devices(ios("a", "/acme"))
    await store_app(console, licences=5)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    cases: list[tuple[str, str, Any, int, str | None]] = [
        ("POST", "/apps/chat/install-notifications", {"orgs": ["/nowhere"]}, 422, "unknown_org"),
        (
            "POST",
            "/apps/chat/install-notifications",
            {"version": "9.9", "all_devices": True},
            422,
            "unknown_version",
        ),
        ("POST", "/apps/chat/install-notifications", {}, 422, None),
        (
            "POST",
            "/apps/chat/install-notifications",
            {"all_devices": True, "at": "2026-12-01T04:00:00"},
            422,
            None,
        ),
        ("POST", "/apps/ghost/install-notifications", {"all_devices": True}, 404, None),
        ("POST", "/apps", {**STORE_APP, "licences": 1}, 409, None),
        ("POST", "/apps", {**STORE_APP, "id": "x", "itunes_store_id": None}, 422, None),
        ("PATCH", "/apps/chat", {"rev": 1, "name": "Stale"}, 409, None),
        ("PUT", "/apps/chat/versions/1.0/assignments", {"devices": ["ghost"]}, 404, None),
        ("DELETE", "/apps/chat", None, 405, None),
    ]
    for method, path, body, status, reason in cases:
        got, answer = await console.call(method, path, body)
        assert got == status, (path, body, answer)
        assert answer["error"], answer
        if reason is not None:
            assert answer["reason"] == reason, answer
    app = await console.ok("GET", "/apps/chat")
    renamed = await console.ok("PATCH", "/apps/chat", {"rev": app["rev"], "name": "Chat 2"})
    assert (renamed["name"], renamed["rev"]) == ("Chat 2", app["rev"] + 1)


async def test_orgs_list_counts_devices_in_subtrees(console: Console) -> None:
    await console.ok("POST", "/orgs", {"path": "/acme/legal", "name": "Legal"}, 201)
    await console.devices(ios("a", "/acme/sales/tokyo"), ios("b", "/acme/sales"), ios("c", "/acme"))
    orgs = {o["path"]: o for o in (await console.ok("GET", "/orgs"))["orgs"]}
    assert orgs["/acme"]["devices_in_subtree"] == 3
    assert orgs["/acme"]["devices"] == 1
    assert orgs["/acme/sales"]["devices_in_subtree"] == 2
    assert orgs["/acme/legal"] == {
        "path": "/acme/legal",
        "name": "Legal",
        "devices": 0,
        "devices_in_subtree": 0,
    }


# --- never a 5xx -------------------------------------------------------------------------------

_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-5, 10**12)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(
        ["/acme", "/nowhere", "a", "ghost", "1.0", "2.0", "x.y", "2026-11-21T04:00:00+09:00"]
    )
)
_field = st.sampled_from(
    [
        "version", "orgs", "devices", "all_devices", "installed_only", "assignments", "at",
        "percent", "seed", "pace_per_minute", "apps", "file_version", "source", "total",
        "state", "timezone", "check_time", "enabled", "rev", "name", "limit", "outcome",
        "info_plist", "manifest", "version_code", "id", "platform", "kind", "identifier",
    ]
)  # fmt: skip
_body = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_field, inner, max_size=6),
    max_leaves=16,
)
# Bodies of the right shape, so the rules behind the decoding are reached too.
_plausible = st.fixed_dictionaries(
    {},
    optional={
        "orgs": st.lists(st.sampled_from(["/acme", "/nowhere", "/"]), max_size=2),
        "devices": st.lists(st.sampled_from(["a", "pc", "ghost"]), max_size=3),
        "all_devices": st.booleans(),
        "installed_only": st.booleans(),
        "assignments": st.booleans(),
        "version": st.sampled_from(["1.0", "2.0", "1.2.3.4", "x"]),
        "percent": st.floats(0, 100),
        "pace_per_minute": st.integers(1, 3),
        "at": st.sampled_from(["2026-11-19T04:00:00+09:00", "2026-11-21T04:00:00+09:00"]),
        "file_version": st.sampled_from(["1.0", "2.0", "3", "1.2.3.4", "x", "2.0.0"]),
        "source": st.sampled_from(
            [{"version_code": 3}, {"manifest": '<Identity Version="1.0.0.1"/>'}, {}]
        ),
        "total": st.integers(0, 5),
        "state": st.sampled_from(["active", "retired"]),
        "timezone": st.sampled_from(["UTC", "Asia/Tokyo", "Bad/Zone"]),
        "check_time": st.sampled_from(["04:00", "23:59", "29:00"]),
        "rev": st.integers(0, 3),
        "apps": st.lists(st.sampled_from(["chat", "tool", "pcapp", "ghost"]), min_size=1),
        "limit": st.integers(0, 5),
        "package_url": st.sampled_from(["https://x.example/a.msix", "ftp://bad"]),
        "retire_previous": st.booleans(),
    },
)
_route = st.sampled_from(
    [
        ("POST", "/orgs"),
        ("POST", "/apps"),
        ("PATCH", "/apps/chat"),
        ("POST", "/apps/chat/versions"),
        ("POST", "/apps/tool/versions"),
        ("POST", "/apps/pcapp/versions"),
        ("PATCH", "/apps/chat/versions/1.0"),
        ("PUT", "/apps/chat/versions/1.0/assignments"),
        ("PUT", "/apps/chat/licences"),
        ("POST", "/apps/chat/licences/release"),
        ("PUT", "/apps/chat/auto-update"),
        ("POST", "/apps/chat/install-notifications"),
        ("POST", "/apps/pcapp/install-notifications"),
        ("POST", "/apps/tool/preview"),
        ("POST", "/apps/chat/preview"),
        ("POST", "/install-notifications"),
    ]
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route=_route, body=_body | _plausible)
async def test_arbitrary_catalogue_requests_never_5xx(route: tuple[str, str], body: Any) -> None:
    console = Console(MemoryStore(), Clock(dt.datetime(2026, 11, 20, tzinfo=dt.UTC)))
    await console.devices(
        ios("a", "/acme", apps={"com.example.chat": "1.0"}),
        {"id": "pc", "platform": "windows", "org": "/acme"},
    )
    await store_app(console, licences=3)
    tool = {"id": "tool", "name": "T", "platform": "android", "kind": "internal"}
    await console.ok("POST", "/apps", {**tool, "identifier": "com.acme.tool"}, 201)
    pcapp = {"id": "pcapp", "name": "P", "platform": "windows", "kind": "internal"}
    windows = {"method": "hosted"}
    await console.ok("POST", "/apps", {**pcapp, "identifier": "A.B_123", "windows": windows}, 201)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    method, path = route
    status, answer = await console.call(method, path, body)
    event(f"{method} {path} {status}")
    assert status < 500, answer
    assert isinstance(answer, dict)
    if status >= 400:
        assert answer["error"]


# --- found while documenting -------------------------------------------------------------------


def test_later_waves_run_on_time_under_the_scheduler() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    base = dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp()

    async def main() -> None:
        console = Console(MemoryStore(), Clock(dt.datetime(2026, 11, 20, tzinfo=dt.UTC)))
        console.catalogue.now = lambda: base + trio.current_time()
        await console.devices(ios("a", "/acme"), ios("b", "/acme"))
        await store_app(console, licences=5)
        await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
        async with trio.open_nursery() as nursery:
            await nursery.start(console.catalogue.run)
            made = await console.ok(
                "POST",
                "/apps/chat/install-notifications",
                {"all_devices": True, "pace_per_minute": 1},
                202,
            )
            assert made["state"] == "running"
            await trio.sleep(61)  # virtual time
            done = await console.ok("GET", f"/install-notifications/{made['id']}")
            assert (done["state"], done["waves"]) == ("done", 2)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)


async def test_auto_update_and_store_apps_never_downgrade(console: Console) -> None:
    await console.devices(ios("ahead", "/acme", apps={"com.example.chat": "3.0"}))
    await store_app(console, licences=5)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "2.3.0"}, 201)
    preview = await console.ok("POST", "/apps/chat/preview", {"all_devices": True})
    assert preview["counts"] == {"downgrade_not_allowed": 1}
    await console.ok("PUT", "/apps/chat/auto-update", {"timezone": "Asia/Tokyo"})
    console.clock.advance(2 * 86400)
    (run,) = await console.catalogue.run_due()
    assert run.counts == {"queued": 0, "downgrade_not_allowed": 1}
    assert await console.store.licence_holders("chat") == []


async def test_checked_before_anything_is_queued(console: Console) -> None:
    await console.devices(ios("a", "/acme"), {"id": "p", "platform": "android", "org": "/acme"})
    await store_app(console, licences=5)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    tool = {"id": "tool", "name": "T", "platform": "android", "kind": "internal"}
    await console.ok("POST", "/apps", {**tool, "identifier": "com.acme.tool"}, 201)
    await console.ok("POST", "/apps/tool/versions", {"file_version": "3"}, 201)
    status, refused = await console.call(
        "POST", "/install-notifications", {"apps": ["chat", "tool"], "devices": ["a", "p"]}
    )
    assert (status, refused["reason"]) == (422, "no_command_channel")
    assert await console.store.queue_depth() == 0
    assert await console.store.list_notifications() == []
    # An in-house version without its manifest URL cannot become a command: refused now.
    field = {"id": "field", "name": "F", "platform": "ios", "kind": "internal"}
    await console.ok("POST", "/apps", {**field, "identifier": "com.acme.field"}, 201)
    await console.ok("POST", "/apps/field/versions", {"file_version": "9.0"}, 201)
    later = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).isoformat()
    status, refused = await console.call(
        "POST", "/apps/field/install-notifications", {"all_devices": True, "at": later}
    )
    assert (status, refused["reason"], refused["field"]) == (
        422,
        "incomplete_app",
        "$.manifest_url",
    )


async def test_retired_is_reported_for_the_apps_platform_only(console: Console) -> None:
    await console.devices(ios("phone", "/acme"), {"id": "mac", "platform": "macos", "org": "/acme"})
    app = {"id": "desk", "name": "D", "platform": "macos", "kind": "internal"}
    await console.ok("POST", "/apps", {**app, "identifier": "com.acme.desk"}, 201)
    await console.ok("POST", "/apps/desk/versions", {"file_version": "1.0", "orgs": ["/acme"]}, 201)
    await console.ok("PATCH", "/apps/desk/versions/1.0", {"state": "retired"})
    preview = await console.ok("POST", "/apps/desk/preview", {"assignments": True})
    assert preview["counts"] == {"retired": 1}
    assert [d["id"] for d in preview["devices"]] == ["mac"]


async def test_cancelling_twice_is_a_conflict(console: Console) -> None:
    await console.devices(ios("a", "/acme"))
    await store_app(console, licences=5)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    later = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).isoformat()
    made = await console.ok(
        "POST", "/apps/chat/install-notifications", {"all_devices": True, "at": later}, 202
    )
    await console.ok("DELETE", f"/install-notifications/{made['id']}")
    status, _ = await console.call("DELETE", f"/install-notifications/{made['id']}")
    assert status == 409
    status, unknown = await console.call("POST", "/apps/chat/preview", {"devices": ["a", "ghost"]})
    assert (status, unknown["field"], unknown["devices"]) == (404, "$.devices", ["ghost"])


async def test_a_device_registered_elsewhere_is_found_by_name(console: Console) -> None:
    await console.devices(ios("a", "/acme"))
    await store_app(console, licences=5)
    await console.ok("POST", "/apps/chat/versions", {"file_version": "1.0"}, 201)
    await console.ok("POST", "/apps/chat/preview", {"all_devices": True})  # index built
    # Another gateway process registers a device: this one was not told.
    other = Console(console.store, console.clock)
    await other.devices(ios("b", "/acme/new-org"))
    preview = await console.ok("POST", "/apps/chat/preview", {"devices": ["b"]})
    assert [d["id"] for d in preview["devices"]] == ["b"]
    preview = await console.ok("POST", "/apps/chat/preview", {"orgs": ["/acme/new-org"]})
    assert preview["counts"] == {"install": 1}
