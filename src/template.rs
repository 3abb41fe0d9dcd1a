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

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use crate::engine::check_address;
use crate::input::Row;

/// Longest line allowed in a message, in octets, not counting CRLF (RFC 5322 §2.1.1,
/// RFC 5321 §4.5.3.1.6).
pub const MAX_LINE: usize = 998;

/// Longest RFC 2047 encoded-word (RFC 2047 §2).
const MAX_ENCODED_WORD: usize = 75;

/// Line length folding aims for (RFC 5322 §2.1.1 "SHOULD").
const FOLD_AT: usize = 78;

/// Internal template names.
const HEADERS: &str = "headers";
const BODY: &str = "body";

/// Name of the minijinja temp that records that a header value was sanitized.
const SANITIZED: &str = "pipemail.sanitized";

/// The process id, asked of the kernel once (it was a `getpid` call per message).
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Address header fields: only their display names are RFC 2047-encoded.
const ADDRESS_FIELDS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "sender",
    "resent-from",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "resent-sender",
];

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
                    process_id()
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

/// The addr-spec of the first address in the `From:` header of a rendered message
/// (`Name <a@b>` or a bare `a@b`), if there is one and it is a valid address.
pub fn from_address_of(rendered: &[u8]) -> Option<String> {
    from_field_value(&String::from_utf8_lossy(rendered))
        .as_deref()
        .and_then(address_in)
}

/// The unfolded value of the first `From:` field of a header section (which ends at the
/// first empty line, if any).
fn from_field_value(text: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = value.as_mut() {
                v.push_str(line);
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((name, rest)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("from") {
                value = Some(rest.to_owned());
            }
        }
    }
    value
}

/// The addr-spec of the first mailbox of an address-list header value.
fn address_in(value: &str) -> Option<String> {
    let first = split_top_level(value, ',').into_iter().next()?;
    let addr = match find_top_level(first, '<') {
        Some(lt) => {
            let rest = &first[lt + 1..];
            let gt = rest.find('>')?;
            rest[..gt].trim().to_owned()
        }
        None => strip_comments(first).trim().to_owned(),
    };
    check_address(&addr).ok().map(|()| addr)
}

