"""The end of a run: each device's deliveries, read from the gateway's admin API, held
against what the device's ledger saw (:func:`mdmgate.simulate.ledger.compare`).

A Windows device cannot see command ids: its ledger names each delivery by its content
(:mod:`mdmgate.simulate.windows`), so the stored bodies of its deliveries are read too and
its ledger ids mapped to the gateway's command ids before the comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mdmgate.errors import SyncMLDecodeError
from mdmgate.simulate.ledger import (
    GatewayDelivery,
    GatewayReader,
    Ledger,
    LedgerResult,
    Observed,
    compare,
)
from mdmgate.simulate.scenario import DeviceProfile

__all__ = ["check_ledger"]

_UNREADABLE = "deliveries could not be read"


async def check_ledger(
    reader: GatewayReader,
    ledger: Ledger,
    profiles: Sequence[DeviceProfile],
    note: Callable[[str], None],
) -> LedgerResult:
    """The ledger check of these devices; what could not be read is counted, not raised."""
    result = LedgerResult()
    fetched = await reader.deliveries([p.id for p in profiles])
    wanted = {
        d.command_id
        for p in profiles
        if p.platform == "windows"
        for d in fetched.get(p.id, ())
        if d.offers > 0
    }
    bodies = await reader.bodies(wanted)
    for profile in profiles:
        deliveries = fetched.get(profile.id)
        if deliveries is None:
            result.unreadable[_UNREADABLE] = result.unreadable.get(_UNREADABLE, 0) + 1
            continue
        observed = ledger.observed(profile.id)
        if profile.platform == "windows":
            observed = _windows_observed(observed, deliveries, bodies, note)
        compare(profile.id, observed, deliveries, result)
    return result


def _windows_observed(
    observed: dict[str, Observed],
    deliveries: list[GatewayDelivery],
    bodies: dict[str, bytes],
    note: Callable[[str], None],
) -> dict[str, Observed]:
    """A Windows device's ledger keyed by the gateway's command ids where its content
    ids map to one (what does not map stays as it is: misattributed)."""
    from mdmgate.simulate.windows import ledger_ids  # noqa: PLC0415 - Windows fleets only

    known = []
    for d in deliveries:
        body = bodies.get(d.command_id)
        if body is not None:
            known.append((d.command_id, body, d.offers))
    try:
        ids = ledger_ids(known)
    except SyncMLDecodeError as e:
        note(f"a stored Windows command is not SyncML: {e}")
        return observed
    return {ids.get(key, key): seen for key, seen in observed.items()}
