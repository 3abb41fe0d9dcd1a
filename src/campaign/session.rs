//! One SMTP session: feeds the engine from the schedule, journals what it commits, turns
//! outcomes into report rows the moment their reply is handled.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use time::OffsetDateTime;

use super::CampaignError;
use super::ctx::{Ctx, ReportMsg, UNCERTAIN_NOTE, lock};
use super::jobs::row_report;
use super::level::LevelReason;
use super::schedule::{BatchPoll, Handled, Job, Poll};
use crate::driver::Connection;
use crate::engine::{
    Event, Extensions, PipeliningLevel, PipeliningPolicy, RcptOutcome, SessionError,
    Stage as EngineStage,
};
use crate::report::{Stage, Status};

pub(super) struct SessionEnd {
    pub(super) established: bool,
    pub(super) error: Option<String>,
    /// Retrying cannot help (TLS/pipelining required but absent, AUTH refused...).
    pub(super) fatal: bool,
    /// The stage rows left unsent by this error are reported at (`tls`, `auth`, `connect`).
    pub(super) stage: Stage,
}

/// One transaction in flight: its jobs by recipient index (one unless
/// `--batch-recipients`), taken out as their outcomes arrive.
struct InFlight {
    jobs: Vec<Option<Job>>,
    message_id: String,
    /// Outcomes still to come (rows' addresses and the `Cc:`/`Bcc:` envelope recipients).
    left: usize,
    /// A recipient of this transaction got past RCPT (its outcome was decided later).
    accepted_any: bool,
    /// Rows refused "too many recipients", decided once every outcome is in.
    too_many: Vec<(Job, RcptOutcome)>,
    /// Envelope recipients past the rows' own (`Cc:`/`Bcc:`): their outcomes are appended
    /// to the row's response, so the row's own outcome waits for them.
    extras: usize,
    /// The row's own outcome, held until the extra recipients' are in.
    own: Option<(Job, RcptOutcome)>,
    /// Each extra envelope recipient decided so far: address, decided for good (not
    /// deferred), `addr=code`.
    extra: Vec<(String, bool, String)>,
}

