//! The four matchmaker operations (and the pool status) over the two ports. Each operation
//! reads rows, asks [`crate::domain`] what the transition is, writes it conditionally on the
//! row's ETag, and only then calls ARM ("write intent before acting").

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use tracing::{Instrument, info, instrument, warn};

use crate::clock::Clock;
use crate::compute::{Compute, ComputeError};
use crate::config::{PoolPolicy, PoolSpec};
use crate::domain::{
    self, ClaimKind, CreateAction, GiveBack, MarkAction, Marked, Operation, Purpose, Refused,
    Report, ReportAction, VmId, VmRecord, VmState,
};
use crate::idempotency::IdempotencyKey;
use crate::idempotency::record::{self as keys, Begun, KeyError};
use crate::store::{
    Etag, GroupCounts, Page, PageRequest, Rows, StateCounts, StoreError, Versioned, VmStore,
    Written,
};

/// How many candidates of one kind CreateVM tries before it falls through to the next kind.
const TRIES_PER_KIND: usize = 4;
/// How many times a single-VM operation re-reads and retries after losing a race.
const TRIES_PER_VM: usize = 8;
/// How long this instance remembers row versions it has consumed.
const STALE_MEMORY: Duration = Duration::from_secs(120);
/// The longest `Retry-After` CreateVM waits out itself, within `VMPOOL_ARM_RETRY_BUDGET_SECS`.
const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(5);
/// CreateVM's deadline beyond the ARM retry budget: table calls (5 s each at most) and the ARM
/// adapter's own time limits (20 s a call, 5xx retried twice).
const DEADLINE_MARGIN: Duration = Duration::from_secs(90);
/// How long a CreateVM waits for another request with its `Idempotency-Key` to answer.
const KEY_WAIT: Duration = Duration::from_secs(15);
/// A `pending` key is taken over this long after CreateVM's deadline, so instances whose
/// clocks differ a little never take over a request that is still running.
const KEY_TAKE_OVER_MARGIN: Duration = Duration::from_secs(30);
/// How many deallocated VMs the start path reads as candidates (not all of them).
const START_CANDIDATES: usize = 16;
/// The states CreateVM takes VMs from without consuming capacity.
const WITHOUT_CAPACITY: [VmState; 3] = [
    VmState::MarkedForDeallocation,
    VmState::Standby,
    VmState::Creating,
];

/// Why an operation did not happen. Nothing was changed by an operation that failed, except
/// where a variant says so (and then the reconciler finishes the job).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No VM with that name.
    #[error("no VM named {0}")]
    NotFound(VmId),
    /// The VM's state does not allow the operation.
    #[error(transparent)]
    Conflict(#[from] Refused),
    /// The pool is at `VMPOOL_MAX_VMS`.
    #[error("the pool is at its maximum of {max} VMs that are not Deallocated")]
    CapacityExhausted {
        /// The configured maximum.
        max: u32,
    },
    /// The named pool is at its own `maxVms`.
    #[error("pool {pool} is at its maximum of {max} VMs that are not Deallocated")]
    PoolFull {
        /// The pool.
        pool: String,
        /// Its maximum.
        max: u32,
    },
    /// A build other than the pool's current one was asked for and no idle VM of it is left
    /// (VMs are never created or started for a build that is not current).
    #[error(
        "no idle VM of build {build} is left in pool {pool}, and only its current build {current} gets new VMs"
    )]
    BuildExhausted {
        /// The pool.
        pool: String,
        /// The build asked for.
        build: String,
        /// The pool's current build.
        current: String,
    },
    /// The caller named a pool that is not configured.
    #[error("unknown pool {asked:?}; the pools are: {known}")]
    UnknownPool {
        /// The name asked for.
        asked: String,
        /// The configured pools, comma-separated.
        known: String,
    },
    /// Table storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// ARM failed. When the row had already been written, it is left for the reconciler to
    /// finish (a create or start finishes into the warm buffer; a deallocate is re-issued).
    #[error(transparent)]
    Compute(#[from] ComputeError),
    /// Other callers kept winning every race for this VM.
    #[error("the VM is being changed by other callers; try again")]
    Contention,
    /// Another CreateVM with the same `Idempotency-Key` is still in progress.
    #[error(
        "another request with this Idempotency-Key is still in progress; retry with the same key"
    )]
    KeyInFlight,
    /// CreateVM did not finish within its own deadline (or stopped unexpectedly); what it
    /// wrote is finished by the reconciler.
    #[error("CreateVM did not finish: {0}")]
    Interrupted(String),
}

