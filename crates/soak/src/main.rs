//! The chaos soak: three vmpool processes on one Azurite table and one ARM fake serving two
//! pools (two regions, two sizes), a matchmaker model, faults on a schedule drawn from a seed,
//! a rollout of one pool's build mid-soak (a rolling restart with the new setting), and twelve
//! invariants checked about every second and at the end.
//!
//! ```sh
//! cargo build --workspace --bins && target/debug/vmpool-soak
//! VMPOOL_SOAK_SECS=900 VMPOOL_SOAK_SEED=42 target/debug/vmpool-soak   # longer, replayed
//! ```
//!
//! Settings: `VMPOOL_SOAK_SECS` (traffic time, default 100, at least 70: 5 s of warm-up, then
//! faults, then 50 s without faults) and `VMPOOL_SOAK_SEED` (default 1, so every run plays the same script; printed). The
//! seed fixes the matchmaker's decisions and the fault schedule; the processes' own timing
//! is not replayed, so a replay follows the same script, not the same interleaving.
//!
//! It prints a summary (operations by outcome, faults injected, each invariant's checks and
//! violations), the seed, and a last line `N passed, N failed`; any violation exits 1, a
//! soak that could not run exits 2. Logs and Azurite's data are under `target/soak/`.

mod checks;
mod faults;
mod model;
mod procs;
mod rollout;
mod state;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checks::Checker;
use crate::faults::Restartable;
use crate::procs::{
    AzuriteSpec, FAKE_SUBSCRIPTION, FAKE_TOKEN, KillOnDrop, LOCATION, Layout, Procs,
    RESOURCE_GROUP, VmpoolSpec, free_port,
};
use crate::state::{INVARIANTS, PoolSettings, Settings, Shared, now_text, rfc};

/// vmpool instances.
const INSTANCES: usize = 3;
/// `VMPOOL_MAX_VMS`: below the pools' `maxVms` added up, so both caps bind.
const MAX_VMS: usize = 12;
/// The pools (`VMPOOL_POOLS`): two regions and two sizes; the first is rolled out mid-soak.
pub const POOLS: [PoolSettings; 2] = [
    PoolSettings {
        name: "eu",
        location: "westeurope",
        vm_size: "Standard_D2s_v5",
        max_vms: 8,
        min_standby: 2,
        build: "1.5.0",
        rollout_to: Some("1.6.0"),
    },
    PoolSettings {
        name: "us",
        location: "eastus",
        vm_size: "Standard_D4s_v5",
        max_vms: 6,
        min_standby: 1,
        build: "1.5.0",
        rollout_to: None,
    },
];
/// `VMPOOL_RECONCILE_SECS`.
const RECONCILE_SECS: u64 = 2;
/// `VMPOOL_CLAIM_TIMEOUT_SECS`.
const CLAIM_TIMEOUT_SECS: u64 = 15;
/// Time without faults at the end.
const QUIET_SECS: u64 = 50;
/// Time before the first fault.
const WARMUP_SECS: u64 = 5;
/// The seed when `VMPOOL_SOAK_SEED` is unset: the test command plays one fixed script.
const DEFAULT_SEED: u64 = 1;

fn settings() -> Result<Settings, String> {
    let seed = match std::env::var("VMPOOL_SOAK_SEED") {
        Ok(raw) if !raw.trim().is_empty() => raw
            .trim()
            .parse()
            .map_err(|_| format!("VMPOOL_SOAK_SEED: {raw:?} is not a whole number"))?,
        _ => DEFAULT_SEED,
    };
    let secs: u64 = match std::env::var("VMPOOL_SOAK_SECS") {
        Ok(raw) if !raw.trim().is_empty() => raw
            .trim()
            .parse()
            .ok()
            .filter(|s| (70..=86_400).contains(s))
            .ok_or_else(|| {
                format!("VMPOOL_SOAK_SECS: {raw:?} is not a number of seconds from 70 to 86400")
            })?,
        _ => 100,
    };
    Ok(Settings {
        seed,
        total: Duration::from_secs(secs),
        warmup: Duration::from_secs(WARMUP_SECS),
        quiet: Duration::from_secs(QUIET_SECS),
        max_vms: MAX_VMS,
        claim_timeout_secs: CLAIM_TIMEOUT_SECS,
        stable_bound: Duration::from_secs(45),
        orphan_settle: Duration::from_secs(20),
        // The reconcile lease a killed instance held (three periods, at least 15 s) runs out
        // before another instance reconciles, plus passes and a storage restart on the way.
        claim_slack_secs: 15 + 15,
        // Two more leases: the holder stopped by the rolling restart, then the instance that
        // took the lease over, stopped in turn.
        rollout_slack_secs: 15 + 15,
        pools: POOLS.to_vec(),
    })
}

