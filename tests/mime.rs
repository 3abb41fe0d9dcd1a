//! Composed MIME messages, parsed back by an independent parser: Python's `email` package
//! with `policy.default` (`tests/support/mime_parse.py`), compared part by part.

#[path = "support/mime.rs"]
mod mime_support;

use std::path::Path;

use mime_support::*;
use pipemail::message::{AttachProblem, ComposeError, Composer, ComposerOptions, write_eml};
use pipemail::template::Template;

const TEXT: &str = "From: Team <team@example.org>\nTo: {{ name }} <{{ email }}>\nSubject: Hello {{ name }}\n\nDear {{ name }},\n{{ note }}\n";

#[test]
fn text_only_is_one_7bit_text_part() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email", "name", "note"]);
    let comp = composer(TEXT, None, &c, dir.path(), &[]);
    let m = comp
        .compose(
            &row(1, &["a@example.com", "Ann", "line1\nline2"]),
            &c,
            &opts(false),
        )
        .expect("compose");
    check_wire(&m, false);
    assert!(m.extra_recipients.is_empty());
    let v = parse(&m.data);
    no_defects(&v);
    assert_eq!(header(&v, "Subject"), ["Hello Ann"]);
    assert_eq!(header(&v, "To"), ["Ann <a@example.com>"]);
    assert_eq!(header(&v, "MIME-Version"), ["1.0"]);
    assert_eq!(
        header(&v, "Message-ID"),
        [format!("<{}>", m.message_id).as_str()]
    );
    let root = &v["root"];
    assert_eq!(root["content_type"], "text/plain");
    assert_eq!(root["charset"], "utf-8");
    assert_eq!(root["cte"], "7bit");
    assert_eq!(text_of(root), "Dear Ann,\nline1\nline2\n");
}

#[test]
fn html_template_makes_multipart_alternative_with_escaped_values() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email", "name", "note"]);
    let html = "<html><body><h1>Hi {{ name }}</h1><p>{{ note }}</p><p>{{ note | safe }}</p></body></html>\n";
    let comp = composer(TEXT, Some(html), &c, dir.path(), &[]);
    let m = comp
        .compose(
            &row(1, &["a@example.com", "Ann & Bob", "<b>bold</b>"]),
            &c,
            &opts(false),
        )
        .expect("compose");
    check_wire(&m, false);
    let v = parse(&m.data);
    no_defects(&v);
    let (text, h) = alternative_texts(&v["root"]);
    assert_eq!(text, "Dear Ann & Bob,\n<b>bold</b>\n");
    assert!(h.contains("<h1>Hi Ann &amp; Bob</h1>"), "{h}");
    assert!(h.contains("<p>&lt;b&gt;bold&lt;&#x2f;b&gt;</p>"), "{h}");
    assert!(
        h.contains("<p><b>bold</b></p>"),
        "|safe inserts raw HTML: {h}"
    );
}

#[test]
fn html_without_text_body_derives_the_text() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email", "name"]);
    let html =
        "<h1>Welcome {{ name }}</h1><p>Read the <a href=\"https://example.org/x\">news</a>.</p>";
    let comp = composer(
        "From: t@example.org\nSubject: s\n\n",
        Some(html),
        &c,
        dir.path(),
        &[],
    );
    let m = comp
        .compose(&row(1, &["a@example.com", "Ann"]), &c, &opts(false))
        .expect("compose");
    let v = parse(&m.data);
    no_defects(&v);
    let root = &v["root"];
    assert_eq!(types(root), ["text/plain", "text/html"]);
    let t = text_of(&root["parts"][0]);
    assert!(t.contains("Welcome Ann") && t.contains("news"), "{t}");
    assert!(!t.contains('<'), "{t}");
}

