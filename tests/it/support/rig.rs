//! A pool and its reconciler without the HTTP layer, on virtual time, over any store and
//! compute: the in-memory store with simulated ARM, the real ARM client against the ARM fake,
//! or Azurite with the ARM fake. The same scenarios run over each.

use std::sync::Arc;

use time::Duration;
use vmpool::clock::ManualClock;
use vmpool::compute::sim::{Fault, SimCloud, SimOp};
use vmpool::compute::{Compute, ComputeError};
use vmpool::config::Config;
use vmpool::domain::{VmId, VmRecord, VmState};
use vmpool::http::AppState;
use vmpool::pool::Pool;
use vmpool::reconcile::{Reconciler, Summary};
use vmpool::store::memory::MemoryStore;
use vmpool::store::{Rows, VmStore};
use vmpool_arm_fake::{ArmFake, FakeOp, HttpFault};

use super::apps::{config, sim_cloud_seeded, sim_compute, table_store_named};
use super::arm::{Fake, arm_compute, spawn_fake};

/// A pool, its reconciler and the simulated cloud behind its compute API.
pub struct Rig {
    pub config: Config,
    pub store: Arc<dyn VmStore>,
    pub compute: Arc<dyn Compute>,
    pub cloud: Arc<SimCloud>,
    pub clock: Arc<ManualClock>,
    /// The app's state, as `startup::state` builds it, for serving the rig over HTTP.
    pub state: AppState,
    pub pool: Arc<Pool>,
    pub reconciler: Reconciler,
    /// Deletes a VM as someone in the portal would.
    pub remove_behind_our_back: Box<dyn Fn(&str) + Send + Sync>,
    /// Makes the next ARM create fail transiently (however often the client retries).
    pub fail_next_create: Box<dyn Fn() + Send + Sync>,
    /// Whatever must live as long as the rig (a fake server, an Azurite process).
    pub keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl Rig {
    /// Over the in-memory store and the simulated compute.
    pub fn sim(vars: &[(&str, &str)]) -> Rig {
        let config = config(vars);
        let clock = Arc::new(ManualClock::default());
        let cloud = sim_cloud_seeded(&config, clock.clone(), 3);
        let compute = sim_compute(&cloud);
        Rig::over(config, Arc::new(MemoryStore::new()), compute, cloud, clock)
    }

    /// Over the in-memory store and the real ARM client against the ARM fake over HTTP.
    pub async fn arm(vars: &[(&str, &str)]) -> Rig {
        Rig::arm_on(Arc::new(MemoryStore::new()), vars).await
    }

    /// Over `store` and the real ARM client against the ARM fake over HTTP.
    pub async fn arm_on(store: Arc<dyn VmStore>, vars: &[(&str, &str)]) -> Rig {
        let fake = spawn_fake(50).await;
        let mut rig = Rig::over(
            config(vars),
            store,
            arm_compute(&fake, "vmpool"),
            fake.fake.cloud().clone(),
            fake.clock.clone(),
        );
        let (f1, f2) = (fake.fake.clone(), fake.fake.clone());
        rig.remove_behind_our_back = Box::new(move |name| f1.delete_behind_our_back(name));
        rig.fail_next_create =
            Box::new(move || f2.fail_next(FakeOp::PutVm, 3, HttpFault::server_error()));
        rig.keep.push(Box::new(fake));
        rig
    }

    /// The production parts: a fresh Azurite table, and the real ARM client against the ARM
    /// fake.
    pub async fn azure(vars: &[(&str, &str)]) -> Rig {
        Rig::arm_on(table_store_named("reconcile").await, vars).await
    }

    /// Over any store and compute that drive `cloud` on `clock`.
    pub fn over(
        config: Config,
        store: Arc<dyn VmStore>,
        compute: Arc<dyn Compute>,
        cloud: Arc<SimCloud>,
        clock: Arc<ManualClock>,
    ) -> Rig {
        let state = vmpool::startup::state(&config, store.clone(), compute.clone(), clock.clone());
        let (c1, c2) = (cloud.clone(), cloud.clone());
        Rig {
            pool: state.pool.clone(),
            reconciler: state.reconciler.clone(),
            state,
            remove_behind_our_back: Box::new(move |name| c1.remove_behind_our_back(name)),
            fail_next_create: Box::new(move || {
                c2.inject(Fault::Refuse(
                    SimOp::Create,
                    ComputeError::Unavailable("503 from ARM".into()),
                ));
            }),
            keep: Vec::new(),
            config,
            store,
            compute,
            cloud,
            clock,
        }
    }

    /// The app started again with `vars` (an operator changing a setting and restarting
    /// it), on the same table, ARM and clock.
    pub fn restarted(self, vars: &[(&str, &str)]) -> Rig {
        let mut next = Rig::over(
            config(vars),
            self.store,
            self.compute,
            self.cloud,
            self.clock,
        );
        next.remove_behind_our_back = self.remove_behind_our_back;
        next.fail_next_create = self.fail_next_create;
        next.keep = self.keep;
        next
    }

    /// The ARM fake behind a rig built by [`Rig::arm`] or [`Rig::arm_on`].
    /// The ARM fake's base URL (a rig built with [`Rig::arm`]).
    pub fn fake_base(&self) -> String {
        self.keep
            .iter()
            .find_map(|k| k.downcast_ref::<Fake>())
            .map(|f| f.base.clone())
            .unwrap()
    }

    pub fn fake(&self) -> Arc<ArmFake> {
        self.keep
            .iter()
            .find_map(|k| k.downcast_ref::<Fake>())
            .map(|f| f.fake.clone())
            .unwrap()
    }

    pub async fn pass(&self) -> Summary {
        self.reconciler.run_once().await.unwrap()
    }

    pub fn advance(&self, secs: i64) {
        self.clock.advance(Duration::seconds(secs));
    }

    pub async fn rows(&self) -> Vec<VmRecord> {
        let mut rows: Vec<VmRecord> = self
            .store
            .list(Rows::All)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.vm)
            .collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        rows
    }

    /// The ids of the VMs the pool lists as available, in its order.
    pub async fn available_ids(&self) -> Vec<VmId> {
        self.pool
            .available()
            .await
            .unwrap()
            .into_iter()
            .map(|vm| vm.id)
            .collect()
    }

    pub async fn count(&self, state: VmState) -> usize {
        self.rows()
            .await
            .iter()
            .filter(|vm| vm.state == state)
            .count()
    }
}
