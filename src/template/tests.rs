//! Tests of template parsing and rendering.

use super::header::{FOLD_AT, MAX_ENCODED_WORD};
use super::*;
use base64::Engine as _;
use time::macros::datetime;

fn cols(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn row(fields: &[&str]) -> Row {
    Row {
        number: 7,
        line: 8,
        email: fields[0].trim().to_owned(),
        fields: fields.iter().map(|s| (*s).to_owned()).collect(),
        problem: None,
    }
}

fn opts() -> RenderOptions {
    RenderOptions {
        smtputf8: false,
        now: datetime!(2026-11-25 20:14:18 UTC),
        message_id_domain: None,
    }
}

const BASIC: &str = "From: Sender <sender@example.org>\nTo: {{ name }} <{{ email }}>\nSubject: Hello {{ name }}\n\nDear {{ name }},\n{{ note }}\n";

fn basic() -> (Template, Vec<String>) {
    let c = cols(&["email", "name", "note"]);
    (
        Template::parse(BASIC.as_bytes(), "msg.eml", &c).expect("parse"),
        c,
    )
}

fn text(r: &Rendered) -> String {
    String::from_utf8(r.data.clone()).expect("utf-8")
}

#[test]
fn renders_basic_message() {
    let (t, c) = basic();
    assert_eq!(t.header_names(), ["From", "To", "Subject"]);
    assert_eq!(t.variables(), ["email", "name", "note"]);
    assert_eq!(t.from_address().as_deref(), Some("sender@example.org"));
    let r = t
        .render(&row(&["a@example.com", "Ann", "line1\nline2"]), &c, &opts())
        .expect("render");
    let s = text(&r);
    assert!(!r.sanitized);
    assert_eq!(
        header_lines(&r.data),
        [
            "From: Sender <sender@example.org>",
            "To: Ann <a@example.com>",
            "Subject: Hello Ann",
            "Date: Wed, 25 Nov 2026 20:14:18 +0000",
            &format!("Message-ID: <{}>", r.message_id),
        ]
    );
    assert!(
        s.ends_with("\r\n\r\nDear Ann,\r\nline1\r\nline2\r\n"),
        "{s:?}"
    );
    let pid = std::process::id();
    assert_eq!(
        r.message_id,
        format!("1795637658000000000.7.{pid}@example.org")
    );
    assert_eq!(
        from_address_of(&r.data).as_deref(),
        Some("sender@example.org")
    );
}

#[test]
fn line_endings_are_normalized() {
    let c = cols(&["email"]);
    for src in [
        "From: a@example.org\r\nSubject: x\r\n\r\nbody\r\nmore",
        "From: a@example.org\rSubject: x\r\rbody\rmore",
        "From: a@example.org\nSubject: x\n\nbody\nmore\n",
    ] {
        let t = Template::parse(src.as_bytes(), "t", &c).expect("parse");
        let r = t
            .render(&row(&["b@example.com"]), &c, &opts())
            .expect("render");
        let s = text(&r);
        assert!(s.ends_with("\r\n\r\nbody\r\nmore\r\n"), "{s:?}");
        assert_eq!(s.matches('\n').count(), s.matches("\r\n").count());
        assert_eq!(s.matches('\r').count(), s.matches("\r\n").count());
    }
}

#[test]
fn body_values_with_bare_cr_and_lf_become_crlf() {
    let (t, c) = basic();
    let r = t
        .render(&row(&["a@example.com", "Ann", "x\ry\r\nz\n"]), &c, &opts())
        .expect("render");
    assert!(text(&r).ends_with("Dear Ann,\r\nx\r\ny\r\nz\r\n\r\n"));
}

#[test]
fn header_injection_is_neutralized() {
    let (t, c) = basic();
    let evil = "x\r\nBcc: victim@example.com";
    let r = t
        .render(&row(&["a@example.com", evil, evil]), &c, &opts())
        .expect("render");
    assert!(r.sanitized);
    let headers = header_lines(&r.data);
    assert_eq!(
        headers.iter().filter(|l| l.starts_with("Subject:")).count(),
        1
    );
    assert!(
        headers
            .iter()
            .all(|l| !l.to_ascii_lowercase().starts_with("bcc"))
    );
    assert!(headers.contains(&"Subject: Hello x  Bcc: victim@example.com".to_owned()));
    // In the body it is just text.
    assert!(text(&r).contains("\r\n\r\nDear x\r\nBcc: victim@example.com,\r\n"));
    // Other control characters too, but not TAB.
    let r = t
        .render(
            &row(&["a@example.com", "a\0b\u{7f}c\u{85}d\te", ""]),
            &c,
            &opts(),
        )
        .expect("render");
    assert!(r.sanitized);
    assert!(header_lines(&r.data).contains(&"Subject: Hello a b c d\te".to_owned()));
}

#[test]
fn rfc2047_for_address_display_names_and_subject() {
    let (t, c) = basic();
    let r = t
        .render(&row(&["a@example.com", "Jürgen Größe", ""]), &c, &opts())
        .expect("render");
    let h = header_lines(&r.data);
    assert!(h.iter().all(|l| l.is_ascii()), "{h:?}");
    assert_eq!(h[1], "To: =?UTF-8?B?SsO8cmdlbiBHcsO2w59l?= <a@example.com>");
    assert_eq!(h[2], "Subject: =?UTF-8?B?SGVsbG8gSsO8cmdlbiBHcsO2w59l?=");
    // Not with SMTPUTF8.
    let o = RenderOptions {
        smtputf8: true,
        ..opts()
    };
    let r = t
        .render(&row(&["a@example.com", "Jürgen", ""]), &c, &o)
        .expect("render");
    let h = header_lines(&r.data);
    assert_eq!(h[1], "To: Jürgen <a@example.com>");
    assert_eq!(h[2], "Subject: Hello Jürgen");
}

#[test]
fn rfc2047_quoted_names_lists_and_long_values_fold() {
    let c = cols(&["email", "name", "subject"]);
    let t = Template::parse(
        b"From: \"{{ name }}\" <s@example.org>, Plain <p@example.org>\nTo: {{ email }}\nSubject: {{ subject }}\n\nx\n",
        "t",
        &c,
    )
    .expect("parse");
    let long = "Ünïcödé ".repeat(40);
    let r = t
        .render(&row(&["a@example.com", "Doe, Jöhn", &long]), &c, &opts())
        .expect("render");
    let h = header_lines(&r.data);
    assert_eq!(
        h[0],
        "From: =?UTF-8?B?RG9lLCBKw7Zobg==?= <s@example.org>, Plain <p@example.org>"
    );
    assert_eq!(h[1], "To: a@example.com");
    let subject: Vec<&String> = h
        .iter()
        .skip_while(|l| !l.starts_with("Subject:"))
        .take_while(|l| l.starts_with("Subject:") || l.starts_with(' '))
        .collect();
    assert!(subject.len() > 5);
    for l in &subject {
        assert!(l.len() <= FOLD_AT, "{l}");
        for w in l.split(' ').filter(|w| w.starts_with("=?")) {
            assert!(w.len() <= MAX_ENCODED_WORD, "{w}");
        }
    }
    // Decoding the words gives the value back.
    let mut decoded = Vec::new();
    for l in &subject {
        for w in l.split(' ').filter(|w| w.starts_with("=?")) {
            let b64 = &w[10..w.len() - 2];
            decoded.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64"),
            );
        }
    }
    assert_eq!(String::from_utf8(decoded).expect("utf-8"), long.trim());
    assert_eq!(from_address_of(&r.data).as_deref(), Some("s@example.org"));
}

