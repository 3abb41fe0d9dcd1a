//! Exit codes (sendmail's sysexits.h): public API, never renumbered.
//!
//! The one table from errors to codes: [`for_input`] (list errors), [`for_campaign`] (what
//! stops a run), [`for_summary`] (how a finished run ended). README's table and `--help`
//! ([`EXIT_CODES_HELP`]) list the same codes; a unit test checks they agree.

use std::process::ExitCode;

use pipemail::campaign::{CampaignError, Summary};
use pipemail::input::InputError;

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
    /// 70: internal error (a bug in pipemail, or a thread or the runtime could not start).
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

    /// The exit for a library error that names its own sysexits code (`exit_code()` of
    /// `review`, `bounces` and `deliver` errors); an unknown code is an I/O error.
    pub(crate) fn from_sysexits(code: i32) -> Self {
        match code {
            64 => Self::Usage,
            65 => Self::DataErr,
            66 => Self::NoInput,
            69 => Self::Unavailable,
            70 => Self::Software,
            75 => Self::TempFail,
            _ => Self::IoErr,
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

/// A list error: the file missing or unreadable is 66, anything in its content 65.
pub(crate) fn for_input(e: &InputError) -> Exit {
    match e {
        InputError::Io { .. } => Exit::NoInput,
        _ => Exit::DataErr,
    }
}

/// What stopped a run.
pub(crate) fn for_campaign(e: &CampaignError) -> Exit {
    match e {
        CampaignError::List(e) => for_input(e),
        CampaignError::ReportCreate { .. }
        | CampaignError::JournalCreate { .. }
        | CampaignError::ReportWrite(_)
        | CampaignError::JournalWrite(_)
        | CampaignError::JournalRemove(_)
        | CampaignError::CarryRemove(_) => Exit::IoErr,
        CampaignError::Start { .. } | CampaignError::Internal(_) => Exit::Software,
        CampaignError::Batch(_) => Exit::Usage,
        CampaignError::Compose(e) if e.is_missing() => Exit::NoInput,
        CampaignError::Compose(_) => Exit::DataErr,
        CampaignError::EmlWrite { .. } => Exit::IoErr,
        CampaignError::SuppressAdd(e) => Exit::from_sysexits(i32::from(e.exit_code())),
    }
}

/// How a finished run ended.
pub(crate) fn for_summary(s: &Summary) -> Exit {
    let not_ok = s.failed + s.deferred + s.unknown;
    if not_ok == 0 {
        return Exit::Ok;
    }
    if !s.any_session && s.sent_this_run == 0 {
        return Exit::Unavailable;
    }
    if s.sent_this_run == 0 && s.failed == 0 {
        return Exit::TempFail;
    }
    Exit::Partial
}

impl From<CampaignError> for Failure {
    fn from(e: CampaignError) -> Self {
        Self::new(for_campaign(&e), e)
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
  66  an input file is missing or unreadable
  69  no SMTP session could be established and nothing was sent
  70  internal error (a bug; please report it)
  74  the report could not be written (a symlink planted at it or a side file, a
      journal left by a killed run that --resume has not read, or a --dry-run --output file)
  75  nothing delivered and every failure temporary: try again later";

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Exit; 9] = [
        Exit::Ok,
        Exit::Partial,
        Exit::Usage,
        Exit::DataErr,
        Exit::NoInput,
        Exit::Unavailable,
        Exit::Software,
        Exit::IoErr,
        Exit::TempFail,
    ];

    /// Every code the program can return is in `--help` and in README's table.
    #[test]
    fn help_and_readme_list_every_code() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("## Exit codes")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has an Exit codes section");
        for e in ALL {
            let code = e.code();
            assert!(
                EXIT_CODES_HELP
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "--help lacks {code}"
            );
            assert!(
                table.contains(&format!("| {code} |")),
                "README's exit table lacks {code}"
            );
        }
        let listed = EXIT_CODES_HELP
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with("      "))
            .count();
        assert_eq!(
            listed,
            ALL.len(),
            "--help lists a code the program never returns"
        );
    }

    #[test]
    fn input_errors_map_to_one_code_each() {
        let io = InputError::Io {
            file: "l.csv".into(),
            line: None,
            error: std::io::Error::other("disk on fire"),
        };
        assert_eq!(for_input(&io), Exit::NoInput);
        let empty = InputError::Empty {
            file: "l.csv".into(),
        };
        assert_eq!(for_input(&empty), Exit::DataErr);
        assert_eq!(for_campaign(&CampaignError::List(empty)), Exit::DataErr);
        assert_eq!(for_campaign(&CampaignError::Internal("x")), Exit::Software);
    }

    #[test]
    fn summary_exit_policy() {
        let base = Summary {
            rows: 2,
            any_session: true,
            ..Summary::default()
        };
        let ok = Summary {
            sent: 2,
            sent_this_run: 2,
            ..base.clone()
        };
        assert_eq!(for_summary(&ok), Exit::Ok);
        let partial = Summary {
            sent: 1,
            sent_this_run: 1,
            failed: 1,
            ..base.clone()
        };
        assert_eq!(for_summary(&partial), Exit::Partial);
        let temp = Summary {
            deferred: 2,
            ..base.clone()
        };
        assert_eq!(for_summary(&temp), Exit::TempFail);
        let none = Summary {
            deferred: 2,
            any_session: false,
            ..base
        };
        assert_eq!(for_summary(&none), Exit::Unavailable);
    }
}
