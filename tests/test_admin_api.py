"""The admin API, called as a handler with hand-built requests (no sockets)."""

from __future__ import annotations

import base64
import json
import logging
import re
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mdmgate import plist
from mdmgate.server.admin import AdminApi, openapi_document
from mdmgate.server.types import Request, Response
from mdmgate.storage import DeliveryState, Device
from mdmgate.storage.memory import MemoryStore

TOKEN = "secret"
AUTH = ("authorization", f"Bearer {TOKEN}")
JSON = ("content-type", "application/json")

GET_SWV = (
    "<Get><CmdID>1</CmdID><Item><Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>"
)
DEVICE_INFO = """<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
  <key>Command</key>
  <dict>
    <key>RequestType</key><string>DeviceInformation</string>
    <key>Queries</key><array><string>OSVersion</string></array>
  </dict>
</dict></plist>"""


def request(
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: tuple[tuple[str, str], ...] = (AUTH, JSON),
    raw: bytes | None = None,
) -> Request:
    data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
    return Request(method, path, "", headers, data, "1.1", "127.0.0.1:5000")


def decoded(response: Response) -> Any:
    assert dict(response.headers)["content-type"] == "application/json"
    return json.loads(response.body)


async def call(api: AdminApi, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    response = await api(request(*args, **kwargs))
    return response.status, decoded(response)


@pytest.fixture
async def api() -> AdminApi:
    store = MemoryStore()
    await store.upsert_devices(
        [
            Device("win-1", "windows", "/acme"),
            Device("win-2", "windows", "/acme"),
            Device("mac-1", "macos", "/acme"),
            Device("iphone-1", "ios", "/acme"),
            Device("pixel-1", "android", "/acme"),
        ]
    )
    return AdminApi(store, TOKEN)


# --- authentication --------------------------------------------------------------------------


async def test_missing_token_is_401_with_challenge(api: AdminApi) -> None:
    response = await api(request("GET", "/api/v1/devices/win-1", headers=()))
    assert response.status == 401
    assert dict(response.headers)["www-authenticate"].startswith("Bearer")
    assert decoded(response)["field"] is None


@pytest.mark.parametrize(
    "value", ["Bearer wrong", "Bearer secret2", "Basic c2VjcmV0", "secret", "Bearer ", "Bearer é"]
)
async def test_wrong_token_is_401(api: AdminApi, value: str) -> None:
    response = await api(
        request("GET", "/api/v1/devices/win-1", headers=(("authorization", value),))
    )
    assert response.status == 401
    assert "error" in decoded(response)


async def test_right_token_any_scheme_case(api: AdminApi) -> None:
    headers = (("authorization", "bearer  secret "),)
    assert (await api(request("GET", "/api/v1/devices/win-1", headers=headers))).status == 200


async def test_openapi_document_needs_the_token(api: AdminApi) -> None:
    assert (await api(request("GET", "/api/v1/openapi.json", headers=()))).status == 401
    assert (await api(request("GET", "/api/v1/openapi.json"))).status == 200


async def test_no_token_configured_refuses_everything() -> None:
    api = AdminApi(MemoryStore(), None)
    for path in ("/api/v1/openapi.json", "/api/v1/devices/x", "/api/v1/nothing"):
        status, body = await call(api, "GET", path)
        assert status == 401
        assert "MDMGATE_API_TOKEN is not configured" in body["error"]


async def test_dev_mode_without_token_is_open(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mdmgate.server.admin"):
        api = AdminApi(MemoryStore(), None, dev=True)
    assert api.dev
    assert sum("MDMGATE_API_TOKEN" in r.getMessage() for r in caplog.records) == 1
    status, _ = await call(api, "POST", "/api/v1/devices", [], headers=(JSON,))
    assert status == 200


async def test_dev_mode_with_token_still_needs_it() -> None:
    api = AdminApi(MemoryStore(), TOKEN, dev=True)
    assert (await api(request("GET", "/api/v1/openapi.json", headers=()))).status == 401


# --- routing ---------------------------------------------------------------------------------


async def test_unknown_paths_and_methods(api: AdminApi) -> None:
    status, body = await call(api, "GET", "/api/v1/nothing")
    assert status == 404
    assert body["error"]
    assert (await call(api, "GET", "/ManagementServer/MDM.svc", headers=()))[0] == 404
    assert (await call(api, "GET", "/api/v1/devices/"))[0] == 404
    response = await api(request("PUT", "/api/v1/devices/win-1"))
    assert response.status == 405
    assert dict(response.headers)["allow"] == "GET, DELETE"


# --- body decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[{]", b"not json", b"\xff\xfe", b'[{"id": 1, ', b'"\x80"', b'[{"id": "\xc3("}]'],
)
async def test_malformed_json_is_400(api: AdminApi, raw: bytes) -> None:
    status, body = await call(api, "POST", "/api/v1/devices", raw=raw)
    assert status == 400
    assert body["field"] is None
    assert body["error"]


async def test_deep_nesting_is_400(api: AdminApi) -> None:
    deep = b'[{"id": "a", "platform": "ios", "auth": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]"
    assert (await call(api, "POST", "/api/v1/devices", raw=deep))[0] in (400, 422)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ([{"id": "d", "platform": "nokia"}], "$[0].platform", "nokia"),
        ([{"id": "d"}], "$[0].platform", "platform"),
        ([{"id": 5, "platform": "ios"}], "$[0].id", "str"),
        ([{"id": "", "platform": "ios"}], "$[0].id", "length"),
        ([{"id": "d", "platform": "ios", "org": "acme"}], "$[0].org", "org path"),
        ([{"id": "d", "platform": "ios", "org": "/acme\n"}], "$[0].org", "line"),
        (
            [{"id": "d", "platform": "ios", "apps": [{"version": "1"}]}],
            "$[0].apps[0].identifier",
            "",
        ),
        ({"id": "d", "platform": "ios"}, "$", "array"),
        ([{"id": "d", "platform": "ios"}, {"id": "d", "platform": "ios"}], "$[1].id", "twice"),
    ],
)
async def test_wrong_shapes_are_422_naming_the_field(
    api: AdminApi, body: Any, field: str, words: str
) -> None:
    status, error = await call(api, "POST", "/api/v1/devices", body)
    assert status == 422, error
    assert error["field"] == field
    assert words in error["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"raw": GET_SWV}, "$.devices"),
        ({"devices": [], "raw": GET_SWV}, "$.devices"),
        ({"devices": ["win-1"], "raw": 5}, "$.raw"),
        ({"devices": ["win-1"], "raw": GET_SWV, "extra": 1}, "$.extra"),
        ({"devices": ["win-1"]}, "$"),
        ({"devices": ["win-1"], "raw": GET_SWV, "syncml": {"Get": {}}}, "$"),
    ],
)
async def test_command_shapes_are_422(api: AdminApi, body: Any, field: str) -> None:
    status, error = await call(api, "POST", "/api/v1/commands", body)
    assert status == 422, error
    assert error["field"] == field


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/xml", "application/json; charset=latin-1"]
)
async def test_wrong_content_type_is_415(api: AdminApi, content_type: str | None) -> None:
    headers = (AUTH,) if content_type is None else (AUTH, ("content-type", content_type))
    status, _ = await call(api, "POST", "/api/v1/devices", [], headers=headers)
    assert status == 415


