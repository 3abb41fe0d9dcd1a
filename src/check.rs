//! `pipemail check-server`: banner, capabilities (before and after STARTTLS), certificate,
//! round-trip time, a real pipelining probe, optionally one real message with a command
//! pipelined after its final dot (`--probe-rcpt`), and an estimate of what a run will cost.
//!
//! Everything goes through the engine and the driver, the code `send` uses: the session
//! honours `--no-pipelining`, `--require-pipelining` and `--no-chunking` as `send` does. The
//! one helper outside them is [`tls_version`]: native-tls does not expose the negotiated
//! protocol and cipher, so a second connection (EHLO and STARTTLS still driven by the engine)
//! hands its socket to OpenSSL for the handshake.
//!
//! Pipelining across messages (issue 11): since the 2023-24 SMTP smuggling advisories some
//! servers answer every command that arrives after the end-of-data dot, before they replied
//! to it, with `503`. `send` pipelines the next envelope with the dot; against such a server
//! the engine waits for each message's reply instead (about two round trips per message
//! with DATA, one with BDAT). `--probe-rcpt` finds out which kind of server this is.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde::Serialize;

use crate::cli::CheckArgs;
use crate::config::conn_plan;
use crate::exit::{Exit, Failure, fail};

mod human;
mod tls;

use human::print_human;
use pipemail::driver::Connection;
use pipemail::engine::{
    Capabilities, Event, Extensions, PipeliningPolicy, RawCommand, Reply, TlsPolicy, Verb,
};
use tls::{describe_cert, tls_version};

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
    /// Pipelining across messages: a command written right after a message's final dot.
    cross_message: CrossMessage,
    /// BDAT will be used: CHUNKING offered, pipelining in use, no `--no-chunking`.
    chunking: bool,
    /// The server advertises CHUNKING (used or not).
    chunking_offered: bool,
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
    /// `false` with `--no-pipelining`: the session sends lock-step and nothing was probed.
    used: bool,
}

/// The outcome of `--probe-rcpt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum CrossResult {
    /// The command after the dot was answered normally.
    Works,
    /// Refused: a 503 (or 5yz `5.5.x`) reply, or the connection closed after the dot's reply.
    Refused,
    /// No `--probe-rcpt`, pipelining not in use, or the probe message was not accepted.
    NotTested,
    /// The probe ran but its replies fit neither case.
    Inconclusive,
}

#[derive(Debug, Serialize)]
struct CrossMessage {
    result: CrossResult,
    detail: String,
    /// The `--probe-rcpt` address, when given.
    probe_rcpt: Option<String>,
    /// The reply to the probe message's final dot.
    message_reply: Option<String>,
    /// The reply to the NOOP written right after that dot.
    noop_reply: Option<String>,
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
    /// What a run costs when the server refuses commands after the end of data and the
    /// engine waits for each message's reply: 2 round trips per message with DATA, 1 with BDAT.
    stepped_down_round_trips: u64,
    stepped_down_seconds: f64,
    /// What `send` with the same flags will cost given what was found: `None` while
    /// pipelining across messages was not tested (then it is one of the estimates above).
    expected_mode: Option<String>,
    expected_round_trips: Option<u64>,
    expected_seconds: Option<f64>,
}

/// What `--probe-rcpt` needs: the addresses, checked before connecting.
struct ProbeMessage {
    rcpt: String,
    from: String,
}

