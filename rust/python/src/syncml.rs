//! SyncML for Python: the dict form (`to_dict`/`from_dict`, the shape of `docs/syncml.md`)
//! and the typed objects the gateway's session code uses (`Message`, `Header`, `Command`,
//! `Item`, `MessageBuilder`). Parsing and writing run detached from the interpreter for
//! large inputs; only building Python objects needs it.

use mdmgate_core::syncml::{
    self, meta_key, Attrs, Command as CoreCommand, CommandKind, Cred, Data, DecodeError,
    EncodeError, Encoding, Header as CoreHeader, Item as CoreItem, Limits, Loc,
    Message as CoreMessage, Meta, Value,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::type_name;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

pyo3::import_exception!(mdmgate.errors, SyncMLDecodeError);
pyo3::import_exception!(mdmgate.errors, SyncMLEncodeError);

/// Inputs smaller than this are parsed without detaching: the switch costs more than it frees.
const DETACH_AT: usize = 64 * 1024;

fn decode_error(e: DecodeError) -> PyErr {
    SyncMLDecodeError::new_err((e.to_string(), e.offset, e.kind.name()))
}

fn encode_error(e: EncodeError) -> PyErr {
    SyncMLEncodeError::new_err((e.to_string(), e.path))
}

fn field_error(path: &str, message: impl std::fmt::Display) -> PyErr {
    SyncMLEncodeError::new_err((format!("{path}: {message}"), path.to_owned()))
}

fn limits(
    max_bytes: Option<usize>,
    max_depth: Option<usize>,
    max_elements: Option<usize>,
) -> Limits {
    let d = Limits::default();
    Limits {
        max_bytes: max_bytes.unwrap_or(d.max_bytes),
        max_depth: max_depth.unwrap_or(d.max_depth),
        max_elements: max_elements.unwrap_or(d.max_elements),
    }
}

fn decode_bytes(py: Python<'_>, data: &[u8], limits: &Limits) -> PyResult<CoreMessage> {
    let result = if data.len() >= DETACH_AT {
        py.detach(|| syncml::decode(data, limits))
    } else {
        syncml::decode(data, limits)
    };
    result.map_err(decode_error)
}

fn encode_message(py: Python<'_>, msg: &CoreMessage, wbxml: bool) -> PyResult<Vec<u8>> {
    let run = || {
        if wbxml {
            syncml::encode_wbxml(msg)
        } else {
            syncml::encode_xml(msg)
        }
    };
    let result = if msg.body.len() >= 256 {
        py.detach(run)
    } else {
        run()
    };
    result.map_err(encode_error)
}

// ---------------------------------------------------------------- shared leaf conversions

fn meta_to_py<'py>(py: Python<'py>, meta: &Meta) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in meta {
        let name: &str = name;
        match dict.get_item(name)? {
            None => dict.set_item(name, value)?,
            Some(existing) => {
                // A repeated child (EMI may repeat) becomes a list rather than being lost.
                if let Ok(list) = existing.cast::<PyList>() {
                    list.append(value)?;
                } else {
                    dict.set_item(
                        name,
                        PyList::new(py, [existing, PyString::new(py, value).into_any()])?,
                    )?;
                }
            }
        }
    }
    Ok(dict)
}

fn str_of(value: &Bound<'_, PyAny>, path: &str) -> PyResult<String> {
    value
        .cast::<PyString>()
        .map_err(|_| field_error(path, format!("expected a string, got {}", type_name(value))))?
        .to_str()
        .map(str::to_owned)
}

/// `'text'` or `None`, as Python would show it.
fn py_repr(value: &Option<String>) -> String {
    value.as_ref().map_or_else(
        || "None".to_owned(),
        |v| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'")),
    )
}

fn meta_from_py(value: &Bound<'_, PyAny>, parent: &Path<'_>) -> PyResult<Meta> {
    let parent = || parent.render();
    let Ok(dict) = value.cast::<PyDict>() else {
        return Err(field_error(
            &format!("{}.Meta", parent()),
            format!("expected an object, got {}", type_name(value)),
        ));
    };
    let mut meta = Meta::with_capacity(dict.len());
    for (k, v) in dict.iter() {
        let Ok(name) = k.cast::<PyString>() else {
            return Err(field_error(
                &format!("{}.Meta", parent()),
                format!("keys must be strings, got {}", type_name(&k)),
            ));
        };
        let key = meta_key(name.to_str()?);
        if let Ok(s) = v.cast::<PyString>() {
            meta.push((key, s.to_str()?.to_owned()));
        } else if let Ok(list) = v.cast::<PyList>() {
            for x in list.iter() {
                let Ok(x) = x.cast::<PyString>() else {
                    return Err(field_error(
                        &format!("{}.Meta.{key}", parent()),
                        format!("expected a string, got {}", type_name(&x)),
                    ));
                };
                meta.push((key.clone(), x.to_str()?.to_owned()));
            }
        } else {
            return Err(field_error(
                &format!("{}.Meta.{key}", parent()),
                format!(
                    "expected a string or a list of strings, got {}",
                    type_name(&v)
                ),
            ));
        }
    }
    Ok(meta)
}

fn attrs_to_py<'py>(py: Python<'py>, attrs: &Attrs) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (k, v) in attrs {
        dict.set_item(k, v)?;
    }
    Ok(dict)
}

fn attrs_from_py(value: &Bound<'_, PyAny>, path: &str) -> PyResult<Attrs> {
    let dict = value.cast::<PyDict>().map_err(|_| {
        field_error(
            path,
            format!("DataAttrs must be an object, got {}", type_name(value)),
        )
    })?;
    dict.iter()
        .map(|(k, v)| Ok((str_of(&k, path)?, str_of(&v, path)?)))
        .collect()
}

fn value_to_py<'py>(py: Python<'py>, value: &Value) -> Bound<'py, PyAny> {
    match value {
        Value::Text(s) => PyString::new(py, s).into_any(),
        Value::Binary(b) => PyBytes::new(py, b).into_any(),
    }
}

