//! The per-recipient report, the in-flight journal, and resuming an interrupted run.
//!
//! # Report
//!
//! One row per list row, columns in this order:
//! `row,email,status,smtp_code,enhanced_code,response,stage,attempts,message_id,finished_at`.
//! `finished_at` is RFC 3339 in UTC with milliseconds (`2026-11-25T20:14:18.123Z`);
//! `smtp_code`, `enhanced_code` and `stage` are empty in CSV and `null` in JSON when absent.
//!
//! [`ReportWriter::write`] writes and flushes each row with one `write` call, so a run that is
//! killed leaves a report that holds every finished row (a valid prefix):
//!
//! * `csv`: a header row, then one record per row (a multi-line SMTP response is quoted).
//! * `jsonl`: one JSON object per line.
//! * `json`: `[` on the first line, then one object per line separated by `,`, and `]` written by
//!   [`ReportWriter::finish`]. A killed run therefore leaves an *unterminated* array (append a
//!   line with `]` to make it valid JSON); [`ResumeState::load`] reads it as it is. Rows are
//!   never rewritten, so nothing is lost if the process dies at any point.
//!
//! Text is written inert (issue 16): every text cell made printable
//! ([`crate::text::printable_str`]) in all three formats, and every CSV cell formula-guarded
//! ([`crate::text::guard_cell`]); the CSV reader removes the guard
//! ([`crate::text::unguard_cell`]). The report, journal and carry file are created without
//! following a symlink ([`crate::fsutil`]).
//!
//! # Journal (crash safety)
//!
//! [`Journal`] appends `{"row":N,"email":"…"}` lines to `<report>.journal` for every message
//! *before* it is sent, with one `write` call per batch and no `fsync`: it survives `kill -9`
//! of pipemail, not a power loss or kernel crash. A complete run removes it
//! ([`Journal::finish`]). A report on standard output (`-`) has no journal.
//!
//! # Resume
//!
//! [`ResumeState::load`] reads an earlier report (any of the three formats, detected from the
//! content; a truncated last record and an unterminated JSON array are accepted) and its
//! journal. An address whose earlier status is `sent` is done ([`PreviousOutcome::Sent`]). An
//! address that was in flight when the run stopped (in the journal with no row in the report) or
//! whose status is `unknown` may or may not have been delivered ([`PreviousOutcome::Unknown`]).
//! Everything else (failed, deferred, skipped, never reached) is not remembered: it is sent again.
//! Addresses are compared case-insensitively (see [`crate::input::address_key`]).
//!
//! To stay small for big lists, `load` copies the `sent` and `unknown` rows into a carry file,
//! `<report>.resume` (JSON lines), and keeps in memory only a sorted array of 64-bit address
//! keys and file offsets (16 bytes per remembered address); [`ResumeState::lookup`] reads the
//! row back from the carry file. Because the carry file holds everything the earlier run(s)
//! achieved, the resumed run may overwrite `<report>` and its journal; `load` removes the old
//! journal itself once the carry file is safely written. If the resumed run is killed too, the
//! next `load` merges the carry file, the new partial report and the new journal. Call
//! [`ResumeState::finish`] after the resumed run completes to remove the carry file.
//!
//! The CLI's order of calls on `--resume`: [`ResumeState::load`], then [`ReportWriter::create`],
//! then [`Journal::create`]; at the end [`ReportWriter::finish`], [`Journal::finish`],
//! [`ResumeState::finish`].

mod journal;
mod resume;
mod writer;

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::text::{guard_cell, printable_str, unguard_cell};

pub use journal::{Journal, carry_path, check_no_leftover, journal_path};
pub use resume::{IN_FLIGHT_RESPONSE, PreviousOutcome, ReportError, ResumeState};
pub use writer::ReportWriter;

/// The outcome of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The server accepted the message for this recipient.
    Sent,
    /// Permanently refused (5xx), or the row could not be sent (bad input, render error).
    Failed,
    /// Temporarily refused (4xx) and not retried further.
    Deferred,
    /// Not attempted (e.g. a duplicate address, or already sent in an earlier run).
    Skipped,
    /// The outcome is not known (e.g. the connection died after the message was sent but
    /// before the server's reply).
    Unknown,
}

