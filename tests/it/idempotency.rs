//! CreateVM's `Idempotency-Key` over real HTTP: one VM per key under concurrency (one
//! instance in memory, two instances over Azurite), the same answer within the TTL, a new
//! VM after it, a retry after a failure, a key whose holder died, and keys the rules refuse;
//! and the reconciler removing keys past their time (in memory and over Azurite), but never
//! one used again while it worked.

use std::collections::BTreeSet;
use std::sync::Arc;

use time::Duration;
use vmpool::compute::ComputeError;
use vmpool::compute::sim::{Fault, SimOp};
use vmpool::domain::{ClaimKind, Purpose, VmId, VmRecord, VmState};
use vmpool::idempotency::record::KIND;
use vmpool::store::{
    Etag, Page, PageRequest, Record, Rows, StateCounts, StoreError, Versioned, VmStore, Written,
};

use crate::support::{
    Answer, TestApp, config, sim_cloud, spawn_instance, spawn_on, spawn_sim, table_store,
};

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

/// The summary of one reconcile pass on `app`.
async fn pass(app: &TestApp) -> serde_json::Value {
    let answer = app.reconcile().await;
    assert_eq!(answer.json["ReturnValue"]["ok"], true, "{:?}", answer.json);
    answer.json["ReturnValue"]["summary"].clone()
}

async fn key_exists(store: &dyn VmStore, key: &str) -> bool {
    store.get_record(KIND, key).await.unwrap().is_some()
}

/// Keys answered an hour ago (the TTL) and a pending key whose holder died are removed by a
/// pass; a key answered 31 minutes ago stays and still answers with its VM.
async fn keys_past_their_time_leave_the_table(store: Arc<dyn VmStore>) {
    let app = spawn_on(store.clone(), &[("VMPOOL_IDEMPOTENCY_TTL_SECS", "3600")]).await;
    let old = create_with_key(&app.app, "old").await;
    assert_eq!(old.status, 202, "{:?}", old.json);
    app.clock.advance(Duration::minutes(30));
    let young = create_with_key(&app.app, "young").await;
    assert_eq!(young.status, 202, "{:?}", young.json);
    let since = vmpool::clock::Clock::now(&*app.clock)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let pending = serde_json::json!({"status": "pending", "since": since}).to_string();
    assert!(matches!(
        store.insert_record(KIND, "died", &pending).await.unwrap(),
        Written::Done(_)
    ));
    // Not yet: the first key has 30 minutes left.
    assert_eq!(pass(&app.app).await["keysExpired"], 0);
    assert!(key_exists(&*store, "old").await);

    app.clock.advance(Duration::minutes(31));
    let summary = pass(&app.app).await;
    assert_eq!(summary["keysExpired"], 2, "{summary}");
    assert!(!key_exists(&*store, "old").await, "past its TTL");
    assert!(
        !key_exists(&*store, "died").await,
        "its holder is past the deadline"
    );
    assert!(key_exists(&*store, "young").await, "still within its TTL");
    let again = create_with_key(&app.app, "young").await;
    assert_eq!(again.json["vm"]["vmId"], young.json["vm"]["vmId"]);
    assert_eq!(again.json["action"], young.json["action"]);
    // The listing and the deletes went through the metered store.
    let counters = app.app.state.metrics.render_counters();
    for series in [
        r#"vmpool_table_calls_total{operation="list_records",outcome="ok"}"#,
        r#"vmpool_table_calls_total{operation="delete_record",outcome="ok"}"#,
        r#"vmpool_reconcile_actions_total{kind="keys_expired"} 2"#,
    ] {
        assert!(counters.contains(series), "{series} in {counters}");
    }
}

#[tokio::test]
async fn keys_past_their_time_leave_the_table_in_memory() {
    keys_past_their_time_leave_the_table(Arc::new(vmpool::store::memory::MemoryStore::new())).await;
}

#[tokio::test]
async fn keys_past_their_time_leave_the_table_over_azurite() {
    keys_past_their_time_leave_the_table(table_store().await).await;
}

