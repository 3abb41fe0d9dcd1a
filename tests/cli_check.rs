//! Binary tests of `pipemail check-server`, `sink`, `demo`, `completions`, `man` and `--help`,
//! spawned via `assert_cmd` in a fresh temporary directory with a cleared environment.
//!
//! Servers: the in-process sink, the scripted fake server (exact bytes), and Postfix's
//! `smtp-sink` (skipped loudly when absent; a failure with `PIPEMAIL_REQUIRE_INTEROP=1`).
//! Every wait is bounded; nothing depends on how long anything took.

mod fake_smtp;
mod support;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use fake_smtp::{FakeSmtp, Step, expect, send};
use pipemail::sink::{SinkConfig, SinkHandle};

const RUN_LIMIT: Duration = Duration::from_secs(120);
const WAIT_LIMIT: Duration = Duration::from_secs(30);

struct Fx {
    dir: TempDir,
}

impl Fx {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("pipemail-cli-check-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
        std::fs::write(self.path(name), contents).expect("write fixture file");
    }

    /// `pipemail` with a cleared environment (PATH kept, HOME pointing into the temp dir).
    fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("pipemail").expect("pipemail binary");
        c.env_clear();
        if let Some(p) = std::env::var_os("PATH") {
            c.env("PATH", p);
        }
        c.env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .timeout(RUN_LIMIT);
        c
    }

    /// `pipemail check-server --host HOST --tls MODE` with one NOOP probe.
    fn check(&self, host: &str, tls: &str) -> assert_cmd::Command {
        let mut c = self.cmd();
        c.args(["check-server", "--host", host, "--tls", tls])
            .args(["--helo", "client.test", "--probes", "1"])
            .args(["--timeout", "30s", "--connect-timeout", "20s"]);
        c
    }
}

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

fn run(mut c: assert_cmd::Command) -> Out {
    let o = c.output().expect("run pipemail");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[track_caller]
fn expect_code(out: &Out, code: i32) {
    assert_eq!(out.code, Some(code), "unexpected exit code\n{out}");
}

#[track_caller]
fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"))
}

fn capabilities(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array: {v}"))
        .iter()
        .map(|c| c.as_str().expect("capability string").to_owned())
        .collect()
}

fn start_sink(cfg: SinkConfig) -> SinkHandle {
    SinkHandle::start("127.0.0.1:0".parse().expect("address"), cfg).expect("start sink")
}

fn host_of(s: &SinkHandle) -> String {
    format!("127.0.0.1:{}", s.local_addr().port())
}

// ----- check-server --------------------------------------------------------------------------

#[test]
fn check_server_against_the_sink_reports_working_pipelining_and_chunking() {
    let fx = Fx::new();
    let sink = start_sink(SinkConfig::default());
    let mut c = fx.check(&host_of(&sink), "none");
    c.arg("--json");
    let out = run(c);
    expect_code(&out, 0);
    let v = json(&out);
    assert_eq!(v["pipelining"]["advertised"], true, "{v}");
    assert_eq!(v["pipelining"]["probe_passed"], true, "{v}");
    assert_eq!(v["chunking"], true, "{v}");
    assert_eq!(v["server"], host_of(&sink));
    assert_eq!(v["banner"], "220 pipemail-sink ESMTP pipemail-sink");
    assert_eq!(v["tls"], Value::Null);
    let caps = capabilities(&v, "capabilities");
    for want in ["PIPELINING", "CHUNKING", "8BITMIME", "ENHANCEDSTATUSCODES"] {
        assert!(caps.iter().any(|c| c == want), "{want} in {caps:?}");
    }
    assert!(v["size_limit"].as_u64().is_some_and(|n| n > 0), "{v}");
    let e = &v["estimate"];
    assert_eq!(e["messages"], 10_000);
    assert_eq!(e["lockstep_round_trips"], 40_003);
    assert_eq!(e["pipelined_round_trips"], 10_003);
    assert_eq!(e["bdat_round_trips"], 103, "default window 100");
    assert!(out.stderr.is_empty(), "{out}");

    // The human form says the same.
    let out = run(fx.check(&host_of(&sink), "none"));
    expect_code(&out, 0);
    assert!(out.stdout.contains("Pipelining    works"), "{out}");
    assert!(out.stdout.contains("Chunking      yes"), "{out}");
    // A probe session for each run; nothing was stored.
    assert_eq!(sink.stats().messages, 0);
}

