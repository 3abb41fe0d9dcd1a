//! The config file (TOML): `[defaults]` and `[profile.NAME]` tables whose keys are the long
//! flags of `send` and `check-server`, read from clap's own command so a new flag is a new key.
//!
//! Precedence: flag > environment > profile > defaults > built-in. Values from the file are
//! added to the command line as flags only where clap says an argument came from nowhere or
//! from its default ([`clap::parser::ValueSource`]), then the real parse runs on the result.
//! The one key that is not a flag is `password` (secrets never go on argv); it travels on the
//! side, in [`Layered::password`].

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};
use serde::Deserialize;
use toml::Spanned;

use crate::cli::Cli;
use crate::exit::{Exit, Failure, fail};
use crate::secrets::PASSWORD_ENV;
use pipemail::engine::Secret;

/// Subcommands whose flags a config file can set.
const SUBCOMMANDS: [&str; 2] = ["send", "check-server"];
/// Flags that choose the file and the profile, so they cannot be keys in it.
const NOT_KEYS: [&str; 4] = ["config", "profile", "help", "version"];
/// The config-file-only key holding the AUTH password.
pub(crate) const PASSWORD_KEY: &str = "password";
/// The ways to give the password; one level (flag, env, profile, defaults) gives all of them.
const PASSWORD_KEYS: [&str; 3] = [PASSWORD_KEY, "password-file", "password-command"];
/// Keys whose presence makes a group- or world-writable file unacceptable.
const SECRET_KEYS: [&str; 3] = [PASSWORD_KEY, "password-command", "token-command"];

/// Where a setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Flag,
    Env,
    Profile,
    Defaults,
    BuiltIn,
}

impl Source {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::Env => "env",
            Self::Profile => "profile",
            Self::Defaults => "defaults",
            Self::BuiltIn => "built-in",
        }
    }
}

/// The command line with the config file's settings added.
#[derive(Debug)]
pub(crate) struct Layered {
    pub(crate) argv: Vec<OsString>,
    /// The file's `password`, when no higher level gives a password.
    pub(crate) password: Option<Secret>,
    /// Keys taken from the file, with their table.
    pub(crate) applied: BTreeMap<String, Source>,
    /// The file read, if any.
    pub(crate) file: Option<PathBuf>,
}

type Table = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    defaults: Table,
    #[serde(default)]
    profile: BTreeMap<Spanned<String>, Table>,
}

/// A parsed, checked config file.
#[derive(Debug)]
struct ConfigFile {
    path: PathBuf,
    text: String,
    parsed: FileToml,
}

/// Every long flag of `send` and `check-server`: the keys a config file may use.
pub(crate) fn known_keys() -> BTreeSet<String> {
    let cmd = Cli::command();
    let mut keys: BTreeSet<String> = SUBCOMMANDS
        .iter()
        .filter_map(|name| cmd.find_subcommand(name))
        .flat_map(|sub| sub.get_arguments())
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_KEYS.contains(l))
        .map(str::to_string)
        .collect();
    keys.insert(PASSWORD_KEY.to_string());
    keys
}

