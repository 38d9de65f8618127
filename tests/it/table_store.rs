//! vmpool over `TableStore` on Azurite, end to end over real HTTP: the lifecycle, claims
//! under contention (one instance and two), foreign rows, and storage outages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use time::macros::datetime;
use vmpool::clock::ManualClock;
use vmpool::compute::Compute;
use vmpool::compute::sim::SimulatedCompute;
use vmpool::domain::{ClaimKind, Purpose, VmId, VmRecord, VmState};
use vmpool::store::table::{TableOptions, TableStore};
use vmpool::store::{Rows, StoreError, VmStore, Written};

use crate::support::azurite::{Azurite, Persistence, table_name};
use crate::support::{
    Answer, LossyProxy, TestApp, config, sim_cloud, spawn_instance, spawn_on, table_store,
};

/// A VM the matchmaker has given back: `MarkedForDeallocation`, with rooms.
fn marked(name: &str) -> VmRecord {
    let mut vm = VmRecord::new_creating(
        VmId::parse(name).unwrap(),
        format!(
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/{name}"
        ),
        Purpose::Matchmaker,
        datetime!(2025-12-31 23:00 UTC),
    );
    vm.state = VmState::MarkedForDeallocation;
    vm.operation = None;
    vm.public_ip = Some("203.0.113.200".into());
    vm.rooms = 2;
    vm.placed(
        "default",
        &vmpool::config::PoolPolicy::default().pools.all()[0].build,
    )
}

/// What the default pool asks ARM for.
fn default_spec() -> vmpool::compute::VmSpec {
    vmpool::config::PoolPolicy::default().pools.all()[0].vm()
}

/// How a burst of CreateVM calls went.
struct Burst {
    answers: Vec<Answer>,
}

impl Burst {
    async fn run(apps: &[&TestApp], calls: usize) -> Burst {
        let answers =
            futures::future::join_all((0..calls).map(|i| apps[i % apps.len()].create_vm())).await;
        Burst { answers }
    }

