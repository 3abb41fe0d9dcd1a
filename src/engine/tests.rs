//! Engine tests: scripted server transcripts, each re-run with the server's bytes split at
//! every boundary and dribbled one byte at a time. Time is virtual.

use std::time::Instant;

use super::*;

mod bdat;
mod closing;
mod dsn;
mod errors;
mod handshake;
mod level;
mod local_checks;
mod oauth;
mod refusing;

/// How the scripted server's bytes reach the session.
#[derive(Clone, Copy, Debug)]
enum Split {
    Whole,
    At(usize),
    Bytewise,
}

fn feed(s: &mut Session, bytes: &[u8], split: Split, now: Instant) {
    match split {
        Split::Whole => s.handle_input(bytes, now),
        Split::At(k) => {
            let k = k.min(bytes.len());
            s.handle_input(&bytes[..k], now);
            s.handle_input(&bytes[k..], now);
        }
        Split::Bytewise => {
            for b in bytes {
                s.handle_input(std::slice::from_ref(b), now);
            }
        }
    }
}

struct Run {
    events: Vec<Event>,
    session: Session,
}

impl Run {
    fn outcomes(&self) -> Vec<(MessageId, String, Delivery, Stage, Option<u16>)> {
        outcomes(&self.events)
            .into_iter()
            .map(|(id, address, delivery, stage, code, _)| (id, address, delivery, stage, code))
            .collect()
    }

    fn closed(&self) -> Option<&Option<SessionError>> {
        closed(&self.events)
    }
}

/// One outcome: message, address, delivery, stage, reply code, returned.
type Outcome = (MessageId, String, Delivery, Stage, Option<u16>, bool);

/// The recipients' outcomes, in order.
fn outcomes(events: &[Event]) -> Vec<Outcome> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Recipient(o) => Some((
                o.message,
                o.address.clone(),
                o.delivery,
                o.stage,
                o.reply.as_ref().map(|r| r.code),
                o.returned,
            )),
            _ => None,
        })
        .collect()
}

/// How the session ended: the `Closed` event's error, if there was the event.
fn closed(events: &[Event]) -> Option<&Option<SessionError>> {
    events.iter().find_map(|e| match e {
        Event::Closed(c) => Some(c),
        _ => None,
    })
}

/// Runs `script`: each step is (the exact bytes the client must write as one group, the
/// server's answer). Messages are queued and QUIT requested up front.
fn run_with(cfg: Config, msgs: &[Message], script: &[(&str, &str)], split: Split) -> Run {
    run_script(cfg, msgs, script, |_| split, false)
}

/// Like [`run_with`], with step `i`'s answer fed as `split(i)` says, then EOF when `eof`.
fn run_script(
    cfg: Config,
    msgs: &[Message],
    script: &[(&str, &str)],
    split: impl Fn(usize) -> Split,
    eof: bool,
) -> Run {
    let now = Instant::now();
    let mut s = Session::new(cfg, now);
    for m in msgs {
        s.send(m.clone());
    }
    s.quit();
    let mut events = Vec::new();
    for (i, (client, server)) in script.iter().enumerate() {
        let how = split(i);
        let mut out = Vec::new();
        s.poll_transmit(now, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            *client,
            "client group {i} ({how:?})"
        );
        feed(&mut s, server.as_bytes(), how, now);
        while let Some(e) = s.poll_event() {
            events.push(e);
        }
    }
    if eof {
        s.handle_eof();
    }
    let mut out = Vec::new();
    s.poll_transmit(now, &mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "",
        "client wrote more than the script has"
    );
    while let Some(e) = s.poll_event() {
        events.push(e);
    }
    Run { events, session: s }
}

/// Runs the script whole, split at every boundary, and bytewise; checks all agree.
fn run(cfg: Config, msgs: &[Message], script: &[(&str, &str)]) -> Run {
    let whole = run_with(cfg.clone(), msgs, script, Split::Whole);
    let longest = script.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    for k in 0..=longest {
        let r = run_with(cfg.clone(), msgs, script, Split::At(k));
        assert_eq!(r.events, whole.events, "split at {k}");
    }
    let r = run_with(cfg, msgs, script, Split::Bytewise);
    assert_eq!(r.events, whole.events, "bytewise");
    whole
}

fn msg(id: u64, to: &[&str]) -> Message {
    Message {
        dsn: None,
        id,
        from: "sender@example.com".into(),
        to: to.iter().map(|s| s.to_string()).collect(),
        data: format!(
            "From: sender@example.com\n\nThis is a mail to {}",
            to.join(" ")
        )
        .into_bytes(),
    }
}

