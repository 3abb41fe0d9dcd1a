//! Turns raw flags into validated settings: files opened, secrets read, limits checked.
//! Later code never sees clap.

use anyhow::{Context as _, anyhow};

use crate::cli::{ConnArgs, TlsMode};
use crate::exit::{Exit, Failure, fail};
use crate::message_plan::{MessagePlan, deliverability, list_message_plan, mime_options};
use pipemail::driver::{ConnectOptions, Target, TlsHints, TlsSettings};
use pipemail::engine::{self, PipeliningPolicy, Timeouts, TlsPolicy};

/// Connection settings for `send` and `check-server`.
#[derive(Debug, Clone)]
pub(crate) struct ConnPlan {
    pub(crate) connect: ConnectOptions,
    pub(crate) verbose: bool,
}

pub(crate) fn conn_plan(a: &ConnArgs) -> Result<ConnPlan, Failure> {
    let tls = match a.tls {
        TlsMode::Auto => TlsPolicy::Opportunistic,
        TlsMode::Starttls => TlsPolicy::Required,
        TlsMode::Implicit => TlsPolicy::Implicit,
        TlsMode::None => TlsPolicy::None,
    };
    let default_port = if tls == TlsPolicy::Implicit { 465 } else { 25 };
    let target = Target::parse(&a.host, default_port)
        .map_err(|e| fail(Exit::Usage, anyhow!("--host: {e}")))?;
    let (auth, auth_mechanism) = crate::secrets::auth_plan(a)?;
    if a.insecure {
        eprintln!(
            "pipemail: warning: --insecure: the server's certificate and name are NOT verified"
        );
    }
    let helo_name = a.helo.clone().unwrap_or_else(local_hostname);
    let pipelining = if a.no_pipelining {
        PipeliningPolicy::Off
    } else if a.require_pipelining {
        PipeliningPolicy::Require
    } else {
        PipeliningPolicy::Auto
    };
    let session = engine::Config {
        helo_name,
        pipelining,
        chunking: !a.no_chunking,
        tls,
        auth,
        allow_plaintext_auth: a.allow_plaintext_auth,
        auth_mechanism,
        window: a.window as usize,
        window_bytes: usize::try_from(a.window_bytes).unwrap_or(usize::MAX),
        timeouts: Timeouts {
            greeting: a.timeout,
            command: a.timeout,
            data: a.timeout,
            data_end: a.data_timeout,
        },
        transcript: a.verbose,
        ..engine::Config::default()
    };
    let tls = TlsSettings {
        insecure: a.insecure,
        ca_files: a.ca_file.clone(),
        server_name: a.tls_name.clone(),
        hints: TlsHints {
            untrusted: "the certificate is not signed by a trusted CA: add it with --ca-file, or use --insecure for a test server".into(),
            name_mismatch: "the certificate does not name this host: connect by the name it was issued for, or set --tls-name".into(),
            ..TlsHints::default()
        },
    };
    for f in &tls.ca_files {
        if !f.exists() {
            return Err(fail(
                Exit::NoInput,
                anyhow!("--ca-file {}: no such file", f.display()),
            ));
        }
    }
    Ok(ConnPlan {
        connect: ConnectOptions {
            target,
            session,
            tls,
            connect_timeout: a.connect_timeout,
        },
        verbose: a.verbose,
    })
}

/// This machine's name for EHLO; `localhost` when unknown.
pub(crate) fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "localhost".to_string())
}

// ----- send ---------------------------------------------------------------------------------

use std::io::Read;
use std::path::Path;

use std::path::PathBuf;

use crate::cli::{FormatArg, SendArgs, ShardArg};
use crate::exit::for_input as input_exit;
use pipemail::campaign::sign::RowTemplate;
use pipemail::campaign::{Campaign, FromSource, ScheduleConfig, Shard};
use pipemail::input::{ListReader, scan_file};
use pipemail::report::{Format, ResumeState};
use pipemail::template::Template;

/// A validated `send` run.
pub(crate) struct SendPlan {
    pub(crate) campaign: Campaign,
    /// Rows this run will report (the shard's share), when the list was scanned first.
    pub(crate) list_total: Option<u64>,
    pub(crate) quiet: bool,
    /// `-v`: print every command and reply.
    pub(crate) verbose: bool,
    /// Label for the progress bar (demo runs).
    pub(crate) label: Option<String>,
}

