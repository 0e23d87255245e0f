"""Exceptions mdmgate raises for input it cannot accept.

The compiled core raises these directly, so they carry the same fields whether a
version came in through one call or as row 812,331 of a column.
"""

from __future__ import annotations


class MdmgateError(Exception):
    """Base class of every error mdmgate raises on purpose."""


class UnknownPlatform(MdmgateError, ValueError):
    """A platform name that no version rule exists for."""


class InvalidVersion(MdmgateError, ValueError):
    """A version string that does not follow its platform's rule.

    ``offset`` is the byte offset of the problem within ``version``; ``index`` is the
    row of the column it came from, for the batch calls (``None`` otherwise).
    """

    def __init__(
        self,
        message: str,
        version: str,
        platform: str,
        offset: int,
        index: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.version = version
        self.platform = platform
        self.offset = offset
        self.index = index

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[InvalidVersion], tuple[str, str, str, int, int | None]]:
        return (type(self), (self.message, self.version, self.platform, self.offset, self.index))


class DuplicateVersion(MdmgateError, ValueError):
    """An uploaded app version that orders equal to one the app already has."""


class InputRefused(MdmgateError, ValueError):
    """Bytes a decoder refused. ``kind`` says why: ``syntax`` (not well-formed),
    ``encoding`` (not UTF-8), ``entity`` (DTD subsets, entity declarations or undefined
    entities), ``limit`` (a size, depth or count cap) or ``structure`` (well-formed, but not
    the expected format). ``offset`` is the byte offset where the problem was found."""

    def __init__(self, message: str, offset: int, kind: str) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.kind = kind

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[InputRefused], tuple[str, int, str]]:
        return (type(self), (self.message, self.offset, self.kind))


class OutputRefused(MdmgateError, ValueError):
    """A value an encoder will not write; ``path`` names where it is in the message."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[OutputRefused], tuple[str, str]]:
        return (type(self), (self.message, self.path))


class SyncMLDecodeError(InputRefused):
    """A SyncML message (XML or WBXML) that was refused."""


class SyncMLEncodeError(OutputRefused):
    """A SyncML message the encoder will not write (``path`` like
    ``SyncBody[2].Item[0].Data``)."""


class PlistDecodeError(InputRefused):
    """A property list (XML or binary) that was refused."""


class PlistEncodeError(OutputRefused):
    """A value that cannot be written as a plist, such as a string with control characters
    in XML (``path`` like ``Items[3].Name``). Unsupported types raise ``TypeError`` and
    out-of-range integers ``OverflowError``, as ``plistlib`` does."""
