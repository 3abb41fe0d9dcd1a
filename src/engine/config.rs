//! Session settings: TLS and pipelining policies, timeouts, credentials.

use std::fmt;
use std::time::Duration;

use super::pipeline::PipeliningLevel;

/// A secret (password) whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// AUTH credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password; never logged.
    pub password: Secret,
}

/// The SASL mechanism AUTH uses (RFC 4954).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    /// PLAIN (RFC 4616): user and password in the AUTH line.
    Plain,
    /// LOGIN: user and password each answering a 334 challenge.
    Login,
    /// XOAUTH2 (Google, Microsoft): user and OAuth 2.0 bearer token.
    XOAuth2,
    /// OAUTHBEARER (RFC 7628): user and OAuth 2.0 bearer token in a GS2 header.
    OAuthBearer,
}

impl AuthMechanism {
    /// The mechanism's name as servers advertise it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::XOAuth2 => "XOAUTH2",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// True for the OAuth 2.0 mechanisms, whose secret is a bearer token.
    pub fn is_oauth(self) -> bool {
        matches!(self, Self::XOAuth2 | Self::OAuthBearer)
    }
}

impl fmt::Display for AuthMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// When to pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PipeliningPolicy {
    /// Pipeline when the server advertises PIPELINING, else lock-step.
    #[default]
    Auto,
    /// Never pipeline (lock-step, one command per round trip).
    Off,
    /// Refuse to send mail when the server does not advertise PIPELINING.
    Require,
}

/// How TLS is used. The driver does the handshakes; the engine decides when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// Plain text only.
    None,
    /// STARTTLS when offered, plain text otherwise.
    #[default]
    Opportunistic,
    /// STARTTLS or no mail at all.
    Required,
    /// TLS from the first byte (port 465); the driver handshakes before the greeting.
    Implicit,
}

/// Per-state reply timeouts, in the spirit of RFC 5321 §4.5.3.2 but shorter for a CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the 220 greeting.
    pub greeting: Duration,
    /// EHLO, MAIL, RCPT, RSET, NOOP, AUTH, STARTTLS, QUIT.
    pub command: Duration,
    /// DATA's 354.
    pub data: Duration,
    /// The reply to the final dot or `BDAT LAST` (the server may be scanning the message).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            greeting: Duration::from_secs(60),
            command: Duration::from_secs(60),
            data: Duration::from_secs(60),
            data_end: Duration::from_secs(120),
        }
    }
}

impl Timeouts {
    /// All four set to one value.
    pub fn all(d: Duration) -> Self {
        Self {
            greeting: d,
            command: d,
            data: d,
            data_end: d,
        }
    }
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name sent with EHLO/HELO.
    pub helo_name: String,
    /// When to pipeline.
    pub pipelining: PipeliningPolicy,
    /// Use BDAT when the server offers PIPELINING and CHUNKING.
    pub chunking: bool,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// AUTH credentials, if any.
    pub auth: Option<Credentials>,
    /// Allow AUTH over an unencrypted connection.
    pub allow_plaintext_auth: bool,
    /// The AUTH mechanism; `None` picks PLAIN when offered, else LOGIN. With XOAUTH2 or
    /// OAUTHBEARER the credentials' password is the OAuth 2.0 bearer token.
    pub auth_mechanism: Option<AuthMechanism>,
    /// BDAT mode: most messages in flight at once.
    pub window: usize,
    /// BDAT mode: most message octets in flight at once (at least one message always goes).
    pub window_bytes: usize,
    /// Reply timeouts.
    pub timeouts: Timeouts,
    /// Emit an [`Event::Exchange`](super::Event::Exchange) for every command and its reply.
    pub transcript: bool,
    /// The pipelining level the session starts at (a campaign passes the level it learned
    /// for this host on earlier connections). It only steps down from here.
    pub pipelining_level: PipeliningLevel,
    /// The server is known to keep a refused transaction open (Exim after `503 Valid RCPT
    /// command must precede BDAT`; a campaign passes what it learned for this host): RSET
    /// precedes every MAIL written behind an unanswered end of data from the start, and the
    /// session caps the RSETs the server could count as non-mail commands (see
    /// [`Event::RsetBudgetSpent`](super::Event::RsetBudgetSpent)).
    pub rset_before_mail: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            helo_name: "localhost".into(),
            pipelining: PipeliningPolicy::Auto,
            chunking: true,
            tls: TlsPolicy::Opportunistic,
            auth: None,
            allow_plaintext_auth: false,
            auth_mechanism: None,
            window: 100,
            window_bytes: 8 << 20,
            timeouts: Timeouts::default(),
            transcript: false,
            pipelining_level: PipeliningLevel::CrossMessage,
            rset_before_mail: false,
        }
    }
}
