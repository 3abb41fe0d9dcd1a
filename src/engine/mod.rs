//! The sans-IO SMTP client engine: no sockets, no clock reads, no threads.
//!
//! Implements RFC 5321 (SMTP), RFC 2920 (PIPELINING), RFC 3030 (CHUNKING/BDAT), RFC 3207
//! (STARTTLS, the decision; the handshake is the driver's), RFC 4954 (AUTH PLAIN/LOGIN),
//! RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8 parameter) and RFC 3463
//! (enhanced status codes). See [`session`] for the I/O contract.
#![warn(missing_docs)]

pub mod body;
pub mod command;
pub mod ehlo;
pub mod error;
pub mod outcome;
pub mod reply;
pub mod session;
#[cfg(test)]
mod tests;

pub use command::{AddressError, Verb, check_address};
pub use ehlo::{Capabilities, Extensions};
pub use error::{ProtocolError, SessionError};
pub use outcome::{Delivery, MessageId, RcptOutcome, Stage};
pub use reply::{EnhancedCode, Reply, ReplyParser, Severity};
pub use session::{
    Config, Credentials, Event, Exchange, Message, PipeliningPolicy, RawCommand, RoundTrips,
    Secret, Session, Timeouts, TlsPolicy,
};
