//! The client session: a deterministic state machine with a `handle_*` / `poll_*` API.
//!
//! ```text
//!            bytes from server                      bytes to server
//!   socket ──────────────────► handle_input()      poll_transmit() ──────────► socket
//!                                   │                    ▲
//!                                   ▼                    │
//!                            ┌──────────────────────────────────┐
//!   send(message) ─────────► │ Session: reply parser, in-flight │ ───► poll_event()
//!   flush(), quit() ───────► │ FIFO, pipelining planner         │      (outcomes, TLS
//!   handle_timeout(now) ───► └──────────────────────────────────┘       requests, close)
//!                                        │
//!                                        └──────────────────────────► poll_timeout()
//! ```
//!
//! Call order for a driver: after connecting, loop { `poll_transmit` and write what it
//! appended (one write per call); drain `poll_event`; read from the socket and pass the bytes
//! to `handle_input` (or `handle_eof`); when `poll_timeout` passes, call `handle_timeout` }.
//! The driver must keep reading while it writes (RFC 2920 §3.1). [`Session::state`] says
//! what the session waits for.
//!
//! Pipelining (RFC 2920, see [`super::pipeline`]): in DATA mode a message's body and final
//! dot are held until the next message's envelope (or a flush, or QUIT) can go in the same
//! write, so a stream of messages costs one round trip each. In BDAT mode (PIPELINING and
//! CHUNKING, RFC 3030) whole messages go out back to back, bounded by a window of messages
//! and octets in flight. Without PIPELINING every group has one command. The group planner
//! is in `planner.rs`, the handshake (greeting, EHLO/HELO, STARTTLS, AUTH) in
//! `handshake.rs`; this file holds the state, the public API and the reply dispatch.

use std::collections::VecDeque;
use std::time::Instant;

use super::command::{RawCommand, Verb};
use super::config::{Config, TlsPolicy};
use super::ehlo::{Capabilities, Extensions};
use super::error::{ProtocolError, SessionError};
use super::event::{Event, Exchange, RoundTrips};
use super::outcome::{Delivery, Message, MessageId, Msg, MsgState, RcptOutcome, Stage};
use super::pipeline::{Awaiting, InFlight, PipeliningLevel, refuses_sequence};
use super::reply::{Reply, ReplyParser};

/// Where the handshake or the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    TlsHandshake,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass,
    AuthLoginDone,
    /// XOAUTH2 or OAUTHBEARER sent; a 334 is the server's error challenge.
    AuthOAuth,
    /// The error challenge answered; the final (negative) reply comes next.
    AuthOAuthError,
    Ready,
    Quitting,
    Closed,
}

/// What the session waits for, for drivers and callers that must decide what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Greeting, EHLO/HELO, STARTTLS or AUTH in progress: no messages go out yet.
    Handshake,
    /// The driver must run the TLS handshake now ([`Event::StartTls`]), then call
    /// [`Session::handle_tls_established`].
    TlsHandshake,
    /// Ready, and nothing queued, in flight or held: the session waits for the caller
    /// (send a message, or quit).
    Idle,
    /// Ready; a message body is held back until the next message or a flush (DATA mode).
    Holding,
    /// Ready and busy: commands are in flight or messages queued.
    Busy,
    /// QUIT is on its way.
    Quitting,
    /// Over.
    Closed,
}

