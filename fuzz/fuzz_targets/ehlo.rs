//! EHLO parsing: any reply text never panics, and keywords are case-insensitive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipemail::engine::{Capabilities, Reply};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let reply = Reply {
        code: 250,
        enhanced: None,
        lines: lines.clone(),
    };
    let caps = Capabilities::from_ehlo(&reply);
    let upper = Reply {
        code: 250,
        enhanced: None,
        lines: lines.iter().map(|l| l.to_ascii_uppercase()).collect(),
    };
    let caps_upper = Capabilities::from_ehlo(&upper);
    assert_eq!(caps.extensions, caps_upper.extensions);
    assert_eq!(caps.size, caps_upper.size);
    assert_eq!(caps.auth, caps_upper.auth);
});
