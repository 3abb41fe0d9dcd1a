//! Deterministic fault injection: the caller supplies the schedule, the sink has no randomness.

/// Faults to inject, by session.
///
/// Session `i` (0-based, counting accepted connections in accept order) uses `sessions[i]` if
/// present, else runs without faults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// The faults of each session.
    pub sessions: Vec<Vec<Fault>>,
}

impl FaultPlan {
    /// The faults of session `index` (empty if none).
    pub fn for_session(&self, index: u64) -> &[Fault] {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.sessions.get(i))
            .map_or(&[], Vec::as_slice)
    }

    /// Checks the codes of [`Fault::ReplyCode`] (must be 400..=599).
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (i, faults) in self.sessions.iter().enumerate() {
            for fault in faults {
                if let Fault::ReplyCode { code, .. } = fault
                    && !(400..=599).contains(code)
                {
                    return Err(format!(
                        "session {i}: ReplyCode code {code} is not 400..=599"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One injected fault.
///
/// # Counting commands
///
/// `command` is the 0-based index of a *reply-bearing unit* of client input in the session; the
/// greeting is not counted. Each of these counts as one unit, in the order the sink processes
/// them: every command line (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, STARTTLS, AUTH, unknown
/// or malformed lines, over-long lines), every AUTH continuation line (the lines answering a
/// `334`), every final dot of a DATA body, and every `BDAT` command together with its chunk
/// (the unit completes when the chunk has been consumed). In other words, unit `N` is the one
/// the `N`-th reply after the greeting answers. Units continue counting across STARTTLS.
///
/// # Closing
///
/// Where a fault "closes" the connection, the sink first writes every reply to the units before
/// `N` that it has not written yet, then half-closes (FIN) and discards further input until the
/// client closes (at most 5 s). A client therefore receives exactly the replies to units
/// `0..N` (plus what the fault itself sends), never a reset in their place.
///
/// # Which messages are stored
///
/// A message is stored iff the sink sent, or started to send, a 2xx reply to its final dot or
/// `BDAT … LAST`, or the fault is `DropBeforeReply { stored: true }` on that unit.
///
/// When several faults name the same unit, the first in the list applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Once this many bytes of client input have been read in the session, read no more: the
    /// sink processes the units complete within the first `n` bytes normally (replies
    /// included), then closes. A unit cut by the limit (a command, a DATA body, a BDAT chunk)
    /// gets no reply and a message cut by it is not stored. `DropAfterInputBytes(0)` closes
    /// right after the greeting. The bytes counted are those the SMTP layer reads, i.e. after
    /// TLS decryption when STARTTLS is in use (the handshake is not counted).
    DropAfterInputBytes(u64),
    /// Close instead of replying to unit `command`. With `stored: false` the unit is not
    /// executed (a final dot or `BDAT LAST` does not store its message). With `stored: true`
    /// it is executed and only its reply is lost: the message is stored ("accepted, but the
    /// reply was lost").
    DropBeforeReply {
        /// The unit index.
        command: u64,
        /// Execute the unit (store the message) before dropping.
        stored: bool,
    },
    /// Answer unit `command` with `421 4.3.0 <hostname> Service not available, closing
    /// transmission channel` instead of executing it, then close. Nothing is stored by it.
    Reply421 {
        /// The unit index.
        command: u64,
    },
    /// Answer unit `command` with `<code> <c>.0.0 Error: injected failure` (code 400..=599,
    /// `<c>` its first digit) instead of executing it; the session goes on. The unit has no
    /// effect, except that a final dot or a `BDAT` chunk ends the transaction with its message
    /// discarded (as after a normal rejection), and an AUTH continuation ends the AUTH
    /// exchange unauthenticated. A rejected DATA gets no 354 (the session stays in command
    /// mode); a rejected RCPT adds no recipient and counts as a rejected recipient.
    ReplyCode {
        /// The unit index.
        command: u64,
        /// The reply code, 400..=599.
        code: u16,
    },
    /// From unit `command` on, execute and answer nothing: replies to earlier units are
    /// written, then all further input is read and discarded until the client closes (the
    /// connection stays open; only [`super::SinkHandle::stop`] ends it otherwise).
    Stall {
        /// The first unit not answered.
        command: u64,
    },
    /// Write every reply of the session (greeting included) one byte per write, flushing and
    /// yielding to the runtime between bytes. Replies and their content are unchanged.
    DribbleReplies,
    /// Execute unit `command` normally, write the first half of its reply (`len / 2` bytes,
    /// at least one; for a multi-line reply, half of all its lines), then close. A final dot or
    /// `BDAT LAST` whose reply is cut this way has stored its message.
    MidReplyDrop {
        /// The unit index.
        command: u64,
    },
}

/// Most sessions one `--fault` spec may name (a range is expanded into the plan).
const MAX_SPEC_SESSIONS: u64 = 10_000;

/// A fault and the sessions it applies to, as written on the command line (`--fault SPEC`):
/// `KIND[=ARGS][@SESSIONS]`.
///
/// | SPEC | fault |
/// | --- | --- |
/// | `drop-after-bytes=N` | [`Fault::DropAfterInputBytes`]`(N)` |
/// | `drop-before-reply=UNIT` | [`Fault::DropBeforeReply`] `{ command: UNIT, stored: false }` |
/// | `reply-lost=UNIT` | [`Fault::DropBeforeReply`] `{ command: UNIT, stored: true }` |
/// | `421=UNIT` | [`Fault::Reply421`] |
/// | `reply-code=UNIT:CODE` | [`Fault::ReplyCode`] (CODE 400..=599) |
/// | `stall=UNIT` | [`Fault::Stall`] |
/// | `dribble` | [`Fault::DribbleReplies`] |
/// | `mid-reply-drop=UNIT` | [`Fault::MidReplyDrop`] |
///
/// `UNIT` counts the client's reply-bearing units from 0 (see [`Fault`]); `SESSIONS` is `N`
/// or `N-M` (0-based connection indices, inclusive, at most 10,000), default `0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    /// The fault.
    pub fault: Fault,
    /// First session it applies to.
    pub first: u64,
    /// Last session it applies to (inclusive).
    pub last: u64,
}

/// Why a `--fault` SPEC is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    /// The kind is not one of the known faults.
    #[error(
        "unknown fault {0:?} (expected drop-after-bytes=N, drop-before-reply=UNIT, reply-lost=UNIT, 421=UNIT, reply-code=UNIT:CODE, stall=UNIT, dribble or mid-reply-drop=UNIT, optionally @SESSION or @FIRST-LAST)"
    )]
    Kind(String),
    /// The kind needs an argument, or takes none.
    #[error("fault {kind:?} {what}")]
    Argument {
        /// The fault kind.
        kind: String,
        /// What is wrong.
        what: &'static str,
    },
    /// A number could not be read.
    #[error("{0:?} is not a non-negative integer")]
    Number(String),
    /// A reply code outside 400..=599.
    #[error("reply code must be 400..=599, got {0}")]
    Code(u64),
    /// A bad session range.
    #[error("bad session range {0:?} (expected N or FIRST-LAST, at most 10000 sessions)")]
    Sessions(String),
}

