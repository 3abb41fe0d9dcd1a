//! EHLO reply parsing (RFC 5321 §4.1.1.1) into a capability bitset plus parameters.

use super::reply::Reply;

/// One bit per extension pipemail cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extensions(u32);

impl Extensions {
    /// RFC 2920 command pipelining.
    pub const PIPELINING: Self = Self(1);
    /// RFC 3030 CHUNKING (BDAT).
    pub const CHUNKING: Self = Self(1 << 1);
    /// RFC 1870 SIZE.
    pub const SIZE: Self = Self(1 << 2);
    /// RFC 6152 8BITMIME.
    pub const EIGHT_BIT_MIME: Self = Self(1 << 3);
    /// RFC 6531 SMTPUTF8.
    pub const SMTPUTF8: Self = Self(1 << 4);
    /// RFC 3207 STARTTLS.
    pub const STARTTLS: Self = Self(1 << 5);
    /// RFC 4954 AUTH.
    pub const AUTH: Self = Self(1 << 6);
    /// RFC 2034 ENHANCEDSTATUSCODES.
    pub const ENHANCED_STATUS_CODES: Self = Self(1 << 7);
    /// RFC 3461 DSN.
    pub const DSN: Self = Self(1 << 8);
    /// RFC 3030 BINARYMIME.
    pub const BINARYMIME: Self = Self(1 << 9);

    /// True when every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

/// AUTH mechanisms pipemail can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthMechanisms {
    /// RFC 4616 PLAIN.
    pub plain: bool,
    /// The LOGIN mechanism.
    pub login: bool,
    /// XOAUTH2 (OAuth 2.0 bearer token, Google's and Microsoft's mechanism).
    pub xoauth2: bool,
    /// RFC 7628 OAUTHBEARER.
    pub oauthbearer: bool,
}

/// What the server said it can do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The domain on the first EHLO line.
    pub server_name: String,
    /// Extension bits.
    pub extensions: Extensions,
    /// SIZE limit in octets; 0 means no fixed limit (or SIZE not advertised).
    pub size: u64,
    /// Usable AUTH mechanisms.
    pub auth: AuthMechanisms,
    /// Every AUTH mechanism named, as written, usable or not.
    pub auth_names: Vec<String>,
    /// Keywords pipemail does not interpret, as written (with parameters).
    pub other: Vec<String>,
    /// True when the server refused EHLO and HELO was used instead.
    pub helo_only: bool,
}

impl Capabilities {
    /// Parses the reply to EHLO. The first line is the server's name; each further line is a
    /// keyword with optional parameters. Keywords are matched case-insensitively.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self::default();
        let mut lines = reply.lines.iter();
        if let Some(first) = lines.next() {
            caps.server_name = first.split_whitespace().next().unwrap_or("").to_string();
        }
        for line in lines {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let bit = match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => Extensions::PIPELINING,
                "CHUNKING" => Extensions::CHUNKING,
                "8BITMIME" => Extensions::EIGHT_BIT_MIME,
                "SMTPUTF8" => Extensions::SMTPUTF8,
                "STARTTLS" => Extensions::STARTTLS,
                "ENHANCEDSTATUSCODES" => Extensions::ENHANCED_STATUS_CODES,
                "DSN" => Extensions::DSN,
                "BINARYMIME" => Extensions::BINARYMIME,
                "SIZE" => {
                    caps.size = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    Extensions::SIZE
                }
                "AUTH" => {
                    for mech in words {
                        match mech.to_ascii_uppercase().as_str() {
                            "PLAIN" => caps.auth.plain = true,
                            "LOGIN" => caps.auth.login = true,
                            "XOAUTH2" => caps.auth.xoauth2 = true,
                            "OAUTHBEARER" => caps.auth.oauthbearer = true,
                            _ => {}
                        }
                        caps.auth_names.push(mech.to_string());
                    }
                    Extensions::AUTH
                }
                _ => {
                    caps.other.push(line.clone());
                    continue;
                }
            };
            caps.extensions.insert(bit);
        }
        caps
    }

    /// Capabilities of a server that only answered HELO: no extensions.
    pub fn helo(reply: &Reply) -> Self {
        let server_name = reply
            .lines
            .first()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("");
        Self {
            server_name: server_name.to_string(),
            helo_only: true,
            ..Self::default()
        }
    }

    /// Is the extension advertised?
    pub fn has(&self, ext: Extensions) -> bool {
        self.extensions.contains(ext)
    }

    /// Names of the advertised extensions pipemail knows, in a fixed order (for display).
    pub fn names(&self) -> Vec<String> {
        let known = [
            (Extensions::PIPELINING, "PIPELINING"),
            (Extensions::CHUNKING, "CHUNKING"),
            (Extensions::SIZE, "SIZE"),
            (Extensions::EIGHT_BIT_MIME, "8BITMIME"),
            (Extensions::SMTPUTF8, "SMTPUTF8"),
            (Extensions::STARTTLS, "STARTTLS"),
            (Extensions::AUTH, "AUTH"),
            (Extensions::ENHANCED_STATUS_CODES, "ENHANCEDSTATUSCODES"),
            (Extensions::DSN, "DSN"),
            (Extensions::BINARYMIME, "BINARYMIME"),
        ];
        let mut out = Vec::new();
        for (bit, name) in known {
            if self.has(bit) {
                out.push(match bit {
                    Extensions::SIZE if self.size > 0 => format!("SIZE {}", self.size),
                    Extensions::AUTH => format!("AUTH {}", self.auth_names.join(" "))
                        .trim_end()
                        .to_string(),
                    _ => name.to_string(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> Reply {
        Reply {
            code: 250,
            enhanced: None,
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn postfix_smtp_sink() {
        let c = Capabilities::from_ehlo(&reply(&[
            "smtp-sink",
            "PIPELINING",
            "8BITMIME",
            "AUTH PLAIN LOGIN",
            "XCLIENT NAME HELO",
            "XFORWARD NAME ADDR PROTO HELO",
            "ENHANCEDSTATUSCODES",
            "DSN",
            "",
        ]));
        assert_eq!(c.server_name, "smtp-sink");
        assert!(c.has(Extensions::PIPELINING));
        assert!(!c.has(Extensions::CHUNKING));
        assert!(c.auth.plain && c.auth.login);
        assert!(c.has(Extensions::DSN) && c.has(Extensions::ENHANCED_STATUS_CODES));
        assert_eq!(
            c.other,
            vec!["XCLIENT NAME HELO", "XFORWARD NAME ADDR PROTO HELO"]
        );
    }

    #[test]
    fn case_insensitive_size_and_unknown() {
        let c = Capabilities::from_ehlo(&reply(&[
            "mx.example greets you",
            "pipelining",
            "Chunking",
            "size 10240000",
            "smtputf8",
            "starttls",
            "auth cram-md5 login",
            "X-FOO bar",
        ]));
        assert!(c.has(Extensions::PIPELINING) && c.has(Extensions::CHUNKING));
        assert!(c.has(Extensions::SIZE) && c.size == 10_240_000);
        assert!(c.has(Extensions::SMTPUTF8) && c.has(Extensions::STARTTLS));
        assert!(!c.auth.plain && c.auth.login);
        assert_eq!(c.auth_names, vec!["cram-md5", "login"]);
        assert_eq!(c.other, vec!["X-FOO bar"]);
        assert_eq!(c.server_name, "mx.example");
        assert!(c.names().contains(&"SIZE 10240000".to_string()));
    }
}
