//! `pipemail bounces`: read bounce messages from a Maildir or mbox, match each to a row of a
//! `send` report, and write the report again with those rows `bounced`.
//!
//! A bounce is matched, in this order, by
//! 1. the Message-ID of the returned message (in a `message/rfc822` or `text/rfc822-headers`
//!    part, or quoted inline) against the report's `message_id` column;
//! 2. the DSN's `Original-Envelope-Id`, made by [`crate::deliver::dsn::envid`] as
//!    `<campaign>.<row>`;
//! 3. a VERP return path `local+ROW@domain` in `Delivered-To`, `X-Original-To`, `Envelope-To`
//!    or `To`.
//!
//! A match by row (2 or 3) is refused when the bounce names a recipient that differs from the
//! row's address: the ENVID or VERP address then belongs to another campaign.
//!
//! Only `Action: failed` entries (or prose bounces with a 5.x.x status) mark a row; delay
//! notices and success reports are counted and left alone. The input report is never
//! modified: the result goes to `--output` or standard output.

pub mod parse;
pub mod report;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::deliver::dsn;
pub use parse::{Action, Bounce, Form};
pub use report::{Report, ReportFormat};

/// Where the bounce messages are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mailbox {
    /// A Maildir (`cur/` and `new/` are read).
    Maildir(PathBuf),
    /// An mbox file (`From ` separated).
    Mbox(PathBuf),
}

/// What `pipemail bounces` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The report written by `send`.
    pub report: PathBuf,
    /// The bounce messages.
    pub mailbox: Mailbox,
    /// Where to write the updated report (`None` or `-`: standard output).
    pub output: Option<PathBuf>,
}

/// Why the command failed; [`BounceError::exit_code`] gives its sysexits code.
#[derive(Debug, thiserror::Error)]
pub enum BounceError {
    /// The report or mailbox does not exist or cannot be read.
    #[error("cannot read {path}: {source}")]
    NoInput {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The report is not a pipemail report.
    #[error("{path} is not a pipemail report: {reason}")]
    BadReport {
        /// The report.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `--output` names the input report.
    #[error("--output {0} is the input report; write the result to another file")]
    SameFile(PathBuf),
    /// The output could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output (`-` for standard output).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl BounceError {
    /// The sysexits code: 66 missing input, 65 bad report, 64 usage, 74 write error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NoInput { .. } => 66,
            Self::BadReport { .. } => 65,
            Self::SameFile(_) => 64,
            Self::Write { .. } => 74,
        }
    }
}

/// A bounce that matched no report row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmatched {
    /// The message it came from (file name, or `mbox message N`).
    pub source: String,
    /// The recipient it names, if any.
    pub recipient: Option<String>,
    /// Its status code, if any.
    pub status: Option<String>,
}

/// What the run found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages read.
    pub messages: u64,
    /// Messages that were not bounces.
    pub not_bounces: u64,
    /// Failure entries matched to a row.
    pub matched: u64,
    /// Delay or success notices (left alone).
    pub notices: u64,
    /// Failure entries that matched no row.
    pub unmatched: Vec<Unmatched>,
    /// Distinct rows now `bounced`.
    pub rows_bounced: u64,
}

impl Summary {
    /// One line for stderr.
    pub fn line(&self) -> String {
        format!(
            "{} messages: {} bounces matched ({} rows bounced), {} unmatched, {} delay/other notices, {} not bounces",
            self.messages,
            self.matched,
            self.rows_bounced,
            self.unmatched.len(),
            self.notices,
            self.not_bounces
        )
    }
}

/// Index of report rows by Message-ID and by row number.
#[derive(Debug, Default)]
pub struct Matcher {
    by_message_id: HashMap<String, usize>,
    by_row: HashMap<u64, usize>,
    emails: Vec<String>,
}

impl Matcher {
    /// Indexes a report.
    pub fn new(report: &Report) -> Self {
        let mut m = Self::default();
        for i in 0..report.len() {
            let k = report.key(i);
            if !k.message_id.is_empty() {
                m.by_message_id.insert(k.message_id.to_ascii_lowercase(), i);
            }
            m.by_row.insert(k.row, i);
            m.emails.push(k.email.to_ascii_lowercase());
        }
        m
    }

    /// The report index a bounce belongs to.
    pub fn find(&self, b: &Bounce) -> Option<usize> {
        if let Some(i) = b
            .message_id
            .as_deref()
            .and_then(|id| self.by_message_id.get(&id.to_ascii_lowercase()))
        {
            return Some(*i);
        }
        let by_envid = b
            .envid
            .as_deref()
            .and_then(dsn::parse_envid)
            .map(|(_, row)| row);
        [by_envid, b.verp_row]
            .into_iter()
            .flatten()
            .filter_map(|row| self.by_row.get(&row).copied())
            .find(|&i| {
                b.recipient
                    .as_deref()
                    .is_none_or(|r| r.eq_ignore_ascii_case(&self.emails[i]))
            })
    }
}

