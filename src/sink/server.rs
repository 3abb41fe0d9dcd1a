//! The sink's SMTP server as a sans-IO state machine: no sockets, no clock reads, no threads.
//!
//! The caller (the tokio wrapper in [`crate::sink`], or the in-memory [`crate::sink::pair`]
//! harness) owns the connection and the clock, like the client [`crate::engine::Session`]:
//!
//! ```text
//!            bytes read                                   bytes to write
//! socket ──► handle_input(&[u8], now) ──► Server ──► poll_transmit(now, &mut Vec<u8>) ──► socket
//!            handle_timeout(now)           │  ▲      poll_timeout() -> Option<Instant>
//!                                          ▼  │
//!                          poll_event() -> Deliver / RecipientRejected / StartTls
//!                          handle_stored(result, now), handle_tls_established(now)
//! ```
//!
//! Call order after each input: drain [`Server::poll_event`] (answering every
//! [`Event::Deliver`] with [`Server::handle_stored`], which may produce more events), then
//! write everything [`Server::poll_transmit`] returns, then check [`Server::is_closed`] (write
//! the rest, half-close) and [`Server::poll_timeout`]. While a delivery is pending, input is
//! buffered but not processed, so replies stay in order.
//!
//! The protocol, faults and storage rules are those of the [sink](crate::sink).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use super::config::AfterDot;
use super::config::SinkConfig;
use super::fault::Fault;
pub use super::proto::Verb;
use super::proto::{self, DotDecoder, LineScan};

/// A client that sends nothing (and reads nothing) for this long gets `421 4.4.2` and is
/// disconnected (RFC 5321 §4.5.3.2.7 suggests 5 minutes).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Message size limit when no SIZE is configured.
pub(super) const UNLIMITED_SIZE: u64 = 64 * 1024 * 1024;
/// The reply to every command pipelined behind an end of data with [`AfterDot::Refuse`].
pub const REFUSED_AFTER_DOT: &str =
    "503 5.5.1 Bad sequence of commands - pipelined after end of DATA";

/// A message the server accepted, to be stored by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The MAIL FROM address, without angle brackets (empty for `<>`).
    pub from: String,
    /// Recipients whose RCPT got a 2xx reply, in order.
    pub rcpts: Vec<String>,
    /// The content exactly as received (DATA: dot-unstuffed, without the final `.CRLF`).
    pub data: Vec<u8>,
    /// Whether it came with BDAT (else DATA).
    pub via_bdat: bool,
}

/// Whether the caller stored a delivered message ([`Server::handle_stored`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored under this queue id (named in the `250` reply).
    Queued(String),
    /// Storing failed (e.g. a Maildir write error): the reply is `451 4.3.0`.
    Failed,
}

/// What the server asks of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete message to store. Answer with [`Server::handle_stored`]; until then no input
    /// is processed and the end of data is unanswered.
    Deliver(Envelope),
    /// An RCPT was answered with a 4xx or 5xx reply (for the counters).
    RecipientRejected,
    /// The `220` to STARTTLS is in the output: write it, run the TLS handshake, then call
    /// [`Server::handle_tls_established`]. Input received before the handshake was discarded
    /// (RFC 3207 §4.2).
    StartTls,
}

/// What the input framing expects next.
pub(super) enum Mode {
    /// A command line.
    Command,
    /// The rest of an over-long command line, discarded.
    LongLine,
    /// A DATA body.
    Data(DotDecoder),
    /// The octets of a BDAT chunk; `keep` when they belong to a message being built.
    Chunk {
        remaining: u64,
        size: u64,
        last: bool,
        keep: bool,
    },
    /// The response to `334` after `AUTH PLAIN`.
    AuthPlain,
    /// The user name after `AUTH LOGIN`.
    AuthLoginUser,
    /// The password after `AUTH LOGIN`, for this user name.
    AuthLoginPass(Vec<u8>),
    /// The initial response after `AUTH XOAUTH2` (false) or `AUTH OAUTHBEARER` (true).
    AuthOAuth(bool),
    /// The client's answer to an OAuth error challenge; a 535 follows whatever it is.
    AuthOAuthError,
}

