//! Turns raw flags into validated settings: files opened, secrets read, limits checked.
//! Later code never sees clap.

use anyhow::{Context as _, anyhow};

use crate::cli::{ConnArgs, TlsMode};
use crate::exit::{Exit, Failure, fail};
use pipemail::driver::{ConnectOptions, Target, TlsHints, TlsSettings};
use pipemail::engine::{self, Credentials, PipeliningPolicy, Secret, Timeouts, TlsPolicy};

/// Environment variable holding the AUTH password.
pub(crate) const PASSWORD_ENV: &str = "PIPEMAIL_PASSWORD";

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
    let auth = match &a.auth_user {
        None => None,
        Some(user) => Some(Credentials {
            username: user.clone(),
            password: read_password(a)?,
        }),
    };
    if a.auth_user.is_none() && (a.password_file.is_some()) {
        return Err(fail(
            Exit::Usage,
            anyhow!("--password-file needs --auth-user"),
        ));
    }
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

fn read_password(a: &ConnArgs) -> Result<Secret, Failure> {
    if let Some(path) = &a.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --password-file {}", path.display()))
            .map_err(|e| fail(Exit::NoInput, e))?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(fail(
                Exit::DataErr,
                anyhow!("--password-file {} is empty", path.display()),
            ));
        }
        return Ok(Secret::new(line));
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => Ok(Secret::new(p)),
        _ => Err(fail(
            Exit::Usage,
            anyhow!(
                "--auth-user needs a password: set ${PASSWORD_ENV} or use --password-file (never on the command line)"
            ),
        )),
    }
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

use crate::cli::{DeliverArgs, FormatArg, SendArgs};
use crate::exit::for_input as input_exit;
use pipemail::campaign::sign::{Deliverability, DsnSettings, RowTemplate};
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
    if a.list == "-" && a.template == "-" {
        return Err(fail(
            Exit::Usage,
            anyhow!("only one of --list and --template can be stdin (-)"),
        ));
    }
    let conn = conn_plan(&a.conn)?;
    // Template text first (it is small); it is parsed once the list's columns are known.
    let template_src = if a.template == "-" {
        let mut v = Vec::new();
        std::io::stdin().read_to_end(&mut v).map_err(|e| {
            fail(
                Exit::NoInput,
                anyhow!("cannot read the template from stdin: {e}"),
            )
        })?;
        v
    } else {
        std::fs::read(&a.template)
            .with_context(|| format!("cannot read the template {}", a.template))
            .map_err(|e| fail(Exit::NoInput, e))?
    };
    let template_name = if a.template == "-" {
        "<stdin>".to_string()
    } else {
        a.template.clone()
    };
    // The list: a regular file is scanned whole first, so bad data stops the run before
    // any connection; stdin is checked as it streams.
    let (list, list_total): (ListReader<Box<dyn Read + Send>>, Option<u64>) = if a.list == "-" {
        let r: Box<dyn Read + Send> = Box::new(std::io::stdin());
        (
            ListReader::new(r, "<stdin>").map_err(|e| fail(input_exit(&e), e))?,
            None,
        )
    } else {
        let path = Path::new(&a.list);
        let scan = scan_file(path).map_err(|e| fail(input_exit(&e), e))?;
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open the list {}", a.list))
            .map_err(|e| fail(Exit::NoInput, e))?;
        let r: Box<dyn Read + Send> = Box::new(std::io::BufReader::with_capacity(64 * 1024, file));
        (
            ListReader::new(r, &a.list).map_err(|e| fail(input_exit(&e), e))?,
            Some(scan.rows),
        )
    };
    let template = Template::parse(&template_src, &template_name, list.headers())
        .map_err(|e| fail(Exit::DataErr, e))?;
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
    let report = a.report.as_ref().map(|path| {
        let format = match a.format {
            Some(FormatArg::Csv) => Format::Csv,
            Some(FormatArg::Json) => Format::Json,
            Some(FormatArg::Jsonl) => Format::Jsonl,
            None => Format::from_path(path),
        };
        (path.clone(), format)
    });
    let resume = match &a.resume {
        Some(p) => {
            if !p.exists() {
                return Err(fail(
                    Exit::NoInput,
                    anyhow!("--resume {}: no such file", p.display()),
                ));
            }
            Some(
                ResumeState::load(&p.display().to_string())
                    .map_err(|e| fail(Exit::DataErr, anyhow!("--resume {}: {e}", p.display())))?,
            )
        }
        None => None,
    };
    let shard = a.shard.map(|(k, of)| Shard { k, of });
    let deliver = deliverability(&a.deliver, a.from.as_deref(), a.dry_run, list.headers())?;
    let mut campaign = Campaign::new(conn.connect, list, template, from);
    campaign.report = report;
    campaign.resume = resume;
    campaign.skip_unknown = a.skip_unknown;
    campaign.connections = a.connections;
    campaign.schedule = ScheduleConfig {
        retries: a.retries,
        retry_delay: a.retry_delay,
        max_per_connection: a.max_per_connection,
        rate: a.rate,
        ..ScheduleConfig::default()
    };
    campaign.allow_duplicates = a.allow_duplicates;
    campaign.shard = shard;
    campaign.handle_ctrl_c = true;
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