    fn handed_out(&self) -> Vec<(String, String)> {
        self.answers
            .iter()
            .filter(|a| a.status == 200 || a.status == 202)
            .map(|a| {
                (
                    a.json["action"].as_str().unwrap().to_owned(),
                    a.json["vm"]["vmId"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The checks every burst must pass, whatever the number of instances.
    async fn check(&self, store: &dyn VmStore, seeded: &BTreeSet<String>, max: usize) {
        for a in &self.answers {
            match a.status {
                200 | 202 => {}
                503 => {
                    assert_eq!(a.json["error"]["code"], "CapacityExhausted", "{:?}", a.json);
                    assert!(a.headers.contains_key("retry-after"));
                }
                other => panic!("unexpected answer {other}: {:?}", a.json),
            }
        }
        let handed = self.handed_out();
        let reclaimed: BTreeSet<String> = handed
            .iter()
            .filter(|(action, _)| action == "reclaimed")
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(
            handed.iter().filter(|(a, _)| a == "reclaimed").count(),
            seeded.len(),
            "every reclaimable VM is reclaimed exactly once: {handed:?}"
        );
        assert_eq!(&reclaimed, seeded);
        let ids: BTreeSet<&str> = handed.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(
            ids.len(),
            handed.len(),
            "a vmId was handed out twice: {handed:?}"
        );
        for (action, id) in &handed {
            assert!(
                action == "reclaimed" || !seeded.contains(id),
                "{action} {id}"
            );
        }

        // The table agrees with the answers.
        let rows: BTreeMap<String, VmRecord> = store
            .list(Rows::All)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.vm.id.to_string(), r.vm))
            .collect();
        let active = rows
            .values()
            .filter(|vm| vm.state.counts_against_max())
            .count();
        assert!(
            active <= max,
            "{active} VMs count against a maximum of {max}"
        );
        for (action, id) in &handed {
            let vm = rows.get(id).unwrap_or_else(|| panic!("{id} has no row"));
            let want = if action == "reclaimed" {
                VmState::Running
            } else {
                VmState::Creating
            };
            assert_eq!((vm.state, vm.purpose), (want, Purpose::Matchmaker), "{id}");
        }
        let owned: BTreeSet<&str> = rows
            .values()
            .filter(|vm| {
                vm.state == VmState::Running
                    || (vm.state == VmState::Creating && vm.purpose == Purpose::Matchmaker)
            })
            .map(|vm| vm.id.as_str())
            .collect();
        assert_eq!(
            owned, ids,
            "every VM the matchmaker owns was handed out once"
        );
        assert!(
            rows.values()
                .all(|vm| vm.state != VmState::MarkedForDeallocation),
            "no reclaimable VM is left over"
        );
    }
}

async fn seed_marked(store: &dyn VmStore, n: usize) -> BTreeSet<String> {
    let mut seeded = BTreeSet::new();
    for i in 0..n {
        let name = format!("seed-{i:02}");
        assert!(matches!(
            store.insert(&marked(&name)).await.unwrap(),
            Written::Done(_)
        ));
        seeded.insert(name);
    }
    seeded
}

#[tokio::test]
async fn sixty_four_callers_share_sixteen_reclaimable_vms() {
    let store = table_store().await;
    let seeded = seed_marked(&*store, 16).await;
    let sim = spawn_on(store.clone(), &[("VMPOOL_MAX_VMS", "20")]).await;
    let writes_before = store.write_attempts();

    let burst = Burst::run(&[&sim.app], 64).await;
    burst.check(&*store, &seeded, 20).await;

    let claims = burst.handed_out().len();
    let writes = store.write_attempts() - writes_before;
    let per_claim = writes as f64 / claims as f64;
    println!(
        "one instance: {claims} claims, {writes} table writes, {per_claim:.2} writes per claim"
    );
    assert_eq!(claims, 20, "16 reclaimed and 4 created up to the maximum");
    assert!(per_claim <= 1.5, "{per_claim:.2} writes per claim");
}

#[tokio::test]
async fn two_instances_never_hand_out_one_vm_twice() {
    let store = table_store().await;
    let seeded = seed_marked(&*store, 16).await;
    // A second instance: its own connection to the same table, its own Pool.
    let other = Arc::new(
        TableStore::connect(&Azurite::shared().connection_string(), store.table_name())
            .await
            .unwrap(),
    );
    let vars = [("VMPOOL_MAX_VMS", "20")];
    let clock = Arc::new(ManualClock::default());
    let cloud = sim_cloud(&config(&vars), clock.clone());
    let a = spawn_instance(store.clone(), &vars, clock.clone(), cloud.clone()).await;
    let b = spawn_instance(other.clone(), &vars, clock, cloud).await;

    let burst = Burst::run(&[&a.app, &b.app], 64).await;
    burst.check(&*store, &seeded, 20).await;
    let claims = burst.handed_out().len();
    assert!(claims >= 16);
}

/// Seeds `n` Deallocated VMs named as vmpool names them, known to `sim`'s cloud as
/// deallocated.
async fn seed_deallocated(sim: &crate::support::apps::StoreApp, n: usize) -> Vec<String> {
    let compute = SimulatedCompute::new(sim.cloud.clone(), "test");
    let mut names = Vec::new();
    for _ in 0..n {
        let id = vmpool::pool::new_vm_name("vmpool");
        compute.create(&id, &default_spec()).await.unwrap();
        let mut vm = marked(id.as_str());
        vm.state = VmState::Deallocated;
        vm.rooms = 0;
        vm.public_ip = None;
        assert!(matches!(
            sim.store.insert(&vm).await.unwrap(),
            Written::Done(_)
        ));
        names.push(id.to_string());
    }
    sim.clock.advance(time::Duration::minutes(10));
    for name in &names {
        compute
            .deallocate(&VmId::parse(name).unwrap())
            .await
            .unwrap();
    }
    sim.clock.advance(time::Duration::minutes(10));
    names.sort();
    names
}

#[tokio::test]
async fn starts_spread_over_every_deallocated_vm_not_the_first_names() {
    let sim = spawn_on(table_store().await, &[("VMPOOL_MAX_VMS", "1000")]).await;
    let names = seed_deallocated(&sim, 200).await;
    let mut started = Vec::new();
    for _ in 0..40 {
        let answer = sim.app.create_vm().await;
        assert_eq!(answer.status, 202, "{:?}", answer.json);
        assert_eq!(answer.json["action"], "started");
        started.push(answer.json["vm"]["vmId"].as_str().unwrap().to_owned());
    }
    // Every name starts with the prefix: a sample that began at a random key of another
    // shape would always hand out the first names in key order.
    let rank = |id: &str| names.iter().position(|n| n == id).unwrap();
    let beyond = started.iter().filter(|id| rank(id) >= 60).count();
    println!(
        "ranks of the started VMs: {:?}",
        started.iter().map(|id| rank(id)).collect::<Vec<_>>()
    );
    assert!(
        beyond >= 10,
        "{beyond} of 40 starts beyond the 60 first names: {:?}",
        started.iter().map(|id| rank(id)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_buffer_vm_still_creating_is_found_among_many_creating_for_callers() {
    let store = table_store().await;
    for i in 0..40 {
        let mut vm = marked(&format!("vmpool-a{i:02}"));
        vm.state = VmState::Creating;
        vm.operation = Some(vmpool::domain::Operation::Create);
        store.insert(&vm).await.unwrap();
    }
    let mut buffer = marked("vmpool-zz");
    buffer.state = VmState::Creating;
    buffer.operation = Some(vmpool::domain::Operation::Create);
    buffer.purpose = Purpose::Buffer;
    store.insert(&buffer).await.unwrap();
    let sim = spawn_on(store.clone(), &[("VMPOOL_MAX_VMS", "100")]).await;
    let answer = sim.app.create_vm().await;
    assert_eq!(
        answer.json["action"], "claimedCreating",
        "{:?}",
        answer.json
    );
    assert_eq!(answer.json["vm"]["vmId"], "vmpool-zz");
}

#[tokio::test]
async fn a_burst_over_two_instances_never_exceeds_the_maximum_while_the_ledger_is_counted() {
    let store = table_store().await;
    let seeded = seed_marked(&*store, 16).await;
    let other = Arc::new(
        TableStore::connect(&Azurite::shared().connection_string(), store.table_name())
            .await
            .unwrap(),
    );
    let vars = [("VMPOOL_MAX_VMS", "30")];
    let clock = Arc::new(ManualClock::default());
    let cloud = sim_cloud(&config(&vars), clock.clone());
    let a = spawn_instance(store.clone(), &vars, clock.clone(), cloud.clone()).await;
    let b = spawn_instance(other.clone(), &vars, clock.clone(), cloud).await;
    let deallocated = seed_deallocated(&a, 10).await;

    // A third party counts the ledger again and again while the burst runs, as reconcile
    // passes do: each count races the claims taking places.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counter = {
        let (store, done, clock) = (store.clone(), done.clone(), clock.clone());
        tokio::spawn(async move {
            let mut counts = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                // A count that storage does not answer in time is simply not made.
                let now = vmpool::clock::Clock::now(&*clock);
                let Ok(rows) = store.list(Rows::All).await else {
                    continue;
                };
                if let Ok(Written::Done(_)) = vmpool::capacity::recount(&*store, &rows, now).await {
                    counts += 1;
                }
            }
            counts
        })
    };
    let burst = Burst::run(&[&a.app, &b.app], 64).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let counts = counter.await.unwrap();
    burst.check(&*store, &seeded, 30).await;
    let handed = burst.handed_out();
    assert_eq!(
        handed.len(),
        30,
        "16 reclaimed and 14 places, none lost: {handed:?}"
    );
    let started = handed.iter().filter(|(a, _)| a == "started").count();
    // A claim that loses its races for Deallocated VMs creates one instead.
    assert!(
        started <= deallocated.len(),
        "{started} started of {}",
        deallocated.len()
    );
    println!("{counts} counts of the ledger landed during the burst");

    // Counted from a listing now, the ledger holds exactly the VMs that count.
    let rows = store.list(Rows::All).await.unwrap();
    vmpool::capacity::recount(&*store, &rows, vmpool::clock::Clock::now(&*clock))
        .await
        .unwrap();
    let (ledger, _) = vmpool::capacity::load(&*store).await.unwrap().unwrap();
    assert_eq!(ledger.used(), 30);
    assert!(ledger.reservations.is_empty());
}

#[tokio::test]
async fn a_burst_of_starts_over_two_instances_takes_exactly_the_places_left() {
    let store = table_store().await;
    let other = Arc::new(
        TableStore::connect(&Azurite::shared().connection_string(), store.table_name())
            .await
            .unwrap(),
    );
    let vars = [("VMPOOL_MAX_VMS", "20")];
    let clock = Arc::new(ManualClock::default());
    let cloud = sim_cloud(&config(&vars), clock.clone());
    let a = spawn_instance(store.clone(), &vars, clock.clone(), cloud.clone()).await;
    let b = spawn_instance(other.clone(), &vars, clock.clone(), cloud).await;
    // More Deallocated VMs than places: concurrent claims often pick the same VM, and the
    // loser moves on to another with the place it took.
    seed_deallocated(&a, 40).await;

    let burst = Burst::run(&[&a.app, &b.app], 64).await;
    let handed = burst.handed_out();
    burst.check(&*store, &BTreeSet::new(), 20).await;
    assert_eq!(handed.len(), 20, "exactly the places: {handed:?}");
}

#[tokio::test]
async fn status_counts_come_from_the_pools_record_and_fresh_on_request() {
    let store = table_store().await;
    let sim = spawn_on(store.clone(), &[]).await;
    let app = &sim.app;
    // Running VMs, known to ARM as running.
    let compute = SimulatedCompute::new(sim.cloud.clone(), "test");
    let running = |name: &str| {
        let mut vm = marked(name);
        vm.state = VmState::Running;
        // In use (its rooms reported since it was handed out), so no unused-claim timeout
        // moves it during the pass.
        vm.last_report_at = vm.claimed_at;
        vm.resource_id = compute.resource_id(&vm.id);
        vm
    };
    for i in 0..3 {
        compute
            .create(&VmId::parse(&format!("rec-{i}")).unwrap(), &default_spec())
            .await
            .unwrap();
    }
    sim.clock.advance(time::Duration::minutes(10));
    for i in 0..3 {
        store.insert(&running(&format!("rec-{i}"))).await.unwrap();
    }
    // No pass has counted yet: the rows are counted now.
    let before = app.send("GET", "/api/GetPoolStatus?vms=false", None).await;
    assert_eq!(before.json["countsFrom"], "fresh", "{:?}", before.json);
    assert_eq!(before.json["counts"]["Running"], 3);

    sim.clock.advance(time::Duration::seconds(1));
    let pass = app.reconcile().await;
    assert_eq!(pass.json["ReturnValue"]["ok"], true, "{:?}", pass.json);
    // A VM the pass did not see.
    compute
        .create(&VmId::parse("rec-3").unwrap(), &default_spec())
        .await
        .unwrap();
    assert!(matches!(
        store.insert(&running("rec-3")).await.unwrap(),
        Written::Done(_)
    ));

    let recorded = app.send("GET", "/api/GetPoolStatus?vms=false", None).await;
    assert_eq!(recorded.status, 200);
    assert_eq!(recorded.json["countsFrom"], "record", "{:?}", recorded.json);
    assert_eq!(
        recorded.json["counts"]["Running"], 3,
        "the pass's count, not the table now"
    );
    assert_eq!(
        recorded.json["countedAt"], recorded.json["lastReconcileStartedAt"],
        "counted by the pass's listing"
    );
    let paged = app.send("GET", "/api/GetPoolStatus?limit=10", None).await;
    assert_eq!(paged.json["countsFrom"], "record");
    assert_eq!(paged.json["vms"].as_array().unwrap().len(), 4);

    let fresh = app
        .send("GET", "/api/GetPoolStatus?vms=false&counts=fresh", None)
        .await;
    assert_eq!(fresh.json["countsFrom"], "fresh");
    assert_eq!(fresh.json["counts"]["Running"], 4);

    let bad = app
        .send("GET", "/api/GetPoolStatus?counts=sometimes", None)
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json["error"]["code"], "InvalidInput");

    app.reconcile().await;
    let next = app.send("GET", "/api/GetPoolStatus?vms=false", None).await;
    assert_eq!(next.json["counts"]["Running"], 4, "the next pass counts it");
}

#[tokio::test]
async fn rows_written_by_someone_else_are_skipped_or_named() {
    use azure_data_tables::clients::TableServiceClientBuilder;
    use azure_storage::{CloudLocation, StorageCredentials};

    let store = table_store().await;
    let azurite = Azurite::shared();
    store.insert(&marked("mine")).await.unwrap();
    let raw = TableServiceClientBuilder::with_location(
        CloudLocation::Custom {
            account: "devstoreaccount1".into(),
            uri: format!("http://127.0.0.1:{}/devstoreaccount1", azurite.port()),
        },
        StorageCredentials::emulator(),
    )
    .build()
    .table_client(store.table_name());
    for (key, state) in [("foreign-1", "Sleeping"), ("foreign-2", "Running")] {
        let row = serde_json::json!({"PartitionKey": key, "RowKey": key, "VM_State": state});
        raw.insert::<_, Value>(&row).unwrap().await.unwrap();
    }
    let row = serde_json::json!({"PartitionKey": "a'b", "RowKey": "a'b", "VM_State": "Running"});
    raw.insert::<_, Value>(&row).unwrap().await.unwrap();

    let listed = store.list(Rows::All).await.unwrap();
    assert_eq!(listed.len(), 1, "only the VM row is listed: {listed:?}");
    let running = store
        .list(Rows::InStates(&[VmState::Running]))
        .await
        .unwrap();
    assert!(running.is_empty());
    match store.get(&VmId::parse("foreign-2").unwrap()).await {
        Err(StoreError::Rejected(msg)) => assert!(msg.contains("foreign-2"), "{msg}"),
        other => panic!("{other:?}"),
    }

    // Over HTTP the foreign row is a clean 503, not a 500 and not a VM.
    let sim = spawn_on(store.clone(), &[]).await;
    let answer = sim.app.mark("foreign-2").await;
    assert_eq!(answer.status, 503, "{:?}", answer.json);
    assert_eq!(sim.app.available().await.json["vms"], serde_json::json!([]));
}

#[tokio::test]
async fn unreachable_storage_fails_fast_at_start_up() {
    // Nothing listens: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let on = |port: u16| {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1",
            crate::support::azurite::KEY
        )
    };
    let refused = on(port);
    let started = Instant::now();
    let err = TableStore::connect(&refused, "vmpool").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!err.to_string().contains(crate::support::azurite::KEY));

