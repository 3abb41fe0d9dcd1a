//! Message body encoding: line endings made CRLF, dot-stuffing for DATA (RFC 5321 §4.5.2) and
//! exact octet counts for BDAT (RFC 3030).
//!
//! Every bare LF and every bare CR becomes CRLF before anything else, so the output can never
//! hold `<LF>.<LF>`, `<CR>.<CR>` or another lone-CR/LF end-of-data look-alike: no SMTP
//! smuggling through a template or a CSV value. The body always ends with CRLF.

/// Appends `body` with every line ending made CRLF and a final CRLF when missing.
/// Returns the number of octets appended.
pub fn normalize_into(body: &[u8], out: &mut Vec<u8>) -> usize {
    let start = out.len();
    walk(body, out, false);
    out.len() - start
}

/// Octets [`normalize_into`] would append (the BDAT chunk size), without copying.
///
/// Counts with `memchr`: a CRLF pair stays two octets, a bare CR or LF becomes two.
pub fn normalized_len(body: &[u8]) -> usize {
    if is_encoded(body, false) {
        return body.len();
    }
    let mut n = body.len();
    let mut i = 0;
    while let Some(off) = memchr::memchr2(b'\r', b'\n', &body[i..]) {
        let p = i + off;
        if body[p] == b'\r' && body.get(p + 1) == Some(&b'\n') {
            i = p + 2;
        } else {
            n += 1;
            i = p + 1;
        }
    }
    if !ends_with_eol(body) {
        n += 2;
    }
    n
}

/// True when `body` is empty or its last octet ends a line (CR or LF): no final CRLF to add.
fn ends_with_eol(body: &[u8]) -> bool {
    matches!(body.last(), None | Some(b'\r' | b'\n'))
}

/// Appends the DATA form of `body`: CRLF line endings, a leading `.` doubled on every line,
/// a final CRLF when missing, then the end-of-data line `.` CRLF.
pub fn encode_data_into(body: &[u8], out: &mut Vec<u8>) {
    if is_encoded(body, true) {
        out.extend_from_slice(body);
    } else {
        walk(body, out, true);
    }
    out.extend_from_slice(b".\r\n");
}

/// True when `body` is already in its encoded form, so it is copied as it is: empty, or
/// every CR followed by LF, every LF preceded by CR, a final CRLF and (with `stuff`) no line
/// starting with `.`. A rendered message usually is: its lines are written with CRLF.
///
/// One pass over adjacent octet pairs in fixed-size blocks, without branches inside a block
/// (the compiler turns a block into a few vector compares), instead of a `memchr` per line.
fn is_encoded(body: &[u8], stuff: bool) -> bool {
    const BLOCK: usize = 64;
    let n = body.len();
    if n == 0 {
        return true;
    }
    if !body.ends_with(b"\r\n") || body[0] == b'\n' || (stuff && body[0] == b'.') {
        return false;
    }
    // Pair i is (body[i], body[i + 1]).
    let (firsts, first_rest) = body[..n - 1].as_chunks::<BLOCK>();
    let (seconds, second_rest) = body[1..].as_chunks::<BLOCK>();
    !(firsts
        .iter()
        .zip(seconds)
        .any(|(a, b)| bad_pairs(a, b, stuff))
        || bad_pairs(first_rest, second_rest, stuff))
}

/// Does a pair break the encoded form: a CR not before LF, an LF not after CR, or (with
/// `stuff`) a `.` after LF?
#[inline(always)]
fn bad_pairs(first: &[u8], second: &[u8], stuff: bool) -> bool {
    let stuff = u8::from(stuff);
    let mut bad = 0u8;
    for (&a, &b) in first.iter().zip(second) {
        let cr = u8::from(a == b'\r');
        let lf = u8::from(b == b'\n');
        let dot = u8::from(a == b'\n') & u8::from(b == b'.') & stuff;
        bad |= (cr ^ lf) | dot;
    }
    bad != 0
}

/// Appends `BDAT <n> LAST` CRLF and the normalized body of exactly `n` octets.
pub fn encode_bdat_into(body: &[u8], out: &mut Vec<u8>) -> usize {
    encode_bdat_with_len(body, normalized_len(body), out)
}

