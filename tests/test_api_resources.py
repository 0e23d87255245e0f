"""The admin API's resources of issue 17, through real sockets: the in-process server on a free
port, on every storage backend (tests/stores.py BACKENDS).

Devices' answers are written through the store (``take`` / ``record_result``), as the device
services write them; the protocol exchanges themselves are the device tests' business."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
import trio

from mdmgate import plist
from mdmgate.apple import ddm
from mdmgate.server.admin import AdminApi
from mdmgate.server.app import build_handler
from mdmgate.server.http import Limits, Server, listener_port, open_listeners
from mdmgate.server.metrics import Metrics
from mdmgate.server.routes import Operation
from mdmgate.server.types import Request, Response
from mdmgate.storage import DeliveryState, Store
from tests.stores import BACKENDS, open_backend

TOKEN = "bootstrap-secret"
READ_TOKEN = "reader-secret"
FULL_TOKEN = "writer-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}

GET_SWV = (
    "<Get><CmdID>1</CmdID><Item><Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>"
)


@dataclass
class Gateway:
    store: Store
    admin: AdminApi
    client: httpx.AsyncClient
    #: Devices the admin API asked to be woken (Apple commands queued).
    woken: list[list[str]]

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        r = await self.client.request(method, path, json=body)
        assert r.status_code == status, r.text
        return r.json()

    async def refused(
        self, method: str, path: str, body: Any = None, status: int = 422
    ) -> dict[str, Any]:
        r = await self.client.request(method, path, json=body)
        assert r.status_code == status, r.text
        refusal: dict[str, Any] = r.json()
        return refusal


async def named_tokens(bearer: str) -> str | None:
    """A token store's answer, as the named-token store will give it (asynchronously)."""
    await trio.lowlevel.checkpoint()
    return {READ_TOKEN: "read", FULL_TOKEN: "full"}.get(bearer)


@asynccontextmanager
async def gateway(backend: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    store = await open_backend(backend, tmp_path)
    woken: list[list[str]] = []
    admin = AdminApi(
        store, TOKEN, token_scope=named_tokens, on_enqueued=lambda ids: woken.append(list(ids))
    )
    metrics = Metrics()
    listeners = await open_listeners("127.0.0.1", 0)
    server = Server(build_handler(store, admin, metrics), Limits(), metrics=metrics)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, listeners)
            url = f"http://127.0.0.1:{listener_port(listeners[0])}"
            async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as client:
                yield Gateway(store, admin, client, woken)
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


@pytest.fixture(params=BACKENDS)
async def gw(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with gateway(request.param, tmp_path) as opened:
        yield opened


def ids(page: dict[str, Any]) -> list[str]:
    return [d["id"] for d in page["devices"]]


FLEET: list[dict[str, Any]] = [
    {"id": "a-mac", "platform": "macos", "org": "/acme", "os_version": "15.1"},
    {
        "id": "b-iphone",
        "platform": "ios",
        "org": "/acme/sales",
        "apps": [{"identifier": "com.acme.chat", "version": "2.0"}],
    },
    {
        "id": "c-iphone",
        "platform": "ios",
        "org": "/acme/sales/tokyo",
        "apps": [{"identifier": "com.acme.chat", "version": "1.0"}],
    },
    {"id": "d-win", "platform": "windows", "org": "/acmex"},
    {"id": "e-win", "platform": "windows", "org": "/"},
    {"id": "f-pixel", "platform": "android", "org": "/acme"},
]


async def register_fleet(gw: Gateway) -> None:
    assert await gw.ok("POST", "/api/v1/devices", FLEET) == {"written": len(FLEET)}
    # What the device services record: when each was last seen, and what it reported.
    for device_id, seen in (("a-mac", 1000), ("b-iphone", 2000.5), ("d-win", 3000)):
        assert await gw.store.merge_facts(device_id, {"last_seen": seen})
    assert await gw.store.merge_facts("c-iphone", {"model": "iPhone15,2", "battery": 87})
    assert await gw.store.merge_facts("d-win", {"model": "Surface", "managed": True})


# --- GET /api/v1/devices ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["a-mac", "b-iphone", "c-iphone", "d-win", "e-win", "f-pixel"]),
        ("platform=ios", ["b-iphone", "c-iphone"]),
        ("platform=ios&platform=windows", ["b-iphone", "c-iphone", "d-win", "e-win"]),
        ("org=/acme", ["a-mac", "b-iphone", "c-iphone", "f-pixel"]),
        ("org=/acme/sales", ["b-iphone", "c-iphone"]),
        ("org=/", ["a-mac", "b-iphone", "c-iphone", "d-win", "e-win", "f-pixel"]),
        ("enrolled=false", []),
        ("enrolled=true&platform=android", ["f-pixel"]),
        ("last_seen_after=1000", ["b-iphone", "d-win"]),
        ("last_seen_before=3000", ["a-mac", "b-iphone"]),
        ("last_seen_after=999.5&last_seen_before=2000.5", ["a-mac"]),
        ("app=com.acme.chat", ["b-iphone", "c-iphone"]),
        ("app=com.acme.chat&app_version=1.0", ["c-iphone"]),
        ("app=com.acme.mail", []),
        ("fact.model=Surface", ["d-win"]),
        ("fact.battery=87", ["c-iphone"]),
        ("fact.managed=true", ["d-win"]),
        ("fact.model=Surface&platform=ios", []),
        ("fact.nothing=x", []),
        ("org=/acme&platform=ios&app=com.acme.chat&app_version=2.0", ["b-iphone"]),
    ],
)
async def test_devices_are_listed_with_filters(
    gw: Gateway, query: str, expected: list[str]
) -> None:
    await register_fleet(gw)
    page = await gw.ok("GET", f"/api/v1/devices?{query}")
    assert ids(page) == expected
    assert page["next"] is None