#[test]
fn check_server_without_pipelining_exits_1() {
    let fx = Fx::new();
    let sink = start_sink(SinkConfig {
        pipelining: false,
        ..SinkConfig::default()
    });
    let mut c = fx.check(&host_of(&sink), "none");
    c.arg("--json");
    let out = run(c);
    expect_code(&out, 1);
    let v = json(&out);
    assert_eq!(v["pipelining"]["advertised"], false, "{v}");
    assert_eq!(v["pipelining"]["probe_passed"], false, "{v}");
    assert_eq!(v["chunking"], false, "BDAT needs pipelining here: {v}");
    assert_eq!(v["estimate"]["bdat_round_trips"], Value::Null);
    assert!(!capabilities(&v, "capabilities").contains(&"PIPELINING".to_owned()));
}

/// Greeting, EHLO advertising PIPELINING, and the one NOOP of `--probes 1`.
fn handshake() -> Vec<Step> {
    vec![
        send("220 fake.test ESMTP\r\n"),
        expect("EHLO client.test\r\n"),
        send("250-fake.test\r\n250 PIPELINING\r\n"),
        expect("NOOP\r\n"),
        send("250 2.0.0 Ok\r\n"),
    ]
}

const PROBE: &str = "MAIL FROM:<>\r\nRSET\r\nNOOP\r\n";

#[test]
fn check_server_detects_a_server_that_closes_during_the_pipelined_probe() {
    let fx = Fx::new();
    let mut script = handshake();
    script.extend([expect(PROBE), send("250 2.1.0 Ok\r\n"), Step::Close]);
    let fake = FakeSmtp::start(vec![script]);
    let mut c = fx.check(&fake.host(), "none");
    c.arg("--json");
    let out = run(c);
    expect_code(&out, 1);
    let v = json(&out);
    assert_eq!(v["pipelining"]["advertised"], true, "{v}");
    assert_eq!(v["pipelining"]["probe_passed"], false, "{v}");
    let detail = v["pipelining"]["detail"].as_str().expect("detail");
    assert!(detail.contains("probe failed"), "{detail}");
    let sent = fake.finish();
    assert_eq!(sent.len(), 1);
    assert!(String::from_utf8_lossy(&sent[0]).ends_with(PROBE));
}

#[test]
fn check_server_detects_wrong_replies_to_the_pipelined_probe() {
    let fx = Fx::new();
    let mut script = handshake();
    // The third reply is not the NOOP's 250: what a server that mishandles pipelining sends.
    script.extend([
        expect(PROBE),
        send("250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n500 5.5.2 Error: command not recognized\r\n"),
        expect("QUIT\r\n"),
        send("221 2.0.0 Bye\r\n"),
        Step::DrainUntilClosed,
    ]);
    let fake = FakeSmtp::start(vec![script]);
    let mut c = fx.check(&fake.host(), "none");
    c.arg("--json");
    let out = run(c);
    expect_code(&out, 1);
    let v = json(&out);
    assert_eq!(v["pipelining"]["advertised"], true, "{v}");
    assert_eq!(v["pipelining"]["probe_passed"], false, "{v}");
    let detail = v["pipelining"]["detail"].as_str().expect("detail");
    assert!(detail.contains("unexpected replies"), "{detail}");
    assert!(detail.contains("500"), "{detail}");
    fake.finish();
}

#[test]
fn check_server_exits_69_when_the_server_closes_at_once() {
    let fx = Fx::new();
    let fake = FakeSmtp::start(vec![vec![Step::Close]]);
    let mut c = fx.check(&fake.host(), "none");
    c.arg("--json");
    let out = run(c);
    expect_code(&out, 69);
    assert!(
        out.stdout.is_empty(),
        "no report for a server that never spoke\n{out}"
    );
    assert!(out.stderr.starts_with("pipemail: error: "), "{out}");
    assert!(
        out.stderr.contains(&fake.host()),
        "the error names the server\n{out}"
    );
    fake.finish();

    // Nothing listening at all: also 69.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let out = run(fx.check(&format!("127.0.0.1:{port}"), "none"));
    expect_code(&out, 69);
}

#[test]
fn check_server_against_postfix_smtp_sink() {
    let Some(sink) = support::SmtpSink::start(&[]) else {
        return;
    };
    let fx = Fx::new();
    let mut c = fx.check(&sink.addr().to_string(), "none");
    c.arg("--json");
    let out = run(c);
    expect_code(&out, 0);
    let v = json(&out);
    let caps = capabilities(&v, "capabilities");
    assert!(caps.contains(&"PIPELINING".to_owned()), "{caps:?}");
    assert!(!caps.contains(&"CHUNKING".to_owned()), "{caps:?}");
    assert_eq!(v["pipelining"]["advertised"], true, "{v}");
    assert_eq!(v["pipelining"]["probe_passed"], true, "{v}");
    assert_eq!(v["chunking"], false, "{v}");
    assert_eq!(v["estimate"]["bdat_round_trips"], Value::Null);
}

