//! The sans-IO scheduler: which job goes next, when a deferred one comes back, how fast.
//!
//! Like the engine, nothing here reads a clock, sleeps, locks or spawns: time comes in as a
//! `now: Instant` argument and the answers are values. The runner (`campaign::runner`) wraps a
//! [`Schedule`] in one mutex shared by the list thread and the connection tasks and turns
//! [`Poll::Wait`] into a sleep or a wake-up; unit tests drive it on a virtual clock.
//!
//! * Inputs: [`Schedule::push`] (a fresh job from the list), [`Schedule::handle_outcome`] (what
//!   the server said), [`Schedule::producer_done`], [`Schedule::stop`] (Ctrl-C or a fatal error).
//! * Outputs: [`Schedule::poll_job`] (a job, a wait, or done), [`Schedule::poll_timeout`] (the
//!   next retry), [`Schedule::drain`] (what is left once no session can run).
//!
//! Retries come before fresh jobs once due; among retries the earliest due goes first, ties in
//! the order they were deferred. A deferred or `unknown` outcome is retried after
//! [`backoff`]`(retry_delay, attempts)` until `retries` is used up; an outcome after an
//! `unknown` one can only end `sent` or `unknown` (the server may already have the message).

use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::engine::Delivery;
use crate::input::Row;
use crate::report::Status;

/// One unit of work: a list row to send, with its history.
///
/// Room to grow: several envelope recipients per row and several rows per transaction will
/// hang off this type (the engine already takes `Message::to` as a list and reports per
/// recipient), without changing the scheduler's contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The list row.
    pub row: Row,
    /// How many times it was sent.
    pub attempts: u32,
    /// An earlier attempt ended `unknown`: the server may have the message, so the row is
    /// never reported `failed` or `deferred`, only `sent` or `unknown`.
    pub uncertain: bool,
    /// The message rendered and signed ahead by the signing pool (DKIM runs), reused as it
    /// is by every attempt; `None`: the session renders it.
    pub prepared: Option<std::sync::Arc<super::render::Prepared>>,
}

impl Job {
    /// A job that was never tried.
    pub fn new(row: Row) -> Self {
        Self {
            row,
            attempts: 0,
            uncertain: false,
            prepared: None,
        }
    }
}

/// Exponential backoff: `first`, doubled per attempt, capped at one minute.
pub fn backoff(first: Duration, attempt: u32) -> Duration {
    let cap = Duration::from_secs(60);
    first
        .checked_mul(1u32 << attempt.saturating_sub(1).min(16))
        .map_or(cap, |d| d.min(cap))
}

/// Scheduler limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleConfig {
    /// Retries after a deferred or unknown outcome (and per connection slot for failed
    /// connection attempts).
    pub retries: u32,
    /// First retry delay; doubled per attempt, capped at one minute.
    pub retry_delay: Duration,
    /// Messages per session before a fresh one; 0: no limit.
    pub max_per_connection: u64,
    /// Messages per second over all sessions; `None`: no limit.
    pub rate: Option<f64>,
    /// Fresh jobs held before the list reader is asked to wait.
    pub queue_cap: usize,
    /// Recipients (rows) per transaction (`--batch-recipients`); 1: one row per message.
    /// With more, a session takes jobs only once a whole batch is ready, or a retry is due,
    /// or the list is exhausted ([`Schedule::has_ready_job`]).
    pub batch_recipients: usize,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            retries: 3,
            retry_delay: Duration::from_secs(1),
            max_per_connection: 0,
            rate: None,
            queue_cap: 2048,
            batch_recipients: 1,
        }
    }
}

/// What [`Schedule::poll_job`] says.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Send this job, not before `not_before` (the rate limit's slot; `now` without a limit).
    Job {
        /// The job.
        job: Job,
        /// When the message may go.
        not_before: Instant,
    },
    /// The session has sent `--max-per-connection` messages: end it and open a fresh one.
    Rotate,
    /// Nothing is ready: wait for a push or outcome, or until this time (a retry falls due).
    Wait(Option<Instant>),
    /// Every job is finally reported, or the run was stopped: end the session.
    Done,
}

