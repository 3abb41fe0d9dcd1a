//! Pipelining levels: servers that refuse commands pipelined after the end of data
//! (`503 … pipelined after end of DATA`), stepping down, and starting lower.

use super::*;

const REFUSED: &str = "503 5.5.0 Error: pipelined after end of DATA\r\n";
const OK3: &str = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n";

fn body(to: &str) -> String {
    format!("From: sender@example.com\r\n\r\nThis is a mail to {to}\r\n.\r\n")
}

fn env(to: &[&str]) -> String {
    let mut s = "MAIL FROM:<sender@example.com>\r\n".to_string();
    for t in to {
        s += &format!("RCPT TO:<{t}>\r\n");
    }
    s + "DATA\r\n"
}

/// One BDAT message to one recipient, 19 octets of body.
fn bdat_msg(id: u64, to: &str) -> Message {
    Message {
        dsn: None,
        id,
        from: "s@example.com".into(),
        to: vec![to.into()],
        data: b"Subject: x\n\n.hi\n".to_vec(),
    }
}

fn bdat_one(to: &str) -> String {
    format!(
        "MAIL FROM:<s@example.com> SIZE=19\r\nRCPT TO:<{to}>\r\nBDAT 19 LAST\r\nSubject: x\r\n\r\n.hi\r\n"
    )
}

fn refused(n: usize) -> String {
    REFUSED.repeat(n)
}

