//! The reconciler end to end on virtual time: the warm buffer (fill, take, refill), every
//! failure path, drift repair, and crash recovery with the executor interrupted at each step
//! between its row write and its ARM call. `Rig` runs the same tests over any store and
//! compute, so they also run against Azurite and the ARM fake.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tokio::sync::Notify;
use vmpool::clock::Clock;
use vmpool::compute::sim::Fault;
use vmpool::compute::{Compute, ComputeError, Listed, Power, VmStatus};
use vmpool::domain::{CreateAction, VmId, VmRecord, VmState};
use vmpool::pool::Pool;
use vmpool::reconcile::Reconciler;

use crate::support::{Rig, config};

impl Rig {
    /// The same pool over a compute API that never answers once `crash` is set: the caller's
    /// future is dropped right after the row write, as if the process died there.
    pub fn crashing(&self) -> (Arc<Pool>, Reconciler, Arc<Crashing>) {
        let crashing = Arc::new(Crashing {
            inner: self.compute.clone(),
            crash: AtomicBool::new(true),
            reached: Notify::new(),
        });
        let pool = Arc::new(Pool::new(
            self.store.clone(),
            crashing.clone(),
            self.clock.clone(),
            Arc::new(self.config.policy.clone()),
        ));
        let reconciler = Reconciler::new(pool.clone()).with_holder(self.reconciler.holder());
        (pool.clone(), reconciler, crashing)
    }
}

/// Runs `op` until it reaches its ARM call, then drops it there.
pub async fn interrupt<T: std::fmt::Debug>(
    crashing: &Crashing,
    op: impl std::future::Future<Output = T>,
) {
    tokio::select! {
        done = op => panic!("the operation finished without reaching ARM: {done:?}"),
        () = crashing.reached.notified() => {}
    }
}

/// A compute API whose mutations hang forever while `crash` is set.
pub struct Crashing {
    inner: Arc<dyn Compute>,
    pub crash: AtomicBool,
    reached: Notify,
}

