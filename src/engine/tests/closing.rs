//! Closing replies and the RSET budget (`closing.rs`, `resets.rs`): scripted BDAT
//! transcripts that end with the server closing the connection, each re-run with the last
//! answer split at every byte and dribbled.

use super::*;

/// Like `run_with`, then EOF when `eof`; the last answer fed as `split` says.
fn run_eof_with(
    cfg: Config,
    msgs: &[Message],
    script: &[(&str, &str)],
    eof: bool,
    split: Split,
) -> Vec<Event> {
    let last = script.len().saturating_sub(1);
    let how = |i| if i == last { split } else { Split::Whole };
    run_script(cfg, msgs, script, how, eof).events
}

fn run_eof(cfg: Config, msgs: &[Message], script: &[(&str, &str)], eof: bool) -> Vec<Event> {
    let whole = run_eof_with(cfg.clone(), msgs, script, eof, Split::Whole);
    let last = script.last().map_or(0, |(_, s)| s.len());
    for k in 0..=last {
        let r = run_eof_with(cfg.clone(), msgs, script, eof, Split::At(k));
        assert_eq!(r, whole, "split at {k}");
    }
    let r = run_eof_with(cfg, msgs, script, eof, Split::Bytewise);
    assert_eq!(r, whole, "bytewise");
    whole
}

fn m(id: u64, to: &str) -> Message {
    Message {
        dsn: None,
        id,
        from: "s@example.com".into(),
        to: vec![to.into()],
        data: b"x".to_vec(),
    }
}

fn one(to: &str) -> String {
    format!("MAIL FROM:<s@example.com> SIZE=3\r\nRCPT TO:<{to}>\r\nBDAT 3 LAST\r\nx\r\n")
}

const OK: &str = "250 OK\r\n250 Accepted\r\n250 OK id=1\r\n";
const REFUSED: &str =
    "250 OK\r\n550 5.1.1 no such user\r\n503 Valid RCPT command must precede BDAT\r\n";
const RESET: &str = "250 Reset OK\r\n";

fn keeps(window: usize) -> Config {
    Config {
        window,
        rset_before_mail: true,
        ..cfg()
    }
}

fn returned(id: u64, to: &str, stage: Stage) -> Outcome {
    (id, to.into(), Delivery::Deferred, stage, None, true)
}

fn outcome(id: u64, to: &str, d: Delivery, stage: Stage, code: u16) -> Outcome {
    (id, to.into(), d, stage, Some(code), false)
}

/// (a) Exim past `smtp_accept_max_nonmail`: `554 Too many nonmail commands` to a RSET, then
/// the connection closes. The messages written behind the RSET, and the one not written,
/// come back `returned`; the refused one keeps its outcome; nothing is `Unknown`.
#[test]
fn a_554_to_rset_then_eof_returns_the_messages_behind_it() {
    let msgs = [
        m(1, "bad@x.net"),
        m(2, "b@x.net"),
        m(3, "c@x.net"),
        m(4, "d@x.net"),
    ];
    let g = one("bad@x.net") + "RSET\r\n" + &one("b@x.net") + "RSET\r\n" + &one("c@x.net");
    let reply = format!("{REFUSED}554 Too many nonmail commands\r\n");
    let ev = run_eof(keeps(3), &msgs, &[GREET, EHLO_CHUNK, (&g, &reply)], true);
    assert_eq!(
        outcomes(&ev),
        vec![
            outcome(1, "bad@x.net", Delivery::Rejected, Stage::Rcpt, 550),
            returned(2, "b@x.net", Stage::Body),
            returned(3, "c@x.net", Stage::Body),
            returned(4, "d@x.net", Stage::Connect),
        ]
    );
    assert!(matches!(
        closed(&ev),
        Some(Some(SessionError::ServiceClosing(r))) if r.code == 554
    ));
}

