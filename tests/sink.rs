//! The sink driven by a plain lock-step client over `std::net::TcpStream`.
//!
//! Every socket has read and write timeouts, so a bug fails a test instead of hanging it.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use pipemail::sink::{
    AfterDot, Fault, FaultPlan, RejectRule, SinkConfig, SinkHandle, SinkStats, StoredMessage,
};
use support::SinkProcess;

const IO_TIMEOUT: Duration = Duration::from_secs(20);

enum Conn {
    Plain(TcpStream),
    Tls(Box<native_tls::TlsStream<TcpStream>>),
    Gone,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
            Self::Gone => Ok(0),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
            Self::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
            Self::Gone => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A lock-step SMTP client: write a command, read its reply.
struct Client {
    conn: Conn,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect to sink");
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            conn: Conn::Plain(stream),
            buf: Vec::new(),
        }
    }

    /// Connects and reads the greeting.
    fn open(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr);
        let greeting = c.reply();
        assert_eq!(greeting.code, 220, "{greeting:?}");
        c
    }

    fn tcp(&self) -> &TcpStream {
        match &self.conn {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref(),
            Conn::Gone => panic!("connection gone"),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.conn.write_all(bytes).expect("write to sink");
        self.conn.flush().expect("flush");
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8(line).expect("utf-8 reply");
                return Some(text.trim_end_matches(['\r', '\n']).to_string());
            }
            let mut chunk = [0u8; 4096];
            let n = self.conn.read(&mut chunk).expect("read reply");
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let line = self.line().expect("reply line before end of stream");
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Reply { code, lines };
            }
        }
    }

    fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    fn expect(&mut self, line: &str, code: u16) -> Reply {
        let r = self.cmd(line);
        assert_eq!(r.code, code, "{line:?} -> {r:?}");
        r
    }

    /// Everything until the sink closes (buffered bytes first).
    fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = std::mem::take(&mut self.buf);
        self.conn.read_to_end(&mut all).expect("read to end");
        all
    }

    fn starttls(&mut self) {
        let r = self.cmd("STARTTLS");
        assert_eq!(r.code, 220, "{r:?}");
        assert!(self.buf.is_empty());
        let Conn::Plain(tcp) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            panic!("STARTTLS twice");
        };
        let connector = native_tls::TlsConnector::builder()
            .danger_accept_invalid_certs(true)
            .danger_accept_invalid_hostnames(true)
            .build()
            .expect("tls connector");
        let tls = connector.connect("localhost", tcp).expect("TLS handshake");
        self.conn = Conn::Tls(Box::new(tls));
    }
}

fn start(cfg: SinkConfig) -> SinkHandle {
    SinkHandle::start("127.0.0.1:0".parse().expect("addr"), cfg).expect("start sink")
}

