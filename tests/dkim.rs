//! DKIM signatures from `pipemail::deliver::dkim`, verified by two independent verifiers:
//! mail-auth's and dkimpy (Debian's python3-dkim, through `tests/support/dkim_verify.py`),
//! each with the public key served by a stub resolver. Tampered messages must fail both.
//!
//! dkimpy missing: a loud SKIPPED line, or a failure when `PIPEMAIL_REQUIRE_INTEROP=1`.

use std::collections::HashMap;
use std::hash::Hash;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use pipemail::deliver::dkim::{DkimKey, DkimSigner, KeyAlgorithm, sign_all, sign_batch};
use pipemail::deliver::unsubscribe::unsubscribe_headers;

/// Debian's python3-dkim is installed for /usr/bin/python3 (not a PATH python3).
/// `PIPEMAIL_DKIM_PYTHON` overrides it (e.g. a missing path, to see the skip).
fn python() -> String {
    std::env::var("PIPEMAIL_DKIM_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_owned())
}

fn rsa_key(bits: u32) -> DkimKey {
    let pem = PKey::from_rsa(Rsa::generate(bits).unwrap())
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    DkimKey::from_pem(&pem).unwrap()
}

fn ed_key() -> DkimKey {
    let pem = PKey::generate_ed25519()
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    DkimKey::from_pem(&pem).unwrap()
}

/// A message as `send` renders it: CRLF, folded header, unsubscribe fields, a line starting
/// with '.', trailing spaces and blank lines at the end of the body.
fn message(to: &str) -> Vec<u8> {
    let unsub = unsubscribe_headers(
        "https://news.example.com/unsubscribe?t=abc123",
        Some("unsubscribe@news.example.com"),
    )
    .unwrap();
    let mut m = Vec::new();
    m.extend_from_slice(b"From: Example News <news@News.Example.com>\r\n");
    m.extend_from_slice(format!("To: {to}\r\nCc: archive@news.example.com\r\n").as_bytes());
    m.extend_from_slice(b"Subject: =?utf-8?q?Fr=C3=BChling?= news,\r\n  folded\r\n");
    m.extend_from_slice(b"Date: Tue, 01 Dec 2026 10:15:00 +0000\r\n");
    m.extend_from_slice(b"Message-ID: <1.spring-2026@news.example.com>\r\n");
    m.extend_from_slice(b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n");
    m.extend_from_slice(&unsub.to_bytes());
    m.extend_from_slice(b"X-Campaign: spring\r\n\r\n");
    m.extend_from_slice(
        "Hello  Alice, \r\n.a line with a dot\r\n\r\nGr\u{fc}\u{df}e\t\r\n\r\n\r\n".as_bytes(),
    );
    m
}

fn signed(signers: &[DkimSigner], msg: &[u8]) -> Vec<u8> {
    let mut out = sign_all(signers, msg).unwrap();
    out.extend_from_slice(msg);
    out
}

fn records(signers: &[DkimSigner], domain: &str) -> Vec<(String, String)> {
    signers
        .iter()
        .map(|s| (format!("{}._domainkey.{domain}", s.selector()), s_key(s)))
        .collect()
}

fn s_key(s: &DkimSigner) -> String {
    s.key().dns_record().unwrap()
}

struct StubTxt(HashMap<Box<str>, Txt>);

impl ResolverCache<Box<str>, Txt> for StubTxt {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }
    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }
    fn insert(&self, _: Box<str>, _: Txt, _: Instant) {}
}

/// mail-auth's verdict for each signature, with the keys served from a stub cache.
fn mail_auth_verify(msg: &[u8], recs: &[(String, String)]) -> Vec<bool> {
    let mut map = HashMap::new();
    for (name, txt) in recs {
        let key = Arc::new(DomainKey::parse(txt.as_bytes()).unwrap());
        map.insert(
            format!("{name}.").into_boxed_str(),
            Txt::DomainKey(key.clone()),
        );
        map.insert(name.clone().into_boxed_str(), Txt::DomainKey(key));
    }
    let cache = StubTxt(map);
    let auth = MessageAuthenticator::new_cloudflare().unwrap();
    let parsed = AuthenticatedMessage::parse(msg).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out = rt.block_on(auth.verify_dkim(Parameters::new(&parsed).with_txt_cache(&cache)));
    out.iter()
        .map(|o| matches!(o.result(), DkimResult::Pass))
        .collect()
}

