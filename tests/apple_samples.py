"""Realistic Apple MDM messages for the tests and benchmarks.

* :data:`CHECKINS`: check-in bodies as devices send them (XML plists, written out by
  hand in the layout iOS and macOS use), one or more per MessageType;
* :func:`installed_application_list_report`: a deterministic InstalledApplicationList
  report of ``apps`` apps (about 150 KB as XML for 200 apps), also used by the plist
  benchmark;
* :func:`managed_application_list_report`, :func:`install_application_report`,
  :func:`error_report`, :func:`idle_report`: other command-channel bodies.

Plists are written with :mod:`plistlib`, an encoder independent of mdmgate's.
"""

from __future__ import annotations

import base64
import plistlib
import random
from typing import Any

UDID_IPHONE = "00008120-001A2B3C4D5E6F70"
UDID_MAC = "5B3F8D1E-2C4A-5F6B-8E7D-9A0B1C2D3E4F"
ENROLLMENT_ID = "5F0A7B3C-1D2E-4F60-8A9B-C0D1E2F3A4B5"
TOPIC = "com.apple.mgmt.External.2b1f4e02-7d0c-4a43-9e8a-0f5b1c6d4e21"
PUSH_TOKEN = bytes.fromhex("6d1f0e4c9a3b2f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706")
PUSH_MAGIC = "9B0E4C6A-3D2F-4E1B-8C7A-6F5E4D3C2B1A"

#: The JSON status report of the DeclarativeManagement status sample.
DDM_STATUS = (
    b'{"StatusItems":{"softwareupdate":{"install-state":"downloading",'
    b'"pending-version":{"os-version":"18.2","build-version":"22C152"}}},'
    b'"Errors":[]}'
)

_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" '
    '"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
    '<plist version="1.0">\n<dict>\n'
)
_TAIL = "</dict>\n</plist>\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _plist(body: str) -> bytes:
    return (_HEAD + body + _TAIL).encode()


