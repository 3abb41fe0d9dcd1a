//! A scripted SMTP server that refuses commands pipelined after the end-of-data dot, the way
//! servers hardened against SMTP smuggling (2023-24 advisories) do (issue 11).
//!
//! It advertises PIPELINING, 8BITMIME and ENHANCEDSTATUSCODES (no CHUNKING) and accepts
//! every sender and recipient. When a message's final dot arrives, it first collects every
//! complete command line the client already sent after the dot (pending on the socket, with
//! a 50 ms grace for a late segment; a client that waits for the reply costs that much per
//! message), then answers the dot and, in the same write, refuses each collected command:
//! [`AfterDot::Refuse`] answers `503 5.5.0 Error: pipelined after end of DATA`,
//! [`AfterDot::Close`] closes the connection instead. A client that pipelines never waits on
//! the grace: the dot and what follows it leave in one write.
//!
//! Messages are kept (dot-unstuffed, CRLF kept) with their envelope; a refused command has
//! no effect, so a refused MAIL starts no transaction.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What the server does with commands that arrived after the dot before its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterDot {
    /// `503 5.5.0 Error: pipelined after end of DATA` for each.
    Refuse,
    /// Answer the dot, then close the connection.
    Close,
}

/// The reply to a command pipelined after the dot ([`AfterDot::Refuse`]).
pub const REFUSAL: &str = "503 5.5.0 Error: pipelined after end of DATA";

/// One accepted message.
#[derive(Clone, Debug)]
pub struct Stored {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    messages: Vec<Stored>,
    /// Commands refused for being pipelined after a dot.
    refused: Vec<String>,
}

pub struct RefusingServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RefusingServer {
    pub fn start(mode: AfterDot) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = Arc::clone(&shared);
                    thread::spawn(move || {
                        let _ = serve(conn, mode, &shared);
                    });
                }
            })
        };
        Self {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn messages(&self) -> Vec<Stored> {
        self.lock().messages.clone()
    }

    /// Every command line refused for arriving after a dot before its reply.
    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for RefusingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `true` when at least one byte is waiting on the socket (or arrives within `grace`).
fn pending(r: &BufReader<TcpStream>, grace: Duration) -> std::io::Result<bool> {
    if !r.buffer().is_empty() {
        return Ok(true);
    }
    let s = r.get_ref();
    s.set_read_timeout(Some(grace))?;
    let mut one = [0u8; 1];
    let got = match s.peek(&mut one) {
        Ok(n) => n > 0,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(e) => return Err(e),
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(got)
}

fn serve(stream: TcpStream, mode: AfterDot, shared: &Mutex<Shared>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    w.write_all(b"220 refusing.test ESMTP refuses commands pipelined after the dot\r\n")?;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end_matches(['\r', '\n']).to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: &str = if upper.starts_with("EHLO") {
            "250-refusing.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
        } else if upper.starts_with("HELO") {
            "250 refusing.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            if from.is_some() {
                "503 5.5.1 Error: nested MAIL command\r\n"
            } else {
                from = Some(address(&cmd));
                "250 2.1.0 Ok\r\n"
            }
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                "503 5.5.1 Error: need MAIL command\r\n"
            } else {
                to.push(address(&cmd));
                "250 2.1.5 Ok\r\n"
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                "503 5.5.1 Error: need RCPT command\r\n"
            } else {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let data = read_data(&mut r)?;
                // Collect what the client sent after the dot before this reply.
                let mut late = Vec::new();
                while pending(&r, Duration::from_millis(50))? {
                    let mut l = String::new();
                    if r.read_line(&mut l)? == 0 {
                        break;
                    }
                    late.push(l.trim_end_matches(['\r', '\n']).to_owned());
                }
                let stored = Stored {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                };
                let mut out = String::from("250 2.0.0 Ok: queued\r\n");
                {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    s.messages.push(stored);
                    s.refused.extend(late.iter().cloned());
                }
                if mode == AfterDot::Close && !late.is_empty() {
                    w.write_all(out.as_bytes())?;
                    return Ok(());
                }
                for _ in &late {
                    out.push_str(REFUSAL);
                    out.push_str("\r\n");
                }
                w.write_all(out.as_bytes())?;
                continue;
            }
        } else if upper == "RSET" {
            from = None;
            to.clear();
            "250 2.0.0 Ok\r\n"
        } else if upper == "NOOP" {
            "250 2.0.0 Ok\r\n"
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            "500 5.5.2 Error: command not recognized\r\n"
        };
        w.write_all(reply.as_bytes())?;
    }
}

fn address(cmd: &str) -> String {
    let start = cmd.find('<').map_or(0, |i| i + 1);
    let end = cmd[start..].find('>').map_or(cmd.len(), |i| start + i);
    cmd[start..end].to_owned()
}

/// Reads DATA content up to the final dot; returns it dot-unstuffed, CRLF kept.
fn read_data(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" {
            return Ok(data);
        }
        let l = if line.starts_with(b".") {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(l);
    }
}
