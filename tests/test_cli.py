"""The `mdmgate` command, run as a user runs it: a separate process."""

from __future__ import annotations

import subprocess
import sys

import pytest


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
