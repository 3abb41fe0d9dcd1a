//! The pool: the threads and tasks around the sans-IO [`Schedule`].
//!
//! One thread reads the list and decides each row ([`JobFilter`]); N tokio tasks each own one
//! SMTP session at a time ([`Connection`]); one thread keeps the counts for the observer
//! (progress bar). A report row is written (one write, under a lock) by whichever thread
//! decided it, at once: after a kill -9 only rows still in a pipeline can be missing from the
//! report, so `--resume` re-sends at most one window per session. Jobs flow through the
//! bounded schedule so memory stays flat.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::ctx::{Counters, Ctx, Queue, ReportMsg, UNCERTAIN_NOTE, lock, queue_job};
use super::jobs::{Decision, JobFilter, row_report};
use super::level::HostLevel;
use super::render::Renderer;
use super::schedule::{Schedule, backoff};
use super::session::{SessionEnd, run_session};
use super::{Campaign, CampaignError, List, Observer, RoundTrips, Summary, Tally};
use crate::driver::Connection;
use crate::report::{Journal, ReportWriter, ResumeState, Stage, Status};

/// Runs a campaign; see [`Campaign::run`].
pub(super) fn run(c: Campaign, observer: Arc<dyn Observer>) -> Result<Summary, CampaignError> {
    let started = Instant::now();
    if c.schedule.batch_recipients > 1
        && let Some(why) = super::render::batch_obstacle(&c.template)
    {
        return Err(CampaignError::Batch(why));
    }
    let headers = c.list.headers().to_vec();
    // The composer reads the --attach files before anything is created or connected.
    let renderer = match &c.mime {
        Some(opts) => Renderer::with_mime(c.template, headers, c.from, opts)
            .map_err(CampaignError::Compose)?,
        None => Renderer::new(c.template, headers, c.from),
    };
    let (writer, journal) = match &c.report {
        // A report on the null device is discarded: it is not encoded at all (the counts
        // and the summary do not depend on it).
        Some((path, _)) if path != "-" && crate::fsutil::is_null_device(Path::new(path)) => {
            (None, None)
        }
        Some((path, format)) => {
            let w = ReportWriter::create(path, *format).map_err(|source| {
                CampaignError::ReportCreate {
                    path: path.clone(),
                    source,
                }
            })?;
            let j = if path == "-" {
                None
            } else {
                Some(
                    Journal::create(path).map_err(|source| CampaignError::JournalCreate {
                        path: path.clone(),
                        source,
                    })?,
                )
            };
            (Some(w), j)
        }
        None => (None, None),
    };
    let (report_tx, report_rx) = tokio::sync::mpsc::unbounded_channel();
    let counters = Arc::new(Counters::default());
    let queue = Arc::new(Queue {
        state: Mutex::new(Schedule::new(c.schedule)),
        stopped: AtomicBool::new(false),
        space: Condvar::new(),
        notify: tokio::sync::Notify::new(),
    });
    c.stopper.attach(&queue);
    let stopper = c.stopper.clone();
    let level = HostLevel::new(c.connect.target.clone(), c.connect.session.pipelining_level);
    let ctx = Arc::new(Ctx {
        connect: c.connect,
        renderer: {
            let mut r = renderer.with_row_templates(c.row_templates);
            r.set_deliverability(c.deliverability);
            r
        },
        queue: Arc::clone(&queue),
        report: report_tx,
        journal: journal.map(Mutex::new),
        live_workers: AtomicU64::new(u64::from(c.connections)),
        rows_wanted: writer.is_some() || c.suppress_add.is_some(),
        writer: Mutex::new(writer),
        write_error: Mutex::new(None),
        warned_lockstep: AtomicBool::new(false),
        any_session: AtomicBool::new(false),
        last_error: Mutex::new(None),
        extras_done: Mutex::new(std::collections::HashMap::new()),
        counters: Arc::clone(&counters),
        observer: Arc::clone(&observer),
        level,
        last_stage: Mutex::new(Stage::Connect),
        permanent: c.suppress_add.is_some().then(|| Mutex::new(Vec::new())),
        warned_no_dsn: AtomicBool::new(false),
    });

    // Report thread: the counts and the observer. It holds no report sender, so it ends
    // when the context is dropped; on a fatal error it stops the schedule.
    let stop_queue = Arc::clone(&queue);
    let rt_counters = Arc::clone(&counters);
    let obs = Arc::clone(&observer);
    let report_thread = std::thread::Builder::new()
        .name("report".into())
        .spawn(move || tally(report_rx, &*obs, &rt_counters, &stop_queue))
        .map_err(|source| CampaignError::Start {
            what: "report thread",
            source,
        })?;

    // List thread.
    let pctx = Arc::clone(&ctx);
    let mut filter = JobFilter::new(c.shard, c.allow_duplicates, c.resume, c.skip_unknown);
    if let Some(k) = c.known_duplicates {
        filter = filter.with_known_duplicates(k);
    }
    let filter = filter.with_suppression(c.suppression);
    let list = c.list;
    let producer = std::thread::Builder::new()
        .name("list".into())
        .spawn(move || produce(list, filter, &pctx))
        .map_err(|source| CampaignError::Start {
            what: "list thread",
            source,
        })?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        // One session task per connection: a second worker thread only helps with two or
        // more, and with one it costs cross-thread wake-ups on every reply.
        .worker_threads(c.connections.clamp(1, 2) as usize)
        .enable_all()
        .build()
        .map_err(|source| CampaignError::Start {
            what: "runtime",
            source,
        })?;
    let connections = c.connections;
    let handle_ctrl_c = c.handle_ctrl_c;
    rt.block_on(async {
        if handle_ctrl_c {
            let sig = Arc::clone(&ctx);
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    sig.observer.interrupted();
                    stopper.stop();
                    if tokio::signal::ctrl_c().await.is_ok() {
                        sig.observer.aborted();
                    }
                }
            });
        }
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
    c.stopper.detach();
    let resume = producer
        .join()
        .map_err(|_| CampaignError::Internal("list thread panicked"))?;
    let any_session = ctx.any_session.load(Ordering::SeqCst);
    let session_error = lock(&ctx.last_error).clone();
    let pipelining = ctx.level.last_change();
    // Dropping the context closes the report channel: the report thread then finishes.
    let Ok(ctx) = Arc::try_unwrap(ctx) else {
        return Err(CampaignError::Internal("the run context is still shared"));
    };
    let journal = ctx
        .journal
        .map(|j| j.into_inner().unwrap_or_else(PoisonError::into_inner));
    let writer = ctx
        .writer
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let write_error = ctx
        .write_error
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    drop(ctx.report);
    if let (Some(mut appender), Some(p)) = (c.suppress_add, ctx.permanent) {
        let addrs = p.into_inner().unwrap_or_else(PoisonError::into_inner);
        for a in addrs {
            appender.append(&a).map_err(CampaignError::SuppressAdd)?;
        }
    }
    let (tally, sanitized, fatal) = report_thread
        .join()
        .map_err(|_| CampaignError::Internal("report thread panicked"))?;
    if let Some(f) = fatal {
        return Err(f);
    }
    if let Some(e) = write_error {
        return Err(CampaignError::ReportWrite(e));
    }
    if let Some(w) = writer {
        w.finish()
            .map_err(|e| CampaignError::ReportWrite(e.to_string()))?;
    }
    if let Some(j) = journal {
        j.finish().map_err(CampaignError::JournalRemove)?;
    }
    if let Some(r) = resume {
        r.finish().map_err(CampaignError::CarryRemove)?;
    }
    Ok(Summary {
        rows: tally.rows,
        sent: tally.sent,
        failed: tally.failed,
        deferred: tally.deferred,
        skipped: tally.skipped,
        unknown: tally.unknown,
        sanitized_rows: sanitized,
        rt_used: counters.rt_used.load(Ordering::SeqCst),
        rt_lockstep: counters.rt_lockstep.load(Ordering::SeqCst),
        elapsed: started.elapsed(),
        any_session,
        session_error,
        sent_this_run: counters.sent.load(Ordering::SeqCst),
        pipelining,
    })
}

