//! Maildir storage of accepted messages.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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
