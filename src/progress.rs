//! Progress bar on stderr: only when stderr is a terminal and not `--quiet`.
//! `PIPEMAIL_FORCE_TTY=1` forces it on (the one test hook), `=0` forces it off.

use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use pipemail::campaign::{RoundTrips, Tally};

pub(crate) struct Progress {
    bar: ProgressBar,
    /// Columns taken by the prefix (the demo's label).
    prefix_width: usize,
    /// A known total: the line has a bar and an ETA.
    bounded: bool,
    /// The pipelining level the run lowered to, when it did (issue 11).
    level: std::sync::Mutex<Option<String>>,
}

/// Columns the line may use: the terminal's width (`$COLUMNS` when the bar is forced onto
/// something that is not a terminal), 80 when unknown.
fn term_width() -> usize {
    let tty = (!forced())
        .then(|| console::Term::stderr().size_checked())
        .flatten();
    if let Some((_, cols)) = tty {
        return usize::from(cols).max(20);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c >= 20)
        .unwrap_or(80)
}

/// Whole messages per second: "43/s".
fn rate(per_sec: f64) -> String {
    if per_sec.is_finite() && per_sec > 0.0 {
        format!("{per_sec:.0}/s")
    } else {
        "0/s".to_owned()
    }
}

/// The message after the counters: the longest form that fits in `room` columns, from
/// "sent 9 failed 0 · 412 round trips instead of 4,012, 90% saved" down to "90% saved"
/// (and nothing when even that does not fit).
pub(crate) fn status_text(sent: u64, failed: u64, rt: RoundTrips, room: usize) -> String {
    let counts = format!("sent {} failed {}", thousands(sent), thousands(failed));
    let mut forms = Vec::new();
    if rt.lockstep > 0 {
        let pct = saved_pct(rt.used, rt.lockstep);
        forms.push(format!("{counts} · {}", saved(rt.used, rt.lockstep)));
        forms.push(format!("{counts} · {pct}% round trips saved"));
        forms.push(format!("{counts} · {pct}% saved"));
        forms.push(format!(
            "{} ok {} failed {pct}% saved",
            thousands(sent),
            thousands(failed)
        ));
        forms.push(format!("{pct}% saved"));
    } else {
        forms.push(counts);
        forms.push(format!(
            "{} ok {} failed",
            thousands(sent),
            thousands(failed)
        ));
    }
    forms
        .into_iter()
        .find(|f| f.chars().count() <= room)
        .unwrap_or_default()
}

fn saved_pct(used: u64, lockstep: u64) -> u64 {
    if lockstep == 0 || used >= lockstep {
        return 0;
    }
    (100.0 * (1.0 - used as f64 / lockstep as f64)).round() as u64
}

/// Should the bar be drawn?
pub(crate) fn enabled(quiet: bool) -> bool {
    if quiet {
        return false;
    }
    match std::env::var("PIPEMAIL_FORCE_TTY").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb"),
    }
}

/// `PIPEMAIL_FORCE_TTY=1`: draw even though stderr is not a terminal.
fn forced() -> bool {
    std::env::var("PIPEMAIL_FORCE_TTY").as_deref() == Ok("1")
}

/// stderr as a terminal, whatever it really is. indicatif's own stderr target hides itself
/// when stderr is not a terminal, which would make `PIPEMAIL_FORCE_TTY=1` draw nothing.
#[derive(Debug)]
struct ForcedStderr;

impl ForcedStderr {
    fn put(s: &str) -> std::io::Result<()> {
        std::io::stderr().lock().write_all(s.as_bytes())
    }

    fn csi(n: usize, code: char) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        Self::put(&format!("\x1b[{n}{code}"))
    }
}

impl TermLike for ForcedStderr {
    fn width(&self) -> u16 {
        u16::try_from(term_width()).unwrap_or(u16::MAX)
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        Self::csi(n, 'A')
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        Self::csi(n, 'B')
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        Self::csi(n, 'C')
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        Self::csi(n, 'D')
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        Self::put(&format!("{s}\n"))
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        Self::put(s)
    }

