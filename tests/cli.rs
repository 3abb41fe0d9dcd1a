//! Binary tests of `pipemail send`: the real executable (via `assert_cmd`) against the
//! in-process sink ([`pipemail::sink::SinkHandle`]), in a fresh temporary directory with a
//! cleared environment.
//!
//! Every run is bounded (`assert_cmd`'s timeout, bounded polls); no assertion depends on how
//! long anything took. Retry delays are 10 ms so that retries are quick, and the reply
//! timeouts are long so that a slow machine never turns into a timeout.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tempfile::TempDir;
use time::OffsetDateTime;
use time::format_description::well_known::{Rfc2822, Rfc3339};

use pipemail::sink::{Fault, FaultPlan, SinkConfig, SinkHandle, StoredMessage};

/// Longest any single `pipemail` run may take before the test fails (a hang, not slowness).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The report columns, in order (public API).
const COLUMNS: [&str; 10] = [
    "row",
    "email",
    "status",
    "smtp_code",
    "enhanced_code",
    "response",
    "stage",
    "attempts",
    "message_id",
    "finished_at",
];

// ----- fixture -------------------------------------------------------------------------------

/// A unique temporary directory that each `pipemail` run uses as its working directory.
struct Fx {
    dir: TempDir,
}

impl Fx {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("pipemail-cli-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).expect("write fixture file");
        p
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// `pipemail` with a cleared environment (PATH kept, HOME pointing into the temp dir).
    fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("pipemail").expect("pipemail binary");
        clean_env_assert(&mut c, self.dir.path());
        c.timeout(RUN_LIMIT);
        c
    }

    /// `pipemail send` to `host` without TLS, with quick retries and generous timeouts.
    fn send(&self, host: &str) -> assert_cmd::Command {
        self.send_tls(host, "none")
    }

    /// Like [`Fx::send`] with `--tls MODE`.
    fn send_tls(&self, host: &str, mode: &str) -> assert_cmd::Command {
        let mut c = self.cmd();
        c.args(send_args(host)).args(["--tls", mode]);
        c
    }

