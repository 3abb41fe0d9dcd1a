//! Real SMTP servers for pipemail's interop tests: Postfix's `smtp-sink`, a private full
//! Postfix `smtpd` instance, and an aiosmtpd server that does not offer PIPELINING.
//!
//! Use it from an integration test with `mod support;`.
//!
//! Every server is a child process (or a private Postfix instance) listening on
//! `127.0.0.1` on a port from [`free_port`], started with a bounded wait and stopped when
//! its handle is dropped. `start()` returns `None` when the server software is not
//! installed: then [`skip_or_fail`] has already either printed a loud `SKIPPED` line or,
//! when `PIPEMAIL_REQUIRE_INTEROP=1` (as in CI), panicked. A server that is installed but
//! fails to start always panics, with its log.
//!
//! The `SKIPPED` line is written straight to the process's stderr (not with `eprintln!`,
//! which libtest captures), so `cargo test` shows it even without `--nocapture`; it is also
//! appended to `$CARGO_TARGET_TMPDIR/interop-skipped.txt`.
//!
//! Overrides (mainly to simulate a machine without the servers):
//! `PIPEMAIL_SMTP_SINK` (path of smtp-sink), `PIPEMAIL_POSTFIX` (path of postfix),
//! `PIPEMAIL_OPENSSL` (path of openssl), `PIPEMAIL_PYTHON` (a python3 that can
//! `import aiosmtpd`). A path that does not exist counts as "not installed".
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Exim, OpenSMTPD and a hardened Postfix (issue 11), in their own file.
pub mod mta;
/// A scripted server that refuses commands pipelined after the end-of-data dot (issue 11).
pub mod refusing;

/// Environment variable that turns a missing server into a test failure.
pub const REQUIRE_INTEROP_ENV: &str = "PIPEMAIL_REQUIRE_INTEROP";

/// Bound on every wait for a server to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `true` when `PIPEMAIL_REQUIRE_INTEROP` is set to `1` (or `true`/`yes`).
pub fn interop_required() -> bool {
    std::env::var(REQUIRE_INTEROP_ENV)
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// Called when a server needed by a test is absent (`what` says which and how to install
/// it). Panics when [`interop_required`]; otherwise prints a loud `SKIPPED` line to stderr
/// and returns, and the caller should return early.
pub fn skip_or_fail(what: &str) {
    let test = thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    if interop_required() {
        panic!(
            "interop test {test} cannot run: {what}; {REQUIRE_INTEROP_ENV}=1 makes this a failure"
        );
    }
    let line = format!(
        "SKIPPED interop test {test}: {what}; set {REQUIRE_INTEROP_ENV}=1 to make this a failure"
    );
    // Not eprintln!: libtest captures that unless --nocapture is given.
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\n*** {line} ***");
    let _ = err.flush();
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-skipped.txt");
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "{line}");
    }
}

/// A free TCP port on 127.0.0.1, never the same one twice in this process.
///
/// Postfix's servers (smtp-sink, master) listen with `SO_REUSEPORT`, so two of them on
/// one port would both "start" and share the traffic; handing out distinct ports (and the
/// start functions checking that nothing answers on the port yet) prevents that.
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if used.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
    panic!("free_port: no unused port found");
}

/// Polls `cond` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `true` when something accepts connections on `addr` (used before starting a server).
fn port_answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// One SMTP probe: connects, reads the greeting, sends QUIT. `Ok` on a 220 greeting.
fn probe_banner(addr: SocketAddr) -> Result<String, String> {
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("220") {
        return Err(format!("unexpected greeting {line:?}"));
    }
    let _ = (&stream).write_all(b"QUIT\r\n");
    Ok(line.trim_end().to_owned())
}

fn running_as_root() -> bool {
    // Linux: "Uid:\treal\teffective\t...".
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
    {
        return line.split_whitespace().nth(2) == Some("0");
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Finds a program: the override variable if set (absent if it does not exist), else
/// `name` on PATH, else the given fallback locations.
fn find_program(override_env: &str, name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(override_env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    which(name).or_else(|| {
        fallbacks
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
    })
}

/// A base directory for server state: tmpfs when there is one (Postfix syncs queue files).
fn scratch_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir()
        && tempfile::Builder::new()
            .prefix("pipemail-probe-")
            .tempfile_in(shm)
            .is_ok();
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// `true` when a listening TCP socket on 127.0.0.1:`port` shows in /proc/net/tcp;
/// `None` when that file cannot be read (not Linux).
fn listening_in_proc(port: u16) -> Option<bool> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    Some(table.lines().skip(1).any(|l| {
        let mut cols = l.split_whitespace();
        let addr = cols.nth(1);
        let state = cols.nth(1);
        addr == Some(local.as_str()) && state == Some("0A")
    }))
}

/// Collects a child's stderr in the background, for error messages.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    if let Some(mut err) = child.stderr.take() {
        let buf = Arc::clone(&buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        });
    }
    buf
}

