//! `mdmgate._core`: the Python face of `mdmgate-core`.
//!
//! Only argument conversion lives here. A column's strings are borrowed (not copied) from
//! the Python objects while attached to the interpreter and interned; keying, ranking and
//! ordering then run detached, so other Python threads keep going during large batches.

use std::cmp::Ordering;

mod fleet;
mod http1;
mod inventory;
mod plist;
mod syncml;

/// The name of a Python value's type, for error messages.
pub(crate) fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

use mdmgate_core::versions::{
    self, IndexedError, InstallAction, Interned, Keys, Platform, VersionError, MISSING,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

pyo3::import_exception!(mdmgate.errors, InvalidVersion);
pyo3::import_exception!(mdmgate.errors, UnknownPlatform);

/// Below this many rows the cost of detaching outweighs what it frees.
const DETACH_AT: usize = 4096;

fn platform(name: &str) -> PyResult<Platform> {
    Platform::from_name(name).ok_or_else(|| {
        UnknownPlatform::new_err(format!(
            "unknown platform {name:?}; expected one of android, ios, ipados, macos, windows, windows-phone, generic"
        ))
    })
}

fn invalid(platform: Platform, version: &str, error: &VersionError, index: Option<usize>) -> PyErr {
    let mut message = error.describe(platform, version);
    if let Some(i) = index {
        message = format!("item {i}: {message}");
    }
    InvalidVersion::new_err((
        message,
        version.to_owned(),
        platform.name(),
        error.offset,
        index,
    ))
}

/// The items of a Python iterable, held so their strings can be borrowed.
fn items<'py>(values: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if let Ok(list) = values.cast::<PyList>() {
        Ok(list.iter().collect())
    } else {
        values.try_iter()?.collect()
    }
}

/// Interns a column of strings (and `None`s where allowed) without copying them: the
/// `&str`s borrow from `items`, which keeps the string objects alive, and Python strings
/// never change, so the borrows stay valid while detached.
fn intern<'a>(
    items: &'a [Bound<'_, PyAny>],
    what: &str,
    allow_none: bool,
) -> PyResult<Interned<'a>> {
    let mut col = Interned::default();
    for (i, item) in items.iter().enumerate() {
        if i == SAMPLE_ROWS {
            col.expect_more(items.len() - SAMPLE_ROWS);
        }
        if let Some(ahead) = items.get(i + PREFETCH_AHEAD) {
            prefetch(ahead);
        }
        if allow_none && item.is_none() {
            col.push_missing();
            continue;
        }
        let s = item.cast::<PyString>().map_err(|_| {
            let kind = item
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            PyTypeError::new_err(format!("{what} item {i} is {kind}, not str"))
        })?;
        col.push(s.to_str()?);
    }
    Ok(col)
}

/// Rows interned before the table is sized for the rest of the column.
const SAMPLE_ROWS: usize = 16384;
/// How far ahead of the intern loop string objects are pulled into cache: they are
/// scattered over the heap, and waiting for each in turn dominates the loop.
const PREFETCH_AHEAD: usize = 8;

#[inline]
fn prefetch(object: &Bound<'_, PyAny>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is only a hint that
        // never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(object.as_ptr().cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = object;
}

/// Runs `work` detached from the interpreter when the column is large enough to matter.
fn maybe_detach<T: Send, F: Send + FnOnce() -> T>(py: Python<'_>, rows: usize, work: F) -> T {
    if rows >= DETACH_AT {
        py.detach(work)
    } else {
        work()
    }
}

fn keys_of(py: Python<'_>, col: &Interned<'_>, p: Platform) -> PyResult<Keys> {
    let row_of = |e: &IndexedError| col.values()[col.rows()[e.index] as usize];
    maybe_detach(py, col.values().len(), || col.keys(p))
        .map_err(|e| invalid(p, row_of(&e), &e.error, Some(e.index)))
}

fn check_lengths(what: (&str, &str), a: usize, b: usize) -> PyResult<()> {
    if a == b {
        return Ok(());
    }
    Err(PyValueError::new_err(format!(
        "columns differ in length: {} has {a} items, {} has {b}",
        what.0, what.1
    )))
}

