//! Property: against a server that may refuse every command pipelined after an end of data
//! (each gets its own 503, the transaction never happens), the session never reports
//! `Rejected` for a recipient the server did not reject with its own reply, and reports
//! `Sent` only for recipients the server stored. The same against a server that advertises
//! PIPELINING and refuses every command but the first of each write.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, RngSeed};

use super::*;

/// What the server decided about one recipient, by address.
#[derive(Debug, Default)]
struct Server {
    chunking: bool,
    refuse_after_eod: bool,
    /// Refuses every command but the first of each write (a server that advertises
    /// PIPELINING and does not do it).
    refuse_pipelined: bool,
    /// Bytes of the current client write not yet read.
    input: Vec<u8>,
    pos: usize,
    in_mail: bool,
    rcpts: Vec<String>,
    /// Recipients the server rejected with its own reply (RCPT or end of data).
    rejected: HashSet<String>,
    stored: HashSet<String>,
    quit: bool,
    /// MAIL commands refused for following an end of data.
    refusals: usize,
    /// After 354: reading the message until the final dot.
    in_data: bool,
}

impl Server {
    fn line(&mut self) -> Option<String> {
        let rest = &self.input[self.pos..];
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let l = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 2;
        Some(l)
    }

    fn end_of_data(&mut self, out: &mut String, ok: bool) {
        let rcpts = std::mem::take(&mut self.rcpts);
        self.in_mail = false;
        if ok && !rcpts.is_empty() {
            self.stored.extend(rcpts);
            out.push_str("250 2.0.0 Ok: queued\r\n");
        } else {
            self.rejected.extend(rcpts);
            out.push_str("554 5.7.1 content rejected\r\n");
        }
    }

    /// Reads one client write and answers it.
    fn answer(&mut self, write: &[u8]) -> String {
        self.input = write.to_vec();
        self.pos = 0;
        let mut out = String::new();
        // Set once an end of data is answered while more of the write is waiting.
        let mut refusing = false;
        let mut commands = 0;
        while !self.quit && self.pos < self.input.len() {
            if self.in_data {
                let rest = &self.input[self.pos..];
                let end = rest.windows(5).position(|w| w == b"\r\n.\r\n");
                let (content, len) = match end {
                    Some(end) => (String::from_utf8_lossy(&rest[..end]).into_owned(), end + 5),
                    // A lone dot (all recipients refused at RCPT).
                    None if rest.starts_with(b".\r\n") => (String::new(), 3),
                    None => break,
                };
                self.pos += len;
                self.in_data = false;
                self.end_of_data(&mut out, !content.contains("deny"));
                refusing = self.refuse_after_eod && self.pos < self.input.len();
                continue;
            }
            let Some(l) = self.line() else { break };
            let upper = l.to_ascii_uppercase();
            commands += 1;
            if self.refuse_pipelined && commands > 1 {
                self.refusals += 1;
                if let Some(n) = upper.strip_prefix("BDAT ") {
                    let n: usize = n
                        .split(' ')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    self.pos += n;
                }
                out.push_str("503 5.5.1 Error: bad sequence of commands\r\n");
                continue;
            }
            if refusing {
                self.refusals += usize::from(upper.starts_with("MAIL"));
                if let Some(n) = upper.strip_prefix("BDAT ") {
                    let n: usize = n
                        .split(' ')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    self.pos += n;
                }
                out.push_str("503 5.5.0 Error: pipelined after end of DATA\r\n");
                continue;
            }
            if upper.starts_with("EHLO") {
                out.push_str("250-mx.example\r\n250-PIPELINING\r\n");
                if self.chunking {
                    out.push_str("250-CHUNKING\r\n");
                }
                out.push_str("250 ENHANCEDSTATUSCODES\r\n");
            } else if upper.starts_with("MAIL") {
                self.in_mail = true;
                out.push_str("250 2.1.0 Ok\r\n");
            } else if let Some(addr) = upper.strip_prefix("RCPT TO:<") {
                let addr = l[9..9 + addr.len() - 1].to_string();
                if !self.in_mail {
                    out.push_str("503 5.5.1 need MAIL\r\n");
                } else if addr.starts_with("bad") {
                    self.rejected.insert(addr);
                    out.push_str("550 5.1.1 no such user\r\n");
                } else if addr.starts_with("tmp") {
                    out.push_str("451 4.3.0 try later\r\n");
                } else {
                    self.rcpts.push(addr);
                    out.push_str("250 2.1.5 Ok\r\n");
                }
            } else if upper == "DATA" {
                if self.rcpts.is_empty() {
                    out.push_str("554 5.5.1 no valid recipients\r\n");
                } else {
                    out.push_str("354 go\r\n");
                    self.in_data = true;
                }
            } else if let Some(n) = upper.strip_prefix("BDAT ") {
                let n: usize = n
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let content =
                    String::from_utf8_lossy(&self.input[self.pos..self.pos + n]).into_owned();
                self.pos += n;
                if !self.in_mail {
                    out.push_str("503 5.5.1 need MAIL\r\n");
                } else {
                    self.end_of_data(&mut out, !content.contains("deny"));
                    refusing = self.refuse_after_eod && self.pos < self.input.len();
                }
            } else if upper == "RSET" {
                self.in_mail = false;
                self.rcpts.clear();
                out.push_str("250 2.0.0 Ok\r\n");
            } else if upper == "QUIT" {
                self.quit = true;
                out.push_str("221 2.0.0 Bye\r\n");
            } else {
                out.push_str("502 5.5.2 unknown command\r\n");
            }
        }
        out
    }
}

