//! The reconciler: [`plan`] decides purely what to do from the rows, what ARM reports, the
//! pool's record and the time; [`Reconciler::run_once`] takes the reconcile lease, gathers
//! those inputs (one table query, the resource group's listing, point reads of VMs in flight
//! or missing, a power sweep every few minutes), applies the actions idempotently with
//! conditional writes (intent first, then ARM), and records the pass with If-Match. The
//! Functions timer and the standalone loop both call [`Reconciler::run_once`].

mod forecast;
mod meta;
mod observation;
mod plan;

pub use meta::{
    BufferState, Lease, PoolMeta, acquire_lease, load_meta, release_lease, renew_lease, save_meta,
};
pub use observation::{Observation, PointRead, Source};
pub use plan::{
    Action, BRAKE_MIN_VMS, GRACE, MAX_ATTEMPTS, MAX_POINT_READS_PER_PASS, Observed, Plan, Seen,
    Why, demand_target, plan, reads_needed, settle, vanished,
};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{debug, error, info, warn};

use crate::breaker;
use crate::capacity;
use crate::compute::{ComputeError, Listed, Power, Provisioning, VmStatus};
use crate::domain::{self, AdoptedAs, Operation, VmRecord, VmState};
use crate::idempotency::expiry;
use crate::pool::{Pool, PoolError};
use crate::store::{Rows, StoreError, Versioned, WRITE_CONCURRENCY, Written, run_bounded};

/// What one pass did, for the timer's `ReturnValue`, the log and the pool's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Summary {
    /// Another instance holds the reconcile lease: this pass did nothing.
    pub skipped: bool,
    /// VMs that became `Running` or `Standby`.
    pub completed: u32,
    /// VMs that became `Deallocated`.
    pub deallocated: u32,
    /// VMs that became `Failed`.
    pub failed: u32,
    /// ARM operations issued again.
    pub reissued: u32,
    /// Deallocated VMs started for the buffer.
    pub started: u32,
    /// VMs created for the buffer.
    pub created: u32,
    /// Deallocations begun (surplus buffer, drain timeout, drift).
    pub deallocating: u32,
    /// Rows corrected to what ARM shows.
    pub corrected: u32,
    /// Failed VMs deleted in ARM.
    pub deleted: u32,
    /// Rows of deleted VMs removed.
    pub forgotten: u32,
    /// VMs deleted for good: idle or drained VMs of a pool's previous build, and VMs
    /// deallocated longer than `VMPOOL_DEALLOCATED_KEEP_SECS`.
    pub retired: u32,
    /// Untracked pool VMs given a row.
    pub adopted: u32,
    /// Starts ARM refused or that failed (quota, SKU, allocation): their VMs stay
    /// `Deallocated`.
    pub start_refusals: u32,
    /// VMs whose operation ran out of attempts, marked as needing attention this pass.
    pub needs_attention: u32,
    /// Unused claims returned to the buffer.
    pub unclaimed: u32,
    /// Public IPs found after their VM completed.
    pub ips_found: u32,
    /// Builds of VMs learnt from the image ARM reports.
    pub builds_read: u32,
    /// `Idempotency-Key` records removed past their time.
    pub keys_expired: u32,
    /// Point reads (GETs) of single VMs.
    pub point_reads: u32,
    /// Known VMs missing from the listing while the brake held (nothing was done to them).
    pub vanished: u32,
    /// The buffer target this pass worked towards.
    pub buffer_target: u32,
    /// Actions skipped because another writer changed the row first.
    pub lost_races: u32,
    /// Actions that failed (ARM or storage errors); the next pass retries them.
    pub errors: u32,
}

impl Summary {
    /// Whether the pass did or tried anything (an idle pass logs at debug level only).
    pub fn changed_anything(&self) -> bool {
        *self
            != Summary {
                buffer_target: self.buffer_target,
                point_reads: self.point_reads,
                ..Summary::default()
            }
    }

    /// Adds the counts of `other` (one action's part of a pass) to these.
    fn absorb(&mut self, other: &Summary) {
        self.completed += other.completed;
        self.deallocated += other.deallocated;
        self.failed += other.failed;
        self.reissued += other.reissued;
        self.started += other.started;
        self.created += other.created;
        self.deallocating += other.deallocating;
        self.corrected += other.corrected;
        self.deleted += other.deleted;
        self.forgotten += other.forgotten;
        self.retired += other.retired;
        self.adopted += other.adopted;
        self.start_refusals += other.start_refusals;
        self.needs_attention += other.needs_attention;
        self.unclaimed += other.unclaimed;
        self.ips_found += other.ips_found;
        self.builds_read += other.builds_read;
        self.keys_expired += other.keys_expired;
        self.point_reads += other.point_reads;
        self.vanished += other.vanished;
        self.lost_races += other.lost_races;
        self.errors += other.errors;
    }

    /// One line for the log and the timer's `Logs`.
    pub fn line(&self) -> String {
        if self.skipped {
            return "reconcile skipped: another instance holds the reconcile lease".into();
        }
        format!(
            "reconciled: {} completed, {} deallocated, {} failed, {} re-issued, {} started, {} created, {} deallocating, {} corrected, {} deleted, {} deleted for good, {} forgotten, {} adopted, {} unclaimed, {} starts refused, {} need attention, {} IPs found, {} builds read, {} keys expired, {} point reads, {} vanished, buffer target {}, {} lost races, {} errors",
            self.completed,
            self.deallocated,
            self.failed,
            self.reissued,
            self.started,
            self.created,
            self.deallocating,
            self.corrected,
            self.deleted,
            self.retired,
            self.forgotten,
            self.adopted,
            self.unclaimed,
            self.start_refusals,
            self.needs_attention,
            self.ips_found,
            self.builds_read,
            self.keys_expired,
            self.point_reads,
            self.vanished,
            self.buffer_target,
            self.lost_races,
            self.errors
        )
    }
}

