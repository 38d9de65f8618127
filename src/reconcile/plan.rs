//! The reconcile decision as pure functions of the rows, what ARM reports, the pool's own
//! record and the time, one per phase: which VMs need a point read ([`reads_needed`], with
//! the brake on mass disappearance, [`vanished`]), what each row needs ([`settle`]), which
//! untracked VMs to adopt ([`adoptions`]), the buffer target ([`buffer_target`]), how to fill
//! the buffer ([`fill_buffer`]), what surplus to deallocate ([`surplus`]), which drained VMs
//! to deallocate ([`drained`]), which claims were never used ([`unused_claims`]) and the cap
//! on ARM writes ([`cap_writes`]). [`plan`] runs them in order. No I/O: every rule here is
//! tested on virtual time.
//!
//! Every observation carries where it came from ([`Seen`]): a point read made this pass, or
//! only a listing or a sweep. A step that destroys, forgets or corrects anything about a VM
//! from what ARM shows holds the [`PointRead`] it rests on, and a [`PointRead`] can only be
//! made by reading ARM: a listing or a sweep that contradicts a row only nominates the VM
//! for a point read ([`reads_needed`]).

use std::collections::{HashMap, HashSet};

use time::{Duration, OffsetDateTime};

use super::forecast::ClaimHistory;
use super::meta::{BufferState, PoolMeta};
use super::observation::{Observation, PointRead};
use crate::compute::{Power, Provisioning, Tags, VmStatus};
use crate::config::{PoolPolicy, PoolSpec};
use crate::domain::{Operation, Purpose, VmId, VmState};
use crate::store::Versioned;

/// How long after issuing an operation ARM may still not show it (its answers and listings
/// lag): only after this is a missing or unchanged VM re-issued or corrected.
pub const GRACE: Duration = Duration::seconds(60);

/// Most ARM writes other than creates and starts (deallocates, deletes, re-issues) per pass,
/// to stay well inside ARM's write budget (200 burst, 10/s per subscription).
pub const MAX_OTHER_WRITES_PER_PASS: usize = 50;

/// An operation issued this many times without effect fails the VM (a create) or marks it as
/// needing attention. A call ARM turned away (throttled, unavailable) is not counted.
pub const MAX_ATTEMPTS: u32 = 3;

/// However its calls were answered, an operation is given up (the VM needs attention) this
/// many of its timeouts after it was first issued.
pub const MAX_TIMEOUTS: i32 = 10;

/// Most point reads (GETs) of single VMs per pass: VMs in flight first, then VMs missing
/// from the listing or contradicted by it.
pub const MAX_POINT_READS_PER_PASS: usize = 100;

/// Most VMs whose public IP is looked for per pass (three reads each: VM, NIC, IP).
pub const MAX_IP_LOOKUPS_PER_PASS: usize = 5;

/// Most idle VMs of a pool's previous builds deleted per pass and pool after a rollout, and
/// most `Deallocated` VMs deleted per pass and pool for being kept too long.
pub const MAX_OLD_BUILD_PER_PASS: usize = 5;

/// Most VMs of unknown build whose image is read per pass (one GET each).
pub const MAX_BUILD_READS_PER_PASS: usize = 20;

/// The brake never holds for fewer vanished VMs than this.
pub const BRAKE_MIN_VMS: usize = 3;

/// What ARM reported this pass, matched to the rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// What the listing shows of each row's VM, with the sweep's power state merged in
    /// when there was a sweep: hints only.
    pub listed: HashMap<VmId, Observation>,
    /// The point reads made this pass (found, or 404 `ResourceNotFound`).
    pub reads: HashMap<VmId, PointRead>,
    /// Pool VMs with no row, with what the listing and sweep show of them (sweep passes
    /// only).
    pub untracked: Vec<(VmId, String, VmStatus)>,
    /// Known VMs missing from the listing while the brake held (0: it did not hold).
    pub vanished: u32,
    /// The pool and build tags of the untracked VMs.
    pub tags: HashMap<VmId, Tags>,
    /// Why ARM's answers this pass cannot be trusted for destructive steps (an answer about
    /// the subscription, resource group or access rather than about a VM): while set, the
    /// pass takes none.
    pub suspect: Option<String>,
}

/// What ARM shows of one row's VM, and where from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seen<'a> {
    /// A point read this pass found it, with this status: a fact.
    Read(&'a PointRead, &'a VmStatus),
    /// A point read this pass answered 404 `ResourceNotFound`: it does not exist.
    Gone(&'a PointRead),
    /// Only the listing or the sweep shows it: a hint, never the basis of a destructive step.
    Listed(&'a Observation),
    /// Not in the listing, and not read: nothing is concluded.
    Missing,
}

impl Seen<'_> {
    /// The status shown, by a point read or a hint.
    pub fn status(&self) -> Option<&VmStatus> {
        match self {
            Seen::Read(_, s) => Some(s),
            Seen::Listed(o) => Some(&o.status),
            Seen::Gone(_) | Seen::Missing => None,
        }
    }
}

impl Observed {
    /// What ARM shows of `id`: the point read first, else the listing.
    pub fn seen(&self, id: &VmId) -> Seen<'_> {
        match self.reads.get(id) {
            Some(read) => match read.status() {
                Some(s) => Seen::Read(read, s),
                None => Seen::Gone(read),
            },
            None => self.listed.get(id).map_or(Seen::Missing, Seen::Listed),
        }
    }

    /// The status of `id` as best known (a point read, else a hint).
    pub fn status(&self, id: &VmId) -> Option<&VmStatus> {
        match self.reads.get(id) {
            Some(read) => read.status(),
            None => self.listed.get(id).map(|o| &o.status),
        }
    }
}

/// Why a VM is deallocated.
#[derive(Debug, Clone, PartialEq)]
pub enum Why {
    /// A `Standby` VM over the buffer target once demand cooled down (the pool's own
    /// record: nobody holds it and it reports no rooms).
    Surplus,
    /// A drained `MarkedForDeallocation` VM silent for the drain timeout (its game server
    /// reported 0 rooms since it was handed out).
    DrainTimeout,
    /// A point read showed a `Standby` VM stopped but still allocated (billed).
    StoppedOutsideVmpool(PointRead),
}

impl Why {
    /// The reason, for the log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Why::Surplus => "surplus standby",
            Why::DrainTimeout => "drain timeout",
            Why::StoppedOutsideVmpool(_) => "stopped outside vmpool",
        }
    }
}

/// One step the executor takes. Steps on an existing row carry the row as the plan saw it,
/// so the executor's write is conditional on that version and a step decided on stale data
/// changes nothing. A step decided from what ARM shows carries the [`PointRead`] it rests on.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `Creating` -> `Running`/`Standby`: a point read shows it running (unhealthy, when its
    /// provisioning failed while it runs and someone holds it).
    Complete(Versioned, PointRead),
    /// `Deallocating` -> `Deallocated`: a point read shows it deallocated (or gone).
    FinishDeallocate(Versioned, PointRead),
    /// -> `Failed`, with the error; the point read shows it is not up (or gone), or that
    /// nobody holds it.
    Fail(Versioned, String, PointRead),
    /// Issue the row's ARM operation again (it was lost, or the process died before it).
    Reissue(Versioned),
    /// `Deallocated` -> `Creating` for the buffer, then ARM start.
    StartForBuffer(Versioned),
    /// A new row `Creating` for the named pool's buffer, then ARM create.
    CreateForBuffer(String),
    /// `Standby` or drained `MarkedForDeallocation` -> `Deallocating`, then ARM deallocate.
    Deallocate(Versioned, Why),
    /// A row ARM contradicts is set to the state the point read shows (drift repair).
    Correct(Versioned, VmState, PointRead),
    /// A `Failed` VM that a point read shows not running, or running with no game on it,
    /// is deleted in ARM (with its NIC, disk and IP); or the delete of a VM of a previous
    /// build is issued again.
    Delete(Versioned, PointRead),
    /// A VM deleted for good, on a point read that shows it present: an idle VM of a pool's
    /// previous build (`Standby` reporting no rooms, `Deallocated`, or drained
    /// `MarkedForDeallocation`; starting it again would bring the old build back), or a
    /// `Deallocated` VM nobody held for `VMPOOL_DEALLOCATED_KEEP_SECS` (its disk costs while
    /// it waits). It goes `Deallocating` with operation `Delete`, then ARM delete.
    Retire(Versioned, PointRead),
    /// A `Failed` VM, or a deleted VM of a previous build, that a point read found gone:
    /// the row is removed.
    Forget(Versioned, PointRead),
    /// A pool VM in ARM with no row: a row is written for it (name, resource ID, status,
    /// and the pool and build its tags name).
    Adopt(VmId, String, VmStatus, Tags),
    /// Read the image ARM reports for a VM whose build is not known (a row written before
    /// builds were kept, or a VM adopted without a build tag), to learn its build.
    ReadBuild(Versioned),
    /// A start that ARM accepted and then failed (its async operation ended `AllocationFailed`
    /// and a point read shows the VM deallocated), or that never took: the row goes back to
    /// `Deallocated` with the error, and the refusal counts toward the breaker.
    StartRefused(Versioned, String, PointRead),
    /// The row's operation ran out of attempts: the row is marked as needing attention and
    /// vmpool stops calling ARM for it.
    Attention(Versioned, String),
    /// A `Running` VM handed out and never used goes back to `Standby`.
    Unclaim(Versioned),
    /// Look for the public IP of an up VM that has none recorded.
    FindIp(Versioned),
    /// Record what a point read shows of a running VM's health: unhealthy (why), or healthy
    /// again (`None`).
    Health(Versioned, Option<String>, PointRead),
}

impl Action {
    /// Whether the step destroys, forgets or hands out anything (so it needs a trusted
    /// view): deletes, deallocations, failures, corrections, forgetting a row, and an
    /// unused claim handed back to the buffer.
    pub fn is_destructive(&self) -> bool {
        match self {
            Action::Fail(..)
            | Action::Deallocate(..)
            | Action::Correct(..)
            | Action::Delete(..)
            | Action::Retire(..)
            | Action::Forget(..)
            | Action::StartRefused(..)
            | Action::Unclaim(..) => true,
            Action::Reissue(row) => row.vm.state == VmState::Deallocating,
            _ => false,
        }
    }
}

/// The actions of one pass and the pool record to save after them.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// The pool's record after this pass (buffer target, breaker, observation).
    pub meta: PoolMeta,
}

pub(super) fn to_time(d: std::time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::MAX)
}

/// Time since the row's operation was last issued (or its state last changed).
fn age(row: &Versioned, now: OffsetDateTime) -> Duration {
    now - row.vm.state_changed_at
}

/// Time since the row's operation was first issued.
fn issued_for(row: &Versioned, now: OffsetDateTime) -> Duration {
    now - row.vm.issued_at()
}

/// Whether a row's VM certainly exists in ARM (so missing from a listing means the listing
/// is wrong or the VM was removed behind the pool's back).
fn must_exist(row: &Versioned) -> bool {
    match row.vm.state {
        VmState::Creating => row.vm.operation == Some(Operation::Start),
        VmState::Failed => false,
        VmState::Deallocating => row.vm.operation != Some(Operation::Delete),
        _ => true,
    }
}

/// The brake on mass disappearance: the known VMs missing from the listing, if more than
/// `VMPOOL_VANISH_BRAKE_PERCENT` of them and at least [`BRAKE_MIN_VMS`]; then the pass acts
/// on none of them (a listing that lags or pages short must not fail a fleet).
pub fn vanished<'a>(
    rows: &'a [Versioned],
    listed: &HashMap<VmId, Observation>,
    policy: &PoolPolicy,
) -> Option<Vec<&'a VmId>> {
    let known: Vec<&Versioned> = rows.iter().filter(|r| must_exist(r)).collect();
    let missing: Vec<&VmId> = known
        .iter()
        .filter(|r| !listed.contains_key(&r.vm.id))
        .map(|r| &r.vm.id)
        .collect();
    let over_share = missing.len() * 100 > known.len() * policy.vanish_brake_percent as usize;
    (missing.len() >= BRAKE_MIN_VMS && over_share).then_some(missing)
}

/// Whether a running VM's provisioning failed (a VM extension, for one).
fn failed_while_running(s: &VmStatus) -> Option<&str> {
    match &s.provisioning {
        Provisioning::Failed(e) if s.power == Power::Running => Some(e),
        _ => None,
    }
}