fn mem() -> SinkConfig {
    SinkConfig {
        keep_in_memory: true,
        ..SinkConfig::default()
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Sends one message with DATA (body already dot-stuffed, without the final dot).
fn send_data(c: &mut Client, from: &str, rcpts: &[&str], wire_body: &[u8]) -> Reply {
    c.expect(&format!("MAIL FROM:<{from}>"), 250);
    for rcpt in rcpts {
        c.expect(&format!("RCPT TO:<{rcpt}>"), 250);
    }
    c.expect("DATA", 354);
    c.send(wire_body);
    c.send(b".\r\n");
    c.reply()
}

fn maildir_files(dir: &Path, sub: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(sub))
        .expect("read maildir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("read message file"))
        .collect()
}

#[test]
fn greeting_and_ehlo_lines() {
    let sink = start(SinkConfig::default());
    let mut c = Client::connect(sink.local_addr());
    let greeting = c.reply();
    assert_eq!(greeting.code, 220);
    assert_eq!(greeting.text(), "pipemail-sink ESMTP pipemail-sink");
    let ehlo = c.expect("EHLO client.example", 250);
    assert_eq!(
        ehlo.lines,
        [
            "pipemail-sink",
            "PIPELINING",
            "SIZE 35882577",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
        ]
    );
    let helo = c.expect("HELO client.example", 250);
    assert_eq!(helo.text(), "pipemail-sink");
    c.expect("QUIT", 221);
    assert!(c.read_to_end().is_empty());
}

#[test]
fn options_change_the_ehlo_reply() {
    let sink = start(SinkConfig {
        hostname: "mx.test".into(),
        pipelining: false,
        chunking: false,
        size: None,
        smtputf8: true,
        keep_in_memory: true,
        ..SinkConfig::default()
    });
    let mut c = Client::open(sink.local_addr());
    let ehlo = c.expect("EHLO client.example", 250);
    assert_eq!(
        ehlo.lines,
        ["mx.test", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
    );
    // BDAT without CHUNKING: refused, but its octets are still consumed.
    c.expect("MAIL FROM:<a@x.example>", 250);
    c.expect("RCPT TO:<b@x.example>", 250);
    c.send(b"BDAT 6 LAST\r\nQUIT\r\n");
    let r = c.reply();
    assert_eq!(
        (r.code, r.text()),
        (502, "5.5.1 Error: CHUNKING not enabled".into())
    );
    c.expect("NOOP", 250);
    // SMTPUTF8 is accepted when advertised, and needed for a non-ASCII address.
    c.expect("RSET", 250);
    c.expect("MAIL FROM:<ü@x.example>", 553);
    c.expect("MAIL FROM:<ü@x.example> SMTPUTF8", 250);
    c.expect("RCPT TO:<jörg@x.example>", 250);
    c.expect("DATA", 354);
    c.send("Subject: ü\r\n\r\nhi\r\n.\r\n".as_bytes());
    assert_eq!(c.reply().code, 250);
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].from, "ü@x.example");
    assert_eq!(msgs[0].rcpts, ["jörg@x.example"]);
}

#[test]
fn data_message_is_stored_exactly_in_memory_and_maildir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = dir.path().join("Maildir");
    let sink = start(SinkConfig {
        keep_in_memory: true,
        maildir: Some(maildir.clone()),
        ..SinkConfig::default()
    });
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO client.example", 250);
    // On the wire: lines starting with "." are stuffed with one more dot.
    let wire = b"Subject: dots\r\n\r\n..one dot\r\n...two dots\r\n..\r\nplain\r\n";
    let content = b"Subject: dots\r\n\r\n.one dot\r\n..two dots\r\n.\r\nplain\r\n";
    let r = send_data(&mut c, "a@x.example", &["b@y.example", "c@y.example"], wire);
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.text().starts_with("2.0.0 Ok: queued as "), "{r:?}");
    let queue_id = r.text()["2.0.0 Ok: queued as ".len()..].to_string();

    let msgs = sink.messages();
    assert_eq!(
        msgs,
        [StoredMessage {
            session: 0,
            queue_id,
            from: "a@x.example".into(),
            rcpts: vec!["b@y.example".into(), "c@y.example".into()],
            data: content.to_vec(),
            via_bdat: false,
        }]
    );
    // One file per message, not per recipient; nothing left in tmp/.
    assert_eq!(maildir_files(&maildir, "new"), [content.to_vec()]);
    assert!(maildir_files(&maildir, "tmp").is_empty());
    assert!(maildir.join("cur").is_dir());
    c.expect("QUIT", 221);
    let stats = sink.stop();
    assert_eq!(
        stats,
        SinkStats {
            sessions: 1,
            messages: 1,
            recipients: 2,
            rejected_recipients: 0,
            bytes: content.len() as u64,
        }
    );
}

#[test]
fn empty_message_and_bare_lf() {
    let sink = start(mem());
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO client.example", 250);
    assert_eq!(send_data(&mut c, "", &["b@y.example"], b"").code, 250);
    let odd = b"bare\nlf\rcr\r\n.\n\r\n";
    // ".\n" is not a terminator (only CRLF.CRLF is) and the dot at line start is unstuffed.
    assert_eq!(
        send_data(&mut c, "a@x.example", &["b@y.example"], odd).code,
        250
    );
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].from, "");
    assert_eq!(msgs[0].data, b"");
    assert_eq!(msgs[1].data, b"bare\nlf\rcr\r\n\n\r\n");
}

#[test]
fn bdat_message_is_stored_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = start(SinkConfig {
        keep_in_memory: true,
        maildir: Some(dir.path().to_path_buf()),
        ..SinkConfig::default()
    });
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO client.example", 250);
    c.expect("MAIL FROM:<a@x.example> BODY=8BITMIME SIZE=40", 250);
    c.expect("RCPT TO:<b@y.example>", 250);
    // Chunks are raw octets: no dot-stuffing, CRLF.CRLF means nothing.
    let first = b"Subject: b\r\n\r\n.\r\n..x\r\n";
    c.send(format!("BDAT {}\r\n", first.len()).as_bytes());
    c.send(first);
    let r = c.reply();
    assert_eq!(
        (r.code, r.text()),
        (250, format!("2.0.0 Ok: {} octets received", first.len()))
    );
    c.send(b"BDAT 0\r\n");
    assert_eq!(c.reply().code, 250);
    c.send(b"BDAT 4 LAST\r\nend\n");
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.text().starts_with("2.0.0 Ok: queued as "));
    let mut want = first.to_vec();
    want.extend_from_slice(b"end\n");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].via_bdat);
    assert_eq!(msgs[0].data, want);
    assert_eq!(maildir_files(dir.path(), "new"), [want]);
    // The transaction ended: a new one can start, and DATA cannot follow BDAT.
    c.expect("MAIL FROM:<a@x.example>", 250);
    c.expect("RCPT TO:<b@y.example>", 250);
    c.send(b"BDAT 1\r\nx");
    assert_eq!(c.reply().code, 250);
    c.expect("DATA", 503);
    c.expect("RSET", 250);
    assert_eq!(sink.stats().messages, 1);
}

