//! The peer-link handshake: protocol version first, then mutual HMAC-SHA256 challenge–response
//! over a shared secret. Neither side ever sends the secret; each proves it by MACing both fresh
//! nonces and both clone ids, so a recorded handshake cannot be replayed.
//!
//! ```text
//! dialer → Hello { version, clone_id, nonce_d }
//! listener: wrong version → Refused (logged on both sides)
//! listener → Challenge { version, clone_id, nonce_l, mac_l = HMAC(s, "L"|nonce_d|nonce_l|ids) }
//! dialer: checks mac_l, else closes ("peer failed authentication")
//! dialer → Auth { mac_d = HMAC(s, "D"|nonce_d|nonce_l|ids) }
//! listener: checks mac_d → Accepted, else Refused
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{read_frame, write_frame, Frame, MAC_LEN, NONCE_LEN, PROTOCOL_VERSION};

/// Handshake frames are small; this bounds them before authentication.
const HANDSHAKE_MAX_FRAME: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer refused the link: {0}")]
    Refused(String),
    #[error("peer speaks protocol version {theirs}, this member speaks {ours}")]
    Version { theirs: u16, ours: u16 },
    #[error("peer failed authentication (wrong shared secret?)")]
    Auth,
    #[error("peer is {actual:?}, expected {expected:?}")]
    WrongPeer { expected: String, actual: String },
    #[error("unexpected frame during the handshake")]
    Protocol,
    #[error("peer closed the link during the handshake")]
    Closed,
    #[error("no OS randomness for the handshake nonce")]
    Random,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn keyed(secret: &[u8], role: &[u8], a: &[u8], b: &[u8], ids: [&str; 2]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"tether-peer-v1/");
    m.update(role);
    m.update(a);
    m.update(b);
    for id in ids {
        m.update(&u32::try_from(id.len()).unwrap_or(u32::MAX).to_be_bytes());
        m.update(id.as_bytes());
    }
    m
}

fn mac(secret: &[u8], role: &[u8], a: &[u8], b: &[u8], ids: [&str; 2]) -> [u8; MAC_LEN] {
    keyed(secret, role, a, b, ids)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time comparison (`verify_slice`).
fn verify(secret: &[u8], role: &[u8], a: &[u8], b: &[u8], ids: [&str; 2], got: &[u8]) -> bool {
    keyed(secret, role, a, b, ids).verify_slice(got).is_ok()
}

fn nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut n = [0; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|_| HandshakeError::Random)?;
    Ok(n)
}

async fn next<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Frame, HandshakeError> {
    read_frame(stream, HANDSHAKE_MAX_FRAME)
        .await?
        .ok_or(HandshakeError::Closed)
}

/// The dialing side. `version` is [`PROTOCOL_VERSION`] except in tests of refusal.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    me: &str,
    expected_peer: &str,
    version: u16,
) -> Result<(), HandshakeError> {
    let nonce_d = nonce()?;
    write_frame(
        stream,
        &Frame::Hello {
            version,
            clone_id: me.to_owned(),
            nonce: nonce_d,
        },
    )
    .await?;
    let (theirs, peer, nonce_l, mac_l) = match next(stream).await? {
        Frame::Challenge {
            version,
            clone_id,
            nonce,
            mac,
        } => (version, clone_id, nonce, mac),
        Frame::Refused { reason } => return Err(HandshakeError::Refused(reason)),
        _ => return Err(HandshakeError::Protocol),
    };
    if theirs != version {
        return Err(HandshakeError::Version {
            theirs,
            ours: version,
        });
    }
    if !verify(secret, b"L", &nonce_d, &nonce_l, [&peer, me], &mac_l) {
        return Err(HandshakeError::Auth);
    }
    if peer != expected_peer {
        return Err(HandshakeError::WrongPeer {
            expected: expected_peer.to_owned(),
            actual: peer,
        });
    }
    let mac_d = mac(secret, b"D", &nonce_d, &nonce_l, [me, &peer]);
    write_frame(stream, &Frame::Auth { mac: mac_d }).await?;
    match next(stream).await? {
        Frame::Accepted => Ok(()),
        Frame::Refused { reason } => Err(HandshakeError::Refused(reason)),
        _ => Err(HandshakeError::Protocol),
    }
}

