//! The sink's configuration: capabilities, limits, recipient rules, TLS, AUTH, faults and the
//! behaviour after the end of data.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::fault::FaultPlan;
use super::glob;

/// Configuration of a sink. [`Default`] gives a plain ESMTP server with PIPELINING, CHUNKING
/// and `SIZE 35882577`, no TLS, no AUTH, no latency and no storage.
#[derive(Clone)]
pub struct SinkConfig {
    /// Name used in the greeting and the EHLO reply (default `pipemail-sink`).
    pub hostname: String,
    /// Advertise PIPELINING (default true). The sink processes pipelined input either way.
    pub pipelining: bool,
    /// Advertise CHUNKING and accept `BDAT` (default true). When off, `BDAT n` still consumes
    /// its `n` octets and is answered `502 5.5.1`.
    pub chunking: bool,
    /// Advertise `SIZE n` and reject larger messages with 552 (default `Some(35_882_577)`).
    /// `None` advertises no SIZE; messages are then limited to 64 MiB.
    pub size: Option<u64>,
    /// Advertise SMTPUTF8 (default false). Without it a `SMTPUTF8` MAIL parameter is refused
    /// (555), and a non-ASCII address is refused (553) unless MAIL carried `SMTPUTF8`.
    pub smtputf8: bool,
    /// Advertise 8BITMIME (default true). Without it `BODY=8BITMIME` is refused (555).
    pub eight_bit_mime: bool,
    /// Emulated network round-trip time (default zero: no emulation, no timers).
    pub latency: Duration,
    /// Maildir to store each accepted message in (created with `tmp/`, `new/`, `cur/` if
    /// missing). One file per message, whatever the number of recipients.
    pub maildir: Option<PathBuf>,
    /// Keep every accepted message in memory for [`super::SinkHandle::messages`] (default false).
    pub keep_in_memory: bool,
    /// Recipient rules; the first matching rule rejects the recipient.
    pub reject: Vec<RejectRule>,
    /// TLS identity; when set, STARTTLS is advertised (before TLS) and supported.
    pub tls: Option<native_tls::Identity>,
    /// `(user, password)`; when set, AUTH PLAIN LOGIN is advertised (after STARTTLS, or always
    /// with `allow_plain_auth`), credentials are checked, and MAIL needs a successful AUTH
    /// (`530 5.7.0` otherwise).
    pub auth: Option<(String, String)>,
    /// The OAuth 2.0 bearer token that AUTH XOAUTH2 and OAUTHBEARER (RFC 7628) accept; when
    /// set, those two are advertised (like `auth`, after STARTTLS or with `allow_plain_auth`)
    /// and MAIL needs a successful AUTH. The user name must be `auth`'s when that is set and
    /// may be any non-empty name otherwise. A wrong token gets RFC 7628's error challenge
    /// (`334` and base64 JSON), then `535 5.7.8` after the client's answer.
    pub oauth_token: Option<String>,
    /// Offer and accept AUTH without TLS (default false: AUTH before TLS gets `538 5.7.11`).
    pub allow_plain_auth: bool,
    /// Injected faults, by session (default none).
    pub faults: Option<FaultPlan>,
    /// What to do with commands pipelined behind the end of a message (default: accept them,
    /// as RFC 2920 allows). See [`AfterDot`].
    pub after_dot: AfterDot,
    /// Most recipients per transaction (default 1000); each RCPT beyond gets
    /// `452 4.5.3 Error: too many recipients` (RFC 5321 §4.5.3.1.10).
    pub max_recipients: usize,
    /// Advertise DSN (RFC 3461) and accept `RET`/`ENVID` on MAIL and `NOTIFY`/`ORCPT` on RCPT
    /// (default false: those parameters are refused with 555, as without the extension).
    pub dsn: bool,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            hostname: "pipemail-sink".into(),
            pipelining: true,
            chunking: true,
            size: Some(35_882_577),
            smtputf8: false,
            eight_bit_mime: true,
            latency: Duration::ZERO,
            maildir: None,
            keep_in_memory: false,
            reject: Vec::new(),
            tls: None,
            auth: None,
            oauth_token: None,
            allow_plain_auth: false,
            faults: None,
            after_dot: AfterDot::Accept,
            max_recipients: MAX_RCPTS,
            dsn: false,
        }
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkConfig")
            .field("hostname", &self.hostname)
            .field("pipelining", &self.pipelining)
            .field("chunking", &self.chunking)
            .field("size", &self.size)
            .field("smtputf8", &self.smtputf8)
            .field("eight_bit_mime", &self.eight_bit_mime)
            .field("latency", &self.latency)
            .field("maildir", &self.maildir)
            .field("keep_in_memory", &self.keep_in_memory)
            .field("reject", &self.reject)
            .field("tls", &self.tls.as_ref().map(|_| "<identity>"))
            .field(
                "auth",
                &self.auth.as_ref().map(|(user, _)| (user, "<password>")),
            )
            .field("oauth_token", &self.oauth_token.as_ref().map(|_| "<token>"))
            .field("allow_plain_auth", &self.allow_plain_auth)
            .field("faults", &self.faults)
            .field("after_dot", &self.after_dot)
            .field("dsn", &self.dsn)
            .finish()
    }
}

