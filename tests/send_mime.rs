//! `pipemail send` with MIME composition (issue 12): `--html`, Markdown templates,
//! `--attach`, per-row `Attach:`, `Cc:`/`Bcc:` in the envelope, 8BITMIME or not, and
//! `--dry-run --output DIR`. Stored messages are parsed by Python's `email` package
//! (`tests/support/mime_parse.py`) and compared part by part with what was rendered.

mod util;

#[path = "support/mime.rs"]
mod mime_support;

use std::collections::HashMap;
use std::path::Path;

use mime_support::{binary, header, no_defects, parse, payload, text_of, types};
use pipemail::report::{ReportRow, Stage, Status};
use pipemail::sink::{SinkConfig, SinkHandle};
use serde_json::Value;
use util::{Fx, expect_code, host_of, list_args, read_report, rules, run, sink_with};

fn send(fx: &Fx, host: &str) -> assert_cmd::Command {
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
    .args(["--retry-delay", "10ms", "--timeout", "60s", "--quiet"]);
    c
}

/// The Maildir messages of a sink (one file per message, whatever its recipients).
fn maildir_messages(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("new"))
        .expect("maildir new/")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect()
}

fn by_row(rows: &[ReportRow]) -> HashMap<u64, &ReportRow> {
    rows.iter().map(|r| (r.row, r)).collect()
}

/// The decoded part of `v` whose content type is `ty`, depth first.
fn find<'a>(v: &'a Value, ty: &str) -> Vec<&'a Value> {
    let mut out = Vec::new();
    fn walk<'a>(p: &'a Value, ty: &str, out: &mut Vec<&'a Value>) {
        if p["content_type"] == ty {
            out.push(p);
        }
        if let Some(parts) = p["parts"].as_array() {
            parts.iter().for_each(|q| walk(q, ty, out));
        }
    }
    walk(v, ty, &mut out);
    out
}

const LIST: &str = "email,name,plan\n\
ann@x.example,Ann,gold\n\
bob@y.example,Bob & Co,free\n\
cy@x.example,Cy,../../etc/passwd\n\
dee@x.example,Dee,missing\n";

const TEXT: &str = "From: Team <team@example.org>\n\
To: {{ name }} <{{ email }}>\n\
Cc: Copy <cc@copies.example>\n\
Bcc: hidden@audit.example\n\
Subject: Plan {{ plan }} for {{ name }}\n\
Attach: plans/{{ plan }}.txt\n\
\n\
Hello {{ name }},\n\
your plan is {{ plan }}.\n";

const HTML: &str =
    "<html><body><h1>Hello {{ name }}</h1><p>Plan <b>{{ plan }}</b></p></body></html>\n";

fn mime_fixture() -> (Fx, Vec<u8>, Vec<u8>) {
    let fx = Fx::new();
    fx.write("list.csv", LIST);
    std::fs::create_dir(fx.path("tpl")).expect("mkdir");
    std::fs::create_dir(fx.path("tpl/plans")).expect("mkdir");
    fx.write("tpl/t.eml", TEXT);
    fx.write("tpl/t.html", HTML);
    let gold = binary(30_000);
    let free = b"free plan: 1 msg/s\n".to_vec();
    fx.write("tpl/plans/gold.txt", &gold);
    fx.write("tpl/plans/free.txt", &free);
    fx.write("secret.txt", "not to be attached");
    let shared = binary(100 * 1024);
    fx.write("logo.bin", &shared);
    (fx, gold, shared)
}

