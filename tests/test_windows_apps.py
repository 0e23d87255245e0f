"""The Windows app lifecycle: typed commands against Microsoft's documented snippets (seeds
003/004, repaired where malformed), refusals, and the device's answers parsed into state."""

from __future__ import annotations

import base64
import pickle
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdmgate import syncml
from mdmgate.syncml import Command, Header, Item, Message
from mdmgate.windows import apps
from mdmgate.windows.apps import (
    AddLicense,
    AppCommandRefused,
    AppPolicy,
    AppRecord,
    AppResult,
    DoNotUpdate,
    HostedInstall,
    InstallState,
    InstallStatus,
    Inventory,
    LastScanError,
    OptionalPackage,
    RemoveProvisioned,
    RemoveStoreLicense,
    StoreInstall,
    StoreLicenseInventory,
    Uninstall,
    UpdateScan,
)
from tests import syncml_corpus as corpus

PFN = "Contoso.HelloWorld_8wekyb3d8bbwe"
FULL = "Contoso.HelloWorld_1.0.0.0_x64__8wekyb3d8bbwe"
LICENSE = "4d5b8ec2-1a9f-4c3e-9b7a-0e2f6c8d1a3b"
PRODUCT = "9WZDNCRFJ3TJ"
SKU = "0010"
BLOB = base64.b64encode(b"<License>offline licence bytes</License>").decode()
EMAM = "Vendor/MSFT/EnterpriseModernAppManagement"
HELLO = "\\\\server\\share\\HelloWorld10.appx"
DEPS = [
    "\\\\server\\share\\HelloWorldFramework.appx",
    "\\\\server2\\share\\HelloMarsFramework.appx",
]
OPTIONAL = [
    OptionalPackage(package_uri="\\\\server\\share\\OptionalPackage1.appx", package_family=PFN),
    OptionalPackage(package_uri="\\\\server2\\share\\OptionalPackage2.appx", package_family=PFN),
]

_HEAD = (
    b'<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>'
    b"<SessionID>1</SessionID><MsgID>1</MsgID><Target><LocURI>device</LocURI></Target>"
    b"<Source><LocURI>mdmgate</LocURI></Source></SyncHdr><SyncBody>"
)
_TAIL = b"</SyncBody></SyncML>"


def commands_of(body: bytes) -> list[Command]:
    """The commands of a stored body, decoded as the session layer will."""
    return syncml.decode(_HEAD + body + _TAIL).commands


# --- comparing with the manual's snippets ------------------------------------------------

_SEEDS = dict(corpus.seed_messages())


def _fill_placeholders(raw: bytes) -> bytes:
    """The seed snippet with its placeholders filled in, and the two placeholder faults
    fixed: `{PackageFamilyName` without its closing brace in the Add LocURIs, and the stray
    `/` before the optional packages' family names."""
    for old, new in (
        ("{PackageFamilyName}", PFN),
        ("{PackageFamilyName<", PFN + "<"),
        ('PackageFamilyName="/' + PFN, 'PackageFamilyName="' + PFN),
        ("{PackageFullName}", FULL),
        ("{license id}", LICENSE),
        ("{LicenseID}", LICENSE),
        ("{ProductID}", PRODUCT),
        ("{LicenseBlob}", BLOB),
        ('skuid=" "', f'skuid="{SKU}"'),
    ):
        raw = raw.replace(old.encode(), new.encode())
    return raw


def seed_commands(prefix: str) -> list[Command]:
    (name,) = [n for n in _SEEDS if n.startswith(prefix)]
    return syncml.decode(_fill_placeholders(_SEEDS[name])).commands


def _canonical_xml(text: str) -> Any:
    def walk(element: ET.Element) -> Any:
        return (
            element.tag,
            sorted(element.attrib.items()),
            (element.text or "").strip(),
            [walk(child) for child in element],
        )

    return walk(ET.fromstring(text.strip()))


def shape(commands: Sequence[Command]) -> list[Any]:
    """What must agree with the manual: command order, target, Meta (in order) and Data
    (XML compared as a tree, whitespace between elements ignored)."""
    out = []
    for command in commands:
        items = []
        for item in command.items:
            data: Any = item.data
            if item.format == "xml" and isinstance(data, str):
                data = _canonical_xml(data)
            meta = list(item.meta.items()) if item.meta else []
            items.append((item.target, meta, data))
        out.append((command.name, items))
    return out


SEED_CASES: list[tuple[str, apps.AppCommand, slice]] = [
    ("01_get", Inventory(scope="device"), slice(None)),
    (
        "02_get",
        Inventory(scope="user", classification="AppStore", package_family=PFN),
        slice(None),
    ),
    ("03_get", StoreLicenseInventory(scope="device"), slice(None)),
    ("04_get", StoreLicenseInventory(scope="user", license_id=LICENSE), slice(None)),
    ("05_get_replace", AppPolicy(policy="AllowAllTrustedApps"), slice(0, 1)),
    ("05_get_replace", AppPolicy(policy="AllowAllTrustedApps", value=1), slice(1, 2)),
    ("06_get_replace", AppPolicy(policy="AllowDeveloperUnlock"), slice(0, 1)),
    ("06_get_replace", AppPolicy(policy="AllowDeveloperUnlock", value=1), slice(1, 2)),
    ("27_get_replace", AppPolicy(policy="AllowSharedUserAppData"), slice(0, 1)),
    ("27_get_replace", AppPolicy(policy="AllowSharedUserAppData", value=1), slice(1, 2)),
    ("08_exec", AddLicense(scope="user", license_id=LICENSE, license_blob=BLOB), slice(None)),
    (
        "09_add_exec",
        HostedInstall(scope="user", package_family=PFN, package_uri=HELLO),
        slice(None),
    ),
    (
        "10_add_exec",
        HostedInstall(
            scope="user",
            package_family=PFN,
            package_uri=HELLO,
            dependencies=DEPS,
            deployment_options=0,
        ),
        slice(None),
    ),
    (
        "11_add_exec",
        HostedInstall(
            scope="user",
            package_family=PFN,
            package_uri=HELLO,
            dependencies=DEPS,
            optional_packages=OPTIONAL,
            deployment_options=0,
        ),
        slice(None),
    ),
    (
        "12_add_exec",
        HostedInstall(scope="device", package_family=PFN, package_uri=HELLO),
        slice(None),
    ),
    (
        "13_add_exec",
        HostedInstall(scope="device", package_family=PFN, package_uri=HELLO, dependencies=DEPS),
        slice(None),
    ),
    ("14_get", InstallStatus(scope="user", package_family=PFN), slice(None)),
    ("15_get", InstallStatus(scope="user"), slice(None)),
    ("17_delete", Uninstall(package_family=PFN, classification="AppStore"), slice(None)),
    (
        "18_delete",
        Uninstall(package_family=PFN, package_full_name=FULL, classification="AppStore"),
        slice(None),
    ),
    ("21_delete", RemoveStoreLicense(scope="user", license_id=LICENSE), slice(None)),
    ("22_delete", RemoveStoreLicense(scope="device", license_id=LICENSE), slice(None)),
    ("24_exec", UpdateScan(scope="user"), slice(None)),
    ("25_get", LastScanError(scope="user"), slice(None)),
    ("26_replace", DoNotUpdate(package_family=PFN, value=1), slice(None)),
]