async def test_json_content_type_with_charset_is_accepted(api: AdminApi) -> None:
    headers = (AUTH, ("content-type", "Application/JSON; charset=UTF-8"))
    assert (await call(api, "POST", "/api/v1/devices", [], headers=headers))[0] == 200


# --- devices ---------------------------------------------------------------------------------


async def test_device_upsert_and_get_round_trip(api: AdminApi) -> None:
    devices = [
        {
            "id": "mac-9",
            "platform": "macos",
            "org": "/acme/sales/tokyo",
            "os_version": "15.1",
            "supervised": True,
            "auth": {"cert_sha256": "ab"},
            "apps": [{"identifier": "com.example.app", "version": "1.2"}],
        },
        {"id": "win-9", "platform": "windows", "org": "/"},
    ]
    assert await call(api, "POST", "/api/v1/devices", devices) == (200, {"written": 2})
    status, mac = await call(api, "GET", "/api/v1/devices/mac-9")
    assert status == 200
    assert mac == {
        "id": "mac-9",
        "platform": "macos",
        "org": "/acme/sales/tokyo",
        "os_version": "15.1",
        "supervised": True,
        "auth_configured": True,
        "apps": [
            {"identifier": "com.example.app", "version": "1.2", "name": None, "source": "import"}
        ],
        "facts": {},
    }
    status, win = await call(api, "GET", "/api/v1/devices/win-9")
    assert (win["org"], win["os_version"], win["apps"], win["auth_configured"]) == (
        "/",
        None,
        [],
        False,
    )
    assert (await call(api, "GET", "/api/v1/devices/nobody"))[0] == 404


