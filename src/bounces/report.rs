//! Reading a `send` report and writing it again with bounced rows updated.
//!
//! The three report formats (CSV, JSON array, JSON lines) are detected from the content: `[`
//! starts a JSON array, `{` JSON lines, anything else is CSV. CSV is rewritten column for
//! column (unknown columns kept); JSON rows keep the report's column order.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::text::{guard_cell, printable_str, unguard_cell};

/// The report's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// CSV with a header row.
    Csv,
    /// A JSON array, one object per line.
    Json,
    /// One JSON object per line.
    Jsonl,
}

/// A report row as JSON (columns in report order; unknown columns kept after them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JsonRow {
    row: u64,
    email: String,
    status: String,
    smtp_code: Option<u16>,
    enhanced_code: Option<String>,
    response: String,
    stage: Option<String>,
    attempts: u32,
    message_id: String,
    finished_at: String,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// A parsed report, kept as close to the input as possible for rewriting.
#[derive(Debug)]
pub struct Report {
    format: ReportFormat,
    csv_header: csv::StringRecord,
    csv_rows: Vec<csv::StringRecord>,
    json_rows: Vec<JsonRow>,
    cols: CsvCols,
}

#[derive(Debug, Default, Clone, Copy)]
struct CsvCols {
    row: usize,
    email: usize,
    status: usize,
    enhanced_code: usize,
    response: usize,
    message_id: Option<usize>,
}

/// The fields of a row that matching needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowKey {
    /// The list row.
    pub row: u64,
    /// The recipient.
    pub email: String,
    /// The Message-ID, without angle brackets (may be empty).
    pub message_id: String,
}

impl Report {
    /// Parses report text; `Err` is a human-readable reason (bad data).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim_start().as_bytes().first() {
            Some(b'[') => Self::parse_json(text, ReportFormat::Json),
            Some(b'{') => Self::parse_json(text, ReportFormat::Jsonl),
            _ => Self::parse_csv(text),
        }
    }

    fn parse_json(text: &str, format: ReportFormat) -> Result<Self, String> {
        let mut json_rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim().trim_matches(',').trim();
            if l.is_empty() || l == "[" || l == "]" || l == "[]" {
                continue;
            }
            let row: JsonRow =
                serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))?;
            json_rows.push(row);
        }
        Ok(Self {
            format,
            csv_header: csv::StringRecord::new(),
            csv_rows: Vec::new(),
            json_rows,
            cols: CsvCols::default(),
        })
    }

    fn parse_csv(text: &str) -> Result<Self, String> {
        let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let header = reader.headers().map_err(|e| e.to_string())?.clone();
        let find = |name: &str| header.iter().position(|h| h.trim() == name);
        let need = |name: &str| find(name).ok_or_else(|| format!("no `{name}` column"));
        let cols = CsvCols {
            row: need("row")?,
            email: need("email")?,
            status: need("status")?,
            enhanced_code: need("enhanced_code")?,
            response: need("response")?,
            message_id: find("message_id"),
        };
        let mut csv_rows = Vec::new();
        for rec in reader.records() {
            let rec = rec.map_err(|e| e.to_string())?;
            let row = rec.get(cols.row).unwrap_or_default();
            row.trim().parse::<u64>().map_err(|_| {
                format!("record {}: row {row:?} is not a number", csv_rows.len() + 1)
            })?;
            csv_rows.push(rec);
        }
        Ok(Self {
            format: ReportFormat::Csv,
            csv_header: header,
            csv_rows,
            json_rows: Vec::new(),
            cols,
        })
    }

    /// The format detected.
    pub fn format(&self) -> ReportFormat {
        self.format
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match self.format {
            ReportFormat::Csv => self.csv_rows.len(),
            _ => self.json_rows.len(),
        }
    }

    /// Whether the report has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The matching key of row `i` (0-based index into the report).
    pub fn key(&self, i: usize) -> RowKey {
        match self.format {
            ReportFormat::Csv => {
                let r = &self.csv_rows[i];
                let c = self.cols;
                RowKey {
                    // Cells are read back to their original text (formula guard removed).
                    row: r
                        .get(c.row)
                        .and_then(|v| unguard_cell(v).trim().parse().ok())
                        .unwrap_or(0),
                    email: unguard_cell(r.get(c.email).unwrap_or_default()).to_owned(),
                    message_id: unguard_cell(
                        c.message_id.and_then(|m| r.get(m)).unwrap_or_default(),
                    )
                    .trim()
                    .trim_matches(['<', '>'])
                    .to_owned(),
                }
            }
            _ => {
                let r = &self.json_rows[i];
                RowKey {
                    row: r.row,
                    email: r.email.clone(),
                    message_id: r.message_id.trim().trim_matches(['<', '>']).to_owned(),
                }
            }
        }
    }

    /// Marks row `i` as `bounced` with the DSN's status and diagnostic. The DSN's text is
    /// untrusted: it is written printable, and formula-guarded in CSV, like `send`'s cells.
    pub fn mark_bounced(&mut self, i: usize, status: Option<&str>, diagnostic: &str) {
        let status = status.map(printable_str);
        let diagnostic = printable_str(diagnostic);
        match self.format {
            ReportFormat::Csv => {
                let c = self.cols;
                let status = status.as_deref().map(guard_cell);
                let diagnostic = guard_cell(&diagnostic);
                let old = &self.csv_rows[i];
                let rec: csv::StringRecord = old
                    .iter()
                    .enumerate()
                    .map(|(j, v)| match j {
                        j if j == c.status => "bounced",
                        j if j == c.enhanced_code => status.as_deref().unwrap_or(v),
                        j if j == c.response => &diagnostic,
                        _ => v,
                    })
                    .collect();
                self.csv_rows[i] = rec;
            }
            _ => {
                let r = &mut self.json_rows[i];
                "bounced".clone_into(&mut r.status);
                if let Some(s) = status {
                    r.enhanced_code = Some(s.into_owned());
                }
                r.response = diagnostic.into_owned();
            }
        }
    }

    /// Writes the report in its own format.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut out = io::BufWriter::new(out);
        match self.format {
            ReportFormat::Csv => {
                let mut w = csv::Writer::from_writer(&mut out);
                w.write_record(&self.csv_header)?;
                for r in &self.csv_rows {
                    w.write_record(r)?;
                }
                w.flush()?;
            }
            ReportFormat::Jsonl => {
                for r in &self.json_rows {
                    serde_json::to_writer(&mut out, r)?;
                    out.write_all(b"\n")?;
                }
            }
            ReportFormat::Json => {
                out.write_all(b"[\n")?;
                for (i, r) in self.json_rows.iter().enumerate() {
                    if i > 0 {
                        out.write_all(b",\n")?;
                    }
                    serde_json::to_writer(&mut out, r)?;
                }
                out.write_all(b"\n]\n")?;
            }
        }
        out.flush()
    }
}
