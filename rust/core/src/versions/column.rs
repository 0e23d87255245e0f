//! Whole-column operations: keys for many versions at once, ordering, pairwise
//! comparison and per-group maxima. These are what fan-out over a fleet calls.

use std::cmp::Ordering;
use std::collections::HashMap;

use super::{write_key, Platform, VersionError};

/// A version error together with the position of the offending item in its column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedError {
    pub index: usize,
    pub error: VersionError,
}

/// The sort keys of a column of versions, stored back to back in one buffer.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Keys {
    pub fn build<'a, I>(platform: Platform, versions: I) -> Result<Keys, IndexedError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let versions = versions.into_iter();
        let mut keys = Keys {
            data: Vec::with_capacity(versions.size_hint().0 * 12),
            ends: Vec::with_capacity(versions.size_hint().0),
        };
        for (index, version) in versions.enumerate() {
            keys.push(platform, version).map_err(|error| IndexedError { index, error })?;
        }
        Ok(keys)
    }

    pub fn push(&mut self, platform: Platform, version: &str) -> Result<(), VersionError> {
        write_key(platform, version, &mut self.data)?;
        self.ends.push(self.data.len());
        Ok(())
    }

    /// An empty key for a row that has no version (it is never compared).
    pub fn push_missing(&mut self) {
        self.ends.push(self.data.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    /// The first 16 key bytes as a big-endian integer (zero padded): equal prefixes
    /// still need the full key, different prefixes already decide the order.
    fn prefix(&self, i: usize) -> u128 {
        let key = self.get(i);
        let mut buf = [0u8; 16];
        let n = key.len().min(16);
        buf[..n].copy_from_slice(&key[..n]);
        u128::from_be_bytes(buf)
    }
}

/// Positions of the column in version order; equal versions keep their input order
/// (a stable sort), so the result is deterministic. `descending` reverses the version
/// order but still keeps equal versions in input order.
pub fn argsort(keys: &Keys, descending: bool) -> Vec<usize> {
    let mut rows: Vec<(u128, u32)> = (0..keys.len())
        .map(|i| (keys.prefix(i), i as u32))
        .collect();
    let by_version = |a: &(u128, u32), b: &(u128, u32)| {
        a.0.cmp(&b.0)
            .then_with(|| keys.get(a.1 as usize).cmp(keys.get(b.1 as usize)))
    };
    if descending {
        rows.sort_unstable_by(|a, b| by_version(b, a).then(a.1.cmp(&b.1)));
    } else {
        rows.sort_unstable_by(|a, b| by_version(a, b).then(a.1.cmp(&b.1)));
    }
    rows.into_iter().map(|(_, i)| i as usize).collect()
}

/// Compares `a[i]` with `b[i]` for every row.
pub fn compare_columns(a: &Keys, b: &Keys) -> Vec<Ordering> {
    (0..a.len().min(b.len())).map(|i| a.get(i).cmp(b.get(i))).collect()
}

/// For each distinct group label, the row holding its highest version; among equal
/// highest versions the first row wins. Groups appear in order of first appearance.
pub fn max_per_group<'g>(groups: &[&'g str], keys: &Keys) -> Vec<(&'g str, usize)> {
    let mut slot: HashMap<&str, usize> = HashMap::with_capacity(groups.len().min(1 << 16));
    let mut best: Vec<(&str, usize)> = Vec::new();
    for (row, &group) in groups.iter().enumerate().take(keys.len()) {
        match slot.get(group) {
            Some(&s) => {
                if keys.get(row) > keys.get(best[s].1) {
                    best[s].1 = row;
                }
            }
            None => {
                slot.insert(group, best.len());
                best.push((group, row));
            }
        }
    }
    best
}