async def test_update_keeps_omitted_fields_and_facts(api: AdminApi) -> None:
    store = api.store
    await store.upsert_devices(
        [Device("mac-2", "macos", "/a", "14.0", True, {"k": "v"}, {"model": "Mac14,2", "n": 1})]
    )
    body = [{"id": "mac-2", "platform": "macos", "os_version": None, "apps": [{"identifier": "x"}]}]
    assert (await call(api, "POST", "/api/v1/devices", body))[0] == 200
    device = await store.get_device("mac-2")
    assert device is not None
    assert (device.org, device.os_version, device.supervised, device.auth) == (
        "/a",
        None,
        True,
        {"k": "v"},
    )
    assert device.facts["model"] == "Mac14,2"
    _, out = await call(api, "GET", "/api/v1/devices/mac-2")
    assert out["facts"] == {"model": "Mac14,2", "n": 1}
    assert [a["identifier"] for a in out["apps"]] == ["x"]


async def test_device_facts_with_bytes_and_odd_apps_are_shown(api: AdminApi) -> None:
    facts = {"blob": b"\x00\x01", "apps": [{"identifier": "a", "version": 3}, "junk", {"x": 1}]}
    await api.store.upsert_devices([Device("odd", "ios", facts=facts)])
    status, out = await call(api, "GET", "/api/v1/devices/odd")
    assert status == 200
    assert out["facts"] == {"blob": "AAE="}
    assert out["apps"] == [{"identifier": "a", "version": None, "name": None, "source": None}]


async def test_device_id_in_path_is_percent_decoded(api: AdminApi) -> None:
    device = {"id": "urn:uuid:a/b c", "platform": "windows", "org": "/"}
    assert (await call(api, "POST", "/api/v1/devices", [device]))[0] == 200
    status, out = await call(api, "GET", "/api/v1/devices/urn%3Auuid%3Aa%2Fb%20c")
    assert (status, out["id"]) == (200, "urn:uuid:a/b c")


# --- commands --------------------------------------------------------------------------------


async def test_windows_command_round_trip(api: AdminApi) -> None:
    status, accepted = await call(
        api, "POST", "/api/v1/commands", {"devices": ["win-1", "win-2", "win-1"], "raw": GET_SWV}
    )
    assert status == 202
    assert accepted["kind"] == "syncml"
    assert accepted["deliveries"] == 2
    command_id = accepted["command_id"]
    assert len(command_id) == 32
    taken = await api.store.take("win-1", "s1", 10)
    assert [d.body for d in taken] == [GET_SWV.encode()]
    await api.store.record_result(
        "win-1", command_id, DeliveryState.ACKNOWLEDGED, "200", b"<Results>10.0</Results>"
    )
    await api.store.take("win-2", "s2", 10)
    await api.store.record_result("win-2", command_id, DeliveryState.ERROR, "500", b"\xff\x00")
    status, out = await call(api, "GET", f"/api/v1/commands/{command_id}")
    assert status == 200
    # The command shows the body it sends, decoded and as text (issue 17); a result that is
    # not the stored JSON shape decodes to null.
    assert out == {
        "command_id": command_id,
        "kind": "syncml",
        "deliveries": [
            {
                "device_id": "win-1",
                "state": "acknowledged",
                "status": "200",
                "result": "<Results>10.0</Results>",
                "result_encoding": "text",
                "offers": 1,
                "result_json": None,
            },
            {
                "device_id": "win-2",
                "state": "error",
                "status": "500",
                "result": base64.b64encode(b"\xff\x00").decode(),
                "result_encoding": "base64",
                "offers": 1,
                "result_json": None,
            },
        ],
        "body": {
            "Get": {
                "CmdID": "1",
                "Item": [{"Target": {"LocURI": "./DevDetail/SwV"}}],
            }
        },
        "body_text": GET_SWV,
        "body_encoding": "text",
    }


