//! BDAT (RFC 3030): deep pipelines with failures in the middle, the message window.

use super::*;

#[test]
fn bdat_deep_pipeline_with_failures_in_the_middle() {
    let m = |id, to: &str| Message {
        dsn: None,
        id,
        from: "s@example.com".into(),
        to: vec![to.into()],
        data: b"Subject: x\n\n.hi\n".to_vec(),
    };
    let msgs = [
        m(1, "a@example.net"),
        m(2, "bad@example.net"),
        m(3, "c@example.net"),
        m(4, "d@example.net"),
    ];
    let one = |to: &str| {
        format!(
            "MAIL FROM:<s@example.com> SIZE=19\r\nRCPT TO:<{to}>\r\nBDAT 19 LAST\r\nSubject: x\r\n\r\n.hi\r\n"
        )
    };
    let group = one("a@example.net")
        + &one("bad@example.net")
        + &one("c@example.net")
        + &one("d@example.net")
        + "QUIT\r\n";
    let replies = "250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: 19 bytes queued as A\r\n\
                   250 Ok\r\n550 5.1.1 rejected\r\n554 5.5.1 Error: no valid recipients\r\n\
                   250 Ok\r\n250 Ok\r\n451 4.3.0 try again\r\n\
                   250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: queued as D\r\n221 bye\r\n";
    let r = run(cfg(), &msgs, &[GREET, EHLO_CHUNK, (&group, replies)]);
    assert_eq!(
        r.outcomes(),
        vec![
            (
                1,
                "a@example.net".into(),
                Delivery::Sent,
                Stage::Body,
                Some(250)
            ),
            (
                2,
                "bad@example.net".into(),
                Delivery::Rejected,
                Stage::Rcpt,
                Some(550)
            ),
            (
                3,
                "c@example.net".into(),
                Delivery::Deferred,
                Stage::Body,
                Some(451)
            ),
            (
                4,
                "d@example.net".into(),
                Delivery::Sent,
                Stage::Body,
                Some(250)
            ),
        ]
    );
    // Lock-step would need MAIL, RCPT, DATA and the dot for each: 4 x 4 + greeting, EHLO, QUIT.
    assert_eq!(
        r.session.round_trips(),
        RoundTrips {
            used: 3,
            lockstep: 19
        }
    );
}

#[test]
fn bdat_window_bounds_messages_in_flight() {
    let c = Config { window: 2, ..cfg() };
    let m = |id, to: &str| Message {
        dsn: None,
        id,
        from: "s@example.com".into(),
        to: vec![to.into()],
        data: b"x".to_vec(),
    };
    let one = |to: &str| {
        format!("MAIL FROM:<s@example.com> SIZE=3\r\nRCPT TO:<{to}>\r\nBDAT 3 LAST\r\nx\r\n")
    };
    let ok3 = "250 Ok\r\n250 Ok\r\n250 Ok\r\n";
    let g1 = one("a@x.net") + &one("b@x.net");
    let g2 = one("c@x.net") + "QUIT\r\n";
    let r = run(
        c,
        &[m(1, "a@x.net"), m(2, "b@x.net"), m(3, "c@x.net")],
        &[
            GREET,
            EHLO_CHUNK,
            (&g1, ok3),
            (&g2, &format!("{ok3}{ok3}221 bye\r\n")),
        ],
    );
    assert_eq!(
        r.outcomes()
            .iter()
            .filter(|o| o.2 == Delivery::Sent)
            .count(),
        3
    );
}

