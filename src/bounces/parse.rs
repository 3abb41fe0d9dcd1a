//! Reading one bounce message: RFC 3464 `multipart/report` DSNs, and the common text forms
//! (Exim, Postfix, Microsoft Exchange) that state the recipient and status in prose.
//!
//! MIME structure and header fields are parsed by [`mail_parser`]; the `message/delivery-status`
//! body is a sequence of header-field blocks separated by blank lines (RFC 3464 §2.1), each
//! parsed with mail-parser's header parser.

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

use crate::deliver::dsn;

/// What the reporting MTA did for a recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `failed`: the message will not be delivered (a bounce).
    Failed,
    /// `delayed`: still trying; not a bounce.
    Delayed,
    /// `delivered`, `relayed`, `expanded` or anything else.
    Other(String),
}

/// Where the bounce's facts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A `message/delivery-status` part (RFC 3464).
    Dsn,
    /// Prose in a text part (non-standard bounces).
    Text,
}

/// One recipient's entry in a bounce message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    /// The failed recipient (`Final-Recipient`, or the address named in the text).
    pub recipient: Option<String>,
    /// The action.
    pub action: Action,
    /// The enhanced status code, e.g. `5.1.1`.
    pub status: Option<String>,
    /// The remote server's diagnostic, e.g. `550 5.1.1 <a@b.c>: user unknown`.
    pub diagnostic: Option<String>,
    /// `Original-Envelope-Id` (decoded from xtext).
    pub envid: Option<String>,
    /// The row in a VERP address the bounce was sent to (`bounces+ROW@…`).
    pub verp_row: Option<u64>,
    /// The Message-ID of the returned message, without angle brackets.
    pub message_id: Option<String>,
    /// Where the facts came from.
    pub form: Form,
}

/// Headers that carry the address a bounce was delivered to (the VERP return path).
const ENVELOPE_HEADERS: [&str; 5] = [
    "Delivered-To",
    "X-Original-To",
    "Envelope-To",
    "X-Envelope-To",
    "To",
];

/// Subjects of bounces that have no `message/delivery-status` part.
const BOUNCE_SUBJECTS: [&str; 9] = [
    "undeliver",
    "delivery status notification",
    "mail delivery failed",
    "returned mail",
    "failure notice",
    "delivery has failed",
    "delivery failure",
    "mail delivery system",
    "non-delivery",
];

/// Parses a message; returns one [`Bounce`] per recipient it reports, or nothing if it is
/// not a bounce (no delivery-status part, not from a mailer daemon, no bounce subject).
pub fn parse(raw: &[u8]) -> Vec<Bounce> {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Vec::new();
    };
    let verp_row = ENVELOPE_HEADERS
        .iter()
        .flat_map(|name| raw_values(&msg.parts[0].headers, raw, name))
        .flat_map(|v| addresses(&v))
        .find_map(|a| dsn::verp_row(&a));
    let message_id = returned_message_id(&msg);
    let mut out = match dsn_part(&msg) {
        Some(body) => from_delivery_status(body),
        None if looks_like_bounce(&msg, raw) => from_text(&msg).into_iter().collect(),
        None => Vec::new(),
    };
    for b in &mut out {
        b.verp_row = verp_row;
        if b.message_id.is_none() {
            b.message_id.clone_from(&message_id);
        }
    }
    out
}

