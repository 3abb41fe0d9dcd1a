//! HTML helpers: Markdown to HTML (pulldown-cmark), HTML to text (html2text), and the `cid:`
//! references of an HTML body.

use pulldown_cmark::{Options, Parser};

use super::error::ComposeError;

/// Width of the text derived from HTML (RFC 5322 §2.1.1 "SHOULD" 78).
const TEXT_WIDTH: usize = 78;

/// Renders Markdown (CommonMark with tables, strikethrough and task lists) to HTML.
pub(crate) fn markdown_to_html(markdown: &str) -> String {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let mut html = String::with_capacity(markdown.len() * 3 / 2 + 64);
    pulldown_cmark::html::push_html(&mut html, Parser::new_ext(markdown, options));
    html
}

/// Plain text for an HTML body (the text/plain alternative when no text body is given).
pub(crate) fn html_to_text(html: &str) -> Result<String, ComposeError> {
    html2text::from_read(html.as_bytes(), TEXT_WIDTH)
        .map_err(|e| ComposeError::HtmlToText(e.to_string()))
}

/// True if `html` references `cid:name` (as in `<img src="cid:logo.png">`).
pub(crate) fn references_cid(html: &str, name: &str) -> bool {
    let mut rest = html;
    while let Some(i) = rest.find("cid:") {
        let after = &rest[i + 4..];
        let end = after
            .find(|c: char| matches!(c, '"' | '\'' | ')' | '>' | '<') || c.is_whitespace())
            .unwrap_or(after.len());
        if &after[..end] == name {
            return true;
        }
        rest = after;
    }
    false
}
