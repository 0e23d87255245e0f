//! Element names and their WBXML tokens (SyncML code page 0, MetInf code page 1), as
//! assigned by the SyncML Representation Protocol and the Meta Information DTD.

/// The commands a SyncBody may hold in OMA-DM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Add,
    Alert,
    Atomic,
    Copy,
    Delete,
    Exec,
    Get,
    Map,
    Replace,
    Results,
    Sequence,
    Status,
}

impl CommandKind {
    pub const ALL: [CommandKind; 12] = [
        CommandKind::Add,
        CommandKind::Alert,
        CommandKind::Atomic,
        CommandKind::Copy,
        CommandKind::Delete,
        CommandKind::Exec,
        CommandKind::Get,
        CommandKind::Map,
        CommandKind::Replace,
        CommandKind::Results,
        CommandKind::Sequence,
        CommandKind::Status,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Add => "Add",
            CommandKind::Alert => "Alert",
            CommandKind::Atomic => "Atomic",
            CommandKind::Copy => "Copy",
            CommandKind::Delete => "Delete",
            CommandKind::Exec => "Exec",
            CommandKind::Get => "Get",
            CommandKind::Map => "Map",
            CommandKind::Replace => "Replace",
            CommandKind::Results => "Results",
            CommandKind::Sequence => "Sequence",
            CommandKind::Status => "Status",
        }
    }

    pub fn from_name(name: &str) -> Option<CommandKind> {
        CommandKind::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Atomic and Sequence hold commands instead of items.
    pub fn is_container(self) -> bool {
        matches!(self, CommandKind::Atomic | CommandKind::Sequence)
    }

    /// Commands that may be nested inside Atomic or Sequence.
    pub fn nestable(self) -> bool {
        !matches!(
            self,
            CommandKind::Map | CommandKind::Results | CommandKind::Status
        )
    }
}

/// SyncML code page 0, tokens 0x05 upwards; "" marks the reserved 0x30.
pub const SYNCML_PAGE: [&str; 56] = [
    "Add",
    "Alert",
    "Archive",
    "Atomic",
    "Chal",
    "Cmd",
    "CmdID",
    "CmdRef",
    "Copy",
    "Cred",
    "Data",
    "Delete",
    "Exec",
    "Final",
    "Get",
    "Item",
    "Lang",
    "LocName",
    "LocURI",
    "Map",
    "MapItem",
    "Meta",
    "MsgID",
    "MsgRef",
    "NoResp",
    "NoResults",
    "Put",
    "Replace",
    "RespURI",
    "Results",
    "Search",
    "Sequence",
    "SessionID",
    "SftDel",
    "Source",
    "SourceRef",
    "Status",
    "Sync",
    "SyncBody",
    "SyncHdr",
    "SyncML",
    "Target",
    "TargetRef",
    "",
    "VerDTD",
    "VerProto",
    "NumberOfChanges",
    "MoreData",
    "Field",
    "Filter",
    "Record",
    "FilterType",
    "SourceParent",
    "TargetParent",
    "Move",
    "Correlator",
];

/// MetInf code page 1, tokens 0x05 upwards.
pub const METINF_PAGE: [&str; 18] = [
    "Anchor",
    "EMI",
    "Format",
    "FreeID",
    "FreeMem",
    "Last",
    "Mark",
    "MaxMsgSize",
    "Mem",
    "MetInf",
    "Next",
    "NextNonce",
    "SharedMem",
    "Size",
    "Type",
    "Version",
    "MaxObjSize",
    "FieldLevel",
];

pub const FIRST_TOKEN: u8 = 0x05;

pub fn name_of(page: u8, token: u8) -> Option<&'static str> {
    let table: &[&'static str] = match page {
        0 => &SYNCML_PAGE,
        1 => &METINF_PAGE,
        _ => return None,
    };
    let index = usize::from(token.checked_sub(FIRST_TOKEN)?);
    table.get(index).copied().filter(|name| !name.is_empty())
}

pub fn token_of(page: u8, name: &str) -> Option<u8> {
    let table: &[&str] = if page == 0 {
        &SYNCML_PAGE
    } else {
        &METINF_PAGE
    };
    let index = table.iter().position(|n| *n == name)?;
    Some(FIRST_TOKEN + u8::try_from(index).ok()?)
}

/// The specification's spelling of a MetInf child, if the codec knows it.
pub fn metinf_name(name: &str) -> Option<&'static str> {
    METINF_PAGE.iter().copied().find(|n| *n == name)
}
