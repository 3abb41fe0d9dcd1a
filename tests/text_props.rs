//! Property tests of the inert-text primitives (issue 16): `printable` never lets a control
//! character through, and the CSV formula guard round-trips every string.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use pipemail::text::{guard_cell, printable, printable_str, unguard_cell};

/// A fixed seed, so a run is reproducible.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[16; 32]),
    )
}

fn is_control_or_bidi(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Bytes biased towards the interesting ones: controls, ESC, C1 lead bytes, invalid UTF-8.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            any::<u8>(),
            Just(0x1b),
            Just(b'\r'),
            Just(b'\n'),
            Just(0xc2),
            Just(0x9b),
            Just(0xe2),
            Just(0x80),
            Just(0xae),
            Just(b'\\'),
            0x20u8..0x7f,
        ],
        0..64,
    )
}

#[test]
fn printable_bytes_never_contain_controls() {
    runner(4096)
        .run(&bytes(), |b| {
            let p = printable(&b);
            prop_assert!(!p.chars().any(is_control_or_bidi), "{p:?} from {b:?}");
            prop_assert_eq!(printable_str(&p), p.clone(), "idempotent");
            if let Ok(s) = std::str::from_utf8(&b) {
                prop_assert_eq!(printable_str(s), p);
            }
            Ok(())
        })
        .expect("property holds");
}

#[test]
fn printable_str_never_contains_controls() {
    runner(4096)
        .run(&any::<String>(), |s| {
            let p = printable_str(&s);
            prop_assert!(!p.chars().any(is_control_or_bidi), "{p:?} from {s:?}");
            if !s.chars().any(is_control_or_bidi) {
                prop_assert_eq!(&*p, s.as_str(), "printable text is kept as it is");
            }
            Ok(())
        })
        .expect("property holds");
}

fn cells() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[=+\\-@'\t\r]{0,3}[a-z0-9 ]{0,8}",
        "'{1,4}[=+\\-@]?[a-z]{0,4}",
    ]
}

#[test]
fn guard_round_trips_and_never_starts_a_formula() {
    runner(4096)
        .run(&cells(), |s| {
            let g = guard_cell(&s);
            prop_assert_eq!(unguard_cell(&g), s.as_str());
            prop_assert!(!g.starts_with(['=', '+', '-', '@', '\t', '\r']), "{g:?}");
            // Through the csv crate and back, as a report cell.
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record([g.as_ref()]).expect("write");
            let data = w.into_inner().expect("flush");
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(&data[..]);
            let rec = r.records().next().expect("one record").expect("record");
            prop_assert_eq!(unguard_cell(rec.get(0).unwrap_or("")), s.as_str());
            Ok(())
        })
        .expect("property holds");
}