async def test_listed_devices_show_what_a_single_read_shows(gw: Gateway) -> None:
    await register_fleet(gw)
    page = await gw.ok("GET", "/api/v1/devices?fact.model=iPhone15%2C2")
    assert page["devices"] == [await gw.ok("GET", "/api/v1/devices/c-iphone")]
    assert page["devices"][0]["facts"] == {"model": "iPhone15,2", "battery": 87}


async def test_devices_are_paged_with_a_cursor(gw: Gateway) -> None:
    await register_fleet(gw)
    seen: list[str] = []
    after = ""
    for _ in range(10):
        page = await gw.ok("GET", f"/api/v1/devices?limit=4&after={after}")
        seen += ids(page)
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == [d["id"] for d in FLEET]
    first = await gw.ok("GET", "/api/v1/devices?limit=2")
    assert (ids(first), first["next"]) == (["a-mac", "b-iphone"], "b-iphone")
    last = await gw.ok("GET", "/api/v1/devices?limit=2&after=d-win")
    assert (ids(last), last["next"]) == (["e-win", "f-pixel"], None)
    # Filters and the cursor together: the next page starts after the last one shown.
    ios = await gw.ok("GET", "/api/v1/devices?platform=ios&limit=1")
    assert (ids(ios), ios["next"]) == (["b-iphone"], "b-iphone")
    rest = await gw.ok("GET", "/api/v1/devices?platform=ios&limit=1&after=b-iphone")
    assert (ids(rest), rest["next"]) == (["c-iphone"], None)


async def test_a_selective_filter_answers_short_pages_within_the_scan_budget(gw: Gateway) -> None:
    await register_fleet(gw)
    gw.admin.devices.scan_budget = 2
    pages = []
    after = ""
    for _ in range(10):
        page = await gw.ok("GET", f"/api/v1/devices?platform=android&after={after}")
        pages.append((ids(page), page["next"], page["scanned"]))
        if page["next"] is None:
            break
        after = page["next"]
    # Two devices read per call: short (empty) pages with a cursor, until the fleet ends.
    assert pages == [
        ([], "b-iphone", 2),
        ([], "d-win", 2),
        (["f-pixel"], None, 2),
    ]


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ("colour=red", "colour", "unknown query parameter"),
        ("limit=0", "limit", "1 to 1000"),
        ("limit=1001", "limit", "1 to 1000"),
        ("limit=ten", "limit", "1 to 1000"),
        ("limit=99999999999999999999", "limit", "1 to 1000"),
        ("platform=nokia", "platform", "nokia"),
        ("org=acme", "org", "org path"),
        ("org=/a&org=/b", "org", "twice"),
        ("enrolled=yes", "enrolled", "true or false"),
        ("last_seen_after=yesterday", "last_seen_after", "Unix seconds"),
        ("last_seen_before=nan", "last_seen_before", "finite"),
        ("app_version=1.0", "app", "app_version needs app"),
        ("fact.=x", "fact.", "fact name"),
    ],
)
async def test_bad_list_queries_are_422_naming_the_parameter(
    gw: Gateway, query: str, field: str, words: str
) -> None:
    refusal = await gw.refused("GET", f"/api/v1/devices?{query}")
    assert refusal["field"] == field
    assert words in refusal["error"]


async def test_a_query_string_that_is_not_utf8_is_400(gw: Gateway) -> None:
    refusal = await gw.refused("GET", "/api/v1/devices?org=%ff", status=400)
    assert "UTF-8" in refusal["error"]


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/v1/devices/%00", 404), ("/api/v1/apps/a%00", 404), ("/api/v1/commands?after=%00", 422)],
)
async def test_u0000_in_a_path_or_query_names_nothing(gw: Gateway, path: str, status: int) -> None:
    # PostgreSQL refused the parameter itself: each was a 500 there.
    refusal = await gw.refused("GET", path, status=status)
    assert "U+0000" in refusal["error"]


