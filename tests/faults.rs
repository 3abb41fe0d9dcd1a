//! Randomized fault runs (issue #7): `pipemail send` against the in-process sink with a seeded
//! [`FaultPlan`], then the report is checked against what the sink stored.
//!
//! Each case draws, from its own 64-bit seed: the list size (5–40 rows), the mode (DATA with
//! `--no-chunking`, or pipelined BDAT), 1 or 4 connections, and 0–3 faults for each of the
//! first 1–4 sessions (drop after a random number of input bytes, `DropBeforeReply` with
//! `stored` true or false, `Reply421`, `ReplyCode` 4xx/5xx, `Stall`, `DribbleReplies`,
//! `MidReplyDrop`), with command indices biased towards the units that end a message.
//!
//! # The invariant
//!
//! A stored copy of a row's message is *uncertain* when it may have been stored without the
//! client seeing the reply: the sink's only ways to do that are `DropBeforeReply { stored:
//! true }` and `MidReplyDrop` on the final dot / `BDAT LAST`, after which the sink closes the
//! session, so such a copy is always the last message stored by a session that has one of
//! these faults. The check takes the last stored message of every such session as uncertain
//! (a slight over-approximation when the fault hit a later command instead); every other
//! stored copy is *certain*: the client received its 2xx reply. From `src/send.rs` (an
//! `unknown` outcome is retried like a deferral; a row finishes at its first `sent`, at a 5xx,
//! or when retries run out) and `src/engine/session.rs` (a committed message whose reply never
//! came is `Delivery::Unknown`, unless a 421 announced that the server stops processing):
//!
//! 1. The report has every input row exactly once, and the run exits 0, 1, 69 or 75 (never a
//!    crash, a panic or a usage error).
//! 2. A certain copy means the client saw a 2xx, so the row is `sent`, and no row has more than
//!    one certain copy.
//! 3. `sent` ⇒ at least one stored copy (nothing lost); copies beyond the first are uncertain
//!    (a retry after an `unknown` outcome may duplicate, nothing else may).
//! 4. `failed` or `deferred` ⇒ no stored copy. A row with an uncertain stored copy is never
//!    reported `failed` or `deferred`: if a retry after the `unknown` attempt does not send it,
//!    the row stays `unknown` (so `--resume` does not treat a possibly delivered row as
//!    undelivered).
//! 5. `unknown` ⇒ every stored copy is uncertain.
//! 6. Every stored message has exactly the envelope and content the row's rendering gives
//!    (one recipient, the row's own body): no mix-up between pipelined messages.
//!
//! # Knobs
//!
//! `PIPEMAIL_FAULT_CASES=N` runs N cases (default 1000); `PIPEMAIL_FAULT_SEED=0x…` replays the
//! one case with that seed (printed on failure with the case); `PIPEMAIL_FAULT_VERBOSE=1` runs
//! pipemail with `--verbose` and prints its transcript. The summary goes to stderr and to
//! `<target>/fault-summary.txt`.
//!
//! Timing: only cases with a `Stall` need a reply timeout to fire; they run with
//! `--timeout 400ms`. All other cases use a 30 s timeout, so a slow machine cannot turn an
//! answered command into a timeout. A `Stall` case that fails only because a reply that was
//! sent arrived after 400 ms is re-run once with a 3 s timeout and must then pass.

mod util;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pipemail::report::{ReportRow, Status};
use pipemail::sink::{Fault, FaultPlan, SinkConfig, SinkHandle, StoredMessage};
use util::Rng;

const DEFAULT_CASES: usize = 1000;
const BASE_SEED: u64 = 0x7069_7065_6d61_696c; // "pipemail"
const PARALLEL: usize = 4;
/// No single run may take longer than this (kills it and fails the case).
const RUN_LIMIT: Duration = Duration::from_secs(60);

// ----- PRNG -----------------------------------------------------------------------------

