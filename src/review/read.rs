//! Streaming reader for pipemail reports in any of their formats.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};

use super::ReviewError;
use crate::report::ReportRow;
use crate::text::printable_str;

/// Longest JSON line accepted (a pipemail row is well under a kilobyte).
const MAX_LINE: u64 = 16 << 20;

enum Inner {
    Json {
        reader: BufReader<Box<dyn Read>>,
        line: Vec<u8>,
        lineno: u64,
    },
    Csv {
        reader: Box<csv::Reader<BufReader<Box<dyn Read>>>>,
        cols: [usize; 10],
        record: csv::StringRecord,
    },
    Empty,
}

/// Reads the rows of one report (CSV, JSON or JSON Lines, detected from the content), one at a
/// time. Reads what pipemail writes, including what a killed run leaves: a JSON array without
/// its closing `]`, and a last record cut short (skipped; see [`ReportReader::truncated`]).
/// CSV cells are read through [`crate::text::unguard_cell`].
pub struct ReportReader {
    name: String,
    inner: Inner,
    pending: Option<ReviewError>,
    truncated: bool,
}

impl std::fmt::Debug for ReportReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportReader")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ReportReader {
    /// Opens the report at `path` (`-`: standard input).
    pub fn open(path: &str) -> Result<Self, ReviewError> {
        let name = display_name(path);
        let input: Box<dyn Read> = if path == "-" {
            Box::new(io::stdin())
        } else {
            match File::open(path) {
                Ok(f) => Box::new(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ReviewError::NotFound { path: name });
                }
                Err(error) => return Err(ReviewError::Read { path: name, error }),
            }
        };
        Self::from_reader(&name, input)
    }

    /// Reads a report from any reader; `name` is used in errors.
    pub fn from_reader(name: &str, input: Box<dyn Read>) -> Result<Self, ReviewError> {
        let name = name.to_owned();
        let mut reader = BufReader::with_capacity(64 << 10, input);
        let read_err = |error| ReviewError::Read {
            path: name.clone(),
            error,
        };
        let first = loop {
            let buf = reader.fill_buf().map_err(read_err)?;
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => break Some(buf[i]),
                None if buf.is_empty() => break None,
                None => {
                    let n = buf.len();
                    reader.consume(n);
                }
            }
        };
        let inner = match first {
            None => Inner::Empty,
            Some(b'[' | b'{') => Inner::Json {
                reader,
                line: Vec::with_capacity(512),
                lineno: 0,
            },
            Some(_) => {
                let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
                let headers = csv.headers().map_err(|e| ReviewError::Parse {
                    path: name.clone(),
                    line: 1,
                    message: printable_str(&e.to_string()).into_owned(),
                })?;
                let cols = ReportRow::csv_columns(headers).map_err(|col| ReviewError::Parse {
                    path: name.clone(),
                    line: 1,
                    message: format!("not a pipemail report: the header row has no {col:?} column"),
                })?;
                Inner::Csv {
                    reader: Box::new(csv),
                    cols,
                    record: csv::StringRecord::new(),
                }
            }
        };
        Ok(Self {
            name,
            inner,
            pending: None,
            truncated: false,
        })
    }

    /// The report's name as shown in messages (made printable).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True once the reader has skipped a malformed last record (a run killed mid-write).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The next row; `None` at the end. A malformed record is an error unless it is the last.
    pub fn next_row(&mut self) -> Option<Result<ReportRow, ReviewError>> {
        loop {
            let step = match &mut self.inner {
                Inner::Empty => return None,
                Inner::Json {
                    reader,
                    line,
                    lineno,
                } => json_step(&self.name, reader, line, lineno),
                Inner::Csv {
                    reader,
                    cols,
                    record,
                } => csv_step(&self.name, reader, cols, record),
            };
            match step {
                Step::End => {
                    if self.pending.take().is_some() {
                        self.truncated = true;
                    }
                    return None;
                }
                Step::Skip => {}
                Step::Fatal(e) => {
                    self.inner = Inner::Empty;
                    return Some(Err(e));
                }
                Step::Bad(e) => {
                    if let Some(p) = self.pending.replace(e) {
                        self.inner = Inner::Empty;
                        return Some(Err(p));
                    }
                }
                Step::Row(row) => {
                    if let Some(p) = self.pending.take() {
                        self.inner = Inner::Empty;
                        return Some(Err(p));
                    }
                    return Some(Ok(row));
                }
            }
        }
    }
}

