//! Deliverability building blocks for bulk senders: DKIM signing, RFC 8058 one-click
//! unsubscribe headers, suppression lists, and the DSN (RFC 3461) / VERP envelope encoders.
//!
//! Everything here is I/O-free except loading files (keys, suppression lists) and the
//! suppression appender; `send` calls these per message, off the connection tasks.

pub mod dkim;
pub mod dsn;
pub mod suppress;
pub mod unsubscribe;