def _provisioned(**changes: Any) -> AppRecord:
    fields: dict[str, Any] = {
        "package_full_name": FULL,
        "package_family": PFN,
        "classification": "AppStore",
        "scope": "device",
        "is_provisioned": True,
    }
    fields.update(changes)
    return AppRecord(**fields)


@pytest.mark.parametrize("seed", ["003", "004"])
@pytest.mark.parametrize(
    ("snippet", "command", "part"),
    SEED_CASES,
    ids=[f"{s}-{apps.describe(c)}" for s, c, _ in SEED_CASES],
)
def test_expansion_matches_the_manual(
    seed: str, snippet: str, command: apps.AppCommand, part: slice
) -> None:
    expected = seed_commands(f"seed{seed}_{snippet}")[part]
    assert shape(commands_of(apps.expand(command))) == shape(expected)


@pytest.mark.parametrize("seed", ["003", "004"])
@pytest.mark.parametrize(
    ("snippet", "full_name"), [("19_delete", None), ("20_delete", FULL)], ids=["family", "full"]
)
def test_remove_provisioned_matches_the_manual(
    seed: str, snippet: str, full_name: str | None
) -> None:
    command = RemoveProvisioned(package_family=PFN, package_full_name=full_name)
    body = apps.expand(command, inventory=[_provisioned()])
    assert shape(commands_of(body)) == shape(seed_commands(f"seed{seed}_{snippet}"))


@pytest.mark.parametrize("seed", ["003", "004"])
def test_store_install_adds_the_family_node_then_execs_the_manuals_command(seed: str) -> None:
    (expected,) = seed_commands(f"seed{seed}_07_exec")
    add, exec_ = commands_of(
        apps.expand(StoreInstall(package_family=PFN, product_id=PRODUCT, skuid=SKU))
    )
    assert shape([exec_]) == shape([expected])
    assert add.name == "Add"
    assert [i.target for i in add.items] == [f"./User/{EMAM}/AppInstallation/{PFN}"]


def test_the_seed_table_covers_every_command_kind() -> None:
    covered = {type(c) for _, c, _ in SEED_CASES} | {RemoveProvisioned, StoreInstall}
    assert covered == set(apps.AppCommand.__args__)  # type: ignore[attr-defined]


# --- the bytes: escaping, order, ids --------------------------------------------------


def test_hosted_install_xml_is_escaped_exactly_once() -> None:
    uri = "https://cdn.contoso.com/apps/Hello.msix?sv=2024-05-04&sig=a%2Fb<c>\"d'"
    command = HostedInstall(
        scope="user",
        package_family=PFN,
        package_uri=uri,
        dependencies=["https://cdn.contoso.com/fw.appx?x=1&y=2"],
        deployment_options=1,
    )
    body = apps.expand(command)
    _add, exec_ = commands_of(body)
    data = exec_.items[0].data
    assert isinstance(data, str)
    expected = (
        '<Application PackageUri="https://cdn.contoso.com/apps/Hello.msix?sv=2024-05-04&amp;'
        'sig=a%2Fb&lt;c&gt;&quot;d\'" DeploymentOptions="1"><Dependencies>'
        '<Dependency PackageUri="https://cdn.contoso.com/fw.appx?x=1&amp;y=2"/>'
        "</Dependencies></Application>"
    )
    assert data == expected
    application = ET.fromstring(data)
    assert application.get("PackageUri") == uri
    assert application.find("Dependencies/Dependency").get("PackageUri").endswith("x=1&y=2")  # type: ignore[union-attr]
    # On the wire: the description is text, escaped once; never raw markup, never twice.
    assert b"<Data>&lt;Application PackageUri=" in body
    assert b"<Application" not in body
    assert b"&lt;/Dependencies&gt;&lt;/Application&gt;</Data>" in body
    assert b"&amp;lt;Dependenc" not in body
    assert b"&amp;lt;/Application" not in body
    assert b"&amp;amp;amp;" not in body
    assert b"sv=2024-05-04&amp;amp;sig=" in body


def test_store_install_and_license_data_are_escaped_once() -> None:
    body = apps.expand(StoreInstall(package_family=PFN, product_id=PRODUCT, skuid=SKU))
    assert b"<Data>&lt;Application id=&quot;" not in body  # quotes need no escaping in text
    assert (
        f'<Data>&lt;Application id="{PRODUCT}" flags="0" skuid="{SKU}"/&gt;</Data>'.encode() in body
    )
    body = apps.expand(AddLicense(scope="device", license_id=LICENSE, license_blob=BLOB))
    (exec_,) = commands_of(body)
    assert exec_.items[0].data == f'<License Content="{BLOB}"/>'
    assert (
        exec_.items[0].target == f"./Device/{EMAM}/AppLicenses/StoreLicenses/{LICENSE}/AddLicense"
    )


@pytest.mark.parametrize("command", [c for _, c, _ in SEED_CASES], ids=apps.describe)
def test_items_keep_the_manuals_element_order_and_placeholder_ids(
    command: apps.AppCommand,
) -> None:
    body = apps.expand(command)
    commands = commands_of(body)
    assert [c.cmd_id for c in commands] == [str(n) for n in range(1, len(commands) + 1)]
    for chunk in body.split(b"<Item>")[1:]:
        positions = [chunk.find(tag) for tag in (b"<Target>", b"<Meta>", b"<Data>")]
        present = [p for p in positions if p >= 0]
        assert present == sorted(present)
        assert positions[0] == 0