/// The SMTP client session. See the module docs for the I/O contract.
#[derive(Debug)]
pub struct Session {
    pub(super) cfg: Config,
    pub(super) phase: Phase,
    pub(super) caps: Capabilities,
    pub(super) tls_active: bool,
    pub(super) parser: ReplyParser,
    pub(super) in_flight: InFlight,
    pub(super) queue: VecDeque<Message>,
    /// Messages refused for a pipelining reason, sent again before `queue`.
    pub(super) retry: VecDeque<Message>,
    pub(super) raw: VecDeque<RawCommand>,
    pub(super) active: VecDeque<Msg>,
    pub(super) next_seq: u64,
    pub(super) events: VecDeque<Event>,
    pub(super) rset_needed: bool,
    /// The server may still hold a failed transaction open (see `stepdown.rs`).
    pub(super) txn_open: bool,
    /// The server kept a failed transaction open once: RSET precedes every MAIL written
    /// behind an unanswered end of data.
    pub(super) rset_before_mail: bool,
    pub(super) flush_requested: bool,
    pub(super) quit_requested: bool,
    /// Error to report once QUIT is answered (a refusal decided locally).
    pub(super) quit_error: Option<SessionError>,
    rt: RoundTrips,
    pub(super) deadline: Option<Instant>,
    pub(super) committed_octets: usize,
    /// The server said 421, or (set at EOF) its last reply refused a command that is not an
    /// end of data: nothing written after that command was executed (see `closing.rs`).
    pub(super) closing_reply: bool,
    /// The last reply refused (4yz/5yz) a command other than RCPT, an end of data or QUIT
    /// after the handshake: should the server close now, it was a closing reply.
    pub(super) last_refusal: Option<Reply>,
    /// An ungated RSET was refused: nothing more is written; the next reply ends the session
    /// with this error, and an EOF makes the refusal a closing reply.
    pub(super) rset_refused: Option<SessionError>,
    /// Non-mail commands of the handshake (EHLO, HELO, STARTTLS): see `resets.rs`.
    pub(super) nonmail: u32,
    /// Transactions of this session that ended without the server receiving the message.
    pub(super) refused_txns: u32,
    /// The RSET budget is spent: no more messages are written (see `resets.rs`).
    pub(super) budget_spent: bool,
    /// Handshake commands decided while handling replies, sent by the next `poll_transmit`.
    pub(super) hs_out: Vec<u8>,
    /// Messages whose final dot / `BDAT LAST` the last `poll_transmit` appended.
    pub(super) committed: Vec<MessageId>,
    /// The last reply was a 2xx to a final dot / `BDAT … LAST`.
    pub(super) last_reply_eod_ok: bool,
    pub(super) level: PipeliningLevel,
    /// The stage a message would fail at if the session ended now (TLS, AUTH, connect).
    pub(super) handshake_stage: Stage,
}

impl Session {
    /// A session for a freshly opened connection (after the TLS handshake for `Implicit`).
    /// `now` starts the greeting timeout.
    pub fn new(cfg: Config, now: Instant) -> Self {
        Self {
            deadline: Some(now + cfg.timeouts.greeting),
            tls_active: cfg.tls == TlsPolicy::Implicit,
            level: cfg.pipelining_level,
            rset_before_mail: cfg.rset_before_mail,
            cfg,
            phase: Phase::Greeting,
            caps: Capabilities::default(),
            parser: ReplyParser::new(),
            in_flight: InFlight::new(),
            queue: VecDeque::new(),
            retry: VecDeque::new(),
            raw: VecDeque::new(),
            active: VecDeque::new(),
            next_seq: 0,
            events: VecDeque::new(),
            rset_needed: false,
            txn_open: false,
            flush_requested: false,
            quit_requested: false,
            quit_error: None,
            rt: RoundTrips::default(),
            committed_octets: 0,
            closing_reply: false,
            last_refusal: None,
            rset_refused: None,
            nonmail: 0,
            refused_txns: 0,
            budget_spent: false,
            hs_out: Vec::new(),
            committed: Vec::new(),
            last_reply_eod_ok: false,
            handshake_stage: Stage::Connect,
        }
    }

    // ----- caller API -------------------------------------------------------------------

    /// Queues a message. Outcomes arrive as [`Event::Recipient`] events.
    pub fn send(&mut self, msg: Message) {
        if self.phase == Phase::Closed || self.quit_requested {
            let note = "session is closing; message not sent";
            self.fail_unsent(msg, Stage::Connect, note);
            return;
        }
        self.queue.push_back(msg);
    }

