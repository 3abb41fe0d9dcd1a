//! The server's command verbs: EHLO/HELO, MAIL, RCPT, DATA and BDAT ends, STARTTLS, AUTH.

use std::sync::Arc;

use base64::Engine as _;

use super::config::MAX_RCPTS;
use super::proto::{self, DotDecoder, Verb};
use super::server::{Envelope, Event, Mode, Server, Txn};

fn envelope(txn: Txn, via_bdat: bool) -> Envelope {
    Envelope {
        from: txn.from,
        rcpts: txn.rcpts,
        data: txn.body,
        via_bdat,
    }
}

impl Server {
    /// Executes a command line.
    pub(super) fn command(&mut self, line: &[u8]) {
        let (verb, args) = Verb::split(line);
        match verb {
            Verb::Ehlo => self.ehlo(args),
            Verb::Helo => {
                if args.is_empty() {
                    self.reply("501 5.5.4 Syntax: HELO hostname");
                } else {
                    self.helo = true;
                    self.txn = None;
                    let text = format!("250 {}", self.cfg.hostname);
                    self.reply(&text);
                }
            }
            Verb::Mail => self.mail(args),
            Verb::Rcpt => {
                if let Err(text) = self.rcpt(args) {
                    self.event(Event::RecipientRejected);
                    self.reply(&text);
                }
            }
            Verb::Data => self.data(args),
            // A well-formed BDAT never gets here (its chunk is framed first).
            Verb::Bdat => self.reply("501 5.5.4 Syntax: BDAT size [LAST]"),
            Verb::Rset => {
                self.txn = None;
                self.reply("250 2.0.0 Ok");
            }
            Verb::Noop => self.reply("250 2.0.0 Ok"),
            Verb::Vrfy => {
                self.reply(
                    "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
                );
            }
            Verb::Quit => {
                self.reply("221 2.0.0 Bye");
                self.quit();
            }
            Verb::StartTls => self.starttls(args),
            Verb::Auth => self.auth(args),
            Verb::Unknown => self.reply("500 5.5.2 Error: command not recognized"),
        }
    }

    fn auth_offered(&self) -> bool {
        self.auth_enabled() && (self.tls_active || self.cfg.allow_plain_auth)
    }

    /// AUTH is configured: a password, an OAuth token, or both.
    fn auth_enabled(&self) -> bool {
        self.cfg.auth.is_some() || self.cfg.oauth_token.is_some()
    }

    fn ehlo(&mut self, args: &[u8]) {
        if args.is_empty() {
            self.reply("501 5.5.4 Syntax: EHLO hostname");
            return;
        }
        self.helo = true;
        self.txn = None;
        let cfg = Arc::clone(&self.cfg);
        let mut lines = vec![cfg.hostname.clone()];
        if cfg.pipelining {
            lines.push("PIPELINING".into());
        }
        if let Some(size) = cfg.size {
            lines.push(format!("SIZE {size}"));
        }
        if cfg.eight_bit_mime {
            lines.push("8BITMIME".into());
        }
        lines.push("ENHANCEDSTATUSCODES".into());
        if cfg.chunking {
            lines.push("CHUNKING".into());
        }
        if cfg.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if cfg.dsn {
            lines.push("DSN".into());
        }
        if self.cfg.tls.is_some() && !self.tls_active {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            let mut mechs = String::from("AUTH");
            if cfg.auth.is_some() {
                mechs.push_str(" PLAIN LOGIN");
            }
            if cfg.oauth_token.is_some() {
                mechs.push_str(" XOAUTH2 OAUTHBEARER");
            }
            lines.push(mechs);
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let text = format!("250{sep}{line}");
            self.reply(&text);
        }
    }

