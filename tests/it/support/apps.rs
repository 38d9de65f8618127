//! vmpool served three ways: the in-memory store with simulated ARM, any store (Azurite's
//! tables) with simulated ARM, and the real ARM client against the ARM fake over HTTP. Each
//! runs on a `ManualClock`; several instances can share one table, clock and cloud.

use std::sync::Arc;

use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::Compute;
use vmpool::compute::sim::{Latencies, SimCloud, SimulatedCompute};
use vmpool::config::{ComputeConfig, Config};
use vmpool::http::AppState;
use vmpool::store::VmStore;
use vmpool::store::memory::MemoryStore;
use vmpool::store::table::TableStore;

use super::arm::{Fake, TOKEN, arm_compute, arm_env, spawn_fake};
use super::azurite::{Azurite, table_name};
use super::{TestApp, serve};

/// The configuration `vars` describe (nothing from the environment).
pub fn config(vars: &[(&str, &str)]) -> Config {
    let map: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::from_source(&map).unwrap()
}

/// The simulated cloud `config` describes, on `clock`.
pub fn sim_cloud(config: &Config, clock: Arc<ManualClock>) -> Arc<SimCloud> {
    sim_cloud_seeded(config, clock, 7)
}

/// The simulated cloud `config` describes, on `clock`, its jitter fixed by `seed`.
pub fn sim_cloud_seeded(config: &Config, clock: Arc<ManualClock>, seed: u64) -> Arc<SimCloud> {
    let latencies = match &config.compute {
        ComputeConfig::Simulated(l) => *l,
        ComputeConfig::Arm(_) => Latencies::default(),
    };
    Arc::new(SimCloud::new(clock as Arc<dyn Clock>, latencies, seed))
}

/// The simulated compute API over `cloud`.
pub fn sim_compute(cloud: &Arc<SimCloud>) -> Arc<dyn Compute> {
    Arc::new(SimulatedCompute::new(cloud.clone(), "test"))
}

/// A fresh table in the shared Azurite, its name starting with `prefix`.
pub async fn table_store_named(prefix: &str) -> Arc<TableStore> {
    Arc::new(
        TableStore::connect(&Azurite::shared().connection_string(), &table_name(prefix))
            .await
            .expect("connect to Azurite"),
    )
}

/// A fresh table in the shared Azurite.
pub async fn table_store() -> Arc<TableStore> {
    table_store_named("contract").await
}

// --- In memory, simulated ARM ---

/// The embedded default (memory store, simulated ARM) on a manual clock, not yet served.
pub struct SimParts {
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub cloud: Arc<SimCloud>,
    pub store: Arc<MemoryStore>,
}

/// The embedded default, served.
pub struct SimApp {
    pub app: TestApp,
    pub clock: Arc<ManualClock>,
    pub cloud: Arc<SimCloud>,
    pub store: Arc<MemoryStore>,
}

/// vmpool's state over the in-memory store and simulated ARM on a manual clock,
/// configured by `vars`.
pub fn sim_parts(vars: &[(&str, &str)]) -> SimParts {
    let config = config(vars);
    let clock = Arc::new(ManualClock::default());
    let cloud = sim_cloud(&config, clock.clone());
    let store = Arc::new(MemoryStore::new());
    let state = vmpool::startup::state(
        &config,
        store.clone() as Arc<dyn VmStore>,
        sim_compute(&cloud),
        clock.clone(),
    );
    SimParts {
        state,
        clock,
        cloud,
        store,
    }
}

/// vmpool over the in-memory store and simulated ARM, configured by `vars`, served.
pub async fn spawn_sim(vars: &[(&str, &str)]) -> SimApp {
    let parts = sim_parts(vars);
    SimApp {
        app: serve(parts.state).await,
        clock: parts.clock,
        cloud: parts.cloud,
        store: parts.store,
    }
}

// --- Any store (Azurite), simulated ARM ---

/// vmpool over any store and simulated ARM on a manual clock, served.
pub struct StoreApp {
    pub app: TestApp,
    pub clock: Arc<ManualClock>,
    pub cloud: Arc<SimCloud>,
    pub store: Arc<dyn VmStore>,
}

/// vmpool over `store` and simulated ARM on a fresh manual clock, configured by `vars`.
pub async fn spawn_on(store: Arc<dyn VmStore>, vars: &[(&str, &str)]) -> StoreApp {
    let clock = Arc::new(ManualClock::default());
    let cloud = sim_cloud(&config(vars), clock.clone());
    spawn_instance(store, vars, clock, cloud).await
}

/// One more vmpool instance over `store`, sharing a clock and a simulated cloud with others
/// (several Function instances in front of one table and one subscription).
pub async fn spawn_instance(
    store: Arc<dyn VmStore>,
    vars: &[(&str, &str)],
    clock: Arc<ManualClock>,
    cloud: Arc<SimCloud>,
) -> StoreApp {
    let state = vmpool::startup::state(
        &config(vars),
        store.clone(),
        sim_compute(&cloud),
        clock.clone(),
    );
    StoreApp {
        app: serve(state).await,
        clock,
        cloud,
        store,
    }
}

// --- The real ARM client against the ARM fake ---

/// vmpool over the in-memory store and the real ARM client against the ARM fake, served.
pub struct ArmApp {
    pub app: TestApp,
    pub fake: Fake,
    pub store: Arc<MemoryStore>,
}

/// vmpool over the in-memory store and the real ARM client against a fresh ARM fake, on the
/// fake's clock, configured by `vars`.
pub async fn spawn_arm(vars: &[(&str, &str)]) -> ArmApp {
    let fake = spawn_fake(50).await;
    let store = Arc::new(MemoryStore::new());
    let state = vmpool::startup::state(
        &config(vars),
        store.clone() as Arc<dyn VmStore>,
        arm_compute(&fake, "vmpool"),
        fake.clock.clone(),
    );
    ArmApp {
        app: serve(state).await,
        fake,
        store,
    }
}

/// vmpool with `VMPOOL_COMPUTE=arm` pointed at `fake`, its ports wired by `startup::ports`
/// exactly as the binary wires them; with the configuration it was built from.
pub async fn spawn_wired(fake: &Fake) -> (TestApp, Config) {
    let config = Config::from_source(&arm_env(&fake.base, TOKEN)).unwrap();
    let clock: Arc<dyn Clock> = fake.clock.clone();
    let (store, compute) = vmpool::startup::ports(&config, clock.clone())
        .await
        .unwrap();
    let app = serve(vmpool::startup::state(&config, store, compute, clock)).await;
    (app, config)
}
