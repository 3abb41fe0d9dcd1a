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
