"""HTTP/1.1 (and 1.0) connections of :class:`~mdmgate.server.http.Server`.

Request heads and chunked bodies are parsed by the Rust core (``mdmgate._core``:
``http1_parse_head`` and ``Http1ChunkedDecoder``); this module reads, times and answers. The
parser accepts what h11 accepted when it did this job, and refuses a little more, each
refusal answered and the connection closed:

* ``400`` for a malformed request line or header, a missing (HTTP/1.1) or repeated Host, a bad
  or conflicting Content-Length, Content-Length together with Transfer-Encoding (request
  smuggling behind a proxy that frames by the other one), Transfer-Encoding on HTTP/1.0,
  obsolete line folding, control bytes in a header value, or a malformed chunked body;
* ``431`` for a request line and headers over ``Limits.max_header_bytes``, decided as soon as
  that many bytes are in without the end of the head;
* ``501`` for a Transfer-Encoding other than ``chunked``;
* ``505`` for an HTTP version other than 1.0 and 1.1.

Connections are kept alive unless the client says ``Connection: close``, speaks HTTP/1.0
without ``Connection: keep-alive``, or the server drains; pipelined requests are answered in
order. The other limits (body size, the four timeouts, shedding, draining) are described on
:class:`~mdmgate.server.http.Limits` and in :mod:`mdmgate.server.http`.
"""

from __future__ import annotations

import contextlib
import http
import math
from typing import TYPE_CHECKING

import trio

from mdmgate._core import Http1ChunkedDecoder, Http1Error, http1_parse_head

from .http import (
    _MIN_DISCARD,
    _READ_CHUNK,
    _WRITE_CHUNK,
    _Close,
    _ConnectionInfo,
    _linger_close,
    _Reply,
    _split_target,
    _text_reply,
)
from .types import Request

if TYPE_CHECKING:
    from mdmgate._core import Http1Head

    from .http import Server, _Stream

__all__ = ["H1Connection"]

# The phases of a connection, for its timeouts.
_IDLE = "idle"
_READING = "reading"
_HANDLING = "handling"
_WRITING = "writing"
_DRAINED = "drained"
_SHED = "shed"

_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
_STATUS_LINES = {
    int(status): b"HTTP/1.1 %d %s\r\n" % (status, status.phrase.encode())
    for status in http.HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: What a refusal's answer starts with, by status (the parser says the rest).
_REFUSALS = {400: "Bad request", 501: "Not implemented", 505: "HTTP version not supported"}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def raw_response(reply: _Reply) -> bytes:
    """A complete response that closes the connection."""
    lines = [_status_line(reply.status)]
    lines.extend(name + b": " + value + b"\r\n" for name, value in reply.headers)
    lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(reply.body))
    lines.append(reply.body)
    return b"".join(lines)


