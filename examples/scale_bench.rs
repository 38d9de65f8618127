//! Benchmark of vmpool at scale on Table Storage: prints figures, asserts nothing but that the
//! answers are what each figure claims to measure.
//!
//! ```text
//! npm ci --no-audit --no-fund
//! cargo run --release --example scale_bench
//! ```
//!
//! Starts Azurite (from `node_modules`) on a free port and two vmpool instances in this
//! process, each with its own connection to one table and served over loopback HTTP, over one
//! simulated cloud and one manual clock. It grows the table to 1,000, 10,000 and 50,000 VMs
//! with the same mix at every size: per hundred, one `MarkedForDeallocation`, one `Standby`,
//! one `Creating` for the buffer, ten `Deallocated` and 87 `Running`, all named as vmpool
//! names VMs. The pool's record and the capacity ledger are written as a reconcile pass
//! writes them (a pass itself would deallocate the surplus buffer and change the mix).
//!
//! At each size it measures CreateVM on each of its paths (`reclaimed`, `standby`,
//! `claimedCreating`, `started`, `created`): each path's candidates of the kinds before it are
//! moved to `Running` first, and each claim is put back after it (not timed). Each CreateVM is
//! followed by raw Azurite (azure_data_tables, no vmpool) making exactly the calls that path
//! makes (the same sample queries, planned by the same sampler, the breaker and ledger reads,
//! the conditional writes and the index entry writes), so load on the machine hits both alike
//! and the growth that is Azurite's own shows beside vmpool's. Then
//! GetPoolStatus `?vms=false` (counts from the pool's record) and, for comparison,
//! `?vms=false&counts=fresh` (every row counted). Last, on a table of its own (the 1,000-VM mix
//! with room for 40 more), a burst of 100 concurrent CreateVM over the two instances: it checks
//! that no VM is handed out twice and the maximum holds, and compares its claims per second
//! with raw Azurite making the same conditional writes.
//!
//! `BENCH_ITERATIONS` (default 200) sets the samples per CreateVM figure; `BENCH_SIZES`
//! (default `1000,10000,50000`) the sizes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_data_tables::prelude::{IfMatchCondition, TableClient};
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::Compute;
use vmpool::compute::sim::{Latencies, SimCloud, SimulatedCompute};
use vmpool::config::Config;
use vmpool::domain::{ClaimKind, Operation, Purpose, VmId, VmRecord, VmState};
use vmpool::pool::SAMPLE_SIZE;
use vmpool::store::table::{INDEXED, Sampler, TableStore, index_table_name, meta_table_name};
use vmpool::store::{Rows, VmStore, Written};

#[path = "../tests/it/support/azurite.rs"]
mod azurite;
#[path = "common/mod.rs"]
mod common;

use common::{Res, Samples, iterations, json, ms, raw_body, raw_table, timed, vm};

/// Writes in flight at once while seeding and moving rows (not measured).
const SEED_CONCURRENCY: usize = 64;
/// The CreateVM paths, in the order CreateVM tries them.
const PATHS: [&str; 5] = [
    "reclaimed",
    "standby",
    "claimedCreating",
    "started",
    "created",
];
/// Concurrent callers of the burst.
const BURST: usize = 100;
/// Places left under the maximum for the burst.
const BURST_ROOM: usize = 40;

/// The state and purpose of the `i`th seeded VM: per hundred, 1 `MarkedForDeallocation`, 1
/// `Standby`, 1 `Creating` for the buffer, 10 `Deallocated`, 87 `Running`.
fn mix(i: usize) -> (VmState, Purpose) {
    match i % 100 {
        0 => (VmState::MarkedForDeallocation, Purpose::Matchmaker),
        1 => (VmState::Standby, Purpose::Buffer),
        2 => (VmState::Creating, Purpose::Buffer),
        3..=12 => (VmState::Deallocated, Purpose::Matchmaker),
        _ => (VmState::Running, Purpose::Matchmaker),
    }
}

/// One seeded VM's row.
fn seeded_vm(name: &str, state: VmState, purpose: Purpose) -> VmRecord {
    let mut vm = vm(name, state, if state == VmState::Running { 3 } else { 0 });
    vm.purpose = purpose;
    if state == VmState::Creating {
        vm.operation = Some(Operation::Create);
        vm.operation_since = Some(vm.state_changed_at);
    }
    vm
}

