//! One SMTP session of the sink: input framing, the command state machine, replies, faults.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout};

use super::fault::Fault;
use super::proto::{self, DotDecoder, LineScan};
use super::{Shared, StoredMessage};

/// Largest single read from the client.
const READ_SIZE: usize = 64 * 1024;
/// A client that sends nothing for this long gets `421 4.4.2` and is disconnected (RFC 5321
/// §4.5.3.2.7 suggests 5 minutes); one that accepts none of the replies for this long is
/// disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest time a write may block at close, or in the latency delay line.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the sink half-closed, how long it keeps reading (and discarding) until the client
/// closes, so that unread input does not turn the close into a reset.
const LINGER: Duration = Duration::from_secs(5);
/// Buffer between the delay line and the protocol when latency is emulated.
const DUPLEX_CAP: usize = 256 * 1024;
/// Most recipients per message.
const MAX_RCPTS: usize = 1000;
/// Message size limit when no SIZE is configured.
const UNLIMITED_SIZE: u64 = 64 * 1024 * 1024;

/// The byte stream a session runs on: TCP, the latency delay line, or TLS over either.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// Serves one accepted connection until it ends.
pub(crate) async fn run(stream: TcpStream, index: u64, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let latency = shared.cfg.latency;
    if latency.is_zero() {
        Session::new(index, shared).run(Box::new(stream)).await;
        return;
    }
    // Latency emulation: the protocol talks to one end of an in-memory pipe; the other end is
    // joined to the socket by two delay lines, one per direction.
    let half = latency / 2;
    let (inner, outer) = tokio::io::duplex(DUPLEX_CAP);
    let (outer_r, outer_w) = tokio::io::split(outer);
    let (tcp_r, tcp_w) = stream.into_split();
    let input = crate::latency::pump(tcp_r, outer_w, half, None);
    let output = crate::latency::pump(outer_r, tcp_w, half, Some(WRITE_TIMEOUT));
    let session = async move {
        // The connection reaches the server half a round trip after the client connected.
        tokio::time::sleep(half).await;
        Session::new(index, shared).run(Box::new(inner)).await;
    };
    let main = async { tokio::join!(session, output) };
    tokio::pin!(input);
    tokio::pin!(main);
    // The session and the output line decide when the connection is over; the input line may
    // end earlier (client half-close) or be dropped when the rest is done.
    tokio::select! {
        _ = &mut main => {}
        _ = &mut input => {
            let _ = main.await;
        }
    }
}

/// What the input framing expects next.
enum Mode {
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

/// What to do after a unit.
enum After {
    Continue,
    Close,
    StartTls,
    Stall,
}

/// A mail transaction.
struct Txn {
    from: String,
    smtputf8: bool,
    rcpts: Vec<String>,
    body: Vec<u8>,
    oversize: bool,
    bdat: bool,
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

enum Fill {
    Data,
    Eof,
    Timeout,
}

/// The session's idle timer. Progress only records the time; the single timer is re-armed
/// lazily when it fires early, so reads and writes cost no timer operations.
struct Watchdog {
    sleep: std::pin::Pin<Box<Sleep>>,
    last_progress: Instant,
}

impl Watchdog {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            last_progress: Instant::now(),
        }
    }

    fn progress(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Resolves once no progress was made for [`IDLE_TIMEOUT`].
    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            let due = self.last_progress + IDLE_TIMEOUT;
            if Instant::now() >= due {
                return;
            }
            self.sleep.as_mut().reset(due);
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    index: u64,
    faults: Vec<Fault>,
    /// Input still allowed by [`Fault::DropAfterInputBytes`].
    input_left: Option<u64>,
    dribble: bool,
    inbuf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    unit_index: u64,
    mode: Mode,
    helo: bool,
    tls_active: bool,
    authenticated: bool,
    txn: Option<Txn>,
    size_limit: u64,
    watchdog: Watchdog,
}

impl Session {
    fn new(index: u64, shared: Arc<Shared>) -> Self {
        let faults = shared
            .cfg
            .faults
            .as_ref()
            .map(|plan| plan.for_session(index).to_vec())
            .unwrap_or_default();
        let input_left = faults.iter().find_map(|f| match f {
            Fault::DropAfterInputBytes(n) => Some(*n),
            _ => None,
        });
        let dribble = faults.contains(&Fault::DribbleReplies);
        let size_limit = shared.cfg.size.unwrap_or(UNLIMITED_SIZE);
        Self {
            shared,
            index,
            faults,
            input_left,
            dribble,
            inbuf: Vec::with_capacity(READ_SIZE),
            pos: 0,
            out: Vec::with_capacity(1024),
            unit_index: 0,
            mode: Mode::Command,
            helo: false,
            tls_active: false,
            authenticated: false,
            txn: None,
            size_limit,
            watchdog: Watchdog::new(),
        }
    }

