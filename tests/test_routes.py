"""The route table (mdmgate.server.routes): matching, refusals, and the OpenAPI paths it
generates. Handlers here echo what they were called with."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

import pytest

from mdmgate.server import api_events, api_webhooks
from mdmgate.server.admin import AdminApi, openapi_document
from mdmgate.server.routes import Operation, QueryParam, Router, openapi_paths
from mdmgate.server.types import Request, Response
from mdmgate.storage.memory import MemoryStore
from mdmgate.webhooks.settings import WebhookSettings


def echo(name: str) -> Any:
    async def handler(request: Request, params: Mapping[str, str]) -> Response:
        body = {"operation": name, "params": dict(params)}
        return Response(200, (("content-type", "application/json"),), json.dumps(body).encode())

    return handler


def op(method: str, path: str, **kwargs: Any) -> Operation:
    fields: dict[str, Any] = {"summary": f"{method} {path}", "ok": ("200", "Done.", "Thing")}
    fields.update(kwargs)
    return Operation(method, path, echo(f"{method} {path}"), **fields)


def get(method: str, path: str) -> Request:
    return Request(method, path, "", (), b"", "1.1", "127.0.0.1:1")


async def answer(router: Router, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    response = await router(get(method, path))
    return response.status, dict(response.headers), json.loads(response.body)


TABLE = [
    op("GET", "/api/v1/things"),
    op("POST", "/api/v1/things"),
    op("GET", "/api/v1/things/{id}"),
    op("DELETE", "/api/v1/things/{id}"),
    op("GET", "/api/v1/things/{id}/parts/{part}"),
]


async def test_an_unknown_path_is_404_and_a_wrong_method_405_with_allow() -> None:
    router = Router(TABLE)
    status, _, body = await answer(router, "GET", "/api/v1/nothing")
    assert status == 404
    assert "/api/v1/nothing" in body["error"]
    status, headers, body = await answer(router, "PUT", "/api/v1/things/a")
    assert status == 405
    assert headers["allow"] == "GET, DELETE"
    assert "PUT" in body["error"]
    status, headers, _ = await answer(router, "DELETE", "/api/v1/things")
    assert (status, headers["allow"]) == (405, "GET, POST")
    status, _, body = await answer(router, "delete", "/api/v1/things/a")
    assert (status, body["operation"]) == (200, "DELETE /api/v1/things/{id}")


async def test_path_parameters_are_percent_decoded() -> None:
    router = Router(TABLE)
    status, _, body = await answer(router, "GET", "/api/v1/things/urn%3Auuid%3Aa%2Fb%20c/parts/x+y")
    assert status == 200
    assert body["params"] == {"id": "urn:uuid:a/b c", "part": "x+y"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/things/a/b",
        "/api/v1/things/",
        "/api/v1/things//parts/x",
        "/api/v1/things/a/parts/",
        "/api/v1/things/a/parts/x/y",
        "/api/v1/thingsx",
    ],
)
async def test_a_parameter_never_spans_a_slash_nor_matches_nothing(path: str) -> None:
    assert (await answer(Router(TABLE), "GET", path))[0] == 404


@pytest.mark.parametrize("order", [1, -1])
async def test_literal_segments_win_over_parameters_whatever_the_order(order: int) -> None:
    table = [op("GET", "/api/v1/things/{id}"), op("POST", "/api/v1/things/export")][::order]
    router = Router(table)
    assert (await answer(router, "GET", "/api/v1/things/a"))[2]["params"] == {"id": "a"}
    status, _, body = await answer(router, "POST", "/api/v1/things/export")
    assert (status, body["operation"]) == (200, "POST /api/v1/things/export")
    # The literal path is its own resource: GET there is not the parameter's operation.
    status, headers, _ = await answer(router, "GET", "/api/v1/things/export")
    assert (status, headers["allow"]) == (405, "POST")


def test_an_operation_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match=r"GET /api/v1/things/\{id\} is declared twice"):
        Router([*TABLE, op("GET", "/api/v1/things/{id}")])
    with pytest.raises(ValueError, match="different parameter names"):
        Router([*TABLE, op("PATCH", "/api/v1/things/{name}")])


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "words"),
    [
        ("FETCH", "/api/v1/x", {}, "method"),
        ("get", "/api/v1/x", {}, "method"),
        ("GET", "api/v1/x", {}, "start with /"),
        ("GET", "/api/v1/{a}/{a}", {}, "twice"),
        ("GET", "/api/v1/{a}x", {}, "whole segment"),
        ("GET", "/api/v1/{a}", {"params": {"b": "B."}}, "'b'"),
        ("GET", "/api/v1/x", {"scope": "admin"}, "scope"),
        ("GET", "/api/v1/x", {"query": (QueryParam("a", "A."), QueryParam("a", "A."))}, "twice"),
    ],
)
def test_a_malformed_operation_is_refused_naming_the_problem(
    method: str, path: str, kwargs: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        op(method, path, **kwargs)


def test_the_scope_an_operation_needs() -> None:
    assert op("GET", "/x").needs == "read"
    assert op("POST", "/x").needs == "full"
    assert op("DELETE", "/x").needs == "full"
    assert op("GET", "/x", scope="full").needs == "full"


def test_openapi_paths_are_generated_per_operation() -> None:
    table = [
        *TABLE,
        op(
            "POST",
            "/api/v1/things/{id}/cancel",
            request="CancelIn",
            request_required=False,
            errors=("400", "404", "415", "422"),
            params={"id": "The thing's id."},
            query=(QueryParam("force", "Even if busy.", {"type": "boolean"}),),
            description="Longer words.",
        ),
    ]
    paths = openapi_paths(table)
    assert set(paths) == {
        "/api/v1/things",
        "/api/v1/things/{id}",
        "/api/v1/things/{id}/parts/{part}",
        "/api/v1/things/{id}/cancel",
    }
    assert set(paths["/api/v1/things"]) == {"get", "post"}
    assert set(paths["/api/v1/things/{id}"]) == {"get", "delete"}
    listing = paths["/api/v1/things"]["get"]
    assert listing["summary"] == "GET /api/v1/things"
    assert listing["security"] == [{"bearerAuth": ["read"]}]
    assert "403" not in listing["responses"]
    assert {"200", "401", "405"} <= set(listing["responses"])
    assert "parameters" not in listing
    parts = paths["/api/v1/things/{id}/parts/{part}"]["get"]
    assert [(p["name"], p["in"], p["required"]) for p in parts["parameters"]] == [
        ("id", "path", True),
        ("part", "path", True),
    ]
    cancel = paths["/api/v1/things/{id}/cancel"]["post"]
    assert cancel["security"] == [{"bearerAuth": ["full"]}]
    assert {"200", "400", "401", "403", "404", "405", "415", "422"} == set(cancel["responses"])
    assert cancel["description"] == "Longer words."
    assert cancel["requestBody"]["required"] is False
    assert cancel["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CancelIn"
    }
    assert cancel["parameters"] == [
        {
            "name": "id",
            "in": "path",
            "required": True,
            "description": "The thing's id.",
            "schema": {"type": "string"},
        },
        {
            "name": "force",
            "in": "query",
            "required": False,
            "description": "Even if busy.",
            "schema": {"type": "boolean"},
        },
    ]


# --- what the document says a query takes is what the handler takes (.ci/api-conformance) ----


def _listing(query: str) -> Request:
    return Request("GET", "/api/v1/events", query, (), b"", "1.1", "127.0.0.1:1")


def _query_schema(operation: Operation, name: str) -> dict[str, Any]:
    [parameter] = [p for p in operation.openapi()["parameters"] if p["name"] == name]
    schema: dict[str, Any] = parameter["schema"]
    return schema.get("items", schema)


async def test_the_event_queries_documented_are_the_ones_taken() -> None:
    [listing] = api_events.operations(api_events.EventsApi(MemoryStore()))
    router = Router([listing])

    async def status(query: str) -> int:
        return (await router(_listing(query))).status

    # The cursor: every number the document allows is read, the first one past it is not.
    most = _query_schema(listing, "after")["maximum"]
    assert (await status(f"after={most}"), await status(f"after={most + 1}")) == (200, 422)
    # A float as clients print it (1e-05) is a number of seconds too.
    assert _query_schema(listing, "wait")["type"] == "number"
    assert await status("wait=1e-05") == 200
    assert await status("wait=1e-05&after=1") == 200
    # Every type or family the document names is taken, and only those.
    names = _query_schema(listing, "types")["enum"]
    assert {"command.*", "device.enrolled"} <= set(names)
    for name in names:
        assert await status(f"types={name}") == 200, name
    assert await status("types=command.unknown") == 422
    assert _query_schema(listing, "device_id")["minLength"] == 1
    assert await status("device_id=") == 422
    assert await status("device_id=a%00") == 422


def test_the_device_and_credential_patterns_say_what_is_refused() -> None:
    document = openapi_document()
    [org] = [
        p["schema"]["pattern"]
        for p in document["paths"]["/api/v1/devices"]["get"]["parameters"]
        if p["name"] == "org"
    ]
    assert re.fullmatch(org, "/acme/sales")
    assert not re.fullmatch(org, "acme//x")
    schemas = document["components"]["schemas"]
    nonce = schemas["WindowsAuthRotateIn"]["properties"]["client_nonce"]["anyOf"][0]["pattern"]
    for size in range(1, 8):
        assert re.fullmatch(nonce, base64.b64encode(bytes(size)).decode())
    for refused in ("not base64!", "AAA", "A===", "AA=A"):
        assert not re.fullmatch(nonce, refused), refused
    sha256 = schemas["WindowsAuthIn"]["properties"]["sha256"]["anyOf"][0]["pattern"]
    assert re.fullmatch(sha256, "ab" * 32)
    assert not re.fullmatch(sha256, "xyz")


@pytest.mark.parametrize("path", ["/api/v1/things/%00", "/api/v1/things/a/parts/b%00c"])
async def test_a_parameter_holding_u0000_names_nothing(path: str) -> None:
    # No store keeps U+0000 (PostgreSQL cannot take it as a parameter): 404 before any
    # handler asks a store about it.
    status, _, body = await answer(Router(TABLE), "GET", path)
    assert status == 404
    assert "U+0000" in body["error"]


async def test_every_refusal_of_a_query_is_documented() -> None:
    store = MemoryStore()
    extra = [
        *api_events.operations(api_events.EventsApi(store)),
        *api_webhooks.operations(api_webhooks.WebhooksApi(store, WebhookSettings())),
    ]
    admin = AdminApi(store, "t", extra_operations=extra)
    for op in admin.operations:
        if op.method != "GET":
            continue
        path = re.sub(r"\{[^}]+\}", "x", op.path)
        documented = set(op.openapi()["responses"])
        for query in ("unknown=1", "limit=%ff"):
            request = Request(
                "GET", path, query, (("authorization", "Bearer t"),), b"", "1.1", "127.0.0.1:1"
            )
            status = (await admin(request)).status
            assert str(status) in documented, (op.method, op.path, query, status)
