"""What keeping OMA-DM sessions in the store costs per device message: the engine's
snapshot + restore, the service's whole saved record, and the store round trips.

    python benches/bench_session_snapshot.py [--number 200] [--repeat 5]

Sessions are driven in process, as ``tests/test_windows_session.py`` drives them: the device
answers every command (Status 200, Results for a Get), one message after another, until the
session ends. After each message the cost of ``Session.restore(session.snapshot())`` is timed
(best of ``--repeat`` rounds of ``--number`` calls) and the snapshot's size noted; the table
shows the mean over the messages of a session, and the worst message. Scenarios:

* ``typical``: 10 stored commands (Gets and Replaces of ~100 bytes), MaxMsgSize 512 KB: a
  Windows check-in with a few admin commands;
* ``batch``: 50 stored commands (a full ``take`` batch), MaxMsgSize 4 KB: many commands
  waiting in the session for their message, many in flight;
* ``inventory``: one ``?list=StructData`` Get answered with a 1 MB Results in 64 KB chunks,
  one per message: the reassembly buffer travels with every snapshot (largest at the end).

Then the service's choice for the bodies of handed-out commands (the ``bodies`` of
``mdmgate.windows.service._Live``): kept in the saved record (encode + decode of the
record, and the bigger write) against read back per message with ``Store.deliveries`` on
SQLite (one more read), for the ``batch`` scenario's message with the most commands in
flight. Store calls are timed in wall time and in CPU time of the whole process (SQLite's
thread included), ``durability = "normal"`` (no fsync per commit, which would dominate).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from _timing import best_time
from mdmgate import syncml
from mdmgate.storage import DeliveryState, Device, StoredSession
from mdmgate.storage.sqlite import SQLiteStore
from mdmgate.syncml import Command, Header, Item, Message
from mdmgate.windows.service import SESSION_KIND, _Live
from mdmgate.windows.session import Outgoing, Session

SERVER = "https://mdm.example.com/ManagementServer/MDM.svc"
DEVICE = "42C4F0B2A7D94A6E"


def get_body(uri: str) -> bytes:
    return (
        f"<Get><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>".encode()
    )


def replace_body(uri: str, data: str) -> bytes:
    return (
        f"<Replace><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target>"
        f"<Meta><Format xmlns='syncml:metinf'>chr</Format></Meta><Data>{data}</Data></Item>"
        "</Replace>"
    ).encode()


def commands(count: int) -> list[Outgoing]:
    out = []
    for i in range(count):
        if i % 2:
            body = replace_body(f"./Vendor/MSFT/Policy/Config/Area{i}/Setting", "1" * 40)
        else:
            body = get_body(f"./Device/Vendor/MSFT/DeviceStatus/Node{i}")
        out.append(Outgoing(f"cmd-{i:04d}", body))
    return out


def message(msg_id: int, body: list[Command], *, final: bool = True, size: int | None) -> Message:
    meta: dict[str, str | list[str]] | None = {"MaxMsgSize": str(size)} if size else None
    header = Header(session_id="1A", msg_id=str(msg_id), target=SERVER, source=DEVICE, meta=meta)
    for index, command in enumerate(body, 1):
        command.cmd_id = str(index)
    return syncml.decode(Message(header, body, final).encode())


def answers(reply: bytes, result: Callable[[str], list[Command]] | None = None) -> list[Command]:
    decoded = syncml.decode(reply)
    ref = decoded.header.msg_id
    out = [Command("Status", msg_ref=ref, cmd_ref="0", cmd="SyncHdr", data="200")]
    for c in decoded.commands:
        if c.name == "Status":
            continue
        out.append(Command("Status", msg_ref=ref, cmd_ref=c.cmd_id, cmd=c.name, data="200"))
        if c.name == "Get":
            uri = c.items[0].target or ""
            found = result(c.cmd_id or "") if result else None
            out += found or [
                Command(
                    "Results", msg_ref=ref, cmd_ref=c.cmd_id, items=[Item(source=uri, data="42")]
                )
            ]
    return out


def drive(
    offered: list[Outgoing], size: int | None, chunks: list[str] | None = None
) -> list[Session]:
    """The session after each of its messages (copies, through a snapshot)."""
    session = Session(device_id=DEVICE, session_id="1A", server_uri=SERVER)
    session.offer(offered)
    alert = [Command("Alert", data="1201")]
    session.receive(message(1, alert, size=size))
    reply = session.reply(header_status=212)
    states = [Session.restore(session.snapshot())]
    msg_id = 1
    pending_chunks = list(chunks or [])
    ref, uri = None, ""
    while not reply.ended:
        msg_id += 1
        if pending_chunks and msg_id == 2:
            # The Get's Status and the first chunk; then one chunk per message.
            get = next(c for c in syncml.decode(reply.data).commands if c.name == "Get")
            ref, uri = get.cmd_id, get.items[0].target or ""
            status = Command("Status", msg_ref="1", cmd_ref=ref, cmd="Get", data="200")
            body = [status, chunk_results(ref, uri, pending_chunks, total(chunks))]
        elif pending_chunks:
            body = [chunk_results(ref, uri, pending_chunks, None)]
        else:
            body = answers(reply.data)
        final = not pending_chunks
        if not final:
            body.append(Command("Alert", data="1222"))
        session.receive(message(msg_id, body, final=final, size=size))
        reply = session.reply()
        states.append(Session.restore(session.snapshot()))
    return states


def total(chunks: list[str] | None) -> int:
    return sum(len(c.encode()) for c in chunks or [])


def chunk_results(ref: str | None, uri: str, pending: list[str], size: int | None) -> Command:
    data = pending.pop(0)
    meta: dict[str, str | list[str]] | None = {"Size": str(size)} if size is not None else None
    item = Item(source=uri, meta=meta, data=data, more_data=bool(pending))
    return Command("Results", msg_ref="1", cmd_ref=ref, items=[item])


def measure(states: list[Session], number: int, repeat: int) -> tuple[list[float], list[int]]:
    times, sizes = [], []
    for state in states:
        if state.ended:
            continue
        times.append(best_time(lambda s=state: Session.restore(s.snapshot()), number, repeat))
        sizes.append(len(state.snapshot()))
    return times, sizes


def bodies_choice(states: list[Session], offered: list[Outgoing], number: int, repeat: int) -> None:
    bodies = {o.command_id: o.body for o in offered}
    state = max(states, key=lambda s: s.in_flight)
    with_bodies = _Live(state, "n", "key", bodies={k: bodies[k] for k in state.in_flight_ids})
    without = _Live(state, "n", "key")
    for label, live in (("with bodies", with_bodies), ("without", without)):

        def roundtrip(lv: _Live = live) -> _Live:
            return _Live.restored("n", StoredSession(lv.saved(), 1, 0.0))

        spent = best_time(roundtrip, number, repeat)
        size = len(live.saved())
        print(f"  record {label:12s} {size:7d} bytes  encode+decode {spent * 1e6:7.1f} µs")

    async def store_costs() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store = await SQLiteStore.open(Path(tmp) / "bench.db", durability="normal")
            await store.upsert_devices([Device(DEVICE, "windows")])
            for o in offered:
                await store.enqueue(o.command_id, "syncml", o.body, [DEVICE])
            await store.take(DEVICE, "s", len(offered))
            rounds = number

            async def timed(label: str, call: Callable[[], Awaitable[object]]) -> None:
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(rounds):
                    await call()
                wall = (time.perf_counter() - wall) / rounds
                cpu = (time.process_time() - cpu) / rounds
                print(f"  SQLite {label:36s} {wall * 1e6:7.1f} µs wall {cpu * 1e6:7.1f} µs CPU")

            for label, live in (("with bodies", with_bodies), ("without", without)):
                data = live.saved()
                revs = [
                    await store.save_session(
                        SESSION_KIND, "k", data, expected_rev=None, expires_at=time.time() + 600
                    )
                ]

                async def save(data: bytes = data, revs: list[int] = revs) -> None:
                    revs[0] = await store.save_session(
                        SESSION_KIND, "k", data, expected_rev=revs[0], expires_at=time.time() + 600
                    )

                await timed(f"save_session ({label}, {len(data)} B)", save)
                await timed(
                    f"load_session ({label})", lambda: store.load_session(SESSION_KIND, "k")
                )
            found = await store.deliveries(DEVICE, [DeliveryState.SENT])
            await timed(
                f"deliveries(SENT) ({len(found)} rows)",
                lambda: store.deliveries(DEVICE, [DeliveryState.SENT]),
            )
            await store.aclose()

    trio.run(store_costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    inventory = ("<App Name='Contoso.Caf\u00e9' Version='1.0.0.0'/>" * 30000)[: 1024 * 1024]
    scenarios = {
        "typical": (commands(10), None, None),
        "batch": (commands(50), 4 * 1024, None),
        "inventory": (
            [Outgoing("inv", get_body("./Vendor/MSFT/EnterpriseModernAppManagement/AppInventory"))],
            None,
            [inventory[i : i + 65536] for i in range(0, len(inventory), 65536)],
        ),
    }
    head = ("scenario", "messages", "mean µs", "max µs", "mean B", "max B")
    print("{:10s} {:>8s} {:>9s} {:>8s} {:>8s} {:>8s}".format(*head))
    states_of = {}
    for name, (offered, size, chunks) in scenarios.items():
        states = drive(offered, size, chunks)
        states_of[name] = states
        times, sizes = measure(states, args.number if name != "inventory" else 5, args.repeat)
        print(
            f"{name:10s} {len(times):8d} {statistics.mean(times) * 1e6:9.1f}"
            f" {max(times) * 1e6:8.1f} {statistics.mean(sizes):8.0f} {max(sizes):8d}"
        )
    print("bodies of handed-out commands (batch scenario, the message with most in flight):")
    bodies_choice(states_of["batch"], scenarios["batch"][0], args.number, args.repeat)


if __name__ == "__main__":
    main()
