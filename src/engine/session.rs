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
//! The driver must keep reading while it writes (RFC 2920 §3.1).
//!
//! Pipelining (RFC 2920): MAIL, RCPT, RSET and BDAT chunks may stand anywhere in a group;
//! EHLO, DATA, NOOP, QUIT, STARTTLS and AUTH end it. In DATA mode a message's body and final
//! dot are held until the next message's envelope (or a flush, or QUIT) can go in the same
//! write, so a stream of messages costs one round trip each. In BDAT mode (PIPELINING and
//! CHUNKING, RFC 3030) whole messages go out back to back, bounded by a window of messages
//! and octets in flight. Without PIPELINING every group has one command.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::body;
use super::command::Verb;
use super::ehlo::{Capabilities, Extensions};
use super::error::{ProtocolError, SessionError};
use super::outcome::{Delivery, MessageId, RcptOutcome, Stage};
use super::reply::{Reply, ReplyParser};

/// A secret (password) whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// AUTH credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password; never logged.
    pub password: Secret,
}

/// When to pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PipeliningPolicy {
    /// Pipeline when the server advertises PIPELINING, else lock-step.
    #[default]
    Auto,
    /// Never pipeline (lock-step, one command per round trip).
    Off,
    /// Refuse to send mail when the server does not advertise PIPELINING.
    Require,
}

/// How far commands are pipelined once PIPELINING is advertised. The session starts at
/// [`Config::pipelining_level`] and only ever steps down, on evidence (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PipeliningLevel {
    /// The next envelope rides in the same write as the previous message's final dot or
    /// `BDAT … LAST`: about one round trip per message with DATA, a few per window with BDAT.
    #[default]
    CrossMessage,
    /// Sync at end of data: nothing is written after a final dot or `BDAT … LAST` until its
    /// reply arrived. MAIL, RCPT… and DATA (or `BDAT … LAST`) are still one group: about two
    /// round trips per message with DATA, one with BDAT.
    WithinMessage,
    /// One command per round trip, as without PIPELINING.
    LockStep,
}

impl PipeliningLevel {
    /// Lower-case name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CrossMessage => "cross-message",
            Self::WithinMessage => "within-message",
            Self::LockStep => "lock-step",
        }
    }
}

impl fmt::Display for PipeliningLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How TLS is used. The driver does the handshakes; the engine decides when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// Plain text only.
    None,
    /// STARTTLS when offered, plain text otherwise.
    #[default]
    Opportunistic,
    /// STARTTLS or no mail at all.
    Required,
    /// TLS from the first byte (port 465); the driver handshakes before the greeting.
    Implicit,
}

/// Per-state reply timeouts, in the spirit of RFC 5321 §4.5.3.2 but shorter for a CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the 220 greeting.
    pub greeting: Duration,
    /// EHLO, MAIL, RCPT, RSET, NOOP, AUTH, STARTTLS, QUIT.
    pub command: Duration,
    /// DATA's 354.
    pub data: Duration,
    /// The reply to the final dot or `BDAT LAST` (the server may be scanning the message).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            greeting: Duration::from_secs(60),
            command: Duration::from_secs(60),
            data: Duration::from_secs(60),
            data_end: Duration::from_secs(120),
        }
    }
}

impl Timeouts {
    /// All four set to one value.
    pub fn all(d: Duration) -> Self {
        Self {
            greeting: d,
            command: d,
            data: d,
            data_end: d,
        }
    }
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name sent with EHLO/HELO.
    pub helo_name: String,
    /// When to pipeline.
    pub pipelining: PipeliningPolicy,
    /// Use BDAT when the server offers PIPELINING and CHUNKING.
    pub chunking: bool,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// AUTH credentials, if any.
    pub auth: Option<Credentials>,
    /// Allow AUTH over an unencrypted connection.
    pub allow_plaintext_auth: bool,
    /// BDAT mode: most messages in flight at once.
    pub window: usize,
    /// BDAT mode: most message octets in flight at once (at least one message always goes).
    pub window_bytes: usize,
    /// Reply timeouts.
    pub timeouts: Timeouts,
    /// Emit an [`Event::Exchange`] for every command and its reply.
    pub transcript: bool,
    /// The pipelining level the session starts at (a campaign passes the level it learned
    /// for this host on earlier connections). It only steps down from here.
    pub pipelining_level: PipeliningLevel,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            helo_name: "localhost".into(),
            pipelining: PipeliningPolicy::Auto,
            chunking: true,
            tls: TlsPolicy::Opportunistic,
            auth: None,
            allow_plaintext_auth: false,
            window: 100,
            window_bytes: 8 << 20,
            timeouts: Timeouts::default(),
            transcript: false,
            pipelining_level: PipeliningLevel::CrossMessage,
        }
    }
}

/// A message to deliver: envelope plus content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Caller's identifier, echoed in outcomes.
    pub id: MessageId,
    /// Envelope sender (`MAIL FROM`); empty for the null reverse-path `<>`.
    pub from: String,
    /// Envelope recipients (`RCPT TO`), at least one.
    pub to: Vec<String>,
    /// The message (headers, blank line, body); any line endings, not dot-stuffed.
    pub data: Vec<u8>,
}