@pytest.mark.parametrize("org", ["/x\xa0/y", "/x /y", "/nl\n", "/ a"])
async def test_an_org_name_with_a_space_at_either_end_is_422(gw: Gateway, org: str) -> None:
    # The fleet index strips paths: "/x\xa0" was stored but never found (404), and with a
    # name below it every list of orgs was a 500 from then on.
    assert (await gw.refused("POST", "/api/v1/orgs", {"path": org}))["field"] == "$.path"
    devices = [{"id": "n", "platform": "ios", "org": org}]
    assert (await gw.refused("POST", "/api/v1/devices", devices))["field"] == "$[0].org"
    assert (await gw.refused("GET", f"/api/v1/devices?org={quote(org)}"))["field"] == "org"
    assert await gw.ok("GET", "/api/v1/orgs") == {
        "orgs": [{"path": "/", "name": None, "devices": 0, "devices_in_subtree": 0}]
    }


# --- POST /api/v1/devices: unknown and required fields ---------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ([{"id": "n", "platform": "ios", "org": "/", "supervized": True}], "$[0].supervized", ""),
        ([{"id": "n", "platform": "ios", "org": "/", "os_versoin": "17"}], "$[0].os_versoin", ""),
        (
            [{"id": "n", "platform": "ios", "org": "/", "apps": [{"identifier": "x", "ver": 1}]}],
            "$[0].apps[0].ver",
            "unknown field",
        ),
        (
            [{"id": "a-mac", "platform": "macos"}, {"id": "new", "platform": "ios"}],
            "$[1].org",
            "needs an org",
        ),
    ],
)
async def test_unknown_fields_and_a_new_device_without_org_are_422(
    gw: Gateway, body: Any, field: str, words: str
) -> None:
    await register_fleet(gw)
    refusal = await gw.refused("POST", "/api/v1/devices", body)
    assert refusal["field"] == field
    assert words in refusal["error"]
    # Nothing of a refused call is written.
    assert (await gw.client.get("/api/v1/devices/new")).status_code == 404
    assert (await gw.client.get("/api/v1/devices/n")).status_code == 404


@pytest.mark.parametrize(
    ("device", "field"),
    [
        # The inventory's event refused it after the device was checked: a 500.
        ({"apps": [{"identifier": "com.acme.chat"}, {"identifier": "a\x00b"}]}, "$[0].apps[1]"),
        ({"id": "n\x00"}, "$[0].id"),
        ({"os_version": "17\x00"}, "$[0].os_version"),
    ],
)
async def test_a_string_holding_u0000_is_422_on_every_store(
    gw: Gateway, device: dict[str, Any], field: str
) -> None:
    body = [{"id": "n", "platform": "ios", "org": "/"} | device]
    refusal = await gw.refused("POST", "/api/v1/devices", body)
    assert refusal["field"].startswith(field), refusal
    assert "U+0000" in refusal["error"]
    assert await gw.ok("GET", "/api/v1/devices") == {"devices": [], "next": None, "scanned": 0}
    # An escaped backslash before "u0000" is text like any other.
    assert await gw.ok(
        "POST", "/api/v1/devices", [{"id": "n\\u0000", "platform": "ios", "org": "/"}]
    )


async def test_an_update_may_leave_the_org_out(gw: Gateway) -> None:
    await register_fleet(gw)
    body = [{"id": "b-iphone", "platform": "ios", "os_version": "18.0", "supervised": True}]
    assert await gw.ok("POST", "/api/v1/devices", body) == {"written": 1}
    device = await gw.ok("GET", "/api/v1/devices/b-iphone")
    assert (device["org"], device["os_version"], device["supervised"]) == (
        "/acme/sales",
        "18.0",
        True,
    )
    assert [a["identifier"] for a in device["apps"]] == ["com.acme.chat"]


# --- DELETE /api/v1/devices/{id} ---------------------------------------------------------------


