//! Command-line flags (clap derive). `config.rs` turns these into validated plans; nothing
//! after it sees clap.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit::EXIT_CODES_HELP;

/// pipemail: a bulk mailer whose engine pipelines SMTP (RFC 2920) and CHUNKING (RFC 3030),
/// so a stream of messages costs about one round trip each, or a few per thousand.
#[derive(Debug, Parser)]
#[command(name = "pipemail", version, about, after_help = EXIT_CODES_HELP, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Send one message per CSV row, rendered from a template, and write a per-row report.
    Send(SendArgs),
    /// Probe a server: banner, capabilities, TLS, round-trip time, whether pipelining works.
    CheckServer(CheckArgs),
    /// Run a small local SMTP server that stores or discards what it receives.
    Sink(SinkArgs),
    /// Show the product end to end against a built-in sink: lock-step vs pipelined vs BDAT.
    Demo(DemoArgs),
    /// Forward TCP connections, delaying each direction by half a round-trip time.
    LatencyProxy(ProxyArgs),
    /// Match bounce messages (DSNs) to a report's rows and write the report with them `bounced`.
    Bounces(BouncesArgs),
    /// Print the DNS TXT record that publishes a DKIM key (`SELECTOR._domainkey.DOMAIN`).
    DkimRecord(DkimRecordArgs),
    /// Print shell completions.
    Completions {
        /// Shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
    /// Read finished reports: summary, merge shards, HTML page.
    #[command(subcommand)]
    Report(ReportCommand),
    /// The config file: show the settings a profile gives (secrets masked).
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `pipemail config …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the settings `pipemail send` would use, each with where it came from (flag, env,
    /// profile, defaults, built-in); secrets are shown as ****.
    Show(ConfigShowArgs),
}

/// Flags of `pipemail config show`.
#[derive(Debug, Args)]
pub(crate) struct ConfigShowArgs {
    /// The config file (default: $XDG_CONFIG_HOME/pipemail/config.toml, else ~/.config/…).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The profile to show.
    #[arg(long, value_name = "NAME", env = "PIPEMAIL_PROFILE")]
    pub(crate) profile: Option<String>,
    /// `send` flags to layer on top, after `--` (e.g. `-- --host mx.example`).
    #[arg(last = true, value_name = "FLAGS")]
    pub(crate) flags: Vec<String>,
}

/// Flags of `pipemail dkim-record`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DkimRecordArgs {
    /// The private key given to `send --dkim-key` (PEM, RSA or Ed25519); never printed.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: PathBuf,
    /// The selector given to `send --dkim-selector`.
    #[arg(long, value_name = "NAME")]
    pub(crate) selector: String,
    /// The signing domain (default: a placeholder `DOMAIN` to replace with your From domain).
    #[arg(long, value_name = "DOMAIN")]
    pub(crate) domain: Option<String>,
}

/// Flags of `pipemail bounces`.
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("mailbox").required(true).args(["maildir", "mbox"]))]
pub(crate) struct BouncesArgs {
    /// The report written by `send` (CSV, JSON or JSON lines); it is never modified.
    #[arg(long, value_name = "REPORT")]
    pub(crate) report: PathBuf,
    /// Read bounce messages from this Maildir.
    #[arg(long, value_name = "DIR")]
    pub(crate) maildir: Option<PathBuf>,
    /// Read bounce messages from this mbox file.
    #[arg(long, value_name = "FILE")]
    pub(crate) mbox: Option<PathBuf>,
    /// Write the updated report here (default: standard output).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
}

/// How to use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TlsMode {
    /// STARTTLS when the server offers it, plain text otherwise.
    Auto,
    /// STARTTLS or nothing: no mail goes over an unencrypted connection.
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Never TLS.
    None,
}

/// Connection, TLS and AUTH flags shared by `send` and `check-server`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnArgs {
    /// SMTP server, HOST or HOST:PORT (port 25, or 465 with --tls implicit).
    #[arg(long, short = 'H', value_name = "HOST[:PORT]", env = "PIPEMAIL_HOST")]
    pub(crate) host: String,
    /// Name to send with EHLO (default: this machine's host name).
    #[arg(long, value_name = "NAME")]
    pub(crate) helo: Option<String>,
    /// TLS mode.
    #[arg(long, value_enum, default_value_t = TlsMode::Auto)]
    pub(crate) tls: TlsMode,
    /// Do not verify the server's certificate or name (test servers only).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Trust this CA certificate (PEM) in addition to the system's; repeatable.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Vec<PathBuf>,
    /// Verify the certificate against this name instead of the host.
    #[arg(long, value_name = "NAME")]
    pub(crate) tls_name: Option<String>,
    /// AUTH user name (the password comes from $PIPEMAIL_PASSWORD or --password-file).
    #[arg(long, value_name = "USER", env = "PIPEMAIL_USER")]
    pub(crate) auth_user: Option<String>,
    /// Read the AUTH password from the first line of this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) password_file: Option<PathBuf>,
    /// Allow AUTH over an unencrypted connection (refused by default).
    #[arg(long)]
    pub(crate) allow_plaintext_auth: bool,
    /// Run CMD and use the first line it prints as the AUTH password (run without a shell,
    /// split like a shell would; use `sh -c '…'` for pipes). Failure, a timeout or no output
    /// is exit 69 before any mail is sent.
    #[arg(long, value_name = "CMD", conflicts_with = "password_file")]
    pub(crate) password_command: Option<String>,
    /// AUTH mechanism (default: PLAIN when offered, else LOGIN). xoauth2 and oauthbearer
    /// (RFC 7628) send an OAuth 2.0 bearer token from --token-command.
    #[arg(long, value_enum, value_name = "MECH")]
    pub(crate) auth_mech: Option<AuthMechArg>,
    /// Run CMD and use the first line it prints as the OAuth 2.0 access token (for
    /// --auth-mech xoauth2|oauthbearer; run once per run, like --password-command).
    #[arg(long, value_name = "CMD")]
    pub(crate) token_command: Option<String>,
    /// Time limit for --password-command and --token-command.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "30s")]
    pub(crate) secret_timeout: Duration,
    /// Read settings from this TOML file (default: $XDG_CONFIG_HOME/pipemail/config.toml,
    /// else ~/.config/pipemail/config.toml; a missing default file is fine).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Use the config file's [profile.NAME] (over its [defaults]; under flags and environment).
    #[arg(long, value_name = "NAME", env = "PIPEMAIL_PROFILE")]
    pub(crate) profile: Option<String>,
    /// The `password` key of the config file (never a flag: no secrets on argv).
    #[arg(skip)]
    pub(crate) config_password: Option<pipemail::engine::Secret>,
    /// Reply timeout for each command (humantime: 30s, 2m).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "60s")]
    pub(crate) timeout: Duration,
    /// Timeout for the reply to the end of a message.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "120s")]
    pub(crate) data_timeout: Duration,
    /// TCP connect (and implicit TLS handshake) timeout.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "30s")]
    pub(crate) connect_timeout: Duration,
    /// Never pipeline: one command per round trip (lock-step SMTP).
    #[arg(long, conflicts_with = "require_pipelining")]
    pub(crate) no_pipelining: bool,
    /// Refuse to send when the server does not advertise PIPELINING (exit 69).
    #[arg(long)]
    pub(crate) require_pipelining: bool,
    /// Use DATA even when the server offers CHUNKING (no BDAT).
    #[arg(long, alias = "force-data")]
    pub(crate) no_chunking: bool,
    /// BDAT: most messages in flight per connection.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) window: u32,
    /// BDAT: most message octets in flight per connection (e.g. 8MiB, 512KiB).
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub(crate) window_bytes: u64,
    /// Print every command and reply to stderr (secrets shown as ****).
    #[arg(long, short = 'v')]
    pub(crate) verbose: bool,
}

/// AUTH mechanisms (`--auth-mech`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AuthMechArg {
    /// RFC 4616 PLAIN.
    Plain,
    /// LOGIN.
    Login,
    /// XOAUTH2 (Gmail, Microsoft 365): user and OAuth 2.0 token.
    Xoauth2,
    /// RFC 7628 OAUTHBEARER: user and OAuth 2.0 token.
    Oauthbearer,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FormatArg {
    /// Comma-separated values with a header row.
    Csv,
    /// A JSON array.
    Json,
    /// One JSON object per line.
    Jsonl,
}

#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Recipients: CSV with a header row and an `email` (or `to`) column; `-` for stdin.
    #[arg(long, short = 'l', value_name = "FILE")]
    pub(crate) list: String,
    /// Message template (headers, blank line, body) with {{ column }} placeholders; `-` for stdin.
    /// Without it the list carries the message: `subject` and `body` (or `text`) columns, or a
    /// `template` column naming a template file per row.
    ///
    /// Composed as MIME when needed (8-bit text, lines over 998 octets, which are encoded,
    /// never refused; `Content-Type: text/markdown` or `text/html`; `Attach:`, `Cc:`, `Bcc:`).
    #[arg(long, short = 't', value_name = "FILE")]
    pub(crate) template: Option<String>,
    /// Where a list's `template` column finds its files (default: the list's directory);
    /// a name never leaves this directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) template_dir: Option<PathBuf>,
    /// Envelope sender (default: the template's From address); may hold placeholders,
    /// e.g. 'bounces+{{ row }}@example.org' (VERP).
    #[arg(long, value_name = "ADDR")]
    pub(crate) from: Option<String>,
    /// Write the report here; `-` for stdout (default: no report file, summary only).
    #[arg(long, short = 'r', value_name = "FILE")]
    pub(crate) report: Option<String>,
    /// Report format (default: from the report's extension, else csv).
    #[arg(long, value_enum)]
    pub(crate) format: Option<FormatArg>,
    /// Skip every row an earlier report marks `sent`; send the rest.
    #[arg(long, value_name = "REPORT")]
    pub(crate) resume: Option<PathBuf>,
    /// With --resume: also skip rows whose delivery is unknown (in flight when a run died).
    #[arg(long, requires = "resume")]
    pub(crate) skip_unknown: bool,
    /// Parallel SMTP sessions.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) connections: u32,
    /// Messages per session before starting a fresh one (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) max_per_connection: u64,
    /// Recipients per transaction (1..1000): rows share one message (one rendering, one
    /// Message-ID). The template must use no list column; a 452 "too many recipients" moves
    /// the refused rows to the next transaction. --rate and --max-per-connection then count
    /// recipients and transactions.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) batch_recipients: u32,
    /// Global rate limit: N/s, N/min or N/h.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,
    /// Retries for temporary failures (4xx, dropped connections).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub(crate) retries: u32,
    /// First retry delay; doubles each time, capped at 1 minute.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "1s")]
    pub(crate) retry_delay: Duration,
    /// Send to a row even when its address repeats an earlier row's.
    #[arg(long)]
    pub(crate) allow_duplicates: bool,
    /// Only this part of the list: K/N takes every row whose number is K modulo N. `auto/N`
    /// takes K from $JOB_COMPLETION_INDEX (Kubernetes Indexed Job: index + 1) or
    /// $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN + 1 (Slurm job array). `{shard}` in
    /// --report and --resume paths becomes K.
    #[arg(long, value_name = "K/N", value_parser = parse_shard_arg)]
    pub(crate) shard: Option<ShardArg>,
    /// Render and check everything, print the first message and a count; connect to nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// No progress bar and no summary line.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
    /// Message composition: HTML, attachments, --dry-run output.
    #[command(flatten)]
    pub(crate) mime: Box<MimeArgs>,
    /// Deliverability: DKIM, unsubscribe, suppression, DSN.
    #[command(flatten)]
    pub(crate) deliver: Box<DeliverArgs>,
}

/// `send`'s message-composition flags (boxed in [`SendArgs`] to keep it small).
#[derive(Debug, Args)]
pub(crate) struct MimeArgs {
    /// HTML template (same placeholders): sent with the text template as multipart/alternative.
    ///
    /// With an empty text body the text part is derived from the HTML. `cid:NAME` in the HTML,
    /// NAME an attached file's name, makes that file an inline part (multipart/related).
    #[arg(long, value_name = "FILE")]
    pub(crate) html: Option<PathBuf>,
    /// Attach FILE to every message (read and encoded once); repeatable.
    #[arg(long, value_name = "FILE")]
    pub(crate) attach: Vec<PathBuf>,
    /// Directory the template's per-row `Attach: PATH` fields (or the list's `attach` column)
    /// resolve under (default: the template's directory, or the list's when the list carries
    /// the message). A path leaving it, missing or unreadable fails that row only.
    #[arg(long, value_name = "DIR")]
    pub(crate) attach_dir: Option<PathBuf>,
    /// With --dry-run: write each rendered message to DIR/<row>.eml (DIR must exist; an
    /// existing file is an error, exit 74; symlinks are never followed).
    #[arg(long, value_name = "DIR", requires = "dry_run")]
    pub(crate) output: Option<PathBuf>,
}

/// `send`'s deliverability flags (README "Deliverability").
#[derive(Debug, Args)]
pub(crate) struct DeliverArgs {
    /// DKIM private key (PEM, RSA or Ed25519), read once; repeat with --dkim-selector (and
    /// --dkim-domain) to sign twice, e.g. RSA and Ed25519.
    #[arg(long, value_name = "FILE", requires = "dkim_selector")]
    pub(crate) dkim_key: Vec<PathBuf>,
    /// DKIM selector (s=) of the --dkim-key in the same position.
    #[arg(long, value_name = "NAME", requires = "dkim_key")]
    pub(crate) dkim_selector: Vec<String>,
    /// DKIM signing domain (d=) of the --dkim-key in the same position (default: the From domain).
    #[arg(long, value_name = "DOMAIN", requires = "dkim_key")]
    pub(crate) dkim_domain: Vec<String>,
    /// One-click unsubscribe URL (https), a template per row, e.g.
    /// 'https://example.com/u?e={{ email|urlencode }}': adds List-Unsubscribe and List-Unsubscribe-Post.
    #[arg(long, value_name = "URL")]
    pub(crate) unsubscribe: Option<String>,
    /// Unsubscribe address added to List-Unsubscribe as a mailto: URI.
    #[arg(long, value_name = "ADDR")]
    pub(crate) unsubscribe_mailto: Option<String>,
    /// Suppression list (addresses, or @domain, one a line): matching rows are skipped (repeatable).
    #[arg(long, value_name = "FILE")]
    pub(crate) suppress: Vec<PathBuf>,
    /// After the run, append the addresses that failed permanently (5.1.x, 5.2.1) to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) suppress_add: Option<PathBuf>,
    /// DSN NOTIFY= on each RCPT when the server offers DSN: never, or a comma list of success,failure,delay.
    #[arg(long, value_name = "WHEN")]
    pub(crate) dsn_notify: Option<String>,
    /// DSN RET= (full or hdrs) and a per-row ENVID= on MAIL when the server offers DSN.
    #[arg(long, value_name = "WHAT")]
    pub(crate) dsn_ret: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Print JSON (stable keys) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Message count for the estimate.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 10_000)]
    pub(crate) messages: u64,
    /// NOOPs to time for the round-trip measurement.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) probes: u32,
    /// Send ONE real message to ADDR with a NOOP pipelined after its final dot: tests whether
    /// the server takes commands pipelined across messages (some refuse them with 503).
    #[arg(long, value_name = "ADDR")]
    pub(crate) probe_rcpt: Option<String>,
    /// Sender (MAIL FROM and From:) of the --probe-rcpt message (default: ADDR itself).
    #[arg(long, value_name = "ADDR", requires = "probe_rcpt")]
    pub(crate) probe_from: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SinkArgs {
    /// Address to listen on.
    #[arg(
        long,
        short = 'L',
        value_name = "ADDR",
        default_value = "127.0.0.1:2525"
    )]
    pub(crate) listen: String,
    /// Store each message in this Maildir (created if missing); default: count and discard.
    #[arg(long, value_name = "DIR")]
    pub(crate) maildir: Option<PathBuf>,
    /// Emulated network round-trip time (each direction delayed by half).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "0s")]
    pub(crate) latency: Duration,
    /// Do not advertise PIPELINING.
    #[arg(long)]
    pub(crate) no_pipelining: bool,
    /// Do not advertise CHUNKING.
    #[arg(long)]
    pub(crate) no_chunking: bool,
    /// Advertise SMTPUTF8.
    #[arg(long)]
    pub(crate) smtputf8: bool,
    /// Do not advertise 8BITMIME (and refuse BODY=8BITMIME), like a 7-bit-only server.
    #[arg(long = "no-8bitmime")]
    pub(crate) no_8bitmime: bool,
    /// Advertise DSN (RFC 3461) and accept its MAIL and RCPT parameters.
    #[arg(long)]
    pub(crate) dsn: bool,
    /// Reject recipients matching a pattern: CODE:GLOB, e.g. 550:*@bad.example or 450:slow*; repeatable.
    #[arg(long, value_name = "CODE:GLOB")]
    pub(crate) reject: Vec<String>,
    /// Largest message accepted (SIZE), e.g. 10MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "35MiB")]
    pub(crate) max_size: u64,
    /// Name in the greeting.
    #[arg(long, default_value = "pipemail-sink")]
    pub(crate) hostname: String,
    /// Refuse commands pipelined behind a message's end, like servers hardened against SMTP smuggling.
    ///
    /// Every command that arrives in the same read as a final dot or `BDAT … LAST`, behind it,
    /// gets its own `503 5.5.1 Bad sequence of commands - pipelined after end of DATA` (after
    /// the message's 250) and is not executed. Commands sent after the client saw the reply
    /// are handled normally.
    #[arg(long)]
    pub(crate) refuse_after_dot: bool,
    /// Inject a fault, to rehearse a campaign against a misbehaving server; repeatable.
    ///
    /// SPEC is KIND[=ARGS][@SESSIONS]. UNIT counts the client's commands from 0 after the
    /// greeting (EHLO is 0; a final dot and a BDAT with its chunk count as one each).
    /// SESSIONS is N or FIRST-LAST, 0-based connections in accept order (default 0).
    /// drop-after-bytes=N: read N bytes of client input, answer what they complete, close.
    /// drop-before-reply=UNIT: close instead of answering UNIT (a message it ends is not stored).
    /// reply-lost=UNIT: execute UNIT (store the message), then close without its reply.
    /// 421=UNIT: answer UNIT with 421 and close.
    /// reply-code=UNIT:CODE: answer UNIT with CODE (400-599) instead of executing it.
    /// stall=UNIT: from UNIT on answer nothing, keep the connection open.
    /// dribble: write replies one byte at a time.
    /// mid-reply-drop=UNIT: execute UNIT, send half its reply, close.
    /// Example: --fault reply-lost=4@0 --fault 421=2@1-3
    #[arg(long, value_name = "SPEC", verbatim_doc_comment)]
    pub(crate) fault: Vec<pipemail::sink::FaultSpec>,
    /// Offer AUTH XOAUTH2 and OAUTHBEARER (without TLS) and accept the token on this file's
    /// first line, for any user; MAIL then needs AUTH. A wrong token gets RFC 7628's error
    /// challenge, then 535.
    #[arg(long, value_name = "FILE")]
    pub(crate) auth_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Simulated round-trip time.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "50ms")]
    pub(crate) rtt: Duration,
    /// Send only the first N rows of the sample list (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) rows: u64,
    /// Directory for the reports (default: a new temporary directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: String,
    /// Address to forward to.
    #[arg(long, value_name = "ADDR")]
    pub(crate) upstream: String,
    /// Round-trip time to add.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) rtt: Duration,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 2m)"))
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (examples: 1048576, 512KiB, 8MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?} (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `N/s`, `N/min`, `N/h` → messages per second.
pub(crate) fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, unit) = s
        .split_once('/')
        .ok_or_else(|| format!("bad rate {s:?}: use N/s, N/min or N/h"))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("bad rate {s:?}: N must be a number"))?;
    if !(n > 0.0 && n.is_finite()) {
        return Err(format!("bad rate {s:?}: N must be positive"));
    }
    let per = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(format!("bad rate unit in {s:?}: use /s, /min or /h")),
    };
    Ok(n / per)
}

pub(crate) fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| format!("bad shard {s:?}: use K/N, e.g. 1/4"))?;
    let k: u64 = k.trim().parse().map_err(|_| format!("bad shard {s:?}"))?;
    let n: u64 = n.trim().parse().map_err(|_| format!("bad shard {s:?}"))?;
    if n == 0 || k == 0 || k > n {
        return Err(format!("bad shard {s:?}: K must be from 1 to N"));
    }
    Ok((k, n))
}

/// `--shard`: a fixed part, or `auto/N` (K from the job scheduler's environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardArg {
    /// `K/N`.
    Fixed(u64, u64),
    /// `auto/N`.
    Auto(u64),
}

pub(crate) fn parse_shard_arg(s: &str) -> Result<ShardArg, String> {
    match s.trim().split_once('/') {
        Some((k, n)) if k.trim().eq_ignore_ascii_case("auto") => {
            let n: u64 = n.trim().parse().map_err(|_| format!("bad shard {s:?}"))?;
            if n == 0 {
                return Err(format!("bad shard {s:?}: N must be at least 1"));
            }
            Ok(ShardArg::Auto(n))
        }
        _ => parse_shard(s).map(|(k, n)| ShardArg::Fixed(k, n)),
    }
}

/// `pipemail report …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ReportCommand {
    /// Counts by status and reply, the domains with the most failures, timing and rows/s.
    Summary {
        /// Reports (csv, json or jsonl; `-` for stdin).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
        /// How many domains to list.
        #[arg(long, default_value_t = 10, value_name = "N")]
        top: usize,
        /// One JSON object on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Join shard reports (or the last report of each --resume chain) into one; every row once.
    Merge {
        /// Reports to merge (files).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
        /// The merged report (`-` for stdout).
        #[arg(long, short = 'o', value_name = "OUT")]
        output: String,
        /// Format of the merged report (default: from OUT's extension, else csv).
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
    },
    /// One self-contained HTML page with the summary tables and charts.
    Html {
        /// Reports (csv, json or jsonl; `-` for stdin).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
        /// The page (`-` for stdout).
        #[arg(long, short = 'o', value_name = "OUT.html")]
        output: String,
        /// How many domains to list.
        #[arg(long, default_value_t = 10, value_name = "N")]
        top: usize,
    },
}

impl ReportCommand {
    /// The command for `pipemail::review::run`.
    pub(crate) fn into_action(self) -> pipemail::review::Action {
        use pipemail::review::Action;
        match self {
            Self::Summary { files, top, json } => Action::Summary { files, top, json },
            Self::Merge {
                files,
                output,
                format,
            } => Action::Merge {
                files,
                output,
                format: format.map(|f| match f {
                    FormatArg::Csv => pipemail::report::Format::Csv,
                    FormatArg::Json => pipemail::report::Format::Json,
                    FormatArg::Jsonl => pipemail::report::Format::Jsonl,
                }),
            },
            Self::Html { files, output, top } => Action::Html { files, output, top },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_rate("120/min").unwrap(), 2.0);
        assert_eq!(parse_rate("3600/h").unwrap(), 1.0);
        assert!(
            parse_rate("0/s").is_err() && parse_rate("5").is_err() && parse_rate("5/d").is_err()
        );
        assert_eq!(parse_shard("2/4").unwrap(), (2, 4));
        assert!(
            parse_shard("0/4").is_err()
                && parse_shard("5/4").is_err()
                && parse_shard("1/0").is_err()
        );
        assert_eq!(parse_shard_arg("auto/3").unwrap(), ShardArg::Auto(3));
        assert_eq!(parse_shard_arg("2/4").unwrap(), ShardArg::Fixed(2, 4));
        assert!(parse_shard_arg("auto/0").is_err() && parse_shard_arg("auto").is_err());
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("512kb").unwrap(), 512 << 10);
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn auth_and_profile_flags() {
        let base = [
            "pipemail",
            "send",
            "--host",
            "h",
            "--list",
            "l",
            "--template",
            "t",
        ];
        let parse = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            Cli::try_parse_from(args)
        };
        let cli = parse(&[
            "--auth-mech",
            "oauthbearer",
            "--token-command",
            "oauth2l fetch",
            "--secret-timeout",
            "5s",
            "--profile",
            "news",
            "--config",
            "c.toml",
        ])
        .unwrap();
        let Command::Send(a) = cli.command else {
            panic!("not send")
        };
        assert_eq!(a.conn.auth_mech, Some(AuthMechArg::Oauthbearer));
        assert_eq!(a.conn.token_command.as_deref(), Some("oauth2l fetch"));
        assert_eq!(a.conn.secret_timeout, Duration::from_secs(5));
        assert_eq!(a.conn.profile.as_deref(), Some("news"));
        assert!(a.conn.config_password.is_none(), "never from argv");
        for m in ["plain", "login", "xoauth2"] {
            assert!(parse(&["--auth-mech", m]).is_ok(), "{m}");
        }
        assert!(parse(&["--auth-mech", "cram-md5"]).is_err());
        assert!(parse(&["--password-command", "a", "--password-file", "b"]).is_err());
        assert!(parse(&["--password", "x"]).is_err(), "no password flag");
    }

    #[test]
    fn send_flags() {
        let cli = Cli::try_parse_from([
            "pipemail",
            "send",
            "--host",
            "mx:2525",
            "--list",
            "-",
            "--template",
            "t.eml",
            "--rate",
            "10/s",
            "--shard",
            "1/2",
        ])
        .unwrap();
        let Command::Send(a) = cli.command else {
            panic!("not send")
        };
        assert_eq!(a.conn.host, "mx:2525");
        assert_eq!(a.rate, Some(10.0));
        assert_eq!(a.shard, Some(ShardArg::Fixed(1, 2)));
        assert_eq!(a.conn.tls, TlsMode::Auto);
        assert!(
            Cli::try_parse_from([
                "pipemail",
                "send",
                "--host",
                "h",
                "--list",
                "l",
                "--template",
                "t",
                "--no-pipelining",
                "--require-pipelining"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "pipemail",
                "send",
                "--host",
                "h",
                "--list",
                "l",
                "--template",
                "t",
                "--password",
                "x"
            ])
            .is_err(),
            "no password on argv"
        );
    }
}
