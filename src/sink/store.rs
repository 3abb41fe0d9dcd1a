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
        self.write_named(&name, data)
    }

    /// Writes `tmp/<name>` and renames it to `new/<name>`.
    fn write_named(&self, name: &str, data: &[u8]) -> std::io::Result<PathBuf> {
        let tmp = self.dir.join("tmp").join(name);
        let new = self.dir.join("new").join(name);
        // O_EXCL | O_NOFOLLOW, mode 0600: never writes through something planted in tmp/.
        let mut file = crate::fsutil::create_new(&tmp).map_err(std::io::Error::other)?;
        let result = file.write_all(data).and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, &new)
        });
        if result.is_err() {
            // Only the file created above: a planted one made `create_new` fail first.
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_symlink_in_tmp_is_not_followed() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().expect("tempdir");
        let md = Maildir::create(dir.path(), "h").expect("create");
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep").expect("write");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        symlink(&target, dir.path().join("tmp").join("planted")).expect("plant");
        let err = md.write_named("planted", b"evil").expect_err("refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
        let mode = std::fs::metadata(&target)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
        assert!(!dir.path().join("new").join("planted").exists());
        let path = md.deliver("Y", b"ok").expect("deliver");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "new messages are owner-only");
    }

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