#[test]
fn html_attachments_cc_bcc_end_to_end_through_the_sink_maildir() {
    let (fx, gold, shared) = mime_fixture();
    let maildir = fx.path("Maildir");
    let sink = sink_with(SinkConfig {
        maildir: Some(maildir.clone()),
        ..SinkConfig::default()
    });
    let mut c = send(&fx, &host_of(&sink));
    c.args(["--list", "list.csv", "--template", "tpl/t.eml"])
        .args(["--html", "tpl/t.html", "--attach", "logo.bin"])
        .args(["--report", "r.csv"]);
    let out = run(c);
    expect_code(&out, 1);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 4, "one report line per row");
    let rows = by_row(&rows);
    for n in [1, 2] {
        let r = rows[&n];
        assert_eq!(r.status, Status::Sent, "{r:?}");
        assert!(
            r.response.ends_with(
                "; extra recipients: cc@copies.example=250 2.0.0, hidden@audit.example=250 2.0.0"
            ),
            "{r:?}"
        );
    }
    // Path escapes and missing files fail only their row, at stage input, with the reason.
    for n in [3, 4] {
        let r = rows[&n];
        assert_eq!(r.status, Status::Failed, "{r:?}");
        assert_eq!(r.stage, Some(Stage::Input), "{r:?}");
        assert!(r.response.starts_with("Attach:"), "{r:?}");
    }

    let stored = sink.messages();
    assert_eq!(stored.len(), 2);
    let files = maildir_messages(&maildir);
    assert_eq!(files.len(), 2, "one Maildir file per message");
    // Every Cc/Bcc address got each message once, with the row's own address.
    let mut count: HashMap<String, usize> = HashMap::new();
    for m in &stored {
        for r in &m.rcpts {
            *count.entry(r.clone()).or_default() += 1;
        }
    }
    assert_eq!(count["cc@copies.example"], 2);
    assert_eq!(count["hidden@audit.example"], 2);
    assert_eq!(count["ann@x.example"], 1);
    assert_eq!(count["bob@y.example"], 1);
    for data in &files {
        let text = String::from_utf8_lossy(data);
        assert!(
            !text.contains("hidden@audit.example"),
            "Bcc leaked:\n{text}"
        );
        assert!(!text.to_ascii_lowercase().contains("\nbcc:"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        let v = parse(data);
        no_defects(&v);
        assert_eq!(header(&v, "Cc"), ["Copy <cc@copies.example>"]);
        let root = &v["root"];
        assert_eq!(root["content_type"], "multipart/mixed");
        assert_eq!(
            types(root),
            [
                "multipart/alternative",
                "application/octet-stream",
                "text/plain"
            ]
        );
        let subject = header(&v, "Subject")[0].to_owned();
        let (name, plan) = if subject.ends_with("Ann") {
            ("Ann", "gold")
        } else {
            ("Bob & Co", "free")
        };
        let alt = &root["parts"][0];
        assert_eq!(types(alt), ["text/plain", "text/html"]);
        assert_eq!(
            text_of(&alt["parts"][0]),
            format!("Hello {name},\nyour plan is {plan}.\n")
        );
        let html_name = name.replace('&', "&amp;");
        assert_eq!(
            text_of(&alt["parts"][1]),
            format!(
                "<html><body><h1>Hello {html_name}</h1><p>Plan <b>{plan}</b></p></body></html>\n"
            )
        );
        let logo = &root["parts"][1];
        assert_eq!(logo["filename"], "logo.bin");
        assert_eq!(payload(logo), shared, "shared attachment byte-equal");
        let per_row = &root["parts"][2];
        assert_eq!(per_row["filename"], format!("{plan}.txt"));
        let expected = if plan == "gold" {
            gold.clone()
        } else {
            b"free plan: 1 msg/s\n".to_vec()
        };
        assert_eq!(payload(per_row), expected, "per-row attachment byte-equal");
    }
}

#[test]
fn a_refused_bcc_does_not_fail_the_row_and_is_in_the_response() {
    let fx = Fx::new();
    fx.write("list.csv", "email,name\nann@x.example,Ann\n");
    fx.write(
        "t.eml",
        "From: team@example.org\nTo: {{ email }}\nBcc: audit@bad.example, ann@x.example\nSubject: s\n\nHi {{ name }}\n",
    );
    let sink = sink_with(SinkConfig {
        reject: rules(&["550:*@bad.example"]),
        ..SinkConfig::default()
    });
    let mut c = send(&fx, &host_of(&sink));
    c.args(list_args("list.csv", "t.eml", "r.csv"));
    let out = run(c);
    expect_code(&out, 0);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, Status::Sent, "{:?}", rows[0]);
    assert_eq!(rows[0].smtp_code, Some(250));
    assert!(
        rows[0]
            .response
            .ends_with("; extra recipients: audit@bad.example=550 5.1.1"),
        "{:?}",
        rows[0]
    );
    let stored = sink.messages();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].rcpts,
        ["ann@x.example"],
        "the row's own address once"
    );
    assert!(!String::from_utf8_lossy(&stored[0].data).contains("audit@"));
}

