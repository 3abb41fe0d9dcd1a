//! The list carries the message: `pipemail send --list rcpts.csv` without `--template`.
//!
//! Recognized columns (any letter case): `subject` and `body` (or `text`) make the message,
//! `html` adds an HTML alternative (with no `body`/`text` column, or an empty value, the text
//! part is derived from the HTML); `from` (else `--from`), `reply_to`, `cc` and `bcc` add
//! header fields (`cc` and `bcc` addresses also join the envelope, and `Bcc:` is removed
//! before sending); `attach` names files to attach, several separated by `;`. Every other
//! column is ignored for the message and still travels into the report. A `template` column
//! instead names a template file per row (see `RowTemplates` in the campaign's renderer).
//!
//! The message is a synthesized [`Template`] whose header and body refer to the recognized
//! columns as plain variables (`Subject: {{ subject }}`, `{{ body }}`, an HTML template
//! `{{ html|safe }}`). minijinja inserts a value as data and never parses it again, so a `{{`
//! or `{%` inside a value stays literal; the template's header rules apply unchanged: CR/LF
//! in a header value becomes a space (no value can create a header), non-ASCII header text
//! is RFC 2047-encoded, `Date` and `Message-ID` are added. The template has no
//! `Content-Type`: [`crate::message::Composer`] chooses the structure (text, or
//! `multipart/alternative`, with `multipart/mixed` for attachments) and the transfer
//! encodings, and a row that needs none of it (ASCII text, short lines, no html, attach, cc
//! or bcc column) is sent as rendered. Each `attach` path becomes one `Attach:` field, which
//! the composer resolves under the attachment directory, never outside it.

use super::{Template, TemplateError};

/// The column naming a template file per row.
pub const TEMPLATE_COLUMN: &str = "template";

/// The separator of several paths in one `attach` value (`a.pdf;b.png`).
pub const ATTACH_SEPARATOR: char = ';';

/// Why a list cannot carry its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListMessageError {
    /// Neither `subject` + `body`/`text`/`html` nor `template` columns.
    #[error(
        "no --template and the list does not carry a message: expected columns `subject` and `body` (or `text`, or `html`), or a `template` column naming a template file per row; found: {}",
        found.join(", ")
    )]
    NoMessage {
        /// The list's columns.
        found: Vec<String>,
    },
    /// Two columns spell the same recognized name in different letter case.
    #[error("the list has two `{name}` columns ({first:?} and {second:?}); keep one")]
    Ambiguous {
        /// The recognized name.
        name: &'static str,
        /// The first column.
        first: String,
        /// The second column.
        second: String,
    },
    /// A recognized column whose name cannot be a template variable (e.g. it has spaces).
    #[error("the list's column {column:?} is not usable: rename it to `{name}`")]
    BadName {
        /// The column as written.
        column: String,
        /// The name to use.
        name: &'static str,
    },
}

/// What the list's columns say about the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListMessage {
    /// The synthesized template source when the list has `subject` and `body`/`text`/`html`.
    pub source: Option<String>,
    /// The synthesized HTML template source (`{{ html|safe }}`) when the list has an `html`
    /// column (and a `subject`).
    pub html: Option<String>,
    /// The list has a `from` column (the envelope sender then comes from each row unless
    /// `--from` is given).
    pub has_from: bool,
    /// Index of the `template` column, if any.
    pub template_column: Option<usize>,
}

/// Finds the one column named `name` (any letter case).
fn find(columns: &[String], name: &'static str) -> Result<Option<usize>, ListMessageError> {
    let mut found = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.trim().eq_ignore_ascii_case(name));
    let first = found.next();
    if let (Some((_, a)), Some((_, b))) = (first, found.next()) {
        return Err(ListMessageError::Ambiguous {
            name,
            first: a.clone(),
            second: b.clone(),
        });
    }
    match first {
        Some((_, c)) if !super::is_identifier(c) => Err(ListMessageError::BadName {
            column: c.clone(),
            name,
        }),
        other => Ok(other.map(|(i, _)| i)),
    }
}

/// `{% if col %}` / `Name: {{ col }}` / `{% endif %}`: no header when the value is empty.
fn optional_header(out: &mut String, field: &str, column: &str) {
    out.push_str(&format!(
        "{{% if {column} %}}\n{field}: {{{{ {column} }}}}\n{{% endif %}}\n"
    ));
}

/// One `Attach:` field per non-empty `;`-separated path of the column's value.
fn attach_headers(out: &mut String, column: &str) {
    out.push_str(&format!(
        "{{% for p in {column}|split({sep:?}) %}}{{% if p|trim %}}\nAttach: {{{{ p|trim }}}}\n{{% endif %}}{{% endfor %}}\n",
        sep = ATTACH_SEPARATOR.to_string()
    ));
}