/// The first session against Exim: the joined MAIL's `503 sender already given` comes with
/// `503 Too many syntax or protocol errors` (`smtp_max_synprot_errors`), then the drop.
#[test]
fn too_many_protocol_errors_on_a_joined_mail_returns_it_and_the_rest() {
    let c = Config { window: 3, ..cfg() };
    let msgs = [
        m(1, "defer@x.net"),
        m(2, "b@x.net"),
        m(3, "c@x.net"),
        m(4, "d@x.net"),
    ];
    let g = one("defer@x.net") + &one("b@x.net") + &one("c@x.net");
    let reply = "250 OK\r\n451 4.2.1 later\r\n503-All RCPT commands were rejected with this error:\r\n\
                 503-451 4.2.1 later\r\n503 Valid RCPT command must precede BDAT\r\n\
                 503-sender already given\r\n503 Too many syntax or protocol errors\r\n";
    let ev = run_eof(c, &msgs, &[GREET, EHLO_CHUNK, (&g, reply)], true);
    assert_eq!(
        outcomes(&ev),
        vec![
            outcome(1, "defer@x.net", Delivery::Deferred, Stage::Rcpt, 451),
            returned(2, "b@x.net", Stage::Body),
            returned(3, "c@x.net", Stage::Body),
            returned(4, "d@x.net", Stage::Connect),
        ]
    );
}

/// (b) 421 in the middle of a window: the message before it keeps its outcome, the one whose
/// MAIL got the 421 is deferred by it (an attempt), the rest come back `returned`.
#[test]
fn a_421_mid_window_returns_what_follows_it() {
    let c = Config { window: 3, ..cfg() };
    let msgs = [
        m(1, "a@x.net"),
        m(2, "b@x.net"),
        m(3, "c@x.net"),
        m(4, "d@x.net"),
    ];
    let g = one("a@x.net") + &one("b@x.net") + &one("c@x.net");
    let reply = format!("{OK}421 4.3.2 shutting down\r\n");
    let ev = run_eof(c, &msgs, &[GREET, EHLO_CHUNK, (&g, &reply)], false);
    assert_eq!(
        outcomes(&ev),
        vec![
            outcome(1, "a@x.net", Delivery::Sent, Stage::Body, 250),
            outcome(2, "b@x.net", Delivery::Deferred, Stage::Mail, 421),
            returned(3, "c@x.net", Stage::Body),
            returned(4, "d@x.net", Stage::Connect),
        ]
    );
    assert!(matches!(
        closed(&ev),
        Some(Some(SessionError::ServiceClosing(_)))
    ));
}

/// (c) EOF with no closing reply (the last reply positive, a refused RCPT, or a refusal with
/// more of a reply on the way): the messages sent are `Unknown` as before; nothing is
/// returned.
#[test]
fn plain_eof_keeps_unknown() {
    let c = Config { window: 2, ..cfg() };
    let msgs = [m(1, "a@x.net"), m(2, "b@x.net")];
    let g = one("a@x.net") + &one("b@x.net") + "QUIT\r\n";
    let unknown = |id, to: &str| (id, to.into(), Delivery::Unknown, Stage::Body, None, false);
    let ev = run_eof(
        c.clone(),
        &msgs,
        &[GREET, EHLO_CHUNK, (&g, "250 OK\r\n")],
        true,
    );
    assert_eq!(
        outcomes(&ev),
        vec![unknown(1, "a@x.net"), unknown(2, "b@x.net")]
    );
    assert_eq!(closed(&ev), Some(&Some(SessionError::Closed)));
    // A refused RCPT: the server may have stored the message of the BDAT behind it (for the
    // other recipient) and dropped before replying.
    let two = Message {
        to: vec!["a@x.net".into(), "bad@x.net".into()],
        ..m(1, "")
    };
    let g2 = "MAIL FROM:<s@example.com> SIZE=3\r\nRCPT TO:<a@x.net>\r\n\
              RCPT TO:<bad@x.net>\r\nBDAT 3 LAST\r\nx\r\nQUIT\r\n";
    let r2 = "250 OK\r\n250 OK\r\n550 no\r\n";
    let ev = run_eof(c.clone(), &[two], &[GREET, EHLO_CHUNK, (g2, r2)], true);
    assert_eq!(
        outcomes(&ev),
        vec![
            outcome(1, "bad@x.net", Delivery::Rejected, Stage::Rcpt, 550),
            unknown(1, "a@x.net"),
        ]
    );
    // A refused MAIL, but the server had begun the next reply: it went on, this is no
    // closing reply.
    let r3 = format!("{OK}550 no\r\n25");
    let ev = run_eof(c, &msgs, &[GREET, EHLO_CHUNK, (&g, &r3)], true);
    assert_eq!(
        outcomes(&ev),
        vec![
            outcome(1, "a@x.net", Delivery::Sent, Stage::Body, 250),
            outcome(2, "b@x.net", Delivery::Rejected, Stage::Mail, 550),
        ]
    );
}

