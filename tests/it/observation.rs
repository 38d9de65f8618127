//! The reconciler acts only on what it has confirmed, proved with the real ARM client against
//! the ARM fake over HTTP on virtual time: a power sweep on a lagging Resource Graph, VMs
//! hidden from the listings, listings that end early, a VM really deleted, quota refusals on re-issue, safe
//! adoption, public IPs behind names nobody can guess, and the reconcile lease shared by
//! several instances on one Azurite table.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::join_all;
use serde_json::Value;
use vmpool::clock::Clock;
use vmpool::compute::{ComputeError, Listed, VmStatus};
use vmpool::domain::{CreateAction, VmId, VmRecord, VmState};
use vmpool::reconcile::Reconciler;
use vmpool_arm_fake::{ArmFake, FakeOp, HttpFault};

use crate::support::{Rig, table_store_named};

async fn row(rig: &Rig, id: &VmId) -> Option<VmRecord> {
    rig.rows().await.into_iter().find(|vm| vm.id == *id)
}

/// Passes every 10 s for `secs` seconds; returns every summary line.
async fn passes_for(rig: &Rig, secs: i64) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..secs / 10 {
        rig.advance(10);
        lines.push(rig.pass().await.line());
    }
    lines
}

/// Requests of `op` the fake answered for a path naming `vm`.
fn touched(fake: &ArmFake, op: FakeOp, vm: &VmId) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.op == Some(op) && r.path.contains(&format!("/{vm}")))
        .count()
}

/// `n` VMs handed to the matchmaker and running, with 2 rooms each.
async fn running(rig: &Rig, n: usize) -> Vec<VmId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(rig.pool.create_vm().await.unwrap().vm.id);
    }
    rig.advance(180);
    rig.pass().await;
    for id in &ids {
        rig.pool.report_rooms(id, 2).await.unwrap();
    }
    ids
}

async fn pool_status(rig: &Rig) -> Value {
    let app = crate::support::serve(rig.state.clone()).await;
    app.status().await.json
}

#[tokio::test]
async fn a_whole_lifecycle_with_a_lagging_resource_graph_sweep() {
    let rig = Rig::arm(&[("VMPOOL_MIN_STANDBY", "1")]).await;
    let f = rig.fake();
    assert!(f.settings().graph_lag_secs > 0);
    rig.pass().await;
    rig.advance(180);
    let s = rig.pass().await;
    assert_eq!(s.completed, 1, "{}", s.line());
    // The sweep is a Resource Graph query: tags and power states, a few seconds late.
    let listed = rig.compute.list_power().await.unwrap();
    assert!(listed.iter().all(|l| l.tagged && l.status.is_up()));
    assert!(!f.accepted(FakeOp::GraphQuery).is_empty());
    // Buffer, claim, mark, drain, deallocate, start again, with sweeps that lag.
    let taken = rig.pool.create_vm().await.unwrap();
    assert_eq!(taken.action, CreateAction::Standby);
    rig.pool.report_rooms(&taken.vm.id, 3).await.unwrap();
    rig.pool.mark_for_deallocation(&taken.vm.id).await.unwrap();
    rig.pool.report_rooms(&taken.vm.id, 0).await.unwrap();
    rig.advance(180);
    rig.pass().await;
    rig.advance(180);
    rig.pass().await;
    assert_eq!(
        row(&rig, &taken.vm.id).await.unwrap().state,
        VmState::Deallocated
    );
    assert_eq!(rig.count(VmState::Standby).await, 1, "the buffer refilled");
    let again = rig.pool.create_vm().await.unwrap();
    assert_eq!(again.action, CreateAction::Standby);
    rig.advance(60);
    rig.pass().await;
    assert_eq!(rig.count(VmState::Failed).await, 0);
}

#[tokio::test]
async fn one_vm_hidden_from_the_lists_for_two_minutes_stays_running() {
    let rig = Rig::arm(&[]).await;
    let f = rig.fake();
    let ids = running(&rig, 3).await;
    f.hide(Some(ids[0].as_str()), 120);
    f.short_pages(2);
    for line in passes_for(&rig, 150).await {
        assert!(!line.contains(" 1 failed"), "{line}");
        assert_eq!(row(&rig, &ids[0]).await.unwrap().state, VmState::Running);
    }
    for id in &ids {
        assert_eq!(row(&rig, id).await.unwrap().state, VmState::Running);
        assert_eq!(touched(&f, FakeOp::DeleteVm, id), 0);
        assert_eq!(touched(&f, FakeOp::Deallocate, id), 0);
    }
    assert!(
        touched(&f, FakeOp::GetVm, &ids[0]) > 0,
        "its absence was checked with a GET"
    );
}

