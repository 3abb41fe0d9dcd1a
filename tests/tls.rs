//! TLS through the driver: implicit TLS (port-465 style) against a small TLS server, and
//! STARTTLS against the built-in sink with a self-signed certificate: refused unless
//! trusted with a CA file or `insecure`. Certificates come from the openssl CLI.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pipemail::driver::{ConnectOptions, Target, TlsHints, TlsSettings};
use pipemail::engine::{self, TlsPolicy};
use pipemail::pipeliner::{ClientError, Envelope, Pipeliner};
use pipemail::sink::{SinkConfig, SinkHandle, load_identity};

/// Makes cert.pem/key.pem for `localhost` in `dir`; None (and a loud line) without openssl.
fn make_cert(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("PIPEMAIL_REQUIRE_INTEROP").is_err(),
            "openssl is required for TLS tests"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED TLS test: openssl CLI not found");
        return None;
    }
    Some((cert, key))
}

fn options(port: u16, tls: TlsPolicy, settings: TlsSettings) -> ConnectOptions {
    ConnectOptions {
        target: Target {
            host: "127.0.0.1".into(),
            port,
        },
        session: engine::Config {
            tls,
            helo_name: "tls.test".into(),
            timeouts: engine::Timeouts::all(Duration::from_secs(10)),
            ..engine::Config::default()
        },
        tls: settings,
        connect_timeout: Duration::from_secs(10),
    }
}

fn trusted(cert: &Path) -> TlsSettings {
    TlsSettings {
        insecure: false,
        ca_files: vec![cert.to_path_buf()],
        server_name: Some("localhost".into()),
        ..TlsSettings::default()
    }
}

/// An implicit-TLS SMTP server: TLS from the first byte, answers each line in order.
fn implicit_tls_server(cert: &Path, key: &Path) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let identity = load_identity(cert, key).expect("identity");
    let acceptor = native_tls::TlsAcceptor::new(identity).expect("acceptor");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let t = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let tls = acceptor.accept(tcp).expect("handshake");
        let mut r = BufReader::new(tls);
        let mut lines = Vec::new();
        r.get_mut()
            .write_all(b"220 implicit ESMTP\r\n")
            .expect("write");
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).expect("read") == 0 {
                break;
            }
            let cmd = line.trim_end().to_string();
            let reply: &[u8] = if in_data {
                if cmd == "." {
                    in_data = false;
                    b"250 2.0.0 queued\r\n"
                } else {
                    lines.push(cmd);
                    continue;
                }
            } else if cmd.starts_with("EHLO") {
                b"250-implicit\r\n250 PIPELINING\r\n"
            } else if cmd == "DATA" {
                in_data = true;
                b"354 go\r\n"
            } else if cmd == "QUIT" {
                r.get_mut().write_all(b"221 bye\r\n").expect("write");
                lines.push(cmd);
                break;
            } else {
                b"250 ok\r\n"
            };
            lines.push(cmd);
            r.get_mut().write_all(reply).expect("write");
        }
        lines
    });
    (port, t)
}

#[test]
fn implicit_tls_delivers_and_verifies_the_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((cert, key)) = make_cert(dir.path()) else {
        return;
    };
    let (port, server) = implicit_tls_server(&cert, &key);
    let mut smtp =
        Pipeliner::connect(options(port, TlsPolicy::Implicit, trusted(&cert))).expect("connect");
    assert!(smtp.pipeline(&Envelope::new(
        "a@example.org",
        ["b@example.net"],
        "Subject: t\n\nhello over TLS\n"
    )));
    assert!(smtp.flush());
    assert_eq!(smtp.rcpts_succeeded(), ["b@example.net"]);
    smtp.quit().expect("quit");
    let lines = server.join().expect("server");
    assert_eq!(lines[0], "EHLO tls.test");
    assert!(lines.contains(&"hello over TLS".to_string()));
    assert_eq!(lines.last().map(String::as_str), Some("QUIT"));
}

#[test]
fn implicit_tls_untrusted_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((cert, key)) = make_cert(dir.path()) else {
        return;
    };
    let (port, server) = implicit_tls_server(&cert, &key);
    let err = Pipeliner::connect(options(port, TlsPolicy::Implicit, TlsSettings::default()))
        .expect_err("must refuse");
    assert!(matches!(err, ClientError::Connect(_)), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    drop(server); // the server thread's handshake fails; it is not joined
}

fn tls_sink(cert: &Path, key: &Path) -> SinkHandle {
    let cfg = SinkConfig {
        tls: Some(load_identity(cert, key).expect("identity")),
        keep_in_memory: true,
        ..SinkConfig::default()
    };
    SinkHandle::start("127.0.0.1:0".parse().expect("addr"), cfg).expect("sink")
}

#[test]
fn starttls_self_signed_needs_ca_file_or_insecure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((cert, key)) = make_cert(dir.path()) else {
        return;
    };
    let sink = tls_sink(&cert, &key);
    let port = sink.local_addr().port();

    // Not trusted: refused, nothing sent.
    let err = Pipeliner::connect(options(
        port,
        TlsPolicy::Required,
        TlsSettings {
            server_name: Some("localhost".into()),
            // The advice is the caller's (the CLI names its flags); the driver attaches it.
            hints: TlsHints {
                untrusted: "add it with --ca-file".into(),
                ..TlsHints::default()
            },
            ..TlsSettings::default()
        },
    ))
    .expect_err("untrusted");
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    assert!(
        err.to_string().contains("--ca-file"),
        "the error says what to do: {err}"
    );

    // Trusted through --ca-file.
    let mut smtp =
        Pipeliner::connect(options(port, TlsPolicy::Required, trusted(&cert))).expect("ca-file");
    assert!(smtp.pipeline(&Envelope::new(
        "a@example.org",
        ["ca@example.net"],
        "Subject: ca\n\nx\n"
    )));
    assert!(smtp.flush());
    smtp.quit().expect("quit");

    // Accepted with insecure.
    let mut smtp = Pipeliner::connect(options(
        port,
        TlsPolicy::Required,
        TlsSettings {
            insecure: true,
            ..TlsSettings::default()
        },
    ))
    .expect("insecure");
    assert!(smtp.pipeline(&Envelope::new(
        "a@example.org",
        ["insecure@example.net"],
        "Subject: i\n\nx\n"
    )));
    assert!(smtp.flush());
    smtp.quit().expect("quit");

    let rcpts: Vec<String> = sink.messages().into_iter().flat_map(|m| m.rcpts).collect();
    assert_eq!(rcpts, ["ca@example.net", "insecure@example.net"]);
}

#[test]
fn starttls_required_but_not_offered_sends_nothing() {
    let sink = SinkHandle::start(
        "127.0.0.1:0".parse().expect("addr"),
        SinkConfig {
            keep_in_memory: true,
            ..SinkConfig::default()
        },
    )
    .expect("sink");
    let err = Pipeliner::connect(options(
        sink.local_addr().port(),
        TlsPolicy::Required,
        TlsSettings::default(),
    ))
    .expect_err("no STARTTLS");
    assert!(err.to_string().contains("does not offer STARTTLS"), "{err}");
    assert!(sink.messages().is_empty());
}
