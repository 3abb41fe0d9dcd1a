//! `pipemail report html`: one self-contained page (no network, no JavaScript) with the
//! summary tables and inline SVG charts.
//!
//! Every string that came from a report (addresses, domains, enhanced codes, file names) is
//! made printable ([`crate::text::printable_str`]) and then HTML-escaped ([`escape`]) before
//! it reaches the page, in tables and in SVG labels alike. A Content-Security-Policy of
//! `default-src 'none'` in the page forbids scripts and any fetch, should anything slip
//! through.

use std::fmt::Write as _;

use super::stats::{STATUSES, Summary, group, rate, seconds, timestamp};
use crate::report::Status;
use crate::text::printable_str;

/// Bars in the rows-per-second chart, at most.
const TIME_BARS: usize = 90;

/// `s` made printable, then with `&`, `<`, `>`, `"` and `'` escaped for HTML text and
/// attribute values.
pub fn escape(s: &str) -> String {
    let p = printable_str(s);
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn color(s: Status) -> &'static str {
    match s {
        Status::Sent => "#2e7d32",
        Status::Failed => "#c62828",
        Status::Deferred => "#ef6c00",
        Status::Skipped => "#78909c",
        Status::Unknown => "#6a1b9a",
    }
}

const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
color:#1d2327;background:#f6f7f9;margin:0}\
main{max-width:1040px;margin:0 auto;padding:24px 32px 40px}\
h1{font-size:24px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}\
.files{color:#57606a;margin:0 0 18px;word-break:break-all}\
.cards{display:flex;gap:12px;flex-wrap:wrap}\
.card{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:10px 16px;min-width:110px}\
.card b{display:block;font-size:22px}.card span{color:#57606a;font-size:12px;text-transform:uppercase}\
.panel{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:14px 18px}\
.row{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}\
table{border-collapse:collapse;font-variant-numeric:tabular-nums}\
th,td{padding:4px 12px 4px 0;text-align:left;border-bottom:1px solid #eaeef2}\
td.n,th.n{text-align:right}th{color:#57606a;font-weight:600}\
.note{color:#57606a;font-size:12px}svg text{font:12px system-ui,sans-serif;fill:#1d2327}\
td.text{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;\
color:#3d444d;word-break:break-all;max-width:620px}\
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}";

/// The page for `s`, listing the `top` domains by failures and deferrals.
pub fn render(s: &Summary, top: usize) -> String {
    let mut o = String::with_capacity(16 << 10);
    o.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>pipemail report</title><style>",
    );
    o.push_str(STYLE);
    o.push_str("</style></head><body><main>\n<h1>pipemail report</h1>\n");
    let files: Vec<String> = s.files.iter().map(|f| escape(f)).collect();
    let _ = writeln!(o, "<p class=\"files\">{}</p>", files.join(", "));
    for t in &s.truncated {
        let _ = writeln!(
            o,
            "<p class=\"note\">{}: the last record was cut short (a killed run) and skipped.</p>",
            escape(t)
        );
    }
    cards(&mut o, s);
    o.push_str("<h2>Status</h2>\n<div class=\"panel row\">");
    status_chart(&mut o, s);
    o.push_str(
        "<table><tr><th>status</th><th class=\"n\">rows</th><th class=\"n\">share</th></tr>",
    );
    for st in STATUSES {
        let n = s.count(st);
        let share = if s.rows > 0 {
            100.0 * n as f64 / s.rows as f64
        } else {
            0.0
        };
        let _ = write!(
            o,
            "<tr><td><span class=\"sw\" style=\"background:{}\"></span>{st}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{share:.1}%</td></tr>",
            color(st),
            group(n)
        );
    }
    o.push_str("</table></div>\n");

    o.push_str(
        "<h2>Replies</h2>\n<div class=\"panel\"><table><tr><th>reply</th>\
         <th class=\"n\">rows</th><th>first response</th></tr>",
    );
    let (replies, other) = s.replies();
    for (k, n) in &replies {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"text\">{}</td></tr>",
            escape(&k.label()),
            group(*n),
            escape(s.example(k).unwrap_or(""))
        );
    }
    if other > 0 {
        let _ = write!(
            o,
            "<tr><td>(other replies)</td><td class=\"n\">{}</td><td></td></tr>",
            group(other)
        );
    }
    o.push_str("</table></div>\n");

    o.push_str("<h2>Failures and deferrals by domain</h2>\n<div class=\"panel\">");
    domain_chart(&mut o, s, top);
    o.push_str("</div>\n<h2>Rows finished per second</h2>\n<div class=\"panel\">");
    time_chart(&mut o, s);
    let _ = write!(
        o,
        "</div>\n<p class=\"note\">Generated by pipemail {} from the report rows above; \
         times are each row's finished_at (UTC).</p>\n</main></body></html>\n",
        env!("CARGO_PKG_VERSION")
    );
    o
}

fn cards(o: &mut String, s: &Summary) {
    o.push_str("<div class=\"cards\">");
    let mut card = |label: &str, value: String| {
        let _ = write!(
            o,
            "<div class=\"card\"><span>{label}</span><b>{}</b></div>",
            escape(&value)
        );
    };
    card("rows", group(s.rows));
    for st in [Status::Sent, Status::Failed, Status::Deferred] {
        card(st.as_str(), group(s.count(st)));
    }
    card(
        "duration",
        s.span_seconds().map_or_else(|| "-".to_owned(), seconds),
    );
    card(
        "rows/s",
        s.throughput().map_or_else(|| "-".to_owned(), rate),
    );
    o.push_str("</div>\n");
    if let (Some(a), Some(b)) = (s.first, s.last) {
        let _ = writeln!(
            o,
            "<p class=\"note\">First row finished {}, last {}.{}</p>",
            timestamp(a),
            timestamp(b),
            match s.row_range() {
                Some((_, lo, hi, missing)) => format!(
                    " Row numbers {}–{}, {} missing, {} repeated.",
                    group(lo),
                    group(hi),
                    group(missing),
                    group(s.repeated)
                ),
                None => String::new(),
            }
        );
    }
}

fn status_chart(o: &mut String, s: &Summary) {
    let (w, bar_w, row_h) = (460.0, 300.0, 26.0);
    let h = row_h * STATUSES.len() as f64 + 8.0;
    let max = STATUSES
        .iter()
        .map(|st| s.count(*st))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let _ = write!(
        o,
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"rows by status\">"
    );
    for (i, st) in STATUSES.iter().enumerate() {
        let y = 4.0 + row_h * i as f64;
        let n = s.count(*st);
        let len = (bar_w * n as f64 / max).max(if n > 0 { 2.0 } else { 0.0 });
        let _ = write!(
            o,
            "<text x=\"0\" y=\"{:.1}\">{st}</text><rect x=\"80\" y=\"{y:.1}\" width=\"{len:.1}\" \
             height=\"18\" rx=\"3\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            y + 13.0,
            color(*st),
            86.0 + len,
            y + 13.0,
            group(n)
        );
    }
    o.push_str("</svg>");
}

fn domain_chart(o: &mut String, s: &Summary, top: usize) {
    let (domains, rest) = s.top_domains(top);
    if domains.is_empty() {
        o.push_str("<p>No failed or deferred rows.</p>");
        return;
    }
    let (label_w, bar_w, row_h) = (300.0, 520.0, 24.0);
    let w = label_w + bar_w + 80.0;
    let h = row_h * domains.len() as f64 + 30.0;
    let max = domains
        .iter()
        .map(|(_, c)| c.failed + c.deferred)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let _ = write!(
        o,
        "<svg width=\"100%\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"failed and deferred rows by domain\">"
    );
    for (i, (d, c)) in domains.iter().enumerate() {
        let y = row_h * i as f64;
        let name: String = printable_str(d).chars().take(40).collect();
        let f = bar_w * c.failed as f64 / max;
        let df = bar_w * c.deferred as f64 / max;
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{f:.1}\" height=\"17\" fill=\"{}\"/>\
             <rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{df:.1}\" height=\"17\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{} / {}</text>",
            label_w - 8.0,
            y + 13.0,
            escape(&name),
            color(Status::Failed),
            label_w + f,
            color(Status::Deferred),
            label_w + f + df + 6.0,
            y + 13.0,
            group(c.failed),
            group(c.deferred)
        );
    }
    let ly = h - 8.0;
    let _ = write!(
        o,
        "<rect x=\"{label_w}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
         <text x=\"{:.1}\" y=\"{ly:.1}\">failed</text>\
         <rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
         <text x=\"{:.1}\" y=\"{ly:.1}\">deferred</text></svg>",
        ly - 9.0,
        color(Status::Failed),
        label_w + 14.0,
        label_w + 70.0,
        ly - 9.0,
        color(Status::Deferred),
        label_w + 84.0
    );
    o.push_str(
        "<table><tr><th>domain</th><th class=\"n\">failed</th><th class=\"n\">deferred</th></tr>",
    );
    for (d, c) in &domains {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(d),
            group(c.failed),
            group(c.deferred)
        );
    }
    if rest.failed + rest.deferred > 0 {
        let _ = write!(
            o,
            "<tr><td>(other domains)</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            group(rest.failed),
            group(rest.deferred)
        );
    }
    o.push_str("</table>");
}

fn time_chart(o: &mut String, s: &Summary) {
    let t = s.timeline.coarsened(TIME_BARS, 1);
    let series = t.series();
    let Some(&(start, _, _)) = series.first() else {
        o.push_str("<p>No rows.</p>");
        return;
    };
    let width_s = t.width_ms() as f64 / 1000.0;
    let per_s = |n: u64| n as f64 / width_s;
    let max = series
        .iter()
        .map(|b| per_s(b.1))
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let (left, plot_w, plot_h, top) = (70.0, 880.0, 220.0, 10.0);
    let (w, h) = (left + plot_w + 20.0, top + plot_h + 50.0);
    let bar = plot_w / series.len() as f64;
    let _ = write!(
        o,
        "<svg width=\"100%\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"rows finished per second over time\">\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{:.1}\" stroke=\"#8c959f\"/>\
         <line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#8c959f\"/>",
        top + plot_h,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    for frac in [1.0, 0.5] {
        let y = top + plot_h * (1.0 - frac);
        let _ = write!(
            o,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eaeef2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            left - 6.0,
            y + 4.0,
            rate(max * frac)
        );
    }
    let _ = write!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">0</text>",
        left - 6.0,
        top + plot_h + 4.0
    );
    for (i, &(_, all, sent)) in series.iter().enumerate() {
        let x = left + bar * i as f64;
        let h_all = plot_h * per_s(all) / max;
        let h_sent = plot_h * per_s(sent) / max;
        let bw = (bar - 1.0).max(0.5);
        if all > sent {
            let _ = write!(
                o,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                top + plot_h - h_all,
                h_all - h_sent,
                color(Status::Failed)
            );
        }
        if sent > 0 {
            let _ = write!(
                o,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{h_sent:.1}\" fill=\"{}\"/>",
                top + plot_h - h_sent,
                color(Status::Sent)
            );
        }
    }
    let span_ms = t.width_ms() * series.len() as i64;
    let base = top + plot_h + 18.0;
    let _ = write!(
        o,
        "<text x=\"{left}\" y=\"{base:.1}\">+0 s</text>\
         <text x=\"{:.1}\" y=\"{base:.1}\" text-anchor=\"end\">+{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time since {} (each bar {}; \
         green: sent, red: not sent)</text></svg>",
        left + plot_w,
        seconds(span_ms as f64 / 1000.0),
        left + plot_w / 2.0,
        base + 20.0,
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start) * 1_000_000)
            .map_or_else(|_| "-".to_owned(), timestamp),
        match t.width_ms() {
            w if w < 1000 => format!("{w} ms"),
            w if w < 60_000 => format!("{} s", w / 1000),
            w if w < 3_600_000 => format!("{} min", w / 60_000),
            w => format!("{} h", w / 3_600_000),
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_controls() {
        assert_eq!(
            escape("<script>alert('x')</script>&\"\x1b[2J"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\\x1b[2J"
        );
    }
}
