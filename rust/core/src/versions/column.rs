//! Whole-column operations: keys for many versions at once, ordering, pairwise
//! comparison and per-group maxima. These are what fan-out over a fleet calls.
//!
//! Fleet columns repeat a few thousand distinct versions over millions of rows, so a
//! column is first interned ([`Interned`]): each distinct string is keyed once, the
//! distinct keys are ranked by one comparison sort, and rows are then ordered by a
//! counting sort over those ranks, which is linear in the number of rows.

use std::cmp::Ordering;

use rayon::slice::ParallelSliceMut;
use rustc_hash::FxHashMap as Map;

use super::{write_key, Platform, VersionError};

/// A version error together with the position of the offending item in its column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedError {
    pub index: usize,
    pub error: VersionError,
}

/// Below this many distinct keys, handing work to a second thread costs more than it saves.
const PARALLEL_SORT_AT: usize = 1 << 16;

/// The sort keys of a list of versions, stored back to back in one buffer.
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
            keys.push(platform, version)
                .map_err(|error| IndexedError { index, error })?;
        }
        Ok(keys)
    }

    pub fn push(&mut self, platform: Platform, version: &str) -> Result<(), VersionError> {
        write_key(platform, version, &mut self.data)?;
        self.ends.push(self.data.len());
        Ok(())
    }

    /// Moves the keys of `other` to the end of these.
    pub fn append(&mut self, other: Keys) {
        let base = self.data.len();
        self.data.extend_from_slice(&other.data);
        self.ends.extend(other.ends.iter().map(|end| end + base));
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

    /// The first 16 key bytes as a big-endian integer (zero padded): different prefixes
    /// already decide the order, equal ones fall back to the whole key.
    fn prefix(&self, i: usize) -> u128 {
        let key = self.get(i);
        let mut buf = [0u8; 16];
        let n = key.len().min(16);
        buf[..n].copy_from_slice(&key[..n]);
        u128::from_be_bytes(buf)
    }

    /// Dense ranks: `ranks()[i] < ranks()[j]` exactly when key `i` orders below key `j`,
    /// and equal keys share a rank.
    pub fn ranks(&self) -> Vec<u32> {
        let mut rows: Vec<(u128, u32)> = (0..self.len())
            .map(|i| (self.prefix(i), i as u32))
            .collect();
        let by_key = |a: &(u128, u32), b: &(u128, u32)| {
            a.0.cmp(&b.0)
                .then_with(|| self.get(a.1 as usize).cmp(self.get(b.1 as usize)))
        };
        if rows.len() >= PARALLEL_SORT_AT {
            rows.par_sort_unstable_by(by_key);
        } else {
            rows.sort_unstable_by(by_key);
        }
        let mut ranks = vec![0u32; self.len()];
        let mut rank = 0u32;
        for w in 0..rows.len() {
            let i = rows[w].1 as usize;
            if w > 0 {
                let prev = rows[w - 1].1 as usize;
                if rows[w - 1].0 != rows[w].0 || self.get(prev) != self.get(i) {
                    rank += 1;
                }
            }
            ranks[i] = rank;
        }
        ranks
    }
}

/// Marks a row without a value (an app that is not installed).
pub const MISSING: u32 = u32::MAX;

/// A column as its distinct values plus, per row, the id of its value.
#[derive(Debug, Default)]
pub struct Interned<'a> {
    ids: Map<&'a str, u32>,
    values: Vec<&'a str>,
    rows: Vec<u32>,
}

impl<'a> Interned<'a> {
    pub fn push(&mut self, value: &'a str) {
        let next = self.values.len() as u32;
        let id = *self.ids.entry(value).or_insert(next);
        if id == next {
            self.values.push(value);
        }
        self.rows.push(id);
    }

    pub fn push_missing(&mut self) {
        self.rows.push(MISSING);
    }

