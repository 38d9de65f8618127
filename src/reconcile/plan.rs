//! The reconcile decision as a pure function of the rows, what ARM reports, the pool's own
//! record and the time. No I/O: every rule here is tested on virtual time.

use std::collections::{HashMap, HashSet};

use time::{Duration, OffsetDateTime};

use crate::compute::{Power, Provisioning, VmStatus};
use crate::config::PoolPolicy;
use crate::domain::{Operation, Purpose, VmId, VmState};
use crate::store::{PoolMeta, Versioned};

/// How long after issuing an operation ARM may still not show it (its answers and listings
/// lag): only after this is a missing or unchanged VM re-issued or corrected.
pub const GRACE: Duration = Duration::seconds(60);

/// Most ARM writes other than creates and starts (deallocates, deletes, re-issues) per pass,
/// to stay well inside ARM's write budget (200 burst, 10/s per subscription).
pub const MAX_OTHER_WRITES_PER_PASS: usize = 50;

/// A deallocate issued this many times without effect fails the VM.
pub const MAX_DEALLOCATE_ATTEMPTS: u32 = 3;

/// What ARM reported at the start of a pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Every VM of the pool that ARM knows, by name.
    pub arm: HashMap<VmId, VmStatus>,
}

/// One step the executor takes. Steps on an existing row carry the row as the plan saw it,
/// so the executor's write is conditional on that version and a step decided on stale data
/// changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `Creating` -> `Running`/`Standby`: ARM reports it provisioned and running.
    Complete(Versioned),
    /// `Deallocating` -> `Deallocated`: ARM reports it deallocated (or gone).
    FinishDeallocate(Versioned),
    /// -> `Failed`, with the error.
    Fail(Versioned, String),
    /// Issue the row's ARM operation again (it was lost, or the process died before it).
    Reissue(Versioned),
    /// `Deallocated` -> `Creating` for the buffer, then ARM start.
    StartForBuffer(Versioned),
    /// A new row `Creating` for the buffer, then ARM create.
    CreateForBuffer,
    /// `Standby` or drained `MarkedForDeallocation` -> `Deallocating`, then ARM deallocate.
    Deallocate(Versioned, &'static str),
    /// A row ARM contradicts is set to the state ARM shows (drift repair).
    Correct(Versioned, VmState),
    /// A `Failed` VM is deleted in ARM (with its NIC, disk and IP).
    Delete(Versioned),
    /// A `Failed` VM that ARM no longer has: the row is removed.
    Forget(Versioned),
    /// A pool VM in ARM with no row: a row is written for it.
    Adopt(VmId, VmStatus),
}

/// The actions of one pass and the pool record to save after them.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// The pool's record after this pass (buffer target, breaker).
    pub meta: PoolMeta,
}

fn to_time(d: std::time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::MAX)
}

fn age(row: &Versioned, now: OffsetDateTime) -> Duration {
    now - row.vm.state_changed_at
}

/// The buffer target from demand: claims over the demand window, scaled to the time a VM
/// takes to become ready (Little's law: VMs in flight = arrival rate x time in flight),
/// rounded down, so demand that expects less than one claim per ready time costs nothing.
pub fn demand_target(rows: &[Versioned], now: OffsetDateTime, policy: &PoolPolicy) -> u32 {
    let window = to_time(policy.demand_window);
    let claims = rows
        .iter()
        .filter(|r| r.vm.claimed_at.is_some_and(|t| now - t <= window))
        .count() as f64;
    let ready = policy.ready_estimate.as_secs_f64();
    let per_ready_time = claims * ready / window.as_seconds_f64().max(1.0);
    // Saturating float-to-int cast of a small, non-negative number.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "bounded below"
    )]
    let target = per_ready_time.floor().min(f64::from(policy.max_vms)) as u32;
    target
}

