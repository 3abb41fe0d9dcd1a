//! `pipemail check-server` and what `send` relies on (issues 10, 11, 14): `--probe-rcpt`
//! (one real message with a NOOP pipelined after its final dot), the estimates that use what
//! was found, and `--no-pipelining`, `--require-pipelining`, `--no-chunking` honoured.
//!
//! Servers: the built-in sink, a scripted server that refuses commands pipelined after the
//! dot (`tests/support/refusing.rs`), and the real ones from `tests/support` (Exim, hardened
//! Postfix, OpenSMTPD; skipped loudly when absent, a failure with PIPEMAIL_REQUIRE_INTEROP=1).

mod support;

use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use pipemail::sink::{SinkConfig, SinkHandle};
use support::mta::ScriptedMta;
use support::refusing::{AfterDot, REFUSAL, RefusingServer};
use support::{PostfixSmtpd, wait_until};

const RUN_LIMIT: Duration = Duration::from_secs(120);

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `pipemail check-server --host HOST --tls none` plus `args`, in a fresh temp dir with a
/// cleared environment.
fn check(host: &str, args: &[&str]) -> Out {
    let dir = TempDir::new().expect("tempdir");
    let mut c = assert_cmd::Command::cargo_bin("pipemail").expect("pipemail binary");
    c.env_clear();
    if let Some(p) = std::env::var_os("PATH") {
        c.env("PATH", p);
    }
    c.env("HOME", dir.path())
        .current_dir(dir.path())
        .timeout(RUN_LIMIT)
        .args(["check-server", "--host", host, "--tls", "none"])
        .args(["--helo", "client.test", "--probes", "1", "--timeout", "30s"])
        .args(args);
    let o = c.output().expect("run pipemail");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[track_caller]
fn json(out: &Out, code: i32) -> Value {
    assert_eq!(out.code, Some(code), "unexpected exit code\n{out}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"))
}

fn start_sink(cfg: SinkConfig) -> SinkHandle {
    SinkHandle::start("127.0.0.1:0".parse().expect("address"), cfg).expect("start sink")
}

fn host_of(s: &SinkHandle) -> String {
    format!("127.0.0.1:{}", s.local_addr().port())
}

// ----- the built-in sink ----------------------------------------------------------------