/// Whether what a listing or a sweep shows of a settled row contradicts it, or says
/// something a point read must confirm before the row may change.
fn contradicts(row: &Versioned, s: &VmStatus) -> bool {
    let vm = &row.vm;
    match vm.state {
        VmState::Running | VmState::Standby | VmState::MarkedForDeallocation => {
            s.is_deallocated()
                || (vm.state == VmState::Standby && s.power == Power::Stopped)
                || matches!(s.provisioning, Provisioning::Failed(_))
                || (vm.unhealthy.is_some() && s.provisioning == Provisioning::Succeeded)
        }
        VmState::Deallocated => matches!(s.power, Power::Running | Power::Starting),
        _ => false,
    }
}

/// The VMs to read one by one this pass, at most [`MAX_POINT_READS_PER_PASS`]: VMs in flight
/// whose listing does not show them still in progress (oldest first), then VMs missing from
/// the listing whose absence would change their row (unless the brake holds), settled rows
/// the listing or sweep contradicts, unhealthy VMs, and `Failed` VMs about to be deleted.
pub fn reads_needed(
    rows: &[Versioned],
    listed: &HashMap<VmId, Observation>,
    braked: bool,
    now: OffsetDateTime,
    policy: &PoolPolicy,
) -> Vec<VmId> {
    let settled = |r: &Versioned| age(r, now) >= GRACE;
    let mut in_flight: Vec<&Versioned> = Vec::new();
    let mut missing: Vec<&Versioned> = Vec::new();
    for row in rows {
        let vm = &row.vm;
        let due = issued_for(row, now) >= to_time(policy.create_timeout)
            || (vm.attempts >= MAX_ATTEMPTS && settled(row));
        match (vm.state, listed.get(&vm.id).map(|o| &o.status)) {
            (VmState::Creating | VmState::Deallocating, Some(s)) => {
                // A listing still showing the operation in progress needs no read, unless
                // the operation is due to fail.
                let in_progress = s.provisioning == Provisioning::Creating
                    || matches!(s.power, Power::Starting | Power::Deallocating);
                if !in_progress || due {
                    in_flight.push(row);
                }
            }
            (VmState::Creating, None) if settled(row) || due => in_flight.push(row),
            (VmState::Deallocating, None) => in_flight.push(row),
            (VmState::Failed, None) => missing.push(row),
            (VmState::Failed, Some(s)) => {
                let deleting = s.provisioning == Provisioning::Deleting
                    || (vm.operation == Some(Operation::Delete)
                        && age(row, now) < to_time(policy.deallocate_timeout));
                if !deleting {
                    missing.push(row);
                }
            }
            (_, None) if settled(row) && !braked => missing.push(row),
            (_, Some(s)) if vm.unhealthy.is_some() || (settled(row) && contradicts(row, s)) => {
                missing.push(row);
            }
            _ => {}
        }
    }
    in_flight.sort_by_key(|r| r.vm.state_changed_at);
    missing.sort_by_key(|r| r.vm.state_changed_at);
    let nominated: HashSet<&VmId> = in_flight.iter().chain(&missing).map(|r| &r.vm.id).collect();
    // Idle VMs of a pool's previous build, which the pass may delete: a few per pool.
    let mut old: Vec<&Versioned> = rows
        .iter()
        .filter(|r| !nominated.contains(&r.vm.id) && listed.contains_key(&r.vm.id))
        .filter(|r| settled(r) && (retirable(r, policy) || kept_too_long(r, now, policy)))
        .filter(|r| {
            // A drained one only once the drain safety net is due for it.
            r.vm.state != VmState::MarkedForDeallocation
                || r.vm.last_report_at.is_some_and(|t| {
                    now - t.max(r.vm.state_changed_at) >= to_time(policy.drain_timeout)
                })
        })
        .collect();
    old.sort_by_key(|r| r.vm.state_changed_at);
    let mut per_pool: HashMap<&str, usize> = HashMap::new();
    old.retain(|r| {
        let n = per_pool.entry(r.vm.pool.as_str()).or_default();
        *n += 1;
        *n <= MAX_OLD_BUILD_PER_PASS
    });
    in_flight
        .into_iter()
        .chain(missing)
        .chain(old)
        .take(MAX_POINT_READS_PER_PASS)
        .map(|r| r.vm.id.clone())
        .collect()
}

/// Whether the row's VM is of a build other than its pool's current one (a known build: a
/// VM of unknown build is not judged).
fn of_old_build(row: &Versioned, policy: &PoolPolicy) -> bool {
    policy
        .pools
        .get(&row.vm.pool)
        .is_some_and(|spec| row.vm.is_of_a_build_but(&spec.build))
}

/// Whether the row's VM is `Deallocated`, nobody's, and has been so for
/// `VMPOOL_DEALLOCATED_KEEP_SECS` (not zero): its disk has cost more than a start saves over a
/// create.
fn kept_too_long(row: &Versioned, now: OffsetDateTime, policy: &PoolPolicy) -> bool {
    let vm = &row.vm;
    !policy.deallocated_keep.is_zero()
        && vm.state == VmState::Deallocated
        && vm.purpose == Purpose::Buffer
        && vm.attention.is_none()
        && now - vm.state_changed_at >= to_time(policy.deallocated_keep)
}

/// Whether the row's VM is of a previous build of its pool and idle: the pool may delete it
/// (`Standby` reporting no rooms and healthy, `Deallocated` and nobody's, or drained
/// `MarkedForDeallocation`).
fn retirable(row: &Versioned, policy: &PoolPolicy) -> bool {
    let vm = &row.vm;
    let idle = match vm.state {
        VmState::Standby => vm.may_be_emptied() && vm.unhealthy.is_none(),
        VmState::Deallocated => vm.purpose == Purpose::Buffer,
        VmState::MarkedForDeallocation => vm.reported_empty() && vm.unhealthy.is_none(),
        _ => false,
    };
    idle && vm.attention.is_none() && of_old_build(row, policy)
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
    meta.vanished = observed.vanished;
    meta.suspect_reason.clone_from(&observed.suspect);
    let mut actions = Vec::new();
    // Rows an action already takes care of this pass, and those of them it takes out of
    // the buffer.
    let mut handled: HashSet<&VmId> = HashSet::new();
    let mut leaving: HashSet<&VmId> = HashSet::new();

    for row in rows {
        if let Some(action) = settle(row, observed.seen(&row.vm.id), now, policy) {
            handled.insert(&row.vm.id);
            if matches!(
                action,
                Action::Fail(..)
                    | Action::StartRefused(..)
                    | Action::Deallocate(..)
                    | Action::Correct(_, VmState::Deallocated, _)
            ) {
                leaving.insert(&row.vm.id);
            }
            actions.push(action);
        }
    }
    actions.extend(adoptions(rows, observed));
    let unclaimed = unused_claims(rows, observed, &handled, now, policy);
    let unclaimed_rows: Vec<&Versioned> = rows
        .iter()
        .filter(|r| {
            unclaimed
                .iter()
                .any(|a| matches!(a, Action::Unclaim(u) if u.vm.id == r.vm.id))
        })
        .collect();
    for r in &unclaimed_rows {
        handled.insert(&r.vm.id);
    }
    actions.extend(unclaimed);

    // A start that failed after its caller was told the VM is coming: kept for that caller
    // (no one else starts it) until the caller lets go or the hold runs out.
    let hold = policy.failed_start_hold();
    for r in rows {
        if r.vm.held_for_caller(now, hold) {
            handled.insert(&r.vm.id);
        }
    }
    let draining = drained(rows, observed, &handled, now, policy);

    // The buffer, pool by pool: each pool's own target and maximum, and all pools together
    // under VMPOOL_MAX_VMS, the per-pass cap on creates and starts and the one breaker.
    let mut headroom = (policy.max_vms as usize).saturating_sub(active_in(rows, None));
    let mut starts_left = policy.max_creates_per_pass as usize;
    for spec in policy.pools.all() {
        let held = (
            meta.breaker_open_at(&spec.name, now),
            meta.starts_held_at(&spec.name, now),
        );
        let state = meta.pool_mut(&spec.name);
        let (target, cooled) = buffer_target(rows, spec, now, policy, state);
        let returning_here = unclaimed_rows
            .iter()
            .filter(|r| is_current(r, spec))
            .count();
        // What serves at once (the buffer counts what is on its way up too).
        let serving = returning_here + reclaimable(rows, spec, &handled, &draining);
        let buffer = rows
            .iter()
            .filter(|r| !leaving.contains(&r.vm.id) && is_current(r, spec))
            .filter(|r| r.vm.unhealthy.is_none())
            .filter(|r| {
                r.vm.state == VmState::Standby
                    || (r.vm.state == VmState::Creating && r.vm.purpose == Purpose::Buffer)
            })
            .count()
            + serving;
        let room = (spec.max_vms as usize)
            .saturating_sub(active_in(rows, Some(spec)))
            .min(headroom);
        let filled = fill_buffer(
            rows,
            spec,
            observed,
            &mut handled,
            buffer,
            target,
            held,
            room.min(starts_left),
        );
        headroom = headroom.saturating_sub(filled.len());
        starts_left = starts_left.saturating_sub(filled.len());
        actions.extend(filled);
        if cooled {
            actions.extend(surplus(rows, spec, observed, &mut handled, buffer, target));
        }
        let ready = rows
            .iter()
            .filter(|r| r.vm.state == VmState::Standby && is_current(r, spec))
            .filter(|r| r.vm.unhealthy.is_none())
            .filter(|r| !leaving.contains(&r.vm.id) && !handled.contains(&r.vm.id))
            .count()
            + serving;
        // Old-build idle VMs go once the current build's buffer is ready, or at once when
        // the maximum leaves no room to fill it: then they hold the places it needs.
        let capped = room < target.saturating_sub(buffer);
        if ready >= target || capped {
            actions.extend(old_builds(rows, spec, observed, &mut handled, policy));
        }
        actions.extend(kept_deallocated(
            rows,
            spec,
            observed,
            &mut handled,
            now,
            policy,
        ));
    }
    actions.extend(draining);
    actions.extend(find_ips(rows, observed, &handled));
    actions.extend(find_builds(rows, observed, &handled));
    // An answer about scope or access: nothing destructive this pass, in any phase.
    if observed.suspect.is_some() {
        actions.retain(|a| !a.is_destructive());
    }
    meta.unhealthy = u32::try_from(
        rows.iter()
            .filter(|r| r.vm.unhealthy.is_some() && r.vm.state != VmState::Failed)
            .count(),
    )
    .unwrap_or(u32::MAX);
    Plan {
        actions: cap_writes(actions),
        meta,
    }
}

/// Pool VMs in ARM with no row (a table restored from backup, rows removed by hand), seen on
/// a sweep: each gets a row.
pub fn adoptions(rows: &[Versioned], observed: &Observed) -> Vec<Action> {
    let known: HashSet<&VmId> = rows.iter().map(|r| &r.vm.id).collect();
    let mut untracked: Vec<&(VmId, String, VmStatus)> = observed
        .untracked
        .iter()
        .filter(|(id, _, s)| !known.contains(id) && s.provisioning != Provisioning::Deleting)
        .collect();
    untracked.sort_by(|a, b| a.0.cmp(&b.0));
    untracked
        .into_iter()
        .map(|(id, rid, s)| {
            let tags = observed.tags.get(id).cloned().unwrap_or_default();
            Action::Adopt(id.clone(), rid.clone(), s.clone(), tags)
        })
        .collect()
}

/// Whether the view shows a row's VM (read, or in the listing). A VM missing from the view
/// (the brake holds, or it was not read yet) is never acted on.
fn in_view(observed: &Observed, id: &VmId) -> bool {
    matches!(observed.seen(id), Seen::Read(..) | Seen::Listed(_))
}

/// `Running` VMs handed out by CreateVM that got neither a report nor a mark within the
/// claim timeout: they were never used and go back to the buffer. Only VMs the view shows.
pub fn unused_claims(
    rows: &[Versioned],
    observed: &Observed,
    handled: &HashSet<&VmId>,
    now: OffsetDateTime,
    policy: &PoolPolicy,
) -> Vec<Action> {
    let timeout = to_time(policy.claim_timeout);
    rows.iter()
        .filter(|r| !handled.contains(&r.vm.id) && in_view(observed, &r.vm.id))
        .filter(|r| {
            // Silent since it was handed out, or since its last report said 0 rooms.
            let quiet_since =
                r.vm.last_report_at
                    .map_or(r.vm.state_changed_at, |t| t.max(r.vm.state_changed_at));
            r.vm.state == VmState::Running
                && r.vm.unhealthy.is_none()
                && now - quiet_since >= timeout
                && crate::domain::unclaimed(&r.vm, now).is_ok()
        })
        .map(|r| Action::Unclaim(r.clone()))
        .collect()
}

