//! Input: stdin, shards, progress and quiet, dry run, duplicates, invalid addresses.

use super::*;

// ----- stdin ---------------------------------------------------------------------------------

#[test]
fn list_from_stdin() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "-", "--template", "t.eml", "--report", "r.csv"])
        .write_stdin(SIMPLE_LIST);
    expect_code(&run(c), 0);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 3);
    let msgs = sink.messages();
    check_simple_message(&msgs, row_for(&rows, "bob@y.example"), "Bob");
}

#[test]
fn template_from_stdin() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "-", "--report", "r.csv"])
        .write_stdin(SIMPLE_TEMPLATE);
    expect_code(&run(c), 0);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 3);
    let msgs = sink.messages();
    check_simple_message(&msgs, row_for(&rows, "cy@x.example"), "Cy");
}

#[test]
fn list_and_template_both_from_stdin_is_a_usage_error() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "-", "--template", "-"])
        .write_stdin(SIMPLE_LIST);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("stdin"), "{out}");
    assert_eq!(sink.stats().sessions, 0);
}

// ----- shards --------------------------------------------------------------------------------

#[test]
fn three_shards_cover_the_list_exactly_once() {
    let fx = numbered_fixture('s', 1..=10);
    let sink = plain_sink();
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    for k in 1..=3u64 {
        let report = format!("r{k}.csv");
        let mut c = fx.send(&host_of(&sink));
        c.args(list_args("list.csv", "t.eml", &report))
            .args(["--shard", &format!("{k}/3")]);
        expect_code(&run(c), 0);
        for r in read_report(&fx.path(&report)) {
            assert_eq!((r.row - 1) % 3, k - 1, "shard {k}/3 took row {}", r.row);
            assert_eq!(r.email, format!("s{}@x.example", r.row));
            assert_eq!(r.status, "sent");
            assert!(
                seen.insert(r.row, k).is_none(),
                "row {} in two shards",
                r.row
            );
        }
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let want: BTreeMap<String, usize> = (1..=10).map(|i| (format!("s{i}@x.example"), 1)).collect();
    assert_eq!(deliveries(&sink.messages()), want);
}

// ----- progress and quiet --------------------------------------------------------------------

#[test]
fn no_progress_bar_when_stderr_is_not_a_terminal() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(
        !out.stderr.contains(['\r', '\x1b']),
        "no bar or spinner control characters\n{out}"
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "only the summary line\n{out}");
    assert!(
        lines[0].starts_with("pipemail: 3 rows: 3 sent, 0 failed, 0 deferred, 0 skipped in "),
        "{out}"
    );
    assert!(out.stdout.is_empty(), "no report, no stdout\n{out}");
}

#[test]
fn quiet_prints_nothing_on_success() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--quiet"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.is_empty() && out.stdout.is_empty(), "{out}");
    assert_eq!(sink.messages().len(), 3);

    // Not on failure: then the summary is printed anyway.
    let sink = start_sink(SinkConfig {
        reject: rules(&["550:bob@*"]),
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "-q"]);
    let out = run(c);
    expect_code(&out, 1);
    assert!(out.stderr.contains("3 rows: 2 sent, 1 failed"), "{out}");
}

#[test]
fn forced_tty_draws_the_progress_bar() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .env("PIPEMAIL_FORCE_TTY", "1");
    let out = run(c);
    expect_code(&out, 0);
    // The bar's own text (position and message), not just the summary line.
    assert!(out.stderr.contains("3/3"), "{out}");
    assert!(out.stderr.contains("sent 3 failed 0"), "{out}");
    assert!(out.stderr.contains("round trips instead of"), "{out}");
    assert!(
        out.stderr
            .lines()
            .last()
            .is_some_and(|l| l.contains("pipemail: 3 rows: 3 sent")),
        "{out}"
    );

    // --quiet wins over the hook.
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--quiet"])
        .env("PIPEMAIL_FORCE_TTY", "1");
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.is_empty(), "{out}");
}

// ----- dry run -------------------------------------------------------------------------------

#[test]
fn dry_run_prints_the_first_message_and_counts_and_connects_to_nothing() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--dry-run"]);
    let out = run(c);
    expect_code(&out, 0);
    let mid = header(&out.stdout, "Message-ID").expect("Message-ID");
    let mid = mid.trim_start_matches('<').trim_end_matches('>');
    let headers = simple_headers("Ann", "ann@x.example");
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let want = expected_message(
        &out.stdout,
        &headers,
        mid,
        &simple_body("Ann", "ann@x.example"),
    );
    assert_bytes_eq(&out.stdout, &want);
    assert!(
        out.stderr.contains(
            "dry run: 3 messages would be sent, 0 rows fail, 0 duplicates skipped; nothing was sent"
        ),
        "{out}"
    );
    assert_eq!(sink.stats().sessions, 0, "a dry run connects to nothing");
}

