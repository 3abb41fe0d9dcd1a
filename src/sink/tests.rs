//! Unit tests of the sans-IO server: transcripts fed whole, split at every byte boundary and
//! byte by byte; refuse-after-dot in DATA and BDAT modes; faults; timeouts; `--fault` specs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::server::{AfterDot, Envelope, Event, IDLE_TIMEOUT, REFUSED_AFTER_DOT, Server, Stored};
use super::{Fault, FaultPlan, FaultSpec, FaultSpecError, SinkConfig};

/// What a server did with some reads.
struct Run {
    out: String,
    stored: Vec<Envelope>,
    rejected: u32,
    server: Server,
}

/// Feeds each read with one `handle_input`, storing every message as `Q1`, `Q2`, … and
/// collecting every transmitted byte.
fn feed(cfg: &Arc<SinkConfig>, reads: &[&[u8]]) -> Run {
    let now = Instant::now();
    let mut run = Run {
        out: String::new(),
        stored: Vec::new(),
        rejected: 0,
        server: Server::new(Arc::clone(cfg), 0, now),
    };
    run.settle(now);
    for read in reads {
        run.server.handle_input(read, now);
        run.settle(now);
    }
    run
}

impl Run {
    fn settle(&mut self, now: Instant) {
        while let Some(e) = self.server.poll_event() {
            match e {
                Event::Deliver(env) => {
                    self.stored.push(env);
                    let id = format!("Q{}", self.stored.len());
                    self.server.handle_stored(Stored::Queued(id), now);
                }
                Event::RecipientRejected => self.rejected += 1,
                Event::StartTls => {}
            }
        }
        let mut out = Vec::new();
        while self.server.poll_transmit(now, &mut out) > 0 {}
        self.out.push_str(&String::from_utf8_lossy(&out));
    }

    /// The replies after the greeting, one string per line.
    fn lines(&self) -> Vec<&str> {
        self.out.split_terminator("\r\n").skip(1).collect()
    }
}

fn cfg(f: impl FnOnce(&mut SinkConfig)) -> Arc<SinkConfig> {
    let mut c = SinkConfig::default();
    f(&mut c);
    Arc::new(c)
}

const EHLO_REPLY: [&str; 6] = [
    "250-pipemail-sink",
    "250-PIPELINING",
    "250-SIZE 35882577",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250 CHUNKING",
];

const DATA_TRANSCRIPT: &[u8] = b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\n\
RCPT TO:<b@y.example>\r\nRCPT TO:<no@bad.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n\
Subject: t\r\n\r\n..dot\r\nbare\nlf\r\n.\r\nNOOP\r\nQUIT\r\n";

const BDAT_TRANSCRIPT: &[u8] = b"EHLO c.example\r\nMAIL FROM:<> BODY=8BITMIME\r\n\
RCPT TO:<b@y.example>\r\nBDAT 5\r\nhelloBDAT 7 LAST\r\n world\n\
RSET\r\nBDAT 3\r\nxyzFOO bar\r\nQUIT\r\n";

/// AUTH PLAIN and LOGIN, an over-long line, an unknown verb, errors.
fn auth_transcript() -> Vec<u8> {
    let mut t = b"MAIL FROM:<a@x>\r\nHELO c\r\nMAIL FROM:<a@x>\r\nAUTH LOGIN\r\ndXNlcg==\r\n\
d3Jvbmc=\r\nAUTH PLAIN AHVzZXIAcGFzcw==\r\n"
        .to_vec();
    t.extend(std::iter::repeat_n(b'x', 1500));
    t.extend_from_slice(b"\r\nXYZZY\r\nMAIL FROM:<a@x>\r\nDATA\r\n");
    t
}

fn rejecting() -> Arc<SinkConfig> {
    cfg(|c| c.reject = vec!["550:*@bad.example".parse().expect("rule")])
}

fn auth_cfg() -> Arc<SinkConfig> {
    cfg(|c| {
        c.auth = Some(("user".into(), "pass".into()));
        c.allow_plain_auth = true;
    })
}