#: Check-in bodies by a descriptive name; the MessageType is the part before the colon.
CHECKINS: dict[str, bytes] = {
    "Authenticate:ios": _plist(f"""\t<key>BuildVersion</key>
\t<string>22B83</string>
\t<key>IMEI</key>
\t<string>35 391610 123456 7</string>
\t<key>MEID</key>
\t<string>35391610123456</string>
\t<key>MessageType</key>
\t<string>Authenticate</string>
\t<key>OSVersion</key>
\t<string>18.1</string>
\t<key>ProductName</key>
\t<string>iPhone15,2</string>
\t<key>SerialNumber</key>
\t<string>F2LXK0AAPLKD</string>
\t<key>Topic</key>
\t<string>{TOPIC}</string>
\t<key>UDID</key>
\t<string>{UDID_IPHONE}</string>
"""),
    "Authenticate:macos": _plist(f"""\t<key>BuildVersion</key>
\t<string>24B83</string>
\t<key>DeviceName</key>
\t<string>Zoë\u2019s MacBook Air &amp; Co &lt;lab&gt;</string>
\t<key>MessageType</key>
\t<string>Authenticate</string>
\t<key>Model</key>
\t<string>Mac14,2</string>
\t<key>ModelName</key>
\t<string>MacBook Air</string>
\t<key>OSVersion</key>
\t<string>15.1</string>
\t<key>ProductName</key>
\t<string>Mac14,2</string>
\t<key>SerialNumber</key>
\t<string>C02FK1ABQ6L4</string>
\t<key>Topic</key>
\t<string>{TOPIC}</string>
\t<key>UDID</key>
\t<string>{UDID_MAC}</string>
"""),
    "TokenUpdate:ios": _plist(f"""\t<key>AwaitingConfiguration</key>
\t<false/>
\t<key>MessageType</key>
\t<string>TokenUpdate</string>
\t<key>PushMagic</key>
\t<string>{PUSH_MAGIC}</string>
\t<key>Token</key>
\t<data>
\t{_b64(PUSH_TOKEN)}
\t</data>
\t<key>Topic</key>
\t<string>{TOPIC}</string>
\t<key>UDID</key>
\t<string>{UDID_IPHONE}</string>
\t<key>UnlockToken</key>
\t<data>
\t{_b64(bytes(range(48)))}
\t</data>
"""),
    "TokenUpdate:macos-user": _plist(f"""\t<key>MessageType</key>
\t<string>TokenUpdate</string>
\t<key>NotOnConsole</key>
\t<false/>
\t<key>PushMagic</key>
\t<string>{PUSH_MAGIC}</string>
\t<key>Token</key>
\t<data>
\t{_b64(PUSH_TOKEN[::-1])}
\t</data>
\t<key>Topic</key>
\t<string>{TOPIC}</string>
\t<key>UDID</key>
\t<string>{UDID_MAC}</string>
\t<key>UserID</key>
\t<string>A1B2C3D4-E5F6-4789-9ABC-DEF012345678</string>
\t<key>UserLongName</key>
\t<string>Jürgen Müller</string>
\t<key>UserShortName</key>
\t<string>jmueller</string>
"""),
    "TokenUpdate:ios-user-enrollment": _plist(f"""\t<key>EnrollmentID</key>
\t<string>{ENROLLMENT_ID}</string>
\t<key>MessageType</key>
\t<string>TokenUpdate</string>
\t<key>PushMagic</key>
\t<string>{PUSH_MAGIC}</string>
\t<key>Token</key>
\t<data>
\t{_b64(PUSH_TOKEN)}
\t</data>
\t<key>Topic</key>
\t<string>{TOPIC}</string>
"""),
    "CheckOut:ios": _plist(f"""\t<key>MessageType</key>
\t<string>CheckOut</string>
\t<key>Topic</key>
\t<string>{TOPIC}</string>
\t<key>UDID</key>
\t<string>{UDID_IPHONE}</string>
"""),
    "DeclarativeManagement:tokens": _plist(f"""\t<key>Endpoint</key>
\t<string>tokens</string>
\t<key>MessageType</key>
\t<string>DeclarativeManagement</string>
\t<key>UDID</key>
\t<string>{UDID_IPHONE}</string>
"""),
    "DeclarativeManagement:status": _plist(f"""\t<key>Data</key>
\t<data>
\t{_b64(DDM_STATUS)}
\t</data>
\t<key>Endpoint</key>
\t<string>status</string>
\t<key>MessageType</key>
\t<string>DeclarativeManagement</string>
\t<key>UDID</key>
\t<string>{UDID_IPHONE}</string>
"""),
    "UserAuthenticate:macos": _plist(f"""\t<key>DigestResponse</key>
\t<string>username="jmueller", realm="mdm", nonce="a1b2", response="c3d4"</string>
\t<key>MessageType</key>
\t<string>UserAuthenticate</string>
\t<key>UDID</key>
\t<string>{UDID_MAC}</string>
\t<key>UserID</key>
\t<string>A1B2C3D4-E5F6-4789-9ABC-DEF012345678</string>
\t<key>UserLongName</key>
\t<string>Jürgen Müller</string>
\t<key>UserShortName</key>
\t<string>jmueller</string>
"""),
    "GetBootstrapToken:macos": _plist(f"""\t<key>AwaitingConfiguration</key>
\t<true/>
\t<key>MessageType</key>
\t<string>GetBootstrapToken</string>
\t<key>UDID</key>
\t<string>{UDID_MAC}</string>
"""),
    "SetBootstrapToken:macos": _plist(f"""\t<key>BootstrapToken</key>
\t<data>
\t{_b64(b"bootstrap-token-" + bytes(range(32)))}
\t</data>
\t<key>MessageType</key>
\t<string>SetBootstrapToken</string>
\t<key>UDID</key>
\t<string>{UDID_MAC}</string>
"""),
    "GetToken:ios": _plist(f"""\t<key>EnrollmentID</key>
\t<string>{ENROLLMENT_ID}</string>
\t<key>MessageType</key>
\t<string>GetToken</string>
\t<key>TokenParameters</key>
\t<dict>
\t\t<key>PhoneUDID</key>
\t\t<string>{UDID_IPHONE}</string>
\t</dict>
\t<key>TokenServiceType</key>
\t<string>com.apple.maid</string>
\t<key>UDID</key>
\t<string>{UDID_IPHONE}</string>
"""),
}

