//! Benchmark of vmpool at scale on Table Storage: prints figures, asserts nothing.
//!
//! ```text
//! npm ci --no-audit --no-fund
//! cargo build --release --bin vmpool --example scale_bench
//! target/release/examples/scale_bench
//! ```
//!
//! Starts Azurite (from `node_modules`) on a free port and the release `vmpool` binary (found
//! beside this example, or at `VMPOOL_BIN`) over one table, then grows the table to 1,000,
//! 10,000 and 50,000 VMs. At each size it measures CreateVM over HTTP on the reclaim path
//! and on the standby path, next to the raw calls any claim needs at least (one point read
//! and one conditional update) and the raw calls a claim by scanning would need (one
//! filtered query over the VM table and one conditional update). At 50,000 it measures pages
//! of GetAvailableVMs and GetPoolStatus (and counts only), next to the raw page and count
//! queries, and reads the binary's peak RSS (`VmHWM` in `/proc/<pid>/status`). Last, it
//! times one reconcile pass that changes 10,000 rows, next to the same 10,000 conditional
//! updates made raw at the same concurrency.
//!
//! `BENCH_ITERATIONS` (default 200) sets the samples per CreateVM figure.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::Etag;
use azure_data_tables::prelude::{EntityClient, IfMatchCondition, TableClient};
use futures::StreamExt;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value};
use time::macros::datetime;
use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::Compute;
use vmpool::compute::sim::{Latencies, SimCloud, SimulatedCompute};
use vmpool::config::Config;
use vmpool::domain::{Purpose, VmId, VmRecord, VmState};
use vmpool::store::table::TableStore;
use vmpool::store::{VmStore, Written};

#[path = "../tests/it/support/azurite.rs"]
mod azurite;
#[path = "common/mod.rs"]
mod common;

use common::{
    Res, Samples, iterations, json, raw_body, raw_query, raw_table, raw_update, timed, vm,
};

const SIZES: [usize; 3] = [1_000, 10_000, 50_000];
/// Rows of each claimable kind (MarkedForDeallocation, Standby) at every size.
const CLAIMABLE: usize = 100;
/// Rows the reconcile pass changes.
const RECONCILED: usize = 10_000;
/// Seeding and raw bulk writes in flight at once.
const SEED_CONCURRENCY: usize = 64;

/// The state of the `i`th seeded VM: the claimable ones first, then four Running to one
/// Deallocated.
fn seeded_state(i: usize) -> VmState {
    if i < CLAIMABLE {
        VmState::MarkedForDeallocation
    } else if i < 2 * CLAIMABLE {
        VmState::Standby
    } else if i % 5 == 0 {
        VmState::Deallocated
    } else {
        VmState::Running
    }
}

fn name(i: usize) -> String {
    format!("scale-{i:06}")
}

/// The `i`th seeded row: 3 rooms on a Running VM, none on the others.
fn seeded_vm(i: usize) -> VmRecord {
    let state = seeded_state(i);
    vm(
        &name(i),
        state,
        if state == VmState::Running { 3 } else { 0 },
    )
}

