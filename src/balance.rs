//! Member selection: per-member state in atomics, and the candidate order of DESIGN.md §3 —
//! the clone ids of the session cookie first, then the virtual address, then balanced primaries,
//! then backups in list order.
//!
//! Nothing here takes a lock or allocates per request. Smooth weighted round robin is precomputed
//! into a schedule (its period is the sum of the weights) that an atomic counter walks, so the
//! choice is exact (3:1:0 gives 300/100/0 over 400 requests) and costs the same for 3 members
//! as for 1,000.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::config::{Cluster, LoadBalance, Member, Role, MAX_ATTEMPTS_LIMIT};
use crate::upstream::Upstream;

/// Milliseconds on the proxy's clock (tokio's, so tests can pause it).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            base: tokio::time::Instant::now(),
        }
    }

    /// Never 0: 0 means "up" in [`Target::down_until`].
    pub fn now_ms(&self) -> u64 {
        self.ms_at(tokio::time::Instant::now())
    }

    /// [`Clock::now_ms`] for an instant already read.
    pub fn ms_at(&self, at: tokio::time::Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64 + 1
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Something a request can be sent to: a member, or a cluster's virtual address.
pub struct Target {
    pub name: Box<str>,
    /// Empty for the virtual address.
    pub clone_id: Box<str>,
    pub upstream: Upstream,
    pub io_timeout: Duration,
    /// 0 = up; otherwise the clock time until which it is marked down (or being probed).
    down_until: AtomicU64,
    /// Requests in flight, for `least_requests`.
    outstanding: AtomicU32,
}

impl Target {
    fn new(name: &str, clone_id: &str, upstream: Upstream, io_timeout: Duration) -> Target {
        Target {
            name: name.into(),
            clone_id: clone_id.into(),
            upstream,
            io_timeout,
            down_until: AtomicU64::new(0),
            outstanding: AtomicU32::new(0),
        }
    }

    pub fn is_down(&self, now: u64) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until != 0 && until > now
    }

    /// Whether a request may use this target now. A target whose mark-down has expired is
    /// claimed by exactly one request (the probe); the others keep seeing it down until the
    /// probe marks it up or down again.
    fn try_take(&self, now: u64, retry_interval: u64) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if until > now {
            return false;
        }
        self.down_until
            .compare_exchange(
                until,
                now + retry_interval,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    pub fn mark_down(&self, now: u64, retry_interval: Duration) {
        let until = now + retry_interval.as_millis() as u64;
        if self.down_until.swap(until, Ordering::AcqRel) == 0 {
            tracing::warn!(member = %self.name, addr = %self.upstream.addr(), ?retry_interval, "member marked down");
        }
    }

    pub fn mark_up(&self) {
        if self.down_until.load(Ordering::Relaxed) != 0
            && self.down_until.swap(0, Ordering::AcqRel) != 0
        {
            tracing::info!(member = %self.name, "member is up again");
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// RAII count of a request in flight on a target.
pub struct InFlight(Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a candidate came from, for the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// Sessionless request.
    None,
    /// Sent to the owner (first live clone id in the cookie).
    Hit,
    /// Sessional request sent elsewhere than its owner.
    Failover,
}

impl Affinity {
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::None => "none",
            Affinity::Hit => "hit",
            Affinity::Failover => "failover",
        }
    }
}

/// Index of a target in a cluster: members by position, the virtual address after them.
pub type TargetId = u16;

/// The clone ids a request carries, resolved to member indices, deduplicated, in cookie order.
#[derive(Default)]
pub struct Clones {
    ids: [TargetId; 8],
    len: u8,
}

impl Clones {
    pub fn push(&mut self, id: TargetId) -> bool {
        if self.ids[..self.len as usize].contains(&id) {
            return true;
        }
        if (self.len as usize) < self.ids.len() {
            self.ids[self.len as usize] = id;
            self.len += 1;
        }
        (self.len as usize) < self.ids.len()
    }

    pub fn as_slice(&self) -> &[TargetId] {
        &self.ids[..self.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What one request has tried so far.
#[derive(Default)]
pub struct Tried {
    ids: [TargetId; MAX_ATTEMPTS_LIMIT as usize],
    len: u8,
}

impl Tried {
    pub fn contains(&self, id: TargetId) -> bool {
        self.ids[..self.len as usize].contains(&id)
    }

    pub fn add(&mut self, id: TargetId) {
        if !self.contains(id) && (self.len as usize) < self.ids.len() {
            self.ids[self.len as usize] = id;
            self.len += 1;
        }
    }

    /// Forgets the last try of `id`: nothing was sent to it (its pooled connection was not ready).
    pub fn forget(&mut self, id: TargetId) {
        if let Some(i) = self.ids[..self.len as usize].iter().position(|&t| t == id) {
            self.ids.copy_within(i + 1..self.len as usize, i);
            self.len -= 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Why no candidate is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoCandidate {
    /// Strict affinity and the owner is down or failed.
    OwnerDown,
    /// Every member is down or was tried.
    Exhausted,
}

/// A cluster at run time: its config, its targets and the balancing state.
pub struct Balancer {
    pub config: Cluster,
    /// Members in config order, then the virtual address if any.
    targets: Box<[Arc<Target>]>,
    virtual_address: Option<TargetId>,
    clone_ids: FxHashMap<Box<str>, TargetId>,
    /// Smooth weighted round robin over primaries with weight > 0, one period long.
    schedule: Box<[TargetId]>,
    next: AtomicUsize,
    /// Primaries with weight > 0, for least_requests.
    weighted: Box<[TargetId]>,
    backups: Box<[TargetId]>,
    retry_interval_ms: u64,
}

impl Balancer {
    pub fn new(config: &Cluster, pool: &crate::upstream::PoolSettings) -> Balancer {
        let mut targets: Vec<Arc<Target>> = config
            .members
            .iter()
            .map(|m: &Member| {
                let upstream = Upstream::new(m.address, m.connect_timeout, m.max_connections, pool);
                Arc::new(Target::new(&m.name, &m.clone_id, upstream, m.io_timeout))
            })
            .collect();
        let virtual_address = config.virtual_address.map(|addr| {
            let io_timeout = config.members.iter().map(|m| m.io_timeout).max();
            let connect_timeout = config.members.iter().map(|m| m.connect_timeout).max();
            let upstream = Upstream::new(
                addr,
                connect_timeout.unwrap_or(Duration::from_secs(5)),
                0,
                pool,
            );
            let name = format!("{}/virtual", config.name);
            targets.push(Arc::new(Target::new(
                &name,
                "",
                upstream,
                io_timeout.unwrap_or(Duration::from_secs(60)),
            )));
            (targets.len() - 1) as TargetId
        });
        let clone_ids = config
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone_id.clone(), i as TargetId))
            .collect();
        let primaries: Vec<(TargetId, u32)> = config
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == Role::Primary && m.weight > 0)
            .map(|(i, m)| (i as TargetId, m.weight))
            .collect();
        let backups = config
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == Role::Backup)
            .map(|(i, _)| i as TargetId)
            .collect();
        Balancer {
            config: config.clone(),
            schedule: smooth_weighted_schedule(&primaries).into(),
            weighted: primaries.iter().map(|&(i, _)| i).collect(),
            targets: targets.into(),
            virtual_address,
            clone_ids,
            backups,
            next: AtomicUsize::new(0),
            retry_interval_ms: config.retry_interval.as_millis() as u64,
        }
    }

    pub fn target(&self, id: TargetId) -> &Arc<Target> {
        &self.targets[id as usize]
    }

    /// The member a clone id names, if any (borrowed lookup, no allocation).
    pub fn member_by_clone(&self, clone_id: &str) -> Option<TargetId> {
        self.clone_ids.get(clone_id).copied()
    }

    /// The next target for a request, or why there is none. A target returned here counts as
    /// taken: if its mark-down had expired, this request is its probe.
    pub fn next_candidate(
        &self,
        clones: &Clones,
        tried: &Tried,
        now: u64,
    ) -> Result<(TargetId, Affinity), NoCandidate> {
        let take = |id: TargetId| {
            !tried.contains(id) && self.targets[id as usize].try_take(now, self.retry_interval_ms)
        };
        if let Some(&owner) = clones.as_slice().first() {
            if self.config.affinity.strict {
                return if take(owner) {
                    Ok((owner, Affinity::Hit))
                } else {
                    Err(NoCandidate::OwnerDown)
                };
            }
            for (i, &id) in clones.as_slice().iter().enumerate() {
                if take(id) {
                    let outcome = if i == 0 {
                        Affinity::Hit
                    } else {
                        Affinity::Failover
                    };
                    return Ok((id, outcome));
                }
            }
        }
        let outcome = if clones.is_empty() {
            Affinity::None
        } else {
            Affinity::Failover
        };
        if let Some(va) = self.virtual_address {
            if take(va) {
                return Ok((va, outcome));
            }
        }
        if let Some(id) = self.balanced(&take) {
            return Ok((id, outcome));
        }
        match self.backups.iter().copied().find(|&id| take(id)) {
            Some(id) => Ok((id, outcome)),
            None => Err(NoCandidate::Exhausted),
        }
    }

    fn balanced(&self, take: &impl Fn(TargetId) -> bool) -> Option<TargetId> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        match self.config.load_balance {
            LoadBalance::RoundRobin | LoadBalance::Random => {
                let start = if self.config.load_balance == LoadBalance::RoundRobin {
                    self.next.fetch_add(1, Ordering::Relaxed) % len
                } else {
                    fastrand::usize(..len)
                };
                // Walk on from the scheduled slot: a down member's share goes to the members
                // that follow it in the schedule.
                (0..len)
                    .map(|k| self.schedule[(start + k) % len])
                    .find(|&id| take(id))
            }
            LoadBalance::LeastRequests => self.least_requests(take),
        }
    }

    /// Power of two choices on requests in flight (divided by weight).
    fn least_requests(&self, take: &impl Fn(TargetId) -> bool) -> Option<TargetId> {
        let n = self.weighted.len();
        let load = |id: TargetId| {
            let weight = self.config.members[id as usize].weight.max(1) as u64;
            (self.targets[id as usize].outstanding() as u64 * 1_000_000) / weight
        };
        if n >= 2 {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            let (first, second) = {
                let (x, y) = (self.weighted[a], self.weighted[b]);
                if load(y) < load(x) {
                    (y, x)
                } else {
                    (x, y)
                }
            };
            if take(first) {
                return Some(first);
            }
            if take(second) {
                return Some(second);
            }
        }
        let start = if n == 0 { 0 } else { fastrand::usize(..n) };
        (0..n)
            .map(|k| self.weighted[(start + k) % n])
            .find(|&id| take(id))
    }
}

/// nginx's smooth weighted round robin, unrolled over one period (the sum of the weights,
/// reduced by their greatest common divisor).
fn smooth_weighted_schedule(members: &[(TargetId, u32)]) -> Vec<TargetId> {
    let divisor = members.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
    let weights: Vec<i64> = members.iter().map(|&(_, w)| (w / divisor) as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; members.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..members.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(members[best].0);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_smooth_and_exact() {
        let s = smooth_weighted_schedule(&[(0, 5), (1, 1), (2, 1)]);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_weighted_schedule(&[(0, 300), (1, 100)]);
        assert_eq!(s, vec![0, 0, 1, 0]);
        assert!(smooth_weighted_schedule(&[]).is_empty());
    }

    #[test]
    fn tried_and_clones_are_bounded() {
        let mut c = Clones::default();
        for i in 0..20 {
            c.push(i % 10);
        }
        assert_eq!(c.as_slice(), &[0, 1, 2, 3, 4, 5, 6, 7]);
        let mut t = Tried::default();
        for i in 0..40 {
            t.add(i);
        }
        assert_eq!(t.len(), MAX_ATTEMPTS_LIMIT as usize);
        assert!(t.contains(3) && !t.contains(30));
    }
}
