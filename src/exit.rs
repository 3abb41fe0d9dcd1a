//! Exit codes (sendmail's sysexits.h): public API, never renumbered.

use std::process::ExitCode;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 0: every row sent (or skipped); check-server: pipelining works.
    Ok,
    /// 1: the run completed but some rows failed, were deferred or are unknown.
    Partial,
    /// 64: bad flags.
    Usage,
    /// 65: bad list or template data.
    DataErr,
    /// 66: an input file is missing or unreadable.
    NoInput,
    /// 69: no SMTP session could be established (refused, 421/554 greeting, TLS or
    /// pipelining required but absent, AUTH failed) and nothing was sent.
    Unavailable,
    /// 70: a bug in pipemail.
    Software,
    /// 74: I/O error (the report could not be written).
    IoErr,
    /// 75: nothing delivered and every failure temporary: try again later.
    TempFail,
}

impl Exit {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Partial => 1,
            Self::Usage => 64,
            Self::DataErr => 65,
            Self::NoInput => 66,
            Self::Unavailable => 69,
            Self::Software => 70,
            Self::IoErr => 74,
            Self::TempFail => 75,
        }
    }

    pub(crate) fn hint(self) -> Option<&'static str> {
        match self {
            Self::Usage => Some("see `pipemail --help`"),
            Self::Unavailable => Some(
                "no mail was sent; check the host, port, TLS and AUTH settings (try `pipemail check-server`)",
            ),
            Self::TempFail => Some(
                "nothing was delivered and every failure was temporary: run again later (use --resume to skip what was sent)",
            ),
            _ => None,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        Self::from(e.code())
    }
}

/// An error that carries its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) error: anyhow::Error,
}

impl Failure {
    pub(crate) fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Self {
        Self {
            exit,
            error: error.into(),
        }
    }
}

/// Shorthand: `Err(fail(Exit::DataErr, anyhow!(...)))`.
pub(crate) fn fail(exit: Exit, error: impl Into<anyhow::Error>) -> Failure {
    Failure::new(exit, error)
}

pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes (sysexits.h):
  0   every row sent or skipped
  1   run completed, some rows failed, deferred or unknown (see the report)
  64  usage error
  65  bad list or template data
  66  an input file is missing
  69  no SMTP session could be established and nothing was sent
  74  the report could not be written
  75  nothing delivered and every failure temporary: try again later";
