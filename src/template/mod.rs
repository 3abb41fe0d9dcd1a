//! Message templates: an RFC 5322 message with Jinja placeholders (minijinja).
//!
//! # Template format
//!
//! A template is a UTF-8 text file holding a message: header lines, one blank line, the body.
//! Line endings may be CRLF, LF or lone CR; all are normalized (the rendered message uses CRLF).
//! No line of the template may be longer than 998 octets.
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
//! * Every variable a template uses must be a column of the list (checked at parse time with
//!   minijinja's static analysis, and again at render time with strict undefined behaviour). The
//!   global functions `range`, `dict`, `namespace` and `debug` are also available.
//!
//! # Rendering
//!
//! The header section and the body are two separate minijinja templates.
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
//! * A rendered line longer than 998 octets fails that row ([`RowError::LineTooLong`]).

mod address;
mod header;
mod jinja;
mod lines;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};

use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use crate::input::Row;

pub use address::from_address_of;
use address::{address_in, is_plain_domain, static_from_address};
use header::{check_header_source, encode_field, needs_sanitizing, split_fields};
use jinja::{find_variable, jinja_error};
use lines::{check_line_lengths, line_col, normalize_to_lf, push_line, push_normalized};

/// Longest line allowed in a message, in octets, not counting CRLF (RFC 5322 §2.1.1,
/// RFC 5321 §4.5.3.1.6).
pub const MAX_LINE: usize = 998;

/// Internal template names.
const HEADERS: &str = "headers";
const BODY: &str = "body";

/// Name of the minijinja temp that records that a header value was sanitized.
const SANITIZED: &str = "pipemail.sanitized";

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
    static_from: Option<String>,
}