const GREET: (&str, &str) = ("", "220 mx.example ESMTP\r\n");
const EHLO_PIPE: (&str, &str) = (
    "EHLO localhost\r\n",
    "250-mx.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
);
const EHLO_CHUNK: (&str, &str) = (
    "EHLO localhost\r\n",
    "250-mx.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SIZE 1000\r\n",
);
const EHLO_PLAIN: (&str, &str) = ("EHLO localhost\r\n", "250-mx.example\r\n250 8BITMIME\r\n");

fn cfg() -> Config {
    Config {
        tls: TlsPolicy::None,
        ..Config::default()
    }
}

#[test]
fn seed_synopsis_three_messages_one_round_trip_each() {
    let msgs = [
        msg(1, &["s1@example.com"]),
        msg(2, &["s2@example.com"]),
        msg(3, &["s3@example.com"]),
    ];
    let body =
        |to: &str| format!("From: sender@example.com\r\n\r\nThis is a mail to {to}\r\n.\r\n");
    let env = |to: &str| format!("MAIL FROM:<sender@example.com>\r\nRCPT TO:<{to}>\r\nDATA\r\n");
    let g2 = env("s1@example.com");
    let g3 = body("s1@example.com") + &env("s2@example.com");
    let g4 = body("s2@example.com") + &env("s3@example.com");
    let g5 = body("s3@example.com") + "QUIT\r\n";
    let ok = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n";
    let queued = format!("250 2.0.0 Ok: queued as A\r\n{ok}");
    let r = run(
        cfg(),
        &msgs,
        &[
            GREET,
            EHLO_PIPE,
            (&g2, ok),
            (&g3, &queued),
            (&g4, &queued),
            (&g5, "250 2.0.0 Ok: queued as C\r\n221 2.0.0 Bye\r\n"),
        ],
    );
    let sent: Vec<_> = r
        .outcomes()
        .into_iter()
        .filter(|o| o.2 == Delivery::Sent)
        .map(|o| o.1)
        .collect();
    assert_eq!(sent, ["s1@example.com", "s2@example.com", "s3@example.com"]);
    assert_eq!(r.closed(), Some(&None));
    // greeting, EHLO, one per message, the last dot with QUIT
    assert_eq!(
        r.session.round_trips(),
        RoundTrips {
            used: 6,
            lockstep: 15
        }
    );
}

#[test]
fn one_of_two_recipients_rejected_message_still_sent() {
    let r = run(
        cfg(),
        &[msg(1, &["a@example.com", "bad@example.com"])],
        &[
            GREET,
            EHLO_PIPE,
            (
                "MAIL FROM:<sender@example.com>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<bad@example.com>\r\nDATA\r\n",
                "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <bad@example.com>: Recipient address rejected\r\n354 go\r\n",
            ),
            (
                "From: sender@example.com\r\n\r\nThis is a mail to a@example.com bad@example.com\r\n.\r\nQUIT\r\n",
                "250 2.0.0 queued\r\n221 bye\r\n",
            ),
        ],
    );
    assert_eq!(
        r.outcomes(),
        vec![
            (
                1,
                "bad@example.com".into(),
                Delivery::Rejected,
                Stage::Rcpt,
                Some(550)
            ),
            (
                1,
                "a@example.com".into(),
                Delivery::Sent,
                Stage::Body,
                Some(250)
            ),
        ]
    );
}

#[test]
fn all_recipients_rejected_data_refused_then_rset() {
    let r = run(
        cfg(),
        &[msg(1, &["x@example.com"]), msg(2, &["y@example.com"])],
        &[
            GREET,
            EHLO_PIPE,
            (
                "MAIL FROM:<sender@example.com>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n",
                "250 Ok\r\n550 5.1.1 no\r\n503 5.5.1 Error: no valid recipients\r\n",
            ),
            (
                "RSET\r\nMAIL FROM:<sender@example.com>\r\nRCPT TO:<y@example.com>\r\nDATA\r\n",
                "250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n",
            ),
            (
                "From: sender@example.com\r\n\r\nThis is a mail to y@example.com\r\n.\r\nQUIT\r\n",
                "250 queued\r\n221 bye\r\n",
            ),
        ],
    );
    assert_eq!(
        r.outcomes(),
        vec![
            (
                1,
                "x@example.com".into(),
                Delivery::Rejected,
                Stage::Rcpt,
                Some(550)
            ),
            (
                2,
                "y@example.com".into(),
                Delivery::Sent,
                Stage::Body,
                Some(250)
            ),
        ]
    );
}

