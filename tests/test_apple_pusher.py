"""Waking devices after an enqueue: tokens from the store, one push each, dead tokens marked."""

from __future__ import annotations

import trio

from mdmgate.apple.push import ApnsClient
from mdmgate.apple.pusher import FACT_APNS, DevicePusher
from mdmgate.storage import Device
from mdmgate.storage.memory import MemoryStore
from tests.apns_server import UNREGISTERED, ApnsServer, running

TOPIC = "com.apple.mgmt.External.test"


def apns(token: str, magic: str) -> dict[str, object]:
    return {FACT_APNS: {"token": token, "push_magic": magic, "topic": TOPIC}}


async def wait_until(condition: object) -> None:
    with trio.fail_after(10):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.01)


async def test_wake_pushes_each_device_once_and_marks_dead_tokens() -> None:
    store = MemoryStore()
    await store.upsert_devices(
        [
            Device("ipad-1", "ipados", facts=apns("aa01", "magic-1")),
            Device("ipad-2", "ipados", facts=apns("bb02", "magic-2")),
            Device("mac-gone", "macos", facts=apns("cc03", "magic-3")),
            Device("no-token", "ios"),
        ]
    )
    server = ApnsServer()
    server.script("cc03", UNREGISTERED)
    async with running(server) as url, ApnsClient(url, topic=TOPIC) as client:
        pusher = DevicePusher(store, client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.run)
            pusher.wake(["ipad-1", "ipad-2", "ipad-1", "mac-gone", "no-token", "ghost"])
            await wait_until(lambda: pusher.sent + pusher.failed == 3)
            nursery.cancel_scope.cancel()
    assert sorted((p.token, p.payload) for p in server.pushes) == [
        ("aa01", {"mdm": "magic-1"}),
        ("bb02", {"mdm": "magic-2"}),
        ("cc03", {"mdm": "magic-3"}),
    ]
    assert all(p.headers["apns-topic"] == TOPIC for p in server.pushes)
    assert (pusher.sent, pusher.dead) == (2, 1)
    gone = await store.get_device("mac-gone")
    assert gone is not None
    assert gone.facts[FACT_APNS]["dead"] is True
    # A dead token is not pushed again.
    async with running(server) as url, ApnsClient(url, topic=TOPIC) as client:
        pusher = DevicePusher(store, client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.run)
            pusher.wake(["mac-gone", "ipad-2"])
            await wait_until(lambda: pusher.sent == 1)
            nursery.cancel_scope.cancel()
    assert [p.token for p in server.pushes].count("cc03") == 1
