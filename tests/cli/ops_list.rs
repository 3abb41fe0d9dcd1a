//! Issue 17: the list carries the message (`send --list rcpts.csv`, no `--template`).

use super::*;

/// The stored message for `rcpt`, split into header lines and body.
fn stored(sink: &SinkHandle, rcpt: &str) -> (Vec<String>, Vec<u8>) {
    let msgs = sink.messages();
    let m = stored_for(&msgs, rcpt);
    let (h, b) = split_message(&m.data);
    (h, b.to_vec())
}

#[test]
fn subject_and_body_per_row_arrive_byte_exact() {
    let fx = Fx::new();
    fx.write(
        "rcpts.csv",
        "Email,Subject,Body,plan\n\
         ann@x.example,Hello Ann,\"Dear Ann,\nline two\n\",Pro\n\
         bob@y.example,Hi Bob,Short,Free\n",
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "rcpts.csv",
        "--from",
        "news@example.org",
        "--report",
        "r.csv",
    ]);
    let out = run(c);
    expect_code(&out, 0);
    let (h, body) = stored(&sink, "ann@x.example");
    assert!(h.contains(&"Subject: Hello Ann".to_owned()), "{h:?}");
    assert!(h.contains(&"From: news@example.org".to_owned()), "{h:?}");
    assert!(h.contains(&"To: ann@x.example".to_owned()), "{h:?}");
    assert!(
        h.iter().any(|l| l.starts_with("Date: "))
            && h.iter().any(|l| l.starts_with("Message-ID: <"))
    );
    assert!(
        !h.iter().any(|l| l.to_ascii_lowercase().starts_with("plan")),
        "other columns are not headers"
    );
    assert_eq!(body, b"Dear Ann,\r\nline two\r\n");
    let (h, body) = stored(&sink, "bob@y.example");
    assert!(h.contains(&"Subject: Hi Bob".to_owned()), "{h:?}");
    assert_eq!(body, b"Short\r\n");
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 2);
    // Non-ASCII subjects get RFC 2047 words, as from a template.
    let fx = Fx::new();
    fx.write(
        "l.csv",
        "email,subject,text,from\ncy@x.example,Grüße,Hallo,Me <me@example.org>\n",
    );
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "l.csv"]);
    expect_code(&run(c), 0);
    let (h, body) = stored(&sink, "cy@x.example");
    assert!(
        h.contains(&"Subject: =?utf-8?b?R3LDvMOfZQ==?=".to_owned())
            || h.iter().any(|l| l.starts_with("Subject: =?")),
        "{h:?}"
    );
    assert!(h.contains(&"From: Me <me@example.org>".to_owned()), "{h:?}");
    assert_eq!(body, b"Hallo\r\n");
    assert_eq!(
        stored_for(&sink.messages(), "cy@x.example").from,
        "me@example.org"
    );
}

#[test]
fn template_syntax_header_lines_and_crlf_in_values_stay_inert() {
    let fx = Fx::new();
    fx.write(
        "l.csv",
        "email,subject,body,cc\n\
         ann@x.example,\"{{ 7*7 }} and {% if 1 %}x{% endif %}\r\nBcc: evil@z.example\",\
         \"{{ 7*7 }}\n{% raw %}\nBcc: evil@z.example\n\",\"\"\"Copy\r\nX-Evil: 1\"\" <c@x.example>\"\n",
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "l.csv", "--from", "me@example.org"]);
    let out = run(c);
    expect_code(&out, 0);
    let msgs = sink.messages();
    let (h, body) = split_message(&msgs[0].data);
    assert!(
        h.contains(
            &"Subject: {{ 7*7 }} and {% if 1 %}x{% endif %}  Bcc: evil@z.example".to_owned()
        ),
        "{h:?}"
    );
    assert!(
        h.contains(&"Cc: \"Copy  X-Evil: 1\" <c@x.example>".to_owned()),
        "{h:?}"
    );
    assert!(
        !h.iter()
            .any(|l| l.starts_with("Bcc") || l.starts_with("X-Evil")),
        "{h:?}"
    );
    assert_eq!(body, b"{{ 7*7 }}\r\n{% raw %}\r\nBcc: evil@z.example\r\n");
    // The Cc address gets its copy in the same transaction; nothing else does.
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, ["ann@x.example", "c@x.example"]);
    assert!(out.stderr.contains("CR/LF in header values"), "{out}");
}

