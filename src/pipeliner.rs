//! The Net::SMTP::Pipelining API in Rust: `pipeline`, `flush`, `codes`, `messages`, `sent`,
//! `errors`, `recipients`, plus plain lock-step commands like Net::SMTP.
//!
//! Blocking: it runs its own single-threaded tokio runtime. Bulk sending with many
//! connections uses [`crate::driver`] directly.
//!
//! ```no_run
//! use pipemail::pipeliner::{Envelope, Pipeliner};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut smtp = Pipeliner::connect_plain("localhost:25")?;
//! let sender = "sender@example.com";
//! let (mut successful, mut failed) = (Vec::new(), Vec::new());
//! for address in ["s1@example.com", "s2@example.com", "s3@example.com"] {
//!     let data = format!("From: {sender}\n\nThis is a mail to {address}");
//!     if !smtp.pipeline(&Envelope::new(sender, [address], data)) {
//!         failed.extend(smtp.rcpts_failed().iter().cloned());
//!     }
//!     successful.extend(smtp.rcpts_succeeded().iter().cloned());
//! }
//! if !smtp.flush() {
//!     failed.extend(smtp.rcpts_failed().iter().cloned());
//! }
//! successful.extend(smtp.rcpts_succeeded().iter().cloned());
//! println!("Sent successfully to the following addresses: {}", successful.join(" "));
//! if !failed.is_empty() {
//!     eprintln!("Failed sending to {}", failed.join(" "));
//! }
//! for e in smtp.errors() {
//!     eprintln!("An error occurred, we said {} and the server responded {} {}", e.command, e.code, e.message);
//! }
//! smtp.quit()?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use crate::driver::{ConnectError, ConnectOptions, Connection, Target, TlsSettings};
use crate::engine::{
    self, Delivery, Event, Message, PipeliningPolicy, RawCommand, Reply, RoundTrips, SessionError,
    TlsPolicy,
};

/// One message: sender, one or many recipients, content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `MAIL FROM`.
    pub from: String,
    /// `RCPT TO`, one or many.
    pub to: Vec<String>,
    /// Headers, blank line, body; any line endings.
    pub data: Vec<u8>,
}

impl Envelope {
    /// Builds an envelope.
    pub fn new<I, S>(from: &str, to: I, data: impl Into<Vec<u8>>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            from: from.to_string(),
            to: to.into_iter().map(Into::into).collect(),
            data: data.into(),
        }
    }
}

/// A failed exchange: what we said and what the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeError {
    /// The command as sent (secrets redacted); `.` for a message body.
    pub command: String,
    /// The reply code (0 when the session itself failed).
    pub code: u16,
    /// The reply text (or the session error).
    pub message: String,
}

/// Recipients as the seed module reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    /// Accepted by RCPT in the last call (their message may still fail).
    pub accepted: Vec<String>,
    /// Whose message the server took (reported in the call after it was sent, or by flush).
    pub succeeded: Vec<String>,
    /// Rejected at MAIL, RCPT, DATA or the body, or lost with the session.
    pub failed: Vec<String>,
}

/// Why the client could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The session ended.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session closed without an error (after QUIT).
    #[error("session is closed")]
    Closed,
    /// The runtime could not start.
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(String),
}

/// A pipelining SMTP client with the Net::SMTP::Pipelining interface.
#[derive(Debug)]
pub struct Pipeliner {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    next_id: u64,
    codes: Vec<u16>,
    messages: Vec<Vec<String>>,
    sent: Vec<String>,
    errors: Vec<PipeError>,
    recipients: Recipients,
    raw_reply: Option<Reply>,
    closed: Option<Option<SessionError>>,
    require_pipelining: bool,
    /// Recipients of each message in flight, by message id.
    envelopes: HashMap<u64, Vec<String>>,
}

impl Pipeliner {
    /// Connects without TLS (port 25 unless given) and waits until the session is ready.
    pub fn connect_plain(target: &str) -> Result<Self, ClientError> {
        let target = Target::parse(target, 25).map_err(ConnectError::from)?;
        let session = engine::Config {
            tls: TlsPolicy::None,
            ..engine::Config::default()
        };
        Self::connect(ConnectOptions {
            target,
            session,
            tls: TlsSettings::default(),
            connect_timeout: Duration::from_secs(30),
        })
    }

