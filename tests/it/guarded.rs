//! Destructive steps wait for confirmation, proved with the real ARM client against the ARM
//! fake over HTTP on virtual time: a refused start leaves the VM deallocated and opens the
//! breaker, a VM claimed for a caller keeps its purpose, every retry is bounded, a lease
//! that cannot be renewed stops its pass, stale room reports change nothing, and an unused
//! claim is counted and logged.

use serde_json::{Value, json};
use vmpool::domain::{CreateAction, VmId, VmRecord, VmState};
use vmpool_arm_fake::{ArmFake, FakeOp};

use crate::support::{Answer, Rig, TestApp};

async fn row(rig: &Rig, id: &VmId) -> Option<VmRecord> {
    rig.rows().await.into_iter().find(|vm| vm.id == *id)
}

/// Requests of `op` the fake answered for a path naming `vm`.
fn touched(fake: &ArmFake, op: FakeOp, vm: &VmId) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.op == Some(op) && r.path.contains(&format!("/{vm}")))
        .count()
}

async fn report(app: &TestApp, body: Value) -> Answer {
    app.send(
        "POST",
        "/api/ReportGameRoomsNumber",
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test]
async fn a_late_zero_report_after_a_mark_changes_nothing() {
    let rig = Rig::arm(&[]).await;
    let f = rig.fake();
    let app = crate::support::serve(rig.state.clone()).await;
    let id = rig.pool.create_vm().await.unwrap().vm.id;
    rig.advance(180);
    rig.pass().await;
    let vm = id.as_str();

    // By sequence number: the game server sent 0 (seq 1), then 3 (seq 2); the 0 is late.
    let a = report(&app, json!({"vmId": vm, "rooms": 3, "sequence": 2})).await;
    assert_eq!(
        (a.status, a.json["action"].as_str()),
        (200, Some("recorded"))
    );
    app.mark(vm).await;
    let late = report(&app, json!({"vmId": vm, "rooms": 0, "sequence": 1})).await;
    assert_eq!(late.status, 200, "{:?}", late.json);
    assert_eq!(late.json["action"], "stale");
    assert_eq!(late.json["vm"]["rooms"], 3);
    let kept = row(&rig, &id).await.unwrap();
    assert_eq!(
        (kept.state, kept.rooms),
        (VmState::MarkedForDeallocation, 3)
    );
    assert_eq!(
        touched(&f, FakeOp::Deallocate, &id),
        0,
        "no deallocate sent"
    );
    // The same report again is not older: it applies (a retry is safe).
    let again = report(&app, json!({"vmId": vm, "rooms": 3, "sequence": 2})).await;
    assert_eq!(again.json["action"], "recorded");
    // A newer 0 drains it.
    let done = report(&app, json!({"vmId": vm, "rooms": 0, "sequence": 3})).await;
    assert_eq!(done.json["action"], "deallocating", "{:?}", done.json);

    // By report time, from the query string, on another VM.
    let other = rig.pool.create_vm().await.unwrap().vm.id;
    rig.advance(180);
    rig.pass().await;
    let at = |t: &str, rooms: u32| {
        format!(
            "/api/ReportGameRoomsNumber?vmId={other}&rooms={rooms}&reportedAt={}",
            t.replace(':', "%3A").replace('+', "%2B")
        )
    };
    let newer = app
        .send("POST", &at("2026-01-01T00:10:00.500+00:00", 2), None)
        .await;
    assert_eq!(newer.json["action"], "recorded", "{:?}", newer.json);
    app.mark(other.as_str()).await;
    let older = app.send("POST", &at("2026-01-01T00:10:00Z", 0), None).await;
    assert_eq!(
        (older.status, &older.json["action"]),
        (200, &json!("stale"))
    );
    assert_eq!(
        row(&rig, &other).await.unwrap().state,
        VmState::MarkedForDeallocation
    );
    assert_eq!(touched(&f, FakeOp::Deallocate, &other), 0);

    // Without the field, reports apply in the order they arrive, as they always did.
    let plain = report(&app, json!({"vmId": other.as_str(), "rooms": 0})).await;
    assert_eq!(plain.json["action"], "deallocating");

    // Bad ordering fields are refused and change nothing.
    for bad in [
        json!({"vmId": vm, "rooms": 1, "sequence": -1}),
        json!({"vmId": vm, "rooms": 1, "sequence": "7"}),
        json!({"vmId": vm, "rooms": 1, "reportedAt": "yesterday"}),
        json!({"vmId": vm, "rooms": 1, "sequence": 4, "reportedAt": "2026-01-01T00:00:00Z"}),
    ] {
        let a = report(&app, bad.clone()).await;
        assert_eq!(a.status, 400, "{bad}: {:?}", a.json);
        assert_eq!(a.json["error"]["code"], "InvalidInput");
    }
}

/// A VM handed out, used, drained and deallocated.
async fn deallocated(rig: &Rig) -> VmId {
    let id = rig.pool.create_vm().await.unwrap().vm.id;
    rig.advance(180);
    rig.pass().await;
    rig.pool.report_rooms(&id, 1).await.unwrap();
    rig.pool.mark_for_deallocation(&id).await.unwrap();
    rig.pool.report_rooms(&id, 0).await.unwrap();
    rig.advance(180);
    rig.pass().await;
    assert_eq!(row(rig, &id).await.unwrap().state, VmState::Deallocated);
    id
}

/// Starts and creates the fake was asked for.
fn writes(fake: &ArmFake) -> usize {
    fake.requests()
        .iter()
        .filter(|r| matches!(r.op, Some(FakeOp::Start | FakeOp::PutVm)))
        .count()
}

#[tokio::test]
async fn a_start_refused_for_quota_leaves_the_vm_deallocated_and_counts_toward_the_breaker() {
    let rig = Rig::arm(&[("VMPOOL_BREAKER_FAILURES", "3")]).await;
    let f = rig.fake();
    let app = crate::support::serve(rig.state.clone()).await;
    let id = deallocated(&rig).await;
    f.quota_window(300);

    // CreateVM starts the deallocated VM; Azure refuses for quota.
    let a = app.create_vm().await;
    assert_eq!(a.status, 503, "{:?}", a.json);
    assert_eq!(a.json["error"]["code"], "CapacityExhausted");
    let wait: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait >= 30, "backs off: {wait}");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("OperationNotAllowed"),
        "{:?}",
        a.json
    );
    let kept = row(&rig, &id).await.unwrap();
    assert_eq!(kept.state, VmState::Deallocated, "{kept:?}");
    assert!(kept.last_error.unwrap().contains("OperationNotAllowed"));
    assert_eq!(touched(&f, FakeOp::Start, &id), 1);

    // Starts are held back: the next CreateVM creates instead, and that is refused too.
    let b = app.create_vm().await;
    assert_eq!(b.json["error"]["code"], "CapacityExhausted", "{:?}", b.json);
    assert_eq!(
        touched(&f, FakeOp::Start, &id),
        1,
        "no start during the backoff"
    );
    let c = app.create_vm().await;
    assert_eq!(c.status, 503);
    // Three refusals in a row, of a start and of creates: the breaker is open, and CreateVM
    // answers at once without calling ARM.
    let status = app.status().await.json;
    assert_eq!(status["circuitBreaker"]["open"], true, "{status}");
    assert_eq!(status["circuitBreaker"]["consecutiveCreateFailures"], 3);
    let before = writes(&f);
    let d = app.create_vm().await;
    assert_eq!(
        (d.status, &d.json["error"]["code"]),
        (503, &json!("CapacityExhausted"))
    );
    assert!(d.headers.contains_key("retry-after"));
    assert_eq!(
        writes(&f),
        before,
        "nothing sent to ARM while the breaker is open"
    );

    // The reconciler never fails or deletes the refused VM, however long the quota lasts.
    for _ in 0..12 {
        rig.advance(10);
        let s = rig.pass().await;
        assert_eq!(s.failed, 0, "{}", s.line());
        assert_eq!(row(&rig, &id).await.unwrap().state, VmState::Deallocated);
    }
    assert_eq!(touched(&f, FakeOp::DeleteVm, &id), 0);

    // Quota back and the breaker cooled down: the same VM is started again.
    rig.advance(600);
    rig.pass().await;
    let e = app.create_vm().await;
    assert_eq!(
        (e.status, &e.json["action"]),
        (202, &json!("started")),
        "{:?}",
        e.json
    );
    assert_eq!(e.json["vm"]["vmId"], id.as_str());
    rig.advance(70);
    rig.pass().await;
    assert_eq!(row(&rig, &id).await.unwrap().state, VmState::Running);
    let status = app.status().await.json;
    assert_eq!(
        status["circuitBreaker"]["consecutiveCreateFailures"], 0,
        "a VM came up"
    );
}

