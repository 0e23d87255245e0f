//! The Windows app inventory of a SyncML message, handed to Python as one JSON array
//! (`msgspec` builds the records from it) instead of an object per element.

use mdmgate_core::syncml::inventory::{app_inventory, write_json};
use mdmgate_core::syncml::{DecodeError, Limits};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pyo3::import_exception!(mdmgate.errors, SyncMLDecodeError);

/// Inputs smaller than this are read without detaching: the switch costs more than it frees.
const DETACH_AT: usize = 64 * 1024;

fn decode_error(e: DecodeError) -> PyErr {
    SyncMLDecodeError::new_err((e.to_string(), e.offset, e.kind.name()))
}

/// The app records of the Results items under `prefix` (answering `cmd_ref`, if given), as
/// a JSON array of objects with the `AppRecord` field names; fields without a value are
/// left out.
#[pyfunction]
#[pyo3(signature = (data, prefix, cmd_ref=None, *, max_bytes=None, max_depth=None, max_elements=None))]
#[allow(clippy::too_many_arguments)]
fn syncml_app_inventory<'py>(
    py: Python<'py>,
    data: &[u8],
    prefix: &str,
    cmd_ref: Option<&str>,
    max_bytes: Option<usize>,
    max_depth: Option<usize>,
    max_elements: Option<usize>,
) -> PyResult<Bound<'py, PyBytes>> {
    let d = Limits::default();
    let limits = Limits {
        max_bytes: max_bytes.unwrap_or(d.max_bytes),
        max_depth: max_depth.unwrap_or(d.max_depth),
        max_elements: max_elements.unwrap_or(d.max_elements),
    };
    let run = || {
        app_inventory(data, prefix, cmd_ref, &limits).map(|records| {
            let mut out = Vec::with_capacity(records.len() * 512 + 2);
            write_json(&records, &mut out);
            out
        })
    };
    let json = if data.len() >= DETACH_AT {
        py.detach(run)
    } else {
        run()
    };
    Ok(PyBytes::new(py, &json.map_err(decode_error)?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(syncml_app_inventory, m)?)
}
