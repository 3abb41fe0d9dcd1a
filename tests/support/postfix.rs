//! A private, full Postfix smtpd instance.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

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
    pub(super) dir: Option<tempfile::TempDir>,
    pub(super) addr: SocketAddr,
    pub(super) postfix: PathBuf,
}

pub(super) fn postfix_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postfix-smtpd.sh")
}

pub(super) const POSTFIX_DIR_PREFIX: &str = "pipemail-postfix-";
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
pub(super) fn sweep_orphaned_instances(base: &Path, postfix: &Path) {
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
        Self::start_in_mode(None)
    }

    /// A private Postfix smtpd that also bounces and defers in delivery
    /// (`scripts/postfix-smtpd.sh start DIR PORT bounces`): a local part starting with
    /// `bounceme` is accepted at RCPT and then bounced by Postfix's `error` transport with
    /// `5.1.1` and diagnostic `X-Postfix; Mailbox unavailable (test: bounceme)`; one starting
    /// with `delayme` is accepted and deferred (`4.2.2 Mailbox full (test: delayme)`), and
    /// a delay notice goes out after the first attempt (`delay_warning_time = 1s`).
    /// Postfix's own DSNs go to the envelope sender: for `@example.org`/`@example.net`
    /// senders they land in [`PostfixSmtpd::maildir`] next to the delivered messages.
    /// Otherwise as [`PostfixSmtpd::start`].
    pub fn start_bounces() -> Option<Self> {
        Self::start_in_mode(Some("bounces"))
    }

    fn start_in_mode(mode: Option<&str>) -> Option<Self> {
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
            match Self::try_start(&postfix, mode) {
                Ok(p) => return Some(p),
                Err(e) => last_err = e,
            }
        }
        panic!("private Postfix smtpd did not start:\n{last_err}");
    }

    fn try_start(postfix: &Path, mode: Option<&str>) -> Result<Self, String> {
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
            .args(mode)
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

    /// Waits (bounded) for exactly `n` delivered files (panics with the mail log when fewer
    /// arrive); each as its `Delivered-To:` address and the message without the delivery
    /// header fields Postfix prepended.
    pub fn wait_for_deliveries(&self, n: usize, timeout: Duration) -> Vec<(String, Vec<u8>)> {
        let files = self.wait_for_messages(n, timeout);
        assert_eq!(files.len(), n, "{}", self.maillog());
        files
            .iter()
            .map(|raw| {
                let to = String::from_utf8_lossy(raw)
                    .lines()
                    .find_map(|l| l.strip_prefix("Delivered-To: "))
                    .expect("Delivered-To")
                    .trim()
                    .to_owned();
                (to, strip_delivery_headers(raw).to_vec())
            })
            .collect()
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
pub(super) fn skip_header_field(mut s: &[u8]) -> &[u8] {
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
