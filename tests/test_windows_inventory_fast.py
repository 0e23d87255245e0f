"""``apps.inventory_from_message`` (the message read in Rust) against the reference: the
Results items of ``syncml.decode(data)`` under the prefix (answering ``cmd_ref``), read by
``apps.parse_inventory``. Same records for XML and WBXML, same error for refused input."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdmgate import _core, syncml
from mdmgate.errors import SyncMLDecodeError
from mdmgate.syncml import Command, Header, Item, Message
from mdmgate.windows import apps
from mdmgate.windows.apps import AppRecord
from tests import syncml_corpus as corpus

CSP = "EnterpriseModernAppManagement"
DEVICE = f"./Device/Vendor/MSFT/{CSP}/AppManagement"
USER = f"./User/Vendor/MSFT/{CSP}/AppManagement"
VENDOR = f"./Vendor/MSFT/{CSP}/AppManagement"
FAMILY = "Contoso.Expenses_8wekyb3d8bbwe"
FULL = "Contoso.Expenses_1.4.0.0_x64__8wekyb3d8bbwe"
PACKAGE = f"{DEVICE}/nonStore/{FAMILY}/{FULL}"


def reference(data: bytes, prefix: str, cmd_ref: str | None = None) -> list[AppRecord]:
    message = syncml.decode(data)
    return apps.parse_inventory(
        item
        for command in message.commands
        if command.name == "Results" and (cmd_ref is None or command.cmd_ref == cmd_ref)
        for item in command.items
        if (item.source or item.target or "").startswith(prefix)
    )


def leaf(uri: str, data: str | bytes | None, *, target: bool = False) -> Item:
    meta: dict[str, str | list[str]] = {"Format": "chr", "Type": "text/plain"}
    if target:
        return Item(target=uri, meta=meta, data=data)
    return Item(source=uri, meta=meta, data=data)


def node(uri: str) -> Item:
    return Item(source=uri, meta={"Format": "node"})


def message(*results: tuple[str, Sequence[Item]], extra: Sequence[Command] = ()) -> Message:
    header = Header(session_id="9", msg_id="2", target="https://mdm", source="device-1")
    commands = [
        Command("Status", cmd_id="1", msg_ref="1", cmd_ref="0", cmd="SyncHdr", data="200"),
        *extra,
    ]
    commands += [
        Command("Results", cmd_id=str(10 + n), msg_ref="1", cmd_ref=cmd_ref, items=list(items))
        for n, (cmd_ref, items) in enumerate(results)
    ]
    return Message(header, commands)


def both_encodings(msg: Message) -> list[bytes]:
    return [msg.encode(), msg.encode(wbxml=True)]


def check(data: bytes, prefix: str, cmd_ref: str | None = None) -> list[AppRecord]:
    fast = apps.inventory_from_message(data, prefix, cmd_ref)
    assert fast == reference(data, prefix, cmd_ref)
    return fast


ALL_LEAVES = {
    "Name": "Contoso.Expenses",
    "Version": "1.4.0.0",
    "Publisher": "CN=Contoso, O=Contoso & Sons <HQ>, C=US",
    "Architecture": "9",
    "InstallLocation": "C:\\Program Files\\WindowsApps\\Contoso",
    "IsFramework": "0",
    "IsBundle": " TRUE ",
    "InstallDate": "2024-03-01 10:00:00",
    "ResourceID": "",
    "RequiresReinstall": "maybe",
    "PackageStatus": "-2147024891",
    "Users": "S-1-5-21-1-2-3-1001(Installed)",
    "IsProvisioned": "1",
    "IsStub": "false",
}


@pytest.mark.parametrize("wbxml", [False, True], ids=["xml", "wbxml"])
def test_every_leaf_kind(wbxml: bool) -> None:
    items = [node(PACKAGE)] + [leaf(f"{PACKAGE}/{k}", v) for k, v in ALL_LEAVES.items()]
    data = message(("4", items)).encode(wbxml=wbxml)
    assert check(data, DEVICE) == [
        AppRecord(
            package_full_name=FULL,
            package_family=FAMILY,
            classification="nonStore",
            scope="device",
            name="Contoso.Expenses",
            version="1.4.0.0",
            publisher="CN=Contoso, O=Contoso & Sons <HQ>, C=US",
            architecture="9",
            install_location="C:\\Program Files\\WindowsApps\\Contoso",
            is_framework=False,
            is_bundle=True,
            install_date="2024-03-01 10:00:00",
            resource_id="",
            requires_reinstall=None,
            package_status=0x80070005,
            users="S-1-5-21-1-2-3-1001(Installed)",
            is_provisioned=True,
            is_stub=False,
        )
    ]


NUMBERS = [
    "0",
    "-0",
    "+12",
    " 42\n",
    "\u3000" + "5" + "\x85",
    "-1",
    "-2147483648",
    "-2147483649",
    "0x80070005",
    "0XfF",
    "0xFFFFFFFFFFFFFFFF",
    "0x1FFFFFFFFFFFFFFFF",
    "99999999999999999999",
    "-99999999999999999999",
    "123456789012345678901",
    "0x",
    "1e3",
    "٣",
    "",
]


@pytest.mark.parametrize("text", NUMBERS)
def test_numbers_and_hresults(text: str) -> None:
    for data in both_encodings(message(("4", [leaf(f"{PACKAGE}/PackageStatus", text)]))):
        (record,) = check(data, DEVICE)
        assert record.package_status == apps._number(text)


@pytest.mark.parametrize(
    "text", ["1", "0", "true", "True", "TRUE", "tRue", "false\xa0", " FALSE", "01", "", "yes"]
)
def test_flags(text: str) -> None:
    for data in both_encodings(message(("4", [leaf(f"{PACKAGE}/IsStub", text)]))):
        (record,) = check(data, DEVICE)
        assert record.is_stub == apps._flag(text)


def test_scopes_names_and_skipped_nodes() -> None:
    items = [
        leaf(f"{USER}/appstore/{FAMILY}/{FULL}/Version", "1"),
        leaf(f"{VENDOR}/SYSTEM/{FAMILY}/{FULL}/Version", "2"),
        leaf(f"{DEVICE}/non%53tore/Contoso%2EApp_abc/Contoso%2EApp_1_x__abc/Name", "n"),
        leaf(f"{DEVICE}/AppStore/%E2%82%AC_x/%C3%28_y/Name", "euro"),
        leaf(f"{DEVICE}/AppStore/{FAMILY}/DoNotUpdate", "1"),
        leaf(f"{DEVICE}/AppStore/{FAMILY}/AppSettingPolicy/x_y", "1"),
        leaf(f"{DEVICE}/ReleaseManagement/{FAMILY}/x_y/Name", "1"),
        leaf(f"{DEVICE}/Other/{FAMILY}/{FULL}/Name", "x"),
        leaf(f"./Vendor/MSFT/Policy/Config/{FAMILY}/{FULL}/Name", "x"),
        leaf(f"{DEVICE}/AppStore/{FAMILY}/{FULL}/Name/Deeper", "x"),
        leaf(f"{DEVICE}/AppStore/{FAMILY}/{FULL}/Unknown", "x"),
        leaf(f"{DEVICE}/LastScanError", "0"),
    ]
    for data in both_encodings(message(("4", items))):
        records = check(data, "")
        assert [(r.scope, r.classification, r.package_family) for r in records] == [
            ("user", "AppStore", FAMILY),
            ("device", "System", FAMILY),
            ("device", "nonStore", "Contoso.App_abc"),
            ("device", "AppStore", "\u20ac_x"),
            ("device", "AppStore", FAMILY),
        ]
        assert records[3].package_full_name == "\ufffd(_y"
        assert records[4].name is None


def test_groups_first_seen_order_and_last_value() -> None:
    a = f"{DEVICE}/AppStore/A.App_1/A.App_1_x__1"
    b = f"{DEVICE}/AppStore/B.App_1/B.App_1_x__1"
    items = [
        leaf(f"{b}/Name", "first"),
        leaf(f"{a}/Name", "a"),
        leaf(f"{b}/Name", "second"),
        leaf(f"{a}/Version", "1"),
        leaf(f"{a}/Version", None),
        node(f"{b}?list=StructData"),
    ]
    for data in both_encodings(message(("4", items))):
        records = check(data, DEVICE)
        assert [r.package_family for r in records] == ["B.App_1", "A.App_1"]
        assert records[0].name == "second"
        assert records[1].version is None


def test_several_results_cmd_ref_prefix_and_target() -> None:
    user_pkg = f"{USER}/System/U.App_1/U.App_1__1"
    msg = message(
        ("4", [leaf(f"{PACKAGE}/Name", "by target", target=True), node(PACKAGE)]),
        ("5", [leaf(f"{user_pkg}/Name", "u")]),
        ("6", [leaf(f"{PACKAGE}/Users", "s")]),
        extra=[Command("Get", cmd_id="7", items=[Item(target=f"{PACKAGE}/Name")])],
    )
    for data in both_encodings(msg):
        assert len(check(data, "")) == 2
        assert check(data, "", "4")[0].name == "by target"
        assert check(data, "", "4")[0].users is None
        assert check(data, "", "6")[0].users == "s"
        assert check(data, "", "9") == []
        assert check(data, "./User")[0].scope == "user"
        assert len(check(data, DEVICE)) == 1
        assert check(data, f"{DEVICE}/nonStore/{FAMILY}", "6")[0].users == "s"


def test_binary_wbxml_data_is_decoded_with_replacement() -> None:
    msg = message(("4", [leaf(f"{PACKAGE}/Name", b"ok\xff\xfe"), leaf(f"{PACKAGE}/Users", b"")]))
    data = msg.encode(wbxml=True)
    (record,) = check(data, DEVICE)
    assert record.name == "ok\ufffd\ufffd"
    assert record.users == ""


def test_what_devices_also_write() -> None:
    """Prologs, whitespace, escapes, markup in Data, Windows's msft:originalerror."""
    body = (
        "<Status><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>3</CmdRef><Cmd>Get</Cmd>"
        '<Data msft:originalerror="0x80070057">500</Data></Status>\r\n'
        "<Results><CmdID>3</CmdID><MsgRef>1</MsgRef><CmdRef>4</CmdRef>\n"
        f"<Item><Source><LocURI> {PACKAGE}/Name </LocURI></Source><Data>a &amp; b</Data></Item>"
        f"<Item><Source><LocURI>{PACKAGE}/Users</LocURI></Source><Data><u>s</u></Data></Item>"
        f"<Item><Source><LocURI>{PACKAGE}/Publisher</LocURI></Source>"
        "<Data><![CDATA[x<y]]>&#65;</Data></Item>"
        f"<Item><Source><LocURI>{PACKAGE}/Version</LocURI></Source>"
        "<Data>1\r\n2<!-- c --></Data></Item></Results>"
    )
    data = (
        '\ufeff<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<SyncML xmlns="SYNCML:SYNCML1.2" xmlns:msft="{corpus.MSFT_NS}">\n'
        "<SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>1</SessionID>"
        "<MsgID>2</MsgID><Target><LocURI>https://mdm</LocURI></Target>"
        "<Source><LocURI>d</LocURI></Source></SyncHdr>\n"
        f"<SyncBody>\n{body}\n<Final/></SyncBody></SyncML>\n"
    ).encode()
    (record,) = check(data, DEVICE)
    assert record.name == "a & b"
    assert record.users == "<u>s</u>"
    assert record.publisher == "x<yA"
    assert record.version == "1\n2"