#[test]
fn data_transcript_exact_replies_and_message() {
    let run = feed(&rejecting(), &[DATA_TRANSCRIPT]);
    let mut want: Vec<&str> = EHLO_REPLY.to_vec();
    want.extend([
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "550 5.1.1 <no@bad.example>: Recipient address rejected",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as Q1",
        "250 2.0.0 Ok",
        "221 2.0.0 Bye",
    ]);
    assert_eq!(run.lines(), want);
    assert!(
        run.out
            .starts_with("220 pipemail-sink ESMTP pipemail-sink\r\n")
    );
    assert_eq!(run.rejected, 1);
    assert_eq!(run.stored.len(), 1);
    let m = &run.stored[0];
    assert_eq!(m.from, "a@x.example");
    assert_eq!(m.rcpts, ["b@y.example", "c@y.example"]);
    assert_eq!(m.data, b"Subject: t\r\n\r\n.dot\r\nbare\nlf\r\n");
    assert!(!m.via_bdat);
    assert!(run.server.is_closed());
}

#[test]
fn bdat_transcript_exact_replies_and_message() {
    let run = feed(&rejecting(), &[BDAT_TRANSCRIPT]);
    let mut want: Vec<&str> = EHLO_REPLY.to_vec();
    want.extend([
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "250 2.0.0 Ok: 5 octets received",
        "250 2.0.0 Ok: queued as Q1",
        "250 2.0.0 Ok",
        "503 5.5.1 Error: need MAIL command",
        "500 5.5.2 Error: command not recognized",
        "221 2.0.0 Bye",
    ]);
    assert_eq!(run.lines(), want);
    assert_eq!(run.stored.len(), 1);
    assert_eq!(run.stored[0].data, b"hello world\n");
    assert_eq!(run.stored[0].from, "");
    assert!(run.stored[0].via_bdat);
}

#[test]
fn auth_transcript_exact_replies() {
    let run = feed(&auth_cfg(), &[&auth_transcript()]);
    assert_eq!(
        run.lines(),
        [
            "503 5.5.1 Error: send HELO/EHLO first",
            "250 pipemail-sink",
            "530 5.7.0 Authentication required",
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "535 5.7.8 Error: authentication failed",
            "235 2.7.0 Authentication successful",
            "500 5.5.2 Error: line too long",
            "500 5.5.2 Error: command not recognized",
            "250 2.1.0 Ok",
            "554 5.5.1 Error: no valid recipients",
        ]
    );
}

