//! The list carries the message: `pipemail send --list rcpts.csv` without `--template`.
//!
//! Recognized columns (any letter case): `subject` and `body` (or `text`) make the message;
//! `from` (else `--from`), `reply_to` and `cc` add headers. Every other column is ignored for
//! the message and still travels into the report. A `template` column instead names a
//! template file per row (see `RowTemplates` in the campaign's renderer).
//!
//! The message is a synthesized [`Template`] whose header and body refer to the recognized
//! columns as plain variables (`Subject: {{ subject }}`, `{{ body }}`). minijinja inserts a
//! value as data and never parses it again, so a `{{` or `{%` inside a value stays literal;
//! the template's header rules apply unchanged: CR/LF in a header value becomes a space (no
//! value can create a header), non-ASCII header text is RFC 2047-encoded, `Date` and
//! `Message-ID` are added.
//!
//! Not yet: `html` (needs multipart composition) and `attach` (needs attachments) are refused
//! with [`ListMessageError::Unsupported`]; `bcc` too, because a campaign message has exactly
//! one envelope recipient (the row's address) and a `Bcc:` header would show the addresses.
//! When MIME composition lands, [`ListMessage::source`] is where an `html` part joins.

use super::{Template, TemplateError};

/// The column naming a template file per row.
pub const TEMPLATE_COLUMN: &str = "template";

/// Why a list cannot carry its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListMessageError {
    /// Neither `subject` + `body`/`text` nor `template` columns.
    #[error(
        "no --template and the list does not carry a message: expected columns `subject` and `body` (or `text`), or a `template` column naming a template file per row; found: {}",
        found.join(", ")
    )]
    NoMessage {
        /// The list's columns.
        found: Vec<String>,
    },
    /// A recognized column this version cannot honour.
    #[error("the list has a `{column}` column: {why}")]
    Unsupported {
        /// The column as written in the list.
        column: String,
        /// Why, and what to do.
        why: &'static str,
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
    /// The synthesized template source when the list has `subject` and `body`/`text`.
    pub source: Option<String>,
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

impl ListMessage {
    /// Reads the list's header row. `from` is `--from` (written into the `From:` header when
    /// the list has no `from` column).
    pub fn from_columns(columns: &[String], from: Option<&str>) -> Result<Self, ListMessageError> {
        for (name, why) in [
            (
                "html",
                "HTML bodies need multipart messages, which this version cannot compose yet; remove the column or use --template",
            ),
            (
                "attach",
                "attachments are not supported yet; remove the column",
            ),
            (
                "bcc",
                "each row is sent to its own address only, and a Bcc: header would show the addresses; list them as rows of their own",
            ),
        ] {
            if let Some(i) = find(columns, name)? {
                return Err(ListMessageError::Unsupported {
                    column: columns[i].clone(),
                    why,
                });
            }
        }
        let template_column = find(columns, TEMPLATE_COLUMN)?;
        let subject = find(columns, "subject")?;
        let body = match find(columns, "body")? {
            Some(i) => Some(i),
            None => find(columns, "text")?,
        };
        let from_col = find(columns, "from")?;
        let source = match (subject, body) {
            (Some(s), Some(b)) => {
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
                if let Some(c) = find(columns, "cc")? {
                    optional_header(&mut src, "Cc", &columns[c]);
                }
                if let Some(r) = find(columns, "reply_to")? {
                    optional_header(&mut src, "Reply-To", &columns[r]);
                }
                src.push_str(&format!("Subject: {{{{ {} }}}}\n", columns[s]));
                src.push_str(
                    "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n",
                );
                src.push_str(&format!("{{{{ {} }}}}", columns[b]));
                Some(src)
            }
            _ => None,
        };
        if source.is_none() && template_column.is_none() {
            return Err(ListMessageError::NoMessage {
                found: columns.to_vec(),
            });
        }
        Ok(Self {
            source,
            has_from: from_col.is_some(),
            template_column,
        })
    }

    /// The synthesized template, parsed (`None` when the list only has a `template` column).
    pub fn template(
        &self,
        list_name: &str,
        columns: &[String],
    ) -> Option<Result<Template, TemplateError>> {
        let src = self.source.as_deref()?;
        Some(Template::parse(
            src.as_bytes(),
            &format!("{list_name} (the message its columns carry)"),
            columns,
        ))
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
    fn missing_or_unsupported_columns_are_errors() {
        let e = ListMessage::from_columns(&cols(&["email", "subject"]), None).unwrap_err();
        assert!(e.to_string().contains("found: email, subject"), "{e}");
        for bad in ["html", "Attach", "bcc"] {
            let e = ListMessage::from_columns(&cols(&["email", "subject", "body", bad]), None)
                .unwrap_err();
            assert!(
                matches!(e, ListMessageError::Unsupported { .. }),
                "{bad}: {e}"
            );
        }
        let e = ListMessage::from_columns(&cols(&["email", "subject", "Subject", "body"]), None)
            .unwrap_err();
        assert!(matches!(e, ListMessageError::Ambiguous { .. }), "{e}");
        let m = ListMessage::from_columns(&cols(&["email", "Template"]), None).expect("template");
        assert_eq!((m.source, m.template_column), (None, Some(1)));
    }
}
