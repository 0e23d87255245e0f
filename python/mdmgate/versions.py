"""App version ordering per platform, and the version set of one app.

The order of each platform is written down in ``docs/versions.md``. In short:

* ``android``: ``versionCode``, one integer 0..2147483647.
* ``ios`` (also ``ipados``) and ``macos``: dotted integers, missing parts are 0, leading
  zeros ignored; the last part may carry a development stage ``d`` < ``a`` < ``b`` <
  ``fc`` < release (``1.2b3`` comes before ``1.2``).
* ``windows`` and ``windows-phone``: up to four parts 0..65535, only the first three count.
* ``generic``: runs of digits and letters; a letter run marks a pre-release.

Every version maps to a *sort key* (bytes) whose plain order is the version order, so
keys can be stored in a database column and ordered there too.

>>> compare("1.2b3", "1.2", platform="ios")
-1
>>> sort(["10", "9", "100"], platform="android")
['9', '10', '100']
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from mdmgate import _core
from mdmgate.errors import DuplicateVersion, InvalidVersion, UnknownPlatform

__all__ = [
    "MAX_VERSION_LEN",
    "PLATFORMS",
    "AppVersion",
    "DuplicateVersion",
    "InstallAction",
    "InstallPlan",
    "InvalidVersion",
    "UnknownPlatform",
    "Upload",
    "VersionSet",
    "allows_downgrade",
    "argsort",
    "compare",
    "compare_many",
    "max_per_group",
    "plan_install",
    "plan_installs",
    "sort",
    "sort_key",
    "sort_keys",
]

#: The platform names version rules exist for (``ipados`` is also accepted, as ``ios``).
PLATFORMS: tuple[str, ...] = tuple(_core.version_platforms())
#: Longest accepted version string, in bytes.
MAX_VERSION_LEN: int = _core.MAX_VERSION_LEN


def _as_list(values: Iterable[str]) -> list[str]:
    return values if isinstance(values, list) else list(values)


def allows_downgrade(platform: str) -> bool:
    """Whether devices of ``platform`` install a lower version over a higher one."""
    return _core.version_allows_downgrade(platform)


def compare(a: str, b: str, *, platform: str) -> int:
    """-1, 0 or 1 as ``a`` is lower than, equal to or higher than ``b``."""
    return _core.version_compare(a, b, platform)


def sort_key(version: str, *, platform: str) -> bytes:
    """Bytes whose plain ordering is the version ordering of ``platform``."""
    return _core.version_sort_key(version, platform)


def sort_keys(versions: Iterable[str], *, platform: str) -> list[bytes]:
    """Sort keys of a whole column in one call."""
    return _core.version_sort_keys(_as_list(versions), platform)


def sort(versions: Iterable[str], *, platform: str, reverse: bool = False) -> list[str]:
    """The versions in ascending order (descending with ``reverse``).

    The sort is stable: versions that order equal (``1.0`` and ``1.0.0``) keep their
    input order, also when reversed, like :func:`sorted`.
    """
    return _core.version_sort(_as_list(versions), platform, reverse)


def argsort(versions: Iterable[str], *, platform: str, reverse: bool = False) -> list[int]:
    """Positions of ``versions`` in the order :func:`sort` would return them."""
    return _core.version_argsort(_as_list(versions), platform, reverse)


def compare_many(a: Iterable[str], b: Iterable[str], *, platform: str) -> list[int]:
    """``compare(a[i], b[i])`` for every row of two equally long columns."""
    return _core.version_compare_many(_as_list(a), _as_list(b), platform)


def max_per_group(
    groups: Iterable[str], versions: Iterable[str], *, platform: str
) -> dict[str, int]:
    """For each distinct group label, the row index of its highest version.

    Among equal highest versions the first row wins; the dict is in order of each
    group's first appearance.
    """
    return _core.version_max_per_group(_as_list(groups), _as_list(versions), platform)


class InstallAction(enum.StrEnum):
    """What the gateway does for one device and one app."""

    NOTHING_ASSIGNED = "nothing_assigned"
    INSTALL = "install"
    UPGRADE = "upgrade"
    CURRENT = "current"
    DOWNGRADE = "downgrade"
    DOWNGRADE_REFUSED = "downgrade_refused"

    @property
    def sends_command(self) -> bool:
        """Whether this action means sending the device an install command."""
        return self in (InstallAction.INSTALL, InstallAction.UPGRADE, InstallAction.DOWNGRADE)


_ACTIONS: tuple[InstallAction, ...] = tuple(InstallAction(n) for n in _core.install_action_names())


class InstallPlan(NamedTuple):
    """The decision for one device: the action, and the version it concerns."""

    action: InstallAction
    version: str | None


def plan_installs(
    assigned: Sequence[str], installed: Iterable[str | None], *, platform: str
) -> list[InstallPlan]:
    """For every device's installed version (``None``: app not installed), which of the
    ``assigned`` active versions to send.

    The highest assigned version is the only candidate: a device that cannot accept it
    (a refused downgrade) cannot accept a lower one either.
    """
    assigned = _as_list(assigned)
    codes, targets = _core.version_plan_installs(assigned, list(installed), platform)
    return [
        InstallPlan(_ACTIONS[code], assigned[target] if target >= 0 else None)
        for code, target in zip(codes, targets, strict=True)
    ]


def plan_install(assigned: Sequence[str], installed: str | None, *, platform: str) -> InstallPlan:
    """:func:`plan_installs` for one device."""
    return plan_installs(assigned, [installed], platform=platform)[0]


@dataclass(frozen=True)
class AppVersion:
    """One uploaded version of an app.

    ``file_version`` is the developer's version from the package (it decides ordering
    and deployment); ``label`` is the console's own managed version; retired versions
    are kept for the record but never deployed.
    """

    file_version: str
    label: str
    active: bool = True


@dataclass(frozen=True)
class Upload:
    """The outcome of adding a version to an app."""

    #: The app's versions afterwards (including any retirements).
    versions: VersionSet
    new: AppVersion
    #: The highest active version afterwards: what newly assigned devices get.
    latest: AppVersion
    #: Active versions below the new one: their assignments move to ``new``.
    previous: tuple[AppVersion, ...]
    #: What "retire previous version" retired (empty unless it was asked for).
    retired: tuple[AppVersion, ...]

    @property
    def lower_than_latest(self) -> bool:
        """True when the new version is not the highest: devices holding a higher one
        will not take it on platforms without downgrades."""
        return self.new != self.latest


class VersionSet:
    """The uploaded versions of one app on one platform, kept in version order.

    Immutable: :meth:`upload` and :meth:`retire` return new sets.
    """

    __slots__ = ("_keys", "platform", "versions")

    platform: str
    versions: tuple[AppVersion, ...]
    _keys: tuple[bytes, ...]

    def __init__(self, platform: str, versions: Iterable[AppVersion] = ()) -> None:
        items = list(versions)
        keys = sort_keys([v.file_version for v in items], platform=platform)
        order = sorted(range(len(items)), key=keys.__getitem__)
        for earlier, later in itertools.pairwise(order):
            if keys[earlier] == keys[later]:
                raise DuplicateVersion(
                    f"{platform} file version {items[later].file_version!r} orders equal to "
                    f"{items[earlier].file_version!r} (label {items[earlier].label!r})"
                )
        labels = [v.label for v in items]
        if len(set(labels)) != len(labels):
            dup = next(label for label in labels if labels.count(label) > 1)
            raise DuplicateVersion(f"two versions carry the label {dup!r}")
        self.platform = platform
        self.versions = tuple(items[i] for i in order)
        self._keys = tuple(keys[i] for i in order)

    def __repr__(self) -> str:
        return f"VersionSet({self.platform!r}, {list(self.versions)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionSet):
            return NotImplemented
        return (self.platform, self.versions) == (other.platform, other.versions)

    def __hash__(self) -> int:
        return hash((self.platform, self.versions))

    @property
    def active(self) -> tuple[AppVersion, ...]:
        """Active versions, lowest first."""
        return tuple(v for v in self.versions if v.active)

    @property
    def latest(self) -> AppVersion | None:
        """The highest active version: what the app's assignments deploy."""
        active = self.active
        return active[-1] if active else None

    @property
    def previous(self) -> tuple[AppVersion, ...]:
        """Active versions other than the latest."""
        return self.active[:-1]

    def find(self, file_version: str) -> AppVersion | None:
        """The uploaded version that orders equal to ``file_version``, if any."""
        key = sort_key(file_version, platform=self.platform)
        for have, version in zip(self._keys, self.versions, strict=True):
            if have == key:
                return version
        return None

    def _next_label(self) -> str:
        taken = {v.label for v in self.versions}
        n = len(self.versions) + 1
        while f"{n}.0" in taken:
            n += 1
        return f"{n}.0"

    def upload(
        self, file_version: str, *, label: str | None = None, retire_previous: bool = False
    ) -> Upload:
        """Add a version, as a console upload does.

        A version lower than the latest is accepted: assignments of the active versions
        below it move to it, and the latest stays the latest. ``retire_previous``
        retires those lower versions, never the latest. A file version that orders equal
        to an existing one is refused with :class:`DuplicateVersion`.
        """
        new = AppVersion(file_version, label if label is not None else self._next_label())
        key = sort_key(file_version, platform=self.platform)
        previous = tuple(
            v for v, k in zip(self.versions, self._keys, strict=True) if v.active and k < key
        )
        retired = previous if retire_previous else ()
        kept = [
            AppVersion(v.file_version, v.label, active=False) if v in retired else v
            for v in self.versions
        ]
        after = VersionSet(self.platform, [*kept, new])
        latest = after.latest
        assert latest is not None  # `new` is active
        return Upload(after, new, latest, previous, retired)

    def retire(self, file_version: str) -> VersionSet:
        """The set with ``file_version`` retired."""
        target = self.find(file_version)
        if target is None:
            raise KeyError(f"no uploaded version orders equal to {file_version!r}")
        return VersionSet(
            self.platform,
            [
                AppVersion(v.file_version, v.label, False) if v is target else v
                for v in self.versions
            ],
        )

    def plan(self, installed: str | None, *, assigned: Iterable[str] | None = None) -> InstallPlan:
        """The version a device should be sent, given what it has installed.

        ``assigned`` restricts the candidates to the file versions assigned to this
        device (default: every active version); retired versions are never sent.
        """
        candidates = [v.file_version for v in self.active]
        if assigned is not None:
            wanted = {sort_key(a, platform=self.platform) for a in assigned}
            candidates = [
                v.file_version
                for v, k in zip(self.versions, self._keys, strict=True)
                if v.active and k in wanted
            ]
        return plan_install(candidates, installed, platform=self.platform)
