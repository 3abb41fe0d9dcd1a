//! Side files are created safely: a symlink planted at the report, its journal, the resume
//! carry file or an output path is refused with a clear error and exit 74, and its target keeps
//! its content and mode; a journal left by a crashed run is not clobbered.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::util::{Fx, Out, expect_code, host_of, mem_sink, run};

/// A file someone wants protected: fixed content, mode 0644.
fn precious(fx: &Fx) -> PathBuf {
    let p = fx.write("precious", "keep me\n");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    p
}

#[track_caller]
fn unchanged(p: &Path) {
    assert_eq!(std::fs::read_to_string(p).expect("read"), "keep me\n");
    let mode = std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "mode of {}", p.display());
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
}

fn send(fx: &Fx, host: &str, extra: &[&str]) -> Out {
    fx.write("list.csv", "email\na@x.example\nb@x.example\n");
    fx.write(
        "t.eml",
        "From: s@example.org\nTo: {{ email }}\nSubject: x\n\nx\n",
    );
    let mut c = fx.cmd();
    c.args([
        "send",
        "--host",
        host,
        "--helo",
        "client.test",
        "--tls",
        "none",
    ])
    .args([
        "--retries",
        "0",
        "--list",
        "list.csv",
        "--template",
        "t.eml",
    ])
    .args(extra);
    run(c)
}

#[track_caller]
fn refused(out: &Out, path: &str) {
    expect_code(out, 74);
    assert!(out.stderr.starts_with("pipemail: error: "), "{out}");
    assert!(out.stderr.contains(path), "names {path}: {out}");
}

#[test]
fn a_symlink_at_the_report_is_refused() {
    let sink = mem_sink();
    let fx = Fx::new();
    let target = precious(&fx);
    symlink(&target, fx.path("r.csv")).expect("plant");
    let out = send(&fx, &host_of(&sink), &["--report", "r.csv"]);
    refused(&out, "r.csv");
    assert!(out.stderr.contains("symbolic link"), "{out}");
    unchanged(&target);
    assert!(sink.messages().is_empty(), "nothing sent");
}

#[test]
fn a_symlink_at_the_journal_is_refused_before_the_report_is_touched() {
    let sink = mem_sink();
    let fx = Fx::new();
    let target = precious(&fx);
    fx.write("r.csv", "an old report\n");
    symlink(&target, fx.path("r.csv.journal")).expect("plant");
    let out = send(&fx, &host_of(&sink), &["--report", "r.csv"]);
    refused(&out, "r.csv.journal");
    assert!(out.stderr.contains("symbolic link"), "{out}");
    unchanged(&target);
    assert_eq!(fx.read("r.csv"), "an old report\n", "report untouched");
    assert!(sink.messages().is_empty(), "nothing sent");
}

#[test]
fn a_journal_left_by_a_crashed_run_is_kept_until_resume_consumes_it() {
    let sink = mem_sink();
    let fx = Fx::new();
    let host = host_of(&sink);
    expect_code(&send(&fx, &host, &["--report", "r.csv"]), 0);
    assert_eq!(mode(&fx.path("r.csv")), 0o600, "a new report is owner-only");
    // A crash leaves the journal: row 2 was in flight.
    let journal = "{\"row\":2,\"email\":\"b@x.example\"}\n";
    fx.write("r.csv.journal", journal);
    let report = fx.read("r.csv");
    let out = send(&fx, &host, &["--report", "r.csv"]);
    refused(&out, "r.csv.journal");
    assert!(out.stderr.contains("--resume"), "{out}");
    assert_eq!(fx.read("r.csv.journal"), journal, "journal kept");
    assert_eq!(fx.read("r.csv"), report, "report kept");
    assert_eq!(sink.messages().len(), 2, "nothing sent by the refused run");
    // --resume reads it, then the run may replace it.
    let out = send(&fx, &host, &["--report", "r.csv", "--resume", "r.csv"]);
    expect_code(&out, 0);
    assert!(!fx.path("r.csv.journal").exists());
    assert_eq!(sink.messages().len(), 2, "both rows were sent before");
}

