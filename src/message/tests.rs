//! Unit tests of the composition helpers.

use lettre::message::header::ContentTransferEncoding;

use super::BodyMode;
use super::html::{markdown_to_html, references_cid};
use super::parts::text_body;

#[test]
fn body_mode_from_content_type() {
    assert_eq!(BodyMode::of(None), BodyMode::Text);
    assert_eq!(
        BodyMode::of(Some(" text/plain; charset=utf-8")),
        BodyMode::Text
    );
    assert_eq!(BodyMode::of(Some("TEXT/HTML")), BodyMode::Html);
    assert_eq!(
        BodyMode::of(Some("text/markdown; variant=GFM")),
        BodyMode::Markdown
    );
    assert_eq!(
        BodyMode::of(Some(" multipart/mixed; boundary=\"x\"")),
        BodyMode::Raw("multipart/mixed; boundary=\"x\"".into())
    );
}

#[test]
fn cid_references() {
    let html = "<img src=\"cid:logo.png\"><div style=\"background:url(cid:bg.jpg)\">";
    assert!(references_cid(html, "logo.png"));
    assert!(references_cid(html, "bg.jpg"));
    assert!(!references_cid(html, "logo"));
    assert!(!references_cid("<p>no refs</p>", "logo.png"));
}

#[test]
fn text_encodings() {
    let enc = |t: &str, eight: bool| text_body(t, eight).encoding();
    assert_eq!(
        enc("plain\nascii\n", false),
        ContentTransferEncoding::SevenBit
    );
    assert_eq!(
        enc(&"x".repeat(998), false),
        ContentTransferEncoding::SevenBit
    );
    assert_eq!(
        enc(&"x".repeat(999), false),
        ContentTransferEncoding::QuotedPrintable
    );
    assert_eq!(enc("a\0b", false), ContentTransferEncoding::QuotedPrintable);
    assert_eq!(
        enc("Grüße, mostly ASCII", false),
        ContentTransferEncoding::QuotedPrintable
    );
    assert_eq!(
        enc("Grüße, mostly ASCII", true),
        ContentTransferEncoding::EightBit
    );
    assert_eq!(enc(&"ü".repeat(600), true), ContentTransferEncoding::Base64);
    assert_eq!(
        enc(&"Grüße from the whole team, ".repeat(60), true),
        ContentTransferEncoding::QuotedPrintable
    );
    assert_eq!(
        enc("日本語のテキスト", false),
        ContentTransferEncoding::Base64
    );
    // CRLF line ends whatever came in.
    assert_eq!(text_body("a\nb\rc\r\n", false).as_ref(), b"a\r\nb\r\nc\r\n");
}

#[test]
fn markdown_html() {
    let h = markdown_to_html("# T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n~~old~~\n");
    assert!(
        h.contains("<h1>T</h1>") && h.contains("<table>") && h.contains("<del>old</del>"),
        "{h}"
    );
}

#[test]
fn crlf_line_check_agrees_with_the_exact_one() {
    use crate::template::RowError;
    use crate::template::check_crlf_line_lengths as fast;
    let lines = |lens: &[usize]| {
        let mut d = Vec::new();
        for &n in lens {
            d.extend(std::iter::repeat_n(b'x', n));
            d.extend_from_slice(b"\r\n");
        }
        d
    };
    assert_eq!(fast(&lines(&[998, 0, 998, 5, 997])), Ok(()));
    assert_eq!(fast(&lines(&[76; 2000])), Ok(()));
    assert_eq!(fast(&lines(&[])), Ok(()));
    assert_eq!(
        fast(&lines(&[10, 998, 999, 3])),
        Err(RowError::LineTooLong {
            line: 3,
            length: 999
        })
    );
    assert_eq!(
        fast(&lines(
            &[76; 300].iter().copied().chain([5000]).collect::<Vec<_>>()
        )),
        Err(RowError::LineTooLong {
            line: 301,
            length: 5000
        })
    );
}

#[test]
fn shareable_between_threads() {
    fn check<T: Send + Sync>() {}
    check::<super::Composer>();
    check::<super::Composed>();
    check::<super::ComposeError>();
    check::<super::SetupError>();
}

