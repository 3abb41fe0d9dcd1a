//! More real servers for the interop matrix (issue 11): Exim 4.96 and OpenSMTPD 6.8, from
//! Debian's packages unpacked into private roots by `scripts/interop-install.sh` (they
//! cannot be installed next to Postfix), and a Postfix smtpd hardened the way operators
//! now run it after the SMTP smuggling advisories.
//!
//! Each is a private instance on a free 127.0.0.1 port in a fresh directory, started and
//! stopped by a script in `scripts/` (`exim-smtpd.sh`, `opensmtpd.sh`, `postfix-smtpd.sh
//! ... hardened`); the handle stops it and removes the directory on drop, and a later run
//! stops instances whose test process died. Every accepted message lands in one Maildir.
//!
//! | server            | EHLO offers           | after-dot pipelining (next command sent with the dot) |
//! |-------------------|-----------------------|--------------------------------------------------------|
//! | Exim 4.96         | PIPELINING, CHUNKING  | accepted (DATA and BDAT)                               |
//! | OpenSMTPD 6.8     | neither               | n/a: any pipelined command gets `500 5.5.1 Invalid command: Pipelining not supported` and a disconnect |
//! | Postfix hardened  | PIPELINING, CHUNKING  | accepted (DATA and BDAT), measured on 3.7.11          |
//!
//! None of these refuses a command that arrives right after the end-of-data dot, once EHLO
//! advertised PIPELINING (measured 2026-12-02 on this machine, with MAIL/RCPT/DATA and a
//! NOOP sent in the same write as the body and its dot). The refusal the engine steps down
//! on (`503 5.5.0 pipelined after end of DATA` per command) is played by the scripted
//! server in `tests/cli_check.rs`.

use super::{
    PostfixSmtpd, START_TIMEOUT, find_program, free_port, loopback, port_answers, running_as_root,
    scratch_base, skip_or_fail, wait_until,
};

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where `scripts/interop-install.sh` unpacks the servers (`PIPEMAIL_INTEROP_ROOT` overrides).
pub fn interop_root() -> PathBuf {
    std::env::var_os("PIPEMAIL_INTEROP_ROOT")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/opt/pipemail-interop"), PathBuf::from)
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// File in an instance's directory holding the pid of the test process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// Which server a [`ScriptedMta`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtaKind {
    Exim,
    OpenSmtpd,
}

impl MtaKind {
    fn script(self) -> PathBuf {
        script(match self {
            Self::Exim => "exim-smtpd.sh",
            Self::OpenSmtpd => "opensmtpd.sh",
        })
    }

    fn dir_prefix(self) -> &'static str {
        match self {
            Self::Exim => "pipemail-exim-",
            Self::OpenSmtpd => "pipemail-opensmtpd-",
        }
    }

    /// The daemon binary in the unpacked root.
    fn binary(self) -> PathBuf {
        let root = interop_root();
        match self {
            Self::Exim => root.join("exim/usr/sbin/exim4"),
            Self::OpenSmtpd => root.join("opensmtpd/usr/sbin/smtpd"),
        }
    }

    fn env(self) -> (&'static str, PathBuf) {
        let root = interop_root();
        match self {
            Self::Exim => ("EXIM_ROOT", root.join("exim")),
            Self::OpenSmtpd => ("OPENSMTPD_ROOT", root.join("opensmtpd")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Exim => "exim",
            Self::OpenSmtpd => "opensmtpd",
        }
    }
}

fn run_stop(kind: MtaKind, dir: &Path) -> std::io::Result<std::process::Output> {
    let (var, val) = kind.env();
    Command::new("bash")
        .arg(kind.script())
        .arg("stop")
        .arg(dir)
        .env(var, val)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
}

