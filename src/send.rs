//! `pipemail send`: list + template → pipelined delivery over N sessions → per-row report.
//!
//! Threads: one producer reads the CSV and decides per row (shard, input problem, duplicate,
//! resume); N tokio tasks each own one SMTP session at a time; one thread keeps the counts
//! and the progress bar. A report row is written (one write, under a lock) by whichever
//! thread decided it, at once: after a kill -9 only rows still in a pipeline can be missing
//! from the report, so `--resume` re-sends at most one window per session. Jobs flow
//! through a bounded queue so memory stays flat.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use time::OffsetDateTime;

use crate::config::{ConnPlan, backoff};
use crate::exit::{Exit, Failure, fail};
use crate::progress::Progress;
use pipemail::driver::Connection;
use pipemail::engine::{
    Delivery, Event, Extensions, Message, PipeliningPolicy, RcptOutcome, SessionError,
};
use pipemail::input::{DuplicateFilter, InputError, ListReader, Row};
use pipemail::report::{
    self, Format, Journal, PreviousOutcome, ReportRow, ReportWriter, ResumeState, Status,
};
use pipemail::template::{RenderOptions, Template, from_address_of};

/// Where the envelope sender comes from.
#[derive(Debug, Clone)]
pub(crate) enum FromSource {
    Fixed(String),
    PerRow,
}

/// A validated `send` run.
pub(crate) struct SendPlan {
    pub(crate) conn: ConnPlan,
    pub(crate) list: ListReader<Box<dyn Read + Send>>,
    pub(crate) list_total: Option<u64>,
    pub(crate) template: Template,
    pub(crate) from: FromSource,
    pub(crate) report: Option<(String, Format)>,
    pub(crate) resume: Option<ResumeState>,
    pub(crate) skip_unknown: bool,
    pub(crate) connections: u32,
    pub(crate) max_per_connection: u64,
    pub(crate) rate: Option<f64>,
    pub(crate) retries: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) allow_duplicates: bool,
    pub(crate) shard: Option<(u64, u64)>,
    pub(crate) quiet: bool,
    /// Label for the progress bar (demo runs).
    pub(crate) label: Option<String>,
}

/// What a run did, for the summary line, the exit code and the demo table.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    pub(crate) rows: u64,
    pub(crate) sent: u64,
    pub(crate) failed: u64,
    pub(crate) deferred: u64,
    pub(crate) skipped: u64,
    pub(crate) unknown: u64,
    pub(crate) sanitized_rows: u64,
    pub(crate) rt_used: u64,
    pub(crate) rt_lockstep: u64,
    pub(crate) elapsed: Duration,
    pub(crate) any_session: bool,
    pub(crate) session_error: Option<String>,
    pub(crate) sent_this_run: u64,
}

impl Summary {
    pub(crate) fn exit(&self) -> Exit {
        let not_ok = self.failed + self.deferred + self.unknown;
        if not_ok == 0 {
            return Exit::Ok;
        }
        if !self.any_session && self.sent_this_run == 0 {
            return Exit::Unavailable;
        }
        if self.sent_this_run == 0 && self.failed == 0 {
            return Exit::TempFail;
        }
        Exit::Partial
    }

    pub(crate) fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.sent_this_run as f64 / secs
        } else {
            0.0
        };
        let mut s = format!(
            "{} rows: {} sent, {} failed, {} deferred, {} skipped",
            self.rows, self.sent, self.failed, self.deferred, self.skipped
        );
        if self.unknown > 0 {
            s += &format!(", {} unknown", self.unknown);
        }
        s += &format!(" in {secs:.1}s ({rate:.0} msg/s)");
        if self.rt_lockstep > 0 {
            s += &format!(
                "; {}",
                crate::progress::saved(self.rt_used, self.rt_lockstep)
            );
        }
        if self.sanitized_rows > 0 {
            s += &format!(
                "; warning: {} rows had CR/LF in header values (replaced by spaces)",
                self.sanitized_rows
            );
        }
        if let Some(e) = &self.session_error {
            if !self.any_session {
                s += &format!("; no session: {e}");
            }
        }
        s
    }
}