#[test]
fn reject_rules() {
    let rules: Vec<RejectRule> = ["550:*@bad.example", "450:slow*"]
        .iter()
        .map(|s| s.parse().expect("rule"))
        .collect();
    assert!("600:x".parse::<RejectRule>().is_err());
    assert!("550".parse::<RejectRule>().is_err());
    assert!("550:".parse::<RejectRule>().is_err());
    let sink = start(SinkConfig {
        reject: rules,
        ..mem()
    });
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO client.example", 250);
    c.expect("MAIL FROM:<a@x.example>", 250);
    let r = c.expect("RCPT TO:<Joe@BAD.example>", 550);
    assert_eq!(
        r.text(),
        "5.1.1 <Joe@BAD.example>: Recipient address rejected"
    );
    let r = c.expect("RCPT TO:<slowpoke@y.example>", 450);
    assert_eq!(
        r.text(),
        "4.2.0 <slowpoke@y.example>: Recipient address rejected"
    );
    c.expect("RCPT TO:<good@y.example>", 250);
    c.expect("DATA", 354);
    c.send(b"x\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    // Only rejected recipients: DATA is refused.
    c.expect("MAIL FROM:<a@x.example>", 250);
    c.expect("RCPT TO:<x@bad.example>", 550);
    c.expect("DATA", 554);
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, ["good@y.example"]);
    let stats = sink.stop();
    assert_eq!((stats.recipients, stats.rejected_recipients), (1, 3));
}

#[test]
fn pipelined_group_gets_all_replies_in_order_in_one_write() {
    let sink = start(SinkConfig {
        reject: vec!["550:*@bad.example".parse().expect("rule")],
        ..mem()
    });
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO client.example", 250);
    let group = b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@bad.example>\r\n\
RCPT TO:<d@y.example>\r\nBDAT 5 LAST\r\nhelloNOOP\r\nMAIL FROM:<e@x.example>\r\nRCPT TO:<f@y.example>\r\nDATA\r\n";
    c.send(group);
    // The sink answers the whole group with one write, so one read returns all of it.
    let mut chunk = vec![0u8; 64 * 1024];
    let n = c.conn.read(&mut chunk).expect("read replies");
    let text = String::from_utf8(chunk[..n].to_vec()).expect("utf-8");
    let codes: Vec<&str> = text.lines().map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        [
            "250", "250", "550", "250", "250", "250", "250", "250", "354"
        ],
        "{text}"
    );
    c.send(b"body\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].rcpts, ["b@y.example", "d@y.example"]);
    assert_eq!(msgs[0].data, b"hello");
    assert_eq!(msgs[1].data, b"body\r\n");
}

#[test]
fn bdat_chunk_is_consumed_after_failed_commands() {
    let sink = start(SinkConfig {
        reject: vec!["550:*@bad.example".parse().expect("rule")],
        ..mem()
    });
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO client.example", 250);
    // The chunk looks like commands; if it were not consumed the sink would answer them.
    c.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<x@bad.example>\r\nBDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 550);
    let r = c.reply();
    assert_eq!(
        (r.code, r.text()),
        (554, "5.5.1 Error: no valid recipients".into())
    );
    assert_eq!(c.reply().code, 250); // NOOP
    // No MAIL at all: 503, chunk consumed too.
    c.send(b"BDAT 6\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(c.reply().code, 503);
    assert_eq!(c.reply().code, 250);
    // The failed BDAT ended the transaction: a new MAIL is accepted.
    c.expect("MAIL FROM:<a@x.example>", 250);
    assert!(sink.messages().is_empty());
}

