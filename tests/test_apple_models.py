"""Apple MDM models: command builders checked against the schema facts (by the package's
validator and by an independent walk of the facts file), escaping, check-in and report
decoding, the errata list, and installed-version facts."""

from __future__ import annotations

import copy
import datetime as dt
import importlib.resources
import json
import pickle
import plistlib
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgate import plist, versions
from mdmgate.apple import checkin, commands, reports, schema
from mdmgate.apple.errors import AppleDecodeError, CommandValidationError
from mdmgate.errors import MdmgateError, UnknownPlatform
from tests import apple_samples as samples

# --- the facts file, read independently --------------------------------------------------

_DATA = importlib.resources.files("mdmgate.apple").joinpath("data")
FACTS: dict[str, Any] = json.loads(_DATA.joinpath(schema.FACTS_RESOURCE).read_bytes())
_PY_TYPES: dict[str, type | tuple[type, ...]] = {
    "<string>": str,
    "<integer>": int,
    "<real>": float,
    "<boolean>": bool,
    "<date>": dt.datetime,
    "<data>": bytes,
    "<array>": list,
    "<dictionary>": dict,
}


def command_facts(request_type: str) -> dict[str, Any]:
    (found,) = [
        f
        for path, f in FACTS["files"].items()
        if path.startswith("mdm/commands/") and f.get("requesttype") == request_type
    ]
    return found


def conformance_problems(
    specs: list[dict[str, Any]], value: dict[str, Any], path: str
) -> list[str]:
    """A plain walk of the facts (not the package's validator): types, required keys,
    unknown keys, rangelists, nested subkeys, array items and Settings-style variants."""
    problems: list[str] = []
    named = {s["key"]: s for s in specs if not s["key"].startswith("ANY")}
    anything = next((s for s in specs if s["key"].startswith("ANY")), None)
    for key, spec in named.items():
        if spec.get("presence") == "required" and key not in value:
            problems.append(f"{path}.{key}: missing")
    for key, item in value.items():
        spec = named.get(key, anything)
        if spec is None:
            problems.append(f"{path}.{key}: unknown key")
        else:
            problems += _value_problems(spec, item, f"{path}.{key}")
    return problems


def _value_problems(spec: dict[str, Any], value: Any, path: str) -> list[str]:
    kind = spec["type"]
    if kind == "<any>":
        return []
    wanted = _PY_TYPES[kind]
    if not isinstance(value, wanted) or (kind == "<integer>" and isinstance(value, bool)):
        return [f"{path}: {type(value).__name__} is not {kind}"]
    subkeys = spec.get("subkeys", [])
    allowed = spec.get("rangelist")
    if allowed is None and subkeys and kind not in ("<array>", "<dictionary>"):
        allowed = [s["key"] for s in subkeys]  # a string whose subkeys name its values
    if allowed is not None and value not in allowed:
        return [f"{path}: {value!r} not allowed"]
    if kind == "<dictionary>" and subkeys:
        return conformance_problems(subkeys, value, path)
    if kind == "<array>" and subkeys:
        problems: list[str] = []
        for index, item in enumerate(value):
            if len(subkeys) == 1:
                spec_item = subkeys[0]
            else:  # pick the variant by its Item value
                (spec_item,) = [
                    s
                    for s in subkeys
                    if any(
                        k["key"] == "Item" and item.get("Item") in k["rangelist"]
                        for k in s["subkeys"]
                    )
                ]
            problems += _value_problems(spec_item, item, f"{path}[{index}]")
        return problems
    return []


# --- the builders ------------------------------------------------------------------------

ODD = "R&D <beta> ]]> Zoë 日本 \u2019€"  # needs escaping in XML, and is not ASCII


def _cases() -> dict[str, Callable[[str], commands.Command]]:
    """Each builder with realistic options; the argument is a free-text value placed where
    the command takes one."""
    return {
        "InstallApplication:vpp": lambda text: commands.install_application(
            itunes_store_id=361309726,
            purchase_method=1,
            management_flags=1,
            change_management_state="Managed",
            configuration={"ServerURL": f"https://mail.example.com/?q={text}", "Label": text},
            attributes={"VPNUUID": "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0", "Removable": False},
            platform="ios",
        ),
        "InstallApplication:manifest": lambda text: commands.install_application(
            manifest_url=f"https://apps.example.com/manifest.plist?app={text}&lang=ja",
            management_flags=5,
            platform="ios",
        ),
        "InstallApplication:macos": lambda text: commands.install_application(
            identifier=f"com.example.{text}",
            install_as_managed=True,
            management_flags=1,
            ios_app=False,
            platform="macos",
            channel="device",
        ),
        "RemoveApplication": lambda text: commands.remove_application(f"com.example.{text}"),
        "InstalledApplicationList": lambda text: commands.installed_application_list(
            identifiers=["com.example.mail", f"com.example.{text}"],
            managed_apps_only=True,
            items=["Identifier", "ShortVersion", "Version", "Installing"],
            platform="ios",
        ),
        "ManagedApplicationList": lambda text: commands.managed_application_list(
            identifiers=[f"com.example.{text}"]
        ),
        "DeclarativeManagement": lambda text: commands.declarative_management(
            {"SyncTokens": {"DeclarationsToken": text, "Timestamp": "2026-11-21T04:00:00Z"}}
        ),
        "DeviceInformation": lambda text: commands.device_information(
            ["UDID", "OSVersion", "BuildVersion", "IsSupervised", "SIMMCC"],
            command_uuid=f"uuid-{text}",
        ),
        "Settings": lambda text: commands.settings(
            [
                commands.device_name_setting(text),
                commands.application_attributes_setting(
                    "com.example.mail", {"VPNUUID": text, "AssociatedDomains": [text]}
                ),
                commands.application_configuration_setting("com.example.mail", {"k": text}),
                commands.setting("Bluetooth", Enabled=True),
                commands.setting("TimeZone", TimeZone="Asia/Tokyo"),
            ],
            platform="ios",
        ),
    }