def test_hosted_install_orders_add_before_exec_and_formats_xml() -> None:
    body = apps.expand(HostedInstall(scope="device", package_family=PFN, package_uri=HELLO))
    add, exec_ = commands_of(body)
    assert (add.name, exec_.name) == ("Add", "Exec")
    assert add.items[0].meta is None
    assert add.items[0].data is None
    assert exec_.items[0].format == "xml"
    assert exec_.items[0].target == add.items[0].target + "/HostedInstall"
    assert exec_.items[0].data == f'<Application PackageUri="{HELLO}"/>'


def test_device_provisioning_leaves_deployment_options_out() -> None:
    body = apps.expand(
        HostedInstall(scope="device", package_family=PFN, package_uri="C:\\Staged\\app1.appx")
    )
    assert b"DeploymentOptions" not in body
    assert apps.command_targets(body)[0].startswith("./Device/")


def test_policy_values_and_formats() -> None:
    for policy in ("AllowAllTrustedApps", "AllowDeveloperUnlock"):
        (replace,) = commands_of(apps.expand(AppPolicy(policy=policy, value=65535)))  # type: ignore[arg-type]
        assert replace.items[0].data == "65535"
        assert replace.items[0].meta == {"Format": "int", "Type": "text/plain"}
    (replace,) = commands_of(apps.expand(AppPolicy(policy="AllowSharedUserAppData", value=0)))
    assert replace.name == "Replace"
    assert replace.items[0].target == (
        "./Vendor/MSFT/Policy/Config/ApplicationManagement/AllowSharedUserAppData"
    )
    assert replace.items[0].data == "0"


def test_license_ids_are_percent_encoded() -> None:
    body = apps.expand(RemoveStoreLicense(scope="user", license_id="{AB12}"))
    assert apps.command_targets(body) == [f"./User/{EMAM}/AppLicenses/StoreLicenses/%7BAB12%7D"]


def test_uninstall_takes_the_classification_from_the_inventory() -> None:
    record = _provisioned(classification="nonStore", scope="user", is_provisioned=False)
    body = apps.expand(Uninstall(package_family=PFN), inventory=[record])
    assert apps.command_targets(body) == [f"./User/{EMAM}/AppManagement/nonStore/{PFN}"]
    body = apps.expand(
        RemoveProvisioned(package_family=PFN), inventory=[_provisioned(classification="nonStore")]
    )
    assert apps.command_targets(body) == [f"./Device/{EMAM}/AppManagement/nonStore/{PFN}"]


def test_describe_labels_every_kind() -> None:
    assert apps.describe(UpdateScan(scope="user")) == "windows_app.update_scan"
    assert apps.describe(HostedInstall(scope="user", package_family=PFN, package_uri=HELLO)) == (
        "windows_app.hosted_install"
    )
    labels = {apps.describe(c) for _, c, _ in SEED_CASES}
    assert len(labels) == 11  # 13 kinds, less RemoveProvisioned and StoreInstall


# --- refusals --------------------------------------------------------------------------

