//! Issue 17, the MIME columns of a list that carries its message: `html` (an HTML
//! alternative), `attach` (files, `;`-separated, confined to the attachment directory),
//! `cc` and `bcc` (envelope copies, `Bcc:` removed). Stored messages are parsed by Python's
//! `email` package (`tests/support/mime_parse.py`).

use super::*;

#[path = "../support/mime.rs"]
mod mime_support;

use mime_support::{
    alternative_texts, binary, check_report_deliveries, header, no_defects, parse, payload,
    text_of, types,
};

/// The only stored message whose first recipient is `rcpt`.
#[track_caller]
fn message_of<'a>(msgs: &'a [StoredMessage], rcpt: &str) -> &'a StoredMessage {
    let found: Vec<&StoredMessage> = msgs
        .iter()
        .filter(|m| m.rcpts.first().map(String::as_str) == Some(rcpt))
        .collect();
    assert_eq!(found.len(), 1, "messages for {rcpt}: {found:?}");
    found[0]
}

/// Asserts a row failed at stage `input` with a response containing `why`.
#[track_caller]
fn failed_at_input(rows: &[Row], email: &str, why: &str) {
    let r = row_for(rows, email);
    assert_eq!(
        (r.status.as_str(), r.stage.as_deref()),
        ("failed", Some("input")),
        "{r:?}"
    );
    assert!(r.response.contains(why), "{email}: {r:?}");
}

const HTML_LIST: &str = "email,subject,body,html\n\
ann@x.example,Hello Ann,\"Text {{ 7*7 }} {% if 1 %}x{% endif %}\n\",\
\"<p>{{ 7*7 }} {% if 1 %}x{% endif %} &amp; <b>Ann</b></p>\n\"\n\
bob@x.example,Hello Bob,,<p>Only <b>HTML</b> for Bob</p>\n\
cy@x.example,Hello Cy,Just text,\n";

#[test]
fn html_column_with_body_is_multipart_alternative_and_values_stay_literal() {
    let fx = Fx::new();
    fx.write("l.csv", HTML_LIST);
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "l.csv", "--from", "me@example.org"])
        .args(["--report", "r.csv"]);
    expect_code(&run(c), 0);
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 3);

    let v = parse(&stored_for(&msgs, "ann@x.example").data);
    no_defects(&v);
    assert_eq!(header(&v, "Subject"), ["Hello Ann"]);
    let (text, html) = alternative_texts(&v["root"]);
    assert_eq!(text, "Text {{ 7*7 }} {% if 1 %}x{% endif %}\n");
    assert_eq!(
        html, "<p>{{ 7*7 }} {% if 1 %}x{% endif %} &amp; <b>Ann</b></p>\n",
        "the HTML value is sent as written: not a template, not escaped"
    );

    // Like a text body, a part ends with a line break (CRLF) whether the value has one or not.
    // An empty body: the text part is derived from the HTML.
    let v = parse(&stored_for(&msgs, "bob@x.example").data);
    no_defects(&v);
    let root = &v["root"];
    assert_eq!(types(root), ["text/plain", "text/html"]);
    assert!(
        text_of(&root["parts"][0]).contains("Only **HTML** for Bob"),
        "{}",
        text_of(&root["parts"][0])
    );
    assert_eq!(
        text_of(&root["parts"][1]),
        "<p>Only <b>HTML</b> for Bob</p>\n"
    );

    // An empty html value: a text message.
    let v = parse(&stored_for(&msgs, "cy@x.example").data);
    assert_eq!(v["root"]["content_type"], "text/plain");
    assert_eq!(text_of(&v["root"]), "Just text\n");
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:?}");
}

#[test]
fn a_list_without_a_body_column_derives_the_text_from_its_html() {
    let fx = Fx::new();
    fx.write(
        "l.csv",
        "email,subject,html\nann@x.example,S,<h1>Title</h1><p>Para</p>\n",
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "l.csv", "--from", "me@example.org"]);
    expect_code(&run(c), 0);
    let v = parse(&stored_for(&sink.messages(), "ann@x.example").data);
    no_defects(&v);
    let root = &v["root"];
    assert_eq!(types(root), ["text/plain", "text/html"]);
    let text = text_of(&root["parts"][0]);
    assert!(text.contains("Title") && text.contains("Para"), "{text}");
    assert_eq!(text_of(&root["parts"][1]), "<h1>Title</h1><p>Para</p>\n");
}

