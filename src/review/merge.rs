//! `pipemail report merge`: shard reports (or the last report of each `--resume` chain) into
//! one report.
//!
//! # What an input row is
//!
//! A report has one row per list row it covers, and its `row` column is the 1-based data row
//! of the list. `--shard K/N` reports cover disjoint rows of the same list. A `--resume` run
//! writes a *complete* report of its own: the rows the earlier run sent are copied into it
//! (same status, reply, Message-ID and `finished_at`; the row number and address come from the
//! list being sent), the rest are sent again. So the report of a resumed run supersedes the
//! report it resumed from, and only the last report of a resume chain belongs in a merge.
//!
//! The identity of an input row is its row number together with its address. Merged inputs
//! must not share a row number: the same row twice (same address) is a duplicate, and two
//! rows with the same number but different addresses come from different lists. Either way
//! the merge writes nothing and fails with exit 65, naming the first rows, the reports they
//! are in, and, when two copies are identical, the likely cause (an earlier report merged
//! together with its resumed run's report).
//!
//! # Output
//!
//! Rows are interleaved by `finished_at` (a k-way merge of the inputs, each in completion
//! order), so the result reads like the report of one machine. The format is `--format`, or
//! the output's extension as for `send --report`. Text is made printable and CSV cells are
//! formula-guarded ([`crate::text::guard_cell`]). A file output is written beside its
//! destination and renamed into place when complete; `-` is standard output.
//!
//! Memory: two compressed bitmaps of row numbers and one pending row per input. Each input
//! is read twice (the check, then the merge), so inputs must be files, not `-`.

use std::io::Write;

use roaring::RoaringTreemap;

use super::read::ReportReader;
use super::stats::{group, timestamp};
use super::{Output, ReviewError};
use crate::report::{COLUMNS, Format, ReportRow};
use crate::text::{guard_cell, printable_str};

/// How many repeated rows an error names.
const NAMED_DUPLICATES: u64 = 10;

/// What `merge` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Number of input reports.
    pub inputs: usize,
    /// Rows written.
    pub rows: u64,
    /// Lowest and highest row number (`None` when no rows).
    pub range: Option<(u64, u64)>,
    /// Row numbers between the lowest and the highest that no input has.
    pub missing: u64,
    /// The first few of those.
    pub first_missing: Vec<u64>,
    /// Inputs whose cut-short last record was skipped.
    pub truncated: Vec<String>,
}

impl MergeOutcome {
    /// One line for standard error.
    pub fn line(&self, output: &str) -> String {
        let mut s = format!(
            "merged {} reports into {}: {} rows",
            self.inputs,
            output,
            group(self.rows)
        );
        if let Some((lo, hi)) = self.range {
            s.push_str(&format!(" (row numbers {}–{}", group(lo), group(hi)));
            if self.missing == 0 {
                s.push_str(", none missing)");
            } else {
                let list: Vec<String> = self.first_missing.iter().map(|r| r.to_string()).collect();
                s.push_str(&format!(
                    ", {} missing: {}{})",
                    group(self.missing),
                    list.join(", "),
                    if self.missing > self.first_missing.len() as u64 {
                        ", …"
                    } else {
                        ""
                    }
                ));
            }
        }
        for t in &self.truncated {
            s.push_str(&format!("; {t}: cut-short last record skipped"));
        }
        s
    }
}

fn open_all(paths: &[String]) -> Result<Vec<ReportReader>, ReviewError> {
    paths.iter().map(|p| ReportReader::open(p)).collect()
}

/// Merges the reports at `paths` into `output` (`-`: standard output) in `format` (default:
/// from the output's extension).
pub fn merge(
    paths: &[String],
    output: &str,
    format: Option<Format>,
) -> Result<MergeOutcome, ReviewError> {
    if paths.iter().any(|p| p == "-") {
        return Err(ReviewError::Usage(
            "report merge reads each input twice: name files, not standard input (-)".into(),
        ));
    }
    if paths.is_empty() {
        return Err(ReviewError::Usage(
            "report merge needs input reports".into(),
        ));
    }
    let format = format.unwrap_or_else(|| Format::from_path(output));

    // Pass 1: every row number once?
    let mut seen = RoaringTreemap::new();
    let mut repeated = RoaringTreemap::new();
    let mut truncated = Vec::new();
    for mut r in open_all(paths)? {
        while let Some(row) = r.next_row() {
            let row = row?;
            if !seen.insert(row.row) {
                repeated.insert(row.row);
            }
        }
        if r.truncated() {
            truncated.push(r.name().to_owned());
        }
    }
    if !repeated.is_empty() {
        return Err(duplicates(paths, &repeated)?);
    }

    // Pass 2: interleave by finished_at.
    let mut readers = open_all(paths)?;
    let mut heads: Vec<Option<ReportRow>> = Vec::with_capacity(readers.len());
    for r in &mut readers {
        heads.push(r.next_row().transpose()?);
    }
    let mut out = Output::create(output)?;
    let mut writer = RowWriter::new(format);
    let mut rows = 0u64;
    writer.start(&mut out).map_err(|e| out.write_err(e))?;
    loop {
        let next = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|r| (r.finished_at, i)))
            .min();
        let Some((_, i)) = next else { break };
        let row = heads[i]
            .take()
            .expect("the minimum is taken from a present head");
        writer.row(&mut out, &row).map_err(|e| out.write_err(e))?;
        rows += 1;
        heads[i] = readers[i].next_row().transpose()?;
    }
    writer.finish(&mut out).map_err(|e| out.write_err(e))?;
    out.commit()?;

    let range = seen.min().zip(seen.max());
    let (mut missing, mut first_missing) = (0, Vec::new());
    if let Some((lo, hi)) = range {
        missing = hi - lo + 1 - seen.len();
        let mut expect = lo;
        for r in &seen {
            while expect < r && first_missing.len() < 10 {
                first_missing.push(expect);
                expect += 1;
            }
            if first_missing.len() >= 10 {
                break;
            }
            expect = r + 1;
        }
    }
    Ok(MergeOutcome {
        inputs: paths.len(),
        rows,
        range,
        missing,
        first_missing,
        truncated,
    })
}

