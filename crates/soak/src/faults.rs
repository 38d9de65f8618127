//! Faults on a schedule drawn from the seed: through the ARM fake's `/_fake/` routes (429
//! bursts, 5xx, failed provisioning, slow operations, VMs deleted behind vmpool's back, VMs
//! missing from listings, short list pages, a 40 s window in which the region's core quota
//! refuses every create and start, a Resource Graph lag spike of 150 s, a failed VM extension
//! on a VM a match holds), kill -9 of a vmpool instance then its restart, and an
//! Azurite stop and restart. A route the fake does not have (404) is counted as "not
//! injected".

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use crate::procs::{AzuriteSpec, Instances, Layout, SharedProcs, Slot, lock};
use crate::state::{Answer, Shared, now_text};

/// ARM operations the scripted faults aim at (names as the fake's control routes take them).
const OPS: [&str; 8] = [
    "DeleteVm",
    "PutVm",
    "Start",
    "Deallocate",
    "ListVms",
    "GetVm",
    "OperationStatus",
    "GraphQuery",
];

/// How long the region's core quota refuses creates and starts, once per soak.
const QUOTA_WINDOW_SECS: u64 = 40;

/// What the faults task needs to restart processes.
#[derive(Debug, Clone)]
pub struct Restartable {
    /// Where binaries and logs are.
    pub layout: Layout,
    /// The children.
    pub procs: SharedProcs,
    /// Azurite.
    pub azurite: AzuriteSpec,
    /// The vmpool instances.
    pub vmpools: Instances,
}

/// Injects faults from `start` until `stop` (both from now, in the soak's schedule), then
/// brings every process back and returns.
pub async fn run(
    sh: Arc<Shared>,
    rs: Restartable,
    mut rng: StdRng,
    chaos: Duration,
) -> Result<(), String> {
    let begin = tokio::time::Instant::now();
    let end = begin + chaos;
    // The two process faults come once per 50 s of chaos, at seeded moments.
    let mut next_kill = begin + Duration::from_millis(rng.random_range(3000..12000));
    let mut next_azurite = begin + Duration::from_millis(rng.random_range(18000..32000));
    // One quota window per soak, early enough to end before the faults do.
    let mut quota_at = Some(begin + Duration::from_millis(rng.random_range(0..3000)));
    // A Resource Graph lag spike and a failed extension on a VM in use, once per 50 s too.
    let mut next_lag = begin + Duration::from_millis(rng.random_range(1000..8000));
    let mut next_extension = begin + Duration::from_millis(rng.random_range(8000..25000));
    while tokio::time::Instant::now() < end && !sh.stopping() {
        let now = tokio::time::Instant::now();
        if quota_at.is_some_and(|at| now >= at) {
            quota_at = None;
            let answer = post_fake(&sh, "/_fake/quota", json!({"secs": QUOTA_WINDOW_SECS})).await;
            count(
                &sh,
                "40 s quota window (creates and starts refused)",
                &answer,
            );
        } else if now >= next_lag {
            graph_lag_spike(&sh).await;
            next_lag += Duration::from_secs(50);
        } else if now >= next_extension {
            if extension_fails(&sh, &mut rng).await {
                next_extension += Duration::from_secs(50);
            } else {
                next_extension += Duration::from_secs(2);
            }
        } else if now >= next_kill {
            kill_and_restart(&sh, &rs, &mut rng).await?;
            next_kill += Duration::from_secs(50);
        } else if now >= next_azurite {
            azurite_restart(&sh, &rs, &mut rng).await?;
            next_azurite += Duration::from_secs(50);
        } else {
            arm_fault(&sh, &mut rng).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2500))).await;
    }
    // Resource Graph catches up once the faults stop.
    let answer = post_fake(&sh, "/_fake/graph-lag", json!({"secs": GRAPH_LAG_SECS})).await;
    sh.event(format_args!(
        "Resource Graph lag back to {GRAPH_LAG_SECS} s: {}",
        answer.label()
    ));
    Ok(())
}

/// Resource Graph's lag outside the spike (the fake's default).
const GRAPH_LAG_SECS: u64 = 5;

/// Resource Graph falls 150 s behind ARM (a backend disruption: its lag has no upper bound)
/// until the faults stop.
async fn graph_lag_spike(sh: &Shared) {
    let answer = post_fake(sh, "/_fake/graph-lag", json!({"secs": 150})).await;
    count(sh, "Resource Graph lag spike of 150 s", &answer);
}

/// A VM extension fails on a VM a match holds with rooms: ARM says provisioning `Failed`
/// while it keeps running. Returns whether there was such a VM.
async fn extension_fails(sh: &Shared, rng: &mut StdRng) -> bool {
    let in_use: Vec<String> = {
        let m = sh.model();
        let mut v: Vec<String> = m
            .holds
            .keys()
            .filter(|vm| m.rooms.get(*vm).is_some_and(|r| *r > 0))
            .cloned()
            .collect();
        v.sort();
        v
    };
    if in_use.is_empty() {
        return false;
    }
    let vm = &in_use[rng.random_range(0..in_use.len())];
    let body = json!({"vm": vm, "code": "VMExtensionProvisioningError",
        "message": "VM has reported a failure when processing extension 'gameserver'."});
    let answer = post_fake(sh, "/_fake/extension-failures", body).await;
    count(sh, "failed extension on a VM in use", &answer);
    true
}

async fn post_fake(sh: &Shared, path: &str, body: Value) -> Answer {
    let req = sh.http.post(format!("{}{path}", sh.fake_base)).json(&body);
    sh.send(req, Duration::from_secs(5)).await
}