#[tokio::test]
async fn a_start_that_fails_in_its_operation_leaves_the_vm_deallocated() {
    let rig = Rig::arm(&[("VMPOOL_MIN_STANDBY", "0")]).await;
    let f = rig.fake();
    let app = crate::support::serve(rig.state.clone()).await;
    let id = deallocated(&rig).await;
    f.start_fails_next(
        "AllocationFailed",
        "Allocation failed. We do not have sufficient capacity for the requested VM size in this region.",
    );
    // ARM accepts the start; its operation then fails and the VM stays deallocated.
    let a = app.create_vm().await;
    assert_eq!((a.status, &a.json["action"]), (202, &json!("started")));
    rig.advance(70);
    let s = rig.pass().await;
    assert_eq!((s.failed, s.start_refusals), (0, 1), "{}", s.line());
    let back = row(&rig, &id).await.unwrap();
    assert_eq!(back.state, VmState::Deallocated, "{back:?}");
    assert!(back.last_error.unwrap().contains("AllocationFailed"));
    let status = app.status().await.json;
    assert_eq!(status["circuitBreaker"]["consecutiveCreateFailures"], 1);
    // Its caller was told it is coming: past the hold on starts, nobody else gets it until
    // that claim has timed out.
    rig.advance(31);
    let other = app.create_vm().await;
    assert_eq!(other.status, 202, "{:?}", other.json);
    assert_ne!(other.json["vm"]["vmId"], id.as_str(), "{:?}", other.json);
    let other = other.json["vm"]["vmId"].as_str().unwrap().to_owned();
    report(&app, json!({"vmId": other, "rooms": 1})).await;
    // Never deleted; a sweep that shows it `Failed` and deallocated changes nothing.
    for _ in 0..6 {
        rig.advance(100);
        let s = rig.pass().await;
        assert_eq!(s.failed, 0, "{}", s.line());
    }
    assert_eq!(row(&rig, &id).await.unwrap().state, VmState::Deallocated);
    assert_eq!(touched(&f, FakeOp::DeleteVm, &id), 0);
    // It can be started again (once the warm buffer the demand raised is handed out).
    let mut b = app.create_vm().await;
    for _ in 0..5 {
        if b.json["action"] != "standby" {
            break;
        }
        b = app.create_vm().await;
    }
    assert_eq!(b.json["action"], "started", "{:?}", b.json);
    assert_eq!(b.json["vm"]["vmId"], id.as_str());
    rig.advance(70);
    rig.pass().await;
    assert_eq!(row(&rig, &id).await.unwrap().state, VmState::Running);
}

