//! Deliverability in `send`: one-click unsubscribe headers per row, suppression lists,
//! `--suppress-add`, DSN parameters on the wire (with and without the extension) and a per-row
//! VERP envelope sender.

use super::*;

const LIST: &str =
    "email,name\r\nann+news@x.example,Ann\r\nbob@y.example,Bob\r\ncy@blocked.example,Cy\r\n";

fn fixture() -> Fx {
    let fx = Fx::new();
    fx.write("list.csv", LIST);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    fx
}

/// The (unfolded) fields `name` of the message's header section.
fn header(data: &str, name: &str) -> Vec<String> {
    let head = data.split("\r\n\r\n").next().unwrap_or_default();
    head.replace("\r\n ", " ")
        .split("\r\n")
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn unsubscribe_headers_are_rendered_per_row_with_urlencode() {
    let fx = fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"]).args([
        "--unsubscribe",
        "https://news.example.org/u?e={{ email|urlencode }}&r={{ row }}",
        "--unsubscribe-mailto",
        "unsubscribe@example.org",
    ]);
    let out = run(c);
    expect_code(&out, 0);
    let msgs = sink.messages();
    for (n, addr, enc) in [
        (1, "ann+news@x.example", "ann%2Bnews%40x.example"),
        (2, "bob@y.example", "bob%40y.example"),
    ] {
        let m = stored_for(&msgs, addr);
        let data = String::from_utf8_lossy(&m.data);
        assert_eq!(
            header(&data, "List-Unsubscribe"),
            [format!(
                "List-Unsubscribe: <https://news.example.org/u?e={enc}&r={n}>, <mailto:unsubscribe@example.org>"
            )],
            "{data}"
        );
        assert_eq!(
            header(&data, "List-Unsubscribe-Post"),
            ["List-Unsubscribe-Post: List-Unsubscribe=One-Click"]
        );
    }
}

#[test]
fn a_plain_http_unsubscribe_url_is_a_usage_error() {
    let fx = fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--unsubscribe", "http://news.example.org/u"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("https"), "{out}");
    assert!(sink.messages().is_empty());
}

