"""The HTTP/1.1 request parser (Rust, ``mdmgate._core``) against h11, which parsed the gateway's
requests before it: the same verdict and the same fields on a corpus of valid and hostile
heads, where the parser is stricter each case named and checked; random requests, random
bytes, chunked bodies split at every byte; and what a real server answers over a socket."""

from __future__ import annotations

import contextlib
import string
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import h11
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mdmgate._core import (
    HTTP1_MAX_HEAD_BYTES,
    Http1ChunkedDecoder,
    Http1Error,
    http1_parse_head,
)
from mdmgate.server.http import Limits, Server, listener_port, open_listeners
from mdmgate.server.metrics import Metrics
from mdmgate.server.types import Request, Response

MAX = HTTP1_MAX_HEAD_BYTES


@dataclass(frozen=True)
class Parsed:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    content_length: int | None
    chunked: bool
    expect_continue: bool
    #: Compared only where both sides have the same rule (HTTP/1.1, not CONNECT).
    keep_alive: bool


@dataclass(frozen=True)
class Refused:
    status: int


Verdict = Parsed | Refused | None  # None: the head is not complete


def ours(raw: bytes, max_head: int = MAX) -> Verdict:
    try:
        parsed = http1_parse_head(raw, 0, max_head)
    except Http1Error as exc:
        status, message = exc.args
        assert isinstance(message, str)
        assert message
        return Refused(status)
    if isinstance(parsed, int):
        return None
    method, target, version, headers, length, content_length, chunked, keep_alive, expect = parsed
    assert 0 < length <= len(raw)
    return Parsed(method, target, version, headers, content_length, chunked, expect, keep_alive)


