//! Attachments: files read and base64-encoded once (`--attach`, shared by every row), and
//! per-row `Attach:` paths confined to an attachment directory.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use lettre::message::Body;
use lettre::message::header::{ContentTransferEncoding, ContentType};

use super::error::{AttachProblem, SetupError};

/// A file ready to attach: its body base64-encoded once, and its MIME part formatted by
/// lettre once per form used (attached, or inline for `cid:` references): headers
/// (Content-Type from the name, Content-Disposition with the RFC 2231 file name), a blank
/// line, the body. Messages copy these bytes; nothing is encoded again.
#[derive(Debug)]
pub(crate) struct Attachment {
    /// The file name (last path component), used as `filename` and as the Content-ID.
    pub(crate) name: String,
    content_type: ContentType,
    body: Body,
    /// The part as an attachment, formatted on first use.
    attached: OnceLock<Vec<u8>>,
    /// The part inline, formatted on first use.
    inline: OnceLock<Vec<u8>>,
    /// About how many octets it holds once both forms are formatted.
    size: usize,
}

impl Attachment {
    /// Encodes `bytes` (base64) under `name`; the Content-Type is guessed from the name.
    pub(crate) fn new(name: String, bytes: Vec<u8>) -> Self {
        let guess = mime_guess::from_path(&name).first_or_octet_stream();
        let content_type = ContentType::parse(guess.essence_str()).unwrap_or_else(|_| {
            ContentType::parse("application/octet-stream").expect("a valid media type")
        });
        let body = match Body::new_with_encoding(bytes, ContentTransferEncoding::Base64) {
            Ok(body) => body,
            // Base64 can carry any bytes; lettre only refuses 7bit/8bit for unfit data.
            Err(bytes) => Body::new(bytes),
        };
        let size = body.len() * 3 + 3 * 1024;
        Self {
            name,
            content_type,
            body,
            attached: OnceLock::new(),
            inline: OnceLock::new(),
            size,
        }
    }

    /// The formatted MIME part: `Content-Disposition: attachment` with the RFC 2231 file name,
    /// or, when `inline`, `Content-ID: <name>` and `Content-Disposition: inline` for `cid:`
    /// references.
    pub(crate) fn formatted(&self, inline: bool) -> &[u8] {
        let format = |builder: lettre::message::Attachment| {
            builder
                .body(self.body.clone(), self.content_type.clone())
                .formatted()
        };
        if inline {
            self.inline.get_or_init(|| {
                format(lettre::message::Attachment::new_inline_with_name(
                    self.name.clone(),
                    self.name.clone(),
                ))
            })
        } else {
            self.attached
                .get_or_init(|| format(lettre::message::Attachment::new(self.name.clone())))
        }
    }
}

/// The last component of `path` as text (the name shown to recipients).
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || "attachment".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Reads and encodes a `--attach` file (once, for every row).
pub(crate) fn load_shared(path: &Path) -> Result<Attachment, SetupError> {
    let io = |source| SetupError::Attach {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(SetupError::NotAFile {
            path: path.to_owned(),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    Ok(Attachment::new(file_name(path), bytes))
}

/// The directory per-row `Attach:` paths resolve under, canonical, with a cache of the files
/// already encoded (many rows usually attach the same few files).
#[derive(Debug)]
pub(crate) struct AttachDir {
    root: PathBuf,
    /// Octets of encoded attachments the cache may hold.
    budget: usize,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    used: usize,
    /// By canonical path and the name shown to recipients.
    entries: HashMap<(PathBuf, String), Cached>,
}

#[derive(Debug)]
struct Cached {
    /// What identifies this version of the file: device, inode, length, modification time.
    stamp: (u64, u64, u64, Option<SystemTime>),
    attachment: Arc<Attachment>,
}

impl AttachDir {
    /// `path` must exist; it is canonicalized (symlinks resolved) once. Up to `budget` octets
    /// of encoded files are kept for reuse by later rows.
    pub(crate) fn new(path: &Path, budget: usize) -> Result<Self, SetupError> {
        let root = path
            .canonicalize()
            .map_err(|source| SetupError::AttachDir {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            root,
            budget,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// Resolves a rendered `Attach:` value and reads the file (or reuses it, encoded, when an
    /// earlier row attached the same unchanged file). The path must be relative, without `..`,
    /// and must stay inside the directory once symlinks are resolved; otherwise the file is not
    /// opened. It is opened without following a symlink, every row.
    pub(crate) fn load(&self, value: &str) -> Result<Arc<Attachment>, AttachProblem> {
        let value = value.trim();
        if value.is_empty() {
            return Err(AttachProblem::Empty);
        }
        let rel = Path::new(value);
        if !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(AttachProblem::Escapes);
        }
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => AttachProblem::Missing,
            _ => AttachProblem::Unreadable(e.to_string()),
        };
        let real = self.root.join(rel).canonicalize().map_err(io)?;
        if !real.starts_with(&self.root) {
            return Err(AttachProblem::Escapes);
        }
        // O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; such a file
        // is then refused as not a regular file. Reads of a regular file ignore the flag.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&real)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(AttachProblem::NotAFile);
        }
        let stamp = (meta.dev(), meta.ino(), meta.len(), meta.modified().ok());
        let key = (real, file_name(rel));
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cache.entries.get(&key).filter(|c| c.stamp == stamp) {
            return Ok(Arc::clone(&hit.attachment));
        }
        drop(cache);
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(io)?;
        let attachment = Arc::new(Attachment::new(key.1.clone(), bytes));
        let size = attachment.size;
        cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let old = cache.entries.get(&key).map_or(0, |c| c.attachment.size);
        if cache.used - old + size <= self.budget {
            cache.used = cache.used - old + size;
            cache.entries.insert(
                key,
                Cached {
                    stamp,
                    attachment: Arc::clone(&attachment),
                },
            );
        }
        Ok(attachment)
    }
}
