//! A columnar index of a device fleet and the targeting query over it: for one app and
//! one version, which devices get an install command, and why each of the others does not.
//!
//! Devices are rows `0..n`. Per device the index keeps its organisation number (orgs are
//! numbered in a pre-order walk of the org tree, so a subtree is a contiguous range), a
//! bit per platform, a "supervised" bit, a 64-bit hash of its id (for percentage
//! rollouts) and the id itself. Per app it keeps, per device, the id of the installed
//! version's sort key among that app's distinct installed versions (or [`MISSING`]).
//!
//! A query touches each device once, reading 4 + 4 bytes and two bits, and makes one
//! version comparison per distinct installed version, not per device.

use std::fmt;

use rustc_hash::FxHashMap;

use crate::versions::{sort_key, Platform, VersionError, MISSING};

/// What the query decided for one device. The discriminant is the code across the
/// Python boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// Not installed: send an install.
    Install,
    /// Installed below the version: send it.
    Upgrade,
    /// Already at the version.
    SkipSame,
    /// Installed above the version, and downgrades were not allowed.
    SkipNewer,
    /// Installed above the version, and downgrades were allowed: send it.
    Downgrade,
    /// Not installed, and only devices that have the app were asked for.
    SkipNotInstalled,
    /// Not of the asked-for platform.
    SkipPlatform,
    /// Would be sent, but the licences ran out on devices earlier in device order.
    SkipNoLicence,
    /// Would be sent, but falls outside the rollout percentage.
    SkipRollout,
    /// Outside the organisation range: not part of the query.
    OutOfScope,
    /// A take-over query: the user installed the app themselves, and the device can take it
    /// under management: send the version (with `ChangeManagementState`).
    TakeOver,
    /// A take-over query: the user installed the app themselves, but the device cannot
    /// take it under management (its OS is too old, or unknown).
    SkipTakeOverUnsupported,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::Install,
        Outcome::Upgrade,
        Outcome::SkipSame,
        Outcome::SkipNewer,
        Outcome::Downgrade,
        Outcome::SkipNotInstalled,
        Outcome::SkipPlatform,
        Outcome::SkipNoLicence,
        Outcome::SkipRollout,
        Outcome::OutOfScope,
        Outcome::TakeOver,
        Outcome::SkipTakeOverUnsupported,
    ];

    /// Whether the device is sent the version (before licences and rollout apply).
    pub fn sends(self) -> bool {
        matches!(
            self,
            Outcome::Install | Outcome::Upgrade | Outcome::Downgrade | Outcome::TakeOver
        )
    }
}

/// Why the index refused an input.
#[derive(Clone, Debug, PartialEq)]
pub enum FleetError {
    /// Two columns that must be equally long are not.
    Lengths {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A device platform code that is not a position in [`Platform::ALL`].
    PlatformCode { index: Option<usize>, code: u8 },
    /// A supervised value other than 0, 1 or 2.
    Supervised { index: usize, value: u8 },
    /// More devices than `u32` numbers, or ids longer than 4 GiB in total.
    TooLarge,
    /// No installed versions were ever set for the app.
    UnknownApp(u32),
    /// A device number not below the number of devices.
    Device { device: usize, devices: usize },
    /// The query's version platform orders differently from the app's stored versions.
    PlatformMismatch {
        app: u32,
        stored: Platform,
        given: Platform,
    },
    /// A version that does not follow its platform's rule; `index` is its row, if any.
    Version {
        platform: Platform,
        version: String,
        index: Option<usize>,
        error: VersionError,
    },
    /// An org range whose first org is after its last.
    OrgRange { first: u32, last: u32 },
    /// A rollout percentage that is not a number in 0..=100.
    Percent(f64),
    /// A scope built for a fleet of another size.
    ScopeSize { scope: usize, devices: usize },
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetError::Lengths {
                what,
                expected,
                got,
            } => write!(
                f,
                "columns differ in length: {what} has {got} items, expected {expected}"
            ),
            FleetError::PlatformCode { index, code } => {
                if let Some(i) = index {
                    write!(f, "device {i}: ")?;
                }
                write!(
                    f,
                    "platform code {code} is not below {}",
                    Platform::ALL.len()
                )
            }
            FleetError::Supervised { index, value } => write!(
                f,
                "device {index}: supervised is {value}; expected 0 (no), 1 (yes) or 2 (unknown)"
            ),
            FleetError::TooLarge => f.write_str("more than 2**32-1 devices or 4 GiB of device ids"),
            FleetError::UnknownApp(app) => {
                write!(f, "no installed versions were set for app {app}")
            }
            FleetError::Device { device, devices } => {
                write!(
                    f,
                    "device {device} is out of range: the fleet has {devices} devices"
                )
            }
            FleetError::PlatformMismatch { app, stored, given } => write!(
                f,
                "app {app} has its installed versions keyed as {stored}, not {given}"
            ),
            FleetError::Version {
                platform,
                version,
                index,
                error,
            } => {
                if let Some(i) = index {
                    write!(f, "item {i}: ")?;
                }
                f.write_str(&error.describe(*platform, version))
            }
            FleetError::OrgRange { first, last } => {
                write!(
                    f,
                    "org range ({first}, {last}) is empty: first is after last"
                )
            }
            FleetError::Percent(p) => write!(f, "rollout percent {p} is not in 0..=100"),
            FleetError::ScopeSize { scope, devices } => write!(
                f,
                "the scope covers {scope} devices but the fleet has {devices}: build it again"
            ),
        }
    }
}