async def test_retiring_a_device_ends_its_queue_and_keeps_its_record(gw: Gateway) -> None:
    await register_fleet(gw)
    accepted = await gw.ok("POST", "/api/v1/devices/d-win/commands", {"raw": GET_SWV}, 202)
    retired = await gw.ok("DELETE", "/api/v1/devices/d-win")
    assert (retired["id"], retired["ended"], retired["revoked"]) == ("d-win", 1, [])
    assert retired["retired_at"].endswith("Z")
    # Kept, marked unenrolled, and found as such.
    device = await gw.ok("GET", "/api/v1/devices/d-win")
    assert device["facts"]["unenrolled"]["reason"] == "retired by an administrator"
    assert ids(await gw.ok("GET", "/api/v1/devices?enrolled=false")) == ["d-win"]
    assert "d-win" not in ids(await gw.ok("GET", "/api/v1/devices?enrolled=true"))
    shown = await gw.ok("GET", f"/api/v1/commands/{accepted['command_id']}")
    assert [(d["state"], d["status"]) for d in shown["deliveries"]] == [("error", "retired")]
    assert (await gw.refused("DELETE", "/api/v1/devices/nobody", status=404))["error"]


# --- GET /api/v1/devices/{id}/deliveries ---------------------------------------------------------


async def test_a_device_lists_its_deliveries_with_states_and_decoded_results(gw: Gateway) -> None:
    await register_fleet(gw)
    info = {"apple": {"request_type": "DeviceInformation", "payload": {"Queries": ["OSVersion"]}}}
    first = (await gw.ok("POST", "/api/v1/devices/a-mac/commands", info, 202))["command_id"]
    second = (await gw.ok("POST", "/api/v1/devices/a-mac/commands", info, 202))["command_id"]
    assert gw.woken == [["a-mac"], ["a-mac"]]
    (taken,) = await gw.store.take("a-mac", "s1", 1)
    assert taken.command_id == first
    report = plist.dumps(
        {
            "CommandUUID": first,
            "Status": "Acknowledged",
            "UDID": "a-mac",
            "QueryResponses": {"OSVersion": "15.1", "Blob": b"\x00\x01"},
        }
    )
    assert await gw.store.record_result(
        "a-mac", first, DeliveryState.ACKNOWLEDGED, "Acknowledged", report
    )
    out = await gw.ok("GET", "/api/v1/devices/a-mac/deliveries")
    assert out["device_id"] == "a-mac"
    done, waiting = out["deliveries"]
    assert (done["command_id"], done["kind"], done["state"], done["status"], done["offers"]) == (
        first,
        "apple",
        "acknowledged",
        "Acknowledged",
        1,
    )
    assert done["result_json"]["QueryResponses"] == {"OSVersion": "15.1", "Blob": "AAE="}
    assert base64.b64decode(done["result_base64"]) == report
    assert (done["result"], done["result_encoding"]) == (report.decode(), "text")
    assert (waiting["command_id"], waiting["state"], waiting["result_json"]) == (
        second,
        "queued",
        None,
    )
    only = await gw.ok("GET", "/api/v1/devices/a-mac/deliveries?state=queued&state=sent")
    assert [d["command_id"] for d in only["deliveries"]] == [second]
    refusal = await gw.refused("GET", "/api/v1/devices/a-mac/deliveries?state=lost")
    assert (refusal["field"], "lost" in refusal["error"]) == ("state", True)
    await gw.refused("GET", "/api/v1/devices/nobody/deliveries", status=404)
    assert (await gw.ok("GET", "/api/v1/devices/e-win/deliveries"))["deliveries"] == []


async def test_a_windows_result_is_shown_as_the_json_it_is_stored_as(gw: Gateway) -> None:
    await register_fleet(gw)
    command_id = (await gw.ok("POST", "/api/v1/devices/d-win/commands", {"raw": GET_SWV}, 202))[
        "command_id"
    ]
    assert gw.woken == []  # Windows devices come by themselves
    await gw.store.take("d-win", "s1", 10)
    stored = b'[{"source":"./DevDetail/SwV","format":"chr","type":null,"data":"10.0.22631"}]'
    await gw.store.record_result("d-win", command_id, DeliveryState.ACKNOWLEDGED, "200", stored)
    (delivery,) = (await gw.ok("GET", "/api/v1/devices/d-win/deliveries"))["deliveries"]
    assert delivery["result_json"] == [
        {"source": "./DevDetail/SwV", "format": "chr", "type": None, "data": "10.0.22631"}
    ]


# --- GET /api/v1/commands/{id}: the body it sends ------------------------------------------------


