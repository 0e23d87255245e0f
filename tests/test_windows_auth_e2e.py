"""Windows devices end to end, authentication and the device's life cycle: the emulator in
windows_emulator.py runs whole OMA-DM sessions against the real server (real sockets) over
the SQLite store, and the admin API sets credentials and shows what came of it.

Covered: the registered credential type is the only one accepted (no downgrade to basic);
server authentication (the client's challenge, server credentials per device or for the
gateway, nonces both ways, rotation through the admin API); the cap on offers of a command
that never gets an answer; the user's unenrollment."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from mdmgate.server.app import ConfigError, load_config
from mdmgate.storage import Device
from mdmgate.storage.memory import MemoryStore
from mdmgate.windows.service import WindowsService
from tests.test_windows_e2e import AUTH, NONCE, PASSWORD, gateway, get, header_status
from tests.windows_emulator import WindowsDevice

SERVER_ID = "mdmgate.example"
SERVER_SECRET = "server battery staple"
POISON = "./Vendor/MSFT/Poison"
GOOD = "./DevDetail/SwV"


# --- item 5: the registered method is the only one accepted ----------------------------------


@pytest.mark.parametrize(("registered", "sent"), [("md5", "basic"), ("basic", "md5")])
async def test_only_the_registered_credential_type_is_accepted(
    tmp_path: Path, registered: str, sent: str
) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-downgrade", tree={GOOD: ("chr", "10.0.26100")})
        await gw.enroll(device, method=registered)
        command_id = await gw.command(client, "win-downgrade", get(GOOD))
        device.auth_type = sent  # the right secret, the other credential type
        log = await device.session(client)
        assert header_status(log[0].reply) == "401"
        chal = log[0].reply.commands[0].chal if log[0].reply else None
        assert chal is not None
        assert chal["Type"] == f"syncml:auth-{registered}"  # challenged for the registered one
        assert device.received == []
        assert await gw.state(client, command_id) == ("queued", None)
        # With the registered type, the same secret is accepted.
        device.auth_type = registered
        log = await device.session(client)
        assert header_status(log[0].reply) == "212"
        assert await gw.state(client, command_id) == ("acknowledged", "200")


# --- item 6: server authentication -----------------------------------------------------------


async def test_client_challenges_the_server_which_answers_with_its_cred(tmp_path: Path) -> None:
    async with (
        gateway(tmp_path, server_username=SERVER_ID, server_secret=SERVER_SECRET) as gw,
        gw.client() as client,
    ):
        device = WindowsDevice(
            "win-mutual",
            tree={"./DevDetail/SwV": ("chr", "10.0.26100")},
            server_username=SERVER_ID,
            server_secret=SERVER_SECRET,
            server_nonce=b"issued by the client",
        )
        await gw.enroll(device)
        command_id = await gw.command(client, "win-mutual", get("./DevDetail/SwV"))
        await device.session(client)
        # The gateway did not know the client wants it to authenticate: the client refused
        # its first message (407 + Chal) and every command in it, without running them. The
        # gateway answered with its Cred over the client's new nonce and offered the refused
        # command again: the client accepted (212) and ran it, in the same session.
        assert device.server_auth_log == ["407", "212"]
        assert device.refused == [("Get", "./DevDetail/SwV")]
        assert device.received == [("Get", "./DevDetail/SwV")]
        assert await gw.state(client, command_id) == ("acknowledged", "200")
        # The nonce the client issued with its 212 is stored for the next session.
        facts = await gw.facts(client, "win-mutual")
        assert base64.b64decode(facts["syncml_server_nonce"]) == device.server_nonce
        # Next session: the gateway's first message carries its Cred (the client asked once),
        # over the rotated nonce, and the client accepts at once.
        second = await gw.command(client, "win-mutual", get("./DevDetail/SwV"))
        await device.session(client)
        assert device.server_auth_log == ["407", "212", "212"]
        assert len(device.refused) == 1
        assert await gw.state(client, second) == ("acknowledged", "200")


async def test_server_credentials_per_device_override_the_gateways(tmp_path: Path) -> None:
    async with (
        gateway(tmp_path, server_username=SERVER_ID, server_secret=SERVER_SECRET) as gw,
        gw.client() as client,
    ):
        device = WindowsDevice(
            "win-own-server",
            tree={GOOD: ("chr", "10.0.26100")},
            server_username="tenant-7",
            server_secret="tenant secret",
            server_nonce=b"n0",
        )
        await gw.enroll(device, server_username="tenant-7", server_secret="tenant secret")
        command_id = await gw.command(client, "win-own-server", get("./DevDetail/SwV"))
        await device.session(client)
        assert device.server_auth_log == ["407", "212"]
        assert await gw.state(client, command_id) == ("acknowledged", "200")


async def test_wrong_server_secret_gives_up_without_losing_the_command(tmp_path: Path) -> None:
    async with (
        gateway(tmp_path, server_username=SERVER_ID, server_secret="not what the client has") as gw,
        gw.client() as client,
    ):
        device = WindowsDevice(
            "win-distrust", server_username=SERVER_ID, server_secret=SERVER_SECRET
        )
        await gw.enroll(device)
        command_id = await gw.command(client, "win-distrust", get("./DevDetail/SwV"))
        log = await device.session(client, limit=20)
        # A few tries with fresh nonces, then the session ends: no loop, nothing run, and
        # the refusal is not taken for the command's result.
        assert device.server_auth_log[0] == "407"
        assert set(device.server_auth_log[1:]) == {"401"}
        assert 2 <= len(device.server_auth_log) <= 4
        assert len(log) <= 5
        assert device.received == []
        assert await gw.state(client, command_id) == ("sent", None)


async def put_auth(client: httpx.AsyncClient) -> tuple[WindowsDevice, httpx.Response]:
    """Registers win-api through the admin API and sets its credentials (both sides)."""
    device = WindowsDevice(
        "win-api",
        tree={GOOD: ("chr", "10.0.26100")},
        username="win-api",
        secret=PASSWORD,
        nonce=NONCE,
        server_username=SERVER_ID,
        server_secret=SERVER_SECRET,
        server_nonce=b"provisioned-nonce",
    )
    r = await client.post(
        "/api/v1/devices",
        json=[{"id": "win-api", "platform": "windows", "org": "/acme"}],
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    body = {
        "method": "md5",
        "username": "win-api",
        "secret": PASSWORD,
        "server_username": SERVER_ID,
        "server_secret": SERVER_SECRET,
        "server_auth": "required",
        "client_nonce": base64.b64encode(NONCE).decode(),
        "server_nonce": base64.b64encode(b"provisioned-nonce").decode(),
    }
    r = await client.put("/api/v1/devices/win-api/auth", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return device, r


async def test_auth_api_sets_credentials_never_showing_secrets(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device, r = await put_auth(client)
        shown = r.json()
        assert shown["method"] == "md5"
        assert shown["server_username"] == SERVER_ID
        assert shown["secret_configured"]
        assert shown["server_secret_configured"]
        assert PASSWORD not in r.text
        assert SERVER_SECRET not in r.text
        got = await client.get("/api/v1/devices/win-api/auth", headers=AUTH)
        assert got.json() == shown
        device_view = await client.get("/api/v1/devices/win-api", headers=AUTH)
        assert PASSWORD not in device_view.text
        assert SERVER_SECRET not in device_view.text
        # server_auth "required": the gateway authenticates in its first message already.
        log = await device.session(client)
        assert header_status(log[0].reply) == "212"
        assert device.server_auth_log == []  # nothing to answer: statuses only, ended at once
        command_id = await gw.command(client, "win-api", get("./DevDetail/SwV"))
        await device.session(client)
        assert device.server_auth_log == ["212"]
        assert await gw.state(client, command_id) == ("acknowledged", "200")


async def test_auth_api_rotates_secrets_and_nonces(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device, _ = await put_auth(client)
        # A fresh client nonce makes the device's digest stale: one challenge.
        r = await client.post(
            "/api/v1/devices/win-api/auth/rotate", json={"new_client_nonce": True}, headers=AUTH
        )
        assert r.status_code == 200, r.text
        fresh = base64.b64decode(r.json()["client_nonce"])
        assert fresh not in (NONCE, device.nonce)
        log = await device.session(client)
        assert header_status(log[0].reply) == "401"
        log = await device.session(client)
        assert header_status(log[0].reply) == "212"
        # A new device secret: the old one is refused.
        r = await client.post(
            "/api/v1/devices/win-api/auth/rotate", json={"secret": "new secret"}, headers=AUTH
        )
        assert r.status_code == 200, r.text
        assert "new secret" not in r.text
        log = await device.session(client)
        assert header_status(log[0].reply) == "401"
        device.secret = "new secret"
        log = await device.session(client)
        assert header_status(log[0].reply) == "212"
        # A new server secret and server nonce (provisioned on the client alike).
        r = await client.post(
            "/api/v1/devices/win-api/auth/rotate",
            json={
                "server_secret": "rotated server secret",
                "server_nonce": base64.b64encode(b"second provisioned").decode(),
            },
            headers=AUTH,
        )
        assert r.status_code == 200, r.text
        device.server_secret, device.server_nonce = "rotated server secret", b"second provisioned"
        command_id = await gw.command(client, "win-api", get("./DevDetail/SwV"))
        await device.session(client)
        assert device.server_auth_log[-1] == "212"
        assert device.refused == []
        assert await gw.state(client, command_id) == ("acknowledged", "200")


@pytest.mark.parametrize(
    ("path", "body", "field", "needle"),
    [
        ("auth", {"method": "md5", "username": "u"}, "$.secret", "secret"),
        (
            "auth",
            {"method": "md5", "username": "u", "secret": "s", "colour": 1},
            "$.colour",
            "colour",
        ),
        ("auth", {"method": "kerberos"}, "$.method", "kerberos"),
        ("auth", {"method": "certificate", "sha256": "xyz"}, "$.sha256", "hex"),
        (
            "auth",
            {"method": "basic", "username": "u", "secret": "s", "server_username": "gw"},
            "$.server_secret",
            "together",
        ),
        (
            "auth",
            {"method": "md5", "username": "u", "secret": "s", "client_nonce": "not base64!"},
            "$.client_nonce",
            "base64",
        ),
        ("auth/rotate", {}, "$", "nothing"),
        ("auth/rotate", {"sekret": "x"}, "$.sekret", "sekret"),
        (
            "auth/rotate",
            {"client_nonce": "AAAA", "new_client_nonce": True},
            "$.client_nonce",
            "not both",
        ),
        ("auth/rotate", {"server_secret": "x"}, "$.server_secret", "server_username"),
    ],
)
async def test_auth_api_refuses_bad_input_clearly(
    tmp_path: Path, path: str, body: dict[str, Any], field: str, needle: str
) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-bad")
        await gw.enroll(device)
        method = "PUT" if path == "auth" else "POST"
        r = await client.request(method, f"/api/v1/devices/win-bad/{path}", json=body, headers=AUTH)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field
        assert needle in r.json()["error"]
        # Nothing changed: the device still checks in with its credentials.
        log = await device.session(client)
        assert header_status(log[0].reply) == "212"


async def test_auth_api_unknown_device_and_other_platforms(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        r = await client.get("/api/v1/devices/ghost/auth", headers=AUTH)
        assert r.status_code == 404
        r = await client.post(
            "/api/v1/devices/ghost/auth/rotate", json={"new_client_nonce": True}, headers=AUTH
        )
        assert r.status_code == 404
        await gw.store.upsert_devices([Device("mac-1", "macos")])
        r = await client.put(
            "/api/v1/devices/mac-1/auth",
            json={"method": "md5", "username": "u", "secret": "s"},
            headers=AUTH,
        )
        assert r.status_code == 422
        assert "Windows" in r.json()["error"]
        r = await client.put("/api/v1/devices/mac-1/auth", content=b"{", headers=AUTH)
        assert r.status_code in (400, 415)
        doc = (await client.get("/api/v1/openapi.json", headers=AUTH)).json()
        assert "put" in doc["paths"]["/api/v1/devices/{id}/auth"]
        assert "post" in doc["paths"]["/api/v1/devices/{id}/auth/rotate"]
        schemas = doc["components"]["schemas"]
        assert "failed" in schemas["DeliveryState"]["enum"]
        assert "offers" in schemas["DeliveryOut"]["properties"]
        assert "secret" not in schemas["WindowsAuthOut"]["properties"]


# --- item 8: poison commands -----------------------------------------------------------------


@pytest.mark.parametrize("breakage", ["crash", "answer refused"])
async def test_a_command_never_answered_fails_after_max_offers(
    tmp_path: Path, breakage: str
) -> None:
    async with gateway(tmp_path, max_offers=3) as gw, gw.client() as client:
        device = WindowsDevice("win-poison", tree={GOOD: ("chr", "10.0.26100")})
        if breakage == "crash":
            device.crash_on = POISON
        else:
            device.mangle_on = POISON
        await gw.enroll(device)
        poison = await gw.command(client, "win-poison", get(POISON))
        good = await gw.command(client, "win-poison", get(GOOD))
        for _ in range(3):
            await device.session(client)
        # Offered three times (the first time with the command queued behind it, then
        # alone, so that the command behind it is not taken down with it) ...
        assert [t for _, t in device.received].count(POISON) == 3
        state, status = await gw.state(client, poison)
        assert state == "sent"
        # ... and then given up: failed, with the reason. The device works again.
        log = await device.session(client)
        state, status = await gw.state(client, poison)
        assert state == "failed"
        assert status == "offered 3 times without an answer"
        assert await gw.state(client, good) == ("acknowledged", "200")
        assert [t for _, t in device.received].count(POISON) == 3
        assert log[-1].reply is not None
        assert log[-1].reply.final
        log = await device.session(client)
        assert len(log) == 1  # nothing left: statuses only
        r = await client.get(f"/api/v1/commands/{poison}", headers=AUTH)
        assert r.json()["deliveries"][0]["offers"] == 3


def test_max_offers_default_and_config(tmp_path: Path) -> None:
    assert WindowsService(MemoryStore()).max_offers == 5
    config = tmp_path / "mdmgate.toml"
    config.write_text(
        '[windows]\nmax_offers = 2\nserver_username = "gw"\nserver_secret = "s"\n'
        'server_auth = "required"\n'
    )
    loaded = load_config(str(config), {})
    assert loaded.windows_max_offers == 2
    assert (loaded.windows_server_username, loaded.windows_server_secret) == ("gw", "s")
    assert loaded.windows_server_auth == "required"
    assert load_config(None, {}).windows_max_offers == 5
    for bad, needle in (
        ("[windows]\nmax_offers = 0\n", "max_offers"),
        ('[windows]\nserver_username = "gw"\n', "together"),
        ("[windows]\nmax_ofers = 3\n", "max_ofers"),
        ('[windows]\nserver_auth = "sometimes"\n', "server_auth"),
    ):
        config.write_text(bad)
        with pytest.raises(ConfigError, match=needle):
            load_config(str(config), {})


# --- item 9: user-requested unenrollment -----------------------------------------------------


async def test_user_requested_unenrollment(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, gw.client() as client:
        device = WindowsDevice("win-leaving", tree={GOOD: ("chr", "10.0.26100")})
        await gw.enroll(device)
        first = await gw.command(client, "win-leaving", get(GOOD))
        second = await gw.command(client, "win-leaving", get(POISON))
        device.request_unenrollment()
        log = await device.session(client)
        # The session is answered normally (every command 200) and hands nothing out.
        reply = log[0].reply
        assert header_status(reply) == "212"
        assert reply is not None
        assert reply.final
        assert all(c.data == "200" for c in reply.commands[1:] if c.name == "Status")
        assert len(log) == 1
        assert device.received == []
        for command_id in (first, second):
            assert await gw.state(client, command_id) == ("error", "unenrolled")
        facts = await gw.facts(client, "win-leaving")
        assert facts["unenrolled"]["reason"] == "user requested unenrollment (Alert 1226)"
        assert facts["unenrolled"]["at"].endswith("Z")
        assert facts["enrollment_events"][-1]["event"] == "unenrolled"
        # Later sessions are refused exactly as an unknown device's are (403 on the SyncHdr,
        # nothing else), so an unauthenticated caller cannot tell the two apart.
        log = await device.session(client)
        assert header_status(log[0].reply) == "403"
        stranger = WindowsDevice("win-stranger")
        stranger.session_count = device.session_count - 1
        unknown = await stranger.session(client)
        assert log[0].status == unknown[0].status == 200
        assert unknown[0].reply is not None
        assert log[0].reply is not None
        assert [(c.name, c.data) for c in log[0].reply.commands] == [
            (c.name, c.data) for c in unknown[0].reply.commands
        ]
        # Commands can still be queued (for when it comes back) but are not handed out.
        later = await gw.command(client, "win-leaving", get(GOOD))
        # An update without credentials (a console syncing its inventory) does not re-admit.
        r = await client.post(
            "/api/v1/devices",
            json=[{"id": "win-leaving", "platform": "windows", "org": "/acme/sales"}],
            headers=AUTH,
        )
        assert r.status_code == 200
        log = await device.session(client)
        assert header_status(log[0].reply) == "403"
        # Registering it again with credentials (re-enrolment) clears the mark.
        r = await client.post(
            "/api/v1/devices",
            json=[
                {
                    "id": "win-leaving",
                    "platform": "windows",
                    "org": "/acme",
                    "auth": {"method": "md5", "username": "win-leaving", "secret": PASSWORD},
                }
            ],
            headers=AUTH,
        )
        assert r.status_code == 200
        log = await device.session(client)
        assert header_status(log[0].reply) == "212"
        assert device.received == [("Get", GOOD)]
        assert await gw.state(client, later) == ("acknowledged", "200")
        facts = await gw.facts(client, "win-leaving")
        assert "unenrolled" not in facts
        assert [e["event"] for e in facts["enrollment_events"]] == ["unenrolled", "re-registered"]
