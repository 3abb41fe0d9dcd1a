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
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            return line.split_whitespace().nth(2) == Some("0");
        }
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

// ---------------------------------------------------------------------------------------
// Private Postfix smtpd
// ---------------------------------------------------------------------------------------

/// A private, full Postfix instance from `scripts/postfix-smtpd.sh` on 127.0.0.1, in a fresh
/// directory (on /dev/shm when possible), stopped and removed on drop. Needs root.
///
/// EHLO offers PIPELINING, CHUNKING and STARTTLS (self-signed certificate, CN and SAN
/// `localhost`, SAN IP 127.0.0.1; [`PostfixSmtpd::ca_cert_path`] is usable as the CA file).
/// Recipients `@example.net`/`@example.org` are accepted; a local part starting with
/// `defer` (or domain `defer.example.net`) gets 450 4.2.1, one starting with `reject` (or
/// `reject.example.net`) 550 5.1.1, other domains 554 5.7.1 Relay access denied.
/// Every accepted message is delivered into one Maildir, [`PostfixSmtpd::maildir`].
///
/// # What a delivered message looks like
/// The file is the message as sent with these differences:
/// - four header fields are prepended, in this order: `Return-Path: <sender>`,
///   `X-Original-To: rcpt`, `Delivered-To: rcpt` (by virtual(8)) and a three-line
///   `Received: from HELO (unknown [127.0.0.1])\n\tby localhost (Postfix) with ESMTP[S][A]
///   id QUEUEID\n\tfor <rcpt>; DATE` (by smtpd; the `for` clause only with one recipient).
///   [`strip_delivery_headers`] removes exactly those;
/// - line ends are LF, not CRLF (and a bare LF sent in DATA/BDAT also ends a line);
/// - dot-stuffing is undone (DATA);
/// - a message not ending in a line end gets a final LF;
/// - a message whose first line is not a header field gets an empty line before it
///   (Postfix puts it in the body).
///
/// The instance is configured not to do more: it adds no `Message-ID`, `Date`, `From` or
/// `To` (`local_header_rewrite_clients =`, `always_add_missing_headers = no`), rewrites no
/// addresses in headers, drops no header (`message_drop_headers =`, default would remove
/// `Bcc`, `Content-Length`, `Resent-Bcc`, `Return-Path`) and keeps stray CRs
/// (`cleanup_replace_stray_cr_lf = no`). So `strip_delivery_headers(file)` equals
/// [`crlf_to_lf`]`(sent)` for a message with CRLF line ends and a header section.
pub struct PostfixSmtpd {
    dir: Option<tempfile::TempDir>,
    addr: SocketAddr,
    postfix: PathBuf,
}

fn postfix_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postfix-smtpd.sh")
}

const POSTFIX_DIR_PREFIX: &str = "pipemail-postfix-";
/// File in an instance's directory holding the pid of the test process that owns it.
const OWNER_FILE: &str = "owner.pid";

fn run_stop_script(dir: &Path, postfix: &Path) -> std::io::Result<std::process::Output> {
    Command::new("bash")
        .arg(postfix_script())
        .arg("stop")
        .arg(dir)
        .env("POSTFIX", postfix)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
}

