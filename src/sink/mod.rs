//! pipemail's own SMTP server: a small, real ESMTP sink for local runs, demos, tests and fault
//! injection (in the spirit of Postfix's smtp-sink).
//!
//! The protocol lives in [`server::Server`], a sans-IO state machine like the client
//! [`crate::engine::Session`] (`handle_input(&[u8], now)`, `poll_transmit`, `poll_event`,
//! `poll_timeout`; no sockets, no clock reads). This module is its tokio wrapper:
//! [`SinkHandle::start`] binds a listener and serves it from its own tokio runtime on a
//! background thread, so callers need no runtime. [`pair::Pair`] runs the engine against the
//! server in memory on a virtual clock, for tests. Accepted messages are counted
//! ([`SinkHandle::stats`]), optionally kept in memory ([`SinkHandle::messages`]) and optionally
//! written to a Maildir, one file per message.
//!
//! # Protocol
//!
//! * Greeting `220 <hostname> ESMTP pipemail-sink`; `EHLO` lists `PIPELINING`, `SIZE n`,
//!   `8BITMIME`, `ENHANCEDSTATUSCODES`, `CHUNKING`, `SMTPUTF8`, `STARTTLS` and `AUTH PLAIN LOGIN`
//!   as configured; `HELO` works too. `HELO`/`EHLO` is required before `MAIL`.
//! * `MAIL FROM:<a> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]`, `RCPT TO:<a>` (at most 1000 per
//!   message), `DATA` (dot-unstuffing, ends at CRLF.CRLF), `BDAT n [LAST]`, `RSET`, `NOOP`,
//!   `VRFY` (252), `QUIT`, `STARTTLS`, `AUTH PLAIN|LOGIN`. Anything else: `500 5.5.2`.
//! * Command lines longer than 1000 octets (CRLF included) get `500 5.5.2 Error: line too long`
//!   once the line ends; the excess is discarded as it arrives, so memory stays bounded.
//! * `BDAT n` always consumes exactly `n` octets, even when the command itself fails (no
//!   transaction, no accepted recipient, CHUNKING off, message too big), so the stream stays in
//!   step (RFC 3030). A failed `BDAT` ends the transaction.
//! * Messages larger than `SIZE` (or 64 MiB when `size` is `None`) are read to their end,
//!   discarded and rejected with `552 5.3.4`.
//! * Replies are collected while more input is already buffered and written when the input
//!   buffer runs dry, before blocking to read: one write per pipelined group (RFC 2920 §3.2).
//! * Whenever the sink closes a connection (QUIT, 421, faults, timeouts) it first writes every
//!   reply it has produced, half-closes (FIN), and discards further input until the client
//!   closes (for at most 5 s), so the client never loses replies to a reset.
//! * A client that sends nothing for 5 minutes gets `421 4.4.2` and is disconnected; one that
//!   reads none of its replies for 5 minutes is disconnected.
//!
//! # Stored messages
//!
//! A message is stored and counted exactly when the sink sends, starts to send, or (for
//! [`Fault::DropBeforeReply`] with `stored: true`) would have sent a `2xx` reply to its final dot
//! or `BDAT … LAST`. [`StoredMessage::rcpts`] are the recipients whose `RCPT` got a `2xx` reply.
//! [`StoredMessage::data`] is the content exactly as received: for `DATA`, dot-unstuffed and
//! without the final `.CRLF` (the CRLF ending the last line is kept); for `BDAT` the
//! concatenated chunks. Bare LF and bare CR are stored as received. The Maildir file holds the
//! same bytes (no header is added); it is written to `tmp/` and renamed into `new/` before the
//! `250` reply is sent. A Maildir write failure answers `451 4.3.0` and stores nothing.
//! (The one exception to "stored iff a 2xx was sent": [`SinkHandle::stop`] may cut a session
//! between storing a message and writing its reply.)
//!
//! # Commands after the end of data
//!
//! By default commands pipelined behind a final dot or `BDAT … LAST` are processed (RFC 2920).
//! [`SinkConfig::after_dot`] makes the sink behave like servers hardened after the 2023–24
//! SMTP smuggling advisories: [`AfterDot::Refuse`] answers each such command (those that
//! arrived in the same read as the end of data, behind it) with
//! `503 5.5.1 Bad sequence of commands - pipelined after end of DATA` without executing it;
//! [`AfterDot::Drop`] answers the end of data and closes the connection.
//!
//! # Faults
//!
//! See [`Fault`] for the exact semantics of each injected fault, and [`FaultSpec`] for their
//! command-line form (`pipemail sink --fault SPEC`).
//!
//! # Latency
//!
//! With [`SinkConfig::latency`] non-zero, each connection runs behind the same delay line as
//! [`crate::latency::LatencyProxy`]: every chunk of client input reaches the protocol half the
//! round trip after it was read from the socket, and every reply leaves half the round trip
//! after it was written, without serializing the delays. The session itself starts (and sends
//! its greeting) half a round trip after the connection was accepted. TLS runs inside the delay
//! line, so its handshake pays the round trips too. With latency zero there is no delay line.

