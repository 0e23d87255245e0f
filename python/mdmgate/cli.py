"""The ``mdmgate`` command.

Bad input to any command prints one line naming the problem on stderr, nothing on
stdout, and exits with status 2.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import plistlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from mdmgate import __version__, plist, syncml, versions
from mdmgate.client import cli as client_cli
from mdmgate.errors import MdmgateError
from mdmgate.simulate import cli as simulate_cli

USAGE_ERROR = 2

EPILOG = """\
examples:
  mdmgate version compare --platform ios 1.2b3 1.2        prints <
  mdmgate version compare --platform windows 1.2.3.4 1.2.3.9   prints = (4th part ignored)
  printf '10\\n9\\n100\\n' | mdmgate version sort --platform android
  mdmgate syncml decode request.xml > request.json
  mdmgate syncml encode --wbxml request.json > request.wbxml
  mdmgate syncml decode request.wbxml | mdmgate syncml encode    (WBXML to XML)
  MDMGATE_URL=https://mdm.example.com mdmgate devices list --org /acme   (a running gateway;
      devices, commands, rollouts, events, tokens: token from MDMGATE_API_TOKEN; docs/api.md)
"""

PLIST_EPILOG = """\
In the JSON, data is {"base64": "..."}, dates are {"date": "2024-02-29T12:34:56Z"} (UTC),
UIDs are {"uid": 5} and a binary null is null; everything else maps directly.

examples:
  mdmgate plist decode report.plist > report.json
  mdmgate plist encode --binary report.json > report.bplist
  mdmgate plist decode report.bplist | mdmgate plist encode    (binary to XML)
"""

SERVE_EPILOG = """\
endpoints:
  POST /ManagementServer/MDM.svc   Windows OMA-DM (SyncML XML or WBXML)      docs/windows.md
  PUT  /mdm/apple/checkin          Apple check-in and declarative management  docs/apple.md
  PUT  /mdm/apple/connect          Apple command channel
  /api/v1/...                      admin API (bearer token); /api/v1/openapi.json describes it
  /api/v1/apps, /api/v1/orgs, ...  app catalogue, install notifications, auto-update  docs/apps.md
  /api/v1/events                   the event log: a cursor (after=) and long polls (wait=)
  /api/v1/webhooks                 signed, retried pushes of the event log   docs/api.md
  /api/v1/tokens                   named API tokens, scope read or full
  /EnrollmentServer/Discovery.svc  Windows enrollment (MS-MDE2; policy and enrollment
                                   services next to it)                       docs/enrollment.md
  GET  /mdm/apple/enroll?token=T   Apple enrollment profile (signed); SCEP at /mdm/apple/scep
  /healthz, /readyz                liveness; readiness (the database answers) for balancers
  /metrics                         Prometheus metrics (bearer token, see below)

examples:
  MDMGATE_API_TOKEN=s3cret mdmgate serve
  mdmgate serve --listen 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem --client-ca ca.pem
  mdmgate serve --dev --db memory:
  curl -H 'Authorization: Bearer s3cret' http://127.0.0.1:8080/api/v1/openapi.json
  curl -H 'Authorization: Bearer s3cret' http://127.0.0.1:8080/metrics

/metrics needs the admin API's bearer token on the main port, which faces devices.
Prometheus sends it with `authorization: {credentials: s3cret}` in the scrape config. Or
give metrics their own address, where they are open (the Prometheus convention: bind it
where only the monitoring network reaches); the main port then answers 404 for /metrics:
  mdmgate serve --listen 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem \\
                --metrics-listen 10.0.0.5:9100
  curl http://10.0.0.5:9100/metrics