/// A reply-bearing unit of client input (see [`Fault`] for how they are counted).
enum Unit {
    /// A command line or AUTH continuation, without its line end.
    Line(Vec<u8>),
    /// An over-long command line (now discarded).
    TooLong,
    /// The final dot of a DATA body.
    Dot,
    /// A BDAT command whose chunk has been consumed.
    Chunk { size: u64, last: bool },
}

/// A mail transaction.
pub(super) struct Txn {
    pub(super) from: String,
    pub(super) smtputf8: bool,
    pub(super) rcpts: Vec<String>,
    pub(super) body: Vec<u8>,
    pub(super) oversize: bool,
    pub(super) bdat: bool,
}

/// How the reply to a pending delivery is to be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Sent whole.
    None,
    /// Not sent at all, then close ([`Fault::DropBeforeReply`] with `stored`).
    Drop,
    /// Half of it sent, then close ([`Fault::MidReplyDrop`]).
    Half,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Processing input.
    Open,
    /// Waiting for [`Server::handle_stored`].
    Delivering { cut: Cut, close_after: bool },
    /// Waiting for [`Server::handle_tls_established`].
    TlsHandshake,
    /// Done: write the output, then half-close.
    Closing,
    /// Answering nothing more ([`Fault::Stall`]).
    Stalled,
}

/// One SMTP server session. See the [module documentation](self).
pub struct Server {
    pub(super) cfg: Arc<SinkConfig>,
    faults: Vec<Fault>,
    /// Input still allowed by [`Fault::DropAfterInputBytes`].
    input_left: Option<u64>,
    dribble: bool,
    inbuf: Vec<u8>,
    pos: usize,
    /// Absolute stream offset of `inbuf[0]`.
    base: u64,
    /// Absolute offset where the unit being framed starts.
    unit_start: u64,
    /// Units starting before this absolute offset arrived behind an end of data.
    refuse_until: u64,
    out: Vec<u8>,
    out_pos: usize,
    events: VecDeque<Event>,
    unit_index: u64,
    pub(super) mode: Mode,
    state: State,
    pub(super) helo: bool,
    pub(super) tls_active: bool,
    pub(super) authenticated: bool,
    pub(super) txn: Option<Txn>,
    pub(super) size_limit: u64,
    last_activity: Instant,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("state", &self.state)
            .field("unit_index", &self.unit_index)
            .field("buffered", &(self.inbuf.len() - self.pos))
            .field("output", &(self.out.len() - self.out_pos))
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A session for a newly accepted connection; `session` (0-based) selects its faults from
    /// [`SinkConfig::faults`]. The greeting is ready in [`Server::poll_transmit`].
    pub fn new(cfg: Arc<SinkConfig>, session: u64, now: Instant) -> Self {
        let faults = cfg
            .faults
            .as_ref()
            .map(|plan| plan.for_session(session).to_vec())
            .unwrap_or_default();
        let input_left = faults.iter().find_map(|f| match f {
            Fault::DropAfterInputBytes(n) => Some(*n),
            _ => None,
        });
        let dribble = faults.contains(&Fault::DribbleReplies);
        let size_limit = cfg.size.unwrap_or(UNLIMITED_SIZE);
        let mut s = Self {
            cfg,
            faults,
            input_left,
            dribble,
            inbuf: Vec::new(),
            pos: 0,
            base: 0,
            unit_start: 0,
            refuse_until: 0,
            out: Vec::with_capacity(1024),
            out_pos: 0,
            events: VecDeque::new(),
            unit_index: 0,
            mode: Mode::Command,
            state: State::Open,
            helo: false,
            tls_active: false,
            authenticated: false,
            txn: None,
            size_limit,
            last_activity: now,
        };
        let greeting = format!("220 {} ESMTP pipemail-sink", s.cfg.hostname);
        s.reply(&greeting);
        s.process();
        s
    }

    // ----- I/O contract -------------------------------------------------------------------

