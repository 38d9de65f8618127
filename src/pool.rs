//! The four matchmaker operations (and the pool status) over the two ports. Each operation
//! reads rows, asks [`crate::domain`] what the transition is, writes it conditionally on the
//! row's ETag, and only then calls ARM ("write intent before acting").

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use tracing::{Instrument, info, instrument, warn};

use crate::breaker::{self, Breaker};
use crate::clock::Clock;
use crate::compute::{Compute, ComputeError};
use crate::config::PoolPolicy;
use crate::domain::{
    self, ClaimKind, GiveBack, Marked, Operation, Purpose, Refused, Report, ReportOrder, VmId,
    VmRecord, VmState,
};
use crate::idempotency::IdempotencyKey;
use crate::idempotency::record::{self as keys, Begun, KeyError};
use crate::store::{
    Etag, Page, PageRequest, Rows, StateCounts, StoreError, Versioned, VmStore, Written,
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
/// The least `Retry-After` after ARM refused a start or create.
const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(10);
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

/// What CreateVM did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The VM handed out.
    pub vm: VmRecord,
    /// `reclaimed`, `standby`, `claimedCreating`, `started` or `created`.
    pub action: &'static str,
}

/// What ReportGameRoomsNumber or MarkVMForDeallocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The VM after the operation.
    pub vm: VmRecord,
    /// What happened: `recorded`, `deallocating`, `stale`, `marked` or `alreadyMarked`.
    pub action: &'static str,
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
    /// The VMs counting against the maximum at this instance's last count: when it showed
    /// room, the next claim skips counting before it writes (the count after the write,
    /// which every claim makes, keeps the maximum).
    last_active: Mutex<Option<usize>>,
}