/// A single command for lock-step use (the Net::SMTP-style API and probes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawCommand {
    /// `MAIL FROM:<addr>`
    Mail(String),
    /// `RCPT TO:<addr>`
    Rcpt(String),
    /// `DATA`
    Data,
    /// A message body with its final dot (send only after 354).
    Body(Vec<u8>),
    /// `RSET`
    Rset,
    /// `NOOP`
    Noop,
    /// `QUIT`
    Quit,
}

/// One command and the reply it got (emitted when `Config::transcript` is on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The command line as sent, with secrets replaced by `****`; `.` for a message body,
    /// `BDAT n LAST` for a chunk; empty for the greeting.
    pub command: String,
    /// Which command.
    pub verb: Option<Verb>,
    /// The server's reply.
    pub reply: Reply,
    /// Did the reply mean success for this command?
    pub ok: bool,
}

/// What the session tells its driver and caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server's 220 greeting.
    Greeting(Reply),
    /// Capabilities from EHLO (again after STARTTLS).
    Capabilities(Capabilities),
    /// The server said 220 to STARTTLS: the driver must do the TLS handshake now, then call
    /// [`Session::handle_tls_established`]. Nothing is transmitted until then.
    StartTls,
    /// Handshake done (EHLO, TLS, AUTH): messages flow from now on.
    Ready,
    /// A command and its reply (only with `Config::transcript`).
    Exchange(Exchange),
    /// The reply to a [`RawCommand`].
    RawReply(Verb, Reply),
    /// A recipient's final outcome; each recipient of each message is reported once.
    Recipient(RcptOutcome),
    /// Every recipient of this message has been reported.
    MessageDone(MessageId),
    /// The session lowered its pipelining level; messages the server refused for that reason
    /// are sent again by the session (their outcomes come later, as usual).
    SteppedDown(StepDown),
    /// The server closed the connection right after a positive reply to a final dot or
    /// `BDAT … LAST` while commands written after it were unanswered. Once is chance; a caller
    /// that sees it twice for a host should start new sessions there at
    /// [`PipeliningLevel::WithinMessage`]. Followed by [`Event::Closed`].
    ClosedAfterEndOfData {
        /// The level the session was at.
        level: PipeliningLevel,
        /// The first unanswered command written after the end of data.
        verb: Verb,
    },
    /// The session is over: `None` after a clean QUIT.
    Closed(Option<SessionError>),
}

/// Why and how the session lowered its pipelining level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDown {
    /// The level before.
    pub from: PipeliningLevel,
    /// The level from now on.
    pub to: PipeliningLevel,
    /// The command whose reply was the evidence.
    pub verb: Verb,
    /// That command as sent (only with `Config::transcript`).
    pub command: Option<String>,
    /// The reply that refused it.
    pub reply: Reply,
}

/// Round-trip accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoundTrips {
    /// Round trips actually waited for: the depth of the chain of replies that later sends
    /// depended on (connection greeting included).
    pub used: u64,
    /// Round trips lock-step SMTP (with DATA) needs for the same exchanges: one per reply,
    /// and two for a `BDAT … LAST` (DATA's 354, then the final dot).
    pub lockstep: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    TlsHandshake,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass,
    AuthLoginDone,
    Ready,
    Quitting,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgState {
    /// MAIL/RCPT/DATA (or BDAT) sent; replies pending.
    Envelope,
    /// 354 received; body not sent yet.
    BodyHeld,
    /// Final dot or BDAT LAST handed to the driver.
    Committed,
}

#[derive(Debug)]
struct Msg {
    seq: u64,
    id: MessageId,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
    state: MsgState,
    mail: Option<Reply>,
    rcpt: Vec<Option<Reply>>,
    reported: Vec<bool>,
    /// Lock-step: next recipient to send.
    next_rcpt: usize,
    /// Octets counted against the BDAT window.
    octets: usize,
    /// No RCPT accepted (or MAIL failed): the body sent after a 354 is a lone dot.
    hollow: bool,
    /// Its commands were pipelined (replies are then handled as a group).
    pipelined: bool,
    /// The server refused its MAIL because it followed an end of data: the remaining
    /// replies are ignored and the message is sent again.
    refused: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Greeting,
    Handshake(Verb),
    Msg {
        seq: u64,
        verb: Verb,
        rcpt: usize,
    },
    /// RSET; `true` when its reply gates the group.
    Rset(bool),
    Raw(Verb),
    Quit,
}

#[derive(Debug)]
struct Pending {
    what: Awaiting,
    round: u64,
    line: Option<String>,
    /// Its reply must arrive before anything else is written.
    gate: bool,
    /// Written while a final dot / `BDAT … LAST` was unanswered.
    after_eod: bool,
}

