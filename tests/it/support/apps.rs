//! vmpool over any store (the Azurite tests use `TableStore`), and several instances over
//! one table.

use std::sync::Arc;

use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::Compute;
use vmpool::compute::sim::{Latencies, SimCloud, SimulatedCompute};
use vmpool::config::Config;
use vmpool::store::VmStore;

use super::{TestApp, serve};

/// vmpool over any store and simulated ARM on a manual clock.
pub struct StoreApp {
    pub app: TestApp,
    pub clock: Arc<ManualClock>,
    pub cloud: Arc<SimCloud>,
    pub store: Arc<dyn VmStore>,
}

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
    let latencies = match &config.compute {
        vmpool::config::ComputeConfig::Simulated(l) => *l,
        vmpool::config::ComputeConfig::Arm(_) => Latencies::default(),
    };
    Arc::new(SimCloud::new(clock as Arc<dyn Clock>, latencies, 7))
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
    let config = config(vars);
    let compute: Arc<dyn Compute> = Arc::new(SimulatedCompute::new(cloud.clone(), "test"));
    let state = vmpool::startup::state(&config, store.clone(), compute, clock.clone());
    StoreApp {
        app: serve(state).await,
        clock,
        cloud,
        store,
    }
}