fn value_from_py(value: &Bound<'_, PyAny>, path: &str) -> PyResult<Value> {
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Value::Text(s.to_str()?.to_owned()));
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(Value::Binary(b.as_bytes().to_vec()));
    }
    Err(field_error(
        path,
        format!("Data must be str or bytes, got {}", type_name(value)),
    ))
}

fn str_list(value: &Bound<'_, PyAny>, path: &str) -> PyResult<Vec<String>> {
    if value.is_instance_of::<PyString>() {
        return Err(field_error(
            path,
            "expected a list of strings, got a string",
        ));
    }
    value
        .try_iter()?
        .enumerate()
        .map(|(i, x)| str_of(&x?, &format!("{path}[{i}]")))
        .collect()
}

// ---------------------------------------------------------------- dict form

fn set_opt(dict: &Bound<'_, PyDict>, key: &str, value: &Option<String>) -> PyResult<()> {
    if let Some(v) = value {
        dict.set_item(key, v)?;
    }
    Ok(())
}

fn loc_to_dict<'py>(py: Python<'py>, loc: &Loc) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("LocURI", &loc.uri)?;
    set_opt(&d, "LocName", &loc.name)?;
    Ok(d)
}

fn data_into(py: Python<'_>, d: &Bound<'_, PyDict>, data: &Option<Data>) -> PyResult<()> {
    if let Some(data) = data {
        d.set_item("Data", value_to_py(py, &data.value))?;
        if !data.attrs.is_empty() {
            d.set_item("DataAttrs", attrs_to_py(py, &data.attrs)?)?;
        }
    }
    Ok(())
}

fn item_to_dict<'py>(py: Python<'py>, item: &CoreItem) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    if let Some(l) = &item.target {
        d.set_item("Target", loc_to_dict(py, l)?)?;
    }
    if let Some(l) = &item.source {
        d.set_item("Source", loc_to_dict(py, l)?)?;
    }
    if let Some(m) = &item.meta {
        d.set_item("Meta", meta_to_py(py, m)?)?;
    }
    data_into(py, &d, &item.data)?;
    if item.more_data {
        d.set_item("MoreData", true)?;
    }
    Ok(d)
}

fn command_to_dict<'py>(py: Python<'py>, c: &CoreCommand) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    set_opt(&d, "CmdID", &c.cmd_id)?;
    if c.no_resp {
        d.set_item("NoResp", true)?;
    }
    if let Some(l) = &c.target {
        d.set_item("Target", loc_to_dict(py, l)?)?;
    }
    if let Some(l) = &c.source {
        d.set_item("Source", loc_to_dict(py, l)?)?;
    }
    set_opt(&d, "MsgRef", &c.msg_ref)?;
    set_opt(&d, "CmdRef", &c.cmd_ref)?;
    set_opt(&d, "Cmd", &c.cmd)?;
    if let Some(m) = &c.meta {
        d.set_item("Meta", meta_to_py(py, m)?)?;
    }
    if !c.target_refs.is_empty() {
        d.set_item("TargetRef", &c.target_refs)?;
    }
    if !c.source_refs.is_empty() {
        d.set_item("SourceRef", &c.source_refs)?;
    }
    if let Some(chal) = &c.chal {
        let ch = PyDict::new(py);
        ch.set_item("Meta", meta_to_py(py, chal)?)?;
        d.set_item("Chal", ch)?;
    }
    data_into(py, &d, &c.data)?;
    set_opt(&d, "Correlator", &c.correlator)?;
    if c.kind == CommandKind::Map && !c.items.is_empty() {
        let items = c
            .items
            .iter()
            .map(|i| item_to_dict(py, i))
            .collect::<PyResult<Vec<_>>>()?;
        d.set_item("MapItem", items)?;
    } else if c.kind.is_container() {
        // Always present, like SyncBody, so an empty Atomic still reads as a container.
        let inner = c
            .commands
            .iter()
            .map(|x| command_to_dict(py, x))
            .collect::<PyResult<Vec<_>>>()?;
        d.set_item("Commands", inner)?;
    } else if !c.items.is_empty() && c.kind != CommandKind::Map {
        let items = c
            .items
            .iter()
            .map(|i| item_to_dict(py, i))
            .collect::<PyResult<Vec<_>>>()?;
        d.set_item("Item", items)?;
    }
    let outer = PyDict::new(py);
    outer.set_item(c.kind.name(), d)?;
    Ok(outer)
}

fn message_to_dict<'py>(py: Python<'py>, m: &CoreMessage) -> PyResult<Bound<'py, PyDict>> {
    let h = &m.header;
    let hd = PyDict::new(py);
    hd.set_item("VerDTD", &h.ver_dtd)?;
    hd.set_item("VerProto", &h.ver_proto)?;
    hd.set_item("SessionID", &h.session_id)?;
    hd.set_item("MsgID", &h.msg_id)?;
    if let Some(l) = &h.target {
        hd.set_item("Target", loc_to_dict(py, l)?)?;
    }
    if let Some(l) = &h.source {
        hd.set_item("Source", loc_to_dict(py, l)?)?;
    }
    set_opt(&hd, "RespURI", &h.resp_uri)?;
    if h.no_resp {
        hd.set_item("NoResp", true)?;
    }
    if let Some(cred) = &h.cred {
        let cd = PyDict::new(py);
        if let Some(meta) = &cred.meta {
            cd.set_item("Meta", meta_to_py(py, meta)?)?;
        }
        set_opt(&cd, "Data", &cred.data)?;
        hd.set_item("Cred", cd)?;
    }
    if let Some(meta) = &h.meta {
        hd.set_item("Meta", meta_to_py(py, meta)?)?;
    }
    let body = m
        .body
        .iter()
        .map(|c| command_to_dict(py, c))
        .collect::<PyResult<Vec<_>>>()?;
    let d = PyDict::new(py);
    d.set_item("SyncHdr", hd)?;
    d.set_item("SyncBody", body)?;
    d.set_item("Final", m.is_final)?;
    Ok(d)
}

/// Where a value sits in the message (`SyncBody[2].Get.Item[0]`), rendered only for errors.
#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    name: &'a str,
    index: Option<usize>,
}

