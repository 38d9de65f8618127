//! Benchmark of vmpool on Table Storage: prints figures, asserts nothing.
//!
//! ```text
//! npm ci --no-audit --no-fund
//! cargo run --release --example store_bench
//! ```
//!
//! Starts Azurite (from `node_modules`) on a free port, seeds 1000 VMs, and measures p50/p99
//! of CreateVM (reclaim path), ReportGameRoomsNumber and GetAvailableVMs, each next to the
//! raw `azure_data_tables` calls a design without an index needs (for CreateVM, a filtered
//! query of the VM table; vmpool reads its state index instead, see `scale_bench` for how the
//! two grow with the table), interleaved in the same run, and prints the ratios. vmpool is measured twice: over HTTP (what a caller sees,
//! axum and JSON included) and in process (the pool's own work). Then it runs the 64-caller
//! burst over 16 reclaimable VMs and prints table writes per successful claim, for one
//! instance and for two instances over one table.
//!
//! `BENCH_ITERATIONS` (default 300) sets the samples per figure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use azure_data_tables::prelude::IfMatchCondition;
use futures::StreamExt;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use vmpool::clock::{Clock, SystemClock};
use vmpool::compute::Compute;
use vmpool::compute::sim::{Latencies, SimCloud, SimulatedCompute};
use vmpool::config::Config;
use vmpool::domain::{VmId, VmState};
use vmpool::http::AppState;
use vmpool::pool::Pool;
use vmpool::store::table::TableStore;
use vmpool::store::{Rows, VmStore, Written};

#[path = "../tests/it/support/azurite.rs"]
mod azurite;
#[path = "common/mod.rs"]
mod common;

use common::{
    Res, Samples, iterations, json, ms, raw_body, raw_query, raw_table, raw_update, timed, vm,
};

const SEEDED: usize = 1000;
const RUNNING: usize = 500;
const MARKED: usize = 100;

/// A running vmpool over `store` on a loopback port.
struct Service {
    base: String,
    state: AppState,
}

async fn serve(store: Arc<dyn VmStore>, max_vms: &str) -> Res<Service> {
    let vars: HashMap<String, String> = [("VMPOOL_MAX_VMS", max_vms)]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let config = Config::from_source(&vars)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let cloud = Arc::new(SimCloud::new(clock.clone(), Latencies::default(), 1));
    let compute: Arc<dyn Compute> = Arc::new(SimulatedCompute::new(cloud, "bench"));
    let state = vmpool::startup::state(&config, store, compute, clock);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let served = state.clone();
    tokio::spawn(async move {
        let _ = vmpool::startup::run(listener, served, None, std::future::pending()).await;
    });
    Ok(Service { base, state })
}

fn report(name: &str, raw_what: &str, raw: &Samples, http: &Samples, pool: &Samples) {
    println!("{name} (raw: {raw_what})");
    println!(
        "  {:<22} p50 {:>7.2} ms   p99 {:>7.2} ms",
        "raw azure_data_tables",
        ms(raw.pct(50)),
        ms(raw.pct(99))
    );
    for (label, s) in [("vmpool in process", pool), ("vmpool over HTTP", http)] {
        println!(
            "  {:<22} p50 {:>7.2} ms   p99 {:>7.2} ms   ratio p50 {:.2}  p99 {:.2}",
            label,
            ms(s.pct(50)),
            ms(s.pct(99)),
            s.pct(50).as_secs_f64() / raw.pct(50).as_secs_f64(),
            s.pct(99).as_secs_f64() / raw.pct(99).as_secs_f64()
        );
    }
}

/// Puts a VM back to `MarkedForDeallocation` (not measured).
async fn remark(store: &dyn VmStore, id: &str) -> Res<()> {
    let id = VmId::parse(id)?;
    let row = store.get(&id).await?.ok_or("row vanished")?;
    let mut next = row.vm.clone();
    next.state = VmState::MarkedForDeallocation;
    if let Written::LostRace = store.update(&next, &row.etag).await? {
        return Err("lost a race while resetting".into());
    }
    Ok(())
}

