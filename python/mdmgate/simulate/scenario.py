"""What a simulated fleet is made of and how it behaves: the TOML scenario, and the device
profiles generated from it.

A scenario file has these tables, every key optional (the built-in default scenario is
all defaults: :data:`DEFAULT_SCENARIO`)::

    seed = 1                       # profiles and behaviour are reproducible from it

    [fleet]
    devices = 1000                 # 1 .. 1,000,000
    orgs = ["/simulated"]          # devices are spread evenly over these
    windows = 0.6                  # platform shares (normalised; 0 leaves one out)
    ios = 0.3
    ipados = 0.05
    macos = 0.05

    [[fleet.apps]]                 # installed apps: this share of the platform's devices
    platforms = ["windows"]        #   has the app, at these versions (shares normalised)
    identifier = "Contoso.Expenses_8wekyb3d8bbwe"
    share = 0.5
    versions = { "1.0.0.0" = 3.0, "1.1.0.0" = 1.0 }

    [rates]                        # shares, 0 .. 1
    error = 0.01                   # commands answered with an error status
    timeout = 0.005                # sessions where the device goes silent mid-session
    not_now = 0.02                 # Apple commands answered NotNow
    wbxml = 0.2                    # Windows devices speaking WBXML
    new_connection = 0.1           # devices opening a connection per message

    [cadence]                      # seconds between a device's check-ins, in device time
    windows = 28800.0              #   (8 h, what Windows schedules)
    ios = 14400.0
    ipados = 14400.0
    macos = 14400.0
    jitter = 0.1                   # each interval varies by up to this share

    [run]
    duration = 60.0                # seconds of wall-clock time
    time_factor = 1.0              # device time runs this much faster (28800: 8 h per s)
    ramp_up = 10.0                 # first check-ins spread over this many seconds
    concurrency = 500              # sessions in flight at once
    max_rate = 0.0                 # sessions started per second at most (0: no bound)
    grace = 60.0                   # after duration: how long the fleet may drain

    [windows]
    auth = "md5"                   # md5 | basic | certificate
    max_msg_size = 65536
    inventory_bytes = 0            # pad each inventory answer to about this size
    install_delay_sessions = 1     # a hosted install reports its outcome this much later

    [apple]
    auth = "signature"             # signature (Mdm-Signature) | mtls

    [workload]                     # queued through the admin API (needs a token)
    inventory_every = 0            # an inventory with every Nth Windows session (0: none)
    install_per = 0                # one app install per N devices (0: none)

    [enrollment]                   # devices enroll (MS-MDE2, profile + SCEP) at first
    enabled = false                #   check-in instead of being registered
    windows_key = "rsa"            # rsa (the size the policy asks) | ec (P-256, cheap)

Unknown keys are refused naming them, and every number is bounded.
"""

from __future__ import annotations

import random
import re
import tomllib
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "APPLE_PLATFORMS",
    "DEFAULT_SCENARIO",
    "PLATFORMS",
    "DeviceProfile",
    "Scenario",
    "ScenarioError",
    "build_profiles",
    "load_scenario",
    "parse_scenario",
]

Platform = Literal["windows", "ios", "ipados", "macos"]
PLATFORMS: tuple[str, ...] = ("windows", "ios", "ipados", "macos")
APPLE_PLATFORMS: frozenset[str] = frozenset(("ios", "ipados", "macos"))
MAX_DEVICES = 1_000_000


class ScenarioError(Exception):
    """A scenario that cannot be run; the text names the key and the problem."""


class DeviceProfile(msgspec.Struct, frozen=True, gc=False):
    """One simulated device, as the scenario made it. Platform-specific fields are ignored
    by the other platform."""

    id: str
    platform: str
    org: str
    os_version: str
    model: str
    serial: str
    apps: tuple[tuple[str, str], ...]
    inventory_bytes: int = 0
    wbxml: bool = False
    new_connection: bool = False
    auth: str = "md5"
    username: str = ""
    secret: str = ""
    max_msg_size: int = 65536
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    not_now_rate: float = 0.0
    install_delay_sessions: int = 1


