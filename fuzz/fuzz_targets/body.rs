//! Body encoding: DATA encoding round-trips to the normalized body, holds no end-of-data
//! look-alike but the final one, and no bare CR or LF; the BDAT count is exact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipemail::engine::body::{decode_data, encode_bdat_into, encode_data_into, normalize_into};

fuzz_target!(|data: &[u8]| {
    let mut enc = Vec::new();
    encode_data_into(data, &mut enc);
    let mut norm = Vec::new();
    normalize_into(data, &mut norm);
    assert_eq!(decode_data(&enc).as_deref(), Some(&norm[..]));
    let ends: Vec<usize> = enc
        .windows(5)
        .enumerate()
        .filter(|(_, w)| *w == b"\r\n.\r\n")
        .map(|(i, _)| i)
        .collect();
    if enc != b".\r\n" {
        assert_eq!(ends, [enc.len() - 5]);
    }
    for (i, &b) in enc.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(enc.get(i + 1), Some(&b'\n'));
        }
        if b == b'\n' {
            assert!(i > 0 && enc[i - 1] == b'\r');
        }
    }
    let mut bdat = Vec::new();
    let n = encode_bdat_into(data, &mut bdat);
    let header = format!("BDAT {n} LAST\r\n");
    assert!(bdat.starts_with(header.as_bytes()));
    assert_eq!(&bdat[header.len()..], &norm[..]);
});
