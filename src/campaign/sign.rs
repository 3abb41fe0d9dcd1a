//! The signing pool: with DKIM on, rows are rendered and signed on one thread per core
//! ahead of the connection tasks (see [`super::deliverability`] for what is added to each
//! message), so pipelining never waits on RSA.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use crate::report::{Stage, Status};

use super::ctx::{Ctx, queue_job};
pub use super::deliverability::{Deliverability, DsnSettings, RowTemplate, RowTemplateError};
use super::jobs::row_report;
use super::render::Prepared;
use super::schedule::Job;

/// Jobs waiting for a signing thread, per thread.
const POOL_BACKLOG: usize = 64;

/// Renders and signs jobs on one thread per core, between the list thread and the schedule,
/// so the connection tasks only copy finished messages and pipelining never waits on RSA.
/// Messages are rendered as for a server without SMTPUTF8 (header text RFC 2047-encoded),
/// since the session that will send them is not known yet; the same signed bytes go out on
/// every attempt.
pub(super) struct SignPool {
    ctx: Arc<Ctx>,
    tx: SyncSender<Job>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SignPool {
    pub(super) fn start(ctx: Arc<Ctx>) -> Self {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let (tx, rx) = sync_channel::<Job>(POOL_BACKLOG * n);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (ctx, rx) = (Arc::clone(&ctx), Arc::clone(&rx));
            let spawned = std::thread::Builder::new()
                .name(format!("sign-{i}"))
                .spawn(move || {
                    while let Ok(job) = next_job(&rx) {
                        prepare(&ctx, job);
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                // Fewer threads (none: the list thread signs, see `submit`).
                Err(_) => break,
            }
        }
        Self { ctx, tx, threads }
    }

    /// Hands a job to the pool (blocks while the pool is busy).
    pub(super) fn submit(&self, job: Job) {
        if self.threads.is_empty() {
            return prepare(&self.ctx, job);
        }
        if let Err(e) = self.tx.send(job) {
            prepare(&self.ctx, e.0);
        }
    }

    /// Waits until every submitted job is queued or reported.
    pub(super) fn finish(self) {
        drop(self.tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn next_job(rx: &Mutex<Receiver<Job>>) -> Result<Job, std::sync::mpsc::RecvError> {
    rx.lock().unwrap_or_else(PoisonError::into_inner).recv()
}

/// Renders and signs one job, then queues it (or reports it failed at stage `input`).
fn prepare(ctx: &Ctx, mut job: Job) {
    if ctx.stopped() {
        return queue_job(ctx, job);
    }
    match ctx
        .renderer
        // Rendered before the session is known: as for a server without SMTPUTF8 and
        // 8BITMIME (MIME parts 7-bit safe), so the signed bytes suit any server.
        .render_for(&job.row, false, false, time::OffsetDateTime::now_utc())
    {
        Ok(r) => {
            job.prepared = Some(Arc::new(Prepared {
                message: r.message,
                message_id: r.message_id,
                sanitized: r.sanitized,
            }));
            queue_job(ctx, job);
        }
        Err(why) => {
            let mut r = row_report(&job.row, Status::Failed, Some(Stage::Input), 0);
            r.response = why;
            ctx.send_report(&r);
        }
    }
}
