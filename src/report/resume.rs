//! `--resume`: reads an earlier report and its journal; remembers what was sent.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::journal::{JournalLine, carry_path, journal_path, remove_if_exists};
use crate::fsutil::{AtomicFile, FsError};
use time::OffsetDateTime;

use super::{ReportRow, Status};
use crate::input::{address_key, bucket_index};

/// An error while loading an earlier report for `--resume`.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        error: io::Error,
    },
    /// A record of the earlier report (other than a truncated last one) is malformed.
    #[error("{path}:{line}: not a pipemail report row: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The line (for CSV: the record's line).
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// There is no earlier report (nor carry file) at that path.
    #[error("{path}: no earlier report to resume from")]
    NotFound {
        /// The report path.
        path: String,
    },
    /// The report was written to standard output.
    #[error("cannot resume from a report written to standard output (-)")]
    Stdout,
    /// The carry file could not be created safely (a symlink planted at its path, say).
    #[error("cannot write the resume carry file: {0}")]
    Create(#[source] FsError),
}

/// What an earlier run did for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreviousOutcome {
    /// Already sent: copy the row into the new report (with the current row number) and do not
    /// send again.
    Sent(ReportRow),
    /// In flight or unknown when the earlier run stopped: it may have been delivered.
    Unknown(ReportRow),
}

/// What earlier runs achieved; see the module documentation.
#[derive(Debug)]
pub struct ResumeState {
    carry_path: PathBuf,
    carry: Mutex<Carry>,
    /// Loaded by [`ResumeState::peek`]: nothing on disk belongs to this state.
    read_only: bool,
    /// Sorted by key; the value is `offset << 1 | sent`.
    entries: Vec<(u64, u64)>,
    index: Vec<u32>,
    sent: u64,
    unknown: u64,
}

/// Where the carried rows are read back from: the carry file, or (for
/// [`ResumeState::peek`]) memory.
#[derive(Debug)]
enum Carry {
    File(BufReader<File>),
    Memory(io::Cursor<Vec<u8>>),
}

impl Carry {
    fn seek_read_line(&mut self, offset: u64, line: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Self::File(r) => {
                r.seek(SeekFrom::Start(offset))?;
                Read::by_ref(r).take(1 << 20).read_until(b'\n', line)?;
            }
            Self::Memory(r) => {
                r.seek(SeekFrom::Start(offset))?;
                Read::by_ref(r).take(1 << 20).read_until(b'\n', line)?;
            }
        }
        Ok(())
    }
}

/// Fixed-size bitset of row numbers, growing on demand (row numbers past 2³² are ignored).
#[derive(Debug, Default)]
struct RowSet(Vec<u64>);

