//! Property tests of the engine's parsers and encoders under attack (issue #7), with a fixed
//! seed and fixed case counts so CI is deterministic.
//!
//! - reply parser: random valid replies, encoded and fed split at random points, parse to
//!   exactly the replies encoded; random bytes never panic;
//! - EHLO parser: never panics; keywords are case-insensitive;
//! - body encoder: `decode_data(encode_data(x)) == normalize(x)`; the only `CRLF.CRLF` is the
//!   end; no bare CR or LF; never `LF.LF` or `CR.CR`; BDAT counts exact;
//! - address check: an accepted address has no CR, LF, NUL, `<` or `>`, and white space only
//!   inside a quoted local part (RFC 5321 allows `"john doe"@example.com`);
//! - the session, fed random server byte streams in random pieces, never panics, and reports
//!   every recipient of every queued message exactly once, then `MessageDone` once each;
//! - against a small responsive server that answers each command with a random but
//!   well-sequenced reply (and may drop the connection), the session reports `sent` for
//!   exactly the recipients the server accepted into a transaction whose end it accepted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pipemail::engine::body::{decode_data, encode_bdat_into, encode_data_into, normalize_into};
use pipemail::engine::{
    Capabilities, Config as SessionConfig, Credentials, Event, Extensions, Message,
    PipeliningPolicy, Reply, ReplyParser, Secret, Session, Timeouts, TlsPolicy, check_address,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

const SEED: u64 = 0x7072_6f70_7331; // "props1"

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(SEED),
        failure_persistence: None,
        ..Config::default()
    }
}

// ----- reply parser -----------------------------------------------------------------------

/// A reply as the test builds it: code, optional enhanced code, line texts.
#[derive(Debug, Clone)]
struct Spec {
    code: u16,
    enhanced: Option<(u16, u16)>,
    lines: Vec<String>,
    bare_last: bool,
}

fn text() -> impl Strategy<Value = String> {
    // Starts with a letter (never an enhanced code by accident); then any printable ASCII,
    // UTF-8 and spaces.
    (
        prop::char::range('a', 'z'),
        prop::collection::vec(
            prop_oneof![
                4 => prop::char::range(' ', '~'),
                1 => prop::sample::select(vec!['é', '€', '😀', '\t']),
            ],
            0..60,
        ),
    )
        .prop_map(|(first, rest)| std::iter::once(first).chain(rest).collect())
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        200u16..=599,
        prop::option::of((0u16..=999, 0u16..=999)),
        prop::collection::vec(text(), 1..6),
        any::<bool>(),
    )
        .prop_map(|(code, enhanced, lines, bare_last)| {
            let class = code / 100;
            Spec {
                code,
                // An enhanced code is only recognised when its class matches (2, 4, 5).
                enhanced: enhanced.filter(|_| matches!(class, 2 | 4 | 5)),
                bare_last: bare_last && lines.len() == 1,
                lines,
            }
        })
}

impl Spec {
    fn encode(&self, out: &mut Vec<u8>) {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            if self.bare_last && i + 1 == n && line.is_empty() {
                out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
                continue;
            }
            let enh = self
                .enhanced
                .map(|(s, d)| format!("{}.{s}.{d} ", self.code / 100))
                .unwrap_or_default();
            out.extend_from_slice(format!("{}{sep}{enh}{line}\r\n", self.code).as_bytes());
        }
    }

    fn matches(&self, r: &Reply) -> bool {
        r.code == self.code
            && r.enhanced.map(|e| (e.class, e.subject, e.detail))
                == self.enhanced.map(|(s, d)| ((self.code / 100) as u8, s, d))
            && r.lines == self.lines
    }
}

