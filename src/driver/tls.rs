//! native-tls connector setup (verification on by default, extra CA files, an insecure
//! switch) and readable handshake errors. The advice printed with an error comes from the
//! caller's [`TlsHints`]: this module knows no command-line flags.

use std::path::PathBuf;
use std::sync::Arc;

use native_tls::{Certificate, Protocol, TlsConnector};

use crate::engine::{IoFailure, TlsFailure, TlsFailureKind};

/// Advice added to a failed handshake's message, by kind of failure. The defaults describe
/// the problem; a front end replaces them with what its user can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsHints {
    /// The certificate does not chain to a trusted CA.
    pub untrusted: String,
    /// The certificate does not name the host.
    pub name_mismatch: String,
    /// The certificate has expired.
    pub expired: String,
}

impl Default for TlsHints {
    fn default() -> Self {
        Self {
            untrusted: "the certificate is not signed by a trusted CA".into(),
            name_mismatch: "the certificate does not name this host".into(),
            expired: "the certificate has expired".into(),
        }
    }
}

/// How certificates are checked.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Accept any certificate and any name (loudly discouraged; for tests and lab servers).
    pub insecure: bool,
    /// Extra trusted CA certificates (PEM), added to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// Name to verify the certificate against (and send as SNI); defaults to the host.
    pub server_name: Option<String>,
    /// Advice printed with handshake errors.
    pub hints: TlsHints,
}

/// TLS could not be set up before any handshake.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsSetupError {
    /// A CA file could not be read.
    #[error("cannot read CA file {}: {error}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        error: IoFailure,
    },
    /// A CA file is not a PEM certificate.
    #[error("CA file {} is not a PEM certificate: {error}", path.display())]
    ParseCa {
        /// The file.
        path: PathBuf,
        /// What the TLS library said.
        error: Arc<native_tls::Error>,
    },
    /// The TLS library refused the configuration.
    #[error("cannot set up TLS: {0}")]
    Build(Arc<native_tls::Error>),
}

/// Builds the connector; a CA file that cannot be read or parsed is an error.
pub(crate) fn connector(s: &TlsSettings) -> Result<tokio_native_tls::TlsConnector, TlsSetupError> {
    let mut b = TlsConnector::builder();
    b.min_protocol_version(Some(Protocol::Tlsv12));
    if s.insecure {
        b.danger_accept_invalid_certs(true);
        b.danger_accept_invalid_hostnames(true);
    }
    for path in &s.ca_files {
        let pem = std::fs::read(path).map_err(|e| TlsSetupError::ReadCa {
            path: path.clone(),
            error: e.into(),
        })?;
        let cert = Certificate::from_pem(&pem).map_err(|e| TlsSetupError::ParseCa {
            path: path.clone(),
            error: Arc::new(e),
        })?;
        b.add_root_certificate(cert);
    }
    let c = b.build().map_err(|e| TlsSetupError::Build(Arc::new(e)))?;
    Ok(tokio_native_tls::TlsConnector::from(c))
}

/// Classifies a handshake error and attaches the caller's hint for that kind.
pub(crate) fn explain(err: native_tls::Error, host: &str, hints: &TlsHints) -> TlsFailure {
    let text = err.to_string();
    let kind = if text.contains("self-signed")
        || text.contains("self signed")
        || text.contains("unable to get local issuer")
    {
        TlsFailureKind::Untrusted
    } else if text.contains("hostname mismatch") || text.contains("Hostname mismatch") {
        TlsFailureKind::NameMismatch
    } else if text.contains("expired") {
        TlsFailureKind::Expired
    } else {
        TlsFailureKind::Other
    };
    let hint = match kind {
        TlsFailureKind::Untrusted => hints.untrusted.as_str(),
        TlsFailureKind::NameMismatch => hints.name_mismatch.as_str(),
        TlsFailureKind::Expired => hints.expired.as_str(),
        _ => "",
    };
    TlsFailure::new(kind, text)
        .with_host(host)
        .with_hint(hint)
        .with_source(err)
}
