//! The session fed arbitrary server bytes: never panics, and every recipient of every queued
//! message gets exactly one outcome once the connection is gone.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pipemail::engine::{Config, Event, Message, PipeliningPolicy, Session, Timeouts, TlsPolicy};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let cfg = Config {
        pipelining: match flags & 3 {
            0 => PipeliningPolicy::Off,
            1 => PipeliningPolicy::Require,
            _ => PipeliningPolicy::Auto,
        },
        chunking: flags & 4 != 0,
        tls: if flags & 8 != 0 {
            TlsPolicy::Opportunistic
        } else {
            TlsPolicy::None
        },
        window: usize::from(flags >> 4) + 1,
        timeouts: Timeouts::all(Duration::from_secs(1)),
        transcript: true,
        ..Config::default()
    };
    let now = Instant::now();
    let mut s = Session::new(cfg, now);
    let msgs: Vec<Message> = (0..3)
        .map(|i| Message {
            dsn: None,
            id: i,
            from: "s@example.org".into(),
            to: vec!["a@example.net".into(), "b@example.net".into()],
            data: b"Subject: x\r\n\r\n.body\r\n".to_vec(),
        })
        .collect();
    for m in &msgs {
        s.send(m.clone());
    }
    s.quit();
    let mut out = Vec::new();
    let mut seen: HashMap<(u64, usize), u32> = HashMap::new();
    // A newline-separated input: each line (with its LF) is one read from the socket.
    for chunk in rest.split_inclusive(|&b| b == b'\n') {
        out.clear();
        s.poll_transmit(now, &mut out);
        s.handle_input(chunk, now);
        while let Some(e) = s.poll_event() {
            match e {
                Event::Recipient(o) => *seen.entry((o.message, o.index)).or_default() += 1,
                Event::StartTls => s.handle_tls_established(now),
                _ => {}
            }
        }
    }
    s.handle_timeout(now + Duration::from_secs(2));
    s.handle_eof();
    while let Some(e) = s.poll_event() {
        if let Event::Recipient(o) = e {
            *seen.entry((o.message, o.index)).or_default() += 1;
        }
    }
    for m in &msgs {
        for i in 0..m.to.len() {
            assert_eq!(seen.get(&(m.id, i)).copied(), Some(1));
        }
    }
});