mod conn;
mod fault;
mod glob;
pub mod pair;
mod proto;
pub mod server;
mod store;
#[cfg(test)]
mod tests;
mod verbs;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use fault::{Fault, FaultPlan, FaultSpec, FaultSpecError};
pub use server::AfterDot;

/// Configuration of a sink. [`Default`] gives a plain ESMTP server with PIPELINING, CHUNKING
/// and `SIZE 35882577`, no TLS, no AUTH, no latency and no storage.
#[derive(Clone)]
pub struct SinkConfig {
    /// Name used in the greeting and the EHLO reply (default `pipemail-sink`).
    pub hostname: String,
    /// Advertise PIPELINING (default true). The sink processes pipelined input either way.
    pub pipelining: bool,
    /// Advertise CHUNKING and accept `BDAT` (default true). When off, `BDAT n` still consumes
    /// its `n` octets and is answered `502 5.5.1`.
    pub chunking: bool,
    /// Advertise `SIZE n` and reject larger messages with 552 (default `Some(35_882_577)`).
    /// `None` advertises no SIZE; messages are then limited to 64 MiB.
    pub size: Option<u64>,
    /// Advertise SMTPUTF8 (default false). Without it a `SMTPUTF8` MAIL parameter is refused
    /// (555), and a non-ASCII address is refused (553) unless MAIL carried `SMTPUTF8`.
    pub smtputf8: bool,
    /// Emulated network round-trip time (default zero: no emulation, no timers).
    pub latency: Duration,
    /// Maildir to store each accepted message in (created with `tmp/`, `new/`, `cur/` if
    /// missing). One file per message, whatever the number of recipients.
    pub maildir: Option<PathBuf>,
    /// Keep every accepted message in memory for [`SinkHandle::messages`] (default false).
    pub keep_in_memory: bool,
    /// Recipient rules; the first matching rule rejects the recipient.
    pub reject: Vec<RejectRule>,
    /// TLS identity; when set, STARTTLS is advertised (before TLS) and supported.
    pub tls: Option<native_tls::Identity>,
    /// `(user, password)`; when set, AUTH PLAIN LOGIN is advertised (after STARTTLS, or always
    /// with `allow_plain_auth`), credentials are checked, and MAIL needs a successful AUTH
    /// (`530 5.7.0` otherwise).
    pub auth: Option<(String, String)>,
    /// Offer and accept AUTH without TLS (default false: AUTH before TLS gets `538 5.7.11`).
    pub allow_plain_auth: bool,
    /// Injected faults, by session (default none).
    pub faults: Option<FaultPlan>,
    /// What to do with commands pipelined behind the end of a message (default: accept them,
    /// as RFC 2920 allows). See [`AfterDot`].
    pub after_dot: AfterDot,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            hostname: "pipemail-sink".into(),
            pipelining: true,
            chunking: true,
            size: Some(35_882_577),
            smtputf8: false,
            latency: Duration::ZERO,
            maildir: None,
            keep_in_memory: false,
            reject: Vec::new(),
            tls: None,
            auth: None,
            allow_plain_auth: false,
            faults: None,
            after_dot: AfterDot::Accept,
        }
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkConfig")
            .field("hostname", &self.hostname)
            .field("pipelining", &self.pipelining)
            .field("chunking", &self.chunking)
            .field("size", &self.size)
            .field("smtputf8", &self.smtputf8)
            .field("latency", &self.latency)
            .field("maildir", &self.maildir)
            .field("keep_in_memory", &self.keep_in_memory)
            .field("reject", &self.reject)
            .field("tls", &self.tls.as_ref().map(|_| "<identity>"))
            .field(
                "auth",
                &self.auth.as_ref().map(|(user, _)| (user, "<password>")),
            )
            .field("allow_plain_auth", &self.allow_plain_auth)
            .field("faults", &self.faults)
            .field("after_dot", &self.after_dot)
            .finish()
    }
}

