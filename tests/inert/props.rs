//! Property: no byte sequence in a server reply or a list value produces an ESC (or any other
//! control character) or a formula-leading cell in any output. Library level: report rows
//! with random text through the three report writers. End to end: a seeded run against a
//! server whose every RCPT reply is random bytes, with random list values, `-v` on.

use std::io::Write;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use pipemail::report::{Format, ReportRow, ReportWriter, Stage, Status};

use super::hostile::{Hostile, Script};
use super::util::{Fx, Rng, list_args, run};
use super::{assert_inert, assert_no_formula_cells, csv_cells};

/// A writer the test can read back after the report writer is done with it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes biased towards the dangerous ones, read the way the engine reads a reply (lossy).
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            any::<u8>(),
            Just(0x1b),
            Just(b'='),
            Just(b'+'),
            Just(b'-'),
            Just(b'@'),
            Just(b'\''),
            Just(b'\t'),
            Just(b'\r'),
            Just(b'\n'),
            Just(0xc2),
            Just(0x9b),
            Just(0xe2),
            Just(0x80),
            Just(0xae),
        ],
        0..40,
    )
    .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn row(email: String, response: String, enhanced: String, message_id: String) -> ReportRow {
    ReportRow {
        row: 1,
        email,
        status: Status::Failed,
        smtp_code: Some(550),
        enhanced_code: Some(enhanced),
        response,
        stage: Some(Stage::Rcpt),
        attempts: 1,
        message_id,
        finished_at: time::OffsetDateTime::UNIX_EPOCH,
    }
}

#[test]
fn no_report_format_carries_a_control_character_or_a_formula() {
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 512,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[16; 32]),
    );
    runner
        .run(&(text(), text(), text(), text()), |(e, r, c, m)| {
            let row = row(e, r, c, m);
            for format in [Format::Csv, Format::Json, Format::Jsonl] {
                let out = Shared::default();
                let mut w =
                    ReportWriter::from_writer(Box::new(out.clone()), format).expect("writer");
                w.write(&row).expect("row");
                w.finish().expect("finish");
                let bytes = out.0.lock().expect("lock").clone();
                let text = String::from_utf8(bytes).expect("utf-8");
                // Only the record separators are control characters.
                let body: String = text.lines().collect();
                prop_assert!(
                    !body
                        .chars()
                        .any(|c| c.is_control() || ('\u{80}'..='\u{9f}').contains(&c)),
                    "{format}: {text:?}"
                );
                prop_assert!(!text.contains("\\u001b"), "{text:?}");
                if format == Format::Csv {
                    let mut r = csv::Reader::from_reader(text.as_bytes());
                    for rec in r.records() {
                        let rec = rec.expect("record");
                        for cell in &rec {
                            prop_assert!(
                                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                                "{cell:?}"
                            );
                        }
                        // Read back: the guard is gone, the text is the printable original.
                        let email = pipemail::text::printable_str(&row.email);
                        let response = pipemail::text::printable_str(&row.response);
                        prop_assert_eq!(pipemail::text::unguard_cell(&rec[1]), &*email);
                        prop_assert_eq!(pipemail::text::unguard_cell(&rec[5]), &*response);
                    }
                }
            }
            Ok(())
        })
        .expect("property holds");
}

/// Random reply text: any byte but CR and LF (those would end the reply line early).
fn random_line(rng: &mut Rng) -> Vec<u8> {
    let pool: &[u8] = b"\x1b\x07\x00\x7f\xc2\x9b\xe2\x80\xae\xff=+-@'\t ;[]0123456789abc";
    let n = rng.range(0, 30) as usize;
    (0..n)
        .map(|_| {
            if rng.chance(1, 2) {
                rng.pick(pool)
            } else {
                loop {
                    let b = rng.range(0, 256) as u8;
                    if b != b'\r' && b != b'\n' {
                        break b;
                    }
                }
            }
        })
        .collect()
}

#[test]
fn random_replies_and_list_values_never_reach_any_output_live() {
    let mut rng = Rng(0x1605);
    let rows = 24u64;
    let mut replies = std::collections::HashMap::new();
    let mut list = String::from("email,note\n");
    for i in 0..rows {
        let lead = ["=", "+", "-", "'", ""][(i % 5) as usize];
        let addr = format!("{lead}r{i}@x.example");
        let code = rng.pick(&[b"250 ", b"450 ", b"550 "]);
        let mut reply = code.to_vec();
        reply.extend(random_line(&mut rng));
        reply.extend_from_slice(b"\r\n");
        replies.insert(addr.clone(), reply);
        // A list value with control characters, quoted for CSV.
        let note: String = String::from_utf8_lossy(&random_line(&mut rng))
            .replace('"', "\"\"")
            .chars()
            .collect();
        list.push_str(&format!("{addr},\"{note}\"\n"));
    }
    let replies = Arc::new(replies);
    let server = Hostile::start(Script {
        banner: b"220 p.test \x1b[6n\r\n".to_vec(),
        ehlo: b"250-p.test\r\n250 PIPELINING\r\n".to_vec(),
        rcpt: Arc::new(move |a: &str| {
            replies
                .get(a)
                .cloned()
                .unwrap_or_else(|| b"550 unknown\r\n".to_vec())
        }),
        data: b"250 2.0.0 \x1b]8;;http://e/\x07ok\r\n".to_vec(),
    });
    let fx = Fx::new();
    fx.write("list.csv", list);
    fx.write(
        "t.eml",
        "From: s@example.org\nTo: {{ email }}\nSubject: {{ note }}\n\n{{ note }}\n",
    );
    for report in ["r.csv", "r.jsonl"] {
        let mut c = fx.cmd();
        c.args([
            "send",
            "--host",
            &server.host(),
            "--helo",
            "c.test",
            "--tls",
            "none",
        ])
        .args(["--retries", "0", "--timeout", "30s", "-v"])
        .args(list_args("list.csv", "t.eml", report));
        let out = run(c);
        assert!(matches!(out.code, Some(0 | 1 | 69 | 75)), "{out}");
        assert_inert("stderr", out.stderr.as_bytes());
        assert_inert(report, &std::fs::read(fx.path(report)).expect("report"));
        if report.ends_with(".csv") {
            let cells = csv_cells(&fx.path(report));
            assert_eq!(cells.len() as u64, rows + 1, "every row reported");
            assert_no_formula_cells(&cells);
        }
    }
}
