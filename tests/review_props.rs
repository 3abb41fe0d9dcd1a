//! Property tests of the report reader: random bytes and mutated or cut-short reports never
//! panic, and never yield more rows than the report had.

use std::io::Cursor;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use pipemail::review::ReportReader;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[14; 32]),
    )
}

const SAMPLE: &str = include_str!("../samples/report-example.csv");

fn read_all(bytes: Vec<u8>) -> usize {
    match ReportReader::from_reader("p", Box::new(Cursor::new(bytes))) {
        Ok(r) => r.take_while(Result::is_ok).count(),
        Err(_) => 0,
    }
}

#[test]
fn random_bytes_never_panic() {
    runner(1024)
        .run(&prop::collection::vec(any::<u8>(), 0..512), |b| {
            read_all(b);
            Ok(())
        })
        .expect("no panic");
}

#[test]
fn mutated_reports_never_panic() {
    let json: String = SAMPLE
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            format!(
                "{{\"row\":{},\"email\":\"{}\",\"status\":\"{}\",\"smtp_code\":null,\
                 \"enhanced_code\":null,\"response\":\"x\",\"stage\":null,\"attempts\":0,\
                 \"message_id\":\"\",\"finished_at\":\"{}\"}}\n",
                f[0], f[1], f[2], f[9]
            )
        })
        .collect();
    assert_eq!(read_all(json.clone().into_bytes()), 12);
    for base in [SAMPLE.as_bytes().to_vec(), json.into_bytes()] {
        let len = base.len();
        let strategy = (prop::collection::vec((0..len, any::<u8>()), 1..8), 0..=len);
        runner(512)
            .run(&strategy, |(edits, cut)| {
                let mut b = base.clone();
                for (i, v) in edits {
                    b[i] = v;
                }
                b.truncate(cut);
                let n = read_all(b);
                prop_assert!(n <= 12);
                Ok(())
            })
            .expect("no panic");
    }
}