/// Loads a TLS identity from a PEM certificate (chain) file and a PEM PKCS#8 private key file.
pub fn load_identity(cert_pem: &Path, key_pem: &Path) -> std::io::Result<native_tls::Identity> {
    let cert = std::fs::read(cert_pem)?;
    let key = std::fs::read(key_pem)?;
    native_tls::Identity::from_pkcs8(&cert, &key)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A recipient rule: recipients matching `pattern` are rejected with `code`.
///
/// `pattern` is a glob where `*` matches any run of characters (including none); everything else
/// matches itself, case-insensitively. It is matched against the whole address, without angle
/// brackets. The reply is `<code> 5.1.1 <addr>: Recipient address rejected` for a 5xx code and
/// `<code> 4.2.0 <addr>: Recipient address rejected` for a 4xx code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectRule {
    /// Glob pattern (`*` wildcard, case-insensitive).
    pub pattern: String,
    /// Reply code, 400..=599 (typically 550 or 450).
    pub code: u16,
}

impl RejectRule {
    /// Whether `addr` matches this rule's pattern.
    pub fn matches(&self, addr: &str) -> bool {
        glob::matches(&self.pattern, addr)
    }
}

/// Why a `CODE:PATTERN` string is not a [`RejectRule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectRuleError {
    /// No `:` between code and pattern.
    #[error("expected CODE:PATTERN, e.g. 550:*@bad.example")]
    Syntax,
    /// The code is not a number in 400..=599.
    #[error("reply code must be a number from 400 to 599, got {0:?}")]
    Code(String),
    /// The pattern is empty.
    #[error("empty recipient pattern")]
    EmptyPattern,
}

impl FromStr for RejectRule {
    type Err = RejectRuleError;

    /// Parses `CODE:PATTERN`, e.g. `550:*@bad.example` or `450:slow*`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (code, pattern) = s.split_once(':').ok_or(RejectRuleError::Syntax)?;
        let code_num: u16 = code
            .trim()
            .parse()
            .map_err(|_| RejectRuleError::Code(code.to_string()))?;
        if !(400..=599).contains(&code_num) {
            return Err(RejectRuleError::Code(code.to_string()));
        }
        if pattern.is_empty() {
            return Err(RejectRuleError::EmptyPattern);
        }
        Ok(Self {
            pattern: pattern.to_string(),
            code: code_num,
        })
    }
}

/// A message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Index of the session (0-based, in accept order) that delivered it.
    pub session: u64,
    /// The queue id given in the `250 2.0.0 Ok: queued as <id>` reply (also in the Maildir
    /// file name).
    pub queue_id: String,
    /// The MAIL FROM address, without angle brackets (empty for `<>`).
    pub from: String,
    /// Recipients whose RCPT got a 2xx reply, in order.
    pub rcpts: Vec<String>,
    /// The content exactly as received (see the [module documentation](self)).
    pub data: Vec<u8>,
    /// Whether it came with BDAT (else DATA).
    pub via_bdat: bool,
}

/// Counters of a sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Connections accepted.
    pub sessions: u64,
    /// Messages stored.
    pub messages: u64,
    /// Recipients of the stored messages (one per accepted RCPT of a stored message).
    pub recipients: u64,
    /// RCPT commands answered with a 4xx or 5xx reply (rules, limits, syntax, injected faults).
    pub rejected_recipients: u64,
    /// Octets of stored message content.
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    sessions: AtomicU64,
    messages: AtomicU64,
    recipients: AtomicU64,
    rejected_recipients: AtomicU64,
    bytes: AtomicU64,
}

