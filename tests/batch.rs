//! `pipemail send --batch-recipients N` (issue 15), the binary against the built-in sink:
//! a template that uses the row is refused before connecting (exit 64), and a run killed
//! with SIGKILL in the middle of a batch is finished by `--resume` with every row reported
//! once `sent`, every recipient stored, and a recipient stored twice only if it was in flight
//! at the kill (journaled, no report row): at most `--window` transactions of N rows.

mod util;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pipemail::report::Status;
use pipemail::sink::{Fault, FaultPlan, SinkConfig, SinkHandle};
use util::{Fx, expect_code, list_args, run};

const ANNOUNCEMENT: &str = "From: News <news@example.org>\n\
To: undisclosed-recipients:;\n\
Subject: The same for everyone\n\
\n\
Hello,\n\
.dot line\n";

const ROWS: u64 = 120;
const BATCH: u64 = 10;
const WINDOW: u64 = 4;
const WAIT: Duration = Duration::from_secs(60);

fn list(fx: &Fx) {
    let mut s = String::from("email,name\n");
    for i in 1..=ROWS {
        let _ = writeln!(s, "b{i}@example.net,B{i}");
    }
    fx.write("list.csv", s);
}

#[test]
fn a_template_with_per_row_placeholders_cannot_batch() {
    let fx = Fx::new();
    list(&fx);
    fx.write(
        "t.eml",
        "From: a@example.org\nTo: {{ email }}\nSubject: x\n\nHi {{ name }}\n",
    );
    let mut c = fx.cmd();
    // Nothing listens on this port: the check comes before any connection.
    c.args(["send", "--host", "127.0.0.1:9", "--tls", "none"])
        .args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--batch-recipients", "100"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(
        out.stderr.contains("per-row placeholders") && out.stderr.contains("{{ email }}"),
        "{out}"
    );
    let mut c = fx.cmd();
    c.args(["send", "--host", "127.0.0.1:9", "--tls", "none"])
        .args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--batch-recipients", "1001"]);
    expect_code(&run(c), 64); // out of range
}

fn spawn(fx: &Fx, sink: SocketAddr, bdat: bool, resume: bool, report: &str) -> Child {
    let mut cmd = fx.cmd_std();
    cmd.arg("send")
        .arg("--host")
        .arg(sink.to_string())
        .args(["--tls", "none", "--helo", "batch.test", "--quiet"])
        .args(["--retries", "3", "--retry-delay", "1ms", "--timeout", "30s"])
        .args(["--window", &WINDOW.to_string()])
        .args(["--batch-recipients", &BATCH.to_string()])
        .args(list_args("list.csv", "t.eml", report))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if resume {
        cmd.args(["--resume", "r.csv"]);
    }
    if !bdat {
        cmd.arg("--no-chunking");
    }
    cmd.spawn().expect("spawn pipemail")
}

fn report_rows(fx: &Fx) -> usize {
    std::fs::read(fx.path("r.csv"))
        .map(|b| b.iter().filter(|&&c| c == b'\n').count().saturating_sub(1))
        .unwrap_or(0)
}

/// Journaled rows with no complete report row, read after the kill.
fn in_flight(fx: &Fx) -> BTreeSet<u64> {
    let text = std::fs::read_to_string(fx.path("r.csv")).unwrap_or_default();
    let reported: BTreeSet<u64> = text
        .lines()
        .skip(1)
        .filter(|l| l.ends_with('Z'))
        .filter_map(|l| l.split(',').next().and_then(|n| n.parse().ok()))
        .collect();
    let journal = std::fs::read_to_string(fx.path("r.csv.journal")).unwrap_or_default();
    journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("row").and_then(serde_json::Value::as_u64))
        .filter(|r| !reported.contains(r))
        .collect()
}

