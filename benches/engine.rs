//! Engine throughput with no sockets: N messages through `pipemail::engine::Session` against a
//! scripted in-memory server that answers each group the moment it is written.
//!
//! `cargo bench --bench engine [-- N]` (default N = 200,000) prints ns per message for
//! pipelined DATA and for pipelined BDAT, each also at `PipeliningLevel::WithinMessage`
//! (sync at end of data: the round trips per message are the point there), plus the cost of building the messages alone (the
//! clone of a ~1 KiB message a caller hands over), so the engine's own share can be read off.
//! No criterion: a plain `main`, best of a few repetitions, `std::hint::black_box` on outputs.
//!
//! The scripted server does no parsing: after each `poll_transmit` it answers every command in
//! flight (`Session::in_flight`) with `250`, except that a group ending in `DATA` gets `354`
//! last and one ending in `QUIT` gets `221` last. That is exactly what a cooperating server
//! says, so the numbers are the client's cost: encoding envelopes, dot-stuffing or BDAT
//! framing, parsing replies, matching them to commands and emitting outcomes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pipemail::engine::{
    Config, Delivery, Event, Message, PipeliningLevel, PipeliningPolicy, Session, TlsPolicy,
};

const GREETING: &[u8] = b"220 bench.example ESMTP\r\n";
const EHLO_DATA: &[u8] =
    b"250-bench.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
const EHLO_BDAT: &[u8] = b"250-bench.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
const OK: &[u8] = b"250 2.0.0 Ok: queued as 4XyZbQ1n2Kz9\r\n";
const GO: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
const BYE: &[u8] = b"221 2.0.0 Bye\r\n";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Data,
    Bdat,
}

/// A 1 KiB newsletter-like message with bare LF line endings (the engine converts), one
/// line starting with a dot (DATA must stuff it).
fn template() -> Vec<u8> {
    let mut m = String::from(
        "From: \"Bench\" <news@example.org>\nTo: <reader@example.net>\n\
         Subject: Benchmark message\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\n",
    );
    let line = "The quick brown fox jumps over the lazy dog; pack my box with jugs.\n";
    let dot = ".a line that starts with a dot\n";
    while m.len() + line.len() + dot.len() < 1024 {
        m.push_str(line);
    }
    m.push_str(dot);
    while m.len() < 1023 {
        m.push('x');
    }
    m.push('\n');
    m.into_bytes()
}

fn message(id: u64, data: &[u8]) -> Message {
    Message {
        dsn: None,
        id,
        from: "news@example.org".to_string(),
        to: vec![format!("user{id}@example.net")],
        data: data.to_vec(),
    }
}

struct Stats {
    sent: u64,
    groups: u64,
    bytes_out: u64,
    round_trips: u64,
}

/// Sends `n` messages through one session; returns what the scripted server saw.
fn run(mode: Mode, level: PipeliningLevel, n: u64, data: &[u8]) -> Stats {
    let now = Instant::now();
    let cfg = Config {
        tls: TlsPolicy::None,
        pipelining: PipeliningPolicy::Auto,
        chunking: mode == Mode::Bdat,
        pipelining_level: level,
        ..Config::default()
    };
    let mut s = Session::new(cfg, now);
    let mut out = Vec::with_capacity(256 * 1024);
    let mut reply = Vec::with_capacity(64 * 1024);
    s.handle_input(GREETING, now);
    s.poll_transmit(now, &mut out);
    assert!(out.starts_with(b"EHLO "), "expected EHLO first");
    s.handle_input(
        if mode == Mode::Bdat {
            EHLO_BDAT
        } else {
            EHLO_DATA
        },
        now,
    );
    let mut next = 0u64;
    let mut stats = Stats {
        sent: 0,
        groups: 0,
        bytes_out: 0,
        round_trips: 0,
    };
    let mut quit = false;
    loop {
        while next < n && s.wants_message() {
            next += 1;
            s.send(message(next, data));
        }
        if next == n && !quit {
            s.quit();
            quit = true;
        }
        out.clear();
        s.poll_transmit(now, &mut out);
        stats.bytes_out += out.len() as u64;
        let k = s.in_flight();
        if k > 0 {
            stats.groups += 1;
            reply.clear();
            let last = if out.ends_with(b"DATA\r\n") {
                GO
            } else if out.ends_with(b"QUIT\r\n") {
                BYE
            } else {
                OK
            };
            for _ in 1..k {
                reply.extend_from_slice(OK);
            }
            reply.extend_from_slice(last);
            s.handle_input(&reply, now);
        }
        let mut closed = false;
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Recipient(o) if o.delivery == Delivery::Sent => stats.sent += 1,
                Event::Recipient(o) => panic!("message {} not sent: {o:?}", o.message),
                Event::Closed(Some(e)) => panic!("session failed: {e}"),
                Event::Closed(None) => closed = true,
                other => {
                    black_box(other);
                }
            }
        }
        if closed || s.is_closed() {
            break;
        }
        assert!(
            k > 0 || next < n,
            "the session stalled: nothing in flight, nothing to send"
        );
    }
    stats.round_trips = s.round_trips().used;
    assert_eq!(stats.sent, n, "{mode:?}: every message must be accepted");
    stats
}

/// Best of `reps` timings of `f`.
fn best<F: FnMut() -> R, R>(reps: usize, mut f: F) -> (Duration, R) {
    let mut best: Option<(Duration, R)> = None;
    for _ in 0..reps {
        let t = Instant::now();
        let r = f();
        let d = t.elapsed();
        if best.as_ref().is_none_or(|(b, _)| d < *b) {
            best = Some((d, r));
        }
    }
    best.expect("reps >= 1")
}

fn main() {
    // `cargo bench` passes `--bench`; the first plain number is N.
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .unwrap_or(200_000);
    let reps = 3;
    let data = template();
    println!(
        "engine benchmark: {n} messages of {} bytes per run, one session, best of {reps} runs",
        data.len()
    );

    let (d, _) = best(reps, || {
        let mut total = 0usize;
        for id in 0..n {
            total += black_box(message(id, &data)).data.len();
        }
        total
    });
    let alloc_ns = d.as_nanos() as f64 / n as f64;
    println!("  building the messages alone          {alloc_ns:8.1} ns/message");

    for (mode, level, label) in [
        (
            Mode::Data,
            PipeliningLevel::CrossMessage,
            "pipelined DATA (dot-stuffing)",
        ),
        (
            Mode::Bdat,
            PipeliningLevel::CrossMessage,
            "pipelined BDAT (window 100)",
        ),
        (
            Mode::Data,
            PipeliningLevel::WithinMessage,
            "DATA, sync at end of data",
        ),
        (
            Mode::Bdat,
            PipeliningLevel::WithinMessage,
            "BDAT, sync at end of data",
        ),
    ] {
        let (d, st) = best(reps, || run(mode, level, n, &data));
        let ns = d.as_nanos() as f64 / n as f64;
        println!(
            "  {label:<36} {ns:8.1} ns/message ({:.1} without building; {:.2} groups/message, \
             {:.0} bytes/message out, {} round trips, {:.0} msg/s)",
            ns - alloc_ns,
            st.groups as f64 / n as f64,
            st.bytes_out as f64 / n as f64,
            st.round_trips,
            n as f64 / d.as_secs_f64(),
        );
    }
}
