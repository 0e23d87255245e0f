"""Wakes Apple devices when commands are queued for them.

The admin API calls :meth:`DevicePusher.wake` after an enqueue; the pusher runs in the
background, reads each device's APNs token and PushMagic (stored at TokenUpdate, facts
``apns``), and pushes through one shared :class:`~mdmgate.apple.push.ApnsClient` (which paces
bulk pushes so that a fleet-wide enqueue does not bring every device back at once). A token
APNs calls dead (410, BadDeviceToken) is marked so, and not pushed again until the device
sends a new one.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

import trio

from mdmgate.apple.push import ApnsClient, PushResult
from mdmgate.storage import Store

__all__ = ["FACT_APNS", "DevicePusher"]

_log = logging.getLogger("mdmgate.apple.push")

_HEX = re.compile(r"[0-9a-fA-F]+")

#: The device fact holding ``{"token": hex, "push_magic": str, "topic": str, "dead": bool}``.
FACT_APNS = "apns"


class DevicePusher:
    def __init__(self, store: Store, client: ApnsClient, *, batch: int = 1000) -> None:
        self.store = store
        self.client = client
        self.batch = batch
        self.sent = 0
        self.failed = 0
        self.dead = 0
        self._send, self._receive = trio.open_memory_channel[str](math.inf)

    def wake(self, device_ids: Iterable[str]) -> None:
        """Queues a push to each device (never waits; duplicates are pushed once per batch)."""
        for device_id in device_ids:
            self._send.send_nowait(device_id)

    async def run(self) -> None:
        """Pushes until cancelled."""
        async for first in self._receive:
            wanted = [first]
            while len(wanted) < self.batch:
                try:
                    wanted.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._push(list(dict.fromkeys(wanted)))

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
        for (device_id, _, _), result in zip(targets, results, strict=True):
            await self._record(device_id, result)

    async def _record(self, device_id: str, result: PushResult) -> None:
        if result.ok:
            self.sent += 1
            return
        self.failed += 1
        if result.dead:
            self.dead += 1
            _log.info("APNs token of %s is dead (%s %s)", device_id, result.status, result.reason)
            device = await self.store.get_device(device_id)
            if device is not None:
                apns = dict(device.facts.get(FACT_APNS) or {})
                if apns.get("token") == result.token:  # not replaced meanwhile
                    apns["dead"] = True
                    await self.store.merge_facts(device_id, {FACT_APNS: apns})
        else:
            _log.warning(
                "push to %s failed: %s %s after %d attempts",
                device_id,
                result.status,
                result.reason,
                result.attempts,
            )