CASES = _cases()


def test_every_required_builder_has_a_case() -> None:
    built = {name.split(":", maxsplit=1)[0] for name in CASES}
    assert built >= {
        "InstallApplication",
        "InstalledApplicationList",
        "ManagedApplicationList",
        "RemoveApplication",
        "DeclarativeManagement",
        "DeviceInformation",
        "Settings",
    }


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("binary", [False, True], ids=["xml", "binary"])
def test_builder_output_conforms_to_the_facts(name: str, binary: bool) -> None:
    command = CASES[name]("plain")
    decoded = plistlib.loads(command.to_plist(binary=binary))
    assert set(decoded) == {"CommandUUID", "Command"}
    body = decoded["Command"]
    assert body.pop("RequestType") == command.request_type == name.split(":", maxsplit=1)[0]
    assert body == command.payload
    # The package's validator, strictly, on what came back out of the bytes ...
    assert schema.validate_command(command.request_type, body, platform=command.platform) == []
    # ... and a plain walk of the facts file, which knows no errata: the SIMMCC query is the
    # one value the builders use that only the errata allow.
    facts = command_facts(command.request_type)
    problems = conformance_problems(facts["payloadkeys"], body, "Command")
    assert problems == (
        ["Command.Queries[4]: 'SIMMCC' not allowed"] if name == "DeviceInformation" else []
    )


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("binary", [False, True], ids=["xml", "binary"])
def test_builder_keeps_values_that_need_escaping(name: str, binary: bool) -> None:
    command = CASES[name](ODD)
    data = command.to_plist(binary=binary)
    if not binary:
        assert b"&amp;" in data or b"&#" in data or name == "DeclarativeManagement"
        assert b"]]>" not in data.replace(b"]]&gt;", b"")
    for decode in (plistlib.loads, plist.loads):
        assert decode(data) == command.to_dict()
    flat = json.dumps(plistlib.loads(data), default=lambda b: b.decode(), ensure_ascii=False)
    assert ODD in flat or json.dumps(ODD, ensure_ascii=False)[1:-1] in flat


def test_declarative_management_data_is_the_json_tokens() -> None:
    tokens = {"SyncTokens": {"DeclarationsToken": ODD, "Timestamp": "2026-11-21T04:00:00Z"}}
    command = commands.declarative_management(tokens)
    data = plistlib.loads(command.to_plist())["Command"]["Data"]
    assert isinstance(data, bytes)
    assert json.loads(data) == tokens
    assert commands.declarative_management(data).payload == {"Data": data}
    assert commands.declarative_management().payload == {}


NEGATIVE: list[tuple[str, Callable[[], commands.Command], str, str]] = [
    (
        "InstallApplication: wrong type",
        lambda: commands.install_application(itunes_store_id="361309726"),  # type: ignore[arg-type]
        "Command.iTunesStoreID",
        "type",
    ),
    (
        "InstallApplication: PurchaseMethod out of range",
        lambda: commands.install_application(itunes_store_id=1, purchase_method=2),
        "Command.Options.PurchaseMethod",
        "value",
    ),
    (
        "InstallApplication: ManagementFlags 0 on iOS",
        lambda: commands.install_application(itunes_store_id=1, management_flags=0, platform="ios"),
        "Command.ManagementFlags",
        "value",
    ),
    (
        "InstallApplication: no app named",
        lambda: commands.install_application(purchase_method=1),
        "Command.iTunesStoreID",
        "rule",
    ),
    (
        "InstallApplication: two apps named",
        lambda: commands.install_application(itunes_store_id=1, identifier="com.example.a"),
        "Command.Identifier",
        "rule",
    ),
    (
        "InstallApplication: http manifest",
        lambda: commands.install_application(manifest_url="http://example.com/m.plist"),
        "Command.ManifestURL",
        "value",
    ),
    (
        "InstallApplication: ChangeManagementState",
        lambda: commands.install_application(
            itunes_store_id=1, change_management_state="Unmanaged"
        ),  # type: ignore[arg-type]
        "Command.ChangeManagementState",
        "value",
    ),
    (
        "InstallApplication: macOS key on iOS",
        lambda: commands.install_application(
            itunes_store_id=1, install_as_managed=True, platform="ios"
        ),
        "Command.InstallAsManaged",
        "platform",
    ),
    (
        "InstallApplication: unknown attribute",
        lambda: commands.install_application(itunes_store_id=1, attributes={"VPNUUIDs": "x"}),
        "Command.Attributes.VPNUUIDs",
        "unknown-key",
    ),
    (
        "RemoveApplication: missing Identifier",
        lambda: commands.remove_application(None),  # type: ignore[arg-type]
        "Command.Identifier",
        "missing",
    ),
    (
        "RemoveApplication: control character",
        lambda: commands.remove_application("com.example\x00app"),
        "Command.Identifier",
        "encoding",
    ),
    (
        "InstalledApplicationList: item type",
        lambda: commands.installed_application_list(identifiers=["com.example.a", 7]),  # type: ignore[list-item]
        "Command.Identifiers[1]",
        "type",
    ),
    (
        "InstalledApplicationList: unknown Items value",
        lambda: commands.installed_application_list(items=["Identifier", "Colour"]),
        "Command.Items[1]",
        "value",
    ),
    (
        "InstalledApplicationList: ManagedAppsOnly type",
        lambda: commands.installed_application_list(managed_apps_only="yes"),  # type: ignore[arg-type]
        "Command.ManagedAppsOnly",
        "type",
    ),
    (
        "ManagedApplicationList: a string, not a list",
        lambda: commands.managed_application_list(identifiers="com.example.a"),
        "Command.Identifiers",
        "type",
    ),
    (
        "DeclarativeManagement: Data not JSON",
        lambda: commands.declarative_management(b"\xff not json"),
        "Command.Data",
        "value",
    ),
    (
        "DeclarativeManagement: Data with a string that is not UTF-8",
        lambda: commands.declarative_management(b'{"SyncTokens": "\x80"}'),
        "Command.Data",
        "value",
    ),
    (
        "DeclarativeManagement: tokens not JSON-encodable",
        lambda: commands.declarative_management({"when": object()}),
        "Command.Data",
        "type",
    ),
    (
        "DeviceInformation: unknown query",
        lambda: commands.device_information(["OSVersion", "FavouriteColour"]),
        "Command.Queries[1]",
        "value",
    ),
    (
        "DeviceInformation: missing Queries",
        lambda: commands.build("DeviceInformation", {}),
        "Command.Queries",
        "missing",
    ),
    (
        "Settings: unknown item",
        lambda: commands.settings([commands.setting("Brightness", Level=3)]),
        "Command.Settings[0].Item",
        "value",
    ),
    (
        "Settings: wrong value type",
        lambda: commands.settings([commands.setting("Bluetooth", Enabled="on")]),
        "Command.Settings[0].Enabled",
        "type",
    ),
    (
        "Settings: missing required key",
        lambda: commands.settings([commands.setting("DataRoaming")]),
        "Command.Settings[0].Enabled",
        "missing",
    ),
    (
        "Settings: out-of-range value",
        lambda: commands.settings(
            [commands.setting("PasscodeLockGracePeriod", PasscodeLockGracePeriod=61)]
        ),
        "Command.Settings[0].PasscodeLockGracePeriod",
        "value",
    ),
    (
        "Settings: macOS-only item on iOS",
        lambda: commands.settings([commands.host_name_setting("mac-01")], platform="ios"),
        "Command.Settings[0]",
        "platform",
    ),
]


