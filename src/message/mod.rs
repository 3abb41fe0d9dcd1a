//! Campaign messages as MIME (RFC 2045–2049): a rendered [`Template`] composed with lettre's
//! `message` module into text, HTML and Markdown alternatives, inline images and attachments.
//!
//! # What a template becomes
//!
//! | template | message |
//! | --- | --- |
//! | text body | `text/plain` |
//! | text body + HTML template ([`Template::add_html`]) | `multipart/alternative`: text, then HTML |
//! | empty text body + HTML template | the same, the text derived from the HTML (html2text) |
//! | `Content-Type: text/html` | the body is HTML: alternative of derived text and the HTML |
//! | `Content-Type: text/markdown` | alternative of the Markdown source (text) and its HTML (pulldown-cmark) |
//! | `cid:NAME` in the HTML, NAME an attached file | `multipart/related`: HTML and inline file |
//! | `--attach FILE`, `Attach: PATH` | `multipart/mixed` with the files (base64, RFC 2231 names) |
//! | any other `Content-Type` (e.g. a hand-written multipart) | headers and body sent as written |
//!
//! Values are HTML-escaped wherever the body is or becomes HTML (`{{ x | safe }}` opts out).
//!
//! * **Transfer encodings** per text part: `7bit` when the text is ASCII with no line over 998
//!   octets, `8bit` for such UTF-8 text when the server offers 8BITMIME
//!   ([`ComposeOptions::eight_bit_mime`]), quoted-printable or base64 otherwise; attachments are
//!   base64. No line of a composed message is over 998 octets and no template is refused for
//!   long lines (parse it with [`Template::parse_for_mime`]).
//! * **Header fields**: the template's own, rendered injection-safe by [`crate::template`];
//!   `Content-Type`, `Content-Transfer-Encoding` and `MIME-Version` are replaced; `Attach:`
//!   fields are removed (one file each, rendered, repeatable); a field with a line over 998
//!   octets is RFC 2047-encoded and folded.
//! * **Envelope**: `Cc:` and `Bcc:` addresses are returned in [`Composed::extra_recipients`];
//!   the `Bcc:` field is removed (as `sendmail -t` does); an invalid address fails the row.
//! * **Attachments**: `--attach` files are read and encoded once ([`Composer::new`]); each
//!   attachment's MIME part is formatted once and copied into every message in place of a
//!   small placeholder part that lettre frames. `Attach:` paths resolve under
//!   [`ComposerOptions::attach_dir`]; one that leaves it (absolute, `..`, a symlink out), is
//!   missing or unreadable fails that row ([`ComposeError::Attach`]) and is never read.
//!   Files attached by several rows are encoded once while unchanged
//!   ([`ComposerOptions::attach_cache`]).
//! * **Boundaries** are lettre's random 40-character strings, checked against the text parts
//!   so no value can close a part.
//! * **Frames**: a message without attachments copies lettre's framing (part headers,
//!   multipart header, boundary lines), formatted once per shape (the parts' transfer
//!   encodings), around its bodies, each written once; the frame's boundary is checked against
//!   every message's bodies, and a message holding it is composed with fresh boundaries.

mod attach;
mod eml;
mod error;
mod frame;
mod html;
mod parts;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

pub use eml::write_eml;
pub use error::{AttachProblem, ComposeError, SetupError};

use crate::input::Row;
use crate::template::{
    BodyKind, RenderOptions, RenderedField, Template, addr_specs, check_crlf_line_lengths,
    push_normalized,
};
use attach::{AttachDir, Attachment};
use parts::{Content, TextPart};

/// How to set up a [`Composer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposerOptions {
    /// Files attached to every message (`--attach FILE`, repeatable), read and encoded once.
    pub attach: Vec<PathBuf>,
    /// The directory `Attach:` paths resolve under (`--attach-dir`; default: the template's
    /// directory). Needed only when the template has an `Attach:` field.
    pub attach_dir: PathBuf,
    /// Octets of encoded `Attach:` files kept for reuse by later rows (default 64 MiB; 0:
    /// read and encode every row's files every time). A file is reused only while its
    /// device, inode, length and modification time are unchanged.
    pub attach_cache: usize,
}

impl Default for ComposerOptions {
    fn default() -> Self {
        Self {
            attach: Vec::new(),
            attach_dir: PathBuf::from("."),
            attach_cache: DEFAULT_ATTACH_CACHE,
        }
    }
}

