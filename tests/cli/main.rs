//! Binary tests of `pipemail send`: the real executable (via `assert_cmd`) against the
//! in-process sink ([`pipemail::sink::SinkHandle`]), in a fresh temporary directory with a
//! cleared environment.
//!
//! Every run is bounded (`assert_cmd`'s timeout, bounded polls); no assertion depends on how
//! long anything took. Retry delays are 10 ms so that retries are quick, and the reply
//! timeouts are long so that a slow machine never turns into a timeout.
//!
//! The tests are grouped by topic in the modules below; fixtures shared with other test
//! binaries are in `tests/util/`.

#[path = "../support/mod.rs"]
mod support;
#[path = "../util/mod.rs"]
mod util;

mod deliverability;
mod delivery;
mod exit_codes;
mod input;
mod ops;
mod ops_list;
mod ops_list_mime;
mod resume;
mod sessions;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::{Rfc2822, Rfc3339};

use pipemail::sink::{Fault, FaultPlan, SinkConfig, SinkHandle, StoredMessage};
use util::{
    COLUMNS, Fx, RUN_LIMIT, SIMPLE_LIST, SIMPLE_TEMPLATE, expect_code, host_of, list_args, rules,
    run,
};

// ----- fixture -------------------------------------------------------------------------------

impl Fx {
    /// `pipemail send` to `host` without TLS, with quick retries and generous timeouts.
    fn send(&self, host: &str) -> assert_cmd::Command {
        self.send_tls(host, "none")
    }

    /// Runs [`Fx::send`] to `sink` of `list.csv` with `t.eml`, reporting to `report`, with
    /// the `extra` flags.
    fn send_list(&self, sink: &SinkHandle, report: &str, extra: &[&str]) -> util::Out {
        let mut c = self.send(&host_of(sink));
        c.args(list_args("list.csv", "t.eml", report)).args(extra);
        run(c)
    }

    /// Like [`Fx::send`] with `--tls MODE`.
    fn send_tls(&self, host: &str, mode: &str) -> assert_cmd::Command {
        let mut c = self.cmd();
        c.args(send_args(host)).args(["--tls", mode]);
        c
    }

    /// Like [`Fx::send`], as a `std::process::Command` (for runs the test kills).
    fn send_std(&self, host: &str) -> std::process::Command {
        let mut c = self.cmd_std();
        c.args(send_args(host)).args(["--tls", "none"]);
        c
    }
}

fn send_args(host: &str) -> Vec<String> {
    [
        "send",
        "--host",
        host,
        "--helo",
        "client.test",
        "--retry-delay",
        "10ms",
        "--timeout",
        "60s",
        "--data-timeout",
        "60s",
        "--connect-timeout",
        "20s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

// ----- sink ----------------------------------------------------------------------------------

fn start_sink(cfg: SinkConfig) -> SinkHandle {
    util::sink_with(cfg)
}

fn plain_sink() -> SinkHandle {
    util::mem_sink()
}

fn deliveries(msgs: &[StoredMessage]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for msg in msgs {
        for r in &msg.rcpts {
            *m.entry(r.clone()).or_insert(0) += 1;
        }
    }
    m
}

/// The only stored message for `rcpt`.
#[track_caller]
fn stored_for<'a>(msgs: &'a [StoredMessage], rcpt: &str) -> &'a StoredMessage {
    let found: Vec<&StoredMessage> = msgs.iter().filter(|m| m.rcpts == [rcpt]).collect();
    assert_eq!(found.len(), 1, "messages for {rcpt}: {found:?}");
    found[0]
}

/// A closed port on 127.0.0.1: bound, then released.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

// ----- reports and messages ------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
struct Row {
    row: u64,
    email: String,
    status: String,
    smtp_code: Option<u16>,
    enhanced_code: Option<String>,
    response: String,
    stage: Option<String>,
    attempts: u32,
    message_id: String,
    finished_at: String,
}

/// Parses a report (format by extension: `.json`, `.jsonl`, else CSV) and checks its shape.
fn read_report(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read report {}: {e}", path.display()));
    let rows = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => parse_json(&text),
        Some("jsonl") => parse_jsonl(&text),
        _ => parse_csv(text.as_bytes()),
    };
    for r in &rows {
        assert!(
            OffsetDateTime::parse(&r.finished_at, &Rfc3339).is_ok() && r.finished_at.ends_with('Z'),
            "finished_at is not RFC 3339 UTC: {r:?}"
        );
        assert!(
            ["sent", "failed", "deferred", "skipped", "unknown"].contains(&r.status.as_str()),
            "{r:?}"
        );
    }
    rows
}

fn parse_csv(bytes: &[u8]) -> Vec<Row> {
    let mut rd = csv::Reader::from_reader(bytes);
    let headers: Vec<String> = rd
        .headers()
        .expect("csv header")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(headers, COLUMNS, "report columns");
    rd.deserialize()
        .map(|r| r.expect("report csv row"))
        .collect()
}

fn parse_json(text: &str) -> Vec<Row> {
    let v: Vec<serde_json::Value> = serde_json::from_str(text).expect("report is a JSON array");
    v.into_iter().map(json_row).collect()
}

fn parse_jsonl(text: &str) -> Vec<Row> {
    text.lines()
        .map(|l| json_row(serde_json::from_str(l).expect("report line is JSON")))
        .collect()
}