@pytest.mark.parametrize(
    ("build", "path", "code"),
    [case[1:] for case in NEGATIVE],
    ids=[case[0] for case in NEGATIVE],
)
def test_builder_refuses_with_the_path(
    build: Callable[[], commands.Command], path: str, code: str
) -> None:
    with pytest.raises(CommandValidationError) as caught:
        build()
    error = caught.value
    assert isinstance(error, MdmgateError)
    assert isinstance(error, ValueError)
    assert error.path == path
    assert error.issues[0].code == code
    assert path in str(error)


def test_every_builder_has_a_negative_case() -> None:
    covered = {case[0].split(":")[0] for case in NEGATIVE}
    assert covered >= {name.split(":", maxsplit=1)[0] for name in CASES}


def test_the_error_lists_every_problem_and_pickles() -> None:
    with pytest.raises(CommandValidationError) as caught:
        commands.install_application(
            itunes_store_id=1, purchase_method=9, management_flags=2, attributes={"Removable": 1}
        )
    error = caught.value
    assert [i.path for i in error.issues] == [
        "Command.Options.PurchaseMethod",
        "Command.ManagementFlags",
        "Command.Attributes.Removable",
    ]
    assert "3 problems" in str(error)
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.request_type, again.issues) == (
        error.path,
        "InstallApplication",
        error.issues,
    )


def test_to_plist_checks_again_after_a_change() -> None:
    command = commands.remove_application("com.example.a")
    command.payload["Identifier"] = 42
    with pytest.raises(CommandValidationError) as caught:
        command.to_plist()
    assert caught.value.path == "Command.Identifier"


def test_command_uuid() -> None:
    a, b = commands.remove_application("a"), commands.remove_application("a")
    assert a.command_uuid != b.command_uuid
    assert len(a.command_uuid) == 36
    assert commands.remove_application("a", command_uuid="X-1").command_uuid == "X-1"
    with pytest.raises(CommandValidationError) as caught:
        commands.remove_application("a", command_uuid=" ")
    assert caught.value.path == "CommandUUID"


def test_generic_build_covers_any_request_type() -> None:
    command = commands.build("ProfileList", {"ManagedOnly": True})
    assert plistlib.loads(command.to_plist())["Command"] == {
        "RequestType": "ProfileList",
        "ManagedOnly": True,
    }
    with pytest.raises(CommandValidationError) as caught:
        commands.build("MakeCoffee")
    assert caught.value.path == "Command.RequestType"


_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff"),
    max_size=40,
)


def _encodable(text: str) -> bool:
    return not any(ord(c) < 0x20 and c not in "\t\n\r" for c in text)


@settings(max_examples=150, deadline=None)
@given(_TEXT)
def test_any_text_is_kept_exactly_or_refused(text: str) -> None:
    if not _encodable(text):
        with pytest.raises(CommandValidationError) as caught:
            commands.remove_application(text)
        assert caught.value.issues[0].code == "encoding"
        return
    command = commands.install_application(
        manifest_url="https://example.com/m?" + text, configuration={text: [text]}
    )
    for binary in (False, True):
        data = command.to_plist(binary=binary)
        assert plistlib.loads(data) == command.to_dict() == plist.loads(data)


# --- the schema validator and the errata ------------------------------------------------------


def _resolve(specs: list[dict[str, Any]], path: str) -> dict[str, Any]:
    node: dict[str, Any] = {"subkeys": specs}
    for part in path.replace("[]", ".[]").split("."):
        subkeys = node["subkeys"]
        if part == "[]":
            (node,) = subkeys
        elif part == "*":
            (node,) = [s for s in subkeys if s["key"].startswith("ANY")]
        else:
            (node,) = [s for s in subkeys if s["key"] == part]
    return node