BAD = "$.windows_app."
REFUSALS: list[tuple[str, apps.AppCommand, Sequence[AppRecord], str, str]] = [
    (
        "store install in device scope",
        StoreInstall(package_family=PFN, product_id=PRODUCT, skuid=SKU, scope="device"),
        (),
        "scope",
        "user context",
    ),
    (
        "store install bad product id",
        StoreInstall(package_family=PFN, product_id='9W"><x', skuid=SKU),
        (),
        "product_id",
        "product id",
    ),
    (
        "store install bad sku",
        StoreInstall(package_family=PFN, product_id=PRODUCT, skuid=" "),
        (),
        "skuid",
        "SKU",
    ),
    (
        "uninstall a System app by classification",
        Uninstall(package_family=PFN, classification="System"),
        (),
        "classification",
        "System",
    ),
    (
        "uninstall a System app known from the inventory",
        Uninstall(package_family=PFN, classification="AppStore"),
        [_provisioned(classification="System", scope="user")],
        "package_family",
        "System",
    ),
    (
        "uninstall in device scope",
        Uninstall(package_family=PFN, classification="AppStore", scope="device"),
        (),
        "scope",
        "remove_provisioned",
    ),
    (
        "uninstall of an unknown app without classification",
        Uninstall(package_family=PFN),
        (),
        "classification",
        "inventory",
    ),
    (
        "uninstall of another family's package",
        Uninstall(
            package_family=PFN,
            package_full_name="Fabrikam.Notes_2.0.0.0_x64__8wekyb3d8bbwe",
            classification="AppStore",
        ),
        (),
        "package_full_name",
        "not a package of the family",
    ),
    (
        "uninstall of a malformed full name",
        Uninstall(
            package_family=PFN, package_full_name="Contoso.HelloWorld", classification="AppStore"
        ),
        (),
        "package_full_name",
        "not a package full name",
    ),
    (
        "full name with a newline",
        Uninstall(package_family=PFN, package_full_name=FULL + "\n", classification="AppStore"),
        (),
        "package_full_name",
        "not a package full name",
    ),
    (
        "licence id with a newline",
        StoreLicenseInventory(scope="user", license_id=LICENSE + "\n"),
        (),
        "license_id",
        "licence id",
    ),
    (
        "remove provisioned without inventory",
        RemoveProvisioned(package_family=PFN),
        (),
        "package_family",
        "IsProvisioned = 1",
    ),
    (
        "remove provisioned of an app not provisioned",
        RemoveProvisioned(package_family=PFN),
        [_provisioned(is_provisioned=False), _provisioned(is_provisioned=None, scope="user")],
        "package_family",
        "IsProvisioned = 1",
    ),
    (
        "remove provisioned of a version not provisioned",
        RemoveProvisioned(
            package_family=PFN,
            package_full_name="Contoso.HelloWorld_2.0.0.0_x64__8wekyb3d8bbwe",
        ),
        [_provisioned()],
        "package_full_name",
        "IsProvisioned = 1",
    ),
    (
        "remove provisioned in another classification",
        RemoveProvisioned(package_family=PFN, classification="nonStore"),
        [_provisioned()],
        "package_family",
        "IsProvisioned = 1",
    ),
    (
        "remove provisioned System app",
        RemoveProvisioned(package_family=PFN),
        [_provisioned(classification="System")],
        "package_family",
        "System",
    ),
    (
        "remove provisioned System classification",
        RemoveProvisioned(package_family=PFN, classification="System"),
        [_provisioned()],
        "classification",
        "System",
    ),
    (
        "remove provisioned in user scope",
        RemoveProvisioned(package_family=PFN, scope="user"),
        [_provisioned()],
        "scope",
        "device context",
    ),
    (
        "family with a space",
        HostedInstall(
            scope="user", package_family="Contoso Hello_8wekyb3d8bbwe", package_uri=HELLO
        ),
        (),
        "package_family",
        "not a package family name",
    ),
    (
        "family with a slash",
        Uninstall(package_family="../AppStore_8wekyb3d8bbwe", classification="AppStore"),
        (),
        "package_family",
        "not a package family name",
    ),
    (
        "family with a newline",
        InstallStatus(scope="user", package_family=PFN + "\n"),
        (),
        "package_family",
        "not a package family name",
    ),
    (
        "family without publisher id",
        DoNotUpdate(package_family="Contoso.HelloWorld"),
        (),
        "package_family",
        "not a package family name",
    ),
    (
        "hosted install over plain http",
        HostedInstall(scope="user", package_family=PFN, package_uri="http://contoso.com/a.appx"),
        (),
        "package_uri",
        "https",
    ),
    (
        "hosted install from ftp",
        HostedInstall(scope="user", package_family=PFN, package_uri="ftp://contoso.com/a.appx"),
        (),
        "package_uri",
        "not a local path",
    ),
    (
        "hosted install from a relative path",
        HostedInstall(scope="user", package_family=PFN, package_uri="apps\\a.appx"),
        (),
        "package_uri",
        "not a local path",
    ),
    (
        "hosted install uri with a control character",
        HostedInstall(scope="user", package_family=PFN, package_uri="https://a.example/\x01"),
        (),
        "package_uri",
        "control",
    ),
    (
        "hosted install bad dependency",
        HostedInstall(
            scope="user",
            package_family=PFN,
            package_uri=HELLO,
            dependencies=[DEPS[0], "http://contoso.com/fw.appx"],
        ),
        (),
        "dependencies[1]",
        "https",
    ),
    (
        "hosted install bad optional package family",
        HostedInstall(
            scope="user",
            package_family=PFN,
            package_uri=HELLO,
            optional_packages=[OptionalPackage(package_uri=HELLO, package_family="/" + PFN)],
        ),
        (),
        "optional_packages[0].package_family",
        "not a package family name",
    ),
    (
        "deployment options when provisioning",
        HostedInstall(scope="device", package_family=PFN, package_uri=HELLO, deployment_options=0),
        (),
        "deployment_options",
        "user context",
    ),
    (
        "licence blob not base64",
        AddLicense(scope="user", license_id=LICENSE, license_blob="not base64!"),
        (),
        "license_blob",
        "base64",
    ),
    (
        "licence id with a slash",
        RemoveStoreLicense(scope="user", license_id="a/b"),
        (),
        "license_id",
        "licence id",
    ),
    (
        "family inventory without classification",
        Inventory(scope="device", package_family=PFN),
        (),
        "classification",
        "classification",
    ),
    (
        "do not update for a user",
        DoNotUpdate(package_family=PFN, scope="user"),
        (),
        "scope",
        "device-level",
    ),
    (
        "shared app data not configured",
        AppPolicy(policy="AllowSharedUserAppData", value=65535),
        (),
        "value",
        "takes 0, 1",
    ),
]


