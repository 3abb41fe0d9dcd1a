//! Issue 16: untrusted bytes stay inert everywhere. A hostile server (banner, EHLO and replies
//! carrying CSI/OSC escape sequences, C1 controls, bidi overrides, invalid UTF-8 and
//! spreadsheet formulas) and hostile list values; assertions on the exact bytes of stderr, the
//! `-v` transcript, `check-server` (human and JSON) and the CSV and JSON reports; guarded cells
//! read back by `--resume`, `report merge` and `bounces`; planted symlinks at every side file
//! (`files.rs`); a property test over random reply bytes and list values (`props.rs`).

mod files;
mod hostile;
mod props;
#[path = "../util/mod.rs"]
mod util;

use std::sync::Arc;

use hostile::{Hostile, Script};
use util::{Fx, Out, expect_code, list_args, run};

/// The characters no output may carry to a terminal or a log (LF is the line separator).
fn is_dangerous(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(
            c,
            '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[track_caller]
fn assert_inert(what: &str, bytes: &[u8]) {
    let text = String::from_utf8(bytes.to_vec())
        .unwrap_or_else(|e| panic!("{what}: not UTF-8 ({e}): {bytes:?}"));
    if let Some(c) = text.chars().find(|&c| is_dangerous(c)) {
        panic!("{what}: carries {c:?}:\n{text}");
    }
}

/// The raw cells of a CSV report (header row first), exactly as written.
fn csv_cells(path: &std::path::Path) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .expect("open report");
    r.records()
        .map(|rec| rec.expect("record").iter().map(str::to_owned).collect())
        .collect()
}

#[track_caller]
fn assert_no_formula_cells(cells: &[Vec<String>]) {
    for row in cells {
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "formula-leading cell {cell:?} in {row:?}"
            );
        }
    }
}

const BANNER: &[u8] = b"220 fake.test \x1b]0;owned\x07 ESMTP\r\n";
const EHLO: &[u8] = b"250-fake.test \x1b[5m\xc2\x9b\r\n250-PIPELINING\r\n250 8BITMIME\r\n";

const FORMULA: &str = "=HYPERLINK(\"http://evil.example/\",\"click\")";

fn hostile_script() -> Script {
    Script {
        banner: BANNER.to_vec(),
        ehlo: EHLO.to_vec(),
        rcpt: Arc::new(|addr: &str| match addr {
            "ann@x.example" => format!("550 {FORMULA}\r\n").into_bytes(),
            "bob@x.example" => b"550 \x1b[2J\x1b[31mPWNED\x1b]0;title\x07 no\r\n".to_vec(),
            "-dee@x.example" => "450 4.2.0 \u{202e}desrever\u{2066}\r\n".as_bytes().to_vec(),
            _ => b"250 2.1.5 Ok\r\n".to_vec(),
        }),
        data: b"250 2.0.0 \xc2\x9b31m queued \xff\xfe\r\n".to_vec(),
    }
}

const LIST: &str =
    "email,name\nann@x.example,Ann\nbob@x.example,Bob\n=cy@x.example,Cy\n-dee@x.example,Dee\n";
const TEMPLATE: &str = "From: Sender <sender@example.org>\nTo: {{ email }}\nSubject: Hi {{ name }}\n\nHello {{ name }}.\n";

fn send(fx: &Fx, host: &str, report: &str, extra: &[&str]) -> Out {
    fx.write("list.csv", LIST);
    fx.write("t.eml", TEMPLATE);
    let mut c = fx.cmd();
    c.args([
        "send",
        "--host",
        host,
        "--helo",
        "client.test",
        "--tls",
        "none",
    ])
    .args([
        "--retries",
        "0",
        "--timeout",
        "30s",
        "--connect-timeout",
        "20s",
    ])
    .args(list_args("list.csv", "t.eml", report))
    .args(extra);
    run(c)
}