    // Something accepts but never answers: the deadline ends the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let hanging = on(port);
    let started = Instant::now();
    let err = TableStore::connect_with(
        &hanging,
        "vmpool",
        TableOptions {
            timeout: Duration::from_millis(500),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_503_in_bounded_time_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut azurite =
        tokio::task::block_in_place(|| Azurite::start(Persistence::OnDisk(dir.path().to_owned())));
    let store = Arc::new(
        TableStore::connect(&azurite.connection_string(), &table_name("outage"))
            .await
            .unwrap(),
    );
    let sim = spawn_on(store.clone(), &[]).await;
    let app = &sim.app;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let created = app.create_vm().await;
        assert_eq!(created.status, 202, "{:?}", created.json);
        ids.push(created.json["vm"]["vmId"].as_str().unwrap().to_owned());
    }
    sim.clock.advance(time::Duration::minutes(3));
    app.reconcile().await;
    assert_eq!(
        app.available().await.json["vms"].as_array().unwrap().len(),
        3
    );
    assert_eq!(app.mark(&ids[0]).await.status, 200);
    assert_eq!(app.report(&ids[1], 4).await.status, 200);

    tokio::task::block_in_place(|| azurite.stop());
    for (name, answer) in [
        ("CreateVM", timed(app.create_vm()).await),
        ("GetAvailableVMs", timed(app.available()).await),
        ("ReportGameRoomsNumber", timed(app.report(&ids[1], 5)).await),
        ("MarkVMForDeallocation", timed(app.mark(&ids[2])).await),
        ("GetPoolStatus", timed(app.status()).await),
    ] {
        assert_eq!(answer.status, 503, "{name}: {:?}", answer.json);
        assert_eq!(answer.json["error"]["code"], "Unavailable", "{name}");
        assert!(answer.headers.contains_key("retry-after"), "{name}");
    }
    let pass = app.reconcile().await;
    assert_eq!(
        pass.status, 200,
        "the timer invocation itself still answers"
    );

    tokio::task::block_in_place(|| azurite.restart());
    let status = app
        .send("GET", "/api/GetPoolStatus?counts=fresh", None)
        .await;
    assert_eq!(status.status, 200, "{:?}", status.json);
    assert_eq!(status.json["counts"]["Running"], 2, "{:?}", status.json);
    assert_eq!(status.json["counts"]["MarkedForDeallocation"], 1);
    let rooms: Vec<u64> = status.json["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|vm| vm["vmId"] == ids[1].as_str())
        .map(|vm| vm["rooms"].as_u64().unwrap())
        .collect();
    assert_eq!(
        rooms,
        vec![4],
        "the write before the outage is kept, the one during it never happened"
    );
    let reclaimed = app.create_vm().await;
    assert_eq!(reclaimed.status, 200, "{:?}", reclaimed.json);
    assert_eq!(reclaimed.json["vm"]["vmId"], ids[0].as_str());
    assert_eq!(app.report(&ids[1], 5).await.status, 200);
}

/// Awaits an answer, which must come within a few seconds.
async fn timed(call: impl std::future::Future<Output = Answer>) -> Answer {
    let started = Instant::now();
    let answer = call.await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    answer
}

#[tokio::test]
async fn start_up_connects_from_vmpool_storage_and_never_shows_the_key() {
    let azurite = Azurite::shared();
    let table = table_name("startup");
    let settings = config(&[
        ("VMPOOL_STORAGE", &azurite.connection_string()),
        ("VMPOOL_TABLE", &table),
    ]);
    let clock: Arc<dyn vmpool::clock::Clock> = Arc::new(ManualClock::default());
    let (store, _) = vmpool::startup::ports(&settings, clock.clone())
        .await
        .unwrap();
    let shown = store.describe();
    assert!(
        shown.contains("devstoreaccount1") && shown.contains(&table),
        "{shown}"
    );
    assert!(!shown.contains(crate::support::azurite::KEY));
    assert!(
        store.list(Rows::All).await.unwrap().is_empty(),
        "the table was created"
    );

    // The fallback name works the same way.
    let fallback = config(&[("AzureWebJobsStorage", &azurite.connection_string())]);
    assert!(
        vmpool::startup::ports(&fallback, clock.clone())
            .await
            .is_ok()
    );

    let bad = format!(
        "AccountName=devstoreaccount1;AccountKey={};Nonsense=1",
        crate::support::azurite::KEY
    );
    let broken = config(&[("VMPOOL_STORAGE", &bad)]);
    let err = vmpool::startup::ports(&broken, clock)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("VMPOOL_STORAGE: "), "{err}");
    assert!(!err.contains(crate::support::azurite::KEY), "{err}");
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_settled_by_reading_the_row_back() {
    let proxy = LossyProxy::start(Azurite::shared().port()).await;
    let store = Arc::new(
        TableStore::connect_with(
            &proxy.connection_string(),
            &table_name("lossy"),
            TableOptions {
                timeout: Duration::from_millis(1500),
            },
        )
        .await
        .unwrap(),
    );
    let id = VmId::parse("lossy-1").unwrap();

    proxy.lose_next_answer();
    let Written::Done(v1) = store.insert(&marked("lossy-1")).await.unwrap() else {
        panic!("the insert landed")
    };
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!(row.etag, v1);

    let mut running = row.vm.clone();
    running.state = VmState::Running;
    proxy.lose_next_answer();
    let Written::Done(v2) = store.update(&running, &v1).await.unwrap() else {
        panic!("the update landed")
    };
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (row.etag.clone(), row.vm.state),
        (v2.clone(), VmState::Running)
    );

    // A stale write whose answer (412) is lost is still a lost race.
    let mut stale = running.clone();
    stale.rooms = 9;
    proxy.lose_next_answer();
    assert_eq!(store.update(&stale, &v1).await.unwrap(), Written::LostRace);
    assert_eq!(
        store.get(&id).await.unwrap().unwrap().vm.rooms,
        running.rooms
    );

    proxy.lose_next_answer();
    assert!(matches!(
        store.delete(&id, &v2).await.unwrap(),
        Written::Done(_)
    ));
    assert_eq!(store.get(&id).await.unwrap(), None);

    // Over HTTP: the claim's answer is lost, yet the caller gets the VM, and it is not left
    // Running with nobody knowing.
    store.insert(&marked("lossy-2")).await.unwrap();
    let sim = spawn_on(store.clone(), &[]).await;
    proxy.lose_next_answer();
    let answer = sim.app.create_vm().await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["action"], "reclaimed");
    assert_eq!(answer.json["vm"]["vmId"], "lossy-2");
}