/// The listening side; returns the authenticated peer's clone id. Refusals are sent to the peer
/// (so both sides log a clear line) before the error is returned.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    me: &str,
    version: u16,
) -> Result<String, HandshakeError> {
    let (theirs, peer, nonce_d) = match next(stream).await? {
        Frame::Hello {
            version,
            clone_id,
            nonce,
        } => (version, clone_id, nonce),
        _ => return Err(HandshakeError::Protocol),
    };
    if theirs != version {
        let reason =
            format!("protocol version {theirs} is not supported; this member speaks {version}");
        write_frame(stream, &Frame::Refused { reason }).await?;
        return Err(HandshakeError::Version {
            theirs,
            ours: version,
        });
    }
    let nonce_l = nonce()?;
    let mac_l = mac(secret, b"L", &nonce_d, &nonce_l, [me, &peer]);
    write_frame(
        stream,
        &Frame::Challenge {
            version,
            clone_id: me.to_owned(),
            nonce: nonce_l,
            mac: mac_l,
        },
    )
    .await?;
    let mac_d = match next(stream).await? {
        Frame::Auth { mac } => mac,
        _ => return Err(HandshakeError::Protocol),
    };
    if !verify(secret, b"D", &nonce_d, &nonce_l, [&peer, me], &mac_d) {
        let reason = "authentication failed (wrong shared secret?)".to_owned();
        write_frame(stream, &Frame::Refused { reason }).await?;
        return Err(HandshakeError::Auth);
    }
    write_frame(stream, &Frame::Accepted).await?;
    Ok(peer)
}

/// The version this build speaks (re-exported for the member and tests).
pub const VERSION: u16 = PROTOCOL_VERSION;

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(
        dial_secret: &'static [u8],
        accept_secret: &'static [u8],
        dial_version: u16,
    ) -> (Result<(), HandshakeError>, Result<String, HandshakeError>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let accepting =
            tokio::spawn(async move { accept(&mut b, accept_secret, "c2", VERSION).await });
        let dialed = dial(&mut a, dial_secret, "c1", "c2", dial_version).await;
        drop(a);
        (dialed, accepting.await.unwrap())
    }

    #[tokio::test]
    async fn same_secret_and_version_is_accepted_both_ways() {
        let (d, a) = run(b"s3cret", b"s3cret", VERSION).await;
        d.unwrap();
        assert_eq!(a.unwrap(), "c1");
    }

    #[tokio::test]
    async fn wrong_secret_is_refused_on_both_sides() {
        let (d, a) = run(b"wrong", b"s3cret", VERSION).await;
        assert!(matches!(d, Err(HandshakeError::Auth)), "{d:?}");
        assert!(a.is_err(), "{a:?}");
    }

    #[tokio::test]
    async fn other_protocol_version_is_refused_with_a_reason() {
        let (d, a) = run(b"s3cret", b"s3cret", VERSION + 1).await;
        match d {
            Err(HandshakeError::Refused(reason)) => {
                assert!(reason.contains("protocol version 2"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(a, Err(HandshakeError::Version { theirs: 2, ours: 1 })),
            "{a:?}"
        );
    }

    #[tokio::test]
    async fn a_non_peer_is_refused_without_panicking() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let accepting = tokio::spawn(async move { accept(&mut b, b"x", "c2", VERSION).await });
        tokio::io::AsyncWriteExt::write_all(&mut a, b"\0\0\0\x10GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        drop(a);
        assert!(accepting.await.unwrap().is_err());
    }
}