impl<'a> Path<'a> {
    const fn root(name: &'a str) -> Path<'a> {
        Path {
            parent: None,
            name,
            index: None,
        }
    }

    fn name(&'a self, name: &'a str) -> Path<'a> {
        Path {
            parent: Some(self),
            name,
            index: None,
        }
    }

    fn at(&'a self, name: &'a str, index: usize) -> Path<'a> {
        Path {
            parent: Some(self),
            name,
            index: Some(index),
        }
    }

    fn render(&self) -> String {
        let mut parts = Vec::new();
        let mut here = Some(self);
        while let Some(p) = here {
            parts.push(p);
            here = p.parent;
        }
        let mut out = String::new();
        for p in parts.iter().rev() {
            if !out.is_empty() && !p.name.is_empty() {
                out.push('.');
            }
            out.push_str(p.name);
            if let Some(i) = p.index {
                out.push_str(&format!("[{i}]"));
            }
        }
        out
    }
}

/// Reads an object's fields, refusing any key it does not know so typos are not dropped.
/// The dict is walked once; paths for error messages are only built when there is an error.
struct Fields<'py, 'p> {
    found: Vec<(&'static str, Bound<'py, PyAny>)>,
    path: Path<'p>,
}

impl<'py, 'p> Fields<'py, 'p> {
    fn of(
        value: &Bound<'py, PyAny>,
        path: Path<'p>,
        allowed: &[&'static str],
    ) -> PyResult<Fields<'py, 'p>> {
        let Ok(dict) = value.cast::<PyDict>() else {
            return Err(field_error(
                &path.render(),
                format!("expected an object, got {}", type_name(value)),
            ));
        };
        let mut found = Vec::with_capacity(dict.len());
        for (key, v) in dict.iter() {
            let Ok(key) = key.cast::<PyString>() else {
                return Err(field_error(
                    &path.render(),
                    format!("keys must be strings, got {}", type_name(&key)),
                ));
            };
            let key = key.to_str()?;
            let Some(known) = allowed.iter().find(|a| **a == key) else {
                return Err(field_error(
                    &path.render(),
                    format!(
                        "unknown field {key:?}; expected one of {}",
                        allowed.join(", ")
                    ),
                ));
            };
            if !v.is_none() {
                found.push((*known, v));
            }
        }
        Ok(Fields { found, path })
    }

    fn get(&self, key: &str) -> Option<&Bound<'py, PyAny>> {
        self.found.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn here(&self, key: &str) -> String {
        format!("{}.{key}", self.path.render())
    }

    fn string(&self, key: &str) -> PyResult<Option<String>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.cast::<PyString>() {
            Ok(s) => Ok(Some(s.to_str()?.to_owned())),
            Err(_) => Err(field_error(
                &self.here(key),
                format!("expected a string, got {}", type_name(v)),
            )),
        }
    }

    fn required(&self, key: &str) -> PyResult<String> {
        self.string(key)?
            .ok_or_else(|| field_error(&self.path.render(), format!("{key} is required")))
    }

    fn flag(&self, key: &str) -> PyResult<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => v
                .extract::<bool>()
                .map_err(|_| field_error(&self.here(key), "expected true or false")),
        }
    }

    fn meta(&self, key: &str) -> PyResult<Option<Meta>> {
        self.get(key)
            .map(|v| meta_from_py(v, &self.path))
            .transpose()
    }

    fn loc(&self, key: &str) -> PyResult<Option<Loc>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let f = Fields::of(v, self.path.name(key), &["LocURI", "LocName"])?;
        Ok(Some(Loc {
            uri: f.required("LocURI")?,
            name: f.string("LocName")?,
        }))
    }

    fn data(&self) -> PyResult<Option<Data>> {
        let Some(v) = self.get("Data") else {
            if self.get("DataAttrs").is_some() {
                return Err(field_error(&self.path.render(), "DataAttrs without Data"));
            }
            return Ok(None);
        };
        let value = if v.is_instance_of::<PyString>() || v.is_instance_of::<PyBytes>() {
            value_from_py(v, "Data")?
        } else {
            let got = type_name(v);
            return Err(field_error(
                &self.here("Data"),
                format!("Data must be str or bytes, got {got}"),
            ));
        };
        let attrs = match self.get("DataAttrs") {
            Some(a) => attrs_from_py(a, &self.here("DataAttrs"))?,
            None => Attrs::new(),
        };
        Ok(Some(Data { value, attrs }))
    }

    fn list(&self, key: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let Some(v) = self.get(key) else {
            return Ok(Vec::new());
        };
        let list = v
            .cast::<PyList>()
            .map_err(|_| field_error(&self.here(key), "expected a list"))?;
        Ok(list.iter().collect())
    }
}

const ITEM_FIELDS: &[&str] = &["Target", "Source", "Meta", "Data", "DataAttrs", "MoreData"];

fn item_from_dict(value: &Bound<'_, PyAny>, path: Path<'_>, map_item: bool) -> PyResult<CoreItem> {
    let allowed: &[&str] = if map_item {
        &["Target", "Source"]
    } else {
        ITEM_FIELDS
    };
    let f = Fields::of(value, path, allowed)?;
    Ok(CoreItem {
        target: f.loc("Target")?,
        source: f.loc("Source")?,
        meta: f.meta("Meta")?,
        data: f.data()?,
        more_data: f.flag("MoreData")?,
    })
}

fn command_fields(kind: CommandKind) -> &'static [&'static str] {
    use CommandKind as K;
    match kind {
        K::Alert => &[
            "CmdID",
            "NoResp",
            "Meta",
            "Data",
            "DataAttrs",
            "Correlator",
            "Item",
        ],
        K::Add | K::Replace | K::Delete | K::Copy | K::Get => &["CmdID", "NoResp", "Meta", "Item"],
        K::Exec => &["CmdID", "NoResp", "Meta", "Correlator", "Item"],
        K::Atomic | K::Sequence => &["CmdID", "NoResp", "Meta", "Commands"],
        K::Results => &[
            "CmdID",
            "MsgRef",
            "CmdRef",
            "Meta",
            "TargetRef",
            "SourceRef",
            "Item",
        ],
        K::Status => &[
            "CmdID",
            "MsgRef",
            "CmdRef",
            "Cmd",
            "Meta",
            "TargetRef",
            "SourceRef",
            "Chal",
            "Data",
            "DataAttrs",
            "Item",
        ],
        K::Map => &["CmdID", "Target", "Source", "Meta", "MapItem"],
    }
}

