//! The fleet index (`FleetIndex`) and its targeting query (`TargetResult`). Columns are
//! converted while attached; building, keying and the query run detached for large fleets.

use mdmgate_core::fleet::{self, FleetIndex, Outcome, Query, Scope, Targeting};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use crate::{invalid, items, maybe_detach, platform, type_name};

pyo3::import_exception!(mdmgate.fleet, FleetError);
pyo3::import_exception!(mdmgate.fleet, UnknownApp);

fn error(e: fleet::FleetError) -> PyErr {
    match e {
        fleet::FleetError::Version {
            platform,
            version,
            index,
            error,
        } => invalid(platform, &version, &error, index),
        fleet::FleetError::UnknownApp(_) => UnknownApp::new_err(e.to_string()),
        _ => FleetError::new_err(e.to_string()),
    }
}

/// Borrows the strings of a column; `items` keeps the objects alive.
fn strs<'a>(items: &'a [Bound<'_, PyAny>], what: &str) -> PyResult<Vec<&'a str>> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.cast::<PyString>()
                .map_err(|_| {
                    pyo3::exceptions::PyTypeError::new_err(format!(
                        "{what} item {i} is {}, not str",
                        type_name(item)
                    ))
                })?
                .to_str()
        })
        .collect()
}

#[pyclass(module = "mdmgate._core", name = "FleetIndex")]
pub struct PyFleetIndex {
    inner: FleetIndex,
}

#[pymethods]
impl PyFleetIndex {
    #[new]
    #[pyo3(signature = (ids, org_ids, platforms, supervised, silent = None))]
    fn new(
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        org_ids: Vec<u32>,
        platforms: Vec<u8>,
        supervised: Vec<u8>,
        silent: Option<Vec<u8>>,
    ) -> PyResult<Self> {
        let items = items(ids)?;
        let ids = strs(&items, "ids")?;
        let inner = maybe_detach(py, ids.len(), || {
            FleetIndex::new(
                ids.iter().copied(),
                org_ids,
                &platforms,
                &supervised,
                silent.as_deref(),
            )
        })
        .map_err(error)?;
        Ok(PyFleetIndex { inner })
    }

    fn push_device(
        &mut self,
        id: &str,
        org: u32,
        platform: u8,
        supervised: u8,
        silent: bool,
    ) -> PyResult<usize> {
        self.inner
            .push_device(id, org, platform, supervised, silent)
            .map_err(error)
    }

    fn set_device(
        &mut self,
        device: usize,
        org: u32,
        platform: u8,
        supervised: u8,
        silent: bool,
    ) -> PyResult<()> {
        self.inner
            .set_device(device, org, platform, supervised, silent)
            .map_err(error)
    }

    fn scope(
        &self,
        py: Python<'_>,
        org_ranges: Vec<(u32, u32)>,
        devices: Vec<u32>,
    ) -> PyResult<PyScope> {
        let inner = &self.inner;
        let scope =
            maybe_detach(py, inner.len(), || inner.scope(&org_ranges, &devices)).map_err(error)?;
        Ok(PyScope { inner: scope })
    }

    fn set_licensed(&mut self, app: u32, devices: Vec<u32>) -> PyResult<()> {
        self.inner.set_licensed(app, &devices).map_err(error)
    }

    fn update_licensed(&mut self, app: u32, device: usize, held: bool) -> PyResult<()> {
        self.inner.update_licensed(app, device, held).map_err(error)
    }

    fn is_licensed(&self, app: u32, device: usize) -> PyResult<bool> {
        self.inner.is_licensed(app, device).map_err(error)
    }

    fn set_take_over(&mut self, flags: Vec<u8>) -> PyResult<()> {
        self.inner.set_take_over(&flags).map_err(error)
    }

    fn set_device_take_over(&mut self, device: usize, on: bool) -> PyResult<()> {
        self.inner.set_device_take_over(device, on).map_err(error)
    }

    fn can_take_over(&self, device: usize) -> PyResult<bool> {
        self.inner.can_take_over(device).map_err(error)
    }

    fn set_user_installed(&mut self, app: u32, devices: Vec<u32>) -> PyResult<()> {
        self.inner.set_user_installed(app, &devices).map_err(error)
    }

    fn update_user_installed(&mut self, app: u32, device: usize, user: bool) -> PyResult<()> {
        self.inner
            .update_user_installed(app, device, user)
            .map_err(error)
    }

    fn is_user_installed(&self, app: u32, device: usize) -> PyResult<bool> {
        self.inner.is_user_installed(app, device).map_err(error)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn memory_bytes(&self) -> usize {
        self.inner.memory_bytes()
    }

    fn device_id(&self, device: usize) -> PyResult<&str> {
        if device >= self.inner.len() {
            return Err(error(fleet::FleetError::Device {
                device,
                devices: self.inner.len(),
            }));
        }
        Ok(self.inner.id(device))
    }

    fn device_ids<'py>(
        &self,
        py: Python<'py>,
        devices: Vec<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        for &d in &devices {
            self.device_id(d)?;
        }
        PyList::new(py, devices.into_iter().map(|d| self.inner.id(d)))
    }

