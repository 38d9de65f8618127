//! vmpool on a trace: the real [`Pool`] (CreateVM, reports, marks), the real [`Reconciler`]
//! and `plan` every 10 s, over a [`SimCloud`] with Azure-like latencies, all on virtual time.
//! A run may ship a new server build part way ([`Rollout`]): the app restarts with the
//! pool's new build and image, over the same table and cloud.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use time::Duration;

use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::sim::{Latencies, SimCloud, SimVmView, SimulatedCompute};
use vmpool::compute::{BUILD_TAG, Compute, Image, Power, Provisioning};
use vmpool::config::PoolPolicy;
use vmpool::config::pools::Pools;
use vmpool::domain::{VmId, VmState};
use vmpool::pool::Pool;
use vmpool::reconcile::{Reconciler, load_meta};
use vmpool::store::memory::MemoryStore;
use vmpool::store::{Rows, VmStore};

use crate::measure::{Meter, Outcome, SAMPLE_EVERY, TAIL, Window};
use crate::traces::{Request, Trace};

/// ARM latencies like Azure's, with jitter: create ~150 s, start ~60 s, deallocate ~60 s,
/// delete ~45 s, each drawn within ±25%.
pub fn azure_latencies() -> Latencies {
    Latencies {
        create: Duration::seconds(150),
        start: Duration::seconds(60),
        deallocate: Duration::seconds(60),
        delete: Duration::seconds(45),
        jitter: 0.25,
    }
}

/// How often the reconciler runs, and a refused request asks again.
pub const POLL: i64 = 10;

/// Billed and deallocated VMs among the cloud's VMs. A VM being deleted is billed as it was
/// (compute while it is allocated, its disk while it is deallocated) until the delete
/// completes and the cloud no longer lists it: Azure bills a VM's compute until it is
/// deallocated or deleted, and its managed disks until they are deleted (learn.microsoft.com,
/// "States and billing status of Azure Virtual Machines").
fn billing(vms: &[SimVmView]) -> (usize, usize) {
    let off = vms
        .iter()
        .filter(|vm| vm.status.power == Power::Deallocated)
        .count();
    (vms.len() - off, off)
}

/// A new server build shipped during a run: at `at` seconds the pool's `build` and `image`
/// change and the app restarts with them, as an operator's change of `VMPOOL_POOLS` (or
/// `VMPOOL_IMAGE` and `VMPOOL_BUILD`) restarts it: a new [`Pool`] and [`Reconciler`] over
/// the same table and the same cloud. The matchmaker asks for the build current when it
/// asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// When, in seconds from the start.
    pub at: i64,
    /// The new build label.
    pub build: String,
    /// The new image.
    pub image: Image,
}

/// A gallery image version of the simulated game server, for `build`.
pub fn server_image(build: &str) -> Image {
    Image::Id(format!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/images/providers/Microsoft.Compute/galleries/games/images/server/versions/{build}"
    ))
}

/// `policy` with its implied pool (`default`, or the only one) on `build` and `image`.
pub fn with_build(policy: &PoolPolicy, build: &str, image: Image) -> PoolPolicy {
    let implied = policy.pools.implied().map(|p| p.name.clone());
    let specs = policy
        .pools
        .all()
        .iter()
        .cloned()
        .map(|mut spec| {
            if Some(&spec.name) == implied.as_ref() {
                spec.build = build.to_owned();
                spec.image = image.clone();
            }
            spec
        })
        .collect();
    PoolPolicy {
        pools: Pools::from_specs(specs),
        ..policy.clone()
    }
}

/// What happened around a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RolloutReport {
    /// The build before the switch.
    pub from: String,
    /// The build after it.
    pub to: String,
    /// VMs handed out after the switch.
    pub handouts_after: usize,
    /// VMs handed out after the switch of a build other than the one asked for (the new
    /// build), the old one or an unknown one: must be 0.
    pub old_build_handouts: usize,
    /// Old-build VMs in the cloud at the switch.
    pub old_at_switch: usize,
    /// Seconds from the switch until the new build's `Standby` VMs first reached the pool's
    /// buffer target (as the pool's record gives it), if they did.
    pub buffer_ready_after: Option<i64>,
    /// The longest an old-build VM stayed in the cloud once it was idle (no session on it)
    /// and the new build's buffer was ready, in seconds; `None` if some old-build VM is
    /// still in the cloud at the end of the run.
    pub longest_old_idle: Option<i64>,
    /// Seconds from the switch until the last old-build VM left the cloud, if it did.
    pub last_old_gone_after: Option<i64>,
    /// Old-build VMs still in the cloud at the end of the run.
    pub old_left: usize,
    /// VMs hosting a session that were deleted, deallocated or stopped under it: must be 0.
    pub sessions_cut: usize,
}

