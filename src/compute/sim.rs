//! A simulated Azure: VMs whose provisioning and power states move on a [`Clock`] with
//! ARM-like latencies. [`SimulatedCompute`] serves it in process (the embedded default and
//! unit tests); the ARM fake (`crates/arm-fake`) serves the same model over HTTP.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::{Duration, OffsetDateTime};

use super::{BUILD_TAG, POOL_NAME_TAG, POOL_TAG, tags_for};
use super::{Compute, ComputeError, Image, Listed, Power, Provisioning, VmSpec, VmStatus};
use crate::clock::Clock;
use crate::domain::VmId;

/// How long simulated operations take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latencies {
    /// A create, until provisioned and running.
    pub create: Duration,
    /// A start of a deallocated VM, until running.
    pub start: Duration,
    /// A deallocate, until deallocated.
    pub deallocate: Duration,
    /// A delete, until gone.
    pub delete: Duration,
    /// Each latency is drawn uniformly within this fraction of itself (0.2 = ±20%).
    pub jitter: f64,
}

impl Default for Latencies {
    /// Roughly what Azure takes for a small Linux VM.
    fn default() -> Self {
        Latencies {
            create: Duration::seconds(150),
            start: Duration::seconds(60),
            deallocate: Duration::seconds(60),
            delete: Duration::seconds(30),
            jitter: 0.0,
        }
    }
}

/// One scripted fault, consumed by the next matching operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The next call of this kind is refused at once with this error.
    Refuse(SimOp, ComputeError),
    /// The next create is accepted, but provisioning ends `Failed` with this message.
    ProvisioningFails(String),
    /// The next start is accepted, but fails in its operation (`AllocationFailed: ...`):
    /// the VM stays deallocated with its provisioning `Failed`, and can be started later.
    StartFails(String),
}

/// The operations a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimOp {
    /// PUT of a VM.
    Create,
    /// POST start.
    Start,
    /// POST deallocate.
    Deallocate,
    /// DELETE.
    Delete,
    /// Any read.
    Read,
}

#[derive(Debug, Clone)]
struct SimVm {
    provisioning: Provisioning,
    power: Power,
    /// When the operation in progress completes, and the state it leaves.
    pending: Option<(OffsetDateTime, Provisioning, Power)>,
    public_ip: Option<String>,
    tags: BTreeMap<String, String>,
    created_at: OffsetDateTime,
}

impl SimVm {
    fn settle(&mut self, now: OffsetDateTime) {
        if let Some((at, prov, power)) = &self.pending
            && *at <= now
        {
            self.provisioning = prov.clone();
            self.power = *power;
            self.pending = None;
        }
    }

    fn busy(&self) -> bool {
        self.pending.is_some()
    }
}

/// A VM as the simulated cloud sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimVmView {
    /// Its name.
    pub name: String,
    /// Its status now.
    pub status: VmStatus,
    /// Its public IP.
    pub public_ip: Option<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

#[derive(Debug)]
struct Inner {
    vms: HashMap<String, SimVm>,
    free_ips: Vec<String>,
    faults: Vec<Fault>,
    rng: StdRng,
    calls: BTreeMap<&'static str, u64>,
    /// Each VM's states as changed (oldest first), kept for [`HISTORY`] so a lagging view
    /// ([`SimCloud::list_as_of`]) can be served; `None`: gone.
    history: HashMap<String, Vec<(OffsetDateTime, Option<SimVm>)>>,
    logged_since_prune: usize,
}

/// How far back [`SimCloud::list_as_of`] can look.
pub const HISTORY: Duration = Duration::minutes(10);

