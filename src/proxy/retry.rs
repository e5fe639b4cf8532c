//! The retry rule of DESIGN.md §4: when a failed attempt may be sent to another member.

use http::{HeaderMap, Method};

/// How far an attempt got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing reached the member (connect refused or timed out, member busy, a pooled
    /// connection found closed before the request was written).
    NotSent,
    /// The request was (perhaps partly) written, and no response header came back.
    AfterWrite,
}

/// Methods that can be sent twice without a second effect (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a request whose attempt failed may be resent to another member.
/// `replayable` says whether the body can be sent again.
pub fn may_retry(
    failure: Failure,
    method: &Method,
    headers: &HeaderMap,
    retry_idempotency_key: bool,
    replayable: bool,
) -> bool {
    match failure {
        Failure::NotSent => true,
        Failure::AfterWrite => {
            replayable
                && (is_idempotent(method)
                    || (retry_idempotency_key && headers.contains_key("idempotency-key")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_is_resent_only_when_nothing_was_sent() {
        let h = HeaderMap::new();
        assert!(may_retry(Failure::NotSent, &Method::POST, &h, false, false));
        assert!(!may_retry(
            Failure::AfterWrite,
            &Method::POST,
            &h,
            true,
            true
        ));
        assert!(may_retry(
            Failure::AfterWrite,
            &Method::GET,
            &h,
            false,
            true
        ));
        assert!(!may_retry(
            Failure::AfterWrite,
            &Method::GET,
            &h,
            false,
            false
        ));
        assert!(!may_retry(
            Failure::AfterWrite,
            &Method::PATCH,
            &h,
            false,
            true
        ));
    }

    #[test]
    fn idempotency_key_makes_post_resendable_when_allowed() {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", "k1".parse().unwrap());
        assert!(may_retry(
            Failure::AfterWrite,
            &Method::POST,
            &h,
            true,
            true
        ));
        assert!(!may_retry(
            Failure::AfterWrite,
            &Method::POST,
            &h,
            false,
            true
        ));
        assert!(!may_retry(
            Failure::AfterWrite,
            &Method::POST,
            &h,
            true,
            false
        ));
    }
}
