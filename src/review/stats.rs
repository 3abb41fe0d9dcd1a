//! The figures of `pipemail report summary` and `report html`, gathered in one pass with
//! bounded memory.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use roaring::RoaringTreemap;
use time::OffsetDateTime;

use crate::report::{ReportRow, Stage, Status};
use crate::text::printable_str;

/// Distinct domains counted exactly; failures at further domains go to "other domains".
pub const MAX_DOMAINS: usize = 50_000;
/// Distinct reply codes counted exactly; the rest go to "other replies".
pub const MAX_REPLIES: usize = 1_000;
/// Characters kept of a reply's example text.
const EXAMPLE_CHARS: usize = 300;
/// The timeline keeps at most this many buckets, doubling their width when it would grow past.
const MAX_BUCKETS: usize = 2_048;

/// The five statuses, in report order.
pub const STATUSES: [Status; 5] = [
    Status::Sent,
    Status::Failed,
    Status::Deferred,
    Status::Skipped,
    Status::Unknown,
];

fn status_index(s: Status) -> usize {
    match s {
        Status::Sent => 0,
        Status::Failed => 1,
        Status::Deferred => 2,
        Status::Skipped => 3,
        Status::Unknown => 4,
    }
}

/// What decided a row: a server reply, or pipemail itself at some stage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplyKey {
    /// A server reply: basic code and enhanced code.
    Smtp(u16, Option<String>),
    /// No server reply (a local decision), at this stage (its report name).
    Local(Option<&'static str>),
}

impl ReplyKey {
    /// `550 5.1.1`, or `local (input)`; printable.
    pub fn label(&self) -> String {
        match self {
            Self::Smtp(code, Some(e)) => format!("{code} {}", printable_str(e)),
            Self::Smtp(code, None) => code.to_string(),
            Self::Local(Some(stage)) => format!("local ({stage})"),
            Self::Local(None) => "local".to_owned(),
        }
    }
}

/// Rows finished over time: counts per bucket of `width_ms` milliseconds since the epoch.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    width_ms: i64,
    /// Bucket start (ms / width) → [all rows, sent rows].
    buckets: BTreeMap<i64, [u64; 2]>,
}

impl Timeline {
    /// Counts a row finished at `ms` (since the epoch).
    pub(crate) fn add(&mut self, ms: i64, sent: bool) {
        if self.width_ms == 0 {
            self.width_ms = 1;
        }
        let e = self
            .buckets
            .entry(ms.div_euclid(self.width_ms))
            .or_default();
        e[0] += 1;
        e[1] += u64::from(sent);
        while self.buckets.len() > MAX_BUCKETS {
            self.coarsen();
        }
    }

    /// Widens the buckets to the next width of 1, 5, 10, 50, 100, 500 ms, 1, 5, 10, 30 s,
    /// 1, 5, 10, 30 min, 1 h, then doubling: each width a multiple of the one before, so
    /// buckets merge exactly.
    fn coarsen(&mut self) {
        const WIDTHS: [i64; 15] = [
            1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000,
            1_800_000, 3_600_000,
        ];
        let next = WIDTHS
            .iter()
            .copied()
            .find(|&w| w > self.width_ms)
            .unwrap_or_else(|| self.width_ms.saturating_mul(2));
        let factor = (next / self.width_ms.max(1)).max(2);
        let old = std::mem::take(&mut self.buckets);
        self.width_ms = self.width_ms.saturating_mul(factor);
        for (k, v) in old {
            let e = self.buckets.entry(k.div_euclid(factor)).or_default();
            e[0] += v[0];
            e[1] += v[1];
        }
    }

    /// The timeline with buckets at least `min_width_ms` wide and at most `max_buckets`
    /// buckets between the first and the last (doubling the width as needed).
    pub fn coarsened(&self, max_buckets: usize, min_width_ms: i64) -> Self {
        let mut t = self.clone();
        while t.width_ms > 0 && (t.width_ms < min_width_ms || t.span_buckets() > max_buckets as i64)
        {
            t.coarsen();
        }
        t
    }

