//! The per-recipient report, the in-flight journal, and resuming an interrupted run.
//!
//! # Report
//!
//! One row per list row, columns in this order:
//! `row,email,status,smtp_code,enhanced_code,response,stage,attempts,message_id,finished_at`.
//! `finished_at` is RFC 3339 in UTC with milliseconds (`2026-11-25T20:14:18.123Z`);
//! `smtp_code`, `enhanced_code` and `stage` are empty in CSV and `null` in JSON when absent.
//!
//! [`ReportWriter::write`] writes and flushes each row with one `write` call, so a run that is
//! killed leaves a report that holds every finished row (a valid prefix):
//!
//! * `csv`: a header row, then one record per row (a multi-line SMTP response is quoted).
//! * `jsonl`: one JSON object per line.
//! * `json`: `[` on the first line, then one object per line separated by `,`, and `]` written by
//!   [`ReportWriter::finish`]. A killed run therefore leaves an *unterminated* array (append a
//!   line with `]` to make it valid JSON); [`ResumeState::load`] reads it as it is. Rows are
//!   never rewritten, so nothing is lost if the process dies at any point.
//!
//! # Journal (crash safety)
//!
//! [`Journal`] appends `{"row":N,"email":"…"}` lines to `<report>.journal` for every message
//! *before* it is sent, with one `write` call per batch and no `fsync`: it survives `kill -9`
//! of pipemail, not a power loss or kernel crash. A complete run removes it
//! ([`Journal::finish`]). A report on standard output (`-`) has no journal.
//!
//! # Resume
//!
//! [`ResumeState::load`] reads an earlier report (any of the three formats, detected from the
//! content; a truncated last record and an unterminated JSON array are accepted) and its
//! journal. An address whose earlier status is `sent` is done ([`PreviousOutcome::Sent`]). An
//! address that was in flight when the run stopped (in the journal with no row in the report) or
//! whose status is `unknown` may or may not have been delivered ([`PreviousOutcome::Unknown`]).
//! Everything else (failed, deferred, skipped, never reached) is not remembered: it is sent again.
//! Addresses are compared case-insensitively (see [`crate::input::address_key`]).
//!
//! To stay small for big lists, `load` copies the `sent` and `unknown` rows into a carry file,
//! `<report>.resume` (JSON lines), and keeps in memory only a sorted array of 64-bit address
//! keys and file offsets (16 bytes per remembered address); [`ResumeState::lookup`] reads the
//! row back from the carry file. Because the carry file holds everything the earlier run(s)
//! achieved, the resumed run may overwrite `<report>` and its journal; `load` removes the old
//! journal itself once the carry file is safely written. If the resumed run is killed too, the
//! next `load` merges the carry file, the new partial report and the new journal. Call
//! [`ResumeState::finish`] after the resumed run completes to remove the carry file.
//!
//! The CLI's order of calls on `--resume`: [`ResumeState::load`], then [`ReportWriter::create`],
//! then [`Journal::create`]; at the end [`ReportWriter::finish`], [`Journal::finish`],
//! [`ResumeState::finish`].

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::input::{address_key, bucket_index};

/// The outcome of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The server accepted the message for this recipient.
    Sent,
    /// Permanently refused (5xx), or the row could not be sent (bad input, render error).
    Failed,
    /// Temporarily refused (4xx) and not retried further.
    Deferred,
    /// Not attempted (e.g. a duplicate address, or already sent in an earlier run).
    Skipped,
    /// The outcome is not known (e.g. the connection died after the message was sent but
    /// before the server's reply).
    Unknown,
}