/// Decides what to do.
pub fn plan(
    rows: &[Versioned],
    observed: &Observed,
    now: OffsetDateTime,
    policy: &PoolPolicy,
    meta: &PoolMeta,
) -> Plan {
    let mut meta = meta.clone();
    let mut actions = Vec::new();
    let mut create_failures = 0u32;
    let mut create_succeeded = false;
    let mut last_create_error = None;
    // Rows an action already takes care of this pass, and those of them it takes out of
    // the buffer.
    let mut handled: HashSet<&VmId> = HashSet::new();
    let mut leaving: HashSet<&VmId> = HashSet::new();

    for row in rows {
        if let Some(action) = settle(row, observed.arm.get(&row.vm.id), now, policy) {
            if row.vm.operation == Some(Operation::Create) {
                match &action {
                    Action::Complete(_) => create_succeeded = true,
                    Action::Fail(_, error) => {
                        create_failures += 1;
                        last_create_error = Some(error.clone());
                    }
                    _ => {}
                }
            }
            handled.insert(&row.vm.id);
            if matches!(
                action,
                Action::Fail(..)
                    | Action::Deallocate(..)
                    | Action::Correct(_, VmState::Deallocated)
            ) {
                leaving.insert(&row.vm.id);
            }
            actions.push(action);
        }
    }

    // Pool VMs in ARM with no row (a table restored from backup, rows removed by hand).
    let known: HashSet<&VmId> = rows.iter().map(|r| &r.vm.id).collect();
    let mut untracked: Vec<(&VmId, &VmStatus)> = observed
        .arm
        .iter()
        .filter(|(id, s)| !known.contains(id) && s.provisioning != Provisioning::Deleting)
        .collect();
    untracked.sort_by(|a, b| a.0.cmp(b.0));
    for (id, status) in untracked {
        actions.push(Action::Adopt(id.clone(), status.clone()));
    }

    // The circuit breaker over creates.
    if create_succeeded {
        meta.consecutive_create_failures = 0;
        meta.breaker_open_until = None;
        meta.breaker_reason = None;
    }
    meta.consecutive_create_failures += create_failures;
    let breaker_open = meta.breaker_open_until.is_some_and(|until| until > now);
    if !breaker_open && meta.breaker_open_until.is_some() {
        // Cool-down over: half open. One more failure opens it again.
        meta.breaker_open_until = None;
        meta.consecutive_create_failures = policy.breaker_failures.saturating_sub(1);
    }
    if !breaker_open && meta.consecutive_create_failures >= policy.breaker_failures {
        meta.breaker_open_until = Some(now + to_time(policy.breaker_cooldown));
        meta.breaker_reason = Some(format!(
            "{} creates failed in a row; last: {}",
            meta.consecutive_create_failures,
            last_create_error.unwrap_or_else(|| "unknown".into())
        ));
    }
    let breaker_open = meta.breaker_open_until.is_some_and(|until| until > now);

    // The buffer target: the configured floor, raised by demand, lowered after a cool-down.
    let wanted = demand_target(rows, now, policy).max(policy.min_standby);
    let cooled = meta
        .target_raised_at
        .is_none_or(|at| now - at >= to_time(policy.buffer_cooldown));
    if wanted >= meta.buffer_target {
        if wanted > policy.min_standby {
            meta.target_raised_at = Some(now);
        }
        meta.buffer_target = wanted;
    } else if cooled {
        meta.buffer_target = wanted;
    }
    let target = meta.buffer_target.min(policy.max_vms) as usize;

    // Fill the buffer: starts of deallocated VMs first (faster and cheaper), then creates.
    let buffer = rows
        .iter()
        .filter(|r| !leaving.contains(&r.vm.id))
        .filter(|r| {
            r.vm.state == VmState::Standby
                || (r.vm.state == VmState::Creating && r.vm.purpose == Purpose::Buffer)
        })
        .count();
    let active = rows
        .iter()
        .filter(|r| r.vm.state.counts_against_max())
        .count();
    let headroom = (policy.max_vms as usize).saturating_sub(active);
    let missing = target
        .saturating_sub(buffer)
        .min(headroom)
        .min(policy.max_creates_per_pass as usize);
    let mut deallocated: Vec<&Versioned> =
        rows.iter()
            .filter(|r| r.vm.state == VmState::Deallocated && !handled.contains(&r.vm.id))
            .filter(|r| {
                observed.arm.get(&r.vm.id).is_some_and(|s| {
                    s.is_deallocated() && s.provisioning == Provisioning::Succeeded
                })
            })
            .collect();
    // The longest-deallocated first, so every VM gets exercised.
    deallocated.sort_by_key(|r| r.vm.state_changed_at);
    let starts = missing.min(deallocated.len());
    for row in deallocated.into_iter().take(starts) {
        handled.insert(&row.vm.id);
        actions.push(Action::StartForBuffer(row.clone()));
    }
    if !breaker_open {
        actions.extend(std::iter::repeat_n(
            Action::CreateForBuffer,
            missing - starts,
        ));
    }

    // Surplus Standby VMs, once demand has cooled down: the longest-idle first.
    if cooled {
        let mut standby: Vec<&Versioned> = rows
            .iter()
            .filter(|r| r.vm.state == VmState::Standby && !handled.contains(&r.vm.id))
            .collect();
        standby.sort_by_key(|r| r.vm.state_changed_at);
        let surplus = buffer.saturating_sub(target).min(standby.len());
        for row in standby.into_iter().take(surplus) {
            handled.insert(&row.vm.id);
            actions.push(Action::Deallocate(row.clone(), "surplus standby"));
        }
    }

    // Drained VMs that stopped reporting: deallocate as a safety net.
    let drain_timeout = to_time(policy.drain_timeout);
    for row in rows {
        let vm = &row.vm;
        if vm.state == VmState::MarkedForDeallocation && vm.rooms == 0 && !handled.contains(&vm.id)
        {
            let heard = vm
                .last_report_at
                .map_or(vm.state_changed_at, |t| t.max(vm.state_changed_at));
            if now - heard >= drain_timeout {
                actions.push(Action::Deallocate(row.clone(), "drain timeout"));
            }
        }
    }

    // Cap the ARM writes of one pass (creates and starts are capped above).
    let mut others = 0usize;
    actions.retain(|a| match a {
        Action::Reissue(_) | Action::Deallocate(..) | Action::Delete(_) => {
            others += 1;
            others <= MAX_OTHER_WRITES_PER_PASS
        }
        _ => true,
    });
    Plan { actions, meta }
}