#[test]
fn markdown_becomes_text_and_html_never_text_markdown() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email", "name"]);
    let md = "From: t@example.org\nSubject: s\nContent-Type: text/markdown; charset=utf-8\n\n# Hello {{ name }}\n\nThis is **bold** and a [link](https://example.org/).\n\n- one\n- two\n";
    let comp = composer(md, None, &c, dir.path(), &[]);
    let m = comp
        .compose(
            &row(1, &["a@example.com", "<script>x</script>"]),
            &c,
            &opts(false),
        )
        .expect("compose");
    check_wire(&m, false);
    assert!(!data_text(&m).to_ascii_lowercase().contains("text/markdown"));
    let v = parse(&m.data);
    no_defects(&v);
    let root = &v["root"];
    assert_eq!(types(root), ["text/plain", "text/html"]);
    assert_eq!(
        text_of(&root["parts"][0]),
        "# Hello <script>x</script>\n\nThis is **bold** and a [link](https://example.org/).\n\n- one\n- two\n"
    );
    let h = text_of(&root["parts"][1]);
    assert!(
        h.contains("<h1>Hello &lt;script&gt;x&lt;/script&gt;</h1>"),
        "{h}"
    );
    assert!(
        h.contains("<strong>bold</strong>") && h.contains("<li>two</li>"),
        "{h}"
    );
    assert!(!h.contains("<script>"), "{h}");
}

#[test]
fn shared_and_per_row_attachments_decode_byte_equal() {
    let dir = tempfile::tempdir().expect("tmp");
    let shared = binary(100 * 1024);
    std::fs::write(dir.path().join("report.pdf"), &shared).expect("write");
    std::fs::create_dir(dir.path().join("rows")).expect("mkdir");
    let mine = binary(20 * 1024 + 3).into_iter().rev().collect::<Vec<u8>>();
    std::fs::write(dir.path().join("rows/Größe 1.csv"), &mine).expect("write");
    let c = cols(&["email", "file"]);
    let t = "From: t@example.org\nSubject: s\nAttach: rows/{{ file }}\n\nSee attached.\n";
    let comp = composer(t, None, &c, dir.path(), &["report.pdf"]);
    let m = comp
        .compose(&row(1, &["a@example.com", "Größe 1.csv"]), &c, &opts(false))
        .expect("compose");
    check_wire(&m, false);
    assert!(
        !data_text(&m).contains("Attach:"),
        "the Attach field is removed"
    );
    let v = parse(&m.data);
    no_defects(&v);
    let root = &v["root"];
    assert_eq!(root["content_type"], "multipart/mixed");
    assert_eq!(types(root), ["text/plain", "application/pdf", "text/csv"]);
    let parts = root["parts"].as_array().expect("parts");
    assert_eq!(text_of(&parts[0]), "See attached.\n");
    assert_eq!(parts[1]["disposition"], "attachment");
    assert_eq!(parts[1]["filename"], "report.pdf");
    assert_eq!(parts[1]["cte"], "base64");
    assert_eq!(payload(&parts[1]), shared);
    assert_eq!(parts[2]["filename"], "Größe 1.csv", "RFC 2231 file name");
    assert_eq!(parts[2]["cte"], "base64");
    assert_eq!(payload(&parts[2]), mine);
    assert!(data_text(&m).contains("filename*"), "RFC 2231 form");
    // The shared attachment's encoded bytes are the same in every message.
    let m2 = comp
        .compose(&row(2, &["b@example.com", "Größe 1.csv"]), &c, &opts(false))
        .expect("compose");
    assert_eq!(payload(&parse(&m2.data)["root"]["parts"][1]), shared);
}

#[test]
fn cid_references_make_multipart_related() {
    let dir = tempfile::tempdir().expect("tmp");
    let png = binary(3000);
    std::fs::write(dir.path().join("logo.png"), &png).expect("write");
    std::fs::write(dir.path().join("terms.txt"), "terms\n").expect("write");
    let c = cols(&["email", "name"]);
    let html = "<p>Hi {{ name }}</p><img src=\"cid:logo.png\" alt=\"logo\">";
    let comp = composer(
        TEXT.replace("{{ note }}", "").as_str(),
        Some(html),
        &c,
        dir.path(),
        &["logo.png", "terms.txt"],
    );
    let m = comp
        .compose(&row(1, &["a@example.com", "Ann"]), &c, &opts(false))
        .expect("compose");
    check_wire(&m, false);
    let v = parse(&m.data);
    no_defects(&v);
    let root = &v["root"];
    assert_eq!(types(root), ["multipart/related", "text/plain"]);
    let related = &root["parts"][0];
    assert_eq!(types(related), ["multipart/alternative", "image/png"]);
    assert_eq!(types(&related["parts"][0]), ["text/plain", "text/html"]);
    let img = &related["parts"][1];
    assert_eq!(img["content_id"], "<logo.png>");
    assert_eq!(img["disposition"], "inline");
    assert_eq!(payload(img), png);
    assert_eq!(root["parts"][1]["filename"], "terms.txt");
    assert_eq!(payload(&root["parts"][1]), b"terms\n");
}

