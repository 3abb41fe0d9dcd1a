//! How `send`'s message is set up: a list that carries its message (its columns, or a
//! `template` column naming a file per row), the MIME options (`--html`, `--attach`) and the
//! deliverability flags (DKIM keys, unsubscribe, suppression, DSN). Split from `config.rs`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};

use crate::cli::{DeliverArgs, MimeArgs, SendArgs};
use crate::exit::for_input as input_exit;
use crate::exit::{Exit, Failure, fail};
use pipemail::campaign::sign::{Deliverability, DsnSettings, RowTemplate};
use pipemail::campaign::{FromSource, RowTemplates};
use pipemail::engine;
use pipemail::input::ListReader;
use pipemail::template::Template;
use pipemail::template::list::ListMessage;

/// The message of a `send` run: its template, envelope sender, and per-row templates.
pub(crate) struct MessagePlan {
    pub(crate) template: Template,
    pub(crate) from: FromSource,
    pub(crate) row_templates: Option<RowTemplates>,
    /// MIME composition (`--html`, `--attach`, `Attach:`/`Cc:`/`Bcc:`, and a list's `html`,
    /// `attach`, `cc` and `bcc` columns); `None` sends each rendering as it is.
    pub(crate) mime: Option<pipemail::message::ComposerOptions>,
}

// ----- the list carries the message ---------------------------------------------------------

/// No `--template`: the message comes from the list's columns, or a `template` column names
/// a template file per row.
pub(crate) fn list_message_plan(a: &SendArgs, headers: &[String]) -> Result<MessagePlan, Failure> {
    if let Some(f) = &a.from {
        engine::check_address(f).map_err(|e| fail(Exit::Usage, anyhow!("--from {f:?}: {e}")))?;
    }
    let list_name = if a.list == "-" {
        "<stdin>"
    } else {
        a.list.as_str()
    };
    let lm = ListMessage::from_columns(headers, a.from.as_deref())
        .map_err(|e| fail(Exit::Usage, anyhow!("{list_name}: {e}")))?;
    if lm.template_column.is_some() && (a.mime.html.is_some() || !a.mime.attach.is_empty()) {
        return Err(fail(
            Exit::Usage,
            anyhow!(
                "{list_name}: --html and --attach do not apply to the templates a `template` column names; put them in the templates (Attach:) or give --template"
            ),
        ));
    }
    if lm.html.is_some() && a.mime.html.is_some() {
        return Err(fail(
            Exit::Usage,
            anyhow!(
                "{list_name}: the list has an `html` column; --html would be a second HTML part"
            ),
        ));
    }
    let mut template = match lm.template(list_name, headers) {
        Some(t) => t.map_err(|e| fail(Exit::DataErr, e))?,
        // Only per-row templates: rows with an empty `template` value fail, so this one is
        // never rendered.
        None => Template::parse(b"X-Unused: 1\n\n", list_name, headers)
            .map_err(|e| fail(Exit::Software, e))?,
    };
    let from = match (&a.from, lm.has_from, lm.source.is_some()) {
        (Some(f), _, _) => FromSource::Fixed(f.clone()),
        (None, true, _) | (None, false, false) => FromSource::PerRow,
        (None, false, true) => {
            return Err(fail(
                Exit::Usage,
                anyhow!("{list_name}: the list has no `from` column; give --from ADDR"),
            ));
        }
    };
    let row_templates = match lm.template_column {
        None => None,
        Some(column) => Some(row_templates(a, headers, column, lm.source.is_some())?),
    };
    // The `attach` column's paths (and `--attach-dir`'s default) are relative to the list's
    // directory, or the current one for a list on stdin.
    let mime = mime_options(&a.mime, a.list == "-", &a.list, &mut template, headers)?;
    Ok(MessagePlan {
        template,
        from,
        row_templates,
        mime: Some(mime),
    })
}