/// Raw, unfolded values of every header field `name` in `headers`.
fn raw_values(headers: &[mail_parser::Header<'_>], raw: &[u8], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .filter_map(|h| raw.get(h.offset_start as usize..h.offset_end as usize))
        .map(|v| unfold(&String::from_utf8_lossy(v)))
        .collect()
}

fn unfold(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The body of a `message/delivery-status` (or `message/global-delivery-status`) part.
fn dsn_part<'a>(msg: &'a Message<'a>) -> Option<&'a [u8]> {
    msg.parts.iter().find_map(|p| {
        let ct = p.content_type()?;
        let sub = ct.subtype()?;
        (ct.ctype().eq_ignore_ascii_case("message")
            && (sub.eq_ignore_ascii_case("delivery-status")
                || sub.eq_ignore_ascii_case("global-delivery-status")))
        .then(|| p.contents())
    })
}

/// Field blocks of a delivery-status body: per-message fields first, then one per recipient.
fn field_blocks(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let block = format!(
                "{}\r\n\r\n",
                block.trim_start_matches('\n').replace('\n', "\r\n")
            );
            let raw = block.as_bytes();
            let Some(parsed) = MessageParser::new().parse_headers(raw) else {
                return Vec::new();
            };
            parsed.parts[0]
                .headers
                .iter()
                .filter_map(|h| {
                    let v = raw.get(h.offset_start as usize..h.offset_end as usize)?;
                    Some((
                        h.name().to_ascii_lowercase(),
                        unfold(&String::from_utf8_lossy(v)),
                    ))
                })
                .collect()
        })
        .collect()
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The part after `type;` in `rfc822; user@example.com`.
fn after_type(v: &str) -> String {
    v.split_once(';').map_or(v, |(_, a)| a).trim().to_owned()
}

fn from_delivery_status(body: &[u8]) -> Vec<Bounce> {
    let blocks = field_blocks(body);
    let Some((first, rest)) = blocks.split_first() else {
        return Vec::new();
    };
    let envid = field(first, "original-envelope-id").map(|v| {
        let v = v.trim();
        dsn::decode_xtext(v).unwrap_or_else(|_| v.to_owned())
    });
    rest.iter()
        .filter(|b| field(b, "final-recipient").is_some() || field(b, "action").is_some())
        .map(|b| {
            let recipient = field(b, "final-recipient")
                .or_else(|| field(b, "original-recipient"))
                .map(after_type)
                .map(|a| {
                    let a = a.trim_matches(['<', '>']);
                    dsn::decode_xtext(a).unwrap_or_else(|_| a.to_owned())
                });
            let action = match field(b, "action").map(str::to_ascii_lowercase).as_deref() {
                Some("failed") => Action::Failed,
                Some("delayed") => Action::Delayed,
                Some(other) => Action::Other(other.to_owned()),
                None => Action::Other(String::new()),
            };
            let status = field(b, "status")
                .and_then(|s| s.split_whitespace().next())
                .filter(|s| is_enhanced(s))
                .map(str::to_owned);
            let diagnostic = field(b, "diagnostic-code").map(after_type);
            Bounce {
                recipient,
                action,
                status,
                diagnostic,
                envid: envid.clone(),
                verp_row: None,
                message_id: None,
                form: Form::Dsn,
            }
        })
        .collect()
}

/// Whether a message without a delivery-status part is a bounce.
fn looks_like_bounce(msg: &Message<'_>, raw: &[u8]) -> bool {
    let from_daemon = raw_values(&msg.parts[0].headers, raw, "From")
        .iter()
        .any(|f| {
            let f = f.to_ascii_lowercase();
            f.contains("mailer-daemon") || f.contains("postmaster")
        });
    let subject = msg.subject().unwrap_or_default().to_ascii_lowercase();
    from_daemon || BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s))
}

/// `d.d.d` with class 2, 4 or 5 (RFC 3463).
fn is_enhanced(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>, max: usize| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!(s.as_bytes().first(), Some(b'2' | b'4' | b'5'))
        && ok(parts.next(), 1)
        && ok(parts.next(), 3)
        && ok(parts.next(), 3)
        && parts.next().is_none()
}

const ADDRESS_DELIMS: &[char] = &['<', '>', '(', ')', '[', ']', ':', ';', ',', '"', '\''];

/// Tokens that look like `local@domain.tld`.
fn addresses(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || ADDRESS_DELIMS.contains(&c))
        .map(|t| t.trim_end_matches('.'))
        .filter(|t| {
            t.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && d.contains('.') && !d.contains('@') && !d.starts_with('.')
            })
        })
        .map(str::to_owned)
        .collect()
}

