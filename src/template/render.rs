//! The rendered header section of one row: fields as rendered (values sanitized), `Date` and
//! `Message-ID` added when missing, written out RFC 2047-encoded and folded as needed.

use time::format_description::well_known::Rfc2822;

use super::address::{address_in, is_plain_domain};
use super::header::{Field, encode_field, split_fields};
use super::lines::push_line;
use super::{FALLBACK_MESSAGE_ID_DOMAIN, MAX_LINE, RenderOptions, RowError};

/// One field of a rendered header section, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RenderedField {
    /// The field name as the template writes it.
    pub(crate) name: String,
    /// The field's lines: the first holds `name:`, the others start with white space.
    pub(crate) lines: Vec<String>,
}

impl RenderedField {
    fn new(name: &str, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            lines: vec![format!("{name}: {value}")],
        }
    }

    fn borrowed(&self) -> Field<'_> {
        Field {
            name: &self.name,
            lines: self.lines.iter().map(String::as_str).collect(),
        }
    }

    /// True if the field is named `name` (ASCII case-insensitive).
    pub(crate) fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The value with folding removed (RFC 5322 §2.2.3), without the name and colon.
    pub(crate) fn unfolded_value(&self) -> String {
        self.borrowed().unfolded_value()
    }

    /// Appends the field with CRLF line ends: as rendered when it is ASCII or `smtputf8` is set,
    /// else RFC 2047-encoded and folded. With `fold_long`, a field with a line over
    /// [`MAX_LINE`] octets is encoded and folded too (encoded-words can split any text).
    pub(crate) fn write(&self, out: &mut Vec<u8>, smtputf8: bool, fold_long: bool) {
        let ascii = self.lines.iter().all(|l| l.is_ascii());
        let long = fold_long && self.lines.iter().any(|l| l.len() > MAX_LINE);
        if (smtputf8 || ascii) && !long {
            for line in &self.lines {
                push_line(out, line);
            }
        } else {
            for line in encode_field(&self.borrowed()) {
                push_line(out, &line);
            }
        }
    }
}

/// The rendered header section of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderSection {
    /// The fields, in order; `Date` and `Message-ID` last when the template has none.
    pub(crate) fields: Vec<RenderedField>,
    /// The Message-ID, without angle brackets.
    pub(crate) message_id: String,
    /// True if a value had control characters replaced by spaces.
    pub(crate) sanitized: bool,
}

impl HeaderSection {
    /// Splits the rendered header text into fields and adds `Date` and `Message-ID` when
    /// missing.
    pub(crate) fn build(
        header_text: &str,
        sanitized: bool,
        row_number: u64,
        opts: &RenderOptions,
    ) -> Result<Self, RowError> {
        let mut has_date = false;
        let mut message_id = None;
        let mut from_value = None;
        let mut fields = Vec::new();
        for field in split_fields(header_text)? {
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
            fields.push(RenderedField {
                name: field.name.to_owned(),
                lines: field.lines.iter().map(|l| (*l).to_owned()).collect(),
            });
        }
        if !has_date {
            let date = rfc2822_date(opts.now).map_err(|e| RowError::Render {
                line: 0,
                message: format!("cannot format the Date header: {e}"),
            })?;
            fields.push(RenderedField::new("Date", &date));
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
                    row_number,
                    process_id()
                );
                fields.push(RenderedField::new("Message-ID", &format!("<{id}>")));
                id
            }
        };
        Ok(Self {
            fields,
            message_id,
            sanitized,
        })
    }

    /// About how many octets the section takes written out.
    pub(crate) fn len_hint(&self) -> usize {
        self.fields
            .iter()
            .flat_map(|f| &f.lines)
            .map(|l| l.len() + 2)
            .sum()
    }
}

/// `now` in RFC 2822 form, formatted once per second and thread (rows rendered in the same
/// second share the text).
fn rfc2822_date(now: time::OffsetDateTime) -> Result<String, time::error::Format> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<((i64, time::UtcOffset), String)>> =
            const { std::cell::RefCell::new(None) };
    }
    let key = (now.unix_timestamp(), now.offset());
    LAST.with_borrow_mut(|last| {
        if let Some((k, text)) = last.as_ref()
            && *k == key
        {
            return Ok(text.clone());
        }
        let text = now.format(&Rfc2822)?;
        *last = Some((key, text.clone()));
        Ok(text)
    })
}

/// The process id, asked of the kernel once (it was a `getpid` call per message).
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}
