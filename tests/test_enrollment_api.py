"""The enrollment admin API and configuration surface (issue 16): tokens, issued certificates,
the CA and the OpenAPI document, called in-process (AdminApi with EnrollmentApi over a
MemoryStore, hand-built requests); ``mdmgate serve --help`` and the ``[enrollment]`` table's
errors as a user meets them (a separate process)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from mdmgate.enrollment.service import EnrollmentService
from mdmgate.enrollment.settings import EnrollmentSettings
from mdmgate.server.admin import AdminApi
from mdmgate.server.app import open_store
from mdmgate.server.enrollment_api import MAX_TOKEN_HOURS, EnrollmentApi
from mdmgate.server.enrollment_http import EnrollmentEndpoints
from mdmgate.server.types import Request, Response
from mdmgate.storage.enrollment import revoked_auth
from mdmgate.storage.memory import MemoryStore
from tests.pki_helpers import certificate, csr_der, key_pem, rsa_key

TOKEN = "admin-token"
AUTH = ("authorization", f"Bearer {TOKEN}")
JSON = ("content-type", "application/json")
PUBLIC_URL = "https://mdm.example.com"
PASSPHRASE_ENV = "MDMGATE_CA_PASSPHRASE"
TOKENS = "/api/v1/enrollment/tokens"
CERTIFICATES = "/api/v1/enrollment/certificates"
#: 2026-01-01T00:00:00Z: the API's clock, which the tests move.
EPOCH = 1767225600.0
HOUR = 3600.0


@dataclass
class Clock:
    now: float = EPOCH

    def __call__(self) -> float:
        return self.now


@dataclass
class Gateway:
    """The admin API, and behind it the enrollment service, its store and its clock."""

    api: AdminApi
    service: EnrollmentService
    store: MemoryStore
    clock: Clock

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: str = "",
        raw: bytes | None = None,
        headers: tuple[tuple[str, str], ...] = (AUTH, JSON),
    ) -> tuple[int, Any]:
        data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        request = Request(method, path, query, headers, data, "1.1", "127.0.0.1:5000")
        response = await self.api(request)
        return response.status, decoded(response)

    async def token(self, **fields: Any) -> dict[str, Any]:
        """A new token (``org`` /acme unless given): the creation's answer."""
        status, body = await self.call("POST", TOKENS, {"org": "/acme", **fields})
        assert status == 201, body
        created: dict[str, Any] = body
        return created


def decoded(response: Response) -> Any:
    assert dict(response.headers)["content-type"] == "application/json"
    return json.loads(response.body)


async def gateway(**settings: Any) -> Gateway:
    """The admin API with enrollment wired as ``mdmgate serve`` wires it: the built-in CA
    on (``ca_passphrase=None`` turns it off), profile URLs under :data:`PUBLIC_URL`."""
    values: dict[str, Any] = {
        "ca_passphrase": "api test passphrase",
        "root_key": "rsa-2048",
        "public_url": PUBLIC_URL,
    }
    values.update(settings)
    clock = Clock()
    store = MemoryStore()
    service = EnrollmentService(store, EnrollmentSettings(**values), clock=clock)
    await service.start()
    endpoints = EnrollmentEndpoints(service, tls=True)
    api = AdminApi(store, TOKEN, enrollment=EnrollmentApi(service, endpoints.profile_url, clock))
    return Gateway(api, service, store, clock)


@pytest.fixture
async def gw() -> Gateway:
    return await gateway()


def iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def enroll(gw: Gateway, value: str, device_id: str) -> str:
    """A Windows enrollment through the service (what Enrollment.svc calls): the serial."""
    issued = await gw.service.enroll_windows(
        token_value=value, csr_der=csr_der(rsa_key(), device_id), context={"DeviceID": device_id}
    )
    return issued.record.serial


# --- tokens ------------------------------------------------------------------------------------