#[test]
fn attach_paths_that_escape_fail_only_their_row() {
    let dir = tempfile::tempdir().expect("tmp");
    let outside = tempfile::tempdir().expect("tmp");
    std::fs::write(outside.path().join("secret.txt"), "secret").expect("write");
    let base = dir.path().join("attach");
    std::fs::create_dir(&base).expect("mkdir");
    std::fs::write(base.join("ok.txt"), "fine").expect("write");
    std::fs::create_dir(base.join("sub")).expect("mkdir");
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), base.join("link.txt"))
        .expect("symlink");
    std::os::unix::fs::symlink(outside.path(), base.join("sub/out")).expect("symlink");
    std::os::unix::fs::symlink(base.join("ok.txt"), base.join("inside.txt")).expect("symlink");
    let c = cols(&["email", "file"]);
    let mut t = Template::parse_for_mime(
        b"From: t@example.org\nSubject: s\nAttach: {{ file }}\n\nx\n",
        "t.eml",
        &c,
    )
    .expect("parse");
    t.add_html(b"<p>x</p>", "t.html", &c).expect("html");
    let comp = Composer::new(
        t,
        &ComposerOptions {
            attach: vec![],
            attach_dir: base.clone(),
            ..ComposerOptions::default()
        },
    )
    .expect("composer");
    let secret = outside.path().join("secret.txt");
    let cases: Vec<(String, AttachProblem)> = vec![
        ("../attach/ok.txt".into(), AttachProblem::Escapes),
        ("sub/../ok.txt".into(), AttachProblem::Escapes),
        (secret.display().to_string(), AttachProblem::Escapes),
        ("link.txt".into(), AttachProblem::Escapes),
        ("sub/out/secret.txt".into(), AttachProblem::Escapes),
        ("missing.txt".into(), AttachProblem::Missing),
        ("sub".into(), AttachProblem::NotAFile),
        ("  ".into(), AttachProblem::Empty),
        // CR/LF in a value cannot add a header: sanitized to spaces, then no such file.
        (
            "ok.txt\r\nBcc: v@example.com".into(),
            AttachProblem::Missing,
        ),
    ];
    for (i, (path, problem)) in cases.iter().enumerate() {
        let err = comp
            .compose(
                &row(i as u64 + 1, &["a@example.com", path]),
                &c,
                &opts(false),
            )
            .expect_err(path);
        assert_eq!(
            err,
            ComposeError::Attach {
                path: path.trim().replace(['\r', '\n'], " "),
                problem: problem.clone()
            },
            "{path}"
        );
        // The next rows render fine.
        for good in ["ok.txt", "./ok.txt", "inside.txt"] {
            let m = comp
                .compose(&row(99, &["b@example.com", good]), &c, &opts(false))
                .expect(good);
            assert!(
                data_text(&m).contains("ZmluZQ=="),
                "{good}: base64 of \"fine\""
            );
        }
    }
    let m = comp
        .compose(&row(99, &["b@example.com", "inside.txt"]), &c, &opts(false))
        .expect("inside");
    assert_eq!(payload(&parse(&m.data)["root"]["parts"][1]), b"fine");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let locked = base.join("locked.txt");
        std::fs::write(&locked, "x").expect("write");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        // Root reads it anyway; anyone else gets a per-row error.
        match comp.compose(&row(5, &["a@example.com", "locked.txt"]), &c, &opts(false)) {
            Ok(_) => {}
            Err(e) => assert!(
                matches!(
                    &e,
                    ComposeError::Attach {
                        problem: AttachProblem::Unreadable(_),
                        ..
                    }
                ),
                "{e:?}"
            ),
        }
    }
}

