//! Job → engine [`Message`]: the template rendered for the row, the envelope sender chosen.
//!
//! Pure apart from the `now` passed in for `Date:` and Message-IDs. It runs on the connection
//! task that sends the message (the server's SMTPUTF8 decides header encoding); a signing
//! step (DKIM) would sit between this and the pool.

use time::OffsetDateTime;

use crate::engine::Message;
use crate::input::Row;
use crate::message::{ComposeOptions, Composer, ComposerOptions, SetupError};
use crate::template::{RenderOptions, Template, from_address_of};

/// Why `template` cannot go to several recipients per transaction (`--batch-recipients`),
/// if it cannot: one rendering serves the whole transaction, so no placeholder (in the
/// headers, the body or the HTML template) may use a list column; and `Cc:`/`Bcc:` fields
/// are refused, as their recipients get a copy per row and their outcomes are recorded per
/// row. `None`: it can (HTML, Markdown and attachments are composed once per transaction).
pub fn batch_obstacle(template: &Template) -> Option<String> {
    if let Some(field) = template
        .header_names()
        .iter()
        .find(|h| h.eq_ignore_ascii_case("cc") || h.eq_ignore_ascii_case("bcc"))
    {
        return Some(format!(
            "--batch-recipients cannot be used with a {field}: field in {} (its recipients get one copy per row, with the outcome in that row's report line); leave out --batch-recipients",
            template.name()
        ));
    }
    let vars = template.variables();
    if vars.is_empty() {
        return None;
    }
    let used: Vec<String> = vars.iter().map(|v| format!("{{{{ {v} }}}}")).collect();
    Some(format!(
        "--batch-recipients needs a template without per-row placeholders, and {} uses {}",
        template.name(),
        used.join(", ")
    ))
}

/// Where the envelope sender comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromSource {
    /// `--from`, or the template's literal From address.
    Fixed(String),
    /// The From header is templated: the address is read from each rendered message.
    PerRow,
}

/// A rendered message and what the report needs from it.
#[derive(Debug)]
pub struct Rendered {
    /// The message for the engine (`id` is the row number).
    pub message: Message,
    /// The Message-ID header sent.
    pub message_id: String,
    /// A header value had control characters replaced by spaces.
    pub sanitized: bool,
}

/// A list's `template` column: each row names its template file.
#[derive(Debug)]
pub struct RowTemplates {
    /// Index of the `template` column.
    pub column: usize,
    /// Each distinct value of the column: its template, or why it cannot be used (the row
    /// then fails at stage `input`).
    pub templates: std::collections::HashMap<String, Result<Template, String>>,
    /// Rows with an empty `template` value use the campaign's template (the list also has
    /// `subject` and `body` columns); otherwise they fail.
    pub empty_uses_default: bool,
}

impl RowTemplates {
    /// The template for `row`: `Ok(None)` for the campaign's own.
    fn pick(&self, row: &Row) -> Result<Option<&Template>, String> {
        let name = row.fields.get(self.column).map_or("", |v| v.trim());
        if name.is_empty() {
            return if self.empty_uses_default {
                Ok(None)
            } else {
                Err("the template column is empty".to_owned())
            };
        }
        match self.templates.get(name) {
            Some(Ok(t)) => Ok(Some(t)),
            Some(Err(why)) => Err(why.clone()),
            None => Err(format!("template {name:?} was not loaded")),
        }
    }
}

/// Renders rows of one list with one template (or one per row, see [`RowTemplates`]).
#[derive(Debug)]
pub struct Renderer {
    source: Source,
    headers: Vec<String>,
    from: FromSource,
    message_id_domain: Option<String>,
    row_templates: Option<RowTemplates>,
    /// Applied last, to the final bytes: unsubscribe, DSN, VERP sender, DKIM.
    deliver: super::deliverability::Deliverability,
}

/// What a [`Renderer`] renders with.
#[derive(Debug)]
enum Source {
    /// The template, sent as rendered.
    Plain(Template),
    /// The template composed as MIME.
    Mime(Composer),
    /// A template that needs nothing of MIME (no HTML part, attachment, `Cc`, `Bcc` or
    /// `Content-Type`): a row whose rendering is ASCII with no line over 998 octets is sent
    /// as rendered, byte for byte; any other row is composed.
    Auto(Composer),
}

/// Template fields that only composition handles.
const MIME_FIELDS: [&str; 3] = ["attach", "cc", "bcc"];

impl Renderer {
    /// `headers` are the list's column names.
    pub fn new(template: Template, headers: Vec<String>, from: FromSource) -> Self {
        let message_id_domain = match &from {
            FromSource::Fixed(f) => f.rsplit_once('@').map(|(_, d)| d.to_string()),
            FromSource::PerRow => None,
        };
        Self {
            source: Source::Plain(template),
            headers,
            from,
            message_id_domain,
            row_templates: None,
            deliver: super::deliverability::Deliverability::default(),
        }
    }

