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

use crate::engine::{self, Session, SessionError, TlsPolicy};
pub use tls::TlsSettings;

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
    pub fn parse(s: &str, default_port: u16) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty host".into());
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (host, tail) = rest
                .split_once(']')
                .ok_or_else(|| format!("bad address {s:?}: missing ']'"))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("bad port in {s:?}"))?,
                None if tail.is_empty() => default_port,
                None => return Err(format!("bad address {s:?}")),
            };
            return Ok(Self {
                host: host.to_string(),
                port,
            });
        }
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let port = p.parse().map_err(|_| format!("bad port {p:?} in {s:?}"))?;
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

/// Why a connection could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed or timed out.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        reason: String,
    },
    /// Implicit TLS handshake failed, or TLS could not be set up.
    #[error("TLS with {target} failed: {reason}")]
    Tls {
        /// Where.
        target: String,
        /// Why.
        reason: String,
    },
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
        .map_err(|_| ConnectError::Connect {
            target: target.clone(),
            reason: format!("timed out after {:?}", opts.connect_timeout),
        })?
        .map_err(|e| ConnectError::Connect {
            target: target.clone(),
            reason: e.to_string(),
        })?;
        tcp.set_nodelay(true).map_err(|e| ConnectError::Connect {
            target: target.clone(),
            reason: e.to_string(),
        })?;
        let server_name = opts
            .tls
            .server_name
            .clone()
            .unwrap_or_else(|| opts.target.host.clone());
        let needs_tls = opts.session.tls != TlsPolicy::None;
        let connector = if needs_tls {
            Some(
                tls::connector(&opts.tls).map_err(|reason| ConnectError::Tls {
                    target: target.clone(),
                    reason,
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
                .map_err(|_| ConnectError::Tls {
                    target: target.clone(),
                    reason: "handshake timed out".into(),
                })?
                .map_err(|e| ConnectError::Tls {
                    target: target.clone(),
                    reason: tls::explain(&e, &server_name),
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
        if self.session.is_closed() {
            return;
        }
        if self.session.wants_tls() {
            return self.upgrade().await;
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
            Err(e) => self
                .session
                .handle_io_error(SessionError::Io(e.to_string())),
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
        if self.wpos == self.wbuf.len() && !self.session.is_closed() && !self.session.wants_tls() {
            self.wbuf.clear();
            self.wpos = 0;
            self.session.poll_transmit(Instant::now(), &mut self.wbuf);
        }
    }

    async fn upgrade(&mut self) {
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            return self.session.handle_io_error(SessionError::Tls(
                "STARTTLS on a connection that is already TLS".into(),
            ));
        };
        let Some(connector) = self.connector.as_ref() else {
            return self
                .session
                .handle_io_error(SessionError::Tls("TLS is not configured".into()));
        };
        match connector.connect(&self.server_name, tcp).await {
            Ok(s) => {
                self.tls_info = Some(info_of(&s));
                self.stream = Some(Stream::Tls(Box::new(s)));
                self.session.handle_tls_established(Instant::now());
            }
            Err(e) => self
                .session
                .handle_io_error(SessionError::Tls(tls::explain(&e, &self.server_name))),
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
    if wrote > 0 && *wpos == wbuf.len() {
        if let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
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
