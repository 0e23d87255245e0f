"""Wakes Apple devices when commands are queued for them.

The admin API (and the catalogue, for each roll-out wave) calls :meth:`DevicePusher.wake`
after an enqueue; the pusher runs in the background, reads each device's APNs token and
PushMagic (stored at TokenUpdate, facts ``apns``), and pushes through one shared
:class:`~mdmgate.apple.push.ApnsClient` (which paces bulk pushes so that a fleet-wide enqueue
does not bring every device back at once). A token APNs calls dead (410, BadDeviceToken) is
marked so, and not pushed again until the device sends a new one.

In a cluster of gateway nodes:

* **Who pushes.** The node that queued the command (the one that answered the admin API, or
  ran the roll-out wave). A wake is not tied to any node holding the device's connection:
  Apple devices keep no connection to the gateway, APNs wakes them and they then check in
  through the load balancer with whichever node it picks, which reads their queue from the
  shared database. So a wake requested on one node is never lost because another node "has"
  the device.
* **Failures are retried.** A push that got no answer, or 429/500/503, after the client's own
  attempts is tried again later (``retry_delay``, doubling up to ``max_retry_delay``) until
  APNs takes it or calls the token dead; a new wake for the device pushes at once. Other
  refusals (a 4xx about the request or the certificate) are final and logged: repeating them
  cannot help. A failure to read the devices from the store is retried the same way. Retries
  are held in memory: if the node itself dies, its pending wakes are gone, but the commands
  are in the store and each device gets them at its next check-in (or the next wake).
* **One budget.** ``rate`` pushes per second is the budget of the whole cluster for the
  topic: each node paces at ``rate / live nodes`` (:meth:`DevicePusher.share`, fed by
  :class:`~mdmgate.server.cluster.NodePresence`), so adding nodes does not multiply the load
  on APNs or the stampede of devices checking in.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Iterable, Sequence

import trio

from mdmgate.apple.push import ApnsClient, PushResult
from mdmgate.storage import DeviceStore

__all__ = ["FACT_APNS", "DevicePusher"]

_log = logging.getLogger("mdmgate.apple.push")

_HEX = re.compile(r"[0-9a-fA-F]+")
#: Answers after which a later push may succeed (0: no answer at all).
_RETRYABLE = frozenset({0, 429, 500, 503})

#: The device fact holding ``{"token": hex, "push_magic": str, "topic": str, "dead": bool}``.
FACT_APNS = "apns"


class DevicePusher:
    """Pushes to the devices :meth:`wake` names; run :meth:`run` in a nursery.

    ``rate``: the cluster's budget in pushes per second (``None``: the client's own pace is
    left alone); :meth:`share` sets this node's part of it. ``retry_delay`` and
    ``max_retry_delay``: the wait before a failed push is tried again, doubling per failure.
    """

    def __init__(
        self,
        store: DeviceStore,
        client: ApnsClient,
        *,
        batch: int = 1000,
        rate: float | None = None,
        retry_delay: float = 5.0,
        max_retry_delay: float = 600.0,
    ) -> None:
        if rate is not None and (not rate > 0 or math.isinf(rate)):
            raise ValueError(f"rate must be a positive number of pushes per second, got {rate!r}")
        if not 0 < retry_delay <= max_retry_delay:
            raise ValueError("retry_delay must be positive and at most max_retry_delay")
        self.store = store
        self.client = client
        self.batch = batch
        self.rate = rate
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.sent = 0
        self.failed = 0
        self.dead = 0
        #: Pushes tried again after a failure.
        self.retried = 0
        #: Live nodes sharing the budget, as last told (:meth:`share`).
        self.nodes = 1
        #: Device id -> failed pushes in a row, for devices waiting to be tried again.
        self._failures: dict[str, int] = {}
        self._send, self._receive = trio.open_memory_channel[str](math.inf)
        self._nursery: trio.Nursery | None = None

    @property
    def pending_retries(self) -> int:
        """Devices whose push failed and waits to be tried again."""
        return len(self._failures)

    def share(self, live_nodes: Sequence[str]) -> None:
        """The nodes alive in the cluster changed: pace at ``rate / len(live_nodes)``."""
        self.nodes = max(1, len(live_nodes))
        if self.rate is not None:
            self.client.set_max_pushes_per_second(self.rate / self.nodes)

    def wake(self, device_ids: Iterable[str]) -> None:
        """Queues a push to each device (never waits; duplicates are pushed once per batch)."""
        for device_id in device_ids:
            self._send.send_nowait(device_id)

    async def run(self) -> None:
        """Pushes until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            async for first in self._receive:
                wanted = [first]
                while len(wanted) < self.batch:
                    try:
                        wanted.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                batch = list(dict.fromkeys(wanted))
                try:
                    await self._push(batch)
                except Exception:  # the store is unreachable: nothing is dropped
                    _log.exception("pushing to %d device(s) failed; will try again", len(batch))
                    self._retry_later(batch)

    async def _push(self, device_ids: list[str]) -> None:
        devices = await self.store.get_devices(device_ids)
        targets: list[tuple[str, str, str]] = []
        for device in devices.values():
            apns = device.facts.get(FACT_APNS)
            if not isinstance(apns, dict) or apns.get("dead"):
                continue
            token, magic = apns.get("token"), apns.get("push_magic")
            if isinstance(token, str) and _HEX.fullmatch(token) and isinstance(magic, str):
                targets.append((device.id, token, magic))
        if not targets:
            return
        results = await self.client.push_many((token, magic) for _, token, magic in targets)
        again: list[str] = []
        for (device_id, _, _), result in zip(targets, results, strict=True):
            if await self._record(device_id, result):
                again.append(device_id)
        if again:
            self._retry_later(again)

    def _retry_later(self, device_ids: Sequence[str]) -> None:
        """Counts a failure for each device and wakes them again after the backoff (grouped
        by how often they failed)."""
        groups: dict[int, list[str]] = {}
        for device_id in device_ids:
            failures = self._failures.get(device_id, 0) + 1
            self._failures[device_id] = failures
            groups.setdefault(failures, []).append(device_id)
        assert self._nursery is not None
        for failures, ids in groups.items():
            delay = min(self.max_retry_delay, self.retry_delay * 2.0 ** (failures - 1))
            self._nursery.start_soon(self._wake_later, ids, random.uniform(0.75, 1.0) * delay)

    async def _wake_later(self, device_ids: list[str], delay: float) -> None:
        await trio.sleep(delay)
        # Those pushed successfully meanwhile (a new wake) are not pushed again.
        due = [d for d in device_ids if d in self._failures]
        self.retried += len(due)
        self.wake(due)

    async def _record(self, device_id: str, result: PushResult) -> bool:
        """Counts the outcome (marks a dead token); True when the push should be retried."""
        if result.ok:
            self.sent += 1
            self._failures.pop(device_id, None)
            return False
        self.failed += 1
        if result.dead:
            self.dead += 1
            self._failures.pop(device_id, None)
            _log.info("APNs token of %s is dead (%s %s)", device_id, result.status, result.reason)
            device = await self.store.get_device(device_id)
            if device is not None:
                apns = dict(device.facts.get(FACT_APNS) or {})
                if apns.get("token") == result.token:  # not replaced meanwhile
                    apns["dead"] = True
                    await self.store.merge_facts(device_id, {FACT_APNS: apns})
            return False
        retry = result.status in _RETRYABLE
        _log.warning(
            "push to %s failed: %s %s after %d attempts%s",
            device_id,
            result.status,
            result.reason,
            result.attempts,
            "; will try again" if retry else "",
        )
        if not retry:
            self._failures.pop(device_id, None)
        return retry
