"""Property lists (XML and binary), read and written by the Rust core.

TEMPORARY: delegates to plistlib until the Rust codec lands in this same issue.
"""

from __future__ import annotations

import plistlib
from typing import Any

__all__ = ["dumps", "loads"]


def loads(data: bytes) -> Any:
    """Decodes an XML or binary plist, with plistlib's value mapping."""
    return plistlib.loads(data)


def dumps(value: Any, *, binary: bool = False, sort_keys: bool = True) -> bytes:
    """Encodes ``value`` as an XML plist, or a binary one (bplist00) when ``binary``."""
    fmt = plistlib.FMT_BINARY if binary else plistlib.FMT_XML
    return plistlib.dumps(value, fmt=fmt, sort_keys=sort_keys)
