//! The campaign as a library, against the built-in sink on loopback (no binary spawned).

use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::driver::Target;
use crate::engine::{self, PipeliningPolicy, TlsPolicy};
use crate::report::Status;
use crate::sink::{SinkConfig, SinkHandle};

const TEMPLATE: &str = "From: Sender <sender@example.org>\nTo: {{ email }}\nSubject: Hi {{ name }}\n\nHello {{ name }}.\n";

pub(super) fn sink(cfg: SinkConfig) -> SinkHandle {
    SinkHandle::start(
        "127.0.0.1:0".parse().expect("address"),
        SinkConfig {
            keep_in_memory: true,
            ..cfg
        },
    )
    .expect("start sink")
}

pub(super) fn campaign(sink: &SinkHandle, csv: &str) -> Campaign {
    campaign_with(sink, csv, TEMPLATE, "sender@example.org")
}

/// A campaign of the list `csv` and `template` to `sink`, envelope sender `from`, retries
/// after 1 ms.
pub(super) fn campaign_with(sink: &SinkHandle, csv: &str, template: &str, from: &str) -> Campaign {
    let reader: Box<dyn Read + Send> = Box::new(Cursor::new(csv.as_bytes().to_vec()));
    let list = ListReader::new(reader, "list.csv").expect("list");
    let template = Template::parse(template.as_bytes(), "t.eml", list.headers()).expect("t");
    let addr = sink.local_addr();
    let connect = ConnectOptions {
        target: Target {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        session: engine::Config {
            helo_name: "test".into(),
            tls: TlsPolicy::None,
            pipelining: PipeliningPolicy::Auto,
            ..engine::Config::default()
        },
        tls: crate::driver::TlsSettings::default(),
        connect_timeout: Duration::from_secs(30),
    };
    let mut c = Campaign::new(connect, list, template, FromSource::Fixed(from.into()));
    c.schedule.retry_delay = Duration::from_millis(1);
    c
}

pub(super) fn list(n: u64) -> String {
    let mut s = String::from("email,name\n");
    for i in 1..=n {
        s += &format!("r{i}@example.net,R{i}\n");
    }
    s
}

/// Records every counted row's tally.
#[derive(Default)]
struct Recorder {
    last: Mutex<Option<Tally>>,
}

impl Observer for Recorder {
    fn row(&self, t: &Tally, _rt: RoundTrips) {
        *self.last.lock().expect("lock") = Some(*t);
    }
}

#[test]
fn every_row_reported_once_with_rejects_duplicates_and_bad_input() {
    let s = sink(SinkConfig {
        reject: vec!["550:*@reject.example".parse().expect("rule")],
        ..SinkConfig::default()
    });
    let csv = "email,name\na@example.net,A\nb@reject.example,B\nnot-an-address,C\nA@EXAMPLE.NET,D\nc@example.net,E\n";
    let rec = Arc::new(Recorder::default());
    let summary = campaign(&s, csv).run(rec.clone()).expect("run");
    assert_eq!(
        (summary.rows, summary.sent, summary.failed, summary.skipped),
        (5, 2, 2, 1),
        "{summary:?}"
    );
    assert_eq!(summary.sent_this_run, 2);
    assert!(summary.any_session);
    let last = rec.last.lock().expect("lock").expect("rows counted");
    assert_eq!((last.rows, last.sent), (5, 2));
    let stored: Vec<String> = s.messages().iter().flat_map(|m| m.rcpts.clone()).collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
}

#[test]
fn max_per_connection_opens_fresh_sessions() {
    let s = sink(SinkConfig::default());
    let mut c = campaign(&s, &list(7));
    c.schedule.max_per_connection = 3;
    let summary = c.run(Arc::new(NoObserver)).expect("run");
    assert_eq!(summary.sent, 7);
    assert_eq!(s.stop().sessions, 3, "3 + 3 + 1 messages");
}

#[test]
fn shard_takes_its_share_and_reports_to_the_file() {
    let s = sink(SinkConfig::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("r.jsonl");
    let mut c = campaign(&s, &list(10));
    c.shard = Some(Shard { k: 2, of: 3 });
    c.report = Some((path.display().to_string(), Format::Jsonl));
    c.connections = 2;
    let summary = c.run(Arc::new(NoObserver)).expect("run");
    assert_eq!((summary.rows, summary.sent), (3, 3));
    let text = std::fs::read_to_string(&path).expect("report");
    let mut rows: Vec<u64> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            assert_eq!(v["status"], "sent");
            v["row"].as_u64().expect("row")
        })
        .collect();
    rows.sort_unstable();
    assert_eq!(rows, [2, 5, 8]);
    assert!(
        !dir.path().join("r.jsonl.journal").exists(),
        "a complete run removes its journal"
    );
}

#[test]
fn nothing_listening_defers_every_row_at_connect() {
    let s = sink(SinkConfig::default());
    let mut c = campaign(&s, &list(3));
    let _stats = s.stop();
    c.schedule.retries = 1;
    let summary = c.run(Arc::new(NoObserver)).expect("run");
    assert_eq!((summary.rows, summary.deferred), (3, 3));
    assert!(!summary.any_session);
    assert!(summary.session_error.is_some());
}

