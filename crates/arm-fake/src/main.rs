//! The ARM fake as a local server: `cargo run --bin vmpool-arm-fake`, then run vmpool with
//! the settings it prints. VM states move on the system clock with short latencies.
//!
//! Settings (all optional): `VMPOOL_FAKE_PORT` (7080), `VMPOOL_FAKE_TOKEN`,
//! `VMPOOL_FAKE_SUBSCRIPTION`, `VMPOOL_FAKE_LOCATION`, and latencies in seconds
//! `VMPOOL_FAKE_CREATE_SECS` (20), `VMPOOL_FAKE_START_SECS` (10),
//! `VMPOOL_FAKE_DEALLOCATE_SECS` (10), `VMPOOL_FAKE_DELETE_SECS` (5), and how far Resource
//! Graph's answers lag, `VMPOOL_FAKE_GRAPH_LAG_SECS` (5).

use std::process::ExitCode;
use std::sync::Arc;

use vmpool::clock::SystemClock;
use vmpool::compute::sim::{Latencies, SimCloud};
use vmpool_arm_fake::{ArmFake, FakeSettings};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn secs(name: &str, default: i64) -> Result<time::Duration, String> {
    match var(name) {
        None => Ok(time::Duration::seconds(default)),
        Some(raw) => raw
            .trim()
            .parse::<u32>()
            .map(|s| time::Duration::seconds(i64::from(s)))
            .map_err(|_| format!("{name}: {raw:?} is not a whole number of seconds")),
    }
}

async fn run() -> Result<(), String> {
    let port: u16 = match var("VMPOOL_FAKE_PORT") {
        None => 7080,
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|_| format!("VMPOOL_FAKE_PORT: {raw:?} is not a port"))?,
    };
    let defaults = FakeSettings::default();
    let settings = FakeSettings {
        token: var("VMPOOL_FAKE_TOKEN").unwrap_or(defaults.token),
        subscription_id: var("VMPOOL_FAKE_SUBSCRIPTION").unwrap_or(defaults.subscription_id),
        location: var("VMPOOL_FAKE_LOCATION").unwrap_or(defaults.location),
        graph_lag_secs: secs("VMPOOL_FAKE_GRAPH_LAG_SECS", 5)?
            .whole_seconds()
            .unsigned_abs(),
        ..defaults
    };
    let latencies = Latencies {
        create: secs("VMPOOL_FAKE_CREATE_SECS", 20)?,
        start: secs("VMPOOL_FAKE_START_SECS", 10)?,
        deallocate: secs("VMPOOL_FAKE_DEALLOCATE_SECS", 10)?,
        delete: secs("VMPOOL_FAKE_DELETE_SECS", 5)?,
        jitter: 0.0,
    };
    let cloud = Arc::new(SimCloud::new(
        Arc::new(SystemClock),
        latencies,
        rand::random(),
    ));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let base = format!("http://127.0.0.1:{port}");
    let sub = &settings.subscription_id;
    println!("ARM fake listening on {base} (scripted faults under {base}/_fake/)");
    println!("Run vmpool against it with:");
    println!(
        "  VMPOOL_COMPUTE=arm VMPOOL_STORAGE=memory VMPOOL_ARM_ENDPOINT={base} VMPOOL_ARM_TOKEN={} \\\n  AZURE_SUBSCRIPTION_ID={sub} VMPOOL_RESOURCE_GROUP=vmpool-local VMPOOL_LOCATION={} \\\n  VMPOOL_SUBNET_ID=/subscriptions/{sub}/resourceGroups/vmpool-local/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default \\\n  VMPOOL_SSH_PUBLIC_KEY='ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheLocalFakeOnly local' \\\n  cargo run",
        settings.token, settings.location
    );
    let fake = Arc::new(ArmFake::new(cloud, settings));
    fake.serve(listener, vmpool::startup::shutdown_signal())
        .await
        .map_err(|e| format!("the fake failed: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmpool-arm-fake: {e}");
            ExitCode::FAILURE
        }
    }
}
