//! The kill -9 scenario of tests/session_failover.rs with `store = "redis"`: 100 sessions
//! through the real proxy, members as real `tether member` processes sharing one real
//! `redis-server`; `kill -9` the member serving the most sessions, every counter continues
//! exactly (no lost update, no lost session, no stale read); then kill a second one: still
//! nothing lost. With Redis every member reads the same store, so the cookie names only the
//! member that served the last request, and failover is the proxy's ordinary "next member".

mod redis_support;
mod session_support;

use redis_support::RedisServer;
use session_support::*;

const SESSIONS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twice_with_the_redis_store_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis"), &[]);
    let planned = tether::demo::plan(3).unwrap();
    let mut procs: Vec<Process> = (0..3)
        .map(|i| Process::spawn_store(&planned, i, &redis.url(), "sync", dir.path()))
        .collect();
    for p in &procs {
        wait_listening(p.addr).await;
    }
    let (proxy, _stop) = start_proxy(&planned).await;

    let mut clients = vec![Client::default(); SESSIONS];
    let mut expected = vec![0u64; SESSIONS];
    let mut ids = vec![None; SESSIONS];
    for _ in 0..3 {
        round(proxy, &mut clients, &mut expected, &mut ids).await;
    }
    for c in &clients {
        assert_eq!(
            c.clones().len(),
            1,
            "the serving member only: {:?}",
            c.cookie
        );
    }
    let s = stats(procs[0].addr).await;
    assert_eq!(s["store"], "redis", "{s}");

    let (victim, owned) = top_owner(&clients, &["c1", "c2", "c3"]);
    assert!(owned >= SESSIONS / 5, "{victim} serves only {owned}");
    let index = procs.iter().position(|p| p.clone_id == victim).unwrap();
    let mut dead = procs.remove(index);
    dead.kill9();
    for _ in 0..3 {
        round(proxy, &mut clients, &mut expected, &mut ids).await;
    }
    for c in &clients {
        assert!(
            !c.clones().contains(&victim),
            "{victim} is still named in {:?}",
            c.cookie
        );
    }

    let alive: Vec<&str> = procs.iter().map(|p| p.clone_id.as_str()).collect();
    let (victim2, _) = top_owner(&clients, &alive);
    let index = procs.iter().position(|p| p.clone_id == victim2).unwrap();
    procs.remove(index).kill9();
    for _ in 0..2 {
        round(proxy, &mut clients, &mut expected, &mut ids).await;
    }
    let last = stats(procs[0].addr).await;
    assert_eq!(last["unavailable"], 0, "{last}");
    // Every session is still in Redis, one key each.
    assert_eq!(
        redis_support::integer(&redis.command("DBSIZE")),
        SESSIONS as i64
    );
    drop(dead);
}