#[tokio::test]
async fn a_vm_claimed_for_a_caller_is_not_reissued_while_its_create_vm_may_run() {
    let rig = Rig::arm(&[]).await;
    let f = rig.fake();
    let id = deallocated(&rig).await;
    // CreateVM's start is slow to be answered: its row says Creating for the caller, and
    // ARM still shows the VM deallocated.
    f.delay_next(FakeOp::Start, 1, std::time::Duration::from_millis(1500));
    let pool = rig.pool.clone();
    let wanted = pool.wanted(None, None).unwrap();
    let caller = tokio::spawn(async move { pool.create_vm_detached(None, wanted).await });
    let mut claimed = None;
    for _ in 0..500 {
        let now = row(&rig, &id).await.unwrap();
        if now.state == VmState::Creating {
            claimed = Some(now);
            break;
        }
        tokio::task::yield_now().await;
    }
    let claimed = claimed.expect("CreateVM claimed the deallocated VM");
    assert_eq!(claimed.purpose, vmpool::domain::Purpose::Matchmaker);
    // Past the re-issue grace but within CreateVM's deadline: nothing re-issues the start,
    // and the row stays the caller's.
    rig.advance(61);
    let s = rig.pass().await;
    assert_eq!(s.reissued, 0, "{}", s.line());
    let got = caller.await.unwrap().unwrap();
    assert_eq!(
        (got.action, got.vm.id.clone()),
        (CreateAction::Started, id.clone())
    );
    assert_eq!(
        row(&rig, &id).await.unwrap().purpose,
        vmpool::domain::Purpose::Matchmaker
    );
    assert_eq!(touched(&f, FakeOp::Start, &id), 1, "only CreateVM's start");
    // The VM comes up for its caller, and no other caller gets it.
    rig.advance(70);
    rig.pass().await;
    assert_eq!(row(&rig, &id).await.unwrap().state, VmState::Running);
    let other = rig.pool.create_vm().await.unwrap();
    assert_ne!(other.vm.id, id, "handed out once");
}

