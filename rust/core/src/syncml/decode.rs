//! The SyncML structure, read from a stream of element events. XML and WBXML each provide a
//! [`Source`]; everything about which element may appear where lives here, once.

use super::tags::CommandKind;
use super::{
    Attrs, Command, Cred, Data, DecodeError, ErrorKind, Header, Item, Loc, Message, Meta, Value,
};

/// One step through the element tree. `name` is the local name (prefix removed).
pub(crate) enum Ev<'a> {
    Start {
        name: &'a str,
        empty: bool,
    },
    End,
    /// Character data between elements; `blank` when it is only whitespace.
    Text {
        blank: bool,
    },
    Eof,
}

pub(crate) trait Source<'a> {
    /// The next event; comments and processing instructions are skipped.
    fn next(&mut self) -> Result<Ev<'a>, DecodeError>;
    /// Byte offset of the event last returned.
    fn offset(&self) -> usize;
    /// After a non-empty `Start`: its text content, consuming the matching end.
    fn text(&mut self, element: &str) -> Result<String, DecodeError>;
    /// After a non-empty `Start`: content that may also be markup (kept as written) or
    /// binary, consuming the matching end.
    fn data(&mut self) -> Result<Value, DecodeError>;
    /// Attributes of the element last started, namespace declarations excluded.
    fn attrs(&mut self) -> Result<Attrs, DecodeError>;

    fn error(&self, kind: ErrorKind, message: String) -> DecodeError {
        DecodeError::new(kind, self.offset(), message)
    }
}

/// The next child element of `parent`, or `None` at its end.
fn child<'a, S: Source<'a>>(
    src: &mut S,
    parent: &str,
) -> Result<Option<(&'a str, bool)>, DecodeError> {
    loop {
        match src.next()? {
            Ev::Start { name, empty } => return Ok(Some((name, empty))),
            Ev::End => return Ok(None),
            Ev::Text { blank: true } => {}
            Ev::Text { blank: false } => {
                return Err(src.error(
                    ErrorKind::Structure,
                    format!("unexpected text inside <{parent}>"),
                ))
            }
            Ev::Eof => {
                return Err(src.error(ErrorKind::Syntax, format!("input ends inside <{parent}>")))
            }
        }
    }
}

fn misplaced<'a, S: Source<'a>>(src: &S, name: &str, parent: &str) -> DecodeError {
    src.error(
        ErrorKind::Structure,
        format!("<{name}> is not allowed in <{parent}>"),
    )
}

fn trimmed(mut s: String) -> String {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    if t.len() != s.len() {
        s = t.to_owned();
    }
    s
}

fn leaf<'a, S: Source<'a>>(src: &mut S, name: &str, empty: bool) -> Result<String, DecodeError> {
    if empty {
        return Ok(String::new());
    }
    Ok(trimmed(src.text(name)?))
}

/// Flag elements (`NoResp`, `MoreData`, `Final`) are empty; content, if any, is ignored.
fn flag<'a, S: Source<'a>>(src: &mut S, name: &str, empty: bool) -> Result<bool, DecodeError> {
    if !empty {
        src.data().map_err(|e| DecodeError {
            message: format!("{} in <{name}>", e.message),
            ..e
        })?;
    }
    Ok(true)
}

fn once<'a, S: Source<'a>, T>(
    src: &S,
    slot: &Option<T>,
    name: &str,
    parent: &str,
) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(src.error(
            ErrorKind::Structure,
            format!("<{parent}> has more than one <{name}>"),
        ));
    }
    Ok(())
}

