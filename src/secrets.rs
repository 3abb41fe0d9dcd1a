//! `--password-command` and `--token-command`: run a program (no shell), take the first line
//! it prints as the secret. Failure, a timeout or empty output is exit 69 before any mail is
//! sent; messages name the program, never its arguments or output (either may hold a secret).

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::anyhow;
use wait_timeout::ChildExt as _;

use anyhow::Context as _;

use crate::cli::{AuthMechArg, ConnArgs};
use crate::exit::{Exit, Failure, fail};
use pipemail::engine::{AuthMechanism, Credentials, Secret};

/// Environment variable holding the AUTH password.
pub(crate) const PASSWORD_ENV: &str = "PIPEMAIL_PASSWORD";

/// The AUTH credentials and mechanism the flags ask for; runs a password or token command.
pub(crate) fn auth_plan(
    a: &ConnArgs,
) -> Result<(Option<Credentials>, Option<AuthMechanism>), Failure> {
    let mech = a.auth_mech.map(|m| match m {
        AuthMechArg::Plain => AuthMechanism::Plain,
        AuthMechArg::Login => AuthMechanism::Login,
        AuthMechArg::Xoauth2 => AuthMechanism::XOAuth2,
        AuthMechArg::Oauthbearer => AuthMechanism::OAuthBearer,
    });
    let usage = |m: &str| Err(fail(Exit::Usage, anyhow!("{m}")));
    let Some(user) = &a.auth_user else {
        return match () {
            () if a.password_file.is_some() => usage("--password-file needs --auth-user"),
            () if a.password_command.is_some() => usage("--password-command needs --auth-user"),
            () if a.token_command.is_some() => usage("--token-command needs --auth-user"),
            () if mech.is_some() => usage("--auth-mech needs --auth-user"),
            () => Ok((None, None)),
        };
    };
    let oauth = mech.is_some_and(AuthMechanism::is_oauth);
    let password = match (&a.token_command, oauth) {
        (Some(cmd), true) => run_secret_command("--token-command", cmd, a.secret_timeout)?,
        (None, true) => {
            return usage(
                "--auth-mech xoauth2 and oauthbearer need --token-command (the OAuth 2.0 access token)",
            );
        }
        (Some(_), false) => {
            return usage("--token-command needs --auth-mech xoauth2 or oauthbearer");
        }
        (None, false) => read_password(a)?,
    };
    let creds = Credentials {
        username: user.clone(),
        password,
    };
    Ok((Some(creds), mech))
}

/// The AUTH password: --password-file, --password-command, $PIPEMAIL_PASSWORD, then the
/// config file's `password` (a profile's file or command is not used when the variable is set).
fn read_password(a: &ConnArgs) -> Result<Secret, Failure> {
    if let Some(path) = &a.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --password-file {}", path.display()))
            .map_err(|e| fail(Exit::NoInput, e))?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(fail(
                Exit::DataErr,
                anyhow!("--password-file {} is empty", path.display()),
            ));
        }
        return Ok(Secret::new(line));
    }
    if let Some(cmd) = &a.password_command {
        return run_secret_command("--password-command", cmd, a.secret_timeout);
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => return Ok(Secret::new(p)),
        _ => {}
    }
    if let Some(p) = &a.config_password {
        return Ok(p.clone());
    }
    Err(fail(
        Exit::Usage,
        anyhow!(
            "--auth-user needs a password: set ${PASSWORD_ENV}, or use --password-file or --password-command (never on the command line)"
        ),
    ))
}

/// Most of a command's output read (a secret is one short line).
const MAX_OUTPUT: u64 = 64 * 1024;

/// Runs `cmdline` for the secret named by `flag` (`--password-command`), waiting at most
/// `limit`; the first line of its standard output, without its line end.
pub(crate) fn run_secret_command(
    flag: &str,
    cmdline: &str,
    limit: Duration,
) -> Result<Secret, Failure> {
    let words = shell_words::split(cmdline).map_err(|e| {
        fail(
            Exit::Usage,
            anyhow!("{flag}: cannot split the command: {e}"),
        )
    })?;
    let Some((program, args)) = words.split_first() else {
        return Err(fail(Exit::Usage, anyhow!("{flag}: the command is empty")));
    };
    let unavailable = |what: String| fail(Exit::Unavailable, anyhow!("{flag} `{program}` {what}"));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| unavailable(format!("could not be started: {e}")))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(unavailable("has no standard output".into()));
    };
    // A reader thread, so a chatty command cannot fill the pipe and stall until the timeout.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = stdout.take(MAX_OUTPUT).read_to_end(&mut out);
        let _ = tx.send(r.map(|_| out));
    });
    let status = match child.wait_timeout(limit) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(unavailable(format!(
                "did not finish within {} (see --secret-timeout)",
                humantime::format_duration(limit)
            )));
        }
        Err(e) => return Err(unavailable(format!("could not be waited for: {e}"))),
    };
    if !status.success() {
        return Err(unavailable(format!("failed ({status})")));
    }
    // The command has exited; a child it left behind may still hold the pipe open.
    let out = match rx.recv_timeout(limit) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(unavailable(format!("output could not be read: {e}"))),
        Err(_) => {
            return Err(unavailable(
                "exited but its output did not end (a process it started holds it open)".into(),
            ));
        }
    };
    let text = String::from_utf8_lossy(&out);
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.trim().is_empty() {
        return Err(unavailable("printed nothing".into()));
    }
    Ok(Secret::new(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn first_line_without_a_shell() {
        let s = run_secret_command("--password-command", "printf 'a b;c\\nsecond\\n'", T)
            .expect("runs");
        assert_eq!(s.expose(), "a b;c");
        // No shell: `;` and `$HOME` are plain arguments.
        let s = run_secret_command("--password-command", "echo 'x;' $HOME", T).expect("runs");
        assert_eq!(s.expose(), "x; $HOME");
    }

    #[test]
    fn failures_are_unavailable() {
        for (cmd, want) in [
            ("false", "failed"),
            ("true", "printed nothing"),
            ("printf '\\n\\n'", "printed nothing"),
            ("/nonexistent/pipemail-secret", "could not be started"),
        ] {
            let e = run_secret_command("--token-command", cmd, T).expect_err(cmd);
            assert_eq!(e.exit, Exit::Unavailable, "{cmd}");
            assert!(
                format!("{:#}", e.error).contains(want),
                "{cmd}: {:#}",
                e.error
            );
        }
        let e = run_secret_command("--token-command", "sleep 600", Duration::from_millis(200))
            .expect_err("times out");
        assert_eq!(e.exit, Exit::Unavailable);
        assert!(e.error.to_string().contains("did not finish within 200ms"));
        let e = run_secret_command("--token-command", "'unclosed", T).expect_err("bad quoting");
        assert_eq!(e.exit, Exit::Usage);
    }
}