impl std::error::Error for FleetError {}

/// 64-bit FNV-1a: fixed constants, so the same on every run and platform.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 finaliser: spreads every input bit over the output.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where a device falls in a rollout, in `[0, 100)`: `mix64(fnv1a64(id) ^ fnv1a64(seed))`,
/// its top 53 bits as a fraction, times 100. A device is in a `p`% rollout when this is
/// below `p`, so raising `p` only ever adds devices.
pub fn rollout_point(id_hash: u64, seed_hash: u64) -> f64 {
    let h = mix64(id_hash ^ seed_hash);
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64) * 100.0
}

/// The installed versions of one app: per device an id into `keys`, or [`MISSING`].
#[derive(Clone, Debug)]
struct Installed {
    platform: Platform,
    keys: Vec<Vec<u8>>,
    ids: FxHashMap<Vec<u8>, u32>,
    rows: Vec<u32>,
}

impl Installed {
    fn intern(&mut self, key: Vec<u8>) -> u32 {
        let next = self.keys.len() as u32;
        let id = *self.ids.entry(key.clone()).or_insert(next);
        if id == next {
            self.keys.push(key);
        }
        id
    }
}

/// A set of devices (a bit per device): an assignment's orgs and devices, or what a
/// higher version already claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    len: usize,
    bits: Vec<u64>,
}

impl Scope {
    /// No device of a fleet of `len` devices.
    pub fn empty(len: usize) -> Scope {
        Scope {
            len,
            bits: bitset(len),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, device: usize) -> bool {
        device < self.len && bit(&self.bits, device)
    }

    /// Devices in the set.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn same_size(&self, other: &Scope) -> Result<(), FleetError> {
        if self.len == other.len {
            Ok(())
        } else {
            Err(FleetError::ScopeSize {
                scope: other.len,
                devices: self.len,
            })
        }
    }

    /// Devices in either set.
    pub fn union(&self, other: &Scope) -> Result<Scope, FleetError> {
        self.same_size(other)?;
        let bits = self.bits.iter().zip(&other.bits).map(|(a, b)| a | b);
        Ok(Scope {
            len: self.len,
            bits: bits.collect(),
        })
    }

    /// Devices in this set and not in `other`.
    pub fn difference(&self, other: &Scope) -> Result<Scope, FleetError> {
        self.same_size(other)?;
        let bits = self.bits.iter().zip(&other.bits).map(|(a, b)| a & !b);
        Ok(Scope {
            len: self.len,
            bits: bits.collect(),
        })
    }

    /// The devices in the set, ascending.
    pub fn devices(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.count());
        for (w, &word) in self.bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                out.push((w * 64) as u32 + word.trailing_zeros());
                word &= word - 1;
            }
        }
        out
    }
}

/// The targeting question; see [`FleetIndex::target`].
#[derive(Clone, Debug)]
pub struct Query<'a> {
    /// Inclusive range of org numbers; `None` is the whole fleet.
    pub org_range: Option<(u32, u32)>,
    /// Only these devices (with `org_range`: only these devices in that range).
    pub scope: Option<&'a Scope>,
    /// Only devices that have the app installed (an update, not an install).
    pub installed_only: bool,
    /// Only devices of this platform code (a position in [`Platform::ALL`]).
    pub platform: Option<u8>,
    pub version: &'a str,
    pub version_platform: Platform,
    pub allow_downgrade: bool,
    /// How many licences are free: a device that would be sent the version and holds no
    /// licence of the app takes one, the first ones in device order first.
    pub licences: Option<u64>,
    /// Percentage of devices in the rollout, decided by [`rollout_point`].
    pub percent: Option<f64>,
    pub seed: &'a str,
    /// Take copies the user installed under management: such a copy (see
    /// [`FleetIndex::set_user_installed`]) at, below or (when downgrades are allowed)
    /// above the version is `TakeOver` on a device that can take it over (see
    /// [`FleetIndex::set_take_over`]) and `SkipTakeOverUnsupported` on one that cannot.
    pub take_over: bool,
}

