//! Failover and retry (issue 2, "Failover and retry"; DESIGN.md §4) against members that
//! misbehave on purpose. The session cookie names the misbehaving member (clone `c1`) so it is
//! always tried first; the other members prove what was (not) retried by what they recorded.

mod support;

use support::*;

const TO_C1: &str = "JSESSIONID=0000abcdefgh:c1";

/// Sum of recorded requests over `backends`.
fn total(backends: &[&Backend]) -> usize {
    backends.iter().map(|b| b.request_count()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_get_goes_to_the_next_member() {
    let dead = Backend::closed("dead");
    let live = Backend::start("live", Behavior::Normal).await;
    let text = config(
        "",
        "",
        "",
        &[member(&dead, "c1", ""), member(&live, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    let r = get(proxy.addr, "/", &[("cookie", TO_C1)]).await;
    assert_eq!((r.status, r.member()), (200, "live"), "{}", r.text());
    assert_eq!(live.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_post_goes_to_the_next_member_body_exactly_once() {
    let dead = Backend::closed("dead");
    let a = Backend::start("a", Behavior::Normal).await;
    let b = Backend::start("b", Behavior::Normal).await;
    let text = config(
        "",
        "",
        "",
        &[
            member(&dead, "c1", ""),
            member(&a, "c2", ""),
            member(&b, "c3", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    let body = pattern(20_000);
    let r = send(
        proxy.addr,
        "POST",
        "/submit",
        &[("cookie", TO_C1)],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(["a", "b"].contains(&r.member()));

    let seen: Vec<Recorded> = a.requests().into_iter().chain(b.requests()).collect();
    assert_eq!(seen.len(), 1, "the POST reaches exactly one member");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].body.as_ref(),
        Some(&body),
        "the body arrives intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_request_get_is_retried_on_another_member() {
    let reset = Backend::start("reset", Behavior::ResetAfterRequest).await;
    let ok = Backend::start("ok", Behavior::Normal).await;
    let text = config(
        "",
        "",
        "",
        &[member(&reset, "c1", ""), member(&ok, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    let r = get(proxy.addr, "/page", &[("cookie", TO_C1)]).await;
    assert_eq!((r.status, r.member()), (200, "ok"), "{}", r.text());
    assert_eq!(
        reset.request_count(),
        1,
        "the first attempt reached the resetting member"
    );
    assert_eq!(ok.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_request_post_is_not_retried() {
    let reset = Backend::start("reset", Behavior::ResetAfterRequest).await;
    let ok = Backend::start("ok", Behavior::Normal).await;
    let text = config(
        "",
        "",
        "",
        &[member(&reset, "c1", ""), member(&ok, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    let r = send(
        proxy.addr,
        "POST",
        "/pay",
        &[("cookie", TO_C1)],
        "amount=100",
    )
    .await;
    assert_plain_error(&r, 502);
    assert_eq!(reset.request_count(), 1, "the POST reached the member once");
    assert_eq!(ok.request_count(), 0, "a POST is never sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_idempotency_key_is_retried_when_the_cluster_allows_it() {
    let reset = Backend::start("reset", Behavior::ResetAfterRequest).await;
    let ok = Backend::start("ok", Behavior::Normal).await;
    let text = config(
        "",
        "retry_idempotency_key = true",
        "",
        &[member(&reset, "c1", ""), member(&ok, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    let r = send(
        proxy.addr,
        "POST",
        "/pay",
        &[("cookie", TO_C1), ("idempotency-key", "k-1")],
        "amount=100",
    )
    .await;
    assert_eq!((r.status, r.member()), (200, "ok"), "{}", r.text());
    assert_eq!(reset.request_count(), 1);
    let seen = ok.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.as_deref(), Some(&b"amount=100"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_idempotency_key_is_not_retried_when_the_cluster_forbids_it() {
    let reset = Backend::start("reset", Behavior::ResetAfterRequest).await;
    let ok = Backend::start("ok", Behavior::Normal).await;
    let text = config(
        "",
        "retry_idempotency_key = false",
        "",
        &[member(&reset, "c1", ""), member(&ok, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    let r = send(
        proxy.addr,
        "POST",
        "/pay",
        &[("cookie", TO_C1), ("idempotency-key", "k-1")],
        "amount=100",
    )
    .await;
    assert_plain_error(&r, 502);
    assert_eq!(reset.request_count(), 1);
    assert_eq!(ok.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_header_within_io_timeout_get_is_retried_elsewhere() {
    let hang = Backend::start("hang", Behavior::NoResponse).await;
    let ok = Backend::start("ok", Behavior::Normal).await;
    let text = config(
        "",
        "",
        "",
        &[
            member(&hang, "c1", "io_timeout = \"300ms\""),
            member(&ok, "c2", "io_timeout = \"300ms\""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    let r = get(proxy.addr, "/", &[("cookie", TO_C1)]).await;
    assert_eq!((r.status, r.member()), (200, "ok"), "{}", r.text());
    assert_eq!(hang.request_count(), 1);
    assert_eq!(ok.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_header_within_io_timeout_post_is_504() {
    let hang = Backend::start("hang", Behavior::NoResponse).await;
    let ok = Backend::start("ok", Behavior::Normal).await;
    let text = config(
        "",
        "",
        "",
        &[
            member(&hang, "c1", "io_timeout = \"300ms\""),
            member(&ok, "c2", "io_timeout = \"300ms\""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    let r = send(proxy.addr, "POST", "/order", &[("cookie", TO_C1)], "item=1").await;
    assert_plain_error(&r, 504);
    assert_eq!(hang.request_count(), 1);
    assert_eq!(ok.request_count(), 0, "a POST is never sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_dying_mid_response_aborts_the_client_response_without_retry() {
    let dying = Backend::start("dying", Behavior::DieMidResponse).await;
    let ok = Backend::start("ok", Behavior::Normal).await;
    let text = config(
        "",
        "",
        "",
        &[member(&dying, "c1", ""), member(&ok, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    // try_send bounds the whole exchange by CALL_TIMEOUT: a hang is an Err naming the timeout.
    let result = try_send(
        proxy.addr,
        "GET",
        "/big",
        &[("cookie", TO_C1)],
        ReqBody::Empty,
    )
    .await;
    match result {
        Err(e) => assert!(
            !e.contains("within"),
            "the client must see the abort promptly, not hang: {e}"
        ),
        Ok(r) => panic!(
            "the client must see an aborted response, got a complete {} with {} body bytes",
            r.status,
            r.body.len()
        ),
    }
    assert_eq!(dying.request_count(), 1);
    assert_eq!(
        ok.request_count(),
        0,
        "once a response has started it is never retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_larger_than_post_buffer_still_fails_over_on_connect_refused() {
    let dead = Backend::closed("dead");
    let ok = Backend::start("ok", Behavior::Normal).await;
    let text = config(
        "",
        "post_buffer_size = \"64KiB\"",
        "",
        &[member(&dead, "c1", ""), member(&ok, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    let len = 1024 * 1024;
    let r = send(
        proxy.addr,
        "POST",
        "/upload",
        &[("cookie", TO_C1)],
        ReqBody::Pattern(len),
    )
    .await;
    assert_eq!((r.status, r.member()), (200, "ok"), "{}", r.text());
    let seen = ok.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].complete);
    assert_eq!(
        (seen[0].body_len, seen[0].body_checksum),
        pattern_checksum(len),
        "the 1 MiB body arrives intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_bounds_the_members_tried() {
    let r1 = Backend::start("r1", Behavior::ResetAfterRequest).await;
    let r2 = Backend::start("r2", Behavior::ResetAfterRequest).await;
    let r3 = Backend::start("r3", Behavior::ResetAfterRequest).await;
    let text = config(
        "",
        "max_attempts = 2",
        "",
        &[
            member(&r1, "c1", ""),
            member(&r2, "c2", ""),
            member(&r3, "c3", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    let r = get(proxy.addr, "/", &[]).await;
    assert_plain_error(&r, 502);
    assert_eq!(
        total(&[&r1, &r2, &r3]),
        2,
        "exactly max_attempts members tried"
    );
    for b in [&r1, &r2, &r3] {
        assert!(b.request_count() <= 1, "{} tried twice", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_member_is_tried_twice_for_one_request() {
    let r1 = Backend::start("r1", Behavior::ResetAfterRequest).await;
    let r2 = Backend::start("r2", Behavior::ResetAfterRequest).await;
    let r3 = Backend::start("r3", Behavior::ResetAfterRequest).await;
    let text = config(
        "",
        "max_attempts = 6",
        "",
        &[
            member(&r1, "c1", ""),
            member(&r2, "c2", ""),
            member(&r3, "c3", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    // The cookie names c1 twice and c2: still each member at most once.
    let r = get(
        proxy.addr,
        "/",
        &[("cookie", "JSESSIONID=0000abcdefgh:c1:c2:c1")],
    )
    .await;
    assert_plain_error(&r, 502);
    for b in [&r1, &r2, &r3] {
        assert_eq!(
            b.request_count(),
            1,
            "{} must be tried exactly once",
            b.name
        );
    }
}
