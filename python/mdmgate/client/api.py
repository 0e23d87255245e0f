"""A small client of a running gateway's admin API, over the standard library's
:mod:`http.client` (one kept-alive connection; TLS verified against the system's CAs or a
given CA file).

Every failure is a :class:`ClientError` whose text is the whole error line the command
prints: the gateway's refusals as ``<status> <message>`` (:class:`ApiError`), a gateway that
cannot be reached or dropped the connection (:class:`ConnectionFailed`), and options that
cannot work (:class:`OptionError`).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from mdmgate import __version__
from mdmgate.errors import MdmgateError

__all__ = [
    "API_PREFIX",
    "ApiClient",
    "ApiError",
    "ClientError",
    "ConnectionFailed",
    "OptionError",
    "Query",
    "resource",
]

#: Where the admin API lives under the gateway's URL.
API_PREFIX = "/api/v1"
#: A query: each value a string or number, ``None`` (left out) or a list (repeated).
Query = Mapping[str, str | int | float | Sequence[str] | None]


class ClientError(MdmgateError):
    """A request that did not get an answer it can use; the text is the whole error line."""


class OptionError(ClientError):
    """An option (or the environment variable standing in for one) that cannot work: a URL
    that is not http(s), no token, an unreadable CA file, a body that is not JSON."""


class ConnectionFailed(ClientError):
    """The gateway could not be reached, or the connection broke before its answer."""


class ApiError(ClientError):
    """The gateway refused the request: ``status``, its ``message`` and, when it named one,
    the ``field`` of the request body (JSONPath) it refused; ``body`` is its whole JSON
    answer (``None`` if it was not JSON)."""

    def __init__(
        self, status: int, message: str, field: str | None = None, body: Any = None
    ) -> None:
        self.status = status
        self.message = message
        self.field = field
        self.body = body
        text = f"{status} {message}"
        if field and field not in message:
            text += f" (at {field})"
        super().__init__(text)


def resource(*segments: str) -> str:
    """An API path from its segments, each percent-encoded whole (an id holding ``/`` or
    ``?`` stays one segment): ``resource("devices", "a/b")`` is ``/devices/a%2Fb``."""
    return "".join("/" + quote(s, safe="") for s in segments)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class ApiClient:
    """Requests to the admin API at ``url`` (``http(s)://host[:port][/prefix]``, the prefix a
    reverse proxy may add) with bearer ``token``; ``cacert``: a PEM file of the CA(s) to trust
    for https instead of the system's. ``timeout`` bounds connecting and each wait for data.

    Calls return the decoded JSON answer (``None`` for an empty one) or raise a
    :class:`ClientError`. A GET whose kept-alive connection turns out closed by the gateway
    is sent again once on a new connection; nothing else is ever sent twice."""

    def __init__(
        self, url: str, token: str | None, *, cacert: str | None = None, timeout: float = 30.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OptionError(f"--url must be http:// or https://HOST[:PORT], not {url!r}")
        if parts.query or parts.fragment:
            raise OptionError(f"--url takes no query or fragment: {url!r}")
        try:
            self._port = parts.port
        except ValueError:
            raise OptionError(f"--url has a bad port: {url!r}") from None
        if not token:
            raise OptionError("no API token: give --token or set MDMGATE_API_TOKEN")
        if not (token.isascii() and token.isprintable()):
            raise OptionError("the API token must be printable ASCII")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._prefix = parts.path.rstrip("/") + API_PREFIX
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self._https:
            self._context = _tls_context(cacert)
        self._conn: http.client.HTTPConnection | None = None
        self._used = False

    # -- the calls

    def get(self, path: str, query: Query | None = None, *, timeout: float | None = None) -> Any:
        return self.request("GET", path, query=query, timeout=timeout)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """``method`` on ``path`` (under ``/api/v1``, built with :func:`resource`), with
        ``query`` and a JSON ``body`` (``None``: no body); ``timeout`` replaces the client's
        for this call (a long poll)."""
        target = self._prefix + path
        pairs: list[tuple[str, str]] = []
        for key, value in (query or {}).items():
            if value is not None:
                values = [value] if isinstance(value, str | int | float) else value
                pairs += [(key, str(v)) for v in values]
        if pairs:
            target += "?" + urlencode(pairs)
        payload = None if body is None else json.dumps(body).encode()
        headers = {
            "authorization": f"Bearer {self._token}",
            "accept": "application/json",
            "user-agent": f"mdmgate/{__version__}",
        }
        if payload is not None:
            headers["content-type"] = "application/json"
        status, reason, data = self._exchange(method, target, payload, headers, timeout)
        return _answer(status, reason, data)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the connection

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """The open connection (and ``True``: it served a request before), or a new one."""
        if self._conn is not None:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
                return self._conn, self._used
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._context
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            reason = _reason(exc)
            if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLCertVerificationError):
                reason = f"TLS handshake failed: {reason}"
            raise ConnectionFailed(f"cannot connect to {self.url}: {reason}") from None
        self._conn, self._used = conn, False
        return conn, False

    def _exchange(
        self,
        method: str,
        target: str,
        payload: bytes | None,
        headers: dict[str, str],
        timeout: float | None,
    ) -> tuple[int, str, bytes]:
        wait = self.timeout if timeout is None else timeout
        retried = False
        while True:
            conn, reused = self._connection(wait)
            try:
                conn.request(method, target, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A kept-alive connection the gateway closed while it idled: the request
                # never reached it. Only a GET is sent again; it changes nothing.
                stale = isinstance(
                    exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                )
                if reused and stale and method == "GET" and not retried:
                    retried = True
                    continue
                raise ConnectionFailed(
                    f"{method} {self.url}{target}: no answer: {_reason(exc)}"
                ) from None
            self._used = True
            if response.will_close:
                self.close()
            return response.status, response.reason, data


def _tls_context(cacert: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=cacert)
    except OSError as exc:  # a missing file, or one without a certificate (ssl.SSLError)
        raise OptionError(f"cannot read --cacert {cacert}: {_reason(exc)}") from None


def _answer(status: int, reason: str, data: bytes) -> Any:
    decoded: Any = None
    is_json = True
    if data:
        try:
            decoded = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            is_json = False
    if 200 <= status < 300:
        if not is_json:
            raise ClientError(f"{status} the gateway's answer is not JSON")
        return decoded
    if is_json and isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        field = decoded.get("field")
        raise ApiError(status, decoded["error"], field if isinstance(field, str) else None, decoded)
    # Not the API's error body (a proxy's page, a plain-text 500): its first line.
    text = data.decode("utf-8", "replace").strip().split("\n", 1)[0][:200] if data else ""
    raise ApiError(status, text or reason or "no reason given", None, decoded)