#[test]
fn error_replies() {
    let sink = start(mem());
    let mut c = Client::open(sink.local_addr());
    c.expect("MAIL FROM:<a@x.example>", 503);
    c.expect("EHLO", 501);
    c.expect("EHLO client.example", 250);
    let r = c.expect("RCPT TO:<b@y.example>", 503);
    assert_eq!(r.text(), "5.5.1 Error: need MAIL command");
    c.expect("DATA", 503);
    c.expect("MAIL FROM:a@x.example", 501);
    c.expect("MAIL FROM:<a@x.example> FOO=BAR", 555);
    c.expect("MAIL FROM:<a@x.example> SMTPUTF8", 555);
    c.expect("MAIL FROM:<a@x.example>", 250);
    let r = c.expect("MAIL FROM:<a@x.example>", 503);
    assert_eq!(r.text(), "5.5.1 Error: nested MAIL command");
    c.expect("RCPT TO:<>", 501);
    c.expect("RCPT TO:<b@y.example> NOTIFY=NEVER", 555);
    let r = c.expect("DATA", 554);
    assert_eq!(r.text(), "5.5.1 Error: no valid recipients");
    c.expect("BDAT x", 501);
    let r = c.expect("FROB", 500);
    assert_eq!(r.text(), "5.5.2 Error: command not recognized");
    c.expect("", 500);
    c.expect("VRFY someone", 252);
    c.expect("STARTTLS", 502);
    c.expect("AUTH PLAIN", 502);
    // An over-long command line: 500 once it ends, and the session goes on.
    let long = format!("NOOP {}", "x".repeat(1200));
    let r = c.expect(&long, 500);
    assert_eq!(r.text(), "5.5.2 Error: line too long");
    // 1000 octets with CRLF is still fine.
    let max = format!("NOOP {}", "x".repeat(1000 - 5 - 2));
    c.expect(&max, 250);
    c.expect("RSET", 250);
    c.expect("QUIT", 221);
    assert!(c.read_to_end().is_empty());
}

#[test]
fn size_limit() {
    let sink = start(SinkConfig {
        size: Some(100),
        ..mem()
    });
    let mut c = Client::open(sink.local_addr());
    let ehlo = c.expect("EHLO client.example", 250);
    assert!(ehlo.lines.contains(&"SIZE 100".to_string()));
    let r = c.expect("MAIL FROM:<a@x.example> SIZE=101", 552);
    assert!(r.text().starts_with("5.3.4"));
    // DATA too big: read to its end, then 552; not stored.
    let big = format!("{}\r\n", "y".repeat(150));
    let r = send_data(&mut c, "a@x.example", &["b@y.example"], big.as_bytes());
    assert_eq!(r.code, 552, "{r:?}");
    // BDAT too big: the chunk is consumed, 552, transaction ended.
    c.expect("MAIL FROM:<a@x.example>", 250);
    c.expect("RCPT TO:<b@y.example>", 250);
    c.send(format!("BDAT 60\r\n{}", "z".repeat(60)).as_bytes());
    assert_eq!(c.reply().code, 250);
    c.send(format!("BDAT 60 LAST\r\n{}", "z".repeat(60)).as_bytes());
    assert_eq!(c.reply().code, 552);
    // Exactly at the limit is fine.
    let exact = format!("{}\r\n", "w".repeat(98));
    let r = send_data(&mut c, "a@x.example", &["b@y.example"], exact.as_bytes());
    assert_eq!(r.code, 250, "{r:?}");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].data.len(), 100);
}

#[test]
fn robust_against_huge_lines_garbage_and_disconnects() {
    let sink = start(mem());
    let addr = sink.local_addr();
    // A 10 MB line: discarded as it arrives, answered once it ends.
    let mut huge = Client::open(addr);
    huge.send(&vec![b'A'; 10 * 1024 * 1024]);
    huge.send(b"\r\n");
    assert_eq!(huge.reply().code, 500);
    huge.expect("NOOP", 250);
    // Binary garbage.
    let mut garbage = Client::open(addr);
    let bytes: Vec<u8> = (0..=255u8)
        .filter(|&b| b != b'\n')
        .cycle()
        .take(5000)
        .collect();
    garbage.send(&bytes);
    garbage.send(b"\r\n");
    assert_eq!(garbage.reply().code, 500);
    garbage.send(b"\x00\xff\xfe junk\r\n");
    assert_eq!(garbage.reply().code, 500);
    garbage.expect("NOOP", 250);
    drop(garbage);
    // Disconnect in the middle of a DATA body and of a BDAT chunk.
    let mut mid = Client::open(addr);
    mid.expect("EHLO c", 250);
    mid.expect("MAIL FROM:<a@x.example>", 250);
    mid.expect("RCPT TO:<b@y.example>", 250);
    mid.expect("DATA", 354);
    mid.send(b"partial body\r\n");
    drop(mid);
    let mut mid = Client::open(addr);
    mid.expect("EHLO c", 250);
    mid.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nBDAT 100 LAST\r\nonly some");
    assert_eq!(mid.reply().code, 250);
    assert_eq!(mid.reply().code, 250);
    mid.tcp().shutdown(Shutdown::Write).expect("half-close");
    assert!(mid.read_to_end().is_empty());
    // Other sessions are unaffected.
    let mut ok = Client::open(addr);
    ok.expect("EHLO c", 250);
    assert_eq!(
        send_data(&mut ok, "a@x.example", &["b@y.example"], b"x\r\n").code,
        250
    );
    huge.expect("QUIT", 221);
    assert_eq!(sink.messages().len(), 1);
    let stats = sink.stop();
    assert_eq!((stats.sessions, stats.messages), (5, 1));
}

