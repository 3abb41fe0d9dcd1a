//! Message templates: an RFC 5322 message with Jinja placeholders (minijinja).
//!
//! # Template format
//!
//! A template is a UTF-8 text file holding a message: header lines, one blank line, the body.
//! Line endings may be CRLF, LF or lone CR; all are normalized (the rendered message uses CRLF).
//! With [`Template::parse`] no line of the template may be longer than 998 octets (the
//! message is sent as rendered); [`Template::parse_for_mime`] has no such limit, because
//! [`crate::message::Composer`] encodes bodies with long lines.
//!
//! * The header section ends at the first empty (or white-space-only) line. A template with no
//!   such line is all headers and renders with an empty body.
//! * Every header line must start with a literal field name and a colon (`Subject: …`), or be a
//!   folded continuation line (starting with a space or a tab), or consist only of `{% … %}` /
//!   `{# … #}` tags (to make headers conditional). A block or comment tag at the start of a header
//!   line must close on that line. Because of this rule a placeholder can never stand where a
//!   field name goes, and the names of the rendered headers are always the template's own.
//! * Placeholders use Jinja syntax: `{{ first_name }}`, filters (`{{ name | title }}`),
//!   conditions (`{% if company %}…{% endif %}`), loops, with Jinja's default white-space
//!   handling (`trim_blocks` off: in the body, a line holding only `{% if … %}` leaves an empty
//!   line unless written `{%- … -%}`; in the header section empty lines are dropped, so
//!   `{% if cc %}` / `Cc: {{ cc }}` / `{% endif %}` on three lines is fine). There is no loader:
//!   `{% include %}`, `{% extends %}`, `{% import %}` and `{% macro %}` are refused at parse time.
//! * Every variable a template uses must be a column of the list, or `row`: the 1-based data
//!   row number, an integer (as in the report's `row` column and `--from`); a list column
//!   named `row` wins over it. Checked at parse time with minijinja's static analysis, and
//!   again at render time with strict undefined behaviour. The
//!   global functions `range`, `dict`, `namespace`, `debug`, `cycler` and `joiner` are also
//!   available, and Jinja's filters: minijinja's builtins (with `urlencode` and `tojson`),
//!   minijinja-contrib's `truncate(length=…)`, `wordwrap`, `wordcount`, `striptags`,
//!   `pluralize`, `filesizeformat`, and Python string methods (`{{ name.upper() }}`).
//!
//! # Rendering
//!
//! The header section and the body are two separate minijinja templates. A header section
//! whose only template syntax is plain `{{ name }}` placeholders is rendered by putting the
//! sanitized values between its literal pieces, without minijinja's engine (the same output,
//! checked by a property test against minijinja, at a tenth of the instructions).
//!
//! * In the header section, everything a placeholder outputs is sanitized: CR, LF and every other
//!   control character except TAB becomes a space, so a value can never start a new header line.
//!   [`Rendered::sanitized`] tells whether this changed anything. Lines of the rendered header
//!   section that are empty (e.g. a conditional header that rendered to nothing) are dropped.
//! * Unless [`RenderOptions::smtputf8`] is set, a header field with non-ASCII text is re-encoded
//!   with RFC 2047 encoded-words (UTF-8, B encoding, each word at most 75 characters) and folded
//!   at 78 characters. For address fields (From, To, Cc, Bcc, Reply-To, Sender and their
//!   Resent- forms) only display names are encoded, never the `<addr>` part; a non-ASCII address
//!   itself is left as it is (it needs SMTPUTF8). Quote display names that may contain commas:
//!   `To: "{{ name }}" <{{ email }}>`. Other fields are encoded whole. ASCII-only fields are kept
//!   byte for byte.
//! * `Date:` and `Message-ID:` are appended when the rendered header section lacks them.
//! * Body values are inserted as they are (they may hold newlines); the rendered body is
//!   normalized to CRLF line endings and ends with CRLF. The message is not dot-stuffed.
//! * A rendered line longer than 998 octets fails that row ([`RowError::LineTooLong`]) in
//!   [`Template::render`]; [`crate::message::Composer::compose`] encodes it instead.