fn is_plain_domain(d: &str) -> bool {
    !d.is_empty()
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn needs_sanitizing(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// CRLF, lone CR and LF all become LF.
fn normalize_to_lf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Appends `text` with CRLF line endings (CRLF, lone CR and LF become CRLF); makes sure it ends
/// with CRLF if not empty.
fn push_normalized(out: &mut Vec<u8>, text: &str) {
    // Line by line with `str::find` (memchr), copying whole lines: a byte-at-a-time loop
    // here was a third of the CPU of rendering a 1 KiB message.
    out.reserve(text.len() + text.len() / 32 + 2);
    let mut rest = text;
    while !rest.is_empty() {
        let (line, next) = match rest.find('\n') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        // CRLF is one line ending; any other CR is a line ending of its own.
        let line = match next {
            Some(_) => line.strip_suffix('\r').unwrap_or(line),
            None => line,
        };
        for (k, part) in line.split('\r').enumerate() {
            if k > 0 {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(part.as_bytes());
        }
        match next {
            Some(n) => {
                out.extend_from_slice(b"\r\n");
                rest = n;
            }
            None => rest = "",
        }
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn check_line_lengths(data: &[u8]) -> Result<(), RowError> {
    // Lines end at CRLF only. Jumping from LF to LF with memchr (`str::find`) instead of
    // testing every byte: the message is UTF-8 (built from `str`s), the slow path is a guard.
    let Ok(text) = std::str::from_utf8(data) else {
        return check_line_lengths_bytewise(data);
    };
    let mut line = 0;
    let mut start = 0;
    let mut from = 0;
    while let Some(i) = text[from..].find('\n').map(|i| from + i) {
        from = i + 1;
        if i > 0 && data[i - 1] == b'\r' {
            line += 1;
            let length = i - 1 - start;
            if length > MAX_LINE {
                return Err(RowError::LineTooLong { line, length });
            }
            start = i + 1;
        }
    }
    Ok(())
}

fn check_line_lengths_bytewise(data: &[u8]) -> Result<(), RowError> {
    let mut line = 0;
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == b'\r' && data[i + 1] == b'\n' {
            line += 1;
            let length = i - start;
            if length > MAX_LINE {
                return Err(RowError::LineTooLong { line, length });
            }
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn jinja_error(e: minijinja::Error, src: &str, line_offset: usize, file: &str) -> TemplateError {
    let (line, column) = match e.range() {
        Some(r) if r.start <= src.len() && src.is_char_boundary(r.start) => line_col(src, r.start),
        _ => (e.line().unwrap_or(1), 1),
    };
    let line = line + line_offset;
    let detail = e.detail().unwrap_or_default();
    if let Some(statement) = detail.strip_prefix("unknown statement ") {
        return TemplateError::Unsupported {
            file: file.to_owned(),
            line,
            column,
            statement: statement.trim().to_owned(),
        };
    }
    TemplateError::Syntax {
        file: file.to_owned(),
        line,
        column,
        message: if detail.is_empty() {
            e.kind().to_string()
        } else {
            format!("{}: {detail}", e.kind())
        },
    }
}

/// Line and column of the first use of variable `name` inside a `{{ }}` or `{% %}` tag.
fn find_variable(src: &str, name: &str) -> (usize, usize) {
    let mut pos = 0;
    while let Some(open) = src[pos..].find(['{']).map(|i| i + pos) {
        let rest = &src[open..];
        let close = if rest.starts_with("{{") {
            "}}"
        } else if rest.starts_with("{%") {
            "%}"
        } else {
            pos = open + 1;
            continue;
        };
        let end = rest[2..].find(close).map_or(src.len(), |i| open + 2 + i);
        let inner = &src[open + 2..end];
        let mut quote: Option<char> = None;
        let mut prev: char = ' ';
        let mut iter = inner.char_indices().peekable();
        while let Some((i, c)) = iter.next() {
            match quote {
                Some(q) if c == q && prev != '\\' => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if (c.is_ascii_alphabetic() || c == '_')
                    && !(prev.is_ascii_alphanumeric() || prev == '_' || prev == '.') =>
                {
                    let mut j = i + c.len_utf8();
                    while let Some(&(k, d)) = iter.peek() {
                        if d.is_ascii_alphanumeric() || d == '_' {
                            j = k + d.len_utf8();
                            iter.next();
                        } else {
                            break;
                        }
                    }
                    if &inner[i..j] == name {
                        return line_col(src, open + 2 + i);
                    }
                    prev = 'a';
                    continue;
                }
                None => {}
            }
            prev = c;
        }
        pos = end.max(open + 1);
    }
    (1, 1)
}

/// Strips `{% … %}` and `{# … #}` tags from the start of a header line. Errors if one does not
/// close on the line.
fn strip_leading_tags(line: &str) -> Result<&str, String> {
    let mut rest = line;
    loop {
        let close = if rest.starts_with("{%") {
            "%}"
        } else if rest.starts_with("{#") {
            "#}"
        } else {
            return Ok(rest);
        };
        match rest[2..].find(close) {
            Some(i) => rest = &rest[2 + i + 2..],
            None => {
                return Err(format!(
                    "a tag at the start of a header line must end on that line (with {close})"
                ));
            }
        }
    }
}

/// Checks the header section of a template and returns its field names.
fn check_header_source(src: &str) -> Result<Vec<String>, (usize, String)> {
    let mut names = Vec::new();
    for (i, line) in src.split('\n').enumerate() {
        let lineno = i + 1;
        let rest = strip_leading_tags(line).map_err(|m| (lineno, m))?;
        if rest.is_empty() {
            continue;
        }
        if rest.starts_with([' ', '\t']) {
            if names.is_empty() {
                return Err((
                    lineno,
                    "a folded continuation line (starting with white space) must follow a \
                     header line"
                        .to_owned(),
                ));
            }
            continue;
        }
        let name = rest.split_once(':').map(|(n, _)| n);
        match name {
            Some(n) if is_field_name(n) => names.push(n.to_owned()),
            _ => {
                return Err((
                    lineno,
                    format!(
                        "not a header line: {:?}; header lines look like \"Name: value\", and a \
                         blank line must separate the headers from the body",
                        truncate(line, 60)
                    ),
                ));
            }
        }
    }
    Ok(names)
}

/// A header field name: printable ASCII except ':' (RFC 5322 §2.2), and no braces (so no
/// template tag can form part of it).
fn is_field_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b'{' && b != b'}')
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// The address of a static `From:` header in the template's header section.
fn static_from_address(src: &str) -> Option<String> {
    let value = from_field_value(src);
    let value = value?;
    if value.contains("{{") || value.contains("{%") || value.contains("{#") {
        return None;
    }
    address_in(&value)
}

/// One field of a rendered header section.
#[derive(Debug)]
struct Field<'a> {
    name: &'a str,
    /// The field's lines: the first holds `name:`, the others start with white space.
    lines: Vec<&'a str>,
}

impl Field<'_> {
    /// The value with folding removed (RFC 5322 §2.2.3), without the name and colon.
    fn unfolded_value(&self) -> String {
        let mut v = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i == 0 {
                v.push_str(&line[self.name.len() + 1..]);
            } else {
                v.push_str(line);
            }
        }
        v
    }
}

/// Splits a rendered header section (LF line ends) into fields; drops blank lines.
fn split_fields(text: &str) -> Result<Vec<Field<'_>>, RowError> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    for (i, line) in text.split(['\n', '\r']).enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match fields.last_mut() {
                Some(f) => f.lines.push(line),
                None => {
                    return Err(RowError::Header {
                        line: i + 1,
                        message: "a folded continuation line has no header field before it"
                            .to_owned(),
                    });
                }
            }
            continue;
        }
        match line.split_once(':') {
            Some((name, _)) if is_field_name(name) => fields.push(Field {
                name,
                lines: vec![line],
            }),
            _ => {
                return Err(RowError::Header {
                    line: i + 1,
                    message: format!("not a header field: {:?}", truncate(line, 60)),
                });
            }
        }
    }
    Ok(fields)
}