    async fn run(mut self, mut io: BoxIo) {
        let greeting = format!("220 {} ESMTP pipemail-sink", self.shared.cfg.hostname);
        self.reply(&greeting);
        loop {
            let after = match self.next_unit() {
                Some(unit) => self.complete(unit).await,
                None => {
                    // Nothing complete is buffered: send the replies collected so far before
                    // blocking to read (RFC 2920 §3.2), one write per pipelined group.
                    if self.flush(&mut io).await.is_err() {
                        return;
                    }
                    if self.input_left == Some(0) {
                        After::Close
                    } else {
                        match self.fill(&mut io).await {
                            Fill::Data => After::Continue,
                            Fill::Eof => return,
                            Fill::Timeout => {
                                let text = format!(
                                    "421 4.4.2 {} Error: timeout exceeded",
                                    self.shared.cfg.hostname
                                );
                                self.reply(&text);
                                After::Close
                            }
                        }
                    }
                }
            };
            match after {
                After::Continue => {}
                After::Close => {
                    self.close(io).await;
                    return;
                }
                After::Stall => {
                    if self.flush(&mut io).await.is_ok() {
                        discard_input(&mut io).await;
                    }
                    return;
                }
                After::StartTls => {
                    if self.flush(&mut io).await.is_err() {
                        return;
                    }
                    // Whatever the client sent after STARTTLS and before the handshake is
                    // discarded (RFC 3207 §4.2; a pipelined command here would be injection).
                    self.inbuf.clear();
                    self.pos = 0;
                    let Some(acceptor) = self.shared.tls.clone() else {
                        return;
                    };
                    match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => io = Box::new(tls),
                        _ => return,
                    }
                    self.tls_active = true;
                    self.helo = false;
                    self.authenticated = false;
                    self.txn = None;
                    self.mode = Mode::Command;
                }
            }
        }
    }

    /// Reads more input (at most what a `DropAfterInputBytes` fault still allows).
    async fn fill(&mut self, io: &mut BoxIo) -> Fill {
        if self.pos > 0 {
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        let want = match self.input_left {
            Some(left) => usize::try_from(left).unwrap_or(usize::MAX).min(READ_SIZE),
            None => READ_SIZE,
        };
        self.inbuf.reserve(want);
        let mut limited = (&mut *io).take(want as u64);
        let read = tokio::select! {
            read = limited.read_buf(&mut self.inbuf) => read,
            () = self.watchdog.expired() => return Fill::Timeout,
        };
        match read {
            Ok(0) | Err(_) => Fill::Eof,
            Ok(n) => {
                self.watchdog.progress();
                if let Some(left) = &mut self.input_left {
                    *left -= n as u64;
                }
                Fill::Data
            }
        }
    }

    /// Writes the collected replies.
    async fn flush(&mut self, io: &mut BoxIo) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let result = tokio::select! {
            written = write_out(io, &out, self.dribble) => written,
            () = self.watchdog.expired() => Err(std::io::ErrorKind::TimedOut.into()),
        };
        self.watchdog.progress();
        self.out = out;
        self.out.clear();
        result
    }

