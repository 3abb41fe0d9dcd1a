//! A hostile SMTP server on 127.0.0.1:0: well-behaved as a protocol peer (it answers every
//! command in order, so pipelining works), but every text it sends is crafted: terminal
//! escape sequences (CSI, OSC), C1 controls, invalid UTF-8 and spreadsheet formulas.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

/// The reply to `RCPT TO:<addr>`, given `addr`.
pub(crate) type RcptReply = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

/// What the server says.
#[derive(Clone)]
pub(crate) struct Script {
    /// The greeting, with its CRLF.
    pub(crate) banner: Vec<u8>,
    /// The whole EHLO reply.
    pub(crate) ehlo: Vec<u8>,
    /// The reply to `RCPT TO:<addr>` for `addr`.
    pub(crate) rcpt: RcptReply,
    /// The reply to the final dot.
    pub(crate) data: Vec<u8>,
}

/// The running server; connections are served until the test process ends.
pub(crate) struct Hostile {
    addr: SocketAddr,
}

impl Hostile {
    pub(crate) fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { return };
                let s = script.clone();
                std::thread::spawn(move || {
                    let _ = serve(sock, &s);
                });
            }
        });
        Self { addr }
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }
}

fn serve(sock: TcpStream, s: &Script) -> std::io::Result<()> {
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut out = sock.try_clone()?;
    let mut input = BufReader::new(sock);
    out.write_all(&s.banner)?;
    let mut accepted = 0usize;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let cmd = text.trim_end().to_ascii_uppercase();
        let reply: Vec<u8> = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
            s.ehlo.clone()
        } else if cmd.starts_with("MAIL") {
            accepted = 0;
            b"250 2.1.0 Ok\r\n".to_vec()
        } else if cmd.starts_with("RCPT") {
            let addr = text
                .split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .map_or("", |(a, _)| a);
            let r = (s.rcpt)(addr);
            if r.starts_with(b"2") {
                accepted += 1;
            }
            r
        } else if cmd == "DATA" {
            if accepted == 0 {
                b"554 5.5.1 no valid recipients\r\n".to_vec()
            } else {
                out.write_all(b"354 go ahead\r\n")?;
                loop {
                    line.clear();
                    if input.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                }
                s.data.clone()
            }
        } else if cmd == "RSET" || cmd == "NOOP" {
            accepted = 0;
            b"250 2.0.0 Ok\r\n".to_vec()
        } else if cmd == "QUIT" {
            out.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            b"502 5.5.2 unknown\r\n".to_vec()
        };
        out.write_all(&reply)?;
    }
}
