//! Issue 14: the config file and profiles (`--config`, `--profile`, `pipemail config show`)
//! and `--password-command`, run as the binary in a temp dir with a cleared environment.

mod util;

use pipemail::sink::SinkConfig;
use util::{Fx, SIMPLE_LIST, SIMPLE_TEMPLATE, expect_code, host_of, list_args, run, sink_with};

/// Writes `config.toml` with owner-only permissions.
fn config(fx: &Fx, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let p = fx.write("config.toml", text);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The `key = value  # source` line `config show` prints for `key`, if any.
fn shown(stdout: &str, key: &str) -> Option<String> {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .map(str::to_string)
}

/// flag > environment > profile > defaults > built-in, every combination of levels present.
#[test]
fn precedence_table() {
    let fx = Fx::new();
    // `host` has an environment variable and no built-in default; `retries` the opposite.
    for bits in 0..16u8 {
        let (flag, env, profile, defaults) =
            (bits & 8 != 0, bits & 4 != 0, bits & 2 != 0, bits & 1 != 0);
        let mut text = String::from("[defaults]\n");
        if defaults {
            text.push_str("host = \"defaults.example\"\nretries = 7\n");
        }
        text.push_str("[profile.p]\n");
        if profile {
            text.push_str("host = \"profile.example\"\nretries = 8\n");
        }
        config(&fx, &text);
        let mut c = fx.cmd();
        c.args([
            "config",
            "show",
            "--config",
            "config.toml",
            "--profile",
            "p",
        ]);
        if env {
            c.env("PIPEMAIL_HOST", "env.example");
        }
        if flag {
            c.args(["--", "--host", "flag.example", "--retries", "9"]);
        }
        let out = run(c);
        expect_code(&out, 0);
        let stdout = out.stdout_text();
        let host = shown(&stdout, "host");
        let want_host = [
            (flag, "host = \"flag.example\"  # flag"),
            (env, "host = \"env.example\"  # env"),
            (profile, "host = \"profile.example\"  # profile"),
            (defaults, "host = \"defaults.example\"  # defaults"),
        ]
        .into_iter()
        .find(|(on, _)| *on)
        .map(|(_, l)| l.to_string());
        assert_eq!(
            host, want_host,
            "flag={flag} env={env} profile={profile} defaults={defaults}\n{out}"
        );
        let want_retries = [
            (flag, "retries = 9  # flag"),
            (profile, "retries = 8  # profile"),
            (defaults, "retries = 7  # defaults"),
            (true, "retries = 3  # built-in"),
        ]
        .into_iter()
        .find(|(on, _)| *on)
        .map(|(_, l)| l.to_string());
        assert_eq!(
            shown(&stdout, "retries"),
            want_retries,
            "bits {bits:04b}\n{out}"
        );
    }
}

/// `$PIPEMAIL_PROFILE` picks the profile; the default file is found through
/// `$XDG_CONFIG_HOME`, else `~/.config`.
#[test]
fn profile_from_env_and_default_paths() {
    let fx = Fx::new();
    let text = "[profile.a]\nhost = \"a.example\"\n[profile.b]\nhost = \"b.example\"\n";
    std::fs::create_dir_all(fx.path(".config/pipemail")).expect("mkdir");
    fx.write(".config/pipemail/config.toml", text);
    std::fs::create_dir_all(fx.path("xdg/pipemail")).expect("mkdir");
    fx.write(
        "xdg/pipemail/config.toml",
        text.replace("b.example", "xdg-b.example"),
    );
    let mut c = fx.cmd();
    c.args(["config", "show"]).env("PIPEMAIL_PROFILE", "b");
    let out = run(c);
    expect_code(&out, 0);
    assert!(
        out.stdout_text()
            .contains("host = \"b.example\"  # profile"),
        "{out}"
    );
    let mut c = fx.cmd();
    c.args(["config", "show", "--profile", "b"])
        .env("XDG_CONFIG_HOME", fx.path("xdg"));
    let out = run(c);
    assert!(
        out.stdout_text().contains("host = \"xdg-b.example\""),
        "{out}"
    );
    // --profile beats $PIPEMAIL_PROFILE.
    let mut c = fx.cmd();
    c.args(["config", "show", "--profile", "a"])
        .env("PIPEMAIL_PROFILE", "b");
    let out = run(c);
    assert!(out.stdout_text().contains("host = \"a.example\""), "{out}");
    // A profile the file lacks, and a --config that does not exist.
    let mut c = fx.cmd();
    c.args(["config", "show", "--profile", "nope"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(
        out.stderr.contains("no [profile.nope]") && out.stderr.contains("a, b"),
        "{out}"
    );
    let mut c = fx.cmd();
    c.args(["config", "show", "--config", "missing.toml"]);
    expect_code(&run(c), 66);
}

#[test]
fn unknown_key_names_key_and_line() {
    let fx = Fx::new();
    config(
        &fx,
        "[defaults]\ntls = \"none\"\n\n[profile.news]\nhost = \"mx.example\"\nconections = 4\n",
    );
    let mut c = fx.cmd();
    c.args(["send", "--config", "config.toml", "--profile", "news"])
        .args(["--list", "l.csv", "--template", "t.eml"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(
        out.stderr
            .contains("config.toml:6: unknown key `conections` in [profile.news]"),
        "{out}"
    );
    // A top-level key that is neither [defaults] nor [profile.*], and a table as a value.
    config(&fx, "host = \"x\"\n");
    let mut c = fx.cmd();
    c.args(["config", "show", "--config", "config.toml"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(
        out.stderr.contains("line 1") && out.stderr.contains("host"),
        "{out}"
    );
    config(&fx, "[defaults]\n\n[defaults.host]\nx = 1\n");
    let mut c = fx.cmd();
    c.args(["config", "show", "--config", "config.toml"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(
        out.stderr.contains("config.toml:3: `host` must be"),
        "{out}"
    );
}

#[test]
fn writable_file_with_a_secret_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let fx = Fx::new();
    for (text, refused) in [
        ("[profile.p]\npassword = \"hunter2\"\n", true),
        (
            "[defaults]\npassword-command = \"pass show smtp\"\n[profile.p]\n",
            true,
        ),
        ("[profile.p]\ntoken-command = \"oauth2l fetch\"\n", true),
        ("[profile.p]\nhost = \"mx.example\"\n", false),
    ] {
        for mode in [0o620, 0o602, 0o600] {
            let p = fx.write("config.toml", text);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let mut c = fx.cmd();
            c.args([
                "config",
                "show",
                "--config",
                "config.toml",
                "--profile",
                "p",
            ]);
            let out = run(c);
            if refused && mode != 0o600 {
                expect_code(&out, 64);
                assert!(out.stderr.contains("group- or world-writable"), "{out}");
                assert!(out.stderr.contains("chmod go-w"), "{out}");
            } else {
                expect_code(&out, 0);
            }
            assert!(!out.stderr.contains("hunter2") && !out.stdout_text().contains("hunter2"));
        }
    }
}

#[test]
fn config_show_never_prints_a_secret() {
    let fx = Fx::new();
    config(
        &fx,
        "[defaults]\npassword = \"hunter2-defaults\"\n\
         [profile.p]\nauth-user = \"me\"\npassword = \"hunter2-profile\"\n\
         password-command = \"echo hunter2-cmd\"\ntoken-command = \"echo hunter2-token\"\n",
    );
    let mut c = fx.cmd();
    c.args([
        "config",
        "show",
        "--config",
        "config.toml",
        "--profile",
        "p",
    ]);
    let out = run(c);
    expect_code(&out, 0);
    let stdout = out.stdout_text();
    assert!(
        !stdout.contains("hunter2") && !out.stderr.contains("hunter2"),
        "{out}"
    );
    assert!(stdout.contains("password = \"****\"  # profile"), "{out}");
    assert!(
        stdout.contains("password-command = \"****\"  # profile"),
        "{out}"
    );
    assert!(
        stdout.contains("token-command = \"****\"  # profile"),
        "{out}"
    );
    let mut c = fx.cmd();
    c.args([
        "config",
        "show",
        "--config",
        "config.toml",
        "--profile",
        "p",
    ])
    .env("PIPEMAIL_PASSWORD", "hunter2-env");
    let out = run(c);
    expect_code(&out, 0);
    assert!(!out.stdout_text().contains("hunter2"), "{out}");
    assert!(
        out.stdout_text().contains("password = \"****\"  # env"),
        "{out}"
    );
    assert!(
        !out.stdout_text().contains("password-command"),
        "the environment's password replaces the profile's command\n{out}"
    );
}

fn auth_sink() -> pipemail::sink::SinkHandle {
    sink_with(SinkConfig {
        auth: Some(("news@example.org".into(), "s3cret-pw".into())),
        allow_plain_auth: true,
        ..SinkConfig::default()
    })
}

/// A profile carries host, TLS, AUTH and its password command; a flag still wins.
#[test]
fn send_with_a_profile_and_a_password_command() {
    let fx = Fx::new();
    let sink = auth_sink();
    fx.write("list.csv", SIMPLE_LIST);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    config(
        &fx,
        &format!(
            "[defaults]\ntls = \"none\"\nallow-plaintext-auth = true\nhost = \"127.0.0.1:1\"\n\
             [profile.news]\nhost = \"{}\"\nauth-user = \"news@example.org\"\n\
             password-command = \"printf 's3cret-pw\\\\nrest'\"\nretries = 0\n",
            host_of(&sink)
        ),
    );
    let mut c = fx.cmd();
    c.args(["send", "--profile", "news", "--config", "config.toml", "-v"])
        .args(list_args("list.csv", "t.eml", "r.csv"));
    let out = run(c);
    expect_code(&out, 0);
    let rows = SIMPLE_LIST.lines().count() as u64 - 1;
    assert_eq!(sink.stats().messages, rows, "{out}");
    assert!(out.stderr.contains("AUTH PLAIN ****"), "{out}");
    assert!(!out.stderr.contains("s3cret"), "{out}");
    // A flag beats the profile: this host refuses connections.
    let mut c = fx.cmd();
    c.args(["send", "--profile", "news", "--config", "config.toml"])
        .args([
            "--host",
            "127.0.0.1:1",
            "--list",
            "list.csv",
            "--template",
            "t.eml",
        ]);
    expect_code(&run(c), 69);
    assert_eq!(sink.stats().messages, rows);
}

/// A password command that fails, hangs or prints nothing stops the run with 69 before any
/// connection is made; the message names the program, never the output.
#[test]
fn password_command_failures_exit_69_before_any_mail() {
    let fx = Fx::new();
    let sink = auth_sink();
    fx.write("list.csv", SIMPLE_LIST);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    for (cmd, timeout, want) in [
        (
            "sh -c 'echo no-vault >&2; exit 3'",
            "30s",
            "`sh` failed (exit status: 3)",
        ),
        ("sleep 600", "500ms", "`sleep` did not finish within 500ms"),
        ("true", "30s", "`true` printed nothing"),
        ("/nonexistent/get-password", "30s", "could not be started"),
    ] {
        let mut c = fx.cmd();
        c.args(["send", "--host", &host_of(&sink), "--tls", "none"])
            .args(["--auth-user", "news@example.org", "--allow-plaintext-auth"])
            .args(["--password-command", cmd, "--secret-timeout", timeout])
            .args(["--list", "list.csv", "--template", "t.eml"]);
        let out = run(c);
        expect_code(&out, 69);
        assert!(
            out.stderr.contains(&format!("--password-command {want}")) || out.stderr.contains(want),
            "{cmd}\n{out}"
        );
        assert!(
            out.stderr
                .lines()
                .filter(|l| l.contains("pipemail: error"))
                .count()
                == 1,
            "{out}"
        );
        assert_eq!(sink.stats().sessions, 0, "{cmd}: no connection\n{out}");
    }
    // Both ways of giving a password on the command line at once is a usage error.
    let mut c = fx.cmd();
    c.args(["send", "--host", "h", "--auth-user", "u"])
        .args(["--password-command", "true", "--password-file", "p"])
        .args(["--list", "list.csv", "--template", "t.eml"]);
    expect_code(&run(c), 64);
}

/// A flag that excludes a profile's flag overrides it instead of clashing with it.
#[test]
fn a_conflicting_flag_overrides_the_profile() {
    let fx = Fx::new();
    config(&fx, "[profile.p]\nno-pipelining = true\n");
    let mut c = fx.cmd();
    c.args([
        "config",
        "show",
        "--config",
        "config.toml",
        "--profile",
        "p",
    ]);
    let out = run(c);
    assert!(
        out.stdout_text()
            .contains("no-pipelining = true  # profile"),
        "{out}"
    );
    let mut c = fx.cmd();
    c.args([
        "config",
        "show",
        "--config",
        "config.toml",
        "--profile",
        "p",
    ])
    .args(["--", "--require-pipelining"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(
        out.stdout_text()
            .contains("no-pipelining = false  # built-in"),
        "{out}"
    );
    assert!(
        out.stdout_text()
            .contains("require-pipelining = true  # flag"),
        "{out}"
    );
}

/// `check-server` takes its flags from the profile too; keys of `send` alone are ignored there.
#[test]
fn check_server_uses_the_profile() {
    let fx = Fx::new();
    let sink = util::mem_sink();
    config(
        &fx,
        &format!(
            "[profile.p]\nhost = \"{}\"\ntls = \"none\"\nconnections = 4\nprobes = 2\n",
            host_of(&sink)
        ),
    );
    let mut c = fx.cmd();
    c.args([
        "check-server",
        "--config",
        "config.toml",
        "--profile",
        "p",
        "--json",
    ]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(out.stdout_text().contains("PIPELINING"), "{out}");
}
