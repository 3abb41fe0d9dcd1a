//! Creating files next to a path the user named, without following planted symlinks.
//!
//! A report, its journal (`REPORT.journal`), carry file (`REPORT.resume`) and temporary files
//! live in a directory that may be shared (`/tmp`, a team's log directory). Someone else who
//! can write there could plant `REPORT.journal -> ~/.ssh/authorized_keys` and wait for
//! pipemail to truncate or append to it. These helpers never follow a symlink in the last
//! path component and never truncate an existing file in place:
//!
//! * [`create_new`]: `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600 (fails if anything exists).
//! * [`replace_file`]: for a side file that may be left over from an earlier run: an existing
//!   *regular* file is removed and a new one created as by [`create_new`]; a symlink (or
//!   anything but a regular file) is refused with [`FsError::Symlink`] /
//!   [`FsError::NotRegular`] and left alone.
//! * [`open_append`]: an existing regular file opened for appending with `O_NOFOLLOW`.
//! * [`AtomicFile`]: write a temporary file in the destination's directory, then
//!   [`AtomicFile::commit`] renames it into place; readers see the old file or the new one,
//!   never half of it, and an uncommitted temporary file is removed on drop. A symlink at
//!   the destination is refused, not replaced and not followed.
//!
//! A planted symlink produces a typed error naming the path; the symlink's target is never
//! opened, so its content and mode stay as they were. Only the last component is protected:
//! directories on the way are the user's choice. Unix only (`O_NOFOLLOW`).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of files pipemail creates: reports hold addresses, so owner-only.
pub const NEW_FILE_MODE: u32 = 0o600;

/// Why a file could not be created or opened safely.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The last component of the path is a symbolic link; it was not followed.
    #[error("{}: is a symbolic link; refusing to follow it (remove it or name another file)", .path.display())]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// The path exists and is not a regular file (a directory, FIFO, device…).
    #[error("{}: exists and is not a regular file", .path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
    /// [`create_new`]: something already exists at the path.
    #[error("{}: already exists", .path.display())]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// Any other I/O error (shown in the message, so not repeated as a source).
    #[error("{}: {error}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
}

impl FsError {
    fn io(path: &Path, error: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            error,
        }
    }

    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Symlink { path }
            | Self::NotRegular { path }
            | Self::Exists { path }
            | Self::Io { path, .. } => path,
        }
    }
}

/// What is at `path`, not following a symlink: `None` if nothing.
fn classify(path: &Path) -> Result<Option<fs::FileType>, FsError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m.file_type())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FsError::io(path, e)),
    }
}

/// True when `path` itself (not through a symlink) is the null device, the same device as
/// `/dev/null`: what is written there is discarded, so a report there need not be written.
pub fn is_null_device(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(m) = fs::symlink_metadata(path) else {
        return false;
    };
    m.file_type().is_char_device()
        && fs::metadata("/dev/null")
            .is_ok_and(|n| n.file_type().is_char_device() && n.rdev() == m.rdev())
}

/// Turns an `open` error into the typed error for what is at `path`.
fn open_error(path: &Path, e: io::Error) -> FsError {
    match classify(path) {
        Ok(Some(t)) if t.is_symlink() => FsError::Symlink {
            path: path.to_owned(),
        },
        Ok(Some(t)) if !t.is_file() => FsError::NotRegular {
            path: path.to_owned(),
        },
        Ok(Some(_)) if e.kind() == io::ErrorKind::AlreadyExists => FsError::Exists {
            path: path.to_owned(),
        },
        _ => FsError::io(path, e),
    }
}

/// Creates a new file for writing with mode 0600: fails if anything, a symlink included
/// (even a dangling one), exists at `path`.
pub fn create_new(path: &Path) -> Result<File, FsError> {
    create_new_mode(path, NEW_FILE_MODE)
}

fn create_new_mode(path: &Path, mode: u32) -> Result<File, FsError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| open_error(path, e))
}

