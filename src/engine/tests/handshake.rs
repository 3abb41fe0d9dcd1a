//! The handshake: HELO fallback, PIPELINING required, per-state timeouts, STARTTLS and AUTH.

use std::time::{Duration, Instant};

use super::*;

#[test]
fn helo_fallback_when_ehlo_refused() {
    let r = run(
        cfg(),
        &[],
        &[
            GREET,
            ("EHLO localhost\r\n", "502 5.5.2 command not recognized\r\n"),
            ("HELO localhost\r\n", "250 mx\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert!(r.session.capabilities().helo_only);
    assert_eq!(r.closed(), Some(&None));
}

#[test]
fn require_pipelining_refuses_without_it() {
    let c = Config {
        pipelining: PipeliningPolicy::Require,
        ..cfg()
    };
    let r = run(
        c,
        &[msg(1, &["a@example.com"])],
        &[GREET, EHLO_PLAIN, ("QUIT\r\n", "221 bye\r\n")],
    );
    assert_eq!(
        r.outcomes(),
        vec![(
            1,
            "a@example.com".into(),
            Delivery::Deferred,
            Stage::Connect,
            None
        )]
    );
    assert_eq!(r.closed(), Some(&Some(SessionError::PipeliningRequired)));
}

#[test]
fn timeouts_per_state() {
    let t = Timeouts {
        greeting: Duration::from_secs(5),
        command: Duration::from_secs(7),
        data: Duration::from_secs(9),
        data_end: Duration::from_secs(11),
    };
    let c = Config {
        timeouts: t,
        ..cfg()
    };
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let closed = |s: &mut Session| {
        let mut r = None;
        while let Some(e) = s.poll_event() {
            if let Event::Closed(c) = e {
                r = Some(c);
            }
        }
        r
    };
    // greeting
    let mut s = Session::new(c.clone(), t0);
    assert_eq!(s.poll_timeout(), Some(at(5)));
    s.handle_timeout(at(4));
    assert!(!s.is_closed());
    s.handle_timeout(at(5));
    let greeting = closed(&mut s);
    assert_eq!(greeting, Some(Some(SessionError::GreetingTimeout)));
    assert!(
        greeting.unwrap().unwrap().to_string().contains("greeting"),
        "a greeting timeout says so"
    );
    // EHLO (command), DATA (data), final dot (data_end)
    let mut s = Session::new(c.clone(), t0);
    s.send(msg(1, &["a@example.com"]));
    s.handle_input(b"220 hi\r\n", at(1));
    let mut out = Vec::new();
    s.poll_transmit(at(1), &mut out);
    assert_eq!(s.poll_timeout(), Some(at(8)));
    s.handle_input(EHLO_PIPE.1.as_bytes(), at(2));
    s.poll_transmit(at(2), &mut out);
    assert_eq!(s.poll_timeout(), Some(at(9)), "MAIL is first in flight");
    s.handle_input(b"250 ok\r\n250 ok\r\n", at(3));
    assert_eq!(s.poll_timeout(), Some(at(12)), "DATA waits for 354");
    s.handle_input(b"354 go\r\n", at(3));
    s.flush();
    s.poll_transmit(at(4), &mut out);
    assert_eq!(s.poll_timeout(), Some(at(15)), "final dot");
    s.handle_timeout(at(15));
    assert_eq!(
        closed(&mut s),
        Some(Some(SessionError::Timeout(Verb::Body)))
    );
}

#[test]
fn starttls_injection_is_refused() {
    let c = Config {
        tls: TlsPolicy::Required,
        ..Config::default()
    };
    let now = Instant::now();
    let mut s = Session::new(c, now);
    s.handle_input(b"220 hi\r\n", now);
    let mut out = Vec::new();
    s.poll_transmit(now, &mut out);
    s.handle_input(b"250-mx\r\n250 STARTTLS\r\n", now);
    out.clear();
    s.poll_transmit(now, &mut out);
    assert_eq!(out, b"STARTTLS\r\n");
    s.handle_input(b"220 go ahead\r\n250-evil\r\n", now);
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        events.contains(&Event::Closed(Some(SessionError::Protocol(
            ProtocolError::StartTlsInjection
        )))),
        "{events:?}"
    );
}

#[test]
fn starttls_then_ehlo_again_with_fresh_capabilities() {
    let c = Config {
        tls: TlsPolicy::Required,
        ..Config::default()
    };
    let now = Instant::now();
    let mut s = Session::new(c, now);
    let mut out = Vec::new();
    s.handle_input(b"220 hi\r\n", now);
    s.poll_transmit(now, &mut out);
    s.handle_input(b"250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n", now);
    s.poll_transmit(now, &mut out);
    s.handle_input(b"220 go ahead\r\n", now);
    assert!(s.wants_tls());
    let mut nothing = Vec::new();
    assert_eq!(
        s.poll_transmit(now, &mut nothing),
        0,
        "nothing goes out before the handshake"
    );
    s.handle_tls_established(now);
    assert_eq!(s.capabilities(), &Capabilities::default());
    s.poll_transmit(now, &mut out);
    s.handle_input(b"250-mx\r\n250 PIPELINING\r\n", now);
    assert!(s.is_ready() && s.tls_active() && s.pipelining());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "EHLO localhost\r\nSTARTTLS\r\nEHLO localhost\r\n"
    );
}

#[test]
fn starttls_required_but_not_offered_sends_no_mail() {
    let c = Config {
        tls: TlsPolicy::Required,
        ..Config::default()
    };
    let r = run(
        c,
        &[msg(1, &["a@example.com"])],
        &[GREET, EHLO_PIPE, ("QUIT\r\n", "221 bye\r\n")],
    );
    assert!(matches!(
        r.closed(),
        Some(Some(SessionError::TlsRequired(_)))
    ));
    assert_eq!(r.outcomes()[0].2, Delivery::Deferred);
}

fn creds() -> Credentials {
    Credentials {
        username: "user".into(),
        password: Secret::new("s3cret pass"),
    }
}

#[test]
fn auth_plain_exact_and_redacted() {
    let c = Config {
        auth: Some(creds()),
        allow_plaintext_auth: true,
        transcript: true,
        ..cfg()
    };
    let token = "AHVzZXIAczNjcmV0IHBhc3M="; // \0user\0s3cret pass
    let r = run(
        c,
        &[],
        &[
            GREET,
            ("EHLO localhost\r\n", "250-mx\r\n250 AUTH PLAIN LOGIN\r\n"),
            (
                &format!("AUTH PLAIN {token}\r\n"),
                "235 2.7.0 Authentication successful\r\n",
            ),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    let shown: Vec<_> = r
        .events
        .iter()
        .filter_map(|e| {
            if let Event::Exchange(x) = e {
                Some(x.command.clone())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(shown, ["", "EHLO localhost", "AUTH PLAIN ****", "QUIT"]);
    assert!(!format!("{:?}", r.events).contains("s3cret"));
    assert!(!format!("{:?}", creds()).contains("s3cret"));
}

#[test]
fn auth_login_exact_and_redacted() {
    let c = Config {
        auth: Some(creds()),
        allow_plaintext_auth: true,
        transcript: true,
        ..cfg()
    };
    let r = run(
        c,
        &[],
        &[
            GREET,
            ("EHLO localhost\r\n", "250-mx\r\n250 AUTH LOGIN\r\n"),
            ("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n"),
            ("dXNlcg==\r\n", "334 UGFzc3dvcmQ6\r\n"),
            ("czNjcmV0IHBhc3M=\r\n", "235 ok\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert!(!format!("{:?}", r.events).contains("czNjcmV0"));
    assert_eq!(r.closed(), Some(&None));
}

#[test]
fn auth_refused_over_plaintext_and_failure_reported() {
    let c = Config {
        auth: Some(creds()),
        ..cfg()
    };
    let r = run(
        c,
        &[],
        &[
            GREET,
            ("EHLO localhost\r\n", "250-mx\r\n250 AUTH PLAIN\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_eq!(r.closed(), Some(&Some(SessionError::AuthOverPlaintext)));
    let c = Config {
        auth: Some(creds()),
        allow_plaintext_auth: true,
        ..cfg()
    };
    let r = run(
        c,
        &[],
        &[
            GREET,
            ("EHLO localhost\r\n", "250-mx\r\n250 AUTH PLAIN\r\n"),
            (
                "AUTH PLAIN AHVzZXIAczNjcmV0IHBhc3M=\r\n",
                "535 5.7.8 bad\r\n",
            ),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert!(matches!(
        r.closed(),
        Some(Some(SessionError::AuthFailed(_)))
    ));
    assert!(!format!("{:?}", r.closed()).contains("s3cret"));
}
