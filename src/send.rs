//! `pipemail send`: the front end of [`pipemail::campaign`]. Wires a validated plan to the
//! campaign and adds what a terminal needs: the progress bar, the one `-v` transcript
//! printer, the lock-step warning, Ctrl-C messages, the summary line and `--dry-run` output.

use std::io::Write as _;

use pipemail::campaign::{
    DryRunEvent, LevelChange, LevelReason, Observer, RoundTrips, Summary, Tally,
};
use pipemail::driver::Target;
use pipemail::engine::Exchange;
use pipemail::text::printable_str;

use crate::config::SendPlan;
use crate::exit::{Exit, Failure, for_campaign};
use crate::progress::{Progress, saved};

/// Prints a command and its reply the `-v` way: `C: …`, then one `S: …` per reply line,
/// `code-` on all but the last, the enhanced code on the first. The only transcript printer.
pub(crate) fn print_exchange(x: &Exchange) {
    let mut err = std::io::stderr().lock();
    let _ = write_exchange(&mut err, x);
}

/// Every line is shown inert ([`printable_str`]): a server's reply text (and a command
/// echoing list values) cannot move the terminal's cursor, recolour it or retitle it.
fn write_exchange(out: &mut impl std::io::Write, x: &Exchange) -> std::io::Result<()> {
    if !x.command.is_empty() {
        writeln!(out, "C: {}", printable_str(&x.command))?;
    }
    let n = x.reply.lines.len();
    for (i, line) in x.reply.lines.iter().enumerate() {
        let sep = if i + 1 == n { ' ' } else { '-' };
        write!(out, "S: {}{sep}", x.reply.code)?;
        if let Some(e) = x.reply.enhanced.filter(|_| i == 0) {
            write!(out, "{e} ")?;
        }
        writeln!(out, "{}", printable_str(line))?;
    }
    Ok(())
}

/// `-v`: the evidence a session found against its pipelining level, server text made
/// printable: "pipemail: mx:25: step-down cross-message → within-message: C: MAIL FROM:<…>
/// S: 503 5.5.0 …".
fn write_evidence(
    out: &mut impl std::io::Write,
    target: &Target,
    evidence: &LevelReason,
) -> std::io::Result<()> {
    match evidence {
        LevelReason::Refused(s) => {
            write!(
                out,
                "pipemail: {target}: step-down {} -> {}: ",
                s.from, s.to
            )?;
            match &s.command {
                Some(c) => write!(out, "C: {} ", printable_str(c))?,
                None => write!(out, "{} ", s.verb)?,
            }
            writeln!(out, "S: {}", printable_str(&s.reply.to_string()))
        }
        LevelReason::Dropped { drops, verb } => writeln!(
            out,
            "pipemail: {target}: the server closed the connection after a positive reply to an end of data, with {} pipelined behind it (drop {drops}; the {} lowers the level)",
            verb,
            ordinal(pipemail::campaign::DROPS_TO_STEP_DOWN)
        ),
        LevelReason::KeptTransaction { command, reply } => {
            write!(
                out,
                "pipemail: {target}: the server kept a refused transaction open: "
            )?;
            if let Some(c) = command {
                write!(out, "C: {} ", printable_str(c))?;
            }
            writeln!(
                out,
                "S: {}; RSET before every pipelined MAIL, a budget of refused transactions per session",
                printable_str(&reply.to_string())
            )
        }
        LevelReason::RsetBudget { refused, budget } => writeln!(
            out,
            "pipemail: {target}: {refused} transactions refused on this session (budget {budget}; each may cost the server's count of non-mail commands): quitting, the rest goes on a new session"
        ),
    }
}

fn ordinal(n: u32) -> &'static str {
    match n {
        1 => "first",
        2 => "second",
        3 => "third",
        _ => "n-th",
    }
}

/// The terminal side of a run.
struct Terminal {
    progress: Progress,
    quiet: bool,
    verbose: bool,
}

impl Observer for Terminal {
    fn row(&self, tally: &Tally, rt: RoundTrips) {
        self.progress.update(tally, rt);
    }

    fn finished(&self) {
        self.progress.finish();
    }

