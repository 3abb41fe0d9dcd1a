//! The list reader and the duplicate filter.

use super::*;

fn reader(data: &[u8]) -> Result<ListReader<&[u8]>, InputError> {
    ListReader::new(data, "list.csv")
}

fn rows(data: &[u8]) -> Vec<Row> {
    reader(data)
        .expect("header")
        .map(|r| r.expect("row"))
        .collect()
}

#[test]
fn basic_rows() {
    let list =
        reader(b"email,first_name\na@example.com,Ann\n\nb@example.com,Bob\n").expect("header");
    assert_eq!(list.headers(), ["email", "first_name"]);
    assert_eq!(list.email_index(), 0);
    let rows: Vec<Row> = list.map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].number, 1);
    assert_eq!(rows[0].line, 2);
    assert_eq!(rows[0].fields, ["a@example.com", "Ann"]);
    assert_eq!(rows[1].number, 2);
    assert_eq!(rows[1].line, 4, "blank line skipped, line still counted");
    assert!(rows.iter().all(|r| r.problem.is_none()));
}

#[test]
fn bom_is_stripped() {
    let list = reader(b"\xEF\xBB\xBFEmail,name\r\nx@example.com,X\r\n").expect("header");
    assert_eq!(list.headers(), ["Email", "name"]);
    assert_eq!(list.email_index(), 0);
}

#[test]
fn to_alias_and_case_insensitive_trimmed() {
    let list = reader(b"name, TO \nX,x@example.com\n").expect("header");
    assert_eq!(list.headers(), ["name", "TO"]);
    assert_eq!(list.email_index(), 1);
    let list = reader(b"to, eMaiL ,n\n").expect("header");
    assert_eq!(list.email_index(), 1, "email wins over to");
}

#[test]
fn missing_email_column_names_file_and_headers() {
    let err = reader(b"name,address\nX,x@example.com\n").expect_err("no column");
    assert!(matches!(err, InputError::NoEmailColumn { .. }));
    let text = err.to_string();
    assert!(text.contains("list.csv:1"), "{text}");
    assert!(text.contains("\"email\""), "{text}");
    assert!(text.contains("\"name\", \"address\""), "{text}");
}

#[test]
fn empty_file_and_duplicates() {
    assert!(matches!(reader(b""), Err(InputError::Empty { .. })));
    assert!(matches!(reader(b"\n\n"), Err(InputError::Empty { .. })));
    let err = reader(b"email,name, name\n").expect_err("dup");
    assert!(
        matches!(&err, InputError::DuplicateColumn { first: 2, second: 3, name, .. } if name == "name")
    );
    assert!(err.to_string().contains("columns 2 and 3"), "{err}");
    assert!(matches!(
        reader(b"email,EMAIL\n"),
        Err(InputError::DuplicateColumn { .. })
    ));
}

#[test]
fn header_not_utf8() {
    let err = reader(b"email,na\xFFme\n").expect_err("latin-1");
    assert!(matches!(err, InputError::HeaderNotUtf8 { line: 1, .. }));
}

#[test]
fn row_problems() {
    let rows = rows(
        b"email,name\n a@example.com ,A\nb@example.com,B,extra\nc@example.com,C,, \n,D\nnot-an-address,E\nd@example.com,\xE9t\xE9\ne@example.com\n",
    );
    assert_eq!(rows[0].email, "a@example.com");
    assert_eq!(
        rows[0].fields[0], " a@example.com ",
        "fields are kept untrimmed"
    );
    assert_eq!(rows[0].problem, None);
    assert_eq!(
        rows[1].problem.as_deref(),
        Some("row has 3 fields, the header has 2")
    );
    assert_eq!(rows[2].problem, None, "empty extra fields are tolerated");
    assert_eq!(rows[3].problem.as_deref(), Some("empty address"));
    assert!(
        rows[4]
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("local@domain"))
    );
    assert_eq!(rows[5].problem.as_deref(), Some(PROBLEM_NOT_UTF8));
    assert_eq!(rows[5].fields[1], "\u{FFFD}t\u{FFFD}");
    assert_eq!(
        rows[6].fields,
        ["e@example.com", ""],
        "missing fields are empty"
    );
    assert_eq!(rows[6].problem, None);
}

#[test]
fn line_numbers_with_any_line_ending() {
    let cases: [(&[u8], [u64; 4]); 3] = [
        (
            b"email,n\r\n1@x.org,2\r\n\r\n3@x.org,4\r\n\"5@x.org\",\"a\r\nb\"\r\n7@x.org",
            [2, 4, 5, 7],
        ),
        (
            b"email,n\n1@x.org,2\n\n3@x.org,4\n\"5@x.org\",\"a\nb\"\n7@x.org\n",
            [2, 4, 5, 7],
        ),
        (
            b"\n\nemail,n\n1@x.org,2\n\n\n\n3@x.org,4\n\"5@x.org\",\"a\nb\"\n7@x.org",
            [4, 8, 9, 11],
        ),
    ];
    for (data, want) in cases {
        let list = reader(data).expect("header");
        let lines: Vec<u64> = list.map(|r| r.expect("row").line).collect();
        assert_eq!(lines, want, "{}", String::from_utf8_lossy(data));
    }
}

#[test]
fn quoted_newlines_keep_line_numbers() {
    let rows = rows(b"email,note\na@example.com,\"two\nlines\"\nb@example.com,x\n");
    assert_eq!(rows[0].fields[1], "two\nlines");
    assert_eq!(rows[1].line, 4);
}

/// A reader that produces a header, then one endless-looking line of `len` bytes.
struct HugeLine {
    header: &'static [u8],
    pos: usize,
    len: usize,
    served: usize,
}

