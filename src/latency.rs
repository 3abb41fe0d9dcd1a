//! Network round-trip emulation: a TCP proxy that delays each direction by half a round trip.
//!
//! [`LatencyProxy`] sits between a client and a real server (the sink, or a real MTA in a
//! benchmark) and makes a loopback link behave like a long one. Every chunk read from one side is
//! written to the other side `rtt / 2` after it was read. The delays are *not* serialized: a
//! chunk read at `t` is written at `t + rtt / 2` however many chunks are queued before it, so
//! ten commands written at once reach the server together half a round trip later, exactly as on
//! a real link, and their pipelined replies come back together one round trip after the write.
//!
//! Order is preserved, TCP_NODELAY is set on both sides, and a half-close (FIN) is forwarded with
//! the same delay as data. The proxy does no per-byte work: it moves whole reads (up to 64 KiB)
//! and writes whatever is due in one go. In-flight data is bounded per direction (8 MiB); when
//! that budget is used up the proxy stops reading, which the sender sees as TCP back-pressure.
//!
//! Connection set-up is emulated too: the upstream connection is opened `rtt / 2` after the
//! client's connection was accepted (the SYN's one-way trip), so the server's greeting reaches the
//! client one round trip after `connect()` returned, as on a real link.
//!
//! The same delay line is used inside the sink (`SinkConfig::latency`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Size of one read (and the largest chunk queued as one piece).
const READ_SIZE: usize = 64 * 1024;
/// Bytes in flight per direction before the reader stops reading.
const BUDGET: usize = 8 * 1024 * 1024;
/// Longest wait for the upstream connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest write assembled from chunks that are due at the same time.
const MAX_WRITE: usize = 256 * 1024;

/// A running latency proxy. See the [module documentation](self).
///
/// Dropping the handle stops the proxy like [`LatencyProxy::stop`].
pub struct LatencyProxy {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LatencyProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyProxy")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl LatencyProxy {
    /// Binds `listen` (port 0 picks a free port), then forwards every accepted connection to
    /// `upstream` with `rtt / 2` of delay in each direction. Runs on its own thread with its own
    /// tokio runtime; returns once the listener is bound.
    ///
    /// With `rtt` zero the proxy forwards without any timer.
    pub fn start(listen: SocketAddr, upstream: SocketAddr, rtt: Duration) -> std::io::Result<Self> {
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
        let (shutdown, shutdown_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("pipemail-latency".into())
            .spawn(move || {
                runtime.block_on(accept_loop(listener, upstream, rtt / 2, shutdown_rx));
            })?;
        Ok(Self {
            local_addr,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the listener and every forwarded connection, and joins the proxy thread.
    pub fn stop(mut self) {
        self.shutdown_and_join();
    }

    fn shutdown_and_join(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.shutdown_and_join();
    }
}

/// Resolves once `rx` says `true` or its sender is gone.
pub(crate) async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    delay: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = wait_shutdown(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    conns.spawn(proxy_conn(client, upstream, delay));
                }
                Err(_) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Aborts a spawned task when dropped, so no task outlives its connection.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn proxy_conn(client: TcpStream, upstream: SocketAddr, delay: Duration) {
    let _ = client.set_nodelay(true);
    if delay.is_zero() {
        if let Ok(Ok(mut up)) =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
        {
            let _ = up.set_nodelay(true);
            let mut client = client;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        }
        return;
    }
    let (client_r, client_w) = client.into_split();
    // Client -> upstream: start reading (and timestamping) at once; the writing side starts when
    // the upstream connection exists, and writes each chunk at its due time.
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_side(client_r, tx, delay));
    let _reader = AbortOnDrop(reader.abort_handle());
    tokio::time::sleep(delay).await;
    let Ok(Ok(up)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
    else {
        return;
    };
    let _ = up.set_nodelay(true);
    let (up_r, up_w) = up.into_split();
    let to_upstream = write_side(up_w, rx, None);
    let to_client = pump(up_r, client_w, delay, None);
    both_or_fail(to_upstream, to_client).await;
}

/// Runs two directions until both finished cleanly, or until one fails (then both are dropped,
/// which closes the sockets).
async fn both_or_fail<A, B>(a: A, b: B)
where
    A: Future<Output = Result<(), ()>>,
    B: Future<Output = Result<(), ()>>,
{
    tokio::pin!(a);
    tokio::pin!(b);
    let (mut a_done, mut b_done) = (false, false);
    while !(a_done && b_done) {
        tokio::select! {
            r = &mut a, if !a_done => {
                if r.is_err() {
                    return;
                }
                a_done = true;
            }
            r = &mut b, if !b_done => {
                if r.is_err() {
                    return;
                }
                b_done = true;
            }
        }
    }
}

/// One queued piece of a delayed stream.
enum Item {
    /// Bytes read at `due - delay`, to be written at `due`; the permit returns their budget.
    Data(Instant, Vec<u8>, OwnedSemaphorePermit),
    /// The reader saw end of stream (or an error) at `due - delay`: shut down the write side then.
    Eof(Instant),
}

/// Copies `reader` to `writer`, delivering every chunk `delay` after it was read, without
/// serializing the delays. Ends `Ok` after forwarding end of stream as a shutdown of `writer`;
/// `Err` if writing failed (or took longer than `write_timeout`).
pub(crate) async fn pump<R, W>(
    reader: R,
    writer: W,
    delay: Duration,
    write_timeout: Option<Duration>,
) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let read = read_side(reader, tx, delay);
    let write = write_side(writer, rx, write_timeout);
    tokio::pin!(read);
    tokio::pin!(write);
    tokio::select! {
        r = &mut write => r,
        () = &mut read => write.await,
    }
}

/// Reads chunks, stamps each with its due time and queues it. Stops after queueing end of
/// stream, or when the writing side is gone. A read error is forwarded like end of stream.
async fn read_side<R>(mut reader: R, tx: mpsc::UnboundedSender<Item>, delay: Duration)
where
    R: AsyncRead + Unpin,
{
    let budget = Arc::new(Semaphore::new(BUDGET));
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        // Reserve budget for a full read before reading, so a full pipe stops reading (TCP
        // back-pressure) instead of queueing without bound; the unused part is given back.
        let Ok(mut permit) = Arc::clone(&budget)
            .acquire_many_owned(u32::try_from(READ_SIZE).expect("READ_SIZE fits in u32"))
            .await
        else {
            return;
        };
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(Item::Eof(Instant::now() + delay));
                return;
            }
            Ok(n) => n,
        };
        let due = Instant::now() + delay;
        let kept = permit.split(n).expect("n <= READ_SIZE permits are held");
        drop(permit);
        if tx.send(Item::Data(due, buf[..n].to_vec(), kept)).is_err() {
            return;
        }
    }
}