    /// Sets what [`super::deliverability::Deliverability::finish`] adds to every rendered message.
    pub fn set_deliverability(&mut self, deliver: super::deliverability::Deliverability) {
        self.deliver = deliver;
    }

    /// Chooses each row's template by the list's `template` column.
    pub fn with_row_templates(mut self, row_templates: Option<RowTemplates>) -> Self {
        self.row_templates = row_templates;
        self
    }

    /// The template for `row`.
    fn template_for(&self, row: &Row) -> Result<&Template, String> {
        match &self.row_templates {
            None => Ok(self.template()),
            Some(rt) => Ok(rt.pick(row)?.unwrap_or(self.template())),
        }
    }

    /// Like [`Renderer::new`], but each row's message is composed as MIME by a
    /// [`Composer`] (HTML and Markdown alternatives, attachments, `Cc:`/`Bcc:` in the
    /// envelope). Reads and encodes the `--attach` files once, here. A template that needs
    /// nothing of MIME (no HTML part, attachment, `Cc` or `Bcc`, no `Content-Type` but
    /// `text/plain`: [`Template::plain_text_type`]) still sends
    /// each row as rendered when that is ASCII with no line over 998 octets, and composes the
    /// others (8-bit text, long lines).
    pub fn with_mime(
        template: Template,
        headers: Vec<String>,
        from: FromSource,
        opts: &ComposerOptions,
    ) -> Result<Self, SetupError> {
        let message_id_domain = match &from {
            FromSource::Fixed(f) => f.rsplit_once('@').map(|(_, d)| d.to_string()),
            FromSource::PerRow => None,
        };
        Ok(Self {
            source: {
                let plain_enough = !template.has_html()
                    && opts.attach.is_empty()
                    && template.plain_text_type()
                    && !template
                        .header_names()
                        .iter()
                        .any(|h| MIME_FIELDS.iter().any(|m| h.eq_ignore_ascii_case(m)));
                let composer = Composer::new(template, opts)?;
                if plain_enough {
                    Source::Auto(composer)
                } else {
                    Source::Mime(composer)
                }
            },
            headers,
            from,
            message_id_domain,
            row_templates: None,
            deliver: super::deliverability::Deliverability::default(),
        })
    }

    /// The template (the composer's, with [`Renderer::with_mime`]).
    pub fn template(&self) -> &Template {
        match &self.source {
            Source::Plain(t) => t,
            Source::Mime(c) | Source::Auto(c) => c.template(),
        }
    }

    /// The row's message for a server with (or without) SMTPUTF8 and 8BITMIME; `Err(why)`
    /// fails the row at stage `input`. Without a composer, as [`Renderer::render`].
    /// Composed messages carry the template's `Cc:` and `Bcc:` addresses as envelope
    /// recipients after the row's own (`message.to[1..]`).
    pub fn render_for(
        &self,
        row: &Row,
        smtputf8: bool,
        eight_bit_mime: bool,
        now: OffsetDateTime,
    ) -> Result<Rendered, String> {
        // A row whose template the list's `template` column chose is sent as rendered.
        if let Some(rt) = &self.row_templates
            && rt.pick(row)?.is_some()
        {
            return self.render(row, smtputf8, now);
        }
        let composer = match &self.source {
            Source::Plain(_) => return self.render(row, smtputf8, now),
            Source::Auto(c) => match self.render(row, smtputf8, now) {
                Ok(r) if r.message.data.is_ascii() => return Ok(r),
                _ => c,
            },
            Source::Mime(c) => c,
        };
        let opts = ComposeOptions {
            render: RenderOptions {
                smtputf8,
                now,
                message_id_domain: self.message_id_domain.clone(),
            },
            eight_bit_mime,
        };
        let c = composer
            .compose(row, &self.headers, &opts)
            .map_err(|e| e.to_string())?;
        let from = match &self.from {
            FromSource::Fixed(f) => f.clone(),
            FromSource::PerRow => from_address_of(&c.data)
                .ok_or("the rendered message has no From address (use --from)")?,
        };
        let mut to = Vec::with_capacity(1 + c.extra_recipients.len());
        to.push(row.email.clone());
        to.extend(c.extra_recipients);
        let mut message = Message {
            dsn: None,
            id: row.number,
            from,
            to,
            data: c.data,
        };
        self.finish(row, &mut message)?;
        Ok(Rendered {
            message,
            message_id: c.message_id,
            sanitized: c.sanitized,
        })
    }