async def test_a_token_is_created_with_its_value_shown_only_then(gw: Gateway) -> None:
    created = await gw.token(
        org="/acme/paris",
        expires_in_hours=2,
        max_uses=5,
        platforms=["windows", "apple", "windows"],
        description="front desk laptops",
    )

    token, value = created["token"], created["value"]
    assert token == {
        "id": token["id"],
        "org": "/acme/paris",
        "state": "active",
        "created_at": iso(EPOCH),
        "expires_at": iso(EPOCH + 2 * HOUR),
        "max_uses": 5,
        "uses": 0,
        "platforms": ["apple", "windows"],
        "description": "front desk laptops",
        "revoked_at": None,
    }
    token_id, _, secret = value.partition(".")
    assert token_id == token["id"]
    assert len(secret) >= 32
    assert created["apple_profile_url"] == (
        f"{PUBLIC_URL}/mdm/apple/enroll?token={quote(value, safe='')}"
    )
    # The value works, and is never shown again nor kept.
    assert (await gw.service.check_token(value, platform="windows")).id == token_id
    status, shown = await gw.call("GET", f"{TOKENS}/{token_id}")
    assert (status, shown) == (200, token)
    status, listed = await gw.call("GET", TOKENS)
    assert (status, listed) == (200, {"tokens": [token]})
    stored = await gw.store.get_token(token_id)
    assert secret not in json.dumps(shown) + json.dumps(listed) + repr(stored)


async def test_a_token_lives_a_day_for_any_number_of_devices_by_default(gw: Gateway) -> None:
    token = (await gw.token())["token"]

    assert (token["expires_at"], token["max_uses"], token["platforms"]) == (
        iso(EPOCH + 24 * HOUR),
        None,
        [],
    )


async def test_tokens_are_listed_newest_first_and_by_org(gw: Gateway) -> None:
    ids = []
    for org in ("/acme", "/globex", "/acme/paris", "/acme"):
        ids.append((await gw.token(org=org))["token"]["id"])
        gw.clock.now += 60

    status, everything = await gw.call("GET", TOKENS)
    assert status == 200
    assert [t["id"] for t in everything["tokens"]] == ids[::-1]
    status, acme = await gw.call("GET", TOKENS, query="org=%2Facme")
    assert status == 200
    assert [t["id"] for t in acme["tokens"]] == [ids[3], ids[0]]
    status, nobody = await gw.call("GET", TOKENS, query="org=/initech")
    assert (status, nobody) == (200, {"tokens": []})


@pytest.mark.parametrize("org", ["acme", "/acme/", "/acme//paris", "/acme\n"])
async def test_listing_tokens_of_what_is_not_an_org_is_422(gw: Gateway, org: str) -> None:
    await gw.token(org="/acme")

    status, error = await gw.call("GET", TOKENS, query=f"org={quote(org, safe='')}")

    assert status == 422, error
    assert error["field"] == "org"
    assert "org path" in error["error"]


async def test_a_token_is_active_then_expired(gw: Gateway) -> None:
    token_id = (await gw.token(expires_in_hours=1))["token"]["id"]

    gw.clock.now = EPOCH + HOUR - 1
    assert (await gw.call("GET", f"{TOKENS}/{token_id}"))[1]["state"] == "active"
    gw.clock.now = EPOCH + HOUR
    assert (await gw.call("GET", f"{TOKENS}/{token_id}"))[1]["state"] == "expired"


async def test_a_token_used_max_uses_times_is_exhausted(gw: Gateway) -> None:
    created = await gw.token(max_uses=2)
    token_id, value = created["token"]["id"], created["value"]

    await enroll(gw, value, "device-1")
    status, shown = await gw.call("GET", f"{TOKENS}/{token_id}")
    assert (status, shown["uses"], shown["state"]) == (200, 1, "active")
    await enroll(gw, value, "device-2")

    status, shown = await gw.call("GET", f"{TOKENS}/{token_id}")
    assert (status, shown["uses"], shown["state"]) == (200, 2, "exhausted")