    /// Connects with full options and waits until the session is ready (EHLO, TLS, AUTH).
    ///
    /// With `PipeliningPolicy::Require` the session is kept even when the server does not
    /// advertise PIPELINING, and — as in the seed module — every `pipeline` call then
    /// returns false with the warning in `errors()[0]`, sending nothing.
    pub fn connect(mut opts: ConnectOptions) -> Result<Self, ClientError> {
        opts.session.transcript = true;
        let require_pipelining = opts.session.pipelining == PipeliningPolicy::Require;
        if require_pipelining {
            opts.session.pipelining = PipeliningPolicy::Auto;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Runtime(e.to_string()))?;
        let conn = rt.block_on(Connection::open(&opts))?;
        let mut p = Self {
            rt,
            conn,
            next_id: 0,
            codes: Vec::new(),
            messages: Vec::new(),
            sent: Vec::new(),
            errors: Vec::new(),
            recipients: Recipients::default(),
            raw_reply: None,
            closed: None,
            require_pipelining,
            envelopes: HashMap::new(),
        };
        p.drive();
        if let Some(c) = p.closed.take() {
            return Err(c.map_or(ClientError::Closed, ClientError::Session));
        }
        Ok(p)
    }

    /// True when the server advertised PIPELINING (otherwise every call runs lock-step).
    pub fn pipelining(&self) -> bool {
        self.conn.session_ref().pipelining()
    }

    /// The server's capabilities.
    pub fn capabilities(&self) -> &engine::Capabilities {
        self.conn.session_ref().capabilities()
    }

    /// Sends MAIL, RCPT… and DATA for `env` in one group together with the previous
    /// message's body, and reads the replies of that exchange. False on any error at all
    /// in the exchange it completes — even when the message still went to some recipients.
    pub fn pipeline(&mut self, env: &Envelope) -> bool {
        self.reset();
        if self.closed.is_some() {
            return self.closed_error();
        }
        if self.require_pipelining && !self.pipelining() {
            self.errors.push(PipeError {
                command: String::new(),
                code: 0,
                message: "server does not advertise PIPELINING; nothing was sent".into(),
            });
            return false;
        }
        self.next_id += 1;
        self.envelopes.insert(self.next_id, env.to.clone());
        let msg = Message {
            dsn: None,
            id: self.next_id,
            from: env.from.clone(),
            to: env.to.clone(),
            data: env.data.clone(),
        };
        self.conn.session().send(msg);
        self.drive();
        self.errors.is_empty()
    }

    /// Sends the held body, reads every outstanding reply. False on any error.
    pub fn flush(&mut self) -> bool {
        self.reset();
        if self.closed.is_some() {
            return self.closed_error();
        }
        self.conn.session().flush();
        self.drive();
        self.errors.is_empty()
    }

    /// Reply codes of the last `pipeline`/`flush`, in order.
    pub fn codes(&self) -> &[u16] {
        &self.codes
    }

    /// Reply lines of the last call, one entry per reply.
    pub fn messages(&self) -> &[Vec<String>] {
        &self.messages
    }

    /// Commands sent in the last call, one per reply (secrets redacted).
    pub fn sent(&self) -> &[String] {
        &self.sent
    }

    /// Every failed exchange of the last call.
    pub fn errors(&self) -> &[PipeError] {
        &self.errors
    }

    /// Accepted, succeeded and failed recipients of the last call.
    pub fn recipients(&self) -> &Recipients {
        &self.recipients
    }

    /// Recipients whose message the server took, as reported by the last call.
    pub fn rcpts_succeeded(&self) -> &[String] {
        &self.recipients.succeeded
    }

    /// Recipients that failed, as reported by the last call.
    pub fn rcpts_failed(&self) -> &[String] {
        &self.recipients.failed
    }

    /// Round trips used so far, and what lock-step SMTP would have needed.
    pub fn round_trips(&self) -> RoundTrips {
        self.conn.session_ref().round_trips()
    }

    /// Lock-step `MAIL FROM:<from>`.
    pub fn mail(&mut self, from: &str) -> Result<Reply, ClientError> {
        self.raw(RawCommand::Mail(from.into()))
    }

    /// Lock-step `RCPT TO:<to>`.
    pub fn rcpt(&mut self, to: &str) -> Result<Reply, ClientError> {
        self.raw(RawCommand::Rcpt(to.into()))
    }

    /// Lock-step `DATA`, then (after 354) the body and its final dot; returns the last reply.
    pub fn data(&mut self, body: &[u8]) -> Result<Reply, ClientError> {
        let r = self.raw(RawCommand::Data)?;
        if r.code != 354 {
            return Ok(r);
        }
        self.raw(RawCommand::Body(body.to_vec()))
    }