/// Exim 4.96 (issue 11): every recipient of message 2 refused, so its `BDAT … LAST` gets
/// `503 Valid RCPT command must precede BDAT` and Exim keeps the transaction; the MAIL of
/// message 3, already pipelined, gets `503 sender already given`, and its RCPT and BDAT join
/// that transaction and are delivered. Message 3 is reported by those replies (sent, once),
/// the session does not step down, and from then on RSET precedes each MAIL written behind
/// an unanswered `BDAT … LAST`.
#[test]
fn exim_keeps_the_transaction_after_a_refused_bdat() {
    let c = Config { window: 3, ..cfg() };
    let m = |id, to: &str| Message {
        dsn: None,
        id,
        from: "s@example.com".into(),
        to: vec![to.into()],
        data: b"Subject: x\n\n.hi\n".to_vec(),
    };
    let one = |to: &str| {
        format!(
            "MAIL FROM:<s@example.com> SIZE=19\r\nRCPT TO:<{to}>\r\nBDAT 19 LAST\r\nSubject: x\r\n\r\n.hi\r\n"
        )
    };
    let msgs = [
        m(1, "a@example.net"),
        m(2, "defer@example.net"),
        m(3, "c@example.net"),
        m(4, "d@example.net"),
        m(5, "e@example.net"),
    ];
    let g1 = one("a@example.net") + &one("defer@example.net") + &one("c@example.net");
    let r1 = "250 OK\r\n250 Accepted\r\n250- 19 byte chunk, total 19\r\n250 OK id=1\r\n\
              250 OK\r\n451 Temporary local problem - please try later\r\n\
              503-All RCPT commands were rejected with this error:\r\n\
              503-451 Temporary local problem - please try later\r\n\
              503 Valid RCPT command must precede BDAT\r\n\
              503 sender already given\r\n250 Accepted\r\n\
              250- 19 byte chunk, total 19\r\n250 OK id=3\r\n";
    let g2 = one("d@example.net") + "RSET\r\n" + &one("e@example.net") + "QUIT\r\n";
    let r2 = "250 OK\r\n250 Accepted\r\n250 OK id=4\r\n250 Reset OK\r\n\
              250 OK\r\n250 Accepted\r\n250 OK id=5\r\n221 closing connection\r\n";
    // RSET for message 2's transaction (gated in BDAT mode), as after any refused BDAT.
    let rset = ("RSET\r\n", "250 Reset OK\r\n");
    let r = run(c, &msgs, &[GREET, EHLO_CHUNK, (&g1, r1), rset, (&g2, r2)]);
    let sent = |id, to: &str| (id, to.to_string(), Delivery::Sent, Stage::Body, Some(250));
    assert_eq!(
        r.outcomes(),
        vec![
            sent(1, "a@example.net"),
            (
                2,
                "defer@example.net".into(),
                Delivery::Deferred,
                Stage::Rcpt,
                Some(451)
            ),
            sent(3, "c@example.net"),
            sent(4, "d@example.net"),
            sent(5, "e@example.net"),
        ]
    );
    assert!(
        !r.events.iter().any(|e| matches!(e, Event::SteppedDown(_))),
        "503 sender already given is no evidence against pipelining"
    );
    assert_eq!(r.session.pipelining_level(), PipeliningLevel::CrossMessage);
    assert_eq!(r.closed(), Some(&None));
}

/// The same server state, but the MAIL's 503 is a refusal of after-dot pipelining: every
/// RCPT behind it is refused the same way, so the message is sent again after a step-down.
#[test]
fn stale_transaction_and_an_after_dot_refusal_still_step_down() {
    let c = Config { window: 2, ..cfg() };
    let m = |id, to: &str| Message {
        dsn: None,
        id,
        from: "s@example.com".into(),
        to: vec![to.into()],
        data: b"x".to_vec(),
    };
    let one = |to: &str| {
        format!("MAIL FROM:<s@example.com> SIZE=3\r\nRCPT TO:<{to}>\r\nBDAT 3 LAST\r\nx\r\n")
    };
    let g1 = one("bad@x.net") + &one("b@x.net") + "QUIT\r\n";
    let r1 = "250 Ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n\
              503 5.5.0 pipelined after end of data\r\n503 5.5.0 pipelined after end of data\r\n\
              503 5.5.0 pipelined after end of data\r\n503 5.5.0 pipelined after end of data\r\n";
    // Down to within-message: RSET (gated), then the refused message again, then QUIT.
    let g2 = "RSET\r\n".to_string();
    let g3 = one("b@x.net");
    let r = run(
        c,
        &[m(1, "bad@x.net"), m(2, "b@x.net")],
        &[
            GREET,
            EHLO_CHUNK,
            (&g1, r1),
            (&g2, "250 Ok\r\n"),
            (&g3, "250 Ok\r\n250 Ok\r\n250 Ok\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_eq!(
        r.outcomes(),
        vec![
            (
                1,
                "bad@x.net".into(),
                Delivery::Rejected,
                Stage::Rcpt,
                Some(550)
            ),
            (2, "b@x.net".into(), Delivery::Sent, Stage::Body, Some(250)),
        ]
    );
    assert_eq!(r.session.pipelining_level(), PipeliningLevel::WithinMessage);
}
