//! Typed errors: the stage rows fail at, what ends a run, the session state.

use super::*;

fn stages(r: &Run) -> Vec<(Delivery, Stage)> {
    r.outcomes().into_iter().map(|o| (o.2, o.3)).collect()
}

#[test]
fn messages_kept_out_by_starttls_fail_at_stage_tls() {
    let c = Config {
        tls: TlsPolicy::Required,
        ..Config::default()
    };
    let r = run(
        c.clone(),
        &[msg(1, &["a@example.com"])],
        &[GREET, EHLO_PIPE, ("QUIT\r\n", "221 bye\r\n")],
    );
    assert_eq!(stages(&r), [(Delivery::Deferred, Stage::Tls)]);
    let err = r.closed().cloned().flatten().expect("an error");
    assert!(err.is_fatal());
    assert_eq!(err.stage(), Stage::Tls);
    assert_eq!(
        err.to_string(),
        "TLS is required but the server does not offer STARTTLS"
    );

    // Refused STARTTLS.
    let r = run(
        c,
        &[msg(1, &["a@example.com"])],
        &[
            GREET,
            (
                "EHLO localhost\r\n",
                "250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
            ),
            ("STARTTLS\r\n", "454 4.7.0 TLS not available\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_eq!(stages(&r), [(Delivery::Deferred, Stage::Tls)]);
    assert!(matches!(
        r.closed(),
        Some(Some(SessionError::TlsRequired(TlsRefusal::Refused(reply)))) if reply.code == 454
    ));
}

#[test]
fn a_failed_tls_handshake_fails_queued_messages_at_stage_tls() {
    let c = Config {
        tls: TlsPolicy::Required,
        ..Config::default()
    };
    let now = Instant::now();
    let mut s = Session::new(c, now);
    s.send(msg(1, &["a@example.com"]));
    s.handle_input(b"220 hi\r\n", now);
    let mut out = Vec::new();
    s.poll_transmit(now, &mut out);
    s.handle_input(b"250-mx\r\n250 STARTTLS\r\n", now);
    s.poll_transmit(now, &mut out);
    s.handle_input(b"220 go ahead\r\n", now);
    assert_eq!(s.state(), SessionState::TlsHandshake);
    let failure = TlsFailure::new(TlsFailureKind::Untrusted, "self-signed certificate")
        .with_host("mx.example")
        .with_hint("add its CA");
    s.handle_io_error(SessionError::Tls(failure));
    assert_eq!(s.state(), SessionState::Closed);
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    let o = events
        .iter()
        .find_map(|e| match e {
            Event::Recipient(o) => Some(o.clone()),
            _ => None,
        })
        .expect("an outcome");
    assert_eq!((o.delivery, o.stage), (Delivery::Deferred, Stage::Tls));
    assert_eq!(
        o.note.as_deref(),
        Some("not sent: TLS handshake failed: mx.example: self-signed certificate (add its CA)")
    );
}

#[test]
fn messages_kept_out_by_auth_fail_at_stage_auth() {
    let c = Config {
        auth: Some(Credentials {
            username: "user".into(),
            password: Secret::new("pw"),
        }),
        allow_plaintext_auth: true,
        ..cfg()
    };
    let r = run(
        c,
        &[msg(1, &["a@example.com"])],
        &[
            GREET,
            ("EHLO localhost\r\n", "250-mx\r\n250 AUTH PLAIN\r\n"),
            ("AUTH PLAIN AHVzZXIAcHc=\r\n", "535 5.7.8 bad\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_eq!(stages(&r), [(Delivery::Deferred, Stage::Auth)]);
    let err = r.closed().cloned().flatten().expect("an error");
    assert!(err.is_fatal());
    assert_eq!(err.stage(), Stage::Auth);
}

#[test]
fn fatal_versus_transient() {
    let io = SessionError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    assert_eq!(
        io.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionReset)
    );
    for e in [
        io,
        SessionError::Closed,
        SessionError::GreetingTimeout,
        SessionError::Timeout(Verb::Mail),
        SessionError::ServiceClosing(Reply::new(421, "busy")),
        SessionError::Greeting(Reply::new(421, "busy")),
        ProtocolError::LineTooLong.into(),
    ] {
        assert!(!e.is_fatal(), "{e}");
        assert_eq!(e.stage(), Stage::Connect, "{e}");
    }
    for e in [
        SessionError::PipeliningRequired,
        SessionError::Greeting(Reply::new(554, "go away")),
        SessionError::Helo(Reply::new(550, "no")),
        SessionError::AuthUnsupported(AuthOffer(vec!["CRAM-MD5".into()])),
        SessionError::Tls("handshake failed".into()),
    ] {
        assert!(e.is_fatal(), "{e}");
    }
    assert_eq!(
        SessionError::AuthUnsupported(AuthOffer::default()).to_string(),
        "server offers no AUTH mechanism pipemail supports (PLAIN, LOGIN) (it advertises no AUTH)"
    );
}

#[test]
fn state_tells_what_the_session_waits_for() {
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    assert_eq!(s.state(), SessionState::Handshake);
    s.handle_input(GREET.1.as_bytes(), now);
    let mut out = Vec::new();
    s.poll_transmit(now, &mut out);
    s.handle_input(EHLO_PIPE.1.as_bytes(), now);
    assert_eq!(s.state(), SessionState::Idle);
    s.send(msg(1, &["a@example.com"]));
    assert_eq!(s.state(), SessionState::Busy);
    out.clear();
    s.poll_transmit(now, &mut out);
    s.handle_input(b"250 ok\r\n250 ok\r\n354 go\r\n", now);
    assert_eq!(s.state(), SessionState::Holding);
    assert!(s.is_holding());
    s.quit();
    out.clear();
    s.poll_transmit(now, &mut out);
    assert_eq!(s.state(), SessionState::Quitting);
    s.handle_input(b"250 queued\r\n221 bye\r\n", now);
    assert_eq!(s.state(), SessionState::Closed);
}
