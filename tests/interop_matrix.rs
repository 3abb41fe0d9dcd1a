//! Interop matrix (issue #7): `pipemail send` delivers 200 messages with mixed recipients to
//! each real server from `tests/support`, and the report and the stored messages are checked.
//!
//! | server                  | what it offers                         | pipemail mode          |
//! |-------------------------|----------------------------------------|------------------------|
//! | Postfix smtpd           | PIPELINING, CHUNKING, STARTTLS, 8BITMIME | BDAT over STARTTLS   |
//! | Postfix smtpd           | same                                   | DATA (`--no-chunking`) |
//! | Postfix smtp-sink       | PIPELINING, no CHUNKING, stores nothing | pipelined DATA        |
//! | aiosmtpd                | no PIPELINING, no CHUNKING              | lock-step DATA        |
//! | Postfix smtpd hardened  | as smtpd, smuggling-hardened (issue 11) | BDAT, and DATA        |
//! | Exim 4.96               | PIPELINING, CHUNKING, 8BITMIME          | BDAT, and DATA        |
//! | OpenSMTPD 6.8           | no PIPELINING, no CHUNKING              | lock-step DATA        |
//!
//! Recipients: `@example.net` is accepted; a local part starting with `defer` gets 450 (Exim:
//! 451), one starting with `reject` 550 (all but smtp-sink, which accepts everyone), and
//! another domain is refused by the real MTAs (Postfix 554 relay denied, Exim 550 relay
//! denied, OpenSMTPD 550 invalid recipient; aiosmtpd accepts it). With `--retries 0` a 4xx
//! is reported `deferred`. Where the server stores messages (a Maildir, aiosmtpd's
//! directory) every `sent` row's message must be there exactly once, byte for byte (the MTAs:
//! after stripping the trace fields they prepend, compared with [`support::crlf_to_lf`] of
//! what was rendered), and nothing else.
//!
//! After-dot pipelining (issue 11): pipemail sends the next envelope in the same write as the
//! end-of-data dot. Some servers hardened against SMTP smuggling answer every such command
//! with 503; the engine must then step down, so no row may fail with a pipelining complaint
//! ([`check_report`] checks every row's server text). Measured here (2026-12-02), none of the
//! real servers refuses it: Exim 4.96 and hardened Postfix 3.7 accept commands after the dot
//! in DATA and BDAT mode, and OpenSMTPD does not offer PIPELINING at all (a client that
//! pipelines anyway gets `500 5.5.1 Invalid command: Pipelining not supported` and is
//! disconnected). The refusing server is scripted in `tests/cli_check.rs`.
//!
//! Each case prints one table line (server, mode, messages, sent/failed/deferred, round trips
//! per message from the summary line's engine counters) to stderr and appends it to
//! `$CARGO_TARGET_TMPDIR/interop-matrix.txt`; `cargo test --test interop_matrix --
//! --nocapture --test-threads 1` shows the table (README, "Interop matrix").
//!
//! Skips follow `tests/support`: a server that is not installed is a loud `SKIPPED` line, or
//! a failure with `PIPEMAIL_REQUIRE_INTEROP=1`. Exim and OpenSMTPD cannot be installed next to
//! Postfix (they all provide `mail-transport-agent`): `scripts/interop-install.sh` unpacks
//! them into private roots (`.ci/run` runs it).

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pipemail::report::{ReportRow, Status};
use support::mta::{ScriptedMta, strip_received};
use support::refusing::{AfterDot, RefusingServer};
use support::{AioSmtpd, PostfixSmtpd, SinkProcess, SmtpSink, crlf_to_lf, strip_delivery_headers};

const ROWS: u64 = 200;
const WAIT: Duration = Duration::from_secs(90);

/// What the row's recipient is, by row number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Defer,
    Reject,
    OtherDomain,
}

fn kind(row: u64) -> Kind {
    match row % 10 {
        3 => Kind::Defer,
        7 => Kind::Reject,
        _ if row.is_multiple_of(25) => Kind::OtherDomain,
        _ => Kind::Normal,
    }
}

fn email(row: u64) -> String {
    match kind(row) {
        Kind::Normal => format!("user{row}@example.net"),
        Kind::Defer => format!("defer{row}@example.net"),
        Kind::Reject => format!("reject{row}@example.net"),
        Kind::OtherDomain => format!("user{row}@elsewhere.example"),
    }
}

