//! `pipemail send` with MIME composition against a private Postfix smtpd delivering to a
//! Maildir (issue 12): HTML + text + attachment, Cc and Bcc in the envelope, 8-bit text.
//! Skipped loudly when Postfix is not installed (a failure with PIPEMAIL_REQUIRE_INTEROP=1).

mod support;
mod util;

#[path = "support/mime.rs"]
mod mime_support;

use std::collections::HashMap;
use std::time::Duration;

use mime_support::{binary, header, no_defects, parse, payload, text_of, types};
use pipemail::report::Status;
use support::{PostfixSmtpd, strip_delivery_headers};
use util::{Fx, expect_code, read_report, run};

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
    let mut c = fx.cmd();
    c.args([
        "send",
        "--host",
        &server.addr().to_string(),
        "--tls",
        "none",
    ])
    .args(["--helo", "client.test", "--quiet", "--timeout", "60s"])
    .args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--html",
        "t.html",
    ])
    .args(["--attach", "data.bin", "--report", "r.csv"]);
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
    let delivered = server.wait_for_messages(6, Duration::from_secs(60));
    assert_eq!(delivered.len(), 6, "{}", server.maillog());
    let mut got: HashMap<(String, String), usize> = HashMap::new();
    for raw in &delivered {
        let text = String::from_utf8_lossy(raw);
        let to = text
            .lines()
            .find_map(|l| l.strip_prefix("Delivered-To: "))
            .expect("Delivered-To")
            .trim()
            .to_owned();
        let msg = strip_delivery_headers(raw);
        let v = parse(msg);
        no_defects(&v);
        assert!(header(&v, "Bcc").is_empty());
        assert!(
            !String::from_utf8_lossy(msg).contains("bcc@example.org"),
            "Bcc leaked into the message"
        );
        let subject = header(&v, "Subject")[0].to_owned();
        let row_addr = subject.trim_start_matches("Report for ").to_owned();
        let name = if row_addr == "ann@example.net" {
            "Ann"
        } else {
            "Bøb"
        };
        let root = &v["root"];
        assert_eq!(
            types(root),
            ["multipart/alternative", "application/octet-stream"]
        );
        let alt = &root["parts"][0];
        assert_eq!(text_of(&alt["parts"][0]), format!("Grüße {name}!\n"));
        assert_eq!(
            text_of(&alt["parts"][1]),
            format!("<p>Grüße <b>{name}</b>!</p>\n")
        );
        assert_eq!(payload(&root["parts"][1]), attachment);
        *got.entry((to, row_addr)).or_default() += 1;
    }
    for row in ["ann@example.net", "bob@example.org"] {
        for to in [row, "cc@example.net", "bcc@example.org"] {
            assert_eq!(
                got.get(&(to.to_owned(), row.to_owned())),
                Some(&1),
                "{to} got {row}'s message once: {got:?}"
            );
        }
    }
}