@pytest.mark.parametrize(
    ("command", "inventory", "field", "text"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_refusals_name_the_field(
    command: apps.AppCommand, inventory: Sequence[AppRecord], field: str, text: str
) -> None:
    with pytest.raises(AppCommandRefused) as caught:
        apps.expand(command, inventory=inventory)
    assert caught.value.field == BAD + field
    assert text in caught.value.message
    assert isinstance(caught.value, ValueError)


def test_remove_provisioned_needs_only_one_provisioned_record() -> None:
    inventory = [
        _provisioned(scope="user", is_provisioned=False),
        _provisioned(package_full_name="Contoso.HelloWorld_0.9.0.0_x64__8wekyb3d8bbwe"),
    ]
    body = apps.expand(RemoveProvisioned(package_family=PFN), inventory=inventory)
    assert apps.command_targets(body) == [f"./Device/{EMAM}/AppManagement/AppStore/{PFN}"]


# --- the admin API's view: JSON and schema ------------------------------------------


def test_commands_decode_from_json_by_action() -> None:
    raw = (
        b'{"action": "hosted_install", "scope": "device", "package_family": "'
        + PFN.encode()
        + b'", "package_uri": "https://cdn.contoso.com/a.msix",'
        b' "optional_packages": [{"package_uri": "C:\\\\x.appx", "package_family": "'
        + PFN.encode()
        + b'"}]}'
    )
    command = msgspec.json.decode(raw, type=apps.AppCommand)
    assert isinstance(command, HostedInstall)
    assert command.optional_packages[0].package_uri == "C:\\x.appx"
    assert msgspec.json.decode(msgspec.json.encode(command), type=apps.AppCommand) == command
    with pytest.raises(msgspec.ValidationError, match=r"\$\.package_family"):
        msgspec.json.decode(
            b'{"action": "uninstall", "package_family": "a b_8wekyb3d8bbwe"}', type=apps.AppCommand
        )
    with pytest.raises(msgspec.ValidationError, match="action"):
        msgspec.json.decode(b'{"action": "format_disk"}', type=apps.AppCommand)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(
            b'{"action": "update_scan", "scope": "user", "x": 1}', type=apps.AppCommand
        )


def test_every_field_is_documented_for_the_openapi_document() -> None:
    schema = msgspec.json.schema(apps.AppCommand)
    assert schema["discriminator"]["propertyName"] == "action"
    definitions = schema["$defs"]
    assert len(schema["discriminator"]["mapping"]) == 13
    for name, definition in definitions.items():
        assert definition.get("description"), name
        for field, prop in definition["properties"].items():
            if field == "action":
                continue
            described = prop.get("description") or any(
                member.get("description") for member in prop.get("anyOf", [])
            )
            assert described, f"{name}.{field}"


# --- inventory -----------------------------------------------------------------------

_NODE = {"Format": "node"}
_LEAF_FORMATS = {
    "is_framework": "int",
    "is_bundle": "int",
    "requires_reinstall": "int",
    "package_status": "int",
    "is_provisioned": "int",
    "is_stub": "int",
}
_LEAF_NAMES = {
    "name": "Name",
    "version": "Version",
    "publisher": "Publisher",
    "architecture": "Architecture",
    "install_location": "InstallLocation",
    "is_framework": "IsFramework",
    "is_bundle": "IsBundle",
    "install_date": "InstallDate",
    "resource_id": "ResourceID",
    "requires_reinstall": "RequiresReinstall",
    "package_status": "PackageStatus",
    "users": "Users",
    "is_provisioned": "IsProvisioned",
    "is_stub": "IsStub",
}


def _root(scope: str) -> str:
    return f"./{'Device' if scope == 'device' else 'User'}/{EMAM}/AppManagement"


def record_items(record: AppRecord) -> list[Item]:
    """The StructData items Windows writes for one package."""
    family = f"{_root(record.scope)}/{record.classification}/{record.package_family}"
    full = f"{family}/{record.package_full_name}"
    items = [Item(source=family, meta=dict(_NODE)), Item(source=full, meta=dict(_NODE))]
    for field, leaf in _LEAF_NAMES.items():
        value = getattr(record, field)
        if value is None:
            continue
        text = str(int(value)) if isinstance(value, (bool, int)) else value
        meta = {"Format": _LEAF_FORMATS.get(field, "chr"), "Type": "text/plain"}
        items.append(Item(source=f"{full}/{leaf}", meta=meta, data=text))
    return items


def results_message(*groups: Sequence[Item]) -> bytes:
    """A device message: one Results per group of items."""
    header = Header(session_id="9", msg_id="2", target="https://mdm", source="device-1")
    commands = [
        Command("Results", cmd_id=str(n), msg_ref="2", cmd_ref=str(n + 10), items=list(items))
        for n, items in enumerate(groups, 1)
    ]
    return Message(header, commands).encode()


def decoded_items(data: bytes) -> list[Item]:
    return [item for c in syncml.decode(data).commands for item in c.items]


def _realistic_records() -> list[AppRecord]:
    users = "S-1-5-21-2127521184-1604012920-1887927527-1001(Installed)"
    return [
        AppRecord(
            package_full_name="Microsoft.WindowsStore_22301.1401.6.0_x64__8wekyb3d8bbwe",
            package_family="Microsoft.WindowsStore_8wekyb3d8bbwe",
            classification="AppStore",
            scope="device",
            name="Microsoft.WindowsStore",
            version="22301.1401.6.0",
            publisher="CN=Microsoft Corporation, O=Microsoft Corporation, L=Redmond, "
            "S=Washington, C=US",
            architecture="9",
            install_location="C:\\Program Files\\WindowsApps\\"
            "Microsoft.WindowsStore_22301.1401.6.0_x64__8wekyb3d8bbwe",
            is_framework=False,
            is_bundle=False,
            install_date="2023-05-02 09:41:10",
            resource_id="",
            requires_reinstall=False,
            package_status=0,
            users=users,
            is_provisioned=True,
            is_stub=False,
        ),
        AppRecord(
            package_full_name="Microsoft.WindowsStore_22301.1401.6.0_neutral_~_8wekyb3d8bbwe",
            package_family="Microsoft.WindowsStore_8wekyb3d8bbwe",
            classification="AppStore",
            scope="device",
            name="Microsoft.WindowsStore",
            version="22301.1401.6.0",
            architecture="11",
            is_bundle=True,
            resource_id="~",
            is_provisioned=True,
        ),
        AppRecord(
            package_full_name="Contoso.Expenses_1.4.2.0_x64__a1b2c3d4e5f6g",
            package_family="Contoso.Expenses_a1b2c3d4e5f6g",
            classification="nonStore",
            scope="device",
            name="Contoso.Expenses",
            version="1.4.2.0",
            publisher="CN=Contoso & Partners <IT>, O=Contoso",
            install_location="C:\\Program Files\\WindowsApps\\Contoso.Expenses_1.4.2.0",
            is_framework=False,
            package_status=8,
            users=users,
            is_provisioned=False,
        ),
        AppRecord(
            package_full_name="Microsoft.Windows.Search_1.14.9.19041_neutral_neutral_cw5n1h2txyewy",
            package_family="Microsoft.Windows.Search_cw5n1h2txyewy",
            classification="System",
            scope="device",
            name="Microsoft.Windows.Search",
            version="1.14.9.19041",
            install_location="C:\\Windows\\SystemApps\\Microsoft.Windows.Search_cw5n1h2txyewy",
            resource_id="neutral",
            is_provisioned=False,
        ),
        AppRecord(
            package_full_name="Fabrikam.Notes_3.0.0.0_arm64__x8kq2mzv0b1rw",
            package_family="Fabrikam.Notes_x8kq2mzv0b1rw",
            classification="AppStore",
            scope="user",
            name="Fabrikam.Notes",
            version="3.0.0.0",
            architecture="12",
            users=users,
            requires_reinstall=True,
        ),
        AppRecord(
            package_full_name="Microsoft.VCLibs.140.00_14.0.30704.0_x64__8wekyb3d8bbwe",
            package_family="Microsoft.VCLibs.140.00_8wekyb3d8bbwe",
            classification="System",
            scope="user",
            is_framework=True,
        ),
    ]


def _noise(scope: str) -> list[Item]:
    """Nodes a StructData answer holds besides packages."""
    root = _root(scope)
    int_plain = {"Format": "int", "Type": "text/plain"}
    store = f"{root}/AppStore/Microsoft.WindowsStore_8wekyb3d8bbwe"
    return [
        Item(source=root, meta=dict(_NODE)),
        Item(source=f"{root}/LastScanError", meta=int_plain, data="0"),
        Item(source=f"{root}/UpdateScan", meta=dict(_NODE)),
        Item(source=f"{root}/AppStore", meta=dict(_NODE)),
        Item(source=f"{store}/DoNotUpdate", meta=int_plain, data="1"),
        Item(source=f"{store}/AppSettingPolicy", meta=dict(_NODE)),
        Item(source=f"{store}/AppSettingPolicy/SettingValue", meta=int_plain, data="1"),
        Item(source=f"{store}/NonRemovable", meta=int_plain, data="0"),
        Item(source=f"{root}/AppStore/ReleaseManagement", meta=dict(_NODE)),
        Item(source=f"{root}/AppStore/ReleaseManagement/Key1/ChannelId", data="beta"),
        Item(source="./DevDetail/SwV", data="10.0.22631.3447"),
    ]


def test_realistic_inventory_device_and_user_scope() -> None:
    records = _realistic_records()
    device = _noise("device") + [i for r in records if r.scope == "device" for i in record_items(r)]
    user = _noise("user") + [i for r in records if r.scope == "user" for i in record_items(r)]
    parsed = apps.parse_inventory(decoded_items(results_message(device, user)))
    assert parsed == records
    by_name = {r.package_full_name: r for r in parsed}
    store = by_name["Microsoft.WindowsStore_22301.1401.6.0_x64__8wekyb3d8bbwe"]
    assert store.package_family == "Microsoft.WindowsStore_8wekyb3d8bbwe"
    assert store.is_provisioned is True
    assert store.resource_id == ""
    assert by_name["Contoso.Expenses_1.4.2.0_x64__a1b2c3d4e5f6g"].publisher == (
        "CN=Contoso & Partners <IT>, O=Contoso"
    )
    assert [r.scope for r in parsed].count("user") == 2
    assert {r.classification for r in parsed} == {"AppStore", "nonStore", "System"}
    assert apps.package_family_of(store.package_full_name) == store.package_family


def test_inventory_of_one_family_and_vendor_prefix() -> None:
    # ./Vendor/MSFT/... is the device; values may come as bool text.
    base = f"./Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/nonStore/{PFN}/{FULL}"
    items = [
        Item(source=f"{base}/IsFramework", meta={"Format": "bool"}, data="true"),
        Item(source=f"{base}/IsProvisioned", meta={"Format": "int"}, data=" 1 "),
        Item(source=f"{base}/PackageStatus", meta={"Format": "int"}, data="garbage"),
    ]
    (record,) = apps.parse_inventory(items)
    assert record == AppRecord(
        package_full_name=FULL,
        package_family=PFN,
        classification="nonStore",
        scope="device",
        is_framework=True,
        is_provisioned=True,
    )


def test_inventory_from_the_corpus() -> None:
    parsed = apps.parse_inventory(decoded_items(corpus.inventory_results(300)))
    assert len(parsed) == 300
    assert len({r.package_full_name for r in parsed}) == 300
    for record in parsed:
        assert apps.package_family_of(record.package_full_name) == record.package_family
        assert record.name is not None
        assert record.package_family.startswith(record.name + "_")
        assert record.is_stub is False
    assert {r.classification for r in parsed} == {"AppStore", "nonStore", "System"}
    assert not any(r.is_provisioned for r in parsed if r.classification == "System")


def _many_records(count: int) -> list[AppRecord]:
    out = []
    for n in range(count):
        classification = ("AppStore", "nonStore", "System")[n % 3]
        name = f"Vendor{n % 17}.App{n:05d}"
        full = f"{name}_1.{n}.0.0_x64__8wekyb3d8bbwe"
        out.append(
            AppRecord(
                package_full_name=full,
                package_family=f"{name}_8wekyb3d8bbwe",
                classification=classification,
                scope="user" if n % 5 == 0 else "device",
                name=name,
                version=f"1.{n}.0.0",
                publisher="CN=Vendor",
                architecture="9",
                install_location=f"C:\\Program Files\\WindowsApps\\{full}",
                is_framework=n % 7 == 0,
                is_bundle=False,
                install_date="2024-01-02 03:04:05",
                resource_id="",
                requires_reinstall=False,
                package_status=0,
                users="S-1-5-21-1-2-3-1001(Installed)",
                is_provisioned=n % 4 == 0,
                is_stub=False,
            )
        )
    return out


def test_inventory_of_3000_packages_is_quick() -> None:
    records = _many_records(3000)
    items = [item for r in records for item in record_items(r)]
    assert len(items) == 3000 * 16
    start = time.perf_counter()
    parsed = apps.parse_inventory(items)
    elapsed = time.perf_counter() - start
    assert parsed == records
    assert elapsed < 1.0, f"{elapsed:.2f} s for 48,000 items"


_NAME_TEXT = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.-]{2,20}", fullmatch=True)
_PUBLISHER_ID = st.from_regex(r"[0-9a-hjkmnp-tv-z]{13}", fullmatch=True)
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cn")), max_size=40
) | st.sampled_from(["", " leading", "trailing ", "a & b <c>", "C:\\Program Files\\x"])


