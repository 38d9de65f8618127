//! The lifecycle over real HTTP on the embedded default (memory store, simulated ARM).

use time::Duration;

use crate::support::spawn_sim;

#[tokio::test]
async fn walk_through_of_the_readme() {
    let sim = spawn_sim(&[]).await;
    let app = &sim.app;

    let created = app.create_vm().await;
    assert_eq!(created.status, 202, "{:?}", created.json);
    assert_eq!(created.json["action"], "created");
    assert_eq!(created.json["vm"]["state"], "Creating");
    let id = created.json["vm"]["vmId"].as_str().unwrap().to_owned();

    sim.clock.advance(Duration::minutes(3));
    assert_eq!(app.reconcile().await.status, 200);
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
    sim.clock.advance(Duration::minutes(2));
    app.reconcile().await;
    let status = app.status().await;
    assert_eq!(status.json["counts"]["Deallocated"], 1, "{:?}", status.json);

    let started = app.create_vm().await;
    assert_eq!(started.status, 202);
    assert_eq!(started.json["action"], "started");
    assert_eq!(started.json["vm"]["vmId"], id.as_str());
}