fn prop_config() -> PropConfig {
    PropConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x7265_6675_7365),
        failure_persistence: None,
        ..PropConfig::default()
    }
}

/// A recipient tag: accepted, rejected (550), deferred (451).
fn tag() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["ok", "ok", "ok", "bad", "tmp"])
}

proptest! {
    #![proptest_config(prop_config())]

    #[test]
    fn refusals_after_end_of_data_never_become_rejections(
        chunking in any::<bool>(),
        mode in 0u8..3,
        window in 1usize..8,
        msgs in prop::collection::vec(
            (prop::collection::vec(tag(), 1..4), any::<bool>()),
            1..12,
        ),
        split in 0usize..40,
    ) {
        let now = Instant::now();
        let c = Config { window, ..cfg() };
        let mut s = Session::new(c, now);
        let mut server = Server {
            chunking,
            refuse_after_eod: mode == 1,
            refuse_pipelined: mode == 2,
            ..Server::default()
        };
        let mut all = Vec::new();
        for (i, (tags, deny)) in msgs.iter().enumerate() {
            let to: Vec<String> = tags
                .iter()
                .enumerate()
                .map(|(k, t)| format!("{t}{i}-{k}@example.net"))
                .collect();
            all.extend(to.iter().map(|a| (a.clone(), !*deny && a.starts_with("ok"))));
            let body = if *deny { "Subject: deny\n\nx\n" } else { "Subject: hi\n\nx\n" };
            s.send(Message {
                dsn: None,
                id: i as u64,
                from: "s@example.com".into(),
                to,
                data: body.as_bytes().to_vec(),
            });
        }
        s.quit();
        let mut events = Vec::new();
        let mut replies = "220 mx.example ESMTP\r\n".to_string();
        for _ in 0..1000 {
            let k = split.min(replies.len());
            s.handle_input(&replies.as_bytes()[..k], now);
            s.handle_input(&replies.as_bytes()[k..], now);
            events.extend(std::iter::from_fn(|| s.poll_event()));
            if s.is_closed() {
                break;
            }
            let mut out = Vec::new();
            s.poll_transmit(now, &mut out);
            prop_assert!(!out.is_empty(), "the session waits for nothing");
            replies = server.answer(&out);
        }
        prop_assert!(s.is_closed());
        let mut seen = HashMap::new();
        for e in &events {
            if let Event::Recipient(o) = e {
                prop_assert!(seen.insert(o.address.clone(), o.delivery).is_none(), "twice: {o:?}");
                match o.delivery {
                    Delivery::Rejected => prop_assert!(
                        server.rejected.contains(&o.address),
                        "rejected but the server did not reject it: {o:?}"
                    ),
                    Delivery::Sent => prop_assert!(server.stored.contains(&o.address), "{o:?}"),
                    Delivery::Deferred => prop_assert!(o.address.starts_with("tmp"), "{o:?}"),
                    Delivery::Unknown => prop_assert!(false, "unknown: {o:?}"),
                }
            }
        }
        prop_assert_eq!(seen.len(), all.len());
        for (a, clean) in &all {
            // Every good recipient of a clean message is stored and reported sent.
            if *clean {
                prop_assert_eq!(seen.get(a), Some(&Delivery::Sent), "{}", a);
            }
        }
        if server.refusals > 0 {
            prop_assert!(s.pipelining_level() >= PipeliningLevel::WithinMessage);
        }
    }
}