#[test]
fn killed_in_the_middle_of_a_batch_resumes_without_loss() {
    let mut worst = 0;
    let mut mid_flight = 0;
    // Kill points: rows arrive ten at a time, one write each. The first two are timing's
    // choice (the kill may land between transactions); the last two are deterministic: the
    // sink stalls on the end of the third transaction (`Fault::Stall`: no reply, nothing
    // stored from there on), so the run is killed with that transaction and any behind it
    // journaled and unanswered. Units: EHLO is 0, then MAIL, ten RCPTs and `BDAT … LAST`
    // (12 units) or DATA and its dot (13 units) per transaction.
    for (kill_at, bdat, stall) in [
        (15, false, None),
        (37, true, None),
        (20, false, Some(1 + 2 * 13 + 12)),
        (20, true, Some(1 + 2 * 12 + 11)),
    ] {
        let sink = SinkHandle::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SinkConfig {
                keep_in_memory: true,
                latency: Duration::from_millis(20),
                faults: stall.map(|command| FaultPlan {
                    sessions: vec![vec![Fault::Stall { command }]],
                }),
                ..SinkConfig::default()
            },
        )
        .expect("sink");
        let fx = Fx::new();
        list(&fx);
        fx.write("t.eml", ANNOUNCEMENT);
        let mut child = spawn(&fx, sink.local_addr(), bdat, false, "r.csv");
        let deadline = Instant::now() + WAIT;
        let mut finished = false;
        while report_rows(&fx) < kill_at || (stall.is_some() && in_flight(&fx).is_empty()) {
            if child.try_wait().expect("try_wait").is_some() {
                finished = true;
                break;
            }
            assert!(Instant::now() < deadline, "report never reached {kill_at}");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            stall.is_none() || !finished,
            "kill at {kill_at}: the run ended although the sink stalled"
        );
        let flight = if finished {
            BTreeSet::new()
        } else {
            child.kill().expect("kill");
            let _ = child.wait();
            in_flight(&fx)
        };
        let _ = child.wait();
        assert!(
            stall.is_none() || !flight.is_empty(),
            "kill at {kill_at}: the sink stalled but nothing was in flight"
        );
        mid_flight += u32::from(!flight.is_empty());
        let mut resumed = spawn(&fx, sink.local_addr(), bdat, true, "r2.csv");
        let deadline = Instant::now() + WAIT;
        let code = loop {
            if let Some(st) = resumed.try_wait().expect("try_wait") {
                break st.code();
            }
            if Instant::now() > deadline {
                let _ = resumed.kill();
                panic!("the resumed run hung");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(code, Some(0), "kill at {kill_at}");
        let stored = sink.messages();
        drop(sink);
        let report = util::read_report(&fx.path("r2.csv"));
        let rows: BTreeSet<u64> = report.iter().map(|r| r.row).collect();
        assert_eq!(rows.len() as u64, ROWS, "each row once");
        assert_eq!(report.len() as u64, ROWS, "each row once");
        assert!(
            report.iter().all(|r| r.status == Status::Sent),
            "{report:?}"
        );
        let mut copies: HashMap<String, u64> = HashMap::new();
        for m in &stored {
            assert!(m.rcpts.len() as u64 <= BATCH);
            assert!(String::from_utf8_lossy(&m.data).contains("\n.dot line"));
            for r in &m.rcpts {
                *copies.entry(r.clone()).or_default() += 1;
            }
        }
        let mut dups = 0;
        for row in 1..=ROWS {
            let n = copies
                .get(&format!("b{row}@example.net"))
                .copied()
                .unwrap_or(0);
            assert!(n >= 1, "kill at {kill_at}: row {row} never stored");
            if n > 1 {
                assert!(
                    flight.contains(&row),
                    "kill at {kill_at}: row {row} stored {n} times, not in flight {flight:?}"
                );
                dups += n - 1;
            }
        }
        assert!(
            dups <= WINDOW * BATCH,
            "kill at {kill_at}: {dups} duplicates, over {WINDOW} transactions of {BATCH}"
        );
        worst = worst.max(dups);
    }
    assert!(
        mid_flight > 0,
        "no kill landed while a transaction was in flight"
    );
    eprintln!(
        "most duplicates after one kill: {worst} (bound {})",
        WINDOW * BATCH
    );
}
