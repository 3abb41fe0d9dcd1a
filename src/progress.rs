//! Progress bar on stderr: only when stderr is a terminal and not `--quiet`.
//! `PIPEMAIL_FORCE_TTY=1` forces it on (the one test hook), `=0` forces it off.

use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use pipemail::campaign::{RoundTrips, Tally};

pub(crate) struct Progress {
    bar: ProgressBar,
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
        100
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
        if i > 0 && (s.len() - i) % 3 == 0 {
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
            };
        }
        let target = if forced() {
            ProgressDrawTarget::term_like(Box::new(ForcedStderr))
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(total, target);
        let template = if total.is_some() {
            "{prefix}{bar:30.cyan/blue} {pos}/{len} {per_sec} ETA {eta} {msg}"
        } else {
            "{prefix}{spinner} {pos} rows {per_sec} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        if let Some(l) = label {
            bar.set_prefix(format!("{:<10} ", pipemail::text::printable_str(l)));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    pub(crate) fn update(&self, s: &Tally, rt: RoundTrips) {
        let (rt_used, rt_lockstep) = (rt.used, rt.lockstep);
        if self.bar.is_hidden() {
            return;
        }
        self.bar.set_position(s.rows);
        let mut msg = format!(
            "sent {} failed {}",
            s.sent,
            s.failed + s.deferred + s.unknown
        );
        if rt_lockstep > 0 {
            msg += &format!(" · {}", saved(rt_used, rt_lockstep));
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
}
