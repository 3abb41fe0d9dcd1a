//! `pipemail send` with MIME composition against a private Postfix smtpd delivering to a
//! Maildir (issue 12): HTML + text + attachment, Cc and Bcc in the envelope, 8-bit text.
//! Skipped loudly when Postfix is not installed (a failure with PIPEMAIL_REQUIRE_INTEROP=1).

mod support;
mod util;

#[path = "support/mime.rs"]
mod mime_support;

use std::time::Duration;

use mime_support::{binary, check_report_deliveries};
use pipemail::report::Status;
use support::PostfixSmtpd;
use util::{Fx, expect_code, list_args, read_report, run};

#[test]
fn postfix_delivers_html_text_attachment_to_row_cc_and_bcc_once_each() {
    let Some(server) = PostfixSmtpd::start() else {
        return;
    };
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nann@example.net,Ann\nbob@example.org,Bøb\n",
    );
    fx.write(
        "t.eml",
        "From: Team <team@example.org>\nTo: {{ name }} <{{ email }}>\nCc: cc@example.net\nBcc: bcc@example.org\nSubject: Report for {{ email }}\n\nGrüße {{ name }}!\n",
    );
    fx.write("t.html", "<p>Grüße <b>{{ name }}</b>!</p>\n");
    let attachment = binary(20 * 1024);
    fx.write("data.bin", &attachment);
    let mut c = fx.send_to_mta(server.addr());
    c.args(list_args("list.csv", "t.eml", "r.csv"))
        .args(["--html", "t.html", "--attach", "data.bin"]);
    let out = run(c);
    expect_code(&out, 0);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r.status, Status::Sent, "{r:?}");
        assert!(
            r.response.contains("extra recipients: cc@example.net=250"),
            "{r:?}"
        );
    }

    // 2 messages × (row + Cc + Bcc): Postfix's virtual delivery writes one file each.
    let delivered = server.wait_for_deliveries(6, Duration::from_secs(60));
    check_report_deliveries(
        &delivered,
        &[("ann@example.net", "Ann"), ("bob@example.org", "Bøb")],
        ("cc@example.net", "bcc@example.org"),
        |name| format!("<p>Grüße <b>{name}</b>!</p>\n"),
        &attachment,
    );
}
