//! HTTP/1.1 request heads and chunked bodies for `mdmgate.server.http1`.
//!
//! The server keeps what it has read in a `bytearray` and hands it over as it is. A mutable
//! buffer is only borrowed while nothing can run Python code: the strings are made inside the
//! borrow (strings are not tracked by the garbage collector, so making them never runs a
//! finaliser that could touch the buffer) and the tuples after it.

use std::os::raw::c_char;

use mdmgate_core::http1::{self, ChunkedDecoder, Head, RequestError, Version};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString, PyTuple};
use pyo3::{ffi, intern};

use crate::type_name;

pyo3::create_exception!(
    mdmgate._core,
    Http1Error,
    pyo3::exceptions::PyValueError,
    "A refused HTTP/1.1 request; `args` is `(status, message)`."
);

fn refused(e: RequestError) -> PyErr {
    Http1Error::new_err((e.status, e.message))
}

/// Runs `work` over the bytes of a `bytes` or `bytearray`; `work` must not run Python code
/// (nor make objects the garbage collector tracks) while it holds them.
fn with_bytes<T>(buffer: &Bound<'_, PyAny>, work: impl FnOnce(&[u8]) -> T) -> PyResult<T> {
    if let Ok(bytes) = buffer.cast::<PyBytes>() {
        return Ok(work(bytes.as_bytes()));
    }
    if let Ok(array) = buffer.cast::<PyByteArray>() {
        // SAFETY: the slice lives only during `work`, which runs no Python code, so nothing
        // can resize or free the bytearray meanwhile.
        return Ok(work(unsafe { array.as_bytes() }));
    }
    Err(PyTypeError::new_err(format!(
        "expected bytes or bytearray, not {}",
        type_name(buffer)
    )))
}

/// Latin-1 text, as header values are read (each byte one code point).
fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    let len =
        isize::try_from(bytes.len()).map_err(|_| PyTypeError::new_err("header value too large"))?;
    // SAFETY: the pointer and length describe `bytes`; a NULL error handler means strict,
    // which latin-1 never needs; the result is a new reference or NULL with an exception.
    unsafe {
        let text =
            ffi::PyUnicode_DecodeLatin1(bytes.as_ptr().cast::<c_char>(), len, std::ptr::null());
        Ok(Bound::from_owned_ptr_or_err(py, text)?.cast_into_unchecked())
    }
}

/// A header name in lower case; the names every device sends are shared objects.
fn field_name<'py>(py: Python<'py>, raw: &[u8]) -> Bound<'py, PyString> {
    let mut small = [0u8; 32];
    let mut large = Vec::new();
    let lower: &mut [u8] = if raw.len() <= small.len() {
        &mut small[..raw.len()]
    } else {
        large.extend_from_slice(raw);
        &mut large
    };
    lower.copy_from_slice(raw);
    lower.make_ascii_lowercase();
    let known = match &*lower {
        b"host" => intern!(py, "host"),
        b"content-length" => intern!(py, "content-length"),
        b"content-type" => intern!(py, "content-type"),
        b"user-agent" => intern!(py, "user-agent"),
        b"accept" => intern!(py, "accept"),
        b"accept-encoding" => intern!(py, "accept-encoding"),
        b"accept-language" => intern!(py, "accept-language"),
        b"authorization" => intern!(py, "authorization"),
        b"connection" => intern!(py, "connection"),
        b"cache-control" => intern!(py, "cache-control"),
        b"cookie" => intern!(py, "cookie"),
        b"expect" => intern!(py, "expect"),
        b"transfer-encoding" => intern!(py, "transfer-encoding"),
        b"client-request-id" => intern!(py, "client-request-id"),
        b"mdm-signature" => intern!(py, "mdm-signature"),
        b"x-forwarded-for" => intern!(py, "x-forwarded-for"),
        _ => {
            // Header names are tokens: ASCII, so also UTF-8.
            let text = std::str::from_utf8(lower).unwrap_or_default();
            return PyString::new(py, text);
        }
    };
    known.clone()
}

fn method_name<'py>(py: Python<'py>, method: &str) -> Bound<'py, PyString> {
    match method {
        "GET" => intern!(py, "GET").clone(),
        "POST" => intern!(py, "POST").clone(),
        "PUT" => intern!(py, "PUT").clone(),
        "HEAD" => intern!(py, "HEAD").clone(),
        "DELETE" => intern!(py, "DELETE").clone(),
        "PATCH" => intern!(py, "PATCH").clone(),
        "OPTIONS" => intern!(py, "OPTIONS").clone(),
        other => PyString::new(py, other),
    }
}

/// A parsed head's strings and framing, made while the buffer is borrowed.
struct HeadObjects<'py> {
    method: Bound<'py, PyString>,
    target: Bound<'py, PyString>,
    version: Bound<'py, PyString>,
    fields: Vec<(Bound<'py, PyString>, Bound<'py, PyString>)>,
    length: usize,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    expect_continue: bool,
}

enum Outcome<'py> {
    Incomplete(usize),
    Complete(Box<HeadObjects<'py>>),
}

