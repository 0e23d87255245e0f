"""Fleet targeting: which devices get which version of an app, and why not the others.

A :class:`FleetIndex` holds one row per device (its id, org number, platform and whether
it is supervised) and, per app, the version each device reports installed. A query
(:meth:`FleetIndex.target`) decides for every device an :class:`Outcome`; the decision
runs in the compiled core, detached from the interpreter for large fleets.

Organisations are numbered in a pre-order walk of the org tree (:class:`OrgTree`), so an
organisation and everything under it is one range ``[first, last]`` of numbers.

>>> tree = OrgTree(["/acme/sales/tokyo", "/acme/hr", "/other"])
>>> tree.range("/acme") == (tree.number("/acme"), tree.number("/acme/sales/tokyo"))
True
"""

from __future__ import annotations

import array
import enum
from collections.abc import Iterable, Sequence

from mdmgate import _core
from mdmgate.errors import InvalidVersion, MdmgateError, UnknownPlatform
from mdmgate.versions import PLATFORMS
from mdmgate.versions import allows_downgrade as _allows_downgrade

__all__ = [
    "PLATFORM_CODES",
    "FleetError",
    "FleetIndex",
    "InvalidVersion",
    "OrgTree",
    "Outcome",
    "Scope",
    "TargetResult",
    "UnknownApp",
    "UnknownPlatform",
    "platform_code",
]


class FleetError(MdmgateError, ValueError):
    """Fleet columns or a query the index cannot accept (mismatched column lengths, a
    device number out of range, an unknown platform code, an empty org range, a rollout
    percent outside 0..100, or a version platform other than the app's)."""


class UnknownApp(FleetError):
    """A query or update for an app whose installed versions were never set."""


class Outcome(enum.IntEnum):
    """What the query decided for one device (the codes of ``TargetResult.outcomes``)."""

    INSTALL = 0
    UPGRADE = 1
    SKIP_SAME = 2
    SKIP_NEWER = 3
    DOWNGRADE = 4
    SKIP_NOT_INSTALLED = 5
    SKIP_PLATFORM = 6
    SKIP_NO_LICENCE = 7
    SKIP_ROLLOUT = 8
    OUT_OF_SCOPE = 9
    #: A take-over query: the user's own copy, taken under management (it is sent).
    TAKE_OVER = 10
    #: A take-over query: the user's own copy, on a device that cannot take it over.
    SKIP_TAKE_OVER_UNSUPPORTED = 11

    @property
    def sends(self) -> bool:
        """Whether a device with this outcome is sent the version."""
        return self in (Outcome.INSTALL, Outcome.UPGRADE, Outcome.DOWNGRADE, Outcome.TAKE_OVER)


if [o.name.lower() for o in Outcome] != _core.fleet_outcome_names():  # pragma: no cover
    raise ImportError("mdmgate.fleet.Outcome does not match the compiled core")

#: Device platform codes for :class:`FleetIndex` columns, by platform name.
PLATFORM_CODES: dict[str, int] = {name: code for code, name in enumerate(PLATFORMS)}


def platform_code(name: str) -> int:
    """The device platform code of ``name`` (``ipados`` is ``ios``)."""
    code = PLATFORM_CODES.get("ios" if name == "ipados" else name)
    if code is None:
        raise UnknownPlatform(f"unknown platform {name!r}; expected one of {', '.join(PLATFORMS)}")
    return code


def _numbers(data: bytes) -> array.array[int]:
    # An array, not a list: a million selected devices cost one copy, not a million ints.
    numbers = array.array("I")
    numbers.frombytes(data)
    return numbers


if array.array("I").itemsize != 4:  # pragma: no cover
    raise ImportError("mdmgate.fleet needs a 4-byte C unsigned int")


class TargetResult:
    """The answer of :meth:`FleetIndex.target`."""

    __slots__ = ("_ids", "_inner")

    def __init__(self, inner: _core.TargetResult, ids: _core.FleetIndex) -> None:
        self._inner = inner
        self._ids = ids

    def __len__(self) -> int:
        return len(self._inner)

    @property
    def outcomes(self) -> bytes:
        """Per device, its :class:`Outcome` code (one byte each)."""
        return self._inner.outcomes

    def outcome(self, device: int) -> Outcome:
        """The outcome of one device."""
        return Outcome(self._inner.outcomes[device])

    @property
    def selected(self) -> array.array[int]:
        """Devices sent the version, in device order."""
        return _numbers(self._inner.selected)

    @property
    def selected_ids(self) -> list[str]:
        """Ids of the devices sent the version, in device order."""
        return self._ids.device_ids(list(self.selected))

    @property
    def silent(self) -> bytes:
        """Per selected device, 1 if it installs silently, 0 if the user is prompted and
        may decline (see the ``silent`` column of :class:`FleetIndex`)."""
        return self._inner.silent

    @property
    def licensed(self) -> array.array[int]:
        """Selected devices that take a licence (they held none), in device order."""
        return _numbers(self._inner.licensed)

    @property
    def counts(self) -> dict[Outcome, int]:
        """Devices per outcome."""
        return dict(zip(Outcome, self._inner.counts, strict=True))