    fn span_buckets(&self) -> i64 {
        match (self.buckets.keys().next(), self.buckets.keys().next_back()) {
            (Some(a), Some(b)) => b - a + 1,
            _ => 0,
        }
    }

    /// Bucket width in milliseconds (0 when empty).
    pub fn width_ms(&self) -> i64 {
        self.width_ms
    }

    /// `(start ms since the epoch, rows, sent rows)` for every bucket from the first to the
    /// last, empty ones included.
    pub fn series(&self) -> Vec<(i64, u64, u64)> {
        let (Some(&a), Some(&b)) = (self.buckets.keys().next(), self.buckets.keys().next_back())
        else {
            return Vec::new();
        };
        (a..=b)
            .map(|k| {
                let v = self.buckets.get(&k).copied().unwrap_or_default();
                (k * self.width_ms, v[0], v[1])
            })
            .collect()
    }
}

/// Per-domain failure counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomainCounts {
    /// Rows `failed`.
    pub failed: u64,
    /// Rows `deferred`.
    pub deferred: u64,
}

/// Everything `report summary` and `report html` show, gathered row by row.
#[derive(Debug, Default)]
pub struct Summary {
    /// The reports read, as named (printable).
    pub files: Vec<String>,
    /// Reports whose malformed last record was skipped.
    pub truncated: Vec<String>,
    /// Rows read.
    pub rows: u64,
    by_status: [u64; 5],
    /// Per reply: rows, and the text of the first row with that reply.
    replies: HashMap<ReplyKey, (u64, String)>,
    other_replies: u64,
    domains: HashMap<String, DomainCounts>,
    other_domains: DomainCounts,
    row_numbers: RoaringTreemap,
    /// Rows whose row number was already seen.
    pub repeated: u64,
    /// Earliest `finished_at`.
    pub first: Option<OffsetDateTime>,
    /// Latest `finished_at`.
    pub last: Option<OffsetDateTime>,
    /// Rows finished over time.
    pub timeline: Timeline,
}

/// The domain of an address, lower-cased (`-` when there is no `@`).
pub(crate) fn domain_of(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((_, d)) if !d.is_empty() => d.trim_end_matches('>').to_ascii_lowercase(),
        _ => "(no domain)".to_owned(),
    }
}

impl Summary {
    /// Counts one row.
    pub fn add(&mut self, row: &ReportRow) {
        self.rows += 1;
        self.by_status[status_index(row.status)] += 1;
        let key = match row.smtp_code {
            Some(c) => ReplyKey::Smtp(c, row.enhanced_code.clone()),
            None => ReplyKey::Local(row.stage.map(Stage::as_str)),
        };
        if let Some(n) = self.replies.get_mut(&key) {
            n.0 += 1;
        } else if self.replies.len() < MAX_REPLIES {
            let example = row.response.chars().take(EXAMPLE_CHARS).collect();
            self.replies.insert(key, (1, example));
        } else {
            self.other_replies += 1;
        }
        if matches!(row.status, Status::Failed | Status::Deferred) {
            let failed = row.status == Status::Failed;
            let domain = domain_of(&row.email);
            let counts = if let Some(c) = self.domains.get_mut(&domain) {
                c
            } else if self.domains.len() < MAX_DOMAINS {
                self.domains.entry(domain).or_default()
            } else {
                &mut self.other_domains
            };
            if failed {
                counts.failed += 1;
            } else {
                counts.deferred += 1;
            }
        }
        if !self.row_numbers.insert(row.row) {
            self.repeated += 1;
        }
        let t = row.finished_at;
        if self.first.is_none_or(|f| t < f) {
            self.first = Some(t);
        }
        if self.last.is_none_or(|l| t > l) {
            self.last = Some(t);
        }
        let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        self.timeline.add(ms, row.status == Status::Sent);
    }

    /// Rows with this status.
    pub fn count(&self, s: Status) -> u64 {
        self.by_status[status_index(s)]
    }

