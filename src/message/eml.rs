//! Writing rendered messages to files (`send --dry-run --output DIR`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Writes `data` to `DIR/<row>.eml` and returns the path. The file is created new, never
/// through a symlink (`O_CREAT|O_EXCL|O_NOFOLLOW`): an existing file or symlink of that name
/// is an error ([`std::io::ErrorKind::AlreadyExists`]), nothing is overwritten. Mode 0600
/// (before the umask): a message may hold personal data.
pub fn write_eml(dir: &Path, row: u64, data: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("{row}.eml"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    file.write_all(data)?;
    file.flush()?;
    Ok(path)
}
