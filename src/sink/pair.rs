//! A testing aid: the client [`engine::Session`] and the sink's [`Server`] run against each
//! other in memory on a virtual clock, with no sockets, threads or sleeps.
//!
//! Modelled on quinn-proto's `Pair::drive` (`quinn-proto/src/tests/util.rs`): [`Pair::drive`]
//! steps both state machines, moving bytes between them, and advances the virtual clock to
//! the next arrival or client deadline whenever neither side can move, until both are idle.
//! It never advances time to the server's idle timeout by itself ([`Pair::advance`] does).
//!
//! Each chunk one side transmits arrives at the other `one_way` later as one read (split into
//! reads of at most `max_read` bytes), so "what arrived together with the final dot" is the
//! rest of the engine's pipelined group. A server close reaches the client as end of stream
//! after its last byte; a client close ends the server session. Stored messages, server-side
//! counters and the client's events are kept for the test to inspect.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use pipemail::engine::{self, Message, TlsPolicy};
//! use pipemail::sink::SinkConfig;
//! use pipemail::sink::pair::Pair;
//!
//! let cfg = engine::Config { tls: TlsPolicy::None, ..engine::Config::default() };
//! let mut pair = Pair::new(cfg, Arc::new(SinkConfig::default()), Instant::now());
//! pair.client.send(Message {
//!     dsn: None,
//!     id: 1,
//!     from: "a@example.org".into(),
//!     to: vec!["b@example.net".into()],
//!     data: b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
//! });
//! pair.client.quit();
//! assert!(pair.drive());
//! assert_eq!(pair.stored.len(), 1);
//! assert_eq!(pair.stored[0].rcpts, ["b@example.net"]);
//! assert!(pair.client.is_closed());
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::SinkConfig;
use super::server::{Event as ServerEvent, Server, Stored};
use super::store::StoredMessage;
use crate::engine;

/// Steps [`Pair::drive`] takes before it gives up (a livelock).
const STEP_LIMIT: usize = 1_000_000;

enum Chunk {
    Data(Vec<u8>),
    Fin,
}

/// One direction of the in-memory connection.
#[derive(Default)]
struct Wire {
    chunks: VecDeque<(Instant, Chunk)>,
}

impl Wire {
    fn next_arrival(&self) -> Option<Instant> {
        self.chunks.front().map(|(t, _)| *t)
    }

    fn due(&mut self, now: Instant) -> Option<Chunk> {
        if self.next_arrival()? <= now {
            self.chunks.pop_front().map(|(_, c)| c)
        } else {
            None
        }
    }
}

/// An engine session and a sink server connected in memory. See the
/// [module documentation](self).
pub struct Pair {
    /// The client.
    pub client: engine::Session,
    /// The server.
    pub server: Server,
    /// The virtual clock.
    pub time: Instant,
    /// One-way delay of each direction (default zero).
    pub one_way: Duration,
    /// Largest read either side gets; a chunk is fed in pieces of at most this size (default
    /// unlimited: one read per chunk).
    pub max_read: usize,
    /// When true, storing fails (as a Maildir write error would): the server answers `451`.
    pub fail_store: bool,
    /// Every message the server stored, in order (all sessions).
    pub stored: Vec<StoredMessage>,
    /// RCPT commands the server answered with 4xx/5xx (all sessions).
    pub rejected_recipients: u64,
    /// The client's events, in order (all sessions).
    pub events: Vec<engine::Event>,
    /// Bytes the client sent, in order (all sessions).
    pub client_bytes: u64,
    sink: Arc<SinkConfig>,
    session: u64,
    next_queue_id: u64,
    to_server: Wire,
    to_client: Wire,
    client_done: bool,
    server_done: bool,
    fin_sent: bool,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("session", &self.session)
            .field("server", &self.server)
            .field("stored", &self.stored.len())
            .field("client_done", &self.client_done)
            .field("server_done", &self.server_done)
            .finish_non_exhaustive()
    }
}

impl Pair {
    /// A connection (session 0 of `sink`'s fault plan) at virtual time `now`.
    pub fn new(client: engine::Config, sink: Arc<SinkConfig>, now: Instant) -> Self {
        Self {
            client: engine::Session::new(client, now),
            server: Server::new(Arc::clone(&sink), 0, now),
            time: now,
            one_way: Duration::ZERO,
            max_read: usize::MAX,
            fail_store: false,
            stored: Vec::new(),
            rejected_recipients: 0,
            events: Vec::new(),
            client_bytes: 0,
            sink,
            session: 0,
            next_queue_id: 1,
            to_server: Wire::default(),
            to_client: Wire::default(),
            client_done: false,
            server_done: false,
            fin_sent: false,
            buf: Vec::new(),
        }
    }

    /// Replaces the connection with a new one (the next session of the fault plan) and a new
    /// client session with `client`; stored messages, counters and events are kept. Returns
    /// the old client session.
    pub fn reconnect(&mut self, client: engine::Config) -> engine::Session {
        self.session += 1;
        self.to_server = Wire::default();
        self.to_client = Wire::default();
        self.client_done = false;
        self.server_done = false;
        self.fin_sent = false;
        self.server = Server::new(Arc::clone(&self.sink), self.session, self.time);
        std::mem::replace(&mut self.client, engine::Session::new(client, self.time))
    }

