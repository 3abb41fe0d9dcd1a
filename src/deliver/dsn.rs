//! Delivery Status Notification parameters (RFC 3461) and VERP return paths: pure encoders.
//!
//! * `MAIL FROM:<…> RET=HDRS ENVID=<campaign>.<row>` ([`mail_params`])
//! * `RCPT TO:<…> NOTIFY=FAILURE,DELAY ORCPT=rfc822;user@example.com` ([`rcpt_params`])
//! * VERP (variable envelope return path): `bounces+<row>@example.com` ([`Verp`])
//!
//! The ENVID is `<campaign-id>.<row>` ([`envid`]): the campaign id is chosen once per run
//! (letters, digits and `-`, see [`campaign_id`]), the row is the list row, so a DSN's
//! `Original-Envelope-Id` names both the run and the report row. Only the DSN parameters are
//! built here; the caller appends them to its MAIL/RCPT command only when the server
//! advertised `DSN` in EHLO.

use std::fmt;
use std::str::FromStr;

/// Why a DSN flag value or identifier is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    /// A `--dsn-notify` value that is not `never` or a list of success, failure, delay.
    #[error("invalid NOTIFY value {0:?}: use `never` or a comma list of success, failure, delay")]
    BadNotify(String),
    /// A `--dsn-ret` value that is not `full` or `hdrs`.
    #[error("invalid RET value {0:?}: use `full` or `hdrs`")]
    BadRet(String),
    /// A campaign id with characters other than letters, digits and `-`, or too long.
    #[error("invalid campaign id {0:?}: use 1 to 64 letters, digits or '-'")]
    BadCampaignId(String),
    /// Malformed xtext (a `+` not followed by two upper-case hex digits).
    #[error("malformed xtext {0:?}")]
    BadXtext(String),
    /// A VERP base address that is not `local@domain` or already has a `+`.
    #[error("invalid VERP address {0:?}: expected local@domain without '+'")]
    BadVerp(String),
}

/// Appends `s` as xtext (RFC 3461 §4): `+`, `=`, controls, space and non-ASCII bytes become
/// `+XX` (upper-case hex of each UTF-8 byte).
pub fn push_xtext(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push('+');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// `s` as xtext.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_xtext(&mut out, s);
    out
}

