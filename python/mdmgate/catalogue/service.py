"""The catalogue service: apps, versions, assignments, licences, install notifications
and automatic updates over the store, with the fleet index answering "who gets what".

Several gateway nodes (processes, machines) share one store, and nothing the catalogue does
rests on the others telling it anything:

* **The fleet index follows the store's change feed.** Each :class:`Catalogue` keeps an
  in-process index (:mod:`mdmgate.fleet`) and the ``seq`` of the last change it applied.
  Before it answers any question (a preview, a wave, "why not" for a device) it reads the
  changes after that cursor and applies them: the changed devices are read again, a licence
  change reloads that app's holders, an unseen organisation or a new app (or a changed
  identifier) rebuilds the index. So an answer is current as of the moment it was asked,
  whichever node the change went through. :meth:`Catalogue.follow` also applies changes as
  they come (woken by the feed), so the work is done before a question arrives.
  :meth:`Catalogue.note_devices` only wakes it sooner.
* **Each due wave runs once in the cluster.** A node claims the wave's lease
  (``notification:<id>``) before it runs it, renews it while it runs and releases it after.
  The wave's deliveries, licences and the notification's new counts, cursor and state are one
  atomic ``fan_out`` that stores the notification only if it is still at the revision the
  wave read; a node that stops mid-wave leaves its lease to expire and another node runs the
  wave from the stored state, so nothing is queued or counted twice. A cancel is a
  compare-and-set of the notification too: it is never overwritten by a wave's stale copy,
  and a wave it overtakes queues nothing.

Roll-outs are :class:`~mdmgate.catalogue.model.Notification` records: due now, at a set
time, or in waves of ``pace_per_minute`` commands. :meth:`Catalogue.run_due` runs what is
due; :meth:`Catalogue.run` calls it whenever something falls due.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from mdmgate.catalogue import rules
from mdmgate.catalogue.model import (
    App,
    AppVersion,
    CommandBatch,
    LicenceGrant,
    Notification,
)
from mdmgate.catalogue.rules import CatalogueRefused
from mdmgate.events import licences_exhausted, rollout_finished, rollout_wave_ran
from mdmgate.fleet import FleetIndex, OrgTree, Outcome, TargetResult, platform_code
from mdmgate.storage import (
    Change,
    Device,
    LicencesExhausted,
    RevisionConflict,
    Store,
    UnknownDevices,
)
from mdmgate.versions import InvalidVersion, allows_downgrade, sort_key

__all__ = [
    "LEASE_SECONDS",
    "OUTCOME_NAMES",
    "SENT",
    "Catalogue",
    "DevicePreview",
    "Evaluation",
    "Preview",
]

_log = logging.getLogger("mdmgate.catalogue")

#: The API's name of each targeting outcome (out-of-scope devices are not reported).
OUTCOME_NAMES: dict[Outcome, str] = {
    Outcome.INSTALL: "install",
    Outcome.UPGRADE: "update",
    Outcome.DOWNGRADE: "downgrade",
    Outcome.SKIP_SAME: "already_at_version",
    Outcome.SKIP_NEWER: "downgrade_not_allowed",
    Outcome.SKIP_NOT_INSTALLED: "not_installed",
    Outcome.SKIP_PLATFORM: "platform_mismatch",
    Outcome.SKIP_NO_LICENCE: "no_licence",
    Outcome.SKIP_ROLLOUT: "outside_rollout",
    Outcome.TAKE_OVER: "take_over",
    Outcome.SKIP_TAKE_OVER_UNSUPPORTED: "take_over_unsupported",
}
#: Outcome names of devices that are sent a command.
SENT = frozenset({"install", "update", "downgrade", "take_over"})
#: Devices whose only assignments are on retired versions.
RETIRED = "retired"
#: Devices a roll-out reached through no assignment at all (assignment deployments).
NOT_ASSIGNED = "not_assigned"

_PAGE = 5000
#: Changes read from the feed at once, and devices read again at once.
_CHANGES = 5000
_READ = 1000
#: Notification states with waves to run.
_PENDING = ("scheduled", "running")
#: How long a wave's claim lasts unless renewed (it is renewed every third of it).
LEASE_SECONDS = 30.0
#: The shortest pause (Trio seconds) between two looks at a wave's lease.
_LOOK_SECONDS = 0.05
#: After the follower failed (the store is away), it tries again this much later.
_FOLLOW_RETRY_SECONDS = 1.0
#: Compare-and-set attempts before a write gives up (each conflict is another writer's
#: progress: a wave or a cancel).
_ATTEMPTS = 20
_UUIDS = uuid.UUID("6d1f3c52-8a1e-4f0b-9c55-2f7a6c1d0e9b")


@dataclass
class _Fleet:
    tree: OrgTree
    index: FleetIndex
    numbers: dict[str, int]
    #: Per device number: its app platform name and its org number.
    platforms: list[str]
    orgs: list[int]
    #: Catalogue app id -> its number in the index.
    apps: dict[str, int] = field(default_factory=dict)
    #: App id -> identifier and platform it was loaded for (a change rebuilds).
    loaded: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """One version's decision over the fleet."""

    version: AppVersion
    result: TargetResult


