//! Property tests for composed MIME messages: whatever a row's values hold (CR, LF, NUL,
//! non-ASCII, header-like text, `--` lines, boundary-like strings), a value never adds a header
//! field or a MIME part, the wire rules hold (CRLF only, no line over 998 octets, 7-bit without
//! 8BITMIME), and an independent parser (Python's `email`, `tests/support/mime_parse.py`)
//! reads back the same structure and text.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use pipemail::input::Row;
use pipemail::message::{ComposeOptions, Composer, ComposerOptions};
use pipemail::template::{RenderOptions, Template};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::Value;
use time::macros::datetime;

const TEMPLATE: &str = concat!(
    "From: Mailer <mailer@example.org>\n",
    "To: {{ name }} <{{ email }}>\n",
    "Subject: Hello {{ name }}, {{ note }}\n",
    "Bcc: archive@example.org\n",
    "\n",
    "Dear {{ name }},\n",
    "{{ note }}\n",
);

const HTML: &str = "<p>Dear {{ name }},</p>\n<p>{{ note }}</p>\n";

/// Top-level header names, in order.
const NAMES: [&str; 7] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
];

fn value() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        "\r",
        "\n",
        "\r\n",
        "\0",
        "\t",
        ":",
        " ",
        "\"",
        "<",
        ">",
        "=",
        "?",
        "@",
        "é",
        "€",
        "😀",
        "\u{85}",
        "\u{2028}",
        "--",
        "\r\n--",
        "\n--",
        "boundary=",
        "Content-Type: text/html",
        "\r\nBcc: x@evil.example",
        "\n\n",
        ".",
        "\r\n.\r\n",
        "=?UTF-8?B?QQ==?=",
    ]);
    let piece = prop_oneof![
        3 => "[a-z]{1,8}".prop_map(String::from),
        3 => special.prop_map(String::from),
        1 => any::<char>().prop_map(String::from),
        1 => "[A-Za-z0-9]{40}".prop_map(|s| format!("--{s}")),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn config() -> Config {
    Config {
        cases: 128,
        rng_seed: RngSeed::Fixed(0x6d69_6d65_7072_6f70),
        failure_persistence: None,
        ..Config::default()
    }
}

/// One Python process for all cases (`--stream`): its start-up would dominate otherwise.
fn parse(data: &[u8]) -> Value {
    static PARSER: OnceLock<Mutex<(ChildStdin, BufReader<ChildStdout>)>> = OnceLock::new();
    #[allow(clippy::zombie_processes)] // ends when the test binary closes its stdin
    let parser = PARSER.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/mime_parse.py");
        let mut child = Command::new("python3")
            .args([script, "--stream"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Mutex::new((stdin, stdout))
    });
    let mut guard = parser.lock().unwrap_or_else(|e| e.into_inner());
    let (stdin, stdout) = &mut *guard;
    writeln!(stdin, "{}", data.len()).expect("write");
    stdin.write_all(data).expect("write");
    stdin.flush().expect("flush");
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read");
    assert!(
        !line.is_empty(),
        "the parser died on:\n{}",
        String::from_utf8_lossy(data)
    );
    serde_json::from_str(&line).expect("json")
}

/// Line ends as the composer writes them: CRLF, lone CR and LF all become one LF here.
fn lf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn values_never_add_headers_or_parts(
        name in value(),
        note in value(),
        eight_bit_mime in any::<bool>(),
        smtputf8 in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("a.bin"), [0u8, 1, 2, 255, b'-', b'-', b'\n']).expect("write");
        let columns: Vec<String> = ["email", "name", "note"].map(String::from).to_vec();
        let mut template = Template::parse_for_mime(TEMPLATE.as_bytes(), "p.eml", &columns)
            .expect("parses");
        template.add_html(HTML.as_bytes(), "p.html", &columns).expect("html");
        let composer = Composer::new(template, &ComposerOptions {
            attach: vec![dir.path().join("a.bin")],
            attach_dir: dir.path().to_owned(),
            ..ComposerOptions::default()
        }).expect("composer");
        let row = Row {
            number: 1,
            line: 2,
            email: "rcpt@example.com".to_owned(),
            fields: vec!["rcpt@example.com".to_owned(), name.clone(), note.clone()],
            problem: None,
        };
        let opts = ComposeOptions {
            render: RenderOptions {
                smtputf8,
                now: datetime!(2026-11-25 20:14:18 UTC),
                message_id_domain: None,
            },
            eight_bit_mime,
        };
        let m = composer.compose(&row, &columns, &opts).expect("composes");
        let data = &m.data;
        prop_assert_eq!(&m.extra_recipients, &vec!["archive@example.org".to_owned()]);

        // Wire rules.
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                prop_assert!(i > 0 && data[i - 1] == b'\r', "bare LF at {}", i);
            }
            if b == b'\r' {
                prop_assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR at {}", i);
            }
        }
        for line in data.split(|&b| b == b'\n') {
            prop_assert!(line.len() <= 999, "line of {} octets", line.len());
        }
        // Without 8BITMIME the body is 7-bit; without SMTPUTF8 so is the Subject (address
        // fields may keep a bare non-ASCII address, which needs SMTPUTF8).
        let text = String::from_utf8_lossy(data);
        let end = text.find("\r\n\r\n").expect("blank line");
        if !eight_bit_mime {
            prop_assert!(text[end..].is_ascii());
        }
        if !smtputf8 {
            let subject = text[..end]
                .split("\r\nDate:")
                .next()
                .and_then(|h| h.split("Subject:").nth(1))
                .expect("Subject");
            prop_assert!(subject.is_ascii(), "{}", subject);
        }

        // The header section: exactly the expected fields; no Bcc.
        let mut names = Vec::new();
        for line in text[..end].split("\r\n") {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            names.push(line.split_once(':').expect("a colon").0.to_owned());
        }
        prop_assert_eq!(&names, &NAMES.map(String::from).to_vec());

        // An independent parser sees the same structure and text.
        let v = parse(data);
        let root = &v["root"];
        prop_assert_eq!(&root["content_type"], "multipart/mixed");
        let parts = root["parts"].as_array().expect("parts");
        prop_assert_eq!(parts.len(), 2);
        prop_assert_eq!(&parts[0]["content_type"], "multipart/alternative");
        prop_assert_eq!(&parts[1]["filename"], "a.bin");
        let alt = parts[0]["parts"].as_array().expect("alternative");
        prop_assert_eq!(alt.len(), 2);
        // Each boundary delimits exactly the parts the composer made.
        let boundaries = [
            root["boundary"].as_str().expect("mixed boundary"),
            parts[0]["boundary"].as_str().expect("alternative boundary"),
        ];
        prop_assert_ne!(boundaries[0], boundaries[1]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        for b in boundaries {
            let delim = format!("--{b}");
            let close = format!("--{b}--");
            prop_assert_eq!(lines.iter().filter(|l| **l == delim).count(), 2);
            prop_assert_eq!(lines.iter().filter(|l| **l == close).count(), 1);
            prop_assert_eq!(text.matches(b).count(), 4, "declared once, used three times");
        }

        let plain = lf(alt[0]["text"].as_str().expect("text"));
        prop_assert_eq!(plain, lf(&format!("Dear {name},\n{note}\n")));
        let html = lf(alt[1]["text"].as_str().expect("html"));
        prop_assert!(html.starts_with("<p>Dear "), "{}", html);
        prop_assert!(!html.contains("<script") && html.matches("<p>").count() == 2, "{}", html);
    }
}
