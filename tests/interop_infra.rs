//! Proves the interop test servers in `tests/support` work, with a plain lock-step SMTP
//! conversation over `std::net::TcpStream` (no pipemail code involved).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::mta::{ScriptedMta, strip_received};
use support::{AioSmtpd, PostfixSmtpd, SmtpSink, crlf_to_lf, strip_delivery_headers};

const WAIT: Duration = Duration::from_secs(15);

/// A minimal lock-step SMTP client for these checks.
struct Conn {
    reader: BufReader<TcpStream>,
}

/// One (possibly multi-line) reply: the code and every line's text after `NNN-`/`NNN `.
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> (Self, Reply) {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("set_read_timeout");
        let mut conn = Self {
            reader: BufReader::new(stream),
        };
        let greeting = conn.reply();
        assert_eq!(greeting.code, 220, "greeting {greeting:?}");
        (conn, greeting)
    }

    fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed; replies so far {lines:?}");
            let line = line.trim_end_matches(['\r', '\n']);
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Reply { code, lines };
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// EHLO; returns the extension keywords (upper case, without parameters).
    fn ehlo(&mut self) -> Vec<String> {
        let r = self.cmd("EHLO client.example.org");
        assert_eq!(r.code, 250, "EHLO {r:?}");
        r.lines[1..]
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_ascii_uppercase)
            .collect()
    }

    /// MAIL, RCPT for each recipient, DATA and the dot-stuffed message; returns the RCPT
    /// codes and the final reply (None when no recipient was accepted).
    fn send_mail(
        &mut self,
        from: &str,
        rcpts: &[&str],
        message: &[u8],
    ) -> (Vec<u16>, Option<Reply>) {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert_eq!(r.code, 250, "MAIL {r:?}");
        let codes: Vec<u16> = rcpts
            .iter()
            .map(|rcpt| self.cmd(&format!("RCPT TO:<{rcpt}>")).code)
            .collect();
        if !codes.contains(&250) {
            let r = self.cmd("RSET");
            assert_eq!(r.code, 250, "RSET {r:?}");
            return (codes, None);
        }
        let r = self.cmd("DATA");
        assert_eq!(r.code, 354, "DATA {r:?}");
        self.send(&dot_stuff(message));
        self.send(b".\r\n");
        (codes, Some(self.reply()))
    }

    fn quit(mut self) {
        let r = self.cmd("QUIT");
        assert_eq!(r.code, 221, "QUIT {r:?}");
    }
}

/// Dot-stuffs a message with CRLF line ends that ends in CRLF.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    assert!(message.ends_with(b"\r\n"));
    let mut out = Vec::with_capacity(message.len() + 16);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

/// A message with a header section, a leading dot line, a lone-dot-looking line, 8-bit
/// bytes and a long line, all with CRLF line ends.
fn test_message(id: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Sender <sender@example.org>\r\n\
         To: Rcpt <rcpt@example.net>\r\n\
         Subject: interop infra {id}\r\n\
         Message-ID: <{id}@pipemail.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Hello.\r\n\
         .leading dot\r\n\
         .\r\n\
         ..two dots\r\n\
         caf\u{e9} \u{2014} 8-bit\r\n"
    )
    .into_bytes();
    m.extend(std::iter::repeat_n(b'x', 990));
    m.extend_from_slice(b"\r\nlast line\r\n");
    m
}

#[test]
fn smtp_sink_counts_one_message() {
    let Some(sink) = SmtpSink::start(&[]) else {
        return;
    };
    assert_eq!(sink.counters(), support::SinkCounters::default());
    let (mut c, _) = Conn::connect(sink.addr());
    let ext = c.ehlo();
    assert!(ext.contains(&"PIPELINING".to_owned()), "{ext:?}");
    assert!(!ext.contains(&"CHUNKING".to_owned()), "{ext:?}");
    let (codes, done) = c.send_mail("s@example.org", &["r@example.net"], &test_message("sink"));
    assert_eq!(codes, [250]);
    assert_eq!(done.expect("DATA reply").code, 250);
    c.quit();
    let counters = sink.wait_for_sessions(1, WAIT);
    assert_eq!(
        counters,
        support::SinkCounters {
            sess: 1,
            quit: 1,
            mesg: 1
        },
        "smtp-sink stderr: {}",
        sink.stderr()
    );
}