impl From<KeyError> for PoolError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::InFlight => PoolError::KeyInFlight,
            KeyError::Store(e) => PoolError::Store(e),
        }
    }
}

/// What CreateVM is asked for: a VM of this pool running this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The pool.
    pub pool: PoolSpec,
    /// The build; the pool's current build unless the caller named another.
    pub build: String,
}

impl Wanted {
    /// Whether the build asked for is the pool's current one (only then may a VM be
    /// created, started or claimed while it is still being created).
    pub fn is_current(&self) -> bool {
        self.build == self.pool.build
    }

    /// Whether `vm` may be handed to this caller: same pool, same known build.
    pub fn accepts(&self, vm: &VmRecord) -> bool {
        vm.is_of(&self.pool.name, &self.build)
    }
}

/// Which VMs a listing shows: those of a pool, of a build, or all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this pool's VMs.
    pub pool: Option<String>,
    /// Only VMs of this build.
    pub build: Option<String>,
}

impl Filter {
    /// Whether `vm` is shown.
    pub fn shows(&self, vm: &VmRecord) -> bool {
        self.pool.as_ref().is_none_or(|p| *p == vm.pool)
            && self
                .build
                .as_ref()
                .is_none_or(|b| vm.build.as_ref() == Some(b))
    }
}

/// What CreateVM did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The VM handed out.
    pub vm: VmRecord,
    /// How it was found.
    pub action: CreateAction,
}

/// What ReportGameRoomsNumber ([`ReportAction`]) or MarkVMForDeallocation ([`MarkAction`])
/// did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed<A> {
    /// The VM after the operation.
    pub vm: VmRecord,
    /// What happened.
    pub action: A,
}

/// Every VM (the reconciler's own record is read through the reconciler).
#[derive(Debug, Clone)]
pub struct Status {
    /// Every VM, sorted by name.
    pub vms: Vec<VmRecord>,
}

/// The pool: the operations the matchmaker calls.
pub struct Pool {
    store: Arc<dyn VmStore>,
    compute: Arc<dyn Compute>,
    clock: Arc<dyn Clock>,
    policy: Arc<PoolPolicy>,
    /// Serialises this instance's capacity-consuming claims (start, create), so callers of
    /// one instance never over-fill the pool or cancel each other out.
    capacity_gate: tokio::sync::Mutex<()>,
    /// Row versions this instance has consumed or is trying to: concurrent callers of this
    /// instance never fight over the same version, and a stale listing is not retried.
    taken: Mutex<HashMap<(VmId, Etag), Instant>>,
    /// The VMs counting against the maximums at this instance's last count: when it showed
    /// room, the next claim skips counting before it writes (the count after the write,
    /// which every claim makes, keeps the maximum).
    last_active: Mutex<Option<Active>>,
}

/// VMs counting against the maximums: of all pools, and of one pool.
#[derive(Debug, Clone, Default)]
struct Active {
    /// Of every pool together.
    all: usize,
    /// The pool counted.
    of: String,
    /// Of that pool.
    pool: usize,
}

impl Active {
    /// Why `extra` more VMs of `spec` would not fit, if they would not.
    fn over(&self, policy: &PoolPolicy, spec: &PoolSpec, extra: usize) -> Option<PoolError> {
        if self.all + extra > policy.max_vms as usize {
            return Some(PoolError::CapacityExhausted {
                max: policy.max_vms,
            });
        }
        if self.pool + extra > spec.max_vms as usize {
            return Some(PoolError::PoolFull {
                pool: spec.name.clone(),
                max: spec.max_vms,
            });
        }
        None
    }
}

