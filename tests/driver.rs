//! The driver and the Pipeliner API against an in-process scripted server on 127.0.0.1.

mod fake_smtp;

use std::time::Duration;

use fake_smtp::{FakeSmtp, Step, expect, send};
use pipemail::driver::{ConnectOptions, Target, TlsSettings};
use pipemail::engine::{self, TlsPolicy};
use pipemail::pipeliner::{Envelope, Pipeliner};

const GREETING: &str = "220 fake ESMTP\r\n";
const EHLO_REPLY: &str = "250-fake\r\n250-PIPELINING\r\n250 8BITMIME\r\n";

fn opts(host: &str, timeout: Duration) -> ConnectOptions {
    let a: std::net::SocketAddr = host.parse().unwrap();
    ConnectOptions {
        target: Target {
            host: a.ip().to_string(),
            port: a.port(),
        },
        session: engine::Config {
            tls: TlsPolicy::None,
            helo_name: "client.test".into(),
            timeouts: engine::Timeouts::all(timeout),
            ..engine::Config::default()
        },
        tls: TlsSettings::default(),
        connect_timeout: Duration::from_secs(5),
    }
}

fn env(to: &[&str]) -> Envelope {
    Envelope::new(
        "sender@example.com",
        to.iter().copied(),
        format!(
            "From: sender@example.com\n\nThis is a mail to {}",
            to.join(" ")
        ),
    )
}

fn body(to: &str) -> String {
    format!("From: sender@example.com\r\n\r\nThis is a mail to {to}\r\n.\r\n")
}

fn envelope(to: &str) -> String {
    format!("MAIL FROM:<sender@example.com>\r\nRCPT TO:<{to}>\r\nDATA\r\n")
}

fn handshake() -> Vec<Step> {
    vec![
        send(GREETING),
        expect("EHLO client.test\r\n"),
        send(EHLO_REPLY),
    ]
}

/// The seed's synopsis: three pipelined messages, then flush; each pipelined write holds
/// the previous body and the next envelope.
fn seed_script(dribble: bool) -> Vec<Step> {
    let r = |s: &str| {
        if dribble {
            Step::Dribble(s.as_bytes().to_vec())
        } else {
            send(s)
        }
    };
    let mut s = handshake();
    s.push(expect(&envelope("s1@example.com")));
    s.push(r("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"));
    s.push(expect(
        &(body("s1@example.com") + &envelope("s2@example.com")),
    ));
    s.push(r(
        "250 2.0.0 queued 1\r\n250 Ok\r\n550 5.1.1 <s2@example.com> unknown\r\n354 go\r\n",
    ));
    s.push(expect(&(".\r\n".to_string() + &envelope("s3@example.com"))));
    s.push(r(
        "554 5.5.1 no valid recipients\r\n250 Ok\r\n250 Ok\r\n354 go\r\n",
    ));
    s.push(expect(&body("s3@example.com")));
    s.push(r("250 2.0.0 queued 3\r\n"));
    s.push(expect("QUIT\r\n"));
    s.push(r("221 bye\r\n"));
    s
}

fn run_seed(dribble: bool) {
    let server = FakeSmtp::start(vec![seed_script(dribble)]);
    let mut smtp = Pipeliner::connect(opts(&server.host(), Duration::from_secs(10))).unwrap();
    assert!(smtp.pipelining());
    let (mut ok, mut failed) = (Vec::new(), Vec::new());

    assert!(smtp.pipeline(&env(&["s1@example.com"])));
    assert_eq!(smtp.codes(), [250, 250, 354]);
    assert_eq!(
        smtp.sent(),
        [
            "MAIL FROM:<sender@example.com>",
            "RCPT TO:<s1@example.com>",
            "DATA"
        ]
    );
    assert_eq!(smtp.recipients().accepted, ["s1@example.com"]);
    ok.extend(smtp.rcpts_succeeded().to_vec());

    // s2 is rejected: false, and s1 (previous message) reported succeeded in this call.
    assert!(!smtp.pipeline(&env(&["s2@example.com"])));
    assert_eq!(smtp.codes(), [250, 250, 550, 354]);
    assert_eq!(smtp.sent()[0], ".");
    assert_eq!(smtp.codes().len(), smtp.messages().len());
    assert_eq!(smtp.sent().len(), smtp.codes().len());
    assert_eq!(smtp.rcpts_succeeded(), ["s1@example.com"]);
    assert_eq!(smtp.rcpts_failed(), ["s2@example.com"]);
    let e = &smtp.errors()[0];
    assert_eq!(
        (e.command.as_str(), e.code),
        ("RCPT TO:<s2@example.com>", 550)
    );
    assert_eq!(e.message, "<s2@example.com> unknown");
    ok.extend(smtp.rcpts_succeeded().to_vec());
    failed.extend(smtp.rcpts_failed().to_vec());

    // The lone dot after 354 with no valid recipient is answered 554: an error of this call.
    assert!(!smtp.pipeline(&env(&["s3@example.com"])));
    assert_eq!(smtp.errors()[0].code, 554, "{:?}", smtp.errors());
    assert!(smtp.rcpts_failed().is_empty(), "s2 was already reported");
    ok.extend(smtp.rcpts_succeeded().to_vec());

    assert!(smtp.flush());
    assert_eq!(smtp.codes(), [250]);
    ok.extend(smtp.rcpts_succeeded().to_vec());
    assert_eq!(ok, ["s1@example.com", "s3@example.com"]);
    assert_eq!(failed, ["s2@example.com"]);
    // greeting, EHLO, three pipelined exchanges, the flush: 6 round trips instead of 15
    assert_eq!(smtp.round_trips().used, 6);
    smtp.quit().unwrap();
    drop(server);
}

