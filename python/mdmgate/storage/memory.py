"""An in-memory store: for tests, ``--dev`` and benchmarks. Nothing survives the process."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from mdmgate.storage import (
    CommandExists,
    CommandStatus,
    Delivery,
    DeliveryState,
    Device,
    StoredDeclaration,
    UnknownDevices,
    org_covers,
)

__all__ = ["MemoryStore"]

#: What take() hands out; ACCEPTED is open too but waits for the device.
_OFFERED = (DeliveryState.QUEUED, DeliveryState.SENT, DeliveryState.NOT_NOW)
_OPEN = (*_OFFERED, DeliveryState.ACCEPTED)


@dataclass
class _Entry:
    seq: int
    delivery: Delivery


class MemoryStore:
    def __init__(self) -> None:
        self._devices: dict[str, Device] = {}
        self._commands: dict[str, tuple[str, bytes]] = {}
        self._queues: dict[str, dict[str, _Entry]] = {}
        self._seq = itertools.count(1)
        self._declarations: dict[str, StoredDeclaration] = {}

    async def upsert_devices(self, devices: Sequence[Device]) -> int:
        for d in devices:
            self._devices[d.id] = d
        return len(devices)

    async def get_device(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    async def get_devices(self, device_ids: Sequence[str]) -> dict[str, Device]:
        return {i: self._devices[i] for i in device_ids if i in self._devices}

    async def enqueue(
        self,
        command_id: str,
        kind: str,
        body: bytes,
        device_ids: Sequence[str],
        *,
        new: bool = False,
    ) -> int:
        if new and command_id in self._commands:
            raise CommandExists(command_id)
        unknown = [d for d in dict.fromkeys(device_ids) if d not in self._devices]
        if unknown:
            raise UnknownDevices(unknown)
        self._commands.setdefault(command_id, (kind, body))
        kind, body = self._commands[command_id]
        added = 0
        for device_id in dict.fromkeys(device_ids):
            queue = self._queues.setdefault(device_id, {})
            if command_id in queue:
                continue
            delivery = Delivery(command_id, device_id, kind, body, DeliveryState.QUEUED)
            queue[command_id] = _Entry(next(self._seq), delivery)
            added += 1
        return added

    async def take(self, device_id: str, session: str, limit: int) -> list[Delivery]:
        entries = sorted(self._queues.get(device_id, {}).values(), key=lambda e: e.seq)
        taken: list[Delivery] = []
        for entry in entries:
            if len(taken) >= limit:
                break
            d = entry.delivery
            in_session = d.session == session and d.state is not DeliveryState.QUEUED
            if d.state not in _OFFERED or in_session:
                continue
            entry.delivery = replace(d, state=DeliveryState.SENT, session=session)
            taken.append(entry.delivery)
        return taken

    async def record_result(
        self,
        device_id: str,
        command_id: str,
        state: DeliveryState,
        status: str | None,
        result: bytes | None,
    ) -> bool:
        entry = self._queues.get(device_id, {}).get(command_id)
        if entry is None or entry.delivery.state.final:
            return False
        entry.delivery = replace(entry.delivery, state=state, status=status, result=result)
        return True

    async def command_status(self, command_id: str) -> CommandStatus | None:
        if command_id not in self._commands:
            return None
        kind = self._commands[command_id][0]
        found = [
            (q[command_id].seq, q[command_id].delivery)
            for q in self._queues.values()
            if command_id in q
        ]
        return CommandStatus(command_id, kind, tuple(d for _, d in sorted(found)))

    async def deliveries(self, device_id: str, states: Collection[DeliveryState]) -> list[Delivery]:
        entries = sorted(self._queues.get(device_id, {}).values(), key=lambda e: e.seq)
        return [e.delivery for e in entries if e.delivery.state in states]

    async def set_auth(self, device_id: str, auth: Mapping[str, Any]) -> bool:
        device = self._devices.get(device_id)
        if device is None:
            return False
        self._devices[device_id] = msgspec.structs.replace(device, auth=dict(auth))
        return True

    async def cancel_open(self, device_id: str, status: str) -> int:
        ended = 0
        for entry in self._queues.get(device_id, {}).values():
            if entry.delivery.state in _OPEN:
                entry.delivery = replace(entry.delivery, state=DeliveryState.ERROR, status=status)
                ended += 1
        return ended

    async def put_declaration(self, declaration: StoredDeclaration) -> None:
        old = self._declarations.get(declaration.identifier)
        seq = old.seq if old is not None else next(self._seq)
        self._declarations[declaration.identifier] = msgspec.structs.replace(declaration, seq=seq)

    async def get_declaration(self, identifier: str) -> StoredDeclaration | None:
        return self._declarations.get(identifier)

    async def declarations_for(self, device_id: str, org: str) -> list[StoredDeclaration]:
        found = [
            d
            for d in self._declarations.values()
            if device_id in d.devices or any(org_covers(o, org) for o in d.orgs)
        ]
        return sorted(found, key=lambda d: d.seq)

    async def merge_facts(self, device_id: str, facts: Mapping[str, Any]) -> bool:
        device = self._devices.get(device_id)
        if device is None:
            return False
        merged = {**device.facts, **facts}
        merged = {k: v for k, v in merged.items() if v is not None}
        self._devices[device_id] = msgspec.structs.replace(device, facts=merged)
        return True

    async def queue_depth(self) -> int:
        return sum(
            1 for q in self._queues.values() for e in q.values() if e.delivery.state in _OPEN
        )

    async def aclose(self) -> None:
        return None
