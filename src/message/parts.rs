//! The MIME tree of a message, built with lettre's `message` module: transfer encodings per
//! part, multipart nesting, boundaries checked against the content.

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, MultiPart, MultiPartBuilder, SinglePart};

use super::attach::Attachment;
use super::error::ComposeError;
use crate::template::{MAX_LINE, push_normalized};

/// How many fresh boundaries to try before giving up (each is 40 random alphanumerics).
const BOUNDARY_TRIES: usize = 8;

/// A text body and its transfer encoding: `7bit` when it is ASCII with no line over 998 octets
/// and no NUL, `8bit` likewise for UTF-8 text when `eight_bit` (the server offers 8BITMIME),
/// otherwise quoted-printable (mostly ASCII) or base64 (lettre's encoding), so no line is ever
/// longer than 998 octets and nothing 8-bit reaches a server that did not offer 8BITMIME.
pub(crate) enum TextPart<'a> {
    /// `7bit` or `8bit`: the rendered text, CRLF-normalized when written (one copy).
    Verbatim(&'a str, ContentTransferEncoding),
    /// Quoted-printable or base64, encoded by lettre.
    Encoded(Body),
}

impl TextPart<'_> {
    /// Chooses the encoding of `text` (see [`TextPart`]).
    pub(crate) fn new(text: &str, eight_bit: bool) -> TextPart<'_> {
        if fits_verbatim(text.as_bytes()) {
            if text.is_ascii() {
                return TextPart::Verbatim(text, ContentTransferEncoding::SevenBit);
            }
            if eight_bit {
                return TextPart::Verbatim(text, ContentTransferEncoding::EightBit);
            }
        }
        let mut crlf = Vec::with_capacity(text.len() + text.len() / 32 + 2);
        push_normalized(&mut crlf, text);
        // Quoted-printable while at most a third of the octets need escaping, else base64.
        let escaped = crlf
            .iter()
            .filter(|&&b| !matches!(b, b'\t' | b'\r' | b'\n' | b' '..=b'~'))
            .count();
        let encoding = if escaped * 3 <= crlf.len() {
            ContentTransferEncoding::QuotedPrintable
        } else {
            ContentTransferEncoding::Base64
        };
        let text = String::from_utf8(crlf).unwrap_or_else(|e| {
            // `push_normalized` copies a `str`: always UTF-8.
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        });
        TextPart::Encoded(match Body::new_with_encoding(text, encoding) {
            Ok(body) => body,
            Err(bytes) => Body::new(bytes),
        })
    }

    /// The transfer encoding.
    pub(crate) fn encoding(&self) -> ContentTransferEncoding {
        match self {
            Self::Verbatim(_, encoding) => *encoding,
            Self::Encoded(body) => body.encoding(),
        }
    }

    /// Appends the encoded body (CRLF line ends) to `out`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self {
            // An empty text is one empty line, as `push_normalized` makes it in a new buffer.
            Self::Verbatim("", _) => out.extend_from_slice(b"\r\n"),
            Self::Verbatim(text, _) => push_normalized(out, text),
            Self::Encoded(body) => out.extend_from_slice(body.as_ref()),
        }
    }

    /// About how many octets [`TextPart::write`] appends.
    pub(crate) fn len_hint(&self) -> usize {
        match self {
            Self::Verbatim(text, _) => text.len() + text.len() / 32 + 2,
            Self::Encoded(body) => body.len(),
        }
    }

    /// The encoded body for lettre.
    pub(crate) fn into_body(self) -> Body {
        match self {
            Self::Verbatim(text, encoding) => {
                let mut crlf = Vec::with_capacity(text.len() + text.len() / 32 + 2);
                push_normalized(&mut crlf, text);
                Body::dangerous_pre_encoded(crlf, encoding)
            }
            Self::Encoded(body) => body,
        }
    }
}

/// True if `text` has no NUL and no line (ended by CRLF, LF or a lone CR) over 998 octets:
/// it can go as it is, CRLF-normalized.
fn fits_verbatim(text: &[u8]) -> bool {
    if memchr::memchr(0, text).is_some() {
        return false;
    }
    let mut start = 0;
    for end in memchr::memchr2_iter(b'\r', b'\n', text) {
        if end - start > MAX_LINE {
            return false;
        }
        start = end + 1;
    }
    text.len() - start <= MAX_LINE
}

/// [`TextPart::new`] as a lettre body.
#[cfg(test)]
pub(crate) fn text_body(text: &str, eight_bit: bool) -> Body {
    TextPart::new(text, eight_bit).into_body()
}

/// A part of the tree.
pub(crate) enum Node {
    Single(SinglePart),
    Multi(MultiPart),
}

impl Node {
    fn add_to(self, multi: MultiPart) -> MultiPart {
        match self {
            Self::Single(s) => multi.singlepart(s),
            Self::Multi(m) => multi.multipart(m),
        }
    }
}

/// A built message body: the tree, with a small placeholder part standing for each
/// attachment, and the attachments' formatted parts to put in their place.
pub(crate) struct Built<'a> {
    node: Node,
    /// The boundaries of the multiparts, outermost last.
    boundaries: Vec<String>,
    /// (the placeholder part as lettre formats it, the attachment part's formatted bytes)
    splices: Vec<(Vec<u8>, &'a [u8])>,
}

