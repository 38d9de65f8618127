//! The four matchmaker operations (and the pool status) over the two ports. Each operation
//! reads rows, asks [`crate::domain`] what the transition is, writes it conditionally on the
//! row's ETag, and only then calls ARM ("write intent before acting").

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;
use tracing::{Instrument, info, instrument, warn};

use crate::breaker::{self, Breaker};
use crate::capacity::{self, Reserved};
use crate::clock::Clock;
use crate::compute::{Compute, ComputeError};
use crate::config::{PoolPolicy, PoolSpec};
use crate::domain::{
    self, ClaimKind, CreateAction, MarkAction, Marked, Operation, Purpose, Refused, Report,
    ReportAction, ReportOrder, VmId, VmRecord, VmState,
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
/// How long a CreateVM waits for another request with its `Idempotency-Key` to answer.
const KEY_WAIT: Duration = Duration::from_secs(15);
/// A `pending` key is taken over this long after CreateVM's deadline, so instances whose
/// clocks differ a little never take over a request that is still running.
const KEY_TAKE_OVER_MARGIN: Duration = Duration::from_secs(30);
/// How many candidates of one kind CreateVM reads (a bounded sample, however many there are).
pub const SAMPLE_SIZE: usize = 16;
/// The least `Retry-After` after ARM refused a start or create.
const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(10);

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
    /// ARM refused a start or create for capacity (quota, SKU, allocation), or the circuit
    /// breaker on such refusals is open and nothing was sent. A refused start left its VM
    /// `Deallocated`.
    #[error("{reason}")]
    Refused {
        /// What was refused, or why nothing was tried.
        reason: String,
        /// When a start or create may be tried again.
        retry_after: Duration,
        /// Whether ARM was asked (false: the breaker stopped the call).
        asked: bool,
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
    /// Serialises this instance's writes of the capacity ledger, so its callers do not
    /// make each other lose races for it.
    capacity_gate: tokio::sync::Mutex<()>,
    /// Row versions this instance has consumed or is trying to: concurrent callers of this
    /// instance never fight over the same version, and a stale listing is not retried.
    taken: Mutex<HashMap<(VmId, Etag), Instant>>,
    /// Draws new VM names and the order candidates are tried in: from the OS's entropy,
    /// or from a seed ([`Pool::seeded`]) so a simulated run can be replayed exactly.
    rng: Mutex<StdRng>,
}

/// One page of GetPoolStatus: counts over the whole pool and a page of VMs if asked for.
#[derive(Debug, Clone)]
pub struct StatusPage {
    /// VMs in each state, over every pool.
    pub counts: StateCounts,
    /// VMs in each state, per pool and build.
    pub groups: GroupCounts,
    /// When the rows were counted.
    pub counted_at: OffsetDateTime,
    /// Where the counts come from.
    pub counts_from: CountsFrom,
    /// A page of VMs in vmId order, unless only counts were asked for.
    pub vms: Option<Page<VmRecord>>,
}

/// Where GetPoolStatus's counts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountsFrom {
    /// The pool's record, as the last reconcile pass counted its listing.
    Record,
    /// A count of every row, made for this answer.
    Fresh,
}

