//! In-process scripted SMTP server on 127.0.0.1:0 for driver and binary tests.
//!
//! Each accepted connection plays one script of steps. The server records what the client
//! sent, and on drop fails the test if its thread panicked or a script was not played out.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One step of a connection's script.
#[derive(Debug, Clone)]
pub enum Step {
    /// Read until the client has sent exactly these bytes (checked byte for byte).
    Expect(Vec<u8>),
    /// Read until the client has sent this many more bytes (content not checked).
    ExpectLen(usize),
    /// Write these bytes in one write.
    Send(Vec<u8>),
    /// Write these bytes one byte per write.
    Dribble(Vec<u8>),
    /// Close the connection.
    Close,
    /// Stop answering; keep the socket open until the client closes it.
    StallUntilClosed,
    /// Read and discard until the client closes.
    DrainUntilClosed,
}

pub fn expect(s: &str) -> Step {
    Step::Expect(s.as_bytes().to_vec())
}

pub fn send(s: &str) -> Step {
    Step::Send(s.as_bytes().to_vec())
}

pub struct FakeSmtp {
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
    transcript: Arc<Mutex<Vec<Vec<u8>>>>,
}

const LIMIT: Duration = Duration::from_secs(20);

impl FakeSmtp {
    /// Serves `scripts[i]` to the i-th connection, then stops accepting.
    pub fn start(scripts: Vec<Vec<Step>>) -> Self {
        Self::start_with(scripts, None)
    }

    /// Like `start`, with the accepted sockets' buffers made small (bytes).
    pub fn start_with(scripts: Vec<Vec<Step>>, small_buffers: Option<usize>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let t = Arc::clone(&transcript);
        let thread = std::thread::spawn(move || {
            for script in scripts {
                let (sock, _) = listener.accept().expect("accept");
                if let Some(n) = small_buffers {
                    let s = socket2::SockRef::from(&sock);
                    s.set_recv_buffer_size(n).expect("rcvbuf");
                    s.set_send_buffer_size(n).expect("sndbuf");
                }
                let got = play(sock, &script);
                t.lock().expect("lock").push(got);
            }
        });
        Self {
            addr,
            thread: Some(thread),
            transcript,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// Waits for every script to finish and returns what each client sent.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        if let Some(t) = self.thread.take() {
            t.join().expect("fake server panicked");
        }
        std::mem::take(&mut *self.transcript.lock().expect("lock"))
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
            && !std::thread::panicking()
        {
            panic!("fake SMTP server failed (script not played out or mismatch)");
        }
    }
}

fn play(mut sock: TcpStream, script: &[Step]) -> Vec<u8> {
    sock.set_read_timeout(Some(LIMIT)).expect("timeout");
    sock.set_nodelay(true).expect("nodelay");
    let mut got = Vec::new();
    let mut pos = 0; // bytes of `got` already matched
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + LIMIT;
    for (i, step) in script.iter().enumerate() {
        match step {
            Step::Expect(_) | Step::ExpectLen(_) => {
                let need = match step {
                    Step::Expect(w) => w.len(),
                    Step::ExpectLen(n) => *n,
                    _ => 0,
                };
                while got.len() < pos + need {
                    assert!(
                        Instant::now() < deadline,
                        "step {i}: timed out waiting for client bytes"
                    );
                    let n = sock.read(&mut buf).unwrap_or_else(|e| {
                        panic!(
                            "step {i}: read failed: {e}; got so far {:?}",
                            String::from_utf8_lossy(&got[pos..])
                        )
                    });
                    assert!(
                        n > 0,
                        "step {i}: client closed early; got {:?}",
                        String::from_utf8_lossy(&got[pos..])
                    );
                    got.extend_from_slice(&buf[..n]);
                }
                if let Step::Expect(w) = step {
                    assert_eq!(
                        String::from_utf8_lossy(&got[pos..pos + need]),
                        String::from_utf8_lossy(w),
                        "step {i}: client sent something else"
                    );
                }
                pos += need;
            }
            Step::Send(b) => sock.write_all(b).expect("write"),
            Step::Dribble(b) => {
                for byte in b {
                    sock.write_all(std::slice::from_ref(byte)).expect("write");
                    sock.flush().expect("flush");
                }
            }
            Step::Close => return got,
            Step::StallUntilClosed | Step::DrainUntilClosed => {
                loop {
                    match sock.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => panic!("step {i}: client did not close: {e}"),
                    }
                }
                return got;
            }
        }
    }
    got
}