#: A set of device numbers of one :class:`FleetIndex` (``|`` union, ``-`` difference,
#: ``len``, ``in``, ``devices()``), from :meth:`FleetIndex.scope`.
Scope = _core.Scope


class FleetIndex:
    """Columns of a device fleet, one row per device, and its per-app installed versions
    and licence holders.

    ``org_ids`` are org numbers from :class:`OrgTree`; ``platforms`` are codes from
    :data:`PLATFORM_CODES`; ``supervised`` is 0 (no), 1 (yes) or 2 (unknown); ``silent``
    is 1 for a device that installs an app without asking its user (default: the
    supervised ones); ``take_over`` is 1 for a device that can take an app its user
    installed under management (default: none). The integer columns may be lists or
    ``bytes``. A query and an update must not run at the same time from two threads (the
    second gets ``RuntimeError``).
    """

    __slots__ = ("_inner",)

    def __init__(
        self,
        ids: Sequence[str],
        org_ids: Sequence[int],
        platforms: Sequence[int],
        supervised: Sequence[int],
        silent: Sequence[int] | None = None,
        *,
        take_over: Sequence[int] | None = None,
    ) -> None:
        self._inner = _core.FleetIndex(ids, org_ids, platforms, supervised, silent)
        if take_over is not None:
            self._inner.set_take_over(take_over)

    def push_device(
        self,
        device_id: str,
        org: int,
        platform: int,
        supervised: int,
        silent: bool,
        *,
        take_over: bool = False,
    ) -> int:
        """Adds a device (no apps, no licences) and returns its number."""
        number = self._inner.push_device(device_id, org, platform, supervised, silent)
        if take_over:
            self._inner.set_device_take_over(number, True)
        return number

    def set_device(
        self,
        device: int,
        org: int,
        platform: int,
        supervised: int,
        silent: bool,
        *,
        take_over: bool = False,
    ) -> None:
        """Changes a device's columns (it moved org, was enrolled again, updated its OS)."""
        self._inner.set_device(device, org, platform, supervised, silent)
        self._inner.set_device_take_over(device, take_over)

    def can_take_over(self, device: int) -> bool:
        """Whether the device can take an app its user installed under management."""
        return self._inner.can_take_over(device)

    def set_user_installed(self, app: int, devices: Sequence[int]) -> None:
        """Replaces the devices whose copy of ``app`` their user installed (unmanaged)."""
        self._inner.set_user_installed(app, list(devices))

    def update_user_installed(self, app: int, device: int, user: bool) -> None:
        """One device's copy of ``app`` is (or is no longer) its user's own."""
        self._inner.update_user_installed(app, device, user)

    def is_user_installed(self, app: int, device: int) -> bool:
        return self._inner.is_user_installed(app, device)

    def scope(
        self, org_ranges: Sequence[tuple[int, int]] = (), devices: Sequence[int] = ()
    ) -> Scope:
        """The devices in any of the org ranges, or listed."""
        return self._inner.scope(list(org_ranges), list(devices))

    def set_licensed(self, app: int, devices: Sequence[int]) -> None:
        """Replaces the devices holding a licence of ``app``."""
        self._inner.set_licensed(app, list(devices))

    def update_licensed(self, app: int, device: int, held: bool) -> None:
        """One device took or gave back a licence of ``app``."""
        self._inner.update_licensed(app, device, held)

    def is_licensed(self, app: int, device: int) -> bool:
        return self._inner.is_licensed(app, device)

    def __len__(self) -> int:
        return len(self._inner)

    def memory_bytes(self) -> int:
        """Bytes held for the devices and apps (without allocator slack)."""
        return self._inner.memory_bytes()

    def device_id(self, device: int) -> str:
        """The id of device number ``device``."""
        return self._inner.device_id(device)

    def set_installed(
        self, app: int, devices: Sequence[int], versions: Iterable[str], *, platform: str
    ) -> None:
        """Replace what is known of ``app``: ``versions[k]`` is installed on
        ``devices[k]`` and no other device has it. Versions are read by ``platform``'s
        rules (see :mod:`mdmgate.versions`); a bad one raises :class:`InvalidVersion`."""
        self._inner.set_installed(app, list(devices), versions, platform)

    def update_installed(self, app: int, device: int, version: str | None) -> None:
        """One device reported ``version`` of ``app`` (``None``: it was removed)."""
        self._inner.update_installed(app, device, version)

    def installed_key(self, app: int, device: int) -> bytes | None:
        """The sort key of the version of ``app`` on ``device``, if installed."""
        return self._inner.installed_key(app, device)

    def target(
        self,
        app: int,
        *,
        version: str,
        version_platform: str,
        org_range: tuple[int, int] | None = None,
        scope: Scope | None = None,
        installed_only: bool = False,
        platform: int | None = None,
        allow_downgrade: bool | None = None,
        licences: int | None = None,
        percent: float | None = None,
        seed: str = "",
        take_over: bool = False,
    ) -> TargetResult:
        """Decide for every device whether it is sent ``version`` of ``app``.

        In order: a device outside ``org_range`` or ``scope`` is ``OUT_OF_SCOPE``; one of another
        ``platform`` code is ``SKIP_PLATFORM``; then its installed version is compared with
        ``version`` (``INSTALL``/``SKIP_NOT_INSTALLED``, ``UPGRADE``, ``SKIP_SAME``,
        ``DOWNGRADE``/``SKIP_NEWER``). A device that would be sent the version is held back
        if it falls outside the ``percent`` rollout (a stable hash of its id and ``seed``:
        ``SKIP_ROLLOUT``), and then, unless it holds a licence of the app, once the
        ``licences`` free are taken by earlier devices (``SKIP_NO_LICENCE``); ``None`` means
        the app needs no licence. ``allow_downgrade`` defaults to the platform's rule.

        With ``take_over``, a copy its user installed (:meth:`set_user_installed`) that
        would be updated, left as it is or downgraded is ``TAKE_OVER`` on a device that can
        take it over (the ``take_over`` column) and ``SKIP_TAKE_OVER_UNSUPPORTED`` on one
        that cannot; one above the version that may not go back stays ``SKIP_NEWER``.
        ``TAKE_OVER`` is then held back by the rollout and the licences like a send.
        """
        if allow_downgrade is None:
            allow_downgrade = _allows_downgrade(version_platform)
        inner = self._inner.target(
            app,
            version=version,
            version_platform=version_platform,
            org_range=org_range,
            scope=scope,
            installed_only=installed_only,
            platform=platform,
            allow_downgrade=allow_downgrade,
            licences=licences,
            percent=percent,
            seed=seed,
            take_over=take_over,
        )
        return TargetResult(inner, self._inner)