mod address;
mod context;
mod header;
mod jinja;
mod lines;
pub mod list;
mod render;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use time::OffsetDateTime;

use crate::input::Row;

pub use address::from_address_of;
use address::static_from_address;
pub use context::ROW_VARIABLE;
pub(crate) use context::RowContext;
use header::{check_header_source, needs_sanitizing};
use jinja::{find_variable, jinja_error};
use lines::{line_col, normalize_to_lf};

pub(crate) use address::addr_specs;
pub(crate) use lines::{check_crlf_line_lengths, push_normalized};
pub(crate) use render::{HeaderSection, RenderedField};

/// Longest line allowed in a message, in octets, not counting CRLF (RFC 5322 §2.1.1,
/// RFC 5321 §4.5.3.1.6).
pub const MAX_LINE: usize = 998;

/// Internal template names.
const HEADERS: &str = "headers";
const BODY: &str = "body";
const BODY_ESCAPED: &str = "body.html";
const HTML: &str = "html.html";

thread_local! {
    /// Set by the formatter when it replaced control characters in a header value during the
    /// header render running on this thread (rendering is synchronous: one at a time).
    static SANITIZED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Domain used in generated Message-IDs when no better one is known.
pub const FALLBACK_MESSAGE_ID_DOMAIN: &str = "pipemail.invalid";

/// An error in a template, found when it is parsed. Every variant names the file (`file`) and
/// the line (1-based, in the template file); most also carry a 1-based column (in characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is not UTF-8; the position is that of the first invalid byte.
    #[error("{file}:{line}:{column}: the template is not valid UTF-8 (save it as UTF-8)")]
    NotUtf8 {
        /// The template's name.
        file: String,
        /// Line of the first invalid byte.
        line: usize,
        /// Column of the first invalid byte.
        column: usize,
    },
    /// A template line is longer than [`MAX_LINE`] octets.
    #[error("{file}:{line}: the line is {length} octets, over the 998 limit of RFC 5322")]
    LineTooLong {
        /// The template's name.
        file: String,
        /// The long line.
        line: usize,
        /// Its length in octets.
        length: usize,
    },
    /// Jinja syntax error.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The template's name.
        file: String,
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A statement that needs a template loader (`include`, `extends`, `import`, `from`) or a
    /// feature that is not enabled (`macro`, `call`, `block`).
    #[error(
        "{file}:{line}:{column}: {{% {statement} %}} is not supported: a template is one self-contained file, with no loader for other templates"
    )]
    Unsupported {
        /// The template's name.
        file: String,
        /// Line of the statement.
        line: usize,
        /// Column of the statement.
        column: usize,
        /// The statement keyword.
        statement: String,
    },
    /// The template uses a variable that is not a column of the list.
    #[error(
        "{file}:{line}:{column}: placeholder {{{{ {name} }}}} has no column; columns are: {}{}",
        columns.join(", "),
        column_hint(name, columns)
    )]
    UnknownVariable {
        /// The template's name.
        file: String,
        /// Line of the first use.
        line: usize,
        /// Column of the first use.
        column: usize,
        /// The variable name.
        name: String,
        /// The list's columns.
        columns: Vec<String>,
    },
    /// The header section is malformed.
    #[error("{file}:{line}: {message}")]
    Header {
        /// The template's name.
        file: String,
        /// The offending line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Suggests a rename when a column's name is close to the unknown variable but is not usable as a
/// Jinja name (e.g. "First Name" for `first_name`).
fn column_hint(name: &str, columns: &[String]) -> String {
    let squash = |s: &str| -> String {
        s.trim()
            .chars()
            .map(|c| {
                if c.is_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let wanted = squash(name);
    columns
        .iter()
        .find(|c| !is_identifier(c) && squash(c) == wanted)
        .map(|c| {
            format!(" (column \"{c}\" cannot be used as a placeholder name; rename it to {name})")
        })
        .unwrap_or_default()
}

/// True if `s` can be written as a Jinja variable name.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why one row could not be rendered. The row fails; other rows go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// minijinja failed (e.g. a filter error) at the given template line.
    #[error("template line {line}: {message}")]
    Render {
        /// Line in the template file (0 if unknown).
        line: usize,
        /// What went wrong.
        message: String,
    },
    /// A rendered line is longer than 998 octets.
    #[error("line {line} is {length} octets, over the 998 limit of RFC 5321")]
    LineTooLong {
        /// 1-based line in the rendered message.
        line: usize,
        /// Its length in octets, without CRLF.
        length: usize,
    },
    /// minijinja failed while rendering the HTML template, at the given line of that file.
    #[error("HTML template line {line}: {message}")]
    Html {
        /// Line in the HTML template file (0 if unknown).
        line: usize,
        /// What went wrong.
        message: String,
    },
    /// The rendered header section is malformed (e.g. a conditional header left a folded
    /// continuation line with no field before it).
    #[error("rendered header line {line}: {message}")]
    Header {
        /// 1-based line in the rendered header section.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Per-render settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// The message will be sent with SMTPUTF8 (RFC 6531): header values stay raw UTF-8.
    pub smtputf8: bool,
    /// The time of rendering: used for the `Date:` header and generated Message-IDs.
    pub now: OffsetDateTime,
    /// Domain for generated Message-IDs; default: the domain of the From address, else
    /// [`FALLBACK_MESSAGE_ID_DOMAIN`].
    pub message_id_domain: Option<String>,
}

/// One rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The full message: headers, blank line, body; CRLF line endings, ends with CRLF,
    /// NOT dot-stuffed.
    pub data: Vec<u8>,
    /// The Message-ID, without angle brackets (generated, or the template's own).
    pub message_id: String,
    /// True if a value rendered into a header had CR, LF or other control characters that were
    /// replaced by spaces.
    pub sanitized: bool,
}

/// A parsed message template, ready to render rows. Cheap to share between threads (`&self`
/// rendering).
#[derive(Debug)]
pub struct Template {
    name: String,
    env: Environment<'static>,
    /// Line offset of the body template in the file (body line 1 is file line `body_offset + 1`).
    body_offset: usize,
    header_names: Vec<String>,
    variables: Vec<String>,
    /// `row` is used and is not a column: it is the row number.
    row_number: bool,
    static_from: Option<String>,
    /// The header section declares at most a plain-text body: see [`Template::plain_text_type`].
    plain_text_type: bool,
    /// The name of the HTML template added with [`Template::add_html`], if any.
    html_name: Option<String>,
    /// Set when the body has no template syntax (no `{{`, `{%` or `{#`): it renders the same
    /// for every row, so its first rendering, with CRLF line ends, is kept for all the others.
    static_body: Option<std::sync::OnceLock<Vec<u8>>>,
    /// Octets to reserve for the body of a rendered message.
    body_hint: usize,
    /// The header section as literal text and `{{ name }}` placeholders, when that is all
    /// its template syntax: rendered without minijinja ([`HeaderPiece`]).
    header_pieces: Option<Vec<HeaderPiece>>,
}

/// A piece of a header section whose only template syntax is `{{ name }}` placeholders of the
/// template's own variables (no filters, tags, comments or white-space control): such a
/// section renders by putting each value, sanitized by the formatter minijinja uses
/// ([`push_header_value`]), between the literal pieces. `tests::header_pieces_render_as_minijinja`
/// checks that both render the same text and flag.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderPiece {
    Text(String),
    Var(String),
}

/// The pieces of `src` (see [`HeaderPiece`]), or `None` when it has other template syntax or a
/// placeholder that is not one of `variables`.
fn header_pieces(src: &str, variables: &[String]) -> Option<Vec<HeaderPiece>> {
    if src.contains("{%") || src.contains("{#") {
        return None;
    }
    let mut pieces = Vec::new();
    let mut rest = src;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        let name = after[..close].trim_matches([' ', '\t']);
        if !is_identifier(name) || !variables.iter().any(|v| v == name) {
            return None;
        }
        if open > 0 {
            pieces.push(HeaderPiece::Text(rest[..open].to_owned()));
        }
        pieces.push(HeaderPiece::Var(name.to_owned()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(HeaderPiece::Text(rest.to_owned()));
    }
    Some(pieces)
}

/// Writes a value placed in the header section, every control character but TAB replaced by
/// a space (see the module documentation); returns whether one was.
fn push_header_value<W: std::fmt::Write>(out: &mut W, text: &str) -> Result<bool, std::fmt::Error> {
    let dirty = if text.is_ascii() {
        text.bytes().any(|b| b.is_ascii_control() && b != b'\t')
    } else {
        text.chars().any(needs_sanitizing)
    };
    if dirty {
        for c in text.chars() {
            out.write_char(if needs_sanitizing(c) { ' ' } else { c })?;
        }
    } else {
        out.write_str(text)?;
    }
    Ok(dirty)
}

/// Which of a template's bodies to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// The body, values inserted as they are.
    Plain,
    /// The body, values HTML-escaped (for a body that is HTML or becomes HTML: Markdown).
    Escaped,
    /// The HTML template (values HTML-escaped unless marked `|safe`).
    Html,
}

impl Template {
    /// Parses a template. `name` names it in errors (usually its path); `columns` are the list's
    /// header names: every variable the template uses must be one of them. A line over
    /// [`MAX_LINE`] octets is an error ([`TemplateError::LineTooLong`]): the message is sent as
    /// rendered. [`Template::parse_for_mime`] accepts long lines.
    pub fn parse(source: &[u8], name: &str, columns: &[String]) -> Result<Self, TemplateError> {
        Self::parse_impl(source, name, columns, true)
    }

    /// Parses a template whose message will be composed as MIME ([`crate::message`]), where
    /// bodies with long lines are encoded (quoted-printable) instead of refused: no line length
    /// limit. Otherwise as [`Template::parse`].
    pub fn parse_for_mime(
        source: &[u8],
        name: &str,
        columns: &[String],
    ) -> Result<Self, TemplateError> {
        Self::parse_impl(source, name, columns, false)
    }

    fn parse_impl(
        source: &[u8],
        name: &str,
        columns: &[String],
        limit_lines: bool,
    ) -> Result<Self, TemplateError> {
        let text = utf8(source, name)?;
        let text = normalize_to_lf(text);
        if limit_lines {
            for (i, line) in text.split('\n').enumerate() {
                if line.len() > MAX_LINE {
                    return Err(TemplateError::LineTooLong {
                        file: name.to_owned(),
                        line: i + 1,
                        length: line.len(),
                    });
                }
            }
        }
        // Split at the first blank line.
        let mut offset = 0;
        let mut split = None;
        for (i, line) in text.split('\n').enumerate() {
            if line.trim().is_empty() {
                split = Some((i, offset, (offset + line.len() + 1).min(text.len())));
                break;
            }
            offset += line.len() + 1;
        }
        let (header_src, body_src, body_offset) = match split {
            Some((i, start, end)) => (&text[..start.saturating_sub(1)], &text[end..], i + 1),
            None => (text.as_str(), "", 0),
        };
        if header_src.is_empty() {
            return Err(TemplateError::Header {
                file: name.to_owned(),
                line: 1,
                message: "the template has no header lines: it must start with the message \
                          headers (From:, To:, Subject: ...), then a blank line, then the body"
                    .to_owned(),
            });
        }
        let header_names =
            check_header_source(header_src).map_err(|(line, message)| TemplateError::Header {
                file: name.to_owned(),
                line,
                message,
            })?;

        let mut env = new_environment();
        let syntax = |e: minijinja::Error, src: &str, line_offset: usize| {
            jinja_error(e, src, line_offset, name)
        };
        env.add_template_owned(HEADERS, header_src.to_owned())
            .map_err(|e| syntax(e, header_src, 0))?;
        env.add_template_owned(BODY, body_src.to_owned())
            .map_err(|e| syntax(e, body_src, body_offset))?;
        // The same body with HTML-escaped values, for bodies that are or become HTML.
        env.add_template_owned(BODY_ESCAPED, body_src.to_owned())
            .map_err(|e| syntax(e, body_src, body_offset))?;

        // Every variable used must be a column (or a global function).
        let mut variables = Vec::new();
        for (tname, src, line_offset) in [(HEADERS, header_src, 0), (BODY, body_src, body_offset)] {
            check_variables(&env, tname, src, line_offset, name, columns, &mut variables)?;
        }
        variables.sort();
        let row_number = uses_row_number(&variables, columns);

        let header_pieces = header_pieces(header_src, &variables);
        let static_from = static_from_address(header_src);
        let plain_text_type = declares_plain_text(header_src, &header_names);
        Ok(Self {
            name: name.to_owned(),
            env,
            body_offset,
            header_names,
            variables,
            row_number,
            static_from,
            plain_text_type,
            html_name: None,
            static_body: (!has_template_syntax(body_src)).then(std::sync::OnceLock::new),
            body_hint: body_src.len() + body_src.len() / 16 + 64,
            header_pieces,
        })
    }

    /// Adds an HTML body template (`--html FILE`): the same placeholders and columns, values
    /// HTML-escaped (`{{ x | safe }}` inserts raw HTML). `name` names it in errors. Used by
    /// [`crate::message::Composer`] to build `multipart/alternative`.
    pub fn add_html(
        &mut self,
        source: &[u8],
        name: &str,
        columns: &[String],
    ) -> Result<(), TemplateError> {
        let text = normalize_to_lf(utf8(source, name)?);
        self.env
            .add_template_owned(HTML, text.clone())
            .map_err(|e| jinja_error(e, &text, 0, name))?;
        let mut variables = std::mem::take(&mut self.variables);
        check_variables(&self.env, HTML, &text, 0, name, columns, &mut variables)?;
        variables.sort();
        self.row_number = uses_row_number(&variables, columns);
        self.variables = variables;
        self.html_name = Some(name.to_owned());
        Ok(())
    }

    /// True if an HTML body template was added with [`Template::add_html`].
    pub fn has_html(&self) -> bool {
        self.html_name.is_some()
    }

    /// The template's name, as given to [`Template::parse`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The header field names written in the template, in order (conditional ones included;
    /// `Date` and `Message-ID` are added at render time when missing).
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// The list columns the template uses, and `row` when it uses the row number, sorted.
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// True when the template's header section says nothing of MIME but "plain text": no
    /// `Content-Type` field, or exactly one with no placeholder whose type is `text/plain`
    /// (charset, if given, `utf-8` or `us-ascii`); no `Content-Transfer-Encoding`; no
    /// `{% … %}` tag in the header section. Such a template rendered to ASCII can be sent as
    /// rendered: the declared type is what the message is.
    pub fn plain_text_type(&self) -> bool {
        self.plain_text_type
    }

    /// The addr-spec of the template's `From:` header when that header has no placeholders or
    /// tags (to be used as the default envelope sender); `None` otherwise.
    pub fn from_address(&self) -> Option<String> {
        self.static_from.clone()
    }

    /// Renders one row. `headers` are the list's header names (the same as given to
    /// [`Template::parse`]), `row` a row read with them.
    pub fn render(
        &self,
        row: &Row,
        headers: &[String],
        opts: &RenderOptions,
    ) -> Result<Rendered, RowError> {
        let ctx = self.context(row, headers);
        let section = self.render_headers(&ctx, row.number, opts)?;
        let mut data = Vec::with_capacity(section.len_hint() + self.body_hint);
        for field in &section.fields {
            field.write(&mut data, opts.smtputf8, false);
        }
        data.extend_from_slice(b"\r\n");
        match self.static_body.as_ref().map(|b| (b, b.get())) {
            Some((_, Some(body))) => data.extend_from_slice(body),
            Some((cell, None)) => {
                let start = data.len();
                push_normalized(&mut data, &self.render_body(&ctx, BodyKind::Plain)?);
                let _ = cell.set(data[start..].to_vec());
            }
            None => push_normalized(&mut data, &self.render_body(&ctx, BodyKind::Plain)?),
        }

        // Every line end is CRLF here (fields are written line by line, the body normalized):
        // the windowed check applies.
        check_crlf_line_lengths(&data)?;
        Ok(Rendered {
            data,
            message_id: section.message_id,
            sanitized: section.sanitized,
        })
    }

    /// The minijinja context of one row: every variable the template uses, by column, and
    /// the row number as `row` when the template uses it and the list has no `row` column.
    pub(crate) fn context<'a>(&'a self, row: &'a Row, headers: &'a [String]) -> RowContext<'a> {
        let mut ctx = RowContext::default();
        for var in &self.variables {
            if self.row_number && var == ROW_VARIABLE {
                ctx.row = Some(row.number);
            } else {
                ctx.columns.insert(var.as_str(), row.column(headers, var));
            }
        }
        ctx
    }

    /// Renders the header section of one row: the template's fields (values sanitized, not yet
    /// RFC 2047-encoded), then `Date` and `Message-ID` when missing.
    pub(crate) fn render_headers(
        &self,
        ctx: &RowContext<'_>,
        row_number: u64,
        opts: &RenderOptions,
    ) -> Result<HeaderSection, RowError> {
        let (header_text, sanitized) = match &self.header_pieces {
            Some(pieces) => render_pieces(pieces, ctx),
            None => self.render_header_template(ctx)?,
        };
        HeaderSection::build(&header_text, sanitized, row_number, opts)
    }

    /// The header section rendered by minijinja, and whether a value was sanitized.
    fn render_header_template(&self, ctx: &RowContext<'_>) -> Result<(String, bool), RowError> {
        SANITIZED.set(false);
        let text = self
            .env
            .get_template(HEADERS)
            .expect("template added at parse time")
            .render(ctx)
            .map_err(|e| row_error(&e, 0))?;
        Ok((text, SANITIZED.replace(false)))
    }

    /// Renders one of the bodies of one row (LF or CRLF line ends, as the template and values
    /// have them). [`BodyKind::Html`] without an HTML template renders an empty string.
    pub(crate) fn render_body(
        &self,
        ctx: &RowContext<'_>,
        kind: BodyKind,
    ) -> Result<String, RowError> {
        let (tname, offset) = match kind {
            BodyKind::Plain => (BODY, self.body_offset),
            BodyKind::Escaped => (BODY_ESCAPED, self.body_offset),
            BodyKind::Html if self.html_name.is_none() => return Ok(String::new()),
            BodyKind::Html => (HTML, 0),
        };
        let tmpl = self
            .env
            .get_template(tname)
            .expect("template added at parse time");
        tmpl.render(ctx).map_err(|e| match kind {
            BodyKind::Html => match row_error(&e, 0) {
                RowError::Render { line, message } => RowError::Html { line, message },
                other => other,
            },
            _ => row_error(&e, offset),
        })
    }
}