#[test]
fn smtp_sink_extra_args_turn_pipelining_off() {
    let Some(sink) = SmtpSink::start(&["-p"]) else {
        return;
    };
    let (mut c, _) = Conn::connect(sink.addr());
    let ext = c.ehlo();
    assert!(!ext.contains(&"PIPELINING".to_owned()), "{ext:?}");
    c.quit();
    assert_eq!(sink.wait_for_sessions(1, WAIT).quit, 1);
}

#[test]
fn postfix_advertises_pipelining_chunking_starttls() {
    let Some(pf) = PostfixSmtpd::start() else {
        return;
    };
    let (mut c, greeting) = Conn::connect(pf.addr());
    assert!(greeting.lines[0].contains("ESMTP Postfix"), "{greeting:?}");
    let ext = c.ehlo();
    for want in [
        "PIPELINING",
        "CHUNKING",
        "STARTTLS",
        "8BITMIME",
        "SIZE",
        "SMTPUTF8",
    ] {
        assert!(
            ext.contains(&want.to_owned()),
            "{want} missing from {ext:?}"
        );
    }
    c.quit();
}

#[test]
fn postfix_delivers_byte_exact_message_to_maildir() {
    let Some(pf) = PostfixSmtpd::start() else {
        return;
    };
    let message = test_message("postfix");
    let (mut c, _) = Conn::connect(pf.addr());
    c.ehlo();
    let (codes, done) = c.send_mail("sender@example.org", &["rcpt@example.net"], &message);
    assert_eq!(codes, [250]);
    let done = done.expect("DATA reply");
    assert_eq!(done.code, 250, "{done:?}");
    c.quit();

    let delivered = pf.wait_for_messages(1, WAIT);
    assert_eq!(delivered.len(), 1, "maillog:\n{}", pf.maillog());
    let raw = &delivered[0];
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("Return-Path: <sender@example.org>"));
    assert_eq!(lines.next(), Some("X-Original-To: rcpt@example.net"));
    assert_eq!(lines.next(), Some("Delivered-To: rcpt@example.net"));
    let received = lines.next().unwrap_or_default();
    assert!(
        received.starts_with("Received: from client.example.org (unknown [127.0.0.1])"),
        "{received}"
    );
    let body = strip_delivery_headers(raw);
    assert_eq!(
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&crlf_to_lf(&message))
    );
    assert_eq!(body, crlf_to_lf(&message).as_slice());
}

