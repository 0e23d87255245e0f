//! Property lists for Python, with `plistlib`'s value mapping: dict, list, str, int, float,
//! bool, bytes, naive `datetime` (UTC), `plistlib.UID`, and `None` for a binary null.

use mdmgate_core::plist::{
    self, civil_from_seconds, Builder, DecodeError, EncodeError, Limits, Value,
};
use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;

use crate::type_name;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDateTime, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};
use pyo3::types::{PyDateAccess, PyTimeAccess, PyTzInfoAccess};
use rustc_hash::FxHashMap;

pyo3::import_exception!(mdmgate.errors, PlistDecodeError);
pyo3::import_exception!(mdmgate.errors, PlistEncodeError);

/// From this size on, the plist is decoded detached from the interpreter into a Rust tree
/// and converted afterwards; smaller ones are built into Python objects directly, which is
/// faster when holding the interpreter for that long does not matter.
const DETACH_AT: usize = 1024 * 1024;
/// Python containers nested deeper than this are refused rather than recursed into (a list
/// that contains itself would otherwise never end).
const MAX_PY_DEPTH: usize = 512;

fn decode_error(e: DecodeError) -> PyErr {
    PlistDecodeError::new_err((e.to_string(), e.offset, e.kind.name()))
}

fn encode_error(e: EncodeError) -> PyErr {
    if e.overflow {
        PyOverflowError::new_err(e.to_string())
    } else {
        PlistEncodeError::new_err((e.to_string(), e.path))
    }
}

/// Builds Python objects straight from the decoder. Errors from Python (a date outside
/// what datetime holds) are kept and reported after decoding.
struct PyBuilder<'py> {
    py: Python<'py>,
    error: Option<PyErr>,
    uid: Option<Bound<'py, PyAny>>,
    /// One string object per distinct key: reports repeat the same keys for every app, and a
    /// reused key object also carries its hash.
    keys: FxHashMap<Box<str>, Bound<'py, PyAny>>,
}

