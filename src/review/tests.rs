//! Unit tests of the report reader and the summary's bounded structures.

use std::io::Cursor;

use super::stats::Timeline;
use super::{ReportReader, ReviewError};
use crate::report::Status;

const HEADER: &str =
    "row,email,status,smtp_code,enhanced_code,response,stage,attempts,message_id,finished_at\n";

fn reader(text: &str) -> ReportReader {
    ReportReader::from_reader("t", Box::new(Cursor::new(text.to_owned()))).expect("reader")
}

#[test]
fn csv_cells_are_unguarded_and_columns_found_by_name() {
    let text = "finished_at,row,email,status,smtp_code,enhanced_code,response,stage,attempts,message_id\n\
                2026-11-25T21:08:44.944Z,1,'-a@x.example,failed,550,5.1.1,'=1+1,rcpt,1,''m@x\n";
    let rows: Vec<_> = reader(text).map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].email, "-a@x.example");
    assert_eq!(rows[0].response, "=1+1");
    assert_eq!(rows[0].message_id, "'m@x");
    assert_eq!(rows[0].status, Status::Failed);
}

#[test]
fn cut_short_last_record_is_skipped_but_a_bad_middle_one_is_an_error() {
    let good = "1,a@x.example,sent,250,2.0.0,ok,body,1,m,2026-11-25T21:08:44.944Z\n";
    let mut r = reader(&format!("{HEADER}{good}{good}2,b@x.example,sent,25"));
    assert_eq!(r.by_ref().count(), 2);
    assert!(r.truncated());
    let mut r = reader(&format!("{HEADER}{good}1,oops\n{good}"));
    assert!(r.next().expect("first").is_ok());
    match r.next() {
        Some(Err(ReviewError::Parse { line: 3, .. })) => {}
        other => panic!("{other:?}"),
    }
    assert!(r.next().is_none(), "stops after an error");
    let json = "[\n{\"row\":1,\"email\":\"a@x\",\"status\":\"sent\",\"smtp_code\":250,\
                \"enhanced_code\":null,\"response\":\"ok\",\"stage\":null,\"attempts\":1,\
                \"message_id\":\"m\",\"finished_at\":\"2026-11-25T21:08:44.944Z\"}";
    assert_eq!(reader(json).count(), 1, "unterminated array");
    assert_eq!(reader(&format!("{json}\n]\n")).count(), 1);
    assert_eq!(reader("").count(), 0);
    assert!(matches!(
        ReportReader::from_reader("t", Box::new(Cursor::new("a,b\n1,2\n"))),
        Err(ReviewError::Parse { line: 1, .. })
    ));
}

#[test]
fn timeline_stays_bounded_and_exact() {
    let mut t = Timeline::default();
    // 100,000 rows over ten hours: widths grow, no row is lost.
    for i in 0..100_000i64 {
        t.add(i * 360, i % 3 == 0);
    }
    let series = t.series();
    assert!(series.len() <= 2_048, "{}", series.len());
    assert_eq!(series.iter().map(|b| b.1).sum::<u64>(), 100_000);
    assert_eq!(series.iter().map(|b| b.2).sum::<u64>(), 33_334);
    let c = t.coarsened(90, 1);
    assert!(c.series().len() <= 90);
    assert_eq!(c.series().iter().map(|b| b.1).sum::<u64>(), 100_000);
    assert!(
        [
            1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000,
            1_800_000
        ]
        .contains(&c.width_ms())
            || c.width_ms() % 3_600_000 == 0
    );
}