#[tokio::test]
async fn a_delete_that_never_takes_stops_after_its_attempts_and_asks_for_attention() {
    let rig = Rig::arm(&[]).await;
    let f = rig.fake();
    let app = crate::support::serve(rig.state.clone()).await;
    f.provisioning_fails_next("OSProvisioningTimedOut", "OS Provisioning did not finish.");
    let id = rig.pool.create_vm().await.unwrap().vm.id;
    rig.advance(180);
    rig.pass().await;
    assert_eq!(row(&rig, &id).await.unwrap().state, VmState::Failed);
    // Every DELETE of it fails: ARM answers 500 (the client retries twice itself). A call
    // ARM turned away is not counted as an attempt, so the bound is the time since the
    // first delete: 10 of VMPOOL_DEALLOCATE_TIMEOUT_SECS.
    f.fail_next(
        FakeOp::DeleteVm,
        1000,
        vmpool_arm_fake::HttpFault::server_error(),
    );
    let mut marked = false;
    for _ in 0..15 {
        rig.advance(601);
        let s = rig.pass().await;
        if s.needs_attention == 1 {
            marked = true;
            break;
        }
    }
    assert!(marked, "marked as needing attention");
    let vm = row(&rig, &id).await.unwrap();
    assert!(
        vm.attention.as_deref().unwrap().contains("did not take"),
        "{vm:?}"
    );
    assert!(
        touched(&f, FakeOp::DeleteVm, &id) <= 3 * 11,
        "one delete per timeout, each tried 3 times by the client"
    );
    // From then on vmpool sends ARM nothing for it, however long.
    let deletes = touched(&f, FakeOp::DeleteVm, &id);
    for _ in 0..6 {
        rig.advance(3600);
        rig.pass().await;
    }
    assert_eq!(touched(&f, FakeOp::DeleteVm, &id), deletes);
    // GetPoolStatus and the metrics show it.
    let status = app.status().await.json;
    assert_eq!(status["needsAttention"], 1, "{status}");
    let shown = status["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vmId"] == id.as_str())
        .unwrap();
    assert!(
        shown["needsAttention"]
            .as_str()
            .unwrap()
            .contains("the delete did not take"),
        "{shown}"
    );
    let text = app
        .http
        .get(format!("{}/api/Metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines().any(|l| l == "vmpool_vms_needing_attention 1"),
        "{text}"
    );
    // Once someone deletes it by hand, a GET's 404 lets the row go.
    f.delete_behind_our_back(id.as_str());
    rig.advance(61);
    rig.pass().await;
    assert!(row(&rig, &id).await.is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn an_unused_claim_is_counted_and_logged_with_its_vm_id() {
    let captured = crate::support::log::Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let rig = Rig::arm(&[
        ("VMPOOL_MIN_STANDBY", "1"),
        ("VMPOOL_CLAIM_TIMEOUT_SECS", "600"),
    ])
    .await;
    let app = crate::support::serve(rig.state.clone()).await;
    rig.pass().await;
    rig.advance(180);
    rig.pass().await;
    let handed = rig.pool.create_vm().await.unwrap();
    assert_eq!(handed.action, CreateAction::Standby);
    // The game server never reports: after the claim timeout the VM is back in the buffer.
    rig.advance(600);
    let s = rig.pass().await;
    assert_eq!(s.unclaimed, 1, "{}", s.line());
    let status = app.status().await.json;
    assert_eq!(status["claimsTimedOut"], 1, "{status}");
    let text = app
        .http
        .get(format!("{}/api/Metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines().any(|l| l == "vmpool_claims_timed_out_total 1"),
        "{text}"
    );
    let logged: Vec<Value> = captured
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("claim timed out"))
        })
        .collect();
    assert_eq!(logged.len(), 1, "{}", captured.text());
    assert_eq!(logged[0]["vm.id"], handed.vm.id.as_str());
    assert_eq!(logged[0]["level"], "WARN");
}