@pytest.mark.parametrize("erratum", schema.ERRATA, ids=lambda e: f"{e.name}:{e.path}:{e.kind}")
def test_each_erratum_is_a_real_deviation(erratum: schema.Erratum) -> None:
    assert erratum.reason
    files = [
        (path, f)
        for path, f in FACTS["files"].items()
        if path.startswith("mdm/checkin/" if erratum.scope == "checkin" else "mdm/commands/")
        and erratum.name in (f.get("requesttype"), "*")
    ]
    assert files
    key = "responsekeys" if erratum.scope == "response" else "payloadkeys"
    if erratum.kind == "allow-values":
        spec = _resolve(files[0][1][key], erratum.path)
        listed = spec.get("rangelist") or [s["key"] for s in spec["subkeys"]]
        assert not set(erratum.values) & set(listed)  # the schema really leaves them out
    elif erratum.kind == "optional":
        specs = []
        for _, f in files:
            try:
                specs.append(_resolve(f[key], erratum.path))
            except ValueError:  # a message without that key
                continue
        assert specs
        assert all(s["presence"] == "required" for s in specs)
    elif erratum.kind == "allow-type":
        spec = _resolve(files[0][1][key], erratum.path)
        assert spec["type"] not in erratum.values  # the schema really has another type
    elif erratum.kind == "introduced":
        # A required key the facts give no version for on each OS the erratum dates.
        spec = _resolve(files[0][1][key], erratum.path)
        assert spec["presence"] == "required"
        for os_name, _ in erratum.values:
            entry = spec.get("supportedOS", {}).get(os_name, {})
            assert "introduced" not in entry, (os_name, entry)
    else:  # one-of: somewhere the schema requires every key of the group at once
        assert any(
            all(
                any(s["key"] == k and s.get("presence") == "required" for s in f[key])
                for k in erratum.values
            )
            for _, f in files
        )


def test_management_flags_zero_is_an_erratum_for_macos_only() -> None:
    spec = _resolve(command_facts("InstallApplication")["payloadkeys"], "ManagementFlags")
    assert spec["rangelist"] == [1, 4, 5]
    for platform in ("macos", None):
        command = commands.install_application(
            identifier="com.example.a", management_flags=0, platform=platform
        )
        assert plistlib.loads(command.to_plist())["Command"]["ManagementFlags"] == 0
    with pytest.raises(CommandValidationError):
        commands.install_application(identifier="com.example.a", management_flags=0, platform="ios")


def test_range_repetition_and_any_keys() -> None:
    passcode = "com.apple.configuration.passcode.settings"
    assert schema.validate_declaration(passcode, {"MinimumLength": 16}) == []
    issues = schema.validate_declaration(passcode, {"MinimumLength": 17}, strict=False)
    assert [(i.path, i.code) for i in issues] == [("Payload.MinimumLength", "range")]
    issues = schema.validate_declaration(passcode, {"MaximumFailedAttempts": 1}, strict=False)
    assert [(i.path, i.code) for i in issues] == [("Payload.MaximumFailedAttempts", "range")]
    # ANY keys: any name, any plist value; an unknown key elsewhere is refused.
    schema.validate_command(
        "InstallApplication",
        {"Identifier": "a", "Configuration": {"any key": {"nested": [1, 2.5, b"x"]}}},
    )
    acme = "com.apple.asset.credential.acme"
    ok = {
        "Reference": {"DataURL": "https://x"},
    }
    assert schema.validate_declaration(acme, ok) == []
    issues = schema.validate_declaration(
        "com.apple.configuration.passcode.settings", {"Nope": 1}, strict=False
    )
    assert issues == []  # lenient mode does not mind unknown keys
    with pytest.raises(CommandValidationError) as caught:
        schema.validate_declaration("com.apple.configuration.passcode.settings", {"Nope": 1})
    assert caught.value.issues[0].code == "unknown-key"


def test_array_item_counts() -> None:
    # The shared ACME fragment: each Subject pair holds exactly two strings.
    fragment = schema.facts().files["declarative/declarations/assets/credentials/acme.yaml"]
    base = {
        "DirectoryURL": "https://acme.example.com/directory",
        "ClientIdentifier": "client",
        "KeySize": 2048,
        "KeyType": "RSA",
        "HardwareBound": False,
    }
    good = {**base, "Subject": [[["CN", "device"]]]}
    assert schema.check_keys(fragment.payloadkeys, good, root="Payload") == []
    bad = {**base, "Subject": [[["CN", "device", "extra"]]]}
    issues = schema.check_keys(fragment.payloadkeys, bad, root="Payload")
    assert [(i.path, i.code) for i in issues] == [("Payload.Subject[0][0]", "count")]


def test_unknown_platform_is_refused() -> None:
    with pytest.raises(UnknownPlatform):
        commands.remove_application("a", platform="android")


def test_facts_ship_with_the_package_and_their_licence() -> None:
    facts = schema.facts()
    assert facts.source.startswith("apple/device-management")
    assert len(facts.commands) >= 60
    assert len(facts.checkins) == 8
    licence = _DATA.joinpath(schema.FACTS_LICENSE_RESOURCE).read_text(encoding="utf-8")
    assert "Apple Inc." in licence
    assert "mdmgate" in str(_DATA)


# --- check-in messages --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(samples.CHECKINS))
@pytest.mark.parametrize("binary", [False, True], ids=["xml", "binary"])
def test_checkin_samples_decode_cleanly(name: str, binary: bool) -> None:
    data = samples.CHECKINS[name]
    if binary:
        data = plistlib.dumps(plistlib.loads(data), fmt=plistlib.FMT_BINARY)
    platform = samples.CHECKIN_PLATFORMS[name]
    for message in (checkin.decode_checkin(data, platform=platform), checkin.decode_checkin(data)):
        assert type(message).__name__ == name.split(":", maxsplit=1)[0] == message.message_type
        assert message.warnings == []
        assert message.extra == {}
        assert message.raw == data
        assert message.device_id is not None