fn number(s: &str) -> Result<u64, FaultSpecError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FaultSpecError::Number(s.to_string()));
    }
    s.parse().map_err(|_| FaultSpecError::Number(s.to_string()))
}

impl std::str::FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (body, sessions) = match s.rsplit_once('@') {
            Some((b, r)) => (b, Some(r)),
            None => (s, None),
        };
        let (first, last) = match sessions {
            None => (0, 0),
            Some(r) => {
                let bad = || FaultSpecError::Sessions(r.to_string());
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                let (a, b) = (number(a).map_err(|_| bad())?, number(b).map_err(|_| bad())?);
                if a > b || b - a >= MAX_SPEC_SESSIONS {
                    return Err(bad());
                }
                (a, b)
            }
        };
        let (kind, arg) = match body.split_once('=') {
            Some((k, a)) => (k, Some(a)),
            None => (body, None),
        };
        let kind_lc = kind.to_ascii_lowercase();
        let need = |what| FaultSpecError::Argument {
            kind: kind_lc.clone(),
            what,
        };
        let unit = || -> Result<u64, FaultSpecError> {
            number(arg.ok_or_else(|| need("needs =UNIT (a 0-based unit index)"))?)
        };
        let fault = match kind_lc.as_str() {
            "drop-after-bytes" => Fault::DropAfterInputBytes(number(
                arg.ok_or_else(|| need("needs =N (a byte count)"))?,
            )?),
            "drop-before-reply" => Fault::DropBeforeReply {
                command: unit()?,
                stored: false,
            },
            "reply-lost" => Fault::DropBeforeReply {
                command: unit()?,
                stored: true,
            },
            "421" | "reply-421" => Fault::Reply421 { command: unit()? },
            "reply-code" => {
                let arg = arg.ok_or_else(|| need("needs =UNIT:CODE, e.g. reply-code=2:451"))?;
                let (u, c) = arg
                    .split_once(':')
                    .ok_or_else(|| need("needs =UNIT:CODE, e.g. reply-code=2:451"))?;
                let code = number(c)?;
                if !(400..=599).contains(&code) {
                    return Err(FaultSpecError::Code(code));
                }
                Fault::ReplyCode {
                    command: number(u)?,
                    code: u16::try_from(code).map_err(|_| FaultSpecError::Code(code))?,
                }
            }
            "stall" => Fault::Stall { command: unit()? },
            "dribble" => {
                if arg.is_some() {
                    return Err(need("takes no argument"));
                }
                Fault::DribbleReplies
            }
            "mid-reply-drop" => Fault::MidReplyDrop { command: unit()? },
            _ => return Err(FaultSpecError::Kind(kind.to_string())),
        };
        Ok(Self { fault, first, last })
    }
}

impl FaultPlan {
    /// Adds `fault` to session `index`'s list.
    pub fn add(&mut self, index: u64, fault: Fault) {
        let i = usize::try_from(index).expect("session indices of a plan fit in memory");
        if self.sessions.len() <= i {
            self.sessions.resize(i + 1, Vec::new());
        }
        self.sessions[i].push(fault);
    }

    /// The plan the specs describe, in order (the first matching fault applies).
    pub fn from_specs<'a>(specs: impl IntoIterator<Item = &'a FaultSpec>) -> Self {
        let mut plan = Self::default();
        for spec in specs {
            for index in spec.first..=spec.last {
                plan.add(index, spec.fault);
            }
        }
        plan
    }
}
