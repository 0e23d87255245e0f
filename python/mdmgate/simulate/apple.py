"""One simulated Apple device (iPhone, iPad or Mac) for ``mdmgate simulate``.

A session is one wake-up of the device's MDM client. The first one enrolls: ``Authenticate``
then ``TokenUpdate`` on ``PUT /mdm/apple/checkin``. Every session then opens the command
channel, ``PUT /mdm/apple/connect`` with ``Status: Idle``, and answers each command the server
hands back until the server answers with an empty body. A ``DeclarativeManagement`` command
is followed by a declarative-management sync on the check-in channel (``tokens``, then the
``declaration-items`` and each declaration that changed, then a ``status`` report).

Answers: ``Acknowledged`` with what a real device returns for the inventory commands
(``InstalledApplicationList`` from the profile's apps and the ones installed since,
``ManagedApplicationList``, ``DeviceInformation`` for the queried keys, ``ProfileList``,
``InstallApplication``'s state), ``NotNow`` at the profile's ``not_now_rate``, ``Error`` with
an ``ErrorChain`` at its ``error_rate``. At ``timeout_rate`` a session goes silent: the
device takes a command and never answers it (the gateway offers it again later).

Stats: a message per request; at the end of each session its latency and, when it failed,
the kind (the vocabulary of :mod:`mdmgate.simulate.stats`): ``http_<status>``,
``transport_<kind>`` (``transport_timeout``, ``transport_reset``...), ``protocol`` (an answer
the protocol does not allow), or ``silent`` (went silent on purpose).

An answer the gateway did not take (no 200, or the connection failed) stays with the device
and opens its next session instead of ``Idle``, as a real MDM client retries its report: the
gateway stores results once per ``CommandUUID``, so a resent answer is harmless. The ledger
hears of an answer each time a message carries it, before it is sent (the runner's exchange
tells the ledger whether the message reached the gateway).

Identity. The gateway knows a device by its identity certificate: the signer of the
``Mdm-Signature`` header (a CMS detached signature of each body; profile ``auth`` is
``signature``) or the TLS client certificate (``mtls``: the runner presents
:meth:`SimulatedAppleDevice.identity_pem`). No chain is checked for a signature; a registered
device with ``"auth": {}`` is bound to the first certificate it enrolls with. Certificates come
from an :class:`IdentityIssuer`, one CA per process by default, so that the same CA can be the
gateway's ``--client-ca`` under mTLS. An identity (an EC P-256 key and its certificate: about
70 µs) is made at the device's first session and kept as DER (under 500 bytes); a session
loads it once (about 20 µs) and each signature costs about 40 µs. A device enrolled through
the gateway's profile and SCEP (``mdmgate simulate --enroll``) is handed the RSA identity the
gateway issued instead (:meth:`SimulatedAppleDevice.use_identity`): about 2 KB, and about
1 ms per signature.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from random import Random
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from mdmgate import plist
from mdmgate.errors import PlistDecodeError
from mdmgate.simulate.ledger import Ledger
from mdmgate.simulate.scenario import DeviceProfile
from mdmgate.simulate.stats import SILENT, Stats
from mdmgate.simulate.transport import Exchange, Reply, TransportError

__all__ = [
    "CHECKIN_PATH",
    "CONNECT_PATH",
    "DEFAULT_TOPIC",
    "DeviceIdentity",
    "IdentityIssuer",
    "SimulatedAppleDevice",
    "default_issuer",
]

CHECKIN_PATH = "/mdm/apple/checkin"
CONNECT_PATH = "/mdm/apple/connect"
_CHECKIN_TYPE = "application/x-apple-aspen-mdm-checkin"
_CONNECT_TYPE = "application/x-apple-aspen-mdm"
#: The push topic a device names when its runner does not give the gateway's.
DEFAULT_TOPIC = "com.apple.mgmt.External.mdmgate-simulate"
#: A server that keeps handing out commands for ever would hold the device for ever.
_MAX_COMMANDS_PER_SESSION = 10_000
_USER_AGENT = "MDM/1.0"


# -- identities -----------------------------------------------------------------------------


class DeviceIdentity:
    """A device's identity certificate and key, as DER (small enough to keep for every
    device; :meth:`signer` loads them for a session)."""

    __slots__ = ("cert_der", "key_der")

    def __init__(self, key_der: bytes, cert_der: bytes) -> None:
        self.key_der = key_der
        self.cert_der = cert_der

    @property
    def sha256(self) -> str:
        """What the gateway calls the identity: hex SHA-256 of the certificate's DER."""
        return hashlib.sha256(self.cert_der).hexdigest()

    def pem(self) -> bytes:
        """Certificate then key, PEM: a file for the TLS client identity (mTLS)."""
        cert = x509.load_der_x509_certificate(self.cert_der)
        key = serialization.load_der_private_key(self.key_der, None)
        return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def signer(self) -> Callable[[bytes], str]:
        """Signs bodies: the ``Mdm-Signature`` value (base64 of a DER CMS SignedData, the
        body detached, SHA-256, signed attributes) for a body."""
        cert = x509.load_der_x509_certificate(self.cert_der)
        key = serialization.load_der_private_key(self.key_der, None)
        # EC from the run's own issuer; RSA when the gateway issued it through SCEP.
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TypeError("a simulated identity has an EC or RSA key")
        options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]

        def sign(body: bytes) -> str:
            builder = pkcs7.PKCS7SignatureBuilder().set_data(body)
            der = builder.add_signer(cert, key, hashes.SHA256()).sign(
                serialization.Encoding.DER, options
            )
            return base64.b64encode(der).decode("ascii")

        return sign