    /// Graceful close: replies out, FIN, then discard input until the client closes.
    async fn close(mut self, mut io: BoxIo) {
        if self.flush(&mut io).await.is_err() {
            return;
        }
        let _ = timeout(WRITE_TIMEOUT, io.shutdown()).await;
        let _ = timeout(LINGER, discard_input(&mut io)).await;
    }

    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Frames the next complete unit from the buffered input, if there is one. Body and chunk
    /// octets are moved into the transaction as they are framed.
    fn next_unit(&mut self) -> Option<Unit> {
        loop {
            let buf = &self.inbuf[self.pos..];
            match &mut self.mode {
                Mode::Command | Mode::AuthPlain | Mode::AuthLoginUser | Mode::AuthLoginPass(_) => {
                    match proto::scan_line(buf) {
                        LineScan::Line { len, consumed } => {
                            let line = buf[..len].to_vec();
                            self.pos += consumed;
                            if matches!(self.mode, Mode::Command) {
                                if let Some(chunk) = self.bdat_start(&line) {
                                    self.mode = chunk;
                                    continue;
                                }
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
        let (verb, args) = proto::split_verb(line);
        if verb != "BDAT" {
            return None;
        }
        let (size, last) = proto::parse_bdat(args)?;
        let keep = self.shared.cfg.chunking
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
    async fn complete(&mut self, unit: Unit) -> After {
        let index = self.unit_index;
        self.unit_index += 1;
        match self.fault_for(index) {
            None | Some(Fault::DropAfterInputBytes(_) | Fault::DribbleReplies) => {
                self.execute(unit).await
            }
            Some(Fault::Stall { .. }) => After::Stall,
            Some(Fault::Reply421 { .. }) => {
                self.abandon(&unit);
                let text = format!(
                    "421 4.3.0 {} Service not available, closing transmission channel",
                    self.shared.cfg.hostname
                );
                self.reply(&text);
                After::Close
            }
            Some(Fault::ReplyCode { code, .. }) => {
                self.abandon(&unit);
                self.reply(&format!(
                    "{code} {}.0.0 Error: injected failure",
                    code / 100
                ));
                After::Continue
            }
            Some(Fault::DropBeforeReply { stored, .. }) => {
                if stored {
                    let mark = self.out.len();
                    let _ = self.execute(unit).await;
                    self.out.truncate(mark);
                } else {
                    self.abandon(&unit);
                }
                After::Close
            }
            Some(Fault::MidReplyDrop { .. }) => {
                let mark = self.out.len();
                let _ = self.execute(unit).await;
                let len = self.out.len() - mark;
                self.out.truncate(mark + (len / 2).max(1).min(len));
                After::Close
            }
        }
    }

    /// Undoes a unit that a fault answers instead of executing it.
    fn abandon(&mut self, unit: &Unit) {
        match unit {
            Unit::Line(line) => match self.mode {
                Mode::Command => {
                    if proto::split_verb(line).0 == "RCPT" {
                        self.shared.rejected_recipient();
                    }
                }
                // An AUTH continuation: the exchange ends unauthenticated.
                _ => self.mode = Mode::Command,
            },
            Unit::TooLong => {}
            Unit::Dot | Unit::Chunk { .. } => self.txn = None,
        }
    }

    async fn execute(&mut self, unit: Unit) -> After {
        match unit {
            Unit::Line(line) => {
                if matches!(self.mode, Mode::Command) {
                    self.command(&line)
                } else {
                    self.auth_continue(&line);
                    After::Continue
                }
            }
            Unit::TooLong => {
                self.reply("500 5.5.2 Error: line too long");
                After::Continue
            }
            Unit::Dot => {
                self.finish_data().await;
                After::Continue
            }
            Unit::Chunk { size, last } => {
                self.finish_chunk(size, last).await;
                After::Continue
            }
        }
    }

    fn command(&mut self, line: &[u8]) -> After {
        let (verb, args) = proto::split_verb(line);
        match verb.as_str() {
            "EHLO" => self.ehlo(args),
            "HELO" => {
                if args.is_empty() {
                    self.reply("501 5.5.4 Syntax: HELO hostname");
                } else {
                    self.helo = true;
                    self.txn = None;
                    let text = format!("250 {}", self.shared.cfg.hostname);
                    self.reply(&text);
                }
            }
            "MAIL" => self.mail(args),
            "RCPT" => {
                if let Err(text) = self.rcpt(args) {
                    self.shared.rejected_recipient();
                    self.reply(&text);
                }
            }
            "DATA" => self.data(args),
            // A well-formed BDAT never gets here (its chunk is framed first).
            "BDAT" => self.reply("501 5.5.4 Syntax: BDAT size [LAST]"),
            "RSET" => {
                self.txn = None;
                self.reply("250 2.0.0 Ok");
            }
            "NOOP" => self.reply("250 2.0.0 Ok"),
            "VRFY" => {
                self.reply(
                    "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
                );
            }
            "QUIT" => {
                self.reply("221 2.0.0 Bye");
                return After::Close;
            }
            "STARTTLS" => return self.starttls(args),
            "AUTH" => self.auth(args),
            _ => self.reply("500 5.5.2 Error: command not recognized"),
        }
        After::Continue
    }

    fn auth_offered(&self) -> bool {
        self.shared.cfg.auth.is_some() && (self.tls_active || self.shared.cfg.allow_plain_auth)
    }

    fn ehlo(&mut self, args: &[u8]) {
        if args.is_empty() {
            self.reply("501 5.5.4 Syntax: EHLO hostname");
            return;
        }
        self.helo = true;
        self.txn = None;
        let cfg = &self.shared.cfg;
        let mut lines = vec![cfg.hostname.clone()];
        if cfg.pipelining {
            lines.push("PIPELINING".into());
        }
        if let Some(size) = cfg.size {
            lines.push(format!("SIZE {size}"));
        }
        lines.push("8BITMIME".into());
        lines.push("ENHANCEDSTATUSCODES".into());
        if cfg.chunking {
            lines.push("CHUNKING".into());
        }
        if cfg.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if self.shared.tls.is_some() && !self.tls_active {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let text = format!("250{sep}{line}");
            self.reply(&text);
        }
    }

    fn mail(&mut self, args: &[u8]) {
        if !self.helo {
            return self.reply("503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.shared.cfg.auth.is_some() && !self.authenticated {
            return self.reply("530 5.7.0 Authentication required");
        }
        if self.txn.is_some() {
            return self.reply("503 5.5.1 Error: nested MAIL command");
        }
        let Ok((from, params)) = proto::parse_path(args, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let mut smtputf8 = false;
        for param in params {
            let (key, value) = match param.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (param, None),
            };
            match (key.to_ascii_uppercase().as_str(), value) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.size_limit => {
                        return self.reply("552 5.3.4 Message size exceeds fixed limit");
                    }
                    Ok(_) => {}
                    Err(_) => return self.reply("501 5.5.4 Bad SIZE parameter"),
                },
                ("BODY", Some(v))
                    if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {}
                ("SMTPUTF8", None) if self.shared.cfg.smtputf8 => smtputf8 = true,
                _ => {
                    let text = format!("555 5.5.4 Unsupported option: {param}");
                    return self.reply(&text);
                }
            }
        }
        if !from.is_ascii() && !smtputf8 {
            return self.reply("553 5.6.7 Must declare SMTPUTF8 to send unicode address");
        }
        self.txn = Some(Txn {
            from,
            smtputf8,
            rcpts: Vec::new(),
            body: Vec::new(),
            oversize: false,
            bdat: false,
        });
        self.reply("250 2.1.0 Ok");
    }

    /// `Err` carries the rejection reply (the caller counts it).
    fn rcpt(&mut self, args: &[u8]) -> Result<(), String> {
        let Some(txn) = &self.txn else {
            return Err("503 5.5.1 Error: need MAIL command".into());
        };
        let Ok((addr, params)) = proto::parse_path(args, "TO:") else {
            return Err("501 5.5.4 Syntax: RCPT TO:<address>".into());
        };
        if addr.is_empty() {
            return Err("501 5.1.3 Bad recipient address syntax".into());
        }
        if let Some(param) = params.first() {
            return Err(format!("555 5.5.4 Unsupported option: {param}"));
        }
        if !addr.is_ascii() && !txn.smtputf8 {
            return Err("553 5.6.7 Must declare SMTPUTF8 to send unicode address".into());
        }
        if txn.rcpts.len() >= MAX_RCPTS {
            return Err("452 4.5.3 Error: too many recipients".into());
        }
        if let Some(rule) = self.shared.cfg.reject.iter().find(|r| r.matches(&addr)) {
            let enhanced = if rule.code < 500 { "4.2.0" } else { "5.1.1" };
            return Err(format!(
                "{} {enhanced} <{addr}>: Recipient address rejected",
                rule.code
            ));
        }
        if let Some(txn) = &mut self.txn {
            txn.rcpts.push(addr);
        }
        self.reply("250 2.1.5 Ok");
        Ok(())
    }

    fn data(&mut self, args: &[u8]) {
        if !args.is_empty() {
            return self.reply("501 5.5.4 Syntax: DATA");
        }
        if !self.helo {
            return self.reply("503 5.5.1 Error: send HELO/EHLO first");
        }
        let Some(txn) = &mut self.txn else {
            return self.reply("503 5.5.1 Error: need RCPT command");
        };
        if txn.bdat {
            return self.reply("503 5.5.1 Error: DATA after BDAT");
        }
        if txn.rcpts.is_empty() {
            return self.reply("554 5.5.1 Error: no valid recipients");
        }
        txn.body.clear();
        txn.oversize = false;
        self.mode = Mode::Data(DotDecoder::new());
        self.reply("354 End data with <CR><LF>.<CR><LF>");
    }

    async fn finish_data(&mut self) {
        let Some(txn) = self.txn.take() else {
            return self.reply("503 5.5.1 Error: need RCPT command");
        };
        if txn.oversize {
            return self.reply("552 5.3.4 Error: message file too big");
        }
        self.deliver(txn, false).await;
    }

    async fn finish_chunk(&mut self, size: u64, last: bool) {
        if !self.shared.cfg.chunking {
            return self.reply("502 5.5.1 Error: CHUNKING not enabled");
        }
        if !self.helo {
            return self.reply("503 5.5.1 Error: send HELO/EHLO first");
        }
        let Some(txn) = &mut self.txn else {
            return self.reply("503 5.5.1 Error: need MAIL command");
        };
        if txn.rcpts.is_empty() {
            self.txn = None;
            return self.reply("554 5.5.1 Error: no valid recipients");
        }
        if txn.oversize {
            self.txn = None;
            return self.reply("552 5.3.4 Error: message file too big");
        }
        txn.bdat = true;
        if last {
            if let Some(txn) = self.txn.take() {
                self.deliver(txn, true).await;
            }
        } else {
            let text = format!("250 2.0.0 Ok: {size} octets received");
            self.reply(&text);
        }
    }

    /// Stores a complete message and answers its final dot / BDAT LAST.
    async fn deliver(&mut self, txn: Txn, via_bdat: bool) {
        let id = self
            .shared
            .next_queue_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let queue_id = format!("{id:012X}");
        let msg = StoredMessage {
            session: self.index,
            queue_id: queue_id.clone(),
            from: txn.from,
            rcpts: txn.rcpts,
            data: txn.body,
            via_bdat,
        };
        let stored = if self.shared.maildir.is_some() {
            // The file write and the recording happen in one blocking task, so a session cut
            // off meanwhile (stop) cannot leave a stored but uncounted message.
            let shared = Arc::clone(&self.shared);
            tokio::task::spawn_blocking(move || {
                let maildir = shared.maildir.as_ref().expect("maildir checked above");
                maildir.deliver(&msg.queue_id, &msg.data)?;
                shared.record(msg);
                Ok::<(), std::io::Error>(())
            })
            .await
            .is_ok_and(|r| r.is_ok())
        } else {
            self.shared.record(msg);
            true
        };
        if stored {
            let text = format!("250 2.0.0 Ok: queued as {queue_id}");
            self.reply(&text);
        } else {
            self.reply("451 4.3.0 Error: queue file write error");
        }
    }

    fn starttls(&mut self, args: &[u8]) -> After {
        if self.shared.tls.is_none() {
            self.reply("502 5.5.1 Error: command not implemented");
        } else if self.tls_active {
            self.reply("503 5.5.1 Error: TLS already active");
        } else if !args.is_empty() {
            self.reply("501 5.5.4 Syntax: STARTTLS");
        } else {
            self.reply("220 2.0.0 Ready to start TLS");
            return After::StartTls;
        }
        After::Continue
    }

    fn auth(&mut self, args: &[u8]) {
        if self.shared.cfg.auth.is_none() {
            return self.reply("502 5.5.1 Error: authentication not enabled");
        }
        if !self.helo {
            return self.reply("503 5.5.1 Error: send HELO/EHLO first");
        }
        if !self.auth_offered() {
            return self
                .reply("538 5.7.11 Encryption required for requested authentication mechanism");
        }
        if self.authenticated {
            return self.reply("503 5.5.1 Error: already authenticated");
        }
        if self.txn.is_some() {
            return self.reply("503 5.5.1 Error: MAIL transaction in progress");
        }
        let (mechanism, initial) = proto::split_verb(args);
        let initial = (!initial.is_empty()).then_some(initial);
        match (mechanism.as_str(), initial) {
            ("PLAIN", Some(response)) => self.auth_plain(response),
            ("PLAIN", None) => {
                self.mode = Mode::AuthPlain;
                self.reply("334 ");
            }
            ("LOGIN", Some(user)) => match decode_b64(user) {
                Some(user) => {
                    self.mode = Mode::AuthLoginPass(user);
                    self.reply("334 UGFzc3dvcmQ6");
                }
                None => self.reply("501 5.5.2 Error: cannot decode response"),
            },
            ("LOGIN", None) => {
                self.mode = Mode::AuthLoginUser;
                self.reply("334 VXNlcm5hbWU6");
            }
            _ => self.reply("504 5.5.4 Unrecognized authentication type"),
        }
    }

    fn auth_continue(&mut self, line: &[u8]) {
        let mode = std::mem::replace(&mut self.mode, Mode::Command);
        if line == b"*" {
            return self.reply("501 5.7.0 Authentication aborted");
        }
        match mode {
            Mode::AuthPlain => self.auth_plain(line),
            Mode::AuthLoginUser => match decode_b64(line) {
                Some(user) => {
                    self.mode = Mode::AuthLoginPass(user);
                    self.reply("334 UGFzc3dvcmQ6");
                }
                None => self.reply("501 5.5.2 Error: cannot decode response"),
            },
            Mode::AuthLoginPass(user) => match decode_b64(line) {
                Some(pass) => self.auth_result(&user, &pass),
                None => self.reply("501 5.5.2 Error: cannot decode response"),
            },
            _ => self.reply("503 5.5.1 Error: no AUTH exchange in progress"),
        }
    }

    fn auth_plain(&mut self, response: &[u8]) {
        let Some(decoded) = decode_b64(response) else {
            return self.reply("501 5.5.2 Error: cannot decode response");
        };
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        match parts.as_slice() {
            [authzid, user, pass] if authzid.is_empty() || authzid == user => {
                let (user, pass) = (user.to_vec(), pass.to_vec());
                self.auth_result(&user, &pass);
            }
            _ => self.reply("535 5.7.8 Error: authentication failed"),
        }
    }

    fn auth_result(&mut self, user: &[u8], pass: &[u8]) {
        let ok = self
            .shared
            .cfg
            .auth
            .as_ref()
            .is_some_and(|(u, p)| u.as_bytes() == user && p.as_bytes() == pass);
        if ok {
            self.authenticated = true;
            self.reply("235 2.7.0 Authentication successful");
        } else {
            self.reply("535 5.7.8 Error: authentication failed");
        }
    }
}

/// Decodes a SASL response (`=` is the empty response).
fn decode_b64(text: &[u8]) -> Option<Vec<u8>> {
    if text == b"=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

async fn write_out(io: &mut BoxIo, bytes: &[u8], dribble: bool) -> std::io::Result<()> {
    if dribble {
        for byte in bytes.chunks(1) {
            io.write_all(byte).await?;
            io.flush().await?;
            tokio::task::yield_now().await;
        }
    } else {
        io.write_all(bytes).await?;
    }
    io.flush().await
}

/// Reads and throws away input until end of stream or an error.
async fn discard_input(io: &mut BoxIo) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