pub(super) async fn run_session(ctx: &Ctx, mut conn: Connection) -> SessionEnd {
    let mut inflight: HashMap<u64, InFlight> = HashMap::new();
    let mut committed = Vec::new();
    let mut established = false;
    let mut messages = 0u64;
    let mut last_rt = (0u64, 0u64);
    let mut end_error: Option<SessionError> = None;
    let batch = ctx.queue.lock().config().batch_recipients.max(1);
    // Lowered when the server refuses recipients beyond a limit of its own.
    let mut batch_limit = batch;
    // Jobs the engine handed back unexecuted: queued again, no attempt counted.
    let mut returned: Vec<Job> = Vec::new();
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
                Event::Recipient(o) => {
                    on_outcome(ctx, &mut inflight, o, &mut batch_limit, &mut returned);
                }
                Event::KeptTransaction { command, reply } => {
                    ctx.level.kept_transaction();
                    let evidence = LevelReason::KeptTransaction { command, reply };
                    ctx.observer
                        .pipelining_evidence(&ctx.connect.target, &evidence);
                }
                Event::RsetBudgetSpent { refused, budget } => {
                    let evidence = LevelReason::RsetBudget { refused, budget };
                    ctx.observer
                        .pipelining_evidence(&ctx.connect.target, &evidence);
                }
                Event::SteppedDown(sd) => {
                    let bdat = conn.session_ref().bdat_mode();
                    let evidence = LevelReason::Refused(sd.clone());
                    ctx.observer
                        .pipelining_evidence(&ctx.connect.target, &evidence);
                    if let Some(change) = ctx.level.stepped_down(&sd, bdat) {
                        ctx.observer.pipelining_level(&change);
                    }
                }
                Event::ClosedAfterEndOfData { level, verb }
                    if level < PipeliningLevel::WithinMessage =>
                {
                    let bdat = conn.session_ref().bdat_mode();
                    let (drops, change) = ctx.level.dropped(verb, bdat);
                    let evidence = LevelReason::Dropped { drops, verb };
                    ctx.observer
                        .pipelining_evidence(&ctx.connect.target, &evidence);
                    if let Some(change) = change {
                        ctx.observer.pipelining_level(&change);
                    }
                }
                Event::Closed(e) => end_error = e,
                _ => {}
            }
        }
        if !returned.is_empty() {
            let mut q = ctx.queue.lock();
            for job in returned.drain(..).rev() {
                q.requeue_front(job);
            }
            drop(q);
            ctx.queue.notify.notify_waiters();
        }
        // The rows of these replies, in one write, before anything more is committed.
        ctx.flush_reports();
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
            let caps = conn.session_ref().capabilities();
            let flags = (
                caps.has(Extensions::SMTPUTF8),
                caps.has(Extensions::EIGHT_BIT_MIME),
            );
            while conn.session_ref().wants_message() {
                let (unit, not_before) = match poll_unit(ctx, messages, batch, batch_limit) {
                    Ok(next) => next,
                    Err(Ended::Session) => {
                        conn.session().quit();
                        break;
                    }
                    Err(Ended::NothingReady) => break,
                };
                if not_before > Instant::now() {
                    tokio::time::sleep_until(not_before.into()).await;
                }
                messages += 1;
                let msg = match unit {
                    Unit::One(job) => render(ctx, flags, job, &mut inflight),
                    Unit::Batch(jobs) => render_batch(ctx, flags, jobs, &mut inflight),
                };
                if let Some(msg) = msg {
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
                    .flat_map(|f| f.jobs.iter().flatten())
                    .map(|j| (j.row.number, j.row.email.as_str()))
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
    let fatal = end_error.as_ref().is_some_and(SessionError::is_fatal);
    let stage = end_error
        .as_ref()
        .map_or(Stage::Connect, |e| e.stage().into());
    SessionEnd {
        established,
        error: end_error.map(|e| e.to_string()),
        fatal,
        stage,
    }
}

/// What the queue hands a session next: one row's message, or (`--batch-recipients`) one
/// transaction for several rows.
enum Unit {
    One(Job),
    Batch(Vec<Job>),
}

/// Why [`poll_unit`] has nothing to send.
enum Ended {
    /// Every job is reported, the run stopped, or the session sent its share: quit.
    Session,
    /// Nothing is ready yet: go back to reading.
    NothingReady,
}

/// The next message for a session, with the time it may go.
fn poll_unit(
    ctx: &Ctx,
    messages: u64,
    batch: usize,
    batch_limit: usize,
) -> Result<(Unit, Instant), Ended> {
    if batch > 1 {
        match ctx.queue.poll_batch(messages, batch_limit) {
            BatchPoll::Jobs { jobs, not_before } => Ok((Unit::Batch(jobs), not_before)),
            BatchPoll::Done | BatchPoll::Rotate => Err(Ended::Session),
            BatchPoll::Wait(_) => Err(Ended::NothingReady),
        }
    } else {
        match ctx.queue.poll_job(messages) {
            Poll::Job { job, not_before } => Ok((Unit::One(job), not_before)),
            Poll::Done | Poll::Rotate => Err(Ended::Session),
            Poll::Wait(_) => Err(Ended::NothingReady),
        }
    }
}

/// Renders a job into a message, or reports the row failed at stage `input`.
fn render(
    ctx: &Ctx,
    (smtputf8, eight_bit): (bool, bool),
    job: Job,
    inflight: &mut HashMap<u64, InFlight>,
) -> Option<crate::engine::Message> {
    let rendered = match &job.prepared {
        Some(p) => Ok(p.to_rendered()),
        None => ctx
            .renderer
            .render_for(&job.row, smtputf8, eight_bit, OffsetDateTime::now_utc()),
    };
    match rendered {
        Ok(mut r) => {
            if r.message.to.len() > 1
                && let Some(done) = lock(&ctx.extras_done).get(&job.row.number)
            {
                let own = r.message.to[0].clone();
                r.message
                    .to
                    .retain(|a| *a == own || !done.iter().any(|(d, _)| d.eq_ignore_ascii_case(a)));
            }
            if r.sanitized && job.attempts == 0 {
                let _ = ctx.report.send(ReportMsg::Sanitized);
            }
            inflight.insert(
                r.message.id,
                InFlight {
                    jobs: vec![Some(job)],
                    message_id: r.message_id,
                    left: r.message.to.len(),
                    accepted_any: false,
                    too_many: Vec::new(),
                    extras: r.message.to.len() - 1,
                    own: None,
                    extra: Vec::new(),
                },
            );
            Some(r.message)
        }
        Err(why) => {
            let mut r = row_report(&job.row, Status::Failed, Some(Stage::Input), job.attempts);
            r.response = why;
            if let Some(earlier) = lock(&ctx.extras_done).remove(&job.row.number) {
                let texts: Vec<String> = earlier.into_iter().map(|(_, text)| text).collect();
                r.response = format!(
                    "{}; {}{}",
                    r.response,
                    super::render::EXTRA_PREFIX,
                    texts.join(", ")
                );
            }
            ctx.send_report(&r);
            ctx.queue.finish();
            None
        }
    }
}

/// Renders one transaction for several jobs (`--batch-recipients`: the template has no
/// per-row placeholder, so the first row renders the message for all, composed as MIME like
/// a single row's), or reports every row failed at stage `input`.
fn render_batch(
    ctx: &Ctx,
    (smtputf8, eight_bit): (bool, bool),
    jobs: Vec<Job>,
    inflight: &mut HashMap<u64, InFlight>,
) -> Option<crate::engine::Message> {
    let first = jobs.first()?;
    match ctx
        .renderer
        .render_for(&first.row, smtputf8, eight_bit, OffsetDateTime::now_utc())
    {
        Ok(mut r) => {
            // No `Cc:`/`Bcc:` recipients here: `batch_obstacle` refuses such templates.
            debug_assert_eq!(r.message.to.len(), 1, "no extra recipients in batches");
            for j in &jobs {
                if r.sanitized && j.attempts == 0 {
                    let _ = ctx.report.send(ReportMsg::Sanitized);
                }
            }
            r.message.to = jobs.iter().map(|j| j.row.email.clone()).collect();
            inflight.insert(
                r.message.id,
                InFlight {
                    left: jobs.len(),
                    jobs: jobs.into_iter().map(Some).collect(),
                    message_id: r.message_id,
                    accepted_any: false,
                    too_many: Vec::new(),
                    extras: 0,
                    own: None,
                    extra: Vec::new(),
                },
            );
            Some(r.message)
        }
        Err(why) => {
            for job in &jobs {
                let mut r = row_report(&job.row, Status::Failed, Some(Stage::Input), job.attempts);
                r.response.clone_from(&why);
                ctx.send_report(&r);
                ctx.queue.finish();
            }
            None
        }
    }
}

/// "Too many recipients" (RFC 5321 §4.5.3.1.10): a 452 to RCPT, or enhanced code 4.5.3.
fn too_many_recipients(o: &RcptOutcome) -> bool {
    o.stage == EngineStage::Rcpt
        && o.reply.as_ref().is_some_and(|r| {
            r.code == 452
                || r.enhanced
                    .is_some_and(|e| (e.class, e.subject, e.detail) == (4, 5, 3))
        })
}

fn on_outcome(
    ctx: &Ctx,
    inflight: &mut HashMap<u64, InFlight>,
    o: RcptOutcome,
    batch_limit: &mut usize,
    returned: &mut Vec<Job>,
) {
    let Some(f) = inflight.get_mut(&o.message) else {
        return;
    };
    let id = o.message;
    f.left = f.left.saturating_sub(1);
    if o.index >= f.jobs.len() {
        // A Cc/Bcc envelope recipient: one report row per message, the row's own address
        // decides it; these outcomes are appended to its response text.
        let done = !matches!(o.delivery, crate::engine::Delivery::Deferred);
        f.extra
            .push((o.address.clone(), done, super::render::extra_outcome(&o)));
    } else if let Some(job) = f.jobs.get_mut(o.index).and_then(Option::take) {
        f.accepted_any |= matches!(o.stage, EngineStage::Data | EngineStage::Body);
        let batched = f.jobs.len() > 1;
        if batched && too_many_recipients(&o) {
            f.too_many.push((job, o));
        } else if f.extras > 0 {
            f.own = Some((job, o));
        } else if o.returned && !ctx.stopped() {
            returned.push(job);
        } else {
            let message_id = f.message_id.clone();
            finish_job(ctx, job, &o, message_id, Vec::new());
        }
    }
    if f.left > 0 {
        return;
    }
    let Some(mut f) = inflight.remove(&id) else {
        return;
    };
    if let Some((job, o)) = f.own.take() {
        if o.returned && !ctx.stopped() {
            // As for a retry: the extra recipients decided for good are not sent again.
            let done: Vec<(String, String)> = std::mem::take(&mut f.extra)
                .into_iter()
                .filter(|(_, done, _)| *done)
                .map(|(addr, _, text)| (addr, text))
                .collect();
            if !done.is_empty() {
                lock(&ctx.extras_done)
                    .entry(job.row.number)
                    .or_default()
                    .extend(done);
            }
            returned.push(job);
            return;
        }
        finish_job(
            ctx,
            job,
            &o,
            f.message_id.clone(),
            std::mem::take(&mut f.extra),
        );
    }
    if f.too_many.is_empty() {
        return;
    }
    if f.accepted_any && !ctx.stopped() {
        // The server took part of the transaction and refused the rest for its size: the
        // rest goes first into the next transaction, the attempt not counted, and this
        // session's transactions stay below the server's limit from now on.
        if let Some(k) = f.too_many.iter().map(|(_, o)| o.index).min() {
            *batch_limit = (*batch_limit).min(k.max(1));
        }
        let mut q = ctx.queue.lock();
        for (job, _) in f.too_many.into_iter().rev() {
            q.requeue_front(job);
        }
        drop(q);
        ctx.queue.notify.notify_waiters();
    } else {
        for (job, o) in f.too_many {
            finish_job(ctx, job, &o, f.message_id.clone(), Vec::new());
        }
    }
}

/// One job's outcome: retried, or reported now.
fn finish_job(
    ctx: &Ctx,
    job: Job,
    o: &RcptOutcome,
    message_id: String,
    extra: Vec<(String, bool, String)>,
) {
    let row = job.row.number;
    let verdict = ctx
        .queue
        .lock()
        .handle_outcome(job, o.delivery, Instant::now());
    let v = match verdict {
        Handled::Retry(_) => {
            // The retry goes to the row's address and the extras still undecided only.
            let kept: Vec<(String, String)> = extra
                .into_iter()
                .filter(|(_, done, _)| *done)
                .map(|(addr, _, text)| (addr, text))
                .collect();
            if !kept.is_empty() {
                lock(&ctx.extras_done).entry(row).or_default().extend(kept);
            }
            ctx.queue.notify.notify_waiters();
            return;
        }
        Handled::Final(v) => v,
    };
    let earlier = lock(&ctx.extras_done).remove(&row);
    if v.status == Status::Sent {
        ctx.counters.sent.fetch_add(1, Ordering::Relaxed);
    }
    if ctx.rows_wanted {
        let mut texts: Vec<String> = earlier
            .into_iter()
            .flatten()
            .map(|(_, text)| text)
            .collect();
        texts.extend(extra.into_iter().map(|(_, _, text)| text));
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
        if !texts.is_empty() {
            r.response = format!(
                "{}; {}{}",
                r.response,
                super::render::EXTRA_PREFIX,
                texts.join(", ")
            );
        }
        r.message_id = message_id;
        ctx.queue_report(&r);
    } else {
        // Nothing reads the row (`--report /dev/null`): only its status is counted.
        ctx.count_row(v.status);
    }
    ctx.queue.notify.notify_waiters();
}
