//! The sans-IO SMTP client engine.
#![warn(missing_docs)]

pub mod command;

pub use command::{AddressError, Verb, check_address};
