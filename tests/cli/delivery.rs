//! Delivery: every format, mixed replies, 421 mid-run, header injection, dots.

use super::*;

// ----- happy path ----------------------------------------------------------------------------

#[test]
fn send_all_sent_report_rows_and_stored_messages_match_in_every_format() {
    for (file, format) in [("r.csv", "csv"), ("r.json", "json"), ("r.jsonl", "jsonl")] {
        let fx = simple_fixture();
        let sink = plain_sink();
        let mut c = fx.send(&host_of(&sink));
        c.args(["--list", "list.csv", "--template", "t.eml"])
            .args(["--report", file, "--format", format]);
        let out = run(c);
        expect_code(&out, 0);
        assert!(
            out.stdout.is_empty(),
            "stdout carries nothing with --report FILE\n{out}"
        );
        assert!(
            out.stderr
                .contains("3 rows: 3 sent, 0 failed, 0 deferred, 0 skipped"),
            "{out}"
        );

        let rows = read_report(&fx.path(file));
        assert_eq!(rows.len(), 3, "{format}: one row per list row");
        let rows_by = by_row(&rows);
        assert_eq!(rows_by.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        let msgs = sink.messages();
        assert_eq!(msgs.len(), 3);
        for (n, (email, name)) in [
            ("ann@x.example", "Ann"),
            ("bob@y.example", "Bob"),
            ("cy@x.example", "Cy"),
        ]
        .into_iter()
        .enumerate()
        {
            let r = &rows_by[&(n as u64 + 1)];
            assert_eq!(r.email, email);
            assert_eq!(r.status, "sent", "{r:?}");
            assert_eq!(r.smtp_code, Some(250), "{r:?}");
            assert_eq!(r.enhanced_code.as_deref(), Some("2.0.0"), "{r:?}");
            assert_eq!(r.attempts, 1, "{r:?}");
            assert!(r.message_id.ends_with("@example.org"), "{r:?}");
            check_simple_message(&msgs, r, name);
        }
        // A complete run leaves no journal.
        assert!(!fx.path(&format!("{file}.journal")).exists());
    }
}

#[test]
fn report_format_follows_the_extension_and_dash_is_stdout() {
    let fx = simple_fixture();
    let sink = plain_sink();
    expect_code(&fx.send_list(&sink, "r.jsonl", &[]), 0);
    assert_eq!(read_report(&fx.path("r.jsonl")).len(), 3);

    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--report", "-"]);
    let out = run(c);
    expect_code(&out, 0);
    let rows = parse_csv(&out.stdout);
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows.iter().all(|r| r.status == "sent"));
    assert!(
        !fx.path("-.journal").exists(),
        "no journal for a report on stdout"
    );
}

// ----- mixed replies -------------------------------------------------------------------------

/// Three rows and a sink that takes the first, refuses the second for good (550) and the
/// third for now (450): one `sent`, one `failed`, one `deferred`.
fn mixed_outcomes() -> (Fx, SinkHandle) {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nok@x.example,Ok\nno@bad.example,No\nlater@slow.example,Later\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = start_sink(SinkConfig {
        reject: rules(&["550:*@bad.example", "450:*@slow.example"]),
        ..SinkConfig::default()
    });
    (fx, sink)
}

#[test]
fn rejected_550_fails_at_rcpt_and_450_is_retried_then_deferred() {
    let (fx, sink) = mixed_outcomes();
    let out = fx.send_list(&sink, "r.csv", &["--retries", "2"]);
    expect_code(&out, 1);
    assert!(
        out.stderr.contains("3 rows: 1 sent, 1 failed, 1 deferred"),
        "{out}"
    );

    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 3);
    let ok = row_for(&rows, "ok@x.example");
    assert_eq!((ok.status.as_str(), ok.attempts), ("sent", 1));
    let no = row_for(&rows, "no@bad.example");
    assert_eq!(no.status, "failed");
    assert_eq!(no.stage.as_deref(), Some("rcpt"));
    assert_eq!(no.smtp_code, Some(550));
    assert_eq!(no.enhanced_code.as_deref(), Some("5.1.1"));
    assert!(no.response.contains("Recipient address rejected"), "{no:?}");
    assert_eq!(no.attempts, 1, "a permanent rejection is not retried");
    let later = row_for(&rows, "later@slow.example");
    assert_eq!(later.status, "deferred");
    assert_eq!(later.stage.as_deref(), Some("rcpt"));
    assert_eq!(later.smtp_code, Some(450));
    assert_eq!(later.attempts, 3, "--retries 2: three attempts");

    assert_eq!(
        deliveries(&sink.messages()),
        BTreeMap::from([("ok@x.example".to_owned(), 1)])
    );
    // One 550 and three 450 replies to RCPT.
    assert_eq!(sink.stats().rejected_recipients, 4);
}

// ----- 421 mid-run ---------------------------------------------------------------------------

