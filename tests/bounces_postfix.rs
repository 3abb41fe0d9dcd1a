//! `pipemail bounces` on bounces that a real Postfix writes (issue 13): a private instance
//! (`scripts/postfix-smtpd.sh ... bounces`) accepts every recipient of a campaign, then
//! bounces the `bounceme*` ones with its `error` transport (5.1.1) and defers the `delayme*`
//! ones with a delay notice; its DSNs go to the campaign's envelope sender and land in the
//! instance's Maildir, which `pipemail bounces` reads. Skipped loudly when Postfix is not
//! installed (a failure with PIPEMAIL_REQUIRE_INTEROP=1).

mod support;
mod util;

use std::path::Path;
use std::time::Duration;

use pipemail::report::Status;
use support::PostfixSmtpd;
use util::{Fx, expect_code, list_args, read_report, run};

/// Bounded wait for Postfix's DSNs; they normally arrive within a second.
const DSN_WAIT: Duration = Duration::from_secs(60);

/// Postfix's diagnostic for a `bounceme*` recipient, as `pipemail bounces` records it.
const BOUNCEME_DIAGNOSTIC: &str = "Mailbox unavailable (test: bounceme)";

const TEMPLATE: &str = "From: News <news@example.org>\n\
To: {{ name }} <{{ email }}>\n\
Subject: News for {{ name }}\n\
\n\
Hello {{ name }}.\n";

/// A bounces instance of Postfix (`None`: skipped) and a fixture with `list` and
/// [`TEMPLATE`]; the `pipemail send` command for them, reporting to `r.csv`.
fn start_campaign(list: &str) -> Option<(PostfixSmtpd, Fx, assert_cmd::Command)> {
    let server = PostfixSmtpd::start_bounces()?;
    let fx = Fx::new();
    fx.write("list.csv", list);
    fx.write("t.eml", TEMPLATE);
    let mut c = fx.send_to_mta(server.addr());
    c.args(list_args("list.csv", "t.eml", "r.csv"));
    Some((server, fx, c))
}

/// A CSV report as header + records.
fn read_csv(path: &Path) -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = r.headers().unwrap().clone();
    let rows = r.records().map(Result::unwrap).collect();
    (header, rows)
}

fn col(header: &csv::StringRecord, name: &str) -> usize {
    header.iter().position(|h| h == name).unwrap()
}

/// `src` with its `message_id` column emptied, written to `dst`: the bounces then match
/// only by ENVID or VERP address.
fn without_message_ids(src: &Path, dst: &Path) {
    let (header, rows) = read_csv(src);
    let mid = col(&header, "message_id");
    let mut w = csv::Writer::from_path(dst).unwrap();
    w.write_record(&header).unwrap();
    for r in rows {
        let rec: csv::StringRecord = r
            .iter()
            .enumerate()
            .map(|(j, v)| if j == mid { "" } else { v })
            .collect();
        w.write_record(&rec).unwrap();
    }
    w.flush().unwrap();
}

/// Runs `pipemail bounces --report REPORT --maildir MAILDIR --output OUT`; returns stderr.
fn bounces(fx: &Fx, report: &Path, maildir: &Path, out: &str) -> String {
    let mut c = fx.cmd();
    c.arg("bounces")
        .arg("--report")
        .arg(report)
        .arg("--maildir")
        .arg(maildir)
        .args(["--output", out]);
    let o = run(c);
    expect_code(&o, 0);
    assert!(o.stdout.is_empty(), "{o}");
    o.stderr
}

/// Checks `out` against `before`: exactly the rows in `bounced` became `bounced` with
/// Postfix's 5.1.1 and diagnostic, every other row is byte for byte as it was.
fn check_bounced(before: &Path, out: &Path, bounced: &[u64]) {
    let (h0, rows0) = read_csv(before);
    let (h1, rows1) = read_csv(out);
    assert_eq!(h0, h1);
    assert_eq!(rows0.len(), rows1.len());
    let (row, status, code, resp) = (
        col(&h1, "row"),
        col(&h1, "status"),
        col(&h1, "enhanced_code"),
        col(&h1, "response"),
    );
    for (a, b) in rows0.iter().zip(&rows1) {
        let n: u64 = b[row].parse().unwrap();
        if bounced.contains(&n) {
            assert_eq!(&a[status], "sent", "row {n} was sent before: {a:?}");
            assert_eq!(&b[status], "bounced", "row {n}: {b:?}");
            assert_eq!(&b[code], "5.1.1", "row {n}: {b:?}");
            assert_eq!(&b[resp], BOUNCEME_DIAGNOSTIC, "row {n}: {b:?}");
            for (j, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                if ![status, code, resp].contains(&j) {
                    assert_eq!(x, y, "row {n}, column {}", &h1[j]);
                }
            }
        } else {
            assert_eq!(a, b, "row {n} changed");
        }
    }
}

/// Waits (bounded) for Postfix's 5 files (deliveries, bounces, delay notices) and checks
/// its log names `non_delivery` bounces; returns the files and the log.
fn wait_for_dsns(server: &PostfixSmtpd, non_delivery: usize) -> (Vec<Vec<u8>>, String) {
    let files = server.wait_for_messages(5, DSN_WAIT);
    assert_eq!(files.len(), 5, "{}", server.maillog());
    let log = server.maillog();
    assert_eq!(
        log.matches("sender non-delivery notification").count(),
        non_delivery,
        "{log}"
    );
    (files, log)
}