/// A run's outcome, each window's, and the rollout's report if it had one.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The whole run.
    pub outcome: Outcome,
    /// Each window asked for.
    pub windows: Vec<Window>,
    /// The rollout, if there was one.
    pub rollout: Option<RolloutReport>,
}

/// The old build's VMs as the run follows them after a switch.
#[derive(Debug, Default)]
struct OldBuild {
    build: String,
    /// When each old-build VM still in the cloud was first seen idle after the switch.
    idle_since: HashMap<String, i64>,
    /// Old-build VMs still in the cloud.
    alive: HashSet<String>,
    ready_at: Option<i64>,
    longest_idle: i64,
    last_gone: Option<i64>,
}

/// Replays `trace` through vmpool with `policy`, reconciling every [`POLL`] seconds.
pub async fn run_vmpool(trace: &Trace, policy: PoolPolicy, seed: u64) -> Outcome {
    run_vmpool_with(trace, policy, seed, None, &[]).await.outcome
}

/// Replays `trace` through vmpool with `policy`, shipping `rollout` if given, and measures
/// each window `[from, to)` (seconds from the start) on its own besides the whole run.
pub async fn run_vmpool_with(
    trace: &Trace,
    mut policy: PoolPolicy,
    seed: u64,
    rollout: Option<&Rollout>,
    windows: &[(i64, i64)],
) -> Run {
    let start = time::macros::datetime!(2026-01-05 00:00 UTC);
    let clock = Arc::new(ManualClock::new(start));
    let cloud = Arc::new(SimCloud::new(
        clock.clone() as Arc<dyn Clock>,
        azure_latencies(),
        seed,
    ));
    let store = Arc::new(MemoryStore::new());
    let compute: Arc<dyn Compute> = Arc::new(SimulatedCompute::new(cloud.clone(), "sim"));
    let app = |policy: &PoolPolicy| {
        let pool = Arc::new(Pool::new(
            store.clone() as Arc<dyn VmStore>,
            compute.clone(),
            clock.clone(),
            Arc::new(policy.clone()),
        ));
        let reconciler = Reconciler::new(pool.clone());
        (pool, reconciler)
    };
    let (mut pool, mut reconciler) = app(&policy);
    let mut report: Option<RolloutReport> = None;
    let mut old = OldBuild::default();
    // VMs hosting a session, and those found cut under it.
    let mut hosting: HashSet<VmId> = HashSet::new();
    let mut cut: HashSet<VmId> = HashSet::new();

    let end = trace.last_arrival() + TAIL;
    let mut arrivals: VecDeque<Request> = trace.requests.iter().copied().collect();
    // Requests not yet answered with a VM, retried every poll (CapacityExhausted).
    let mut retry: VecDeque<Request> = VecDeque::new();
    // VMs handed out that are still booting: (vm, request).
    let mut booting: Vec<(VmId, Request)> = Vec::new();
    // Sessions by end time.
    let mut sessions: BTreeMap<i64, Vec<VmId>> = BTreeMap::new();
    let mut meter = Meter::with_windows(windows);
    let mut in_use = 0usize;
    // The cloud's billing, read again whenever an ARM call may have changed it (a reconcile
    // pass, a CreateVM). A deallocate that completes between two reads is counted as billed
    // until the next read, at most one poll: a bias against vmpool of a few seconds per VM.
    let mut bill = (0usize, 0usize);

    let at = |t: i64| start + Duration::seconds(t);
    for t in 0..=end {
        clock.set(at(t));
        if let Some(r) = rollout.filter(|r| r.at == t) {
            let from = current_build(&policy);
            policy = with_build(&policy, &r.build, r.image.clone());
            (pool, reconciler) = app(&policy);
            let vms = cloud.list().unwrap_or_default();
            old.build = from.clone();
            old.alive = vms
                .iter()
                .filter(|vm| vm.tags.get(BUILD_TAG) == Some(&from))
                .map(|vm| vm.name.clone())
                .collect();
            report = Some(RolloutReport {
                from,
                to: r.build.clone(),
                old_at_switch: old.alive.len(),
                ..RolloutReport::default()
            });
        }
        if let Some(ended) = sessions.remove(&t) {
            for id in ended {
                in_use -= 1;
                hosting.remove(&id);
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
        let mut called = false;
        for _ in 0..asking {
            let Some(r) = retry.pop_front() else { break };
            if r.at != t && t % POLL != 0 {
                retry.push_back(r);
                continue;
            }
            called = true;
            // The matchmaker asks for the build current now.
            let build = current_build(&policy);
            let created = match pool.wanted(None, Some(&build)) {
                Ok(wanted) => pool.create_vm_for(&wanted).await,
                Err(e) => Err(e),
            };
            if let (Ok(c), Some(report)) = (&created, report.as_mut()) {
                report.handouts_after += 1;
                if c.vm.build.as_deref() != Some(build.as_str()) {
                    report.old_build_handouts += 1;
                }
            }
            match created {
                Ok(created) if created.vm.state == VmState::Running => {
                    // The game server reports its room, as real ones do.
                    let _ = pool.report_rooms(&created.vm.id, 1).await;
                    meter.served_from(r.at, t - r.at);
                    in_use += 1;
                    hosting.insert(created.vm.id.clone());
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
                        meter.served_from(r.at, t - r.at);
                        in_use += 1;
                        hosting.insert(id.clone());
                        sessions.entry(t + r.session).or_default().push(id);
                    }
                    Some(VmState::Creating) => still.push((id, r)),
                    // Failed or gone: the matchmaker asks again.
                    _ => retry.push_back(r),
                }
            }
            booting = still;
        }
        if called || t % POLL == 0 {
            let vms = cloud.list().unwrap_or_default();
            bill = billing(&vms);
            if t % POLL == 0 {
                cut.extend(cut_sessions(&vms, &hosting));
                if report.is_some() {
                    follow_old_build(&mut old, &vms, &hosting, &booting, t);
                    if old.ready_at.is_none() && buffer_ready(&store, &policy).await {
                        old.ready_at = Some(t);
                    }
                }
            }
        }
        let (billed, deallocated) = bill;
        let ready = if t % SAMPLE_EVERY == 0 {
            ready_vms(&store, &current_build(&policy)).await
        } else {
            0
        };
        meter.tick(t, billed, deallocated, || (in_use, ready));
    }
    let (outcome, windows) = meter.finish_with_windows();
    let rollout = report.map(|mut report| {
        let switch = rollout.map_or(0, |r| r.at);
        report.buffer_ready_after = old.ready_at.map(|at| at - switch);
        report.old_left = old.alive.len();
        report.longest_old_idle = old.alive.is_empty().then_some(old.longest_idle);
        report.last_old_gone_after = if old.alive.is_empty() {
            Some(old.last_gone.map_or(0, |at| at - switch))
        } else {
            None
        };
        report.sessions_cut = cut.len();
        report
    });
    Run {
        outcome,
        windows,
        rollout,
    }
}

/// The build the implied pool hands out now.
fn current_build(policy: &PoolPolicy) -> String {
    policy
        .pools
        .implied()
        .map(|p| p.build.clone())
        .unwrap_or_default()
}

/// VMs hosting a session that the cloud no longer shows running: deleted, being deleted,
/// deallocated or stopped.
fn cut_sessions(vms: &[SimVmView], hosting: &HashSet<VmId>) -> Vec<VmId> {
    let up: HashSet<&str> = vms
        .iter()
        .filter(|vm| {
            vm.status.power == Power::Running && vm.status.provisioning != Provisioning::Deleting
        })
        .map(|vm| vm.name.as_str())
        .collect();
    hosting
        .iter()
        .filter(|id| !up.contains(id.as_str()))
        .cloned()
        .collect()
}

/// Follows the old build's VMs at `t`: which are idle (no session on them, none booting
/// for a request), and which have left the cloud.
fn follow_old_build(
    old: &mut OldBuild,
    vms: &[SimVmView],
    hosting: &HashSet<VmId>,
    booting: &[(VmId, Request)],
    t: i64,
) {
    let listed: HashSet<&str> = vms.iter().map(|vm| vm.name.as_str()).collect();
    let gone: Vec<String> = old
        .alive
        .iter()
        .filter(|name| !listed.contains(name.as_str()))
        .cloned()
        .collect();
    for name in gone {
        old.alive.remove(&name);
        old.last_gone = Some(t);
        if let (Some(since), Some(ready)) = (old.idle_since.remove(&name), old.ready_at) {
            old.longest_idle = old.longest_idle.max(t - since.max(ready));
        }
    }
    for name in &old.alive {
        let busy = hosting.iter().any(|id| id.as_str() == name)
            || booting.iter().any(|(id, _)| id.as_str() == name);
        if busy {
            old.idle_since.remove(name);
        } else {
            old.idle_since.entry(name.clone()).or_insert(t);
        }
    }
}

/// Whether the implied pool's current build has as many `Standby` VMs as its buffer target.
async fn buffer_ready(store: &MemoryStore, policy: &PoolPolicy) -> bool {
    let Some(spec) = policy.pools.implied() else {
        return false;
    };
    let Ok((meta, _)) = load_meta(store).await else {
        return false;
    };
    let target = meta.pool(&spec.name).effective_buffer_target(spec);
    let standby = store
        .list(Rows::InStates(&[VmState::Standby]))
        .await
        .map_or(0, |rows| {
            rows.iter()
                .filter(|r| r.vm.is_of(&spec.name, &spec.build) && r.vm.rooms == 0)
                .count()
        });
    standby >= target as usize
}

/// VMs of `build` that would serve a request at once: `Standby`, and drained VMs a CreateVM
/// reclaims.
async fn ready_vms(store: &MemoryStore, build: &str) -> usize {
    let states = [VmState::Standby, VmState::MarkedForDeallocation];
    store.list(Rows::InStates(&states)).await.map_or(0, |rows| {
        rows.iter()
            .filter(|r| r.vm.build.as_deref() == Some(build))
            .filter(|r| r.vm.state == VmState::Standby || r.vm.reported_empty())
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::vmpool_policy;

    /// A new build shipped after an hour of demand at 1.5 requests a minute, with a floor of
    /// 2: the same rollout as the daily trace's at hour 12, on a short trace.
    #[tokio::test]
    async fn a_rollout_hands_out_only_the_new_build_and_removes_every_idle_old_build_vm() {
        let trace = crate::traces::trace("rollout", 2 * 3600, 11, |_| 1.5);
        let policy = with_build(&vmpool_policy(2, 180), "1.5.0", server_image("1.5.0"));
        let rollout = Rollout {
            at: 3600,
            build: "1.6.0".into(),
            image: server_image("1.6.0"),
        };
        let run = run_vmpool_with(&trace, policy, 7, Some(&rollout), &[(0, 3600)]).await;
        let r = run.rollout.expect("a rollout report");
        assert_eq!((r.from.as_str(), r.to.as_str()), ("1.5.0", "1.6.0"));
        assert!(r.old_at_switch >= 10, "VMs of the old build at the switch: {r:?}");
        assert!(r.handouts_after >= 60, "{r:?}");
        assert_eq!(r.old_build_handouts, 0, "{r:?}");
        assert_eq!(r.sessions_cut, 0, "no session loses its VM: {r:?}");
        assert_eq!(run.outcome.served, trace.requests.len());
        assert!(r.buffer_ready_after.is_some(), "the new build's buffer gets ready: {r:?}");
        // Once the new buffer is ready, idle old-build VMs are deleted at most 5 a pass;
        // each leaves the cloud once its delete completes (45 s +-25%).
        let passes = i64::try_from(r.old_at_switch.div_ceil(5)).unwrap_or(i64::MAX);
        let bound = passes * POLL + 57 + 3 * POLL;
        assert_eq!(r.old_left, 0, "every old-build VM is gone at the end: {r:?}");
        assert!(
            r.longest_old_idle.is_some_and(|s| s <= bound),
            "an idle old-build VM outlived the ready buffer by more than {bound} s: {r:?}"
        );
        assert_eq!(run.windows.len(), 1);
        assert!(run.windows[0].served > 0 && run.windows[0].vm_hours > 0.0);
    }
}
