//! The sans-IO SMTP client engine: no sockets, no clock reads, no threads.
//!
//! Implements RFC 5321 (SMTP), RFC 2920 (PIPELINING), RFC 3030 (CHUNKING/BDAT), RFC 3207
//! (STARTTLS, the decision; the handshake is the driver's), RFC 4954 (AUTH PLAIN/LOGIN),
//! RFC 7628 (AUTH OAUTHBEARER; XOAUTH2 too),
//! RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8 parameter) and RFC 3463
//! (enhanced status codes). See [`session`] for the I/O contract.
//!
//! # Pipelining levels
//!
//! With PIPELINING advertised the session pipelines at one of three levels
//! ([`PipeliningLevel`]). It starts at [`Config::pipelining_level`] and only ever steps
//! down within a session, on evidence, never up:
//!
//! - `CrossMessage` (the default): the next envelope rides in the same write as the previous
//!   message's final dot (DATA) or `BDAT … LAST`; about one round trip per message with DATA,
//!   a few per window of messages with BDAT.
//! - `WithinMessage` ("sync at end of data"): nothing is written while a final dot or
//!   `BDAT … LAST` is unanswered. MAIL, RCPT… and DATA are still one group, so about two
//!   round trips per message with DATA; with BDAT, MAIL + RCPT… + `BDAT … LAST` is one group
//!   and the next message waits for its reply (one round trip per message).
//! - `LockStep`: one command per round trip, as without PIPELINING.
//!
//! Since the 2023–24 SMTP smuggling advisories some servers refuse every command that
//! arrives after the end-of-data terminator before they answered it: each gets its own 503
//! after the dot's 250, and the transaction it began never happens. When a MAIL written
//! while an end of data was unanswered is refused with 503 (or any 5yz with enhanced code
//! `5.5.1`), the session steps down to `WithinMessage` ([`Event::SteppedDown`], with the
//! command and reply as evidence), ignores the rest of that transaction's replies and sends
//! the message again itself: the caller only ever sees its final outcome, and no recipient
//! is `Rejected` for a refusal of the pipelining. A QUIT refused the same way does not end
//! the session while such messages wait. A pipelined RCPT refused that way after its MAIL
//! was accepted (or DATA / `BDAT … LAST` after a RCPT was accepted) means the server does not
//! pipeline within a message either: down to `LockStep`, RSET, and the message again. A
//! server that instead drops the connection right
//! after answering the dot while later commands are unanswered produces
//! [`Event::ClosedAfterEndOfData`]; once can be chance, so the engine does not step down
//! for it, and a campaign that sees it twice for a host starts new sessions there at
//! `WithinMessage`.
#![warn(missing_docs)]
//!
//! # Layout
//!
//! Files depend on each other in one direction only (no file imports one that imports it):
//! `command`, `reply`, `ehlo`, `body` are leaves; `pipeline` (level, in-flight FIFO, gating)
//! and `outcome` build on them; `config`, `error` and `event` on those; `session` holds the
//! state, the public API and the reply dispatch; `handshake` and `planner` add the
//! handshake, the group planner and the step-down on refused pipelining (`stepdown`) to
//! [`Session`], `closing` how a session ends (closing replies: messages written behind one
//! are [`RcptOutcome::returned`]) and `resets` the RSET budget for servers that keep
//! refused transactions open; they import `session`, never the reverse.

pub mod body;
mod closing;
pub mod command;
pub mod config;
pub mod ehlo;
pub mod error;
pub mod event;
mod handshake;
pub mod outcome;
pub mod pipeline;
mod planner;
pub mod reply;
mod resets;
pub mod session;
mod stepdown;
#[cfg(test)]
mod tests;

pub use command::{AddressError, MailParams, RawCommand, Verb, check_address};
pub use config::{
    AuthMechanism, Config, Credentials, PipeliningPolicy, Secret, Timeouts, TlsPolicy,
};
pub use ehlo::{Capabilities, Extensions};
pub use error::{
    AuthOffer, IoFailure, ProtocolError, SessionError, TlsFailure, TlsFailureKind, TlsRefusal,
};
pub use event::{Event, Exchange, RoundTrips, StepDown};
pub use outcome::{Delivery, DsnParams, Message, MessageId, RcptOutcome, Stage};
pub use pipeline::PipeliningLevel;
pub use reply::{EnhancedCode, Reply, ReplyParser, Severity};
pub use session::{Session, SessionState};