/// Stops and removes instances left running by test processes that died without dropping
/// their [`PostfixSmtpd`] (killed, aborted); the Postfix master outlives its test.
fn sweep_orphaned_instances(base: &Path, postfix: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(POSTFIX_DIR_PREFIX));
        let Some(owner) = is_ours
            .then(|| fs::read_to_string(dir.join(OWNER_FILE)).ok())
            .flatten()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if run_stop_script(&dir, postfix).is_ok_and(|o| o.status.success()) {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

impl PostfixSmtpd {
    /// Starts an instance; `None` (after [`skip_or_fail`]) when Postfix or openssl is not
    /// installed or the test does not run as root. Panics with the script's output and the
    /// instance's log if it is installed but does not start.
    pub fn start() -> Option<Self> {
        let Some(postfix) = find_program("PIPEMAIL_POSTFIX", "postfix", &["/usr/sbin/postfix"])
        else {
            skip_or_fail("postfix not installed (apt-get install postfix)");
            return None;
        };
        if find_program("PIPEMAIL_OPENSSL", "openssl", &["/usr/bin/openssl"]).is_none() {
            skip_or_fail("openssl not installed (apt-get install openssl)");
            return None;
        }
        if !running_as_root() {
            skip_or_fail("a private Postfix instance needs root");
            return None;
        }
        let mut last_err = String::new();
        for _ in 0..3 {
            match Self::try_start(&postfix) {
                Ok(p) => return Some(p),
                Err(e) => last_err = e,
            }
        }
        panic!("private Postfix smtpd did not start:\n{last_err}");
    }

    fn try_start(postfix: &Path) -> Result<Self, String> {
        let base = scratch_base();
        sweep_orphaned_instances(&base, postfix);
        let dir = tempfile::Builder::new()
            .prefix(POSTFIX_DIR_PREFIX)
            .tempdir_in(&base)
            .map_err(|e| format!("temp dir: {e}"))?;
        // Lets a later run stop this instance if this process dies without dropping it.
        fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
            .map_err(|e| format!("owner file: {e}"))?;
        let port = free_port();
        let addr = loopback(port);
        if port_answers(addr) {
            return Err(format!("{addr} already in use"));
        }
        let this = Self {
            dir: Some(dir),
            addr,
            postfix: postfix.to_path_buf(),
        };
        // Output to a file, not a pipe: Postfix daemons must not inherit our pipes.
        let log_path = this.dir().join("start.log");
        let log = fs::File::create(&log_path).map_err(|e| format!("start.log: {e}"))?;
        let status = Command::new("bash")
            .arg(postfix_script())
            .arg("start")
            .arg(this.dir())
            .arg(port.to_string())
            .env("POSTFIX", postfix)
            .env("START_TIMEOUT", START_TIMEOUT.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .status()
            .map_err(|e| format!("run {}: {e}", postfix_script().display()))?;
        if !status.success() {
            let out = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "{} start {} {port} exited with {status}:\n{out}",
                postfix_script().display(),
                this.dir().display()
            ));
        }
        Ok(this)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The instance's directory (etc/, spool/, lib/, tls/, Maildir/, maillog).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir present until drop").path()
    }

    /// The self-signed server certificate (PEM); trust it as a CA to verify the server
    /// as `localhost` or `127.0.0.1`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir().join("tls/cert.pem")
    }

    /// The one Maildir every accepted message is delivered to.
    pub fn maildir(&self) -> PathBuf {
        self.dir().join("Maildir")
    }

    /// The instance's log (Postfix's maillog: "queued as", "status=sent", errors).
    pub fn maillog(&self) -> String {
        fs::read_to_string(self.dir().join("maillog")).unwrap_or_default()
    }

    /// The raw files delivered so far (Maildir/new and Maildir/cur), oldest first.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = fs::read_dir(self.maildir().join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let mtime = entry.metadata().and_then(|m| m.modified()).ok();
                files.push((mtime, path));
            }
        }
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, path)| fs::read(path).ok())
            .collect()
    }

    /// Waits (bounded) until at least `n` messages were delivered; returns what is there
    /// then, possibly fewer than `n`, so the caller's assertion shows what arrived.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        wait_until(timeout, || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
        .unwrap_or_else(|| self.messages())
    }
}

impl Drop for PostfixSmtpd {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        match run_stop_script(dir.path(), &self.postfix) {
            Ok(out) if out.status.success() => drop(dir),
            Ok(out) => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(
                    err,
                    "warning: stopping Postfix in {} failed: {}; left in place",
                    dir.path().display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let _ = dir.keep();
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "warning: postfix-smtpd.sh stop: {e}");
                let _ = dir.keep();
            }
        }
    }
}

/// The header fields the private Postfix instance prepends on delivery, in order.
const DELIVERY_HEADERS: [&[u8]; 4] = [
    b"Return-Path:",
    b"X-Original-To:",
    b"Delivered-To:",
    b"Received:",
];

/// Drops what Postfix prepends to a delivered message (`Return-Path`, `X-Original-To`,
/// `Delivered-To`, and its own first `Received` with its continuation lines), leaving the
/// message as the client sent it, modulo the changes listed on [`PostfixSmtpd`]. A field
/// is dropped only at its expected place, so the client's own `Received` fields stay.
pub fn strip_delivery_headers(raw: &[u8]) -> &[u8] {
    let mut rest = raw;
    for name in DELIVERY_HEADERS {
        if rest.len() >= name.len() && rest[..name.len()].eq_ignore_ascii_case(name) {
            rest = skip_header_field(rest);
        }
    }
    rest
}

/// Skips one header field (its first line plus continuation lines starting with SP/TAB).
fn skip_header_field(mut s: &[u8]) -> &[u8] {
    loop {
        match s.iter().position(|&b| b == b'\n') {
            Some(i) => s = &s[i + 1..],
            None => return &[],
        }
        if !matches!(s.first(), Some(b' ' | b'\t')) {
            return s;
        }
    }
}

/// CRLF -> LF, the line-end change Postfix makes on delivery (bare CRs stay).
pub fn crlf_to_lf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// aiosmtpd (no PIPELINING)
// ---------------------------------------------------------------------------------------