#[test]
fn template_message_id_and_date_are_kept() {
    let c = cols(&["email"]);
    let t = Template::parse(
        b"From: a@example.org\ndate: Mon, 1 Jan 2024 00:00:00 +0000\nMESSAGE-ID: <abc.{{ email }}@example.org>\n\nx",
        "t",
        &c,
    )
    .expect("parse");
    let r = t
        .render(&row(&["b@example.com"]), &c, &opts())
        .expect("render");
    assert_eq!(r.message_id, "abc.b@example.com@example.org");
    let h = header_lines(&r.data);
    assert_eq!(h.len(), 3, "{h:?}");
}

#[test]
fn message_id_domain_choice() {
    let c = cols(&["email", "from"]);
    let t = Template::parse(b"From: {{ from }}\n\nx", "t", &c).expect("parse");
    assert_eq!(t.from_address(), None, "From has a placeholder");
    let o = RenderOptions {
        message_id_domain: Some("ids.example.net".to_owned()),
        ..opts()
    };
    let r = t
        .render(&row(&["b@example.com", "X <x@Mail.Example.org>"]), &c, &o)
        .expect("render");
    assert!(r.message_id.ends_with("@ids.example.net"));
    let r = t
        .render(
            &row(&["b@example.com", "X <x@Mail.Example.org>"]),
            &c,
            &opts(),
        )
        .expect("render");
    assert!(
        r.message_id.ends_with("@mail.example.org"),
        "{}",
        r.message_id
    );
    let r = t
        .render(&row(&["b@example.com", "nobody"]), &c, &opts())
        .expect("render");
    assert!(r.message_id.ends_with("@pipemail.invalid"));
    assert_eq!(from_address_of(&r.data), None);
}