/// The seeded VMs: (name, state, purpose), by what they were seeded as.
#[derive(Default)]
struct Seeded {
    vms: Vec<(String, VmState, Purpose)>,
}

impl Seeded {
    fn of(&self, state: VmState) -> Vec<String> {
        self.vms
            .iter()
            .filter(|(_, s, _)| *s == state)
            .map(|(n, _, _)| n.clone())
            .collect()
    }
}

/// Two vmpool instances over one table, one simulated cloud and one clock.
struct Pool {
    store: Arc<TableStore>,
    compute: Arc<dyn Compute>,
    clock: Arc<ManualClock>,
    bases: [String; 2],
    http: reqwest::Client,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Pool {
    async fn start(az: &azurite::Azurite, table: &str, max_vms: usize) -> Res<Pool> {
        let clock = Arc::new(ManualClock::new(
            time::macros::datetime!(2026-01-01 00:00 UTC),
        ));
        let clock_dyn: Arc<dyn Clock> = clock.clone();
        let cloud = Arc::new(SimCloud::new(clock_dyn.clone(), Latencies::default(), 1));
        let compute: Arc<dyn Compute> = Arc::new(SimulatedCompute::new(cloud, "bench"));
        let vars: std::collections::HashMap<String, String> =
            [("VMPOOL_MAX_VMS".to_owned(), max_vms.to_string())].into();
        let config = Config::from_source(&vars)?;
        let store = Arc::new(TableStore::connect(&az.connection_string(), table).await?);
        let mut bases = Vec::new();
        let mut stops = Vec::new();
        for instance in 0..2 {
            let own: Arc<dyn VmStore> = if instance == 0 {
                store.clone()
            } else {
                Arc::new(TableStore::connect(&az.connection_string(), table).await?)
            };
            let state = vmpool::startup::state(&config, own, compute.clone(), clock_dyn.clone());
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            bases.push(format!("http://{}", listener.local_addr()?));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let _ = vmpool::startup::run(listener, state, None, async {
                    let _ = stopped.await;
                })
                .await;
            });
            stops.push(stop);
        }
        Ok(Pool {
            store,
            compute,
            clock,
            bases: [bases[0].clone(), bases[1].clone()],
            http: reqwest::Client::new(),
            _stops: stops,
        })
    }

    /// Seeds VMs `from..to` of the mix (rows and index entries; the deallocated ones also in
    /// the cloud, deallocated there).
    async fn seed(&self, seeded: &mut Seeded, from: usize, to: usize) -> Res<Duration> {
        let started = Instant::now();
        let new: Vec<(String, VmState, Purpose)> = (from..to)
            .map(|i| {
                let (state, purpose) = mix(i);
                (
                    vmpool::pool::new_vm_name("vmpool").to_string(),
                    state,
                    purpose,
                )
            })
            .collect();
        let spec = vmpool::config::PoolPolicy::default().pools.all()[0].vm();
        for (name, state, _) in &new {
            if *state == VmState::Deallocated {
                self.compute.create(&VmId::parse(name)?, &spec).await?;
            }
        }
        let results = futures::stream::iter(new.iter().cloned())
            .map(|(name, state, purpose)| {
                let store = self.store.clone();
                async move { store.insert(&seeded_vm(&name, state, purpose)).await }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for r in results {
            if let Written::LostRace = r? {
                return Err("a seeded name existed already".into());
            }
        }
        self.clock.advance(time::Duration::minutes(10));
        for (name, state, _) in &new {
            if *state == VmState::Deallocated {
                self.compute.deallocate(&VmId::parse(name)?).await?;
            }
        }
        self.clock.advance(time::Duration::minutes(10));
        seeded.vms.extend(new);
        Ok(started.elapsed())
    }

    /// Writes the pool's record and the capacity ledger as a reconcile pass would, from a
    /// listing of the table.
    async fn record(&self) -> Res<()> {
        let now = self.clock.now();
        let rows = self.store.list(Rows::All).await?;
        vmpool::capacity::recount(&*self.store, &rows, now).await?;
        let (mut meta, etag) = vmpool::reconcile::load_meta(&*self.store).await?;
        let mut groups = vmpool::store::GroupCounts::new();
        for row in &rows {
            vmpool::store::count_into(&mut groups, vmpool::store::Group::of(&row.vm), row.vm.state);
        }
        meta.record_groups(&groups);
        meta.counted_at = Some(now);
        meta.last_reconcile_started_at = Some(now);
        meta.last_reconcile_at = Some(now);
        meta.last_reconcile_ok = Some(true);
        vmpool::reconcile::save_meta(&*self.store, &meta, etag.as_ref()).await?;
        Ok(())
    }

    async fn create_vm(&self, instance: usize) -> Res<Value> {
        Ok(json(
            self.http
                .post(format!("{}/api/CreateVM", self.bases[instance % 2])),
        )
        .await?)
    }
}

/// Sets the row of `name` to `state` for `purpose` (not measured).
async fn set_state(store: &dyn VmStore, name: &str, state: VmState, purpose: Purpose) -> Res<()> {
    let id = VmId::parse(name)?;
    let row = store.get(&id).await?.ok_or("row vanished")?;
    let next = seeded_vm(name, state, purpose);
    if let Written::LostRace = store.update(&next, &row.etag).await? {
        return Err("lost a race while resetting".into());
    }
    Ok(())
}

/// Moves the rows `names` to `state` for `purpose` (not measured).
async fn move_all(
    store: &dyn VmStore,
    names: &[String],
    state: VmState,
    purpose: Purpose,
) -> Res<()> {
    let results = futures::stream::iter(names.iter())
        .map(|name| set_state(store, name, state, purpose))
        .buffer_unordered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// Puts back what one claim on `path` took, the VM `name` (not measured).
async fn put_back(pool: &Pool, path: &str, name: &str) -> Res<()> {
    let id = VmId::parse(name)?;
    let store = &*pool.store;
    match path {
        "reclaimed" => {
            set_state(
                store,
                name,
                VmState::MarkedForDeallocation,
                Purpose::Matchmaker,
            )
            .await?
        }
        "standby" => set_state(store, name, VmState::Standby, Purpose::Buffer).await?,
        "claimedCreating" => set_state(store, name, VmState::Creating, Purpose::Buffer).await?,
        "started" => {
            set_state(store, name, VmState::Deallocated, Purpose::Matchmaker).await?;
            vmpool::capacity::release_vm(store, &id).await;
        }
        _ => {
            let row = store.get(&id).await?.ok_or("new row missing")?;
            store.delete(&id, &row.etag).await?;
            vmpool::capacity::release_vm(store, &id).await;
        }
    }
    Ok(())
}

/// One path's figures at one size: vmpool's CreateVM over HTTP and raw Azurite making the
/// same calls, sample by sample in turn.
#[derive(Default)]
struct PathFigures {
    vmpool: Samples,
    raw: Samples,
}

/// CreateVM on `path`, `iterations` times (after a tenth as many not counted), each followed
/// by raw Azurite making the same calls ([`Raw::claim`]); every claim put back untimed.
async fn path_samples(pool: &Pool, raw: &Raw, path: &str, iterations: usize) -> Res<PathFigures> {
    let warmup = iterations / 10;
    let mut figures = PathFigures::default();
    for i in 0..warmup + iterations {
        if i == warmup {
            figures = PathFigures::default();
        }
        let answer = timed(&mut figures.vmpool, pool.create_vm(i)).await?;
        if answer["action"] != path {
            return Err(format!("CreateVM did not answer {path}: {answer}").into());
        }
        put_back(pool, path, answer["vm"]["vmId"].as_str().ok_or("no vmId")?).await?;
        let (action, name) = timed(&mut figures.raw, raw.claim()).await?;
        if action != path {
            return Err(format!("raw claim took the {action} path, not {path}").into());
        }
        put_back(pool, path, &name).await?;
    }
    Ok(figures)
}

/// Raw Azurite (azure_data_tables, no vmpool) making exactly the calls one CreateVM makes on
/// each path: for each kind in CreateVM's order, the sample queries of its index table (the
/// same filters and `$top`, planned by the same [`Sampler`]), then for the first kind with a
/// candidate its conditional update and index entry writes; before a start or a create the
/// breaker's record is read, and the capacity ledger read and written back with If-Match; a
/// create inserts the row and its index entry.
struct Raw {
    vms: TableClient,
    meta: TableClient,
    index: Vec<(VmState, TableClient)>,
    sampler: Sampler,
    /// A row to make new rows from.
    template: Map<String, Value>,
}

impl Raw {
    async fn new(port: u16, table: &str, template_of: &str) -> Res<Raw> {
        let client = |name: &str| raw_table(port, azurite::ACCOUNT, name, Duration::from_secs(30));
        let vms = client(table)?;
        let template = vms
            .partition_key_client(template_of)
            .entity_client(template_of)
            .get::<Map<String, Value>>()
            .await?
            .entity;
        Ok(Raw {
            meta: client(&meta_table_name(table))?,
            index: INDEXED
                .iter()
                .map(|s| Ok((*s, client(&index_table_name(table, *s))?)))
                .collect::<Res<_>>()?,
            vms,
            sampler: Sampler::default(),
            template,
        })
    }

    fn index_of(&self, state: VmState) -> &TableClient {
        &self
            .index
            .iter()
            .find(|(s, _)| *s == state)
            .expect("an indexed state")
            .1
    }

    /// A sample of `kind`: the queries `TableStore::sample` makes.
    async fn sample(&self, kind: ClaimKind) -> Res<Vec<Map<String, Value>>> {
        let after = vmpool::pool::new_vm_name("vmpool").to_string();
        let plan = self.sampler.plan(kind, &after);
        let table = self.index_of(kind.state());
        let mut rows: Vec<Map<String, Value>> = Vec::new();
        for (n, filter) in plan.filters.iter().enumerate() {
            let top = SAMPLE_SIZE - rows.len();
            let mut pages = table
                .query()
                .filter(filter.clone())
                .top(top as u32)
                .into_stream::<Map<String, Value>>();
            let mut more = Vec::new();
            while let Some(page) = pages.next().await {
                more.extend(page?.entities);
                if more.len() >= top {
                    break;
                }
            }
            if n == 0 {
                let keys: Vec<&str> = more
                    .iter()
                    .filter_map(|e| e.get("RowKey").and_then(Value::as_str))
                    .collect();
                self.sampler
                    .learn(kind, &after, plan.window.as_ref(), &keys, SAMPLE_SIZE);
            }
            rows.extend(more);
            if rows.len() >= SAMPLE_SIZE {
                break;
            }
        }
        if rows.len() < SAMPLE_SIZE {
            self.sampler.counted(kind, rows.len());
        }
        Ok(rows)
    }

    /// The index entry of a row written at `etag`.
    fn entry(body: &Value, etag: &str) -> Value {
        let mut entry = body.clone();
        entry["RowEtag"] = etag.into();
        entry
    }

    /// Claims `entry` as `kind`: the conditional update of its row (on the entry's copy of the
    /// row's ETag) and the index entry writes.
    async fn write(&self, kind: ClaimKind, entry: Map<String, Value>) -> Res<String> {
        let row_etag = entry["RowEtag"]
            .as_str()
            .ok_or("an entry without RowEtag")?
            .to_owned();
        let (mut body, _) = raw_body(entry);
        body.as_object_mut()
            .ok_or("an entry that is not an object")?
            .remove("RowEtag");
        let key = body["RowKey"].as_str().ok_or("no RowKey")?.to_owned();
        match kind {
            ClaimKind::Reclaim | ClaimKind::Standby => body["VM_State"] = "Running".into(),
            ClaimKind::ClaimCreating => body["Purpose"] = "Matchmaker".into(),
            ClaimKind::Start => {
                body["VM_State"] = "Creating".into();
                body["Operation"] = "Start".into();
            }
        }
        let written = self
            .vms
            .partition_key_client(&key)
            .entity_client(&key)
            .update(&body, IfMatchCondition::Etag(row_etag.into()))?
            .await?;
        let entry = Self::entry(&body, written.etag.as_ref());
        let put = |state: VmState| {
            self.index_of(state)
                .partition_key_client(&key)
                .entity_client(&key)
                .insert_or_replace(&entry)
        };
        let remove = |state: VmState| {
            self.index_of(state)
                .partition_key_client(&key)
                .entity_client(&key)
                .delete()
                .if_match(IfMatchCondition::Any)
                .into_future()
        };
        match kind {
            ClaimKind::Reclaim | ClaimKind::Standby => {
                remove(kind.state()).await?;
            }
            ClaimKind::ClaimCreating => {
                put(VmState::Creating)?.await?;
            }
            ClaimKind::Start => {
                let (added, removed) = tokio::join!(
                    put(VmState::Creating)?.into_future(),
                    remove(VmState::Deallocated)
                );
                added?;
                removed?;
            }
        }
        Ok(key)
    }

    /// The breaker's record read, as before a start or create.
    async fn read_breaker(&self) -> Res<()> {
        let (kind, key) = vmpool::breaker::RECORD;
        match self
            .meta
            .partition_key_client(kind)
            .entity_client(key)
            .get::<Map<String, Value>>()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), azure_core::error::ErrorKind::HttpResponse { status, .. } if u16::from(*status) == 404) => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The capacity ledger read and written back with If-Match, as a place is taken.
    async fn take_place(&self) -> Res<()> {
        let (kind, key) = vmpool::capacity::LEDGER;
        let client = self.meta.partition_key_client(kind).entity_client(key);
        let got = client.get::<Map<String, Value>>().await?;
        let (body, etag) = raw_body(got.entity);
        client
            .update(&body, IfMatchCondition::Etag(etag.into()))?
            .await?;
        Ok(())
    }

    /// The calls of one CreateVM: the path it took and the VM it claimed or created.
    async fn claim(&self) -> Res<(&'static str, String)> {
        use rand::seq::IndexedRandom;
        for kind in ClaimKind::ORDER.into_iter().filter(|k| !k.needs_capacity()) {
            let mut rows = self.sample(kind).await?;
            if !rows.is_empty() {
                let at = rand::random_range(0..rows.len());
                let name = self.write(kind, rows.swap_remove(at)).await?;
                return Ok((path_of(kind), name));
            }
        }
        self.read_breaker().await?;
        let rows = self.sample(ClaimKind::Start).await?;
        if let Some(entry) = rows.choose(&mut rand::rng()) {
            self.take_place().await?;
            let name = self.write(ClaimKind::Start, entry.clone()).await?;
            return Ok(("started", name));
        }
        self.take_place().await?;
        let name = vmpool::pool::new_vm_name("vmpool").to_string();
        let mut body = raw_body(self.template.clone()).0;
        body["PartitionKey"] = name.clone().into();
        body["RowKey"] = name.clone().into();
        body["VM_State"] = "Creating".into();
        body["Operation"] = "Create".into();
        let inserted = self.vms.insert::<_, Value>(&body)?.await?;
        let entry = Self::entry(&body, inserted.etag.as_ref());
        self.index_of(VmState::Creating)
            .partition_key_client(&name)
            .entity_client(&name)
            .insert_or_replace(&entry)?
            .await?;
        Ok(("created", name))
    }
}

/// The answer's `action` for a claim of `kind`.
fn path_of(kind: ClaimKind) -> &'static str {
    match kind {
        ClaimKind::Reclaim => "reclaimed",
        ClaimKind::Standby => "standby",
        ClaimKind::ClaimCreating => "claimedCreating",
        ClaimKind::Start => "started",
    }
}