/// Reads and checks everything `send` needs before any connection is made.
pub(crate) fn send_plan(a: SendArgs) -> Result<SendPlan, Failure> {
    let mut a = a;
    let shard = resolve_shard(a.shard, |k| std::env::var(k).ok())?;
    apply_shard_paths(&mut a, shard)?;
    if a.list == "-" && a.template.as_deref() == Some("-") {
        return Err(fail(
            Exit::Usage,
            anyhow!("only one of --list and --template can be stdin (-)"),
        ));
    }
    let conn = conn_plan(&a.conn)?;
    // Template text first (it is small); it is parsed once the list's columns are known.
    let template_src = match a.template.as_deref() {
        None => None,
        Some("-") => {
            let mut v = Vec::new();
            std::io::stdin().read_to_end(&mut v).map_err(|e| {
                fail(
                    Exit::NoInput,
                    anyhow!("cannot read the template from stdin: {e}"),
                )
            })?;
            Some(v)
        }
        Some(t) => Some(
            std::fs::read(t)
                .with_context(|| format!("cannot read the template {t}"))
                .map_err(|e| fail(Exit::NoInput, e))?,
        ),
    };
    let template_name = match a.template.as_deref() {
        Some("-") => "<stdin>".to_string(),
        Some(t) => t.to_string(),
        None => String::new(),
    };
    // The list: a regular file is scanned whole first, so bad data stops the run before
    // any connection; stdin is checked as it streams.
    let mut known_duplicates = None;
    let (list, list_total): (ListReader<Box<dyn Read + Send>>, Option<u64>) = if a.list == "-" {
        let r: Box<dyn Read + Send> = Box::new(std::io::stdin());
        (
            ListReader::new(r, "<stdin>").map_err(|e| fail(input_exit(&e), e))?,
            None,
        )
    } else {
        let path = Path::new(&a.list);
        // A list file: repeats found by an external sort of address hashes, so memory stays
        // flat at any length (stdin keeps the in-memory filter); the row check rides along.
        let scan = if a.allow_duplicates {
            scan_file(path).map_err(|e| fail(input_exit(&e), e))?
        } else {
            // Every row of the whole list: a shard skips an address first seen in another
            // shard, as a one-machine run does.
            let (scan, known) =
                pipemail::input::scan_and_find_duplicates(path, |_| true).map_err(|e| match e {
                    pipemail::input::DedupError::Input(e) => fail(input_exit(&e), e),
                    e @ pipemail::input::DedupError::Temp(_) => fail(Exit::IoErr, e),
                })?;
            known_duplicates = Some(known);
            scan
        };
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open the list {}", a.list))
            .map_err(|e| fail(Exit::NoInput, e))?;
        let r: Box<dyn Read + Send> = Box::new(std::io::BufReader::with_capacity(64 * 1024, file));
        (
            ListReader::new(r, &a.list).map_err(|e| fail(input_exit(&e), e))?,
            Some(scan.rows),
        )
    };
    let Some(template_src) = template_src else {
        let m = list_message_plan(&a, list.headers())?;
        return finish_send_plan(a, conn, (list, list_total, known_duplicates), shard, m);
    };
    let mut template = Template::parse_for_mime(&template_src, &template_name, list.headers())
        .map_err(|e| fail(Exit::DataErr, e))?;
    let mime = mime_options(
        &a.mime,
        template_name == "<stdin>",
        &template_name,
        &mut template,
        list.headers(),
    )?;
    let from = match (&a.from, template.from_address()) {
        (Some(f), _) if RowTemplate::is_templated(f) => FromSource::Fixed(f.clone()),
        (Some(f), _) => {
            engine::check_address(f)
                .map_err(|e| fail(Exit::Usage, anyhow!("--from {f:?}: {e}")))?;
            FromSource::Fixed(f.clone())
        }
        (None, Some(f)) => FromSource::Fixed(f),
        (None, None)
            if template
                .header_names()
                .iter()
                .any(|h| h.eq_ignore_ascii_case("from")) =>
        {
            FromSource::PerRow
        }
        (None, None) => {
            return Err(fail(
                Exit::DataErr,
                anyhow!("{template_name}: the template has no From header; add one or give --from"),
            ));
        }
    };
    let m = MessagePlan {
        template,
        from,
        row_templates: None,
        mime: Some(mime),
    };
    finish_send_plan(a, conn, (list, list_total, known_duplicates), shard, m)
}