fn row_error(e: &minijinja::Error, line_offset: usize) -> RowError {
    RowError::Render {
        line: e.line().map_or(0, |l| l + line_offset),
        message: match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        },
    }
}

/// The template text as UTF-8, or [`TemplateError::NotUtf8`] at the first invalid byte.
fn utf8<'a>(source: &'a [u8], name: &str) -> Result<&'a str, TemplateError> {
    std::str::from_utf8(source).map_err(|e| {
        let (line, column) = line_col(
            &String::from_utf8_lossy(&source[..e.valid_up_to()]),
            e.valid_up_to(),
        );
        TemplateError::NotUtf8 {
            file: name.to_owned(),
            line,
            column,
        }
    })
}

/// The minijinja environment: strict undefined values, Jinja's filters (minijinja's builtins
/// with `urlencode` and `tojson`, and minijinja-contrib's `truncate`, `wordwrap`, `wordcount`,
/// `striptags`, `pluralize`, `filesizeformat`, Python string methods), and the formatter that
/// sanitizes header values.
fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, state, value| {
        if state.name() != HEADERS || value.is_undefined() || value.is_none() {
            return minijinja::escape_formatter(out, state, value);
        }
        // A string value is written from where it is (most values are strings).
        let owned;
        let text = match value.as_str() {
            Some(s) => s,
            None => {
                owned = value.to_string();
                owned.as_str()
            }
        };
        if push_header_value(out, text)
            .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "write failed"))?
        {
            SANITIZED.set(true);
        }
        Ok(())
    });
    env
}

