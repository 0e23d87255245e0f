"""The SyncML reference decoder and the test corpus, checked on their own.

These tests need neither the Rust codec nor `mdmgate.syncml`: they make sure the corpus is what
it claims to be (sizes, shapes, which inputs are broken) and that the reference decoder gives
the dict of docs/syncml.md, so that codec tests can lean on both.
"""

from __future__ import annotations

import functools
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from . import syncml_corpus as corpus
from .syncml_reference import (
    MAX_DEPTH,
    MSFT_NS,
    canonical_data,
    normalise_data,
    reference_to_dict,
)

# The seed pages are part of the repository (tests/data/seeds); a missing page is a failure.
SEED_MESSAGES = corpus.seed_messages()
MALFORMED_SEEDS = corpus.malformed_seed_messages()
LENIENT = corpus.lenient_messages()
SHAPES = corpus.shape_messages()
HOSTILE = corpus.hostile_inputs()

_COMMAND_OPEN = re.compile(
    rb"<(Alert|Add|Replace|Delete|Copy|Get|Exec|Atomic|Sequence|Results|Status|Map)>"
)


def ids(messages: list[tuple[str, bytes]]) -> list[str]:
    return [name for name, _ in messages]


@functools.cache
def shape(name: str) -> dict[str, Any]:
    return reference_to_dict(dict(SHAPES)[name])


@functools.cache
def inventory() -> bytes:
    return corpus.inventory_results()