#[tokio::test]
async fn every_vm_hidden_for_two_minutes_brakes_then_everything_resumes() {
    let rig = Rig::arm(&[("VMPOOL_MIN_STANDBY", "2")]).await;
    let f = rig.fake();
    let ids = running(&rig, 3).await;
    rig.advance(180);
    rig.pass().await;
    let before = rig.rows().await;
    assert_eq!(before.len(), 5);
    f.hide(None, 120);
    rig.advance(61);
    let s = rig.pass().await;
    assert_eq!(s.vanished, 5, "{}", s.line());
    let status = pool_status(&rig).await;
    assert_eq!(
        status["observation"],
        serde_json::json!({"suspect": true, "missing": 5})
    );
    passes_for(&rig, 60).await;
    let during = rig.rows().await;
    assert_eq!(during.len(), 5, "no row forgotten");
    assert!(during.iter().all(|vm| vm.state != VmState::Failed));
    assert_eq!(
        during.iter().map(|vm| vm.state).collect::<Vec<_>>(),
        before.iter().map(|vm| vm.state).collect::<Vec<_>>(),
        "no row changed"
    );
    for id in &ids {
        assert_eq!(touched(&f, FakeOp::DeleteVm, id), 0);
    }
    // The lists come back: the brake lets go, and the pool works again.
    passes_for(&rig, 30).await;
    let status = pool_status(&rig).await;
    assert_eq!(status["observation"]["suspect"], false);
    let taken = rig.pool.create_vm().await.unwrap();
    assert_eq!(taken.action, CreateAction::Standby);
    rig.pass().await;
    rig.advance(180);
    rig.pass().await;
    assert_eq!(rig.count(VmState::Standby).await, 2, "the buffer refilled");
}

#[tokio::test]
async fn a_vm_really_deleted_leaves_the_available_list_after_a_404() {
    let rig = Rig::arm(&[]).await;
    let f = rig.fake();
    let ids = running(&rig, 2).await;
    f.delete_behind_our_back(ids[0].as_str());
    f.clear_requests();
    rig.advance(30);
    rig.pass().await;
    assert_eq!(
        rig.pool.available().await.unwrap().len(),
        2,
        "within the grace nothing is concluded"
    );
    rig.advance(31);
    rig.pass().await;
    let available = rig.available_ids().await;
    assert_eq!(available, [ids[1].clone()]);
    let gets: Vec<u16> = f
        .requests()
        .iter()
        .filter(|r| r.op == Some(FakeOp::GetVm) && r.path.ends_with(ids[0].as_str()))
        .map(|r| r.status)
        .collect();
    assert_eq!(gets, [404], "failed only after a GET answered 404");
    let failed = row(&rig, &ids[0]).await.unwrap();
    assert_eq!(failed.state, VmState::Failed);
    // Then forgotten, again after a 404.
    rig.advance(10);
    rig.pass().await;
    assert!(row(&rig, &ids[0]).await.is_none());
}

#[tokio::test]
async fn a_create_refused_for_quota_ends_failed_after_its_attempts_and_the_breaker_counts_it() {
    let rig = Rig::arm(&[("VMPOOL_BREAKER_FAILURES", "3")]).await;
    let f = rig.fake();
    // The first PUT meets a 503 (the caller gets it; the row is kept for the buffer), then
    // every re-issue is refused for quota.
    f.fail_next(FakeOp::PutVm, 3, HttpFault::server_error());
    assert!(rig.pool.create_vm().await.is_err());
    let id = rig.rows().await[0].id.clone();
    f.fail_next(FakeOp::PutVm, 100, HttpFault::quota_exceeded());
    let mut refusals = 0;
    for _ in 0..10 {
        rig.advance(61);
        let s = rig.pass().await;
        refusals += s.errors;
        if row(&rig, &id).await.unwrap().state == VmState::Failed {
            break;
        }
    }
    let failed = row(&rig, &id).await.unwrap();
    assert_eq!(failed.state, VmState::Failed);
    assert_eq!(failed.attempts, vmpool::reconcile::MAX_ATTEMPTS);
    assert_eq!(refusals, 2, "two re-issues, both refused");
    let meta = rig.reconciler.record().await.unwrap();
    let breaker = meta.breaker("default");
    assert_eq!(breaker.consecutive_failures, 3, "{meta:?}");
    assert!(breaker.open_at(rig.clock.now()));
    assert!(
        breaker
            .reason
            .unwrap()
            .contains("3 starts or creates refused in a row")
    );
    assert!(
        failed.last_error.unwrap().contains("OperationNotAllowed"),
        "the failure says why"
    );
}

