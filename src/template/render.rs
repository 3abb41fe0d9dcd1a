//! The rendered header section of one row: fields as rendered (values sanitized), `Date` and
//! `Message-ID` added when missing, written out RFC 2047-encoded and folded as needed.

use time::format_description::well_known::Rfc2822;

use super::address::{address_in, is_plain_domain};
use super::header::{Field, encode_field, is_field_name, split_lf_cr, truncate};
use super::lines::push_line;
use super::{FALLBACK_MESSAGE_ID_DOMAIN, MAX_LINE, RenderOptions, RowError};

/// One field of a rendered header section, owned: its lines in one string (one allocation
/// per field), joined by LF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RenderedField {
    /// The field's lines joined by `\n`: the first holds `name:`, the others start with white
    /// space.
    text: String,
    /// Length of the field name (the text's prefix before the colon).
    name_len: usize,
}

impl RenderedField {
    /// `name: value` on one line.
    fn new(name: &str, value: &str) -> Self {
        let mut text = String::with_capacity(name.len() + 2 + value.len());
        text.push_str(name);
        text.push_str(": ");
        text.push_str(value);
        Self {
            text,
            name_len: name.len(),
        }
    }

    /// Splits a rendered header section (LF, CRLF or CR line ends) into fields; drops blank
    /// lines. A continuation line is appended to the field before it.
    fn split_all(text: &str) -> Result<Vec<Self>, RowError> {
        let mut fields: Vec<Self> = Vec::with_capacity(8);
        for (i, line) in split_lf_cr(text).enumerate() {
            // A line starting with a printable ASCII character is not blank: no trim needed.
            if !line.as_bytes().first().is_some_and(u8::is_ascii_graphic) && line.trim().is_empty()
            {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                match fields.last_mut() {
                    Some(f) => {
                        f.text.push('\n');
                        f.text.push_str(line);
                    }
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
            match memchr::memchr(b':', line.as_bytes()).map(|colon| &line[..colon]) {
                Some(name) if is_field_name(name) => fields.push(Self {
                    text: line.to_owned(),
                    name_len: name.len(),
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

    /// The field name as the template writes it.
    pub(crate) fn name(&self) -> &str {
        &self.text[..self.name_len]
    }

    fn lines(&self) -> std::str::Split<'_, char> {
        self.text.split('\n')
    }

    fn borrowed(&self) -> Field<'_> {
        Field {
            name: self.name(),
            lines: self.lines().collect(),
        }
    }

    /// True if the field is named `name` (ASCII case-insensitive).
    pub(crate) fn is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name)
    }

    /// The value with folding removed (RFC 5322 §2.2.3), without the name and colon.
    pub(crate) fn unfolded_value(&self) -> String {
        self.text[self.name_len + 1..].replace('\n', "")
    }

    /// Appends the field with CRLF line ends: as rendered when it is ASCII or `smtputf8` is set,
    /// else RFC 2047-encoded and folded. With `fold_long`, a field with a line over
    /// [`MAX_LINE`] octets is encoded and folded too (encoded-words can split any text).
    pub(crate) fn write(&self, out: &mut Vec<u8>, smtputf8: bool, fold_long: bool) {
        let ascii = self.text.is_ascii();
        let long =
            fold_long && self.text.len() > MAX_LINE && self.lines().any(|l| l.len() > MAX_LINE);
        if (smtputf8 || ascii) && !long {
            if memchr::memchr(b'\n', self.text.as_bytes()).is_none() {
                push_line(out, &self.text);
            } else {
                for line in self.lines() {
                    push_line(out, line);
                }
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
        let mut from = None;
        let mut fields = RenderedField::split_all(header_text)?;
        for (i, field) in fields.iter().enumerate() {
            if field.is("date") {
                has_date = true;
            } else if field.is("message-id") && message_id.is_none() {
                let v = field.unfolded_value();
                let v = v.trim();
                let v = v.strip_prefix('<').unwrap_or(v);
                let v = v.strip_suffix('>').unwrap_or(v);
                message_id = Some(v.trim().to_owned());
            } else if field.is("from") && from.is_none() {
                from = Some(i);
            }
        }
        if !has_date {
            let field = with_rfc2822_date(opts.now, |date| RenderedField::new("Date", date))
                .map_err(|e| RowError::Render {
                    line: 0,
                    message: format!("cannot format the Date header: {e}"),
                })?;
            fields.push(field);
        }
        let message_id = match message_id {
            Some(id) => id,
            None => {
                let from_domain;
                let domain = match &opts.message_id_domain {
                    Some(d) => d.as_str(),
                    None => {
                        from_domain = from.and_then(|i| message_id_domain(&fields[i]));
                        from_domain.as_deref().unwrap_or(FALLBACK_MESSAGE_ID_DOMAIN)
                    }
                };
                // `<nanoseconds>.<row>.<pid>@<domain>`, the numbers written with `itoa`.
                let mut id = String::with_capacity(64 + domain.len());
                let mut digits = itoa::Buffer::new();
                id.push_str(digits.format(opts.now.unix_timestamp_nanos()));
                id.push('.');
                id.push_str(digits.format(row_number));
                id.push('.');
                id.push_str(digits.format(process_id()));
                id.push('@');
                id.push_str(domain);
                let mut text = String::with_capacity(id.len() + 14);
                text.push_str("Message-ID: <");
                text.push_str(&id);
                text.push('>');
                fields.push(RenderedField {
                    text,
                    name_len: "Message-ID".len(),
                });
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
        self.fields.iter().map(|f| f.text.len() + 2).sum()
    }
}

/// The Message-ID domain taken from the From field's address: lowercased, when it is a plain
/// domain. Rows with the same From share the answer (one per thread is kept).
fn message_id_domain(from: &RenderedField) -> Option<String> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(String, Option<String>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let value = &from.text[from.name_len + 1..];
    LAST.with_borrow_mut(|last| {
        if let Some((v, domain)) = last.as_ref()
            && v == value
        {
            return domain.clone();
        }
        let domain = address_in(&from.unfolded_value())
            .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
            .filter(|d| is_plain_domain(d));
        *last = Some((value.to_owned(), domain.clone()));
        domain
    })
}

/// Calls `f` with `now` in RFC 2822 form, formatted once per second and thread (rows rendered
/// in the same second share the text).
fn with_rfc2822_date<T>(
    now: time::OffsetDateTime,
    f: impl FnOnce(&str) -> T,
) -> Result<T, time::error::Format> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<((i64, time::UtcOffset), String)>> =
            const { std::cell::RefCell::new(None) };
    }
    let key = (now.unix_timestamp(), now.offset());
    LAST.with_borrow_mut(|last| {
        match last {
            Some((k, _)) if *k == key => {}
            _ => *last = Some((key, now.format(&Rfc2822)?)),
        }
        Ok(f(last.as_ref().map_or("", |(_, text)| text.as_str())))
    })
}

/// The process id, asked of the kernel once (it was a `getpid` call per message).
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}
