//! The reconciler: [`plan`] decides purely what to do from the rows, what ARM reports and the
//! time; [`Reconciler::run_once`] gathers those inputs, applies the actions idempotently
//! with conditional writes, and records the pass. The Functions timer and the standalone loop
//! both call [`Reconciler::run_once`].

mod plan;

pub use plan::{Action, Observed, plan};

use std::sync::Arc;

use serde::Serialize;
use tracing::{info, warn};

use crate::compute::ComputeError;
use crate::domain::{self, Operation, VmState};
use crate::pool::Pool;
use crate::store::{Rows, StoreError, Versioned, Written};

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
    /// Actions skipped because another writer changed the row first.
    pub lost_races: u32,
    /// Actions that failed (ARM or storage errors); they are retried next pass.
    pub errors: u32,
}

impl Summary {
    /// One line for the log and the timer's `Logs`.
    pub fn line(&self) -> String {
        format!(
            "reconciled: {} completed, {} deallocated, {} failed, {} re-issued, {} lost races, {} errors",
            self.completed,
            self.deallocated,
            self.failed,
            self.reissued,
            self.lost_races,
            self.errors
        )
    }
}

/// Why a pass could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The table could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// ARM could not be listed.
    #[error(transparent)]
    Compute(#[from] ComputeError),
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

    /// One pass: observe, plan, act, record.
    pub async fn run_once(&self) -> Result<Summary, ReconcileError> {
        let pool = &self.pool;
        let rows = pool.store().list(Rows::All).await?;
        let arm = pool.compute().list().await?;
        let now = pool.clock().now();
        let observed = Observed {
            arm: arm.into_iter().collect(),
        };
        let actions = plan(&rows, &observed, now, pool.policy());
        let mut summary = Summary::default();
        for action in actions {
            if let Err(e) = self.apply(action, &mut summary).await {
                summary.errors += 1;
                warn!(error = %e, "reconcile action failed; retried next pass");
            }
        }
        let mut meta = pool.store().load_meta().await?.unwrap_or_default();
        meta.last_reconcile_at = Some(pool.clock().now());
        meta.last_reconcile_summary = summary.line();
        pool.store().save_meta(&meta).await?;
        info!(
            completed = summary.completed,
            deallocated = summary.deallocated,
            failed = summary.failed,
            reissued = summary.reissued,
            errors = summary.errors,
            "reconcile pass"
        );
        Ok(summary)
    }

    async fn write(
        &self,
        row: &Versioned,
        next: &domain::VmRecord,
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

    async fn apply(&self, action: Action, summary: &mut Summary) -> Result<(), ReconcileError> {
        let pool = &self.pool;
        let now = pool.clock().now();
        match action {
            Action::Complete(row) => {
                let ip = pool.compute().public_ip(&row.vm.id).await?;
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
                    let answer = match (row.vm.state, row.vm.operation) {
                        (VmState::Creating, Some(Operation::Create)) => {
                            pool.compute().create(id).await
                        }
                        (VmState::Creating, _) => pool.compute().start(id).await,
                        (VmState::Deallocating, _) => pool.compute().deallocate(id).await,
                        _ => Ok(()),
                    };
                    answer?;
                    info!(vm.id = %id, attempt = next.attempts, "ARM operation issued again");
                    summary.reissued += 1;
                }
            }
        }
        Ok(())
    }
}