#: The platform each check-in sample comes from.
CHECKIN_PLATFORMS: dict[str, str] = {
    name: ("macos" if "macos" in name else "ios") for name in CHECKINS
}


# --- command reports ---------------------------------------------------------------------

_WORDS = [
    "mail",
    "calendar",
    "notes",
    "maps",
    "photo",
    "scan",
    "sign",
    "chat",
    "meet",
    "drive",
    "docs",
    "sheets",
    "slides",
    "pay",
    "bank",
    "travel",
    "fleet",
    "sales",
    "crm",
    "field",
    "survey",
    "pos",
    "learn",
    "badge",
    "vpn",
    "auth",
    "print",
    "wiki",
    "tasks",
    "board",
    "time",
    "expense",
    "kiosk",
    "inventory",
    "health",
    "radio",
    "news",
    "weather",
    "translate",
    "reader",
    "sync",
]
_VENDORS = (
    "com.microsoft",
    "com.google",
    "com.salesforce",
    "com.adobe",
    "jp.co.example",
    "de.beispiel",
    "com.example.enterprise",
    "net.whatsapp",
    "com.cisco",
    "com.zoom",
)
# Names that need escaping in XML or are not ASCII.
_ODD_NAMES = (
    "Café & Bar",
    "Übersicht <Pro>",
    "日本語メモ",
    "Zoë\u2019s Notes",
    "R&D ]]> Tools",
    "Ünïcödé “Quotes”",
)


def _app_version(rng: random.Random) -> tuple[str, str]:
    """(ShortVersion, Version) in the shapes seen in the wild."""
    roll = rng.random()
    major, minor, patch = rng.randrange(1, 30), rng.randrange(0, 20), rng.randrange(0, 40)
    if roll < 0.55:
        short = f"{major}.{minor}.{patch}"
        return short, str(rng.randrange(1, 99999))
    if roll < 0.70:
        short = f"{major}.{minor}"
        return short, short
    if roll < 0.78:
        short = f"{major}.{minor}.{patch}"
        return short, f"{short}.{20240000 + rng.randrange(1, 1231)}"
    if roll < 0.84:
        return f"{major}.{rng.randrange(10, 99)}", str(70200000 + rng.randrange(99999))
    if roll < 0.90:
        short = f"{major}.{minor}b{rng.randrange(1, 9)}"
        return short, short
    if roll < 0.95:
        return f"{2020 + rng.randrange(6)}.{rng.randrange(1, 13)}", str(rng.randrange(100, 999))
    return f"{major}.0.{patch}.{20181102 + rng.randrange(900)}", str(rng.randrange(1, 9999))