/// The buffer target: the configured floor, raised by demand, lowered after a cool-down,
/// and raised ahead of demand that came one period ago when demand repeats
/// (`VMPOOL_DEMAND_PERIOD_SECS`): the claims of one period ago in the next two ready
/// estimates (a VM launched now is ready within one; the other covers a pass's delay and a
/// slow start). Returns the target and whether demand has cooled down (surplus may go).
pub fn buffer_target(
    rows: &[Versioned],
    spec: &PoolSpec,
    now: OffsetDateTime,
    policy: &PoolPolicy,
    state: &mut BufferState,
) -> (usize, bool) {
    let wanted = demand_target(rows, spec, now, policy).max(spec.min_standby);
    let cooldown = to_time(policy.buffer_cooldown);
    let cooled = state.target_raised_at.is_none_or(|at| now - at >= cooldown);
    if wanted >= state.buffer_target {
        if wanted > spec.min_standby {
            state.target_raised_at = Some(now);
        }
        state.buffer_target = wanted;
    } else if cooled {
        state.buffer_target = wanted;
    }
    // What came one period ago counts while it is still ahead, with no cool-down of its
    // own (the VMs launched for a burst would otherwise be launched again as it takes
    // them); surplus waits for the cool-down from the last time it asked for more.
    state.forecast = 0;
    if policy.demand_period.is_zero() {
        state.history = ClaimHistory::default();
        state.forecast_at = None;
    } else {
        let claims = rows.iter().filter(|r| r.vm.pool == spec.name);
        state.history.record(claims, now, policy.demand_period);
        state.forecast = state.history.forecast(
            now,
            policy.ready_estimate.saturating_mul(2),
            policy.demand_period,
        );
        if state.forecast > state.buffer_target {
            state.forecast_at = Some(now);
        }
    }
    let forecast_cooled = state.forecast_at.is_none_or(|at| now - at >= cooldown);
    (
        state.effective_buffer_target(spec) as usize,
        cooled && forecast_cooled,
    )
}

/// Whether `row` is of `spec`'s pool and its current build.
fn is_current(row: &Versioned, spec: &PoolSpec) -> bool {
    row.vm.is_of(&spec.name, &spec.build)
}

/// VMs that count against a maximum: of `spec`'s pool, or of every pool.
fn active_in(rows: &[Versioned], spec: Option<&PoolSpec>) -> usize {
    rows.iter()
        .filter(|r| r.vm.state.counts_against_max())
        .filter(|r| spec.is_none_or(|s| r.vm.pool == s.name))
        .count()
}

/// Fills `spec`'s buffer up to `target`: starts of deallocated VMs of its current build
/// first (faster and cheaper), then creates, at most `room` (what the pool's maximum, all
/// pools' maximum and the per-pass cap leave). `held` is (creates stopped, starts
/// stopped): no creates while the breaker is open, and no starts while it is open or a
/// start was refused lately (the VMs that would have been started are waited for, not
/// replaced by creates).
#[expect(clippy::too_many_arguments, reason = "one pool's inputs to one phase")]
pub fn fill_buffer<'a>(
    rows: &'a [Versioned],
    spec: &PoolSpec,
    observed: &Observed,
    handled: &mut HashSet<&'a VmId>,
    buffer: usize,
    target: usize,
    held: (bool, bool),
    room: usize,
) -> Vec<Action> {
    let (breaker_open, starts_held) = held;
    let missing = target.saturating_sub(buffer).min(room);
    let mut deallocated: Vec<&Versioned> = rows
        .iter()
        .filter(|r| r.vm.state == VmState::Deallocated && !handled.contains(&r.vm.id))
        .filter(|r| is_current(r, spec))
        .filter(|r| {
            // A start that failed for allocation leaves the VM's provisioning `Failed`; it
            // can be started again.
            observed.status(&r.vm.id).is_some_and(|s| {
                matches!(
                    s.provisioning,
                    Provisioning::Succeeded | Provisioning::Failed(_)
                ) && matches!(s.power, Power::Deallocated | Power::Unknown)
            })
        })
        .collect();
    // The longest-deallocated first, so every VM gets exercised.
    deallocated.sort_by_key(|r| r.vm.state_changed_at);
    let starts = missing.min(deallocated.len());
    let mut actions = Vec::new();
    for row in deallocated
        .into_iter()
        .take(starts)
        .filter(|_| !starts_held)
    {
        handled.insert(&row.vm.id);
        actions.push(Action::StartForBuffer(row.clone()));
    }
    if !breaker_open {
        actions.extend(std::iter::repeat_n(
            Action::CreateForBuffer(spec.name.clone()),
            missing - starts,
        ));
    }
    actions
}

/// Surplus `Standby` VMs over the target, once demand has cooled down: the longest-idle
/// first. A `Standby` VM that reports rooms is in use and never surplus, and one missing
/// from the listing is left alone.
pub fn surplus<'a>(
    rows: &'a [Versioned],
    spec: &PoolSpec,
    observed: &Observed,
    handled: &mut HashSet<&'a VmId>,
    buffer: usize,
    target: usize,
) -> Vec<Action> {
    let mut standby: Vec<&Versioned> = rows
        .iter()
        .filter(|r| r.vm.state == VmState::Standby && !handled.contains(&r.vm.id))
        .filter(|r| is_current(r, spec))
        .filter(|r| r.vm.may_be_emptied() && r.vm.unhealthy.is_none())
        .filter(|r| in_view(observed, &r.vm.id))
        .collect();
    standby.sort_by_key(|r| r.vm.state_changed_at);
    let n = buffer.saturating_sub(target).min(standby.len());
    standby
        .into_iter()
        .take(n)
        .map(|row| {
            handled.insert(&row.vm.id);
            Action::Deallocate(row.clone(), Why::Surplus)
        })
        .collect()
}

/// After a rollout, once the pool's buffer of its current build is ready: idle VMs of a
/// previous build (known, not unknown) that a point read this pass shows present are
/// deleted, at most [`MAX_OLD_BUILD_PER_PASS`] a pass, oldest first: `Standby` VMs that
/// report no rooms and `Deallocated` VMs nobody holds. They are never handed out to a caller
/// that did not name their build, and starting one again would bring the old build back.
/// One that reports rooms is in use and left alone, as is an unhealthy one. After a
/// rollback they are current again, and none of this applies.
pub fn old_builds<'a>(
    rows: &'a [Versioned],
    spec: &PoolSpec,
    observed: &Observed,
    handled: &mut HashSet<&'a VmId>,
    policy: &PoolPolicy,
) -> Vec<Action> {
    retire_on_reads(rows, spec, observed, handled, |r, _| {
        matches!(r.vm.state, VmState::Standby | VmState::Deallocated) && retirable(r, policy)
    })
}

/// `Deallocated` VMs of `spec`'s pool nobody held for `VMPOOL_DEALLOCATED_KEEP_SECS`, that a
/// point read this pass shows deallocated (and not started by this pass): deleted, at most
/// [`MAX_OLD_BUILD_PER_PASS`] a pass, the longest-deallocated first. A deallocated VM pays for
/// its disk while it waits; past this long, a create when demand comes back costs less.
pub fn kept_deallocated<'a>(
    rows: &'a [Versioned],
    spec: &PoolSpec,
    observed: &Observed,
    handled: &mut HashSet<&'a VmId>,
    now: OffsetDateTime,
    policy: &PoolPolicy,
) -> Vec<Action> {
    retire_on_reads(rows, spec, observed, handled, |r, s| {
        kept_too_long(r, now, policy) && s.is_deallocated()
    })
}

/// The rows of `spec`'s pool not handled yet that a point read this pass shows present and
/// that `which` picks (given that read's status), deleted for good: at most
/// [`MAX_OLD_BUILD_PER_PASS`], the longest in their state first.
fn retire_on_reads<'a>(
    rows: &'a [Versioned],
    spec: &PoolSpec,
    observed: &Observed,
    handled: &mut HashSet<&'a VmId>,
    which: impl Fn(&Versioned, &VmStatus) -> bool,
) -> Vec<Action> {
    let mut picked: Vec<(&Versioned, &PointRead)> = rows
        .iter()
        .filter(|r| r.vm.pool == spec.name && !handled.contains(&r.vm.id))
        .filter_map(|r| match observed.seen(&r.vm.id) {
            Seen::Read(read, s) if which(r, s) => Some((r, read)),
            _ => None,
        })
        .collect();
    picked.sort_by_key(|(r, _)| r.vm.state_changed_at);
    picked
        .into_iter()
        .take(MAX_OLD_BUILD_PER_PASS)
        .map(|(row, read)| {
            handled.insert(&row.vm.id);
            Action::Retire(row.clone(), read.clone())
        })
        .collect()
}

/// Drained VMs that reported empty and stay up this pass: CreateVM reclaims them before any
/// `Standby` VM and they serve at once, so they count towards the buffer while they last
/// (until the drain timeout deallocates them): those of `spec`'s pool and current build.
pub fn reclaimable(
    rows: &[Versioned],
    spec: &PoolSpec,
    handled: &HashSet<&VmId>,
    draining: &[Action],
) -> usize {
    let leaving: HashSet<&VmId> = draining
        .iter()
        .filter_map(|a| match a {
            Action::Deallocate(r, _) => Some(&r.vm.id),
            _ => None,
        })
        .collect();
    rows.iter()
        .filter(|r| {
            r.vm.state == VmState::MarkedForDeallocation
                && is_current(r, spec)
                && r.vm.reported_empty()
                && !handled.contains(&r.vm.id)
                && !leaving.contains(&r.vm.id)
        })
        .count()
}

/// The drain safety net: a `MarkedForDeallocation` VM whose last report (since it was handed
/// out) said 0 rooms, and that has not reported for the drain timeout, is deallocated (one of
/// a previous build of its pool is deleted, on a point read). One whose rooms are unknown is
/// never touched, nor one missing from the view.
pub fn drained(
    rows: &[Versioned],
    observed: &Observed,
    handled: &HashSet<&VmId>,
    now: OffsetDateTime,
    policy: &PoolPolicy,
) -> Vec<Action> {
    let timeout = to_time(policy.drain_timeout);
    rows.iter()
        .filter(|r| {
            let vm = &r.vm;
            vm.state == VmState::MarkedForDeallocation
                && !handled.contains(&vm.id)
                && in_view(observed, &vm.id)
                && vm.reported_empty()
                && vm
                    .last_report_at
                    .is_some_and(|t| now - t.max(vm.state_changed_at) >= timeout)
        })
        .filter_map(|r| {
            if !of_old_build(r, policy) {
                return Some(Action::Deallocate(r.clone(), Why::DrainTimeout));
            }
            // A VM of a previous build is deleted rather than deallocated, on a point read
            // (one is made for it this pass or the next).
            match observed.seen(&r.vm.id) {
                Seen::Read(read, _) => Some(Action::Retire(r.clone(), read.clone())),
                _ => None,
            }
        })
        .collect()
}

/// Up VMs with no public IP recorded (ARM had none yet when they completed): looked for
/// again, a few per pass.
pub fn find_ips(rows: &[Versioned], observed: &Observed, handled: &HashSet<&VmId>) -> Vec<Action> {
    rows.iter()
        .filter(|r| {
            matches!(
                r.vm.state,
                VmState::Running | VmState::Standby | VmState::MarkedForDeallocation
            ) && r.vm.public_ip.is_none()
                && !handled.contains(&r.vm.id)
                && in_view(observed, &r.vm.id)
        })
        .take(MAX_IP_LOOKUPS_PER_PASS)
        .map(|r| Action::FindIp(r.clone()))
        .collect()
}

/// VMs whose build is not known (rows written before builds were kept), present in ARM:
/// their image is read, a bounded number per pass. Until then they are never handed out.
pub fn find_builds(
    rows: &[Versioned],
    observed: &Observed,
    handled: &HashSet<&VmId>,
) -> Vec<Action> {
    rows.iter()
        .filter(|r| {
            r.vm.build.is_none()
                && r.vm.state != VmState::Failed
                && !handled.contains(&r.vm.id)
                && in_view(observed, &r.vm.id)
        })
        .take(MAX_BUILD_READS_PER_PASS)
        .map(|r| Action::ReadBuild(r.clone()))
        .collect()
}