impl ListMessage {
    /// Reads the list's header row. `from` is `--from` (written into the `From:` header when
    /// the list has no `from` column).
    pub fn from_columns(columns: &[String], from: Option<&str>) -> Result<Self, ListMessageError> {
        let template_column = find(columns, TEMPLATE_COLUMN)?;
        let subject = find(columns, "subject")?;
        let body = match find(columns, "body")? {
            Some(i) => Some(i),
            None => find(columns, "text")?,
        };
        let html = find(columns, "html")?;
        let from_col = find(columns, "from")?;
        let source = match (subject, body.or(html)) {
            (Some(s), Some(_)) => {
                let email = find(columns, "email")?.or(find(columns, "to")?);
                let mut src = String::new();
                match (from_col, from) {
                    (Some(f), _) => src.push_str(&format!("From: {{{{ {} }}}}\n", columns[f])),
                    (None, Some(addr)) => {
                        // A string literal, never a placeholder: the address is data too.
                        let lit = serde_json::to_string(addr).unwrap_or_default();
                        src.push_str(&format!("From: {{{{ {lit} }}}}\n"));
                    }
                    (None, None) => {}
                }
                if let Some(e) = email {
                    src.push_str(&format!("To: {{{{ {} }}}}\n", columns[e]));
                }
                for (name, field) in [("cc", "Cc"), ("bcc", "Bcc"), ("reply_to", "Reply-To")] {
                    if let Some(c) = find(columns, name)? {
                        optional_header(&mut src, field, &columns[c]);
                    }
                }
                src.push_str(&format!("Subject: {{{{ {} }}}}\n", columns[s]));
                if let Some(a) = find(columns, "attach")? {
                    attach_headers(&mut src, &columns[a]);
                }
                src.push('\n');
                if let Some(b) = body {
                    src.push_str(&format!("{{{{ {} }}}}", columns[b]));
                }
                Some(src)
            }
            _ => None,
        };
        if source.is_none() && template_column.is_none() {
            return Err(ListMessageError::NoMessage {
                found: columns.to_vec(),
            });
        }
        let html = match (&source, html) {
            (Some(_), Some(h)) => Some(format!("{{{{ {}|safe }}}}", columns[h])),
            _ => None,
        };
        Ok(Self {
            source,
            html,
            has_from: from_col.is_some(),
            template_column,
        })
    }

    /// The synthesized template, parsed, with its HTML part when the list has an `html`
    /// column (`None` when the list only has a `template` column).
    pub fn template(
        &self,
        list_name: &str,
        columns: &[String],
    ) -> Option<Result<Template, TemplateError>> {
        let src = self.source.as_deref()?;
        let name = format!("{list_name} (the message its columns carry)");
        let parsed = Template::parse_for_mime(src.as_bytes(), &name, columns).and_then(|mut t| {
            if let Some(html) = &self.html {
                t.add_html(html.as_bytes(), &name, columns)?;
            }
            Ok(t)
        });
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn subject_and_body_make_a_template_any_case() {
        let c = cols(&["Email", "SUBJECT", "Text", "name", "Reply_To"]);
        let m = ListMessage::from_columns(&c, Some("a@example.org")).expect("columns");
        let src = m.source.clone().expect("source");
        assert!(
            src.starts_with("From: {{ \"a@example.org\" }}\nTo: {{ Email }}\n"),
            "{src}"
        );
        assert!(src.contains("Reply-To: {{ Reply_To }}"), "{src}");
        assert!(src.ends_with("\n\n{{ Text }}"), "{src}");
        assert!(!m.has_from);
        m.template("l.csv", &c).expect("some").expect("parses");
    }

    #[test]
    fn missing_or_ambiguous_columns_are_errors() {
        let e = ListMessage::from_columns(&cols(&["email", "subject"]), None).unwrap_err();
        assert!(e.to_string().contains("found: email, subject"), "{e}");
        let e = ListMessage::from_columns(&cols(&["email", "body", "html"]), None).unwrap_err();
        assert!(matches!(e, ListMessageError::NoMessage { .. }), "{e}");
        let e = ListMessage::from_columns(&cols(&["email", "subject", "Subject", "body"]), None)
            .unwrap_err();
        assert!(matches!(e, ListMessageError::Ambiguous { .. }), "{e}");
        let e = ListMessage::from_columns(&cols(&["email", "subject", "body", "B CC"]), None)
            .expect("an unknown column is ignored");
        assert!(!e.source.expect("source").contains("Bcc"));
        let m = ListMessage::from_columns(&cols(&["email", "Template"]), None).expect("template");
        assert_eq!((m.source, m.html, m.template_column), (None, None, Some(1)));
    }

    #[test]
    fn html_attach_cc_and_bcc_columns_become_parts_and_fields() {
        let c = cols(&["email", "subject", "body", "HTML", "Attach", "cc", "Bcc"]);
        let m = ListMessage::from_columns(&c, Some("a@example.org")).expect("columns");
        let src = m.source.clone().expect("source");
        assert!(src.contains("\nCc: {{ cc }}\n"), "{src}");
        assert!(src.contains("\nBcc: {{ Bcc }}\n"), "{src}");
        assert!(
            src.contains(
                "{% for p in Attach|split(\";\") %}{% if p|trim %}\nAttach: {{ p|trim }}\n"
            ),
            "{src}"
        );
        assert!(!src.to_ascii_lowercase().contains("content-type"), "{src}");
        assert_eq!(m.html.as_deref(), Some("{{ HTML|safe }}"));
        let t = m.template("l.csv", &c).expect("some").expect("parses");
        assert!(t.has_html());
        assert_eq!(
            t.header_names(),
            ["From", "To", "Cc", "Bcc", "Subject", "Attach"]
        );
        // Without a body column the HTML alone makes the message (text derived from it).
        let c = cols(&["email", "subject", "html"]);
        let m = ListMessage::from_columns(&c, Some("a@example.org")).expect("columns");
        assert!(m.source.as_deref().expect("source").ends_with("\n\n"));
        assert!(
            m.template("l.csv", &c)
                .expect("some")
                .expect("parses")
                .has_html()
        );
    }
}