#[tokio::test]
async fn a_create_that_never_completes_fails_at_the_timeout_from_its_first_issue() {
    let rig = Rig::arm(&[("VMPOOL_CREATE_TIMEOUT_SECS", "150")]).await;
    let f = rig.fake();
    f.fail_next(FakeOp::PutVm, 3, HttpFault::server_error());
    assert!(rig.pool.create_vm().await.is_err());
    let id = rig.rows().await[0].id.clone();
    // Each re-issue is lost (the PUT never lands): the clock still runs from the first.
    f.fail_next(FakeOp::PutVm, 100, HttpFault::server_error());
    rig.advance(61);
    rig.pass().await;
    rig.advance(61);
    rig.pass().await;
    assert_eq!(row(&rig, &id).await.unwrap().state, VmState::Creating);
    rig.advance(30);
    rig.pass().await;
    let failed = row(&rig, &id).await.unwrap();
    assert_eq!(failed.state, VmState::Failed, "{failed:?}");
    assert!(failed.last_error.unwrap().contains("first issued"));
}

#[tokio::test]
async fn an_adopted_vm_with_rooms_is_never_handed_out_as_empty() {
    let rig = Rig::arm(&[]).await;
    let ghost = VmId::parse("vmpool-ghost").unwrap();
    rig.compute
        .create(&ghost, &crate::support::arm::spec())
        .await
        .unwrap();
    rig.advance(180);
    // The first pass sweeps (it has never swept) and adopts it.
    let s = rig.pass().await;
    assert_eq!(s.adopted, 1, "{}", s.line());
    let adopted = row(&rig, &ghost).await.unwrap();
    assert_eq!(adopted.state, VmState::Running);
    assert_eq!(adopted.claimed_at, None);
    // CreateVM never hands it out; the reconciler never deallocates it, however long.
    let taken = rig.pool.create_vm().await.unwrap();
    assert_ne!(taken.vm.id, ghost);
    for _ in 0..12 {
        rig.advance(600);
        rig.pass().await;
    }
    let kept = row(&rig, &ghost).await.unwrap();
    assert_eq!(kept.state, VmState::Running, "{kept:?}");
    // Its game server reports rooms; marked, it drains and is never reclaimed as empty.
    rig.pool.report_rooms(&ghost, 5).await.unwrap();
    rig.pool.mark_for_deallocation(&ghost).await.unwrap();
    rig.advance(3600);
    rig.pass().await;
    assert_eq!(
        row(&rig, &ghost).await.unwrap().state,
        VmState::MarkedForDeallocation
    );
    let again = rig.pool.create_vm().await.unwrap();
    if again.vm.id == ghost {
        assert_eq!((again.action, again.vm.rooms), (CreateAction::Reclaimed, 5));
    }
}

#[tokio::test]
async fn the_public_ip_is_found_behind_names_nobody_can_guess() {
    let rig = Rig::arm(&[]).await;
    let f = rig.fake();
    let created = rig.pool.create_vm().await.unwrap();
    let id = created.vm.id.clone();
    // The NIC cannot be read when the VM completes: it completes without an IP...
    f.fail_next(FakeOp::GetNic, 3, HttpFault::server_error());
    rig.advance(180);
    let s = rig.pass().await;
    assert_eq!(s.completed, 1, "{}", s.line());
    let done = row(&rig, &id).await.unwrap();
    assert_eq!((done.state, done.public_ip), (VmState::Running, None));
    // ...and the next pass reads it again.
    rig.advance(10);
    let s = rig.pass().await;
    assert_eq!(s.ips_found, 1, "{}", s.line());
    let ip = f.cloud().get(id.as_str()).unwrap().unwrap().public_ip;
    assert_eq!(row(&rig, &id).await.unwrap().public_ip, ip);
    for r in f.accepted(FakeOp::GetPublicIp) {
        assert!(!r.path.contains(id.as_str()), "no guessed name: {}", r.path);
    }
}