fn parse_pieces(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Reply>, String> {
    let mut p = ReplyParser::new();
    let mut out = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut start = 0;
    for end in cuts.into_iter().chain(std::iter::once(bytes.len())) {
        p.feed(&bytes[start..end]);
        start = end;
        while let Some(r) = p.next_reply().map_err(|e| e.to_string())? {
            out.push(r);
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn replies_split_anywhere_parse_like_the_whole(
        specs in prop::collection::vec(spec(), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut bytes = Vec::new();
        for s in &specs {
            s.encode(&mut bytes);
        }
        let whole = parse_pieces(&bytes, &[]).expect("valid replies parse");
        prop_assert_eq!(whole.len(), specs.len());
        for (s, r) in specs.iter().zip(&whole) {
            prop_assert!(s.matches(r), "{:?} parsed as {:?}", s, r);
        }
        let split = parse_pieces(&bytes, &cuts).expect("valid replies parse");
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn random_bytes_never_panic_the_reply_parser(
        bytes in prop::collection::vec(
            prop_oneof![
                3 => any::<u8>(),
                3 => prop::sample::select(b"0123456789 -\r\n.".to_vec()),
            ],
            0..2048,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let _ = parse_pieces(&bytes, &cuts);
    }
}

// ----- EHLO -------------------------------------------------------------------------------

const KEYWORDS: [(&str, Extensions); 9] = [
    ("PIPELINING", Extensions::PIPELINING),
    ("CHUNKING", Extensions::CHUNKING),
    ("SIZE 1000", Extensions::SIZE),
    ("8BITMIME", Extensions::EIGHT_BIT_MIME),
    ("SMTPUTF8", Extensions::SMTPUTF8),
    ("STARTTLS", Extensions::STARTTLS),
    ("AUTH PLAIN LOGIN", Extensions::AUTH),
    ("ENHANCEDSTATUSCODES", Extensions::ENHANCED_STATUS_CODES),
    ("DSN", Extensions::DSN),
];

fn mixed_case(s: &str, flips: &[bool]) -> String {
    s.chars()
        .zip(flips.iter().cycle())
        .map(|(c, &f)| {
            if f {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn ehlo_parser_never_panics(lines in prop::collection::vec(".{0,80}", 0..20)) {
        let reply = Reply { code: 250, enhanced: None, lines };
        let caps = Capabilities::from_ehlo(&reply);
        let _ = caps.has(Extensions::PIPELINING);
    }

    #[test]
    fn ehlo_keywords_are_case_insensitive(
        picked in prop::collection::vec(any::<bool>(), KEYWORDS.len()),
        flips in prop::collection::vec(any::<bool>(), 1..16),
        junk in prop::collection::vec("[A-Z][A-Z0-9-]{0,10}( [a-z0-9=]{1,8})?", 0..4),
    ) {
        let mut upper = vec!["mx.example greets you".to_string()];
        let mut mixed = upper.clone();
        let mut want = Vec::new();
        for ((kw, bit), take) in KEYWORDS.iter().zip(&picked) {
            if *take {
                upper.push((*kw).to_string());
                mixed.push(mixed_case(kw, &flips));
                want.push(*bit);
            }
        }
        for j in &junk {
            upper.push(j.clone());
            mixed.push(j.clone());
        }
        let a = Capabilities::from_ehlo(&Reply { code: 250, enhanced: None, lines: upper });
        let b = Capabilities::from_ehlo(&Reply { code: 250, enhanced: None, lines: mixed });
        prop_assert_eq!(a.extensions, b.extensions);
        prop_assert_eq!(a.size, b.size);
        prop_assert_eq!(a.auth, b.auth);
        for (_, bit) in KEYWORDS {
            prop_assert_eq!(b.has(bit), want.contains(&bit), "{:?}", bit);
        }
        if want.contains(&Extensions::SIZE) {
            prop_assert_eq!(b.size, 1000);
        }
    }
}

// ----- body -------------------------------------------------------------------------------

fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b".\r\n".to_vec()),
            2 => prop::sample::select(b"aZ ".to_vec()),
            1 => any::<u8>(),
        ],
        0..400,
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn data_encoding_round_trips_and_cannot_smuggle(body in body_bytes()) {
        let mut enc = Vec::new();
        encode_data_into(&body, &mut enc);
        let mut norm = Vec::new();
        normalize_into(&body, &mut norm);
        prop_assert_eq!(decode_data(&enc).expect("ends with CRLF.CRLF"), norm.clone());

        // The end-of-data sequence appears once, at the very end.
        if enc == b".\r\n" {
            prop_assert!(body.is_empty());
        } else {
            prop_assert_eq!(find(&enc, b"\r\n.\r\n"), vec![enc.len() - 5]);
        }
        // No bare CR or LF: every CR is followed by LF, every LF preceded by CR.
        for (i, &b) in enc.iter().enumerate() {
            if b == b'\r' {
                prop_assert_eq!(enc.get(i + 1), Some(&b'\n'), "bare CR at {}", i);
            }
            if b == b'\n' {
                prop_assert!(i > 0 && enc[i - 1] == b'\r', "bare LF at {}", i);
            }
        }
        prop_assert!(find(&enc, b"\n.\n").is_empty());
        prop_assert!(find(&enc, b"\r.\r").is_empty());
        // Normalized content: CRLF only, ending with CRLF.
        prop_assert!(norm.is_empty() || norm.ends_with(b"\r\n"));
    }

    #[test]
    fn bdat_chunk_is_the_normalized_body_with_an_exact_count(body in body_bytes()) {
        let mut out = Vec::new();
        let n = encode_bdat_into(&body, &mut out);
        let header = format!("BDAT {n} LAST\r\n");
        prop_assert!(out.starts_with(header.as_bytes()));
        let mut norm = Vec::new();
        normalize_into(&body, &mut norm);
        prop_assert_eq!(&out[header.len()..], &norm[..]);
    }
}

// ----- addresses --------------------------------------------------------------------------

fn address() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        6 => prop::char::range('a', 'z'),
        2 => prop::sample::select(vec!['@', '.', '"', '+', '-']),
        2 => prop::sample::select(vec!['\r', '\n', '\0', '<', '>', ' ', '\t', '\u{7f}', '\u{85}', 'é']),
        1 => any::<char>(),
    ];
    prop_oneof![
        prop::collection::vec(c.clone(), 0..40).prop_map(|v| v.into_iter().collect::<String>()),
        // Mostly well-formed, with a random local part (sometimes quoted).
        (
            prop::collection::vec(c, 1..20),
            any::<bool>(),
            "[a-z]{1,10}\\.[a-z]{2,3}"
        )
            .prop_map(|(local, quoted, domain)| {
                let local: String = local.into_iter().collect();
                if quoted {
                    format!("\"{local}\"@{domain}")
                } else {
                    format!("{local}@{domain}")
                }
            }),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn accepted_addresses_cannot_break_a_command_line(addr in address()) {
        if check_address(&addr).is_ok() {
            prop_assert!(!addr.contains(['\r', '\n', '\0', '<', '>']), "{:?}", addr);
            prop_assert!(!addr.chars().any(char::is_control), "{:?}", addr);
            let at = addr.rfind('@').expect("has @");
            let (local, domain) = (&addr[..at], &addr[at + 1..]);
            prop_assert!(!domain.contains(char::is_whitespace), "{:?}", addr);
            if local.contains(char::is_whitespace) {
                prop_assert!(local.len() >= 2 && local.starts_with('"') && local.ends_with('"'));
            }
        }
    }
}

// ----- session ----------------------------------------------------------------------------

/// Pieces of server output: mostly plausible replies, some garbage.
fn server_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(b"220 mx.example ESMTP\r\n".to_vec()),
        3 => ehlo_reply(),
        8 => Just(b"250 2.1.0 Ok\r\n".to_vec()),
        3 => Just(b"354 go ahead\r\n".to_vec()),
        2 => Just(b"221 bye\r\n".to_vec()),
        1 => Just(b"334 VXNlcm5hbWU6\r\n".to_vec()),
        1 => Just(b"235 2.7.0 ok\r\n".to_vec()),
        1 => Just(b"220 2.0.0 Ready to start TLS\r\n".to_vec()),
        2 => Just(b"421 4.3.0 closing\r\n".to_vec()),
        2 => Just(b"450 4.2.0 later\r\n".to_vec()),
        2 => Just(b"550 5.1.1 no\r\n".to_vec()),
        1 => Just(b"503 5.5.1 bad sequence\r\n".to_vec()),
        1 => Just(b"554 5.5.1 no valid recipients\r\n".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..20),
        1 => Just(b"25".to_vec()),
    ]
}

/// A multi-line EHLO reply with random keywords.
fn ehlo_reply() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "PIPELINING",
            "CHUNKING",
            "SIZE 200",
            "SIZE 100000",
            "8BITMIME",
            "SMTPUTF8",
            "STARTTLS",
            "AUTH PLAIN",
            "AUTH LOGIN",
            "ENHANCEDSTATUSCODES",
            "X-WHATEVER",
        ]),
        0..6,
    )
    .prop_map(|kws| {
        let mut s = String::from("250-mx.example\r\n");
        for k in kws {
            s.push_str("250-");
            s.push_str(k);
            s.push_str("\r\n");
        }
        s.push_str("250 HELP\r\n");
        s.into_bytes()
    })
}

