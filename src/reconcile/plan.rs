//! The reconcile decision as a pure function of the rows, what ARM reports and the time.

use std::collections::HashMap;

use time::{Duration, OffsetDateTime};

use crate::compute::{Power, Provisioning, VmStatus};
use crate::config::PoolPolicy;
use crate::domain::{VmId, VmState};
use crate::store::Versioned;

/// How long after issuing an operation ARM may still not show it (its answer and its
/// listings lag): only after this is a missing or unchanged VM re-issued.
pub const GRACE: Duration = Duration::seconds(60);

/// What ARM reported at the start of a pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Every pool VM ARM knows, by name.
    pub arm: HashMap<VmId, VmStatus>,
}

/// One step the executor takes. Each carries the row as the plan saw it, so the executor's
/// write is conditional on that version and a step decided on stale data changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `Creating` -> `Running`/`Standby`: ARM reports it provisioned and running.
    Complete(Versioned),
    /// `Deallocating` -> `Deallocated`: ARM reports it deallocated.
    FinishDeallocate(Versioned),
    /// -> `Failed`, with the error.
    Fail(Versioned, String),
    /// Issue the row's ARM operation again (it was lost, or the process died before it).
    Reissue(Versioned),
}

fn age(row: &Versioned, now: OffsetDateTime) -> Duration {
    now - row.vm.state_changed_at
}

fn std_to_time(d: std::time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::MAX)
}

/// Decides what to do.
pub fn plan(
    rows: &[Versioned],
    observed: &Observed,
    now: OffsetDateTime,
    policy: &PoolPolicy,
) -> Vec<Action> {
    let create_timeout = std_to_time(policy.create_timeout);
    let deallocate_timeout = std_to_time(policy.deallocate_timeout);
    let mut actions = Vec::new();
    for row in rows {
        let arm = observed.arm.get(&row.vm.id);
        match row.vm.state {
            VmState::Creating => match arm {
                Some(s) if s.is_up() => actions.push(Action::Complete(row.clone())),
                Some(VmStatus {
                    provisioning: Provisioning::Failed(error),
                    ..
                }) => actions.push(Action::Fail(
                    row.clone(),
                    format!("provisioning failed: {error}"),
                )),
                _ if age(row, now) >= create_timeout => actions.push(Action::Fail(
                    row.clone(),
                    format!(
                        "not running {}s after the {} was issued",
                        create_timeout.whole_seconds(),
                        row.vm.operation.map_or("operation", |o| o.as_str())
                    ),
                )),
                // ARM does not know it, or it sits deallocated: the create or start never
                // reached ARM (a crash or a fault between the row write and the call).
                None => {
                    if age(row, now) >= GRACE {
                        actions.push(Action::Reissue(row.clone()));
                    }
                }
                Some(s) if s.power == Power::Deallocated && age(row, now) >= GRACE => {
                    actions.push(Action::Reissue(row.clone()))
                }
                Some(_) => {}
            },
            VmState::Deallocating => match arm {
                // Gone from ARM counts as deallocated: nothing is billed.
                None => actions.push(Action::FinishDeallocate(row.clone())),
                Some(s) if s.is_deallocated() => {
                    actions.push(Action::FinishDeallocate(row.clone()))
                }
                Some(s)
                    if matches!(s.power, Power::Running | Power::Stopped | Power::Starting)
                        && age(row, now) >= GRACE =>
                {
                    actions.push(Action::Reissue(row.clone()))
                }
                Some(_) if age(row, now) >= deallocate_timeout => {
                    actions.push(Action::Reissue(row.clone()))
                }
                Some(_) => {}
            },
            _ => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Operation, Purpose, VmRecord};
    use crate::store::Etag;

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00 UTC)
    }

    fn row(name: &str, state: VmState, op: Option<Operation>) -> Versioned {
        let mut vm = VmRecord::new_creating(
            VmId::parse(name).unwrap(),
            format!("/x/{name}"),
            Purpose::Matchmaker,
            t0(),
        );
        vm.state = state;
        vm.operation = op;
        Versioned {
            vm,
            etag: Etag("e".into()),
        }
    }

    fn status(provisioning: Provisioning, power: Power) -> VmStatus {
        VmStatus {
            provisioning,
            power,
        }
    }

    fn kind(a: &Action) -> &'static str {
        match a {
            Action::Complete(_) => "complete",
            Action::FinishDeallocate(_) => "finishDeallocate",
            Action::Fail(..) => "fail",
            Action::Reissue(_) => "reissue",
        }
    }

    #[test]
    fn completion_and_recovery_rules() {
        use Power::*;
        use Provisioning as P;
        let creating = (VmState::Creating, Some(Operation::Create));
        let deallocating = (VmState::Deallocating, Some(Operation::Deallocate));
        type Case = (
            (VmState, Option<Operation>),
            Option<VmStatus>,
            i64,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (creating, Some(status(P::Creating, Starting)), 30, None),
            (
                creating,
                Some(status(P::Succeeded, Running)),
                30,
                Some("complete"),
            ),
            (
                creating,
                Some(status(P::Failed("Alloc".into()), Unknown)),
                30,
                Some("fail"),
            ),
            (creating, None, 30, None),
            (creating, None, 61, Some("reissue")),
            (
                creating,
                Some(status(P::Creating, Starting)),
                901,
                Some("fail"),
            ),
            (
                (VmState::Creating, Some(Operation::Start)),
                Some(status(P::Succeeded, Deallocated)),
                61,
                Some("reissue"),
            ),
            (
                (VmState::Creating, Some(Operation::Start)),
                Some(status(P::Succeeded, Deallocated)),
                10,
                None,
            ),
            (
                deallocating,
                Some(status(P::Succeeded, Deallocating)),
                30,
                None,
            ),
            (
                deallocating,
                Some(status(P::Succeeded, Deallocated)),
                30,
                Some("finishDeallocate"),
            ),
            (deallocating, None, 30, Some("finishDeallocate")),
            (deallocating, Some(status(P::Succeeded, Running)), 30, None),
            (
                deallocating,
                Some(status(P::Succeeded, Running)),
                61,
                Some("reissue"),
            ),
            (
                deallocating,
                Some(status(P::Succeeded, Deallocating)),
                601,
                Some("reissue"),
            ),
            (
                (VmState::Running, None),
                Some(status(P::Succeeded, Running)),
                9999,
                None,
            ),
        ];
        for (i, ((state, op), arm, secs, want)) in cases.into_iter().enumerate() {
            let r = row("vm-a", state, op);
            let mut observed = Observed::default();
            if let Some(s) = arm {
                observed.arm.insert(r.vm.id.clone(), s);
            }
            let actions = plan(
                &[r],
                &observed,
                t0() + Duration::seconds(secs),
                &PoolPolicy::default(),
            );
            let got: Vec<&str> = actions.iter().map(kind).collect();
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "case {i}");
        }
    }
}