/// Re-encodes a non-ASCII field with RFC 2047 encoded-words and folds it.
fn encode_field(field: &Field<'_>) -> Vec<String> {
    let value = field.unfolded_value();
    let lower = field.name.to_ascii_lowercase();
    let tokens = if ADDRESS_FIELDS.contains(&lower.as_str()) {
        encode_address_list(&value)
    } else {
        // Size the first word to fit on the line with "Name: ".
        let room = FOLD_AT.saturating_sub(field.name.len() + 2);
        encode_words(value.trim(), room)
    };
    fold(field.name, &tokens)
}

/// Folds `name:` followed by `tokens` (separated by single spaces) into lines of about
/// [`FOLD_AT`] characters.
fn fold(name: &str, tokens: &[String]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = format!("{name}:");
    let mut has_token = false;
    for tok in tokens {
        if has_token && cur.len() + 1 + tok.len() > FOLD_AT {
            lines.push(std::mem::take(&mut cur));
        }
        cur.push(' ');
        cur.push_str(tok);
        has_token = true;
    }
    lines.push(cur);
    lines
}

/// RFC 2047 B-encoded words for `text`, each at most 75 characters (the first one at most
/// `first_room`, but always room for at least one character), split at character boundaries.
fn encode_words(text: &str, first_room: usize) -> Vec<String> {
    // "=?UTF-8?B?" + base64 + "?=": 12 characters of overhead; 45 bytes -> 60 characters.
    let chunk_for = |room: usize| (room.min(MAX_ENCODED_WORD).saturating_sub(12) / 4 * 3).max(4);
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let room = if words.is_empty() {
            first_room
        } else {
            MAX_ENCODED_WORD
        };
        let mut end = (start + chunk_for(room)).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut word = String::from("=?UTF-8?B?");
        base64::engine::general_purpose::STANDARD.encode_string(&text[start..end], &mut word);
        word.push_str("?=");
        words.push(word);
        start = end;
    }
    words
}

