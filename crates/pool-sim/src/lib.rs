//! The pool simulation: replays a matchmaker demand trace on virtual time through the real
//! pool ([`Pool`], [`Reconciler`], the real `plan`) over a simulated Azure with Azure-like
//! latencies, and through the reference fixed-buffer algorithm (N ready deployments, 10 s
//! polling), and measures both on the same trace. `cargo run --release -p vmpool-sim`
//! prints the table.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::Duration;

use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::sim::{Latencies, SimCloud, SimulatedCompute};
use vmpool::compute::{Compute, Power};
use vmpool::config::PoolPolicy;
use vmpool::domain::{VmId, VmState};
use vmpool::pool::Pool;
use vmpool::reconcile::Reconciler;
use vmpool::store::VmStore;
use vmpool::store::memory::MemoryStore;

/// One matchmaker request: when it asks for capacity, and how long the game session lasts
/// once it has a VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Seconds from the start of the trace.
    pub at: i64,
    /// Session length in seconds.
    pub session: i64,
}

/// A named demand trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Its name.
    pub name: &'static str,
    /// Its requests, in time order.
    pub requests: Vec<Request>,
}

/// Poisson arrivals with a rate (requests per minute) that varies over time, sessions of
/// 20 minutes +-25%.
pub fn trace(
    name: &'static str,
    seconds: i64,
    seed: u64,
    rate_per_min: impl Fn(i64) -> f64,
) -> Trace {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut requests = Vec::new();
    for t in 0..seconds {
        // Thinning: the chance of an arrival in this one-second slot.
        if rng.random::<f64>() < rate_per_min(t) / 60.0 {
            requests.push(Request {
                at: t,
                session: rng.random_range(900..=1500),
            });
        }
    }
    Trace { name, requests }
}

/// The three traces of the comparison: steady demand, a 10x spike, and a daily cycle.
pub fn standard_traces() -> Vec<Trace> {
    let hour = 3600;
    vec![
        trace("steady", 6 * hour, 1, |_| 1.0),
        trace("spike", 6 * hour, 2, |t| {
            if (2 * hour..2 * hour + 600).contains(&t) {
                10.0
            } else {
                1.0
            }
        }),
        trace("daily", 24 * hour, 3, |t| {
            let phase = (t as f64) / (24.0 * 3600.0) * std::f64::consts::TAU;
            1.1 - 0.9 * phase.cos()
        }),
    ]
}

/// What a policy achieved on a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Requests served.
    pub served: usize,
    /// Total time players waited for capacity, in seconds.
    pub total_wait: i64,
    /// 95th percentile of the wait per request, in seconds.
    pub p95_wait: i64,
    /// Longest wait, in seconds.
    pub max_wait: i64,
    /// Billed VM time (allocated VMs), in hours.
    pub vm_hours: f64,
    /// Most VMs allocated at once.
    pub peak_vms: usize,
}