#[test]
fn attach_column_files_arrive_byte_equal_and_escapes_fail_only_their_row() {
    let fx = Fx::new();
    std::fs::create_dir_all(fx.path("lists/files")).expect("mkdir");
    let pdf = binary(20_000);
    let note = b"a note\r\nwith lines\n".to_vec();
    fx.write("lists/files/report.pdf", &pdf);
    fx.write("lists/files/note.txt", &note);
    fx.write("secret.txt", "TOP SECRET CONTENT");
    std::os::unix::fs::symlink("../secret.txt", fx.path("lists/link.txt")).expect("symlink");
    let absolute = fx.path("secret.txt").display().to_string();
    // Unreadable as such: a FIFO (opening it must not wait for a writer) and a directory.
    let mkfifo = std::process::Command::new("mkfifo")
        .arg(fx.path("lists/files/pipe"))
        .status()
        .expect("mkfifo runs");
    assert!(mkfifo.success());
    fx.write(
        "lists/l.csv",
        format!(
            "email,subject,body,attach\n\
             ann@x.example,Two files,Body A,files/report.pdf; files/note.txt\n\
             bob@x.example,Up,Body B,../secret.txt\n\
             cy@x.example,Abs,Body C,{absolute}\n\
             dee@x.example,Link,Body D,link.txt\n\
             eve@x.example,Missing,Body E,files/none.pdf\n\
             fay@x.example,None,Body F,\n\
             gus@x.example,One of two bad,Body G,files/note.txt;../secret.txt\n\
             hal@x.example,Fifo,Body H,files/pipe\n\
             ida@x.example,Dir,Body I,files\n"
        ),
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "lists/l.csv", "--from", "me@example.org"])
        .args(["--report", "r.csv"]);
    let out = run(c);
    expect_code(&out, 1);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 9, "every row once");
    for email in ["ann@x.example", "fay@x.example"] {
        assert_eq!(row_for(&rows, email).status, "sent", "{rows:?}");
    }
    failed_at_input(&rows, "bob@x.example", "outside the attachment directory");
    failed_at_input(&rows, "cy@x.example", "outside the attachment directory");
    failed_at_input(&rows, "dee@x.example", "outside the attachment directory");
    failed_at_input(&rows, "eve@x.example", "no such file");
    failed_at_input(&rows, "gus@x.example", "outside the attachment directory");
    failed_at_input(&rows, "hal@x.example", "not a regular file");
    failed_at_input(&rows, "ida@x.example", "not a regular file");

    let msgs = sink.messages();
    assert_eq!(msgs.len(), 2, "ann and fay");
    for m in &msgs {
        assert!(
            !String::from_utf8_lossy(&m.data).contains("TOP SECRET"),
            "an escaping file was attached"
        );
    }
    let v = parse(&stored_for(&msgs, "ann@x.example").data);
    no_defects(&v);
    let root = &v["root"];
    assert_eq!(root["content_type"], "multipart/mixed");
    assert_eq!(types(root), ["text/plain", "application/pdf", "text/plain"]);
    assert_eq!(text_of(&root["parts"][0]), "Body A\n");
    assert_eq!(root["parts"][1]["filename"], "report.pdf");
    assert_eq!(payload(&root["parts"][1]), pdf, "decoded byte-equal");
    assert_eq!(root["parts"][2]["filename"], "note.txt");
    assert_eq!(payload(&root["parts"][2]), note, "decoded byte-equal");
    let v = parse(&stored_for(&msgs, "fay@x.example").data);
    assert_eq!(v["root"]["content_type"], "text/plain");

    // --attach-dir: the paths resolve under it instead of the list's directory.
    std::fs::create_dir(fx.path("other")).expect("mkdir");
    fx.write("other/report.pdf", b"other pdf");
    fx.write(
        "lists/m.csv",
        "email,subject,body,attach\njon@x.example,S,B,report.pdf\n",
    );
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "lists/m.csv", "--from", "me@example.org"])
        .args(["--attach-dir", "other"]);
    expect_code(&run(c), 0);
    let v = parse(&stored_for(&sink.messages(), "jon@x.example").data);
    assert_eq!(payload(&v["root"]["parts"][1]), b"other pdf");
}