/// One page of GetPoolStatus: counts over the whole pool and a page of VMs if asked for.
#[derive(Debug, Clone)]
pub struct StatusPage {
    /// VMs in each state, over every pool.
    pub counts: StateCounts,
    /// VMs in each state, per pool and build.
    pub groups: GroupCounts,
    /// A page of VMs in vmId order, unless only counts were asked for.
    pub vms: Option<Page<VmRecord>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool over the two ports.
    pub fn new(
        store: Arc<dyn VmStore>,
        compute: Arc<dyn Compute>,
        clock: Arc<dyn Clock>,
        policy: Arc<PoolPolicy>,
    ) -> Self {
        Pool {
            store,
            compute,
            clock,
            policy,
            capacity_gate: tokio::sync::Mutex::new(()),
            taken: Mutex::new(HashMap::new()),
            last_active: Mutex::new(None),
        }
    }

    /// The VM table.
    pub fn store(&self) -> &Arc<dyn VmStore> {
        &self.store
    }

    /// The compute API.
    pub fn compute(&self) -> &Arc<dyn Compute> {
        &self.compute
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The policy.
    pub fn policy(&self) -> &Arc<PoolPolicy> {
        &self.policy
    }

    /// What a CreateVM naming `pool` and `build` asks for: with no pool, `default` (or the
    /// only pool); with no build, the pool's current build.
    pub fn wanted(&self, pool: Option<&str>, build: Option<&str>) -> Result<Wanted, PoolError> {
        let pools = &self.policy.pools;
        let spec = match pool {
            Some(name) => pools.get(name),
            None => pools.implied(),
        }
        .ok_or_else(|| PoolError::UnknownPool {
            asked: pool.unwrap_or("(none)").to_owned(),
            known: pools.names(),
        })?;
        Ok(Wanted {
            build: build.map_or_else(|| spec.build.clone(), str::to_owned),
            pool: spec.clone(),
        })
    }

    /// The spec of the pool `vm` belongs to, if it is still configured.
    pub fn spec_of(&self, vm: &VmRecord) -> Option<&PoolSpec> {
        self.policy.pools.get(&vm.pool)
    }

    /// Reserves a row version for this caller; false if another caller of this instance has
    /// it or it is known to be stale.
    fn reserve(&self, row: &Versioned) -> bool {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.len() > 256 {
            taken.retain(|_, at| at.elapsed() < STALE_MEMORY);
        }
        let key = (row.vm.id.clone(), row.etag.clone());
        if taken.contains_key(&key) {
            return false;
        }
        taken.insert(key, Instant::now());
        true
    }

    /// Gives a reservation back after a write that failed for reasons other than a lost race.
    fn release(&self, row: &Versioned) {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.remove(&(row.vm.id.clone(), row.etag.clone()));
    }

    /// Tries candidates of one kind in random order (so instances spread over them), at
    /// most [`TRIES_PER_KIND`] writes; the first won write is the claim.
    async fn claim_one(
        &self,
        mut candidates: Vec<Versioned>,
        kind: ClaimKind,
    ) -> Result<Option<Versioned>, PoolError> {
        candidates.shuffle(&mut rand::rng());
        let mut tries = 0;
        for row in candidates {
            if tries == TRIES_PER_KIND {
                break;
            }
            if !self.reserve(&row) {
                continue;
            }
            tries += 1;
            let next = domain::claim(&row.vm, kind, self.clock.now())?;
            match self.store.update(&next, &row.etag).await {
                Ok(Written::Done(etag)) => return Ok(Some(Versioned { vm: next, etag })),
                Ok(Written::LostRace) => continue,
                Err(e) => {
                    self.release(&row);
                    return Err(e.into());
                }
            }
        }
        Ok(None)
    }

    /// CreateVM's own deadline: past it the work stops and what was written is left to the
    /// reconciler; a `pending` `Idempotency-Key` is taken over 30 s after it.
    pub fn create_deadline(&self) -> Duration {
        self.policy.arm_retry_budget + DEADLINE_MARGIN
    }

    /// The rules an `Idempotency-Key`'s record follows: its TTL, when a `pending` one is
    /// taken over, and how long a request waits for another's answer.
    pub fn key_rules(&self) -> keys::Rules {
        keys::Rules {
            ttl: self.policy.idempotency_ttl,
            take_over_after: self.create_deadline() + KEY_TAKE_OVER_MARGIN,
            wait: KEY_WAIT,
        }
    }

    /// CreateVM as the API runs it: the work runs on its own task, so a caller who hangs up
    /// or times out does not cut it short, and it ends at [`Pool::create_deadline`]. With a
    /// `key`, see [`Pool::create_vm_with_key`].
    pub async fn create_vm_detached(
        self: &Arc<Self>,
        key: Option<IdempotencyKey>,
        wanted: Wanted,
    ) -> Result<Created, PoolError> {
        let pool = Arc::clone(self);
        let deadline = self.create_deadline();
        let work = async move {
            match tokio::time::timeout(deadline, pool.create_vm_with_key(key.as_ref(), &wanted))
                .await
            {
                Ok(done) => done,
                Err(_) => {
                    warn!(
                        deadline_secs = deadline.as_secs(),
                        "CreateVM passed its deadline; the reconciler finishes what it wrote"
                    );
                    Err(PoolError::Interrupted(format!(
                        "it passed its deadline of {}s",
                        deadline.as_secs()
                    )))
                }
            }
        };
        tokio::spawn(work.in_current_span())
            .await
            .unwrap_or_else(|e| Err(PoolError::Interrupted(format!("its task ended: {e}"))))
    }

    /// CreateVM with an optional `Idempotency-Key`: the key is written before any VM is
    /// claimed, so of all requests with one key only one claims; the others wait for its
    /// answer (up to 15 s, then [`PoolError::KeyInFlight`]) and answer with the same VM and
    /// action. A failed attempt releases the key, so a retry tries again.
    pub async fn create_vm_with_key(
        &self,
        key: Option<&IdempotencyKey>,
        wanted: &Wanted,
    ) -> Result<Created, PoolError> {
        let Some(key) = key else {
            return self.create_vm_for(wanted).await;
        };
        let rules = self.key_rules();
        for _ in 0..TRIES_PER_VM {
            match keys::begin(&*self.store, &*self.clock, key, rules).await? {
                Begun::Answered {
                    vm_id,
                    action,
                    etag,
                } => match self.store.get(&vm_id).await? {
                    Some(row) => {
                        info!(vm.id = %vm_id, %action, "CreateVM answered again for its key");
                        return Ok(Created { vm: row.vm, action });
                    }
                    None => {
                        // The VM this key got is gone (failed and cleaned up): the key is
                        // free again.
                        keys::forget(&*self.store, key, &etag).await?;
                    }
                },
                Begun::Holder(held) => {
                    let outcome = self.create_vm_for(wanted).await;
                    match &outcome {
                        Ok(created) => {
                            keys::finish(
                                &*self.store,
                                held,
                                &created.vm.id,
                                created.action,
                                self.clock.now(),
                            )
                            .await;
                        }
                        Err(_) => keys::abandon(&*self.store, held).await,
                    }
                    return outcome;
                }
            }
        }
        Err(PoolError::Contention)
    }

    /// CreateVM for the implied pool (`default`, or the only one) and its current build.
    pub async fn create_vm(&self) -> Result<Created, PoolError> {
        let wanted = self.wanted(None, None)?;
        self.create_vm_for(&wanted).await
    }

    /// CreateVM: hands the matchmaker a VM of the pool and build `wanted` names, trying the
    /// kinds of [`ClaimKind::ORDER`] in turn and creating a new VM when none is left. A
    /// build other than the pool's current one is served only from VMs still alive in it
    /// (reclaim, standby). It runs in the caller's task; the API calls
    /// [`Pool::create_vm_detached`].
    #[instrument(skip_all, fields(pool = %wanted.pool.name, build = %wanted.build))]
    pub async fn create_vm_for(&self, wanted: &Wanted) -> Result<Created, PoolError> {
        let rows = self.store.list(Rows::InStates(&WITHOUT_CAPACITY)).await?;
        let kinds = ClaimKind::ORDER
            .into_iter()
            .filter(|k| !k.needs_capacity())
            .filter(|k| wanted.is_current() || *k != ClaimKind::ClaimCreating);
        for kind in kinds {
            let candidates: Vec<Versioned> = rows
                .iter()
                .filter(|r| ClaimKind::of(&r.vm) == Some(kind) && wanted.accepts(&r.vm))
                .cloned()
                .collect();
            if let Some(won) = self.claim_one(candidates, kind).await? {
                info!(vm.id = %won.vm.id, action = %kind.action(), "CreateVM");
                return Ok(Created {
                    vm: won.vm,
                    action: kind.action(),
                });
            }
        }
        if !wanted.is_current() {
            return Err(PoolError::BuildExhausted {
                pool: wanted.pool.name.clone(),
                build: wanted.build.clone(),
                current: wanted.pool.build.clone(),
            });
        }
        self.create_with_capacity(&wanted.pool).await
    }

    /// Deallocated VMs of `spec`'s current build to start: a sample, not all of them (any
    /// one will do, and the index answers a sample without reading the whole table); when
    /// a full sample holds none of this pool and build, every deallocated VM is read.
    async fn start_candidates(&self, spec: &PoolSpec) -> Result<Vec<Versioned>, PoolError> {
        let ours = |r: &Versioned| r.vm.is_of(&spec.name, &spec.build);
        let sample = self
            .store
            .sample(&[VmState::Deallocated], START_CANDIDATES)
            .await?;
        let full = sample.len() >= START_CANDIDATES;
        let mut mine: Vec<Versioned> = sample.into_iter().filter(ours).collect();
        if mine.is_empty() && full {
            mine = self
                .store
                .list(Rows::InStates(&[VmState::Deallocated]))
                .await?
                .into_iter()
                .filter(ours)
                .collect();
            mine.truncate(START_CANDIDATES);
        }
        Ok(mine)
    }

    /// The capacity-consuming half of CreateVM: the kinds of [`ClaimKind::ORDER`] that need
    /// capacity (a start of a deallocated VM of the pool's current build), else a new VM.
    /// The intent is written under the capacity gate; ARM is called after it is released.
    async fn create_with_capacity(&self, spec: &PoolSpec) -> Result<Created, PoolError> {
        let (won, action) = {
            let _gate = self.capacity_gate.lock().await;
            self.room_for_one(spec).await?;
            let sample = self.start_candidates(spec).await?;
            let mut won = None;
            for kind in ClaimKind::ORDER.into_iter().filter(|k| k.needs_capacity()) {
                let candidates: Vec<Versioned> = sample
                    .iter()
                    .filter(|r| ClaimKind::of(&r.vm) == Some(kind))
                    .cloned()
                    .collect();
                if let Some(claimed) = self.claim_one(candidates, kind).await? {
                    won = Some((claimed, kind.action()));
                    break;
                }
            }
            let (won, action) = match won {
                Some(won) => won,
                None => (
                    self.insert_new(Purpose::Matchmaker, spec).await?,
                    CreateAction::Created,
                ),
            };
            self.confirm_capacity(&won, spec).await?;
            (won, action)
        };
        let answer = self.within_retry_budget(|| self.issue(&won.vm)).await;
        self.act(&won, answer).await?;
        info!(vm.id = %won.vm.id, %action, "CreateVM");
        Ok(Created { vm: won.vm, action })
    }

    /// Sends the ARM call a capacity claim's row asks for: a start or a create.
    async fn issue(&self, vm: &VmRecord) -> Result<(), ComputeError> {
        if vm.operation == Some(Operation::Start) {
            self.compute.start(&vm.id).await
        } else {
            self.create_in_arm(vm).await
        }
    }

    /// The ARM create of `vm`'s row, in its pool's region, size and image.
    pub async fn create_in_arm(&self, vm: &VmRecord) -> Result<(), ComputeError> {
        let Some(spec) = self.spec_of(vm) else {
            return Err(ComputeError::Rejected {
                code: "UnknownPool".into(),
                message: format!("pool {:?} is no longer configured", vm.pool),
            });
        };
        self.compute.create(&vm.id, &spec.vm()).await
    }

    /// Runs an ARM call, waiting out a throttle (`429` with a `Retry-After` of at most 5 s)
    /// and trying again while `VMPOOL_ARM_RETRY_BUDGET_SECS` allows. Server errors are
    /// retried by the ARM adapter itself, so they are not retried again here.
    async fn within_retry_budget<F, Fut>(&self, call: F) -> Result<(), ComputeError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), ComputeError>>,
    {
        let started = tokio::time::Instant::now();
        loop {
            match call().await {
                Err(ComputeError::Throttled { retry_after })
                    if retry_after <= MAX_INLINE_RETRY_AFTER
                        && started.elapsed() + retry_after <= self.policy.arm_retry_budget =>
                {
                    info!(
                        retry_after_ms = retry_after.as_millis() as u64,
                        "ARM is throttling; trying again within the retry budget"
                    );
                    tokio::time::sleep(retry_after.max(Duration::from_millis(100))).await;
                }
                answer => return answer,
            }
        }
    }