impl Template {
    /// Parses a template. `name` names it in errors (usually its path); `columns` are the list's
    /// header names: every variable the template uses must be one of them.
    pub fn parse(source: &[u8], name: &str, columns: &[String]) -> Result<Self, TemplateError> {
        let text = std::str::from_utf8(source).map_err(|e| {
            let (line, column) = line_col(
                &String::from_utf8_lossy(&source[..e.valid_up_to()]),
                e.valid_up_to(),
            );
            TemplateError::NotUtf8 {
                file: name.to_owned(),
                line,
                column,
            }
        })?;
        let text = normalize_to_lf(text);
        for (i, line) in text.split('\n').enumerate() {
            if line.len() > MAX_LINE {
                return Err(TemplateError::LineTooLong {
                    file: name.to_owned(),
                    line: i + 1,
                    length: line.len(),
                });
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

        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_formatter(|out, state, value| {
            if state.name() != HEADERS || value.is_undefined() || value.is_none() {
                return minijinja::escape_formatter(out, state, value);
            }
            let text = value.to_string();
            let result = if text.chars().any(needs_sanitizing) {
                state.set_temp(SANITIZED, Value::from(true));
                let clean: String = text
                    .chars()
                    .map(|c| if needs_sanitizing(c) { ' ' } else { c })
                    .collect();
                out.write_str(&clean)
            } else {
                out.write_str(&text)
            };
            result.map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "write failed"))
        });
        let syntax = |e: minijinja::Error, src: &str, line_offset: usize| {
            jinja_error(e, src, line_offset, name)
        };
        env.add_template_owned(HEADERS, header_src.to_owned())
            .map_err(|e| syntax(e, header_src, 0))?;
        env.add_template_owned(BODY, body_src.to_owned())
            .map_err(|e| syntax(e, body_src, body_offset))?;

        // Every variable used must be a column (or a global function).
        let globals: HashSet<String> = env.globals().map(|(n, _)| n.to_owned()).collect();
        let mut variables = Vec::new();
        for (tname, src, line_offset) in [(HEADERS, header_src, 0), (BODY, body_src, body_offset)] {
            let tmpl = env
                .get_template(tname)
                .expect("template was added just above");
            let mut unknown: Vec<(usize, usize, String)> = Vec::new();
            for var in tmpl.undeclared_variables(false) {
                if columns.contains(&var) {
                    if !variables.contains(&var) {
                        variables.push(var);
                    }
                } else if !globals.contains(&var) {
                    let (line, column) = find_variable(src, &var);
                    unknown.push((line + line_offset, column, var));
                }
            }
            unknown.sort();
            if let Some((line, column, var)) = unknown.into_iter().next() {
                return Err(TemplateError::UnknownVariable {
                    file: name.to_owned(),
                    line,
                    column,
                    name: var,
                    columns: columns.to_vec(),
                });
            }
        }
        variables.sort();

        let static_from = static_from_address(header_src);
        Ok(Self {
            name: name.to_owned(),
            env,
            body_offset,
            header_names,
            variables,
            static_from,
        })
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

    /// The list columns the template uses, sorted.
    pub fn variables(&self) -> &[String] {
        &self.variables
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
        let mut ctx: BTreeMap<&str, &str> = BTreeMap::new();
        for var in &self.variables {
            let value = headers
                .iter()
                .position(|h| h == var)
                .and_then(|i| row.fields.get(i))
                .map_or("", |v| {
                    // The address column: use the trimmed address.
                    if v.trim() == row.email {
                        row.email.as_str()
                    } else {
                        v.as_str()
                    }
                });
            ctx.insert(var.as_str(), value);
        }

        let headers_tmpl = self
            .env
            .get_template(HEADERS)
            .expect("template added at parse time");
        let captured = headers_tmpl
            .render_captured(&ctx)
            .map_err(|e| self.row_error(&e, 0))?;
        let sanitized = captured.state().get_temp(SANITIZED).is_some();
        let header_text = captured.into_output();
        let fields = split_fields(&header_text)?;

        let mut data = Vec::with_capacity(header_text.len() + 512);
        let mut has_date = false;
        let mut message_id = None;
        let mut from_value = None;
        for field in &fields {
            if field.name.eq_ignore_ascii_case("date") {
                has_date = true;
            } else if field.name.eq_ignore_ascii_case("message-id") && message_id.is_none() {
                let v = field.unfolded_value();
                let v = v.trim();
                let v = v.strip_prefix('<').unwrap_or(v);
                let v = v.strip_suffix('>').unwrap_or(v);
                message_id = Some(v.trim().to_owned());
            } else if field.name.eq_ignore_ascii_case("from") && from_value.is_none() {
                from_value = Some(field.unfolded_value());
            }
            let ascii = field.lines.iter().all(|l| l.is_ascii());
            if opts.smtputf8 || ascii {
                for line in &field.lines {
                    push_line(&mut data, line);
                }
            } else {
                for line in encode_field(field) {
                    push_line(&mut data, &line);
                }
            }
        }
        if !has_date {
            let date = opts.now.format(&Rfc2822).map_err(|e| RowError::Render {
                line: 0,
                message: format!("cannot format the Date header: {e}"),
            })?;
            push_line(&mut data, &format!("Date: {date}"));
        }
        let message_id = match message_id {
            Some(id) => id,
            None => {
                let domain = opts
                    .message_id_domain
                    .clone()
                    .or_else(|| {
                        from_value
                            .as_deref()
                            .and_then(address_in)
                            .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
                            .filter(|d| is_plain_domain(d))
                    })
                    .unwrap_or_else(|| FALLBACK_MESSAGE_ID_DOMAIN.to_owned());
                let id = format!(
                    "{}.{}.{}@{domain}",
                    opts.now.unix_timestamp_nanos(),
                    row.number,
                    std::process::id()
                );
                push_line(&mut data, &format!("Message-ID: <{id}>"));
                id
            }
        };
        data.extend_from_slice(b"\r\n");

        let body = self
            .env
            .get_template(BODY)
            .expect("template added at parse time")
            .render(&ctx)
            .map_err(|e| self.row_error(&e, self.body_offset))?;
        push_normalized(&mut data, &body);

        check_line_lengths(&data)?;
        Ok(Rendered {
            data,
            message_id,
            sanitized,
        })
    }

    fn row_error(&self, e: &minijinja::Error, line_offset: usize) -> RowError {
        RowError::Render {
            line: e.line().map_or(0, |l| l + line_offset),
            message: match e.detail() {
                Some(d) => format!("{}: {d}", e.kind()),
                None => e.kind().to_string(),
            },
        }
    }
}

/// Test helper: the header section of a rendered message as text lines.
#[cfg(test)]
fn header_lines(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let end = text.find("\r\n\r\n").map_or(text.len(), |i| i);
    text[..end].split("\r\n").map(str::to_owned).collect()
}
