//! Sessions: max per connection, parallel connections, TLS, AUTH and secrets, lock-step.

use super::*;

// ----- sessions ------------------------------------------------------------------------------

#[test]
fn max_per_connection_starts_a_fresh_session_every_two_messages() {
    let fx = numbered_fixture('m', 1..=5);
    let sink = plain_sink();
    let out = fx.send_list(&sink, "r.csv", &["--max-per-connection", "2"]);
    expect_code(&out, 0);
    assert_eq!(sink.stats().sessions, 3, "ceil(5 / 2) sessions");
    let msgs = sink.messages();
    let mut per_session: HashMap<u64, usize> = HashMap::new();
    for m in &msgs {
        *per_session.entry(m.session).or_insert(0) += 1;
    }
    assert!(per_session.values().all(|n| *n <= 2), "{per_session:?}");
    assert_eq!(deliveries(&msgs).len(), 5);
    assert!(deliveries(&msgs).values().all(|n| *n == 1));
    assert_eq!(by_row(&read_report(&fx.path("r.csv"))).len(), 5);
}

#[test]
fn four_connections_send_every_row_once() {
    let fx = numbered_fixture('c', 1..=40);
    let sink = plain_sink();
    let out = fx.send_list(&sink, "r.jsonl", &["--connections", "4", "--window", "3"]);
    expect_code(&out, 0);
    let rows = by_row(&read_report(&fx.path("r.jsonl")));
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>()
    );
    assert!(rows.values().all(|r| r.status == "sent"));
    let want: BTreeMap<String, usize> = (1..=40).map(|i| (format!("c{i}@x.example"), 1)).collect();
    assert_eq!(deliveries(&sink.messages()), want);
    let sessions = sink.stats().sessions;
    assert!((1..=4).contains(&sessions), "{sessions} sessions");
}

// ----- TLS, AUTH and secrets -----------------------------------------------------------------

const PASSWORD: &str = "s3cr3t";

/// A self-signed certificate for localhost / 127.0.0.1 made with the openssl CLI, or `None`
/// (loudly skipped; a failure with PIPEMAIL_REQUIRE_INTEROP=1) without openssl.
fn self_signed(fx: &Fx) -> Option<native_tls::Identity> {
    util::self_signed(fx.dir.path())
        .map_err(|why| support::skip_or_fail(&why))
        .ok()
}

/// Every form the password could leak in: plain, and base64 of AUTH PLAIN / AUTH LOGIN tokens.
fn secret_forms() -> Vec<String> {
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let b64np = |s: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(s);
    let mut v = vec![PASSWORD.to_owned()];
    for raw in [
        PASSWORD.as_bytes().to_vec(),
        format!("\0u\0{PASSWORD}").into_bytes(),
        format!("u\0u\0{PASSWORD}").into_bytes(),
    ] {
        v.push(b64(&raw));
        v.push(b64np(&raw));
    }
    v
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for s in secret_forms() {
        assert!(
            !text.contains(&s),
            "{what} contains the password as {s:?}:\n{text}"
        );
    }
}

#[test]
fn auth_over_starttls_delivers_and_never_shows_the_password() {
    let fx = simple_fixture();
    let Some(identity) = self_signed(&fx) else {
        return;
    };
    let sink = start_sink(SinkConfig {
        tls: Some(identity),
        auth: Some(("u".into(), PASSWORD.into())),
        ..SinkConfig::default()
    });
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args(list_args("list.csv", "t.eml", "r.csv"))
        .args(["--ca-file", "cert.pem", "--auth-user", "u", "-v"])
        .env("PIPEMAIL_PASSWORD", PASSWORD);
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.contains("C: STARTTLS"), "{out}");
    assert!(out.stderr.contains("C: AUTH"), "{out}");
    assert!(out.stderr.contains("S: 235"), "{out}");
    assert!(
        out.stderr.contains("****"),
        "the secret shows as ****\n{out}"
    );
    assert_no_secret("stderr", &out.stderr);
    assert_no_secret("stdout", &out.stdout_text());
    assert_no_secret("report", &fx.read("r.csv"));
    let rows = read_report(&fx.path("r.csv"));
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:?}");
    assert_eq!(deliveries(&sink.messages()).len(), 3);

    // The same with --password-file.
    fx.write("pw.txt", format!("{PASSWORD}\n"));
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--insecure", "--auth-user", "u"])
        .args(["--password-file", "pw.txt", "-v"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.contains("--insecure"), "a loud warning\n{out}");
    assert_no_secret("stderr", &out.stderr);
    assert_eq!(sink.messages().len(), 6);
}