def _parts(path: str) -> tuple[str, ...]:
    # No strip: a name may end in a space-like character (the API refuses it at either end,
    # but stored paths are kept as they are, and two paths must never fold into one).
    return tuple(p for p in path.split("/") if p)


class OrgTree:
    """An org tree numbered in pre-order (children in name order), so that every
    organisation's subtree is a contiguous range of numbers. The root ``/`` is number 0;
    ancestors of the given paths are added."""

    __slots__ = ("_last", "_number", "_paths")

    def __init__(self, paths: Iterable[str]) -> None:
        nodes: set[tuple[str, ...]] = {()}
        for path in paths:
            parts = _parts(path)
            for depth in range(1, len(parts) + 1):
                nodes.add(parts[:depth])
        # Lexicographic order of part tuples is a pre-order walk.
        self._paths = sorted(nodes)
        self._number = {node: i for i, node in enumerate(self._paths)}
        self._last = list(range(len(self._paths)))
        for i, node in enumerate(self._paths):
            for depth in range(len(node)):
                ancestor = self._number[node[:depth]]
                self._last[ancestor] = max(self._last[ancestor], i)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and _parts(path) in self._number

    def number(self, path: str) -> int:
        """The number of an organisation; ``KeyError`` for one not in the tree."""
        parts = _parts(path)
        if parts not in self._number:
            raise KeyError(f"no organisation {path!r}")
        return self._number[parts]

    def numbers(self, paths: Iterable[str]) -> list[int]:
        """Numbers of many organisations (a device column)."""
        return [self.number(p) for p in paths]

    def range(self, path: str) -> tuple[int, int]:
        """``(first, last)``: the organisation and everything under it."""
        first = self.number(path)
        return first, self._last[first]

    def path(self, number: int) -> str:
        """The path of an organisation number."""
        return "/" + "/".join(self._paths[number])
