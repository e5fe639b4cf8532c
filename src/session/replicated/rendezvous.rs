//! Rendezvous (highest random weight) hashing: every member ranks the candidates for a session
//! the same way, and a member leaving moves only the sessions it held.
//!
//! The hash is FNV-1a with a SplitMix64 finaliser: fixed, so every build ranks alike (std's
//! `DefaultHasher` does not promise a stable algorithm across Rust releases).

fn score(clone_id: &str, session_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in clone_id.bytes().chain([0xff]).chain(session_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The `n` best of `candidates` for `session_id`, best first.
pub fn top<'a>(
    session_id: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    n: usize,
) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = candidates
        .into_iter()
        .map(|c| (score(c, session_id), c))
        .collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    ranked.into_iter().take(n).map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_deterministic_and_spread() {
        let members = ["c1", "c2", "c3", "c4"];
        let mut first = std::collections::HashMap::new();
        for i in 0..4000 {
            let id = format!("{i:032x}");
            let a = top(&id, members, 2);
            assert_eq!(
                a,
                top(&id, members.iter().rev().copied(), 2),
                "order of input does not matter"
            );
            *first.entry(a[0]).or_insert(0) += 1;
        }
        for m in members {
            let n = first[m];
            assert!((700..1300).contains(&n), "{m} ranks first for {n} of 4000");
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_sessions() {
        let all = ["c1", "c2", "c3", "c4"];
        let without = ["c1", "c2", "c4"];
        for i in 0..1000 {
            let id = format!("{i:032x}");
            let before = top(&id, all, 1)[0];
            let after = top(&id, without, 1)[0];
            if before != "c3" {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn two_takers_always_share_a_holder() {
        // Members A and B each pick the top N of the same live list without themselves.
        let live = ["c1", "c2", "c3", "c4", "c5"];
        for i in 0..500 {
            let id = format!("{i:032x}");
            for n in 1..4 {
                let a = top(&id, live.iter().copied().filter(|c| *c != "c1"), n);
                let b = top(&id, live.iter().copied().filter(|c| *c != "c2"), n);
                // Someone sees both writes: one taker is the other's holder, or a holder is shared.
                let seen =
                    a.contains(&"c2") || b.contains(&"c1") || a.iter().any(|x| b.contains(x));
                assert!(seen, "{id} n={n}: {a:?} {b:?}");
            }
        }
    }
}
