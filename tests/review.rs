//! Binary tests of `pipemail report summary|merge|html` (issue 14): the committed sample, shard
//! reports from real runs against the in-process sink, duplicate detection, hostile text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use pipemail::report::{ReportRow, Status};
use pipemail::review::ReportReader;
use pipemail::sink::{SinkConfig, SinkHandle};

const RUN_LIMIT: Duration = Duration::from_secs(120);

fn sample() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples/report-example.csv")
        .display()
        .to_string()
}

struct Fx {
    dir: TempDir,
}

impl Fx {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("pipemail-review-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).expect("write fixture");
        p
    }

    fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("pipemail").expect("binary");
        c.env_clear();
        if let Some(p) = std::env::var_os("PATH") {
            c.env("PATH", p);
        }
        c.env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .timeout(RUN_LIMIT);
        c
    }
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(mut c: assert_cmd::Command) -> Out {
    let o = c.output().expect("run pipemail");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn expect_code(o: &Out, code: i32) {
    assert_eq!(
        o.code,
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
}

fn rows_of(path: &Path) -> Vec<ReportRow> {
    ReportReader::open(path.to_str().expect("utf-8"))
        .expect("open report")
        .map(|r| r.expect("row"))
        .collect()
}

#[test]
fn summary_of_the_sample() {
    let fx = Fx::new();
    let mut c = fx.cmd();
    c.args(["report", "summary", &sample()]);
    let o = run(c);
    expect_code(&o, 0);
    let expected = format!(
        "report   {}\n\
         rows     12 (row numbers 1–12, 0 missing, 0 repeated)\n\
         status   11 sent, 1 failed, 0 deferred, 0 skipped, 0 unknown\n\
         finished 2026-11-25T21:08:44.944Z .. 2026-11-25T21:08:44.968Z (0.024 s)\n\
         rate     500 rows/s\n\
         \n\
         reply            rows\n\
         250 2.0.0          11\n\
         local (input)       1\n\
         \n\
         domain       failed  deferred\n\
         (no domain)       1         0\n",
        sample()
    );
    assert_eq!(o.stdout, expected);
    assert_eq!(o.stderr, "");
}

#[test]
fn summary_as_json() {
    let fx = Fx::new();
    let mut c = fx.cmd();
    c.args(["report", "summary", "--json", &sample()]);
    let o = run(c);
    expect_code(&o, 0);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("one JSON object");
    assert_eq!(v["rows"], 12);
    assert_eq!(v["status"]["sent"], 11);
    assert_eq!(v["status"]["failed"], 1);
    assert_eq!(v["rows_per_second"], 500.0);
    assert_eq!(v["first_finished_at"], "2026-11-25T21:08:44.944Z");
    assert_eq!(
        v["replies"][0],
        serde_json::json!({
            "smtp_code": 250, "enhanced_code": "2.0.0", "stage": null, "rows": 11,
            "example": "Ok: queued as 000000000017",
        })
    );
    assert_eq!(v["replies"][1]["stage"], "input");
    assert_eq!(v["row_numbers"]["missing"], 0);
}

#[test]
fn summary_exit_codes() {
    let fx = Fx::new();
    let mut c = fx.cmd();
    c.args(["report", "summary", "missing.csv"]);
    let o = run(c);
    expect_code(&o, 66);
    assert!(o.stderr.contains("missing.csv"), "{}", o.stderr);

    fx.write("bad.csv", "name,address\nx,y\n");
    let mut c = fx.cmd();
    c.args(["report", "summary", "bad.csv"]);
    expect_code(&run(c), 65);

    let mut c = fx.cmd();
    c.args(["report", "summary"]);
    expect_code(&run(c), 64);

    // A killed run's JSON report (no closing bracket, last record cut short) is read.
    let text = std::fs::read_to_string(sample()).expect("sample");
    let mut json = String::from("[\n");
    for (i, r) in ReportReader::from_reader("s", Box::new(std::io::Cursor::new(text)))
        .expect("reader")
        .enumerate()
    {
        if i > 0 {
            json.push_str(",\n");
        }
        json.push_str(&serde_json::to_string(&r.expect("row")).expect("json"));
    }
    json.truncate(json.len() - 30);
    fx.write("killed.json", json);
    let mut c = fx.cmd();
    c.args(["report", "summary", "-"])
        .pipe_stdin(fx.path("killed.json"))
        .expect("stdin");
    let o = run(c);
    expect_code(&o, 0);
    assert!(o.stdout.contains("rows     11 "), "{}", o.stdout);
    assert!(o.stdout.contains("last record cut short"), "{}", o.stdout);
}

const TEMPLATE: &str = "From: Sender <sender@example.org>\n\
To: <{{ email }}>\n\
Subject: Hello\n\
\n\
Hello.\n";

/// 30 distinct addresses: 2 refused (550), 3 deferred (450), 1 invalid.
fn list() -> String {
    let mut s = String::from("email\n");
    for i in 1..=30 {
        let domain = match i % 10 {
            3 if i != 13 => "bad.example",
            7 => "slow.example",
            _ => "ok.example",
        };
        if i == 13 {
            s.push_str("not-an-address\n");
        } else {
            s.push_str(&format!("user{i}@{domain}\n"));
        }
    }
    s
}

fn send(fx: &Fx, sink: &SinkHandle, extra: &[&str]) {
    let mut c = fx.cmd();
    c.args([
        "send",
        "--host",
        &format!("127.0.0.1:{}", sink.local_addr().port()),
        "--tls",
        "none",
        "--helo",
        "client.test",
        "--retries",
        "1",
        "--retry-delay",
        "10ms",
        "--timeout",
        "60s",
        "--data-timeout",
        "60s",
        "--connect-timeout",
        "20s",
        "--list",
        "list.csv",
        "--template",
        "msg.eml",
        "-q",
    ])
    .args(extra);
    let o = run(c);
    expect_code(&o, 1);
}

/// What must agree between a one-machine report and the merge of shard reports: everything
/// but the Message-ID, the time, and the queue id the sink puts in its 250 text.
fn comparable(rows: &[ReportRow]) -> BTreeMap<u64, String> {
    rows.iter()
        .map(|r| {
            let response = if r.status == Status::Sent {
                "(queued)".to_owned()
            } else {
                r.response.clone()
            };
            (
                r.row,
                format!(
                    "{} {} {:?} {:?} {response} {:?} {}",
                    r.email, r.status, r.smtp_code, r.enhanced_code, r.stage, r.attempts
                ),
            )
        })
        .collect()
}

#[test]
fn merge_of_three_shards_equals_one_machine() {
    let fx = Fx::new();
    fx.write("list.csv", list());
    fx.write("msg.eml", TEMPLATE);
    let sink = SinkHandle::start(
        "127.0.0.1:0".parse().expect("address"),
        SinkConfig {
            reject: ["550:*@bad.example", "450:*@slow.example"]
                .iter()
                .map(|r| r.parse().expect("rule"))
                .collect(),
            ..SinkConfig::default()
        },
    )
    .expect("sink");
    send(&fx, &sink, &["--report", "one.csv"]);
    send(&fx, &sink, &["--shard", "1/3", "--report", "p1.csv"]);
    send(&fx, &sink, &["--shard", "2/3", "--report", "p2.jsonl"]);
    send(&fx, &sink, &["--shard", "3/3", "--report", "p3.json"]);

    let mut c = fx.cmd();
    c.args([
        "report", "merge", "p1.csv", "p2.jsonl", "p3.json", "--output", "all.csv",
    ]);
    let o = run(c);
    expect_code(&o, 0);
    assert_eq!(
        o.stderr,
        "pipemail: merged 3 reports into all.csv: 30 rows (row numbers 1–30, none missing)\n"
    );
    let one = rows_of(&fx.path("one.csv"));
    let merged = rows_of(&fx.path("all.csv"));
    assert_eq!(merged.len(), 30);
    assert_eq!(comparable(&merged), comparable(&one));
    assert!(
        merged
            .windows(2)
            .all(|w| w[0].finished_at <= w[1].finished_at),
        "interleaved by finished_at"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(fx.path("all.csv"))
            .expect("meta")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // The summary of the shards equals the summary of the one-machine report, but for times.
    let counts = |files: &[&str]| {
        let mut c = fx.cmd();
        c.args(["report", "summary"]).args(files);
        let o = run(c);
        expect_code(&o, 0);
        o.stdout
            .lines()
            .filter(|l| !l.starts_with("report") && !l.starts_with("finished"))
            .filter(|l| !l.starts_with("rate"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        counts(&["p1.csv", "p2.jsonl", "p3.json"]),
        counts(&["one.csv"])
    );
    let summary = counts(&["one.csv"]).join("\n");
    assert!(
        summary.contains("status   24 sent, 3 failed, 3 deferred, 0 skipped, 0 unknown"),
        "{summary}"
    );
    assert!(
        summary.contains("bad.example        2         0"),
        "{summary}"
    );
    assert!(
        summary.contains("slow.example       0         3"),
        "{summary}"
    );

    // JSON Lines to standard output.
    let mut c = fx.cmd();
    c.args([
        "report", "merge", "p1.csv", "p2.jsonl", "p3.json", "-o", "-", "--format", "jsonl",
    ]);
    let o = run(c);
    expect_code(&o, 0);
    assert_eq!(o.stdout.lines().count(), 30);

    // Two shards only: the missing rows are named.
    let mut c = fx.cmd();
    c.args(["report", "merge", "p1.csv", "p3.json", "-o", "two.csv"]);
    let o = run(c);
    expect_code(&o, 0);
    assert!(
        o.stderr
            .contains("20 rows (row numbers 1–30, 10 missing: 2, 5, 8,"),
        "{}",
        o.stderr
    );
}

#[test]
fn merge_refuses_duplicate_rows() {
    let fx = Fx::new();
    let text = std::fs::read_to_string(sample()).expect("sample");
    fx.write("a.csv", &text);
    // A second report sharing rows 3 and 9 with the sample; row 3 with another address.
    let mut b = String::from(text.lines().next().expect("header"));
    b.push('\n');
    for line in text.lines().skip(1) {
        if line.starts_with("9,") {
            b.push_str(line);
            b.push('\n');
        }
        if let Some(rest) = line.strip_prefix("3,ana.muller+newsletter@example.net,") {
            b.push_str("3,someone.else@example.net,");
            b.push_str(rest);
            b.push('\n');
        }
    }
    fx.write("b.csv", b);
    let mut c = fx.cmd();
    c.args(["report", "merge", "a.csv", "b.csv", "-o", "out.csv"]);
    let o = run(c);
    expect_code(&o, 65);
    assert!(
        o.stderr.contains(
            "2 input row(s) appear more than once: row 3 is <ana.muller+newsletter@example.net> \
             in a.csv but <someone.else@example.net> in b.csv (reports of different lists?); \
             row 9 <soren.dubois8@example.net> in a.csv (sent) and b.csv (sent)"
        ),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("Identical copies"), "{}", o.stderr);
    assert!(!fx.path("out.csv").exists(), "nothing written");
    let left: Vec<_> = std::fs::read_dir(fx.dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), 2, "no temporary file left: {left:?}");

    // The same report twice.
    let mut c = fx.cmd();
    c.args(["report", "merge", "a.csv", "a.csv", "-o", "out.csv"]);
    let o = run(c);
    expect_code(&o, 65);
    assert!(o.stderr.contains("12 input row(s)"), "{}", o.stderr);
    assert!(o.stderr.contains("and 2 more"), "{}", o.stderr);

    // Standard input cannot be read twice.
    let mut c = fx.cmd();
    c.args(["report", "merge", "-", "-o", "out.csv"]);
    expect_code(&run(c), 64);
}

#[test]
fn merge_output_never_follows_a_planted_symlink() {
    let fx = Fx::new();
    fx.write("a.csv", std::fs::read(sample()).expect("sample"));
    let target = fx.write("precious", "keep me");
    std::os::unix::fs::symlink(&target, fx.path("out.csv")).expect("symlink");
    let mut c = fx.cmd();
    c.args(["report", "merge", "a.csv", "-o", "out.csv"]);
    let o = run(c);
    expect_code(&o, 74);
    assert!(o.stderr.contains("symbolic link"), "{}", o.stderr);
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep me");
}

/// A JSON Lines report with hostile text everywhere a server or a list can put it.
fn hostile_report() -> String {
    let rows = [
        (
            1,
            "=HYPERLINK(\"http://evil.example\")@evil.example",
            "failed",
            "550 <script>alert(1)</script> \u{1b}[2J\u{1b}]0;pwned\u{7} </td></table>",
        ),
        (
            2,
            "\"<img src=x onerror=alert(2)>\"@x<script>.example",
            "deferred",
            "451 '\"><svg onload=alert(3)>",
        ),
        (3, "-cmd@ok.example", "sent", "250 ok"),
        (4, "'quoted@ok.example", "sent", "250 ok"),
    ];
    let mut s = String::new();
    for (row, email, status, response) in rows {
        let v = serde_json::json!({
            "row": row, "email": email, "status": status,
            "smtp_code": response[..3].parse::<u16>().expect("code"),
            "enhanced_code": "5.7.1<b>", "response": response, "stage": "rcpt",
            "attempts": 1, "message_id": format!("{row}@x"),
            "finished_at": format!("2026-11-25T21:08:4{row}.000Z"),
        });
        s.push_str(&v.to_string());
        s.push('\n');
    }
    s
}

#[test]
fn html_escapes_hostile_text() {
    let fx = Fx::new();
    fx.write("h.jsonl", hostile_report());
    let mut c = fx.cmd();
    c.args(["report", "html", "h.jsonl", &sample(), "-o", "page.html"]);
    let o = run(c);
    expect_code(&o, 0);
    let page = std::fs::read_to_string(fx.path("page.html")).expect("page");
    let lower = page.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "no script element");
    assert!(!lower.contains("<img"), "no img element");
    assert!(!lower.contains("<svg onload"));
    assert!(
        !page.contains('\u{1b}') && !page.contains('\u{7}'),
        "no controls"
    );
    assert!(page.contains("x&lt;script&gt;.example"), "domain escaped");
    assert!(page.contains("5.7.1&lt;b&gt;"), "enhanced code escaped");
    assert!(
        page.contains(
            "550 &lt;script&gt;alert(1)&lt;/script&gt; \\x1b[2J\\x1b]0;pwned\\x07 &lt;/td&gt;&lt;/table&gt;"
        ),
        "server text shown, escaped"
    );
    assert!(page.contains("451 &#39;&quot;&gt;&lt;svg onload=alert(3)&gt;"));
    assert!(page.contains("Content-Security-Policy"));
    assert!(page.contains("<svg"), "charts");
    assert!(page.trim_end().ends_with("</html>"));
}

#[test]
fn csv_cells_are_guarded_and_read_back() {
    let fx = Fx::new();
    fx.write("h.jsonl", hostile_report());
    let mut c = fx.cmd();
    c.args(["report", "merge", "h.jsonl", "-o", "g.csv"]);
    expect_code(&run(c), 0);
    let text = std::fs::read_to_string(fx.path("g.csv")).expect("csv");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    for rec in reader.records() {
        let rec = rec.expect("record");
        for cell in rec.iter() {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "unguarded cell {cell:?}"
            );
        }
    }
    assert!(text.contains("'-cmd@ok.example"), "{text}");
    assert!(text.contains("''quoted@ok.example"), "{text}");
    assert!(!text.contains('\u{1b}'), "controls escaped in the report");
    let back = rows_of(&fx.path("g.csv"));
    let emails: Vec<&str> = back.iter().map(|r| r.email.as_str()).collect();
    assert_eq!(
        emails,
        [
            "=HYPERLINK(\"http://evil.example\")@evil.example",
            "\"<img src=x onerror=alert(2)>\"@x<script>.example",
            "-cmd@ok.example",
            "'quoted@ok.example",
        ]
    );
    assert_eq!(
        back[0].response,
        "550 <script>alert(1)</script> \\x1b[2J\\x1b]0;pwned\\x07 </td></table>"
    );
}

#[test]
fn a_resumed_report_supersedes_the_one_it_resumed() {
    let fx = Fx::new();
    fx.write("list.csv", list());
    fx.write("msg.eml", TEMPLATE);
    let sink = SinkHandle::start(
        "127.0.0.1:0".parse().expect("address"),
        SinkConfig {
            reject: ["450:*@slow.example"]
                .iter()
                .map(|r| r.parse().expect("rule"))
                .collect(),
            ..SinkConfig::default()
        },
    )
    .expect("sink");
    send(&fx, &sink, &["--report", "first.csv"]);
    send(
        &fx,
        &sink,
        &["--resume", "first.csv", "--report", "second.csv"],
    );
    let first = rows_of(&fx.path("first.csv"));
    let second = rows_of(&fx.path("second.csv"));
    assert_eq!(
        (first.len(), second.len()),
        (30, 30),
        "each report is complete"
    );
    let copied = second.iter().filter(|r| first.contains(r)).count();
    assert_eq!(copied, 26, "the sent rows are copied as they were");

    let mut c = fx.cmd();
    c.args(["report", "merge", "first.csv", "second.csv", "-o", "m.csv"]);
    let o = run(c);
    expect_code(&o, 65);
    assert!(
        o.stderr.contains("30 input row(s) appear more than once"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr
            .contains("row 1 <user1@ok.example> in first.csv (sent) and second.csv (sent)"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr
            .contains("merge only the last report of each resume chain"),
        "{}",
        o.stderr
    );

    let mut c = fx.cmd();
    c.args(["report", "merge", "second.csv", "-o", "m.csv"]);
    let o = run(c);
    expect_code(&o, 0);
    assert_eq!(rows_of(&fx.path("m.csv")).len(), 30);
}