#[test]
fn an_existing_report_keeps_its_mode() {
    let sink = mem_sink();
    let fx = Fx::new();
    fx.write("r.csv", "old\n");
    std::fs::set_permissions(fx.path("r.csv"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    expect_code(&send(&fx, &host_of(&sink), &["--report", "r.csv"]), 0);
    assert_eq!(mode(&fx.path("r.csv")), 0o640);
    assert!(fx.read("r.csv").starts_with("row,email,"));
}

#[test]
fn a_symlink_at_the_resume_carry_file_is_refused() {
    let sink = mem_sink();
    let fx = Fx::new();
    let host = host_of(&sink);
    expect_code(&send(&fx, &host, &["--report", "r.csv"]), 0);
    let target = precious(&fx);
    symlink(&target, fx.path("r.csv.resume")).expect("plant");
    // The old fixed temporary name is not used any more: a link there is ignored.
    symlink(&target, fx.path("r.csv.resume.tmp")).expect("plant");
    let out = send(&fx, &host, &["--report", "r2.csv", "--resume", "r.csv"]);
    refused(&out, "r.csv.resume");
    assert!(out.stderr.contains("symbolic link"), "{out}");
    unchanged(&target);
    std::fs::remove_file(fx.path("r.csv.resume")).expect("rm");
    let out = send(&fx, &host, &["--report", "r2.csv", "--resume", "r.csv"]);
    expect_code(&out, 0);
    unchanged(&target);
    assert!(
        std::fs::symlink_metadata(fx.path("r.csv.resume.tmp"))
            .expect("still there")
            .is_symlink()
    );
}

#[test]
fn a_symlink_at_a_merge_or_bounces_output_is_refused() {
    let sink = mem_sink();
    let fx = Fx::new();
    expect_code(&send(&fx, &host_of(&sink), &["--report", "r.csv"]), 0);
    let target = precious(&fx);
    symlink(&target, fx.path("out.csv")).expect("plant");
    let mut c = fx.cmd();
    c.args(["report", "merge", "r.csv", "-o", "out.csv"]);
    refused(&run(c), "out.csv");
    unchanged(&target);
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(fx.path("md").join(sub)).expect("maildir");
    }
    let mut c = fx.cmd();
    c.args([
        "bounces",
        "--report",
        "r.csv",
        "--maildir",
        "md",
        "-o",
        "out.csv",
    ]);
    refused(&run(c), "out.csv");
    unchanged(&target);
}

#[test]
fn a_templated_envelope_sender_that_renders_invalid_fails_the_row_at_input() {
    let sink = mem_sink();
    let fx = Fx::new();
    fx.write(
        "list.csv",
        "email,sender\na@x.example,news@example.org\nb@x.example,bad..dots@example.org\n",
    );
    fx.write(
        "t.eml",
        "From: News <{{ sender }}>\nTo: {{ email }}\nSubject: x\n\nx\n",
    );
    let mut c = fx.cmd();
    c.args(["send", "--host", &host_of(&sink), "--helo", "client.test"])
        .args(["--tls", "none", "--retries", "0", "--list", "list.csv"])
        .args(["--template", "t.eml", "--report", "r.csv"]);
    let out = run(c);
    expect_code(&out, 1);
    let rows = super::util::read_report(&fx.path("r.csv"));
    let bad = rows.iter().find(|r| r.row == 2).expect("row 2");
    assert_eq!(bad.status, pipemail::report::Status::Failed, "{bad:?}");
    assert_eq!(bad.stage, Some(pipemail::report::Stage::Input), "{bad:?}");
    assert!(bad.response.contains("From address"), "{bad:?}");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "only the good row reached the server");
    assert_eq!(msgs[0].from, "news@example.org");
}