fn command_from_dict(value: &Bound<'_, PyAny>, path: Path<'_>) -> PyResult<CoreCommand> {
    let dict = value.cast::<PyDict>().map_err(|_| {
        field_error(
            &path.render(),
            format!(
                "a command is an object like {{\"Get\": {{...}}}}, got {}",
                type_name(value)
            ),
        )
    })?;
    if dict.len() != 1 {
        return Err(field_error(
            &path.render(),
            "a command is an object with exactly one key, the command name",
        ));
    }
    let (name, body) = dict
        .iter()
        .next()
        .ok_or_else(|| field_error(&path.render(), "empty command"))?;
    let name = str_of(&name, &path.render())?;
    let kind = CommandKind::from_name(&name)
        .ok_or_else(|| field_error(&path.render(), format!("unknown command {name:?}")))?;
    let f = Fields::of(&body, path.name(&name), command_fields(kind))?;
    let mut c = CoreCommand::new(kind);
    c.cmd_id = f.string("CmdID")?;
    c.no_resp = f.flag("NoResp")?;
    c.meta = f.meta("Meta")?;
    c.data = f.data()?;
    c.msg_ref = f.string("MsgRef")?;
    c.cmd_ref = f.string("CmdRef")?;
    c.cmd = f.string("Cmd")?;
    c.correlator = f.string("Correlator")?;
    c.target = f.loc("Target")?;
    c.source = f.loc("Source")?;
    if let Some(v) = f.get("TargetRef") {
        c.target_refs = str_list(v, &f.here("TargetRef"))?;
    }
    if let Some(v) = f.get("SourceRef") {
        c.source_refs = str_list(v, &f.here("SourceRef"))?;
    }
    if let Some(v) = f.get("Chal") {
        let chal = Fields::of(v, f.path.name("Chal"), &["Meta"])?;
        c.chal = Some(chal.meta("Meta")?.unwrap_or_default());
    }
    let (key, map_item) = if kind == CommandKind::Map {
        ("MapItem", true)
    } else {
        ("Item", false)
    };
    for (i, x) in f.list(key)?.iter().enumerate() {
        c.items
            .push(item_from_dict(x, f.path.at(key, i), map_item)?);
    }
    for (i, x) in f.list("Commands")?.iter().enumerate() {
        c.commands
            .push(command_from_dict(x, f.path.at("Commands", i))?);
    }
    Ok(c)
}

fn message_from_dict(value: &Bound<'_, PyAny>) -> PyResult<CoreMessage> {
    let top = Fields::of(
        value,
        Path::root("message"),
        &["SyncHdr", "SyncBody", "Final"],
    )?;
    let hv = top
        .get("SyncHdr")
        .ok_or_else(|| field_error("message", "SyncHdr is required"))?;
    let h = Fields::of(
        hv,
        Path::root("SyncHdr"),
        &[
            "VerDTD",
            "VerProto",
            "SessionID",
            "MsgID",
            "Target",
            "Source",
            "RespURI",
            "NoResp",
            "Cred",
            "Meta",
        ],
    )?;
    let cred = match h.get("Cred") {
        None => None,
        Some(v) => {
            let cf = Fields::of(v, h.path.name("Cred"), &["Meta", "Data"])?;
            Some(Cred {
                meta: cf.meta("Meta")?,
                data: cf.string("Data")?,
            })
        }
    };
    let header = CoreHeader {
        ver_dtd: h.string("VerDTD")?.unwrap_or_else(|| "1.2".into()),
        ver_proto: h.string("VerProto")?.unwrap_or_else(|| "DM/1.2".into()),
        session_id: h.required("SessionID")?,
        msg_id: h.required("MsgID")?,
        target: h.loc("Target")?,
        source: h.loc("Source")?,
        resp_uri: h.string("RespURI")?,
        no_resp: h.flag("NoResp")?,
        cred,
        meta: h.meta("Meta")?,
    };
    let mut body = Vec::new();
    for (i, x) in top.list("SyncBody")?.iter().enumerate() {
        body.push(command_from_dict(
            x,
            Path {
                parent: None,
                name: "SyncBody",
                index: Some(i),
            },
        )?);
    }
    Ok(CoreMessage {
        header,
        body,
        is_final: top.flag("Final")?,
    })
}

#[pyfunction]
#[pyo3(signature = (data, *, max_bytes=None, max_depth=None, max_elements=None))]
fn syncml_to_dict<'py>(
    py: Python<'py>,
    data: &[u8],
    max_bytes: Option<usize>,
    max_depth: Option<usize>,
    max_elements: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let msg = decode_bytes(py, data, &limits(max_bytes, max_depth, max_elements))?;
    message_to_dict(py, &msg)
}

#[pyfunction]
#[pyo3(signature = (message, *, wbxml=false))]
fn syncml_from_dict<'py>(
    py: Python<'py>,
    message: &Bound<'py, PyAny>,
    wbxml: bool,
) -> PyResult<Vec<u8>> {
    let msg = message_from_dict(message)?;
    encode_message(py, &msg, wbxml)
}

#[pyfunction]
fn syncml_detect(data: &[u8]) -> &'static str {
    match Encoding::detect(data) {
        Encoding::Xml => "xml",
        Encoding::Wbxml => "wbxml",
    }
}

// ---------------------------------------------------------------- typed objects

/// One item of a command. `target`/`source` are LocURIs.
#[pyclass(module = "mdmgate._core", name = "Item")]
pub struct PyItem {
    #[pyo3(get, set)]
    target: Option<String>,
    #[pyo3(get, set)]
    target_name: Option<String>,
    #[pyo3(get, set)]
    source: Option<String>,
    #[pyo3(get, set)]
    source_name: Option<String>,
    meta: Option<Meta>,
    data: Option<Value>,
    data_attrs: Attrs,
    #[pyo3(get, set)]
    more_data: bool,
}

