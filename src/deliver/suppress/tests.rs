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
