use std::fmt::Write as _;
use std::io::Cursor;

use super::*;
use crate::input::DuplicateFilter;

/// A seeded xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn list_of(emails: &[String]) -> String {
    let mut s = String::from("email,n\n");
    for (i, e) in emails.iter().enumerate() {
        let _ = writeln!(s, "{e},{i}");
    }
    s
}

fn opener(csv: &str) -> impl FnMut() -> Result<ListReader<Cursor<Vec<u8>>>, InputError> + '_ {
    move || ListReader::new(Cursor::new(csv.as_bytes().to_vec()), "list.csv")
}

/// The in-memory filter's answer: (row, first row) for each repeated row.
fn in_memory(csv: &str, take: impl Fn(u64) -> bool) -> Vec<(u64, u64)> {
    let mut f = DuplicateFilter::new();
    let mut list = opener(csv)().expect("list");
    let mut out = Vec::new();
    while let Some(row) = list.next_row() {
        let row = row.expect("row");
        if row.problem.is_some() || !take(row.number) {
            continue;
        }
        if let Some(first) = f.check(&row.email, row.number) {
            out.push((row.number, first));
        }
    }
    out
}

fn external(
    csv: &str,
    take: impl Fn(u64) -> bool,
    hash: fn(&str) -> u64,
    run: usize,
) -> Vec<(u64, u64)> {
    let mut scan = ScanSummary::default();
    let d = find_duplicates_with(opener(csv), take, hash, run, &mut scan).expect("pre-scan");
    let mut whole = opener(csv)().expect("list");
    assert_eq!(
        scan,
        crate::input::scan_list(&mut whole).expect("scan"),
        "the same check"
    );
    d.dup_of
}

/// Four buckets only: nearly every pair of distinct addresses collides.
fn weak_hash(s: &str) -> u64 {
    address_key(s) & 3
}

#[test]
fn equals_the_in_memory_filter_on_random_lists_with_planted_duplicates() {
    let mut rng = Rng(0x15_d0d0);
    for case in 0..40 {
        let n = 1 + (rng.next() % 400) as usize;
        let mut emails: Vec<String> = Vec::with_capacity(n);
        for i in 0..n {
            let e = if i > 0 && rng.next().is_multiple_of(4) {
                // A planted repeat, in another letter case or with spaces around it.
                let prev = emails[(rng.next() % i as u64) as usize].clone();
                match rng.next() % 3 {
                    0 => prev.to_uppercase(),
                    1 => format!(" {prev} "),
                    _ => prev,
                }
            } else if rng.next().is_multiple_of(20) {
                "not-an-address".to_string()
            } else {
                format!("u{}@d{}.example", rng.next() % 1000, rng.next() % 3)
            };
            emails.push(e);
        }
        let csv = list_of(&emails);
        let of = 1 + rng.next() % 3;
        let take = move |r: u64| (r - 1).is_multiple_of(of);
        let want = in_memory(&csv, take);
        for run in [1, 7, 64, RUN_ENTRIES] {
            assert_eq!(
                external(&csv, take, address_key, run),
                want,
                "case {case} run {run}"
            );
            // Forced collisions: still exactly the real repeats.
            assert_eq!(
                external(&csv, take, weak_hash, run),
                want,
                "case {case} run {run}"
            );
        }
    }
}

#[test]
fn a_collision_never_skips_a_real_recipient() {
    let emails: Vec<String> = ["a@x.example", "b@x.example", "A@X.example", "c@x.example"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    let csv = list_of(&emails);
    let all_collide: fn(&str) -> u64 = |_| 42;
    let mut scan = ScanSummary::default();
    let d =
        find_duplicates_with(opener(&csv), |_| true, all_collide, 2, &mut scan).expect("pre-scan");
    assert_eq!(scan.rows, 4);
    assert_eq!(d.len(), 1);
    assert_eq!(d.first_of(3), Some(1));
    assert_eq!((d.first_of(2), d.first_of(4)), (None, None));
}