fn split_loc(loc: Option<Loc>) -> (Option<String>, Option<String>) {
    match loc {
        Some(l) => (Some(l.uri), l.name),
        None => (None, None),
    }
}

fn join_loc(uri: &Option<String>, name: &Option<String>) -> Option<Loc> {
    uri.as_ref().map(|u| Loc {
        uri: u.clone(),
        name: name.clone(),
    })
}

fn meta_lookup<'a>(meta: &'a Option<Meta>, key: &str) -> Option<&'a str> {
    meta.as_ref()?
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn opt_value(value: Option<&Bound<'_, PyAny>>, path: &str) -> PyResult<Option<Value>> {
    value
        .filter(|v| !v.is_none())
        .map(|v| value_from_py(v, path))
        .transpose()
}

fn opt_attrs(value: Option<&Bound<'_, PyAny>>, path: &str) -> PyResult<Attrs> {
    value
        .filter(|v| !v.is_none())
        .map_or_else(|| Ok(Attrs::new()), |a| attrs_from_py(a, path))
}

fn opt_meta(value: Option<&Bound<'_, PyAny>>, path: &str) -> PyResult<Option<Meta>> {
    value
        .filter(|v| !v.is_none())
        .map(|v| meta_from_py(v, &Path::root(path)))
        .transpose()
}

impl PyItem {
    fn from_core(item: CoreItem) -> PyItem {
        let (target, target_name) = split_loc(item.target);
        let (source, source_name) = split_loc(item.source);
        let (data, data_attrs) = match item.data {
            Some(d) => (Some(d.value), d.attrs),
            None => (None, Attrs::new()),
        };
        PyItem {
            target,
            target_name,
            source,
            source_name,
            meta: item.meta,
            data,
            data_attrs,
            more_data: item.more_data,
        }
    }

    fn to_core(&self) -> CoreItem {
        CoreItem {
            target: join_loc(&self.target, &self.target_name),
            source: join_loc(&self.source, &self.source_name),
            meta: self.meta.clone(),
            data: self.data.as_ref().map(|v| Data {
                value: v.clone(),
                attrs: self.data_attrs.clone(),
            }),
            more_data: self.more_data,
        }
    }
}

#[pymethods]
impl PyItem {
    #[new]
    #[pyo3(signature = (*, target=None, source=None, meta=None, data=None, data_attrs=None, more_data=false, target_name=None, source_name=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        target: Option<String>,
        source: Option<String>,
        meta: Option<&Bound<'_, PyAny>>,
        data: Option<&Bound<'_, PyAny>>,
        data_attrs: Option<&Bound<'_, PyAny>>,
        more_data: bool,
        target_name: Option<String>,
        source_name: Option<String>,
    ) -> PyResult<PyItem> {
        Ok(PyItem {
            target,
            target_name,
            source,
            source_name,
            meta: opt_meta(meta, "Item.meta")?,
            data: opt_value(data, "Item.data")?,
            data_attrs: opt_attrs(data_attrs, "Item.data_attrs")?,
            more_data,
        })
    }

    /// The item's `syncml:metinf` children; `None` when it has no Meta.
    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.meta.as_ref().map(|m| meta_to_py(py, m)).transpose()
    }

    #[setter]
    fn set_meta(&mut self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.meta = opt_meta(value, "Item.meta")?;
        Ok(())
    }

    /// Meta `Format` (`chr`, `int`, `node`, `b64`, `xml`…), if given.
    #[getter]
    fn format(&self) -> Option<&str> {
        meta_lookup(&self.meta, "Format")
    }

    /// Meta `Type`, if given.
    #[getter(r#type)]
    fn type_(&self) -> Option<&str> {
        meta_lookup(&self.meta, "Type")
    }

    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.data.as_ref().map(|v| value_to_py(py, v))
    }

    #[setter]
    fn set_data(&mut self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.data = opt_value(value, "Item.data")?;
        Ok(())
    }

    #[getter]
    fn data_attrs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        attrs_to_py(py, &self.data_attrs)
    }

    #[setter]
    fn set_data_attrs(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.data_attrs = attrs_from_py(value, "Item.data_attrs")?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        let data = self.data.as_ref().map(|v| match v {
            Value::Text(s) => s.chars().take(40).collect::<String>(),
            Value::Binary(b) => format!("<{} bytes>", b.len()),
        });
        format!(
            "Item(target={}, source={}, data={})",
            py_repr(&self.target),
            py_repr(&self.source),
            py_repr(&data)
        )
    }
}

/// One command of a SyncBody. `name` is the SyncML element name (`Get`, `Status`…).
#[pyclass(module = "mdmgate._core", name = "Command")]
pub struct PyCommand {
    kind: CommandKind,
    #[pyo3(get, set)]
    cmd_id: Option<String>,
    #[pyo3(get, set)]
    no_resp: bool,
    meta: Option<Meta>,
    data: Option<Value>,
    data_attrs: Attrs,
    #[pyo3(get, set)]
    items: Py<PyList>,
    #[pyo3(get, set)]
    msg_ref: Option<String>,
    #[pyo3(get, set)]
    cmd_ref: Option<String>,
    #[pyo3(get, set)]
    cmd: Option<String>,
    #[pyo3(get, set)]
    target_refs: Vec<String>,
    #[pyo3(get, set)]
    source_refs: Vec<String>,
    chal: Option<Meta>,
    #[pyo3(get, set)]
    correlator: Option<String>,
    #[pyo3(get, set)]
    target: Option<String>,
    #[pyo3(get, set)]
    source: Option<String>,
    #[pyo3(get, set)]
    commands: Py<PyList>,
}