/// Decodes xtext (e.g. an `Original-Envelope-Id` or `Original-Recipient` in a DSN).
pub fn decode_xtext(s: &str) -> Result<String, DsnError> {
    let bad = || DsnError::BadXtext(s.to_owned());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// When the receiving MTAs should send a DSN (`NOTIFY=`, RFC 3461 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    /// `SUCCESS`
    pub success: bool,
    /// `FAILURE`
    pub failure: bool,
    /// `DELAY`
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`.
    pub const NEVER: Self = Self {
        success: false,
        failure: false,
        delay: false,
    };

    /// Whether this is `NEVER`.
    pub fn is_never(self) -> bool {
        self == Self::NEVER
    }
}

impl FromStr for Notify {
    type Err = DsnError;

    /// Parses `never` or a comma list of `success`, `failure`, `delay` (any case, no repeats).
    fn from_str(s: &str) -> Result<Self, DsnError> {
        let bad = || DsnError::BadNotify(s.to_owned());
        if s.trim().eq_ignore_ascii_case("never") {
            return Ok(Self::NEVER);
        }
        let mut n = Self::NEVER;
        for word in s.split(',') {
            let flag = match word.trim().to_ascii_lowercase().as_str() {
                "success" => &mut n.success,
                "failure" => &mut n.failure,
                "delay" => &mut n.delay,
                _ => return Err(bad()),
            };
            if *flag {
                return Err(bad());
            }
            *flag = true;
        }
        Ok(n)
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_never() {
            return f.write_str("NEVER");
        }
        let words = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let mut first = true;
        for (_, w) in words.iter().filter(|(on, _)| *on) {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(w)?;
            first = false;
        }
        Ok(())
    }
}

/// How much of the message a failure DSN returns (`RET=`, RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: the header only (enough to match the Message-ID; smaller bounces).
    Hdrs,
}

impl FromStr for Ret {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<Self, DsnError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Ok(Self::Full),
            "hdrs" => Ok(Self::Hdrs),
            _ => Err(DsnError::BadRet(s.to_owned())),
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "FULL",
            Self::Hdrs => "HDRS",
        })
    }
}

/// Checks a campaign id: 1–64 ASCII letters, digits or `-` (so the ENVID needs no escaping
/// and a `.` separates it from the row unambiguously).
pub fn check_campaign_id(id: &str) -> Result<&str, DsnError> {
    if !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(id)
    } else {
        Err(DsnError::BadCampaignId(id.to_owned()))
    }
}

/// A campaign id for a run that was not given one: `pm-<unix seconds>-<pid>`, unique per
/// machine and second.
pub fn campaign_id(unix_seconds: u64, pid: u32) -> String {
    format!("pm-{unix_seconds}-{pid}")
}

/// The ENVID for a list row: `<campaign>.<row>` (at most 85 characters, within RFC 3461's 100).
pub fn envid(campaign: &str, row: u64) -> String {
    format!("{campaign}.{row}")
}

/// Splits an ENVID made by [`envid`] back into campaign id and row.
pub fn parse_envid(envid: &str) -> Option<(&str, u64)> {
    let (campaign, row) = envid.trim().rsplit_once('.')?;
    let row = row.parse().ok()?;
    check_campaign_id(campaign).ok().map(|c| (c, row))
}

/// Appends ` RET=… ENVID=…` (each if given) for MAIL FROM.
pub fn push_mail_params(out: &mut String, ret: Option<Ret>, envid: Option<&str>) {
    if let Some(r) = ret {
        out.push_str(" RET=");
        out.push_str(match r {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        });
    }
    if let Some(e) = envid {
        out.push_str(" ENVID=");
        push_xtext(out, e);
    }
}

/// ` RET=… ENVID=…` for MAIL FROM (empty when both are `None`).
pub fn mail_params(ret: Option<Ret>, envid: Option<&str>) -> String {
    let mut s = String::new();
    push_mail_params(&mut s, ret, envid);
    s
}

/// Appends ` NOTIFY=… ORCPT=rfc822;<xtext address>` (each if given) for RCPT TO.
pub fn push_rcpt_params(out: &mut String, notify: Option<Notify>, orcpt: Option<&str>) {
    if let Some(n) = notify {
        out.push_str(" NOTIFY=");
        out.push_str(&n.to_string());
    }
    if let Some(a) = orcpt {
        out.push_str(" ORCPT=rfc822;");
        push_xtext(out, a);
    }
}

/// ` NOTIFY=… ORCPT=rfc822;…` for RCPT TO (empty when both are `None`).
pub fn rcpt_params(notify: Option<Notify>, orcpt: Option<&str>) -> String {
    let mut s = String::new();
    push_rcpt_params(&mut s, notify, orcpt);
    s
}

/// A VERP base address: `bounces@example.com` gives return paths `bounces+<row>@example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verp {
    local: String,
    domain: String,
}

impl FromStr for Verp {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<Self, DsnError> {
        let bad = || DsnError::BadVerp(s.to_owned());
        let (local, domain) = s.trim().rsplit_once('@').ok_or_else(bad)?;
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"+@<>()[]\\,;:\"".contains(&b))
        };
        if !ok(local) || !ok(domain) {
            return Err(bad());
        }
        Ok(Self {
            local: local.to_owned(),
            domain: domain.to_ascii_lowercase(),
        })
    }
}

impl Verp {
    /// The return path for a row: `local+row@domain`.
    pub fn address(&self, row: u64) -> String {
        format!("{}+{row}@{}", self.local, self.domain)
    }

    /// The row in a VERP address made from this base (local part case-insensitive).
    pub fn row_of(&self, addr: &str) -> Option<u64> {
        let (local, domain) = addr.trim().trim_matches(['<', '>']).rsplit_once('@')?;
        let (base, row) = local.split_once('+')?;
        (base.eq_ignore_ascii_case(&self.local) && domain.eq_ignore_ascii_case(&self.domain))
            .then(|| row.parse().ok())
            .flatten()
    }
}

