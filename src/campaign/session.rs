//! One SMTP session: feeds the engine from the schedule, journals what it commits, turns
//! outcomes into report rows the moment their reply is handled.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use time::OffsetDateTime;

use super::CampaignError;
use super::jobs::row_report;
use super::runner::{Ctx, ReportMsg, UNCERTAIN_NOTE, lock};
use super::schedule::{Handled, Job, Poll};
use crate::driver::Connection;
use crate::engine::{Event, Extensions, PipeliningPolicy, RcptOutcome, SessionError};
use crate::report::{Stage, Status};

pub(super) struct SessionEnd {
    pub(super) established: bool,
    pub(super) error: Option<String>,
    /// Retrying cannot help (TLS/pipelining required but absent, AUTH refused...).
    pub(super) fatal: bool,
}

struct InFlight {
    job: Job,
    message_id: String,
}

pub(super) async fn run_session(ctx: &Ctx, mut conn: Connection) -> SessionEnd {
    let mut inflight: HashMap<u64, InFlight> = HashMap::new();
    let mut committed = Vec::new();
    let mut established = false;
    let mut messages = 0u64;
    let mut last_rt = (0u64, 0u64);
    let mut end_error: Option<SessionError> = None;
    loop {
        // Events first: outcomes free window slots.
        while let Some(ev) = conn.session().poll_event() {
            match ev {
                Event::Ready => {
                    established = true;
                    ctx.any_session.store(true, Ordering::SeqCst);
                    if !conn.session_ref().pipelining()
                        && ctx.connect.session.pipelining == PipeliningPolicy::Auto
                        && !ctx.warned_lockstep.swap(true, Ordering::SeqCst)
                    {
                        ctx.observer.lockstep(&ctx.connect.target);
                    }
                    if ctx.renderer.wants_dsn()
                        && !conn.session_ref().capabilities().has(Extensions::DSN)
                        && !ctx.warned_no_dsn.swap(true, Ordering::SeqCst)
                    {
                        ctx.observer.no_dsn(&ctx.connect.target);
                    }
                }
                Event::Exchange(x) => ctx.observer.exchange(&x),
                Event::Recipient(o) => on_outcome(ctx, &mut inflight, o),
                Event::Closed(e) => end_error = e,
                _ => {}
            }
        }
        let rt = conn.session_ref().round_trips();
        let c = &ctx.counters;
        c.rt_used.fetch_add(rt.used - last_rt.0, Ordering::Relaxed);
        c.rt_lockstep
            .fetch_add(rt.lockstep - last_rt.1, Ordering::Relaxed);
        last_rt = (rt.used, rt.lockstep);
        if conn.session_ref().is_closed() {
            break;
        }
        // Feed the session.
        let stopping = ctx.stopped();
        if conn.session_ref().is_ready() && !stopping {
            while conn.session_ref().wants_message() {
                let (job, not_before) = match ctx.queue.poll_job(messages) {
                    Poll::Job { job, not_before } => (job, not_before),
                    Poll::Done | Poll::Rotate => {
                        conn.session().quit();
                        break;
                    }
                    Poll::Wait(_) => break,
                };
                if not_before > Instant::now() {
                    tokio::time::sleep_until(not_before.into()).await;
                }
                messages += 1;
                let smtputf8 = conn.session_ref().capabilities().has(Extensions::SMTPUTF8);
                if let Some(msg) = render(ctx, smtputf8, job, &mut inflight) {
                    conn.session().send(msg);
                }
            }
        } else if stopping && conn.session_ref().is_ready() {
            conn.session().quit();
        }
        let s = conn.session_ref();
        if s.is_ready() && s.is_idle() && !conn.has_pending_write() {
            // Nothing in flight: wait for work (or the end of it).
            if !ctx.queue.wait_for_work().await {
                conn.session().quit();
            }
            continue;
        }
        if conn.session_ref().is_holding() && !ctx.queue.lock().has_ready_job(Instant::now()) {
            conn.session().flush();
        }
        // Journal what is about to be committed, then write and read.
        conn.prepare();
        conn.session().take_committed(&mut committed);
        if !committed.is_empty() {
            if let Some(j) = &ctx.journal {
                let rows: Vec<(u64, &str)> = committed
                    .iter()
                    .filter_map(|id| inflight.get(id))
                    .map(|f| (f.job.row.number, f.job.row.email.as_str()))
                    .collect();
                if let Err(e) = lock(j).record_in_flight(&rows) {
                    let _ = ctx
                        .report
                        .send(ReportMsg::Fatal(CampaignError::JournalWrite(e)));
                    ctx.queue.stop();
                }
            }
            committed.clear();
        }
        conn.step().await;
    }
    conn.shutdown().await;
    debug_assert!(
        inflight.is_empty(),
        "the engine reports every message it was given"
    );
    let fatal = matches!(
        end_error,
        Some(
            SessionError::TlsRequired(_)
                | SessionError::PipeliningRequired
                | SessionError::AuthOverPlaintext
                | SessionError::AuthUnsupported(_)
                | SessionError::AuthFailed(_)
                | SessionError::Tls(_)
        )
    ) || matches!(&end_error, Some(SessionError::Greeting(r) | SessionError::Helo(r)) if r.is_permanent());
    SessionEnd {
        established,
        error: end_error.map(|e| e.to_string()),
        fatal,
    }
}

/// Renders a job into a message, or reports the row failed at stage `input`.
fn render(
    ctx: &Ctx,
    smtputf8: bool,
    job: Job,
    inflight: &mut HashMap<u64, InFlight>,
) -> Option<crate::engine::Message> {
    let rendered = match &job.prepared {
        Some(p) => Ok(p.to_rendered()),
        None => ctx
            .renderer
            .render(&job.row, smtputf8, OffsetDateTime::now_utc()),
    };
    match rendered {
        Ok(r) => {
            if r.sanitized && job.attempts == 0 {
                let _ = ctx.report.send(ReportMsg::Sanitized);
            }
            inflight.insert(
                r.message.id,
                InFlight {
                    job,
                    message_id: r.message_id,
                },
            );
            Some(r.message)
        }
        Err(why) => {
            let mut r = row_report(&job.row, Status::Failed, Some(Stage::Input), job.attempts);
            r.response = why;
            ctx.send_report(&r);
            ctx.queue.finish();
            None
        }
    }
}

fn on_outcome(ctx: &Ctx, inflight: &mut HashMap<u64, InFlight>, o: RcptOutcome) {
    let Some(InFlight { job, message_id }) = inflight.remove(&o.message) else {
        return;
    };
    let verdict = ctx
        .queue
        .lock()
        .handle_outcome(job, o.delivery, Instant::now());
    let v = match verdict {
        Handled::Retry(_) => {
            ctx.queue.notify.notify_waiters();
            return;
        }
        Handled::Final(v) => v,
    };
    if v.status == Status::Sent {
        ctx.counters.sent.fetch_add(1, Ordering::Relaxed);
    }
    let mut r = row_report(&v.job.row, v.status, Some(o.stage.into()), v.job.attempts);
    r.smtp_code = o.reply.as_ref().map(|r| r.code);
    r.enhanced_code = o
        .reply
        .as_ref()
        .and_then(|r| r.enhanced)
        .map(|e| e.to_string());
    r.response = if v.was_uncertain && v.status == Status::Unknown {
        format!("{UNCERTAIN_NOTE}; last attempt: {}", o.text())
    } else {
        o.text()
    };
    r.message_id = message_id;
    ctx.send_report(&r);
    ctx.queue.notify.notify_waiters();
}