    /// Queues one lock-step command; its reply comes as [`Event::RawReply`].
    pub fn command(&mut self, cmd: RawCommand) {
        self.raw.push_back(cmd);
    }

    /// Sends a held body now instead of waiting for the next message.
    pub fn flush(&mut self) {
        self.flush_requested = true;
    }

    /// Ends the session with QUIT once every queued message has gone out.
    pub fn quit(&mut self) {
        self.quit_requested = true;
    }

    /// What the session waits for.
    pub fn state(&self) -> SessionState {
        match self.phase {
            Phase::Closed => SessionState::Closed,
            Phase::Quitting => SessionState::Quitting,
            Phase::TlsHandshake => SessionState::TlsHandshake,
            Phase::Ready if self.is_idle() => SessionState::Idle,
            Phase::Ready if self.is_holding() => SessionState::Holding,
            Phase::Ready => SessionState::Busy,
            _ => SessionState::Handshake,
        }
    }

    /// True while the session would take another message without growing past its window.
    pub fn wants_message(&self) -> bool {
        if matches!(self.phase, Phase::Closed | Phase::Quitting) || self.quit_requested {
            return false;
        }
        let cross = self.level == PipeliningLevel::CrossMessage;
        let target = if self.phase == Phase::Ready && self.bdat_mode() && cross {
            self.window_target()
        } else {
            1
        };
        self.messages_pending() < target + usize::from(!self.bdat_mode() || !cross)
    }

    /// True when nothing is queued, in flight or held and QUIT was not asked for: the session
    /// waits for the caller.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Ready
            && self.in_flight.is_empty()
            && self.queue.is_empty()
            && self.retry.is_empty()
            && self.active.is_empty()
            && self.raw.is_empty()
            && !self.quit_requested
    }

    /// True when a body is held back waiting for the next message or a flush.
    pub fn is_holding(&self) -> bool {
        self.in_flight.is_empty() && self.active.iter().any(|m| m.state == MsgState::BodyHeld)
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True once the handshake is done.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// True while the driver must run a TLS handshake (after [`Event::StartTls`]).
    pub fn wants_tls(&self) -> bool {
        self.phase == Phase::TlsHandshake
    }

    /// The latest capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// True when commands are pipelined on this session.
    pub fn pipelining(&self) -> bool {
        self.cfg.pipelining != super::config::PipeliningPolicy::Off
            && self.level < PipeliningLevel::LockStep
            && self.caps.has(Extensions::PIPELINING)
    }

    /// The current pipelining level (it only steps down during a session).
    pub fn pipelining_level(&self) -> PipeliningLevel {
        self.level
    }

    /// True when messages go as pipelined BDAT chunks.
    pub fn bdat_mode(&self) -> bool {
        self.cfg.chunking && self.pipelining() && self.caps.has(Extensions::CHUNKING)
    }

    /// True when the connection is encrypted.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Round trips used so far, and what lock-step SMTP would have used.
    pub fn round_trips(&self) -> RoundTrips {
        self.rt
    }

    /// Commands sent (or about to be) whose replies have not arrived.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Moves the ids of messages whose end (final dot or `BDAT LAST`) went into the output
    /// since the last call into `out`. A driver that keeps a crash journal records them
    /// before writing the bytes: from then on the server may take the message.
    pub fn take_committed(&mut self, out: &mut Vec<MessageId>) {
        out.append(&mut self.committed);
    }

    /// Messages queued or in flight.
    pub fn messages_pending(&self) -> usize {
        self.queue.len() + self.retry.len() + self.active.len()
    }

    // ----- I/O contract -----------------------------------------------------------------

    /// Feeds bytes read from the socket.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.parser.feed(bytes);
        loop {
            if self.phase == Phase::Closed || self.phase == Phase::TlsHandshake {
                break;
            }
            match self.parser.next_reply() {
                Ok(Some(reply)) => self.on_reply(reply, now),
                Ok(None) => break,
                Err(e) => {
                    self.close(Some(SessionError::Protocol(e)));
                    break;
                }
            }
        }
        if self.phase == Phase::TlsHandshake && self.parser.buffered() > 0 {
            self.close(Some(SessionError::Protocol(
                ProtocolError::StartTlsInjection,
            )));
        }
    }

    /// The server closed the connection (read returned 0) or the socket failed. After a
    /// closing reply the messages written behind it are `returned` (see `closing.rs`).
    pub fn handle_eof(&mut self) {
        self.on_eof();
    }

    /// The driver could not read or write: ends the session with that error.
    pub fn handle_io_error(&mut self, err: SessionError) {
        if self.phase != Phase::Closed {
            self.close(Some(err));
        }
    }

    /// The TLS handshake requested by [`Event::StartTls`] succeeded.
    pub fn handle_tls_established(&mut self, _now: Instant) {
        if self.phase == Phase::TlsHandshake {
            self.tls_active = true;
            self.caps = Capabilities::default(); // RFC 3207 §4.2: forget what was said in clear
            self.send_ehlo();
        }
    }

    /// Checks the reply deadline; past it, the session ends with a timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.deadline
            && now >= d
            && self.phase != Phase::Closed
        {
            let err = match self.in_flight.front().map(|p| p.what) {
                Some(Awaiting::Greeting) => SessionError::GreetingTimeout,
                what => SessionError::Timeout(what.map_or(Verb::Noop, Awaiting::verb)),
            };
            self.close(Some(err));
        }
    }

    /// When [`Session::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight.is_empty() {
            None
        } else {
            self.deadline
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends the next group of commands to `out` (the driver writes it in one write).
    /// Returns the number of octets appended.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        let was_waiting = !self.in_flight.is_empty();
        out.append(&mut self.hs_out);
        if self.phase == Phase::Ready || self.phase == Phase::Quitting {
            self.plan(out);
        }
        if !was_waiting && !self.in_flight.is_empty() {
            self.arm(now);
        }
        out.len() - start
    }
}