/// Creates `path` afresh (mode 0600) for a side file that an earlier run may have left: an
/// existing regular file is removed first; a symlink or other non-regular file is an error
/// and stays untouched. Race-free: if a symlink is planted between the removal and the
/// creation, the creation fails with [`FsError::Symlink`].
pub fn replace_file(path: &Path) -> Result<File, FsError> {
    match classify(path)? {
        None => {}
        Some(t) if t.is_symlink() => {
            return Err(FsError::Symlink {
                path: path.to_owned(),
            });
        }
        Some(t) if t.is_file() => match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(FsError::io(path, e)),
            _ => {}
        },
        Some(t) if t.is_char_device() => {
            // `--report /dev/null` (a device): written to, never replaced.
            return OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| open_error(path, e));
        }
        Some(_) => {
            return Err(FsError::NotRegular {
                path: path.to_owned(),
            });
        }
    }
    create_new(path)
}

/// Opens an existing regular file for appending without following a symlink.
pub fn open_append(path: &Path) -> Result<File, FsError> {
    let file = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    // O_NONBLOCK keeps a planted FIFO from blocking the open; refuse anything not regular.
    let meta = file.metadata().map_err(|e| FsError::io(path, e))?;
    if !meta.is_file() {
        return Err(FsError::NotRegular {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// `path` with `suffix` appended to its file name: `side_path("r.csv", ".journal")` is
/// `r.csv.journal`.
pub fn side_path(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file written under a temporary name beside its destination and renamed into place by
/// [`AtomicFile::commit`]. Dropped without commit, the temporary file is removed.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    temp: PathBuf,
    dest: PathBuf,
}

impl AtomicFile {
    /// Starts writing `dest`: creates `.<name>.<pid>.<n>.tmp` in the same directory (mode
    /// 0600, or the mode of the regular file `dest` replaces). Fails with
    /// [`FsError::Symlink`] if `dest` is a symlink and [`FsError::NotRegular`] if it is, say,
    /// a directory.
    pub fn create(dest: &Path) -> Result<Self, FsError> {
        let mode = match fs::symlink_metadata(dest) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(FsError::Symlink {
                    path: dest.to_owned(),
                });
            }
            Ok(m) if m.is_file() => m.permissions().mode() & 0o7777,
            Ok(_) => {
                return Err(FsError::NotRegular {
                    path: dest.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => NEW_FILE_MODE,
            Err(e) => return Err(FsError::io(dest, e)),
        };
        let name = dest.file_name().ok_or_else(|| FsError::NotRegular {
            path: dest.to_owned(),
        })?;
        let dir = dest.parent().unwrap_or_else(|| Path::new(""));
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut temp_name = OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".{}.{n}.tmp", std::process::id()));
            let temp = dir.join(temp_name);
            match create_new_mode(&temp, NEW_FILE_MODE) {
                Ok(file) => {
                    // The umask may have narrowed the mode; set it exactly.
                    file.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(|e| FsError::io(&temp, e))?;
                    return Ok(Self {
                        file: Some(file),
                        temp,
                        dest: dest.to_owned(),
                    });
                }
                Err(FsError::Exists { .. } | FsError::Symlink { .. }) => continue,
                // Name the destination: the temporary name means nothing to the user.
                Err(FsError::Io { error, .. }) => return Err(FsError::io(dest, error)),
                Err(e) => return Err(e),
            }
        }
    }

    /// The file being written.
    pub fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("the file is only taken by commit, which consumes self")
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes and syncs the temporary file and renames it to the destination. Refuses (and
    /// removes the temporary file) if a symlink appeared at the destination meanwhile.
    pub fn commit(mut self) -> Result<(), FsError> {
        let mut file = self
            .file
            .take()
            .expect("the file is only taken by commit, which consumes self");
        file.flush().map_err(|e| FsError::io(&self.temp, e))?;
        file.sync_all().map_err(|e| FsError::io(&self.temp, e))?;
        drop(file);
        if classify(&self.dest)?.is_some_and(|t| t.is_symlink()) {
            return Err(FsError::Symlink {
                path: self.dest.clone(),
            });
        }
        // rename(2) replaces a symlink planted after the check rather than following it.
        fs::rename(&self.temp, &self.dest).map_err(|e| FsError::io(&self.dest, e))?;
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn target(dir: &Path) -> PathBuf {
        let t = dir.join("precious");
        fs::write(&t, b"keep me").expect("write");
        fs::set_permissions(&t, fs::Permissions::from_mode(0o644)).expect("chmod");
        t
    }

    #[test]
    fn null_device_is_recognized_only_as_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(is_null_device(Path::new("/dev/null")));
        let link = dir.path().join("null");
        symlink("/dev/null", &link).expect("symlink");
        assert!(!is_null_device(&link), "a symlink is not followed");
        assert!(!is_null_device(&target(dir.path())));
        assert!(!is_null_device(&dir.path().join("missing")));
        assert!(!is_null_device(dir.path()));
        if Path::new("/dev/zero").exists() {
            assert!(!is_null_device(Path::new("/dev/zero")));
        }
    }

    fn unchanged(t: &Path) {
        assert_eq!(fs::read(t).expect("read"), b"keep me");
        let mode = fs::metadata(t).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn planted_symlinks_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(dir.path());
        let link = dir.path().join("r.csv.journal");
        symlink(&t, &link).expect("symlink");
        assert!(matches!(create_new(&link), Err(FsError::Symlink { .. })));
        assert!(matches!(replace_file(&link), Err(FsError::Symlink { .. })));
        assert!(matches!(open_append(&link), Err(FsError::Symlink { .. })));
        assert!(matches!(
            AtomicFile::create(&link),
            Err(FsError::Symlink { .. })
        ));
        let dangling = dir.path().join("dangling");
        symlink(dir.path().join("nowhere"), &dangling).expect("symlink");
        assert!(matches!(
            create_new(&dangling),
            Err(FsError::Symlink { .. })
        ));
        assert!(!dir.path().join("nowhere").exists());
        unchanged(&t);
        assert!(
            fs::symlink_metadata(&link)
                .expect("still there")
                .is_symlink()
        );
        let msg = create_new(&link).expect_err("symlink").to_string();
        assert!(msg.contains("symbolic link"), "{msg}");
    }

    #[test]
    fn symlink_planted_before_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(dir.path());
        let dest = dir.path().join("out.csv");
        let mut f = AtomicFile::create(&dest).expect("create");
        f.write_all(b"new").expect("write");
        let temp = f.temp_path().to_owned();
        symlink(&t, &dest).expect("plant");
        assert!(matches!(f.commit(), Err(FsError::Symlink { .. })));
        assert!(!temp.exists(), "temporary file removed");
        unchanged(&t);
    }

    #[test]
    fn create_replace_append_atomic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.csv.journal");
        let mut f = create_new(&p).expect("new");
        f.write_all(b"old").expect("write");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(create_new(&p), Err(FsError::Exists { .. })));
        let mut f = open_append(&p).expect("append");
        f.write_all(b"+more").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"old+more");
        let mut f = replace_file(&p).expect("replace");
        f.write_all(b"fresh").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"fresh");
        assert!(matches!(
            open_append(dir.path()),
            Err(FsError::NotRegular { .. }) | Err(FsError::Io { .. })
        ));
        assert!(matches!(
            open_append(&dir.path().join("none")),
            Err(FsError::Io { .. })
        ));

        let dest = dir.path().join("out.csv");
        fs::write(&dest, b"old report").expect("write");
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o640)).expect("chmod");
        let mut a = AtomicFile::create(&dest).expect("atomic");
        a.write_all(b"new report").expect("write");
        assert_eq!(fs::read(&dest).expect("read"), b"old report", "not yet");
        a.commit().expect("commit");
        assert_eq!(fs::read(&dest).expect("read"), b"new report");
        let mode = fs::metadata(&dest).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "mode of the replaced file kept");
        let mut a = AtomicFile::create(&dest).expect("atomic");
        a.write_all(b"abandoned").expect("write");
        drop(a);
        assert_eq!(fs::read(&dest).expect("read"), b"new report");
        let left: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(left.len(), 2, "no temporary files left: {left:?}");
        assert_eq!(
            side_path(Path::new("a/r.csv"), ".journal"),
            Path::new("a/r.csv.journal")
        );
    }
}
