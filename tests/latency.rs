//! The latency proxy, in front of the sink and of a plain echo server.
//!
//! Every socket has read and write timeouts, so a bug fails a test instead of hanging it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pipemail::latency::LatencyProxy;
use pipemail::sink::{SinkConfig, SinkHandle};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads one (possibly multi-line) reply and returns its code.
fn reply(r: &mut BufReader<TcpStream>) -> u16 {
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read reply");
        assert!(n > 0, "connection closed before a reply");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line[..3].parse().expect("code");
        }
    }
}

#[test]
fn pipelined_writes_cost_one_round_trip_through_the_proxy() {
    let rtt = Duration::from_millis(150);
    let sink = SinkHandle::start(loopback(), SinkConfig::default()).expect("sink");
    let proxy = LatencyProxy::start(loopback(), sink.local_addr(), rtt).expect("proxy");
    let stream = connect(proxy.local_addr());
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::new(stream);

    let t = Instant::now();
    assert_eq!(reply(&mut r), 220);
    let greeting = t.elapsed();
    // Connection set-up plus the greeting's trip: one round trip.
    assert!(greeting >= rtt, "greeting after {greeting:?}");
    w.write_all(b"EHLO c\r\n").expect("write");
    assert_eq!(reply(&mut r), 250);

    let t = Instant::now();
    for _ in 0..10 {
        w.write_all(b"NOOP\r\n").expect("write");
        assert_eq!(reply(&mut r), 250);
    }
    let lock_step = t.elapsed();

    let t = Instant::now();
    // Ten separate writes, each its own chunk in the proxy: their delays overlap.
    for _ in 0..10 {
        w.write_all(b"NOOP\r\n").expect("write");
    }
    for _ in 0..10 {
        assert_eq!(reply(&mut r), 250);
    }
    let pipelined = t.elapsed();

    eprintln!("rtt {rtt:?}: lock-step {lock_step:?}, pipelined {pipelined:?}");
    assert!(lock_step >= rtt * 10, "lock-step {lock_step:?}");
    assert!(pipelined >= rtt, "pipelined {pipelined:?}");
    let ratio = lock_step.as_secs_f64() / pipelined.as_secs_f64();
    assert!(
        ratio > 3.0,
        "lock-step {lock_step:?} vs pipelined {pipelined:?} (ratio {ratio:.2})"
    );

    // QUIT: the sink's close travels back through the proxy as end of stream.
    w.write_all(b"QUIT\r\n").expect("write");
    assert_eq!(reply(&mut r), 221);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).expect("read to end");
    assert!(rest.is_empty());
    proxy.stop();
    assert_eq!(sink.stop().sessions, 1);
}

/// An upstream that echoes each connection until end of stream, then closes its side.
fn echo_server() -> (SocketAddr, std::thread::JoinHandle<u64>) {
    let listener = TcpListener::bind(loopback()).expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    let thread = std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        conn.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut reader = conn.try_clone().expect("clone");
        let mut writer = conn;
        let n = std::io::copy(&mut reader, &mut writer).expect("echo");
        writer.shutdown(Shutdown::Write).expect("shutdown");
        n
    });
    (addr, thread)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn echo_through(rtt: Duration) {
    let (upstream, echo) = echo_server();
    let proxy = LatencyProxy::start(loopback(), upstream, rtt).expect("proxy");
    let stream = connect(proxy.local_addr());
    let data = pattern(4 * 1024 * 1024 + 17);
    let mut w = stream.try_clone().expect("clone");
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        for piece in to_send.chunks(100_000) {
            w.write_all(piece).expect("write");
        }
        // Half-close: the proxy forwards it, the echo server sees end of stream and closes.
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut got = Vec::new();
    let mut r = stream;
    r.read_to_end(&mut got).expect("read echo");
    writer.join().expect("writer");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
    assert_eq!(echo.join().expect("echo thread"), data.len() as u64);
    proxy.stop();
}

#[test]
fn bytes_order_and_half_close_are_preserved() {
    echo_through(Duration::from_millis(40));
}

#[test]
fn zero_rtt_forwards_directly() {
    echo_through(Duration::ZERO);
}

#[test]
fn unreachable_upstream_closes_the_client() {
    // A port that was just free: nothing listens there.
    let upstream = TcpListener::bind(loopback())
        .expect("bind")
        .local_addr()
        .expect("addr");
    let proxy =
        LatencyProxy::start(loopback(), upstream, Duration::from_millis(20)).expect("proxy");
    let mut s = connect(proxy.local_addr());
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    proxy.stop();
}

#[test]
fn stop_closes_forwarded_connections() {
    let sink = SinkHandle::start(loopback(), SinkConfig::default()).expect("sink");
    let proxy = LatencyProxy::start(loopback(), sink.local_addr(), Duration::from_millis(20))
        .expect("proxy");
    let stream = connect(proxy.local_addr());
    let mut r = BufReader::new(stream);
    assert_eq!(reply(&mut r), 220);
    proxy.stop();
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(rest.is_empty());
    sink.stop();
}