class _Failure(Exception):
    """Answer ``reply`` and close the connection."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class H1Connection:
    """One client connection speaking HTTP/1.x, from its first bytes to its close."""

    def __init__(
        self, server: Server, stream: _Stream, info: _ConnectionInfo, initial: bytes
    ) -> None:
        self._server = server
        self._limits = server.limits
        self._stream = stream
        self._peer = info.peer
        self._client_cert = info.client_cert
        self._reject = info.reject
        self._slot = info.slot
        #: Bytes read and not yet parsed: a head arriving, a body, or pipelined requests.
        self._buffer = bytearray(initial)
        #: When the first request started: the connection opened with its bytes.
        self._first_started: float | None = info.connected
        #: Method and path of the request being read, for the log if it fails.
        self._method = self._path = "-"
        #: The request being answered allows another one after it.
        self._keep_alive = True
        self._eof = False
        #: When the request being read started.
        self._started = info.connected
        self._draining = False
        #: Timeouts: the current phase and when it runs out, checked by the server's
        #: sweeper (:meth:`Server._sweep_deadlines`), which cancels ``_watch`` past it.
        #: Setting two attributes per phase costs far less than a cancel scope per read and
        #: write, which showed up as a tenth of the server's time per request.
        self._phase = _IDLE
        self._deadline = math.inf
        self._expired: str | None = None
        self._watch = trio.CancelScope()
        #: Shed while a request head was arriving (rather than idle): answered 503.
        self._shed_reading = False

    def drain(self) -> None:
        self._draining = True
        if self._phase == _IDLE:
            self.expire(_DRAINED)

    def shed(self) -> None:
        """Close to make room: the connection is idle, or its request head incomplete."""
        self._shed_reading = self._phase == _READING
        self.expire(_SHED)

    def expire(self, phase: str) -> None:
        """End the connection: ``phase`` ran out of time (or the server drains)."""
        if self._expired is None:
            self._expired = phase
            self._watch.cancel()

    def check_deadline(self, now: float) -> None:
        if now >= self._deadline:
            self.expire(self._phase)

    def _enter(self, phase: str, deadline: float) -> None:
        self._phase = phase
        self._deadline = deadline

    async def run(self) -> None:
        self._server._watched.add(self)
        try:
            with self._watch:
                while await self._one_request():
                    pass
        except _Close:
            return
        finally:
            self._server._watched.discard(self)
        expired = self._expired
        if expired == _READING:
            self._server.metrics.error("read_timeout")
            await self._fail(_text_reply(408, "Request not received in time"), self._started)
            return  # without lingering: the client is too slow to deserve it
        if expired == _SHED:
            # Its place went to a newcomer: closed at once, not lingering on a slot.
            if self._shed_reading:
                message = "Server busy: request head not received in time"
                reply = _text_reply(503, message, self._limits.retry_after)
                await self._fail(reply, self._started, min(self._limits.write_timeout, 1.0))
            return
        if expired == _WRITING:
            self._server.metrics.error("write_timeout")
            return
        if not self._eof:
            await _linger_close(self._stream)

    async def _receive(self) -> bytes | bytearray:
        """The next bytes (``b""`` at end of stream)."""
        try:
            data = await self._stream.receive_some(_READ_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self._eof = not data
        return data

    async def _receive_more(self) -> None:
        """Append the next bytes to the buffer; ``_Close`` when the client has gone (in the
        middle of a request: nobody is left to answer)."""
        data = await self._receive()
        if not data:
            raise _Close
        self._buffer += data

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` within the write timeout (per 64 KiB), in the current phase."""
        phase, deadline = self._phase, self._deadline
        if len(data) <= _WRITE_CHUNK:
            self._enter(_WRITING, trio.current_time() + self._limits.write_timeout)
            await self._stream.send_all(data)
        else:
            view = memoryview(data)
            for start in range(0, len(view), _WRITE_CHUNK):
                self._enter(_WRITING, trio.current_time() + self._limits.write_timeout)
                await self._stream.send_all(view[start : start + _WRITE_CHUNK])
        self._enter(phase, deadline)

    async def _wait_for_request(self) -> float | None:
        """When the next request started, or ``None`` when the connection should close."""
        if self._first_started is not None:
            started, self._first_started = self._first_started, None
            return started
        self._server._now_waiting(self._slot)  # until its head is complete
        if self._buffer:
            return trio.current_time()  # pipelined
        if self._draining:
            return None
        self._enter(_IDLE, trio.current_time() + self._limits.idle_timeout)
        data = await self._receive()
        if not data:
            return None
        self._buffer += data
        return trio.current_time()

    async def _one_request(self) -> bool:
        """Serve one request; whether the connection stays open for another."""
        started = await self._wait_for_request()
        if started is None:
            return False
        self._started = started
        self._method = self._path = "-"
        # The head is due within header_timeout, the whole request within read_timeout.
        self._enter(_READING, started + self._limits.header_timeout)
        try:
            request = await self._read_request(started)
        except _Failure as failure:
            await self._fail(failure.reply, started)
            return False
        if self._expired is not None:
            return False  # timed out as the request completed: answered 408 by run()
        self._enter(_HANDLING, math.inf)
        reply = await self._server._dispatch(request)
        return await self._respond(reply, request, started)

    def _refused(self, exc: Http1Error) -> _Failure:
        status, message = exc.args
        if status == 431:
            self._server.metrics.error("header_too_large")
            return _Failure(_text_reply(431, "Request header fields too large"))
        self._server.metrics.error("bad_request")
        return _Failure(_text_reply(status, f"{_REFUSALS.get(status, 'Bad request')}: {message}"))

    async def _read_head(self) -> Http1Head:
        """The next request head, its bytes taken from the buffer."""
        scanned = 0
        while True:
            try:
                parsed = http1_parse_head(self._buffer, scanned, self._limits.max_header_bytes)
            except Http1Error as exc:
                raise self._refused(exc) from None
            if not isinstance(parsed, int):
                del self._buffer[: parsed[4]]
                return parsed
            scanned = parsed
            await self._receive_more()

    async def _read_request(self, started: float) -> Request:
        head = await self._read_head()
        method, target, version, headers, _, length, chunked, keep_alive, expect = head
        self._server._busy(self._slot)
        self._method = method
        self._path, query = _split_target(target)
        if self._reject is not None:
            raise _Failure(self._reject)
        self._keep_alive = keep_alive
        self._deadline = started + self._limits.read_timeout
        if chunked:
            body = await self._read_chunked(expect)
        else:
            body = await self._read_sized(length or 0, expect)
        return Request(
            method=method,
            path=self._path,
            query=query,
            headers=headers,
            body=body,
            http_version=version,
            peer=self._peer,
            client_cert=self._client_cert,
        )

    def _too_large(self) -> _Failure:
        self._server.metrics.error("body_too_large")
        limit = self._limits.max_body_bytes
        return _Failure(_text_reply(413, f"Request body exceeds {limit} bytes"))

    async def _read_sized(self, declared: int, expect: bool) -> bytes:
        """A body of ``declared`` bytes; ``_Failure`` (413) when over the limit, after reading
        (and discarding) up to another limit's worth, so that a client writing its whole body
        before reading hears the 413 rather than a reset."""
        if declared == 0 and not expect:
            return b""
        limit = self._limits.max_body_bytes
        buffer = self._buffer
        if declared > limit:
            if expect:
                raise self._too_large()  # the client waits to be asked: it is not
            cutoff = limit + max(limit, _MIN_DISCARD)
            seen = 0
            while True:
                taken = min(len(buffer), declared - seen)
                del buffer[:taken]
                seen += taken
                if seen >= declared or seen > cutoff:
                    raise self._too_large()
                await self._receive_more()
        if expect:
            await self._write(_CONTINUE)
        while len(buffer) < declared:
            await self._receive_more()
        if len(buffer) == declared:
            body = bytes(buffer)
            buffer.clear()
        else:
            body = bytes(buffer[:declared])
            del buffer[:declared]
        return body

    async def _read_chunked(self, expect: bool) -> bytes:
        """A chunked body; ``_Failure`` (413) when over the limit, after discarding as much as
        :meth:`_read_sized` would."""
        limit = self._limits.max_body_bytes
        cutoff = limit + max(limit, _MIN_DISCARD)
        if expect:
            await self._write(_CONTINUE)
        # Chunk-size lines and trailers are bounded like a head.
        max_line = self._limits.max_header_bytes
        decoder = Http1ChunkedDecoder(max_line, max_line)
        body = bytearray()
        too_large = False
        while True:
            try:
                data, consumed, done = decoder.feed(self._buffer, not too_large)
            except Http1Error as exc:
                raise self._refused(exc) from None
            del self._buffer[:consumed]
            if not too_large and decoder.decoded > limit:
                too_large = True
                body = bytearray()
            if too_large:
                if done or decoder.decoded > cutoff:
                    raise self._too_large()
            else:
                body += data
                if done:
                    return bytes(body)
            await self._receive_more()

    async def _fail(self, reply: _Reply, started: float, timeout: float | None = None) -> None:
        """Answer with ``reply``; the connection then closes."""
        # Its own deadline: after a timeout the connection's watch is already cancelled.
        with (
            trio.move_on_after(self._limits.write_timeout if timeout is None else timeout),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self._stream.send_all(raw_response(reply))
        self._server._record(
            method=self._method,
            path=self._path,
            status=reply.status,
            protocol="HTTP/1.1",
            started=started,
            peer=self._peer,
            bytes_in=0,
            bytes_out=len(reply.body),
        )

    async def _respond(self, reply: _Reply, request: Request, started: float) -> bool:
        status = reply.status
        keep_alive = self._keep_alive and not self._draining
        out = [_status_line(status)]
        out.extend(name + b": " + value + b"\r\n" for name, value in reply.headers)
        if status not in (204, 304):
            out.append(b"content-length: %d\r\n" % len(reply.body))
        if not keep_alive:
            out.append(b"connection: close\r\n")
        elif request.http_version == "1.0":
            out.append(b"connection: keep-alive\r\n")  # HTTP/1.0 closes unless told
        out.append(b"\r\n")
        sent = 0
        if reply.body and request.method != "HEAD" and status not in (204, 304):
            out.append(reply.body)
            sent = len(reply.body)
        # One write for head and body: two cost a second syscall and, with Nagle's delayed
        # ACKs on the client, can stall small answers.
        await self._write(b"".join(out))
        self._server._record(
            method=request.method,
            path=request.path,
            status=status,
            protocol=_PROTOCOLS.get(request.http_version, "HTTP/1.1"),
            started=started,
            peer=self._peer,
            bytes_in=len(request.body),
            bytes_out=sent,
            extra=reply.log,
        )
        return keep_alive