/// How long the report thread naps between batches while rows keep coming.
const REPORT_COALESCE: Duration = Duration::from_millis(1);

/// The next message for the report thread. While rows keep coming it takes them in batches,
/// napping `REPORT_COALESCE` whenever the channel runs dry, instead of blocking on the channel:
/// a blocked receiver is woken by every send (a futex call and a context switch per message,
/// more CPU than sending the message). Once a nap brings nothing, it blocks again. Rows are
/// written by the thread that decided them; only the counts wait for the nap.
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

fn tally(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ReportMsg>,
    observer: &dyn Observer,
    counters: &Counters,
    queue: &Queue,
) -> (Tally, u64, Option<CampaignError>) {
    let mut t = Tally::default();
    let mut sanitized = 0;
    let mut fatal = None;
    let mut busy = false;
    while let Some(msg) = next_report(&mut rx, &mut busy) {
        match msg {
            ReportMsg::Row(status) => {
                t.rows += 1;
                match status {
                    Status::Sent => t.sent += 1,
                    Status::Failed => t.failed += 1,
                    Status::Deferred => t.deferred += 1,
                    Status::Skipped => t.skipped += 1,
                    Status::Unknown => t.unknown += 1,
                }
                let rt = RoundTrips {
                    used: counters.rt_used.load(Ordering::Relaxed),
                    lockstep: counters.rt_lockstep.load(Ordering::Relaxed),
                };
                observer.row(&t, rt);
            }
            ReportMsg::Sanitized => sanitized += 1,
            ReportMsg::Fatal(f) => {
                queue.stop();
                fatal.get_or_insert(f);
            }
        }
    }
    observer.finished();
    (t, sanitized, fatal)
}