fn stderr_text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

// ---------------------------------------------------------------------------------------
// smtp-sink
// ---------------------------------------------------------------------------------------

/// smtp-sink's `-c` counters: `sess` sessions ended, `quit` sessions ended with QUIT,
/// `mesg` messages received (completed DATA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCounters {
    pub sess: u64,
    pub quit: u64,
    pub mesg: u64,
}

impl SinkCounters {
    /// Parses one `sess=N quit=N mesg=N` report.
    fn parse(text: &str) -> Option<Self> {
        let mut c = Self::default();
        let mut seen = 0;
        for field in text.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            let value: u64 = value.parse().ok()?;
            match key {
                "sess" => c.sess = value,
                "quit" => c.quit = value,
                "mesg" => c.mesg = value,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 3).then_some(c)
    }
}

/// Postfix's `smtp-sink` test server: `smtp-sink [-u nobody] -c EXTRA... 127.0.0.1:PORT 1000`.
///
/// It advertises PIPELINING, 8BITMIME, AUTH (faked), XCLIENT, XFORWARD,
/// ENHANCEDSTATUSCODES and DSN, but not CHUNKING, SIZE or STARTTLS, and stores nothing.
///
/// With `-c`, smtp-sink writes `sess=N quit=N mesg=N` to stdout, terminated by `\r` (no
/// newline), every time a counter changes: `mesg` when a message is complete, `sess`/`quit`
/// when a session ends. A thread reads stdout and keeps the latest report, so
/// [`SmtpSink::counters`] is current, and [`SmtpSink::wait_for`] waits for a report
/// without timing luck. smtp-sink runs under a small bash wrapper that ends it when the
/// test process closes the wrapper's stdin, on drop or by dying. Readiness is detected from the listening socket in
/// /proc/net/tcp, not by connecting, so no probe session shows in the counters (or in
/// `-n`); where /proc is missing, a probe session is made and subtracted.
pub struct SmtpSink {
    /// The wrapper around smtp-sink (see [`SINK_WRAPPER`]).
    child: Child,
    /// The wrapper's stdin: closing it (drop, or death of this process) ends smtp-sink.
    lifeline: Option<std::process::ChildStdin>,
    addr: SocketAddr,
    counters: Arc<Mutex<SinkCounters>>,
    baseline: SinkCounters,
    reader: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl SmtpSink {
    /// Starts smtp-sink on a free loopback port; `extra_args` are smtp-sink options (e.g.
    /// `["-p"]` for no PIPELINING, `["-Q", "RCPT"]`). `None` (after [`skip_or_fail`]) when
    /// smtp-sink is not installed.
    pub fn start(extra_args: &[&str]) -> Option<Self> {
        let Some(bin) = find_program("PIPEMAIL_SMTP_SINK", "smtp-sink", &["/usr/sbin/smtp-sink"])
        else {
            skip_or_fail("smtp-sink not installed (apt-get install postfix)");
            return None;
        };
        let mut last_err = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin, extra_args) {
                Ok(sink) => return Some(sink),
                Err(e) => last_err = e,
            }
        }
        panic!("smtp-sink did not start: {last_err}");
    }

    fn try_start(bin: &Path, extra_args: &[&str]) -> Result<Self, String> {
        let port = free_port();
        let addr = loopback(port);
        if port_answers(addr) {
            return Err(format!("{addr} already in use"));
        }
        let mut cmd = Command::new("bash");
        cmd.args(["-c", SINK_WRAPPER, "smtp-sink-wrapper"]).arg(bin);
        if running_as_root() {
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-c")
            .args(extra_args)
            .arg(addr.to_string())
            .arg("1000")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let lifeline = child.stdin.take();
        let stderr = collect_stderr(&mut child);
        let counters = Arc::new(Mutex::new(SinkCounters::default()));
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = {
            let counters = Arc::clone(&counters);
            thread::spawn(move || read_sink_counters(stdout, &counters))
        };
        let mut sink = Self {
            child,
            lifeline,
            addr,
            counters,
            baseline: SinkCounters::default(),
            reader: Some(reader),
            stderr,
        };

        let use_proc = listening_in_proc(port).is_some();
        let ready = wait_until(START_TIMEOUT, || {
            if let Ok(Some(status)) = sink.child.try_wait() {
                return Some(Err(format!(
                    "smtp-sink exited with {status}: {}",
                    stderr_text(&sink.stderr)
                )));
            }
            if use_proc {
                listening_in_proc(port).unwrap_or(false).then_some(Ok(()))
            } else {
                probe_banner(addr).ok().map(|_| Ok(()))
            }
        });
        match ready {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => {
                return Err(format!(
                    "smtp-sink not listening on {addr} after {START_TIMEOUT:?}: {}",
                    stderr_text(&sink.stderr)
                ));
            }
        }
        if !use_proc {
            // The probe session is reported once it has ended; count from there.
            sink.baseline = sink.wait_for(START_TIMEOUT, |c| c.sess >= 1);
            if sink.baseline.sess < 1 {
                return Err("smtp-sink -c reported nothing for the probe session".into());
            }
        }
        Ok(sink)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The latest counters smtp-sink reported (all 0 before its first report).
    pub fn counters(&self) -> SinkCounters {
        let c = *self.counters.lock().unwrap_or_else(|e| e.into_inner());
        SinkCounters {
            sess: c.sess - self.baseline.sess,
            quit: c.quit - self.baseline.quit,
            mesg: c.mesg - self.baseline.mesg,
        }
    }

    /// Waits (bounded) until `pred` holds for the counters; returns the last counters
    /// either way, so the caller's assertion shows what arrived.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&SinkCounters) -> bool,
    ) -> SinkCounters {
        wait_until(timeout, || {
            let c = self.counters();
            pred(&c).then_some(c)
        })
        .unwrap_or_else(|| self.counters())
    }

    /// Waits (bounded) until `n` messages were received; returns the counters.
    pub fn wait_for_messages(&self, n: u64, timeout: Duration) -> SinkCounters {
        self.wait_for(timeout, |c| c.mesg >= n)
    }

    /// Waits (bounded) until `n` sessions have ended; returns the counters.
    pub fn wait_for_sessions(&self, n: u64, timeout: Duration) -> SinkCounters {
        self.wait_for(timeout, |c| c.sess >= n)
    }

    /// What smtp-sink wrote to stderr so far.
    pub fn stderr(&self) -> String {
        stderr_text(&self.stderr)
    }
}