#[test]
fn auth_over_plaintext_is_refused_unless_allowed() {
    let fx = simple_fixture();
    let sink = start_sink(SinkConfig {
        auth: Some(("u".into(), PASSWORD.into())),
        allow_plain_auth: true,
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args(list_args("list.csv", "t.eml", "r.csv"))
        .args(["--auth-user", "u", "-v", "--retries", "2"])
        .env("PIPEMAIL_PASSWORD", PASSWORD);
    let out = run(c);
    expect_code(&out, 69);
    assert!(!out.stderr.contains("C: AUTH"), "no AUTH was sent\n{out}");
    assert_no_secret("stderr", &out.stderr);
    assert_all_deferred_at(&read_report(&fx.path("r.csv")), 3, "auth");
    assert!(sink.messages().is_empty());
    assert_eq!(sink.stats().sessions, 1, "refusing AUTH is not retried");

    let mut c = fx.send(&host_of(&sink));
    c.args(list_args("list.csv", "t.eml", "r.csv"))
        .args(["--auth-user", "u", "-v", "--allow-plaintext-auth"])
        .env("PIPEMAIL_PASSWORD", PASSWORD);
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.contains("S: 235"), "{out}");
    assert_no_secret("stderr", &out.stderr);
    assert_no_secret("report", &fx.read("r.csv"));
    assert_eq!(deliveries(&sink.messages()).len(), 3);

    // Without a password: a usage error, nothing sent.
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--auth-user",
        "u",
    ]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("PIPEMAIL_PASSWORD"), "{out}");
}

#[test]
fn self_signed_certificate_is_rejected_without_ca_file_or_insecure() {
    let fx = simple_fixture();
    let Some(identity) = self_signed(&fx) else {
        return;
    };
    let sink = start_sink(SinkConfig {
        tls: Some(identity),
        ..SinkConfig::default()
    });
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args(list_args("list.csv", "t.eml", "r.csv"))
        .args(["--retries", "2"]);
    let out = run(c);
    expect_code(&out, 69);
    assert!(out.stderr.contains("certificate"), "{out}");
    let rows = read_report(&fx.path("r.csv"));
    assert_all_deferred_at(&rows, 3, "tls");
    assert!(sink.messages().is_empty());

    // The CA file makes it work, over TLS.
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--ca-file", "cert.pem"]);
    expect_code(&run(c), 0);
    assert_eq!(sink.messages().len(), 3);

    // A CA file that does not exist: missing input.
    let mut c = fx.send_tls(&host_of(&sink), "starttls");
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--ca-file", "nope.pem"]);
    expect_code(&run(c), 66);
}

#[test]
fn server_without_pipelining_gets_lock_step_and_a_warning() {
    let fx = Fx::new();
    fx.write("list.csv", "email,name\na@x.example,A\nb@x.example,B\n");
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = start_sink(SinkConfig {
        pipelining: false,
        keep_in_memory: true,
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(
        out.stderr
            .contains("does not advertise PIPELINING: sending lock-step"),
        "{}",
        out.stderr
    );
    // 2 messages lock-step: 4 waits each, plus greeting, EHLO and QUIT.
    assert!(
        out.stderr.contains("11 round trips instead of 11"),
        "{}",
        out.stderr
    );
    assert_eq!(sink.messages().len(), 2);
}

// ----- a host that refuses pipelining after the end of data (issue 11) ----------------------

/// `pipemail send` against `sink --refuse-after-dot` over 4 connections: every row sent once,
/// one warning on stderr however many sessions stepped down, `-v` shows the refused command
/// and the server's reply, and the summary line names the level used.
#[test]
fn refusing_after_the_dot_warns_once_and_the_summary_names_the_level() {
    let fx = numbered_fixture('d', 1..=60);
    let sink = util::sink_with(SinkConfig {
        keep_in_memory: true,
        chunking: false,
        after_dot: pipemail::sink::AfterDot::Refuse,
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--report",
        "r.csv",
        "-v",
    ])
    .args(["--connections", "4"]);
    let out = run(c);
    expect_code(&out, 0);
    let rows = by_row(&read_report(&fx.path("r.csv")));
    assert_eq!(rows.len(), 60);
    assert!(rows.values().all(|r| r.status == "sent"), "{rows:?}");
    let want: BTreeMap<String, usize> = (1..=60).map(|i| (format!("d{i}@x.example"), 1)).collect();
    assert_eq!(deliveries(&sink.messages()), want);
    let warnings = out
        .stderr
        .lines()
        .filter(|l| l.contains("warning:") && l.contains("refused pipelining"))
        .count();
    assert_eq!(warnings, 1, "{}", out.stderr);
    assert!(
        out.stderr.lines().any(|l| l
            .contains("step-down cross-message -> within-message: C: MAIL FROM:")
            && l.contains("S: 503")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "; server refused pipelining after end of data: synced at end of data (2 round trips/message)"
        ),
        "{}",
        out.stderr
    );
}
