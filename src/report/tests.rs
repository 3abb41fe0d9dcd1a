//! Report schema, writers, journal and resume.

use super::*;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;
use time::macros::datetime;

fn sample(row: u64, email: &str, status: Status) -> ReportRow {
    ReportRow {
        row,
        email: email.to_owned(),
        status,
        smtp_code: (status != Status::Unknown).then_some(if status == Status::Sent {
            250
        } else {
            550
        }),
        enhanced_code: (status == Status::Failed).then(|| "5.1.1".to_owned()),
        response: if status == Status::Failed {
            "550-5.1.1 no such user\n550 5.1.1 \"really\", sorry".to_owned()
        } else {
            "250 2.0.0 Ok: queued".to_owned()
        },
        stage: (status == Status::Failed).then_some(Stage::Rcpt),
        attempts: 1,
        message_id: format!("{row}.1.2@example.org"),
        finished_at: datetime!(2026-11-25 20:14:18.123 UTC),
    }
}

fn rows() -> Vec<ReportRow> {
    vec![
        sample(1, "a@example.com", Status::Sent),
        sample(2, "b@example.com", Status::Failed),
        sample(3, "C@Example.com", Status::Unknown),
        sample(4, "d@example.com", Status::Deferred),
        sample(5, "e@example.com", Status::Sent),
        sample(6, "a@EXAMPLE.com", Status::Skipped),
    ]
}

fn write_report(path: &Path, format: Format, rows: &[ReportRow], finish: bool) {
    let p = path.to_str().expect("utf-8 path");
    let mut w = ReportWriter::create(p, format).expect("create");
    for r in rows {
        w.write(r).expect("write");
    }
    if finish {
        w.finish().expect("finish");
    }
}

#[test]
fn shareable_between_threads() {
    fn send<T: Send>() {}
    fn sync<T: Send + Sync>() {}
    send::<ReportWriter>();
    send::<Journal>();
    sync::<ResumeState>();
    sync::<ReportError>();
}

#[test]
fn enums_round_trip() {
    for s in [
        Status::Sent,
        Status::Failed,
        Status::Deferred,
        Status::Skipped,
        Status::Unknown,
    ] {
        assert_eq!(s.to_string().parse::<Status>(), Ok(s));
        assert_eq!(serde_json::to_string(&s).expect("json"), format!("\"{s}\""));
    }
    assert_eq!("rcpt".parse::<Stage>(), Ok(Stage::Rcpt));
    assert_eq!(Stage::Tls.to_string(), "tls");
    assert!("nope".parse::<Stage>().is_err());
    assert_eq!(Format::from_path("r.JSON"), Format::Json);
    assert_eq!(Format::from_path("r.jsonl"), Format::Jsonl);
    assert_eq!(Format::from_path("r.ndjson"), Format::Jsonl);
    assert_eq!(Format::from_path("report"), Format::Csv);
    assert_eq!(Format::from_path("-"), Format::Csv);
    assert_eq!("JSONL".parse::<Format>(), Ok(Format::Jsonl));
}

#[test]
fn csv_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.csv");
    write_report(&path, Format::Csv, &rows()[..2], true);
    let text = fs::read_to_string(&path).expect("read");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            "row,email,status,smtp_code,enhanced_code,response,stage,attempts,message_id,finished_at"
        )
    );
    assert_eq!(
        lines.next(),
        Some(
            "1,a@example.com,sent,250,,250 2.0.0 Ok: queued,,1,1.1.2@example.org,2026-11-25T20:14:18.123Z"
        )
    );
    // Issue 16: a line break in a reply is written as the two characters `\n` (no control
    // character reaches a report cell), so the record stays on one line.
    assert_eq!(
        lines.next(),
        Some(
            "2,b@example.com,failed,550,5.1.1,\"550-5.1.1 no such user\\n550 5.1.1 \"\"really\"\", sorry\",rcpt,1,2.1.2@example.org,2026-11-25T20:14:18.123Z"
        )
    );
}

