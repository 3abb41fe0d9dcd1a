//! What the campaign's threads share: the job queue, the report channel, the counters and
//! the run's context ([`Ctx`]). Split from `runner.rs` so the session loop and the signing
//! pool reach it without importing the runner (no import cycle).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::jobs::row_report;
use super::level::HostLevel;
use super::render::Renderer;
use super::schedule::{BatchPoll, Job, Poll, Schedule};
use super::{CampaignError, Observer};
use crate::driver::ConnectOptions;
use crate::report::{Journal, ReportRow, ReportWriter, Stage, Status};
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The schedule behind one lock, with the wake-ups the tasks and the list thread wait on.
pub(super) struct Queue {
    pub(super) state: Mutex<Schedule>,
    /// Mirrors [`Schedule::is_stopped`] for checks without the lock.
    pub(super) stopped: AtomicBool,
    /// The list thread waits here while the schedule is full.
    pub(super) space: Condvar,
    pub(super) notify: tokio::sync::Notify,
}

impl Queue {
    pub(super) fn lock(&self) -> MutexGuard<'_, Schedule> {
        lock(&self.state)
    }

    /// List thread: blocks while the queue is full (until a taker drains it to half).
    pub(super) fn push(&self, job: Job) -> Result<(), Job> {
        let mut st = self.lock();
        while st.is_full() && !st.is_stopped() {
            st = self.space.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        let r = st.push(job);
        drop(st);
        if r.is_ok() {
            self.notify.notify_waiters();
        }
        r
    }

    pub(super) fn producer_done(&self) {
        self.lock().producer_done();
        self.notify.notify_waiters();
    }

    pub(super) fn stop(&self) {
        self.lock().stop();
        self.stopped.store(true, Ordering::SeqCst);
        self.space.notify_all();
        self.notify.notify_waiters();
    }

    pub(super) fn finish(&self) {
        self.lock().finish();
        self.notify.notify_waiters();
    }

    /// A job for a session that has sent `messages`.
    pub(super) fn poll_job(&self, messages: u64) -> Poll {
        let mut st = self.lock();
        let p = st.poll_job(Instant::now(), messages);
        // Wake the list thread once per half queue, not once per job: a wake-up costs a
        // futex call and a context switch, as much CPU as sending a message.
        let refill = matches!(p, Poll::Job { .. }) && st.queued() == st.config().queue_cap / 2;
        drop(st);
        if refill {
            self.space.notify_one();
        }
        p
    }

    /// Up to `max` jobs for one transaction of a session that has sent `messages`.
    pub(super) fn poll_batch(&self, messages: u64, max: usize) -> BatchPoll {
        let mut st = self.lock();
        let before = st.queued();
        let p = st.poll_batch(Instant::now(), messages, max);
        // As in `poll_job`: wake the list thread when the queue drops through half.
        let half = st.config().queue_cap / 2;
        let refill = before > half && st.queued() <= half;
        drop(st);
        if refill {
            self.space.notify_one();
        }
        p
    }

    /// Waits until a job is ready; `false` when all work is done or the run stopped.
    pub(super) async fn wait_for_work(&self) -> bool {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let st = self.lock();
                if st.is_stopped() || st.is_finished() {
                    return false;
                }
                if st.has_ready_job(Instant::now()) {
                    return true;
                }
                st.poll_timeout()
            };
            match wait {
                Some(t) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(t.into()) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The last slot to leave: takes what is left, whatever its time, until the list is done.
    pub(super) async fn drain(&self) -> Option<Job> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if let Some(j) = st.drain() {
                    return Some(j);
                }
                if st.is_finished() {
                    return None;
                }
            }
            self.space.notify_one();
            notified.await;
        }
    }
}

pub(super) enum ReportMsg {
    Row(Status),
    Sanitized,
    Fatal(CampaignError),
}