fn outcome(mut waits: Vec<i64>, billed_seconds: u64, peak: usize) -> Outcome {
    waits.sort_unstable();
    let p95 = if waits.is_empty() {
        0
    } else {
        waits[((waits.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)]
    };
    Outcome {
        served: waits.len(),
        total_wait: waits.iter().sum(),
        p95_wait: p95,
        max_wait: waits.last().copied().unwrap_or(0),
        vm_hours: billed_seconds as f64 / 3600.0,
        peak_vms: peak,
    }
}

/// ARM latencies like Azure's, with jitter: create ~150 s, start ~60 s, deallocate ~60 s.
pub fn azure_latencies() -> Latencies {
    Latencies {
        create: Duration::seconds(150),
        start: Duration::seconds(60),
        deallocate: Duration::seconds(60),
        delete: Duration::seconds(45),
        jitter: 0.25,
    }
}

fn billed(cloud: &SimCloud) -> usize {
    cloud
        .list()
        .map(|vms| {
            vms.iter()
                .filter(|vm| vm.status.power != Power::Deallocated)
                .count()
        })
        .unwrap_or(0)
}

const POLL: i64 = 10;
/// How long after the last request the simulation keeps running so every session ends and
/// the pools settle.
const TAIL: i64 = 2 * 3600;

/// Replays `trace` through vmpool with `policy`, reconciling every 10 s.
pub async fn run_vmpool(trace: &Trace, policy: PoolPolicy, seed: u64) -> Outcome {
    let start = time::macros::datetime!(2026-01-05 00:00 UTC);
    let clock = Arc::new(ManualClock::new(start));
    let cloud = Arc::new(SimCloud::new(
        clock.clone() as Arc<dyn Clock>,
        azure_latencies(),
        seed,
    ));
    let store = Arc::new(MemoryStore::new());
    let compute: Arc<dyn Compute> = Arc::new(SimulatedCompute::new(cloud.clone(), "sim"));
    let pool = Arc::new(Pool::new(
        store.clone() as Arc<dyn VmStore>,
        compute,
        clock.clone(),
        Arc::new(policy),
    ));
    let reconciler = Reconciler::new(pool.clone());

    let end = trace.requests.last().map_or(0, |r| r.at) + TAIL;
    let mut arrivals: VecDeque<Request> = trace.requests.iter().copied().collect();
    // Requests not yet answered with a VM, retried every poll (CapacityExhausted).
    let mut retry: VecDeque<Request> = VecDeque::new();
    // VMs handed out that are still booting: (vm, request).
    let mut booting: Vec<(VmId, Request)> = Vec::new();
    // Sessions by end time.
    let mut sessions: BTreeMap<i64, Vec<VmId>> = BTreeMap::new();
    let mut waits = Vec::new();
    let (mut billed_seconds, mut peak) = (0u64, 0usize);

    let at = |t: i64| start + Duration::seconds(t);
    for t in 0..=end {
        clock.set(at(t));
        if let Some(ended) = sessions.remove(&t) {
            for id in ended {
                let _ = pool.mark_for_deallocation(&id).await;
                let _ = pool.report_rooms(&id, 0).await;
            }
        }
        while arrivals.front().is_some_and(|r| r.at <= t) {
            if let Some(r) = arrivals.pop_front() {
                retry.push_back(r);
            }
        }
        if t % POLL == 0 {
            let _ = reconciler.run_once().await;
        }
        // New requests ask at once; refused ones ask again every poll.
        let asking = retry.len();
        for _ in 0..asking {
            let Some(r) = retry.pop_front() else { break };
            if r.at != t && t % POLL != 0 {
                retry.push_back(r);
                continue;
            }
            match pool.create_vm().await {
                Ok(created) if created.vm.state == VmState::Running => {
                    // The game server reports its room, as real ones do.
                    let _ = pool.report_rooms(&created.vm.id, 1).await;
                    waits.push(t - r.at);
                    sessions
                        .entry(t + r.session)
                        .or_default()
                        .push(created.vm.id);
                }
                Ok(created) => booting.push((created.vm.id, r)),
                Err(_) => retry.push_back(r),
            }
        }
        if t % POLL == 0 {
            let mut still = Vec::new();
            for (id, r) in booting.drain(..) {
                match store.get(&id).await.ok().flatten().map(|row| row.vm.state) {
                    Some(VmState::Running) => {
                        let _ = pool.report_rooms(&id, 1).await;
                        waits.push(t - r.at);
                        sessions.entry(t + r.session).or_default().push(id);
                    }
                    Some(VmState::Creating) => still.push((id, r)),
                    // Failed or gone: the matchmaker asks again.
                    _ => retry.push_back(r),
                }
            }
            booting = still;
        }
        let now_billed = billed(&cloud);
        billed_seconds += now_billed as u64;
        peak = peak.max(now_billed);
    }
    outcome(waits, billed_seconds, peak)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Starting,
    Ready,
    InUse,
    Completed,
}

/// Replays `trace` through the reference algorithm: keep `n` deployments ready or starting,
/// poll every 10 s, mark started deployments ready at the poll that sees them healthy,
/// delete completed ones. A request takes a ready deployment or waits for one.
pub fn run_fixed(trace: &Trace, n: usize, seed: u64) -> Outcome {
    let start = time::macros::datetime!(2026-01-05 00:00 UTC);
    let clock = Arc::new(ManualClock::new(start));
    let cloud = SimCloud::new(clock.clone() as Arc<dyn Clock>, azure_latencies(), seed);
    let mut tags: HashMap<String, Tag> = HashMap::new();
    let mut next_name = 0u64;
    let mut queue: VecDeque<Request> = VecDeque::new();
    let mut sessions: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut waits = Vec::new();
    let (mut billed_seconds, mut peak) = (0u64, 0usize);
    let mut arrivals: VecDeque<Request> = trace.requests.iter().copied().collect();
    let end = trace.requests.last().map_or(0, |r| r.at) + TAIL;

    for t in 0..=end {
        clock.set(start + Duration::seconds(t));
        if let Some(ended) = sessions.remove(&t) {
            for name in ended {
                tags.insert(name, Tag::Completed);
            }
        }
        while arrivals.front().is_some_and(|r| r.at <= t) {
            if let Some(r) = arrivals.pop_front() {
                queue.push_back(r);
            }
        }
        if t % POLL == 0 {
            let up: HashMap<String, bool> = cloud
                .list()
                .unwrap_or_default()
                .into_iter()
                .map(|vm| (vm.name, vm.status.is_up()))
                .collect();
            for (name, tag) in tags.iter_mut() {
                if *tag == Tag::Starting && up.get(name).copied().unwrap_or(false) {
                    *tag = Tag::Ready;
                }
            }
            let completed: Vec<String> = tags
                .iter()
                .filter(|(_, t)| **t == Tag::Completed)
                .map(|(n, _)| n.clone())
                .collect();
            for name in completed {
                let _ = cloud.delete(&name);
                tags.remove(&name);
            }
            let pending = tags
                .values()
                .filter(|t| matches!(t, Tag::Starting | Tag::Ready))
                .count();
            for _ in pending..n {
                next_name += 1;
                let name = format!("fixed-{next_name}");
                if cloud.create(&name, BTreeMap::new()).is_ok() {
                    tags.insert(name, Tag::Starting);
                }
            }
        }
        // Waiting players take ready deployments, first come first served.
        while !queue.is_empty() {
            let Some(name) = tags
                .iter()
                .filter(|(_, t)| **t == Tag::Ready)
                .map(|(n, _)| n.clone())
                .min()
            else {
                break;
            };
            let Some(r) = queue.pop_front() else { break };
            tags.insert(name.clone(), Tag::InUse);
            waits.push(t - r.at);
            sessions.entry(t + r.session).or_default().push(name);
        }
        let now_billed = billed(&cloud);
        billed_seconds += now_billed as u64;
        peak = peak.max(now_billed);
    }
    outcome(waits, billed_seconds, peak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_policies_serve_a_short_trace_and_vmpool_waits_less_in_a_burst() {
        // Ten requests in the first minute, then quiet.
        let burst = Trace {
            name: "burst",
            requests: (0..10)
                .map(|i| Request {
                    at: i * 6,
                    session: 600,
                })
                .collect(),
        };
        let fixed = run_fixed(&burst, 2, 1);
        let pool = run_vmpool(&burst, PoolPolicy::default(), 1).await;
        assert_eq!((fixed.served, pool.served), (10, 10));
        assert!(
            pool.total_wait < fixed.total_wait / 2,
            "{pool:?} vs {fixed:?}"
        );
        assert!(
            pool.max_wait <= 200,
            "every VM is created on demand: {pool:?}"
        );
        assert!(
            pool.vm_hours > 10.0 * 600.0 / 3600.0,
            "the sessions themselves are billed"
        );
        assert!(pool.peak_vms >= 10);
    }

    #[test]
    fn traces_are_reproducible_and_follow_their_rates() {
        let a = trace("t", 3600, 9, |_| 2.0);
        let b = trace("t", 3600, 9, |_| 2.0);
        assert_eq!(a.requests, b.requests);
        assert!(
            (90..=150).contains(&a.requests.len()),
            "{}",
            a.requests.len()
        );
    }
}
