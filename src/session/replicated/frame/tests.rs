//! Frame encoding and decoding: every frame round-trips, every truncation and lie is an error.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::session::Session;

fn session() -> Session {
    let mut s = Session::new("abc".into(), "c1", Duration::from_secs(60));
    s.version = 7;
    s.attributes
        .insert("count".into(), Bytes::from_static(b"41"));
    s.attributes
        .insert("blob".into(), Bytes::from(vec![0u8, 255, 10]));
    s
}

fn all_frames() -> Vec<Frame> {
    let mut set = BTreeMap::new();
    set.insert("k".to_owned(), Bytes::from_static(b"v"));
    vec![
        Frame::Hello {
            version: 1,
            clone_id: "c1".into(),
            nonce: [7; 32],
        },
        Frame::Challenge {
            version: 1,
            clone_id: "c2".into(),
            nonce: [1; 32],
            mac: [2; 32],
        },
        Frame::Auth { mac: [3; 32] },
        Frame::Accepted,
        Frame::Refused {
            reason: "nope".into(),
        },
        Frame::Put {
            req: 1,
            session: session(),
            expected: Some(6),
        },
        Frame::Put {
            req: 2,
            session: session(),
            expected: None,
        },
        Frame::Delta {
            req: 3,
            id: "abc".into(),
            version: 8,
            expected: 7,
            last_access_ms: 5,
            set,
            removed: vec!["x".into()],
        },
        Frame::Get {
            req: 4,
            id: "abc".into(),
        },
        Frame::Remove {
            req: 5,
            id: "abc".into(),
        },
        Frame::Touch {
            req: 6,
            id: "abc".into(),
            last_access_ms: 99,
        },
        Frame::Disown {
            req: 7,
            id: "abc".into(),
            version: 9,
        },
        Frame::Ping { req: 8 },
        Frame::Revert {
            req: 15,
            failed_version: 8,
            owner: "c2".into(),
            session: session(),
        },
        Frame::Ok { req: 9 },
        Frame::Conflict {
            req: 10,
            found: Some(3),
        },
        Frame::Found {
            req: 11,
            session: session(),
        },
        Frame::NotFound { req: 12 },
        Frame::Missing { req: 13 },
        Frame::Full { req: 14 },
    ]
}

#[test]
fn every_frame_round_trips() {
    for frame in all_frames() {
        let bytes = encode(&frame);
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(decode(&bytes[4..]), Ok(frame));
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for frame in all_frames() {
        let bytes = encode(&frame);
        for cut in 0..bytes.len() - 4 {
            assert!(
                decode(&bytes[4..4 + cut]).is_err(),
                "{frame:?} cut at {cut}"
            );
        }
        let mut long = bytes[4..].to_vec();
        long.push(0);
        assert_eq!(decode(&long), Err(FrameError::Trailing(1)));
    }
}

#[test]
fn lying_counts_and_bad_tags_are_errors() {
    // A Get whose id claims 4 GiB.
    let mut b = vec![12];
    b.extend_from_slice(&1u64.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(decode(&b), Err(FrameError::Truncated));
    assert_eq!(decode(&[99]), Err(FrameError::UnknownTag(99)));
    assert_eq!(
        decode(&[1, b'H', b'T', b'T', b'P']),
        Err(FrameError::BadMagic)
    );
    let mut bad_utf8 = vec![5];
    bad_utf8.extend_from_slice(&2u32.to_be_bytes());
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    assert_eq!(decode(&bad_utf8), Err(FrameError::NotUtf8));
}

#[tokio::test]
async fn read_frame_refuses_oversized_frames_before_reading_them() {
    let mut input: &[u8] = &[0, 0, 1, 0, 1, 2, 3];
    let err = read_frame(&mut input, 255).await.unwrap_err();
    assert!(err.to_string().contains("over the 255-byte limit"), "{err}");
    let frame = Frame::Ping { req: 5 };
    let bytes = encode(&frame);
    let mut input: &[u8] = &bytes;
    assert_eq!(read_frame(&mut input, 255).await.unwrap(), Some(frame));
    assert_eq!(read_frame(&mut input, 255).await.unwrap(), None);
}