def reference(raw: bytes) -> Verdict:
    """What the gateway made of ``raw`` with h11: h11's verdict, and the server's own refusal
    of Content-Length with Transfer-Encoding."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX)
    if raw:  # (no bytes would tell h11 the client closed)
        conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        return Refused(exc.error_status_hint)
    if event is h11.NEED_DATA:
        return None
    assert isinstance(event, h11.Request)
    headers = tuple(
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in event.headers.raw_items()
    )
    names = {name for name, _ in headers}
    chunked = "transfer-encoding" in names
    if chunked and "content-length" in names:
        return Refused(400)
    # The parser keeps lengths beyond 64 bits as the largest one: over any limit either way.
    lengths = [min(int(v), 2**64 - 1) for name, v in headers if name == "content-length"]
    return Parsed(
        method=event.method.decode("ascii"),
        target=event.target.decode("ascii"),
        version=event.http_version.decode("ascii"),
        headers=headers,
        content_length=lengths[0] if lengths else None,
        chunked=chunked,
        expect_continue=conn.they_are_waiting_for_100_continue,
        keep_alive=conn._cstate.keep_alive,
    )


def same(a: Verdict, b: Verdict) -> bool:
    """Equal verdicts; keep-alive compared only where h11's rule is the parser's."""
    own_rule = isinstance(a, Parsed) and (a.version != "1.1" or a.method == "CONNECT")
    if isinstance(a, Parsed) and isinstance(b, Parsed) and own_rule:
        a = Parsed(**{**a.__dict__, "keep_alive": b.keep_alive})
    return a == b


# ---------------------------------------------------------------------------------------------
# The corpus

H = b"Host: mdm.example\r\n"

VALID = [
    # What devices send.
    b"POST /ManagementServer/MDM.svc?mode=Maintenance&Platform=WoA HTTP/1.1\r\n"
    b"Cache-Control: no-cache\r\nConnection: Keep-Alive\r\nPragma: no-cache\r\n"
    b"Content-Type: application/vnd.syncml.dm+xml\r\nAccept: application/vnd.syncml.dm+xml\r\n"
    b"User-Agent: MSFT OMA DM Client/1.2.0.1\r\nClient-Request-Id: 0\r\n"
    b"Content-Length: 1166\r\n" + H + b"\r\n",
    b"PUT /mdm/connect HTTP/1.1\r\n" + H + b"Content-Type: application/x-apple-aspen-mdm\r\n"
    b"Mdm-Signature: MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0B\r\n"
    b"Content-Length: 412\r\nAccept-Encoding: gzip, deflate\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /api/v1/devices?cursor=abc&limit=50 HTTP/1.1\r\n"
    + H
    + b"Authorization: Bearer t\r\n\r\n",
    # The edges of the grammar that are still allowed.
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    b"GET http://mdm.example/x?y=1 HTTP/1.1\r\n" + H + b"\r\n",
    b"CONNECT mdm.example:443 HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /a HTTP/1.1\nHost: x\nX-Lf: only\n\n",
    b"GET / HTTP/1.1\r\nHost: x\n\r\n",
    b"GET / HTTP/1.1\r\nhost:x\r\nX-Empty:\r\nX-Spaces:   \r\nX-Ws: \t a \t b \t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Obs-Text: caf\xe9 \xff\x80\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Odd: !#$%&'*+-.^_`|~\"(),/:;<=>?@[\\]{}\r\n\r\n",
    b'GET /%7e/%20?q="{}"|^` HTTP/1.1\r\nHost: x\r\n\r\n',
    b"M-!#$%&'*+.^_`|~ / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5 ,5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 00000000000000000042\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ChUnKeD\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: foo, 100-Continue\r\nContent-Length: 3\r\n\r\n",
    b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, CLOSE\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(300))
    + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\nand a body that is not the head's business",
]

HOSTILE = [
    # Not a request line.
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b" GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
    b"GET /\r\nHost: x\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / http/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.x\r\nHost: x\r\n\r\n",
    b"GET / HTTP/11\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\rX\r\nHost: x\r\n\r\n",
    # Header lines.
    b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost\t: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n: empty name\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX(y): z\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX\xe9: z\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x0bb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x0cb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\r\n\r\n",
    # Host.
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\nHOST: a\r\n\r\n",
    # Framing.
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5,\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 000000000000000000001\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nContent-Length: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\nTransfer-Encoding: gzip\r\n\r\n",
]

#: Where the parser refuses what h11 accepted, and the status it answers. Each is a choice
#: (see mdmgate.server.http1): RFC 9112 allows the refusal, and no device needs the leniency.
STRICTER = {
    # 505 for versions the server does not speak; h11 read any HTTP/d.d.
    b"GET / HTTP/1.2\r\nHost: x\r\n\r\n": 505,
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n": 505,
    b"GET / HTTP/0.9\r\n\r\n": 505,
    # Obsolete line folding (RFC 9112 section 5.2 lets a server refuse it).
    b"GET / HTTP/1.1\r\nHost: x\r\nX: one\r\n two\r\n\r\n": 400,
    b"GET / HTTP/1.1\r\nHost: x\r\nX: one\r\n\ttwo\r\n\r\n": 400,
    # Control bytes other than HTAB in a value.
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n": 400,
    b"GET / HTTP/1.1\r\nHost: x\r\nCookie: _ga=\x1f1\r\n\r\n": 400,
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n": 400,
    # Transfer-Encoding on HTTP/1.0 (RFC 9112 section 6.1: faulty framing).
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n": 400,
}


@pytest.mark.parametrize("raw", VALID, ids=lambda raw: repr(raw[:40]))
def test_valid_heads_parse_as_h11_parsed_them(raw: bytes) -> None:
    expected = reference(raw)
    assert isinstance(expected, Parsed)
    got = ours(raw)
    assert same(got, expected), (got, expected)


@pytest.mark.parametrize("raw", HOSTILE, ids=lambda raw: repr(raw[:40]))
def test_hostile_heads_are_refused_as_h11_refused_them(raw: bytes) -> None:
    expected = reference(raw)
    assert isinstance(expected, Refused)
    assert ours(raw) == expected


@pytest.mark.parametrize(("raw", "status"), STRICTER.items(), ids=lambda v: repr(v)[:40])
def test_where_the_parser_is_stricter_than_h11(raw: bytes, status: int) -> None:
    assert isinstance(reference(raw), Parsed)
    assert ours(raw) == Refused(status)


def test_the_differences_in_keep_alive() -> None:
    # HTTP/1.0 clients that ask for keep-alive get it (h11 closed every 1.0 connection), and a
    # CONNECT closes the connection after its answer whatever it was (h11 only after a 2xx).
    keep = ours(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert isinstance(keep, Parsed)
    assert keep.keep_alive
    close = ours(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(close, Parsed)
    assert not close.keep_alive
    connect = ours(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(connect, Parsed)
    assert not connect.keep_alive


def test_refusals_name_the_problem() -> None:
    def message(raw: bytes) -> str:
        with pytest.raises(Http1Error) as caught:
            http1_parse_head(raw, 0, MAX)
        return str(caught.value.args[1])

    assert "obsolete line folding" in message(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n")
    assert "whitespace between" in message(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
    assert "0x01" in message(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01\r\n\r\n")
    assert "HTTP/2.0" in message(b"GET / HTTP/2.0\r\n\r\n")
    assert "gzip" in message(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert "no Host" in message(b"GET / HTTP/1.1\r\n\r\n")
    assert "conflicting" in message(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    assert "ambiguous framing" in message(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_heads_over_the_limit_get_431_as_soon_as_they_are() -> None:
    limit = 200
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 300
    # Still arriving: refused once the limit is reached, not when the head ends.
    assert ours(head[: limit - 1], limit) is None
    assert ours(head[:limit], limit) == Refused(431)
    # Complete and over the limit (h11 measured such a head after parsing it).
    assert ours(head + b"\r\n\r\n", limit) == Refused(431)
    fits = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (limit - 32) + b"\r\n\r\n"
    assert len(fits) == limit
    assert isinstance(ours(fits, limit), Parsed)
    assert isinstance(ours(fits + b"a body longer than the limit " * 20, limit), Parsed)


def test_heads_arriving_in_pieces_parse_as_a_whole() -> None:
    def verdict(buffer: bytes | bytearray, scanned: int) -> Verdict | int:
        try:
            parsed = http1_parse_head(buffer, scanned, MAX)
        except Http1Error as exc:
            return Refused(exc.args[0])
        return parsed if isinstance(parsed, int) else ours(bytes(buffer))

    for raw in [*VALID, *HOSTILE, *STRICTER]:
        whole = ours(raw)
        for cut in range(len(raw)):
            first = verdict(raw[:cut], 0)
            if isinstance(first, int):
                # Incomplete: with the rest appended, and told how far it looked.
                assert verdict(bytearray(raw), first) == whole
            else:
                assert first == whole  # refused early (the first byte), like the whole


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="bytes or bytearray"):
        http1_parse_head("GET / HTTP/1.1\r\n\r\n", 0, MAX)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes or bytearray"):
        Http1ChunkedDecoder(10, 10).feed(memoryview(b"0\r\n\r\n"))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Random requests and random bytes

TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
tokens = st.text(TCHAR, min_size=1, max_size=12)
targets = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=30
).map(lambda t: "/" + t)
value_bytes = st.binary(min_size=1, max_size=1).filter(lambda b: b[0] >= 0x21 and b[0] != 0x7F)
field_values = st.lists(
    st.tuples(st.sampled_from([b"", b" ", b"\t", b" \t "]), value_bytes), max_size=8
).map(lambda parts: b"".join(ws + b for ws, b in parts).lstrip(b" \t"))
SPECIAL = {"host", "content-length", "transfer-encoding"}


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    method = draw(tokens)
    version = draw(st.sampled_from(["1.0", "1.1"]))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    fields = [(b"Host", b"h")] if version == "1.1" else []
    for name, value in draw(st.lists(st.tuples(tokens, field_values), max_size=10)):
        if name.lower() not in SPECIAL:
            fields.append((name.encode(), value))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if framing == "length":
        fields.append((b"Content-Length", str(draw(st.integers(0, 10**12))).encode()))
    elif framing == "chunked" and version == "1.1":
        fields.append((b"Transfer-Encoding", b"chunked"))
    ows = draw(st.sampled_from([b"", b" ", b"\t", b"  "]))
    raw = f"{method} {draw(targets)} HTTP/{version}".encode() + eol
    raw += b"".join(name + b":" + ows + value + ows + eol for name, value in fields) + eol
    return raw, fields


@settings(max_examples=300, deadline=timedelta(seconds=2))
@given(requests(), st.binary(max_size=20))
def test_random_valid_requests_round_trip(
    request: tuple[bytes, list[tuple[bytes, bytes]]], after: bytes
) -> None:
    raw, fields = request
    got = ours(raw + after)
    assert isinstance(got, Parsed)
    assert got.headers == tuple(
        (name.decode().lower(), value.decode("latin-1")) for name, value in fields
    )
    assert same(got, reference(raw + after))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request with a few bytes inserted, replaced or removed: near misses."""
    raw = bytearray(draw(requests())[0])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw) - 1))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 58, 0x7F, 0x80, 0xFF, *b"a,:\\"]))
        edit = draw(st.sampled_from(["insert", "replace", "delete"]))
        if edit == "insert":
            raw.insert(at, byte)
        elif edit == "replace":
            raw[at] = byte
        elif len(raw) > 1:
            del raw[at]
    return bytes(raw)


