//! Frames: lettre's MIME framing of a message without attachments (the part headers,
//! boundaries and multipart headers), formatted once per shape and reused by every message of
//! that shape. A shape is the transfer encoding of the text part and, with an HTML part, of
//! the HTML part. A message copies the frame's pieces with its own encoded bodies in between:
//! the bytes lettre would produce for that message with the frame's boundary, without building
//! and formatting a lettre tree per message.
//!
//! A frame's boundary is one of lettre's random boundaries, chosen when the frame is built
//! and checked against every message's bodies as written; a message where it occurs is
//! composed by the general path with fresh boundaries instead.

use std::sync::OnceLock;

use lettre::message::Body;
use lettre::message::header::ContentTransferEncoding;
use memchr::memmem::Finder;

use super::error::ComposeError;
use super::parts::{self, Content, TextPart};

/// Stands for the text body while the frame is formatted (lettre framing has no NUL).
const TEXT_SLOT: &[u8] = b"\0pipemail text body\0";
/// Stands for the HTML body.
const HTML_SLOT: &[u8] = b"\0pipemail html body\0";

/// Transfer encodings a frame can hold (lettre's five).
const ENCODINGS: usize = 5;

/// The frames of one composer, by shape, built on first use.
#[derive(Debug)]
pub(crate) struct Frames {
    /// `None`: the shape could not be framed; such messages take the general path.
    cells: [OnceLock<Option<Frame>>; ENCODINGS * (ENCODINGS + 1)],
}

impl Default for Frames {
    fn default() -> Self {
        Self {
            cells: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl Frames {
    /// The frame of a message whose text part has encoding `text` and whose HTML part (if
    /// any) has encoding `html`.
    pub(crate) fn get(
        &self,
        text: ContentTransferEncoding,
        html: Option<ContentTransferEncoding>,
    ) -> Option<&Frame> {
        let i = index(text) * (ENCODINGS + 1) + html.map_or(0, |h| 1 + index(h));
        self.cells[i]
            .get_or_init(|| Frame::new(text, html).ok())
            .as_ref()
    }
}

fn index(e: ContentTransferEncoding) -> usize {
    match e {
        ContentTransferEncoding::SevenBit => 0,
        ContentTransferEncoding::EightBit => 1,
        ContentTransferEncoding::QuotedPrintable => 2,
        ContentTransferEncoding::Base64 => 3,
        ContentTransferEncoding::Binary => 4,
    }
}

/// lettre's formatting of one shape, cut where the bodies go.
#[derive(Debug)]
pub(crate) struct Frame {
    /// Before the text body; with HTML, between the text and HTML bodies; after the last body.
    pieces: Vec<Vec<u8>>,
    /// A single `text/plain` part: the body is followed by CRLF only if it does not end with
    /// one (as [`parts::Built::finish`] writes it).
    single: bool,
    /// The frame's boundaries, none of which may occur in a body.
    boundaries: Vec<Finder<'static>>,
}

impl Frame {
    fn new(
        text: ContentTransferEncoding,
        html: Option<ContentTransferEncoding>,
    ) -> Result<Self, ComposeError> {
        let slot = |bytes: &[u8], encoding| Body::dangerous_pre_encoded(bytes.to_vec(), encoding);
        let built = parts::build(Content {
            text: slot(TEXT_SLOT, text),
            html: html.map(|h| slot(HTML_SLOT, h)),
            inline: Vec::new(),
            attached: Vec::new(),
        })?;
        let boundaries = built
            .boundaries()
            .iter()
            .map(|b| Finder::new(b.as_bytes()).into_owned())
            .collect();
        let single = built.boundaries().is_empty();
        let formatted = built.finish(Vec::new())?;
        let mut pieces = Vec::with_capacity(3);
        let mut rest = &formatted[..];
        for slot in std::iter::once(TEXT_SLOT).chain(html.map(|_| HTML_SLOT)) {
            let at = memchr::memmem::find(rest, slot).ok_or(ComposeError::Boundary)?;
            pieces.push(rest[..at].to_vec());
            rest = &rest[at + slot.len()..];
        }
        // A single part's closing CRLF depends on the body; see `write`.
        pieces.push(if single { Vec::new() } else { rest.to_vec() });
        // Each slot exactly once: no NUL (of a slot) is left in the framing.
        if memchr::memchr(0, rest).is_some() || pieces.iter().any(|p| p.contains(&0)) {
            return Err(ComposeError::Boundary);
        }
        Ok(Self {
            pieces,
            single,
            boundaries,
        })
    }

    /// The frame's boundaries.
    #[cfg(test)]
    pub(crate) fn boundaries(&self) -> Vec<&[u8]> {
        self.boundaries.iter().map(Finder::needle).collect()
    }

    /// Appends the message body (the part headers, a blank line, the bodies, the boundaries)
    /// to `out`, which holds the message's header fields. `html` must be given exactly when
    /// the frame has an HTML part. False if a boundary occurs in a body: `out` is then
    /// incomplete and must be truncated back by the caller.
    pub(crate) fn write(
        &self,
        out: &mut Vec<u8>,
        text: &TextPart,
        html: Option<&TextPart>,
    ) -> bool {
        debug_assert_eq!(self.pieces.len(), 2 + usize::from(html.is_some()));
        let framing: usize = self.pieces.iter().map(Vec::len).sum();
        out.reserve(framing + text.len_hint() + html.map_or(0, TextPart::len_hint) + 2);
        let bodies = std::iter::once(text).chain(html);
        for (piece, body) in self.pieces.iter().zip(bodies) {
            out.extend_from_slice(piece);
            let start = out.len();
            body.write(out);
            let written = &out[start..];
            if self.boundaries.iter().any(|b| b.find(written).is_some()) {
                return false;
            }
        }
        if let Some(last) = self.pieces.last() {
            out.extend_from_slice(last);
        }
        if self.single && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        true
    }
}