    /// Like [`Fx::send`], as a `std::process::Command` (for runs the test kills).
    fn send_std(&self, host: &str) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pipemail"));
        c.env_clear();
        if let Some(p) = std::env::var_os("PATH") {
            c.env("PATH", p);
        }
        c.env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .args(send_args(host))
            .args(["--tls", "none"]);
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

fn clean_env_assert(c: &mut assert_cmd::Command, home: &Path) {
    c.env_clear();
    if let Some(p) = std::env::var_os("PATH") {
        c.env("PATH", p);
    }
    c.env("HOME", home).current_dir(home);
}

/// What a finished run left.
struct Out {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

fn run(mut c: assert_cmd::Command) -> Out {
    let o = c.output().expect("run pipemail");
    Out {
        code: o.status.code(),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[track_caller]
fn expect_code(out: &Out, code: i32) {
    assert_eq!(out.code, Some(code), "unexpected exit code\n{out}");
}

// ----- sink ----------------------------------------------------------------------------------

fn start_sink(cfg: SinkConfig) -> SinkHandle {
    SinkHandle::start(
        "127.0.0.1:0".parse().expect("address"),
        SinkConfig {
            keep_in_memory: true,
            ..cfg
        },
    )
    .expect("start sink")
}

fn plain_sink() -> SinkHandle {
    start_sink(SinkConfig::default())
}

fn host_of(s: &SinkHandle) -> String {
    format!("127.0.0.1:{}", s.local_addr().port())
}

fn rules(r: &[&str]) -> Vec<pipemail::sink::RejectRule> {
    r.iter().map(|s| s.parse().expect("reject rule")).collect()
}

/// How many stored messages went to each recipient.
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

const SIMPLE_LIST: &str =
    "email,name\r\nann@x.example,Ann\r\nbob@y.example,Bob\r\ncy@x.example,Cy\r\n";
const SIMPLE_TEMPLATE: &str = "From: Sender <sender@example.org>\n\
To: {{ name }} <{{ email }}>\n\
Subject: Hello {{ name }}\n\
\n\
Dear {{ name }},\n\
your address is {{ email }}.\n";

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

// ----- happy path ----------------------------------------------------------------------------

#[test]
fn send_all_sent_report_rows_and_stored_messages_match_in_every_format() {
    for (file, format) in [("r.csv", "csv"), ("r.json", "json"), ("r.jsonl", "jsonl")] {
        let fx = simple_fixture();
        let sink = plain_sink();
        let mut c = fx.send(&host_of(&sink));
        c.args(["--list", "list.csv", "--template", "t.eml"])
            .args(["--report", file, "--format", format]);
        let out = run(c);
        expect_code(&out, 0);
        assert!(
            out.stdout.is_empty(),
            "stdout carries nothing with --report FILE\n{out}"
        );
        assert!(
            out.stderr
                .contains("3 rows: 3 sent, 0 failed, 0 deferred, 0 skipped"),
            "{out}"
        );

        let rows = read_report(&fx.path(file));
        assert_eq!(rows.len(), 3, "{format}: one row per list row");
        let rows_by = by_row(&rows);
        assert_eq!(rows_by.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        let msgs = sink.messages();
        assert_eq!(msgs.len(), 3);
        for (n, (email, name)) in [
            ("ann@x.example", "Ann"),
            ("bob@y.example", "Bob"),
            ("cy@x.example", "Cy"),
        ]
        .into_iter()
        .enumerate()
        {
            let r = &rows_by[&(n as u64 + 1)];
            assert_eq!(r.email, email);
            assert_eq!(r.status, "sent", "{r:?}");
            assert_eq!(r.smtp_code, Some(250), "{r:?}");
            assert_eq!(r.enhanced_code.as_deref(), Some("2.0.0"), "{r:?}");
            assert_eq!(r.attempts, 1, "{r:?}");
            assert!(r.message_id.ends_with("@example.org"), "{r:?}");
            check_simple_message(&msgs, r, name);
        }
        // A complete run leaves no journal.
        assert!(!fx.path(&format!("{file}.journal")).exists());
    }
}

#[test]
fn report_format_follows_the_extension_and_dash_is_stdout() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.jsonl",
    ]);
    expect_code(&run(c), 0);
    assert_eq!(read_report(&fx.path("r.jsonl")).len(), 3);

    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--report", "-"]);
    let out = run(c);
    expect_code(&out, 0);
    let rows = parse_csv(&out.stdout);
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows.iter().all(|r| r.status == "sent"));
    assert!(
        !fx.path("-.journal").exists(),
        "no journal for a report on stdout"
    );
}

// ----- mixed replies -------------------------------------------------------------------------

#[test]
fn rejected_550_fails_at_rcpt_and_450_is_retried_then_deferred() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nok@x.example,Ok\nno@bad.example,No\nlater@slow.example,Later\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = start_sink(SinkConfig {
        reject: rules(&["550:*@bad.example", "450:*@slow.example"]),
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--retries", "2"]);
    let out = run(c);
    expect_code(&out, 1);
    assert!(
        out.stderr.contains("3 rows: 1 sent, 1 failed, 1 deferred"),
        "{out}"
    );

    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 3);
    let ok = row_for(&rows, "ok@x.example");
    assert_eq!((ok.status.as_str(), ok.attempts), ("sent", 1));
    let no = row_for(&rows, "no@bad.example");
    assert_eq!(no.status, "failed");
    assert_eq!(no.stage.as_deref(), Some("rcpt"));
    assert_eq!(no.smtp_code, Some(550));
    assert_eq!(no.enhanced_code.as_deref(), Some("5.1.1"));
    assert!(no.response.contains("Recipient address rejected"), "{no:?}");
    assert_eq!(no.attempts, 1, "a permanent rejection is not retried");
    let later = row_for(&rows, "later@slow.example");
    assert_eq!(later.status, "deferred");
    assert_eq!(later.stage.as_deref(), Some("rcpt"));
    assert_eq!(later.smtp_code, Some(450));
    assert_eq!(later.attempts, 3, "--retries 2: three attempts");

    assert_eq!(
        deliveries(&sink.messages()),
        BTreeMap::from([("ok@x.example".to_owned(), 1)])
    );
    // One 550 and three 450 replies to RCPT.
    assert_eq!(sink.stats().rejected_recipients, 4);
}

// ----- 421 mid-run ---------------------------------------------------------------------------

#[test]
fn reply_421_mid_run_retries_the_rest_on_a_new_session_each_recipient_once() {
    let fx = Fx::new();
    let mut list = String::from("email,name\n");
    for i in 1..=5 {
        list += &format!("r{i}@x.example,R{i}\n");
    }
    fx.write("list.csv", &list);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    // Units of session 0: 0 EHLO, 1 MAIL, 2 RCPT, 3 BDAT (row 1), 4 MAIL (row 2) -> 421.
    let sink = start_sink(SinkConfig {
        faults: Some(FaultPlan {
            sessions: vec![vec![Fault::Reply421 { command: 4 }]],
        }),
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--retries", "2"]);
    let out = run(c);
    expect_code(&out, 0);

    let rows = by_row(&read_report(&fx.path("r.csv")));
    assert_eq!(rows.len(), 5);
    for (n, r) in &rows {
        assert_eq!(r.status, "sent", "{r:?}");
        let want = if *n == 1 { 1 } else { 2 };
        assert_eq!(r.attempts, want, "{r:?}");
    }
    let msgs = sink.messages();
    let want: BTreeMap<String, usize> = (1..=5).map(|i| (format!("r{i}@x.example"), 1)).collect();
    assert_eq!(deliveries(&msgs), want, "every recipient exactly once");
    assert!(msgs[0].session == 0 && msgs[1..].iter().all(|m| m.session == 1));
    assert_eq!(sink.stats().sessions, 2);
}

// ----- exit codes ----------------------------------------------------------------------------

#[test]
fn exit_64_for_bad_flags_and_clap_errors() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let cases: [&[&str]; 5] = [
        &["--shard", "5/4"],
        &["--shard", "0/3"],
        &["--bogus-flag"],
        &["--no-pipelining", "--require-pipelining"],
        &["--rate", "fast"],
    ];
    for extra in cases {
        let mut c = fx.send(&host_of(&sink));
        c.args(["--list", "list.csv", "--template", "t.eml"])
            .args(extra);
        let out = run(c);
        assert_eq!(out.code, Some(64), "{extra:?} must be a usage error\n{out}");
        assert!(out.stdout.is_empty(), "{out}");
        assert!(out.stderr.contains("error"), "{out}");
    }
    // A missing required flag and an unknown subcommand: clap's own errors, also 64.
    let mut c = fx.cmd();
    c.args(["send", "--host", "127.0.0.1:1"]);
    expect_code(&run(c), 64);
    let mut c = fx.cmd();
    c.arg("frobnicate");
    expect_code(&run(c), 64);
    let c = fx.cmd();
    expect_code(&run(c), 64);
    assert_eq!(sink.stats().sessions, 0);
}

#[test]
fn exit_65_for_unknown_placeholder_and_list_without_email_column() {
    let fx = simple_fixture();
    let sink = plain_sink();
    fx.write(
        "nope.eml",
        "From: a@example.org\nSubject: {{ nope }}\n\nhi\n",
    );
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "nope.eml",
        "--report",
        "r.csv",
    ]);
    let out = run(c);
    expect_code(&out, 65);
    assert!(out.stderr.contains("nope"), "{out}");
    assert!(out.stderr.starts_with("pipemail: error: "), "{out}");