@settings(
    max_examples=1000,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.one_of(mutated(), st.binary(max_size=300)))
@example(b"GET / HTTP/1.1\r\nHost: x\r\n\r\r\n\r\n")
def test_nothing_h11_refused_is_accepted(raw: bytes) -> None:
    # Random bytes and near misses: never a crash or a hang, and whatever the parser accepts
    # h11 accepted the same way (the parser may refuse more: STRICTER).
    got = ours(raw)
    expected = reference(raw)
    if isinstance(got, Parsed):
        assert same(got, expected), (got, expected)
    elif isinstance(got, Refused):
        assert got.status in (400, 431, 501, 505)
    else:
        assert expected is None or isinstance(expected, Refused)


# ---------------------------------------------------------------------------------------------
# Chunked bodies


def decode(pieces: list[bytes], max_line: int = MAX) -> tuple[bytes, bytes] | None:
    """Feeds ``pieces`` as the server does: the body and the bytes after it (``None`` while
    incomplete); ``Http1Error`` when refused."""
    decoder = Http1ChunkedDecoder(max_line, max_line)
    buffer = bytearray()
    body = bytearray()
    for i, piece in enumerate(pieces):
        buffer += piece
        data, consumed, done = decoder.feed(buffer)
        body += data
        del buffer[:consumed]
        if done:
            assert decoder.decoded == len(body)
            return bytes(body), bytes(buffer) + b"".join(pieces[i + 1 :])
    return None


