"""A cluster of real ``mdmgate serve`` processes sharing one database, for the multi-node tests
and the cluster benchmark.

:class:`Cluster` starts N nodes (``python -m mdmgate serve --listen 127.0.0.1:PORT --db URL
--config F --node-name NAME``, each on a port of its own that it keeps across restarts, or one
node with ``--workers N``), waits until each answers ``/healthz`` (under a deadline, failing
with the log's tail if the process exits first), SIGKILLs and restarts a node, and stops them
all at the end (SIGTERM, then SIGKILL after a grace period). Each node runs in a process group
of its own, so a SIGKILL takes its workers down with it. Every node's stdout and stderr go to
``<root>/logs/<name>.log`` (appended across restarts, a marker line per start): a pipe nobody
reads would stall a busy server.

The database is the caller's: a SQLite file (:meth:`Cluster.sqlite_url`) or a PostgreSQL
database (``tests/conftest_pg.py``'s server; :func:`postgres_database` creates a fresh one).

:class:`Balancer` plays the load balancer in front of the nodes: its httpx transports send each
request to the next node in rotation (so every message of a device's session reaches another
node), skip nodes taken out of rotation, and count requests in flight per node, so that a test
can take a node out, let its requests finish, and only then kill it (as a balancer stops
sending to a node whose ``/readyz`` fails). With ``fresh_connections`` every request opens a
new connection: with ``--workers`` the kernel then spreads them over the workers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import trio
import trustme

__all__ = [
    "TOKEN",
    "Balancer",
    "Cluster",
    "Node",
    "Pki",
    "free_port",
    "postgres_database",
    "process_cpu_seconds",
]

#: The admin API's bearer token of every node.
TOKEN = "cluster-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
HOST = "127.0.0.1"
#: Polls of /healthz while a node starts (a poll interval, not a wait for readiness).
_POLL = 0.05


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def postgres_database(server: Any, prefix: str = "cluster") -> str:
    """A new, empty database on ``server`` (a ``tests.postgres_server.PostgresServer``);
    returns its libpq URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    server.create_database(name)
    url: str = server.dsn(name)
    return url


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc``)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def process_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the processes (``/proc/<pid>/stat``), those gone count 0."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