/// Default of [`ComposerOptions::attach_cache`]: 64 MiB.
pub const DEFAULT_ATTACH_CACHE: usize = 64 << 20;

/// Per-message settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeOptions {
    /// Header rendering: SMTPUTF8, the time, the Message-ID domain.
    pub render: RenderOptions,
    /// The server offers 8BITMIME (RFC 6152): UTF-8 text parts may go as `8bit` instead of
    /// quoted-printable or base64.
    pub eight_bit_mime: bool,
}

/// One composed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// The message: headers, blank line, body; CRLF line ends, no line over 998 octets, ends
    /// with CRLF, NOT dot-stuffed.
    pub data: Vec<u8>,
    /// The Message-ID, without angle brackets.
    pub message_id: String,
    /// True if a value rendered into a header had control characters replaced by spaces.
    pub sanitized: bool,
    /// Envelope recipients besides the row's address: the `Cc:` and `Bcc:` addresses, in
    /// order, without duplicates (ASCII case-insensitive) or the row's own address.
    pub extra_recipients: Vec<String>,
    /// True if `data` has 8-bit octets (send with `BODY=8BITMIME`).
    pub eight_bit: bool,
}

/// Composes rows of one template into MIME messages. Shareable between threads (`&self`).
#[derive(Debug)]
pub struct Composer {
    template: Template,
    shared: Vec<Attachment>,
    attach_dir: Option<AttachDir>,
    /// lettre's framing of messages without attachments, by shape (built on first use).
    frames: frame::Frames,
}

/// What the body of the template is, from its `Content-Type` field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyMode {
    Text,
    Html,
    Markdown,
    /// Sent as written; holds the Content-Type value.
    Raw(String),
}

impl BodyMode {
    fn of(content_type: Option<&str>) -> Self {
        let Some(value) = content_type else {
            return Self::Text;
        };
        let essence = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "" | "text/plain" => Self::Text,
            "text/html" => Self::Html,
            "text/markdown" | "text/x-markdown" => Self::Markdown,
            _ => Self::Raw(value.trim().to_owned()),
        }
    }
}

impl Composer {
    /// Reads and encodes the `--attach` files; checks the attachment directory when the
    /// template has an `Attach:` field.
    pub fn new(template: Template, opts: &ComposerOptions) -> Result<Self, SetupError> {
        let shared = opts
            .attach
            .iter()
            .map(|p| attach::load_shared(p))
            .collect::<Result<Vec<_>, _>>()?;
        let uses_attach = template
            .header_names()
            .iter()
            .any(|h| h.eq_ignore_ascii_case("attach"));
        let attach_dir = if uses_attach {
            Some(AttachDir::new(&opts.attach_dir, opts.attach_cache)?)
        } else {
            None
        };
        Ok(Self {
            template,
            shared,
            attach_dir,
            frames: frame::Frames::default(),
        })
    }