#[test]
fn hostile_replies_are_inert_on_stderr_in_the_transcript_and_in_the_csv_report() {
    let server = Hostile::start(hostile_script());
    let fx = Fx::new();
    let out = send(&fx, &server.host(), "r.csv", &["-v"]);
    expect_code(&out, 1);
    assert_inert("stderr", out.stderr.as_bytes());
    for line in [
        r"S: 220 fake.test \x1b]0;owned\x07 ESMTP",
        r"S: 250-fake.test \x1b[5m\u{9b}",
        r#"S: 550 =HYPERLINK("http://evil.example/","click")"#,
        r"S: 550 \x1b[2J\x1b[31mPWNED\x1b]0;title\x07 no",
        r"S: 450 4.2.0 \u{202e}desrever\u{2066}",
        "S: 250 2.0.0 \\u{9b}31m queued \u{fffd}\u{fffd}",
        "C: RCPT TO:<=cy@x.example>",
    ] {
        assert!(
            out.stderr.lines().any(|l| l == line),
            "no line {line:?} in\n{}",
            out.stderr
        );
    }

    let raw = std::fs::read(fx.path("r.csv")).expect("report");
    assert_inert("CSV report", &raw);
    let cells = csv_cells(&fx.path("r.csv"));
    assert_no_formula_cells(&cells);
    let by_row = |n: &str| {
        cells
            .iter()
            .find(|r| r[0] == n)
            .unwrap_or_else(|| panic!("no row {n}: {cells:?}"))
            .clone()
    };
    // row,email,status,smtp_code,enhanced_code,response,stage,...
    let r1 = by_row("1");
    assert_eq!(
        (r1[1].as_str(), r1[2].as_str(), r1[3].as_str()),
        ("ann@x.example", "failed", "550")
    );
    assert_eq!(r1[5], format!("'{FORMULA}"));
    let r2 = by_row("2");
    assert_eq!(r2[5], r"\x1b[2J\x1b[31mPWNED\x1b]0;title\x07 no");
    let r3 = by_row("3");
    assert_eq!((r3[1].as_str(), r3[2].as_str()), ("'=cy@x.example", "sent"));
    assert_eq!(r3[5], "\\u{9b}31m queued \u{fffd}\u{fffd}");
    let r4 = by_row("4");
    assert_eq!(
        (r4[1].as_str(), r4[2].as_str()),
        ("'-dee@x.example", "deferred")
    );
    assert_eq!(r4[5], r"\u{202e}desrever\u{2066}");

    // `report summary` reads the guarded cells back and prints them inert.
    let mut c = fx.cmd();
    c.args(["report", "summary", "r.csv"]);
    let summary = run(c);
    expect_code(&summary, 0);
    assert_inert("report summary stdout", &summary.stdout);
    assert_inert("report summary stderr", summary.stderr.as_bytes());
    assert!(!summary.stdout_text().contains("'="), "{summary}");
}

#[test]
fn hostile_replies_are_escaped_but_not_guarded_in_json_and_jsonl_reports() {
    let server = Hostile::start(hostile_script());
    for name in ["r.json", "r.jsonl"] {
        let fx = Fx::new();
        let out = send(&fx, &server.host(), name, &[]);
        expect_code(&out, 1);
        assert_inert("stderr", out.stderr.as_bytes());
        let raw = std::fs::read(fx.path(name)).expect("report");
        assert_inert(name, &raw);
        let text = String::from_utf8(raw).expect("utf-8");
        assert!(
            !text.contains(r"\u001b") && !text.contains(r"\u0007"),
            "{text}"
        );
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| l.trim().trim_matches(['[', ',', ']']).trim())
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("row"))
            .collect();
        let get = |n: u64| {
            rows.iter()
                .find(|r| r["row"] == n)
                .unwrap_or_else(|| panic!("no row {n} in {name}"))
        };
        assert_eq!(get(1)["response"], FORMULA, "JSON is not guarded");
        assert_eq!(
            get(2)["response"],
            r"\x1b[2J\x1b[31mPWNED\x1b]0;title\x07 no"
        );
        assert_eq!(get(3)["email"], "=cy@x.example");
        assert_eq!(get(4)["response"], r"\u{202e}desrever\u{2066}");
    }
}

#[test]
fn check_server_prints_a_hostile_banner_inert_in_both_forms() {
    let server = Hostile::start(hostile_script());
    let fx = Fx::new();
    for json in [false, true] {
        let mut c = fx.cmd();
        c.args(["check-server", "--host", &server.host(), "--tls", "none"])
            .args(["--helo", "client.test", "--probes", "1", "-v"])
            .args(["--timeout", "30s", "--connect-timeout", "20s"]);
        if json {
            c.arg("--json");
        }
        let out = run(c);
        expect_code(&out, 0);
        assert_inert("check-server stdout", &out.stdout);
        assert_inert("check-server stderr", out.stderr.as_bytes());
        let stdout = out.stdout_text();
        if json {
            assert!(!stdout.contains(r"\u001b") && !stdout.contains(r"\u0007"));
            let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
            let banner = v["banner"].as_str().expect("banner");
            assert!(
                banner.contains(r"fake.test \x1b]0;owned\x07 ESMTP"),
                "{banner}"
            );
        } else {
            let line = stdout
                .lines()
                .find(|l| l.starts_with("Banner"))
                .expect("banner line");
            assert!(line.contains(r"fake.test \x1b]0;owned\x07 ESMTP"), "{line}");
        }
    }
}