#[test]
fn long_lines_are_encoded_never_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email", "note", "subject"]);
    let long_template_line = "t".repeat(1500);
    let src = format!(
        "From: t@example.org\nSubject: {{{{ subject }}}}\n\n{long_template_line}\n{{{{ note }}}}\nend\n"
    );
    assert!(
        Template::parse(src.as_bytes(), "t.eml", &c).is_err(),
        "the raw API refuses"
    );
    let comp = composer(&src, None, &c, dir.path(), &[]);
    let note = "word ".repeat(1000);
    let subject = "s".repeat(2000);
    for eight in [false, true] {
        let m = comp
            .compose(
                &row(1, &["a@example.com", &note, &subject]),
                &c,
                &opts(eight),
            )
            .expect("compose");
        check_wire(&m, eight);
        let v = parse(&m.data);
        no_defects(&v);
        assert_eq!(v["root"]["cte"], "quoted-printable");
        assert_eq!(
            text_of(&v["root"]),
            format!("{long_template_line}\n{note}\nend\n")
        );
        assert_eq!(header(&v, "Subject"), [subject.as_str()]);
    }
}

#[test]
fn eight_bit_text_with_and_without_8bitmime() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email", "name", "note"]);
    let comp = composer(TEXT, Some("<p>{{ note }}</p>"), &c, dir.path(), &[]);
    let r = row(
        1,
        &[
            "a@example.com",
            "Jürgen",
            "Greetings from Köln, see you at the meeting — the team 😀",
        ],
    );
    let without = comp.compose(&r, &c, &opts(false)).expect("compose");
    check_wire(&without, false);
    assert!(!without.eight_bit);
    let with = comp.compose(&r, &c, &opts(true)).expect("compose");
    check_wire(&with, true);
    assert!(with.eight_bit);
    for (m, cte) in [(&without, "quoted-printable"), (&with, "8bit")] {
        let v = parse(&m.data);
        no_defects(&v);
        assert_eq!(header(&v, "Subject"), ["Hello Jürgen"]);
        let parts = &v["root"]["parts"];
        assert_eq!(parts[0]["cte"], cte);
        assert_eq!(
            text_of(&parts[0]),
            "Dear Jürgen,\nGreetings from Köln, see you at the meeting — the team 😀\n"
        );
        assert_eq!(
            text_of(&parts[1]),
            "<p>Greetings from Köln, see you at the meeting — the team 😀</p>\n"
        );
    }
    // Mostly non-ASCII text goes base64 without 8BITMIME.
    let r = row(2, &["a@example.com", "x", &"ü".repeat(200)]);
    let m = comp.compose(&r, &c, &opts(false)).expect("compose");
    check_wire(&m, false);
    let v = parse(&m.data);
    assert_eq!(v["root"]["parts"][0]["cte"], "base64");
    assert!(text_of(&v["root"]["parts"][0]).contains(&"ü".repeat(200)));
}

#[test]
fn cc_and_bcc_join_the_envelope_and_bcc_is_never_sent() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email", "cc", "bcc"]);
    let t = "From: t@example.org\nTo: {{ email }}\n{% if cc %}\nCc: {{ cc }}\n{% endif %}\nBcc: archive@example.org{% if bcc %}, {{ bcc }}{% endif %}\nSubject: s\n\nx\n";
    let comp = composer(t, None, &c, dir.path(), &[]);
    let m = comp
        .compose(
            &row(
                1,
                &[
                    "a@example.com",
                    "\"Boss, The\" <boss@example.com>, A@example.com",
                    "audit@example.net",
                ],
            ),
            &c,
            &opts(false),
        )
        .expect("compose");
    assert_eq!(
        m.extra_recipients,
        [
            "boss@example.com",
            "archive@example.org",
            "audit@example.net"
        ]
    );
    let text = data_text(&m).to_ascii_lowercase();
    assert!(!text.contains("bcc"), "{text}");
    assert!(
        !text.contains("archive@") && !text.contains("audit@"),
        "{text}"
    );
    let v = parse(&m.data);
    assert_eq!(
        header(&v, "Cc"),
        ["\"Boss, The\" <boss@example.com>, A@example.com"]
    );
    assert!(header(&v, "Bcc").is_empty());
    // No Cc: no empty Cc field; only the Bcc archive.
    let m = comp
        .compose(&row(2, &["b@example.com", "", ""]), &c, &opts(false))
        .expect("compose");
    assert_eq!(m.extra_recipients, ["archive@example.org"]);
    assert!(!data_text(&m).contains("Cc:"));
    // An invalid address fails the row, at input.
    let err = comp
        .compose(
            &row(3, &["c@example.com", "not an address", ""]),
            &c,
            &opts(false),
        )
        .expect_err("invalid");
    assert_eq!(
        err,
        ComposeError::Address {
            field: "Cc".into(),
            value: "not an address".into()
        }
    );
    let err = comp
        .compose(&row(4, &["c@example.com", "", "x@y@z"]), &c, &opts(false))
        .expect_err("invalid");
    assert!(
        matches!(err, ComposeError::Address { ref field, .. } if field == "Bcc"),
        "{err}"
    );
}

