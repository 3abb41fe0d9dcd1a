//! List row → job: the decisions made for every row before anything is sent.
//!
//! In this order: the row belongs to another shard (dropped, not reported); it has an input
//! problem (`failed` at stage `input`); its address repeats an earlier row's (`skipped`);
//! an earlier run sent it, or left it `unknown` with `--skip-unknown` (the earlier row is
//! copied). Everything else becomes a [`Job`]. `send` and `--dry-run` use this same code.

use time::OffsetDateTime;

use super::schedule::Job;
use crate::input::{DuplicateFilter, KnownDuplicates, Row};
use crate::report::{PreviousOutcome, ReportRow, ResumeState, Stage, Status};

/// `--shard K/N`: this run takes data rows `K, K+N, K+2N…` (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which part, 1..=`of`.
    pub k: u64,
    /// How many parts.
    pub of: u64,
}

impl Shard {
    /// Does data row `number` (1-based) belong to this shard?
    pub fn takes(self, number: u64) -> bool {
        self.of == 0 || (number.wrapping_sub(1)) % self.of == self.k.wrapping_sub(1)
    }

    /// How many of `total` data rows belong to this shard.
    pub fn rows_of(self, total: u64) -> u64 {
        if self.of == 0 {
            return total;
        }
        total / self.of + u64::from(total % self.of >= self.k)
    }
}

/// What becomes of one row.
#[derive(Debug)]
pub enum Decision {
    /// Another shard's row: no report row.
    OtherShard,
    /// Reported at once, never sent (input problem, duplicate, done in an earlier run).
    Report(ReportRow),
    /// To be sent.
    Send(Job),
}

/// The per-row filters of a run.
#[derive(Debug)]
pub struct JobFilter {
    shard: Option<Shard>,
    dups: Option<DuplicateFilter>,
    /// Repeats found before the run ([`crate::input::find_duplicates`]), instead of `dups`.
    known: Option<KnownDuplicates>,
    resume: Option<ResumeState>,
    skip_unknown: bool,
    suppression: Option<std::sync::Arc<crate::deliver::suppress::Suppression>>,
}

impl JobFilter {
    /// Filters for a run: `allow_duplicates` turns the duplicate check off; `resume` is the
    /// earlier run's state, `skip_unknown` reports its `unknown` rows instead of resending.
    pub fn new(
        shard: Option<Shard>,
        allow_duplicates: bool,
        resume: Option<ResumeState>,
        skip_unknown: bool,
    ) -> Self {
        Self {
            shard,
            dups: (!allow_duplicates).then(DuplicateFilter::new),
            known: None,
            resume,
            skip_unknown,
            suppression: None,
        }
    }

    /// Takes the repeats from a pre-scan of the list instead of remembering every address
    /// (no effect when duplicates are allowed). The pre-scan must have seen the same rows:
    /// this shard's, without input problems.
    pub fn with_known_duplicates(mut self, known: KnownDuplicates) -> Self {
        if self.dups.is_some() {
            self.dups = None;
            self.known = Some(known);
        }
        self
    }

    /// `--suppress`: rows whose address (or domain) is listed are `skipped` with response
    /// `suppressed`, after the duplicate check.
    pub fn with_suppression(
        mut self,
        suppression: Option<std::sync::Arc<crate::deliver::suppress::Suppression>>,
    ) -> Self {
        self.suppression = suppression;
        self
    }

    /// Decides one row.
    ///
    /// Every row of the whole list passes the duplicate check, other shards' rows too, so a
    /// shard skips a row whose address appeared on an earlier row of the list even when that
    /// row belongs to another shard: N shard reports merged equal a one-machine run.
    pub fn decide(&mut self, row: Row) -> Decision {
        let first = match &mut self.dups {
            Some(dups) if row.problem.is_none() => dups.check(&row.email, row.number),
            _ => None,
        };
        if self.shard.is_some_and(|s| !s.takes(row.number)) {
            return Decision::OtherShard;
        }
        if let Some(p) = &row.problem {
            let mut r = row_report(&row, Status::Failed, Some(Stage::Input), 0);
            r.response = p.clone();
            return Decision::Report(r);
        }
        if let Some(first) = self.known.as_ref().and_then(|k| k.first_of(row.number)) {
            let mut r = row_report(&row, Status::Skipped, None, 0);
            r.response = format!("duplicate of row {first}");
            return Decision::Report(r);
        }
        if let Some(first) = first {
            let mut r = row_report(&row, Status::Skipped, None, 0);
            r.response = format!("duplicate of row {first}");
            return Decision::Report(r);
        }
        if self
            .suppression
            .as_ref()
            .is_some_and(|s| s.contains(&row.email))
        {
            let mut r = row_report(&row, Status::Skipped, None, 0);
            r.response = "suppressed".into();
            return Decision::Report(r);
        }
        if let Some(state) = &self.resume {
            match state.lookup(&row.email) {
                Some(PreviousOutcome::Sent(prev)) => {
                    return Decision::Report(ReportRow {
                        row: row.number,
                        email: row.email,
                        ..prev
                    });
                }
                Some(PreviousOutcome::Unknown(prev)) if self.skip_unknown => {
                    return Decision::Report(ReportRow {
                        row: row.number,
                        email: row.email,
                        ..prev
                    });
                }
                _ => {}
            }
        }
        Decision::Send(Job::new(row))
    }

    /// The resume state, to be finished once the run is complete.
    pub fn into_resume(self) -> Option<ResumeState> {
        self.resume
    }
}