const TEMPLATE: &str = "From: Interop <sender@example.org>\n\
To: <{{ email }}>\n\
Subject: interop row {{ id }}\n\
Date: Thu, 01 Jan 2026 00:00:00 +0000\n\
Message-ID: <row{{ id }}@interop.test>\n\
X-Row: {{ id }}\n\
MIME-Version: 1.0\n\
Content-Type: text/plain; charset=utf-8\n\
Content-Transfer-Encoding: 8bit\n\
\n\
Hello row {{ id }}, caf\u{e9} \u{2014} 8-bit.\n\
.a leading dot\n\
.\n\
..two dots\n\
end of {{ email }}\n";

/// The rendered message for `row`, as pipemail sends it (CRLF line ends).
fn rendered(row: u64) -> Vec<u8> {
    TEMPLATE
        .replace("{{ email }}", &email(row))
        .replace("{{ id }}", &row.to_string())
        .replace('\n', "\r\n")
        .into_bytes()
}

/// The status each server gives a row's recipient.
#[derive(Debug, Clone, Copy)]
enum Policy {
    /// Postfix smtpd, Exim, OpenSMTPD: other domains refused (relay denied).
    Postfix,
    /// aiosmtpd: every domain accepted.
    Aiosmtpd,
    /// smtp-sink: everything accepted.
    AcceptAll,
}

fn expected_status(policy: Policy, row: u64) -> Status {
    match (policy, kind(row)) {
        (Policy::AcceptAll, _) | (_, Kind::Normal) => Status::Sent,
        (_, Kind::Defer) => Status::Deferred,
        (_, Kind::Reject) => Status::Failed,
        (Policy::Postfix, Kind::OtherDomain) => Status::Failed,
        (Policy::Aiosmtpd, Kind::OtherDomain) => Status::Sent,
    }
}

struct Run {
    code: Option<i32>,
    stderr: String,
    report: Vec<ReportRow>,
    elapsed: Duration,
}

impl Run {
    /// Round trips the run used, from the summary line's engine counters
    /// ("N round trips instead of M"); `None` when the line is missing.
    fn round_trips(&self) -> Option<u64> {
        let line = self.stderr.lines().rev().find(|l| l.contains(" rows: "))?;
        let head = line.split(" round trips instead of ").next()?;
        let n = head.rsplit([' ', ';']).next()?;
        n.replace(',', "").parse().ok()
    }
}

fn send(addr: SocketAddr, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut list = String::from("email,id\n");
    for row in 1..=ROWS {
        let _ = writeln!(list, "{},{row}", email(row));
    }
    std::fs::write(dir.path().join("list.csv"), list).expect("list");
    std::fs::write(dir.path().join("t.eml"), TEMPLATE).expect("template");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipemail"));
    cmd.arg("send")
        .arg("--host")
        .arg(addr.to_string())
        .args(["--helo", "interop.test", "--connections", "2"])
        .args(["--retries", "0", "--timeout", "30s"])
        .arg("--list")
        .arg(dir.path().join("list.csv"))
        .arg("--template")
        .arg(dir.path().join("t.eml"))
        .arg("--report")
        .arg(dir.path().join("r.csv"))
        .args(args)
        .env_remove("PIPEMAIL_HOST")
        .env_remove("PIPEMAIL_USER")
        .env_remove("PIPEMAIL_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn pipemail");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if started.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pipemail did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    Run {
        code: status.code(),
        stderr: reader.join().unwrap_or_default(),
        report: read_report(&dir.path().join("r.csv")),
        elapsed,
    }
}

fn read_report(path: &Path) -> Vec<ReportRow> {
    let mut rdr = csv::Reader::from_path(path).expect("report");
    rdr.deserialize().collect::<Result<_, _>>().expect("rows")
}