#[test]
fn seed_synopsis_whole_replies() {
    run_seed(false);
}

#[test]
fn seed_synopsis_replies_dribbled_one_byte_at_a_time() {
    run_seed(true);
}

#[test]
fn all_replies_in_one_write_after_the_whole_group() {
    // The server reads the entire group before answering anything.
    let mut s = handshake();
    let group = "MAIL FROM:<sender@example.com>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n";
    s.push(expect(group));
    s.push(send(
        "250 Ok\r\n250 Ok\r\n450 4.2.1 later\r\n250 Ok\r\n354 go\r\n",
    ));
    s.push(expect(&format!(
        "{}QUIT\r\n",
        body("a@example.com b@example.com c@example.com")
    )));
    s.push(send("250 queued\r\n221 bye\r\n"));
    let server = FakeSmtp::start(vec![s]);
    let mut smtp = Pipeliner::connect(opts(&server.host(), Duration::from_secs(10))).unwrap();
    assert!(!smtp.pipeline(&env(&["a@example.com", "b@example.com", "c@example.com"])));
    assert_eq!(
        smtp.recipients().accepted,
        ["a@example.com", "c@example.com"]
    );
    assert_eq!(smtp.rcpts_failed(), ["b@example.com"]);
    // flush is deferred to quit here: body and QUIT go in one write
    smtp.quit().unwrap();
    server.finish();
}

#[test]
fn connection_closed_right_after_final_dot_is_not_succeeded() {
    let mut s = handshake();
    s.push(expect(&envelope("a@example.com")));
    s.push(send("250 Ok\r\n250 Ok\r\n354 go\r\n"));
    s.push(expect(&body("a@example.com")));
    s.push(Step::Close);
    let server = FakeSmtp::start(vec![s]);
    let mut smtp = Pipeliner::connect(opts(&server.host(), Duration::from_secs(10))).unwrap();
    assert!(smtp.pipeline(&env(&["a@example.com"])));
    assert!(!smtp.flush());
    assert!(smtp.rcpts_succeeded().is_empty());
    assert_eq!(smtp.rcpts_failed(), ["a@example.com"]);
    let text: Vec<_> = smtp.errors().iter().map(|e| e.message.clone()).collect();
    assert!(
        text.iter().any(|m| m.contains("delivery unknown")),
        "{text:?}"
    );
    server.finish();
}

#[test]
fn stalling_server_times_out_with_a_clear_error() {
    let mut s = handshake();
    s.push(expect(&envelope("a@example.com")));
    s.push(Step::StallUntilClosed);
    let server = FakeSmtp::start(vec![s]);
    let mut smtp = Pipeliner::connect(opts(&server.host(), Duration::from_millis(300))).unwrap();
    assert!(!smtp.pipeline(&env(&["a@example.com"])));
    let msgs: Vec<_> = smtp.errors().iter().map(|e| e.message.clone()).collect();
    assert!(
        msgs.iter()
            .any(|m| m == "timed out waiting for the reply to MAIL"),
        "{msgs:?}"
    );
    drop(smtp);
    server.finish();
}