#[test]
fn a_hostile_refusal_is_one_inert_error_line() {
    let script = Script {
        banner: b"554 5.3.2 \x1b[2J\x1b[31mgo away\x1b]0;x\x07\r\n".to_vec(),
        ..hostile_script()
    };
    let server = Hostile::start(script);
    let fx = Fx::new();
    let mut c = fx.cmd();
    c.args(["check-server", "--host", &server.host(), "--tls", "none"])
        .args(["--helo", "client.test", "--probes", "1"])
        .args(["--timeout", "30s", "--connect-timeout", "20s"]);
    let out = run(c);
    expect_code(&out, 69);
    assert_inert("check-server stderr", out.stderr.as_bytes());
    assert!(
        out.stderr.starts_with("pipemail: error: "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(r"\x1b[2J\x1b[31mgo away"),
        "{}",
        out.stderr
    );

    let out = send(&fx, &server.host(), "r.csv", &[]);
    expect_code(&out, 69);
    assert_inert("send stderr", out.stderr.as_bytes());
    assert!(
        out.stderr.contains(r"\x1b[2J\x1b[31mgo away"),
        "{}",
        out.stderr
    );
    assert_inert(
        "CSV report",
        &std::fs::read(fx.path("r.csv")).expect("report"),
    );
}

#[test]
fn guarded_cells_round_trip_through_resume_merge_and_bounces() {
    let server = Hostile::start(hostile_script());
    let fx = Fx::new();
    expect_code(&send(&fx, &server.host(), "r.csv", &[]), 1);
    let first = csv_cells(&fx.path("r.csv"));

    // --resume: the `sent` row of `=cy@x.example` is recognised (guard removed when read)
    // and copied, guarded once, not twice.
    let out = send(&fx, &server.host(), "r2.csv", &["--resume", "r.csv"]);
    expect_code(&out, 1);
    let second = csv_cells(&fx.path("r2.csv"));
    assert_no_formula_cells(&second);
    let row3 = second.iter().find(|r| r[0] == "3").expect("row 3");
    let old3 = first.iter().find(|r| r[0] == "3").expect("row 3");
    assert_eq!(row3[1], "'=cy@x.example");
    assert_eq!(row3[2], "sent");
    assert_eq!(row3[5], old3[5], "copied from the earlier report");
    assert_eq!(row3[9], old3[9], "same finished_at: not sent again");

    // report merge: cells come out as they went in (guarded once).
    let mut c = fx.cmd();
    c.args(["report", "merge", "r2.csv", "-o", "m.csv"]);
    expect_code(&run(c), 0);
    let merged = csv_cells(&fx.path("m.csv"));
    assert_no_formula_cells(&merged);
    for row in &second[1..] {
        let m = merged.iter().find(|r| r[0] == row[0]).expect("merged row");
        assert_eq!(m[1], row[1], "email cell");
        assert_eq!(m[5], row[5], "response cell");
    }

    // bounces: a DSN for the guarded address matches its row; its hostile diagnostic is
    // written inert and guarded.
    let md = fx.path("md");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(md.join(sub)).expect("maildir");
    }
    let message_id = &row3[8];
    let dsn = format!(
        "From: MAILER-DAEMON@x.example\r\nTo: sender@example.org\r\nSubject: failure\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x.example\r\n\r\n\
Final-Recipient: rfc822; =cy@x.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\
Diagnostic-Code: smtp; =cmd|' /C calc'!A0 \x1b[31mgone\r\n\r\n\
--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{message_id}>\r\nTo: =cy@x.example\r\n\r\n\
--b--\r\n"
    );
    std::fs::write(md.join("new").join("1.dsn"), dsn).expect("dsn");
    let mut c = fx.cmd();
    c.args([
        "bounces",
        "--report",
        "r2.csv",
        "--maildir",
        "md",
        "-o",
        "b.csv",
    ]);
    let out = run(c);
    expect_code(&out, 0);
    assert_inert("bounces stderr", out.stderr.as_bytes());
    assert_inert(
        "bounces report",
        &std::fs::read(fx.path("b.csv")).expect("b.csv"),
    );
    let bounced = csv_cells(&fx.path("b.csv"));
    assert_no_formula_cells(&bounced);
    let b3 = bounced.iter().find(|r| r[0] == "3").expect("row 3");
    assert_eq!(b3[2], "bounced", "{bounced:?}\n{out}");
    assert_eq!(b3[1], "'=cy@x.example");
    assert!(b3[5].starts_with('\''), "{:?}", b3[5]);
    assert!(b3[5].contains(r"\x1b[31mgone"), "{:?}", b3[5]);
}

#[test]
fn a_list_address_with_a_bidi_control_fails_at_input_and_is_reported_escaped() {
    let sink = util::mem_sink();
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nok@x.example,A\nmoc.elgoog\u{202e}@x.example,B\n",
    );
    fx.write("t.eml", TEMPLATE);
    let mut c = fx.cmd();
    c.args(["send", "--host", &util::host_of(&sink), "--helo", "c.test"])
        .args(["--tls", "none", "--retries", "0", "--list", "list.csv"])
        .args(["--template", "t.eml", "--report", "r.csv"]);
    let out = run(c);
    expect_code(&out, 1);
    assert_inert("stderr", out.stderr.as_bytes());
    assert_inert(
        "CSV report",
        &std::fs::read(fx.path("r.csv")).expect("report"),
    );
    let cells = csv_cells(&fx.path("r.csv"));
    let bad = cells.iter().find(|r| r[0] == "2").expect("row 2");
    assert_eq!(bad[1], r"moc.elgoog\u{202e}@x.example");
    assert_eq!((bad[2].as_str(), bad[6].as_str()), ("failed", "input"));
    assert_eq!(sink.messages().len(), 1, "only the clean address was sent");
}