async def test_per_device_command_path(api: AdminApi) -> None:
    status, accepted = await call(api, "POST", "/api/v1/devices/win-1/commands", {"raw": GET_SWV})
    assert status == 202
    status, out = await call(api, "GET", f"/api/v1/commands/{accepted['command_id']}")
    assert [(d["device_id"], d["state"], d["result"]) for d in out["deliveries"]] == [
        ("win-1", "queued", None)
    ]
    status, error = await call(api, "POST", "/api/v1/devices/nobody/commands", {"raw": GET_SWV})
    assert (status, error["devices"]) == (404, ["nobody"])
    status, error = await call(api, "POST", "/api/v1/devices/win-1/commands", {"devices": ["x"]})
    assert (status, error["field"]) == (422, "$.devices")


async def test_typed_syncml_command(api: AdminApi) -> None:
    command = {"Get": {"Item": [{"Target": {"LocURI": "./DevDetail/SwV"}, "Data": "a<b"}]}}
    status, accepted = await call(
        api, "POST", "/api/v1/commands", {"devices": ["win-1"], "syncml": command}
    )
    assert status == 202, accepted
    (delivery,) = await api.store.take("win-1", "s", 10)
    assert delivery.body.startswith(b"<Get><CmdID>1</CmdID>")
    assert b"a&lt;b" in delivery.body
    status, error = await call(
        api, "POST", "/api/v1/commands", {"devices": ["win-1"], "syncml": {"Get": {"Item": "x"}}}
    )
    assert (status, error["field"]) == (422, "$.syncml.Get.Item")


async def test_apple_command_round_trip(api: AdminApi) -> None:
    status, accepted = await call(
        api, "POST", "/api/v1/commands", {"devices": ["mac-1", "iphone-1"], "raw": DEVICE_INFO}
    )
    assert status == 202, accepted
    assert accepted["kind"] == "apple"
    command_id = accepted["command_id"]
    (delivery,) = await api.store.take("mac-1", "s", 10)
    sent = plist.loads(delivery.body)
    assert sent["CommandUUID"] == command_id
    assert sent["Command"] == {"RequestType": "DeviceInformation", "Queries": ["OSVersion"]}
    report = plist.dumps({"Status": "Acknowledged", "CommandUUID": command_id})
    await api.store.record_result("mac-1", command_id, DeliveryState.ACKNOWLEDGED, "x", report)
    status, out = await call(api, "GET", f"/api/v1/commands/{command_id}")
    assert status == 200
    assert out["kind"] == "apple"
    states = {d["device_id"]: (d["state"], d["result"]) for d in out["deliveries"]}
    assert states == {"mac-1": ("acknowledged", report.decode()), "iphone-1": ("queued", None)}


async def test_apple_command_uuid_given_becomes_the_id(api: AdminApi) -> None:
    raw = plist.dumps({"CommandUUID": "ABC-1", "Command": {"RequestType": "DeviceInformation"}})
    body = {"devices": ["mac-1"], "raw": raw.decode()}
    status, accepted = await call(api, "POST", "/api/v1/commands", body)
    assert (status, accepted["command_id"]) == (202, "ABC-1")
    status, error = await call(api, "POST", "/api/v1/commands", body)
    assert (status, error["field"]) == (409, "$.raw")
    bad = plist.dumps({"CommandUUID": "a b", "Command": {"RequestType": "DeviceInformation"}})
    status, error = await call(
        api, "POST", "/api/v1/commands", {"devices": ["mac-1"], "raw": bad.decode()}
    )
    assert (status, error["field"]) == (422, "$.raw")
    assert "CommandUUID" in error["error"]


