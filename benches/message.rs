//! Message composition cost per row, with no I/O in the loop: `pipemail::template` rendering
//! (the raw, pre-MIME path) against `pipemail::message::Composer` for a text-only message,
//! text + HTML (multipart/alternative), a shared 100 KiB `--attach` file (encoded once, its
//! base64 copied into each message) and a per-row 20 KiB `Attach:` file, read and encoded for
//! every row (cache off) or reused while unchanged (the default cache).
//!
//! `cargo bench --bench message [-- N]` (default N = 5,000) prints ns per message, best of
//! three runs. No criterion: a plain `main`, `std::hint::black_box` on outputs.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use pipemail::input::Row;
use pipemail::message::{ComposeOptions, Composer, ComposerOptions};
use pipemail::template::{RenderOptions, Template};
use time::OffsetDateTime;

const TEXT: &str = "From: \"Bench\" <news@example.org>
To: \"{{ name }}\" <{{ email }}>
Subject: {{ name }}, your {{ plan }} plan update
{% if file %}Attach: {{ file }}
{% endif %}

Hello {{ name }},

Thanks for being on the {{ plan }} plan. Here is what changed this month:

 - faster delivery: one round trip per message instead of four
 - your address on file: {{ email }}
 - the quick brown fox jumps over the lazy dog; pack my box with jugs
 - the quick brown fox jumps over the lazy dog; pack my box with jugs

{% if plan == \"Free\" %}Upgrade any time: reply to this message.
{% else %}Your {{ plan }} features stay as they are.
{% endif %}
-- 
The Bench team
";

const HTML: &str = "<html><body><h1>Hello {{ name }},</h1>
<p>Thanks for being on the <b>{{ plan }}</b> plan. Here is what changed this month:</p>
<ul><li>faster delivery: one round trip per message instead of four</li>
<li>your address on file: {{ email }}</li>
<li>the quick brown fox jumps over the lazy dog; pack my box with jugs</li></ul>
<p>The Bench team</p></body></html>
";

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn columns() -> Vec<String> {
    ["email", "name", "plan", "file"].map(String::from).to_vec()
}

fn row(i: u64, file: &str) -> Row {
    let email = format!("user{i}@example.net");
    Row {
        number: i + 1,
        line: i + 2,
        email: email.clone(),
        fields: vec![email, format!("Reader {i}"), "Pro".into(), file.into()],
        problem: None,
    }
}

fn composer(dir: &Path, html: bool, attach: &[&str], attach_cache: usize) -> Composer {
    let c = columns();
    let mut t = Template::parse_for_mime(TEXT.as_bytes(), "bench.eml", &c).expect("template");
    if html {
        t.add_html(HTML.as_bytes(), "bench.html", &c).expect("html");
    }
    Composer::new(
        t,
        &ComposerOptions {
            attach: attach.iter().map(|a| dir.join(a)).collect(),
            attach_dir: dir.to_owned(),
            attach_cache,
        },
    )
    .expect("composer")
}

/// Best of three: ns per message and the average message size.
fn measure(n: u64, mut one: impl FnMut(u64) -> usize) -> (f64, usize) {
    let mut best = Duration::MAX;
    let mut size = 0;
    for _ in 0..3 {
        let start = Instant::now();
        let mut total = 0;
        for i in 0..n {
            total += one(i);
        }
        best = best.min(start.elapsed());
        size = total / n as usize;
    }
    (best.as_nanos() as f64 / n as f64, size)
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000);
    let dir = tempfile_dir();
    std::fs::write(dir.join("shared.pdf"), bytes(100 * 1024, 1)).expect("write");
    std::fs::write(dir.join("row.pdf"), bytes(20 * 1024, 2)).expect("write");
    let c = columns();
    let render = RenderOptions {
        smtputf8: false,
        now: OffsetDateTime::now_utc(),
        message_id_domain: None,
    };
    let opts = ComposeOptions {
        render: render.clone(),
        eight_bit_mime: true,
    };

    println!("pipemail message composition, {n} rows, best of 3");
    println!("{:<36} {:>12} {:>12}", "case", "ns/message", "bytes");
    let raw = Template::parse(TEXT.as_bytes(), "bench.eml", &c).expect("template");
    let (ns, size) = measure(n, |i| {
        let r = raw.render(&row(i, ""), &c, &render).expect("render");
        black_box(r.data.len())
    });
    println!("{:<36} {ns:>12.0} {size:>12}", "raw render (no MIME)");
    // (name, HTML?, --attach files, Attach: file, cache octets)
    let cache = pipemail::message::DEFAULT_ATTACH_CACHE;
    let cases: [(&str, bool, &[&str], &str, usize); 5] = [
        ("text only", false, &[], "", cache),
        ("text + HTML", true, &[], "", cache),
        (
            "text + shared 100 KiB attachment",
            false,
            &["shared.pdf"],
            "",
            cache,
        ),
        (
            "text + per-row 20 KiB, not cached",
            false,
            &[],
            "row.pdf",
            0,
        ),
        (
            "text + per-row 20 KiB, cached",
            false,
            &[],
            "row.pdf",
            cache,
        ),
    ];
    for (name, html, attach, file, cache) in cases {
        let comp = composer(&dir, html, attach, cache);
        let (ns, size) = measure(n, |i| {
            let m = comp.compose(&row(i, file), &c, &opts).expect("compose");
            black_box(m.data.len())
        });
        println!("{name:<36} {ns:>12.0} {size:>12}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under the system temp dir (no tempfile in benches' dependencies needed,
/// but it is a dev-dependency, so use it for a unique name).
fn tempfile_dir() -> std::path::PathBuf {
    tempfile::tempdir().expect("tempdir").keep()
}