/// The rest of [`send_plan`], once the message is known.
fn finish_send_plan(
    a: SendArgs,
    conn: ConnPlan,
    (list, list_total, known_duplicates): (
        ListReader<Box<dyn Read + Send>>,
        Option<u64>,
        Option<pipemail::input::KnownDuplicates>,
    ),
    shard: Option<Shard>,
    m: MessagePlan,
) -> Result<SendPlan, Failure> {
    // One rendering per transaction: no per-row placeholder, no per-row template, and a
    // list that carries its own message is per row by nature.
    if a.batch_recipients > 1 {
        if m.row_templates.is_some() {
            return Err(fail(
                Exit::Usage,
                anyhow!(
                    "--batch-recipients needs one message for every row; the list's template column chooses one per row"
                ),
            ));
        }
        if let Some(why) = pipemail::campaign::batch_obstacle(&m.template) {
            return Err(fail(Exit::Usage, anyhow!(why)));
        }
    }
    let report = a.report.as_ref().map(|path| {
        let format = match a.format {
            Some(FormatArg::Csv) => Format::Csv,
            Some(FormatArg::Json) => Format::Json,
            Some(FormatArg::Jsonl) => Format::Jsonl,
            None => Format::from_path(path),
        };
        (path.clone(), format)
    });
    let resume = load_resume(a.resume.as_deref(), a.dry_run)?;
    let deliver = deliverability(&a.deliver, a.from.as_deref(), a.dry_run, list.headers())?;
    let mut campaign = Campaign::new(conn.connect, list, m.template, m.from);
    campaign.row_templates = m.row_templates;
    campaign.report = report;
    campaign.resume = resume;
    campaign.skip_unknown = a.skip_unknown;
    campaign.connections = a.connections;
    campaign.schedule = ScheduleConfig {
        retries: a.retries,
        retry_delay: a.retry_delay,
        max_per_connection: a.max_per_connection,
        rate: a.rate,
        batch_recipients: a.batch_recipients as usize,
        ..ScheduleConfig::default()
    };
    campaign.allow_duplicates = a.allow_duplicates;
    campaign.shard = shard;
    campaign.known_duplicates = known_duplicates;
    campaign.handle_ctrl_c = true;
    campaign.mime = m.mime;
    campaign.dry_run_output = a.mime.output.clone();
    campaign.deliverability = deliver.deliverability;
    campaign.suppression = deliver.suppression;
    campaign.suppress_add = deliver.suppress_add;
    Ok(SendPlan {
        campaign,
        list_total: list_total.map(|t| shard.map_or(t, |s| s.rows_of(t))),
        quiet: a.quiet,
        verbose: conn.verbose,
        label: None,
    })
}

/// `--resume`: the earlier run's state; read-only for `--dry-run`, which writes nothing.
fn load_resume(path: Option<&Path>, dry_run: bool) -> Result<Option<ResumeState>, Failure> {
    let Some(p) = path else {
        return Ok(None);
    };
    if !p.exists() {
        return Err(fail(
            Exit::NoInput,
            anyhow!("--resume {}: no such file", p.display()),
        ));
    }
    let name = p.display().to_string();
    let state = if dry_run {
        ResumeState::peek(&name)
    } else {
        ResumeState::load(&name)
    };
    state.map(Some).map_err(|e| {
        // A carry file that cannot be created safely is an I/O error (74).
        let exit = match e {
            pipemail::report::ReportError::Create(_) => Exit::IoErr,
            _ => Exit::DataErr,
        };
        fail(exit, anyhow!("--resume {}: {e}", p.display()))
    })
}

// ----- shards beyond one machine ------------------------------------------------------------

/// Kubernetes Indexed Job: the pod's 0-based index.
pub(crate) const K8S_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// Slurm job array: this task's id, and the array's first id.
pub(crate) const SLURM_ID_ENV: &str = "SLURM_ARRAY_TASK_ID";
/// See [`SLURM_ID_ENV`].
pub(crate) const SLURM_MIN_ENV: &str = "SLURM_ARRAY_TASK_MIN";