/// [`encode_bdat_into`] when `n == normalized_len(body)` is already known.
pub fn encode_bdat_with_len(body: &[u8], n: usize, out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(b"BDAT ");
    push_decimal(out, n as u64);
    out.extend_from_slice(b" LAST\r\n");
    if n == body.len() {
        // No bare CR or LF and a final line end (each would add octets): already normalized.
        out.extend_from_slice(body);
    } else {
        let written = normalize_into(body, out);
        debug_assert_eq!(written, n);
    }
    n
}

pub(crate) fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Copies `body` into `out` line by line: runs of well-formed lines (CRLF pairs included) are
/// copied in one piece, a bare CR or LF is replaced by CRLF, and with `stuff` a `.` starting a
/// line is doubled. Line ends are found with `memchr`, not byte by byte.
fn walk(body: &[u8], out: &mut Vec<u8>, stuff: bool) {
    out.reserve(body.len() + body.len() / 64 + 2);
    let mut run = 0; // start of the pending run of octets copied as they are
    let mut i = 0; // start of the current line
    loop {
        if stuff && body.get(i) == Some(&b'.') {
            out.extend_from_slice(&body[run..i]);
            out.push(b'.');
            run = i; // the dot itself is copied with the run
        }
        let Some(off) = memchr::memchr2(b'\r', b'\n', &body[i..]) else {
            break;
        };
        let p = i + off;
        if body[p] == b'\r' && body.get(p + 1) == Some(&b'\n') {
            i = p + 2;
        } else {
            out.extend_from_slice(&body[run..p]);
            out.extend_from_slice(b"\r\n");
            i = p + 1;
            run = i;
        }
    }
    out.extend_from_slice(&body[run..]);
    if !ends_with_eol(body) {
        out.extend_from_slice(b"\r\n");
    }
}

