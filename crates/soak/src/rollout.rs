//! The rollout: mid-soak, the first pool's `build` and `image` change in `VMPOOL_POOLS` and the
//! instances restart one at a time with the new setting (SIGTERM, then the new process), a few
//! seconds apart, as changing an app setting restarts a deployment's instances. Until the last
//! one is back, instances disagree about the pool's current build.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

use crate::faults::Restartable;
use crate::procs::{FAKE_SUBSCRIPTION, RESOURCE_GROUP, Slot, stop_gracefully};
use crate::state::{PoolSettings, Shared, now_text};

/// `VMPOOL_POOLS` before (`rolled` false) or after the rollout.
pub fn pools_json(pools: &[PoolSettings], rolled: bool) -> String {
    let sub = FAKE_SUBSCRIPTION;
    let rg = RESOURCE_GROUP;
    let mut all = Map::new();
    for p in pools {
        let build = p.build_at(rolled);
        all.insert(
            p.name.to_owned(),
            json!({
                "location": p.location,
                "vmSize": p.vm_size,
                "build": build,
                // A gallery image version per build, as a studio publishes them.
                "image": format!(
                    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/galleries/games/images/server/versions/{build}"
                ),
                "subnetId": format!(
                    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/vnet-{}/subnets/default",
                    p.name
                ),
                "minStandby": p.min_standby,
                "maxVms": p.max_vms,
            }),
        );
    }
    Value::Object(all).to_string()
}

/// Waits `after`, then restarts every instance with the new `VMPOOL_POOLS`, one at a time.
pub async fn run(
    sh: Arc<Shared>,
    rs: Restartable,
    mut rng: StdRng,
    after: Duration,
) -> Result<(), String> {
    tokio::time::sleep(after).await;
    if sh.stopping() {
        return Ok(());
    }
    let rolled = pools_json(&sh.settings.pools, true);
    let what: Vec<String> = sh
        .settings
        .pools
        .iter()
        .filter_map(|p| {
            Some(format!(
                "pool {} from {} to {}",
                p.name, p.build, p.rollout_to?
            ))
        })
        .collect();
    sh.set_rollout(false);
    eprintln!("[{}] rollout of {} begins", now_text(), what.join(", "));
    sh.event(format_args!("rollout of {} begins", what.join(", ")));
    // The setting changes for every instance at once: any restart from now on takes it.
    for spec in rs.vmpools.iter() {
        let mut spec = spec.lock().await;
        for (name, value) in &mut spec.env {
            if name == "VMPOOL_POOLS" {
                value.clone_from(&rolled);
            }
        }
    }
    for (n, spec) in rs.vmpools.iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(2000..4000))).await;
        }
        let spec = spec.lock().await;
        sh.down().insert(spec.index);
        sh.event(format_args!(
            "rollout: vmpool {} stops (SIGTERM)",
            spec.index
        ));
        stop_gracefully(&rs.procs, Slot::Vmpool(spec.index), "-TERM").await;
        spec.start(&rs.layout, &rs.procs).await?;
        sh.down().remove(&spec.index);
        eprintln!(
            "[{}] rollout: vmpool {} is back with the new build",
            now_text(),
            spec.index
        );
        sh.event(format_args!(
            "rollout: vmpool {} is back with the new build",
            spec.index
        ));
    }
    sh.set_rollout(true);
    eprintln!("[{}] rollout: every instance has the new build", now_text());
    sh.event(format_args!("rollout: every instance has the new build"));
    Ok(())
}
