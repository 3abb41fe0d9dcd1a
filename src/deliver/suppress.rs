//! Suppression lists: addresses (and whole domains) never to mail, and the appender that adds
//! addresses which failed permanently.
//!
//! File format, one entry per line: `user@example.com`, or `@example.com` for a whole domain;
//! `#` starts a comment line; blank lines are skipped; matching is case-insensitive. A CSV file
//! whose header row has an `email` column is accepted too (other columns are ignored).
//!
//! Addresses are kept as 64-bit SipHash keys (random per process), about 16 bytes each, so a
//! list of millions stays small. Two different addresses share a key with probability about
//! `n / 2^64` per lookup (`5e-14` for a million entries).

use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Why a suppression file could not be read or appended to.
#[derive(Debug, thiserror::Error)]
pub enum SuppressError {
    /// The file could not be opened or read.
    #[error("cannot read suppression list {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line that is neither an address nor `@domain`.
    #[error("suppression list {path}, line {line}: {text:?} is not an address or @domain")]
    BadEntry {
        /// The file.
        path: PathBuf,
        /// 1-based line (CSV: record) number.
        line: u64,
        /// The offending text.
        text: String,
    },
    /// A CSV file without an `email` column.
    #[error("suppression list {path}: CSV header has no `email` column")]
    NoEmailColumn {
        /// The file.
        path: PathBuf,
    },
    /// A malformed CSV file.
    #[error("suppression list {path}: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The CSV error.
        source: csv::Error,
    },
    /// The append file could not be opened (e.g. it is a symbolic link) or written.
    #[error("cannot append to suppression list {path}: {source}")]
    Append {
        /// The file.
        path: PathBuf,
        /// The I/O error (`ELOOP` for a symbolic link).
        source: io::Error,
    },
}

impl SuppressError {
    /// The sysexits code: 66 unreadable list, 65 malformed list, 74 append failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Read { .. } => 66,
            Self::BadEntry { .. } | Self::NoEmailColumn { .. } | Self::Csv { .. } => 65,
            Self::Append { .. } => 74,
        }
    }
}

/// A set of suppressed addresses and domains.
#[derive(Debug, Default, Clone)]
pub struct Suppression {
    state: RandomState,
    addresses: HashSet<u64>,
    domains: HashSet<u64>,
}

/// What [`Suppression::insert`] recognized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A single address.
    Address,
    /// `@domain`: every address at that domain.
    Domain,
}