fn step_downs(r: &Run) -> Vec<&StepDown> {
    r.events
        .iter()
        .filter_map(|e| match e {
            Event::SteppedDown(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// No recipient is reported twice, and none is rejected by a 503.
fn assert_sane(r: &Run) {
    let mut seen = std::collections::HashSet::new();
    for o in r.outcomes() {
        assert!(seen.insert((o.0, o.1.clone())), "reported twice: {o:?}");
        assert_ne!(
            o.4,
            Some(503),
            "a pipelining refusal became an outcome: {o:?}"
        );
    }
}

#[test]
fn refusal_after_the_dot_in_data_mode_steps_down_and_resends() {
    let msgs = [
        msg(1, &["a@example.com"]),
        msg(2, &["b@example.com"]),
        msg(3, &["c@example.com"]),
    ];
    let g3 = body("a@example.com") + &env(&["b@example.com"]);
    let r3 = format!("250 2.0.0 Ok: queued as A\r\n{}", refused(3));
    let r = run(
        cfg(),
        &msgs,
        &[
            GREET,
            EHLO_PIPE,
            (&env(&["a@example.com"]), OK3),
            (&g3, &r3),
            // Within one message from now on: the envelope, then the body alone.
            (&env(&["b@example.com"]), OK3),
            (&body("b@example.com"), "250 2.0.0 Ok: queued as B\r\n"),
            (&env(&["c@example.com"]), OK3),
            (&body("c@example.com"), "250 2.0.0 Ok: queued as C\r\n"),
            ("QUIT\r\n", "221 2.0.0 Bye\r\n"),
        ],
    );
    assert_sane(&r);
    let sent: Vec<_> = r
        .outcomes()
        .into_iter()
        .map(|o| (o.0, o.1, o.2, o.3))
        .collect();
    assert_eq!(
        sent,
        [
            (1, "a@example.com".into(), Delivery::Sent, Stage::Body),
            (2, "b@example.com".into(), Delivery::Sent, Stage::Body),
            (3, "c@example.com".into(), Delivery::Sent, Stage::Body),
        ]
    );
    let sd = step_downs(&r);
    assert_eq!(sd.len(), 1);
    assert_eq!(
        (sd[0].from, sd[0].to, sd[0].verb, sd[0].reply.code),
        (
            PipeliningLevel::CrossMessage,
            PipeliningLevel::WithinMessage,
            Verb::Mail,
            503
        )
    );
    assert_eq!(r.session.pipelining_level(), PipeliningLevel::WithinMessage);
    assert_eq!(r.closed(), Some(&None));
    // greeting, EHLO, 2 before the switch, then 2 per message for b and c, QUIT
    assert_eq!(r.session.round_trips().used, 9);
}

#[test]
fn refusal_after_bdat_last_steps_down_and_resends() {
    let msgs = [
        bdat_msg(1, "a@example.net"),
        bdat_msg(2, "b@example.net"),
        bdat_msg(3, "c@example.net"),
    ];
    let group = bdat_one("a@example.net")
        + &bdat_one("b@example.net")
        + &bdat_one("c@example.net")
        + "QUIT\r\n";
    // a is taken; b, c and even QUIT are refused for following the end of data.
    let replies = format!(
        "250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: queued as A\r\n{}",
        refused(7)
    );
    let ok = "250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: queued\r\n";
    let r = run(
        cfg(),
        &msgs,
        &[
            GREET,
            EHLO_CHUNK,
            (&group, &replies),
            (&bdat_one("b@example.net"), ok),
            (&bdat_one("c@example.net"), ok),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_sane(&r);
    assert!(
        r.outcomes()
            .iter()
            .all(|o| o.2 == Delivery::Sent && o.3 == Stage::Body),
        "{:?}",
        r.outcomes()
    );
    assert_eq!(r.outcomes().len(), 3);
    assert_eq!(step_downs(&r).len(), 1);
    assert_eq!(r.closed(), Some(&None));
}

#[test]
fn refusal_in_the_middle_of_a_window_of_100_bdat_messages() {
    let to = |i: u64| format!("r{i}@example.net");
    let msgs: Vec<_> = (1..=100).map(|i| bdat_msg(i, &to(i))).collect();
    let mut group = String::new();
    for i in 1..=100 {
        group += &bdat_one(&to(i));
    }
    group += "QUIT\r\n";
    let ok = "250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: queued\r\n";
    // The first 40 arrive one by one; from the 41st on the server sees them pipelined.
    let replies = ok.repeat(40) + &refused(60 * 3 + 1);
    let again: Vec<String> = (41..=100).map(|i| bdat_one(&to(i))).collect();
    let mut script: Vec<(&str, &str)> = vec![GREET, EHLO_CHUNK, (&group, &replies)];
    for g in &again {
        script.push((g, ok));
    }
    script.push(("QUIT\r\n", "221 bye\r\n"));
    let c = Config {
        window: 100,
        ..cfg()
    };
    // The every-boundary re-run splits each server answer; that is 60 KiB of replies here,
    // so split the long one at a sample of boundaries and the rest everywhere.
    let whole = run_with(c.clone(), &msgs, &script, Split::Whole);
    for k in (0..replies.len()).step_by(61).chain([replies.len()]) {
        let r = run_with(c.clone(), &msgs, &script, Split::At(k));
        assert_eq!(r.events, whole.events, "split at {k}");
    }
    let r = run_with(c, &msgs, &script, Split::Bytewise);
    assert_eq!(r.events, whole.events, "bytewise");
    assert_sane(&whole);
    let outcomes = whole.outcomes();
    assert_eq!(outcomes.len(), 100);
    assert!(outcomes.iter().all(|o| o.2 == Delivery::Sent));
    // Each recipient once, in the order the server took them.
    let order: Vec<u64> = outcomes.iter().map(|o| o.0).collect();
    assert_eq!(order, (1..=100).collect::<Vec<_>>());
    assert_eq!(step_downs(&whole).len(), 1);
    // greeting, EHLO, the window, one per resent message, QUIT
    assert_eq!(whole.session.round_trips().used, 2 + 1 + 60 + 1);
}

#[test]
fn refusal_and_a_genuine_550_in_the_same_group() {
    let m1 = Message {
        dsn: None,
        to: vec!["a@example.net".into(), "bad@example.net".into()],
        ..bdat_msg(1, "")
    };
    let msgs = [
        m1,
        bdat_msg(2, "c@example.net"),
        bdat_msg(3, "d@example.net"),
    ];
    let first = "MAIL FROM:<s@example.com> SIZE=19\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<bad@example.net>\r\nBDAT 19 LAST\r\nSubject: x\r\n\r\n.hi\r\n";
    let group =
        first.to_string() + &bdat_one("c@example.net") + &bdat_one("d@example.net") + "QUIT\r\n";
    let replies = format!(
        "250 Ok\r\n250 Ok\r\n550 5.1.1 <bad@example.net>: Recipient address rejected\r\n250 2.0.0 Ok: queued as A\r\n{}",
        refused(7)
    );
    let ok = "250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: queued\r\n";
    let r = run(
        cfg(),
        &msgs,
        &[
            GREET,
            EHLO_CHUNK,
            (&group, &replies),
            (&bdat_one("c@example.net"), ok),
            (&bdat_one("d@example.net"), ok),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_sane(&r);
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
                1,
                "bad@example.net".into(),
                Delivery::Rejected,
                Stage::Rcpt,
                Some(550)
            ),
            (
                2,
                "c@example.net".into(),
                Delivery::Sent,
                Stage::Body,
                Some(250)
            ),
            (
                3,
                "d@example.net".into(),
                Delivery::Sent,
                Stage::Body,
                Some(250)
            ),
        ]
    );
}

#[test]
fn genuine_550_in_the_resent_envelope_stays_rejected() {
    let msgs = [
        msg(1, &["a@example.com"]),
        msg(2, &["b@example.com", "bad@example.com"]),
    ];
    let both = ["b@example.com", "bad@example.com"];
    let g3 = body("a@example.com") + &env(&both);
    let r3 = format!("250 2.0.0 Ok: queued as A\r\n{}", refused(4));
    let body2 =
        "From: sender@example.com\r\n\r\nThis is a mail to b@example.com bad@example.com\r\n.\r\n";
    let r = run(
        cfg(),
        &msgs,
        &[
            GREET,
            EHLO_PIPE,
            (&env(&["a@example.com"]), OK3),
            (&g3, &r3),
            (
                &env(&both),
                "250 Ok\r\n250 Ok\r\n550 5.1.1 no such user\r\n354 go\r\n",
            ),
            (body2, "250 2.0.0 Ok: queued as B\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_sane(&r);
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
                "bad@example.com".into(),
                Delivery::Rejected,
                Stage::Rcpt,
                Some(550)
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

#[test]
fn starting_within_message_never_pipelines_across_the_dot() {
    let c = Config {
        pipelining_level: PipeliningLevel::WithinMessage,
        ..cfg()
    };
    let tos: Vec<String> = (1..=10).map(|i| format!("m{i}@example.com")).collect();
    let msgs: Vec<_> = (1..=10u64)
        .map(|i| msg(i, &[tos[i as usize - 1].as_str()]))
        .collect();
    let envs: Vec<String> = tos.iter().map(|t| env(&[t.as_str()])).collect();
    let bodies: Vec<String> = tos.iter().map(|t| body(t)).collect();
    let mut script = vec![GREET, EHLO_PIPE];
    for (e, b) in envs.iter().zip(&bodies) {
        script.push((e, OK3));
        script.push((b, "250 2.0.0 Ok: queued\r\n"));
    }
    script.push(("QUIT\r\n", "221 bye\r\n"));
    let r = run(c.clone(), &msgs, &script);
    assert_sane(&r);
    assert_eq!(
        r.outcomes()
            .iter()
            .filter(|o| o.2 == Delivery::Sent)
            .count(),
        10
    );
    assert!(step_downs(&r).is_empty());
    // Two round trips per message: greeting, EHLO, 2 x 10, QUIT.
    assert_eq!(r.session.round_trips().used, 2 + 20 + 1);

    // BDAT: MAIL, RCPT and BDAT LAST are one group; the next waits for its reply.
    let ok = "250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: queued\r\n";
    let r = run(
        c,
        &[bdat_msg(1, "a@example.net"), bdat_msg(2, "b@example.net")],
        &[
            GREET,
            EHLO_CHUNK,
            (&bdat_one("a@example.net"), ok),
            (&bdat_one("b@example.net"), ok),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_sane(&r);
    assert_eq!(r.outcomes().len(), 2);
}

#[test]
fn starting_lock_step_sends_one_command_per_round_trip() {
    let c = Config {
        pipelining_level: PipeliningLevel::LockStep,
        ..cfg()
    };
    let r = run(
        c,
        &[msg(1, &["a@example.com"])],
        &[
            GREET,
            EHLO_PIPE,
            ("MAIL FROM:<sender@example.com>\r\n", "250 ok\r\n"),
            ("RCPT TO:<a@example.com>\r\n", "250 ok\r\n"),
            ("DATA\r\n", "354 go\r\n"),
            (&body("a@example.com"), "250 queued\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_sane(&r);
    assert_eq!(r.outcomes()[0].2, Delivery::Sent);
    assert!(!r.session.pipelining());
}

#[test]
fn a_503_to_a_mail_not_behind_an_end_of_data_is_still_an_outcome() {
    let r = run(
        cfg(),
        &[msg(1, &["a@example.com"])],
        &[
            GREET,
            EHLO_PIPE,
            (
                &env(&["a@example.com"]),
                "503 5.5.1 Error: nested MAIL command\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n",
            ),
            ("RSET\r\nQUIT\r\n", "250 ok\r\n221 bye\r\n"),
        ],
    );
    assert_eq!(
        r.outcomes(),
        vec![(
            1,
            "a@example.com".into(),
            Delivery::Rejected,
            Stage::Mail,
            Some(503)
        )]
    );
    assert!(step_downs(&r).is_empty());
}

/// Feeds `bytes` then EOF and returns the events.
fn drop_after(script: &[(&str, &str)], msgs: &[Message]) -> Vec<Event> {
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    for m in msgs {
        s.send(m.clone());
    }
    s.quit();
    for (client, server) in script {
        let mut out = Vec::new();
        s.poll_transmit(now, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), *client);
        s.handle_input(server.as_bytes(), now);
    }
    s.handle_eof();
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn connection_dropped_after_the_dots_reply_is_reported_as_evidence() {
    let msgs = [msg(1, &["a@example.com"]), msg(2, &["b@example.com"])];
    let g3 = body("a@example.com") + &env(&["b@example.com"]);
    let ev = drop_after(
        &[
            GREET,
            EHLO_PIPE,
            (&env(&["a@example.com"]), OK3),
            (&g3, "250 2.0.0 Ok: queued as A\r\n"),
        ],
        &msgs,
    );
    assert!(
        ev.contains(&Event::ClosedAfterEndOfData {
            level: PipeliningLevel::CrossMessage,
            verb: Verb::Mail
        }),
        "{ev:?}"
    );
    let b = ev.iter().find_map(|e| match e {
        Event::Recipient(o) if o.message == 2 => Some(o.delivery),
        _ => None,
    });
    assert_eq!(b, Some(Delivery::Deferred));

    // Dropped before the dot was answered: no evidence, the message is unknown.
    let ev = drop_after(
        &[GREET, EHLO_PIPE, (&env(&["a@example.com"]), OK3), (&g3, "")],
        &msgs,
    );
    assert!(
        !ev.iter()
            .any(|e| matches!(e, Event::ClosedAfterEndOfData { .. })),
        "{ev:?}"
    );
}

#[test]
fn refusal_within_a_message_steps_down_to_lock_step_after_rset() {
    // PIPELINING advertised, but a RCPT that arrives before MAIL was answered is refused.
    let msgs = [
        msg(1, &["a@example.com", "b@example.com"]),
        msg(2, &["c@example.com"]),
    ];
    let r = run(
        cfg(),
        &msgs,
        &[
            GREET,
            EHLO_PIPE,
            (
                &env(&["a@example.com", "b@example.com"]),
                "250 2.1.0 Ok\r\n503 5.5.1 Error: bad sequence of commands\r\n\
                 503 5.5.1 Error: bad sequence of commands\r\n503 5.5.1 Error: bad sequence of commands\r\n",
            ),
            // MAIL was accepted: that transaction is reset first, then one command at a time.
            ("RSET\r\n", "250 2.0.0 Ok\r\n"),
            ("MAIL FROM:<sender@example.com>\r\n", "250 Ok\r\n"),
            ("RCPT TO:<a@example.com>\r\n", "250 Ok\r\n"),
            ("RCPT TO:<b@example.com>\r\n", "550 5.1.1 no such user\r\n"),
            ("DATA\r\n", "354 go\r\n"),
            (
                "From: sender@example.com\r\n\r\nThis is a mail to a@example.com b@example.com\r\n.\r\n",
                "250 queued\r\n",
            ),
            ("MAIL FROM:<sender@example.com>\r\n", "250 Ok\r\n"),
            ("RCPT TO:<c@example.com>\r\n", "250 Ok\r\n"),
            ("DATA\r\n", "354 go\r\n"),
            (&body("c@example.com"), "250 queued\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_sane(&r);
    let outcomes: Vec<_> = r.outcomes().into_iter().map(|o| (o.1, o.2)).collect();
    assert_eq!(
        outcomes,
        [
            ("b@example.com".into(), Delivery::Rejected),
            ("a@example.com".into(), Delivery::Sent),
            ("c@example.com".into(), Delivery::Sent),
        ]
    );
    let sd = step_downs(&r);
    assert_eq!(sd.len(), 1);
    assert_eq!(
        (sd[0].from, sd[0].to, sd[0].verb),
        (
            PipeliningLevel::CrossMessage,
            PipeliningLevel::LockStep,
            Verb::Rcpt
        )
    );
    assert!(!r.session.pipelining());
}

#[test]
fn rset_refused_behind_an_end_of_data_is_sent_again() {
    // Window of 2: m3 goes out when m1 is answered, behind m2's BDAT LAST; m2 then fails for
    // real, and the RSET that must follow is written while m3's end of data is unanswered.
    // The server refuses it; the session steps down, resets again, and m4 goes alone.
    let c = Config { window: 2, ..cfg() };
    let msgs = [
        bdat_msg(1, "a@example.net"),
        bdat_msg(2, "bad@example.net"),
        bdat_msg(3, "c@example.net"),
        bdat_msg(4, "d@example.net"),
    ];
    let ok = "250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: queued\r\n";
    let g1 = bdat_one("a@example.net") + &bdat_one("bad@example.net");
    let m2 = "250 Ok\r\n550 5.1.1 no such user\r\n554 5.5.1 Error: no valid recipients\r\n";
    let r3 = format!("{ok}{REFUSED}");
    let r = run(
        c,
        &msgs,
        &[
            GREET,
            EHLO_CHUNK,
            (&g1, ok),
            (&bdat_one("c@example.net"), m2),
            ("RSET\r\n", &r3),
            ("RSET\r\n", "250 2.0.0 Ok\r\n"),
            (&bdat_one("d@example.net"), ok),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_sane(&r);
    let outcomes: Vec<_> = r.outcomes().into_iter().map(|o| (o.1, o.2)).collect();
    assert_eq!(
        outcomes,
        [
            ("a@example.net".into(), Delivery::Sent),
            ("bad@example.net".into(), Delivery::Rejected),
            ("c@example.net".into(), Delivery::Sent),
            ("d@example.net".into(), Delivery::Sent),
        ]
    );
    let sd = step_downs(&r);
    assert_eq!(sd.len(), 1);
    assert_eq!(sd[0].verb, Verb::Rset);
    assert_eq!(r.closed(), Some(&None));
}