/// A compute API whose power sweep never answers, so a pass waits there until it is stopped.
struct StuckSweep {
    inner: std::sync::Arc<dyn vmpool::compute::Compute>,
    entered: std::sync::Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl vmpool::compute::Compute for StuckSweep {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn resource_id(&self, name: &VmId) -> String {
        self.inner.resource_id(name)
    }
    async fn create(
        &self,
        name: &VmId,
        pool: &vmpool::compute::VmSpec,
    ) -> Result<(), vmpool::compute::ComputeError> {
        self.inner.create(name, pool).await
    }
    async fn start(&self, name: &VmId) -> Result<(), vmpool::compute::ComputeError> {
        self.inner.start(name).await
    }
    async fn deallocate(&self, name: &VmId) -> Result<(), vmpool::compute::ComputeError> {
        self.inner.deallocate(name).await
    }
    async fn delete(&self, name: &VmId) -> Result<(), vmpool::compute::ComputeError> {
        self.inner.delete(name).await
    }
    async fn status(
        &self,
        name: &VmId,
    ) -> Result<Option<vmpool::compute::VmStatus>, vmpool::compute::ComputeError> {
        self.inner.status(name).await
    }
    async fn list(&self) -> Result<Vec<vmpool::compute::Listed>, vmpool::compute::ComputeError> {
        self.inner.list().await
    }
    async fn list_power(
        &self,
    ) -> Result<Vec<vmpool::compute::Listed>, vmpool::compute::ComputeError> {
        self.entered.notify_one();
        std::future::pending().await
    }
    async fn public_ip(
        &self,
        name: &VmId,
    ) -> Result<Option<String>, vmpool::compute::ComputeError> {
        self.inner.public_ip(name).await
    }
    async fn image(
        &self,
        name: &VmId,
    ) -> Result<Option<vmpool::compute::Image>, vmpool::compute::ComputeError> {
        self.inner.image(name).await
    }
}

#[tokio::test]
async fn a_pass_whose_lease_cannot_be_renewed_stops_before_the_lease_runs_out() {
    use std::time::Duration as Std;
    use vmpool::store::table::{TableOptions, TableStore};

    // Azurite behind a proxy that can stop answering (a storage timeout, not a lost race).
    let azurite = crate::support::azurite::Azurite::shared();
    let proxy = crate::support::LossyProxy::start(azurite.port()).await;
    let store = std::sync::Arc::new(
        TableStore::connect_with(
            &proxy.connection_string(),
            &crate::support::azurite::table_name("lease"),
            TableOptions {
                timeout: Std::from_millis(500),
            },
        )
        .await
        .unwrap(),
    );
    let sim = Rig::sim(&[]);
    let entered = std::sync::Arc::new(tokio::sync::Notify::new());
    let rig = Rig::over(
        sim.config.clone(),
        store,
        std::sync::Arc::new(StuckSweep {
            inner: sim.compute.clone(),
            entered: entered.clone(),
        }),
        sim.cloud.clone(),
        sim.clock.clone(),
    );
    let reconciler = rig
        .reconciler
        .clone()
        .with_lease_ttl(time::Duration::seconds(30));
    let mut pass = tokio::spawn(async move { reconciler.run_once().await });
    // The pass holds the lease and waits on ARM; then storage stops answering.
    entered.notified().await;
    proxy.set_silent(true);
    // Renewals are tried every 10 s of the holder's clock and fail...
    rig.advance(10);
    let early = tokio::time::timeout(Std::from_millis(700), &mut pass).await;
    assert!(early.is_err(), "a failed renewal alone stops nothing");
    rig.advance(13);
    let later = tokio::time::timeout(Std::from_millis(700), &mut pass).await;
    assert!(later.is_err(), "the lease still holds for a while");
    // ...and with 30 s of lease and a margin of 6 s, the pass stops at 24 s, before another
    // instance could take the lease at 30 s.
    rig.advance(1);
    let stopped = tokio::time::timeout(Std::from_secs(10), &mut pass).await;
    assert!(stopped.is_ok(), "the pass stopped before its lease ran out");
    proxy.set_silent(false);
}