def test_checkin_fields() -> None:
    auth = checkin.decode_checkin(samples.CHECKINS["Authenticate:macos"])
    assert isinstance(auth, checkin.Authenticate)
    assert auth.device_name == "Zoë\u2019s MacBook Air & Co <lab>"
    assert (auth.model, auth.model_name, auth.os_version) == ("Mac14,2", "MacBook Air", "15.1")
    token = checkin.decode_checkin(samples.CHECKINS["TokenUpdate:ios"])
    assert isinstance(token, checkin.TokenUpdate)
    assert token.token == samples.PUSH_TOKEN
    assert token.token_hex == samples.PUSH_TOKEN.hex()
    assert (token.push_magic, token.awaiting_configuration) == (samples.PUSH_MAGIC, False)
    assert token.unlock_token == bytes(range(48))
    user = checkin.decode_checkin(samples.CHECKINS["TokenUpdate:macos-user"])
    assert (user.channel, user.user_long_name, user.user_short_name) == (
        "user",
        "Jürgen Müller",
        "jmueller",
    )
    enrolled = checkin.decode_checkin(samples.CHECKINS["TokenUpdate:ios-user-enrollment"])
    assert (enrolled.udid, enrolled.device_id) == (None, samples.ENROLLMENT_ID)
    status = checkin.decode_checkin(samples.CHECKINS["DeclarativeManagement:status"])
    assert isinstance(status, checkin.DeclarativeManagement)
    assert status.endpoint == "status"
    assert status.data_json() == json.loads(samples.DDM_STATUS)
    tokens = checkin.decode_checkin(samples.CHECKINS["DeclarativeManagement:tokens"])
    assert isinstance(tokens, checkin.DeclarativeManagement)
    assert (tokens.endpoint, tokens.data_json()) == ("tokens", None)
    boot = checkin.decode_checkin(samples.CHECKINS["SetBootstrapToken:macos"])
    assert isinstance(boot, checkin.SetBootstrapToken)
    assert (boot.bootstrap_token or b"").startswith(b"bootstrap")
    get = checkin.decode_checkin(samples.CHECKINS["GetToken:ios"])
    assert isinstance(get, checkin.GetToken)
    assert get.token_service_type == "com.apple.maid"
    assert get.token_parameters == {"PhoneUDID": samples.UDID_IPHONE}


def _edited(name: str, binary: bool = False, **changes: Any) -> bytes:
    body = plistlib.loads(samples.CHECKINS[name])
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return plistlib.dumps(body, fmt=plistlib.FMT_BINARY if binary else plistlib.FMT_XML)


def test_checkin_keeps_unknown_keys() -> None:
    future = {"Level": 3, "When": dt.datetime(2026, 11, 21, 4, 0)}
    message = checkin.decode_checkin(
        _edited("TokenUpdate:ios", FutureKey=future, __mdmgate_extra__="sneaky"), platform="ios"
    )
    assert message.extra == {"FutureKey": future, "__mdmgate_extra__": "sneaky"}
    assert message.warnings == []


def test_checkin_wrong_types_are_warnings() -> None:
    data = _edited(
        "TokenUpdate:ios", Token="not data", AwaitingConfiguration="maybe", UDID=12345, Topic=None
    )
    message = checkin.decode_checkin(data, platform="ios")
    assert isinstance(message, checkin.TokenUpdate)
    found = {(w.path, w.code) for w in message.warnings}
    assert {("Token", "type"), ("AwaitingConfiguration", "type"), ("UDID", "type")} <= found
    assert ("Topic", "missing") in found
    # What cannot be read as the field's type is kept aside, in extra.
    assert message.udid is None
    assert message.extra == {"UDID": 12345, "Token": "not data", "AwaitingConfiguration": "maybe"}
    assert message.awaiting_configuration is False
    assert message.push_magic == samples.PUSH_MAGIC


def test_checkout_without_identity_is_a_warning() -> None:
    message = checkin.decode_checkin(_edited("CheckOut:ios", UDID=None))
    assert [(w.path, w.code) for w in message.warnings] == [("UDID", "missing")]


def test_unknown_message_type() -> None:
    message = checkin.decode_checkin(_edited("CheckOut:ios", MessageType="Teleport"))
    assert isinstance(message, checkin.UnknownCheckin)
    assert message.message_type == "Teleport"
    assert message.extra["Topic"] == samples.TOPIC
    assert [w.path for w in message.warnings] == ["MessageType"]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (b"", ""),
        (b"<plist><dict>", ""),
        (plistlib.dumps(["not", "a", "dict"]), ""),
        (plistlib.dumps({"Topic": "x"}), "MessageType"),
        (plistlib.dumps({"MessageType": 7}), "MessageType"),
    ],
    ids=["empty", "broken", "array", "no-type", "type-not-string"],
)
def test_unreadable_checkins_raise(data: bytes, path: str) -> None:
    with pytest.raises(AppleDecodeError) as caught:
        checkin.decode_checkin(data)
    assert caught.value.path == path
    assert isinstance(caught.value, MdmgateError)


@pytest.mark.parametrize("data", [b"{not json", b'{"StatusItems": "\xff\xfe"}'])
def test_bad_ddm_data_raises_on_demand_only(data: bytes) -> None:
    message = checkin.decode_checkin(_edited("DeclarativeManagement:status", Data=data))
    assert isinstance(message, checkin.DeclarativeManagement)
    with pytest.raises(AppleDecodeError) as caught:
        message.data_json()
    assert caught.value.path == "Data"


_PLIST_VALUES = st.recursive(
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=0)
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
_CHECKIN_KEYS = st.sampled_from(
    [
        "UDID",
        "EnrollmentID",
        "MessageType",
        "Token",
        "PushMagic",
        "Topic",
        "AwaitingConfiguration",
        "Endpoint",
        "Data",
        "TokenParameters",
        "UserID",
        "BootstrapToken",
        "NotOnConsole",
        "Future",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(samples.CHECKINS)),
    st.dictionaries(_CHECKIN_KEYS, _PLIST_VALUES, max_size=5),
    st.sampled_from([None, "ios", "macos"]),
)
def test_odd_device_values_never_raise(
    name: str, changes: dict[str, Any], platform: str | None
) -> None:
    data = _edited(name, binary=True, **changes)
    if not isinstance(changes.get("MessageType", ""), str):
        with pytest.raises(AppleDecodeError):
            checkin.decode_checkin(data, platform=platform)
        return
    message = checkin.decode_checkin(data, platform=platform)
    assert message.raw == data
    fields = {f.encode_name: f.name for f in msgspec.structs.fields(message)}
    for key in changes:
        # Every value is somewhere: in its field or, when unreadable, in extra.
        if key in fields and key not in message.extra:
            assert getattr(message, fields[key]) is not None
        else:
            assert key in message.extra