@dataclass
class Pki:
    """A CA (trustme), the nodes' server certificate for 127.0.0.1, and device identities
    (``ca`` ``None``: files made elsewhere, no new identities)."""

    ca: trustme.CA | None
    ca_file: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert(HOST)
        pki = cls(ca, directory / "ca.pem", directory / "server.pem", directory / "server.key")
        ca.cert_pem.write_to_path(str(pki.ca_file))
        server.cert_chain_pems[0].write_to_path(str(pki.cert))
        server.private_key_pem.write_to_path(str(pki.key))
        return pki

    def identity(self, directory: Path, name: str) -> tuple[Path, bytes]:
        """A device identity: a PEM file with its key and certificate, and the DER."""
        assert self.ca is not None
        cert = self.ca.issue_cert(f"{name}.devices.example")
        pem = directory / f"{name}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
        der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
        return pem, der

    def client_context(self, identity: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if identity is not None:
            context.load_cert_chain(str(identity))
        return context

    def serve_args(self) -> list[str]:
        return [
            "--tls-cert",
            str(self.cert),
            "--tls-key",
            str(self.key),
            "--client-ca",
            str(self.ca_file),
        ]


@dataclass
class Node:
    """One ``mdmgate serve`` (with its workers, if any), on a port of its own."""

    name: str
    port: int
    log: Path
    scheme: str = "http"
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: The pids of its processes as last seen (the serve process, then its workers).
    pids: list[int] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NodeFailed(AssertionError):
    """A node did not start, or died."""


class Cluster:
    """N nodes sharing the database ``db``; use as ``async with Cluster(...) as cluster:``.

    ``config``: the TOML every node reads (``--config``); ``workers``: ``--workers`` of each
    node; ``pki``: serve under TLS with ``--client-ca`` (devices may present identities);
    ``args``: more ``serve`` arguments; ``start_timeout``: the deadline for ``/healthz``;
    ``together``: start every node at once, else the first one alone (it creates the
    database's schema) and then the others at once.
    """

    def __init__(
        self,
        root: Path,
        db: str,
        *,
        nodes: int = 3,
        workers: int = 1,
        config: str = "",
        pki: Pki | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        start_timeout: float = 60.0,
        together: bool = False,
    ) -> None:
        self.root = root
        self.db = db
        self.workers = workers
        self.pki = pki
        self.args = list(args)
        self.env = {**os.environ, "MDMGATE_API_TOKEN": TOKEN, **(env or {})}
        self.start_timeout = start_timeout
        self.together = together
        (root / "logs").mkdir(parents=True, exist_ok=True)
        self.config = root / "mdmgate.toml"
        self.config.write_text(config)
        scheme = "https" if pki is not None else "http"
        self.nodes = [
            Node(f"node-{i}", free_port(), root / "logs" / f"node-{i}.log", scheme)
            for i in range(nodes)
        ]
        self.balancer = Balancer(self)

    @staticmethod
    def sqlite_url(path: Path) -> str:
        return f"sqlite:///{path}"

    # -- lifecycle

    async def __aenter__(self) -> Cluster:
        try:
            rest = self.nodes
            if not self.together:
                await self.start(self.nodes[0])
                rest = self.nodes[1:]
            async with trio.open_nursery() as nursery:
                for node in rest:
                    nursery.start_soon(self.start, node)
        except BaseException:
            await self.stop_all()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.balancer.aclose()
        await self.stop_all()

    def command(self, node: Node) -> list[str]:
        argv = [sys.executable, "-m", "mdmgate", "serve", "--listen", f"{HOST}:{node.port}"]
        argv += ["--db", self.db, "--config", str(self.config), "--node-name", node.name]
        if self.workers != 1:
            argv += ["--workers", str(self.workers)]
        if self.pki is not None:
            argv += self.pki.serve_args()
        return argv + self.args

    async def start(self, node: Node) -> None:
        """Starts the node and returns once it answers ``/healthz``."""
        if node.running:
            raise RuntimeError(f"{node.name} is running already")
        node.starts += 1
        with node.log.open("ab") as log:
            log.write(f"=== {node.name}: start {node.starts} at {time.time():.3f}\n".encode())
            log.flush()
            node.proc = subprocess.Popen(
                self.command(node),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group: killed with its workers
            )
        await self.wait_ready(node)

    async def wait_ready(self, node: Node) -> None:
        deadline = trio.current_time() + self.start_timeout
        verify: ssl.SSLContext | bool = self.pki.client_context() if self.pki else False
        async with httpx.AsyncClient(base_url=node.base_url, verify=verify, timeout=5) as client:
            while True:
                if not node.running:
                    raise NodeFailed(f"{node.name} exited:\n{self.log_tail(node)}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                if trio.current_time() > deadline:
                    raise NodeFailed(
                        f"{node.name} did not answer /healthz within {self.start_timeout:g} s:"
                        f"\n{self.log_tail(node)}"
                    )
                await trio.sleep(_POLL)
        assert node.proc is not None
        node.pids = process_tree(node.proc.pid)

    def kill(self, node: Node) -> None:
        """SIGKILL: the node (and its workers) stop at once, nothing flushed or released."""
        proc = node.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        node.proc = None

    async def restart(self, node: Node) -> None:
        self.kill(node)
        await self.start(node)

    async def stop(self, node: Node, grace: float = 20.0) -> int | None:
        """SIGTERM (the node drains and exits), SIGKILL after ``grace`` seconds; returns the
        exit status (``None`` when it had to be killed)."""
        proc = node.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # the serve process forwards it to workers
            with trio.move_on_after(grace):
                while proc.poll() is None:
                    await trio.sleep(_POLL)
        status = proc.poll()
        self.kill(node)  # (and any worker left behind)
        return status

    async def stop_all(self) -> None:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for node in self.nodes:
                    nursery.start_soon(self.stop, node)

    # -- clients, logs, CPU

    def admin(self, node: Node | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An admin API client for ``node`` (default the first), with the token."""
        node = node or self.nodes[0]
        verify: ssl.SSLContext | bool = self.pki.client_context() if self.pki else False
        kwargs.setdefault("timeout", 60)
        return httpx.AsyncClient(base_url=node.base_url, verify=verify, headers=AUTH, **kwargs)

    def log_tail(self, node: Node, lines: int = 40, *, access: bool = False) -> str:
        """The last ``lines`` of the node's log (without the access log's lines, unless
        ``access``)."""
        try:
            text = node.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        kept = [line for line in text.splitlines() if access or not line.startswith('{"method":')]
        return "\n".join(kept[-lines:])

    def logs(self, lines: int = 20) -> str:
        """The tail of every node's log, for a failure message."""
        return "\n".join(f"--- {n.name} ({n.log})\n{self.log_tail(n, lines)}" for n in self.nodes)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the running nodes' processes (workers included)."""
        pids = [pid for node in self.nodes if node.proc is not None for pid in node.pids]
        return process_cpu_seconds(pids)


class Balancer:
    """The load balancer: transports that rotate requests over the nodes in rotation."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.out: set[str] = set()
        self.in_flight: dict[str, int] = {n.name: 0 for n in cluster.nodes}
        self.served: dict[str, int] = {n.name: 0 for n in cluster.nodes}
        self._changed = trio.Event()
        self._shared: dict[str, httpx.AsyncHTTPTransport] = {}
        self._turn = itertools.count()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def rotation(self) -> list[Node]:
        return [n for n in self.cluster.nodes if n.name not in self.out]

    async def take_out(self, node: Node) -> None:
        """Sends no new request to ``node``; returns once its requests in flight are over."""
        self.out.add(node.name)
        while self.in_flight[node.name]:
            await self._changed.wait()

    def put_back(self, node: Node) -> None:
        self.out.discard(node.name)
        self._notify()

    async def pick(self, after: int) -> Node:
        """The node in rotation after the ``after``-th (waits while none is)."""
        while True:
            nodes = self.rotation()
            if nodes:
                return nodes[after % len(nodes)]
            await self._changed.wait()

    def transport(
        self, *, ssl_context: ssl.SSLContext | None = None, fresh_connections: bool = False
    ) -> RotatingTransport:
        """A transport for one client: its requests go to the nodes in turn (starting at a
        different node for each transport). ``ssl_context`` (a device's identity) gets
        connections of its own; ``fresh_connections`` opens a new connection per request."""
        return RotatingTransport(self, next(self._turn), ssl_context, fresh_connections)

    def _inner(
        self, node: Node, ssl_context: ssl.SSLContext | None, fresh: bool
    ) -> tuple[httpx.AsyncHTTPTransport, bool]:
        """The transport to ``node``, and whether the caller owns (closes) it."""
        verify: ssl.SSLContext | bool = False
        if ssl_context is not None:
            verify = ssl_context
        elif self.cluster.pki is not None:
            verify = self.cluster.pki.client_context()
        limits = httpx.Limits(max_keepalive_connections=0) if fresh else httpx.Limits()
        if ssl_context is not None or fresh:
            return httpx.AsyncHTTPTransport(verify=verify, limits=limits), True
        shared = self._shared.get(node.name)
        if shared is None:
            shared = self._shared[node.name] = httpx.AsyncHTTPTransport(verify=verify)
        return shared, False

    async def aclose(self) -> None:
        for transport in self._shared.values():
            await transport.aclose()
        self._shared.clear()

    @contextlib.asynccontextmanager
    async def _flight(self, node: Node) -> AsyncIterator[None]:
        self.in_flight[node.name] += 1
        try:
            yield
        finally:
            self.in_flight[node.name] -= 1
            self.served[node.name] += 1
            self._notify()


class RotatingTransport(httpx.AsyncBaseTransport):
    """Sends each request to the next node in rotation (see :class:`Balancer`)."""

    def __init__(
        self,
        balancer: Balancer,
        start: int,
        ssl_context: ssl.SSLContext | None,
        fresh: bool,
    ) -> None:
        self.balancer = balancer
        self.ssl_context = ssl_context
        self.fresh = fresh
        self._next = start
        self._own: dict[str, httpx.AsyncHTTPTransport] = {}
        #: The node each request went to, in order.
        self.sent_to: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        node = await self.balancer.pick(self._next)
        self._next += 1
        inner = self._own.get(node.name)
        if inner is None:
            inner, owned = self.balancer._inner(node, self.ssl_context, self.fresh)
            if owned:
                self._own[node.name] = inner
        request.url = request.url.copy_with(scheme=node.scheme, host=HOST, port=node.port)
        self.sent_to.append(node.name)
        async with self.balancer._flight(node):
            response = await inner.handle_async_request(request)
            # Read the body here, so the request counts as in flight until it is over.
            body = await response.aread()
            await response.aclose()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=body,
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        for transport in self._own.values():
            await transport.aclose()
        self._own.clear()
