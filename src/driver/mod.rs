//! Thin tokio driver: moves bytes between a socket and an [`engine::Session`], turning
//! engine deadlines into timers and doing the TLS handshakes the engine asks for.
//!
//! One `poll_fn` polls the write of the pending group and a read in the same task, so the
//! driver reads while it writes (RFC 2920 §3.1): a deep pipeline whose replies fill the
//! server's socket buffer cannot deadlock.

pub mod tls;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_native_tls::TlsStream;

use crate::engine::{
    self, IoFailure, Session, SessionError, SessionState, Stage, TlsFailure, TlsPolicy,
};
pub use tls::{TlsHints, TlsSettings, TlsSetupError};

/// Why `host[:port]` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Nothing given.
    #[error("empty host")]
    Empty,
    /// `[v6` without `]`.
    #[error("bad address {0:?}: missing ']'")]
    MissingBracket(String),
    /// Something after `]` that is not `:port`.
    #[error("bad address {0:?}")]
    BadAddress(String),
    /// The port is not a number from 0 to 65535.
    #[error("bad port in {0:?}")]
    BadPort(String),
}

/// `host[:port]`, `[v6]:port`; port defaults to 25 (465 with implicit TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Target {
    /// Parses `host[:port]`.
    pub fn parse(s: &str, default_port: u16) -> Result<Self, TargetError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (host, tail) = rest
                .split_once(']')
                .ok_or_else(|| TargetError::MissingBracket(s.to_string()))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| TargetError::BadPort(s.to_string()))?,
                None if tail.is_empty() => default_port,
                None => return Err(TargetError::BadAddress(s.to_string())),
            };
            return Ok(Self {
                host: host.to_string(),
                port,
            });
        }
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let port = p.parse().map_err(|_| TargetError::BadPort(s.to_string()))?;
                Ok(Self {
                    host: h.to_string(),
                    port,
                })
            }
            _ => Ok(Self {
                host: s.to_string(),
                port: default_port,
            }),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Everything needed to open a session.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Where to connect.
    pub target: Target,
    /// Engine settings (TLS policy, pipelining, AUTH, timeouts...).
    pub session: engine::Config,
    /// Certificate checks.
    pub tls: TlsSettings,
    /// TCP connect (and implicit TLS handshake) timeout.
    pub connect_timeout: Duration,
}

/// Why a connection could not be opened. `Display` is complete (one line, cause included);
/// the typed cause stays in the variant.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The target is not `host[:port]`.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The TCP connect failed.
    #[error("cannot connect to {target}: {error}")]
    Connect {
        /// Where.
        target: String,
        /// Why (`ConnectionRefused`, `TimedOut`, DNS failure...).
        error: IoFailure,
    },
    /// The TCP connect (or the implicit TLS handshake) took longer than the connect timeout.
    #[error("cannot connect to {target}: timed out after {after:?}")]
    Timeout {
        /// Where.
        target: String,
        /// The timeout.
        after: Duration,
    },
    /// TLS could not be set up (CA file unreadable, bad configuration).
    #[error("TLS with {target} failed: {error}")]
    TlsSetup {
        /// Where.
        target: String,
        /// Why.
        error: TlsSetupError,
    },
    /// The implicit TLS handshake failed.
    #[error("TLS with {target} failed: {error}")]
    Tls {
        /// Where.
        target: String,
        /// What the handshake said, with the caller's hint.
        error: TlsFailure,
    },
}

impl ConnectError {
    /// True when another attempt with the same settings cannot do better (the TLS setup or
    /// the certificate is wrong, the target does not parse); a refused or timed-out TCP
    /// connect is transient.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Target(_) | Self::TlsSetup { .. } | Self::Tls { .. }
        )
    }

    /// The stage a report names for rows this error kept from being sent.
    pub fn stage(&self) -> Stage {
        match self {
            Self::TlsSetup { .. } | Self::Tls { .. } => Stage::Tls,
            _ => Stage::Connect,
        }
    }

    /// The I/O error behind a failed TCP connect.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Connect { error, .. } => Some(error.kind()),
            Self::Timeout { .. } => Some(io::ErrorKind::TimedOut),
            _ => None,
        }
    }
}

/// A plain or TLS socket.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the peer's certificate said (when TLS is on).
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// DER of the server's certificate.
    pub peer_certificate_der: Option<Vec<u8>>,
}

const READ_BUF: usize = 16 * 1024;