@st.composite
def app_records(draw: st.DrawFn) -> AppRecord:
    name = draw(_NAME_TEXT)
    publisher_id = draw(_PUBLISHER_ID)
    version = ".".join(str(draw(st.integers(0, 65535))) for _ in range(4))
    arch = draw(st.sampled_from(["x86", "x64", "arm", "arm64", "neutral"]))
    resource = draw(st.sampled_from(["", "~", "split.scale-100", "en-us"]))

    def maybe(strategy: st.SearchStrategy[Any]) -> Any:
        return draw(st.none() | strategy)

    return AppRecord(
        package_full_name=f"{name}_{version}_{arch}_{resource}_{publisher_id}",
        package_family=f"{name}_{publisher_id}",
        classification=draw(st.sampled_from(["AppStore", "nonStore", "System"])),
        scope=draw(st.sampled_from(["device", "user"])),
        name=maybe(_TEXT),
        version=maybe(_TEXT),
        publisher=maybe(_TEXT),
        architecture=maybe(_TEXT),
        install_location=maybe(_TEXT),
        is_framework=maybe(st.booleans()),
        is_bundle=maybe(st.booleans()),
        install_date=maybe(_TEXT),
        resource_id=maybe(_TEXT),
        requires_reinstall=maybe(st.booleans()),
        package_status=maybe(st.integers(0, 2**31 - 1)),
        users=maybe(_TEXT),
        is_provisioned=maybe(st.booleans()),
        is_stub=maybe(st.booleans()),
    )


def _key(record: AppRecord) -> tuple[str, str, str, str]:
    return (record.scope, record.classification, record.package_family, record.package_full_name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(app_records(), max_size=12, unique_by=_key))
def test_inventory_round_trip(records: list[AppRecord]) -> None:
    items = [item for r in records for item in record_items(r)]
    assert apps.parse_inventory(items) == records
    # The same through the wire format and the decoder.
    assert apps.parse_inventory(decoded_items(results_message(items))) == records
    # And through the storage form the service keeps.
    assert [msgspec.convert(msgspec.to_builtins(r), AppRecord) for r in records] == records