    /// The reconciler adds a VM to the warm buffer: starts `deallocated` if given, else
    /// creates one. The same capacity rules as CreateVM apply, and ARM is called after the
    /// capacity gate is released.
    pub async fn add_to_buffer(
        &self,
        deallocated: Option<&Versioned>,
        spec: &PoolSpec,
    ) -> Result<Created, PoolError> {
        let won = {
            let _gate = self.capacity_gate.lock().await;
            self.room_for_one(spec).await?;
            let won = match deallocated {
                Some(row) => {
                    let next = domain::start_for_buffer(&row.vm, self.clock.now())?;
                    match self.store.update(&next, &row.etag).await? {
                        Written::Done(etag) => Versioned { vm: next, etag },
                        Written::LostRace => return Err(PoolError::Contention),
                    }
                }
                None => self.insert_new(Purpose::Buffer, spec).await?,
            };
            self.confirm_capacity(&won, spec).await?;
            won
        };
        let action = if deallocated.is_some() {
            CreateAction::Started
        } else {
            CreateAction::Created
        };
        let answer = self.issue(&won.vm).await;
        self.act(&won, answer).await?;
        Ok(Created { vm: won.vm, action })
    }

    /// Inserts a row for a new VM under a fresh name.
    pub(crate) async fn insert_new(
        &self,
        purpose: Purpose,
        spec: &PoolSpec,
    ) -> Result<Versioned, PoolError> {
        for _ in 0..TRIES_PER_VM {
            let id = new_vm_name(&self.policy.vm_prefix);
            let vm = VmRecord::new_creating(
                id.clone(),
                self.compute.resource_id(&id),
                purpose,
                self.clock.now(),
            )
            .placed(&spec.name, &spec.build);
            if let Written::Done(etag) = self.store.insert(&vm).await? {
                return Ok(Versioned { vm, etag });
            }
        }
        Err(PoolError::Contention)
    }

