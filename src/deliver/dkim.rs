//! DKIM signing (RFC 6376) with `rsa-sha256` and `ed25519-sha256` (RFC 8463), relaxed/relaxed.
//!
//! Canonicalization, header selection and the `DKIM-Signature` syntax come from the
//! [`mail_auth`] crate. The RSA private-key operation is done by OpenSSL (already a
//! dependency for TLS), which signs RSA about three times faster than a pure-Rust backend;
//! Ed25519 signs with mail-auth's own ed25519-dalek key, made once from the key OpenSSL read:
//! OpenSSL 3.0 spends more time setting up each Ed25519 operation (the algorithm fetch walks
//! its whole name map, under a lock shared by the signing threads) than signing.
//!
//! Signed header fields, when present in the message: From, To, Cc, Subject, Date, Message-ID,
//! MIME-Version, Content-Type, List-Unsubscribe, List-Unsubscribe-Post. From is over-signed
//! (listed once more than it occurs), so a second From added in transit breaks the signature.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use pipemail::deliver::dkim::{DkimKey, DkimSigner};
//! let loaded = DkimKey::from_file("dkim.pem")?;
//! if let Some(w) = &loaded.warning {
//!     eprintln!("pipemail: warning: {w}");
//! }
//! let signer = DkimSigner::new(loaded.key, "s1", None)?; // d= taken from each From
//! let message = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
//! let header = signer.sign(message)?; // prepend to the message before dot-stuffing
//! # let _ = header; Ok(()) }
//! ```

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use mail_auth::common::crypto::{CryptoError, Ed25519Key, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner as MailAuthSigner};
use mail_parser::MessageParser;
use openssl::md::Md;
use openssl::pkey::{Id, PKey, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;

/// Header fields signed when present, in the order they are listed in `h=`.
pub const SIGNED_HEADERS: [&str; 10] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Smallest RSA key accepted (RFC 8301 §3.2: verifiers must not accept less than 1024 bits).
pub const MIN_RSA_BITS: u32 = 1024;

/// Why a key could not be loaded or a message not signed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file could not be read.
    #[error("cannot read DKIM key {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a PEM private key (PKCS#1, PKCS#8 or SEC1).
    #[error("DKIM key {path}: not a PEM private key (a public key or certificate will not do)")]
    NotPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// A private key of a type DKIM cannot use (e.g. EC P-256).
    #[error("DKIM key {path}: {kind} keys are not supported (use RSA or Ed25519)")]
    WrongType {
        /// The key file.
        path: PathBuf,
        /// The key type found.
        kind: String,
    },
    /// An RSA key shorter than [`MIN_RSA_BITS`].
    #[error("DKIM key {path}: RSA key of {bits} bits is too short (at least 1024, 2048 advised)")]
    TooShort {
        /// The key file.
        path: PathBuf,
        /// Its size in bits.
        bits: u32,
    },
    /// A selector or domain that is not a DNS name.
    #[error("invalid DKIM {what} {value:?}: expected a DNS name (letters, digits, '-', '.')")]
    BadName {
        /// `selector` or `domain`.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// No domain was configured and the message's From has no domain to take it from.
    #[error("cannot DKIM-sign: the message has no From address with a domain")]
    NoFromDomain,
    /// The message has none of the header fields to sign.
    #[error("cannot DKIM-sign: the message has no From header")]
    NoHeaders,
    /// The cryptographic library failed.
    #[error("DKIM signing failed: {0}")]
    Sign(String),
}

impl DkimError {
    /// The sysexits code for a key or selector problem found at startup: 66 for an
    /// unreadable key file, 65 for a bad key, selector or domain, 70 for a signing failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Read { .. } => 66,
            Self::Sign(_) => 70,
            _ => 65,
        }
    }
}

/// DKIM key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA, signing `rsa-sha256`.
    Rsa,
    /// Ed25519, signing `ed25519-sha256` (RFC 8463).
    Ed25519,
}

/// A warning about a key that was loaded anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWarning {
    /// The key file.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

impl fmt::Display for KeyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DKIM key {} is readable by group or others (mode {:04o}); run chmod 600 on it",
            self.path.display(),
            self.mode & 0o7777
        )
    }
}

/// A private key, read once. Cheap to clone (shared); `Debug` never shows key material.
#[derive(Clone)]
pub struct DkimKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    pkey: PKey<Private>,
    algorithm: KeyAlgorithm,
    /// For Ed25519: the same key for ed25519-dalek, which signs it.
    ed25519: Option<Ed25519Key>,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("algorithm", &self.inner.algorithm)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A key loaded from a file, with a warning if its permissions are too open.