#[test]
fn jinja_filters_users_expect() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email", "name"]);
    let t = "From: t@example.org\nSubject: {{ name | truncate(length=8) }}\n\nhttps://example.org/u?e={{ email | urlencode }}\n{{ name | tojson }} {{ name.upper() }} {{ name | wordcount }}\n";
    let comp = composer(t, None, &c, dir.path(), &[]);
    let m = comp
        .compose(
            &row(1, &["a+b@example.com", "Ann Marie Smith"]),
            &c,
            &opts(false),
        )
        .expect("compose");
    let v = parse(&m.data);
    assert_eq!(header(&v, "Subject"), ["Ann..."]);
    assert_eq!(
        text_of(&v["root"]),
        "https://example.org/u?e=a%2Bb%40example.com\n\"Ann Marie Smith\" ANN MARIE SMITH 3\n"
    );
    // The raw API has them too.
    let t = Template::parse(b"Subject: x\n\n{{ email|urlencode }}", "t", &c).expect("parse");
    let r = t
        .render(&row(1, &["a b@example.com", ""]), &c, &opts(false).render)
        .expect("render");
    assert!(String::from_utf8_lossy(&r.data).ends_with("a%20b%40example.com\r\n"));
}

#[test]
fn a_hand_written_content_type_is_sent_as_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email"]);
    let t = "From: t@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain\n\nhi\n--b1--\n";
    let comp = composer(t, None, &c, dir.path(), &[]);
    let m = comp
        .compose(&row(1, &["a@example.com"]), &c, &opts(false))
        .expect("compose");
    assert!(
        data_text(&m).ends_with("\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1--\r\n")
    );
    assert_eq!(data_text(&m).matches("MIME-Version").count(), 1);
    std::fs::write(dir.path().join("f.txt"), "x").expect("write");
    let comp = composer(t, None, &c, dir.path(), &["f.txt"]);
    let err = comp
        .compose(&row(1, &["a@example.com"]), &c, &opts(false))
        .expect_err("raw + attachment");
    assert!(matches!(err, ComposeError::RawBody { .. }), "{err:?}");
}

#[test]
fn eml_files_are_created_new_without_following_symlinks() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write_eml(dir.path(), 7, b"Subject: x\r\n\r\nhi\r\n").expect("write");
    assert_eq!(p, dir.path().join("7.eml"));
    assert_eq!(
        std::fs::read(&p).expect("read"),
        b"Subject: x\r\n\r\nhi\r\n"
    );
    let err = write_eml(dir.path(), 7, b"again").expect_err("exists");
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    let target = dir.path().join("target");
    std::fs::write(&target, "keep").expect("write");
    std::os::unix::fs::symlink(&target, dir.path().join("8.eml")).expect("symlink");
    assert!(write_eml(dir.path(), 8, b"evil").is_err());
    assert_eq!(std::fs::read(&target).expect("read"), b"keep");
    let dangling = dir.path().join("nowhere");
    std::os::unix::fs::symlink(&dangling, dir.path().join("9.eml")).expect("symlink");
    assert!(write_eml(dir.path(), 9, b"evil").is_err());
    assert!(!dangling.exists());
}

#[test]
fn setup_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email"]);
    let t = Template::parse_for_mime(b"From: t@example.org\n\nx", "t.eml", &c).expect("parse");
    let err = Composer::new(
        t,
        &ComposerOptions {
            attach: vec![dir.path().join("nope.pdf")],
            attach_dir: dir.path().to_owned(),
            ..ComposerOptions::default()
        },
    )
    .expect_err("missing");
    assert!(err.is_missing());
    assert!(err.to_string().contains("nope.pdf"), "{err}");
}

