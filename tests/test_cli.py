"""The `mdmgate` command, run as a user runs it: a separate process."""

from __future__ import annotations

import datetime
import json
import plistlib
import subprocess
import sys
from pathlib import Path

import pytest

from mdmgate import syncml
from tests.syncml_corpus import shape_messages


def mdmgate(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mdmgate", *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("platform", "a", "b", "out"),
    [
        ("ios", "1.2b3", "1.2", "<"),
        ("android", "10", "9", ">"),
        ("windows", "1.2.3.4", "1.2.3.9", "="),
        ("windows-phone", "2.0", "1.9.9.9", ">"),
        ("macos", "70202006", "3.57", ">"),
        ("generic", "1.0-rc.1", "1.0", "<"),
    ],
)
def test_compare(platform: str, a: str, b: str, out: str) -> None:
    r = mdmgate("version", "compare", "--platform", platform, a, b)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{out}\n".encode(), b"")


def test_sort_reads_stdin() -> None:
    r = mdmgate("version", "sort", "--platform", "android", stdin=b"10\r\n9\n\n  \n100\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"9\n10\n100\n", b"")
    r = mdmgate("version", "sort", "--platform", "ios", "--reverse", stdin=b"1.0\n1.2b3\n1.2")
    assert r.stdout == b"1.2\n1.2b3\n1.0\n"


def test_empty_input_sorts_to_nothing() -> None:
    r = mdmgate("version", "sort", "--platform", "ios")
    assert (r.returncode, r.stdout) == (0, b"")


def one_line_error(r: subprocess.CompletedProcess[bytes]) -> str:
    assert r.returncode == 2
    assert r.stdout == b""
    text = r.stderr.decode()
    assert text.count("\n") == 1, text
    return text


def test_unparseable_version_exits_2_naming_string_and_platform() -> None:
    err = one_line_error(mdmgate("version", "compare", "--platform", "android", "1.2", "3"))
    assert 'invalid android version "1.2"' in err
    assert "at byte 1" in err


def test_sort_names_the_line() -> None:
    err = one_line_error(mdmgate("version", "sort", "--platform", "windows", stdin=b"1\n\n1.x\n"))
    assert err.startswith("mdmgate: error: line 3: invalid windows version")


def test_sort_refuses_non_utf8() -> None:
    err = one_line_error(mdmgate("version", "sort", "--platform", "ios", stdin=b"1.0\n\xff\n"))
    assert "not UTF-8 (at byte 4)" in err


@pytest.mark.parametrize(
    "args",
    [
        ("version", "compare", "--platform", "win", "1", "2"),
        ("version", "compare", "--platform", "ios", "1"),
        ("version",),
        ("bogus",),
        (),
    ],
)
def test_usage_errors_are_one_line(args: tuple[str, ...]) -> None:
    one_line_error(mdmgate(*args))


def test_help_has_a_worked_example() -> None:
    r = mdmgate("version", "--help")
    assert r.returncode == 0
    assert b"mdmgate version compare --platform ios 1.2b3 1.2" in r.stdout
    assert b"android, ios, macos, windows, windows-phone, generic" in r.stdout


def test_version_flag() -> None:
    r = mdmgate("--version")
    assert r.returncode == 0
    assert r.stdout.startswith(b"mdmgate ")


def _device_message() -> bytes:
    return dict(shape_messages())["device_package1"]


def test_syncml_decode_encode_round_trip(tmp_path: Path) -> None:
    xml = _device_message()
    decoded = mdmgate("syncml", "decode", stdin=xml)
    assert (decoded.returncode, decoded.stderr) == (0, b"")
    assert json.loads(decoded.stdout) == syncml.to_dict(xml)
    wbxml = mdmgate("syncml", "encode", "--wbxml", stdin=decoded.stdout)
    assert (wbxml.returncode, wbxml.stderr) == (0, b"")
    assert wbxml.stdout[:4] == b"\x03\xa4\x01\x6a"
    path = tmp_path / "message.wbxml"
    path.write_bytes(wbxml.stdout)
    again = mdmgate("syncml", "decode", str(path))
    assert json.loads(again.stdout) == json.loads(decoded.stdout)
    back = mdmgate("syncml", "encode", stdin=again.stdout)
    assert back.returncode == 0
    assert syncml.to_dict(back.stdout) == syncml.to_dict(xml)


def test_syncml_binary_data_as_base64() -> None:
    message = {
        "SyncHdr": {
            "SessionID": "1",
            "MsgID": "1",
            "Target": {"LocURI": "d"},
            "Source": {"LocURI": "s"},
        },
        "SyncBody": [{"Replace": {"CmdID": "1", "Item": [{"Data": b"\xff\x00"}]}}],
        "Final": True,
    }
    r = mdmgate("syncml", "decode", stdin=syncml.from_dict(message, wbxml=True))
    item = json.loads(r.stdout)["SyncBody"][0]["Replace"]["Item"][0]
    assert item["Data"] == {"base64": "/wA="}
    e = mdmgate("syncml", "encode", "--wbxml", stdin=r.stdout)
    assert syncml.to_dict(e.stdout)["SyncBody"] == message["SyncBody"]


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (
            ["syncml", "decode"],
            b"<!DOCTYPE SyncML [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>",
            b"at byte 0",
        ),
        (["syncml", "decode"], b"<SyncML><SyncHdr>", b"input ends inside <SyncHdr> at byte"),
        (["syncml", "decode"], b"\x02\xa4\x01\x6a\x84\x80\x80\x80\x00", b"claims 1073741824 bytes"),
        (["syncml", "decode", "/nonexistent/x.xml"], b"", b"cannot read /nonexistent/x.xml"),
        (["syncml", "encode"], b"{not json", b"input is not JSON"),
        (["syncml", "encode"], b"[]", b"must be a JSON object"),
        (["syncml", "encode"], b'{"SyncHdr": {"MsgID": "1"}}', b"SessionID is required"),
    ],
)
def test_syncml_bad_input(args: list[str], stdin: bytes, needle: bytes) -> None:
    r = mdmgate(*args, stdin=stdin)
    assert r.returncode == 2
    assert r.stdout == b""
    assert needle in r.stderr
    assert r.stderr.count(b"\n") == 1