#[test]
fn deep_pipeline_against_small_buffers_does_not_deadlock() {
    // 5,000 recipients in one group; the server answers each RCPT with a long reply as it
    // reads, with 4 KiB socket buffers: a client that writes everything before reading
    // would block forever once the server blocks writing replies nobody reads.
    const N: usize = 5000;
    let rcpts: Vec<String> = (0..N).map(|i| format!("user{i}@example.com")).collect();
    let mut group = String::from("MAIL FROM:<sender@example.com>\r\n");
    for r in &rcpts {
        group += &format!("RCPT TO:<{r}>\r\n");
    }
    group += "DATA\r\n";
    let long = format!("250-{}\r\n250 2.1.5 Ok\r\n", "x".repeat(400));
    let mut s = handshake();
    s.push(expect("MAIL FROM:<sender@example.com>\r\n"));
    s.push(send("250 Ok\r\n"));
    for r in &rcpts {
        s.push(expect(&format!("RCPT TO:<{r}>\r\n")));
        s.push(send(&long));
    }
    s.push(expect("DATA\r\n"));
    s.push(send("354 go\r\n"));
    s.push(Step::ExpectLen(0));
    s.push(Step::DrainUntilClosed);
    let server = FakeSmtp::start_with(vec![s], Some(4096));
    let mut smtp = Pipeliner::connect(opts(&server.host(), Duration::from_secs(30))).unwrap();
    let to: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    assert!(smtp.pipeline(&env(&to)));
    assert_eq!(smtp.recipients().accepted.len(), N);
    drop(smtp);
    let t = server.finish();
    assert!(t[0].len() > group.len());
}

#[test]
fn no_pipelining_falls_back_to_lock_step() {
    let s = vec![
        send(GREETING),
        expect("EHLO client.test\r\n"),
        send("250-fake\r\n250 8BITMIME\r\n"),
        expect("MAIL FROM:<sender@example.com>\r\n"),
        send("250 Ok\r\n"),
        expect("RCPT TO:<a@example.com>\r\n"),
        send("250 Ok\r\n"),
        expect("DATA\r\n"),
        send("354 go\r\n"),
        expect(&body("a@example.com")),
        send("250 queued\r\n"),
        expect("QUIT\r\n"),
        send("221 bye\r\n"),
    ];
    let server = FakeSmtp::start(vec![s]);
    let mut smtp = Pipeliner::connect(opts(&server.host(), Duration::from_secs(10))).unwrap();
    assert!(!smtp.pipelining());
    assert!(smtp.pipeline(&env(&["a@example.com"])));
    assert_eq!(
        smtp.rcpts_succeeded(),
        ["a@example.com"],
        "lock-step completes the message in the same call"
    );
    smtp.quit().unwrap();
    server.finish();
}

#[test]
fn lock_step_commands_like_net_smtp() {
    let s = vec![
        send(GREETING),
        expect("EHLO client.test\r\n"),
        send(EHLO_REPLY),
        expect("MAIL FROM:<a@example.com>\r\n"),
        send("250 Ok\r\n"),
        expect("RCPT TO:<b@example.com>\r\n"),
        send("250 Ok\r\n"),
        expect("DATA\r\n"),
        send("354 go\r\n"),
        expect("Subject: x\r\n\r\n..dot\r\n.\r\n"),
        send("250 queued\r\n"),
        expect("QUIT\r\n"),
        send("221 bye\r\n"),
    ];
    let server = FakeSmtp::start(vec![s]);
    let mut smtp = Pipeliner::connect(opts(&server.host(), Duration::from_secs(10))).unwrap();
    assert_eq!(smtp.mail("a@example.com").unwrap().code, 250);
    assert_eq!(smtp.rcpt("b@example.com").unwrap().code, 250);
    assert_eq!(smtp.data(b"Subject: x\n\n.dot\n").unwrap().code, 250);
    smtp.quit().unwrap();
    server.finish();
}

#[test]
fn require_pipelining_returns_false_with_a_warning_like_the_seed() {
    let s = vec![
        send(GREETING),
        expect("EHLO client.test\r\n"),
        send("250-fake\r\n250 8BITMIME\r\n"),
        expect("QUIT\r\n"),
        send("221 bye\r\n"),
    ];
    let server = FakeSmtp::start(vec![s]);
    let mut o = opts(&server.host(), Duration::from_secs(10));
    o.session.pipelining = engine::PipeliningPolicy::Require;
    let mut smtp = Pipeliner::connect(o).unwrap();
    assert!(!smtp.pipeline(&env(&["a@example.com"])));
    assert_eq!(smtp.errors().len(), 1);
    assert!(
        smtp.errors()[0]
            .message
            .contains("does not advertise PIPELINING")
    );
    assert!(smtp.rcpts_succeeded().is_empty());
    smtp.quit().unwrap();
    server.finish(); // nothing but EHLO and QUIT was sent
}