// ----- work queue -----------------------------------------------------------------------

struct Job {
    row: Row,
    attempts: u32,
    /// An earlier attempt ended `unknown`: the server may have the message, so the row is
    /// never reported `failed` or `deferred`, only `sent` or `unknown`.
    uncertain: bool,
}

struct Retry {
    at: Instant,
    job: Job,
}

impl PartialEq for Retry {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at
    }
}
impl Eq for Retry {}
impl PartialOrd for Retry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Retry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.at.cmp(&self.at) // min-heap by time
    }
}

#[derive(Default)]
struct QueueState {
    fresh: VecDeque<Job>,
    retry: BinaryHeap<Retry>,
    producer_done: bool,
    /// Jobs pushed and not yet finally reported.
    outstanding: u64,
}

const QUEUE_CAP: usize = 2048;

/// Bounded job queue shared by the producer thread and the session tasks.
#[derive(Default)]
struct WorkQueue {
    state: Mutex<QueueState>,
    space: Condvar,
    notify: tokio::sync::Notify,
}

enum Take {
    Job(Job),
    WaitUntil(Option<Instant>),
    Done,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Producer: blocks while the queue is full (until a taker drains it to half).
    fn push(&self, job: Job) {
        let mut st = self.lock();
        while st.fresh.len() >= QUEUE_CAP {
            st = self
                .space
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        st.fresh.push_back(job);
        st.outstanding += 1;
        drop(st);
        self.notify.notify_waiters();
    }

    fn producer_done(&self) {
        self.lock().producer_done = true;
        self.notify.notify_waiters();
    }

    fn retry(&self, job: Job, at: Instant) {
        self.lock().retry.push(Retry { at, job });
        self.notify.notify_waiters();
    }

    fn finish(&self) {
        let mut st = self.lock();
        st.outstanding -= 1;
        drop(st);
        self.notify.notify_waiters();
    }

    fn try_take(&self, now: Instant, ignore_time: bool) -> Take {
        let mut st = self.lock();
        if st.retry.peek().is_some_and(|r| ignore_time || r.at <= now) {
            return Take::Job(st.retry.pop().expect("peeked").job);
        }
        if let Some(j) = st.fresh.pop_front() {
            // Wake the producer once per half queue, not once per job: a wake-up costs a
            // futex call and a context switch, as much CPU as sending a message.
            let refill = st.fresh.len() == QUEUE_CAP / 2;
            drop(st);
            if refill {
                self.space.notify_one();
            }
            return Take::Job(j);
        }
        if st.producer_done && st.outstanding == 0 {
            return Take::Done;
        }
        Take::WaitUntil(st.retry.peek().map(|r| r.at))
    }

    /// Waits for a job; `None` when all work is done.
    async fn take(&self, ignore_time: bool) -> Option<Job> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_take(Instant::now(), ignore_time) {
                Take::Job(j) => return Some(j),
                Take::Done => return None,
                Take::WaitUntil(Some(t)) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(t.into()) => {}
                    }
                }
                Take::WaitUntil(None) => notified.await,
            }
        }
    }

    /// All work reported (peeks; takes nothing).
    fn is_done(&self) -> bool {
        let st = self.lock();
        st.producer_done && st.outstanding == 0
    }

    fn has_ready_job(&self) -> bool {
        let st = self.lock();
        !st.fresh.is_empty() || st.retry.peek().is_some_and(|r| r.at <= Instant::now())
    }
}

// ----- shared context ---------------------------------------------------------------------

enum ReportMsg {
    Row(Status),
    Sanitized,
    Fatal(Failure),
}

