//! native-tls connector setup: verification on by default, extra CA files, `--insecure`.

use std::path::PathBuf;

use native_tls::{Certificate, Protocol, TlsConnector};

/// How certificates are checked.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Accept any certificate and any name (loudly discouraged; for tests and lab servers).
    pub insecure: bool,
    /// Extra trusted CA certificates (PEM), added to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// Name to verify the certificate against (and send as SNI); defaults to the host.
    pub server_name: Option<String>,
}

/// Builds the connector; a CA file that cannot be read or parsed is an error.
pub(crate) fn connector(s: &TlsSettings) -> Result<tokio_native_tls::TlsConnector, String> {
    let mut b = TlsConnector::builder();
    b.min_protocol_version(Some(Protocol::Tlsv12));
    if s.insecure {
        b.danger_accept_invalid_certs(true);
        b.danger_accept_invalid_hostnames(true);
    }
    for path in &s.ca_files {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| format!("CA file {} is not a PEM certificate: {e}", path.display()))?;
        b.add_root_certificate(cert);
    }
    let c = b.build().map_err(|e| format!("cannot set up TLS: {e}"))?;
    Ok(tokio_native_tls::TlsConnector::from(c))
}

/// Makes a handshake error readable: says what to try.
pub(crate) fn explain(err: &native_tls::Error, host: &str) -> String {
    let text = err.to_string();
    let hint = if text.contains("self-signed")
        || text.contains("self signed")
        || text.contains("unable to get local issuer")
    {
        " (the certificate is not signed by a trusted CA: add it with --ca-file, or use --insecure for a test server)"
    } else if text.contains("hostname mismatch") || text.contains("Hostname mismatch") {
        " (the certificate does not name this host: connect by the name it was issued for, or set --tls-name)"
    } else if text.contains("expired") {
        " (the certificate has expired)"
    } else {
        ""
    };
    format!("{host}: {text}{hint}")
}