    /// The index of the current session in the fault plan.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// True once neither side will act again on this connection: the client has closed, or
    /// it has seen the server's close.
    pub fn is_over(&self) -> bool {
        self.client.is_closed() || self.client_done
    }

    /// Moves the virtual clock forward by `d` and lets both sides handle their timeouts (the
    /// way to reach the server's idle timeout).
    pub fn advance(&mut self, d: Duration) {
        self.time += d;
        self.timeouts();
    }

    /// Steps until both sides are idle: nothing in flight, nothing to send, and no client
    /// deadline. Returns false if that did not happen within a million steps (a livelock).
    pub fn drive(&mut self) -> bool {
        for _ in 0..STEP_LIMIT {
            if self.step() {
                continue;
            }
            let client_deadline = if self.client.is_closed() {
                None
            } else {
                self.client.poll_timeout()
            };
            let next = [
                self.to_server.next_arrival(),
                self.to_client.next_arrival(),
                client_deadline,
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) => {
                    self.time = self.time.max(t);
                    self.timeouts();
                }
                None => return true,
            }
        }
        false
    }

    fn timeouts(&mut self) {
        if !self.client.is_closed() && self.client.poll_timeout().is_some_and(|d| d <= self.time) {
            self.client.handle_timeout(self.time);
        }
        if !self.server_done && self.server.poll_timeout().is_some_and(|d| d <= self.time) {
            self.server.handle_timeout(self.time);
        }
    }

    /// One round of work on both sides; true when anything happened.
    pub fn step(&mut self) -> bool {
        let mut progress = false;
        let now = self.time;
        // Client -> wire.
        if !self.client_done {
            self.buf.clear();
            let n = self.client.poll_transmit(now, &mut self.buf);
            if n > 0 {
                self.client_bytes += n as u64;
                let bytes = std::mem::take(&mut self.buf);
                self.to_server
                    .chunks
                    .push_back((now + self.one_way, Chunk::Data(bytes)));
                progress = true;
            }
            while let Some(e) = self.client.poll_event() {
                self.events.push(e);
                progress = true;
            }
            if self.client.is_closed() {
                self.client_done = true;
                self.to_server
                    .chunks
                    .push_back((now + self.one_way, Chunk::Fin));
                progress = true;
            }
        }
        // Server -> wire.
        if !self.server_done {
            progress |= self.server_events();
            loop {
                let mut bytes = Vec::new();
                if self.server.poll_transmit(now, &mut bytes) == 0 {
                    break;
                }
                self.to_client
                    .chunks
                    .push_back((now + self.one_way, Chunk::Data(bytes)));
                progress = true;
            }
            if self.server.is_closed() && !self.fin_sent {
                self.fin_sent = true;
                self.to_client
                    .chunks
                    .push_back((now + self.one_way, Chunk::Fin));
                progress = true;
            }
        }
        // Wire -> server.
        while let Some(chunk) = self.to_server.due(now) {
            progress = true;
            match chunk {
                Chunk::Data(bytes) if !self.server_done => {
                    for piece in bytes.chunks(self.max_read.max(1)) {
                        self.server.handle_input(piece, now);
                        self.server_events();
                    }
                }
                Chunk::Data(_) => {}
                Chunk::Fin => self.server_done = true,
            }
        }
        // Wire -> client.
        while let Some(chunk) = self.to_client.due(now) {
            progress = true;
            if self.client.is_closed() {
                continue;
            }
            match chunk {
                Chunk::Data(bytes) => {
                    for piece in bytes.chunks(self.max_read.max(1)) {
                        self.client.handle_input(piece, now);
                    }
                }
                Chunk::Fin => self.client.handle_eof(),
            }
        }
        progress
    }

    /// Handles the server's events (stores messages); true when there were any.
    fn server_events(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.server.poll_event() {
            any = true;
            match event {
                ServerEvent::Deliver(env) => {
                    if self.fail_store {
                        self.server.handle_stored(Stored::Failed, self.time);
                        continue;
                    }
                    let queue_id = format!("{:012X}", self.next_queue_id);
                    self.next_queue_id += 1;
                    self.stored.push(StoredMessage {
                        session: self.session,
                        queue_id: queue_id.clone(),
                        from: env.from,
                        rcpts: env.rcpts,
                        data: env.data,
                        via_bdat: env.via_bdat,
                    });
                    self.server
                        .handle_stored(Stored::Queued(queue_id), self.time);
                }
                ServerEvent::RecipientRejected => self.rejected_recipients += 1,
                // No TLS in memory: the connection ends at the handshake.
                ServerEvent::StartTls => {
                    self.server_done = true;
                    self.to_client
                        .chunks
                        .push_back((self.time + self.one_way, Chunk::Fin));
                }
            }
        }
        any
    }
}