/// Issue 11: a server that refuses every command pipelined after the end of data. Over a
/// real socket the whole BDAT window goes out in one write; the server takes the first
/// message and answers each later command (QUIT included) with its own 503. The session
/// steps down, sends the refused messages again one at a time, and reports every row sent.
#[test]
fn server_refusing_commands_after_the_end_of_data_gets_every_message() {
    use pipemail::driver::Connection;
    use pipemail::engine::{Delivery, Event, Message, PipeliningLevel};

    let one =
        |to: &str| format!("MAIL FROM:<s@example.com>\r\nRCPT TO:<{to}>\r\nBDAT 4 LAST\r\nhi\r\n");
    let refused = "503 5.5.0 Error: pipelined after end of DATA\r\n";
    let ok = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued\r\n";
    let mut s = vec![
        send(GREETING),
        expect("EHLO client.test\r\n"),
        send("250-fake\r\n250-PIPELINING\r\n250 CHUNKING\r\n"),
    ];
    let window = one("a@example.com") + &one("b@example.com") + &one("c@example.com");
    s.push(expect(&(window + "QUIT\r\n")));
    s.push(send(&(ok.to_string() + &refused.repeat(7))));
    s.push(expect(&one("b@example.com")));
    s.push(send(ok));
    s.push(expect(&one("c@example.com")));
    s.push(send(ok));
    s.push(expect("QUIT\r\n"));
    s.push(send("221 bye\r\n"));
    let server = FakeSmtp::start(vec![s]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events = rt.block_on(async {
        let mut conn = Connection::open(&opts(&server.host(), Duration::from_secs(10)))
            .await
            .unwrap();
        let mut events = Vec::new();
        let mut queued = false;
        while !conn.session_ref().is_closed() {
            if conn.session_ref().is_ready() && !queued {
                for (id, to) in ["a@example.com", "b@example.com", "c@example.com"]
                    .into_iter()
                    .enumerate()
                {
                    conn.session().send(Message {
                        dsn: None,
                        id: id as u64,
                        from: "s@example.com".into(),
                        to: vec![to.into()],
                        data: b"hi\n".to_vec(),
                    });
                }
                conn.session().quit();
                queued = true;
            }
            conn.step().await;
            events.extend(std::iter::from_fn(|| conn.session().poll_event()));
        }
        conn.shutdown().await;
        events
    });
    let sent = events
        .iter()
        .filter(|e| matches!(e, Event::Recipient(o) if o.delivery == Delivery::Sent))
        .count();
    assert_eq!(sent, 3, "{events:?}");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::SteppedDown(s) if s.to == PipeliningLevel::WithinMessage && s.reply.code == 503
    )));
    assert!(events.contains(&Event::Closed(None)), "{events:?}");
    server.finish();
}

/// Issue 11, the Pipeliner API: the server refuses the envelope pipelined behind the dot
/// (503 to MAIL, RCPT and DATA). The session steps down and sends that message again; the
/// call that sent it returns true and lists no 503 in `errors()`.
#[test]
fn pipeliner_hides_refusals_of_a_message_sent_again_after_a_step_down() {
    let refused = "503 5.5.0 Error: pipelined after end of DATA\r\n";
    let mut s = handshake();
    s.push(expect(&envelope("a@example.com")));
    s.push(send("250 Ok\r\n250 Ok\r\n354 go\r\n"));
    s.push(expect(
        &(body("a@example.com") + &envelope("b@example.com")),
    ));
    s.push(send(&("250 queued\r\n".to_string() + &refused.repeat(3))));
    s.push(expect(&envelope("b@example.com")));
    s.push(send("250 Ok\r\n250 Ok\r\n354 go\r\n"));
    s.push(expect(&body("b@example.com")));
    s.push(send("250 queued\r\n"));
    s.push(expect("QUIT\r\n"));
    s.push(send("221 bye\r\n"));
    let server = FakeSmtp::start(vec![s]);
    let mut smtp = Pipeliner::connect(opts(&server.host(), Duration::from_secs(10))).unwrap();
    assert!(
        smtp.pipeline(&env(&["a@example.com"])),
        "{:?}",
        smtp.errors()
    );
    assert!(
        smtp.pipeline(&env(&["b@example.com"])),
        "{:?}",
        smtp.errors()
    );
    assert!(smtp.errors().is_empty(), "{:?}", smtp.errors());
    assert_eq!(
        smtp.rcpts_succeeded(),
        ["a@example.com".to_string(), "b@example.com".to_string()]
    );
    assert!(smtp.flush(), "{:?}", smtp.errors());
    smtp.quit().unwrap();
    server.finish();
}