/// The error naming the first repeated rows and where they are.
fn duplicates(paths: &[String], repeated: &RoaringTreemap) -> Result<ReviewError, ReviewError> {
    let named: RoaringTreemap = repeated.iter().take(NAMED_DUPLICATES as usize).collect();
    // (row, report, the row as read), in row order then input order.
    // At most four occurrences of each, however often a hostile input repeats a row.
    let mut found: Vec<(u64, String, ReportRow)> = Vec::new();
    let mut seen: std::collections::HashMap<u64, u8> = std::collections::HashMap::new();
    for mut r in open_all(paths)? {
        while let Some(row) = r.next_row() {
            let row = row?;
            if named.contains(row.row) {
                let n = seen.entry(row.row).or_default();
                if *n < 4 {
                    *n += 1;
                    found.push((row.row, r.name().to_owned(), row));
                }
            }
        }
    }
    found.sort_by_key(|f| f.0);
    let mut parts = Vec::new();
    let mut identical = false;
    for chunk in found.chunk_by(|a, b| a.0 == b.0) {
        let first = &chunk[0].2;
        let email = printable_str(&first.email);
        let same_address = chunk
            .iter()
            .all(|f| f.2.email.eq_ignore_ascii_case(&first.email));
        if same_address {
            identical |= chunk.iter().skip(1).any(|f| f.2 == *first);
            let places: Vec<String> = chunk
                .iter()
                .map(|f| format!("{} ({})", f.1, f.2.status))
                .collect();
            parts.push(format!(
                "row {} <{email}> in {}",
                chunk[0].0,
                places.join(" and ")
            ));
        } else {
            let places: Vec<String> = chunk
                .iter()
                .map(|f| format!("<{}> in {}", printable_str(&f.2.email), f.1))
                .collect();
            parts.push(format!(
                "row {} is {} (reports of different lists?)",
                chunk[0].0,
                places.join(" but ")
            ));
        }
    }
    let count = repeated.len();
    let mut details = parts.join("; ");
    if count > NAMED_DUPLICATES {
        details.push_str(&format!("; and {} more", group(count - NAMED_DUPLICATES)));
    }
    if identical {
        details.push_str(
            ". Identical copies: a --resume run's report already holds the rows the earlier \
             run sent, so merge only the last report of each resume chain",
        );
    }
    Ok(ReviewError::Duplicates { count, details })
}

/// Writes report rows as `send --report` does, plus the CSV formula guard.
struct RowWriter {
    format: Format,
    rows: u64,
    buf: Vec<u8>,
}

impl RowWriter {
    fn new(format: Format) -> Self {
        Self {
            format,
            rows: 0,
            buf: Vec::with_capacity(512),
        }
    }

    fn start(&mut self, out: &mut Output) -> std::io::Result<()> {
        match self.format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(out);
                w.write_record(COLUMNS)?;
                w.flush()?;
            }
            Format::Json => out.write_all(b"[\n")?,
            Format::Jsonl => {}
        }
        Ok(())
    }

    fn row(&mut self, out: &mut Output, row: &ReportRow) -> std::io::Result<()> {
        self.buf.clear();
        match self.format {
            Format::Csv => {
                let fields = [
                    row.row.to_string(),
                    row.email.clone(),
                    row.status.to_string(),
                    row.smtp_code.map(|c| c.to_string()).unwrap_or_default(),
                    row.enhanced_code.clone().unwrap_or_default(),
                    row.response.clone(),
                    row.stage.map(|s| s.to_string()).unwrap_or_default(),
                    row.attempts.to_string(),
                    row.message_id.clone(),
                    timestamp(row.finished_at),
                ];
                let mut w = csv::Writer::from_writer(&mut self.buf);
                w.write_record(
                    fields
                        .iter()
                        .map(|f| guard_cell(&printable_str(f)).into_owned()),
                )?;
                w.flush()?;
            }
            Format::Json | Format::Jsonl => {
                if self.format == Format::Json && self.rows > 0 {
                    self.buf.extend_from_slice(b",\n");
                }
                let clean = ReportRow {
                    email: printable_str(&row.email).into_owned(),
                    enhanced_code: row
                        .enhanced_code
                        .as_deref()
                        .map(|e| printable_str(e).into_owned()),
                    response: printable_str(&row.response).into_owned(),
                    message_id: printable_str(&row.message_id).into_owned(),
                    ..row.clone()
                };
                serde_json::to_writer(&mut self.buf, &clean)?;
                if self.format == Format::Jsonl {
                    self.buf.push(b'\n');
                }
            }
        }
        self.rows += 1;
        out.write_all(&self.buf)
    }

    fn finish(&mut self, out: &mut Output) -> std::io::Result<()> {
        if self.format == Format::Json {
            if self.rows > 0 {
                out.write_all(b"\n")?;
            }
            out.write_all(b"]\n")?;
        }
        Ok(())
    }
}