impl Suppression {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&self, s: &str) -> u64 {
        self.state.hash_one(s.trim().to_lowercase())
    }

    /// Adds one entry (`user@example.com` or `@example.com`); `None` if it is neither.
    pub fn insert(&mut self, entry: &str) -> Option<Entry> {
        let e = entry.trim();
        let e = e
            .strip_prefix('<')
            .and_then(|x| x.strip_suffix('>'))
            .unwrap_or(e);
        if e.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        if let Some(domain) = e.strip_prefix('@') {
            if domain.is_empty() || domain.contains('@') {
                return None;
            }
            let k = self.key(domain);
            self.domains.insert(k);
            return Some(Entry::Domain);
        }
        match e.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                let k = self.key(e);
                self.addresses.insert(k);
                Some(Entry::Address)
            }
            _ => None,
        }
    }

    /// Whether `addr` (or its domain) is suppressed. Case-insensitive.
    pub fn contains(&self, addr: &str) -> bool {
        let a = addr.trim();
        if !self.addresses.is_empty() && self.addresses.contains(&self.key(a)) {
            return true;
        }
        if self.domains.is_empty() {
            return false;
        }
        a.rsplit_once('@')
            .is_some_and(|(_, d)| self.domains.contains(&self.key(d)))
    }

    /// Number of distinct addresses and domains.
    pub fn len(&self) -> usize {
        self.addresses.len() + self.domains.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads a file (one entry per line, or CSV with an `email` column); returns the number of
    /// entries read. A missing file is an error: the caller decides whether that is fatal.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<u64, SuppressError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| SuppressError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_reader(BufReader::with_capacity(1 << 16, file), path)
    }

    /// Loads from any reader; `path` is used in error messages.
    pub fn load_reader(
        &mut self,
        mut reader: impl BufRead,
        path: &Path,
    ) -> Result<u64, SuppressError> {
        let read_err = |source| SuppressError::Read {
            path: path.to_owned(),
            source,
        };
        let mut line = String::new();
        let mut n = 0u64;
        let mut count = 0u64;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(read_err)? == 0 {
                return Ok(count);
            }
            n += 1;
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if count == 0 && (t.contains(',') || t.eq_ignore_ascii_case("email")) {
                // The first entry line is a CSV header row.
                return self.load_csv(t, reader, path).map(|c| count + c);
            }
            if self.insert(t).is_none() {
                return Err(SuppressError::BadEntry {
                    path: path.to_owned(),
                    line: n,
                    text: t.to_owned(),
                });
            }
            count += 1;
        }
    }

    fn load_csv(
        &mut self,
        header: &str,
        rest: impl BufRead,
        path: &Path,
    ) -> Result<u64, SuppressError> {
        let csv_err = |source| SuppressError::Csv {
            path: path.to_owned(),
            source,
        };
        let mut header_reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(header.as_bytes());
        let mut head = csv::StringRecord::new();
        header_reader.read_record(&mut head).map_err(csv_err)?;
        let col = head
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case("email"))
            .ok_or_else(|| SuppressError::NoEmailColumn {
                path: path.to_owned(),
            })?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .comment(Some(b'#'))
            .from_reader(rest);
        let mut rec = csv::StringRecord::new();
        let mut count = 0u64;
        while reader.read_record(&mut rec).map_err(csv_err)? {
            let Some(v) = rec.get(col).map(str::trim) else {
                continue;
            };
            if v.is_empty() {
                continue;
            }
            if self.insert(v).is_none() {
                return Err(SuppressError::BadEntry {
                    path: path.to_owned(),
                    line: rec.position().map_or(0, |p| p.line() + 1),
                    text: v.to_owned(),
                });
            }
            count += 1;
        }
        Ok(count)
    }
}

/// Whether a reply is a permanent failure of the recipient address itself, worth suppressing:
/// a 5yz reply whose enhanced code (RFC 3463) is `5.1.x` (bad destination mailbox, domain or
/// syntax, moved, null MX), except the sender-side `5.1.7`/`5.1.8`, or `5.2.1` (mailbox
/// disabled). Without an enhanced code nothing is suppressed: a bare 550 is too often a
/// policy or spam rejection.
pub fn is_permanent_recipient_failure(code: u16, enhanced: Option<&str>) -> bool {
    if !(500..600).contains(&code) {
        return false;
    }
    let Some(e) = enhanced else {
        return false;
    };
    let mut parts = e.trim().split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    match (class, subject, detail.parse::<u16>()) {
        ("5", "1", Ok(d)) => d != 7 && d != 8,
        ("5", "2", Ok(1)) => true,
        _ => false,
    }
}

/// Appends addresses to a suppression file, one per line (`--suppress-add FILE`).
#[derive(Debug)]
pub struct SuppressAppender {
    file: File,
    path: PathBuf,
}

impl SuppressAppender {
    /// Opens (creating with mode 0600) `path` for appending. Refuses a symbolic link
    /// (`O_NOFOLLOW`): a link planted in a shared directory cannot redirect the writes; and
    /// anything but a regular file (a FIFO cannot block the open). See [`crate::fsutil`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SuppressError> {
        use crate::fsutil::{FsError, create_new, open_append};
        let path = path.as_ref().to_owned();
        let file = match open_append(&path) {
            Err(FsError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                match create_new(&path) {
                    // Created meanwhile by someone else: append to it if it is a regular file.
                    Err(FsError::Exists { .. }) => open_append(&path),
                    other => other,
                }
            }
            other => other,
        }
        .map_err(|e| SuppressError::Append {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        Ok(Self { file, path })
    }

    /// Appends one address as a line, with a single `write` (no interleaving with other
    /// appenders using `O_APPEND`). Line breaks in `addr` are refused.
    pub fn append(&mut self, addr: &str) -> Result<(), SuppressError> {
        let a = addr.trim();
        if a.is_empty() || a.contains(['\r', '\n']) {
            return Err(SuppressError::Append {
                path: self.path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a single address"),
            });
        }
        let mut line = String::with_capacity(a.len() + 1);
        line.push_str(a);
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| SuppressError::Append {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests;