/// Every CreateVM path at one size: the kinds before each path are moved to `Running` first
/// and put back after.
async fn paths(
    pool: &Pool,
    raw: &Raw,
    seeded: &Seeded,
    iterations: usize,
) -> Res<BTreeMap<&'static str, PathFigures>> {
    let mut figures = BTreeMap::new();
    let before: [(VmState, Purpose); 4] = [
        (VmState::MarkedForDeallocation, Purpose::Matchmaker),
        (VmState::Standby, Purpose::Buffer),
        (VmState::Creating, Purpose::Buffer),
        (VmState::Deallocated, Purpose::Matchmaker),
    ];
    for (n, path) in PATHS.iter().enumerate() {
        if n > 0 {
            let (state, _) = before[n - 1];
            move_all(
                &*pool.store,
                &seeded.of(state),
                VmState::Running,
                Purpose::Matchmaker,
            )
            .await?;
        }
        figures.insert(*path, path_samples(pool, raw, path, iterations).await?);
    }
    for (state, purpose) in before {
        move_all(&*pool.store, &seeded.of(state), state, purpose).await?;
    }
    Ok(figures)
}

/// GetPoolStatus `?vms=false`, from the record (`samples` times) and fresh (a few times).
async fn status(pool: &Pool, samples: usize) -> Res<(Samples, Samples)> {
    let mut recorded = Samples::default();
    let mut fresh = Samples::default();
    for i in 0..samples {
        let answer = timed(&mut recorded, async {
            json(
                pool.http
                    .get(format!("{}/api/GetPoolStatus?vms=false", pool.bases[i % 2])),
            )
            .await
        })
        .await?;
        if answer["countsFrom"] != "record" || answer.get("vms").is_some() {
            return Err(format!("not the record's counts alone: {answer}").into());
        }
    }
    for i in 0..3 {
        let answer = timed(&mut fresh, async {
            json(pool.http.get(format!(
                "{}/api/GetPoolStatus?vms=false&counts=fresh",
                pool.bases[i % 2]
            )))
            .await
        })
        .await?;
        if answer["countsFrom"] != "fresh" {
            return Err(format!("not a fresh count: {answer}").into());
        }
    }
    Ok((recorded, fresh))
}