/// dkimpy's verdict: `Some(all pass)`, or `None` when python3-dkim is not installed.
fn python_verify(msg: &[u8], recs: &[(String, String)]) -> Option<bool> {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("msg.eml");
    std::fs::write(&m, msg).unwrap();
    let r = dir.path().join("records.txt");
    let mut f = std::fs::File::create(&r).unwrap();
    for (name, txt) in recs {
        writeln!(f, "{name}\t{txt}").unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/dkim_verify.py");
    let python = python();
    let out = match Command::new(&python).arg(&script).arg(&m).arg(&r).output() {
        Ok(o) => o,
        Err(e) => {
            skip_or_fail(&format!("{python} cannot run: {e}"));
            return None;
        }
    };
    match out.status.code() {
        Some(0) => Some(true),
        Some(1) => Some(false),
        Some(3) => {
            skip_or_fail(
                "python3-dkim is not installed (apt-get install python3-dkim python3-nacl)",
            );
            None
        }
        _ => panic!(
            "dkim_verify.py crashed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn skip_or_fail(what: &str) {
    if std::env::var("PIPEMAIL_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!(
            "dkimpy interop cannot run: {what}; PIPEMAIL_REQUIRE_INTEROP=1 makes this a failure"
        );
    }
    // Straight to stderr: libtest captures eprintln! unless --nocapture.
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\n*** SKIPPED dkimpy interop: {what}; set PIPEMAIL_REQUIRE_INTEROP=1 to make this a failure ***"
    );
}

fn both_pass(msg: &[u8], recs: &[(String, String)], n: usize) {
    let ma = mail_auth_verify(msg, recs);
    assert_eq!(
        ma,
        vec![true; n],
        "mail-auth:\n{}",
        String::from_utf8_lossy(msg)
    );
    if let Some(ok) = python_verify(msg, recs) {
        assert!(ok, "dkimpy rejected:\n{}", String::from_utf8_lossy(msg));
    }
}

fn both_fail(msg: &[u8], recs: &[(String, String)]) {
    let ma = mail_auth_verify(msg, recs);
    assert!(
        ma.iter().all(|p| !p),
        "mail-auth passed a tampered message: {ma:?}"
    );
    if let Some(ok) = python_verify(msg, recs) {
        assert!(!ok, "dkimpy passed a tampered message");
    }
}

fn replace(msg: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(msg.to_vec()).unwrap();
    assert!(s.contains(from));
    s.replacen(from, to, 1).into_bytes()
}

#[test]
fn rsa_and_ed25519_verify_in_both_verifiers() {
    let rsa = DkimSigner::new(rsa_key(2048), "rsa1", None).unwrap();
    let ed = DkimSigner::new(ed_key(), "ed1", None).unwrap();
    assert_eq!(rsa.algorithm(), KeyAlgorithm::Rsa);
    for signers in [vec![rsa.clone()], vec![ed.clone()], vec![rsa, ed]] {
        let recs = records(&signers, "news.example.com");
        let msg = signed(&signers, &message("alice@example.org"));
        both_pass(&msg, &recs, signers.len());
    }
}

#[test]
fn tampered_body_and_headers_fail() {
    let signers = vec![
        DkimSigner::new(rsa_key(2048), "rsa1", None).unwrap(),
        DkimSigner::new(ed_key(), "ed1", None).unwrap(),
    ];
    let recs = records(&signers, "news.example.com");
    let good = signed(&signers, &message("alice@example.org"));
    both_pass(&good, &recs, 2);
    // Relaxed canonicalization tolerates whitespace changes in header values...
    both_pass(
        &replace(&good, "Subject: =?utf", "Subject:    =?utf"),
        &recs,
        2,
    );
    // ...but not changed content.
    both_fail(&replace(&good, "Hello  Alice", "Hello  Mallory"), &recs);
    both_fail(
        &replace(&good, "\r\n\r\nHello", "\r\n\r\nPS: wire money\r\nHello"),
        &recs,
    );
    both_fail(
        &replace(&good, "To: alice@example.org", "To: mallory@example.org"),
        &recs,
    );
    both_fail(&replace(&good, "t=abc123", "t=abc124"), &recs);
    both_fail(
        &replace(
            &good,
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            "",
        ),
        &recs,
    );
    // From is over-signed: a second From added in transit breaks the signature.
    both_fail(
        &replace(
            &good,
            "X-Campaign",
            "From: ceo@news.example.com\r\nX-Campaign",
        ),
        &recs,
    );
}

#[test]
fn fixed_domain_and_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dkim.pem");
    let pem = PKey::generate_ed25519()
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    std::fs::write(&path, pem).unwrap();
    let loaded = DkimKey::from_file(&path).unwrap();
    let signer = DkimSigner::new(loaded.key, "sel", Some("mail.example.net")).unwrap();
    let recs = records(std::slice::from_ref(&signer), "mail.example.net");
    both_pass(&signed(&[signer], &message("bob@example.net")), &recs, 1);
}