// ----- replies ----------------------------------------------------------------------------

impl Session {
    fn on_reply(&mut self, reply: Reply, now: Instant) {
        if let Some(e) = self.rset_refused.take() {
            // The server went on after refusing an ungated RSET (see `closing.rs`).
            return self.close(Some(e));
        }
        self.rt.lockstep += 1;
        let Some(p) = self.in_flight.pop() else {
            let e = ProtocolError::UnexpectedReply(reply.to_string());
            return self.close(Some(e.into()));
        };
        self.rt.used = self.in_flight.rounds();
        self.last_reply_eod_ok = p.what.is_end_of_data() && reply.is_positive();
        let verb = p.what.verb();
        if verb == Verb::Bdat {
            // Lock-step SMTP sends this message with DATA: one more wait, for the 354.
            self.rt.lockstep += 1;
        }
        // A 354 only ever answers DATA, and DATA is only ever answered 354 or an error:
        // anything else means replies and commands are out of step.
        let misplaced_354 = reply.code == 354 && verb != Verb::Data;
        let data_positive = verb == Verb::Data && reply.is_positive();
        if misplaced_354 || data_positive {
            let e = ProtocolError::UnexpectedCode { verb, reply };
            return self.close(Some(e.into()));
        }
        if self.cfg.transcript {
            let recipient = match p.what {
                Awaiting::Msg {
                    seq,
                    verb: Verb::Rcpt,
                    rcpt,
                } => self.index_of(seq).map(|i| (self.active[i].id, rcpt)),
                _ => None,
            };
            self.events.push_back(Event::Exchange(Exchange {
                command: p.line.clone().unwrap_or_default(),
                verb: (p.what != Awaiting::Greeting).then_some(verb),
                reply: reply.clone(),
                ok: p.what.reply_ok(&reply),
                recipient,
            }));
        }
        self.last_refusal = ((reply.is_transient() || reply.is_permanent())
            && !p.what.is_end_of_data()
            && !matches!(verb, Verb::Rcpt | Verb::Quit)
            && matches!(self.phase, Phase::Ready | Phase::Quitting))
        .then(|| reply.clone());
        let closing = reply.code == 421;
        if closing {
            self.closing_reply = true;
        }
        match p.what {
            Awaiting::Greeting => self.on_greeting(reply),
            Awaiting::Handshake(v) => self.on_handshake_reply(v, reply),
            Awaiting::Msg { seq, verb, rcpt } => {
                self.before_msg_reply(seq, verb, p.after_eod, p.line, &reply);
                self.on_msg_reply(seq, verb, rcpt, reply);
                self.after_msg_reply(seq, verb, rcpt);
            }
            Awaiting::Rset(gated) => {
                if gated && p.after_eod && refuses_sequence(&reply) {
                    // Nothing followed it in that write: step down and send it again.
                    self.rset_refused_after_eod(p.line, reply);
                } else if reply.is_positive() {
                    self.txn_open = false;
                } else {
                    // The old transaction may still be open; a new MAIL could add to it.
                    let e = ProtocolError::UnexpectedCode {
                        verb: Verb::Rset,
                        reply,
                    };
                    if gated {
                        self.quit_with(e.into());
                    } else if self.in_flight.is_empty() {
                        return self.close(Some(e.into()));
                    } else {
                        // The next envelope is already out: write nothing more (no QUIT,
                        // which a server that took that DATA would read as content); the
                        // next reply ends the session, an EOF makes this a closing reply.
                        self.rset_refused = Some(e.into());
                    }
                }
            }
            Awaiting::Raw(v) => self.events.push_back(Event::RawReply(v, reply)),
            Awaiting::Quit => {
                if p.after_eod && refuses_sequence(&reply) && self.messages_pending() > 0 {
                    // QUIT written behind an end of data was refused like the MAILs there:
                    // the session goes on with the messages to send again, then quits.
                    self.phase = Phase::Ready;
                } else {
                    let err = self.quit_error.take();
                    return self.close(err);
                }
            }
        }
        if closing && self.phase != Phase::Closed {
            let r = Reply::new(421, "service closing");
            return self.close(Some(SessionError::ServiceClosing(r)));
        }
        self.arm(now);
    }

