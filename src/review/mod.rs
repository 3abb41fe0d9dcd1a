//! Reading finished reports: `pipemail report summary`, `merge` and `html`.
//!
//! * [`ReportReader`] streams the rows of a report in any format pipemail writes (CSV, JSON,
//!   JSON Lines; detected from the content), including what a killed run leaves behind.
//! * [`summarize`] gathers a [`Summary`] (counts by status and by reply, the domains with
//!   the most failures and deferrals, first/last `finished_at`, rows per second, rows over
//!   time) in one pass with bounded memory: row numbers in a compressed bitmap, at most
//!   [`stats::MAX_DOMAINS`] domains and a fixed number of time buckets.
//! * [`merge()`] joins shard reports (or the last report of each `--resume` chain) into one,
//!   refusing any input row that appears more than once.
//! * [`html::render`] writes a self-contained HTML page of a summary.
//!
//! Everything that came from a report reaches people through [`crate::text::printable`]
//! (and, in the page, HTML escaping): server text is untrusted.

pub mod html;
pub mod merge;
pub mod read;
pub mod stats;
#[cfg(test)]
mod tests;

use std::io::{self, Write};

pub use merge::{MergeOutcome, merge};
pub use read::ReportReader;
pub use stats::Summary;

use crate::fsutil::{AtomicFile, FsError};

/// Why a `report` command failed; [`ReviewError::exit_code`] gives its sysexits code.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Bad arguments (exit 64).
    #[error("{0}")]
    Usage(String),
    /// An input report does not exist (exit 66).
    #[error("{path}: no such report")]
    NotFound {
        /// The file, printable.
        path: String,
    },
    /// An input report could not be read (exit 66).
    #[error("{path}: {error}")]
    Read {
        /// The file, printable.
        path: String,
        /// The error (in the message, so not repeated as a source).
        error: io::Error,
    },
    /// A record is not a pipemail report row (exit 65).
    #[error("{path}:{line}: not a pipemail report row: {message}")]
    Parse {
        /// The file, printable.
        path: String,
        /// The line.
        line: u64,
        /// What is wrong, printable.
        message: String,
    },
    /// `merge`: input rows appear more than once (exit 65).
    #[error("{count} input row(s) appear more than once: {details}")]
    Duplicates {
        /// How many row numbers are repeated.
        count: u64,
        /// The first few, with the reports they are in.
        details: String,
    },
    /// The output could not be written (exit 74).
    #[error("{path}: {error}")]
    Write {
        /// The file, printable.
        path: String,
        /// The error (in the message, so not repeated as a source).
        error: io::Error,
    },
    /// The output file could not be created safely (exit 74).
    #[error(transparent)]
    Create(#[from] FsError),
}

impl ReviewError {
    /// The sysexits code: 64 usage, 65 bad data, 66 missing input, 74 I/O.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 64,
            Self::Parse { .. } | Self::Duplicates { .. } => 65,
            Self::NotFound { .. } | Self::Read { .. } => 66,
            Self::Write { .. } | Self::Create(_) => 74,
        }
    }

    /// True when the error is a closed standard output (a pipe into `head`).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Write { error, .. } if error.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Reads every report in `paths` (`-`: standard input) into one [`Summary`].
pub fn summarize(paths: &[String]) -> Result<Summary, ReviewError> {
    if paths.iter().filter(|p| *p == "-").count() > 1 {
        return Err(ReviewError::Usage(
            "standard input (-) can be named only once".into(),
        ));
    }
    let mut s = Summary::default();
    for p in paths {
        let mut r = ReportReader::open(p)?;
        s.files.push(r.name().to_owned());
        while let Some(row) = r.next_row() {
            s.add(&row?);
        }
        if r.truncated() {
            s.truncated.push(r.name().to_owned());
        }
    }
    Ok(s)
}

/// Where a command's output goes: standard output, or a file renamed into place when done.
pub(crate) enum Output {
    Stdout(io::BufWriter<io::Stdout>),
    File(io::BufWriter<AtomicFile>, String),
}

impl Output {
    pub(crate) fn create(path: &str) -> Result<Self, ReviewError> {
        if path == "-" {
            return Ok(Self::Stdout(io::BufWriter::new(io::stdout())));
        }
        let file = AtomicFile::create(std::path::Path::new(path))?;
        Ok(Self::File(
            io::BufWriter::with_capacity(64 << 10, file),
            read::display_name(path),
        ))
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Stdout(_) => "<stdout>",
            Self::File(_, name) => name,
        }
    }

    pub(crate) fn write_err(&self, source: io::Error) -> ReviewError {
        ReviewError::Write {
            path: self.name().to_owned(),
            error: source,
        }
    }

    /// Flushes, and for a file renames it into place.
    pub(crate) fn commit(self) -> Result<(), ReviewError> {
        match self {
            Self::Stdout(mut w) => w.flush().map_err(|source| ReviewError::Write {
                path: "<stdout>".into(),
                error: source,
            }),
            Self::File(w, name) => {
                let file = w.into_inner().map_err(|e| ReviewError::Write {
                    path: name,
                    error: e.into_error(),
                })?;
                Ok(file.commit()?)
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout(w) => w.write(buf),
            Self::File(w, _) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(w) => w.flush(),
            Self::File(w, _) => w.flush(),
        }
    }
}

/// A `pipemail report` command, as parsed from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `report summary FILE… [--top N] [--json]`.
    Summary {
        /// Input reports (`-`: standard input).
        files: Vec<String>,
        /// Domains to list.
        top: usize,
        /// JSON instead of text.
        json: bool,
    },
    /// `report merge FILE… --output OUT [--format F]`.
    Merge {
        /// Input reports (files).
        files: Vec<String>,
        /// The merged report (`-`: standard output).
        output: String,
        /// Its format (default: from the extension).
        format: Option<crate::report::Format>,
    },
    /// `report html FILE… --output OUT.html [--top N]`.
    Html {
        /// Input reports (`-`: standard input).
        files: Vec<String>,
        /// The page (`-`: standard output).
        output: String,
        /// Domains to list.
        top: usize,
    },
}

/// Runs a `pipemail report` command: the summary goes to standard output, `merge`'s one-line
/// account to standard error.
pub fn run(action: Action) -> Result<(), ReviewError> {
    match action {
        Action::Summary { files, top, json } => {
            let summary = summarize(&files)?;
            let text = if json {
                let mut t = summary.to_json(top).to_string();
                t.push('\n');
                t
            } else {
                summary.render_text(top)
            };
            let mut out = io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| ReviewError::Write {
                    path: "<stdout>".into(),
                    error: source,
                })
        }
        Action::Merge {
            files,
            output,
            format,
        } => {
            let outcome = merge(&files, &output, format)?;
            let name = if output == "-" {
                "<stdout>".to_owned()
            } else {
                read::display_name(&output)
            };
            eprintln!("pipemail: {}", outcome.line(&name));
            Ok(())
        }
        Action::Html { files, output, top } => html_page(&files, &output, top),
    }
}

/// `pipemail report summary`: the summary of `paths` as text.
pub fn summary_text(paths: &[String], top: usize) -> Result<String, ReviewError> {
    Ok(summarize(paths)?.render_text(top))
}

/// `pipemail report html`: the page for `paths`, written to `output` (`-`: standard output)
/// through a temporary file renamed into place.
pub fn html_page(paths: &[String], output: &str, top: usize) -> Result<(), ReviewError> {
    let summary = summarize(paths)?;
    let mut out = Output::create(output)?;
    let page = html::render(&summary, top);
    out.write_all(page.as_bytes())
        .map_err(|e| out.write_err(e))?;
    out.commit()
}
