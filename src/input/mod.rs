//! Streaming reader for the recipient list (a CSV file with a header row).
//!
//! The list is read one record at a time into a single reused [`csv::ByteRecord`], so memory does
//! not grow with the number of rows. Two limits protect memory against hostile or broken input:
//!
//! * a single CSV record (the header row included) may be at most [`DEFAULT_MAX_RECORD`] bytes
//!   (configurable with [`ListReader::with_max_record`]); the underlying reader is wrapped in a
//!   byte-counting adapter that refuses to hand the CSV parser more than that limit (plus the
//!   parser's own buffer) for one record, so a 100 MB line is rejected after reading about
//!   1 MiB, never buffered whole;
//! * the header row may have at most [`MAX_COLUMNS`] columns.
//!
//! Problems that concern a single row (an invalid address, a row that is not UTF-8, a row with
//! more fields than the header) are *not* fatal: the row is returned with
//! [`Row::problem`] set, and the caller reports it as failed at stage `input`. Fatal problems
//! (I/O errors, an unreadable header, an oversized record) are [`InputError`]s that name the file
//! and, where it makes sense, the line.
//!
//! [`DuplicateFilter`] remembers the addresses seen so far in a compact form so that the caller
//! can skip repeated recipients.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::engine::check_address;

mod dedup;
mod extdedup;

pub(crate) use dedup::bucket_index;
pub use dedup::{DuplicateFilter, address_key};
pub use extdedup::{DedupError, KnownDuplicates, find_duplicates, scan_and_find_duplicates};

/// Default limit for the size of one CSV record, in bytes (1 MiB).
pub const DEFAULT_MAX_RECORD: u64 = 1024 * 1024;

/// Maximum number of columns in the header row.
pub const MAX_COLUMNS: usize = 1000;

/// Buffer size of the CSV parser; also the slack the byte-counting adapter allows beyond
/// the record limit (the parser reads ahead by at most this much).
const CSV_BUFFER: usize = 64 * 1024;

/// Text of [`Row::problem`] for a row whose bytes are not valid UTF-8.
pub const PROBLEM_NOT_UTF8: &str = "row is not valid UTF-8";

/// A fatal error while reading the recipient list. Every variant names the file (`file`).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or read.
    // The I/O error is the source, so it is not repeated here: `{:#}` (anyhow) prints
    // "list.csv: No such file or directory (os error 2)" once.
    #[error("{file}")]
    Io {
        /// The list's name as given by the caller (usually its path).
        file: String,
        /// The line being read when the error happened, if known.
        line: Option<u64>,
        /// The underlying error.
        #[source]
        error: io::Error,
    },
    /// The file has no header row at all.
    #[error(
        "{file}: the file is empty; expected a header row naming the columns, with an \"email\" column"
    )]
    Empty {
        /// The list's name.
        file: String,
    },
    /// The header row is not valid UTF-8.
    #[error("{file}:{line}: the header row is not valid UTF-8 (save the list as UTF-8)")]
    HeaderNotUtf8 {
        /// The list's name.
        file: String,
        /// The line of the header row.
        line: u64,
    },
    /// No column is named `email` (or `to`).
    #[error(
        "{file}:{line}: no address column: the header row needs a column named \"email\" (or \"to\"); columns found: {}",
        join_names(.headers)
    )]
    NoEmailColumn {
        /// The list's name.
        file: String,
        /// The line of the header row.
        line: u64,
        /// The header names that were found.
        headers: Vec<String>,
    },
    /// Two columns have the same name (after trimming), or more than one column is an address
    /// column (`email` in any letter case).
    #[error(
        "{file}:{line}: columns {first} and {second} are both named \"{name}\"; column names must be unique"
    )]
    DuplicateColumn {
        /// The list's name.
        file: String,
        /// The line of the header row.
        line: u64,
        /// The repeated name.
        name: String,
        /// 1-based index of the first column with that name.
        first: usize,
        /// 1-based index of the second column with that name.
        second: usize,
    },
    /// The header row has more than [`MAX_COLUMNS`] columns.
    #[error(
        "{file}:{line}: the header row has {count} columns; at most {max} are supported (is this the right file, with the right delimiter?)"
    )]
    TooManyColumns {
        /// The list's name.
        file: String,
        /// The line of the header row.
        line: u64,
        /// Number of columns found.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// One CSV record is larger than the configured limit.
    #[error(
        "{file}:{line}: a CSV record starting on this line is larger than {max} bytes (an unterminated quote, or not a CSV file?)"
    )]
    RecordTooLarge {
        /// The list's name.
        file: String,
        /// The line the record starts on.
        line: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// The CSV parser reported an error.
    #[error("{file}:{line}: {message}")]
    Csv {
        /// The list's name.
        file: String,
        /// The line of the error.
        line: u64,
        /// The parser's message.
        message: String,
    },
}