impl Read for HugeLine {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.header.len() {
            let n = buf.len().min(self.header.len() - self.pos);
            buf[..n].copy_from_slice(&self.header[self.pos..self.pos + n]);
            self.pos += n;
            self.served += n;
            return Ok(n);
        }
        let left = self.len.saturating_sub(self.served - self.header.len());
        let n = buf.len().min(left);
        buf[..n].fill(b'a');
        self.served += n;
        Ok(n)
    }
}

#[test]
fn record_too_large_is_rejected_without_buffering_it() {
    let src = HugeLine {
        header: b"email,name\nx@example.com,ok\n",
        pos: 0,
        len: 20 * 1024 * 1024,
        served: 0,
    };
    let mut list = ListReader::new(src, "big.csv").expect("header");
    let first = list.next_row().expect("row").expect("ok");
    assert_eq!(first.email, "x@example.com");
    let err = list.next_row().expect("some").expect_err("too large");
    assert!(
        matches!(
            err,
            InputError::RecordTooLarge {
                line: 3,
                max: DEFAULT_MAX_RECORD,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("big.csv:3:"), "{err}");
    let served = list.csv.get_ref().inner.served as u64;
    assert!(served < 2 * DEFAULT_MAX_RECORD, "read {served} bytes");
    assert!(list.next_row().is_none(), "fatal error ends the list");
}

#[test]
fn record_too_large_after_crlf_names_its_line() {
    let data = format!(
        "email,n\r\na@example.com,1\r\nb@example.com,{}\r\n",
        "x".repeat(100)
    );
    let mut list = ListReader::with_max_record(data.as_bytes(), "l.csv", 50).expect("header");
    assert!(list.next_row().expect("row").is_ok());
    let err = list.next_row().expect("row").expect_err("too long");
    assert!(
        matches!(err, InputError::RecordTooLarge { line: 3, .. }),
        "{err:?}"
    );
    fn send<T: Send>() {}
    send::<ListReader<File>>();
    send::<DuplicateFilter>();
}

#[test]
fn configurable_record_limit() {
    let data = b"email,note\na@example.com,short\nb@example.com,this one is much longer\n";
    let mut list = ListReader::with_max_record(&data[..], "l.csv", 24).expect("header");
    assert!(list.next_row().expect("row").is_ok());
    let err = list.next_row().expect("row").expect_err("too long");
    assert!(matches!(
        err,
        InputError::RecordTooLarge {
            line: 3,
            max: 24,
            ..
        }
    ));
    assert!(matches!(
        ListReader::with_max_record(&data[..], "l.csv", 5),
        Err(InputError::RecordTooLarge { line: 1, .. })
    ));
}

#[test]
fn ten_thousand_columns() {
    let mut header = String::from("email");
    for i in 1..10_000 {
        header.push_str(&format!(",c{i}"));
    }
    header.push('\n');
    let err = reader(header.as_bytes()).expect_err("too many");
    assert!(
        matches!(
            err,
            InputError::TooManyColumns {
                count: 10_000,
                max: 1000,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("10000 columns") && text.contains("list.csv:1"),
        "{text}"
    );
    let ok: String = (1..1000).map(|i| format!(",c{i}")).collect();
    let ok = format!("email{ok}\n");
    assert_eq!(
        reader(ok.as_bytes()).expect("1000 columns").headers().len(),
        1000
    );
}

#[test]
fn scan_counts_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("l.csv");
    std::fs::write(&path, "email\na@example.com\nbad\nc@example.com\n").expect("write");
    let s = scan_file(&path).expect("scan");
    assert_eq!(s.rows, 3);
    assert_eq!(s.problems, 1);
    assert_eq!(s.first_problem.as_ref().map(|p| p.0), Some(3));
    assert_eq!(count_rows(&path).expect("count"), 3);
    let err = count_rows(&dir.path().join("missing.csv")).expect_err("missing");
    assert!(err.to_string().contains("missing.csv"), "{err}");
}

#[test]
fn duplicates_case_insensitive() {
    let mut f = DuplicateFilter::new();
    assert_eq!(f.check("a@example.com", 1), None);
    assert_eq!(f.check("b@example.com", 2), None);
    assert_eq!(f.check("A@Example.COM", 3), Some(1));
    assert_eq!(f.check("b@example.com", 4), Some(2));
    assert_eq!(f.len(), 2);
}

#[test]
fn duplicates_across_merges() {
    let mut f = DuplicateFilter::new();
    let n = 100_000u64;
    for i in 0..n {
        assert_eq!(f.check(&format!("user{i}@example.com"), i + 1), None);
    }
    assert!(!f.keys.is_empty(), "merged at least once");
    for i in (0..n).step_by(997) {
        assert_eq!(f.check(&format!("USER{i}@example.com"), n + 1), Some(i + 1));
    }
    assert_eq!(f.len() as u64, n);
}

#[test]
fn address_keys_ignore_case_and_outer_space_whatever_the_path() {
    use super::address_key;
    assert_eq!(
        address_key(" Ann@Example.COM "),
        address_key("ann@example.com")
    );
    // U+212A KELVIN SIGN lowercases to an ASCII `k`: the general path meets the ASCII one.
    assert_eq!(
        address_key("\u{212a}im@example.com"),
        address_key("KIM@example.com")
    );
    assert_eq!(
        address_key("ÄNN@example.com"),
        address_key("änn@example.com")
    );
    let long = format!("{}@example.com", "A".repeat(300));
    assert_eq!(address_key(&long), address_key(&long.to_lowercase()));
    assert_ne!(
        address_key("ann@example.com"),
        address_key("anne@example.com")
    );
}