    fn set_installed(
        &mut self,
        py: Python<'_>,
        app: u32,
        devices: Vec<u32>,
        versions: &Bound<'_, PyAny>,
        platform_name: &str,
    ) -> PyResult<()> {
        let p = platform(platform_name)?;
        let items = items(versions)?;
        let versions = strs(&items, "versions")?;
        let inner = &mut self.inner;
        maybe_detach(py, versions.len(), || {
            inner.set_installed(app, p, &devices, &versions)
        })
        .map_err(error)
    }

    #[pyo3(signature = (app, device, version))]
    fn update_installed(&mut self, app: u32, device: usize, version: Option<&str>) -> PyResult<()> {
        self.inner
            .update_installed(app, device, version)
            .map_err(error)
    }

    fn installed_key<'py>(
        &self,
        py: Python<'py>,
        app: u32,
        device: usize,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = self.inner.installed_key(app, device).map_err(error)?;
        Ok(key.map(|k| PyBytes::new(py, k)))
    }

    #[pyo3(signature = (
        app, *, version, version_platform, org_range = None, scope = None,
        installed_only = false, platform = None, allow_downgrade = false, licences = None,
        percent = None, seed = "", take_over = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn target(
        &self,
        py: Python<'_>,
        app: u32,
        version: &str,
        version_platform: &str,
        org_range: Option<(u32, u32)>,
        scope: Option<PyRef<'_, PyScope>>,
        installed_only: bool,
        platform: Option<u8>,
        allow_downgrade: bool,
        licences: Option<u64>,
        percent: Option<f64>,
        seed: &str,
        take_over: bool,
    ) -> PyResult<PyTargetResult> {
        let query = Query {
            org_range,
            scope: scope.as_deref().map(|s| &s.inner),
            installed_only,
            platform,
            version,
            version_platform: crate::platform(version_platform)?,
            allow_downgrade,
            licences,
            percent,
            seed,
            take_over,
        };
        let inner = &self.inner;
        let result = maybe_detach(py, inner.len(), || inner.target(app, &query)).map_err(error)?;
        Ok(PyTargetResult { inner: result })
    }
}

/// Device numbers as bytes: Python reads them with `array("I")` in one copy instead of
/// building an int object per device.
fn u32_bytes<'py>(py: Python<'py>, values: &[u32]) -> Bound<'py, PyBytes> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    PyBytes::new(py, &bytes)
}

#[pyclass(module = "mdmgate._core", name = "TargetResult", frozen)]
pub struct PyTargetResult {
    inner: Targeting,
}

#[pymethods]
impl PyTargetResult {
    /// Per device, its outcome code.
    #[getter]
    fn outcomes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.outcomes)
    }

    /// Devices sent the version, in device order, as native-endian u32s.
    #[getter]
    fn selected<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        u32_bytes(py, &self.inner.selected)
    }

    /// Per selected device, 1 when it installs silently and 0 when the user is prompted.
    #[getter]
    fn silent<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let flags: Vec<u8> = self.inner.silent.iter().map(|&s| u8::from(s)).collect();
        PyBytes::new(py, &flags)
    }

    /// Selected devices that take a licence, in device order, as native-endian u32s.
    #[getter]
    fn licensed<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        u32_bytes(py, &self.inner.licensed)
    }

    /// Devices per outcome code.
    #[getter]
    fn counts(&self) -> Vec<u64> {
        self.inner.counts.to_vec()
    }

    fn __len__(&self) -> usize {
        self.inner.outcomes.len()
    }
}

#[pyclass(module = "mdmgate._core", name = "Scope", frozen)]
pub struct PyScope {
    inner: Scope,
}

#[pymethods]
impl PyScope {
    fn __len__(&self) -> usize {
        self.inner.count()
    }

    fn __contains__(&self, device: usize) -> bool {
        self.inner.contains(device)
    }

    /// Devices in the set, ascending.
    fn devices(&self) -> Vec<u32> {
        self.inner.devices()
    }

    fn __or__(&self, other: PyRef<'_, PyScope>) -> PyResult<PyScope> {
        let inner = self.inner.union(&other.inner).map_err(error)?;
        Ok(PyScope { inner })
    }

    fn __sub__(&self, other: PyRef<'_, PyScope>) -> PyResult<PyScope> {
        let inner = self.inner.difference(&other.inner).map_err(error)?;
        Ok(PyScope { inner })
    }
}

/// Names of the outcomes, indexed by their codes.
#[pyfunction]
fn fleet_outcome_names() -> Vec<&'static str> {
    Outcome::ALL
        .iter()
        .map(|o| match o {
            Outcome::Install => "install",
            Outcome::Upgrade => "upgrade",
            Outcome::SkipSame => "skip_same",
            Outcome::SkipNewer => "skip_newer",
            Outcome::Downgrade => "downgrade",
            Outcome::SkipNotInstalled => "skip_not_installed",
            Outcome::SkipPlatform => "skip_platform",
            Outcome::SkipNoLicence => "skip_no_licence",
            Outcome::SkipRollout => "skip_rollout",
            Outcome::OutOfScope => "out_of_scope",
            Outcome::TakeOver => "take_over",
            Outcome::SkipTakeOverUnsupported => "skip_take_over_unsupported",
        })
        .collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fleet_outcome_names, m)?)?;
    m.add_class::<PyFleetIndex>()?;
    m.add_class::<PyTargetResult>()?;
    m.add_class::<PyScope>()?;
    Ok(())
}
