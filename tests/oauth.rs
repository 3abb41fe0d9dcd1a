//! Issue 14: `--auth-mech xoauth2|oauthbearer` with `--token-command`, end to end against the
//! sink (in process, and `pipemail sink --auth-token-file`).

mod util;

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::Duration;

use pipemail::sink::{SinkConfig, SinkHandle};
use util::{Fx, SIMPLE_LIST, SIMPLE_TEMPLATE, expect_code, host_of, run, sink_with};

const TOKEN: &str = "ya29.t0ken-for-tests";

fn oauth_sink() -> SinkHandle {
    sink_with(SinkConfig {
        oauth_token: Some(TOKEN.into()),
        allow_plain_auth: true,
        ..SinkConfig::default()
    })
}

fn fixture() -> Fx {
    let fx = Fx::new();
    fx.write("list.csv", SIMPLE_LIST);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    fx
}

fn send(fx: &Fx, host: &str, mech: &str, token_cmd: &str) -> assert_cmd::Command {
    let mut c = fx.cmd();
    c.args([
        "send",
        "--host",
        host,
        "--tls",
        "none",
        "--allow-plaintext-auth",
        "-v",
    ])
    .args(["--auth-user", "me@example.org", "--auth-mech", mech])
    .args(["--token-command", token_cmd, "--secret-timeout", "500ms"])
    .args([
        "--retries",
        "0",
        "--list",
        "list.csv",
        "--template",
        "t.eml",
    ]);
    c
}

const ROWS: u64 = 3;

#[test]
fn xoauth2_and_oauthbearer_deliver() {
    let fx = fixture();
    let sink = oauth_sink();
    let mut delivered = 0;
    for mech in ["xoauth2", "oauthbearer"] {
        let out = run(send(&fx, &host_of(&sink), mech, &format!("echo {TOKEN}")));
        expect_code(&out, 0);
        delivered += ROWS;
        assert_eq!(sink.stats().messages, delivered, "{mech}\n{out}");
        let shown = format!("AUTH {} ****", mech.to_ascii_uppercase());
        assert!(
            out.stderr.contains(&shown),
            "{mech}: transcript shows {shown}\n{out}"
        );
        assert!(
            !out.stderr.contains("t0ken"),
            "{mech}: the token is never shown\n{out}"
        );
    }
}

/// A wrong token: the sink's 334 error challenge is answered, the 535 ends the run with 69
/// and nothing sent.
#[test]
fn wrong_token_is_exit_69() {
    let fx = fixture();
    let sink = oauth_sink();
    for (mech, ack) in [("oauthbearer", "AQ=="), ("xoauth2", "")] {
        let out = run(send(&fx, &host_of(&sink), mech, "echo wrong-t0ken"));
        expect_code(&out, 69);
        assert_eq!(sink.stats().messages, 0, "{out}");
        assert!(out.stderr.contains("535 5.7.8"), "{mech}\n{out}");
        // The transcript shows the client's answer to the challenge.
        assert!(
            out.stderr.lines().any(|l| l.contains("334 ")) && out.stderr.contains(ack),
            "{mech}\n{out}"
        );
        assert!(!out.stderr.contains("wrong-t0ken"), "{out}");
    }
}

/// A token command that fails, hangs or prints nothing: 69 before any connection.
#[test]
fn token_command_failures_exit_69() {
    let fx = fixture();
    let sink = oauth_sink();
    for (cmd, want) in [
        ("false", "--token-command `false` failed"),
        (
            "sleep 600",
            "--token-command `sleep` did not finish within 500ms",
        ),
        ("printf ''", "--token-command `printf` printed nothing"),
    ] {
        let out = run(send(&fx, &host_of(&sink), "xoauth2", cmd));
        expect_code(&out, 69);
        assert!(out.stderr.contains(want), "{cmd}\n{out}");
        assert_eq!(sink.stats().sessions, 0, "{cmd}: no connection\n{out}");
    }
    // OAuth without a token command, or a token command without OAuth: usage errors.
    let mut c = fx.cmd();
    c.args([
        "send",
        "--host",
        "h",
        "--auth-user",
        "u",
        "--auth-mech",
        "oauthbearer",
    ])
    .args(["--list", "list.csv", "--template", "t.eml"]);
    let out = run(c);
    expect_code(&out, 64);
    assert!(out.stderr.contains("--token-command"), "{out}");
    let mut c = fx.cmd();
    c.args([
        "send",
        "--host",
        "h",
        "--auth-user",
        "u",
        "--token-command",
        "echo x",
    ])
    .args(["--list", "list.csv", "--template", "t.eml"]);
    expect_code(&run(c), 64);
}

/// A mechanism the server does not offer is 69 with the offer named.
#[test]
fn mechanism_not_offered_is_exit_69() {
    let fx = fixture();
    let sink = sink_with(SinkConfig {
        auth: Some(("me@example.org".into(), "pw".into())),
        allow_plain_auth: true,
        ..SinkConfig::default()
    });
    let out = run(send(&fx, &host_of(&sink), "oauthbearer", "echo x"));
    expect_code(&out, 69);
    assert!(
        out.stderr
            .contains("server does not offer AUTH OAUTHBEARER (it offers PLAIN LOGIN)"),
        "{out}"
    );
}

/// `pipemail sink --auth-token-file` serves XOAUTH2/OAUTHBEARER to `pipemail send`.
#[test]
fn sink_subcommand_with_auth_token_file() {
    let fx = fixture();
    fx.write("token.txt", format!("{TOKEN}\n"));
    let mut sink = fx.cmd_std();
    sink.args([
        "sink",
        "--listen",
        "127.0.0.1:0",
        "--auth-token-file",
        "token.txt",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = sink.spawn().expect("spawn sink");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("listening line");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_owned);
    let result = addr.map(|addr| {
        (
            run(send(&fx, &addr, "oauthbearer", &format!("echo {TOKEN}"))),
            run(send(&fx, &addr, "xoauth2", "echo nope")),
        )
    });
    let _ = child.kill();
    let _ = child.wait();
    let (good, bad) = result.unwrap_or_else(|| panic!("no address in {line:?}"));
    expect_code(&good, 0);
    expect_code(&bad, 69);
}
