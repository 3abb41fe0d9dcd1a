//! Duplicates in a list file without holding every address (issue 15): for 10–100 M rows,
//! where [`super::DuplicateFilter`]'s 12 bytes per distinct address add up.
//!
//! Three passes over the file, memory bounded by the run size and the number of duplicates:
//! 1. every row taken (right shard, no input problem) becomes a `(hash, row)` pair; runs of
//!    [`RUN_ENTRIES`] pairs are sorted in memory and written to anonymous temporary files;
//! 2. the runs are merged; equal hashes are *candidates* (a repeat, or a hash collision);
//! 3. the candidate rows are read again and compared by their normalised address, so a
//!    collision never makes a real recipient a "duplicate".
//!
//! The answer is the same as the in-memory filter's on the same rows (tested on random lists
//! with planted duplicates and, through a test hook, forced collisions), minus its one
//! weakness: the in-memory filter takes a 64-bit collision for a repeat.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use super::{InputError, ListReader, ScanSummary, address_key};

/// `(hash, row)` pairs sorted in memory at a time: 16 bytes each, 8 MiB per run.
pub(crate) const RUN_ENTRIES: usize = 512 * 1024;

/// Why the duplicate pre-scan failed.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    /// The list could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A temporary run file could not be written or read back.
    #[error("duplicate pre-scan: temporary file: {0}")]
    Temp(#[source] io::Error),
}

/// The rows whose address repeats an earlier row's, from [`find_duplicates`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KnownDuplicates {
    /// `(row, first row with the same address)`, sorted by row.
    dup_of: Vec<(u64, u64)>,
}

impl KnownDuplicates {
    /// The first row with the same address, if data row `row` repeats one.
    pub fn first_of(&self, row: u64) -> Option<u64> {
        self.dup_of
            .binary_search_by_key(&row, |&(r, _)| r)
            .ok()
            .map(|i| self.dup_of[i].1)
    }

    /// Number of repeated rows.
    pub fn len(&self) -> usize {
        self.dup_of.len()
    }

    /// No row repeats another.
    pub fn is_empty(&self) -> bool {
        self.dup_of.is_empty()
    }
}

/// Finds the repeated addresses among the rows of a list that `take(row_number)` accepts and
/// that have no input problem (the rows the in-memory filter would see). `open` opens the list
/// from the start; it is called twice.
pub fn find_duplicates<R: Read>(
    open: impl FnMut() -> Result<ListReader<R>, InputError>,
    take: impl Fn(u64) -> bool,
) -> Result<KnownDuplicates, DedupError> {
    find_duplicates_with(
        open,
        take,
        address_key,
        RUN_ENTRIES,
        &mut ScanSummary::default(),
    )
}

/// [`super::scan_file`] and [`find_duplicates`] in one: the check of every row rides on the
/// pre-scan's first pass, so a list file is read twice, not three times, before sending
/// (the third read only touches candidate rows' records).
pub fn scan_and_find_duplicates(
    path: &std::path::Path,
    take: impl Fn(u64) -> bool,
) -> Result<(ScanSummary, KnownDuplicates), DedupError> {
    let mut scan = ScanSummary::default();
    let known = find_duplicates_with(
        || ListReader::open(path),
        take,
        address_key,
        RUN_ENTRIES,
        &mut scan,
    )?;
    Ok((scan, known))
}