#[test]
fn cc_and_bcc_columns_join_the_envelope_and_bcc_never_shows() {
    let fx = Fx::new();
    fx.write(
        "l.csv",
        "email,subject,body,cc,bcc\n\
         ann@x.example,S1,B1,Copy <c1@c.example>,\"b1@b.example, Audit <b2@b.example>\"\n\
         bob@x.example,S2,B2,,b1@b.example\n\
         cy@x.example,S3,B3,,\"refused@bad.example, cy@x.example\"\n\
         dee@x.example,S4,B4,,not an address\n",
    );
    let sink = start_sink(SinkConfig {
        reject: rules(&["550:*@bad.example"]),
        ..SinkConfig::default()
    });
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "l.csv", "--from", "me@example.org"])
        .args(["--report", "r.csv"]);
    let out = run(c);
    expect_code(&out, 1);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 4);
    let ann = row_for(&rows, "ann@x.example");
    assert_eq!(ann.status, "sent");
    assert!(
        ann.response.ends_with(
            "; extra recipients: c1@c.example=250 2.0.0, b1@b.example=250 2.0.0, b2@b.example=250 2.0.0"
        ),
        "{ann:?}"
    );
    // A refused Bcc does not fail the row; the row's own address is not repeated.
    let cy = row_for(&rows, "cy@x.example");
    assert_eq!((cy.status.as_str(), cy.smtp_code), ("sent", Some(250)));
    assert!(
        cy.response
            .ends_with("; extra recipients: refused@bad.example=550 5.1.1"),
        "{cy:?}"
    );
    failed_at_input(&rows, "dee@x.example", "not a valid address");

    let msgs = sink.messages();
    assert_eq!(msgs.len(), 3);
    assert_eq!(
        message_of(&msgs, "ann@x.example").rcpts,
        [
            "ann@x.example",
            "c1@c.example",
            "b1@b.example",
            "b2@b.example"
        ]
    );
    assert_eq!(
        message_of(&msgs, "bob@x.example").rcpts,
        ["bob@x.example", "b1@b.example"]
    );
    assert_eq!(message_of(&msgs, "cy@x.example").rcpts, ["cy@x.example"]);
    let got = deliveries(&msgs);
    assert_eq!(
        got,
        BTreeMap::from(
            [
                ("ann@x.example", 1),
                ("b1@b.example", 2),
                ("b2@b.example", 1),
                ("bob@x.example", 1),
                ("c1@c.example", 1),
                ("cy@x.example", 1),
            ]
            .map(|(a, n)| (a.to_owned(), n))
        ),
        "every address got each of its messages once"
    );
    for m in &msgs {
        let text = String::from_utf8_lossy(&m.data);
        assert!(!text.contains("b.example"), "Bcc leaked:\n{text}");
        let v = parse(&m.data);
        no_defects(&v);
        assert!(header(&v, "Bcc").is_empty(), "{text}");
    }
    let v = parse(&message_of(&msgs, "ann@x.example").data);
    assert_eq!(header(&v, "Cc"), ["Copy <c1@c.example>"]);
    assert_eq!(text_of(&v["root"]), "B1\n");
}

#[test]
fn a_list_on_stdin_carries_html_and_attachments_from_the_current_directory() {
    let fx = Fx::new();
    fx.write("logo.bin", binary(3000));
    let list = "email,subject,body,html,attach\n\
                ann@x.example,From stdin,Text,<p>{% raw %}{{ x }}</p>,logo.bin\n\
                bob@x.example,Escape,Text,<p>x</p>,../logo.bin\n";
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "-", "--from", "me@example.org"])
        .args(["--report", "r.csv"])
        .write_stdin(list);
    expect_code(&run(c), 1);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(row_for(&rows, "ann@x.example").status, "sent");
    failed_at_input(&rows, "bob@x.example", "outside the attachment directory");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    let v = parse(&stored_for(&msgs, "ann@x.example").data);
    no_defects(&v);
    let root = &v["root"];
    assert_eq!(
        types(root),
        ["multipart/alternative", "application/octet-stream"]
    );
    let alt = &root["parts"][0];
    assert_eq!(types(alt), ["text/plain", "text/html"]);
    assert_eq!(text_of(&alt["parts"][1]), "<p>{% raw %}{{ x }}</p>\n");
    assert_eq!(payload(&root["parts"][1]), binary(3000));
}