struct Ctx {
    conn: ConnPlan,
    template: Template,
    headers: Vec<String>,
    from: FromSource,
    queue: WorkQueue,
    report: tokio::sync::mpsc::UnboundedSender<ReportMsg>,
    journal: Option<Mutex<Journal>>,
    retries: u32,
    retry_delay: Duration,
    max_per_connection: u64,
    limiter: Option<Mutex<Instant>>,
    rate_interval: Duration,
    live_workers: AtomicU64,
    /// The report: written by whichever thread has the row, one row per write.
    writer: Mutex<Option<ReportWriter>>,
    write_error: Mutex<Option<String>>,
    /// Set once the lock-step fallback warning was printed.
    warned_lockstep: AtomicBool,
    quiet: bool,
    any_session: AtomicBool,
    last_error: Mutex<Option<String>>,
    counters: Arc<Counters>,
}

/// Counters shared with the report thread (which must not hold the report sender).
#[derive(Default)]
struct Counters {
    rt_used: AtomicU64,
    rt_lockstep: AtomicU64,
    sent: AtomicU64,
    stop: AtomicBool,
}

impl std::ops::Deref for Ctx {
    type Target = Counters;
    fn deref(&self) -> &Counters {
        &self.counters
    }
}

impl Ctx {
    /// Writes the row to the report at once (so a row is never both "done" in the engine
    /// and missing from the report for longer than this call: after a kill -9 only rows in
    /// the pipeline can be unknown), then tells the report thread for the counts and bar.
    fn send_report(&self, row: ReportRow) {
        let status = row.status;
        {
            let mut w = self
                .writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(writer) = w.as_mut() {
                if let Err(e) = writer.write(&row) {
                    let mut err = self
                        .write_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    err.get_or_insert_with(|| e.to_string());
                    *w = None;
                    self.stop.store(true, Ordering::SeqCst);
                }
            }
        }
        let _ = self.report.send(ReportMsg::Row(status));
    }

    async fn rate_wait(&self) {
        let Some(l) = &self.limiter else { return };
        let at = {
            let mut next = l.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + self.rate_interval;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }

    fn set_error(&self, e: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
    }

    fn error_text(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "no SMTP session could be established".into())
    }
}

fn row_report(row: &Row, status: Status, stage: Option<report::Stage>, attempts: u32) -> ReportRow {
    ReportRow {
        row: row.number,
        email: row.email.clone(),
        status,
        smtp_code: None,
        enhanced_code: None,
        response: String::new(),
        stage,
        attempts,
        message_id: String::new(),
        finished_at: OffsetDateTime::now_utc(),
    }
}

// ----- run ----------------------------------------------------------------------------------