class IdentityIssuer:
    """Issues device identity certificates (EC P-256) from one CA: a fresh one, or the
    ``ca_cert``/``ca_key`` given (e.g. the ``--client-ca`` of a gateway under mTLS)."""

    def __init__(
        self,
        ca_cert: x509.Certificate | None = None,
        ca_key: ec.EllipticCurvePrivateKey | None = None,
        *,
        valid_days: int = 730,
    ) -> None:
        if (ca_cert is None) != (ca_key is None):
            raise ValueError("ca_cert and ca_key go together")
        self._now = dt.datetime.now(dt.UTC)
        self._valid = dt.timedelta(days=valid_days)
        if ca_cert is None or ca_key is None:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mdmgate simulated devices")])
            ca_cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(ca_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(self._now - dt.timedelta(days=1))
                .not_valid_after(self._now + self._valid)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False
                )
                .sign(ca_key, hashes.SHA256())
            )
        self.ca_cert = ca_cert
        self._ca_key = ca_key
        self._authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
        #: Identities issued so far.
        self.issued = 0

    def ca_pem(self) -> bytes:
        """The CA certificate, PEM (the gateway's ``--client-ca`` under mTLS)."""
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, device_id: str) -> DeviceIdentity:
        """A new identity for ``device_id`` (its certificate's common name)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - dt.timedelta(days=1))
            .not_valid_after(self._now + self._valid)
            .add_extension(self._authority, critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.issued += 1
        return DeviceIdentity(
            key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert.public_bytes(serialization.Encoding.DER),
        )


_default: list[IdentityIssuer] = []


def default_issuer() -> IdentityIssuer:
    """The process's issuer (made at first use)."""
    if not _default:
        _default.append(IdentityIssuer())
    return _default[0]


# -- what a device says about itself ----------------------------------------------------------


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode()).digest()


def _number(identifier: str, salt: str, low: int, high: int) -> int:
    """A stable pseudo-random number for an app or device key (no rng draw, no storage)."""
    return low + int.from_bytes(_digest(salt, identifier)[:8], "big") % (high - low)