fn vmpool_env(port: u16, fake_port: u16, storage: &str, pools: &str) -> Vec<(String, String)> {
    let sub = FAKE_SUBSCRIPTION;
    let pairs = [
        ("VMPOOL_PORT", port.to_string()),
        ("VMPOOL_BIND", "127.0.0.1".into()),
        ("VMPOOL_COMPUTE", "arm".into()),
        (
            "VMPOOL_ARM_ENDPOINT",
            format!("http://127.0.0.1:{fake_port}"),
        ),
        ("VMPOOL_ARM_TOKEN", FAKE_TOKEN.into()),
        ("AZURE_SUBSCRIPTION_ID", sub.into()),
        ("VMPOOL_RESOURCE_GROUP", RESOURCE_GROUP.into()),
        ("VMPOOL_LOCATION", LOCATION.into()),
        (
            "VMPOOL_SUBNET_ID",
            format!(
                "/subscriptions/{sub}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default"
            ),
        ),
        (
            "VMPOOL_SSH_PUBLIC_KEY",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheSoakOnly soak".into(),
        ),
        ("VMPOOL_STORAGE", storage.into()),
        ("VMPOOL_TABLE", "soakpool".into()),
        ("VMPOOL_RECONCILE_SECS", RECONCILE_SECS.to_string()),
        ("VMPOOL_MAX_VMS", MAX_VMS.to_string()),
        ("VMPOOL_POOLS", pools.into()),
        ("VMPOOL_CREATE_TIMEOUT_SECS", "20".into()),
        ("VMPOOL_DEALLOCATE_TIMEOUT_SECS", "8".into()),
        ("VMPOOL_DRAIN_TIMEOUT_SECS", "10".into()),
        ("VMPOOL_CLAIM_TIMEOUT_SECS", CLAIM_TIMEOUT_SECS.to_string()),
        ("VMPOOL_ADOPT_EVERY_SECS", "5".into()),
        ("VMPOOL_BREAKER_COOLDOWN_SECS", "10".into()),
        ("VMPOOL_BUFFER_COOLDOWN_SECS", "20".into()),
        ("VMPOOL_DEMAND_WINDOW_SECS", "30".into()),
        ("VMPOOL_READY_ESTIMATE_SECS", "5".into()),
        ("VMPOOL_LOG_FORMAT", "json".into()),
        ("RUST_LOG", "vmpool=debug".into()),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Resolves on Ctrl+C or SIGTERM, so the children are still killed.
async fn interrupted() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn soak() -> Result<bool, String> {
    let settings = settings()?;
    let seed = settings.seed;
    let chaos = settings.total - settings.warmup - settings.quiet;
    let layout = Layout::find(&format!("seed-{seed}"))?;
    let procs = Arc::new(Mutex::new(Procs::default()));
    let _guard = KillOnDrop(procs.clone());

    println!(
        "vmpool soak: seed {seed}; {} s of traffic ({} s warm-up, {} s of faults, {} s without); {INSTANCES} instances, VMPOOL_MAX_VMS={MAX_VMS}, VMPOOL_RECONCILE_SECS={RECONCILE_SECS}",
        settings.total.as_secs(),
        settings.warmup.as_secs(),
        chaos.as_secs(),
        settings.quiet.as_secs()
    );
    for p in &settings.pools {
        println!(
            "pool {}: {} {}, maxVms {}, minStandby {}, build {}{}",
            p.name,
            p.location,
            p.vm_size,
            p.max_vms,
            p.min_standby,
            p.build,
            p.rollout_to
                .map(|b| format!(", rolled out to {b} mid-soak"))
                .unwrap_or_default()
        );
    }
    println!("logs: {}", layout.run_dir.display());

    let azurite = AzuriteSpec { port: free_port()? };
    azurite.start(&layout, &procs).await?;
    let fake_port = free_port()?;
    procs::start_fake(&layout, &procs, fake_port).await?;
    let mut vmpools = Vec::new();
    let pools = rollout::pools_json(&settings.pools, false);
    for index in 0..INSTANCES {
        let port = free_port()?;
        let spec = VmpoolSpec {
            index,
            port,
            env: vmpool_env(port, fake_port, &azurite.connection_string(), &pools),
        };
        spec.start(&layout, &procs).await?;
        vmpools.push(spec);
    }
    let ports = vmpools.iter().map(|v| v.port).collect();
    let logs = vmpools.iter().map(|v| layout.log(&v.log_name())).collect();
    let sh = Arc::new(Shared::new(
        settings.clone(),
        ports,
        fake_port,
        &layout.log("events"),
    )?);
    eprintln!("[{}] system up; traffic starts", now_text());

    let mut master = StdRng::seed_from_u64(seed);
    let fault_rng = StdRng::seed_from_u64(master.random());
    let checker = tokio::spawn(Checker::new(logs).run(sh.clone()));
    let launcher = tokio::spawn(model::launcher(
        sh.clone(),
        StdRng::seed_from_u64(master.random()),
    ));
    let browser = tokio::spawn(model::browser(
        sh.clone(),
        StdRng::seed_from_u64(master.random()),
    ));
    let mut rollout_rng = StdRng::seed_from_u64(master.random());
    let restartable = Restartable {
        layout: layout.clone(),
        procs: procs.clone(),
        azurite: azurite.clone(),
        vmpools: Arc::new(vmpools.into_iter().map(tokio::sync::Mutex::new).collect()),
    };
    // The rollout begins a fifth to two fifths into the faults, so that it ends while they
    // still run and the old build's VMs are drained and deleted before the end.
    let rollout_after = settings.warmup + chaos.mul_f64(rollout_rng.random_range(0.2..0.4));
    let rolling = tokio::spawn(rollout::run(
        sh.clone(),
        restartable.clone(),
        rollout_rng,
        rollout_after,
    ));
    let schedule = {
        let sh = sh.clone();
        async move {
            tokio::time::sleep(sh.settings.warmup).await;
            eprintln!("[{}] faults start", now_text());
            faults::run(sh.clone(), restartable, fault_rng, chaos).await?;
            rolling
                .await
                .map_err(|e| format!("the rollout failed: {e}"))??;
            sh.set_quiet();
            eprintln!("[{}] faults stop; everything is up", now_text());
            tokio::time::sleep(sh.settings.quiet).await;
            Ok::<(), String>(())
        }
    };
    // Everything is bounded: the schedule, plus two minutes for restarts that hang.
    let bound = settings.total + Duration::from_secs(120);
    let outcome = tokio::select! {
        r = tokio::time::timeout(bound, schedule) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("the soak did not finish within {} s", bound.as_secs())),
        },
        () = interrupted() => Err("interrupted".into()),
    };
    sh.stopping.store(true, Ordering::SeqCst);
    let _ = launcher.await;
    let _ = browser.await;
    let mut checker = checker
        .await
        .map_err(|e| format!("the checker failed: {e}"))?;
    outcome?;
    eprintln!("[{}] traffic stopped; final checks", now_text());
    checker.finish(&sh).await;
    let pools = pools_status(&sh).await;
    Ok(summary(&sh, &layout, &checker, &pools))
}