fn ordering_int(o: Ordering) -> i8 {
    match o {
        Ordering::Less => -1,
        Ordering::Equal => 0,
        Ordering::Greater => 1,
    }
}

/// Platform names the version rules know, in a fixed order.
#[pyfunction]
fn version_platforms() -> Vec<&'static str> {
    Platform::ALL.iter().map(|p| p.name()).collect()
}

/// Whether the platform installs a lower version over a higher one.
#[pyfunction]
fn version_allows_downgrade(platform_name: &str) -> PyResult<bool> {
    Ok(platform(platform_name)?.allows_downgrade())
}

/// -1, 0 or 1 as `a` is lower than, equal to or higher than `b`.
#[pyfunction]
fn version_compare(a: &str, b: &str, platform_name: &str) -> PyResult<i8> {
    let p = platform(platform_name)?;
    match versions::compare(p, a, b) {
        Ok(o) => Ok(ordering_int(o)),
        Err((which, e)) => Err(invalid(p, if which == 0 { a } else { b }, &e, None)),
    }
}

/// The byte string whose plain order is the version order.
#[pyfunction]
fn version_sort_key<'py>(
    py: Python<'py>,
    version: &str,
    platform_name: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let p = platform(platform_name)?;
    let key = versions::sort_key(p, version).map_err(|e| invalid(p, version, &e, None))?;
    Ok(PyBytes::new(py, &key))
}

#[pyfunction]
fn version_sort_keys<'py>(
    py: Python<'py>,
    versions: &Bound<'py, PyAny>,
    platform_name: &str,
) -> PyResult<Bound<'py, PyList>> {
    let p = platform(platform_name)?;
    let items = items(versions)?;
    let col = intern(&items, "versions", false)?;
    let keys = keys_of(py, &col, p)?;
    let distinct: Vec<Bound<'py, PyBytes>> = (0..keys.len())
        .map(|i| PyBytes::new(py, keys.get(i)))
        .collect();
    PyList::new(py, col.rows().iter().map(|&id| &distinct[id as usize]))
}

fn argsort_items(
    py: Python<'_>,
    items: &[Bound<'_, PyAny>],
    p: Platform,
    descending: bool,
) -> PyResult<Vec<usize>> {
    let col = intern(items, "versions", false)?;
    let keys = keys_of(py, &col, p)?;
    Ok(maybe_detach(py, items.len(), || {
        versions::argsort_rows(&keys.ranks(), col.rows(), descending)
    }))
}

/// Positions of `versions` in version order (stable).
#[pyfunction]
#[pyo3(signature = (versions, platform_name, descending = false))]
fn version_argsort(
    py: Python<'_>,
    versions: &Bound<'_, PyAny>,
    platform_name: &str,
    descending: bool,
) -> PyResult<Vec<usize>> {
    let p = platform(platform_name)?;
    argsort_items(py, &items(versions)?, p, descending)
}

/// A new list holding the same string objects in version order (stable).
#[pyfunction]
#[pyo3(signature = (versions, platform_name, descending = false))]
fn version_sort<'py>(
    py: Python<'py>,
    versions: &Bound<'py, PyAny>,
    platform_name: &str,
    descending: bool,
) -> PyResult<Bound<'py, PyList>> {
    let p = platform(platform_name)?;
    let items = items(versions)?;
    let order = argsort_items(py, &items, p, descending)?;
    // Hand the references `items` holds to the new list instead of taking new ones: in
    // sorted order the objects are visited at random, and each refcount touch misses cache.
    let mut slots: Vec<Option<Bound<'py, PyAny>>> = items.into_iter().map(Some).collect();
    PyList::new(py, order.into_iter().map(|i| slots[i].take()))
}

/// Row-by-row comparison of two equally long columns.
#[pyfunction]
fn version_compare_many(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    platform_name: &str,
) -> PyResult<Vec<i8>> {
    let p = platform(platform_name)?;
    let (items_a, items_b) = (items(a)?, items(b)?);
    check_lengths(("a", "b"), items_a.len(), items_b.len())?;
    let (ca, cb) = (intern(&items_a, "a", false)?, intern(&items_b, "b", false)?);
    let (ka, kb) = (keys_of(py, &ca, p)?, keys_of(py, &cb, p)?);
    Ok(maybe_detach(py, items_a.len(), || {
        versions::compare_rows(&ka, ca.rows(), &kb, cb.rows())
            .into_iter()
            .map(ordering_int)
            .collect()
    }))
}