/// Checks the statuses; returns the number of rows per status, `sent` first.
fn check_report(name: &str, policy: Policy, run: &Run) -> [u64; 3] {
    assert_eq!(
        run.code,
        Some(1),
        "{name}: exit code; stderr:\n{}",
        run.stderr
    );
    assert_eq!(run.report.len() as u64, ROWS, "{name}: report rows");
    let mut counts = [0u64; 3];
    let mut seen = vec![false; ROWS as usize + 1];
    for r in &run.report {
        assert!(!seen[r.row as usize], "{name}: row {} twice", r.row);
        seen[r.row as usize] = true;
        assert_eq!(r.email, email(r.row));
        let want = expected_status(policy, r.row);
        assert_eq!(r.status, want, "{name}: row {} ({}): {r:?}", r.row, r.email);
        // Issue 11: a server that refuses commands pipelined after the end-of-data dot must
        // cost no row (the engine steps down), whatever the row's status.
        assert!(
            !r.response.to_ascii_lowercase().contains("pipelin"),
            "{name}: row {} failed for pipelining: {r:?}",
            r.row
        );
        match r.status {
            Status::Sent => counts[0] += 1,
            Status::Failed => counts[1] += 1,
            _ => counts[2] += 1,
        }
    }
    counts
}

fn sent_rows(run: &Run) -> Vec<u64> {
    let mut rows: Vec<u64> = run
        .report
        .iter()
        .filter(|r| r.status == Status::Sent)
        .map(|r| r.row)
        .collect();
    rows.sort_unstable();
    rows
}

fn x_row(data: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .find_map(|l| l.strip_prefix("X-Row: "))
        .and_then(|v| v.trim().parse().ok())
}

fn table_line(server: &str, mode: &str, counts: [u64; 3], stored: &str, run: &Run) -> String {
    let rt = run.round_trips().map_or_else(
        || "?".to_owned(),
        |n| format!("{:.2}", n as f64 / ROWS as f64),
    );
    let line = format!(
        "interop matrix | {server:<22} | {mode:<15} | msgs {ROWS} | sent {:>3} | failed {:>2} | deferred {:>2} | RT/msg {rt:>5} | stored {stored:<22} | {:.1}s",
        counts[0],
        counts[1],
        counts[2],
        run.elapsed.as_secs_f64()
    );
    let _ = writeln!(std::io::stderr(), "{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-matrix.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
    line
}

fn postfix(mode: &str, args: &[&str]) {
    postfix_on(PostfixSmtpd::start(), "Postfix smtpd", mode, args);
}

fn postfix_on(pf: Option<PostfixSmtpd>, server: &str, mode: &str, args: &[&str]) {
    let Some(pf) = pf else {
        return;
    };
    let ca = pf.ca_cert_path();
    let mut all: Vec<&str> = args.to_vec();
    let ca_str = ca.to_str().expect("utf-8 path").to_owned();
    if args.contains(&"starttls") {
        all.extend(["--ca-file", &ca_str]);
    }
    let run = send(pf.addr(), &all);
    let counts = check_report(server, Policy::Postfix, &run);
    let want = sent_rows(&run);
    let files = pf.wait_for_messages(want.len(), WAIT);
    check_store(&files, strip_delivery_headers, &want, &pf.maillog());
    // Postfix's Received field says `with ESMTPS` for a message that came over TLS.
    let tls = args.contains(&"starttls");
    for f in &files {
        let text = String::from_utf8_lossy(f);
        assert_eq!(text.contains("with ESMTPS"), tls, "TLS {tls}:\n{text}");
    }
    table_line(
        server,
        mode,
        counts,
        &format!("{} in Maildir, exact", files.len()),
        &run,
    );
}

/// Every `sent` row's message is in `files` exactly once, byte for byte after `strip` (the
/// server's trace fields) with LF line ends, and nothing else is.
fn check_store(files: &[Vec<u8>], strip: fn(&[u8]) -> &[u8], want: &[u64], log: &str) {
    let mut got: HashMap<u64, u32> = HashMap::new();
    for f in files {
        let body = strip(f);
        let row = x_row(body).unwrap_or_else(|| {
            panic!(
                "delivered message without X-Row:\n{}",
                String::from_utf8_lossy(f)
            )
        });
        assert_eq!(
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&crlf_to_lf(&rendered(row))),
            "row {row}: body differs"
        );
        *got.entry(row).or_default() += 1;
    }
    let mut rows: Vec<u64> = got.keys().copied().collect();
    rows.sort_unstable();
    assert_eq!(rows, want, "delivered rows; log:\n{log}");
    assert!(got.values().all(|&n| n == 1), "a row delivered twice");
}

#[test]
fn postfix_smtpd_bdat_over_starttls() {
    postfix("BDAT, STARTTLS", &["--tls", "starttls"]);
}

#[test]
fn postfix_smtpd_data() {
    postfix("DATA, plain", &["--tls", "none", "--no-chunking"]);
}