# --- command reports -----------------------------------------------------------------------------


def test_installed_application_list_report() -> None:
    data = samples.installed_application_list_report(200)
    assert 120_000 < len(data) < 200_000
    report = reports.decode_report(data, request_type="InstalledApplicationList", platform="ios")
    assert report.known_status is reports.CommandStatus.ACKNOWLEDGED
    assert report.device_id == samples.UDID_IPHONE
    assert report.warnings == []
    assert report.raw == data
    result = reports.installed_applications(report)
    assert result.warnings == []
    reference = plistlib.loads(data)["InstalledApplicationList"]
    assert len(result.apps) == len(reference) == 200
    for app, ref in zip(result.apps, reference, strict=True):
        assert app.identifier == ref["Identifier"]
        assert (app.version, app.short_version, app.name) == (
            ref["Version"],
            ref["ShortVersion"],
            ref["Name"],
        )
        assert app.external_version_identifier == ref.get("ExternalVersionIdentifier")
        assert (app.bundle_size, app.installing) == (ref["BundleSize"], ref["Installing"])
        assert app.display_version == ref["ShortVersion"]
        assert app.extra == {}
    assert any("&" in (a.name or "") for a in result.apps)
    binary = samples.installed_application_list_report(200, binary=True)
    again = reports.installed_applications(reports.decode_report(binary))
    assert again.apps == result.apps


def test_installed_list_with_odd_entries() -> None:
    body = plistlib.loads(samples.installed_application_list_report(5))
    apps = body["InstalledApplicationList"]
    apps[0]["FutureKey"] = {"x": 1}
    apps[1]["BundleSize"] = "huge"
    apps[2]["Installing"] = "true"
    apps.append("not a dict")
    del apps[3]["Identifier"]
    report = reports.decode_report(plistlib.dumps(body))
    result = reports.installed_applications(report)
    assert len(result.apps) == 5
    assert result.apps[0].extra == {"FutureKey": {"x": 1}}
    assert result.apps[1].bundle_size is None
    assert result.apps[1].extra == {"BundleSize": "huge"}
    assert result.apps[2].installing is True  # msgspec reads "true" leniently ...
    paths = {(w.path, w.code) for w in result.warnings}
    assert ("InstalledApplicationList[2].Installing", "type") in paths  # ... with a warning
    assert ("InstalledApplicationList[1].BundleSize", "type") in paths
    assert ("InstalledApplicationList[5]", "type") in paths
    facts = reports.installed_versions(result, platform="ios")
    assert ("InstalledApplicationList[3]", "missing") in {(w.path, w.code) for w in facts.warnings}


def test_reports_without_the_list() -> None:
    report = reports.decode_report(samples.idle_report())
    assert report.known_status is reports.CommandStatus.IDLE
    result = reports.installed_applications(report)
    assert (result.apps, [w.code for w in result.warnings]) == ([], ["missing"])
    odd = reports.decode_report(
        plistlib.dumps(
            {
                "Status": "Acknowledged",
                "UDID": "u",
                "CommandUUID": "c",
                "InstalledApplicationList": {"a": 1},
            }
        )
    )
    assert [w.code for w in reports.installed_applications(odd).warnings] == ["type"]
    assert reports.managed_applications(odd).apps == {}


def test_managed_application_list() -> None:
    data = samples.managed_application_list_report()
    report = reports.decode_report(data, request_type="ManagedApplicationList", platform="ios")
    assert report.warnings == []
    result = reports.managed_applications(report)
    assert result.warnings == []
    assert len(result.apps) == 21
    states = {app.known_status for app in result.apps.values()}
    assert states == set(reports.ManagedAppStatus)
    enterprise = result.apps["com.example.enterprise.field"]
    assert (enterprise.external_version_identifier, enterprise.management_flags) == (None, 1)
    assert result.apps["com.example.app0"].external_version_identifier == 850_000_000


def test_managed_list_unknown_state_and_keys() -> None:
    body = plistlib.loads(samples.managed_application_list_report())
    apps = body["ManagedApplicationList"]
    apps["com.example.app0"]["Status"] = "Levitating"
    apps["com.example.app1"]["FutureKey"] = True
    apps["com.example.app2"]["ManagementFlags"] = "one"
    apps["com.example.odd"] = ["not", "a", "dict"]
    del apps["com.example.app3"]["Status"]
    result = reports.managed_applications(reports.decode_report(plistlib.dumps(body)))
    assert result.apps["com.example.app0"].status == "Levitating"
    assert result.apps["com.example.app0"].known_status is None
    assert result.apps["com.example.app1"].extra == {"FutureKey": True}
    assert result.apps["com.example.app2"].management_flags is None
    assert "com.example.odd" not in result.apps
    paths = {(w.path, w.code) for w in result.warnings}
    assert {
        ('ManagedApplicationList["com.example.app0"].Status', "value"),
        ('ManagedApplicationList["com.example.app2"].ManagementFlags', "type"),
        ('ManagedApplicationList["com.example.app3"].Status', "missing"),
        ('ManagedApplicationList["com.example.odd"]', "type"),
    } <= paths


def test_error_report_and_install_result() -> None:
    report = reports.decode_report(samples.error_report(), request_type="InstallApplication")
    assert report.known_status is reports.CommandStatus.ERROR
    assert [item.error_code for item in report.error_chain] == [12064, 4]
    assert (
        report.error_chain[0].localized_description
        == "L\u2019app « Outlook » n\u2019a pas pu être installée."
    )
    assert str(report.error_chain[1]) == (
        "MCInstallationErrorDomain 4: The app license could not be found."
    )
    assert report.warnings == []
    result = reports.install_application_result(report)
    assert result.rejection_reason == "CouldNotVerifyAppID"
    ok = reports.install_application_result(
        reports.decode_report(samples.install_application_report())
    )
    assert (ok.identifier, ok.state, ok.warnings) == (
        "com.microsoft.Office.Outlook",
        "Installing",
        [],
    )
    odd = reports.install_application_result(
        reports.decode_report(samples.install_application_report("Sleeping"))
    )
    assert [(w.path, w.code) for w in odd.warnings] == [("State", "value")]


