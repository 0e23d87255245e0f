"""The admin API's declarations (Apple DDM): create/replace, validation, targets, the
effective settings and enforcement of a device, on every storage backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mdmgate.apple import ddm
from mdmgate.server.admin import AdminApi, openapi_document
from mdmgate.storage import Device, Store, StoredDeclaration
from mdmgate.storage.memory import MemoryStore
from tests.stores import BACKENDS, open_backend
from tests.test_admin_api import AUTH, JSON, TOKEN, call, decoded, request

SETTINGS = ddm.SETTINGS_TYPE
ENFORCEMENT = ddm.ENFORCEMENT_TYPE


def body(
    identifier: str,
    payload: dict[str, Any],
    *,
    type: str = SETTINGS,
    devices: list[str] | None = None,
    orgs: list[str] | None = None,
) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    if devices is not None:
        targets["devices"] = devices
    if orgs is not None:
        targets["orgs"] = orgs
    return {"type": type, "identifier": identifier, "payload": payload, "targets": targets}


def enforcement(target: str, when: str, **extra: str) -> dict[str, Any]:
    return {"TargetOSVersion": target, "TargetLocalDateTime": when, **extra}


async def post(api: AdminApi, declaration: dict[str, Any]) -> tuple[int, Any]:
    return await call(api, "POST", "/api/v1/declarations", declaration)


async def effective(api: AdminApi, device_id: str) -> Any:
    status, out = await call(api, "GET", f"/api/v1/devices/{device_id}/declarations/effective")
    assert status == 200, out
    return out


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path)
    await s.upsert_devices(
        [
            Device("mac-1", "macos", "/acme/sales", os_version="15.1"),
            Device("iphone-1", "ios", "/acme", os_version="18.1"),
            Device("ipad-1", "ipados", "/acme"),
            Device("win-1", "windows", "/acme"),
            Device("other-1", "ios", "/other", os_version="18.1"),
        ]
    )
    yield s
    await s.aclose()


@pytest.fixture
def api(store: Store) -> AdminApi:
    return AdminApi(store, TOKEN)


# --- create and replace ----------------------------------------------------------------------


async def test_create_then_replace(api: AdminApi) -> None:
    payload = {"Deferrals": {"CombinedPeriodInDays": 30}}
    status, out = await post(api, body("defer", payload, orgs=["/acme"]))
    assert status == 201
    token = ddm.server_token(SETTINGS, "defer", payload)
    assert out == {
        "identifier": "defer",
        "type": SETTINGS,
        "server_token": token,
        "devices": [],
        "orgs": ["/acme"],
    }

    # The same content keeps its token; the targets are replaced.
    status, out = await post(api, body("defer", payload, devices=["mac-1", "mac-1"]))
    assert status == 200
    assert (out["server_token"], out["devices"], out["orgs"]) == (token, ["mac-1"], [])

    # Other content, another token.
    changed = {"Deferrals": {"CombinedPeriodInDays": 31}}
    status, out = await post(api, body("defer", changed, devices=["mac-1"], orgs=["/"]))
    assert status == 200
    assert out["server_token"] != token
    assert out["server_token"] == ddm.server_token(SETTINGS, "defer", changed)

    status, stored = await call(api, "GET", "/api/v1/declarations/defer")
    assert status == 200
    assert stored == {**out, "payload": changed}


async def test_token_depends_on_content_not_key_order(api: AdminApi) -> None:
    a = {"Notifications": True, "RecommendedCadence": "Newest"}
    b = {"RecommendedCadence": "Newest", "Notifications": True}
    _, first = await post(api, body("x", a, orgs=["/"]))
    _, second = await post(api, body("x", b, orgs=["/"]))
    assert first["server_token"] == second["server_token"]
    _, other = await post(api, body("y", a, orgs=["/"]))
    assert other["server_token"] != first["server_token"]  # the identifier is content too


async def test_get_unknown_declaration_is_404(api: AdminApi) -> None:
    status, out = await call(api, "GET", "/api/v1/declarations/nope")
    assert status == 404
    assert "nope" in out["error"]


async def test_identifier_with_a_slash_round_trips(api: AdminApi) -> None:
    status, _ = await post(api, body("com.acme/a b", {"Notifications": True}, orgs=["/"]))
    assert status == 201
    status, out = await call(api, "GET", "/api/v1/declarations/com.acme%2Fa%20b")
    assert status == 200
    assert out["identifier"] == "com.acme/a b"


async def test_methods(api: AdminApi) -> None:
    response = await api(request("GET", "/api/v1/declarations"))
    assert response.status == 405
    assert dict(response.headers)["allow"] == "POST"
    assert (await api(request("POST", "/api/v1/declarations/x"))).status == 405
    assert (await api(request("PUT", "/api/v1/devices/mac-1/declarations/effective"))).status == 405
    assert (await api(request("GET", "/api/v1/devices/mac-1/declarations"))).status == 404
    assert (await api(request("GET", "/api/v1/declarations/x/y"))).status == 404


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declaration", "field", "words"),
    [
        (
            body("d", {"Deferrals": {"CombinedPeriodInDays": 0}}, orgs=["/"]),
            "$.payload.Deferrals.CombinedPeriodInDays",
            "below the minimum 1",
        ),
        (
            body("d", {"Deferrals": {"CombinedPeriodInDays": 91}}, orgs=["/"]),
            "$.payload.Deferrals.CombinedPeriodInDays",
            "above the maximum 90",
        ),
        (
            body("d", {"AutomaticActions": {"Download": "Never"}}, orgs=["/"]),
            "$.payload.AutomaticActions.Download",
            "'Never' is not one of",
        ),
        (
            body("d", {"Notifications": "yes"}, orgs=["/"]),
            "$.payload.Notifications",
            "expected a boolean",
        ),
        (
            body("d", {"Deferrals": {"CombinedPeriodInDays": "30"}}, orgs=["/"]),
            "$.payload.Deferrals.CombinedPeriodInDays",
            "expected an integer",
        ),
        (
            body("d", {"Bogus": 1}, orgs=["/"]),
            "$.payload.Bogus",
            "unknown key",
        ),
        (
            body(
                "d",
                {"Beta": {"OfferPrograms": [{"Description": "x"}]}},
                orgs=["/"],
            ),
            "$.payload.Beta.OfferPrograms[0].Token",
            "Token",
        ),
        (
            body("d", {"TargetLocalDateTime": "2030-01-01T00:00:00"}, type=ENFORCEMENT, orgs=["/"]),
            "$.payload.TargetOSVersion",
            "TargetOSVersion is missing",
        ),
        (
            body("d", enforcement("18.2", "2030-01-01T00:00:00Z"), type=ENFORCEMENT, orgs=["/"]),
            "$.payload.TargetLocalDateTime",
            "YYYY-MM-DDTHH:MM:SS",
        ),
        (
            body("d", enforcement("latest", "2030-01-01T00:00:00"), type=ENFORCEMENT, orgs=["/"]),
            "$.payload.TargetOSVersion",
            "invalid",
        ),
        (
            body("d", {}, type="com.example.nothing", orgs=["/"]),
            "$.type",
            "unknown declaration type",
        ),
        (body("", {}, orgs=["/"]), "$.identifier", "length"),
        (body("d", {}), "$.targets", "at least one target"),
        (body("d", {}, devices=[], orgs=[]), "$.targets", "at least one target"),
        (body("d", {}, orgs=["acme"]), "$.targets.orgs[0]", "org path"),
        (body("d", {}, orgs=["/acme\n"]), "$.targets.orgs[0]", "line breaks"),
        ({**body("d", {}, orgs=["/"]), "ServerToken": "x"}, "$.ServerToken", "unknown field"),
        ({"type": SETTINGS, "identifier": "d", "targets": {"orgs": ["/"]}}, "$.payload", ""),
        ({**body("d", {}), "targets": {"groups": ["x"]}}, "$.targets.groups", "unknown field"),
    ],
)
async def test_refusals_name_the_field(
    api: AdminApi, declaration: dict[str, Any], field: str, words: str
) -> None:
    status, out = await post(api, declaration)
    assert status == 422, out
    assert out["field"] == field
    assert words in out["error"]
    assert (await call(api, "GET", "/api/v1/declarations/d"))[0] == 404


async def test_a_refused_replacement_keeps_the_stored_declaration(api: AdminApi) -> None:
    assert (await post(api, body("d", {"Notifications": True}, orgs=["/"])))[0] == 201
    status, _ = await post(api, body("d", {"Notifications": 1}, orgs=["/"]))
    assert status == 422
    _, stored = await call(api, "GET", "/api/v1/declarations/d")
    assert stored["payload"] == {"Notifications": True}


async def test_unknown_target_devices_are_404(api: AdminApi) -> None:
    status, out = await post(
        api, body("d", {"Notifications": True}, devices=["mac-1", "ghost", "ghost", "nobody"])
    )
    assert status == 404
    assert out["devices"] == ["ghost", "nobody"]
    assert out["field"] == "$.targets.devices"
    assert (await call(api, "GET", "/api/v1/declarations/d"))[0] == 404


async def test_not_json_and_wrong_media_type(api: AdminApi) -> None:
    assert (await api(request("POST", "/api/v1/declarations", raw=b"{nope"))).status == 400
    response = await api(
        request("POST", "/api/v1/declarations", {}, headers=(AUTH, ("content-type", "text/plain")))
    )
    assert response.status == 415


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/declarations"),
        ("GET", "/api/v1/declarations/d"),
        ("GET", "/api/v1/devices/mac-1/declarations/effective"),
    ],
)
async def test_the_token_is_required(api: AdminApi, method: str, path: str) -> None:
    declaration = body("d", {"Notifications": True}, orgs=["/"])
    response = await api(request(method, path, declaration, headers=(JSON,)))
    assert response.status == 401
    assert dict(response.headers)["www-authenticate"].startswith("Bearer")
    wrong = (("authorization", "Bearer wrong"), JSON)
    assert (await api(request(method, path, declaration, headers=wrong))).status == 401
    assert (await call(api, "GET", "/api/v1/declarations/d"))[0] == 404  # nothing stored


# --- effective settings ----------------------------------------------------------------------


async def test_effective_settings_combine_org_and_device_declarations(api: AdminApi) -> None:
    by_org = {
        "Deferrals": {"CombinedPeriodInDays": 30, "MajorPeriodInDays": 10},
        "AutomaticActions": {"Download": "AlwaysOn"},
        "Notifications": True,
        "Beta": {"OfferPrograms": [{"Description": "Beta", "Token": "t1"}]},
    }
    by_device = {
        "Deferrals": {"CombinedPeriodInDays": 60},
        "AutomaticActions": {"Download": "Allowed"},
        "Notifications": False,
        "Beta": {
            "OfferPrograms": [
                {"Description": "Beta", "Token": "t1"},
                {"Description": "Seed", "Token": "t2"},
            ]
        },
    }
    assert (await post(api, body("org-wide", by_org, orgs=["/acme"])))[0] == 201
    assert (await post(api, body("for-mac", by_device, devices=["mac-1"])))[0] == 201
    assert (await post(api, body("elsewhere", {"Notifications": True}, orgs=["/other"])))[0] == 201
    out = await effective(api, "mac-1")
    assert out["device_id"] == "mac-1"
    assert out["declarations"] == ["org-wide", "for-mac"]
    assert out["softwareupdate_settings"] == {
        "Deferrals.CombinedPeriodInDays": {"value": 60, "declarations": ["for-mac"]},
        "Deferrals.MajorPeriodInDays": {"value": 10, "declarations": ["org-wide"]},
        "AutomaticActions.Download": {"value": "AlwaysOn", "declarations": ["org-wide"]},
        "Notifications": {"value": False, "declarations": ["for-mac"]},
        "Beta.OfferPrograms": {
            "value": [
                {"Description": "Beta", "Token": "t1"},
                {"Description": "Seed", "Token": "t2"},
            ],
            "declarations": ["org-wide", "for-mac"],
        },
    }
    assert out["skipped"] == []

    # Only the org declaration reaches the iPhone (in /acme, not targeted by id).
    phone = await effective(api, "iphone-1")
    assert phone["declarations"] == ["org-wide"]
    assert phone["softwareupdate_settings"]["Deferrals.CombinedPeriodInDays"] == {
        "value": 30,
        "declarations": ["org-wide"],
    }

    # Retargeting the device declaration to the org moves it.
    assert (await post(api, body("for-mac", by_device, orgs=["/acme"])))[0] == 200
    assert (await effective(api, "iphone-1"))["declarations"] == ["org-wide", "for-mac"]


async def test_equal_values_name_every_contributor(api: AdminApi) -> None:
    await post(api, body("a", {"Deferrals": {"CombinedPeriodInDays": 45}}, orgs=["/"]))
    await post(api, body("b", {"Deferrals": {"CombinedPeriodInDays": 45}}, devices=["mac-1"]))
    out = await effective(api, "mac-1")
    assert out["softwareupdate_settings"] == {
        "Deferrals.CombinedPeriodInDays": {"value": 45, "declarations": ["a", "b"]}
    }


async def test_no_declarations(api: AdminApi) -> None:
    out = await effective(api, "mac-1")
    assert out == {
        "device_id": "mac-1",
        "declarations": [],
        "softwareupdate_settings": {},
        "enforcement": {"active": None, "pending": [], "os_version": "15.1", "note": None},
        "skipped": [],
    }


async def test_effective_for_unknown_device_is_404(api: AdminApi) -> None:
    status, out = await call(api, "GET", "/api/v1/devices/ghost/declarations/effective")
    assert status == 404
    assert "ghost" in out["error"]


async def test_a_stored_declaration_that_no_longer_validates_is_skipped(
    api: AdminApi, store: Store
) -> None:
    await post(api, body("good", {"Notifications": True}, orgs=["/"]))
    await store.put_declaration(
        StoredDeclaration("bad", SETTINGS, {"Notifications": "yes"}, "t", orgs=("/",))
    )
    out = await effective(api, "mac-1")
    assert out["declarations"] == ["good", "bad"]
    assert out["softwareupdate_settings"] == {
        "Notifications": {"value": True, "declarations": ["good"]}
    }
    assert [s["identifier"] for s in out["skipped"]] == ["bad"]


# --- enforcement -----------------------------------------------------------------------------


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["declaration"] for item in items]


async def test_enforcement_active_pending_and_reevaluated(api: AdminApi) -> None:
    declarations = [
        ("old", enforcement("18.0", "2030-01-01T09:00:00")),
        ("later", enforcement("18.2", "2030-03-01T09:00:00")),
        (
            "sooner",
            enforcement("18.3", "2030-02-01T09:00:00", DetailsURL="https://acme.example/18.3"),
        ),
    ]
    for identifier, payload in declarations:
        status, _ = await post(
            api, body(identifier, payload, type=ENFORCEMENT, devices=["iphone-1"])
        )
        assert status == 201
    # A settings declaration does not take part in enforcement.
    await post(api, body("settings", {"Notifications": True}, devices=["iphone-1"]))

    out = await effective(api, "iphone-1")
    assert out["declarations"] == ["old", "later", "sooner", "settings"]
    state = out["enforcement"]
    assert state["os_version"] == "18.1"
    assert state["note"] is None
    assert state["active"] == {
        "declaration": "sooner",
        "target_os_version": "18.3",
        "target_build_version": None,
        "target_local_datetime": "2030-02-01T09:00:00",
        "details_url": "https://acme.example/18.3",
    }
    assert _ids(state["pending"]) == ["sooner", "later"]

    # The device updates to 18.2 (as a console reports it): "later" is done.
    status, _ = await call(
        api,
        "POST",
        "/api/v1/devices",
        [{"id": "iphone-1", "platform": "ios", "os_version": "18.2"}],
    )
    assert status == 200
    state = (await effective(api, "iphone-1"))["enforcement"]
    assert (state["os_version"], _ids(state["pending"])) == ("18.2", ["sooner"])
    assert state["active"]["declaration"] == "sooner"

    # And to 18.3: nothing is left.
    await call(
        api,
        "POST",
        "/api/v1/devices",
        [{"id": "iphone-1", "platform": "ios", "os_version": "18.3"}],
    )
    state = (await effective(api, "iphone-1"))["enforcement"]
    assert (state["active"], state["pending"], state["note"]) == (None, [], None)

    # A newer target assigned later becomes active.
    await post(
        api,
        body("next", enforcement("19.0", "2030-06-01T09:00:00"), type=ENFORCEMENT, orgs=["/acme"]),
    )
    state = (await effective(api, "iphone-1"))["enforcement"]
    assert state["active"]["declaration"] == "next"


async def test_enforcement_ties_go_to_the_lower_target(api: AdminApi) -> None:
    when = "2030-01-01T09:00:00"
    await post(api, body("b", enforcement("15.4", when), type=ENFORCEMENT, devices=["mac-1"]))
    await post(api, body("a", enforcement("15.3", when), type=ENFORCEMENT, orgs=["/acme"]))
    state = (await effective(api, "mac-1"))["enforcement"]
    assert _ids(state["pending"]) == ["a", "b"]
    assert state["active"]["declaration"] == "a"


@pytest.mark.parametrize(
    ("device_id", "words"),
    [("ipad-1", "no os_version"), ("win-1", "not on 'windows'")],
)
async def test_enforcement_not_evaluated_says_why(
    api: AdminApi, device_id: str, words: str
) -> None:
    await post(
        api,
        body("e", enforcement("99.0", "2030-01-01T09:00:00"), type=ENFORCEMENT, orgs=["/acme"]),
    )
    await post(api, body("s", {"Notifications": False}, orgs=["/acme"]))
    out = await effective(api, device_id)
    assert out["declarations"] == ["e", "s"]
    state = out["enforcement"]
    assert (state["active"], state["pending"]) == (None, [])
    assert words in state["note"]
    # Settings are still shown.
    assert out["softwareupdate_settings"]["Notifications"]["value"] is False


async def test_unreadable_device_version_says_why(api: AdminApi) -> None:
    await call(
        api, "POST", "/api/v1/devices", [{"id": "mac-1", "platform": "macos", "os_version": "beta"}]
    )
    await post(
        api,
        body("e", enforcement("16.0", "2030-01-01T09:00:00"), type=ENFORCEMENT, orgs=["/acme"]),
    )
    state = (await effective(api, "mac-1"))["enforcement"]
    assert (state["active"], state["pending"]) == (None, [])
    assert "cannot be ordered" in state["note"]


# --- the OpenAPI document --------------------------------------------------------------------


async def test_openapi_lists_the_declaration_endpoints(api: AdminApi) -> None:
    status, document = await call(api, "GET", "/api/v1/openapi.json")
    assert status == 200
    assert document == json.loads(json.dumps(openapi_document()))
    paths = document["paths"]
    post_op = paths["/api/v1/declarations"]["post"]
    assert {"200", "201", "400", "401", "404", "415", "422"} <= set(post_op["responses"])
    # Either form: the gateway's or Apple's own (issue 17).
    assert post_op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeclarationRequest"
    }
    assert document["components"]["schemas"]["DeclarationRequest"]["oneOf"] == [
        {"$ref": "#/components/schemas/DeclarationIn"},
        {"$ref": "#/components/schemas/AppleDeclarationIn"},
    ]
    get_op = paths["/api/v1/declarations/{identifier}"]["get"]
    assert get_op["parameters"][0]["name"] == "identifier"
    assert get_op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeclarationOut"
    }
    eff = paths["/api/v1/devices/{id}/declarations/effective"]["get"]
    assert eff["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EffectiveDeclarationsOut"
    }
    schemas = document["components"]["schemas"]
    for name in (
        "DeclarationIn",
        "DeclarationTargetsIn",
        "DeclarationWritten",
        "DeclarationOut",
        "EffectiveDeclarationsOut",
        "EffectiveSettingOut",
        "EnforcementStateOut",
        "EnforcementOut",
        "SkippedDeclarationOut",
    ):
        assert schemas[name].get("description"), name
    assert schemas["DeclarationIn"]["additionalProperties"] is False
    assert "ServerToken" in schemas["DeclarationIn"]["description"]
    assert set(schemas["DeclarationIn"]["required"]) == {"type", "identifier", "payload", "targets"}
    effective_props = schemas["EffectiveDeclarationsOut"]["properties"]
    assert {"declarations", "softwareupdate_settings", "enforcement"} <= set(effective_props)


# --- never a 5xx -----------------------------------------------------------------------------

_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_names = st.sampled_from(
    [
        "type",
        "identifier",
        "payload",
        "targets",
        "devices",
        "orgs",
        "Deferrals",
        "CombinedPeriodInDays",
        "Notifications",
        "TargetOSVersion",
        "TargetLocalDateTime",
        "Beta",
        "OfferPrograms",
    ]
)
_values = st.recursive(
    _leaves
    | st.sampled_from([SETTINGS, ENFORCEMENT, "mac-1", "/", "/acme", "2030-01-01T00:00:00"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(_names | st.text(), inner, max_size=5)
    ),
    max_leaves=20,
)


_shaped = st.fixed_dictionaries(
    {
        "type": st.sampled_from([SETTINGS, ENFORCEMENT]) | st.text(),
        "identifier": st.text(min_size=1, max_size=20),
        "payload": st.dictionaries(_names | st.text(), _values, max_size=4)
        | st.fixed_dictionaries(
            {
                "TargetOSVersion": st.sampled_from(["15.1", "16", "15.0.1"]) | _leaves,
                "TargetLocalDateTime": st.sampled_from(["2030-01-01T00:00:00"]) | _leaves,
            },
            optional={"DetailsURL": _values},
        )
        | st.fixed_dictionaries(
            {},
            optional={
                "Notifications": st.booleans() | _leaves,
                "Deferrals": st.dictionaries(
                    st.sampled_from(["CombinedPeriodInDays", "MajorPeriodInDays"]),
                    st.integers(-5, 100),
                ),
                "RecommendedCadence": st.sampled_from(["All", "Oldest", "Newest"]) | _leaves,
            },
        ),
        "targets": st.fixed_dictionaries(
            {}, optional={"devices": st.lists(st.sampled_from(["mac-1", "x"]), max_size=2)}
        )
        | st.just({"orgs": ["/"]}),
    }
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(declaration=_values | _shaped)
async def test_arbitrary_json_never_5xx(declaration: Any) -> None:
    store = MemoryStore()
    await store.upsert_devices([Device("mac-1", "macos", "/acme", os_version="15.0")])
    api = AdminApi(store, TOKEN)
    response = await api(
        request("POST", "/api/v1/declarations", raw=msgspec.json.encode(declaration))
    )
    assert response.status < 500
    event(f"status {response.status}")
    decoded(response)
    if response.status in (200, 201):
        out = await effective(api, "mac-1")
        assert out["skipped"] == []