/// Runs the plan; returns the summary (the caller prints it and maps the exit code).
pub(crate) fn run(plan: SendPlan) -> Result<Summary, Failure> {
    let started = Instant::now();
    let SendPlan {
        conn,
        list,
        list_total,
        template,
        from,
        report,
        resume,
        skip_unknown,
        connections,
        max_per_connection,
        rate,
        retries,
        retry_delay,
        allow_duplicates,
        shard,
        quiet,
        label,
    } = plan;
    let headers = list.headers().to_vec();

    let (writer, journal) = match &report {
        Some((path, format)) => {
            let w = ReportWriter::create(path, *format)
                .with_context(|| format!("cannot write the report {path}"))
                .map_err(|e| fail(Exit::IoErr, e))?;
            let j = if path == "-" {
                None
            } else {
                Some(
                    Journal::create(path)
                        .with_context(|| format!("cannot write the journal beside {path}"))
                        .map_err(|e| fail(Exit::IoErr, e))?,
                )
            };
            (Some(w), j)
        }
        None => (None, None),
    };

    let (report_tx, report_rx) = tokio::sync::mpsc::unbounded_channel();
    let total = list_total.map(|t| match shard {
        Some((k, n)) => t / n + u64::from(t % n >= k),
        None => t,
    });
    let progress = Progress::new(total, quiet, label.as_deref());
    let ctx = Arc::new(Ctx {
        conn,
        template,
        headers,
        from,
        queue: WorkQueue::default(),
        report: report_tx,
        journal: journal.map(Mutex::new),
        retries,
        retry_delay,
        max_per_connection,
        rate_interval: rate.map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r)),
        limiter: rate.map(|_| Mutex::new(Instant::now())),
        live_workers: AtomicU64::new(u64::from(connections)),
        writer: Mutex::new(writer),
        write_error: Mutex::new(None),
        warned_lockstep: AtomicBool::new(false),
        quiet,
        any_session: AtomicBool::new(false),
        last_error: Mutex::new(None),
        counters: Arc::new(Counters::default()),
    });

    // Writer thread: owns the report and the progress bar.
    let wctx = Arc::clone(&ctx.counters);
    let writer_thread = std::thread::Builder::new()
        .name("report".into())
        .spawn(move || write_reports(report_rx, progress, &wctx))
        .map_err(|e| {
            fail(
                Exit::Software,
                anyhow!("cannot start the report thread: {e}"),
            )
        })?;

    // Producer thread.
    let pctx = Arc::clone(&ctx);
    let producer = std::thread::Builder::new()
        .name("list".into())
        .spawn(move || {
            produce(
                list,
                &pctx,
                shard,
                allow_duplicates,
                resume.as_ref(),
                skip_unknown,
            );
            resume
        })
        .map_err(|e| fail(Exit::Software, anyhow!("cannot start the list thread: {e}")))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        // One session task per connection: a second worker thread only helps with two or
        // more, and with one it costs cross-thread wake-ups on every reply.
        .worker_threads(connections.clamp(1, 2) as usize)
        .enable_all()
        .build()
        .map_err(|e| fail(Exit::Software, anyhow!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let sig = Arc::clone(&ctx);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\npipemail: interrupted: finishing messages in flight, reporting the rest as deferred (Ctrl-C again to abort)");
                sig.stop.store(true, Ordering::SeqCst);
                sig.queue.notify.notify_waiters();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let c = Arc::clone(&ctx);
            tasks.push(tokio::spawn(async move { worker(&c).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    drop(rt); // ends the Ctrl-C task and its reference to the context
    let resume = producer
        .join()
        .map_err(|_| fail(Exit::Software, anyhow!("list thread panicked")))?;
    let any_session = ctx.any_session.load(Ordering::SeqCst);
    let session_error = ctx
        .last_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let (rt_used, rt_lockstep, sent_this_run) = (
        ctx.rt_used.load(Ordering::SeqCst),
        ctx.rt_lockstep.load(Ordering::SeqCst),
        ctx.sent.load(Ordering::SeqCst),
    );
    // Dropping the context closes the report channel: the writer then finishes.
    let (journal, writer, write_error) = match Arc::try_unwrap(ctx) {
        Ok(c) => (
            c.journal.map(|j| {
                j.into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            }),
            c.writer
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            c.write_error
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ),
        Err(_) => {
            return Err(fail(
                Exit::Software,
                anyhow!("internal: the run context is still shared"),
            ));
        }
    };
    let mut summary = writer_thread
        .join()
        .map_err(|_| fail(Exit::Software, anyhow!("report thread panicked")))??;
    if let Some(e) = write_error {
        return Err(fail(Exit::IoErr, anyhow!("writing the report failed: {e}")));
    }
    if let Some(w) = writer {
        w.finish()
            .map_err(|e| fail(Exit::IoErr, anyhow!("writing the report failed: {e}")))?;
    }
    if let Some(j) = journal {
        j.finish()
            .map_err(|e| fail(Exit::IoErr, anyhow!("cannot remove the journal: {e}")))?;
    }
    if let Some(r) = resume {
        r.finish().map_err(|e| {
            fail(
                Exit::IoErr,
                anyhow!("cannot remove the resume carry file: {e}"),
            )
        })?;
    }
    summary.any_session = any_session;
    summary.session_error = session_error;
    summary.rt_used = rt_used;
    summary.rt_lockstep = rt_lockstep;
    summary.sent_this_run = sent_this_run;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// How long the report thread naps between batches while rows keep coming.
const REPORT_COALESCE: Duration = Duration::from_millis(1);

/// The next message for the report thread. While rows keep coming it takes them in batches,
/// napping `REPORT_COALESCE` whenever the channel runs dry, instead of blocking on the channel:
/// a blocked receiver is woken by every send (a futex call and a context switch per message,
/// more CPU than sending the message). Once a nap brings nothing, it blocks again. Rows are
/// still written and flushed one by one, at most one nap after the message finished.
fn next_report(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ReportMsg>,
    busy: &mut bool,
) -> Option<ReportMsg> {
    use tokio::sync::mpsc::error::TryRecvError;
    loop {
        match rx.try_recv() {
            Ok(msg) => {
                *busy = true;
                return Some(msg);
            }
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if *busy => {
                *busy = false;
                std::thread::sleep(REPORT_COALESCE);
            }
            Err(TryRecvError::Empty) => {
                let msg = rx.blocking_recv();
                *busy = msg.is_some();
                return msg;
            }
        }
    }
}

fn write_reports(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ReportMsg>,
    progress: Progress,
    ctx: &Counters,
) -> Result<Summary, Failure> {
    let mut s = Summary::default();
    let mut fatal = None;
    let mut busy = false;
    while let Some(msg) = next_report(&mut rx, &mut busy) {
        match msg {
            ReportMsg::Row(status) => {
                s.rows += 1;
                match status {
                    Status::Sent => s.sent += 1,
                    Status::Failed => s.failed += 1,
                    Status::Deferred => s.deferred += 1,
                    Status::Skipped => s.skipped += 1,
                    Status::Unknown => s.unknown += 1,
                }
                progress.update(
                    &s,
                    ctx.rt_used.load(Ordering::Relaxed),
                    ctx.rt_lockstep.load(Ordering::Relaxed),
                );
            }
            ReportMsg::Sanitized => s.sanitized_rows += 1,
            ReportMsg::Fatal(f) => {
                ctx.stop.store(true, Ordering::SeqCst);
                fatal.get_or_insert(f);
            }
        }
    }
    progress.finish();
    if let Some(f) = fatal {
        return Err(f);
    }
    Ok(s)
}

fn produce(
    mut list: ListReader<Box<dyn Read + Send>>,
    ctx: &Ctx,
    shard: Option<(u64, u64)>,
    allow_duplicates: bool,
    resume: Option<&ResumeState>,
    skip_unknown: bool,
) {
    let mut dups = DuplicateFilter::new();
    while let Some(item) = list.next_row() {
        let row = match item {
            Ok(r) => r,
            Err(e) => {
                let exit = if matches!(e, InputError::Io { .. }) {
                    Exit::IoErr
                } else {
                    Exit::DataErr
                };
                let _ = ctx.report.send(ReportMsg::Fatal(fail(exit, e)));
                break;
            }
        };
        if let Some((k, n)) = shard {
            if (row.number - 1) % n != k - 1 {
                continue;
            }
        }
        if let Some(p) = &row.problem {
            let mut r = row_report(&row, Status::Failed, Some(report::Stage::Input), 0);
            r.response = p.clone();
            ctx.send_report(r);
            continue;
        }
        if !allow_duplicates {
            if let Some(first) = dups.check(&row.email, row.number) {
                let mut r = row_report(&row, Status::Skipped, None, 0);
                r.response = format!("duplicate of row {first}");
                ctx.send_report(r);
                continue;
            }
        }
        if let Some(state) = resume {
            match state.lookup(&row.email) {
                Some(PreviousOutcome::Sent(prev)) => {
                    ctx.send_report(ReportRow {
                        row: row.number,
                        email: row.email.clone(),
                        ..prev
                    });
                    continue;
                }
                Some(PreviousOutcome::Unknown(prev)) if skip_unknown => {
                    ctx.send_report(ReportRow {
                        row: row.number,
                        email: row.email.clone(),
                        ..prev
                    });
                    continue;
                }
                _ => {}
            }
        }
        if ctx.stop.load(Ordering::SeqCst) {
            let mut r = row_report(&row, Status::Deferred, Some(report::Stage::Connect), 0);
            r.response = "not sent: the run was stopped".into();
            ctx.send_report(r);
            continue;
        }
        ctx.queue.push(Job {
            row,
            attempts: 0,
            uncertain: false,
        });
    }
    ctx.queue.producer_done();
}

/// One connection slot: opens sessions until the work is done or it gives up.
async fn worker(ctx: &Ctx) {
    let mut failures = 0u32;
    loop {
        if ctx.stop.load(Ordering::SeqCst) || ctx.queue.is_done() {
            break;
        }
        // Wait for work before connecting, so idle slots don't hold sessions open.
        if !ctx.queue.has_ready_job() {
            match ctx.queue.take(false).await {
                Some(job) => ctx.queue.retry(job, Instant::now()),
                None => break,
            }
        }
        let end = match Connection::open(&ctx.conn.connect).await {
            Ok(conn) => run_session(ctx, conn).await,
            Err(e) => SessionEnd {
                established: false,
                error: Some(e.to_string()),
                fatal: false,
            },
        };
        if end.established {
            failures = 0;
        }
        if let Some(e) = &end.error {
            ctx.set_error(e);
            if !end.established {
                failures += 1;
                if end.fatal || failures > ctx.retries {
                    break;
                }
                tokio::time::sleep(backoff(ctx.retry_delay, failures)).await;
            }
        }
    }
    // The last slot to leave reports whatever is left, so every row appears once.
    if ctx.live_workers.fetch_sub(1, Ordering::SeqCst) == 1 {
        let why = if ctx.stop.load(Ordering::SeqCst) {
            "not sent: the run was stopped".to_string()
        } else {
            format!("not sent: {}", ctx.error_text())
        };
        while let Some(job) = ctx.queue.take(true).await {
            let status = if job.uncertain {
                Status::Unknown
            } else {
                Status::Deferred
            };
            let mut r = row_report(&job.row, status, Some(report::Stage::Connect), job.attempts);
            r.response = if job.uncertain {
                format!("{UNCERTAIN_NOTE}; then {why}")
            } else {
                why.clone()
            };
            ctx.send_report(r);
            ctx.queue.finish();
        }
    }
}

struct SessionEnd {
    established: bool,
    error: Option<String>,
    /// Retrying cannot help (TLS/pipelining required but absent, AUTH refused...).
    fatal: bool,
}

struct InFlight {
    job: Job,
    message_id: String,
}

async fn run_session(ctx: &Ctx, mut conn: Connection) -> SessionEnd {
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
                    let s = conn.session_ref();
                    if !s.pipelining()
                        && ctx.conn.connect.session.pipelining == PipeliningPolicy::Auto
                        && !ctx.quiet
                        && !ctx.warned_lockstep.swap(true, Ordering::SeqCst)
                    {
                        eprintln!(
                            "pipemail: warning: {} does not advertise PIPELINING: sending lock-step, one round trip per command",
                            ctx.conn.connect.target
                        );
                    }
                }
                Event::Exchange(x) if ctx.conn.verbose => {
                    if !x.command.is_empty() {
                        eprintln!("C: {}", x.command);
                    }
                    for (i, line) in x.reply.lines.iter().enumerate() {
                        let sep = if i + 1 == x.reply.lines.len() {
                            ' '
                        } else {
                            '-'
                        };
                        let enh = x
                            .reply
                            .enhanced
                            .filter(|_| i == 0)
                            .map(|e| format!("{e} "))
                            .unwrap_or_default();
                        eprintln!("S: {}{sep}{enh}{line}", x.reply.code);
                    }
                }
                Event::Recipient(o) => on_outcome(ctx, &mut inflight, o),
                Event::Closed(e) => end_error = e,
                _ => {}
            }
        }
        let rt = conn.session_ref().round_trips();
        ctx.rt_used
            .fetch_add(rt.used - last_rt.0, Ordering::Relaxed);
        ctx.rt_lockstep
            .fetch_add(rt.lockstep - last_rt.1, Ordering::Relaxed);
        last_rt = (rt.used, rt.lockstep);
        if conn.session_ref().is_closed() {
            break;
        }
        // Feed the session.
        let stopping = ctx.stop.load(Ordering::SeqCst);
        if conn.session_ref().is_ready() && !stopping {
            while conn.session_ref().wants_message() {
                if ctx.max_per_connection > 0 && messages >= ctx.max_per_connection {
                    conn.session().quit();
                    break;
                }
                let job = match ctx.queue.try_take(Instant::now(), false) {
                    Take::Job(j) => j,
                    Take::Done => {
                        conn.session().quit();
                        break;
                    }
                    Take::WaitUntil(_) => break,
                };
                ctx.rate_wait().await;
                messages += 1;
                if let Some(msg) = render(
                    ctx,
                    conn.session_ref().capabilities().has(Extensions::SMTPUTF8),
                    job,
                    &mut inflight,
                ) {
                    conn.session().send(msg);
                }
            }
        } else if stopping && conn.session_ref().is_ready() {
            conn.session().quit();
        }
        let s = conn.session_ref();
        if s.is_ready() && s.is_idle() && !conn.has_pending_write() {
            // Nothing in flight: wait for work (or the end of it).
            match ctx.queue.take(false).await {
                Some(job) => ctx.queue.retry(job, Instant::now()),
                None => conn.session().quit(),
            }
            continue;
        }
        if conn.session_ref().is_holding() && !ctx.queue.has_ready_job() {
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
                let mut j = j.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Err(e) = j.record_in_flight(&rows) {
                    let _ = ctx.report.send(ReportMsg::Fatal(fail(
                        Exit::IoErr,
                        anyhow!("cannot write the journal: {e}"),
                    )));
                    ctx.stop.store(true, Ordering::SeqCst);
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
) -> Option<Message> {
    let from_hint = match &ctx.from {
        FromSource::Fixed(f) => Some(f.as_str()),
        FromSource::PerRow => None,
    };
    let domain = from_hint
        .and_then(|f| f.rsplit_once('@'))
        .map(|(_, d)| d.to_string());
    let opts = RenderOptions {
        smtputf8,
        now: OffsetDateTime::now_utc(),
        message_id_domain: domain,
    };
    let rendered = match ctx.template.render(&job.row, &ctx.headers, &opts) {
        Ok(r) => r,
        Err(e) => {
            let mut r = row_report(
                &job.row,
                Status::Failed,
                Some(report::Stage::Input),
                job.attempts,
            );
            r.response = e.to_string();
            ctx.send_report(r);
            ctx.queue.finish();
            return None;
        }
    };
    if rendered.sanitized && job.attempts == 0 {
        let _ = ctx.report.send(ReportMsg::Sanitized);
    }
    let from = match &ctx.from {
        FromSource::Fixed(f) => f.clone(),
        FromSource::PerRow => match from_address_of(&rendered.data) {
            Some(f) => f,
            None => {
                let mut r = row_report(
                    &job.row,
                    Status::Failed,
                    Some(report::Stage::Input),
                    job.attempts,
                );
                r.response = "the rendered message has no From address (use --from)".into();
                ctx.send_report(r);
                ctx.queue.finish();
                return None;
            }
        },
    };
    let id = job.row.number;
    let msg = Message {
        id,
        from,
        to: vec![job.row.email.clone()],
        data: rendered.data,
    };
    inflight.insert(
        id,
        InFlight {
            job,
            message_id: rendered.message_id,
        },
    );
    Some(msg)
}

/// Response text of a row whose earlier attempt ended `unknown` and whose later attempts did
/// not send it.
const UNCERTAIN_NOTE: &str = "delivery unknown: an earlier attempt may have been delivered";

fn on_outcome(ctx: &Ctx, inflight: &mut HashMap<u64, InFlight>, o: RcptOutcome) {
    let Some(InFlight {
        mut job,
        message_id,
    }) = inflight.remove(&o.message)
    else {
        return;
    };
    job.attempts += 1;
    let was_uncertain = job.uncertain;
    job.uncertain |= o.delivery == Delivery::Unknown;
    let status = match o.delivery {
        Delivery::Sent => Status::Sent,
        Delivery::Deferred | Delivery::Unknown
            if job.attempts <= ctx.retries && !ctx.stop.load(Ordering::SeqCst) =>
        {
            let at = Instant::now() + backoff(ctx.retry_delay, job.attempts);
            ctx.queue.retry(job, at);
            return;
        }
        // An earlier attempt may have been delivered: not known to have failed.
        _ if job.uncertain => Status::Unknown,
        Delivery::Rejected => Status::Failed,
        Delivery::Deferred => Status::Deferred,
        Delivery::Unknown => Status::Unknown,
    };
    if status == Status::Sent {
        ctx.sent.fetch_add(1, Ordering::Relaxed);
    }
    let mut r = row_report(&job.row, status, Some(o.stage.into()), job.attempts);
    r.smtp_code = o.reply.as_ref().map(|r| r.code);
    r.enhanced_code = o
        .reply
        .as_ref()
        .and_then(|r| r.enhanced)
        .map(|e| e.to_string());
    r.response = if was_uncertain && status == Status::Unknown {
        format!("{UNCERTAIN_NOTE}; last attempt: {}", o.text())
    } else {
        o.text()
    };
    r.message_id = message_id;
    ctx.send_report(r);
    ctx.queue.finish();
}

/// `--dry-run`: renders every row (as for a server without SMTPUTF8), prints the first
/// message on stdout and the counts on stderr; connects to nothing.
pub(crate) fn dry_run(mut plan: SendPlan) -> Result<Exit, Failure> {
    let headers = plan.list.headers().to_vec();
    let mut dups = DuplicateFilter::new();
    let (mut ok, mut bad, mut skipped, mut sanitized) = (0u64, 0u64, 0u64, 0u64);
    let mut first = true;
    while let Some(item) = plan.list.next_row() {
        let row = item.map_err(|e| fail(Exit::DataErr, e))?;
        if let Some((k, n)) = plan.shard {
            if (row.number - 1) % n != k - 1 {
                continue;
            }
        }
        if let Some(p) = &row.problem {
            eprintln!("pipemail: row {} (line {}): {p}", row.number, row.line);
            bad += 1;
            continue;
        }
        if !plan.allow_duplicates && dups.check(&row.email, row.number).is_some() {
            skipped += 1;
            continue;
        }
        let opts = RenderOptions {
            smtputf8: false,
            now: OffsetDateTime::now_utc(),
            message_id_domain: None,
        };
        match plan.template.render(&row, &headers, &opts) {
            Ok(r) => {
                ok += 1;
                sanitized += u64::from(r.sanitized);
                if first {
                    first = false;
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    out.write_all(&r.data)
                        .and_then(|()| out.flush())
                        .map_err(|e| fail(Exit::IoErr, e))?;
                }
            }
            Err(e) => {
                eprintln!("pipemail: row {} (line {}): {e}", row.number, row.line);
                bad += 1;
            }
        }
    }
    eprintln!(
        "pipemail: dry run: {ok} messages would be sent, {bad} rows fail, {skipped} duplicates skipped; nothing was sent"
    );
    if sanitized > 0 {
        eprintln!(
            "pipemail: warning: {sanitized} rows had CR/LF in header values (replaced by spaces)"
        );
    }
    Ok(if bad == 0 { Exit::Ok } else { Exit::Partial })
}