    /// Another instance may have consumed capacity at the same moment. Every claimer writes
    /// before it counts, so the last of any two to count sees both; one that finds the pool
    /// (or all pools together) over its maximum takes its own claim back. Concurrent claims
    /// never over-fill the pool; at worst both give way and the callers retry.
    async fn confirm_capacity(&self, won: &Versioned, spec: &PoolSpec) -> Result<(), PoolError> {
        let over = match self.count_active(spec).await {
            Ok(active) => active.over(&self.policy, spec, 0),
            Err(e) => Some(e),
        };
        let Some(over) = over else {
            return Ok(());
        };
        warn!(vm.id = %won.vm.id, "another instance filled the pool at the same moment; giving the claim back");
        let undone = match domain::give_back(&won.vm) {
            GiveBack::Remove => self.store.delete(&won.vm.id, &won.etag).await,
            GiveBack::Restore(back) => self.store.update(&back, &won.etag).await,
        };
        if let Err(e) = undone {
            // The row stays Creating with no ARM call; the reconciler gives it back.
            warn!(vm.id = %won.vm.id, error = %e, "could not give the claim back");
        }
        Err(over)
    }

    /// Whether one more VM of `spec` fits under its pool's maximum and the maximum of all
    /// pools together, as far as this instance knows before it writes: its last count if
    /// that showed room (no table scan), else a fresh count.
    async fn room_for_one(&self, spec: &PoolSpec) -> Result<(), PoolError> {
        let hint = self
            .last_active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // A count of another pool says nothing of this one.
        if let Some(active) = hint
            && active.of == spec.name
            && active.over(&self.policy, spec, 1).is_none()
        {
            return Ok(());
        }
        match self.count_active(spec).await?.over(&self.policy, spec, 1) {
            None => Ok(()),
            Some(full) => Err(full),
        }
    }