impl PyCommand {
    fn from_core(py: Python<'_>, c: CoreCommand) -> PyResult<PyCommand> {
        let items = PyList::empty(py);
        for item in c.items {
            items.append(Py::new(py, PyItem::from_core(item))?)?;
        }
        let commands = PyList::empty(py);
        for inner in c.commands {
            commands.append(Py::new(py, PyCommand::from_core(py, inner)?)?)?;
        }
        let (data, data_attrs) = match c.data {
            Some(d) => (Some(d.value), d.attrs),
            None => (None, Attrs::new()),
        };
        Ok(PyCommand {
            kind: c.kind,
            cmd_id: c.cmd_id,
            no_resp: c.no_resp,
            meta: c.meta,
            data,
            data_attrs,
            items: items.unbind(),
            msg_ref: c.msg_ref,
            cmd_ref: c.cmd_ref,
            cmd: c.cmd,
            target_refs: c.target_refs,
            source_refs: c.source_refs,
            chal: c.chal,
            correlator: c.correlator,
            target: c.target.map(|l| l.uri),
            source: c.source.map(|l| l.uri),
            commands: commands.unbind(),
        })
    }

    fn to_core(&self, py: Python<'_>, path: &str) -> PyResult<CoreCommand> {
        let mut c = CoreCommand::new(self.kind);
        c.cmd_id = self.cmd_id.clone();
        c.no_resp = self.no_resp;
        c.meta = self.meta.clone();
        c.data = self.data.as_ref().map(|v| Data {
            value: v.clone(),
            attrs: self.data_attrs.clone(),
        });
        for (i, item) in self.items.bind(py).iter().enumerate() {
            let item = item.cast::<PyItem>().map_err(|_| {
                field_error(
                    &format!("{path}.items[{i}]"),
                    format!("expected Item, got {}", type_name(&item)),
                )
            })?;
            c.items.push(item.borrow().to_core());
        }
        c.msg_ref = self.msg_ref.clone();
        c.cmd_ref = self.cmd_ref.clone();
        c.cmd = self.cmd.clone();
        c.target_refs = self.target_refs.clone();
        c.source_refs = self.source_refs.clone();
        c.chal = self.chal.clone();
        c.correlator = self.correlator.clone();
        c.target = self.target.as_ref().map(|u| Loc {
            uri: u.clone(),
            name: None,
        });
        c.source = self.source.as_ref().map(|u| Loc {
            uri: u.clone(),
            name: None,
        });
        for (i, inner) in self.commands.bind(py).iter().enumerate() {
            let here = format!("{path}.commands[{i}]");
            let inner = inner.cast::<PyCommand>().map_err(|_| {
                field_error(
                    &here,
                    format!("expected Command, got {}", type_name(&inner)),
                )
            })?;
            c.commands.push(inner.borrow().to_core(py, &here)?);
        }
        Ok(c)
    }
}

fn list_of<'py>(py: Python<'py>, values: Option<&Bound<'py, PyAny>>) -> PyResult<Py<PyList>> {
    match values.filter(|v| !v.is_none()) {
        None => Ok(PyList::empty(py).unbind()),
        Some(v) => Ok(PyList::new(py, v.try_iter()?.collect::<PyResult<Vec<_>>>()?)?.unbind()),
    }
}

#[pymethods]
impl PyCommand {
    #[new]
    #[pyo3(signature = (name, *, cmd_id=None, items=None, meta=None, data=None, data_attrs=None, no_resp=false, msg_ref=None, cmd_ref=None, cmd=None, target_refs=None, source_refs=None, chal=None, correlator=None, target=None, source=None, commands=None))]
    #[allow(clippy::too_many_arguments)]
    fn new<'py>(
        py: Python<'py>,
        name: &str,
        cmd_id: Option<String>,
        items: Option<&Bound<'py, PyAny>>,
        meta: Option<&Bound<'py, PyAny>>,
        data: Option<&Bound<'py, PyAny>>,
        data_attrs: Option<&Bound<'py, PyAny>>,
        no_resp: bool,
        msg_ref: Option<String>,
        cmd_ref: Option<String>,
        cmd: Option<String>,
        target_refs: Option<Vec<String>>,
        source_refs: Option<Vec<String>>,
        chal: Option<&Bound<'py, PyAny>>,
        correlator: Option<String>,
        target: Option<String>,
        source: Option<String>,
        commands: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<PyCommand> {
        let kind = CommandKind::from_name(name).ok_or_else(|| {
            PyTypeError::new_err(format!(
                "unknown command {name:?}; expected one of {}",
                CommandKind::ALL
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(PyCommand {
            kind,
            cmd_id,
            no_resp,
            meta: opt_meta(meta, "Command.meta")?,
            data: opt_value(data, "Command.data")?,
            data_attrs: opt_attrs(data_attrs, "Command.data_attrs")?,
            items: list_of(py, items)?,
            msg_ref,
            cmd_ref,
            cmd,
            target_refs: target_refs.unwrap_or_default(),
            source_refs: source_refs.unwrap_or_default(),
            chal: opt_meta(chal, "Command.chal")?,
            correlator,
            target,
            source,
            commands: list_of(py, commands)?,
        })
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.meta.as_ref().map(|m| meta_to_py(py, m)).transpose()
    }

    #[setter]
    fn set_meta(&mut self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.meta = opt_meta(value, "Command.meta")?;
        Ok(())
    }

    /// Meta of the Status challenge (`Type`, `Format`, `NextNonce`).
    #[getter]
    fn chal<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.chal.as_ref().map(|m| meta_to_py(py, m)).transpose()
    }

    #[setter]
    fn set_chal(&mut self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.chal = opt_meta(value, "Command.chal")?;
        Ok(())
    }

    /// Alert code or Status code (`str`), or `bytes` for binary WBXML data.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.data.as_ref().map(|v| value_to_py(py, v))
    }

    #[setter]
    fn set_data(&mut self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.data = opt_value(value, "Command.data")?;
        Ok(())
    }

    #[getter]
    fn data_attrs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        attrs_to_py(py, &self.data_attrs)
    }

    #[setter]
    fn set_data_attrs(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.data_attrs = attrs_from_py(value, "Command.data_attrs")?;
        Ok(())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Command('{}', cmd_id={}, items={})",
            self.kind.name(),
            py_repr(&self.cmd_id),
            self.items.bind(py).len()
        )
    }
}