/// UTF-8 text and a 3,000-octet line: encoded (never refused), 8bit only with 8BITMIME.
#[test]
fn long_lines_and_8bit_text_with_and_without_8bitmime() {
    let long = "x".repeat(3000);
    for eight_bit_mime in [true, false] {
        let fx = Fx::new();
        fx.write("list.csv", "email,name\nann@x.example,Jürgen\n");
        fx.write(
            "t.eml",
            format!("From: team@example.org\nTo: {{{{ email }}}}\nSubject: s\n\nGrüße {{{{ name }}}}\n{long}\n"),
        );
        let sink: SinkHandle = sink_with(SinkConfig {
            eight_bit_mime,
            ..SinkConfig::default()
        });
        let mut c = send(&fx, &host_of(&sink));
        c.args(list_args("list.csv", "t.eml", "r.csv"));
        let out = run(c);
        expect_code(&out, 0);
        let stored = sink.messages();
        assert_eq!(stored.len(), 1);
        let data = &stored[0].data;
        for line in data.split(|&b| b == b'\n') {
            assert!(line.len() <= 999, "line of {} octets", line.len());
        }
        if !eight_bit_mime {
            assert!(data.is_ascii(), "8-bit octets sent without 8BITMIME");
        }
        let v = parse(data);
        no_defects(&v);
        let root = &v["root"];
        assert_eq!(root["content_type"], "text/plain");
        assert_eq!(text_of(root), format!("Grüße Jürgen\n{long}\n"));
        if eight_bit_mime {
            // A line over 998 octets still needs an encoding; the short UTF-8 lines alone
            // would go as 8bit.
            assert_ne!(root["cte"], "7bit");
        } else {
            assert!(
                root["cte"] == "quoted-printable" || root["cte"] == "base64",
                "{}",
                root["cte"]
            );
        }
    }
}

#[test]
fn utf8_text_goes_8bit_with_8bitmime_and_encoded_without() {
    for eight_bit_mime in [true, false] {
        let fx = Fx::new();
        fx.write("list.csv", "email,name\nann@x.example,Jürgen\n");
        fx.write(
            "t.eml",
            "From: team@example.org\nTo: {{ email }}\nSubject: s\n\nGrüße {{ name }}\n",
        );
        let sink = sink_with(SinkConfig {
            eight_bit_mime,
            ..SinkConfig::default()
        });
        let mut c = send(&fx, &host_of(&sink));
        c.args(["--list", "list.csv", "--template", "t.eml"]);
        expect_code(&run(c), 0);
        let stored = sink.messages();
        let v = parse(&stored[0].data);
        no_defects(&v);
        assert_eq!(text_of(&v["root"]), "Grüße Jürgen\n");
        if eight_bit_mime {
            assert_eq!(v["root"]["cte"], "8bit");
        } else {
            assert!(stored[0].data.is_ascii());
            assert_ne!(v["root"]["cte"], "8bit");
        }
    }
}

#[test]
fn markdown_template_becomes_text_and_html_alternatives() {
    let fx = Fx::new();
    fx.write("list.csv", "email,name\nann@x.example,Ann\n");
    fx.write(
        "t.eml",
        "From: team@example.org\nTo: {{ email }}\nSubject: s\nContent-Type: text/markdown\n\n# Hello {{ name }}\n\n- **bold** item\n",
    );
    let sink = sink_with(SinkConfig::default());
    let mut c = send(&fx, &host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"]);
    expect_code(&run(c), 0);
    let stored = sink.messages();
    let v = parse(&stored[0].data);
    no_defects(&v);
    let root = &v["root"];
    assert_eq!(root["content_type"], "multipart/alternative");
    assert_eq!(types(root), ["text/plain", "text/html"]);
    assert_eq!(
        text_of(&root["parts"][0]),
        "# Hello Ann\n\n- **bold** item\n"
    );
    let html = text_of(&root["parts"][1]);
    assert!(html.contains("<h1>Hello Ann</h1>"), "{html}");
    assert!(html.contains("<strong>bold</strong>"), "{html}");
    assert_eq!(find(root, "text/html").len(), 1);
}

#[test]
fn html_only_derives_the_text_part() {
    let fx = Fx::new();
    fx.write("list.csv", "email,name\nann@x.example,Ann\n");
    fx.write(
        "t.eml",
        "From: team@example.org\nTo: {{ email }}\nSubject: s\n\n",
    );
    fx.write("t.html", "<p>Hello <b>{{ name }}</b></p>\n");
    let sink = sink_with(SinkConfig::default());
    let mut c = send(&fx, &host_of(&sink));
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--html",
        "t.html",
    ]);
    expect_code(&run(c), 0);
    let v = parse(&sink.messages()[0].data);
    let root = &v["root"];
    assert_eq!(types(root), ["text/plain", "text/html"]);
    assert!(text_of(&root["parts"][0]).contains("Hello"), "{root}");
    assert!(text_of(&root["parts"][0]).contains("Ann"), "{root}");
}

