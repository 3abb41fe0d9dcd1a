//! Property tests for message rendering: whatever the list's values hold (CR, LF, NUL, other
//! control characters, non-ASCII, colons, quotes, angle brackets), a value never creates a header
//! line, and the message has CRLF line endings only and no line over 998 octets.

use pipemail::input::Row;
use pipemail::template::{RenderOptions, Template};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use time::macros::datetime;

const TEMPLATE: &str = concat!(
    "From: Mailer <mailer@example.org>\n",
    "To: {{ name }} <{{ email }}>\n",
    "Subject: Hello {{ name }}, {{ note }}\n",
    "X-Note: {{ note }}\n",
    "  folded {{ name }}\n",
    "\n",
    "Dear {{ name }},\n",
    "{{ note }}\n",
);

/// Header names the rendered message must have, in order (Date and Message-ID are added).
const NAMES: [&str; 6] = ["From", "To", "Subject", "X-Note", "Date", "Message-ID"];

fn value() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '\r', '\n', '\0', '\t', ':', ' ', '"', '<', '>', ',', '(', ')', '\\', '=', '?', '@', 'é',
        '€', '😀', '\u{85}', '\u{7f}', '\u{2028}',
    ]);
    let chars = prop_oneof![
        3 => prop::char::range('a', 'z'),
        3 => special,
        2 => any::<char>(),
    ];
    prop::collection::vec(chars, 0..120).prop_map(|v| v.into_iter().collect())
}

fn config() -> Config {
    Config {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x7069_7065_6d61_696c),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn values_never_create_headers(name in value(), note in value(), smtputf8 in any::<bool>()) {
        let columns: Vec<String> = ["email", "name", "note"].map(String::from).to_vec();
        let template = Template::parse(TEMPLATE.as_bytes(), "props.eml", &columns)
            .expect("the template parses");
        let row = Row {
            number: 1,
            line: 2,
            email: "rcpt@example.com".to_owned(),
            fields: vec!["rcpt@example.com".to_owned(), name.clone(), note.clone()],
            problem: None,
        };
        let opts = RenderOptions {
            smtputf8,
            now: datetime!(2026-11-25 20:14:18 UTC),
            message_id_domain: None,
        };
        let rendered = template.render(&row, &columns, &opts).expect("renders");
        let data = &rendered.data;

        // CRLF only: every LF follows a CR and every CR precedes an LF.
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                prop_assert!(i > 0 && data[i - 1] == b'\r', "bare LF at {}", i);
            }
            if b == b'\r' {
                prop_assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR at {}", i);
            }
        }
        prop_assert!(data.ends_with(b"\r\n"));

        // No line over 998 octets.
        let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        for line in &lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            prop_assert!(line.len() <= 998, "line of {} octets", line.len());
        }

        // The header section has exactly the template's fields, in order.
        let text = String::from_utf8_lossy(data);
        let end = text.find("\r\n\r\n").expect("blank line after the headers");
        let mut names = Vec::new();
        for line in text[..end].split("\r\n") {
            prop_assert!(!line.is_empty());
            if line.starts_with([' ', '\t']) {
                prop_assert!(!names.is_empty(), "continuation line first");
                continue;
            }
            let (name, _) = line.split_once(':').expect("a header line has a colon");
            names.push(name.to_owned());
        }
        prop_assert_eq!(&names, &NAMES.map(String::from).to_vec());

        // Unstructured fields are pure ASCII unless SMTPUTF8 is used.
        if !smtputf8 {
            let mut field = "";
            for line in text[..end].split("\r\n") {
                if !line.starts_with([' ', '\t']) {
                    field = line.split_once(':').map_or("", |(n, _)| n);
                }
                if field == "Subject" || field == "X-Note" {
                    prop_assert!(line.is_ascii(), "non-ASCII in {}: {:?}", field, line);
                }
            }
        }

        // Sanitizing is reported exactly when a header value had a control character.
        let dirty = |s: &str| s.chars().any(|c| c.is_control() && c != '\t');
        prop_assert_eq!(rendered.sanitized, dirty(&name) || dirty(&note));
    }
}