    /// Counts the VMs against the maximums (one pass over the states and pools of the
    /// table), `spec`'s pool apart.
    async fn count_active(&self, spec: &PoolSpec) -> Result<Active, PoolError> {
        let groups = self.store.count_groups().await?;
        let mut active = Active::default();
        for (group, counts) in &groups {
            let n: usize = counts
                .iter()
                .filter(|(state, _)| state.counts_against_max())
                .map(|(_, n)| n)
                .sum();
            active.all += n;
            if group.pool == spec.name {
                active.pool += n;
            }
        }
        active.of = spec.name.clone();
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Some(active.clone());
        Ok(active)
    }

    /// After the intent is written: handles the ARM answer to a create or start.
    async fn act(
        &self,
        won: &Versioned,
        answer: Result<(), ComputeError>,
    ) -> Result<(), PoolError> {
        let Err(e) = answer else {
            return Ok(());
        };
        let transient = e.is_transient();
        if transient {
            warn!(vm.id = %won.vm.id, error = %e, "ARM call failed; the reconciler finishes it into the buffer");
        } else {
            warn!(vm.id = %won.vm.id, error = %e, "ARM refused; the VM is Failed");
        }
        let next = domain::call_failed(&won.vm, transient, &e.to_string(), self.clock.now());
        if let Err(store) = self.store.update(&next, &won.etag).await {
            warn!(vm.id = %won.vm.id, error = %store, "could not record the ARM failure");
        }
        Err(e.into())
    }

