//! CreateVM's `Idempotency-Key` over real HTTP: one VM per key under concurrency (one
//! instance in memory, two instances over Azurite), the same answer within the TTL, a new
//! VM after it, a retry after a failure, a key whose holder died, and keys the rules refuse.

use std::collections::BTreeSet;
use std::sync::Arc;

use time::Duration;
use vmpool::compute::ComputeError;
use vmpool::compute::sim::{Fault, SimOp};
use vmpool::domain::{Purpose, VmState};
use vmpool::idempotency::record::KIND;
use vmpool::store::{Rows, VmStore, Written};

use crate::support::{Answer, TestApp, spawn_instance, spawn_on, spawn_sim, table_store};

/// CreateVM with `Idempotency-Key: key`.
pub async fn create_with_key(app: &TestApp, key: &str) -> Answer {
    let res = app
        .http
        .post(format!("{}/api/CreateVM", app.base))
        .header("Idempotency-Key", key)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let json = res.json().await.unwrap();
    Answer {
        status,
        headers,
        json,
    }
}

/// Each answer's (status, action, vmId).
fn outcomes(answers: &[Answer]) -> BTreeSet<(u16, String, String)> {
    answers
        .iter()
        .map(|a| {
            (
                a.status,
                a.json["action"].as_str().unwrap_or_default().to_owned(),
                a.json["vm"]["vmId"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn vm_count(store: &dyn VmStore) -> usize {
    store.list(Rows::All).await.unwrap().len()
}

#[tokio::test]
async fn twenty_concurrent_creates_with_one_key_give_one_vm() {
    let sim = spawn_sim(&[]).await;
    let answers =
        futures::future::join_all((0..20).map(|_| create_with_key(&sim.app, "match-7f3a"))).await;
    let distinct = outcomes(&answers);
    assert_eq!(distinct.len(), 1, "{distinct:?}");
    let (status, action, _) = distinct.into_iter().next().unwrap();
    assert_eq!((status, action.as_str()), (202, "created"));
    assert_eq!(vm_count(&*sim.store).await, 1);
    assert_eq!(
        sim.cloud.list().unwrap().len(),
        1,
        "ARM was asked for one VM"
    );
}

#[tokio::test]
async fn twenty_concurrent_creates_with_one_key_on_two_instances_over_azurite_give_one_vm() {
    let store: Arc<dyn VmStore> = table_store().await;
    let first = spawn_on(store.clone(), &[]).await;
    let second = spawn_instance(store.clone(), &[], first.clock.clone(), first.cloud.clone()).await;
    let apps = [&first.app, &second.app];
    let answers = futures::future::join_all(
        (0..20).map(|i| create_with_key(apps[i % 2], "ticket:2026-01-01:42")),
    )
    .await;
    let distinct = outcomes(&answers);
    assert_eq!(distinct.len(), 1, "{distinct:?}");
    let (status, action, id) = distinct.into_iter().next().unwrap();
    assert_eq!((status, action.as_str()), (202, "created"));
    let rows = store.list(Rows::All).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].vm.id.as_str(), id);
    assert_eq!(
        first.cloud.list().unwrap().len(),
        1,
        "ARM was asked for one VM"
    );
    assert!(
        store
            .get_record(KIND, "ticket:2026-01-01:42")
            .await
            .unwrap()
            .is_some(),
        "the key is kept in the table"
    );
}

#[tokio::test]
async fn a_key_answers_with_the_same_vm_until_its_ttl_then_claims_again() {
    let sim = spawn_sim(&[("VMPOOL_IDEMPOTENCY_TTL_SECS", "3600")]).await;
    let first = create_with_key(&sim.app, "k1").await;
    assert_eq!(first.status, 202);
    let id = first.json["vm"]["vmId"].as_str().unwrap().to_owned();

    // Later, the VM is up: the same key answers with the same VM and action, as it is now.
    sim.clock.advance(Duration::minutes(3));
    sim.app.reconcile().await;
    let again = create_with_key(&sim.app, "k1").await;
    assert_eq!(
        (
            again.status,
            again.json["action"].as_str(),
            again.json["vm"]["vmId"].as_str()
        ),
        (200, Some("created"), Some(id.as_str()))
    );
    assert_eq!(again.json["vm"]["state"], "Running");

    // Another key is another request.
    let other = create_with_key(&sim.app, "k2").await;
    assert_ne!(other.json["vm"]["vmId"].as_str(), Some(id.as_str()));

    // Past the TTL the key is new.
    sim.clock.advance(Duration::hours(1));
    let later = create_with_key(&sim.app, "k1").await;
    assert_eq!(later.status, 202, "{:?}", later.json);
    assert_ne!(later.json["vm"]["vmId"].as_str(), Some(id.as_str()));
    assert_eq!(vm_count(&*sim.store).await, 3);
}

#[tokio::test]
async fn a_retry_after_a_failure_tries_again_and_gets_the_vm_handed_to_the_buffer() {
    let sim = spawn_sim(&[]).await;
    sim.cloud.inject(Fault::Refuse(
        SimOp::Create,
        ComputeError::Unavailable("ARM answered 503".into()),
    ));
    let failed = create_with_key(&sim.app, "retry-me").await;
    assert_eq!(failed.status, 503, "{:?}", failed.json);
    assert!(failed.headers.contains_key("retry-after"));
    // The row was handed to the buffer; the retry with the same key claims it.
    let retried = create_with_key(&sim.app, "retry-me").await;
    assert_eq!(
        (retried.status, retried.json["action"].as_str()),
        (202, Some("claimedCreating")),
        "{:?}",
        retried.json
    );
    let rows = sim.store.list(Rows::All).await.unwrap();
    assert_eq!(rows.len(), 1, "one VM");
    assert_eq!(rows[0].vm.purpose, Purpose::Matchmaker);
    // And the key now answers with it.
    let again = create_with_key(&sim.app, "retry-me").await;
    assert_eq!(again.json["vm"]["vmId"], retried.json["vm"]["vmId"]);
    assert_eq!(again.json["action"], "claimedCreating");
}

#[tokio::test]
async fn a_key_whose_holder_died_is_taken_over_after_the_create_deadline() {
    let sim = spawn_sim(&[]).await;
    let since = time::format_description::well_known::Rfc3339;
    let pending = serde_json::json!({
        "status": "pending",
        "since": vmpool::clock::Clock::now(&*sim.clock).format(&since).unwrap(),
    })
    .to_string();
    assert!(matches!(
        sim.store
            .insert_record(KIND, "orphan", &pending)
            .await
            .unwrap(),
        Written::Done(_)
    ));
    let deadline = sim.app.state.pool.create_deadline().as_secs() as i64;
    // The holder's deadline and the 30 s margin have passed (the wait for a live holder is
    // checked by the key record's unit tests).
    sim.clock.advance(Duration::seconds(deadline + 31));
    let got = create_with_key(&sim.app, "orphan").await;
    assert_eq!(
        (got.status, got.json["action"].as_str()),
        (202, Some("created"))
    );
    assert_eq!(vm_count(&*sim.store).await, 1);
}

#[tokio::test]
async fn a_key_whose_vm_is_gone_claims_again() {
    let sim = spawn_sim(&[]).await;
    let first = create_with_key(&sim.app, "gone").await;
    let row = sim.store.list(Rows::All).await.unwrap().pop().unwrap();
    sim.store.delete(&row.vm.id, &row.etag).await.unwrap();
    let again = create_with_key(&sim.app, "gone").await;
    assert_eq!(again.status, 202, "{:?}", again.json);
    assert_ne!(again.json["vm"]["vmId"], first.json["vm"]["vmId"]);
    assert_eq!(vm_count(&*sim.store).await, 1);
}

#[tokio::test]
async fn keys_outside_the_rules_get_400_and_change_nothing() {
    let sim = spawn_sim(&[]).await;
    for bad in ["", "has space", "a/b", "über", &"k".repeat(129)] {
        let got = create_with_key(&sim.app, bad).await;
        assert_eq!(got.status, 400, "{bad:?}: {:?}", got.json);
        assert_eq!(got.json["error"]["code"], "InvalidInput");
        assert!(
            got.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
    }
    assert_eq!(vm_count(&*sim.store).await, 0);
    assert_eq!(
        sim.store
            .list(Rows::InStates(&[VmState::Creating]))
            .await
            .unwrap()
            .len(),
        0
    );
}