#[tokio::test]
async fn storage_that_never_answers_is_503_within_the_deadline_and_then_recovers() {
    let proxy = LossyProxy::start(Azurite::shared().port()).await;
    let store = Arc::new(
        TableStore::connect_with(
            &proxy.connection_string(),
            &table_name("silent"),
            TableOptions {
                timeout: Duration::from_millis(1500),
            },
        )
        .await
        .unwrap(),
    );
    store.insert(&marked("silent-1")).await.unwrap();
    let sim = spawn_on(store.clone(), &[]).await;
    let app = &sim.app;

    proxy.set_silent(true);
    for (name, answer) in [
        ("CreateVM", timed(app.create_vm()).await),
        ("GetAvailableVMs", timed(app.available()).await),
        ("MarkVMForDeallocation", timed(app.mark("silent-1")).await),
    ] {
        assert_eq!(answer.status, 503, "{name}: {:?}", answer.json);
        assert_eq!(answer.json["error"]["code"], "Unavailable", "{name}");
        assert!(answer.headers.contains_key("retry-after"), "{name}");
    }

    proxy.set_silent(false);
    let reclaimed = app.create_vm().await;
    assert_eq!(reclaimed.status, 200, "{:?}", reclaimed.json);
    assert_eq!(reclaimed.json["vm"]["vmId"], "silent-1");
}