/// Every column is present, in order, and nothing else.
fn json_row(v: serde_json::Value) -> Row {
    let keys: Vec<&str> = v
        .as_object()
        .expect("report row is an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = COLUMNS.to_vec();
    sorted.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, sorted, "JSON report keys");
    serde_json::from_value(v).expect("report row")
}

/// Rows by row number; fails if a row number appears twice.
#[track_caller]
fn by_row(rows: &[Row]) -> BTreeMap<u64, Row> {
    let mut m = BTreeMap::new();
    for r in rows {
        assert!(m.insert(r.row, r.clone()).is_none(), "row {} twice", r.row);
    }
    m
}

#[track_caller]
fn row_for<'a>(rows: &'a [Row], email: &str) -> &'a Row {
    let found: Vec<&Row> = rows.iter().filter(|r| r.email == email).collect();
    assert_eq!(found.len(), 1, "rows for {email}: {rows:#?}");
    found[0]
}

/// Splits a stored message into its header lines and body (CRLF lines).
fn split_message(data: &[u8]) -> (Vec<String>, &[u8]) {
    let at = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("message has a header/body separator");
    let headers = String::from_utf8(data[..at].to_vec()).expect("ASCII headers");
    (
        headers.split("\r\n").map(str::to_owned).collect(),
        &data[at + 4..],
    )
}

fn header(data: &[u8], name: &str) -> Option<String> {
    let (lines, _) = split_message(data);
    let prefix = format!("{}:", name.to_ascii_lowercase());
    lines
        .iter()
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_owned())
}

/// The exact message pipemail renders for a template without Date/Message-ID: the template's
/// header lines, then the generated `Date` (taken from the stored message and checked to be
/// RFC 2822) and `Message-ID` (the report's), a blank line and the CRLF body.
fn expected_message(stored: &[u8], headers: &[&str], message_id: &str, body: &str) -> Vec<u8> {
    let date = header(stored, "Date").expect("a Date header");
    assert!(
        OffsetDateTime::parse(&date, &Rfc2822).is_ok(),
        "Date {date:?} is not RFC 2822"
    );
    let mut m = String::new();
    for h in headers {
        m.push_str(h);
        m.push_str("\r\n");
    }
    m.push_str(&format!(
        "Date: {date}\r\nMessage-ID: <{message_id}>\r\n\r\n{body}"
    ));
    m.into_bytes()
}

#[track_caller]
fn assert_bytes_eq(got: &[u8], want: &[u8]) {
    assert!(
        got == want,
        "bytes differ\n--- got ---\n{:?}\n--- want ---\n{:?}",
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(want)
    );
}

fn simple_headers(name: &str, email: &str) -> Vec<String> {
    vec![
        "From: Sender <sender@example.org>".to_owned(),
        format!("To: {name} <{email}>"),
        format!("Subject: Hello {name}"),
    ]
}

fn simple_body(name: &str, email: &str) -> String {
    format!("Dear {name},\r\nyour address is {email}.\r\n")
}

/// Checks one happy-path message: envelope, exact bytes, Message-ID = the report's.
#[track_caller]
fn check_simple_message(msgs: &[StoredMessage], row: &Row, name: &str) {
    let m = stored_for(msgs, &row.email);
    assert_eq!(m.from, "sender@example.org");
    assert_eq!(
        header(&m.data, "Message-ID").as_deref(),
        Some(format!("<{}>", row.message_id).as_str()),
        "the report's message_id is the stored Message-ID"
    );
    let headers = simple_headers(name, &row.email);
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let want = expected_message(
        &m.data,
        &headers,
        &row.message_id,
        &simple_body(name, &row.email),
    );
    assert_bytes_eq(&m.data, &want);
}

fn simple_fixture() -> Fx {
    let fx = Fx::new();
    fx.write("list.csv", SIMPLE_LIST);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    fx
}

/// A fixture whose `list.csv` has a row `{p}{i}@x.example,{P}{i}` (`P` the upper case of
/// `p`) for each `i` of `rows`, and [`SIMPLE_TEMPLATE`] as `t.eml`.
fn numbered_fixture<T: std::fmt::Display>(p: char, rows: impl IntoIterator<Item = T>) -> Fx {
    let fx = Fx::new();
    let upper = p.to_ascii_uppercase();
    let mut list = String::from("email,name\n");
    for i in rows {
        list += &format!("{p}{i}@x.example,{upper}{i}\n");
    }
    fx.write("list.csv", &list);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    fx
}

/// Every row `deferred` at stage `connect`, never attempted.
#[track_caller]
fn assert_all_deferred_at_connect(rows: &[Row], n: usize) {
    assert_all_deferred_at(rows, n, "connect");
}

/// As [`assert_all_deferred_at_connect`], at `stage` (`tls`, `auth`: issue 11).
#[track_caller]
fn assert_all_deferred_at(rows: &[Row], n: usize, stage: &str) {
    assert_eq!(rows.len(), n, "{rows:#?}");
    by_row(rows);
    for r in rows {
        assert_eq!(r.status, "deferred", "{r:?}");
        assert_eq!(r.stage.as_deref(), Some(stage), "{r:?}");
        assert_eq!(r.attempts, 0, "{r:?}");
        assert!(r.response.starts_with("not sent: "), "{r:?}");
    }
}