/// Writes queued chunks at their due times. Chunks already due are written together.
async fn write_side<W>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Item>,
    write_timeout: Option<Duration>,
) -> Result<(), ()>
where
    W: AsyncWrite + Unpin,
{
    let mut pending: Option<Item> = None;
    let mut out: Vec<u8> = Vec::with_capacity(MAX_WRITE);
    loop {
        let item = match pending.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                // The reader vanished without end of stream (aborted): just stop.
                None => return Err(()),
            },
        };
        match item {
            Item::Eof(due) => {
                sleep_until(due).await;
                let _ = writer.flush().await;
                let _ = writer.shutdown().await;
                return Ok(());
            }
            Item::Data(due, data, permit) => {
                sleep_until(due).await;
                let mut permits = vec![permit];
                let first = data;
                // Gather whatever else is already due, to write it in one go.
                let now = Instant::now();
                out.clear();
                while out.len() + first.len() < MAX_WRITE {
                    match rx.try_recv() {
                        Ok(Item::Data(due, data, permit)) if due <= now => {
                            if out.is_empty() {
                                out.extend_from_slice(&first);
                            }
                            out.extend_from_slice(&data);
                            permits.push(permit);
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let bytes: &[u8] = if out.is_empty() { &first } else { &out };
                let write = async {
                    writer.write_all(bytes).await?;
                    writer.flush().await
                };
                let result = match write_timeout {
                    Some(limit) => tokio::time::timeout(limit, write)
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
                    None => write.await,
                };
                drop(permits);
                if result.is_err() {
                    return Err(());
                }
            }
        }
    }
}

async fn sleep_until(due: Instant) {
    if Instant::now() < due {
        tokio::time::sleep_until(due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pump_preserves_bytes_and_order_and_forwards_eof() {
        let (mut src_w, src_r) = tokio::io::duplex(1024);
        let (dst_w, mut dst_r) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(pump(src_r, dst_w, Duration::from_millis(5), None));
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let chunk = format!("chunk {i};").into_bytes();
            src_w.write_all(&chunk).await.expect("write to duplex");
            expected.extend_from_slice(&chunk);
        }
        drop(src_w);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), dst_r.read_to_end(&mut got))
            .await
            .expect("pump finishes")
            .expect("read");
        assert_eq!(got, expected);
        assert_eq!(task.await.expect("join"), Ok(()));
    }

    #[tokio::test]
    async fn pump_delays_are_not_serialized() {
        let delay = Duration::from_millis(100);
        let (mut src_w, src_r) = tokio::io::duplex(1 << 16);
        let (dst_w, mut dst_r) = tokio::io::duplex(1 << 16);
        tokio::spawn(pump(src_r, dst_w, delay, None));
        let start = Instant::now();
        // Ten separate writes, each read as its own chunk (the reader is waiting).
        for _ in 0..10 {
            src_w.write_all(b"x").await.expect("write");
            tokio::task::yield_now().await;
        }
        let mut got = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(10), dst_r.read_exact(&mut got))
            .await
            .expect("data arrives")
            .expect("read");
        let elapsed = start.elapsed();
        assert!(elapsed >= delay, "{elapsed:?}");
        // Serialized delays would take 10 × delay.
        assert!(elapsed < delay * 5, "{elapsed:?}");
    }
}