/// Checks that every variable template `tname` uses is a column, `row` or a global; adds the
/// columns it uses (and `row`) to `variables`.
fn check_variables(
    env: &Environment<'_>,
    tname: &str,
    src: &str,
    line_offset: usize,
    file: &str,
    columns: &[String],
    variables: &mut Vec<String>,
) -> Result<(), TemplateError> {
    let globals: HashSet<&str> = env.globals().map(|(n, _)| n).collect();
    let tmpl = env
        .get_template(tname)
        .expect("template was added just before");
    let mut unknown: Vec<(usize, usize, String)> = Vec::new();
    for var in tmpl.undeclared_variables(false) {
        if columns.contains(&var) || var == ROW_VARIABLE {
            if !variables.contains(&var) {
                variables.push(var);
            }
        } else if !globals.contains(var.as_str()) {
            let (line, column) = find_variable(src, &var);
            unknown.push((line + line_offset, column, var));
        }
    }
    unknown.sort();
    match unknown.into_iter().next() {
        Some((line, column, var)) => Err(TemplateError::UnknownVariable {
            file: file.to_owned(),
            line,
            column,
            name: var,
            columns: columns.to_vec(),
        }),
        None => Ok(()),
    }
}

/// Renders [`HeaderPiece`]s with one row's values: the text, and whether a value was
/// sanitized. A placeholder's value is its column's, or the row number when `row` is the row
/// number (as minijinja formats an integer).
fn render_pieces(pieces: &[HeaderPiece], ctx: &RowContext<'_>) -> (String, bool) {
    let mut out = String::with_capacity(256);
    let mut dirty = false;
    for piece in pieces {
        match piece {
            HeaderPiece::Text(t) => out.push_str(t),
            HeaderPiece::Var(name) => {
                if let Some(value) = ctx.columns.get(name.as_str()) {
                    dirty |= push_header_value(&mut out, value).unwrap_or(false);
                } else if let Some(n) = ctx.row {
                    // The one variable that is not a column: `row`, the row number.
                    out.push_str(itoa::Buffer::new().format(n));
                }
            }
        }
    }
    (out, dirty)
}