def installed_apps(apps: int = 200, seed: int = 4) -> list[dict[str, Any]]:
    """The app dictionaries of an iOS InstalledApplicationList (deterministic)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for index in range(apps):
        vendor = _VENDORS[index % len(_VENDORS)]
        word = _WORDS[rng.randrange(len(_WORDS))]
        identifier = f"{vendor}.{word}{index}"
        name = (
            _ODD_NAMES[index // 7 % len(_ODD_NAMES)]
            if index % 7 == 3
            else f"{word.capitalize()} {vendor.split('.')[-1].capitalize()}"
        )
        short, build = _app_version(rng)
        store = vendor != "com.example.enterprise"
        app: dict[str, Any] = {
            "AdHocCodeSigned": False,
            "AppStoreVendable": store,
            "BetaApp": rng.random() < 0.03,
            "BundleSize": rng.randrange(2_000_000, 900_000_000),
            "DeviceBasedVPP": store and rng.random() < 0.6,
            "DynamicSize": rng.randrange(100_000, 2_000_000_000),
            "HasUpdateAvailable": rng.random() < 0.2,
            "Identifier": identifier,
            "Installing": index % 25 == 24,
            "IsAppClip": False,
            "IsValidated": not store,
            "Name": name,
            "ShortVersion": short,
            "Version": build,
        }
        if store:
            app["ExternalVersionIdentifier"] = 800_000_000 + rng.randrange(100_000_000)
            app["Source"] = "AppStore"
        if index % 40 == 11:
            app["DistributorIdentifier"] = "com.apple.AppStore"
        out.append(app)
    return out


def installed_application_list_report(apps: int = 200, binary: bool = False) -> bytes:
    """An Acknowledged InstalledApplicationList report of ``apps`` apps (deterministic;
    about 150 KB as XML for 200 apps, with names that need escaping)."""
    report = {
        "CommandUUID": "2E8F0B3C-5A1D-4C6E-9F7A-8B0C1D2E3F4A",
        "InstalledApplicationList": installed_apps(apps),
        "Status": "Acknowledged",
        "UDID": UDID_IPHONE,
    }
    fmt = plistlib.FMT_BINARY if binary else plistlib.FMT_XML
    return plistlib.dumps(report, fmt=fmt)


def managed_application_list_report(binary: bool = False) -> bytes:
    """An Acknowledged ManagedApplicationList report: one app per state Apple defines,
    plus an enterprise app without ExternalVersionIdentifier."""
    states = [
        "Queued",
        "NeedsRedemption",
        "Redeeming",
        "Prompting",
        "PromptingForLogin",
        "ValidatingPurchase",
        "PromptingForUpdate",
        "PromptingForUpdateLogin",
        "PromptingForManagement",
        "ValidatingUpdate",
        "Updating",
        "Installing",
        "Managed",
        "ManagedButUninstalled",
        "Unknown",
        "UserInstalledApp",
        "UserRejected",
        "UpdateRejected",
        "ManagementRejected",
        "Failed",
    ]
    apps: dict[str, Any] = {}
    for index, state in enumerate(states):
        apps[f"com.example.app{index}"] = {
            "ExternalVersionIdentifier": 850_000_000 + index,
            "HasConfiguration": index % 2 == 0,
            "HasFeedback": False,
            "IsValidated": True,
            "ManagementFlags": 1 if index % 3 else 5,
            "Status": state,
        }
    apps["com.example.enterprise.field"] = {
        "HasConfiguration": True,
        "HasFeedback": True,
        "IsValidated": True,
        "ManagementFlags": 1,
        "Status": "Managed",
    }
    report = {
        "CommandUUID": "7C1D2E3F-4A5B-4C6D-8E9F-0A1B2C3D4E5F",
        "ManagedApplicationList": apps,
        "Status": "Acknowledged",
        "UDID": UDID_IPHONE,
    }
    return plistlib.dumps(report, fmt=plistlib.FMT_BINARY if binary else plistlib.FMT_XML)


def install_application_report(state: str = "Installing") -> bytes:
    """An Acknowledged InstallApplication report."""
    report = {
        "CommandUUID": "1A2B3C4D-5E6F-4A7B-8C9D-0E1F2A3B4C5D",
        "Identifier": "com.microsoft.Office.Outlook",
        "State": state,
        "Status": "Acknowledged",
        "UDID": UDID_IPHONE,
    }
    return plistlib.dumps(report)


def error_report() -> bytes:
    """An Error report with a two-level ErrorChain (as iOS sends for a refused
    InstallApplication)."""
    report = {
        "CommandUUID": "1A2B3C4D-5E6F-4A7B-8C9D-0E1F2A3B4C5D",
        "ErrorChain": [
            {
                "ErrorCode": 12064,
                "ErrorDomain": "MCMDMErrorDomain",
                "LocalizedDescription": "L\u2019app « Outlook » n\u2019a pas pu être installée.",
                "USEnglishDescription": "Could not install app “Outlook”.",
            },
            {
                "ErrorCode": 4,
                "ErrorDomain": "MCInstallationErrorDomain",
                "LocalizedDescription": "Licence introuvable.",
                "USEnglishDescription": "The app license could not be found.",
            },
        ],
        "RejectionReason": "CouldNotVerifyAppID",
        "Status": "Error",
        "UDID": UDID_IPHONE,
    }
    return plistlib.dumps(report)


def idle_report(enrollment_id: bool = False) -> bytes:
    """An Idle report (from a User Enrollment with ``enrollment_id``)."""
    if enrollment_id:
        return plistlib.dumps({"EnrollmentID": ENROLLMENT_ID, "Status": "Idle"})
    return plistlib.dumps({"Status": "Idle", "UDID": UDID_IPHONE})