#[test]
fn missing_attach_file_stops_the_run_before_connecting() {
    let fx = Fx::new();
    fx.write("list.csv", "email\nann@x.example\n");
    fx.write("t.eml", "From: team@example.org\nSubject: s\n\nHi\n");
    let mut c = send(&fx, "127.0.0.1:9");
    c.args([
        "--list",
        "list.csv",
        "--template",
        "t.eml",
        "--attach",
        "nope.pdf",
    ]);
    let out = run(c);
    expect_code(&out, 66);
    assert!(out.stderr.contains("nope.pdf"), "{out}");
}

#[test]
fn dry_run_output_writes_one_eml_per_row_and_never_overwrites() {
    let (fx, gold, _) = mime_fixture();
    std::fs::create_dir(fx.path("out")).expect("mkdir");
    let args = [
        "--list",
        "list.csv",
        "--template",
        "tpl/t.eml",
        "--html",
        "tpl/t.html",
        "--dry-run",
        "--output",
        "out",
    ];
    let mut c = send(&fx, "127.0.0.1:9");
    c.args(args);
    let out = run(c);
    expect_code(&out, 1); // rows 3 and 4 fail (Attach: outside the directory, missing)
    assert!(out.stderr.contains("row 3"), "{out}");
    let mut names: Vec<_> = std::fs::read_dir(fx.path("out"))
        .expect("out")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["1.eml", "2.eml"]);
    let data = std::fs::read(fx.path("out/1.eml")).expect("1.eml");
    assert!(
        data.is_ascii(),
        "dry-run messages are composed for 7-bit servers"
    );
    let v = parse(&data);
    no_defects(&v);
    assert!(!String::from_utf8_lossy(&data).contains("hidden@audit.example"));
    let att = find(&v["root"], "text/plain")
        .into_iter()
        .find(|p| p["filename"] == "gold.txt")
        .map(payload);
    let att = att.or_else(|| {
        find(&v["root"], "application/octet-stream")
            .into_iter()
            .find(|p| p["filename"] == "gold.txt")
            .map(payload)
    });
    assert_eq!(att, Some(gold));

    // A second run into the same directory: the existing file is an error, kept as it was.
    let mut c = send(&fx, "127.0.0.1:9");
    c.args(args);
    let out = run(c);
    expect_code(&out, 74);
    assert!(out.stderr.contains("1.eml"), "{out}");
    assert_eq!(std::fs::read(fx.path("out/1.eml")).expect("1.eml"), data);

    // A symlink planted in the output directory is not followed.
    std::fs::create_dir(fx.path("out2")).expect("mkdir");
    fx.write("victim.txt", "keep me");
    std::os::unix::fs::symlink(fx.path("victim.txt"), fx.path("out2/1.eml")).expect("symlink");
    let mut c = send(&fx, "127.0.0.1:9");
    c.args(args.map(|a| if a == "out" { "out2" } else { a }));
    expect_code(&run(c), 74);
    assert_eq!(fx.read("victim.txt"), "keep me");
}

/// The row's own address deferred and retried: a Cc the first attempt delivered is not
/// sent again, and the final row still shows its outcome.
#[test]
fn a_retried_row_does_not_send_again_to_cc_that_already_got_it() {
    let fx = Fx::new();
    fx.write("list.csv", "email,name\nslow@x.example,Ann\n");
    fx.write(
        "t.eml",
        "From: team@example.org\nTo: {{ email }}\nCc: cc@copies.example\nSubject: s\n\nHi {{ name }}\n",
    );
    let sink = sink_with(SinkConfig {
        reject: rules(&["450:slow@*"]),
        ..SinkConfig::default()
    });
    let mut c = send(&fx, &host_of(&sink));
    c.args(list_args("list.csv", "t.eml", "r.csv"))
        .args(["--retries", "2"]);
    let out = run(c);
    expect_code(&out, 75);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.status, Status::Deferred, "{r:?}");
    assert_eq!(r.attempts, 3, "{r:?}");
    assert!(
        r.response
            .ends_with("; extra recipients: cc@copies.example=250 2.0.0"),
        "{r:?}"
    );
    let stored = sink.messages();
    assert_eq!(
        stored.len(),
        1,
        "only the first attempt had a recipient to deliver to"
    );
    assert_eq!(stored[0].rcpts, ["cc@copies.example"]);
}