def test_report_envelope_warnings() -> None:
    enrolled = reports.decode_report(samples.idle_report(enrollment_id=True))
    assert (enrolled.device_id, enrolled.warnings) == (samples.ENROLLMENT_ID, [])
    odd = reports.decode_report(
        plistlib.dumps({"Status": "Pending", "ErrorChain": "boom", "Extra": 1})
    )
    found = {(w.path, w.code) for w in odd.warnings}
    assert found == {
        ("Status", "value"),
        ("ErrorChain", "type"),
        ("UDID", "missing"),
        ("CommandUUID", "missing"),
    }
    assert odd.extra == {"ErrorChain": "boom", "Extra": 1}
    chain = reports.decode_report(
        plistlib.dumps(
            {
                "Status": "Error",
                "UDID": "u",
                "CommandUUID": "c",
                "ErrorChain": [{"ErrorCode": "x"}, 3],
            }
        )
    )
    assert len(chain.error_chain) == 1
    assert chain.error_chain[0].extra == {"ErrorCode": "x"}
    with pytest.raises(AppleDecodeError) as caught:
        reports.decode_report(plistlib.dumps({"UDID": "u"}))
    assert caught.value.path == "Status"


# --- installed-version facts ----------------------------------------------------------------------


def _apps(*entries: dict[str, Any]) -> bytes:
    return plistlib.dumps(
        {
            "Status": "Acknowledged",
            "UDID": "u",
            "CommandUUID": "c",
            "InstalledApplicationList": list(entries),
        }
    )


def test_installing_entries_never_count() -> None:
    data = samples.installed_application_list_report(200)
    facts = reports.installed_versions(reports.decode_report(data), platform="ios")
    reference = plistlib.loads(data)["InstalledApplicationList"]
    installed = [a["Identifier"] for a in reference if not a["Installing"]]
    assert [v.identifier for v in facts.versions] == installed
    assert len(installed) == 192
    assert facts.warnings == []
    by_id = facts.by_identifier()
    for app in reference:
        if app["Installing"]:
            assert app["Identifier"] not in by_id
            continue
        fact = by_id[app["Identifier"]]
        assert fact.version == fact.display_version == app["ShortVersion"]
        assert fact.bundle_version == app["Version"]
        assert fact.external_version_identifier == app.get("ExternalVersionIdentifier")
        assert fact.sort_key == versions.sort_key(app["ShortVersion"], platform="ios")


def test_which_version_orders() -> None:
    data = _apps(
        {
            "Identifier": "a",
            "ShortVersion": "2.1",
            "Version": "4711",
            "ExternalVersionIdentifier": 9,
        },
        {"Identifier": "b", "ShortVersion": "2.1-beta", "Version": "2.1.0.7"},
        {"Identifier": "c", "Version": "70202006"},
        {"Identifier": "d", "ShortVersion": "x", "Version": "y"},
        {"Identifier": "e", "ShortVersion": "1.0", "Installing": True},
        {"Identifier": "f", "ShortVersion": "1.2", "Installing": False},
        {"Identifier": "f", "ShortVersion": "1.10"},
        {"Identifier": "f", "ShortVersion": "1.9"},
    )
    report = reports.decode_report(data)
    facts = reports.installed_versions(report, platform="macos").by_identifier()
    assert sorted(facts) == ["a", "b", "c", "d", "f"]
    assert (facts["a"].version, facts["a"].display_version, facts["a"].bundle_version) == (
        "2.1",
        "2.1",
        "4711",
    )
    assert facts["b"].version == "2.1.0.7"  # ShortVersion breaks the rule: Version orders
    assert facts["b"].display_version == "2.1-beta"
    assert facts["c"].version == facts["c"].display_version == "70202006"
    assert (facts["d"].version, facts["d"].sort_key) == (None, None)
    assert facts["f"].version == "1.10"  # listed three times: the highest is kept
    by_build = reports.installed_versions(report, platform="macos", order_by="version")
    assert by_build.by_identifier()["a"].version == "4711"
    warned = [w.message for w in reports.installed_versions(report, platform="ios").warnings]
    assert any(m.startswith("d: no orderable version") for m in warned)
    assert warned.count("f is listed twice") == 2


def test_installed_versions_platforms() -> None:
    report = reports.decode_report(_apps({"Identifier": "a", "ShortVersion": "1"}))
    assert reports.installed_versions(report, platform="ipados").versions[0].platform == "ipados"
    with pytest.raises(UnknownPlatform):
        reports.installed_versions(report, platform="windows")


def test_report_samples_are_deterministic() -> None:
    assert (
        samples.installed_application_list_report() == samples.installed_application_list_report()
    )
    a = copy.deepcopy(samples.installed_apps(10))
    assert a == samples.installed_apps(10)


# --- schema warnings and the device's OS version ------------------------------------------


def _os_update(**keys: Any) -> dict[str, Any]:
    """An AvailableOSUpdates item as iOS 11 sent it: no IsSecurityResponse (iOS 16.2)."""
    return {
        "ProductKey": "iOSUpdate15G77",
        "HumanReadableName": "iOS 11.4.1",
        "ProductName": "iOS 11.4.1",
        "Version": "11.4.1",
        "Build": "15G77",
        "DownloadSize": 123456,
        "InstallSize": 654321,
        "IsCritical": False,
        "RestartRequired": True,
        **keys,
    }