config file (TOML), every key optional:
  listen = ["0.0.0.0:8080"]    db = "sqlite:///var/lib/mdmgate/mdmgate.db"
  workers = 2    durability = "full"    api_token = "..."    dev = false
  metrics = "token"   (or "open": no token; default "token", "open" on metrics_listen)
  metrics_listen = "10.0.0.5:9100"   (cleartext, /metrics, /healthz and /readyz only)
  node_name = "gw-1"   (this node among the gateways sharing the database: the `node` label
            of every metric; default hostname:pid; with workers, "gw-1/0", "gw-1/1", ...)
  [limits]  max_body_bytes = 16777216  read_timeout = 10.0  max_in_flight = 256  ...
            max_connections = 1000   max_connections_per_client = 250   (one address, or
            one IPv6 /64: more get 429; devices behind one NAT share it, so raise it for
            a big site behind one address)
            trusted_proxies = ["10.0.0.0/8"]   (your reverse proxies and load balancers,
            exempt from the per-client budget; default none, headers are not trusted)
            shed_idle_at = 0.9   (from 90% of max_connections each new connection closes
            the one waiting longest, idle or without a complete request head; above 1:
            never; 503 only when none waits)
  [apns]    topic = "com.apple.mgmt.External.<uuid>"  cert = "push.pem"  key = "push.key"
            rate = 200.0   (pushes/s; url defaults to https://api.push.apple.com)
            or token auth: auth_key = "AuthKey_ABC123.p8"  key_id = "ABC123"  team_id = "..."
  [windows] max_offers = 5   (a command handed out this often without any answer ends
            "failed": it crashes the device or its answer cannot be read; default 5)
            server_username = "..."  server_secret = "..."   (the gateway's own OMA-DM
            credentials for devices that require the server to authenticate; a device's
            auth.server_username/server_secret win)
            server_auth = "on_challenge"   (or "required": sent from the first message)
  [apple]   max_offers = 5   (likewise for Apple commands: the device asked for the next
            command instead of answering this one; a NotNow starts the count again)
  [enrollment]  (docs/enrollment.md) the built-in CA is on once its key has a passphrase:
            ca_passphrase = "..."  or MDMGATE_CA_PASSPHRASE in the environment (better)
            public_url = "https://mdm.example.com"   (the base of enrollment URLs;
            default: each request's Host)   root_key = "rsa-3072"   ca_name = "..."
            device_validity_days = 365   root_validity_days = 3650   min_rsa_bits = 2048
            ca_cert = "ca.pem"  ca_key = "ca.key"   (your own issuing CA instead)
            windows_auth_policy = "OnPremise" (or "Federated" + windows_federated_url)
            windows_encoding = "xml"   windows_poll_minutes = 480   windows_renew_days = 42
            windows_first_poll_minutes = 15   windows_first_polls = 8
            windows_policy_url/windows_enrollment_url   (an external enrollment service)
            apple_topic = "com.apple.mgmt.External.<uuid>"   (else the uploaded push
            certificate's: PUT /api/v1/apns/certificate)   apple_organization = "..."
            apple_scep_url + apple_scep_challenge, or apple_acme_url   (external identity)
            apple_profile_cert/apple_profile_key   (sign profiles with another certificate)
            challenge_minutes = 60   (how long a profile's SCEP challenge stays usable)
  [events]  retention_days = 30   (events older than this are pruned, hourly, by one node; a
            console offline longer must read the resources again)
  [webhooks] (docs/api.md)
            allow_private = false   (true lets webhook URLs reach loopback, private and other
            internal addresses, plain http too: receivers on this host or network; --dev
            implies it)
            max_attempts = 15   (failed attempts at one event, with backoff from 1 s to 10
            min, before it becomes a dead letter: about 30-60 min of outage lose nothing)
            timeout = 10.0   (seconds for one request, connecting included: a receiver
            answers at once and works afterwards)
  [testing] clock_scale = 30.0  clock_epoch = 1767225600.0   (tests only: the catalogue's
            clock runs 30x as fast from that Unix time, the same on every node, so waves
            paced per minute come every 2 s)

client commands for a running gateway (docs/api.md: the API, events, webhooks):
  mdmgate devices|commands|rollouts|events|tokens --help
"""

SYNCML_EPILOG = """\
The JSON uses SyncML's element names as keys and keeps command order; docs/syncml.md
describes it. Binary WBXML data that is not UTF-8 appears as {"base64": "..."}.

examples:
  mdmgate syncml decode request.xml > request.json
  mdmgate syncml encode --wbxml request.json > request.wbxml
  mdmgate syncml decode request.wbxml | mdmgate syncml encode    (WBXML to XML)
"""


class _InputError(Exception):
    """Bad input found by a command; the message is the whole error line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other input error of the command.
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


@dataclass(frozen=True)
class _Codec:
    """The decode/encode command pair of one wire format."""

    name: str
    help: str
    description: str
    epilog: str
    decode_help: str
    decode_description: str
    encode_help: str
    encode_description: str
    #: The encode option choosing the other encoding, and its help.
    flag: str
    flag_help: str


SYNCML_CLI = _Codec(
    name="syncml",
    help="convert OMA-DM SyncML messages (XML, WBXML) to and from JSON",
    description="Convert OMA-DM SyncML 1.2 messages between XML/WBXML and JSON.",
    epilog=SYNCML_EPILOG,
    decode_help="SyncML (XML or WBXML, detected) to JSON on stdout",
    decode_description=(
        "Read a SyncML message (XML or WBXML, detected from its first byte) and print it "
        "as JSON. Hostile input (DTD subsets, entity tricks, oversized or deeply nested "
        "messages) is refused with the byte offset of the problem."
    ),
    encode_help="JSON to SyncML bytes on stdout (XML unless --wbxml)",
    encode_description=(
        "Read the JSON form of a message and write SyncML XML (or WBXML with --wbxml). "
        'Every command needs a unique CmdID other than "0".'
    ),
    flag="--wbxml",
    flag_help="write WBXML instead of XML",
)

PLIST_CLI = _Codec(
    name="plist",
    help="convert property lists (XML, binary) to and from JSON",
    description="Convert Apple property lists (XML or binary bplist00) to and from JSON.",
    epilog=PLIST_EPILOG,
    decode_help="plist (XML or binary, detected) to JSON on stdout",
    decode_description=(
        "Read a property list (XML, or binary when it starts with bplist00) and print it as "
        "JSON. Entity declarations, reference cycles and exponential shared references "
        "are refused with the byte offset of the problem."
    ),
    encode_help="JSON to a plist on stdout (XML unless --binary)",
    encode_description="Read JSON and write it as an XML property list, or binary with --binary.",
    flag="--binary",
    flag_help="write bplist00 instead of XML",
)


def _add_codec(commands: Any, codec: _Codec) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = commands.add_parser(
        codec.name,
        help=codec.help,
        description=codec.description,
        epilog=codec.epilog,
        formatter_class=formatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    for action, help_, description in (
        ("decode", codec.decode_help, codec.decode_description),
        ("encode", codec.encode_help, codec.encode_description),
    ):
        sub = actions.add_parser(
            action,
            help=help_,
            description=description,
            epilog=codec.epilog,
            formatter_class=formatter,
        )
        sub.add_argument("file", nargs="?", default="-", metavar="FILE", help="input, - for stdin")
        if action == "encode":
            sub.add_argument(codec.flag, action="store_true", help=codec.flag_help)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mdmgate",
        description="mdmgate: a device-management gateway for Windows and Apple fleets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mdmgate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    version = commands.add_parser(
        "version",
        help="compare and sort app versions by platform rules",
        description=(
            "Order app versions the way the platform does. Platforms: "
            + ", ".join(versions.PLATFORMS)
            + " (ipados is accepted as ios). See docs/versions.md for each rule."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = version.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True

    compare = actions.add_parser(
        "compare",
        help="print <, = or > for two versions",
        description="Print '<', '=' or '>' as A is lower than, equal to or higher than B.",
    )
    compare.add_argument("--platform", required=True, metavar="P", help="version rule to use")
    compare.add_argument("a", metavar="A")
    compare.add_argument("b", metavar="B")

    sort = actions.add_parser(
        "sort",
        help="sort versions read one per line from stdin",
        description=(
            "Read versions one per line from stdin and print them ascending. Blank lines "
            "are skipped; versions that order equal keep their input order."
        ),
    )
    sort.add_argument("--platform", required=True, metavar="P", help="version rule to use")
    sort.add_argument("--reverse", action="store_true", help="print the highest first")

    _add_codec(commands, SYNCML_CLI)
    _add_codec(commands, PLIST_CLI)

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description=(
            "Run the gateway: device endpoints and the admin API on one port, HTTP/1.1 and "
            "HTTP/2 (cleartext by prior knowledge, ALPN under TLS). SIGINT or SIGTERM stop "
            "accepting, let requests in flight finish, and exit. The admin API's bearer token "
            "comes from MDMGATE_API_TOKEN or the config file."
        ),
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on, repeatable (default 127.0.0.1:8080)",
    )
    serve.add_argument(
        "--db",
        metavar="URL",
        help="sqlite:///PATH (default sqlite:///./mdmgate.db; one node), "
        "postgresql://[USER[:PASSWORD]@][HOST][:PORT]/DB (libpq URL, e.g. "
        "?host=/run/postgresql for a socket; PGHOST, PGUSER, PGPASSWORD... fill in what it "
        "leaves out; several nodes may share it), or memory: (nothing is kept)",
    )
    serve.add_argument("--workers", type=int, metavar="N", help="processes sharing the port")
    serve.add_argument("--tls-cert", metavar="F", help="server certificate chain (PEM)")
    serve.add_argument("--tls-key", metavar="F", help="server private key (PEM)")
    serve.add_argument(
        "--client-ca", metavar="F", help="CA whose device certificates are accepted (PEM)"
    )
    serve.add_argument("--config", metavar="F", help="TOML configuration file")
    serve.add_argument(
        "--node-name",
        metavar="NAME",
        help="this node's name among the gateways sharing the database (metrics label `node`,"
        " leases; default hostname:pid)",
    )
    serve.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve /metrics (open, cleartext) on this address instead of the main port,"
        " where it needs the API token",
    )
    serve.add_argument(
        "--apns-url",
        metavar="URL",
        help="APNs base URL (default https://api.push.apple.com; point tests and staging at"
        " a local HTTP/2 server); pushing needs [apns] topic in the config",
    )
    serve.add_argument(
        "--dev",
        action="store_true",
        default=None,
        help="development mode: no registration or credentials needed (never in production)",
    )
    client_cli.add_commands(commands)
    simulate_cli.add_command(commands)
    return parser


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        raise _InputError(f"cannot read {name}: {e.strerror}") from None


def _json_safe(value: Any) -> Any:
    """Values JSON lacks become one-key objects: bytes, dates and UIDs."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime.datetime):
        fraction = f".{value.microsecond:06d}" if value.microsecond else ""
        return {"date": value.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"}
    if isinstance(value, plistlib.UID):
        return {"uid": value.data}
    return value


def _tagged(tag: str, inner: Any) -> Any:
    if tag == "base64" and isinstance(inner, str):
        try:
            return base64.b64decode(inner, validate=True)
        except ValueError:
            raise _InputError('a {"base64": ...} value is not valid base64') from None
    if tag == "date" and isinstance(inner, str):
        try:
            return datetime.datetime.fromisoformat(inner.removesuffix("Z"))
        except ValueError:
            raise _InputError(f'{{"date": {inner!r}}} is not an ISO 8601 date') from None
    if tag == "uid" and isinstance(inner, int) and not isinstance(inner, bool):
        return plistlib.UID(inner)
    return {tag: _from_json(inner)}


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            return _tagged(tag, inner)
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _syncml_decode(args: argparse.Namespace) -> str:
    message = syncml.to_dict(_read_input(args.file))
    return json.dumps(_json_safe(message), indent=2, ensure_ascii=False) + "\n"


def _read_json(name: str) -> Any:
    data = _read_input(name)
    try:
        message = json.loads(data)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
        raise _InputError(f"input is not JSON: {e.msg} ({where})") from None
    except UnicodeDecodeError as e:
        raise _InputError(f"input is not UTF-8 (at byte {e.start})") from None
    return _from_json(message)


def _syncml_encode(args: argparse.Namespace) -> bytes:
    message = _read_json(args.file)
    if not isinstance(message, dict):
        raise _InputError("input must be a JSON object with SyncHdr and SyncBody")
    return syncml.from_dict(message, wbxml=args.wbxml)


def _plist_decode(args: argparse.Namespace) -> str:
    value = plist.loads(_read_input(args.file))
    return json.dumps(_json_safe(value), indent=2, ensure_ascii=False) + "\n"


def _plist_encode(args: argparse.Namespace) -> bytes:
    value = _read_json(args.file)
    try:
        return plist.dumps(value, binary=args.binary)
    except (TypeError, OverflowError) as e:
        raise _InputError(f"cannot write as a plist: {e}") from None


def _version_compare(args: argparse.Namespace) -> str:
    result = versions.compare(args.a, args.b, platform=args.platform)
    return "<=>"[result + 1] + "\n"


def _version_sort(args: argparse.Namespace) -> str:
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _InputError(f"stdin is not UTF-8 (at byte {e.start})") from None
    lines: list[str] = []
    line_numbers: list[int] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if line.strip():
            lines.append(line)
            line_numbers.append(number)
    try:
        ordered = versions.sort(lines, platform=args.platform, reverse=args.reverse)
    except versions.InvalidVersion as e:
        if e.index is None:
            raise
        detail = e.message.removeprefix(f"item {e.index}: ")
        raise _InputError(f"line {line_numbers[e.index]}: {detail}") from None
    return "".join(f"{v}\n" for v in ordered)


def _serve(args: argparse.Namespace) -> int:
    from mdmgate.server import app  # noqa: PLC0415 - the server stack is loaded only to serve

    overrides = {
        "listen": args.listen,
        "db": args.db,
        "workers": args.workers,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "client_ca": args.client_ca,
        "dev": args.dev,
        "apns_url": args.apns_url,
        "metrics_listen": args.metrics_listen,
        "node_name": args.node_name,
    }
    try:
        config = app.load_config(args.config, overrides)
    except app.ConfigError as e:
        print(f"mdmgate: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    try:
        return app.run(config)
    except app.ConfigError as e:
        # Found only on start: a stored CA the passphrase does not open, unreadable CA files.
        print(f"mdmgate: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as e:
        print(f"mdmgate: error: {e}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command in client_cli.GROUPS:
        return client_cli.run(args)
    if args.command == "simulate":
        return simulate_cli.run(args)
    handlers: dict[tuple[str, str], Callable[[argparse.Namespace], str | bytes]] = {
        ("version", "compare"): _version_compare,
        ("version", "sort"): _version_sort,
        ("syncml", "decode"): _syncml_decode,
        ("syncml", "encode"): _syncml_encode,
        ("plist", "decode"): _plist_decode,
        ("plist", "encode"): _plist_encode,
    }
    handler = handlers[(args.command, args.action)]
    try:
        output = handler(args)
    except (MdmgateError, _InputError) as e:
        print(f"mdmgate: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    try:
        if isinstance(output, bytes):
            sys.stdout.buffer.write(output)
        else:
            sys.stdout.write(output)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`); not an error of ours.
        sys.stderr.close()
    return 0