    fx.write("noemail.csv", "name,address\nAnn,ann@x.example\n");
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "noemail.csv", "--template", "t.eml"]);
    let out = run(c);
    expect_code(&out, 65);
    assert!(out.stderr.contains("email"), "{out}");
    assert_eq!(
        sink.stats().sessions,
        0,
        "bad data stops the run before connecting"
    );
}

#[test]
fn exit_66_for_missing_list_or_template() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "missing.csv", "--template", "t.eml"]);
    let out = run(c);
    expect_code(&out, 66);
    assert!(out.stderr.contains("missing.csv"), "{out}");
    // One error line, and its cause said once.
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert_eq!(out.stderr.matches("(os error 2)").count(), 1, "{out}");

    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "missing.eml"]);
    let out = run(c);
    expect_code(&out, 66);
    assert!(out.stderr.contains("missing.eml"), "{out}");
    assert_eq!(sink.stats().sessions, 0);
}

/// Every row `deferred` at stage `connect`, never attempted.
#[track_caller]
fn assert_all_deferred_at_connect(rows: &[Row], n: usize) {
    assert_eq!(rows.len(), n, "{rows:#?}");
    by_row(rows);
    for r in rows {
        assert_eq!(r.status, "deferred", "{r:?}");
        assert_eq!(r.stage.as_deref(), Some("connect"), "{r:?}");
        assert_eq!(r.attempts, 0, "{r:?}");
        assert!(r.response.starts_with("not sent: "), "{r:?}");
    }
}

#[test]
fn exit_69_when_nothing_listens_and_every_row_is_reported() {
    let fx = simple_fixture();
    let host = format!("127.0.0.1:{}", closed_port());
    let mut c = fx.send(&host);
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--retries", "0"]);
    let out = run(c);
    expect_code(&out, 69);
    assert!(out.stderr.contains("no session"), "{out}");
    assert!(
        out.stderr.contains("pipemail: hint: no mail was sent"),
        "{out}"
    );
    assert_all_deferred_at_connect(&read_report(&fx.path("r.csv")), 3);
}

#[test]
fn exit_69_when_pipelining_is_required_but_not_offered() {
    let fx = simple_fixture();
    let sink = start_sink(SinkConfig {
        pipelining: false,
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--require-pipelining", "--retries", "3"]);
    let out = run(c);
    expect_code(&out, 69);
    assert!(out.stderr.contains("PIPELINING"), "{out}");
    let rows = read_report(&fx.path("r.csv"));
    assert_all_deferred_at_connect(&rows, 3);
    assert!(rows[0].response.contains("PIPELINING"), "{rows:?}");
    assert_eq!(sink.stats().messages, 0);
    assert_eq!(
        sink.stats().sessions,
        1,
        "a missing capability is not retried"
    );
}

#[test]
fn exit_69_when_starttls_is_required_but_not_offered() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--retries", "3"]);
    let out = run(c);
    expect_code(&out, 69);
    assert!(out.stderr.contains("STARTTLS"), "{out}");
    let rows = read_report(&fx.path("r.csv"));
    assert_all_deferred_at_connect(&rows, 3);
    assert!(rows[0].response.contains("STARTTLS"), "{rows:?}");
    assert!(sink.messages().is_empty(), "no mail over plain text");
    assert_eq!(sink.stats().messages, 0);
}

#[test]
fn exit_74_when_the_report_cannot_be_written() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--report", "no-such-dir/r.csv"]);
    let out = run(c);
    expect_code(&out, 74);
    assert!(out.stderr.contains("no-such-dir/r.csv"), "{out}");
    assert_eq!(sink.stats().sessions, 0, "nothing sent without a report");
}

#[test]
fn exit_75_when_every_recipient_is_deferred() {
    let fx = simple_fixture();
    let sink = start_sink(SinkConfig {
        reject: rules(&["450:*"]),
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--retries", "1"]);
    let out = run(c);
    expect_code(&out, 75);
    assert!(
        out.stderr.contains("pipemail: hint: nothing was delivered"),
        "{out}"
    );
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(by_row(&rows).len(), 3);
    for r in &rows {
        assert_eq!(
            (
                r.status.as_str(),
                r.stage.as_deref(),
                r.smtp_code,
                r.attempts
            ),
            ("deferred", Some("rcpt"), Some(450), 2),
            "{r:?}"
        );
    }
    assert!(sink.messages().is_empty());
}

// ----- header injection ----------------------------------------------------------------------

#[test]
fn crlf_in_a_header_value_cannot_inject_a_header() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,subject\r\nv@x.example,\"x\r\nBcc: victim@example.com\"\r\nw@x.example,plain\r\n",
    );
    fx.write(
        "t.eml",
        "From: a@example.org\nTo: {{ email }}\nSubject: {{ subject }}\n\nbody\n",
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(
        out.stderr
            .contains("warning: 1 rows had CR/LF in header values (replaced by spaces)"),
        "{out}"
    );

    let msgs = sink.messages();
    assert_eq!(
        deliveries(&msgs),
        BTreeMap::from([("v@x.example".to_owned(), 1), ("w@x.example".to_owned(), 1)]),
        "the victim is not a recipient"
    );
    let m = stored_for(&msgs, "v@x.example");
    let (lines, body) = split_message(&m.data);
    let subjects: Vec<&String> = lines.iter().filter(|l| l.starts_with("Subject:")).collect();
    assert_eq!(subjects, ["Subject: x  Bcc: victim@example.com"]);
    assert!(
        !lines
            .iter()
            .any(|l| l.to_ascii_lowercase().starts_with("bcc")),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains('\r') && !l.contains('\n')),
        "{lines:?}"
    );
    assert_eq!(body, b"body\r\n");
}

// ----- dots and line endings -----------------------------------------------------------------

