use std::io::Cursor;

use super::*;

fn load(text: &str) -> Result<(Suppression, u64), SuppressError> {
    let mut s = Suppression::new();
    let n = s.load_reader(Cursor::new(text.as_bytes()), Path::new("list"))?;
    Ok((s, n))
}

#[test]
fn lines_domains_comments_case() {
    let (s, n) =
        load("# bounced in March\nAlice@Example.COM\n\n  @Spam.example \n<bob@x.org>\n").unwrap();
    assert_eq!(n, 3);
    assert!(s.contains("alice@example.com"));
    assert!(s.contains("ALICE@EXAMPLE.COM"));
    assert!(s.contains("bob@x.org"));
    assert!(s.contains("anyone@spam.EXAMPLE"));
    assert!(!s.contains("carol@example.com"));
    assert!(!s.contains("alice@example.co"));
    assert!(!s.contains("spam.example"));
}

#[test]
fn csv_with_email_column() {
    let text = "name,Email,note\n# comment\nAl,al@ex.com,\"a, b\"\n\"Bo\",@bo.example,x\nCy,,\n";
    let (s, n) = load(text).unwrap();
    assert_eq!(n, 2);
    assert!(s.contains("al@ex.com"));
    assert!(s.contains("z@bo.example"));
    let (s, _) = load("email\nz@z.z\n").unwrap();
    assert!(s.contains("Z@Z.Z"));
    assert!(matches!(
        load("name,addr\nx,y@z\n"),
        Err(SuppressError::NoEmailColumn { .. })
    ));
}

#[test]
fn bad_entry_names_line() {
    match load("a@b.c\n\nnot-an-address\n") {
        Err(SuppressError::BadEntry { line, text, .. }) => {
            assert_eq!(line, 3);
            assert_eq!(text, "not-an-address");
        }
        other => panic!("{other:?}"),
    }
    assert!(load("@\n").is_err());
    assert!(load("a b@c.d\n").is_err());
}

#[test]
fn permanent_recipient_failures() {
    assert!(is_permanent_recipient_failure(550, Some("5.1.1")));
    assert!(is_permanent_recipient_failure(550, Some("5.1.10")));
    assert!(is_permanent_recipient_failure(553, Some("5.1.3")));
    assert!(is_permanent_recipient_failure(550, Some("5.2.1")));
    assert!(!is_permanent_recipient_failure(552, Some("5.2.2")));
    assert!(!is_permanent_recipient_failure(550, Some("5.7.1")));
    assert!(!is_permanent_recipient_failure(553, Some("5.1.8")));
    assert!(!is_permanent_recipient_failure(450, Some("4.1.1")));
    assert!(!is_permanent_recipient_failure(550, None));
    assert!(!is_permanent_recipient_failure(550, Some("5.1")));
}

#[test]
fn appender_appends_and_refuses_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suppressed.txt");
    let mut a = SuppressAppender::open(&path).unwrap();
    a.append("x@y.z").unwrap();
    a.append(" Q@R.S ").unwrap();
    assert!(a.append("a@b.c\nevil@x").is_err());
    drop(a);
    let mut a = SuppressAppender::open(&path).unwrap();
    a.append("again@y.z").unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "x@y.z\nQ@R.S\nagain@y.z\n"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut s = Suppression::new();
    assert_eq!(s.load(&path).unwrap(), 3);
    assert!(s.contains("q@r.s"));

    let target = dir.path().join("target");
    std::fs::write(&target, "").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = SuppressAppender::open(&link).unwrap_err();
    assert!(err.to_string().contains("link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
}

use std::os::unix::fs::PermissionsExt;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Load time and memory for a 1M-line list:
/// `cargo test --release --lib suppress::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_load_million() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("million.txt");
    let mut f = io::BufWriter::new(File::create(&path).unwrap());
    for i in 0..1_000_000u32 {
        if i % 1000 == 0 {
            writeln!(f, "@Domain{i}.example").unwrap();
        } else {
            writeln!(f, "User.{i}@Example{}.com", i % 5000).unwrap();
        }
    }
    drop(f);
    let before = rss_kib();
    let t = std::time::Instant::now();
    let mut s = Suppression::new();
    let n = s.load(&path).unwrap();
    let load = t.elapsed();
    let after = rss_kib();
    let t = std::time::Instant::now();
    let hits = (0..1_000_000u32)
        .filter(|i| s.contains(&format!("user.{i}@example{}.com", i % 5000)))
        .count();
    let lookups = t.elapsed();
    assert_eq!(n, 1_000_000);
    assert_eq!(hits, 999_000);
    println!(
        "suppression: {n} lines loaded in {:.0} ms, RSS +{} MiB; 1M contains() in {:.0} ms",
        load.as_secs_f64() * 1e3,
        (after.saturating_sub(before)) / 1024,
        lookups.as_secs_f64() * 1e3
    );
}