#[derive(Debug)]
pub struct LoadedKey {
    /// The key.
    pub key: DkimKey,
    /// Set when the file is readable by group or others.
    pub warning: Option<KeyWarning>,
}

impl DkimKey {
    /// Reads a PEM private key (RSA or Ed25519) from `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<LoadedKey, DkimError> {
        let path = path.as_ref();
        let read_err = |source| DkimError::Read {
            path: path.to_owned(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode();
        let pem = std::fs::read(path).map_err(read_err)?;
        let key = Self::from_pem_named(&pem, path)?;
        let warning = (mode & 0o077 != 0).then(|| KeyWarning {
            path: path.to_owned(),
            mode,
        });
        Ok(LoadedKey { key, warning })
    }

    /// Parses a PEM private key held in memory.
    pub fn from_pem(pem: &[u8]) -> Result<Self, DkimError> {
        Self::from_pem_named(pem, Path::new("<memory>"))
    }

    fn from_pem_named(pem: &[u8], path: &Path) -> Result<Self, DkimError> {
        let pkey = PKey::private_key_from_pem(pem).map_err(|_| DkimError::NotPrivateKey {
            path: path.to_owned(),
        })?;
        let algorithm = match pkey.id() {
            Id::RSA => {
                let bits = pkey.bits();
                if bits < MIN_RSA_BITS {
                    return Err(DkimError::TooShort {
                        path: path.to_owned(),
                        bits,
                    });
                }
                KeyAlgorithm::Rsa
            }
            Id::ED25519 => KeyAlgorithm::Ed25519,
            other => {
                let kind = match other {
                    Id::EC => "EC".to_owned(),
                    Id::DSA => "DSA".to_owned(),
                    Id::ED448 => "Ed448".to_owned(),
                    Id::RSA_PSS => "RSA-PSS".to_owned(),
                    id => format!("type {}", id.as_raw()),
                };
                return Err(DkimError::WrongType {
                    path: path.to_owned(),
                    kind,
                });
            }
        };
        let ed25519 = match algorithm {
            KeyAlgorithm::Rsa => None,
            KeyAlgorithm::Ed25519 => {
                Some(dalek_key(&pkey).ok_or_else(|| DkimError::NotPrivateKey {
                    path: path.to_owned(),
                })?)
            }
        };
        Ok(Self {
            inner: Arc::new(KeyInner {
                pkey,
                algorithm,
                ed25519,
            }),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.inner.algorithm
    }

    /// The DNS TXT record to publish at `<selector>._domainkey.<domain>`, e.g.
    /// `v=DKIM1; k=rsa; p=MIIB…` (RSA: SubjectPublicKeyInfo; Ed25519: the raw 32-byte key).
    pub fn dns_record(&self) -> Result<String, DkimError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let (k, public) = match self.inner.algorithm {
            KeyAlgorithm::Rsa => ("rsa", self.inner.pkey.public_key_to_der()),
            KeyAlgorithm::Ed25519 => ("ed25519", self.inner.pkey.raw_public_key()),
        };
        let public = public.map_err(|e| DkimError::Sign(e.to_string()))?;
        Ok(format!("v=DKIM1; k={k}; p={}", b64.encode(public)))
    }

    /// RSA PKCS#1 v1.5 over a SHA-256 digest, by OpenSSL.
    fn rsa_sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let mut out = Vec::with_capacity(512);
        let mut ctx = PkeyCtx::new(&self.inner.pkey)?;
        ctx.sign_init()?;
        ctx.set_rsa_padding(Padding::PKCS1)?;
        ctx.set_signature_md(Md::sha256())?;
        ctx.sign_to_vec(digest, &mut out)?;
        Ok(out)
    }
}

/// The Ed25519 key OpenSSL read, as an ed25519-dalek key (seed and public key checked to
/// match); `None` if OpenSSL cannot export it.
fn dalek_key(pkey: &PKey<Private>) -> Option<Ed25519Key> {
    let mut seed = pkey.raw_private_key().ok()?;
    let public = pkey.raw_public_key().ok()?;
    let key = Ed25519Key::from_seed_and_public_key(&seed, &public).ok();
    seed.fill(0);
    key
}

/// The key as mail-auth sees it: hashing by mail-auth, the RSA private-key step by OpenSSL,
/// Ed25519 by ed25519-dalek.
struct KeyRef(DkimKey);

impl SigningKey for KeyRef {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        // RFC 8463 §3: Ed25519 (pure) over the SHA-256 hash of the signed data.
        if let Some(ed) = &self.0.inner.ed25519 {
            return ed.sign(input);
        }
        let digest = self.hash(input);
        self.0
            .rsa_sign_digest(digest.as_ref())
            .map_err(|e| mail_auth::Error::Crypto(CryptoError::Library(e.to_string())))
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        match self.0.inner.algorithm {
            KeyAlgorithm::Rsa => mail_auth::common::crypto::Algorithm::RsaSha256,
            KeyAlgorithm::Ed25519 => mail_auth::common::crypto::Algorithm::Ed25519Sha256,
        }
    }
}