fn faulty(faults: Vec<Fault>) -> SinkHandle {
    start(SinkConfig {
        faults: Some(FaultPlan {
            sessions: vec![faults],
        }),
        ..mem()
    })
}

#[test]
fn fault_drop_after_input_bytes() {
    let group =
        b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nBDAT 10 LAST\r\n0123456789";
    // Cut three octets before the end of the chunk.
    let sink = faulty(vec![Fault::DropAfterInputBytes(group.len() as u64 - 3)]);
    let mut c = Client::open(sink.local_addr());
    c.send(group);
    assert_eq!(c.reply().code, 250); // EHLO
    assert_eq!(c.reply().code, 250); // MAIL
    assert_eq!(c.reply().code, 250); // RCPT
    assert!(c.read_to_end().is_empty(), "no reply to the cut BDAT");
    assert!(sink.messages().is_empty());

    // Zero bytes: closed right after the greeting.
    let sink = faulty(vec![Fault::DropAfterInputBytes(0)]);
    let mut c = Client::open(sink.local_addr());
    c.send(b"EHLO c\r\n");
    assert!(c.read_to_end().is_empty());
}

/// EHLO (unit 0), MAIL (1), RCPT (2), DATA (3), final dot (4).
fn data_exchange_until_dot(c: &mut Client) {
    c.expect("EHLO c", 250);
    c.expect("MAIL FROM:<a@x.example>", 250);
    c.expect("RCPT TO:<b@y.example>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: s\r\n\r\nbody\r\n.\r\n");
}

#[test]
fn fault_drop_before_reply() {
    for stored in [false, true] {
        let sink = faulty(vec![Fault::DropBeforeReply { command: 4, stored }]);
        let mut c = Client::open(sink.local_addr());
        data_exchange_until_dot(&mut c);
        assert!(c.read_to_end().is_empty(), "stored={stored}");
        assert_eq!(sink.messages().len(), usize::from(stored));
        assert_eq!(sink.stats().messages, u64::from(stored));
    }
    // On a pipelined group: replies before the dropped unit arrive, then the close.
    let sink = faulty(vec![Fault::DropBeforeReply {
        command: 3,
        stored: false,
    }]);
    let mut c = Client::open(sink.local_addr());
    c.send(b"EHLO c\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 250);
    assert!(c.read_to_end().is_empty());
}

#[test]
fn fault_reply_421() {
    let sink = faulty(vec![Fault::Reply421 { command: 2 }]);
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO c", 250);
    c.expect("MAIL FROM:<a@x.example>", 250);
    let r = c.cmd("RCPT TO:<b@y.example>");
    assert_eq!(r.code, 421);
    assert!(r.text().starts_with("4.3.0 "), "{r:?}");
    assert!(c.read_to_end().is_empty());
    // 421 on a final dot: not stored.
    let sink = faulty(vec![Fault::Reply421 { command: 4 }]);
    let mut c = Client::open(sink.local_addr());
    data_exchange_until_dot(&mut c);
    assert_eq!(c.reply().code, 421);
    assert!(c.read_to_end().is_empty());
    assert!(sink.messages().is_empty());
}

#[test]
fn fault_reply_code() {
    let sink = faulty(vec![
        Fault::ReplyCode {
            command: 2,
            code: 452,
        },
        Fault::ReplyCode {
            command: 5,
            code: 451,
        },
    ]);
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO c", 250); // 0
    c.expect("MAIL FROM:<a@x.example>", 250); // 1
    let r = c.expect("RCPT TO:<first@y.example>", 452); // 2
    assert_eq!(r.text(), "4.0.0 Error: injected failure");
    c.expect("RCPT TO:<second@y.example>", 250); // 3
    c.expect("DATA", 354); // 4
    c.send(b"x\r\n.\r\n");
    assert_eq!(c.reply().code, 451); // 5: dot rejected, message discarded
    c.expect("MAIL FROM:<a@x.example>", 250); // 6: the transaction had ended
    c.expect("RCPT TO:<third@y.example>", 250); // 7
    c.send(b"BDAT 3 LAST\r\nabc"); // 8
    assert_eq!(c.reply().code, 250);
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, ["third@y.example"]);
    assert_eq!(msgs[0].data, b"abc");
    assert_eq!(sink.stats().rejected_recipients, 1);
    // Codes outside 400..=599 are refused at start.
    let bad = SinkHandle::start(
        "127.0.0.1:0".parse().expect("addr"),
        SinkConfig {
            faults: Some(FaultPlan {
                sessions: vec![vec![Fault::ReplyCode {
                    command: 0,
                    code: 250,
                }]],
            }),
            ..SinkConfig::default()
        },
    );
    assert_eq!(
        bad.expect_err("250 is not a failure").kind(),
        std::io::ErrorKind::InvalidInput
    );
}