/// Writes rows `from..to` through the store (rows and their index entries).
async fn seed(store: &Arc<TableStore>, from: usize, to: usize) -> Res<Duration> {
    let started = Instant::now();
    let results = futures::stream::iter(from..to)
        .map(|i| {
            let store = store.clone();
            async move { store.insert(&seeded_vm(i)).await }
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        if let Written::LostRace = r? {
            return Err("a seeded name existed already".into());
        }
    }
    Ok(started.elapsed())
}

/// Sets the row of `id` to `state` through the store (not measured).
async fn set_state(store: &dyn VmStore, id: &str, state: VmState) -> Res<()> {
    let id = VmId::parse(id)?;
    let row = store.get(&id).await?.ok_or("row vanished")?;
    let mut next = row.vm.clone();
    next.state = state;
    next.rooms = 0;
    if let Written::LostRace = store.update(&next, &row.etag).await? {
        return Err("lost a race while resetting".into());
    }
    Ok(())
}

/// The release vmpool binary, serving one table on a loopback port.
struct Binary {
    child: Child,
    base: String,
}

impl Binary {
    fn start(connection_string: &str, table: &str) -> Res<Binary> {
        let path = match std::env::var("VMPOOL_BIN") {
            Ok(path) => std::path::PathBuf::from(path),
            Err(_) => std::env::current_exe()?
                .parent()
                .and_then(|examples| examples.parent())
                .ok_or("no directory above the example")?
                .join("vmpool"),
        };
        if !path.exists() {
            return Err(format!(
                "{} is missing: run `cargo build --release --bin vmpool` first",
                path.display()
            )
            .into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(path)
            .env_clear()
            .env("VMPOOL_PORT", port.to_string())
            .env("VMPOOL_STORAGE", connection_string)
            .env("VMPOOL_TABLE", table)
            .env("VMPOOL_COMPUTE", "simulated")
            .env("VMPOOL_RECONCILE_SECS", "0")
            .env("VMPOOL_MAX_VMS", "100000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Binary {
            child,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    async fn ready(&self, http: &reqwest::Client) -> Res<()> {
        for _ in 0..300 {
            if http.get(format!("{}/", self.base)).send().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the vmpool binary did not answer within 30 s".into())
    }

    /// `VmHWM` (peak resident set) and `VmRSS` of the process, in MB.
    fn memory(&self) -> Res<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> Res<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or("no such field")?;
            let kb: f64 = line.split_whitespace().nth(1).ok_or("no value")?.parse()?;
            Ok(kb / 1024.0)
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rows of `state` among the first `size` seeded.
fn of_state(size: usize, state: VmState) -> Vec<String> {
    (0..size)
        .filter(|i| seeded_state(*i) == state)
        .map(name)
        .collect()
}

/// Reads the row `key` raw: its client, its body marked claimed (Running), and its etag.
async fn read_to_claim(raw: &TableClient, key: &str) -> Res<(EntityClient, Value, Etag)> {
    let entity = raw.partition_key_client(key).entity_client(key);
    let got = entity.get::<Map<String, Value>>().await?;
    let (mut body, _) = raw_body(got.entity);
    body["VM_State"] = "Running".into();
    Ok((entity, body, got.etag))
}

/// CreateVM over HTTP, `iterations` times, each claim put back afterwards; with the raw
/// floor (point read + conditional update) and the raw scan claim interleaved.
async fn claims(ctx: &Ctx<'_>, size: usize, kind: VmState, iterations: usize) -> Res<Claims> {
    let (action, filter) = match kind {
        VmState::MarkedForDeallocation => ("reclaimed", "VM_State eq 'MarkedForDeallocation'"),
        _ => ("standby", "VM_State eq 'Standby'"),
    };
    let candidates = of_state(size, kind);
    let mut c = Claims::default();
    let warmup = iterations / 10;
    for i in 0..warmup + iterations {
        if i == warmup {
            c = Claims::default();
        }
        let Claims {
            vmpool,
            floor,
            cached,
            scan,
        } = &mut c;
        let answer = timed(vmpool, async {
            json(ctx.http.post(format!("{}/api/CreateVM", ctx.binary.base))).await
        })
        .await?;
        if answer["action"] != action {
            return Err(format!("CreateVM did not answer {action}: {answer}").into());
        }
        let claimed = answer["vm"]["vmId"].as_str().unwrap_or_default().to_owned();
        set_state(ctx.store, &claimed, kind).await?;

        // The floor: read one known candidate, claim it conditionally.
        let key = candidates.choose(&mut rand::rng()).ok_or("no candidate")?;
        timed(floor, async {
            let (entity, body, etag) = read_to_claim(ctx.raw, key).await?;
            entity.update(&body, IfMatchCondition::Etag(etag))?.await?;
            Res::Ok(())
        })
        .await?;
        set_state(ctx.store, key, kind).await?;

        // The candidate-cache design at its best: a copy already in memory, claimed with one
        // conditional update (the copy is read untimed just before).
        let key = candidates.choose(&mut rand::rng()).ok_or("no candidate")?;
        let (entity, body, etag) = read_to_claim(ctx.raw, key).await?;
        timed(cached, async {
            entity.update(&body, IfMatchCondition::Etag(etag))?.await?;
            Res::Ok(())
        })
        .await?;
        set_state(ctx.store, key, kind).await?;

        // The scan claim, every fifth round (it is slow at size).
        if i % 5 == 0 {
            let key = timed(scan, async {
                let rows = raw_query(ctx.raw, Some(filter)).await?;
                let row = rows.choose(&mut rand::rng()).ok_or("no row")?.clone();
                let (key, _) =
                    raw_update(ctx.raw, row, |body| body["VM_State"] = "Running".into()).await?;
                Res::Ok(key)
            })
            .await?;
            set_state(ctx.store, &key, kind).await?;
        }
    }
    Ok(c)
}

/// The CreateVM figures at one size.
#[derive(Default)]
struct Claims {
    /// CreateVM over HTTP.
    vmpool: Samples,
    /// Raw: a point read and a conditional update.
    floor: Samples,
    /// Raw: one conditional update of a copy already in memory.
    cached: Samples,
    /// Raw: a filtered query over the VM table and a conditional update.
    scan: Samples,
}

struct Ctx<'a> {
    store: &'a TableStore,
    raw: &'a TableClient,
    http: &'a reqwest::Client,
    binary: &'a Binary,
}

/// Moves the rows `ids` to `to` (not measured).
async fn move_all(ctx: &Ctx<'_>, ids: Vec<String>, to: VmState) -> Res<()> {
    let results = futures::stream::iter(ids)
        .map(|id| async move { set_state(ctx.store, &id, to).await })
        .buffer_unordered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// Pages of a listing over HTTP, following the continuation, at most `pages` of them.
async fn http_pages(ctx: &Ctx<'_>, route: &str, pages: usize) -> Res<(Samples, usize)> {
    let mut samples = Samples::default();
    let mut token: Option<String> = None;
    let mut rows = 0;
    for _ in 0..pages {
        let url = match &token {
            Some(t) => format!("{}{route}?continuation={t}", ctx.binary.base),
            None => format!("{}{route}", ctx.binary.base),
        };
        let answer = timed(&mut samples, async { json(ctx.http.get(url)).await }).await?;
        rows += answer["vms"].as_array().map_or(0, Vec::len);
        match answer["continuation"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => token = None,
        }
        if token.is_none() {
            break;
        }
    }
    Ok((samples, rows))
}

/// The same pages raw: a filtered query of 1000 rows, following the service's continuation.
async fn raw_pages(ctx: &Ctx<'_>, filter: Option<&'static str>, pages: usize) -> Res<Samples> {
    let mut samples = Samples::default();
    let mut query = ctx.raw.query().top(1000);
    if let Some(filter) = filter {
        query = query.filter(filter);
    }
    let mut stream = query.into_stream::<Map<String, Value>>();
    for _ in 0..pages {
        let page = timed(&mut samples, stream.next()).await;
        match page {
            Some(page) => drop(page?),
            None => break,
        }
    }
    Ok(samples)
}

/// The raw count: every row's state, page by page.
async fn raw_count(ctx: &Ctx<'_>) -> Res<usize> {
    let mut stream = ctx
        .raw
        .query()
        .select("VM_State")
        .into_stream::<Map<String, Value>>();
    let mut n = 0;
    while let Some(page) = stream.next().await {
        n += page?.entities.len();
    }
    Ok(n)
}

async fn listings(ctx: &Ctx<'_>, size: usize) -> Res<()> {
    const PAGES: usize = 10;
    println!("listings at {size} rows (pages of 1000, the default and the maximum):");
    let (available, rows) = http_pages(ctx, "/api/GetAvailableVMs", PAGES).await?;
    let raw_available = raw_pages(ctx, Some("VM_State eq 'Running'"), PAGES).await?;
    println!(
        "{}",
        raw_available.line("raw: 1 filtered query page (Running)", None)
    );
    println!(
        "{}",
        available.line(
            &format!("GetAvailableVMs page ({rows} VMs in {PAGES})"),
            Some(&raw_available)
        )
    );
    let (status, rows) = http_pages(ctx, "/api/GetPoolStatus", PAGES).await?;
    let raw_all = raw_pages(ctx, None, PAGES).await?;
    let mut counts = Samples::default();
    let mut raw_counts = Samples::default();
    for _ in 0..5 {
        timed(&mut raw_counts, raw_count(ctx)).await?;
        let answer = timed(&mut counts, async {
            json(
                ctx.http
                    .get(format!("{}/api/GetPoolStatus?vms=false", ctx.binary.base)),
            )
            .await
        })
        .await?;
        if answer.get("vms").is_some() {
            return Err("vms=false still listed VMs".into());
        }
    }
    println!("{}", raw_all.line("raw: 1 query page (all states)", None));
    println!(
        "{}",
        raw_counts.line("raw: count (every row's state)", None)
    );
    println!(
        "{}",
        status.line(
            &format!("GetPoolStatus page + counts ({rows} VMs in {PAGES})"),
            Some(&raw_counts)
        )
    );
    println!(
        "{}",
        counts.line("GetPoolStatus?vms=false (counts only)", Some(&raw_counts))
    );
    let (hwm, rss) = ctx.binary.memory()?;
    println!("  vmpool binary memory: peak RSS (VmHWM) {hwm:.1} MB, RSS now {rss:.1} MB");
    Ok(())
}

/// One reconcile pass over `RECONCILED` rows whose deallocation finished, in process;
/// then the same number of conditional updates made raw at the same concurrency.
async fn reconcile(az: &azurite::Azurite) -> Res<()> {
    let table = azurite::table_name("reconcile");
    let store = Arc::new(TableStore::connect(&az.connection_string(), &table).await?);
    let raw = raw_table(az.port(), azurite::ACCOUNT, &table, Duration::from_secs(30))?;
    let vars: HashMap<String, String> = HashMap::new();
    let config = Config::from_source(&vars)?;
    let start = datetime!(2026-01-01 00:00 UTC);
    let clock = Arc::new(ManualClock::new(start));
    let clock_dyn: Arc<dyn Clock> = clock.clone();
    let cloud = Arc::new(SimCloud::new(clock_dyn.clone(), Latencies::default(), 1));
    let compute: Arc<dyn Compute> = Arc::new(SimulatedCompute::new(cloud, "bench"));
    // The pass to measure: 10,000 VMs that CreateVM handed out and that never reported nor
    // were marked, so every one goes back to the buffer (a table write and an index entry
    // each). ARM runs them all, so nothing else is due.
    println!("seeding {RECONCILED} Running VMs handed out and never used ...");
    let ids: Vec<VmId> = (0..RECONCILED)
        .map(|i| VmId::parse(&format!("rec-{i:05}")))
        .collect::<Result<_, _>>()?;
    let spec = config.policy.pools.all()[0].clone();
    for id in &ids {
        compute.create(id, &spec.vm()).await?;
    }
    clock.advance(time::Duration::minutes(5));
    let running_at = clock.now();
    let results = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let store = store.clone();
            let mut vm = VmRecord::new_creating(
                id.clone(),
                compute.resource_id(&id),
                Purpose::Matchmaker,
                start,
            );
            vm.state = VmState::Running;
            vm.operation = None;
            vm.operation_since = None;
            vm.state_changed_at = running_at;
            vm.public_ip = Some("203.0.113.9".into());
            let vm = vm.placed(&spec.name, &spec.build);
            async move { store.insert(&vm).await }
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        r?;
    }
    clock.advance(time::Duration::seconds(
        i64::try_from(config.policy.claim_timeout.as_secs())? + 60,
    ));
    let state = vmpool::startup::state(&config, store.clone(), compute, clock_dyn);
    let started = Instant::now();
    let summary = state.reconciler.run_once().await?;
    let pass = started.elapsed();
    println!("  reconcile pass: {}", summary.line());
    println!(
        "  {:<44} {:>8.2} s  ({} rows changed, {} writes in flight at most)",
        "vmpool reconcile pass",
        pass.as_secs_f64(),
        summary.unclaimed,
        vmpool::store::WRITE_CONCURRENCY
    );

    // Raw: the same number of conditional updates, from a listing, at the same concurrency;
    // then the same calls the pass makes, each update followed by the insert of a copy into a
    // second table, as a row that becomes Deallocated gets its index entry.
    let raw_pass = raw_updates(&raw, None).await?;
    println!(
        "  {:<44} {:>8.2} s  ratio {:.2}",
        "raw: 1 listing + 10000 conditional updates",
        raw_pass.as_secs_f64(),
        pass.as_secs_f64() / raw_pass.as_secs_f64()
    );
    let copies_name = azurite::table_name("copies");
    let copies = raw_table(
        az.port(),
        azurite::ACCOUNT,
        &copies_name,
        Duration::from_secs(30),
    )?;
    copies.create().await?;
    let raw_same = raw_updates(&raw, Some(&copies)).await?;
    println!(
        "  {:<44} {:>8.2} s  ratio {:.2}",
        "raw: the same + 10000 inserts of a copy",
        raw_same.as_secs_f64(),
        pass.as_secs_f64() / raw_same.as_secs_f64()
    );
    Ok(())
}

/// Lists `raw`'s rows and updates each conditionally (and, with `copies`, inserts a copy of
/// it there), `WRITE_CONCURRENCY` at a time; how long it all took.
async fn raw_updates(raw: &TableClient, copies: Option<&TableClient>) -> Res<Duration> {
    let started = Instant::now();
    let rows = raw_query(raw, None).await?;
    let results = futures::stream::iter(rows)
        .map(|row| async move {
            let (_, body) = raw_update(raw, row, |body| {
                body["Rooms"] = (body["Rooms"].as_i64().unwrap_or_default() + 1).into();
            })
            .await?;
            if let Some(copies) = copies {
                copies.insert::<_, Value>(&body)?.await?;
            }
            Res::Ok(())
        })
        .buffer_unordered(vmpool::store::WRITE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        r?;
    }
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> Res<()> {
    let iterations = iterations(200);
    let az =
        tokio::task::spawn_blocking(|| azurite::Azurite::start(azurite::Persistence::InMemory))
            .await?;
    let table = azurite::table_name("scale");
    let store = Arc::new(TableStore::connect(&az.connection_string(), &table).await?);
    let raw = raw_table(az.port(), azurite::ACCOUNT, &table, Duration::from_secs(30))?;
    let binary = Binary::start(&az.connection_string(), &table)?;
    let http = reqwest::Client::new();
    binary.ready(&http).await?;
    println!(
        "Azurite on port {}; the release vmpool binary at {}; {iterations} CreateVM samples per figure",
        az.port(),
        binary.base
    );
    let ctx = Ctx {
        store: &store,
        raw: &raw,
        http: &http,
        binary: &binary,
    };
    let mut seeded = 0;
    let mut reclaim_p50 = Vec::new();
    let mut standby_p50 = Vec::new();
    for size in SIZES {
        let took = seed(&store, seeded, size).await?;
        println!(
            "\n{size} rows ({CLAIMABLE} MarkedForDeallocation, {CLAIMABLE} Standby, then 4 Running : 1 Deallocated); seeded {} more in {:.1} s",
            size - seeded,
            took.as_secs_f64()
        );
        seeded = size;
        let reclaim = claims(&ctx, size, VmState::MarkedForDeallocation, iterations).await?;
        for (label, samples) in [
            ("raw floor: 1 point read + 1 cond. update", &reclaim.floor),
            ("raw cache claim: 1 cond. update of a copy", &reclaim.cached),
            ("raw scan claim: 1 filtered query + 1 update", &reclaim.scan),
        ] {
            println!("{}", samples.line(label, None));
        }
        println!(
            "{}",
            reclaim.vmpool.line(
                "CreateVM reclaim (HTTP, release binary)",
                Some(&reclaim.floor)
            )
        );
        let marked = of_state(size, VmState::MarkedForDeallocation);
        move_all(&ctx, marked.clone(), VmState::Running).await?;
        let standby = claims(&ctx, size, VmState::Standby, iterations).await?;
        println!(
            "{}",
            standby.vmpool.line(
                "CreateVM standby (HTTP, release binary)",
                Some(&standby.floor)
            )
        );
        move_all(&ctx, marked, VmState::MarkedForDeallocation).await?;
        reclaim_p50.push(reclaim.vmpool.pct(50));
        standby_p50.push(standby.vmpool.pct(50));
    }
    println!(
        "\nCreateVM p50 at 50k / at 1k: reclaim {:.2}x, standby {:.2}x",
        reclaim_p50[2].as_secs_f64() / reclaim_p50[0].as_secs_f64(),
        standby_p50[2].as_secs_f64() / standby_p50[0].as_secs_f64()
    );
    println!();
    listings(&ctx, seeded).await?;
    println!();
    reconcile(&az).await?;
    Ok(())
}