#[test]
fn a_template_column_picks_each_rows_template_and_a_missing_one_fails_its_rows() {
    let fx = Fx::new();
    std::fs::create_dir(fx.path("tpl")).expect("mkdir");
    fx.write(
        "tpl/a.eml",
        "From: a@example.org\nSubject: A for {{ name }}\n\nTemplate A\n",
    );
    fx.write(
        "tpl/b.eml",
        "From: b@example.org\nSubject: B for {{ name }}\n\nTemplate B\n",
    );
    fx.write("secret.eml", "From: s@example.org\nSubject: S\n\nS\n");
    fx.write(
        "l.csv",
        "email,name,template\nann@x.example,Ann,a.eml\nbob@x.example,Bob,b.eml\n\
         cy@x.example,Cy,missing.eml\ndee@x.example,Dee,../secret.eml\neve@x.example,Eve,a.eml\n",
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "l.csv",
        "--template-dir",
        "tpl",
        "--report",
        "r.csv",
    ]);
    let out = run(c);
    expect_code(&out, 1);
    let msgs = sink.messages();
    let (h, body) = split_message(&stored_for(&msgs, "ann@x.example").data);
    assert!(h.contains(&"Subject: A for Ann".to_owned()), "{h:?}");
    assert_eq!(body, b"Template A\r\n");
    let (h, body) = split_message(&stored_for(&msgs, "bob@x.example").data);
    assert!(h.contains(&"Subject: B for Bob".to_owned()), "{h:?}");
    assert_eq!(body, b"Template B\r\n");
    assert_eq!(stored_for(&msgs, "bob@x.example").from, "b@example.org");
    assert_eq!(msgs.len(), 3, "ann, bob, eve");
    let rows = read_report(&fx.path("r.csv"));
    for email in ["cy@x.example", "dee@x.example"] {
        let r = row_for(&rows, email);
        assert_eq!(
            (r.status.as_str(), r.stage.as_deref()),
            ("failed", Some("input")),
            "{r:?}"
        );
    }
    assert!(
        row_for(&rows, "dee@x.example")
            .response
            .contains("relative path inside")
    );
    // Every row failing: the run stops before connecting.
    fx.write("bad.csv", "email,template\nann@x.example,missing.eml\n");
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "bad.csv", "--template-dir", "tpl"]);
    let out = run(c);
    expect_code(&out, 65);
    assert_eq!(sink.messages().len(), 3, "{out}");
}

#[test]
fn usage_errors_name_the_columns() {
    let fx = Fx::new();
    fx.write("l.csv", "email,name\nann@x.example,Ann\n");
    fx.write("nofrom.csv", "email,subject,body\nann@x.example,S,B\n");
    fx.write(
        "html.csv",
        "email,subject,body,html\nann@x.example,S,B,<p>B</p>\n",
    );
    fx.write("t.html", "<p>{{ email }}</p>\n");
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "l.csv", "--from", "me@example.org"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(
        out.stderr.contains("`subject` and `body`") && out.stderr.contains("found: email, name"),
        "{out}"
    );
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "nofrom.csv"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("--from"), "{out}");
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "html.csv", "--from", "me@example.org"])
        .args(["--html", "t.html"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("`html` column"), "{out}");
    assert_eq!(sink.stats().sessions, 0, "nothing connects");
}

#[test]
fn a_list_on_stdin_carries_its_message_and_dry_run_shows_it() {
    let fx = Fx::new();
    let sink = plain_sink();
    let list = "email,subject,body\nann@x.example,From stdin,Body text\n";
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "-", "--from", "me@example.org", "--dry-run"])
        .write_stdin(list);
    let out = run(c);
    expect_code(&out, 0);
    assert_eq!(
        header(&out.stdout, "Subject").as_deref(),
        Some("From stdin"),
        "{out}"
    );
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "-", "--from", "me@example.org"])
        .write_stdin(list);
    expect_code(&run(c), 0);
    let (h, body) = stored(&sink, "ann@x.example");
    assert!(h.contains(&"Subject: From stdin".to_owned()), "{h:?}");
    assert_eq!(body, b"Body text\r\n");
}