/// What [`FleetIndex::target`] answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targeting {
    /// Per device, an [`Outcome`] code.
    pub outcomes: Vec<u8>,
    /// Devices sent the version, in device order.
    pub selected: Vec<u32>,
    /// Per selected device: true when it installs silently, false when the user is
    /// prompted and may decline.
    pub silent: Vec<bool>,
    /// Selected devices that take a licence (they held none), in device order.
    pub licensed: Vec<u32>,
    /// Devices per outcome code.
    pub counts: [u64; Outcome::ALL.len()],
}

/// The fleet; see the module documentation.
#[derive(Clone, Debug, Default)]
pub struct FleetIndex {
    id_text: String,
    id_ends: Vec<u32>,
    id_hashes: Vec<u64>,
    orgs: Vec<u32>,
    /// Device numbers sorted by (org, device): an org subtree is one slice of it.
    by_org: Vec<u32>,
    /// Whether device numbers follow org order (`orgs` never decreases).
    in_org_order: bool,
    platforms: Vec<Vec<u64>>,
    supervised: Vec<u64>,
    silent: Vec<u64>,
    /// Devices that can take a user-installed app under management.
    take_over: Vec<u64>,
    apps: FxHashMap<u32, Installed>,
    licensed: FxHashMap<u32, Vec<u64>>,
    /// Per app, the devices whose installed copy the user installed (not managed).
    user_installed: FxHashMap<u32, Vec<u64>>,
}

fn bitset(len: usize) -> Vec<u64> {
    vec![0; len.div_ceil(64)]
}

#[inline]
fn bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] >> (i % 64) & 1 == 1
}

fn set_bit(bits: &mut [u64], i: usize, on: bool) {
    if on {
        bits[i / 64] |= 1 << (i % 64);
    } else {
        bits[i / 64] &= !(1 << (i % 64));
    }
}

