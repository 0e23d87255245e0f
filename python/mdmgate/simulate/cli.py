"""``mdmgate simulate``: a fleet of simulated devices against a gateway, with a ledger check
(:func:`add_command` and :func:`run` are wired into ``mdmgate``'s command line).

Exit status: 0 the run was clean, 1 the ledger found problems, 2 bad input or a target that
cannot be used (one line naming the problem on stderr).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
import trio

from mdmgate.simulate import runner
from mdmgate.simulate.scenario import (
    DEFAULT_SCENARIO,
    MAX_DEVICES,
    Scenario,
    ScenarioError,
    load_scenario,
    with_overrides,
)
from mdmgate.simulate.stats import ENROLL, SILENT, SIMULATOR, gateway_fault

__all__ = ["add_command", "run"]

USAGE_ERROR = 2
#: The shell's status for a command ended by SIGINT.
INTERRUPTED = 130

DESCRIPTION = """\
Run a fleet of simulated Windows (OMA-DM) and Apple (MDM) devices against a gateway - this
one or any other - for load, soak and capacity tests. Devices check in on their platform's
cadence (compressed by --time-factor), answer the commands they get like real ones (with
the scenario's error, timeout and NotNow rates), and a ledger records every command each
device received and answered. With an API token the fleet is registered first, the
scenario's workload is queued through the admin API, and at the end each device's
deliveries are read back: a command lost, handed out twice or to the wrong device, or
stored with another answer than the device gave fails the run (exit status 1). With
--enroll the devices enroll instead of being registered, as real ones do: Windows through
MS-MDE2, Apple through the enrollment profile and SCEP, each with an enrollment token per
org; a device that ends the run not enrolled fails it too."""

EPILOG = """\
examples:
  mdmgate serve --dev --db sqlite:///sim.db --config sim.toml &
  MDMGATE_API_TOKEN=s3cret mdmgate simulate --target http://127.0.0.1:8080 \\
      --devices 2000 --duration 120 --time-factor 1440 --report sim-report
  mdmgate simulate --target https://mdm.staging.example.com --allow-host \\
      mdm.staging.example.com --cacert staging-ca.pem --scenario soak.toml --json
  MDMGATE_CA_PASSPHRASE=... mdmgate serve --db sqlite:///sim.db --config sim.toml \\
      --tls-cert server.pem --tls-key server.key --listen 127.0.0.1:8443 &
  MDMGATE_API_TOKEN=s3cret mdmgate simulate --target https://127.0.0.1:8443 \\
      --cacert ca.pem --enroll --devices 500 --duration 120

the gateway under test:
  every session is one connection from 127.0.0.1, so raise its [limits]
  max_connections_per_client (and max_connections) above --concurrency; pushes reach the
  APNs stand-in when the gateway runs with --apns-url (printed at the start; fix its
  address with --apns-listen) and [apns] topic = "com.apple.mgmt.External.mdmgate-simulate"
  (or --apns-topic). Without a token the gateway must accept unregistered devices (--dev)
  and the ledger is not checked against it. Device ids follow from the seed: against a
  database that saw a run, use another --seed.

scenario file (TOML; every key optional; unknown keys are refused):
  seed = 1
  [fleet]     devices = 1000  orgs = ["/simulated"]  windows = 0.6  ios = 0.3
              ipados = 0.05  macos = 0.05   [[fleet.apps]] platforms, identifier, share,
              versions = {"1.0" = 1.0}
  [rates]     error  timeout  not_now  wbxml  new_connection   (shares 0..1)
  [cadence]   windows = 28800.0  ios = 14400.0  ipados  macos  jitter = 0.1   (seconds)
  [run]       duration  time_factor  ramp_up  concurrency  max_rate  grace
  [windows]   auth = "md5"|"basic"|"certificate"  max_msg_size  inventory_bytes
              install_delay_sessions
  [apple]     auth = "signature"|"mtls"
  [workload]  inventory_every = N (an inventory with every Nth Windows session)
              install_per = N (one app install per N devices)
  [enrollment] enabled = false (--enroll)  windows_key = "rsa"|"ec"
"""


class _Usage(Exception):
    """Bad input; the text is the whole error line after the command's name."""


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def add_command(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``simulate`` to the ``mdmgate`` command's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="run a fleet of simulated devices against a gateway (load, soak, capacity)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(parser)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        required=True,
        metavar="URL",
        help="the gateway: http(s)://host[:port] (loopback unless --allow-host names it)",
    )
    parser.add_argument("--scenario", metavar="FILE", help="scenario (TOML; default built in)")
    parser.add_argument(
        "--devices", type=_whole, metavar="N", help=f"fleet size, 1 .. {MAX_DEVICES:,}"
    )
    parser.add_argument(
        "--duration", type=_number, metavar="S", help="seconds of check-ins before draining"
    )
    parser.add_argument(
        "--concurrency", type=_whole, metavar="N", help="sessions in flight at most"
    )
    parser.add_argument(
        "--max-rate",
        type=_number,
        metavar="R",
        help="sessions started per second at most (0: no bound)",
    )
    parser.add_argument(
        "--time-factor",
        type=_number,
        metavar="F",
        help="device time runs F times as fast: the cadence is divided by F",
    )
    parser.add_argument("--seed", type=_whole, metavar="N", help="fleet and behaviour seed")
    parser.add_argument(
        "--grace", type=_number, metavar="S", help="seconds the fleet may take to drain"
    )
    parser.add_argument(
        "--token",
        metavar="T",
        help="admin API token (default $MDMGATE_API_TOKEN): registration, workload, ledger",
    )
    parser.add_argument("--cacert", metavar="F", help="CA file to verify an https target")
    parser.add_argument(
        "--report", metavar="DIR", help="write report.json and report.html into DIR"
    )
    parser.add_argument(
        "--no-register", action="store_true", help="do not register the fleet first"
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a non-loopback target host that may be loaded (repeatable)",
    )
    parser.add_argument(
        "--apns-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the APNs stand-in listens (default any free loopback port)",
    )
    parser.add_argument("--no-apns", action="store_true", help="start no APNs stand-in")
    parser.add_argument("--apns-topic", metavar="TOPIC", help="the push topic devices enroll with")
    parser.add_argument(
        "--device-ca",
        metavar="F",
        help="CA certificate and EC key (PEM) that issues the devices' TLS client certificates"
        " (apple.auth = mtls, windows.auth = certificate); the gateway's --client-ca",
    )
    parser.add_argument(
        "--enroll",
        action="store_true",
        help="devices enroll at their first check-in (MS-MDE2; profile and SCEP) instead of"
        " being registered: the gateway must serve enrollment under TLS",
    )
    parser.add_argument(
        "--enrollment-token",
        metavar="VALUE",
        help="an enrollment token value every device enrolls with (implies --enroll; by"
        " default the run makes one per org with the admin API token)",
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")


def _scenario(args: argparse.Namespace) -> tuple[Scenario, str]:
    if args.scenario:
        scenario, name = load_scenario(args.scenario), args.scenario
    else:
        scenario, name = DEFAULT_SCENARIO, "built-in default"
    overrides = {
        key: getattr(args, option)
        for option, key in _OVERRIDES.items()
        if getattr(args, option) is not None
    }
    if args.enroll or args.enrollment_token:
        overrides["enrollment.enabled"] = True
    if overrides:
        try:
            scenario = with_overrides(scenario, overrides)
        except ScenarioError as e:
            raise _Usage(_option_name(str(e))) from None
    return scenario, name


#: Options that replace a scenario key.
_OVERRIDES = {
    "devices": "fleet.devices",
    "duration": "run.duration",
    "concurrency": "run.concurrency",
    "max_rate": "run.max_rate",
    "time_factor": "run.time_factor",
    "grace": "run.grace",
    "seed": "seed",
}


_OPTIONS = {key: "--" + option.replace("_", "-") for option, key in _OVERRIDES.items()}


def _option_name(message: str) -> str:
    """A scenario key in an error about an option's value, as the option."""
    key, _, rest = message.partition(": ")
    option = _OPTIONS.get(key)
    return f"{option}: {rest}" if option else message


def run(args: argparse.Namespace) -> int:
    """Runs ``mdmgate simulate``; the exit status."""
    err = sys.stderr
    try:
        scenario, name = _scenario(args)
        token = args.token if args.token is not None else os.environ.get("MDMGATE_API_TOKEN")
        options = runner.RunOptions(
            target=args.target,
            scenario=scenario,
            scenario_name=name,
            token=token or None,
            cacert=args.cacert,
            register=not args.no_register,
            allow_hosts=tuple(args.allow_host),
            apns_listen=None if args.no_apns else args.apns_listen,
            apns_topic=args.apns_topic,
            device_ca=args.device_ca,
            enrollment_token=args.enrollment_token or None,
        )
        runner.check_target(options.target, options.allow_hosts)
        _check_listen(options.apns_listen)
        if args.cacert and not os.path.isfile(args.cacert):
            raise _Usage(f"--cacert {args.cacert}: no such file")
        outcome = trio.run(lambda: runner.run(options, progress=err, tty=err.isatty()))
    except (_Usage, ScenarioError, runner.RunError) as e:
        print(f"mdmgate simulate: error: {e}", file=err)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("mdmgate simulate: interrupted: no ledger check, no report", file=err)
        return INTERRUPTED
    ledger = outcome.ledger.to_builtins() if outcome.ledger is not None else None
    if args.report:
        from mdmgate.simulate import report  # noqa: PLC0415 - only when asked for

        _, html_path = report.write(Path(args.report), outcome.stats, ledger, outcome.meta)
        outcome.notes.append(f"report: {html_path}")
    if args.json:
        document = {
            "meta": outcome.meta,
            "totals": outcome.stats.totals(),
            "ledger": ledger,
            "notes": outcome.notes,
            "exit_status": outcome.exit_status,
        }
        sys.stdout.write(msgspec.json.encode(document).decode() + "\n")
    else:
        for line in _describe(outcome):
            print(line)
    return outcome.exit_status


def _check_listen(listen: str | None) -> None:
    if listen is None:
        return
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise _Usage(f"--apns-listen {listen!r} is not HOST:PORT")


def _describe(outcome: runner.RunOutcome) -> list[str]:
    """The run's summary, as lines for people."""
    totals = outcome.stats.totals()["all"]
    latency = totals["latency"]
    lines = [
        f"sessions {totals['sessions']:,}, messages {totals['messages']:,}, commands received "
        f"{totals['received']:,}, answered {totals['answered']:,}",
        "latency p50 "
        + _ms(latency["p50"])
        + ", p99 "
        + _ms(latency["p99"])
        + ", max "
        + _ms(latency["max"]),
    ]
    errors: dict[str, int] = totals["errors"]
    failed = {k: v for k, v in errors.items() if gateway_fault(k) and not k.startswith("enroll_")}
    if failed:
        lines.append("session errors: " + ", ".join(f"{k} {v:,}" for k, v in failed.items()))
    if errors.get(SILENT):
        lines.append(
            f"sessions silent on purpose: {errors[SILENT]:,} (the scenario's rates.timeout, "
            "not the gateway's doing)"
        )
    if errors.get(SIMULATOR):
        lines.append(f"simulator faults: {errors[SIMULATOR]:,} (see the notes)")
    enrolled = outcome.stats.totals().get(ENROLL)
    if enrolled is not None:
        whole = enrolled["all"]
        lines.append(
            f"enrollment: {whole['enrolled']:,} devices enrolled, {whole['failed']:,} attempts "
            f"failed; latency p50 {_ms(whole['latency']['p50'])}, "
            f"p99 {_ms(whole['latency']['p99'])}"
        )
        if whole["errors"]:
            kinds = ", ".join(f"{k} {v:,}" for k, v in whole["errors"].items())
            lines.append(f"enrollment errors: {kinds}")
    if outcome.not_enrolled:
        lines.append(f"not enrolled at the end: {outcome.not_enrolled:,} devices (the run fails)")
    ledger = outcome.ledger
    if ledger is None:
        lines.append("ledger: not checked (no API token)")
    else:
        counts = ", ".join(f"{k} {v:,}" for k, v in ledger.counts.items() if v)
        verdict = "clean" if ledger.clean else f"{ledger.problem_count:,} problems"
        lines.append(f"ledger over {ledger.devices_checked:,} devices: {verdict}; {counts}")
        lines.extend(
            f"  {p.category}: device {p.device_id} command {p.command_id}: {p.detail}"
            for p in ledger.problems
        )
        lines.extend(f"  unreadable: {k} ({v:,} devices)" for k, v in ledger.unreadable.items())
    lines.extend(f"note: {n}" for n in outcome.notes)
    return lines


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"