    /// ReportGameRoomsNumber: records the room count; zero rooms on a VM marked for
    /// deallocation deallocates it (without waiting for ARM).
    #[instrument(skip_all, fields(vm.id = %id, rooms))]
    pub async fn report_rooms(
        &self,
        id: &VmId,
        rooms: u32,
    ) -> Result<Changed<ReportAction>, PoolError> {
        for _ in 0..TRIES_PER_VM {
            let row = self.get_row(id).await?;
            let (next, action) = match domain::report_rooms(&row.vm, rooms, self.clock.now())? {
                Report::AlreadyDeallocating => {
                    return Ok(Changed {
                        vm: row.vm,
                        action: ReportAction::Deallocating,
                    });
                }
                Report::Recorded(next) => (next, ReportAction::Recorded),
                Report::Deallocate(next) => (next, ReportAction::Deallocating),
            };
            if let Written::LostRace = self.store.update(&next, &row.etag).await? {
                continue;
            }
            if action == ReportAction::Deallocating {
                match self.compute.deallocate(id).await {
                    Ok(()) | Err(ComputeError::NotFound) => {}
                    Err(e) => {
                        // The row says Deallocating; the reconciler re-issues the deallocate.
                        warn!(error = %e, "deallocate not accepted yet; the reconciler re-issues it");
                        return Err(e.into());
                    }
                }
                info!("deallocating");
            }
            return Ok(Changed { vm: next, action });
        }
        Err(PoolError::Contention)
    }

