"""A second, deliberately plain implementation of the version rules in docs/versions.md.

It shares no code with the Rust engine: property tests check that both agree on
every generated version, so a mistake has to be made twice to go unnoticed.
"""

from __future__ import annotations

import re
from typing import Any

# Rust's `is_ascii_whitespace`: no vertical tab.
_WS = " \t\n\r\x0c"

_APPLE = re.compile(r"([0-9]+(?:\.[0-9]+)*)(?:(fc|d|a|b)([0-9]*))?", re.IGNORECASE)
_WINDOWS = re.compile(r"[0-9]+(?:\.[0-9]+){0,3}")
_STAGES = {"d": 1, "a": 2, "b": 3, "fc": 4}
_RELEASE = 5


def _trim_zeros(parts: list[int], keep: int = 0) -> list[int]:
    while len(parts) > keep and parts[-1] == 0:
        parts.pop()
    return parts


def key(version: str, platform: str) -> Any | None:
    """A comparable key, or None where the engine must raise InvalidVersion."""
    if len(version.encode()) > 255:
        return None
    s = version.strip(_WS)
    if platform == "android":
        if not re.fullmatch(r"[0-9]+", s) or int(s) > 2**31 - 1:
            return None
        return int(s)
    if platform in ("ios", "ipados", "macos"):
        m = _APPLE.fullmatch(s)
        if not m:
            return None
        parts = _trim_zeros([int(p) for p in m[1].split(".")])
        stage = _STAGES[m[2].lower()] if m[2] else _RELEASE
        return (parts, stage, int(m[3] or 0) if m[2] else 0)
    if platform in ("windows", "windows-phone"):
        if not _WINDOWS.fullmatch(s):
            return None
        parts = [int(p) for p in s.split(".")]
        if any(p > 65535 for p in parts):
            return None
        return ([*parts, 0, 0, 0])[:3]
    if platform == "generic":
        return _generic(s)
    raise ValueError(platform)


def _generic(s: str) -> list[tuple[Any, ...]] | None:
    if re.match(r"[vV][0-9]", s):
        s = s[1:]
    tokens: list[tuple[Any, ...]] = []
    run: list[int] = []
    for m in re.finditer(r"[0-9]+|[A-Za-z]+", s):
        text = m.group()
        if text.isdigit():
            run.append(int(text))
            continue
        tokens += [(2, n) for n in _trim_zeros(run, keep=1)]
        run = []
        tokens.append((0, text.lower()))
    tokens += [(2, n) for n in _trim_zeros(run, keep=1)]
    if not tokens:
        return None
    return [*tokens, (1,)]


def compare(a: str, b: str, platform: str) -> int:
    ka, kb = key(a, platform), key(b, platform)
    assert ka is not None
    assert kb is not None
    return (ka > kb) - (ka < kb)
