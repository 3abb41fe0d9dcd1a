//! `pipemail check-server`: banner, capabilities (before and after STARTTLS), certificate,
//! round-trip time, a real pipelining probe, and an estimate of what a run will cost.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde::Serialize;

use crate::cli::CheckArgs;
use crate::config::conn_plan;
use crate::exit::{Exit, Failure, fail};
use crate::progress::thousands;
use pipemail::driver::Connection;
use pipemail::engine::{
    Capabilities, Event, Extensions, PipeliningPolicy, RawCommand, Reply, Verb,
};

#[derive(Debug, Serialize)]
struct Report {
    server: String,
    banner: String,
    banner_ms: f64,
    capabilities: Vec<String>,
    capabilities_after_tls: Option<Vec<String>>,
    tls: Option<TlsReport>,
    rtt_ms: f64,
    pipelining: PipeliningReport,
    chunking: bool,
    size_limit: Option<u64>,
    estimate: Estimate,
}

#[derive(Debug, Serialize)]
struct TlsReport {
    mode: String,
    /// Negotiated protocol, e.g. `TLSv1.3` (from a second, identical handshake: native-tls
    /// does not expose it).
    version: Option<String>,
    cipher: Option<String>,
    subject: Option<String>,
    issuer: Option<String>,
    not_after: Option<String>,
}

#[derive(Debug, Serialize)]
struct PipeliningReport {
    advertised: bool,
    probe_passed: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Estimate {
    messages: u64,
    lockstep_round_trips: u64,
    pipelined_round_trips: u64,
    bdat_round_trips: Option<u64>,
    lockstep_seconds: f64,
    pipelined_seconds: f64,
    bdat_seconds: Option<f64>,
}

pub(crate) fn run(a: &CheckArgs) -> Result<Exit, Failure> {
    let mut plan = conn_plan(&a.conn)?;
    plan.connect.session.pipelining = PipeliningPolicy::Auto;
    plan.connect.session.transcript = true;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(Exit::Software, e))?;
    let verbose = plan.verbose;
    let window = plan.connect.session.window as u64;
    let report =
        rt.block_on(
            async move { probe(plan.connect, verbose, a.probes, a.messages, window).await },
        )?;
    let ok = report.pipelining.advertised && report.pipelining.probe_passed;
    if a.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| fail(Exit::Software, e))?;
        println!("{text}");
    } else {
        print_human(&report);
    }
    Ok(if ok { Exit::Ok } else { Exit::Partial })
}

struct Prober {
    conn: Connection,
    verbose: bool,
    caps: Vec<Capabilities>,
    banner: Option<(Reply, Duration)>,
    raw: Vec<(Verb, Reply)>,
    closed: Option<Option<String>>,
    started: Instant,
}

impl Prober {
    fn collect(&mut self) {
        while let Some(ev) = self.conn.session().poll_event() {
            match ev {
                Event::Greeting(r) => self.banner = Some((r, self.started.elapsed())),
                Event::Capabilities(c) => self.caps.push(c),
                Event::RawReply(v, r) => self.raw.push((v, r)),
                Event::Exchange(x) if self.verbose => crate::send::print_exchange(&x),
                Event::Closed(e) => self.closed = Some(e.map(|e| e.to_string())),
                _ => {}
            }
        }
    }

    /// Steps until the engine waits for us or the session closes.
    async fn settle(&mut self) {
        self.conn.settle().await;
        self.collect();
    }
}

