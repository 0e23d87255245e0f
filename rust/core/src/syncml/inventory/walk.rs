//! The decoder's grammar (which child may appear where, once-only parts) walked without
//! building the message: only the Results items are kept, as borrowed text where possible.
//!
//! A [`Reader`] gives the element events. Any error, and any input a reader does not
//! handle, is [`Unsupported`]: the caller then runs the full decoder, which accepts or
//! refuses the input and says why. Each walk below makes the reader calls the decoder
//! makes, in the same order, so an input walked to its end is one the decoder reads the
//! same way.

use std::borrow::Cow;

use super::super::decode::{Ev, Source};
use super::super::wbxml::WbxmlSource;
use super::super::{CommandKind, Limits, Value};
use super::{answers, item_uri, AppRecord, Inventory, Leaf};

/// Input left to the full decoder.
pub(super) struct Unsupported;

pub(super) type Step<T> = Result<T, Unsupported>;

/// The content of a Data (or Meta child, or flag) as the decoder gives it.
pub(super) enum Content<'a> {
    Text(Cow<'a, str>),
    /// XML markup inside Data, kept as written.
    Markup(&'a str),
    /// WBXML opaque data that is not UTF-8.
    Binary(Vec<u8>),
}

/// Element events, after the root's start tag.
pub(super) trait Reader<'a> {
    /// The next child element of `parent`, or `None` after its end.
    fn child(&mut self, parent: &'a str) -> Step<Option<(&'a str, bool)>>;
    /// After the start of a non-empty text-only element: its text, through its end.
    fn text(&mut self, name: &'a str) -> Step<Cow<'a, str>>;
    /// After the start of a non-empty element: text, markup or binary, through its end.
    fn content(&mut self, name: &'a str) -> Step<Content<'a>>;
    /// The attributes of the element just started, read as the decoder reads Data's.
    fn read_attributes(&mut self) -> Step<()>;
    /// After the root's end: nothing else but blanks.
    fn finish(&mut self) -> Step<()>;
}

#[derive(Default)]
struct Found<'a> {
    source: Option<Cow<'a, str>>,
    target: Option<Cow<'a, str>>,
    data: Option<Content<'a>>,
}

/// The records of a message read by `reader`.
pub(super) fn records<'a, R: Reader<'a>>(
    reader: R,
    prefix: &'a str,
    cmd_ref: Option<&'a str>,
) -> Step<Vec<AppRecord>> {
    let mut walk = Walk {
        reader,
        items: Vec::new(),
        cmd_ref,
        inventory: Inventory::new(prefix),
    };
    walk.message()?;
    walk.reader.finish()?;
    Ok(walk.inventory.finish())
}

fn trimmed(text: Cow<'_, str>) -> Cow<'_, str> {
    let is_space = |c: char| c.is_ascii_whitespace();
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim_matches(is_space)),
        Cow::Owned(s) if s.trim_matches(is_space).len() == s.len() => Cow::Owned(s),
        Cow::Owned(s) => Cow::Owned(s.trim_matches(is_space).to_owned()),
    }
}

fn command_kind(name: &str) -> Step<CommandKind> {
    CommandKind::from_name(name).ok_or(Unsupported)
}

struct Walk<'a, R> {
    reader: R,
    /// The items of the Results being read; whether they count is known at its end, since
    /// CmdRef may come after them.
    items: Vec<Found<'a>>,
    cmd_ref: Option<&'a str>,
    inventory: Inventory<'a>,
}