#[tokio::test]
async fn concurrent_passes_in_one_process_run_one_after_another() {
    let rig = Rig::arm(&[("VMPOOL_MIN_STANDBY", "1")]).await;
    let passes = (0..20).map(|_| rig.reconciler.run_once());
    let summaries: Vec<_> = join_all(passes).await;
    let created: u32 = summaries.iter().map(|s| s.as_ref().unwrap().created).sum();
    assert_eq!(created, 1);
    assert_eq!(rig.fake().accepted(FakeOp::PutVm).len(), 1);
}

/// `n` instances with reconcile loops on one Azurite table, one ARM (fake) and one clock.
async fn instances_on_one_table_create_exactly_the_buffer_target(n: usize) {
    let store: Arc<dyn vmpool::store::VmStore> = table_store_named("lease").await;
    let vars = [("VMPOOL_MIN_STANDBY", "2")];
    let first = Rig::arm_on(store.clone(), &vars).await;
    let reconcilers: Vec<Reconciler> = (0..n)
        .map(|_| {
            // One more instance: its own pool and reconciler over the same table and ARM.
            Rig::over(
                first.config.clone(),
                store.clone(),
                first.compute.clone(),
                first.cloud.clone(),
                first.clock.clone(),
            )
            .reconciler
        })
        .collect();
    let mut ran_by: HashSet<String> = HashSet::new();
    for _ in 0..60 {
        let summaries = join_all(reconcilers.iter().map(Reconciler::run_once)).await;
        let ran: Vec<usize> = summaries
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.as_ref().unwrap().skipped)
            .map(|(i, _)| i)
            .collect();
        assert!(ran.len() <= 1, "passes overlapped: {ran:?}");
        ran_by.extend(ran.iter().map(|i| reconcilers[*i].holder().to_owned()));
        first.advance(10);
    }
    let f = first.fake();
    assert_eq!(
        f.accepted(FakeOp::PutVm).len(),
        2,
        "exactly the buffer target"
    );
    assert!(f.accepted(FakeOp::Deallocate).is_empty(), "no churn");
    assert!(f.accepted(FakeOp::DeleteVm).is_empty(), "no churn");
    assert_eq!(first.count(VmState::Standby).await, 2);
    assert_eq!(ran_by.len(), 1, "one instance held the lease throughout");
}

#[tokio::test]
async fn two_instances_on_one_table_create_exactly_the_buffer_target() {
    instances_on_one_table_create_exactly_the_buffer_target(2).await;
}

#[tokio::test]
async fn three_instances_on_one_table_create_exactly_the_buffer_target() {
    instances_on_one_table_create_exactly_the_buffer_target(3).await;
}

#[tokio::test]
async fn another_instance_takes_over_once_the_lease_expires() {
    let rig = Rig::arm(&[("VMPOOL_MIN_STANDBY", "1")]).await;
    let other = Reconciler::new(rig.pool.clone());
    assert!(!rig.pass().await.skipped);
    assert!(other.run_once().await.unwrap().skipped);
    // The holder stops (a crash): after the lease's expiry the other runs the passes.
    rig.advance(vmpool::reconcile::DEFAULT_LEASE_TTL.whole_seconds() + 1);
    assert!(!other.run_once().await.unwrap().skipped);
    assert!(rig.pass().await.skipped);
}