/// A refused ungated RSET and the server goes on answering: the session ends at that next
/// reply, as before (what followed may have joined an open transaction): `Unknown`.
#[test]
fn a_refused_rset_the_server_goes_on_from_ends_the_session() {
    let msgs = [m(1, "a@x.net"), m(2, "b@x.net")];
    let g = one("a@x.net") + "RSET\r\n" + &one("b@x.net") + "QUIT\r\n";
    let reply = format!("{OK}500 unrecognized command\r\n503 sender already given\r\n");
    let ev = run_eof(keeps(2), &msgs, &[GREET, EHLO_CHUNK, (&g, &reply)], false);
    assert_eq!(
        outcomes(&ev),
        vec![
            outcome(1, "a@x.net", Delivery::Sent, Stage::Body, 250),
            (
                2,
                "b@x.net".into(),
                Delivery::Unknown,
                Stage::Body,
                None,
                false
            ),
        ]
    );
    assert!(matches!(
        closed(&ev),
        Some(Some(SessionError::Protocol(
            ProtocolError::UnexpectedCode {
                verb: Verb::Rset,
                ..
            }
        )))
    ));
}

/// (d) The budget (8 after a plain EHLO): RSET + MAIL is written only while refused
/// transactions plus unanswered ones with a RSET behind them stay below it. The first window
/// holds 9 messages (8 RSETs); after 2 refusals, 7; at 8 refusals the session quits and
/// hands back what it did not write.
#[test]
fn the_rset_budget_shrinks_the_window_then_quits() {
    let refused = [1u64, 2, 10, 11, 12, 13, 14, 15];
    let to = |i: u64| {
        if refused.contains(&i) {
            format!("bad{i}@x.net")
        } else {
            format!("u{i}@x.net")
        }
    };
    let msgs: Vec<Message> = (1..=20).map(|i| m(i, &to(i))).collect();
    let group = |ids: std::ops::RangeInclusive<u64>| {
        let (mut out, mut replies) = (String::new(), String::new());
        for i in ids.clone() {
            if i != *ids.start() {
                out.push_str("RSET\r\n");
                replies.push_str(RESET);
            }
            out.push_str(&one(&to(i)));
            replies.push_str(if refused.contains(&i) { REFUSED } else { OK });
        }
        (out, replies)
    };
    let (g1, r1) = group(1..=9);
    let (g2, r2) = group(10..=16);
    let ev = run_eof(
        keeps(20),
        &msgs,
        &[
            GREET,
            EHLO_CHUNK,
            (&g1, &r1),
            (&g2, &r2),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
        false,
    );
    let mut want = Vec::new();
    for i in 1..=16 {
        want.push(if refused.contains(&i) {
            outcome(i, &to(i), Delivery::Rejected, Stage::Rcpt, 550)
        } else {
            outcome(i, &to(i), Delivery::Sent, Stage::Body, 250)
        });
    }
    want.extend((17..=20).map(|i| returned(i, &to(i), Stage::Connect)));
    assert_eq!(outcomes(&ev), want);
    assert!(ev.contains(&Event::RsetBudgetSpent {
        refused: 8,
        budget: 8
    }));
    assert_eq!(closed(&ev), Some(&None));
}

/// A host never seen keeping a refused transaction: no RSET before MAIL, the whole window.
#[test]
fn without_the_rule_the_window_is_whole() {
    let c = Config {
        window: 12,
        ..cfg()
    };
    let msgs: Vec<Message> = (1..=12).map(|i| m(i, &format!("u{i}@x.net"))).collect();
    let g: String = (1..=12).map(|i| one(&format!("u{i}@x.net"))).collect();
    let g = g + "QUIT\r\n";
    let r = OK.repeat(12) + "221 bye\r\n";
    let ev = run_eof(c, &msgs, &[GREET, EHLO_CHUNK, (&g, &r)], false);
    assert_eq!(outcomes(&ev).len(), 12);
    assert!(outcomes(&ev).iter().all(|o| o.2 == Delivery::Sent));
}