#[test]
fn probe_rcpt_against_the_sink_works_and_sends_one_message() {
    let sink = start_sink(SinkConfig::default());
    let out = check(
        &host_of(&sink),
        &["--json", "--probe-rcpt", "probe@example.net", "-n", "1000"],
    );
    let v = json(&out, 0);
    let x = &v["cross_message"];
    assert_eq!(x["result"], "works", "{v}");
    assert_eq!(x["probe_rcpt"], "probe@example.net");
    assert!(
        x["noop_reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("250")),
        "{v}"
    );
    assert!(
        x["message_reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("250")),
        "{v}"
    );
    let e = &v["estimate"];
    assert_eq!(e["expected_mode"], "BDAT", "{v}");
    assert_eq!(e["expected_round_trips"], 13, "1000 / window 100 + 3: {v}");
    assert_eq!(
        e["stepped_down_round_trips"], 1003,
        "BDAT, one per message: {v}"
    );
    assert_eq!(sink.stats().messages, 1, "exactly one real message");

    let out = check(&host_of(&sink), &["--probe-rcpt", "probe@example.net"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("Pipelining across messages: works"),
        "{out}"
    );
    assert_eq!(sink.stats().messages, 2);
}

#[test]
fn without_probe_rcpt_cross_message_is_not_tested_and_both_estimates_are_given() {
    let sink = start_sink(SinkConfig::default());
    let v = json(&check(&host_of(&sink), &["--json", "--no-chunking"]), 0);
    assert_eq!(v["cross_message"]["result"], "not_tested", "{v}");
    assert_eq!(v["cross_message"]["probe_rcpt"], Value::Null);
    let e = &v["estimate"];
    assert_eq!(e["pipelined_round_trips"], 10_003, "{v}");
    assert_eq!(
        e["stepped_down_round_trips"], 20_003,
        "DATA: two per message: {v}"
    );
    assert_eq!(e["expected_mode"], Value::Null, "{v}");
    assert_eq!(e["expected_round_trips"], Value::Null, "{v}");

    let out = check(&host_of(&sink), &["--no-chunking"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .contains("Pipelining across messages: not tested"),
        "{out}"
    );
    assert!(out.stdout.contains("--probe-rcpt ADDR"), "{out}");
    let line = |head: &str| {
        out.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(head))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("pipelined ").contains(" 10,003 round trips"), "{out}");
    assert!(
        line("sync at dot ").contains(" 20,003 round trips"),
        "{out}"
    );
    assert!(line("expected ").contains("not tested"), "{out}");
    assert_eq!(sink.stats().messages, 0, "no message without --probe-rcpt");
}

#[test]
fn no_pipelining_is_honoured() {
    let sink = start_sink(SinkConfig::default());
    let v = json(
        &check(
            &host_of(&sink),
            &["--json", "--no-pipelining", "--probe-rcpt", "p@example.net"],
        ),
        0,
    );
    assert_eq!(v["pipelining"]["advertised"], true, "{v}");
    assert_eq!(v["pipelining"]["used"], false, "{v}");
    assert_eq!(v["pipelining"]["probe_passed"], false, "not probed: {v}");
    assert!(
        v["pipelining"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--no-pipelining")),
        "{v}"
    );
    assert_eq!(v["chunking"], false, "BDAT needs pipelining: {v}");
    assert_eq!(v["chunking_offered"], true, "{v}");
    assert_eq!(v["cross_message"]["result"], "not_tested", "{v}");
    assert_eq!(v["estimate"]["expected_mode"], "lock-step", "{v}");
    assert_eq!(v["estimate"]["expected_round_trips"], 40_003, "{v}");
    assert_eq!(sink.stats().messages, 0, "nothing sent lock-step");
}

#[test]
fn no_chunking_is_honoured() {
    let sink = start_sink(SinkConfig::default());
    let v = json(&check(&host_of(&sink), &["--json", "--no-chunking"]), 0);
    assert_eq!(v["chunking"], false, "{v}");
    assert_eq!(v["chunking_offered"], true, "{v}");
    assert_eq!(v["estimate"]["bdat_round_trips"], Value::Null, "{v}");
    let out = check(&host_of(&sink), &["--no-chunking"]);
    assert!(
        out.stdout
            .contains("Chunking      offered, not used (--no-chunking)"),
        "{out}"
    );
}

#[test]
fn require_pipelining_exits_69_after_the_report() {
    let sink = start_sink(SinkConfig {
        pipelining: false,
        ..SinkConfig::default()
    });
    let out = check(&host_of(&sink), &["--json", "--require-pipelining"]);
    let v = json(&out, 69);
    assert_eq!(v["pipelining"]["advertised"], false, "{v}");
    assert!(
        out.stderr
            .contains("does not advertise PIPELINING (--require-pipelining)"),
        "{out}"
    );
    // With PIPELINING advertised it is satisfied.
    let sink = start_sink(SinkConfig::default());
    json(
        &check(&host_of(&sink), &["--json", "--require-pipelining"]),
        0,
    );
}

#[test]
fn a_bad_probe_address_is_a_usage_error() {
    let out = check("127.0.0.1:9", &["--probe-rcpt", "not an address"]);
    assert_eq!(out.code, Some(64), "{out}");
    assert!(out.stderr.contains("--probe-rcpt"), "{out}");
    let out = check("127.0.0.1:9", &["--probe-from", "a@example.net"]);
    assert_eq!(out.code, Some(64), "--probe-from needs --probe-rcpt\n{out}");
}

#[test]
fn help_lists_the_probe_and_the_pipelining_flags() {
    let out = check("127.0.0.1:9", &["--help"]);
    assert_eq!(out.code, Some(0), "{out}");
    for flag in [
        "--probe-rcpt",
        "--probe-from",
        "--no-pipelining",
        "--require-pipelining",
        "--no-chunking",
    ] {
        assert!(out.stdout.contains(flag), "{flag} missing\n{out}");
    }
}

// ----- a server that refuses commands after the dot --------------------------------------

#[test]
fn a_server_refusing_commands_after_the_dot_is_reported_with_its_reply() {
    let server = RefusingServer::start(AfterDot::Refuse);
    let host = server.addr().to_string();
    let out = check(
        &host,
        &["--json", "--probe-rcpt", "probe@example.net", "-n", "1000"],
    );
    let v = json(&out, 0);
    let x = &v["cross_message"];
    assert_eq!(x["result"], "refused", "{v}");
    assert_eq!(x["noop_reply"], REFUSAL, "{v}");
    assert_eq!(x["message_reply"], "250 2.0.0 Ok: queued", "{v}");
    let e = &v["estimate"];
    assert_eq!(e["expected_mode"], "pipelined, sync at end of data", "{v}");
    assert_eq!(e["expected_round_trips"], 2003, "{v}");
    assert_eq!(server.refused(), ["NOOP"]);
    let stored = server.messages();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].to, ["probe@example.net"]);
    assert_eq!(stored[0].from, "probe@example.net");
    let text = String::from_utf8_lossy(&stored[0].data);
    assert!(
        text.contains("Subject: pipemail check-server probe\r\n"),
        "{text}"
    );

    let out = check(&host, &["--probe-rcpt", "probe@example.net"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .contains("Pipelining across messages: refused (503 after end of data)"),
        "{out}"
    );
    assert!(out.stdout.contains(REFUSAL), "{out}");
}

#[test]
fn a_server_closing_after_the_dot_counts_as_refusing() {
    let server = RefusingServer::start(AfterDot::Close);
    let out = check(
        &server.addr().to_string(),
        &["--json", "--probe-rcpt", "probe@example.net"],
    );
    let v = json(&out, 0);
    assert_eq!(v["cross_message"]["result"], "refused", "{v}");
    assert_eq!(v["cross_message"]["noop_reply"], Value::Null, "{v}");
    assert!(
        v["cross_message"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("closed the connection")),
        "{v}"
    );
    assert_eq!(server.messages().len(), 1);
}

/// The built-in sink hardened both ways (`pipemail sink --refuse-after-dot`, and dropping
/// the connection): `check-server` reports the refusal, the estimate for a run that syncs at
/// the end of data, and sends exactly one message.
#[test]
fn the_sink_refusing_or_dropping_after_the_dot_is_reported_refused() {
    for after_dot in [
        pipemail::sink::AfterDot::Refuse,
        pipemail::sink::AfterDot::Drop,
    ] {
        let sink = start_sink(SinkConfig {
            after_dot,
            ..SinkConfig::default()
        });
        let out = check(
            &host_of(&sink),
            &["--json", "--probe-rcpt", "probe@example.net", "-n", "1000"],
        );
        let v = json(&out, 0);
        let x = &v["cross_message"];
        assert_eq!(x["result"], "refused", "{after_dot:?}: {v}");
        assert!(
            x["message_reply"]
                .as_str()
                .is_some_and(|r| r.starts_with("250")),
            "{after_dot:?}: {v}"
        );
        assert_eq!(
            v["estimate"]["expected_round_trips"], 1003,
            "BDAT synced at end of data, one per message: {after_dot:?}: {v}"
        );
        assert_eq!(sink.stats().messages, 1, "{after_dot:?}: one real message");
    }
}

// ----- real servers ------------------------------------------------------------------------

fn maildir_count(mta: &ScriptedMta, n: usize) -> usize {
    wait_until(Duration::from_secs(30), || {
        let m = mta.messages();
        (m.len() >= n).then_some(m.len())
    })
    .unwrap_or_else(|| mta.messages().len())
}

#[test]
fn exim_takes_commands_after_the_dot() {
    let Some(exim) = ScriptedMta::exim() else {
        return;
    };
    let v = json(
        &check(
            &exim.addr().to_string(),
            &["--json", "--probe-rcpt", "probe@example.net"],
        ),
        0,
    );
    assert_eq!(v["cross_message"]["result"], "works", "{v}");
    assert_eq!(v["cross_message"]["noop_reply"], "250 OK", "{v}");
    assert_eq!(v["chunking"], true, "{v}");
    assert_eq!(v["estimate"]["expected_mode"], "BDAT", "{v}");
    assert_eq!(maildir_count(&exim, 1), 1, "log:\n{}", exim.log());
}

#[test]
fn hardened_postfix_takes_commands_after_the_dot() {
    let Some(pf) = PostfixSmtpd::start_hardened() else {
        return;
    };
    let v = json(
        &check(
            &pf.addr().to_string(),
            &["--json", "--probe-rcpt", "probe@example.net"],
        ),
        0,
    );
    assert_eq!(v["pipelining"]["probe_passed"], true, "{v}");
    assert_eq!(v["cross_message"]["result"], "works", "{v}");
    assert_eq!(v["cross_message"]["noop_reply"], "250 2.0.0 Ok", "{v}");
    let n = pf.wait_for_messages(1, Duration::from_secs(30)).len();
    assert_eq!(n, 1, "maillog:\n{}", pf.maillog());
}

#[test]
fn opensmtpd_without_pipelining_is_not_tested_and_sends_nothing() {
    let Some(smtpd) = ScriptedMta::opensmtpd() else {
        return;
    };
    let v = json(
        &check(
            &smtpd.addr().to_string(),
            &["--json", "--probe-rcpt", "probe@example.net"],
        ),
        1,
    );
    assert_eq!(v["pipelining"]["advertised"], false, "{v}");
    assert_eq!(v["cross_message"]["result"], "not_tested", "{v}");
    assert_eq!(v["estimate"]["expected_mode"], "lock-step", "{v}");
    assert!(smtpd.messages().is_empty(), "no message without pipelining");
}
