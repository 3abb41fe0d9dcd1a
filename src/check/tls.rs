//! The negotiated TLS version and cipher, and the certificate's names, for the report.

use std::time::{Duration, Instant};

use pipemail::engine::{Event, Session, TlsPolicy};

/// Opens a second connection (same trust settings) to read the negotiated TLS version and
/// cipher, which native-tls does not expose: the engine drives greeting, EHLO and STARTTLS
/// over a blocking socket, then OpenSSL does the handshake on it.
pub(super) fn tls_version(
    o: &pipemail::driver::ConnectOptions,
) -> Result<(String, String), String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let addr = (o.target.host.as_str(), o.target.port);
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
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
    if o.session.tls != TlsPolicy::Implicit {
        let mut session = Session::new(
            pipemail::engine::Config {
                tls: TlsPolicy::Required,
                auth: None,
                transcript: false,
                ..o.session.clone()
            },
            Instant::now(),
        );
        let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
        while !session.wants_tls() {
            out.clear();
            session.poll_transmit(Instant::now(), &mut out);
            tcp.write_all(&out).map_err(|e| e.to_string())?;
            while let Some(ev) = session.poll_event() {
                if let Event::Closed(e) = ev {
                    return Err(e.map_or_else(|| "session closed".into(), |e| e.to_string()));
                }
            }
            if session.is_closed() || (out.is_empty() && session.in_flight() == 0) {
                return Err("the session ended before STARTTLS".into());
            }
            let n = tcp.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before STARTTLS".into());
            }
            session.handle_input(&buf[..n], Instant::now());
        }
    }
    let ssl = cfg.connect(&name, tcp).map_err(|e| e.to_string())?;
    let version = ssl.ssl().version_str().to_string();
    let cipher = ssl
        .ssl()
        .current_cipher()
        .map(|c| c.name().to_string())
        .unwrap_or_default();
    Ok((version, cipher))
}

pub(super) fn describe_cert(der: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
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
