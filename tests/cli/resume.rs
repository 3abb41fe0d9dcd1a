//! Resume, kill -9 then resume, and Ctrl-C.

use super::*;

// ----- resume --------------------------------------------------------------------------------

/// A fixture with `list` and [`SIMPLE_TEMPLATE`] after a first run (`--retries 0`, exit 1)
/// to a sink that defers every `@slow.example` address, reporting to `report`; that
/// report by row.
fn deferred_slow_rows(list: &str, report: &str) -> (Fx, BTreeMap<u64, Row>) {
    let fx = Fx::new();
    fx.write("list.csv", list);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let first = start_sink(SinkConfig {
        reject: rules(&["450:*@slow.example"]),
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&first));
    c.args(list_args("list.csv", "t.eml", report))
        .args(["--retries", "0"]);
    expect_code(&run(c), 1);
    let old = by_row(&read_report(&fx.path(report)));
    (fx, old)
}

/// `send --resume FROM` of the fixture's list to `sink`, reporting to `report`.
fn resume(fx: &Fx, sink: &SinkHandle, report: &str, from: &str) -> util::Out {
    fx.send_list(sink, report, &["--resume", from])
}

#[test]
fn resume_sends_only_the_rows_not_sent_before() {
    let (fx, old) = deferred_slow_rows(
        "email,name\na@x.example,A\ns1@slow.example,S1\nb@x.example,B\ns2@slow.example,S2\n",
        "r.csv",
    );
    let statuses: Vec<&str> = old.values().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["sent", "deferred", "sent", "deferred"]);

    let second = plain_sink();
    expect_code(&resume(&fx, &second, "r2.csv", "r.csv"), 0);
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
    let (fx, old) = deferred_slow_rows(
        "email,name\na@x.example,A\ns1@slow.example,S1\nb@x.example,B\n",
        "r.json",
    );

    let second = plain_sink();
    expect_code(&resume(&fx, &second, "r.json", "r.json"), 0);
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
    let fx = numbered_fixture('k', 1..=KILL_ROWS);
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
        .args(list_args("list.csv", "t.eml", "r.csv"))
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
    let out = fx.send_list(&sink, "r2.csv", &["--resume", "r.csv"]);
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
    let out = fx.send_list(&sink, "r2.csv", &["--resume", "r.csv", "--skip-unknown"]);
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
    expect_code(&fx.send_list(&sink, "r2.csv", &["--resume", "r.csv"]), 0);
    let got = deliveries(&sink.messages());
    assert_eq!(got.len(), KILL_ROWS as usize);
    assert!(got.values().all(|n| *n == 1), "{got:?}");
}
