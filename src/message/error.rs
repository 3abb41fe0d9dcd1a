//! Errors of message composition: [`SetupError`] stops the run before any row,
//! [`ComposeError`] fails one row (stage `input`) and the others go on.

use std::path::PathBuf;

use crate::template::RowError;

/// The composer could not be set up: a `--attach` file or the attachment directory is
/// unusable. Nothing has been sent.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A `--attach` file could not be opened or read.
    #[error("cannot read the attachment {}: {source}", path.display())]
    Attach {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `--attach` path is not a regular file.
    #[error("the attachment {} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The directory `Attach:` paths resolve under is unusable.
    #[error("the attachment directory {}: {source}", path.display())]
    AttachDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl SetupError {
    /// True if a file or directory does not exist (exit 66, "an input file is missing"), false
    /// for other problems (exit 65 or 74 as the caller sees fit).
    pub fn is_missing(&self) -> bool {
        match self {
            Self::Attach { source, .. } | Self::AttachDir { source, .. } => {
                source.kind() == std::io::ErrorKind::NotFound
            }
            Self::NotAFile { .. } => false,
        }
    }
}

/// Why one row's message could not be composed. The row fails at stage `input`; the others go
/// on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    /// The template could not be rendered for this row.
    #[error(transparent)]
    Render(#[from] RowError),
    /// An `Attach:` path of this row cannot be attached. The file was not read.
    #[error("Attach: {path:?}: {problem}")]
    Attach {
        /// The path as rendered.
        path: String,
        /// What is wrong with it.
        problem: AttachProblem,
    },
    /// A `Cc:` or `Bcc:` value holds something that is not a valid address.
    #[error("{field}: {value:?} is not a valid address")]
    Address {
        /// The header field (`Cc` or `Bcc`).
        field: String,
        /// The offending item of the address list.
        value: String,
    },
    /// The template's own `Content-Type` (not text/plain, text/html or text/markdown) means
    /// its body is sent as written, which cannot carry an HTML part or attachments.
    #[error(
        "the template's Content-Type {content_type:?} is sent as written; it cannot have an HTML part or attachments (use text/plain, text/html or text/markdown)"
    )]
    RawBody {
        /// The template's Content-Type value.
        content_type: String,
    },
    /// The HTML could not be converted to text for the text/plain part.
    #[error("cannot derive the text part from the HTML: {0}")]
    HtmlToText(String),
    /// No MIME boundary absent from the content was found (practically impossible: boundaries
    /// are 40 random characters).
    #[error("no MIME boundary absent from the message content was found")]
    Boundary,
}

/// What is wrong with an `Attach:` path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachProblem {
    /// The path is empty.
    #[error("the path is empty")]
    Empty,
    /// The path is absolute, has a `..` component, or resolves (through a symlink) outside the
    /// attachment directory.
    #[error("the path leads outside the attachment directory")]
    Escapes,
    /// No such file.
    #[error("no such file in the attachment directory")]
    Missing,
    /// Not a regular file.
    #[error("not a regular file")]
    NotAFile,
    /// The file exists but cannot be opened or read.
    #[error("cannot be read: {0}")]
    Unreadable(String),
}
