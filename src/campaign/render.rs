//! Job → engine [`Message`]: the template rendered for the row, the envelope sender chosen.
//!
//! Pure apart from the `now` passed in for `Date:` and Message-IDs. It runs on the connection
//! task that sends the message (the server's SMTPUTF8 decides header encoding); a signing
//! step (DKIM) would sit between this and the pool.

use time::OffsetDateTime;

use crate::engine::Message;
use crate::input::Row;
use crate::template::{RenderOptions, Template, from_address_of};

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

/// Renders rows of one list with one template.
#[derive(Debug)]
pub struct Renderer {
    template: Template,
    headers: Vec<String>,
    from: FromSource,
    message_id_domain: Option<String>,
    /// Applied last, to the final bytes: unsubscribe, DSN, VERP sender, DKIM.
    deliver: super::sign::Deliverability,
}

impl Renderer {
    /// `headers` are the list's column names.
    pub fn new(template: Template, headers: Vec<String>, from: FromSource) -> Self {
        let message_id_domain = match &from {
            FromSource::Fixed(f) => f.rsplit_once('@').map(|(_, d)| d.to_string()),
            FromSource::PerRow => None,
        };
        Self {
            template,
            headers,
            from,
            message_id_domain,
            deliver: super::sign::Deliverability::default(),
        }
    }

    /// Sets what [`super::sign::Deliverability::finish`] adds to every rendered message.
    pub fn set_deliverability(&mut self, deliver: super::sign::Deliverability) {
        self.deliver = deliver;
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
            .template
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
    /// [`super::sign::Deliverability::finish`]. Nothing may change the message afterwards.
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
        let mut rendered = self
            .template
            .render(row, &self.headers, &opts)
            .map_err(|e| e.to_string())?;
        if !self.deliver.is_empty() {
            // The same last step as a real run: unsubscribe fields, sender check, signature.
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