/// Messages of a mailbox, read one at a time: `(source name, raw bytes)`.
pub type Messages = Box<dyn Iterator<Item = Result<(String, Vec<u8>), BounceError>>>;

/// Opens a mailbox. Maildir messages (`cur/` and `new/`, dot-files skipped) come in file-name
/// order; mbox messages in file order, split by mail-parser. Each message is read when the
/// iterator reaches it, so memory does not grow with the mailbox.
pub fn open_mailbox(mailbox: &Mailbox) -> Result<Messages, BounceError> {
    fn no_input(path: &Path) -> impl FnOnce(io::Error) -> BounceError {
        let path = path.to_owned();
        move |source| BounceError::NoInput { path, source }
    }
    match mailbox {
        Mailbox::Maildir(dir) => {
            let mut files = Vec::new();
            for sub in ["cur", "new"] {
                let d = dir.join(sub);
                for entry in std::fs::read_dir(&d).map_err(no_input(&d))? {
                    let entry = entry.map_err(no_input(&d))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.starts_with('.') {
                        files.push((name, entry.path()));
                    }
                }
            }
            files.sort();
            Ok(Box::new(files.into_iter().map(|(name, path)| {
                std::fs::read(&path)
                    .map(|raw| (name, raw))
                    .map_err(no_input(&path))
            })))
        }
        Mailbox::Mbox(file) => {
            let f = File::open(file).map_err(no_input(file))?;
            let it = mail_parser::mailbox::mbox::MessageIterator::new(BufReader::new(f));
            let file = file.clone();
            Ok(Box::new(it.enumerate().map(move |(n, m)| {
                m.map(|m| (format!("mbox message {}", n + 1), m.unwrap_contents()))
                    .map_err(no_input(&file))
            })))
        }
    }
}

/// Applies the bounces in `messages` to `report`; stops at the first unreadable message.
pub fn apply<I>(report: &mut Report, messages: I) -> Result<Summary, BounceError>
where
    I: IntoIterator<Item = Result<(String, Vec<u8>), BounceError>>,
{
    let matcher = Matcher::new(report);
    let mut summary = Summary::default();
    let mut bounced = vec![false; report.len()];
    for message in messages {
        let (source, raw) = message?;
        summary.messages += 1;
        let entries = parse::parse(&raw);
        if entries.is_empty() {
            summary.not_bounces += 1;
            continue;
        }
        for b in entries {
            if b.action != Action::Failed {
                summary.notices += 1;
                continue;
            }
            match matcher.find(&b) {
                Some(i) => {
                    summary.matched += 1;
                    let diagnostic = b.diagnostic.clone().unwrap_or_else(|| {
                        format!(
                            "bounced: {}",
                            b.status.as_deref().unwrap_or("no status given")
                        )
                    });
                    report.mark_bounced(i, b.status.as_deref(), &diagnostic);
                    bounced[i] = true;
                }
                None => summary.unmatched.push(Unmatched {
                    source: source.clone(),
                    recipient: b.recipient,
                    status: b.status,
                }),
            }
        }
    }
    summary.rows_bounced = bounced.iter().filter(|b| **b).count() as u64;
    Ok(summary)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Runs the command: reads the report and mailbox, writes the updated report to
/// `opts.output` or `stdout`, and returns the summary (print [`Summary::line`] and the
/// unmatched list to stderr).
pub fn run(opts: &Options, stdout: &mut dyn Write) -> Result<Summary, BounceError> {
    let output = opts.output.as_deref().filter(|p| p.as_os_str() != "-");
    if let Some(out) = output
        && same_file(out, &opts.report)
    {
        return Err(BounceError::SameFile(out.to_owned()));
    }
    let text = std::fs::read(&opts.report).map_err(|source| BounceError::NoInput {
        path: opts.report.clone(),
        source,
    })?;
    let bad = |reason: String| BounceError::BadReport {
        path: opts.report.clone(),
        reason,
    };
    let text = String::from_utf8(text).map_err(|_| bad("not UTF-8".to_owned()))?;
    let mut report = Report::parse(&text).map_err(bad)?;
    let messages = open_mailbox(&opts.mailbox)?;
    let summary = apply(&mut report, messages)?;
    match output {
        Some(path) => {
            let write_err = |source| BounceError::Write {
                path: path.to_owned(),
                source,
            };
            // Written beside the destination and renamed into place: never through a
            // symlink planted at `path`, and a failed run leaves the old file whole.
            let fs_err = |e: crate::fsutil::FsError| write_err(io::Error::other(e));
            let mut f = crate::fsutil::AtomicFile::create(path).map_err(fs_err)?;
            report.write(&mut f).map_err(write_err)?;
            f.commit().map_err(fs_err)?;
        }
        None => report.write(stdout).map_err(|source| BounceError::Write {
            path: PathBuf::from("-"),
            source,
        })?,
    }
    Ok(summary)
}