#[test]
fn check_server_over_starttls_reports_the_certificate() {
    let fx = Fx::new();
    let Some(identity) = self_signed(&fx) else {
        return;
    };
    let sink = start_sink(SinkConfig {
        tls: Some(identity),
        ..SinkConfig::default()
    });
    let mut c = fx.check(&host_of(&sink), "starttls");
    c.args(["--ca-file", "cert.pem", "--json"]);
    let out = run(c);
    expect_code(&out, 0);
    let v = json(&out);
    assert_eq!(v["tls"]["mode"], "starttls", "{v}");
    // Version and cipher come from a second handshake whose STARTTLS the engine drives.
    assert!(
        v["tls"]["version"]
            .as_str()
            .is_some_and(|s| s.starts_with("TLSv1.")),
        "{v}"
    );
    assert!(
        v["tls"]["cipher"].as_str().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    assert!(
        v["tls"]["subject"]
            .as_str()
            .is_some_and(|s| s.contains("CN=localhost")),
        "{v}"
    );
    assert!(capabilities(&v, "capabilities").contains(&"STARTTLS".to_owned()));
    let after = capabilities(&v, "capabilities_after_tls");
    assert!(!after.contains(&"STARTTLS".to_owned()), "{after:?}");
    assert!(after.contains(&"PIPELINING".to_owned()), "{after:?}");
    assert_eq!(v["pipelining"]["probe_passed"], true, "{v}");

    // Not trusted: no session.
    let out = run(fx.check(&host_of(&sink), "starttls"));
    expect_code(&out, 69);
    assert!(out.stderr.contains("certificate"), "{out}");
}

/// A self-signed certificate for localhost / 127.0.0.1, or `None` (loudly skipped; a failure
/// with PIPEMAIL_REQUIRE_INTEROP=1) without the openssl CLI.
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

// ----- sink subcommand -----------------------------------------------------------------------

/// A child process killed on drop (a failing test leaves nothing running).
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Running {
    /// Waits (bounded) for a stderr line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no line with {needle:?} ({e}); stderr: {:?}", self.stderr),
            }
        }
    }

    /// Waits (bounded) for the process to exit; returns its status and the rest of stderr.
    fn wait_exit(&mut self) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + WAIT_LIMIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit; stderr: {:?}",
                self.stderr
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(WAIT_LIMIT) {
            self.stderr.push(line);
        }
        (status, self.stderr.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn_with_stderr_lines(mut cmd: std::process::Command) -> Running {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pipemail");
    let err = child.stderr.take().expect("stderr pipe");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines: rx,
        stderr: Vec::new(),
    }
}

fn maildir_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    v.sort();
    v
}