#[test]
fn dry_run_and_dry_run_output_show_the_composed_messages() {
    let fx = Fx::new();
    std::fs::create_dir(fx.path("out")).expect("mkdir");
    fx.write("a.txt", "attached text\n");
    fx.write(
        "l.csv",
        "email,subject,body,html,attach,bcc\n\
         ann@x.example,S1,T1,<p>H1</p>,a.txt,hidden@b.example\n\
         bob@x.example,S2,T2,<p>H2</p>,,\n\
         cy@x.example,S3,T3,<p>H3</p>,missing.txt,\n",
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "l.csv", "--from", "me@example.org", "--dry-run"]);
    let out = run(c);
    expect_code(&out, 1);
    let v = parse(&out.stdout);
    no_defects(&v);
    assert_eq!(header(&v, "Subject"), ["S1"]);
    assert!(header(&v, "Bcc").is_empty());
    assert_eq!(
        types(&v["root"]),
        ["multipart/alternative", "text/plain"],
        "{out}"
    );
    assert!(out.stderr.contains("no such file"), "{out}");

    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "l.csv", "--from", "me@example.org", "--dry-run"])
        .args(["--output", "out"]);
    let out = run(c);
    expect_code(&out, 1);
    let v = parse(&std::fs::read(fx.path("out/1.eml")).expect("1.eml"));
    assert_eq!(payload(&v["root"]["parts"][1]), b"attached text\n");
    let v = parse(&std::fs::read(fx.path("out/2.eml")).expect("2.eml"));
    assert_eq!(types(&v["root"]), ["text/plain", "text/html"]);
    assert_eq!(text_of(&v["root"]["parts"][1]), "<p>H2</p>\n");
    assert!(
        !fx.path("out/3.eml").exists(),
        "a failing row writes nothing"
    );
    assert_eq!(sink.stats().sessions, 0, "nothing connects");
}

#[test]
fn postfix_delivers_a_lists_html_attachment_to_row_cc_and_bcc_once_each() {
    let Some(server) = support::PostfixSmtpd::start() else {
        return;
    };
    let fx = Fx::new();
    let attachment = binary(20 * 1024);
    fx.write("data.bin", &attachment);
    fx.write(
        "l.csv",
        "email,subject,text,html,attach,cc,bcc\n\
         ann@example.net,Report for ann@example.net,Grüße Ann!,<p>Grüße <b>Ann</b> {{ x }}</p>,\
         data.bin,cc@example.net,bcc@example.org\n\
         bob@example.org,Report for bob@example.org,Grüße Bob!,<p>Grüße <b>Bob</b> {{ x }}</p>,\
         data.bin,cc@example.net,bcc@example.org\n",
    );
    let mut c = fx.send_to_mta(server.addr());
    c.args(["--list", "l.csv", "--from", "team@example.org"])
        .args(["--report", "r.csv"]);
    expect_code(&run(c), 0);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r.status, "sent", "{r:?}");
        assert!(
            r.response
                .contains("extra recipients: cc@example.net=250 2.0.0, bcc@example.org=250 2.0.0"),
            "{r:?}"
        );
    }
    // 2 messages × (row + Cc + Bcc): Postfix's virtual delivery writes one file each.
    let delivered = server.wait_for_deliveries(6, Duration::from_secs(60));
    check_report_deliveries(
        &delivered,
        &[("ann@example.net", "Ann"), ("bob@example.org", "Bob")],
        ("cc@example.net", "bcc@example.org"),
        |name| format!("<p>Grüße <b>{name}</b> {{{{ x }}}}</p>\n"),
        &attachment,
    );
}

