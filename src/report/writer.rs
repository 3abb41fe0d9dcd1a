//! The report writers: CSV, JSON array, JSON lines; one flushed `write` per row.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::journal::{check_no_leftover, fs_to_io};
use super::{COLUMNS, Format, ReportRow};
use crate::fsutil;

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
    /// Creates the report at `path` (`-` = standard output) and writes its start (the CSV
    /// header row, or `[` for JSON).
    ///
    /// A file is created afresh and never through a symlink ([`fsutil::replace_file`]): a new
    /// report gets mode 0600, a regular file it replaces keeps its mode. Refuses, before
    /// touching the report, when `<report>.journal` is left by an interrupted run that
    /// `--resume` did not consume (see [`super::journal::check_no_leftover`]).
    pub fn create(path: &str, format: Format) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(io::stdout())
        } else {
            check_no_leftover(path)?;
            Box::new(create_report_file(Path::new(path))?)
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

    /// Appends one row and flushes it to the file, with any rows [`ReportWriter::append`]ed
    /// before it (one `write` call; no `fsync`).
    ///
    /// Text is written inert: control characters escaped by [`crate::text::printable_str`]
    /// in every format, and every CSV cell formula-guarded by [`crate::text::guard_cell`].
    pub fn write(&mut self, row: &ReportRow) -> io::Result<()> {
        self.append(row)?;
        self.flush_buf()
    }

    /// Encodes one row into the buffer without writing it: several rows decided together
    /// then go out in one `write` ([`ReportWriter::flush_pending`]).
    pub fn append(&mut self, row: &ReportRow) -> io::Result<()> {
        match self.format {
            Format::Csv => {
                // A small buffer: the default (8 KiB, zeroed) cost more than the row.
                let mut csv = csv::WriterBuilder::new()
                    .buffer_capacity(256)
                    .from_writer(&mut self.buf);
                csv.write_record(row.csv_fields().iter().map(|f| f.as_bytes()))?;
                csv.flush()?;
            }
            Format::Json => {
                if self.rows > 0 {
                    self.buf.extend_from_slice(b",\n");
                }
                serde_json::to_writer(&mut self.buf, &*row.inert())?;
            }
            Format::Jsonl => {
                serde_json::to_writer(&mut self.buf, &*row.inert())?;
                self.buf.push(b'\n');
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Writes the rows appended since the last write, if any, in one `write` call.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
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

/// Creates the report file: mode 0600 when new, the replaced regular file's mode otherwise;
/// a symlink or other non-regular file at `path` is refused and left alone.
fn create_report_file(path: &Path) -> io::Result<fs::File> {
    let old_mode = match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Some(m.permissions().mode() & 0o7777),
        _ => None,
    };
    let file = fsutil::replace_file(path).map_err(fs_to_io)?;
    if let Some(mode) = old_mode.filter(|&m| m != fsutil::NEW_FILE_MODE) {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}
