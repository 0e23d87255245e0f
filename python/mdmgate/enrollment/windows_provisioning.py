"""The wap-provisioningdoc of a Windows enrollment ([MS-MDE2] 2.2.9): what installs the
device's certificates and configures its OMA-DM client, for a first enrollment
(:func:`provisioning_doc`) or a renewal (:func:`renewal_doc`), from the gateway's
:class:`DmClientSettings` and the account's :class:`DmCredentials`. Pure functions: typed
values in, document bytes out, for :func:`mdmgate.enrollment.windows.enrollment_response`
to carry.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, fields
from typing import Literal
from urllib.parse import quote

from cryptography import x509

from mdmgate.enrollment.windows_soap import Node, check_text, https_host, node, write_xml

__all__ = ["DmClientSettings", "DmCredentials", "provisioning_doc", "renewal_doc"]


@dataclass(frozen=True)
class DmCredentials:
    """The OMA-DM credentials of the device's w7 account. MS-MDE2 2.2.9.5 requires both
    levels even where TLS client certificates authenticate the device: APPSRV, the device's
    (``client_name``, ``client_secret``, ``client_nonce`` for its first MD5 digest), and
    CLIENT, the server's (``server_secret``, and ``server_nonce`` for the server's first
    digest, which the device checks). Record what you give if digests are to be checked."""

    client_name: str
    client_secret: str
    client_nonce: bytes
    server_secret: str
    server_nonce: bytes

    def __post_init__(self) -> None:
        for name in ("client_name", "client_secret", "server_secret"):
            check_text(getattr(self, name), name)
        for name in ("client_nonce", "server_nonce"):
            if not isinstance(getattr(self, name), bytes) or not getattr(self, name):
                raise ValueError(f"{name} must be non-empty bytes")

    @classmethod
    def random(cls, client_name: str) -> DmCredentials:
        """Fresh random secrets and nonces: for a device that authenticates by certificate,
        nothing ever needs to check them."""
        return cls(
            client_name=client_name,
            client_secret=secrets.token_urlsafe(24),
            client_nonce=secrets.token_bytes(16),
            server_secret=secrets.token_urlsafe(24),
            server_nonce=secrets.token_bytes(16),
        )


@dataclass(frozen=True)
class DmClientSettings:
    """How an enrolled device reaches the gateway (w7 APPLICATION, DMClient and
    CertificateStore CSPs of the provisioning document).

    ``server_url`` is the OMA-DM endpoint (ADDR), ``renewal_url`` the enrollment service
    that renews certificates (both https). ``provider_id`` names the account on the device
    (PROVIDER-ID and the DMClient node: up to 64 letters, digits, spaces, ``.``, ``_``,
    ``-``); ``server_name`` is what Settings shows. ``encoding`` is what the device sends,
    ``xml`` or ``wbxml`` (the gateway answers in kind).

    The poll schedule (DMClient ``Provider/<id>/Poll``), three schedules run in order,
    intervals in minutes, a count of 0 repeating that schedule forever:

    * first: every 15 minutes, 8 times. A new device checks in eight times in its first two
      hours, so the policies queued for it at enrollment land while its user is setting it
      up. Windows requires this schedule.
    * second: every 480 minutes (8 hours, Windows' own maintenance rhythm), forever. Without
      push notifications this bounds how late a queued command is picked up, at about three
      sessions a day per device.
    * remaining: off (0). Windows requires it, when used, to be at least 1440 minutes: give
      the second schedule a count and use this one for a daily long-run poll.
    * ``poll_on_login``: also a session whenever a user signs in.

    Renewal (CertificateStore ``My/WSTEP/Renew``): the device starts renewing its certificate
    ``renew_period_days`` before it expires (42, the CSP's own default, inside the 40-60 days
    Microsoft recommends: a device never renews an expired certificate) and after a failure
    retries every ``renew_retry_days`` (4: Microsoft advises every few days rather than
    weekly, so that retries fall on different weekdays).

    ``ValueError`` names a setting a device would reject."""

    server_url: str
    renewal_url: str
    provider_id: str = "mdmgate"
    server_name: str = "mdmgate"
    encoding: Literal["xml", "wbxml"] = "xml"
    first_interval_minutes: int = 15
    first_retries: int = 8
    second_interval_minutes: int = 480
    second_retries: int = 0
    remaining_interval_minutes: int = 0
    remaining_retries: int = 0
    poll_on_login: bool = True
    renew_period_days: int = 42
    renew_retry_days: int = 4

    def __post_init__(self) -> None:
        https_host(self.server_url, "server_url")
        https_host(self.renewal_url, "renewal_url")
        if not isinstance(self.provider_id, str) or not re.fullmatch(
            r"[A-Za-z0-9._-]([A-Za-z0-9 ._-]{0,62}[A-Za-z0-9._-])?", self.provider_id
        ):
            raise ValueError(f"provider_id {self.provider_id!r} must be 1-64 letters or digits")
        check_text(self.server_name, "server_name")
        if self.encoding not in ("xml", "wbxml"):
            raise ValueError(f"encoding must be xml or wbxml, not {self.encoding!r}")
        if not isinstance(self.poll_on_login, bool):
            raise ValueError("poll_on_login must be true or false")
        for number in (f.name for f in fields(self) if f.type == "int"):
            value, lowest = getattr(self, number), 1 if number in _AT_LEAST_ONE else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"{number} must be a whole number of at least {lowest}")
        if 0 < self.remaining_interval_minutes < 1440:
            raise ValueError("remaining_interval_minutes must be 0 (off) or at least 1440")
        forever = self.second_interval_minutes > 0 and self.second_retries == 0
        if forever and self.remaining_interval_minutes:
            raise ValueError(
                "second_retries 0 repeats the second schedule forever (infinite): the"
                " remaining one would never run; set remaining_interval_minutes to 0"
            )
        if self.renew_period_days > 1000:
            raise ValueError("renew_period_days must be at most 1000 (the CSP's limit)")
        if self.renew_retry_days > self.renew_period_days:
            raise ValueError("renew_retry_days must not exceed renew_period_days")


def provisioning_doc(
    *,
    ca_der: bytes,
    device_der: bytes,
    enrollment_type: str,
    settings: DmClientSettings,
    device_id: str | None = None,
    upn: str | None = None,
    credentials: DmCredentials | None = None,
) -> bytes:
    """The wap-provisioningdoc of a first enrollment (MS-MDE2 2.2.9.1):

    * CertificateStore: the CA (``ca_der``) into Root/System, the device's certificate
      (``device_der``) into My/User for a ``Full`` enrollment or My/System for ``Device``,
      each under its SHA-1 thumbprint, with the PrivateKeyContainer that pairs it with the
      device's key; WSTEP/Renew: the renewal settings and ``settings.renewal_url``;
    * APPLICATION w7: the OMA-DM account (PROVIDER-ID, NAME, ADDR, DEFAULTENCODING), the TLS
      client certificate to present (SSLCLIENTCERTSEARCHCRITERIA: its subject, in its own RDN
      order, URI-escaped, in the store it went to) and both APPAUTH levels (``credentials``,
      else fresh random ones);
    * DMClient Provider/<provider_id>: ``device_id`` as EntDMID (Windows requires it before
      it renews), ``upn`` as UPN, the poll schedule.

    ``ValueError`` names an unusable argument."""
    store, device = _store(enrollment_type), _certificate(device_der, "device_der")
    _certificate(ca_der, "ca_der")
    for value, name in ((device_id, "device_id"), (upn, "upn")):
        if value is not None:
            check_text(value, name)
    subject = ",".join(rdn.rfc4514_string() for rdn in device.subject.rdns)
    account = credentials or DmCredentials.random(device_id or settings.provider_id)
    renew = _characteristic(
        "Renew",
        _parm("ROBOSupport", "true", "boolean"),
        _parm("RenewPeriod", str(settings.renew_period_days), "integer"),
        _parm("RetryInterval", str(settings.renew_retry_days), "integer"),
        _parm("ServerURL", settings.renewal_url, "string"),
    )
    key = _characteristic("PrivateKeyContainer")
    certificate = _characteristic(store, _cert_node(device_der), key)
    application = _characteristic(
        "APPLICATION",
        _parm("APPID", "w7"),
        _parm("PROVIDER-ID", settings.provider_id),
        _parm("NAME", settings.server_name),
        _parm("ADDR", settings.server_url),
        _parm("BACKCOMPATRETRYDISABLED"),  # DM 1.2 only: no retrying a package as 1.1
        _parm("DEFAULTENCODING", f"application/vnd.syncml.dm+{settings.encoding}"),
        _parm(
            "SSLCLIENTCERTSEARCHCRITERIA",
            f"Subject={quote(subject, safe=_URI_MARKS)}&Stores=My%5C{store}",
        ),
        _appauth("CLIENT", None, account.server_secret, account.server_nonce),
        _appauth("APPSRV", account.client_name, account.client_secret, account.client_nonce),
    )
    poll = [_parm(name, str(getattr(settings, field)), "integer") for name, field in _POLL]
    poll.append(_parm("PollOnLogin", str(settings.poll_on_login).lower(), "boolean"))
    about = [_parm(n, v, "string") for n, v in (("EntDMID", device_id), ("UPN", upn)) if v]
    provider = _characteristic(settings.provider_id, *about, _characteristic("Poll", *poll))
    root = _characteristic("Root", _characteristic("System", _cert_node(ca_der)))
    my = _characteristic("My", certificate, _characteristic("WSTEP", renew))
    document = [
        _characteristic("CertificateStore", root),
        _characteristic("CertificateStore", my),
        application,
        _characteristic("DMClient", _characteristic("Provider", provider)),
    ]
    return write_xml(node("wap-provisioningdoc", document, {"version": "1.1"}))


def renewal_doc(
    *,
    device_der: bytes,
    enrollment_type: str,
    settings: DmClientSettings,
    ca_der: bytes | None = None,
) -> bytes:
    """The wap-provisioningdoc answering a renewal (MS-MDE2 3.5.4.1.1.2): only the new
    certificate with its PrivateKeyContainer, in the store of ``enrollment_type``, the CA if
    ``ca_der`` is given (needed only by a device that lacks it) and the account's
    PROVIDER-ID. ``ValueError`` names an unusable argument."""
    store = _store(enrollment_type)
    _certificate(device_der, "device_der")
    stores = []
    if ca_der is not None:
        _certificate(ca_der, "ca_der")
        stores.append(_characteristic("Root", _characteristic("System", _cert_node(ca_der))))
    certificate = _cert_node(device_der, _characteristic("PrivateKeyContainer"))
    stores.append(_characteristic("My", _characteristic(store, certificate)))
    document = [
        _characteristic("CertificateStore", *stores),
        _characteristic("APPLICATION", _parm("PROVIDER-ID", settings.provider_id)),
    ]
    return write_xml(node("wap-provisioningdoc", document, {"version": "1.1"}))


# Windows refuses a first schedule that never polls; a renewal period or retry of 0 days.
_AT_LEAST_ONE = ("first_interval_minutes", "first_retries", "renew_period_days", "renew_retry_days")
_POLL = (
    ("IntervalForFirstSetOfRetries", "first_interval_minutes"),
    ("NumberOfFirstRetries", "first_retries"),
    ("IntervalForSecondSetOfRetries", "second_interval_minutes"),
    ("NumberOfSecondRetries", "second_retries"),
    ("IntervalForRemainingScheduledRetries", "remaining_interval_minutes"),
    ("NumberOfRemainingScheduledRetries", "remaining_retries"),
)
# RFC 2396's unreserved marks: SSLCLIENTCERTSEARCHCRITERIA URI-escapes everything else.
_URI_MARKS = "-_.!~*'()"


def _store(enrollment_type: str) -> str:
    if enrollment_type not in ("Full", "Device"):
        raise ValueError(f"enrollment_type must be Full or Device, not {enrollment_type!r}")
    return "User" if enrollment_type == "Full" else "System"


def _certificate(der: bytes, name: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a DER X.509 certificate") from None


def _cert_node(der: bytes, *more: Node) -> Node:
    # The CSP names a certificate by its SHA-1 thumbprint (MS-MDE2 2.2.9.2).
    thumbprint = hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()
    encoded = _parm("EncodedCertificate", base64.b64encode(der).decode())
    return _characteristic(thumbprint, encoded, *more)


def _appauth(level: str, name: str | None, secret: str, nonce: bytes) -> Node:
    # MS-MDE2 2.2.9.5: CLIENT must be DIGEST; APPSRV is too, no secret sent as BASIC.
    parms = [_parm("AAUTHLEVEL", level), _parm("AAUTHTYPE", "DIGEST")]
    parms += [_parm("AAUTHNAME", name)] if name is not None else []
    parms += [_parm("AAUTHSECRET", secret), _parm("AAUTHDATA", base64.b64encode(nonce).decode())]
    return _characteristic("APPAUTH", *parms)


def _characteristic(kind: str, *children: Node) -> Node:
    return node("characteristic", list(children), {"type": kind})


def _parm(name: str, value: str | None = None, datatype: str | None = None) -> Node:
    given = {"name": name, "value": value, "datatype": datatype}
    return node("parm", None, {k: v for k, v in given.items() if v is not None})