/// Facts stated in prose: the paragraph holding the first enhanced status code gives the
/// status, the diagnostic (from the SMTP reply code on) and the recipient (its first address).
fn from_text(msg: &Message<'_>) -> Option<Bounce> {
    let text = msg.body_text(0)?.replace("\r\n", "\n");
    let paragraphs: Vec<&str> = text.split("\n\n").collect();
    let found = paragraphs.iter().enumerate().find_map(|(i, p)| {
        let words: Vec<&str> = p
            .split(|c: char| c.is_whitespace() || c == '\'' || c == '(')
            .collect();
        let at = words
            .iter()
            .position(|w| is_enhanced(w.trim_end_matches([';', ':', ',', '.'])))?;
        Some((i, words, at))
    });
    let Some((i, words, at)) = found else {
        // A bounce with no status code: a failure whose cause is not stated.
        let recipient = paragraphs
            .iter()
            .find_map(|p| addresses(p).into_iter().next());
        return Some(Bounce {
            recipient,
            action: Action::Failed,
            status: None,
            diagnostic: None,
            envid: None,
            verp_row: None,
            message_id: None,
            form: Form::Text,
        });
    };
    let status = words[at].trim_end_matches([';', ':', ',', '.']).to_owned();
    // Start at the 3-digit reply code just before the enhanced code (`550 5.1.1` / `550-5.1.1`).
    let mut start = at;
    if at > 0 && words[at - 1].len() == 3 && words[at - 1].bytes().all(|b| b.is_ascii_digit()) {
        start = at - 1;
    }
    let diagnostic = words[start..]
        .iter()
        .filter(|w| !w.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches(['\'', ')'])
        .to_owned();
    // The recipient is named in the same paragraph, or in the one just before it.
    let recipient = addresses(paragraphs[i]).into_iter().next().or_else(|| {
        i.checked_sub(1)
            .and_then(|j| addresses(paragraphs[j]).into_iter().next())
    });
    let action = if status.starts_with('4') {
        Action::Delayed
    } else {
        Action::Failed
    };
    Some(Bounce {
        recipient,
        action,
        status: Some(status),
        diagnostic: Some(diagnostic),
        envid: None,
        verp_row: None,
        message_id: None,
        form: Form::Text,
    })
}

/// The Message-ID of the returned message: from a `message/rfc822` or `text/rfc822-headers`
/// part, else from a `Message-ID:` line in the text (bounces that quote the message inline).
fn returned_message_id(msg: &Message<'_>) -> Option<String> {
    let strip = |s: &str| s.trim().trim_matches(['<', '>']).to_owned();
    for part in msg.parts.iter().skip(1) {
        if let PartType::Message(inner) = &part.body
            && let Some(id) = inner.message_id()
        {
            return Some(strip(id));
        }
        let is_headers = part.content_type().is_some_and(|ct| {
            ct.subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
        });
        if is_headers {
            let mut block = part.contents().to_vec();
            block.extend_from_slice(b"\r\n\r\n");
            if let Some(id) = MessageParser::new()
                .parse_headers(&block)
                .and_then(|h| h.message_id().map(strip))
            {
                return Some(id);
            }
        }
    }
    (0..msg.text_body.len().max(1)).find_map(|i| {
        let text = msg.body_text(i)?;
        text.lines().find_map(|l| {
            let l = l.trim();
            let (name, value) = l.split_once(':')?;
            (name.eq_ignore_ascii_case("message-id"))
                .then(|| strip(value))
                .filter(|v| v.contains('@'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes() {
        assert!(is_enhanced("5.1.1"));
        assert!(is_enhanced("4.4.7"));
        assert!(is_enhanced("5.1.10"));
        assert!(!is_enhanced("3.1.1"));
        assert!(!is_enhanced("5.1"));
        assert!(!is_enhanced("1.2.3.4"));
        assert!(!is_enhanced("5.1.1a"));
    }

    #[test]
    fn address_tokens() {
        assert_eq!(
            addresses("RCPT TO:<a.b@ex.com>: host mx.ex.com[1.2.3.4] said"),
            ["a.b@ex.com"]
        );
        assert_eq!(addresses("to 'x@y.org'."), ["x@y.org"]);
        assert!(addresses("no at here, @foo, a@b").is_empty());
    }

    #[test]
    fn dsn_with_two_recipients_and_xtext() {
        let m =
            b"From: MAILER-DAEMON@mx.ex.com\r\nTo: b@ex.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n\
--B\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mx.ex.com\r\nOriginal-Envelope-Id: c+2Dx.7\r\n\r\n\
Final-Recipient: rfc822; one@ex.org\r\nAction: failed\r\nStatus: 5.1.1 (user unknown)\r\n\r\n\
Final-Recipient: rfc822; two@ex.org\r\nAction: delayed\r\nStatus: 4.2.2\r\n\
Diagnostic-Code: smtp; 452 4.2.2 mailbox\r\n  full\r\n\r\n--B--\r\n";
        let v = parse(m);
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].envid.as_deref(), Some("c-x.7"));
        assert_eq!(v[0].status.as_deref(), Some("5.1.1"));
        assert_eq!(v[0].action, Action::Failed);
        assert_eq!(v[1].recipient.as_deref(), Some("two@ex.org"));
        assert_eq!(v[1].action, Action::Delayed);
        assert_eq!(v[1].diagnostic.as_deref(), Some("452 4.2.2 mailbox full"));
    }

    #[test]
    fn not_a_bounce() {
        let m = b"From: friend@ex.com\r\nTo: me@ex.org\r\nSubject: Re: hello\r\n\r\nThanks, 5.1.1 is fine\r\n";
        assert!(parse(m).is_empty());
    }
}