/// The step at which a recipient's message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading the list or rendering the message.
    Input,
    /// Connecting, or the greeting / EHLO.
    Connect,
    /// STARTTLS or the TLS handshake.
    Tls,
    /// SMTP authentication.
    Auth,
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`.
    Rcpt,
    /// `DATA` (or the start of `BDAT`).
    Data,
    /// The message content and its final reply.
    Body,
}

impl From<crate::engine::Stage> for Stage {
    /// Where the engine decided an outcome; the report adds `input` for rows never sent.
    fn from(s: crate::engine::Stage) -> Self {
        use crate::engine::Stage as E;
        match s {
            E::Connect => Self::Connect,
            E::Tls => Self::Tls,
            E::Auth => Self::Auth,
            E::Mail => Self::Mail,
            E::Rcpt => Self::Rcpt,
            E::Data => Self::Data,
            E::Body => Self::Body,
        }
    }
}

macro_rules! snake_enum {
    ($ty:ident, $what:literal, $($variant:ident => $text:literal),+ $(,)?) => {
        impl $ty {
            /// The name used in reports (snake_case).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.trim() {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?}; expected one of: {}"),
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

snake_enum!(Status, "status",
    Sent => "sent", Failed => "failed", Deferred => "deferred", Skipped => "skipped",
    Unknown => "unknown");
snake_enum!(Stage, "stage",
    Input => "input", Connect => "connect", Tls => "tls", Auth => "auth", Mail => "mail",
    Rcpt => "rcpt", Data => "data", Body => "body");

/// The report columns, in order.
pub const COLUMNS: [&str; 10] = [
    "row",
    "email",
    "status",
    "smtp_code",
    "enhanced_code",
    "response",
    "stage",
    "attempts",
    "message_id",
    "finished_at",
];

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The 1-based data row of the list.
    pub row: u64,
    /// The recipient address.
    pub email: String,
    /// The outcome.
    pub status: Status,
    /// The SMTP reply code of the deciding reply, if any.
    pub smtp_code: Option<u16>,
    /// The enhanced status code (RFC 3463) of the deciding reply, e.g. `5.1.1`.
    pub enhanced_code: Option<String>,
    /// The deciding reply's text, or pipemail's explanation.
    pub response: String,
    /// Where it failed, for rows that did not succeed.
    pub stage: Option<Stage>,
    /// Number of delivery attempts.
    pub attempts: u32,
    /// The message's Message-ID, without angle brackets (empty if none was rendered).
    pub message_id: String,
    /// When the outcome was decided.
    #[serde(with = "timestamp")]
    pub finished_at: OffsetDateTime,
}

/// RFC 3339 timestamps in UTC with milliseconds; any RFC 3339 offset is accepted when reading.
mod timestamp {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;

    /// `2026-12-02T21:49:21.123Z`. The part up to the second is formatted once per second and
    /// thread (report rows come by the thousand per second); the milliseconds are appended.
    pub(super) fn format(t: &OffsetDateTime) -> String {
        use std::fmt::Write as _;
        thread_local! {
            static LAST: std::cell::RefCell<Option<(i64, String)>> =
                const { std::cell::RefCell::new(None) };
        }
        const FALLBACK: &str = "1970-01-01T00:00:00.000Z";
        let t = t.to_offset(time::UtcOffset::UTC);
        let second = t.unix_timestamp();
        LAST.with_borrow_mut(|last| {
            if last.as_ref().is_none_or(|(s, _)| *s != second) {
                let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].");
                let Ok(prefix) = t.format(&fmt) else {
                    return FALLBACK.to_owned();
                };
                *last = Some((second, prefix));
            }
            let prefix = last.as_ref().map_or("", |(_, p)| p.as_str());
            let mut out = String::with_capacity(prefix.len() + 4);
            out.push_str(prefix);
            let _ = write!(out, "{:03}Z", t.millisecond());
            out
        })
    }

    #[cfg(test)]
    #[test]
    fn the_cached_second_gives_the_full_format() {
        let fmt = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let base = OffsetDateTime::from_unix_timestamp(1_796_247_761).expect("time");
        for ms in [0_i64, 1, 999, 1000, 1001, 59_999, 86_400_123, 5, 5] {
            let t = base + time::Duration::milliseconds(ms);
            assert_eq!(format(&t), t.format(&fmt).expect("format"));
            let east = t.to_offset(time::UtcOffset::from_hms(5, 30, 0).expect("offset"));
            assert_eq!(format(&east), t.format(&fmt).expect("format"));
        }
    }

    pub(super) fn parse(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
        OffsetDateTime::parse(s.trim(), &Rfc3339).map(|t| t.to_offset(time::UtcOffset::UTC))
    }

    pub(super) fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

impl ReportRow {
    /// The row as CSV fields, in [`COLUMNS`] order: every cell printable
    /// ([`printable_str`]) and formula-guarded ([`guard_cell`]).
    pub(crate) fn csv_fields(&self) -> [Cow<'_, str>; 10] {
        fn cell(s: &str) -> Cow<'_, str> {
            match printable_str(s) {
                Cow::Borrowed(b) => guard_cell(b),
                Cow::Owned(o) => Cow::Owned(guard_cell(&o).into_owned()),
            }
        }
        fn number(n: impl ToString) -> Cow<'static, str> {
            Cow::Owned(n.to_string())
        }
        [
            number(self.row),
            cell(&self.email),
            Cow::Borrowed(self.status.as_str()),
            self.smtp_code.map(number).unwrap_or_default(),
            cell(self.enhanced_code.as_deref().unwrap_or_default()),
            cell(&self.response),
            Cow::Borrowed(self.stage.map(Stage::as_str).unwrap_or_default()),
            number(self.attempts),
            cell(&self.message_id),
            Cow::Owned(timestamp::format(&self.finished_at)),
        ]
    }

    /// The row with its free text ([`printable_str`]) made printable: `email`,
    /// `enhanced_code`, `response`, `message_id`. Borrowed when nothing changes. JSON and
    /// JSON Lines reports write this (without the CSV formula guard).
    pub fn inert(&self) -> Cow<'_, Self> {
        let email = printable_str(&self.email);
        let enhanced = self.enhanced_code.as_deref().map(printable_str);
        let response = printable_str(&self.response);
        let message_id = printable_str(&self.message_id);
        let owned = |c: &Cow<'_, str>| matches!(c, Cow::Owned(_));
        if !owned(&email)
            && !enhanced.as_ref().is_some_and(owned)
            && !owned(&response)
            && !owned(&message_id)
        {
            return Cow::Borrowed(self);
        }
        Cow::Owned(Self {
            email: email.into_owned(),
            enhanced_code: enhanced.map(Cow::into_owned),
            response: response.into_owned(),
            message_id: message_id.into_owned(),
            ..self.clone()
        })
    }

    /// Where each of [`COLUMNS`] stands in a CSV report's header row (header cells read back
    /// unguarded); `Err` names the first column missing.
    pub(crate) fn csv_columns(headers: &csv::StringRecord) -> Result<[usize; 10], &'static str> {
        let mut cols = [0usize; 10];
        for (i, col) in COLUMNS.iter().enumerate() {
            cols[i] = headers
                .iter()
                .position(|h| unguard_cell(h.trim()) == *col)
                .ok_or(*col)?;
        }
        Ok(cols)
    }

    /// Parses a CSV record; `cols[i]` is the record index of [`COLUMNS`]`[i]`.
    pub(crate) fn from_csv(rec: &csv::StringRecord, cols: &[usize; 10]) -> Result<Self, String> {
        // Every cell read back to its original text (the writer's formula guard removed).
        let get = |i: usize| {
            rec.get(cols[i])
                .map(unguard_cell)
                .ok_or_else(|| format!("missing {}", COLUMNS[i]))
        };
        let opt = |i: usize| -> Result<Option<String>, String> {
            let v = get(i)?;
            Ok((!v.is_empty()).then(|| v.to_owned()))
        };
        let num_err = |i: usize| move |e: std::num::ParseIntError| format!("{}: {e}", COLUMNS[i]);
        Ok(Self {
            row: get(0)?.trim().parse().map_err(num_err(0))?,
            email: get(1)?.to_owned(),
            status: get(2)?.parse()?,
            smtp_code: opt(3)?
                .map(|v| v.trim().parse())
                .transpose()
                .map_err(num_err(3))?,
            enhanced_code: opt(4)?,
            response: get(5)?.to_owned(),
            stage: opt(6)?.map(|v| v.parse()).transpose()?,
            attempts: get(7)?.trim().parse().map_err(num_err(7))?,
            message_id: get(8)?.to_owned(),
            finished_at: timestamp::parse(get(9)?).map_err(|e| format!("finished_at: {e}"))?,
        })
    }
}

/// The report's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// Comma-separated values with a header row.
    #[default]
    Csv,
    /// A JSON array of objects, one per line.
    Json,
    /// JSON lines: one object per line.
    Jsonl,
}

impl Format {
    /// The format for a report path, by extension: `.json` → JSON, `.jsonl` / `.ndjson` →
    /// JSON lines, anything else (and `-`) → CSV.
    pub fn from_path(path: impl AsRef<Path>) -> Self {
        let ext = path
            .as_ref()
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("json") => Self::Json,
            Some("jsonl" | "ndjson") => Self::Jsonl,
            _ => Self::Csv,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Jsonl => "jsonl",
        })
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            "jsonl" | "ndjson" => Ok(Self::Jsonl),
            other => Err(format!(
                "unknown report format {other:?}; expected csv, json or jsonl"
            )),
        }
    }
}

#[cfg(test)]
mod tests;
