//! Shared fixtures for the tests that run the `pipemail` binary: a temp-dir fixture, running
//! a command with captured output, reading a report, the built-in sink, a seeded PRNG and a
//! self-signed certificate. Use it with `mod util;` (or `#[path = "../util/mod.rs"]`).
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::fmt;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pipemail::report::ReportRow;
use pipemail::sink::{SinkConfig, SinkHandle};

/// Longest any single `pipemail` run may take before the test fails (a hang, not slowness).
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The report columns, in order (public API).
pub const COLUMNS: [&str; 10] = [
    "row",
    "email",
    "status",
    "smtp_code",
    "enhanced_code",
    "response",
    "stage",
    "attempts",
    "message_id",
    "finished_at",
];

/// A list and template whose rendering the tests know byte for byte.
pub const SIMPLE_LIST: &str =
    "email,name\r\nann@x.example,Ann\r\nbob@y.example,Bob\r\ncy@x.example,Cy\r\n";
/// See [`SIMPLE_LIST`].
pub const SIMPLE_TEMPLATE: &str = "From: Sender <sender@example.org>\n\
To: {{ name }} <{{ email }}>\n\
Subject: Hello {{ name }}\n\
\n\
Dear {{ name }},\n\
your address is {{ email }}.\n";

// ----- fixture -------------------------------------------------------------------------------

/// A unique temporary directory that each `pipemail` run uses as its working directory.
pub struct Fx {
    pub dir: tempfile::TempDir,
}

impl Fx {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("pipemail-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).expect("write fixture file");
        p
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// `pipemail` with a cleared environment (PATH kept, HOME pointing into the temp dir).
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("pipemail").expect("pipemail binary");
        c.env_clear();
        if let Some(p) = std::env::var_os("PATH") {
            c.env("PATH", p);
        }
        c.env("HOME", self.dir.path()).current_dir(self.dir.path());
        c.timeout(RUN_LIMIT);
        c
    }

    /// `pipemail send` to a real MTA at `addr` (Postfix, Exim...): no TLS, `--helo
    /// client.test`, `--quiet`, a 60 s timeout.
    pub fn send_to_mta(&self, addr: SocketAddr) -> assert_cmd::Command {
        let mut c = self.cmd();
        c.args(["send", "--host", &addr.to_string(), "--tls", "none"])
            .args(["--helo", "client.test", "--quiet", "--timeout", "60s"]);
        c
    }

    /// Like [`Fx::cmd`], as a `std::process::Command` (for runs the test kills).
    pub fn cmd_std(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pipemail"));
        c.env_clear();
        if let Some(p) = std::env::var_os("PATH") {
            c.env("PATH", p);
        }
        c.env("HOME", self.dir.path()).current_dir(self.dir.path());
        c
    }
}

// ----- running -------------------------------------------------------------------------------

/// What a finished run left.
pub struct Out {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

/// Runs an `assert_cmd` command (its own timeout applies) and captures everything.
pub fn run(mut c: assert_cmd::Command) -> Out {
    let started = Instant::now();
    let o = c.output().expect("run pipemail");
    Out {
        code: o.status.code(),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Runs `cmd` with stdout and stderr captured, killing it past `limit`. pipemail's
/// variables from the test's environment are cleared unless `cmd` sets them.
pub fn run_std(mut cmd: Command, limit: Duration) -> Out {
    for var in ["PIPEMAIL_HOST", "PIPEMAIL_USER", "PIPEMAIL_PASSWORD"] {
        if !cmd.get_envs().any(|(k, _)| k == var) {
            cmd.env_remove(var);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn pipemail");
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pipemail did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    Out {
        code: status.code(),
        stdout: t_out.join().unwrap_or_default(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned(),
        elapsed,
    }
}

/// `--list LIST --template TEMPLATE --report REPORT`.
pub fn list_args<'a>(list: &'a str, template: &'a str, report: &'a str) -> [&'a str; 6] {
    ["--list", list, "--template", template, "--report", report]
}

#[track_caller]
pub fn expect_code(out: &Out, code: i32) {
    assert_eq!(out.code, Some(code), "unexpected exit code\n{out}");
}

// ----- reports -------------------------------------------------------------------------------

/// A CSV report as typed rows, or why not.
pub fn try_read_report(path: &Path) -> Result<Vec<ReportRow>, String> {
    let mut rdr = csv::Reader::from_path(path).map_err(|e| format!("report: {e}"))?;
    rdr.deserialize()
        .collect::<Result<Vec<ReportRow>, _>>()
        .map_err(|e| format!("report: {e}"))
}

/// A CSV report as typed rows; panics naming the file.
pub fn read_report(path: &Path) -> Vec<ReportRow> {
    try_read_report(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ----- the built-in sink ---------------------------------------------------------------------

/// The built-in sink on `127.0.0.1:0`, keeping messages in memory.
pub fn sink_with(cfg: SinkConfig) -> SinkHandle {
    SinkHandle::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SinkConfig {
            keep_in_memory: true,
            ..cfg
        },
    )
    .expect("start sink")
}

/// [`sink_with`] the defaults.
pub fn mem_sink() -> SinkHandle {
    sink_with(SinkConfig::default())
}

/// `127.0.0.1:PORT` of a sink.
pub fn host_of(s: &SinkHandle) -> String {
    format!("127.0.0.1:{}", s.local_addr().port())
}

/// Parsed `CODE:GLOB` reject rules.
pub fn rules(r: &[&str]) -> Vec<pipemail::sink::RejectRule> {
    r.iter().map(|s| s.parse().expect("reject rule")).collect()
}

// ----- PRNG ----------------------------------------------------------------------------------

/// SplitMix64: tiny, fast, and good enough to pick test cases.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

// ----- TLS -----------------------------------------------------------------------------------

/// A self-signed certificate for localhost / 127.0.0.1 made with the openssl CLI in `dir`
/// (`cert.pem`, `key.pem`), or `Err(why)` without openssl (the caller skips or fails).
pub fn self_signed(dir: &Path) -> Result<native_tls::Identity, String> {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(pipemail::sink::load_identity(
            &dir.join("cert.pem"),
            &dir.join("key.pem"),
        )
        .expect("load identity")),
        other => Err(format!(
            "cannot make a test certificate with openssl ({other:?}; apt-get install openssl)"
        )),
    }
}