/// A framed message is what lettre formats for the same bodies, boundary aside.
#[test]
fn frames_match_lettre() {
    use super::frame::Frames;
    use super::parts::{Content, TextPart, build};
    let frames = Frames::default();
    let texts = [
        "plain\nascii\n",
        "no final newline",
        "",
        "Grüße\r\n",
        &"x".repeat(1200),
        &"ü".repeat(600),
        "a\0b\n",
    ];
    let unbound = |mut data: Vec<u8>, boundaries: &[String]| {
        for b in boundaries {
            let s = String::from_utf8(data).expect("ASCII framing");
            data = s.replace(b.as_str(), "BOUNDARY").into_bytes();
        }
        data
    };
    let boundary_of = |data: &[u8]| -> Vec<String> {
        let s = String::from_utf8_lossy(data);
        s.split("boundary=\"")
            .skip(1)
            .map(|r| r.split('"').next().unwrap_or("").to_owned())
            .collect()
    };
    for eight in [false, true] {
        for text in texts {
            for html in [None, Some("<p>Grüße</p>\n"), Some(text)] {
                let t = TextPart::new(text, eight);
                let h = html.map(|h| TextPart::new(h, eight));
                let frame = frames
                    .get(t.encoding(), h.as_ref().map(TextPart::encoding))
                    .expect("every shape frames");
                let mut framed = b"Subject: x\r\n".to_vec();
                assert!(frame.write(&mut framed, &t, h.as_ref()));
                let built = build(Content {
                    text: t.into_body(),
                    html: h.map(TextPart::into_body),
                    inline: Vec::new(),
                    attached: Vec::new(),
                })
                .expect("builds");
                let bs = built.boundaries().to_vec();
                let general = built.finish(b"Subject: x\r\n".to_vec()).expect("finishes");
                assert_eq!(
                    String::from_utf8_lossy(&unbound(framed.clone(), &boundary_of(&framed))),
                    String::from_utf8_lossy(&unbound(general, &bs)),
                    "text {text:?}, html {html:?}, 8bit {eight}"
                );
            }
        }
    }
}

#[test]
fn normalized_line_ends() {
    use crate::template::push_normalized;
    let reference = |t: &str| {
        let mut s = t
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .replace('\n', "\r\n");
        if !s.ends_with("\r\n") {
            s.push_str("\r\n");
        }
        s
    };
    for t in [
        "",
        "\r",
        "\n",
        "\r\n",
        "\n\r",
        "a\r\r\nb\n\rc\r",
        "x",
        "x\r\n\r\n",
        "ü\ry\n",
    ] {
        let mut out = Vec::new();
        push_normalized(&mut out, t);
        assert_eq!(String::from_utf8(out).unwrap(), reference(t), "{t:?}");
    }
}

/// A value holding the frame's boundary: that message is composed with fresh boundaries, and
/// the value stays inside its part.
#[test]
fn a_body_holding_the_frame_boundary_is_composed_afresh() {
    use super::{ComposeOptions, Composer, ComposerOptions};
    use crate::input::Row;
    use crate::template::{RenderOptions, Template};
    use lettre::message::header::ContentTransferEncoding as Cte;
    let columns = vec!["email".to_owned(), "x".to_owned()];
    let mut t = Template::parse_for_mime(
        b"From: a@example.org\nTo: {{ email }}\nSubject: s\n\n{{ x }}\n",
        "t.eml",
        &columns,
    )
    .expect("parse");
    t.add_html(b"<p>{{ x }}</p>\n", "t.html", &columns)
        .expect("html");
    let composer = Composer::new(t, &ComposerOptions::default()).expect("composer");
    let row = |x: &str| Row {
        number: 1,
        line: 2,
        email: "r@example.net".to_owned(),
        fields: vec!["r@example.net".to_owned(), x.to_owned()],
        problem: None,
    };
    let opts = ComposeOptions {
        render: RenderOptions {
            smtputf8: false,
            now: time::OffsetDateTime::UNIX_EPOCH,
            message_id_domain: None,
        },
        eight_bit_mime: false,
    };
    let first = composer
        .compose(&row("hello"), &columns, &opts)
        .expect("compose");
    let frame = composer
        .frames
        .get(Cte::SevenBit, Some(Cte::SevenBit))
        .expect("framed");
    let boundary = String::from_utf8(frame.boundaries()[0].to_vec()).expect("ASCII");
    assert!(String::from_utf8_lossy(&first.data).contains(&boundary));
    let evil = format!("--{boundary}--");
    let second = composer
        .compose(&row(&evil), &columns, &opts)
        .expect("compose");
    let text = String::from_utf8_lossy(&second.data);
    let declared: Vec<&str> = text
        .split("boundary=\"")
        .skip(1)
        .map(|r| r.split('"').next().unwrap_or(""))
        .collect();
    assert_eq!(declared.len(), 1, "{text}");
    assert_ne!(declared[0], boundary, "a fresh boundary");
    assert_eq!(
        text.matches(&evil).count(),
        2,
        "the value in both parts, as text"
    );
    assert_eq!(
        text.matches(&format!("--{}", declared[0])).count(),
        3,
        "{text}"
    );
}
