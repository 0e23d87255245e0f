"""Apple MDM protocol models: check-in messages, command reports, command builders, and
a validator over Apple's device-management schema facts.

* :mod:`mdmgate.apple.schema`: the facts (shipped in ``data/``) and the validator,
  strict for what the gateway sends, lenient for what devices send; the errata list.
* :mod:`mdmgate.apple.checkin`: :func:`decode_checkin` and a Struct per MessageType.
* :mod:`mdmgate.apple.reports`: :func:`decode_report`, typed views of
  InstalledApplicationList, ManagedApplicationList and InstallApplication results, and
  :func:`installed_versions` for the version engine.
* :mod:`mdmgate.apple.commands`: builders returning :class:`Command` objects whose
  ``to_plist()`` gives ``{CommandUUID, Command: {RequestType, ...}}``.

Plists are read and written through :mod:`mdmgate.plist`.
"""

from mdmgate.apple import checkin, commands, reports, schema
from mdmgate.apple.checkin import CheckinMessage, decode_checkin
from mdmgate.apple.commands import Command
from mdmgate.apple.errors import AppleDecodeError, CommandValidationError
from mdmgate.apple.reports import (
    CommandReport,
    CommandStatus,
    InstalledVersion,
    ManagedAppStatus,
    decode_report,
    install_application_result,
    installed_applications,
    installed_versions,
    managed_applications,
)
from mdmgate.apple.schema import ERRATA, Erratum, SchemaIssue

__all__ = [
    "ERRATA",
    "AppleDecodeError",
    "CheckinMessage",
    "Command",
    "CommandReport",
    "CommandStatus",
    "CommandValidationError",
    "Erratum",
    "InstalledVersion",
    "ManagedAppStatus",
    "SchemaIssue",
    "checkin",
    "commands",
    "decode_checkin",
    "decode_report",
    "install_application_result",
    "installed_applications",
    "installed_versions",
    "managed_applications",
    "reports",
    "schema",
]
