"""Waking devices after an enqueue: tokens from the store, one push each, dead tokens marked;
failed pushes tried again; in a cluster, one push budget shared by the nodes."""

from __future__ import annotations

import bisect

import trio

from mdmgate.apple.push import ApnsClient
from mdmgate.apple.pusher import FACT_APNS, DevicePusher
from mdmgate.server.cluster import NodePresence
from mdmgate.storage import Device
from mdmgate.storage.memory import MemoryStore
from tests.apns_server import OK, UNAVAILABLE, UNREGISTERED, ApnsServer, Reply, running

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


# --- in a cluster: failures retried, one budget shared by the nodes ---------------------------


async def test_a_push_that_fails_is_tried_again_until_apns_takes_it() -> None:
    store = MemoryStore()
    await store.upsert_devices([Device("ipad-9", "ipados", facts=apns("ab09", "magic-9"))])
    server = ApnsServer()
    # APNs is unavailable for the client's attempts of three pushes, then takes the fourth.
    server.script("ab09", UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, OK)
    async with (
        running(server) as url,
        ApnsClient(url, topic=TOPIC, max_attempts=1, backoff=0.01) as client,
    ):
        pusher = DevicePusher(store, client, retry_delay=0.02, max_retry_delay=0.05)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.run)
            pusher.wake(["ipad-9"])
            # The server takes the push before the pusher has read its answer.
            await wait_until(lambda: server.accepted("ab09") and pusher.sent == 1)
            nursery.cancel_scope.cancel()
    assert [p.status for p in server.pushes] == [503, 503, 503, 200]
    assert (pusher.sent, pusher.failed, pusher.retried, pusher.pending_retries) == (1, 3, 3, 0)


async def test_a_refusal_that_cannot_change_is_not_repeated() -> None:
    store = MemoryStore()
    await store.upsert_devices([Device("ipad-8", "ipados", facts=apns("ab08", "magic-8"))])
    server = ApnsServer()
    server.script("ab08", Reply(400, "TopicDisallowed"))
    async with running(server) as url, ApnsClient(url, topic=TOPIC, max_attempts=1) as client:
        pusher = DevicePusher(store, client, retry_delay=0.01, max_retry_delay=0.01)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.run)
            pusher.wake(["ipad-8"])
            await wait_until(lambda: pusher.failed == 1)
            # A retry would come within the retry delay: none does.
            with trio.move_on_after(0.2):
                await wait_until(lambda: len(server.pushes) > 1)
            nursery.cancel_scope.cancel()
    assert [p.status for p in server.pushes] == [400]
    assert (pusher.retried, pusher.pending_retries) == (0, 0)


async def test_nodes_share_one_push_budget() -> None:
    # Two nodes (a presence and a pusher each) over one store: the cluster's database.
    store = MemoryStore()
    count = 40
    await store.upsert_devices(
        [Device(f"d{i}", "ios", facts=apns(f"{i:04x}", f"m{i}")) for i in range(2 * count)]
    )
    server = ApnsServer()
    rate = 40.0
    async with (
        running(server) as url,
        ApnsClient(url, topic=TOPIC, max_pushes_per_second=rate) as client_a,
        ApnsClient(url, topic=TOPIC, max_pushes_per_second=rate) as client_b,
    ):
        node_a = NodePresence(store, "node-a")
        node_b = NodePresence(store, "node-b")
        pusher_a = DevicePusher(store, client_a, rate=rate)
        pusher_b = DevicePusher(store, client_b, rate=rate)
        node_a.subscribe(pusher_a.share)
        node_b.subscribe(pusher_b.share)
        assert client_a.max_pushes_per_second == rate  # alone so far
        await node_a.beat()
        await node_b.beat()
        await node_a.beat()  # (node-a hears of node-b at its next renewal)
        assert node_a.live == node_b.live == ("node-a", "node-b")
        assert client_a.max_pushes_per_second == client_b.max_pushes_per_second == rate / 2
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher_a.run)
            nursery.start_soon(pusher_b.run)
            pusher_a.wake(f"d{i}" for i in range(count))
            pusher_b.wake(f"d{i}" for i in range(count, 2 * count))
            await wait_until(lambda: pusher_a.sent + pusher_b.sent == 2 * count)
            nursery.cancel_scope.cancel()
        # Together they kept to the budget: at most `rate` pushes in any second (plus the
        # first slot of each node's bucket).
        times = sorted(p.at for p in server.pushes)
        assert len(times) == 2 * count
        busiest = max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times))
        assert busiest <= rate + 2, busiest
        # A node that stops gives its lease up: the other takes the whole budget.
        await store.release_lease(node_b.lease, "node-b")
        await node_a.beat()
        assert list(node_a.live) == ["node-a"]
        assert client_a.max_pushes_per_second == rate