async def test_typed_apple_command(api: AdminApi) -> None:
    body = {
        "devices": ["mac-1", "iphone-1"],
        "apple": {"request_type": "DeviceInformation", "payload": {"Queries": ["OSVersion"]}},
    }
    status, accepted = await call(api, "POST", "/api/v1/commands", body)
    assert status == 202, accepted
    (delivery,) = await api.store.take("iphone-1", "s", 10)
    assert plist.loads(delivery.body)["CommandUUID"] == accepted["command_id"]
    bad = {
        "devices": ["mac-1"],
        "apple": {"request_type": "DeviceInformation", "payload": {"Queries": "x"}},
    }
    status, error = await call(api, "POST", "/api/v1/commands", bad)
    assert (status, error["field"]) == (422, "$.apple.payload.Queries")
    unknown = {"devices": ["mac-1"], "apple": {"request_type": "Bogus"}}
    status, error = await call(api, "POST", "/api/v1/commands", unknown)
    assert (status, error["field"]) == (422, "$.apple.request_type")
    status, error = await call(
        api, "POST", "/api/v1/commands", {"devices": ["win-1"], "apple": {"request_type": "X"}}
    )
    assert (status, error["field"]) == (422, "$.apple")


@pytest.mark.parametrize(
    "devices", [["win-1", "mac-1"], ["iphone-1", "win-2"], ["pixel-1"], ["win-1", "pixel-1"]]
)
async def test_mixed_or_channelless_platforms_are_422(api: AdminApi, devices: list[str]) -> None:
    status, error = await call(
        api, "POST", "/api/v1/commands", {"devices": devices, "raw": GET_SWV}
    )
    assert status == 422
    assert error["field"] == "$.devices"
    assert await api.store.queue_depth() == 0


async def test_unknown_devices_are_404_and_listed(api: AdminApi) -> None:
    body = {"devices": ["win-1", "ghost-1", "ghost-2"], "raw": GET_SWV}
    status, error = await call(api, "POST", "/api/v1/commands", body)
    assert status == 404
    assert error["devices"] == ["ghost-1", "ghost-2"]
    assert error["field"] == "$.devices"
    assert await api.store.queue_depth() == 0


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("<Get><Item>", "expected `</Item>`"),
        ("<Foo/>", "<Foo> is not allowed"),
        ("hello", "unexpected text"),
        ("<Get/></SyncBody></SyncML><x/>", "content after the root"),
        ("<Get/><Get/>", "exactly one SyncML command, got 2"),
        ("<Final/>", "Final"),
        (" ", "got 0"),
        ("<Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>0</CmdRef></Status>", "Status is not"),
    ],
)
async def test_malformed_raw_syncml_is_422(api: AdminApi, raw: str, words: str) -> None:
    status, error = await call(api, "POST", "/api/v1/commands", {"devices": ["win-1"], "raw": raw})
    assert status == 422
    assert error["field"] == "$.raw"
    assert words in error["error"]


async def test_syncml_error_offsets_point_into_raw(api: AdminApi) -> None:
    raw = "<Get><Bogus/></Get>"
    status, error = await call(api, "POST", "/api/v1/commands", {"devices": ["win-1"], "raw": raw})
    assert status == 422
    assert error["error"].endswith("at byte 5"), error
    status, error = await call(
        api, "POST", "/api/v1/commands", {"devices": ["win-1"], "raw": "<Get>"}
    )
    assert error["error"].endswith("at the end"), error


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("<plist><dict>", "not a plist"),
        ("not a plist", "not a plist"),
        ("<plist version='1.0'><array/></plist>", "dictionary"),
        ("<plist version='1.0'><dict/></plist>", "Command dictionary"),
        (
            "<plist version='1.0'><dict><key>Command</key><dict/></dict></plist>",
            "RequestType",
        ),
    ],
)
async def test_malformed_raw_plist_is_422(api: AdminApi, raw: str, words: str) -> None:
    status, error = await call(api, "POST", "/api/v1/commands", {"devices": ["mac-1"], "raw": raw})
    assert status == 422
    assert error["field"] == "$.raw"
    assert words in error["error"]


async def test_unknown_command_is_404(api: AdminApi) -> None:
    assert (await call(api, "GET", "/api/v1/commands/nope"))[0] == 404


