//! Kill and resume (issue #7): `pipemail send --report r.csv` is killed with SIGKILL at seeded
//! random moments, then `--resume r.csv` finishes the job; the sink's stored messages are
//! checked across all the runs of a list.
//!
//! The sink emulates a 20 ms round trip, so a run is in the middle of its list for a while;
//! the kill comes once the report holds k rows (k drawn from the seed; polled, bounded), not
//! after a sleep. A list killed once is finished with `--resume r.csv --report r2.csv`; some
//! lists are killed twice (kill, resume killed again, resume), reusing the report path so the
//! carry file chains the runs (see `src/report.rs`).
//!
//! Checked for each list:
//! - the last run's report has every row exactly once, each `sent`;
//! - every recipient was stored at least once, and each stored message is that row's;
//! - a recipient stored more than once is one the killed run left *in flight*: journaled
//!   (`r.csv.journal`, written before the bytes go out) with no row in the report at the
//!   moment of the kill;
//! - per kill, the duplicates are at most the pipeline window (`--window`, one connection):
//!   the engine holds at most a window of messages without a reply (DATA mode: one), and a
//!   row's report line is written by the session task as soon as its reply is handled,
//!   before anything more is committed. The largest count seen is printed.
//!
//! `PIPEMAIL_KILL_SEED=N` replays one list (printed on failure).

mod util;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pipemail::report::{ReportRow, Status};
use pipemail::sink::{SinkConfig, SinkHandle, StoredMessage};
use util::Rng;

const LISTS: u64 = 24;
const ROWS: u64 = 50;
const BASE_SEED: u64 = 0x6b69_6c6c; // "kill"
/// Bound on waiting for a report row count or for a run to finish.
const WAIT: Duration = Duration::from_secs(60);

fn email(row: u64) -> String {
    format!("k{row}@example.net")
}

const TEMPLATE: &str = "From: Kill Resume <sender@example.org>\n\
To: <{{ email }}>\n\
Subject: row {{ id }}\n\
\n\
Hello,\n\
.dot line\n\
row {{ id }} for {{ email }}\n";

struct Plan {
    bdat: bool,
    window: u64,
    /// Report rows to wait for before each kill (one or two kills).
    kills: Vec<u64>,
}

impl Plan {
    fn generate(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let bdat = rng.next().is_multiple_of(2);
        let window = [4, 8, 16][(rng.next() % 3) as usize];
        let first = rng.range(1, ROWS - 10);
        let mut kills = vec![first];
        if rng.next().is_multiple_of(3) {
            // The resumed run copies the earlier `sent` rows first, then sends.
            kills.push(rng.range(first + 1, ROWS - 2));
        }
        Self {
            bdat,
            window,
            kills,
        }
    }
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut list = String::from("email,id\n");
        for row in 1..=ROWS {
            let _ = writeln!(list, "{},{row}", email(row));
        }
        std::fs::write(dir.path().join("list.csv"), list).expect("list");
        std::fs::write(dir.path().join("t.eml"), TEMPLATE).expect("template");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Starts `pipemail send --report <report>`, with `--resume r.csv` when `resume`.
fn spawn(files: &Files, sink: SocketAddr, plan: &Plan, resume: bool, report: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipemail"));
    cmd.arg("send")
        .arg("--host")
        .arg(sink.to_string())
        .args(["--tls", "none", "--helo", "kill.test", "--quiet"])
        .args(["--retries", "3", "--retry-delay", "1ms", "--timeout", "30s"])
        .arg("--window")
        .arg(plan.window.to_string())
        .arg("--list")
        .arg(files.path("list.csv"))
        .arg("--template")
        .arg(files.path("t.eml"))
        .arg("--report")
        .arg(files.path(report))
        .env_remove("PIPEMAIL_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if resume {
        cmd.arg("--resume").arg(files.path("r.csv"));
    }
    if !plan.bdat {
        cmd.arg("--no-chunking");
    }
    cmd.spawn().expect("spawn pipemail")
}

/// Complete data rows of a report being written (a cut-short last line is not counted).
fn report_rows(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count().saturating_sub(1))
        .unwrap_or(0)
}

