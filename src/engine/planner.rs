//! The group planner: what the next write carries. It appends whole commands to the
//! caller's buffer until the gating rule ([`super::pipeline::InFlight::may_extend`]) or the
//! BDAT window stops it, holding a DATA body back for the next envelope at
//! [`PipeliningLevel::CrossMessage`].

use super::body;
use super::command::{self, MailParams, RawCommand, Verb, line_text};
use super::ehlo::Extensions;
use super::outcome::{Message, Msg, MsgState, Stage};
use super::pipeline::{Awaiting, PipeliningLevel};
use super::session::{Phase, Session};

impl Session {
    pub(super) fn plan(&mut self, out: &mut Vec<u8>) {
        if self.rset_refused.is_some() {
            return; // see `closing.rs`
        }
        let pipelining = self.pipelining();
        let bdat = self.bdat_mode();
        loop {
            if self.phase != Phase::Ready {
                break;
            }
            if !self.in_flight.may_extend(pipelining, self.level) {
                break;
            }
            // Lock-step commands from the caller go first, alone or pipelined as allowed.
            if self.active.is_empty()
                && self.queue.is_empty()
                && self.retry.is_empty()
                && let Some(cmd) = self.raw.pop_front()
            {
                self.emit_raw(cmd, out);
                continue;
            }
            // A held body goes with the next envelope, a flush, or QUIT (DATA mode only:
            // BDAT messages are never held, so their window is not scanned here).
            if let Some(i) = (!bdat)
                .then(|| {
                    self.active
                        .iter()
                        .position(|m| m.state == MsgState::BodyHeld)
                })
                .flatten()
            {
                if !pipelining
                    || self.level >= PipeliningLevel::WithinMessage
                    || self.flush_requested
                    || !self.queue.is_empty()
                    || !self.retry.is_empty()
                    || self.quit_requested
                {
                    self.flush_requested = false;
                    self.emit_body(i, out);
                    continue;
                }
                break;
            }
            if !pipelining
                && let Some(i) = self
                    .active
                    .iter()
                    .position(|m| m.state == MsgState::Envelope)
            {
                // Lock-step: the next step of the message in progress.
                let m = &self.active[i];
                let (seq, next) = (m.seq, m.next_rcpt);
                if m.mail.is_none() {
                    break; // unreachable in practice: MAIL's reply is awaited
                }
                if next < m.to.len() {
                    self.active[i].next_rcpt += 1;
                    let start = out.len();
                    let m = &self.active[i];
                    command::rcpt_to_with(out, &m.to[next], m.dsn_rcpt(next));
                    let what = Awaiting::Msg {
                        seq,
                        verb: Verb::Rcpt,
                        rcpt: next,
                    };
                    self.record(what, out, start);
                } else {
                    self.emit_data(seq, out);
                }
                continue;
            }
            // A server that keeps refused transactions may count each RSET (`resets.rs`).
            self.rset_budget_spent();
            if self.rset_needed {
                self.rset_needed = false;
                self.rset_written();
                // DATA mode pipelines RSET with the next envelope: nothing of that message is
                // committed before DATA's 354, which arrives after RSET's reply, so a refused
                // RSET can still end the session in time. A BDAT chunk would be committed in
                // the same write, so there RSET waits for its reply.
                let gated = bdat || !pipelining;
                let start = out.len();
                command::rset(out);
                self.record(Awaiting::Rset(gated), out, start);
                continue;
            }
            if let Some(msg) = self.retry.front().or(self.queue.front()) {
                let mut octets = None;
                if bdat {
                    if self.active.len() >= self.cfg.window.max(1) {
                        break;
                    }
                    let len = body::normalized_len(&msg.data);
                    if !self.active.is_empty()
                        && self.committed_octets + len > self.cfg.window_bytes
                    {
                        break;
                    }
                    octets = Some(len);
                } else if self.active.iter().any(|m| m.state != MsgState::Committed) {
                    break;
                }
                if self.rset_before_mail && pipelining && self.in_flight.has_eod() {
                    // The server once kept a failed transaction open: reset whatever the
                    // end of data in flight leaves behind (ungated; see `stepdown.rs`),
                    // within the budget of RSETs it may count (`resets.rs`).
                    if !self.rset_fits() {
                        break;
                    }
                    self.rset_written();
                    let start = out.len();
                    command::rset(out);
                    self.record(Awaiting::Rset(false), out, start);
                }
                let msg = match self.retry.pop_front() {
                    Some(m) => m,
                    None => self.queue.pop_front().expect("front() was Some"),
                };
                self.emit_message(msg, octets, out);
                continue;
            }
            if self.quit_requested
                && self.raw.is_empty()
                && self.active.iter().all(|m| m.state == MsgState::Committed)
            {
                self.phase = Phase::Quitting;
                let start = out.len();
                command::quit(out);
                self.record(Awaiting::Quit, out, start);
            }
            break;
        }
    }