/// The SyncHdr. `target`/`source` are LocURIs.
#[pyclass(module = "mdmgate._core", name = "Header")]
pub struct PyHeader {
    #[pyo3(get, set)]
    ver_dtd: String,
    #[pyo3(get, set)]
    ver_proto: String,
    #[pyo3(get, set)]
    session_id: String,
    #[pyo3(get, set)]
    msg_id: String,
    #[pyo3(get, set)]
    target: Option<String>,
    #[pyo3(get, set)]
    target_name: Option<String>,
    #[pyo3(get, set)]
    source: Option<String>,
    #[pyo3(get, set)]
    source_name: Option<String>,
    #[pyo3(get, set)]
    resp_uri: Option<String>,
    #[pyo3(get, set)]
    no_resp: bool,
    cred_meta: Option<Meta>,
    #[pyo3(get, set)]
    cred_data: Option<String>,
    has_cred: bool,
    meta: Option<Meta>,
}

impl PyHeader {
    fn from_core(h: CoreHeader) -> PyHeader {
        let (target, target_name) = split_loc(h.target);
        let (source, source_name) = split_loc(h.source);
        let has_cred = h.cred.is_some();
        let (cred_meta, cred_data) = match h.cred {
            Some(c) => (c.meta, c.data),
            None => (None, None),
        };
        PyHeader {
            ver_dtd: h.ver_dtd,
            ver_proto: h.ver_proto,
            session_id: h.session_id,
            msg_id: h.msg_id,
            target,
            target_name,
            source,
            source_name,
            resp_uri: h.resp_uri,
            no_resp: h.no_resp,
            cred_meta,
            cred_data,
            has_cred,
            meta: h.meta,
        }
    }

    fn to_core(&self) -> CoreHeader {
        let cred = if self.has_cred || self.cred_meta.is_some() || self.cred_data.is_some() {
            Some(Cred {
                meta: self.cred_meta.clone(),
                data: self.cred_data.clone(),
            })
        } else {
            None
        };
        CoreHeader {
            ver_dtd: self.ver_dtd.clone(),
            ver_proto: self.ver_proto.clone(),
            session_id: self.session_id.clone(),
            msg_id: self.msg_id.clone(),
            target: join_loc(&self.target, &self.target_name),
            source: join_loc(&self.source, &self.source_name),
            resp_uri: self.resp_uri.clone(),
            no_resp: self.no_resp,
            cred,
            meta: self.meta.clone(),
        }
    }
}

#[pymethods]
impl PyHeader {
    #[new]
    #[pyo3(signature = (*, session_id, msg_id, target, source, ver_dtd="1.2".to_owned(), ver_proto="DM/1.2".to_owned(), target_name=None, source_name=None, resp_uri=None, no_resp=false, cred_meta=None, cred_data=None, meta=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        session_id: String,
        msg_id: String,
        target: Option<String>,
        source: Option<String>,
        ver_dtd: String,
        ver_proto: String,
        target_name: Option<String>,
        source_name: Option<String>,
        resp_uri: Option<String>,
        no_resp: bool,
        cred_meta: Option<&Bound<'_, PyAny>>,
        cred_data: Option<String>,
        meta: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyHeader> {
        let cred_meta = opt_meta(cred_meta, "Header.cred_meta")?;
        Ok(PyHeader {
            ver_dtd,
            ver_proto,
            session_id,
            msg_id,
            target,
            target_name,
            source,
            source_name,
            resp_uri,
            no_resp,
            has_cred: cred_meta.is_some() || cred_data.is_some(),
            cred_meta,
            cred_data,
            meta: opt_meta(meta, "Header.meta")?,
        })
    }

    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.meta.as_ref().map(|m| meta_to_py(py, m)).transpose()
    }

    #[setter]
    fn set_meta(&mut self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.meta = opt_meta(value, "Header.meta")?;
        Ok(())
    }

    #[getter]
    fn cred_meta<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.cred_meta
            .as_ref()
            .map(|m| meta_to_py(py, m))
            .transpose()
    }

    #[setter]
    fn set_cred_meta(&mut self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.cred_meta = opt_meta(value, "Header.cred_meta")?;
        Ok(())
    }

    /// The client's MaxMsgSize from the header Meta, when it sent a usable one.
    #[getter]
    fn max_msg_size(&self) -> Option<usize> {
        meta_lookup(&self.meta, "MaxMsgSize")?.trim().parse().ok()
    }

    /// The client's MaxObjSize from the header Meta, when it sent a usable one.
    #[getter]
    fn max_obj_size(&self) -> Option<usize> {
        meta_lookup(&self.meta, "MaxObjSize")?.trim().parse().ok()
    }

    fn __repr__(&self) -> String {
        format!(
            "Header(session_id={}, msg_id={}, source={})",
            py_repr(&Some(self.session_id.clone())),
            py_repr(&Some(self.msg_id.clone())),
            py_repr(&self.source)
        )
    }
}

/// A whole SyncML message.
#[pyclass(module = "mdmgate._core", name = "Message")]
pub struct PyMessage {
    #[pyo3(get, set)]
    header: Py<PyHeader>,
    #[pyo3(get, set)]
    commands: Py<PyList>,
    #[pyo3(get, set)]
    r#final: bool,
}

impl PyMessage {
    fn from_core(py: Python<'_>, m: CoreMessage) -> PyResult<PyMessage> {
        let commands = PyList::empty(py);
        for c in m.body {
            commands.append(Py::new(py, PyCommand::from_core(py, c)?)?)?;
        }
        Ok(PyMessage {
            header: Py::new(py, PyHeader::from_core(m.header))?,
            commands: commands.unbind(),
            r#final: m.is_final,
        })
    }

    fn to_core(&self, py: Python<'_>) -> PyResult<CoreMessage> {
        let mut body = Vec::new();
        for (i, c) in self.commands.bind(py).iter().enumerate() {
            let here = format!("SyncBody[{i}]");
            let c = c.cast::<PyCommand>().map_err(|_| {
                field_error(&here, format!("expected Command, got {}", type_name(&c)))
            })?;
            body.push(c.borrow().to_core(py, &here)?);
        }
        Ok(CoreMessage {
            header: self.header.borrow(py).to_core(),
            body,
            is_final: self.r#final,
        })
    }
}