/// One message stored by [`AioSmtpd`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct AioMessage {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub mail_options: Vec<String>,
    pub rcpt_options: Vec<String>,
    /// The message data as received: dot-unstuffed, CRLF kept, without the final `.`.
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// An SMTP server WITHOUT PIPELINING (or CHUNKING, or STARTTLS) for fallback tests:
/// `tests/support/aiosmtpd_server.py`, built on Debian's python3-aiosmtpd.
///
/// Greeting `220 localhost aiosmtpd (pipemail test)`; EHLO answers `250-localhost`,
/// `250-SIZE 33554432`, `250-8BITMIME`, `250 HELP`. Same recipient policy as
/// [`PostfixSmtpd`] (defer* 450, reject* 550), but every domain is accepted. Stores each
/// message with its envelope in a directory; killed on drop.
pub struct AioSmtpd {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stderr: Arc<Mutex<Vec<u8>>>,
}

fn aiosmtpd_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/aiosmtpd_server.py")
}

/// A python3 that can import aiosmtpd: `PIPEMAIL_PYTHON`, else Debian's /usr/bin/python3
/// (python3-aiosmtpd installs there, a pyenv/venv python3 on PATH may not have it), else
/// python3 on PATH.
fn find_aiosmtpd_python() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("PIPEMAIL_PYTHON") {
        Some(p) if !p.is_empty() => vec![PathBuf::from(p)],
        _ => {
            let mut c = vec![PathBuf::from("/usr/bin/python3")];
            c.extend(which("python3"));
            c
        }
    };
    candidates.into_iter().find(|py| {
        is_executable(py)
            && Command::new(py)
                .args(["-c", "import aiosmtpd.smtp"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    })
}

impl AioSmtpd {
    /// Starts the server; `None` (after [`skip_or_fail`]) when no python3 with aiosmtpd
    /// is installed.
    pub fn start() -> Option<Self> {
        let Some(python) = find_aiosmtpd_python() else {
            skip_or_fail("aiosmtpd not installed (apt-get install python3-aiosmtpd)");
            return None;
        };
        let mut last_err = String::new();
        for _ in 0..3 {
            match Self::try_start(&python) {
                Ok(s) => return Some(s),
                Err(e) => last_err = e,
            }
        }
        panic!("aiosmtpd did not start: {last_err}");
    }

    fn try_start(python: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("pipemail-aiosmtpd-")
            .tempdir_in(scratch_base())
            .map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port();
        let addr = loopback(port);
        if port_answers(addr) {
            return Err(format!("{addr} already in use"));
        }
        let mut child = Command::new(python)
            .arg(aiosmtpd_script())
            .arg("--dir")
            .arg(dir.path())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--parent-pid", &std::process::id().to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", python.display()))?;
        let stderr = collect_stderr(&mut child);
        let mut this = Self {
            child,
            addr,
            dir,
            stderr,
        };
        let ready = wait_until(START_TIMEOUT, || {
            if let Ok(Some(status)) = this.child.try_wait() {
                return Some(Err(format!(
                    "aiosmtpd exited with {status}: {}",
                    stderr_text(&this.stderr)
                )));
            }
            probe_banner(addr).ok().map(|_| Ok(()))
        });
        match ready {
            Some(Ok(())) => Ok(this),
            Some(Err(e)) => Err(e),
            None => Err(format!(
                "aiosmtpd gave no 220 greeting on {addr} within {START_TIMEOUT:?}: {}",
                stderr_text(&this.stderr)
            )),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where messages are stored: `new/NNNNNNNN.eml` (data) + `new/NNNNNNNN.json` (envelope).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The messages stored so far, in arrival order.
    pub fn messages(&self) -> Vec<AioMessage> {
        let new = self.dir().join("new");
        let mut names: Vec<PathBuf> = fs::read_dir(&new)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .into_iter()
            .map(|eml| {
                let json = eml.with_extension("json");
                let meta =
                    fs::read(&json).unwrap_or_else(|e| panic!("read {}: {e}", json.display()));
                let mut msg: AioMessage = serde_json::from_slice(&meta)
                    .unwrap_or_else(|e| panic!("parse {}: {e}", json.display()));
                msg.data = fs::read(&eml).unwrap_or_else(|e| panic!("read {}: {e}", eml.display()));
                msg
            })
            .collect()
    }

    /// Waits (bounded) until at least `n` messages were stored; returns what is there then.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<AioMessage> {
        wait_until(timeout, || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
        .unwrap_or_else(|| self.messages())
    }

    /// What the server wrote to stderr so far (Python tracebacks).
    pub fn stderr(&self) -> String {
        stderr_text(&self.stderr)
    }
}

impl Drop for AioSmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