    fn exchange(&self, x: &Exchange) {
        if self.verbose {
            print_exchange(x);
        }
    }

    fn lockstep(&self, target: &Target) {
        if !self.quiet {
            let target = target.to_string();
            eprintln!(
                "pipemail: warning: {} does not advertise PIPELINING: sending lock-step, one round trip per command",
                printable_str(&target)
            );
        }
    }

    fn pipelining_evidence(&self, target: &Target, evidence: &LevelReason) {
        if self.verbose {
            let mut err = std::io::stderr().lock();
            let _ = write_evidence(&mut err, target, evidence);
        }
    }

    fn pipelining_level(&self, change: &LevelChange) {
        let text = change.describe();
        self.progress.set_level(&text);
        if !self.quiet {
            eprintln!(
                "pipemail: warning: {}: {}; every new session starts at that level",
                change.target,
                printable_str(&text)
            );
        }
    }

    fn no_dsn(&self, target: &Target) {
        if !self.quiet {
            eprintln!(
                "pipemail: warning: {target} does not advertise DSN: sending without --dsn-notify/--dsn-ret parameters"
            );
        }
    }

    fn interrupted(&self) {
        eprintln!(
            "\npipemail: interrupted: finishing messages in flight, reporting the rest as deferred (Ctrl-C again to abort)"
        );
    }

    fn aborted(&self) {
        std::process::exit(130);
    }
}

/// Runs the plan; returns the summary (the caller prints it and maps the exit code).
pub(crate) fn run(plan: SendPlan) -> Result<Summary, Failure> {
    let progress = Progress::new(plan.list_total, plan.quiet, plan.label.as_deref());
    let terminal = Terminal {
        progress,
        quiet: plan.quiet,
        verbose: plan.verbose,
    };
    plan.campaign
        .run(std::sync::Arc::new(terminal))
        .map_err(Failure::from)
}

/// "300 rows: 299 sent, 1 failed, 0 deferred, 0 skipped in 0.3s (907 msg/s); …".
pub(crate) fn summary_line(s: &Summary) -> String {
    let secs = s.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        s.sent_this_run as f64 / secs
    } else {
        0.0
    };
    let mut line = format!(
        "{} rows: {} sent, {} failed, {} deferred, {} skipped",
        s.rows, s.sent, s.failed, s.deferred, s.skipped
    );
    if s.unknown > 0 {
        line += &format!(", {} unknown", s.unknown);
    }
    line += &format!(" in {secs:.1}s ({rate:.0} msg/s)");
    if s.rt_lockstep > 0 {
        line += &format!("; {}", saved(s.rt_used, s.rt_lockstep));
    }
    if let Some(change) = &s.pipelining {
        line += &format!("; {}", printable_str(&change.describe()));
    }
    if s.sanitized_rows > 0 {
        line += &format!(
            "; warning: {} rows had CR/LF in header values (replaced by spaces)",
            s.sanitized_rows
        );
    }
    if let Some(e) = &s.session_error
        && !s.any_session
    {
        line += &format!("; no session: {}", printable_str(e));
    }
    line
}

/// `--dry-run`: renders every row (as for a server without SMTPUTF8), prints the first
/// message on stdout and the counts on stderr; connects to nothing.
pub(crate) fn dry_run(plan: SendPlan) -> Result<Exit, Failure> {
    let mut out_err = None;
    let d = &plan.campaign.deliverability;
    let (no_unsubscribe, no_dkim) = (
        d.unsubscribe_url.is_none() && d.unsubscribe_mailto.is_none(),
        d.signers.is_empty(),
    );
    let counts = plan
        .campaign
        .dry_run(|ev| match ev {
            DryRunEvent::First(data) => {
                let mut out = std::io::stdout().lock();
                if let Err(e) = out.write_all(data).and_then(|()| out.flush()) {
                    out_err.get_or_insert(e);
                }
            }
            DryRunEvent::Problem { row, line, text } => {
                eprintln!("pipemail: row {row} (line {line}): {}", printable_str(text));
            }
        })
        .map_err(|e| Failure::new(for_campaign(&e), e))?;
    if let Some(e) = out_err {
        return Err(Failure::new(Exit::IoErr, e));
    }
    let already = if counts.already > 0 {
        format!(", {} done by an earlier run", counts.already)
    } else {
        String::new()
    };
    eprintln!(
        "pipemail: dry run: {} messages would be sent, {} rows fail, {} duplicates skipped{already}; nothing was sent",
        counts.ok, counts.failed, counts.skipped
    );
    if counts.sanitized > 0 {
        eprintln!(
            "pipemail: warning: {} rows had CR/LF in header values (replaced by spaces)",
            counts.sanitized
        );
    }
    if let Some(w) = bulk_warning(counts.ok + counts.failed, no_unsubscribe, no_dkim) {
        eprintln!("pipemail: warning: {w}");
    }
    Ok(if counts.failed == 0 {
        Exit::Ok
    } else {
        Exit::Partial
    })
}