/// Rows in the report (complete records only) and rows in the journal, read after a kill.
fn in_flight(files: &Files) -> BTreeSet<u64> {
    let text = std::fs::read_to_string(files.path("r.csv")).unwrap_or_default();
    let mut reported = BTreeSet::new();
    for line in text.lines().skip(1) {
        if let Some(n) = line.split(',').next().and_then(|n| n.parse::<u64>().ok()) {
            reported.insert(n);
        }
    }
    let journal = std::fs::read_to_string(files.path("r.csv.journal")).unwrap_or_default();
    journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("row").and_then(serde_json::Value::as_u64))
        .filter(|r| !reported.contains(r))
        .collect()
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pipemail did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Outcome of one list: (kills that happened, duplicates per kill).
fn run_list(plan: &Plan) -> Result<(u64, Vec<u64>), String> {
    let sink = SinkHandle::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SinkConfig {
            keep_in_memory: true,
            latency: Duration::from_millis(20),
            ..SinkConfig::default()
        },
    )
    .map_err(|e| format!("sink: {e}"))?;
    let files = Files::new();
    let report = files.path("r.csv");
    let mut flights: Vec<BTreeSet<u64>> = Vec::new();
    let mut resume = false;
    for &k in &plan.kills {
        let mut child = spawn(&files, sink.local_addr(), plan, resume, "r.csv");
        let deadline = Instant::now() + WAIT;
        let mut finished = false;
        while report_rows(&report) < k as usize {
            if child.try_wait().expect("try_wait").is_some() {
                finished = true;
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("report never reached {k} rows"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if finished {
            // The run ended before the kill: nothing was in flight.
            let _ = child.wait();
            flights.push(BTreeSet::new());
        } else {
            child.kill().expect("kill"); // SIGKILL
            let _ = child.wait();
            flights.push(in_flight(&files));
        }
        resume = true;
    }
    // After one kill the last run writes a new report (`--resume r.csv --report r2.csv`);
    // after two it reuses the path, as a chain of resumes does.
    let last = if plan.kills.len() == 1 {
        "r2.csv"
    } else {
        "r.csv"
    };
    let mut child = spawn(&files, sink.local_addr(), plan, true, last);
    let code = wait_exit(&mut child);
    let stored = sink.messages();
    drop(sink);
    if code != Some(0) {
        return Err(format!("the last resume exited {code:?}"));
    }
    check(
        plan,
        &util::read_report(&files.path(last)),
        &stored,
        &flights,
    )
}

fn check(
    plan: &Plan,
    report: &[ReportRow],
    stored: &[StoredMessage],
    flights: &[BTreeSet<u64>],
) -> Result<(u64, Vec<u64>), String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for r in report {
        if !seen.insert(r.row) {
            problems.push(format!("row {} twice in the report", r.row));
        }
        if r.status != Status::Sent {
            problems.push(format!("row {} is {} ({})", r.row, r.status, r.response));
        }
    }
    if seen.len() as u64 != ROWS {
        problems.push(format!("report has {} of {ROWS} rows", seen.len()));
    }
    let mut copies: HashMap<u64, u64> = HashMap::new();
    for m in stored {
        let Some(row) = (1..=ROWS).find(|&r| m.rcpts == [email(r)]) else {
            problems.push(format!("stored message for {:?}", m.rcpts));
            continue;
        };
        let marker = format!("row {row} for {}", email(row));
        if !String::from_utf8_lossy(&m.data).contains(&marker) {
            problems.push(format!("row {row}: wrong content"));
        }
        *copies.entry(row).or_default() += 1;
    }
    let any_flight: BTreeSet<u64> = flights.iter().flatten().copied().collect();
    for row in 1..=ROWS {
        let n = copies.get(&row).copied().unwrap_or(0);
        if n == 0 {
            problems.push(format!("row {row} never stored"));
        }
        if n > 1 && !any_flight.contains(&row) {
            problems.push(format!(
                "row {row} stored {n} times but was not in flight at a kill"
            ));
        }
    }
    // Duplicates per kill: a duplicated row is charged to the first kill it was in flight at.
    let mut per_kill = vec![0u64; flights.len()];
    for (&row, &n) in &copies {
        if n > 1
            && let Some(i) = flights.iter().position(|f| f.contains(&row))
        {
            per_kill[i] += n - 1;
        }
    }
    for (i, &d) in per_kill.iter().enumerate() {
        if d > plan.window {
            problems.push(format!(
                "kill {i}: {d} duplicates, over the window of {}",
                plan.window
            ));
        }
    }
    if problems.is_empty() {
        Ok((
            flights.iter().filter(|f| !f.is_empty()).count() as u64,
            per_kill,
        ))
    } else {
        Err(format!(
            "{}\n  in flight at each kill: {flights:?}",
            problems.join("\n  ")
        ))
    }
}

#[test]
fn killed_runs_resume_without_loss_and_duplicate_only_what_was_in_flight() {
    let seeds: Vec<u64> = match std::env::var("PIPEMAIL_KILL_SEED") {
        Ok(s) => vec![s.trim().parse().expect("PIPEMAIL_KILL_SEED is a number")],
        Err(_) => (0..LISTS).map(|i| BASE_SEED + i).collect(),
    };
    let started = Instant::now();
    let (mut kills, mut dups, mut max_dup, mut over_window) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for &seed in &seeds {
        let plan = Plan::generate(seed);
        match run_list(&plan) {
            Ok((k, per_kill)) => {
                kills += k;
                dups += per_kill.iter().sum::<u64>();
                max_dup = max_dup.max(per_kill.iter().copied().max().unwrap_or(0));
                over_window += per_kill.iter().filter(|&&d| d > plan.window).count();
            }
            Err(e) => failures.push(format!(
                "seed {seed} ({}, window {}, kills at {:?} rows): {e}\n  replay: PIPEMAIL_KILL_SEED={seed} cargo test --test kill_resume",
                if plan.bdat { "BDAT" } else { "DATA" },
                plan.window,
                plan.kills
            )),
        }
    }
    let line = format!(
        "kill/resume: {} lists, {kills} kills, {dups} duplicates (most per kill: {max_dup}; kills with more than one window: {over_window}), {} failing, in {:.1}s",
        seeds.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(std::io::stderr(), "{line}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
