//! Request-path costs of reading clone ids: `cargo bench --bench affinity`.

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use tether::affinity::{for_each_clone, parse, path_parameter};
use tether::config::{Affinity, IdFormat};

const SESSION_ID: &str = "0000A2MB4IJozU_VM8IffsMNfdR:v544d0o0:v544d0o1";

fn bench_parse(c: &mut Criterion) {
    c.bench_function("parse websphere id", |b| {
        b.iter(|| {
            let session = parse(black_box(SESSION_ID), IdFormat::WebSphere, b':');
            black_box(session.and_then(|s| s.clones().next()))
        })
    });
}

fn bench_for_each_clone(c: &mut Criterion) {
    let affinity = Affinity {
        format: IdFormat::WebSphere,
        cookies: vec!["JSESSIONID".into()],
        url_parameter: Some("jsessionid".into()),
        separator: b':',
        strict: false,
    };
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("app.example.com"));
    headers.insert(
        "accept",
        HeaderValue::from_static("text/html,application/xhtml+xml"),
    );
    headers.insert(
        COOKIE,
        HeaderValue::from_static(
            "_ga=GA1.2.1234567890.1700000000; lang=en-US; \
             JSESSIONID=0000A2MB4IJozU_VM8IffsMNfdR:v544d0o0:v544d0o1; \
             theme=dark; csrftoken=Zx9yQ2wLmN4pR7sT1uV3wX5yZ8aB0cD",
        ),
    );
    let path = "/shop/cart/items?page=2&sort=price";
    c.bench_function("for_each_clone cookie (5 cookies)", |b| {
        b.iter(|| {
            let mut first = None;
            for_each_clone(
                black_box(&affinity),
                black_box(path),
                black_box(&headers),
                |clone| {
                    first = Some(clone);
                    ControlFlow::Break(())
                },
            );
            black_box(first)
        })
    });
}

fn bench_path_parameter(c: &mut Criterion) {
    let path = "/shop/cart/items;jsessionid=0000A2MB4IJozU_VM8IffsMNfdR:v544d0o0?page=2&sort=price";
    c.bench_function("path_parameter jsessionid", |b| {
        b.iter(|| black_box(path_parameter(black_box(path), black_box("jsessionid"))))
    });
}

criterion_group!(
    benches,
    bench_parse,
    bench_for_each_clone,
    bench_path_parameter
);
criterion_main!(benches);