async def test_delete_revokes_a_token_once(gw: Gateway) -> None:
    created = await gw.token(expires_in_hours=1)
    token_id, value = created["token"]["id"], created["value"]
    gw.clock.now += 60

    status, revoked = await gw.call("DELETE", f"{TOKENS}/{token_id}")

    assert status == 200
    assert (revoked["state"], revoked["revoked_at"]) == ("revoked", iso(EPOCH + 60))
    gw.clock.now += 60
    status, again = await gw.call("DELETE", f"{TOKENS}/{token_id}")
    assert (status, again) == (200, revoked)
    # Revoked outranks expired: the state says what an administrator did.
    gw.clock.now = EPOCH + 2 * HOUR
    assert (await gw.call("GET", f"{TOKENS}/{token_id}"))[1]["state"] == "revoked"
    with pytest.raises(Exception, match="revoked"):
        await gw.service.check_token(value, platform="apple")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_an_unknown_token_is_404(gw: Gateway, method: str) -> None:
    status, error = await gw.call(method, f"{TOKENS}/et_0123456789abcdef")

    assert status == 404
    assert "et_0123456789abcdef" in error["error"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({}, "$.org", "org"),
        ({"org": "acme"}, "$.org", "org path"),
        ({"org": "/acme//paris"}, "$.org", "org path"),
        ({"org": 7}, "$.org", "str"),
        ({"org": "/acme", "expires_in_hours": 0}, "$.expires_in_hours", "> 0"),
        ({"org": "/acme", "expires_in_hours": -3}, "$.expires_in_hours", "> 0"),
        (
            {"org": "/acme", "expires_in_hours": MAX_TOKEN_HOURS + 1},
            "$.expires_in_hours",
            f"<= {MAX_TOKEN_HOURS}",
        ),
        ({"org": "/acme", "max_uses": 0}, "$.max_uses", ">= 1"),
        ({"org": "/acme", "max_uses": 1.5}, "$.max_uses", "int"),
        ({"org": "/acme", "platforms": ["android"]}, "$.platforms[0]", "android"),
        ({"org": "/acme", "platforms": "windows"}, "$.platforms", "array"),
        ({"org": "/acme", "colour": "red"}, "$.colour", "unknown field"),
        ({"org": "/acme", "value": "et_0123456789abcdef.mine"}, "$.value", "unknown field"),
    ],
)
async def test_a_token_of_the_wrong_shape_is_422_naming_the_field(
    gw: Gateway, body: dict[str, Any], field: str, words: str
) -> None:
    status, error = await gw.call("POST", TOKENS, body)

    assert status == 422, error
    assert error["field"] == field
    assert words in error["error"]
    assert await gw.store.list_tokens() == []


async def test_a_year_is_the_longest_a_token_lives(gw: Gateway) -> None:
    token = (await gw.token(expires_in_hours=MAX_TOKEN_HOURS))["token"]

    assert token["expires_at"] == iso(EPOCH + MAX_TOKEN_HOURS * HOUR)
    assert MAX_TOKEN_HOURS >= 365 * 24


async def test_a_token_needs_a_json_body(gw: Gateway) -> None:
    status, error = await gw.call("POST", TOKENS, raw=b"{org: /acme}")
    assert status == 400, error
    status, error = await gw.call(
        "POST", TOKENS, {"org": "/acme"}, headers=(AUTH, ("content-type", "text/plain"))
    )
    assert status == 415, error
    status, error = await gw.call("PUT", TOKENS, {"org": "/acme"})
    assert status == 405, error
    assert await gw.store.list_tokens() == []