#[test]
fn from_address_forms() {
    assert_eq!(
        from_address_of(b"Subject: x\r\nFrom: a@b.example (Al)\r\n\r\nFrom: c@d.example\r\n")
            .as_deref(),
        Some("a@b.example")
    );
    assert_eq!(
        from_address_of(b"From: \"Smith, <J>\"\r\n <j@x.example>\r\n\r\n").as_deref(),
        Some("j@x.example")
    );
    assert_eq!(from_address_of(b"To: a@b.example\r\n\r\n"), None);
    let t = Template::parse(b"From: \"Team\" <team@example.org>\n\nhi", "t", &[]).expect("parse");
    assert_eq!(t.from_address().as_deref(), Some("team@example.org"));
}

#[test]
fn unknown_variable() {
    let c = cols(&["email", "first_name"]);
    let err = Template::parse(
        b"From: a@example.org\n\nHi {{ frist_name }}!\n",
        "msg.eml",
        &c,
    )
    .expect_err("unknown");
    assert_eq!(
        err,
        TemplateError::UnknownVariable {
            file: "msg.eml".into(),
            line: 3,
            column: 7,
            name: "frist_name".into(),
            columns: c.clone(),
        }
    );
    assert_eq!(
        err.to_string(),
        "msg.eml:3:7: placeholder {{ frist_name }} has no column; columns are: email, first_name"
    );
    let c2 = cols(&["email", "First Name"]);
    let err = Template::parse(b"Subject: {{ first_name }}\n\n", "m", &c2).expect_err("hint");
    assert!(err.to_string().contains("rename it to first_name"), "{err}");
    // Loop variables, set variables and globals are fine.
    Template::parse(
        b"Subject: x\n\n{% set n = first_name %}{% for i in range(2) %}{{ loop.index }}{{ n }}{{ i }}{% endfor %}",
        "m",
        &c,
    )
    .expect("ok");
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let err = Template::parse(
        b"From: a@example.org\n\nline\nHi {{ name name }}\n",
        "m.eml",
        &cols(&["name"]),
    )
    .expect_err("syntax");
    match &err {
        TemplateError::Syntax { line, column, .. } => {
            assert_eq!((*line, *column), (4, 12), "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().starts_with("m.eml:4:12: syntax error"),
        "{err}"
    );
    let err = Template::parse(b"Subject: {{ x\n\n", "m.eml", &cols(&["x"])).expect_err("e");
    assert!(
        matches!(err, TemplateError::Syntax { line: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn include_is_refused() {
    for (src, stmt) in [
        (
            &b"From: a@example.org\n\nx\n{% include 'footer.txt' %}\n"[..],
            "include",
        ),
        (b"{% extends 'base' %}\n\n", "extends"),
        (b"Subject: s\n\n{% import 'm' as m %}", "import"),
    ] {
        let err = Template::parse(src, "m.eml", &[]).expect_err("refused");
        assert!(
            matches!(&err, TemplateError::Unsupported { statement, .. } if statement == stmt),
            "{err:?}"
        );
        assert!(err.to_string().contains("no loader"), "{err}");
    }
    let err = Template::parse(
        b"From: a@example.org\n\nx\n{% include 'f' %}\n",
        "m.eml",
        &[],
    )
    .expect_err("refused");
    assert!(err.to_string().starts_with("m.eml:4:4:"), "{err}");
}

#[test]
fn header_section_rules() {
    let c = cols(&["email", "cc", "h"]);
    let err = Template::parse(b"From: a@example.org\nHello there\n\nbody", "m", &c).expect_err("e");
    assert!(
        matches!(err, TemplateError::Header { line: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("blank line"), "{err}");
    let err = Template::parse(b"{{ h }}: x\n\n", "m", &c).expect_err("e");
    assert!(matches!(err, TemplateError::Header { line: 1, .. }));
    let err = Template::parse(
        b"From: a@example.org\n{% if cc %}{{ h }}{% endif %}\n\n",
        "m",
        &c,
    )
    .expect_err("e");
    assert!(matches!(err, TemplateError::Header { line: 2, .. }));
    let err = Template::parse(b"\nbody", "m", &c).expect_err("no headers");
    assert!(matches!(err, TemplateError::Header { line: 1, .. }));
    // No blank line: all headers, empty body.
    let t = Template::parse(b"From: a@example.org\nSubject: s", "m", &c).expect("parse");
    let r = t
        .render(&row(&["b@example.com", "", ""]), &c, &opts())
        .expect("render");
    assert!(text(&r).ends_with(">\r\n\r\n"));
    // Conditional headers and folded lines.
    let t = Template::parse(
        b"From: a@example.org\n{% if cc %}\nCc: {{ cc }}\n{% endif %}\nSubject: a\n  folded {{ h }}\n\nbody\n",
        "m",
        &c,
    )
    .expect("parse");
    assert_eq!(t.header_names(), ["From", "Cc", "Subject"]);
    let r = t
        .render(&row(&["b@example.com", "", "x"]), &c, &opts())
        .expect("render");
    let h = header_lines(&r.data);
    assert_eq!(&h[..3], ["From: a@example.org", "Subject: a", "  folded x"]);
    let r = t
        .render(&row(&["b@example.com", "c@example.com", "x"]), &c, &opts())
        .expect("render");
    assert_eq!(header_lines(&r.data)[1], "Cc: c@example.com");
}

#[test]
fn not_utf8_and_long_template_lines() {
    let err = Template::parse(b"From: a@example.org\nSubject: caf\xE9\n\n", "m", &[])
        .expect_err("latin-1");
    assert_eq!(
        err,
        TemplateError::NotUtf8 {
            file: "m".into(),
            line: 2,
            column: 13
        }
    );
    let long = format!("From: a@example.org\n\n{}\n", "x".repeat(999));
    let err = Template::parse(long.as_bytes(), "m", &[]).expect_err("long");
    assert_eq!(
        err,
        TemplateError::LineTooLong {
            file: "m".into(),
            line: 3,
            length: 999
        }
    );
    let ok = format!("From: a@example.org\n\n{}\n", "x".repeat(998));
    assert!(Template::parse(ok.as_bytes(), "m", &[]).is_ok());
}

#[test]
fn rendered_line_over_998_fails_the_row() {
    let (t, c) = basic();
    let err = t
        .render(
            &row(&["a@example.com", "Ann", &"y".repeat(1200)]),
            &c,
            &opts(),
        )
        .expect_err("long");
    let body_line = 8;
    assert_eq!(
        err,
        RowError::LineTooLong {
            line: body_line,
            length: 1200
        }
    );
    assert_eq!(
        err.to_string(),
        "line 8 is 1200 octets, over the 998 limit of RFC 5321"
    );
    // A long ASCII header value fails too; the row after it renders fine.
    assert!(matches!(
        t.render(&row(&["a@example.com", &"n".repeat(1000), ""]), &c, &opts()),
        Err(RowError::LineTooLong { line: 2, .. })
    ));
    assert!(
        t.render(&row(&["a@example.com", "Ann", "ok"]), &c, &opts())
            .is_ok()
    );
}

#[test]
fn shareable_between_threads() {
    fn check<T: Send + Sync>() {}
    check::<Template>();
    check::<Rendered>();
    check::<TemplateError>();
    check::<RowError>();
}

#[test]
fn body_conditionals() {
    let c = cols(&["email", "company"]);
    let t = Template::parse(
        b"Subject: s\n\nHi{% if company %} from {{ company }}{% endif %}\nBye\n",
        "m",
        &c,
    )
    .expect("parse");
    let r = t
        .render(&row(&["a@example.com", "ACME"]), &c, &opts())
        .expect("render");
    assert!(text(&r).ends_with("\r\n\r\nHi from ACME\r\nBye\r\n"));
    let r = t
        .render(&row(&["a@example.com", ""]), &c, &opts())
        .expect("render");
    assert!(text(&r).ends_with("\r\n\r\nHi\r\nBye\r\n"));
}

#[test]
fn render_errors_fail_the_row() {
    let c = cols(&["email", "n"]);
    let t = Template::parse(b"Subject: x\n\n\n{{ n | int + 1 }}", "m", &c).expect("parse");
    let err = t
        .render(&row(&["a@example.com", "not a number"]), &c, &opts())
        .expect_err("int");
    assert!(matches!(err, RowError::Render { line: 4, .. }), "{err:?}");
}

#[test]
fn a_body_without_template_syntax_is_rendered_once_and_reused() {
    let c = cols(&["email", "name"]);
    for (body, want) in [
        (
            "Same for all,\nline two\r\n.dot\rend",
            "Same for all,\r\nline two\r\n.dot\r\nend\r\n",
        ),
        ("", ""),
        ("one { brace } only\n", "one { brace } only\r\n"),
    ] {
        let src =
            format!("From: a@example.org\nTo: {{{{ email }}}}\nSubject: {{{{ name }}}}\n\n{body}");
        let t = Template::parse(src.as_bytes(), "t.eml", &c).expect("parse");
        assert!(t.static_body.is_some(), "{body:?}");
        for (email, name) in [("a@example.com", "Ann"), ("b@example.com", "Bob")] {
            let r = t.render(&row(&[email, name]), &c, &opts()).expect("render");
            let s = text(&r);
            let (head, got) = s.split_once("\r\n\r\n").expect("blank line");
            assert!(
                head.contains(&format!("To: {email}\r\nSubject: {name}\r\n")),
                "{s}"
            );
            assert_eq!(got, want, "{body:?}");
        }
    }
    let t = Template::parse(
        BASIC.as_bytes(),
        "msg.eml",
        &cols(&["email", "name", "note"]),
    )
    .expect("parse");
    assert!(t.static_body.is_none());
}

#[test]
fn header_pieces_split_only_plain_placeholders_of_the_variables() {
    let vars = cols(&["email", "name", "row"]);
    use HeaderPiece::{Text, Var};
    assert_eq!(
        header_pieces("To: {{ name }} <{{email}}>\nX: {{\trow }}}", &vars),
        Some(vec![
            Text("To: ".into()),
            Var("name".into()),
            Text(" <".into()),
            Var("email".into()),
            Text(">\nX: ".into()),
            Var("row".into()),
            Text("}".into()),
        ])
    );
    assert_eq!(
        header_pieces("Subject: hi }} {", &vars),
        Some(vec![Text("Subject: hi }} {".into())])
    );
    for other in [
        "To: {{ name | upper }}",
        "To: {{- name }}",
        "To: {{ name -}}",
        "To: {{ 'x' }}",
        "To: {{ range }}",
        "To: {{ other }}",
        "To: {{ name }",
        "{% if name %}To: {{ name }}{% endif %}",
        "To: {{ name }}{# note #}",
        "To: {{ name\n}}",
        "To: {{ name.upper() }}",
    ] {
        assert_eq!(header_pieces(other, &vars), None, "{other:?}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// A header section of literal text and `{{ name }}` placeholders renders to the same
    /// text, with the same sanitized flag, without minijinja as with it: values with control
    /// characters, non-ASCII, braces; `row` as the row number or as a column.
    #[test]
    fn header_pieces_render_as_minijinja(
        parts in proptest::collection::vec((
            proptest::collection::vec(
                proptest::sample::select(vec!['a', ' ', ':', '\n', '\t', '{', '}', 'é', '<', '>']),
                0..6,
            ),
            proptest::sample::select(vec!["", "{{ a }}", "{{b}}", "{{ \trow }}", "{{ a}}"]),
        ), 0..6),
        a in proptest::collection::vec(
            proptest::sample::select(vec!['x', ' ', '\r', '\n', '\t', '\u{1b}', '\u{85}', 'é', '{', '}', '\u{2028}']),
            0..8,
        ),
        b in "[a-z{}%#]{0,6}",
        number in 1u64..100_000,
        row_is_column in proptest::bool::ANY,
    ) {
        let mut src = String::new();
        for (text, var) in &parts {
            src.extend(text.iter());
            src.push_str(var);
        }
        // Where minijinja would read `{{`/`{%`/`{#` in literal text, the cases are not comparable
        // as piece lists; those sources fall back to minijinja anyway (or are syntax errors).
        let mut env = new_environment();
        proptest::prop_assume!(env.add_template_owned(HEADERS, src.clone()).is_ok());
        let mut vars = cols(&["a", "b"]);
        if row_is_column {
            vars.push("row".into());
        }
        let a: String = a.into_iter().collect();
        let row_text = number.to_string();
        let mut ctx = RowContext::default();
        ctx.columns.insert("a", &a);
        ctx.columns.insert("b", &b);
        if row_is_column {
            ctx.columns.insert("row", &row_text);
        } else {
            ctx.row = Some(number);
            vars.push("row".into());
        }
        let Some(pieces) = header_pieces(&src, &vars) else {
            return Ok(());
        };
        SANITIZED.set(false);
        let want = env.get_template(HEADERS).expect("added").render(&ctx).expect("render");
        let want_dirty = SANITIZED.replace(false);
        let (got, dirty) = render_pieces(&pieces, &ctx);
        proptest::prop_assert_eq!(got, want);
        proptest::prop_assert_eq!(dirty, want_dirty);
    }
}

#[test]
fn templates_with_plain_placeholders_render_headers_without_minijinja() {
    let (t, _) = basic();
    assert!(t.header_pieces.is_some());
    let c = cols(&["email", "name"]);
    let conditional = "From: a@example.org\n{% if name %}To: {{ name }}{% endif %}\n\nx\n";
    let t = Template::parse(conditional.as_bytes(), "c.eml", &c).expect("parse");
    assert!(t.header_pieces.is_none());
}