/// Every transcript gives the same replies and messages whether it arrives in one read, in
/// two reads split at any byte, or one byte per read.
#[test]
fn transcripts_split_at_every_byte_boundary() {
    let auth = auth_transcript();
    let cases: [(&[u8], Arc<SinkConfig>); 3] = [
        (DATA_TRANSCRIPT, rejecting()),
        (BDAT_TRANSCRIPT, rejecting()),
        (&auth, auth_cfg()),
    ];
    for (wire, cfg) in cases {
        let whole = feed(&cfg, &[wire]);
        for at in 1..wire.len() {
            let split = feed(&cfg, &[&wire[..at], &wire[at..]]);
            assert_eq!(split.out, whole.out, "split at {at}");
            assert_eq!(split.stored, whole.stored, "split at {at}");
            assert_eq!(split.rejected, whole.rejected, "split at {at}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let dribbled = feed(&cfg, &bytes);
        assert_eq!(dribbled.out, whole.out);
        assert_eq!(dribbled.stored, whole.stored);
    }
}

fn refusing() -> Arc<SinkConfig> {
    cfg(|c| c.after_dot = AfterDot::Refuse)
}

#[test]
fn refuse_after_dot_in_data_mode() {
    let run = feed(
        &refusing(),
        &[
            b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
            b"one\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<c@y>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n",
            b"MAIL FROM:<a@x>\r\n",
            b"RCPT TO:<d@y>\r\nDATA\r\n",
            b"three\r\n.\r\n",
            b"QUIT\r\n",
        ],
    );
    let mut want: Vec<&str> = EHLO_REPLY.to_vec();
    want.extend([
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as Q1",
    ]);
    // MAIL, RCPT, DATA, "two", ".", QUIT: each refused, in order.
    want.extend([REFUSED_AFTER_DOT; 6]);
    want.extend([
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as Q2",
        "221 2.0.0 Bye",
    ]);
    assert_eq!(run.lines(), want);
    assert_eq!(run.stored.len(), 2);
    assert_eq!(run.stored[0].data, b"one\r\n");
    assert_eq!(run.stored[1].rcpts, ["d@y"]);
    assert_eq!(run.stored[1].data, b"three\r\n");
    // The refused RCPT counts as a rejected recipient.
    assert_eq!(run.rejected, 1);
}

#[test]
fn refuse_after_dot_in_bdat_mode() {
    let run = feed(
        &refusing(),
        &[
            b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 5 LAST\r\nhello\
MAIL FROM:<a@x>\r\nRCPT TO:<c@y>\r\nBDAT 3 LAST\r\nxyzNOOP\r\n",
            b"NOOP\r\nMAIL FROM:<a@x>\r\nRCPT TO:<e@y>\r\nBDAT 2 LAST\r\nok",
            b"QUIT\r\n",
        ],
    );
    let mut want: Vec<&str> = EHLO_REPLY.to_vec();
    want.extend(["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued as Q1"]);
    // MAIL, RCPT, BDAT (its 3 octets consumed), NOOP.
    want.extend([REFUSED_AFTER_DOT; 4]);
    want.extend([
        "250 2.0.0 Ok",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "250 2.0.0 Ok: queued as Q2",
        "221 2.0.0 Bye",
    ]);
    assert_eq!(run.lines(), want);
    assert_eq!(run.stored.len(), 2);
    assert_eq!(run.stored[0].data, b"hello");
    assert_eq!(run.stored[1].data, b"ok");
}

#[test]
fn refuse_after_dot_leaves_a_non_pipelined_client_alone() {
    let wire: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\n",
        b"RCPT TO:<b@y>\r\n",
        b"DATA\r\n",
        b"x\r\n.\r\n",
        b"MAIL FROM:<a@x>\r\n",
        b"RCPT TO:<b@y>\r\n",
        b"BDAT 1 LAST\r\ny",
        b"QUIT\r\n",
    ];
    let plain = feed(&cfg(|_| {}), wire);
    let hardened = feed(&refusing(), wire);
    assert_eq!(hardened.out, plain.out);
    assert_eq!(hardened.stored.len(), 2);
    assert!(!hardened.out.contains("503"));
}

#[test]
fn drop_after_dot_closes_when_a_command_follows() {
    let dropping = cfg(|c| c.after_dot = AfterDot::Drop);
    let run = feed(
        &dropping,
        &[
            b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
            b"x\r\n.\r\n",
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
            b"y\r\n.\r\nQUIT\r\n",
        ],
    );
    let lines = run.lines();
    assert_eq!(lines.last(), Some(&"250 2.0.0 Ok: queued as Q2"));
    assert_eq!(run.stored.len(), 2);
    assert!(run.server.is_closed());
    let bdat = feed(
        &dropping,
        &[b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 1 LAST\r\nzNOOP\r\n"],
    );
    assert_eq!(bdat.lines().last(), Some(&"250 2.0.0 Ok: queued as Q1"));
    assert!(bdat.server.is_closed());
}

fn faulty(faults: Vec<Fault>) -> Arc<SinkConfig> {
    cfg(|c| {
        c.faults = Some(FaultPlan {
            sessions: vec![faults],
        });
    })
}

/// EHLO (unit 0), MAIL (1), RCPT (2), DATA (3), final dot (4), NOOP (5).
const ONE_MESSAGE: &[u8] =
    b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nbody\r\n.\r\nNOOP\r\n";

#[test]
fn faults_on_the_final_dot() {
    let lost = feed(
        &faulty(vec![Fault::DropBeforeReply {
            command: 4,
            stored: true,
        }]),
        &[ONE_MESSAGE],
    );
    assert_eq!(lost.stored.len(), 1);
    assert_eq!(
        lost.lines().last(),
        Some(&"354 End data with <CR><LF>.<CR><LF>")
    );
    assert!(lost.server.is_closed());

    let dropped = feed(
        &faulty(vec![Fault::DropBeforeReply {
            command: 4,
            stored: false,
        }]),
        &[ONE_MESSAGE],
    );
    assert!(dropped.stored.is_empty());
    assert!(dropped.server.is_closed());

    let half = feed(
        &faulty(vec![Fault::MidReplyDrop { command: 4 }]),
        &[ONE_MESSAGE],
    );
    assert_eq!(half.stored.len(), 1);
    let full = "250 2.0.0 Ok: queued as Q1\r\n";
    assert!(
        half.out.ends_with(&full[..full.len() / 2]),
        "{:?}",
        half.out
    );
    assert!(half.server.is_closed());

    let refused = feed(
        &faulty(vec![Fault::ReplyCode {
            command: 4,
            code: 451,
        }]),
        &[ONE_MESSAGE],
    );
    assert!(refused.stored.is_empty());
    assert_eq!(
        &refused.lines()[refused.lines().len() - 2..],
        ["451 4.0.0 Error: injected failure", "250 2.0.0 Ok"]
    );

    let stalled = feed(&faulty(vec![Fault::Stall { command: 4 }]), &[ONE_MESSAGE]);
    assert!(stalled.stored.is_empty());
    assert!(stalled.server.is_stalled());
    assert_eq!(stalled.server.poll_timeout(), None);

    let closed = feed(
        &faulty(vec![Fault::Reply421 { command: 1 }]),
        &[ONE_MESSAGE],
    );
    assert!(
        closed
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("421 4.3.0"))
    );
    assert!(closed.server.is_closed());
}

#[test]
fn input_limit_dribble_and_store_failure() {
    let limited = feed(&faulty(vec![Fault::DropAfterInputBytes(8)]), &[ONE_MESSAGE]);
    assert_eq!(limited.lines().len(), EHLO_REPLY.len());
    assert!(limited.server.is_closed());

    let now = Instant::now();
    let mut s = Server::new(faulty(vec![Fault::DribbleReplies]), 0, now);
    let mut out = Vec::new();
    assert_eq!(s.poll_transmit(now, &mut out), 1);
    assert_eq!(s.poll_transmit(now, &mut out), 1);
    assert_eq!(out, b"22");

    let mut s = Server::new(cfg(|_| {}), 0, now);
    s.handle_input(ONE_MESSAGE, now);
    assert!(s.is_delivering());
    assert!(matches!(s.poll_event(), Some(Event::Deliver(_))));
    s.handle_stored(Stored::Failed, now);
    out.clear();
    while s.poll_transmit(now, &mut out) > 0 {}
    let text = String::from_utf8(out).expect("ascii");
    assert!(
        text.ends_with("451 4.3.0 Error: queue file write error\r\n250 2.0.0 Ok\r\n"),
        "{text}"
    );
}

#[test]
fn idle_timeout_on_the_virtual_clock() {
    let t0 = Instant::now();
    let mut s = Server::new(cfg(|_| {}), 0, t0);
    assert_eq!(s.poll_timeout(), Some(t0 + IDLE_TIMEOUT));
    let t1 = t0 + Duration::from_secs(100);
    s.handle_input(b"NOOP\r\n", t1);
    assert_eq!(s.poll_timeout(), Some(t1 + IDLE_TIMEOUT));
    s.handle_timeout(t1 + IDLE_TIMEOUT - Duration::from_millis(1));
    assert!(!s.is_closed());
    s.handle_timeout(t1 + IDLE_TIMEOUT);
    assert!(s.is_closed());
    let mut out = Vec::new();
    s.poll_transmit(t1, &mut out);
    let text = String::from_utf8(out).expect("ascii");
    assert!(
        text.ends_with("421 4.4.2 pipemail-sink Error: timeout exceeded\r\n"),
        "{text}"
    );
}

#[test]
fn fault_specs_parse() {
    let p = |s: &str| s.parse::<FaultSpec>();
    let spec = |fault, first, last| FaultSpec { fault, first, last };
    assert_eq!(
        p("drop-after-bytes=100"),
        Ok(spec(Fault::DropAfterInputBytes(100), 0, 0))
    );
    assert_eq!(
        p("drop-before-reply=4@2"),
        Ok(spec(
            Fault::DropBeforeReply {
                command: 4,
                stored: false
            },
            2,
            2
        ))
    );
    assert_eq!(
        p("reply-lost=4@0-9"),
        Ok(spec(
            Fault::DropBeforeReply {
                command: 4,
                stored: true
            },
            0,
            9
        ))
    );
    assert_eq!(p("421=1"), Ok(spec(Fault::Reply421 { command: 1 }, 0, 0)));
    assert_eq!(
        p("reply-code=2:451"),
        Ok(spec(
            Fault::ReplyCode {
                command: 2,
                code: 451
            },
            0,
            0
        ))
    );
    assert_eq!(p("STALL=3"), Ok(spec(Fault::Stall { command: 3 }, 0, 0)));
    assert_eq!(p("dribble@1"), Ok(spec(Fault::DribbleReplies, 1, 1)));
    assert_eq!(
        p("mid-reply-drop=5"),
        Ok(spec(Fault::MidReplyDrop { command: 5 }, 0, 0))
    );
    assert!(matches!(p("explode=1"), Err(FaultSpecError::Kind(_))));
    assert!(matches!(p("stall"), Err(FaultSpecError::Argument { .. })));
    assert!(matches!(
        p("dribble=1"),
        Err(FaultSpecError::Argument { .. })
    ));
    assert!(matches!(p("stall=-1"), Err(FaultSpecError::Number(_))));
    assert_eq!(p("reply-code=2:250"), Err(FaultSpecError::Code(250)));
    assert!(matches!(
        p("reply-code=2"),
        Err(FaultSpecError::Argument { .. })
    ));
    assert!(matches!(p("stall=1@5-2"), Err(FaultSpecError::Sessions(_))));
    assert!(matches!(
        p("stall=1@0-10000"),
        Err(FaultSpecError::Sessions(_))
    ));
    assert!(matches!(p("stall=1@x"), Err(FaultSpecError::Sessions(_))));
    let msg = p("explode=1").expect_err("bad").to_string();
    assert!(msg.contains("unknown fault \"explode\""), "{msg}");

    let specs = [
        p("stall=3@1-2").expect("spec"),
        p("dribble@2").expect("spec"),
    ];
    let plan = FaultPlan::from_specs(&specs);
    assert_eq!(plan.for_session(0), []);
    assert_eq!(plan.for_session(1), [Fault::Stall { command: 3 }]);
    assert_eq!(
        plan.for_session(2),
        [Fault::Stall { command: 3 }, Fault::DribbleReplies]
    );
}

/// XOAUTH2 and OAUTHBEARER: a right token, a wrong one (RFC 7628 error challenge, then 535
/// after the client's answer), the initial response on its own line, a malformed response.
#[test]
fn oauth_transcript_exact_replies() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let oauth = cfg(|c| {
        c.oauth_token = Some("tok3n".into());
        c.allow_plain_auth = true;
    });
    let good_x = b64("user=u@x\x01auth=Bearer tok3n\x01\x01");
    let bad_b = b64("n,a=u@x,\x01auth=Bearer wrong\x01\x01");
    let good_b = b64("n,a=u@x,\x01auth=Bearer tok3n\x01\x01");
    let t = format!(
        "EHLO c\r\nAUTH PLAIN AHVzZXIAcGFzcw==\r\nAUTH OAUTHBEARER {bad_b}\r\nAQ==\r\n\
         AUTH XOAUTH2 {}\r\nAUTH OAUTHBEARER\r\n{good_b}\r\nMAIL FROM:<a@x>\r\n",
        b64("garbage")
    );
    let run = feed(&oauth, &[t.as_bytes()]);
    let lines = run.lines();
    assert!(lines.contains(&"250 AUTH XOAUTH2 OAUTHBEARER"), "{lines:?}");
    let after_ehlo: Vec<&str> = lines
        .iter()
        .copied()
        .skip_while(|l| !l.starts_with("250 AUTH"))
        .skip(1)
        .collect();
    let challenge = format!(
        "334 {}",
        b64(r#"{"status":"invalid_token","schemes":"Bearer","scope":"mail"}"#)
    );
    assert_eq!(
        after_ehlo,
        [
            "504 5.5.4 Unrecognized authentication type",
            challenge.as_str(),
            "535 5.7.8 Authentication credentials invalid",
            "501 5.5.2 Error: malformed OAuth response",
            "334 ",
            "235 2.7.0 Authentication successful",
            "250 2.1.0 Ok",
        ]
    );
    let run = feed(
        &oauth,
        &[format!("EHLO c\r\nAUTH XOAUTH2 {good_x}\r\nMAIL FROM:<a@x>\r\n").as_bytes()],
    );
    assert_eq!(
        run.lines()[run.lines().len() - 2..],
        ["235 2.7.0 Authentication successful", "250 2.1.0 Ok"]
    );
}