/// The SMTP client session. See the module docs for the I/O contract.
#[derive(Debug)]
pub struct Session {
    cfg: Config,
    phase: Phase,
    caps: Capabilities,
    tls_active: bool,
    parser: ReplyParser,
    in_flight: VecDeque<Pending>,
    queue: VecDeque<Message>,
    /// Messages refused for a pipelining reason, sent again before `queue`.
    retry: VecDeque<Message>,
    raw: VecDeque<RawCommand>,
    active: VecDeque<Msg>,
    next_seq: u64,
    events: VecDeque<Event>,
    rset_needed: bool,
    flush_requested: bool,
    quit_requested: bool,
    /// Error to report once QUIT is answered (a refusal decided locally).
    quit_error: Option<SessionError>,
    gen_seen: u64,
    rt: RoundTrips,
    deadline: Option<Instant>,
    committed_octets: usize,
    closing_reply: bool,
    /// Handshake commands decided while handling replies, sent by the next `poll_transmit`.
    hs_out: Vec<u8>,
    /// Messages whose final dot / `BDAT LAST` the last `poll_transmit` appended.
    committed: Vec<MessageId>,
    /// In-flight commands that end a group (kept as a count so the planner does not rescan
    /// the FIFO for every message it adds).
    gates: usize,
    /// Final dots / `BDAT … LAST` in flight.
    eod_in_flight: usize,
    /// The last reply was a 2xx to a final dot / `BDAT … LAST`.
    last_reply_eod_ok: bool,
    level: PipeliningLevel,
}

