"""OMA-DM SyncML 1.2 messages in XML and WBXML, read and written by the Rust core.

Two views of a message:

* the dict form, ``to_dict``/``from_dict``: plain JSON-compatible data whose keys are the
  SyncML element names (documented in ``docs/syncml.md``); what ``mdmgate syncml decode``
  prints;
* typed objects, ``decode``/``Message.encode`` and ``MessageBuilder``: what the gateway's
  own session code uses, without building a dict per element.

Decoding accepts what real devices send (missing or ``"0"`` CmdIDs, Meta without its
namespace, XML inlined into ``Data``) and refuses hostile input with
:class:`~mdmgate.errors.SyncMLDecodeError`; encoding refuses messages a device could
misread with :class:`~mdmgate.errors.SyncMLEncodeError`.

>>> from mdmgate import syncml
>>> msg = syncml.from_dict({
...     "SyncHdr": {"SessionID": "1", "MsgID": "1",
...                 "Target": {"LocURI": "device-1"}, "Source": {"LocURI": "https://mdm"}},
...     "SyncBody": [{"Get": {"CmdID": "1", "Item": [{"Target": {"LocURI": "./DevDetail/SwV"}}]}}],
...     "Final": True,
... })
>>> syncml.to_dict(msg)["SyncBody"][0]["Get"]["Item"][0]["Target"]["LocURI"]
'./DevDetail/SwV'
"""

from __future__ import annotations

from typing import Any, Literal

from mdmgate import _core
from mdmgate._core import Command, Header, Item, Message, MessageBuilder

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "Command",
    "Header",
    "Item",
    "Message",
    "MessageBuilder",
    "decode",
    "detect",
    "from_dict",
    "message_from_dict",
    "to_dict",
]

#: Default cap on a message's size in bytes (16 MiB): a full ``?list=StructData`` app
#: inventory of a device with thousands of packages fits; Windows chunks anything larger.
MAX_BYTES: int = _core.SYNCML_MAX_BYTES
#: Default cap on element nesting (32): SyncML itself is about ten levels deep.
MAX_DEPTH: int = _core.SYNCML_MAX_DEPTH
#: Default cap on elements per message (500,000): a 300-app inventory (1.6 MB) has about 32,500.
MAX_ELEMENTS: int = _core.SYNCML_MAX_ELEMENTS


def to_dict(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_depth: int | None = None,
    max_elements: int | None = None,
) -> dict[str, Any]:
    """Decodes a SyncML message (XML or WBXML, detected) into its dict form."""
    return _core.syncml_to_dict(
        data, max_bytes=max_bytes, max_depth=max_depth, max_elements=max_elements
    )


def from_dict(message: dict[str, Any], *, wbxml: bool = False) -> bytes:
    """Encodes the dict form as SyncML XML, or WBXML when ``wbxml`` is true."""
    return _core.syncml_from_dict(message, wbxml=wbxml)


def decode(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_depth: int | None = None,
    max_elements: int | None = None,
) -> Message:
    """Decodes a SyncML message (XML or WBXML, detected) into typed objects."""
    return _core.syncml_decode(
        data, max_bytes=max_bytes, max_depth=max_depth, max_elements=max_elements
    )


def message_from_dict(message: dict[str, Any]) -> Message:
    """The typed form of a message given as a dict."""
    return _core.syncml_message_from_dict(message)


def detect(data: bytes) -> Literal["xml", "wbxml"]:
    """Which encoding ``data`` is in: WBXML starts with its version byte, XML with text."""
    return "wbxml" if _core.syncml_detect(data) == "wbxml" else "xml"