impl Crashing {
    async fn gate(&self) {
        if self.crash.load(Ordering::SeqCst) {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Compute for Crashing {
    fn describe(&self) -> String {
        "crashing".into()
    }
    fn resource_id(&self, name: &VmId) -> String {
        self.inner.resource_id(name)
    }
    async fn create(
        &self,
        name: &VmId,
        pool: &vmpool::compute::VmSpec,
    ) -> Result<(), ComputeError> {
        self.gate().await;
        self.inner.create(name, pool).await
    }
    async fn start(&self, name: &VmId) -> Result<(), ComputeError> {
        self.gate().await;
        self.inner.start(name).await
    }
    async fn deallocate(&self, name: &VmId) -> Result<(), ComputeError> {
        self.gate().await;
        self.inner.deallocate(name).await
    }
    async fn delete(&self, name: &VmId) -> Result<(), ComputeError> {
        self.gate().await;
        self.inner.delete(name).await
    }
    async fn status(&self, name: &VmId) -> Result<Option<VmStatus>, ComputeError> {
        self.inner.status(name).await
    }
    async fn list(&self) -> Result<Vec<Listed>, ComputeError> {
        self.inner.list().await
    }
    async fn list_power(&self) -> Result<Vec<Listed>, ComputeError> {
        self.inner.list_power().await
    }
    async fn public_ip(&self, name: &VmId) -> Result<Option<String>, ComputeError> {
        self.inner.public_ip(name).await
    }
    async fn image(&self, name: &VmId) -> Result<Option<vmpool::compute::Image>, ComputeError> {
        self.inner.image(name).await
    }
}

// ---- the tests, over any rig -------------------------------------------------------------

pub async fn buffer_fills_is_taken_and_refills(rig: Rig) {
    let s = rig.pass().await;
    assert_eq!((s.created, s.buffer_target), (2, 2), "{}", s.line());
    assert_eq!(rig.count(VmState::Creating).await, 2);
    // Nothing is over-created while the buffer VMs are on their way.
    assert_eq!(rig.pass().await.created, 0);

    // A CreateVM while they boot claims one of them.
    let claimed = rig.pool.create_vm().await.unwrap();
    assert_eq!(claimed.action, CreateAction::ClaimedCreating);
    rig.advance(180);
    let s = rig.pass().await;
    assert_eq!(s.completed, 2, "{}", s.line());
    assert_eq!(s.created, 1, "the claimed VM is replaced: {}", s.line());
    let claimed_now = rig
        .rows()
        .await
        .into_iter()
        .find(|vm| vm.id == claimed.vm.id)
        .unwrap();
    assert_eq!(claimed_now.state, VmState::Running);
    assert!(claimed_now.public_ip.is_some());

    // A CreateVM now gets a Standby VM, Running at once.
    let taken = rig.pool.create_vm().await.unwrap();
    assert_eq!(
        (taken.action, taken.vm.state),
        (CreateAction::Standby, VmState::Running)
    );
    rig.advance(180);
    rig.pass().await;
    rig.advance(180);
    rig.pass().await;
    assert_eq!(rig.count(VmState::Standby).await, 2, "refilled");
    assert_eq!(rig.count(VmState::Running).await, 2);

    // Deallocated VMs are started for the buffer before new ones are created.
    let running: Vec<VmId> = rig
        .rows()
        .await
        .into_iter()
        .filter(|vm| vm.state == VmState::Running)
        .map(|vm| vm.id)
        .collect();
    for id in &running {
        rig.pool.mark_for_deallocation(id).await.unwrap();
        rig.pool.report_rooms(id, 0).await.unwrap();
    }
    rig.advance(120);
    rig.pass().await;
    assert_eq!(rig.count(VmState::Deallocated).await, 2);
    rig.pool.create_vm().await.unwrap();
    rig.pool.create_vm().await.unwrap();
    let s = rig.pass().await;
    assert_eq!((s.started, s.created), (2, 0), "{}", s.line());
}

pub async fn failures_are_recorded_cleaned_up_and_replaced(rig: Rig) {
    rig.cloud.inject(Fault::ProvisioningFails(
        "AllocationFailed: no capacity in zone".into(),
    ));
    rig.pass().await;
    rig.advance(180);
    let s = rig.pass().await;
    assert_eq!(
        (s.failed, s.created),
        (1, 1),
        "replaced at once: {}",
        s.line()
    );
    let failed = rig
        .rows()
        .await
        .into_iter()
        .find(|vm| vm.state == VmState::Failed)
        .unwrap();
    assert!(
        failed
            .last_error
            .as_deref()
            .unwrap()
            .contains("AllocationFailed")
    );
    // Next pass: the failed VM is deleted in ARM.
    let s = rig.pass().await;
    assert_eq!((s.deleted, s.created), (1, 0), "{}", s.line());
    rig.advance(60);
    let s = rig.pass().await;
    assert_eq!(s.forgotten, 1, "{}", s.line());
    assert!(
        rig.cloud.get(failed.id.as_str()).unwrap().is_none(),
        "deleted in ARM"
    );
    rig.advance(180);
    rig.pass().await;
    assert_eq!(rig.count(VmState::Standby).await, 1);
    assert_eq!(rig.count(VmState::Failed).await, 0);
}

pub async fn a_create_that_times_out_fails(rig: Rig) {
    // VMPOOL_CREATE_TIMEOUT_SECS=120 with creates that take 150 s.
    rig.pass().await;
    rig.advance(121);
    let s = rig.pass().await;
    assert_eq!(s.failed, 1, "{}", s.line());
    let failed = rig
        .rows()
        .await
        .into_iter()
        .find(|vm| vm.state == VmState::Failed)
        .unwrap();
    assert!(failed.last_error.unwrap().contains("not running"));
}

pub async fn the_breaker_stops_creates_and_says_why(rig: Rig) {
    for _ in 0..4 {
        rig.cloud
            .inject(Fault::ProvisioningFails("QuotaExceeded: cores".into()));
    }
    rig.pass().await; // 2 creates
    rig.advance(180);
    rig.pass().await; // 2 failed (2 in a row), 2 replacements created
    rig.advance(180);
    rig.pass().await; // 2 more failed (4 in a row): the breaker opens
    let meta = rig.reconciler.record().await.unwrap();
    let breaker = meta.breaker("default");
    let until = breaker.open_until.expect("breaker open");
    assert!(until > rig.clock.now());
    assert!(breaker.reason.unwrap().contains("QuotaExceeded"));
    let creates_before = rig.cloud.calls().get("create").copied().unwrap_or(0);
    rig.advance(60);
    rig.pass().await;
    rig.advance(60);
    rig.pass().await;
    assert_eq!(
        rig.cloud.calls().get("create").copied().unwrap_or(0),
        creates_before,
        "no creates while open"
    );
    // After the cool-down a create is tried again and, succeeding, closes the breaker.
    rig.advance(700);
    rig.pass().await;
    rig.advance(180);
    rig.pass().await;
    let meta = rig.reconciler.record().await.unwrap();
    assert_eq!(meta.breaker("default").open_until, None, "{meta:?}");
    assert!(rig.count(VmState::Standby).await >= 1);
}

pub async fn drift_is_repaired(rig: Rig) {
    rig.pass().await;
    rig.advance(180);
    rig.pass().await;
    let standby = rig
        .rows()
        .await
        .into_iter()
        .filter(|vm| vm.state == VmState::Standby)
        .map(|vm| vm.id)
        .collect::<Vec<_>>();
    assert_eq!(standby.len(), 2);
    // One deleted behind our back, one deallocated in the portal.
    (rig.remove_behind_our_back)(standby[0].as_str());
    rig.cloud
        .force_power(standby[1].as_str(), Power::Deallocated);
    rig.advance(61);
    // The deleted one is failed once a GET answers 404; the listing shows no power state,
    // so the deallocated one is corrected by the next sweep.
    let s = rig.pass().await;
    assert_eq!((s.failed, s.corrected), (1, 0), "{}", s.line());
    rig.advance(300);
    let s = rig.pass().await;
    assert_eq!(s.corrected, 1, "{}", s.line());
    let rows = rig.rows().await;
    assert_eq!(
        rows.iter().find(|vm| vm.id == standby[1]).unwrap().state,
        VmState::Deallocated
    );
    // A pool VM with no row is adopted on the next sweep.
    rig.compute
        .create(
            &VmId::parse("ghost-1").unwrap(),
            &rig.pool.policy().pools.all()[0].vm(),
        )
        .await
        .unwrap();
    rig.advance(301);
    let s = rig.pass().await;
    assert_eq!(s.adopted, 1, "{}", s.line());
    assert!(
        rig.rows()
            .await
            .iter()
            .any(|vm| vm.id.as_str() == "ghost-1")
    );
}

pub async fn drained_vms_are_deallocated_after_the_drain_timeout(rig: Rig) {
    rig.pool.create_vm().await.unwrap();
    rig.pool.create_vm().await.unwrap();
    rig.advance(180);
    rig.pass().await;
    let ids = rig.available_ids().await;
    rig.pool.report_rooms(&ids[0], 0).await.unwrap();
    rig.pool.report_rooms(&ids[1], 4).await.unwrap();
    rig.pool.mark_for_deallocation(&ids[0]).await.unwrap();
    rig.pool.mark_for_deallocation(&ids[1]).await.unwrap();
    let state_of =
        |rows: Vec<VmRecord>, id: &VmId| rows.into_iter().find(|vm| vm.id == *id).unwrap().state;
    rig.advance(899);
    rig.pass().await;
    assert_eq!(
        state_of(rig.rows().await, &ids[0]),
        VmState::MarkedForDeallocation
    );
    rig.advance(2);
    rig.pass().await;
    assert_eq!(state_of(rig.rows().await, &ids[0]), VmState::Deallocating);
    assert_eq!(
        state_of(rig.rows().await, &ids[1]),
        VmState::MarkedForDeallocation
    );
    rig.advance(86_400);
    rig.pass().await;
    let rows = rig.rows().await;
    assert_eq!(
        rows.iter().find(|vm| vm.id == ids[0]).unwrap().state,
        VmState::Deallocated
    );
    assert_eq!(
        rows.iter().find(|vm| vm.id == ids[1]).unwrap().state,
        VmState::MarkedForDeallocation,
        "a VM with rooms is never touched"
    );
}

/// Every step with a row write before an ARM call, interrupted there; then one pass after the
/// grace period repairs it and the VM reaches the state the step was heading for.
pub async fn every_interrupted_step_is_repaired_by_one_pass(rig: Rig) {
    let (crash_pool, crash_reconciler, crashing) = rig.crashing();

    // 1. CreateVM, new VM: row written, ARM create never sent.
    interrupt(&crashing, crash_pool.create_vm()).await;
    let row = rig.rows().await.pop().unwrap();
    assert_eq!(row.state, VmState::Creating);
    assert!(rig.cloud.get(row.id.as_str()).unwrap().is_none());
    rig.advance(61);
    assert_eq!(
        rig.pass().await.reissued,
        0,
        "not while its CreateVM may still be running"
    );
    rig.advance(40);
    assert_eq!(rig.pass().await.reissued, 1);
    rig.advance(180);
    rig.pass().await;
    assert_eq!(
        rig.rows().await[0].state,
        VmState::Running,
        "a re-issue never changes whom the VM is for"
    );
    // Its caller never heard of it and never reports: the claim times out into the buffer.
    rig.advance(600);
    rig.pass().await;
    assert_eq!(rig.rows().await[0].state, VmState::Standby);
    let id = row.id;
    assert_eq!(
        rig.pool.create_vm().await.unwrap().action,
        CreateAction::Standby
    );

    // 2. ReportGameRoomsNumber 0 on a marked VM: Deallocating, ARM deallocate never sent.
    rig.pool.mark_for_deallocation(&id).await.unwrap();
    interrupt(&crashing, crash_pool.report_rooms(&id, 0)).await;
    assert_eq!(rig.rows().await[0].state, VmState::Deallocating);
    rig.advance(61);
    assert_eq!(rig.pass().await.reissued, 1);
    rig.advance(60);
    rig.pass().await;
    assert_eq!(rig.rows().await[0].state, VmState::Deallocated);

    // 3. CreateVM, start of a deallocated VM: Creating, ARM start never sent.
    interrupt(&crashing, crash_pool.create_vm()).await;
    assert_eq!(rig.rows().await[0].state, VmState::Creating);
    rig.advance(101);
    assert_eq!(rig.pass().await.reissued, 1);
    rig.advance(60);
    rig.pass().await;
    assert_eq!(rig.rows().await[0].state, VmState::Running);
    rig.advance(600);
    rig.pass().await;
    assert_eq!(rig.rows().await[0].state, VmState::Standby);
    assert_eq!(
        rig.pool.create_vm().await.unwrap().action,
        CreateAction::Standby
    );

    // 4. The reconciler's buffer create: row written, ARM create never sent.
    let buffered =
        interrupt_a_pass_then_repair(&rig, &[("VMPOOL_MIN_STANDBY", "1")], VmState::Creating, 180)
            .await;
    assert_eq!(buffered.count(VmState::Standby).await, 1);

    // 5. The reconciler's surplus deallocate: with no buffer wanted, the Standby VM goes.
    let surplus = interrupt_a_pass_then_repair(
        &rig,
        &[("VMPOOL_BUFFER_COOLDOWN_SECS", "0")],
        VmState::Deallocating,
        60,
    )
    .await;
    assert_eq!(surplus.count(VmState::Standby).await, 0);
    assert_eq!(surplus.count(VmState::Deallocating).await, 0);

    // 6. The delete of a failed VM: row says Delete, ARM delete never sent. (It runs, so
    // its game server first says no game is on it: a VM that may host one is never
    // deleted.)
    let running = rig
        .rows()
        .await
        .into_iter()
        .find(|vm| vm.state == VmState::Running)
        .unwrap();
    rig.pool.report_rooms(&running.id, 0).await.unwrap();
    let row = rig.store.get(&running.id).await.unwrap().unwrap();
    let failed = vmpool::domain::fail(&row.vm, "test failure", rig.clock.now());
    rig.store.update(&failed, &row.etag).await.unwrap();
    interrupt(&crashing, crash_reconciler.run_once()).await;
    let row = rig
        .rows()
        .await
        .into_iter()
        .find(|vm| vm.id == running.id)
        .unwrap();
    assert_eq!(row.operation, Some(vmpool::domain::Operation::Delete));
    assert!(
        rig.cloud.get(running.id.as_str()).unwrap().is_some(),
        "not deleted yet"
    );
    rig.advance(601);
    assert_eq!(rig.pass().await.deleted, 1);
    rig.advance(60);
    assert_eq!(rig.pass().await.forgotten, 1);
    assert!(rig.rows().await.iter().all(|vm| vm.id != running.id));
}

/// A reconcile pass over `rig`'s table and cloud, configured by `vars`, interrupted at its
/// first ARM call, leaves one row `in_flight`; one pass after the grace period re-issues the
/// call and, `settle` seconds later, another finishes it. Returns the rig with `vars`.
async fn interrupt_a_pass_then_repair(
    rig: &Rig,
    vars: &[(&str, &str)],
    in_flight: VmState,
    settle: i64,
) -> Rig {
    let mut other = Rig::over(
        config(vars),
        rig.store.clone(),
        rig.compute.clone(),
        rig.cloud.clone(),
        rig.clock.clone(),
    );
    other.reconciler = other.reconciler.with_holder(rig.reconciler.holder());
    let (_, crash_reconciler, crashing) = other.crashing();
    interrupt(&crashing, crash_reconciler.run_once()).await;
    assert_eq!(other.count(in_flight).await, 1);
    other.advance(61);
    assert_eq!(other.pass().await.reissued, 1);
    other.advance(settle);
    other.pass().await;
    other
}

pub async fn compute_faults_during_a_pass_are_retried_next_pass(rig: Rig) {
    (rig.fail_next_create)();
    let s = rig.pass().await;
    assert_eq!((s.created, s.errors), (0, 1), "{}", s.line());
    // The intent row stays (for the buffer) and is re-issued after the grace period.
    assert_eq!(rig.count(VmState::Creating).await, 1);
    rig.advance(61);
    assert_eq!(rig.pass().await.reissued, 1);
    rig.advance(180);
    rig.pass().await;
    assert_eq!(rig.count(VmState::Standby).await, 1);
}

/// Told that demand repeats hourly, the pass before a burst comes back starts the VMs the
/// last one took, the burst gets standby VMs, and nothing is launched as it takes them. The
/// claims are counted in the pool's record between passes (in the table on Azurite).
pub async fn a_burst_that_repeats_is_ready_before_it_comes_back(rig: Rig) {
    let burst = async || {
        let mut actions = Vec::new();
        for _ in 0..4 {
            actions.push(rig.pool.create_vm().await.unwrap().action);
        }
        actions
    };
    assert!(
        burst().await.iter().all(|a| *a != CreateAction::Standby),
        "nothing is ready for the first burst"
    );
    rig.pass().await;
    rig.advance(180);
    rig.pass().await;
    assert_eq!(rig.count(VmState::Running).await, 4);
    for vm in rig.rows().await {
        rig.pool.mark_for_deallocation(&vm.id).await.unwrap();
        rig.pool.report_rooms(&vm.id, 0).await.unwrap();
    }
    rig.advance(120);
    rig.pass().await;
    assert_eq!(rig.count(VmState::Deallocated).await, 4);
    // Passes through the hour; nothing is launched until the burst is near.
    for _ in 0..10 {
        rig.advance(300);
        let s = rig.pass().await;
        assert_eq!((s.started, s.created), (0, 0), "{}", s.line());
    }
    // 3,500 s after the burst: it comes back within two ready estimates (240 s).
    rig.advance(200);
    let s = rig.pass().await;
    assert_eq!((s.started, s.created), (4, 0), "{}", s.line());
    assert_eq!(s.buffer_target, 4, "{}", s.line());
    rig.advance(90);
    rig.pass().await;
    assert_eq!(rig.count(VmState::Standby).await, 4);
    rig.advance(15);
    assert_eq!(burst().await, [CreateAction::Standby; 4]);
    let s = rig.pass().await;
    assert_eq!((s.started, s.created), (0, 0), "{}", s.line());
}

// ---- every scenario on every rig ---------------------------------------------------------------

/// One test per scenario for a rig constructor, in a module named after the rig.
macro_rules! every_scenario {
    ($rig:path) => {
        #[tokio::test]
        async fn buffer_fills_is_taken_and_refills() {
            super::buffer_fills_is_taken_and_refills($rig(&[("VMPOOL_MIN_STANDBY", "2")]).await)
                .await;
        }

        #[tokio::test]
        async fn failures_are_recorded_cleaned_up_and_replaced() {
            super::failures_are_recorded_cleaned_up_and_replaced(
                $rig(&[("VMPOOL_MIN_STANDBY", "1")]).await,
            )
            .await;
        }

        #[tokio::test]
        async fn a_create_that_times_out_fails() {
            super::a_create_that_times_out_fails(
                $rig(&[
                    ("VMPOOL_MIN_STANDBY", "1"),
                    ("VMPOOL_CREATE_TIMEOUT_SECS", "120"),
                ])
                .await,
            )
            .await;
        }

        #[tokio::test]
        async fn the_breaker_stops_creates_and_says_why() {
            super::the_breaker_stops_creates_and_says_why(
                $rig(&[("VMPOOL_MIN_STANDBY", "2")]).await,
            )
            .await;
        }

        #[tokio::test]
        async fn drift_is_repaired() {
            super::drift_is_repaired($rig(&[("VMPOOL_MIN_STANDBY", "2")]).await).await;
        }

        #[tokio::test]
        async fn drained_vms_are_deallocated_after_the_drain_timeout() {
            super::drained_vms_are_deallocated_after_the_drain_timeout($rig(&[]).await).await;
        }

        #[tokio::test]
        async fn every_interrupted_step_is_repaired_by_one_pass() {
            super::every_interrupted_step_is_repaired_by_one_pass($rig(&[]).await).await;
        }

        #[tokio::test]
        async fn a_burst_that_repeats_is_ready_before_it_comes_back() {
            super::a_burst_that_repeats_is_ready_before_it_comes_back(
                $rig(&[
                    ("VMPOOL_DEMAND_PERIOD_SECS", "3600"),
                    ("VMPOOL_READY_ESTIMATE_SECS", "120"),
                ])
                .await,
            )
            .await;
        }

        #[tokio::test]
        async fn compute_faults_during_a_pass_are_retried_next_pass() {
            super::compute_faults_during_a_pass_are_retried_next_pass(
                $rig(&[("VMPOOL_MIN_STANDBY", "1")]).await,
            )
            .await;
        }
    };
}

/// In memory, simulated ARM.
async fn sim_rig(vars: &[(&str, &str)]) -> Rig {
    Rig::sim(vars)
}

mod sim {
    every_scenario!(super::sim_rig);
}

mod arm {
    every_scenario!(crate::support::Rig::arm);
}

mod azure {
    every_scenario!(crate::support::Rig::azure);
}

#[tokio::test]
async fn a_stopping_instance_gives_up_the_lease_so_another_takes_the_next_pass_at_once() {
    let rig = Rig::sim(&[]);
    let other = Rig::over(
        config(&[]),
        rig.store.clone(),
        rig.compute.clone(),
        rig.cloud.clone(),
        rig.clock.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(vmpool::startup::run(
        listener,
        rig.state.clone(),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    assert!(!rig.pass().await.skipped);
    assert!(
        other.pass().await.skipped,
        "the first instance holds the lease"
    );
    // A graceful stop (SIGTERM): the lease is given up, and the other instance's next pass
    // runs without waiting for it to run out (the clock has not moved).
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
    assert!(!other.pass().await.skipped);
}
