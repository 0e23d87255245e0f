"""The configuration tree of a simulated Windows device, built on demand from its profile.

A device keeps only what changed since enrolment (:class:`DeviceTree`: apps installed or
removed, installs under way, nodes the server wrote; nothing at all for most devices), and
every answer is generated from that and the profile when a Get asks for it. A
``?list=StructData`` inventory of megabytes is a generator of nodes the device's messages
draw from (:mod:`mdmgate.simulate.windows_inventory`), never a list.

Nodes are ``(LocURI, Format, data)``. LocURIs are kept in the ``./Vendor/MSFT/...`` form;
``./Device/Vendor/MSFT/...`` means the same node (:func:`canonical`). The app inventory
under ``EnterpriseModernAppManagement`` answers in the scope the server asked for
(``./User`` or ``./Device``), with the same apps in both.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from typing import Final, NamedTuple

from mdmgate.simulate.scenario import DeviceProfile
from mdmgate.syncml import Item

__all__ = [
    "CSP",
    "MAX_NODES",
    "App",
    "DeviceTree",
    "EmmPath",
    "Install",
    "Node",
    "apps_of",
    "as_item",
    "canonical",
    "devinfo",
    "emm_path",
    "install_nodes",
    "inventory_nodes",
    "static_nodes",
]

CSP: Final = "EnterpriseModernAppManagement"
_VENDOR: Final = "./Vendor/MSFT/"
_POLICY_RESULT: Final = "./Vendor/MSFT/Policy/Result/ApplicationManagement"
_CLASSIFICATIONS: Final = ("AppStore", "nonStore", "System")
_DEVICE_VENDOR: Final = "./Device/Vendor/MSFT/"

#: Nodes the server wrote that a device keeps: bounded, so a long soak cannot grow a device
#: without limit.
MAX_NODES: Final = 256

#: Install states of ``AppInstallation/{PFN}/Status`` (Microsoft's numbering).
INSTALLING, FAILED, INSTALLED = 1, 2, 3


class Node(NamedTuple):
    uri: str
    format: str
    data: str | bytes


class App(NamedTuple):
    """An installed package family: its version and classification (AppStore, nonStore,
    System)."""

    family: str
    version: str
    classification: str


class Install(NamedTuple):
    """Where an install under ``AppInstallation`` stands."""

    status: int
    last_error: int


class EmmPath(NamedTuple):
    """A LocURI under EnterpriseModernAppManagement: the root as the server wrote it (its
    scope prefix kept) and the segments below it."""

    root: str
    segments: tuple[str, ...]


def canonical(uri: str) -> str:
    """``./Device/Vendor/MSFT/X`` and ``./Vendor/MSFT/X`` name the same device node."""
    if uri.startswith(_DEVICE_VENDOR):
        return _VENDOR + uri[len(_DEVICE_VENDOR) :]
    return uri


def emm_path(uri: str) -> EmmPath | None:
    """The EnterpriseModernAppManagement root and segments of ``uri`` (query dropped), or
    None for another node."""
    path = uri.split("?", 1)[0].rstrip("/")
    for prefix in ("./User/Vendor/MSFT/", _DEVICE_VENDOR, _VENDOR):
        root = prefix + CSP
        if path == root or path.startswith(root + "/"):
            rest = path[len(root) + 1 :]
            return EmmPath(root, tuple(rest.split("/")) if rest else ())
    return None


# -- the device's own nodes ------------------------------------------------------------------

_MANUFACTURERS: Final = (
    ("Surface", "Microsoft Corporation"),
    ("OptiPlex", "Dell Inc."),
    ("Latitude", "Dell Inc."),
    ("XPS", "Dell Inc."),
    ("ThinkPad", "LENOVO"),
    ("ThinkCentre", "LENOVO"),
    ("EliteBook", "HP"),
    ("ProBook", "HP"),
)


def _manufacturer(model: str) -> str:
    for prefix, name in _MANUFACTURERS:
        if model.startswith(prefix):
            return name
    return "Contoso"


def devinfo(profile: DeviceProfile) -> list[tuple[str, str]]:
    """``./DevInfo`` as package 1 reports it: (name, value)."""
    return [
        ("DevId", profile.id),
        ("Man", _manufacturer(profile.model)),
        ("Mod", profile.model),
        ("DmV", "1.3"),
        ("Lang", "en-US"),
    ]


def _seed(profile: DeviceProfile) -> int:
    return zlib.crc32(profile.id.encode())


def static_nodes(profile: DeviceProfile) -> Iterator[Node]:
    """DevInfo and DevDetail, with the Microsoft extensions Windows fills in."""
    for name, value in devinfo(profile):
        yield Node(f"./DevInfo/{name}", "chr", value)
    seed = _seed(profile)
    build = profile.os_version.split(".")
    eleven = len(build) > 2 and build[2].isdigit() and int(build[2]) >= 22000
    edition = "Windows 11 Enterprise" if eleven else "Windows 10 Enterprise"
    ram_gb = (8, 16, 32)[seed % 3]
    detail = (
        ("DevTyp", "chr", "Desktop"),
        ("OEM", "chr", _manufacturer(profile.model)),
        ("FwV", "chr", f"{1 + seed % 3}.{seed % 17}.0"),
        ("SwV", "chr", profile.os_version),
        ("HwV", "chr", f"{1 + seed % 4}.0"),
        ("LrgObj", "bool", "true"),
        ("URI/MaxDepth", "int", "32"),
        ("URI/MaxTotLen", "int", "2048"),
        ("URI/MaxSegLen", "int", "255"),
        ("Ext/Microsoft/OSPlatform", "chr", edition),
        ("Ext/Microsoft/ProcessorArchitecture", "int", "9"),
        ("Ext/Microsoft/DeviceName", "chr", f"DESKTOP-{profile.serial[:7]}"),
        ("Ext/Microsoft/SMBIOSSerialNumber", "chr", profile.serial),
        ("Ext/Microsoft/TotalRAM", "int", str(ram_gb * 1024)),
        ("Ext/Microsoft/TotalStorage", "int", str((256, 512, 1024)[seed % 3] * 1024)),
        ("Ext/Microsoft/LocalTime", "chr", "2024-06-01T09:00:00.0000000+00:00"),
        ("Ext/WLANMACAddress", "chr", _mac(seed)),
    )
    for name, fmt, value in detail:
        yield Node(f"./DevDetail/{name}", fmt, value)
    yield Node("./Vendor/MSFT/DMClient/HWDevID", "chr", f"{seed:08X}{profile.serial}")
    for policy in ("AllowAllTrustedApps", "AllowDeveloperUnlock"):
        yield Node(f"{_POLICY_RESULT}/{policy}", "int", "65535")
    yield Node(f"{_POLICY_RESULT}/AllowSharedUserAppData", "int", "0")


def _mac(seed: int) -> str:
    return ":".join(f"{(seed >> shift) & 0xFF:02X}" for shift in (0, 8, 16, 24, 4, 12))


# -- apps ------------------------------------------------------------------------------------

#: Packages every Windows install carries: what pads an inventory to the profile's size.
#: (name, publisher id, classification)
_PADDING: Final = (
    ("Microsoft.VCLibs.140.00", "8wekyb3d8bbwe", "System"),
    ("Microsoft.UI.Xaml.2.8", "8wekyb3d8bbwe", "System"),
    ("Microsoft.NET.Native.Framework.2.2", "8wekyb3d8bbwe", "System"),
    ("Microsoft.NET.Native.Runtime.2.2", "8wekyb3d8bbwe", "System"),
    ("Microsoft.WindowsAppRuntime.1.5", "8wekyb3d8bbwe", "System"),
    ("Microsoft.WindowsStore", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.WindowsCalculator", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.Windows.Photos", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.WindowsNotepad", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.Paint", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.ScreenSketch", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.WindowsTerminal", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.ZuneMusic", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.GetHelp", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.BingNews", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.BingWeather", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.XboxGameOverlay", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.Windows.CloudExperienceHost", "cw5n1h2txyewy", "System"),
    ("Microsoft.Windows.ShellExperienceHost", "cw5n1h2txyewy", "System"),
    ("Microsoft.Windows.StartMenuExperienceHost", "cw5n1h2txyewy", "System"),
    ("Microsoft.AAD.BrokerPlugin", "cw5n1h2txyewy", "System"),
    ("Microsoft.AccountsControl", "cw5n1h2txyewy", "System"),
    ("Microsoft.LockApp", "cw5n1h2txyewy", "System"),
    ("Microsoft.Windows.SecHealthUI", "cw5n1h2txyewy", "System"),
    ("MicrosoftWindows.Client.WebExperience", "cw5n1h2txyewy", "System"),
    ("Microsoft.LanguageExperiencePackde-DE", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.LanguageExperiencePackfr-FR", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.LanguageExperiencePackit-IT", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.HEVCVideoExtension", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.WebpImageExtension", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.VP9VideoExtensions", "8wekyb3d8bbwe", "AppStore"),
    ("Microsoft.DesktopAppInstaller", "8wekyb3d8bbwe", "AppStore"),
)
#: Bytes one Item costs in XML besides its LocURI, Format and data (tags, metinf namespace).
ITEM_OVERHEAD: Final = 112


def apps_of(
    profile: DeviceProfile, added: Mapping[str, App] | None, removed: Iterable[str] | None
) -> list[App]:
    """The device's apps now: the profile's (as the Store keeps them, AppStore), minus the
    ones removed since, plus the ones installed since (which win over the profile's)."""
    gone = set(removed or ())
    apps = [
        App(family, version, "AppStore")
        for family, version in profile.apps
        if family not in gone and (added is None or family not in added)
    ]
    if added:
        apps.extend(added.values())
    return apps


def _padding(index: int) -> App:
    name, publisher, classification = _PADDING[index % len(_PADDING)]
    turn = index // len(_PADDING)
    if turn:
        name = f"{name}.{turn + 1}"
    version = f"{1 + index % 9}.{(index * 7) % 100}.{(index * 131) % 10000}.0"
    return App(f"{name}_{publisher}", version, classification)


def _app_nodes(base: str, app: App, seed: int) -> list[Node]:
    """The StructData of one package: its family and package nodes, then the leaves."""
    name, _, publisher_id = app.family.rpartition("_")
    framework = name.startswith(("Microsoft.VCLibs", "Microsoft.NET.", "Microsoft.UI.Xaml"))
    arch = "neutral" if app.classification == "nonStore" else "x64"
    full = f"{name}_{app.version}_{arch}__{publisher_id}"
    family_uri = f"{base}/{app.classification}/{app.family}"
    node = f"{family_uri}/{full}"
    publisher = (
        "CN=Microsoft Corporation, O=Microsoft Corporation, L=Redmond, S=Washington, C=US"
        if name.startswith("Microsoft")
        else f"CN={name.split('.')[0]}, O={name.split('.')[0]}, C=US"
    )
    day = 1 + (seed + len(name)) % 28
    return [
        Node(family_uri, "node", ""),
        Node(node, "node", ""),
        Node(f"{node}/Name", "chr", name),
        Node(f"{node}/Version", "chr", app.version),
        Node(f"{node}/Publisher", "chr", publisher),
        Node(f"{node}/Architecture", "chr", arch),
        Node(f"{node}/InstallLocation", "chr", f"C:\\Program Files\\WindowsApps\\{full}"),
        Node(f"{node}/IsFramework", "int", "1" if framework else "0"),
        Node(f"{node}/IsBundle", "int", "0"),
        Node(f"{node}/InstallDate", "chr", f"2024-05-{day:02d} 10:{seed % 60:02d}:00"),
        Node(f"{node}/ResourceID", "chr", ""),
        Node(f"{node}/PackageStatus", "int", "0"),
        Node(f"{node}/RequiresReinstall", "int", "0"),
        Node(f"{node}/Users", "chr", f"S-1-5-21-{seed}-{seed % 9973}-1001(Installed)"),
        Node(f"{node}/IsProvisioned", "int", "0"),
        Node(f"{node}/IsStub", "int", "0"),
    ]


def _size(nodes: Iterable[Node]) -> int:
    return sum(ITEM_OVERHEAD + len(n.uri) + len(n.format) + len(n.data) for n in nodes)


def inventory_nodes(
    profile: DeviceProfile, root: str, segments: tuple[str, ...], apps: list[App]
) -> Iterator[Node]:
    """``AppManagement`` under ``root`` (``segments`` = ``("AppManagement", [class, [PFN,
    [full name]]])``): the device's apps, then, for the whole inventory or a classification,
    padding packages until the whole inventory would be about ``profile.inventory_bytes``
    in XML. Which padding packages exist does not depend on the query, so a partial
    inventory agrees with the full one."""
    base = f"{root}/AppManagement"
    wanted = segments[1:]
    if wanted and wanted[0] not in _CLASSIFICATIONS:
        if wanted == ("LastScanError",):
            yield Node(f"{base}/LastScanError", "int", "0")
        return
    if not wanted:
        yield Node(base, "node", "")
        yield Node(f"{base}/LastScanError", "int", "0")
    seed = _seed(profile)
    total = 0
    for app in apps:
        nodes = _app_nodes(base, app, seed)
        total += _size(nodes)
        yield from _matching(nodes, base, wanted)
    if len(wanted) > 1:
        return  # one package family: it is a real app or nothing
    index = 0
    while total < profile.inventory_bytes:
        nodes = _app_nodes(base, _padding(index), seed)
        total += _size(nodes)
        index += 1
        yield from _matching(nodes, base, wanted)


def _matching(nodes: list[Node], base: str, wanted: tuple[str, ...]) -> Iterator[Node]:
    if not wanted:
        yield from nodes
        return
    prefix = base + "/" + "/".join(wanted)
    for node in nodes:
        if node.uri == prefix or node.uri.startswith(prefix + "/"):
            yield node


def install_nodes(root: str, family: str | None, installs: Mapping[str, Install]) -> Iterator[Node]:
    """``AppInstallation[/{PFN}]``: one subtree per install the device knows of."""
    base = f"{root}/AppInstallation"
    if family is None:
        yield Node(base, "node", "")
    for name, install in installs.items():
        if family is not None and name != family:
            continue
        node = f"{base}/{name}"
        failed = install.status == FAILED
        yield Node(node, "node", "")
        yield Node(f"{node}/Status", "int", str(install.status))
        yield Node(f"{node}/LastError", "int", str(install.last_error))
        yield Node(
            f"{node}/LastErrorDesc", "chr", "The package could not be installed." if failed else ""
        )
        yield Node(f"{node}/ProgressStatus", "int", "0" if install.status == INSTALLING else "100")


def as_item(node: Node) -> Item:
    return Item(source=node.uri, meta={"Format": node.format}, data=node.data)


class DeviceTree:
    """What changed on one device since enrolment (apps installed or removed, installs,
    nodes the server wrote; each None until something did, as on most devices) and the
    answers built from that and the profile."""

    __slots__ = ("_added", "_installs", "_nodes", "_removed", "profile")

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self._added: dict[str, App] | None = None
        self._removed: set[str] | None = None
        self._installs: dict[str, Install] | None = None
        self._nodes: dict[str, tuple[str, str | bytes]] | None = None

    def apps(self) -> list[App]:
        return apps_of(self.profile, self._added, self._removed)

    def subtree(self, uri: str) -> Iterator[Node]:
        """Every node at or below ``uri``, in tree order."""
        emm = emm_path(uri)
        if emm is not None and emm.segments[:1] == ("AppManagement",):
            return inventory_nodes(self.profile, emm.root, emm.segments, self.apps())
        if emm is not None and emm.segments[:1] == ("AppInstallation",):
            family = emm.segments[1] if len(emm.segments) > 1 else None
            return _under(install_nodes(emm.root, family, self._installs or {}), uri)
        written = self._nodes or {}
        plain = (n for n in static_nodes(self.profile) if n.uri not in written)
        own = (Node(u, f, d) for u, (f, d) in written.items())
        return _under(chain(plain, own), uri)

    def get(self, target: str) -> tuple[int, Iterator[Node] | None]:
        """A Get's status and Results: the subtree for ``?list=StructData``, else the
        node's value (an interior node's: its children's names, Format node)."""
        base, _, query = target.partition("?")
        nodes = self.subtree(base)
        first = next(nodes, None)
        if first is None:
            return 404, None
        if "list=StructData" in query:
            return 200, _as_asked(first, base, nodes)
        path = canonical(base)
        children: dict[str, None] = {}
        for node in chain((first,), nodes):
            uri = canonical(node.uri)
            if uri == path and node.format != "node":
                return 200, iter((Node(base, node.format, node.data),))
            if uri.startswith(path + "/"):
                children[uri[len(path) + 1 :].split("/")[0]] = None
        return 200, iter((Node(base, "node", "/".join(children)),))

    def add(self, items: Iterable[Item], alone: bool) -> int:
        """An Add: 418 for a node that exists (``alone``: a top-level Add, which the
        gateway retries as a Replace), else the nodes are made."""
        items = list(items)
        target = next((i.target for i in items if i.target), "")
        if emm_path(target) is not None:
            return 200  # AppInstallation/{PFN} and the like: the CSP makes the node
        if alone and next(self.subtree(target), None) is not None:
            return 418
        for item in items:
            self.write(item.target or "", item.format or "node", item.data or "")
        return 200

    def write(self, uri: str, fmt: str, data: str | bytes) -> None:
        nodes = self._nodes
        if nodes is None:
            nodes = self._nodes = {}
        uri = canonical(uri)
        nodes.pop(uri, None)
        nodes[uri] = (fmt, data)
        if len(nodes) > MAX_NODES:
            del nodes[next(iter(nodes))]

    def delete(self, target: str) -> None:
        """A Delete: an app (``AppManagement/{class}/{PFN}[/...]``) leaves the inventory,
        an install its record, a written node its subtree."""
        emm = emm_path(target)
        segments = emm.segments if emm is not None else ()
        if len(segments) >= 3 and segments[0] == "AppManagement":
            family = segments[2]
            if self._added is not None:
                self._added.pop(family, None)
            if any(f == family for f, _ in self.profile.apps):
                if self._removed is None:
                    self._removed = set()
                self._removed.add(family)
        elif len(segments) >= 2 and segments[0] == "AppInstallation":
            if self._installs is not None:
                self._installs.pop(segments[1], None)
        elif self._nodes is not None:
            uri = canonical(target)
            for node in [u for u in self._nodes if u == uri or u.startswith(uri + "/")]:
                del self._nodes[node]

    def installed(self, app: App) -> None:
        """``app`` finished installing: it is in the inventory."""
        if self._added is None:
            self._added = {}
        self._added[app.family] = app
        if self._removed is not None:
            self._removed.discard(app.family)
        self.set_install(app.family, Install(INSTALLED, 0))

    def set_install(self, family: str, state: Install) -> None:
        if self._installs is None:
            self._installs = {}
        self._installs[family] = state


def _under(nodes: Iterable[Node], uri: str) -> Iterator[Node]:
    path = canonical(uri.split("?", 1)[0].rstrip("/"))
    for node in nodes:
        uri = canonical(node.uri)
        if uri == path or uri.startswith(path + "/"):
            yield node


def _as_asked(first: Node, base: str, nodes: Iterator[Node]) -> Iterator[Node]:
    """The nodes from ``first`` on, named in the scope the server asked in (the tree keeps
    ``./Vendor/MSFT``; the server may say ``./Device/Vendor/MSFT``)."""
    asked = base.rstrip("/")
    plain = canonical(asked)
    for node in chain((first,), nodes):
        if plain != asked and node.uri.startswith(plain):
            yield Node(asked + node.uri[len(plain) :], node.format, node.data)
        else:
            yield node