/// Stops and removes instances of `kind` whose test process died without dropping them.
fn sweep_orphans(kind: MtaKind, base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(kind.dir_prefix()));
        let Some(owner) = ours
            .then(|| fs::read_to_string(dir.join(OWNER_FILE)).ok())
            .flatten()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if run_stop(kind, &dir).is_ok_and(|o| o.status.success()) {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// A private Exim or OpenSMTPD instance (see the module docs), stopped on drop.
pub struct ScriptedMta {
    kind: MtaKind,
    dir: Option<tempfile::TempDir>,
    addr: SocketAddr,
}

impl ScriptedMta {
    /// Exim 4.96: PIPELINING + CHUNKING; recipients `defer*` 451, `reject*` 550, other
    /// domains `550 5.7.1 Relay access denied`. Delivered files have LF line ends and
    /// Exim's `Received:` field on top ([`strip_received`]).
    pub fn exim() -> Option<Self> {
        Self::start(MtaKind::Exim)
    }

    /// OpenSMTPD 6.8: no PIPELINING, no CHUNKING; recipients `defer*` 450, `reject*` 550,
    /// other domains `550 Invalid recipient`. Delivered files have LF line ends and
    /// `Return-Path`, `Delivered-To` and `Received` on top ([`strip_received`]).
    pub fn opensmtpd() -> Option<Self> {
        Self::start(MtaKind::OpenSmtpd)
    }

    fn start(kind: MtaKind) -> Option<Self> {
        if !is_file(&kind.binary()) {
            skip_or_fail(&format!(
                "{} not installed (bash scripts/interop-install.sh unpacks it into {})",
                kind.name(),
                interop_root().display()
            ));
            return None;
        }
        if !running_as_root() {
            skip_or_fail(&format!("a private {} instance needs root", kind.name()));
            return None;
        }
        let mut last_err = String::new();
        for _ in 0..3 {
            match Self::try_start(kind) {
                Ok(m) => return Some(m),
                Err(e) => last_err = e,
            }
        }
        panic!("private {} did not start:\n{last_err}", kind.name());
    }

    fn try_start(kind: MtaKind) -> Result<Self, String> {
        let base = scratch_base();
        sweep_orphans(kind, &base);
        let dir = tempfile::Builder::new()
            .prefix(kind.dir_prefix())
            .tempdir_in(&base)
            .map_err(|e| format!("temp dir: {e}"))?;
        fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
            .map_err(|e| format!("owner file: {e}"))?;
        let port = free_port();
        let addr = loopback(port);
        if port_answers(addr) {
            return Err(format!("{addr} already in use"));
        }
        let this = Self {
            kind,
            dir: Some(dir),
            addr,
        };
        let log_path = this.dir().join("start.log");
        let log = fs::File::create(&log_path).map_err(|e| format!("start.log: {e}"))?;
        let (var, val) = kind.env();
        let status = Command::new("bash")
            .arg(kind.script())
            .arg("start")
            .arg(this.dir())
            .arg(port.to_string())
            .env(var, val)
            .env("START_TIMEOUT", START_TIMEOUT.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .status()
            .map_err(|e| format!("run {}: {e}", kind.script().display()))?;
        if !status.success() {
            let out = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "{} start {} {port} exited with {status}:\n{out}",
                kind.script().display(),
                this.dir().display()
            ));
        }
        Ok(this)
    }

    pub fn kind(&self) -> MtaKind {
        self.kind
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir present until drop").path()
    }

    /// The server's log (Exim's mainlog, or smtpd -d's output).
    pub fn log(&self) -> String {
        let file = match self.kind {
            MtaKind::Exim => "log/mainlog",
            MtaKind::OpenSmtpd => "smtpd.log",
        };
        fs::read_to_string(self.dir().join(file)).unwrap_or_default()
    }

    /// The raw files delivered so far, oldest first.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        maildir_files(&self.dir().join("Maildir"))
    }

    /// Waits (bounded) until at least `n` messages were delivered; returns what is there.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        wait_until(timeout, || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
        .unwrap_or_else(|| self.messages())
    }
}

impl Drop for ScriptedMta {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        match run_stop(self.kind, dir.path()) {
            Ok(out) if out.status.success() => drop(dir),
            other => {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: stopping {} in {} failed: {other:?}; left in place",
                    self.kind.name(),
                    dir.path().display()
                );
                let _ = dir.keep();
            }
        }
    }
}

fn is_file(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file())
}

/// The files in `maildir`/new and /cur, oldest first.
pub fn maildir_files(maildir: &Path) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let mtime = entry.metadata().and_then(|m| m.modified()).ok();
            files.push((mtime, entry.path()));
        }
    }
    files.sort();
    files
        .into_iter()
        .filter_map(|(_, p)| fs::read(p).ok())
        .collect()
}

/// Drops the trace fields Exim or OpenSMTPD prepend on delivery (`Return-Path`,
/// `Delivered-To`, and the server's own first `Received` with its continuation lines),
/// leaving the message as the client sent it with LF line ends.
pub fn strip_received(raw: &[u8]) -> &[u8] {
    let mut rest = raw;
    for name in [&b"Return-Path:"[..], b"Delivered-To:", b"Received:"] {
        if rest.len() >= name.len() && rest[..name.len()].eq_ignore_ascii_case(name) {
            rest = super::postfix::skip_header_field(rest);
        }
    }
    rest
}

impl PostfixSmtpd {
    /// A private Postfix smtpd hardened against SMTP smuggling
    /// (`scripts/postfix-smtpd.sh start DIR PORT hardened`: `smtpd_forbid_unauth_pipelining
    /// = yes`, `smtpd_data_restrictions = reject_unauth_pipelining`,
    /// `smtpd_forbid_bare_newline = yes`); otherwise as [`PostfixSmtpd::start`].
    pub fn start_hardened() -> Option<Self> {
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
            match Self::try_start_mode(&postfix, "hardened") {
                Ok(p) => return Some(p),
                Err(e) => last_err = e,
            }
        }
        panic!("private hardened Postfix smtpd did not start:\n{last_err}");
    }

    fn try_start_mode(postfix: &Path, mode: &str) -> Result<Self, String> {
        let base = scratch_base();
        super::postfix::sweep_orphaned_instances(&base, postfix);
        let dir = tempfile::Builder::new()
            .prefix(super::postfix::POSTFIX_DIR_PREFIX)
            .tempdir_in(&base)
            .map_err(|e| format!("temp dir: {e}"))?;
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
        let log_path = this.dir().join("start.log");
        let log = fs::File::create(&log_path).map_err(|e| format!("start.log: {e}"))?;
        let status = Command::new("bash")
            .arg(super::postfix::postfix_script())
            .arg("start")
            .arg(this.dir())
            .arg(port.to_string())
            .arg(mode)
            .env("POSTFIX", postfix)
            .env("START_TIMEOUT", START_TIMEOUT.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .status()
            .map_err(|e| format!("run postfix-smtpd.sh: {e}"))?;
        if !status.success() {
            let out = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "postfix-smtpd.sh start ... {mode} exited with {status}:\n{out}"
            ));
        }
        Ok(this)
    }
}