/// A store that, the first time the key records are listed once armed, lets a request with
/// `key` use it (CreateVM's own first step, taking over the expired key) before the lister
/// acts on what it read.
struct UsedWhileListed {
    inner: Arc<dyn VmStore>,
    clock: Arc<vmpool::clock::ManualClock>,
    key: &'static str,
    rules: std::sync::OnceLock<vmpool::idempotency::record::Rules>,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl VmStore for UsedWhileListed {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn get(&self, id: &VmId) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, which: Rows<'_>) -> Result<Vec<Versioned>, StoreError> {
        self.inner.list(which).await
    }
    async fn list_page(
        &self,
        which: Rows<'_>,
        page: &PageRequest,
    ) -> Result<Page<Versioned>, StoreError> {
        self.inner.list_page(which, page).await
    }
    async fn sample(
        &self,
        kind: ClaimKind,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Versioned>, StoreError> {
        self.inner.sample(kind, after, limit).await
    }
    async fn count_states(&self) -> Result<StateCounts, StoreError> {
        self.inner.count_states().await
    }
    async fn repair_index(&self, rows: &[Versioned]) -> Result<usize, StoreError> {
        self.inner.repair_index(rows).await
    }
    async fn insert(&self, vm: &VmRecord) -> Result<Written, StoreError> {
        self.inner.insert(vm).await
    }
    async fn update(&self, vm: &VmRecord, etag: &Etag) -> Result<Written, StoreError> {
        self.inner.update(vm, etag).await
    }
    async fn delete(&self, id: &VmId, etag: &Etag) -> Result<Written, StoreError> {
        self.inner.delete(id, etag).await
    }
    async fn get_record(&self, kind: &str, key: &str) -> Result<Option<Record>, StoreError> {
        self.inner.get_record(kind, key).await
    }
    async fn insert_record(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<Written, StoreError> {
        self.inner.insert_record(kind, key, value).await
    }
    async fn update_record(
        &self,
        kind: &str,
        key: &str,
        value: &str,
        etag: &Etag,
    ) -> Result<Written, StoreError> {
        self.inner.update_record(kind, key, value, etag).await
    }
    async fn list_records(
        &self,
        kind: &str,
        page: &PageRequest,
    ) -> Result<Page<(String, Record)>, StoreError> {
        let read = self.inner.list_records(kind, page).await?;
        if kind == KIND && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let key = vmpool::idempotency::IdempotencyKey::parse(self.key).unwrap();
            let rules = *self.rules.get().unwrap();
            let begun = vmpool::idempotency::record::begin(&*self.inner, &*self.clock, &key, rules)
                .await
                .unwrap();
            assert!(
                matches!(begun, vmpool::idempotency::record::Begun::Holder(_)),
                "the request takes the expired key over: {begun:?}"
            );
        }
        Ok(read)
    }
    async fn delete_record(
        &self,
        kind: &str,
        key: &str,
        etag: &Etag,
    ) -> Result<Written, StoreError> {
        self.inner.delete_record(kind, key, etag).await
    }
}

/// Two expired keys are read by a pass; one is used again (rewritten) before the pass
/// deletes: that one stays, as the request now holding it wrote it, and only the other goes.
async fn a_key_used_again_during_the_pass_stays(inner: Arc<dyn VmStore>) {
    let vars = [("VMPOOL_IDEMPOTENCY_TTL_SECS", "3600")];
    let clock = Arc::new(vmpool::clock::ManualClock::default());
    let store = Arc::new(UsedWhileListed {
        inner: inner.clone(),
        clock: clock.clone(),
        key: "busy",
        rules: std::sync::OnceLock::new(),
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    let cloud = sim_cloud(&config(&vars), clock.clone());
    let app = spawn_instance(store.clone(), &vars, clock.clone(), cloud).await;
    store.rules.set(app.app.state.pool.key_rules()).unwrap();
    for key in ["busy", "idle"] {
        assert_eq!(create_with_key(&app.app, key).await.status, 202);
    }
    clock.advance(Duration::hours(2));
    let before = inner.get_record(KIND, "busy").await.unwrap().unwrap();
    store.armed.store(true, std::sync::atomic::Ordering::SeqCst);

    let summary = pass(&app.app).await;
    assert!(
        !store.armed.load(std::sync::atomic::Ordering::SeqCst),
        "the request ran"
    );
    assert_eq!(summary["keysExpired"], 1, "{summary}");
    assert!(summary["lostRaces"].as_u64().unwrap() >= 1, "{summary}");
    assert!(!key_exists(&*inner, "idle").await);
    let after = inner.get_record(KIND, "busy").await.unwrap().expect("kept");
    assert_ne!(after.etag, before.etag);
    assert!(after.value.contains("pending"), "{}", after.value);
}

#[tokio::test]
async fn a_key_used_again_during_the_pass_stays_in_memory() {
    a_key_used_again_during_the_pass_stays(Arc::new(vmpool::store::memory::MemoryStore::new()))
        .await;
}

#[tokio::test]
async fn a_key_used_again_during_the_pass_stays_over_azurite() {
    a_key_used_again_during_the_pass_stays(table_store().await).await;
}