/// Why a pass could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The table could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// ARM could not be listed or refused a call.
    #[error(transparent)]
    Compute(#[from] ComputeError),
    /// A pool operation failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// The margin by which a pass stops before its lease would run out: this part of the lease.
pub const LEASE_MARGIN_PART: u32 = 5;

/// How many point reads run at once.
const READS_AT_ONCE: usize = 8;

/// How long the reconcile lease lasts unless renewed, when nothing says otherwise (start-up
/// sets a few reconcile periods: [`lease_ttl_for`]). It is taken at the start of every pass
/// and renewed in the background while the pass runs, every third of it.
pub const DEFAULT_LEASE_TTL: time::Duration = time::Duration::seconds(60);

/// The lease for reconcile passes every `period`: three periods, at least 15 s (so a pass
/// slowed by a storage or ARM hiccup keeps it) and at most [`DEFAULT_LEASE_TTL`]. After an
/// instance dies holding it, another takes over within that.
pub fn lease_ttl_for(period: std::time::Duration) -> time::Duration {
    let three = time::Duration::try_from(period * 3).unwrap_or(DEFAULT_LEASE_TTL);
    three.clamp(time::Duration::seconds(15), DEFAULT_LEASE_TTL)
}

/// Runs reconcile passes against a pool: one at a time in this process (a mutex), and one
/// instance at a time across processes (the lease).
#[derive(Debug, Clone)]
pub struct Reconciler {
    pool: Arc<Pool>,
    holder: String,
    lease_ttl: time::Duration,
    serial: Arc<tokio::sync::Mutex<()>>,
    keys: Arc<expiry::Cursor>,
}

fn lower(id: &str) -> String {
    id.to_ascii_lowercase()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl Reconciler {
    /// A reconciler for `pool`, with a lease holder name of its own.
    pub fn new(pool: Arc<Pool>) -> Self {
        use rand::Rng;
        let holder: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(16)
            .map(char::from)
            .collect();
        Reconciler {
            pool,
            holder,
            lease_ttl: DEFAULT_LEASE_TTL,
            serial: Arc::new(tokio::sync::Mutex::new(())),
            keys: Arc::default(),
        }
    }

    /// The same, holding the lease under `holder` (the name another reconciler of this
    /// instance uses, so the two count as one instance).
    pub fn with_holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// The name this reconciler holds the lease under.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The same, with a lease that lasts `ttl` unless renewed.
    pub fn with_lease_ttl(mut self, ttl: time::Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The reconciler's record (buffer target, breaker, observation, last pass).
    pub async fn record(&self) -> Result<PoolMeta, StoreError> {
        Ok(load_meta(self.pool.store().as_ref()).await?.0)
    }

    /// On a graceful stop: waits for a pass in progress, then gives up the reconcile lease if
    /// this instance holds it, so another instance takes the next pass at once rather than
    /// after the lease runs out. A failure is logged: the lease then runs out as it would.
    pub async fn release(&self) {
        let _one_at_a_time = self.serial.lock().await;
        let store = self.pool.store().as_ref();
        match release_lease(store, &self.holder, self.pool.clock().now()).await {
            Ok(true) => info!("reconcile lease given up on stopping"),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "could not give up the reconcile lease; it runs out by itself")
            }
        }
    }

    /// One pass, if this instance holds (or takes) the lease: observe, plan, act, record.
    pub async fn run_once(&self) -> Result<Summary, ReconcileError> {
        let _one_at_a_time = self.serial.lock().await;
        let pool = &self.pool;
        let store = pool.store().as_ref();
        let started = pool.clock().now();
        // The lease runs from before it was asked for, on this process's own clock.
        let asked = pool.clock().monotonic();
        let Some(lease) = acquire_lease(store, &self.holder, started, self.lease_ttl).await? else {
            debug!("reconcile pass skipped: another instance holds the reconcile lease");
            return Ok(Summary {
                skipped: true,
                ..Summary::default()
            });
        };
        let mut summary = Summary::default();
        let result = tokio::select! {
            result = self.pass(started, &mut summary) => result,
            () = self.keep(lease, asked) => {
                warn!("the reconcile lease was lost or could not be renewed in time; the pass stops where it is and the next one finishes its work");
                Ok(())
            }
        };
        let finished = pool.clock().now();
        if let Err(e) = &result {
            self.record_failure(started, finished, e).await;
        }
        let line = summary.line();
        if result.is_err() || summary.changed_anything() {
            info!(pass_started_at = %rfc3339(started), pass_finished_at = %rfc3339(finished), summary = %line, "reconcile pass");
        } else {
            debug!(pass_started_at = %rfc3339(started), pass_finished_at = %rfc3339(finished), summary = %line, "reconcile pass");
        }
        result.map(|()| summary)
    }

    /// A pass that could not run to its end is recorded in the pool's record too, so every
    /// instance shows it (best effort: the storage that failed the pass may fail this too).
    async fn record_failure(
        &self,
        started: OffsetDateTime,
        finished: OffsetDateTime,
        error: &ReconcileError,
    ) {
        let store = self.pool.store().as_ref();
        let saved = async {
            let (mut meta, etag) = load_meta(store).await?;
            meta.last_reconcile_started_at = Some(started);
            meta.last_reconcile_at = Some(finished);
            meta.last_reconcile_ok = Some(false);
            meta.last_reconcile_error = Some(error.to_string());
            meta.last_reconcile_summary = format!("reconcile pass failed: {error}");
            save_meta(store, &meta, etag.as_ref()).await
        };
        match saved.await {
            Ok(Written::Done(_)) => {}
            Ok(Written::LostRace) => {
                warn!("the pool's record changed while the failed pass was being recorded");
            }
            Err(e) => {
                warn!(error = %e, "the failed pass could not be recorded in the pool's record")
            }
        }
    }

    /// Renews `lease` every third of its length while a pass runs; returns when the pass
    /// must stop: the lease was lost (another instance took it after it expired), or it could
    /// not be renewed (storage refused or did not answer, however long) and is about to run
    /// out. That is judged on this process's own monotonic clock, from before each renewal
    /// was sent, with a margin of a fifth of the lease ([`LEASE_MARGIN_PART`]), so the pass
    /// stops before any other instance may take the lease.
    async fn keep(&self, mut lease: Lease, asked: std::time::Duration) {
        let store = self.pool.store().as_ref();
        let clock = self.pool.clock();
        let ttl = std::time::Duration::try_from(self.lease_ttl)
            .unwrap_or(std::time::Duration::from_secs(15));
        let every = ttl / 3;
        let margin = ttl / LEASE_MARGIN_PART;
        let mut valid_until = asked + ttl;
        let mut next_renewal = asked + every;
        loop {
            let stop_at = valid_until.saturating_sub(margin);
            let now = clock.monotonic();
            if now >= stop_at {
                error!(
                    lease_secs = ttl.as_secs(),
                    "the reconcile lease could not be renewed and is about to run out; the pass stops"
                );
                return;
            }
            if now < next_renewal {
                clock.sleep(next_renewal.min(stop_at) - now).await;
                continue;
            }
            let sent = clock.monotonic();
            let renewal = renew_lease(store, &self.holder, &lease, clock.now(), self.lease_ttl);
            // A renewal that hangs is given up when the lease must be treated as gone.
            let answer = tokio::select! {
                answer = renewal => Some(answer),
                () = clock.sleep(stop_at.saturating_sub(sent)) => None,
            };
            match answer {
                Some(Ok(Some(renewed))) => {
                    lease = renewed;
                    valid_until = sent + ttl;
                    next_renewal = sent + every;
                }
                Some(Ok(None)) => return,
                Some(Err(e)) => {
                    warn!(error = %e, "the reconcile lease could not be renewed yet; trying again");
                    next_renewal =
                        clock.monotonic() + (every / 5).max(std::time::Duration::from_millis(200));
                }
                None => {}
            }
        }
    }

    async fn pass(&self, now: OffsetDateTime, summary: &mut Summary) -> Result<(), ReconcileError> {
        let pool = &self.pool;
        let store = pool.store().as_ref();
        let policy = pool.policy();
        let (rows, listing, (meta, meta_etag)) = match tokio::try_join!(
            async { store.list(Rows::All).await.map_err(ReconcileError::from) },
            async { pool.compute().list().await.map_err(ReconcileError::from) },
            async { load_meta(store).await.map_err(ReconcileError::from) },
        ) {
            Ok(inputs) => inputs,
            Err(ReconcileError::Compute(e @ ComputeError::Suspect { .. })) => {
                self.record_suspect(format!("the VM listing: {e}")).await;
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = store.repair_index(&rows).await {
            warn!(error = %e, "the state index could not be repaired; the next pass retries");
        }
        let sweep_every =
            time::Duration::try_from(policy.adopt_every).unwrap_or(time::Duration::MAX);
        // A sweep Resource Graph refuses (throttled past its quota, or no read access)
        // only delays drift repair and adoption: the pass goes on, and the next one sweeps.
        let mut suspect: Option<String> = None;
        let swept = if meta.last_sweep_at.is_none_or(|t| now - t >= sweep_every) {
            match pool.compute().list_power().await {
                Ok(swept) => Some(swept),
                Err(e @ ComputeError::Suspect { .. }) => {
                    summary.errors += 1;
                    error!(error = %e, "observation suspect: the power sweep was answered about scope or access; no destructive step this pass");
                    suspect = Some(format!("the Resource Graph sweep: {e}"));
                    None
                }
                Err(e) => {
                    summary.errors += 1;
                    warn!(error = %e, "the power sweep failed; drift repair and adoption wait for the next pass");
                    None
                }
            }
        } else {
            None
        };
        let mut observed = observe(&rows, listing, swept.as_ref());
        observed.suspect = suspect;
        let braked = vanished(&rows, &observed.listed, policy);
        if let Some(missing) = &braked {
            observed.vanished = u32::try_from(missing.len()).unwrap_or(u32::MAX);
            error!(
                missing = missing.len(),
                known = rows.len(),
                "observation suspect: many known VMs are missing from ARM's listing at once; acting on none of them until the view recovers"
            );
        }
        summary.vanished = observed.vanished;
        let reads = reads_needed(&rows, &observed.listed, braked.is_some(), now, policy);
        summary.point_reads = u32::try_from(reads.len()).unwrap_or(u32::MAX);
        let compute = pool.compute().clone();
        let mut answers = futures::stream::iter(reads)
            .map(|id| {
                let compute = compute.clone();
                async move {
                    let answer = PointRead::take(compute.as_ref(), id.clone()).await;
                    (id, answer)
                }
            })
            .buffer_unordered(READS_AT_ONCE);
        while let Some((id, answer)) = answers.next().await {
            match answer {
                Ok(read) => {
                    observed.reads.insert(id, read);
                }
                Err(e @ ComputeError::Suspect { .. }) => {
                    summary.errors += 1;
                    error!(vm.id = %id, error = %e, "observation suspect: a point read was answered about scope or access, not about the VM; no destructive step this pass");
                    observed
                        .suspect
                        .get_or_insert_with(|| format!("a point read of {id}: {e}"));
                }
                Err(e) => {
                    summary.errors += 1;
                    warn!(vm.id = %id, error = %e, "point read failed; nothing is concluded about this VM this pass");
                }
            }
        }
        drop(answers);

        let Plan { actions, mut meta } = plan(&rows, &observed, now, policy, &meta);
        summary.buffer_target = meta
            .pools
            .values()
            .map(|b| b.buffer_target.max(b.forecast))
            .sum();
        // The pool's counts, per pool and build: this listing, kept up to date with the
        // pass's own changes below (changes other instances make meanwhile are counted by
        // the next pass).
        let mut groups = crate::store::GroupCounts::new();
        for row in &rows {
            crate::store::count_into(&mut groups, crate::store::Group::of(&row.vm), row.vm.state);
        }
        meta.record_groups(&groups);
        meta.counted_at = Some(now);
        // Actions touch different rows: they run a bounded number at a time, each with its own
        // summary, sharing the pool's record (held only between awaits).
        let shared = std::sync::Mutex::new(meta);
        let mut actions = actions.into_iter().peekable();
        while actions.peek().is_some() {
            let batch: Vec<Action> = actions.by_ref().take(WRITE_CONCURRENCY).collect();
            let outcomes = run_bounded(
                batch.into_iter().map(|action| {
                    let shared = &shared;
                    async move {
                        let mut part = Summary::default();
                        let result = self.apply(action, &mut part, shared).await;
                        (result, part)
                    }
                }),
                WRITE_CONCURRENCY,
            )
            .await;
            for (result, part) in outcomes {
                summary.absorb(&part);
                if let Err(e) = result {
                    summary.errors += 1;
                    warn!(error = %e, "reconcile action failed; the next pass retries it");
                }
            }
        }
        self.expire_keys(summary).await;
        // The capacity ledger is counted from this pass's listing (see `capacity`).
        match capacity::recount(store, &rows, now).await {
            Ok(Written::Done(_)) => {}
            Ok(Written::LostRace) => {
                debug!(
                    "a claim took a place while the ledger was counted; the next pass counts again"
                );
            }
            Err(e) => {
                summary.errors += 1;
                warn!(error = %e, "the capacity ledger could not be counted; the next pass counts again");
            }
        }
        let mut meta = shared.into_inner().unwrap_or_else(|e| e.into_inner());
        let finished = pool.clock().now();
        meta.last_reconcile_started_at = Some(now);
        meta.last_reconcile_at = Some(finished);
        meta.last_reconcile_ok = Some(true);
        meta.last_reconcile_error = None;
        meta.last_success_at = Some(finished);
        meta.claims_timed_out = meta
            .claims_timed_out
            .saturating_add(u64::from(summary.unclaimed));
        let marked = rows.iter().filter(|r| r.vm.attention.is_some()).count();
        meta.needs_attention = u32::try_from(marked).unwrap_or(u32::MAX) + summary.needs_attention;
        if swept.is_some() {
            meta.last_sweep_at = Some(now);
        }
        meta.last_reconcile_summary = summary.line();
        meta.last_summary = Some(summary.clone());
        if let Written::LostRace = save_meta(store, &meta, meta_etag.as_ref()).await? {
            warn!(
                "the pool's record was changed by another writer during the pass; this pass's record is dropped"
            );
        }
        Ok(())
    }

    /// The listing was answered about scope or access (`ResourceGroupNotFound`, 403): the
    /// pass stops before it plans anything, and the pool's record says why, so that
    /// GetPoolStatus shows `observation.suspect` with the reason.
    async fn record_suspect(&self, reason: String) {
        error!(%reason, "observation suspect: ARM answered about scope or access; no destructive step until it answers about the VMs again");
        let store = self.pool.store().as_ref();
        let saved = match load_meta(store).await {
            Ok((mut meta, etag)) => {
                meta.suspect_reason = Some(crate::store::truncate(&reason));
                save_meta(store, &meta, etag.as_ref()).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            warn!(error = %e, "the pool's record could not say why the observation is suspect");
        }
    }

    /// Removes a bounded number of `Idempotency-Key` records past their time (see
    /// [`expiry`]); a failure only delays it to the next pass.
    async fn expire_keys(&self, summary: &mut Summary) {
        let pool = &self.pool;
        let now = pool.clock().now();
        match expiry::remove_expired(pool.store().as_ref(), now, pool.key_rules(), &self.keys).await
        {
            Ok(done) => {
                summary.keys_expired += done.removed;
                summary.lost_races += done.lost_races;
                summary.errors += done.errors;
            }
            Err(e) => {
                summary.errors += 1;
                warn!(error = %e, "the idempotency keys could not be read; expired ones are removed on a later pass");
            }
        }
    }

    async fn write(
        &self,
        row: &Versioned,
        next: &domain::VmRecord,
        summary: &mut Summary,
        meta: &std::sync::Mutex<PoolMeta>,
    ) -> Result<bool, ReconcileError> {
        match self.pool.store().update(next, &row.etag).await? {
            Written::Done(_) => {
                moved(meta, Some(&row.vm), Some(next));
                Ok(true)
            }
            Written::LostRace => {
                summary.lost_races += 1;
                Ok(false)
            }
        }
    }

    /// Records the delete of a `Failed` VM, or of a VM of a previous build, on its row (the
    /// row says the delete is issued and waits a deallocate timeout before it sends it
    /// again), then sends it; a short throttle is waited out here.
    async fn delete_in_arm(
        &self,
        row: &Versioned,
        next: &domain::VmRecord,
        read: &PointRead,
        summary: &mut Summary,
        meta: &std::sync::Mutex<PoolMeta>,
    ) -> Result<(), ReconcileError> {
        let pool = &self.pool;
        let Written::Done(etag) = pool.store().update(next, &row.etag).await? else {
            summary.lost_races += 1;
            return Ok(());
        };
        moved(meta, Some(&row.vm), Some(next));
        match through_short_throttling(|| pool.compute().delete(&row.vm.id)).await {
            Ok(()) | Err(ComputeError::NotFound) => {}
            Err(e) => {
                // A delete ARM turned away (throttled, unavailable, busy) was not an
                // attempt; the time bound from the first delete still holds.
                if e.is_transient() && next.attempts > 1 {
                    let uncounted = domain::VmRecord {
                        attempts: next.attempts - 1,
                        last_error: Some(crate::store::truncate(&e.to_string())),
                        ..next.clone()
                    };
                    if let Err(store) = pool.store().update(&uncounted, &etag).await {
                        warn!(vm.id = %row.vm.id, error = %store, "could not record the ARM failure");
                    }
                }
                return Err(e.into());
            }
        }
        if next.state == VmState::Failed {
            info!(vm.id = %row.vm.id, rests_on = %read, "failed VM deleted");
            summary.deleted += 1;
        } else {
            info!(vm.id = %row.vm.id, build = ?row.vm.build, was = %row.vm.state, rests_on = %read, "VM deleted for good (of a previous build, or deallocated too long)");
            summary.retired += 1;
        }
        Ok(())
    }

    async fn apply(
        &self,
        action: Action,
        summary: &mut Summary,
        meta: &std::sync::Mutex<PoolMeta>,
    ) -> Result<(), ReconcileError> {
        let record = || meta.lock().unwrap_or_else(|e| e.into_inner());
        let pool = &self.pool;
        let compute = pool.compute();
        let now = pool.clock().now();
        let policy = pool.policy();
        match action {
            Action::Complete(row, read) => {
                // A missing IP does not hold the VM back: it is looked for on later passes.
                let ip = match compute.public_ip(&row.vm.id).await {
                    Ok(ip) => ip,
                    Err(e) => {
                        warn!(vm.id = %row.vm.id, error = %e, "public IP not read; looked for again later");
                        None
                    }
                };
                let unhealthy = read.status().and_then(|s| match &s.provisioning {
                    Provisioning::Failed(e) => {
                        Some(format!("provisioning failed while running: {e}"))
                    }
                    _ => None,
                });
                if let Ok(next) = domain::complete_creating(&row.vm, ip, unhealthy, now)
                    && self.write(&row, &next, summary, meta).await?
                {
                    info!(vm.id = %row.vm.id, state = %next.state, unhealthy = ?next.unhealthy, rests_on = %read, "VM is ready");
                    // A VM came up: the breaker on refusals closes.
                    let known = record().breaker(&row.vm.pool);
                    if let Err(e) = pool.count_success(&row.vm.pool, &known).await {
                        warn!(error = %e, "could not close the breaker; the next VM up closes it");
                    } else {
                        record().breakers.remove(&row.vm.pool);
                    }
                    summary.completed += 1;
                }
            }
            Action::FinishDeallocate(row, read) => {
                if let Ok(next) = domain::complete_deallocating(&row.vm, now)
                    && self.write(&row, &next, summary, meta).await?
                {
                    info!(vm.id = %row.vm.id, rests_on = %read, "VM is deallocated");
                    summary.deallocated += 1;
                }
            }
            Action::Fail(row, error, read) => {
                let next = domain::fail(&row.vm, &error, now);
                if self.write(&row, &next, summary, meta).await? {
                    warn!(vm.id = %row.vm.id, %error, rests_on = %read, "VM failed");
                    if row.vm.operation == Some(Operation::Create) {
                        pool.count_refusal(&row.vm.pool, breaker::Refused::Create, &error)
                            .await;
                    }
                    summary.failed += 1;
                }
            }
            Action::Reissue(row) => {
                let mut next = domain::reissue(&row.vm, now);
                // A create that never reached ARM goes out with the pool's current image:
                // the row says so before it is sent.
                if next.operation == Some(Operation::Create)
                    && let Some(spec) = pool.spec_of(&row.vm)
                {
                    next.build = Some(spec.build.clone());
                }
                let Written::Done(etag) = pool.store().update(&next, &row.etag).await? else {
                    summary.lost_races += 1;
                    return Ok(());
                };
                let id = &row.vm.id;
                let answer = match (row.vm.state, row.vm.operation) {
                    (VmState::Creating, Some(Operation::Create)) => pool.create_in_arm(&next).await,
                    (VmState::Creating, _) => compute.start(id).await,
                    (VmState::Deallocating, Some(Operation::Delete)) => {
                        match compute.delete(id).await {
                            Err(ComputeError::NotFound) => Ok(()),
                            other => other,
                        }
                    }
                    (VmState::Deallocating, _) => match compute.deallocate(id).await {
                        Err(ComputeError::NotFound) => Ok(()),
                        other => other,
                    },
                    _ => Ok(()),
                };
                if let Err(e) = answer {
                    let refused = !e.is_transient() && e != ComputeError::NotFound;
                    match (row.vm.state, row.vm.operation) {
                        (VmState::Creating, Some(Operation::Start)) if refused => {
                            // ARM answered the start itself: the VM is as it was.
                            let back = domain::start_refused(&next, &e.to_string(), now);
                            if let Written::Done(_) = pool.store().update(&back, &etag).await? {
                                warn!(vm.id = %id, error = %e, "start refused again; the VM stays Deallocated");
                                summary.start_refusals += 1;
                            }
                            pool.count_refusal(
                                &row.vm.pool,
                                breaker::Refused::Start,
                                &e.to_string(),
                            )
                            .await;
                            return Ok(());
                        }
                        (VmState::Creating, Some(Operation::Create)) if !e.is_transient() => {
                            pool.count_refusal(
                                &row.vm.pool,
                                breaker::Refused::Create,
                                &e.to_string(),
                            )
                            .await;
                        }
                        _ => {}
                    }
                    // Kept on the row, so the failure after the last attempt says why. A call
                    // ARM turned away (throttled, unavailable, busy) was not an attempt: it is
                    // not counted, and the time bound from the first issue still holds.
                    let noted = domain::VmRecord {
                        last_error: Some(crate::store::truncate(&e.to_string())),
                        attempts: if e.is_transient() {
                            row.vm.attempts
                        } else {
                            next.attempts
                        },
                        ..next
                    };
                    if let Err(store) = pool.store().update(&noted, &etag).await {
                        warn!(vm.id = %id, error = %store, "could not record the ARM refusal");
                    }
                    return Err(e.into());
                }
                info!(vm.id = %id, attempt = next.attempts, "ARM operation issued again");
                summary.reissued += 1;
            }
            Action::StartForBuffer(row) => {
                let Some(spec) = pool.spec_of(&row.vm) else {
                    return Ok(());
                };
                match pool.add_to_buffer(Some(&row), spec).await {
                    Ok(started) => {
                        moved(meta, Some(&row.vm), Some(&started.vm));
                        summary.started += 1;
                    }
                    // The breaker or the hold on starts stopped it: nothing was sent.
                    Err(PoolError::Refused { asked: false, .. }) => {}
                    Err(PoolError::Refused { .. }) => summary.start_refusals += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            Action::CreateForBuffer(name) => {
                let Some(spec) = policy.pools.get(&name) else {
                    return Ok(());
                };
                match pool.add_to_buffer(None, spec).await {
                    Ok(created) => {
                        moved(meta, None, Some(&created.vm));
                        summary.created += 1;
                    }
                    Err(PoolError::Refused { asked: false, .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Action::StartRefused(row, error, read) => {
                let next = domain::start_refused(&row.vm, &error, now);
                if self.write(&row, &next, summary, meta).await? {
                    warn!(vm.id = %row.vm.id, %error, rests_on = %read, "the start failed; the VM stays Deallocated");
                    pool.count_refusal(&row.vm.pool, breaker::Refused::Start, &error)
                        .await;
                    summary.start_refusals += 1;
                }
            }
            Action::Attention(row, why) => {
                let next = domain::needs_attention(&row.vm, &why);
                if self.write(&row, &next, summary, meta).await? {
                    error!(vm.id = %row.vm.id, state = %row.vm.state, %why, "VM needs attention: vmpool stops calling ARM for it");
                    summary.needs_attention += 1;
                }
            }
            Action::Deallocate(row, why) => {
                let Ok(next) = domain::begin_deallocate(&row.vm, now) else {
                    return Ok(());
                };
                if self.write(&row, &next, summary, meta).await? {
                    match &why {
                        Why::StoppedOutsideVmpool(read) => {
                            info!(vm.id = %row.vm.id, why = why.as_str(), rests_on = %read, "deallocating");
                        }
                        _ => info!(vm.id = %row.vm.id, why = why.as_str(), "deallocating"),
                    }
                    summary.deallocating += 1;
                    match compute.deallocate(&row.vm.id).await {
                        Ok(()) | Err(ComputeError::NotFound) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Action::Correct(row, to, read) => {
                let next = domain::correct(&row.vm, to, now);
                if self.write(&row, &next, summary, meta).await? {
                    warn!(vm.id = %row.vm.id, from = %row.vm.state, to = %to, rests_on = %read, "row corrected to what a point read shows");
                    summary.corrected += 1;
                }
            }
            Action::Delete(row, read) => {
                let next = domain::begin_delete(&row.vm, now);
                self.delete_in_arm(&row, &next, &read, summary, meta)
                    .await?;
            }
            Action::Retire(row, read) => {
                let Ok(next) = domain::begin_retire(&row.vm, now) else {
                    summary.lost_races += 1;
                    return Ok(());
                };
                self.delete_in_arm(&row, &next, &read, summary, meta)
                    .await?;
            }
            Action::Forget(row, read) => {
                if let Written::Done(_) = pool.store().delete(&row.vm.id, &row.etag).await? {
                    moved(meta, Some(&row.vm), None);
                    info!(vm.id = %row.vm.id, state = %row.vm.state, error = ?row.vm.last_error, rests_on = %read, "deleted VM removed from the table (a GET answered 404)");
                    summary.forgotten += 1;
                } else {
                    summary.lost_races += 1;
                }
            }
            Action::Adopt(id, resource_id, status, tags) => {
                let (seen, error) = match (&status.provisioning, status.power) {
                    // Running with a failed model: a game may be on it.
                    (Provisioning::Failed(e), Power::Running) => {
                        (AdoptedAs::RunningUnhealthy, Some(e.as_str()))
                    }
                    // A deallocated VM whose last start failed (AllocationFailed) shows
                    // provisioning Failed: it is a healthy VM to start later, not a dead one.
                    (_, Power::Deallocated) => (AdoptedAs::Deallocated, None),
                    (Provisioning::Failed(e), _) => {
                        (AdoptedAs::ProvisioningFailed, Some(e.as_str()))
                    }
                    (Provisioning::Succeeded, Power::Running) => (AdoptedAs::Running, None),
                    _ => (AdoptedAs::InFlight, None),
                };
                let mut vm = domain::adopt(id.clone(), resource_id, seen, error, now);
                // Its tags put it back in its pool, with its build (a VM tagged with a
                // build label that is not a valid one counts as unknown, read from ARM).
                vm.pool = tags
                    .pool
                    .filter(|p| crate::config::pools::pool_name(p).is_ok())
                    .unwrap_or_else(|| crate::config::DEFAULT_POOL.to_owned());
                vm.build = tags
                    .build
                    .filter(|b| crate::config::pools::build(b).is_ok());
                if let Written::Done(_) = pool.store().insert(&vm).await? {
                    moved(meta, None, Some(&vm));
                    warn!(vm.id = %id, state = %vm.state, "untracked pool VM adopted; its rooms are unknown until it reports");
                    summary.adopted += 1;
                }
            }
            Action::Unclaim(row) => {
                if let Ok(next) = domain::unclaimed(&row.vm, now)
                    && self.write(&row, &next, summary, meta).await?
                {
                    warn!(
                        vm.id = %row.vm.id,
                        to = %next.state,
                        claim_timeout_secs = policy.claim_timeout.as_secs(),
                        "claim timed out: handed out by CreateVM but no rooms report nor mark came within the claim timeout; it may be handed out again"
                    );
                    summary.unclaimed += 1;
                }
            }
            Action::ReadBuild(row) => {
                if let Some(image) = compute.image(&row.vm.id).await? {
                    let build = policy.pools.build_of(&row.vm.pool, &image);
                    let next = domain::VmRecord {
                        build: Some(build),
                        ..row.vm.clone()
                    };
                    if self.write(&row, &next, summary, meta).await? {
                        info!(vm.id = %row.vm.id, build = ?next.build, image = %image.text(), "build read from the image ARM reports");
                        summary.builds_read += 1;
                    }
                }
            }
            Action::Health(row, unhealthy, read) => {
                let next = domain::health(&row.vm, unhealthy);
                if self.write(&row, &next, summary, meta).await? {
                    match &next.unhealthy {
                        Some(why) => {
                            warn!(vm.id = %row.vm.id, reason = %why, rests_on = %read, "VM unhealthy: kept while a game may be on it, never handed out");
                        }
                        None => info!(vm.id = %row.vm.id, rests_on = %read, "VM healthy again"),
                    }
                }
            }
            Action::FindIp(row) => {
                if let Some(ip) = compute.public_ip(&row.vm.id).await?
                    && self
                        .write(&row, &domain::found_public_ip(&row.vm, ip), summary, meta)
                        .await?
                {
                    summary.ips_found += 1;
                }
            }
        }
        Ok(())
    }
}

/// Keeps the pass's counts in the pool's record up to date with a row it changed (`None`:
/// no row before, or none after): over every pool, and per pool and build.
fn moved(meta: &std::sync::Mutex<PoolMeta>, from: Option<&VmRecord>, to: Option<&VmRecord>) {
    let mut meta = meta.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(counts) = meta.counts.as_mut() {
        if let Some(n) = from.and_then(|vm| counts.get_mut(&vm.state)) {
            *n = n.saturating_sub(1);
        }
        if let Some(to) = to {
            *counts.entry(to.state).or_default() += 1;
        }
    }
    if let Some(groups) = meta.groups.as_mut() {
        if let Some(from) = from
            && let Some(g) = groups
                .iter_mut()
                .find(|g| g.pool == from.pool && g.build == from.build)
            && let Some(n) = g.counts.get_mut(&from.state)
        {
            *n = n.saturating_sub(1);
        }
        if let Some(to) = to {
            match groups
                .iter_mut()
                .find(|g| g.pool == to.pool && g.build == to.build)
            {
                Some(g) => *g.counts.entry(to.state).or_default() += 1,
                None => {
                    let mut counts = crate::store::zero_counts();
                    *counts.entry(to.state).or_default() += 1;
                    groups.push(meta::GroupCount {
                        pool: to.pool.clone(),
                        build: to.build.clone(),
                        counts,
                    });
                }
            }
        }
    }
}

/// The longest `Retry-After` of a 429 the executor waits out inline, and how often.
const INLINE_THROTTLE: (std::time::Duration, u32) = (std::time::Duration::from_secs(5), 2);

/// Runs an ARM call, waiting out a short throttle (429 with a `Retry-After` of at most 5 s)
/// up to twice: ARM did not take the request, so the step is not issued yet.
async fn through_short_throttling<F, Fut>(call: F) -> Result<(), ComputeError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), ComputeError>>,
{
    let (longest, mut left) = INLINE_THROTTLE;
    loop {
        match call().await {
            Err(ComputeError::Throttled { retry_after }) if left > 0 && retry_after <= longest => {
                left -= 1;
                tokio::time::sleep(retry_after).await;
            }
            answer => return answer,
        }
    }
}

/// Matches what ARM listed to the rows by resource ID (compared case-insensitively, as ARM
/// does): the rows' statuses, with the sweep's power states merged in, and on a sweep the
/// pool VMs (by the pool tag of the resource group's listing) that have no row. VMs in
/// flight keep the listing's status without the sweep's power state, whose list may lag:
/// their outcome is confirmed by point reads.
pub fn observe(rows: &[Versioned], listing: Vec<Listed>, swept: Option<&Vec<Listed>>) -> Observed {
    let by_id: HashMap<String, &Versioned> =
        rows.iter().map(|r| (lower(&r.vm.resource_id), r)).collect();
    let in_flight = |r: &Versioned| matches!(r.vm.state, VmState::Creating | VmState::Deallocating);
    let power: HashMap<String, &VmStatus> = swept
        .into_iter()
        .flatten()
        .map(|l| (lower(&l.resource_id), &l.status))
        .collect();
    let merged = |l: &Listed| {
        let mut status = l.status.clone();
        if let Some(swept) = power.get(&lower(&l.resource_id))
            && swept.power != Power::Unknown
        {
            status.power = swept.power;
        }
        status
    };
    let source = if swept.is_some() {
        Source::Sweep
    } else {
        Source::Listing
    };
    let mut observed = Observed::default();
    let mut seen: HashSet<String> = HashSet::new();
    for l in &listing {
        let key = lower(&l.resource_id);
        seen.insert(key.clone());
        match by_id.get(&key) {
            Some(row) if in_flight(row) => {
                observed.listed.insert(
                    row.vm.id.clone(),
                    Observation::new(l.status.clone(), Source::Listing),
                );
            }
            Some(row) => {
                observed
                    .listed
                    .insert(row.vm.id.clone(), Observation::new(merged(l), source));
            }
            None if l.tagged && swept.is_some() => {
                let status = merged(l);
                let known = status.power != Power::Unknown
                    || matches!(status.provisioning, Provisioning::Failed(_));
                if known {
                    // The resource group's listing carries tags (the sweep's may too).
                    observed.tags.insert(l.name.clone(), l.tags());
                    observed
                        .untracked
                        .push((l.name.clone(), l.resource_id.clone(), status));
                }
            }
            None => {}
        }
    }
    // A settled VM the sweep shows and the listing missed is still seen.
    for l in swept.into_iter().flatten() {
        let key = lower(&l.resource_id);
        if !seen.contains(&key)
            && let Some(row) = by_id.get(&key)
            && !in_flight(row)
        {
            observed.listed.insert(
                row.vm.id.clone(),
                Observation::new(l.status.clone(), Source::Sweep),
            );
        }
    }
    observed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_lasts_three_periods_within_bounds() {
        use std::time::Duration as Std;
        assert_eq!(
            lease_ttl_for(Std::from_secs(10)),
            time::Duration::seconds(30)
        );
        assert_eq!(
            lease_ttl_for(Std::from_secs(2)),
            time::Duration::seconds(15)
        );
        assert_eq!(lease_ttl_for(Std::from_secs(600)), DEFAULT_LEASE_TTL);
    }
    use crate::domain::{Purpose, VmId, VmRecord};
    use crate::store::Etag;

    fn row(name: &str) -> Versioned {
        let id = VmId::parse(name).unwrap();
        Versioned {
            vm: VmRecord::new_creating(
                id,
                format!(
                    "/subscriptions/s/resourceGroups/Games/providers/Microsoft.Compute/virtualMachines/{name}"
                ),
                Purpose::Buffer,
                time::macros::datetime!(2026-01-01 00:00 UTC),
            ),
            etag: Etag("e".into()),
        }
    }

    fn standby(name: &str) -> Versioned {
        let mut r = row(name);
        r.vm.state = VmState::Standby;
        r.vm.operation = None;
        r
    }

    fn listed(name: &str, rg: &str, power: Power, tagged: bool) -> Listed {
        Listed {
            name: VmId::parse(name).unwrap(),
            resource_id: format!(
                "/subscriptions/s/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
            ),
            status: VmStatus {
                provisioning: Provisioning::Succeeded,
                power,
            },
            tagged,
            pool: None,
            build: None,
        }
    }

    #[test]
    fn listings_match_rows_by_resource_id_ignoring_case_and_adopt_only_on_a_sweep() {
        let rows = [standby("a"), standby("b"), row("c")];
        let listing = vec![
            listed("c", "games", Power::Unknown, false),
            listed("a", "GAMES", Power::Unknown, false),
            listed("ghost", "games", Power::Unknown, true),
            listed("stray", "games", Power::Unknown, false),
        ];
        let plain = observe(&rows, listing.clone(), None);
        assert_eq!(plain.listed.len(), 2);
        assert_eq!(plain.listed[&rows[0].vm.id].status.power, Power::Unknown);
        assert_eq!(plain.listed[&rows[0].vm.id].source, Source::Listing);
        assert!(plain.untracked.is_empty(), "no adoption between sweeps");

        let swept = vec![
            listed("c", "games", Power::Running, false),
            listed("a", "games", Power::Running, false),
            listed("b", "games", Power::Deallocated, false),
            listed("ghost", "Games", Power::Running, false),
        ];
        let full = observe(&rows, listing, Some(&swept));
        assert_eq!(full.listed[&rows[0].vm.id].status.power, Power::Running);
        assert_eq!(full.listed[&rows[0].vm.id].source, Source::Sweep);
        assert_eq!(
            full.listed[&rows[1].vm.id].status.power,
            Power::Deallocated,
            "seen by the sweep though the listing missed it"
        );
        assert_eq!(
            full.listed[&rows[2].vm.id].status.power,
            Power::Unknown,
            "a VM in flight is confirmed by a point read, not by the sweep"
        );
        let adopt: Vec<&str> = full.untracked.iter().map(|u| u.0.as_str()).collect();
        assert_eq!(
            adopt,
            ["ghost"],
            "tagged only; the untagged stray is not the pool's"
        );
    }
}