/// Loads every template a regular-file list's `template` column names, once each.
fn row_templates(
    a: &SendArgs,
    headers: &[String],
    column: usize,
    empty_uses_default: bool,
) -> Result<RowTemplates, Failure> {
    if a.list == "-" {
        return Err(fail(
            Exit::Usage,
            anyhow!(
                "a `template` column needs the list in a file (its templates are loaded before connecting), not stdin; or give --template"
            ),
        ));
    }
    let list_path = Path::new(&a.list);
    let base = match &a.template_dir {
        Some(d) => d.clone(),
        None => list_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    let base = base.canonicalize().map_err(|e| {
        fail(
            Exit::NoInput,
            anyhow!("template directory {}: {e}", base.display()),
        )
    })?;
    // Distinct names and their row counts.
    let mut reader = ListReader::open(list_path).map_err(|e| fail(input_exit(&e), e))?;
    let mut names: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut rows = 0u64;
    while let Some(row) = reader.next_row() {
        let row = row.map_err(|e| fail(input_exit(&e), e))?;
        rows += 1;
        let v = row.fields.get(column).map_or("", |v| v.trim());
        *names.entry(v.to_owned()).or_insert(0) += 1;
    }
    let mut templates = std::collections::HashMap::new();
    let mut failing = 0u64;
    let mut first_error = None;
    for (name, count) in &names {
        if name.is_empty() {
            if !empty_uses_default {
                failing += count;
                first_error.get_or_insert_with(|| "a row's template column is empty".to_owned());
            }
            continue;
        }
        let loaded = load_row_template(&base, name, headers);
        if let Err(why) = &loaded {
            failing += count;
            first_error.get_or_insert_with(|| why.clone());
        }
        templates.insert(name.clone(), loaded);
    }
    if rows > 0 && failing == rows {
        return Err(fail(
            Exit::DataErr,
            anyhow!(
                "{}: every row would fail: {}",
                a.list,
                first_error.unwrap_or_default()
            ),
        ));
    }
    Ok(RowTemplates {
        column,
        templates,
        empty_uses_default,
    })
}

/// Reads and parses the template `name` under `base` (canonical); never outside it.
fn load_row_template(base: &Path, name: &str, headers: &[String]) -> Result<Template, String> {
    use std::path::Component;
    let rel = Path::new(name);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "template {name:?}: must be a relative path inside {}",
            base.display()
        ));
    }
    let full = base
        .join(rel)
        .canonicalize()
        .map_err(|e| format!("template {name:?}: {e}"))?;
    if !full.starts_with(base) || !full.is_file() {
        return Err(format!(
            "template {name:?}: not a file inside {}",
            base.display()
        ));
    }
    let src = std::fs::read(&full).map_err(|e| format!("template {name:?}: {e}"))?;
    let t = Template::parse(&src, name, headers).map_err(|e| e.to_string())?;
    // Sent as rendered: a Bcc field would show its addresses and reach nobody, an Attach
    // field would be sent as a header, Cc addresses would get no copy.
    if let Some(field) = t.header_names().iter().find(|h| {
        ["bcc", "cc", "attach"]
            .iter()
            .any(|m| h.eq_ignore_ascii_case(m))
    }) {
        return Err(format!(
            "template {name:?}: its {field}: field needs --template (a template column's templates are sent as rendered)"
        ));
    }
    Ok(t)
}
/// The message setup of `send`: `--html` added to the template, `--attach` files checked,
/// the `Attach:` directory (default: the directory of `template_path`, the template's or,
/// for a list that carries its message, the list's; the current one for stdin).
pub(crate) fn mime_options(
    a: &MimeArgs,
    template_is_stdin: bool,
    template_path: &str,
    template: &mut Template,
    columns: &[String],
) -> Result<pipemail::message::ComposerOptions, Failure> {
    if let Some(path) = &a.html {
        let src = std::fs::read(path)
            .with_context(|| format!("cannot read the HTML template {}", path.display()))
            .map_err(|e| fail(Exit::NoInput, e))?;
        template
            .add_html(&src, &path.display().to_string(), columns)
            .map_err(|e| fail(Exit::DataErr, e))?;
    }
    for path in &a.attach {
        if !path.exists() {
            return Err(fail(
                Exit::NoInput,
                anyhow!("--attach {}: no such file", path.display()),
            ));
        }
    }
    if let Some(dir) = &a.output
        && !dir.is_dir()
    {
        return Err(fail(
            Exit::NoInput,
            anyhow!("--output {}: not a directory", dir.display()),
        ));
    }
    let attach_dir = match &a.attach_dir {
        Some(d) => d.clone(),
        None if template_is_stdin => PathBuf::from("."),
        None => Path::new(template_path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    Ok(pipemail::message::ComposerOptions {
        attach: a.attach.clone(),
        attach_dir,
        ..Default::default()
    })
}
/// The deliverability part of a `send` plan.
pub(crate) struct DeliverPlan {
    pub(crate) deliverability: Deliverability,
    pub(crate) suppression: Option<std::sync::Arc<pipemail::deliver::suppress::Suppression>>,
    pub(crate) suppress_add: Option<pipemail::deliver::suppress::SuppressAppender>,
}

/// DKIM keys, unsubscribe, suppression and DSN flags: keys and lists are read once, here.
pub(crate) fn deliverability(
    a: &DeliverArgs,
    from: Option<&str>,
    dry_run: bool,
    columns: &[String],
) -> Result<DeliverPlan, Failure> {
    use pipemail::deliver::dkim::{DkimKey, DkimSigner};
    use pipemail::deliver::suppress::{SuppressAppender, Suppression};
    let lib = |code: u8, e: anyhow::Error| fail(Exit::from_sysexits(i32::from(code)), e);
    let mut d = Deliverability::default();
    if a.dkim_selector.len() != a.dkim_key.len()
        || !(a.dkim_domain.is_empty() || a.dkim_domain.len() == a.dkim_key.len())
    {
        return Err(fail(
            Exit::Usage,
            anyhow!(
                "give one --dkim-selector per --dkim-key (and either no --dkim-domain or one per key)"
            ),
        ));
    }
    for (i, (path, selector)) in a.dkim_key.iter().zip(&a.dkim_selector).enumerate() {
        let loaded = DkimKey::from_file(path).map_err(|e| lib(e.exit_code(), e.into()))?;
        if let Some(w) = &loaded.warning {
            eprintln!("pipemail: warning: {w}");
        }
        let domain = a.dkim_domain.get(i).map(String::as_str);
        let signer = DkimSigner::new(loaded.key, selector, domain)
            .map_err(|e| lib(e.exit_code(), e.into()))?;
        d.signers.push(signer);
    }
    if let Some(u) = &a.unsubscribe {
        let t =
            RowTemplate::parse("--unsubscribe", u, columns).map_err(|e| fail(Exit::Usage, e))?;
        if !RowTemplate::is_templated(u) {
            pipemail::deliver::unsubscribe::unsubscribe_headers(u, a.unsubscribe_mailto.as_deref())
                .map_err(|e| fail(Exit::Usage, e))?;
        }
        d.unsubscribe_url = Some(t);
    }
    if let Some(m) = &a.unsubscribe_mailto {
        pipemail::deliver::unsubscribe::unsubscribe_headers("https://example.com/", Some(m))
            .map_err(|e| fail(Exit::Usage, e))?;
        d.unsubscribe_mailto = Some(m.clone());
    }
    if let Some(f) = from.filter(|f| RowTemplate::is_templated(f)) {
        d.envelope_from =
            Some(RowTemplate::parse("--from", f, columns).map_err(|e| fail(Exit::Usage, e))?);
    }
    if a.dsn_notify.is_some() || a.dsn_ret.is_some() {
        let notify = a
            .dsn_notify
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: pipemail::deliver::dsn::DsnError| fail(Exit::Usage, e))?;
        let ret = a
            .dsn_ret
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: pipemail::deliver::dsn::DsnError| fail(Exit::Usage, e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        d.dsn = Some(DsnSettings {
            notify,
            ret,
            campaign: pipemail::deliver::dsn::campaign_id(now, std::process::id()),
        });
    }
    let suppression = if a.suppress.is_empty() {
        None
    } else {
        let mut s = Suppression::new();
        for p in &a.suppress {
            s.load(p).map_err(|e| lib(e.exit_code(), e.into()))?;
        }
        Some(std::sync::Arc::new(s))
    };
    let suppress_add = match &a.suppress_add {
        Some(p) if !dry_run => {
            Some(SuppressAppender::open(p).map_err(|e| lib(e.exit_code(), e.into()))?)
        }
        _ => None,
    };
    Ok(DeliverPlan {
        deliverability: d,
        suppression,
        suppress_add,
    })
}