pub(crate) fn message<'a, S: Source<'a>>(mut src: S) -> Result<Message, DecodeError> {
    let (root, empty) = loop {
        match src.next()? {
            Ev::Start { name, empty } => break (name, empty),
            Ev::Text { blank: true } => {}
            Ev::Text { blank: false } => {
                return Err(src.error(ErrorKind::Syntax, "text before the root element".into()))
            }
            Ev::End | Ev::Eof => return Err(src.error(ErrorKind::Syntax, "no root element".into())),
        }
    };
    if root != "SyncML" {
        return Err(src.error(
            ErrorKind::Structure,
            format!("root element is <{root}>, expected <SyncML>"),
        ));
    }
    let mut header = None;
    let mut body = None;
    if !empty {
        while let Some((name, empty)) = child(&mut src, "SyncML")? {
            match name {
                "SyncHdr" => {
                    once(&src, &header, name, "SyncML")?;
                    header = Some(read_header(&mut src, empty)?);
                }
                "SyncBody" => {
                    once(&src, &body, name, "SyncML")?;
                    body = Some(read_body(&mut src, empty)?);
                }
                _ => return Err(misplaced(&src, name, "SyncML")),
            }
        }
    }
    let end = src.offset();
    let missing = |what: &str| {
        DecodeError::new(
            ErrorKind::Structure,
            end,
            format!("<SyncML> has no <{what}>"),
        )
    };
    let header = header.ok_or_else(|| missing("SyncHdr"))?;
    let (body, is_final) = body.ok_or_else(|| missing("SyncBody"))?;
    loop {
        match src.next()? {
            Ev::Eof => break,
            Ev::Text { blank: true } => {}
            _ => return Err(src.error(ErrorKind::Syntax, "content after the root element".into())),
        }
    }
    Ok(Message {
        header,
        body,
        is_final,
    })
}

fn read_header<'a, S: Source<'a>>(src: &mut S, empty: bool) -> Result<Header, DecodeError> {
    let mut h = Header::default();
    if empty {
        return Ok(h);
    }
    while let Some((name, empty)) = child(src, "SyncHdr")? {
        match name {
            "VerDTD" => h.ver_dtd = leaf(src, name, empty)?,
            "VerProto" => h.ver_proto = leaf(src, name, empty)?,
            "SessionID" => h.session_id = leaf(src, name, empty)?,
            "MsgID" => h.msg_id = leaf(src, name, empty)?,
            "Target" => h.target = Some(read_loc(src, name, empty)?),
            "Source" => h.source = Some(read_loc(src, name, empty)?),
            "RespURI" => h.resp_uri = Some(leaf(src, name, empty)?),
            "NoResp" => h.no_resp = flag(src, name, empty)?,
            "Cred" => h.cred = Some(read_cred(src, empty)?),
            "Meta" => h.meta = Some(read_meta(src, empty)?),
            _ => return Err(misplaced(src, name, "SyncHdr")),
        }
    }
    Ok(h)
}

fn read_body<'a, S: Source<'a>>(
    src: &mut S,
    empty: bool,
) -> Result<(Vec<Command>, bool), DecodeError> {
    let mut commands = Vec::new();
    let mut is_final = false;
    if empty {
        return Ok((commands, is_final));
    }
    while let Some((name, empty)) = child(src, "SyncBody")? {
        if name == "Final" {
            is_final = flag(src, name, empty)?;
            continue;
        }
        let kind = CommandKind::from_name(name).ok_or_else(|| misplaced(src, name, "SyncBody"))?;
        commands.push(read_command(src, kind, empty)?);
    }
    Ok((commands, is_final))
}

fn read_command<'a, S: Source<'a>>(
    src: &mut S,
    kind: CommandKind,
    empty: bool,
) -> Result<Command, DecodeError> {
    use CommandKind as K;
    let mut c = Command::new(kind);
    if empty {
        return Ok(c);
    }
    let parent = kind.name();
    while let Some((name, empty)) = child(src, parent)? {
        match (name, kind) {
            ("CmdID", _) => c.cmd_id = Some(leaf(src, name, empty)?),
            ("NoResp", _) => c.no_resp = flag(src, name, empty)?,
            ("Meta", _) => c.meta = Some(read_meta(src, empty)?),
            ("Data", K::Alert | K::Status) => c.data = Some(read_data(src, empty)?),
            ("Item", k) if !k.is_container() && k != K::Map => c.items.push(read_item(src, empty)?),
            ("MsgRef", K::Results | K::Status) => c.msg_ref = Some(leaf(src, name, empty)?),
            ("CmdRef", K::Results | K::Status) => c.cmd_ref = Some(leaf(src, name, empty)?),
            ("TargetRef", K::Results | K::Status) => c.target_refs.push(leaf(src, name, empty)?),
            ("SourceRef", K::Results | K::Status) => c.source_refs.push(leaf(src, name, empty)?),
            ("Cmd", K::Status) => c.cmd = Some(leaf(src, name, empty)?),
            ("Chal", K::Status) => c.chal = Some(read_chal(src, empty)?),
            ("Correlator", K::Exec) => c.correlator = Some(leaf(src, name, empty)?),
            ("Target", K::Map) => c.target = Some(read_loc(src, name, empty)?),
            ("Source", K::Map) => c.source = Some(read_loc(src, name, empty)?),
            ("MapItem", K::Map) => c.items.push(read_map_item(src, empty)?),
            (_, K::Atomic | K::Sequence) => match CommandKind::from_name(name) {
                Some(inner) if inner.nestable() => {
                    c.commands.push(read_command(src, inner, empty)?)
                }
                _ => return Err(misplaced(src, name, parent)),
            },
            _ => return Err(misplaced(src, name, parent)),
        }
    }
    Ok(c)
}