def test_syncml_help_has_examples() -> None:
    r = mdmgate("syncml", "--help")
    assert r.returncode == 0
    assert b"mdmgate syncml decode request.xml" in r.stdout


def test_plist_json_round_trip() -> None:
    value = {
        "MessageType": "TokenUpdate",
        "Token": b"\x00\x01\xff",
        "When": datetime.datetime(2024, 2, 29, 12, 34, 56),
        "Count": 3,
        "Ratio": 0.5,
        "Items": [True, "a & b"],
    }
    for source in (plistlib.dumps(value), plistlib.dumps(value, fmt=plistlib.FMT_BINARY)):
        decoded = mdmgate("plist", "decode", stdin=source)
        assert (decoded.returncode, decoded.stderr) == (0, b"")
        assert json.loads(decoded.stdout)["Token"] == {"base64": "AAH/"}
        for flag in ([], ["--binary"]):
            encoded = mdmgate("plist", "encode", *flag, stdin=decoded.stdout)
            assert encoded.returncode == 0
            assert plistlib.loads(encoded.stdout) == value
            assert encoded.stdout.startswith(b"bplist00") == bool(flag)


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (["plist", "decode"], b'<!DOCTYPE plist [<!ENTITY a "b">]><plist/>', b"at byte"),
        (["plist", "decode"], b"bplist00\x09", b"too short for its 32-byte trailer"),
        (["plist", "decode"], b"<plist><array>", b"input ends inside <array>"),
        (["plist", "encode"], b'{"a": 18446744073709551616}', b"cannot write as a plist"),
        (["plist", "encode"], b'{"a": null}', b"unsupported type"),
        (["plist", "encode"], b'{"a": {"date": "yesterday"}}', b"is not an ISO 8601 date"),
    ],
)
def test_plist_bad_input(args: list[str], stdin: bytes, needle: bytes) -> None:
    r = mdmgate(*args, stdin=stdin)
    assert (r.returncode, r.stdout) == (2, b"")
    assert needle in r.stderr
    assert r.stderr.count(b"\n") == 1