async def test_a_command_shows_the_body_it_sends(gw: Gateway) -> None:
    await register_fleet(gw)
    apple = {
        "devices": ["b-iphone", "c-iphone"],
        "apple": {"request_type": "DeviceInformation", "payload": {"Queries": ["OSVersion"]}},
    }
    accepted = await gw.ok("POST", "/api/v1/commands", apple, 202)
    shown = await gw.ok("GET", f"/api/v1/commands/{accepted['command_id']}")
    assert shown["body"] == {
        "CommandUUID": accepted["command_id"],
        "Command": {"RequestType": "DeviceInformation", "Queries": ["OSVersion"]},
    }
    assert shown["body_encoding"] == "text"
    assert plist.loads(shown["body_text"].encode()) == shown["body"]
    assert [d["device_id"] for d in shown["deliveries"]] == ["b-iphone", "c-iphone"]
    windows = {"syncml": {"Get": {"Item": [{"Target": {"LocURI": "./DevDetail/SwV"}}]}}}
    accepted = await gw.ok("POST", "/api/v1/devices/e-win/commands", windows, 202)
    shown = await gw.ok("GET", f"/api/v1/commands/{accepted['command_id']}")
    assert shown["body"] == {
        "Get": {"CmdID": "1", "Item": [{"Target": {"LocURI": "./DevDetail/SwV"}}]}
    }
    assert shown["body_text"].startswith("<Get>")
    # An app install is sent as two commands, the Add of its node and the Exec below it.
    install = {
        "windows_app": {
            "action": "store_install",
            "package_family": "Contoso.Tasks_8wekyb3d8bbwe",
            "product_id": "9WZDNCRFJ3TJ",
            "skuid": "0010",
        }
    }
    accepted = await gw.ok("POST", "/api/v1/devices/e-win/commands", install, 202)
    shown = await gw.ok("GET", f"/api/v1/commands/{accepted['command_id']}")
    assert [next(iter(part)) for part in shown["body"]] == ["Add", "Exec"]
    listed = await gw.ok("GET", "/api/v1/commands?device_id=e-win")
    assert listed["commands"][-1]["name"] == "Add+Exec"


# --- GET /api/v1/commands ------------------------------------------------------------------------


async def test_commands_are_listed_with_filters_and_pages(gw: Gateway) -> None:
    await register_fleet(gw)
    info = {"apple": {"request_type": "DeviceInformation", "payload": {"Queries": ["OSVersion"]}}}
    queued = [
        (await gw.ok("POST", "/api/v1/devices/a-mac/commands", info, 202))["command_id"],
        (
            await gw.ok(
                "POST", "/api/v1/commands", {"devices": ["d-win", "e-win"], "raw": GET_SWV}, 202
            )
        )["command_id"],
        (await gw.ok("POST", "/api/v1/devices/b-iphone/commands", info, 202))["command_id"],
    ]
    await gw.store.take("d-win", "s1", 10)
    everything = await gw.ok("GET", "/api/v1/commands")
    assert [c["command_id"] for c in everything["commands"]] == queued
    assert everything["next"] is None
    windows = everything["commands"][1]
    assert (windows["kind"], windows["name"], windows["counts"]) == (
        "syncml",
        "Get",
        {"sent": 1, "queued": 1},
    )
    assert everything["commands"][0]["name"] == "DeviceInformation"
    assert everything["commands"][0]["created_at"].endswith("Z")
    apple = await gw.ok("GET", "/api/v1/commands?kind=apple")
    assert [c["command_id"] for c in apple["commands"]] == [queued[0], queued[2]]
    mine = await gw.ok("GET", "/api/v1/commands?device_id=e-win")
    assert [c["command_id"] for c in mine["commands"]] == [queued[1]]
    first = await gw.ok("GET", "/api/v1/commands?limit=2")
    assert ([c["command_id"] for c in first["commands"]], first["next"]) == (queued[:2], queued[1])
    rest = await gw.ok("GET", f"/api/v1/commands?limit=2&after={first['next']}")
    assert ([c["command_id"] for c in rest["commands"]], rest["next"]) == ([queued[2]], None)
    assert (await gw.refused("GET", "/api/v1/commands?kind=fax"))["field"] == "kind"
    assert (await gw.refused("GET", "/api/v1/commands?limit=0"))["field"] == "limit"
    assert (await gw.refused("GET", "/api/v1/commands?device=x"))["field"] == "device"


# --- POST /api/v1/commands/{id}/cancel ---------------------------------------------------------


