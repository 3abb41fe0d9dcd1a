//! The campaign: list + template → pipelined delivery over N sessions → one report row per
//! list row. A library API: a Rust program can build a [`Campaign`] and [`Campaign::run`] it
//! without the `pipemail` binary, which only adds flags, the progress bar and the exit code.
//!
//! * [`jobs`]: list row → job (shard, input problems, duplicates, resume); `--dry-run` too.
//! * [`schedule`]: the sans-IO queue, retries with backoff, `--max-per-connection`, `--rate`.
//! * [`render`]: job → engine message (template, envelope sender).
//! * `runner`: the threads and tasks: the list reader, N connection tasks over the driver,
//!   the report thread; the report row is written by the task that handled the reply.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use pipemail::campaign::{Campaign, FromSource, NoObserver};
//! use pipemail::driver::{ConnectOptions, Target, TlsSettings};
//! use pipemail::input::ListReader;
//! use pipemail::template::Template;
//!
//! let file: Box<dyn std::io::Read + Send> = Box::new(std::fs::File::open("list.csv")?);
//! let list = ListReader::new(file, "list.csv")?;
//! let template = Template::parse(&std::fs::read("msg.eml")?, "msg.eml", list.headers())?;
//! let connect = ConnectOptions {
//!     target: Target::parse("mx.example.net", 25)?,
//!     session: pipemail::engine::Config::default(),
//!     tls: TlsSettings::default(),
//!     connect_timeout: Duration::from_secs(30),
//! };
//! let campaign = Campaign::new(connect, list, template, FromSource::PerRow);
//! let summary = campaign.run(Arc::new(NoObserver))?;
//! println!("{} sent, {} failed", summary.sent, summary.failed);
//! # Ok(())
//! # }
//! ```

mod ctx;
pub mod deliverability;
pub mod jobs;
pub mod level;
pub mod render;
mod runner;
pub mod schedule;
mod session;
pub mod sign;

use std::io::Read;
use std::time::Duration;

use crate::driver::{ConnectOptions, Target};
use crate::engine::Exchange;
use crate::input::{InputError, ListReader};
use crate::report::{Format, ResumeState};
use crate::template::Template;

pub use jobs::{Decision, JobFilter, Shard};
pub use level::{DROPS_TO_STEP_DOWN, LevelChange, LevelReason, level_text};
pub use render::{FromSource, Renderer, RowTemplates, batch_obstacle};
pub use schedule::{BatchPoll, Handled, Job, Poll, Schedule, ScheduleConfig, Verdict, backoff};

/// The list as the campaign reads it.
pub type List = ListReader<Box<dyn Read + Send>>;

/// Everything a run needs; build with [`Campaign::new`] and set the public fields.
pub struct Campaign {
    /// Where and how to connect (TLS, AUTH, pipelining policy, timeouts).
    pub connect: ConnectOptions,
    /// The recipient list.
    pub list: List,
    /// The message template.
    pub template: Template,
    /// The envelope sender.
    pub from: FromSource,
    /// Report path (`-`: standard output) and format; `None`: no report.
    pub report: Option<(String, Format)>,
    /// An earlier run's state (`--resume`).
    pub resume: Option<ResumeState>,
    /// Report rows left `unknown` by an earlier run instead of sending them again.
    pub skip_unknown: bool,
    /// Parallel sessions.
    pub connections: u32,
    /// Queue, retry and rate limits.
    pub schedule: ScheduleConfig,
    /// Send to a repeated address again.
    pub allow_duplicates: bool,
    /// Only this shard's rows.
    pub shard: Option<Shard>,
    /// Per-row templates chosen by the list's `template` column.
    pub row_templates: Option<RowTemplates>,
    /// Repeated rows found by a pre-scan of a list file ([`crate::input::find_duplicates`]
    /// over this shard's rows): used instead of the in-memory duplicate filter, so memory
    /// stays flat however long the list.
    pub known_duplicates: Option<crate::input::KnownDuplicates>,
    /// Handle Ctrl-C: first stop taking messages and drain, second abort
    /// ([`Observer::interrupted`], [`Observer::aborted`]).
    pub handle_ctrl_c: bool,
    /// Compose each message as MIME ([`crate::message::Composer`]): HTML and Markdown
    /// alternatives, `--attach` files and `Attach:` fields, `Cc:`/`Bcc:` in the envelope.
    /// `None` (the default): the template is sent as rendered.
    pub mime: Option<crate::message::ComposerOptions>,
    /// `--dry-run --output DIR`: write each rendered message to `DIR/<row>.eml`.
    pub dry_run_output: Option<std::path::PathBuf>,
    /// DKIM, unsubscribe headers, DSN and a per-row envelope sender, added after rendering.
    pub deliverability: sign::Deliverability,
    /// Suppressed addresses and domains: their rows are `skipped` (`suppressed`).
    pub suppression: Option<std::sync::Arc<crate::deliver::suppress::Suppression>>,
    /// Where the addresses that failed permanently (5.1.x, 5.2.1) are appended after the run.
    pub suppress_add: Option<crate::deliver::suppress::SuppressAppender>,
    stopper: Stopper,
}