impl<'a, R: Reader<'a>> Walk<'a, R> {
    fn child(&mut self, parent: &'a str) -> Step<Option<(&'a str, bool)>> {
        self.reader.child(parent)
    }

    fn leaf(&mut self, name: &'a str, empty: bool) -> Step<Cow<'a, str>> {
        if empty {
            return Ok(Cow::Borrowed(""));
        }
        self.reader.text(name).map(trimmed)
    }

    fn message(&mut self) -> Step<()> {
        let (mut header, mut body) = (false, false);
        while let Some((name, empty)) = self.child("SyncML")? {
            match name {
                "SyncHdr" if !header => {
                    header = true;
                    self.header(empty)?;
                }
                "SyncBody" if !body => {
                    body = true;
                    self.body(empty)?;
                }
                _ => return Err(Unsupported),
            }
        }
        if header && body {
            Ok(())
        } else {
            Err(Unsupported)
        }
    }

    fn header(&mut self, empty: bool) -> Step<()> {
        if empty {
            return Ok(());
        }
        while let Some((name, empty)) = self.child("SyncHdr")? {
            match name {
                "VerDTD" | "VerProto" | "SessionID" | "MsgID" | "RespURI" => {
                    self.leaf(name, empty)?;
                }
                "Target" | "Source" => {
                    self.loc(name, empty)?;
                }
                "NoResp" => self.flag(name, empty)?,
                "Cred" => self.cred(empty)?,
                "Meta" => self.meta(empty)?,
                _ => return Err(Unsupported),
            }
        }
        Ok(())
    }

    fn body(&mut self, empty: bool) -> Step<()> {
        if empty {
            return Ok(());
        }
        while let Some((name, empty)) = self.child("SyncBody")? {
            if name == "Final" {
                self.flag(name, empty)?;
            } else {
                self.command(command_kind(name)?, name, empty)?;
            }
        }
        Ok(())
    }

    fn command(&mut self, kind: CommandKind, name: &'a str, empty: bool) -> Step<()> {
        use CommandKind as K;
        // Results cannot be nested, so one list of items serves.
        let results = kind == K::Results;
        let mut cmd_ref = None;
        if results {
            self.items.clear();
        }
        if !empty {
            while let Some((child, empty)) = self.child(name)? {
                match (child, kind) {
                    ("CmdID", _) => {
                        self.leaf(child, empty)?;
                    }
                    ("NoResp", _) => self.flag(child, empty)?,
                    ("Meta", _) => self.meta(empty)?,
                    ("Data", K::Alert | K::Status) => {
                        self.data(empty)?;
                    }
                    ("Item", k) if !k.is_container() && k != K::Map => {
                        let item = self.item(empty)?;
                        if results {
                            self.items.push(item);
                        }
                    }
                    ("CmdRef", K::Results) => cmd_ref = Some(self.leaf(child, empty)?),
                    ("MsgRef" | "CmdRef" | "TargetRef" | "SourceRef", K::Results | K::Status)
                    | ("Cmd", K::Status)
                    | ("Correlator", K::Exec) => {
                        self.leaf(child, empty)?;
                    }
                    ("Chal", K::Status) => self.chal(empty)?,
                    ("Target" | "Source", K::Map) => {
                        self.loc(child, empty)?;
                    }
                    ("MapItem", K::Map) => self.map_item(empty)?,
                    (_, K::Atomic | K::Sequence) => match command_kind(child) {
                        Ok(inner) if inner.nestable() => self.command(inner, child, empty)?,
                        _ => return Err(Unsupported),
                    },
                    _ => return Err(Unsupported),
                }
            }
        }
        if results && answers(cmd_ref.as_deref(), self.cmd_ref) {
            for item in self.items.drain(..) {
                let data = item.data.as_ref().map(|content| match content {
                    Content::Text(s) => Leaf::Text(s),
                    Content::Markup(s) => Leaf::Text(s),
                    Content::Binary(b) => Leaf::Binary(b),
                });
                let uri = item_uri(item.source.as_deref(), item.target.as_deref());
                self.inventory.add(uri, data);
            }
        }
        Ok(())
    }

    fn item(&mut self, empty: bool) -> Step<Found<'a>> {
        let mut found = Found::default();
        if empty {
            return Ok(found);
        }
        while let Some((name, empty)) = self.child("Item")? {
            match name {
                "Target" => found.target = Some(self.loc(name, empty)?),
                "Source" => found.source = Some(self.loc(name, empty)?),
                "Meta" => self.meta(empty)?,
                "Data" => found.data = Some(self.data(empty)?),
                "MoreData" => self.flag(name, empty)?,
                _ => return Err(Unsupported),
            }
        }
        Ok(found)
    }

    /// A Target or Source: its LocURI, `""` without one.
    fn loc(&mut self, name: &'a str, empty: bool) -> Step<Cow<'a, str>> {
        let mut uri = Cow::Borrowed("");
        if empty {
            return Ok(uri);
        }
        while let Some((child, empty)) = self.child(name)? {
            match child {
                "LocURI" => uri = self.leaf(child, empty)?,
                "LocName" => {
                    self.leaf(child, empty)?;
                }
                _ => return Err(Unsupported),
            }
        }
        Ok(uri)
    }

    fn data(&mut self, empty: bool) -> Step<Content<'a>> {
        self.reader.read_attributes()?;
        if empty {
            return Ok(Content::Text(Cow::Borrowed("")));
        }
        self.reader.content("Data")
    }

    /// Flags (`NoResp`, `MoreData`, `Final`) are empty; content, if any, is ignored.
    fn flag(&mut self, name: &'a str, empty: bool) -> Step<()> {
        if !empty {
            self.reader.content(name)?;
        }
        Ok(())
    }

    fn meta(&mut self, empty: bool) -> Step<()> {
        if empty {
            return Ok(());
        }
        while let Some((name, empty)) = self.child("Meta")? {
            // The decoder wants Meta values as text.
            if !empty && matches!(self.reader.content(name)?, Content::Binary(_)) {
                return Err(Unsupported);
            }
        }
        Ok(())
    }

    fn cred(&mut self, empty: bool) -> Step<()> {
        if empty {
            return Ok(());
        }
        while let Some((name, empty)) = self.child("Cred")? {
            match name {
                "Meta" => self.meta(empty)?,
                "Data" => {
                    self.leaf(name, empty)?;
                }
                _ => return Err(Unsupported),
            }
        }
        Ok(())
    }

    fn chal(&mut self, empty: bool) -> Step<()> {
        if empty {
            return Ok(());
        }
        while let Some((name, empty)) = self.child("Chal")? {
            match name {
                "Meta" => self.meta(empty)?,
                _ => return Err(Unsupported),
            }
        }
        Ok(())
    }

    fn map_item(&mut self, empty: bool) -> Step<()> {
        if empty {
            return Ok(());
        }
        while let Some((name, empty)) = self.child("MapItem")? {
            match name {
                "Target" | "Source" => {
                    self.loc(name, empty)?;
                }
                _ => return Err(Unsupported),
            }
        }
        Ok(())
    }
}