@dataclass(frozen=True)
class DevicePreview:
    id: str
    outcome: str
    version: str | None
    #: ``silent`` or ``prompt`` for a device that is sent the version.
    installs: str | None


@dataclass(frozen=True)
class Preview:
    """What a roll-out would do (or did): counts per outcome name, and sample devices."""

    version: str | None
    counts: dict[str, int]
    silent: int
    prompt: int
    licences_free: int | None
    licences_needed: int
    devices: list[DevicePreview]
    evaluations: list[Evaluation] = field(default_factory=list)
    #: Devices of a retired-only assignment (assignment deployments), by number.
    retired: list[int] = field(default_factory=list)
    #: The index the device numbers refer to.
    fleet: _Fleet | None = None


class Catalogue:
    """Apps and their roll-outs over ``store``. ``now`` is the wall clock (Unix time);
    ``on_enqueued`` is told which devices got commands (the APNs pusher paces pushes).

    ``node_id`` names this node in the leases of the waves it runs: unique among the nodes
    sharing the store (``mdmgate serve`` passes its node name, ``host:pid`` by default; the
    default here adds a random part, so two instances in one process are two nodes).
    ``lease_seconds`` (of ``now``'s clock) is how long a wave's claim lasts without renewal:
    how long the wave of a node that died waits before another node runs it."""

    def __init__(
        self,
        store: Store,
        *,
        now: Callable[[], float] = time.time,
        on_enqueued: Callable[[Sequence[str]], None] | None = None,
        node_id: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.store = store
        self.now = now
        self.on_enqueued = on_enqueued
        if node_id is None:
            node_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self._fleet: _Fleet | None = None
        #: The seq of the last change of the feed the index reflects.
        self._cursor = 0
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._nudge = trio.Event()
        #: Notifications whose wave runs in this process now.
        self._running: set[str] = set()

    # --- the fleet index ----------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """The seq of the last change of the store's feed the index has applied."""
        return self._cursor

    def note_devices(self, device_ids: Iterable[str]) -> None:
        """Devices changed through this process: :meth:`follow` applies the change now
        rather than when the store's feed wakes it. Never waits; not needed for
        correctness (every question applies the feed first)."""
        self._nudge.set()

    def invalidate(self) -> None:
        """Builds the index again before the next question."""
        self._fleet = None

    async def fleet(self) -> _Fleet:
        """The index, current with every change the store recorded before the call."""
        async with self._lock:
            return await self._catch_up()

    async def follow(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keeps the index current for ever: builds it, then applies the store's changes as
        they are recorded (woken by the feed, or by :meth:`note_devices`), so that a
        question finds little or nothing left to apply."""
        task_status.started()
        while True:
            try:
                async with self._lock:
                    await self._catch_up()
                self._nudge = trio.Event()
                await self._changed(self._cursor)
            except Exception:  # a store that is away for a while must not stop following
                _log.exception("following the change feed failed")
                await trio.sleep(_FOLLOW_RETRY_SECONDS)

    async def _changed(self, after: int) -> None:
        """Returns once the feed has a change after ``after``, or :meth:`note_devices` was
        called."""
        async with trio.open_nursery() as nursery:

            async def feed() -> None:
                await self.store.wait_for_changes(after)
                nursery.cancel_scope.cancel()

            async def nudged() -> None:
                await self._nudge.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(feed)
            nursery.start_soon(nudged)

    async def _catch_up(self) -> _Fleet:
        """Applies every change after the cursor (building the index first if there is
        none). Called with the lock held. Every await comes before the index is changed,
        and the cursor moves after, so a cancelled or failed call leaves an index that the
        next call brings up to date."""
        while True:
            if self._fleet is None:
                # Changes from here on are applied over the build (reading a device again
                # is harmless): the index misses nothing recorded while it was built.
                cursor = await self.store.last_change()
                self._fleet = await self._build()
                self._cursor = cursor
            changes = await self.store.changes(self._cursor, _CHANGES)
            if changes:
                await self._apply(self._fleet, changes)
                self._cursor = changes[-1].seq
            if self._fleet is not None and len(changes) < _CHANGES:
                return self._fleet

    async def _build(self) -> _Fleet:
        apps = await self.store.list_apps()
        devices: list[Device] = []
        after: str | None = None
        while True:
            page = await self.store.list_devices(after, _PAGE)
            devices.extend(page)
            if len(page) < _PAGE:
                break
            after = page[-1].id
        orgs = [o.path for o in await self.store.list_orgs()]
        tree = OrgTree([*orgs, *(d.org for d in devices)])
        # Numbered in org order, an org subtree is a run of device numbers: the query
        # reads it front to back (and licences go to devices in org, then id, order).
        devices.sort(key=lambda d: (tree.number(d.org), d.id))
        index = FleetIndex(
            [d.id for d in devices],
            [tree.number(d.org) for d in devices],
            bytes(platform_code(d.platform) for d in devices),
            bytes(_supervised(d) for d in devices),
            bytes(rules.installs_silently(d.platform, d.os_version, d.supervised) for d in devices),
            take_over=bytes(_takes_over(d) for d in devices),
        )
        fleet = _Fleet(
            tree,
            index,
            {d.id: i for i, d in enumerate(devices)},
            [rules.device_platform(d.platform) for d in devices],
            [tree.number(d.org) for d in devices],
        )
        holders = {app.id: await self.store.licence_holders(app.id) for app in apps}
        for number, app in enumerate(apps):
            _load_app(fleet, app, number, devices, holders[app.id])
        return fleet

    async def _apply(self, fleet: _Fleet, changes: Sequence[Change]) -> None:
        """Applies a page of the feed to ``fleet``, or drops the index (``self._fleet``
        ``None``) when it must be built again."""
        device_ids = list(dict.fromkeys(c.key for c in changes if c.kind == "device"))
        licences = list(dict.fromkeys(c.key for c in changes if c.kind == "licence"))
        orgs = {c.key for c in changes if c.kind == "org"}
        if any(o not in fleet.tree for o in orgs):
            self._fleet = None  # a new organisation renumbers the tree
            return
        apps: dict[str, App] = {}
        if device_ids or any(c.kind == "app" for c in changes):
            apps = {a.id: a for a in await self.store.list_apps()}
        if any(fleet.loaded.get(a.id) != (a.identifier, a.platform) for a in apps.values()):
            self._fleet = None  # a new app (or identifier) needs every inventory again
            return
        found: dict[str, Device] = {}
        for start in range(0, len(device_ids), _READ):
            found.update(await self.store.get_devices(device_ids[start : start + _READ]))
        if any(d.org not in fleet.tree for d in found.values()):
            self._fleet = None
            return
        holders = {
            app_id: await self.store.licence_holders(app_id)
            for app_id in licences
            if app_id in fleet.apps
        }
        # Read: from here on nothing awaits.
        for device in found.values():
            _update_device(fleet, device, apps)
        for app_id, held in holders.items():
            fleet.index.set_licensed(
                fleet.apps[app_id], [fleet.numbers[d] for d in held if d in fleet.numbers]
            )

    # --- apps ---------------------------------------------------------------------------------

    async def app(self, app_id: str) -> App:
        app = await self.store.get_app(app_id)
        if app is None:
            raise LookupError(f"no app {app_id!r}")
        return app

    async def licence_count(self, app_id: str) -> int:
        return len(await self.store.licence_holders(app_id))

    # --- evaluation ---------------------------------------------------------------------------

    async def _scope_args(
        self, orgs: Sequence[str], devices: Sequence[str]
    ) -> tuple[_Fleet, dict[str, Any]]:
        # Current with every change recorded before this call, through whichever node:
        # a device or organisation missing from it is unknown.
        fleet = await self.fleet()
        unknown_orgs = [o for o in orgs if o not in fleet.tree]
        if unknown_orgs:
            raise CatalogueRefused(
                f"unknown organisation(s): {', '.join(unknown_orgs)}", "$.orgs", "unknown_org"
            )
        missing = [d for d in devices if d not in fleet.numbers]
        if missing:
            raise UnknownDevices(missing)
        if len(orgs) == 1 and not devices:
            return fleet, {"org_range": fleet.tree.range(orgs[0])}
        if not orgs and not devices:
            return fleet, {}
        return fleet, {
            "scope": fleet.index.scope(
                [fleet.tree.range(o) for o in orgs], [fleet.numbers[d] for d in devices]
            )
        }

    async def evaluate(
        self, app: App, notification: Notification, *, version: AppVersion | None = None
    ) -> Preview:
        """What ``notification`` does now (nothing is queued)."""
        if notification.kind == "assignment":
            return await self._evaluate_assignments(app, notification)
        if version is None:
            version = self.resolve_version(app, notification.version)
        fleet, scope = await self._scope_args(notification.orgs, notification.devices)
        number = fleet.apps[app.id]
        free = await self._free_licences(app)
        result = fleet.index.target(
            number,
            version=version.file_version,
            version_platform=rules.version_platform(app.platform),
            installed_only=notification.installed_only,
            platform=platform_code(app.platform),
            allow_downgrade=_downgrades(app, notification),
            licences=free,
            percent=notification.percent,
            seed=_seed(app, notification, version),
            take_over=notification.take_over,
            **scope,
        )
        evaluation = Evaluation(version, result)
        return _preview(fleet, [evaluation], free, [])

    def resolve_version(self, app: App, wanted: str | None) -> AppVersion:
        if wanted is None:
            latest = rules.latest_active(app)
            if latest is None:
                raise CatalogueRefused(
                    f"{app.id} has no active version", "$.version", "no_active_version"
                )
            return latest
        found = rules.find_version(app, wanted)
        if found is None:
            raise CatalogueRefused(
                f"{app.id} has no version {wanted}", "$.version", "unknown_version"
            )
        if found.state == "retired":
            raise CatalogueRefused(
                f"version {found.file_version} of {app.id} is retired", "$.version", RETIRED
            )
        return found

    async def _free_licences(self, app: App) -> int | None:
        if not app.vpp:
            return None
        if app.licence_total is None:
            return 0
        return max(0, app.licence_total - await self.licence_count(app.id))

    async def _evaluate_assignments(self, app: App, notification: Notification) -> Preview:
        """Each device gets the highest active version assigned to it (through an org,
        inherited by sub-organisations, or by name); lower assignments do not count for a
        device a higher one covers."""
        fleet = await self.fleet()
        number = fleet.apps[app.id]
        free = await self._free_licences(app)
        platform = rules.version_platform(app.platform)
        claimed = fleet.index.scope()
        evaluations: list[Evaluation] = []
        retired_cover = fleet.index.scope()
        limit = None
        if notification.orgs or notification.devices:
            limit = fleet.index.scope(
                [fleet.tree.range(o) for o in notification.orgs if o in fleet.tree],
                [fleet.numbers[d] for d in notification.devices if d in fleet.numbers],
            )
        for version in rules.ordered(app, descending=True):
            orgs = [o for o in version.assigned_orgs if o in fleet.tree]
            names = [fleet.numbers[d] for d in version.assigned_devices if d in fleet.numbers]
            cover = fleet.index.scope([fleet.tree.range(o) for o in orgs], names)
            if version.state == "retired":
                retired_cover = retired_cover | cover
                continue
            scope = cover - claimed
            claimed = claimed | cover
            if limit is not None:
                scope = scope - (scope - limit)
            if not len(scope):
                continue
            result = fleet.index.target(
                number,
                version=version.file_version,
                version_platform=platform,
                scope=scope,
                installed_only=notification.installed_only,
                platform=platform_code(app.platform),
                allow_downgrade=_downgrades(app, notification),
                licences=free,
                percent=notification.percent,
                seed=_seed(app, notification, version),
                take_over=notification.take_over,
            )
            if free is not None:
                free -= len(result.licensed)
            evaluations.append(Evaluation(version, result))
        retired = retired_cover - claimed
        if limit is not None:
            retired = retired - (retired - limit)
        initial = await self._free_licences(app)
        retired_here = [d for d in retired.devices() if fleet.platforms[d] == app.platform]
        return _preview(fleet, evaluations, initial, retired_here)

    async def device_outcomes(self, app: App, device_id: str) -> list[tuple[str, str, str | None]]:
        """For one device: ``(source, outcome, version)`` for the app's assignments and for
        an install notification of its latest version (what "why not" questions ask)."""
        fleet = await self.fleet()
        if device_id not in fleet.numbers:
            raise UnknownDevices([device_id])
        out: list[tuple[str, str, str | None]] = []
        probe = Notification(id="preview", app_id=app.id, kind="assignment", devices=(device_id,))
        assigned = await self._evaluate_assignments(app, probe)
        out.append(("assignment", *_outcome_of(assigned, device_id)))
        latest = rules.latest_active(app)
        if latest is not None:
            notify = Notification(id="preview", app_id=app.id, devices=(device_id,))
            preview = await self.evaluate(app, notify, version=latest)
            out.append(("latest", *_outcome_of(preview, device_id)))
        return out

    # --- roll-outs ----------------------------------------------------------------------------

    async def check(self, notification: Notification) -> App:
        """Refuses now what would fail when the notification falls due: an unknown app,
        version, org or device, a platform without a command channel, or a version that
        cannot be written as a command (no manifest or package URL)."""
        app = await self.app(notification.app_id)
        if rules.command_kind(app.platform) is None:
            raise CatalogueRefused(
                f"{app.platform} devices have no command channel in this gateway",
                "$.app",
                "no_command_channel",
            )
        if notification.kind == "assignment":
            candidates = [v for v in app.versions if v.state == "active"]
        else:
            candidates = [self.resolve_version(app, notification.version)]
        for version in candidates:
            for first in (True, False):
                rules.deployment(
                    app,
                    version,
                    command_id="check",
                    first_install=first,
                    take_over=notification.take_over,
                )
        await self._scope_args(notification.orgs, notification.devices)
        return app

    async def submit(self, notification: Notification) -> Notification:
        """Stores a notification; one due now runs its first wave at once (unless another
        node's scheduler claimed it first: then that node runs it, and the notification is
        returned as stored)."""
        await self.check(notification)
        stored = await self.store.put_notification(notification)
        if stored.due_at <= self.now():
            ran = await self._claim_and_run(stored.id)
            if ran is None:
                ran = await self.store.get_notification(stored.id)
            stored = ran if ran is not None else stored
        # The scheduler sleeps until what it knew was due: this may be sooner (a later wave).
        self._wake.set()
        return stored

    async def cancel(self, notification_id: str) -> Notification | None:
        """Cancels a ``scheduled`` or ``running`` notification and returns it as stored; a
        notification in another state (or none) is returned as it is. A cancel is a
        compare-and-set: if a wave (on any node) wrote the notification in between, it is
        read again and cancelled at its new revision, unless that wave was its last."""
        for _ in range(_ATTEMPTS):
            found = await self.store.get_notification(notification_id)
            if found is None or found.state not in _PENDING:
                return found
            cancelled = msgspec.structs.replace(found, state="cancelled", updated_at=self.now())
            try:
                return await self.store.put_notification(
                    cancelled, expected_rev=found.rev, events=[rollout_finished(cancelled)]
                )
            except RevisionConflict:
                continue
        raise RevisionConflict(f"notification {notification_id!r}", None, None)

    async def run_due(self) -> list[Notification]:
        """Runs the automatic update checks and the notifications that are due; returns
        the notifications whose wave ran here (a wave another node holds is left to it)."""
        now = self.now()
        for app in await self.store.list_apps():
            await self._check_auto_update(app, now)
        done = []
        for notification in await self.store.due_notifications(now):
            ran = await self._claim_and_run(notification.id)
            if ran is not None:
                done.append(ran)
        return done

    async def next_wakeup(self) -> float | None:
        """When something falls due next (Unix time)."""
        times = []
        due = await self.store.next_due()
        if due is not None:
            times.append(due)
        for app in await self.store.list_apps():
            auto = app.auto_update
            if auto is not None and auto.enabled and rules.auto_update_refusal(app) is None:
                times.append(rules.next_check(auto, auto.last_check or app.created_at))
        return min(times) if times else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs what falls due, for ever; :meth:`submit` and settings changes wake it. Every
        node runs it: the leases decide which node runs each wave."""
        task_status.started()
        while True:
            self._wake = trio.Event()
            ran: list[Notification] = []
            wakeup: float | None
            try:
                ran = await self.run_due()
                wakeup = await self.next_wakeup()
            except Exception:  # one bad record must not stop every later roll-out
                _log.exception("running due roll-outs failed")
                wakeup = self.now() + self.lease_seconds / 3
            now = self.now()
            if wakeup is not None and wakeup <= now and not ran:
                # Due, yet nothing ran: another node holds the wave (or it keeps failing).
                # Look again once that node had time to renew or lose its lease.
                wakeup = now + self.lease_seconds / 3
            delay = math.inf if wakeup is None else max(0.0, wakeup - now)
            with trio.move_on_after(min(delay, 3600.0)):
                await self._wake.wait()

    def wake(self) -> None:
        """Something was scheduled or changed: look again."""
        self._wake.set()

    async def _check_auto_update(self, app: App, now: float) -> None:
        auto = app.auto_update
        if auto is None or not auto.enabled or rules.auto_update_refusal(app) is not None:
            return
        start = auto.last_check if auto.last_check is not None else app.created_at
        if rules.next_check(auto, start) > now:
            return
        # Missed checks collapse into the latest one: it sees every version published by then.
        check = rules.check_before(auto, now)
        version = rules.latest_active(app, published_by=check)
        if version is not None:
            # The run first, the check's record after: a node that stops in between leaves
            # the check due, and the next pass (on any node) finds the run made already.
            # (A conflict: made by another node's scheduler, or by this one before it stopped.)
            with contextlib.suppress(RevisionConflict):
                await self.store.put_notification(
                    Notification(
                        id=f"auto-{app.id}-{int(check)}",
                        app_id=app.id,
                        kind="auto_update",
                        version=version.file_version,
                        orgs=auto.orgs,
                        all_devices=not auto.orgs,
                        installed_only=True,
                        due_at=check,
                        created_at=now,
                        updated_at=now,
                    )
                )
        updated = msgspec.structs.replace(
            auto,
            last_check=check,
            last_version=version.file_version if version else auto.last_version,
        )
        try:
            await self.store.put_app(
                msgspec.structs.replace(app, auto_update=updated), expected_rev=app.rev
            )
        except RevisionConflict:
            return  # changed meanwhile: the next pass sees the new settings

    async def _claim_and_run(self, notification_id: str) -> Notification | None:
        """Runs the notification's due wave if this node gets its lease; returns it as
        stored after the wave, or ``None`` when another node holds the wave, or there was
        no wave to run any more (cancelled, finished, or its next wave not due yet)."""
        if notification_id in self._running:
            return None  # (this process runs it already: the lease is this node's)
        name = f"notification:{notification_id}"
        now = self.now()
        claimed = await self.store.claim_lease(
            name, self.node_id, now=now, until=now + self.lease_seconds
        )
        if not claimed:
            return None
        self._running.add(notification_id)
        outcome: list[Notification | None] = []
        failure: list[Exception] = []
        try:
            async with trio.open_nursery() as nursery:

                async def wave() -> None:
                    try:
                        outcome.append(await self._run_one(notification_id))
                    except Exception as exc:
                        failure.append(exc)
                    finally:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(self._keep_lease, name, nursery.cancel_scope)
                nursery.start_soon(wave)
        finally:
            self._running.discard(notification_id)
        if failure:
            # The lease is left to expire: a write of this wave may still land (a commit
            # whose answer was lost), and the next attempt starts from what is stored.
            raise failure[0]
        if not outcome:
            return None  # the lease was lost: the wave was stopped, another node runs it
        # (A node that stops mid-wave never gets here: its lease expires instead.)
        await self.store.release_lease(name, self.node_id)
        return outcome[0]

    async def _keep_lease(self, name: str, wave: trio.CancelScope) -> None:
        """Renews a wave's lease every third of its length; stops the wave if it was lost
        (this node stalled past its expiry and another node claimed the wave). The length
        is in ``now``'s seconds, which may pass faster than Trio's (a test clock): the
        pace is measured as it goes, starting with a short look."""
        third = self.lease_seconds / 3
        renewed = self.now()
        seen = (trio.current_time(), renewed)
        pause = min(third, _LOOK_SECONDS)
        while True:
            await trio.sleep(pause)
            at, now = trio.current_time(), self.now()
            rate = max(1.0, (now - seen[1]) / max(at - seen[0], 1e-9))
            seen = (at, now)
            if now - renewed >= third:
                kept = await self.store.claim_lease(
                    name, self.node_id, now=now, until=now + self.lease_seconds
                )
                if not kept:
                    _log.warning("lost %s to another node: its wave stops here", name)
                    wave.cancel()
                    return
                renewed = now
            pause = max(_LOOK_SECONDS, (third - (now - renewed)) / rate)

    async def _run_one(self, notification_id: str) -> Notification | None:
        """Runs the notification's wave if it is still due, as stored now (the due list
        was read before the lease was claimed: another node may have run the wave
        since). Each attempt reads the notification, evaluates the fleet and writes the
        wave and the notification at once, at the revision read; if the notification
        changed in between, nothing was written and it is read again: a cancel wins,
        anything else is evaluated again."""
        for _ in range(_ATTEMPTS):
            current = await self.store.get_notification(notification_id)
            now = self.now()
            if current is None or current.state not in _PENDING or current.due_at > now:
                return None
            app = await self.store.get_app(current.app_id)
            try:
                if app is None:
                    raise CatalogueRefused(f"app {current.app_id!r} was deleted")
                return await self._wave(app, current, now)
            except RevisionConflict:
                continue
            except (CatalogueRefused, UnknownDevices, InvalidVersion) as exc:
                error = str(exc)
            except Exception as exc:
                # Left due, it would be retried at once, for ever: record it as failed.
                _log.exception("install notification %s failed", notification_id)
                error = f"internal error: {exc!r}"
            failed = msgspec.structs.replace(current, state="failed", error=error, updated_at=now)
            try:
                return await self.store.put_notification(
                    failed, expected_rev=current.rev, events=[rollout_finished(failed)]
                )
            except RevisionConflict:
                continue
        raise RevisionConflict(f"notification {notification_id!r}", None, None)

    async def _wave(self, app: App, notification: Notification, now: float) -> Notification:
        """Evaluates and writes one wave of ``notification`` (as read, at its revision);
        :class:`RevisionConflict` when it changed meanwhile (nothing is written)."""
        preview = await self.evaluate(app, notification)
        fleet = preview.fleet
        assert fleet is not None
        # Devices to send, with the version each gets, whether it holds the app already and
        # whether its command takes the user's copy over (only where the device can).
        chosen: list[_Send] = []
        for evaluation in preview.evaluations:
            outcomes = evaluation.result.outcomes
            for number in evaluation.result.selected:
                first = outcomes[number] == Outcome.INSTALL
                take_over = notification.take_over and fleet.index.can_take_over(number)
                chosen.append((fleet.index.device_id(number), evaluation, first, take_over))
        chosen.sort(key=lambda item: item[0])
        start = 0
        if notification.cursor is not None:
            start = bisect.bisect_right([c[0] for c in chosen], notification.cursor)
        pace = notification.pace_per_minute
        wave = chosen[start : start + pace] if pace else chosen[start:]
        more = pace is not None and start + len(wave) < len(chosen)
        licensed = {
            fleet.index.device_id(n) for e in preview.evaluations for n in e.result.licensed
        }
        commands = _commands(app, notification, wave)
        grant = None
        wanted = [d for d, *_ in wave if d in licensed]
        if app.vpp and wanted:
            grant = LicenceGrant(app.id, app.licence_total or 0, wanted)
        counts = dict(notification.counts)
        wave_counts = _wave_counts(preview, wave, first=notification.waves == 0)
        for name, n in wave_counts.items():
            counts[name] = counts.get(name, 0) + n
        resolved = preview.version
        updated = msgspec.structs.replace(
            notification,
            state="running" if more else "done",
            waves=notification.waves + 1,
            cursor=wave[-1][0] if wave else notification.cursor,
            due_at=now + 60.0 if more else notification.due_at,
            counts=counts,
            command_ids=tuple(
                dict.fromkeys((*notification.command_ids, *(c.command_id for c in commands)))
            ),
            resolved_version=resolved
            if notification.resolved_version is None
            else notification.resolved_version,
            updated_at=now,
            error=None,
        )
        reported = rollout_wave_ran(
            notification,
            updated,
            devices=len(wave),
            without_licence=preview.counts.get("no_licence", 0),
            licence_total=app.licence_total,
        )
        if not commands:
            return await self.store.put_notification(
                updated, expected_rev=notification.rev, events=reported
            )
        try:
            made = await self.store.fan_out(
                commands,
                licences=grant,
                notification=updated,
                expected_rev=notification.rev,
                events=reported,
            )
        except LicencesExhausted as exc:
            # Another roll-out took licences meanwhile: the next wave re-evaluates.
            retry = msgspec.structs.replace(
                notification, error=str(exc), due_at=now + 60.0, updated_at=now
            )
            short = licences_exhausted(
                app.id,
                notification_id=notification.id,
                total=exc.total,
                without_licence=exc.needed - exc.total,
            )
            return await self.store.put_notification(
                retry, expected_rev=notification.rev, events=[short]
            )
        stored = msgspec.structs.replace(updated, rev=notification.rev + 1)
        if self.on_enqueued is not None:
            self.on_enqueued([d for d, *_ in wave])
        if made < len(wave):
            # Some devices held the wave's command already (queued by an earlier attempt
            # that stored no counts): count only what this wave queued.
            stored = await self._uncount(stored, len(wave) - made)
        return stored

    async def _uncount(self, notification: Notification, extra: int) -> Notification:
        """Takes ``extra`` back from the ``queued`` count of a notification just stored."""
        for _ in range(_ATTEMPTS):
            counts = dict(notification.counts)
            counts["queued"] = max(0, counts.get("queued", 0) - extra)
            fixed = msgspec.structs.replace(notification, counts=counts)
            try:
                return await self.store.put_notification(fixed, expected_rev=notification.rev)
            except RevisionConflict:
                found = await self.store.get_notification(notification.id)
                if found is None:
                    return notification
                notification = found
        raise RevisionConflict(f"notification {notification.id!r}", None, None)


#: A device a wave sends to: its id, the version's evaluation, whether it is a first
#: install, and whether the command takes the user's copy over (ChangeManagementState).
_Send = tuple[str, Evaluation, bool, bool]


def _commands(app: App, notification: Notification, wave: Sequence[_Send]) -> list[CommandBatch]:
    """One command per distinct body for the devices of a wave."""
    batches: dict[tuple[str, bool, bool], list[str]] = {}
    versions: dict[str, Evaluation] = {}
    for device_id, evaluation, first, take_over in wave:
        # Apple's command is the same for an install and an update (a take-over adds
        # ChangeManagementState); Windows sends the offline licence with a first install only.
        key = (evaluation.version.file_version, first and app.platform == "windows", take_over)
        batches.setdefault(key, []).append(device_id)
        versions[evaluation.version.file_version] = evaluation
    commands: list[CommandBatch] = []
    for (file_version, first, take_over), device_ids in batches.items():
        name = f"{notification.id}/{file_version}/{int(first)}"
        if take_over:
            name += "/take-over"
        command_id = str(uuid.uuid5(_UUIDS, name))
        built = rules.deployment(
            app,
            versions[file_version].version,
            command_id=command_id,
            first_install=first,
            take_over=take_over,
        )
        commands.append(CommandBatch(command_id, built.kind, built.body, device_ids))
    return commands


def _wave_counts(preview: Preview, wave: Sequence[_Send], *, first: bool) -> dict[str, int]:
    """What one wave did: ``queued`` devices; the first wave also records the skips."""
    counts: dict[str, int] = {"queued": len(wave)}
    if first:
        for name, n in preview.counts.items():
            if name not in SENT:
                counts[name] = n
    return counts


def _downgrades(app: App, notification: Notification) -> bool:
    # A store's install command installs the store's current version whatever the
    # catalogue says, and an automatic update only ever moves forward.
    if app.kind == "store" or notification.kind == "auto_update":
        return False
    return allows_downgrade(rules.version_platform(app.platform))


def _seed(app: App, notification: Notification, version: AppVersion) -> str:
    # Without a seed a percentage picks the same devices for the same app version every
    # time, and a larger percentage only adds devices.
    return notification.seed or f"{app.id}/{version.file_version}"


def _load_app(
    fleet: _Fleet, app: App, number: int, devices: Sequence[Device], holders: Sequence[str]
) -> None:
    """Loads an app's installed versions (devices in index order) and licence holders."""
    rows: list[int] = []
    found: list[str] = []
    users: list[int] = []
    platform = rules.version_platform(app.platform)
    for i, device in enumerate(devices):
        if rules.device_platform(device.platform) != app.platform:
            continue
        version = _installed(device, app.identifier, platform)
        if version is not None:
            rows.append(i)
            found.append(version)
            if _user_installed(device, app):
                users.append(i)
    fleet.index.set_installed(number, rows, found, platform=platform)
    fleet.index.set_user_installed(number, users)
    fleet.index.set_licensed(number, [fleet.numbers[d] for d in holders if d in fleet.numbers])
    fleet.apps[app.id] = number
    fleet.loaded[app.id] = (app.identifier, app.platform)


def _update_device(fleet: _Fleet, device: Device, apps: dict[str, App]) -> None:
    """Adds a device to the index, or changes its row and installed versions, as read
    from the store (its org is in the tree)."""
    org = fleet.tree.number(device.org)
    flags = (
        org,
        platform_code(device.platform),
        _supervised(device),
        rules.installs_silently(device.platform, device.os_version, device.supervised),
    )
    take_over = _takes_over(device)
    number = fleet.numbers.get(device.id)
    if number is None:
        number = fleet.index.push_device(device.id, *flags, take_over=take_over)
        fleet.numbers[device.id] = number
        fleet.platforms.append(rules.device_platform(device.platform))
        fleet.orgs.append(org)
    else:
        fleet.index.set_device(number, *flags, take_over=take_over)
        fleet.platforms[number] = rules.device_platform(device.platform)
        fleet.orgs[number] = org
    for app_id, app_number in fleet.apps.items():
        app = apps.get(app_id)
        if app is None:
            continue
        version = None
        if rules.device_platform(device.platform) == app.platform:
            version = _installed(device, app.identifier, rules.version_platform(app.platform))
        fleet.index.update_installed(app_number, number, version)
        user = version is not None and _user_installed(device, app)
        fleet.index.update_user_installed(app_number, number, user)


def _takes_over(device: Device) -> bool:
    """Whether the device can take a user-installed app under management."""
    os_version = rules.reported_os_version(device.os_version, device.facts)
    return rules.take_over_refusal(device.platform, os_version) is None


def _user_installed(device: Device, app: App) -> bool:
    return app.platform in ("ios", "macos") and rules.user_installed(device.facts, app.identifier)


def _supervised(device: Device) -> int:
    return 2 if device.supervised is None else int(device.supervised)


def _installed(device: Device, identifier: str, platform: str) -> str | None:
    apps = device.facts.get("apps")
    if not isinstance(apps, list):
        return None
    for entry in apps:
        if isinstance(entry, dict) and entry.get("identifier") == identifier:
            version = entry.get("version")
            if not isinstance(version, str):
                return None
            try:
                sort_key(version, platform=platform)
            except InvalidVersion:
                return None  # an unreadable version counts as unknown, not installed
            return version
    return None


def _preview(
    fleet: _Fleet, evaluations: list[Evaluation], free: int | None, retired: list[int]
) -> Preview:
    counts: dict[str, int] = {}
    silent = prompt = needed = 0
    for evaluation in evaluations:
        result = evaluation.result
        for outcome, n in result.counts.items():
            name = OUTCOME_NAMES.get(outcome)
            if name is not None and n:
                counts[name] = counts.get(name, 0) + n
        flags = result.silent
        silent += sum(flags)
        prompt += len(flags) - sum(flags)
        needed += len(result.licensed)
    if retired:
        counts[RETIRED] = len(retired)
    version = evaluations[0].version.file_version if len(evaluations) == 1 else None
    return Preview(version, counts, silent, prompt, free, needed, [], evaluations, retired, fleet)


def _outcome_of(preview: Preview, device_id: str) -> tuple[str, str | None]:
    assert preview.fleet is not None
    number = preview.fleet.numbers[device_id]
    for evaluation in preview.evaluations:
        code = Outcome(evaluation.result.outcomes[number])
        if code != Outcome.OUT_OF_SCOPE:
            return OUTCOME_NAMES[code], evaluation.version.file_version
    if number in preview.retired:
        return RETIRED, None
    return NOT_ASSIGNED, None


def device_list(preview: Preview, *, limit: int, outcome: str | None = None) -> list[DevicePreview]:
    """Up to ``limit`` devices of a preview with their outcome, in device order."""
    fleet = preview.fleet
    assert fleet is not None
    out: list[DevicePreview] = []
    for evaluation in preview.evaluations:
        result = evaluation.result
        selected, flags = result.selected, result.silent
        for number, code in enumerate(result.outcomes):
            if len(out) >= limit:
                return out
            name = OUTCOME_NAMES.get(Outcome(code))
            if name is None or (outcome is not None and name != outcome):
                continue
            installs = None
            at = bisect.bisect_left(selected, number)
            if at < len(selected) and selected[at] == number:
                installs = "silent" if flags[at] else "prompt"
            out.append(
                DevicePreview(
                    fleet.index.device_id(number), name, evaluation.version.file_version, installs
                )
            )
    for number in preview.retired:
        if len(out) >= limit:
            break
        if outcome in (None, RETIRED):
            out.append(DevicePreview(fleet.index.device_id(number), RETIRED, None, None))
    return out