/// A client for one table of the shared Azurite that bypasses `TableStore` (to write what a
/// crash or another program would leave).
fn raw_table(name: &str) -> azure_data_tables::prelude::TableClient {
    use azure_data_tables::clients::TableServiceClientBuilder;
    use azure_storage::{CloudLocation, StorageCredentials};
    TableServiceClientBuilder::with_location(
        CloudLocation::Custom {
            account: "devstoreaccount1".into(),
            uri: format!(
                "http://127.0.0.1:{}/devstoreaccount1",
                Azurite::shared().port()
            ),
        },
        StorageCredentials::emulator(),
    )
    .build()
    .table_client(name)
}

/// A VM row as the table keeps it, written without the store (so without its index entry).
fn raw_row(name: &str, state: &str) -> Value {
    serde_json::json!({
        "PartitionKey": name, "RowKey": name, "VM_State": state, "Purpose": "Buffer",
        "ResourceId": format!("/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/{name}"),
        "Rooms": 0, "Attempts": 0,
        "StateChangedAt": "2026-01-01T00:00:00.0000000Z", "StateChangedAt@odata.type": "Edm.DateTime",
        "CreatedAt": "2026-01-01T00:00:00.0000000Z", "CreatedAt@odata.type": "Edm.DateTime",
    })
}