async def test_cancelling_ends_only_what_devices_have_not_been_handed(gw: Gateway) -> None:
    await register_fleet(gw)
    body = {"devices": ["d-win", "e-win"], "raw": GET_SWV}
    command_id = (await gw.ok("POST", "/api/v1/commands", body, 202))["command_id"]
    await gw.store.take("d-win", "s1", 10)  # d-win has it in hand
    r = await gw.client.post(f"/api/v1/commands/{command_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json() == {"command_id": command_id, "cancelled": ["e-win"], "left": {"d-win": "sent"}}
    shown = await gw.ok("GET", f"/api/v1/commands/{command_id}")
    states = {d["device_id"]: (d["state"], d["status"]) for d in shown["deliveries"]}
    assert states == {"d-win": ("sent", None), "e-win": ("error", "cancelled by an administrator")}
    assert await gw.store.take("e-win", "s2", 10) == []
    # Again: nothing left to cancel.
    again = await gw.ok("POST", f"/api/v1/commands/{command_id}/cancel", {})
    assert again["cancelled"] == []
    assert again["left"] == {"d-win": "sent", "e-win": "error"}


async def test_cancelling_for_some_devices(gw: Gateway) -> None:
    await register_fleet(gw)
    body = {"devices": ["d-win", "e-win"], "raw": GET_SWV}
    command_id = (await gw.ok("POST", "/api/v1/commands", body, 202))["command_id"]
    done = await gw.ok("POST", f"/api/v1/commands/{command_id}/cancel", {"devices": ["e-win"]})
    assert (done["cancelled"], done["left"]) == (["e-win"], {})
    assert [d.command_id for d in await gw.store.take("d-win", "s1", 10)] == [command_id]
    refusal = await gw.refused(
        "POST", f"/api/v1/commands/{command_id}/cancel", {"devices": ["a-mac", "x"]}, 404
    )
    assert (refusal["field"], refusal["devices"]) == ("$.devices", ["a-mac", "x"])
    refusal = await gw.refused("POST", f"/api/v1/commands/{command_id}/cancel", {"device": []})
    assert refusal["field"] == "$.device"
    await gw.refused("POST", "/api/v1/commands/nope/cancel", status=404)


# --- POST /api/v1/declarations in Apple's form ----------------------------------------------------


SETTINGS = {"Deferrals": {"CombinedPeriodInDays": 30}, "Notifications": True}


async def test_apple_native_declarations_are_accepted(gw: Gateway) -> None:
    await register_fleet(gw)
    native = {
        "Type": ddm.SETTINGS_TYPE,
        "Identifier": "com.acme.defer-30",
        "Payload": SETTINGS,
        "ServerToken": "kmfddm-token-1",
        "targets": {"orgs": ["/acme"], "devices": ["a-mac"]},
    }
    written = await gw.ok("POST", "/api/v1/declarations", native, 201)
    token = ddm.server_token(ddm.SETTINGS_TYPE, "com.acme.defer-30", SETTINGS)
    assert written == {
        "identifier": "com.acme.defer-30",
        "type": ddm.SETTINGS_TYPE,
        "server_token": token,
        "devices": ["a-mac"],
        "orgs": ["/acme"],
    }
    # The same declaration in the gateway's form is the same content: same token, replaced.
    lower = {
        "type": ddm.SETTINGS_TYPE,
        "identifier": "com.acme.defer-30",
        "payload": SETTINGS,
        "targets": {"orgs": ["/acme"]},
    }
    again = await gw.ok("POST", "/api/v1/declarations", lower, 200)
    assert again["server_token"] == token
    effective = await gw.ok("GET", "/api/v1/devices/b-iphone/declarations/effective")
    assert effective["declarations"] == ["com.acme.defer-30"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            {"Payload": {"Deferrals": {"CombinedPeriodInDays": "thirty"}}},
            "$.Payload.Deferrals.CombinedPeriodInDays",
            "CombinedPeriodInDays",
        ),
        ({"Type": "com.apple.configuration.nothing"}, "$.Type", "unknown declaration type"),
        ({"Identifier": ""}, "$.Identifier", "length"),
        ({"type": ddm.SETTINGS_TYPE}, "$.type", "unknown field"),
        ({"Targets": {}}, "$.Targets", "unknown field"),
    ],
)
async def test_apple_native_refusals_name_apples_keys(
    gw: Gateway, change: dict[str, Any], field: str, words: str
) -> None:
    native = {
        "Type": ddm.SETTINGS_TYPE,
        "Identifier": "com.acme.x",
        "Payload": SETTINGS,
        "targets": {"orgs": ["/"]},
        **change,
    }
    refusal = await gw.refused("POST", "/api/v1/declarations", native)
    assert refusal["field"] == field
    assert words in refusal["error"]


# --- catalogue numbers and times at their limits (found by .ci/api-conformance) ------------------