/// The row in any `local+ROW@domain` address, when the base is not known.
pub fn verp_row(addr: &str) -> Option<u64> {
    let (local, _) = addr.trim().trim_matches(['<', '>']).rsplit_once('@')?;
    let (_, row) = local.rsplit_once('+')?;
    row.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_round_trip() {
        assert_eq!(xtext("a+b=c d@ex.com"), "a+2Bb+3Dc+20d@ex.com");
        assert_eq!(xtext("é"), "+C3+A9");
        for s in ["", "plain", "a+b=c d\té~"] {
            assert_eq!(decode_xtext(&xtext(s)).unwrap(), s);
        }
        assert!(decode_xtext("a+2").is_err());
        assert!(decode_xtext("a+zz").is_err());
    }

    proptest::proptest! {
        #[test]
        fn xtext_round_trips_and_is_safe(s in "\\PC*") {
            let x = xtext(&s);
            proptest::prop_assert!(x.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='));
            proptest::prop_assert_eq!(decode_xtext(&x).unwrap(), s);
        }
    }

    #[test]
    fn notify_values() {
        assert_eq!("never".parse::<Notify>().unwrap(), Notify::NEVER);
        let n: Notify = "Failure, delay".parse().unwrap();
        assert_eq!(n.to_string(), "FAILURE,DELAY");
        assert_eq!(
            "success,failure,delay"
                .parse::<Notify>()
                .unwrap()
                .to_string(),
            "SUCCESS,FAILURE,DELAY"
        );
        for bad in ["", "never,failure", "failure,failure", "bounce", "failure,"] {
            let e = bad.parse::<Notify>().unwrap_err();
            assert!(e.to_string().contains("never"), "{bad}: {e}");
        }
    }

    #[test]
    fn ret_values() {
        assert_eq!("FULL".parse::<Ret>().unwrap(), Ret::Full);
        assert_eq!("hdrs".parse::<Ret>().unwrap().to_string(), "HDRS");
        assert!(
            "headers"
                .parse::<Ret>()
                .unwrap_err()
                .to_string()
                .contains("full")
        );
    }

    #[test]
    fn command_params() {
        let id = envid("spring-2026", 42);
        assert_eq!(
            mail_params(Some(Ret::Hdrs), Some(&id)),
            " RET=HDRS ENVID=spring-2026.42"
        );
        assert_eq!(mail_params(None, None), "");
        let n: Notify = "failure,delay".parse().unwrap();
        assert_eq!(
            rcpt_params(Some(n), Some("a+b@ex.com")),
            " NOTIFY=FAILURE,DELAY ORCPT=rfc822;a+2Bb@ex.com"
        );
        assert_eq!(rcpt_params(Some(Notify::NEVER), None), " NOTIFY=NEVER");
    }

    #[test]
    fn envid_and_campaign() {
        assert_eq!(parse_envid("spring-2026.42"), Some(("spring-2026", 42)));
        assert_eq!(
            parse_envid(&envid(&campaign_id(1_800_000_000, 77), 9)),
            Some(("pm-1800000000-77", 9))
        );
        assert_eq!(parse_envid("x.y"), None);
        assert_eq!(parse_envid("a b.1"), None);
        assert!(check_campaign_id("ok-1").is_ok());
        assert!(check_campaign_id("no.dots").is_err());
        assert!(check_campaign_id("").is_err());
    }

    #[test]
    fn verp() {
        let v: Verp = "Bounces@Example.com".parse().unwrap();
        assert_eq!(v.address(42), "Bounces+42@example.com");
        assert_eq!(v.row_of("<bounces+42@EXAMPLE.com>"), Some(42));
        assert_eq!(v.row_of("bounces+42@other.com"), None);
        assert_eq!(v.row_of("bounces+x@example.com"), None);
        assert_eq!(verp_row("b+7@x.y"), Some(7));
        assert!("a+b@x".parse::<Verp>().is_err());
        assert!("nodomain".parse::<Verp>().is_err());
    }
}
