//! The last step of rendering: what deliverability adds to each message, then DKIM.
//!
//! [`Deliverability::finish`] runs on the rendered (and composed) message of one row, in this
//! order: the envelope sender is rendered from a `--from` template (`bounces+{{ row }}@…`,
//! VERP) and checked; the `List-Unsubscribe` / `List-Unsubscribe-Post` fields (RFC 8058) are
//! added to the header section; the DSN parameters (RFC 3461: `RET`, an `ENVID` tied to the
//! row, `NOTIFY`, `ORCPT`) are attached to the envelope; last, every DKIM signer signs the
//! final bytes and its `DKIM-Signature` field is prepended. Nothing changes the message after
//! that (dot-stuffing and BDAT framing are transport and not covered by the signature).

use minijinja::{Environment, UndefinedBehavior};

use crate::deliver::dkim::{DkimSigner, sign_all};
use crate::deliver::dsn::{Notify, Ret, envid, mail_params, rcpt_params};
use crate::deliver::unsubscribe::unsubscribe_headers;
use crate::engine::{DsnParams, Message, check_address};
use crate::input::Row;
use crate::template::{ROW_VARIABLE, RowContext};

/// Why a small per-row template (`--from`, `--unsubscribe`) was refused.
#[derive(Debug, thiserror::Error)]
#[error("{what} template {source_text:?}: {message}")]
pub struct RowTemplateError {
    what: &'static str,
    source_text: String,
    message: String,
}

/// A one-line template rendered per row: the list's columns and `row` (the data row number,
/// 1-based, unless the list has a column of that name, which wins as in the message
/// template) are its variables; strict (an unknown variable fails at parse time).
#[derive(Debug)]
pub struct RowTemplate {
    env: Environment<'static>,
    columns: Vec<String>,
    uses_row: bool,
}

const NAME: &str = "value";

impl RowTemplate {
    /// Parses `source` (e.g. `https://example.com/u?e={{ email|urlencode }}`); `what` names
    /// the flag in errors; `columns` are the list's column names.
    pub fn parse(
        what: &'static str,
        source: &str,
        columns: &[String],
    ) -> Result<Self, RowTemplateError> {
        let err = |message: String| RowTemplateError {
            what,
            source_text: source.to_owned(),
            message,
        };
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| err(e.to_string()))?;
        let tmpl = env.get_template(NAME).map_err(|e| err(e.to_string()))?;
        let vars = tmpl.undeclared_variables(false);
        let mut used = Vec::new();
        let mut uses_row = false;
        for v in vars {
            // A list column named `row` wins, as in the message template.
            if columns.contains(&v) {
                used.push(v);
            } else if v == ROW_VARIABLE {
                uses_row = true;
            } else {
                return Err(err(format!(
                    "{v:?} is not a column of the list (nor `row`)"
                )));
            }
        }
        Ok(Self {
            env,
            columns: used,
            uses_row,
        })
    }

    /// Does the template have placeholders at all?
    pub fn is_templated(source: &str) -> bool {
        source.contains("{{") || source.contains("{%")
    }

    /// Renders for `row`; `headers` are the list's column names. `Err(why)` fails the row.
    pub fn render(&self, row: &Row, headers: &[String]) -> Result<String, String> {
        // The message template's row context: the columns used, and the row number.
        let mut ctx = RowContext::default();
        for c in &self.columns {
            ctx.columns.insert(c.as_str(), row.column(headers, c));
        }
        ctx.row = self.uses_row.then_some(row.number);
        self.env
            .get_template(NAME)
            .and_then(|t| t.render(&ctx))
            .map(|s| s.trim().to_owned())
            .map_err(|e| e.to_string())
    }
}