fn head_objects<'py>(py: Python<'py>, head: &http1::RequestHead<'_>) -> PyResult<HeadObjects<'py>> {
    let version = match head.version {
        Version::Http10 => intern!(py, "1.0"),
        Version::Http11 => intern!(py, "1.1"),
    };
    let mut fields = Vec::with_capacity(head.fields.len());
    for field in &head.fields {
        fields.push((field_name(py, field.name), latin1(py, field.value)?));
    }
    Ok(HeadObjects {
        method: method_name(py, head.method),
        target: PyString::new(py, head.target),
        version: version.clone(),
        fields,
        length: head.length,
        content_length: head.content_length,
        chunked: head.chunked,
        keep_alive: head.keep_alive,
        expect_continue: head.expect_continue,
    })
}

type ParsedHead<'py> = (
    Bound<'py, PyString>,
    Bound<'py, PyString>,
    Bound<'py, PyString>,
    Bound<'py, PyTuple>,
    usize,
    Option<u64>,
    bool,
    bool,
    bool,
);

/// The request head at the start of `buffer`: `scanned` (an int, to pass back with more
/// bytes) while incomplete, else `(method, target, version, headers, head_length,
/// content_length, chunked, keep_alive, expect_continue)` with header names in lower case
/// and values read as latin-1. `Http1Error` when refused.
#[pyfunction]
fn http1_parse_head<'py>(
    py: Python<'py>,
    buffer: &Bound<'py, PyAny>,
    scanned: usize,
    max_head: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let outcome = with_bytes(buffer, |bytes| {
        match http1::parse_head(bytes, scanned, max_head) {
            Ok(Head::Incomplete { scanned, .. }) => Ok(Outcome::Incomplete(scanned)),
            Ok(Head::Complete(head)) => Ok(Outcome::Complete(Box::new(head_objects(py, &head)?))),
            Err(e) => Err(refused(e)),
        }
    })??;
    let head = match outcome {
        Outcome::Incomplete(scanned) => return Ok(scanned.into_pyobject(py)?.into_any()),
        Outcome::Complete(head) => head,
    };
    let HeadObjects {
        method,
        target,
        version,
        fields,
        length,
        content_length,
        chunked,
        keep_alive,
        expect_continue,
    } = *head;
    let pairs: Vec<Bound<'py, PyTuple>> = fields
        .into_iter()
        .map(|(name, value)| PyTuple::new(py, [name, value]))
        .collect::<PyResult<_>>()?;
    let parsed: ParsedHead<'py> = (
        method,
        target,
        version,
        PyTuple::new(py, pairs)?,
        length,
        content_length,
        chunked,
        keep_alive,
        expect_continue,
    );
    Ok(parsed.into_pyobject(py)?.into_any())
}

/// One chunked request body, decoded as it arrives.
#[pyclass(module = "mdmgate._core", name = "Http1ChunkedDecoder")]
struct PyChunkedDecoder {
    decoder: ChunkedDecoder,
}

#[pymethods]
impl PyChunkedDecoder {
    #[new]
    fn new(max_line: usize, max_trailer: usize) -> Self {
        PyChunkedDecoder {
            decoder: ChunkedDecoder::new(max_line, max_trailer),
        }
    }

    /// Decodes what `buffer` holds: `(data, consumed, done)`. The caller drops `consumed`
    /// bytes from the front of its buffer and calls again once more bytes are appended;
    /// with `keep` false the data is only counted (a body being discarded) and `data` is
    /// empty. `Http1Error` when the body is malformed.
    #[pyo3(signature = (buffer, keep = true))]
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        buffer: &Bound<'py, PyAny>,
        keep: bool,
    ) -> PyResult<(Bound<'py, PyBytes>, usize, bool)> {
        let decoder = &mut self.decoder;
        with_bytes(buffer, |bytes| {
            let mut pieces: Vec<&[u8]> = Vec::new();
            let progress = decoder
                .decode(bytes, |piece| {
                    if keep {
                        pieces.push(piece);
                    }
                })
                .map_err(refused)?;
            let total = pieces.iter().map(|p| p.len()).sum();
            let data = if pieces.len() == 1 {
                PyBytes::new(py, pieces[0])
            } else {
                PyBytes::new_with(py, total, |out| {
                    let mut at = 0;
                    for piece in &pieces {
                        out[at..at + piece.len()].copy_from_slice(piece);
                        at += piece.len();
                    }
                    Ok(())
                })?
            };
            Ok((data, progress.consumed, progress.done))
        })?
    }

    /// Data bytes decoded so far (kept or not).
    #[getter]
    fn decoded(&self) -> u64 {
        self.decoder.decoded()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("HTTP1_MAX_HEAD_BYTES", http1::DEFAULT_MAX_HEAD_BYTES)?;
    m.add("Http1Error", m.py().get_type::<Http1Error>())?;
    m.add_function(wrap_pyfunction!(http1_parse_head, m)?)?;
    m.add_class::<PyChunkedDecoder>()?;
    Ok(())
}
