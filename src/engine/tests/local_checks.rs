//! Checks made before anything reaches the wire: SIZE, SMTPUTF8, address syntax.

use super::*;

#[test]
fn size_limit_fails_before_sending() {
    let big = Message {
        dsn: None,
        id: 7,
        from: "s@example.com".into(),
        to: vec!["a@x.net".into()],
        data: vec![b'a'; 2000],
    };
    let r = run(
        cfg(),
        &[big],
        &[GREET, EHLO_CHUNK, ("QUIT\r\n", "221 bye\r\n")],
    );
    let o = r.outcomes();
    assert_eq!(
        o,
        vec![(7, "a@x.net".into(), Delivery::Rejected, Stage::Mail, None)]
    );
    let note = r
        .events
        .iter()
        .find_map(|e| {
            if let Event::Recipient(o) = e {
                o.note.clone()
            } else {
                None
            }
        })
        .unwrap();
    assert!(note.contains("SIZE limit of 1000"), "{note}");
}

#[test]
fn non_ascii_address_needs_smtputf8() {
    let m = Message {
        dsn: None,
        id: 1,
        from: "s@example.com".into(),
        to: vec!["jos\u{e9}@example.com".into()],
        data: b"x".to_vec(),
    };
    let r = run(
        cfg(),
        std::slice::from_ref(&m),
        &[GREET, EHLO_PIPE, ("QUIT\r\n", "221 bye\r\n")],
    );
    assert_eq!(r.outcomes()[0].2, Delivery::Rejected);
    let r = run(
        cfg(),
        &[m],
        &[
            GREET,
            (
                "EHLO localhost\r\n",
                "250-mx\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n",
            ),
            (
                "MAIL FROM:<s@example.com> SMTPUTF8\r\nRCPT TO:<jos\u{e9}@example.com>\r\nDATA\r\n",
                "250 ok\r\n250 ok\r\n354 go\r\n",
            ),
            ("x\r\n.\r\nQUIT\r\n", "250 ok\r\n221 bye\r\n"),
        ],
    );
    assert_eq!(r.outcomes()[0].2, Delivery::Sent);
}

#[test]
fn invalid_address_never_reaches_the_wire() {
    let m = Message {
        dsn: None,
        id: 1,
        from: "s@example.com".into(),
        to: vec!["a@example.com>\r\nRCPT TO:<evil@x".into()],
        data: b"x".to_vec(),
    };
    let r = run(
        cfg(),
        &[m],
        &[GREET, EHLO_PIPE, ("QUIT\r\n", "221 bye\r\n")],
    );
    assert_eq!(r.outcomes()[0].2, Delivery::Rejected);
    assert_eq!(r.outcomes()[0].3, Stage::Mail);
}