/// For each group label, the index of its highest version.
#[pyfunction]
fn version_max_per_group<'py>(
    py: Python<'py>,
    groups: &Bound<'py, PyAny>,
    versions: &Bound<'py, PyAny>,
    platform_name: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let p = platform(platform_name)?;
    let (items_g, items_v) = (items(groups)?, items(versions)?);
    check_lengths(("groups", "versions"), items_g.len(), items_v.len())?;
    let (cg, cv) = (
        intern(&items_g, "groups", false)?,
        intern(&items_v, "versions", false)?,
    );
    let keys = keys_of(py, &cv, p)?;
    let best = maybe_detach(py, items_v.len(), || {
        versions::max_per_group(cg.values().len(), cg.rows(), &keys.ranks(), cv.rows())
    });
    let out = PyDict::new(py);
    for (group, row) in cg.values().iter().zip(best) {
        out.set_item(group, row)?;
    }
    Ok(out)
}

/// Names of the install actions, indexed by the codes `version_plan_installs` returns.
#[pyfunction]
fn install_action_names() -> Vec<&'static str> {
    InstallAction::ALL.iter().map(|a| a.name()).collect()
}

/// For each device's installed version (`None`: not installed), the action code and the
/// index into `assigned` of the version to send (-1 for none).
#[pyfunction]
fn version_plan_installs(
    py: Python<'_>,
    assigned: &Bound<'_, PyAny>,
    installed: &Bound<'_, PyAny>,
    platform_name: &str,
) -> PyResult<(Vec<u8>, Vec<i64>)> {
    let p = platform(platform_name)?;
    let assigned_items = items(assigned)?;
    let assigned_col = intern(&assigned_items, "assigned", false)?;
    let assigned_keys = keys_of(py, &assigned_col, p)?;
    let installed_items = items(installed)?;
    let col = intern(&installed_items, "installed", true)?;
    let installed_keys = keys_of(py, &col, p)?;
    Ok(maybe_detach(py, installed_items.len(), || {
        let candidates: Vec<&[u8]> = assigned_col
            .rows()
            .iter()
            .map(|&id| assigned_keys.get(id as usize))
            .collect();
        // One decision per distinct installed version, then spread over the rows.
        let plan_for = |id: u32| {
            let have = (id != MISSING).then(|| installed_keys.get(id as usize));
            let plan = versions::plan_install(&candidates, have, p.allows_downgrade());
            (plan.action as u8, plan.target.map_or(-1, |t| t as i64))
        };
        let distinct: Vec<(u8, i64)> = (0..col.values().len() as u32).map(plan_for).collect();
        let missing = plan_for(MISSING);
        let (actions, targets): (Vec<u8>, Vec<i64>) = col
            .rows()
            .iter()
            .map(|&id| {
                if id == MISSING {
                    missing
                } else {
                    distinct[id as usize]
                }
            })
            .unzip();
        (actions, targets)
    }))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MAX_VERSION_LEN", versions::MAX_VERSION_LEN)?;
    syncml::register(m)?;
    inventory::register(m)?;
    plist::register(m)?;
    fleet::register(m)?;
    http1::register(m)?;
    m.add_function(wrap_pyfunction!(version_platforms, m)?)?;
    m.add_function(wrap_pyfunction!(version_allows_downgrade, m)?)?;
    m.add_function(wrap_pyfunction!(version_compare, m)?)?;
    m.add_function(wrap_pyfunction!(version_sort_key, m)?)?;
    m.add_function(wrap_pyfunction!(version_sort_keys, m)?)?;
    m.add_function(wrap_pyfunction!(version_argsort, m)?)?;
    m.add_function(wrap_pyfunction!(version_sort, m)?)?;
    m.add_function(wrap_pyfunction!(version_compare_many, m)?)?;
    m.add_function(wrap_pyfunction!(version_max_per_group, m)?)?;
    m.add_function(wrap_pyfunction!(install_action_names, m)?)?;
    m.add_function(wrap_pyfunction!(version_plan_installs, m)?)?;
    Ok(())
}