impl Built<'_> {
    /// The boundaries of the multiparts (none for a single part).
    pub(crate) fn boundaries(&self) -> &[String] {
        &self.boundaries
    }

    /// The message: `head` (the header fields before the part's own), then the tree's
    /// headers, a blank line and its body, ending with CRLF. lettre formats the tree with the
    /// small placeholders; each attachment's part, formatted once when it was loaded, is then
    /// copied in place of its placeholder, straight into a buffer of the final size. The
    /// framing (boundaries, part headers) is lettre's; attachments are never re-encoded.
    pub(crate) fn finish(self, mut head: Vec<u8>) -> Result<Vec<u8>, ComposeError> {
        let formatted = match self.node {
            Node::Single(s) => {
                head.extend_from_slice(s.headers().to_string().as_bytes());
                head.extend_from_slice(b"\r\n");
                head.extend_from_slice(s.raw_body());
                if !head.ends_with(b"\r\n") {
                    head.extend_from_slice(b"\r\n");
                }
                return Ok(head);
            }
            Node::Multi(m) => m.formatted(),
        };
        let extra: usize = self.splices.iter().map(|(_, real)| real.len()).sum();
        let mut out = Vec::with_capacity(head.len() + formatted.len() + extra);
        out.extend_from_slice(&head);
        let mut rest = &formatted[..];
        for (placeholder, real) in &self.splices {
            let at = find(rest, placeholder).ok_or(ComposeError::Boundary)?;
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(real);
            rest = &rest[at + placeholder.len()..];
        }
        out.extend_from_slice(rest);
        Ok(out)
    }
}

/// What goes into a message besides its header fields.
pub(crate) struct Content<'a> {
    /// The text/plain body, encoded.
    pub(crate) text: Body,
    /// The text/html body, encoded.
    pub(crate) html: Option<Body>,
    /// Files referenced from the HTML by `cid:` (multipart/related).
    pub(crate) inline: Vec<&'a Attachment>,
    /// Other files (multipart/mixed).
    pub(crate) attached: Vec<&'a Attachment>,
}

/// Builds the tree: `mixed(related(alternative(text, html), inline…), attachments…)`, each
/// level only when needed.
pub(crate) fn build<'a>(content: Content<'a>) -> Result<Built<'a>, ComposeError> {
    // Boundaries are chosen first, while the text bodies can still be searched: a boundary
    // must occur in no text part (attachments are base64, which has no '-').
    let mut taken: Vec<String> = Vec::new();
    let (alt, related, mixed) = {
        let mut texts: Vec<&[u8]> = vec![content.text.as_ref()];
        if let Some(html) = &content.html {
            texts.push(html.as_ref());
        }
        let mut pick = |wanted: bool, kind: fn() -> MultiPartBuilder| {
            wanted.then(|| fresh(kind, &texts, &mut taken)).transpose()
        };
        (
            pick(content.html.is_some(), MultiPart::alternative)?,
            pick(!content.inline.is_empty(), MultiPart::related)?,
            pick(!content.attached.is_empty(), MultiPart::mixed)?,
        )
    };
    let mut node = Node::Single(
        SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .body(content.text),
    );
    if let (Some(alt), Some(html)) = (alt, content.html) {
        let html = SinglePart::builder()
            .header(ContentType::TEXT_HTML)
            .body(html);
        node = Node::Multi(node.add_to(alt).singlepart(html));
    }
    // Placeholders are named after a boundary, which occurs in no text part.
    let tag = taken.last().cloned().unwrap_or_default();
    let mut splices = Vec::new();
    let mut placeholder = |real: &'a [u8]| {
        let token = format!("{tag}.{}", splices.len());
        let part = SinglePart::builder().header(ContentType::TEXT_PLAIN).body(
            Body::dangerous_pre_encoded(token.into_bytes(), ContentTransferEncoding::SevenBit),
        );
        splices.push((part.formatted(), real));
        part
    };
    if let Some(related) = related {
        let mut related = node.add_to(related);
        for a in content.inline {
            related = related.singlepart(placeholder(a.formatted(true)));
        }
        node = Node::Multi(related);
    }
    if let Some(mixed) = mixed {
        let mut mixed = node.add_to(mixed);
        for a in content.attached {
            mixed = mixed.singlepart(placeholder(a.formatted(false)));
        }
        node = Node::Multi(mixed);
    }
    Ok(Built {
        node,
        boundaries: taken,
        splices,
    })
}

/// An empty multipart whose random boundary occurs in none of `texts` and differs from the
/// boundaries already `taken`; its boundary is added to `taken`.
fn fresh(
    kind: fn() -> MultiPartBuilder,
    texts: &[&[u8]],
    taken: &mut Vec<String>,
) -> Result<MultiPart, ComposeError> {
    for _ in 0..BOUNDARY_TRIES {
        let multi = kind().build();
        let boundary = multi.boundary();
        let clash =
            taken.contains(&boundary) || texts.iter().any(|t| contains(t, boundary.as_bytes()));
        if !clash {
            taken.push(boundary);
            return Ok(multi);
        }
    }
    Err(ComposeError::Boundary)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(haystack, needle)
}