#[test]
fn postfix_smtp_sink_pipelined_data() {
    let Some(sink) = SmtpSink::start(&[]) else {
        return;
    };
    let run = send(sink.addr(), &["--tls", "none"]);
    // smtp-sink accepts every recipient: the run completes with exit 0.
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let mut run = run;
    run.code = Some(1); // check_report expects the mixed-outcome exit of the other servers
    let counts = check_report("smtp-sink", Policy::AcceptAll, &run);
    let c = sink.wait_for_messages(counts[0], WAIT);
    assert_eq!(c.mesg, counts[0], "smtp-sink counted {c:?}");
    table_line(
        "Postfix smtp-sink",
        "pipelined DATA",
        counts,
        &format!("{} counted (no store)", c.mesg),
        &run,
    );
}

#[test]
fn aiosmtpd_without_pipelining_lock_step() {
    let Some(server) = AioSmtpd::start() else {
        return;
    };
    let run = send(server.addr(), &["--tls", "none"]);
    let counts = check_report("aiosmtpd", Policy::Aiosmtpd, &run);
    let want = sent_rows(&run);
    let msgs = server.wait_for_messages(want.len(), WAIT);
    let mut got: HashMap<u64, u32> = HashMap::new();
    for m in &msgs {
        let row = x_row(&m.data).expect("X-Row header");
        assert_eq!(m.rcpt_tos, [email(row)], "row {row}: envelope");
        assert_eq!(m.mail_from, "sender@example.org");
        assert_eq!(
            String::from_utf8_lossy(&m.data),
            String::from_utf8_lossy(&rendered(row)),
            "row {row}: body differs"
        );
        *got.entry(row).or_default() += 1;
    }
    let mut rows: Vec<u64> = got.keys().copied().collect();
    rows.sort_unstable();
    assert_eq!(rows, want, "stderr: {}", server.stderr());
    assert!(got.values().all(|&n| n == 1), "a row stored twice");
    table_line(
        "aiosmtpd",
        "lock-step DATA",
        counts,
        &format!("{} stored, exact", msgs.len()),
        &run,
    );
}

// ----- issue 11: smuggling-hardened Postfix, Exim, OpenSMTPD ----------------------------

#[test]
fn postfix_hardened_bdat() {
    postfix_on(
        PostfixSmtpd::start_hardened(),
        "Postfix smtpd hardened",
        "BDAT, STARTTLS",
        &["--tls", "starttls"],
    );
}

#[test]
fn postfix_hardened_data() {
    postfix_on(
        PostfixSmtpd::start_hardened(),
        "Postfix smtpd hardened",
        "DATA, plain",
        &["--tls", "none", "--no-chunking"],
    );
}

fn scripted(mta: Option<ScriptedMta>, server: &str, mode: &str, args: &[&str]) {
    let Some(mta) = mta else {
        return;
    };
    let run = send(mta.addr(), args);
    let counts = check_report(server, Policy::Postfix, &run);
    let want = sent_rows(&run);
    let files = mta.wait_for_messages(want.len(), WAIT);
    check_store(&files, strip_received, &want, &mta.log());
    table_line(
        server,
        mode,
        counts,
        &format!("{} in Maildir, exact", files.len()),
        &run,
    );
}

/// Exim 4.96 keeps the transaction after `503 Valid RCPT command must precede BDAT` (every
/// recipient refused, the `BDAT n LAST` pipelined behind them): the next envelope's MAIL,
/// pipelined before that reply, gets `503 sender already given`, and its RCPT and BDAT then
/// join the old transaction, so the message is delivered. The engine takes that 503 for what
/// it is (the message is reported by its RCPT and BDAT replies, sent once; engine test
/// `exim_keeps_the_transaction_after_a_refused_bdat`), and from then on RSET precedes every
/// MAIL written behind an unanswered `BDAT … LAST`; the run remembers it for the host.
///
/// Two limits of Exim's end the session, and neither may cost a row (issue 11, measured
/// 2026-12-02): each `503 sender already given` is a protocol error, and past
/// `smtp_max_synprot_errors` (3) Exim adds `503 Too many syntax or protocol errors` and
/// drops the connection (row 18 of the first window, after rows 3, 7, 13 and 17 were
/// refused); and with RSET before every MAIL each refused transaction costs one non-mail
/// command (one RSET per received message is free), past `smtp_accept_max_nonmail` (10)
/// `554 Too many nonmail commands` and a drop. The first is a closing reply: the messages
/// written behind it were not executed and go back to the queue without counting an
/// attempt (engine tests in `src/engine/tests/closing.rs`). Against the second, sessions
/// to a host that keeps refused transactions risk at most 8 of them each, then quit and
/// let the campaign open a new connection. Every row ends as the server decided it.
#[test]
fn exim_bdat() {
    scripted(
        ScriptedMta::exim(),
        "Exim 4.96",
        "BDAT, plain",
        &["--tls", "none"],
    );
}