#[test]
fn postfix_mixes_250_450_550_recipients() {
    let Some(pf) = PostfixSmtpd::start() else {
        return;
    };
    let (mut c, _) = Conn::connect(pf.addr());
    c.ehlo();
    let rcpts = [
        "ok@example.net",
        "deferred@example.net",
        "rejected@example.org",
        "any@defer.example.net",
        "any@reject.example.net",
        "ok2@example.org",
        "elsewhere@example.com",
    ];
    let (codes, done) = c.send_mail("s@example.org", &rcpts, &test_message("mixed"));
    assert_eq!(codes, [250, 450, 550, 450, 550, 250, 554]);
    assert_eq!(done.expect("DATA reply").code, 250);
    c.quit();
    let delivered = pf.wait_for_messages(2, WAIT);
    assert_eq!(delivered.len(), 2, "maillog:\n{}", pf.maillog());
    let mut to: Vec<String> = delivered
        .iter()
        .map(|m| {
            String::from_utf8_lossy(m)
                .lines()
                .nth(1)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    to.sort();
    assert_eq!(
        to,
        [
            "X-Original-To: ok2@example.org",
            "X-Original-To: ok@example.net"
        ]
    );
}

#[test]
fn postfix_starttls_verifies_with_ca_cert() {
    let Some(pf) = PostfixSmtpd::start() else {
        return;
    };
    let pem = std::fs::read(pf.ca_cert_path()).expect("read cert");
    let cert = native_tls::Certificate::from_pem(&pem).expect("parse cert");
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(cert)
        .disable_built_in_roots(true)
        .build()
        .expect("TLS connector");
    let (mut c, _) = Conn::connect(pf.addr());
    c.ehlo();
    let r = c.cmd("STARTTLS");
    assert_eq!(r.code, 220, "{r:?}");
    let stream = c.reader.into_inner();
    let tls = connector
        .connect("localhost", stream)
        .expect("TLS handshake verifying localhost against the instance's cert");
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"EHLO client.example.org\r\n")
        .expect("write");
    let mut ehlo = Vec::new();
    loop {
        let mut line = String::new();
        tls.read_line(&mut line).expect("read");
        assert!(!line.is_empty(), "closed after STARTTLS");
        let last = line.as_bytes().get(3) == Some(&b' ');
        ehlo.push(line.trim_end().to_owned());
        if last {
            break;
        }
    }
    assert!(ehlo.iter().any(|l| l.ends_with("PIPELINING")), "{ehlo:?}");
    assert!(!ehlo.iter().any(|l| l.ends_with("STARTTLS")), "{ehlo:?}");
    tls.get_mut().write_all(b"QUIT\r\n").expect("write");
}

#[test]
fn aiosmtpd_has_no_pipelining_and_stores_message() {
    let Some(aio) = AioSmtpd::start() else {
        return;
    };
    let message = test_message("aiosmtpd");
    let (mut c, _) = Conn::connect(aio.addr());
    let ext = c.ehlo();
    assert!(!ext.contains(&"PIPELINING".to_owned()), "{ext:?}");
    assert!(!ext.contains(&"CHUNKING".to_owned()), "{ext:?}");
    let (codes, done) = c.send_mail(
        "sender@example.org",
        &[
            "a@example.net",
            "defer1@example.net",
            "reject1@example.net",
            "b@example.com",
        ],
        &message,
    );
    assert_eq!(codes, [250, 450, 550, 250]);
    assert_eq!(done.expect("DATA reply").code, 250);
    c.quit();
    let stored = aio.wait_for_messages(1, WAIT);
    assert_eq!(stored.len(), 1, "aiosmtpd stderr: {}", aio.stderr());
    let m = &stored[0];
    assert_eq!(m.mail_from, "sender@example.org");
    assert_eq!(m.rcpt_tos, ["a@example.net", "b@example.com"]);
    assert_eq!(
        m.data, message,
        "aiosmtpd keeps CRLF and undoes dot-stuffing"
    );
}

/// Sends `MAIL`, `RCPT`, `DATA` in one write, then the message, its dot and `NOOP` in one
/// write: the next command pipelined right after the end-of-data dot (issue 11). Returns
/// the replies to the four commands and the final one, as `(code, text)`.
fn after_dot_noop(c: &mut Conn, message: &[u8]) -> Vec<(u16, String)> {
    c.send(b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n");
    let mut replies: Vec<(u16, String)> = (0..3)
        .map(|_| c.reply())
        .map(|r| (r.code, r.lines.join(" ")))
        .collect();
    let mut tail = dot_stuff(message);
    tail.extend_from_slice(b".\r\nNOOP\r\n");
    c.send(&tail);
    replies.extend(
        (0..2)
            .map(|_| c.reply())
            .map(|r| (r.code, r.lines.join(" "))),
    );
    replies
}

#[test]
fn exim_offers_pipelining_chunking_and_accepts_commands_after_the_dot() {
    let Some(exim) = ScriptedMta::exim() else {
        return;
    };
    let (mut c, greeting) = Conn::connect(exim.addr());
    assert!(greeting.lines[0].contains("Exim 4.96"), "{greeting:?}");
    let ext = c.ehlo();
    for want in ["PIPELINING", "CHUNKING", "8BITMIME", "SIZE"] {
        assert!(
            ext.contains(&want.to_owned()),
            "{want} missing from {ext:?}"
        );
    }
    assert!(!ext.contains(&"STARTTLS".to_owned()), "{ext:?}");
    let message = test_message("exim");
    let codes: Vec<u16> = after_dot_noop(&mut c, &message)
        .iter()
        .map(|r| r.0)
        .collect();
    // Measured: Exim 4.96 does not refuse a command pipelined after the dot.
    assert_eq!(codes, [250, 250, 354, 250, 250], "log:\n{}", exim.log());
    let (codes, _) = c.send_mail(
        "s@example.org",
        &[
            "defer1@example.net",
            "reject1@example.net",
            "x@elsewhere.example",
        ],
        b"Subject: none\r\n\r\nx\r\n",
    );
    assert_eq!(codes, [451, 550, 550]);
    c.quit();
    let delivered = exim.wait_for_messages(1, WAIT);
    assert_eq!(delivered.len(), 1, "log:\n{}", exim.log());
    assert_eq!(
        strip_received(&delivered[0]),
        crlf_to_lf(&message).as_slice()
    );
}

#[test]
fn opensmtpd_offers_no_pipelining_and_refuses_it() {
    let Some(smtpd) = ScriptedMta::opensmtpd() else {
        return;
    };
    let (mut c, greeting) = Conn::connect(smtpd.addr());
    assert!(greeting.lines[0].contains("OpenSMTPD"), "{greeting:?}");
    let ext = c.ehlo();
    assert!(!ext.contains(&"PIPELINING".to_owned()), "{ext:?}");
    assert!(!ext.contains(&"CHUNKING".to_owned()), "{ext:?}");
    let message = test_message("opensmtpd");
    let (codes, done) = c.send_mail(
        "sender@example.org",
        &[
            "a@example.net",
            "defer1@example.net",
            "reject1@example.net",
            "x@elsewhere.example",
        ],
        &message,
    );
    assert_eq!(codes, [250, 450, 550, 550]);
    assert_eq!(done.expect("DATA reply").code, 250);
    // Pipelining anyway: refused with 500 and the connection is closed.
    c.send(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<b@example.net>\r\n");
    let r = c.reply();
    assert_eq!(r.code, 500, "{r:?}");
    assert_eq!(r.lines, ["5.5.1 Invalid command: Pipelining not supported"]);
    let delivered = smtpd.wait_for_messages(1, WAIT);
    assert_eq!(delivered.len(), 1, "log:\n{}", smtpd.log());
    // OpenSMTPD adds the Date field the test message lacks, at the end of the header.
    let stored = String::from_utf8_lossy(strip_received(&delivered[0])).into_owned();
    let (head, body) = stored.split_once("\n\n").expect("header and body");
    let (head, date) = head.rsplit_once('\n').expect("more than one field");
    assert!(date.starts_with("Date: "), "{stored}");
    assert_eq!(
        format!("{head}\n\n{body}"),
        String::from_utf8_lossy(&crlf_to_lf(&message))
    );
}

/// The hardened mode is in force (a command pipelined behind NOOP, which RFC 2920 allows
/// only last in a group, gets 554 and a disconnect), yet a command pipelined after the
/// end-of-data dot is accepted. Measured too: Postfix 3.7.11 with
/// `smtpd_forbid_bare_newline = yes` (no exclusions) still accepted a bare LF inside DATA.
#[test]
fn postfix_hardened_accepts_commands_after_the_dot_but_not_after_noop() {
    let Some(pf) = PostfixSmtpd::start_hardened() else {
        return;
    };
    let (mut c, _) = Conn::connect(pf.addr());
    let ext = c.ehlo();
    assert!(ext.contains(&"PIPELINING".to_owned()), "{ext:?}");
    let message = test_message("hardened");
    let codes: Vec<u16> = after_dot_noop(&mut c, &message)
        .iter()
        .map(|r| r.0)
        .collect();
    // Measured: Postfix 3.7 hardened does not refuse a command pipelined after the dot.
    assert_eq!(
        codes,
        [250, 250, 354, 250, 250],
        "maillog:\n{}",
        pf.maillog()
    );
    c.send(b"NOOP\r\nRSET\r\n");
    let r = c.reply();
    assert_eq!(
        (r.code, r.lines.join(" ")),
        (554, "5.5.0 Error: SMTP protocol synchronization".to_owned()),
        "maillog:\n{}",
        pf.maillog()
    );
    let delivered = pf.wait_for_messages(1, WAIT);
    assert_eq!(delivered.len(), 1, "maillog:\n{}", pf.maillog());
    assert_eq!(
        strip_delivery_headers(&delivered[0]),
        crlf_to_lf(&message).as_slice()
    );
}

#[test]
fn strip_delivery_headers_keeps_client_received_fields() {
    let raw = b"Return-Path: <a@example.org>\nX-Original-To: b@example.net\n\
Delivered-To: b@example.net\nReceived: from x (unknown [127.0.0.1])\n\tby localhost \
(Postfix) with ESMTP id 1\n\tfor <b@example.net>; date\nReceived: by client\nSubject: s\n\nbody\n";
    assert_eq!(
        strip_delivery_headers(raw),
        b"Received: by client\nSubject: s\n\nbody\n"
    );
    assert_eq!(
        strip_delivery_headers(b"Subject: s\n\nb\n"),
        b"Subject: s\n\nb\n"
    );
    assert_eq!(crlf_to_lf(b"a\r\nb\rc\n"), b"a\nb\rc\n");
}

/// Runs one test of this binary in a child process with the given environment.
fn run_self(test: &str, env: &[(&str, &str)], remove: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", test, "--test-threads=1"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in remove {
        cmd.env_remove(k);
    }
    cmd.output().expect("run test binary")
}

/// A missing server skips loudly by default and fails when PIPEMAIL_REQUIRE_INTEROP=1.
#[test]
fn missing_server_skips_loudly_or_fails_when_required() {
    let cases = [
        (
            "smtp_sink_counts_one_message",
            "PIPEMAIL_SMTP_SINK",
            "smtp-sink not installed",
        ),
        (
            "postfix_advertises_pipelining_chunking_starttls",
            "PIPEMAIL_POSTFIX",
            "postfix not installed",
        ),
        (
            "aiosmtpd_has_no_pipelining_and_stores_message",
            "PIPEMAIL_PYTHON",
            "aiosmtpd not installed",
        ),
        (
            "exim_offers_pipelining_chunking_and_accepts_commands_after_the_dot",
            "PIPEMAIL_INTEROP_ROOT",
            "exim not installed",
        ),
        (
            "opensmtpd_offers_no_pipelining_and_refuses_it",
            "PIPEMAIL_INTEROP_ROOT",
            "opensmtpd not installed",
        ),
    ];
    for (test, var, what) in cases {
        let out = run_self(
            test,
            &[(var, "/nonexistent")],
            &["PIPEMAIL_REQUIRE_INTEROP"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{test} should skip, not fail: {stderr}"
        );
        assert!(
            stderr.contains(&format!("SKIPPED interop test {test}: {what}")),
            "{test}: no loud SKIPPED line on stderr (without --nocapture): {stderr}"
        );

        let out = run_self(
            test,
            &[(var, "/nonexistent"), ("PIPEMAIL_REQUIRE_INTEROP", "1")],
            &[],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "{test} must fail when required: {stdout}"
        );
        assert!(stdout.contains(what), "{test}: {stdout}");
    }
}
