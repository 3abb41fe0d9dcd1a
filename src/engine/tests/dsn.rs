//! DSN parameters (RFC 3461) carried per message: sent exactly when the server offers DSN.

use super::*;

fn dsn_msg(id: u64, to: &[&str]) -> Message {
    let mut m = msg(id, to);
    m.from = format!("bounces+{id}@example.com");
    m.dsn = Some(DsnParams {
        mail: format!("RET=HDRS ENVID=c1.{id}"),
        rcpt: to
            .iter()
            .map(|a| format!("NOTIFY=FAILURE,DELAY ORCPT=rfc822;{a}"))
            .collect(),
    });
    m
}

const EHLO_DSN: (&str, &str) = (
    "EHLO localhost\r\n",
    "250-mx.example\r\n250-PIPELINING\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n",
);

#[test]
fn dsn_parameters_ride_on_mail_and_each_rcpt_when_offered() {
    let body =
        |to: &str| format!("From: sender@example.com\r\n\r\nThis is a mail to {to}\r\n.\r\n");
    let group1 = "MAIL FROM:<bounces+1@example.com> RET=HDRS ENVID=c1.1\r\n\
                  RCPT TO:<a@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@example.net\r\n\
                  RCPT TO:<b@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@example.net\r\n\
                  DATA\r\n";
    let group2 = body("a@example.net b@example.net")
        + "MAIL FROM:<bounces+2@example.com> RET=HDRS ENVID=c1.2\r\n\
           RCPT TO:<c@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;c@example.net\r\n\
           DATA\r\n";
    let group3 = body("c@example.net") + "QUIT\r\n";
    let r = run(
        cfg(),
        &[
            dsn_msg(1, &["a@example.net", "b@example.net"]),
            dsn_msg(2, &["c@example.net"]),
        ],
        &[
            GREET,
            EHLO_DSN,
            (group1, "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
            (&group2, "250 queued\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
            (&group3, "250 queued\r\n221 bye\r\n"),
        ],
    );
    assert_eq!(r.outcomes().len(), 3);
    assert!(
        r.outcomes()
            .iter()
            .all(|o| o.2 == Delivery::Sent && o.3 == Stage::Body)
    );
}

#[test]
fn a_server_without_dsn_gets_none_of_the_parameters() {
    let r = run(
        cfg(),
        &[dsn_msg(7, &["a@example.net"])],
        &[
            GREET,
            EHLO_PIPE,
            (
                "MAIL FROM:<bounces+7@example.com>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n",
                "250 ok\r\n250 ok\r\n354 go\r\n",
            ),
            (
                "From: sender@example.com\r\n\r\nThis is a mail to a@example.net\r\n.\r\nQUIT\r\n",
                "250 queued\r\n221 bye\r\n",
            ),
        ],
    );
    assert_eq!(r.outcomes()[0].2, Delivery::Sent);
}

#[test]
fn lock_step_rcpts_carry_their_own_parameters() {
    let r = run(
        cfg(),
        &[dsn_msg(3, &["a@example.net", "b@example.net"])],
        &[
            GREET,
            ("EHLO localhost\r\n", "250-mx.example\r\n250 DSN\r\n"),
            (
                "MAIL FROM:<bounces+3@example.com> RET=HDRS ENVID=c1.3\r\n",
                "250 ok\r\n",
            ),
            (
                "RCPT TO:<a@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@example.net\r\n",
                "250 ok\r\n",
            ),
            (
                "RCPT TO:<b@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@example.net\r\n",
                "550 5.1.1 no\r\n",
            ),
            ("DATA\r\n", "354 go\r\n"),
            (
                "From: sender@example.com\r\n\r\nThis is a mail to a@example.net b@example.net\r\n.\r\n",
                "250 queued\r\n",
            ),
            ("QUIT\r\n", "221 bye\r\n"),
        ],
    );
    assert_eq!(r.outcomes().len(), 2);
}