/// `$XDG_CONFIG_HOME/pipemail/config.toml`, else `~/.config/pipemail/config.toml`.
pub(crate) fn default_path() -> Option<PathBuf> {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    if let Some(x) = nonempty("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(x).join("pipemail/config.toml"));
    }
    nonempty("HOME").map(|h| PathBuf::from(h).join(".config/pipemail/config.toml"))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

impl ConfigFile {
    /// Reads `path`; `None` when it is the default path and does not exist.
    fn load(path: &Path, explicit: bool) -> Result<Option<Self>, Failure> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                let e = anyhow!("cannot read the config file {}: {e}", path.display());
                return Err(fail(Exit::NoInput, e));
            }
        };
        let parsed: FileToml = toml::from_str(&text)
            .map_err(|e| fail(Exit::Usage, anyhow!("config file {}: {e}", path.display())))?;
        let file = Self {
            path: path.to_path_buf(),
            text,
            parsed,
        };
        file.check_keys()?;
        file.check_permissions()?;
        Ok(Some(file))
    }

    fn tables(&self) -> impl Iterator<Item = (String, &Table)> {
        let d = std::iter::once(("[defaults]".to_string(), &self.parsed.defaults));
        let p = self
            .parsed
            .profile
            .iter()
            .map(|(n, t)| (format!("[profile.{}]", n.get_ref()), t));
        d.chain(p)
    }

    fn at(&self, offset: usize) -> String {
        format!("{}:{}", self.path.display(), line_of(&self.text, offset))
    }

    /// Every key is a known flag (or `password`) with a plain value.
    fn check_keys(&self) -> Result<(), Failure> {
        let known = known_keys();
        for (table, t) in self.tables() {
            for (k, v) in t {
                let at = self.at(k.span().start);
                if !known.contains(k.get_ref()) {
                    let e = anyhow!(
                        "{at}: unknown key `{}` in {table} (keys are the long flags of `send` and `check-server`, and `password`)",
                        k.get_ref()
                    );
                    return Err(fail(Exit::Usage, e));
                }
                if tokens(k.get_ref(), v.get_ref()).is_none() {
                    let e = anyhow!(
                        "{at}: `{}` must be a string, number, boolean or an array of them",
                        k.get_ref()
                    );
                    return Err(fail(Exit::Usage, e));
                }
                if k.get_ref() == PASSWORD_KEY && !v.get_ref().is_str() {
                    let e = anyhow!("{at}: `password` must be a string");
                    return Err(fail(Exit::Usage, e));
                }
            }
        }
        Ok(())
    }

    /// A file holding a password or a password/token command must not be writable by others.
    fn check_permissions(&self) -> Result<(), Failure> {
        use std::os::unix::fs::PermissionsExt as _;
        let holds_secret = self.tables().any(|(_, t)| {
            t.keys()
                .any(|k| SECRET_KEYS.contains(&k.get_ref().as_str()))
        });
        if !holds_secret {
            return Ok(());
        }
        let mode = std::fs::metadata(&self.path)
            .map_err(|e| fail(Exit::NoInput, anyhow!("{}: {e}", self.path.display())))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            let e = anyhow!(
                "refusing the config file {}: it holds a password or a password/token command and is group- or world-writable (mode {:03o}); run `chmod go-w {}`",
                self.path.display(),
                mode & 0o777,
                self.path.display()
            );
            return Err(fail(Exit::Usage, e));
        }
        Ok(())
    }

    /// `[defaults]` overlaid with `[profile.NAME]`: key → (value, table).
    fn settings(
        &self,
        profile: Option<&str>,
    ) -> Result<Vec<(String, toml::Value, Source)>, Failure> {
        let mut out: BTreeMap<String, (toml::Value, Source)> = BTreeMap::new();
        for (k, v) in &self.parsed.defaults {
            out.insert(k.get_ref().clone(), (v.get_ref().clone(), Source::Defaults));
        }
        if let Some(name) = profile {
            let Some((_, table)) = self
                .parsed
                .profile
                .iter()
                .find(|(n, _)| n.get_ref() == name)
            else {
                let names: Vec<&str> = self
                    .parsed
                    .profile
                    .keys()
                    .map(|n| n.get_ref().as_str())
                    .collect();
                let e = anyhow!(
                    "no [profile.{name}] in the config file {} (profiles: {})",
                    self.path.display(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                );
                return Err(fail(Exit::Usage, e));
            };
            // A profile that says how to get the password replaces the defaults' way.
            if table
                .keys()
                .any(|k| PASSWORD_KEYS.contains(&k.get_ref().as_str()))
            {
                out.retain(|k, _| !PASSWORD_KEYS.contains(&k.as_str()));
            }
            for (k, v) in table {
                out.insert(k.get_ref().clone(), (v.get_ref().clone(), Source::Profile));
            }
        }
        Ok(out.into_iter().map(|(k, (v, s))| (k, v, s)).collect())
    }
}