/// WBXML through the decoder's own tokenizer: only the message is not built.
pub(super) struct Wbxml<'a>(WbxmlSource<'a>);

impl<'a> Wbxml<'a> {
    /// Past the root's start tag.
    pub(super) fn new(data: &'a [u8], limits: &Limits) -> Step<Wbxml<'a>> {
        let mut source = WbxmlSource::new(data, limits).map_err(|_| Unsupported)?;
        loop {
            match source.next() {
                Ok(Ev::Text { blank: true }) => {}
                Ok(Ev::Start {
                    name: "SyncML",
                    empty: false,
                }) => return Ok(Wbxml(source)),
                _ => return Err(Unsupported),
            }
        }
    }
}

impl<'a> Reader<'a> for Wbxml<'a> {
    fn child(&mut self, _parent: &'a str) -> Step<Option<(&'a str, bool)>> {
        loop {
            match self.0.next() {
                Ok(Ev::Start { name, empty }) => return Ok(Some((name, empty))),
                Ok(Ev::End) => return Ok(None),
                Ok(Ev::Text { blank: true }) => {}
                _ => return Err(Unsupported),
            }
        }
    }

    fn text(&mut self, name: &'a str) -> Step<Cow<'a, str>> {
        self.0.text(name).map(Cow::Owned).map_err(|_| Unsupported)
    }

    fn content(&mut self, _name: &'a str) -> Step<Content<'a>> {
        match self.0.data() {
            Ok(Value::Text(s)) => Ok(Content::Text(Cow::Owned(s))),
            Ok(Value::Binary(b)) => Ok(Content::Binary(b)),
            Err(_) => Err(Unsupported),
        }
    }

    fn read_attributes(&mut self) -> Step<()> {
        self.0.attrs().map(drop).map_err(|_| Unsupported)
    }

    fn finish(&mut self) -> Step<()> {
        loop {
            match self.0.next() {
                Ok(Ev::Eof) => return Ok(()),
                Ok(Ev::Text { blank: true }) => {}
                _ => return Err(Unsupported),
            }
        }
    }
}