/// One page of GetPoolStatus: counts over the whole pool and a page of VMs if asked for.
#[derive(Debug, Clone)]
pub struct StatusPage {
    /// VMs in each state, over the whole pool.
    pub counts: StateCounts,
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
    ) -> Result<Created, PoolError> {
        let pool = Arc::clone(self);
        let deadline = self.create_deadline();
        let work = async move {
            match tokio::time::timeout(deadline, pool.create_vm_with_key(key.as_ref())).await {
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
    ) -> Result<Created, PoolError> {
        let Some(key) = key else {
            return self.create_vm().await;
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
                        info!(vm.id = %vm_id, action, "CreateVM answered again for its key");
                        return Ok(Created { vm: row.vm, action });
                    }
                    None => {
                        // The VM this key got is gone (failed and cleaned up): the key is
                        // free again.
                        keys::forget(&*self.store, key, &etag).await?;
                    }
                },
                Begun::Holder(held) => {
                    let outcome = self.create_vm().await;
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

    /// CreateVM: hands the matchmaker a VM, trying the kinds of [`ClaimKind::ORDER`] in turn
    /// and creating a new VM when none is left. It runs in the caller's task; the API calls
    /// [`Pool::create_vm_detached`].
    #[instrument(skip_all)]
    pub async fn create_vm(&self) -> Result<Created, PoolError> {
        let rows = self.store.list(Rows::InStates(&WITHOUT_CAPACITY)).await?;
        for kind in ClaimKind::ORDER.into_iter().filter(|k| !k.needs_capacity()) {
            let candidates: Vec<Versioned> = rows
                .iter()
                .filter(|r| ClaimKind::of(&r.vm) == Some(kind))
                .cloned()
                .collect();
            if let Some(won) = self.claim_one(candidates, kind).await? {
                info!(vm.id = %won.vm.id, action = kind.action(), "CreateVM");
                return Ok(Created {
                    vm: won.vm,
                    action: kind.action(),
                });
            }
        }
        self.create_with_capacity().await
    }

    /// The capacity-consuming half of CreateVM: the kinds of [`ClaimKind::ORDER`] that need
    /// capacity (a start of a deallocated VM), else a new VM. The intent is written under
    /// the capacity gate; ARM is called after it is released.
    async fn create_with_capacity(&self) -> Result<Created, PoolError> {
        let breaker = self.open_breaker(false).await?;
        let starts_held = breaker.starts_held_at(self.clock.now());
        let (won, action) = {
            let _gate = self.capacity_gate.lock().await;
            let max = self.policy.max_vms;
            if !self.room_for_one().await? {
                return Err(PoolError::CapacityExhausted { max });
            }
            // A sample of the candidates, not all of them: any one will do, and the index
            // answers a sample without reading the whole table. While starts are held back
            // after a refusal, none is tried.
            let sample = if starts_held {
                Vec::new()
            } else {
                let now = self.clock.now();
                let hold = self.policy.failed_start_hold();
                let mut sample = self
                    .store
                    .sample(&[VmState::Deallocated], START_CANDIDATES)
                    .await?;
                sample.retain(|r| !r.vm.held_for_caller(now, hold));
                sample
            };
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
                None => (self.insert_new(Purpose::Matchmaker).await?, "created"),
            };
            self.confirm_capacity(&won).await?;
            (won, action)
        };
        let answer = self.within_retry_budget(|| self.issue(&won.vm)).await;
        self.act(&won, answer).await?;
        info!(vm.id = %won.vm.id, action, "CreateVM");
        Ok(Created { vm: won.vm, action })
    }

    /// Sends the ARM call a capacity claim's row asks for: a start or a create.
    async fn issue(&self, vm: &VmRecord) -> Result<(), ComputeError> {
        if vm.operation == Some(Operation::Start) {
            self.compute.start(&vm.id).await
        } else {
            self.compute.create(&vm.id).await
        }
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
    ) -> Result<Created, PoolError> {
        self.open_breaker(deallocated.is_some()).await?;
        let won = {
            let _gate = self.capacity_gate.lock().await;
            let max = self.policy.max_vms;
            if !self.room_for_one().await? {
                return Err(PoolError::CapacityExhausted { max });
            }
            let won = match deallocated {
                Some(row) => {
                    let next = domain::start_for_buffer(&row.vm, self.clock.now())?;
                    match self.store.update(&next, &row.etag).await? {
                        Written::Done(etag) => Versioned { vm: next, etag },
                        Written::LostRace => return Err(PoolError::Contention),
                    }
                }
                None => self.insert_new(Purpose::Buffer).await?,
            };
            self.confirm_capacity(&won).await?;
            won
        };
        let action = if deallocated.is_some() {
            "started"
        } else {
            "created"
        };
        let answer = self.issue(&won.vm).await;
        self.act(&won, answer).await?;
        Ok(Created { vm: won.vm, action })
    }

    /// Inserts a row for a new VM under a fresh name.
    pub(crate) async fn insert_new(&self, purpose: Purpose) -> Result<Versioned, PoolError> {
        for _ in 0..TRIES_PER_VM {
            let id = new_vm_name(&self.policy.vm_prefix);
            let vm = VmRecord::new_creating(
                id.clone(),
                self.compute.resource_id(&id),
                purpose,
                self.clock.now(),
            );
            if let Written::Done(etag) = self.store.insert(&vm).await? {
                return Ok(Versioned { vm, etag });
            }
        }
        Err(PoolError::Contention)
    }

    /// Another instance may have consumed capacity at the same moment. Every claimer writes
    /// before it counts, so the last of any two to count sees both; one that finds the pool
    /// over its maximum takes its own claim back. Concurrent claims never over-fill the pool;
    /// at worst both give way and the callers retry.
    async fn confirm_capacity(&self, won: &Versioned) -> Result<(), PoolError> {
        let max = self.policy.max_vms;
        if self.count_active().await? <= max as usize {
            return Ok(());
        }
        warn!(vm.id = %won.vm.id, "another instance filled the pool at the same moment; giving the claim back");
        let undone = match domain::give_back(&won.vm) {
            GiveBack::Remove => self.store.delete(&won.vm.id, &won.etag).await,
            GiveBack::Restore(back) => self.store.update(&back, &won.etag).await,
        };
        if let Err(e) = undone {
            // The row stays Creating with no ARM call; the reconciler gives it back.
            warn!(vm.id = %won.vm.id, error = %e, "could not give the claim back");
        }
        Err(PoolError::CapacityExhausted { max })
    }

    /// Whether one more VM fits under the maximum, as far as this instance knows before it
    /// writes: its last count if that showed room (no table scan), else a fresh count.
    async fn room_for_one(&self) -> Result<bool, PoolError> {
        let max = self.policy.max_vms as usize;
        let hint = *self.last_active.lock().unwrap_or_else(|e| e.into_inner());
        if hint.is_some_and(|n| n < max) {
            return Ok(true);
        }
        Ok(self.count_active().await? < max)
    }

    /// Counts the VMs against the maximum (one pass over the states of the table).
    async fn count_active(&self) -> Result<usize, PoolError> {
        let counts = self.store.count_states().await?;
        let n = counts
            .iter()
            .filter(|(state, _)| state.counts_against_max())
            .map(|(_, n)| n)
            .sum();
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
        Ok(n)
    }

    /// The circuit breaker, if starts and creates (`start`: starts) may go to ARM now;
    /// else [`PoolError::Refused`] with when to try again, and nothing is sent.
    async fn open_breaker(&self, start: bool) -> Result<Breaker, PoolError> {
        let (breaker, _) = breaker::load(self.store.as_ref()).await?;
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
                "ARM keeps refusing starts and creates ({reason}); none is tried until the breaker closes"
            ),
            _ => "ARM refused a start lately; starts wait for the backoff".into(),
        };
        Err(PoolError::Refused {
            reason,
            retry_after: breaker.wait(start, now).max(Duration::from_secs(1)),
            asked: false,
        })
    }

    /// A start or create refused by ARM counts toward the circuit breaker (a failure to
    /// record it is logged: the refusal itself stands). Returns when to try again.
    pub async fn count_refusal(&self, what: breaker::Refused, error: &str) -> Duration {
        let now = self.clock.now();
        let policy = &self.policy;
        match breaker::update(self.store.as_ref(), |b| {
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

    /// A VM came up: the circuit breaker closes (nothing is written if it was closed).
    pub async fn count_success(&self, known: &Breaker) -> Result<(), PoolError> {
        if !known.is_clear() {
            breaker::update(self.store.as_ref(), Breaker::succeeded).await?;
        }
        Ok(())
    }

    /// A start or create refused by ARM counts toward the breaker; see [`Pool::act`].
    pub async fn refused(&self, what: breaker::Refused, error: &ComputeError) -> PoolError {
        let retry_after = self.count_refusal(what, &error.to_string()).await;
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
        let refused = self.refused(what, &e).await;
        if start || e.is_refusal() {
            Err(refused)
        } else {
            Err(e.into())
        }
    }

    /// ReportGameRoomsNumber: records the room count; zero rooms on a VM marked for
    /// deallocation deallocates it (without waiting for ARM).
    pub async fn report_rooms(&self, id: &VmId, rooms: u32) -> Result<Changed, PoolError> {
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
    ) -> Result<Changed, PoolError> {
        for _ in 0..TRIES_PER_VM {
            let row = self.get_row(id).await?;
            let report = domain::report_rooms_ordered(&row.vm, rooms, order, self.clock.now())?;
            let (next, action) = match report {
                Report::AlreadyDeallocating => {
                    return Ok(Changed {
                        vm: row.vm,
                        action: "deallocating",
                    });
                }
                Report::Stale => {
                    info!(order = ?order, last = ?row.vm.report_order, "stale rooms report ignored");
                    return Ok(Changed {
                        vm: row.vm,
                        action: "stale",
                    });
                }
                Report::Recorded(next) => (next, "recorded"),
                Report::Deallocate(next) => (next, "deallocating"),
            };
            if let Written::LostRace = self.store.update(&next, &row.etag).await? {
                continue;
            }
            if action == "deallocating" {
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
    pub async fn mark_for_deallocation(&self, id: &VmId) -> Result<Changed, PoolError> {
        for _ in 0..TRIES_PER_VM {
            let row = self.get_row(id).await?;
            match domain::mark_for_deallocation(&row.vm, self.clock.now())? {
                Marked::Already => {
                    return Ok(Changed {
                        vm: row.vm,
                        action: "alreadyMarked",
                    });
                }
                Marked::Now(next) => {
                    if let Written::Done(_) = self.store.update(&next, &row.etag).await? {
                        return Ok(Changed {
                            vm: next,
                            action: "marked",
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
        let rows = self
            .store
            .list_page(Rows::InStates(&[VmState::Running]), page)
            .await?;
        Ok(Page {
            items: rows.items.into_iter().map(|r| r.vm).collect(),
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
        let (counts, vms) = tokio::try_join!(self.store.count_states(), vms)?;
        Ok(StatusPage { counts, vms })
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