fn produce(mut list: List, mut filter: JobFilter, ctx: &Arc<Ctx>) -> Option<ResumeState> {
    // DKIM: rows are rendered and signed by a pool on every core before they are queued.
    let pool = ctx
        .renderer
        .signs()
        .then(|| super::sign::SignPool::start(Arc::clone(ctx)));
    while let Some(item) = list.next_row() {
        let row = match item {
            Ok(r) => r,
            Err(e) => {
                let _ = ctx.report.send(ReportMsg::Fatal(CampaignError::List(e)));
                break;
            }
        };
        match filter.decide(row) {
            Decision::OtherShard => {}
            Decision::Report(r) => ctx.send_report(&r),
            Decision::Send(job) => match &pool {
                Some(p) => p.submit(job),
                None => queue_job(ctx, job),
            },
        }
    }
    if let Some(p) = pool {
        p.finish();
    }
    ctx.queue.producer_done();
    filter.into_resume()
}

/// One connection slot: opens sessions until the work is done or it gives up.
async fn worker(ctx: &Ctx) {
    let mut failures = 0u32;
    let retries = ctx.queue.lock().config().retries;
    let retry_delay = ctx.queue.lock().config().retry_delay;
    // Wait for work before connecting, so idle slots don't hold sessions open.
    while ctx.queue.wait_for_work().await {
        // Each session starts at the level the run learned for the host.
        let mut connect = ctx.connect.clone();
        connect.session.pipelining_level = ctx.level.current();
        connect.session.rset_before_mail = ctx.level.keeps_refused();
        let end = match Connection::open(&connect).await {
            Ok(conn) => run_session(ctx, conn).await,
            Err(e) => SessionEnd {
                established: false,
                error: Some(e.to_string()),
                fatal: e.is_fatal(),
                stage: e.stage().into(),
            },
        };
        if end.established {
            failures = 0;
        }
        if let Some(e) = &end.error {
            ctx.set_error(e);
            *lock(&ctx.last_stage) = end.stage;
            if !end.established {
                failures += 1;
                if end.fatal || failures > retries {
                    break;
                }
                tokio::time::sleep(backoff(retry_delay, failures)).await;
            }
        }
    }
    // The last slot to leave reports whatever is left, so every row appears once.
    if ctx.live_workers.fetch_sub(1, Ordering::SeqCst) == 1 {
        let why = if ctx.stopped() {
            "not sent: the run was stopped".to_string()
        } else {
            format!("not sent: {}", ctx.error_text())
        };
        while let Some(job) = ctx.queue.drain().await {
            let status = if job.uncertain {
                Status::Unknown
            } else {
                Status::Deferred
            };
            let stage = *lock(&ctx.last_stage);
            let mut r = row_report(&job.row, status, Some(stage), job.attempts);
            r.response = if job.uncertain {
                format!("{UNCERTAIN_NOTE}; then {why}")
            } else {
                why.clone()
            };
            ctx.send_report(&r);
        }
    }
}