    /// The row's message; `Err(why)` fails the row at stage `input`.
    pub fn render(
        &self,
        row: &Row,
        smtputf8: bool,
        now: OffsetDateTime,
    ) -> Result<Rendered, String> {
        let opts = RenderOptions {
            smtputf8,
            now,
            message_id_domain: self.message_id_domain.clone(),
        };
        let rendered = self
            .template_for(row)?
            .render(row, &self.headers, &opts)
            .map_err(|e| e.to_string())?;
        let from = match &self.from {
            FromSource::Fixed(f) => f.clone(),
            FromSource::PerRow => from_address_of(&rendered.data)
                .ok_or("the rendered message has no From address (use --from)")?,
        };
        let mut message = Message {
            dsn: None,
            id: row.number,
            from,
            to: vec![row.email.clone()],
            data: rendered.data,
        };
        self.finish(row, &mut message)?;
        Ok(Rendered {
            message,
            message_id: rendered.message_id,
            sanitized: rendered.sanitized,
        })
    }

    /// Are DSN parameters asked for?
    pub fn wants_dsn(&self) -> bool {
        self.deliver.dsn.is_some()
    }

    /// Does rendering sign (DKIM)? Then a pool renders ahead of the sessions.
    pub fn signs(&self) -> bool {
        !self.deliver.signers.is_empty()
    }

    /// The last step of rendering, on the final bytes (after any MIME composition): see
    /// [`super::deliverability::Deliverability::finish`]. Nothing may change the message afterwards.
    fn finish(&self, row: &Row, message: &mut Message) -> Result<(), String> {
        if self.deliver.is_empty() {
            return Ok(());
        }
        self.deliver.finish(row, &self.headers, message)
    }

    /// `--dry-run`'s rendering: as for a server without SMTPUTF8, default Message-ID domain.
    pub fn preview(
        &self,
        row: &Row,
        now: OffsetDateTime,
    ) -> Result<crate::template::Rendered, String> {
        let opts = RenderOptions {
            smtputf8: false,
            now,
            message_id_domain: None,
        };
        let per_row = match &self.row_templates {
            Some(rt) => rt.pick(row)?.is_some(),
            None => false,
        };
        let composer = match &self.source {
            _ if per_row => None,
            Source::Plain(_) => None,
            Source::Auto(c) => match self.template().render(row, &self.headers, &opts) {
                Ok(r) if r.data.is_ascii() => return self.preview_finish(row, r),
                _ => Some(c),
            },
            Source::Mime(c) => Some(c),
        };
        if let Some(composer) = composer {
            let opts = ComposeOptions {
                render: opts,
                eight_bit_mime: false,
            };
            let composed = composer
                .compose(row, &self.headers, &opts)
                .map(|c| crate::template::Rendered {
                    data: c.data,
                    message_id: c.message_id,
                    sanitized: c.sanitized,
                })
                .map_err(|e| e.to_string())?;
            return self.preview_finish(row, composed);
        }
        let rendered = self
            .template_for(row)?
            .render(row, &self.headers, &opts)
            .map_err(|e| e.to_string())?;
        self.preview_finish(row, rendered)
    }

    /// The same last step as a real run for `--dry-run`'s message: unsubscribe fields,
    /// sender check, signature.
    fn preview_finish(
        &self,
        row: &Row,
        mut rendered: crate::template::Rendered,
    ) -> Result<crate::template::Rendered, String> {
        if !self.deliver.is_empty() {
            let mut message = Message {
                dsn: None,
                id: row.number,
                from: String::new(),
                to: vec![row.email.clone()],
                data: std::mem::take(&mut rendered.data),
            };
            self.finish(row, &mut message)?;
            rendered.data = message.data;
        }
        Ok(rendered)
    }
}

/// What precedes the extra envelope recipients' outcomes in a row's `response`:
/// `…; extra recipients: cc@example.net=250, bcc@example.org=550 5.1.1`.
pub const EXTRA_PREFIX: &str = "extra recipients: ";

/// One extra envelope recipient's outcome as the report shows it: `ADDR=CODE`, with the
/// enhanced code when the server sent one; `ADDR=-` when there was no reply (local decision
/// or dropped session).
pub fn extra_outcome(o: &crate::engine::RcptOutcome) -> String {
    match &o.reply {
        Some(r) => match r.enhanced {
            Some(e) => format!("{}={} {e}", o.address, r.code),
            None => format!("{}={}", o.address, r.code),
        },
        None => format!("{}=-", o.address),
    }
}

/// A message rendered and signed ahead of the sessions by the signing pool (DKIM runs).
#[derive(Debug, PartialEq, Eq)]
pub struct Prepared {
    pub(super) message: Message,
    pub(super) message_id: String,
    pub(super) sanitized: bool,
}

impl Prepared {
    /// A copy for one attempt (the signed bytes are never changed).
    pub(super) fn to_rendered(&self) -> Rendered {
        Rendered {
            message: self.message.clone(),
            message_id: self.message_id.clone(),
            sanitized: self.sanitized,
        }
    }
}
