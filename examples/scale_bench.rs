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
//! moved to `Running` first, and each claim is put back after it (not timed). Then
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

use azure_data_tables::prelude::IfMatchCondition;
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::Compute;
use vmpool::compute::sim::{Latencies, SimCloud, SimulatedCompute};
use vmpool::config::Config;
use vmpool::domain::{Operation, Purpose, VmId, VmRecord, VmState};
use vmpool::store::table::TableStore;
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
        let mut counts = vmpool::store::zero_counts();
        for row in &rows {
            *counts.entry(row.vm.state).or_default() += 1;
        }
        meta.counts = Some(counts);
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

/// Puts back what one CreateVM on `path` took (not measured).
async fn put_back(pool: &Pool, path: &str, answer: &Value) -> Res<()> {
    let name = answer["vm"]["vmId"].as_str().ok_or("no vmId")?;
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

/// CreateVM on `path`, `iterations` times (after a tenth as many not counted), each claim
/// put back.
async fn path_samples(pool: &Pool, path: &str, iterations: usize) -> Res<Samples> {
    let warmup = iterations / 10;
    let mut samples = Samples::default();
    for i in 0..warmup + iterations {
        if i == warmup {
            samples = Samples::default();
        }
        let answer = timed(&mut samples, pool.create_vm(i)).await?;
        if answer["action"] != path {
            return Err(format!("CreateVM did not answer {path}: {answer}").into());
        }
        put_back(pool, path, &answer).await?;
    }
    Ok(samples)
}

/// Every CreateVM path at one size: the kinds before each path are moved to `Running` first
/// and put back after.
async fn paths(
    pool: &Pool,
    seeded: &Seeded,
    iterations: usize,
) -> Res<BTreeMap<&'static str, Samples>> {
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
        figures.insert(*path, path_samples(pool, path, iterations).await?);
    }
    for (state, purpose) in before {
        move_all(&*pool.store, &seeded.of(state), state, purpose).await?;
    }
    Ok(figures)
}

/// The floor any claim needs, raw: a point read of a `Running` row and a conditional update
/// of it, `samples` times.
async fn floor(
    raw: &azure_data_tables::prelude::TableClient,
    seeded: &Seeded,
    samples: usize,
) -> Res<Samples> {
    use rand::seq::IndexedRandom;
    let running = seeded.of(VmState::Running);
    let mut floor = Samples::default();
    for _ in 0..samples {
        let key = running.choose(&mut rand::rng()).ok_or("no Running VM")?;
        timed(&mut floor, async {
            let entity = raw.partition_key_client(key).entity_client(key);
            let got = entity.get::<Map<String, Value>>().await?;
            let (body, etag) = raw_body(got.entity);
            entity
                .update(&body, IfMatchCondition::Etag(etag.into()))?
                .await?;
            Res::Ok(())
        })
        .await?;
    }
    Ok(floor)
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
    let raw = raw_table(az.port(), azurite::ACCOUNT, &table, Duration::from_secs(30))?;
    println!(
        "Azurite on port {}; two vmpool instances at {} and {}; {iterations} CreateVM samples per figure",
        az.port(),
        pool.bases[0],
        pool.bases[1]
    );
    let mut seeded = Seeded::default();
    let mut grown = 0;
    let mut table_rows: Vec<(usize, BTreeMap<&'static str, Samples>, Samples, Samples)> =
        Vec::new();
    let mut floors: Vec<Samples> = Vec::new();
    for size in sizes.iter().copied() {
        let took = pool.seed(&mut seeded, grown, size).await?;
        grown = size;
        pool.record().await?;
        println!(
            "\n{size} VMs (per hundred: 1 MarkedForDeallocation, 1 Standby, 1 Creating for the buffer, 10 Deallocated, 87 Running); seeded in {:.1} s",
            took.as_secs_f64()
        );
        let figures = paths(&pool, &seeded, iterations).await?;
        let raw_floor = floor(&raw, &seeded, iterations).await?;
        println!(
            "{}",
            raw_floor.line("raw: 1 point read + 1 cond. update", None)
        );
        for path in PATHS {
            println!("{}", figures[path].line(&format!("CreateVM {path}"), None));
        }
        floors.push(raw_floor);
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

    // The table the README carries.
    let first = &table_rows[0];
    let mut header = "| p50 / p99 |".to_owned();
    let mut rule = "|---|".to_owned();
    for (size, ..) in &table_rows {
        header.push_str(&format!(" {size} VMs |"));
        rule.push_str("---|");
    }
    for (size, ..) in table_rows.iter().skip(1) {
        header.push_str(&format!(" {size} / {} (p50) |", first.0));
        rule.push_str("---|");
    }
    println!("\n{header}\n{rule}");
    let ratio = |a: &Samples, b: &Samples| a.pct(50).as_secs_f64() / b.pct(50).as_secs_f64();
    for path in PATHS {
        let mut line = format!("| CreateVM {path} |");
        for (_, figures, ..) in &table_rows {
            line.push_str(&format!(" {} |", cell(&figures[path])));
        }
        for (_, figures, ..) in table_rows.iter().skip(1) {
            line.push_str(&format!(" {:.2} |", ratio(&figures[path], &first.1[path])));
        }
        println!("{line}");
    }
    let mut line = "| raw: 1 point read + 1 conditional update |".to_owned();
    for f in &floors {
        line.push_str(&format!(" {} |", cell(f)));
    }
    for f in floors.iter().skip(1) {
        line.push_str(&format!(" {:.2} |", ratio(f, &floors[0])));
    }
    println!("{line}");
    for (label, pick) in [
        ("GetPoolStatus ?vms=false", 0),
        ("GetPoolStatus ?vms=false&counts=fresh", 1),
    ] {
        let get = |row: &(usize, BTreeMap<&'static str, Samples>, Samples, Samples)| {
            if pick == 0 {
                row.2.pct(50)
            } else {
                row.3.pct(50)
            }
        };
        let mut line = format!("| {label} |");
        for row in &table_rows {
            let s = if pick == 0 { &row.2 } else { &row.3 };
            line.push_str(&format!(" {} |", cell(s)));
        }
        for row in table_rows.iter().skip(1) {
            line.push_str(&format!(
                " {:.2} |",
                get(row).as_secs_f64() / get(first).as_secs_f64()
            ));
        }
        println!("{line}");
    }

    burst(&az).await?;
    Ok(())
}