#[test]
fn fault_stall() {
    let sink = faulty(vec![Fault::Stall { command: 2 }]);
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO c", 250);
    c.expect("MAIL FROM:<a@x.example>", 250);
    // From here on nothing is answered, but the connection stays open and input is read.
    c.send(b"RCPT TO:<b@y.example>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n");
    c.tcp().shutdown(Shutdown::Write).expect("half-close");
    // The sink closes only once the client has closed its side, without a single reply.
    assert!(c.read_to_end().is_empty());
    assert!(sink.messages().is_empty());
}

#[test]
fn fault_dribble_replies() {
    let sink = faulty(vec![Fault::DribbleReplies]);
    let mut c = Client::open(sink.local_addr());
    let ehlo = c.expect("EHLO c", 250);
    assert_eq!(ehlo.lines.len(), 6);
    let r = send_data(&mut c, "a@x.example", &["b@y.example"], b"x\r\n");
    assert_eq!(r.code, 250);
    c.expect("QUIT", 221);
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn fault_mid_reply_drop() {
    let sink = faulty(vec![Fault::MidReplyDrop { command: 1 }]);
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO c", 250);
    c.send(b"NOOP\r\n");
    // "250 2.0.0 Ok\r\n" is 14 octets: the first 7 are sent.
    assert_eq!(c.read_to_end(), b"250 2.0");
    // On a final dot the message is stored; half of its 250 reply is sent.
    let sink = faulty(vec![Fault::MidReplyDrop { command: 4 }]);
    let mut c = Client::open(sink.local_addr());
    data_exchange_until_dot(&mut c);
    let partial = c.read_to_end();
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    let full = format!("250 2.0.0 Ok: queued as {}\r\n", msgs[0].queue_id);
    assert_eq!(partial, &full.as_bytes()[..full.len() / 2]);
}

#[test]
fn faults_apply_per_session() {
    let sink = start(SinkConfig {
        faults: Some(FaultPlan {
            sessions: vec![vec![], vec![Fault::Reply421 { command: 0 }]],
        }),
        ..mem()
    });
    let mut first = Client::open(sink.local_addr());
    first.expect("EHLO c", 250);
    let mut second = Client::open(sink.local_addr());
    second.expect("EHLO c", 421);
    assert!(second.read_to_end().is_empty());
    let mut third = Client::open(sink.local_addr());
    third.expect("EHLO c", 250);
    first.expect("QUIT", 221);
    third.expect("QUIT", 221);
}

#[test]
fn auth_without_tls_when_allowed() {
    let sink = start(SinkConfig {
        auth: Some(("user".into(), "secret".into())),
        allow_plain_auth: true,
        ..mem()
    });
    let mut c = Client::open(sink.local_addr());
    let ehlo = c.expect("EHLO c", 250);
    assert!(ehlo.lines.contains(&"AUTH PLAIN LOGIN".to_string()));
    let r = c.expect("MAIL FROM:<a@x.example>", 530);
    assert_eq!(r.text(), "5.7.0 Authentication required");
    c.expect(&format!("AUTH PLAIN {}", b64(b"\0user\0wrong")), 535);
    c.expect("AUTH CRAM-MD5", 504);
    // PLAIN with the response after a 334.
    let r = c.expect("AUTH PLAIN", 334);
    assert_eq!(r.text(), "");
    c.expect("*", 501);
    c.expect("AUTH PLAIN", 334);
    c.expect(&b64(b"\0user\0secret"), 235);
    c.expect("AUTH PLAIN", 503);
    c.expect("MAIL FROM:<a@x.example>", 250);

    // LOGIN, with and without initial response.
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO c", 250);
    let r = c.expect("AUTH LOGIN", 334);
    assert_eq!(r.text(), "VXNlcm5hbWU6");
    let r = c.expect(&b64(b"user"), 334);
    assert_eq!(r.text(), "UGFzc3dvcmQ6");
    let r = c.expect(&b64(b"bad"), 535);
    assert_eq!(r.text(), "5.7.8 Error: authentication failed");
    c.expect(&format!("AUTH LOGIN {}", b64(b"user")), 334);
    c.expect(&b64(b"secret"), 235);
    c.expect("MAIL FROM:<a@x.example>", 250);
}

/// A self-signed identity made with the openssl CLI, or None (test skipped) without it.
fn test_identity(dir: &Path) -> Option<native_tls::Identity> {
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("SKIPPED: cannot make a test certificate with openssl ({other:?})");
            return None;
        }
    }
    Some(
        pipemail::sink::load_identity(&dir.join("cert.pem"), &dir.join("key.pem"))
            .expect("load identity"),
    )
}