# --- the OpenAPI document --------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


async def test_openapi_document(api: AdminApi) -> None:
    status, document = await call(api, "GET", "/api/v1/openapi.json")
    assert status == 200
    assert document == json.loads(json.dumps(openapi_document()))
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) >= {
        "/api/v1/orgs",
        "/api/v1/apps",
        "/api/v1/apps/{app_id}/versions",
        "/api/v1/apps/{app_id}/versions/{version}/assignments",
        "/api/v1/apps/{app_id}/licences",
        "/api/v1/apps/{app_id}/auto-update",
        "/api/v1/apps/{app_id}/install-notifications",
        "/api/v1/apps/{app_id}/preview",
        "/api/v1/install-notifications/{notification_id}",
        "/api/v1/devices/{id}/apps/{app_id}",
    }
    assert set(document["paths"]) >= {
        "/api/v1/openapi.json",
        "/api/v1/devices",
        "/api/v1/devices/{id}",
        "/api/v1/devices/{id}/commands",
        "/api/v1/commands",
        "/api/v1/commands/{command_id}",
        "/api/v1/declarations",
        "/api/v1/declarations/{identifier}",
        "/api/v1/devices/{id}/declarations/effective",
    }
    refs = _refs(document)
    for ref in refs:
        _resolve(document, ref)
    schemas = document["components"]["schemas"]
    for name in ("DeviceIn", "DeviceOut", "CommandIn", "CommandStatusOut", "Error"):
        assert f"#/components/schemas/{name}" in refs
        assert name in schemas
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert method in ("get", "post", "put", "patch", "delete")
            assert operation["summary"]
            assert "401" in operation["responses"]
            if method in ("post", "put", "patch") and "requestBody" in operation:
                assert {"400", "415", "422"} <= set(operation["responses"]), path
                assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            else:
                assert method not in ("put", "patch"), path
            # Query parameters are declared too since the route table (issue 17).
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            assert sorted(names) == sorted(re.findall(r"\{(\w+)\}", path)), path


# --- never a 5xx -----------------------------------------------------------------------------