#[test]
fn cells_are_printable_and_formula_guarded_in_csv_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut row = sample(1, "=cmd@example.com", Status::Failed);
    row.response = "550 =HYPERLINK(\"http://evil.example/\") \u{1b}[2J\u{9b}x\u{7}".to_owned();
    row.enhanced_code = Some("+5.1.1".to_owned());
    row.message_id = "-1@x".to_owned();
    let csv = dir.path().join("r.csv");
    write_report(&csv, Format::Csv, std::slice::from_ref(&row), true);
    let text = fs::read_to_string(&csv).expect("read");
    assert_eq!(
        text.lines().nth(1),
        Some(
            "1,'=cmd@example.com,failed,550,'+5.1.1,\"550 =HYPERLINK(\"\"http://evil.example/\"\") \\x1b[2J\\u{9b}x\\x07\",rcpt,1,'-1@x,2026-11-25T20:14:18.123Z"
        )
    );
    for format in [Format::Json, Format::Jsonl] {
        let p = dir.path().join(format!("r.{format}"));
        write_report(&p, format, std::slice::from_ref(&row), true);
        let text = fs::read_to_string(&p).expect("read");
        assert!(
            !text.contains('\u{1b}') && !text.contains("\\u001b"),
            "{text}"
        );
        assert!(
            text.contains(r#""email":"=cmd@example.com""#),
            "not guarded: {text}"
        );
        assert!(text.contains(r#"\\x1b[2J\\u{9b}x\\x07"#), "{text}");
    }
    // Read back (`--resume`): the guard is removed, the escapes stay.
    let state = ResumeState::load(csv.to_str().expect("utf-8")).expect("load");
    assert_eq!(
        state.lookup("=cmd@example.com"),
        None,
        "failed: not remembered"
    );
    let mut rec = csv::StringRecord::new();
    let mut r = csv::Reader::from_path(&csv).expect("open");
    assert!(r.read_record(&mut rec).expect("record"));
    let back = ReportRow::from_csv(&rec, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).expect("parse");
    assert_eq!(back.email, "=cmd@example.com");
    assert_eq!(back.enhanced_code.as_deref(), Some("+5.1.1"));
    assert_eq!(back.message_id, "-1@x");
    assert_eq!(
        back.response,
        "550 =HYPERLINK(\"http://evil.example/\") \\x1b[2J\\u{9b}x\\x07"
    );
}

#[test]
fn json_layout_and_nulls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    write_report(&path, Format::Json, &rows()[..3], true);
    let text = fs::read_to_string(&path).expect("read");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let arr = v.as_array().expect("array");
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["stage"], serde_json::Value::Null);
    assert_eq!(arr[0]["enhanced_code"], serde_json::Value::Null);
    assert_eq!(arr[2]["smtp_code"], serde_json::Value::Null);
    assert_eq!(arr[1]["stage"], "rcpt");
    assert_eq!(arr[0]["finished_at"], "2026-11-25T20:14:18.123Z");
    let keys: Vec<&String> = arr[0].as_object().expect("object").keys().collect();
    let mut sorted = COLUMNS.to_vec();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "every column present");
    // Empty report is valid too.
    write_report(&path, Format::Json, &[], true);
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("json");
    assert_eq!(v, serde_json::json!([]));
    // Unterminated when not finished: one object per line.
    write_report(&path, Format::Json, &rows()[..2], false);
    let text = fs::read_to_string(&path).expect("read");
    assert!(text.starts_with("[\n{") && text.ends_with('}'), "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(&format!("{text}\n]")).is_ok());
}

fn check_outcomes(state: &ResumeState) {
    let all = rows();
    assert_eq!(state.sent(), 2);
    assert_eq!(state.unknown(), 1);
    assert_eq!(
        state.lookup("A@example.com"),
        Some(PreviousOutcome::Sent(all[0].clone())),
        "sent wins over the later skipped duplicate"
    );
    assert_eq!(
        state.lookup("c@example.com"),
        Some(PreviousOutcome::Unknown(all[2].clone()))
    );
    assert_eq!(
        state.lookup("b@example.com"),
        None,
        "failed rows are retried"
    );
    assert_eq!(
        state.lookup("d@example.com"),
        None,
        "deferred rows are retried"
    );
    assert_eq!(
        state.lookup("e@example.com"),
        Some(PreviousOutcome::Sent(all[4].clone()))
    );
    assert_eq!(state.lookup("new@example.com"), None);
}

#[test]
fn round_trip_every_format() {
    for (name, format) in [
        ("r.csv", Format::Csv),
        ("r.json", Format::Json),
        ("r.jsonl", Format::Jsonl),
    ] {
        for finish in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(name);
            write_report(&path, format, &rows(), finish);
            let p = path.to_str().expect("utf-8");
            let state = ResumeState::load(p).expect("load");
            check_outcomes(&state);
            assert!(state.carry_path().exists());
            state.finish().expect("finish");
            assert!(!carry_path(p).exists());
        }
    }
}

#[test]
fn truncated_last_record_is_ignored() {
    for (name, format) in [
        ("r.csv", Format::Csv),
        ("r.json", Format::Json),
        ("r.jsonl", Format::Jsonl),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        let mut all = rows();
        all.push(sample(7, "f@example.com", Status::Sent));
        write_report(&path, format, &all, false);
        // Cut the last row short, in the middle of its response text.
        let text = fs::read(&path).expect("read");
        let cut = text.len() - 60;
        fs::write(&path, &text[..cut]).expect("truncate");
        let state = ResumeState::load(path.to_str().expect("utf-8")).expect("load");
        check_outcomes(&state);
        assert_eq!(state.lookup("f@example.com"), None, "{name}");
    }
}

#[test]
fn truncated_inside_quoted_csv_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.csv");
    let mut all = rows();
    all.push(sample(7, "f@example.com", Status::Failed));
    write_report(&path, Format::Csv, &all, false);
    let text = fs::read_to_string(&path).expect("read");
    let cut = text.rfind("no such user").expect("multi-line response");
    fs::write(&path, &text[..cut]).expect("truncate");
    let state = ResumeState::load(path.to_str().expect("utf-8")).expect("load");
    check_outcomes(&state);
}

