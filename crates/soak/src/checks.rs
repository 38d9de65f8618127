//! The invariants, checked about every second while the soak runs and once more at the end.
//!
//! 1 is judged in the model when CreateVM answers (`model.rs`); the others here:
//! - 2 from the table (GetPoolStatus) and from ARM (the fake's own list API);
//! - 3 and 8 from the fake's request log against the rooms the model reported and the VMs
//!   its matches hold and saw `Running`;
//! - 4 and 5 once the faults have stopped;
//! - 6 from the table against the model's holds;
//! - 7 from the instances' JSON logs;
//! - 8 from the fake's request log: a VM whose start ARM refused is never deleted;
//! - 10 in the model when CreateVM answers (`model.rs`);
//! - 11 from the table (rows by pool) and from ARM (VMs by their `vmpool-pool` tag);
//! - 12 from the fake's request log against the model's record of when each VM was in use.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::procs::{FAKE_SUBSCRIPTION, FAKE_TOKEN};
use crate::state::{Answer, Fate, Report, Row, Shared, inv, rfc};

/// States a row may rest in.
const STABLE: [&str; 4] = ["Running", "Standby", "Deallocated", "MarkedForDeallocation"];

/// How far before a destructive request was seen that vmpool may have decided it: a poll
/// interval, a reconcile pass and the longest scripted ARM delay.
const DECISION_WINDOW: time::Duration = time::Duration::seconds(8);

/// An orphan must still be one this much later (a row and its VM are never written at the
/// same instant, and a listing is read before the table).
const ORPHAN_CONFIRM: time::Duration = time::Duration::seconds(3);

/// The checkers' memory between rounds.
#[derive(Debug, Default)]
pub struct Checker {
    table_over_before: bool,
    table_over_reported: bool,
    unstable_since: HashMap<String, OffsetDateTime>,
    stable_reported: HashSet<String>,
    claim_reported: HashSet<(String, i64)>,
    orphan_seen: HashMap<String, OffsetDateTime>,
    orphan_reported: HashSet<String>,
    requests_seen: usize,
    /// VMs a start of which ARM refused (409): they exist, deallocated, and are never
    /// deleted for it.
    start_refused: HashSet<String>,
    requests_polled_at: Option<OffsetDateTime>,
    /// When the previous read of the request log was sent: a request first seen in this
    /// read came after it.
    requests_sent_at: Option<OffsetDateTime>,
    /// Pools over their `maxVms` in the previous table read, and those already reported.
    pool_over_before: HashSet<String>,
    pool_over_reported: HashSet<String>,
    /// Each VM's pool and build, from its ARM tags (lowercase name).
    tags: HashMap<String, (String, String)>,
    /// ARM DELETEs accepted, by the VM's pool and build.
    pub deletes: std::collections::BTreeMap<(String, String), u64>,
    /// Table reads after the rollout in which its pool kept idle VMs of the old build while
    /// it could have filled its buffer and did not (see [`Checker::rollout_waits`]), of all
    /// reads after it, and when the first such read was.
    pub waits: (u64, u64, Option<OffsetDateTime>),
    /// Since when each pool has been waiting so.
    wait_since: HashMap<String, OffsetDateTime>,
    /// VMs any table read showed `Failed`.
    failed_seen: HashSet<String>,
    /// Invariant 12: DELETEs of VMs in use that their match never saw `Running`, judged at
    /// the next table read (excused if the row shows `Failed` by then).
    deletes_pending: Vec<(String, String)>,
    logs: Vec<LogFile>,
    passes: Vec<Pass>,
    pass_lines: u64,
}

#[derive(Debug)]
struct LogFile {
    instance: usize,
    path: PathBuf,
    offset: u64,
    partial: String,
}

#[derive(Debug, Clone)]
struct Pass {
    instance: usize,
    started: OffsetDateTime,
    finished: OffsetDateTime,
}

impl Checker {
    /// A checker reading the instances' logs at `logs` (index = instance).
    pub fn new(logs: Vec<PathBuf>) -> Self {
        Checker {
            logs: logs
                .into_iter()
                .enumerate()
                .map(|(instance, path)| LogFile {
                    instance,
                    path,
                    offset: 0,
                    partial: String::new(),
                })
                .collect(),
            ..Checker::default()
        }
    }