#[tokio::test]
async fn a_pass_reads_the_listing_pages_and_only_the_vms_in_flight() {
    let rig = Rig::arm(&[("VMPOOL_ADOPT_EVERY_SECS", "3600")]).await;
    let f = rig.fake();
    running(&rig, 6).await;
    // Two in flight: one create, one deallocate.
    rig.pool.create_vm().await.unwrap();
    let leaving = rig.pool.available().await.unwrap()[0].id.clone();
    rig.pool.mark_for_deallocation(&leaving).await.unwrap();
    rig.pool.report_rooms(&leaving, 0).await.unwrap();
    f.clear_requests();
    rig.advance(10);
    let s = rig.pass().await;
    let reads = |op| f.requests().iter().filter(|r| r.op == Some(op)).count();
    assert_eq!(reads(FakeOp::ListVms), 1, "8 VMs fit one page");
    assert!(
        f.requests()
            .iter()
            .filter(|r| r.op == Some(FakeOp::ListVms))
            .all(|r| r.path.contains("/resourceGroups/")),
        "scoped to the pool's resource group"
    );
    assert!(reads(FakeOp::GetVm) <= 2, "{}", s.line());
    assert_eq!(u32::try_from(reads(FakeOp::GetVm)).unwrap(), s.point_reads);
    assert_eq!(reads(FakeOp::GraphQuery), 0, "no sweep between sweeps");

    // The subscription also holds 3,000 VMs that are not the pool's.
    let base = rig.fake_base();
    let mut elsewhere = crate::support::arm::arm_config(&base, crate::support::arm::TOKEN);
    elsewhere.resource_group = "other-team".into();
    let theirs =
        vmpool::compute::arm::ArmCompute::new(&elsewhere, "theirs", crate::support::arm::quick())
            .unwrap();
    let made: Vec<Result<(), ComputeError>> = futures::stream::iter(0..3000)
        .map(|n| {
            let theirs = &theirs;
            async move {
                vmpool::compute::Compute::create(
                    theirs,
                    &VmId::parse(&format!("theirs-{n:04}")).unwrap(),
                    &crate::support::arm::spec(),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(made.iter().all(Result::is_ok));
    // A sweep pass reads one Resource Graph page for the pool's 8 VMs, and no
    // subscription-wide list.
    let in_flight = rig
        .rows()
        .await
        .iter()
        .filter(|vm| matches!(vm.state, VmState::Creating | VmState::Deallocating))
        .count();
    f.clear_requests();
    rig.advance(3600);
    let s = rig.pass().await;
    assert_eq!(
        reads(FakeOp::GraphQuery),
        1,
        "one page per 1,000 pool VMs: {}",
        s.line()
    );
    let graph = f.accepted(FakeOp::GraphQuery);
    assert!(
        graph[0].body.as_ref().unwrap()["query"]
            .as_str()
            .unwrap()
            .contains("resourceGroup =~ 'games'"),
        "scoped to the pool's resource group"
    );
    assert_eq!(reads(FakeOp::ListVms), 1, "{}", s.line());
    assert!(
        f.requests()
            .iter()
            .filter(|r| r.op == Some(FakeOp::ListVms))
            .all(|r| r.path.contains("/resourceGroups/")),
        "no subscription-wide list"
    );
    // Point reads only for the VMs in flight; the VMs that completed are also read once for
    // their public IP (VM, NIC, address).
    assert!(s.point_reads as usize <= in_flight, "{}", s.line());
    assert_eq!(
        reads(FakeOp::GetVm),
        s.point_reads as usize + reads(FakeOp::GetNic),
        "{}",
        s.line()
    );
    assert_eq!(s.errors, 0, "{}", s.line());
    assert_eq!(s.adopted, 0, "their VMs are not adopted: {}", s.line());
}

#[tokio::test]
async fn a_claim_never_used_goes_back_to_the_buffer() {
    let rig = Rig::arm(&[
        ("VMPOOL_MIN_STANDBY", "1"),
        ("VMPOOL_CLAIM_TIMEOUT_SECS", "600"),
    ])
    .await;
    rig.pass().await;
    rig.advance(180);
    rig.pass().await;
    let used = rig.pool.create_vm().await.unwrap().vm.id;
    rig.pool.report_rooms(&used, 1).await.unwrap();
    rig.pass().await;
    rig.advance(180);
    rig.pass().await;
    let unused = rig.pool.create_vm().await.unwrap();
    assert_eq!(unused.action, CreateAction::Standby);
    let unused = unused.vm.id;
    rig.advance(599);
    rig.pass().await;
    assert_eq!(row(&rig, &unused).await.unwrap().state, VmState::Running);
    rig.advance(1);
    let s = rig.pass().await;
    assert_eq!(s.unclaimed, 1, "{}", s.line());
    assert_eq!(row(&rig, &unused).await.unwrap().state, VmState::Standby);
    assert_eq!(row(&rig, &used).await.unwrap().state, VmState::Running);
}

/// A compute API whose power sweep ARM refuses (Resource Graph denies the query).
struct NoSweep(Arc<dyn vmpool::compute::Compute>);

#[async_trait::async_trait]
impl vmpool::compute::Compute for NoSweep {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn resource_id(&self, name: &VmId) -> String {
        self.0.resource_id(name)
    }
    async fn create(
        &self,
        name: &VmId,
        pool: &vmpool::compute::VmSpec,
    ) -> Result<(), ComputeError> {
        self.0.create(name, pool).await
    }
    async fn start(&self, name: &VmId) -> Result<(), ComputeError> {
        self.0.start(name).await
    }
    async fn deallocate(&self, name: &VmId) -> Result<(), ComputeError> {
        self.0.deallocate(name).await
    }
    async fn delete(&self, name: &VmId) -> Result<(), ComputeError> {
        self.0.delete(name).await
    }
    async fn status(&self, name: &VmId) -> Result<Option<VmStatus>, ComputeError> {
        self.0.status(name).await
    }
    async fn list(&self) -> Result<Vec<Listed>, ComputeError> {
        self.0.list().await
    }
    async fn list_power(&self) -> Result<Vec<Listed>, ComputeError> {
        Err(ComputeError::Rejected {
            code: "AuthorizationFailed".into(),
            message: "no read access to the pool's VMs".into(),
        })
    }
    async fn public_ip(&self, name: &VmId) -> Result<Option<String>, ComputeError> {
        self.0.public_ip(name).await
    }
    async fn image(&self, name: &VmId) -> Result<Option<vmpool::compute::Image>, ComputeError> {
        self.0.image(name).await
    }
}

#[tokio::test]
async fn a_refused_sweep_delays_drift_repair_but_not_the_pass() {
    let sim = Rig::sim(&[("VMPOOL_MIN_STANDBY", "1")]);
    let rig = Rig::over(
        sim.config.clone(),
        sim.store.clone(),
        Arc::new(NoSweep(sim.compute.clone())),
        sim.cloud.clone(),
        sim.clock.clone(),
    );
    let s = rig.pass().await;
    assert_eq!((s.created, s.errors), (1, 1), "{}", s.line());
    rig.advance(180);
    let s = rig.pass().await;
    assert_eq!(s.completed, 1, "{}", s.line());
    assert_eq!(rig.count(VmState::Standby).await, 1);
}

/// The VM `vm` as GetPoolStatus shows it (over HTTP), with the answer's top level.
async fn status_of(rig: &Rig, vm: &VmId) -> (Value, Value) {
    let status = pool_status(rig).await;
    let shown = status["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vmId"] == vm.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    (shown, status)
}

#[tokio::test]
async fn a_resource_graph_sweep_minutes_behind_never_undoes_a_restart_a_point_read_shows() {
    let rig = Rig::arm(&[("VMPOOL_ADOPT_EVERY_SECS", "10")]).await;
    let f = rig.fake();
    // A VM plays a match, drains, and is deallocated.
    let id = rig.pool.create_vm().await.unwrap().vm.id;
    rig.advance(180);
    rig.pass().await;
    rig.pool.report_rooms(&id, 2).await.unwrap();
    rig.pool.mark_for_deallocation(&id).await.unwrap();
    rig.pool.report_rooms(&id, 0).await.unwrap();
    rig.advance(90);
    rig.pass().await;
    assert_eq!(row(&rig, &id).await.unwrap().state, VmState::Deallocated);
    // Resource Graph falls two and a half minutes behind (a backend disruption) while the
    // VM is started again for the next match and a game begins on it.
    f.set_graph_lag(150);
    rig.advance(10);
    let again = rig.pool.create_vm().await.unwrap();
    assert_eq!((again.action, &again.vm.id), (CreateAction::Started, &id));
    rig.advance(70);
    rig.pass().await;
    assert_eq!(row(&rig, &id).await.unwrap().state, VmState::Running);
    rig.pool.report_rooms(&id, 3).await.unwrap();
    f.clear_requests();
    // Every pass sweeps, and for two minutes the sweep says the VM is deallocated.
    for line in passes_for(&rig, 150).await {
        let vm = row(&rig, &id).await.unwrap();
        assert_eq!((vm.state, vm.rooms), (VmState::Running, 3), "{line}");
    }
    assert!(
        touched(&f, FakeOp::GetVm, &id) > 0,
        "the contradiction was checked with a point read"
    );
    // Its game server's reports are taken, and the next match gets another VM.
    rig.pool.report_rooms(&id, 4).await.unwrap();
    let next = rig.pool.create_vm().await.unwrap();
    assert_ne!(
        next.vm.id, id,
        "the VM in use is not started for a second match"
    );
    assert_eq!(touched(&f, FakeOp::Deallocate, &id), 0);

    // Real drift: someone deallocates it in the portal. Only once a point read shows it
    // is the row corrected, to what the read shows.
    f.set_graph_lag(5);
    f.cloud()
        .force_power(id.as_str(), vmpool::compute::Power::Deallocated);
    f.clear_requests();
    passes_for(&rig, 80).await;
    assert_eq!(row(&rig, &id).await.unwrap().state, VmState::Deallocated);
    assert!(touched(&f, FakeOp::GetVm, &id) > 0);
}

#[tokio::test]
async fn a_failed_extension_on_a_vm_in_use_keeps_it_and_shows_it_unhealthy() {
    let rig = Rig::arm(&[]).await;
    let f = rig.fake();
    let id = rig.pool.create_vm().await.unwrap().vm.id;
    rig.advance(180);
    rig.pass().await;
    rig.pool.mark_for_deallocation(&id).await.unwrap();
    rig.pool.report_rooms(&id, 0).await.unwrap();
    rig.advance(90);
    rig.pass().await;
    // Started again for a match; its game server reports a room while it boots, and a VM
    // extension fails: ARM says provisioning Failed while the VM runs and serves.
    let again = rig.pool.create_vm().await.unwrap();
    assert_eq!((again.action, &again.vm.id), (CreateAction::Started, &id));
    rig.pool.report_rooms(&id, 2).await.unwrap();
    assert!(f.extension_fails(
        id.as_str(),
        "VMExtensionProvisioningError",
        "VM has reported a failure when processing extension 'gameserver'."
    ));
    f.clear_requests();
    for line in passes_for(&rig, 1200).await {
        assert!(!line.contains(" 1 deleted"), "{line}");
    }
    assert_eq!(touched(&f, FakeOp::DeleteVm, &id), 0, "a game runs on it");
    assert_eq!(touched(&f, FakeOp::Deallocate, &id), 0, "a game runs on it");
    let (shown, status) = status_of(&rig, &id).await;
    assert_eq!(shown["state"], "Running", "{shown}");
    assert!(
        shown["unhealthy"]
            .as_str()
            .is_some_and(|why| why.contains("VMExtensionProvisioningError")),
        "{shown}"
    );
    assert_eq!(status["unhealthy"], 1, "{status}");
    let app = crate::support::serve(rig.state.clone()).await;
    let metrics = app
        .http
        .get(format!("{}/api/Metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("vmpool_vms_unhealthy 1"), "{metrics}");
    // Reports still count, and once its rooms are reported 0 it is cleaned up.
    rig.pool.report_rooms(&id, 1).await.unwrap();
    rig.pool.mark_for_deallocation(&id).await.unwrap();
    rig.pool.report_rooms(&id, 0).await.unwrap();
    assert_eq!(touched(&f, FakeOp::Deallocate, &id), 1);

    // An untracked pool VM running with a failed extension is adopted with unknown rooms,
    // never as Failed, and never deleted on what a listing shows.
    let ghost = VmId::parse("vmpool-ghost").unwrap();
    rig.compute
        .create(&ghost, &rig.pool.policy().pools.all()[0].vm())
        .await
        .unwrap();
    rig.advance(180);
    assert!(f.extension_fails(ghost.as_str(), "VMExtensionProvisioningError", ""));
    rig.advance(400);
    for _ in 0..6 {
        rig.advance(300);
        rig.pass().await;
    }
    let adopted = row(&rig, &ghost).await.expect("adopted");
    assert_eq!(adopted.state, VmState::Running, "{adopted:?}");
    assert_eq!(touched(&f, FakeOp::DeleteVm, &ghost), 0);
    let taken = rig.pool.create_vm().await.unwrap();
    assert_ne!(taken.vm.id, ghost, "an unhealthy VM is never handed out");
}

#[tokio::test]
async fn a_resource_group_not_found_answer_is_not_absence() {
    let rig = Rig::arm(&[]).await;
    let f = rig.fake();
    let ids = running(&rig, 3).await;
    // One VM drops out of the listings, and its point reads are answered about the
    // resource group (replication lag, a configuration error), not about the VM.
    f.hide(Some(ids[0].as_str()), 3600);
    f.fail_next(
        FakeOp::GetVm,
        1000,
        HttpFault::resource_group_not_found("games"),
    );
    // Short of five minutes: the Resource Graph sweep (every five minutes) would show the VM,
    // and a VM a sweep shows needs no point read that pass.
    passes_for(&rig, 290).await;
    let kept = row(&rig, &ids[0]).await.expect("not forgotten");
    assert_eq!(kept.state, VmState::Running, "{kept:?}");
    assert_eq!(touched(&f, FakeOp::DeleteVm, &ids[0]), 0);
    assert!(
        f.requests()
            .iter()
            .any(|r| r.op == Some(FakeOp::GetVm) && r.status == 404),
        "the point reads were answered 404"
    );
    let status = pool_status(&rig).await;
    assert_eq!(status["observation"]["suspect"], true, "{status}");
    assert!(
        status["observation"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ResourceGroupNotFound")),
        "{status}"
    );

    // The listing itself answered so: the pass stops, and says why.
    let rig = Rig::arm(&[]).await;
    let f = rig.fake();
    running(&rig, 1).await;
    f.fail_next(
        FakeOp::ListVms,
        1,
        HttpFault::resource_group_not_found("games"),
    );
    rig.advance(10);
    assert!(rig.reconciler.run_once().await.is_err());
    let status = pool_status(&rig).await;
    assert_eq!(status["observation"]["suspect"], true, "{status}");
    assert!(
        status["observation"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("listing") && r.contains("ResourceGroupNotFound")),
        "{status}"
    );
    rig.advance(10);
    rig.pass().await;
    assert_eq!(pool_status(&rig).await["observation"]["suspect"], false);
}

#[tokio::test]
async fn while_the_brake_holds_neither_the_drain_safety_net_nor_unused_claims_act() {
    // No Resource Graph sweep in the window: the listings are the whole view.
    let rig = Rig::arm(&[
        ("VMPOOL_CLAIM_TIMEOUT_SECS", "600"),
        ("VMPOOL_ADOPT_EVERY_SECS", "7200"),
    ])
    .await;
    let f = rig.fake();
    let ids = running(&rig, 3).await;
    // One VM was handed out and has not been reported on yet.
    let unused = rig.pool.create_vm().await.unwrap().vm.id;
    rig.advance(180);
    rig.pass().await;
    assert_eq!(row(&rig, &unused).await.unwrap().state, VmState::Running);
    // One match is over: its server said 0 rooms, and the matchmaker marked it.
    rig.pool.report_rooms(&ids[0], 0).await.unwrap();
    rig.pool.mark_for_deallocation(&ids[0]).await.unwrap();
    let before = rig.rows().await;
    // Every VM vanishes from the listings for half an hour: the brake holds, past the drain
    // timeout (900 s) and the claim timeout (600 s).
    f.hide(None, 1800);
    f.clear_requests();
    for _ in 0..25 {
        rig.advance(60);
        let s = rig.pass().await;
        assert!(s.vanished > 0, "{}", s.line());
    }
    for vm in &before {
        let now = row(&rig, &vm.id).await.unwrap();
        if vm.state != VmState::Creating {
            assert_eq!(&now, vm, "no settled row changed");
        }
    }
    assert_eq!(
        row(&rig, &ids[0]).await.unwrap().state,
        VmState::MarkedForDeallocation
    );
    assert_eq!(row(&rig, &unused).await.unwrap().state, VmState::Running);
    assert!(f.accepted(FakeOp::Deallocate).is_empty());
    assert!(f.accepted(FakeOp::DeleteVm).is_empty());
    assert_eq!(pool_status(&rig).await["observation"]["suspect"], true);
}