def _build_version(platform: str, os_version: str) -> str:
    """An Apple-style build number for an OS version (iOS 17.5.1 → 21F50)."""
    parts = [int(p) if p.isdigit() else 0 for p in os_version.split(".")[:3]] + [0, 0]
    major, minor, patch = parts[0], parts[1], parts[2]
    train = major + 9 if platform == "macos" and major >= 11 else major + 4
    return f"{train}{chr(ord('A') + min(minor, 25))}{40 + 10 * patch}"


_MODEL_NAMES = {"ios": "iPhone", "ipados": "iPad", "macos": "Mac"}
_OS_FAMILIES = {"ios": "iOS", "ipados": "iPadOS", "macos": "macOS"}


class _Answer:
    """A report built for a command, kept until the gateway takes it."""

    __slots__ = ("body", "command_id", "state")

    def __init__(self, command_id: str, state: str, body: bytes) -> None:
        self.command_id = command_id
        self.state = state
        self.body = body


class _Protocol(Exception):
    """The server's answer is not what the protocol promises."""


class _HttpError(Exception):
    """The server answered with a status other than 200."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _Session:
    """The device's messages of one session through one exchange."""

    __slots__ = ("exchange", "platform", "sign", "stats")

    def __init__(
        self,
        exchange: Exchange,
        stats: Stats,
        platform: str,
        sign: Callable[[bytes], str] | None,
    ) -> None:
        self.exchange = exchange
        self.stats = stats
        self.platform = platform
        self.sign = sign

    async def put(self, path: str, content_type: str, body: bytes) -> Reply:
        headers = [("content-type", content_type), ("user-agent", _USER_AGENT)]
        if self.sign is not None:
            headers.append(("mdm-signature", self.sign(body)))
        self.stats.message(self.platform)
        reply = await self.exchange("PUT", path, headers, body)
        if reply.status != 200:
            raise _HttpError(reply.status)
        return reply


