//! Issue 11 on the campaign side: a host that refuses (or drops the connection for) commands
//! pipelined behind the end of data. The run learns the level once for all its connections
//! and never fails a row for it. The round trips per message are printed (`--nocapture`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::tests::{campaign, list, sink};
use super::*;
use crate::engine::PipeliningLevel;
use crate::sink::{AfterDot, SinkConfig};

const ROWS: u64 = 200;

/// Records the observer's pipelining calls.
#[derive(Default)]
struct Levels {
    evidence: Mutex<Vec<LevelReason>>,
    changes: Mutex<Vec<LevelChange>>,
}

impl Observer for Levels {
    fn pipelining_evidence(&self, _t: &Target, e: &LevelReason) {
        self.evidence.lock().expect("lock").push(e.clone());
    }
    fn pipelining_level(&self, c: &LevelChange) {
        self.changes.lock().expect("lock").push(c.clone());
    }
}

/// How many times each recipient was stored.
fn stored(s: &crate::sink::SinkHandle) -> HashMap<String, u32> {
    let mut got = HashMap::new();
    for m in s.messages() {
        for r in m.rcpts {
            *got.entry(r).or_default() += 1;
        }
    }
    got
}

fn run(
    after_dot: AfterDot,
    chunking: bool,
    connections: u32,
) -> (Summary, HashMap<String, u32>, Arc<Levels>) {
    let s = sink(SinkConfig {
        after_dot,
        chunking,
        ..SinkConfig::default()
    });
    let mut c = campaign(&s, &list(ROWS));
    c.connections = connections;
    let obs = Arc::new(Levels::default());
    let summary = c.run(obs.clone()).expect("run");
    let got = stored(&s);
    let per_msg = summary.rt_used as f64 / summary.sent_this_run.max(1) as f64;
    eprintln!(
        "after-dot {after_dot:?}, {} , {connections} connection(s): {} rows, {} sent, {} unknown, {} round trips, {per_msg:.2}/message; {}",
        if chunking { "BDAT" } else { "DATA" },
        summary.rows,
        summary.sent,
        summary.unknown,
        summary.rt_used,
        summary
            .pipelining
            .as_ref()
            .map_or_else(|| "level kept".to_string(), LevelChange::describe)
    );
    (summary, got, obs)
}

#[test]
fn refused_after_the_dot_every_row_sent_once_at_two_round_trips_a_message() {
    for connections in [1, 4] {
        for chunking in [false, true] {
            let (summary, got, obs) = run(AfterDot::Refuse, chunking, connections);
            let what = format!("{connections} connection(s), chunking {chunking}: {summary:?}");
            assert_eq!(summary.rows, ROWS, "{what}");
            assert_eq!(summary.sent, ROWS, "{what}");
            assert_eq!(
                (summary.failed, summary.deferred, summary.unknown),
                (0, 0, 0),
                "{what}"
            );
            assert_eq!(got.len() as u64, ROWS, "{what}");
            assert!(got.values().all(|&n| n == 1), "a row stored twice: {what}");
            let change = summary.pipelining.as_ref().expect("the level was lowered");
            assert_eq!(change.to, PipeliningLevel::WithinMessage, "{what}");
            assert!(matches!(change.reason, LevelReason::Refused(_)), "{what}");
            // One warning (one lowering) however many sessions saw the evidence.
            assert_eq!(obs.changes.lock().expect("lock").len(), 1, "{what}");
            assert!(!obs.evidence.lock().expect("lock").is_empty());
            // After the switch: two round trips a message with DATA (MAIL..DATA, then the
            // dot), one with BDAT; plus greeting, EHLO, QUIT and the refused first writes
            // per session.
            let per_message = if chunking { 1 } else { 2 };
            let bound = per_message * ROWS + 8 * u64::from(connections);
            assert!(
                summary.rt_used <= bound,
                "{} > {bound}: {what}",
                summary.rt_used
            );
        }
    }
}

#[test]
fn dropped_after_the_dot_twice_new_sessions_sync_and_no_row_fails() {
    for connections in [1, 4] {
        let (summary, got, obs) = run(AfterDot::Drop, true, connections);
        let what = format!("{connections} connection(s): {summary:?}");
        assert_eq!(summary.rows, ROWS, "{what}");
        assert_eq!((summary.failed, summary.deferred), (0, 0), "{what}");
        assert_eq!(summary.sent + summary.unknown, ROWS, "{what}");
        // Stored twice only if reported unknown; every sent row stored.
        let twice = got.values().filter(|&&n| n > 1).count() as u64;
        assert!(twice <= summary.unknown, "{what}");
        assert!(got.len() as u64 >= summary.sent, "{what}");
        let change = summary
            .pipelining
            .as_ref()
            .expect("lowered after two drops");
        assert_eq!(change.to, PipeliningLevel::WithinMessage);
        assert!(
            matches!(change.reason, LevelReason::Dropped { drops, .. } if drops >= DROPS_TO_STEP_DOWN),
            "{what}"
        );
        assert_eq!(obs.changes.lock().expect("lock").len(), 1, "{what}");
    }
}