#[test]
fn dot_lines_and_mixed_line_endings_arrive_byte_exact_with_data_and_bdat() {
    let fx = Fx::new();
    // A body value with bare LF, CRLF, a lone dot line and a dot-led line.
    fx.write("list.csv", "email,v\nd@x.example,\"a\n.b\r\n.\"\n");
    // Template: CRLF, LF and lone CR endings; a lone dot, two dots, no final newline.
    fx.write(
        "t.eml",
        b"From: a@example.org\r\nSubject: dots\n\n.\n..two\r.three\r\n{{ v }}\n. \nlast line",
    );
    let body = ".\r\n..two\r\n.three\r\na\r\n.b\r\n.\r\n. \r\nlast line\r\n";
    for (mode, extra, bdat) in [
        ("DATA", &["--no-chunking"][..], false),
        ("BDAT", &[][..], true),
    ] {
        let sink = plain_sink();
        let mut c = fx.send(&host_of(&sink));
        c.args([
            "--list",
            "list.csv",
            "--template",
            "t.eml",
            "--report",
            "r.csv",
        ])
        .args(extra);
        let out = run(c);
        expect_code(&out, 0);
        let rows = read_report(&fx.path("r.csv"));
        assert_eq!(rows.len(), 1);
        let msgs = sink.messages();
        let m = stored_for(&msgs, "d@x.example");
        assert_eq!(m.via_bdat, bdat, "{mode}");
        let want = expected_message(
            &m.data,
            &["From: a@example.org", "Subject: dots"],
            &rows[0].message_id,
            body,
        );
        assert_bytes_eq(&m.data, &want);
    }
}

// ----- stdin ---------------------------------------------------------------------------------

#[test]
fn list_from_stdin() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "-", "--template", "t.eml", "--report", "r.csv"])
        .write_stdin(SIMPLE_LIST);
    expect_code(&run(c), 0);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 3);
    let msgs = sink.messages();
    check_simple_message(&msgs, row_for(&rows, "bob@y.example"), "Bob");
}

#[test]
fn template_from_stdin() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "-", "--report", "r.csv"])
        .write_stdin(SIMPLE_TEMPLATE);
    expect_code(&run(c), 0);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 3);
    let msgs = sink.messages();
    check_simple_message(&msgs, row_for(&rows, "cy@x.example"), "Cy");
}

#[test]
fn list_and_template_both_from_stdin_is_a_usage_error() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "-", "--template", "-"])
        .write_stdin(SIMPLE_LIST);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("stdin"), "{out}");
    assert_eq!(sink.stats().sessions, 0);
}

// ----- shards --------------------------------------------------------------------------------

#[test]
fn three_shards_cover_the_list_exactly_once() {
    let fx = Fx::new();
    let mut list = String::from("email,name\n");
    for i in 1..=10 {
        list += &format!("s{i}@x.example,S{i}\n");
    }
    fx.write("list.csv", &list);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    for k in 1..=3u64 {
        let report = format!("r{k}.csv");
        let mut c = fx.send(&host_of(&sink));
        c.args([
            "--list",
            "list.csv",
            "--template",
            "t.eml",
            "--report",
            &report,
        ])
        .args(["--shard", &format!("{k}/3")]);
        expect_code(&run(c), 0);
        for r in read_report(&fx.path(&report)) {
            assert_eq!((r.row - 1) % 3, k - 1, "shard {k}/3 took row {}", r.row);
            assert_eq!(r.email, format!("s{}@x.example", r.row));
            assert_eq!(r.status, "sent");
            assert!(
                seen.insert(r.row, k).is_none(),
                "row {} in two shards",
                r.row
            );
        }
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let want: BTreeMap<String, usize> = (1..=10).map(|i| (format!("s{i}@x.example"), 1)).collect();
    assert_eq!(deliveries(&sink.messages()), want);
}

// ----- progress and quiet --------------------------------------------------------------------

#[test]
fn no_progress_bar_when_stderr_is_not_a_terminal() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(
        !out.stderr.contains(['\r', '\x1b']),
        "no bar or spinner control characters\n{out}"
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "only the summary line\n{out}");
    assert!(
        lines[0].starts_with("pipemail: 3 rows: 3 sent, 0 failed, 0 deferred, 0 skipped in "),
        "{out}"
    );
    assert!(out.stdout.is_empty(), "no report, no stdout\n{out}");
}

#[test]
fn quiet_prints_nothing_on_success() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--quiet"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.is_empty() && out.stdout.is_empty(), "{out}");
    assert_eq!(sink.messages().len(), 3);

    // Not on failure: then the summary is printed anyway.
    let sink = start_sink(SinkConfig {
        reject: rules(&["550:bob@*"]),
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "-q"]);
    let out = run(c);
    expect_code(&out, 1);
    assert!(out.stderr.contains("3 rows: 2 sent, 1 failed"), "{out}");
}

#[test]
fn forced_tty_draws_the_progress_bar() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .env("PIPEMAIL_FORCE_TTY", "1");
    let out = run(c);
    expect_code(&out, 0);
    // The bar's own text (position and message), not just the summary line.
    assert!(out.stderr.contains("3/3"), "{out}");
    assert!(out.stderr.contains("sent 3 failed 0"), "{out}");
    assert!(out.stderr.contains("round trips instead of"), "{out}");
    assert!(
        out.stderr
            .lines()
            .last()
            .is_some_and(|l| l.contains("pipemail: 3 rows: 3 sent")),
        "{out}"
    );

    // --quiet wins over the hook.
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--quiet"])
        .env("PIPEMAIL_FORCE_TTY", "1");
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.is_empty(), "{out}");
}

// ----- dry run -------------------------------------------------------------------------------