def test_realistic_inventory_in_both_encodings() -> None:
    xml = corpus.inventory_results(60)
    wbxml = syncml.from_dict(syncml.to_dict(xml), wbxml=True)
    records = check(xml, DEVICE)
    assert len(records) == 60
    assert check(wbxml, DEVICE) == records
    assert check(xml, DEVICE, "3") == records
    assert check(xml, DEVICE, "2") == []


# --- refused input ------------------------------------------------------------------------


def _refusal(call: Callable[[], object]) -> tuple[str, int, str] | None:
    try:
        call()
    except SyncMLDecodeError as exc:
        return (exc.message, exc.offset, exc.kind)
    return None


def assert_refused_alike(data: bytes, **limits: int) -> None:
    expected = _refusal(lambda: syncml.decode(data, **limits))
    assert expected is not None
    got = _refusal(lambda: _core.syncml_app_inventory(data, DEVICE, None, **limits))
    assert got == expected
    if not limits:
        assert _refusal(lambda: apps.inventory_from_message(data, DEVICE)) == expected


@pytest.mark.parametrize(
    ("name", "data"), corpus.hostile_inputs(), ids=[n for n, _ in corpus.hostile_inputs()]
)
def test_hostile_inputs_refused_as_the_decoder_refuses(name: str, data: bytes) -> None:
    assert_refused_alike(data)