/// The flags for `key = value`; `None` for a value no flag can take.
fn tokens(key: &str, value: &toml::Value) -> Option<Vec<OsString>> {
    use toml::Value as V;
    let one = |v: &V| -> Option<String> {
        match v {
            V::String(s) => Some(s.clone()),
            V::Integer(i) => Some(i.to_string()),
            V::Float(f) => Some(f.to_string()),
            _ => None,
        }
    };
    match value {
        V::Boolean(true) => Some(vec![format!("--{key}").into()]),
        V::Boolean(false) => Some(Vec::new()),
        V::Array(items) => items
            .iter()
            .map(|i| one(i).map(|s| OsString::from(format!("--{key}={s}"))))
            .collect(),
        v => one(v).map(|s| vec![format!("--{key}={s}").into()]),
    }
}

/// clap's command with `send`/`check-server` arguments optional, for the first look.
fn lenient() -> clap::Command {
    let mut cmd = Cli::command();
    for name in SUBCOMMANDS {
        cmd = cmd.mut_subcommand(name, |s| s.mut_args(|a| a.required(false)));
    }
    cmd
}

/// Where an argument's value comes from, before the file is applied.
fn source_of(m: &ArgMatches, id: &str) -> Option<ValueSource> {
    m.value_source(id)
}

/// Adds the config file's settings to `argv` (a `send` or `check-server` command line);
/// any other command line, or one clap refuses even leniently, comes back unchanged.
pub(crate) fn layer(argv: Vec<OsString>) -> Result<Layered, Failure> {
    let mut out = Layered {
        argv,
        password: None,
        applied: BTreeMap::new(),
        file: None,
    };
    let Ok(m) = lenient().try_get_matches_from(&out.argv) else {
        return Ok(out);
    };
    let Some((name, sub)) = m.subcommand() else {
        return Ok(out);
    };
    if !SUBCOMMANDS.contains(&name) {
        return Ok(out);
    }
    let explicit = sub.get_one::<PathBuf>("config").cloned();
    let Some(path) = explicit.clone().or_else(default_path) else {
        return Ok(out);
    };
    let Some(file) = ConfigFile::load(&path, explicit.is_some())? else {
        if let Some(p) = sub.get_one::<String>("profile") {
            let e = anyhow!(
                "--profile {p}: no config file ({} does not exist)",
                path.display()
            );
            return Err(fail(Exit::Usage, e));
        }
        return Ok(out);
    };
    let profile = sub.get_one::<String>("profile").map(String::as_str);
    let settings = file.settings(profile)?;
    out.file = Some(file.path.clone());
    let cmd = Cli::command();
    let Some(subcmd) = cmd.find_subcommand(name) else {
        return Ok(out);
    };
    let higher = |s: Option<ValueSource>| {
        matches!(s, Some(ValueSource::CommandLine | ValueSource::EnvVariable))
    };
    let by_long = |key: &str| subcmd.get_arguments().find(|a| a.get_long() == Some(key));
    let password_given = std::env::var_os(PASSWORD_ENV).is_some_and(|v| !v.is_empty())
        || PASSWORD_KEYS
            .iter()
            .any(|k| by_long(k).is_some_and(|a| higher(source_of(sub, a.get_id().as_str()))));
    for (key, value, source) in settings {
        if PASSWORD_KEYS.contains(&key.as_str()) && password_given {
            continue;
        }
        if key == PASSWORD_KEY {
            if let Some(p) = value.as_str() {
                out.password = Some(Secret::new(p));
                out.applied.insert(key, source);
            }
            continue;
        }
        let Some(arg) = by_long(&key) else {
            continue; // a flag of the other subcommand
        };
        if higher(source_of(sub, arg.get_id().as_str())) {
            continue;
        }
        // A flag or variable that excludes this one (`--require-pipelining` against a
        // profile's `no-pipelining`) overrides it too.
        let overridden = subcmd
            .get_arg_conflicts_with(arg)
            .iter()
            .any(|c| higher(source_of(sub, c.get_id().as_str())));
        if overridden {
            continue;
        }
        let Some(flags) = tokens(&key, &value) else {
            continue; // checked when the file was loaded
        };
        out.argv.extend(flags);
        out.applied.insert(key, source);
    }
    Ok(out)
}