    /// Checks every second until the traffic stops.
    pub async fn run(mut self, sh: Arc<Shared>) -> Self {
        let mut round: u64 = 0;
        while !sh.stopping() {
            self.round(&sh, round).await;
            round += 1;
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        self
    }

    /// One round: the table every time, ARM and orphans every other round, the request log
    /// every time, the logs every fifth.
    pub async fn round(&mut self, sh: &Shared, round: u64) {
        self.table(sh).await;
        if round % 2 == 0 {
            self.arm(sh).await;
        }
        self.requests(sh).await;
        if round % 5 == 0 {
            self.logs(sh);
        }
    }

    /// The end: everything once more, then the verdict on the logs.
    pub async fn finish(&mut self, sh: &Shared) {
        self.table(sh).await;
        self.arm(sh).await;
        self.requests(sh).await;
        // DELETEs found just now are judged against one more read of the table.
        if !self.deletes_pending.is_empty() {
            self.table(sh).await;
        }
        self.logs(sh);
        let old: Vec<(String, String)> = sh
            .settings
            .pools
            .iter()
            .filter(|p| p.rollout_to.is_some())
            .map(|p| (p.name.to_owned(), p.build.to_owned()))
            .collect();
        if !old.iter().any(|k| self.deletes.contains_key(k)) {
            sh.not_observable(
                inv::NO_DELETE_HELD,
                format!(
                    "ARM accepted no DELETE of a VM of the build rolled out from ({})",
                    old.iter()
                        .map(|(p, b)| format!("pool {p} build {b}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if self.passes.is_empty() {
            sh.not_observable(
                inv::ONE_PASS,
                format!(
                    "no \"reconcile pass\" log line carries pass_started_at and pass_finished_at ({} \"reconcile pass\" lines seen)",
                    self.pass_lines
                ),
            );
        }
    }

    async fn table(&mut self, sh: &Shared) {
        let Some(rows) = sh.read_table().await else {
            return;
        };
        sh.set_snapshot(rows.clone());
        self.failed_seen.extend(
            rows.iter()
                .filter(|r| r.state == "Failed")
                .map(|r| r.vm.clone()),
        );
        if !self.deletes_pending.is_empty() {
            // vmpool's logs say when it found a VM `Failed`, however short the row stayed so.
            self.logs(sh);
        }
        self.judge_pending_deletes(sh);
        let now = OffsetDateTime::now_utc();
        self.max_vms_in_table(sh, &rows);
        self.pool_caps_in_table(sh, &rows);
        self.rollout_waits(sh, &rows, now);
        self.claim_timeout(sh, &rows, now);
        if sh.quiet_since().is_some() {
            self.stable(sh, &rows, now);
        }
    }

    /// Invariant 2, table side. A claimer writes its row before it counts and gives the claim
    /// back if the pool is over, so one read may catch max + 1 for an instant: an excess
    /// counts when two reads a second apart both show it.
    fn max_vms_in_table(&mut self, sh: &Shared, rows: &[Row]) {
        let max = sh.settings.max_vms;
        let active: Vec<&Row> = rows.iter().filter(|r| r.state != "Deallocated").collect();
        sh.checked(inv::MAX_VMS, 1);
        if active.len() > max {
            if self.table_over_before && !self.table_over_reported {
                self.table_over_reported = true;
                let states: Vec<String> = active
                    .iter()
                    .map(|r| format!("{} {}", r.vm, r.state))
                    .collect();
                sh.violation(
                    inv::MAX_VMS,
                    format!(
                        "the table has {} VMs not Deallocated (max {max}) in two reads: {}",
                        active.len(),
                        states.join(", ")
                    ),
                );
            }
            self.table_over_before = true;
        } else {
            self.table_over_before = false;
            self.table_over_reported = false;
        }
    }

    /// Invariant 11, table side: each pool's rows not `Deallocated` against its `maxVms`, with
    /// the same allowance as invariant 2 (an excess counts when two reads in a row show it).
    fn pool_caps_in_table(&mut self, sh: &Shared, rows: &[Row]) {
        let mut over = HashSet::new();
        for pool in &sh.settings.pools {
            let active: Vec<&Row> = rows
                .iter()
                .filter(|r| r.pool == pool.name && r.state != "Deallocated")
                .collect();
            sh.checked(inv::POOL_CAPS, 1);
            if active.len() <= pool.max_vms {
                self.pool_over_reported.remove(pool.name);
                continue;
            }
            over.insert(pool.name.to_owned());
            if self.pool_over_before.contains(pool.name)
                && self.pool_over_reported.insert(pool.name.to_owned())
            {
                let states: Vec<String> = active
                    .iter()
                    .map(|r| format!("{} {}", r.vm, r.state))
                    .collect();
                sh.violation(
                    inv::POOL_CAPS,
                    format!(
                        "the table has {} VMs of pool {} not Deallocated (maxVms {}) in two reads: {}",
                        active.len(),
                        pool.name,
                        pool.max_vms,
                        states.join(", ")
                    ),
                );
            }
        }
        self.pool_over_before = over;
    }

    /// Not an invariant, a figure for the summary: once the faults have stopped, after the
    /// rollout, reads in which a rolled pool has kept for three passes idle VMs of its old build
    /// (`Standby`, `Deallocated`) while its buffer of the new build is short (fewer `Standby`
    /// VMs than its target), nothing of the new build is `Creating`, and neither its `maxVms`
    /// nor `VMPOOL_MAX_VMS` is reached: the pool could create, and would then delete the old
    /// VMs, but does neither. Each such read is written to the events with the pool's counts.
    fn rollout_waits(&mut self, sh: &Shared, rows: &[Row], now: OffsetDateTime) {
        // Once the faults have stopped and a breaker they opened has closed again.
        let settled = sh
            .quiet_since()
            .is_some_and(|q| now - q >= time::Duration::seconds(15));
        if sh.rollout().finished.is_none() || !settled {
            return;
        }
        let targets = sh.targets();
        let active = rows.iter().filter(|r| r.state != "Deallocated").count();
        for pool in sh.settings.pools.iter().filter(|p| p.rollout_to.is_some()) {
            let Some(target) = targets.get(pool.name).copied() else {
                continue;
            };
            let current = pool.build_at(true);
            let mine: Vec<&Row> = rows.iter().filter(|r| r.pool == pool.name).collect();
            let count = |new: bool, states: &[&str]| {
                mine.iter()
                    .filter(|r| (r.build.as_deref() == Some(current)) == new)
                    .filter(|r| states.contains(&r.state.as_str()))
                    .count()
            };
            let old_idle = count(false, &["Standby", "Deallocated"]);
            let standby = count(true, &["Standby"]);
            let creating = count(true, &["Creating"]);
            let drained = mine
                .iter()
                .filter(|r| r.build.as_deref() == Some(current))
                .filter(|r| r.state == "MarkedForDeallocation" && r.rooms == 0)
                .count();
            let in_pool = mine.iter().filter(|r| r.state != "Deallocated").count();
            self.waits.1 += 1;
            let waiting = old_idle > 0
                && (standby as u64) < target
                && creating == 0
                && in_pool < pool.max_vms
                && active < sh.settings.max_vms;
            if !waiting {
                self.wait_since.remove(pool.name);
                continue;
            }
            // A pass may simply not have come yet: counted once it lasts three passes.
            let since = *self.wait_since.entry(pool.name.to_owned()).or_insert(now);
            if now - since >= time::Duration::seconds(6) {
                self.waits.0 += 1;
                self.waits.2.get_or_insert(now);
                sh.event(format_args!(
                    "rollout waits: pool {} keeps {old_idle} idle VMs of the old build; build {current}: {standby} Standby of target {target}, none Creating, {drained} MarkedForDeallocation showing 0 rooms; {in_pool} of maxVms {} and {active} of VMPOOL_MAX_VMS {} not Deallocated",
                    pool.name,
                    pool.max_vms,
                    sh.settings.max_vms
                ));
            }
        }
    }

    /// Invariant 6: a `Running` VM the matchmaker does not hold goes back to the pool within
    /// the claim timeout (plus a few reconcile passes).
    fn claim_timeout(&mut self, sh: &Shared, rows: &[Row], now: OffsetDateTime) {
        let window = sh.rollout();
        let m = sh.model();
        for r in rows.iter().filter(|r| r.state == "Running") {
            sh.checked(inv::CLAIM, 1);
            // A VM the faults deleted is no matchmaker VM: invariants 4 and 5 judge its row.
            if m.owned(&r.vm) || m.deleted_behind.contains(&r.vm) {
                continue;
            }
            let Some(changed) = r.state_changed_at else {
                continue;
            };
            let released = m.released_at.get(&r.vm).copied();
            let since = released.map_or(changed, |released| changed.max(released));
            let key = (r.vm.clone(), changed.unix_timestamp());
            // A graceful stop does not hand the reconcile lease over: while the rolling
            // restart runs, the holder's lease, and that of the instance that took over
            // after it, may each have to run out.
            let rolling = window.started.is_some_and(|s| s <= now)
                && window.finished.is_none_or(|f| f >= since);
            let slack = sh.settings.claim_slack_secs
                + if rolling {
                    sh.settings.rollout_slack_secs
                } else {
                    0
                };
            let limit = time::Duration::seconds((sh.settings.claim_timeout_secs + slack) as i64);
            if now - since > limit && !self.claim_reported.contains(&key) {
                self.claim_reported.insert(key);
                let history = match released {
                    Some(t) if t > changed => {
                        format!("the matchmaker let go of it at {}", rfc(t))
                    }
                    Some(_) => format!(
                        "handed out again at {} with the answer lost (client timeout or killed instance)",
                        rfc(changed)
                    ),
                    None => format!(
                        "Running since {}; no match ever got it (the CreateVM answer was lost: client timeout or killed instance)",
                        rfc(changed)
                    ),
                };
                sh.violation(
                    inv::CLAIM,
                    format!(
                        "{} is Running, held by no match, for {} s (claim timeout {} s + {} s); {history}",
                        r.vm,
                        (now - since).whole_seconds(),
                        sh.settings.claim_timeout_secs,
                        slack
                    ),
                );
            }
        }
    }

    /// Invariant 5: once the faults stop, every row reaches a stable state (or is removed)
    /// within the bound, counted from when the faults stopped or it was first seen unstable.
    fn stable(&mut self, sh: &Shared, rows: &[Row], now: OffsetDateTime) {
        let bound = time::Duration::try_from(sh.settings.stable_bound).unwrap_or_default();
        let present: HashSet<&str> = rows.iter().map(|r| r.vm.as_str()).collect();
        self.unstable_since
            .retain(|vm, _| present.contains(vm.as_str()));
        for r in rows {
            sh.checked(inv::STABLE, 1);
            if STABLE.contains(&r.state.as_str()) {
                self.unstable_since.remove(&r.vm);
                continue;
            }
            let since = *self.unstable_since.entry(r.vm.clone()).or_insert(now);
            if now - since > bound && self.stable_reported.insert(r.vm.clone()) {
                sh.violation(
                    inv::STABLE,
                    format!(
                        "{} still {} {} s after the faults stopped (bound {} s)",
                        r.vm,
                        r.state,
                        (now - since).whole_seconds(),
                        bound.whole_seconds()
                    ),
                );
            }
        }
    }

    /// Invariants 2 and 11 on ARM's side, and invariant 4 once the faults have settled.
    async fn arm(&mut self, sh: &Shared) {
        // The tags first: a VM listed by power state below has its pool already (a VM's
        // tags never change, so what one listing showed holds after it).
        if let Some(tagged) = list_arm_tags(sh).await {
            self.tags.extend(tagged);
        }
        let Some(vms) = list_arm(sh).await else {
            return;
        };
        self.pool_caps_in_arm(sh, &vms);
        let max = sh.settings.max_vms;
        let live: Vec<&(String, bool)> = vms.iter().filter(|(_, dealloc)| !dealloc).collect();
        sh.checked(inv::MAX_VMS, 1);
        if live.len() > max {
            let names: Vec<&str> = live.iter().map(|(n, _)| n.as_str()).collect();
            sh.violation(
                inv::MAX_VMS,
                format!(
                    "ARM lists {} VMs not deallocated (max {max}): {}",
                    live.len(),
                    names.join(", ")
                ),
            );
        }
        let now = OffsetDateTime::now_utc();
        let settled = sh.quiet_since().is_some_and(|q| {
            now - q >= time::Duration::try_from(sh.settings.orphan_settle).unwrap_or_default()
        });
        if !settled {
            return;
        }
        // The table is read after the listing: a VM created in between has its row already.
        let Some(rows) = sh.read_table().await else {
            return;
        };
        let known: HashSet<String> = rows.iter().map(|r| r.vm.to_ascii_lowercase()).collect();
        let mut orphans = HashSet::new();
        for (name, _) in &live {
            sh.checked(inv::ORPHANS, 1);
            let key = name.to_ascii_lowercase();
            if known.contains(&key) {
                continue;
            }
            orphans.insert(key.clone());
            let first = *self.orphan_seen.entry(key.clone()).or_insert(now);
            if now - first >= ORPHAN_CONFIRM && self.orphan_reported.insert(key) {
                sh.violation(
                    inv::ORPHANS,
                    format!(
                        "{name} runs in ARM with no row in the table (seen for {} s)",
                        (now - first).whole_seconds()
                    ),
                );
            }
        }
        self.orphan_seen.retain(|k, _| orphans.contains(k));
    }

    /// Invariant 11, ARM side: each pool's VMs not deallocated (by their `vmpool-pool` tag)
    /// against its `maxVms`, as strictly as invariant 2 judges ARM's listing.
    fn pool_caps_in_arm(&self, sh: &Shared, vms: &[(String, bool)]) {
        for pool in &sh.settings.pools {
            let live: Vec<&str> = vms
                .iter()
                .filter(|(name, dealloc)| {
                    !dealloc
                        && self
                            .tags
                            .get(&name.to_ascii_lowercase())
                            .is_some_and(|(p, _)| p == pool.name)
                })
                .map(|(name, _)| name.as_str())
                .collect();
            sh.checked(inv::POOL_CAPS, 1);
            if live.len() > pool.max_vms {
                sh.violation(
                    inv::POOL_CAPS,
                    format!(
                        "ARM lists {} VMs of pool {} not deallocated (maxVms {}): {}",
                        live.len(),
                        pool.name,
                        pool.max_vms,
                        live.join(", ")
                    ),
                );
            }
        }
    }

    /// Invariant 12 for the DELETEs waiting on a table read: excused when vmpool found the
    /// VM `Failed`.
    fn judge_pending_deletes(&mut self, sh: &Shared) {
        for (vm, what) in std::mem::take(&mut self.deletes_pending) {
            if !self.failed_seen.contains(&vm) {
                sh.violation(inv::NO_DELETE_HELD, what);
            }
        }
    }

    /// Whether `vm`'s tags show a build its pool no longer has as current (the rollout has
    /// begun).
    fn retired(&self, sh: &Shared, vm: &str) -> bool {
        let rolled = sh.rollout().started.is_some();
        self.tags
            .get(&vm.to_ascii_lowercase())
            .is_some_and(|(pool, build)| {
                sh.settings
                    .pools
                    .iter()
                    .any(|p| p.name == pool && p.build_at(rolled) != build)
            })
    }

    /// Invariant 12: an ARM DELETE accepted for a VM the matchmaker used over the whole time
    /// in which the DELETE may have come (from the previous read of the request log to this
    /// one's answer).
    fn delete_in_use(&mut self, sh: &Shared, vm: &str, status: u64, from: OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        let (pool, build) = self
            .tags
            .get(&vm.to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| ("?".into(), "?".into()));
        *self
            .deletes
            .entry((pool.clone(), build.clone()))
            .or_default() += 1;
        sh.checked(inv::NO_DELETE_HELD, 1);
        let m = sh.model();
        if m.deleted_behind.contains(vm) {
            return;
        }
        let Some(u) = m.used_throughout(vm, from, now) else {
            return;
        };
        let what = format!(
            "ARM accepted DeleteVm of {vm} (pool {pool}, build {build}; {status}) between {} and {} while match {} used it (since {}; rooms last reported {})",
            rfc(from),
            rfc(now),
            u.id,
            rfc(u.from),
            m.rooms
                .get(vm)
                .map_or_else(|| "never".to_owned(), u32::to_string)
        );
        // A VM whose provisioning failed never ran a game: vmpool deletes it once a point
        // read shows it `Failed` and not running, even though a match was handed it while it
        // was `Creating`. One its match saw `Running` may have a game on it: never excused.
        if !m.playing.contains(vm) {
            drop(m);
            if !self.failed_seen.contains(vm) {
                self.deletes_pending.push((vm.to_owned(), what));
            }
            return;
        }
        drop(m);
        sh.violation(inv::NO_DELETE_HELD, what);
    }

    /// Invariant 3: every deallocate, power-off or delete ARM accepted, against the rooms the
    /// matchmaker had reported for that VM when vmpool may have decided it.
    async fn requests(&mut self, sh: &Shared) {
        let sent = OffsetDateTime::now_utc();
        let req = sh.http.get(format!("{}/_fake/requests", sh.fake_base));
        let Answer::Status(200, body) = sh.send(req, Duration::from_secs(10)).await else {
            return;
        };
        let since = self.requests_sent_at.replace(sent).unwrap_or(sent);
        let now = OffsetDateTime::now_utc();
        let from = self.requests_polled_at.unwrap_or(now) - DECISION_WINDOW;
        self.requests_polled_at = Some(now);
        let all = body
            .get("requests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let new = all.get(self.requests_seen..).unwrap_or_default();
        self.requests_seen = all.len();
        // Invariant 8 is checked for every VM a match plays on, at every poll.
        let playing = sh.model().playing.len() as u64;
        sh.checked(inv::NO_DELETE_IN_USE, playing);
        for r in new {
            let op = r.get("op").and_then(Value::as_str).unwrap_or_default();
            let status = r.get("status").and_then(Value::as_u64).unwrap_or_default();
            let vm = r.get("path").and_then(Value::as_str).and_then(vm_from_path);
            if let Some(vm) = &vm {
                if op == "Start" && status == 409 {
                    self.start_refused.insert(vm.clone());
                }
                if op == "DeleteVm" && (200..300).contains(&status) && status != 204 {
                    self.delete_in_use(sh, vm, status, since);
                    sh.checked(inv::NO_DELETE_AFTER_REFUSAL, 1);
                    // After a rollout, an idle VM of the build rolled out from is deleted
                    // whatever became of its starts: the refusal is not why it goes.
                    if self.start_refused.contains(vm) && !self.retired(sh, vm) {
                        sh.violation(
                            inv::NO_DELETE_AFTER_REFUSAL,
                            format!("ARM accepted DeleteVm of {vm} ({status}) after a start of it was refused"),
                        );
                    }
                }
            }
            let destroys = matches!(op, "Deallocate" | "PowerOff" | "DeleteVm");
            // A 204 to a DELETE means the VM was already gone: nothing was destroyed.
            if !destroys || !(200..300).contains(&status) || status == 204 {
                continue;
            }
            let Some(vm) = r.get("path").and_then(Value::as_str).and_then(vm_from_path) else {
                continue;
            };
            let m = sh.model();
            if m.deleted_behind.contains(&vm) {
                continue;
            }
            sh.checked(inv::ROOMS, 1);
            let reports = m.reports.get(&vm).map(Vec::as_slice).unwrap_or_default();
            let candidates = rooms_candidates(reports, from, now);
            // Invariant 8: a VM a match holds and saw `Running` runs in ARM, so a DELETE of it
            // is allowed only once every report it may have been decided on said 0.
            if op == "DeleteVm" {
                let empty = !candidates.is_empty() && candidates.iter().all(|rooms| *rooms == 0);
                if m.owned(&vm) && m.playing.contains(&vm) && !empty {
                    let rooms = if candidates.is_empty() {
                        "unknown (no report since it was handed out)".to_owned()
                    } else {
                        candidates
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    sh.violation(
                        inv::NO_DELETE_IN_USE,
                        format!(
                            "ARM accepted DeleteVm of {vm} ({status}) while the matchmaker held it with rooms {rooms}"
                        ),
                    );
                }
            }
            if !candidates.is_empty() && candidates.iter().all(|rooms| *rooms > 0) {
                let text: Vec<String> = candidates.iter().map(u32::to_string).collect();
                drop(m);
                sh.violation(
                    inv::ROOMS,
                    format!(
                        "ARM accepted {op} of {vm} ({status}) while the matchmaker's last reports said rooms {}",
                        text.join(", ")
                    ),
                );
            }
        }
    }

    /// Invariant 7: reads new log lines and compares each pass with every earlier one.
    fn logs(&mut self, sh: &Shared) {
        let mut new = Vec::new();
        for log in &mut self.logs {
            let Ok(mut file) = std::fs::File::open(&log.path) else {
                continue;
            };
            if file.seek(SeekFrom::Start(log.offset)).is_err() {
                continue;
            }
            let mut text = String::new();
            let Ok(read) = file.read_to_string(&mut text) else {
                continue;
            };
            log.offset += read as u64;
            let joined = std::mem::take(&mut log.partial) + &text;
            let mut lines: Vec<&str> = joined.split('\n').collect();
            log.partial = lines.pop().unwrap_or_default().to_owned();
            for line in lines {
                if let Some(vm) = failed_line(line) {
                    self.failed_seen.insert(vm);
                    continue;
                }
                let Some(times) = pass_line(line) else {
                    continue;
                };
                self.pass_lines += 1;
                if let Some((started, finished)) = times {
                    new.push(Pass {
                        instance: log.instance,
                        started,
                        finished,
                    });
                }
            }
        }
        self.new_passes(sh, new);
    }

    fn new_passes(&mut self, sh: &Shared, new: Vec<Pass>) {
        for pass in new {
            sh.checked(inv::ONE_PASS, 1);
            for old in &self.passes {
                if overlap(&pass, old) {
                    sh.violation(
                        inv::ONE_PASS,
                        format!(
                            "a pass of vmpool {} ({} to {}) overlaps one of vmpool {} ({} to {})",
                            pass.instance,
                            rfc(pass.started),
                            rfc(pass.finished),
                            old.instance,
                            rfc(old.started),
                            rfc(old.finished)
                        ),
                    );
                }
            }
            self.passes.push(pass);
        }
    }
}

/// `None` for a line that is not a "reconcile pass" record; otherwise its start and finish,
/// when it carries them.
#[expect(
    clippy::option_option,
    reason = "not a pass line, a pass line without times, a pass line with times"
)]
fn pass_line(line: &str) -> Option<Option<(OffsetDateTime, OffsetDateTime)>> {
    let v = serde_json::from_str::<Value>(line).ok()?;
    if field(&v, "message").and_then(Value::as_str) != Some("reconcile pass") {
        return None;
    }
    let time = |name: &str| {
        field(&v, name)
            .and_then(Value::as_str)
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    };
    Some(time("pass_started_at").zip(time("pass_finished_at")))
}

/// The VM of a "VM failed" log line (vmpool found its provisioning `Failed`).
fn failed_line(line: &str) -> Option<String> {
    if !line.contains("VM failed") {
        return None;
    }
    let v = serde_json::from_str::<Value>(line).ok()?;
    if field(&v, "message").and_then(Value::as_str) != Some("VM failed") {
        return None;
    }
    Some(field(&v, "vm.id")?.as_str()?.to_owned())
}

/// Two passes overlap when each starts before the other finishes.
fn overlap(a: &Pass, b: &Pass) -> bool {
    a.started < b.finished && b.started < a.finished
}

/// The field `name` of a JSON log line, at the top (flattened events) or under `fields`.
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.get(name)
        .or_else(|| v.get("fields").and_then(|f| f.get(name)))
}

/// The VM name in an ARM path `.../virtualMachines/<name>[/<action>]`.
fn vm_from_path(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let at = segs
        .iter()
        .position(|s| s.eq_ignore_ascii_case("virtualMachines"))?;
    segs.get(at + 1).map(|s| (*s).to_owned())
}

/// The rooms the VM may have had when vmpool decided, in `[from, to]`: the last report
/// vmpool confirmed before `from` and every report sent after it up to `to` that may have
/// landed. Empty when the matchmaker never reported on the VM.
fn rooms_candidates(reports: &[Report], from: OffsetDateTime, to: OffsetDateTime) -> Vec<u32> {
    let start = reports
        .iter()
        .rposition(|r| r.fate == Fate::Recorded && r.sent < from)
        .unwrap_or(0);
    reports
        .get(start..)
        .unwrap_or_default()
        .iter()
        .filter(|r| r.sent <= to && r.fate != Fate::Refused)
        .map(|r| r.rooms)
        .collect()
}

/// Every VM in the fake's subscription list (`query` added to it), page by page; `None` if a
/// page could not be read. A next link off loopback is not followed.
async fn list_arm_vms(sh: &Shared, query: &str) -> Option<Vec<Value>> {
    let mut url = format!(
        "{}/subscriptions/{FAKE_SUBSCRIPTION}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01{query}",
        sh.fake_base
    );
    let mut out = Vec::new();
    for _ in 0..100 {
        let req = sh.http.get(&url).bearer_auth(FAKE_TOKEN);
        let Answer::Status(200, mut body) = sh.send(req, Duration::from_secs(10)).await else {
            return None;
        };
        if let Some(Value::Array(vms)) = body.get_mut("value").map(Value::take) {
            out.extend(vms);
        }
        match body.get("nextLink").and_then(Value::as_str) {
            Some(next) if next.starts_with(&sh.fake_base) => url = next.to_owned(),
            _ => return Some(out),
        }
    }
    Some(out)
}

/// Every VM in ARM with the pool and build its tags name (lowercase name), from the
/// subscription list without `statusOnly` (a `statusOnly=true` list carries no tags).
async fn list_arm_tags(sh: &Shared) -> Option<Vec<(String, (String, String))>> {
    let vms = list_arm_vms(sh, "").await?;
    Some(
        vms.iter()
            .filter_map(|vm| {
                let tag = |name: &str| {
                    vm.get("tags")
                        .and_then(|t| t.get(name))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                let name = vm.get("name").and_then(Value::as_str)?;
                let pool = tag("vmpool-pool")?;
                let build = tag("vmpool-build").unwrap_or_else(|| "?".into());
                Some((name.to_ascii_lowercase(), (pool, build)))
            })
            .collect(),
    )
}

/// Every VM in ARM as (name, deallocated), from the fake's subscription list.
async fn list_arm(sh: &Shared) -> Option<Vec<(String, bool)>> {
    let vms = list_arm_vms(sh, "&statusOnly=true").await?;
    Some(
        vms.iter()
            .filter_map(|vm| {
                let name = vm.get("name").and_then(Value::as_str)?;
                let deallocated = vm
                    .pointer("/properties/instanceView/statuses")
                    .and_then(Value::as_array)
                    .is_some_and(|s| {
                        s.iter().any(|st| {
                            st.get("code").and_then(Value::as_str) == Some("PowerState/deallocated")
                        })
                    });
                Some((name.to_owned(), deallocated))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs)
    }

    /// A shared state with the soak's pools and no processes behind it.
    fn shared(name: &str) -> Shared {
        let settings = crate::state::Settings {
            seed: 1,
            total: Duration::from_secs(100),
            warmup: Duration::from_secs(5),
            quiet: Duration::from_secs(50),
            max_vms: 12,
            claim_timeout_secs: 15,
            stable_bound: Duration::from_secs(45),
            orphan_settle: Duration::from_secs(20),
            claim_slack_secs: 30,
            rollout_slack_secs: 30,
            pools: crate::POOLS.to_vec(),
        };
        let events = std::env::temp_dir().join(format!(
            "vmpool-soak-test-{name}-{}.log",
            std::process::id()
        ));
        let sh = Shared::new(settings, vec![1], 1, &events).expect("a shared state");
        let _ = std::fs::remove_file(&events);
        sh
    }

    fn violations(sh: &Shared, i: usize) -> u64 {
        sh.counters()[i].violations
    }

    fn row(vm: &str, pool: &str, state: &str) -> Row {
        Row {
            vm: vm.into(),
            state: state.into(),
            state_changed_at: None,
            pool: pool.into(),
            build: Some("1.5.0".into()),
            rooms: 0,
        }
    }

    #[test]
    fn a_delete_of_a_vm_in_use_over_the_whole_interval_is_a_violation() {
        let sh = shared("in-use");
        let mut c = Checker::default();
        c.tags.insert("vm-1".into(), ("eu".into(), "1.5.0".into()));
        let before = OffsetDateTime::now_utc() - time::Duration::seconds(5);
        sh.model().start_use("vm-1", 7);
        // Not used over the whole interval (the use began after it started): not counted.
        c.delete_in_use(&sh, "vm-1", 202, before);
        assert_eq!(violations(&sh, inv::NO_DELETE_HELD), 0);
        // Used throughout, and seen Running by its match: a violation at once.
        sh.model().playing.insert("vm-1".into());
        let after = OffsetDateTime::now_utc();
        c.delete_in_use(&sh, "vm-1", 202, after);
        assert_eq!(violations(&sh, inv::NO_DELETE_HELD), 1);
        assert_eq!(c.deletes[&("eu".to_owned(), "1.5.0".to_owned())], 2);
        // Let go of with 0 rooms: no longer in use.
        sh.model().end_use("vm-1", 7);
        let later = OffsetDateTime::now_utc() + time::Duration::milliseconds(1);
        c.delete_in_use(&sh, "vm-1", 202, later);
        assert_eq!(violations(&sh, inv::NO_DELETE_HELD), 1);
        assert_eq!(sh.counters()[inv::NO_DELETE_HELD].checks, 3);
    }

    #[test]
    fn a_delete_of_a_held_vm_that_never_ran_is_excused_only_when_vmpool_found_it_failed() {
        let sh = shared("failed");
        let mut c = Checker::default();
        let from = OffsetDateTime::now_utc();
        sh.model().in_use.insert(
            "vm-2".into(),
            vec![crate::state::Use {
                id: 1,
                from: at(0),
                to: None,
            }],
        );
        sh.model().in_use.insert(
            "vm-3".into(),
            vec![crate::state::Use {
                id: 2,
                from: at(0),
                to: None,
            }],
        );
        c.delete_in_use(&sh, "vm-2", 202, from);
        c.delete_in_use(&sh, "vm-3", 202, from);
        // Judged at the next table read: vm-2 was found Failed, vm-3 never.
        assert_eq!(c.deletes_pending.len(), 2);
        c.failed_seen.insert("vm-2".into());
        c.judge_pending_deletes(&sh);
        assert!(c.deletes_pending.is_empty());
        assert_eq!(violations(&sh, inv::NO_DELETE_HELD), 1);
        assert!(sh.counters()[inv::NO_DELETE_HELD].examples[0].contains("vm-3"));
    }

    #[test]
    fn a_pool_over_its_max_vms_counts_in_two_table_reads_or_one_arm_listing() {
        let sh = shared("caps");
        let mut c = Checker::default();
        // eu has maxVms 8: nine rows not Deallocated, and one Deallocated.
        let mut rows: Vec<Row> = (0..9)
            .map(|i| row(&format!("e{i}"), "eu", "Running"))
            .collect();
        rows.push(row("e9", "eu", "Deallocated"));
        rows.push(row("u0", "us", "Standby"));
        c.pool_caps_in_table(&sh, &rows);
        assert_eq!(violations(&sh, inv::POOL_CAPS), 0);
        c.pool_caps_in_table(&sh, &rows);
        assert_eq!(violations(&sh, inv::POOL_CAPS), 1);
        // Reported once while it lasts.
        c.pool_caps_in_table(&sh, &rows);
        assert_eq!(violations(&sh, inv::POOL_CAPS), 1);
        // ARM: counted by the pool tag; eight eu VMs running is the cap, not over it.
        for i in 0..10 {
            c.tags
                .insert(format!("e{i}"), ("eu".into(), "1.5.0".into()));
        }
        let mut vms: Vec<(String, bool)> = (0..8).map(|i| (format!("E{i}"), false)).collect();
        vms.push(("e8".into(), true));
        vms.push(("untagged".into(), false));
        c.pool_caps_in_arm(&sh, &vms);
        assert_eq!(violations(&sh, inv::POOL_CAPS), 1);
        vms.push(("e9".into(), false));
        c.pool_caps_in_arm(&sh, &vms);
        assert_eq!(violations(&sh, inv::POOL_CAPS), 2);
    }

    #[test]
    fn a_vm_of_a_retired_build_is_known_by_its_tags_once_the_rollout_began() {
        let sh = shared("retired");
        let mut c = Checker::default();
        c.tags.insert("old".into(), ("eu".into(), "1.5.0".into()));
        c.tags.insert("new".into(), ("eu".into(), "1.6.0".into()));
        c.tags.insert("us".into(), ("us".into(), "1.5.0".into()));
        assert!(!c.retired(&sh, "OLD"));
        sh.set_rollout(false);
        assert!(c.retired(&sh, "OLD"));
        assert!(!c.retired(&sh, "new"));
        assert!(!c.retired(&sh, "us"));
        assert!(!c.retired(&sh, "unknown"));
    }

    fn report(secs: i64, rooms: u32, fate: Fate) -> Report {
        Report {
            sent: at(secs),
            rooms,
            fate,
        }
    }

    #[test]
    fn candidates_start_at_the_last_confirmed_report_before_the_window() {
        let reports = [
            report(1, 0, Fate::Recorded),
            report(5, 3, Fate::Recorded),
            report(12, 2, Fate::Unknown),
            report(13, 0, Fate::Refused),
            report(30, 0, Fate::Recorded),
        ];
        assert_eq!(rooms_candidates(&reports, at(10), at(20)), vec![3, 2]);
        assert_eq!(rooms_candidates(&reports, at(3), at(20)), vec![0, 3, 2]);
        assert!(rooms_candidates(&[], at(3), at(20)).is_empty());
    }

    #[test]
    fn the_vm_name_comes_from_the_arm_path() {
        assert_eq!(
            vm_from_path(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1/deallocate"
            ),
            Some("vm-1".into())
        );
        assert_eq!(
            vm_from_path(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualmachines/vm-2"
            ),
            Some("vm-2".into())
        );
        assert_eq!(vm_from_path("/subscriptions/s"), None);
    }

    #[test]
    fn pass_lines_are_read_flat_or_nested_and_others_ignored() {
        let flat = r#"{"timestamp":"x","level":"DEBUG","message":"reconcile pass","pass_started_at":"1970-01-01T00:00:01Z","pass_finished_at":"1970-01-01T00:00:02.5Z"}"#;
        let nested = r#"{"fields":{"message":"reconcile pass","pass_started_at":"1970-01-01T00:00:01Z","pass_finished_at":"1970-01-01T00:00:02Z"}}"#;
        let bare = r#"{"message":"reconcile pass","summary":"nothing to do"}"#;
        assert_eq!(
            pass_line(flat),
            Some(Some((at(1), at(2) + time::Duration::milliseconds(500))))
        );
        assert_eq!(pass_line(nested), Some(Some((at(1), at(2)))));
        assert_eq!(pass_line(bare), Some(None));
        assert_eq!(pass_line(r#"{"message":"VM is ready"}"#), None);
        let failed = r#"{"level":"WARN","message":"VM failed","vm.id":"vm-7","error":"provisioning failed"}"#;
        assert_eq!(failed_line(failed), Some("vm-7".into()));
        assert_eq!(
            failed_line(r#"{"message":"failed VM deleted","vm.id":"vm-7"}"#),
            None
        );
        assert_eq!(pass_line("not json"), None);
    }

    #[test]
    fn passes_overlap_only_when_each_starts_before_the_other_ends() {
        let pass = |a, b| Pass {
            instance: 0,
            started: at(a),
            finished: at(b),
        };
        assert!(overlap(&pass(1, 3), &pass(2, 4)));
        assert!(overlap(&pass(1, 5), &pass(2, 3)));
        assert!(!overlap(&pass(1, 2), &pass(2, 3)));
        assert!(!overlap(&pass(3, 4), &pass(1, 2)));
    }

    #[test]
    fn log_fields_are_found_flat_or_nested() {
        let flat: Value = serde_json::json!({"message": "reconcile pass"});
        let nested: Value = serde_json::json!({"fields": {"message": "reconcile pass"}});
        assert!(field(&flat, "message").is_some());
        assert!(field(&nested, "message").is_some());
    }
}