GOOD = message(("4", [node(PACKAGE), leaf(f"{PACKAGE}/Name", "n")])).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not xml",
        GOOD.replace(b"<Data>n</Data>", b"<Data>&ent;</Data>"),
        GOOD.replace(b"<Data>n</Data>", b"<Data>\x01</Data>"),
        GOOD.replace(b"<Data>n</Data>", b'<Data x:y="1">n</Data>'),
        GOOD.replace(b"</Item>", b"</Itme>"),
        GOOD.replace(b"<Final/>", b"<Final/><Bogus/>"),
        GOOD.replace(b"<Data>n", b"<Data>\xff"),
        b'<!DOCTYPE SyncML [<!ENTITY x "y">]>' + GOOD,
        GOOD + b"<more/>",
    ],
)
def test_malformed_input_refused_alike(data: bytes) -> None:
    assert_refused_alike(data)


@pytest.mark.parametrize("wbxml", [False, True], ids=["xml", "wbxml"])
def test_truncated_input_refused_alike(wbxml: bool) -> None:
    data = message(("4", [leaf(f"{PACKAGE}/Name", "n")])).encode(wbxml=wbxml)
    for cut in range(0, len(data), 7):
        assert_refused_alike(data[:cut])


@pytest.mark.parametrize(
    "limits", [{"max_bytes": 100}, {"max_depth": 5}, {"max_elements": 20}], ids=str
)
def test_limits_refused_alike(limits: dict[str, int]) -> None:
    for data in both_encodings(message(("4", [leaf(f"{PACKAGE}/Name", "n")]))):
        assert_refused_alike(data, **limits)