#[test]
fn starttls_and_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(identity) = test_identity(dir.path()) else {
        return;
    };
    let sink = start(SinkConfig {
        tls: Some(identity),
        auth: Some(("user".into(), "secret".into())),
        ..mem()
    });
    let mut c = Client::open(sink.local_addr());
    let ehlo = c.expect("EHLO c", 250);
    assert!(ehlo.lines.contains(&"STARTTLS".to_string()));
    assert!(!ehlo.lines.iter().any(|l| l.starts_with("AUTH")));
    c.expect(&format!("AUTH PLAIN {}", b64(b"\0user\0secret")), 538);
    c.expect("MAIL FROM:<a@x.example>", 530);
    c.expect("STARTTLS x", 501);
    c.starttls();
    // EHLO is needed again after TLS.
    c.expect("MAIL FROM:<a@x.example>", 503);
    let ehlo = c.expect("EHLO c", 250);
    assert!(!ehlo.lines.contains(&"STARTTLS".to_string()));
    assert!(ehlo.lines.contains(&"AUTH PLAIN LOGIN".to_string()));
    c.expect("STARTTLS", 503);
    c.expect(&format!("AUTH PLAIN {}", b64(b"\0user\0nope")), 535);
    c.expect(&format!("AUTH PLAIN {}", b64(b"\0user\0secret")), 235);
    let r = send_data(&mut c, "a@x.example", &["b@y.example"], b"over tls\r\n");
    assert_eq!(r.code, 250);
    c.expect("QUIT", 221);
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].data, b"over tls\r\n");

    // Commands pipelined after STARTTLS (before the handshake) are discarded, not executed
    // inside the TLS session.
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO c", 250);
    c.send(b"STARTTLS\r\nNOOP\r\n");
    assert_eq!(c.reply().code, 220);
    let Conn::Plain(tcp) = std::mem::replace(&mut c.conn, Conn::Gone) else {
        panic!("plain");
    };
    let connector = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("connector");
    c.conn = Conn::Tls(Box::new(
        connector.connect("localhost", tcp).expect("TLS handshake"),
    ));
    let r = c.expect("EHLO c", 250);
    assert_eq!(r.lines[0], "pipemail-sink", "{r:?}");
    c.expect("QUIT", 221);
}