    /// Feeds bytes received from the client and processes every complete unit.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() {
            return;
        }
        match self.state {
            State::Open | State::Delivering { .. } => {}
            // Discarded: after a stall or close, and between STARTTLS and the handshake.
            State::TlsHandshake | State::Closing | State::Stalled => return,
        }
        self.last_activity = now;
        let take = match &mut self.input_left {
            Some(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                *left -= n as u64;
                n
            }
            None => bytes.len(),
        };
        if self.pos > 0 && self.pos * 2 >= self.inbuf.len() {
            self.inbuf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        self.inbuf.extend_from_slice(&bytes[..take]);
        self.process();
    }

    /// The caller stored, or failed to store, the message of the last [`Event::Deliver`].
    /// Answers it and goes on with the buffered input.
    pub fn handle_stored(&mut self, result: Stored, now: Instant) {
        let State::Delivering { cut, close_after } = self.state else {
            return;
        };
        self.last_activity = now;
        self.state = State::Open;
        let mark = self.out.len();
        match result {
            Stored::Queued(queue_id) => {
                self.reply(&format!("250 2.0.0 Ok: queued as {queue_id}"));
            }
            Stored::Failed => self.reply("451 4.3.0 Error: queue file write error"),
        }
        match cut {
            Cut::None => {}
            Cut::Drop => self.out.truncate(mark),
            Cut::Half => self.cut_half(mark),
        }
        if cut != Cut::None || close_after {
            self.state = State::Closing;
        }
        self.process();
    }

    /// The TLS handshake asked for by [`Event::StartTls`] succeeded: the session starts over
    /// (RFC 3207 §4.2), unit counting goes on.
    pub fn handle_tls_established(&mut self, now: Instant) {
        if self.state != State::TlsHandshake {
            return;
        }
        self.state = State::Open;
        self.last_activity = now;
        self.tls_active = true;
        self.helo = false;
        self.authenticated = false;
        self.txn = None;
        self.mode = Mode::Command;
    }

    /// Past the idle deadline ([`Server::poll_timeout`]): answers `421 4.4.2` and closes.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            let text = format!("421 4.4.2 {} Error: timeout exceeded", self.cfg.hostname);
            self.reply(&text);
            self.state = State::Closing;
        }
    }

    /// When [`Server::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state == State::Open).then(|| self.last_activity + IDLE_TIMEOUT)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends the replies ready to go to `out` (one byte per call with
    /// [`Fault::DribbleReplies`]: write each call's bytes separately). Returns the count.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        let ready = &self.out[self.out_pos..];
        let n = if self.dribble {
            ready.len().min(1)
        } else {
            ready.len()
        };
        out.extend_from_slice(&ready[..n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        if n > 0 {
            self.last_activity = now;
        }
        n
    }

    /// True once the server is done with the connection: write what [`Server::poll_transmit`]
    /// still returns, half-close, and discard further input.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closing
    }

    /// True once a [`Fault::Stall`] took effect: the server answers nothing more; the
    /// connection stays open until the client closes it.
    pub fn is_stalled(&self) -> bool {
        self.state == State::Stalled
    }

    /// True between [`Event::StartTls`] and [`Server::handle_tls_established`] (false when a
    /// fault closed the connection instead).
    pub fn wants_tls(&self) -> bool {
        self.state == State::TlsHandshake
    }

    /// True while a message waits for [`Server::handle_stored`].
    pub fn is_delivering(&self) -> bool {
        matches!(self.state, State::Delivering { .. })
    }

    /// Whether a `Deliver` event, `StartTls` event or reply is waiting for the caller.
    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len() || !self.events.is_empty()
    }

    // ----- processing ---------------------------------------------------------------------

    pub(super) fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub(super) fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }

    /// Keeps the first half (at least one byte) of what was produced since `mark`.
    fn cut_half(&mut self, mark: usize) {
        let len = self.out.len() - mark;
        self.out.truncate(mark + (len / 2).max(1).min(len));
    }

    fn process(&mut self) {
        while self.state == State::Open {
            match self.next_unit() {
                Some(unit) => self.complete(unit),
                None => {
                    if self.input_left == Some(0) {
                        self.state = State::Closing;
                    }
                    break;
                }
            }
        }
    }

    fn consumed(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn received(&self) -> u64 {
        self.base + self.inbuf.len() as u64
    }

    /// Frames the next complete unit from the buffered input, if there is one. Body and chunk
    /// octets are moved into the transaction as they are framed.
    fn next_unit(&mut self) -> Option<Unit> {
        loop {
            let buf = &self.inbuf[self.pos..];
            match &mut self.mode {
                Mode::Command
                | Mode::AuthPlain
                | Mode::AuthLoginUser
                | Mode::AuthLoginPass(_)
                | Mode::AuthOAuth(_)
                | Mode::AuthOAuthError => {
                    self.unit_start = self.base + self.pos as u64;
                    match proto::scan_line(buf) {
                        LineScan::Line { len, consumed } => {
                            let line = buf[..len].to_vec();
                            self.pos += consumed;
                            if matches!(self.mode, Mode::Command)
                                && let Some(chunk) = self.bdat_start(&line)
                            {
                                self.mode = chunk;
                                continue;
                            }
                            return Some(Unit::Line(line));
                        }
                        LineScan::TooLong => {
                            // The first MAX_LINE octets hold no line end; drop them and
                            // discard the rest of the line as it comes.
                            self.pos += proto::MAX_LINE;
                            self.mode = Mode::LongLine;
                        }
                        LineScan::Incomplete => return None,
                    }
                }
                Mode::LongLine => {
                    let (n, ended) = proto::skip_line(buf);
                    self.pos += n;
                    if ended {
                        self.mode = Mode::Command;
                        return Some(Unit::TooLong);
                    }
                    return None;
                }
                Mode::Data(decoder) => {
                    let txn = &mut self.txn;
                    let limit = self.size_limit;
                    let (n, done) = decoder.feed(buf, |bytes| append(txn, bytes, limit));
                    self.pos += n;
                    if done {
                        self.mode = Mode::Command;
                        return Some(Unit::Dot);
                    }
                    return None;
                }
                Mode::Chunk {
                    remaining,
                    size,
                    last,
                    keep,
                } => {
                    if *remaining == 0 {
                        let unit = Unit::Chunk {
                            size: *size,
                            last: *last,
                        };
                        self.mode = Mode::Command;
                        return Some(unit);
                    }
                    if buf.is_empty() {
                        return None;
                    }
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    if *keep {
                        append(&mut self.txn, &buf[..n], self.size_limit);
                    }
                    *remaining -= n as u64;
                    self.pos += n;
                }
            }
        }
    }

    /// If `line` is a well-formed `BDAT n [LAST]`, the mode that consumes its chunk.
    fn bdat_start(&self, line: &[u8]) -> Option<Mode> {
        let (verb, args) = Verb::split(line);
        if verb != Verb::Bdat {
            return None;
        }
        let (size, last) = proto::parse_bdat(args)?;
        let refused = self.unit_start < self.refuse_until;
        let keep = !refused
            && self.cfg.chunking
            && self.helo
            && self
                .txn
                .as_ref()
                .is_some_and(|t| !t.rcpts.is_empty() && !t.oversize);
        Some(Mode::Chunk {
            remaining: size,
            size,
            last,
            keep,
        })
    }

    /// The fault that applies to unit `index`, if any.
    fn fault_for(&self, index: u64) -> Option<Fault> {
        self.faults.iter().copied().find(|f| match *f {
            Fault::DropBeforeReply { command, .. }
            | Fault::Reply421 { command }
            | Fault::ReplyCode { command, .. }
            | Fault::MidReplyDrop { command } => command == index,
            Fault::Stall { command } => command <= index,
            Fault::DropAfterInputBytes(_) | Fault::DribbleReplies => false,
        })
    }

    /// Handles a complete unit, applying the fault scheduled for it.
    fn complete(&mut self, unit: Unit) {
        let index = self.unit_index;
        self.unit_index += 1;
        let ends_data = matches!(unit, Unit::Dot | Unit::Chunk { last: true, .. });
        let refused = !matches!(unit, Unit::Dot) && self.unit_start < self.refuse_until;
        // Whether more input was already here when this end of data was processed.
        let followed = ends_data && !refused && self.received() > self.consumed();
        if followed && self.cfg.after_dot == AfterDot::Refuse {
            self.refuse_until = self.received();
        }
        let close_after = followed && self.cfg.after_dot == AfterDot::Drop;
        match self.fault_for(index) {
            None | Some(Fault::DropAfterInputBytes(_) | Fault::DribbleReplies) => {
                if refused {
                    self.abandon(&unit);
                    self.reply(REFUSED_AFTER_DOT);
                } else {
                    self.execute(unit, Cut::None, close_after);
                }
            }
            Some(Fault::Stall { .. }) => self.state = State::Stalled,
            Some(Fault::Reply421 { .. }) => {
                self.abandon(&unit);
                let text = format!(
                    "421 4.3.0 {} Service not available, closing transmission channel",
                    self.cfg.hostname
                );
                self.reply(&text);
                self.state = State::Closing;
            }
            Some(Fault::ReplyCode { code, .. }) => {
                self.abandon(&unit);
                self.reply(&format!(
                    "{code} {}.0.0 Error: injected failure",
                    code / 100
                ));
                if close_after {
                    self.state = State::Closing;
                }
            }
            Some(Fault::DropBeforeReply { stored, .. }) => {
                if stored && !refused {
                    let mark = self.out.len();
                    self.execute(unit, Cut::Drop, false);
                    if !self.is_delivering() {
                        self.out.truncate(mark);
                    }
                } else {
                    self.abandon(&unit);
                }
                if !self.is_delivering() {
                    self.state = State::Closing;
                }
            }
            Some(Fault::MidReplyDrop { .. }) => {
                let mark = self.out.len();
                if refused {
                    self.abandon(&unit);
                    self.reply(REFUSED_AFTER_DOT);
                } else {
                    self.execute(unit, Cut::Half, false);
                }
                if !self.is_delivering() {
                    self.cut_half(mark);
                    self.state = State::Closing;
                }
            }
        }
    }

    /// Undoes a unit that is answered without being executed.
    fn abandon(&mut self, unit: &Unit) {
        match unit {
            Unit::Line(line) => match self.mode {
                Mode::Command => {
                    if Verb::split(line).0 == Verb::Rcpt {
                        self.event(Event::RecipientRejected);
                    }
                }
                // An AUTH continuation: the exchange ends unauthenticated.
                _ => self.mode = Mode::Command,
            },
            Unit::TooLong => {}
            Unit::Dot | Unit::Chunk { .. } => self.txn = None,
        }
    }

    /// Executes a unit. A completed message puts the server in the delivering state, where
    /// `cut` and `close_after` apply once it is stored; otherwise `close_after` applies now.
    fn execute(&mut self, unit: Unit, cut: Cut, close_after: bool) {
        let message = match unit {
            Unit::Line(line) => {
                if matches!(self.mode, Mode::Command) {
                    self.command(&line);
                } else {
                    self.auth_continue(&line);
                }
                None
            }
            Unit::TooLong => {
                self.reply("500 5.5.2 Error: line too long");
                None
            }
            Unit::Dot => self.finish_data(),
            Unit::Chunk { size, last } => self.finish_chunk(size, last),
        };
        match message {
            Some(envelope) => {
                self.event(Event::Deliver(envelope));
                self.state = State::Delivering { cut, close_after };
            }
            None if close_after => self.state = State::Closing,
            None => {}
        }
    }

    /// The command asked for a TLS handshake (its `220` is in the output).
    pub(super) fn begin_tls(&mut self) {
        // Whatever the client sent after STARTTLS and before the handshake is discarded
        // (RFC 3207 §4.2; a pipelined command here would be injection).
        self.base += self.inbuf.len() as u64;
        self.inbuf.clear();
        self.pos = 0;
        self.state = State::TlsHandshake;
        self.event(Event::StartTls);
    }

    /// The client said QUIT (its `221` is in the output).
    pub(super) fn quit(&mut self) {
        self.state = State::Closing;
    }
}

/// Appends content to the message being built, or marks it oversize (dropping what it had).
fn append(txn: &mut Option<Txn>, bytes: &[u8], limit: u64) {
    if let Some(t) = txn {
        if t.oversize {
            return;
        }
        if (t.body.len() + bytes.len()) as u64 > limit {
            t.oversize = true;
            t.body = Vec::new();
        } else {
            t.body.extend_from_slice(bytes);
        }
    }
}