/// Caps the ARM writes of one pass (creates and starts are capped by [`fill_buffer`]).
pub fn cap_writes(mut actions: Vec<Action>) -> Vec<Action> {
    let mut others = 0usize;
    actions.retain(|a| match a {
        Action::Reissue(_) | Action::Deallocate(..) | Action::Delete(..) | Action::Retire(..) => {
            others += 1;
            others <= MAX_OTHER_WRITES_PER_PASS
        }
        _ => true,
    });
    actions
}

/// The demand window is cut into this many slots to tell sustained demand from a burst.
pub const DEMAND_SLOTS: usize = 5;

/// The buffer target from demand: claims over the demand window, scaled to the time a VM
/// takes to become ready (Little's law: VMs in flight = arrival rate x time in flight),
/// rounded down, so demand that expects less than one claim per ready time costs nothing.
/// A burst does not count as a rate: the window is cut into [`DEMAND_SLOTS`] slots and the
/// busiest slot counts for at most twice the next busiest plus one, so claims bunched in a
/// few seconds (which CreateVM serves by creating on demand) raise the target only once
/// demand shows in a second slot, while the noise of steady demand passes unchanged. Only
/// claims of `spec`'s pool count.
pub fn demand_target(
    rows: &[Versioned],
    spec: &PoolSpec,
    now: OffsetDateTime,
    policy: &PoolPolicy,
) -> u32 {
    let window = to_time(policy.demand_window);
    let slot = window.as_seconds_f64().max(1.0) / DEMAND_SLOTS as f64;
    let mut slots = [0u64; DEMAND_SLOTS];
    for claimed in rows
        .iter()
        .filter(|r| r.vm.pool == spec.name)
        .filter_map(|r| r.vm.claimed_at)
    {
        // A claim stamped ahead of this clock (another instance's) is in the newest slot.
        let age = (now - claimed).max(Duration::ZERO);
        if age > window {
            continue;
        }
        // Saturating float-to-int cast of a small, non-negative number.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "bounded below"
        )]
        let at = ((age.as_seconds_f64() / slot) as usize).min(DEMAND_SLOTS - 1);
        slots[at] += 1;
    }
    slots.sort_unstable();
    let next_busiest = slots[DEMAND_SLOTS - 2];
    slots[DEMAND_SLOTS - 1] = slots[DEMAND_SLOTS - 1].min(2 * next_busiest + 1);
    let claims = slots.iter().sum::<u64>() as f64;
    let ready = policy.ready_estimate.as_secs_f64();
    let per_ready_time = claims * ready / window.as_seconds_f64().max(1.0);
    // Saturating float-to-int cast of a small, non-negative number.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "bounded below"
    )]
    let target = per_ready_time.floor().min(f64::from(spec.max_vms)) as u32;
    target
}

/// What one row needs, given what ARM shows of it: completion, failure, re-issue, drift
/// repair, health, clean-up. Only a point read ([`Seen::Read`], [`Seen::Gone`]) changes a row
/// for what ARM shows, and only to what it shows: a listing or a sweep ([`Seen::Listed`])
/// leads at most to a re-issue of the row's own operation. Absence is never deletion: only
/// [`Seen::Gone`] (a GET answered 404 `ResourceNotFound`) fails, finishes or forgets a row
/// for its VM being missing. A VM that runs while a game may be on it is never deleted
/// or deallocated, whatever its provisioning state says.
pub fn settle(
    row: &Versioned,
    seen: Seen<'_>,
    now: OffsetDateTime,
    policy: &PoolPolicy,
) -> Option<Action> {
    let vm = &row.vm;
    let settled = age(row, now) >= GRACE;
    let what = vm
        .operation
        .map_or("operation", |o| o.as_str())
        .to_lowercase();
    let out_of_attempts = vm.attempts >= MAX_ATTEMPTS && settled;
    if vm.attention.is_some() {
        // vmpool no longer calls ARM for it; only what a point read shows moves it on.
        return match (vm.state, seen) {
            (VmState::Creating, Seen::Read(read, s)) if s.is_up() => {
                Some(Action::Complete(row.clone(), read.clone()))
            }
            (VmState::Deallocating, Seen::Gone(read)) => {
                Some(Action::FinishDeallocate(row.clone(), read.clone()))
            }
            (VmState::Deallocating, Seen::Read(read, s)) if s.is_deallocated() => {
                Some(Action::FinishDeallocate(row.clone(), read.clone()))
            }
            (VmState::Failed, Seen::Gone(read)) => Some(Action::Forget(row.clone(), read.clone())),
            _ => None,
        };
    }
    // A row claimed for a caller is re-issued only once that caller's CreateVM has ended:
    // until then it may still be sending the very call a re-issue would repeat.
    let caller_done = vm.purpose == Purpose::Buffer
        || now - vm.claimed_at.unwrap_or(vm.state_changed_at) >= to_time(policy.create_deadline());
    let may_reissue = settled && caller_done && vm.attempts < MAX_ATTEMPTS;
    let starting = vm.operation == Some(Operation::Start);
    let attempts_text = |vm: &crate::domain::VmRecord| match &vm.last_error {
        Some(last) => format!(
            "the {what} did not take after {} attempts; last: {last}",
            vm.attempts
        ),
        None => format!("the {what} did not take after {} attempts", vm.attempts),
    };
    let fail =
        |read: &PointRead, error: String| Some(Action::Fail(row.clone(), error, read.clone()));
    match vm.state {
        VmState::Creating => match seen {
            Seen::Read(read, s) if s.is_up() => Some(Action::Complete(row.clone(), read.clone())),
            // Booting with a failed model: it may be about to serve; wait until it runs (or
            // the operation times out).
            Seen::Read(_, s)
                if matches!(s.provisioning, Provisioning::Failed(_))
                    && s.power == Power::Starting
                    && vm.may_host_games()
                    && issued_for(row, now) < to_time(policy.create_timeout) =>
            {
                None
            }
            // Running, but the last operation on its model failed (a VM extension): whoever
            // holds it may already run a game on it, so it completes, unhealthy. A buffer
            // VM nobody holds is failed (and then deleted).
            Seen::Read(read, s) if failed_while_running(s).is_some() && vm.may_host_games() => {
                Some(Action::Complete(row.clone(), read.clone()))
            }
            // A start that failed (AllocationFailed in its operation) leaves the VM
            // deallocated and its provisioning Failed: the VM is as it was.
            Seen::Read(
                read,
                VmStatus {
                    provisioning: Provisioning::Failed(error),
                    power: Power::Deallocated,
                },
            ) if starting => Some(Action::StartRefused(
                row.clone(),
                error.clone(),
                read.clone(),
            )),
            Seen::Read(
                read,
                VmStatus {
                    provisioning: Provisioning::Failed(error),
                    ..
                },
            ) if !starting => fail(read, format!("provisioning failed: {error}")),
            // A start that did not take: a VM that provisioned once never becomes Failed.
            // Deallocated, it is as it was; otherwise an operator must look at it.
            Seen::Read(read, s)
                if starting
                    && (issued_for(row, now) >= to_time(policy.create_timeout)
                        || out_of_attempts) =>
            {
                if s.power == Power::Deallocated {
                    Some(Action::StartRefused(
                        row.clone(),
                        attempts_text(vm),
                        read.clone(),
                    ))
                } else {
                    Some(Action::Attention(
                        row.clone(),
                        format!(
                            "{}; the VM is neither running nor deallocated",
                            attempts_text(vm)
                        ),
                    ))
                }
            }
            Seen::Read(read, _) | Seen::Gone(read)
                if issued_for(row, now) >= to_time(policy.create_timeout) && !starting =>
            {
                fail(
                    read,
                    format!(
                        "not running {}s after the {what} was first issued ({} attempts)",
                        policy.create_timeout.as_secs(),
                        vm.attempts
                    ),
                )
            }
            Seen::Read(read, _) | Seen::Gone(read) if out_of_attempts && !starting => {
                fail(read, attempts_text(vm))
            }
            // The create never reached ARM (a crash or a fault between row and call).
            Seen::Gone(_) if vm.operation == Some(Operation::Create) => {
                may_reissue.then(|| Action::Reissue(row.clone()))
            }
            Seen::Gone(read) if settled => fail(
                read,
                "the VM was deleted outside vmpool (a GET answered 404)".into(),
            ),
            // The start never reached ARM.
            Seen::Read(_, s) if s.power == Power::Deallocated => {
                may_reissue.then(|| Action::Reissue(row.clone()))
            }
            _ => None,
        },
        VmState::Deallocating if vm.operation == Some(Operation::Delete) => match seen {
            // A VM of a previous build being deleted: gone is done.
            Seen::Gone(read) => Some(Action::Forget(row.clone(), read.clone())),
            Seen::Missing | Seen::Listed(_) => None,
            Seen::Read(read, s) => delete_again(row, read, s, now, policy),
        },
        VmState::Deallocating => match seen {
            // Gone counts as deallocated: nothing is billed.
            Seen::Gone(read) => Some(Action::FinishDeallocate(row.clone(), read.clone())),
            Seen::Read(read, s) if s.is_deallocated() => {
                Some(Action::FinishDeallocate(row.clone(), read.clone()))
            }
            // Out of attempts: never Failed (the VM provisioned once, and Failed VMs are
            // deleted); an operator must look at it.
            Seen::Read(..) | Seen::Listed(_)
                if (vm.attempts >= MAX_ATTEMPTS
                    && issued_for(row, now) >= to_time(policy.deallocate_timeout))
                    || issued_for(row, now)
                        >= to_time(policy.deallocate_timeout) * MAX_TIMEOUTS =>
            {
                Some(Action::Attention(
                    row.clone(),
                    format!(
                        "still not deallocated after {} attempts, {}s after the first",
                        vm.attempts,
                        issued_for(row, now).whole_seconds()
                    ),
                ))
            }
            // Re-issuing its own deallocate: the row already decided it (0 rooms reported).
            Seen::Read(_, s) | Seen::Listed(Observation { status: s, .. })
                if matches!(s.power, Power::Running | Power::Stopped | Power::Starting)
                    && settled
                    && vm.attempts < MAX_ATTEMPTS =>
            {
                Some(Action::Reissue(row.clone()))
            }
            Seen::Read(..) | Seen::Listed(_)
                if age(row, now) >= to_time(policy.deallocate_timeout)
                    && vm.attempts < MAX_ATTEMPTS =>
            {
                Some(Action::Reissue(row.clone()))
            }
            _ => None,
        },
        VmState::Running | VmState::Standby | VmState::MarkedForDeallocation => match seen {
            Seen::Gone(read) if settled => fail(
                read,
                "the VM was deleted outside vmpool (a GET answered 404)".into(),
            ),
            Seen::Read(read, s) if s.is_deallocated() && settled => Some(Action::Correct(
                row.clone(),
                VmState::Deallocated,
                read.clone(),
            )),
            // Stopped but still allocated (billed) with nobody on it.
            Seen::Read(read, s)
                if s.power == Power::Stopped
                    && vm.state == VmState::Standby
                    && vm.may_be_emptied()
                    && settled =>
            {
                Some(Action::Deallocate(
                    row.clone(),
                    Why::StoppedOutsideVmpool(read.clone()),
                ))
            }
            // Running with a failed model: kept while a game may be on it (unhealthy, never
            // handed out), cleaned up once nobody is on it.
            Seen::Read(read, s) if failed_while_running(s).is_some() => {
                let error = failed_while_running(s).unwrap_or_default();
                let reason = format!("provisioning failed while running: {error}");
                let empty = match vm.state {
                    VmState::Standby => vm.may_be_emptied(),
                    VmState::MarkedForDeallocation => vm.reported_empty(),
                    _ => false,
                };
                if empty {
                    fail(read, reason)
                } else if vm.unhealthy.as_deref() != Some(reason.as_str()) {
                    Some(Action::Health(row.clone(), Some(reason), read.clone()))
                } else {
                    None
                }
            }
            Seen::Read(read, s) if vm.unhealthy.is_some() && s.is_up() => {
                Some(Action::Health(row.clone(), None, read.clone()))
            }
            _ => None,
        },
        VmState::Deallocated => match seen {
            Seen::Gone(read) if settled => fail(
                read,
                "the VM was deleted outside vmpool (a GET answered 404)".into(),
            ),
            // Started outside vmpool: it is billed, so put it in the buffer.
            Seen::Read(read, s) if s.is_up() && settled => {
                Some(Action::Correct(row.clone(), VmState::Standby, read.clone()))
            }
            _ => None,
        },
        VmState::Failed => match seen {
            Seen::Gone(read) => Some(Action::Forget(row.clone(), read.clone())),
            Seen::Missing | Seen::Listed(_) => None,
            // Players' games are never destroyed: a VM that runs while a game may be on it
            // (rooms reported, or unknown since it was handed out) is kept, whatever its
            // provisioning state says.
            Seen::Read(_, s)
                if s.provisioning != Provisioning::Deleting
                    && matches!(s.power, Power::Running | Power::Starting)
                    && vm.may_host_games() =>
            {
                None
            }
            Seen::Read(read, s) => delete_again(row, read, s, now, policy),
        },
    }
}