/// [`find_duplicates`] with the hash and run size as parameters (a test hook: a weak hash
/// forces collisions, a small run size forces the merge).
pub(crate) fn find_duplicates_with<R: Read>(
    mut open: impl FnMut() -> Result<ListReader<R>, InputError>,
    take: impl Fn(u64) -> bool,
    hash: fn(&str) -> u64,
    run_entries: usize,
    scan: &mut ScanSummary,
) -> Result<KnownDuplicates, DedupError> {
    // Pass 1: sorted runs of (hash, row).
    let mut runs: Vec<File> = Vec::new();
    let mut buf: Vec<(u64, u64)> = Vec::with_capacity(run_entries.min(1 << 16));
    let mut list = open()?;
    while let Some(row) = list.next_scanned() {
        let row = row?;
        scan.rows += 1;
        if let Some(problem) = row.problem {
            scan.problems += 1;
            if scan.first_problem.is_none() {
                scan.first_problem = Some((row.line, problem));
            }
            continue;
        }
        if !take(row.number) {
            continue;
        }
        buf.push((hash(row.email), row.number));
        if buf.len() >= run_entries {
            runs.push(write_run(&mut buf).map_err(DedupError::Temp)?);
        }
    }
    drop(list);
    // Pass 2: equal hashes are candidates.
    let mut candidates: HashMap<u64, u64> = HashMap::new(); // row -> hash
    let mut group: Vec<(u64, u64)> = Vec::new();
    let mut on_pair = |pair: (u64, u64)| {
        if group.first().is_some_and(|g| g.0 != pair.0) {
            if group.len() > 1 {
                candidates.extend(group.iter().map(|&(h, r)| (r, h)));
            }
            group.clear();
        }
        group.push(pair);
    };
    if runs.is_empty() {
        buf.sort_unstable();
        buf.iter().for_each(|&p| on_pair(p));
    } else {
        if !buf.is_empty() {
            runs.push(write_run(&mut buf).map_err(DedupError::Temp)?);
        }
        buf = Vec::new();
        merge_runs(runs, &mut on_pair).map_err(DedupError::Temp)?;
    }
    drop(buf);
    on_pair((u64::MAX, u64::MAX)); // flush the last group (a sentinel, never a candidate)
    group.clear();
    candidates.remove(&u64::MAX);
    if candidates.is_empty() {
        return Ok(KnownDuplicates::default());
    }
    // Pass 3: confirm by the addresses themselves.
    let mut firsts: HashMap<(u64, String), u64> = HashMap::new();
    let mut dup_of = Vec::new();
    let mut list = open()?;
    while let Some(row) = list.next_row() {
        let row = row?;
        let Some(&h) = candidates.get(&row.number) else {
            continue;
        };
        let norm: String = row
            .email
            .trim()
            .chars()
            .flat_map(char::to_lowercase)
            .collect();
        match firsts.get(&(h, norm.clone())) {
            Some(&first) => dup_of.push((row.number, first)),
            None => {
                firsts.insert((h, norm), row.number);
            }
        }
    }
    dup_of.sort_unstable();
    Ok(KnownDuplicates { dup_of })
}

fn write_run(buf: &mut Vec<(u64, u64)>) -> io::Result<File> {
    buf.sort_unstable();
    let mut w = BufWriter::with_capacity(64 * 1024, tempfile::tempfile()?);
    for &(h, r) in buf.iter() {
        w.write_all(&h.to_le_bytes())?;
        w.write_all(&r.to_le_bytes())?;
    }
    buf.clear();
    let mut f = w.into_inner().map_err(io::IntoInnerError::into_error)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
}

fn read_pair(r: &mut impl Read) -> io::Result<Option<(u64, u64)>> {
    let mut b = [0u8; 16];
    match r.read_exact(&mut b) {
        Ok(()) => {
            let (h, row) = b.split_at(8);
            let h = u64::from_le_bytes(h.try_into().expect("8 bytes"));
            let row = u64::from_le_bytes(row.try_into().expect("8 bytes"));
            Ok(Some((h, row)))
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// K-way merge of sorted runs, pairs in ascending order.
fn merge_runs(runs: Vec<File>, on_pair: &mut impl FnMut((u64, u64))) -> io::Result<()> {
    let mut readers: Vec<BufReader<File>> = runs
        .into_iter()
        .map(|f| BufReader::with_capacity(64 * 1024, f))
        .collect();
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some(p) = read_pair(r)? {
            heap.push(Reverse((p, i)));
        }
    }
    while let Some(Reverse((p, i))) = heap.pop() {
        on_pair(p);
        if let Some(next) = read_pair(&mut readers[i])? {
            heap.push(Reverse((next, i)));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "extdedup_tests.rs"]
mod tests;
