//! Issue 14 part 2: `--shard auto/N` from a job scheduler's environment, `{shard}` in paths,
//! shard reports merged, a dry run that writes nothing, the progress line in a terminal.

use super::*;

/// Six rows, distinct addresses.
const SIX: &str = "email,name\na1@x.example,A1\na2@x.example,A2\na3@x.example,A3\n\
a4@x.example,A4\na5@x.example,A5\na6@x.example,A6\n";

fn six_fixture() -> Fx {
    let fx = Fx::new();
    fx.write("list.csv", SIX);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    fx
}

/// `send --dry-run --shard auto/3` with `env`; returns the run.
fn dry_auto(fx: &Fx, env: &[(&str, &str)]) -> util::Out {
    let mut c = fx.send("127.0.0.1:9");
    c.args(["--list", "list.csv", "--template", "t.eml", "--dry-run"])
        .args(["--shard", "auto/3"]);
    for (k, v) in env {
        c.env(k, v);
    }
    run(c)
}

#[test]
fn shard_auto_takes_k_from_kubernetes_or_slurm_and_neither_is_a_usage_error() {
    let fx = six_fixture();
    // Kubernetes: index 1 (0-based) is shard 2: rows 2 and 5.
    let out = dry_auto(&fx, &[("JOB_COMPLETION_INDEX", "1")]);
    expect_code(&out, 0);
    assert!(
        out.stderr.contains("dry run: 2 messages would be sent"),
        "{out}"
    );
    assert!(
        header(&out.stdout, "To").is_some_and(|t| t.contains("a2@x.example")),
        "{out}"
    );
    // Slurm: task 5 of an array starting at 3 is shard 3: rows 3 and 6.
    let out = dry_auto(
        &fx,
        &[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "3")],
    );
    expect_code(&out, 0);
    assert!(
        header(&out.stdout, "To").is_some_and(|t| t.contains("a3@x.example")),
        "{out}"
    );
    // Neither: usage.
    let out = dry_auto(&fx, &[]);
    expect_code(&out, 64);
    assert!(out.stderr.contains("JOB_COMPLETION_INDEX"), "{out}");
    // An index outside the shard count: usage.
    let out = dry_auto(&fx, &[("JOB_COMPLETION_INDEX", "3")]);
    expect_code(&out, 64);
    // {shard} without --shard: usage.
    let mut c = fx.send("127.0.0.1:9");
    c.args(["--list", "list.csv", "--template", "t.eml", "--dry-run"])
        .args(["--report", "r-{shard}.csv"]);
    expect_code(&run(c), 64);
}

/// Runs `list` as three shards (`auto/3`, Kubernetes-style) and as one run against the same
/// sink; the merged shard reports must equal the one-machine report.
fn shards_equal_one_run(list: &str, rows: usize) {
    let fx = Fx::new();
    fx.write("list.csv", list);
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = start_sink(SinkConfig {
        reject: rules(&["550:a4@*"]),
        ..SinkConfig::default()
    });
    for index in 0..3 {
        let mut c = fx.send(&host_of(&sink));
        c.args(["--list", "list.csv", "--template", "t.eml"])
            .args(["--shard", "auto/3", "--report", "shard-{shard}.csv"])
            .env("JOB_COMPLETION_INDEX", index.to_string());
        let out = run(c);
        assert!(matches!(out.code, Some(0 | 1)), "{out}");
        assert!(
            fx.path(&format!("shard-{}.csv", index + 1)).exists(),
            "{out}"
        );
    }
    assert_eq!(read_report(&fx.path("shard-2.csv")).len(), 2);
    // `{shard}` in --resume too: shard 2 again has nothing left to send.
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--dry-run"])
        .args(["--shard", "auto/3", "--resume", "shard-{shard}.csv"])
        .env("JOB_COMPLETION_INDEX", "1");
    let out = run(c);
    assert!(
        out.stderr.contains("0 messages would be sent")
            && out.stderr.contains("2 done by an earlier run"),
        "{out}"
    );
    let mut c = fx.cmd();
    c.args([
        "report",
        "merge",
        "shard-1.csv",
        "shard-2.csv",
        "shard-3.csv",
    ])
    .args(["-o", "merged.csv"]);
    expect_code(&run(c), 0);
    let sent_by_shards = deliveries(&sink.messages());

    let one = Fx::new();
    one.write("list.csv", list);
    one.write("t.eml", SIMPLE_TEMPLATE);
    let mut c = one.send(&host_of(&sink));
    c.args(list_args("list.csv", "t.eml", "all.csv"));
    expect_code(&run(c), 1);
    let merged = read_report(&fx.path("merged.csv"));
    let all = read_report(&one.path("all.csv"));
    assert_eq!(merged.len(), rows);
    let key = |rows: &[Row]| -> BTreeMap<u64, (String, String, String)> {
        rows.iter()
            .map(|r| {
                (
                    r.row,
                    (r.email.clone(), r.status.clone(), r.response.clone()),
                )
            })
            .filter(|(_, (_, status, _))| status != "sent")
            .chain(
                rows.iter()
                    .filter(|r| r.status == "sent")
                    .map(|r| (r.row, (r.email.clone(), r.status.clone(), String::new()))),
            )
            .collect()
    };
    assert_eq!(key(&merged), key(&all));
    assert_eq!(sent_by_shards.len(), 5, "every address once, a4 refused");
    assert!(
        sent_by_shards.values().all(|&n| n == 1),
        "{sent_by_shards:?}"
    );
}