fn case_seed(index: usize) -> u64 {
    Rng(BASE_SEED ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F)).next()
}

// ----- cases ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    rows: u64,
    bdat: bool,
    connections: u32,
    plan: FaultPlan,
}

impl Case {
    fn generate(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let rows = rng.range(5, 40);
        let bdat = rng.chance(1, 2);
        let connections = if rng.chance(1, 2) { 1 } else { 4 };
        // Units per message: MAIL, RCPT, BDAT LAST (3) or MAIL, RCPT, DATA, dot (4); unit 0
        // is EHLO. Indices reach a little past the messages one session may carry.
        let per_msg = if bdat { 3 } else { 4 };
        let per_session = rows.div_ceil(u64::from(connections)).min(12);
        let max_unit = per_msg * per_session + 2;
        let faulted_sessions = rng.range(1, 4) as usize;
        let mut sessions = Vec::new();
        for _ in 0..faulted_sessions {
            let n = rng.range(0, 3);
            let mut faults = Vec::new();
            for _ in 0..n {
                // Half the time aim at the unit ending message m (its final dot / BDAT LAST).
                let command = if rng.chance(1, 2) {
                    per_msg * (rng.range(0, per_session.saturating_sub(1)) + 1)
                } else {
                    rng.range(0, max_unit)
                };
                let fault = match rng.range(0, 9) {
                    0 => Fault::DropAfterInputBytes(rng.range(0, 300 * per_session + 200)),
                    1 | 2 => Fault::DropBeforeReply {
                        command,
                        stored: rng.chance(1, 2),
                    },
                    3 => Fault::Reply421 { command },
                    // 421 is left to Reply421: a server that says 421 closes the channel
                    // (RFC 5321 §3.8), the sink's ReplyCode would go on processing.
                    4 | 5 => Fault::ReplyCode {
                        command,
                        code: rng.pick(&[450, 451, 452, 550, 552, 554]),
                    },
                    6 => Fault::Stall { command },
                    7 => Fault::DribbleReplies,
                    _ => Fault::MidReplyDrop { command },
                };
                faults.push(fault);
            }
            sessions.push(faults);
        }
        Self {
            seed,
            rows,
            bdat,
            connections,
            plan: FaultPlan { sessions },
        }
    }

    fn has_stall(&self) -> bool {
        self.plan
            .sessions
            .iter()
            .flatten()
            .any(|f| matches!(f, Fault::Stall { .. }))
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "seed {:#018x}: {} rows, {}, {} connection(s), faults by session:",
            self.seed,
            self.rows,
            if self.bdat { "BDAT" } else { "DATA" },
            self.connections
        );
        for (i, f) in self.plan.sessions.iter().enumerate() {
            let _ = write!(s, "\n    session {i}: {f:?}");
        }
        s
    }
}

fn email(row: u64) -> String {
    format!("rcpt{row}.x@example.net")
}

const TEMPLATE: &str = "From: Fault Runs <sender@example.org>\n\
To: <{{ email }}>\n\
Subject: fault run row {{ id }}\n\
Message-ID: <row{{ id }}@pipemail.test>\n\
Date: Thu, 01 Jan 2026 00:00:00 +0000\n\
\n\
Hello {{ name }},\n\
.a line that starts with a dot\n\
..and one with two\n\
row {{ id }} for {{ email }}\n";

/// What the sink must hold for `row`: the rendered template with CRLF line ends.
fn expected_body(row: u64) -> Vec<u8> {
    format!(
        "From: Fault Runs <sender@example.org>\r\n\
To: <{e}>\r\n\
Subject: fault run row {row}\r\n\
Message-ID: <row{row}@pipemail.test>\r\n\
Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
\r\n\
Hello Name {row},\r\n\
.a line that starts with a dot\r\n\
..and one with two\r\n\
row {row} for {e}\r\n",
        e = email(row)
    )
    .into_bytes()
}