#[test]
fn all_recipients_rejected_data_354_gets_lone_dot() {
    let r = run(
        cfg(),
        &[msg(1, &["x@example.com"]), msg(2, &["y@example.com"])],
        &[
            GREET,
            EHLO_PIPE,
            (
                "MAIL FROM:<sender@example.com>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n",
                "250 Ok\r\n450 4.2.0 try later\r\n354 go\r\n",
            ),
            (
                ".\r\nMAIL FROM:<sender@example.com>\r\nRCPT TO:<y@example.com>\r\nDATA\r\n",
                "554 5.5.1 no valid recipients\r\n250 Ok\r\n250 Ok\r\n354 go\r\n",
            ),
            (
                "From: sender@example.com\r\n\r\nThis is a mail to y@example.com\r\n.\r\nQUIT\r\n",
                "250 queued\r\n221 bye\r\n",
            ),
        ],
    );
    assert_eq!(
        r.outcomes(),
        vec![
            (
                1,
                "x@example.com".into(),
                Delivery::Deferred,
                Stage::Rcpt,
                Some(450)
            ),
            (
                2,
                "y@example.com".into(),
                Delivery::Sent,
                Stage::Body,
                Some(250)
            ),
        ]
    );
}

#[test]
fn rejected_mail_fails_its_own_recipients_not_the_next() {
    let r = run(
        cfg(),
        &[msg(1, &["a@example.com"]), msg(2, &["b@example.com"])],
        &[
            GREET,
            EHLO_PIPE,
            (
                "MAIL FROM:<sender@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n",
                "553 5.1.8 sender rejected\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n",
            ),
            (
                "RSET\r\nMAIL FROM:<sender@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
                "250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n",
            ),
            (
                "From: sender@example.com\r\n\r\nThis is a mail to b@example.com\r\n.\r\nQUIT\r\n",
                "250 queued\r\n221 bye\r\n",
            ),
        ],
    );
    assert_eq!(
        r.outcomes(),
        vec![
            (
                1,
                "a@example.com".into(),
                Delivery::Rejected,
                Stage::Mail,
                Some(553)
            ),
            (
                2,
                "b@example.com".into(),
                Delivery::Sent,
                Stage::Body,
                Some(250)
            ),
        ]
    );
}

/// Regression (issue #7, found by `tests/faults.rs`): a server that refuses RSET may still
/// hold the failed transaction. A MAIL pipelined behind the RSET got `503 nested MAIL`, its
/// RCPT joined the old transaction, DATA got 354, and the lone dot for the "hollow" message
/// delivered an empty message to the earlier, failed recipient. Now a refused RSET ends the
/// session at once: in DATA mode the next envelope is already out (RSET is pipelined with it)
/// but nothing of that message is committed before its 354, which comes after RSET's reply,
/// so the session closes without another byte (no body, no dot, no QUIT).
#[test]
fn refused_rset_ends_the_session_before_the_next_mail() {
    let r = run(
        cfg(),
        &[msg(1, &["a@example.com"]), msg(2, &["b@example.com"])],
        &[
            GREET,
            EHLO_PIPE,
            (
                "MAIL FROM:<sender@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n",
                "250 Ok\r\n250 Ok\r\n552 5.3.4 too big\r\n",
            ),
            (
                "RSET\r\nMAIL FROM:<sender@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
                "451 4.3.0 busy\r\n503 5.5.1 nested MAIL\r\n250 Ok\r\n354 go\r\n",
            ),
        ],
    );
    assert_eq!(
        r.outcomes(),
        vec![
            (
                1,
                "a@example.com".into(),
                Delivery::Rejected,
                Stage::Data,
                Some(552)
            ),
            (
                2,
                "b@example.com".into(),
                Delivery::Deferred,
                Stage::Mail,
                None
            ),
        ]
    );
    assert!(matches!(
        r.closed(),
        Some(Some(SessionError::Protocol(
            ProtocolError::UnexpectedCode {
                verb: Verb::Rset,
                ..
            }
        )))
    ));
}

#[test]
fn service_closing_421_mid_group() {
    let r = run(
        cfg(),
        &[
            msg(1, &["a@example.com"]),
            msg(2, &["b@example.com", "c@example.com"]),
            msg(3, &["d@example.com"]),
        ],
        &[
            GREET,
            EHLO_PIPE,
            (
                "MAIL FROM:<sender@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n",
                "250 Ok\r\n250 Ok\r\n354 go\r\n",
            ),
            (
                "From: sender@example.com\r\n\r\nThis is a mail to a@example.com\r\n.\r\nMAIL FROM:<sender@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n",
                "250 queued\r\n250 Ok\r\n421 4.3.0 shutting down\r\n",
            ),
        ],
    );
    assert_eq!(
        r.outcomes(),
        vec![
            (
                1,
                "a@example.com".into(),
                Delivery::Sent,
                Stage::Body,
                Some(250)
            ),
            (
                2,
                "b@example.com".into(),
                Delivery::Deferred,
                Stage::Rcpt,
                Some(421)
            ),
            (
                2,
                "c@example.com".into(),
                Delivery::Deferred,
                Stage::Rcpt,
                None
            ),
            (
                3,
                "d@example.com".into(),
                Delivery::Deferred,
                Stage::Connect,
                None
            ),
        ]
    );
    assert!(matches!(
        r.closed(),
        Some(Some(SessionError::ServiceClosing(_)))
    ));
}