#[tokio::test]
async fn a_crash_between_a_row_write_and_its_index_write_is_repaired() {
    let store = table_store().await;
    let standby = [VmState::Standby];
    let mut ready = marked("ready");
    ready.state = VmState::Standby;
    store.insert(&ready).await.unwrap();
    let mut moved = marked("moved");
    moved.state = VmState::Standby;
    store.insert(&moved).await.unwrap();
    let vms = raw_table(store.table_name());
    // Crashed after the row write: a Standby row without its entry...
    vms.insert::<_, Value>(&raw_row("unindexed", "Standby"))
        .unwrap()
        .await
        .unwrap();
    // ...and a row that left Standby while its entry stayed.
    vms.partition_key_client("moved")
        .entity_client("moved")
        .insert_or_replace(raw_row("moved", "Running"))
        .unwrap()
        .await
        .unwrap();

    let names = |rows: &[vmpool::store::Versioned]| -> BTreeSet<String> {
        rows.iter().map(|r| r.vm.id.as_str().to_owned()).collect()
    };
    let before = store.list(Rows::InStates(&standby)).await.unwrap();
    assert_eq!(
        names(&before),
        BTreeSet::from(["ready".to_owned(), "moved".to_owned()]),
        "the index lags the rows"
    );
    // The stale entry costs a claim a lost race, never a wrong write.
    let stale = before.iter().find(|r| r.vm.id.as_str() == "moved").unwrap();
    let mut claim = stale.vm.clone();
    claim.state = VmState::Running;
    assert_eq!(
        store.update(&claim, &stale.etag).await.unwrap(),
        Written::LostRace
    );

    let rows = store.list(Rows::All).await.unwrap();
    let fixed = store.repair_index(&rows).await.unwrap();
    assert_eq!(fixed, 2, "one entry added, one removed");
    let after = store.list(Rows::InStates(&standby)).await.unwrap();
    assert_eq!(
        names(&after),
        BTreeSet::from(["ready".to_owned(), "unindexed".to_owned()])
    );
    for row in &after {
        let now = store.get(&row.vm.id).await.unwrap().unwrap();
        assert_eq!(row, &now, "the entry is the row at its current version");
    }
    assert_eq!(store.repair_index(&rows).await.unwrap(), 0, "nothing left");

    // A second store over the same table, made after the rows, serves claims at once: the
    // reconciler's pass repairs through it like any other.
    let other = TableStore::connect(&Azurite::shared().connection_string(), store.table_name())
        .await
        .unwrap();
    assert_eq!(
        names(&other.list(Rows::InStates(&standby)).await.unwrap()),
        names(&after)
    );
}