/// `--shard K/N` or `auto/N` → the shard; `env` reads the environment.
pub(crate) fn resolve_shard(
    arg: Option<ShardArg>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Shard>, Failure> {
    let usage = |m: String| fail(Exit::Usage, anyhow!("--shard auto/{m}"));
    let (k, of) = match arg {
        None => return Ok(None),
        Some(ShardArg::Fixed(k, of)) => (k, of),
        Some(ShardArg::Auto(of)) => {
            let num = |name: &str, v: String| -> Result<u64, Failure> {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| usage(format!("{of}: ${name} is {v:?}, not a number")))
            };
            let k = if let Some(v) = env(K8S_INDEX_ENV) {
                num(K8S_INDEX_ENV, v)?.saturating_add(1)
            } else if let Some(id) = env(SLURM_ID_ENV) {
                let id = num(SLURM_ID_ENV, id)?;
                let min = env(SLURM_MIN_ENV).ok_or_else(|| {
                    usage(format!(
                        "{of}: ${SLURM_ID_ENV} is set but ${SLURM_MIN_ENV} is not"
                    ))
                })?;
                let min = num(SLURM_MIN_ENV, min)?;
                id.checked_sub(min).map_or(0, |d| d.saturating_add(1))
            } else {
                return Err(usage(format!(
                    "{of}: neither ${K8S_INDEX_ENV} (Kubernetes Indexed Job) nor ${SLURM_ID_ENV} (Slurm job array) is set; give --shard K/{of}"
                )));
            };
            if k == 0 || k > of {
                return Err(usage(format!(
                    "{of}: this task is shard {k} by its environment, outside 1..={of} (is the job's completions or array size {of}?)"
                )));
            }
            (k, of)
        }
    };
    Ok(Some(Shard { k, of }))
}

/// `{shard}` in `--report` and `--resume` becomes the shard's K.
fn apply_shard_paths(a: &mut SendArgs, shard: Option<Shard>) -> Result<(), Failure> {
    const SHARD: &str = "{shard}";
    let uses = a.report.as_deref().is_some_and(|r| r.contains(SHARD))
        || a.resume
            .as_deref()
            .is_some_and(|r| r.to_string_lossy().contains(SHARD));
    if !uses {
        return Ok(());
    }
    let Some(s) = shard else {
        return Err(fail(
            Exit::Usage,
            anyhow!("{SHARD} in --report or --resume needs --shard"),
        ));
    };
    let k = s.k.to_string();
    if let Some(r) = &mut a.report {
        *r = r.replace(SHARD, &k);
    }
    if let Some(r) = &mut a.resume {
        let text = r
            .to_str()
            .ok_or_else(|| fail(Exit::Usage, anyhow!("--resume {}: not UTF-8", r.display())))?;
        *r = PathBuf::from(text.replace(SHARD, &k));
    }
    Ok(())
}

#[cfg(test)]
mod shard_tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn k(arg: ShardArg, vars: &[(&str, &str)]) -> Result<u64, i32> {
        resolve_shard(Some(arg), env(vars))
            .map(|s| s.map_or(0, |s| s.k))
            .map_err(|f| i32::from(f.exit.code()))
    }

    #[test]
    fn auto_shards_come_from_kubernetes_then_slurm() {
        let auto = ShardArg::Auto(4);
        assert_eq!(k(auto, &[(K8S_INDEX_ENV, "0")]), Ok(1));
        assert_eq!(k(auto, &[(K8S_INDEX_ENV, "3"), (SLURM_ID_ENV, "1")]), Ok(4));
        assert_eq!(
            k(auto, &[(SLURM_ID_ENV, "12"), (SLURM_MIN_ENV, "10")]),
            Ok(3)
        );
        assert_eq!(k(auto, &[(SLURM_ID_ENV, "1"), (SLURM_MIN_ENV, "1")]), Ok(1));
        for bad in [
            &[][..],
            &[(K8S_INDEX_ENV, "4")],
            &[(K8S_INDEX_ENV, "x")],
            &[(SLURM_ID_ENV, "3")],
            &[(SLURM_ID_ENV, "2"), (SLURM_MIN_ENV, "3")],
        ] {
            assert_eq!(k(auto, bad), Err(64), "{bad:?}");
        }
        assert_eq!(k(ShardArg::Fixed(2, 3), &[(K8S_INDEX_ENV, "0")]), Ok(2));
        assert!(resolve_shard(None, env(&[])).is_ok_and(|s| s.is_none()));
    }
}