/// Every row of the sample list composes with the sample Markdown template (per-row `Attach:`)
/// and with the sample text + HTML templates and the shared inline logo.
#[test]
fn samples_compose_for_every_row() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut list =
        pipemail::input::ListReader::open(&samples.join("recipients.csv")).expect("list");
    let c = list.headers().to_vec();
    let read = |f: &str| std::fs::read(samples.join(f)).expect("sample");
    let md = Composer::new(
        Template::parse_for_mime(&read("markdown.eml"), "markdown.eml", &c).expect("parse"),
        &ComposerOptions {
            attach: vec![],
            attach_dir: samples.clone(),
            ..ComposerOptions::default()
        },
    )
    .expect("composer");
    let mut t = Template::parse_for_mime(&read("template.eml"), "template.eml", &c).expect("t");
    t.add_html(&read("newsletter.html"), "newsletter.html", &c)
        .expect("html");
    let html = Composer::new(
        t,
        &ComposerOptions {
            attach: vec![samples.join("logo.png")],
            attach_dir: samples.clone(),
            ..ComposerOptions::default()
        },
    )
    .expect("composer");
    let mut rows = 0;
    while let Some(r) = list.next_row() {
        let r = r.expect("row");
        if r.problem.is_some() {
            continue;
        }
        rows += 1;
        let a = md.compose(&r, &c, &opts(false)).expect("markdown");
        check_wire(&a, false);
        let b = html.compose(&r, &c, &opts(true)).expect("html");
        check_wire(&b, true);
        if rows <= 3 {
            let v = parse(&a.data);
            no_defects(&v);
            assert_eq!(types(&v["root"]), ["multipart/alternative", "text/plain"]);
            let plan = r.fields[3].to_ascii_lowercase();
            assert_eq!(v["root"]["parts"][1]["filename"], format!("{plan}.txt"));
            let v = parse(&b.data);
            assert_eq!(types(&v["root"]), ["multipart/alternative", "image/png"]);
            assert_eq!(v["root"]["content_type"], "multipart/related");
            assert_eq!(payload(&v["root"]["parts"][1]), read("logo.png"));
        }
    }
    assert!(rows >= 290, "{rows}");
}

#[test]
fn a_text_html_template_body_is_html_with_escaped_values() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email", "name"]);
    let t = "From: t@example.org\nSubject: s\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n<h1>Hi {{ name }}</h1>\n<p>Bye</p>\n";
    let comp = composer(t, None, &c, dir.path(), &[]);
    let m = comp
        .compose(&row(1, &["a@example.com", "<i>Ann</i>"]), &c, &opts(false))
        .expect("compose");
    check_wire(&m, false);
    assert_eq!(
        data_text(&m).matches("Content-Transfer-Encoding").count(),
        2
    );
    let v = parse(&m.data);
    no_defects(&v);
    assert_eq!(types(&v["root"]), ["text/plain", "text/html"]);
    let t = text_of(&v["root"]["parts"][0]);
    assert!(t.contains("Hi <i>Ann</i>") && t.contains("Bye"), "{t}");
    let h = text_of(&v["root"]["parts"][1]);
    assert!(h.contains("<h1>Hi &lt;i&gt;Ann&lt;&#x2f;i&gt;</h1>"), "{h}");
}

#[test]
fn per_row_files_are_reused_only_while_unchanged() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = cols(&["email", "file"]);
    let t = "From: t@example.org\nSubject: s\nAttach: {{ file }}\n\nx\n";
    for cache in [0, 1 << 20] {
        std::fs::write(dir.path().join("plan.txt"), "version one").expect("write");
        let comp = Composer::new(
            Template::parse_for_mime(t.as_bytes(), "t.eml", &c).expect("parse"),
            &ComposerOptions {
                attach: vec![],
                attach_dir: dir.path().to_owned(),
                attach_cache: cache,
            },
        )
        .expect("composer");
        let attached = |n: u64| {
            let m = comp
                .compose(&row(n, &["a@example.com", "plan.txt"]), &c, &opts(false))
                .expect("compose");
            payload(&parse(&m.data)["root"]["parts"][1])
        };
        assert_eq!(attached(1), b"version one");
        assert_eq!(attached(2), b"version one");
        std::fs::write(dir.path().join("plan.txt"), "version two, longer").expect("write");
        assert_eq!(attached(3), b"version two, longer", "cache {cache}");
        std::fs::remove_file(dir.path().join("plan.txt")).expect("rm");
        let err = comp
            .compose(&row(4, &["a@example.com", "plan.txt"]), &c, &opts(false))
            .expect_err("gone");
        assert!(
            matches!(
                err,
                ComposeError::Attach {
                    problem: AttachProblem::Missing,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