#[pymethods]
impl PyMessage {
    #[new]
    #[pyo3(signature = (header, commands=None, r#final=true))]
    fn new<'py>(
        py: Python<'py>,
        header: Py<PyHeader>,
        commands: Option<&Bound<'py, PyAny>>,
        r#final: bool,
    ) -> PyResult<PyMessage> {
        Ok(PyMessage {
            header,
            commands: list_of(py, commands)?,
            r#final,
        })
    }

    /// SyncML bytes: XML, or WBXML when `wbxml` is true.
    #[pyo3(signature = (*, wbxml=false))]
    fn encode(&self, py: Python<'_>, wbxml: bool) -> PyResult<Vec<u8>> {
        let msg = self.to_core(py)?;
        encode_message(py, &msg, wbxml)
    }

    /// The dict form of `docs/syncml.md`.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        message_to_dict(py, &self.to_core(py)?)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Message({}, commands={}, final={})",
            self.header.borrow(py).__repr__(),
            self.commands.bind(py).len(),
            if self.r#final { "True" } else { "False" }
        )
    }
}

#[pyfunction]
#[pyo3(signature = (data, *, max_bytes=None, max_depth=None, max_elements=None))]
fn syncml_decode(
    py: Python<'_>,
    data: &[u8],
    max_bytes: Option<usize>,
    max_depth: Option<usize>,
    max_elements: Option<usize>,
) -> PyResult<PyMessage> {
    let msg = decode_bytes(py, data, &limits(max_bytes, max_depth, max_elements))?;
    PyMessage::from_core(py, msg)
}

#[pyfunction]
fn syncml_message_from_dict(py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<PyMessage> {
    PyMessage::from_core(py, message_from_dict(message)?)
}

/// Builds one outgoing message under a byte budget (the client's MaxMsgSize).
#[pyclass(module = "mdmgate._core", name = "MessageBuilder")]
pub struct PyMessageBuilder {
    inner: Option<syncml::MessageBuilder>,
    max_size: usize,
}

impl PyMessageBuilder {
    fn inner(&mut self) -> PyResult<&mut syncml::MessageBuilder> {
        self.inner.as_mut().ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err("the message was already finished")
        })
    }
}

#[pymethods]
impl PyMessageBuilder {
    #[new]
    #[pyo3(signature = (header, max_size, *, wbxml=false))]
    fn new(
        py: Python<'_>,
        header: Py<PyHeader>,
        max_size: usize,
        wbxml: bool,
    ) -> PyResult<PyMessageBuilder> {
        let encoding = if wbxml {
            Encoding::Wbxml
        } else {
            Encoding::Xml
        };
        let inner = syncml::MessageBuilder::new(&header.borrow(py).to_core(), encoding, max_size)
            .map_err(encode_error)?;
        Ok(PyMessageBuilder {
            inner: Some(inner),
            max_size,
        })
    }

    /// Appends `command` and returns its CmdID (assigned when it had none), or `None` when
    /// it does not fit. After one `None`, every later command is refused too, so commands
    /// never overtake each other.
    fn push(&mut self, py: Python<'_>, command: &Bound<'_, PyCommand>) -> PyResult<Option<String>> {
        let core = command.borrow().to_core(py, "command")?;
        let placed = self.inner()?.push(&core).map_err(encode_error)?;
        match placed {
            Ok(placed) => {
                let mut cmd = command.borrow_mut();
                cmd.cmd_id.clone_from(&placed.cmd_id);
                // Nested commands receive their ids too.
                let inner = cmd.commands.bind(py).clone();
                assign_nested(py, &inner, &placed.commands)?;
                Ok(placed.cmd_id)
            }
            Err(_) => Ok(None),
        }
    }

    /// Bytes left for commands, keeping room to close the message.
    #[getter]
    fn remaining(&mut self) -> PyResult<usize> {
        Ok(self.inner()?.remaining())
    }

    #[getter]
    fn max_size(&self) -> usize {
        self.max_size
    }

    fn __len__(&mut self) -> PyResult<usize> {
        Ok(self.inner()?.commands())
    }

    /// The message bytes. Pass `final=False` while commands remain for a later message.
    #[pyo3(signature = (*, r#final=true))]
    fn finish(&mut self, r#final: bool) -> PyResult<Vec<u8>> {
        let inner = self.inner.take().ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err("the message was already finished")
        })?;
        Ok(inner.finish(r#final))
    }
}

fn assign_nested(py: Python<'_>, list: &Bound<'_, PyList>, placed: &[CoreCommand]) -> PyResult<()> {
    for (obj, core) in list.iter().zip(placed) {
        let obj = obj.cast::<PyCommand>()?;
        let mut c = obj.borrow_mut();
        c.cmd_id.clone_from(&core.cmd_id);
        let inner = c.commands.bind(py).clone();
        drop(c);
        assign_nested(py, &inner, &core.commands)?;
    }
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SYNCML_MAX_BYTES", syncml::DEFAULT_MAX_BYTES)?;
    m.add("SYNCML_MAX_DEPTH", syncml::DEFAULT_MAX_DEPTH)?;
    m.add("SYNCML_MAX_ELEMENTS", syncml::DEFAULT_MAX_ELEMENTS)?;
    m.add_function(wrap_pyfunction!(syncml_to_dict, m)?)?;
    m.add_function(wrap_pyfunction!(syncml_from_dict, m)?)?;
    m.add_function(wrap_pyfunction!(syncml_detect, m)?)?;
    m.add_function(wrap_pyfunction!(syncml_decode, m)?)?;
    m.add_function(wrap_pyfunction!(syncml_message_from_dict, m)?)?;
    m.add_class::<PyItem>()?;
    m.add_class::<PyCommand>()?;
    m.add_class::<PyHeader>()?;
    m.add_class::<PyMessage>()?;
    m.add_class::<PyMessageBuilder>()?;
    Ok(())
}