impl Campaign {
    /// A run with defaults: one connection, no report, three retries one second apart.
    pub fn new(connect: ConnectOptions, list: List, template: Template, from: FromSource) -> Self {
        Self {
            connect,
            list,
            template,
            from,
            report: None,
            resume: None,
            skip_unknown: false,
            connections: 1,
            schedule: ScheduleConfig::default(),
            allow_duplicates: false,
            shard: None,
            row_templates: None,
            known_duplicates: None,
            handle_ctrl_c: false,
            mime: None,
            dry_run_output: None,
            deliverability: sign::Deliverability::default(),
            suppression: None,
            suppress_add: None,
            stopper: Stopper::default(),
        }
    }

    /// A handle that stops the run from another thread, as Ctrl-C does: messages in flight
    /// finish, nothing new is taken or retried, the rest is reported `deferred`.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Runs the campaign to the end; every row of the list (of the shard) is in the report.
    pub fn run(self, observer: std::sync::Arc<dyn Observer>) -> Result<Summary, CampaignError> {
        runner::run(self, observer)
    }

    /// `--dry-run`: decides and renders every row (as for a server without SMTPUTF8) with the
    /// same filters as a run, `--resume` included, connecting to nothing and writing nothing
    /// (load the resume state with [`ResumeState::peek`]). `on` sees the first message and
    /// each row that would fail.
    pub fn dry_run(mut self, mut on: impl FnMut(DryRunEvent<'_>)) -> Result<DryRun, CampaignError> {
        let headers = self.list.headers().to_vec();
        let mut renderer = match &self.mime {
            Some(opts) => Renderer::with_mime(self.template, headers, self.from, opts)
                .map_err(CampaignError::Compose)?,
            None => Renderer::new(self.template, headers, self.from),
        }
        .with_row_templates(self.row_templates);
        renderer.set_deliverability(self.deliverability);
        let mut filter = JobFilter::new(
            self.shard,
            self.allow_duplicates,
            self.resume.take(),
            self.skip_unknown,
        );
        if let Some(k) = self.known_duplicates.take() {
            filter = filter.with_known_duplicates(k);
        }
        let mut filter = filter.with_suppression(self.suppression);
        let mut counts = DryRun::default();
        while let Some(item) = self.list.next_row() {
            let row = item.map_err(CampaignError::List)?;
            let (number, line) = (row.number, row.line);
            let job = match filter.decide(row) {
                Decision::OtherShard => continue,
                Decision::Report(r) if r.status == crate::report::Status::Skipped => {
                    counts.skipped += 1;
                    continue;
                }
                Decision::Report(r)
                    if matches!(
                        r.status,
                        crate::report::Status::Sent | crate::report::Status::Unknown
                    ) =>
                {
                    counts.already += 1;
                    continue;
                }
                Decision::Report(r) => {
                    on(DryRunEvent::Problem {
                        row: number,
                        line,
                        text: &r.response,
                    });
                    counts.failed += 1;
                    continue;
                }
                Decision::Send(job) => job,
            };
            match renderer.preview(&job.row, time::OffsetDateTime::now_utc()) {
                Ok(r) => {
                    counts.ok += 1;
                    counts.sanitized += u64::from(r.sanitized);
                    if counts.ok == 1 {
                        on(DryRunEvent::First(&r.data));
                    }
                    if let Some(dir) = &self.dry_run_output {
                        crate::message::write_eml(dir, number, &r.data).map_err(|source| {
                            CampaignError::EmlWrite {
                                path: dir.join(format!("{number}.eml")),
                                source,
                            }
                        })?;
                    }
                }
                Err(text) => {
                    on(DryRunEvent::Problem {
                        row: number,
                        line,
                        text: &text,
                    });
                    counts.failed += 1;
                }
            }
        }
        Ok(counts)
    }
}

/// Stops a running campaign; see [`Campaign::stopper`]. Stopping before the run starts
/// stops it as soon as it starts.
#[derive(Clone, Default)]
pub struct Stopper(std::sync::Arc<std::sync::Mutex<StopState>>);

#[derive(Default)]
struct StopState {
    requested: bool,
    queue: Option<std::sync::Arc<ctx::Queue>>,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("requested", &self.is_requested())
            .finish()
    }
}