#[test]
fn suppressed_addresses_and_domains_never_get_a_rcpt() {
    let fx = fixture();
    fx.write(
        "suppress.txt",
        "# unsubscribed\nBOB@y.example\n\n@blocked.example\n",
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "-v"])
        .args(["--suppress", "suppress.txt", "--report", "r.csv"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(!out.stderr.contains("RCPT TO:<bob@"), "{out}");
    assert!(!out.stderr.contains("blocked.example>"), "{out}");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, ["ann+news@x.example"]);
    let rows = by_row(&read_report(&fx.path("r.csv")));
    for n in [2, 3] {
        assert_eq!(rows[&n].status, "skipped", "{:?}", rows[&n]);
        assert_eq!(rows[&n].response, "suppressed");
    }
    // --dry-run counts them as skipped too.
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--dry-run"])
        .args(["--suppress", "suppress.txt"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stderr.contains("1 messages would be sent"), "{out}");
    assert!(out.stderr.contains("2 duplicates skipped"), "{out}");
}

#[test]
fn suppress_add_appends_permanent_recipient_failures_after_the_run() {
    let fx = fixture();
    fx.write("bounced.txt", "old@z.example\n");
    let sink = start_sink(SinkConfig {
        reject: rules(&["550:bob@*", "450:cy@*"]),
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--retries",
        "0",
    ])
    .args(["--suppress-add", "bounced.txt"]);
    let out = run(c);
    expect_code(&out, 1);
    // 550 5.1.1 is permanent and about the address; 450 4.2.0 is not.
    assert_eq!(fx.read("bounced.txt"), "old@z.example\nbob@y.example\n");
    // The next run skips it.
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--dry-run"])
        .args(["--suppress", "bounced.txt"]);
    let out = run(c);
    assert!(out.stderr.contains("2 messages would be sent"), "{out}");
}

#[test]
fn dsn_parameters_are_sent_only_to_a_server_offering_dsn() {
    for offered in [true, false] {
        let fx = fixture();
        let sink = start_sink(SinkConfig {
            dsn: offered,
            ..SinkConfig::default()
        });
        let mut c = fx.send(&host_of(&sink));
        c.args(["--list", "list.csv", "--template", "t.eml", "-v"])
            .args(["--dsn-notify", "failure,delay", "--dsn-ret", "hdrs"]);
        let out = run(c);
        expect_code(&out, 0);
        assert_eq!(sink.messages().len(), 3, "{out}");
        let mails: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("C: MAIL FROM:") || l.starts_with("C: RCPT TO:"))
            .collect();
        assert_eq!(mails.len(), 6, "{out}");
        if offered {
            let envids: Vec<&str> = mails
                .iter()
                .filter_map(|l| l.split(" ENVID=").nth(1))
                .collect();
            assert_eq!(envids.len(), 3, "{mails:?}");
            let campaign = envids[0].rsplit_once('.').expect("campaign.row").0;
            assert!(campaign.starts_with("pm-"), "{envids:?}");
            for (i, e) in envids.iter().enumerate() {
                assert_eq!(*e, format!("{campaign}.{}", i + 1));
            }
            assert!(mails.contains(
                &"C: RCPT TO:<ann+news@x.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;ann+2Bnews@x.example"
            ), "{mails:?}");
            assert!(
                mails
                    .iter()
                    .filter(|l| l.starts_with("C: MAIL"))
                    .all(|l| l.contains(" RET=HDRS ENVID=")),
                "{mails:?}"
            );
            assert!(!out.stderr.contains("does not advertise DSN"), "{out}");
        } else {
            assert!(out.stderr.contains("does not advertise DSN"), "{out}");
            assert!(
                mails.iter().all(|l| !l.contains("NOTIFY=")
                    && !l.contains("RET=")
                    && !l.contains("ENVID=")),
                "{mails:?}"
            );
        }
    }
}

#[test]
fn a_templated_from_gives_each_row_its_own_envelope_sender() {
    let fx = fixture();
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--from", "bounces+{{ row }}@example.org"]);
    let out = run(c);
    expect_code(&out, 0);
    let msgs = sink.messages();
    assert_eq!(
        stored_for(&msgs, "ann+news@x.example").from,
        "bounces+1@example.org"
    );
    assert_eq!(
        stored_for(&msgs, "bob@y.example").from,
        "bounces+2@example.org"
    );
    assert_eq!(
        stored_for(&msgs, "cy@blocked.example").from,
        "bounces+3@example.org"
    );
    // A sender that renders invalid fails that row at stage input.
    let out = fx.send_list(&sink, "r.csv", &["--from", "{{ name }} <x@example.org>"]);
    expect_code(&out, 1);
    let rows = read_report(&fx.path("r.csv"));
    assert!(
        rows.iter()
            .all(|r| r.status == "failed" && r.stage.as_deref() == Some("input")),
        "{rows:?}"
    );
}

#[test]
fn dkim_record_prints_the_txt_record_of_a_key() {
    let fx = Fx::new();
    let pem = openssl::pkey::PKey::generate_ed25519()
        .expect("key")
        .private_key_to_pem_pkcs8()
        .expect("pem");
    fx.write("ed.pem", &pem);
    let mut c = fx.cmd();
    c.args(["dkim-record", "--key", "ed.pem", "--selector", "s1"])
        .args(["--domain", "example.org"]);
    let out = run(c);
    expect_code(&out, 0);
    let line = out.stdout_text();
    assert!(
        line.starts_with("s1._domainkey.example.org. IN TXT ( \"v=DKIM1; k=ed25519; p="),
        "{out}"
    );
    assert!(!line.contains("PRIVATE"), "{out}");
    let mut c = fx.cmd();
    c.args(["dkim-record", "--key", "nope.pem", "--selector", "s1"]);
    expect_code(&run(c), 66);
}

