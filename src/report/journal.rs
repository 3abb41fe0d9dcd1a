//! `<report>.journal`: the rows whose messages are about to be committed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};

/// `<report>.journal`, or `None` for a report on standard output or in an existing file that
/// is not a regular file (`/dev/null`, a pipe, a terminal): such a report cannot be resumed
/// from, so no journal is kept (and none is left in `/dev` by a killed run).
pub fn journal_path(report_path: &str) -> Option<PathBuf> {
    if report_path == "-" || fs::metadata(report_path).is_ok_and(|m| !m.is_file()) {
        return None;
    }
    Some(PathBuf::from(format!("{report_path}.journal")))
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
    /// Creates `<report>.journal` afresh (mode 0600, never following a symlink: see
    /// [`fsutil::replace_file`]). For `-` (report on standard output) the journal is disabled:
    /// every call succeeds and does nothing.
    ///
    /// A journal left by an interrupted run is only replaced here when it is a regular file;
    /// [`ReportWriter::create`](super::ReportWriter::create), called first, refuses to start
    /// over a leftover journal that `--resume` did not consume ([`check_no_leftover`]).
    pub fn create(report_path: &str) -> io::Result<Self> {
        let path = journal_path(report_path);
        let file = match &path {
            Some(p) => Some(fsutil::replace_file(p).map_err(fs_to_io)?),
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

/// An [`FsError`] as an `io::Error` whose message is the typed error's one line.
pub(super) fn fs_to_io(e: FsError) -> io::Error {
    let kind = match &e {
        FsError::Io { error, .. } => error.kind(),
        FsError::Exists { .. } => io::ErrorKind::AlreadyExists,
        FsError::Symlink { .. } | FsError::NotRegular { .. } => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// Refuses to start a run whose `<report>.journal` exists: it was left by an interrupted run
/// that `--resume` has not consumed (a resumed run's [`ResumeState::load`] removes it), and
/// starting over would lose what it says was in flight. A symlink there is refused too.
///
/// [`ResumeState::load`]: super::ResumeState::load
pub fn check_no_leftover(report_path: &str) -> io::Result<()> {
    let Some(journal) = journal_path(report_path) else {
        return Ok(());
    };
    match fs::symlink_metadata(&journal) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{}: {e}", journal.display()),
        )),
        Ok(m) if m.file_type().is_symlink() => Err(fs_to_io(FsError::Symlink { path: journal })),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} is left by an interrupted run: resume it with --resume {report_path}, \
                 or remove the journal to start over",
                journal.display()
            ),
        )),
    }
}

pub(super) fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
