//! Exit codes 64, 65, 66, 69, 74, 75 and the rows reported with them.

use super::*;

// ----- exit codes ----------------------------------------------------------------------------

#[test]
fn exit_64_for_bad_flags_and_clap_errors() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let cases: [&[&str]; 5] = [
        &["--shard", "5/4"],
        &["--shard", "0/3"],
        &["--bogus-flag"],
        &["--no-pipelining", "--require-pipelining"],
        &["--rate", "fast"],
    ];
    for extra in cases {
        let mut c = fx.send(&host_of(&sink));
        c.args(["--list", "list.csv", "--template", "t.eml"])
            .args(extra);
        let out = run(c);
        assert_eq!(out.code, Some(64), "{extra:?} must be a usage error\n{out}");
        assert!(out.stdout.is_empty(), "{out}");
        assert!(out.stderr.contains("error"), "{out}");
    }
    // A missing required flag and an unknown subcommand: clap's own errors, also 64.
    let mut c = fx.cmd();
    c.args(["send", "--host", "127.0.0.1:1"]);
    expect_code(&run(c), 64);
    let mut c = fx.cmd();
    c.arg("frobnicate");
    expect_code(&run(c), 64);
    let c = fx.cmd();
    expect_code(&run(c), 64);
    assert_eq!(sink.stats().sessions, 0);
}

#[test]
fn exit_65_for_unknown_placeholder_and_list_without_email_column() {
    let fx = simple_fixture();
    let sink = plain_sink();
    fx.write(
        "nope.eml",
        "From: a@example.org\nSubject: {{ nope }}\n\nhi\n",
    );
    let mut c = fx.send(&host_of(&sink));
    c.args(list_args("list.csv", "nope.eml", "r.csv"));
    let out = run(c);
    expect_code(&out, 65);
    assert!(out.stderr.contains("nope"), "{out}");
    assert!(out.stderr.starts_with("pipemail: error: "), "{out}");

    fx.write("noemail.csv", "name,address\nAnn,ann@x.example\n");
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "noemail.csv", "--template", "t.eml"]);
    let out = run(c);
    expect_code(&out, 65);
    assert!(out.stderr.contains("email"), "{out}");
    assert_eq!(
        sink.stats().sessions,
        0,
        "bad data stops the run before connecting"
    );
}

#[test]
fn exit_66_for_missing_list_or_template() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "missing.csv", "--template", "t.eml"]);
    let out = run(c);
    expect_code(&out, 66);
    assert!(out.stderr.contains("missing.csv"), "{out}");
    // One error line, and its cause said once.
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert_eq!(out.stderr.matches("(os error 2)").count(), 1, "{out}");

    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "missing.eml"]);
    let out = run(c);
    expect_code(&out, 66);
    assert!(out.stderr.contains("missing.eml"), "{out}");
    assert_eq!(sink.stats().sessions, 0);
}

#[test]
fn exit_69_when_nothing_listens_and_every_row_is_reported() {
    let fx = simple_fixture();
    let host = format!("127.0.0.1:{}", closed_port());
    let mut c = fx.send(&host);
    c.args(list_args("list.csv", "t.eml", "r.csv"))
        .args(["--retries", "0"]);
    let out = run(c);
    expect_code(&out, 69);
    assert!(out.stderr.contains("no session"), "{out}");
    assert!(
        out.stderr.contains("pipemail: hint: no mail was sent"),
        "{out}"
    );
    assert_all_deferred_at_connect(&read_report(&fx.path("r.csv")), 3);
}

#[test]
fn exit_69_when_pipelining_is_required_but_not_offered() {
    let fx = simple_fixture();
    let sink = start_sink(SinkConfig {
        pipelining: false,
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args(list_args("list.csv", "t.eml", "r.csv")).args([
        "--require-pipelining",
        "--retries",
        "3",
    ]);
    let out = run(c);
    expect_code(&out, 69);
    assert!(out.stderr.contains("PIPELINING"), "{out}");
    let rows = read_report(&fx.path("r.csv"));
    assert_all_deferred_at_connect(&rows, 3);
    assert!(rows[0].response.contains("PIPELINING"), "{rows:?}");
    assert_eq!(sink.stats().messages, 0);
    assert_eq!(
        sink.stats().sessions,
        1,
        "a missing capability is not retried"
    );
}

#[test]
fn exit_69_when_starttls_is_required_but_not_offered() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args(list_args("list.csv", "t.eml", "r.csv"))
        .args(["--retries", "3"]);
    let out = run(c);
    expect_code(&out, 69);
    assert!(out.stderr.contains("STARTTLS"), "{out}");
    let rows = read_report(&fx.path("r.csv"));
    assert_all_deferred_at(&rows, 3, "tls");
    assert!(rows[0].response.contains("STARTTLS"), "{rows:?}");
    assert!(sink.messages().is_empty(), "no mail over plain text");
    assert_eq!(sink.stats().messages, 0);
}

#[test]
fn exit_74_when_the_report_cannot_be_written() {
    let fx = simple_fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--report", "no-such-dir/r.csv"]);
    let out = run(c);
    expect_code(&out, 74);
    assert!(out.stderr.contains("no-such-dir/r.csv"), "{out}");
    assert_eq!(sink.stats().sessions, 0, "nothing sent without a report");
}

#[test]
fn exit_75_when_every_recipient_is_deferred() {
    let fx = simple_fixture();
    let sink = start_sink(SinkConfig {
        reject: rules(&["450:*"]),
        ..SinkConfig::default()
    });
    let out = fx.send_list(&sink, "r.csv", &["--retries", "1"]);
    expect_code(&out, 75);
    assert!(
        out.stderr.contains("pipemail: hint: nothing was delivered"),
        "{out}"
    );
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(by_row(&rows).len(), 3);
    for r in &rows {
        assert_eq!(
            (
                r.status.as_str(),
                r.stage.as_deref(),
                r.smtp_code,
                r.attempts
            ),
            ("deferred", Some("rcpt"), Some(450), 2),
            "{r:?}"
        );
    }
    assert!(sink.messages().is_empty());
}
