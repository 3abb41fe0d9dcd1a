//! Attachments: files read and base64-encoded once (`--attach`, shared by every row), and
//! per-row `Attach:` paths confined to an attachment directory.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, SinglePart};

use super::error::{AttachProblem, SetupError};

/// A file ready to attach: its name, its Content-Type (from the name) and its body, already
/// base64-encoded. Cloning it copies the encoded bytes; nothing is encoded again.
#[derive(Debug, Clone)]
pub(crate) struct Attachment {
    /// The file name (last path component), used as `filename` and as the Content-ID.
    pub(crate) name: String,
    /// The part as an attachment, built once.
    attached: SinglePart,
    /// The part inline (for `cid:` references), built once.
    inline: SinglePart,
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
        let inline = lettre::message::Attachment::new_inline_with_name(name.clone(), name.clone())
            .body(body.clone(), content_type.clone());
        let attached = lettre::message::Attachment::new(name.clone()).body(body, content_type);
        Self {
            name,
            attached,
            inline,
        }
    }

    /// The MIME part: `Content-Disposition: attachment` with the RFC 2231 file name, or, when
    /// `inline`, `Content-ID: <name>` and `Content-Disposition: inline` for `cid:` references.
    pub(crate) fn part(&self, inline: bool) -> SinglePart {
        if inline {
            self.inline.clone()
        } else {
            self.attached.clone()
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

/// Opens `path` without following a symlink in its last component; must be a regular file.
fn read_regular(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
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

/// The directory per-row `Attach:` paths resolve under, canonical.
#[derive(Debug, Clone)]
pub(crate) struct AttachDir {
    root: PathBuf,
}

impl AttachDir {
    /// `path` must exist; it is canonicalized (symlinks resolved) once.
    pub(crate) fn new(path: &Path) -> Result<Self, SetupError> {
        let root = path
            .canonicalize()
            .map_err(|source| SetupError::AttachDir {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self { root })
    }

    /// Resolves a rendered `Attach:` value and reads the file. The path must be relative,
    /// without `..`, and must stay inside the directory once symlinks are resolved; otherwise
    /// the file is not opened.
    pub(crate) fn load(&self, value: &str) -> Result<Attachment, AttachProblem> {
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
        let real = self
            .root
            .join(rel)
            .canonicalize()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => AttachProblem::Missing,
                _ => AttachProblem::Unreadable(e.to_string()),
            })?;
        if !real.starts_with(&self.root) {
            return Err(AttachProblem::Escapes);
        }
        match read_regular(&real) {
            Ok(Some(bytes)) => Ok(Attachment::new(file_name(rel), bytes)),
            Ok(None) => Err(AttachProblem::NotAFile),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AttachProblem::Missing),
            Err(e) => Err(AttachProblem::Unreadable(e.to_string())),
        }
    }
}