impl<'py> PyBuilder<'py> {
    fn keep(&mut self, result: PyResult<Bound<'py, PyAny>>) -> Bound<'py, PyAny> {
        result.unwrap_or_else(|e| {
            self.error.get_or_insert(e);
            self.py.None().into_bound(self.py)
        })
    }
}

impl<'py> Builder for PyBuilder<'py> {
    type Node = Bound<'py, PyAny>;
    type Array = Vec<Bound<'py, PyAny>>;
    type Dict = Bound<'py, PyDict>;
    const SHARES_NODES: bool = true;
    fn string(&mut self, s: &str) -> Self::Node {
        PyString::new(self.py, s).into_any()
    }
    fn key(&mut self, s: &str) -> Self::Node {
        if let Some(k) = self.keys.get(s) {
            return k.clone();
        }
        let k = PyString::new(self.py, s).into_any();
        self.keys.insert(s.into(), k.clone());
        k
    }
    fn integer(&mut self, i: i128) -> Self::Node {
        int_to_py(self.py, i)
    }
    fn real(&mut self, r: f64) -> Self::Node {
        PyFloat::new(self.py, r).into_any()
    }
    fn boolean(&mut self, b: bool) -> Self::Node {
        PyBool::new(self.py, b).to_owned().into_any()
    }
    fn date(&mut self, secs: f64) -> Self::Node {
        let r = date_to_py(self.py, secs);
        self.keep(r)
    }
    fn data(&mut self, d: &[u8]) -> Self::Node {
        PyBytes::new(self.py, d).into_any()
    }
    fn uid(&mut self, u: u64) -> Self::Node {
        let class = match &self.uid {
            Some(c) => Ok(c.clone()),
            None => self.py.import("plistlib").and_then(|m| m.getattr("UID")),
        };
        let r = class.and_then(|c| {
            self.uid = Some(c.clone());
            c.call1((u,))
        });
        self.keep(r)
    }
    fn null(&mut self) -> Self::Node {
        self.py.None().into_bound(self.py)
    }
    fn array_start(&mut self, len: usize) -> Self::Array {
        Vec::with_capacity(len.min(1024))
    }
    fn array_push(&mut self, array: &mut Self::Array, item: Self::Node) {
        array.push(item);
    }
    fn array_end(&mut self, array: Self::Array) -> Self::Node {
        let r = PyList::new(self.py, array).map(Bound::into_any);
        self.keep(r)
    }
    fn dict_start(&mut self, _len: usize) -> Self::Dict {
        PyDict::new(self.py)
    }
    fn dict_insert(&mut self, dict: &mut Self::Dict, key: Self::Node, value: Self::Node) {
        // SAFETY: all three are live objects; PyDict_SetItem takes its own references and
        // steals none. Called with the interpreter attached.
        let status =
            unsafe { pyo3::ffi::PyDict_SetItem(dict.as_ptr(), key.as_ptr(), value.as_ptr()) };
        if status != 0 {
            let e = PyErr::fetch(self.py);
            self.error.get_or_insert(e);
        }
    }
    fn dict_end(&mut self, dict: Self::Dict) -> Self::Node {
        dict.into_any()
    }
}

/// Plist integers nearly always fit 64 bits, which Python converts without a byte detour.
fn int_to_py(py: Python<'_>, i: i128) -> Bound<'_, PyAny> {
    let n = match i64::try_from(i) {
        Ok(small) => small.into_pyobject(py),
        Err(_) => i.into_pyobject(py),
    };
    match n {
        Ok(n) => n.into_any(),
        Err(never) => match never {},
    }
}

fn to_py<'py>(py: Python<'py>, v: Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::String(s) => PyString::new(py, &s).into_any(),
        Value::Integer(i) => int_to_py(py, i),
        Value::Real(r) => PyFloat::new(py, r).into_any(),
        Value::Boolean(b) => PyBool::new(py, b).to_owned().into_any(),
        Value::Data(d) => PyBytes::new(py, &d).into_any(),
        Value::Null => py.None().into_bound(py),
        Value::Date(secs) => date_to_py(py, secs)?,
        Value::Uid(u) => py.import("plistlib")?.getattr("UID")?.call1((u,))?,
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Dict(entries) => {
            let dict = PyDict::new(py);
            for (k, item) in entries {
                dict.set_item(PyString::new(py, &k), to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

fn date_to_py<'py>(py: Python<'py>, secs: f64) -> PyResult<Bound<'py, PyAny>> {
    if let Some(c) = civil_from_seconds(secs) {
        let year = i32::try_from(c.year).unwrap_or(1);
        #[allow(clippy::cast_possible_truncation)]
        let dt = PyDateTime::new(
            py,
            year,
            c.month as u8,
            c.day as u8,
            c.hour as u8,
            c.minute as u8,
            c.second as u8,
            0,
            None,
        )?;
        return Ok(dt.into_any());
    }
    // Fractional seconds: let datetime round exactly as plistlib's reader does.
    let exact = || -> PyResult<Bound<'py, PyAny>> {
        let datetime = py.import("datetime")?;
        let epoch = datetime.getattr("datetime")?.call1((2001, 1, 1))?;
        let delta = datetime
            .getattr("timedelta")?
            .call((), Some(&[("seconds", secs)].into_py_dict(py)?))?;
        epoch.add(delta)
    };
    exact().map_err(|e| {
        PlistDecodeError::new_err((
            format!("date {secs} seconds from 2001 is outside what datetime holds: {e}"),
            0,
            "structure",
        ))
    })
}

use pyo3::types::IntoPyDict;

fn unsupported(value: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!("unsupported type: {}", type_name(value)))
}

fn datetime_seconds(value: &Bound<'_, PyDateTime>, binary: bool) -> PyResult<f64> {
    if binary && value.get_tzinfo().is_some() {
        return Err(PyTypeError::new_err(
            "binary plists hold naive UTC datetimes; this one has a time zone",
        ));
    }
    let civil = plist::Civil {
        year: i64::from(value.get_year()),
        month: u32::from(value.get_month()),
        day: u32::from(value.get_day()),
        hour: u32::from(value.get_hour()),
        minute: u32::from(value.get_minute()),
        second: u32::from(value.get_second()),
    };
    let whole = plist::seconds_from_civil(&civil);
    let micros = i128::from(value.get_microsecond());
    let total_us = i128::from(whole) * 1_000_000 + micros;
    #[allow(clippy::cast_precision_loss)]
    if micros == 0 {
        Ok(whole as f64)
    } else if total_us.abs() < (1 << 53) {
        // Both exact, so the division rounds once, as timedelta.total_seconds() does.
        Ok(total_us as f64 / 1e6)
    } else {
        let epoch = value
            .py()
            .import("datetime")?
            .getattr("datetime")?
            .call1((2001, 1, 1))?;
        value.sub(epoch)?.call_method0("total_seconds")?.extract()
    }
}

fn from_py(value: &Bound<'_, PyAny>, binary: bool, depth: usize) -> PyResult<Value> {
    if depth > MAX_PY_DEPTH {
        return Err(PlistEncodeError::new_err((
            format!("containers nested deeper than {MAX_PY_DEPTH} (does one contain itself?)"),
            String::new(),
        )));
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_owned()));
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(Value::Boolean(b.is_true()));
    }
    if value.is_instance_of::<PyInt>() {
        return match value.extract::<i128>() {
            Ok(i) => Ok(Value::Integer(i)),
            Err(_) => Err(PyOverflowError::new_err(value.str()?.to_string())),
        };
    }
    if let Ok(f) = value.cast::<PyFloat>() {
        return Ok(Value::Real(f.value()));
    }
    if let Ok(d) = value.cast::<PyDict>() {
        let mut entries = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let Ok(k) = k.cast::<PyString>() else {
                return Err(PyTypeError::new_err("keys must be strings"));
            };
            entries.push((k.to_str()?.to_owned(), from_py(&v, binary, depth + 1)?));
        }
        return Ok(Value::Dict(entries));
    }
    if let Ok(l) = value.cast::<PyList>() {
        let items = l
            .iter()
            .map(|x| from_py(&x, binary, depth + 1))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(Value::Array(items));
    }
    if let Ok(t) = value.cast::<PyTuple>() {
        let items = t
            .iter()
            .map(|x| from_py(&x, binary, depth + 1))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(Value::Array(items));
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(Value::Data(b.as_bytes().to_vec()));
    }
    if let Ok(b) = value.cast::<PyByteArray>() {
        return Ok(Value::Data(b.to_vec()));
    }
    if let Ok(dt) = value.cast::<PyDateTime>() {
        return Ok(Value::Date(datetime_seconds(dt, binary)?));
    }
    let ty = value.get_type();
    if ty.name()?.to_str()? == "UID" && ty.module()?.to_str()? == "plistlib" {
        if !binary {
            return Err(PyTypeError::new_err(
                "unsupported type: UID (UIDs exist only in binary plists)",
            ));
        }
        let data = value.getattr("data")?;
        return data.extract::<u64>().map(Value::Uid).map_err(|_| {
            PyOverflowError::new_err(format!("UID {} does not fit in 64 bits", data))
        });
    }
    Err(unsupported(value))
}

