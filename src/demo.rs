//! `pipemail sink`, `pipemail latency-proxy` and `pipemail demo`.

use std::io::Cursor;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow};

use crate::cli::{DemoArgs, ProxyArgs, SinkArgs};
use crate::config::SendPlan;
use crate::exit::{Exit, Failure, fail};
use crate::progress::thousands;
use crate::send;
use pipemail::campaign::{Campaign, FromSource, ScheduleConfig, Summary};
use pipemail::driver::{ConnectOptions, Target, TlsSettings};
use pipemail::engine::{self, PipeliningPolicy, TlsPolicy};
use pipemail::input::ListReader;
use pipemail::latency::LatencyProxy;
use pipemail::report::Format;
use pipemail::sink::{AfterDot, FaultPlan, RejectRule, SinkConfig, SinkHandle};
use pipemail::template::Template;

/// The sample list and template, built into the binary so `demo` runs from any directory.
pub(crate) const SAMPLE_LIST: &str = include_str!("../samples/recipients.csv");
pub(crate) const SAMPLE_TEMPLATE: &str = include_str!("../samples/template.eml");

fn resolve(addr: &str) -> Result<SocketAddr, Failure> {
    addr.to_socket_addrs()
        .map_err(|e| fail(Exit::Usage, anyhow!("bad address {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| fail(Exit::Usage, anyhow!("address {addr:?} resolves to nothing")))
}

/// Runs `ready` (which announces "Ctrl-C to stop") once the Ctrl-C handler is installed,
/// then waits for Ctrl-C. Announcing first would leave a window in which SIGINT still
/// killed the process outright, without the final counts.
fn wait_for_ctrl_c(ready: impl FnOnce()) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(Exit::Software, e))?;
    rt.block_on(async {
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        // The first poll installs the handler.
        tokio::select! {
            biased;
            r = &mut ctrl_c => return r,
            () = std::future::ready(()) => {}
        }
        ready();
        ctrl_c.await
    })
    .map_err(|e| fail(Exit::Software, e))
}

/// `pipemail sink --auth-token-file`: the token on the file's first line.
fn sink_token(a: &SinkArgs) -> Result<Option<String>, Failure> {
    let Some(path) = &a.auth_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --auth-token-file {}", path.display()))
        .map_err(|e| fail(Exit::NoInput, e))?;
    match text.lines().next().map(str::trim) {
        Some(t) if !t.is_empty() => Ok(Some(t.to_string())),
        _ => Err(fail(
            Exit::DataErr,
            anyhow!("--auth-token-file {} is empty", path.display()),
        )),
    }
}

pub(crate) fn sink(a: &SinkArgs) -> Result<Exit, Failure> {
    let listen = resolve(&a.listen)?;
    let mut reject = Vec::new();
    for r in &a.reject {
        reject.push(
            r.parse::<RejectRule>()
                .map_err(|e| fail(Exit::Usage, anyhow!("--reject {r:?}: {e}")))?,
        );
    }
    if let Some(dir) = &a.maildir {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create the Maildir {}", dir.display()))
                .map_err(|e| fail(Exit::IoErr, e))?;
        }
    }
    let cfg = SinkConfig {
        hostname: a.hostname.clone(),
        pipelining: !a.no_pipelining,
        chunking: !a.no_chunking,
        size: Some(a.max_size),
        smtputf8: a.smtputf8,
        eight_bit_mime: !a.no_8bitmime,
        dsn: a.dsn,
        latency: a.latency,
        maildir: a.maildir.clone(),
        reject,
        faults: (!a.fault.is_empty()).then(|| FaultPlan::from_specs(&a.fault)),
        after_dot: if a.refuse_after_dot {
            AfterDot::Refuse
        } else {
            AfterDot::Accept
        },
        oauth_token: sink_token(a)?,
        allow_plain_auth: a.auth_token_file.is_some(),
        ..SinkConfig::default()
    };
    let handle = SinkHandle::start(listen, cfg)
        .with_context(|| format!("cannot listen on {listen}"))
        .map_err(|e| fail(Exit::Unavailable, e))?;
    wait_for_ctrl_c(|| {
        eprintln!(
            "pipemail sink: listening on {} (Ctrl-C to stop)",
            handle.local_addr()
        );
    })?;
    let st = handle.stop();
    eprintln!(
        "pipemail sink: {} sessions, {} messages, {} recipients ({} rejected), {} bytes",
        st.sessions, st.messages, st.recipients, st.rejected_recipients, st.bytes
    );
    Ok(Exit::Ok)
}

pub(crate) fn proxy(a: &ProxyArgs) -> Result<Exit, Failure> {
    let listen = resolve(&a.listen)?;
    let upstream = resolve(&a.upstream)?;
    let p = LatencyProxy::start(listen, upstream, a.rtt)
        .with_context(|| format!("cannot listen on {listen}"))
        .map_err(|e| fail(Exit::Unavailable, e))?;
    wait_for_ctrl_c(|| {
        eprintln!(
            "pipemail latency-proxy: {} -> {upstream}, RTT {:?} (Ctrl-C to stop)",
            p.local_addr(),
            a.rtt
        );
    })?;
    p.stop();
    Ok(Exit::Ok)
}

