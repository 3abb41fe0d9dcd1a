//! `pipemail bounces` and the bounce parser, on the fixtures in `tests/fixtures/bounces/`.

use std::path::{Path, PathBuf};

use pipemail::bounces::{self, Action, Form, Mailbox, Options, Report};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bounces")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

const MESSAGES: [&str; 8] = [
    "postfix.eml",
    "gmail.eml",
    "exim.eml",
    "microsoft.eml",
    "envid-only.eml",
    "delayed.eml",
    "unmatched.eml",
    "not-a-bounce.eml",
];

fn one(name: &str) -> bounces::Bounce {
    let mut v = bounces::parse::parse(&fixture(name));
    assert_eq!(v.len(), 1, "{name}: {v:?}");
    v.remove(0)
}

#[test]
fn postfix_dsn() {
    let b = one("postfix.eml");
    assert_eq!(b.form, Form::Dsn);
    assert_eq!(b.action, Action::Failed);
    assert_eq!(b.recipient.as_deref(), Some("alice@example.org"));
    assert_eq!(b.status.as_deref(), Some("5.1.1"));
    assert_eq!(
        b.diagnostic.as_deref(),
        Some(
            "550 5.1.1 <alice@example.org>: Recipient address rejected: User unknown in virtual mailbox table"
        )
    );
    assert_eq!(b.envid.as_deref(), Some("spring-2026.1"));
    assert_eq!(b.verp_row, Some(1));
    assert_eq!(
        b.message_id.as_deref(),
        Some("1.spring-2026@news.example.com")
    );
}

#[test]
fn gmail_dsn_with_returned_message() {
    let b = one("gmail.eml");
    assert_eq!(b.form, Form::Dsn);
    assert_eq!(b.recipient.as_deref(), Some("bob@example.net"));
    assert_eq!(b.status.as_deref(), Some("5.1.1"));
    assert!(
        b.diagnostic
            .as_deref()
            .unwrap()
            .starts_with("550-5.1.1 The email account")
    );
    assert_eq!(b.envid, None);
    assert_eq!(b.verp_row, None);
    assert_eq!(
        b.message_id.as_deref(),
        Some("2.spring-2026@news.example.com")
    );
}

#[test]
fn exim_text_bounce() {
    let b = one("exim.eml");
    assert_eq!(b.form, Form::Text);
    assert_eq!(b.action, Action::Failed);
    assert_eq!(b.recipient.as_deref(), Some("carol@example.com"));
    assert_eq!(b.status.as_deref(), Some("5.2.1"));
    assert_eq!(
        b.diagnostic.as_deref(),
        Some("550 5.2.1 The email account that you tried to reach is disabled")
    );
    assert_eq!(b.verp_row, Some(3));
    assert_eq!(
        b.message_id.as_deref(),
        Some("3.spring-2026@news.example.com")
    );
}

#[test]
fn microsoft_text_bounce() {
    let b = one("microsoft.eml");
    assert_eq!(b.form, Form::Text);
    assert_eq!(b.recipient.as_deref(), Some("dave@example.co.uk"));
    assert_eq!(b.status.as_deref(), Some("5.1.10"));
    assert_eq!(
        b.diagnostic.as_deref(),
        Some(
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
        )
    );
    assert_eq!(
        b.message_id.as_deref(),
        Some("4.spring-2026@news.example.com")
    );
}

#[test]
fn delay_unmatched_and_ordinary_mail() {
    let d = one("delayed.eml");
    assert_eq!(d.action, Action::Delayed);
    assert_eq!(d.status.as_deref(), Some("4.4.1"));
    let u = one("unmatched.eml");
    assert_eq!(u.envid.as_deref(), Some("autumn-2025.2"));
    assert_eq!(u.verp_row, Some(2));
    assert!(bounces::parse::parse(&fixture("not-a-bounce.eml")).is_empty());
}

fn expected_rows(out: &str) {
    let mut r = csv::Reader::from_reader(out.as_bytes());
    let header = r.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (status, code, resp) = (col("status"), col("enhanced_code"), col("response"));
    let got: Vec<(&str, &str)> = rows.iter().map(|x| (&x[status], &x[code])).collect();
    assert_eq!(
        got,
        [
            ("bounced", "5.1.1"),
            ("bounced", "5.1.1"),
            ("bounced", "5.2.1"),
            ("bounced", "5.1.10"),
            ("bounced", "5.1.1"),
            ("failed", "5.1.1"),
        ]
    );
    assert!(rows[2][resp].contains("disabled"));
    assert!(rows[4][resp].contains("User unknown"));
    // Untouched columns stay as they were.
    assert_eq!(&rows[0][col("smtp_code")], "250");
    assert_eq!(
        &rows[5][resp],
        "5.1.1 <frank@example.net>: Recipient address rejected: User unknown"
    );
}

fn maildir(dir: &Path) -> PathBuf {
    let md = dir.join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    for (i, name) in MESSAGES.iter().enumerate() {
        let sub = if i % 2 == 0 { "new" } else { "cur" };
        let file = format!("17645841{i:02}.M1P1.host:2,S");
        std::fs::write(md.join(sub).join(file), fixture(name)).unwrap();
    }
    md
}

fn mbox(dir: &Path) -> PathBuf {
    let path = dir.join("bounces.mbox");
    let mut all = Vec::new();
    for name in MESSAGES {
        all.extend_from_slice(b"From MAILER-DAEMON Tue Dec  1 10:15:02 2026\n");
        all.extend_from_slice(&fixture(name));
        all.extend_from_slice(b"\n");
    }
    std::fs::write(&path, all).unwrap();
    path
}

