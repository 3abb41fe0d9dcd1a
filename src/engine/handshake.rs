//! The handshake: greeting, EHLO (HELO fallback), STARTTLS (RFC 3207), AUTH PLAIN/LOGIN
//! (RFC 4954), XOAUTH2 and OAUTHBEARER (RFC 7628), and the policy checks that may end a session before any mail (TLS or
//! PIPELINING required, AUTH over plain text).

use super::command::{self, Verb, line_text};
use super::config::{AuthMechanism, PipeliningPolicy, TlsPolicy};
use super::ehlo::{Capabilities, Extensions};
use super::error::{AuthOffer, SessionError, TlsRefusal};
use super::event::Event;
use super::outcome::Stage;
use super::pipeline::Awaiting;
use super::reply::Reply;
use super::session::{Phase, Session};

impl Session {
    /// Records a handshake command an encoder appended to `hs_out` from `start`; `shown` is
    /// what the transcript says instead of the wire text (secrets).
    fn push_handshake(&mut self, what: Awaiting, start: usize, shown: Option<&str>) {
        if matches!(
            what,
            Awaiting::Handshake(Verb::Ehlo | Verb::Helo | Verb::StartTls)
        ) {
            self.nonmail += 1; // see `resets.rs`
        }
        let line = self.cfg.transcript.then(|| match shown {
            Some(s) => s.to_string(),
            None => line_text(&self.hs_out[start..]),
        });
        self.in_flight.push(what, line);
    }

    pub(super) fn on_greeting(&mut self, reply: Reply) {
        if reply.code == 220 {
            self.events.push_back(Event::Greeting(reply));
            self.send_ehlo();
        } else {
            self.close(Some(SessionError::Greeting(reply)));
        }
    }

    pub(super) fn send_ehlo(&mut self) {
        self.phase = Phase::Ehlo;
        let start = self.hs_out.len();
        command::ehlo(&mut self.hs_out, &self.cfg.helo_name);
        self.push_handshake(Awaiting::Handshake(Verb::Ehlo), start, None);
    }

    pub(super) fn on_handshake_reply(&mut self, verb: Verb, reply: Reply) {
        match (verb, self.phase) {
            (Verb::Ehlo, _) => {
                if reply.is_positive() {
                    self.caps = Capabilities::from_ehlo(&reply);
                    self.events
                        .push_back(Event::Capabilities(self.caps.clone()));
                    self.after_ehlo();
                } else if reply.code == 421 {
                    self.close(Some(SessionError::ServiceClosing(reply)));
                } else {
                    self.phase = Phase::Helo;
                    let start = self.hs_out.len();
                    command::helo(&mut self.hs_out, &self.cfg.helo_name);
                    self.push_handshake(Awaiting::Handshake(Verb::Helo), start, None);
                }
            }
            (Verb::Helo, _) => {
                if reply.is_positive() {
                    self.caps = Capabilities::helo(&reply);
                    self.events
                        .push_back(Event::Capabilities(self.caps.clone()));
                    self.after_ehlo();
                } else {
                    self.close(Some(SessionError::Helo(reply)));
                }
            }
            (Verb::StartTls, _) => {
                if reply.code == 220 {
                    self.phase = Phase::TlsHandshake;
                    self.events.push_back(Event::StartTls);
                } else if self.cfg.tls == TlsPolicy::Required {
                    self.quit_with(SessionError::TlsRequired(TlsRefusal::Refused(reply)));
                } else {
                    self.after_tls();
                }
            }
            (Verb::Auth, Phase::AuthLoginUser) if reply.code == 334 => {
                self.phase = Phase::AuthLoginPass;
                let start = self.hs_out.len();
                if let Some(c) = &self.cfg.auth {
                    command::auth_response(&mut self.hs_out, &c.username);
                }
                self.push_handshake(Awaiting::Handshake(Verb::Auth), start, Some("****"));
            }
            (Verb::Auth, Phase::AuthLoginPass) if reply.code == 334 => {
                self.phase = Phase::AuthLoginDone;
                let start = self.hs_out.len();
                if let Some(c) = &self.cfg.auth {
                    command::auth_response(&mut self.hs_out, c.password.expose());
                }
                self.push_handshake(Awaiting::Handshake(Verb::Auth), start, Some("****"));
            }
            (Verb::Auth, Phase::AuthOAuth) if reply.code == 334 => {
                // RFC 7628 §3.2.2: an error challenge (base64 JSON); answer it so the server
                // sends its final reply, which fails the AUTH below.
                self.phase = Phase::AuthOAuthError;
                let start = self.hs_out.len();
                let bearer = self.cfg.auth_mechanism == Some(AuthMechanism::OAuthBearer);
                command::auth_oauth_error_ack(&mut self.hs_out, bearer);
                self.push_handshake(Awaiting::Handshake(Verb::Auth), start, None);
            }
            (Verb::Auth, Phase::AuthPlain | Phase::AuthLoginDone | Phase::AuthOAuth)
                if reply.is_positive() =>
            {
                self.ready()
            }
            (Verb::Auth, _) => self.quit_with(SessionError::AuthFailed(reply)),
            _ => {}
        }
    }

