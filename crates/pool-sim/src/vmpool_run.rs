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

/// Billed and deallocated VMs among the cloud's VMs. A VM being deleted is counted as it was
/// (compute while it is running, its disk while it is deallocated) until the delete
/// completes and the cloud no longer lists it. "States and billing status of Azure Virtual
/// Machines" (learn.microsoft.com/azure/virtual-machines/states-billing): a running VM is
/// billed, a deallocating or deallocated one is not billed for compute ("Deallocating: the
/// transitional state between running and deallocated. Not billed"), and its disks are
/// billed on their own until deleted. Like the rest of this model it takes the harsher
/// reading where the table is silent (a VM being created or deleted is billed).
fn billing(vms: &[SimVmView]) -> (usize, usize) {
    let off = vms
        .iter()
        .filter(|vm| matches!(vm.status.power, Power::Deallocated | Power::Deallocating))
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
    /// Reconcile passes, after the new build's buffer was first ready and while old-build
    /// VMs were left, at which it was not (demand took its `Standby` VMs): idle old-build
    /// VMs wait for it again.
    pub unready_passes: usize,
    /// The most reconcile passes an idle old-build VM (no session on it) waited with the
    /// new build's buffer ready before its delete began: the reconciler deletes at most 5
    /// idle `Standby` and `Deallocated` ones a pass, and one whose session ends as soon as
    /// its game server reports 0 rooms after the mark.
    pub most_ready_passes_waited: usize,
    /// The longest an old-build VM took to leave the cloud once its delete began, in
    /// seconds (it is billed until then).
    pub longest_delete: i64,
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
    /// Old-build VMs still in the cloud.
    alive: HashSet<String>,
    /// Ready passes each idle one waited before its delete began.
    ready_waits: HashMap<String, usize>,
    /// When each one was first seen being deleted.
    deleting_since: HashMap<String, i64>,
    ready_at: Option<i64>,
    unready_passes: usize,
    most_ready_waits: usize,
    longest_delete: i64,
    last_gone: Option<i64>,
}