    fn mail(&mut self, args: &[u8]) {
        if !self.helo {
            return self.reply("503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.auth_enabled() && !self.authenticated {
            return self.reply("530 5.7.0 Authentication required");
        }
        if self.txn.is_some() {
            return self.reply("503 5.5.1 Error: nested MAIL command");
        }
        let Ok((from, params)) = proto::parse_path(args, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let mut smtputf8 = false;
        for param in params {
            let (key, value) = match param.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (param, None),
            };
            match (key.to_ascii_uppercase().as_str(), value) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.size_limit => {
                        return self.reply("552 5.3.4 Message size exceeds fixed limit");
                    }
                    Ok(_) => {}
                    Err(_) => return self.reply("501 5.5.4 Bad SIZE parameter"),
                },
                ("BODY", Some(v))
                    if v.eq_ignore_ascii_case("7BIT")
                        || (v.eq_ignore_ascii_case("8BITMIME") && self.cfg.eight_bit_mime) => {}
                ("SMTPUTF8", None) if self.cfg.smtputf8 => smtputf8 = true,
                ("RET", Some(v))
                    if self.cfg.dsn
                        && (v.eq_ignore_ascii_case("FULL") || v.eq_ignore_ascii_case("HDRS")) => {}
                ("ENVID", Some(v)) if self.cfg.dsn && !v.is_empty() => {}
                _ => {
                    let text = format!("555 5.5.4 Unsupported option: {param}");
                    return self.reply(&text);
                }
            }
        }
        if !from.is_ascii() && !smtputf8 {
            return self.reply("553 5.6.7 Must declare SMTPUTF8 to send unicode address");
        }
        self.txn = Some(Txn {
            from,
            smtputf8,
            rcpts: Vec::new(),
            body: Vec::new(),
            oversize: false,
            bdat: false,
        });
        self.reply("250 2.1.0 Ok");
    }

    /// `Err` carries the rejection reply (the caller counts it).
    fn rcpt(&mut self, args: &[u8]) -> Result<(), String> {
        let Some(txn) = &self.txn else {
            return Err("503 5.5.1 Error: need MAIL command".into());
        };
        let Ok((addr, params)) = proto::parse_path(args, "TO:") else {
            return Err("501 5.5.4 Syntax: RCPT TO:<address>".into());
        };
        if addr.is_empty() {
            return Err("501 5.1.3 Bad recipient address syntax".into());
        }
        let dsn_param = |p: &str| {
            let key = p.split_once('=').map(|(k, _)| k.to_ascii_uppercase());
            self.cfg.dsn && matches!(key.as_deref(), Some("NOTIFY" | "ORCPT"))
        };
        if let Some(param) = params.iter().find(|p| !dsn_param(p)) {
            return Err(format!("555 5.5.4 Unsupported option: {param}"));
        }
        if !addr.is_ascii() && !txn.smtputf8 {
            return Err("553 5.6.7 Must declare SMTPUTF8 to send unicode address".into());
        }
        if txn.rcpts.len() >= self.cfg.max_recipients.min(MAX_RCPTS) {
            return Err("452 4.5.3 Error: too many recipients".into());
        }
        if let Some(rule) = self.cfg.reject.iter().find(|r| r.matches(&addr)) {
            let enhanced = if rule.code < 500 { "4.2.0" } else { "5.1.1" };
            return Err(format!(
                "{} {enhanced} <{addr}>: Recipient address rejected",
                rule.code
            ));
        }
        if let Some(txn) = &mut self.txn {
            txn.rcpts.push(addr);
        }
        self.reply("250 2.1.5 Ok");
        Ok(())
    }

    fn data(&mut self, args: &[u8]) {
        if !args.is_empty() {
            return self.reply("501 5.5.4 Syntax: DATA");
        }
        if !self.helo {
            return self.reply("503 5.5.1 Error: send HELO/EHLO first");
        }
        let Some(txn) = &mut self.txn else {
            return self.reply("503 5.5.1 Error: need RCPT command");
        };
        if txn.bdat {
            return self.reply("503 5.5.1 Error: DATA after BDAT");
        }
        if txn.rcpts.is_empty() {
            return self.reply("554 5.5.1 Error: no valid recipients");
        }
        txn.body.clear();
        txn.oversize = false;
        self.mode = Mode::Data(DotDecoder::new());
        self.reply("354 End data with <CR><LF>.<CR><LF>");
    }

    /// The final dot: the message to store, if the transaction can end well.
    pub(super) fn finish_data(&mut self) -> Option<Envelope> {
        let Some(txn) = self.txn.take() else {
            self.reply("503 5.5.1 Error: need RCPT command");
            return None;
        };
        if txn.oversize {
            self.reply("552 5.3.4 Error: message file too big");
            return None;
        }
        Some(envelope(txn, false))
    }

    /// A chunk was consumed: the message to store after `BDAT … LAST`, if any.
    pub(super) fn finish_chunk(&mut self, size: u64, last: bool) -> Option<Envelope> {
        if !self.cfg.chunking {
            self.reply("502 5.5.1 Error: CHUNKING not enabled");
            return None;
        }
        if !self.helo {
            self.reply("503 5.5.1 Error: send HELO/EHLO first");
            return None;
        }
        let Some(txn) = &mut self.txn else {
            self.reply("503 5.5.1 Error: need MAIL command");
            return None;
        };
        if txn.rcpts.is_empty() {
            self.txn = None;
            self.reply("554 5.5.1 Error: no valid recipients");
            return None;
        }
        if txn.oversize {
            self.txn = None;
            self.reply("552 5.3.4 Error: message file too big");
            return None;
        }
        txn.bdat = true;
        if last {
            return self.txn.take().map(|txn| envelope(txn, true));
        }
        let text = format!("250 2.0.0 Ok: {size} octets received");
        self.reply(&text);
        None
    }

    fn starttls(&mut self, args: &[u8]) {
        if self.cfg.tls.is_none() {
            self.reply("502 5.5.1 Error: command not implemented");
        } else if self.tls_active {
            self.reply("503 5.5.1 Error: TLS already active");
        } else if !args.is_empty() {
            self.reply("501 5.5.4 Syntax: STARTTLS");
        } else {
            self.reply("220 2.0.0 Ready to start TLS");
            self.begin_tls();
        }
    }

    fn auth(&mut self, args: &[u8]) {
        if !self.auth_enabled() {
            return self.reply("502 5.5.1 Error: authentication not enabled");
        }
        if !self.helo {
            return self.reply("503 5.5.1 Error: send HELO/EHLO first");
        }
        if !self.auth_offered() {
            return self
                .reply("538 5.7.11 Encryption required for requested authentication mechanism");
        }
        if self.authenticated {
            return self.reply("503 5.5.1 Error: already authenticated");
        }
        if self.txn.is_some() {
            return self.reply("503 5.5.1 Error: MAIL transaction in progress");
        }
        let (mechanism, initial) = proto::split_verb(args);
        let initial = (!initial.is_empty()).then_some(initial);
        let password = self.cfg.auth.is_some();
        let oauth = self.cfg.oauth_token.is_some();
        match (mechanism.as_str(), initial) {
            ("PLAIN" | "LOGIN", _) if !password => {
                self.reply("504 5.5.4 Unrecognized authentication type")
            }
            ("XOAUTH2" | "OAUTHBEARER", _) if !oauth => {
                self.reply("504 5.5.4 Unrecognized authentication type")
            }
            ("XOAUTH2", Some(response)) => self.auth_oauth(response, false),
            ("OAUTHBEARER", Some(response)) => self.auth_oauth(response, true),
            ("XOAUTH2", None) => {
                self.mode = Mode::AuthOAuth(false);
                self.reply("334 ");
            }
            ("OAUTHBEARER", None) => {
                self.mode = Mode::AuthOAuth(true);
                self.reply("334 ");
            }
            ("PLAIN", Some(response)) => self.auth_plain(response),
            ("PLAIN", None) => {
                self.mode = Mode::AuthPlain;
                self.reply("334 ");
            }
            ("LOGIN", Some(user)) => match decode_b64(user) {
                Some(user) => {
                    self.mode = Mode::AuthLoginPass(user);
                    self.reply("334 UGFzc3dvcmQ6");
                }
                None => self.reply("501 5.5.2 Error: cannot decode response"),
            },
            ("LOGIN", None) => {
                self.mode = Mode::AuthLoginUser;
                self.reply("334 VXNlcm5hbWU6");
            }
            _ => self.reply("504 5.5.4 Unrecognized authentication type"),
        }
    }

    /// Executes an AUTH continuation line.
    pub(super) fn auth_continue(&mut self, line: &[u8]) {
        let mode = std::mem::replace(&mut self.mode, Mode::Command);
        if line == b"*" {
            return self.reply("501 5.7.0 Authentication aborted");
        }
        match mode {
            Mode::AuthPlain => self.auth_plain(line),
            Mode::AuthLoginUser => match decode_b64(line) {
                Some(user) => {
                    self.mode = Mode::AuthLoginPass(user);
                    self.reply("334 UGFzc3dvcmQ6");
                }
                None => self.reply("501 5.5.2 Error: cannot decode response"),
            },
            Mode::AuthLoginPass(user) => match decode_b64(line) {
                Some(pass) => self.auth_result(&user, &pass),
                None => self.reply("501 5.5.2 Error: cannot decode response"),
            },
            Mode::AuthOAuth(bearer) => self.auth_oauth(line, bearer),
            Mode::AuthOAuthError => self.reply(OAUTH_FAILED),
            _ => self.reply("503 5.5.1 Error: no AUTH exchange in progress"),
        }
    }

    fn auth_plain(&mut self, response: &[u8]) {
        let Some(decoded) = decode_b64(response) else {
            return self.reply("501 5.5.2 Error: cannot decode response");
        };
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        match parts.as_slice() {
            [authzid, user, pass] if authzid.is_empty() || authzid == user => {
                let (user, pass) = (user.to_vec(), pass.to_vec());
                self.auth_result(&user, &pass);
            }
            _ => self.reply("535 5.7.8 Error: authentication failed"),
        }
    }

    fn auth_result(&mut self, user: &[u8], pass: &[u8]) {
        let ok = self
            .cfg
            .auth
            .as_ref()
            .is_some_and(|(u, p)| u.as_bytes() == user && p.as_bytes() == pass);
        if ok {
            self.authenticated = true;
            self.reply("235 2.7.0 Authentication successful");
        } else {
            self.reply("535 5.7.8 Error: authentication failed");
        }
    }
}

