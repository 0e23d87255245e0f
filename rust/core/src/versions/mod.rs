//! App version ordering per platform.
//!
//! Every version string is turned into a *sort key*: a short byte string whose plain
//! lexicographic (memcmp) order is the version order of its platform. Comparing, sorting,
//! grouping and storing (a `BLOB`/`bytea` column orders the same way) all reduce to
//! comparing keys, so the order is total by construction and identical everywhere.
//!
//! The rules are written down in `docs/versions.md`; the key layouts are in `key.rs`.

mod column;
mod key;
mod plan;

use std::fmt;

pub use column::{
    argsort, argsort_rows, compare_rows, max_per_group, IndexedError, Interned, Keys, MISSING,
};
pub use key::{write_key, MAX_VERSION_LEN};
pub use plan::{plan_install, InstallAction, InstallPlan};

/// A device platform, which fixes how its app versions are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    Android,
    Ios,
    Macos,
    Windows,
    WindowsPhone,
    Generic,
}

/// How a platform's version strings are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Android `versionCode`: one non-negative 32-bit integer.
    VersionCode,
    /// Apple `CFBundleVersion` / `CFBundleShortVersionString`: dotted integers with an
    /// optional development-stage suffix on the last part (`1.2b3`).
    Bundle,
    /// Windows package `Major.Minor.Build.Revision`: only the first three parts order.
    FourPart,
    /// Anything else: runs of digits and letters; letters mark a pre-release.
    Generic,
}

impl Platform {
    pub const ALL: [Platform; 6] = [
        Platform::Android,
        Platform::Ios,
        Platform::Macos,
        Platform::Windows,
        Platform::WindowsPhone,
        Platform::Generic,
    ];

    /// Parses a platform name; `ipados` is accepted as a name for the iOS rules.
    pub fn from_name(name: &str) -> Option<Platform> {
        Some(match name {
            "android" => Platform::Android,
            "ios" | "ipados" => Platform::Ios,
            "macos" => Platform::Macos,
            "windows" => Platform::Windows,
            "windows-phone" => Platform::WindowsPhone,
            "generic" => Platform::Generic,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
            Platform::Macos => "macos",
            Platform::Windows => "windows",
            Platform::WindowsPhone => "windows-phone",
            Platform::Generic => "generic",
        }
    }

    pub fn scheme(self) -> Scheme {
        match self {
            Platform::Android => Scheme::VersionCode,
            Platform::Ios | Platform::Macos => Scheme::Bundle,
            Platform::Windows | Platform::WindowsPhone => Scheme::FourPart,
            Platform::Generic => Scheme::Generic,
        }
    }

    /// Whether a device may be sent a lower version than the one it has installed.
    ///
    /// Only iOS/iPadOS installs a lower bundle version over a higher one; Android refuses
    /// a lower `versionCode`, macOS and Windows refuse lower versions. `generic` has no
    /// platform behind it, so it takes the safe answer.
    pub fn allows_downgrade(self) -> bool {
        matches!(self, Platform::Ios)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a version string could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    Empty,
    TooLong,
    Unexpected(char),
    EmptyPart,
    VersionCodeTooLarge,
    PartTooLarge { part: usize },
    TooManyParts,
    NoAlphanumerics,
}

/// A version string that does not follow its platform's rule, and where it goes wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionError {
    /// Byte offset into the string as given (before whitespace is trimmed).
    pub offset: usize,
    pub reason: Reason,
}

impl VersionError {
    pub(crate) fn new(offset: usize, reason: Reason) -> Self {
        VersionError { offset, reason }
    }

    /// One line naming the platform, the string, the problem and its offset.
    pub fn describe(&self, platform: Platform, version: &str) -> String {
        let shown: String = if version.len() > 64 {
            let mut cut = 64;
            while !version.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{:?}…", &version[..cut])
        } else {
            format!("{version:?}")
        };
        format!(
            "invalid {platform} version {shown}: {} (at byte {})",
            self.reason, self.offset
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Empty => f.write_str("the version is empty"),
            Reason::TooLong => write!(f, "longer than {MAX_VERSION_LEN} bytes"),
            Reason::Unexpected(c) => write!(f, "unexpected character {c:?}"),
            Reason::EmptyPart => f.write_str("a dot-separated part is empty"),
            Reason::VersionCodeTooLarge => f.write_str("a versionCode is at most 2147483647"),
            Reason::PartTooLarge { part } => {
                write!(f, "part {part} is larger than 65535")
            }
            Reason::TooManyParts => f.write_str("more than four dot-separated parts"),
            Reason::NoAlphanumerics => f.write_str("no digits or letters"),
        }
    }
}

/// Compares two versions of one platform: `Less` means `a` is the lower version.
pub fn compare(
    platform: Platform,
    a: &str,
    b: &str,
) -> Result<std::cmp::Ordering, (usize, VersionError)> {
    let mut ka = Vec::with_capacity(24);
    let mut kb = Vec::with_capacity(24);
    write_key(platform, a, &mut ka).map_err(|e| (0, e))?;
    write_key(platform, b, &mut kb).map_err(|e| (1, e))?;
    Ok(ka.cmp(&kb))
}

/// The sort key of one version (see the module documentation).
pub fn sort_key(platform: Platform, version: &str) -> Result<Vec<u8>, VersionError> {
    let mut key = Vec::with_capacity(24);
    write_key(platform, version, &mut key)?;
    Ok(key)
}

#[cfg(test)]
mod tests;