/// What one row needs, given what ARM says of it: completion, failure, re-issue, drift repair.
fn settle(
    row: &Versioned,
    arm: Option<&VmStatus>,
    now: OffsetDateTime,
    policy: &PoolPolicy,
) -> Option<Action> {
    let vm = &row.vm;
    let settled = age(row, now) >= GRACE;
    match vm.state {
        VmState::Creating => match arm {
            Some(s) if s.is_up() => Some(Action::Complete(row.clone())),
            Some(VmStatus {
                provisioning: Provisioning::Failed(error),
                ..
            }) => Some(Action::Fail(
                row.clone(),
                format!("provisioning failed: {error}"),
            )),
            _ if age(row, now) >= to_time(policy.create_timeout) => Some(Action::Fail(
                row.clone(),
                format!(
                    "not running {}s after the {} was issued",
                    policy.create_timeout.as_secs(),
                    vm.operation
                        .map_or("operation", |o| o.as_str())
                        .to_lowercase()
                ),
            )),
            // The create never reached ARM (a crash or a fault between row and call).
            None if vm.operation == Some(Operation::Create) && settled => {
                Some(Action::Reissue(row.clone()))
            }
            None if settled => Some(Action::Fail(
                row.clone(),
                "the VM was deleted outside vmpool".into(),
            )),
            // The start never reached ARM.
            Some(s) if s.power == Power::Deallocated && settled => {
                Some(Action::Reissue(row.clone()))
            }
            _ => None,
        },
        VmState::Deallocating => match arm {
            // Gone from ARM counts as deallocated: nothing is billed.
            None => Some(Action::FinishDeallocate(row.clone())),
            Some(s) if s.is_deallocated() => Some(Action::FinishDeallocate(row.clone())),
            Some(_)
                if vm.attempts >= MAX_DEALLOCATE_ATTEMPTS
                    && age(row, now) >= to_time(policy.deallocate_timeout) =>
            {
                Some(Action::Fail(
                    row.clone(),
                    format!("still not deallocated after {} attempts", vm.attempts),
                ))
            }
            Some(s)
                if matches!(s.power, Power::Running | Power::Stopped | Power::Starting)
                    && settled =>
            {
                Some(Action::Reissue(row.clone()))
            }
            Some(_) if age(row, now) >= to_time(policy.deallocate_timeout) => {
                Some(Action::Reissue(row.clone()))
            }
            _ => None,
        },
        VmState::Running | VmState::Standby | VmState::MarkedForDeallocation => match arm {
            None if settled => Some(Action::Fail(
                row.clone(),
                "the VM was deleted outside vmpool".into(),
            )),
            Some(s) if s.is_deallocated() && settled => {
                Some(Action::Correct(row.clone(), VmState::Deallocated))
            }
            // Stopped but still allocated (billed) with nobody on it.
            Some(s) if s.power == Power::Stopped && vm.state == VmState::Standby && settled => {
                Some(Action::Deallocate(row.clone(), "stopped outside vmpool"))
            }
            _ => None,
        },
        VmState::Deallocated => match arm {
            None if settled => Some(Action::Fail(
                row.clone(),
                "the VM was deleted outside vmpool".into(),
            )),
            // Started outside vmpool: it is billed, so put it in the buffer.
            Some(s) if s.is_up() && settled => Some(Action::Correct(row.clone(), VmState::Standby)),
            _ => None,
        },
        VmState::Failed => match (arm, vm.operation) {
            (None, _) => Some(Action::Forget(row.clone())),
            (Some(s), _) if s.provisioning == Provisioning::Deleting => None,
            (Some(_), Some(Operation::Delete))
                if age(row, now) < to_time(policy.deallocate_timeout) =>
            {
                None
            }
            (Some(_), _) => Some(Action::Delete(row.clone())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::VmRecord;
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
        vm.claimed_at = None;
        Versioned {
            vm,
            etag: Etag("e".into()),
        }
    }

    fn buffer_row(name: &str, state: VmState) -> Versioned {
        let mut r = row(name, state, None);
        r.vm.purpose = Purpose::Buffer;
        if state == VmState::Creating {
            r.vm.operation = Some(Operation::Create);
        }
        r
    }

    fn status(provisioning: Provisioning, power: Power) -> VmStatus {
        VmStatus {
            provisioning,
            power,
        }
    }

    fn up() -> VmStatus {
        status(Provisioning::Succeeded, Power::Running)
    }

    fn off() -> VmStatus {
        status(Provisioning::Succeeded, Power::Deallocated)
    }

    fn kind(a: &Action) -> String {
        match a {
            Action::Complete(r) => format!("complete {}", r.vm.id),
            Action::FinishDeallocate(r) => format!("finishDeallocate {}", r.vm.id),
            Action::Fail(r, _) => format!("fail {}", r.vm.id),
            Action::Reissue(r) => format!("reissue {}", r.vm.id),
            Action::StartForBuffer(r) => format!("start {}", r.vm.id),
            Action::CreateForBuffer => "create".into(),
            Action::Deallocate(r, why) => format!("deallocate {} ({why})", r.vm.id),
            Action::Correct(r, to) => format!("correct {} to {to}", r.vm.id),
            Action::Delete(r) => format!("delete {}", r.vm.id),
            Action::Forget(r) => format!("forget {}", r.vm.id),
            Action::Adopt(id, _) => format!("adopt {id}"),
        }
    }

    fn run(
        rows: &[Versioned],
        arm: &[(&Versioned, VmStatus)],
        secs: i64,
        policy: &PoolPolicy,
    ) -> Vec<String> {
        run_meta(rows, arm, secs, policy, &PoolMeta::default()).0
    }

    fn run_meta(
        rows: &[Versioned],
        arm: &[(&Versioned, VmStatus)],
        secs: i64,
        policy: &PoolPolicy,
        meta: &PoolMeta,
    ) -> (Vec<String>, PoolMeta) {
        let observed = Observed {
            arm: arm
                .iter()
                .map(|(r, s)| (r.vm.id.clone(), s.clone()))
                .collect(),
        };
        let p = plan(
            rows,
            &observed,
            t0() + Duration::seconds(secs),
            policy,
            meta,
        );
        (p.actions.iter().map(kind).collect(), p.meta)
    }

    #[test]
    fn completion_failure_and_crash_recovery_of_in_flight_rows() {
        use Power::*;
        use Provisioning as P;
        let policy = PoolPolicy::default();
        let creating = (VmState::Creating, Some(Operation::Create));
        let starting = (VmState::Creating, Some(Operation::Start));
        let deallocating = (VmState::Deallocating, Some(Operation::Deallocate));
        type Case = (
            (VmState, Option<Operation>),
            Option<VmStatus>,
            i64,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (creating, Some(status(P::Creating, Starting)), 30, ""),
            (creating, Some(up()), 30, "complete a"),
            (
                creating,
                Some(status(P::Failed("AllocationFailed".into()), Unknown)),
                30,
                "fail a",
            ),
            // The process died between the row write and the ARM call.
            (creating, None, 30, ""),
            (creating, None, 61, "reissue a"),
            (creating, Some(status(P::Creating, Starting)), 901, "fail a"),
            (starting, Some(off()), 10, ""),
            (starting, Some(off()), 61, "reissue a"),
            (starting, None, 61, "fail a"),
            (starting, Some(up()), 61, "complete a"),
            (
                deallocating,
                Some(status(P::Succeeded, Deallocating)),
                30,
                "",
            ),
            (deallocating, Some(off()), 30, "finishDeallocate a"),
            (deallocating, None, 30, "finishDeallocate a"),
            (deallocating, Some(up()), 30, ""),
            (deallocating, Some(up()), 61, "reissue a"),
            (
                deallocating,
                Some(status(P::Succeeded, Deallocating)),
                601,
                "reissue a",
            ),
        ];
        for (i, ((state, op), arm, secs, want)) in cases.into_iter().enumerate() {
            let r = row("a", state, op);
            let arm: Vec<_> = arm.into_iter().map(|s| (&r, s)).collect();
            let got = run(std::slice::from_ref(&r), &arm, secs, &policy);
            let want: Vec<String> = (!want.is_empty())
                .then(|| want.to_owned())
                .into_iter()
                .collect();
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn a_deallocate_that_never_takes_fails_after_its_attempts() {
        let mut r = row("a", VmState::Deallocating, Some(Operation::Deallocate));
        r.vm.attempts = MAX_DEALLOCATE_ATTEMPTS;
        assert_eq!(
            run(
                std::slice::from_ref(&r),
                &[(&r, up())],
                601,
                &PoolPolicy::default()
            ),
            ["fail a"]
        );
    }

    #[test]
    fn drift_is_repaired() {
        let p = PoolPolicy::default();
        let running = row("r", VmState::Running, None);
        let standby = buffer_row("s", VmState::Standby);
        let dealloc = row("d", VmState::Deallocated, None);
        // Deallocated in the portal: the row follows ARM.
        assert_eq!(
            run(std::slice::from_ref(&running), &[(&running, off())], 61, &p),
            ["correct r to Deallocated"]
        );
        // Deleted in the portal: recorded as failed (then cleaned up).
        assert_eq!(run(std::slice::from_ref(&running), &[], 61, &p), ["fail r"]);
        assert_eq!(run(std::slice::from_ref(&dealloc), &[], 61, &p), ["fail d"]);
        // Stopped but still billed, with nobody on it.
        assert_eq!(
            run(
                std::slice::from_ref(&standby),
                &[(&standby, status(Provisioning::Succeeded, Power::Stopped))],
                61,
                &p
            ),
            ["deallocate s (stopped outside vmpool)"]
        );
        // Started in the portal: billed, so it joins the buffer.
        assert_eq!(
            run(std::slice::from_ref(&dealloc), &[(&dealloc, up())], 61, &p),
            ["correct d to Standby"]
        );
        // Within the grace period nothing is trusted yet.
        assert!(run(std::slice::from_ref(&running), &[], 30, &p).is_empty());
        // A pool VM with no row is adopted.
        let ghost = row("ghost", VmState::Running, None);
        assert_eq!(run(&[], &[(&ghost, up())], 0, &p), ["adopt ghost"]);
    }

    #[test]
    fn failed_vms_are_deleted_then_forgotten() {
        let p = PoolPolicy::default();
        let failed = row("f", VmState::Failed, None);
        assert_eq!(
            run(std::slice::from_ref(&failed), &[(&failed, up())], 0, &p),
            ["delete f"]
        );
        let mut deleting = failed.clone();
        deleting.vm.operation = Some(Operation::Delete);
        assert!(
            run(
                std::slice::from_ref(&deleting),
                &[(&deleting, up())],
                30,
                &p
            )
            .is_empty()
        );
        assert_eq!(
            run(
                std::slice::from_ref(&deleting),
                &[(&deleting, up())],
                601,
                &p
            ),
            ["delete f"]
        );
        assert_eq!(
            run(std::slice::from_ref(&deleting), &[], 30, &p),
            ["forget f"]
        );
    }

    #[test]
    fn the_buffer_is_filled_by_starts_before_creates_within_the_caps() {
        let policy = PoolPolicy {
            min_standby: 4,
            max_vms: 10,
            max_creates_per_pass: 3,
            ..PoolPolicy::default()
        };
        let d1 = row("d1", VmState::Deallocated, None);
        let mut d2 = row("d2", VmState::Deallocated, None);
        d2.vm.state_changed_at = t0() - Duration::hours(1);
        let rows = [d1.clone(), d2.clone()];
        let arm = [(&d1, off()), (&d2, off())];
        assert_eq!(
            run(&rows, &arm, 0, &policy),
            ["start d2", "start d1", "create"]
        );

        // Creating-for-buffer rows count: nothing is over-created.
        let c = buffer_row("c", VmState::Creating);
        let s = buffer_row("s", VmState::Standby);
        let rows = [c.clone(), s.clone()];
        let arm = [
            (&c, status(Provisioning::Creating, Power::Starting)),
            (&s, up()),
        ];
        assert_eq!(run(&rows, &arm, 0, &policy), ["create", "create"]);

        // Buffer VMs completing this pass still count; failing ones do not.
        let done = buffer_row("done", VmState::Creating);
        let bad = buffer_row("bad", VmState::Creating);
        let rows = [done.clone(), bad.clone()];
        let arm = [
            (&done, up()),
            (
                &bad,
                status(Provisioning::Failed("x".into()), Power::Unknown),
            ),
        ];
        assert_eq!(
            run(
                &rows,
                &arm,
                0,
                &PoolPolicy {
                    min_standby: 2,
                    ..policy.clone()
                }
            ),
            ["complete done", "fail bad", "create"]
        );

        // Never past the maximum.
        let full: Vec<Versioned> = (0..9)
            .map(|i| row(&format!("r{i}"), VmState::Running, None))
            .collect();
        let arm: Vec<_> = full.iter().map(|r| (r, up())).collect();
        assert_eq!(run(&full, &arm, 0, &policy), ["create"]);
    }

    #[test]
    fn demand_raises_the_target_and_the_cool_down_lowers_it() {
        let policy = PoolPolicy {
            min_standby: 1,
            max_vms: 50,
            max_creates_per_pass: 50,
            demand_window: std::time::Duration::from_secs(300),
            ready_estimate: std::time::Duration::from_secs(180),
            buffer_cooldown: std::time::Duration::from_secs(900),
            ..PoolPolicy::default()
        };
        // 10 claims in the last 5 minutes: 2 per minute x 3 minutes to ready = 6.
        let claimed: Vec<Versioned> = (0..10)
            .map(|i| {
                let mut r = row(&format!("r{i}"), VmState::Running, None);
                r.vm.claimed_at = Some(t0());
                r
            })
            .collect();
        let arm: Vec<_> = claimed.iter().map(|r| (r, up())).collect();
        let (actions, meta) = run_meta(&claimed, &arm, 60, &policy, &PoolMeta::default());
        assert_eq!(meta.buffer_target, 6);
        assert_eq!(actions.iter().filter(|a| *a == "create").count(), 6);

        // Demand gone (claims out of the window) but within the cool-down: target kept.
        let standby: Vec<Versioned> = (0..6)
            .map(|i| buffer_row(&format!("s{i}"), VmState::Standby))
            .collect();
        let mut rows = claimed.clone();
        rows.extend(standby.iter().cloned());
        let arm: Vec<_> = rows.iter().map(|r| (r, up())).collect();
        let (actions, meta2) = run_meta(&rows, &arm, 600, &policy, &meta);
        assert_eq!(meta2.buffer_target, 6);
        assert!(actions.is_empty(), "{actions:?}");

        // After the cool-down: back to the floor, surplus standby deallocated.
        let (actions, meta3) = run_meta(&rows, &arm, 60 + 900, &policy, &meta2);
        assert_eq!(meta3.buffer_target, 1);
        assert_eq!(
            actions
                .iter()
                .filter(|a| a.starts_with("deallocate"))
                .count(),
            5,
            "{actions:?}"
        );
    }

    #[test]
    fn drained_vms_that_stop_reporting_are_deallocated_and_busy_ones_never() {
        let p = PoolPolicy::default();
        let mut drained = row("m0", VmState::MarkedForDeallocation, None);
        drained.vm.rooms = 0;
        drained.vm.last_report_at = Some(t0());
        let mut busy = row("m1", VmState::MarkedForDeallocation, None);
        busy.vm.rooms = 3;
        busy.vm.last_report_at = Some(t0());
        let rows = [drained.clone(), busy.clone()];
        let arm = [(&drained, up()), (&busy, up())];
        assert!(run(&rows, &arm, 899, &p).is_empty());
        assert_eq!(run(&rows, &arm, 900, &p), ["deallocate m0 (drain timeout)"]);
        assert_eq!(
            run(&rows, &arm, 90_000, &p),
            ["deallocate m0 (drain timeout)"]
        );
    }

    #[test]
    fn the_breaker_opens_after_consecutive_create_failures_and_half_opens_after_cool_down() {
        let policy = PoolPolicy {
            min_standby: 2,
            breaker_failures: 3,
            ..PoolPolicy::default()
        };
        let failing: Vec<Versioned> = (0..3)
            .map(|i| buffer_row(&format!("c{i}"), VmState::Creating))
            .collect();
        let arm: Vec<_> = failing
            .iter()
            .map(|r| {
                (
                    r,
                    status(Provisioning::Failed("QuotaExceeded".into()), Power::Unknown),
                )
            })
            .collect();
        let (actions, meta) = run_meta(&failing, &arm, 30, &policy, &PoolMeta::default());
        assert_eq!(meta.consecutive_create_failures, 3);
        assert!(meta.breaker_open_until.is_some());
        assert!(
            meta.breaker_reason
                .as_deref()
                .unwrap()
                .contains("QuotaExceeded")
        );
        assert!(!actions.contains(&"create".to_owned()), "{actions:?}");

        // While open: no creates, but starts of deallocated VMs still fill the buffer.
        let d = row("d", VmState::Deallocated, None);
        let (actions, _) = run_meta(std::slice::from_ref(&d), &[(&d, off())], 60, &policy, &meta);
        assert_eq!(actions, ["start d"]);

        // After the cool-down: half open, creates resume; one more failure reopens it.
        let (actions, half) = run_meta(&[], &[], 30 + 601, &policy, &meta);
        assert_eq!(actions, ["create", "create"]);
        assert_eq!(half.breaker_open_until, None);
        let one = buffer_row("c9", VmState::Creating);
        let (_, reopened) = run_meta(
            std::slice::from_ref(&one),
            &[(
                &one,
                status(Provisioning::Failed("QuotaExceeded".into()), Power::Unknown),
            )],
            700,
            &policy,
            &half,
        );
        assert!(reopened.breaker_open_until.is_some());

        // A success closes it.
        let ok = buffer_row("c8", VmState::Creating);
        let (_, closed) = run_meta(
            std::slice::from_ref(&ok),
            &[(&ok, up())],
            40,
            &policy,
            &meta,
        );
        assert_eq!(
            (
                closed.breaker_open_until,
                closed.consecutive_create_failures
            ),
            (None, 0)
        );
    }
}