impl RowSet {
    fn insert(&mut self, row: u64) {
        if row > u64::from(u32::MAX) {
            return;
        }
        let (w, b) = ((row / 64) as usize, row % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }

    fn contains(&self, row: u64) -> bool {
        let (w, b) = ((row / 64) as usize, row % 64);
        self.0.get(w).is_some_and(|x| x & (1 << b) != 0)
    }
}

/// Reads rows from an earlier report or carry file, whatever its format; calls `f` for each.
/// A malformed last record is taken as cut short by a kill and ignored.
fn read_report(
    path: &Path,
    mut f: impl FnMut(ReportRow) -> io::Result<()>,
) -> Result<(), ReportError> {
    let name = path.display().to_string();
    let io_err = |error| ReportError::Io {
        path: name.clone(),
        error,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
    let first = loop {
        let buf = reader.fill_buf().map_err(io_err)?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break Some(buf[i]),
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    let mut pending: Option<ReportError> = None;
    match first {
        None => return Ok(()),
        Some(b'[' | b'{') => {
            let mut line = String::new();
            let mut lineno = 0u64;
            loop {
                line.clear();
                if reader.read_line(&mut line).map_err(io_err)? == 0 {
                    break;
                }
                lineno += 1;
                let t = line.trim();
                let t = t.strip_prefix('[').unwrap_or(t).trim_start();
                let t = t.strip_prefix(',').unwrap_or(t).trim_start();
                let t = t.strip_suffix(']').unwrap_or(t).trim_end();
                let t = t.strip_suffix(',').unwrap_or(t).trim_end();
                if t.is_empty() {
                    continue;
                }
                if let Some(e) = pending.take() {
                    return Err(e);
                }
                match serde_json::from_str::<ReportRow>(t) {
                    Ok(row) => f(row).map_err(io_err)?,
                    Err(e) => {
                        pending = Some(ReportError::Parse {
                            path: name.clone(),
                            line: lineno,
                            message: e.to_string(),
                        });
                    }
                }
            }
        }
        Some(_) => {
            let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
            let headers = csv
                .headers()
                .map_err(|e| ReportError::Parse {
                    path: name.clone(),
                    line: 1,
                    message: e.to_string(),
                })?
                .clone();
            let cols = ReportRow::csv_columns(&headers).map_err(|col| ReportError::Parse {
                path: name.clone(),
                line: 1,
                message: format!("the header row has no {col:?} column"),
            })?;
            let mut rec = csv::StringRecord::new();
            loop {
                let line = csv.position().line();
                let more = match csv.read_record(&mut rec) {
                    Ok(more) => more,
                    Err(e) => {
                        // Unterminated quote at the end of a cut-short file, or bad UTF-8.
                        if let Some(p) = pending.take() {
                            return Err(p);
                        }
                        pending = Some(ReportError::Parse {
                            path: name.clone(),
                            line,
                            message: e.to_string(),
                        });
                        continue;
                    }
                };
                if !more {
                    break;
                }
                if let Some(e) = pending.take() {
                    return Err(e);
                }
                match ReportRow::from_csv(&rec, &cols) {
                    Ok(row) => f(row).map_err(io_err)?,
                    Err(message) => {
                        pending = Some(ReportError::Parse {
                            path: name.clone(),
                            line: rec.position().map_or(line, |p| p.line()),
                            message,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// Reads a journal: calls `f(row, email)` for each line; tolerates a cut-short last line.
fn read_journal(path: &Path, mut f: impl FnMut(u64, &str)) -> Result<(), ReportError> {
    let name = path.display().to_string();
    let io_err = |error| ReportError::Io {
        path: name.clone(),
        error,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
    let mut line = String::new();
    let mut lineno = 0;
    let mut pending = None;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io_err)? == 0 {
            break;
        }
        lineno += 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(e) = pending.take() {
            return Err(e);
        }
        match serde_json::from_str::<JournalLine<'_>>(line.trim()) {
            Ok(j) => f(j.row, &j.email),
            Err(e) => {
                pending = Some(ReportError::Parse {
                    path: name.clone(),
                    line: lineno,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Response text of a row that was in flight when a run stopped.
pub const IN_FLIGHT_RESPONSE: &str =
    "in flight when the earlier run stopped; it may or may not have been delivered";

impl ResumeState {
    /// Loads what earlier runs achieved for the report at `report_path`: the carry file
    /// `<report>.resume` if a resumed run was interrupted before, the report itself, and
    /// `<report>.journal`. Writes a new carry file and removes the journal (see the module
    /// documentation). Must be called before the new run creates its report and journal.
    pub fn load(report_path: &str) -> Result<Self, ReportError> {
        Self::load_with(report_path, true)
    }

    /// Like [`ResumeState::load`], but read-only (for `--dry-run`): the carried rows are kept
    /// in memory, no carry file is written and the journal is left where it is.
    pub fn peek(report_path: &str) -> Result<Self, ReportError> {
        Self::load_with(report_path, false)
    }

    fn load_with(report_path: &str, write: bool) -> Result<Self, ReportError> {
        if report_path == "-" {
            return Err(ReportError::Stdout);
        }
        let report = PathBuf::from(report_path);
        let carry = carry_path(report_path);
        let journal = journal_path(report_path).unwrap_or_default();
        if !report.exists() && !carry.exists() {
            return Err(ReportError::NotFound {
                path: report_path.to_owned(),
            });
        }
        let io_at = |p: &Path| {
            let path = p.display().to_string();
            move |error| ReportError::Io { path, error }
        };
        // The new carry file is written beside the old one under a temporary name (mode
        // 0600, never through a symlink) and renamed into place once complete; a dry run
        // (`write == false`) keeps the carried rows in memory and writes nothing.
        let atomic = if write {
            Some(AtomicFile::create(&carry).map_err(ReportError::Create)?)
        } else {
            None
        };
        let tmp = atomic
            .as_ref()
            .map_or_else(|| carry.clone(), |a| a.temp_path().to_owned());
        let mut out = atomic.map(BufWriter::new);
        let mut memory: Vec<u8> = Vec::new();
        let mut count = 0u64;
        let mut line = Vec::with_capacity(512);
        let mut keep =
            |row: &ReportRow, out: &mut Option<BufWriter<AtomicFile>>| -> io::Result<()> {
                if matches!(row.status, Status::Sent | Status::Unknown) {
                    line.clear();
                    serde_json::to_writer(&mut line, row)?;
                    line.push(b'\n');
                    match out {
                        Some(out) => out.write_all(&line)?,
                        None => memory.extend_from_slice(&line),
                    }
                    count += 1;
                }
                Ok(())
            };
        if carry.exists() {
            read_report(&carry, |row| keep(&row, &mut out))?;
        }
        let mut in_report = RowSet::default();
        if report.exists() {
            read_report(&report, |row| {
                in_report.insert(row.row);
                keep(&row, &mut out)
            })?;
        }
        if journal.exists() {
            let now = OffsetDateTime::now_utc();
            let mut result = Ok(());
            read_journal(&journal, |row, email| {
                if result.is_ok() && !in_report.contains(row) {
                    let r = ReportRow {
                        row,
                        email: email.to_owned(),
                        status: Status::Unknown,
                        smtp_code: None,
                        enhanced_code: None,
                        response: IN_FLIGHT_RESPONSE.to_owned(),
                        stage: None,
                        attempts: 1,
                        message_id: String::new(),
                        finished_at: now,
                    };
                    result = keep(&r, &mut out);
                }
            })?;
            result.map_err(io_at(&tmp))?;
        }
        drop(in_report);
        if let Some(out) = out {
            let atomic = out.into_inner().map_err(|e| io_at(&tmp)(e.into_error()))?;
            atomic.commit().map_err(ReportError::Create)?;
            if journal.exists() {
                remove_if_exists(&journal).map_err(io_at(&journal))?;
            }
        }

        // Index the carry file: (address key, offset << 1 | sent).
        let capacity = usize::try_from(count).unwrap_or(usize::MAX);
        let mut entries: Vec<(u64, u64)> = Vec::with_capacity(capacity);
        let mut reader: Box<dyn BufRead> = if write {
            Box::new(BufReader::new(File::open(&carry).map_err(io_at(&carry))?))
        } else {
            Box::new(io::Cursor::new(memory.as_slice()))
        };
        let mut text = String::new();
        let mut offset = 0u64;
        loop {
            text.clear();
            let n = reader.read_line(&mut text).map_err(io_at(&carry))?;
            if n == 0 {
                break;
            }
            if let Ok(row) = serde_json::from_str::<ReportRow>(text.trim()) {
                let sent = u64::from(row.status == Status::Sent);
                entries.push((address_key(&row.email), offset << 1 | sent));
            }
            offset += n as u64;
        }
        // Per address: prefer `sent`, then the earliest row.
        entries.sort_unstable_by_key(|&(k, v)| (k, v & 1 == 0, v >> 1));
        entries.dedup_by_key(|e| e.0);
        entries.shrink_to_fit();
        let sent = entries.iter().filter(|e| e.1 & 1 == 1).count() as u64;
        let unknown = entries.len() as u64 - sent;
        let index = bucket_index(entries.iter().map(|e| e.0));
        drop(reader);
        let backing = if write {
            Carry::File(BufReader::new(File::open(&carry).map_err(io_at(&carry))?))
        } else {
            Carry::Memory(io::Cursor::new(memory))
        };
        Ok(Self {
            carry_path: carry,
            carry: Mutex::new(backing),
            read_only: !write,
            entries,
            index,
            sent,
            unknown,
        })
    }

    /// Number of distinct addresses already sent.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Number of distinct addresses whose outcome is unknown (and not sent).
    pub fn unknown(&self) -> u64 {
        self.unknown
    }

    /// The carry file's path.
    pub fn carry_path(&self) -> &Path {
        &self.carry_path
    }

    /// What earlier runs did for `email` (compared case-insensitively): `None` if it was not
    /// sent and its outcome is known (failed, deferred, skipped) or it was never reached.
    pub fn lookup(&self, email: &str) -> Option<PreviousOutcome> {
        let key = address_key(email);
        let bucket = (key >> 48) as usize;
        let (lo, hi) = (self.index[bucket] as usize, self.index[bucket + 1] as usize);
        let slice = &self.entries[lo..hi];
        let i = slice.binary_search_by_key(&key, |e| e.0).ok()?;
        let value = slice[i].1;
        let sent = value & 1 == 1;
        let row = self
            .read_row(value >> 1)
            .unwrap_or_else(|message| ReportRow {
                row: 0,
                email: email.to_owned(),
                status: if sent { Status::Sent } else { Status::Unknown },
                smtp_code: None,
                enhanced_code: None,
                response: format!("earlier outcome; its row could not be read back: {message}"),
                stage: None,
                attempts: 0,
                message_id: String::new(),
                finished_at: OffsetDateTime::now_utc(),
            });
        Some(if sent {
            PreviousOutcome::Sent(row)
        } else {
            PreviousOutcome::Unknown(row)
        })
    }

    fn read_row(&self, offset: u64) -> Result<ReportRow, String> {
        let mut reader = self
            .carry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut line = Vec::new();
        reader
            .seek_read_line(offset, &mut line)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&line).map_err(|e| e.to_string())
    }

    /// Removes the carry file after the resumed run completed.
    pub fn finish(self) -> io::Result<()> {
        drop(self.carry);
        if self.read_only {
            return Ok(());
        }
        remove_if_exists(&self.carry_path)
    }
}