#[test]
fn reply_421_mid_run_retries_the_rest_on_a_new_session_each_recipient_once() {
    let fx = numbered_fixture('r', 1..=5);
    // Units of session 0: 0 EHLO, 1 MAIL, 2 RCPT, 3 BDAT (row 1), 4 MAIL (row 2) -> 421.
    let sink = start_sink(SinkConfig {
        faults: Some(FaultPlan {
            sessions: vec![vec![Fault::Reply421 { command: 4 }]],
        }),
        ..SinkConfig::default()
    });
    let out = fx.send_list(&sink, "r.csv", &["--retries", "2"]);
    expect_code(&out, 0);

    let rows = by_row(&read_report(&fx.path("r.csv")));
    assert_eq!(rows.len(), 5);
    // Row 2's MAIL got the 421: one attempt spent. Rows 3-5 were written behind it and
    // never executed: they go back to the queue without counting an attempt.
    for (n, r) in &rows {
        assert_eq!(r.status, "sent", "{r:?}");
        let want = if *n == 2 { 2 } else { 1 };
        assert_eq!(r.attempts, want, "{r:?}");
    }
    let msgs = sink.messages();
    let want: BTreeMap<String, usize> = (1..=5).map(|i| (format!("r{i}@x.example"), 1)).collect();
    assert_eq!(deliveries(&msgs), want, "every recipient exactly once");
    assert!(msgs[0].session == 0 && msgs[1..].iter().all(|m| m.session == 1));
    assert_eq!(sink.stats().sessions, 2);
}

// ----- header injection ----------------------------------------------------------------------

#[test]
fn crlf_in_a_header_value_cannot_inject_a_header() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,subject\r\nv@x.example,\"x\r\nBcc: victim@example.com\"\r\nw@x.example,plain\r\n",
    );
    fx.write(
        "t.eml",
        "From: a@example.org\nTo: {{ email }}\nSubject: {{ subject }}\n\nbody\n",
    );
    let sink = plain_sink();
    let out = fx.send_list(&sink, "r.csv", &[]);
    expect_code(&out, 0);
    assert!(
        out.stderr
            .contains("warning: 1 rows had CR/LF in header values (replaced by spaces)"),
        "{out}"
    );

    let msgs = sink.messages();
    assert_eq!(
        deliveries(&msgs),
        BTreeMap::from([("v@x.example".to_owned(), 1), ("w@x.example".to_owned(), 1)]),
        "the victim is not a recipient"
    );
    let m = stored_for(&msgs, "v@x.example");
    let (lines, body) = split_message(&m.data);
    let subjects: Vec<&String> = lines.iter().filter(|l| l.starts_with("Subject:")).collect();
    assert_eq!(subjects, ["Subject: x  Bcc: victim@example.com"]);
    assert!(
        !lines
            .iter()
            .any(|l| l.to_ascii_lowercase().starts_with("bcc")),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains('\r') && !l.contains('\n')),
        "{lines:?}"
    );
    assert_eq!(body, b"body\r\n");
}

// ----- dots and line endings -----------------------------------------------------------------

#[test]
fn dot_lines_and_mixed_line_endings_arrive_byte_exact_with_data_and_bdat() {
    let fx = Fx::new();
    // A body value with bare LF, CRLF, a lone dot line and a dot-led line.
    fx.write("list.csv", "email,v\nd@x.example,\"a\n.b\r\n.\"\n");
    // Template: CRLF, LF and lone CR endings; a lone dot, two dots, no final newline.
    fx.write(
        "t.eml",
        b"From: a@example.org\r\nSubject: dots\n\n.\n..two\r.three\r\n{{ v }}\n. \nlast line",
    );
    let body = ".\r\n..two\r\n.three\r\na\r\n.b\r\n.\r\n. \r\nlast line\r\n";
    for (mode, extra, bdat) in [
        ("DATA", &["--no-chunking"][..], false),
        ("BDAT", &[][..], true),
    ] {
        let sink = plain_sink();
        let mut c = fx.send(&host_of(&sink));
        c.args(list_args("list.csv", "t.eml", "r.csv")).args(extra);
        let out = run(c);
        expect_code(&out, 0);
        let rows = read_report(&fx.path("r.csv"));
        assert_eq!(rows.len(), 1);
        let msgs = sink.messages();
        let m = stored_for(&msgs, "d@x.example");
        assert_eq!(m.via_bdat, bdat, "{mode}");
        let want = expected_message(
            &m.data,
            &["From: a@example.org", "Subject: dots"],
            &rows[0].message_id,
            body,
        );
        assert_bytes_eq(&m.data, &want);
    }
}

/// A report to the null device (`--report /dev/null`, as benchmarks and cron jobs do) is
/// accepted, not refused as "not a regular file"; its rows are not even encoded, yet every
/// outcome is counted and sent as without a report, and no journal lands beside it.
#[test]
fn report_to_dev_null_is_accepted() {
    let (fx, sink) = mixed_outcomes();
    let out = fx.send_list(&sink, "/dev/null", &["--retries", "1", "--format", "csv"]);
    expect_code(&out, 1);
    assert!(
        out.stderr.contains("3 rows: 1 sent, 1 failed, 1 deferred"),
        "{out}"
    );
    assert_eq!(sink.messages().len(), 1);
    assert!(!Path::new("/dev/null.journal").exists());
}