impl CountsFrom {
    /// `record` or `fresh`.
    pub fn as_str(self) -> &'static str {
        match self {
            CountsFrom::Record => "record",
            CountsFrom::Fresh => "fresh",
        }
    }
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
            rng: Mutex::new(StdRng::from_os_rng()),
        }
    }

    /// This pool, drawing VM names and the order it tries candidates in from `seed`: the
    /// same calls then make the same choices (a simulation replays a run exactly).
    #[must_use]
    pub fn seeded(self, seed: u64) -> Self {
        Pool {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            ..self
        }
    }

    /// Puts `items` in a random order.
    fn shuffle<T>(&self, items: &mut [T]) {
        items.shuffle(&mut *self.rng.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// A fresh VM name: the policy's prefix, a dash and random letters and digits.
    fn vm_name(&self) -> VmId {
        vm_name_from(
            &self.policy.vm_prefix,
            &mut *self.rng.lock().unwrap_or_else(PoisonError::into_inner),
        )
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

    /// Whether the VM is of a known build other than its pool's current one.
    pub fn of_old_build(&self, vm: &VmRecord) -> bool {
        self.spec_of(vm)
            .is_some_and(|spec| vm.is_of_a_build_but(&spec.build))
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
        self.shuffle(&mut candidates);
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
        self.policy.create_deadline()
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
    /// kinds of [`ClaimKind::ORDER`] in turn and creating a new VM when none is left. Each
    /// kind is read as a bounded random sample ([`Pool::candidates`]), so a claim costs the
    /// same however many VMs there are. A build other than the pool's current one is served
    /// only from VMs still alive in it (reclaim, standby). It runs in the caller's task; the
    /// API calls [`Pool::create_vm_detached`].
    #[instrument(skip_all, fields(pool = %wanted.pool.name, build = %wanted.build))]
    pub async fn create_vm_for(&self, wanted: &Wanted) -> Result<Created, PoolError> {
        let kinds = ClaimKind::ORDER
            .into_iter()
            .filter(|k| !k.needs_capacity())
            .filter(|k| wanted.is_current() || *k != ClaimKind::ClaimCreating);
        for kind in kinds {
            let candidates = self
                .candidates(kind, &wanted.pool.name, &wanted.build)
                .await?;
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

    /// Candidates of `kind` in `pool` running `build`: a sample of the kind
    /// ([`Pool::sample`]), those of the pool and build kept; when a full sample holds none of
    /// them, the VMs of that kind are read and a random [`SAMPLE_SIZE`] of the pool's and
    /// build's kept.
    async fn candidates(
        &self,
        kind: ClaimKind,
        pool: &str,
        build: &str,
    ) -> Result<Vec<Versioned>, PoolError> {
        let ours = |r: &Versioned| r.vm.is_of(pool, build) && ClaimKind::of(&r.vm) == Some(kind);
        let sample = self.sample(kind).await?;
        let full = sample.len() >= SAMPLE_SIZE;
        let mut mine: Vec<Versioned> = sample.into_iter().filter(ours).collect();
        if mine.is_empty() && full {
            mine = self
                .store
                .list(Rows::InStates(&[kind.state()]))
                .await?
                .into_iter()
                .filter(ours)
                .collect();
            self.shuffle(&mut mine);
            mine.truncate(SAMPLE_SIZE);
        }
        Ok(mine)
    }

    /// Up to [`SAMPLE_SIZE`] candidates of `kind`, from a random point of the key space: after
    /// a name drawn as new VM names are (the prefix, a dash, random letters and digits), so
    /// claimers spread over every candidate (names of another prefix are reached when the
    /// sample wraps round).
    async fn sample(&self, kind: ClaimKind) -> Result<Vec<Versioned>, PoolError> {
        let after = self.vm_name();
        Ok(self.store.sample(kind, after.as_str(), SAMPLE_SIZE).await?)
    }

    /// The capacity-consuming half of CreateVM: the kinds of [`ClaimKind::ORDER`] that need
    /// capacity (a start of a deallocated VM of the pool's current build), else a new VM.
    /// Each takes its place in the capacity ledger (under the maximum of all pools and under
    /// the pool's own) before its row is written; ARM is called after.
    async fn create_with_capacity(&self, spec: &PoolSpec) -> Result<Created, PoolError> {
        let breaker = self.open_breaker(&spec.name, false).await?;
        // While starts are held back after a refusal, none is tried.
        let starts_held = breaker.starts_held_at(self.clock.now());
        let hold = self.policy.failed_start_hold();
        let claim = capacity::new_claim();
        let mut won = None;
        for kind in ClaimKind::ORDER.into_iter().filter(|k| k.needs_capacity()) {
            if starts_held && matches!(kind, ClaimKind::Start) {
                continue;
            }
            let now = self.clock.now();
            let mut candidates = self.candidates(kind, &spec.name, &spec.build).await?;
            candidates.retain(|r| !r.vm.held_for_caller(now, hold));
            self.shuffle(&mut candidates);
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
                let at = self.take_place(&claim, &row.vm.id, spec).await;
                let taken = at.and_then(|at| self.place_still_held(at));
                if let Err(e) = taken {
                    self.release(&row);
                    self.give_place_back(&claim).await;
                    return Err(e);
                }
                match self.store.update(&next, &row.etag).await {
                    Ok(Written::Done(etag)) => {
                        won = Some((Versioned { vm: next, etag }, kind.action()));
                        break;
                    }
                    Ok(Written::LostRace) => continue,
                    Err(e) => {
                        self.release(&row);
                        self.give_place_back(&claim).await;
                        return Err(e.into());
                    }
                }
            }
            if won.is_some() {
                break;
            }
        }
        let (won, action) = match won {
            Some(won) => won,
            None => (
                self.insert_new(Purpose::Matchmaker, spec, &claim).await?,
                CreateAction::Created,
            ),
        };
        let answer = self.within_retry_budget(|| self.issue(&won.vm)).await;
        self.act(&won, answer).await?;
        info!(vm.id = %won.vm.id, %action, "CreateVM");
        Ok(Created { vm: won.vm, action })
    }

    /// Takes a place in the capacity ledger for `claim`, for the VM `id` (moving the place
    /// the claim holds, if any); the time it was taken, which the row write must follow
    /// closely.
    async fn take_place(
        &self,
        claim: &str,
        id: &VmId,
        spec: &PoolSpec,
    ) -> Result<OffsetDateTime, PoolError> {
        let _gate = self.capacity_gate.lock().await;
        let now = self.clock.now();
        let max = self.policy.max_vms;
        let limits = capacity::Limits {
            max,
            pool: &spec.name,
            pool_max: spec.max_vms,
        };
        match capacity::reserve(&*self.store, claim, id, now, limits).await? {
            Reserved::Done => Ok(now),
            Reserved::Full => Err(PoolError::CapacityExhausted { max }),
            Reserved::PoolFull => Err(PoolError::PoolFull {
                pool: spec.name.clone(),
                max: spec.max_vms,
            }),
            Reserved::Busy => Err(PoolError::Contention),
        }
    }

    /// A place counts unseen for [`capacity::RESERVATION_TTL`]: the row is written within half
    /// of it, or not at all.
    fn place_still_held(&self, at: OffsetDateTime) -> Result<(), PoolError> {
        let held_for = self.clock.now() - at;
        if held_for < capacity::RESERVATION_TTL / 2 {
            Ok(())
        } else {
            Err(PoolError::Interrupted(
                "its place in the capacity ledger was taken too long ago".into(),
            ))
        }
    }

    /// Gives back the place `claim` holds, if any (it wrote no row).
    async fn give_place_back(&self, claim: &str) {
        let _gate = self.capacity_gate.lock().await;
        capacity::release(&*self.store, claim).await;
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
    /// creates one. The same capacity rules as CreateVM apply: a place in the capacity
    /// ledger first, then the row, then ARM.
    pub async fn add_to_buffer(
        &self,
        deallocated: Option<&Versioned>,
        spec: &PoolSpec,
    ) -> Result<Created, PoolError> {
        self.open_breaker(&spec.name, deallocated.is_some()).await?;
        let won = match deallocated {
            Some(row) => {
                let next = domain::start_for_buffer(&row.vm, self.clock.now())?;
                let claim = capacity::new_claim();
                let at = self.take_place(&claim, &row.vm.id, spec).await?;
                if let Err(e) = self.place_still_held(at) {
                    self.give_place_back(&claim).await;
                    return Err(e);
                }
                match self.store.update(&next, &row.etag).await {
                    Ok(Written::Done(etag)) => Versioned { vm: next, etag },
                    Ok(Written::LostRace) => {
                        self.give_place_back(&claim).await;
                        return Err(PoolError::Contention);
                    }
                    Err(e) => {
                        self.give_place_back(&claim).await;
                        return Err(e.into());
                    }
                }
            }
            None => {
                self.insert_new(Purpose::Buffer, spec, &capacity::new_claim())
                    .await?
            }
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

    /// Inserts a row for a new VM of `spec`'s pool and current build under a fresh name,
    /// after taking its place in the capacity ledger for `claim` (moving the place it holds,
    /// if any); gives the place back if no row was written.
    pub(crate) async fn insert_new(
        &self,
        purpose: Purpose,
        spec: &PoolSpec,
        claim: &str,
    ) -> Result<Versioned, PoolError> {
        for _ in 0..TRIES_PER_VM {
            let id = self.vm_name();
            let taken = self
                .take_place(claim, &id, spec)
                .await
                .and_then(|at| self.place_still_held(at));
            if let Err(e) = taken {
                self.give_place_back(claim).await;
                return Err(e);
            }
            let vm = VmRecord::new_creating(
                id.clone(),
                self.compute.resource_id(&id),
                purpose,
                self.clock.now(),
            )
            .placed(&spec.name, &spec.build);
            match self.store.insert(&vm).await {
                Ok(Written::Done(etag)) => return Ok(Versioned { vm, etag }),
                Ok(Written::LostRace) => continue,
                Err(e) => {
                    self.give_place_back(claim).await;
                    return Err(e.into());
                }
            }
        }
        self.give_place_back(claim).await;
        Err(PoolError::Contention)
    }

    /// The circuit breaker of `pool`, if its starts and creates (`start`: starts) may go to
    /// ARM now; else [`PoolError::Refused`] with when to try again, and nothing is sent.
    async fn open_breaker(&self, pool: &str, start: bool) -> Result<Breaker, PoolError> {
        let (breakers, _) = breaker::load(self.store.as_ref()).await?;
        let breaker = breakers.get(pool).cloned().unwrap_or_default();
        let now = self.clock.now();
        let held = if start {
            breaker.starts_held_at(now)
        } else {
            breaker.open_at(now)
        };
        if !held {
            return Ok(breaker);
        }
        let reason = match (&breaker.reason, breaker.open_at(now)) {
            (Some(reason), true) => format!(
                "ARM keeps refusing starts and creates in pool {pool} ({reason}); none is tried until its breaker closes"
            ),
            _ => format!("ARM refused a start in pool {pool} lately; starts wait for the backoff"),
        };
        Err(PoolError::Refused {
            reason,
            retry_after: breaker.wait(start, now).max(Duration::from_secs(1)),
            asked: false,
        })
    }

    /// A start or create refused by ARM in `pool` counts toward its circuit breaker (a
    /// failure to record it is logged: the refusal itself stands). Returns when to try again.
    pub async fn count_refusal(&self, pool: &str, what: breaker::Refused, error: &str) -> Duration {
        let now = self.clock.now();
        let policy = &self.policy;
        match breaker::update(self.store.as_ref(), pool, |b| {
            b.refused(what, error, now, policy);
        })
        .await
        {
            Ok(b) => b.wait(true, now).max(REFUSED_RETRY_AFTER),
            Err(e) => {
                warn!(error = %e, "could not count the refusal toward the breaker");
                REFUSED_RETRY_AFTER
            }
        }
    }

    /// A VM of `pool` came up: its circuit breaker closes (nothing is written if it was
    /// closed).
    pub async fn count_success(&self, pool: &str, known: &Breaker) -> Result<(), PoolError> {
        if !known.is_clear() {
            breaker::update(self.store.as_ref(), pool, Breaker::succeeded).await?;
        }
        Ok(())
    }

    /// A start or create refused by ARM counts toward the breaker; see [`Pool::act`].
    pub async fn refused(
        &self,
        pool: &str,
        what: breaker::Refused,
        error: &ComputeError,
    ) -> PoolError {
        let retry_after = self.count_refusal(pool, what, &error.to_string()).await;
        PoolError::Refused {
            reason: format!(
                "Azure refused the {}: {error}",
                match what {
                    breaker::Refused::Start => "start",
                    breaker::Refused::Create => "create",
                }
            ),
            retry_after,
            asked: true,
        }
    }

    /// After the intent is written: handles the ARM answer to a create or start. A call
    /// that may work later hands the row to the buffer; a refused start leaves the VM
    /// `Deallocated` as it was (an answer to an operation on it is the confirmation); a
    /// refused create fails the row (its VM never provisioned). Refusals count toward the
    /// breaker.
    async fn act(
        &self,
        won: &Versioned,
        answer: Result<(), ComputeError>,
    ) -> Result<(), PoolError> {
        let Err(e) = answer else {
            return Ok(());
        };
        let now = self.clock.now();
        let transient = e.is_transient();
        let start = won.vm.operation == Some(Operation::Start);
        let next = if transient {
            warn!(vm.id = %won.vm.id, error = %e, "ARM call failed; the reconciler finishes it into the buffer");
            domain::call_failed(&won.vm, true, &e.to_string(), now)
        } else if start && e != ComputeError::NotFound {
            warn!(vm.id = %won.vm.id, error = %e, "ARM refused the start; the VM stays Deallocated");
            // The caller hears of it (503), so the VM is nobody's.
            VmRecord {
                purpose: Purpose::Buffer,
                ..domain::start_refused(&won.vm, &e.to_string(), now)
            }
        } else {
            warn!(vm.id = %won.vm.id, error = %e, "ARM refused; the VM is Failed");
            domain::call_failed(&won.vm, false, &e.to_string(), now)
        };
        if let Err(store) = self.store.update(&next, &won.etag).await {
            warn!(vm.id = %won.vm.id, error = %store, "could not record the ARM failure");
        }
        if transient || e == ComputeError::NotFound {
            return Err(e.into());
        }
        let what = if start {
            breaker::Refused::Start
        } else {
            breaker::Refused::Create
        };
        let refused = self.refused(&won.vm.pool, what, &e).await;
        if start || e.is_refusal() {
            Err(refused)
        } else {
            Err(e.into())
        }
    }

    /// ReportGameRoomsNumber: records the room count; zero rooms on a VM marked for
    /// deallocation deallocates it (without waiting for ARM).
    pub async fn report_rooms(
        &self,
        id: &VmId,
        rooms: u32,
    ) -> Result<Changed<ReportAction>, PoolError> {
        self.report_rooms_ordered(id, rooms, None).await
    }

    /// ReportGameRoomsNumber with the report's ordering field (its report time or sequence
    /// number): a report older than the last one applied to the VM answers `stale` and
    /// changes nothing.
    #[instrument(skip_all, fields(vm.id = %id, rooms))]
    pub async fn report_rooms_ordered(
        &self,
        id: &VmId,
        rooms: u32,
        order: Option<ReportOrder>,
    ) -> Result<Changed<ReportAction>, PoolError> {
        for _ in 0..TRIES_PER_VM {
            let row = self.get_row(id).await?;
            let report = domain::report_rooms_ordered(&row.vm, rooms, order, self.clock.now())?;
            let (next, action) = match report {
                Report::AlreadyDeallocating => {
                    return Ok(Changed {
                        vm: row.vm,
                        action: ReportAction::Deallocating,
                    });
                }
                Report::Stale => {
                    info!(order = ?order, last = ?row.vm.report_order, "stale rooms report ignored");
                    return Ok(Changed {
                        vm: row.vm,
                        action: ReportAction::Stale,
                    });
                }
                Report::Recorded(next) => (next, ReportAction::Recorded),
                // A VM of a previous build of its pool is deleted rather than deallocated:
                // starting it again would bring the old build back.
                Report::Deallocate(next) if self.of_old_build(&next) => (
                    domain::VmRecord {
                        operation: Some(domain::Operation::Delete),
                        purpose: domain::Purpose::Buffer,
                        ..next
                    },
                    ReportAction::Deallocating,
                ),
                Report::Deallocate(next) => (next, ReportAction::Deallocating),
            };
            if let Written::LostRace = self.store.update(&next, &row.etag).await? {
                continue;
            }
            if action == ReportAction::Deallocating {
                let deleting = domain::is_retiring(&next);
                let sent = if deleting {
                    self.compute.delete(id).await
                } else {
                    self.compute.deallocate(id).await
                };
                match sent {
                    Ok(()) | Err(ComputeError::NotFound) => {}
                    Err(e) => {
                        // The row says Deallocating; the reconciler re-issues the operation.
                        warn!(error = %e, deleting, "deallocate or delete not accepted yet; the reconciler re-issues it");
                        return Err(e.into());
                    }
                }
                if deleting {
                    info!(build = ?next.build, "deleting: a VM of a previous build");
                } else {
                    info!("deallocating");
                }
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
                            vm: next,
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
    /// (when `with_vms`). The counts are `recorded` (what the last reconcile pass counted,
    /// and when) when given; else every row is counted now.
    pub async fn status_page(
        &self,
        page: &PageRequest,
        with_vms: bool,
        recorded: Option<(GroupCounts, OffsetDateTime)>,
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
        let counts = async {
            match recorded {
                Some((groups, at)) => Ok((groups, at, CountsFrom::Record)),
                None => {
                    let at = self.clock.now();
                    let groups = self.store.count_groups().await?;
                    Ok::<_, StoreError>((groups, at, CountsFrom::Fresh))
                }
            }
        };
        let ((groups, counted_at, counts_from), vms) = tokio::try_join!(counts, vms)?;
        Ok(StatusPage {
            counts: crate::store::total(&groups),
            groups,
            counted_at,
            counts_from,
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

/// A fresh VM name: the prefix, a dash and 10 random lowercase letters and digits.
pub fn new_vm_name(prefix: &str) -> VmId {
    vm_name_from(prefix, &mut rand::rng())
}

/// A fresh VM name drawn from `rng`.
fn vm_name_from(prefix: &str, rng: &mut impl Rng) -> VmId {
    use crate::store::{VM_NAME_ALPHABET, VM_NAME_RANDOM};
    let suffix: String = (0..VM_NAME_RANDOM)
        .map(|_| char::from(VM_NAME_ALPHABET[rng.random_range(0..VM_NAME_ALPHABET.len())]))
        .collect();
    // The prefix is validated at start-up (at most 40 safe characters), so this always parses.
    VmId::parse(&format!("{prefix}-{suffix}"))
        .unwrap_or_else(|_| VmId::parse(&format!("vmpool-{suffix}")).expect("a fixed safe name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::compute::sim::{Latencies, SimCloud, SimulatedCompute};
    use crate::metrics::{MeteredStore, Metrics};
    use crate::store::memory::MemoryStore;

    /// A pool over an in-memory table of `n` VMs of each state CreateVM claims from (and as
    /// many `Running`), every table call counted.
    async fn pool_over(n: usize, max_vms: u32) -> (Pool, Arc<Metrics>) {
        let memory: Arc<dyn VmStore> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::default());
        let cloud = Arc::new(SimCloud::new(clock.clone(), Latencies::default(), 1));
        let compute: Arc<dyn Compute> = Arc::new(SimulatedCompute::new(cloud, "test"));
        let policy = Arc::new(
            PoolPolicy {
                max_vms,
                ..PoolPolicy::default()
            }
            .single_pool(),
        );
        let spec = policy.pools.all()[0].clone();
        let mut deallocated = Vec::new();
        for i in 0..n {
            for (state, purpose) in [
                (VmState::MarkedForDeallocation, Purpose::Matchmaker),
                (VmState::Standby, Purpose::Buffer),
                (VmState::Creating, Purpose::Buffer),
                (VmState::Creating, Purpose::Matchmaker),
                (VmState::Deallocated, Purpose::Matchmaker),
                (VmState::Running, Purpose::Matchmaker),
            ] {
                let name = format!("vmpool-{}{}{i:04}", state.as_str(), purpose.as_str());
                let id = VmId::parse(&name.to_ascii_lowercase()).unwrap();
                let mut vm = VmRecord::new_creating(id, format!("/r/{name}"), purpose, clock.now())
                    .placed(&spec.name, &spec.build);
                vm.state = state;
                if state == VmState::Deallocated {
                    compute.create(&vm.id, &spec.vm()).await.unwrap();
                    deallocated.push(vm.id.clone());
                }
                assert!(matches!(
                    memory.insert(&vm).await.unwrap(),
                    Written::Done(_)
                ));
            }
        }
        clock.advance(time::Duration::minutes(10));
        for id in &deallocated {
            compute.deallocate(id).await.unwrap();
        }
        clock.advance(time::Duration::minutes(10));
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn VmStore> = Arc::new(MeteredStore::new(memory, metrics.clone()));
        (Pool::new(store, compute, clock, policy), metrics)
    }

    /// The table calls of `operation` counted so far.
    fn calls(metrics: &Metrics, operation: &str) -> usize {
        let text = metrics.render_counters();
        let series = format!("vmpool_table_calls_total{{operation=\"{operation}\"");
        text.lines()
            .filter(|l| l.starts_with(&series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as usize
    }

    #[tokio::test]
    async fn every_createvm_path_reads_a_bounded_sample_and_never_lists_nor_counts() {
        let (pool, metrics) = pool_over(100, 10_000).await;
        // The ledger's first use counts the table once in its life; after that no claim does.
        let spec = pool.policy().pools.all()[0].clone();
        pool.add_to_buffer(None, &spec).await.unwrap();
        let counts = |m: &Metrics| calls(m, "count_states") + calls(m, "count_groups");
        let counted = counts(&metrics);
        let mut actions = Vec::new();
        for _ in 0..410 {
            let before = calls(&metrics, "sample");
            actions.push(pool.create_vm().await.unwrap().action);
            let samples = calls(&metrics, "sample") - before;
            assert!(
                samples <= ClaimKind::ORDER.len(),
                "{samples} samples for one CreateVM"
            );
        }
        for action in CreateAction::ALL {
            assert!(actions.contains(&action), "{action:?} in {actions:?}");
        }
        assert_eq!(calls(&metrics, "list"), 0, "no CreateVM listed a state");
        assert_eq!(calls(&metrics, "list_page"), 0);
        assert_eq!(counts(&metrics), counted, "no CreateVM counted the table");
    }

    #[tokio::test]
    async fn a_claimer_takes_its_place_in_the_ledger_before_it_writes_and_stops_at_the_maximum() {
        // Every VM but the 100 Deallocated counts against the maximum already (500); 3
        // places are left.
        let (pool, _) = pool_over(100, 503).await;
        for _ in 0..300 {
            pool.create_vm().await.unwrap();
        }
        let mut started = 0;
        loop {
            match pool.create_vm().await {
                Ok(created) => {
                    assert_eq!(created.action, CreateAction::Started);
                    started += 1;
                }
                Err(PoolError::CapacityExhausted { max }) => {
                    assert_eq!(max, 503);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(started, 3);
        let (ledger, _) = capacity::load(&**pool.store()).await.unwrap().unwrap();
        assert_eq!(ledger.used(), 503);
        let counts = pool.store().count_states().await.unwrap();
        let active: usize = counts
            .iter()
            .filter(|(s, _)| s.counts_against_max())
            .map(|(_, n)| n)
            .sum();
        assert_eq!(active, 503);
    }
}