async def test_the_enrollment_api_needs_the_admin_token(gw: Gateway) -> None:
    for method, path in (("POST", TOKENS), ("GET", CERTIFICATES), ("GET", "/api/v1/enrollment/ca")):
        status, error = await gw.call(method, path, {"org": "/acme"}, headers=(JSON,))
        assert status == 401, (path, error)
    assert await gw.store.list_tokens() == []


# --- issued certificates -----------------------------------------------------------------------


async def test_certificates_are_paged_in_serial_order(gw: Gateway) -> None:
    value = (await gw.token())["value"]
    serials = [await enroll(gw, value, f"device-{i}") for i in range(5)]

    pages: list[list[str]] = []
    after = ""
    while True:
        status, page = await gw.call("GET", CERTIFICATES, query=f"limit=2&after={after}")
        assert status == 200, page
        pages.append([c["serial"] for c in page["certificates"]])
        if page["next"] is None:
            break
        assert page["next"] == pages[-1][-1]
        after = page["next"]

    assert [len(p) for p in pages] == [2, 2, 1]
    listed = [serial for page in pages for serial in page]
    assert listed == sorted(serials, key=lambda s: int(s, 16))
    status, everything = await gw.call("GET", CERTIFICATES)
    assert status == 200
    assert [c["serial"] for c in everything["certificates"]] == listed
    assert everything["next"] is None


async def test_certificates_of_one_device(gw: Gateway) -> None:
    value = (await gw.token())["value"]
    await enroll(gw, value, "device-1")
    first = await enroll(gw, value, "device-2")
    gw.clock.now += 60
    second = await enroll(gw, value, "device-2")  # enrolled again: the first is superseded

    status, page = await gw.call("GET", CERTIFICATES, query="device_id=device-2")

    assert status == 200
    found = {c["serial"]: c for c in page["certificates"]}
    assert set(found) == {first, second}
    assert {c["device_id"] for c in found.values()} == {"device-2"}
    assert found[first]["revoked_at"] == iso(EPOCH + 60)
    assert "superseded" in found[first]["revocation_reason"]
    assert found[second]["revoked_at"] is None
    assert all(c["pem"] is None for c in found.values())  # the PEM is in the single view
    status, page = await gw.call("GET", CERTIFICATES, query="device_id=device-9")
    assert (status, page) == (200, {"certificates": [], "next": None})


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "ten", ""])
async def test_a_page_size_out_of_range_is_422(gw: Gateway, limit: str) -> None:
    status, error = await gw.call("GET", CERTIFICATES, query=f"limit={limit}")

    assert status == 422, error
    assert error["field"] == "limit"
    assert "1 to 1000" in error["error"]


async def test_a_certificate_is_shown_with_its_pem(gw: Gateway) -> None:
    token = await gw.token(org="/acme/paris")
    serial = await enroll(gw, token["value"], "device-1")

    status, shown = await gw.call("GET", f"{CERTIFICATES}/{serial.upper()}")

    assert status == 200, shown
    certificate = x509.load_pem_x509_certificate(shown["pem"].encode())
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert format(certificate.serial_number, "x") == serial
    assert shown["sha256"] == certificate.fingerprint(hashes.SHA256()).hex()
    assert shown["subject"] == certificate.subject.rfc4514_string()
    assert (shown["org"], shown["platform"], shown["device_id"]) == (
        "/acme/paris",
        "windows",
        "device-1",
    )
    assert shown["token_id"] == token["token"]["id"]
    assert shown["issued_at"] == iso(EPOCH)
    assert shown["not_after"] == certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (shown["renews"], shown["revoked_at"], shown["revocation_reason"]) == (None,) * 3
    assert der == (await gw.store.get_certificate(serial)).der  # type: ignore[union-attr]


async def test_an_unknown_certificate_is_404(gw: Gateway) -> None:
    for method, path in (("GET", "abc123"), ("POST", "abc123/revoke")):
        status, error = await gw.call(method, f"{CERTIFICATES}/{path}")
        assert status == 404, error
        assert "abc123" in error["error"]