def h11_decode(body: bytes) -> bytes | None:
    """What h11 made of a chunked body: its data, or ``None`` when it refused it."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    data = bytearray()
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(data)
            elif event is h11.NEED_DATA:
                return None
    except h11.RemoteProtocolError:
        return None


CHUNKED = (
    b"4;name=value\r\nWiki\r\n5 \r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n"
    b"00000000000000000000\r\nX-Checksum: abc\r\nX-Other:\tz\n\r\n"
)


def test_chunked_body_split_at_every_byte_boundary() -> None:
    whole = decode([CHUNKED + b"GET /next"])
    assert whole == (b"Wikipedia in\r\n\r\nchunks.", b"GET /next")
    assert h11_decode(CHUNKED) == whole[0]
    for cut in range(len(CHUNKED) + 1):
        assert decode([CHUNKED[:cut], CHUNKED[cut:] + b"GET /next"]) == whole
    assert decode([bytes([b]) for b in CHUNKED + b"GET /next"]) == whole


@pytest.mark.parametrize(
    "body",
    [
        b"5\nhello\r\n0\r\n\r\n",
        b"g\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 ;x\r\nhello\r\n0\r\n\r\n",
        b"000000000000000000005\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"0\r\nX : y\r\n\r\n",
        b"0\r\nbad trailer\r\n\r\n",
        b"\r\n",
    ],
)
def test_malformed_chunked_bodies_are_refused_as_h11_refused_them(body: bytes) -> None:
    assert h11_decode(body) is None
    with pytest.raises(Http1Error) as caught:
        decode([body])
    assert caught.value.args[0] == 400


@pytest.mark.parametrize(
    "body",
    [
        b"5;x\x01\r\nhello\r\n0\r\n\r\n",  # a control byte in an extension
        b"0\r\nX: a\r\n b\r\n\r\n",  # obsolete line folding in the trailer
        b"0\r\nContent-Length: 5\r\n\r\n",  # framing fields in the trailer (RFC 9110 6.5.1)
        b"0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_chunked_bodies_the_decoder_is_stricter_on(body: bytes) -> None:
    assert h11_decode(body) is not None
    with pytest.raises(Http1Error):
        decode([body])


def test_chunk_lines_and_trailers_are_bounded() -> None:
    ext = b"5;" + b"e" * 100 + b"\r\nhello\r\n0\r\n\r\n"
    assert decode([ext], max_line=200) == (b"hello", b"")
    with pytest.raises(Http1Error, match="longer than 50"):
        decode([ext[:60]], max_line=50)  # refused before the line ends
    trailer = b"0\r\nX: " + b"t" * 100 + b"\r\n\r\n"
    with pytest.raises(Http1Error, match="trailer longer than 50"):
        decode([trailer], max_line=50)


def test_a_discarded_body_is_counted_not_kept() -> None:
    decoder = Http1ChunkedDecoder(MAX, MAX)
    assert decoder.feed(b"5\r\nhello\r\n3\r\nabc\r\n", keep=False) == (b"", 18, False)
    assert decoder.decoded == 8


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    body = draw(st.binary(max_size=300))
    encoded = bytearray()
    rest = body
    while rest:
        size = draw(st.integers(1, 64))
        ext = draw(st.sampled_from([b"", b";a", b';a=b;c="d e"', b" ", b"\t "]))
        hex_size = draw(st.sampled_from(["%x", "%X", "%04x"])) % min(size, len(rest))
        encoded += hex_size.encode() + ext + b"\r\n" + rest[:size] + b"\r\n"
        rest = rest[size:]
    encoded += b"0\r\n"
    for name, value in draw(st.lists(st.tuples(tokens, field_values), max_size=3)):
        if name.lower() not in SPECIAL:
            encoded += name.encode() + b": " + value + b"\r\n"
    encoded += b"\r\n"
    return body, bytes(encoded)


@settings(max_examples=300, deadline=timedelta(seconds=2))
@given(chunked_bodies(), st.lists(st.integers(0, 2000), max_size=6))
def test_random_chunked_bodies_decode_however_they_arrive(
    case: tuple[bytes, bytes], cuts: list[int]
) -> None:
    body, encoded = case
    assert h11_decode(encoded) == body
    points = sorted(min(c, len(encoded)) for c in cuts)
    pieces = [encoded[a:b] for a, b in zip([0, *points], [*points, len(encoded)], strict=True)]
    assert decode(pieces) == (body, b"")


@settings(max_examples=500, deadline=timedelta(seconds=2))
@given(st.binary(max_size=200))
def test_random_bytes_into_the_chunked_decoder(data: bytes) -> None:
    # Never a crash or a hang, and nothing h11 refused is accepted.
    try:
        got = decode([data])
    except Http1Error:
        return
    if got is not None:
        assert h11_decode(data[: len(data) - len(got[1])]) == got[0]


# ---------------------------------------------------------------------------------------------
# Over a socket: what the server answers


async def echo(request: Request) -> Response:
    return Response(200, (("x-version", request.http_version),), request.body)


@asynccontextmanager
async def serving(limits: Limits) -> AsyncIterator[int]:
    listeners = await open_listeners("127.0.0.1", 0)
    server = Server(echo, limits, metrics=Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, listeners)
        yield listener_port(listeners[0])
        nursery.cancel_scope.cancel()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the server sends until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()
    async with stream:
        await stream.send_all(data)
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return bytes(received)


#: Timeouts long enough that an answer in time is the parser's doing, not a timeout's.
PATIENT = Limits(header_timeout=30, read_timeout=30, idle_timeout=30, drain_grace=5)


@pytest.mark.parametrize(
    ("request_bytes", "status_line", "says"),
    [
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", b"HTTP/1.1 505 ", b"HTTP version not supported"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 501 ",
            b"Not implemented: Transfer-Encoding",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", b"HTTP/1.1 400 ", b"folding"),
        # Refused on its first byte, long before header_timeout.
        (b"\x16\x03\x01\x00\xa5\x01\x00", b"HTTP/1.1 400 ", b"not a method"),
        (b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 20_000, b"HTTP/1.1 431 ", b"too large"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
            b"HTTP/1.1 400 ",
            b"Bad request: chunk data not followed by CRLF",
        ),
    ],
)
async def test_refusals_over_a_socket(
    request_bytes: bytes, status_line: bytes, says: bytes
) -> None:
    async with serving(PATIENT) as port:
        with trio.fail_after(10):
            received = await exchange(port, request_bytes)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(status_line), received
    assert b"\r\nconnection: close" in head
    assert says in body


async def test_http10_keep_alive_when_asked_and_close_otherwise() -> None:
    async with serving(PATIENT) as port:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                for number in range(2):
                    await stream.send_all(
                        b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n"
                        b"k%d" % number
                    )
                    data = await stream.receive_some(65536)
                    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
                    assert b"\r\nconnection: keep-alive\r\n" in data
                    assert b"\r\nx-version: 1.0\r\n" in data
                    assert data.endswith(b"\r\n\r\nk%d" % number)
            received = await exchange(port, b"GET / HTTP/1.0\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close\r\n" in received


async def test_pipelined_chunked_request_then_another() -> None:
    async with serving(PATIENT) as port:
        with trio.fail_after(10):
            received = await exchange(
                port,
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Expect: 100-continue\r\n\r\n"
                b"3\r\none\r\n3;e\r\ntwo\r\n0\r\nT: v\r\n\r\n"
                b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
                b"three",
            )
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    first, second = received.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert first.endswith(b"\r\n\r\nonetwo")
    assert second.endswith(b"\r\n\r\nthree")
    assert b"\r\nconnection: close\r\n" in second


async def test_chunked_body_over_the_limit_gets_413() -> None:
    limits = Limits(max_body_bytes=1000, header_timeout=30, read_timeout=30, drain_grace=5)
    chunks = b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(8))
    async with serving(limits) as port:
        with trio.fail_after(10):
            received = await exchange(
                port,
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunks
                + b"0\r\n\r\n",
            )
    assert received.startswith(b"HTTP/1.1 413 ")
    assert received.endswith(b"Request body exceeds 1000 bytes\n")