    /// The response text of the first row with this reply (at most 300 characters, as in
    /// the report: not yet made printable).
    pub fn example(&self, key: &ReplyKey) -> Option<&str> {
        self.replies.get(key).map(|e| e.1.as_str())
    }

    /// Replies by count, most frequent first (ties: by code), and the count of rows whose
    /// reply was not tracked (past [`MAX_REPLIES`] distinct replies).
    pub fn replies(&self) -> (Vec<(ReplyKey, u64)>, u64) {
        let mut v: Vec<_> = self.replies.iter().map(|(k, n)| (k.clone(), n.0)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        (v, self.other_replies)
    }

    /// The `top` domains by failed + deferred rows (ties: by name), and the counts of
    /// the domains not listed.
    pub fn top_domains(&self, top: usize) -> (Vec<(String, DomainCounts)>, DomainCounts) {
        let mut v: Vec<_> = self.domains.iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| {
            (b.1.failed + b.1.deferred)
                .cmp(&(a.1.failed + a.1.deferred))
                .then_with(|| a.0.cmp(&b.0))
        });
        let mut rest = self.other_domains;
        for (_, c) in v.iter().skip(top) {
            rest.failed += c.failed;
            rest.deferred += c.deferred;
        }
        v.truncate(top);
        (v, rest)
    }

    /// Distinct row numbers, the lowest and highest, and how many numbers between them are
    /// absent.
    pub fn row_range(&self) -> Option<(u64, u64, u64, u64)> {
        let (lo, hi) = (self.row_numbers.min()?, self.row_numbers.max()?);
        let distinct = self.row_numbers.len();
        Some((distinct, lo, hi, (hi - lo + 1) - distinct))
    }

    /// Seconds from the first to the last `finished_at`.
    pub fn span_seconds(&self) -> Option<f64> {
        let (a, b) = (self.first?, self.last?);
        Some((b - a).as_seconds_f64())
    }

    /// Rows per second over [`Self::span_seconds`] (`None` for a zero span).
    pub fn throughput(&self) -> Option<f64> {
        let span = self.span_seconds()?;
        (span > 0.0).then(|| self.rows as f64 / span)
    }

    /// The summary as one JSON object (`report summary --json`). Strings are as in the
    /// report; JSON escaping keeps control characters inert.
    pub fn to_json(&self, top: usize) -> serde_json::Value {
        use serde_json::json;
        let (replies, other_replies) = self.replies();
        let replies: Vec<_> = replies
            .iter()
            .map(|(k, n)| match k {
                ReplyKey::Smtp(code, enhanced) => json!({
                    "smtp_code": code, "enhanced_code": enhanced, "stage": null, "rows": n,
                    "example": self.example(k),
                }),
                ReplyKey::Local(stage) => json!({
                    "smtp_code": null, "enhanced_code": null, "stage": stage, "rows": n,
                    "example": self.example(k),
                }),
            })
            .collect();
        let (domains, rest) = self.top_domains(top);
        let domains: Vec<_> = domains
            .iter()
            .map(|(d, c)| json!({"domain": d, "failed": c.failed, "deferred": c.deferred}))
            .collect();
        let status: serde_json::Map<String, serde_json::Value> = STATUSES
            .iter()
            .map(|s| (s.as_str().to_owned(), json!(self.count(*s))))
            .collect();
        let rows = self.row_range().map(|(distinct, lo, hi, missing)| {
            json!({
                "distinct": distinct, "lowest": lo, "highest": hi, "missing": missing,
                "repeated": self.repeated,
            })
        });
        json!({
            "files": self.files,
            "truncated": self.truncated,
            "rows": self.rows,
            "row_numbers": rows,
            "status": status,
            "first_finished_at": self.first.map(timestamp),
            "last_finished_at": self.last.map(timestamp),
            "seconds": self.span_seconds(),
            "rows_per_second": self.throughput(),
            "replies": replies,
            "other_replies": other_replies,
            "domains": domains,
            "other_domains": {"failed": rest.failed, "deferred": rest.deferred},
        })
    }