/// What [`Schedule::poll_batch`] says.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchPoll {
    /// Send these jobs as one transaction, not before `not_before`.
    Jobs {
        /// The jobs, at least one.
        jobs: Vec<Job>,
        /// When the transaction may go.
        not_before: Instant,
    },
    /// See [`Poll::Rotate`].
    Rotate,
    /// See [`Poll::Wait`].
    Wait(Option<Instant>),
    /// See [`Poll::Done`].
    Done,
}

/// What became of an outcome: see [`Schedule::handle_outcome`].
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Queued for a retry at this time; the job stays outstanding.
    Retry(Instant),
    /// Final: to be reported; no longer outstanding.
    Final(Verdict),
}

/// The final verdict on an outcome that is not retried.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The job, `attempts` counted.
    pub job: Job,
    /// The report status.
    pub status: Status,
    /// The job was already uncertain before this attempt.
    pub was_uncertain: bool,
}

#[derive(Debug)]
struct Retry {
    at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Retry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
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
        (o.at, o.seq).cmp(&(self.at, self.seq)) // min-heap by time, then FIFO
    }
}

/// The queue, the retry heap, the rate limit and the stop flag; see the module docs.
#[derive(Debug)]
pub struct Schedule {
    cfg: ScheduleConfig,
    rate_interval: Duration,
    next_slot: Option<Instant>,
    fresh: VecDeque<Job>,
    retry: BinaryHeap<Retry>,
    seq: u64,
    producer_done: bool,
    stopped: bool,
    /// Jobs pushed and not yet finally reported.
    outstanding: u64,
}