async fn probe(
    connect: pipemail::driver::ConnectOptions,
    verbose: bool,
    probes: u32,
    n: u64,
    window: u64,
) -> Result<Report, Failure> {
    let started = Instant::now();
    let server = connect.target.to_string();
    let tls_mode = connect.session.tls;
    let conn = Connection::open(&connect)
        .await
        .map_err(|e| fail(Exit::Unavailable, e))?;
    let mut p = Prober {
        conn,
        verbose,
        caps: Vec::new(),
        banner: None,
        raw: Vec::new(),
        closed: None,
        started,
    };
    p.settle().await;
    if let Some(Some(e)) = &p.closed {
        return Err(fail(Exit::Unavailable, anyhow!("{server}: {e}")));
    }
    if !p.conn.session_ref().is_ready() {
        return Err(fail(
            Exit::Unavailable,
            anyhow!("{server}: the session did not become ready"),
        ));
    }
    let (banner, banner_time) = p
        .banner
        .clone()
        .ok_or_else(|| fail(Exit::Unavailable, anyhow!("{server}: no greeting")))?;
    let caps = p.conn.session_ref().capabilities().clone();
    let tls = p.conn.tls_info().map(|info| {
        let (subject, issuer, not_after) = info
            .peer_certificate_der
            .as_deref()
            .map(describe_cert)
            .unwrap_or_default();
        let (version, cipher) = match tls_version(&connect) {
            Ok((v, c)) => (Some(v), Some(c)),
            Err(e) => {
                if verbose {
                    eprintln!("pipemail: TLS version probe: {e}");
                }
                (None, None)
            }
        };
        TlsReport {
            mode: if tls_mode == pipemail::engine::TlsPolicy::Implicit {
                "implicit"
            } else {
                "starttls"
            }
            .to_string(),
            version,
            cipher,
            subject,
            issuer,
            not_after,
        }
    });
    let capabilities_after_tls = (p.caps.len() > 1).then(|| caps.names());
    let first_caps = p.caps.first().cloned().unwrap_or_default();

    // Round-trip time: lock-step NOOPs.
    let mut samples = Vec::new();
    for _ in 0..probes {
        p.raw.clear();
        p.conn.session().command(RawCommand::Noop);
        let t = Instant::now();
        p.settle().await;
        if p.raw.len() == 1 {
            samples.push(t.elapsed());
        } else {
            break;
        }
    }
    samples.sort();
    let rtt = samples.get(samples.len() / 2).copied().unwrap_or_default();

    // Pipelining probe: MAIL + RSET + NOOP in one write; every reply must come back in order.
    let advertised = caps.has(Extensions::PIPELINING);
    let (probe_passed, detail) = if !advertised {
        (
            false,
            "not advertised: pipemail will send lock-step (one round trip per command)".to_string(),
        )
    } else if p.closed.is_some() {
        (false, "session closed before the probe".to_string())
    } else {
        p.raw.clear();
        for c in [
            RawCommand::Mail(String::new()),
            RawCommand::Rset,
            RawCommand::Noop,
        ] {
            p.conn.session().command(c);
        }
        let budget = (rtt * 20).max(Duration::from_secs(5));
        let t = Instant::now();
        let settled = tokio::time::timeout(budget, p.settle()).await.is_ok();
        let took = t.elapsed();
        let verbs: Vec<Verb> = p.raw.iter().map(|(v, _)| *v).collect();
        let all_ok = p.raw.iter().all(|(_, r)| r.is_positive());
        if !settled {
            (
                false,
                format!(
                    "advertised, but only {} of 3 pipelined replies arrived within {budget:?}",
                    p.raw.len()
                ),
            )
        } else if verbs == [Verb::Mail, Verb::Rset, Verb::Noop] && all_ok {
            (
                true,
                format!(
                    "MAIL+RSET+NOOP sent in one write; 3 replies in order in {:.1} ms",
                    took.as_secs_f64() * 1e3
                ),
            )
        } else if let Some(Some(e)) = &p.closed {
            (
                false,
                format!("advertised, but the pipelined probe failed: {e}"),
            )
        } else {
            let got: Vec<String> = p
                .raw
                .iter()
                .map(|(v, r)| format!("{v}: {}", r.code))
                .collect();
            (
                false,
                format!(
                    "advertised, but the pipelined probe got unexpected replies: {}",
                    got.join(", ")
                ),
            )
        }
    };
    if p.closed.is_none() {
        p.conn.session().quit();
        let _ = tokio::time::timeout(Duration::from_secs(5), p.settle()).await;
    }
    p.conn.shutdown().await;

    let chunking = caps.has(Extensions::CHUNKING) && advertised;
    let secs = rtt.as_secs_f64();
    let (lock, piped) = (4 * n + 3, n + 3);
    let bdat = chunking.then(|| n.div_ceil(window.max(1)) + 3);
    Ok(Report {
        server,
        banner: banner.to_string(),
        banner_ms: banner_time.as_secs_f64() * 1e3,
        capabilities: first_caps.names(),
        capabilities_after_tls,
        tls,
        rtt_ms: secs * 1e3,
        pipelining: PipeliningReport {
            advertised,
            probe_passed,
            detail,
        },
        chunking,
        size_limit: (caps.size > 0).then_some(caps.size),
        estimate: Estimate {
            messages: n,
            lockstep_round_trips: lock,
            pipelined_round_trips: piped,
            bdat_round_trips: bdat,
            lockstep_seconds: lock as f64 * secs,
            pipelined_seconds: piped as f64 * secs,
            bdat_seconds: bdat.map(|b| b as f64 * secs),
        },
    })
}

