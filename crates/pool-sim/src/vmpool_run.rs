//! vmpool on a trace: the real [`Pool`] (CreateVM, reports, marks), the real [`Reconciler`]
//! and `plan` every 10 s, over a [`SimCloud`] with Azure-like latencies, all on virtual time.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use time::Duration;

use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::sim::{Latencies, SimCloud, SimulatedCompute};
use vmpool::compute::{Compute, Power};
use vmpool::config::PoolPolicy;
use vmpool::domain::{VmId, VmState};
use vmpool::pool::Pool;
use vmpool::reconcile::Reconciler;
use vmpool::store::memory::MemoryStore;
use vmpool::store::{Rows, VmStore};

use crate::measure::{Meter, Outcome, SAMPLE_EVERY, TAIL};
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

/// Billed and deallocated VMs in the cloud now.
fn billing(cloud: &SimCloud) -> (usize, usize) {
    let vms = cloud.list().unwrap_or_default();
    let off = vms
        .iter()
        .filter(|vm| vm.status.power == Power::Deallocated)
        .count();
    (vms.len() - off, off)
}

/// Replays `trace` through vmpool with `policy`, reconciling every [`POLL`] seconds.
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

    let end = trace.last_arrival() + TAIL;
    let mut arrivals: VecDeque<Request> = trace.requests.iter().copied().collect();
    // Requests not yet answered with a VM, retried every poll (CapacityExhausted).
    let mut retry: VecDeque<Request> = VecDeque::new();
    // VMs handed out that are still booting: (vm, request).
    let mut booting: Vec<(VmId, Request)> = Vec::new();
    // Sessions by end time.
    let mut sessions: BTreeMap<i64, Vec<VmId>> = BTreeMap::new();
    let mut meter = Meter::default();
    let mut in_use = 0usize;
    // The cloud's billing, read again whenever an ARM call may have changed it (a reconcile
    // pass, a CreateVM). A deallocate that completes between two reads is counted as billed
    // until the next read, at most one poll: a bias against vmpool of a few seconds per VM.
    let mut bill = (0usize, 0usize);

    let at = |t: i64| start + Duration::seconds(t);
    for t in 0..=end {
        clock.set(at(t));
        if let Some(ended) = sessions.remove(&t) {
            for id in ended {
                in_use -= 1;
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
            match pool.create_vm().await {
                Ok(created) if created.vm.state == VmState::Running => {
                    // The game server reports its room, as real ones do.
                    let _ = pool.report_rooms(&created.vm.id, 1).await;
                    meter.served(t - r.at);
                    in_use += 1;
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
                        meter.served(t - r.at);
                        in_use += 1;
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
            bill = billing(&cloud);
        }
        let (billed, deallocated) = bill;
        let ready = if t % SAMPLE_EVERY == 0 {
            ready_vms(&store).await
        } else {
            0
        };
        meter.tick(t, billed, deallocated, || (in_use, ready));
    }
    meter.finish()
}

/// VMs that would serve a request at once: `Standby`, and drained VMs a CreateVM reclaims.
async fn ready_vms(store: &MemoryStore) -> usize {
    let states = [VmState::Standby, VmState::MarkedForDeallocation];
    store.list(Rows::InStates(&states)).await.map_or(0, |rows| {
        rows.iter()
            .filter(|r| r.vm.state == VmState::Standby || r.vm.reported_empty())
            .count()
    })
}