/// The final reply after an OAuth error challenge.
const OAUTH_FAILED: &str = "535 5.7.8 Authentication credentials invalid";

impl Server {
    /// Checks an XOAUTH2 (`bearer` false) or OAUTHBEARER (RFC 7628) client response.
    fn auth_oauth(&mut self, response: &[u8], bearer: bool) {
        let Some(decoded) = decode_b64(response) else {
            return self.reply("501 5.5.2 Error: cannot decode response");
        };
        let Some((user, token)) = parse_oauth(&decoded, bearer) else {
            return self.reply("501 5.5.2 Error: malformed OAuth response");
        };
        let user_ok = !user.is_empty()
            && self
                .cfg
                .auth
                .as_ref()
                .is_none_or(|(u, _)| u.as_bytes() == user.as_slice());
        let token_ok = self
            .cfg
            .oauth_token
            .as_ref()
            .is_some_and(|t| t.as_bytes() == token.as_slice());
        if user_ok && token_ok {
            self.authenticated = true;
            self.reply("235 2.7.0 Authentication successful");
        } else {
            // RFC 7628 §3.2.2: an error challenge; the client answers, then the final 535.
            self.mode = Mode::AuthOAuthError;
            let json = br#"{"status":"invalid_token","schemes":"Bearer","scope":"mail"}"#;
            let text = base64::engine::general_purpose::STANDARD.encode(json);
            self.reply(&format!("334 {text}"));
        }
    }
}