#[test]
fn deferred_recipients_are_retried_then_reported_deferred() {
    let s = sink(SinkConfig {
        reject: vec!["450:*@later.example".parse().expect("rule")],
        ..SinkConfig::default()
    });
    let csv = "email,name\na@later.example,A\nb@example.net,B\n";
    let mut c = campaign(&s, csv);
    c.schedule.retries = 2;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("r.csv");
    c.report = Some((path.display().to_string(), Format::Csv));
    let summary = c.run(Arc::new(NoObserver)).expect("run");
    assert_eq!((summary.sent, summary.deferred), (1, 1));
    let text = std::fs::read_to_string(&path).expect("report");
    let deferred = text
        .lines()
        .find(|l| l.contains("a@later.example"))
        .expect("row");
    assert!(deferred.contains(",deferred,450,"), "{deferred}");
    assert!(deferred.contains(",rcpt,3,"), "three attempts: {deferred}");
    assert_eq!(Status::Deferred.as_str(), "deferred");
}

#[test]
fn dry_run_uses_the_same_filters() {
    let s = sink(SinkConfig::default());
    let csv = "email,name\na@example.net,A\nbad,B\nA@example.net,C\nb@example.net,D\n";
    let mut first = None;
    let mut problems = Vec::new();
    let counts = campaign(&s, csv)
        .dry_run(|ev| match ev {
            DryRunEvent::First(d) => first = Some(d.to_vec()),
            DryRunEvent::Problem { row, .. } => problems.push(row),
        })
        .expect("dry run");
    assert_eq!(
        counts,
        DryRun {
            ok: 2,
            failed: 1,
            skipped: 1,
            sanitized: 0,
            already: 0
        }
    );
    assert_eq!(problems, [2]);
    let first = String::from_utf8(first.expect("first message")).expect("utf-8");
    assert!(first.contains("Hello A."), "{first}");
    assert_eq!(s.stop().sessions, 0, "a dry run connects to nothing");
}

/// Stops the run when the first row is counted, as Ctrl-C would.
struct StopOnFirstRow(Stopper);

impl Observer for StopOnFirstRow {
    fn row(&self, _t: &Tally, _rt: RoundTrips) {
        self.0.stop();
    }
}

#[test]
fn stop_lets_messages_in_flight_finish_and_defers_the_rest() {
    // DATA with a 20 ms round trip: at least 20 ms per message, so the stop (requested when
    // the first row is counted) comes long before the 200th message could.
    let s = sink(SinkConfig {
        chunking: false,
        latency: Duration::from_millis(20),
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("r.csv");
    let mut c = campaign(&s, &list(200));
    c.report = Some((path.display().to_string(), Format::Csv));
    let stopper = c.stopper();
    let summary = c
        .run(Arc::new(StopOnFirstRow(stopper.clone())))
        .expect("run");
    assert!(stopper.is_requested());
    assert_eq!(summary.rows, 200, "every row reported: {summary:?}");
    assert!(summary.sent >= 1, "{summary:?}");
    assert!(summary.deferred >= 1, "{summary:?}");
    assert_eq!(summary.sent + summary.deferred, 200, "{summary:?}");
    let mut rdr = csv::Reader::from_path(&path).expect("report");
    let rows: Vec<crate::report::ReportRow> =
        rdr.deserialize().collect::<Result<_, _>>().expect("rows");
    let mut numbers: Vec<u64> = rows.iter().map(|r| r.row).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=200).collect::<Vec<u64>>(), "each row once");
    for r in rows.iter().filter(|r| r.status == Status::Deferred) {
        assert_eq!(r.response, "not sent: the run was stopped", "{r:?}");
    }
    assert_eq!(s.stop().messages, summary.sent, "sent means stored");
}

#[test]
fn stop_before_the_run_sends_nothing_and_reports_every_row() {
    let s = sink(SinkConfig::default());
    let c = campaign(&s, &list(5));
    c.stopper().stop();
    let summary = c.run(Arc::new(NoObserver)).expect("run");
    assert_eq!((summary.rows, summary.deferred), (5, 5), "{summary:?}");
    assert_eq!(s.stop().sessions, 0);
}

/// Rows a refused AUTH kept from being sent are reported at stage `auth`, and the run stops
/// at the first such session (`SessionError::is_fatal`) instead of retrying.
#[test]
fn rows_kept_back_by_a_refused_auth_have_stage_auth() {
    let s = sink(SinkConfig {
        auth: Some(("user".into(), "right".into())),
        allow_plain_auth: true,
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("r.jsonl");
    let mut c = campaign(&s, &list(3));
    c.connect.session.auth = Some(engine::Credentials {
        username: "user".into(),
        password: engine::Secret::new("wrong"),
    });
    c.connect.session.allow_plaintext_auth = true;
    c.report = Some((path.display().to_string(), Format::Jsonl));
    let summary = c.run(Arc::new(NoObserver)).expect("run");
    assert_eq!((summary.rows, summary.sent), (3, 0), "{summary:?}");
    let text = std::fs::read_to_string(&path).expect("report");
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("json line");
        assert_eq!(v["stage"], "auth", "{l}");
    }
    assert_eq!(s.stop().sessions, 1, "a refused AUTH is not retried");
}
