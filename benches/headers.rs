//! Header rewriting per request: `cargo bench --bench headers`.
//!
//! The input is a typical browser request (12 headers with a Cookie and `Connection:
//! keep-alive`); it is cloned outside the timed part, so only `rewrite_request` and the writing of the lines
//! it adds are measured.
//! A trusted client is a front load balancer: its request also carries `X-Forwarded-For` and
//! `X-Forwarded-Proto`, which are appended to / kept.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{self, HeaderMap, HeaderValue};
use tether::config::IpNet;
use tether::proxy::headers::{rewrite_request, ClientConn};

fn browser_request() -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |name: header::HeaderName, value: &'static str| {
        h.append(name, HeaderValue::from_static(value));
    };
    add(header::HOST, "shop.example.com:8080");
    add(
        header::USER_AGENT,
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    );
    add(
        header::ACCEPT,
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    );
    add(header::ACCEPT_LANGUAGE, "en-US,en;q=0.5");
    add(header::ACCEPT_ENCODING, "gzip, deflate, br, zstd");
    add(header::REFERER, "http://shop.example.com:8080/shop/cart");
    add(
        header::COOKIE,
        "_ga=GA1.2.1234567890.1700000000; lang=en-US; \
         JSESSIONID=0000A2MB4IJozU_VM8IffsMNfdR:c2:c1; theme=dark",
    );
    add(header::CONNECTION, "keep-alive");
    add(header::UPGRADE_INSECURE_REQUESTS, "1");
    add(
        header::HeaderName::from_static("sec-fetch-dest"),
        "document",
    );
    add(
        header::HeaderName::from_static("sec-fetch-mode"),
        "navigate",
    );
    add(header::HeaderName::from_static("priority"), "u=0, i");
    h
}

fn bench_rewrite(c: &mut Criterion) {
    let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let client: SocketAddr = "10.1.2.3:51234".parse().unwrap();
    let trusted_nets = [IpNet {
        addr: "10.0.0.0".parse().unwrap(),
        prefix: 8,
    }];
    let untrusted = ClientConn::new(client, local, &[]);
    let trusted = ClientConn::new(client, local, &trusted_nets);
    assert!(trusted.trusted && !untrusted.trusted);

    let plain = browser_request();
    let mut forwarded = browser_request();
    forwarded.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
    forwarded.insert("x-forwarded-proto", HeaderValue::from_static("https"));

    let mut group = c.benchmark_group("rewrite_request");
    for (name, conn, input) in [
        ("untrusted", &untrusted, &plain),
        ("trusted", &trusted, &forwarded),
    ] {
        let host = input.get(header::HOST).cloned();
        for websphere in [false, true] {
            let id = format!("{name}/websphere={websphere}");
            group.bench_function(id, |b| {
                b.iter_batched(
                    || input.clone(),
                    |mut headers| {
                        let added = rewrite_request(
                            &mut headers,
                            black_box(conn),
                            host.as_ref(),
                            websphere,
                        );
                        // The added headers are written with the head; the lines are the cost.
                        let mut lines = Vec::with_capacity(256);
                        added.write_to(&mut lines);
                        (headers, lines)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_rewrite);
criterion_main!(benches);