STORE_APP = {"id": "chat", "name": "Chat", "platform": "ios", "kind": "store"}
STORE_APP |= {"identifier": "com.acme.chat", "itunes_store_id": 7, "vpp": True, "licences": 5}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        # Each was taken, then broke the notifications (a plist or the fleet index could not
        # hold it) or the store (SQLite, PostgreSQL's 32-bit revisions): a 5xx.
        ("POST", "/api/v1/apps", STORE_APP | {"id": "x", "itunes_store_id": 2**63}, "itunes"),
        ("POST", "/api/v1/apps", STORE_APP | {"id": "x", "licences": 2**63}, "licences"),
        ("PATCH", "/api/v1/apps/chat", {"rev": 1, "itunes_store_id": 2**63}, "itunes"),
        ("PATCH", "/api/v1/apps/chat", {"rev": 1, "itunes_store_id": -5}, "itunes"),
        ("PATCH", "/api/v1/apps/chat", {"rev": 2**63}, "rev"),
        ("PATCH", "/api/v1/apps/chat", {"rev": 2**31 - 1}, "rev"),
        ("PATCH", "/api/v1/apps/chat", {"rev": 1, "name": ""}, "name"),
        ("PUT", "/api/v1/apps/chat/licences", {"total": 2**63}, "total"),
        (
            "POST",
            "/api/v1/apps/chat/preview",
            {"all_devices": True, "pace_per_minute": 2**63},
            "pace",
        ),
    ],
)
async def test_numbers_the_catalogue_cannot_hold_are_422(
    gw: Gateway, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    await gw.ok("POST", "/api/v1/apps", STORE_APP, 201)
    refusal = await gw.refused(method, path, body)
    assert refusal["field"].startswith(f"$.{field}"), refusal
    app = await gw.ok("GET", "/api/v1/apps/chat")
    assert (app["rev"], app["itunes_store_id"], app["licences"]["total"]) == (1, 7, 5)


@pytest.mark.parametrize(
    "moment",
    [
        "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
        "0001-01-01T00:00:00+14:00",  # year 0 in UTC
        "9999-12-31T23:59:59.999999Z",  # in range, but not as float seconds
        "1969-12-31T23:59:59Z",
    ],
)
async def test_times_outside_the_years_kept_are_422_and_nothing_is_stored(
    gw: Gateway, moment: str
) -> None:
    await gw.ok("POST", "/api/v1/devices", FLEET)
    await gw.ok("POST", "/api/v1/apps", STORE_APP, 201)
    refusal = await gw.refused(
        "POST", "/api/v1/apps/chat/versions", {"file_version": "1.0", "published_at": moment}
    )
    assert refusal["field"] == "$.published_at"
    assert "from 1970-01-01 to 9998-12-31" in refusal["error"]
    await gw.ok("POST", "/api/v1/apps/chat/versions", {"file_version": "1.0"}, 201)
    body = {"all_devices": True, "at": moment, "apps": ["chat"]}
    assert (await gw.refused("POST", "/api/v1/install-notifications", body))["field"] == "$.at"
    del body["apps"]
    for path in ("/api/v1/apps/chat/install-notifications", "/api/v1/apps/chat/preview"):
        assert (await gw.refused("POST", path, body))["field"] == "$.at"
    # Before, the notification was stored first: every later read of it was a 500 too.
    listed = await gw.ok("GET", "/api/v1/apps/chat/install-notifications")
    assert listed == {"notifications": []}
    latest = {"all_devices": True, "at": "9998-12-31T23:59:59+14:00"}
    made = await gw.ok("POST", "/api/v1/apps/chat/install-notifications", latest, 202)
    assert made["due_at"] == "9998-12-31T09:59:59Z"


# --- token scopes --------------------------------------------------------------------------------


async def test_a_read_token_reads_and_is_refused_changes_naming_the_scope(gw: Gateway) -> None:
    await register_fleet(gw)

    def as_(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    r = await gw.client.get("/api/v1/devices?platform=ios", headers=as_(READ_TOKEN))
    assert (r.status_code, ids(r.json())) == (200, ["b-iphone", "c-iphone"])
    assert (await gw.client.get("/api/v1/openapi.json", headers=as_(READ_TOKEN))).status_code == 200
    body = [{"id": "z", "platform": "ios", "org": "/"}]
    r = await gw.client.post("/api/v1/devices", json=body, headers=as_(READ_TOKEN))
    assert r.status_code == 403
    assert "scope full" in r.json()["error"]
    assert "read" in r.json()["error"]
    r = await gw.client.delete("/api/v1/devices/a-mac", headers=as_(READ_TOKEN))
    assert r.status_code == 403
    assert (await gw.client.get("/api/v1/devices/z")).status_code == 404
    r = await gw.client.post("/api/v1/devices", json=body, headers=as_(FULL_TOKEN))
    assert r.status_code == 200
    r = await gw.client.get("/api/v1/devices", headers=as_("guess"))
    assert (r.status_code, r.json()["error"]) == (401, "wrong bearer token")
    # Unknown paths are still 401 before anything else is said about them.
    assert (await gw.client.get("/api/v1/nothing", headers=as_("guess"))).status_code == 401
    assert (await gw.client.get("/api/v1/nothing", headers=as_(READ_TOKEN))).status_code == 404


async def test_the_openapi_document_describes_the_new_resources(gw: Gateway) -> None:
    document = await gw.ok("GET", "/api/v1/openapi.json")
    paths = document["paths"]
    listing = paths["/api/v1/devices"]["get"]
    assert "a page may come back short" in listing["description"]
    assert {p["name"] for p in listing["parameters"]} >= {
        "platform",
        "org",
        "enrolled",
        "last_seen_after",
        "last_seen_before",
        "app",
        "app_version",
        "after",
        "limit",
    }
    assert listing["security"] == [{"bearerAuth": ["read"]}]
    assert set(paths["/api/v1/devices/{id}"]) == {"get", "delete"}
    assert "get" in paths["/api/v1/devices/{id}/deliveries"]
    assert set(paths["/api/v1/commands"]) == {"get", "post"}
    cancel = paths["/api/v1/commands/{command_id}/cancel"]["post"]
    assert cancel["security"] == [{"bearerAuth": ["full"]}]
    assert "403" in cancel["responses"]
    schemas = document["components"]["schemas"]
    assert schemas["DeviceIn"]["additionalProperties"] is False
    assert schemas["AppIn"]["additionalProperties"] is False
    assert set(schemas["AppleDeclarationIn"]["required"]) == {
        "Type",
        "Identifier",
        "Payload",
        "targets",
    }


def test_named_token_lookups_may_be_synchronous() -> None:
    scopes: dict[str, str] = {"r": "read"}
    lookup: Callable[[str], str | None] = scopes.get

    async def main() -> None:
        api = AdminApi(await open_backend("memory", Path(".")), None, token_scope=lookup)
        read = httpx.Headers({"authorization": "Bearer r"})

        def request(method: str) -> Request:
            return Request(method, "/api/v1/devices", "", tuple(read.items()), b"[]", "1.1", "x")

        assert (await api(request("GET"))).status == 200
        assert (await api(request("POST"))).status == 403
        assert await api.authorize(request("GET"), "read") is None
        refused = await api.authorize(request("GET"), "full")
        assert refused is not None
        assert refused.status == 403

    trio.run(main)


def _objects(document: dict[str, Any], node: Any, seen: set[str]) -> list[tuple[str, Any]]:
    """Every object schema reachable from ``node``, with the component it is in."""
    if isinstance(node, list):
        return [o for item in node for o in _objects(document, item, seen)]
    if not isinstance(node, dict):
        return []
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[1]
        if name in seen:
            return []
        seen.add(name)
        schema = document["components"]["schemas"][name]
        found = [(name, schema)] if "properties" in schema else []
        return found + [o for v in schema.values() for o in _objects(document, v, seen)]
    return [o for value in node.values() for o in _objects(document, value, seen)]


async def test_every_request_body_refuses_unknown_fields(gw: Gateway) -> None:
    document = await gw.ok("GET", "/api/v1/openapi.json")
    seen: set[str] = set()
    bodies = [
        operation["requestBody"]
        for item in document["paths"].values()
        for operation in item.values()
        if "requestBody" in operation
    ]
    objects = _objects(document, bodies, seen)
    assert {"DeviceIn", "AppIn", "CommandIn", "AppleDeclarationIn", "CancelIn"} <= seen
    open_ones = [
        name for name, schema in objects if schema.get("additionalProperties") is not False
    ]
    assert open_ones == []


async def test_enrollment_operations_without_enrollment_are_503(gw: Gateway) -> None:
    refusal = await gw.refused("GET", "/api/v1/enrollment/ca", status=503)
    assert "enrollment is not set up" in refusal["error"]
    # Routed all the same: the method is still checked first.
    assert (await gw.client.delete("/api/v1/enrollment/ca")).status_code == 405


class PingOut(msgspec.Struct):
    pong: bool


async def test_other_modules_plug_operations_in(tmp_path: Path) -> None:
    async def ping(request: Request, params: Mapping[str, str]) -> Response:
        return Response(200, (("content-type", "application/json"),), b'{"pong":true}')

    extra = Operation("POST", "/api/v1/ping", ping, "Ping.", ("200", "Pong.", "PingOut"))
    store = await open_backend("memory", tmp_path)
    api = AdminApi(store, TOKEN, extra_operations=[extra], extra_types=[PingOut])
    headers = (("authorization", f"Bearer {TOKEN}"),)
    answered = await api(Request("POST", "/api/v1/ping", "", headers, b"", "1.1", "x"))
    assert (answered.status, answered.body) == (200, b'{"pong":true}')
    shown = await api(Request("GET", "/api/v1/openapi.json", "", headers, b"", "1.1", "x"))
    document = msgspec.json.decode(shown.body)
    assert document["paths"]["/api/v1/ping"]["post"]["security"] == [{"bearerAuth": ["full"]}]
    assert document["components"]["schemas"]["PingOut"]["required"] == ["pong"]
    with pytest.raises(ValueError, match="declared twice"):
        AdminApi(store, TOKEN, extra_operations=[extra, extra])
