//! Which version a device should be sent, given the app's active versions assigned to it
//! and what it has installed.

use std::cmp::Ordering;

/// What the gateway does for one device. The discriminant is the action's code across
/// the Python boundary (its position in [`InstallAction::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum InstallAction {
    /// No active version is assigned: nothing to send.
    NothingAssigned,
    /// The app is not installed: install the highest assigned version.
    Install,
    /// The highest assigned version is newer than the installed one.
    Upgrade,
    /// The highest assigned version is the installed one: nothing to send.
    Current,
    /// Only lower versions are assigned and the platform installs over a higher one.
    Downgrade,
    /// Only lower versions are assigned and the platform refuses downgrades.
    DowngradeRefused,
}

impl InstallAction {
    pub const ALL: [InstallAction; 6] = [
        InstallAction::NothingAssigned,
        InstallAction::Install,
        InstallAction::Upgrade,
        InstallAction::Current,
        InstallAction::Downgrade,
        InstallAction::DowngradeRefused,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InstallAction::NothingAssigned => "nothing_assigned",
            InstallAction::Install => "install",
            InstallAction::Upgrade => "upgrade",
            InstallAction::Current => "current",
            InstallAction::Downgrade => "downgrade",
            InstallAction::DowngradeRefused => "downgrade_refused",
        }
    }
}

/// The decision for one device: the action and, where one applies, the position of the
/// chosen version among the assigned ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstallPlan {
    pub action: InstallAction,
    pub target: Option<usize>,
}

/// Picks the version to send. `assigned` are the sort keys of the active versions
/// assigned to the device. The highest of them is the only candidate: if a device
/// cannot accept it (a refused downgrade), it cannot accept any lower one either.
pub fn plan_install(
    assigned: &[&[u8]],
    installed: Option<&[u8]>,
    allows_downgrade: bool,
) -> InstallPlan {
    let Some(highest) = highest(assigned) else {
        return InstallPlan {
            action: InstallAction::NothingAssigned,
            target: None,
        };
    };
    let action = match installed.map(|have| assigned[highest].cmp(have)) {
        None => InstallAction::Install,
        Some(Ordering::Greater) => InstallAction::Upgrade,
        Some(Ordering::Equal) => InstallAction::Current,
        Some(Ordering::Less) if allows_downgrade => InstallAction::Downgrade,
        Some(Ordering::Less) => InstallAction::DowngradeRefused,
    };
    let target = (action != InstallAction::DowngradeRefused).then_some(highest);
    InstallPlan { action, target }
}

/// Position of the highest key; the first one among equals.
fn highest(keys: &[&[u8]]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, key) in keys.iter().enumerate() {
        if best.is_none_or(|b| *key > keys[b]) {
            best = Some(i);
        }
    }
    best
}