#[tokio::test]
async fn a_table_from_before_the_index_gets_one_at_connect() {
    let name = table_name("preindex");
    let vms = raw_table(&name);
    vms.create().await.unwrap();
    for (key, state) in [
        ("old-a", "Standby"),
        ("old-b", "Deallocated"),
        ("old-c", "Running"),
    ] {
        vms.insert::<_, Value>(&raw_row(key, state))
            .unwrap()
            .await
            .unwrap();
    }
    let store = TableStore::connect(&Azurite::shared().connection_string(), &name)
        .await
        .unwrap();
    let standby = store
        .list(Rows::InStates(&[VmState::Standby]))
        .await
        .unwrap();
    assert_eq!(standby.len(), 1);
    assert_eq!(standby[0].vm.id.as_str(), "old-a");
    let deallocated = store.sample(ClaimKind::Start, "", 5).await.unwrap();
    assert_eq!(deallocated.len(), 1);
    assert_eq!(deallocated[0].vm.id.as_str(), "old-b");
}

#[tokio::test]
async fn listings_come_in_pages_and_status_can_be_counts_only() {
    let store = table_store().await;
    for i in 0..7 {
        let mut vm = marked(&format!("run-{i}"));
        vm.state = if i < 5 {
            VmState::Running
        } else {
            VmState::Deallocated
        };
        store.insert(&vm).await.unwrap();
    }
    let sim = spawn_on(store.clone(), &[]).await;
    let app = &sim.app;

    let mut seen = Vec::new();
    let mut path = "/api/GetAvailableVMs?limit=2".to_owned();
    loop {
        let page = app.send("GET", &path, None).await;
        assert_eq!(page.status, 200, "{:?}", page.json);
        let vms = page.json["vms"].as_array().unwrap();
        assert!(vms.len() <= 2);
        seen.extend(vms.iter().map(|vm| vm["vmId"].as_str().unwrap().to_owned()));
        match page.json["continuation"].as_str() {
            Some(token) => path = format!("/api/GetAvailableVMs?limit=2&continuation={token}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..5).map(|i| format!("run-{i}")).collect::<Vec<_>>());

    let first = app.send("GET", "/api/GetPoolStatus?limit=3", None).await;
    assert_eq!(first.json["vms"].as_array().unwrap().len(), 3);
    assert!(first.json["continuation"].is_string());
    assert_eq!(
        first.json["counts"]["Running"], 5,
        "counts cover the whole pool"
    );
    assert_eq!(first.json["counts"]["Deallocated"], 2);

    let counts = app.send("GET", "/api/GetPoolStatus?vms=false", None).await;
    assert_eq!(counts.status, 200);
    assert!(counts.json.get("vms").is_none(), "{:?}", counts.json);
    assert!(counts.json.get("continuation").is_none());
    assert_eq!(counts.json["counts"], first.json["counts"]);
    assert_eq!(counts.json["maxVms"], first.json["maxVms"]);

    for bad in [
        "/api/GetAvailableVMs?limit=0",
        "/api/GetAvailableVMs?limit=1001",
        "/api/GetAvailableVMs?continuation=not-a-token",
        "/api/GetPoolStatus?vms=maybe",
        "/api/GetPoolStatus?limit=x",
    ] {
        let answer = app.send("GET", bad, None).await;
        assert_eq!(answer.status, 400, "{bad}: {:?}", answer.json);
        assert_eq!(answer.json["error"]["code"], "InvalidInput");
    }
}

#[tokio::test]
async fn a_pool_of_up_to_a_hundred_thousand_vms_can_be_configured() {
    assert_eq!(
        config(&[("VMPOOL_MAX_VMS", "100000")]).policy.max_vms,
        100_000
    );
    let vars: std::collections::HashMap<String, String> =
        [("VMPOOL_MAX_VMS".to_owned(), "100001".to_owned())].into();
    let err = vmpool::config::Config::from_source(&vars).unwrap_err();
    assert!(err.to_string().contains("VMPOOL_MAX_VMS"), "{err}");
    let sim = spawn_on(table_store().await, &[("VMPOOL_MAX_VMS", "100000")]).await;
    let counts = sim
        .app
        .send("GET", "/api/GetPoolStatus?vms=false", None)
        .await;
    assert_eq!(counts.json["maxVms"], 100_000);
}

/// What a sample of `limit` after `after` must hold: the first names after it in key order,
/// wrapping round to the start.
fn expected_sample(names: &BTreeSet<String>, after: &str, limit: usize) -> Vec<String> {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    names
        .range::<str, _>((Excluded(after), Unbounded))
        .chain(names.range::<str, _>((Unbounded, Included(after))))
        .take(limit)
        .cloned()
        .collect()
}

#[tokio::test]
async fn samples_of_a_large_index_bounded_by_what_earlier_samples_saw_answer_as_an_open_range() {
    let store = table_store().await;
    let mut names = BTreeSet::new();
    let mut vms = Vec::new();
    for _ in 0..400 {
        let mut vm = marked(vmpool::pool::new_vm_name("vmpool").as_str());
        vm.state = VmState::Deallocated;
        vm.public_ip = None;
        names.insert(vm.id.as_str().to_owned());
        vms.push(vm);
    }
    let inserted = futures::future::join_all(vms.iter().map(|vm| store.insert(vm))).await;
    assert!(
        inserted
            .into_iter()
            .all(|w| matches!(w, Ok(Written::Done(_))))
    );
    let check = |names: BTreeSet<String>, rounds: usize| {
        let store = store.clone();
        async move {
            for _ in 0..rounds {
                let after = vmpool::pool::new_vm_name("vmpool").to_string();
                let got: Vec<String> = store
                    .sample(ClaimKind::Start, &after, 16)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.vm.id.as_str().to_owned())
                    .collect();
                assert_eq!(got, expected_sample(&names, &after, 16), "after {after}");
            }
        }
    };
    // The first samples learn that the index is large; later ones are bounded (400
    // candidates: a stretch of about an eighth of the key space) and answer the same.
    check(names.clone(), 30).await;
    let planned = store.sampler().plan(ClaimKind::Start, "vmpool-hzzzzzzzzz");
    assert!(
        planned.window.is_some(),
        "a bounded first query once the index is known to be large: {planned:?}"
    );
    // Most leave: the learned bound is now far too narrow, and samples still answer the
    // same, reading on past it.
    let mut kept = BTreeSet::new();
    for (i, vm) in vms.iter().enumerate() {
        if i % 40 == 0 {
            kept.insert(vm.id.as_str().to_owned());
            continue;
        }
        let row = store.get(&vm.id).await.unwrap().unwrap();
        let mut running = row.vm.clone();
        running.state = VmState::Running;
        assert!(matches!(
            store.update(&running, &row.etag).await.unwrap(),
            Written::Done(_)
        ));
    }
    check(kept, 30).await;
}