/// `(user, token)` from a decoded XOAUTH2 (`user=U^Aauth=Bearer T^A^A`) or OAUTHBEARER
/// (`n,a=U,^Aauth=Bearer T^A^A`, RFC 7628 §3.1) client response.
fn parse_oauth(msg: &[u8], bearer: bool) -> Option<(Vec<u8>, Vec<u8>)> {
    let body = msg.strip_suffix(b"\x01\x01")?;
    let mut parts = body.split(|&b| b == 0x01);
    let mut user = None;
    if bearer {
        // GS2 header: `n,a=saslname,` (`=2C` is `,` and `=3D` is `=`).
        let gs2 = parts.next()?;
        let rest = gs2.strip_prefix(b"n,")?;
        let name = rest.strip_prefix(b"a=")?.strip_suffix(b",")?;
        let name = String::from_utf8_lossy(name)
            .replace("=2C", ",")
            .replace("=3D", "=");
        user = Some(name.into_bytes());
    }
    let mut token = None;
    for kv in parts {
        if let Some(v) = kv.strip_prefix(b"user=").filter(|_| !bearer) {
            user = Some(v.to_vec());
        } else if let Some(v) = kv.strip_prefix(b"auth=") {
            let t = v
                .strip_prefix(b"Bearer ")
                .or_else(|| v.strip_prefix(b"bearer "))?;
            token = Some(t.to_vec());
        }
    }
    Some((user?, token?))
}

/// Decodes a SASL response (`=` is the empty response).
fn decode_b64(text: &[u8]) -> Option<Vec<u8>> {
    if text == b"=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}