async def test_revoking_a_certificate_unbinds_its_device(gw: Gateway) -> None:
    value = (await gw.token())["value"]
    serial = await enroll(gw, value, "device-1")
    other = await enroll(gw, value, "device-2")
    gw.clock.now += 60

    status, revoked = await gw.call("POST", f"{CERTIFICATES}/{serial}/revoke", {"reason": "lost"})

    assert status == 200, revoked
    assert (revoked["revoked_at"], revoked["revocation_reason"]) == (iso(EPOCH + 60), "lost")
    assert revoked["pem"] is not None
    device = await gw.store.get_device("device-1")
    assert device is not None
    assert device.auth == revoked_auth([serial])
    untouched = await gw.store.get_device("device-2")
    assert untouched is not None
    assert untouched.auth["serial"] == other
    # Once: a second revocation keeps the first time and reason.
    gw.clock.now += 60
    status, again = await gw.call("POST", f"{CERTIFICATES}/{serial}/revoke")
    assert (status, again) == (200, revoked)


async def test_a_revocation_without_a_body_gives_the_administrators_reason(gw: Gateway) -> None:
    serial = await enroll(gw, (await gw.token())["value"], "device-1")

    status, revoked = await gw.call("POST", f"{CERTIFICATES}/{serial}/revoke", headers=(AUTH,))

    assert status == 200, revoked
    assert revoked["revocation_reason"] == "revoked by an administrator"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"reason": ""}, "$.reason"), ({"reason": 5}, "$.reason"), ({"why": "lost"}, "$.why")],
)
async def test_a_revocation_of_the_wrong_shape_is_422_and_revokes_nothing(
    gw: Gateway, body: dict[str, Any], field: str
) -> None:
    serial = await enroll(gw, (await gw.token())["value"], "device-1")

    status, error = await gw.call("POST", f"{CERTIFICATES}/{serial}/revoke", body)

    assert (status, error["field"]) == (422, field)
    assert (await gw.call("GET", f"{CERTIFICATES}/{serial}"))[1]["revoked_at"] is None


# --- the CA ------------------------------------------------------------------------------------


async def test_the_ca_is_shown(gw: Gateway) -> None:
    status, shown = await gw.call("GET", "/api/v1/enrollment/ca")

    assert status == 200, shown
    ca = x509.load_pem_x509_certificate(shown["pem"].encode())
    assert ca == gw.service.ca.certificate
    assert shown["subject"] == "CN=mdmgate device CA"
    assert shown["serial"] == format(ca.serial_number, "x")
    assert shown["sha256"] == ca.fingerprint(hashes.SHA256()).hex()
    assert shown["not_after"] == ca.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def push_upload() -> dict[str, str]:
    """A push certificate as Apple issues it (the topic in the subject's UID), with its key."""
    key = rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.USER_ID, "com.apple.mgmt.External.0b5ad1a4-5c3e")])
    cert = certificate(name, key, now=dt.datetime.fromtimestamp(EPOCH, dt.UTC), days=365)
    pem = cert.public_bytes(serialization.Encoding.PEM) + key_pem(key)
    return {"pem": pem.decode("ascii")}


async def test_without_a_passphrase_what_needs_the_ca_answers_503_naming_it() -> None:
    """The CA and the push certificate's upload need the passphrase (a key is never kept in
    the clear): 503 saying where to set it. Tokens and the certificate records do not: an
    administrator may prepare tokens, and see and revoke what was issued before."""
    gw = await gateway(ca_passphrase=None)

    for method, path, body in (
        ("GET", "/api/v1/enrollment/ca", None),
        ("PUT", "/api/v1/apns/certificate", push_upload()),
    ):
        status, error = await gw.call(method, path, body)
        assert status == 503, (method, path, error)
        assert PASSPHRASE_ENV in error["error"], error
        assert "ca_passphrase" in error["error"], error
    assert await gw.store.get_material("apns") is None
    assert (await gw.call("POST", TOKENS, {"org": "/acme"}))[0] == 201
    assert await gw.call("GET", CERTIFICATES) == (200, {"certificates": [], "next": None})