/// Reverses DATA encoding (for tests and the sink): strips the end-of-data line and one
/// leading dot from each line. Returns `None` when the input does not end with CRLF.CRLF.
pub fn decode_data(encoded: &[u8]) -> Option<Vec<u8>> {
    let body = if encoded == b".\r\n" {
        &[][..]
    } else {
        &encoded[..encoded
            .len()
            .checked_sub(3)
            .filter(|_| encoded.ends_with(b"\r\n.\r\n"))?]
    };
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_data_into(b, &mut out);
        out
    }

    #[test]
    fn stuffing_and_line_endings() {
        assert_eq!(data(b"a\nb"), b"a\r\nb\r\n.\r\n");
        assert_eq!(data(b".x\r\n..y\n.\n"), b"..x\r\n...y\r\n..\r\n.\r\n");
        assert_eq!(data(b""), b".\r\n");
        assert_eq!(data(b"a\r\r\nb\rc"), b"a\r\n\r\nb\r\nc\r\n.\r\n");
        assert_eq!(data(b"end\r\n"), b"end\r\n.\r\n");
    }

    #[test]
    fn smuggling_sequences_are_neutralised() {
        for evil in [
            &b"x\n.\nMAIL FROM:<a@b>\n"[..],
            b"x\r.\rRCPT",
            b"x\r\n.\nDATA",
            b"x\n.\r\nQUIT\r\n",
            b"\n.\n",
        ] {
            let out = data(evil);
            let body = &out[..out.len() - 3];
            // the only end-of-data is the final one
            assert!(
                !body.windows(5).any(|w| w == b"\r\n.\r\n"),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
            assert!(!out.windows(3).any(|w| w == b"\n.\n" || w == b"\r.\r"));
            // every CR is followed by LF and every LF preceded by CR
            for (i, &b) in out.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(out.get(i + 1), Some(&b'\n'));
                }
                if b == b'\n' {
                    assert_eq!(out[i - 1], b'\r');
                }
            }
        }
    }

    #[test]
    fn bdat_exact_counts() {
        for (body, n) in [
            (&b"a\nb"[..], 6),
            (b"\r\r\n", 4),
            ("h\u{e9}llo\n.\n".as_bytes(), 11),
            (b"", 0),
            (b".", 3),
        ] {
            let mut out = Vec::new();
            let got = encode_bdat_into(body, &mut out);
            assert_eq!(got, n, "{body:?}");
            let header = format!("BDAT {n} LAST\r\n");
            assert!(out.starts_with(header.as_bytes()));
            assert_eq!(out.len() - header.len(), n);
            assert_eq!(normalized_len(body), n);
        }
    }

    #[test]
    fn decode_round_trip() {
        let body = b"x\n.\n..y\r\nz";
        let mut norm = Vec::new();
        normalize_into(body, &mut norm);
        assert_eq!(decode_data(&data(body)).unwrap(), norm);
        assert_eq!(decode_data(b".\r\n").unwrap(), b"");
    }

    /// The byte-at-a-time encoder the `memchr` one replaced, kept as the reference.
    fn reference(body: &[u8], stuff: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut line_start = true;
        let mut i = 0;
        while i < body.len() {
            match body[i] {
                b'\r' | b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    if body[i] == b'\r' && body.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                    line_start = true;
                }
                b'.' if stuff && line_start => {
                    out.extend_from_slice(b"..");
                    line_start = false;
                }
                b => {
                    out.push(b);
                    line_start = false;
                }
            }
            i += 1;
        }
        if !body.is_empty() && !line_start {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn matches_the_byte_at_a_time_reference(
            body in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'.', b'\r', b'\n', 0xe9]), 0..64)
        ) {
            let mut norm = Vec::new();
            normalize_into(&body, &mut norm);
            proptest::prop_assert_eq!(&norm, &reference(&body, false));
            proptest::prop_assert_eq!(normalized_len(&body), norm.len());
            let mut stuffed = Vec::new();
            encode_data_into(&body, &mut stuffed);
            let mut want = reference(&body, true);
            want.extend_from_slice(b".\r\n");
            proptest::prop_assert_eq!(stuffed, want);
            let mut bdat = Vec::new();
            let n = encode_bdat_into(&body, &mut bdat);
            let mut want = format!("BDAT {n} LAST\r\n").into_bytes();
            want.extend_from_slice(&reference(&body, false));
            proptest::prop_assert_eq!(bdat, want);
        }

        /// Bodies that are mostly in encoded form already (CRLF lines, across several of
        /// `is_encoded`'s blocks), with now and then a dot, a bare CR or LF, or no final CRLF.
        #[test]
        fn encoded_bodies_are_copied_as_the_reference_encodes_them(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::sample::select(vec![b'a', b'a', b'a', b'.', 0xe9, b'\r', b'\n']),
                    0..90),
                0..8),
            final_crlf in proptest::bool::ANY,
        ) {
            let mut body = lines.join(&b"\r\n"[..]);
            if final_crlf && !lines.is_empty() {
                body.extend_from_slice(b"\r\n");
            }
            let want = reference(&body, false);
            proptest::prop_assert_eq!(is_encoded(&body, false), want == body);
            let mut norm = Vec::new();
            proptest::prop_assert_eq!(normalize_into(&body, &mut norm), want.len());
            proptest::prop_assert_eq!(&norm, &want);
            proptest::prop_assert_eq!(normalized_len(&body), want.len());
            let mut stuffed = Vec::new();
            encode_data_into(&body, &mut stuffed);
            let mut want = reference(&body, true);
            proptest::prop_assert_eq!(is_encoded(&body, true), want == body);
            want.extend_from_slice(b".\r\n");
            proptest::prop_assert_eq!(stuffed, want);
        }
    }

    #[test]
    fn encoded_form_is_recognized() {
        assert!(is_encoded(b"", true));
        assert!(is_encoded(b"a\r\n", true));
        assert!(is_encoded(b"a\r\n.b\r\n", false));
        assert!(!is_encoded(b"a\r\n.b\r\n", true));
        assert!(!is_encoded(b".a\r\n", true));
        assert!(!is_encoded(b"\na\r\n", false));
        assert!(!is_encoded(b"a\r\rb\r\n", false));
        assert!(!is_encoded(b"a\nb\r\n", false));
        assert!(!is_encoded(b"a", false));
        assert!(!is_encoded(b"\r\n\r", false));
        // a bare LF or a dot line at every position of a 200-octet body, across blocks
        let clean: Vec<u8> = b"abcdefgh\r\n"
            .iter()
            .copied()
            .cycle()
            .take(198)
            .chain(*b"\r\n")
            .collect();
        assert!(is_encoded(&clean, true));
        for i in 1..clean.len() - 2 {
            let mut b = clean.clone();
            b[i] = b'\n';
            assert!(
                !is_encoded(&b, false) || reference(&b, false) == b,
                "LF at {i}"
            );
            let mut b = clean.clone();
            if b[i - 1] == b'\n' {
                b[i] = b'.';
                assert!(!is_encoded(&b, true), "dot at {i}");
                assert!(is_encoded(&b, false), "dot at {i}");
            }
        }
    }
}