#[test]
fn reply_to_a_command_never_sent_is_a_protocol_error() {
    let r = run(
        cfg(),
        &[],
        &[GREET, EHLO_PIPE, ("QUIT\r\n", "221 bye\r\n250 extra\r\n")],
    );
    // QUIT's reply closes the session first; extra bytes after close are ignored.
    assert_eq!(r.closed(), Some(&None));
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    s.handle_input(b"220 hi\r\n", now);
    let mut out = Vec::new();
    s.poll_transmit(now, &mut out);
    s.handle_input(b"250 ok\r\n250 surprise\r\n", now);
    let mut closed = None;
    while let Some(e) = s.poll_event() {
        if let Event::Closed(c) = e {
            closed = Some(c);
        }
    }
    assert!(matches!(
        closed,
        Some(Some(SessionError::Protocol(
            ProtocolError::UnexpectedReply(_)
        )))
    ));
}

#[test]
fn no_pipelining_means_lock_step() {
    let r = run(
        cfg(),
        &[msg(1, &["a@example.com", "b@example.com"])],
        &[
            GREET,
            EHLO_PLAIN,
            (
                "MAIL FROM:<sender@example.com> BODY=8BITMIME\r\n"
                    .replace(" BODY=8BITMIME", "")
                    .as_str(),
                "250 Ok\r\n",
            ),
            ("RCPT TO:<a@example.com>\r\n", "250 Ok\r\n"),
            ("RCPT TO:<b@example.com>\r\n", "550 no\r\n"),
            ("DATA\r\n", "354 go\r\n"),
            (
                "From: sender@example.com\r\n\r\nThis is a mail to a@example.com b@example.com\r\n.\r\n",
                "250 queued\r\n",
            ),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_eq!(r.outcomes().len(), 2);
    assert_eq!(
        r.session.round_trips(),
        RoundTrips {
            used: 8,
            lockstep: 8
        }
    );
}

#[test]
fn lock_step_skips_data_when_every_recipient_fails() {
    let r = run(
        cfg(),
        &[msg(1, &["a@example.com"]), msg(2, &["b@example.com"])],
        &[
            GREET,
            EHLO_PLAIN,
            ("MAIL FROM:<sender@example.com>\r\n", "250 Ok\r\n"),
            ("RCPT TO:<a@example.com>\r\n", "550 no\r\n"),
            // MAIL was accepted: the open transaction is reset before the next MAIL (issue #7:
            // without it a real server answers the next MAIL `503 nested MAIL command`).
            ("RSET\r\n", "250 Ok\r\n"),
            ("MAIL FROM:<sender@example.com>\r\n", "451 later\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_eq!(
        r.outcomes(),
        vec![
            (
                1,
                "a@example.com".into(),
                Delivery::Rejected,
                Stage::Rcpt,
                Some(550)
            ),
            (
                2,
                "b@example.com".into(),
                Delivery::Deferred,
                Stage::Mail,
                Some(451)
            ),
        ]
    );
}

#[test]
fn connection_lost_after_final_dot_is_unknown_not_sent() {
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    s.send(msg(1, &["a@example.com"]));
    s.send(msg(2, &["b@example.com"]));
    s.handle_input(b"220 hi\r\n", now);
    let mut out = Vec::new();
    s.poll_transmit(now, &mut out);
    s.handle_input(EHLO_PIPE.1.as_bytes(), now);
    s.poll_transmit(now, &mut out);
    s.handle_input(b"250 ok\r\n250 ok\r\n354 go\r\n", now);
    s.poll_transmit(now, &mut out); // body 1 + envelope 2
    s.handle_eof();
    let mut outcomes = Vec::new();
    while let Some(e) = s.poll_event() {
        if let Event::Recipient(o) = e {
            outcomes.push((o.message, o.delivery, o.stage));
        }
    }
    assert_eq!(
        outcomes,
        vec![
            (1, Delivery::Unknown, Stage::Body),
            (2, Delivery::Deferred, Stage::Mail)
        ]
    );
}

#[test]
fn out_of_order_354_is_a_protocol_error_and_nothing_reported_sent() {
    // A server answering DATA before RCPT (smtp-sink -W style): replies out of step.
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    s.send(msg(1, &["a@example.com"]));
    s.quit();
    let mut out = Vec::new();
    s.handle_input(b"220 hi\r\n", now);
    s.poll_transmit(now, &mut out);
    s.handle_input(EHLO_PIPE.1.as_bytes(), now);
    s.poll_transmit(now, &mut out);
    s.handle_input(b"250 ok\r\n354 go\r\n250 ok\r\n", now);
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Recipient(o) if o.delivery == Delivery::Sent))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Closed(Some(SessionError::Protocol(_)))))
    );
}