#[test]
fn latency_makes_pipelining_pay() {
    let rtt = Duration::from_millis(200);
    let sink = start(SinkConfig {
        latency: rtt,
        ..mem()
    });
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO c", 250);

    let t = Instant::now();
    for _ in 0..4 {
        c.expect("NOOP", 250);
    }
    let lock_step = t.elapsed();

    let t = Instant::now();
    c.send(b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n");
    for _ in 0..4 {
        assert_eq!(c.reply().code, 250);
    }
    let pipelined = t.elapsed();

    eprintln!("rtt {rtt:?}: lock-step {lock_step:?}, pipelined {pipelined:?}");
    // Delays only ever add up, so the lower bounds are exact; the comparison is a ratio.
    assert!(lock_step >= rtt * 4, "lock-step {lock_step:?}");
    assert!(pipelined >= rtt, "pipelined {pipelined:?}");
    let ratio = lock_step.as_secs_f64() / pipelined.as_secs_f64();
    assert!(
        ratio > 2.5,
        "lock-step {lock_step:?} vs pipelined {pipelined:?} (ratio {ratio:.2})"
    );
    // A message still goes through with latency.
    let r = send_data(&mut c, "a@x.example", &["b@y.example"], b"slow\r\n");
    assert_eq!(r.code, 250);
    c.expect("QUIT", 221);
    assert!(c.read_to_end().is_empty());
    assert_eq!(sink.messages()[0].data, b"slow\r\n");
}

#[test]
fn stop_closes_open_sessions() {
    let sink = start(mem());
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO c", 250);
    let stats = sink.stop();
    assert_eq!(stats.sessions, 1);
    // The session was closed by stop().
    let mut rest = Vec::new();
    let _ = c.conn.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

// ----- refuse-after-dot and `pipemail sink` flags ------------------------------------------

const REFUSED: &str = "503 5.5.1 Bad sequence of commands - pipelined after end of DATA";

/// Sends everything a hardened server should refuse in the same write as the final dot, then
/// the same transaction again in lock-step, and checks the exact replies.
fn refused_then_lock_step(c: &mut Client) {
    c.expect("EHLO c", 250);
    c.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 354);
    c.send(b"one\r\n.\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n");
    let mut lines = Vec::new();
    for _ in 0..4 {
        lines.push(c.line().expect("reply"));
    }
    assert!(
        lines[0].starts_with("250 2.0.0 Ok: queued as "),
        "{lines:?}"
    );
    assert_eq!(lines[1..], [REFUSED; 3]);
    // After the client saw the replies, the same commands are handled normally.
    assert_eq!(
        send_data(c, "a@x.example", &["c@y.example"], b"two\r\n").code,
        250
    );
    c.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<d@y.example>\r\nBDAT 5 LAST\r\nthreeNOOP\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.line().as_deref(), Some(REFUSED));
    c.expect("QUIT", 221);
    assert!(c.read_to_end().is_empty());
}

#[test]
fn refuse_after_dot_over_a_socket() {
    let sink = start(SinkConfig {
        after_dot: AfterDot::Refuse,
        ..mem()
    });
    let mut c = Client::open(sink.local_addr());
    refused_then_lock_step(&mut c);
    let msgs = sink.messages();
    let bodies: Vec<&[u8]> = msgs.iter().map(|m| m.data.as_slice()).collect();
    assert_eq!(bodies, [&b"one\r\n"[..], b"two\r\n", b"three"]);
    assert_eq!(msgs[1].rcpts, ["c@y.example"]);
}

#[test]
fn drop_after_dot_over_a_socket() {
    let sink = start(SinkConfig {
        after_dot: AfterDot::Drop,
        ..mem()
    });
    let mut c = Client::open(sink.local_addr());
    c.expect("EHLO c", 250);
    c.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nBDAT 3 LAST\r\noneNOOP\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 250);
    assert!(c.read_to_end().is_empty(), "closed without answering NOOP");
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn binary_refuse_after_dot_answers_as_specified() {
    let sink = SinkProcess::spawn(["--refuse-after-dot"]);
    let mut c = Client::open(sink.addr);
    refused_then_lock_step(&mut c);
    let (code, stderr) = sink.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(", 3 messages,"), "{stderr}");
}

#[test]
fn binary_fault_flags_apply_per_session() {
    let sink = SinkProcess::spawn(["--fault", "421=1", "--fault", "reply-code=0:451@1-2"]);
    let mut c = Client::open(sink.addr);
    c.expect("EHLO c", 250);
    let r = c.cmd("MAIL FROM:<a@x.example>");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(c.read_to_end().is_empty());
    for _ in 1..=2 {
        let mut c = Client::open(sink.addr);
        let r = c.cmd("EHLO c");
        assert_eq!(r.code, 451);
        assert_eq!(r.text(), "4.0.0 Error: injected failure");
        c.expect("QUIT", 221);
    }
    let mut c = Client::open(sink.addr);
    c.expect("EHLO c", 250);
    c.expect("QUIT", 221);
    let (code, stderr) = sink.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("4 sessions"), "{stderr}");
}

#[test]
fn binary_invalid_fault_spec_is_a_usage_error() {
    for (spec, message) in [
        ("explode=1", "unknown fault \"explode\""),
        ("stall", "needs =UNIT"),
        ("reply-code=3:250", "reply code must be 400..=599"),
        ("stall=1@4-2", "bad session range"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipemail"))
            .args(["sink", "--listen", "127.0.0.1:0", "--fault", spec])
            .output()
            .expect("run pipemail");
        assert_eq!(out.status.code(), Some(64), "{spec}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--fault <SPEC>"), "{spec}: {stderr}");
        assert!(stderr.contains(message), "{spec}: {stderr}");
    }
}