pub(crate) fn run(a: &CheckArgs) -> Result<Exit, Failure> {
    let mut plan = conn_plan(&a.conn)?;
    let require = plan.connect.session.pipelining == PipeliningPolicy::Require;
    // The check reports a missing PIPELINING itself (exit 69 after the report), so the
    // session is opened with Auto; Off (--no-pipelining) is kept as it is.
    if require {
        plan.connect.session.pipelining = PipeliningPolicy::Auto;
    }
    plan.connect.session.transcript = true;
    let probe_msg = match &a.probe_rcpt {
        None => None,
        Some(rcpt) => {
            let from = a.probe_from.clone().unwrap_or_else(|| rcpt.clone());
            for (flag, addr) in [("--probe-rcpt", rcpt), ("--probe-from", &from)] {
                pipemail::engine::check_address(addr)
                    .map_err(|e| fail(Exit::Usage, anyhow!("{flag} {addr:?}: {e}")))?;
            }
            Some(ProbeMessage {
                rcpt: rcpt.clone(),
                from,
            })
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(Exit::Software, e))?;
    let verbose = plan.verbose;
    let window = plan.connect.session.window as u64;
    let report = rt.block_on(async move {
        probe(
            plan.connect,
            verbose,
            a.probes,
            a.messages,
            window,
            probe_msg.as_ref(),
        )
        .await
    })?;
    let mut report = report;
    human::make_inert(&mut report);
    if a.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| fail(Exit::Software, e))?;
        println!("{text}");
    } else {
        print_human(&report);
    }
    if require && !report.pipelining.advertised {
        return Err(fail(
            Exit::Unavailable,
            anyhow!(
                "{} does not advertise PIPELINING (--require-pipelining)",
                report.server
            ),
        ));
    }
    let pipelining_ok =
        a.conn.no_pipelining || (report.pipelining.advertised && report.pipelining.probe_passed);
    // A --probe-rcpt that could not say works or refused is a failed check.
    let cross_ok = a.probe_rcpt.is_none()
        || !report.pipelining.used
        || matches!(
            report.cross_message.result,
            CrossResult::Works | CrossResult::Refused
        );
    Ok(if pipelining_ok && cross_ok {
        Exit::Ok
    } else {
        Exit::Partial
    })
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
    probe_msg: Option<&ProbeMessage>,
) -> Result<Report, Failure> {
    let started = Instant::now();
    let server = connect.target.to_string();
    let tls_mode = connect.session.tls;
    let lockstep_requested = connect.session.pipelining == PipeliningPolicy::Off;
    let chunking_allowed = connect.session.chunking;
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
                    let e = e.to_string();
                    eprintln!(
                        "pipemail: TLS version probe: {}",
                        pipemail::text::printable_str(&e)
                    );
                }
                (None, None)
            }
        };
        TlsReport {
            mode: if tls_mode == TlsPolicy::Implicit {
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
    let used = advertised && !lockstep_requested;
    let (probe_passed, detail) = if !advertised {
        (
            false,
            "not advertised: pipemail will send lock-step (one round trip per command)".to_string(),
        )
    } else if lockstep_requested {
        (
            false,
            "advertised, not probed (--no-pipelining): pipemail will send lock-step".to_string(),
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
    let cross = match probe_msg {
        None => CrossMessage {
            result: CrossResult::NotTested,
            detail: "--probe-rcpt ADDR sends one real message with a NOOP pipelined after its \
                     final dot"
                .to_string(),
            probe_rcpt: None,
            message_reply: None,
            noop_reply: None,
        },
        Some(m) => cross_message_probe(&mut p, m, used, rtt, &server).await,
    };
    if p.closed.is_none() {
        p.conn.session().quit();
        let _ = tokio::time::timeout(Duration::from_secs(5), p.settle()).await;
    }
    p.conn.shutdown().await;

    let chunking_offered = caps.has(Extensions::CHUNKING);
    let chunking = chunking_offered && used && chunking_allowed;
    let secs = rtt.as_secs_f64();
    let (lock, piped) = (4 * n + 3, n + 3);
    let bdat = chunking.then(|| n.div_ceil(window.max(1)) + 3);
    let stepped = if chunking { n + 3 } else { 2 * n + 3 };
    let expected = if !used {
        Some(("lock-step", lock))
    } else {
        match cross.result {
            CrossResult::Works => Some(match bdat {
                Some(b) => ("BDAT", b),
                None => ("pipelined", piped),
            }),
            CrossResult::Refused => Some(if chunking {
                ("BDAT, sync at end of data", stepped)
            } else {
                ("pipelined, sync at end of data", stepped)
            }),
            CrossResult::NotTested | CrossResult::Inconclusive => None,
        }
    };
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
            used,
        },
        cross_message: cross,
        chunking,
        chunking_offered,
        size_limit: (caps.size > 0).then_some(caps.size),
        estimate: Estimate {
            messages: n,
            lockstep_round_trips: lock,
            pipelined_round_trips: piped,
            bdat_round_trips: bdat,
            lockstep_seconds: lock as f64 * secs,
            pipelined_seconds: piped as f64 * secs,
            bdat_seconds: bdat.map(|b| b as f64 * secs),
            stepped_down_round_trips: stepped,
            stepped_down_seconds: stepped as f64 * secs,
            expected_mode: expected.map(|(m, _)| m.to_string()),
            expected_round_trips: expected.map(|(_, r)| r),
            expected_seconds: expected.map(|(_, r)| r as f64 * secs),
        },
    })
}

