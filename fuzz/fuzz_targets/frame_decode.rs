//! The peer-link frame decoder on arbitrary bytes: never panics, never allocates past the input,
//! and whatever it accepts re-encodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::session::replicated::frame::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode(data) {
        let bytes = encode(&frame);
        assert_eq!(decode(&bytes[4..]).as_ref(), Ok(&frame));
    }
});