/// Each pool's current build, buffer and rollout as GetPoolStatus shows them at the end.
async fn pools_status(sh: &Shared) -> Vec<String> {
    let Some(i) = (0..sh.ports.len()).find(|i| !sh.down().contains(i)) else {
        return Vec::new();
    };
    let req = sh.http.get(sh.url(i, "/api/GetPoolStatus"));
    let state::Answer::Status(200, body) = sh.send(req, Duration::from_secs(5)).await else {
        return vec!["GetPoolStatus did not answer".into()];
    };
    body.get("pools")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let text = |ptr: &str| match p.pointer(ptr) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            format!(
                "pool {}: build {}, buffer target {} (minStandby {}), rollout {}",
                text("/name"),
                text("/build"),
                text("/buffer/target"),
                text("/buffer/minStandby"),
                text("/rollout")
            )
        })
        .collect()
}

/// The rollout: its window, the hand-outs by what was asked and given, ARM's DELETEs by build,
/// and the VMs left by pool, build and state.
fn rollout_summary(sh: &Shared, checker: &Checker, pools: &[String]) {
    let window = sh.rollout();
    println!();
    match (window.started, window.finished) {
        (Some(a), Some(b)) => println!(
            "rollout: the first instance stopped at {}, the last was back with the new build at {} ({:.1} s)",
            rfc(a),
            rfc(b),
            (b - a).as_seconds_f64()
        ),
        (Some(a), None) => println!("rollout: began at {} and did not finish", rfc(a)),
        _ => println!("rollout: did not begin"),
    }
    println!(
        "  {:<6} {:<14} {:<14} {:>7}",
        "pool", "build asked", "handed out", "count"
    );
    for ((pool, asked, got), n) in &sh.model().handouts {
        println!("  {pool:<6} {asked:<14} {got:<14} {n:>7}");
    }
    println!(
        "  CreateVMs for the current build refused at a cap (503 CapacityExhausted) while old-build Standby VMs held places, after the rollout: {}",
        sh.model().refused_beside_old_idle
    );
    let (waits, reads, first) = checker.waits;
    println!(
        "  table reads after the rollout in which the pool kept idle old-build VMs while it could create its short buffer and did not: {waits} of {reads}{}",
        first
            .map(|t| format!(" (first at {}; events.log says \"rollout waits\")", rfc(t)))
            .unwrap_or_default()
    );
    println!("  ARM DELETEs accepted (pool, build from the VM's tags):");
    for ((pool, build), n) in &checker.deletes {
        println!("    {pool:<6} {build:<14} {n:>7}");
    }
    let mut left: std::collections::BTreeMap<(String, String, String), Vec<String>> =
        Default::default();
    for r in sh.snapshot() {
        let build = r.build.unwrap_or_else(|| "unknown".into());
        left.entry((r.pool, build, r.state)).or_default().push(r.vm);
    }
    println!("  rows at the end (pool, build, state; the VMs of a build no longer current):");
    let rolled = window.started.is_some();
    for ((pool, build, state), vms) in &left {
        let current = sh
            .settings
            .pools
            .iter()
            .any(|p| p.name == pool && p.build_at(rolled) == build);
        let names = if current {
            String::new()
        } else {
            vms.join(", ")
        };
        println!(
            "    {pool:<6} {build:<14} {state:<24} {:>4}  {names}",
            vms.len()
        );
    }
    for p in pools {
        println!("  {p}");
    }
}

