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
//!   (`XOAUTH2 OAUTHBEARER` with an OAuth token) as configured; `HELO` works too.
//!   `HELO`/`EHLO` is required before `MAIL`.
//! * `MAIL FROM:<a> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]`, `RCPT TO:<a>` (at most 1000 per
//!   message), `DATA` (dot-unstuffing, ends at CRLF.CRLF), `BDAT n [LAST]`, `RSET`, `NOOP`,
//!   `VRFY` (252), `QUIT`, `STARTTLS`, `AUTH PLAIN|LOGIN|XOAUTH2|OAUTHBEARER`. Anything else:
//!   `500 5.5.2`.
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

mod config;
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::{AfterDot, RejectRule, RejectRuleError, SinkConfig, load_identity};
pub use fault::{Fault, FaultPlan, FaultSpec, FaultSpecError};
pub use store::{SinkStats, StoredMessage};

use conn::{Counters, Shared};

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
