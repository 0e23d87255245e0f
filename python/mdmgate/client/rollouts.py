"""``mdmgate rollouts start|show|cancel``: install notifications (roll-outs) of the app
catalogue, and watching one wave by wave.

A roll-out's progress is read from the gateway: the notification (state, waves run, counts
per outcome, the commands it queued) and those commands' deliveries. A paced roll-out's
waves are consecutive runs of ``pace_per_minute`` of its devices in id order (each wave
goes on after the last device the previous one reached), so the deliveries sorted by device
id and cut every ``pace_per_minute`` are its waves; an unpaced one is one wave. Per wave a
delivery is *done* (acknowledged), *failed* (an error, or given up by the gateway) or
*pending* (queued, sent, accepted for a later report, or deferred with NotNow).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mdmgate.client.api import ApiClient, ApiError, resource
from mdmgate.client.output import LiveLines, Output, json_line, json_text, plural

__all__ = [
    "DONE",
    "FAILED",
    "Progress",
    "Wave",
    "cancel",
    "fetch_progress",
    "notification_body",
    "progress",
    "show",
    "start",
    "watch",
]

#: Delivery states that count as done and as failed; any other is pending.
DONE = frozenset({"acknowledged"})
FAILED = frozenset({"error", "failed"})
#: Notification states that end a roll-out unsuccessfully (``done`` ends it well).
UNSUCCESSFUL = frozenset({"failed", "cancelled"})
#: Width of a wave's progress bar, in characters.
BAR_WIDTH = 20


@dataclass(frozen=True)
class Wave:
    """One wave: how many devices it queued and how far their deliveries got."""

    number: int
    devices: int
    done: int
    failed: int
    pending: int

    def bar(self) -> str:
        """``=`` done, ``x`` failed, ``.`` pending, in proportion, ``BAR_WIDTH`` wide."""
        if not self.devices:
            return " " * BAR_WIDTH
        done = round(BAR_WIDTH * self.done / self.devices)
        failed = round(BAR_WIDTH * (self.done + self.failed) / self.devices) - done
        return "=" * done + "x" * failed + "." * (BAR_WIDTH - done - failed)

    def line(self) -> str:
        return (
            f"wave {self.number}  [{self.bar()}]  {plural(self.devices, 'device')}  "
            f"{self.done} done  {self.failed} failed  {self.pending} pending"
        )


@dataclass(frozen=True)
class Progress:
    """A roll-out as the gateway has it now: its notification and its waves."""

    notification: Mapping[str, Any]
    waves: tuple[Wave, ...]

    @property
    def state(self) -> str:
        return str(self.notification["state"])

    @property
    def done(self) -> int:
        return sum(w.done for w in self.waves)

    @property
    def failed(self) -> int:
        return sum(w.failed for w in self.waves)

    @property
    def pending(self) -> int:
        return sum(w.pending for w in self.waves)

    def header(self) -> str:
        n = self.notification
        version = n.get("resolved_version") or n.get("version") or "latest"
        text = f"rollout {n['id']} ({n['app_id']} {version}): {self.state}"
        text += f", {plural(int(n.get('waves') or 0), 'wave')}"
        if self.state == "running":
            text += f", next wave at {n.get('due_at')}"
        elif self.state == "scheduled":
            text += f", due at {n.get('due_at')}"
        if n.get("error"):
            text += f", error: {n['error']}"
        return text

    def summary(self) -> str:
        counts: Mapping[str, int] = self.notification.get("counts") or {}
        text = (
            f"rollout {self.notification['id']} {self.state}: {counts.get('queued', 0)} queued, "
            f"{self.done} done, {self.failed} failed, {self.pending} pending"
        )
        skipped = [f"{name} {n}" for name, n in sorted(counts.items()) if name != "queued"]
        if skipped:
            text += "; not sent: " + ", ".join(skipped)
        return text

    def lines(self) -> list[tuple[str, str]]:
        """The lines a person sees, each under a key that stays the same as it changes."""
        return [
            ("header", self.header()),
            *((f"wave {w.number}", w.line()) for w in self.waves),
            ("summary", self.summary()),
        ]

    def as_json(self) -> dict[str, Any]:
        n = self.notification
        return {
            "id": n["id"],
            "app_id": n["app_id"],
            "state": self.state,
            "version": n.get("resolved_version") or n.get("version"),
            "due_at": n.get("due_at"),
            "error": n.get("error"),
            "counts": dict(n.get("counts") or {}),
            "waves": [
                {
                    "wave": w.number,
                    "devices": w.devices,
                    "done": w.done,
                    "failed": w.failed,
                    "pending": w.pending,
                }
                for w in self.waves
            ],
            "done": self.done,
            "failed": self.failed,
            "pending": self.pending,
        }


def progress(notification: Mapping[str, Any], deliveries: Sequence[Mapping[str, Any]]) -> Progress:
    """The waves of ``notification`` from the deliveries of its commands (see the module's
    docstring). Waves that queued nothing (the last one of a paced roll-out may) show as
    waves of no devices."""
    by_device = sorted(deliveries, key=lambda d: str(d["device_id"]))
    pace = notification.get("pace_per_minute") or max(len(by_device), 1)
    waves = []
    for number, start in enumerate(range(0, len(by_device), pace), start=1):
        states = [str(d["state"]) for d in by_device[start : start + pace]]
        done = sum(s in DONE for s in states)
        failed = sum(s in FAILED for s in states)
        waves.append(Wave(number, len(states), done, failed, len(states) - done - failed))
    for number in range(len(waves) + 1, int(notification.get("waves") or 0) + 1):
        waves.append(Wave(number, 0, 0, 0, 0))
    return Progress(notification, tuple(waves))


def _deliveries(client: ApiClient, command_ids: Sequence[str]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for command_id in command_ids:
        try:
            status = client.get(resource("commands", command_id))
        except ApiError as exc:
            if exc.status == 404:  # a command with no delivery left is not shown
                continue
            raise
        found += status["deliveries"]
    return found


def fetch_progress(client: ApiClient, notification: Mapping[str, Any]) -> Progress:
    """``notification``'s progress, its commands' deliveries read now."""
    return progress(notification, _deliveries(client, notification.get("command_ids") or []))


def watch(
    client: ApiClient,
    notification: Mapping[str, Any],
    out: Output,
    *,
    interval: float,
    until_delivered: bool,
) -> int:
    """Shows the roll-out's progress as it changes until it ends; returns the exit status:
    0 when it is done, 1 when it failed or was cancelled. With ``until_delivered`` it goes
    on after the last wave until no delivery is pending, and any failed delivery is a 1."""
    live = LiveLines(out.stream, tty=out.tty)
    last_json = None
    path = resource("install-notifications", str(notification["id"]))
    while True:
        now = fetch_progress(client, notification)
        if out.json:
            snapshot = now.as_json()
            if snapshot != last_json:
                out.write(json_line(snapshot))
                last_json = snapshot
        else:
            live.show(now.lines())
        if now.state in UNSUCCESSFUL:
            return 1
        if now.state == "done" and not (until_delivered and now.pending):
            return 1 if until_delivered and now.failed else 0
        time.sleep(interval)
        notification = client.get(path)


def _show_once(client: ApiClient, notification: Mapping[str, Any], out: Output) -> int:
    if out.json:
        out.write(json_text(notification))
        return 0
    now = fetch_progress(client, notification)
    out.write("".join(text + "\n" for _, text in now.lines()))
    return 0


def notification_body(args: argparse.Namespace) -> dict[str, Any]:
    """The API's ``NotificationIn`` from ``rollouts start``'s options (those given)."""
    body: dict[str, Any] = {
        "version": args.version,
        "orgs": args.org or None,
        "devices": args.device or None,
        "all_devices": args.all_devices or None,
        "installed_only": args.installed_only or None,
        "take_over": args.take_over or None,
        "assignments": args.assignments or None,
        "at": args.at,
        "percent": args.percent,
        "seed": args.seed,
        "pace_per_minute": args.pace,
    }
    return {k: v for k, v in body.items() if v is not None}


def start(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    made = client.post(
        resource("apps", args.app_id, "install-notifications"), notification_body(args)
    )
    if args.watch:
        return watch(
            client, made, out, interval=args.interval, until_delivered=args.until_delivered
        )
    return _show_once(client, made, out)


def show(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    found = client.get(resource("install-notifications", args.rollout_id))
    if args.watch:
        return watch(
            client, found, out, interval=args.interval, until_delivered=args.until_delivered
        )
    return _show_once(client, found, out)


def cancel(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    cancelled = client.delete(resource("install-notifications", args.rollout_id))
    return _show_once(client, cancelled, out)
