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
                if let Fault::ReplyCode { code, .. } = fault {
                    if !(400..=599).contains(code) {
                        return Err(format!(
                            "session {i}: ReplyCode code {code} is not 400..=599"
                        ));
                    }
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