    pub(super) fn index_of(&self, seq: u64) -> Option<usize> {
        self.active.iter().position(|m| m.seq == seq)
    }

    fn on_msg_reply(&mut self, seq: u64, verb: Verb, rcpt: usize, reply: Reply) {
        let Some(i) = self.index_of(seq) else { return };
        if self.active[i].refused {
            return self.on_refused_reply(i, verb, &reply);
        }
        let lockstep = !self.active[i].pipelined;
        match verb {
            Verb::Mail => {
                let failed = !reply.is_positive();
                self.active[i].mail = Some(reply);
                if failed && lockstep {
                    self.report_envelope(i, None);
                    self.finish(i);
                }
            }
            Verb::Rcpt => {
                self.active[i].rcpt[rcpt] = Some(reply);
                let m = &self.active[i];
                if lockstep && rcpt + 1 == m.to.len() && !m.accepted_any() {
                    // MAIL was accepted: the transaction stays open until RSET.
                    self.rset_needed |= m.mail_ok();
                    self.txn_open |= m.mail_ok();
                    self.report_envelope(i, None);
                    self.finish(i);
                }
            }
            Verb::Data => {
                if reply.code == 354 {
                    let hollow = !self.active[i].accepted_any();
                    self.active[i].hollow = hollow;
                    self.active[i].state = MsgState::BodyHeld;
                    self.report_envelope(i, None); // rejected recipients are final now
                } else {
                    self.report_envelope(i, Some((Stage::Data, &reply)));
                    self.rset_needed = true;
                    self.txn_open |= self.active[i].mail_ok();
                    self.finish(i);
                }
            }
            Verb::Body => {
                self.active[i].received = reply.is_positive();
                self.report_envelope(i, Some((Stage::Body, &reply)));
                self.finish(i);
            }
            Verb::Bdat => {
                let m = &self.active[i];
                if !reply.is_positive() && m.mail_ok() && !m.rset_asked {
                    self.rset_needed = true; // RFC 3030 §3: the transaction failed
                    self.txn_open = true;
                }
                self.committed_octets -= self.active[i].octets;
                self.active[i].received = reply.is_positive();
                self.report_envelope(i, Some((Stage::Body, &reply)));
                self.finish(i);
            }
            _ => {}
        }
    }