/// Loads a TLS identity from a PEM certificate (chain) file and a PEM PKCS#8 private key file.
pub fn load_identity(cert_pem: &Path, key_pem: &Path) -> std::io::Result<native_tls::Identity> {
    let cert = std::fs::read(cert_pem)?;
    let key = std::fs::read(key_pem)?;
    native_tls::Identity::from_pkcs8(&cert, &key)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A recipient rule: recipients matching `pattern` are rejected with `code`.
///
/// `pattern` is a glob where `*` matches any run of characters (including none); everything else
/// matches itself, case-insensitively. It is matched against the whole address, without angle
/// brackets. The reply is `<code> 5.1.1 <addr>: Recipient address rejected` for a 5xx code and
/// `<code> 4.2.0 <addr>: Recipient address rejected` for a 4xx code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectRule {
    /// Glob pattern (`*` wildcard, case-insensitive).
    pub pattern: String,
    /// Reply code, 400..=599 (typically 550 or 450).
    pub code: u16,
}

impl RejectRule {
    /// Whether `addr` matches this rule's pattern.
    pub fn matches(&self, addr: &str) -> bool {
        glob::matches(&self.pattern, addr)
    }
}

/// Why a `CODE:PATTERN` string is not a [`RejectRule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectRuleError {
    /// No `:` between code and pattern.
    #[error("expected CODE:PATTERN, e.g. 550:*@bad.example")]
    Syntax,
    /// The code is not a number in 400..=599.
    #[error("reply code must be a number from 400 to 599, got {0:?}")]
    Code(String),
    /// The pattern is empty.
    #[error("empty recipient pattern")]
    EmptyPattern,
}

impl FromStr for RejectRule {
    type Err = RejectRuleError;

    /// Parses `CODE:PATTERN`, e.g. `550:*@bad.example` or `450:slow*`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (code, pattern) = s.split_once(':').ok_or(RejectRuleError::Syntax)?;
        let code_num: u16 = code
            .trim()
            .parse()
            .map_err(|_| RejectRuleError::Code(code.to_string()))?;
        if !(400..=599).contains(&code_num) {
            return Err(RejectRuleError::Code(code.to_string()));
        }
        if pattern.is_empty() {
            return Err(RejectRuleError::EmptyPattern);
        }
        Ok(Self {
            pattern: pattern.to_string(),
            code: code_num,
        })
    }
}

/// What the server does with commands that arrive pipelined behind the end of a message (the
/// final dot, or `BDAT … LAST`): bytes it had already received when it processed the end,
/// before it had answered it.
///
/// Servers hardened after the 2023–24 SMTP smuggling advisories refuse such commands or drop
/// the connection; RFC 2920 allows the pipelining, so [`AfterDot::Accept`] is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterDot {
    /// Process them normally (RFC 2920).
    #[default]
    Accept,
    /// Answer each of them, in order after the end's own reply, with
    /// [`super::server::REFUSED_AFTER_DOT`] and do not execute it: a transaction they begin
    /// never happens. A `BDAT` among them still consumes its chunk.
    Refuse,
    /// Answer the end of data as usual (storing the message), then close the connection
    /// without reading or answering what follows.
    Drop,
}

/// The most recipients the sink takes in one transaction, whatever the configuration.
pub(super) const MAX_RCPTS: usize = 1000;