#[test]
fn dry_run_shows_the_finished_first_message() {
    let fx = fixture();
    let pem = openssl::pkey::PKey::generate_ed25519()
        .expect("key")
        .private_key_to_pem_pkcs8()
        .expect("pem");
    fx.write("ed.pem", &pem);
    let mut c = fx.cmd();
    c.args(["send", "--host", "127.0.0.1:9", "--dry-run"])
        .args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--unsubscribe", "https://x.example/u/{{ row }}"])
        .args(["--dkim-key", "ed.pem", "--dkim-selector", "s1"]);
    let out = run(c);
    expect_code(&out, 0);
    let first = out.stdout_text();
    assert!(
        first.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
        "{out}"
    );
    assert!(
        first.contains("List-Unsubscribe: <https://x.example/u/1>"),
        "{out}"
    );
}

#[test]
fn row_is_the_row_number_in_the_template_and_html_unless_the_list_has_a_row_column() {
    let fx = fixture();
    fx.write(
        "row.eml",
        "From: Sender <sender@example.org>\nTo: {{ email }}\nSubject: Issue {{ row }} for {{ name }}\n\nYou are number {{ row }}; times ten: {{ row * 10 }}.\n",
    );
    fx.write("row.html", "<p>row-{{ row }}-html {{ name }}</p>\n");
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(list_args("list.csv", "row.eml", "r.csv"));
    expect_code(&run(c), 0);
    let msgs = sink.messages();
    for (n, addr, name) in [
        (1, "ann+news@x.example", "Ann"),
        (2, "bob@y.example", "Bob"),
        (3, "cy@blocked.example", "Cy"),
    ] {
        let data = String::from_utf8_lossy(&stored_for(&msgs, addr).data).into_owned();
        assert_eq!(
            header(&data, "Subject"),
            [format!("Subject: Issue {n} for {name}")]
        );
        assert!(
            data.ends_with(&format!(
                "\r\n\r\nYou are number {n}; times ten: {}.\r\n",
                n * 10
            )),
            "{data}"
        );
    }

    // --html: the same number in the HTML part.
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "row.eml"])
        .args(["--html", "row.html"]);
    expect_code(&run(c), 0);
    let msgs = sink.messages();
    for (n, addr) in [(1, "ann+news@x.example"), (3, "cy@blocked.example")] {
        let data = String::from_utf8_lossy(&stored_for(&msgs, addr).data).into_owned();
        assert!(data.contains(&format!("<p>row-{n}-html ")), "{data}");
        assert!(data.contains(&format!("You are number {n};")), "{data}");
    }

    // A list column named `row` wins, in the template and in --from alike.
    fx.write(
        "rowcol.csv",
        "email,row,name\r\nann@x.example,A-17,Ann\r\nbob@y.example,B-4,Bob\r\n",
    );
    fx.write(
        "rowcol.eml",
        "From: Sender <sender@example.org>\nTo: {{ email }}\nSubject: Ticket {{ row }}\n\nTicket {{ row }}.\n",
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "rowcol.csv", "--template", "rowcol.eml"])
        .args(["--from", "bounces+{{ row }}@example.org"]);
    expect_code(&run(c), 0);
    let msgs = sink.messages();
    for (addr, id) in [("ann@x.example", "A-17"), ("bob@y.example", "B-4")] {
        let m = stored_for(&msgs, addr);
        let data = String::from_utf8_lossy(&m.data);
        assert_eq!(header(&data, "Subject"), [format!("Subject: Ticket {id}")]);
        assert!(data.ends_with(&format!("Ticket {id}.\r\n")), "{data}");
        assert_eq!(m.from, format!("bounces+{id}@example.org"));
    }

    // The row number is a per-row placeholder: --batch-recipients refuses it before connecting.
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "row.eml"])
        .args(["--batch-recipients", "10"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("{{ row }}"), "{out}");
    assert!(sink.messages().is_empty());
}