#[derive(Debug, Clone)]
enum Act {
    /// Server bytes, delivered in pieces at these cut points.
    Input(Vec<u8>, Vec<usize>),
    /// Time passes by this many milliseconds.
    Wait(u64),
    Flush,
    Quit,
    Eof,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        10 => (server_piece(), prop::collection::vec(any::<usize>(), 0..3))
            .prop_map(|(b, c)| Act::Input(b, c)),
        1 => (0u64..3000).prop_map(Act::Wait),
        1 => Just(Act::Flush),
        1 => Just(Act::Quit),
        1 => Just(Act::Eof),
    ]
}

fn session_config() -> impl Strategy<Value = SessionConfig> {
    (
        prop::sample::select(vec![
            PipeliningPolicy::Auto,
            PipeliningPolicy::Off,
            PipeliningPolicy::Require,
        ]),
        any::<bool>(),
        prop::sample::select(vec![
            TlsPolicy::None,
            TlsPolicy::Opportunistic,
            TlsPolicy::Required,
        ]),
        any::<bool>(),
        1usize..5,
    )
        .prop_map(|(pipelining, chunking, tls, auth, window)| SessionConfig {
            pipelining,
            chunking,
            tls,
            auth: auth.then(|| Credentials {
                username: "user".into(),
                password: Secret::new("pass"),
            }),
            allow_plaintext_auth: true,
            window,
            window_bytes: 1000,
            timeouts: Timeouts::all(Duration::from_secs(1)),
            transcript: true,
            ..SessionConfig::default()
        })
}

