//! The Redis store against a real `redis-server`: two members writing one session at once get
//! exactly one Conflict (no silent overwrite), TTL expiry and touch, invalidation, hash-tagged
//! keys, and a retried save that is not mistaken for a conflict.

mod redis_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_support::*;
use tether::session::redis::{RedisConfig, RedisStore};
use tether::session::{now_ms, Changes, Session, SessionStore, StoreError};

fn store(clone: &str, server: &RedisServer) -> RedisStore {
    RedisStore::new(clone, RedisConfig::standalone(&server.url())).unwrap()
}

fn new_session(id: &str, inactive: Duration) -> (Session, Changes) {
    let mut s = Session::new(id.into(), "c1", inactive);
    s.version = 1;
    let mut changes = Changes::default();
    changes.set.insert("count".into(), Bytes::from_static(b"0"));
    changes.apply(&mut s.attributes);
    (s, changes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_writing_one_session_get_exactly_one_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path(), &[]);
    let a = Arc::new(store("c1", &server));
    let b = Arc::new(store("c2", &server));
    let (s, changes) = new_session("race0000000000000000000000000001", Duration::from_secs(60));
    a.save(&s, None, &changes).await.unwrap();
    // Creating it again is a conflict too.
    assert!(matches!(
        b.save(&s, None, &changes).await,
        Err(StoreError::Conflict { found: Some(1), .. })
    ));
    for round in 0..50u64 {
        // Both members load the same version, then write at the same time.
        let la = a.load(&s.id, &[]).await.unwrap().unwrap();
        let lb = b.load(&s.id, &[]).await.unwrap().unwrap();
        assert_eq!(la.version, lb.version);
        let (va, vb) = (format!("a{round}"), format!("b{round}"));
        let (ra, rb) = tokio::join!(write_count(&a, &la, &va), write_count(&b, &lb, &vb));
        let conflicts = [&ra, &rb]
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
            .count();
        assert_eq!(conflicts, 1, "round {round}: {ra:?} / {rb:?}");
        let winner = ra.or(rb).unwrap();
        let stored = a.load(&s.id, &[]).await.unwrap().unwrap();
        assert_eq!(stored.version, la.version + 1, "round {round}");
        assert_eq!(
            stored.attributes["count"], winner.attributes["count"],
            "round {round}: the stored value is the winner's, not overwritten"
        );
    }
    assert_eq!(
        a.stats()
            .conflicts
            .load(std::sync::atomic::Ordering::Relaxed)
            + b.stats()
                .conflicts
                .load(std::sync::atomic::Ordering::Relaxed),
        51
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_touch_invalidation_and_hash_tagged_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path(), &[]);
    let store = store("c1", &server);
    let inactive = Duration::from_millis(1500);
    let (short, changes) = new_session("ttl00000000000000000000000000001", inactive);
    let (kept, _) = new_session("ttl00000000000000000000000000002", inactive);
    store.save(&short, None, &changes).await.unwrap();
    store.save(&kept, None, &changes).await.unwrap();

    // One key per session, the id as hash tag, TTL = max inactive.
    let key = format!("tether:{{{}}}", short.id);
    assert_eq!(store.key(&short.id), key);
    assert_eq!(integer(&server.command(&format!("EXISTS {key}"))), 1);
    let pttl = integer(&server.command(&format!("PTTL {key}")));
    assert!((1..=1500).contains(&pttl), "PTTL {pttl}");
    assert_eq!(integer(&server.command("DBSIZE")), 2);

    // Touch `kept` every 300 ms; `short` is left alone and must expire (bounded poll).
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        store.touch(&kept.id, now_ms()).await.unwrap();
        if store.load(&short.id, &[]).await.unwrap().is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the untouched session never expired"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let alive = store.load(&kept.id, &[]).await.unwrap().unwrap();
    assert_eq!(alive.version, 1, "touch keeps the version");
    assert!(
        alive.last_access_ms > kept.last_access_ms,
        "touch moved the last access"
    );
    assert_eq!(alive.attributes["count"], Bytes::from_static(b"0"));

    // A save on the expired one conflicts (someone must not resurrect it from a stale copy).
    assert!(matches!(
        write_count(&store, &short, "1").await,
        Err(StoreError::Conflict { found: None, .. })
    ));

    // Invalidation deletes the key.
    store.remove(&kept.id).await.unwrap();
    assert!(store.load(&kept.id, &[]).await.unwrap().is_none());
    assert_eq!(integer(&server.command("DBSIZE")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_attributes_only_and_removals_reach_redis() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path(), &[]);
    let store = store("c1", &server);
    let mut s = Session::new(
        "attr0000000000000000000000000001".into(),
        "c1",
        Duration::from_secs(60),
    );
    s.version = 1;
    let mut first = Changes::default();
    first.set.insert("a".into(), Bytes::from_static(b"1"));
    first.set.insert("b".into(), Bytes::from_static(b"2"));
    first.apply(&mut s.attributes);
    store.save(&s, None, &first).await.unwrap();
    let mut second = Changes::default();
    second.removed.push("a".into());
    second
        .set
        .insert("c".into(), Bytes::from(vec![0u8, 255, 10]));
    let mut next = s.clone();
    next.version = 2;
    second.apply(&mut next.attributes);
    store.save(&next, Some(1), &second).await.unwrap();
    let loaded = store.load(&s.id, &[]).await.unwrap().unwrap();
    let expected: BTreeMap<String, Bytes> = [
        ("b".to_owned(), Bytes::from_static(b"2")),
        ("c".to_owned(), Bytes::from(vec![0u8, 255, 10])),
    ]
    .into();
    assert_eq!(loaded.attributes, expected);
    assert_eq!(loaded.version, 2);
}

#[test]
fn the_shipped_redis_member_config_parses() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/member-redis.toml");
    let c = tether::member::MemberConfig::load(&path).unwrap();
    assert_eq!(c.store, tether::member::StoreKind::Redis);
    assert_eq!(c.redis.unwrap().key_prefix, "tether:");
}