impl Inner {
    /// Records `name`'s state as changed at `now`, and forgets what is older than [`HISTORY`]
    /// (but the newest record before it, which still holds then).
    fn log(&mut self, name: &str, now: OffsetDateTime) {
        let state = self.vms.get(name).cloned();
        let entries = self.history.entry(name.to_owned()).or_default();
        entries.push((now, state));
        let horizon = now - HISTORY;
        let old = entries.iter().filter(|(at, _)| *at <= horizon).count();
        if old > 1 {
            entries.drain(..old - 1);
        }
        // VMs long gone are forgotten now and then, so that logging stays O(1) amortized.
        self.logged_since_prune += 1;
        if self.logged_since_prune < self.history.len().max(1024) {
            return;
        }
        self.logged_since_prune = 0;
        let forgotten: Vec<String> = self
            .history
            .iter()
            .filter(|(_, e)| matches!(e.as_slice(), [(at, None)] if *at <= horizon))
            .map(|(n, _)| n.clone())
            .collect();
        for n in forgotten {
            self.history.remove(&n);
        }
    }
}

/// The simulated cloud: VMs, their public IPs and scripted faults, moved by a clock.
pub struct SimCloud {
    clock: Arc<dyn Clock>,
    latencies: Latencies,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for SimCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCloud")
            .field("latencies", &self.latencies)
            .finish_non_exhaustive()
    }
}

/// Public IPs handed out from the three documentation ranges (RFC 5737).
fn documentation_ips() -> Vec<String> {
    let mut ips = Vec::new();
    for net in ["203.0.113", "198.51.100", "192.0.2"] {
        for host in 1..=254 {
            ips.push(format!("{net}.{host}"));
        }
    }
    ips.reverse();
    ips
}

impl SimCloud {
    /// An empty cloud on `clock`; `seed` fixes the jitter.
    pub fn new(clock: Arc<dyn Clock>, latencies: Latencies, seed: u64) -> Self {
        SimCloud {
            clock,
            latencies,
            inner: Mutex::new(Inner {
                vms: HashMap::new(),
                free_ips: documentation_ips(),
                faults: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                calls: BTreeMap::new(),
                history: HashMap::new(),
                logged_since_prune: 0,
            }),
        }
    }

    /// The clock the cloud moves on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a fault for the next matching operation.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes a VM at once, as if someone deleted it behind the pool's back.
    pub fn remove_behind_our_back(&self, name: &str) {
        let mut inner = self.lock();
        if let Some(vm) = inner.vms.remove(name)
            && let Some(ip) = vm.public_ip
        {
            inner.free_ips.push(ip);
        }
        inner.log(name, self.clock.now());
    }

    /// Forces a VM's power state at once (drift: someone stopped or started it in the portal).
    pub fn force_power(&self, name: &str, power: Power) {
        let mut inner = self.lock();
        if let Some(vm) = inner.vms.get_mut(name) {
            vm.pending = None;
            vm.power = power;
            inner.log(name, self.clock.now());
        }
    }

    /// The last operation on a VM's model failed (a VM extension, for one): its provisioning
    /// state becomes `Failed` with `error` and its power state stays what it was, so a
    /// running VM keeps running. Returns whether the VM exists.
    pub fn model_fails(&self, name: &str, error: &str) -> bool {
        let mut inner = self.lock();
        let now = self.clock.now();
        let Some(vm) = inner.vms.get_mut(name) else {
            return false;
        };
        vm.settle(now);
        vm.provisioning = Provisioning::Failed(error.to_owned());
        if let Some((_, prov, _)) = &mut vm.pending {
            *prov = Provisioning::Failed(error.to_owned());
        }
        inner.log(name, now);
        true
    }