    /// Reports every recipient whose fate is known (see [`Msg::settled`]).
    pub(super) fn report_envelope(&mut self, i: usize, last: Option<(Stage, &Reply)>) {
        for (idx, delivery, stage, reply) in self.active[i].settled(last) {
            self.report(i, idx, delivery, stage, Some(reply), None);
        }
    }

    fn report(
        &mut self,
        i: usize,
        idx: usize,
        delivery: Delivery,
        stage: Stage,
        reply: Option<Reply>,
        note: Option<String>,
    ) {
        if self.active[i].reported[idx] {
            return;
        }
        let o = self.settle(i, idx, delivery, stage);
        self.events
            .push_back(Event::Recipient(RcptOutcome { reply, note, ..o }));
    }

    /// Marks recipient `idx` of active message `i` reported; its outcome with `delivery` at
    /// `stage`, no reply, no note, not returned (the caller fills those in and queues it).
    pub(super) fn settle(
        &mut self,
        i: usize,
        idx: usize,
        delivery: Delivery,
        stage: Stage,
    ) -> RcptOutcome {
        let m = &mut self.active[i];
        m.reported[idx] = true;
        RcptOutcome {
            message: m.id,
            index: idx,
            address: m.to[idx].clone(),
            delivery,
            stage,
            reply: None,
            note: None,
            returned: false,
        }
    }

    /// Removes a resolved message; every recipient must have been reported.
    pub(super) fn finish(&mut self, i: usize) {
        let m = self.active.remove(i).expect("index from index_of");
        self.refused_txns += u32::from(!m.received);
        debug_assert!(
            m.reported.iter().all(|&r| r),
            "unreported recipient in {m:?}"
        );
        self.events.push_back(Event::MessageDone(m.id));
    }

    /// Reports a message that never went out: `Deferred` when the session could not send it
    /// (stages connect, tls, auth), `Rejected` when a local check refused it.
    pub(super) fn fail_unsent(&mut self, msg: Message, stage: Stage, note: &str) {
        let delivery = if matches!(stage, Stage::Connect | Stage::Tls | Stage::Auth) {
            Delivery::Deferred
        } else {
            Delivery::Rejected
        };
        for (index, address) in msg.to.into_iter().enumerate() {
            self.events.push_back(Event::Recipient(RcptOutcome {
                message: msg.id,
                index,
                address,
                delivery,
                stage,
                reply: None,
                note: Some(note.to_string()),
                returned: false,
            }));
        }
        self.events.push_back(Event::MessageDone(msg.id));
    }

    fn arm(&mut self, now: Instant) {
        let t = &self.cfg.timeouts;
        self.deadline = self.in_flight.front().map(|p| {
            now + match p.what {
                Awaiting::Greeting => t.greeting,
                Awaiting::Msg {
                    verb: Verb::Body | Verb::Bdat,
                    ..
                }
                | Awaiting::Raw(Verb::Body) => t.data_end,
                Awaiting::Msg {
                    verb: Verb::Data, ..
                }
                | Awaiting::Raw(Verb::Data) => t.data,
                _ => t.command,
            }
        });
    }
}