fn summary(sh: &Shared, layout: &Layout, checker: &Checker, pools: &[String]) -> bool {
    let s = &sh.settings;
    println!();
    println!("operations");
    println!("  {:<30} {:<32} {:>7}", "kind", "outcome", "count");
    for ((kind, outcome), n) in sh.ops_table() {
        println!("  {kind:<30} {outcome:<32} {n:>7}");
    }
    println!();
    println!("latency of answered operations (client side, ms)");
    println!(
        "  {:<30} {:>7} {:>8} {:>8} {:>8}",
        "kind", "count", "p50", "p99", "max"
    );
    for (kind, all) in sh.latencies() {
        let at = |q: f64| {
            let i = ((all.len() as f64 - 1.0) * q).round() as usize;
            all.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "  {kind:<30} {:>7} {:>8.1} {:>8.1} {:>8.1}",
            all.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    println!();
    println!("faults");
    println!("  {:<34} {:>8} {:>13}", "kind", "injected", "not injected");
    let (faults, notes) = sh.faults_table();
    for (kind, (yes, no)) in &faults {
        println!("  {kind:<34} {yes:>8} {no:>13}");
    }
    for (kind, why) in &notes {
        println!("  not injected, {kind}: {why}");
    }
    rollout_summary(sh, checker, pools);
    println!();
    println!("invariants");
    println!(
        "  {:<3} {:<60} {:>7} {:>10}  result",
        "#", "invariant", "checks", "violations"
    );
    let (mut passed, mut failed, mut unobserved) = (0, 0, 0);
    let counters = sh.counters();
    for (i, (name, c)) in INVARIANTS.iter().zip(&counters).enumerate() {
        let result = if c.violations > 0 {
            failed += 1;
            "FAILED".to_owned()
        } else if let Some(why) = &c.not_observable {
            unobserved += 1;
            format!("NOT OBSERVABLE: {why}")
        } else if c.checks == 0 {
            unobserved += 1;
            "NOT OBSERVABLE: nothing to check in this run".to_owned()
        } else {
            passed += 1;
            "passed".to_owned()
        };
        println!(
            "  {:<3} {name:<60} {:>7} {:>10}  {result}",
            i + 1,
            c.checks,
            c.violations
        );
    }
    for (i, c) in counters.iter().enumerate() {
        for example in &c.examples {
            println!("  violation of {}: {example}", i + 1);
        }
    }
    println!();
    println!(
        "bounds: a matchmaker VM nobody holds is back in the pool within the claim timeout ({} s) + {} s ({} s more across the rolling restart); once faults stop, rows are stable within {} s and orphans are judged after {} s",
        s.claim_timeout_secs,
        s.claim_slack_secs,
        s.rollout_slack_secs,
        s.stable_bound.as_secs(),
        s.orphan_settle.as_secs()
    );
    println!("logs: {}", layout.run_dir.display());
    println!(
        "seed {}: replay with VMPOOL_SOAK_SEED={} VMPOOL_SOAK_SECS={} target/debug/vmpool-soak",
        s.seed,
        s.seed,
        s.total.as_secs()
    );
    if unobserved > 0 {
        println!(
            "{unobserved} invariant(s) not observable in this run (neither passed nor failed)"
        );
    }
    println!("{passed} passed, {failed} failed");
    failed == 0
}

#[tokio::main]
async fn main() -> ExitCode {
    match soak().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vmpool-soak: {e}");
            ExitCode::from(2)
        }
    }
}