/// Signs messages with one key, selector and (optionally fixed) domain. `Send + Sync`: share
/// it (or an `Arc` of it) with worker threads.
#[derive(Debug, Clone)]
pub struct DkimSigner {
    key: DkimKey,
    selector: String,
    domain: Option<String>,
}

fn check_name(what: &'static str, value: &str) -> Result<String, DkimError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(DkimError::BadName {
            what,
            value: value.to_owned(),
        })
    }
}

impl DkimSigner {
    /// A signer for `selector`; `domain` (`d=`) defaults to each message's From domain, which
    /// is what DMARC alignment wants.
    pub fn new(key: DkimKey, selector: &str, domain: Option<&str>) -> Result<Self, DkimError> {
        Ok(Self {
            key,
            selector: check_name("selector", selector)?,
            domain: domain.map(|d| check_name("domain", d)).transpose()?,
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.key.algorithm()
    }

    /// The key (e.g. for [`DkimKey::dns_record`]).
    pub fn key(&self) -> &DkimKey {
        &self.key
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Signs a fully rendered message (CRLF line endings, as on the wire before
    /// dot-stuffing) and returns the `DKIM-Signature:` header field, CRLF-terminated, to
    /// prepend to it.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let (present, from_domain) = scan_headers(message);
        if present.first() != Some(&"From") {
            return Err(DkimError::NoHeaders);
        }
        let domain = match (&self.domain, from_domain) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => check_name("domain", &d).map_err(|_| DkimError::NoFromDomain)?,
            (None, None) => return Err(DkimError::NoFromDomain),
        };
        let mut headers = present;
        headers.push("From"); // over-sign: the extra, unmatched From signs its absence
        let signer = MailAuthSigner::from_key(KeyRef(self.key.clone()))
            .domain(domain)
            .selector(self.selector.clone())
            .headers(headers)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        let signature = signer
            .sign(message)
            .map_err(|e| DkimError::Sign(e.to_string()))?;
        Ok(signature.to_header().into_bytes())
    }
}

/// The [`SIGNED_HEADERS`] present in the message (From first if present), and From's domain.
fn scan_headers(message: &[u8]) -> (Vec<&'static str>, Option<String>) {
    // Only From's value is needed: the other fields are skipped, not parsed (dates,
    // addresses, encoded words), and the parser is built once.
    static PARSER: std::sync::OnceLock<MessageParser> = std::sync::OnceLock::new();
    let parser = PARSER.get_or_init(|| {
        MessageParser::new()
            .header_address(mail_parser::HeaderName::From)
            .default_header_ignore()
    });
    let Some(parsed) = parser.parse_headers(message) else {
        return (Vec::new(), None);
    };
    let mut present: Vec<&'static str> = SIGNED_HEADERS
        .iter()
        .copied()
        .filter(|name| {
            parsed
                .headers()
                .iter()
                .any(|h| h.name().eq_ignore_ascii_case(name))
        })
        .collect();
    present.dedup();
    let domain = parsed
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .and_then(|a| a.rsplit_once('@'))
        .map(|(_, d)| d.trim().to_owned());
    (present, domain)
}

/// Signs with every signer in turn (e.g. RSA then Ed25519) and returns the header fields to
/// prepend, in order.
pub fn sign_all(signers: &[DkimSigner], message: &[u8]) -> Result<Vec<u8>, DkimError> {
    let mut out = Vec::with_capacity(signers.len() * 600);
    for s in signers {
        out.extend_from_slice(&s.sign(message)?);
    }
    Ok(out)
}

/// Signs a batch of messages on `threads` OS threads (0 = all cores) with [`sign_all`];
/// results are in input order. Meant to run off the connection tasks (e.g. from
/// `tokio::task::spawn_blocking`), a batch at a time.
pub fn sign_batch<M: AsRef<[u8]> + Sync>(
    signers: &[DkimSigner],
    messages: &[M],
    threads: usize,
) -> Vec<Result<Vec<u8>, DkimError>> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    if threads <= 1 || messages.len() <= 1 {
        return messages
            .iter()
            .map(|m| sign_all(signers, m.as_ref()))
            .collect();
    }
    let chunk = messages.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = messages
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|m| sign_all(signers, m.as_ref()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests;
