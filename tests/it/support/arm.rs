//! The ARM fake over real HTTP on a loopback port, and the real ARM client's settings for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::Compute;
use vmpool::compute::arm::{ArmCompute, ArmConfig, ArmOptions};
use vmpool::compute::sim::{Latencies, SimCloud};
use vmpool::config::{ComputeConfig, Config};
use vmpool_arm_fake::{ArmFake, FakeOp, FakeSettings};

/// The bearer token the fake accepts.
pub const TOKEN: &str = "test-arm-token";
/// The fake's subscription.
pub const SUB: &str = "00000000-0000-0000-0000-0000000000aa";

/// A running fake on a loopback port; it stops when dropped.
pub struct Fake {
    pub fake: Arc<ArmFake>,
    pub base: String,
    pub clock: Arc<ManualClock>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The fake's settings with [`TOKEN`] and [`SUB`], listing `page_size` VMs a page.
pub fn fake_settings(page_size: usize) -> FakeSettings {
    FakeSettings {
        token: TOKEN.into(),
        subscription_id: SUB.into(),
        page_size,
        ..FakeSettings::default()
    }
}

/// The fake with [`TOKEN`] and [`SUB`], listing `page_size` VMs a page, on a fresh clock.
pub async fn spawn_fake(page_size: usize) -> Fake {
    spawn_fake_with(fake_settings(page_size), 3).await
}

/// The fake with `settings`, its cloud's jitter fixed by `seed`, on a fresh clock.
pub async fn spawn_fake_with(settings: FakeSettings, seed: u64) -> Fake {
    let clock = Arc::new(ManualClock::default());
    let cloud = Arc::new(SimCloud::new(
        clock.clone() as Arc<dyn Clock>,
        Latencies::default(),
        seed,
    ));
    let fake = Arc::new(ArmFake::new(cloud, settings));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(fake.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    Fake {
        fake,
        base,
        clock,
        _stop: stop,
    }
}

/// The statuses `fake` answered to the requests `op` that it recorded, in order.
pub fn statuses(fake: &ArmFake, op: FakeOp) -> Vec<u16> {
    fake.requests()
        .iter()
        .filter(|r| r.op == Some(op))
        .map(|r| r.status)
        .collect()
}

/// The settings of vmpool with `VMPOOL_COMPUTE=arm` (memory store) pointed at `base`.
pub fn arm_env(base: &str, token: &str) -> HashMap<String, String> {
    [
        ("VMPOOL_COMPUTE", "arm"),
        ("VMPOOL_STORAGE", "memory"),
        ("VMPOOL_ARM_ENDPOINT", base),
        ("VMPOOL_ARM_TOKEN", token),
        ("AZURE_SUBSCRIPTION_ID", SUB),
        ("VMPOOL_RESOURCE_GROUP", "games"),
        ("VMPOOL_LOCATION", "westeurope"),
        (
            "VMPOOL_SUBNET_ID",
            "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default",
        ),
        ("VMPOOL_SSH_PUBLIC_KEY", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITest test"),
        ("VMPOOL_RECONCILE_SECS", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The ARM client's settings for the fake at `base`.
pub fn arm_config(base: &str, token: &str) -> ArmConfig {
    match Config::from_source(&arm_env(base, token)).unwrap().compute {
        ComputeConfig::Arm(arm) => *arm,
        ComputeConfig::Simulated(_) => panic!("VMPOOL_COMPUTE=arm"),
    }
}

/// The pool the single-pool ARM settings of [`arm_config`] describe.
pub fn spec() -> vmpool::compute::VmSpec {
    vmpool::compute::arm::single_pool(&arm_config("http://127.0.0.1:1", TOKEN))
}

/// Short timeouts and backoff, so faults play out quickly.
pub fn quick() -> ArmOptions {
    ArmOptions {
        call_timeout: Duration::from_secs(5),
        server_error_retries: 2,
        backoff: Duration::from_millis(1),
        quota_wait: Duration::from_millis(20),
    }
}

/// The real ARM client for `fake`, tagging its VMs with `pool`.
pub fn arm_client(fake: &Fake, pool: &str) -> ArmCompute {
    ArmCompute::new(&arm_config(&fake.base, TOKEN), pool, quick()).unwrap()
}

/// [`arm_client`] behind the compute port.
pub fn arm_compute(fake: &Fake, pool: &str) -> Arc<dyn Compute> {
    Arc::new(arm_client(fake, pool))
}