    /// Lock-step `RSET`.
    pub fn rset(&mut self) -> Result<Reply, ClientError> {
        self.raw(RawCommand::Rset)
    }

    /// Sends what is held, then QUIT, and closes.
    pub fn quit(&mut self) -> Result<(), ClientError> {
        if self.closed.is_none() {
            self.conn.session().quit();
            self.drive();
        }
        self.rt.block_on(self.conn.shutdown());
        match self.closed.take() {
            Some(Some(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn raw(&mut self, cmd: RawCommand) -> Result<Reply, ClientError> {
        self.reset();
        if let Some(c) = &self.closed {
            return Err(c.clone().map_or(ClientError::Closed, ClientError::Session));
        }
        self.raw_reply = None;
        self.conn.session().command(cmd);
        self.drive();
        match (self.raw_reply.take(), &self.closed) {
            (Some(r), _) => Ok(r),
            (None, Some(c)) => Err(c.clone().map_or(ClientError::Closed, ClientError::Session)),
            (None, None) => Err(ClientError::Closed),
        }
    }

    fn reset(&mut self) {
        self.codes.clear();
        self.messages.clear();
        self.sent.clear();
        self.errors.clear();
        self.recipients = Recipients::default();
    }

    fn closed_error(&mut self) -> bool {
        let message = match &self.closed {
            Some(Some(e)) => e.to_string(),
            _ => "session is closed".to_string(),
        };
        self.errors.push(PipeError {
            command: String::new(),
            code: 0,
            message,
        });
        false
    }

    /// Runs I/O until the engine waits for the caller (nothing to send, no reply expected),
    /// a raw reply arrived, or the session closed.
    fn drive(&mut self) {
        self.rt.block_on(self.conn.settle());
        self.collect();
    }

    fn collect(&mut self) {
        // Errors from replies that refused a command for its place in the pipeline: when
        // the session stepped down, it sends those messages again and their own outcomes
        // follow, so these are not errors of the call (issue 11).
        let mut refusals = Vec::new();
        let mut stepped_down = false;
        while let Some(ev) = self.conn.session().poll_event() {
            match ev {
                Event::SteppedDown(_) => stepped_down = true,
                Event::Exchange(x) => {
                    if x.verb.is_none() {
                        continue; // the greeting belongs to no call
                    }
                    if let Some((id, index)) = x.recipient.filter(|_| x.ok)
                        && let Some(addr) = self.envelopes.get(&id).and_then(|to| to.get(index))
                    {
                        self.recipients.accepted.push(addr.clone());
                    }
                    if !x.ok {
                        if refuses_sequence(&x.reply) {
                            refusals.push(self.errors.len());
                        }
                        self.errors.push(PipeError {
                            command: x.command.clone(),
                            code: x.reply.code,
                            message: x.reply.text(),
                        });
                    }
                    self.codes.push(x.reply.code);
                    self.messages.push(x.reply.lines);
                    self.sent.push(x.command);
                }
                Event::Recipient(o) => match o.delivery {
                    Delivery::Sent => self.recipients.succeeded.push(o.address),
                    _ => {
                        if o.reply.is_none() {
                            // A local decision or a lost session: no exchange says so.
                            self.errors.push(PipeError {
                                command: String::new(),
                                code: 0,
                                message: o.text(),
                            });
                        }
                        self.recipients.failed.push(o.address);
                    }
                },
                Event::MessageDone(id) => {
                    self.envelopes.remove(&id);
                }
                Event::RawReply(_, r) => self.raw_reply = Some(r),
                Event::Closed(e) => {
                    if let Some(err) = &e {
                        self.errors.push(PipeError {
                            command: String::new(),
                            code: 0,
                            message: err.to_string(),
                        });
                    }
                    self.closed = Some(e);
                }
                _ => {}
            }
        }
        if stepped_down {
            let mut i = 0;
            self.errors.retain(|_| {
                i += 1;
                !refusals.contains(&(i - 1))
            });
        }
    }
}

/// 503, or a 5yz with the enhanced code 5.5.1: a command refused for its place in the
/// sequence (as the engine classifies it for its step-down).
fn refuses_sequence(r: &Reply) -> bool {
    r.code == 503
        || r.is_permanent()
            && r.enhanced
                .is_some_and(|e| e.class == 5 && e.subject == 5 && e.detail == 1)
}