fn join_names(names: &[String]) -> String {
    if names.is_empty() {
        return "(none)".to_owned();
    }
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One data row of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based number of the data row (the header row is not counted; blank lines are skipped).
    pub number: u64,
    /// 1-based line in the file where the row starts.
    pub line: u64,
    /// The address from the address column, trimmed.
    pub email: String,
    /// One value per header column, untrimmed; missing trailing fields are empty strings.
    pub fields: Vec<String>,
    /// Why this row cannot be sent (`None` if it can). The caller reports such a row as failed
    /// at stage `input`.
    pub problem: Option<String>,
}

impl Row {
    /// The value of the column `name` (`headers` are the list's column names), `""` when the
    /// list has no such column or the row is short. The address column gives the trimmed
    /// address.
    pub fn column<'a>(&'a self, headers: &[String], name: &str) -> &'a str {
        headers
            .iter()
            .position(|h| h == name)
            .and_then(|i| self.fields.get(i))
            .map_or("", |v| {
                if v.trim() == self.email {
                    self.email.as_str()
                } else {
                    v.as_str()
                }
            })
    }
}

/// Size of the ring of recently read bytes kept by [`Counting`] (twice the parser's buffer, so a
/// byte the parser has just consumed is always still there).
const RECENT: usize = 2 * CSV_BUFFER;

/// Byte-counting adapter: refuses to read past `limit_at` bytes in total, so the CSV parser never
/// buffers more than one record's worth of data plus its own buffer. It also keeps the last
/// [`RECENT`] bytes it served, to work out line numbers.
#[derive(Debug)]
struct Counting<R> {
    inner: R,
    total: u64,
    limit_at: u64,
    tripped: bool,
    recent: Vec<u8>,
}

impl<R> Counting<R> {
    /// The byte at `offset`, if it was served and is still in the ring.
    fn byte_at(&self, offset: u64) -> Option<u8> {
        if offset >= self.total || self.total - offset > RECENT as u64 {
            return None;
        }
        Some(self.recent[(offset % RECENT as u64) as usize])
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.limit_at.saturating_sub(self.total);
        if room == 0 {
            self.tripped = true;
            return Err(io::Error::other("CSV record too large"));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        for chunk in buf[..n].chunks(RECENT) {
            let at = (self.total % RECENT as u64) as usize;
            let first = chunk.len().min(RECENT - at);
            self.recent[at..at + first].copy_from_slice(&chunk[..first]);
            self.recent[..chunk.len() - first].copy_from_slice(&chunk[first..]);
            self.total += chunk.len() as u64;
        }
        Ok(n)
    }
}

/// Streaming reader of a recipient list: a CSV file whose first row names the columns.
#[derive(Debug)]
pub struct ListReader<R: Read> {
    csv: csv::Reader<Counting<R>>,
    record: csv::ByteRecord,
    file: String,
    headers: Vec<String>,
    email_index: usize,
    max_record: u64,
    rows: u64,
    done: bool,
}

impl ListReader<File> {
    /// Opens the list at `path` (named by its path in errors) and reads its header row.
    pub fn open(path: &Path) -> Result<Self, InputError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|error| InputError::Io {
            file: name.clone(),
            line: None,
            error,
        })?;
        Self::new(file, &name)
    }
}

impl<R: Read> ListReader<R> {
    /// Reads the header row of `reader`, with the default record limit ([`DEFAULT_MAX_RECORD`]).
    ///
    /// `source` names the list in errors (usually its path). A UTF-8 byte order mark is
    /// stripped. The address column is the one named `email` (any letter case, trimmed), or
    /// else `to`. Header names are kept as they are (trimmed).
    pub fn new(reader: R, source: &str) -> Result<Self, InputError> {
        Self::with_max_record(reader, source, DEFAULT_MAX_RECORD)
    }

    /// Like [`ListReader::new`], with a limit of `max_record` bytes for one CSV record
    /// (the header row included).
    pub fn with_max_record(reader: R, source: &str, max_record: u64) -> Result<Self, InputError> {
        let counting = Counting {
            inner: reader,
            total: 0,
            limit_at: 0,
            tripped: false,
            recent: vec![0; RECENT],
        };
        let csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(CSV_BUFFER)
            .from_reader(counting);
        let mut list = Self {
            csv,
            record: csv::ByteRecord::new(),
            file: source.to_owned(),
            headers: Vec::new(),
            email_index: 0,
            max_record,
            rows: 0,
            done: false,
        };
        list.read_header()?;
        Ok(list)
    }

