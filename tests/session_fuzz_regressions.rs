//! Replays the kept fuzz inputs (fuzz/regressions/frame_decode) through the frame decoder, the
//! way the fuzz target does, so every input that once mattered stays covered by `cargo test`.

use tether::session::replicated::frame::{decode, encode};

#[test]
fn kept_fuzz_inputs_decode_without_panicking_and_round_trip() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/frame_decode");
    let (mut seen, mut valid) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok(frame) = decode(&data) {
            valid += 1;
            let bytes = encode(&frame);
            assert_eq!(decode(&bytes[4..]).as_ref(), Ok(&frame));
        }
        seen += 1;
    }
    assert!(
        valid >= 3,
        "the valid seed frames no longer decode: format drift?"
    );
    assert!(
        seen >= 5,
        "regression inputs missing from {}",
        dir.display()
    );
}
