"""The ``[enrollment]`` configuration table: the certificate authority, where devices are
sent, and how enrolled Windows devices poll. Every default is explained where it is set;
``docs/enrollment.md`` shows them in use."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

__all__ = ["PASSPHRASE_ENV", "EnrollmentSettings", "SettingsError"]

#: The environment variable holding the CA key's passphrase (kept out of config files).
PASSPHRASE_ENV = "MDMGATE_CA_PASSPHRASE"

_ROOT_KEYS = ("rsa-2048", "rsa-3072", "rsa-4096")
_URLS = (
    "public_url",
    "windows_federated_url",
    "windows_policy_url",
    "windows_enrollment_url",
    "apple_scep_url",
    "apple_acme_url",
)


class SettingsError(ValueError):
    """An ``[enrollment]`` value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class EnrollmentSettings:
    #: Encrypts the CA's private key wherever it is kept (the store, or ``ca_key``).
    #: Without it (here or in ``MDMGATE_CA_PASSPHRASE``) the built-in CA is off and the
    #: enrollment endpoints answer 503 saying so: a CA key is never kept in the clear.
    ca_passphrase: str | None = None
    #: An enterprise's own issuing CA (PEM files) instead of the one created on first
    #: start; ``ca_key`` encrypted with ``ca_passphrase``.
    ca_cert: str | None = None
    ca_key: str | None = None
    ca_name: str = "mdmgate device CA"
    #: RSA, because SCEP clients encrypt their request to the CA's key (key transport);
    #: 3072 bits because the root outlives 2030, after which NIST retires 2048-bit RSA.
    root_key: str = "rsa-3072"
    #: Ten years: a root that expires strands every enrolled device at once.
    root_validity_days: int = 3650
    #: One year: Windows renews ``windows_renew_days`` before expiry; a lost device's
    #: certificate dies on its own within a year even if nobody revokes it.
    device_validity_days: int = 365
    #: The smallest RSA key a device may ask to have certified (NIST SP 800-131A: 2048).
    min_rsa_bits: int = 2048
    #: How devices reach this gateway, e.g. ``https://mdm.example.com``: the base of every
    #: URL in discovery answers and profiles. Unset: taken from each request's ``Host``.
    public_url: str | None = None
    #: Windows discovery's authentication policy: ``OnPremise`` (the enrollment token is
    #: the password) or ``Federated`` (a web page at ``windows_federated_url`` hands the
    #: device a token, which is then the token the enrollment request carries).
    windows_auth_policy: str = "OnPremise"
    windows_federated_url: str | None = None
    #: An external Windows enrollment service (policy and enrollment URLs) that discovery
    #: names instead of this gateway's; the gateway then trusts its CA through
    #: ``--client-ca``.
    windows_policy_url: str | None = None
    windows_enrollment_url: str | None = None
    #: What the device's OMA-DM client sends: ``xml`` or ``wbxml``.
    windows_encoding: str = "xml"
    #: The DMClient poll schedule: every 15 minutes for the first 8 polls (two hours in
    #: which new policies land quickly), then every 8 hours (what keeps a fleet of 100,000
    #: devices at about 3.5 sessions a second). Pushes are not needed for either.
    windows_first_poll_minutes: int = 15
    windows_first_polls: int = 8
    windows_poll_minutes: int = 480
    #: Days before its certificate expires that a Windows device starts renewing it
    #: (Windows' own default for MS-WSTEP renewal is 42).
    windows_renew_days: int = 42
    #: The MDM push topic for Apple profiles; unset: the uploaded push certificate's.
    apple_topic: str | None = None
    #: An external SCEP server (with its static challenge) or ACME directory for the
    #: identity payload, instead of the built-in SCEP server.
    apple_scep_url: str | None = None
    apple_scep_challenge: str | None = None
    apple_acme_url: str | None = None
    #: Signs the profile (PEM, e.g. a certificate from a public CA so that Settings shows
    #: "Verified"); unset: the CA signs it.
    apple_profile_cert: str | None = None
    apple_profile_key: str | None = None
    apple_organization: str = "mdmgate"
    #: How long a SCEP challenge from a profile stays usable (one use either way).
    challenge_minutes: int = 60

    @classmethod
    def from_table(cls, raw: object) -> EnrollmentSettings:
        """The settings of a config table (unknown keys named), with the passphrase from
        ``MDMGATE_CA_PASSPHRASE`` when the table has none."""
        if not isinstance(raw, dict):
            raise SettingsError("enrollment must be a table")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(raw) - known)
        if bad:
            raise SettingsError(f"unknown enrollment keys: {', '.join(bad)}")
        values: dict[str, Any] = dict(raw)
        if values.get("ca_passphrase") is None and os.environ.get(PASSPHRASE_ENV):
            values["ca_passphrase"] = os.environ[PASSPHRASE_ENV]
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raises :class:`SettingsError` naming the first unusable value."""
        self._check_types()
        self._check_ranges()
        self._check_combinations()

    def _check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise SettingsError(f"enrollment {f.name} must be a whole number")
            if f.type == "str" and not isinstance(value, str):
                raise SettingsError(f"enrollment {f.name} must be a string")
            if f.type == "str | None" and value is not None and not isinstance(value, str):
                raise SettingsError(f"enrollment {f.name} must be a string")
        for name in _URLS:
            _check_url(name, getattr(self, name))

    def _check_ranges(self) -> None:
        if self.root_key not in _ROOT_KEYS:
            raise SettingsError(f"enrollment root_key must be one of {', '.join(_ROOT_KEYS)}")
        if self.min_rsa_bits < 2048:
            raise SettingsError("enrollment min_rsa_bits must be at least 2048")
        if not 1 <= self.device_validity_days <= self.root_validity_days:
            raise SettingsError(
                "enrollment device_validity_days must be from 1 to root_validity_days"
            )
        if not 1 <= self.windows_renew_days < self.device_validity_days:
            raise SettingsError(
                "enrollment windows_renew_days must be at least 1 and under device_validity_days"
            )
        for name in ("windows_first_poll_minutes", "windows_poll_minutes", "challenge_minutes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"enrollment {name} must be at least 1")
        if self.windows_first_polls < 0:
            raise SettingsError("enrollment windows_first_polls must not be negative")
        if self.windows_auth_policy not in ("OnPremise", "Federated"):
            raise SettingsError("enrollment windows_auth_policy must be OnPremise or Federated")
        if self.windows_encoding not in ("xml", "wbxml"):
            raise SettingsError("enrollment windows_encoding must be xml or wbxml")

    def _check_combinations(self) -> None:
        if self.windows_auth_policy == "Federated" and not self.windows_federated_url:
            raise SettingsError(
                "enrollment windows_auth_policy Federated needs windows_federated_url"
            )
        pairs = (
            ("ca_cert", "ca_key"),
            ("apple_profile_cert", "apple_profile_key"),
            ("windows_policy_url", "windows_enrollment_url"),
        )
        for a, b in pairs:
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise SettingsError(f"enrollment {a} and {b} go together")
        if self.apple_scep_url and self.apple_acme_url:
            raise SettingsError("enrollment apple_scep_url and apple_acme_url exclude each other")
        if self.apple_scep_challenge is not None and not self.apple_scep_url:
            raise SettingsError("enrollment apple_scep_challenge needs apple_scep_url")

    @property
    def builtin_ca(self) -> bool:
        """Whether this gateway issues certificates itself (it can: a passphrase is set)."""
        return bool(self.ca_passphrase)


def _check_url(name: str, value: str | None) -> None:
    if value is None:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise SettingsError(f"enrollment {name} {value!r} is not an http(s) URL")