def body(msg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """SyncBody as (command name, fields) pairs."""
    out = []
    for command in msg["SyncBody"]:
        assert len(command) == 1, command
        ((name, fields),) = command.items()
        out.append((name, fields))
    return out


def walk_commands(commands: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for command in commands:
        ((name, fields),) = command.items()
        yield name, fields
        yield from walk_commands(fields.get("Commands", []))


def data_values(commands: list[dict[str, Any]]) -> Iterator[Any]:
    """Every Data value in document order (a command's Data precedes its Items)."""
    for _name, fields in walk_commands(commands):
        if "Data" in fields:
            yield fields["Data"]
        for item in fields.get("Item", []):
            if "Data" in item:
                yield item["Data"]


def check_envelope(msg: dict[str, Any]) -> None:
    assert set(msg) == {"SyncHdr", "SyncBody", "Final"}
    hdr = msg["SyncHdr"]
    assert hdr["VerDTD"] == "1.2"
    assert hdr["VerProto"] == "DM/1.2"
    assert hdr["SessionID"]
    assert hdr["MsgID"]
    assert hdr["Target"]["LocURI"]
    assert hdr["Source"]["LocURI"]
    assert isinstance(msg["SyncBody"], list)
    assert isinstance(msg["Final"], bool)


def top_level_order(data: bytes) -> list[str]:
    """The command names of SyncBody as written (the corpus has no nesting outside shapes)."""
    inner = data.split(b"<SyncBody>", 1)[1]
    return [m[1].decode() for m in _COMMAND_OPEN.finditer(inner)]


# --- seeds -------------------------------------------------------------------------------


def test_seed_corpus_is_complete() -> None:
    assert len(SEED_MESSAGES) == 54
    commands = [name for _, data in SEED_MESSAGES for name in top_level_order(data)]
    for command in ("Get", "Replace", "Exec", "Add", "Delete", "Alert"):
        assert command in commands
    assert ids(MALFORMED_SEEDS) == [
        "seed003_08_exec_raw",
        "seed003_10_add_exec_raw",
        "seed003_11_add_exec_raw",
        "seed003_13_add_exec_raw",
        "seed004_08_exec_raw",
        "seed004_13_add_exec_raw",
    ]
    repaired = {name.removesuffix("_repaired") for name in ids(SEED_MESSAGES)}
    assert {name.removesuffix("_raw") for name in ids(MALFORMED_SEEDS)} <= repaired


@pytest.mark.parametrize(("name", "data"), SEED_MESSAGES, ids=ids(SEED_MESSAGES))
def test_seed_message(name: str, data: bytes) -> None:
    msg = reference_to_dict(data)
    check_envelope(msg)
    assert msg["Final"] is True
    commands = body(msg)
    assert [command for command, _ in commands] == top_level_order(data)
    assert [fields["CmdID"] for _, fields in commands] == [
        str(n) for n in range(1, len(commands) + 1)
    ]
    for command, fields in commands:
        if command != "Alert":
            assert fields["Item"][0]["Target"]["LocURI"].startswith("./")
    from_device = commands[0][0] == "Alert"
    assert (msg["SyncHdr"]["Source"]["LocURI"] == corpus.DEVICE_ID) is from_device


@pytest.mark.parametrize(("name", "data"), MALFORMED_SEEDS, ids=ids(MALFORMED_SEEDS))
def test_malformed_seed_is_refused(name: str, data: bytes) -> None:
    with pytest.raises(ValueError, match="well-formed"):
        reference_to_dict(data)


def test_repaired_seeds_carry_the_intended_xml_as_text() -> None:
    seeds = dict(SEED_MESSAGES)
    licence = reference_to_dict(seeds["seed003_08_exec_repaired"])
    assert next(data_values(licence["SyncBody"])) == '<License Content="{LicenseBlob}"/>'
    assert b"&lt;License" in seeds["seed003_08_exec_repaired"]

    provision = reference_to_dict(seeds["seed004_13_add_exec_repaired"])
    (app_xml,) = data_values(provision["SyncBody"])
    app = ET.fromstring(app_xml)
    assert app.tag == "Application"
    assert [dep.get("PackageUri") for dep in app.iter("Dependency")] == [
        "\\\\server\\share\\HelloWorldFramework.appx",
        "\\\\server2\\share\\HelloMarsFramework.appx",
    ]
    for name, data in SEED_MESSAGES:
        if name.endswith("_repaired"):
            for value in data_values(reference_to_dict(data)["SyncBody"]):
                if value.startswith("<"):
                    ET.fromstring(value)  # the repaired XML is well-formed
                    assert "\u201d" not in value


def test_inline_markup_data_is_kept_as_markup() -> None:
    """Microsoft's examples put XML unescaped in Data: the decoder keeps the markup."""
    store = reference_to_dict(dict(SEED_MESSAGES)["seed003_07_exec"])
    (value,) = data_values(store["SyncBody"])
    assert canonical_data(value) == canonical_data(
        '<Application id="{ProductID}" flags="0" skuid=" "/>'
    )
    optional = reference_to_dict(dict(SEED_MESSAGES)["seed004_11_add_exec"])
    (value,) = data_values(optional["SyncBody"])
    assert value.startswith("\n")
    assert value.endswith("</Application>\n      ")
    assert "<OptionalPackages>" in value
    assert "xmlns" not in value


def raw_data_fields(data: bytes) -> list[str]:
    """The text between <Data> and </Data> as written ("" for <Data/>)."""
    pattern = rb"<Data(?:\s[^>]*?)?(?:/>|>(.*?)</Data>)"
    return [m[1].decode() if m[1] is not None else "" for m in re.finditer(pattern, data, re.S)]


@pytest.mark.parametrize(
    ("name", "data"),
    [*SEED_MESSAGES, *SHAPES],
    ids=ids([*SEED_MESSAGES, *SHAPES]),
)
def test_data_values_match_the_bytes(name: str, data: bytes) -> None:
    """Cross-check the reference against the raw text of every <Data>...</Data>."""
    values = list(data_values(reference_to_dict(data)["SyncBody"]))
    cred = reference_to_dict(data)["SyncHdr"].get("Cred")
    raw = raw_data_fields(data)
    if cred is not None:
        raw = raw[1:]
    assert len(values) == len(raw)
    for value, written in zip(values, raw, strict=True):
        if "<" in written:  # inline markup: the codec keeps the bytes, compare canonically
            assert canonical_data(value) == canonical_data(written)
        else:
            assert value == (ET.fromstring(f"<x>{written}</x>").text or "")


# --- lenient inputs ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "data"), LENIENT, ids=ids(LENIENT))
def test_lenient_message(name: str, data: bytes) -> None:
    msg = reference_to_dict(data)
    check_envelope(msg)
    assert msg["SyncBody"]


def test_lenient_cmdids_as_microsoft_wrote_them() -> None:
    lenient = dict(LENIENT)
    add_exec = reference_to_dict(lenient["seed003_09_add_exec_cmdid_as_written"])
    assert [fields["CmdID"] for _, fields in body(add_exec)] == ["0", "1"]
    alert = reference_to_dict(lenient["seed003_23_alert_cmdid_as_written"])
    ((name, fields),) = body(alert)
    assert name == "Alert"
    assert "CmdID" not in fields
    assert fields["Data"] == "1226"
    assert any(name.endswith("_with_comments") for name in lenient)


def test_lenient_details() -> None:
    lenient = {name: reference_to_dict(data) for name, data in LENIENT}

    ((_, plain),) = body(lenient["meta_without_metinf_namespace"])
    assert plain["Item"][0]["Meta"] == {"Format": "int", "Type": "text/plain"}

    ((_, unknown),) = body(lenient["meta_unknown_and_repeated_children"])
    assert unknown["Item"][0]["Meta"] == {
        "Format": "chr",
        "Type": "text/plain",
        "x-ContosoTrace": "7f3a9c",
        "EMI": ["vendor-a", "vendor-b"],
        "Mark": "",
    }
    ((_, prefixed),) = body(lenient["meta_prefixed_metinf"])
    assert prefixed["Meta"] == {"Type": "text/plain"}

    get_swv = lenient["xml_declaration"]
    for name in (
        "doctype_public",
        "xml_declaration_and_doctype",
        "utf8_bom",
        "no_namespace",
        "lowercase_namespace",
    ):
        assert lenient[name] == get_swv, name

    (_, cdata), (_, mixed) = body(lenient["cdata_data"])
    assert cdata["Item"][0]["Data"] == (
        '<Application PackageUri="https://cdn.contoso.com/a.appx?s=1&t=2"/>'
    )
    assert mixed["Item"][0]["Data"] == "<https://intranet.contoso.com><https://a&b.contoso.com>"

    ((_, padded),) = body(lenient["crlf_and_padded_leaves"])
    assert padded["CmdID"] == "2"
    item = padded["Item"][0]
    assert item["Target"]["LocURI"] == "./Vendor/MSFT/Policy/Config/Update/ActiveHoursStart"
    assert item["Meta"] == {"Format": "int"}
    assert item["Data"] == "\n  8 \n"  # Data is exact; XML turns CRLF into LF

    flags = lenient["flags_not_self_closed"]
    assert flags["Final"] is True
    assert body(flags)[0][1]["NoResp"] is True
    assert body(lenient["cmdid_not_numeric"])[0][1]["CmdID"] == "a-17"
    commented = lenient["comments_everywhere"]
    assert [name for name, _ in body(commented)] == ["Replace"]


# --- message shapes ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "data"), SHAPES, ids=ids(SHAPES))
def test_shape_message(name: str, data: bytes) -> None:
    msg = reference_to_dict(data)
    check_envelope(msg)
    names = [command for command, _ in body(msg)]
    assert names == top_level_order(data) or name == "server_response"
    cmd_ids = [fields["CmdID"] for _, fields in walk_commands(msg["SyncBody"])]
    assert len(set(cmd_ids)) == len(cmd_ids)
    assert "0" not in cmd_ids


def test_device_package1() -> None:
    msg = shape("device_package1")
    assert msg["SyncHdr"]["Meta"] == {"MaxMsgSize": "65535"}
    assert msg["SyncHdr"]["Source"] == {"LocURI": corpus.DEVICE_ID, "LocName": "dummy"}
    (_, a1201), (_, a1224), (_, replace) = body(msg)
    assert a1201 == {"CmdID": "2", "Data": "1201"}
    assert a1224["Data"] == "1224"
    assert a1224["Item"] == [{"Meta": {"Type": "com.microsoft/MDM/LoginStatus"}, "Data": "user"}]
    assert [item["Source"]["LocURI"] for item in replace["Item"]] == [
        f"./DevInfo/{node}" for node in ("DevId", "Man", "Mod", "DmV", "Lang")
    ]
    assert msg["Final"] is True
    assert shape("no_final")["Final"] is False
    assert shape("no_final")["SyncBody"] == msg["SyncBody"]


def test_server_response() -> None:
    msg = shape("server_response")
    commands = body(msg)
    first_name, first = commands[0]
    assert first_name == "Status"
    assert first["CmdRef"] == "0"
    assert first["Cmd"] == "SyncHdr"
    assert first["TargetRef"] == [corpus.SERVER_URL]
    assert first["SourceRef"] == [corpus.DEVICE_ID]
    assert [name for name, _ in commands] == [
        "Status",
        "Status",
        "Status",
        "Status",
        "Get",
        "Replace",
        "Exec",
        "Atomic",
    ]
    atomic = commands[-1][1]
    assert [next(iter(c)) for c in atomic["Commands"]] == ["Add", "Sequence"]
    sequence = atomic["Commands"][1]["Sequence"]
    assert [next(iter(c)) for c in sequence["Commands"]] == ["Replace", "Exec"]
    hosted = sequence["Commands"][1]["Exec"]["Item"][0]
    assert hosted["Data"].startswith("<Application PackageUri=")
    assert hosted["Meta"] == {"Format": "xml"}


def test_client_reply_results() -> None:
    commands = body(shape("client_reply"))
    results = dict(commands)["Results"]
    assert results["MsgRef"] == "1"
    assert results["CmdRef"] == "5"
    assert results["Item"][0] == {
        "Source": {"LocURI": "./DevDetail/SwV"},
        "Meta": {"Format": "chr", "Type": "text/plain"},
        "Data": "10.0.22631.3447",
    }


def test_chal_and_cred() -> None:
    ((_, status),) = body(shape("status_401_chal"))
    assert status["Data"] == "401"
    assert status["Chal"]["Meta"]["Type"] == "syncml:auth-md5"
    assert status["Chal"]["Meta"]["Format"] == "b64"
    nonce = status["Chal"]["Meta"]["NextNonce"]
    cred = shape("header_cred_md5")["SyncHdr"]["Cred"]
    assert cred["Meta"] == {"Format": "b64", "Type": "syncml:auth-md5"}
    assert cred["Data"] == corpus._md5_digest(corpus.DEVICE_ID, "s3cr3t-enrolment-secret", nonce)


def test_alerts() -> None:
    (_, _), (_, _), (_, a1222) = body(shape("alert_1222"))
    assert a1222["Data"] == "1222"
    assert body(shape("alert_1223"))[1][1]["Data"] == "1223"
    generic = body(shape("alert_1226_hosted_install"))[1][1]
    assert generic["Data"] == "1226"
    assert generic["Item"][0]["Meta"] == {
        "Type": "Reversed-Domain-Name:com.microsoft.mdm.EnterpriseHostedAppInstall.result",
        "Format": "int",
    }


def test_data_attrs() -> None:
    statuses = [fields for _, fields in body(shape("status_msft_originalerror"))]
    assert statuses[1]["Data"] == "500"
    assert statuses[1]["DataAttrs"] == {"msft:originalerror": "0x80070057"}
    assert statuses[2]["DataAttrs"] == {"msft:originalerror": "0x86000002"}
    assert "DataAttrs" not in statuses[0]
    ((_, mixed),) = body(shape("status_data_attrs_mixed"))
    assert mixed["DataAttrs"] == {
        "msft:originalerror": "0x87D1FDE8",
        "{urn:example:diag}trace": "ab12",
        "hint": "retry later",
    }


def test_large_object_chunks() -> None:
    chunks = [shape(f"large_object_chunk{n}") for n in (1, 2, 3)]
    items = [body(chunk)[-1][1]["Item"][0] for chunk in chunks]
    total = "".join(item["Data"] for item in items)
    assert items[0]["Meta"]["Size"] == str(len(total))
    assert [item.get("MoreData") for item in items] == [True, True, None]
    assert ["Size" in item["Meta"] for item in items] == [True, False, False]
    assert [chunk["Final"] for chunk in chunks] == [False, False, True]
    reply = body(shape("large_object_status_213"))
    assert reply[1][1]["Data"] == "213"
    assert reply[2][1]["Data"] == "1222"


def test_results_refs_map_correlator() -> None:
    results = body(shape("results_target_source_refs"))[2][1]
    assert results["TargetRef"] == [corpus.SERVER_URL]
    assert results["SourceRef"] == ["./DevDetail/SwV", "./DevDetail/FwV"]
    assert results["Meta"] == {"Format": "chr", "Type": "text/plain"}
    ((_, mapping),) = body(shape("map_mapitems"))
    assert mapping["Target"] == {"LocURI": "./Contacts"}
    assert mapping["MapItem"][0] == {"Target": {"LocURI": "1007"}, "Source": {"LocURI": "7"}}
    assert len(mapping["MapItem"]) == 3
    ((_, exec_),) = body(shape("exec_correlator"))
    assert exec_["Correlator"] == "c0ffee42-1a2b-4c3d-8e9f-0123456789ab"
    assert exec_["Item"][0]["Data"] == ""


def test_escaped_xml_is_unescaped_once() -> None:
    ((_, exec_),) = body(shape("escaped_xml_data"))
    value = exec_["Item"][0]["Data"]
    assert value == '<Application PackageUri="https://x/a.appx?x=1&amp;y=2"/>'
    assert ET.fromstring(value).get("PackageUri") == "https://x/a.appx?x=1&y=2"
    ((_, single),) = body(shape("escaped_xml_data_single_amp"))
    assert single["Item"][0]["Data"] == '<Application PackageUri="https://x/a.appx?x=1&y=2"/>'


def test_unicode_noresp_empty() -> None:
    items = body(shape("unicode_text"))[1][1]["Item"]
    assert items[0]["Data"] == "Ноутбук-Ирины"
    assert items[1]["Data"] == "Ciao, è già — 日本語 한국어 🚀"
    assert items[2]["Source"]["LocName"] == "écran"
    assert items[2]["Data"] == "café 🚀 été"
    noresp = shape("noresp")
    assert noresp["SyncHdr"]["NoResp"] is True
    assert body(noresp)[0][1]["NoResp"] is True
    assert "NoResp" not in body(noresp)[1][1]
    ((_, replace),) = body(shape("empty_elements"))
    assert replace["Item"][0] == {
        "Target": {"LocURI": "./Vendor/MSFT/Policy/Config/Browser/HomePages", "LocName": ""},
        "Meta": {"Format": "chr", "Type": ""},
        "Data": "",
    }


# --- hostile inputs ----------------------------------------------------------------------


def test_hostile_corpus_shape() -> None:
    hostile = dict(HOSTILE)
    assert len(hostile) == len(HOSTILE)
    assert hostile["wbxml_1gb_string_table"].startswith(
        bytes([0x02, 0xA4, 0x01, 0x6A, 0x84, 0x80, 0x80, 0x80, 0x00])
    )
    assert hostile["deep_nesting"].count(b"<Atomic>") == 100_000
    assert hostile["deep_nesting_item"].count(b"<Item>") == 100_000
    assert b'SYSTEM "file:///etc/passwd"' in hostile["external_entity"]
    assert b"<!ENTITY %" in hostile["parameter_entity"]
    assert sum(name.startswith("truncated_xml") for name in hostile) >= 5


@pytest.mark.parametrize(("name", "data"), HOSTILE, ids=ids(HOSTILE))
def test_hostile_input_is_refused(name: str, data: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError):  # noqa: PT011 - each input fails for its own reason
        reference_to_dict(data)
    assert time.perf_counter() - start < 0.5


def test_depth_limit() -> None:
    prefix = b'<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr/><SyncBody>'
    nested = b"<Atomic>" * (MAX_DEPTH - 1) + b"</Atomic>" * (MAX_DEPTH - 1)
    with pytest.raises(ValueError, match="deeper"):
        reference_to_dict(prefix + nested + b"</SyncBody></SyncML>")


# --- big messages ------------------------------------------------------------------------


def test_inventory_results() -> None:
    data = inventory()
    print(f"inventory_results(): {len(data):,} bytes")
    # 300 apps with every node the CSP lists come to about 1.6 MB (see inventory_results).
    assert 1_400_000 <= len(data) <= 1_800_000
    assert corpus.inventory_results() == data
    msg = reference_to_dict(data)
    check_envelope(msg)
    ((_, results),) = [(n, f) for n, f in body(msg) if n == "Results"]
    root = "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/"
    families = []
    for item in results["Item"]:
        uri = item["Source"]["LocURI"]
        assert uri.startswith(root.rstrip("/"))
        parts = uri.removeprefix(root).split("/")
        if item["Meta"] == {"Format": "node"}:
            assert "Data" not in item
            if len(parts) == 2:
                families.append(parts[1])
        else:
            assert item["Meta"]["Format"] in ("chr", "int")
            assert item["Meta"]["Type"] == "text/plain"
            assert "Data" in item
    assert len(families) >= 300
    assert len(set(families)) == len(families)
    categories = {uri["Source"]["LocURI"].removeprefix(root) for uri in results["Item"]}
    assert {"AppStore", "nonStore", "System"} <= categories


def test_session_message() -> None:
    data = corpus.session_message()
    print(f"session_message(): {len(data):,} bytes")
    assert 20_000 <= len(data) <= 26_000
    assert corpus.session_message() == data
    msg = reference_to_dict(data)
    commands = body(msg)
    statuses = [fields for name, fields in commands if name == "Status"]
    assert statuses[0]["CmdRef"] == "0"
    assert statuses[0]["Cmd"] == "SyncHdr"
    assert [s["CmdRef"] for s in statuses[1:]] == [str(n) for n in range(2, 42)]
    assert any(s.get("DataAttrs") for s in statuses)
    assert sum(name == "Results" for name, _ in commands) >= 5
    assert [fields["Data"] for name, fields in commands if name == "Alert"] == ["1226", "1226"]
    assert msg["Final"] is True


# --- the benchmark dict, round-tripped through a minimal writer ---------------------------


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _write_fields(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if key in ("NoResp", "MoreData"):
            parts.append(f"<{key}/>")
        elif key == "Meta":
            inner = "".join(
                f'<{name} xmlns="syncml:metinf">{_esc(text)}</{name}>'
                for name, texts in value.items()
                for text in (texts if isinstance(texts, list) else [texts])
            )
            parts.append(f"<Meta>{inner}</Meta>")
        elif key in ("Item", "MapItem", "Target", "Source", "Chal", "Cred"):
            for entry in value if isinstance(value, list) else [value]:
                parts.append(f"<{key}>{_write_fields(entry)}</{key}>")
        elif key in ("TargetRef", "SourceRef"):
            parts.extend(f"<{key}>{_esc(ref)}</{key}>" for ref in value)
        elif key == "Commands":
            parts.extend(_write_command(command) for command in value)
        elif key == "Data":
            attrs = "".join(f' {name}="{v}"' for name, v in fields.get("DataAttrs", {}).items())
            parts.append(f"<Data{attrs}>{_esc(value)}</Data>")
        elif key != "DataAttrs":
            parts.append(f"<{key}>{_esc(value)}</{key}>")
    return "".join(parts)


def _write_command(command: dict[str, Any]) -> str:
    ((name, fields),) = command.items()
    return f"<{name}>{_write_fields(fields)}</{name}>"


def write_message(msg: dict[str, Any]) -> bytes:
    final = "<Final/>" if msg["Final"] else ""
    commands = "".join(_write_command(command) for command in msg["SyncBody"])
    return (
        f'<SyncML xmlns="SYNCML:SYNCML1.2" xmlns:msft="{MSFT_NS}">'
        f"<SyncHdr>{_write_fields(msg['SyncHdr'])}</SyncHdr>"
        f"<SyncBody>{commands}{final}</SyncBody></SyncML>"
    ).encode()


@pytest.mark.parametrize("n", [4, 5, 50, 120])
def test_response_commands(n: int) -> None:
    msg = corpus.response_commands(n)
    assert len(msg["SyncBody"]) == n
    first = msg["SyncBody"][0]["Status"]
    assert (first["CmdRef"], first["Cmd"]) == ("0", "SyncHdr")
    cmd_ids = [fields["CmdID"] for _, fields in walk_commands(msg["SyncBody"])]
    assert cmd_ids == [str(i) for i in range(1, n + 1)]
    assert reference_to_dict(write_message(msg)) == msg


def test_response_commands_variety() -> None:
    msg = corpus.response_commands()
    names = {name for name, _ in body(msg)}
    assert names == {"Status", "Get", "Replace", "Exec", "Add", "Delete"}
    values = list(data_values(msg["SyncBody"]))
    assert any(v.startswith("<Application") for v in values)
    assert any("&" in v and not v.startswith("<Application") for v in values)
    with pytest.raises(ValueError, match="at least"):
        corpus.response_commands(3)


def test_shapes_round_trip_through_the_writer() -> None:
    """The reference's dict carries everything the message said (for these shapes)."""
    for name, data in SHAPES:
        if name == "status_data_attrs_mixed":
            continue  # the minimal writer does not declare attribute namespaces
        msg = reference_to_dict(data)
        assert reference_to_dict(write_message(msg)) == msg, name


# --- the comparison helpers --------------------------------------------------------------


def test_canonical_data() -> None:
    assert canonical_data('<a  y="2" x="1" />') == canonical_data("<a x='1' y='2'></a>")
    assert canonical_data('<a xmlns="urn:u"/>') == canonical_data('<p:a xmlns:p="urn:u"/>')
    assert canonical_data("<a>x</a>") != canonical_data("<a> x</a>")
    with pytest.raises(ET.ParseError):
        canonical_data("<a>")


def test_normalise_data() -> None:
    msg: dict[str, Any] = {
        "SyncBody": [
            {
                "Exec": {
                    "CmdID": "<kept>",
                    "Item": [
                        {"Data": "<a  b='1'/>", "Meta": {"Anchor": "<Last>1</Last>"}},
                        {"Data": "a < b"},
                        {"Data": b"<raw>"},
                    ],
                }
            }
        ]
    }
    out = normalise_data(msg)
    items = out["SyncBody"][0]["Exec"]["Item"]
    assert items[0]["Data"] == canonical_data('<a b="1"></a>')
    assert items[0]["Meta"]["Anchor"] == canonical_data("<Last>1</Last>")
    assert items[1]["Data"] == "a < b"
    assert items[2]["Data"] == b"<raw>"
    assert out["SyncBody"][0]["Exec"]["CmdID"] == "<kept>"
    assert msg["SyncBody"][0]["Exec"]["Item"][0]["Data"] == "<a  b='1'/>"  # not modified


def test_reference_rules() -> None:
    def decode(body_xml: str, hdr: str = "<VerDTD> 1.2 </VerDTD>") -> dict[str, Any]:
        return reference_to_dict(
            (
                '<SyncML xmlns="SYNCML:SYNCML1.2" xmlns:msft="http://schemas.microsoft.com/'
                f'MobileDevice/MDM"><SyncHdr>{hdr}</SyncHdr><SyncBody>{body_xml}</SyncBody>'
                "</SyncML>"
            ).encode()
        )

    msg = decode("")
    assert msg == {"SyncHdr": {"VerDTD": "1.2"}, "SyncBody": [], "Final": False}
    status = decode(
        '<Status><CmdID>1</CmdID><Data msft:originalerror="0x1" code="a"> 500 </Data></Status>'
    )["SyncBody"][0]["Status"]
    assert status == {
        "CmdID": "1",
        "Data": " 500 ",
        "DataAttrs": {"msft:originalerror": "0x1", "code": "a"},
    }
    inline = decode(
        "<Exec><CmdID>1</CmdID><Item><Data> <A x='&amp;'>t<B/></A> </Data></Item></Exec>"
    )
    assert inline["SyncBody"][0]["Exec"]["Item"][0]["Data"] == ' <A x="&amp;">t<B/></A> '
    for bad in (
        "<Unknown/>",
        "<Get><CmdID>1</CmdID><CmdID>2</CmdID></Get>",
        "<Get>text<CmdID>1</CmdID></Get>",
        "<Get><CmdID>1<b/></CmdID></Get>",
        "<Final/><Final/>",
        "<Get><Item><Bogus/></Item></Get>",
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - several different refusals
            decode(bad)
    with pytest.raises(ValueError, match="SyncHdr"):
        reference_to_dict(b"<SyncML><SyncBody/></SyncML>")
    with pytest.raises(ValueError, match="SyncBody"):
        reference_to_dict(b"<SyncML><SyncHdr/></SyncML>")