#[test]
fn three_shard_reports_merged_equal_a_one_machine_run() {
    shards_equal_one_run(SIX, 6);
}

#[test]
fn shards_skip_an_address_repeated_in_another_shard_like_one_run() {
    // Row 7 (shard 1) repeats row 2's address (shard 2): skipped, as on one machine.
    let list = format!("{SIX}A2@x.example,again\n");
    shards_equal_one_run(&list, 7);
}

/// Names, sizes and modification times of everything in `dir`.
fn listing(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().expect("mtime"),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn dry_run_with_resume_writes_nothing_and_counts_what_a_run_would_send() {
    let fx = Fx::new();
    fx.write("first.csv", "email,name\na1@x.example,A1\n");
    fx.write("list.csv", "email,name\na1@x.example,A1\na2@x.example,A2\n");
    fx.write("t.eml", SIMPLE_TEMPLATE);
    let sink = plain_sink();
    let mut c = fx.send(&host_of(&sink));
    c.args(list_args("first.csv", "t.eml", "r.csv"));
    expect_code(&run(c), 0);
    // A journal left by a killed run: a dry run must not consume it.
    fx.write(
        "r.csv.journal",
        "{\"row\":7,\"email\":\"other@x.example\"}\n",
    );
    let before = listing(fx.dir.path());
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml", "--dry-run"])
        .args(["--resume", "r.csv", "--report", "r2.csv"]);
    let out = run(c);
    expect_code(&out, 0);
    assert!(
        out.stderr.contains(
            "dry run: 1 messages would be sent, 0 rows fail, 0 duplicates skipped, 1 done by an earlier run; nothing was sent"
        ),
        "{out}"
    );
    assert!(
        header(&out.stdout, "To").is_some_and(|t| t.contains("a2@x.example")),
        "{out}"
    );
    assert_eq!(listing(fx.dir.path()), before, "a dry run writes nothing");
    // The real run sends exactly what the dry run counted.
    let mut c = fx.send(&host_of(&sink));
    c.args(["--list", "list.csv", "--template", "t.eml"])
        .args(["--resume", "r.csv", "--report", "r2.csv"]);
    let out = run(c);
    expect_code(&out, 0);
    assert_eq!(sink.messages().len(), 2, "{out}");
}

/// Splits terminal output into what each redraw leaves on a line: at `\n` and `\r`, with
/// escape sequences removed. indicatif pads the bar's last line with spaces to the right
/// edge so that the next text starts on a new line; the summary line is split off too.
fn screen_lines(raw: &str) -> Vec<String> {
    let raw = raw.replace("pipemail:", "\npipemail:");
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    while let Some(&n) = chars.peek() {
                        chars.next();
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn progress_line_fits_80_and_120_columns_with_whole_rates_and_the_saving() {
    let fx = numbered_fixture('p', 0..60);
    let sink = plain_sink();
    let bin = env!("CARGO_BIN_EXE_pipemail");
    // (columns, list): a list file has a known total (bar and ETA); stdin has none (spinner).
    for (cols, list) in [
        (80usize, "list.csv"),
        (120, "list.csv"),
        (80, "- < list.csv"),
    ] {
        // A pseudo-terminal of `cols` columns: `script` runs the command on one.
        let cmd = format!(
            "stty cols {cols} rows 24; exec {bin} send --host {} --tls none --helo client.test \
             --template t.eml --report r{cols}.csv --list {list} 2>&1",
            host_of(&sink)
        );
        let bounded = list == "list.csv";
        let mut c = std::process::Command::new("script");
        c.args(["-q", "-e", "-c", &cmd, "/dev/null"])
            .current_dir(fx.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", fx.dir.path())
            .env("TERM", "xterm");
        let out = util::run_std(c, RUN_LIMIT);
        expect_code(&out, 0);
        let text = out.stdout_text();
        let bars: Vec<String> = screen_lines(&text)
            .into_iter()
            .filter(|l| {
                if bounded {
                    l.contains("ETA")
                } else {
                    l.contains(" rows ") && !l.starts_with("pipemail:")
                }
            })
            .collect();
        assert!(!bars.is_empty(), "{cols}: no progress line drawn\n{text:?}");
        for l in &bars {
            assert!(
                l.chars().count() <= cols,
                "{cols}: {} columns: {l:?}",
                l.chars().count()
            );
            let rate = l
                .split_whitespace()
                .find(|w| w.ends_with("/s"))
                .unwrap_or_else(|| panic!("{cols}: no rate in {l:?}"));
            assert!(
                rate.trim_end_matches("/s")
                    .chars()
                    .all(|c| c.is_ascii_digit()),
                "{cols}: whole messages per second: {l:?}"
            );
        }
        let last = bars.last().expect("a line");
        assert!(
            last.contains(if bounded { "60/60" } else { "60 rows" }) && last.contains("saved"),
            "{cols}: {last:?}"
        );
        if cols == 120 {
            assert!(last.contains("round trips instead of"), "{last:?}");
        }
    }
}
