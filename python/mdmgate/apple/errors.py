"""Exceptions of the Apple MDM models.

Both carry a ``path`` naming where the problem is, in the dotted form the validator uses:
``Command.Options.PurchaseMethod``, ``Command.Settings[2].Enabled`` or, for keys that are
not plain names, ``ManagedApplicationList["com.example.app"].Status``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdmgate.errors import MdmgateError

if TYPE_CHECKING:
    from mdmgate.apple.schema import SchemaIssue

__all__ = ["AppleDecodeError", "CommandValidationError"]


class CommandValidationError(MdmgateError, ValueError):
    """A command the gateway was about to send breaks Apple's schema (or one of the
    builders' own rules).

    ``path`` is where the first problem is, ``issues`` lists every problem found (each
    with its own ``path``, ``code`` and ``message``) and ``request_type`` names the
    command.
    """

    def __init__(
        self,
        message: str,
        path: str,
        request_type: str,
        issues: tuple[SchemaIssue, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.request_type = request_type
        self.issues = issues

    def __str__(self) -> str:
        return self.message

    def __reduce__(
        self,
    ) -> tuple[type[CommandValidationError], tuple[str, str, str, tuple[SchemaIssue, ...]]]:
        return (type(self), (self.message, self.path, self.request_type, self.issues))


class AppleDecodeError(MdmgateError, ValueError):
    """A check-in message or command report that cannot be read at all: not a plist,
    not a dictionary at the top, or without the key that says what it is
    (``MessageType`` for check-ins, ``Status`` for reports).

    Anything less than that is only a warning: device messages are read leniently.
    ``path`` names the key concerned (empty when the whole body is unreadable).
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[AppleDecodeError], tuple[str, str]]:
        return (type(self), (self.message, self.path))