# --- install status ---------------------------------------------------------------------


def _install_items(scope: str, family: str, **leaves: str) -> list[Item]:
    root = f"./{'Device' if scope == 'device' else 'User'}/{EMAM}/AppInstallation/{family}"
    items = [Item(source=root, meta=dict(_NODE))]
    for leaf, value in leaves.items():
        fmt = "chr" if leaf == "LastErrorDesc" else "int"
        items.append(Item(source=f"{root}/{leaf}", meta={"Format": fmt}, data=value))
    return items


def test_install_status_zero_to_three() -> None:
    items = [
        Item(source=f"./User/{EMAM}/AppInstallation", meta=dict(_NODE)),
        *_install_items("user", "A.Zero_8wekyb3d8bbwe", Status="0", ProgressStatus="0"),
        *_install_items("user", "A.One_8wekyb3d8bbwe", Status="1", ProgressStatus="42"),
        *_install_items(
            "user",
            "A.Two_8wekyb3d8bbwe",
            Status="2",
            LastError="0x80073CF3",
            LastErrorDesc="Package failed updates, dependency or conflict validation.",
        ),
        *_install_items("device", "A.Three_8wekyb3d8bbwe", Status="3", LastError="0"),
        *_install_items("user", "A.Neg_8wekyb3d8bbwe", Status="2", LastError="-2147024891"),
        *_install_items(
            "user", "A.Alias_8wekyb3d8bbwe", Status="2", LastErrorDescription="Access denied"
        ),
        *_install_items("user", "A.Odd_8wekyb3d8bbwe", Status="7"),
        *_install_items("user", "A.Bare_8wekyb3d8bbwe"),
        Item(source=f"./User/{EMAM}/AppManagement/LastScanError", data="0"),
    ]
    states = apps.parse_install_status(decoded_items(results_message(items)))
    assert states == [
        InstallState(
            package_family="A.Zero_8wekyb3d8bbwe", status="not_installed", progress_status=0
        ),
        InstallState(package_family="A.One_8wekyb3d8bbwe", status="installing", progress_status=42),
        InstallState(
            package_family="A.Two_8wekyb3d8bbwe",
            status="failed",
            last_error=0x80073CF3,
            last_error_desc="Package failed updates, dependency or conflict validation.",
        ),
        InstallState(
            package_family="A.Three_8wekyb3d8bbwe", status="installed", last_error=0, scope="device"
        ),
        InstallState(package_family="A.Neg_8wekyb3d8bbwe", status="failed", last_error=0x80070005),
        InstallState(
            package_family="A.Alias_8wekyb3d8bbwe", status="failed", last_error_desc="Access denied"
        ),
        InstallState(package_family="A.Odd_8wekyb3d8bbwe", status=None),
        InstallState(package_family="A.Bare_8wekyb3d8bbwe", status=None),
    ]


def test_install_status_ignores_inventory_items() -> None:
    assert apps.parse_install_status(decoded_items(corpus.inventory_results(5))) == []
    assert apps.parse_inventory(_install_items("user", PFN, Status="1")) == []


def test_store_licences_parse() -> None:
    root = f"./Device/{EMAM}/AppLicenses/StoreLicenses"
    items = [
        Item(source=root, meta=dict(_NODE)),
        Item(source=f"{root}/{LICENSE}", meta=dict(_NODE)),
        Item(source=f"{root}/{LICENSE}/LicenseCategory", data="Retail"),
        Item(source=f"{root}/{LICENSE}/LicenseUsage", data="Offline"),
        Item(source=f"{root}/{LICENSE}/RequesterID", data="Contoso"),
        Item(source=f"{root}/%7BAB12%7D/LicenseUsage", data="Online"),
    ]
    assert apps.parse_licenses(items) == [
        apps.LicenseRecord(
            license_id=LICENSE,
            scope="device",
            license_category="Retail",
            license_usage="Offline",
            requester_id="Contoso",
        ),
        apps.LicenseRecord(license_id="{AB12}", scope="device", license_usage="Online"),
    ]


# --- alerts ---------------------------------------------------------------------------

HOSTED = "Reversed-Domain-Name:com.microsoft.mdm.EnterpriseHostedAppInstall.result"
UNINSTALL = "Reversed-Domain-Name:com.microsoft.mdm.EnterpriseAppUninstall.result"
WIN32 = "Reversed-Domain-Name:com.microsoft.mdm.win32csp_install"
MSI = (
    "./Device/Vendor/MSFT/EnterpriseDesktopAppManagement/MSI/"
    "{AF9257BA-6BBD-4624-AA9B-0182D50292C3}/DownloadInstall"
)


def _alert_item(source: str, kind: str, data: str, **meta: str) -> Item:
    return Item(source=source, meta={"Type": kind, "Format": "int", **meta}, data=data)


@pytest.mark.parametrize("seed", ["003", "004"])
def test_the_manuals_alerts(seed: str) -> None:
    (install,) = seed_commands(f"seed{seed}_16_alert")
    result = apps.parse_app_alert(int(install.data or 0), install.items)
    assert result == AppResult(
        kind="install",
        source=f"./User/{EMAM}/AppInstallation/{PFN}/HostedInstall",
        package_family=PFN,
        code=0,
        success=True,
        scope="user",
    )
    (uninstall,) = seed_commands(f"seed{seed}_23_alert")
    result = apps.parse_app_alert(int(uninstall.data or 0), uninstall.items)
    assert result == AppResult(
        kind="uninstall",
        source=f"./User/{EMAM}/AppManagement/{PFN}",
        package_family=PFN,
        code=0,
        success=True,
        scope="user",
    )