struct Mode {
    name: &'static str,
    file: &'static str,
    pipelining: PipeliningPolicy,
    chunking: bool,
}

const MODES: [Mode; 3] = [
    Mode {
        name: "lock-step",
        file: "demo-lockstep.csv",
        pipelining: PipeliningPolicy::Off,
        chunking: false,
    },
    Mode {
        name: "pipelined",
        file: "demo-pipelined.csv",
        pipelining: PipeliningPolicy::Auto,
        chunking: false,
    },
    Mode {
        name: "BDAT",
        file: "demo-bdat.csv",
        pipelining: PipeliningPolicy::Auto,
        chunking: true,
    },
];

fn demo_list(rows: u64) -> String {
    if rows == 0 {
        return SAMPLE_LIST.to_string();
    }
    SAMPLE_LIST
        .lines()
        .take(rows as usize + 1)
        .map(|l| format!("{l}\n"))
        .collect()
}

pub(crate) fn run(a: &DemoArgs) -> Result<Exit, Failure> {
    let out_dir: PathBuf = match &a.out {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("pipemail-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))
        .map_err(|e| fail(Exit::IoErr, e))?;
    let cfg = SinkConfig {
        latency: a.rtt,
        reject: vec![
            "550:*@reject.example.net"
                .parse()
                .map_err(|e| fail(Exit::Software, anyhow!("{e}")))?,
        ],
        ..SinkConfig::default()
    };
    let sink = SinkHandle::start("127.0.0.1:0".parse().expect("literal address"), cfg)
        .context("cannot start the built-in sink")
        .map_err(|e| fail(Exit::Software, e))?;
    let addr = sink.local_addr();
    let list = demo_list(a.rows);
    let rows = list.lines().count().saturating_sub(1);
    eprintln!(
        "pipemail demo: built-in sink on {addr} with a simulated round-trip time of {:?}; {rows} rows from samples/recipients.csv",
        a.rtt
    );
    let mut results: Vec<(&Mode, Summary)> = Vec::new();
    for mode in &MODES {
        let reader: Box<dyn std::io::Read + Send> =
            Box::new(Cursor::new(list.clone().into_bytes()));
        let list_reader = ListReader::new(reader, "samples/recipients.csv")
            .map_err(|e| fail(Exit::Software, e))?;
        let template = Template::parse(
            SAMPLE_TEMPLATE.as_bytes(),
            "samples/template.eml",
            list_reader.headers(),
        )
        .map_err(|e| fail(Exit::Software, e))?;
        let session = engine::Config {
            helo_name: "pipemail-demo".into(),
            pipelining: mode.pipelining,
            chunking: mode.chunking,
            tls: TlsPolicy::None,
            ..engine::Config::default()
        };
        let connect = ConnectOptions {
            target: Target {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            session,
            tls: TlsSettings::default(),
            connect_timeout: Duration::from_secs(10),
        };
        let report_path = out_dir.join(mode.file);
        let mut campaign = Campaign::new(
            connect,
            list_reader,
            template,
            FromSource::Fixed("news@example.org".into()),
        );
        campaign.report = Some((report_path.display().to_string(), Format::Csv));
        campaign.schedule = ScheduleConfig {
            retries: 1,
            retry_delay: Duration::from_millis(100),
            ..ScheduleConfig::default()
        };
        campaign.handle_ctrl_c = true;
        let plan = SendPlan {
            campaign,
            list_total: Some(rows as u64),
            quiet: a.quiet,
            verbose: false,
            label: Some(mode.name.to_string()),
        };
        let s = send::run(plan)?;
        eprintln!(
            "pipemail demo: {:<10} {}",
            mode.name,
            send::summary_line(&s)
        );
        results.push((mode, s));
    }
    let st = sink.stop();
    let base = results[0].1.elapsed.as_secs_f64();
    println!();
    println!(
        "pipemail demo — {rows} rows, simulated RTT {:?}, one connection",
        a.rtt
    );
    println!(
        "{:<11} {:>8} {:>8} {:>12} {:>10} {:>11} {:>9}",
        "mode", "sent", "failed", "round trips", "RT/msg", "wall time", "speed-up"
    );
    for (mode, s) in &results {
        let secs = s.elapsed.as_secs_f64();
        let per = if s.sent > 0 {
            s.rt_used as f64 / s.sent as f64
        } else {
            0.0
        };
        println!(
            "{:<11} {:>8} {:>8} {:>12} {:>10.2} {:>10.2}s {:>8.1}x",
            mode.name,
            s.sent,
            s.failed + s.deferred + s.unknown,
            thousands(s.rt_used),
            per,
            secs,
            if secs > 0.0 { base / secs } else { 0.0 }
        );
    }
    println!();
    println!(
        "The sink received {} messages in {} sessions. Reports: {}",
        st.messages,
        st.sessions,
        out_dir.display()
    );
    println!(
        "Failed rows are the sample's deliberate bad address (reported at stage input, never sent)."
    );
    Ok(Exit::Ok)
}