    /// The template.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// Composes the message of one row. `headers` are the list's header names.
    pub fn compose(
        &self,
        row: &Row,
        headers: &[String],
        opts: &ComposeOptions,
    ) -> Result<Composed, ComposeError> {
        let ctx = self.template.context(row, headers);
        let section = self
            .template
            .render_headers(&ctx, row.number, &opts.render)?;
        let content_type = section
            .fields
            .iter()
            .find(|f| f.is("content-type"))
            .map(RenderedField::unfolded_value);
        let mode = BodyMode::of(content_type.as_deref());

        let mut kept: Vec<&RenderedField> = Vec::with_capacity(section.fields.len());
        let mut extra: Vec<String> = Vec::new();
        let mut attach_paths: Vec<String> = Vec::new();
        for field in &section.fields {
            if field.is("cc") || field.is("bcc") {
                let value = field.unfolded_value();
                for addr in addr_specs(&value).map_err(|item| ComposeError::Address {
                    field: field.name().to_owned(),
                    value: item,
                })? {
                    let dup = addr.eq_ignore_ascii_case(&row.email)
                        || extra.iter().any(|e| e.eq_ignore_ascii_case(&addr));
                    if !dup {
                        extra.push(addr);
                    }
                }
                if field.is("cc") && !value.trim().is_empty() {
                    kept.push(field);
                }
            } else if field.is("attach") {
                attach_paths.push(field.unfolded_value().trim().to_owned());
            } else if matches!(mode, BodyMode::Raw(_))
                || !(field.is("content-type")
                    || field.is("content-transfer-encoding")
                    || field.is("mime-version"))
            {
                kept.push(field);
            }
        }

        // The header fields, in a buffer with room for `body` more octets.
        let head = |body: usize| {
            let mut data = Vec::with_capacity(section.len_hint() + body + 1024);
            for field in &kept {
                field.write(&mut data, opts.render.smtputf8, true);
            }
            data
        };
        let data = if let BodyMode::Raw(content_type) = &mode {
            if self.template.has_html() || !self.shared.is_empty() || !attach_paths.is_empty() {
                return Err(ComposeError::RawBody {
                    content_type: content_type.clone(),
                });
            }
            let body = self.template.render_body(&ctx, BodyKind::Plain)?;
            let mut data = head(body.len() + body.len() / 32);
            data.extend_from_slice(b"\r\n");
            push_normalized(&mut data, &body);
            data
        } else {
            let per_row = attach_paths
                .iter()
                .map(|p| self.load(p))
                .collect::<Result<Vec<_>, _>>()?;
            let (text, html) = self.bodies(&ctx, &mode)?;
            let mut inline = Vec::new();
            let mut attached = Vec::new();
            for a in self.shared.iter().chain(per_row.iter().map(|a| &**a)) {
                match &html {
                    Some(h) if html::references_cid(h, &a.name) => inline.push(a),
                    _ => attached.push(a),
                }
            }
            let eight = opts.eight_bit_mime;
            let text = TextPart::new(&text, eight);
            let html = html.as_deref().map(|h| TextPart::new(h, eight));
            let bodies = text.len_hint() + html.as_ref().map_or(0, TextPart::len_hint);
            let mut data = head(bodies);
            data.extend_from_slice(b"MIME-Version: 1.0\r\n");
            let head = data.len();
            let framed = inline.is_empty()
                && attached.is_empty()
                && self
                    .frames
                    .get(text.encoding(), html.as_ref().map(TextPart::encoding))
                    .is_some_and(|f| f.write(&mut data, &text, html.as_ref()));
            if !framed {
                data.truncate(head);
                let node = parts::build(Content {
                    text: text.into_body(),
                    html: html.map(TextPart::into_body),
                    inline,
                    attached,
                })?;
                data = node.finish(data)?;
            }
            data
        };
        check_crlf_line_lengths(&data)?;
        let eight_bit = !data.is_ascii();
        Ok(Composed {
            data,
            message_id: section.message_id,
            sanitized: section.sanitized,
            extra_recipients: extra,
            eight_bit,
        })
    }

    /// The text and HTML bodies of a row.
    fn bodies(
        &self,
        ctx: &crate::template::RowContext<'_>,
        mode: &BodyMode,
    ) -> Result<(String, Option<String>), ComposeError> {
        let t = &self.template;
        let html_template = || t.render_body(ctx, BodyKind::Html);
        Ok(match mode {
            BodyMode::Html => {
                let html = if t.has_html() {
                    html_template()?
                } else {
                    t.render_body(ctx, BodyKind::Escaped)?
                };
                (html::html_to_text(&html)?, Some(html))
            }
            BodyMode::Markdown => {
                let html = if t.has_html() {
                    html_template()?
                } else {
                    html::markdown_to_html(&t.render_body(ctx, BodyKind::Escaped)?)
                };
                (t.render_body(ctx, BodyKind::Plain)?, Some(html))
            }
            BodyMode::Text | BodyMode::Raw(_) => {
                let text = t.render_body(ctx, BodyKind::Plain)?;
                // An HTML body that renders to nothing (e.g. a list row's empty `html`
                // value) is no alternative: clients would show the empty HTML.
                let html = if t.has_html() {
                    Some(html_template()?).filter(|h| !h.trim().is_empty())
                } else {
                    None
                };
                let text = match &html {
                    Some(h) if text.trim().is_empty() => html::html_to_text(h)?,
                    _ => text,
                };
                (text, html)
            }
        })
    }

    fn load(&self, path: &str) -> Result<Arc<Attachment>, ComposeError> {
        let dir = self
            .attach_dir
            .as_ref()
            .expect("set up whenever the template has an Attach field");
        dir.load(path).map_err(|problem| ComposeError::Attach {
            path: path.to_owned(),
            problem,
        })
    }
}