/// A report row for `row` decided locally (no server reply), finished now.
pub fn row_report(row: &Row, status: Status, stage: Option<Stage>, attempts: u32) -> ReportRow {
    ReportRow {
        row: row.number,
        email: row.email.clone(),
        status,
        smtp_code: None,
        enhanced_code: None,
        response: String::new(),
        stage,
        attempts,
        message_id: String::new(),
        finished_at: OffsetDateTime::now_utc(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u64, email: &str) -> Row {
        Row {
            number: n,
            line: n + 1,
            email: email.into(),
            fields: vec![email.into()],
            problem: None,
        }
    }

    fn kind(d: &Decision) -> String {
        match d {
            Decision::OtherShard => "shard".into(),
            Decision::Report(r) => format!("{} {}", r.status, r.response),
            Decision::Send(j) => format!("send {}", j.row.number),
        }
    }

    #[test]
    fn shards_cover_every_row_exactly_once() {
        for of in 1..=5u64 {
            for total in 0..=12u64 {
                let mut seen = vec![0u32; total as usize];
                let mut counted = 0;
                for k in 1..=of {
                    let s = Shard { k, of };
                    counted += s.rows_of(total);
                    for n in 1..=total {
                        if s.takes(n) {
                            seen[(n - 1) as usize] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "{of} {total}: {seen:?}");
                assert_eq!(counted, total);
            }
        }
        assert!(Shard { k: 2, of: 3 }.takes(5));
        assert_eq!(Shard { k: 3, of: 3 }.rows_of(8), 2);
    }

    #[test]
    fn problems_then_duplicates_then_send() {
        let mut f = JobFilter::new(Some(Shard { k: 1, of: 2 }), false, None, false);
        let mut bad = row(3, "bad@");
        bad.problem = Some("invalid address".into());
        let got: Vec<String> = [
            row(1, "a@example.net"),
            row(2, "b@example.net"),
            bad,
            row(5, "A@Example.NET"),
            row(7, "c@example.net"),
        ]
        .into_iter()
        .map(|r| kind(&f.decide(r)))
        .collect();
        assert_eq!(
            got,
            [
                "send 1",
                "shard",
                "failed invalid address",
                "skipped duplicate of row 1",
                "send 7"
            ]
        );
    }

    #[test]
    fn a_shard_skips_an_address_first_seen_in_another_shard() {
        let mut f = JobFilter::new(Some(Shard { k: 2, of: 2 }), false, None, false);
        let got: Vec<String> = [
            row(1, "a@example.net"),
            row(2, "b@example.net"),
            row(3, "x@example.net"),
            row(4, "A@example.net"),
        ]
        .into_iter()
        .map(|r| kind(&f.decide(r)))
        .collect();
        assert_eq!(
            got,
            ["shard", "send 2", "shard", "skipped duplicate of row 1"]
        );
    }

    #[test]
    fn allow_duplicates_sends_both() {
        let mut f = JobFilter::new(None, true, None, false);
        assert_eq!(kind(&f.decide(row(1, "a@example.net"))), "send 1");
        assert_eq!(kind(&f.decide(row(2, "a@example.net"))), "send 2");
    }

    #[test]
    fn resume_copies_sent_rows_and_unknown_ones_with_skip_unknown() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.csv");
        let path = path.to_str().expect("utf-8 path");
        let mut w =
            crate::report::ReportWriter::create(path, crate::report::Format::Csv).expect("report");
        for (n, email, status) in [
            (1, "a@example.net", Status::Sent),
            (2, "b@example.net", Status::Unknown),
            (3, "c@example.net", Status::Deferred),
        ] {
            let mut r = row_report(&row(n, email), status, Some(Stage::Body), 1);
            r.message_id = format!("id{n}@example.org");
            w.write(&r).expect("row");
        }
        w.finish().expect("finish");
        for skip_unknown in [false, true] {
            let state = ResumeState::load(path).expect("load");
            let mut f = JobFilter::new(None, false, Some(state), skip_unknown);
            // Row numbers come from the new list; the rest from the earlier report.
            let Decision::Report(r) = f.decide(row(10, "A@example.net")) else {
                panic!("sent rows are copied")
            };
            assert_eq!((r.row, r.status), (10, Status::Sent));
            assert_eq!(r.message_id, "id1@example.org");
            let d = f.decide(row(11, "b@example.net"));
            match (skip_unknown, &d) {
                (true, Decision::Report(r)) => assert_eq!(r.status, Status::Unknown),
                (false, Decision::Send(j)) => assert_eq!(j.row.number, 11),
                _ => panic!("{skip_unknown}: {}", kind(&d)),
            }
            assert_eq!(kind(&f.decide(row(12, "c@example.net"))), "send 12");
            f.into_resume()
                .expect("state")
                .finish()
                .expect("carry file");
        }
    }

    #[test]
    fn suppressed_addresses_and_domains_are_skipped() {
        let mut s = crate::deliver::suppress::Suppression::new();
        s.insert("b@example.net");
        s.insert("@blocked.example");
        let mut f =
            JobFilter::new(None, false, None, false).with_suppression(Some(std::sync::Arc::new(s)));
        let got: Vec<String> = [
            row(1, "a@example.net"),
            row(2, "B@Example.net"),
            row(3, "x@blocked.example"),
            row(4, "a@example.net"),
        ]
        .into_iter()
        .map(|r| kind(&f.decide(r)))
        .collect();
        assert_eq!(
            got,
            [
                "send 1",
                "skipped suppressed",
                "skipped suppressed",
                "skipped duplicate of row 1"
            ]
        );
    }
}