#[pyfunction]
#[pyo3(signature = (data, *, max_bytes=None, max_depth=None, max_nodes=None))]
fn plist_loads<'py>(
    py: Python<'py>,
    data: &[u8],
    max_bytes: Option<usize>,
    max_depth: Option<usize>,
    max_nodes: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let d = Limits::default();
    let limits = Limits {
        max_bytes: max_bytes.unwrap_or(d.max_bytes),
        max_depth: max_depth.unwrap_or(d.max_depth),
        max_nodes: max_nodes.unwrap_or(d.max_nodes),
    };
    if data.len() >= DETACH_AT {
        let value = py
            .detach(|| plist::decode(data, &limits))
            .map_err(decode_error)?;
        return to_py(py, value);
    }
    let mut builder = PyBuilder {
        py,
        error: None,
        uid: None,
        keys: FxHashMap::default(),
    };
    let node = plist::decode_with(data, &limits, &mut builder).map_err(decode_error)?;
    match builder.error {
        Some(e) => Err(e),
        None => Ok(node),
    }
}

#[pyfunction]
#[pyo3(signature = (value, *, binary=false, sort_keys=true))]
fn plist_dumps(
    py: Python<'_>,
    value: &Bound<'_, PyAny>,
    binary: bool,
    sort_keys: bool,
) -> PyResult<Vec<u8>> {
    let v = from_py(value, binary, 0)?;
    let encode = || {
        if binary {
            plist::encode_binary(&v, sort_keys)
        } else {
            plist::encode_xml(&v, sort_keys)
        }
    };
    let result = if matches!(&v, Value::Array(a) if a.len() > 256)
        || matches!(&v, Value::Dict(d) if d.len() > 256)
    {
        py.detach(encode)
    } else {
        encode()
    };
    result.map_err(encode_error)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PLIST_MAX_BYTES", plist::DEFAULT_MAX_BYTES)?;
    m.add("PLIST_MAX_DEPTH", plist::DEFAULT_MAX_DEPTH)?;
    m.add("PLIST_MAX_NODES", plist::DEFAULT_MAX_NODES)?;
    m.add_function(wrap_pyfunction!(plist_loads, m)?)?;
    m.add_function(wrap_pyfunction!(plist_dumps, m)?)?;
    Ok(())
}