impl Stopper {
    /// Stops the run (idempotent).
    pub fn stop(&self) {
        let queue = {
            let mut st = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.requested = true;
            st.queue.clone()
        };
        if let Some(q) = queue {
            q.stop();
        }
    }

    /// Was [`Stopper::stop`] called?
    pub fn is_requested(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .requested
    }

    /// The run's queue from now on; stops it at once if a stop came first.
    fn attach(&self, queue: &std::sync::Arc<ctx::Queue>) {
        let requested = {
            let mut st = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.queue = Some(std::sync::Arc::clone(queue));
            st.requested
        };
        if requested {
            queue.stop();
        }
    }

    /// The run is over: drop the queue.
    fn detach(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .queue = None;
    }
}

/// What [`Campaign::dry_run`] shows as it goes.
#[derive(Debug)]
pub enum DryRunEvent<'a> {
    /// The first message that would be sent.
    First(&'a [u8]),
    /// A row that would fail.
    Problem {
        /// Data row.
        row: u64,
        /// Line in the list.
        line: u64,
        /// Why.
        text: &'a str,
    },
}

/// [`Campaign::dry_run`]'s counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DryRun {
    /// Messages that would be sent.
    pub ok: u64,
    /// Rows that would fail.
    pub failed: u64,
    /// Duplicates skipped.
    pub skipped: u64,
    /// Rows whose header values had control characters replaced.
    pub sanitized: u64,
    /// Rows an earlier run (`--resume`) already sent, or left `unknown` with `--skip-unknown`.
    pub already: u64,
}

/// Report-row counts so far, as the report thread sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Rows reported.
    pub rows: u64,
    /// `sent` rows (this run's and copied ones).
    pub sent: u64,
    /// `failed` rows.
    pub failed: u64,
    /// `deferred` rows.
    pub deferred: u64,
    /// `skipped` rows.
    pub skipped: u64,
    /// `unknown` rows.
    pub unknown: u64,
}

/// Round trips so far: used, and what lock-step SMTP would have needed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundTrips {
    /// Round trips made.
    pub used: u64,
    /// Lock-step equivalent.
    pub lockstep: u64,
}