#[test]
fn dry_run_counts_bad_rows_and_duplicates() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nann@x.example,Ann\nANN@X.example,Ann2\nno-at-sign,Bad\nbob@x.example,Bob\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--dry-run",
        "--report",
        "r.csv",
    ]);
    let out = run(c);
    expect_code(&out, 1);
    assert!(
        out.stderr
            .contains("dry run: 2 messages would be sent, 1 rows fail, 1 duplicates skipped"),
        "{out}"
    );
    assert!(out.stderr.contains("row 3"), "the bad row is named\n{out}");
    assert!(header(&out.stdout, "To").is_some_and(|t| t.contains("ann@x.example")));
    assert_eq!(sink.stats().sessions, 0);
    assert!(!fx.path("r.csv").exists(), "a dry run writes no report");
}

// ----- duplicates ----------------------------------------------------------------------------

#[test]
fn repeated_address_is_skipped_case_insensitively() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nann@x.example,Ann\nbob@x.example,Bob\nANN@X.Example,Ann again\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let out = fx.send_list(&sink, "r.csv", &[]);
    expect_code(&out, 0);
    assert!(
        out.stderr
            .contains("2 sent, 0 failed, 0 deferred, 1 skipped"),
        "{out}"
    );
    let rows = by_row(&read_report(&fx.path("r.csv")));
    assert_eq!(rows.len(), 3);
    let dup = &rows[&3];
    assert_eq!(dup.email, "ANN@X.Example");
    assert_eq!(dup.status, "skipped");
    assert_eq!(dup.response, "duplicate of row 1");
    assert_eq!(
        (dup.attempts, dup.smtp_code, dup.stage.as_deref()),
        (0, None, None)
    );
    assert_eq!(
        deliveries(&sink.messages()),
        BTreeMap::from([
            ("ann@x.example".to_owned(), 1),
            ("bob@x.example".to_owned(), 1)
        ])
    );
}

#[test]
fn allow_duplicates_sends_to_both_rows() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\nann@x.example,Ann\nANN@X.Example,Ann again\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(list_args("list.csv", "t.eml", "r.csv"))
        .arg("--allow-duplicates");
    expect_code(&run(c), 0);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:?}");
    assert_eq!(
        deliveries(&sink.messages()),
        BTreeMap::from([
            ("ANN@X.Example".to_owned(), 1),
            ("ann@x.example".to_owned(), 1)
        ])
    );
}

// ----- invalid addresses ---------------------------------------------------------------------

#[test]
fn invalid_addresses_fail_at_stage_input_and_are_never_sent() {
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,name\r\ngood@x.example,G\r\n\"a@b>\r\nRCPT TO:<evil@x>\",E\r\nno-at-sign,N\r\ngood2@x.example,G2\r\n",
    );
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let out = fx.send_list(&sink, "r.csv", &[]);
    expect_code(&out, 1);
    let rows = by_row(&read_report(&fx.path("r.csv")));
    assert_eq!(rows.len(), 4);
    for n in [2, 3] {
        let r = &rows[&n];
        assert_eq!(r.status, "failed", "{r:?}");
        assert_eq!(r.stage.as_deref(), Some("input"), "{r:?}");
        assert_eq!((r.attempts, r.smtp_code), (0, None), "{r:?}");
        assert!(!r.response.is_empty(), "{r:?}");
    }
    // Issue 16: the list value is echoed inert (CR LF shown as `\r\n`, no control character).
    assert_eq!(rows[&2].email, r"a@b>\r\nRCPT TO:<evil@x>");
    assert_eq!(rows[&3].email, "no-at-sign");
    assert_eq!(rows[&1].status, "sent");
    assert_eq!(rows[&4].status, "sent");
    let msgs = sink.messages();
    assert_eq!(
        deliveries(&msgs),
        BTreeMap::from([
            ("good2@x.example".to_owned(), 1),
            ("good@x.example".to_owned(), 1)
        ])
    );
    assert_eq!(
        sink.stats().rejected_recipients,
        0,
        "nothing malformed on the wire"
    );
}