/// DSN settings of a run (`--dsn-notify`, `--dsn-ret`).
#[derive(Debug, Clone)]
pub struct DsnSettings {
    /// `NOTIFY=` on each RCPT; `None`: not sent.
    pub notify: Option<Notify>,
    /// `RET=` on MAIL; `None`: not sent.
    pub ret: Option<Ret>,
    /// The campaign id of `ENVID=<campaign>.<row>` ([`crate::deliver::dsn::campaign_id`]).
    pub campaign: String,
}

/// What is added to every message after rendering; the default adds nothing.
#[derive(Debug, Default)]
pub struct Deliverability {
    /// DKIM signers, applied in order (e.g. RSA then Ed25519).
    pub signers: Vec<DkimSigner>,
    /// `--unsubscribe URL` (an https URL template).
    pub unsubscribe_url: Option<RowTemplate>,
    /// `--unsubscribe-mailto ADDR`.
    pub unsubscribe_mailto: Option<String>,
    /// `--dsn-notify` / `--dsn-ret`.
    pub dsn: Option<DsnSettings>,
    /// A templated `--from` (per-row envelope sender, e.g. VERP).
    pub envelope_from: Option<RowTemplate>,
}

impl Deliverability {
    /// Nothing to add: [`Deliverability::finish`] would leave every message as it is.
    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
            && self.unsubscribe_url.is_none()
            && self.unsubscribe_mailto.is_none()
            && self.dsn.is_none()
            && self.envelope_from.is_none()
    }

    /// Applies everything to the rendered message of `row`: the final step of rendering.
    /// `Err(why)` fails the row at stage `input`.
    pub fn finish(&self, row: &Row, headers: &[String], msg: &mut Message) -> Result<(), String> {
        if let Some(t) = &self.envelope_from {
            let from = t.render(row, headers)?;
            check_address(&from)
                .map_err(|e| format!("invalid envelope sender {from:?} (--from): {e}"))?;
            msg.from = from;
        }
        if self.unsubscribe_url.is_some() || self.unsubscribe_mailto.is_some() {
            let fields = match &self.unsubscribe_url {
                Some(t) => {
                    let url = t.render(row, headers)?;
                    unsubscribe_headers(&url, self.unsubscribe_mailto.as_deref())
                        .map_err(|e| e.to_string())?
                        .to_bytes()
                }
                None => {
                    let m = self.unsubscribe_mailto.as_deref().unwrap_or_default();
                    let m = m.strip_prefix("mailto:").unwrap_or(m);
                    format!("List-Unsubscribe: <mailto:{m}>\r\n").into_bytes()
                }
            };
            insert_header_fields(&mut msg.data, &fields);
        }
        if let Some(d) = &self.dsn {
            let id = envid(&d.campaign, row.number);
            msg.dsn = Some(DsnParams {
                mail: mail_params(d.ret, Some(&id)).trim_start().to_owned(),
                rcpt: msg
                    .to
                    .iter()
                    .map(|a| rcpt_params(d.notify, Some(a)).trim_start().to_owned())
                    .collect(),
            });
        }
        if !self.signers.is_empty() {
            let sig = sign_all(&self.signers, &msg.data).map_err(|e| e.to_string())?;
            msg.data.splice(0..0, sig);
        }
        Ok(())
    }
}