/// Encodes the display names of an address list; addresses are kept as they are.
fn encode_address_list(value: &str) -> Vec<String> {
    let items: Vec<&str> = split_top_level(value, ',')
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut tokens = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let before = tokens.len();
        // `phrase <addr>`; with unbalanced quotes or parentheses in the phrase, fall back to the
        // last `<` of an item that ends with `>`.
        let angle = find_top_level(item, '<')
            .or_else(|| item.ends_with('>').then(|| item.rfind('<')).flatten());
        match angle {
            Some(lt) => {
                let phrase = item[..lt].trim();
                if !phrase.is_ascii() {
                    tokens.extend(encode_words(&phrase_text(phrase), MAX_ENCODED_WORD));
                } else if !phrase.is_empty() {
                    tokens.push(phrase.to_owned());
                }
                tokens.push(item[lt..].trim().to_owned());
            }
            // A display name with no address at all: encode it. A bare non-ASCII address is
            // kept (it needs SMTPUTF8).
            None if !item.is_ascii() && !item.contains('@') => {
                tokens.extend(encode_words(&phrase_text(item), MAX_ENCODED_WORD));
            }
            None => tokens.push((*item).to_owned()),
        }
        if n + 1 < items.len() && tokens.len() > before {
            if let Some(last) = tokens.last_mut() {
                last.push(',');
            }
        }
    }
    tokens
}

/// The text of a phrase: quote marks removed, backslash escapes inside quotes resolved.
fn phrase_text(phrase: &str) -> String {
    let mut out = String::with_capacity(phrase.len());
    let mut quoted = false;
    let mut escaped = false;
    for c in phrase.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else {
            out.push(c);
        }
    }
    out
}

/// Removes `( … )` comments outside quoted strings.
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Scans `s` tracking quoted strings, comments and angle brackets; calls `f(index, char)` for
/// every character at top level.
fn scan_top_level(s: &str, mut f: impl FnMut(usize, char) -> bool) {
    let mut quoted = false;
    let mut escaped = false;
    let mut comment = 0usize;
    let mut angle = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' && (quoted || comment > 0) {
            escaped = true;
            continue;
        }
        if quoted {
            quoted = c != '"';
            continue;
        }
        if comment > 0 {
            match c {
                '(' => comment += 1,
                ')' => comment -= 1,
                _ => {}
            }
            continue;
        }
        if angle {
            angle = c != '>';
            continue;
        }
        if !f(i, c) {
            return;
        }
        match c {
            '"' => quoted = true,
            '(' => comment = 1,
            '<' => angle = true,
            _ => {}
        }
    }
}

fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    scan_top_level(s, |i, c| {
        if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
        true
    });
    parts.push(&s[start..]);
    parts
}

fn find_top_level(s: &str, wanted: char) -> Option<usize> {
    let mut found = None;
    scan_top_level(s, |i, c| {
        if c == wanted {
            found = Some(i);
            false
        } else {
            true
        }
    });
    found
}

