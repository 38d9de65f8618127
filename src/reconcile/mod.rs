//! The reconciler: [`plan`] decides purely what to do from the rows, what ARM reports, the
//! pool's record and the time; [`Reconciler::run_once`] gathers those inputs, applies the
//! actions idempotently with conditional writes (intent first, then ARM), and records the
//! pass. The Functions timer and the standalone loop both call [`Reconciler::run_once`].

mod plan;

pub use plan::{Action, GRACE, Observed, Plan, demand_target, plan};

use std::sync::Arc;

use serde::Serialize;
use tracing::{info, warn};

use crate::compute::{ComputeError, Power, Provisioning, VmStatus};
use crate::domain::{self, Operation, Purpose, VmId, VmRecord, VmState};
use crate::pool::{Pool, PoolError};
use crate::store::{PoolMeta, Rows, StoreError, Versioned, Written};

/// What one pass did, for the timer's `ReturnValue` and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
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
    /// Untracked pool VMs given a row.
    pub adopted: u32,
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
        self.adopted += other.adopted;
        self.lost_races += other.lost_races;
        self.errors += other.errors;
    }

    /// One line for the log and the timer's `Logs`.
    pub fn line(&self) -> String {
        format!(
            "reconciled: {} completed, {} deallocated, {} failed, {} re-issued, {} started, {} created, {} deallocating, {} corrected, {} deleted, {} forgotten, {} adopted, buffer target {}, {} lost races, {} errors",
            self.completed,
            self.deallocated,
            self.failed,
            self.reissued,
            self.started,
            self.created,
            self.deallocating,
            self.corrected,
            self.deleted,
            self.forgotten,
            self.adopted,
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

/// Runs reconcile passes against a pool.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pool: Arc<Pool>,
}

impl Reconciler {
    /// A reconciler for `pool`.
    pub fn new(pool: Arc<Pool>) -> Self {
        Reconciler { pool }
    }

    /// One pass: observe (one table query, one ARM listing), plan, act, record.
    pub async fn run_once(&self) -> Result<Summary, ReconcileError> {
        let pool = &self.pool;
        let (rows, arm, meta) = tokio::try_join!(
            async {
                pool.store()
                    .list(Rows::All)
                    .await
                    .map_err(ReconcileError::from)
            },
            async { pool.compute().list().await.map_err(ReconcileError::from) },
            async { pool.store().load_meta().await.map_err(ReconcileError::from) },
        )?;
        if let Err(e) = pool.store().repair_index(&rows).await {
            warn!(error = %e, "the state index could not be repaired; the next pass retries");
        }
        let observed = Observed {
            arm: arm.into_iter().collect(),
        };
        let Plan { actions, mut meta } = plan(
            &rows,
            &observed,
            pool.clock().now(),
            pool.policy(),
            &meta.unwrap_or_default(),
        );
        let mut summary = Summary {
            buffer_target: meta.buffer_target,
            ..Summary::default()
        };
        // Actions touch different rows: run them a bounded number at a time, each with its
        // own summary and record, then add them up.
        let base = meta.clone();
        let outcomes = crate::store::run_bounded(
            actions.into_iter().map(|action| {
                let (mut part, mut m) = (Summary::default(), base.clone());
                async move {
                    let result = self.apply(action, &mut part, &mut m).await;
                    (
                        result,
                        part,
                        m.consecutive_create_failures - base.consecutive_create_failures,
                    )
                }
            }),
            crate::store::WRITE_CONCURRENCY,
        )
        .await;
        for (result, part, failures) in outcomes {
            summary.absorb(&part);
            meta.consecutive_create_failures += failures;
            if let Err(e) = result {
                summary.errors += 1;
                warn!(error = %e, "reconcile action failed; the next pass retries it");
            }
        }
        meta.last_reconcile_at = Some(pool.clock().now());
        meta.last_reconcile_summary = summary.line();
        pool.store().save_meta(&meta).await?;
        if summary.changed_anything() {
            info!(summary = %summary.line(), "reconcile pass");
        } else {
            tracing::debug!(summary = %summary.line(), "reconcile pass");
        }
        Ok(summary)
    }

    async fn write(
        &self,
        row: &Versioned,
        next: &VmRecord,
        summary: &mut Summary,
    ) -> Result<bool, ReconcileError> {
        match self.pool.store().update(next, &row.etag).await? {
            Written::Done(_) => Ok(true),
            Written::LostRace => {
                summary.lost_races += 1;
                Ok(false)
            }
        }
    }

    async fn apply(
        &self,
        action: Action,
        summary: &mut Summary,
        meta: &mut PoolMeta,
    ) -> Result<(), ReconcileError> {
        let pool = &self.pool;
        let compute = pool.compute();
        let now = pool.clock().now();
        match action {
            Action::Complete(row) => {
                let ip = compute.public_ip(&row.vm.id).await?;
                if let Ok(next) = domain::complete_creating(&row.vm, ip, now)
                    && self.write(&row, &next, summary).await?
                {
                    info!(vm.id = %row.vm.id, state = %next.state, "VM is ready");
                    summary.completed += 1;
                }
            }
            Action::FinishDeallocate(row) => {
                if let Ok(next) = domain::complete_deallocating(&row.vm, now)
                    && self.write(&row, &next, summary).await?
                {
                    info!(vm.id = %row.vm.id, "VM is deallocated");
                    summary.deallocated += 1;
                }
            }
            Action::Fail(row, error) => {
                let next = domain::fail(&row.vm, &error, now);
                if self.write(&row, &next, summary).await? {
                    warn!(vm.id = %row.vm.id, %error, "VM failed");
                    summary.failed += 1;
                }
            }
            Action::Reissue(row) => {
                let next = domain::reissue(&row.vm, now);
                if self.write(&row, &next, summary).await? {
                    let id = &row.vm.id;
                    match (row.vm.state, row.vm.operation) {
                        (VmState::Creating, Some(Operation::Create)) => compute.create(id).await?,
                        (VmState::Creating, _) => compute.start(id).await?,
                        (VmState::Deallocating, _) => compute.deallocate(id).await?,
                        _ => {}
                    }
                    info!(vm.id = %id, attempt = next.attempts, "ARM operation issued again");
                    summary.reissued += 1;
                }
            }
            Action::StartForBuffer(row) => {
                pool.add_to_buffer(Some(&row)).await?;
                summary.started += 1;
            }
            Action::CreateForBuffer => match pool.add_to_buffer(None).await {
                Ok(_) => summary.created += 1,
                Err(PoolError::Compute(e)) if !e.is_transient() => {
                    meta.consecutive_create_failures += 1;
                    return Err(PoolError::Compute(e).into());
                }
                Err(e) => return Err(e.into()),
            },
            Action::Deallocate(row, why) => {
                let next = domain::begin_deallocate(&row.vm, now)
                    .map_err(|e| ReconcileError::Pool(e.into()))?;
                if self.write(&row, &next, summary).await? {
                    info!(vm.id = %row.vm.id, why, "deallocating");
                    summary.deallocating += 1;
                    match compute.deallocate(&row.vm.id).await {
                        Ok(()) | Err(ComputeError::NotFound) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Action::Correct(row, to) => {
                let mut next = row.vm.clone();
                next.state = to;
                next.operation = None;
                next.state_changed_at = now;
                next.rooms = 0;
                if to == VmState::Standby {
                    next.purpose = Purpose::Buffer;
                }
                next.last_error = Some(format!(
                    "ARM showed the VM {to} while the row said {}",
                    row.vm.state
                ));
                if self.write(&row, &next, summary).await? {
                    warn!(vm.id = %row.vm.id, from = %row.vm.state, to = %to, "row corrected to what ARM shows");
                    summary.corrected += 1;
                }
            }
            Action::Delete(row) => {
                let mut next = domain::reissue(&row.vm, now);
                if row.vm.operation != Some(Operation::Delete) {
                    next.operation = Some(Operation::Delete);
                    next.attempts = 1;
                }
                if self.write(&row, &next, summary).await? {
                    match compute.delete(&row.vm.id).await {
                        Ok(()) | Err(ComputeError::NotFound) => {}
                        Err(e) => return Err(e.into()),
                    }
                    info!(vm.id = %row.vm.id, "failed VM deleted");
                    summary.deleted += 1;
                }
            }
            Action::Forget(row) => {
                if let Written::Done(_) = pool.store().delete(&row.vm.id, &row.etag).await? {
                    info!(vm.id = %row.vm.id, error = ?row.vm.last_error, "failed VM removed from the table");
                    summary.forgotten += 1;
                } else {
                    summary.lost_races += 1;
                }
            }
            Action::Adopt(id, status) => {
                let vm = adopted(&id, &status, compute.resource_id(&id), now);
                if let Written::Done(_) = pool.store().insert(&vm).await? {
                    warn!(vm.id = %id, state = %vm.state, "untracked pool VM adopted");
                    summary.adopted += 1;
                }
            }
        }
        Ok(())
    }
}

/// The row for a pool VM that ARM has and the table does not. A running one joins the
/// buffer (never the matchmaker's list: nobody knows what it hosts until it is claimed).
fn adopted(
    id: &VmId,
    status: &VmStatus,
    resource_id: String,
    now: time::OffsetDateTime,
) -> VmRecord {
    let mut vm = VmRecord::new_creating(id.clone(), resource_id, Purpose::Buffer, now);
    match (&status.provisioning, status.power) {
        (Provisioning::Failed(error), _) => {
            vm = domain::fail(&vm, &format!("adopted: provisioning failed: {error}"), now);
        }
        (_, Power::Deallocated) => {
            vm.state = VmState::Deallocated;
            vm.operation = None;
        }
        (Provisioning::Succeeded, Power::Running) => {
            vm.state = VmState::Standby;
            vm.operation = None;
        }
        (Provisioning::Succeeded, _) => vm.operation = Some(Operation::Start),
        _ => {}
    }
    vm
}