    /// The plain-text summary (all text printable).
    pub fn render_text(&self, top: usize) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "report   {}", self.files.join(", "));
        for t in &self.truncated {
            let _ = writeln!(
                o,
                "note     {t}: last record cut short (killed run), skipped"
            );
        }
        let _ = write!(o, "rows     {}", group(self.rows));
        if let Some((_, lo, hi, missing)) = self.row_range() {
            let _ = write!(
                o,
                " (row numbers {}–{}, {} missing, {} repeated)",
                group(lo),
                group(hi),
                group(missing),
                group(self.repeated)
            );
        }
        o.push('\n');
        let statuses: Vec<String> = STATUSES
            .iter()
            .map(|s| format!("{} {}", group(self.count(*s)), s))
            .collect();
        let _ = writeln!(o, "status   {}", statuses.join(", "));
        match (self.first, self.last) {
            (Some(a), Some(b)) => {
                let _ = writeln!(
                    o,
                    "finished {} .. {} ({})",
                    timestamp(a),
                    timestamp(b),
                    seconds(self.span_seconds().unwrap_or(0.0))
                );
            }
            _ => o.push_str("finished -\n"),
        }
        match self.throughput() {
            Some(r) => {
                let _ = writeln!(o, "rate     {} rows/s", rate(r));
            }
            None if self.rows > 1 => {
                o.push_str("rate     - (all rows finished in the same millisecond)\n");
            }
            None => o.push_str("rate     -\n"),
        }

        let (replies, other) = self.replies();
        let mut table: Vec<(String, String)> = replies
            .iter()
            .map(|(k, n)| (k.label(), group(*n)))
            .collect();
        if other > 0 {
            table.push(("(other replies)".to_owned(), group(other)));
        }
        let w1 = table
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0)
            .max(16);
        let w2 = table.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
        let _ = writeln!(o, "\n{:<w1$} {:>w2$}", "reply", "rows");
        for (label, n) in &table {
            let _ = writeln!(o, "{label:<w1$} {n:>w2$}");
        }

        let (domains, rest) = self.top_domains(top);
        if domains.is_empty() {
            o.push_str("\nno failed or deferred rows\n");
        } else {
            let mut table: Vec<(String, String, String)> = domains
                .iter()
                .map(|(d, c)| {
                    (
                        printable_str(d).into_owned(),
                        group(c.failed),
                        group(c.deferred),
                    )
                })
                .collect();
            if rest.failed + rest.deferred > 0 {
                table.push((
                    "(others)".to_owned(),
                    group(rest.failed),
                    group(rest.deferred),
                ));
            }
            let width = table
                .iter()
                .map(|r| r.0.chars().count())
                .max()
                .unwrap_or(0)
                .max(6);
            let w2 = table.iter().map(|r| r.1.len()).max().unwrap_or(0).max(6);
            let w3 = table.iter().map(|r| r.2.len()).max().unwrap_or(0).max(8);
            let _ = writeln!(
                o,
                "\n{:<width$}  {:>w2$}  {:>w3$}",
                "domain", "failed", "deferred"
            );
            for (d, f, df) in &table {
                let _ = writeln!(o, "{d:<width$}  {f:>w2$}  {df:>w3$}");
            }
        }
        o
    }
}

/// `1234567` → `1,234,567`.
pub(crate) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with three significant digits at most, grouped.
pub(crate) fn rate(r: f64) -> String {
    if r >= 100.0 {
        group(r.round() as u64)
    } else if r >= 10.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

/// A duration: `0.024 s`, `27.0 s`, `1h 02m 03s`.
pub(crate) fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.3} s")
    } else if s < 600.0 {
        format!("{s:.1} s")
    } else {
        let t = s.round() as u64;
        format!("{}h {:02}m {:02}s", t / 3600, t / 60 % 60, t % 60)
    }
}

/// RFC 3339 UTC with milliseconds, as in reports.
pub(crate) fn timestamp(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| "-".to_owned())
}