    fn read_header(&mut self) -> Result<(), InputError> {
        let line = match self.read_record() {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Err(InputError::Empty {
                    file: self.file.clone(),
                });
            }
            Err(e) => return Err(e),
        };
        if self.record.len() > MAX_COLUMNS {
            return Err(InputError::TooManyColumns {
                file: self.file.clone(),
                line,
                count: self.record.len(),
                max: MAX_COLUMNS,
            });
        }
        let mut headers = Vec::with_capacity(self.record.len());
        for (i, field) in self.record.iter().enumerate() {
            let field = if i == 0 {
                field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field)
            } else {
                field
            };
            let text = std::str::from_utf8(field).map_err(|_| InputError::HeaderNotUtf8 {
                file: self.file.clone(),
                line,
            })?;
            headers.push(text.trim().to_owned());
        }
        if headers.len() == 1 && headers[0].is_empty() {
            return Err(InputError::Empty {
                file: self.file.clone(),
            });
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(headers.len());
        for (i, name) in headers.iter().enumerate() {
            if let Some(&first) = seen.get(name.as_str()) {
                return Err(InputError::DuplicateColumn {
                    file: self.file.clone(),
                    line,
                    name: name.clone(),
                    first: first + 1,
                    second: i + 1,
                });
            }
            seen.insert(name, i);
        }
        let named = |want: &str| -> Vec<usize> {
            (0..headers.len())
                .filter(|&i| headers[i].eq_ignore_ascii_case(want))
                .collect()
        };
        let mut candidates = named("email");
        if candidates.is_empty() {
            candidates = named("to");
        }
        let email_index = match candidates.as_slice() {
            [] => {
                return Err(InputError::NoEmailColumn {
                    file: self.file.clone(),
                    line,
                    headers,
                });
            }
            [one] => *one,
            [first, second, ..] => {
                return Err(InputError::DuplicateColumn {
                    file: self.file.clone(),
                    line,
                    name: headers[*second].clone(),
                    first: first + 1,
                    second: second + 1,
                });
            }
        };
        self.headers = headers;
        self.email_index = email_index;
        Ok(())
    }

    /// Reads the next record into `self.record`; returns the line it starts on, or `None` at
    /// the end. Enforces the record size limit.
    fn read_record(&mut self) -> Result<Option<u64>, InputError> {
        let start = self.csv.position().clone();
        let slack = CSV_BUFFER as u64 + 1;
        self.csv.get_mut().limit_at = start
            .byte()
            .saturating_add(self.max_record)
            .saturating_add(slack);
        match self.csv.read_byte_record(&mut self.record) {
            Ok(true) => {
                let end = self.csv.position().clone();
                let rec_start = self.record.position().map_or(start.byte(), |p| p.byte());
                if end.byte().saturating_sub(rec_start) > self.max_record {
                    return Err(self.too_large(&start));
                }
                // The parser counts LFs it has consumed; it skips blank lines before a record
                // and may or may not have consumed the record's own terminating LF (it stops
                // after the CR of a CRLF). Work back from the end of the record.
                let inner = self
                    .record
                    .as_slice()
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count() as u64;
                let ended_by_lf =
                    end.byte() > 0 && self.csv.get_ref().byte_at(end.byte() - 1) == Some(b'\n');
                let line = end
                    .line()
                    .saturating_sub(inner + u64::from(ended_by_lf))
                    .max(1);
                Ok(Some(line))
            }
            Ok(false) => Ok(None),
            Err(e) => {
                if self.csv.get_ref().tripped {
                    return Err(self.too_large(&start));
                }
                let line = e.position().map_or(start.line(), |p| p.line());
                let message = e.to_string();
                match e.into_kind() {
                    csv::ErrorKind::Io(error) => Err(InputError::Io {
                        file: self.file.clone(),
                        line: Some(line),
                        error,
                    }),
                    _ => Err(InputError::Csv {
                        file: self.file.clone(),
                        line,
                        message,
                    }),
                }
            }
        }
    }

    /// The error for a record that started at `start` (the parser's position before it).
    fn too_large(&self, start: &csv::Position) -> InputError {
        // After a CRLF the parser stops before the LF: the record starts on the next line.
        let leftover_lf = self.csv.get_ref().byte_at(start.byte()) == Some(b'\n');
        InputError::RecordTooLarge {
            file: self.file.clone(),
            line: start.line() + u64::from(leftover_lf),
            max: self.max_record,
        }
    }

    /// The header names, trimmed, in file order.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// Index (0-based) of the address column in [`ListReader::headers`].
    pub fn email_index(&self) -> usize {
        self.email_index
    }

    /// The list's name as given to the constructor.
    pub fn source(&self) -> &str {
        &self.file
    }

    /// Number of data rows returned so far.
    pub fn rows_read(&self) -> u64 {
        self.rows
    }

    /// Reads the next data row. `None` at the end of the list (and after a fatal error).
    ///
    /// Per-row problems are reported in [`Row::problem`], not as errors.
    pub fn next_row(&mut self) -> Option<Result<Row, InputError>> {
        Some(self.advance()?.map(|line| self.make_row(line)))
    }

    /// Reads the next record and counts it; its line, `None` at the end of the list (and after
    /// a fatal error).
    fn advance(&mut self) -> Option<Result<u64, InputError>> {
        if self.done {
            return None;
        }
        match self.read_record() {
            Ok(Some(line)) => {
                self.rows += 1;
                Some(Ok(line))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// Reads the next data row for a pre-pass: its number, line and problem, and its address
    /// borrowed from the record (meaningful when there is no problem), without copying the
    /// row's values. The rows and problems are those of [`ListReader::next_row`].
    pub(crate) fn next_scanned(&mut self) -> Option<Result<Scanned<'_>, InputError>> {
        let line = match self.advance()? {
            Ok(line) => line,
            Err(e) => return Some(Err(e)),
        };
        let email = self
            .record
            .get(self.email_index)
            .and_then(|f| std::str::from_utf8(f).ok())
            .map_or("", str::trim);
        Some(Ok(Scanned {
            number: self.rows,
            line,
            email,
            problem: self.problem(email),
        }))
    }

    fn make_row(&self, line: u64) -> Row {
        let width = self.headers.len();
        let mut fields: Vec<String> = Vec::with_capacity(width);
        for field in self.record.iter().take(width) {
            fields.push(match std::str::from_utf8(field) {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(field).into_owned(),
            });
        }
        fields.resize(width, String::new());
        let email = fields[self.email_index].trim().to_owned();
        Row {
            number: self.rows,
            line,
            problem: self.problem(&email),
            email,
            fields,
        }
    }

    /// Why the current record cannot be sent, if it cannot: a value that is not UTF-8, more
    /// values than columns, or a bad address (`email`, trimmed).
    fn problem(&self, email: &str) -> Option<String> {
        let width = self.headers.len();
        if self.record.iter().any(|f| std::str::from_utf8(f).is_err()) {
            return Some(PROBLEM_NOT_UTF8.to_owned());
        }
        if self.record.len() > width
            && self
                .record
                .iter()
                .skip(width)
                .any(|f| !f.iter().all(u8::is_ascii_whitespace))
        {
            return Some(format!(
                "row has {} fields, the header has {width}",
                self.record.len()
            ));
        }
        check_address(email).err().map(|e| e.to_string())
    }
}

/// A data row as [`ListReader::next_scanned`] reads it.
#[derive(Debug)]
pub(crate) struct Scanned<'a> {
    /// As [`Row::number`].
    pub(crate) number: u64,
    /// As [`Row::line`].
    pub(crate) line: u64,
    /// As [`Row::email`], borrowed.
    pub(crate) email: &'a str,
    /// As [`Row::problem`].
    pub(crate) problem: Option<String>,
}