ALERTS: list[tuple[str, int, Item, tuple[str, str | None, int, bool] | None]] = [
    (
        "install failed hex",
        1226,
        _alert_item(f"./Device/{EMAM}/AppInstallation/{PFN}/HostedInstall", HOSTED, "0x80070005"),
        ("install", PFN, 0x80070005, False),
    ),
    (
        "install failed decimal",
        1226,
        _alert_item(f"./User/{EMAM}/AppInstallation/{PFN}/HostedInstall", HOSTED, "2147942405"),
        ("install", PFN, 0x80070005, False),
    ),
    (
        "install failed negative decimal",
        1226,
        _alert_item(f"./User/{EMAM}/AppInstallation/{PFN}/HostedInstall", HOSTED, "-2147024891"),
        ("install", PFN, 0x80070005, False),
    ),
    (
        "install without the type prefix",
        1226,
        _alert_item(
            f"./User/{EMAM}/AppInstallation/{PFN}/HostedInstall",
            "com.microsoft.mdm.EnterpriseHostedAppInstall.result",
            " 0 ",
        ),
        ("install", PFN, 0, True),
    ),
    (
        "uninstall with classification, failed",
        1226,
        _alert_item(f"./User/{EMAM}/AppManagement/nonStore/{PFN}", UNINSTALL, "0X80073CFA"),
        ("uninstall", PFN, 0x80073CFA, False),
    ),
    (
        "uninstall failed decimal",
        1226,
        _alert_item(f"./Device/{EMAM}/AppManagement/{PFN}", UNINSTALL, "1"),
        ("uninstall", PFN, 1, False),
    ),
    (
        "win32csp_install as 1224",
        1224,
        _alert_item(MSI, WIN32, "0", Mark="informational"),
        ("win32", None, 0, True),
    ),
    (
        "win32csp_install as 1226, failed",
        1226,
        _alert_item(MSI, WIN32, "1603"),
        ("win32", None, 1603, False),
    ),
    (
        "result that is not a number",
        1226,
        _alert_item(f"./User/{EMAM}/AppInstallation/{PFN}/HostedInstall", HOSTED, "oops"),
        ("install", PFN, -1, False),
    ),
    (
        "unenrollment request",
        1226,
        Item(
            meta={"Type": "com.microsoft:mdm.unenrollment.userrequest", "Format": "int"}, data="1"
        ),
        None,
    ),
    ("login status", 1224, Item(meta={"Type": "com.microsoft/MDM/LoginStatus"}, data="user"), None),
    (
        "app type on a session alert",
        1201,
        _alert_item(f"./User/{EMAM}/AppInstallation/{PFN}/HostedInstall", HOSTED, "0"),
        None,
    ),
    ("no meta", 1226, Item(source=f"./User/{EMAM}/AppManagement/{PFN}", data="0"), None),
]


@pytest.mark.parametrize(
    ("code", "item", "expected"), [a[1:] for a in ALERTS], ids=[a[0] for a in ALERTS]
)
def test_app_alerts(
    code: int, item: Item, expected: tuple[str, str | None, int, bool] | None
) -> None:
    # Through the wire format, as the session layer hands them over.
    header = Header(session_id="4C", msg_id="3", target="https://mdm", source="device-1")
    alert = Command("Alert", cmd_id="4", data=str(code), items=[item])
    (decoded,) = syncml.decode(Message(header, [alert]).encode()).commands
    result = apps.parse_app_alert(code, decoded.items)
    if expected is None:
        assert result is None
        return
    assert result is not None
    assert (result.kind, result.package_family, result.code, result.success) == expected
    assert result.source == item.source


def test_an_alert_reports_its_first_app_result() -> None:
    items = [
        Item(meta={"Type": "com.microsoft/MDM/LoginStatus"}, data="user"),
        _alert_item(f"./User/{EMAM}/AppManagement/{PFN}", UNINSTALL, "0"),
        _alert_item(MSI, WIN32, "1603"),
    ]
    result = apps.parse_app_alert(1226, items)
    assert result is not None
    assert result.kind == "uninstall"
    assert apps.parse_app_alert(1226, []) is None


# --- tying results to the stored commands ---------------------------------------------


def test_command_targets_and_matching() -> None:
    hosted = apps.expand(HostedInstall(scope="user", package_family=PFN, package_uri=HELLO))
    uninstall = apps.expand(Uninstall(package_family=PFN, classification="AppStore"))
    other = apps.expand(
        Uninstall(package_family="Fabrikam.Notes_x8kq2mzv0b1rw", classification="AppStore")
    )
    install_alert = apps.parse_app_alert(
        1226, [_alert_item(f"./User/{EMAM}/AppInstallation/{PFN}/HostedInstall", HOSTED, "0")]
    )
    uninstall_alert = apps.parse_app_alert(
        1226, [_alert_item(f"./User/{EMAM}/AppManagement/{PFN}", UNINSTALL, "0")]
    )
    device_uninstall = apps.parse_app_alert(
        1226, [_alert_item(f"./Device/{EMAM}/AppManagement/{PFN}", UNINSTALL, "0")]
    )
    assert install_alert is not None
    assert uninstall_alert is not None
    assert device_uninstall is not None
    targets = apps.command_targets(hosted)
    assert targets == [
        f"./User/{EMAM}/AppInstallation/{PFN}",
        f"./User/{EMAM}/AppInstallation/{PFN}/HostedInstall",
    ]
    assert install_alert.source in targets
    assert apps.result_matches(install_alert, targets)
    assert not apps.result_matches(install_alert, apps.command_targets(uninstall))
    assert apps.result_matches(uninstall_alert, apps.command_targets(uninstall))
    assert not apps.result_matches(uninstall_alert, apps.command_targets(other))
    assert not apps.result_matches(uninstall_alert, targets)
    assert not apps.result_matches(device_uninstall, apps.command_targets(uninstall))


def test_command_targets_of_nested_and_raw_bodies() -> None:
    body = (
        b"<Atomic><CmdID>1</CmdID><Add><CmdID>2</CmdID><Item><Target><LocURI>./a</LocURI>"
        b"</Target></Item></Add><Sequence><CmdID>3</CmdID><Exec><CmdID>4</CmdID><Item><Target>"
        b"<LocURI>./b</LocURI></Target></Item></Exec></Sequence></Atomic>"
        b"<Get><CmdID>5</CmdID><Item><Target><LocURI>./c?list=StructData</LocURI></Target></Item>"
        b"<Item><Target><LocURI>./d</LocURI></Target></Item></Get>"
    )
    assert apps.command_targets(body) == ["./a", "./b", "./c?list=StructData", "./d"]
    assert apps.command_targets(b"<Get><CmdID>1</CmdID>") == []
    assert apps.command_targets(b"not xml at all") == []


def test_refusal_pickles_and_prints_its_field() -> None:
    refusal = AppCommandRefused("no", "$.windows_app.scope")
    copy = pickle.loads(pickle.dumps(refusal))
    assert (copy.message, copy.field) == ("no", "$.windows_app.scope")
    assert "$.windows_app.scope" in str(refusal)