    /// Sizes the table for `more` rows like the ones seen so far: growing a table of
    /// hundreds of thousands of entries step by step costs more than the lookups.
    pub fn expect_more(&mut self, more: usize) {
        let seen = self.rows.len().max(1) as u128;
        let estimate = (more as u128 * self.values.len() as u128 / seen) as usize;
        self.ids.reserve(estimate + estimate / 8);
        self.values.reserve(estimate + estimate / 8);
        self.rows.reserve(more);
    }

    /// Distinct values, in order of first appearance.
    pub fn values(&self) -> &[&'a str] {
        &self.values
    }

    /// Per row, the index into [`Interned::values`] (or [`MISSING`]).
    pub fn rows(&self) -> &[u32] {
        &self.rows
    }

    /// Keys of the distinct values; an error names the first row holding the bad value.
    pub fn keys(&self, platform: Platform) -> Result<Keys, IndexedError> {
        let build = |values: &[&str], offset: usize| {
            Keys::build(platform, values.iter().copied()).map_err(|mut e| {
                e.index += offset;
                e
            })
        };
        let keys = if self.values.len() >= PARALLEL_SORT_AT {
            let half = self.values.len() / 2;
            let (low, high) = self.values.split_at(half);
            match rayon::join(|| build(low, 0), || build(high, half)) {
                (Ok(mut low), Ok(high)) => {
                    low.append(high);
                    Ok(low)
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        } else {
            build(&self.values, 0)
        };
        keys.map_err(|e| {
            let row = self.rows.iter().position(|&id| id as usize == e.index);
            IndexedError {
                index: row.unwrap_or(e.index),
                error: e.error,
            }
        })
    }
}

/// Rows in version order, by a stable counting sort: `rows[r]` indexes into `ranks`.
/// Equal versions keep their row order, also when `descending`. Rows must not be
/// [`MISSING`].
pub fn argsort_rows(ranks: &[u32], rows: &[u32], descending: bool) -> Vec<usize> {
    let levels = ranks.iter().max().map_or(0, |&m| m as usize + 1);
    let bucket = |row: u32| {
        let r = ranks[row as usize] as usize;
        if descending {
            levels - 1 - r
        } else {
            r
        }
    };
    let mut starts = vec![0usize; levels + 1];
    for &row in rows {
        starts[bucket(row) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut out = vec![0usize; rows.len()];
    for (position, &row) in rows.iter().enumerate() {
        let slot = &mut starts[bucket(row)];
        out[*slot] = position;
        *slot += 1;
    }
    out
}

/// Positions of a list of keys in version order (stable; see [`argsort_rows`]).
pub fn argsort(keys: &Keys, descending: bool) -> Vec<usize> {
    let identity: Vec<u32> = (0..keys.len() as u32).collect();
    argsort_rows(&keys.ranks(), &identity, descending)
}

/// Compares row `i` of column a with row `i` of column b, for every row of the shorter.
pub fn compare_rows(a: &Keys, a_rows: &[u32], b: &Keys, b_rows: &[u32]) -> Vec<Ordering> {
    a_rows
        .iter()
        .zip(b_rows)
        .map(|(&x, &y)| a.get(x as usize).cmp(b.get(y as usize)))
        .collect()
}

/// For each group id (`0..groups`), the first row holding the group's highest version,
/// or `None` for a group without rows. `group_rows[r]` is row `r`'s group id and
/// `version_rows[r]` indexes into `ranks`.
pub fn max_per_group(
    groups: usize,
    group_rows: &[u32],
    ranks: &[u32],
    version_rows: &[u32],
) -> Vec<Option<usize>> {
    let mut best: Vec<Option<(u32, usize)>> = vec![None; groups];
    for (row, (&g, &v)) in group_rows.iter().zip(version_rows).enumerate() {
        let rank = ranks[v as usize];
        let slot = &mut best[g as usize];
        if slot.is_none_or(|(have, _)| rank > have) {
            *slot = Some((rank, row));
        }
    }
    best.into_iter().map(|b| b.map(|(_, row)| row)).collect()
}
