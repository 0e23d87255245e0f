//! `mdmgate._core`: the Python face of `mdmgate-core`.
//!
//! Only argument conversion lives here. Columns are copied out of Python objects into
//! one owned buffer while attached to the interpreter, then the work runs detached so
//! other Python threads keep going during large batches.

use std::cmp::Ordering;

use mdmgate_core::versions::{self, IndexedError, InstallAction, Keys, Platform, VersionError};
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
    InvalidVersion::new_err((message, version.to_owned(), platform.name(), error.offset, index))
}

/// Version strings copied out of a Python sequence into one buffer.
#[derive(Default)]
struct Column {
    text: String,
    ends: Vec<usize>,
    /// Rows that were `None` (only where the caller allows it).
    missing: Vec<bool>,
}

impl Column {
    fn gather(values: &Bound<'_, PyAny>, what: &str, allow_none: bool) -> PyResult<Column> {
        let mut col = Column::default();
        let mut push = |i: usize, item: Bound<'_, PyAny>| -> PyResult<()> {
            if allow_none && item.is_none() {
                col.missing.push(true);
            } else {
                let s = item.cast::<PyString>().map_err(|_| {
                    let kind = item.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                    PyTypeError::new_err(format!("{what} item {i} is {kind}, not str"))
                })?;
                col.text.push_str(s.to_str()?);
                col.missing.push(false);
            }
            col.ends.push(col.text.len());
            Ok(())
        };
        if let Ok(list) = values.cast::<PyList>() {
            for (i, item) in list.iter().enumerate() {
                push(i, item)?;
            }
        } else {
            for (i, item) in values.try_iter()?.enumerate() {
                push(i, item?)?;
            }
        }
        Ok(col)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Keys of every present row; `None` rows get an empty key nothing compares.
    fn keys(&self, platform: Platform) -> Result<Keys, IndexedError> {
        let mut keys = Keys::default();
        for (index, version) in self.iter().enumerate() {
            if self.missing[index] {
                keys.push_missing();
            } else {
                keys.push(platform, version).map_err(|error| IndexedError { index, error })?;
            }
        }
        Ok(keys)
    }

    fn keys_in(&self, py: Python<'_>, platform: Platform) -> PyResult<Keys> {
        let result = if self.len() >= DETACH_AT {
            py.detach(|| self.keys(platform))
        } else {
            self.keys(platform)
        };
        result.map_err(|e| invalid(platform, self.get(e.index), &e.error, Some(e.index)))
    }
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
fn version_sort_key<'py>(py: Python<'py>, version: &str, platform_name: &str) -> PyResult<Bound<'py, PyBytes>> {
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
    let keys = Column::gather(versions, "versions", false)?.keys_in(py, p)?;
    PyList::new(py, (0..keys.len()).map(|i| PyBytes::new(py, keys.get(i))))
}

fn argsort_column(py: Python<'_>, col: &Column, p: Platform, descending: bool) -> PyResult<Vec<usize>> {
    let keys = col.keys_in(py, p)?;
    Ok(if keys.len() >= DETACH_AT {
        py.detach(|| versions::argsort(&keys, descending))
    } else {
        versions::argsort(&keys, descending)
    })
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
    let col = Column::gather(versions, "versions", false)?;
    argsort_column(py, &col, p, descending)
}

/// A new list holding the same string objects in version order (stable).
#[pyfunction]
#[pyo3(signature = (versions, platform_name, descending = false))]
fn version_sort<'py>(
    py: Python<'py>,
    versions: &Bound<'py, PyList>,
    platform_name: &str,
    descending: bool,
) -> PyResult<Bound<'py, PyList>> {
    let p = platform(platform_name)?;
    let col = Column::gather(versions.as_any(), "versions", false)?;
    let order = argsort_column(py, &col, p, descending)?;
    PyList::new(py, order.into_iter().map(|i| versions.get_item(i)).collect::<PyResult<Vec<_>>>()?)
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
    let ca = Column::gather(a, "a", false)?;
    let cb = Column::gather(b, "b", false)?;
    if ca.len() != cb.len() {
        return Err(PyValueError::new_err(format!(
            "columns differ in length: a has {} items, b has {}",
            ca.len(),
            cb.len()
        )));
    }
    let (ka, kb) = (ca.keys_in(py, p)?, cb.keys_in(py, p)?);
    Ok(versions::compare_columns(&ka, &kb).into_iter().map(ordering_int).collect())
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
    let cg = Column::gather(groups, "groups", false)?;
    let cv = Column::gather(versions, "versions", false)?;
    if cg.len() != cv.len() {
        return Err(PyValueError::new_err(format!(
            "columns differ in length: groups has {} items, versions has {}",
            cg.len(),
            cv.len()
        )));
    }
    let keys = cv.keys_in(py, p)?;
    let labels: Vec<&str> = cg.iter().collect();
    let best = if labels.len() >= DETACH_AT {
        py.detach(|| versions::max_per_group(&labels, &keys))
    } else {
        versions::max_per_group(&labels, &keys)
    };
    let out = PyDict::new(py);
    for (group, row) in best {
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
    let assigned_keys = Column::gather(assigned, "assigned", false)?.keys_in(py, p)?;
    let col = Column::gather(installed, "installed", true)?;
    let installed_keys = col.keys_in(py, p)?;
    let work = || {
        let candidates: Vec<&[u8]> = (0..assigned_keys.len()).map(|i| assigned_keys.get(i)).collect();
        let mut actions = Vec::with_capacity(col.len());
        let mut targets = Vec::with_capacity(col.len());
        for row in 0..col.len() {
            let have = (!col.missing[row]).then(|| installed_keys.get(row));
            let plan = versions::plan_install(&candidates, have, p.allows_downgrade());
            let code = InstallAction::ALL.iter().position(|a| *a == plan.action).unwrap_or(0);
            actions.push(code as u8);
            targets.push(plan.target.map_or(-1, |t| t as i64));
        }
        (actions, targets)
    };
    Ok(if col.len() >= DETACH_AT { py.detach(work) } else { work() })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MAX_VERSION_LEN", versions::MAX_VERSION_LEN)?;
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