/// `pipemail config show`: the settings `send` would use, one `key = value  # source` line
/// each, secrets as `****`.
pub(crate) fn show(a: &crate::cli::ConfigShowArgs) -> Result<String, Failure> {
    let mut argv: Vec<OsString> = vec!["pipemail".into(), "send".into()];
    argv.extend(a.flags.iter().map(OsString::from));
    if let Some(c) = &a.config {
        argv.push("--config".into());
        argv.push(c.into());
    }
    if let Some(p) = &a.profile {
        argv.push("--profile".into());
        argv.push(p.into());
    }
    let layered = layer(argv)?;
    let m = lenient().try_get_matches_from(&layered.argv).map_err(|e| {
        fail(
            Exit::Usage,
            anyhow!("{}", e.render().to_string().trim_end()),
        )
    })?;
    let Some(("send", sub)) = m.subcommand() else {
        return Err(fail(
            Exit::Software,
            anyhow!("config show: no send command"),
        ));
    };
    let mut text = String::new();
    match &layered.file {
        Some(f) => text.push_str(&format!("# config file: {}\n", f.display())),
        None => text.push_str("# config file: none\n"),
    }
    if let Some(p) = &a.profile {
        text.push_str(&format!("# profile: {p}\n"));
    }
    let cmd = Cli::command();
    let subcmd = cmd
        .find_subcommand("send")
        .ok_or_else(|| fail(Exit::Software, anyhow!("no send command")))?;
    for arg in subcmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_KEYS.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let Some(values) = sub.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let source = layered
            .applied
            .get(long)
            .copied()
            .unwrap_or(match sub.value_source(id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env,
                _ => Source::BuiltIn,
            });
        let secret = SECRET_KEYS.contains(&long);
        let shown = |v: &String| -> String {
            if secret {
                "\"****\"".into()
            } else if v == "true" || v == "false" || v.parse::<f64>().is_ok_and(f64::is_finite) {
                v.clone()
            } else {
                toml::Value::String(v.clone()).to_string()
            }
        };
        let value = if values.len() == 1 && !matches!(arg.get_action(), clap::ArgAction::Append) {
            shown(&values[0])
        } else {
            format!(
                "[{}]",
                values.iter().map(shown).collect::<Vec<_>>().join(", ")
            )
        };
        text.push_str(&format!("{long} = {value}  # {}\n", source.name()));
    }
    let env_password = std::env::var_os(PASSWORD_ENV).is_some_and(|v| !v.is_empty());
    if env_password {
        text.push_str(&format!(
            "{PASSWORD_KEY} = \"****\"  # env (${PASSWORD_ENV})\n"
        ));
    } else if let Some(s) = layered.applied.get(PASSWORD_KEY) {
        text.push_str(&format!("{PASSWORD_KEY} = \"****\"  # {}\n", s.name()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_clap() {
        let k = known_keys();
        for key in [
            "host",
            "tls",
            "from",
            "connections",
            "rate",
            "auth-user",
            "password-command",
        ] {
            assert!(k.contains(key), "{key}");
        }
        assert!(k.contains("probe-rcpt"), "check-server flags too");
        assert!(!k.contains("profile") && !k.contains("config") && !k.contains("help"));
    }

    #[test]
    fn values_become_flags() {
        let t = |v: toml::Value| tokens("k", &v).map(|v| v.into_iter().collect::<Vec<_>>());
        assert_eq!(t(toml::Value::Boolean(true)), Some(vec!["--k".into()]));
        assert_eq!(t(toml::Value::Boolean(false)), Some(vec![]));
        assert_eq!(t(toml::Value::Integer(4)), Some(vec!["--k=4".into()]));
        assert_eq!(
            t(toml::Value::Array(vec!["a".into(), "-b".into()])),
            Some(vec!["--k=a".into(), "--k=-b".into()])
        );
        assert_eq!(t(toml::Value::Table(toml::Table::new())), None);
        assert_eq!(line_of("a\nb\nc", 4), 3);
    }
}
