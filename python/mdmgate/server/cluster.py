"""What a gateway node knows of the cluster it runs in: its own name, which nodes are alive,
and what it tells a load balancer (``/readyz``).

Nodes (``mdmgate serve`` processes, or the ``--workers`` of one) share nothing but the
database. Each one announces itself with a lease ``node:<name>`` in the store
(:class:`~mdmgate.storage.LeaseStore`), renewed every third of its lifetime: a node that
stops cleanly gives its lease up at once, one that dies (or loses the database) drops out
when the lease expires. The unexpired ``node:`` leases are the cluster as every node sees it.
A budget meant for the whole cluster (APNs pushes per second, :mod:`mdmgate.apple.pusher`) is
shared by dividing it by the live nodes: while a node joins or leaves, the others learn of it
within one renewal period, and until then the sum of the shares can be off by one node's share.

Lease times are wall-clock (Unix) seconds, compared across machines: keep the nodes' clocks
synchronised (NTP) to well within the lease lifetime.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import trio

from mdmgate.server.metrics import default_node_name
from mdmgate.server.types import Handler, Request, Response
from mdmgate.storage import DeviceStore, LeaseStore

__all__ = [
    "NODE_LEASE_PREFIX",
    "NODE_LEASE_SECONDS",
    "READY_PROBE",
    "READY_TIMEOUT_SECONDS",
    "NodePresence",
    "node_name",
    "readiness_handler",
    "scaled_clock",
    "tick",
]

_log = logging.getLogger("mdmgate.server")

#: Leases naming live nodes: ``node:<name>``.
NODE_LEASE_PREFIX = "node:"
#: How long a node's lease lasts unless renewed (renewed every third of it).
NODE_LEASE_SECONDS = 15.0


def node_name(configured: str | None, worker: int | None = None) -> str:
    """The node's name: config ``node_name`` (with ``/<worker>`` for each of several
    ``--workers``), else ``hostname:pid``, which differs from worker to worker anyway."""
    if configured is None:
        return default_node_name()
    return configured if worker is None else f"{configured}/{worker}"


def scaled_clock(scale: float, epoch: float) -> Callable[[], float]:
    """A Unix clock that runs ``scale`` times as fast as the wall clock from ``epoch`` on
    (for tests only: a roll-out paced per minute then takes seconds). Every node given the same
    ``scale`` and ``epoch`` reads the same time."""

    def now() -> float:
        return epoch + (time.time() - epoch) * scale

    return now


class NodePresence:
    """Keeps this node's lease ``node:<name>`` and the list of live nodes (:attr:`live`,
    this one included) up to date; subscribers hear of every change of that list."""

    def __init__(
        self,
        store: LeaseStore,
        name: str,
        *,
        ttl: float = NODE_LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not ttl > 0 or math.isinf(ttl):
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        self.store = store
        self.name = name
        self.ttl = ttl
        self.clock = clock
        #: The live nodes as last read (sorted), this one always among them.
        self.live: tuple[str, ...] = (name,)
        self._subscribers: list[Callable[[Sequence[str]], None]] = []
        self._failing = False

    @property
    def lease(self) -> str:
        return NODE_LEASE_PREFIX + self.name

    def subscribe(self, callback: Callable[[Sequence[str]], None]) -> None:
        """``callback(live)`` now and whenever the live nodes change (never waits)."""
        self._subscribers.append(callback)
        callback(self.live)

    async def beat(self) -> tuple[str, ...]:
        """Renews the lease and reads the live nodes once; returns them."""
        now = self.clock()
        held = await self.store.claim_lease(self.lease, self.name, now=now, until=now + self.ttl)
        if not held:
            _log.error(
                "another gateway node runs as %r: give every node its own node_name", self.name
            )
        holders = await self.store.live_leases(NODE_LEASE_PREFIX, now=now)
        live = tuple(sorted({*holders, self.name}))
        if live != self.live:
            _log.info("cluster: %d live node(s): %s", len(live), ", ".join(live))
            self.live = live
            for callback in self._subscribers:
                callback(live)
        return live

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Announces the node until cancelled, then gives the lease up (so the others take
        its share at once, not when the lease expires)."""
        task_status.started()
        try:
            while True:
                try:
                    await self.beat()
                    if self._failing:
                        _log.info("cluster: node lease %s renewed again", self.lease)
                    self._failing = False
                except Exception as exc:  # the database is down: keep the last view
                    if not self._failing:
                        _log.warning("cluster: cannot renew node lease %s: %r", self.lease, exc)
                    self._failing = True
                await trio.sleep(self.ttl / 3)
        finally:
            with trio.move_on_after(2.0) as scope:
                scope.shield = True
                try:
                    await self.store.release_lease(self.lease, self.name)
                except Exception as exc:
                    _log.debug("cluster: node lease %s not released: %r", self.lease, exc)


#: The device id /readyz reads (a point read of a device that need not exist).
READY_PROBE = "mdmgate-readiness-probe"
#: How long /readyz waits for the database.
READY_TIMEOUT_SECONDS = 2.0


def readiness_handler(
    store: DeviceStore,
    *,
    timeout: float = READY_TIMEOUT_SECONDS,
    draining: Callable[[], bool] | None = None,
) -> Handler:
    """``/readyz`` for load balancers: 200 ``ready`` when the database answers a point read
    within ``timeout`` seconds; 503 when it does not (or fails), or while the node drains
    (SIGTERM), so that the balancer sends new devices elsewhere. ``/healthz`` only says the
    process answers (liveness)."""
    state = {"ready": True}

    def answer(ready: bool, why: str) -> Response:
        if ready != state["ready"]:
            state["ready"] = ready
            (_log.info if ready else _log.warning)("readiness: %s", why)
        status = 200 if ready else 503
        return Response(status, (("content-type", "text/plain; charset=utf-8"),), why.encode())

    async def readyz(request: Request) -> Response:
        if draining is not None and draining():
            return answer(False, "not ready: draining\n")
        try:
            with trio.fail_after(timeout):
                await store.get_device(READY_PROBE)
        except trio.TooSlowError:
            return answer(False, f"not ready: the database did not answer in {timeout:g} s\n")
        except Exception as exc:
            _log.debug("readiness probe failed: %r", exc)
            return answer(False, f"not ready: the database failed ({type(exc).__name__})\n")
        return answer(True, "ready\n")

    return readyz


async def tick(callback: Callable[[], None], interval: float) -> None:
    """Calls ``callback`` every ``interval`` seconds, at whole multiples of it on the wall
    clock, so that every node (and worker) calls it at the same moments."""
    while True:
        now = time.time()
        await trio.sleep((math.floor(now / interval) + 1) * interval - now)
        callback()
