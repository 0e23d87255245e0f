"""Property lists (XML and binary ``bplist00``), read and written by the Rust core.

The value mapping is ``plistlib``'s, so this module can replace it: dict, list (tuples are
written as arrays), str, int, float, bool, bytes, naive ``datetime.datetime`` (UTC) and
``plistlib.UID`` (binary only); a binary null reads as ``None``.

Unlike ``plistlib``, decoding is hardened for input from devices: XML with a DTD internal
subset or entity declarations is refused, every binary offset, length and reference is
checked, reference cycles are refused, and nesting depth and the number of decoded values
are capped (shared binary references count each time they are used), so a small file cannot
expand into an exponential amount of work. A refused input raises
:class:`~mdmgate.errors.PlistDecodeError` with the byte offset.

>>> from mdmgate import plist
>>> plist.loads(plist.dumps({"ManifestURL": "https://x/a.plist?a=1&b=2"}, binary=True))
{'ManifestURL': 'https://x/a.plist?a=1&b=2'}
"""

from __future__ import annotations

from typing import Any

from mdmgate import _core

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "dumps", "loads"]

#: Default cap on input size (32 MiB); a 1,000-app inventory report is about 1 MB of XML.
MAX_BYTES: int = _core.PLIST_MAX_BYTES
#: Default cap on nesting (128); MDM messages are a handful of levels deep.
MAX_DEPTH: int = _core.PLIST_MAX_DEPTH
#: Default cap on decoded values (1,000,000); a 1,000-app report has about 25,000.
MAX_NODES: int = _core.PLIST_MAX_NODES


def loads(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_depth: int | None = None,
    max_nodes: int | None = None,
) -> Any:
    """Decodes an XML or binary plist (told apart by the ``bplist`` magic)."""
    return _core.plist_loads(data, max_bytes=max_bytes, max_depth=max_depth, max_nodes=max_nodes)


def dumps(value: Any, *, binary: bool = False, sort_keys: bool = True) -> bytes:
    """Encodes ``value`` as an XML plist, or as a binary one when ``binary`` is true.

    Dictionary keys are sorted unless ``sort_keys`` is false, as in ``plistlib``.
    """
    return _core.plist_dumps(value, binary=binary, sort_keys=sort_keys)