fn count(sh: &Shared, kind: &str, answer: &Answer) {
    sh.event(format_args!("fault {kind}: {}", answer.label()));
    match answer.status() {
        Some(200..=299) => sh.fault(kind, true, None),
        Some(404) => sh.fault(
            kind,
            false,
            Some("the ARM fake has no such control route (404)".into()),
        ),
        _ => sh.fault(
            kind,
            false,
            Some(format!("the fake answered {}", answer.label())),
        ),
    }
}

/// A VM from the latest table read, in one of `states`.
fn pick_vm(sh: &Shared, rng: &mut StdRng, states: &[&str]) -> Option<String> {
    let rows: Vec<String> = sh
        .snapshot()
        .into_iter()
        .filter(|r| states.contains(&r.state.as_str()))
        .map(|r| r.vm)
        .collect();
    if rows.is_empty() {
        None
    } else {
        rows.get(rng.random_range(0..rows.len())).cloned()
    }
}

async fn arm_fault(sh: &Shared, rng: &mut StdRng) {
    let op = OPS[rng.random_range(0..OPS.len())];
    match rng.random_range(0..9) {
        0 | 1 => {
            let body = json!({"op": op, "status": 429, "code": "TooManyRequests",
                "message": "The request is being throttled.", "retryAfter": 1,
                "times": rng.random_range(2..=6)});
            let answer = post_fake(sh, "/_fake/faults", body).await;
            count(sh, "ARM 429 burst", &answer);
        }
        2 => {
            let (status, code) = if rng.random_bool(0.5) {
                (500, "InternalServerError")
            } else {
                (503, "ServiceUnavailable")
            };
            let body = json!({"op": op, "status": status, "code": code,
                "message": "An internal execution error occurred.",
                "times": rng.random_range(1..=3)});
            let answer = post_fake(sh, "/_fake/faults", body).await;
            count(sh, "ARM 5xx", &answer);
        }
        3 => {
            let body = json!({"code": "OSProvisioningTimedOut",
                "message": "OS Provisioning for VM did not finish in the allotted time."});
            let answer = post_fake(sh, "/_fake/provisioning-failures", body).await;
            count(sh, "failed provisioning", &answer);
        }
        4 => {
            // Mostly the create PUT: a slow create is what makes callers give up.
            let op = if rng.random_bool(0.5) { "PutVm" } else { op };
            let body = json!({"op": op, "millis": rng.random_range(1500..6000),
                "times": rng.random_range(1..=3)});
            let answer = post_fake(sh, "/_fake/delays", body).await;
            count(sh, "slow ARM operation", &answer);
        }
        5 => {
            let Some(vm) = pick_vm(sh, rng, &["Running", "Standby", "MarkedForDeallocation"])
            else {
                return;
            };
            // The game on it is over: the model lets it go before it disappears.
            {
                let mut m = sh.model();
                m.deleted_behind.insert(vm.clone());
                m.holds.remove(&vm);
                m.marking.remove(&vm);
                m.end_all_uses(Some(&vm));
            }
            sh.event(format_args!("fault: {vm} deleted behind vmpool's back"));
            let req = sh.http.delete(format!("{}/_fake/vms/{vm}", sh.fake_base));
            let answer = sh.send(req, Duration::from_secs(5)).await;
            count(sh, "VM deleted behind vmpool's back", &answer);
        }
        6 => {
            let Some(vm) = pick_vm(sh, rng, &["Running", "Standby", "MarkedForDeallocation"])
            else {
                return;
            };
            let body = json!({"vm": vm, "secs": rng.random_range(3..=12)});
            let answer = post_fake(sh, "/_fake/hide", body).await;
            count(sh, "one VM missing from listings", &answer);
        }
        7 => {
            let body = json!({"vm": null, "secs": rng.random_range(3..=8)});
            let answer = post_fake(sh, "/_fake/hide", body).await;
            count(sh, "every VM missing from listings", &answer);
        }
        _ => {
            let body = json!({"times": rng.random_range(1..=3)});
            let answer = post_fake(sh, "/_fake/short-pages", body).await;
            count(sh, "list pages ending early", &answer);
        }
    }
}

async fn kill_and_restart(sh: &Shared, rs: &Restartable, rng: &mut StdRng) -> Result<(), String> {
    let Some(spec) = rs.vmpools.get(rng.random_range(0..rs.vmpools.len())) else {
        return Ok(());
    };
    // Waits while the rollout restarts this instance; comes back with its settings of now.
    let spec = spec.lock().await;
    eprintln!("[{}] fault: kill -9 vmpool {}", now_text(), spec.index);
    sh.down().insert(spec.index);
    lock(&rs.procs).kill(Slot::Vmpool(spec.index));
    sh.fault("kill -9 of a vmpool instance", true, None);
    tokio::time::sleep(Duration::from_millis(rng.random_range(1500..5000))).await;
    spec.start(&rs.layout, &rs.procs).await?;
    sh.down().remove(&spec.index);
    eprintln!("[{}] vmpool {} is back", now_text(), spec.index);
    Ok(())
}

async fn azurite_restart(sh: &Shared, rs: &Restartable, rng: &mut StdRng) -> Result<(), String> {
    eprintln!("[{}] fault: Azurite stops", now_text());
    rs.azurite.stop(&rs.procs).await;
    sh.fault("Azurite stop and restart", true, None);
    tokio::time::sleep(Duration::from_millis(rng.random_range(2000..5000))).await;
    rs.azurite.start(&rs.layout, &rs.procs).await?;
    eprintln!("[{}] Azurite is back", now_text());
    Ok(())
}
