//! aiosmtpd: a server without PIPELINING.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

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