#[test]
fn batch_signatures_verify() {
    let signers = vec![DkimSigner::new(ed_key(), "ed1", None).unwrap()];
    let recs = records(&signers, "news.example.com");
    let msgs: Vec<Vec<u8>> = (0..6)
        .map(|i| message(&format!("u{i}@example.org")))
        .collect();
    for (m, h) in msgs.iter().zip(sign_batch(&signers, &msgs, 2)) {
        let mut full = h.unwrap();
        full.extend_from_slice(m);
        assert_eq!(mail_auth_verify(&full, &recs), [true]);
    }
}

/// User + system CPU time of this process, from /proc (clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Throughput figures for the README: `cargo test --release --test dkim -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_signing() {
    let msg = message("alice@example.org");
    for (name, key, n) in [
        ("rsa-2048", rsa_key(2048), 2000),
        ("ed25519", ed_key(), 20000),
    ] {
        let signers = vec![DkimSigner::new(key, "s", None).unwrap()];
        let msgs = vec![msg.clone(); n];
        for threads in [1, 2] {
            let (t, cpu) = (Instant::now(), cpu_seconds());
            let out = sign_batch(&signers, &msgs, threads);
            let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
            assert!(out.iter().all(Result::is_ok));
            println!(
                "{name}: {threads} thread(s): {:.0} signs/s wall, {:.0} signs per CPU-second, \
                 {:.1} us CPU per message",
                n as f64 / secs,
                n as f64 / cpu,
                cpu * 1e6 / n as f64
            );
        }
    }
}

// ----- `pipemail send` end to end: messages stored by the sink's Maildir -------------------