#[test]
fn dry_run_prints_the_first_message_and_counts_and_connects_to_nothing() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--dry-run"]);
    let out = run(c);
    expect_code(&out, 0);
    let mid = header(&out.stdout, "Message-ID").expect("Message-ID");
    let mid = mid.trim_start_matches('<').trim_end_matches('>');
    let headers = simple_headers("Ann", "ann@x.example");
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let want = expected_message(
        &out.stdout,
        &headers,
        mid,
        &simple_body("Ann", "ann@x.example"),
    );
    assert_bytes_eq(&out.stdout, &want);
    assert!(
        out.stderr.contains(
            "dry run: 3 messages would be sent, 0 rows fail, 0 duplicates skipped; nothing was sent"
        ),
        "{out}"
    );
    assert_eq!(sink.stats().sessions, 0, "a dry run connects to nothing");
}

#[test]
fn dry_run_counts_bad_rows_and_duplicates() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nann@x.example,Ann\nANN@X.example,Ann2\nno-at-sign,Bad\nbob@x.example,Bob\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--dry-run",
        "--report",
        "r.csv",
    ]);
    let out = run(c);
    expect_code(&out, 1);
    assert!(
        out.stderr
            .contains("dry run: 2 messages would be sent, 1 rows fail, 1 duplicates skipped"),
        "{out}"
    );
    assert!(out.stderr.contains("row 3"), "the bad row is named\n{out}");
    assert!(header(&out.stdout, "To").is_some_and(|t| t.contains("ann@x.example")));
    assert_eq!(sink.stats().sessions, 0);
    assert!(!fx.path("r.csv").exists(), "a dry run writes no report");
}

// ----- duplicates ----------------------------------------------------------------------------

#[test]
fn repeated_address_is_skipped_case_insensitively() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nann@x.example,Ann\nbob@x.example,Bob\nANN@X.Example,Ann again\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(
        out.stderr
            .contains("2 sent, 0 failed, 0 deferred, 1 skipped"),
        "{out}"
    );
    let rows = by_row(&read_report(&fx.path("r.csv")));
    assert_eq!(rows.len(), 3);
    let dup = &rows[&3];
    assert_eq!(dup.email, "ANN@X.Example");
    assert_eq!(dup.status, "skipped");
    assert_eq!(dup.response, "duplicate of row 1");
    assert_eq!(
        (dup.attempts, dup.smtp_code, dup.stage.as_deref()),
        (0, None, None)
    );
    assert_eq!(
        deliveries(&sink.messages()),
        BTreeMap::from([
            ("ann@x.example".to_owned(), 1),
            ("bob@x.example".to_owned(), 1)
        ])
    );
}

#[test]
fn allow_duplicates_sends_to_both_rows() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nann@x.example,Ann\nANN@X.Example,Ann again\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .arg("--allow-duplicates");
    expect_code(&run(c), 0);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:?}");
    assert_eq!(
        deliveries(&sink.messages()),
        BTreeMap::from([
            ("ANN@X.Example".to_owned(), 1),
            ("ann@x.example".to_owned(), 1)
        ])
    );
}

// ----- invalid addresses ---------------------------------------------------------------------

#[test]
fn invalid_addresses_fail_at_stage_input_and_are_never_sent() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\r\ngood@x.example,G\r\n\"a@b>\r\nRCPT TO:<evil@x>\",E\r\nno-at-sign,N\r\ngood2@x.example,G2\r\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ]);
    let out = run(c);
    expect_code(&out, 1);
    let rows = by_row(&read_report(&fx.path("r.csv")));
    assert_eq!(rows.len(), 4);
    for n in [2, 3] {
        let r = &rows[&n];
        assert_eq!(r.status, "failed", "{r:?}");
        assert_eq!(r.stage.as_deref(), Some("input"), "{r:?}");
        assert_eq!((r.attempts, r.smtp_code), (0, None), "{r:?}");
        assert!(!r.response.is_empty(), "{r:?}");
    }
    assert_eq!(rows[&2].email, "a@b>\r\nRCPT TO:<evil@x>");
    assert_eq!(rows[&3].email, "no-at-sign");
    assert_eq!(rows[&1].status, "sent");
    assert_eq!(rows[&4].status, "sent");
    let msgs = sink.messages();
    assert_eq!(
        deliveries(&msgs),
        BTreeMap::from([
            ("good2@x.example".to_owned(), 1),
            ("good@x.example".to_owned(), 1)
        ])
    );
    assert_eq!(
        sink.stats().rejected_recipients,
        0,
        "nothing malformed on the wire"
    );
}

// ----- resume --------------------------------------------------------------------------------

#[test]
fn resume_sends_only_the_rows_not_sent_before() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\na@x.example,A\ns1@slow.example,S1\nb@x.example,B\ns2@slow.example,S2\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let first = start_sink(SinkConfig {
        reject: rules(&["450:*@slow.example"]),
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&first));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--retries", "0"]);
    expect_code(&run(c), 1);
    let old = by_row(&read_report(&fx.path("r.csv")));
    let statuses: Vec<&str> = old.values().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["sent", "deferred", "sent", "deferred"]);

    let second = plain_sink();
    let mut c = fx.send(&host_of(&second));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r2.csv",
    ])
    .args(["--resume", "r.csv"]);
    let out = run(c);
    expect_code(&out, 0);
    assert_eq!(
        deliveries(&second.messages()),
        BTreeMap::from([
            ("s1@slow.example".to_owned(), 1),
            ("s2@slow.example".to_owned(), 1)
        ]),
        "only the rows not sent before"
    );
    let new = by_row(&read_report(&fx.path("r2.csv")));
    assert_eq!(new.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    for n in [1, 3] {
        assert_eq!(new[&n], old[&n], "a row sent earlier is copied as it was");
    }
    for n in [2, 4] {
        assert_eq!(new[&n].status, "sent");
        assert_ne!(new[&n].message_id, old[&n].message_id);
        assert_eq!(new[&n].attempts, 1);
    }
    assert!(!fx.path("r.csv.resume").exists(), "carry file removed");
    assert!(!fx.path("r2.csv.journal").exists(), "journal removed");

    // Resuming from a report that does not exist is a missing input.
    let mut c = fx.send(&host_of(&second));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--resume",
        "nope.csv",
    ]);
    expect_code(&run(c), 66);
}