    fn after_ehlo(&mut self) {
        let offered = self.caps.has(Extensions::STARTTLS);
        match self.cfg.tls {
            TlsPolicy::Required if !self.tls_active && !offered => {
                self.handshake_stage = Stage::Tls;
                self.quit_with(SessionError::TlsRequired(TlsRefusal::NotOffered));
            }
            TlsPolicy::Required | TlsPolicy::Opportunistic if !self.tls_active && offered => {
                self.phase = Phase::StartTls;
                self.handshake_stage = Stage::Tls;
                let start = self.hs_out.len();
                command::starttls(&mut self.hs_out);
                self.push_handshake(Awaiting::Handshake(Verb::StartTls), start, None);
            }
            _ => self.after_tls(),
        }
    }

    fn after_tls(&mut self) {
        self.handshake_stage = Stage::Connect;
        if self.cfg.pipelining == PipeliningPolicy::Require
            && !self.caps.has(Extensions::PIPELINING)
        {
            return self.quit_with(SessionError::PipeliningRequired);
        }
        let Some(cred) = self.cfg.auth.clone() else {
            return self.ready();
        };
        self.handshake_stage = Stage::Auth;
        if !self.tls_active && !self.cfg.allow_plaintext_auth {
            return self.quit_with(SessionError::AuthOverPlaintext);
        }
        let offered = |m: AuthMechanism| match m {
            AuthMechanism::Plain => self.caps.auth.plain,
            AuthMechanism::Login => self.caps.auth.login,
            AuthMechanism::XOAuth2 => self.caps.auth.xoauth2,
            AuthMechanism::OAuthBearer => self.caps.auth.oauthbearer,
        };
        let mech = match self.cfg.auth_mechanism {
            Some(m) if offered(m) => m,
            Some(m) => {
                let offer = AuthOffer(self.caps.auth_names.clone());
                return self.quit_with(SessionError::AuthMechanismNotOffered(m, offer));
            }
            None if self.caps.auth.plain => AuthMechanism::Plain,
            None if self.caps.auth.login => AuthMechanism::Login,
            None => {
                let offer = AuthOffer(self.caps.auth_names.clone());
                return self.quit_with(SessionError::AuthUnsupported(offer));
            }
        };
        let start = self.hs_out.len();
        let (user, secret) = (&cred.username, cred.password.expose());
        let shown = match mech {
            AuthMechanism::Plain => {
                self.phase = Phase::AuthPlain;
                command::auth_plain(&mut self.hs_out, user, secret);
                Some("AUTH PLAIN ****")
            }
            AuthMechanism::Login => {
                self.phase = Phase::AuthLoginUser;
                command::auth_login(&mut self.hs_out);
                None
            }
            AuthMechanism::XOAuth2 => {
                self.phase = Phase::AuthOAuth;
                command::auth_xoauth2(&mut self.hs_out, user, secret);
                Some("AUTH XOAUTH2 ****")
            }
            AuthMechanism::OAuthBearer => {
                self.phase = Phase::AuthOAuth;
                command::auth_oauthbearer(&mut self.hs_out, user, secret);
                Some("AUTH OAUTHBEARER ****")
            }
        };
        self.push_handshake(Awaiting::Handshake(Verb::Auth), start, shown);
    }

    fn ready(&mut self) {
        self.phase = Phase::Ready;
        self.handshake_stage = Stage::Connect;
        self.events.push_back(Event::Ready);
    }

    /// Ends the session politely (QUIT), then reports `err`.
    pub(super) fn quit_with(&mut self, err: SessionError) {
        self.quit_error = Some(err);
        self.phase = Phase::Quitting;
        let start = self.hs_out.len();
        command::quit(&mut self.hs_out);
        self.push_handshake(Awaiting::Quit, start, None);
    }
}
