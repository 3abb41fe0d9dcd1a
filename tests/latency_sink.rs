//! The sink's `latency` switch seen through the engine: lock-step costs about four round
//! trips per message, pipelining about one. Asserted as ratios with generous bounds (and
//! the engine's exact round-trip counters), never as tight timings.

use std::time::{Duration, Instant};

use pipemail::driver::{ConnectOptions, Connection, Target, TlsSettings};
use pipemail::engine::{self, Delivery, Event, Message, PipeliningPolicy, TlsPolicy};
use pipemail::sink::{SinkConfig, SinkHandle};

fn run(sink: &SinkHandle, pipelining: PipeliningPolicy, chunking: bool, n: u64) -> (Duration, u64) {
    let a = sink.local_addr();
    let o = ConnectOptions {
        target: Target {
            host: a.ip().to_string(),
            port: a.port(),
        },
        session: engine::Config {
            tls: TlsPolicy::None,
            pipelining,
            chunking,
            ..engine::Config::default()
        },
        tls: TlsSettings::default(),
        connect_timeout: Duration::from_secs(10),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = Connection::open(&o).await.unwrap();
        let start = Instant::now();
        for i in 0..n {
            conn.session().send(Message {
                dsn: None,
                id: i,
                from: "a@example.org".into(),
                to: vec![format!("r{i}@example.net")],
                data: b"Subject: x\n\nhi\n".to_vec(),
            });
        }
        conn.session().quit();
        let mut sent = 0;
        while !conn.session_ref().is_closed() {
            conn.step().await;
            while let Some(e) = conn.session().poll_event() {
                if let Event::Recipient(r) = e {
                    assert_eq!(r.delivery, Delivery::Sent);
                    sent += 1;
                }
            }
        }
        assert_eq!(sent, n);
        (start.elapsed(), conn.session_ref().round_trips().used)
    })
}

#[test]
fn lock_step_costs_about_four_round_trips_per_message_pipelining_about_one() {
    let rtt = Duration::from_millis(60);
    let sink = SinkHandle::start(
        "127.0.0.1:0".parse().unwrap(),
        SinkConfig {
            latency: rtt,
            ..SinkConfig::default()
        },
    )
    .unwrap();
    const N: u64 = 10;
    let (lock, lock_rt) = run(&sink, PipeliningPolicy::Off, false, N);
    let (piped, piped_rt) = run(&sink, PipeliningPolicy::Auto, false, N);
    let (bdat, bdat_rt) = run(&sink, PipeliningPolicy::Auto, true, N);
    assert_eq!(lock_rt, 4 * N + 3);
    assert_eq!(piped_rt, N + 3);
    assert_eq!(bdat_rt, 3);
    // The emulated link really costs a round trip per wait: a lower bound that holds on
    // any machine, and ratios with wide margins.
    assert!(lock >= rtt * (4 * N as u32 + 1), "lock-step took {lock:?}");
    assert!(piped >= rtt * (N as u32 + 1), "pipelined took {piped:?}");
    let r1 = lock.as_secs_f64() / piped.as_secs_f64();
    let r2 = piped.as_secs_f64() / bdat.as_secs_f64();
    assert!(r1 > 2.5, "lock-step/pipelined = {r1:.2}");
    assert!(r2 > 2.5, "pipelined/BDAT = {r2:.2}");
}
