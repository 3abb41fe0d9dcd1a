//! Helpers for the MIME tests: rows, composers, the wire rules every composed message keeps,
//! and the bridge to Python's `email` package (`tests/support/mime_parse.py`).
//!
//! Use it from an integration test with `#[path = "support/mime.rs"] mod mime_support;`.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use pipemail::input::Row;
use pipemail::message::{ComposeOptions, Composed, Composer, ComposerOptions};
use pipemail::template::{RenderOptions, Template};
use serde_json::Value;
use time::macros::datetime;

pub fn cols(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

pub fn row(number: u64, fields: &[&str]) -> Row {
    Row {
        number,
        line: number + 1,
        email: fields[0].trim().to_owned(),
        fields: fields.iter().map(|s| (*s).to_owned()).collect(),
        problem: None,
    }
}

pub fn opts(eight_bit_mime: bool) -> ComposeOptions {
    ComposeOptions {
        render: RenderOptions {
            smtputf8: false,
            now: datetime!(2026-11-25 20:14:18 UTC),
            message_id_domain: None,
        },
        eight_bit_mime,
    }
}

/// A composer for `template` (+ `html`), attachments under `dir`.
pub fn composer(
    template: &str,
    html: Option<&str>,
    columns: &[String],
    dir: &Path,
    attach: &[&str],
) -> Composer {
    let mut t = Template::parse_for_mime(template.as_bytes(), "t.eml", columns).expect("parse");
    if let Some(h) = html {
        t.add_html(h.as_bytes(), "t.html", columns).expect("html");
    }
    Composer::new(
        t,
        &ComposerOptions {
            attach: attach.iter().map(|a| dir.join(a)).collect(),
            attach_dir: dir.to_owned(),
            ..ComposerOptions::default()
        },
    )
    .expect("composer")
}

/// Wire rules every composed message keeps: CRLF only, no line over 998 octets, ends in CRLF;
/// ASCII only unless 8-bit was allowed.
pub fn check_wire(m: &Composed, eight_bit_allowed: bool) {
    let d = &m.data;
    for (i, &b) in d.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && d[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(d.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    assert!(d.ends_with(b"\r\n"));
    for line in d.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets", line.len() - 1);
    }
    assert_eq!(m.eight_bit, !d.is_ascii());
    if !eight_bit_allowed {
        assert!(d.is_ascii(), "8-bit octets without 8BITMIME");
    }
}

/// Parses with Python's email package.
pub fn parse(data: &[u8]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/mime_parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

pub fn header<'a>(v: &'a Value, name: &str) -> Vec<&'a str> {
    v["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .map(|h| h[1].as_str().expect("value"))
        .collect()
}

pub fn payload(part: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(part["payload_b64"].as_str().expect("payload"))
        .expect("base64")
}

pub fn types(part: &Value) -> Vec<&str> {
    part["parts"]
        .as_array()
        .expect("multipart")
        .iter()
        .map(|p| p["content_type"].as_str().expect("type"))
        .collect()
}

/// The text and the HTML of a message whose `root` is `multipart/alternative` with the
/// text part first and the HTML part last.
pub fn alternative_texts(root: &Value) -> (String, String) {
    assert_eq!(root["content_type"], "multipart/alternative");
    assert_eq!(
        types(root),
        ["text/plain", "text/html"],
        "text first, HTML last"
    );
    (text_of(&root["parts"][0]), text_of(&root["parts"][1]))
}

pub fn no_defects(v: &Value) {
    fn walk(p: &Value) {
        assert_eq!(p["defects"], Value::Array(vec![]), "{p}");
        if let Some(parts) = p["parts"].as_array() {
            parts.iter().for_each(walk);
        }
    }
    assert_eq!(v["defects"], Value::Array(vec![]));
    walk(&v["root"]);
}

pub fn text_of(part: &Value) -> String {
    part["text"].as_str().expect("text").replace("\r\n", "\n")
}

pub fn data_text(m: &Composed) -> String {
    String::from_utf8_lossy(&m.data).into_owned()
}

/// Bytes 0..=255 repeated: binary, with CR, LF, NUL and 8-bit octets.
pub fn binary(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

/// Checks the deliveries of a campaign whose rows (address, name) each get a message
/// `Subject: Report for ADDRESS` copied to `cc` and blind-copied to `bcc`: every delivery
/// (its `Delivered-To:` address, the message) is free of defects and of any trace of `bcc`,
/// names `cc` in its `Cc:` field, and is `multipart/alternative` (`Grüße NAME!`,
/// `html(NAME)`) + `attachment`; the row, `cc` and `bcc` each got each row's message once.
pub fn check_report_deliveries(
    delivered: &[(String, Vec<u8>)],
    rows: &[(&str, &str)],
    (cc, bcc): (&str, &str),
    html: impl Fn(&str) -> String,
    attachment: &[u8],
) {
    let mut got: std::collections::BTreeMap<(&str, String), usize> = Default::default();
    for (to, msg) in delivered {
        assert!(
            !String::from_utf8_lossy(msg).contains(bcc),
            "Bcc leaked into the message"
        );
        let v = parse(msg);
        no_defects(&v);
        assert!(header(&v, "Bcc").is_empty());
        assert_eq!(header(&v, "Cc"), [cc]);
        let row_addr = header(&v, "Subject")[0]
            .trim_start_matches("Report for ")
            .to_owned();
        let (_, name) = rows
            .iter()
            .find(|(addr, _)| *addr == row_addr)
            .unwrap_or_else(|| panic!("a message for no row: {row_addr}"));
        let root = &v["root"];
        assert_eq!(
            types(root),
            ["multipart/alternative", "application/octet-stream"]
        );
        let alt = &root["parts"][0];
        assert_eq!(text_of(&alt["parts"][0]), format!("Grüße {name}!\n"));
        assert_eq!(text_of(&alt["parts"][1]), html(name));
        assert_eq!(payload(&root["parts"][1]), attachment);
        *got.entry((to.as_str(), row_addr)).or_default() += 1;
    }
    for (row, _) in rows {
        for to in [row, cc, bcc] {
            assert_eq!(
                got.get(&(to, (*row).to_owned())),
                Some(&1),
                "{to} got {row}'s message once: {got:?}"
            );
        }
    }
}
