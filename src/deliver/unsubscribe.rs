//! One-click unsubscribe header fields: `List-Unsubscribe` (RFC 2369) and
//! `List-Unsubscribe-Post` (RFC 8058).
//!
//! RFC 8058 §3.1 requires an HTTPS URI in `List-Unsubscribe` and the `List-Unsubscribe-Post`
//! field to be covered by the DKIM signature (see [`crate::deliver::dkim::SIGNED_HEADERS`]).

use url::Url;

/// The `List-Unsubscribe-Post` value (RFC 8058 §3.1).
pub const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// Why the unsubscribe header fields could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsubscribeError {
    /// Not an absolute URL.
    #[error("unsubscribe URL {url:?} is not a valid absolute URL: {reason}")]
    BadUrl {
        /// The rendered URL.
        url: String,
        /// The parser's reason.
        reason: String,
    },
    /// One-click unsubscribe needs `https:` (RFC 8058 §3.1).
    #[error("unsubscribe URL {url:?} must use https (RFC 8058 one-click unsubscribe)")]
    NotHttps {
        /// The rendered URL.
        url: String,
    },
    /// A mailto address that is not `local@domain`.
    #[error("unsubscribe mailto {0:?} is not an address like unsubscribe@example.com")]
    BadMailto(String),
}

/// The two header field values, ready to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeHeaders {
    /// `List-Unsubscribe` value, e.g. `<https://example.com/u/42>, <mailto:u@example.com>`.
    pub list_unsubscribe: String,
    /// `List-Unsubscribe-Post` value: always [`ONE_CLICK`].
    pub list_unsubscribe_post: &'static str,
}

impl UnsubscribeHeaders {
    /// Both header fields, CRLF-terminated, folded before the mailto part when long.
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "List-Unsubscribe: {}\r\nList-Unsubscribe-Post: {}\r\n",
            self.list_unsubscribe, self.list_unsubscribe_post
        )
        .into_bytes()
    }
}

/// Builds the header fields from a rendered `https` URL and an optional mailto address
/// (`unsubscribe@example.com` or `mailto:unsubscribe@example.com?subject=…`).
pub fn unsubscribe_headers(
    url: &str,
    mailto: Option<&str>,
) -> Result<UnsubscribeHeaders, UnsubscribeError> {
    let parsed = Url::parse(url.trim()).map_err(|e| UnsubscribeError::BadUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    if parsed.scheme() != "https" {
        return Err(UnsubscribeError::NotHttps {
            url: url.to_owned(),
        });
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(UnsubscribeError::BadUrl {
            url: url.to_owned(),
            reason: "no host".to_owned(),
        });
    }
    // `Url` serialization percent-encodes spaces, controls, '<' and '>', so the result cannot
    // break out of the angle brackets or the header line.
    let mut value = format!("<{}>", parsed.as_str());
    if let Some(m) = mailto {
        let m = m.trim();
        let uri = if m.len() >= 7 && m[..7].eq_ignore_ascii_case("mailto:") {
            m.to_owned()
        } else {
            format!("mailto:{m}")
        };
        let parsed = Url::parse(&uri).map_err(|_| UnsubscribeError::BadMailto(m.to_owned()))?;
        let addr = parsed.path();
        let valid = addr
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'));
        if !valid
            || m.contains(|c: char| c.is_whitespace() || c.is_control() || "<>,\"".contains(c))
        {
            return Err(UnsubscribeError::BadMailto(m.to_owned()));
        }
        let fold = if value.len() + parsed.as_str().len() > 60 {
            ",\r\n "
        } else {
            ", "
        };
        value.push_str(fold);
        value.push('<');
        value.push_str(parsed.as_str());
        value.push('>');
    }
    Ok(UnsubscribeHeaders {
        list_unsubscribe: value,
        list_unsubscribe_post: ONE_CLICK,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_and_mailto() {
        let h = unsubscribe_headers("https://ex.com/u?id=42", Some("u@ex.com")).unwrap();
        assert_eq!(
            h.list_unsubscribe,
            "<https://ex.com/u?id=42>, <mailto:u@ex.com>"
        );
        assert_eq!(
            h.to_bytes(),
            b"List-Unsubscribe: <https://ex.com/u?id=42>, <mailto:u@ex.com>\r\n\
              List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        );
    }

    #[test]
    fn https_only() {
        let h = unsubscribe_headers("https://ex.com/u/1", None).unwrap();
        assert_eq!(h.list_unsubscribe, "<https://ex.com/u/1>");
        assert!(matches!(
            unsubscribe_headers("http://ex.com/u", None),
            Err(UnsubscribeError::NotHttps { .. })
        ));
        assert!(matches!(
            unsubscribe_headers("/u/1", None),
            Err(UnsubscribeError::BadUrl { .. })
        ));
        assert!(matches!(
            unsubscribe_headers("mailto:u@ex.com", None),
            Err(UnsubscribeError::NotHttps { .. })
        ));
    }

    #[test]
    fn injection_is_encoded() {
        let h = unsubscribe_headers("https://ex.com/u?a=<b>\r\nBcc: x@y.z", None).unwrap();
        assert!(!h.list_unsubscribe.contains(['\r', '\n', ' ']));
        assert_eq!(h.list_unsubscribe.matches('>').count(), 1);
    }

    #[test]
    fn mailto_forms() {
        let h = unsubscribe_headers(
            "https://example.com/unsubscribe/aaaaaaaaaaaaaaaaaaaa",
            Some("mailto:unsub@example.com?subject=unsubscribe"),
        )
        .unwrap();
        assert!(
            h.list_unsubscribe
                .contains(",\r\n <mailto:unsub@example.com?subject=")
        );
        for bad in ["nobody", "@ex.com", "a b@ex.com", "a@nodot"] {
            assert!(
                matches!(
                    unsubscribe_headers("https://ex.com/", Some(bad)),
                    Err(UnsubscribeError::BadMailto(_))
                ),
                "{bad}"
            );
        }
    }
}
