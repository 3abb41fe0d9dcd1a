//! Accepted messages: what the sink keeps of them, its counters, and Maildir storage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Index of the session (0-based, in accept order) that delivered it.
    pub session: u64,
    /// The queue id given in the `250 2.0.0 Ok: queued as <id>` reply (also in the Maildir
    /// file name).
    pub queue_id: String,
    /// The MAIL FROM address, without angle brackets (empty for `<>`).
    pub from: String,
    /// Recipients whose RCPT got a 2xx reply, in order.
    pub rcpts: Vec<String>,
    /// The content exactly as received (see the [sink documentation](super)).
    pub data: Vec<u8>,
    /// Whether it came with BDAT (else DATA).
    pub via_bdat: bool,
}

/// Counters of a sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Connections accepted.
    pub sessions: u64,
    /// Messages stored.
    pub messages: u64,
    /// Recipients of the stored messages (one per accepted RCPT of a stored message).
    pub recipients: u64,
    /// RCPT commands answered with a 4xx or 5xx reply (rules, limits, syntax, injected faults).
    pub rejected_recipients: u64,
    /// Octets of stored message content.
    pub bytes: u64,
}

/// A Maildir (`tmp/`, `new/`, `cur/`), written the classic way: the file is created in `tmp/`
/// and renamed into `new/` once complete, so readers never see a partial message.
#[derive(Debug)]
pub(crate) struct Maildir {
    dir: PathBuf,
    host: String,
    pid: u32,
}

impl Maildir {
    /// Creates the Maildir's folders if missing.
    pub(crate) fn create(dir: &Path, hostname: &str) -> std::io::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // '/' and ':' have a meaning in Maildir names; keep the host part plain.
        let host = hostname
            .chars()
            .map(|c| if c == '/' || c == ':' { '_' } else { c })
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            host,
            pid: std::process::id(),
        })
    }

    /// Writes one message; `queue_id` is unique in this process, which makes the name unique.
    /// Returns the path in `new/`. The file is not fsynced: the sink trades durability for speed.
    pub(crate) fn deliver(&self, queue_id: &str, data: &[u8]) -> std::io::Result<PathBuf> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            self.pid,
            queue_id,
            self.host
        );
        let tmp = self.dir.join("tmp").join(&name);
        let new = self.dir.join("new").join(&name);
        let result = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(data)?;
            drop(file);
            std::fs::rename(&tmp, &new)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_moves_into_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = Maildir::create(dir.path(), "host:with/odd").expect("create");
        let path = md.deliver("00000000002A", b"hello\r\n").expect("deliver");
        assert_eq!(std::fs::read(&path).expect("read"), b"hello\r\n");
        assert!(path.starts_with(dir.path().join("new")));
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(name.ends_with(".host_with_odd"), "{name}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp"))
                .expect("tmp")
                .count(),
            0
        );
    }
}