def _mac_update(**keys: Any) -> dict[str, Any]:
    """An AvailableOSUpdates item as macOS 10.13 sent it."""
    return {
        "ProductKey": "091-87654",
        "HumanReadableName": "Security Update 2018-004",
        "HumanReadableNameLocale": "en",
        "MetadataURL": "https://swscan.apple.com/x.dist",
        "Version": "10.13.6",
        "Build": "17G65",
        "DownloadSize": 1234,
        "AppIdentifiersToClose": [],
        **keys,
    }


def _paths(issues: list[schema.SchemaIssue]) -> list[tuple[str, str]]:
    return [(issue.path, issue.code) for issue in issues]


def _updates(platform: str, os_version: str | None, *items: dict[str, Any]) -> list[Any]:
    report = {"Status": "Acknowledged", "AvailableOSUpdates": list(items)}
    return _paths(
        schema.validate_response(
            "AvailableOSUpdates", report, platform=platform, os_version=os_version
        )
    )


def test_keys_an_older_os_does_not_send_are_not_missing() -> None:
    missing = ("AvailableOSUpdates[0].IsSecurityResponse", "missing")
    # iOS 11 and macOS 10.13 predate IsSecurityResponse (iOS 16.2, macOS 13.1).
    assert _updates("ios", "11.4", _os_update()) == []
    assert _updates("ipados", "11.4", _os_update()) == []
    assert _updates("macos", "10.13.6", _mac_update()) == []
    # From the version that introduced it, or with the version unknown, it is required.
    assert _updates("ios", "16.2", _os_update()) == [missing]
    assert _updates("ios", "17.5.1", _os_update()) == [missing]
    assert _updates("macos", "13.1", _mac_update()) == [missing]
    assert _updates("ios", None, _os_update()) == [missing]
    assert _updates("ios", "not a version", _os_update()) == [missing]
    assert _updates("ios", "1" * 5000, _os_update()) == [missing]  # no int() of it
    assert _updates("ios", "11.4 (15F79)", _os_update()) == []
    # macOS DownloadSize came in 10.12: missing on 10.11, required on 10.13.
    no_size = {k: v for k, v in _mac_update().items() if k != "DownloadSize"}
    assert _updates("macos", "10.11.6", no_size) == []
    assert _updates("macos", "10.13", no_size) == [
        ("AvailableOSUpdates[0].DownloadSize", "missing")
    ]
    # The facts do not date Build (nor DownloadSize on iOS); iOS 11 and macOS 10.13 devices
    # do not send them, so an erratum dates them to the next major release.
    old_ios = {k: v for k, v in _os_update().items() if k not in ("Build", "DownloadSize")}
    assert _updates("ios", "11.4", old_ios) == []
    assert _updates("ios", "12.0", old_ios) == [
        ("AvailableOSUpdates[0].Build", "missing"),
        ("AvailableOSUpdates[0].DownloadSize", "missing"),
    ]
    no_build = {k: v for k, v in _mac_update().items() if k != "Build"}
    assert _updates("macos", "10.13.6", no_build) == []
    assert _updates("macos", "10.14", no_build) == [("AvailableOSUpdates[0].Build", "missing")]


def test_profile_payload_uuid_is_not_required_before_ios_17() -> None:
    profile = {
        "PayloadIdentifier": "com.example.wifi",
        "PayloadUUID": "6D8A5C4E-0000-4000-8000-000000000001",
        "PayloadVersion": 1,
        "PayloadContent": [
            {"PayloadType": "com.apple.wifi.managed", "PayloadVersion": 1, "PayloadIdentifier": "w"}
        ],
    }
    report = {"Status": "Acknowledged", "ProfileList": [profile]}

    def issues(platform: str, os_version: str) -> list[tuple[str, str]]:
        return _paths(
            schema.validate_response(
                "ProfileList", report, platform=platform, os_version=os_version
            )
        )

    assert issues("ios", "11.4.1") == []
    assert issues("macos", "13.6") == []
    assert issues("ios", "17.0") == [("ProfileList[0].PayloadContent[0].PayloadUUID", "missing")]
    assert issues("macos", "14.0") == [("ProfileList[0].PayloadContent[0].PayloadUUID", "missing")]


def test_os_version_reaches_the_decoders() -> None:
    body = plistlib.dumps(
        {
            "UDID": "u",
            "Status": "Acknowledged",
            "CommandUUID": "c",
            "AvailableOSUpdates": [_os_update()],
        }
    )
    old = reports.decode_report(
        body, request_type="AvailableOSUpdates", platform="ios", os_version="11.4"
    )
    assert old.warnings == []
    new = reports.decode_report(
        body, request_type="AvailableOSUpdates", platform="ios", os_version="17.5"
    )
    assert _paths(new.warnings) == [("AvailableOSUpdates[0].IsSecurityResponse", "missing")]
    # Check-in messages too: a macOS user channel's TokenUpdate has NotOnConsole from 10.11.
    message = plistlib.dumps(
        {
            "MessageType": "TokenUpdate",
            "UDID": "u",
            "UserID": "501",
            "UserLongName": "Ann",
            "Topic": "t",
            "Token": b"x",
            "PushMagic": "m",
        }
    )
    assert checkin.decode_checkin(message, platform="macos", os_version="10.10.5").warnings == []
    newer = checkin.decode_checkin(message, platform="macos", os_version="10.11")
    assert _paths(newer.warnings) == [("NotOnConsole", "missing")]


def test_macos_sends_previous_scan_result_as_an_integer() -> None:
    def issues(value: Any, platform: str | None = "macos") -> list[tuple[str, str]]:
        report = {
            "Status": "Acknowledged",
            "QueryResponses": {"OSUpdateSettings": {"PreviousScanResult": value}},
        }
        return _paths(
            schema.validate_response(
                "DeviceInformation", report, platform=platform, os_version="10.15.7"
            )
        )

    assert issues(0) == []
    assert issues(2) == []
    assert issues("0") == []
    assert issues(0, None) == []
    assert issues(True) == [("QueryResponses.OSUpdateSettings.PreviousScanResult", "type")]
    assert issues(1.5) == [("QueryResponses.OSUpdateSettings.PreviousScanResult", "type")]