impl<R: Read> Iterator for ListReader<R> {
    type Item = Result<Row, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_row()
    }
}

/// What a pre-pass over a list found (see [`scan_list`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Number of data rows.
    pub rows: u64,
    /// Number of rows with a [`Row::problem`].
    pub problems: u64,
    /// Line and text of the first row problem, if any.
    pub first_problem: Option<(u64, String)>,
}

/// Reads a whole list without keeping its rows: validates the header and every record and
/// counts rows and row problems. Used to catch bad input before any connection is made.
pub fn scan_list<R: Read>(list: &mut ListReader<R>) -> Result<ScanSummary, InputError> {
    let mut summary = ScanSummary::default();
    while let Some(row) = list.next_row() {
        let row = row?;
        summary.rows += 1;
        if let Some(problem) = row.problem {
            summary.problems += 1;
            if summary.first_problem.is_none() {
                summary.first_problem = Some((row.line, problem));
            }
        }
    }
    Ok(summary)
}

/// Opens the list at `path` and [scans](scan_list) it.
pub fn scan_file(path: &Path) -> Result<ScanSummary, InputError> {
    scan_list(&mut ListReader::open(path)?)
}

/// Opens the list at `path`, validates it and returns its number of data rows.
pub fn count_rows(path: &Path) -> Result<u64, InputError> {
    scan_file(path).map(|s| s.rows)
}

#[cfg(test)]
mod tests;