# --- generated inventories ----------------------------------------------------------------

_SEGMENTS = st.sampled_from(
    [
        "AppManagement",
        "appmanagement",
        "App%4Danagement",
        "AppStore",
        "nonstore",
        "SYSTEM",
        "Other",
        FAMILY,
        FULL,
        "Contoso%2EApp_8wek",
        "%E2%82%AC_x",
        "%C3%28_y",
        "%zz_q",
        "é_%41",
        "Name",
        "Version",
        "IsBundle",
        "PackageStatus",
        "Users",
        "DoNotUpdate",
        "",
    ]
)
_HEADS = st.sampled_from(
    [
        f"./Device/Vendor/MSFT/{CSP}",
        f"./Device/Vendor/MSFT/{CSP}",
        f"./User/Vendor/MSFT/{CSP}",
        f"./Vendor/MSFT/{CSP}",
        "./Vendor/MSFT/Policy",
        ".",
        "",
    ]
)
# Mostly package nodes and leaves, spelled in the ways devices and escapes allow.
_APP_PATHS = st.tuples(
    st.sampled_from(["AppManagement", "AppManagement", "App%4Danagement", "appmanagement"]),
    st.sampled_from(["AppStore", "appstore", "nonStore", "SYSTEM", "non%53tore", "Other"]),
    st.sampled_from(["A_1", "A_1", "B.App_x", "%E2%82%AC_x", "%C3%28_y", "A%5F1", "NoName"]),
    st.sampled_from(["A_1_x__1", "A_1_x__1", "B.App_1_x__x", "%zz_q", "Full"]),
).map(list) | st.lists(_SEGMENTS, max_size=6)
_LEAF_NAMES = st.sampled_from([*ALL_LEAVES, "Unknown", "DoNotUpdate", "Na%6De", "Name/Extra"])
_URIS = st.builds(
    lambda head, path, leaf, query: "/".join([head, *path, *leaf]) + query,
    _HEADS,
    _APP_PATHS,
    st.one_of(_LEAF_NAMES.map(lambda n: [n]), _LEAF_NAMES.map(lambda n: [n]), st.just([])),
    st.sampled_from(["", "", "?list=StructData"]),
)
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
    | st.sampled_from("\t\n\r \x85\xa0\u3000"),
    max_size=12,
)
_VALUES = _TEXT | st.sampled_from([*NUMBERS, "1", "true", " FALSE ", "<b>i</b>", "a & b"])


@st.composite
def _items(draw: st.DrawFn) -> Item:
    source, target = draw(st.none() | _URIS), draw(st.none() | _URIS)
    data = draw(st.one_of(_VALUES, _VALUES, st.none()))
    metas: list[dict[str, str | list[str]] | None] = [
        None,
        {"Format": "chr"},
        {"Format": "int", "Type": "text"},
    ]
    meta = draw(st.sampled_from(metas))
    return Item(source=source, target=target, meta=meta, data=data)


_MESSAGES = st.builds(
    lambda results: message(*results),
    st.lists(st.tuples(st.sampled_from(["3", "4"]), st.lists(_items(), max_size=8)), max_size=4),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _MESSAGES,
    st.sampled_from(["", DEVICE, "./User", f"{DEVICE}/AppStore", f"./Vendor/MSFT/{CSP}"]),
    st.sampled_from([None, "3", "4"]),
)
def test_generated_inventories(msg: Message, prefix: str, cmd_ref: str | None) -> None:
    xml, wbxml = both_encodings(msg)
    records = check(xml, prefix, cmd_ref)
    assert check(wbxml, prefix, cmd_ref) == records


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_messages_never_crash(data: st.DataObject) -> None:
    raw = bytearray(
        data.draw(
            st.sampled_from(
                both_encodings(
                    message(
                        (
                            "4",
                            [
                                node(PACKAGE),
                                leaf(f"{PACKAGE}/Name", "n"),
                                leaf(f"{PACKAGE}/IsStub", "1"),
                            ],
                        )
                    )
                )
            )
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    mutated = bytes(raw)
    try:
        expected = reference(mutated, DEVICE)
    except SyncMLDecodeError:
        assert_refused_alike(mutated)
    else:
        assert apps.inventory_from_message(mutated, DEVICE) == expected