#[test]
fn resume_may_write_over_the_report_it_resumes_from() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\na@x.example,A\ns1@slow.example,S1\nb@x.example,B\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let first = start_sink(SinkConfig {
        reject: rules(&["450:*@slow.example"]),
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&first));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.json",
    ])
    .args(["--retries", "0"]);
    expect_code(&run(c), 1);
    let old = by_row(&read_report(&fx.path("r.json")));

    let second = plain_sink();
    let mut c = fx.send(&host_of(&second));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.json",
    ])
    .args(["--resume", "r.json"]);
    expect_code(&run(c), 0);
    let new = by_row(&read_report(&fx.path("r.json")));
    assert_eq!(new.len(), 3);
    assert_eq!(new[&1], old[&1]);
    assert_eq!(new[&3], old[&3]);
    assert_eq!(new[&2].status, "sent");
    assert_eq!(
        deliveries(&second.messages()),
        BTreeMap::from([("s1@slow.example".to_owned(), 1)])
    );
    assert!(!fx.path("r.json.resume").exists());
    assert!(!fx.path("r.json.journal").exists());
}

// ----- kill -9, then resume ------------------------------------------------------------------

/// Reads a report that a killed run may have left (a cut-short last record is ignored).
fn read_partial_csv(path: &Path) -> Vec<Row> {
    let bytes = std::fs::read(path).expect("read report");
    let mut rd = csv::Reader::from_reader(&bytes[..]);
    let mut rows = Vec::new();
    for r in rd.deserialize::<Row>() {
        match r {
            Ok(row) => rows.push(row),
            Err(_) => break,
        }
    }
    rows
}

#[derive(Deserialize)]
struct JournalLine {
    row: u64,
    email: String,
}

const KILL_ROWS: u64 = 40;
const KILL_WINDOW: usize = 2;

/// What a run killed with SIGKILL mid-way left behind.
struct Killed {
    fx: Fx,
    sink: SinkHandle,
    /// The rows of its report (all `sent`).
    rows: Vec<Row>,
    /// Journaled (committed to the wire) with no report row: in flight at the kill.
    in_flight: BTreeSet<String>,
}

/// The list and sink of the interrupted runs: 40 rows, a sink 50 ms away.
fn slow_fixture() -> (Fx, SinkHandle) {
    let fx = Fx::new();
    let mut list = String::from("email,name\n");
    for i in 1..=KILL_ROWS {
        list += &format!("k{i}@x.example,K{i}\n");
    }
    fx.write("list.csv", &list);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = start_sink(SinkConfig {
        latency: Duration::from_millis(50),
        ..SinkConfig::default()
    });
    (fx, sink)
}

/// Starts `send` with `--window 2` (about a second for 40 rows at 50 ms) reporting to
/// `r.csv`, and waits (bounded) until the report has 4 rows or the run has ended.
fn start_slow_run(fx: &Fx, sink: &SinkHandle) -> std::process::Child {
    let mut child = fx
        .send_std(&host_of(sink))
        .args([
            "--list",
            "list.csv",
            "--template",
            "t.eml",
            "--report",
            "r.csv",
        ])
        .args(["--window", &KILL_WINDOW.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pipemail");
    let report = fx.path("r.csv");
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        if report.exists() && read_partial_csv(&report).len() >= 4 {
            break;
        }
        if child.try_wait().expect("try_wait").is_some() {
            break; // finished before the signal: the checks still hold, with nothing in flight
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the report never got 4 rows");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Kills a slow run with SIGKILL once its report has 4 rows.
fn killed_run() -> Killed {
    let (fx, sink) = slow_fixture();
    let mut child = start_slow_run(&fx, &sink);
    let _ = child.kill(); // SIGKILL
    child.wait().expect("wait for the killed run");

    let rows = read_partial_csv(&fx.path("r.csv"));
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:#?}");
    let reported: BTreeSet<String> = rows.iter().map(|r| r.email.clone()).collect();
    let mut in_flight = BTreeSet::new();
    if let Ok(text) = std::fs::read_to_string(fx.path("r.csv.journal")) {
        for line in text.lines() {
            // A cut-short last line is possible in principle; skip it.
            if let Ok(j) = serde_json::from_str::<JournalLine>(line) {
                assert_eq!(j.email, format!("k{}@x.example", j.row));
                if !reported.contains(&j.email) {
                    in_flight.insert(j.email);
                }
            }
        }
    }
    assert!(
        in_flight.len() <= KILL_WINDOW,
        "at most --window messages in flight: {in_flight:?}"
    );
    Killed {
        fx,
        sink,
        rows,
        in_flight,
    }
}

#[test]
fn kill_9_then_resume_delivers_every_row_with_duplicates_only_from_in_flight_rows() {
    let Killed {
        fx,
        sink,
        rows: first,
        in_flight,
    } = killed_run();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r2.csv",
    ])
    .args(["--resume", "r.csv"]);
    let out = run(c);
    expect_code(&out, 0);

    let last = by_row(&read_report(&fx.path("r2.csv")));
    assert_eq!(
        last.len(),
        KILL_ROWS as usize,
        "the final report has every row once"
    );
    for (n, r) in &last {
        assert_eq!(r.email, format!("k{n}@x.example"));
        assert_eq!(r.status, "sent", "{r:?}");
    }
    for r in &first {
        assert_eq!(last[&r.row], *r, "rows sent before the kill are copied");
    }
    let got = deliveries(&sink.messages());
    assert_eq!(
        got.len(),
        KILL_ROWS as usize,
        "every recipient delivered: {got:?}"
    );
    let dups: Vec<&String> = got
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(e, _)| e)
        .collect();
    for (e, n) in &got {
        assert!(*n <= 2, "{e} delivered {n} times");
    }
    for e in &dups {
        assert!(
            in_flight.contains(*e),
            "{e} delivered twice but was not in flight at the kill ({in_flight:?})"
        );
    }
    assert!(dups.len() <= KILL_WINDOW);
    for r in &first {
        assert_eq!(
            got[&r.email], 1,
            "{} was reported sent: not sent again",
            r.email
        );
    }
    eprintln!(
        "killed with {} rows reported; in flight: {in_flight:?}; delivered twice: {dups:?}",
        first.len()
    );
}

#[test]
fn kill_9_then_resume_with_skip_unknown_sends_nothing_twice() {
    let Killed {
        fx,
        sink,
        rows: first,
        in_flight,
    } = killed_run();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r2.csv",
    ])
    .args(["--resume", "r.csv", "--skip-unknown"]);
    let out = run(c);
    // Rows whose fate is unknown are reported as such: the run is not all good.
    expect_code(&out, if in_flight.is_empty() { 0 } else { 1 });

    let last = by_row(&read_report(&fx.path("r2.csv")));
    assert_eq!(
        last.len(),
        KILL_ROWS as usize,
        "the final report has every row once"
    );
    for (n, r) in &last {
        let want = if in_flight.contains(&r.email) {
            "unknown"
        } else {
            "sent"
        };
        assert_eq!(r.status, want, "row {n}: {r:?}");
    }
    for r in &first {
        assert_eq!(last[&r.row], *r, "rows sent before the kill are copied");
    }
    let got = deliveries(&sink.messages());
    for (e, n) in &got {
        assert_eq!(*n, 1, "{e} delivered {n} times");
    }
    for i in 1..=KILL_ROWS {
        let e = format!("k{i}@x.example");
        if !in_flight.contains(&e) {
            assert_eq!(got.get(&e), Some(&1), "{e}");
        }
    }
}