/// A VM to delete that a point read shows still there: nothing while ARM shows the delete
/// in progress or within a deallocate timeout of the last one sent; the delete (again)
/// otherwise; and, bounded like every operation from the first delete, the row needs
/// attention after [`MAX_ATTEMPTS`] deletes or [`MAX_TIMEOUTS`] timeouts.
fn delete_again(
    row: &Versioned,
    read: &PointRead,
    s: &VmStatus,
    now: OffsetDateTime,
    policy: &PoolPolicy,
) -> Option<Action> {
    let vm = &row.vm;
    let sent = vm.operation == Some(Operation::Delete);
    if s.provisioning == Provisioning::Deleting
        || (sent && age(row, now) < to_time(policy.deallocate_timeout))
    {
        return None;
    }
    let given_up = vm.attempts >= MAX_ATTEMPTS
        || issued_for(row, now) >= to_time(policy.deallocate_timeout) * MAX_TIMEOUTS;
    if sent && given_up {
        return Some(Action::Attention(
            row.clone(),
            format!(
                "the delete did not take after {} attempts, {}s after the first",
                vm.attempts,
                issued_for(row, now).whole_seconds()
            ),
        ));
    }
    Some(Action::Delete(row.clone(), read.clone()))
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
        vm.public_ip = Some("203.0.113.1".into());
        let build = PoolPolicy::default().pools.all()[0].build.clone();
        Versioned {
            vm: vm.placed(crate::config::DEFAULT_POOL, &build),
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
            Action::Complete(r, _) => format!("complete {}", r.vm.id),
            Action::FinishDeallocate(r, _) => format!("finishDeallocate {}", r.vm.id),
            Action::Fail(r, ..) => format!("fail {}", r.vm.id),
            Action::Reissue(r) => format!("reissue {}", r.vm.id),
            Action::StartForBuffer(r) => format!("start {}", r.vm.id),
            Action::CreateForBuffer(_) => "create".into(),
            Action::Deallocate(r, why) => format!("deallocate {} ({})", r.vm.id, why.as_str()),
            Action::Correct(r, to, _) => format!("correct {} to {to}", r.vm.id),
            Action::Delete(r, _) => format!("delete {}", r.vm.id),
            Action::Retire(r, _) => format!("retire {}", r.vm.id),
            Action::Forget(r, _) => format!("forget {}", r.vm.id),
            Action::StartRefused(r, ..) => format!("startRefused {}", r.vm.id),
            Action::Attention(r, _) => format!("attention {}", r.vm.id),
            Action::Adopt(id, ..) => format!("adopt {id}"),
            Action::Unclaim(r) => format!("unclaim {}", r.vm.id),
            Action::FindIp(r) => format!("findIp {}", r.vm.id),
            Action::ReadBuild(r) => format!("readBuild {}", r.vm.id),
            Action::Health(r, None, _) => format!("healthy {}", r.vm.id),
            Action::Health(r, Some(_), _) => format!("unhealthy {}", r.vm.id),
        }
    }

    fn hint(s: VmStatus) -> Observation {
        Observation::new(s, crate::reconcile::observation::Source::Sweep)
    }

    /// [`run`] on one row, its VM shown by a point read with `status` (or found gone).
    fn run_one(
        row: &Versioned,
        status: Option<VmStatus>,
        secs: i64,
        policy: &PoolPolicy,
    ) -> Vec<String> {
        match status {
            Some(s) => run(std::slice::from_ref(row), &[(row, s)], secs, policy),
            None => run(std::slice::from_ref(row), &[], secs, policy),
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
        // Every status given was shown by a point read, and a row ARM does not show was
        // confirmed gone by one (see `run_missing` for rows merely missing from the
        // listing, and `run_listed` for statuses only a listing or sweep shows).
        let mut reads: HashMap<VmId, PointRead> = arm
            .iter()
            .map(|(r, s)| {
                (
                    r.vm.id.clone(),
                    PointRead::assumed(r.vm.id.clone(), Some(s.clone())),
                )
            })
            .collect();
        for r in rows {
            reads
                .entry(r.vm.id.clone())
                .or_insert_with(|| PointRead::assumed(r.vm.id.clone(), None));
        }
        let observed = Observed {
            listed: arm
                .iter()
                .map(|(r, s)| (r.vm.id.clone(), hint(s.clone())))
                .collect(),
            reads,
            ..Observed::default()
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
        // A row claimed for a caller is re-issued only after the caller's CreateVM ended.
        let after_caller = i64::try_from(policy.create_deadline().as_secs()).unwrap();
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
            (creating, None, 61, ""),
            (creating, None, after_caller, "reissue a"),
            (creating, Some(status(P::Creating, Starting)), 901, "fail a"),
            (starting, Some(off()), 10, ""),
            (starting, Some(off()), 61, ""),
            (starting, Some(off()), after_caller, "reissue a"),
            (starting, None, 61, "fail a"),
            // A start whose operation failed for allocation leaves the VM as it was.
            (
                starting,
                Some(status(
                    P::Failed("AllocationFailed: no capacity".into()),
                    Deallocated,
                )),
                30,
                "startRefused a",
            ),
            // A start that never takes: back to Deallocated, never Failed.
            (starting, Some(off()), 901, "startRefused a"),
            (
                starting,
                Some(status(P::Succeeded, Starting)),
                901,
                "attention a",
            ),
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
    fn a_deallocate_that_never_takes_needs_attention_after_its_attempts() {
        let mut r = row("a", VmState::Deallocating, Some(Operation::Deallocate));
        r.vm.attempts = MAX_ATTEMPTS;
        assert_eq!(
            run(
                std::slice::from_ref(&r),
                &[(&r, up())],
                601,
                &PoolPolicy::default()
            ),
            ["attention a"]
        );
        // Marked, it is left alone: no more re-issues, whatever ARM shows.
        r.vm.attention = Some("still not deallocated after 3 attempts".into());
        for secs in [61, 601, 6001] {
            assert!(
                run(
                    std::slice::from_ref(&r),
                    &[(&r, up())],
                    secs,
                    &PoolPolicy::default()
                )
                .is_empty()
            );
        }
        assert_eq!(
            run(
                std::slice::from_ref(&r),
                &[(&r, off())],
                61,
                &PoolPolicy::default()
            ),
            ["finishDeallocate a"],
            "what ARM shows still moves it on"
        );
    }

    #[test]
    fn deletes_are_bounded_too() {
        let p = PoolPolicy::default();
        // Not running (a point read shows it deallocated): no game can be on it.
        let mut r = row("f", VmState::Failed, Some(Operation::Delete));
        r.vm.attempts = MAX_ATTEMPTS - 1;
        assert_eq!(run_one(&r, Some(off()), 601, &p), ["delete f"]);
        r.vm.attempts = MAX_ATTEMPTS;
        assert_eq!(run_one(&r, Some(off()), 601, &p), ["attention f"]);
        r.vm.attention = Some("the delete did not take after 3 attempts".into());
        assert!(run_one(&r, Some(off()), 6001, &p).is_empty());
    }

    #[test]
    fn drift_is_repaired() {
        let p = PoolPolicy::default();
        let running = row("r", VmState::Running, None);
        let standby = buffer_row("s", VmState::Standby);
        let dealloc = row("d", VmState::Deallocated, None);
        // Deallocated in the portal: the row follows ARM.
        assert_eq!(
            run_one(&running, Some(off()), 61, &p),
            ["correct r to Deallocated"]
        );
        // Deleted in the portal: recorded as failed (then cleaned up).
        assert_eq!(run_one(&running, None, 61, &p), ["fail r"]);
        assert_eq!(run_one(&dealloc, None, 61, &p), ["fail d"]);
        // Stopped but still billed, with nobody on it.
        assert_eq!(
            run_one(
                &standby,
                Some(status(Provisioning::Succeeded, Power::Stopped)),
                61,
                &p
            ),
            ["deallocate s (stopped outside vmpool)"]
        );
        // Started in the portal: billed, so it joins the buffer.
        assert_eq!(
            run_one(&dealloc, Some(up()), 61, &p),
            ["correct d to Standby"]
        );
        // Within the grace period nothing is trusted yet.
        assert!(run_one(&running, None, 30, &p).is_empty());
        // A pool VM with no row, seen on a sweep, is adopted.
        let observed = Observed {
            untracked: vec![(VmId::parse("ghost").unwrap(), "/x/ghost".into(), up())],
            ..Observed::default()
        };
        let adopt: Vec<String> = plan(&[], &observed, t0(), &p, &PoolMeta::default())
            .actions
            .iter()
            .map(kind)
            .collect();
        assert_eq!(adopt, ["adopt ghost"]);
    }

    /// Like `run`, but rows ARM does not show are merely missing from the listing.
    fn run_missing(rows: &[Versioned], secs: i64, policy: &PoolPolicy) -> Vec<String> {
        let p = plan(
            rows,
            &Observed::default(),
            t0() + Duration::seconds(secs),
            policy,
            &PoolMeta::default(),
        );
        p.actions.iter().map(kind).collect()
    }

    #[test]
    fn absence_from_a_listing_changes_nothing_until_a_get_answers_404() {
        let p = PoolPolicy::default();
        for (state, op) in [
            (VmState::Running, None),
            (VmState::Standby, None),
            (VmState::MarkedForDeallocation, None),
            (VmState::Deallocated, None),
            (VmState::Deallocating, Some(Operation::Deallocate)),
            (VmState::Creating, Some(Operation::Start)),
            (VmState::Creating, Some(Operation::Create)),
            (VmState::Failed, None),
        ] {
            let r = row("a", state, op);
            assert!(
                run_missing(
                    std::slice::from_ref(&r),
                    3600 * 24,
                    &PoolPolicy {
                        create_timeout: std::time::Duration::from_secs(u64::MAX / 4),
                        ..p.clone()
                    }
                )
                .is_empty(),
                "{state} {op:?}"
            );
        }
    }

    #[test]
    fn point_reads_go_to_vms_in_flight_then_to_missing_ones_and_stop_under_the_brake() {
        let creating = row("c", VmState::Creating, Some(Operation::Start));
        let dealloc = row("d", VmState::Deallocating, Some(Operation::Deallocate));
        let running = row("r", VmState::Running, None);
        let standby = row("s", VmState::Standby, None);
        let rows = [
            creating.clone(),
            dealloc.clone(),
            running.clone(),
            standby.clone(),
        ];
        let p = PoolPolicy::default();
        let listing_power_unknown = |r: &Versioned| {
            (
                r.vm.id.clone(),
                hint(status(Provisioning::Succeeded, Power::Unknown)),
            )
        };
        // In flight and listed without a power state: read. Running listed: not read.
        let listed: HashMap<VmId, Observation> = [&creating, &dealloc, &running]
            .into_iter()
            .map(listing_power_unknown)
            .collect();
        let now = t0() + Duration::seconds(120);
        let ids = |v: Vec<VmId>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            ids(reads_needed(&rows, &listed, false, now, &p)),
            ["c", "d", "s"]
        );
        // Under the brake, missing steady VMs are not read (in-flight ones still are).
        assert_eq!(ids(reads_needed(&rows, &listed, true, now, &p)), ["c", "d"]);
        // A create still provisioning needs no read.
        let making = row("m", VmState::Creating, Some(Operation::Create));
        let listed: HashMap<VmId, Observation> = [(
            making.vm.id.clone(),
            hint(status(Provisioning::Creating, Power::Unknown)),
        )]
        .into();
        assert!(reads_needed(std::slice::from_ref(&making), &listed, false, now, &p).is_empty());
        // Bounded.
        let many: Vec<Versioned> = (0..500)
            .map(|i| row(&format!("v{i}"), VmState::Running, None))
            .collect();
        assert_eq!(
            reads_needed(&many, &HashMap::new(), false, now, &p).len(),
            MAX_POINT_READS_PER_PASS
        );
    }

    #[test]
    fn the_brake_holds_when_many_known_vms_vanish_at_once() {
        let p = PoolPolicy::default();
        let rows: Vec<Versioned> = (0..30)
            .map(|i| row(&format!("v{i}"), VmState::Running, None))
            .collect();
        let listed_but = |n: usize| -> HashMap<VmId, Observation> {
            rows.iter()
                .skip(n)
                .map(|r| (r.vm.id.clone(), hint(up())))
                .collect()
        };
        // 3 of 30 is 10%: not more than the share.
        assert!(vanished(&rows, &listed_but(3), &p).is_none());
        assert_eq!(
            vanished(&rows, &listed_but(4), &p).map(|v| v.len()),
            Some(4)
        );
        assert_eq!(
            vanished(&rows, &HashMap::new(), &p).map(|v| v.len()),
            Some(30)
        );
        // Never for fewer than three.
        let two = &rows[..2];
        assert!(vanished(two, &HashMap::new(), &p).is_none());
        // Rows whose VM may not exist yet do not count.
        let creating: Vec<Versioned> = (0..5)
            .map(|i| row(&format!("c{i}"), VmState::Creating, Some(Operation::Create)))
            .collect();
        assert!(vanished(&creating, &HashMap::new(), &p).is_none());
    }

    #[test]
    fn retries_count_from_the_first_issue() {
        let p = PoolPolicy::default();
        let mut r = row("a", VmState::Creating, Some(Operation::Create));
        // Re-issued twice, the last time 61 s ago: a third try would exceed the attempts.
        r.vm.attempts = MAX_ATTEMPTS;
        r.vm.operation_since = Some(t0());
        r.vm.state_changed_at = t0() + Duration::seconds(200);
        assert_eq!(run_one(&r, None, 200 + 61, &p), ["fail a"]);
        // Re-issued recently, but first issued past the create timeout: failed.
        let mut late = row("b", VmState::Creating, Some(Operation::Create));
        late.vm.attempts = 2;
        late.vm.operation_since = Some(t0());
        late.vm.state_changed_at = t0() + Duration::seconds(890);
        assert_eq!(run_one(&late, None, 901, &p), ["fail b"]);
    }

    #[test]
    fn unused_claims_return_to_the_buffer_after_the_claim_timeout() {
        let p = PoolPolicy::default();
        let mut handed = row("h", VmState::Running, None);
        handed.vm.claimed_at = Some(t0());
        let mut used = handed.clone();
        used.vm.id = VmId::parse("u").unwrap();
        used.vm.last_report_at = Some(t0() + Duration::seconds(5));
        let rows = [handed.clone(), used.clone()];
        let arm = [(&handed, up()), (&used, up())];
        assert!(run(&rows, &arm, 599, &p).is_empty());
        assert_eq!(run(&rows, &arm, 600, &p), ["unclaim h"]);
    }

    #[test]
    fn vms_with_rooms_or_unknown_rooms_are_never_deallocated() {
        let p = PoolPolicy::default();
        // A Standby VM someone reports rooms on is not surplus.
        let mut busy = buffer_row("b", VmState::Standby);
        busy.vm.rooms = 2;
        busy.vm.last_report_at = Some(t0());
        assert!(run_one(&busy, Some(up()), 60, &p).is_empty());
        // A drained VM never reported on since it was handed out stays.
        let mut unknown = row("m", VmState::MarkedForDeallocation, None);
        unknown.vm.claimed_at = Some(t0());
        assert!(run_one(&unknown, Some(up()), 90_000, &p).is_empty());
        // A failed VM that reported rooms is not deleted while it runs, whatever its provisioning
        // state; once a point read shows no power state (a create that never ran), it is.
        let mut failed = row("f", VmState::Failed, None);
        failed.vm.rooms = 4;
        assert!(run_one(&failed, Some(up()), 60, &p).is_empty());
        assert_eq!(
            run(
                std::slice::from_ref(&failed),
                &[(
                    &failed,
                    status(Provisioning::Failed("E".into()), Power::Unknown)
                )],
                60,
                &p
            ),
            ["delete f"]
        );
    }

    #[test]
    fn a_missing_public_ip_is_looked_for_again() {
        let p = PoolPolicy::default();
        let mut r = row("r", VmState::Running, None);
        r.vm.public_ip = None;
        assert_eq!(run_one(&r, Some(up()), 0, &p), ["findIp r"]);
    }

    #[test]
    fn failed_vms_are_deleted_then_forgotten() {
        let p = PoolPolicy::default();
        let mut failed = row("f", VmState::Failed, None);
        // Its game server said 0 rooms: no game on it.
        failed.vm.last_report_at = Some(t0());
        assert_eq!(run_one(&failed, Some(up()), 0, &p), ["delete f"]);
        let mut deleting = failed.clone();
        deleting.vm.operation = Some(Operation::Delete);
        assert!(run_one(&deleting, Some(up()), 30, &p).is_empty());
        assert_eq!(run_one(&deleting, Some(up()), 601, &p), ["delete f"]);
        assert_eq!(run_one(&deleting, None, 30, &p), ["forget f"]);
    }

    #[test]
    fn the_buffer_is_filled_by_starts_before_creates_within_the_caps() {
        let policy = PoolPolicy {
            min_standby: 4,
            max_vms: 10,
            max_creates_per_pass: 3,
            ..PoolPolicy::default()
        }
        .single_pool();
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
                .single_pool()
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
        }
        .single_pool();
        // 10 claims over the last 5 minutes: 2 per minute x 3 minutes to ready = 6.
        let claimed: Vec<Versioned> = (0..10)
            .map(|i| {
                let mut r = row(&format!("r{i}"), VmState::Running, None);
                r.vm.claimed_at = Some(t0() - Duration::seconds(25 * i));
                r.vm.rooms = 2;
                r.vm.last_report_at = Some(t0());
                r
            })
            .collect();
        let arm: Vec<_> = claimed.iter().map(|r| (r, up())).collect();
        let (actions, meta) = run_meta(&claimed, &arm, 60, &policy, &PoolMeta::default());
        assert_eq!(meta.pool("default").buffer_target, 6);
        assert_eq!(actions.iter().filter(|a| *a == "create").count(), 6);

        // Demand gone (claims out of the window) but within the cool-down: target kept.
        let standby: Vec<Versioned> = (0..6)
            .map(|i| buffer_row(&format!("s{i}"), VmState::Standby))
            .collect();
        let mut rows = claimed.clone();
        rows.extend(standby.iter().cloned());
        let arm: Vec<_> = rows.iter().map(|r| (r, up())).collect();
        let (actions, meta2) = run_meta(&rows, &arm, 600, &policy, &meta);
        assert_eq!(meta2.pool("default").buffer_target, 6);
        assert!(actions.is_empty(), "{actions:?}");

        // After the cool-down: back to the floor, surplus standby deallocated.
        let (actions, meta3) = run_meta(&rows, &arm, 60 + 900, &policy, &meta2);
        assert_eq!(meta3.pool("default").buffer_target, 1);
        assert_eq!(
            actions
                .iter()
                .filter(|a| a.starts_with("deallocate"))
                .count(),
            5,
            "{actions:?}"
        );
    }

    /// Each row's VM as its row says: deallocated, or up.
    fn as_rows_say(rows: &[Versioned]) -> Vec<(&Versioned, VmStatus)> {
        rows.iter()
            .map(|r| match r.vm.state {
                VmState::Deallocated => (r, off()),
                _ => (r, up()),
            })
            .collect()
    }

    #[test]
    fn after_a_rollout_old_idle_vms_are_deleted_only_once_the_new_buffer_is_ready() {
        let policy = PoolPolicy {
            min_standby: 2,
            ..PoolPolicy::default()
        }
        .single_pool();
        let old = |name: &str, state: VmState| {
            let mut r = buffer_row(name, state);
            r.vm.build = Some("0.9".into());
            r
        };
        let mut in_use = old("o-used", VmState::Standby);
        in_use.vm.rooms = 2;
        let mut unknown = old("o-unknown", VmState::Standby);
        unknown.vm.build = None;
        let mut running = old("o-running", VmState::Running);
        running.vm.purpose = Purpose::Matchmaker;
        let mut rows: Vec<Versioned> = (0..4)
            .map(|i| old(&format!("o{i}"), VmState::Standby))
            .collect();
        rows.extend((4..7).map(|i| old(&format!("o{i}"), VmState::Deallocated)));
        rows.extend([in_use.clone(), unknown.clone(), running.clone()]);
        let arm = as_rows_say(&rows);
        // The new build's buffer is not ready: it is filled first, nothing old goes.
        let acts = run(&rows, &arm, 60, &policy);
        assert_eq!(
            acts.iter().filter(|a| *a == "create").count(),
            2,
            "{acts:?}"
        );
        assert!(
            !acts
                .iter()
                .any(|a| a.starts_with("retire") || a.starts_with("deallocate")),
            "{acts:?}"
        );
        // Two of the current build ready: old idle VMs (standby and deallocated) are deleted,
        // five a pass, oldest first; the one in use, the running one and the one of unknown
        // build stay.
        rows.extend([
            buffer_row("n0", VmState::Standby),
            buffer_row("n1", VmState::Standby),
        ]);
        let arm = as_rows_say(&rows);
        let acts = run(&rows, &arm, 60, &policy);
        let gone: Vec<&String> = acts.iter().filter(|a| a.starts_with("retire")).collect();
        assert_eq!(gone.len(), MAX_OLD_BUILD_PER_PASS, "{acts:?}");
        assert_eq!(
            gone,
            [
                "retire o0",
                "retire o1",
                "retire o2",
                "retire o3",
                "retire o4"
            ],
            "the in-use one, the running one, the one of unknown build and the new ones stay"
        );
        // Only on a point read: a listing alone deletes nothing (it nominates the reads).
        let listed_only = run_listed_with(&rows, &arm, 60, &policy);
        assert!(
            !listed_only.iter().any(|a| a.starts_with("retire")),
            "{listed_only:?}"
        );
        let observed = Observed {
            listed: arm
                .iter()
                .map(|(r, s)| (r.vm.id.clone(), hint(s.clone())))
                .collect(),
            ..Observed::default()
        };
        let reads = reads_needed(
            &rows,
            &observed.listed,
            false,
            t0() + Duration::seconds(60),
            &policy,
        );
        assert_eq!(
            reads,
            ["o0", "o1", "o2", "o3", "o4"].map(|n| VmId::parse(n).unwrap()),
            "the oldest idle VMs of the old build are read, five a pass"
        );
        // A rollback: the old build is current again; nothing of it is deleted, and the
        // newer build's idle VMs are the old ones now.
        let mut back = policy.clone();
        back.pools = crate::config::Pools::from_specs(vec![crate::config::PoolSpec {
            build: "0.9".into(),
            ..policy.pools.all()[0].clone()
        }]);
        let acts = run(&rows, &arm, 60, &back);
        let old_now: Vec<&String> = acts.iter().filter(|a| a.starts_with("retire")).collect();
        assert_eq!(old_now, ["retire n0", "retire n1"], "{acts:?}");
        assert!(
            !acts
                .iter()
                .any(|a| a.contains("o-used") || a.contains("o-running")),
            "in use: {acts:?}"
        );
    }

    #[test]
    fn drained_vms_of_the_new_build_count_as_its_ready_buffer_for_the_old_builds_deletes() {
        let policy = PoolPolicy {
            min_standby: 2,
            ..PoolPolicy::default()
        }
        .single_pool();
        let mut old = buffer_row("o0", VmState::Standby);
        old.vm.build = Some("0.9".into());
        // Two drained VMs of the current build: CreateVM reclaims them first, so the buffer
        // is full and nothing is created; they serve at once, so the old one may go.
        let mut rows = vec![old];
        for name in ["m0", "m1"] {
            let mut m = row(name, VmState::MarkedForDeallocation, None);
            m.vm.rooms = 0;
            m.vm.last_report_at = Some(t0());
            rows.push(m);
        }
        let arm = as_rows_say(&rows);
        assert_eq!(run(&rows, &arm, 60, &policy), ["retire o0"]);
    }

    #[test]
    fn at_its_maximum_a_pool_deletes_old_idle_vms_to_make_room_for_the_new_buffer() {
        let policy = PoolPolicy {
            min_standby: 2,
            max_vms: 4,
            ..PoolPolicy::default()
        }
        .single_pool();
        let mut rows: Vec<Versioned> = (0..4)
            .map(|i| buffer_row(&format!("o{i}"), VmState::Standby))
            .collect();
        for r in &mut rows {
            r.vm.build = Some("0.9".into());
        }
        let arm = as_rows_say(&rows);
        // No room to create the new build's buffer: the old standby makes room.
        let acts = run(&rows, &arm, 60, &policy);
        assert_eq!(
            acts,
            ["retire o0", "retire o1", "retire o2", "retire o3"],
            "{acts:?}"
        );
        // With room, the new buffer is created first and nothing old goes yet.
        let roomy = PoolPolicy {
            max_vms: 10,
            ..policy.clone()
        }
        .single_pool();
        assert_eq!(run(&rows, &arm, 60, &roomy), ["create", "create"]);
    }

    #[test]
    fn a_vm_deallocated_longer_than_the_keep_is_deleted_on_a_point_read() {
        let policy = PoolPolicy {
            deallocated_keep: std::time::Duration::from_secs(3600),
            ..PoolPolicy::default()
        }
        .single_pool();
        let mut rows: Vec<Versioned> = (0..7)
            .map(|i| row(&format!("d{i}"), VmState::Deallocated, None))
            .collect();
        for r in &mut rows {
            r.vm.purpose = Purpose::Buffer;
        }
        let mut held = row("held", VmState::Deallocated, None);
        held.vm.claimed_at = Some(t0() + Duration::seconds(3600));
        rows.push(held);
        let arm: Vec<_> = rows.iter().map(|r| (r, off())).collect();
        // Younger than the keep: kept.
        let acts = run(&rows, &arm, 3599, &policy);
        assert!(!acts.iter().any(|a| a.starts_with("retire")), "{acts:?}");
        // Older: deleted, five a pass, the longest-deallocated first; the one its caller
        // still waits for stays. The buffer (2) takes two first, by starting them.
        let acts = run(&rows, &arm, 3600, &policy);
        let gone: Vec<&String> = acts.iter().filter(|a| a.starts_with("retire")).collect();
        assert_eq!(gone.len(), MAX_OLD_BUILD_PER_PASS, "{acts:?}");
        assert!(
            !acts
                .iter()
                .any(|a| a.contains("held") && a.starts_with("retire"))
        );
        for started in acts.iter().filter(|a| a.starts_with("start ")) {
            let id = started.trim_start_matches("start ");
            assert!(!gone.contains(&&format!("retire {id}")), "{acts:?}");
        }
        // Only on a point read showing it deallocated: a listing alone, or a read that shows
        // it running, deletes nothing.
        let listed = run_listed_with(&rows, &arm, 3600, &policy);
        assert!(
            !listed.iter().any(|a| a.starts_with("retire")),
            "{listed:?}"
        );
        let up_now: Vec<_> = rows.iter().map(|r| (r, up())).collect();
        let acts = run(&rows, &up_now, 3600, &policy);
        assert!(!acts.iter().any(|a| a.starts_with("retire")), "{acts:?}");
        // Zero keeps every one.
        let never = PoolPolicy {
            deallocated_keep: std::time::Duration::ZERO,
            ..policy.clone()
        };
        let acts = run(&rows, &arm, 86_400 * 30, &never);
        assert!(!acts.iter().any(|a| a.starts_with("retire")), "{acts:?}");
    }

    #[test]
    fn a_drained_vm_of_an_old_build_is_deleted_and_its_row_removed_once_gone() {
        let policy = PoolPolicy::default().single_pool();
        let mut drained = row("d", VmState::MarkedForDeallocation, None);
        drained.vm.build = Some("0.9".into());
        drained.vm.rooms = 0;
        drained.vm.last_report_at = Some(t0());
        let drain = i64::try_from(policy.drain_timeout.as_secs()).unwrap() + 1;
        assert_eq!(
            run(&[drained.clone()], &[(&drained, up())], drain, &policy),
            ["retire d"]
        );
        // Of the current build, the same VM is deallocated.
        let mut current = drained.clone();
        current.vm.build = Some(policy.pools.all()[0].build.clone());
        assert_eq!(
            run(&[current.clone()], &[(&current, up())], drain, &policy),
            ["deallocate d (drain timeout)"]
        );
        // Rooms unknown since it was handed out: never touched.
        let mut unknown = drained.clone();
        unknown.vm.last_report_at = None;
        assert!(run(&[unknown.clone()], &[(&unknown, up())], drain, &policy).is_empty());
        // The delete in flight: a VM that shows deallocated is not finished as deallocated;
        // the row goes only once a GET answers 404, and a delete that did not take is sent
        // again after the timeout.
        let mut deleting = drained.clone();
        deleting.vm = crate::domain::begin_retire(&drained.vm, t0()).unwrap();
        assert!(run(&[deleting.clone()], &[(&deleting, off())], 30, &policy).is_empty());
        assert_eq!(run(&[deleting.clone()], &[], 30, &policy), ["forget d"]);
        let timeout = i64::try_from(policy.deallocate_timeout.as_secs()).unwrap() + 1;
        assert_eq!(
            run(&[deleting.clone()], &[(&deleting, off())], timeout, &policy),
            ["delete d"]
        );
    }

    /// The default window follows a tenfold jump in demand within a minute (a shorter one
    /// would let a single claim raise the target; a longer one, 300 s, gave 3 here).
    #[test]
    fn with_the_defaults_a_jump_in_demand_raises_the_target_within_a_minute() {
        let policy = PoolPolicy {
            max_vms: 100_000,
            ..PoolPolicy::default()
        }
        .single_pool();
        let spec = &policy.pools.all()[0];
        let claimed = |name: String, secs_ago: i64| {
            let mut r = row(&name, VmState::Running, None);
            r.vm.claimed_at = Some(t0() - Duration::seconds(secs_ago));
            r
        };
        // One claim a minute, then ten a minute for the last minute.
        let rows: Vec<Versioned> = [90, 150]
            .into_iter()
            .chain((0..10).map(|i| 3 + 6 * i))
            .enumerate()
            .map(|(i, secs_ago)| claimed(format!("c{i}"), secs_ago))
            .collect();
        assert_eq!(demand_target(&rows, spec, t0(), &policy), 10);
        // A single claim leaves the target where it was.
        let one = [claimed("one".into(), 10)];
        assert_eq!(demand_target(&one, spec, t0(), &policy), 0);
    }

    /// Demand that repeats hourly: the VMs of the last burst are started again ahead of its
    /// return, are not launched once more as the burst takes them, and what it leaves goes
    /// after the cool-down.
    #[test]
    fn a_burst_that_repeats_is_covered_ahead_of_its_return() {
        let policy = PoolPolicy {
            max_vms: 100,
            max_creates_per_pass: 100,
            ready_estimate: std::time::Duration::from_secs(120),
            buffer_cooldown: std::time::Duration::from_secs(120),
            demand_period: std::time::Duration::from_secs(3600),
            ..PoolPolicy::default()
        }
        .single_pool();
        // 20 claims at 00:05 an hour ago; their VMs are deallocated now. The burst comes
        // back at 00:05 (300 s from t0).
        let last: Vec<Versioned> = (0..20)
            .map(|i| {
                let mut r = row(&format!("d{i:02}"), VmState::Deallocated, None);
                r.vm.claimed_at = Some(t0() - Duration::seconds(3300 - i % 5));
                r
            })
            .collect();
        let arm: Vec<_> = last.iter().map(|r| (r, off())).collect();
        let starts = |actions: &[String]| actions.iter().filter(|a| a.starts_with("start")).count();
        // More than two ready estimates before it: nothing yet.
        let (actions, meta) = run_meta(&last, &arm, 0, &policy, &PoolMeta::default());
        assert!(actions.is_empty(), "{actions:?}");
        // Within two ready estimates: every VM of the burst is started.
        let (actions, meta) = run_meta(&last, &arm, 90, &policy, &meta);
        assert_eq!(starts(&actions), 20, "{actions:?}");
        assert_eq!(
            meta.pool("default")
                .effective_buffer_target(&policy.pools.all()[0]),
            20
        );
        // Without a period, demand that came an hour ago asks for nothing.
        let plain = PoolPolicy {
            demand_period: std::time::Duration::ZERO,
            ..policy.clone()
        };
        let (actions, _) = run_meta(&last, &arm, 90, &plain, &PoolMeta::default());
        assert!(actions.is_empty(), "{actions:?}");

        // Ready in time: 20 standby.
        let standby = |i: usize| {
            let mut r = last[i].clone();
            r.vm.state = VmState::Standby;
            r
        };
        let ready: Vec<Versioned> = (0..20).map(standby).collect();
        let arm: Vec<_> = ready.iter().map(|r| (r, up())).collect();
        let (actions, meta) = run_meta(&ready, &arm, 280, &policy, &meta);
        assert!(actions.is_empty(), "{actions:?}");
        // The burst takes 12 of them: nothing is launched to replace them.
        let taken: Vec<Versioned> = (0..20)
            .map(|i| {
                let mut r = standby(i);
                if i < 12 {
                    r.vm.state = VmState::Running;
                    r.vm.claimed_at = Some(t0() + Duration::seconds(300 + (i as i64) % 3));
                }
                r
            })
            .collect();
        let arm: Vec<_> = taken.iter().map(|r| (r, up())).collect();
        let (actions, meta) = run_meta(&taken, &arm, 303, &policy, &meta);
        assert!(actions.is_empty(), "{actions:?}");
        // The 8 it left go once the cool-down since the forecast last asked has passed.
        let (actions, meta) = run_meta(&taken, &arm, 330, &policy, &meta);
        assert!(actions.is_empty(), "{actions:?}");
        let (actions, _) = run_meta(&taken, &arm, 280 + 121, &policy, &meta);
        assert_eq!(
            actions
                .iter()
                .filter(|a| a.ends_with("(surplus standby)"))
                .count(),
            8,
            "{actions:?}"
        );
    }

    #[test]
    fn a_burst_of_claims_does_not_count_as_a_rate() {
        let policy = PoolPolicy {
            max_vms: 100_000,
            demand_window: std::time::Duration::from_secs(300),
            ready_estimate: std::time::Duration::from_secs(180),
            ..PoolPolicy::default()
        }
        .single_pool();
        let spec = &policy.pools.all()[0];
        let claimed = |name: &str, secs_ago: i64| {
            let mut r = row(name, VmState::Running, None);
            r.vm.claimed_at = Some(t0() - Duration::seconds(secs_ago));
            r
        };
        // 60 claims within 3 seconds: no sustained rate.
        let burst: Vec<Versioned> = (0..60)
            .map(|i| claimed(&format!("b{i}"), 10 + i % 3))
            .collect();
        assert_eq!(demand_target(&burst, spec, t0(), &policy), 0);
        // One claim a minute for five minutes: 3. The burst on top counts as 3 claims.
        let steady: Vec<Versioned> = (0..5)
            .map(|i| claimed(&format!("s{i}"), 30 + 60 * i))
            .collect();
        assert_eq!(demand_target(&steady, spec, t0(), &policy), 3);
        let both: Vec<Versioned> = steady.iter().chain(&burst).cloned().collect();
        assert_eq!(demand_target(&both, spec, t0(), &policy), 4);
        // Poisson-like noise (2 claims in one slot, 1 in the next) is not cut.
        let noisy: Vec<Versioned> = [10, 20, 70, 130, 190, 250]
            .iter()
            .enumerate()
            .map(|(i, s)| claimed(&format!("n{i}"), *s))
            .collect();
        assert_eq!(demand_target(&noisy, spec, t0(), &policy), 3);
        // Demand that shows in two slots counts in full.
        let twice: Vec<Versioned> = (0..20)
            .map(|i| claimed(&format!("t{i}"), if i < 10 { 10 } else { 70 }))
            .collect();
        assert_eq!(demand_target(&twice, spec, t0(), &policy), 12);
        // A claim stamped ahead of this clock counts as the newest.
        let ahead: Vec<Versioned> = (0..10)
            .map(|i| claimed(&format!("a{i}"), if i < 5 { -5 } else { 70 }))
            .collect();
        assert_eq!(demand_target(&ahead, spec, t0(), &policy), 6);
    }

    #[test]
    fn drained_vms_that_reported_empty_count_towards_the_buffer() {
        let policy = PoolPolicy {
            min_standby: 2,
            ..PoolPolicy::default()
        }
        .single_pool();
        let drained_row = |name: &str, reported_secs: i64| {
            let mut r = row(name, VmState::MarkedForDeallocation, None);
            r.vm.rooms = 0;
            r.vm.last_report_at = Some(t0() + Duration::seconds(reported_secs));
            r
        };
        // Two drained VMs a CreateVM would reclaim: the buffer is full.
        let rows = [drained_row("m0", 0), drained_row("m1", 0)];
        let arm: Vec<_> = rows.iter().map(|r| (r, up())).collect();
        assert!(run(&rows, &arm, 60, &policy).is_empty());
        // One past the drain timeout leaves this pass: it does not count.
        let rows = [drained_row("m0", 0), drained_row("m1", 800)];
        let arm: Vec<_> = rows.iter().map(|r| (r, up())).collect();
        assert_eq!(
            run(&rows, &arm, 900, &policy),
            ["create", "deallocate m0 (drain timeout)"]
        );
        // A drained VM whose rooms are unknown does not count.
        let mut unknown = drained_row("u", 0);
        unknown.vm.last_report_at = None;
        let rows = [unknown.clone(), drained_row("m1", 0)];
        let arm: Vec<_> = rows.iter().map(|r| (r, up())).collect();
        assert_eq!(run(&rows, &arm, 60, &policy), ["create"]);
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
    fn no_starts_or_creates_while_the_breaker_is_open_nor_starts_while_they_are_held() {
        let policy = PoolPolicy {
            min_standby: 2,
            breaker_failures: 3,
            ..PoolPolicy::default()
        }
        .single_pool();
        let breaker = |b: crate::breaker::Breaker| {
            PoolMeta::default().with_breakers([("default".to_owned(), b)].into())
        };
        let open = breaker(crate::breaker::Breaker {
            consecutive_failures: 3,
            open_until: Some(t0() + Duration::seconds(600)),
            reason: Some("QuotaExceeded".into()),
            ..Default::default()
        });
        let d = row("d", VmState::Deallocated, None);
        let (actions, _) = run_meta(std::slice::from_ref(&d), &[(&d, off())], 60, &policy, &open);
        assert!(actions.is_empty(), "{actions:?}");
        // Starts held after a refused start: the deallocated VM is waited for, not replaced.
        let held = breaker(crate::breaker::Breaker {
            starts_held_until: Some(t0() + Duration::seconds(30)),
            ..Default::default()
        });
        let (actions, _) = run_meta(std::slice::from_ref(&d), &[(&d, off())], 10, &policy, &held);
        assert_eq!(actions, ["create"]);
        let (actions, _) = run_meta(std::slice::from_ref(&d), &[(&d, off())], 30, &policy, &held);
        assert_eq!(actions, ["start d", "create"]);
        // After the cool-down creates resume (one more refusal opens it again at once).
        let (actions, _) = run_meta(&[], &[], 601, &policy, &open);
        assert_eq!(actions, ["create", "create"]);
        // Each pool has its own: another pool's open breaker stops nothing here.
        let elsewhere =
            PoolMeta::default().with_breakers([("eu".to_owned(), open.breaker("default"))].into());
        let (actions, _) = run_meta(&[], &[], 60, &policy, &elsewhere);
        assert_eq!(actions, ["create", "create"]);
    }

    /// Like `run`, but the statuses are shown only by a listing or a sweep (no point read).
    fn run_listed(rows: &[Versioned], arm: &[(&Versioned, VmStatus)], secs: i64) -> Vec<String> {
        run_listed_with(rows, arm, secs, &PoolPolicy::default())
    }

    fn run_listed_with(
        rows: &[Versioned],
        arm: &[(&Versioned, VmStatus)],
        secs: i64,
        policy: &PoolPolicy,
    ) -> Vec<String> {
        let observed = Observed {
            listed: arm
                .iter()
                .map(|(r, s)| (r.vm.id.clone(), hint(s.clone())))
                .collect(),
            ..Observed::default()
        };
        let p = plan(
            rows,
            &observed,
            t0() + Duration::seconds(secs),
            policy,
            &PoolMeta::default(),
        );
        p.actions.iter().map(kind).collect()
    }

    #[test]
    fn a_listing_or_sweep_alone_never_changes_a_row_it_only_nominates_a_point_read() {
        let p = PoolPolicy::default();
        let running = row("r", VmState::Running, None);
        let standby = buffer_row("s", VmState::Standby);
        let deallocated = row("d", VmState::Deallocated, None);
        let mut failed = row("f", VmState::Failed, None);
        failed.vm.last_report_at = Some(t0());
        let stopped = status(Provisioning::Succeeded, Power::Stopped);
        let extension = status(
            Provisioning::Failed("VMExtensionProvisioningError".into()),
            Power::Running,
        );
        let cases: [(&Versioned, VmStatus); 6] = [
            (&running, off()),
            (&standby, off()),
            (&standby, stopped.clone()),
            (&deallocated, up()),
            (&running, extension.clone()),
            (
                &failed,
                status(Provisioning::Failed("E".into()), Power::Deallocated),
            ),
        ];
        for (r, shown) in cases {
            let rows = std::slice::from_ref(r);
            let acted: Vec<String> = run_listed(rows, &[(r, shown.clone())], 3600)
                .into_iter()
                // Buffer upkeep is not drift repair.
                .filter(|a| !a.starts_with("start") && !a.ends_with("(surplus standby)"))
                .collect();
            assert!(acted.is_empty(), "{} {shown:?}: {acted:?}", r.vm.state);
            let listed: HashMap<VmId, Observation> =
                [(r.vm.id.clone(), hint(shown.clone()))].into();
            assert_eq!(
                reads_needed(rows, &listed, false, t0() + Duration::seconds(3600), &p),
                std::slice::from_ref(&r.vm.id),
                "{} {shown:?} is nominated for a point read",
                r.vm.state
            );
        }
        // A settled row the listing agrees with is not read.
        let listed: HashMap<VmId, Observation> = [(running.vm.id.clone(), hint(up()))].into();
        assert!(
            reads_needed(
                std::slice::from_ref(&running),
                &listed,
                false,
                t0() + Duration::seconds(3600),
                &p
            )
            .is_empty()
        );
        // The point read decides, and only with what it shows.
        assert_eq!(
            run_one(&running, Some(off()), 3600, &p),
            ["correct r to Deallocated"]
        );
        assert!(run_one(&running, Some(up()), 3600, &p).is_empty());
        assert_eq!(
            run_one(&deallocated, Some(up()), 3600, &p),
            ["correct d to Standby"]
        );
    }

    #[test]
    fn a_vm_running_with_a_failed_model_is_kept_while_a_game_may_be_on_it() {
        let p = PoolPolicy::default();
        let failed_running = status(
            Provisioning::Failed("VMExtensionProvisioningError: boom".into()),
            Power::Running,
        );
        // In use: marked unhealthy, never deleted nor deallocated.
        let mut busy = row("b", VmState::Running, None);
        busy.vm.rooms = 3;
        busy.vm.last_report_at = Some(t0());
        assert_eq!(
            run_one(&busy, Some(failed_running.clone()), 60, &p),
            ["unhealthy b"]
        );
        // Handed out with rooms unknown: the same.
        let mut unknown = row("u", VmState::MarkedForDeallocation, None);
        unknown.vm.claimed_at = Some(t0());
        assert_eq!(
            run_one(&unknown, Some(failed_running.clone()), 60, &p),
            ["unhealthy u"]
        );
        // Once marked unhealthy nothing more happens, and it is never surplus or handed out.
        let mut flagged = busy.clone();
        flagged.vm.unhealthy =
            Some("provisioning failed while running: VMExtensionProvisioningError: boom".into());
        assert!(run_one(&flagged, Some(failed_running.clone()), 90_000, &p).is_empty());
        assert_eq!(crate::domain::ClaimKind::of(&flagged.vm), None);
        // Healthy again when ARM says so.
        assert_eq!(run_one(&flagged, Some(up()), 60, &p), ["healthy b"]);
        // A buffer VM nobody holds, or a drained one, is cleaned up.
        let idle = buffer_row("s", VmState::Standby);
        assert_eq!(
            run_one(&idle, Some(failed_running.clone()), 60, &p),
            ["fail s"]
        );
        // A creating VM someone holds completes (unhealthy); one for the buffer fails.
        let mut started = row("c", VmState::Creating, Some(Operation::Start));
        started.vm.claimed_at = Some(t0());
        assert_eq!(
            run_one(&started, Some(failed_running.clone()), 60, &p),
            ["complete c"]
        );
        let spare = buffer_row("x", VmState::Creating);
        assert_eq!(
            run_one(&spare, Some(failed_running.clone()), 60, &p),
            ["fail x"]
        );
        // A Failed VM that runs with rooms, or unknown rooms, is never deleted; once a point
        // read shows it is not running, or its rooms are reported 0, it is.
        let mut failed = row("f", VmState::Failed, None);
        failed.vm.rooms = 2;
        failed.vm.last_report_at = Some(t0());
        assert!(run_one(&failed, Some(failed_running.clone()), 60, &p).is_empty());
        let stopped = status(Provisioning::Failed("E".into()), Power::Deallocated);
        assert_eq!(run_one(&failed, Some(stopped), 60, &p), ["delete f"]);
        failed.vm.rooms = 0;
        assert_eq!(run_one(&failed, Some(failed_running), 60, &p), ["delete f"]);
    }

    #[test]
    fn an_answer_about_scope_or_access_holds_every_destructive_step() {
        let p = PoolPolicy::default();
        let gone = row("g", VmState::Running, None);
        let off_row = row("o", VmState::Running, None);
        let mut drained = row("m", VmState::MarkedForDeallocation, None);
        drained.vm.last_report_at = Some(t0());
        let mut failed = row("f", VmState::Failed, None);
        failed.vm.last_report_at = Some(t0());
        let creating = buffer_row("c", VmState::Creating);
        let rows = [
            gone.clone(),
            off_row.clone(),
            drained.clone(),
            failed.clone(),
            creating.clone(),
        ];
        let arm = [
            (&off_row, off()),
            (&drained, up()),
            (
                &failed,
                status(Provisioning::Failed("E".into()), Power::Deallocated),
            ),
            (&creating, up()),
        ];
        let now = 3600;
        assert_eq!(
            run(&rows, &arm, now, &p),
            [
                "fail g",
                "correct o to Deallocated",
                "delete f",
                "complete c",
                "deallocate m (drain timeout)"
            ]
        );
        let observed = Observed {
            reads: rows
                .iter()
                .map(|r| {
                    let s = arm
                        .iter()
                        .find(|(a, _)| a.vm.id == r.vm.id)
                        .map(|(_, s)| s.clone());
                    (r.vm.id.clone(), PointRead::assumed(r.vm.id.clone(), s))
                })
                .collect(),
            suspect: Some("a point read of x: ResourceGroupNotFound".into()),
            ..Observed::default()
        };
        let held = plan(
            &rows,
            &observed,
            t0() + Duration::seconds(now),
            &p,
            &PoolMeta::default(),
        );
        assert_eq!(
            held.actions.iter().map(kind).collect::<Vec<_>>(),
            ["complete c"]
        );
        assert!(held.meta.observation_suspect());
    }

    #[test]
    fn under_the_brake_the_drain_safety_net_and_unused_claims_leave_missing_vms_alone() {
        let p = PoolPolicy::default();
        let mut drained = row("m", VmState::MarkedForDeallocation, None);
        drained.vm.last_report_at = Some(t0());
        let mut handed = row("h", VmState::Running, None);
        handed.vm.claimed_at = Some(t0());
        let rows = [drained.clone(), handed.clone()];
        // Missing from the view (the brake holds, nothing read): nothing.
        assert!(run_missing(&rows, 90_000, &p).is_empty());
        // In the view: both act.
        assert_eq!(
            run_listed(&rows, &[(&drained, up()), (&handed, up())], 90_000),
            ["unclaim h", "deallocate m (drain timeout)"]
        );
    }
}