# --- the scenario ------------------------------------------------------------------------

Share = Annotated[float, Meta(ge=0.0, le=1.0)]
Weight = Annotated[float, Meta(ge=0.0, le=1e6)]
Seconds = Annotated[float, Meta(ge=1.0, le=365 * 86400.0)]
_ORG = r"^/(?:[^/\x00-\x1f]+(?:/[^/\x00-\x1f]+)*)?$"
OrgPath = Annotated[str, Meta(pattern=_ORG, max_length=256)]


class _Table(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class AppSpec(_Table, frozen=True, kw_only=True):
    """An app some devices have installed."""

    platforms: Annotated[list[Platform], Meta(min_length=1, max_length=4)]
    identifier: Annotated[str, Meta(min_length=1, max_length=256)]
    share: Share = 1.0
    versions: Annotated[
        dict[Annotated[str, Meta(min_length=1, max_length=128)], Weight],
        Meta(min_length=1, max_length=64),
    ]


def _default_apps() -> list[AppSpec]:
    return [
        AppSpec(
            platforms=["windows"],
            identifier="Microsoft.CompanyPortal_8wekyb3d8bbwe",
            share=0.8,
            versions={"11.2.179.0": 3.0, "11.2.204.0": 1.0},
        ),
        AppSpec(
            platforms=["ios", "ipados"],
            identifier="com.microsoft.Office.Outlook",
            share=0.7,
            versions={"4.2411.0": 1.0, "4.2420.0": 2.0},
        ),
        AppSpec(
            platforms=["macos"],
            identifier="com.microsoft.teams2",
            share=0.6,
            versions={"24295.605.3225.8804": 1.0},
        ),
    ]


class Fleet(_Table, frozen=True):
    devices: Annotated[int, Meta(ge=1, le=MAX_DEVICES)] = 1000
    orgs: Annotated[list[OrgPath], Meta(min_length=1, max_length=10_000)] = msgspec.field(
        default_factory=lambda: ["/simulated"]
    )
    windows: Weight = 0.6
    ios: Weight = 0.3
    ipados: Weight = 0.05
    macos: Weight = 0.05
    apps: Annotated[list[AppSpec], Meta(max_length=1000)] = msgspec.field(
        default_factory=_default_apps
    )


class Rates(_Table, frozen=True):
    error: Share = 0.0
    timeout: Share = 0.0
    not_now: Share = 0.0
    wbxml: Share = 0.0
    new_connection: Share = 0.0


class Cadence(_Table, frozen=True):
    windows: Seconds = 8 * 3600.0
    ios: Seconds = 4 * 3600.0
    ipados: Seconds = 4 * 3600.0
    macos: Seconds = 4 * 3600.0
    jitter: Annotated[float, Meta(ge=0.0, le=0.9)] = 0.1

    def of(self, platform: str) -> float:
        value: float = getattr(self, platform)
        return value


class Run(_Table, frozen=True):
    duration: Annotated[float, Meta(ge=1.0, le=30 * 86400.0)] = 60.0
    time_factor: Annotated[float, Meta(ge=0.001, le=1e7)] = 1.0
    ramp_up: Annotated[float, Meta(ge=0.0, le=86400.0)] = 10.0
    concurrency: Annotated[int, Meta(ge=1, le=100_000)] = 500
    max_rate: Annotated[float, Meta(ge=0.0, le=1e6)] = 0.0
    grace: Annotated[float, Meta(ge=0.0, le=86400.0)] = 60.0


class Windows(_Table, frozen=True):
    auth: Literal["md5", "basic", "certificate"] = "md5"
    max_msg_size: Annotated[int, Meta(ge=4096, le=16 * 1024 * 1024)] = 65536
    inventory_bytes: Annotated[int, Meta(ge=0, le=8 * 1024 * 1024)] = 0
    install_delay_sessions: Annotated[int, Meta(ge=0, le=100)] = 1


class Apple(_Table, frozen=True):
    auth: Literal["signature", "mtls"] = "signature"


class Workload(_Table, frozen=True):
    inventory_every: Annotated[int, Meta(ge=0, le=10_000)] = 0
    install_per: Annotated[int, Meta(ge=0, le=MAX_DEVICES)] = 0
    windows_package_family: Annotated[str, Meta(pattern=r"^[^_\s]{1,200}_[a-z0-9]{13}$")] = (
        "Contoso.Simulated_8wekyb3d8bbwe"
    )
    windows_package_uri: Annotated[str, Meta(pattern=r"^https://\S{1,2000}$")] = (
        "https://apps.example.com/Contoso.Simulated.msix"
    )
    apple_itunes_store_id: Annotated[int, Meta(ge=1, le=2**53)] = 310633997


class Enrollment(_Table, frozen=True):
    enabled: bool = False
    windows_key: Literal["rsa", "ec"] = "rsa"


class Scenario(_Table, frozen=True):
    seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 1
    fleet: Fleet = msgspec.field(default_factory=Fleet)
    rates: Rates = msgspec.field(default_factory=Rates)
    cadence: Cadence = msgspec.field(default_factory=Cadence)
    run: Run = msgspec.field(default_factory=Run)
    windows: Windows = msgspec.field(default_factory=Windows)
    apple: Apple = msgspec.field(default_factory=Apple)
    workload: Workload = msgspec.field(default_factory=Workload)
    enrollment: Enrollment = msgspec.field(default_factory=Enrollment)

    def shares(self) -> dict[str, float]:
        """Each platform's share of the fleet, normalised."""
        fleet = self.fleet
        weights = {p: float(getattr(fleet, p)) for p in PLATFORMS}
        total = sum(weights.values())
        return {p: w / total for p, w in weights.items()}


DEFAULT_SCENARIO = Scenario()

_AT = re.compile(r"^(.*?)\s*-\s*at\s*(`key` in )?`\$((?:[.\[][^`]*)?)`$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`$")


def _key(path: str) -> str:
    # msgspec paths look like `$.fleet.apps[0].share`; a scenario's reader knows keys.
    return path.removeprefix(".")


def _explain(error: msgspec.ValidationError) -> str:
    text = str(error)
    match = _AT.match(text)
    message, where = (match[1], _key(match[3])) if match else (text, "")
    if match and match[2]:
        message = f"a key: {message[0].lower()}{message[1:]}"
    unknown = _UNKNOWN.match(message)
    if unknown:
        name = f"{where}.{unknown[1]}" if where else unknown[1]
        return f"unknown key {name!r}"
    message = message[0].lower() + message[1:] if message else message
    return f"{where}: {message}" if where else message


def _check(scenario: Scenario) -> Scenario:
    if _total_weight(scenario) <= 0:
        raise ScenarioError("fleet: at least one platform needs a share above 0")
    for index, app in enumerate(scenario.fleet.apps):
        if sum(app.versions.values()) <= 0:
            raise ScenarioError(f"fleet.apps[{index}].versions: at least one share above 0")
    return scenario


def _total_weight(scenario: Scenario) -> float:
    return sum(float(getattr(scenario.fleet, p)) for p in PLATFORMS)


def parse_scenario(data: dict[str, Any]) -> Scenario:
    """A scenario from its decoded TOML; :class:`ScenarioError` names the first problem."""
    try:
        scenario = msgspec.convert(data, Scenario, strict=True)
    except msgspec.ValidationError as e:
        raise ScenarioError(_explain(e)) from None
    return _check(scenario)


def load_scenario(path: str) -> Scenario:
    """A scenario from a TOML file; :class:`ScenarioError` names the file and the problem."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ScenarioError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not TOML: {e}") from None
    try:
        return parse_scenario(data)
    except ScenarioError as e:
        raise ScenarioError(f"{path}: {e}") from None


def with_overrides(scenario: Scenario, overrides: dict[str, Any]) -> Scenario:
    """The scenario with some keys replaced (``{"run.duration": 30.0, "seed": 7}``), checked
    like a file's keys."""
    data = msgspec.to_builtins(scenario)
    for dotted, value in overrides.items():
        *tables, key = dotted.split(".")
        place = data
        for table in tables:
            place = place.setdefault(table, {})
        place[key] = value
    return parse_scenario(data)


# --- profiles ----------------------------------------------------------------------------

_OS_VERSIONS: dict[str, tuple[str, ...]] = {
    "windows": ("10.0.19045.4291", "10.0.22631.3447", "10.0.26100.1742"),
    "ios": ("16.7.8", "17.5.1", "18.0.1"),
    "ipados": ("17.5.1", "18.0.1"),
    "macos": ("13.6.7", "14.5", "15.0.1"),
}
_MODELS: dict[str, tuple[str, ...]] = {
    "windows": ("Surface Laptop 5", "OptiPlex 7010", "ThinkPad T14 Gen 3"),
    "ios": ("iPhone14,2", "iPhone15,3", "iPhone16,1"),
    "ipados": ("iPad13,18", "iPad14,3"),
    "macos": ("Mac14,2", "Mac15,6"),
}
_SERIAL_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_ID_PREFIX = {"windows": "W", "ios": "I", "ipados": "P", "macos": "M"}


def _cumulative(weights: list[float]) -> list[float]:
    total = sum(weights)
    out, running = [], 0.0
    for weight in weights:
        running += weight / total
        out.append(running)
    out[-1] = 1.0
    return out


def _pick(cumulative: list[float], roll: float) -> int:
    for index, bound in enumerate(cumulative):
        if roll < bound:
            return index
    return len(cumulative) - 1


def device_id(seed: int, platform: str, index: int) -> str:
    """The id of fleet member ``index``: fixed by the seed, so a rerun with the same seed
    is the same fleet (use another seed against a database that saw it)."""
    return f"SIM{seed % 0x1000000:06X}-{_ID_PREFIX[platform]}{index:07d}"


def build_profiles(scenario: Scenario, devices: int | None = None) -> Iterator[DeviceProfile]:
    """The fleet's profiles, in index order, generated from the scenario's seed."""
    count = scenario.fleet.devices if devices is None else devices
    rng = random.Random(scenario.seed)
    shares = scenario.shares()
    platform_cum = _cumulative([shares[p] for p in PLATFORMS])
    orgs = scenario.fleet.orgs
    rates, windows, apple = scenario.rates, scenario.windows, scenario.apple
    apps_by_platform: dict[str, list[tuple[str, float, list[str], list[float]]]] = {
        p: [] for p in PLATFORMS
    }
    for spec in scenario.fleet.apps:
        versions = [v for v, w in spec.versions.items() if w > 0]
        cum = _cumulative([w for w in spec.versions.values() if w > 0])
        for name in dict.fromkeys(spec.platforms):
            apps_by_platform[name].append((spec.identifier, spec.share, versions, cum))
    random_ = rng.random
    for index in range(count):
        platform = PLATFORMS[_pick(platform_cum, random_())]
        os_versions, models = _OS_VERSIONS[platform], _MODELS[platform]
        installed = tuple(
            (identifier, versions[_pick(cum, random_())])
            for identifier, share, versions, cum in apps_by_platform[platform]
            if random_() < share
        )
        serial = "".join(rng.choices(_SERIAL_ALPHABET, k=12))
        is_windows = platform == "windows"
        yield DeviceProfile(
            id=device_id(scenario.seed, platform, index),
            platform=platform,
            org=orgs[index % len(orgs)],
            os_version=os_versions[int(random_() * len(os_versions))],
            model=models[int(random_() * len(models))],
            serial=serial,
            apps=installed,
            inventory_bytes=windows.inventory_bytes if is_windows else 0,
            wbxml=is_windows and random_() < rates.wbxml,
            new_connection=random_() < rates.new_connection,
            auth=windows.auth if is_windows else apple.auth,
            username=f"sim{index:07d}" if is_windows else "",
            secret=f"{rng.getrandbits(96):024x}" if is_windows else "",
            max_msg_size=windows.max_msg_size,
            error_rate=rates.error,
            timeout_rate=rates.timeout,
            not_now_rate=0.0 if is_windows else rates.not_now,
            install_delay_sessions=windows.install_delay_sessions,
        )