/// `--probe-rcpt`: MAIL, RCPT, DATA pipelined; after the 354 the message, its final dot and
/// a NOOP in one write. The NOOP's reply says whether the server takes commands pipelined
/// across messages.
async fn cross_message_probe(
    p: &mut Prober,
    m: &ProbeMessage,
    used: bool,
    rtt: Duration,
    server: &str,
) -> CrossMessage {
    let mut out = CrossMessage {
        result: CrossResult::NotTested,
        detail: String::new(),
        probe_rcpt: Some(m.rcpt.clone()),
        message_reply: None,
        noop_reply: None,
    };
    if !used {
        out.detail = "pipelining is not in use, so nothing is sent after a dot before its \
                      reply (no message was sent)"
            .to_string();
        return out;
    }
    if let Some(e) = &p.closed {
        out.detail = format!(
            "the session closed before the probe message ({})",
            e.as_deref().unwrap_or("by the server")
        );
        return out;
    }
    let budget = (rtt * 20).max(Duration::from_secs(10));
    p.raw.clear();
    for c in [
        RawCommand::Mail(m.from.clone()),
        RawCommand::Rcpt(m.rcpt.clone()),
        RawCommand::Data,
    ] {
        p.conn.session().command(c);
    }
    let _ = tokio::time::timeout(budget, p.settle()).await;
    let data_ok = p.raw.iter().any(|(v, r)| *v == Verb::Data && r.code == 354);
    if !data_ok {
        let got: Vec<String> = p.raw.iter().map(|(v, r)| format!("{v}: {r}")).collect();
        out.detail = format!(
            "the probe message was not accepted ({})",
            if got.is_empty() {
                "no reply".to_string()
            } else {
                got.join("; ")
            }
        );
        if p.closed.is_none()
            && p.raw
                .iter()
                .any(|(v, r)| *v == Verb::Mail && r.is_positive())
        {
            p.raw.clear();
            p.conn.session().command(RawCommand::Rset);
            let _ = tokio::time::timeout(budget, p.settle()).await;
        }
        return out;
    }
    p.raw.clear();
    let body = probe_body(m, server, &p.conn.session_ref().capabilities().names());
    p.conn.session().command(RawCommand::Body(body));
    p.conn.session().command(RawCommand::Noop);
    let _ = tokio::time::timeout(budget, p.settle()).await;
    let reply = |verb: Verb| {
        p.raw
            .iter()
            .find(|(v, _)| *v == verb)
            .map(|(_, r)| r.clone())
    };
    let (dot, noop) = (reply(Verb::Body), reply(Verb::Noop));
    out.message_reply = dot.as_ref().map(ToString::to_string);
    out.noop_reply = noop.as_ref().map(ToString::to_string);
    let msg = out.message_reply.as_deref().unwrap_or("no reply");
    (out.result, out.detail) = match (&dot, &noop) {
        (_, Some(r)) if r.is_positive() => (
            CrossResult::Works,
            format!("NOOP written with the final dot answered {r} (message: {msg})"),
        ),
        (Some(_), Some(r)) if refuses_pipelining(r) => (
            CrossResult::Refused,
            format!(
                "NOOP written with the final dot answered {r} (message: {msg}); pipemail waits \
                 for each message's reply on this server"
            ),
        ),
        (Some(_), None) if p.closed.is_some() => (
            CrossResult::Refused,
            format!(
                "the server closed the connection after answering the final dot, with the NOOP \
                 written with it unanswered (message: {msg})"
            ),
        ),
        _ => (
            CrossResult::Inconclusive,
            format!(
                "message: {msg}; NOOP written with the final dot: {}",
                out.noop_reply.as_deref().unwrap_or("no reply")
            ),
        ),
    };
    out
}

/// 503 (bad sequence), or a 5yz with enhanced code 5.5.x (protocol/syntax), to a command
/// pipelined after the end of data: the server refuses such pipelining.
fn refuses_pipelining(r: &Reply) -> bool {
    r.code == 503 || (r.is_permanent() && r.enhanced.is_some_and(|e| e.subject == 5))
}

/// The one real message `--probe-rcpt` sends (headers and a short text, CRLF line ends).
fn probe_body(m: &ProbeMessage, server: &str, caps: &[String]) -> Vec<u8> {
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let id = format!(
        "pipemail-check.{}.{}@{}",
        now.unix_timestamp_nanos(),
        std::process::id(),
        m.from.rsplit('@').next().unwrap_or("localhost")
    );
    format!(
        "From: <{from}>\r\nTo: <{rcpt}>\r\nSubject: pipemail check-server probe\r\n\
         Date: {date}\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         Sent by `pipemail check-server --probe-rcpt` to {server} ({caps}): a NOOP follows\r\n\
         this message's final dot in the same write, to learn whether the server takes\r\n\
         commands pipelined across messages. It can be deleted.\r\n",
        from = m.from,
        rcpt = m.rcpt,
        caps = caps.join(" "),
    )
    .into_bytes()
}