/// The step at which a recipient's message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading the list or rendering the message.
    Input,
    /// Connecting, or the greeting / EHLO.
    Connect,
    /// STARTTLS or the TLS handshake.
    Tls,
    /// SMTP authentication.
    Auth,
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`.
    Rcpt,
    /// `DATA` (or the start of `BDAT`).
    Data,
    /// The message content and its final reply.
    Body,
}

impl From<crate::engine::Stage> for Stage {
    /// Where the engine decided an outcome; the report adds `input` for rows never sent.
    fn from(s: crate::engine::Stage) -> Self {
        use crate::engine::Stage as E;
        match s {
            E::Connect => Self::Connect,
            E::Tls => Self::Tls,
            E::Auth => Self::Auth,
            E::Mail => Self::Mail,
            E::Rcpt => Self::Rcpt,
            E::Data => Self::Data,
            E::Body => Self::Body,
        }
    }
}

macro_rules! snake_enum {
    ($ty:ident, $what:literal, $($variant:ident => $text:literal),+ $(,)?) => {
        impl $ty {
            /// The name used in reports (snake_case).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.trim() {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?}; expected one of: {}"),
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

snake_enum!(Status, "status",
    Sent => "sent", Failed => "failed", Deferred => "deferred", Skipped => "skipped",
    Unknown => "unknown");
snake_enum!(Stage, "stage",
    Input => "input", Connect => "connect", Tls => "tls", Auth => "auth", Mail => "mail",
    Rcpt => "rcpt", Data => "data", Body => "body");

/// The report columns, in order.
pub const COLUMNS: [&str; 10] = [
    "row",
    "email",
    "status",
    "smtp_code",
    "enhanced_code",
    "response",
    "stage",
    "attempts",
    "message_id",
    "finished_at",
];

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The 1-based data row of the list.
    pub row: u64,
    /// The recipient address.
    pub email: String,
    /// The outcome.
    pub status: Status,
    /// The SMTP reply code of the deciding reply, if any.
    pub smtp_code: Option<u16>,
    /// The enhanced status code (RFC 3463) of the deciding reply, e.g. `5.1.1`.
    pub enhanced_code: Option<String>,
    /// The deciding reply's text, or pipemail's explanation.
    pub response: String,
    /// Where it failed, for rows that did not succeed.
    pub stage: Option<Stage>,
    /// Number of delivery attempts.
    pub attempts: u32,
    /// The message's Message-ID, without angle brackets (empty if none was rendered).
    pub message_id: String,
    /// When the outcome was decided.
    #[serde(with = "timestamp")]
    pub finished_at: OffsetDateTime,
}

/// RFC 3339 timestamps in UTC with milliseconds; any RFC 3339 offset is accepted when reading.
mod timestamp {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;

    pub(super) fn format(t: &OffsetDateTime) -> String {
        let fmt = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        t.to_offset(time::UtcOffset::UTC)
            .format(&fmt)
            .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
    }

    pub(super) fn parse(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
        OffsetDateTime::parse(s.trim(), &Rfc3339).map(|t| t.to_offset(time::UtcOffset::UTC))
    }

    pub(super) fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

impl ReportRow {
    /// The row as CSV fields, in [`COLUMNS`] order.
    fn csv_fields(&self) -> [String; 10] {
        [
            self.row.to_string(),
            self.email.clone(),
            self.status.to_string(),
            self.smtp_code.map(|c| c.to_string()).unwrap_or_default(),
            self.enhanced_code.clone().unwrap_or_default(),
            self.response.clone(),
            self.stage.map(|s| s.to_string()).unwrap_or_default(),
            self.attempts.to_string(),
            self.message_id.clone(),
            timestamp::format(&self.finished_at),
        ]
    }

    /// Parses a CSV record; `cols[i]` is the record index of [`COLUMNS`]`[i]`.
    fn from_csv(rec: &csv::StringRecord, cols: &[usize; 10]) -> Result<Self, String> {
        let get = |i: usize| {
            rec.get(cols[i])
                .ok_or_else(|| format!("missing {}", COLUMNS[i]))
        };
        let opt = |i: usize| -> Result<Option<String>, String> {
            let v = get(i)?;
            Ok((!v.is_empty()).then(|| v.to_owned()))
        };
        let num_err = |i: usize| move |e: std::num::ParseIntError| format!("{}: {e}", COLUMNS[i]);
        Ok(Self {
            row: get(0)?.trim().parse().map_err(num_err(0))?,
            email: get(1)?.to_owned(),
            status: get(2)?.parse()?,
            smtp_code: opt(3)?
                .map(|v| v.trim().parse())
                .transpose()
                .map_err(num_err(3))?,
            enhanced_code: opt(4)?,
            response: get(5)?.to_owned(),
            stage: opt(6)?.map(|v| v.parse()).transpose()?,
            attempts: get(7)?.trim().parse().map_err(num_err(7))?,
            message_id: get(8)?.to_owned(),
            finished_at: timestamp::parse(get(9)?).map_err(|e| format!("finished_at: {e}"))?,
        })
    }
}

/// The report's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// Comma-separated values with a header row.
    #[default]
    Csv,
    /// A JSON array of objects, one per line.
    Json,
    /// JSON lines: one object per line.
    Jsonl,
}

impl Format {
    /// The format for a report path, by extension: `.json` → JSON, `.jsonl` / `.ndjson` →
    /// JSON lines, anything else (and `-`) → CSV.
    pub fn from_path(path: impl AsRef<Path>) -> Self {
        let ext = path
            .as_ref()
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("json") => Self::Json,
            Some("jsonl" | "ndjson") => Self::Jsonl,
            _ => Self::Csv,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Jsonl => "jsonl",
        })
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            "jsonl" | "ndjson" => Ok(Self::Jsonl),
            other => Err(format!(
                "unknown report format {other:?}; expected csv, json or jsonl"
            )),
        }
    }
}

/// Writes the report, one flushed row at a time.
pub struct ReportWriter {
    out: Box<dyn Write + Send>,
    format: Format,
    buf: Vec<u8>,
    rows: u64,
}

impl fmt::Debug for ReportWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportWriter")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl ReportWriter {
    /// Creates (truncates) the report at `path` (`-` = standard output) and writes its start
    /// (the CSV header row, or `[` for JSON).
    pub fn create(path: &str, format: Format) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(File::create(path)?)
        };
        Self::from_writer(out, format)
    }

    /// Writes a report to any writer (used for tests and custom sinks).
    pub fn from_writer(out: Box<dyn Write + Send>, format: Format) -> io::Result<Self> {
        let mut w = Self {
            out,
            format,
            buf: Vec::with_capacity(512),
            rows: 0,
        };
        match format {
            Format::Csv => {
                let mut csv = csv::Writer::from_writer(&mut w.buf);
                csv.write_record(COLUMNS)?;
                csv.flush()?;
            }
            Format::Json => w.buf.extend_from_slice(b"[\n"),
            Format::Jsonl => {}
        }
        w.flush_buf()?;
        Ok(w)
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        self.out.flush()
    }

    /// Appends one row and flushes it to the file (one `write` call; no `fsync`).
    pub fn write(&mut self, row: &ReportRow) -> io::Result<()> {
        self.buf.clear();
        match self.format {
            Format::Csv => {
                let mut csv = csv::Writer::from_writer(&mut self.buf);
                csv.write_record(row.csv_fields())?;
                csv.flush()?;
            }
            Format::Json => {
                if self.rows > 0 {
                    self.buf.extend_from_slice(b",\n");
                }
                serde_json::to_writer(&mut self.buf, row)?;
            }
            Format::Jsonl => {
                serde_json::to_writer(&mut self.buf, row)?;
                self.buf.push(b'\n');
            }
        }
        self.rows += 1;
        self.flush_buf()
    }

    /// Number of rows written.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Ends the report (closes the JSON array) and flushes it.
    pub fn finish(mut self) -> io::Result<()> {
        self.buf.clear();
        if self.format == Format::Json {
            if self.rows > 0 {
                self.buf.push(b'\n');
            }
            self.buf.extend_from_slice(b"]\n");
        }
        self.flush_buf()
    }
}

/// `<report>.journal`, or `None` for a report on standard output.
pub fn journal_path(report_path: &str) -> Option<PathBuf> {
    (report_path != "-").then(|| PathBuf::from(format!("{report_path}.journal")))
}

/// `<report>.resume`: the carry file of [`ResumeState`].
pub fn carry_path(report_path: &str) -> PathBuf {
    PathBuf::from(format!("{report_path}.resume"))
}

#[derive(Serialize, Deserialize)]
struct JournalLine<'a> {
    row: u64,
    #[serde(borrow)]
    email: std::borrow::Cow<'a, str>,
}

/// Records the rows whose messages are about to be sent, so that a killed run can tell which
/// rows were in flight.
#[derive(Debug)]
pub struct Journal {
    file: Option<File>,
    path: Option<PathBuf>,
    buf: Vec<u8>,
}

impl Journal {
    /// Creates (truncates) `<report>.journal`. For `-` (report on standard output) the journal
    /// is disabled: every call succeeds and does nothing.
    pub fn create(report_path: &str) -> io::Result<Self> {
        let path = journal_path(report_path);
        let file = match &path {
            Some(p) => Some(File::create(p)?),
            None => None,
        };
        Ok(Self {
            file,
            path,
            buf: Vec::new(),
        })
    }

    /// The journal's path (`None` when disabled).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Appends `(row, email)` lines for messages about to be sent, in one `write` call.
    pub fn record_in_flight(&mut self, rows: &[(u64, &str)]) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        self.buf.clear();
        for &(row, email) in rows {
            serde_json::to_writer(
                &mut self.buf,
                &JournalLine {
                    row,
                    email: email.into(),
                },
            )?;
            self.buf.push(b'\n');
        }
        file.write_all(&self.buf)?;
        file.flush()
    }

    /// Removes the journal after a complete run (the report then has a row for every row).
    pub fn finish(self) -> io::Result<()> {
        drop(self.file);
        match self.path {
            Some(p) => remove_if_exists(&p),
            None => Ok(()),
        }
    }
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

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
    carry: Mutex<BufReader<File>>,
    /// Sorted by key; the value is `offset << 1 | sent`.
    entries: Vec<(u64, u64)>,
    index: Vec<u32>,
    sent: u64,
    unknown: u64,
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
            let mut cols = [0usize; 10];
            for (i, col) in COLUMNS.iter().enumerate() {
                cols[i] = headers
                    .iter()
                    .position(|h| h.trim() == *col)
                    .ok_or_else(|| ReportError::Parse {
                        path: name.clone(),
                        line: 1,
                        message: format!("the header row has no {col:?} column"),
                    })?;
            }
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
        let tmp = PathBuf::from(format!("{report_path}.resume.tmp"));
        let io_at = |p: &Path| {
            let path = p.display().to_string();
            move |error| ReportError::Io { path, error }
        };
        let mut out = BufWriter::new(File::create(&tmp).map_err(io_at(&tmp))?);
        let mut count = 0u64;
        let mut line = Vec::with_capacity(512);
        let mut keep = |row: &ReportRow, out: &mut BufWriter<File>| -> io::Result<()> {
            if matches!(row.status, Status::Sent | Status::Unknown) {
                line.clear();
                serde_json::to_writer(&mut line, row)?;
                line.push(b'\n');
                out.write_all(&line)?;
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
        let file = out.into_inner().map_err(|e| io_at(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_at(&tmp))?;
        drop(file);
        fs::rename(&tmp, &carry).map_err(io_at(&carry))?;
        if journal.exists() {
            remove_if_exists(&journal).map_err(io_at(&journal))?;
        }

        // Index the carry file: (address key, offset << 1 | sent).
        let capacity = usize::try_from(count).unwrap_or(usize::MAX);
        let mut entries: Vec<(u64, u64)> = Vec::with_capacity(capacity);
        let mut reader = BufReader::new(File::open(&carry).map_err(io_at(&carry))?);
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
        let carry_file = File::open(&carry).map_err(io_at(&carry))?;
        Ok(Self {
            carry_path: carry,
            carry: Mutex::new(BufReader::new(carry_file)),
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
        reader
            .seek(SeekFrom::Start(offset))
            .map_err(|e| e.to_string())?;
        let mut line = Vec::new();
        reader
            .by_ref()
            .take(1 << 20)
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&line).map_err(|e| e.to_string())
    }

    /// Removes the carry file after the resumed run completed.
    pub fn finish(self) -> io::Result<()> {
        drop(self.carry);
        remove_if_exists(&self.carry_path)
    }
}

/// Opens `path` for appending, creating it (used by tests to simulate a killed run).
#[cfg(test)]
fn append(path: &Path) -> File {
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("open for append")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn sample(row: u64, email: &str, status: Status) -> ReportRow {
        ReportRow {
            row,
            email: email.to_owned(),
            status,
            smtp_code: (status != Status::Unknown).then_some(if status == Status::Sent {
                250
            } else {
                550
            }),
            enhanced_code: (status == Status::Failed).then(|| "5.1.1".to_owned()),
            response: if status == Status::Failed {
                "550-5.1.1 no such user\n550 5.1.1 \"really\", sorry".to_owned()
            } else {
                "250 2.0.0 Ok: queued".to_owned()
            },
            stage: (status == Status::Failed).then_some(Stage::Rcpt),
            attempts: 1,
            message_id: format!("{row}.1.2@example.org"),
            finished_at: datetime!(2026-11-25 20:14:18.123 UTC),
        }
    }

    fn rows() -> Vec<ReportRow> {
        vec![
            sample(1, "a@example.com", Status::Sent),
            sample(2, "b@example.com", Status::Failed),
            sample(3, "C@Example.com", Status::Unknown),
            sample(4, "d@example.com", Status::Deferred),
            sample(5, "e@example.com", Status::Sent),
            sample(6, "a@EXAMPLE.com", Status::Skipped),
        ]
    }

    fn write_report(path: &Path, format: Format, rows: &[ReportRow], finish: bool) {
        let p = path.to_str().expect("utf-8 path");
        let mut w = ReportWriter::create(p, format).expect("create");
        for r in rows {
            w.write(r).expect("write");
        }
        if finish {
            w.finish().expect("finish");
        }
    }

    #[test]
    fn shareable_between_threads() {
        fn send<T: Send>() {}
        fn sync<T: Send + Sync>() {}
        send::<ReportWriter>();
        send::<Journal>();
        sync::<ResumeState>();
        sync::<ReportError>();
    }

    #[test]
    fn enums_round_trip() {
        for s in [
            Status::Sent,
            Status::Failed,
            Status::Deferred,
            Status::Skipped,
            Status::Unknown,
        ] {
            assert_eq!(s.to_string().parse::<Status>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).expect("json"), format!("\"{s}\""));
        }
        assert_eq!("rcpt".parse::<Stage>(), Ok(Stage::Rcpt));
        assert_eq!(Stage::Tls.to_string(), "tls");
        assert!("nope".parse::<Stage>().is_err());
        assert_eq!(Format::from_path("r.JSON"), Format::Json);
        assert_eq!(Format::from_path("r.jsonl"), Format::Jsonl);
        assert_eq!(Format::from_path("r.ndjson"), Format::Jsonl);
        assert_eq!(Format::from_path("report"), Format::Csv);
        assert_eq!(Format::from_path("-"), Format::Csv);
        assert_eq!("JSONL".parse::<Format>(), Ok(Format::Jsonl));
    }

    #[test]
    fn csv_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.csv");
        write_report(&path, Format::Csv, &rows()[..2], true);
        let text = fs::read_to_string(&path).expect("read");
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "row,email,status,smtp_code,enhanced_code,response,stage,attempts,message_id,finished_at"
            )
        );
        assert_eq!(
            lines.next(),
            Some(
                "1,a@example.com,sent,250,,250 2.0.0 Ok: queued,,1,1.1.2@example.org,2026-11-25T20:14:18.123Z"
            )
        );
        assert_eq!(
            lines.next(),
            Some("2,b@example.com,failed,550,5.1.1,\"550-5.1.1 no such user")
        );
    }

    #[test]
    fn json_layout_and_nulls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        write_report(&path, Format::Json, &rows()[..3], true);
        let text = fs::read_to_string(&path).expect("read");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let arr = v.as_array().expect("array");
        assert_eq!(arr.len(), 3);
        assert_eq!(arr[0]["stage"], serde_json::Value::Null);
        assert_eq!(arr[0]["enhanced_code"], serde_json::Value::Null);
        assert_eq!(arr[2]["smtp_code"], serde_json::Value::Null);
        assert_eq!(arr[1]["stage"], "rcpt");
        assert_eq!(arr[0]["finished_at"], "2026-11-25T20:14:18.123Z");
        let keys: Vec<&String> = arr[0].as_object().expect("object").keys().collect();
        let mut sorted = COLUMNS.to_vec();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "every column present");
        // Empty report is valid too.
        write_report(&path, Format::Json, &[], true);
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(v, serde_json::json!([]));
        // Unterminated when not finished: one object per line.
        write_report(&path, Format::Json, &rows()[..2], false);
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("[\n{") && text.ends_with('}'), "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(&format!("{text}\n]")).is_ok());
    }

    fn check_outcomes(state: &ResumeState) {
        let all = rows();
        assert_eq!(state.sent(), 2);
        assert_eq!(state.unknown(), 1);
        assert_eq!(
            state.lookup("A@example.com"),
            Some(PreviousOutcome::Sent(all[0].clone())),
            "sent wins over the later skipped duplicate"
        );
        assert_eq!(
            state.lookup("c@example.com"),
            Some(PreviousOutcome::Unknown(all[2].clone()))
        );
        assert_eq!(
            state.lookup("b@example.com"),
            None,
            "failed rows are retried"
        );
        assert_eq!(
            state.lookup("d@example.com"),
            None,
            "deferred rows are retried"
        );
        assert_eq!(
            state.lookup("e@example.com"),
            Some(PreviousOutcome::Sent(all[4].clone()))
        );
        assert_eq!(state.lookup("new@example.com"), None);
    }

    #[test]
    fn round_trip_every_format() {
        for (name, format) in [
            ("r.csv", Format::Csv),
            ("r.json", Format::Json),
            ("r.jsonl", Format::Jsonl),
        ] {
            for finish in [true, false] {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join(name);
                write_report(&path, format, &rows(), finish);
                let p = path.to_str().expect("utf-8");
                let state = ResumeState::load(p).expect("load");
                check_outcomes(&state);
                assert!(state.carry_path().exists());
                state.finish().expect("finish");
                assert!(!carry_path(p).exists());
            }
        }
    }

    #[test]
    fn truncated_last_record_is_ignored() {
        for (name, format) in [
            ("r.csv", Format::Csv),
            ("r.json", Format::Json),
            ("r.jsonl", Format::Jsonl),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(name);
            let mut all = rows();
            all.push(sample(7, "f@example.com", Status::Sent));
            write_report(&path, format, &all, false);
            // Cut the last row short, in the middle of its response text.
            let text = fs::read(&path).expect("read");
            let cut = text.len() - 60;
            fs::write(&path, &text[..cut]).expect("truncate");
            let state = ResumeState::load(path.to_str().expect("utf-8")).expect("load");
            check_outcomes(&state);
            assert_eq!(state.lookup("f@example.com"), None, "{name}");
        }
    }

    #[test]
    fn truncated_inside_quoted_csv_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.csv");
        let mut all = rows();
        all.push(sample(7, "f@example.com", Status::Failed));
        write_report(&path, Format::Csv, &all, false);
        let text = fs::read_to_string(&path).expect("read");
        let cut = text.rfind("no such user").expect("multi-line response");
        fs::write(&path, &text[..cut]).expect("truncate");
        let state = ResumeState::load(path.to_str().expect("utf-8")).expect("load");
        check_outcomes(&state);
    }

    #[test]
    fn malformed_middle_row_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.jsonl");
        write_report(&path, Format::Jsonl, &rows()[..1], true);
        let mut f = append(&path);
        f.write_all(b"{\"row\": oops}\n").expect("append");
        drop(f);
        write_report(
            &dir.path().join("x.jsonl"),
            Format::Jsonl,
            &rows()[..1],
            true,
        );
        let good = fs::read(dir.path().join("x.jsonl")).expect("read");
        append(&path).write_all(&good).expect("append");
        let err = ResumeState::load(path.to_str().expect("utf-8")).expect_err("bad row");
        assert!(matches!(err, ReportError::Parse { line: 2, .. }), "{err:?}");
        let missing = dir.path().join("none.csv");
        assert!(matches!(
            ResumeState::load(missing.to_str().expect("utf-8")),
            Err(ReportError::NotFound { .. })
        ));
        assert!(matches!(ResumeState::load("-"), Err(ReportError::Stdout)));
    }

    #[test]
    fn journal_rows_without_report_rows_are_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.csv");
        let p = path.to_str().expect("utf-8").to_owned();
        let mut w = ReportWriter::create(&p, Format::Csv).expect("create");
        let mut j = Journal::create(&p).expect("journal");
        assert_eq!(j.path(), Some(Path::new(&format!("{p}.journal"))));
        j.record_in_flight(&[(1, "a@example.com"), (2, "b@example.com")])
            .expect("record");
        w.write(&sample(1, "a@example.com", Status::Sent))
            .expect("write");
        w.write(&sample(2, "b@example.com", Status::Failed))
            .expect("write");
        j.record_in_flight(&[(3, "x@example.com"), (4, "y@example.com")])
            .expect("record");
        w.write(&sample(3, "x@example.com", Status::Deferred))
            .expect("write");
        // Killed here: row 4 was in flight. Simulate a torn last journal line too.
        append(Path::new(&format!("{p}.journal")))
            .write_all(b"{\"row\":5,\"em")
            .expect("append");
        drop(w);
        drop(j);
        let state = ResumeState::load(&p).expect("load");
        assert!(
            !Path::new(&format!("{p}.journal")).exists(),
            "journal taken over"
        );
        assert!(matches!(
            state.lookup("a@example.com"),
            Some(PreviousOutcome::Sent(_))
        ));
        assert_eq!(state.lookup("b@example.com"), None);
        assert_eq!(state.lookup("x@example.com"), None, "has a final row");
        match state.lookup("Y@example.com") {
            Some(PreviousOutcome::Unknown(r)) => {
                assert_eq!((r.row, r.email.as_str()), (4, "y@example.com"));
                assert_eq!(r.status, Status::Unknown);
                assert_eq!(r.response, IN_FLIGHT_RESPONSE);
            }
            other => panic!("{other:?}"),
        }

        // The resumed run overwrites the report and is killed again: nothing is forgotten.
        drop(state);
        let mut w = ReportWriter::create(&p, Format::Csv).expect("create");
        let mut j = Journal::create(&p).expect("journal");
        j.record_in_flight(&[(2, "b@example.com")]).expect("record");
        drop(w.write(&sample(1, "a@example.com", Status::Sent)));
        drop(w);
        drop(j);
        let state = ResumeState::load(&p).expect("load again");
        assert!(matches!(
            state.lookup("a@example.com"),
            Some(PreviousOutcome::Sent(_))
        ));
        assert!(matches!(
            state.lookup("y@example.com"),
            Some(PreviousOutcome::Unknown(_))
        ));
        assert!(matches!(
            state.lookup("b@example.com"),
            Some(PreviousOutcome::Unknown(_))
        ));
        assert_eq!(state.sent(), 1);
        assert_eq!(state.unknown(), 2);
        state.finish().expect("finish");

        // A complete run removes its journal.
        let j = Journal::create(&p).expect("journal");
        j.finish().expect("finish");
        assert!(!Path::new(&format!("{p}.journal")).exists());
        let mut j = Journal::create("-").expect("no journal for stdout");
        assert_eq!(j.path(), None);
        j.record_in_flight(&[(1, "a@example.com")]).expect("no-op");
    }
}