fn read_loc<'a, S: Source<'a>>(src: &mut S, parent: &str, empty: bool) -> Result<Loc, DecodeError> {
    let mut loc = Loc::default();
    if empty {
        return Ok(loc);
    }
    while let Some((name, empty)) = child(src, parent)? {
        match name {
            "LocURI" => loc.uri = leaf(src, name, empty)?,
            "LocName" => loc.name = Some(leaf(src, name, empty)?),
            _ => return Err(misplaced(src, name, parent)),
        }
    }
    Ok(loc)
}

fn read_item<'a, S: Source<'a>>(src: &mut S, empty: bool) -> Result<Item, DecodeError> {
    let mut item = Item::default();
    if empty {
        return Ok(item);
    }
    while let Some((name, empty)) = child(src, "Item")? {
        match name {
            "Target" => item.target = Some(read_loc(src, name, empty)?),
            "Source" => item.source = Some(read_loc(src, name, empty)?),
            "Meta" => item.meta = Some(read_meta(src, empty)?),
            "Data" => item.data = Some(read_data(src, empty)?),
            "MoreData" => item.more_data = flag(src, name, empty)?,
            _ => return Err(misplaced(src, name, "Item")),
        }
    }
    Ok(item)
}

fn read_map_item<'a, S: Source<'a>>(src: &mut S, empty: bool) -> Result<Item, DecodeError> {
    let mut item = Item::default();
    if empty {
        return Ok(item);
    }
    while let Some((name, empty)) = child(src, "MapItem")? {
        match name {
            "Target" => item.target = Some(read_loc(src, name, empty)?),
            "Source" => item.source = Some(read_loc(src, name, empty)?),
            _ => return Err(misplaced(src, name, "MapItem")),
        }
    }
    Ok(item)
}

fn read_data<'a, S: Source<'a>>(src: &mut S, empty: bool) -> Result<Data, DecodeError> {
    let attrs = src.attrs()?;
    let value = if empty {
        Value::Text(String::new())
    } else {
        src.data()?
    };
    Ok(Data { value, attrs })
}

fn read_cred<'a, S: Source<'a>>(src: &mut S, empty: bool) -> Result<Cred, DecodeError> {
    let mut cred = Cred::default();
    if empty {
        return Ok(cred);
    }
    while let Some((name, empty)) = child(src, "Cred")? {
        match name {
            "Meta" => cred.meta = Some(read_meta(src, empty)?),
            "Data" => cred.data = Some(leaf(src, name, empty)?),
            _ => return Err(misplaced(src, name, "Cred")),
        }
    }
    Ok(cred)
}

fn read_chal<'a, S: Source<'a>>(src: &mut S, empty: bool) -> Result<Meta, DecodeError> {
    let mut meta = None;
    if empty {
        return Ok(Meta::new());
    }
    while let Some((name, empty)) = child(src, "Chal")? {
        match name {
            "Meta" => meta = Some(read_meta(src, empty)?),
            _ => return Err(misplaced(src, name, "Chal")),
        }
    }
    Ok(meta.unwrap_or_default())
}

fn read_meta<'a, S: Source<'a>>(src: &mut S, empty: bool) -> Result<Meta, DecodeError> {
    let mut meta = Meta::new();
    if empty {
        return Ok(meta);
    }
    while let Some((name, empty)) = child(src, "Meta")? {
        let key = super::meta_key(name);
        let value = if empty {
            String::new()
        } else {
            match src.data()? {
                Value::Text(s) => trimmed(s),
                Value::Binary(_) => {
                    return Err(src.error(
                        ErrorKind::Encoding,
                        format!("<{name}> in <Meta> is binary, expected text"),
                    ))
                }
            }
        };
        meta.push((key, value));
    }
    Ok(meta)
}