class SimulatedAppleDevice:
    """One iPhone, iPad or Mac (``profile.platform``); see the module documentation.

    ``topic``: the push topic it names at enrollment (the gateway's ``[apns] topic``);
    ``issuer``: where its identity comes from (:func:`default_issuer` if not given)."""

    __slots__ = (
        "_apps",
        "_ddm_declarations",
        "_ddm_due",
        "_ddm_token",
        "_enrolled",
        "_identity",
        "_issuer",
        "_ledger",
        "_pending",
        "_profile",
        "_removed",
        "_rng",
        "_stats",
        "_topic",
        "id",
    )

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        rng: Random,
        stats: Stats,
        ledger: Ledger,
        topic: str = DEFAULT_TOPIC,
        issuer: IdentityIssuer | None = None,
    ) -> None:
        self.id = profile.id
        self._profile = profile
        self._rng = rng
        self._stats = stats
        self._ledger = ledger
        self._topic = topic
        self._issuer = issuer
        self._identity: DeviceIdentity | None = None
        self._enrolled = False
        #: Apps installed through MDM since the profile (identifier → version).
        self._apps: dict[str, str] | None = None
        #: Profile apps removed through MDM.
        self._removed: set[str] | None = None
        self._pending: _Answer | None = None
        self._ddm_due = False
        self._ddm_token: str | None = None
        self._ddm_declarations: dict[str, str] | None = None

    # -- what the runner needs

    @property
    def push_token(self) -> str:
        """The APNs device token it sends at enrollment, lower-case hex."""
        return self._token().hex()

    @property
    def enrolled(self) -> bool:
        """Whether its enrollment (Authenticate, TokenUpdate) was accepted."""
        return self._enrolled

    @property
    def identity(self) -> DeviceIdentity:
        """Its identity certificate and key (made now if not yet)."""
        if self._identity is None:
            self._identity = (self._issuer or default_issuer()).issue(self.id)
        return self._identity

    def use_identity(self, identity: DeviceIdentity, *, topic: str | None = None) -> None:
        """Enrolled through the gateway's profile and SCEP: this identity (and the push
        topic the profile names) from now on, announced by a fresh Authenticate."""
        self._identity = identity
        if topic:
            self._topic = topic
        self._enrolled = False

    def identity_pem(self) -> bytes:
        """Its TLS client identity (certificate and key, PEM), for ``auth = "mtls"``."""
        return self.identity.pem()

    # -- a session

    async def session(self, exchange: Exchange) -> None:
        """One wake-up, from its first message until the server has nothing more for it.
        Records stats and ledger entries; raises nothing for server or transport errors."""
        started = trio.current_time()
        error: str | None
        try:
            error = await self._session(exchange)
        except TransportError as exc:
            error = f"transport_{exc.kind}"
        except _HttpError as exc:
            error = f"http_{exc.status}"
        except _Protocol:
            error = "protocol"
        self._stats.session(self._profile.platform, trio.current_time() - started, error)

    async def _session(self, exchange: Exchange) -> str | None:
        profile = self._profile
        silent = profile.timeout_rate > 0 and self._rng.random() < profile.timeout_rate
        sign = self.identity.signer() if profile.auth != "mtls" else None
        channel = _Session(exchange, self._stats, profile.platform, sign)
        if not self._enrolled:
            for message in (self._authenticate(), self._token_update()):
                await channel.put(CHECKIN_PATH, _CHECKIN_TYPE, plist.dumps(message))
            self._enrolled = True
        for _ in range(_MAX_COMMANDS_PER_SESSION):
            answer = self._pending
            if answer is None:
                body = self._report("Idle")
            else:
                # Each message carrying the answer is recorded (the runner confirms it
                # reached the gateway); a resent answer is the same answer again.
                self._ledger.answered(self.id, answer.command_id, answer.state)
                body = answer.body
            reply = await channel.put(CONNECT_PATH, _CONNECT_TYPE, body)
            self._pending = None
            if not reply.body:
                break
            command_id, request_type, command = _command(reply.body)
            self._ledger.received(self.id, command_id, request_type)
            self._stats.command(profile.platform, "received")
            if silent:
                return SILENT
            self._pending = self._answer(command_id, request_type, command)
            self._stats.command(profile.platform, "answered")
        else:
            raise _Protocol("the server never ran out of commands")
        if self._ddm_due:
            await self._ddm_sync(channel)
        return None

    # -- enrollment

    def _token(self) -> bytes:
        return _digest("apns-token", self.id)

    def _about(self) -> dict[str, Any]:
        profile = self._profile
        name = _MODEL_NAMES.get(profile.platform, "iPhone")
        return {
            "BuildVersion": _build_version(profile.platform, profile.os_version),
            "DeviceName": f"{name} {profile.serial[-4:]}",
            "Model": profile.model,
            "ModelName": name,
            "OSVersion": profile.os_version,
            "ProductName": profile.model,
            "SerialNumber": profile.serial,
        }

    def _authenticate(self) -> dict[str, Any]:
        return {
            "MessageType": "Authenticate",
            "Topic": self._topic,
            "UDID": self.id,
            **self._about(),
        }

    def _token_update(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "AwaitingConfiguration": False,
            "MessageType": "TokenUpdate",
            "PushMagic": str(uuid.UUID(bytes=_digest("push-magic", self.id)[:16])).upper(),
            "Token": self._token(),
            "Topic": self._topic,
            "UDID": self.id,
        }
        if self._profile.platform != "macos":  # Macs have no passcode unlock token
            message["UnlockToken"] = _digest("unlock-token", self.id) * 4
        return message

    # -- commands

    def _report(self, status: str, command_id: str | None = None, **result: Any) -> bytes:
        report: dict[str, Any] = {"Status": status, "UDID": self.id, **result}
        if command_id is not None:
            report["CommandUUID"] = command_id
        return plist.dumps(report)

    def _answer(self, command_id: str, request_type: str, command: Mapping[str, Any]) -> _Answer:
        profile = self._profile
        roll = self._rng.random()
        if roll < profile.error_rate:
            chain = [
                {
                    "ErrorCode": 12021,
                    "ErrorDomain": "MCMDMErrorDomain",
                    "LocalizedDescription": f"{request_type} failed on this device.",
                    "USEnglishDescription": f"{request_type} failed on this device.",
                }
            ]
            body = self._report("Error", command_id, ErrorChain=chain)
            return _Answer(command_id, "error", body)
        if roll < profile.error_rate + profile.not_now_rate:
            return _Answer(command_id, "not_now", self._report("NotNow", command_id))
        handler = _HANDLERS.get(request_type)
        result = handler(self, command) if handler is not None else {}
        body = self._report("Acknowledged", command_id, **result)
        return _Answer(command_id, "acknowledged", body)

    def _installed(self) -> dict[str, str]:
        """Identifier → version of what is installed now."""
        removed = self._removed or set()
        apps = {i: v for i, v in self._profile.apps if i not in removed}
        apps.update(self._apps or {})
        return apps

    def _installed_list(self, command: Mapping[str, Any]) -> dict[str, Any]:
        wanted = command.get("Identifiers")
        managed = set(self._apps or ()) if command.get("ManagedAppsOnly") else None
        items = []
        for identifier, version in sorted(self._installed().items()):
            if isinstance(wanted, list) and identifier not in wanted:
                continue
            if managed is not None and identifier not in managed:
                continue
            items.append(_app_record(identifier, version))
        return {"InstalledApplicationList": items}

    def _managed_list(self, command: Mapping[str, Any]) -> dict[str, Any]:
        wanted = command.get("Identifiers")
        apps = {}
        for identifier in sorted(self._apps or ()):
            if isinstance(wanted, list) and identifier not in wanted:
                continue
            apps[identifier] = {
                "ExternalVersionIdentifier": _number(identifier, "evid", 800_000_000, 900_000_000),
                "HasConfiguration": False,
                "HasFeedback": False,
                "IsValidated": True,
                "ManagementFlags": 1,
                "Status": "Managed",
                "UnusedRedemptionCode": "",
            }
        return {"ManagedApplicationList": apps}

    def _install(self, command: Mapping[str, Any]) -> dict[str, Any]:
        identifier = command.get("Identifier")
        if not isinstance(identifier, str) or not identifier:
            if command.get("iTunesStoreID") is not None:
                identifier = f"com.simulated.store.{command['iTunesStoreID']}"
            else:
                where = str(command.get("ManifestURL", ""))
                identifier = f"com.simulated.enterprise.{_digest(where).hex()[:12]}"
        installed = self._installed()
        if self._apps is None:
            self._apps = {}
        self._apps[identifier] = installed.get(identifier, "1.0")
        if self._removed:
            self._removed.discard(identifier)
        return {"Identifier": identifier, "State": "Installing"}

    def _remove(self, command: Mapping[str, Any]) -> dict[str, Any]:
        identifier = command.get("Identifier")
        if isinstance(identifier, str):
            if self._apps and identifier in self._apps:
                del self._apps[identifier]
            if any(i == identifier for i, _ in self._profile.apps):
                if self._removed is None:
                    self._removed = set()
                self._removed.add(identifier)
        return {}

    def _device_information(self, command: Mapping[str, Any]) -> dict[str, Any]:
        queries = command.get("Queries")
        known = self._information()
        if not isinstance(queries, list):
            return {"QueryResponses": known}
        # Keys a device does not know are left out of its answer, as devices do.
        answers = {q: known[q] for q in queries if isinstance(q, str) and q in known}
        return {"QueryResponses": answers}

    def _information(self) -> dict[str, Any]:
        profile = self._profile
        capacity = float(_number(self.id, "capacity", 1, 4) * 128)
        mac = _digest("wifi", self.id)[:6].hex(":")
        info: dict[str, Any] = {
            **self._about(),
            "UDID": self.id,
            "DeviceCapacity": capacity,
            "AvailableDeviceCapacity": round(capacity * _number(self.id, "free", 10, 90) / 100, 2),
            "IsSupervised": True,
            "IsActivationLockEnabled": False,
            "IsDeviceLocatorServiceEnabled": False,
            "IsMDMLostModeEnabled": False,
            "IsCloudBackupEnabled": False,
            "WiFiMAC": mac,
            "BluetoothMAC": _digest("bluetooth", self.id)[:6].hex(":"),
            "TimeZone": "Europe/Paris",
            "PushToken": self._token(),
        }
        if profile.platform != "macos":
            info["BatteryLevel"] = _number(self.id, "battery", 20, 100) / 100
        else:
            info["IsAppleSilicon"] = True
            info["SystemIntegrityProtectionEnabled"] = True
        return info

    def _profile_list(self, command: Mapping[str, Any]) -> dict[str, Any]:
        mdm_uuid = str(uuid.UUID(bytes=_digest("mdm-profile", self.id)[:16])).upper()
        payload_uuid = str(uuid.UUID(bytes=_digest("mdm-payload", self.id)[:16])).upper()
        enrollment = {
            "HasRemovalPasscode": False,
            "IsEncrypted": False,
            "IsManaged": False,
            "PayloadContent": [
                {
                    "PayloadDisplayName": "Mobile Device Management",
                    "PayloadIdentifier": "com.mdmgate.simulate.mdm",
                    "PayloadType": "com.apple.mdm",
                    "PayloadUUID": payload_uuid,
                    "PayloadVersion": 1,
                }
            ],
            "PayloadDisplayName": "MDM enrollment",
            "PayloadIdentifier": "com.mdmgate.simulate.enrollment",
            "PayloadRemovalDisallowed": False,
            "PayloadUUID": mdm_uuid,
            "PayloadVersion": 1,
        }
        return {"ProfileList": [enrollment]}

    def _declarative(self, command: Mapping[str, Any]) -> dict[str, Any]:
        self._ddm_due = True
        return {}

    # -- declarative management

    async def _ddm_sync(self, channel: _Session) -> None:
        """Fetches what changed since the last sync and reports its status. Stays due when
        the sync does not finish (a transport error ends the session before)."""
        tokens = await self._ddm(channel, "tokens")
        sync = tokens.get("SyncTokens") if isinstance(tokens, dict) else None
        token = sync.get("DeclarationsToken") if isinstance(sync, dict) else None
        if not isinstance(token, str):
            raise _Protocol("DDM tokens without SyncTokens.DeclarationsToken")
        if token != self._ddm_token:
            manifest = await self._ddm(channel, "declaration-items")
            groups = manifest.get("Declarations") if isinstance(manifest, dict) else None
            if not isinstance(groups, dict):
                raise _Protocol("DDM declaration-items without Declarations")
            known = self._ddm_declarations or {}
            current: dict[str, str] = {}
            status: dict[str, list[dict[str, Any]]] = {}
            for group, category in _DDM_GROUPS.items():
                status[group.lower()] = []
                for item in groups.get(group) or ():
                    identifier, server_token = _ddm_item(item)
                    key = f"{category}/{identifier}"
                    if known.get(key) != server_token:
                        found = await self._ddm(channel, f"declaration/{key}")
                        if not isinstance(found, dict) or found.get("Identifier") != identifier:
                            raise _Protocol(f"DDM declaration/{key} is not that declaration")
                    current[key] = server_token
                    status[group.lower()].append(
                        {
                            "active": True,
                            "identifier": identifier,
                            "server-token": server_token,
                            "valid": "valid",
                        }
                    )
            await self._ddm(channel, "status", self._ddm_status(status))
            self._ddm_declarations = current or None
            self._ddm_token = token
        self._ddm_due = False

    async def _ddm(self, channel: _Session, endpoint: str, data: Any = None) -> Any:
        """One DeclarativeManagement check-in; its JSON answer (``None`` for an empty one)."""
        message: dict[str, Any] = {
            "Endpoint": endpoint,
            "MessageType": "DeclarativeManagement",
            "UDID": self.id,
        }
        if data is not None:
            message["Data"] = json.dumps(data, separators=(",", ":")).encode()
        reply = await channel.put(CHECKIN_PATH, _CHECKIN_TYPE, plist.dumps(message))
        if not reply.body:
            return None
        try:
            return json.loads(reply.body)
        except ValueError:
            raise _Protocol(f"DDM {endpoint} answer is not JSON") from None

    def _ddm_status(self, declarations: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        profile = self._profile
        about = self._about()
        return {
            "Errors": [],
            "FullReport": True,
            "StatusItems": {
                "device": {
                    "identifier": {"serial-number": profile.serial, "udid": self.id},
                    "model": {
                        "family": about["ModelName"],
                        "identifier": profile.model,
                        "marketing-name": about["ModelName"],
                    },
                    "operating-system": {
                        "build-version": about["BuildVersion"],
                        "family": _OS_FAMILIES.get(profile.platform, "iOS"),
                        "version": profile.os_version,
                    },
                },
                "management": {"declarations": declarations},
            },
        }


_Handler = Callable[[SimulatedAppleDevice, Mapping[str, Any]], dict[str, Any]]
_HANDLERS: dict[str, _Handler] = {
    "InstalledApplicationList": SimulatedAppleDevice._installed_list,
    "ManagedApplicationList": SimulatedAppleDevice._managed_list,
    "InstallApplication": SimulatedAppleDevice._install,
    "RemoveApplication": SimulatedAppleDevice._remove,
    "DeviceInformation": SimulatedAppleDevice._device_information,
    "ProfileList": SimulatedAppleDevice._profile_list,
    "DeclarativeManagement": SimulatedAppleDevice._declarative,
}

#: The manifest's groups and the category their declarations are fetched under.
_DDM_GROUPS = {
    "Activations": "activation",
    "Configurations": "configuration",
    "Assets": "asset",
    "Management": "management",
}


def _ddm_item(item: Any) -> tuple[str, str]:
    if isinstance(item, dict):
        identifier, token = item.get("Identifier"), item.get("ServerToken")
        if isinstance(identifier, str) and identifier and isinstance(token, str):
            return identifier, token
    raise _Protocol("a DDM manifest item without Identifier and ServerToken")


def _command(body: bytes) -> tuple[str, str, dict[str, Any]]:
    """CommandUUID, RequestType and the Command dictionary of a command plist."""
    try:
        value = plist.loads(body)
    except (PlistDecodeError, ValueError):
        raise _Protocol("the command is not a plist") from None
    command = value.get("Command") if isinstance(value, dict) else None
    command_id = value.get("CommandUUID") if isinstance(value, dict) else None
    if not isinstance(command, dict) or not isinstance(command_id, str) or not command_id:
        raise _Protocol("the command has no CommandUUID or Command")
    request_type = command.get("RequestType")
    if not isinstance(request_type, str):
        raise _Protocol("the command has no RequestType")
    return command_id, request_type, command


def _app_record(identifier: str, version: str) -> dict[str, Any]:
    """What a device reports about one installed app."""
    name = identifier.rsplit(".", 1)[-1] or identifier
    return {
        "BundleSize": _number(identifier, "bundle", 5_000_000, 400_000_000),
        "DynamicSize": _number(identifier, "dynamic", 100_000, 50_000_000),
        "ExternalVersionIdentifier": _number(
            identifier + version, "evid", 800_000_000, 900_000_000
        ),
        "HasUpdateAvailable": False,
        "Identifier": identifier,
        "Installing": False,
        "IsValidated": True,
        "Name": name[:1].upper() + name[1:],
        "ShortVersion": version,
        "Version": version,
    }
