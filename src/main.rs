//! The `pipemail` command. Prints one error line and returns a sysexits code.
// No unsafe code but the allocator tuning below (`deny`, not `forbid`, for its one `allow`).
#![deny(unsafe_code)]

mod check;
mod cli;
mod config;
mod demo;
mod exit;
mod message_plan;
mod profile;
mod progress;
mod secrets;
mod send;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use exit::{Exit, Failure, fail};

/// mimalloc instead of glibc's malloc: about 85 allocations per message (rows, rendered
/// messages, report cells) made malloc and free a quarter of the instructions per message.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc keeps freed pages for a while (`purge_delay`, 1 s here) before giving them back:
/// with eight connections that held about 50 MiB where glibc needed 19. Purging at once
/// brings it to about 36 MiB (500,000 rows, 8 connections) for a few per cent of CPU. (Its
/// other big share, the first arena committed eagerly, is decided before `main` runs; the
/// `MIMALLOC_ARENA_EAGER_COMMIT=0` environment variable brings the total to 19 MiB.)
#[allow(unsafe_code)]
fn tune_allocator() {
    // Position of `mi_option_purge_delay` in mimalloc v3's `mi_option_e`
    // (c_src/mimalloc/v3/include/mimalloc.h of libmimalloc-sys 0.1.49, pinned in Cargo.toml;
    // the crate's own constants are v2's).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is a plain store, and 0 is a valid purge delay.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) }
}

fn main() -> ExitCode {
    tune_allocator();
    // The config file's settings join the command line before clap parses it for real.
    let layered = match profile::layer(std::env::args_os().collect()) {
        Ok(l) => l,
        Err(f) => return print_failure(f),
    };
    let mut cli = match Cli::try_parse_from(&layered.argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return code.into();
        }
    };
    if let Command::Send(cli::SendArgs { conn, .. })
    | Command::CheckServer(cli::CheckArgs { conn, .. }) = &mut cli.command
    {
        conn.config_password = layered.password;
    }
    match run(cli) {
        Ok(exit) => exit.into(),
        Err(f) => print_failure(f),
    }
}

/// Prints the one error line (and a hint) and returns the failure's exit code.
fn print_failure(f: Failure) -> ExitCode {
    if is_broken_pipe(&f.error) {
        return Exit::Ok.into();
    }
    // Errors quote server replies, list values and file names: shown inert.
    let text = format!("{:#}", f.error);
    eprintln!("pipemail: error: {}", pipemail::text::printable_str(&text));
    if let Some(h) = f.exit.hint() {
        eprintln!("pipemail: hint: {h}");
    }
    f.exit.into()
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> Result<Exit, Failure> {
    match cli.command {
        Command::Send(a) => {
            let quiet = a.quiet;
            let dry = a.dry_run;
            let plan = config::send_plan(a)?;
            if dry {
                return send::dry_run(plan);
            }
            let summary = send::run(plan)?;
            let exit = exit::for_summary(&summary);
            if !quiet || exit != Exit::Ok {
                let line = send::summary_line(&summary);
                eprintln!("pipemail: {}", pipemail::text::printable_str(&line));
            }
            // 69 and 75 come from a finished run, not from an error: their hints go here.
            if let Some(h) = exit.hint() {
                eprintln!("pipemail: hint: {h}");
            }
            Ok(exit)
        }
        Command::CheckServer(a) => check::run(&a),
        Command::Sink(a) => demo::sink(&a),
        Command::Demo(a) => demo::run(&a),
        Command::LatencyProxy(a) => demo::proxy(&a),
        Command::Bounces(a) => bounces(a),
        Command::DkimRecord(a) => dkim_record(&a),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "pipemail",
                &mut std::io::stdout(),
            );
            Ok(Exit::Ok)
        }
        Command::Config(cli::ConfigCommand::Show(a)) => {
            use std::io::Write as _;
            let text = profile::show(&a)?;
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| Failure::new(Exit::IoErr, e))?;
            Ok(Exit::Ok)
        }
        Command::Report(r) => pipemail::review::run(r.into_action())
            .map(|()| Exit::Ok)
            .or_else(report_failure),
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Failure::new(Exit::IoErr, e))?;
            Ok(Exit::Ok)
        }
    }
}

/// `pipemail report …` failed: its sysexits code (the work is in `pipemail::review`).
fn report_failure(e: pipemail::review::ReviewError) -> Result<Exit, Failure> {
    if e.is_broken_pipe() {
        return Ok(Exit::Ok);
    }
    Err(fail(Exit::from_sysexits(e.exit_code().into()), e))
}

/// `pipemail dkim-record`: the zone-file line publishing the public half of a DKIM key.
fn dkim_record(a: &cli::DkimRecordArgs) -> Result<Exit, Failure> {
    use pipemail::deliver::dkim::{DkimKey, DkimSigner};
    let lib = |e: pipemail::deliver::dkim::DkimError| {
        Failure::new(Exit::from_sysexits(e.exit_code().into()), e)
    };
    let loaded = DkimKey::from_file(&a.key).map_err(lib)?;
    if let Some(w) = &loaded.warning {
        eprintln!("pipemail: warning: {w}");
    }
    // The signer checks the selector and domain spelling.
    let signer = DkimSigner::new(loaded.key, &a.selector, a.domain.as_deref()).map_err(lib)?;
    let record = signer.key().dns_record().map_err(lib)?;
    let domain = a.domain.as_deref().unwrap_or("DOMAIN");
    // TXT strings are at most 255 octets each (RFC 1035 §3.3.14): split long RSA keys.
    let parts: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    println!(
        "{}._domainkey.{domain}. IN TXT ( {} )",
        signer.selector(),
        parts.join(" ")
    );
    Ok(Exit::Ok)
}

fn bounces(a: cli::BouncesArgs) -> Result<Exit, Failure> {
    use pipemail::bounces::{self, Mailbox};
    use pipemail::text::printable_str;
    let mailbox = match (a.maildir, a.mbox) {
        (Some(d), _) => Mailbox::Maildir(d),
        (None, Some(f)) => Mailbox::Mbox(f),
        (None, None) => {
            let e = anyhow::anyhow!("give --maildir DIR or --mbox FILE");
            return Err(Failure::new(Exit::Usage, e));
        }
    };
    let opts = bounces::Options {
        report: a.report,
        mailbox,
        output: a.output,
    };
    let summary = bounces::run(&opts, &mut std::io::stdout().lock())
        .map_err(|e| Failure::new(Exit::from_sysexits(e.exit_code().into()), e))?;
    for u in &summary.unmatched {
        eprintln!(
            "pipemail: unmatched bounce in {}: {} {}",
            printable_str(&u.source),
            printable_str(u.recipient.as_deref().unwrap_or("(no recipient)")),
            printable_str(u.status.as_deref().unwrap_or("(no status)"))
        );
    }
    eprintln!("pipemail: {}", summary.line());
    Ok(Exit::Ok)
}
