use proptest::prelude::*;

use super::*;

const MAX: usize = DEFAULT_MAX_HEAD_BYTES;

fn head(bytes: &[u8]) -> RequestHead<'_> {
    match parse_head(bytes, 0, MAX) {
        Ok(Head::Complete(head)) => head,
        other => panic!("expected a complete head, got {other:?}"),
    }
}

fn refusal(bytes: &[u8]) -> RequestError {
    match parse_head(bytes, 0, MAX) {
        Err(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A request whose head is `GET / HTTP/1.1`, Host and then `lines`.
fn with_fields(lines: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: x\r\n{lines}\r\n").into_bytes()
}

fn assert_refused(bytes: &[u8], status: u16, needle: &str) {
    let e = refusal(bytes);
    assert_eq!(
        e.status,
        status,
        "{e:?} for {:?}",
        String::from_utf8_lossy(bytes)
    );
    assert!(
        e.message.contains(needle),
        "{:?} lacks {needle:?}",
        e.message
    );
}

#[test]
fn parses_a_device_request() {
    let raw = b"POST /ManagementServer/MDM.svc?mode=x HTTP/1.1\r\nHost: mdm.example\r\n\
        Content-Type: application/vnd.syncml.dm+xml\r\nContent-Length: 1166\r\n\
        User-Agent: MSFT OMA DM Client/1.2.0.1\r\n\r\n<SyncML>";
    let h = head(raw);
    assert_eq!(h.method, "POST");
    assert_eq!(h.target, "/ManagementServer/MDM.svc?mode=x");
    assert_eq!(h.version, Version::Http11);
    assert_eq!(h.length, raw.len() - b"<SyncML>".len());
    assert_eq!(h.content_length, Some(1166));
    assert!(!h.chunked && h.keep_alive && !h.expect_continue);
    let names: Vec<&[u8]> = h.fields.iter().map(|f| f.name).collect();
    assert_eq!(
        names,
        [
            &b"Host"[..],
            b"Content-Type",
            b"Content-Length",
            b"User-Agent"
        ]
    );
    assert_eq!(h.fields[3].value, b"MSFT OMA DM Client/1.2.0.1");
}

#[test]
fn values_lose_surrounding_whitespace_and_keep_inner() {
    let h =
        head(b"GET / HTTP/1.1\r\nHost:x\r\nX-A: \t a \t b \t\r\nX-B:\r\nX-C: \xe9t\xe9\r\n\r\n");
    assert_eq!(h.fields[0].value, b"x");
    assert_eq!(h.fields[1].value, b"a \t b");
    assert_eq!(h.fields[2].value, b"");
    assert_eq!(h.fields[3].value, b"\xe9t\xe9"); // obs-text is opaque data, kept
}

#[test]
fn bare_lf_line_endings_are_accepted_like_h11() {
    let h = head(b"GET /a HTTP/1.1\nHost: x\nX: y\n\nrest");
    assert_eq!(h.length, b"GET /a HTTP/1.1\nHost: x\nX: y\n\n".len());
    assert_eq!(h.fields.len(), 2);
    let mixed = head(b"GET / HTTP/1.1\r\nHost: x\n\r\n");
    assert_eq!(mixed.fields.len(), 1);
}

#[test]
fn an_incomplete_head_says_how_far_it_was_searched() {
    let whole = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: abcdef\r\n\r\nBODY";
    let mut scanned = 0;
    for end in 1..whole.len() {
        match parse_head(&whole[..end], scanned, MAX).unwrap() {
            Head::Incomplete { seen, scanned: s } => {
                assert_eq!(seen, end);
                assert!(s <= end);
                scanned = s;
            }
            Head::Complete(h) => {
                assert_eq!(&whole[h.length..end], &b"BODY"[..end - h.length]);
                assert_eq!(h, head(whole));
                return;
            }
        }
    }
    panic!("never completed");
}

#[test]
fn nothing_but_a_method_may_start_a_request() {
    // Refused on the first byte, before the head is complete: an empty line (some clients
    // send one after a body), whitespace, a TLS ClientHello on the cleartext port.
    for start in [
        &b"\r\nGET / HTTP/1.1\r\n"[..],
        b"\n",
        b" GET",
        b"\x16\x03\x01\x02\x00",
        b"\x00",
    ] {
        let e = refusal(start);
        assert_eq!(e.status, 400);
        assert!(e.message.contains("not a method"), "{e:?}");
    }
    assert_eq!(
        parse_head(b"", 0, MAX),
        Ok(Head::Incomplete {
            seen: 0,
            scanned: 0
        })
    );
}

#[test]
fn heads_over_the_limit_get_431_complete_or_not() {
    let limit = 100;
    let mut raw = b"GET / HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
    raw.resize(limit - 4, b'a');
    raw.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw.len(), limit);
    assert!(matches!(parse_head(&raw, 0, limit), Ok(Head::Complete(_))));
    raw.insert(30, b'a');
    let e = parse_head(&raw, 0, limit).unwrap_err();
    assert_eq!(e.status, 431);
    assert!(e.message.contains("exceed 100 bytes"));
    // Still arriving, already too long: refused without waiting for the rest.
    let e = parse_head(&raw[..limit], 0, limit).unwrap_err();
    assert_eq!(e.status, 431);
    assert!(matches!(
        parse_head(&raw[..limit - 1], 0, limit),
        Ok(Head::Incomplete { .. })
    ));
    // A short head followed by a long body is not the head's size.
    let mut pipelined = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    pipelined.extend(std::iter::repeat_n(b'z', 10 * limit));
    assert!(matches!(
        parse_head(&pipelined, 0, limit),
        Ok(Head::Complete(_))
    ));
}

#[test]
fn obsolete_line_folding_is_refused() {
    assert_refused(
        &with_fields("X-A: one\r\n  two\r\n"),
        400,
        "obsolete line folding",
    );
    assert_refused(
        &with_fields("X-A: one\r\n\ttwo\r\n"),
        400,
        "obsolete line folding",
    );
    assert_refused(
        b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
        400,
        "obsolete line folding",
    );
}

#[test]
fn header_lines_must_be_name_colon_value() {
    assert_refused(&with_fields("Host : y\r\n"), 400, "whitespace between");
    assert_refused(&with_fields("Host\t: y\r\n"), 400, "whitespace between");
    assert_refused(&with_fields("bad header line\r\n"), 400, "without a colon");
    assert_refused(&with_fields(": value\r\n"), 400, "empty name");
    assert_refused(&with_fields("X(y): z\r\n"), 400, "in the header name");
    assert_refused(&with_fields("X\u{e9}: z\r\n"), 400, "in the header name");
}

#[test]
fn control_bytes_in_values_are_refused() {
    for byte in (0u8..0x20)
        .filter(|&b| b != b'\t' && b != b'\n')
        .chain([0x7f])
    {
        let mut raw = b"GET / HTTP/1.1\r\nHost: x\r\nX: a".to_vec();
        raw.push(byte);
        raw.extend_from_slice(b"b\r\n\r\n");
        let e = refusal(&raw);
        assert_eq!(e.status, 400, "byte {byte:#x}");
    }
    assert_refused(
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n",
        400,
        "0x01",
    );
}

#[test]
fn request_lines_are_strict() {
    assert_refused(b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "request line");
    assert_refused(b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", 400, "");
    assert_refused(b"GET /\r\nHost: x\r\n\r\n", 400, "request line");
    assert_refused(b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "method");
    assert_refused(
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "request target",
    );
    assert_refused(
        b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "request target",
    );
    assert_refused(b"GET / HTTP/1.1\rX\r\nHost: x\r\n\r\n", 400, "");
    let h = head(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((h.method, h.target), ("OPTIONS", "*"));
    let h = head(b"GET http://a.example/p?q=\"{}\" HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(h.target, "http://a.example/p?q=\"{}\"");
}

#[test]
fn only_http_1_0_and_1_1_are_spoken() {
    let h = head(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(h.version, Version::Http10);
    assert!(!h.keep_alive);
    for version in ["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "HTTP/3.0"] {
        let raw = format!("GET / {version}\r\nHost: x\r\n\r\n");
        assert_refused(raw.as_bytes(), 505, &version[5..]);
    }
    for version in ["http/1.1", "HTTP/1.x", "HTTP/11", "HTTP/1.1.1", "HTTP/10.0"] {
        let raw = format!("GET / {version}\r\nHost: x\r\n\r\n");
        let e = refusal(raw.as_bytes());
        assert_eq!(e.status, 400, "{version}: {e:?}");
    }
}

#[test]
fn host_is_required_once_on_1_1() {
    assert_refused(b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400, "no Host");
    assert_refused(
        b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
        400,
        "more than one Host",
    );
    assert_refused(
        b"GET / HTTP/1.0\r\nHost: a\r\nHOST: a\r\n\r\n",
        400,
        "more than one Host",
    );
    assert!(head(b"GET / HTTP/1.0\r\n\r\n").fields.is_empty());
    assert_eq!(
        head(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").fields[0].value,
        b""
    );
}

#[test]
fn content_length_rules() {
    let length = |lines: &str| head(&with_fields(lines)).content_length;
    assert_eq!(length(""), None);
    assert_eq!(length("Content-Length: 0\r\n"), Some(0));
    assert_eq!(length("content-length: 42\r\n"), Some(42));
    assert_eq!(length("Content-Length: 5, 5\r\n"), Some(5));
    assert_eq!(
        length("Content-Length: 5\r\nContent-Length: 5\r\n"),
        Some(5)
    );
    assert_eq!(length("Content-Length: 007\r\n"), Some(7));
    assert_eq!(
        length("Content-Length: 99999999999999999999\r\n"),
        Some(u64::MAX)
    );
    assert_eq!(
        length("Content-Length: 18446744073709551615\r\n"),
        Some(u64::MAX)
    );
    for bad in [
        "+5",
        "-1",
        "",
        "0x5",
        "5 5",
        "5;",
        "1e3",
        "000000000000000000001",
    ] {
        let e = refusal(&with_fields(&format!("Content-Length: {bad}\r\n")));
        assert_eq!(e.status, 400, "{bad:?}");
        assert!(e.message.contains("Content-Length"), "{e:?}");
    }
    assert_refused(&with_fields("Content-Length: 5, 6\r\n"), 400, "conflicting");
    assert_refused(&with_fields("Content-Length: 5,\r\n"), 400, "conflicting");
    assert_refused(
        &with_fields("Content-Length: 5\r\nContent-Length: 6\r\n"),
        400,
        "conflicting",
    );
    let raw = with_fields("Content-Length: 5 ,5\r\n");
    assert_eq!(head(&raw).fields[1].value, b"5");
    let raw = with_fields("Content-Length: 5\r\nX: y\r\ncontent-length: 5\r\n");
    let names: Vec<&[u8]> = head(&raw).fields.iter().map(|f| f.name).collect();
    assert_eq!(names, [&b"Host"[..], b"Content-Length", b"X"]);
    // Equal numbers, spelled differently: h11 compared the bytes, and so do we.
    assert_refused(
        &with_fields("Content-Length: 5\r\nContent-Length: 05\r\n"),
        400,
        "conflicting",
    );
}

#[test]
fn transfer_encoding_rules() {
    let raw = with_fields("Transfer-Encoding: Chunked\r\n");
    let h = head(&raw);
    assert!(h.chunked);
    assert_eq!(h.content_length, None);
    assert_eq!(h.fields[1].value, b"chunked");
    for bad in ["gzip", "gzip, chunked", "chunked, chunked", "identity", ""] {
        let e = refusal(&with_fields(&format!("Transfer-Encoding: {bad}\r\n")));
        assert_eq!(e.status, 501, "{bad:?}: {e:?}");
        assert!(e.message.contains("only chunked"), "{e:?}");
    }
    assert_refused(
        &with_fields("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        501,
        "more than one Transfer-Encoding",
    );
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 0\r\n",
    ] {
        let e = refusal(&with_fields(framing));
        assert_eq!(e.status, 400);
        assert!(e.message.contains("Content-Length and Transfer-Encoding"));
    }
    assert_refused(
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "HTTP/1.0",
    );
    // A refusal names the first problem in header order, as h11 did.
    assert_eq!(
        refusal(&with_fields(
            "Transfer-Encoding: gzip\r\nContent-Length: x\r\n"
        ))
        .status,
        501
    );
    assert_eq!(
        refusal(&with_fields(
            "Content-Length: x\r\nTransfer-Encoding: gzip\r\n"
        ))
        .status,
        400
    );
}

#[test]
fn keep_alive_and_expect() {
    let flags = |raw: &[u8]| {
        let h = head(raw);
        (h.keep_alive, h.expect_continue)
    };
    assert_eq!(flags(&with_fields("")), (true, false));
    assert_eq!(flags(&with_fields("Connection: close\r\n")), (false, false));
    assert_eq!(
        flags(&with_fields("Connection: keep-alive, Close\r\n")),
        (false, false)
    );
    assert_eq!(
        flags(&with_fields("Connection: upgrade\r\n")),
        (true, false)
    );
    assert_eq!(flags(b"GET / HTTP/1.0\r\n\r\n"), (false, false));
    assert_eq!(
        flags(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
        (true, false)
    );
    assert_eq!(
        flags(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"),
        (false, false)
    );
    assert_eq!(
        flags(&with_fields("Expect: 100-Continue\r\n")),
        (true, true)
    );
    assert_eq!(
        flags(&with_fields("Expect: something, 100-continue\r\n")),
        (true, true)
    );
    assert_eq!(flags(&with_fields("Expect: 200-ok\r\n")), (true, false));
    assert_eq!(
        flags(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"),
        (false, false)
    );
    assert_eq!(
        flags(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
        (false, false)
    );
}

#[test]
fn many_headers_take_the_sized_path() {
    let lines: String = (0..500).map(|i| format!("X-{i}: {i}\r\n")).collect();
    let raw = with_fields(&lines);
    let h = head(&raw);
    assert_eq!(h.fields.len(), 501);
    assert_eq!(h.fields[500].name, b"X-499");
    // And a bad line among them is still found.
    let raw = with_fields(&format!("{lines}X-bad : 1\r\n"));
    assert_eq!(refusal(&raw).status, 400);
}

// ---------------------------------------------------------------------------------------------
// Chunked bodies

const LINE: usize = 1024;

/// Decodes `input` fed in the given pieces, as the server feeds what it reads: unconsumed
/// bytes stay at the front of its buffer. The body, and the bytes left after it.
fn feed(pieces: &[&[u8]], limits: (usize, usize)) -> Result<(Vec<u8>, Vec<u8>), RequestError> {
    let mut decoder = ChunkedDecoder::new(limits.0, limits.1);
    let mut buffer = Vec::new();
    let mut body = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        buffer.extend_from_slice(piece);
        let progress = decoder.decode(&buffer, |d| body.extend_from_slice(d))?;
        buffer.drain(..progress.consumed);
        if progress.done {
            assert!(decoder.is_done());
            assert_eq!(decoder.decoded(), body.len() as u64);
            buffer.extend(pieces[i + 1..].iter().copied().flatten());
            return Ok((body, buffer));
        }
    }
    Err(RequestError::bad("incomplete"))
}

fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), RequestError> {
    feed(&[input], (LINE, LINE))
}

#[test]
fn decodes_chunks_extensions_and_trailers() {
    let (body, rest) = decode_all(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT").unwrap();
    assert_eq!(
        (body.as_slice(), rest.as_slice()),
        (&b"hello world"[..], &b"NEXT"[..])
    );
    let (body, _) = decode_all(b"A;name=\"v\"\r\n0123456789\r\n0;x\r\n\r\n").unwrap();
    assert_eq!(body, b"0123456789");
    let (body, _) = decode_all(b"00000000000000000003 \t\r\nabc\r\n000\r\n\r\n").unwrap();
    assert_eq!(body, b"abc");
    let (body, rest) = decode_all(b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B: \xe9\n\r\nN").unwrap();
    assert_eq!((body.as_slice(), rest.as_slice()), (&b"abc"[..], &b"N"[..]));
    let (_, rest) = decode_all(b"0\r\n\nN").unwrap();
    assert_eq!(rest, b"N");
}

#[test]
fn chunked_split_at_every_byte_boundary() {
    let input: &[u8] =
        b"4;e=1\r\nWiki\r\n5 \r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: v\r\n\r\nX";
    let (whole, rest) = decode_all(input).unwrap();
    assert_eq!(whole, b"Wikipedia in\r\n\r\nchunks.");
    assert_eq!(rest, b"X");
    for cut in 0..=input.len() {
        assert_eq!(
            feed(&[&input[..cut], &input[cut..]], (LINE, LINE)).unwrap(),
            (whole.clone(), rest.clone())
        );
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(feed(&bytes, (LINE, LINE)).unwrap(), (whole, rest));
}

#[test]
fn chunked_refusals() {
    let refused = |input: &[u8], needle: &str| {
        let e = decode_all(input).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains(needle), "{e:?} lacks {needle:?}");
    };
    refused(b"5\nhello\r\n0\r\n\r\n", "bare LF");
    refused(b"\r\nhello", "invalid chunk size");
    refused(b"g\r\n", "invalid chunk size");
    refused(b" 5\r\nhello\r\n", "invalid chunk size");
    refused(b"000000000000000000005\r\nhello\r\n", "invalid chunk size");
    refused(b"5 ;x\r\nhello\r\n", "invalid chunk-size line");
    refused(b"5;x\x01\r\nhello\r\n", "invalid chunk-size line");
    refused(b"5;a\rb\r\nhello\r\n", "invalid chunk-size line");
    refused(b"5\r\nhelloX\r\n", "not followed by CRLF");
    refused(b"5\r\nhello\rX", "not followed by CRLF");
    refused(b"5\r\nhello\n0\r\n\r\n", "not followed by CRLF");
    refused(b"0\r\nContent-Length: 5\r\n\r\n", "framing field");
    refused(b"0\r\ntransfer-encoding: chunked\r\n\r\n", "framing field");
    refused(b"0\r\nX: a\r\n b\r\n\r\n", "obsolete line folding");
    refused(b"0\r\nX : a\r\n\r\n", "whitespace between");
    refused(b"0\r\nX: a\x00\r\n\r\n", "control byte");
    refused(b"0\r\n\rX: y\r\n\r\n", "header name");
}

#[test]
fn chunked_limits() {
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(100));
    assert!(feed(&[long_ext.as_bytes()], (200, 200)).is_ok());
    let e = feed(&[long_ext.as_bytes()], (50, 200)).unwrap_err();
    assert!(
        e.message.contains("chunk-size line longer than 50"),
        "{e:?}"
    );
    // Refused as soon as the line is too long, not when it ends.
    let e = feed(&[&long_ext.as_bytes()[..60]], (50, 200)).unwrap_err();
    assert!(e.message.contains("longer than 50"));
    let trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(100));
    assert!(feed(&[trailer.as_bytes()], (50, 200)).is_ok());
    let e = feed(&[trailer.as_bytes()], (50, 60)).unwrap_err();
    assert!(e.message.contains("trailer longer than 60"), "{e:?}");
}

#[test]
fn huge_chunks_count_and_a_failed_decoder_stays_failed() {
    let mut decoder = ChunkedDecoder::new(LINE, LINE);
    let mut seen = 0;
    let input = b"FFFFFFFFFFFFFFFFFFFF\r\nabc";
    let progress = decoder.decode(input, |d| seen += d.len()).unwrap();
    assert_eq!(
        (progress.consumed, progress.done, seen),
        (input.len(), false, 3)
    );
    assert_eq!(decoder.decoded(), 3);
    let mut decoder = ChunkedDecoder::new(LINE, LINE);
    assert!(decoder.decode(b"x\r\n", |_| {}).is_err());
    assert!(decoder.decode(b"0\r\n\r\n", |_| {}).is_err());
    // Done: what follows is the next request's.
    let mut decoder = ChunkedDecoder::new(LINE, LINE);
    let progress = decoder.decode(b"0\r\n\r\n", |_| {}).unwrap();
    assert!(progress.done);
    let again = decoder.decode(b"GET", |_| {}).unwrap();
    assert_eq!((again.consumed, again.done), (0, true));
}

// ---------------------------------------------------------------------------------------------
// Properties

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

fn field_value() -> impl Strategy<Value = Vec<u8>> {
    // Visible bytes and obs-text, with inner spaces and tabs; no surrounding whitespace.
    let byte = prop_oneof![0x21u8..0x7f, 0x80u8..=0xff];
    (
        prop::collection::vec(byte.clone(), 0..6),
        prop::collection::vec((prop_oneof![Just(b' '), Just(b'\t')], byte), 0..4),
    )
        .prop_map(|(mut start, rest)| {
            if start.is_empty() && !rest.is_empty() {
                start.push(b'v');
            }
            for (ws, b) in rest {
                start.push(ws);
                start.push(b);
            }
            start
        })
}

fn reserved(name: &str) -> bool {
    [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "expect",
    ]
    .iter()
    .any(|r| name.eq_ignore_ascii_case(r))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_requests_round_trip(
        method in token(),
        target in "/[!-~]{0,40}",
        minor in 0u8..=1,
        fields in prop::collection::vec((token(), field_value()), 0..12),
        length in prop::option::of(0u64..1_000_000_000),
        lf_only in any::<bool>(),
        tail in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let eol: &[u8] = if lf_only { b"\n" } else { b"\r\n" };
        let fields: Vec<(String, Vec<u8>)> =
            fields.into_iter().filter(|(n, _)| !reserved(n)).collect();
        let mut raw = format!("{method} {target} HTTP/1.{minor}").into_bytes();
        raw.extend_from_slice(eol);
        raw.extend_from_slice(b"Host: h");
        raw.extend_from_slice(eol);
        for (name, value) in &fields {
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(value);
            raw.extend_from_slice(eol);
        }
        if let Some(n) = length {
            raw.extend_from_slice(format!("Content-Length: {n}").as_bytes());
            raw.extend_from_slice(eol);
        }
        raw.extend_from_slice(eol);
        let head_len = raw.len();
        raw.extend_from_slice(&tail);
        let h = head(&raw);
        prop_assert_eq!(h.method, method.as_str());
        prop_assert_eq!(h.target, target.as_str());
        prop_assert_eq!(h.version, if minor == 0 { Version::Http10 } else { Version::Http11 });
        prop_assert_eq!(h.length, head_len);
        prop_assert_eq!(h.content_length, length);
        prop_assert_eq!(h.keep_alive, minor == 1 && method != "CONNECT");
        let got: Vec<(&[u8], &[u8])> = h.fields[1..]
            .iter()
            .take(fields.len())
            .map(|f| (f.name, f.value))
            .collect();
        let want: Vec<(&[u8], &[u8])> =
            fields.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn any_bytes_give_an_answer_and_pieces_agree_with_the_whole(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        cut in any::<prop::sample::Index>(),
        limit in 1usize..400,
    ) {
        let whole = parse_head(&bytes, 0, limit);
        if let Ok(Head::Complete(h)) = &whole {
            prop_assert!(h.length <= limit && h.length <= bytes.len());
        }
        let cut = cut.index(bytes.len() + 1);
        let in_pieces = match parse_head(&bytes[..cut], 0, limit) {
            Ok(Head::Incomplete { scanned, .. }) => parse_head(&bytes, scanned, limit),
            other => other,
        };
        // A refusal may come earlier from fewer bytes (the first byte, or the size), never
        // a different head.
        match (&whole, &in_pieces) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (Err(_), Ok(Head::Incomplete { .. })) | (Ok(Head::Incomplete { .. }), Err(_)) => {}
            (a, b) => prop_assert!(false, "whole {:?}, in pieces {:?}", a, b),
        }
    }

    #[test]
    fn chunked_bodies_round_trip_however_they_arrive(
        body in prop::collection::vec(any::<u8>(), 0..400),
        sizes in prop::collection::vec(1usize..50, 1..20),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut encoded = Vec::new();
        let mut rest = body.as_slice();
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            encoded.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            encoded.extend_from_slice(&rest[..n]);
            encoded.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        encoded.extend_from_slice(b"0\r\n\r\nNEXT");
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(encoded.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for p in points {
            pieces.push(&encoded[start..p]);
            start = p;
        }
        pieces.push(&encoded[start..]);
        let (decoded, after) = feed(&pieces, (LINE, LINE)).unwrap();
        prop_assert_eq!(decoded, body);
        prop_assert_eq!(after, b"NEXT".to_vec());
    }

    #[test]
    fn chunked_decoding_does_not_depend_on_how_the_bytes_arrive(
        parts in prop::collection::vec(
            prop::sample::select(vec![
                "0", "5", "a", "00000000000000000001", ";x=y", " ", "\t", "\r", "\n", "\r\n",
                "hello", "X: y", ":", "Content-Length: 1", "\x01",
            ]),
            0..40,
        ),
        step in 1usize..9,
        limit in 3usize..40,
    ) {
        let input = parts.concat().into_bytes();
        let arrive = |step: usize| {
            let pieces: Vec<&[u8]> = input.chunks(step).collect();
            let mut decoder = ChunkedDecoder::new(limit, limit);
            let mut buffer = Vec::new();
            let mut data = Vec::new();
            for piece in pieces {
                buffer.extend_from_slice(piece);
                if !decoder.is_done() {
                    let Ok(p) = decoder.decode(&buffer, |d| data.extend_from_slice(d)) else {
                        return None;
                    };
                    buffer.drain(..p.consumed);
                }
            }
            Some((data, decoder.is_done().then_some(buffer)))
        };
        prop_assert_eq!(arrive(input.len().max(1)), arrive(step));
    }

    #[test]
    fn any_bytes_into_the_chunked_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut decoder = ChunkedDecoder::new(64, 64);
        let cut = cut.index(bytes.len() + 1);
        let mut buffer = bytes[..cut].to_vec();
        let mut total = 0u64;
        for more in [&bytes[cut..], &[][..]] {
            match decoder.decode(&buffer, |d| total += d.len() as u64) {
                Ok(p) => {
                    prop_assert!(p.consumed <= buffer.len());
                    buffer.drain(..p.consumed);
                }
                Err(_) => break,
            }
            buffer.extend_from_slice(more);
        }
        prop_assert_eq!(total, decoder.decoded());
    }
}