    /// MarkVMForDeallocation: the matchmaker no longer needs the VM.
    #[instrument(skip_all, fields(vm.id = %id))]
    pub async fn mark_for_deallocation(&self, id: &VmId) -> Result<Changed<MarkAction>, PoolError> {
        for _ in 0..TRIES_PER_VM {
            let row = self.get_row(id).await?;
            match domain::mark_for_deallocation(&row.vm, self.clock.now())? {
                Marked::Already => {
                    return Ok(Changed {
                        vm: row.vm,
                        action: MarkAction::AlreadyMarked,
                    });
                }
                Marked::Now(next) => {
                    if let Written::Done(_) = self.store.update(&next, &row.etag).await? {
                        return Ok(Changed {
                            vm: *next,
                            action: MarkAction::Marked,
                        });
                    }
                }
            }
        }
        Err(PoolError::Contention)
    }

    /// GetAvailableVMs: the `Running` VMs, sorted by name.
    pub async fn available(&self) -> Result<Vec<VmRecord>, PoolError> {
        let mut vms: Vec<VmRecord> = self
            .store
            .list(Rows::InStates(&[VmState::Running]))
            .await?
            .into_iter()
            .map(|r| r.vm)
            .collect();
        vms.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(vms)
    }

    /// GetPoolStatus: every VM.
    pub async fn status(&self) -> Result<Status, PoolError> {
        let rows = self.store.list(Rows::All).await?;
        let mut vms: Vec<VmRecord> = rows.into_iter().map(|r| r.vm).collect();
        vms.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Status { vms })
    }

    /// GetAvailableVMs, one page: `Running` VMs in vmId order.
    pub async fn available_page(&self, page: &PageRequest) -> Result<Page<VmRecord>, PoolError> {
        self.available_page_of(page, &Filter::default()).await
    }

    /// GetAvailableVMs, one page: `Running` VMs of the pool and build `filter` names, in
    /// vmId order. Filtered, a page may hold fewer VMs than asked for and not be the last.
    pub async fn available_page_of(
        &self,
        page: &PageRequest,
        filter: &Filter,
    ) -> Result<Page<VmRecord>, PoolError> {
        let rows = self
            .store
            .list_page(Rows::InStates(&[VmState::Running]), page)
            .await?;
        Ok(Page {
            items: rows
                .items
                .into_iter()
                .map(|r| r.vm)
                .filter(|vm| filter.shows(vm))
                .collect(),
            next: rows.next,
        })
    }

    /// GetPoolStatus, one page: counts over the whole pool and a page of VMs in vmId order
    /// (when `with_vms`).
    pub async fn status_page(
        &self,
        page: &PageRequest,
        with_vms: bool,
    ) -> Result<StatusPage, PoolError> {
        let vms = async {
            if !with_vms {
                return Ok(None);
            }
            let rows = self.store.list_page(Rows::All, page).await?;
            Ok::<_, StoreError>(Some(Page {
                items: rows.items.into_iter().map(|r| r.vm).collect(),
                next: rows.next,
            }))
        };
        let (groups, vms) = tokio::try_join!(self.store.count_groups(), vms)?;
        Ok(StatusPage {
            counts: crate::store::total(&groups),
            groups,
            vms,
        })
    }

    /// GetVM: one VM, as the table has it now.
    pub async fn get_vm(&self, id: &VmId) -> Result<VmRecord, PoolError> {
        Ok(self.get_row(id).await?.vm)
    }

    async fn get_row(&self, id: &VmId) -> Result<Versioned, PoolError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| PoolError::NotFound(id.clone()))
    }
}

/// How many rows count against `VMPOOL_MAX_VMS`.
pub fn active(rows: &[Versioned]) -> usize {
    rows.iter()
        .filter(|r| r.vm.state.counts_against_max())
        .count()
}

/// A fresh VM name: the prefix, a dash and 10 random lowercase letters and digits.
pub fn new_vm_name(prefix: &str) -> VmId {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..10)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    // The prefix is validated at start-up (at most 40 safe characters), so this always parses.
    VmId::parse(&format!("{prefix}-{suffix}"))
        .unwrap_or_else(|_| VmId::parse(&format!("vmpool-{suffix}")).expect("a fixed safe name"))
}