#[test]
fn attach_flag_adds_a_shared_file_and_html_attach_flags_refuse_per_row_templates() {
    let fx = Fx::new();
    fx.write("shared.txt", "for everyone\n");
    fx.write(
        "l.csv",
        "email,subject,body\nann@x.example,S,B\nbob@x.example,S,B\n",
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "l.csv", "--from", "me@example.org"])
        .args(["--attach", "shared.txt"]);
    expect_code(&run(c), 0);
    for rcpt in ["ann@x.example", "bob@x.example"] {
        let v = parse(&stored_for(&sink.messages(), rcpt).data);
        assert_eq!(types(&v["root"]), ["text/plain", "text/plain"]);
        assert_eq!(payload(&v["root"]["parts"][1]), b"for everyone\n");
    }
    // Templates a `template` column names are sent as rendered: the flags would not apply.
    fx.write("a.eml", "From: a@example.org\nSubject: A\n\nA\n");
    fx.write("t.csv", "email,template\nann@x.example,a.eml\n");
    fx.write("t.html", "<p>x</p>\n");
    for flags in [["--attach", "shared.txt"], ["--html", "t.html"]] {
        let mut c = fx.send(&host_of(&sink));
        c.args(["--list", "t.csv"]).args(flags);
        let out = run(c);
        expect_code(&out, 64);
        assert!(out.stderr.contains("`template` column"), "{out}");
    }
    assert_eq!(sink.stats().sessions, 1, "the refused runs connect nowhere");
}

#[test]
fn the_html_sample_list_delivers_to_the_sink() {
    let fx = Fx::new();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/list-with-html.csv");
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.arg("--list").arg(&sample).args(["--report", "r.csv"]);
    expect_code(&run(c), 0);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(rows.len(), 2);
    let msgs = sink.messages();
    assert_eq!(deliveries(&msgs)["archive@example.org"], 2);
    for (rcpt, plan) in [("ann@example.net", "pro"), ("bob@example.net", "free")] {
        let m = message_of(&msgs, rcpt);
        assert_eq!(m.from, "news@example.org");
        let v = parse(&m.data);
        no_defects(&v);
        assert!(header(&v, "Bcc").is_empty());
        let root = &v["root"];
        assert_eq!(types(root), ["multipart/related", "text/plain"]);
        assert_eq!(
            types(&root["parts"][0]),
            ["multipart/alternative", "image/png"]
        );
        assert_eq!(root["parts"][1]["filename"], format!("{plan}.txt"));
        let samples = sample.parent().expect("samples/");
        assert_eq!(
            payload(&root["parts"][0]["parts"][1]),
            std::fs::read(samples.join("logo.png")).expect("logo")
        );
        assert_eq!(
            payload(&root["parts"][1]),
            std::fs::read(samples.join(format!("plans/{plan}.txt"))).expect("plan")
        );
    }
}

#[test]
fn a_template_column_template_with_bcc_cc_or_attach_fails_its_rows_instead_of_leaking() {
    let fx = Fx::new();
    fx.write("ok.eml", "From: a@example.org\nSubject: ok\n\nOK\n");
    fx.write(
        "bcc.eml",
        "From: a@example.org\nBcc: hidden@b.example\nSubject: b\n\nB\n",
    );
    fx.write(
        "cc.eml",
        "From: a@example.org\ncc: copy@c.example\nSubject: c\n\nC\n",
    );
    fx.write(
        "att.eml",
        "From: a@example.org\nAttach: ok.eml\nSubject: a\n\nA\n",
    );
    fx.write(
        "l.csv",
        "email,template\nann@x.example,ok.eml\nbob@x.example,bcc.eml\n\
         cy@x.example,cc.eml\ndee@x.example,att.eml\n",
    );
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "l.csv", "--report", "r.csv"]);
    expect_code(&run(c), 1);
    let rows = read_report(&fx.path("r.csv"));
    assert_eq!(row_for(&rows, "ann@x.example").status, "sent");
    failed_at_input(&rows, "bob@x.example", "its Bcc: field needs --template");
    failed_at_input(&rows, "cy@x.example", "its cc: field needs --template");
    failed_at_input(&rows, "dee@x.example", "its Attach: field needs --template");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, ["ann@x.example"]);
}
