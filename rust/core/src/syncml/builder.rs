//! Building one outgoing message under the client's MaxMsgSize.
//!
//! Commands are encoded as they are appended, so the byte count is exact, not estimated.
//! Once a command does not fit, every later one is refused as well: commands of a session
//! often depend on their order (an Add before the Exec that uses the node), so a smaller
//! command must not overtake a deferred one.

use std::collections::HashSet;

use super::encode::{
    check_command, write_command, write_header, EncodeError, Sink, WbxmlSink, XmlSink,
};
use super::{Command, Encoding, Header};

/// A command that did not fit: its encoded size and the bytes that were left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow {
    pub needed: usize,
    pub available: usize,
}

enum Out {
    Xml(XmlSink),
    Wbxml(WbxmlSink),
}

pub struct MessageBuilder {
    out: Out,
    max_size: usize,
    ids: HashSet<String>,
    next_id: u64,
    commands: usize,
    /// Set by the first command that did not fit.
    full: bool,
}

/// Bytes needed after the last command: `<Final/></SyncBody></SyncML>`, or in WBXML a
/// possible page switch, the Final token and two ENDs.
fn tail_len(encoding: Encoding) -> usize {
    match encoding {
        Encoding::Xml => 28,
        Encoding::Wbxml => 5,
    }
}

impl MessageBuilder {
    pub fn new(
        header: &Header,
        encoding: Encoding,
        max_size: usize,
    ) -> Result<MessageBuilder, EncodeError> {
        let mut out = match encoding {
            Encoding::Xml => Out::Xml(XmlSink {
                out: Vec::with_capacity(max_size.min(1 << 20)),
            }),
            Encoding::Wbxml => Out::Wbxml(WbxmlSink::new()),
        };
        match &mut out {
            Out::Xml(s) => start(s, header)?,
            Out::Wbxml(s) => start(s, header)?,
        }
        let builder = MessageBuilder {
            out,
            max_size,
            ids: HashSet::new(),
            next_id: 1,
            commands: 0,
            full: false,
        };
        if builder.len() + tail_len(encoding) > max_size {
            return Err(EncodeError {
                path: "SyncHdr".into(),
                message: format!(
                    "the header alone needs {} bytes, more than the message size limit of {max_size}",
                    builder.len() + tail_len(encoding)
                ),
            });
        }
        Ok(builder)
    }

    pub fn encoding(&self) -> Encoding {
        match self.out {
            Out::Xml(_) => Encoding::Xml,
            Out::Wbxml(_) => Encoding::Wbxml,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        match &self.out {
            Out::Xml(s) => s.len(),
            Out::Wbxml(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }

    pub fn commands(&self) -> usize {
        self.commands
    }

    /// Bytes still available for commands, keeping room to close the message.
    pub fn remaining(&self) -> usize {
        self.max_size
            .saturating_sub(self.len() + tail_len(self.encoding()))
    }

    fn assign_ids(&mut self, command: &mut Command) {
        if command.cmd_id.is_none() {
            while self.ids.contains(&self.next_id.to_string()) {
                self.next_id += 1;
            }
            command.cmd_id = Some(self.next_id.to_string());
            self.next_id += 1;
        }
        if let Some(id) = &command.cmd_id {
            self.ids.insert(id.trim_ascii().to_owned());
        }
        for inner in &mut command.commands {
            self.assign_ids(inner);
        }
    }

    /// Appends `command`, giving it (and commands nested in it) a CmdID when it has none.
    /// `Ok(Err(overflow))` means it did not fit and the message is unchanged.
    pub fn push(&mut self, command: &Command) -> Result<Result<Command, Overflow>, EncodeError> {
        let path = format!("SyncBody[{}]", self.commands);
        {
            let mut taken: HashSet<&str> = self.ids.iter().map(String::as_str).collect();
            check_command(command, &path, &mut taken, true, false)?;
        }
        let available = self.remaining();
        if self.full {
            return Ok(Err(Overflow {
                needed: 0,
                available,
            }));
        }
        let mut command = command.clone();
        let saved = (self.ids.clone(), self.next_id);
        self.assign_ids(&mut command);
        let before = self.len();
        let path_fn = || path.clone();
        let mark = self.mark();
        let written = match &mut self.out {
            Out::Xml(s) => write_command(s, &command, &path_fn),
            Out::Wbxml(s) => write_command(s, &command, &path_fn),
        };
        let needed = self.len() - before;
        if written.is_err() || needed > available {
            self.rollback(mark);
            (self.ids, self.next_id) = saved;
            written?;
            self.full = true;
            return Ok(Err(Overflow { needed, available }));
        }
        self.commands += 1;
        Ok(Ok(command))
    }

    fn mark(&self) -> (usize, usize, u8) {
        match &self.out {
            Out::Xml(s) => (s.out.len(), 0, 0),
            Out::Wbxml(s) => s.snapshot(),
        }
    }

    fn rollback(&mut self, mark: (usize, usize, u8)) {
        match &mut self.out {
            Out::Xml(s) => s.out.truncate(mark.0),
            Out::Wbxml(s) => s.restore(mark),
        }
    }

    /// Closes the message. Leave `is_final` false while commands remain for another message.
    pub fn finish(self, is_final: bool) -> Vec<u8> {
        match self.out {
            Out::Xml(mut s) => {
                finish(&mut s, is_final);
                s.out
            }
            Out::Wbxml(mut s) => {
                finish(&mut s, is_final);
                let mut out = Vec::with_capacity(s.len());
                s.finish_into(&mut out);
                out
            }
        }
    }
}

fn start<S: Sink>(sink: &mut S, header: &Header) -> Result<(), EncodeError> {
    for (name, value) in [
        ("VerDTD", &header.ver_dtd),
        ("VerProto", &header.ver_proto),
        ("SessionID", &header.session_id),
        ("MsgID", &header.msg_id),
    ] {
        if value.trim_ascii().is_empty() {
            return Err(EncodeError {
                path: "SyncHdr".into(),
                message: format!("{name} is required"),
            });
        }
    }
    sink.begin();
    write_header(sink, header)?;
    sink.open("SyncBody");
    Ok(())
}

fn finish<S: Sink>(sink: &mut S, is_final: bool) {
    if is_final {
        sink.empty("Final");
    }
    sink.close("SyncBody");
    sink.end();
}