fn read_sink_counters(stdout: ChildStdout, counters: &Mutex<SinkCounters>) {
    let mut reader = BufReader::new(stdout);
    let mut report = Vec::new();
    loop {
        report.clear();
        match reader.read_until(b'\r', &mut report) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if let Some(c) = SinkCounters::parse(&String::from_utf8_lossy(&report)) {
                    *counters.lock().unwrap_or_else(|e| e.into_inner()) = c;
                }
            }
        }
    }
}

/// Runs smtp-sink ("$@") and kills it when stdin reaches EOF: smtp-sink does not die when
/// the test process does (it ignores write errors on its stdout), so the test holds the
/// wrapper's stdin open as a lifeline. Exits with smtp-sink's status.
const SINK_WRAPPER: &str = r#"
exec 3<&0
"$@" </dev/null &
sink=$!
{ read -r -u 3 _ || true; kill "$sink" 2>/dev/null; } &
watcher=$!
exec 3<&-
wait "$sink"
rc=$?
kill "$watcher" 2>/dev/null
exit "$rc"
"#;

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // EOF on the lifeline makes the wrapper kill smtp-sink and exit.
        drop(self.lifeline.take());
        if wait_until(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// `pipemail sink` started as a user would, on a free loopback port; killed when dropped.
pub struct SinkProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: BufReader<std::process::ChildStderr>,
}

impl SinkProcess {
    /// `pipemail sink --listen 127.0.0.1:0 ARGS...`, once it said where it listens.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pipemail"))
            .args(["sink", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pipemail sink");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("read stderr");
        let addr = line
            .strip_prefix("pipemail sink: listening on ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            child,
            addr,
            stderr,
        }
    }

    /// Ctrl-C, then the exit code and the rest of stderr.
    pub fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let status = self.child.wait().expect("wait for pipemail sink");
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).expect("stderr");
        (status.code(), rest)
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod aiosmtpd;
mod postfix;

#[allow(unused_imports)] // each test binary uses a different part
pub use aiosmtpd::{AioMessage, AioSmtpd};
#[allow(unused_imports)]
pub use postfix::{PostfixSmtpd, crlf_to_lf, strip_delivery_headers};