    /// `octets`: the normalized body length when the caller already computed it.
    fn emit_message(&mut self, msg: Message, octets: Option<usize>, out: &mut Vec<u8>) {
        // Local checks first: nothing malformed ever reaches the wire.
        for addr in std::iter::once(&msg.from)
            .filter(|a| !a.is_empty())
            .chain(msg.to.iter())
        {
            if let Err(e) = command::check_address(addr) {
                let note = format!("invalid address {addr:?}: {e}");
                return self.fail_unsent(msg, Stage::Mail, &note);
            }
        }
        if msg.to.is_empty() {
            return self.fail_unsent(msg, Stage::Rcpt, "message has no recipients");
        }
        let utf8 = !msg.from.is_ascii() || msg.to.iter().any(|a| !a.is_ascii());
        if utf8 && !self.caps.has(Extensions::SMTPUTF8) {
            return self.fail_unsent(
                msg,
                Stage::Mail,
                "address is not ASCII and the server does not offer SMTPUTF8",
            );
        }
        let size = match octets {
            Some(n) => n,
            None if self.caps.has(Extensions::SIZE) || self.bdat_mode() => {
                body::normalized_len(&msg.data)
            }
            None => 0,
        };
        if self.caps.size > 0 && size as u64 > self.caps.size {
            let note = format!(
                "message is {size} octets, over the server's SIZE limit of {} octets",
                self.caps.size
            );
            return self.fail_unsent(msg, Stage::Mail, &note);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let params = MailParams {
            size: self.caps.has(Extensions::SIZE).then_some(size),
            eight_bit: self.caps.has(Extensions::EIGHT_BIT_MIME) && !msg.data.is_ascii(),
            smtputf8: utf8,
        };
        let mut m = Msg::new(seq, msg, self.pipelining());
        if !self.caps.has(Extensions::DSN) {
            m.dsn = None;
        }
        let start = out.len();
        command::mail_from_with(out, &m.from, params, m.dsn_mail());
        let what = Awaiting::Msg {
            seq,
            verb: Verb::Mail,
            rcpt: 0,
        };
        self.record(what, out, start);
        let n = m.to.len();
        if m.pipelined {
            for (i, addr) in m.to.iter().enumerate() {
                let start = out.len();
                command::rcpt_to_with(out, addr, m.dsn_rcpt(i));
                let what = Awaiting::Msg {
                    seq,
                    verb: Verb::Rcpt,
                    rcpt: i,
                };
                self.record(what, out, start);
            }
            m.next_rcpt = n;
            if self.bdat_mode() {
                let octets = body::encode_bdat_with_len(&m.data, size, out);
                let line = self.cfg.transcript.then(|| format!("BDAT {octets} LAST"));
                self.in_flight.push(
                    Awaiting::Msg {
                        seq,
                        verb: Verb::Bdat,
                        rcpt: 0,
                    },
                    line,
                );
                m.octets = octets;
                self.committed.push(m.id);
                self.committed_octets += octets;
                m.state = MsgState::Committed;
            } else {
                self.emit_data(seq, out);
            }
        }
        self.active.push_back(m);
    }

    fn emit_body(&mut self, i: usize, out: &mut Vec<u8>) {
        let m = &mut self.active[i];
        if m.hollow {
            out.extend_from_slice(b".\r\n");
        } else {
            body::encode_data_into(&m.data, out);
            self.committed.push(m.id);
        }
        m.state = MsgState::Committed;
        let seq = m.seq;
        let line = self.cfg.transcript.then(|| ".".to_string());
        self.in_flight.push(
            Awaiting::Msg {
                seq,
                verb: Verb::Body,
                rcpt: 0,
            },
            line,
        );
    }

    fn emit_raw(&mut self, cmd: RawCommand, out: &mut Vec<u8>) {
        let start = out.len();
        let what = match cmd {
            RawCommand::Mail(a) => {
                command::mail_from(out, &a, MailParams::default());
                Awaiting::Raw(Verb::Mail)
            }
            RawCommand::Rcpt(a) => {
                command::rcpt_to(out, &a);
                Awaiting::Raw(Verb::Rcpt)
            }
            RawCommand::Data => {
                command::data(out);
                Awaiting::Raw(Verb::Data)
            }
            RawCommand::Rset => {
                command::rset(out);
                Awaiting::Raw(Verb::Rset)
            }
            RawCommand::Noop => {
                command::noop(out);
                Awaiting::Raw(Verb::Noop)
            }
            RawCommand::Quit => {
                self.phase = Phase::Quitting;
                command::quit(out);
                Awaiting::Quit
            }
            RawCommand::Body(data) => {
                body::encode_data_into(&data, out);
                let line = self.cfg.transcript.then(|| ".".to_string());
                return self.in_flight.push(Awaiting::Raw(Verb::Body), line);
            }
        };
        self.record(what, out, start);
    }

    /// Writes DATA for message `seq` (its body follows on the 354).
    fn emit_data(&mut self, seq: u64, out: &mut Vec<u8>) {
        let start = out.len();
        command::data(out);
        let what = Awaiting::Msg {
            seq,
            verb: Verb::Data,
            rcpt: 0,
        };
        self.record(what, out, start);
    }

    /// Records a command an encoder appended to `out` from `start`.
    fn record(&mut self, what: Awaiting, out: &[u8], start: usize) {
        let line = self.cfg.transcript.then(|| line_text(&out[start..]));
        self.in_flight.push(what, line);
    }
}