/// True if `text` has template syntax (`{{`, `{%` or `{#`): without any, it renders as
/// written for every row.
pub(crate) fn has_template_syntax(text: &str) -> bool {
    ["{{", "{%", "{#"].iter().any(|t| text.contains(t))
}

/// True if `variables` has `row` and it is not a column: the template gets the row number.
fn uses_row_number(variables: &[String], columns: &[String]) -> bool {
    variables.iter().any(|v| v == ROW_VARIABLE) && !columns.iter().any(|c| c == ROW_VARIABLE)
}

/// Test helper: the header section of a rendered message as text lines.
#[cfg(test)]
fn header_lines(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let end = text.find("\r\n\r\n").map_or(text.len(), |i| i);
    text[..end].split("\r\n").map(str::to_owned).collect()
}

/// See [`Template::plain_text_type`]. `names` are the header section's field names.
fn declares_plain_text(header_src: &str, names: &[String]) -> bool {
    let count = |n: &str| names.iter().filter(|h| h.eq_ignore_ascii_case(n)).count();
    if header_src.contains("{%") || count("content-transfer-encoding") > 0 {
        return false;
    }
    match count("content-type") {
        0 => true,
        1 => address::field_value(header_src, "content-type").is_some_and(|v| {
            if has_template_syntax(&v) {
                return false;
            }
            let mut params = v.split(';');
            let essence = params.next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("text/plain")
                && params.all(|p| match p.split_once('=') {
                    Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
                        let v = v.trim().trim_matches('"');
                        v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("us-ascii")
                    }
                    Some(_) => true,
                    None => p.trim().is_empty(),
                })
        }),
        _ => false,
    }
}