/// Inserts CRLF-terminated header `fields` at the end of the header section of `data`.
fn insert_header_fields(data: &mut Vec<u8>, fields: &[u8]) {
    let at = if data.starts_with(b"\r\n") {
        0
    } else {
        memchr::memmem::find(data, b"\r\n\r\n").map_or(data.len(), |i| i + 2)
    };
    data.splice(at..at, fields.iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u64, email: &str) -> Row {
        Row {
            number: n,
            line: n + 1,
            email: email.into(),
            fields: vec![email.into(), "Ann".into()],
            problem: None,
        }
    }

    fn message(data: &[u8]) -> Message {
        Message {
            id: 1,
            from: "news@example.org".into(),
            to: vec!["ann+x@example.net".into()],
            data: data.to_vec(),
            dsn: None,
        }
    }

    #[test]
    fn row_templates_know_columns_and_row() {
        let cols = vec!["email".to_string(), "name".to_string()];
        let t = RowTemplate::parse("--from", "bounces+{{ row }}@example.org", &cols).unwrap();
        assert_eq!(
            t.render(&row(7, "a@b.c"), &cols).unwrap(),
            "bounces+7@example.org"
        );
        let u = RowTemplate::parse(
            "--unsubscribe",
            "https://x.example/u?e={{ email|urlencode }}",
            &cols,
        )
        .unwrap();
        assert_eq!(
            u.render(&row(1, "ann+x@example.net"), &cols).unwrap(),
            "https://x.example/u?e=ann%2Bx%40example.net"
        );
        // A list column named `row` wins over the row number.
        let with_row = vec!["email".to_string(), "row".to_string()];
        let t = RowTemplate::parse("--from", "b+{{ row }}@example.org", &with_row).unwrap();
        assert_eq!(
            t.render(&row(7, "a@b.c"), &with_row).unwrap(),
            "b+Ann@example.org"
        );
        let e = RowTemplate::parse("--from", "{{ nope }}@x", &cols).unwrap_err();
        assert!(e.to_string().contains("\"nope\" is not a column"), "{e}");
    }

    #[test]
    fn finish_adds_unsubscribe_dsn_and_verp_sender() {
        let cols = vec!["email".to_string(), "name".to_string()];
        let d = Deliverability {
            unsubscribe_url: Some(
                RowTemplate::parse("--unsubscribe", "https://x.example/u/{{ row }}", &cols)
                    .unwrap(),
            ),
            unsubscribe_mailto: Some("unsub@example.org".into()),
            dsn: Some(DsnSettings {
                notify: Some("failure,delay".parse().unwrap()),
                ret: Some(Ret::Hdrs),
                campaign: "c1".into(),
            }),
            envelope_from: Some(
                RowTemplate::parse("--from", "bounces+{{ row }}@example.org", &cols).unwrap(),
            ),
            ..Deliverability::default()
        };
        let mut m = message(b"From: news@example.org\r\nSubject: hi\r\n\r\nbody\r\n");
        d.finish(&row(42, "ann+x@example.net"), &cols, &mut m)
            .unwrap();
        assert_eq!(m.from, "bounces+42@example.org");
        assert_eq!(
            String::from_utf8(m.data).unwrap(),
            "From: news@example.org\r\nSubject: hi\r\n\
             List-Unsubscribe: <https://x.example/u/42>, <mailto:unsub@example.org>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nbody\r\n"
        );
        let dsn = m.dsn.unwrap();
        assert_eq!(dsn.mail, "RET=HDRS ENVID=c1.42");
        assert_eq!(
            dsn.rcpt,
            ["NOTIFY=FAILURE,DELAY ORCPT=rfc822;ann+2Bx@example.net"]
        );
    }

    #[test]
    fn an_invalid_rendered_sender_or_plain_http_fails_the_row() {
        let cols = vec!["email".to_string(), "name".to_string()];
        let d = Deliverability {
            envelope_from: Some(RowTemplate::parse("--from", "{{ name }} x@y", &cols).unwrap()),
            ..Deliverability::default()
        };
        let mut m = message(b"From: a@b.c\r\n\r\nx\r\n");
        let e = d.finish(&row(1, "a@b.c"), &cols, &mut m).unwrap_err();
        assert!(e.contains("invalid envelope sender"), "{e}");
        let d = Deliverability {
            unsubscribe_url: Some(
                RowTemplate::parse("--unsubscribe", "http://x.example/u", &cols).unwrap(),
            ),
            ..Deliverability::default()
        };
        let e = d.finish(&row(1, "a@b.c"), &cols, &mut m).unwrap_err();
        assert!(e.contains("https"), "{e}");
    }
}