/// `--batch-recipients` with MIME templates: one composed message per transaction (Markdown
/// or `--html` alternatives, a shared and a template attachment), every row's address in one
/// of the envelopes once.
#[test]
fn batches_are_composed_as_mime() {
    let rows = 7;
    let list: String = std::iter::once("email,name\n".to_owned())
        .chain((0..rows).map(|i| format!("r{i}@x.example,R {i}\n")))
        .collect();
    let markdown = "From: team@example.org\nTo: news@example.org\nSubject: s\nContent-Type: text/markdown\nAttach: plans/gold.txt\n\n# News\n\n- **one** item\n";
    let text = "From: team@example.org\nTo: news@example.org\nSubject: s\nAttach: plans/gold.txt\n\nNews, one item.\n";
    for (template, html) in [
        (markdown, None),
        (
            text,
            Some("<p>News, <b>one</b> item <img src=\"cid:logo.bin\"></p>\n"),
        ),
    ] {
        let (fx, gold, shared) = mime_fixture();
        fx.write("list.csv", &list);
        fx.write("tpl/b.eml", template);
        let sink = sink_with(SinkConfig::default());
        let mut c = send(&fx, &host_of(&sink));
        c.args(["--list", "list.csv", "--template", "tpl/b.eml"])
            .args(["--attach", "logo.bin", "--batch-recipients", "3"])
            .args(["--report", "r.csv"]);
        if let Some(h) = html {
            fx.write("tpl/b.html", h);
            c.args(["--html", "tpl/b.html"]);
        }
        expect_code(&run(c), 0);
        let report = read_report(&fx.path("r.csv"));
        assert_eq!(report.len(), rows);
        assert!(
            report.iter().all(|r| r.status == Status::Sent),
            "{report:?}"
        );
        let stored = sink.messages();
        assert_eq!(stored.len(), 3, "7 rows in transactions of 3, 3 and 1");
        let mut rcpts: Vec<String> = stored.iter().flat_map(|m| m.rcpts.clone()).collect();
        rcpts.sort();
        let mut want: Vec<String> = (0..rows).map(|i| format!("r{i}@x.example")).collect();
        want.sort();
        assert_eq!(rcpts, want, "each row's address once");
        for m in &stored {
            let v = parse(&m.data);
            no_defects(&v);
            let root = &v["root"];
            assert_eq!(root["content_type"], "multipart/mixed", "{root}");
            let alt = find(root, "multipart/alternative");
            assert_eq!(alt.len(), 1, "{root}");
            assert_eq!(types(alt[0]), ["text/plain", "text/html"]);
            let html_text = text_of(find(root, "text/html")[0]);
            assert!(
                html_text.contains("<b>one</b>") || html_text.contains("<strong>one</strong>"),
                "{html_text}"
            );
            let files: Vec<&Value> = find(root, "application/octet-stream");
            let logo = files
                .iter()
                .find(|p| p["filename"] == "logo.bin")
                .expect("logo");
            assert_eq!(payload(logo), shared, "shared attachment byte-equal");
            if html.is_some() {
                assert_eq!(
                    find(root, "multipart/related").len(),
                    1,
                    "cid:logo.bin inline"
                );
            }
            let plan = find(root, "text/plain")
                .into_iter()
                .find(|p| p["filename"] == "gold.txt")
                .expect("Attach: plans/gold.txt");
            assert_eq!(payload(plan), gold, "template attachment byte-equal");
        }
    }
}

#[test]
fn batches_refuse_cc_and_bcc_fields() {
    let fx = Fx::new();
    fx.write("list.csv", "email\na@x.example\nb@x.example\n");
    fx.write(
        "t.eml",
        "From: team@example.org\nTo: news@example.org\nBcc: audit@example.org\nSubject: s\n\nHi\n",
    );
    let mut c = send(&fx, "127.0.0.1:9");
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--batch-recipients", "2"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("Bcc: field"), "{}", out.stderr);
}