/// What a run did: for the summary line, the exit code and the demo table.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Rows reported.
    pub rows: u64,
    /// `sent` rows.
    pub sent: u64,
    /// `failed` rows.
    pub failed: u64,
    /// `deferred` rows.
    pub deferred: u64,
    /// `skipped` rows.
    pub skipped: u64,
    /// `unknown` rows.
    pub unknown: u64,
    /// Rows whose header values had control characters replaced.
    pub sanitized_rows: u64,
    /// Round trips made.
    pub rt_used: u64,
    /// Round trips lock-step SMTP would have needed.
    pub rt_lockstep: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// At least one session got past the greeting, EHLO, TLS and AUTH.
    pub any_session: bool,
    /// The last session or connection error.
    pub session_error: Option<String>,
    /// Messages the server accepted in this run (not copied from an earlier one).
    pub sent_this_run: u64,
    /// The run lowered its pipelining level for the host (issue 11): the last such change;
    /// `None` when it kept the level it started at.
    pub pipelining: Option<LevelChange>,
}

/// Hooks for a front end; every method has an empty default. Called from the report thread
/// ([`Observer::row`]) and the connection tasks (the rest), so keep them short.
pub trait Observer: Send + Sync {
    /// A report row was counted.
    fn row(&self, _tally: &Tally, _rt: RoundTrips) {}
    /// The run is over (the report thread is finishing).
    fn finished(&self) {}
    /// A command and its reply (only with the engine's `transcript` on).
    fn exchange(&self, _x: &Exchange) {}
    /// The server does not offer PIPELINING and the policy is `Auto`: once per run.
    fn lockstep(&self, _target: &Target) {}
    /// A session found evidence against its pipelining level (every time, for `-v`): the
    /// server refused a command for its place in the pipeline, or closed the connection
    /// after an end of data while commands were pipelined behind it.
    fn pipelining_evidence(&self, _target: &Target, _evidence: &LevelReason) {}
    /// The run lowered the pipelining level for its host: once per level reached.
    fn pipelining_level(&self, _change: &LevelChange) {}
    /// DSN parameters were asked for and the server does not offer DSN: once per run.
    fn no_dsn(&self, _target: &Target) {}
    /// First Ctrl-C: messages in flight finish, the rest is reported `deferred`.
    fn interrupted(&self) {}
    /// Second Ctrl-C (the caller usually exits the process).
    fn aborted(&self) {}
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// What stops a run (a refused recipient is a report row, never an error).
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// The list could not be read further.
    #[error(transparent)]
    List(InputError),
    /// The report could not be created.
    #[error("cannot write the report {path}")]
    ReportCreate {
        /// The report path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The journal could not be created.
    #[error("cannot write the journal beside {path}")]
    JournalCreate {
        /// The report path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A report row could not be written, or the report not finished.
    #[error("writing the report failed: {0}")]
    ReportWrite(String),
    /// A journal line could not be written.
    #[error("cannot write the journal: {0}")]
    JournalWrite(std::io::Error),
    /// The journal could not be removed after a complete run.
    #[error("cannot remove the journal: {0}")]
    JournalRemove(std::io::Error),
    /// The resume carry file could not be removed after a complete run.
    #[error("cannot remove the resume carry file: {0}")]
    CarryRemove(std::io::Error),
    /// A thread or the async runtime could not be started.
    #[error("cannot start the {what}: {source}")]
    Start {
        /// Which.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// `--batch-recipients` above 1 with a template that uses the row ([`batch_obstacle`]).
    #[error("{0}")]
    Batch(String),
    /// The message composer could not be set up (a `--attach` file or the attachment
    /// directory is unusable); nothing was sent.
    #[error(transparent)]
    Compose(crate::message::SetupError),
    /// `--dry-run --output`: a message file could not be written (it exists, or the
    /// directory is not writable). Nothing is overwritten.
    #[error("cannot write {}: {source}", path.display())]
    EmlWrite {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--suppress-add`: the suppression file could not be appended to.
    #[error(transparent)]
    SuppressAdd(crate::deliver::suppress::SuppressError),
    /// A bug: a thread panicked or an invariant broke.
    #[error("internal: {0}")]
    Internal(&'static str),
}

#[cfg(test)]
mod level_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
#[path = "batch_tests.rs"]
mod batch_tests;