/// Writes `pem` to `dir/name` with mode 0600 and returns its path.
fn key_file(dir: &Path, name: &str, pem: &[u8]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn rsa_pem() -> Vec<u8> {
    PKey::from_rsa(Rsa::generate(2048).unwrap())
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap()
}

fn ed_pem() -> Vec<u8> {
    PKey::generate_ed25519()
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap()
}

/// Runs `pipemail send` with `extra` flags against a sink storing into a Maildir; returns
/// the stored messages (exactly as received) and the run's stderr.
fn send_to_maildir(dir: &Path, extra: &[&str]) -> (Vec<Vec<u8>>, String, Option<i32>) {
    std::fs::write(
        dir.join("list.csv"),
        "email,name\r\nann+x@example.net,Ann\r\nbob@example.net,Bob\r\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("t.eml"),
        "From: News <news@news.example.com>\nTo: {{ name }} <{{ email }}>\n\
         Subject: Fr\u{fc}hling for {{ name }}\n\n.Hello {{ name }}  \n\n\n",
    )
    .unwrap();
    let maildir = dir.join("Maildir");
    let sink = pipemail::sink::SinkHandle::start(
        "127.0.0.1:0".parse().unwrap(),
        pipemail::sink::SinkConfig {
            maildir: Some(maildir.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let host = format!("127.0.0.1:{}", sink.local_addr().port());
    let out = assert_cmd::Command::cargo_bin("pipemail")
        .unwrap()
        .current_dir(dir)
        .args(["send", "--host", &host, "--tls", "none", "-q"])
        .args(["--list", "list.csv", "--template", "t.eml", "-c", "2"])
        .args([
            "--unsubscribe",
            "https://news.example.com/u?e={{ email|urlencode }}",
        ])
        .args(extra)
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut msgs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(maildir.join("new")) {
        for e in rd {
            msgs.push(std::fs::read(e.unwrap().path()).unwrap());
        }
    }
    (msgs, stderr, out.status.code())
}

#[test]
fn send_signs_rsa_ed25519_and_both_verified_from_the_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ed) = (rsa_pem(), ed_pem());
    let rsa_path = key_file(dir.path(), "rsa.pem", &rsa);
    let ed_path = key_file(dir.path(), "ed.pem", &ed);
    let rsa_signer = DkimSigner::new(DkimKey::from_pem(&rsa).unwrap(), "rsa1", None).unwrap();
    let ed_signer = DkimSigner::new(DkimKey::from_pem(&ed).unwrap(), "ed1", None).unwrap();
    let (r, e) = (rsa_path.to_str().unwrap(), ed_path.to_str().unwrap());
    let cases: [(&[&str], Vec<DkimSigner>); 3] = [
        (
            &["--dkim-key", r, "--dkim-selector", "rsa1"],
            vec![rsa_signer.clone()],
        ),
        (
            &["--dkim-key", e, "--dkim-selector", "ed1"],
            vec![ed_signer.clone()],
        ),
        (
            &[
                "--dkim-key",
                r,
                "--dkim-selector",
                "rsa1",
                "--dkim-key",
                e,
                "--dkim-selector",
                "ed1",
            ],
            vec![rsa_signer, ed_signer],
        ),
    ];
    for (flags, signers) in cases {
        let _ = std::fs::remove_dir_all(dir.path().join("Maildir"));
        let (msgs, stderr, code) = send_to_maildir(dir.path(), flags);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(!stderr.contains("warning"), "{stderr}");
        assert_eq!(msgs.len(), 2, "{stderr}");
        let recs = records(&signers, "news.example.com");
        for m in &msgs {
            let text = String::from_utf8_lossy(m);
            assert_eq!(
                text.matches("DKIM-Signature:").count(),
                signers.len(),
                "{text}"
            );
            assert!(text.contains("List-Unsubscribe-Post"), "{text}");
            both_pass(m, &recs, signers.len());
        }
    }
}

#[test]
fn send_refuses_a_bad_or_missing_key_and_warns_about_a_readable_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bad = key_file(dir.path(), "bad.pem", b"-----BEGIN NONSENSE-----\n");
    let (msgs, stderr, code) = send_to_maildir(
        dir.path(),
        &["--dkim-key", bad.to_str().unwrap(), "--dkim-selector", "s"],
    );
    assert_eq!(code, Some(65), "{stderr}");
    assert!(msgs.is_empty());
    let (_, stderr, code) = send_to_maildir(
        dir.path(),
        &["--dkim-key", "missing.pem", "--dkim-selector", "s"],
    );
    assert_eq!(code, Some(66), "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
    let open = key_file(dir.path(), "open.pem", &ed_pem());
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (msgs, stderr, code) = send_to_maildir(
        dir.path(),
        &["--dkim-key", open.to_str().unwrap(), "--dkim-selector", "s"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(msgs.len(), 2);
    assert!(
        stderr.contains("warning") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}