// ----- one run ----------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    cases: u64,
    rows: u64,
    sent: u64,
    failed: u64,
    deferred: u64,
    unknown: u64,
    lost: u64,
    duplicated: u64,
    uncertain_duplicates: u64,
    reruns: u64,
}

impl Figures {
    fn add(&mut self, o: &Self) {
        self.cases += o.cases;
        self.rows += o.rows;
        self.sent += o.sent;
        self.failed += o.failed;
        self.deferred += o.deferred;
        self.unknown += o.unknown;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.uncertain_duplicates += o.uncertain_duplicates;
        self.reruns += o.reruns;
    }
}

struct RunOutput {
    code: Option<i32>,
    stderr: String,
    report: Vec<ReportRow>,
    stored: Vec<StoredMessage>,
}

fn run_case(case: &Case, timeout: &str) -> Result<RunOutput, String> {
    let cfg = SinkConfig {
        keep_in_memory: true,
        faults: Some(case.plan.clone()),
        ..SinkConfig::default()
    };
    run_against(cfg, case, timeout)
}

/// Runs `pipemail send` for `case`'s rows, mode and connections against a sink made from
/// `cfg` (whose fault plan may differ from the case's).
fn run_against(cfg: SinkConfig, case: &Case, timeout: &str) -> Result<RunOutput, String> {
    let sink = SinkHandle::start(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
        .map_err(|e| format!("sink: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let mut list = String::from("email,id,name\n");
    for row in 1..=case.rows {
        let _ = writeln!(list, "{},{row},Name {row}", email(row));
    }
    let list_path = dir.path().join("list.csv");
    let template_path = dir.path().join("t.eml");
    let report_path = dir.path().join("r.csv");
    std::fs::write(&list_path, list).map_err(|e| e.to_string())?;
    std::fs::write(&template_path, TEMPLATE).map_err(|e| e.to_string())?;

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipemail"));
    cmd.arg("send")
        .arg("--host")
        .arg(sink.local_addr().to_string())
        .args(["--tls", "none", "--helo", "faults.test", "--quiet"])
        .args(["--retries", "3", "--retry-delay", "1ms"])
        .args(["--timeout", timeout, "--data-timeout", timeout])
        .args(["--connect-timeout", "10s"])
        .arg("--connections")
        .arg(case.connections.to_string())
        .arg("--list")
        .arg(&list_path)
        .arg("--template")
        .arg(&template_path)
        .arg("--report")
        .arg(&report_path)
        .env_remove("PIPEMAIL_HOST")
        .env_remove("PIPEMAIL_USER")
        .env_remove("PIPEMAIL_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !case.bdat {
        cmd.arg("--no-chunking");
    }
    if std::env::var_os("PIPEMAIL_FAULT_VERBOSE").is_some() {
        cmd.arg("--verbose");
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let mut stderr_pipe = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr_pipe, &mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("pipemail did not finish within {RUN_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = reader.join().unwrap_or_default();
    if std::env::var_os("PIPEMAIL_FAULT_VERBOSE").is_some() {
        let _ = writeln!(std::io::stderr(), "{}\n{stderr}", case.describe());
    }
    let report = util::try_read_report(&report_path)?;
    let stored = sink.messages();
    drop(sink);
    Ok(RunOutput {
        code: status.code(),
        stderr,
        report,
        stored,
    })
}

/// Checks the invariant of the module docs; `Err` describes the first violations.
fn check(case: &Case, out: &RunOutput) -> Result<Figures, String> {
    let mut problems = Vec::new();
    if !matches!(out.code, Some(0 | 1 | 69 | 75)) {
        problems.push(format!("exit code {:?}", out.code));
    }
    if out.stderr.contains("panicked") {
        problems.push("pipemail panicked".into());
    }
    // 1. every row exactly once
    let mut by_row: HashMap<u64, &ReportRow> = HashMap::new();
    for r in &out.report {
        if by_row.insert(r.row, r).is_some() {
            problems.push(format!("row {} reported twice", r.row));
        }
        if r.email != email(r.row) {
            problems.push(format!("row {} reported with address {}", r.row, r.email));
        }
    }
    for row in 1..=case.rows {
        if !by_row.contains_key(&row) {
            problems.push(format!("row {row} missing from the report"));
        }
    }
    if out.report.len() as u64 != case.rows {
        problems.push(format!(
            "report has {} rows for {} input rows",
            out.report.len(),
            case.rows
        ));
    }

    // Uncertain copies: the last message stored by each session with a reply-losing fault.
    let mut last_of_session: HashMap<u64, usize> = HashMap::new();
    for (i, m) in out.stored.iter().enumerate() {
        last_of_session.insert(m.session, i);
    }
    let mut uncertain = vec![false; out.stored.len()];
    for (s, faults) in case.plan.sessions.iter().enumerate() {
        let loses_reply = faults.iter().any(|f| {
            matches!(
                f,
                Fault::DropBeforeReply { stored: true, .. } | Fault::MidReplyDrop { .. }
            )
        });
        if let (true, Some(&i)) = (loses_reply, last_of_session.get(&(s as u64))) {
            uncertain[i] = true;
        }
    }

    // 6. envelope and content
    let mut copies: HashMap<u64, (u64, u64)> = HashMap::new(); // row -> (certain, uncertain)
    for (i, m) in out.stored.iter().enumerate() {
        let [rcpt] = m.rcpts.as_slice() else {
            problems.push(format!("stored message with recipients {:?}", m.rcpts));
            continue;
        };
        let Some(row) = (1..=case.rows).find(|&r| email(r) == *rcpt) else {
            problems.push(format!("stored message for unknown recipient {rcpt}"));
            continue;
        };
        if m.from != "sender@example.org" {
            problems.push(format!("row {row}: stored with MAIL FROM {:?}", m.from));
        }
        if m.data != expected_body(row) || (m.via_bdat && !case.bdat) {
            problems.push(format!(
                "row {row}: stored content differs (bdat {}):\n{}",
                m.via_bdat,
                String::from_utf8_lossy(&m.data)
            ));
        }
        let e = copies.entry(row).or_default();
        if uncertain[i] {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }

    let mut f = Figures {
        cases: 1,
        rows: case.rows,
        ..Figures::default()
    };
    for row in 1..=case.rows {
        let Some(r) = by_row.get(&row) else { continue };
        let (certain, unsure) = copies.get(&row).copied().unwrap_or_default();
        let total = certain + unsure;
        match r.status {
            Status::Sent => f.sent += 1,
            Status::Failed => f.failed += 1,
            Status::Deferred => f.deferred += 1,
            Status::Unknown => f.unknown += 1,
            Status::Skipped => {}
        }
        let mut bad = |what: &str| {
            problems.push(format!(
                "row {row} ({}, attempts {}, {:?}): {what}; stored {certain} certain + {unsure} uncertain",
                r.status, r.attempts, r.response
            ));
        };
        // 2.
        if certain > 1 {
            bad("more than one copy the client saw accepted");
        }
        if certain >= 1 && r.status != Status::Sent {
            bad("a copy the client saw accepted, but not reported sent");
        }
        match r.status {
            // 3.
            Status::Sent => {
                if total == 0 {
                    f.lost += 1;
                    bad("reported sent but never stored");
                }
                if total > 1 {
                    if total - 1 > unsure {
                        f.duplicated += total - 1 - unsure.min(total - 1);
                        bad("duplicated without an uncertain outcome");
                    } else {
                        f.uncertain_duplicates += total - 1;
                    }
                }
            }
            // 4.
            Status::Failed | Status::Deferred => {
                if total > 0 {
                    bad("stored, but reported failed/deferred");
                }
            }
            // 5.
            Status::Unknown => {
                if certain > 0 {
                    bad("reported unknown with a certain copy");
                }
                if unsure > 1 {
                    f.uncertain_duplicates += unsure - 1;
                }
            }
            Status::Skipped => bad("skipped (no duplicates in this list)"),
        }
    }
    if problems.is_empty() {
        Ok(f)
    } else {
        problems.truncate(20);
        Err(problems.join("\n  "))
    }
}

/// Runs and checks one case; `Err` has everything needed to replay it.
fn run_and_check(case: &Case) -> Result<Figures, String> {
    let timeout = if case.has_stall() { "400ms" } else { "30s" };
    let first = run_case(case, timeout).and_then(|out| {
        check(case, &out).map_err(|e| format!("{e}\n  pipemail stderr: {}", out.stderr.trim()))
    });
    match first {
        Ok(f) => Ok(f),
        Err(e) if case.has_stall() => {
            // A reply that was sent but arrived after 400 ms on a busy machine looks like a
            // lost one. The fault plan does not depend on time: a real bug shows again.
            let again = run_case(case, "3s").and_then(|out| {
                check(case, &out)
                    .map_err(|e| format!("{e}\n  pipemail stderr: {}", out.stderr.trim()))
            });
            match again {
                Ok(mut f) => {
                    f.reruns = 1;
                    Ok(f)
                }
                Err(e2) => Err(format!("{e}\n  (re-run with a 3 s timeout: {e2})")),
            }
        }
        Err(e) => Err(e),
    }
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn summary_path() -> std::path::PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("fault-summary.txt")
}

#[test]
fn randomized_fault_runs_keep_the_report_true() {
    let seeds: Vec<u64> = match env_number("PIPEMAIL_FAULT_SEED") {
        Some(seed) => vec![seed],
        None => {
            let n = env_number("PIPEMAIL_FAULT_CASES").map_or(DEFAULT_CASES, |n| n as usize);
            (0..n).map(case_seed).collect()
        }
    };
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let totals = Mutex::new(Figures::default());
    let failures = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(seeds.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&seed) = seeds.get(i) else { break };
                    let case = Case::generate(seed);
                    match run_and_check(&case) {
                        Ok(f) => totals.lock().expect("lock").add(&f),
                        Err(e) => failures.lock().expect("lock").push(format!(
                            "case {i}, {}\n  {e}\n  replay: PIPEMAIL_FAULT_SEED={:#x} cargo test --test faults",
                            case.describe(),
                            case.seed
                        )),
                    }
                }
            });
        }
    });
    let t = totals.into_inner().expect("lock");
    let failures = failures.into_inner().expect("lock");
    let line = format!(
        "fault runs: {} cases, {} rows ({} sent, {} failed, {} deferred, {} unknown), {} lost, {} duplicated, {} unknown-then-retried duplicates, {} failing case(s), {} stall case(s) re-run, in {:.1}s",
        seeds.len(),
        t.rows,
        t.sent,
        t.failed,
        t.deferred,
        t.unknown,
        t.lost,
        t.duplicated,
        t.uncertain_duplicates,
        failures.len(),
        t.reruns,
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(std::io::stderr(), "{line}");
    let _ = std::fs::write(summary_path(), format!("{line}\n"));
    assert!(
        failures.is_empty(),
        "{} of {} fault cases failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n\n")
    );
}