impl FleetIndex {
    /// Builds the index from one value per device in each column. `platforms` are
    /// positions in [`Platform::ALL`]; `supervised` is 0 (no), 1 (yes) or 2 (unknown);
    /// `silent` is 1 for a device that installs apps without asking its user (the
    /// caller knows the platform's rule; iOS needs supervision and iOS 10), and when
    /// `None` it is taken to be the supervised devices.
    pub fn new<'a, I>(
        ids: I,
        orgs: Vec<u32>,
        platforms: &[u8],
        supervised: &[u8],
        silent: Option<&[u8]>,
    ) -> Result<FleetIndex, FleetError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let n = orgs.len();
        if n > u32::MAX as usize {
            return Err(FleetError::TooLarge);
        }
        let mut index = FleetIndex {
            id_ends: Vec::with_capacity(n),
            id_hashes: Vec::with_capacity(n),
            platforms: vec![bitset(n); Platform::ALL.len()],
            supervised: bitset(n),
            take_over: bitset(n),
            ..FleetIndex::default()
        };
        for id in ids {
            index.id_text.push_str(id);
            let end = u32::try_from(index.id_text.len()).map_err(|_| FleetError::TooLarge)?;
            index.id_ends.push(end);
            index.id_hashes.push(fnv1a64(id.as_bytes()));
        }
        let check = |what, got| {
            if got == n {
                Ok(())
            } else {
                Err(FleetError::Lengths {
                    what,
                    expected: n,
                    got,
                })
            }
        };
        check("ids", index.id_ends.len())?;
        check("platforms", platforms.len())?;
        check("supervised", supervised.len())?;
        if let Some(silent) = silent {
            check("silent", silent.len())?;
        }
        for (i, &code) in platforms.iter().enumerate() {
            let bits = index
                .platforms
                .get_mut(code as usize)
                .ok_or(FleetError::PlatformCode {
                    index: Some(i),
                    code,
                })?;
            bits[i / 64] |= 1 << (i % 64);
        }
        for (i, &value) in supervised.iter().enumerate() {
            match value {
                0 | 2 => {}
                1 => index.supervised[i / 64] |= 1 << (i % 64),
                _ => return Err(FleetError::Supervised { index: i, value }),
            }
        }
        index.silent = match silent {
            None => index.supervised.clone(),
            Some(flags) => {
                let mut bits = bitset(n);
                for (i, &flag) in flags.iter().enumerate() {
                    if flag != 0 {
                        bits[i / 64] |= 1 << (i % 64);
                    }
                }
                bits
            }
        };
        let mut by_org: Vec<u32> = (0..n as u32).collect();
        by_org.sort_unstable_by_key(|&d| (orgs[d as usize], d));
        index.orgs = orgs;
        index.by_org = by_org;
        index.in_org_order = index.orgs.windows(2).all(|w| w[0] <= w[1]);
        Ok(index)
    }

    /// Where device `d` of org `org` sits (or would sit) in `by_org`.
    fn org_position(&self, org: u32, d: u32) -> usize {
        self.by_org
            .partition_point(|&e| (self.orgs[e as usize], e) < (org, d))
    }

    /// Adds a device at the end (number `len()` before the call) and returns its number.
    /// It has no app installed, holds no licence and cannot take apps over.
    pub fn push_device(
        &mut self,
        id: &str,
        org: u32,
        platform: u8,
        supervised: u8,
        silent: bool,
    ) -> Result<usize, FleetError> {
        let i = self.len();
        if i >= u32::MAX as usize {
            return Err(FleetError::TooLarge);
        }
        Self::check_columns(platform, supervised, i)?;
        self.id_text.push_str(id);
        let end = u32::try_from(self.id_text.len()).map_err(|_| {
            self.id_text.truncate(self.id_text.len() - id.len());
            FleetError::TooLarge
        })?;
        self.id_ends.push(end);
        self.id_hashes.push(fnv1a64(id.as_bytes()));
        self.orgs.push(org);
        let at = self.org_position(org, i as u32);
        self.by_org.insert(at, i as u32);
        self.in_org_order &= i == 0 || self.orgs[i - 1] <= org;
        let words = (i + 1).div_ceil(64);
        let grow = |bits: &mut Vec<u64>| bits.resize(words, 0);
        self.platforms.iter_mut().for_each(grow);
        grow(&mut self.supervised);
        grow(&mut self.silent);
        grow(&mut self.take_over);
        self.licensed.values_mut().for_each(grow);
        self.user_installed.values_mut().for_each(grow);
        for installed in self.apps.values_mut() {
            installed.rows.push(MISSING);
        }
        self.set_device(i, org, platform, supervised, silent)?;
        Ok(i)
    }

    fn check_columns(platform: u8, supervised: u8, index: usize) -> Result<(), FleetError> {
        if platform as usize >= Platform::ALL.len() {
            return Err(FleetError::PlatformCode {
                index: Some(index),
                code: platform,
            });
        }
        if supervised > 2 {
            return Err(FleetError::Supervised {
                index,
                value: supervised,
            });
        }
        Ok(())
    }

    /// Changes a device's org, platform and flags (it moved, was re-enrolled, updated).
    pub fn set_device(
        &mut self,
        device: usize,
        org: u32,
        platform: u8,
        supervised: u8,
        silent: bool,
    ) -> Result<(), FleetError> {
        self.check_device(device)?;
        Self::check_columns(platform, supervised, device)?;
        let old = self.orgs[device];
        if old != org {
            let from = self.org_position(old, device as u32);
            self.by_org.remove(from);
            self.orgs[device] = org;
            let to = self.org_position(org, device as u32);
            self.by_org.insert(to, device as u32);
            self.in_org_order = self.orgs.windows(2).all(|w| w[0] <= w[1]);
        }
        let (w, b) = (device / 64, 1u64 << (device % 64));
        for (code, bits) in self.platforms.iter_mut().enumerate() {
            if code == platform as usize {
                bits[w] |= b;
            } else {
                bits[w] &= !b;
            }
        }
        let set = |bits: &mut Vec<u64>, on: bool| {
            if on {
                bits[w] |= b
            } else {
                bits[w] &= !b
            }
        };
        set(&mut self.supervised, supervised == 1);
        set(&mut self.silent, silent);
        Ok(())
    }

    /// The devices in any of the org ranges, or listed.
    pub fn scope(&self, org_ranges: &[(u32, u32)], devices: &[u32]) -> Result<Scope, FleetError> {
        let mut scope = Scope::empty(self.len());
        for &(first, last) in org_ranges {
            if first > last {
                return Err(FleetError::OrgRange { first, last });
            }
        }
        if !org_ranges.is_empty() {
            for (i, &org) in self.orgs.iter().enumerate() {
                if org_ranges
                    .iter()
                    .any(|&(first, last)| org.wrapping_sub(first) <= last - first)
                {
                    scope.bits[i / 64] |= 1 << (i % 64);
                }
            }
        }
        for &device in devices {
            self.check_device(device as usize)?;
            scope.bits[device as usize / 64] |= 1 << (device % 64);
        }
        Ok(scope)
    }

    /// Replaces the licence holders of `app`.
    pub fn set_licensed(&mut self, app: u32, devices: &[u32]) -> Result<(), FleetError> {
        let mut bits = bitset(self.len());
        for &device in devices {
            self.check_device(device as usize)?;
            bits[device as usize / 64] |= 1 << (device % 64);
        }
        self.licensed.insert(app, bits);
        Ok(())
    }

    /// One device took (`true`) or gave back a licence of `app`.
    pub fn update_licensed(
        &mut self,
        app: u32,
        device: usize,
        held: bool,
    ) -> Result<(), FleetError> {
        self.check_device(device)?;
        let len = self.len();
        let bits = self.licensed.entry(app).or_insert_with(|| bitset(len));
        if held {
            bits[device / 64] |= 1 << (device % 64);
        } else {
            bits[device / 64] &= !(1 << (device % 64));
        }
        Ok(())
    }

    /// Sets, for every device, whether it can take a user-installed app under management
    /// (`flags[i]` non-zero: it can).
    pub fn set_take_over(&mut self, flags: &[u8]) -> Result<(), FleetError> {
        if flags.len() != self.len() {
            return Err(FleetError::Lengths {
                what: "take_over",
                expected: self.len(),
                got: flags.len(),
            });
        }
        let mut bits = bitset(self.len());
        for (i, &flag) in flags.iter().enumerate() {
            if flag != 0 {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        self.take_over = bits;
        Ok(())
    }

    /// Whether one device can take a user-installed app under management.
    pub fn set_device_take_over(&mut self, device: usize, on: bool) -> Result<(), FleetError> {
        self.check_device(device)?;
        set_bit(&mut self.take_over, device, on);
        Ok(())
    }

    /// Whether `device` can take a user-installed app under management.
    pub fn can_take_over(&self, device: usize) -> Result<bool, FleetError> {
        self.check_device(device)?;
        Ok(bit(&self.take_over, device))
    }

    /// Replaces the devices whose copy of `app` the user installed themselves.
    pub fn set_user_installed(&mut self, app: u32, devices: &[u32]) -> Result<(), FleetError> {
        let mut bits = bitset(self.len());
        for &device in devices {
            self.check_device(device as usize)?;
            bits[device as usize / 64] |= 1 << (device % 64);
        }
        self.user_installed.insert(app, bits);
        Ok(())
    }

    /// One device's copy of `app` is (`true`) or is no longer the user's own.
    pub fn update_user_installed(
        &mut self,
        app: u32,
        device: usize,
        user: bool,
    ) -> Result<(), FleetError> {
        self.check_device(device)?;
        let len = self.len();
        let bits = self
            .user_installed
            .entry(app)
            .or_insert_with(|| bitset(len));
        set_bit(bits, device, user);
        Ok(())
    }

    /// Whether the copy of `app` on `device` is marked as the user's own.
    pub fn is_user_installed(&self, app: u32, device: usize) -> Result<bool, FleetError> {
        self.check_device(device)?;
        Ok(self
            .user_installed
            .get(&app)
            .is_some_and(|bits| bit(bits, device)))
    }

    /// Whether `device` holds a licence of `app`.
    pub fn is_licensed(&self, app: u32, device: usize) -> Result<bool, FleetError> {
        self.check_device(device)?;
        Ok(self
            .licensed
            .get(&app)
            .is_some_and(|bits| bit(bits, device)))
    }

    pub fn len(&self) -> usize {
        self.orgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
    }

    /// The id of device `i`.
    pub fn id(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            self.id_ends[i - 1] as usize
        };
        &self.id_text[start..self.id_ends[i] as usize]
    }

    /// Bytes the index holds for its devices, apps included (not counting allocator slack).
    pub fn memory_bytes(&self) -> usize {
        let apps: usize = self
            .apps
            .values()
            .map(|a| a.rows.len() * 4 + a.keys.iter().map(|k| k.len() * 2 + 64).sum::<usize>())
            .sum();
        self.id_text.len()
            + self.id_ends.len() * 4
            + self.id_hashes.len() * 8
            + self.orgs.len() * 4
            + self.by_org.len() * 4
            + self.platforms.iter().map(|b| b.len() * 8).sum::<usize>()
            + self.supervised.len() * 8
            + self.silent.len() * 8
            + self.take_over.len() * 8
            + self.licensed.values().map(|b| b.len() * 8).sum::<usize>()
            + self
                .user_installed
                .values()
                .map(|b| b.len() * 8)
                .sum::<usize>()
            + apps
    }

    fn check_device(&self, device: usize) -> Result<(), FleetError> {
        if device < self.len() {
            Ok(())
        } else {
            Err(FleetError::Device {
                device,
                devices: self.len(),
            })
        }
    }

    /// Replaces what is known of `app`: `versions[k]` is installed on `devices[k]`, and
    /// no other device has the app. A device listed twice keeps its last version.
    pub fn set_installed(
        &mut self,
        app: u32,
        platform: Platform,
        devices: &[u32],
        versions: &[&str],
    ) -> Result<(), FleetError> {
        if devices.len() != versions.len() {
            return Err(FleetError::Lengths {
                what: "versions",
                expected: devices.len(),
                got: versions.len(),
            });
        }
        let mut installed = Installed {
            platform,
            keys: Vec::new(),
            ids: FxHashMap::default(),
            rows: vec![MISSING; self.len()],
        };
        let mut by_text: FxHashMap<&str, u32> = FxHashMap::default();
        for (k, (&device, &version)) in devices.iter().zip(versions).enumerate() {
            self.check_device(device as usize)?;
            let id = match by_text.get(version) {
                Some(&id) => id,
                None => {
                    let key = sort_key(platform, version).map_err(|error| FleetError::Version {
                        platform,
                        version: version.to_owned(),
                        index: Some(k),
                        error,
                    })?;
                    let id = installed.intern(key);
                    by_text.insert(version, id);
                    id
                }
            };
            installed.rows[device as usize] = id;
        }
        self.apps.insert(app, installed);
        Ok(())
    }

    /// One device reported `version` of `app` (`None`: the app is gone).
    pub fn update_installed(
        &mut self,
        app: u32,
        device: usize,
        version: Option<&str>,
    ) -> Result<(), FleetError> {
        self.check_device(device)?;
        let installed = self.apps.get_mut(&app).ok_or(FleetError::UnknownApp(app))?;
        let id = match version {
            None => MISSING,
            Some(v) => {
                let platform = installed.platform;
                let key = sort_key(platform, v).map_err(|error| FleetError::Version {
                    platform,
                    version: v.to_owned(),
                    index: None,
                    error,
                })?;
                installed.intern(key)
            }
        };
        installed.rows[device] = id;
        Ok(())
    }

    /// The installed version's sort key of `app` on `device`, if installed.
    pub fn installed_key(&self, app: u32, device: usize) -> Result<Option<&[u8]>, FleetError> {
        self.check_device(device)?;
        let installed = self.apps.get(&app).ok_or(FleetError::UnknownApp(app))?;
        let id = installed.rows[device];
        Ok((id != MISSING).then(|| installed.keys[id as usize].as_slice()))
    }

    /// Decides, for every device, whether it is sent `query.version` of `app` and why
    /// not. In order: outside the org range or the scope → `OutOfScope`; other platform →
    /// `SkipPlatform`; then the installed version against the asked one (and, for a
    /// take-over, a copy the user installed → `TakeOver` or `SkipTakeOverUnsupported`,
    /// unless it is above the version and downgrades are not allowed); a device that
    /// would be sent the version is then held back by the rollout (`SkipRollout`), and
    /// after that, if it holds no licence, by the free licences, which go to the first
    /// devices in device order (`SkipNoLicence`).
    pub fn target(&self, app: u32, query: &Query<'_>) -> Result<Targeting, FleetError> {
        let installed = self.apps.get(&app).ok_or(FleetError::UnknownApp(app))?;
        if installed.platform != query.version_platform {
            return Err(FleetError::PlatformMismatch {
                app,
                stored: installed.platform,
                given: query.version_platform,
            });
        }
        let platform = query.version_platform;
        let want = sort_key(platform, query.version).map_err(|error| FleetError::Version {
            platform,
            version: query.version.to_owned(),
            index: None,
            error,
        })?;
        if let Some((first, last)) = query.org_range {
            if first > last {
                return Err(FleetError::OrgRange { first, last });
            }
        }
        if let Some(p) = query.percent {
            if !(0.0..=100.0).contains(&p) {
                return Err(FleetError::Percent(p));
            }
        }
        if let Some(scope) = query.scope {
            if scope.len != self.len() {
                return Err(FleetError::ScopeSize {
                    scope: scope.len,
                    devices: self.len(),
                });
            }
        }
        let holders = self.licensed.get(&app);
        // A take-over query over an app whose copies are all managed asks nothing more.
        let users = if query.take_over {
            self.user_installed.get(&app)
        } else {
            None
        };
        let platform_bits = match query.platform {
            None => None,
            Some(code) => Some(
                self.platforms
                    .get(code as usize)
                    .ok_or(FleetError::PlatformCode { index: None, code })?,
            ),
        };
        // One comparison per distinct installed version.
        let by_key: Vec<Outcome> = installed
            .keys
            .iter()
            .map(|have| match want.as_slice().cmp(have.as_slice()) {
                std::cmp::Ordering::Greater => Outcome::Upgrade,
                std::cmp::Ordering::Equal => Outcome::SkipSame,
                std::cmp::Ordering::Less if query.allow_downgrade => Outcome::Downgrade,
                std::cmp::Ordering::Less => Outcome::SkipNewer,
            })
            .collect();
        let absent = if query.installed_only {
            Outcome::SkipNotInstalled
        } else {
            Outcome::Install
        };
        let seed_hash = fnv1a64(query.seed.as_bytes());
        let percent = query.percent.filter(|&p| p < 100.0);
        let n = self.len();
        let mut outcomes = vec![Outcome::OutOfScope as u8; n];
        // Devices that would be sent the version, before licences: walked in device order
        // afterwards, so licences go to the first devices whatever order they were seen in.
        let mut sends = bitset(n);
        // Separate tallies, so that runs of equal outcomes do not wait on one counter.
        let mut tallies = [[0u64; 16]; 4];
        // Branch-free per device: outcomes are as good as random from one device to the
        // next, so branches on them would mostly be mispredicted.
        let missing_slot = by_key.len() as u32;
        let mut table: Vec<u8> = by_key.iter().map(|&o| o as u8).collect();
        table.push(absent as u8);
        let send_mask: u32 = Outcome::ALL
            .iter()
            .filter(|o| o.sends())
            .fold(0, |m, &o| m | 1 << o as u32);
        let everyone;
        let platform_bits: &[u64] = match platform_bits {
            Some(bits) => bits,
            None => {
                everyone = vec![u64::MAX; n.div_ceil(64)];
                &everyone
            }
        };
        let rows = &installed.rows;
        let skip_platform = Outcome::SkipPlatform as u8;
        let take_over = &self.take_over;
        let decide = |i: usize, id: u32| -> (u8, u32) {
            // Selects by arithmetic, not branches (MISSING is u32::MAX, above every slot).
            let found = table[id.min(missing_slot) as usize];
            let other = (platform_bits[i / 64] >> (i % 64) & 1) as u8 ^ 1;
            let mut outcome = found ^ ((found ^ skip_platform) & other.wrapping_neg());
            if let Some(users) = users {
                // The user's own copy (installed, of the platform) is taken over, unless
                // it is above the version and may not go back.
                if id != MISSING
                    && other == 0
                    && outcome != Outcome::SkipNewer as u8
                    && bit(users, i)
                {
                    outcome = if bit(take_over, i) {
                        Outcome::TakeOver as u8
                    } else {
                        Outcome::SkipTakeOverUnsupported as u8
                    };
                }
            }
            let mut send = (send_mask >> outcome) & 1;
            if let Some(p) = percent {
                if send == 1 && rollout_point(self.id_hashes[i], seed_hash) >= p {
                    outcome = Outcome::SkipRollout as u8;
                    send = 0;
                }
            }
            (outcome, send)
        };
        let mut visit = |i: usize, k: usize| {
            let (outcome, send) = decide(i, rows[i]);
            sends[i / 64] |= u64::from(send) << (i % 64);
            outcomes[i] = outcome;
            tallies[k & 3][outcome as usize] += 1;
        };
        let in_scope = |i: usize| query.scope.is_none_or(|s| bit(&s.bits, i));
        match (query.org_range, query.scope) {
            (Some((first, last)), scope) => {
                // The org subtree is one slice of the devices sorted by org; when the
                // devices are numbered in org order it is a run of device numbers too.
                let lo = self
                    .by_org
                    .partition_point(|&d| self.orgs[d as usize] < first);
                let hi = self
                    .by_org
                    .partition_point(|&d| self.orgs[d as usize] <= last);
                let slice = &self.by_org[lo..hi];
                // Numbered in org order, `by_org` is the identity: the slice is a run.
                let run = self.in_org_order && !slice.is_empty();
                if run
                    && scope.is_none()
                    && percent.is_none()
                    && users.is_none()
                    && table.len() <= 256
                {
                    // The common question in one tight pass: a run of devices, a small
                    // version table, no rollout.
                    let mut small = [absent as u8; 256];
                    small[..table.len()].copy_from_slice(&table);
                    let small_missing = (table.len() - 1) as u32;
                    let start = slice[0] as usize;
                    let end = start + slice.len();
                    let mut i = start;
                    while i < end {
                        let w = i / 64;
                        let stop = end.min((w + 1) * 64);
                        let others = !platform_bits[w];
                        let mut word = 0u64;
                        let cells = outcomes[i..stop].iter_mut().zip(&rows[i..stop]);
                        for (j, (cell, &id)) in (i..stop).zip(cells) {
                            let found = small[id.min(small_missing) as u8 as usize];
                            let other = (others >> (j % 64) & 1) as u8;
                            let outcome = found ^ ((found ^ skip_platform) & other.wrapping_neg());
                            word |= u64::from((send_mask >> outcome) & 1) << (j % 64);
                            *cell = outcome;
                            tallies[j & 3][usize::from(outcome & 15)] += 1;
                        }
                        sends[w] |= word;
                        i = stop;
                    }
                } else {
                    for (k, &d) in slice.iter().enumerate() {
                        if in_scope(d as usize) {
                            visit(d as usize, k);
                        }
                    }
                }
            }
            (None, Some(scope)) => {
                for (k, d) in scope.devices().into_iter().enumerate() {
                    visit(d as usize, k);
                }
            }
            (None, None) => (0..n).for_each(|i| visit(i, i)),
        }
        let mut out = Targeting::default();
        for tally in &tallies {
            for (total, count) in out.counts.iter_mut().zip(tally.iter()) {
                *total += count;
            }
        }
        let seen: u64 = out.counts.iter().sum();
        out.counts[Outcome::OutOfScope as usize] = n as u64 - seen;
        let limited = query.licences.is_some();
        let mut licences = query.licences.unwrap_or(u64::MAX);
        let wanted: usize = sends.iter().map(|w| w.count_ones() as usize).sum();
        out.selected.reserve(wanted);
        out.silent.reserve(wanted);
        let push_bits = |list: &mut Vec<u32>, w: usize, mut word: u64| {
            while word != 0 {
                list.push((w * 64) as u32 + word.trailing_zeros());
                word &= word - 1;
            }
        };
        // Licences a word of 64 devices at a time: holders go through, the others take
        // free licences lowest device first, and the rest are left out.
        let mut refused = Vec::new();
        for (w, &word) in sends.iter().enumerate() {
            if word == 0 {
                continue;
            }
            let mut chosen = word;
            if limited {
                let held = holders.map_or(0, |h| h[w]) & word;
                let mut takers = word & !held;
                let wanting = u64::from(takers.count_ones());
                let mut taking = takers;
                if wanting > licences {
                    // Keep the lowest `licences` of them.
                    taking = 0;
                    for _ in 0..licences {
                        let low = takers & takers.wrapping_neg();
                        taking |= low;
                        takers &= !low;
                    }
                }
                licences -= u64::from(taking.count_ones());
                push_bits(&mut out.licensed, w, taking);
                push_bits(&mut refused, w, word & !held & !taking);
                chosen = held | taking;
            }
            let first = out.selected.len();
            push_bits(&mut out.selected, w, chosen);
            let silent = self.silent[w];
            out.silent.extend(
                out.selected[first..]
                    .iter()
                    .map(|&d| silent >> (d % 64) & 1 == 1),
            );
        }
        for &d in &refused {
            let i = d as usize;
            out.counts[outcomes[i] as usize] -= 1;
            out.counts[Outcome::SkipNoLicence as usize] += 1;
            outcomes[i] = Outcome::SkipNoLicence as u8;
        }
        out.outcomes = outcomes;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
