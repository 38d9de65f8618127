//! The lifecycle over real HTTP: on the embedded default (memory store, simulated ARM) and on
//! Azure Table Storage (Azurite), each on a manual clock.

use time::Duration;
use vmpool::clock::ManualClock;
use vmpool::compute::sim::SimCloud;
use vmpool::domain::{Purpose, VmId, VmState};
use vmpool::store::VmStore;

use crate::support::{TestApp, spawn_on, spawn_sim, table_store};

/// The walk-through of the README, over whichever store `app` uses; afterwards the table
/// and the simulated cloud agree with what the API said.
async fn walk_through(app: &TestApp, clock: &ManualClock, store: &dyn VmStore, cloud: &SimCloud) {
    let created = app.create_vm().await;
    assert_eq!(created.status, 202, "{:?}", created.json);
    assert_eq!(created.json["action"], "created");
    assert_eq!(created.json["vm"]["state"], "Creating");
    let id = created.json["vm"]["vmId"].as_str().unwrap().to_owned();
    assert!(
        cloud.get(&id).unwrap().is_some(),
        "ARM was asked to create it"
    );

    clock.advance(Duration::minutes(3));
    assert_eq!(app.reconcile().await.status, 200);
    let one = app
        .send("GET", &format!("/api/GetVM?vmId={id}"), None)
        .await;
    assert_eq!(
        (one.status, &one.json["vm"]["state"]),
        (200, &serde_json::json!("Running")),
        "{:?}",
        one.json
    );
    let available = app.available().await;
    assert_eq!(available.json["vms"][0]["vmId"], id.as_str());
    assert_eq!(available.json["vms"][0]["state"], "Running");
    assert!(
        available.json["vms"][0]["publicIp"]
            .as_str()
            .unwrap()
            .starts_with("203.0.113.")
    );

    assert_eq!(
        app.mark(&id).await.json["vm"]["state"],
        "MarkedForDeallocation"
    );
    let reclaimed = app.create_vm().await;
    assert_eq!(reclaimed.status, 200);
    assert_eq!(reclaimed.json["action"], "reclaimed");
    assert_eq!(reclaimed.json["vm"]["vmId"], id.as_str());

    app.mark(&id).await;
    let report = app.report(&id, 0).await;
    assert_eq!(report.json["action"], "deallocating", "{:?}", report.json);
    clock.advance(Duration::minutes(2));
    app.reconcile().await;
    let status = app.status().await;
    assert_eq!(status.json["counts"]["Deallocated"], 1, "{:?}", status.json);

    let started = app.create_vm().await;
    assert_eq!(started.status, 202);
    assert_eq!(started.json["action"], "started");
    assert_eq!(started.json["vm"]["vmId"], id.as_str());

    let row = store
        .get(&VmId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.vm.state, row.vm.purpose),
        (VmState::Creating, Purpose::Matchmaker)
    );
}

#[tokio::test]
async fn walk_through_of_the_readme() {
    let sim = spawn_sim(&[]).await;
    walk_through(&sim.app, &sim.clock, &*sim.store, &sim.cloud).await;
}

#[tokio::test]
async fn walk_through_of_the_readme_on_azurite() {
    let sim = spawn_on(table_store().await, &[]).await;
    let shown = sim.app.state.pool.store().describe();
    assert!(
        shown.starts_with("Azure Table Storage account devstoreaccount1 at http://127.0.0.1:"),
        "{shown}"
    );
    walk_through(&sim.app, &sim.clock, &*sim.store, &sim.cloud).await;
}