impl Session {
    /// A session for a freshly opened connection (after the TLS handshake for `Implicit`).
    /// `now` starts the greeting timeout.
    pub fn new(cfg: Config, now: Instant) -> Self {
        let tls_active = cfg.tls == TlsPolicy::Implicit;
        let mut s = Self {
            deadline: Some(now + cfg.timeouts.greeting),
            cfg,
            phase: Phase::Greeting,
            caps: Capabilities::default(),
            tls_active,
            parser: ReplyParser::new(),
            in_flight: VecDeque::new(),
            queue: VecDeque::new(),
            raw: VecDeque::new(),
            active: VecDeque::new(),
            next_seq: 0,
            events: VecDeque::new(),
            rset_needed: false,
            flush_requested: false,
            quit_requested: false,
            quit_error: None,
            gen_seen: 0,
            rt: RoundTrips::default(),
            committed_octets: 0,
            closing_reply: false,
            hs_out: Vec::new(),
            committed: Vec::new(),
            gates: 1,
            eod_in_flight: 0,
            last_reply_eod_ok: false,
            level: PipeliningLevel::CrossMessage,
            retry: VecDeque::new(),
        };
        s.level = s.cfg.pipelining_level;
        s.in_flight.push_back(Pending {
            what: Awaiting::Greeting,
            round: 1,
            line: None,
            gate: true,
            after_eod: false,
        });
        s
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

    /// True while the session would take another message without growing past its window.
    pub fn wants_message(&self) -> bool {
        if matches!(self.phase, Phase::Closed | Phase::Quitting) || self.quit_requested {
            return false;
        }
        let cross = self.level == PipeliningLevel::CrossMessage;
        let target = if self.phase == Phase::Ready && self.bdat_mode() && cross {
            self.cfg.window.max(1)
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
        self.cfg.pipelining != PipeliningPolicy::Off
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

    /// The server closed the connection (read returned 0) or the socket failed.
    pub fn handle_eof(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.phase == Phase::Quitting && self.in_flight.iter().all(|p| p.what == Awaiting::Quit)
        {
            let err = self.quit_error.take();
            self.close(err);
        } else {
            if let Some(p) = self
                .in_flight
                .front()
                .filter(|p| self.last_reply_eod_ok && p.after_eod)
            {
                self.events.push_back(Event::ClosedAfterEndOfData {
                    level: self.level,
                    verb: verb_of(p.what),
                });
            }
            self.close(Some(SessionError::Closed));
        }
    }

    /// The driver could not read or write: ends the session with that error.
    pub fn handle_io_error(&mut self, err: SessionError) {
        if self.phase != Phase::Closed {
            self.close(Some(err));
        }
    }

    /// The TLS handshake requested by [`Event::StartTls`] succeeded.
    pub fn handle_tls_established(&mut self, now: Instant) {
        if self.phase == Phase::TlsHandshake {
            self.tls_active = true;
            self.caps = Capabilities::default(); // RFC 3207 §4.2: forget what was said in clear
            self.phase = Phase::Ehlo;
            self.push_handshake(Verb::Ehlo, None, now);
        }
    }

    /// Checks the reply deadline; past it, the session ends with a timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.deadline {
            if now >= d && self.phase != Phase::Closed {
                let verb = self
                    .in_flight
                    .front()
                    .map_or(Verb::Noop, |p| verb_of(p.what));
                self.close(Some(SessionError::Timeout(verb)));
            }
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

    // ----- planner ----------------------------------------------------------------------

    fn gate_in_flight(&self) -> bool {
        debug_assert_eq!(
            self.gates,
            self.in_flight.iter().filter(|p| is_gate(p.what)).count()
        );
        self.gates > 0
    }

    fn plan(&mut self, out: &mut Vec<u8>) {
        let pipelining = self.pipelining();
        let bdat = self.bdat_mode();
        loop {
            if self.phase != Phase::Ready {
                break;
            }
            if self.gate_in_flight() || (!pipelining && !self.in_flight.is_empty()) {
                break;
            }
            // Below CrossMessage nothing is written while an end of data is unanswered.
            if self.level >= PipeliningLevel::WithinMessage && self.eod_in_flight > 0 {
                break;
            }
            // Lock-step commands from the caller go first, alone or pipelined as allowed.
            if self.active.is_empty() && self.queue.is_empty() && self.retry.is_empty() {
                if let Some(cmd) = self.raw.pop_front() {
                    self.emit_raw(cmd, out);
                    continue;
                }
            }
            // A held body goes with the next envelope, a flush, or QUIT (DATA mode only:
            // BDAT messages are never held, so their window is not scanned here).
            if let Some(i) = (!bdat)
                .then(|| {
                    self.active
                        .iter()
                        .position(|m| m.state == MsgState::BodyHeld)
                })
                .flatten()
            {
                if !pipelining
                    || self.level >= PipeliningLevel::WithinMessage
                    || self.flush_requested
                    || !self.queue.is_empty()
                    || !self.retry.is_empty()
                    || self.quit_requested
                {
                    self.flush_requested = false;
                    self.emit_body(i, out);
                    continue;
                }
                break;
            }
            if !pipelining {
                if let Some(i) = self
                    .active
                    .iter()
                    .position(|m| m.state == MsgState::Envelope)
                {
                    // Lock-step: the next step of the message in progress.
                    let m = &self.active[i];
                    let (seq, next) = (m.seq, m.next_rcpt);
                    if m.mail.is_none() {
                        break; // unreachable in practice: MAIL's reply is awaited
                    }
                    if next < m.to.len() {
                        self.active[i].next_rcpt += 1;
                        let addr = self.active[i].to[next].clone();
                        self.emit_line(
                            out,
                            Awaiting::Msg {
                                seq,
                                verb: Verb::Rcpt,
                                rcpt: next,
                            },
                            &["RCPT TO:<", &addr, ">"],
                        );
                    } else {
                        self.emit_line(
                            out,
                            Awaiting::Msg {
                                seq,
                                verb: Verb::Data,
                                rcpt: 0,
                            },
                            &["DATA"],
                        );
                    }
                    continue;
                }
            }
            if self.rset_needed {
                self.rset_needed = false;
                // DATA mode pipelines RSET with the next envelope: nothing of that message is
                // committed before DATA's 354, which arrives after RSET's reply, so a refused
                // RSET can still end the session in time. A BDAT chunk would be committed in
                // the same write, so there RSET waits for its reply.
                let gated = bdat || !pipelining;
                self.emit_line(out, Awaiting::Rset(gated), &["RSET"]);
                continue;
            }
            if let Some(msg) = self.retry.front().or(self.queue.front()) {
                let mut octets = None;
                if bdat {
                    if self.active.len() >= self.cfg.window.max(1) {
                        break;
                    }
                    let len = body::normalized_len(&msg.data);
                    if !self.active.is_empty()
                        && self.committed_octets + len > self.cfg.window_bytes
                    {
                        break;
                    }
                    octets = Some(len);
                } else if self.active.iter().any(|m| m.state != MsgState::Committed) {
                    break;
                }
                let msg = match self.retry.pop_front() {
                    Some(m) => m,
                    None => self.queue.pop_front().expect("front() was Some"),
                };
                self.emit_message(msg, octets, out);
                continue;
            }
            if self.quit_requested
                && self.raw.is_empty()
                && self.active.iter().all(|m| m.state == MsgState::Committed)
            {
                self.phase = Phase::Quitting;
                self.emit_line(out, Awaiting::Quit, &["QUIT"]);
            }
            break;
        }
    }

    /// `octets`: the normalized body length when the caller already computed it.
    fn emit_message(&mut self, msg: Message, octets: Option<usize>, out: &mut Vec<u8>) {
        // Local checks first: nothing malformed ever reaches the wire.
        for addr in std::iter::once(&msg.from)
            .filter(|a| !a.is_empty())
            .chain(msg.to.iter())
        {
            if let Err(e) = super::command::check_address(addr) {
                let note = format!("invalid address {addr:?}: {e}");
                return self.fail_unsent(msg, Stage::Mail, &note);
            }
        }
        if msg.to.is_empty() {
            return self.fail_unsent(msg, Stage::Rcpt, "message has no recipients");
        }
        let utf8 = !msg.from.is_ascii() || msg.to.iter().any(|a| !a.is_ascii());
        if utf8 && !self.caps.has(Extensions::SMTPUTF8) {
            return self.fail_unsent(
                msg,
                Stage::Mail,
                "address is not ASCII and the server does not offer SMTPUTF8",
            );
        }
        let size = match octets {
            Some(n) => n,
            None if self.caps.has(Extensions::SIZE) || self.bdat_mode() => {
                body::normalized_len(&msg.data)
            }
            None => 0,
        };
        if self.caps.size > 0 && size as u64 > self.caps.size {
            let note = format!(
                "message is {size} octets, over the server's SIZE limit of {} octets",
                self.caps.size
            );
            return self.fail_unsent(msg, Stage::Mail, &note);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let eight_bit = self.caps.has(Extensions::EIGHT_BIT_MIME) && !msg.data.is_ascii();
        let mut size_param = String::new();
        if self.caps.has(Extensions::SIZE) {
            size_param = format!(" SIZE={size}");
        }
        let n = msg.to.len();
        let from = msg.from;
        let params: [&str; 3] = [
            &size_param,
            if eight_bit { " BODY=8BITMIME" } else { "" },
            if utf8 { " SMTPUTF8" } else { "" },
        ];
        self.emit_line(
            out,
            Awaiting::Msg {
                seq,
                verb: Verb::Mail,
                rcpt: 0,
            },
            &["MAIL FROM:<", &from, ">", params[0], params[1], params[2]],
        );
        let mut m = Msg {
            seq,
            id: msg.id,
            from,
            to: msg.to,
            data: msg.data,
            state: MsgState::Envelope,
            mail: None,
            rcpt: vec![None; n],
            reported: vec![false; n],
            next_rcpt: 0,
            octets: 0,
            hollow: false,
            pipelined: self.pipelining(),
            refused: false,
        };
        if m.pipelined {
            for i in 0..n {
                let addr = std::mem::take(&mut m.to[i]);
                self.emit_line(
                    out,
                    Awaiting::Msg {
                        seq,
                        verb: Verb::Rcpt,
                        rcpt: i,
                    },
                    &["RCPT TO:<", &addr, ">"],
                );
                m.to[i] = addr;
            }
            m.next_rcpt = n;
            if self.bdat_mode() {
                let octets = body::encode_bdat_with_len(&m.data, size, out);
                let line = self.cfg.transcript.then(|| format!("BDAT {octets} LAST"));
                self.push(
                    Awaiting::Msg {
                        seq,
                        verb: Verb::Bdat,
                        rcpt: 0,
                    },
                    line,
                );
                m.octets = octets;
                self.committed.push(m.id);
                self.committed_octets += octets;
                m.state = MsgState::Committed;
            } else {
                self.emit_line(
                    out,
                    Awaiting::Msg {
                        seq,
                        verb: Verb::Data,
                        rcpt: 0,
                    },
                    &["DATA"],
                );
            }
        }
        self.active.push_back(m);
    }

    fn emit_body(&mut self, i: usize, out: &mut Vec<u8>) {
        let m = &mut self.active[i];
        if m.hollow {
            out.extend_from_slice(b".\r\n");
        } else {
            body::encode_data_into(&m.data, out);
            self.committed.push(m.id);
        }
        m.state = MsgState::Committed;
        let seq = m.seq;
        let line = self.cfg.transcript.then(|| ".".to_string());
        self.push(
            Awaiting::Msg {
                seq,
                verb: Verb::Body,
                rcpt: 0,
            },
            line,
        );
    }

    fn emit_raw(&mut self, cmd: RawCommand, out: &mut Vec<u8>) {
        match cmd {
            RawCommand::Mail(a) => {
                self.emit_line(out, Awaiting::Raw(Verb::Mail), &["MAIL FROM:<", &a, ">"])
            }
            RawCommand::Rcpt(a) => {
                self.emit_line(out, Awaiting::Raw(Verb::Rcpt), &["RCPT TO:<", &a, ">"])
            }
            RawCommand::Data => self.emit_line(out, Awaiting::Raw(Verb::Data), &["DATA"]),
            RawCommand::Rset => self.emit_line(out, Awaiting::Raw(Verb::Rset), &["RSET"]),
            RawCommand::Noop => self.emit_line(out, Awaiting::Raw(Verb::Noop), &["NOOP"]),
            RawCommand::Quit => {
                self.phase = Phase::Quitting;
                self.emit_line(out, Awaiting::Quit, &["QUIT"]);
            }
            RawCommand::Body(data) => {
                body::encode_data_into(&data, out);
                let line = self.cfg.transcript.then(|| ".".to_string());
                self.push(Awaiting::Raw(Verb::Body), line);
            }
        }
    }

    /// Writes `parts` + CRLF. Parts containing CR or LF never get here: addresses are
    /// checked in `emit_message`, raw commands in `command_line_ok`.
    fn emit_line(&mut self, out: &mut Vec<u8>, what: Awaiting, parts: &[&str]) {
        let start = out.len();
        for p in parts {
            out.extend(p.bytes().filter(|&b| b != b'\r' && b != b'\n' && b != 0));
        }
        let line = self
            .cfg
            .transcript
            .then(|| String::from_utf8_lossy(&out[start..]).into_owned());
        out.extend_from_slice(b"\r\n");
        self.push(what, line);
    }

    fn push(&mut self, what: Awaiting, line: Option<String>) {
        let eod = is_end_of_data(what);
        let gate = is_gate(what);
        self.gates += usize::from(gate);
        let after_eod = self.eod_in_flight > 0;
        self.eod_in_flight += usize::from(eod);
        self.in_flight.push_back(Pending {
            what,
            round: self.gen_seen + 1,
            line,
            gate,
            after_eod,
        });
    }

    fn push_handshake(&mut self, verb: Verb, line: Option<(String, String)>, _now: Instant) {
        // Handshake commands are written by `handshake_out`; record them here.
        let (wire, shown) = match (verb, line) {
            (_, Some((wire, shown))) => (wire, shown),
            (Verb::Ehlo, None) => (
                format!("EHLO {}", self.cfg.helo_name),
                format!("EHLO {}", self.cfg.helo_name),
            ),
            (Verb::Helo, None) => (
                format!("HELO {}", self.cfg.helo_name),
                format!("HELO {}", self.cfg.helo_name),
            ),
            (Verb::StartTls, None) => ("STARTTLS".into(), "STARTTLS".into()),
            (v, None) => (v.to_string(), v.to_string()),
        };
        self.hs_out.extend_from_slice(wire.as_bytes());
        self.hs_out.extend_from_slice(b"\r\n");
        let shown = self.cfg.transcript.then_some(shown);
        self.push(Awaiting::Handshake(verb), shown);
    }
}

// ----- replies ----------------------------------------------------------------------------

impl Session {
    fn on_reply(&mut self, reply: Reply, now: Instant) {
        self.rt.lockstep += 1;
        let Some(p) = self.in_flight.pop_front() else {
            let e = ProtocolError::UnexpectedReply(reply.to_string());
            return self.close(Some(e.into()));
        };
        self.gates -= usize::from(p.gate);
        let eod = is_end_of_data(p.what);
        self.eod_in_flight -= usize::from(eod);
        self.last_reply_eod_ok = eod && reply.is_positive();
        self.gen_seen = self.gen_seen.max(p.round);
        self.rt.used = self.gen_seen;
        let verb = verb_of(p.what);
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
            let ok = reply_ok(p.what, &reply);
            let command = p.line.clone().unwrap_or_default();
            let verb = (p.what != Awaiting::Greeting).then_some(verb);
            self.events.push_back(Event::Exchange(Exchange {
                command,
                verb,
                reply: reply.clone(),
                ok,
            }));
        }
        let closing = reply.code == 421;
        if closing {
            self.closing_reply = true;
        }
        match p.what {
            Awaiting::Greeting => {
                if reply.code == 220 {
                    self.events.push_back(Event::Greeting(reply));
                    self.phase = Phase::Ehlo;
                    self.push_handshake(Verb::Ehlo, None, now);
                } else {
                    return self.close(Some(SessionError::Greeting(reply)));
                }
            }
            Awaiting::Handshake(v) => self.on_handshake_reply(v, reply, now),
            Awaiting::Msg { seq, verb, rcpt } => {
                if verb == Verb::Mail && p.after_eod && refuses_sequence(&reply) {
                    self.on_refused_after_eod(seq, p.line.clone(), &reply);
                }
                self.on_msg_reply(seq, verb, rcpt, reply);
            }
            Awaiting::Rset(gated) => {
                if !reply.is_positive() {
                    // The old transaction may still be open; a new MAIL could add to it.
                    let e = ProtocolError::UnexpectedCode {
                        verb: Verb::Rset,
                        reply,
                    };
                    if gated {
                        self.quit_with(e.into(), now);
                    } else {
                        // The next envelope is already out: close without another byte (no
                        // QUIT, which a server that took that DATA would read as content).
                        return self.close(Some(e.into()));
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

    fn on_handshake_reply(&mut self, verb: Verb, reply: Reply, now: Instant) {
        match (verb, self.phase) {
            (Verb::Ehlo, _) => {
                if reply.is_positive() {
                    self.caps = Capabilities::from_ehlo(&reply);
                    self.events
                        .push_back(Event::Capabilities(self.caps.clone()));
                    self.after_ehlo(now);
                } else if reply.code == 421 {
                    self.close(Some(SessionError::ServiceClosing(reply)));
                } else {
                    self.phase = Phase::Helo;
                    self.push_handshake(Verb::Helo, None, now);
                }
            }
            (Verb::Helo, _) => {
                if reply.is_positive() {
                    self.caps = Capabilities::helo(&reply);
                    self.events
                        .push_back(Event::Capabilities(self.caps.clone()));
                    self.after_ehlo(now);
                } else {
                    self.close(Some(SessionError::Helo(reply)));
                }
            }
            (Verb::StartTls, _) => {
                if reply.code == 220 {
                    self.phase = Phase::TlsHandshake;
                    self.events.push_back(Event::StartTls);
                } else if self.cfg.tls == TlsPolicy::Required {
                    self.quit_with(
                        SessionError::TlsRequired(format!("refused STARTTLS: {reply}")),
                        now,
                    );
                } else {
                    self.after_tls(now);
                }
            }
            (Verb::Auth, Phase::AuthLoginUser) if reply.code == 334 => {
                let user = self
                    .cfg
                    .auth
                    .as_ref()
                    .map(|c| B64.encode(&c.username))
                    .unwrap_or_default();
                self.phase = Phase::AuthLoginPass;
                self.push_handshake(Verb::Auth, Some((user, "****".into())), now);
            }
            (Verb::Auth, Phase::AuthLoginPass) if reply.code == 334 => {
                let pass = self
                    .cfg
                    .auth
                    .as_ref()
                    .map(|c| B64.encode(c.password.expose()))
                    .unwrap_or_default();
                self.phase = Phase::AuthLoginDone;
                self.push_handshake(Verb::Auth, Some((pass, "****".into())), now);
            }
            (Verb::Auth, Phase::AuthPlain | Phase::AuthLoginDone) if reply.is_positive() => {
                self.ready()
            }
            (Verb::Auth, _) => self.quit_with(SessionError::AuthFailed(reply), now),
            _ => {}
        }
    }

    fn after_ehlo(&mut self, now: Instant) {
        let offered = self.caps.has(Extensions::STARTTLS);
        match self.cfg.tls {
            TlsPolicy::Required if !self.tls_active && !offered => {
                self.quit_with(
                    SessionError::TlsRequired("does not offer STARTTLS".into()),
                    now,
                );
            }
            TlsPolicy::Required | TlsPolicy::Opportunistic if !self.tls_active && offered => {
                self.phase = Phase::StartTls;
                self.push_handshake(Verb::StartTls, None, now);
            }
            _ => self.after_tls(now),
        }
    }

    fn after_tls(&mut self, now: Instant) {
        if self.cfg.pipelining == PipeliningPolicy::Require
            && !self.caps.has(Extensions::PIPELINING)
        {
            return self.quit_with(SessionError::PipeliningRequired, now);
        }
        let Some(cred) = self.cfg.auth.clone() else {
            return self.ready();
        };
        if !self.tls_active && !self.cfg.allow_plaintext_auth {
            return self.quit_with(SessionError::AuthOverPlaintext, now);
        }
        if self.caps.auth.plain {
            let token = B64.encode(format!("\0{}\0{}", cred.username, cred.password.expose()));
            self.phase = Phase::AuthPlain;
            self.push_handshake(
                Verb::Auth,
                Some((format!("AUTH PLAIN {token}"), "AUTH PLAIN ****".into())),
                now,
            );
        } else if self.caps.auth.login {
            self.phase = Phase::AuthLoginUser;
            self.push_handshake(
                Verb::Auth,
                Some(("AUTH LOGIN".into(), "AUTH LOGIN".into())),
                now,
            );
        } else {
            let offered = if self.caps.auth_names.is_empty() {
                " (it advertises no AUTH)".to_string()
            } else {
                format!(" (it offers {})", self.caps.auth_names.join(" "))
            };
            self.quit_with(SessionError::AuthUnsupported(offered), now);
        }
    }

    fn ready(&mut self) {
        self.phase = Phase::Ready;
        self.events.push_back(Event::Ready);
    }

    /// Ends the session politely (QUIT), then reports `err`.
    fn quit_with(&mut self, err: SessionError, now: Instant) {
        self.quit_error = Some(err);
        self.phase = Phase::Quitting;
        self.push_handshake(Verb::Quit, None, now);
        if let Some(p) = self.in_flight.back_mut() {
            p.what = Awaiting::Quit;
        }
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        self.active.iter().position(|m| m.seq == seq)
    }

    /// A MAIL written while an end of data was unanswered got a "bad sequence" refusal: the
    /// server refuses commands pipelined after the end of data. That transaction never
    /// began; the message is sent again once its remaining replies are in, and the session
    /// stops writing anything after an end of data.
    fn on_refused_after_eod(&mut self, seq: u64, command: Option<String>, reply: &Reply) {
        let Some(i) = self.index_of(seq) else { return };
        self.active[i].refused = true;
        if self.level == PipeliningLevel::CrossMessage {
            let to = PipeliningLevel::WithinMessage;
            self.events.push_back(Event::SteppedDown(StepDown {
                from: self.level,
                to,
                verb: Verb::Mail,
                command,
                reply: reply.clone(),
            }));
            self.level = to;
        }
    }

    /// Replies to a refused message's commands: wait for the last one, then queue it again.
    fn on_refused_reply(&mut self, i: usize, verb: Verb, reply: &Reply) {
        match verb {
            Verb::Data if reply.code == 354 => {
                // A server that refused MAIL should not say 354; end that data with a lone dot.
                self.active[i].hollow = true;
                self.active[i].state = MsgState::BodyHeld;
            }
            Verb::Data | Verb::Body | Verb::Bdat => {
                if verb == Verb::Bdat {
                    self.committed_octets -= self.active[i].octets;
                }
                let m = self.active.remove(i).expect("index from index_of");
                self.retry.push_back(Message {
                    id: m.id,
                    from: m.from,
                    to: m.to,
                    data: m.data,
                });
            }
            _ => {}
        }
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
                if lockstep && rcpt + 1 == m.to.len() && !accepted_any(m) {
                    // MAIL was accepted: the transaction stays open until RSET.
                    self.rset_needed |= m.mail.as_ref().is_some_and(Reply::is_positive);
                    self.report_envelope(i, None);
                    self.finish(i);
                }
            }
            Verb::Data => {
                if reply.code == 354 {
                    let hollow = !accepted_any(&self.active[i]);
                    self.active[i].hollow = hollow;
                    self.active[i].state = MsgState::BodyHeld;
                    self.report_envelope(i, None); // rejected recipients are final now
                } else {
                    self.report_envelope(i, Some((Stage::Data, &reply)));
                    self.rset_needed = true;
                    self.finish(i);
                }
            }
            Verb::Body => {
                self.report_envelope(i, Some((Stage::Body, &reply)));
                self.finish(i);
            }
            Verb::Bdat => {
                if !reply.is_positive()
                    && self.active[i].mail.as_ref().is_some_and(Reply::is_positive)
                {
                    self.rset_needed = true; // RFC 3030 §3: the transaction failed
                }
                self.committed_octets -= self.active[i].octets;
                self.report_envelope(i, Some((Stage::Body, &reply)));
                self.finish(i);
            }
            _ => {}
        }
    }

    /// Reports every recipient whose fate is known: all of them after a failed MAIL, each
    /// rejected RCPT, and — when `last` is given — the accepted ones by that reply.
    fn report_envelope(&mut self, i: usize, last: Option<(Stage, &Reply)>) {
        let m = &self.active[i];
        let mut out = Vec::new();
        let mail_failed = m.mail.as_ref().filter(|r| !r.is_positive());
        for (idx, r) in m.rcpt.iter().enumerate() {
            if m.reported[idx] {
                continue;
            }
            let (stage, reply, positive) = if let Some(mr) = mail_failed {
                (Stage::Mail, mr, false)
            } else {
                match r {
                    Some(r) if !r.is_positive() => (Stage::Rcpt, r, false),
                    Some(_) => match last {
                        Some((stage, lr)) => (stage, lr, lr.is_positive()),
                        None => continue,
                    },
                    None => match last {
                        // RCPT never answered separately (lock-step stop): not sent.
                        Some((stage, lr)) => (stage, lr, false),
                        None => continue,
                    },
                }
            };
            let delivery = if positive {
                Delivery::Sent
            } else if reply.is_transient() {
                Delivery::Deferred
            } else {
                Delivery::Rejected
            };
            out.push((idx, delivery, stage, reply.clone()));
        }
        for (idx, delivery, stage, reply) in out {
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
        let m = &mut self.active[i];
        if m.reported[idx] {
            return;
        }
        m.reported[idx] = true;
        self.events.push_back(Event::Recipient(RcptOutcome {
            message: m.id,
            index: idx,
            address: m.to[idx].clone(),
            delivery,
            stage,
            reply,
            note,
        }));
    }

    /// Removes a resolved message; every recipient must have been reported.
    fn finish(&mut self, i: usize) {
        let m = self.active.remove(i).expect("index from index_of");
        debug_assert!(
            m.reported.iter().all(|&r| r),
            "unreported recipient in {m:?}"
        );
        self.events.push_back(Event::MessageDone(m.id));
    }

    fn fail_unsent(&mut self, msg: Message, stage: Stage, note: &str) {
        let delivery = if stage == Stage::Connect {
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
            }));
        }
        self.events.push_back(Event::MessageDone(msg.id));
    }

    fn close(&mut self, err: Option<SessionError>) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.deadline = None;
        let why = err
            .as_ref()
            .map_or_else(|| "session ended".to_string(), ToString::to_string);
        while !self.active.is_empty() {
            // Known rejections stay rejections.
            self.report_envelope(0, None);
            let m = &self.active[0];
            let unreported: Vec<usize> = (0..m.to.len()).filter(|&k| !m.reported[k]).collect();
            // A refused MAIL means the server took nothing of that message.
            let committed = m.state == MsgState::Committed && !m.refused;
            let stage = if committed {
                Stage::Body
            } else if m.mail.is_none() {
                Stage::Mail
            } else if m.state == MsgState::BodyHeld {
                Stage::Data
            } else {
                Stage::Rcpt
            };
            for k in unreported {
                let (delivery, note) = if committed && !self.closing_reply {
                    (
                        Delivery::Unknown,
                        format!(
                            "delivery unknown: the message was sent but the session ended before the server's reply ({why})"
                        ),
                    )
                } else {
                    (Delivery::Deferred, format!("not delivered: {why}"))
                };
                self.report(0, k, delivery, stage, None, Some(note));
            }
            self.finish(0);
        }
        while let Some(msg) = self.retry.pop_front().or_else(|| self.queue.pop_front()) {
            let note = format!("not sent: {why}");
            self.fail_unsent(msg, Stage::Connect, &note);
        }
        self.in_flight.clear();
        self.gates = 0;
        self.raw.clear();
        self.events.push_back(Event::Closed(err));
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

fn accepted_any(m: &Msg) -> bool {
    m.mail.as_ref().is_some_and(Reply::is_positive)
        && m.rcpt
            .iter()
            .any(|r| r.as_ref().is_some_and(Reply::is_positive))
}

/// A final dot or `BDAT … LAST`: the end of a message's data.
fn is_end_of_data(what: Awaiting) -> bool {
    matches!(
        what,
        Awaiting::Msg {
            verb: Verb::Body | Verb::Bdat,
            ..
        } | Awaiting::Raw(Verb::Body)
    )
}

/// A reply that refuses a command for its place in the sequence, not for its content:
/// 503, or an RFC 3463 `5.5.1` (invalid command) with any 5yz code.
fn refuses_sequence(r: &Reply) -> bool {
    r.code == 503
        || r.is_permanent()
            && r.enhanced
                .is_some_and(|e| e.class == 5 && e.subject == 5 && e.detail == 1)
}

/// Does a reply to this have to arrive before anything else is sent (RFC 2920 §3.1)?
fn is_gate(what: Awaiting) -> bool {
    match what {
        Awaiting::Msg { verb, .. } | Awaiting::Raw(verb) => verb.ends_group(),
        // RSET gates too: had the server kept the failed transaction, a MAIL pipelined
        // behind a refused RSET would get 503 and its RCPTs would join that transaction.
        Awaiting::Rset(gated) => gated,
        Awaiting::Greeting | Awaiting::Handshake(_) | Awaiting::Quit => true,
    }
}

fn verb_of(a: Awaiting) -> Verb {
    match a {
        Awaiting::Greeting => Verb::Noop,
        Awaiting::Handshake(v) | Awaiting::Msg { verb: v, .. } | Awaiting::Raw(v) => v,
        Awaiting::Rset(_) => Verb::Rset,
        Awaiting::Quit => Verb::Quit,
    }
}

fn reply_ok(a: Awaiting, r: &Reply) -> bool {
    match verb_of(a) {
        _ if a == Awaiting::Greeting => r.code == 220,
        Verb::StartTls => r.code == 220,
        Verb::Data => r.code == 354,
        Verb::Auth => r.is_positive() || r.code == 334,
        _ => r.is_positive(),
    }
}