impl Schedule {
    /// An empty schedule.
    pub fn new(cfg: ScheduleConfig) -> Self {
        let rate_interval = cfg
            .rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r));
        Self {
            cfg,
            rate_interval,
            next_slot: None,
            fresh: VecDeque::new(),
            retry: BinaryHeap::new(),
            seq: 0,
            producer_done: false,
            stopped: false,
            outstanding: 0,
        }
    }

    /// The limits.
    pub fn config(&self) -> &ScheduleConfig {
        &self.cfg
    }

    /// Adds a fresh job; hands it back if the run was stopped (the caller reports it).
    pub fn push(&mut self, job: Job) -> Result<(), Job> {
        if self.stopped {
            return Err(job);
        }
        self.fresh.push_back(job);
        self.outstanding += 1;
        Ok(())
    }

    /// Fresh jobs waiting.
    pub fn queued(&self) -> usize {
        self.fresh.len()
    }

    /// Is the fresh queue at its cap (the list reader should wait)?
    pub fn is_full(&self) -> bool {
        self.fresh.len() >= self.cfg.queue_cap
    }

    /// The list is exhausted: no more pushes.
    pub fn producer_done(&mut self) {
        self.producer_done = true;
    }

    /// Stop taking new messages (Ctrl-C, a fatal error): sessions end, nothing is retried,
    /// and [`Schedule::drain`] hands back what is left.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Was the run stopped?
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Every job finally reported and the list exhausted.
    pub fn is_finished(&self) -> bool {
        self.producer_done && self.outstanding == 0
    }

    /// Is a job ready to go at `now` (a fresh one, or a retry that is due)? With
    /// `batch_recipients` above 1, fresh jobs count only as a whole batch, or once the list is
    /// exhausted (or the queue full), so transactions are full whenever the list allows.
    pub fn has_ready_job(&self, now: Instant) -> bool {
        let batch = self.cfg.batch_recipients.max(1);
        let fresh_ready = if batch == 1 {
            !self.fresh.is_empty()
        } else {
            !self.fresh.is_empty()
                && (self.fresh.len() >= batch || self.producer_done || self.is_full())
        };
        fresh_ready || self.retry.peek().is_some_and(|r| r.at <= now)
    }

    /// Up to `max` jobs for one transaction (`--batch-recipients`), for a session that has
    /// sent `session_messages` messages: due retries first, then fresh jobs. Nothing (a
    /// [`Poll::Wait`]) while [`Schedule::has_ready_job`] says no. The rate limit reserves
    /// one slot per job; `not_before` is the last one's.
    pub fn poll_batch(&mut self, now: Instant, session_messages: u64, max: usize) -> BatchPoll {
        if self.stopped {
            return BatchPoll::Done;
        }
        if self.cfg.max_per_connection > 0 && session_messages >= self.cfg.max_per_connection {
            return BatchPoll::Rotate;
        }
        if !self.has_ready_job(now) {
            return if self.is_finished() {
                BatchPoll::Done
            } else {
                BatchPoll::Wait(self.poll_timeout())
            };
        }
        let mut jobs = Vec::with_capacity(max.max(1));
        let mut not_before = now;
        while jobs.len() < max.max(1) {
            let job = if self.retry.peek().is_some_and(|r| r.at <= now) {
                self.retry.pop().map(|r| r.job)
            } else {
                self.fresh.pop_front()
            };
            let Some(job) = job else { break };
            not_before = self.reserve_slot(now);
            jobs.push(job);
        }
        BatchPoll::Jobs { jobs, not_before }
    }

    /// A job refused with "too many recipients" (452) after others of its transaction were
    /// accepted: it goes first into the next transaction, the attempt not counted (RFC 5321
    /// §4.5.3.1.10). It stays outstanding.
    pub fn requeue_front(&mut self, job: Job) {
        self.fresh.push_front(job);
    }

    /// The next job for a session that has sent `session_messages` messages so far.
    pub fn poll_job(&mut self, now: Instant, session_messages: u64) -> Poll {
        if self.stopped {
            return Poll::Done;
        }
        if self.cfg.max_per_connection > 0 && session_messages >= self.cfg.max_per_connection {
            return Poll::Rotate;
        }
        let job = if self.retry.peek().is_some_and(|r| r.at <= now) {
            self.retry.pop().map(|r| r.job)
        } else {
            self.fresh.pop_front()
        };
        match job {
            Some(job) => Poll::Job {
                job,
                not_before: self.reserve_slot(now),
            },
            None if self.is_finished() => Poll::Done,
            None => Poll::Wait(self.poll_timeout()),
        }
    }

    /// When the next retry falls due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retry.peek().map(|r| r.at)
    }

    /// Rate limit: the slot for the next message (slots are `1/rate` apart).
    fn reserve_slot(&mut self, now: Instant) -> Instant {
        if self.rate_interval.is_zero() {
            return now;
        }
        let at = self.next_slot.map_or(now, |n| n.max(now));
        self.next_slot = Some(at + self.rate_interval);
        at
    }

    /// What the server said about a job's message: retried after [`backoff`] while retries
    /// are left and the run is not stopped (deferred or unknown), else final.
    pub fn handle_outcome(&mut self, mut job: Job, delivery: Delivery, now: Instant) -> Handled {
        job.attempts += 1;
        let was_uncertain = job.uncertain;
        job.uncertain |= delivery == Delivery::Unknown;
        let status = match delivery {
            Delivery::Sent => Status::Sent,
            Delivery::Deferred | Delivery::Unknown
                if job.attempts <= self.cfg.retries && !self.stopped =>
            {
                let at = now + backoff(self.cfg.retry_delay, job.attempts);
                self.retry_at(job, at);
                return Handled::Retry(at);
            }
            // An earlier attempt may have been delivered: not known to have failed.
            _ if job.uncertain => Status::Unknown,
            Delivery::Rejected => Status::Failed,
            Delivery::Deferred => Status::Deferred,
            Delivery::Unknown => Status::Unknown,
        };
        self.outstanding = self.outstanding.saturating_sub(1);
        Handled::Final(Verdict {
            job,
            status,
            was_uncertain,
        })
    }

    /// A job taken with [`Schedule::poll_job`] that ended without an outcome from the server
    /// (it could not be rendered): it is reported by the caller and no longer outstanding.
    pub fn finish(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    fn retry_at(&mut self, job: Job, at: Instant) {
        self.seq += 1;
        self.retry.push(Retry {
            at,
            seq: self.seq,
            job,
        });
    }

    /// Once no session can run: the next job left, whatever its time, counted as finished.
    /// `None` when nothing is queued (more may come while the list reader runs).
    pub fn drain(&mut self) -> Option<Job> {
        let job = match self.retry.pop() {
            Some(r) => Some(r.job),
            None => self.fresh.pop_front(),
        }?;
        self.outstanding = self.outstanding.saturating_sub(1);
        Some(job)
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