/// Rows above which `--dry-run` warns about a list sent without List-Unsubscribe or DKIM
/// (bulk-sender rules of the large mailbox providers).
const BULK_ROWS: u64 = 1_000;

/// The `--dry-run` warning for a bulk list without one-click unsubscribe or DKIM.
fn bulk_warning(rows: u64, no_unsubscribe: bool, no_dkim: bool) -> Option<String> {
    if rows <= BULK_ROWS || !(no_unsubscribe || no_dkim) {
        return None;
    }
    let missing = match (no_unsubscribe, no_dkim) {
        (true, true) => "no List-Unsubscribe (--unsubscribe) and no DKIM signature (--dkim-key)",
        (true, false) => "no List-Unsubscribe (--unsubscribe)",
        _ => "no DKIM signature (--dkim-key)",
    };
    Some(format!(
        "{rows} messages with {missing}: large mailbox providers expect both from bulk senders"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_lists_without_unsubscribe_or_dkim_are_warned_about() {
        assert_eq!(bulk_warning(1_000, true, true), None);
        assert_eq!(bulk_warning(5_000, false, false), None);
        let w = bulk_warning(1_001, true, false).expect("warned");
        assert!(
            w.contains("no List-Unsubscribe") && !w.contains("DKIM"),
            "{w}"
        );
        let w = bulk_warning(2_000, true, true).expect("warned");
        assert!(w.contains("List-Unsubscribe") && w.contains("DKIM"), "{w}");
    }
    use pipemail::engine::{EnhancedCode, Reply};

    #[test]
    fn transcript_lines_match_the_wire() {
        let x = Exchange {
            command: "RCPT TO:<a@example.net>".into(),
            verb: None,
            reply: Reply {
                code: 250,
                enhanced: Some(EnhancedCode {
                    class: 2,
                    subject: 1,
                    detail: 5,
                }),
                lines: vec!["first".into(), "last".into()],
            },
            ok: true,
            recipient: None,
        };
        let mut out = Vec::new();
        write_exchange(&mut out, &x).expect("write to a Vec");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "C: RCPT TO:<a@example.net>\nS: 250-2.1.5 first\nS: 250 last\n"
        );
    }

    #[test]
    fn summary_line_names_every_count_and_the_round_trips_saved() {
        let s = Summary {
            rows: 300,
            sent: 299,
            failed: 1,
            unknown: 2,
            rt_used: 6,
            rt_lockstep: 1199,
            sanitized_rows: 3,
            elapsed: std::time::Duration::from_millis(300),
            any_session: true,
            sent_this_run: 299,
            ..Summary::default()
        };
        assert_eq!(
            summary_line(&s),
            "300 rows: 299 sent, 1 failed, 0 deferred, 0 skipped, 2 unknown in 0.3s (997 msg/s); \
             6 round trips instead of 1,199, 99% saved; \
             warning: 3 rows had CR/LF in header values (replaced by spaces)"
        );
        let none = Summary {
            rows: 2,
            deferred: 2,
            session_error: Some("cannot connect".into()),
            ..Summary::default()
        };
        assert_eq!(
            summary_line(&none),
            "2 rows: 0 sent, 0 failed, 2 deferred, 0 skipped in 0.0s (0 msg/s); no session: cannot connect"
        );
    }
}