/// State shared by the accept loop, the sessions and the handle.
pub(crate) struct Shared {
    cfg: Arc<SinkConfig>,
    tls: Option<tokio_native_tls::TlsAcceptor>,
    maildir: Option<store::Maildir>,
    counters: Counters,
    messages: Mutex<Vec<StoredMessage>>,
    next_queue_id: AtomicU64,
}

impl Shared {
    /// Records an accepted message: counters, and the in-memory list if configured.
    fn record(&self, msg: StoredMessage) {
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        self.counters
            .recipients
            .fetch_add(msg.rcpts.len() as u64, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(msg.data.len() as u64, Ordering::Relaxed);
        if self.cfg.keep_in_memory {
            self.messages
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(msg);
        }
    }

    fn rejected_recipient(&self) {
        self.counters
            .rejected_recipients
            .fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self) -> SinkStats {
        let c = &self.counters;
        SinkStats {
            sessions: c.sessions.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            recipients: c.recipients.load(Ordering::Relaxed),
            rejected_recipients: c.rejected_recipients.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }
}

/// A running sink. Dropping it stops the sink like [`SinkHandle::stop`].
pub struct SinkHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkHandle")
            .field("local_addr", &self.local_addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.into())
}

impl SinkHandle {
    /// Binds `listen` (port 0 picks a free port), prepares the Maildir and TLS, and starts
    /// serving on a background thread with its own runtime. Returns once the listener is bound.
    ///
    /// Fails with `InvalidInput` on a reject rule or [`Fault::ReplyCode`] code outside
    /// 400..=599, and with the underlying error if binding, the Maildir or the TLS identity fail.
    pub fn start(listen: SocketAddr, cfg: SinkConfig) -> std::io::Result<Self> {
        for rule in &cfg.reject {
            if !(400..=599).contains(&rule.code) {
                return Err(invalid(format!(
                    "reject rule {:?}: code {} is not 400..=599",
                    rule.pattern, rule.code
                )));
            }
        }
        if let Some(plan) = &cfg.faults {
            plan.validate().map_err(invalid)?;
        }
        if cfg.hostname.is_empty() || cfg.hostname.contains(['\r', '\n', ' ']) {
            return Err(invalid(
                "hostname must be non-empty without spaces or CR/LF",
            ));
        }
        let maildir = match &cfg.maildir {
            Some(dir) => Some(store::Maildir::create(dir, &cfg.hostname)?),
            None => None,
        };
        let tls = match &cfg.tls {
            Some(identity) => {
                let acceptor = native_tls::TlsAcceptor::new(identity.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                Some(tokio_native_tls::TlsAcceptor::from(acceptor))
            }
            None => None,
        };

        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let shared = Arc::new(Shared {
            cfg: Arc::new(cfg),
            tls,
            maildir,
            counters: Counters::default(),
            messages: Mutex::new(Vec::new()),
            next_queue_id: AtomicU64::new(1),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("pipemail-sink".into())
            .spawn(move || {
                runtime.block_on(accept_loop(listener, thread_shared, shutdown_rx));
            })?;
        Ok(Self {
            local_addr,
            shared,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The address the sink listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Current counters.
    pub fn stats(&self) -> SinkStats {
        self.shared.stats()
    }

    /// The messages stored so far, in the order they were accepted (empty unless
    /// [`SinkConfig::keep_in_memory`]).
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.shared
            .messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Closes the listener and every session, joins the sink thread, and returns the final
    /// counters.
    pub fn stop(mut self) -> SinkStats {
        self.shutdown_and_join();
        self.shared.stats()
    }

    fn shutdown_and_join(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.shutdown_and_join();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    let mut next_index: u64 = 0;
    loop {
        tokio::select! {
            () = crate::latency::wait_shutdown(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let index = next_index;
                    next_index += 1;
                    shared.counters.sessions.fetch_add(1, Ordering::Relaxed);
                    sessions.spawn(conn::run(stream, index, Arc::clone(&shared)));
                }
                Err(_) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    // Aborting is safe for the counters: a message is recorded in one step that is either done
    // or not (see `store`).
    sessions.shutdown().await;
}