# --- the OpenAPI document ----------------------------------------------------------------------

OPERATIONS = {
    (TOKENS, "post"),
    (TOKENS, "get"),
    (TOKENS + "/{id}", "get"),
    (TOKENS + "/{id}", "delete"),
    (CERTIFICATES, "get"),
    (CERTIFICATES + "/{serial}", "get"),
    (CERTIFICATES + "/{serial}/revoke", "post"),
    ("/api/v1/enrollment/ca", "get"),
    ("/api/v1/apns/certificate", "get"),
    ("/api/v1/apns/certificate", "put"),
    ("/api/v1/devices/{id}", "delete"),
    ("/api/v1/devices/{id}", "get"),
}
#: The query parameters each listing declares (every other operation declares none).
QUERIES = {
    (TOKENS, "get"): {"org"},
    (CERTIFICATES, "get"): {"device_id", "after", "limit"},
}


def refs(node: Any) -> list[str]:
    """Every ``$ref`` in a JSON document."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), ref
        assert part in node, ref
        node = node[part]
    return node


async def test_the_openapi_document_describes_every_enrollment_operation(gw: Gateway) -> None:
    status, document = await gw.call("GET", "/api/v1/openapi.json")

    assert status == 200
    documented = {(p, m) for p, ops in document["paths"].items() for m in ops}
    assert documented >= OPERATIONS
    for ref in refs(document):
        resolve(document, ref)
    for path, method in OPERATIONS:
        operation = document["paths"][path][method]
        assert operation["summary"]
        parameters = operation.get("parameters", ())
        in_path = {p["name"] for p in parameters if p["in"] == "path"}
        assert in_path == {part[1:-1] for part in path.split("/") if part.startswith("{")}
        queried = {p["name"] for p in parameters if p["in"] == "query"}
        assert queried == QUERIES.get((path, method), set()), (path, method)
        ok = [c for c in operation["responses"] if c.startswith("2")]
        assert ok, (path, method)
    schemas = document["components"]["schemas"]
    token_in = schemas["TokenIn"]["properties"]
    assert set(token_in) == {"org", "expires_in_hours", "max_uses", "platforms", "description"}
    assert token_in["expires_in_hours"]["exclusiveMinimum"] == 0
    assert token_in["expires_in_hours"]["maximum"] == MAX_TOKEN_HOURS
    assert schemas["TokenIn"]["required"] == ["org"]
    assert set(schemas["TokenOut"]["properties"]["state"]["enum"]) == {
        "active",
        "expired",
        "exhausted",
        "revoked",
    }
    create = document["paths"][TOKENS]["post"]
    asked = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    answered = create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    assert resolve(document, asked) == schemas["TokenIn"]
    assert "value" in resolve(document, answered)["properties"]


async def test_every_documented_enrollment_operation_is_routed(gw: Gateway) -> None:
    """The document and the router agree: each operation reaches its handler (an unknown id
    is that handler's 404, not the router's "no such resource")."""
    for path, method in sorted(OPERATIONS):
        concrete = path.replace("{id}", "nobody").replace("{serial}", "abc123")
        body = {"org": "/acme"} if (path, method) == (TOKENS, "post") else None
        status, answer = await gw.call(method.upper(), concrete, body)
        assert status not in (405, 501), (path, method, answer)
        assert "no such resource" not in answer.get("error", ""), (path, method, answer)


# --- the command line --------------------------------------------------------------------------


def mdmgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
    return subprocess.run(
        [sys.executable, "-m", "mdmgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environ, **(env or {})},
    )


def test_serve_help_names_the_enrollment_settings() -> None:
    done = mdmgate("serve", "--help")

    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "[enrollment]" in text
    assert PASSPHRASE_ENV in text
    for key in ("ca_passphrase", "root_key", "public_url", "apple_topic", "windows_auth_policy"):
        assert key in text, key


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('ca_pasphrase = "x"', "unknown enrollment keys: ca_pasphrase"),
        ('root_key = "ec-p256"', "enrollment root_key must be one of rsa-2048, rsa-3072"),
        ("root_key = 2048", "enrollment root_key must be a string"),
        (
            'windows_auth_policy = "Federated"',
            "windows_auth_policy Federated needs windows_federated_url",
        ),
        ('windows_auth_policy = "Kerberos"', "windows_auth_policy must be OnPremise or Federated"),
        ('ca_cert = "ca.pem"', "enrollment ca_cert and ca_key go together"),
        ('apple_profile_key = "p.key"', "apple_profile_cert and apple_profile_key go together"),
        (
            'windows_policy_url = "https://enrol.example.com/p"',
            "windows_policy_url and windows_enrollment_url go together",
        ),
        (
            'apple_scep_url = "https://scep.example.com"\napple_acme_url = "https://acme.example.com"',
            "apple_scep_url and apple_acme_url exclude each other",
        ),
        ('apple_scep_challenge = "c"', "apple_scep_challenge needs apple_scep_url"),
        ('public_url = "mdm.example.com"', "enrollment public_url 'mdm.example.com' is not an"),
        ("min_rsa_bits = 1024", "enrollment min_rsa_bits must be at least 2048"),
        ("device_validity_days = 0", "enrollment device_validity_days must be from 1"),
        ('challenge_minutes = "60"', "enrollment challenge_minutes must be a whole number"),
    ],
)
def test_an_unusable_enrollment_table_stops_serve_with_one_line(
    tmp_path: Path, table: str, needle: str
) -> None:
    config = tmp_path / "mdmgate.toml"
    config.write_text(f"[enrollment]\n{table}\n")

    done = mdmgate("serve", "--db", "memory:", "--listen", "127.0.0.1:0", "--config", str(config))

    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("mdmgate: error: ")
    assert done.stderr.count("\n") == 1
    assert needle in done.stderr


def test_enrollment_must_be_a_table(tmp_path: Path) -> None:
    config = tmp_path / "mdmgate.toml"
    config.write_text('enrollment = "on"\n')

    done = mdmgate("serve", "--db", "memory:", "--config", str(config))

    assert (done.returncode, done.stderr) == (2, "mdmgate: error: enrollment must be a table\n")


def test_an_unreadable_ca_file_stops_serve_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "mdmgate.toml"
    missing = tmp_path / "nowhere" / "ca.pem"
    config.write_text(
        f'[enrollment]\nca_passphrase = "p"\nca_cert = "{missing}"\nca_key = "{missing}.key"\n'
    )

    done = mdmgate("serve", "--db", "memory:", "--listen", "127.0.0.1:0", "--config", str(config))

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"mdmgate: error: enrollment: cannot read the CA certificate {missing}:"
        " No such file or directory"
    )


async def test_a_stored_ca_with_another_passphrase_stops_serve_naming_it(tmp_path: Path) -> None:
    """The CA a first start created in the database cannot be opened with another
    passphrase: the node refuses to start (exit 2) and says where the passphrase is set."""
    db = f"sqlite:///{tmp_path / 'gateway.db'}"
    first = EnrollmentService(
        await open_store(db), EnrollmentSettings(ca_passphrase="first", root_key="rsa-2048")
    )
    await first.start()
    await first.store.aclose()

    done = await trio.to_thread.run_sync(
        lambda: mdmgate(
            "serve", "--db", db, "--listen", "127.0.0.1:0", env={PASSPHRASE_ENV: "second"}
        )
    )

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("mdmgate: error: enrollment: the CA kept in the store cannot be used")
    assert PASSPHRASE_ENV in last