    fn clear_line(&self) -> std::io::Result<()> {
        Self::put("\r\x1b[2K")
    }

    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// "412 round trips instead of 4,012, 90% saved".
pub(crate) fn saved(used: u64, lockstep: u64) -> String {
    let pct = if lockstep > 0 {
        100.0 * (1.0 - used as f64 / lockstep as f64)
    } else {
        0.0
    };
    format!(
        "{} round trips instead of {}, {pct:.0}% saved",
        thousands(used),
        thousands(lockstep)
    )
}

pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Progress {
    pub(crate) fn new(total: Option<u64>, quiet: bool, label: Option<&str>) -> Self {
        if !enabled(quiet) {
            return Self {
                bar: ProgressBar::hidden(),
                prefix_width: 0,
                bounded: false,
                level: std::sync::Mutex::new(None),
            };
        }
        let target = if forced() {
            ProgressDrawTarget::term_like(Box::new(ForcedStderr))
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(total, target);
        // The bar takes what the text leaves (`wide_bar`); `update` sizes the text so the
        // line never wraps, since a wrapped line scrolls instead of redrawing.
        let template = if total.is_some() {
            "{prefix}{wide_bar:.cyan/blue} {pos}/{len} {rate} ETA {eta} {msg}"
        } else {
            "{prefix}{spinner} {pos} rows {rate} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            let style = style.with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rate(s.per_sec()));
                },
            );
            bar.set_style(style.progress_chars("=> "));
        }
        let mut prefix_width = 0;
        if let Some(l) = label {
            let p = format!("{:<10} ", pipemail::text::printable_str(l));
            prefix_width = p.chars().count();
            bar.set_prefix(p);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            prefix_width,
            bounded: total.is_some(),
            level: std::sync::Mutex::new(None),
        }
    }

    /// The run lowered its pipelining level: the figures say so from now on.
    pub(crate) fn set_level(&self, text: &str) {
        *self
            .level
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text.to_string());
    }

    pub(crate) fn update(&self, s: &Tally, rt: RoundTrips) {
        if self.bar.is_hidden() {
            return;
        }
        self.bar.set_position(s.rows);
        // Everything on the line but the message and the bar, with room for the rate and
        // the ETA to grow a little before the next update; one column spare.
        let counter = match self.bar.length() {
            Some(len) => format!("{}/{len}", s.rows),
            None => format!("{} rows", s.rows),
        };
        let mut used =
            self.prefix_width + 1 + counter.len() + 1 + rate(self.bar.per_sec()).len() + 3 + 1;
        if self.bounded {
            // " ETA 12m" (up to 6 columns of duration) and a bar of at least 10.
            used += 5 + 6 + 10;
        }
        let level = self
            .level
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let level = level.map(|l| format!(" · {l}")).unwrap_or_default();
        let room = term_width().saturating_sub(used + 1);
        let failed = s.failed + s.deferred + s.unknown;
        let mut msg = status_text(s.sent, failed, rt, room);
        if msg.chars().count() + level.chars().count() <= room {
            msg += &level;
        }
        self.bar.set_message(msg);
    }

    pub(crate) fn finish(&self) {
        self.bar.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures() {
        assert_eq!(thousands(4012), "4,012");
        assert_eq!(thousands(12), "12");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(
            saved(412, 4012),
            "412 round trips instead of 4,012, 90% saved"
        );
    }

    #[test]
    fn status_text_shortens_to_fit_and_keeps_the_saving() {
        let rt = RoundTrips {
            used: 412,
            lockstep: 4012,
        };
        let all = status_text(1200, 3, rt, 200);
        assert_eq!(
            all,
            "sent 1,200 failed 3 · 412 round trips instead of 4,012, 90% saved"
        );
        assert_eq!(
            status_text(1200, 3, rt, 45),
            "sent 1,200 failed 3 · 90% round trips saved"
        );
        assert_eq!(
            status_text(1200, 3, rt, 32),
            "sent 1,200 failed 3 · 90% saved"
        );
        assert_eq!(status_text(1200, 3, rt, 28), "1,200 ok 3 failed 90% saved");
        assert_eq!(status_text(1200, 3, rt, 10), "90% saved");
        assert_eq!(status_text(1200, 3, rt, 5), "");
        for room in 0..80 {
            assert!(status_text(1200, 3, rt, room).chars().count() <= room);
        }
        assert_eq!(rate(42.5704), "43/s");
    }
}
