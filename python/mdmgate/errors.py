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
