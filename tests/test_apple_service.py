"""The Apple endpoints' policy, called directly: identity binding, enrollment, the command
exchange (Idle, results, NotNow), results turned into facts, and the DDM endpoints."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mdmgate import plist
from mdmgate.apple import commands, ddm, identity, service
from mdmgate.apple.service import AppleService
from mdmgate.server.types import Request, Response
from mdmgate.storage import Device, Store, StoredDeclaration
from tests.stores import BACKENDS, open_backend

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs7
    from cryptography.x509.oid import NameOID
except ImportError:  # pragma: no cover - the signature test is skipped then
    pass

CHECKIN = "application/x-apple-aspen-mdm-checkin"
CERT_A = b"0\x82\x01\x0a fake DER identity certificate A"
CERT_B = b"0\x82\x01\x0a fake DER identity certificate B"
UDID = "UDID-A"


def sha(cert: bytes) -> str:
    return hashlib.sha256(cert).hexdigest()


def put(
    path: str,
    value: object,
    *,
    cert: bytes | None = CERT_A,
    kind: str = CHECKIN,
    body: bytes | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    method: str = "PUT",
) -> Request:
    data = plist.dumps(value) if body is None else body
    return Request(
        method,
        path,
        "",
        (("content-type", kind), *headers),
        data,
        "1.1",
        "127.0.0.1:5000",
        cert,
    )


def checkin(message: dict[str, Any], **kw: Any) -> Request:
    return put("/mdm/apple/checkin", message, **kw)


def report(
    status: str,
    command_uuid: str | None = None,
    udid: str = UDID,
    cert: bytes | None = CERT_A,
    **keys: Any,
) -> Request:
    body: dict[str, Any] = {"Status": status, "UDID": udid, **keys}
    if command_uuid is not None:
        body["CommandUUID"] = command_uuid
    return put("/mdm/apple/connect", body, kind="application/x-apple-aspen-mdm", cert=cert)


def authenticate(udid: str = UDID, **extra: Any) -> dict[str, Any]:
    return {
        "MessageType": "Authenticate",
        "UDID": udid,
        "Topic": "com.apple.mgmt.External.1",
        "OSVersion": "17.4",
        "ProductName": "iPhone15,2",
        "SerialNumber": "C02XYZ",
        **extra,
    }


def uuid_of(response: Response) -> str | None:
    assert response.status == 200, response.body
    if not response.body:
        return None
    assert dict(response.headers)["content-type"] == "application/xml"
    value = plist.loads(response.body)
    assert isinstance(value, dict)
    return str(value["CommandUUID"])


def command_body(uuid: str, request_type: str = "DeviceInformation", **keys: Any) -> bytes:
    return plist.dumps({"CommandUUID": uuid, "Command": {"RequestType": request_type, **keys}})


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path)
    await s.upsert_devices(
        [
            Device(UDID, "ios", "/acme", "17.4", supervised=True),
            Device("UDID-B", "ios", "/acme", "16.0", supervised=False),
            Device("MAC-1", "macos", "/acme", "14.4", supervised=True),
            Device("OLD-1", "ios", "/acme", "9.3", supervised=True),
        ]
    )
    yield s
    await s.aclose()


async def enrolled(store: Store, udid: str = UDID, cert: bytes = CERT_A) -> AppleService:
    """A service the device has authenticated with (reporting its registered OS version)."""
    svc = AppleService(store)
    known = await store.get_device(udid)
    about = {"OSVersion": known.os_version} if known is not None and known.os_version else {}
    assert (await svc.checkin(checkin(authenticate(udid, **about), cert=cert))).status == 200
    return svc


# -- enrollment and identity


def token_update(udid: str = UDID) -> dict[str, Any]:
    return {
        "MessageType": "TokenUpdate",
        "UDID": udid,
        "Topic": "com.apple.mgmt.External.1",
        "Token": bytes.fromhex("00aabb"),
        "PushMagic": "magic-1",
    }


async def test_authenticate_binds_the_certificate_and_keeps_the_first_queue(
    store: Store,
) -> None:
    await store.enqueue("early", "apple", command_body("early"), [UDID])
    svc = AppleService(store)
    response = await svc.checkin(checkin(authenticate()))
    assert response.status == 200
    assert plist.loads(response.body) == {}
    device = await store.get_device(UDID)
    assert device is not None
    assert device.auth == {"method": "certificate", "sha256": sha(CERT_A)}
    enrollment = device.facts["apple_enrollment"]
    assert enrollment["enrolled"] is False
    assert enrollment["topic"] == "com.apple.mgmt.External.1"
    assert enrollment["serial"] == "C02XYZ"
    # Queued before the device's first enrollment: it is for this enrollment.
    status = await store.command_status("early")
    assert status is not None
    assert status.deliveries[0].state == "queued"
    # Authenticate again before TokenUpdate (an enrollment retried): still kept.
    assert (await svc.checkin(checkin(authenticate()))).status == 200
    assert (await svc.checkin(checkin(token_update()))).status == 200
    assert uuid_of(await svc.connect(report("Idle"))) == "early"


async def test_authenticate_of_an_enrolled_device_clears_the_queue(store: Store) -> None:
    svc = await enrolled(store)
    assert (await svc.checkin(checkin(token_update()))).status == 200
    await store.enqueue("old", "apple", command_body("old"), [UDID])
    assert (await svc.checkin(checkin(authenticate()))).status == 200
    status = await store.command_status("old")
    assert status is not None
    assert status.deliveries[0].state == "error"
    assert status.deliveries[0].status == "re-enrolled"
    # Nothing left to hand out.
    assert uuid_of(await svc.connect(report("Idle"))) is None
    # After a CheckOut (which ends the open commands), the next enrollment is a first one.
    assert (await svc.checkin(checkin(token_update()))).status == 200
    assert (await svc.checkin(checkin({"MessageType": "CheckOut", "UDID": UDID}))).status == 200
    await store.enqueue("next", "apple", command_body("next"), [UDID])
    assert (await svc.checkin(checkin(authenticate()))).status == 200
    assert uuid_of(await svc.connect(report("Idle"))) == "next"


async def test_authenticate_updates_the_os_version(store: Store) -> None:
    changed: list[str] = []
    svc = AppleService(store, on_devices_changed=changed.extend)
    message = authenticate("OLD-1", OSVersion="9.3.5", ProductName="iPhone8,1")
    assert (await svc.checkin(checkin(message))).status == 200
    device = await store.get_device("OLD-1")
    assert device is not None
    assert device.os_version == "9.3.5"
    assert service.expected_install_mode(device) == "prompt"
    assert changed == ["OLD-1"]  # the fleet index reads the version again
    update = authenticate("OLD-1", OSVersion="16.7.8", ProductName="iPhone10,4", Model="MQ6L2")
    assert (await svc.checkin(checkin(update))).status == 200
    device = await store.get_device("OLD-1")
    assert device is not None
    assert device.os_version == "16.7.8"
    enrollment = device.facts["apple_enrollment"]
    assert (enrollment["product"], enrollment["model"]) == ("iPhone10,4", "MQ6L2")
    assert service.expected_install_mode(device) == "silent"
    # Without OSVersion (or with the same one) nothing is rewritten.
    quiet = {k: v for k, v in update.items() if k != "OSVersion"}
    assert (await svc.checkin(checkin(quiet))).status == 200
    assert (await svc.checkin(checkin(update))).status == 200
    device = await store.get_device("OLD-1")
    assert device is not None
    assert device.os_version == "16.7.8"
    assert changed == ["OLD-1", "OLD-1"]


async def test_token_update_stores_token_magic_topic(store: Store) -> None:
    svc = await enrolled(store)
    message = {
        "MessageType": "TokenUpdate",
        "UDID": UDID,
        "Topic": "com.apple.mgmt.External.1",
        "Token": bytes.fromhex("00aabb"),
        "PushMagic": "magic-1",
        "UnlockToken": b"unlock",
    }
    response = await svc.checkin(checkin(message))
    assert response.status == 200
    device = await store.get_device(UDID)
    assert device is not None
    assert device.facts["apns"] == {
        "token": "00aabb",
        "push_magic": "magic-1",
        "topic": "com.apple.mgmt.External.1",
    }
    assert device.facts["apple_enrollment"]["enrolled"] is True
    assert base64.b64decode(device.auth["unlock_token"]) == b"unlock"
    assert "unlock" not in json.dumps(device.facts)
    # CheckOut ends the enrollment and the queue.
    await store.enqueue("c1", "apple", command_body("c1"), [UDID])
    out = await svc.checkin(checkin({"MessageType": "CheckOut", "UDID": UDID}))
    assert out.status == 200
    device = await store.get_device(UDID)
    assert device is not None
    assert device.facts["apple_enrollment"]["enrolled"] is False
    status = await store.command_status("c1")
    assert status is not None
    assert status.deliveries[0].status == "checked out"


async def test_forged_udid_on_another_devices_certificate_is_refused(store: Store) -> None:
    svc = await enrolled(store)
    await svc.checkin(checkin(authenticate("UDID-B"), cert=CERT_B))
    # Device B's certificate claiming device A: refused on every channel, never 401.
    forged = await svc.checkin(checkin(authenticate(UDID), cert=CERT_B))
    assert forged.status == 403
    token = {"MessageType": "TokenUpdate", "UDID": UDID, "Token": b"x", "PushMagic": "m"}
    assert (await svc.checkin(checkin(token, cert=CERT_B))).status == 403
    assert (await svc.checkin(checkin(token, cert=None))).status == 403
    assert (await svc.connect(report("Idle", cert=CERT_B))).status == 403
    device = await store.get_device(UDID)
    assert device is not None
    assert device.auth["sha256"] == sha(CERT_A)
    # The right certificate still works, and re-authenticating with it is fine.
    assert (await svc.checkin(checkin(token))).status == 200
    assert (await svc.checkin(checkin(authenticate()))).status == 200


async def test_unregistered_is_refused_and_dev_registers(store: Store) -> None:
    message = authenticate("NEW-1", ProductName="iPad13,1")
    assert (await AppleService(store).checkin(checkin(message))).status == 403
    assert await store.get_device("NEW-1") is None
    dev = AppleService(store, dev=True)
    assert (await dev.checkin(checkin(message))).status == 200
    device = await store.get_device("NEW-1")
    assert device is not None
    assert (device.platform, device.org, device.os_version) == ("ipados", "/", "17.4")
    assert device.auth["sha256"] == sha(CERT_A)
    mac = authenticate("NEW-2", ProductName="Mac14,2")
    assert (await dev.checkin(checkin(mac, cert=CERT_B))).status == 200
    device = await store.get_device("NEW-2")
    assert device is not None
    assert device.platform == "macos"


async def test_messages_before_authenticate_are_refused(store: Store) -> None:
    svc = AppleService(store)
    assert (await svc.connect(report("Idle"))).status == 403
    assert (await svc.connect(report("Idle", udid="NOBODY"))).status == 403


async def test_refusals_are_the_same_for_unknown_and_enrolled_devices(store: Store) -> None:
    svc = await enrolled(store)
    answers: list[Response] = []
    for udid in (UDID, "NOBODY", "UDID-B"):  # enrolled, unknown, registered only
        for cert in (CERT_B, None):
            if not (udid == "UDID-B" and cert is not None):  # that would enroll UDID-B
                answers.append(await svc.checkin(checkin(authenticate(udid), cert=cert)))
            answers.append(await svc.checkin(checkin(token_update(udid), cert=cert)))
            answers.append(await svc.connect(report("Idle", udid=udid, cert=cert)))
    assert len(answers) == 17
    first = answers[0]
    assert first.status == 403
    assert first.body == b"device identity not verified\n"
    assert {(a.status, a.headers, a.body) for a in answers} == {
        (first.status, first.headers, first.body)
    }


async def test_bad_requests(store: Store) -> None:
    svc = await enrolled(store)
    wrong = await svc.checkin(checkin(authenticate(), kind="application/xml"))
    assert wrong.status == 415
    assert (await svc.checkin(checkin(authenticate(), method="POST"))).status == 405
    bad = await svc.checkin(checkin({}, body=b"<plist><dict><key>x</key>"))
    assert bad.status == 400
    assert b"malformed check-in" in bad.body
    no_type = await svc.checkin(checkin({"UDID": UDID}))
    assert no_type.status == 400
    assert b"MessageType" in no_type.body
    assert (await svc.checkin(checkin({"MessageType": "CheckOut"}))).status == 400
    user = {"MessageType": "UserAuthenticate", "UDID": UDID, "UserID": "u1"}
    assert (await svc.checkin(checkin(user))).status == 410
    not_dict = await svc.connect(put("/mdm/apple/connect", ["x"]))
    assert not_dict.status == 400
    assert (await svc.connect(put("/mdm/apple/connect", {"UDID": UDID}))).status == 400
    unknown = await svc.connect(report("Sleeping", "c1"))
    assert unknown.status == 400
    assert b"Sleeping" in unknown.body
    assert (await svc.connect(put("/mdm/apple/connect", {"Status": "Idle"}))).status == 400
    assert (await svc.connect(report("Acknowledged"))).status == 400  # no CommandUUID


async def test_bootstrap_token(store: Store) -> None:
    svc = await enrolled(store, "MAC-1")
    get = {"MessageType": "GetBootstrapToken", "UDID": "MAC-1"}
    assert plist.loads((await svc.checkin(checkin(get))).body) == {}
    put_token = {"MessageType": "SetBootstrapToken", "UDID": "MAC-1", "BootstrapToken": b"bt"}
    assert (await svc.checkin(checkin(put_token))).status == 200
    assert plist.loads((await svc.checkin(checkin(get))).body) == {"BootstrapToken": b"bt"}
    clear = {"MessageType": "SetBootstrapToken", "UDID": "MAC-1"}
    assert (await svc.checkin(checkin(clear))).status == 200
    assert plist.loads((await svc.checkin(checkin(get))).body) == {}


# -- the command exchange


async def test_idle_command_acknowledged_next_then_empty(store: Store) -> None:
    svc = await enrolled(store)
    await store.enqueue("c1", "apple", command_body("c1"), [UDID])
    await store.enqueue("c2", "apple", command_body("c2"), [UDID])
    first = await svc.connect(report("Idle"))
    assert uuid_of(first) == "c1"
    assert first.body == command_body("c1")
    assert uuid_of(await svc.connect(report("Acknowledged", "c1", QueryResponses={}))) == "c2"
    assert uuid_of(await svc.connect(report("Acknowledged", "c2"))) is None
    # A repeated report is stored once and changes nothing.
    again = await svc.connect(report("Error", "c1"))
    assert uuid_of(again) is None
    status = await store.command_status("c1")
    assert status is not None
    (delivery,) = status.deliveries
    assert delivery.state == "acknowledged"
    assert delivery.status == "Acknowledged"
    assert delivery.result is not None
    assert plist.loads(delivery.result)["QueryResponses"] == {}
    # A CommandUUID the device does not hold: nothing recorded, the exchange goes on.
    assert uuid_of(await svc.connect(report("Acknowledged", "nope"))) is None
    assert await store.command_status("nope") is None


async def test_an_idle_finds_what_waits(store: Store) -> None:
    """An Idle with nothing queued gets no command (the read said so: no take); once
    something waits, the next Idle hands it out, and a deferred one still waits."""
    svc = await enrolled(store)
    assert uuid_of(await svc.connect(report("Idle"))) is None
    await store.enqueue("c1", "apple", command_body("c1"), [UDID])
    assert uuid_of(await svc.connect(report("Idle"))) == "c1"
    # Deferred by the device, it still waits: the next Idle offers it again.
    assert uuid_of(await svc.connect(report("NotNow", "c1"))) is None
    assert uuid_of(await svc.connect(report("Idle"))) == "c1"


async def test_not_now_is_offered_again_after_idle(store: Store) -> None:
    svc = await enrolled(store)
    await store.enqueue("c1", "apple", command_body("c1"), [UDID])
    await store.enqueue("c2", "apple", command_body("c2"), [UDID])
    assert uuid_of(await svc.connect(report("Idle"))) == "c1"
    # Not the NotNow'd command again in this exchange: the next one.
    assert uuid_of(await svc.connect(report("NotNow", "c1"))) == "c2"
    assert uuid_of(await svc.connect(report("NotNow", "c2"))) is None
    status = await store.command_status("c1")
    assert status is not None
    assert status.deliveries[0].state == "not_now"
    # After the next Idle both come back, in order.
    assert uuid_of(await svc.connect(report("Idle"))) == "c1"
    assert uuid_of(await svc.connect(report("Acknowledged", "c1"))) == "c2"
    assert uuid_of(await svc.connect(report("Acknowledged", "c2"))) is None


async def test_command_format_error_is_an_error(store: Store) -> None:
    svc = await enrolled(store)
    await store.enqueue("c1", "apple", command_body("c1"), [UDID])
    assert uuid_of(await svc.connect(report("Idle"))) == "c1"
    chain = [{"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain"}]
    assert uuid_of(await svc.connect(report("CommandFormatError", "c1", ErrorChain=chain))) is None
    status = await store.command_status("c1")
    assert status is not None
    assert status.deliveries[0].state == "error"
    assert status.deliveries[0].status == "CommandFormatError"


# -- results as state


async def test_installed_application_list_leaves_out_installing(store: Store) -> None:
    svc = await enrolled(store)
    body = commands.installed_application_list(command_uuid="inv").to_plist()
    await store.enqueue("inv", "apple", body, [UDID])
    assert uuid_of(await svc.connect(report("Idle"))) == "inv"
    apps = [
        {"Identifier": "com.a", "Name": "A", "ShortVersion": "1.2", "Version": "120"},
        {"Identifier": "com.b", "Name": "B", "Version": "70202006"},
        {"Identifier": "com.c", "Name": "C", "ShortVersion": "2.0", "Installing": True},
    ]
    await svc.connect(report("Acknowledged", "inv", InstalledApplicationList=apps))
    device = await store.get_device(UDID)
    assert device is not None
    assert device.facts["apps"] == [
        {"identifier": "com.a", "version": "1.2", "name": "A", "source": "installed"},
        {"identifier": "com.b", "version": "70202006", "name": "B", "source": "installed"},
    ]
    full = {r["identifier"]: r for r in device.facts["apple_apps"]}
    assert full["com.c"]["installing"] is True
    assert full["com.a"]["installing"] is False
    assert full["com.a"]["version"] == "120"


async def test_managed_application_list_keeps_every_state(store: Store) -> None:
    svc = await enrolled(store)
    await store.enqueue(
        "m1", "apple", commands.managed_application_list(command_uuid="m1").to_plist(), [UDID]
    )
    assert uuid_of(await svc.connect(report("Idle"))) == "m1"
    managed = {
        "com.a": {"Status": "Prompting", "ManagementFlags": 1},
        "com.b": {"Status": "UserRejected"},
        "com.c": {"Status": "Failed", "ExternalVersionIdentifier": 123},
        "com.d": {"Status": "Managed"},
    }
    await svc.connect(report("Acknowledged", "m1", ManagedApplicationList=managed))
    device = await store.get_device(UDID)
    assert device is not None
    facts = device.facts["managed_apps"]
    assert facts["com.a"] == {
        "status": "Prompting",
        "management_flags": 1,
        "external_version_id": None,
    }
    assert facts["com.b"]["status"] == "UserRejected"
    assert facts["com.c"]["status"] == "Failed"
    assert facts["com.c"]["external_version_id"] == 123


async def install(store: Store, udid: str, uuid: str) -> Device:
    svc = await enrolled(store, udid)
    body = commands.install_application(
        itunes_store_id=361309726, purchase_method=1, command_uuid=uuid
    ).to_plist()
    await store.enqueue(uuid, "apple", body, [udid])
    assert uuid_of(await svc.connect(report("Idle", udid=udid))) == uuid
    answer = report("Acknowledged", uuid, udid=udid, Identifier="com.app", State="Installing")
    await svc.connect(answer)
    device = await store.get_device(udid)
    assert device is not None
    return device


async def test_install_application_silent_vs_prompt(store: Store) -> None:
    silent = (await install(store, UDID, "i1")).facts["app_installs"]["com.app"]
    assert silent == {
        "state": "Installing",
        "expected": "silent",
        "command_id": "i1",
        "itunes_store_id": 361309726,
    }
    prompt = await install(store, "UDID-B", "i2")  # unsupervised
    assert prompt.facts["app_installs"]["com.app"]["expected"] == "prompt"
    old = await install(store, "OLD-1", "i3")  # supervised iOS 9
    assert old.facts["app_installs"]["com.app"]["expected"] == "prompt"
    mac = await install(store, "MAC-1", "i4")  # supervised macOS
    assert mac.facts["app_installs"]["com.app"]["expected"] == "silent"
    # A later ManagedApplicationList moves the tracked install on.
    svc = AppleService(store)
    await store.enqueue(
        "m1", "apple", commands.managed_application_list(command_uuid="m1").to_plist(), ["UDID-B"]
    )
    assert uuid_of(await svc.connect(report("Idle", udid="UDID-B"))) == "m1"
    managed = {"com.app": {"Status": "UserRejected"}}
    await svc.connect(report("Acknowledged", "m1", udid="UDID-B", ManagedApplicationList=managed))
    device = await store.get_device("UDID-B")
    assert device is not None
    assert device.facts["app_installs"]["com.app"]["state"] == "UserRejected"
    assert device.facts["app_installs"]["com.app"]["expected"] == "prompt"


# -- declarative management


def ddm_request(endpoint: str, data: object | None = None, udid: str = UDID) -> Request:
    message: dict[str, Any] = {
        "MessageType": "DeclarativeManagement",
        "UDID": udid,
        "Endpoint": endpoint,
    }
    if data is not None:
        message["Data"] = json.dumps(data).encode()
    return checkin(message)


async def ddm_json(svc: AppleService, endpoint: str) -> Any:
    response = await svc.checkin(ddm_request(endpoint))
    assert response.status == 200, response.body
    assert dict(response.headers)["content-type"] == "application/json"
    return json.loads(response.body)


def stored(decl: ddm.Declaration, **targets: Any) -> StoredDeclaration:
    return StoredDeclaration(decl.identifier, decl.type, decl.payload, decl.server_token, **targets)


async def test_ddm_round_trip(store: Store) -> None:
    svc = await enrolled(store)
    settings = ddm.declaration(
        ddm.SETTINGS_TYPE, "su.settings", {"Notifications": True, "RecommendedCadence": "Newest"}
    )
    await store.put_declaration(stored(settings, orgs=("/acme",)))
    other = ddm.declaration(ddm.SETTINGS_TYPE, "not.mine", {"Notifications": False})
    await store.put_declaration(stored(other, devices=("UDID-B",)))

    tokens = (await ddm_json(svc, "tokens"))["SyncTokens"]
    token = tokens["DeclarationsToken"]
    assert dt.datetime.fromisoformat(tokens["Timestamp"]).tzinfo is not None
    assert (await ddm_json(svc, "tokens"))["SyncTokens"] == tokens  # stable

    items = await ddm_json(svc, "declaration-items")
    assert items["DeclarationsToken"] == token
    declarations = items["Declarations"]
    assert declarations["Configurations"] == [
        {"Identifier": "su.settings", "ServerToken": settings.server_token}
    ]
    assert declarations["Assets"] == []
    assert declarations["Management"] == []
    (activation_item,) = declarations["Activations"]
    assert activation_item["Identifier"] == service.ACTIVATION_IDENTIFIER

    activation = await ddm_json(svc, f"declaration/activation/{service.ACTIVATION_IDENTIFIER}")
    assert activation["Type"] == "com.apple.activation.simple"
    assert activation["Payload"] == {"StandardConfigurations": ["su.settings"]}
    assert activation["ServerToken"] == activation_item["ServerToken"]
    config = await ddm_json(svc, "declaration/configuration/su.settings")
    assert config == {
        "Type": ddm.SETTINGS_TYPE,
        "Identifier": "su.settings",
        "ServerToken": settings.server_token,
        "Payload": {"Notifications": True, "RecommendedCadence": "Newest"},
    }
    missing = await svc.checkin(ddm_request("declaration/configuration/not.mine"))
    assert missing.status == 404

    status = {
        "StatusItems": {"softwareupdate": {"install-state": "downloading"}},
        "Errors": [],
    }
    answer = await svc.checkin(ddm_request("status", status))
    assert answer.status == 200
    assert answer.body == b""
    later = {
        "StatusItems": {"softwareupdate": {"pending-version": {"os-version": "17.5"}}},
        "Errors": [{"StatusItem": "x"}],
    }
    assert (await svc.checkin(ddm_request("status", later))).status == 200
    device = await store.get_device(UDID)
    assert device is not None
    assert device.facts["ddm_status"] == {
        "StatusItems": {
            "softwareupdate": {
                "install-state": "downloading",
                "pending-version": {"os-version": "17.5"},
            }
        },
        "Errors": [{"StatusItem": "x"}],
    }

    # Changing a declaration changes its token and the device's DeclarationsToken.
    changed = ddm.declaration(ddm.SETTINGS_TYPE, "su.settings", {"Notifications": False})
    await store.put_declaration(stored(changed, orgs=("/acme",)))
    new_token = (await ddm_json(svc, "tokens"))["SyncTokens"]["DeclarationsToken"]
    assert new_token != token
    items = await ddm_json(svc, "declaration-items")
    assert items["Declarations"]["Configurations"][0]["ServerToken"] == changed.server_token


async def test_ddm_bad_requests(store: Store) -> None:
    svc = await enrolled(store)
    assert (await svc.checkin(ddm_request("nonsense"))).status == 400
    bad = checkin(
        {"MessageType": "DeclarativeManagement", "UDID": UDID, "Endpoint": "status", "Data": b"{"}
    )
    assert (await svc.checkin(bad)).status == 400


# -- Mdm-Signature


def _signer(name: str) -> tuple[Any, bytes]:

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return (key, cert), cert.public_bytes(serialization.Encoding.DER)


def _sign(signer: Any, body: bytes, *, attributes: bool = True) -> str:

    key, cert = signer
    # Binary: sign the bytes as they are (no S/MIME line-ending canonicalisation).
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    if not attributes:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    signature = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(body)
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, options)
    )
    return base64.b64encode(signature).decode()


@pytest.mark.skipif(not identity.CMS_SUPPORTED, reason="needs cryptography")
async def test_mdm_signature_identity(store: Store) -> None:
    signer, der = _signer("device A")
    other, _ = _signer("device B")
    svc = AppleService(store)
    body = plist.dumps(authenticate())
    signed = checkin({}, body=body, cert=None, headers=(("mdm-signature", _sign(signer, body)),))
    assert (await svc.checkin(signed)).status == 200
    device = await store.get_device(UDID)
    assert device is not None
    assert device.auth["sha256"] == sha(der)

    idle = plist.dumps({"Status": "Idle", "UDID": UDID})
    for attributes in (True, False):
        header = (("mdm-signature", _sign(signer, idle, attributes=attributes)),)
        ok = put("/mdm/apple/connect", {}, body=idle, cert=None, headers=header)
        assert (await svc.connect(ok)).status == 200
    # Another key, a signature over other bytes, garbage: refused.
    header = (("mdm-signature", _sign(other, idle)),)
    assert (await svc.connect(put("/", {}, body=idle, cert=None, headers=header))).status == 403
    header = (("mdm-signature", _sign(signer, b"other body")),)
    assert (await svc.connect(put("/", {}, body=idle, cert=None, headers=header))).status == 403
    header = (("mdm-signature", base64.b64encode(b"0\x03\x02\x01\x01").decode()),)
    assert (await svc.connect(put("/", {}, body=idle, cert=None, headers=header))).status == 400


async def test_mdm_signature_without_cms_support(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity, "CMS_SUPPORTED", False)
    header = (("mdm-signature", "AAAA"),)
    request = checkin(authenticate(), cert=None, headers=header)
    refused = await AppleService(store).checkin(request)
    assert refused.status == 400
    assert b"no CMS support" in refused.body
    assert (await AppleService(store, dev=True).checkin(request)).status == 200