/// Runs `pipemail bounces` on `r.csv` and the instance's Maildir (its summary must be
/// `expected`, with no unmatched bounce), then on a copy of `r.csv` without Message-IDs,
/// where the same bounces match by ENVID or VERP address: each time exactly the rows
/// `bounced` become `bounced`.
fn check_bounces(fx: &Fx, server: &PostfixSmtpd, expected: &str, bounced: &[u64]) {
    let maildir = server.maildir();
    let err = bounces(fx, &fx.path("r.csv"), &maildir, "b.csv");
    assert_eq!(summary(&err), expected, "{err}");
    assert!(!err.contains("unmatched bounce"), "{err}");
    check_bounced(&fx.path("r.csv"), &fx.path("b.csv"), bounced);

    without_message_ids(&fx.path("r.csv"), &fx.path("r-noid.csv"));
    let err = bounces(fx, &fx.path("r-noid.csv"), &maildir, "b-noid.csv");
    let n = bounced.len();
    let matched = format!("5 messages: {n} bounces matched ({n} rows bounced), 0 unmatched");
    assert!(summary(&err).starts_with(&matched), "{err}");
    check_bounced(&fx.path("r-noid.csv"), &fx.path("b-noid.csv"), bounced);
}

/// The summary line `pipemail bounces` prints last on stderr, without its `pipemail: `.
fn summary(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("pipemail: ")
                .filter(|l| l.contains(" messages: "))
        })
        .unwrap_or_else(|| panic!("no summary line:\n{stderr}"))
}

#[test]
fn postfix_dsns_with_envid_mark_exactly_the_bounced_rows() {
    let Some((server, fx, mut c)) = start_campaign(
        "email,name\n\
         ann@example.net,Ann\n\
         bounceme-bob@example.net,Bob\n\
         reject-carol@example.org,Carol\n\
         bounceme.dave@example.org,Dave\n\
         delayme-erin@example.net,Erin\n\
         frank@example.org,Frank\n",
    ) else {
        return;
    };
    c.args(["--from", "bounces@example.org"]).args([
        "--dsn-notify",
        "failure,delay",
        "--dsn-ret",
        "hdrs",
    ]);
    let out = run(c);
    // Row 3 is refused at RCPT: exit 1 (some rows failed).
    expect_code(&out, 1);
    assert!(!out.stderr.contains("does not advertise DSN"), "{out}");
    let rows = read_report(&fx.path("r.csv"));
    let statuses: Vec<Status> = rows.iter().map(|r| r.status).collect();
    use Status::{Failed, Sent};
    assert_eq!(statuses, [Sent, Sent, Failed, Sent, Sent, Sent], "{rows:?}");
    assert!(rows.iter().all(|r| !r.message_id.is_empty()), "{rows:?}");

    // Delivered: rows 1 and 6; Postfix's own mail: bounces for rows 2 and 4 and a delay
    // notice for row 5. Nothing else is expected, so waiting for 5 files is exact.
    let (files, log) = wait_for_dsns(&server, 2);
    assert_eq!(log.matches("sender delay notification").count(), 1, "{log}");
    // RET=HDRS: the bounces return headers only, with the ENVID pipemail sent.
    let dsns: Vec<String> = files
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .filter(|t| t.contains("Content-Type: multipart/report"))
        .collect();
    assert_eq!(dsns.len(), 3);
    for t in &dsns {
        assert!(t.contains("text/rfc822-headers"), "{t}");
        assert!(t.contains("Original-Envelope-Id: "), "{t}");
    }

    // Without Message-IDs in the report the same rows match by Original-Envelope-Id.
    check_bounces(
        &fx,
        &server,
        "5 messages: 2 bounces matched (2 rows bounced), 0 unmatched, 1 delay/other notices, 2 not bounces",
        &[2, 4],
    );
    assert_eq!(server.messages().len(), 5, "{}", server.maillog());
}

#[test]
fn postfix_bounces_to_verp_senders_mark_exactly_the_bounced_rows() {
    let Some((server, fx, mut c)) = start_campaign(
        "email,name\n\
         bounceme1@example.org,One\n\
         two@example.net,Two\n\
         three@example.org,Three\n\
         bounceme-4@example.net,Four\n\
         bounceme5@example.net,Five\n",
    ) else {
        return;
    };
    c.args(["--from", "bounces+{{ row }}@example.org"]);
    let out = run(c);
    expect_code(&out, 0);
    let rows = read_report(&fx.path("r.csv"));
    assert!(rows.iter().all(|r| r.status == Status::Sent), "{rows:?}");

    // Delivered: rows 2 and 3; bounces for rows 1, 4 and 5, each to its own return path.
    let (files, _) = wait_for_dsns(&server, 3);
    assert!(
        files
            .iter()
            .all(|f| !String::from_utf8_lossy(f).contains("Original-Envelope-Id")),
        "no ENVID without --dsn-ret"
    );
    for n in [1, 4, 5] {
        let to = format!("Delivered-To: bounces+{n}@example.org\n");
        assert_eq!(
            files
                .iter()
                .filter(|f| String::from_utf8_lossy(f).contains(&to))
                .count(),
            1,
            "{to}"
        );
    }

    // No DSN was asked for, so no ENVID: without Message-IDs the VERP address matches.
    check_bounces(
        &fx,
        &server,
        "5 messages: 3 bounces matched (3 rows bounced), 0 unmatched, 0 delay/other notices, 2 not bounces",
        &[1, 4, 5],
    );
}