_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_names = st.sampled_from(
    ["id", "platform", "org", "apps", "auth", "devices", "raw", "apple", "syncml", "os_version"]
)
_values = st.recursive(
    _leaves
    | st.sampled_from(
        ["windows", "ios", "macos", "android", "win-1", "mac-1", GET_SWV, DEVICE_INFO]
    ),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(_names | st.text(), inner, max_size=5)
    ),
    max_leaves=20,
)
_paths = st.sampled_from(
    [
        "/api/v1/devices",
        "/api/v1/commands",
        "/api/v1/devices/win-1/commands",
        "/api/v1/devices/mac-1/commands",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=_paths, body=_values)
async def test_arbitrary_json_never_5xx(path: str, body: Any) -> None:
    store = MemoryStore()
    await store.upsert_devices([Device("win-1", "windows"), Device("mac-1", "macos")])
    api = AdminApi(store, TOKEN)
    response = await api(request("POST", path, raw=msgspec.json.encode(body)))
    event(f"status {response.status}")
    assert response.status < 500
    decoded(response)


@settings(max_examples=200, deadline=None)
@given(path=_paths, raw=st.binary(max_size=200))
async def test_arbitrary_bytes_never_5xx(path: str, raw: bytes) -> None:
    api = AdminApi(MemoryStore(), TOKEN)
    response = await api(request("POST", path, raw=raw))
    assert response.status < 500
    decoded(response)


_pieces = st.sampled_from(
    [
        "<Get>",
        "</Get>",
        "<Atomic>",
        "</Atomic>",
        "<Item>",
        "</Item>",
        "<CmdID>1</CmdID>",
        "<Target><LocURI>./x</LocURI></Target>",
        "<Data>",
        "</Data>",
        "<![CDATA[",
        "]]>",
        "<!--",
        "-->",
        "</SyncBody>",
        "<SyncBody>",
        "</SyncML>",
        "<Final/>",
        "<Status>",
        "<?xml version='1.0'?>",
        "<plist version='1.0'>",
        "</plist>",
        "<dict>",
        "</dict>",
        "<key>Command</key>",
        "<key>RequestType</key>",
        "<key>CommandUUID</key>",
        "<string>DeviceInformation</string>",
        "<integer>9</integer>",
        "<date>2024-01-01</date>",
        "<data>AAE=</data>",
        "&amp;",
        "&bogus;",
        "\x00",
        "\ud800",
        "é",
    ]
)
_raw = st.sampled_from([GET_SWV, DEVICE_INFO]) | st.lists(
    _pieces | st.text(max_size=5), max_size=12
).map("".join)
_one_command = st.one_of(
    st.fixed_dictionaries({"raw": _raw}),
    st.fixed_dictionaries(
        {
            "apple": st.fixed_dictionaries(
                {"request_type": st.sampled_from(["DeviceInformation", "InstallApplication", "X"])},
                optional={
                    "payload": st.dictionaries(st.text(max_size=12), _values, max_size=3),
                    "command_uuid": st.text(max_size=8),
                },
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "syncml": st.dictionaries(
                st.sampled_from(["Get", "Add", "Exec", "Atomic", "Status", "Nope"]),
                _values | st.fixed_dictionaries({}, optional={"CmdID": _values, "Item": _values}),
                max_size=2,
            )
        }
    ),
)
_command = st.builds(
    lambda devices, command: {"devices": devices, **command},
    st.sampled_from([["win-1"], ["mac-1"], ["win-1", "mac-1"], ["ghost"]]),
    _one_command,
)


@settings(max_examples=400, deadline=None)
@given(body=_command)
async def test_arbitrary_commands_never_5xx(body: dict[str, Any]) -> None:
    store = MemoryStore()
    await store.upsert_devices([Device("win-1", "windows"), Device("mac-1", "macos")])
    api = AdminApi(store, TOKEN)
    response = await api(
        # json.dumps writes a lone surrogate as an escape, as a hostile client could.
        request("POST", "/api/v1/commands", raw=json.dumps(body).encode())
    )
    event(f"status {response.status}")
    assert response.status < 500
    decoded(response)


async def test_apple_app_commands(api: AdminApi) -> None:
    # A take-over needs the OS version (ChangeManagementState is iPadOS 9+).
    ipad = Device("ipad-9", "ipados", os_version="17.5")
    await api.store.upsert_devices([ipad, Device("win-9", "windows")])

    async def body_of(app: dict[str, Any]) -> dict[str, Any]:
        path = "/api/v1/devices/ipad-9/commands"
        status, answer = await call(api, "POST", path, {"apple_app": app})
        assert status == 202, answer
        found = await api.store.command_status(answer["command_id"])
        assert found is not None
        value = plist.loads(found.deliveries[0].body)
        assert isinstance(value, dict)
        assert value["CommandUUID"] == answer["command_id"]
        command: dict[str, Any] = value["Command"]
        return command

    enterprise = await body_of(
        {"action": "install_enterprise_app", "manifest_url": "https://apps.example/m.plist"}
    )
    assert enterprise == {
        "RequestType": "InstallApplication",
        "ManifestURL": "https://apps.example/m.plist",
    }
    take_over = await body_of({"action": "take_over", "identifier": "com.example.notes"})
    assert take_over["ChangeManagementState"] == "Managed"
    assert take_over["Identifier"] == "com.example.notes"
    assert (await body_of({"action": "remove", "identifier": "com.example.notes"})) == {
        "RequestType": "RemoveApplication",
        "Identifier": "com.example.notes",
    }
    inventory = await body_of({"action": "refresh_inventory", "managed": True})
    assert inventory["RequestType"] == "ManagedApplicationList"
    http = {"action": "install_enterprise_app", "manifest_url": "http://apps.example/m"}
    status, error = await call(api, "POST", "/api/v1/devices/ipad-9/commands", {"apple_app": http})
    assert (status, error["field"]) == (422, "$.apple_app.manifest_url")
    remove = {"action": "remove", "identifier": "com.example.notes"}
    status, error = await call(api, "POST", "/api/v1/devices/win-9/commands", {"apple_app": remove})
    assert (status, error["field"]) == (422, "$.apple_app")