/// Opens a second connection with OpenSSL directly (same trust settings) to read the
/// negotiated TLS version and cipher, which native-tls does not expose.
fn tls_version(o: &pipemail::driver::ConnectOptions) -> Result<(String, String), String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;

    let addr = (o.target.host.as_str(), o.target.port);
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    if o.tls.insecure {
        b.set_verify(SslVerifyMode::NONE);
    }
    for f in &o.tls.ca_files {
        b.set_ca_file(f).map_err(|e| e.to_string())?;
    }
    let connector = b.build();
    let name = o
        .tls
        .server_name
        .clone()
        .unwrap_or_else(|| o.target.host.clone());
    let mut cfg = connector.configure().map_err(|e| e.to_string())?;
    if o.tls.insecure {
        cfg.set_verify_hostname(false);
    }
    let tcp = if o.session.tls == pipemail::engine::TlsPolicy::Implicit {
        tcp
    } else {
        let mut r = BufReader::new(tcp);
        let read_reply = |r: &mut BufReader<TcpStream>| -> Result<u16, String> {
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                    return Err("connection closed".into());
                }
                if line.len() >= 4 && line.as_bytes()[3] != b'-' || line.trim_end().len() == 3 {
                    return line[..3].parse().map_err(|_| format!("bad reply {line:?}"));
                }
            }
        };
        read_reply(&mut r)?;
        write!(r.get_mut(), "EHLO {}\r\n", o.session.helo_name).map_err(|e| e.to_string())?;
        read_reply(&mut r)?;
        r.get_mut()
            .write_all(b"STARTTLS\r\n")
            .map_err(|e| e.to_string())?;
        let code = read_reply(&mut r)?;
        if code != 220 {
            return Err(format!("STARTTLS answered {code}"));
        }
        r.into_inner()
    };
    let ssl = cfg.connect(&name, tcp).map_err(|e| e.to_string())?;
    let version = ssl.ssl().version_str().to_string();
    let cipher = ssl
        .ssl()
        .current_cipher()
        .map(|c| c.name().to_string())
        .unwrap_or_default();
    Ok((version, cipher))
}

fn describe_cert(der: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let Ok(cert) = openssl::x509::X509::from_der(der) else {
        return (None, None, None);
    };
    let name = |n: &openssl::x509::X509NameRef| {
        n.entries()
            .map(|e| {
                format!(
                    "{}={}",
                    e.object().nid().short_name().unwrap_or("?"),
                    e.data().to_string().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    (
        Some(name(cert.subject_name())),
        Some(name(cert.issuer_name())),
        Some(cert.not_after().to_string()),
    )
}

fn print_human(r: &Report) {
    println!("Server        {}", r.server);
    println!("Banner        {} ({:.1} ms)", r.banner, r.banner_ms);
    println!("Capabilities  {}", r.capabilities.join(", "));
    if let Some(after) = &r.capabilities_after_tls {
        println!("After TLS     {}", after.join(", "));
    }
    match &r.tls {
        Some(t) => println!(
            "TLS           {} {} {} — certificate {} (issuer {}), expires {}",
            t.mode,
            t.version.as_deref().unwrap_or("(version unknown)"),
            t.cipher.as_deref().unwrap_or(""),
            t.subject.as_deref().unwrap_or("?"),
            t.issuer.as_deref().unwrap_or("?"),
            t.not_after.as_deref().unwrap_or("?")
        ),
        None => println!("TLS           not used"),
    }
    println!("RTT           {:.2} ms (median of NOOPs)", r.rtt_ms);
    let verdict = if r.pipelining.advertised && r.pipelining.probe_passed {
        "works"
    } else {
        "NOT usable"
    };
    println!("Pipelining    {verdict}: {}", r.pipelining.detail);
    println!(
        "Chunking      {}",
        if r.chunking {
            "yes (BDAT pipelined)"
        } else {
            "no"
        }
    );
    let e = &r.estimate;
    println!(
        "Estimate for {} messages at this RTT:",
        thousands(e.messages)
    );
    println!(
        "  lock-step   {:>12} round trips  ≈ {:.1} s",
        thousands(e.lockstep_round_trips),
        e.lockstep_seconds
    );
    println!(
        "  pipelined   {:>12} round trips  ≈ {:.1} s",
        thousands(e.pipelined_round_trips),
        e.pipelined_seconds
    );
    if let (Some(b), Some(s)) = (e.bdat_round_trips, e.bdat_seconds) {
        println!(
            "  BDAT        {:>12} round trips  ≈ {:.1} s",
            thousands(b),
            s
        );
    }
}