/// Replays `trace` through vmpool with `policy`, reconciling every [`POLL`] seconds.
pub async fn run_vmpool(trace: &Trace, policy: PoolPolicy, seed: u64) -> Outcome {
    run_vmpool_with(trace, policy, seed, None, &[])
        .await
        .outcome
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
    // Each start of the app draws its choices from a seed of its own, derived from the run's.
    let app = |policy: &PoolPolicy, start: u64| {
        let pool = Arc::new(
            Pool::new(
                store.clone() as Arc<dyn VmStore>,
                compute.clone(),
                clock.clone(),
                Arc::new(policy.clone()),
            )
            .seeded(seed.wrapping_mul(1_000_003).wrapping_add(start)),
        );
        let reconciler = Reconciler::new(pool.clone());
        (pool, reconciler)
    };
    let (mut pool, mut reconciler) = app(&policy, 0);
    let mut report: Option<RolloutReport> = None;
    let mut old = OldBuild::default();
    // VMs hosting a session, and those found cut under it.
    let mut hosting: HashSet<VmId> = HashSet::new();
    let mut cut: HashSet<VmId> = HashSet::new();
    // Whether the new build's buffer was ready as the last reconcile pass began.
    let mut ready_before = false;

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
            (pool, reconciler) = app(&policy, 1);
            let vms = cloud.list().unwrap_or_default();
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
            if report.is_some() {
                ready_before = buffer_ready(&store, &policy).await;
                match old.ready_at {
                    None if ready_before => old.ready_at = Some(t),
                    Some(_) if !ready_before && !old.alive.is_empty() => {
                        old.unready_passes += 1;
                    }
                    _ => {}
                }
            }
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
                    let busy: HashSet<&str> = hosting
                        .iter()
                        .chain(booting.iter().map(|(id, _)| id))
                        .map(VmId::as_str)
                        .collect();
                    follow_old_build(&mut old, &vms, &busy, ready_before, t);
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
        report.most_ready_passes_waited = old.most_ready_waits;
        report.longest_delete = old.longest_delete;
        report.unready_passes = old.unready_passes;
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

/// Follows the old build's VMs after a reconcile pass at `t` (`ready`: the new build's
/// buffer was ready as it began): which are idle (not in `busy`), being deleted, or gone
/// from the cloud.
fn follow_old_build(
    old: &mut OldBuild,
    vms: &[SimVmView],
    busy: &HashSet<&str>,
    ready: bool,
    t: i64,
) {
    let listed: HashMap<&str, &SimVmView> = vms.iter().map(|vm| (vm.name.as_str(), vm)).collect();
    let gone: Vec<String> = old
        .alive
        .iter()
        .filter(|name| !listed.contains_key(name.as_str()))
        .cloned()
        .collect();
    for name in gone {
        old.alive.remove(&name);
        old.last_gone = Some(t);
        old.ready_waits.remove(&name);
        if let Some(since) = old.deleting_since.remove(&name) {
            old.longest_delete = old.longest_delete.max(t - since);
        }
    }
    for name in &old.alive {
        if busy.contains(name.as_str()) {
            continue;
        }
        let deleting = listed
            .get(name.as_str())
            .is_some_and(|vm| vm.status.provisioning == Provisioning::Deleting);
        if deleting {
            old.deleting_since.entry(name.clone()).or_insert(t);
        } else if ready {
            let waits = old.ready_waits.entry(name.clone()).or_default();
            *waits += 1;
            old.most_ready_waits = old.most_ready_waits.max(*waits);
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

    /// Azure bills compute while a VM starts, runs or stops, not while it deallocates or is
    /// deallocated (its disk is billed then); a VM being created or deleted is billed.
    #[test]
    fn a_deallocating_vm_pays_for_its_disk_only() {
        let vm = |power| SimVmView {
            name: "vm".into(),
            status: vmpool::compute::VmStatus {
                provisioning: Provisioning::Succeeded,
                power,
            },
            public_ip: None,
            tags: BTreeMap::new(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let vms = [
            vm(Power::Starting),
            vm(Power::Running),
            vm(Power::Stopping),
            vm(Power::Deallocating),
            vm(Power::Deallocated),
        ];
        assert_eq!(billing(&vms), (3, 2));
    }

    /// A run is a function of the trace, the policy and the seed: the pool draws its VM
    /// names and the order it tries candidates in from the seed, the table lists rows in key
    /// order, and the cloud's latencies come from the seed. So a point of the sweep is the
    /// same every time it is computed, and a change to the pool shows in the figures alone.
    #[tokio::test]
    async fn the_same_trace_policy_and_seed_give_the_same_run() {
        let trace = crate::traces::trace("replay", 3600, 5, |t| if t < 1800 { 1.0 } else { 3.0 });
        let first = run_vmpool(&trace, vmpool_policy(2, 180, 0), 11).await;
        let again = run_vmpool(&trace, vmpool_policy(2, 180, 0), 11).await;
        assert_eq!(first, again);
        assert_eq!(first.served, trace.requests.len());
    }

    /// Hourly bursts of 50 requests: told that demand repeats hourly, vmpool has the VMs of
    /// the last burst ready when it comes back; without, the burst waits for VMs.
    #[tokio::test]
    async fn told_that_demand_repeats_hourly_vmpool_serves_the_second_burst_at_once() {
        let trace = crate::traces::bursts(2 * 3600);
        // The second burst (at 1:30, within 5 s).
        let bursts = [(5400, 5405)];
        let run = |period| run_vmpool_with(&trace, vmpool_policy(2, 120, period), 5, None, &bursts);
        let told = run(3600).await;
        let not_told = run(0).await;
        let waits = |r: &Run| {
            r.windows
                .iter()
                .map(|w| (w.served, w.p95_wait, w.mean_wait))
                .collect::<Vec<_>>()
        };
        eprintln!(
            "second burst (served, p95, mean wait): told {:?}, not told {:?}; VM-hours {:.1} against {:.1}",
            waits(&told),
            waits(&not_told),
            told.outcome.vm_hours,
            not_told.outcome.vm_hours
        );
        for (t, n) in told.windows.iter().zip(&not_told.windows) {
            assert!(t.served >= 50, "{t:?}");
            assert_eq!(t.p95_wait, 0, "{t:?}");
            assert!(t.mean_wait < 5.0, "{t:?}");
            assert!(n.p95_wait >= 60, "{n:?}");
        }
        assert_eq!(told.outcome.served, trace.requests.len());
    }

    /// A new build shipped after an hour of demand at 1.5 requests a minute, with a floor of
    /// 2: the same rollout as the daily trace's at hour 12, on a short trace.
    #[tokio::test]
    async fn a_rollout_hands_out_only_the_new_build_and_removes_every_idle_old_build_vm() {
        let trace = crate::traces::trace("rollout", 2 * 3600, 11, |_| 1.5);
        let policy = with_build(&vmpool_policy(2, 180, 0), "1.5.0", server_image("1.5.0"));
        let rollout = Rollout {
            at: 3600,
            build: "1.6.0".into(),
            image: server_image("1.6.0"),
        };
        let run = run_vmpool_with(&trace, policy, 7, Some(&rollout), &[(0, 3600)]).await;
        let r = run.rollout.expect("a rollout report");
        eprintln!("rollout on a short trace: {r:?}");
        assert_eq!((r.from.as_str(), r.to.as_str()), ("1.5.0", "1.6.0"));
        assert!(
            r.old_at_switch >= 10,
            "VMs of the old build at the switch: {r:?}"
        );
        assert!(r.handouts_after >= 60, "{r:?}");
        assert_eq!(r.old_build_handouts, 0, "{r:?}");
        assert_eq!(r.sessions_cut, 0, "no session loses its VM: {r:?}");
        assert_eq!(run.outcome.served, trace.requests.len());
        assert!(
            r.buffer_ready_after.is_some(),
            "the new build's buffer gets ready: {r:?}"
        );
        // Every old-build VM is gone by the end. Idle `Standby` and `Deallocated` ones are
        // deleted at most 5 a pass once the new buffer is ready, so none waits more ready
        // passes than it takes to delete every old-build VM there was (and one pass in
        // which the buffer the pass saw differs from the one seen here); one whose session
        // ends at once. Each leaves the cloud once its delete completes (45 s +-25%).
        assert_eq!(
            r.old_left, 0,
            "every old-build VM is gone at the end: {r:?}"
        );
        assert!(r.last_old_gone_after.is_some(), "{r:?}");
        assert!(
            r.most_ready_passes_waited <= r.old_at_switch.div_ceil(5) + 1,
            "an idle old-build VM waited more ready passes than the deletes take: {r:?}"
        );
        assert!(r.longest_delete <= 57 + POLL, "{r:?}");
        assert_eq!(run.windows.len(), 1);
        assert!(run.windows[0].served > 0 && run.windows[0].vm_hours > 0.0);
    }
}
