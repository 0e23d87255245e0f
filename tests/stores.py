"""The storage backends every store-backed test runs against: add a backend here and the
conformance suite and the protocol services run on it."""

from __future__ import annotations

from pathlib import Path

from mdmgate.storage import Store
from mdmgate.storage.memory import MemoryStore
from mdmgate.storage.sqlite import SQLiteStore

BACKENDS = ["memory", "sqlite"]


async def open_backend(kind: str, tmp_path: Path) -> Store:
    """A fresh, empty store of ``kind`` (one of :data:`BACKENDS`)."""
    if kind == "memory":
        return MemoryStore()
    return await SQLiteStore.open(tmp_path / "mdmgate.db")
