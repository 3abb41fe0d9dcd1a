//! AUTH XOAUTH2 and OAUTHBEARER (RFC 7628): exact bytes, redacted transcripts, the error
//! challenge, and a mechanism the server does not offer.

use super::*;

const TOKEN: &str = "ya29.s3cret-token";

fn oauth(mech: AuthMechanism) -> Config {
    Config {
        auth: Some(Credentials {
            username: "user@example.com".into(),
            password: Secret::new(TOKEN),
        }),
        auth_mechanism: Some(mech),
        allow_plaintext_auth: true,
        transcript: true,
        ..cfg()
    }
}

fn shown(r: &Run) -> Vec<String> {
    r.events
        .iter()
        .filter_map(|e| match e {
            Event::Exchange(x) => Some(x.command.clone()),
            _ => None,
        })
        .collect()
}

/// base64("user=user@example.com\x01auth=Bearer ya29.s3cret-token\x01\x01")
const XOAUTH2: &str = "dXNlcj11c2VyQGV4YW1wbGUuY29tAWF1dGg9QmVhcmVyIHlhMjkuczNjcmV0LXRva2VuAQE=";
/// base64("n,a=user@example.com,\x01auth=Bearer ya29.s3cret-token\x01\x01")
const BEARER: &str = "bixhPXVzZXJAZXhhbXBsZS5jb20sAWF1dGg9QmVhcmVyIHlhMjkuczNjcmV0LXRva2VuAQE=";
const EHLO_OAUTH: &str = "250-mx\r\n250 AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER\r\n";

#[test]
fn xoauth2_success_exact_and_redacted() {
    let r = run(
        oauth(AuthMechanism::XOAuth2),
        &[],
        &[
            GREET,
            ("EHLO localhost\r\n", EHLO_OAUTH),
            (
                &format!("AUTH XOAUTH2 {XOAUTH2}\r\n"),
                "235 2.7.0 Accepted\r\n",
            ),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_eq!(r.closed(), Some(&None));
    assert_eq!(
        shown(&r),
        ["", "EHLO localhost", "AUTH XOAUTH2 ****", "QUIT"]
    );
    let dbg = format!("{:?}", r.events);
    assert!(!dbg.contains("s3cret") && !dbg.contains(XOAUTH2));
}

#[test]
fn oauthbearer_success_exact() {
    let r = run(
        oauth(AuthMechanism::OAuthBearer),
        &[],
        &[
            GREET,
            ("EHLO localhost\r\n", EHLO_OAUTH),
            (
                &format!("AUTH OAUTHBEARER {BEARER}\r\n"),
                "235 2.7.0 Accepted\r\n",
            ),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_eq!(r.closed(), Some(&None));
    assert_eq!(
        shown(&r),
        ["", "EHLO localhost", "AUTH OAUTHBEARER ****", "QUIT"]
    );
}

/// RFC 7628 §3.2.2: a wrong token gets a 334 error challenge; the client answers `^A`
/// (OAUTHBEARER) or an empty line (XOAUTH2) and then reads the final 5xx.
#[test]
fn error_challenge_answered_then_auth_fails() {
    let challenge = "334 eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NoZW1lcyI6IkJlYXJlciJ9\r\n";
    for (mech, first, ack) in [
        (
            AuthMechanism::OAuthBearer,
            format!("AUTH OAUTHBEARER {BEARER}\r\n"),
            "AQ==\r\n",
        ),
        (
            AuthMechanism::XOAuth2,
            format!("AUTH XOAUTH2 {XOAUTH2}\r\n"),
            "\r\n",
        ),
    ] {
        let r = run(
            oauth(mech),
            &[msg(1, &["a@example.com"])],
            &[
                GREET,
                ("EHLO localhost\r\n", EHLO_OAUTH),
                (&first, challenge),
                (ack, "535 5.7.8 Authentication credentials invalid\r\n"),
                ("QUIT\r\n", "221 bye\r\n"),
            ],
        );
        match r.closed() {
            Some(Some(SessionError::AuthFailed(reply))) => assert_eq!(reply.code, 535),
            other => panic!("{mech}: {other:?}"),
        }
        assert_eq!(
            r.outcomes(),
            vec![(
                1,
                "a@example.com".into(),
                Delivery::Deferred,
                Stage::Auth,
                None
            )]
        );
        assert!(!format!("{:?}", r.events).contains("s3cret"));
    }
}

#[test]
fn mechanism_not_offered() {
    let r = run(
        oauth(AuthMechanism::OAuthBearer),
        &[],
        &[
            GREET,
            ("EHLO localhost\r\n", "250-mx\r\n250 AUTH PLAIN XOAUTH2\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    let err = r.closed().cloned().flatten().expect("an error");
    assert_eq!(
        err.to_string(),
        "server does not offer AUTH OAUTHBEARER (it offers PLAIN XOAUTH2)"
    );
    assert!(err.is_fatal());
    assert_eq!(err.stage(), Stage::Auth);
}

#[test]
fn explicit_login_even_when_plain_offered() {
    let c = Config {
        auth_mechanism: Some(AuthMechanism::Login),
        ..oauth(AuthMechanism::Login)
    };
    let r = run(
        c,
        &[],
        &[
            GREET,
            ("EHLO localhost\r\n", EHLO_OAUTH),
            ("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n"),
            ("dXNlckBleGFtcGxlLmNvbQ==\r\n", "334 UGFzc3dvcmQ6\r\n"),
            ("eWEyOS5zM2NyZXQtdG9rZW4=\r\n", "235 ok\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_eq!(r.closed(), Some(&None));
}