pub(super) struct Ctx {
    pub(super) connect: ConnectOptions,
    pub(super) renderer: Renderer,
    pub(super) queue: Arc<Queue>,
    pub(super) report: tokio::sync::mpsc::UnboundedSender<ReportMsg>,
    pub(super) journal: Option<Mutex<Journal>>,
    pub(super) live_workers: AtomicU64,
    /// The report: written by whichever thread has the row, one row per write.
    pub(super) writer: Mutex<Option<ReportWriter>>,
    /// Whether a decided row is needed as a [`ReportRow`]: a report is written, or permanent
    /// failures are collected for `--suppress-add`. Fixed when the run starts (the writer
    /// only ever goes away after a write error, which stops the run), so the connections
    /// do not take the writer's lock per message to ask. Otherwise a row is only counted
    /// ([`Ctx::count_row`]).
    pub(super) rows_wanted: bool,
    pub(super) write_error: Mutex<Option<String>>,
    /// Set once the lock-step fallback was announced.
    pub(super) warned_lockstep: AtomicBool,
    pub(super) any_session: AtomicBool,
    pub(super) last_error: Mutex<Option<String>>,
    pub(super) counters: Arc<Counters>,
    pub(super) observer: Arc<dyn Observer>,
    /// The pipelining level learned for the host (issue 11).
    pub(super) level: HostLevel,
    /// The stage of the last session or connection error (`tls`, `auth`, `connect`).
    pub(super) last_stage: Mutex<Stage>,
    /// Extra envelope recipients (Cc/Bcc) decided for good (`sent`, `failed`, `unknown`) in
    /// an attempt whose own address is retried, by row: the retry leaves them out, the
    /// final report row shows their outcome.
    pub(super) extras_done: Mutex<std::collections::HashMap<u64, Vec<(String, String)>>>,
    /// `--suppress-add`: addresses that failed permanently (5.1.x, 5.2.1), when collected.
    pub(super) permanent: Option<Mutex<Vec<String>>>,
    /// Set once the missing DSN extension was announced.
    pub(super) warned_no_dsn: AtomicBool,
}

/// Shared with the report thread (which must not hold the report sender).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) rt_used: AtomicU64,
    pub(super) rt_lockstep: AtomicU64,
    pub(super) sent: AtomicU64,
}

impl Ctx {
    /// Writes the row to the report at once (so a row is never both "done" in the engine
    /// and missing from the report for longer than this call: after a kill -9 only rows in
    /// the pipeline can be unknown), then tells the report thread for the counts.
    pub(super) fn send_report(&self, row: &ReportRow) {
        self.report_row(row, true);
    }

    /// Like [`Ctx::send_report`], but the row waits in the report buffer for the next
    /// [`Ctx::flush_reports`] or `send_report`: a session adds the rows of one batch of
    /// replies and writes them together before it commits anything more, so a kill still
    /// loses only rows in the pipeline.
    pub(super) fn queue_report(&self, row: &ReportRow) {
        self.report_row(row, false);
    }

    /// Writes the queued rows.
    pub(super) fn flush_reports(&self) {
        let failed = {
            let mut w = lock(&self.writer);
            match w.as_mut().map(ReportWriter::flush_pending) {
                Some(Err(e)) => {
                    lock(&self.write_error).get_or_insert_with(|| e.to_string());
                    *w = None;
                    true
                }
                _ => false,
            }
        };
        if failed {
            self.queue.stop();
        }
    }

    /// Counts a decided row that is not written anywhere (see [`Ctx::rows_wanted`]).
    pub(super) fn count_row(&self, status: Status) {
        let _ = self.report.send(ReportMsg::Row(status));
    }

    pub(super) fn report_row(&self, row: &ReportRow, now: bool) {
        let failed = {
            let mut w = lock(&self.writer);
            let r = w.as_mut().map(|writer| {
                if now {
                    writer.write(row)
                } else {
                    writer.append(row)
                }
            });
            match r {
                Some(Err(e)) => {
                    lock(&self.write_error).get_or_insert_with(|| e.to_string());
                    *w = None;
                    true
                }
                _ => false,
            }
        };
        if failed {
            self.queue.stop();
        }
        if let Some(p) = &self.permanent
            && row.status == Status::Failed
            && row.smtp_code.is_some_and(|c| {
                crate::deliver::suppress::is_permanent_recipient_failure(
                    c,
                    row.enhanced_code.as_deref(),
                )
            })
        {
            lock(p).push(row.email.clone());
        }
        self.count_row(row.status);
    }

    pub(super) fn set_error(&self, e: &str) {
        *lock(&self.last_error) = Some(e.to_string());
    }

    pub(super) fn error_text(&self) -> String {
        lock(&self.last_error)
            .clone()
            .unwrap_or_else(|| "no SMTP session could be established".into())
    }

    pub(super) fn stopped(&self) -> bool {
        self.queue.stopped.load(Ordering::SeqCst)
    }
}

/// Queues a job for the sessions, or reports it deferred when the run was stopped.
pub(super) fn queue_job(ctx: &Ctx, job: Job) {
    if let Err(job) = ctx.queue.push(job) {
        let mut r = row_report(&job.row, Status::Deferred, Some(Stage::Connect), 0);
        r.response = "not sent: the run was stopped".into();
        ctx.send_report(&r);
    }
}

/// Response text of a row whose earlier attempt ended `unknown` and whose later attempts did
/// not send it.
pub(super) const UNCERTAIN_NOTE: &str =
    "delivery unknown: an earlier attempt may have been delivered";
