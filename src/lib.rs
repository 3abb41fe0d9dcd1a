//! pipemail: a bulk mailer built on an ESMTP PIPELINING (RFC 2920) and CHUNKING (RFC 3030)
//! client engine.
#![forbid(unsafe_code)]

pub mod bounces;
pub mod campaign;
pub mod deliver;
pub mod driver;
pub mod engine;
pub mod fsutil;
pub mod input;
pub mod latency;
pub mod pipeliner;
pub mod report;
pub mod review;
pub mod sink;
pub mod template;
pub mod text;
