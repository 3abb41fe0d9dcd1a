//! Reply parser: arbitrary bytes never panic, and feeding them in two pieces (split at a
//! point the input chooses) gives the same replies and the same error as feeding them whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipemail::engine::{Reply, ReplyParser};

fn parse(pieces: &[&[u8]]) -> (Vec<Reply>, bool) {
    let mut p = ReplyParser::new();
    let mut out = Vec::new();
    for piece in pieces {
        p.feed(piece);
        loop {
            match p.next_reply() {
                Ok(Some(r)) => out.push(r),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let whole = parse(&[rest]);
    let at = usize::from(cut) % (rest.len() + 1);
    let split = parse(&[&rest[..at], &rest[at..]]);
    if !whole.1 && !split.1 {
        assert_eq!(whole.0, split.0);
    }
});
