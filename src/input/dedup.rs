//! Duplicate addresses: 64-bit keys in a sorted array, not the addresses themselves.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

/// The 64-bit key of an address: a SipHash (fixed keys, so stable across runs and processes)
/// of the trimmed address with every character lowercased.
///
/// Lowercasing the whole address is a practical choice: local parts are case-sensitive in
/// theory (RFC 5321 §2.4) but virtually never in practice.
pub fn address_key(email: &str) -> u64 {
    let email = email.trim();
    let mut h = DefaultHasher::new();
    if email.is_ascii() && email.len() <= 256 {
        // The common case, without an allocation: the lowercased octets are the lowercased
        // text's UTF-8, so the key is the one the general case below gives.
        let mut buf = [0u8; 256];
        let lower = &mut buf[..email.len()];
        lower.copy_from_slice(email.as_bytes());
        lower.make_ascii_lowercase();
        h.write(lower);
    } else {
        let lower: String = email.chars().flat_map(char::to_lowercase).collect();
        h.write(lower.as_bytes());
    }
    h.finish()
}

/// Detects repeated addresses in a list without storing the addresses.
///
/// Each address is remembered as its 64-bit [`address_key`] plus the row number where it was
/// first seen (as `u32`; row numbers above `u32::MAX` are stored as `u32::MAX`): about 12–16
/// bytes per distinct address (roughly 16 MB for 1,000,000 rows). Keys live in a sorted array
/// (with a 65,536-entry index on the top bits) plus a small hash map of recent keys that is merged
/// into the array in batches, so there is no large rehash peak.
///
/// Trade-off: two different addresses with the same 64-bit hash would be taken for duplicates and
/// the second one skipped. With n distinct addresses the chance of any such collision is about
/// n² / 2⁶⁵: about 3 × 10⁻⁸ for a million addresses.
#[derive(Debug, Default)]
pub struct DuplicateFilter {
    pub(super) keys: Vec<u64>,
    rows: Vec<u32>,
    /// `index[b]..index[b + 1]` is the range of `keys` whose top 16 bits are `b`.
    index: Vec<u32>,
    pending: HashMap<u64, u32>,
}

const PENDING_MIN: usize = 16 * 1024;

impl DuplicateFilter {
    /// An empty filter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct addresses seen.
    pub fn len(&self) -> usize {
        self.keys.len() + self.pending.len()
    }

    /// True when no address has been seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `email` as seen at data row `row`. Returns `Some(first_row)` if the address
    /// (compared case-insensitively) was seen before, at `first_row`; `None` if it is new.
    pub fn check(&mut self, email: &str, row: u64) -> Option<u64> {
        let key = address_key(email);
        if let Some(&first) = self.pending.get(&key) {
            return Some(u64::from(first));
        }
        if let Some(first) = self.find_sorted(key) {
            return Some(u64::from(first));
        }
        self.pending
            .insert(key, u32::try_from(row).unwrap_or(u32::MAX));
        if self.pending.len() >= PENDING_MIN.max(self.keys.len() / 8) {
            self.merge();
        }
        None
    }

    fn find_sorted(&self, key: u64) -> Option<u32> {
        if self.keys.is_empty() {
            return None;
        }
        let bucket = (key >> 48) as usize;
        let lo = self.index[bucket] as usize;
        let hi = self.index[bucket + 1] as usize;
        self.keys[lo..hi]
            .binary_search(&key)
            .ok()
            .map(|i| self.rows[lo + i])
    }

    fn merge(&mut self) {
        let mut batch: Vec<(u64, u32)> = self.pending.drain().collect();
        batch.sort_unstable_by_key(|&(k, _)| k);
        self.pending.shrink_to(PENDING_MIN.max(self.keys.len() / 8));
        let old = self.keys.len();
        let total = old + batch.len();
        self.keys.resize(total, 0);
        self.rows.resize(total, 0);
        // Merge from the back so that no second array is needed.
        let (mut i, mut j, mut k) = (old, batch.len(), total);
        while j > 0 {
            k -= 1;
            if i > 0 && self.keys[i - 1] > batch[j - 1].0 {
                self.keys[k] = self.keys[i - 1];
                self.rows[k] = self.rows[i - 1];
                i -= 1;
            } else {
                self.keys[k] = batch[j - 1].0;
                self.rows[k] = batch[j - 1].1;
                j -= 1;
            }
        }
        self.index = bucket_index(self.keys.iter().copied());
    }
}

/// Builds the 65,537-entry bucket index over sorted `keys` (bucket = top 16 bits).
pub(crate) fn bucket_index(keys: impl IntoIterator<Item = u64>) -> Vec<u32> {
    let mut index = vec![0u32; (1 << 16) + 1];
    for k in keys {
        index[(k >> 48) as usize + 1] += 1;
    }
    for b in 1..index.len() {
        index[b] += index[b - 1];
    }
    index
}
