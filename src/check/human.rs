//! The human-readable form of the check-server report.

use pipemail::text::printable_str;

use super::{CrossResult, Report};
use crate::progress::thousands;

/// Makes every text in the report that came from the server (or from a certificate)
/// printable, so neither form (human or JSON) carries a control character to a terminal:
/// the banner, capabilities, TLS names, replies and the details quoting them.
pub(super) fn make_inert(r: &mut Report) {
    fn fix(s: &mut String) {
        if let std::borrow::Cow::Owned(t) = printable_str(s) {
            *s = t;
        }
    }
    fn fix_opt(s: &mut Option<String>) {
        if let Some(s) = s {
            fix(s);
        }
    }
    fix(&mut r.server);
    fix(&mut r.banner);
    r.capabilities.iter_mut().for_each(fix);
    if let Some(after) = &mut r.capabilities_after_tls {
        after.iter_mut().for_each(fix);
    }
    if let Some(t) = &mut r.tls {
        fix(&mut t.mode);
        fix_opt(&mut t.version);
        fix_opt(&mut t.cipher);
        fix_opt(&mut t.subject);
        fix_opt(&mut t.issuer);
        fix_opt(&mut t.not_after);
    }
    fix(&mut r.pipelining.detail);
    let c = &mut r.cross_message;
    fix(&mut c.detail);
    fix_opt(&mut c.probe_rcpt);
    fix_opt(&mut c.message_reply);
    fix_opt(&mut c.noop_reply);
    fix_opt(&mut r.estimate.expected_mode);
}

pub(super) fn print_human(r: &Report) {
    println!("Server        {}", r.server);
    println!("Banner        {} ({:.1} ms)", r.banner, r.banner_ms);
    println!("Capabilities  {}", r.capabilities.join(", "));
    if let Some(after) = &r.capabilities_after_tls {
        println!("After TLS     {}", after.join(", "));
    }
    match &r.tls {
        Some(t) => println!(
            "TLS           {} {} {} — certificate {} (issuer {}), expires {}",
            t.mode,
            t.version.as_deref().unwrap_or("(version unknown)"),
            t.cipher.as_deref().unwrap_or(""),
            t.subject.as_deref().unwrap_or("?"),
            t.issuer.as_deref().unwrap_or("?"),
            t.not_after.as_deref().unwrap_or("?")
        ),
        None => println!("TLS           not used"),
    }
    println!("RTT           {:.2} ms (median of NOOPs)", r.rtt_ms);
    let verdict = if r.pipelining.advertised && r.pipelining.probe_passed {
        "works"
    } else if r.pipelining.advertised && !r.pipelining.used {
        "off"
    } else {
        "NOT usable"
    };
    println!("Pipelining    {verdict}: {}", r.pipelining.detail);
    let cross = &r.cross_message;
    let verdict = match cross.result {
        CrossResult::Works => "works",
        CrossResult::Refused => "refused (503 after end of data)",
        CrossResult::NotTested => "not tested",
        CrossResult::Inconclusive => "inconclusive",
    };
    println!("Pipelining across messages: {verdict} — {}", cross.detail);
    println!(
        "Chunking      {}",
        if r.chunking {
            "yes (BDAT pipelined)"
        } else if r.chunking_offered && r.pipelining.used {
            "offered, not used (--no-chunking)"
        } else if r.chunking_offered {
            "offered, not used without pipelining"
        } else {
            "no"
        }
    );
    let e = &r.estimate;
    println!(
        "Estimate for {} messages at this RTT:",
        thousands(e.messages)
    );
    println!(
        "  lock-step   {:>12} round trips  ≈ {:.1} s",
        thousands(e.lockstep_round_trips),
        e.lockstep_seconds
    );
    println!(
        "  pipelined   {:>12} round trips  ≈ {:.1} s",
        thousands(e.pipelined_round_trips),
        e.pipelined_seconds
    );
    if let (Some(b), Some(s)) = (e.bdat_round_trips, e.bdat_seconds) {
        println!(
            "  BDAT        {:>12} round trips  ≈ {:.1} s",
            thousands(b),
            s
        );
    }
    if r.pipelining.used && cross.result != CrossResult::Works {
        println!(
            "  {:<11} {:>12} round trips  ≈ {:.1} s  (if commands after the end of data are refused)",
            if r.chunking {
                "BDAT, sync"
            } else {
                "sync at dot"
            },
            thousands(e.stepped_down_round_trips),
            e.stepped_down_seconds
        );
    }
    match (&e.expected_mode, e.expected_round_trips, e.expected_seconds) {
        (Some(m), Some(n), Some(s)) => println!(
            "  expected    {:>12} round trips  ≈ {s:.1} s  ({m}, from what was found)",
            thousands(n)
        ),
        _ => println!(
            "  expected    the {} line if pipelining across messages works, the sync line if \
             it is refused (not tested: --probe-rcpt ADDR)",
            if r.chunking { "BDAT" } else { "pipelined" }
        ),
    }
}