/// The burst over two instances, on a table of its own; then raw Azurite making the same
/// conditional writes. Prints claims per second for both.
async fn burst(az: &azurite::Azurite) -> Res<()> {
    let table = azurite::table_name("burst");
    let size = 1_000;
    // Every VM of the mix but the Deallocated counts against the maximum.
    let active = (0..size).filter(|i| mix(*i).0.counts_against_max()).count();
    let max = active + BURST_ROOM;
    let pool = Pool::start(az, &table, max).await?;
    let mut seeded = Seeded::default();
    pool.seed(&mut seeded, 0, size).await?;
    pool.record().await?;
    let free = [
        VmState::MarkedForDeallocation,
        VmState::Standby,
        VmState::Creating,
    ]
    .iter()
    .map(|s| seeded.of(*s).len())
    .sum::<usize>();

    let started = Instant::now();
    let answers = futures::future::join_all((0..BURST).map(|i| pool.create_vm(i))).await;
    let wall = started.elapsed();
    let mut handed = Vec::new();
    let mut exhausted = 0;
    for answer in answers {
        let answer = answer?;
        match answer["vm"]["vmId"].as_str() {
            Some(id) => handed.push((
                id.to_owned(),
                answer["action"].as_str().unwrap_or("?").to_owned(),
            )),
            None if answer["error"]["code"] == "CapacityExhausted" => exhausted += 1,
            None => return Err(format!("unexpected answer: {answer}").into()),
        }
    }
    let distinct: BTreeSet<&str> = handed.iter().map(|(id, _)| id.as_str()).collect();
    let counts = pool.store.count_states().await?;
    let now_active: usize = counts
        .iter()
        .filter(|(s, _)| s.counts_against_max())
        .map(|(_, n)| n)
        .sum();
    let mut by_action: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, action) in &handed {
        *by_action.entry(action.as_str()).or_default() += 1;
    }
    println!(
        "\nburst: {BURST} concurrent CreateVM over two instances, a table of {size} VMs ({free} claimable without a place, {} Deallocated), {active} counting against a maximum of {max}",
        seeded.of(VmState::Deallocated).len()
    );
    println!(
        "  handed out {} ({by_action:?}), {exhausted} CapacityExhausted; {} distinct VMs; {now_active} count against the maximum of {max} after",
        handed.len(),
        distinct.len()
    );
    if distinct.len() != handed.len() {
        return Err("a VM was handed out twice".into());
    }
    if now_active > max {
        return Err(format!("{now_active} VMs over the maximum of {max}").into());
    }
    let vmpool_rate = handed.len() as f64 / wall.as_secs_f64();
    println!(
        "  {:<52} {:>8.1} ms  {:>7.1} claims/s",
        "vmpool (HTTP, two instances)",
        ms(wall),
        vmpool_rate
    );

    // Raw: the same number of claims without a place (a point read and a conditional update
    // of a distinct row each) and with one (a read-modify-write of one shared record with
    // If-Match, retried on 412 and refused at the maximum, then a point read and a
    // conditional update of a distinct row), all at once.
    let raw_name = azurite::table_name("rawburst");
    let raw = raw_table(
        az.port(),
        azurite::ACCOUNT,
        &raw_name,
        Duration::from_secs(30),
    )?;
    raw.create().await?;
    for i in 0..BURST {
        let body = serde_json::json!({
            "PartitionKey": format!("r{i:03}"), "RowKey": format!("r{i:03}"), "VM_State": "Deallocated",
        });
        raw.insert::<_, Value>(&body)?.await?;
    }
    let ledger = serde_json::json!({"PartitionKey": "pool", "RowKey": "capacity", "Used": active});
    raw.insert::<_, Value>(&ledger)?.await?;
    let places = BURST_ROOM;
    let started = Instant::now();
    let results = futures::future::join_all((0..BURST).map(|i| {
        let raw = &raw;
        async move {
            if i >= free {
                let client = raw.partition_key_client("pool").entity_client("capacity");
                loop {
                    let got = client.get::<Map<String, Value>>().await?;
                    let used = got.entity["Used"].as_u64().unwrap_or_default();
                    if used as usize >= max {
                        return Res::Ok(false);
                    }
                    let mut body = got.entity.clone();
                    body.retain(|k, _| !k.starts_with("odata.") && !k.starts_with("Timestamp"));
                    body.insert("Used".into(), (used + 1).into());
                    match client
                        .update(&body, IfMatchCondition::Etag(got.etag))?
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if matches!(e.kind(), azure_core::error::ErrorKind::HttpResponse { status, .. } if u16::from(*status) == 412) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let key = format!("r{i:03}");
            let entity = raw.partition_key_client(&key).entity_client(&key);
            let got = entity.get::<Map<String, Value>>().await?;
            let (mut body, etag) = raw_body(got.entity);
            body["VM_State"] = "Running".into();
            entity
                .update(&body, IfMatchCondition::Etag(etag.into()))?
                .await?;
            Res::Ok(true)
        }
    }))
    .await;
    let raw_wall = started.elapsed();
    let mut raw_claims = 0;
    for r in results {
        if r? {
            raw_claims += 1;
        }
    }
    if raw_claims != (free + places).min(BURST) {
        return Err(format!("raw: {raw_claims} claims").into());
    }
    let raw_rate = raw_claims as f64 / raw_wall.as_secs_f64();
    println!(
        "  {:<52} {:>8.1} ms  {:>7.1} claims/s",
        format!("raw Azurite: the same {raw_claims} claims' conditional writes"),
        ms(raw_wall),
        raw_rate
    );
    println!("  vmpool / raw throughput: {:.2}", vmpool_rate / raw_rate);
    Ok(())
}

fn sizes() -> Vec<usize> {
    std::env::var("BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1_000, 10_000, 50_000])
}

fn cell(s: &Samples) -> String {
    format!("{:.2} / {:.2} ms", ms(s.pct(50)), ms(s.pct(99)))
}

#[tokio::main]
async fn main() -> Res<()> {
    let iterations = iterations(200);
    let sizes = sizes();
    let az =
        tokio::task::spawn_blocking(|| azurite::Azurite::start(azurite::Persistence::InMemory))
            .await?;
    let table = azurite::table_name("scale");
    let pool = Pool::start(&az, &table, 100_000).await?;
    println!(
        "Azurite on port {}; two vmpool instances at {} and {}; {iterations} CreateVM samples per figure, each followed by raw Azurite making the same calls",
        az.port(),
        pool.bases[0],
        pool.bases[1]
    );
    let mut seeded = Seeded::default();
    let mut grown = 0;
    let mut raw = None;
    let mut table_rows: Vec<(usize, BTreeMap<&'static str, PathFigures>, Samples, Samples)> =
        Vec::new();
    for size in sizes.iter().copied() {
        let took = pool.seed(&mut seeded, grown, size).await?;
        grown = size;
        pool.record().await?;
        println!(
            "\n{size} VMs (per hundred: 1 MarkedForDeallocation, 1 Standby, 1 Creating for the buffer, 10 Deallocated, 87 Running); seeded in {:.1} s",
            took.as_secs_f64()
        );
        if raw.is_none() {
            let running = seeded.of(VmState::Running);
            raw = Some(Raw::new(az.port(), &table, running.first().ok_or("no Running VM")?).await?);
        }
        let raw = raw.as_ref().ok_or("no raw client")?;
        let figures = paths(&pool, raw, &seeded, iterations).await?;
        for path in PATHS {
            let f = &figures[path];
            println!(
                "{}",
                f.vmpool.line(&format!("CreateVM {path}"), Some(&f.raw))
            );
            println!("{}", f.raw.line("  raw Azurite, the same calls", None));
        }
        let (recorded, fresh) = status(&pool, 50).await?;
        println!(
            "{}",
            recorded.line("GetPoolStatus?vms=false (pool's record)", None)
        );
        println!(
            "{}",
            fresh.line("GetPoolStatus?vms=false&counts=fresh", None)
        );
        table_rows.push((size, figures, recorded, fresh));
    }

    // The tables the README carries.
    let p50 = |s: &Samples| s.pct(50).as_secs_f64();
    let first = &table_rows[0];
    let last = &table_rows[table_rows.len() - 1];
    let mut header = "| p50 / p99, vmpool (raw) |".to_owned();
    let mut rule = "|---|".to_owned();
    for (size, ..) in &table_rows {
        header.push_str(&format!(" {size} VMs |"));
        rule.push_str("---|");
    }
    header.push_str(&format!(
        " vmpool / raw (p50) | {} / {} vmpool (p50) | {} / {} raw (p50) |",
        last.0, first.0, last.0, first.0
    ));
    rule.push_str("---|---|---|");
    println!("\n{header}\n{rule}");
    for path in PATHS {
        let mut line = format!("| CreateVM `{path}` |");
        for (_, figures, ..) in &table_rows {
            let f = &figures[path];
            line.push_str(&format!(" {} ({}) |", cell(&f.vmpool), cell(&f.raw)));
        }
        let over: Vec<String> = table_rows
            .iter()
            .map(|(_, figures, ..)| {
                format!(
                    "{:.2}",
                    p50(&figures[path].vmpool) / p50(&figures[path].raw)
                )
            })
            .collect();
        let (a, b) = (&last.1[path], &first.1[path]);
        line.push_str(&format!(
            " {} | {:.2} | {:.2} |",
            over.join(", "),
            p50(&a.vmpool) / p50(&b.vmpool),
            p50(&a.raw) / p50(&b.raw)
        ));
        println!("{line}");
    }
    let mut header = "| p50 / p99 |".to_owned();
    let mut rule = "|---|".to_owned();
    for (size, ..) in &table_rows {
        header.push_str(&format!(" {size} VMs |"));
        rule.push_str("---|");
    }
    header.push_str(&format!(" {} / {} (p50) |", last.0, first.0));
    rule.push_str("---|");
    println!("\n{header}\n{rule}");
    for (label, fresh) in [
        ("GetPoolStatus `?vms=false`", false),
        ("GetPoolStatus `?vms=false&counts=fresh`", true),
    ] {
        fn pick<'a>(
            row: &'a (usize, BTreeMap<&'static str, PathFigures>, Samples, Samples),
            fresh: bool,
        ) -> &'a Samples {
            if fresh { &row.3 } else { &row.2 }
        }
        let mut line = format!("| {label} |");
        for row in &table_rows {
            line.push_str(&format!(" {} |", cell(pick(row, fresh))));
        }
        line.push_str(&format!(
            " {:.2} |",
            p50(pick(last, fresh)) / p50(pick(first, fresh))
        ));
        println!("{line}");
    }

    burst(&az).await?;
    Ok(())
}
