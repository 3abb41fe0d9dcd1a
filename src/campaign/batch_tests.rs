//! `--batch-recipients`: many rows per transaction, against the built-in sink on loopback.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::report::{ReportRow, Stage, Status};
use crate::sink::{Fault, FaultPlan, SinkConfig, SinkHandle, StoredMessage};

/// No list column used: one rendering serves a whole transaction.
const ANNOUNCEMENT: &str =
    "From: News <news@example.org>\nTo: undisclosed-recipients:;\nSubject: News\n\nSame for all.\n";

use super::tests::{campaign_with, sink};

fn list(n: u64) -> String {
    let mut s = String::from("email,name\n");
    for i in 1..=n {
        s += &format!("r{i}@example.net,R{i}\n");
    }
    s
}

/// A campaign of `rows` rows, `batch` per transaction, reporting to a JSON Lines file.
fn campaign(
    sink: &SinkHandle,
    rows: u64,
    batch: usize,
    template: &str,
    dir: &tempfile::TempDir,
) -> (Campaign, std::path::PathBuf) {
    let mut c = campaign_with(sink, &list(rows), template, "news@example.org");
    c.schedule.batch_recipients = batch;
    let path = dir.path().join("r.jsonl");
    c.report = Some((path.display().to_string(), Format::Jsonl));
    (c, path)
}

fn report(path: &std::path::Path) -> Vec<ReportRow> {
    let text = std::fs::read_to_string(path).expect("report");
    let mut rows: Vec<ReportRow> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    rows.sort_by_key(|r| r.row);
    rows
}

/// Every row reported once; every recipient stored at most once, and exactly once if `sent`.
fn check_once(rows: &[ReportRow], n: u64, stored: &[StoredMessage]) {
    let numbers: Vec<u64> = rows.iter().map(|r| r.row).collect();
    assert_eq!(numbers, (1..=n).collect::<Vec<u64>>(), "each row once");
    let mut times: HashMap<&str, u32> = HashMap::new();
    for m in stored {
        for r in &m.rcpts {
            *times.entry(r.as_str()).or_default() += 1;
        }
    }
    for r in rows {
        let t = times.get(r.email.as_str()).copied().unwrap_or(0);
        let want = u32::from(r.status == Status::Sent);
        assert_eq!(t, want, "{r:?} stored {t} times");
    }
}

#[test]
fn rows_go_a_hundred_per_transaction_with_data_and_bdat() {
    for chunking in [false, true] {
        let s = sink(SinkConfig {
            chunking,
            ..SinkConfig::default()
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let (c, path) = campaign(&s, 250, 100, ANNOUNCEMENT, &dir);
        let summary = c.run(Arc::new(NoObserver)).expect("run");
        assert_eq!((summary.rows, summary.sent), (250, 250), "{summary:?}");
        let stored = s.messages();
        let sizes: Vec<usize> = stored.iter().map(|m| m.rcpts.len()).collect();
        assert_eq!(sizes, [100, 100, 50], "chunking {chunking}");
        assert!(stored.iter().all(|m| m.via_bdat == chunking));
        let rows = report(&path);
        check_once(&rows, 250, &stored);
        // One Message-ID per transaction, the rows of a transaction sharing it.
        let mut ids: Vec<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
        assert!(ids.iter().all(|id| !id.is_empty()));
        assert_eq!(rows[0].message_id, rows[99].message_id);
        assert_ne!(rows[99].message_id, rows[100].message_id);
        ids.dedup();
        assert_eq!(ids.len(), 3, "{ids:?}");
        for r in &rows {
            assert_eq!(
                (r.stage, r.smtp_code, r.attempts),
                (Some(Stage::Body), Some(250), 1)
            );
        }
        assert_eq!(s.stop().sessions, 1);
    }
}

#[test]
fn too_many_recipients_moves_the_rest_to_the_next_transaction() {
    for chunking in [false, true] {
        let s = sink(SinkConfig {
            chunking,
            max_recipients: 60,
            ..SinkConfig::default()
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let (c, path) = campaign(&s, 250, 100, ANNOUNCEMENT, &dir);
        let summary = c.run(Arc::new(NoObserver)).expect("run");
        assert_eq!((summary.rows, summary.sent), (250, 250), "{summary:?}");
        let stored = s.messages();
        assert!(stored.iter().all(|m| m.rcpts.len() <= 60));
        assert_eq!(stored[0].rcpts.len(), 60, "chunking {chunking}");
        let rows = report(&path);
        check_once(&rows, 250, &stored);
        // Never `failed`, never a counted attempt: the refusal was about the transaction.
        assert!(rows.iter().all(|r| r.attempts == 1), "{rows:?}");
        let _ = s.stop();
    }
}

#[test]
fn a_refused_recipient_fails_alone() {
    let s = sink(SinkConfig {
        reject: vec!["550:r7@example.net".parse().expect("rule")],
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, path) = campaign(&s, 30, 10, ANNOUNCEMENT, &dir);
    let summary = c.run(Arc::new(NoObserver)).expect("run");
    assert_eq!((summary.sent, summary.failed), (29, 1), "{summary:?}");
    let rows = report(&path);
    check_once(&rows, 30, &s.messages());
    let r7 = &rows[6];
    assert_eq!(
        (r7.status, r7.stage, r7.smtp_code),
        (Status::Failed, Some(Stage::Rcpt), Some(550))
    );
    assert!(r7.response.contains("r7@example.net"), "{r7:?}");
    assert_eq!(rows[5].status, Status::Sent);
    let _ = s.stop();
}

#[test]
fn data_refused_after_the_recipients_defers_and_retries_the_whole_batch() {
    // Session 0: EHLO is unit 0, MAIL 1, RCPT 2..=11, DATA 12 (refused with 451).
    let s = sink(SinkConfig {
        chunking: false,
        faults: Some(FaultPlan {
            sessions: vec![vec![Fault::ReplyCode {
                command: 12,
                code: 451,
            }]],
        }),
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, path) = campaign(&s, 10, 10, ANNOUNCEMENT, &dir);
    let summary = c.run(Arc::new(NoObserver)).expect("run");
    assert_eq!(summary.sent, 10, "{summary:?}");
    let stored = s.messages();
    assert_eq!(stored.len(), 1, "the retry: one transaction of 10");
    assert_eq!(stored[0].rcpts.len(), 10);
    let rows = report(&path);
    check_once(&rows, 10, &stored);
    assert!(rows.iter().all(|r| r.attempts == 2), "{rows:?}");
    let _ = s.stop();
}

#[test]
fn a_template_using_the_row_cannot_batch() {
    let s = sink(SinkConfig::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let t = "From: a@example.org\nTo: {{ email }}\nSubject: Hi {{ name }}\n\nx\n";
    let (c, _) = campaign(&s, 3, 2, t, &dir);
    match c.run(Arc::new(NoObserver)) {
        Err(CampaignError::Batch(why)) => {
            assert!(why.contains("{{ email }}, {{ name }}"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.stop().sessions, 0);
}