    /// How many calls of each kind were made (`create`, `start`, ...).
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.lock().calls.clone()
    }

    fn refused(inner: &mut Inner, op: SimOp) -> Option<ComputeError> {
        let at = inner
            .faults
            .iter()
            .position(|f| matches!(f, Fault::Refuse(o, _) if *o == op))?;
        match inner.faults.remove(at) {
            Fault::Refuse(_, err) => Some(err),
            Fault::ProvisioningFails(_) | Fault::StartFails(_) => None,
        }
    }

    fn latency(inner: &mut Inner, base: Duration, jitter: f64) -> Duration {
        if jitter <= 0.0 {
            return base;
        }
        let factor = inner.rng.random_range((1.0 - jitter)..=(1.0 + jitter));
        Duration::seconds_f64(base.as_seconds_f64() * factor)
    }

    fn enter(
        &self,
        op: SimOp,
        name: &'static str,
    ) -> Result<std::sync::MutexGuard<'_, Inner>, ComputeError> {
        let mut inner = self.lock();
        *inner.calls.entry(name).or_default() += 1;
        if let Some(err) = Self::refused(&mut inner, op) {
            return Err(err);
        }
        let now = self.clock.now();
        for vm in inner.vms.values_mut() {
            vm.settle(now);
        }
        Ok(inner)
    }

    /// PUT: creates the VM, or does nothing if it exists. Returns whether it was new.
    pub fn create(&self, name: &str, tags: BTreeMap<String, String>) -> Result<bool, ComputeError> {
        let mut inner = self.enter(SimOp::Create, "create")?;
        if let Some(vm) = inner.vms.get(name) {
            return match vm.provisioning {
                Provisioning::Deleting => Err(ComputeError::Conflict(format!(
                    "VM {name} is being deleted"
                ))),
                _ => Ok(false),
            };
        }
        let now = self.clock.now();
        let fails = inner
            .faults
            .iter()
            .position(|f| matches!(f, Fault::ProvisioningFails(_)))
            .map(|at| inner.faults.remove(at));
        let after = Self::latency(&mut inner, self.latencies.create, self.latencies.jitter);
        let (prov, power) = match fails {
            Some(Fault::ProvisioningFails(msg)) => (Provisioning::Failed(msg), Power::Unknown),
            _ => (Provisioning::Succeeded, Power::Running),
        };
        let public_ip = inner.free_ips.pop();
        inner.vms.insert(
            name.to_owned(),
            SimVm {
                provisioning: Provisioning::Creating,
                power: Power::Starting,
                pending: Some((now + after, prov, power)),
                public_ip,
                tags,
                created_at: now,
            },
        );
        inner.log(name, now);
        Ok(true)
    }

    /// POST start.
    pub fn start(&self, name: &str) -> Result<(), ComputeError> {
        let mut inner = self.enter(SimOp::Start, "start")?;
        let after = Self::latency(&mut inner, self.latencies.start, self.latencies.jitter);
        let now = self.clock.now();
        let vm = inner.vms.get_mut(name).ok_or(ComputeError::NotFound)?;
        if vm.busy() && vm.power != Power::Starting {
            return Err(ComputeError::Conflict(format!(
                "an operation on VM {name} is in progress"
            )));
        }
        if matches!(vm.power, Power::Running | Power::Starting) {
            return Ok(());
        }
        vm.power = Power::Starting;
        vm.pending = Some((now + after, Provisioning::Succeeded, Power::Running));
        let fails = inner
            .faults
            .iter()
            .position(|f| matches!(f, Fault::StartFails(_)))
            .map(|at| inner.faults.remove(at));
        if let (Some(Fault::StartFails(msg)), Some(vm)) = (fails, inner.vms.get_mut(name)) {
            vm.pending = Some((now + after, Provisioning::Failed(msg), Power::Deallocated));
        }
        inner.log(name, now);
        Ok(())
    }

    /// POST deallocate (also of a stopped VM).
    pub fn deallocate(&self, name: &str) -> Result<(), ComputeError> {
        let mut inner = self.enter(SimOp::Deallocate, "deallocate")?;
        let after = Self::latency(&mut inner, self.latencies.deallocate, self.latencies.jitter);
        let now = self.clock.now();
        let vm = inner.vms.get_mut(name).ok_or(ComputeError::NotFound)?;
        if vm.busy() && vm.power != Power::Deallocating {
            return Err(ComputeError::Conflict(format!(
                "an operation on VM {name} is in progress"
            )));
        }
        if matches!(vm.power, Power::Deallocated | Power::Deallocating) {
            return Ok(());
        }
        vm.power = Power::Deallocating;
        let prov = vm.provisioning.clone();
        vm.pending = Some((now + after, prov, Power::Deallocated));
        inner.log(name, now);
        Ok(())
    }

    /// POST powerOff: stopped but still allocated, after the deallocate latency.
    pub fn power_off(&self, name: &str) -> Result<(), ComputeError> {
        let mut inner = self.enter(SimOp::Deallocate, "powerOff")?;
        let after = Self::latency(&mut inner, self.latencies.deallocate, self.latencies.jitter);
        let now = self.clock.now();
        let vm = inner.vms.get_mut(name).ok_or(ComputeError::NotFound)?;
        if vm.busy() && vm.power != Power::Stopping {
            return Err(ComputeError::Conflict(format!(
                "an operation on VM {name} is in progress"
            )));
        }
        if matches!(
            vm.power,
            Power::Stopped | Power::Stopping | Power::Deallocated | Power::Deallocating
        ) {
            return Ok(());
        }
        vm.power = Power::Stopping;
        let prov = vm.provisioning.clone();
        vm.pending = Some((now + after, prov, Power::Stopped));
        inner.log(name, now);
        Ok(())
    }

    /// DELETE: the VM is gone after the delete latency (its IP is released then).
    pub fn delete(&self, name: &str) -> Result<(), ComputeError> {
        let mut inner = self.enter(SimOp::Delete, "delete")?;
        let after = Self::latency(&mut inner, self.latencies.delete, self.latencies.jitter);
        let now = self.clock.now();
        let Some(vm) = inner.vms.get_mut(name) else {
            return Ok(());
        };
        vm.provisioning = Provisioning::Deleting;
        vm.pending = Some((now + after, Provisioning::Deleting, Power::Unknown));
        inner.log(name, now);
        Ok(())
    }

    fn reap(inner: &mut Inner) {
        let gone: Vec<String> = inner
            .vms
            .iter()
            .filter(|(_, vm)| vm.provisioning == Provisioning::Deleting && !vm.busy())
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(ip) = inner.vms.remove(&name).and_then(|vm| vm.public_ip) {
                inner.free_ips.push(ip);
            }
        }
    }

    /// One VM as it is now.
    pub fn get(&self, name: &str) -> Result<Option<SimVmView>, ComputeError> {
        let mut inner = self.enter(SimOp::Read, "get")?;
        Self::reap(&mut inner);
        Ok(inner.vms.get(name).map(|vm| view(name, vm)))
    }

    /// Every VM as it is now, sorted by name.
    pub fn list(&self) -> Result<Vec<SimVmView>, ComputeError> {
        let mut inner = self.enter(SimOp::Read, "list")?;
        Self::reap(&mut inner);
        let mut all: Vec<SimVmView> = inner.vms.iter().map(|(n, vm)| view(n, vm)).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Every VM as it was at `at` (at most [`HISTORY`] ago), sorted by name: the view of an
    /// index that follows the cloud with a lag. A change made in the last moment is not in
    /// it; a VM deleted since still is.
    pub fn list_as_of(&self, at: OffsetDateTime) -> Result<Vec<SimVmView>, ComputeError> {
        let inner = self.enter(SimOp::Read, "list")?;
        let mut all: Vec<SimVmView> = inner
            .history
            .iter()
            .filter_map(|(name, entries)| {
                let (_, state) = entries.iter().rev().find(|(t, _)| *t <= at)?;
                let mut vm = state.clone()?;
                vm.settle(at);
                let reaped = vm.provisioning == Provisioning::Deleting && !vm.busy();
                (!reaped).then(|| view(name, &vm))
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }
}

fn view(name: &str, vm: &SimVm) -> SimVmView {
    SimVmView {
        name: name.to_owned(),
        status: VmStatus {
            provisioning: vm.provisioning.clone(),
            power: vm.power,
        },
        public_ip: vm.public_ip.clone(),
        tags: vm.tags.clone(),
        created_at: vm.created_at,
    }
}

/// The compute port over a [`SimCloud`] in process.
#[derive(Debug, Clone)]
pub struct SimulatedCompute {
    cloud: Arc<SimCloud>,
    pool: String,
    /// The image each VM was created from, as ARM's `storageProfile.imageReference` keeps it.
    images: Arc<Mutex<HashMap<String, Image>>>,
}

impl SimulatedCompute {
    /// Serves `cloud`; VMs are tagged as members of `pool`.
    pub fn new(cloud: Arc<SimCloud>, pool: impl Into<String>) -> Self {
        SimulatedCompute {
            cloud,
            pool: pool.into(),
            images: Arc::default(),
        }
    }

    /// The simulated cloud behind it, to script faults or look inside.
    pub fn cloud(&self) -> &Arc<SimCloud> {
        &self.cloud
    }
}

#[async_trait]
impl Compute for SimulatedCompute {
    fn describe(&self) -> String {
        let l = self.cloud.latencies;
        format!(
            "simulated ARM (create {}s, start {}s, deallocate {}s)",
            l.create.whole_seconds(),
            l.start.whole_seconds(),
            l.deallocate.whole_seconds()
        )
    }

    fn resource_id(&self, name: &VmId) -> String {
        format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/simulated/providers/Microsoft.Compute/virtualMachines/{name}"
        )
    }

    async fn create(&self, name: &VmId, pool: &VmSpec) -> Result<(), ComputeError> {
        let created = self
            .cloud
            .create(name.as_str(), tags_for(&self.pool, pool))?;
        if created {
            self.images
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.as_str().to_owned(), pool.image.clone());
        }
        Ok(())
    }

    async fn start(&self, name: &VmId) -> Result<(), ComputeError> {
        self.cloud.start(name.as_str())
    }

    async fn deallocate(&self, name: &VmId) -> Result<(), ComputeError> {
        self.cloud.deallocate(name.as_str())
    }

    async fn delete(&self, name: &VmId) -> Result<(), ComputeError> {
        self.cloud.delete(name.as_str())
    }

    async fn status(&self, name: &VmId) -> Result<Option<VmStatus>, ComputeError> {
        Ok(self.cloud.get(name.as_str())?.map(|vm| vm.status))
    }

    async fn list(&self) -> Result<Vec<Listed>, ComputeError> {
        // Like ARM's resource-group listing: tags and provisioning state, no power state.
        Ok(self
            .cloud
            .list()?
            .into_iter()
            .filter_map(|vm| {
                let name = VmId::parse(&vm.name).ok()?;
                Some(Listed {
                    resource_id: self.resource_id(&name),
                    status: VmStatus {
                        provisioning: vm.status.provisioning,
                        power: Power::Unknown,
                    },
                    tagged: vm.tags.get(POOL_TAG) == Some(&self.pool),
                    pool: vm.tags.get(POOL_NAME_TAG).cloned(),
                    build: vm.tags.get(BUILD_TAG).cloned(),
                    name,
                })
            })
            .collect())
    }

    async fn list_power(&self) -> Result<Vec<Listed>, ComputeError> {
        // Like Resource Graph's answer: power state and tags.
        Ok(self
            .cloud
            .list()?
            .into_iter()
            .filter_map(|vm| {
                let name = VmId::parse(&vm.name).ok()?;
                Some(Listed {
                    resource_id: self.resource_id(&name),
                    status: vm.status,
                    tagged: vm.tags.get(POOL_TAG) == Some(&self.pool),
                    pool: vm.tags.get(POOL_NAME_TAG).cloned(),
                    build: vm.tags.get(BUILD_TAG).cloned(),
                    name,
                })
            })
            .collect())
    }

    async fn public_ip(&self, name: &VmId) -> Result<Option<String>, ComputeError> {
        Ok(self.cloud.get(name.as_str())?.and_then(|vm| vm.public_ip))
    }

    async fn image(&self, name: &VmId) -> Result<Option<Image>, ComputeError> {
        if self.cloud.get(name.as_str())?.is_none() {
            return Ok(None);
        }
        let images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        Ok(images.get(name.as_str()).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn cloud() -> (Arc<ManualClock>, SimulatedCompute) {
        let clock = Arc::new(ManualClock::default());
        let cloud = Arc::new(SimCloud::new(clock.clone(), Latencies::default(), 1));
        (clock, SimulatedCompute::new(cloud, "test"))
    }

    fn spec() -> VmSpec {
        crate::config::PoolPolicy::default().pools.all()[0].vm()
    }

    fn id(s: &str) -> VmId {
        VmId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn a_vm_is_created_started_and_deallocated_on_the_clock() {
        let (clock, c) = cloud();
        c.create(&id("a"), &spec()).await.unwrap();
        let s = c.status(&id("a")).await.unwrap().unwrap();
        assert_eq!(s.provisioning, Provisioning::Creating);
        clock.advance(Duration::seconds(149));
        assert!(!c.status(&id("a")).await.unwrap().unwrap().is_up());
        clock.advance(Duration::seconds(1));
        assert!(c.status(&id("a")).await.unwrap().unwrap().is_up());
        let ip = c.public_ip(&id("a")).await.unwrap().unwrap();
        assert!(ip.starts_with("203.0.113."), "{ip}");

        c.deallocate(&id("a")).await.unwrap();
        clock.advance(Duration::seconds(60));
        assert!(c.status(&id("a")).await.unwrap().unwrap().is_deallocated());
        assert_eq!(
            c.public_ip(&id("a")).await.unwrap(),
            Some(ip),
            "a static IP stays"
        );

        c.start(&id("a")).await.unwrap();
        clock.advance(Duration::seconds(60));
        assert!(c.status(&id("a")).await.unwrap().unwrap().is_up());
        assert_eq!(c.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_lagging_view_shows_the_cloud_as_it_was() {
        let (clock, c) = cloud();
        let t0 = clock.now();
        c.create(&id("a"), &spec()).await.unwrap();
        clock.advance(Duration::seconds(152));
        c.deallocate(&id("a")).await.unwrap();
        clock.advance(Duration::seconds(5));
        c.cloud().force_power("a", Power::Stopped);
        clock.advance(Duration::seconds(5));
        c.cloud().remove_behind_our_back("a");
        let at = |secs: i64| c.cloud().list_as_of(t0 + Duration::seconds(secs)).unwrap();
        assert!(at(-1).is_empty(), "not yet created");
        assert_eq!(at(149)[0].status.provisioning, Provisioning::Creating);
        assert!(at(151)[0].status.is_up(), "the create settled on its own");
        assert_eq!(at(156)[0].status.power, Power::Deallocating);
        assert_eq!(
            at(157)[0].status.power,
            Power::Stopped,
            "changed in the portal"
        );
        assert!(at(162).is_empty(), "deleted");
        c.create(&id("b"), &spec()).await.unwrap();
        c.delete(&id("b")).await.unwrap();
        clock.advance(Duration::seconds(30));
        assert_eq!(
            c.cloud()
                .list_as_of(clock.now() - Duration::seconds(1))
                .unwrap()
                .len(),
            1
        );
        assert!(
            c.cloud().list_as_of(clock.now()).unwrap().is_empty(),
            "reaped"
        );
    }

    #[tokio::test]
    async fn faults_and_missing_vms_give_their_errors() {
        let (clock, c) = cloud();
        assert_eq!(c.start(&id("nope")).await, Err(ComputeError::NotFound));
        c.cloud().inject(Fault::Refuse(
            SimOp::Create,
            ComputeError::Unavailable("boom".into()),
        ));
        assert!(c.create(&id("a"), &spec()).await.is_err());
        c.cloud()
            .inject(Fault::ProvisioningFails("AllocationFailed".into()));
        c.create(&id("a"), &spec()).await.unwrap();
        clock.advance(Duration::seconds(200));
        let s = c.status(&id("a")).await.unwrap().unwrap();
        assert_eq!(
            s.provisioning,
            Provisioning::Failed("AllocationFailed".into())
        );
        c.delete(&id("a")).await.unwrap();
        clock.advance(Duration::seconds(30));
        assert_eq!(c.status(&id("a")).await.unwrap(), None);
    }
}