// ----- deterministic regressions ----------------------------------------------------------

fn fixed_case(rows: u64, bdat: bool, sessions: Vec<Vec<Fault>>) -> Case {
    Case {
        seed: 0,
        rows,
        bdat,
        connections: 1,
        plan: FaultPlan { sessions },
    }
}

fn status_of(out: &RunOutput, row: u64) -> Status {
    out.report
        .iter()
        .find(|r| r.row == row)
        .unwrap_or_else(|| panic!("row {row} missing: {:?}", out.report))
        .status
}

/// Regression (issue #7): an attempt whose message the server stored without the client
/// seeing the reply ends `unknown`; the retry was refused (5xx), and the row was reported
/// `failed` although the recipient had the message. It is `unknown` now.
#[test]
fn refused_retry_after_unknown_outcome_is_unknown_not_failed() {
    // BDAT mode, one row: EHLO is unit 0, MAIL 1, RCPT 2, BDAT LAST 3.
    let case = fixed_case(
        1,
        true,
        vec![
            vec![Fault::DropBeforeReply {
                command: 3,
                stored: true,
            }],
            vec![Fault::ReplyCode {
                command: 2,
                code: 550,
            }],
        ],
    );
    let out = run_case(&case, "30s").expect("run");
    assert_eq!(status_of(&out, 1), Status::Unknown, "{:?}", out.report);
    assert_eq!(out.stored.len(), 1);
    check(&case, &out).expect("invariant");
}