#[test]
fn library_run_counts() {
    let dir = tempfile::tempdir().unwrap();
    for mailbox in [
        Mailbox::Maildir(maildir(dir.path())),
        Mailbox::Mbox(mbox(dir.path())),
    ] {
        let opts = Options {
            report: fixtures().join("report.csv"),
            mailbox,
            output: None,
        };
        let mut out = Vec::new();
        let s = bounces::run(&opts, &mut out).unwrap();
        assert_eq!(s.messages, 8);
        assert_eq!(s.matched, 5);
        assert_eq!(s.rows_bounced, 5);
        assert_eq!(s.notices, 1);
        assert_eq!(s.not_bounces, 1);
        assert_eq!(s.unmatched.len(), 1);
        assert_eq!(s.unmatched[0].recipient.as_deref(), Some("zed@example.com"));
        expected_rows(&String::from_utf8(out).unwrap());
    }
}

#[test]
fn json_reports_keep_their_format() {
    let csv_text = std::fs::read_to_string(fixtures().join("report.csv")).unwrap();
    let report = Report::parse(&csv_text).unwrap();
    let mut rows = Vec::new();
    for i in 0..report.len() {
        let k = report.key(i);
        rows.push(format!(
            r#"{{"row":{},"email":"{}","status":"sent","smtp_code":250,"enhanced_code":"2.0.0","response":"ok","stage":null,"attempts":1,"message_id":"{}","finished_at":"2026-12-01T10:15:00.000Z"}}"#,
            k.row, k.email, k.message_id
        ));
    }
    let messages: Vec<(String, Vec<u8>)> = MESSAGES
        .iter()
        .map(|n| (n.to_string(), fixture(n)))
        .collect();
    for (text, starts) in [
        (rows.join("\n") + "\n", "{\"row\":1,"),
        (format!("[\n{}\n]\n", rows.join(",\n")), "[\n{\"row\":1,"),
    ] {
        let mut report = Report::parse(&text).unwrap();
        let s = bounces::apply(&mut report, messages.iter().cloned().map(Ok)).unwrap();
        assert_eq!(s.rows_bounced, 5);
        let mut out = Vec::new();
        report.write(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with(starts), "{out}");
        assert_eq!(out.matches("\"status\":\"bounced\"").count(), 5, "{out}");
        assert!(out.contains("\"enhanced_code\":\"5.1.10\""));
        assert_eq!(Report::parse(&out).unwrap().len(), 6);
    }
}

fn pipemail() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("pipemail").unwrap();
    c.env_clear();
    c
}

#[test]
fn cli_writes_stdout_or_file_and_never_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.csv");
    std::fs::copy(fixtures().join("report.csv"), &report).unwrap();
    let before = std::fs::read(&report).unwrap();
    let md = maildir(dir.path());
    let out = pipemail()
        .arg("bounces")
        .arg("--report")
        .arg(&report)
        .arg("--maildir")
        .arg(&md)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expected_rows(&String::from_utf8(out.stdout).unwrap());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unmatched bounce in"), "{err}");
    assert!(err.contains("zed@example.com 5.1.1"), "{err}");
    assert!(
        err.contains("8 messages: 5 bounces matched (5 rows bounced), 1 unmatched"),
        "{err}"
    );

    let result = dir.path().join("out.csv");
    let mb = mbox(dir.path());
    pipemail()
        .args(["bounces", "--report"])
        .arg(&report)
        .arg("--mbox")
        .arg(&mb)
        .arg("--output")
        .arg(&result)
        .assert()
        .success()
        .stdout("");
    expected_rows(&std::fs::read_to_string(&result).unwrap());
    assert_eq!(std::fs::read(&report).unwrap(), before);

    // --output naming the input (even through a symlink) is refused: 64.
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink(&report, &link).unwrap();
    for target in [&report, &link] {
        pipemail()
            .args(["bounces", "--report"])
            .arg(&report)
            .arg("--mbox")
            .arg(&mb)
            .arg("--output")
            .arg(target)
            .assert()
            .code(64);
    }
    assert_eq!(std::fs::read(&report).unwrap(), before);
}

#[test]
fn cli_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let report = fixtures().join("report.csv");
    let mb = mbox(dir.path());
    // Usage: neither or both mailboxes.
    pipemail()
        .arg("bounces")
        .arg("--report")
        .arg(&report)
        .assert()
        .code(64);
    pipemail()
        .arg("bounces")
        .arg("--report")
        .arg(&report)
        .arg("--mbox")
        .arg(&mb)
        .arg("--maildir")
        .arg(dir.path())
        .assert()
        .code(64);
    // Missing input: 66.
    pipemail()
        .args(["bounces", "--report", "/nonexistent/r.csv", "--mbox"])
        .arg(&mb)
        .assert()
        .code(66);
    pipemail()
        .arg("bounces")
        .arg("--report")
        .arg(&report)
        .args(["--mbox", "/nonexistent/m"])
        .assert()
        .code(66);
    pipemail()
        .arg("bounces")
        .arg("--report")
        .arg(&report)
        .arg("--maildir")
        .arg(dir.path().join("not-a-maildir"))
        .assert()
        .code(66);
    // Not a report: 65.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "name,address\nx,y\n").unwrap();
    pipemail()
        .arg("bounces")
        .arg("--report")
        .arg(&bad)
        .arg("--mbox")
        .arg(&mb)
        .assert()
        .code(65);
}

#[test]
fn truncated_and_mangled_bounces_do_not_panic() {
    for name in MESSAGES {
        let raw = fixture(name);
        for cut in (0..raw.len()).step_by(37) {
            let _ = bounces::parse::parse(&raw[..cut]);
            let mut m = raw.clone();
            m[cut] ^= 0x80;
            let _ = bounces::parse::parse(&m);
        }
    }
}