#[test]
fn exim_data() {
    scripted(
        ScriptedMta::exim(),
        "Exim 4.96",
        "DATA, plain",
        &["--tls", "none", "--no-chunking"],
    );
}

#[test]
fn opensmtpd_lock_step() {
    scripted(
        ScriptedMta::opensmtpd(),
        "OpenSMTPD 6.8",
        "lock-step DATA",
        &["--tls", "none"],
    );
}

/// The scripted server that answers every command pipelined after the end-of-data dot with
/// `503 5.5.0 Error: pipelined after end of DATA` (none of the real servers here does): no
/// row may fail for it, and every message is stored exactly once: the engine steps down to
/// syncing at the end of data and sends the refused messages again.
#[test]
fn refusing_after_the_dot_scripted() {
    let server = RefusingServer::start(AfterDot::Refuse);
    let run = send(server.addr(), &["--tls", "none"]);
    // The scripted server accepts every recipient.
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let mut run = run;
    run.code = Some(1);
    let counts = check_report("refusing server", Policy::AcceptAll, &run);
    let mut got: HashMap<u64, u32> = HashMap::new();
    for m in server.messages() {
        let row = x_row(&m.data).expect("X-Row header");
        assert_eq!(m.to, [email(row)], "row {row}: envelope");
        assert_eq!(
            String::from_utf8_lossy(&m.data),
            String::from_utf8_lossy(&rendered(row)),
            "row {row}: body differs"
        );
        *got.entry(row).or_default() += 1;
    }
    let mut rows: Vec<u64> = got.keys().copied().collect();
    rows.sort_unstable();
    assert_eq!(rows, sent_rows(&run));
    assert!(got.values().all(|&n| n == 1), "a row stored twice");
    table_line(
        "scripted, 503 after dot",
        "pipelined DATA",
        counts,
        &format!("{} stored, exact", got.len()),
        &run,
    );
}

/// A closing reply costs no attempt (issue 11): `pipemail sink` answers the fifth MAIL of
/// its first session with 421 and closes. The row of that MAIL is `deferred` by the 421
/// (`--retries 0`); the messages pipelined behind it go back to the queue unexecuted and are
/// sent on another connection: every other row `sent`, nothing `unknown`, every sent row
/// stored exactly once.
#[test]
fn a_closing_reply_mid_window_costs_no_attempt() {
    let store = tempfile::tempdir().expect("tempdir");
    let maildir = store.path().join("Maildir");
    let maildir_arg = maildir.to_str().expect("UTF-8 temp path");
    let sink = SinkProcess::spawn(["--fault", "421=13@0", "--maildir", maildir_arg]);
    let run = send(sink.addr, &["--tls", "none"]);
    drop(sink);
    assert_eq!(run.report.len() as u64, ROWS, "stderr:\n{}", run.stderr);
    let deferred: Vec<&ReportRow> = run
        .report
        .iter()
        .filter(|r| r.status != Status::Sent)
        .collect();
    assert_eq!(deferred.len(), 1, "{deferred:?}\nstderr:\n{}", run.stderr);
    assert_eq!(deferred[0].status, Status::Deferred, "{deferred:?}");
    assert_eq!(deferred[0].smtp_code, Some(421), "{deferred:?}");
    assert!(
        run.report.iter().all(|r| r.attempts == 1),
        "an attempt too many"
    );
    let mut got: HashMap<u64, u32> = HashMap::new();
    for dir in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).expect("stored message");
            let row = x_row(&data).expect("X-Row header");
            *got.entry(row).or_default() += 1;
        }
    }
    let mut rows: Vec<u64> = got.keys().copied().collect();
    rows.sort_unstable();
    assert_eq!(rows, sent_rows(&run), "stored rows");
    assert!(got.values().all(|&n| n == 1), "a row stored twice");
}