#[test]
fn ctrl_c_finishes_messages_in_flight_and_reports_the_rest_deferred() {
    let (fx, sink) = slow_fixture();
    let mut child = start_slow_run(&fx, &sink);
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
    let status = child.wait().expect("wait for the interrupted run");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr pipe")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let rows = by_row(&read_report(&fx.path("r.csv")));
    assert_eq!(
        rows.len(),
        KILL_ROWS as usize,
        "every row reported once\n{stderr}"
    );
    let sent: BTreeSet<String> = rows
        .values()
        .filter(|r| r.status == "sent")
        .map(|r| r.email.clone())
        .collect();
    let all_sent = sent.len() == KILL_ROWS as usize;
    assert_eq!(
        status.code(),
        Some(if all_sent { 0 } else { 1 }),
        "{stderr}"
    );
    if !all_sent {
        assert!(stderr.contains("pipemail: interrupted"), "{stderr}");
    }
    for r in rows.values().filter(|r| r.status != "sent") {
        assert_eq!(r.status, "deferred", "{r:?}");
        assert_eq!(r.stage.as_deref(), Some("connect"), "{r:?}");
        assert_eq!(r.response, "not sent: the run was stopped", "{r:?}");
    }
    // Messages in flight were finished: what the report calls sent is exactly what arrived.
    let got = deliveries(&sink.messages());
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), sent);
    assert!(
        !fx.path("r.csv.journal").exists(),
        "a finished run removes its journal"
    );

    // A resumed run sends exactly the rest.
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r2.csv",
    ])
    .args(["--resume", "r.csv"]);
    expect_code(&run(c), 0);
    let got = deliveries(&sink.messages());
    assert_eq!(got.len(), KILL_ROWS as usize);
    assert!(got.values().all(|n| *n == 1), "{got:?}");
}

// ----- sessions ------------------------------------------------------------------------------

#[test]
fn max_per_connection_starts_a_fresh_session_every_two_messages() {
    let fx = Fx::new();
    let mut list = String::from("email,name\n");
    for i in 1..=5 {
        list += &format!("m{i}@x.example,M{i}\n");
    }
    fx.write("list.csv", &list);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--max-per-connection", "2"]);
    expect_code(&run(c), 0);
    assert_eq!(sink.stats().sessions, 3, "ceil(5 / 2) sessions");
    let msgs = sink.messages();
    let mut per_session: HashMap<u64, usize> = HashMap::new();
    for m in &msgs {
        *per_session.entry(m.session).or_insert(0) += 1;
    }
    assert!(per_session.values().all(|n| *n <= 2), "{per_session:?}");
    assert_eq!(deliveries(&msgs).len(), 5);
    assert!(deliveries(&msgs).values().all(|n| *n == 1));
    assert_eq!(by_row(&read_report(&fx.path("r.csv"))).len(), 5);
}

#[test]
fn four_connections_send_every_row_once() {
    let fx = Fx::new();
    let mut list = String::from("email,name\n");
    for i in 1..=40 {
        list += &format!("c{i}@x.example,C{i}\n");
    }
    fx.write("list.csv", &list);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.jsonl",
    ])
    .args(["--connections", "4", "--window", "3"]);
    expect_code(&run(c), 0);
    let rows = by_row(&read_report(&fx.path("r.jsonl")));
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>()
    );
    assert!(rows.values().all(|r| r.status == "sent"));
    let want: BTreeMap<String, usize> = (1..=40).map(|i| (format!("c{i}@x.example"), 1)).collect();
    assert_eq!(deliveries(&sink.messages()), want);
    let sessions = sink.stats().sessions;
    assert!((1..=4).contains(&sessions), "{sessions} sessions");
}

// ----- TLS, AUTH and secrets -----------------------------------------------------------------