/// Regression (issue #7): the same with temporary refusals until the retries run out: the
/// row was reported `deferred` (and `--resume` would send it again as never delivered).
#[test]
fn deferred_retries_after_unknown_outcome_are_unknown_not_deferred() {
    // 421 to RCPT: a temporary refusal that also ends the session, so each retry has one.
    let refuse = || vec![Fault::Reply421 { command: 2 }];
    let case = fixed_case(
        1,
        true,
        vec![
            vec![Fault::MidReplyDrop { command: 3 }],
            refuse(),
            refuse(),
            refuse(),
        ],
    );
    let out = run_case(&case, "30s").expect("run");
    let row = &out.report[0];
    assert_eq!(row.status, Status::Unknown, "{row:?}");
    assert_eq!(row.attempts, 4, "{row:?}");
    assert!(
        row.response
            .contains("earlier attempt may have been delivered"),
        "{row:?}"
    );
    assert_eq!(out.stored.len(), 1);
    check(&case, &out).expect("invariant");
}

/// Regression (issue #7): after a refused DATA the server refused RSET too and kept the
/// transaction; the next row's MAIL (pipelined behind the RSET) got `503 nested MAIL`, its
/// RCPT joined the old transaction and the engine's lone dot stored an empty message for
/// both rows. Now nothing follows a refused RSET but QUIT.
#[test]
fn refused_rset_does_not_merge_two_rows_into_one_message() {
    // DATA mode: EHLO 0, MAIL 1, RCPT 2, DATA 3 (refused), RSET 4 (refused).
    let case = fixed_case(
        2,
        false,
        vec![vec![
            Fault::ReplyCode {
                command: 3,
                code: 552,
            },
            Fault::ReplyCode {
                command: 4,
                code: 451,
            },
        ]],
    );
    let out = run_case(&case, "30s").expect("run");
    assert_eq!(status_of(&out, 1), Status::Failed);
    assert_eq!(status_of(&out, 2), Status::Sent);
    assert_eq!(out.stored.len(), 1, "{:?}", out.stored);
    assert_eq!(out.stored[0].rcpts, [email(2)]);
    check(&case, &out).expect("invariant");
}

/// Regression (issue #7): without PIPELINING, a row whose only RCPT was refused left the
/// transaction open and the next row's MAIL got `503 nested MAIL command`: that row failed.
#[test]
fn lock_step_refused_recipient_does_not_fail_the_next_row() {
    let case = fixed_case(3, false, Vec::new());
    let cfg = SinkConfig {
        keep_in_memory: true,
        pipelining: false,
        reject: vec![pipemail::sink::RejectRule {
            pattern: email(1),
            code: 550,
        }],
        ..SinkConfig::default()
    };
    let out = run_against(cfg, &case, "30s").expect("run");
    assert_eq!(status_of(&out, 1), Status::Failed);
    assert_eq!(status_of(&out, 2), Status::Sent, "{:?}", out.report);
    assert_eq!(status_of(&out, 3), Status::Sent);
    assert_eq!(out.stored.len(), 2);
    check(&case, &out).expect("invariant");
}
