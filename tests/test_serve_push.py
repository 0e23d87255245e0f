"""`mdmgate serve`'s wiring of push: with an [apns] topic, an enqueue for an Apple device
reaches the (local) APNs server with the device's PushMagic."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import trio

from mdmgate import plist
from mdmgate.server import app
from tests.apns_server import ApnsServer, running

TOPIC = "com.apple.mgmt.External.serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_enqueue_pushes_through_the_configured_apns(tmp_path: Path) -> None:
    apns = ApnsServer()
    async with running(apns) as apns_url:
        port = free_port()
        config_file = tmp_path / "mdmgate.toml"
        config_file.write_text(f'[apns]\ntopic = "{TOPIC}"\nrate = 100.0\n')
        config = app.load_config(
            str(config_file),
            {
                "apns_url": apns_url,
                "listen": f"127.0.0.1:{port}",
                "db": f"sqlite:///{tmp_path}/gw.db",
                "dev": True,  # devices check in without certificates here
                "api_token": "t",
            },
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app._serve, config, False, False)
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base) as client:
                with trio.fail_after(10):
                    while True:
                        try:
                            await client.get("/healthz")
                            break
                        except httpx.ConnectError:
                            await trio.sleep(0.01)
                checkin = {"content-type": "application/x-apple-aspen-mdm-checkin"}
                for message in (
                    {"MessageType": "Authenticate", "Topic": TOPIC, "ProductName": "iPad13,1"},
                    {
                        "MessageType": "TokenUpdate",
                        "Topic": TOPIC,
                        "Token": bytes.fromhex("feedface"),
                        "PushMagic": "magic-serve",
                    },
                ):
                    body = plist.dumps({"UDID": "udid-serve", **message})
                    r = await client.put("/mdm/apple/checkin", content=body, headers=checkin)
                    assert r.status_code == 200, r.text
                r = await client.post(
                    "/api/v1/devices/udid-serve/commands",
                    json={"apple_app": {"action": "refresh_inventory"}},
                    headers={"authorization": "Bearer t"},
                )
                assert r.status_code == 202, r.text
                with trio.fail_after(10):
                    while not apns.accepted("feedface"):
                        await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    (push,) = apns.accepted("feedface")
    assert push.payload == {"mdm": "magic-serve"}
    assert push.headers["apns-topic"] == TOPIC