#[test]
fn malformed_middle_row_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.jsonl");
    write_report(&path, Format::Jsonl, &rows()[..1], true);
    let mut f = append(&path);
    f.write_all(b"{\"row\": oops}\n").expect("append");
    drop(f);
    write_report(
        &dir.path().join("x.jsonl"),
        Format::Jsonl,
        &rows()[..1],
        true,
    );
    let good = fs::read(dir.path().join("x.jsonl")).expect("read");
    append(&path).write_all(&good).expect("append");
    let err = ResumeState::load(path.to_str().expect("utf-8")).expect_err("bad row");
    assert!(matches!(err, ReportError::Parse { line: 2, .. }), "{err:?}");
    let missing = dir.path().join("none.csv");
    assert!(matches!(
        ResumeState::load(missing.to_str().expect("utf-8")),
        Err(ReportError::NotFound { .. })
    ));
    assert!(matches!(ResumeState::load("-"), Err(ReportError::Stdout)));
}

#[test]
fn journal_rows_without_report_rows_are_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.csv");
    let p = path.to_str().expect("utf-8").to_owned();
    let mut w = ReportWriter::create(&p, Format::Csv).expect("create");
    let mut j = Journal::create(&p).expect("journal");
    assert_eq!(j.path(), Some(Path::new(&format!("{p}.journal"))));
    j.record_in_flight(&[(1, "a@example.com"), (2, "b@example.com")])
        .expect("record");
    w.write(&sample(1, "a@example.com", Status::Sent))
        .expect("write");
    w.write(&sample(2, "b@example.com", Status::Failed))
        .expect("write");
    j.record_in_flight(&[(3, "x@example.com"), (4, "y@example.com")])
        .expect("record");
    w.write(&sample(3, "x@example.com", Status::Deferred))
        .expect("write");
    // Killed here: row 4 was in flight. Simulate a torn last journal line too.
    append(Path::new(&format!("{p}.journal")))
        .write_all(b"{\"row\":5,\"em")
        .expect("append");
    drop(w);
    drop(j);
    let state = ResumeState::load(&p).expect("load");
    assert!(
        !Path::new(&format!("{p}.journal")).exists(),
        "journal taken over"
    );
    assert!(matches!(
        state.lookup("a@example.com"),
        Some(PreviousOutcome::Sent(_))
    ));
    assert_eq!(state.lookup("b@example.com"), None);
    assert_eq!(state.lookup("x@example.com"), None, "has a final row");
    match state.lookup("Y@example.com") {
        Some(PreviousOutcome::Unknown(r)) => {
            assert_eq!((r.row, r.email.as_str()), (4, "y@example.com"));
            assert_eq!(r.status, Status::Unknown);
            assert_eq!(r.response, IN_FLIGHT_RESPONSE);
        }
        other => panic!("{other:?}"),
    }

    // The resumed run overwrites the report and is killed again: nothing is forgotten.
    drop(state);
    let mut w = ReportWriter::create(&p, Format::Csv).expect("create");
    let mut j = Journal::create(&p).expect("journal");
    j.record_in_flight(&[(2, "b@example.com")]).expect("record");
    drop(w.write(&sample(1, "a@example.com", Status::Sent)));
    drop(w);
    drop(j);
    let state = ResumeState::load(&p).expect("load again");
    assert!(matches!(
        state.lookup("a@example.com"),
        Some(PreviousOutcome::Sent(_))
    ));
    assert!(matches!(
        state.lookup("y@example.com"),
        Some(PreviousOutcome::Unknown(_))
    ));
    assert!(matches!(
        state.lookup("b@example.com"),
        Some(PreviousOutcome::Unknown(_))
    ));
    assert_eq!(state.sent(), 1);
    assert_eq!(state.unknown(), 2);
    state.finish().expect("finish");

    // A complete run removes its journal.
    let j = Journal::create(&p).expect("journal");
    j.finish().expect("finish");
    assert!(!Path::new(&format!("{p}.journal")).exists());
    let mut j = Journal::create("-").expect("no journal for stdout");
    assert_eq!(j.path(), None);
    j.record_in_flight(&[(1, "a@example.com")]).expect("no-op");
}

/// Opens `path` for appending, creating it (used by tests to simulate a killed run).
fn append(path: &Path) -> File {
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("open for append")
}

#[test]
fn no_journal_beside_a_report_that_is_not_a_regular_file() {
    assert_eq!(journal_path("-"), None);
    assert_eq!(journal_path("/dev/null"), None);
    let j = Journal::create("/dev/null").expect("journal");
    assert_eq!(j.path(), None);
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("r.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if made {
        assert_eq!(journal_path(fifo.to_str().expect("utf-8")), None);
    }
    // A regular file, or one not there yet, gets its journal.
    let p = dir.path().join("r.csv");
    let p = p.to_str().expect("utf-8");
    assert_eq!(journal_path(p), Some(format!("{p}.journal").into()));
    fs::write(p, "x").expect("write");
    assert_eq!(journal_path(p), Some(format!("{p}.journal").into()));
}