const PASSWORD: &str = "s3cr3t";

/// A self-signed certificate for localhost / 127.0.0.1 made with the openssl CLI, or `None`
/// (loudly skipped; a failure with PIPEMAIL_REQUIRE_INTEROP=1) without openssl.
fn self_signed(fx: &Fx) -> Option<native_tls::Identity> {
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(fx.path("key.pem"))
        .arg("-out")
        .arg(fx.path("cert.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Some(
            pipemail::sink::load_identity(&fx.path("cert.pem"), &fx.path("key.pem"))
                .expect("load identity"),
        ),
        other => {
            support::skip_or_fail(&format!(
                "cannot make a test certificate with openssl ({other:?}; apt-get install openssl)"
            ));
            None
        }
    }
}

/// Every form the password could leak in: plain, and base64 of AUTH PLAIN / AUTH LOGIN tokens.
fn secret_forms() -> Vec<String> {
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let b64np = |s: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(s);
    let mut v = vec![PASSWORD.to_owned()];
    for raw in [
        PASSWORD.as_bytes().to_vec(),
        format!("\0u\0{PASSWORD}").into_bytes(),
        format!("u\0u\0{PASSWORD}").into_bytes(),
    ] {
        v.push(b64(&raw));
        v.push(b64np(&raw));
    }
    v
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for s in secret_forms() {
        assert!(
            !text.contains(&s),
            "{what} contains the password as {s:?}:\n{text}"
        );
    }
}

#[test]
fn auth_over_starttls_delivers_and_never_shows_the_password() {
    let fx = simple_fixture();
    let Some(identity) = self_signed(&fx) else {
        return;
    };
    let sink = start_sink(SinkConfig {
        tls: Some(identity),
        auth: Some(("u".into(), PASSWORD.into())),
        ..SinkConfig::default()
    });
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--ca-file", "cert.pem", "--auth-user", "u", "-v"])
    .env("PIPEMAIL_PASSWORD", PASSWORD);
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.contains("C: STARTTLS"), "{out}");
    assert!(out.stderr.contains("C: AUTH"), "{out}");
    assert!(out.stderr.contains("S: 235"), "{out}");
    assert!(
        out.stderr.contains("****"),
        "the secret shows as ****\n{out}"
    );
    assert_no_secret("stderr", &out.stderr);
    assert_no_secret("stdout", &out.stdout_text());
    assert_no_secret("report", &fx.read("r.csv"));
    let rows = read_report(&fx.path("r.csv"));
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:?}");
    assert_eq!(deliveries(&sink.messages()).len(), 3);

    // The same with --password-file.
    fx.write("pw.txt", format!("{PASSWORD}\n"));
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--insecure", "--auth-user", "u"])
        .args(["--password-file", "pw.txt", "-v"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.contains("--insecure"), "a loud warning\n{out}");
    assert_no_secret("stderr", &out.stderr);
    assert_eq!(sink.messages().len(), 6);
}

#[test]
fn auth_over_plaintext_is_refused_unless_allowed() {
    let fx = simple_fixture();
    let sink = start_sink(SinkConfig {
        auth: Some(("u".into(), PASSWORD.into())),
        allow_plain_auth: true,
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--auth-user", "u", "-v", "--retries", "2"])
    .env("PIPEMAIL_PASSWORD", PASSWORD);
    let out = run(c);
    expect_code(&out, 69);
    assert!(!out.stderr.contains("C: AUTH"), "no AUTH was sent\n{out}");
    assert_no_secret("stderr", &out.stderr);
    assert_all_deferred_at_connect(&read_report(&fx.path("r.csv")), 3);
    assert!(sink.messages().is_empty());
    assert_eq!(sink.stats().sessions, 1, "refusing AUTH is not retried");

    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--auth-user", "u", "-v", "--allow-plaintext-auth"])
    .env("PIPEMAIL_PASSWORD", PASSWORD);
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.contains("S: 235"), "{out}");
    assert_no_secret("stderr", &out.stderr);
    assert_no_secret("report", &fx.read("r.csv"));
    assert_eq!(deliveries(&sink.messages()).len(), 3);

    // Without a password: a usage error, nothing sent.
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--auth-user",
        "u",
    ]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("PIPEMAIL_PASSWORD"), "{out}");
}

#[test]
fn self_signed_certificate_is_rejected_without_ca_file_or_insecure() {
    let fx = simple_fixture();
    let Some(identity) = self_signed(&fx) else {
        return;
    };
    let sink = start_sink(SinkConfig {
        tls: Some(identity),
        ..SinkConfig::default()
    });
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--retries", "2"]);
    let out = run(c);
    expect_code(&out, 69);
    assert!(out.stderr.contains("certificate"), "{out}");
    let rows = read_report(&fx.path("r.csv"));
    assert_all_deferred_at_connect(&rows, 3);
    assert!(sink.messages().is_empty());

    // The CA file makes it work, over TLS.
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--ca-file", "cert.pem"]);
    expect_code(&run(c), 0);
    assert_eq!(sink.messages().len(), 3);

    // A CA file that does not exist: missing input.
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--ca-file", "nope.pem"]);
    expect_code(&run(c), 66);
}

#[test]
fn server_without_pipelining_gets_lock_step_and_a_warning() {
    let fx = Fx::new();
    fx.write("list.csv", "email,name\na@x.example,A\nb@x.example,B\n");
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = start_sink(SinkConfig {
        pipelining: false,
        keep_in_memory: true,
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(
        out.stderr
            .contains("does not advertise PIPELINING: sending lock-step"),
        "{}",
        out.stderr
    );
    // 2 messages lock-step: 4 waits each, plus greeting, EHLO and QUIT.
    assert!(
        out.stderr.contains("11 round trips instead of 11"),
        "{}",
        out.stderr
    );
    assert_eq!(sink.messages().len(), 2);
}