/// Test helper: the header section of a rendered message as text lines.
#[cfg(test)]
fn header_lines(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let end = text.find("\r\n\r\n").map_or(text.len(), |i| i);
    text[..end].split("\r\n").map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn row(fields: &[&str]) -> Row {
        Row {
            number: 7,
            line: 8,
            email: fields[0].trim().to_owned(),
            fields: fields.iter().map(|s| (*s).to_owned()).collect(),
            problem: None,
        }
    }

    fn opts() -> RenderOptions {
        RenderOptions {
            smtputf8: false,
            now: datetime!(2026-11-25 20:14:18 UTC),
            message_id_domain: None,
        }
    }

    const BASIC: &str = "From: Sender <sender@example.org>\nTo: {{ name }} <{{ email }}>\nSubject: Hello {{ name }}\n\nDear {{ name }},\n{{ note }}\n";

    fn basic() -> (Template, Vec<String>) {
        let c = cols(&["email", "name", "note"]);
        (
            Template::parse(BASIC.as_bytes(), "msg.eml", &c).expect("parse"),
            c,
        )
    }

    fn text(r: &Rendered) -> String {
        String::from_utf8(r.data.clone()).expect("utf-8")
    }

    #[test]
    fn renders_basic_message() {
        let (t, c) = basic();
        assert_eq!(t.header_names(), ["From", "To", "Subject"]);
        assert_eq!(t.variables(), ["email", "name", "note"]);
        assert_eq!(t.from_address().as_deref(), Some("sender@example.org"));
        let r = t
            .render(&row(&["a@example.com", "Ann", "line1\nline2"]), &c, &opts())
            .expect("render");
        let s = text(&r);
        assert!(!r.sanitized);
        assert_eq!(
            header_lines(&r.data),
            [
                "From: Sender <sender@example.org>",
                "To: Ann <a@example.com>",
                "Subject: Hello Ann",
                "Date: Wed, 25 Nov 2026 20:14:18 +0000",
                &format!("Message-ID: <{}>", r.message_id),
            ]
        );
        assert!(
            s.ends_with("\r\n\r\nDear Ann,\r\nline1\r\nline2\r\n"),
            "{s:?}"
        );
        let pid = std::process::id();
        assert_eq!(
            r.message_id,
            format!("1795637658000000000.7.{pid}@example.org")
        );
        assert_eq!(
            from_address_of(&r.data).as_deref(),
            Some("sender@example.org")
        );
    }

    #[test]
    fn line_endings_are_normalized() {
        let c = cols(&["email"]);
        for src in [
            "From: a@example.org\r\nSubject: x\r\n\r\nbody\r\nmore",
            "From: a@example.org\rSubject: x\r\rbody\rmore",
            "From: a@example.org\nSubject: x\n\nbody\nmore\n",
        ] {
            let t = Template::parse(src.as_bytes(), "t", &c).expect("parse");
            let r = t
                .render(&row(&["b@example.com"]), &c, &opts())
                .expect("render");
            let s = text(&r);
            assert!(s.ends_with("\r\n\r\nbody\r\nmore\r\n"), "{s:?}");
            assert_eq!(s.matches('\n').count(), s.matches("\r\n").count());
            assert_eq!(s.matches('\r').count(), s.matches("\r\n").count());
        }
    }

    #[test]
    fn body_values_with_bare_cr_and_lf_become_crlf() {
        let (t, c) = basic();
        let r = t
            .render(&row(&["a@example.com", "Ann", "x\ry\r\nz\n"]), &c, &opts())
            .expect("render");
        assert!(text(&r).ends_with("Dear Ann,\r\nx\r\ny\r\nz\r\n\r\n"));
    }

    #[test]
    fn header_injection_is_neutralized() {
        let (t, c) = basic();
        let evil = "x\r\nBcc: victim@example.com";
        let r = t
            .render(&row(&["a@example.com", evil, evil]), &c, &opts())
            .expect("render");
        assert!(r.sanitized);
        let headers = header_lines(&r.data);
        assert_eq!(
            headers.iter().filter(|l| l.starts_with("Subject:")).count(),
            1
        );
        assert!(
            headers
                .iter()
                .all(|l| !l.to_ascii_lowercase().starts_with("bcc"))
        );
        assert!(headers.contains(&"Subject: Hello x  Bcc: victim@example.com".to_owned()));
        // In the body it is just text.
        assert!(text(&r).contains("\r\n\r\nDear x\r\nBcc: victim@example.com,\r\n"));
        // Other control characters too, but not TAB.
        let r = t
            .render(
                &row(&["a@example.com", "a\0b\u{7f}c\u{85}d\te", ""]),
                &c,
                &opts(),
            )
            .expect("render");
        assert!(r.sanitized);
        assert!(header_lines(&r.data).contains(&"Subject: Hello a b c d\te".to_owned()));
    }

    #[test]
    fn rfc2047_for_address_display_names_and_subject() {
        let (t, c) = basic();
        let r = t
            .render(&row(&["a@example.com", "Jürgen Größe", ""]), &c, &opts())
            .expect("render");
        let h = header_lines(&r.data);
        assert!(h.iter().all(|l| l.is_ascii()), "{h:?}");
        assert_eq!(h[1], "To: =?UTF-8?B?SsO8cmdlbiBHcsO2w59l?= <a@example.com>");
        assert_eq!(h[2], "Subject: =?UTF-8?B?SGVsbG8gSsO8cmdlbiBHcsO2w59l?=");
        // Not with SMTPUTF8.
        let o = RenderOptions {
            smtputf8: true,
            ..opts()
        };
        let r = t
            .render(&row(&["a@example.com", "Jürgen", ""]), &c, &o)
            .expect("render");
        let h = header_lines(&r.data);
        assert_eq!(h[1], "To: Jürgen <a@example.com>");
        assert_eq!(h[2], "Subject: Hello Jürgen");
    }

    #[test]
    fn rfc2047_quoted_names_lists_and_long_values_fold() {
        let c = cols(&["email", "name", "subject"]);
        let t = Template::parse(
            b"From: \"{{ name }}\" <s@example.org>, Plain <p@example.org>\nTo: {{ email }}\nSubject: {{ subject }}\n\nx\n",
            "t",
            &c,
        )
        .expect("parse");
        let long = "Ünïcödé ".repeat(40);
        let r = t
            .render(&row(&["a@example.com", "Doe, Jöhn", &long]), &c, &opts())
            .expect("render");
        let h = header_lines(&r.data);
        assert_eq!(
            h[0],
            "From: =?UTF-8?B?RG9lLCBKw7Zobg==?= <s@example.org>, Plain <p@example.org>"
        );
        assert_eq!(h[1], "To: a@example.com");
        let subject: Vec<&String> = h
            .iter()
            .skip_while(|l| !l.starts_with("Subject:"))
            .take_while(|l| l.starts_with("Subject:") || l.starts_with(' '))
            .collect();
        assert!(subject.len() > 5);
        for l in &subject {
            assert!(l.len() <= FOLD_AT, "{l}");
            for w in l.split(' ').filter(|w| w.starts_with("=?")) {
                assert!(w.len() <= MAX_ENCODED_WORD, "{w}");
            }
        }
        // Decoding the words gives the value back.
        let mut decoded = Vec::new();
        for l in &subject {
            for w in l.split(' ').filter(|w| w.starts_with("=?")) {
                let b64 = &w[10..w.len() - 2];
                decoded.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .expect("base64"),
                );
            }
        }
        assert_eq!(String::from_utf8(decoded).expect("utf-8"), long.trim());
        assert_eq!(from_address_of(&r.data).as_deref(), Some("s@example.org"));
    }

    #[test]
    fn template_message_id_and_date_are_kept() {
        let c = cols(&["email"]);
        let t = Template::parse(
            b"From: a@example.org\ndate: Mon, 1 Jan 2024 00:00:00 +0000\nMESSAGE-ID: <abc.{{ email }}@example.org>\n\nx",
            "t",
            &c,
        )
        .expect("parse");
        let r = t
            .render(&row(&["b@example.com"]), &c, &opts())
            .expect("render");
        assert_eq!(r.message_id, "abc.b@example.com@example.org");
        let h = header_lines(&r.data);
        assert_eq!(h.len(), 3, "{h:?}");
    }

    #[test]
    fn message_id_domain_choice() {
        let c = cols(&["email", "from"]);
        let t = Template::parse(b"From: {{ from }}\n\nx", "t", &c).expect("parse");
        assert_eq!(t.from_address(), None, "From has a placeholder");
        let o = RenderOptions {
            message_id_domain: Some("ids.example.net".to_owned()),
            ..opts()
        };
        let r = t
            .render(&row(&["b@example.com", "X <x@Mail.Example.org>"]), &c, &o)
            .expect("render");
        assert!(r.message_id.ends_with("@ids.example.net"));
        let r = t
            .render(
                &row(&["b@example.com", "X <x@Mail.Example.org>"]),
                &c,
                &opts(),
            )
            .expect("render");
        assert!(
            r.message_id.ends_with("@mail.example.org"),
            "{}",
            r.message_id
        );
        let r = t
            .render(&row(&["b@example.com", "nobody"]), &c, &opts())
            .expect("render");
        assert!(r.message_id.ends_with("@pipemail.invalid"));
        assert_eq!(from_address_of(&r.data), None);
    }

    #[test]
    fn from_address_forms() {
        assert_eq!(
            from_address_of(b"Subject: x\r\nFrom: a@b.example (Al)\r\n\r\nFrom: c@d.example\r\n")
                .as_deref(),
            Some("a@b.example")
        );
        assert_eq!(
            from_address_of(b"From: \"Smith, <J>\"\r\n <j@x.example>\r\n\r\n").as_deref(),
            Some("j@x.example")
        );
        assert_eq!(from_address_of(b"To: a@b.example\r\n\r\n"), None);
        let t =
            Template::parse(b"From: \"Team\" <team@example.org>\n\nhi", "t", &[]).expect("parse");
        assert_eq!(t.from_address().as_deref(), Some("team@example.org"));
    }

    #[test]
    fn unknown_variable() {
        let c = cols(&["email", "first_name"]);
        let err = Template::parse(
            b"From: a@example.org\n\nHi {{ frist_name }}!\n",
            "msg.eml",
            &c,
        )
        .expect_err("unknown");
        assert_eq!(
            err,
            TemplateError::UnknownVariable {
                file: "msg.eml".into(),
                line: 3,
                column: 7,
                name: "frist_name".into(),
                columns: c.clone(),
            }
        );
        assert_eq!(
            err.to_string(),
            "msg.eml:3:7: placeholder {{ frist_name }} has no column; columns are: email, first_name"
        );
        let c2 = cols(&["email", "First Name"]);
        let err = Template::parse(b"Subject: {{ first_name }}\n\n", "m", &c2).expect_err("hint");
        assert!(err.to_string().contains("rename it to first_name"), "{err}");
        // Loop variables, set variables and globals are fine.
        Template::parse(
            b"Subject: x\n\n{% set n = first_name %}{% for i in range(2) %}{{ loop.index }}{{ n }}{{ i }}{% endfor %}",
            "m",
            &c,
        )
        .expect("ok");
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let err = Template::parse(
            b"From: a@example.org\n\nline\nHi {{ name name }}\n",
            "m.eml",
            &cols(&["name"]),
        )
        .expect_err("syntax");
        match &err {
            TemplateError::Syntax { line, column, .. } => {
                assert_eq!((*line, *column), (4, 12), "{err}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().starts_with("m.eml:4:12: syntax error"),
            "{err}"
        );
        let err = Template::parse(b"Subject: {{ x\n\n", "m.eml", &cols(&["x"])).expect_err("e");
        assert!(
            matches!(err, TemplateError::Syntax { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn include_is_refused() {
        for (src, stmt) in [
            (
                &b"From: a@example.org\n\nx\n{% include 'footer.txt' %}\n"[..],
                "include",
            ),
            (b"{% extends 'base' %}\n\n", "extends"),
            (b"Subject: s\n\n{% import 'm' as m %}", "import"),
        ] {
            let err = Template::parse(src, "m.eml", &[]).expect_err("refused");
            assert!(
                matches!(&err, TemplateError::Unsupported { statement, .. } if statement == stmt),
                "{err:?}"
            );
            assert!(err.to_string().contains("no loader"), "{err}");
        }
        let err = Template::parse(
            b"From: a@example.org\n\nx\n{% include 'f' %}\n",
            "m.eml",
            &[],
        )
        .expect_err("refused");
        assert!(err.to_string().starts_with("m.eml:4:4:"), "{err}");
    }

    #[test]
    fn header_section_rules() {
        let c = cols(&["email", "cc", "h"]);
        let err =
            Template::parse(b"From: a@example.org\nHello there\n\nbody", "m", &c).expect_err("e");
        assert!(
            matches!(err, TemplateError::Header { line: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("blank line"), "{err}");
        let err = Template::parse(b"{{ h }}: x\n\n", "m", &c).expect_err("e");
        assert!(matches!(err, TemplateError::Header { line: 1, .. }));
        let err = Template::parse(
            b"From: a@example.org\n{% if cc %}{{ h }}{% endif %}\n\n",
            "m",
            &c,
        )
        .expect_err("e");
        assert!(matches!(err, TemplateError::Header { line: 2, .. }));
        let err = Template::parse(b"\nbody", "m", &c).expect_err("no headers");
        assert!(matches!(err, TemplateError::Header { line: 1, .. }));
        // No blank line: all headers, empty body.
        let t = Template::parse(b"From: a@example.org\nSubject: s", "m", &c).expect("parse");
        let r = t
            .render(&row(&["b@example.com", "", ""]), &c, &opts())
            .expect("render");
        assert!(text(&r).ends_with(">\r\n\r\n"));
        // Conditional headers and folded lines.
        let t = Template::parse(
            b"From: a@example.org\n{% if cc %}\nCc: {{ cc }}\n{% endif %}\nSubject: a\n  folded {{ h }}\n\nbody\n",
            "m",
            &c,
        )
        .expect("parse");
        assert_eq!(t.header_names(), ["From", "Cc", "Subject"]);
        let r = t
            .render(&row(&["b@example.com", "", "x"]), &c, &opts())
            .expect("render");
        let h = header_lines(&r.data);
        assert_eq!(&h[..3], ["From: a@example.org", "Subject: a", "  folded x"]);
        let r = t
            .render(&row(&["b@example.com", "c@example.com", "x"]), &c, &opts())
            .expect("render");
        assert_eq!(header_lines(&r.data)[1], "Cc: c@example.com");
    }

    #[test]
    fn not_utf8_and_long_template_lines() {
        let err = Template::parse(b"From: a@example.org\nSubject: caf\xE9\n\n", "m", &[])
            .expect_err("latin-1");
        assert_eq!(
            err,
            TemplateError::NotUtf8 {
                file: "m".into(),
                line: 2,
                column: 13
            }
        );
        let long = format!("From: a@example.org\n\n{}\n", "x".repeat(999));
        let err = Template::parse(long.as_bytes(), "m", &[]).expect_err("long");
        assert_eq!(
            err,
            TemplateError::LineTooLong {
                file: "m".into(),
                line: 3,
                length: 999
            }
        );
        let ok = format!("From: a@example.org\n\n{}\n", "x".repeat(998));
        assert!(Template::parse(ok.as_bytes(), "m", &[]).is_ok());
    }

    #[test]
    fn rendered_line_over_998_fails_the_row() {
        let (t, c) = basic();
        let err = t
            .render(
                &row(&["a@example.com", "Ann", &"y".repeat(1200)]),
                &c,
                &opts(),
            )
            .expect_err("long");
        let body_line = 8;
        assert_eq!(
            err,
            RowError::LineTooLong {
                line: body_line,
                length: 1200
            }
        );
        assert_eq!(
            err.to_string(),
            "line 8 is 1200 octets, over the 998 limit of RFC 5321"
        );
        // A long ASCII header value fails too; the row after it renders fine.
        assert!(matches!(
            t.render(&row(&["a@example.com", &"n".repeat(1000), ""]), &c, &opts()),
            Err(RowError::LineTooLong { line: 2, .. })
        ));
        assert!(
            t.render(&row(&["a@example.com", "Ann", "ok"]), &c, &opts())
                .is_ok()
        );
    }

    #[test]
    fn shareable_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<Template>();
        check::<Rendered>();
        check::<TemplateError>();
        check::<RowError>();
    }

    #[test]
    fn body_conditionals() {
        let c = cols(&["email", "company"]);
        let t = Template::parse(
            b"Subject: s\n\nHi{% if company %} from {{ company }}{% endif %}\nBye\n",
            "m",
            &c,
        )
        .expect("parse");
        let r = t
            .render(&row(&["a@example.com", "ACME"]), &c, &opts())
            .expect("render");
        assert!(text(&r).ends_with("\r\n\r\nHi from ACME\r\nBye\r\n"));
        let r = t
            .render(&row(&["a@example.com", ""]), &c, &opts())
            .expect("render");
        assert!(text(&r).ends_with("\r\n\r\nHi\r\nBye\r\n"));
    }

    #[test]
    fn render_errors_fail_the_row() {
        let c = cols(&["email", "n"]);
        let t = Template::parse(b"Subject: x\n\n\n{{ n | int + 1 }}", "m", &c).expect("parse");
        let err = t
            .render(&row(&["a@example.com", "not a number"]), &c, &opts())
            .expect_err("int");
        assert!(matches!(err, RowError::Render { line: 4, .. }), "{err:?}");
    }
}