#[test]
fn sink_subcommand_stores_in_maildir_and_prints_counts_on_ctrl_c() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nann@x.example,Ann\nno@bad.example,No\n",
    );
    fx.write(
        "t.eml",
        "From: sender@example.org\nTo: {{ email }}\nSubject: Hi {{ name }}\n\nHello {{ name }}\n.\n",
    );
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pipemail"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(fx.dir.path())
        .args(["sink", "--listen", "127.0.0.1:0", "--maildir", "md"])
        .args(["--reject", "550:*@bad.example"]);
    let mut sink = spawn_with_stderr_lines(cmd);
    let line = sink.wait_for_line("listening on ");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("address in the listening line")
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");

    let mut c = fx.cmd();
    c.args([
        "send",
        "--host",
        &addr,
        "--tls",
        "none",
        "--helo",
        "client.test",
    ])
    .args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
    ])
    .args(["--retry-delay", "10ms", "--timeout", "60s"]);
    let out = run(c);
    expect_code(&out, 1);
    let report = std::fs::read_to_string(fx.path("r.csv")).expect("report");
    let mut rd = csv::Reader::from_reader(report.as_bytes());
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!((&rows[0][1], &rows[0][2]), ("ann@x.example", "sent"));
    assert_eq!(
        (&rows[1][1], &rows[1][2], &rows[1][3]),
        ("no@bad.example", "failed", "550")
    );
    let message_id = rows[0][8].to_owned();

    let files = maildir_files(&fx.path("md/new"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(maildir_files(&fx.path("md/tmp")).is_empty());
    let data = std::fs::read(&files[0]).expect("read message");
    let text = String::from_utf8(data.clone()).expect("ASCII message");
    let date = text
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Date: "))
        .expect("Date header");
    let want = format!(
        "From: sender@example.org\r\nTo: ann@x.example\r\nSubject: Hi Ann\r\nDate: {date}\r\n\
         Message-ID: <{message_id}>\r\n\r\nHello Ann\r\n.\r\n"
    );
    assert_eq!(text, want, "the Maildir file is the message, byte for byte");

    let pid = sink.child.id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill");
    assert!(st.success());
    let (status, stderr) = sink.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    let counts = format!(
        "pipemail sink: 1 sessions, 1 messages, 1 recipients (1 rejected), {} bytes",
        data.len()
    );
    assert!(stderr.contains(&counts), "want {counts:?} in {stderr:?}");
}

#[test]
fn sink_subcommand_refuses_a_bad_reject_rule() {
    let fx = Fx::new();
    let mut c = fx.cmd();
    c.args(["sink", "--listen", "127.0.0.1:0", "--reject", "250:*"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("--reject"), "{out}");
}

// ----- demo ----------------------------------------------------------------------------------

#[test]
fn demo_prints_the_comparison_table() {
    let fx = Fx::new();
    let mut c = fx.cmd();
    c.args([
        "demo", "--rows", "20", "--rtt", "5ms", "--quiet", "--out", "reports",
    ]);
    let out = run(c);
    expect_code(&out, 0);
    for word in ["lock-step", "pipelined", "BDAT", "speed-up", "round trips"] {
        assert!(out.stdout.contains(word), "{word}\n{out}");
    }
    assert!(
        out.stdout
            .contains("The sink received 57 messages in 3 sessions"),
        "19 messages per mode\n{out}"
    );
    assert!(
        !out.stderr.contains(['\r', '\x1b']),
        "--quiet: no bars\n{out}"
    );
    for file in ["demo-lockstep.csv", "demo-pipelined.csv", "demo-bdat.csv"] {
        let text = std::fs::read_to_string(fx.path("reports").join(file)).expect(file);
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.expect("row")).collect();
        assert_eq!(rows.len(), 20, "{file}");
        let sent = rows.iter().filter(|r| &r[2] == "sent").count();
        let failed: Vec<&csv::StringRecord> = rows.iter().filter(|r| &r[2] == "failed").collect();
        assert_eq!(sent, 19, "{file}");
        assert_eq!(failed.len(), 1, "{file}");
        assert_eq!(&failed[0][6], "input", "the sample's bad address: {file}");
    }
}

// ----- completions, man, help ----------------------------------------------------------------

#[test]
fn completions_and_man_page_are_printed() {
    let fx = Fx::new();
    for shell in ["bash", "zsh", "fish"] {
        let mut c = fx.cmd();
        c.args(["completions", shell]);
        let out = run(c);
        expect_code(&out, 0);
        for word in ["pipemail", "check-server", "require-pipelining"] {
            assert!(out.stdout.contains(word), "{shell}: {word}\n{out}");
        }
    }
    let mut c = fx.cmd();
    c.args(["completions", "tcsh-but-not-really"]);
    expect_code(&run(c), 64);

    let mut c = fx.cmd();
    c.arg("man");
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stdout.contains(".TH pipemail"), "{out}");
    assert!(out.stdout.contains("PIPELINING"), "{out}");
}

const EXIT_LINES: [&str; 8] = [
    "0   every row sent or skipped",
    "1   run completed, some rows failed, deferred or unknown",
    "64  usage error",
    "65  bad list or template data",
    "66  an input file is missing",
    "69  no SMTP session could be established",
    "74  the report could not be written",
    "75  nothing delivered and every failure temporary",
];

#[test]
fn help_lists_the_exit_codes() {
    let fx = Fx::new();
    for args in [
        &["--help"][..],
        &["send", "--help"][..],
        &["help", "send"][..],
    ] {
        let mut c = fx.cmd();
        c.args(args);
        let out = run(c);
        expect_code(&out, 0);
        assert!(
            out.stdout.contains("Exit codes (sysexits.h):"),
            "{args:?}\n{out}"
        );
        for line in EXIT_LINES {
            assert!(out.stdout.contains(line), "{args:?}: {line}\n{out}");
        }
        assert!(out.stderr.is_empty(), "{out}");
    }
    let mut c = fx.cmd();
    c.arg("--version");
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stdout.starts_with("pipemail "), "{out}");
}