async fn latency(az: &azurite::Azurite, iterations: usize) -> Res<()> {
    let table = azurite::table_name("bench");
    let store = Arc::new(TableStore::connect(&az.connection_string(), &table).await?);
    let raw = raw_table(az.port(), azurite::ACCOUNT, &table, Duration::from_secs(5))?;
    println!(
        "seeding {SEEDED} VMs ({RUNNING} Running, {MARKED} MarkedForDeallocation, the rest Deallocated) ..."
    );
    let names: Vec<(String, VmState)> = (0..SEEDED)
        .map(|i| {
            let state = if i < RUNNING {
                VmState::Running
            } else if i < RUNNING + MARKED {
                VmState::MarkedForDeallocation
            } else {
                VmState::Deallocated
            };
            (format!("bench-{i:04}"), state)
        })
        .collect();
    let seeded = futures::stream::iter(names.iter())
        .map(|(name, state)| {
            let store = store.clone();
            async move { store.insert(&vm(name, *state, 3)).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for s in seeded {
        s?;
    }
    let running: Vec<String> = names
        .iter()
        .filter(|(_, s)| *s == VmState::Running)
        .map(|(n, _)| n.clone())
        .collect();

    let service = serve(store.clone(), "1000").await?;
    let pool: &Pool = &service.state.pool;
    let http = reqwest::Client::new();
    let post = |path: &str| http.post(format!("{}{path}", service.base));
    let claim_filter =
        "VM_State eq 'MarkedForDeallocation' or VM_State eq 'Standby' or VM_State eq 'Creating'";
    let warmup = iterations / 10;

    // CreateVM, reclaim path: one filtered query plus one conditional update.
    let (mut raw_s, mut http_s, mut pool_s) =
        (Samples::default(), Samples::default(), Samples::default());
    for i in 0..warmup + iterations {
        if i == warmup {
            (raw_s, http_s, pool_s) = (Samples::default(), Samples::default(), Samples::default());
        }
        let id = timed(&mut raw_s, async {
            let rows = raw_query(&raw, Some(claim_filter)).await?;
            let row = rows
                .choose(&mut rand::rng())
                .ok_or("no reclaimable row")?
                .clone();
            let (key, _) =
                raw_update(&raw, row, |body| body["VM_State"] = "Running".into()).await?;
            Res::Ok(key)
        })
        .await?;
        remark(&*store, &id).await?;

        let answer = timed(&mut http_s, async { json(post("/api/CreateVM")).await }).await?;
        if answer["action"] != "reclaimed" {
            return Err(format!("CreateVM did not reclaim: {answer}").into());
        }
        remark(&*store, answer["vm"]["vmId"].as_str().unwrap_or_default()).await?;

        let created = timed(&mut pool_s, pool.create_vm()).await?;
        remark(&*store, created.vm.id.as_str()).await?;
    }
    report(
        "CreateVM, reclaim path",
        "1 filtered query + 1 conditional update",
        &raw_s,
        &http_s,
        &pool_s,
    );

    // ReportGameRoomsNumber: one read plus one conditional update.
    let (mut raw_s, mut http_s, mut pool_s) =
        (Samples::default(), Samples::default(), Samples::default());
    for i in 0..warmup + iterations {
        if i == warmup {
            (raw_s, http_s, pool_s) = (Samples::default(), Samples::default(), Samples::default());
        }
        let pick = || {
            running
                .choose(&mut rand::rng())
                .cloned()
                .unwrap_or_default()
        };
        let key = pick();
        timed(&mut raw_s, async {
            let entity = raw.partition_key_client(&key).entity_client(&key);
            let got = entity.get::<Map<String, Value>>().await?;
            let (mut body, _) = raw_body(got.entity);
            body["Rooms"] = ((i % 50) as u32).into();
            entity
                .update(&body, IfMatchCondition::Etag(got.etag))?
                .await?;
            Res::Ok(())
        })
        .await?;
        let key = pick();
        let status = timed(&mut http_s, async {
            post("/api/ReportGameRoomsNumber")
                .json(&serde_json::json!({"vmId": key, "rooms": i % 50}))
                .send()
                .await
                .map(|r| r.status())
        })
        .await?;
        if !status.is_success() {
            return Err(format!("ReportGameRoomsNumber answered {status}").into());
        }
        let key = VmId::parse(&pick())?;
        timed(&mut pool_s, pool.report_rooms(&key, (i % 50) as u32)).await?;
    }
    report(
        "ReportGameRoomsNumber",
        "1 read + 1 conditional update",
        &raw_s,
        &http_s,
        &pool_s,
    );

    // GetAvailableVMs: one filtered query (all pages).
    let (mut raw_s, mut http_s, mut pool_s) =
        (Samples::default(), Samples::default(), Samples::default());
    for i in 0..warmup + iterations {
        if i == warmup {
            (raw_s, http_s, pool_s) = (Samples::default(), Samples::default(), Samples::default());
        }
        let rows = timed(&mut raw_s, raw_query(&raw, Some("VM_State eq 'Running'"))).await?;
        let answer = timed(&mut http_s, async {
            json(http.get(format!("{}/api/GetAvailableVMs", service.base))).await
        })
        .await?;
        let vms = timed(&mut pool_s, pool.available()).await?;
        let listed = answer["vms"].as_array().map_or(0, Vec::len);
        if rows.len() != RUNNING || listed != RUNNING || vms.len() != RUNNING {
            return Err(format!(
                "expected {RUNNING} Running VMs, got raw {} http {listed} pool {}",
                rows.len(),
                vms.len()
            )
            .into());
        }
    }
    report(
        &format!("GetAvailableVMs ({RUNNING} of {SEEDED} VMs Running)"),
        "1 filtered query",
        &raw_s,
        &http_s,
        &pool_s,
    );
    Ok(())
}

/// 64 concurrent CreateVM over 16 reclaimable VMs with room for 4 more, spread over
/// `instances` vmpool instances with their own connections to one table.
async fn burst(az: &azurite::Azurite, instances: usize) -> Res<()> {
    let table = azurite::table_name("burst");
    let mut stores = Vec::new();
    let mut services = Vec::new();
    for _ in 0..instances {
        let store = Arc::new(TableStore::connect(&az.connection_string(), &table).await?);
        services.push(serve(store.clone(), "20").await?);
        stores.push(store);
    }
    for i in 0..16 {
        stores[0]
            .insert(&vm(
                &format!("burst-{i:02}"),
                VmState::MarkedForDeallocation,
                3,
            ))
            .await?;
    }
    let writes =
        |stores: &[Arc<TableStore>]| stores.iter().map(|s| s.write_attempts()).sum::<u64>();
    let before = writes(&stores);
    let http = reqwest::Client::new();
    let answers = futures::future::join_all((0..64).map(|i| {
        let url = format!("{}/api/CreateVM", services[i % instances].base);
        let http = http.clone();
        async move {
            let res = http.post(url).send().await?;
            let status = res.status().as_u16();
            Res::Ok((status, res.json::<Value>().await?))
        }
    }))
    .await;
    let mut claims = 0;
    let mut reclaimed = 0;
    let mut exhausted = 0;
    for answer in answers {
        let (status, json) = answer?;
        match status {
            200 | 202 => {
                claims += 1;
                if json["action"] == "reclaimed" {
                    reclaimed += 1;
                }
            }
            _ if json["error"]["code"] == "CapacityExhausted" => exhausted += 1,
            _ => return Err(format!("unexpected answer {status}: {json}").into()),
        }
    }
    let spent = writes(&stores) - before;
    let active = stores[0]
        .list(Rows::All)
        .await?
        .iter()
        .filter(|r| r.vm.state.counts_against_max())
        .count();
    println!(
        "64-caller burst, {instances} instance(s): {claims} claims ({reclaimed} reclaimed), {exhausted} CapacityExhausted, {spent} table writes = {:.2} writes per successful claim (minimum 1.00); {active} VMs count against the maximum of 20",
        spent as f64 / f64::from(claims.max(1))
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let iterations = iterations(300);
    let az =
        tokio::task::spawn_blocking(|| azurite::Azurite::start(azurite::Persistence::InMemory))
            .await?;
    println!(
        "Azurite on port {}; {iterations} samples per figure after {} warm-up rounds",
        az.port(),
        iterations / 10
    );
    latency(&az, iterations).await?;
    burst(&az, 1).await?;
    burst(&az, 2).await?;
    Ok(())
}