fn messages() -> impl Strategy<Value = Vec<Message>> {
    prop::collection::vec(
        (
            prop::collection::vec(
                prop::sample::select(vec![
                    "a@example.net",
                    "b@example.net",
                    "bad address",
                    "ü@example.net",
                ]),
                0..4,
            ),
            prop::collection::vec(prop::sample::select(b"x.\r\n".to_vec()), 0..120),
        ),
        1..6,
    )
    .prop_map(|ms| {
        ms.into_iter()
            .enumerate()
            .map(|(i, (to, data))| Message {
                dsn: None,
                id: i as u64,
                from: "sender@example.org".into(),
                to: to.into_iter().map(String::from).collect(),
                data,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn session_survives_random_servers_and_reports_each_recipient_once(
        cfg in session_config(),
        msgs in messages(),
        prelude in prop::option::weighted(0.8, ehlo_reply()),
        acts in prop::collection::vec(act(), 0..40),
        tls_ok in any::<bool>(),
    ) {
        // Most cases start like a real server (greeting, EHLO) so that mail gets going.
        let acts = prelude
            .map(|ehlo| {
                vec![
                    Act::Input(b"220 mx.example ESMTP\r\n".to_vec(), vec![]),
                    Act::Input(ehlo, vec![]),
                ]
            })
            .unwrap_or_default()
            .into_iter()
            .chain(acts);
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Session::new(cfg, now);
        for m in &msgs {
            s.send(m.clone());
        }
        let mut out = Vec::new();
        let mut outcomes: HashMap<(u64, usize), u32> = HashMap::new();
        let mut done: HashMap<u64, u32> = HashMap::new();
        let mut closed = 0;
        let mut drain = |s: &mut Session, now: Instant| -> Result<(), TestCaseError> {
            while let Some(e) = s.poll_event() {
                match e {
                    Event::Recipient(o) => {
                        *outcomes.entry((o.message, o.index)).or_default() += 1;
                        prop_assert!(!done.contains_key(&o.message), "outcome after MessageDone");
                    }
                    Event::MessageDone(id) => *done.entry(id).or_default() += 1,
                    Event::Closed(_) => closed += 1,
                    Event::StartTls => {
                        if tls_ok {
                            s.handle_tls_established(now);
                        } else {
                            s.handle_io_error(pipemail::engine::SessionError::Tls("no".into()));
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        for a in acts {
            out.clear();
            s.poll_transmit(now, &mut out);
            drain(&mut s, now)?;
            match a {
                Act::Input(bytes, cuts) => {
                    let mut cuts: Vec<usize> =
                        cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
                    cuts.sort_unstable();
                    let mut start = 0;
                    for end in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                        s.handle_input(&bytes[start..end], now);
                        start = end;
                    }
                }
                Act::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    s.handle_timeout(now);
                }
                Act::Flush => s.flush(),
                Act::Quit => s.quit(),
                Act::Eof => s.handle_eof(),
            }
            drain(&mut s, now)?;
        }
        out.clear();
        s.poll_transmit(now, &mut out);
        s.handle_eof();
        drain(&mut s, now)?;
        prop_assert!(s.is_closed());
        prop_assert_eq!(closed, 1);
        for m in &msgs {
            for i in 0..m.to.len() {
                prop_assert_eq!(outcomes.get(&(m.id, i)).copied(), Some(1), "message {} rcpt {}", m.id, i);
            }
            prop_assert_eq!(done.get(&m.id).copied(), Some(1), "message {} done", m.id);
        }
        prop_assert_eq!(outcomes.len(), msgs.iter().map(|m| m.to.len()).sum::<usize>());
    }
}

// ----- session against a responsive random server -----------------------------------------

fn good_messages() -> impl Strategy<Value = Vec<Message>> {
    prop::collection::vec(
        (
            prop::collection::vec(
                prop::sample::select(vec!["a@example.net", "b@example.net", "c@example.net"]),
                1..4,
            ),
            prop::collection::vec(prop::sample::select(b"x.\r\n".to_vec()), 0..60),
        ),
        1..10,
    )
    .prop_map(|ms| {
        ms.into_iter()
            .enumerate()
            .map(|(i, (to, data))| Message {
                dsn: None,
                id: i as u64,
                from: "sender@example.org".into(),
                to: to.into_iter().map(String::from).collect(),
                data,
            })
            .collect()
    })
}

/// A tiny SMTP server that answers what the client really sent, choosing each reply from
/// `choices` (well-sequenced: 503 without MAIL, 554 without recipients), and records which
/// recipients it accepted for good.
struct Peer {
    buf: Vec<u8>,
    mode: PeerMode,
    choices: Vec<u8>,
    next: usize,
    /// Close (without a reply) when this unit arrives.
    drop_at: Option<usize>,
    units: usize,
    txn: Option<Vec<String>>,
    ehlo: String,
    out: Vec<u8>,
    closed: bool,
    delivered: Vec<String>,
}

enum PeerMode {
    Command,
    Data,
    Bdat(usize),
}

impl Peer {
    fn pick<'a>(&mut self, opts: &[&'a str]) -> &'a str {
        let c = self.choices.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        opts[usize::from(c) % opts.len()]
    }

    fn reply(&mut self, r: &str) {
        self.out.extend_from_slice(r.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        if r.starts_with("421") || r.starts_with("221") {
            self.closed = true;
        }
    }

    /// Ends a message (final dot or BDAT LAST) with a random reply.
    fn end_message(&mut self) {
        let Some(rcpts) = self.txn.take() else {
            return self.reply("503 5.5.1 need MAIL");
        };
        if rcpts.is_empty() {
            return self.reply("554 5.5.1 no valid recipients");
        }
        let r = self.pick(&[
            "250 2.0.0 queued",
            "250 2.0.0 queued",
            "250 2.0.0 queued",
            "451 4.3.0 later",
            "554 5.6.0 no",
        ]);
        if r.starts_with('2') {
            self.delivered.extend(rcpts);
        }
        self.reply(r);
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while !self.closed {
            match self.mode {
                PeerMode::Command => {
                    let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                        return;
                    };
                    let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                    if self.unit() {
                        return;
                    }
                    self.command(&String::from_utf8_lossy(&line));
                }
                PeerMode::Data => {
                    let end = if self.buf.starts_with(b".\r\n") {
                        Some(3)
                    } else {
                        self.buf
                            .windows(5)
                            .position(|w| w == b"\r\n.\r\n")
                            .map(|i| i + 5)
                    };
                    let Some(end) = end else { return };
                    self.buf.drain(..end);
                    self.mode = PeerMode::Command;
                    if self.unit() {
                        return;
                    }
                    self.end_message();
                }
                PeerMode::Bdat(n) => {
                    if self.buf.len() < n {
                        return;
                    }
                    self.buf.drain(..n);
                    self.mode = PeerMode::Command;
                    if self.unit() {
                        return;
                    }
                    self.end_message();
                }
            }
        }
    }

    /// Counts a unit; true when the peer drops the connection instead of answering it.
    fn unit(&mut self) -> bool {
        self.units += 1;
        if self.drop_at == Some(self.units) {
            self.closed = true;
        }
        self.closed
    }

    fn command(&mut self, line: &str) {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                let e = self.ehlo.clone();
                self.out.extend_from_slice(e.as_bytes());
            }
            "MAIL" => {
                if self.txn.is_some() {
                    return self.reply("503 5.5.1 nested MAIL command");
                }
                let r = self.pick(&[
                    "250 2.1.0 ok",
                    "250 2.1.0 ok",
                    "250 2.1.0 ok",
                    "451 4.3.0 later",
                    "550 5.7.1 no",
                    "421 4.3.0 bye",
                ]);
                if r.starts_with('2') {
                    self.txn = Some(Vec::new());
                }
                self.reply(r);
            }
            "RCPT" => {
                if self.txn.is_none() {
                    return self.reply("503 5.5.1 need MAIL");
                }
                let r = self.pick(&[
                    "250 2.1.5 ok",
                    "250 2.1.5 ok",
                    "250 2.1.5 ok",
                    "450 4.2.0 later",
                    "550 5.1.1 no",
                ]);
                if r.starts_with('2') {
                    let addr = line
                        .split_once('<')
                        .and_then(|(_, a)| a.split_once('>'))
                        .map(|(a, _)| a.to_string())
                        .unwrap_or_default();
                    if let Some(t) = self.txn.as_mut() {
                        t.push(addr);
                    }
                }
                self.reply(r);
            }
            "DATA" => match &self.txn {
                None => self.reply("503 5.5.1 need MAIL"),
                Some(t) if t.is_empty() => self.reply("554 5.5.1 no valid recipients"),
                Some(_) => {
                    let r = self.pick(&["354 go", "354 go", "354 go", "451 4.3.0 later"]);
                    if r.starts_with("354") {
                        self.mode = PeerMode::Data;
                    } else {
                        self.txn = None;
                    }
                    self.reply(r);
                }
            },
            "BDAT" => {
                let n = line
                    .split(' ')
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                self.mode = PeerMode::Bdat(n);
            }
            "RSET" => {
                let r = self.pick(&[
                    "250 2.0.0 ok",
                    "250 2.0.0 ok",
                    "250 2.0.0 ok",
                    "451 4.3.0 no",
                ]);
                if r.starts_with('2') {
                    self.txn = None;
                }
                self.reply(r);
            }
            "QUIT" => self.reply("221 2.0.0 bye"),
            _ => self.reply("502 5.5.1 not implemented"),
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn session_reports_sent_exactly_what_a_random_server_accepted(
        pipelining in prop::sample::select(vec![PipeliningPolicy::Auto, PipeliningPolicy::Off]),
        chunking in any::<bool>(),
        caps in prop::sample::select(vec![
            "250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n",
            "250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "250-mx\r\n250 8BITMIME\r\n",
        ]),
        window in 1usize..6,
        msgs in good_messages(),
        // Mostly the first (positive) reply, so that mail flows between the failures.
        choices in prop::collection::vec(prop_oneof![4 => Just(0u8), 1 => any::<u8>()], 0..120),
        drop_at in prop::option::weighted(0.3, 1usize..40),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let now = Instant::now();
        let cfg = SessionConfig {
            pipelining,
            chunking,
            tls: TlsPolicy::None,
            window,
            ..SessionConfig::default()
        };
        let mut s = Session::new(cfg, now);
        for m in &msgs {
            s.send(m.clone());
        }
        s.quit();
        let mut peer = Peer {
            buf: Vec::new(),
            mode: PeerMode::Command,
            choices,
            next: 0,
            drop_at,
            units: 0,
            txn: None,
            ehlo: caps.to_string(),
            out: b"220 mx ESMTP\r\n".to_vec(),
            closed: false,
            delivered: Vec::new(),
        };
        let mut sent = Vec::new();
        let mut outcomes: HashMap<(u64, usize), u32> = HashMap::new();
        let mut out = Vec::new();
        for _ in 0..1000 {
            // Server -> client, in pieces.
            let bytes = std::mem::take(&mut peer.out);
            let mut cs: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cs.sort_unstable();
            let mut start = 0;
            for end in cs.into_iter().chain(std::iter::once(bytes.len())) {
                s.handle_input(&bytes[start..end], now);
                start = end;
            }
            if peer.closed {
                s.handle_eof();
            }
            while let Some(e) = s.poll_event() {
                if let Event::Recipient(o) = e {
                    *outcomes.entry((o.message, o.index)).or_default() += 1;
                    if o.delivery == pipemail::engine::Delivery::Sent {
                        sent.push(o.address.clone());
                    }
                }
            }
            if s.is_closed() {
                break;
            }
            // Client -> server.
            out.clear();
            s.poll_transmit(now, &mut out);
            if out.is_empty() && peer.out.is_empty() {
                s.flush();
                s.poll_transmit(now, &mut out);
                prop_assert!(!out.is_empty() || s.in_flight() > 0, "stuck: nothing to send, nothing awaited");
            }
            peer.feed(&out);
        }
        prop_assert!(s.is_closed(), "session did not end");
        for m in &msgs {
            for i in 0..m.to.len() {
                prop_assert_eq!(outcomes.get(&(m.id, i)).copied(), Some(1), "message {} rcpt {}", m.id, i);
            }
        }
        sent.sort();
        let mut delivered = peer.delivered.clone();
        delivered.sort();
        prop_assert_eq!(sent, delivered);
    }
}
