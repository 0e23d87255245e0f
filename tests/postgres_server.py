"""A real, throwaway PostgreSQL server for the tests and the benchmarks.

``initdb`` into a temporary directory, ``postgres`` listening on a unix socket in that
directory (and, unless ``tcp=False``, on 127.0.0.1 at a free port, for the TCP and name
resolution path), readiness polled with ``pg_isready`` under a deadline, and a fast shutdown
at the end. Durability is off (``fsync``, ``synchronous_commit``, ``full_page_writes``): a test
server's data is thrown away.

PostgreSQL refuses to run as root. As root, the server runs as an unprivileged user: the
Debian package's ``postgres`` if it exists, else a system user created for it, else
``nobody``; the temporary directory is handed to that user. Otherwise it runs as ourselves.

The binaries are looked up as ``.ci/postgres-install`` does: ``$PG_BINDIR``, ``pg_config
--bindir``, ``/usr/lib/postgresql/*/bin`` (newest first), then ``initdb`` on the PATH.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

__all__ = ["INSTALL_HINT", "PostgresNotFound", "PostgresServer", "find_bindir", "running"]

INSTALL_HINT = "run `bash .ci/postgres-install` (installs Debian's postgresql package)"
SUPERUSER = "postgres"
SERVER_USERS = ("postgres", "mdmgate-pg")
NEEDED = ("initdb", "postgres", "pg_isready")
INITDB_ARGS = ("-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def _usable(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in NEEDED)


def _version_key(bindir: Path) -> tuple[int, str]:
    name = bindir.parent.name
    return (int(name) if name.isdigit() else 0, name)


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``postgres`` and ``pg_isready``, or None."""
    candidates: list[Path] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for initdb in (shutil.which("initdb"), "/usr/local/bin/initdb"):
        if initdb and Path(initdb).exists():
            candidates.append(Path(initdb).resolve().parent)
    return next((d for d in candidates if _usable(d)), None)


def _server_account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as; None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    # No suitable user: create one (a system user, no home, no login), or fall back to nobody.
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SERVER_USERS[1],
        ],
        capture_output=True,
        check=False,
    )
    for name in (SERVER_USERS[1], "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise PostgresNotFound("running as root and no unprivileged user to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One server in its own temporary directory; :meth:`start` it, :meth:`stop` it."""

    def __init__(self, bindir: Path | None = None, *, tcp: bool = True) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresNotFound(f"PostgreSQL is not installed (no initdb found): {INSTALL_HINT}")
        self.bindir = found
        self.tcp = tcp
        self.account = _server_account()
        self.root = Path(
            tempfile.mkdtemp(prefix="mdmgate-pg-", dir="/tmp" if self.account else None)
        )
        self.datadir = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.user = SUPERUSER
        self._proc: subprocess.Popen[bytes] | None = None
        if self.account:
            os.chown(self.root, *self.account)

    @property
    def socket_dir(self) -> Path:
        return self.root

    def dsn(self, dbname: str = "postgres", **params: str) -> str:
        """A libpq URL to ``dbname`` over the unix socket; ``params`` go to the query string."""
        query = urllib.parse.urlencode({"host": str(self.root), "port": str(self.port), **params})
        return f"postgresql://{self.user}@/{dbname}?{query}"

    def tcp_dsn(self, dbname: str = "postgres", host: str = "localhost") -> str:
        """A libpq URL to ``dbname`` over TCP (``host`` is resolved by the client)."""
        if not self.tcp:
            raise RuntimeError("this server listens on its unix socket only")
        return f"postgresql://{self.user}@{host}:{self.port}/{dbname}"

    def _as_server(self, argv: list[str]) -> list[str]:
        if self.account is None:
            return argv
        uid, gid = self.account
        if shutil.which("setpriv"):
            # setpriv execs in place, so the child we hold is the postmaster itself.
            return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
        return ["runuser", "-u", pwd.getpwuid(uid).pw_name, "--", *argv]

    def _run(self, argv: list[str], timeout: float) -> None:
        done = subprocess.run(
            self._as_server(argv), cwd=self.root, capture_output=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{out}")

    def start(self, timeout: float = 60.0) -> None:
        """initdb, start, and return once the server accepts connections (or raise)."""
        deadline = time.monotonic() + timeout
        self._run(
            [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.user, *INITDB_ARGS],
            timeout=timeout,
        )
        settings = {
            "listen_addresses": "127.0.0.1" if self.tcp else "",
            "unix_socket_directories": str(self.root),
            "port": str(self.port),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self._as_server(argv), cwd=self.root, stdout=log, stderr=subprocess.STDOUT
            )
        atexit.register(self.stop)
        self._wait_ready(deadline)

    def _wait_ready(self, deadline: float) -> None:
        probe = [str(self.bindir / "pg_isready"), "-q", "-t", "1"]
        probe += ["-h", str(self.root), "-p", str(self.port), "-U", self.user]
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self._proc.returncode}):\n{self.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise TimeoutError(f"postgres not ready in time:\n{self.log_tail()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if (
                    subprocess.run(probe, capture_output=True, timeout=left, check=False).returncode
                    == 0
                ):
                    return
            time.sleep(0.02)  # between polls, not a wait for readiness

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _postmaster_pid(self) -> int | None:
        # Read the postmaster's pid from its lock file: under runuser our child is not it.
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        """Fast shutdown (immediate after 15 s, killed after 20 s), then remove the directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            pid = self._postmaster_pid()
            for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        atexit.unregister(self.stop)
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> None:
        """CREATE DATABASE ``name`` (a plain identifier)."""
        import psycopg  # noqa: PLC0415 - only the callers that create databases need psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


@contextlib.contextmanager
def running(*, tcp: bool = True, timeout: float = 60.0) -> Iterator[PostgresServer]:
    """A started server, stopped (and its directory removed) on exit."""
    for attempt in range(3):
        server = PostgresServer(tcp=tcp)
        try:
            server.start(timeout)
            break
        except RuntimeError:
            # The free port found may have been taken before the server bound it: retry.
            lost_port = "could not bind" in server.log_tail()
            server.stop()
            if not lost_port or attempt == 2:
                raise
    try:
        yield server
    finally:
        server.stop()