/// One SMTP connection: socket + session.
#[derive(Debug)]
pub struct Connection {
    stream: Option<Stream>,
    session: Session,
    rbuf: Box<[u8]>,
    wbuf: Vec<u8>,
    wpos: usize,
    connector: Option<tokio_native_tls::TlsConnector>,
    server_name: String,
    hints: TlsHints,
    tls_info: Option<TlsInfo>,
    bytes_out: u64,
}

impl Connection {
    /// Connects (and with implicit TLS, handshakes); the session then waits for the greeting.
    pub async fn open(opts: &ConnectOptions) -> Result<Self, ConnectError> {
        let target = opts.target.to_string();
        let tcp = tokio::time::timeout(
            opts.connect_timeout,
            TcpStream::connect((opts.target.host.as_str(), opts.target.port)),
        )
        .await
        .map_err(|_| ConnectError::Timeout {
            target: target.clone(),
            after: opts.connect_timeout,
        })?
        .map_err(|e| ConnectError::Connect {
            target: target.clone(),
            error: e.into(),
        })?;
        tcp.set_nodelay(true).map_err(|e| ConnectError::Connect {
            target: target.clone(),
            error: e.into(),
        })?;
        let server_name = opts
            .tls
            .server_name
            .clone()
            .unwrap_or_else(|| opts.target.host.clone());
        let needs_tls = opts.session.tls != TlsPolicy::None;
        let connector = if needs_tls {
            Some(
                tls::connector(&opts.tls).map_err(|error| ConnectError::TlsSetup {
                    target: target.clone(),
                    error,
                })?,
            )
        } else {
            None
        };
        let mut tls_info = None;
        let stream = if opts.session.tls == TlsPolicy::Implicit {
            let c = connector
                .as_ref()
                .expect("built above for every policy but None");
            let s = tokio::time::timeout(opts.connect_timeout, c.connect(&server_name, tcp))
                .await
                .map_err(|_| ConnectError::Timeout {
                    target: target.clone(),
                    after: opts.connect_timeout,
                })?
                .map_err(|e| ConnectError::Tls {
                    target: target.clone(),
                    error: tls::explain(e, &server_name, &opts.tls.hints),
                })?;
            tls_info = Some(info_of(&s));
            Stream::Tls(Box::new(s))
        } else {
            Stream::Plain(tcp)
        };
        Ok(Self {
            stream: Some(stream),
            session: Session::new(opts.session.clone(), Instant::now()),
            rbuf: vec![0; READ_BUF].into_boxed_slice(),
            wbuf: Vec::with_capacity(64 * 1024),
            wpos: 0,
            connector,
            server_name,
            hints: opts.tls.hints.clone(),
            tls_info,
            bytes_out: 0,
        })
    }

    /// The engine.
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The engine, read-only.
    pub fn session_ref(&self) -> &Session {
        &self.session
    }