impl Iterator for ReportReader {
    type Item = Result<ReportRow, ReviewError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_row()
    }
}

/// A path as shown in messages.
pub(crate) fn display_name(path: &str) -> String {
    if path == "-" {
        "<stdin>".to_owned()
    } else {
        printable_str(path).into_owned()
    }
}

enum Step {
    Row(ReportRow),
    /// A blank line or the array's brackets.
    Skip,
    /// A malformed record: an error unless nothing follows it.
    Bad(ReviewError),
    /// An I/O error.
    Fatal(ReviewError),
    End,
}

fn json_step(
    name: &str,
    reader: &mut BufReader<Box<dyn Read>>,
    line: &mut Vec<u8>,
    lineno: &mut u64,
) -> Step {
    line.clear();
    match reader.by_ref().take(MAX_LINE).read_until(b'\n', line) {
        Ok(0) => return Step::End,
        Ok(_) => {}
        Err(error) => {
            return Step::Fatal(ReviewError::Read {
                path: name.to_owned(),
                error,
            });
        }
    }
    *lineno += 1;
    let bad = |message: String| {
        Step::Bad(ReviewError::Parse {
            path: name.to_owned(),
            line: *lineno,
            message: printable_str(&message).into_owned(),
        })
    };
    if line.len() as u64 >= MAX_LINE && line.last() != Some(&b'\n') {
        return Step::Fatal(ReviewError::Parse {
            path: name.to_owned(),
            line: *lineno,
            message: format!("a line over {} MiB", MAX_LINE >> 20),
        });
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return bad("not valid UTF-8".to_owned());
    };
    let t = text.trim();
    let t = t.strip_prefix('[').unwrap_or(t).trim_start();
    let t = t.strip_prefix(',').unwrap_or(t).trim_start();
    let t = t.strip_suffix(']').unwrap_or(t).trim_end();
    let t = t.strip_suffix(',').unwrap_or(t).trim_end();
    if t.is_empty() {
        return Step::Skip;
    }
    if t == "{" {
        return Step::Fatal(ReviewError::Parse {
            path: name.to_owned(),
            line: *lineno,
            message: "a JSON object spread over lines (pretty-printed?); pipemail reads one \
                      object per line: `jq -c '.[]'` converts it to JSON Lines"
                .to_owned(),
        });
    }
    match serde_json::from_str::<ReportRow>(t) {
        Ok(row) => Step::Row(row),
        Err(e) => bad(e.to_string()),
    }
}

fn csv_step(
    name: &str,
    reader: &mut csv::Reader<BufReader<Box<dyn Read>>>,
    cols: &[usize; 10],
    record: &mut csv::StringRecord,
) -> Step {
    let line = reader.position().line();
    match reader.read_record(record) {
        Ok(false) => Step::End,
        Ok(true) => {
            if record.len() == 1 && record.get(0).is_some_and(str::is_empty) {
                return Step::Skip;
            }
            let line = record.position().map_or(line, csv::Position::line);
            match ReportRow::from_csv(record, cols) {
                Ok(row) => Step::Row(row),
                Err(message) => Step::Bad(ReviewError::Parse {
                    path: name.to_owned(),
                    line,
                    message: printable_str(&message).into_owned(),
                }),
            }
        }
        Err(e) => {
            let err = ReviewError::Parse {
                path: name.to_owned(),
                line,
                message: printable_str(&e.to_string()).into_owned(),
            };
            if e.is_io_error() {
                Step::Fatal(err)
            } else {
                Step::Bad(err)
            }
        }
    }
}