/// The deliverability part of a `send` plan.
struct DeliverPlan {
    deliverability: Deliverability,
    suppression: Option<std::sync::Arc<pipemail::deliver::suppress::Suppression>>,
    suppress_add: Option<pipemail::deliver::suppress::SuppressAppender>,
}

/// DKIM keys, unsubscribe, suppression and DSN flags: keys and lists are read once, here.
fn deliverability(
    a: &DeliverArgs,
    from: Option<&str>,
    dry_run: bool,
    columns: &[String],
) -> Result<DeliverPlan, Failure> {
    use pipemail::deliver::dkim::{DkimKey, DkimSigner};
    use pipemail::deliver::suppress::{SuppressAppender, Suppression};
    let lib = |code: u8, e: anyhow::Error| fail(Exit::from_sysexits(i32::from(code)), e);
    let mut d = Deliverability::default();
    if a.dkim_selector.len() != a.dkim_key.len()
        || !(a.dkim_domain.is_empty() || a.dkim_domain.len() == a.dkim_key.len())
    {
        return Err(fail(
            Exit::Usage,
            anyhow!(
                "give one --dkim-selector per --dkim-key (and either no --dkim-domain or one per key)"
            ),
        ));
    }
    for (i, (path, selector)) in a.dkim_key.iter().zip(&a.dkim_selector).enumerate() {
        let loaded = DkimKey::from_file(path).map_err(|e| lib(e.exit_code(), e.into()))?;
        if let Some(w) = &loaded.warning {
            eprintln!("pipemail: warning: {w}");
        }
        let domain = a.dkim_domain.get(i).map(String::as_str);
        let signer = DkimSigner::new(loaded.key, selector, domain)
            .map_err(|e| lib(e.exit_code(), e.into()))?;
        d.signers.push(signer);
    }
    if let Some(u) = &a.unsubscribe {
        let t =
            RowTemplate::parse("--unsubscribe", u, columns).map_err(|e| fail(Exit::Usage, e))?;
        if !RowTemplate::is_templated(u) {
            pipemail::deliver::unsubscribe::unsubscribe_headers(u, a.unsubscribe_mailto.as_deref())
                .map_err(|e| fail(Exit::Usage, e))?;
        }
        d.unsubscribe_url = Some(t);
    }
    if let Some(m) = &a.unsubscribe_mailto {
        pipemail::deliver::unsubscribe::unsubscribe_headers("https://example.com/", Some(m))
            .map_err(|e| fail(Exit::Usage, e))?;
        d.unsubscribe_mailto = Some(m.clone());
    }
    if let Some(f) = from.filter(|f| RowTemplate::is_templated(f)) {
        d.envelope_from =
            Some(RowTemplate::parse("--from", f, columns).map_err(|e| fail(Exit::Usage, e))?);
    }
    if a.dsn_notify.is_some() || a.dsn_ret.is_some() {
        let notify = a
            .dsn_notify
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: pipemail::deliver::dsn::DsnError| fail(Exit::Usage, e))?;
        let ret = a
            .dsn_ret
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: pipemail::deliver::dsn::DsnError| fail(Exit::Usage, e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        d.dsn = Some(DsnSettings {
            notify,
            ret,
            campaign: pipemail::deliver::dsn::campaign_id(now, std::process::id()),
        });
    }
    let suppression = if a.suppress.is_empty() {
        None
    } else {
        let mut s = Suppression::new();
        for p in &a.suppress {
            s.load(p).map_err(|e| lib(e.exit_code(), e.into()))?;
        }
        Some(std::sync::Arc::new(s))
    };
    let suppress_add = match &a.suppress_add {
        Some(p) if !dry_run => {
            Some(SuppressAppender::open(p).map_err(|e| lib(e.exit_code(), e.into()))?)
        }
        _ => None,
    };
    Ok(DeliverPlan {
        deliverability: d,
        suppression,
        suppress_add,
    })
}
