//! The tokio side of one sink connection: reads into the sans-IO [`Server`], stores what it
//! delivers, writes its replies, runs STARTTLS, and turns its deadline into a timer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::config::SinkConfig;
use super::server::{Envelope, Event, IDLE_TIMEOUT, Server, Stored};
use super::store::{Maildir, SinkStats, StoredMessage};

/// Largest single read from the client.
const READ_SIZE: usize = 64 * 1024;
/// Longest time a write may block at close, or in the latency delay line.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the sink half-closed, how long it keeps reading (and discarding) until the client
/// closes, so that unread input does not turn the close into a reset.
const LINGER: Duration = Duration::from_secs(5);
/// Buffer between the delay line and the protocol when latency is emulated.
const DUPLEX_CAP: usize = 256 * 1024;

/// The byte stream a session runs on: TCP, the latency delay line, or TLS over either.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) sessions: AtomicU64,
    pub(super) messages: AtomicU64,
    pub(super) recipients: AtomicU64,
    pub(super) rejected_recipients: AtomicU64,
    pub(super) bytes: AtomicU64,
}

/// State shared by the accept loop, the sessions and the handle.
pub(super) struct Shared {
    pub(super) cfg: Arc<SinkConfig>,
    pub(super) tls: Option<tokio_native_tls::TlsAcceptor>,
    pub(super) maildir: Option<Maildir>,
    pub(super) counters: Counters,
    pub(super) messages: Mutex<Vec<StoredMessage>>,
    pub(super) next_queue_id: AtomicU64,
}

impl Shared {
    /// Records an accepted message: counters, and the in-memory list if configured.
    pub(super) fn record(&self, msg: StoredMessage) {
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

    pub(super) fn rejected_recipient(&self) {
        self.counters
            .rejected_recipients
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stats(&self) -> SinkStats {
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

/// Serves one accepted connection until it ends.
pub(crate) async fn run(stream: TcpStream, index: u64, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let latency = shared.cfg.latency;
    if latency.is_zero() {
        serve(index, shared, Box::new(stream)).await;
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
        serve(index, shared, Box::new(inner)).await;
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

async fn serve(index: u64, shared: Arc<Shared>, mut io: BoxIo) {
    let mut server = Server::new(Arc::clone(&shared.cfg), index, now());
    let mut inbuf = vec![0u8; READ_SIZE];
    let mut out = Vec::with_capacity(1024);
    loop {
        while let Some(event) = server.poll_event() {
            match event {
                Event::Deliver(envelope) => {
                    let result = store(&shared, index, envelope).await;
                    server.handle_stored(result, now());
                }
                Event::RecipientRejected => shared.rejected_recipient(),
                Event::StartTls => {}
            }
        }
        // Everything buffered has been processed: send the replies collected so far before
        // blocking to read (RFC 2920 §3.2), one write per pipelined group.
        match timeout(IDLE_TIMEOUT, flush(&mut server, &mut io, &mut out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        if server.is_closed() {
            let _ = timeout(WRITE_TIMEOUT, io.shutdown()).await;
            let _ = timeout(LINGER, discard_input(&mut io)).await;
            return;
        }
        if server.is_stalled() {
            discard_input(&mut io).await;
            return;
        }
        if server.wants_tls() {
            let Some(acceptor) = shared.tls.clone() else {
                return;
            };
            match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                Ok(Ok(tls)) => io = Box::new(tls),
                _ => return,
            }
            server.handle_tls_established(now());
            continue;
        }
        let read = match server.poll_timeout() {
            Some(deadline) => {
                let deadline = tokio::time::Instant::from_std(deadline);
                tokio::select! {
                    read = io.read(&mut inbuf) => Some(read),
                    () = tokio::time::sleep_until(deadline) => None,
                }
            }
            None => Some(io.read(&mut inbuf).await),
        };
        match read {
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(n)) => server.handle_input(&inbuf[..n], now()),
            None => server.handle_timeout(now()),
        }
    }
}

/// Writes what the server has to send; each `poll_transmit` chunk is one write (one byte per
/// write for [`super::Fault::DribbleReplies`], yielding to the runtime between them).
async fn flush(server: &mut Server, io: &mut BoxIo, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut first = true;
    loop {
        out.clear();
        if server.poll_transmit(now(), out) == 0 {
            return Ok(());
        }
        if !first {
            tokio::task::yield_now().await;
        }
        first = false;
        io.write_all(out).await?;
        io.flush().await?;
    }
}

/// Stores a message: queue id, Maildir file, counters.
async fn store(shared: &Arc<Shared>, index: u64, envelope: Envelope) -> Stored {
    let id = shared.next_queue_id.fetch_add(1, Ordering::Relaxed);
    let queue_id = format!("{id:012X}");
    let msg = StoredMessage {
        session: index,
        queue_id: queue_id.clone(),
        from: envelope.from,
        rcpts: envelope.rcpts,
        data: envelope.data,
        via_bdat: envelope.via_bdat,
    };
    if shared.maildir.is_none() {
        shared.record(msg);
        return Stored::Queued(queue_id);
    }
    // The file write and the recording happen in one blocking task, so a session cut off
    // meanwhile (stop) cannot leave a stored but uncounted message.
    let shared = Arc::clone(shared);
    let stored = tokio::task::spawn_blocking(move || {
        let maildir = shared.maildir.as_ref().expect("maildir checked above");
        maildir.deliver(&msg.queue_id, &msg.data)?;
        shared.record(msg);
        Ok::<(), std::io::Error>(())
    })
    .await
    .is_ok_and(|r| r.is_ok());
    if stored {
        Stored::Queued(queue_id)
    } else {
        Stored::Failed
    }
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
