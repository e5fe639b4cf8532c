//! Member selection per request, with 3 and with 1,000 members: `cargo bench --bench select`.
//!
//! Each group takes the member count as its parameter; the per-op cost must be flat from 3 to
//! 1,000 (issue 5). The balancer is built outside the timed loop; `now` is a fixed clock value
//! (every member is up), so no runtime is needed.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tether::balance::{Balancer, Clones, Tried};
use tether::config::{Affinity, Cluster, IdFormat, LoadBalance, Member, Role};
use tether::upstream::PoolSettings;

const SIZES: [usize; 2] = [3, 1_000];
const NOW: u64 = 1;

fn cluster(members: usize, load_balance: LoadBalance) -> Cluster {
    Cluster {
        name: "app".into(),
        load_balance,
        retry_interval: Duration::from_secs(60),
        max_attempts: 3,
        post_buffer_size: 64 << 10,
        retry_idempotency_key: true,
        virtual_address: None,
        mark_down_on_timeout: false,
        affinity: Affinity {
            format: IdFormat::WebSphere,
            cookies: vec!["JSESSIONID".into()],
            url_parameter: Some("jsessionid".into()),
            separator: b':',
            strict: false,
        },
        members: (0..members)
            .map(|i| Member {
                name: format!("m{i}").into(),
                clone_id: format!("c{i}").into(),
                address: SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000 + i as u16)),
                weight: 1,
                role: Role::Primary,
                connect_timeout: Duration::from_secs(5),
                io_timeout: Duration::from_secs(60),
                max_connections: 0,
            })
            .collect(),
    }
}

fn balancer(members: usize, load_balance: LoadBalance) -> Balancer {
    let pool = PoolSettings {
        idle_timeout: Duration::from_secs(60),
        max_idle: 256,
    };
    Balancer::new(&cluster(members, load_balance), &pool)
}

/// (a) A sessionless request: round robin with no clone ids and nothing tried yet.
fn bench_round_robin(c: &mut Criterion) {
    let mut group = c.benchmark_group("select/sessionless round_robin");
    for n in SIZES {
        let balancer = balancer(n, LoadBalance::RoundRobin);
        let (clones, tried) = (Clones::default(), Tried::default());
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(balancer.next_candidate(black_box(&clones), &tried, NOW)))
        });
    }
    group.finish();
}

/// (b) A sessional request: the cookie's clone id looked up, pushed, then the owner taken.
/// The clone named is the last member, so a scan would show up as growth.
fn bench_sessional(c: &mut Criterion) {
    let mut group = c.benchmark_group("select/sessional clone lookup + owner");
    for n in SIZES {
        let balancer = balancer(n, LoadBalance::RoundRobin);
        let clone_id = format!("c{}", n - 1);
        let tried = Tried::default();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let mut clones = Clones::default();
                if let Some(id) = balancer.member_by_clone(black_box(&clone_id)) {
                    clones.push(id);
                }
                black_box(balancer.next_candidate(&clones, &tried, NOW))
            })
        });
    }
    group.finish();
}

/// (c) A sessionless request under `least_requests` (power of two choices).
fn bench_least_requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("select/sessionless least_requests");
    for n in SIZES {
        let balancer = balancer(n, LoadBalance::LeastRequests);
        let (clones, tried) = (Clones::default(), Tried::default());
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(balancer.next_candidate(black_box(&clones), &tried, NOW)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_round_robin,
    bench_sessional,
    bench_least_requests
);
criterion_main!(benches);