    /// TLS details once TLS is up.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls_info.as_ref()
    }

    /// Octets written so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// True when bytes are waiting to be written.
    pub fn has_pending_write(&self) -> bool {
        self.wpos < self.wbuf.len()
    }

    /// Drives I/O until something happened: a read was handed to the session, a pending
    /// group was fully written, a TLS handshake finished, or a timer fired. Errors end the
    /// session (they arrive as [`engine::Event::Closed`]).
    pub async fn step(&mut self) {
        match self.session.state() {
            SessionState::Closed => return,
            SessionState::TlsHandshake => return self.upgrade().await,
            _ => {}
        }
        self.prepare();
        let deadline = self.session.poll_timeout();
        let has_write = self.wpos < self.wbuf.len();
        if !has_write && deadline.is_none() && self.session.in_flight() == 0 {
            // Nothing to send and nothing expected: the caller must act (send/flush/quit).
            return;
        }
        let stream = self.stream.as_mut().expect("stream present until closed");
        let (wbuf, wpos, rbuf) = (&self.wbuf, &mut self.wpos, &mut self.rbuf);
        let io = poll_fn(|cx| poll_io(stream, cx, wbuf, wpos, rbuf));
        let result = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), io).await {
                Ok(r) => r,
                Err(_) => {
                    self.session.handle_timeout(Instant::now());
                    return;
                }
            },
            None => io.await,
        };
        match result {
            Ok(Progress::Read(0)) => self.session.handle_eof(),
            Ok(Progress::Read(n)) => self.session.handle_input(&self.rbuf[..n], Instant::now()),
            Ok(Progress::Wrote(n)) => self.bytes_out += n as u64,
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionReset
                    || e.kind() == io::ErrorKind::BrokenPipe =>
            {
                self.session.handle_eof();
            }
            Err(e) => self.session.handle_io_error(SessionError::from(e)),
        }
    }

    /// Steps until the engine waits for its caller (nothing to send, no reply expected) or
    /// the session closes. Events stay queued in the session for the caller to drain.
    pub async fn settle(&mut self) {
        loop {
            if self.session.is_closed() {
                return;
            }
            let idle_before = self.session.in_flight() == 0 && !self.has_pending_write();
            self.step().await;
            if idle_before && self.session.in_flight() == 0 && !self.has_pending_write() {
                return;
            }
        }
    }

    /// Asks the engine for the next group when the previous one is fully written. Callers
    /// that journal commits call this, then [`Session::take_committed`], then
    /// [`Connection::step`] (which calls it too; a second call is a no-op).
    pub fn prepare(&mut self) {
        let state = self.session.state();
        let may_write = !matches!(state, SessionState::Closed | SessionState::TlsHandshake);
        if self.wpos == self.wbuf.len() && may_write {
            self.wbuf.clear();
            self.wpos = 0;
            self.session.poll_transmit(Instant::now(), &mut self.wbuf);
        }
    }

    async fn upgrade(&mut self) {
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            let e = TlsFailure::new(
                engine::TlsFailureKind::Setup,
                "STARTTLS on a connection that is already TLS",
            );
            return self.session.handle_io_error(SessionError::Tls(e));
        };
        let Some(connector) = self.connector.as_ref() else {
            let e = TlsFailure::new(engine::TlsFailureKind::Setup, "TLS is not configured");
            return self.session.handle_io_error(SessionError::Tls(e));
        };
        match connector.connect(&self.server_name, tcp).await {
            Ok(s) => {
                self.tls_info = Some(info_of(&s));
                self.stream = Some(Stream::Tls(Box::new(s)));
                self.session.handle_tls_established(Instant::now());
            }
            Err(e) => {
                let e = tls::explain(e, &self.server_name, &self.hints);
                self.session.handle_io_error(SessionError::Tls(e));
            }
        }
    }

    /// Closes the socket (after the session ended).
    pub async fn shutdown(&mut self) {
        use tokio::io::AsyncWriteExt;
        if let Some(mut s) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
        }
    }
}

fn info_of(s: &TlsStream<TcpStream>) -> TlsInfo {
    let der = s
        .get_ref()
        .peer_certificate()
        .ok()
        .flatten()
        .and_then(|c| c.to_der().ok());
    TlsInfo {
        peer_certificate_der: der,
    }
}

enum Progress {
    Read(usize),
    Wrote(usize),
}

/// Writes what is pending and reads what has arrived, in one poll: whichever is ready.
fn poll_io(
    stream: &mut Stream,
    cx: &mut Context<'_>,
    wbuf: &[u8],
    wpos: &mut usize,
    rbuf: &mut [u8],
) -> Poll<io::Result<Progress>> {
    let mut wrote = 0;
    while *wpos < wbuf.len() {
        match Pin::new(&mut *stream).poll_write(cx, &wbuf[*wpos..]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                *wpos += n;
                wrote += n;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => break,
        }
    }
    if wrote > 0
        && *wpos == wbuf.len()
        && let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_flush(cx)
    {
        return Poll::Ready(Err(e));
    }
    let mut rb = ReadBuf::new(rbuf);
    match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => return Poll::Ready(Ok(Progress::Read(rb.filled().len()))),
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Pending => {}
    }
    if wrote > 0 && *wpos == wbuf.len() {
        Poll::Ready(Ok(Progress::Wrote(wrote)))
    } else {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("mx.example", 25).unwrap(),
            Target {
                host: "mx.example".into(),
                port: 25
            }
        );
        assert_eq!(
            Target::parse("127.0.0.1:2525", 25).unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 2525
            }
        );
        assert_eq!(
            Target::parse("[::1]:26", 25).unwrap(),
            Target {
                host: "::1".into(),
                port: 26
            }
        );
        assert_eq!(
            Target::parse("::1", 25).unwrap(),
            Target {
                host: "::1".into(),
                port: 25
            }
        );
        assert!(Target::parse("host:x", 25).is_err());
        assert_eq!(
            Target::parse("[::1]:26", 25).unwrap().to_string(),
            "[::1]:26"
        );
    }
}
