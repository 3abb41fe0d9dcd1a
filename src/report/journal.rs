//! `<report>.journal`: the rows whose messages are about to be committed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `<report>.journal`, or `None` for a report on standard output.
pub fn journal_path(report_path: &str) -> Option<PathBuf> {
    (report_path != "-").then(|| PathBuf::from(format!("{report_path}.journal")))
}

/// `<report>.resume`: the carry file of [`ResumeState`](super::ResumeState).
pub fn carry_path(report_path: &str) -> PathBuf {
    PathBuf::from(format!("{report_path}.resume"))
}

#[derive(Serialize, Deserialize)]
pub(super) struct JournalLine<'a> {
    pub(super) row: u64,
    #[serde(borrow)]
    pub(super) email: std::borrow::Cow<'a, str>,
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

pub(super) fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
