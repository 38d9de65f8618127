//! The matchmaker model. Each match is a session: it asks for a VM of a pool (CreateVM, naming
//! a build now and then: mostly the current one, sometimes the old one during a rollout;
//! sometimes with an `Idempotency-Key` and retries of it, sometimes with a client timeout so
//! short that it gives up), waits until the VM is `Running`, reports rooms that rise and fall,
//! and ends by reporting 0 then marking the VM, or by marking it and draining its rooms to 0.
//! The model records who holds which VM, when each is in use, and every report, which
//! invariants 1, 3, 6, 10 and 12 judge.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::state::{Answer, Fate, PoolSettings, Report, RolloutWindow, Shared, inv};

/// Most matches at once (the pool holds `VMPOOL_MAX_VMS`; some calls meet a full pool).
const MAX_SESSIONS: usize = 11;

/// No match starts in the last seconds of the soak: a lull, as traffic has, in which the
/// rolled-out pool's new buffer fills and its idle old-build VMs go while matches on other
/// VMs still run.
const LULL: time::Duration = time::Duration::seconds(15);

/// Starts matches at random intervals until the traffic stops.
pub async fn launcher(sh: Arc<Shared>, mut rng: StdRng) {
    let mut sessions: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    let lull_after = time::Duration::try_from(sh.settings.quiet).unwrap_or_default() - LULL;
    while !sh.stopping() {
        sessions.retain(|s| !s.is_finished());
        let lull = sh
            .quiet_since()
            .is_some_and(|q| OffsetDateTime::now_utc() - q >= lull_after);
        if sessions.len() < MAX_SESSIONS && !lull {
            next_id += 1;
            let session_rng = StdRng::seed_from_u64(rng.random());
            sessions.push(tokio::spawn(session(sh.clone(), next_id, session_rng)));
        }
        let mean_ms = if sh.quiet_since().is_some() {
            2500.0
        } else {
            1200.0
        };
        // Exponential inter-arrival times: a Poisson stream of matches.
        let u: f64 = rng.random_range(0.01..1.0);
        let wait = (-u.ln() * mean_ms).min(8000.0);
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    for s in sessions {
        s.abort();
    }
    // Aborted matches use nothing any more.
    sh.model().end_all_uses(None);
}

/// Calls GetAvailableVMs now and then, as a matchmaker's dashboard would.
pub async fn browser(sh: Arc<Shared>, mut rng: StdRng) {
    while !sh.stopping() {
        let i = rng.random_range(0..sh.ports.len());
        sh.call(
            "GetAvailableVMs",
            sh.http.get(sh.url(i, "/api/GetAvailableVMs")),
            Duration::from_secs(3),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
    }
}

async fn session(sh: Arc<Shared>, id: u64, mut rng: StdRng) {
    let ask = ask(&sh, &mut rng);
    let Some((vm, state)) = acquire(&sh, id, &ask, &mut rng).await else {
        return;
    };
    hold(&sh, id, &vm);
    play(&sh, id, &vm, &state, &mut rng).await;
    // However the match ended, it uses the VM no more.
    sh.model().end_use(&vm, id);
}

/// What a match asks for: a pool, and a build or none (the pool's current build).
#[derive(Debug, Clone)]
pub struct Ask {
    /// The pool.
    pub pool: PoolSettings,
    /// The build named, if one is.
    pub build: Option<&'static str>,
}

impl Ask {
    /// The request body.
    fn body(&self) -> Value {
        match self.build {
            Some(build) => json!({"pool": self.pool.name, "build": build}),
            None => json!({"pool": self.pool.name}),
        }
    }

    /// How the events and the summary name it.
    fn label(&self) -> String {
        format!("{} {}", self.pool.name, self.build.unwrap_or("-"))
    }
}

/// A pool at random; most matches name no build, a quarter name the current one (players on
/// the new client once the rollout has begun), the rest the pool's first build (players still
/// on the old client).
fn ask(sh: &Shared, rng: &mut StdRng) -> Ask {
    let pools = &sh.settings.pools;
    let pool = pools
        .get(rng.random_range(0..pools.len().max(1)))
        .cloned()
        .unwrap_or_else(|| crate::POOLS[0].clone());
    let rolled = sh.rollout().started.is_some();
    let build = match rng.random_range(0..100) {
        0..60 => None,
        60..85 => Some(pool.build_at(rolled)),
        _ => Some(pool.build),
    };
    Ask { pool, build }
}

/// Invariant 10: the VM handed out is of the pool asked for, and of the build named; with none
/// named, of the pool's current build, which is either during the rolling restart (instances
/// disagree until each has the new setting): the old build for a request sent before the last
/// instance took the new setting, the new build for one answered after the first was stopped.
pub fn judge(
    ask: &Ask,
    pool: Option<&str>,
    build: Option<&str>,
    sent: OffsetDateTime,
    answered: OffsetDateTime,
    window: RolloutWindow,
) -> Result<(), String> {
    if pool != Some(ask.pool.name) {
        return Err(format!("a VM of pool {pool:?}"));
    }
    let Some(build) = build else {
        return Err("a VM of unknown build".into());
    };
    if let Some(named) = ask.build {
        return if build == named {
            Ok(())
        } else {
            Err(format!("a VM of build {build}"))
        };
    }
    let old_ok = window.finished.is_none_or(|f| sent < f);
    let new_ok = window.started.is_some_and(|s| answered >= s);
    let ok = match ask.pool.rollout_to {
        None => build == ask.pool.build,
        Some(new) => (build == ask.pool.build && old_ok) || (build == new && new_ok),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a VM of build {build} (sent {}, answered {}; rollout window {:?} to {:?})",
            crate::state::rfc(sent),
            crate::state::rfc(answered),
            window.started.map(crate::state::rfc),
            window.finished.map(crate::state::rfc),
        ))
    }
}

/// A match on `vm` from its hand-out to the moment it lets go.
async fn play(sh: &Shared, id: u64, vm: &str, state: &str, rng: &mut StdRng) {
    let running = state == "Running" || wait_running(sh, vm, rng).await;
    if running {
        sh.model().playing.insert(vm.to_owned());
    }
    if !running || gone(sh, vm) {
        // No rooms were reported: in use until the match lets go.
        mark(sh, id, vm, false, rng).await;
        return;
    }
    // Play: rooms rise and fall.
    let mut rooms: u32 = sh
        .model()
        .rooms
        .get(vm)
        .copied()
        .unwrap_or(0)
        .max(rng.random_range(1..=4));
    // Players arrive at once: the first report is retried until vmpool records it, so the
    // VM is never taken for one nobody uses.
    for _ in 0..8 {
        if report(sh, vm, rooms, rng).await || gone(sh, vm) || sh.stopping() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..800))).await;
    }
    let play = Duration::from_millis(rng.random_range(4000..22000));
    let until = tokio::time::Instant::now() + play;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2200))).await;
        if gone(sh, vm) {
            return release(sh, id, vm);
        }
        let step: i64 = rng.random_range(-2..=2);
        rooms = (i64::from(rooms) + step).clamp(0, 8) as u32;
        report(sh, vm, rooms, rng).await;
    }
    if gone(sh, vm) {
        return release(sh, id, vm);
    }
    if rooms == 0 || rng.random_bool(0.5) {
        // The last room closes, then the VM is given back: no longer in use from the mark.
        report(sh, vm, 0, rng).await;
        mark(sh, id, vm, true, rng).await;
    } else {
        // Given back while games still run; they end one by one.
        mark(sh, id, vm, false, rng).await;
        while rooms > 0 && !sh.stopping() {
            tokio::time::sleep(Duration::from_millis(rng.random_range(600..1800))).await;
            if gone(sh, vm) || sh.model().holds.get(vm).is_some_and(|h| *h != id) {
                // Gone, or reclaimed by a new match that now reports for it.
                return;
            }
            rooms = rooms.saturating_sub(rng.random_range(1..=2));
            if rooms == 0 {
                // The last game ends: vmpool may take the VM as soon as this report lands.
                sh.model().end_use(vm, id);
            }
            report(sh, vm, rooms, rng).await;
        }
    }
}

/// CreateVM until a VM is handed out, or the session gives up.
async fn acquire(sh: &Shared, id: u64, ask: &Ask, rng: &mut StdRng) -> Option<(String, String)> {
    let key = rng
        .random_bool(0.35)
        .then(|| format!("soak-{}-{id}", sh.settings.seed));
    let kind = if key.is_some() {
        "CreateVM (Idempotency-Key)"
    } else {
        "CreateVM"
    };
    let mut first_sent = None;
    for attempt in 1..=4 {
        // A quarter of the callers give up early: most within the time a claim takes (a few
        // milliseconds to tens), the rest while a slow ARM create is under way.
        let timeout = if rng.random_bool(0.25) {
            if rng.random_bool(0.6) {
                Duration::from_millis(rng.random_range(2..40))
            } else {
                Duration::from_millis(rng.random_range(40..1500))
            }
        } else {
            Duration::from_secs(10)
        };
        let i = rng.random_range(0..sh.ports.len());
        let mut req = sh.http.post(sh.url(i, "/api/CreateVM")).json(&ask.body());
        if let Some(key) = &key {
            req = req.header("Idempotency-Key", key);
        }
        let sent = OffsetDateTime::now_utc();
        // A retry with the key may be answered with what the first attempt decided.
        let sent = if key.is_some() {
            *first_sent.get_or_insert(sent)
        } else {
            sent
        };
        let answer = sh.call(kind, req, timeout).await;
        sh.event(format_args!(
            "match {id}: {kind} for {} attempt {attempt} on vmpool {i} (timeout {} ms): {} {}",
            ask.label(),
            timeout.as_millis(),
            answer.label(),
            match &answer {
                Answer::Status(_, body) => body
                    .pointer("/vm/vmId")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                _ => "",
            }
        ));
        if let Answer::Status(503, body) = &answer {
            refused_beside_old_idle(sh, id, ask, body);
        }
        let retry = match &answer {
            Answer::Status(200 | 202, body) => {
                let vm = body.pointer("/vm/vmId").and_then(Value::as_str)?;
                let state = body
                    .pointer("/vm/state")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let pool = body.pointer("/vm/pool").and_then(Value::as_str);
                let build = body.pointer("/vm/build").and_then(Value::as_str);
                let answered = OffsetDateTime::now_utc();
                sh.checked(inv::POOL_AND_BUILD, 1);
                if let Err(what) = judge(ask, pool, build, sent, answered, sh.rollout()) {
                    sh.violation(
                        inv::POOL_AND_BUILD,
                        format!(
                            "match {id} asked for pool {} build {} (attempt {attempt} on vmpool {i}) and got {vm}, {what}",
                            ask.pool.name,
                            ask.build.unwrap_or("(none: the current one)")
                        ),
                    );
                }
                *sh.model()
                    .handouts
                    .entry((
                        ask.pool.name.to_owned(),
                        ask.build.unwrap_or("-").to_owned(),
                        build.unwrap_or("unknown").to_owned(),
                    ))
                    .or_default() += 1;
                return Some((vm.to_owned(), state.to_owned()));
            }
            // No VM was handed out: safe to ask again.
            Answer::Status(503, _) | Answer::Connect => true,
            // The answer was lost: only a key makes asking again safe. Without one the
            // matchmaker gives up, as one whose caller left would.
            Answer::Timeout | Answer::Error | Answer::Status(500..=599, _) => key.is_some(),
            Answer::Status(..) => false,
        };
        if !retry || attempt == 4 || sh.stopping() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
    }
    None
}

/// A `503 CapacityExhausted` at a cap for a pool's current build while the last table read showed
/// `Standby` VMs of a build it no longer has as current (places a no-build caller can never
/// get): counted for the summary, with the answer's message in the events.
fn refused_beside_old_idle(sh: &Shared, id: u64, ask: &Ask, body: &Value) {
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // At a cap (not an open breaker, a quota refusal).
    if body.pointer("/error/code").and_then(Value::as_str) != Some("CapacityExhausted")
        || !message.contains("maximum")
    {
        return;
    }
    let rolled = sh.rollout().finished.is_some();
    let current = ask.pool.build_at(rolled);
    if ask.build.is_some_and(|b| b != current) || !rolled {
        return;
    }
    let idle: Vec<String> = sh
        .snapshot()
        .into_iter()
        .filter(|r| {
            r.pool == ask.pool.name
                && r.state == "Standby"
                && r.build.as_deref().is_some_and(|b| b != current)
        })
        .map(|r| r.vm)
        .collect();
    if idle.is_empty() {
        return;
    }
    sh.event(format_args!(
        "match {id}: 503 CapacityExhausted for pool {} build {current} ({message}) while old-build Standby VMs hold places: {}",
        ask.pool.name,
        idle.join(", ")
    ));
    sh.model().refused_beside_old_idle += 1;
}

/// Invariant 1: the VM must not be held by another match.
fn hold(sh: &Shared, id: u64, vm: &str) {
    let other = {
        let mut m = sh.model();
        let other = m.holds.get(vm).copied().filter(|h| *h != id);
        m.holds.insert(vm.to_owned(), id);
        m.marking.remove(vm);
        m.playing.remove(vm);
        m.start_use(vm, id);
        other
    };
    sh.event(format_args!("match {id}: holds {vm}"));
    sh.checked(inv::HANDOUT, 1);
    if let Some(other) = other {
        sh.violation(
            inv::HANDOUT,
            format!("{vm} handed to match {id} while match {other} still holds it"),
        );
    }
}

fn release(sh: &Shared, id: u64, vm: &str) {
    sh.event(format_args!("match {id}: {vm} is gone; the match ends"));
    let mut m = sh.model();
    if m.holds.get(vm) == Some(&id) {
        m.holds.remove(vm);
        m.playing.remove(vm);
    }
    if m.marking.get(vm) == Some(&id) {
        m.marking.remove(vm);
    }
    m.end_use(vm, id);
    m.released_at
        .insert(vm.to_owned(), OffsetDateTime::now_utc());
}

/// Deleted behind vmpool's back, or failed: the game on it is over.
fn gone(sh: &Shared, vm: &str) -> bool {
    sh.model().deleted_behind.contains(vm)
        || sh
            .snapshot()
            .iter()
            .any(|r| r.vm == vm && r.state == "Failed")
}

/// Polls GetAvailableVMs until the VM is listed, for up to 45 s.
async fn wait_running(sh: &Shared, vm: &str, rng: &mut StdRng) -> bool {
    let until = tokio::time::Instant::now() + Duration::from_secs(45);
    while tokio::time::Instant::now() < until && !sh.stopping() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..1300))).await;
        if gone(sh, vm) {
            return false;
        }
        let i = rng.random_range(0..sh.ports.len());
        let answer = sh
            .call(
                "GetAvailableVMs",
                sh.http.get(sh.url(i, "/api/GetAvailableVMs")),
                Duration::from_secs(3),
            )
            .await;
        if let Answer::Status(200, body) = answer {
            let listed = body
                .get("vms")
                .and_then(Value::as_array)
                .is_some_and(|vms| {
                    vms.iter()
                        .any(|v| v.get("vmId").and_then(Value::as_str) == Some(vm))
                });
            if listed {
                return true;
            }
        }
    }
    false
}

/// ReportGameRoomsNumber, recorded with its fate for invariant 3; true when vmpool recorded it.
async fn report(sh: &Shared, vm: &str, rooms: u32, rng: &mut StdRng) -> bool {
    let index = {
        let mut m = sh.model();
        m.rooms.insert(vm.to_owned(), rooms);
        let reports = m.reports.entry(vm.to_owned()).or_default();
        reports.push(Report {
            sent: OffsetDateTime::now_utc(),
            rooms,
            fate: Fate::Pending,
        });
        reports.len() - 1
    };
    let timeout = if rng.random_bool(0.1) {
        Duration::from_millis(rng.random_range(100..600))
    } else {
        Duration::from_secs(4)
    };
    let i = rng.random_range(0..sh.ports.len());
    let req = sh
        .http
        .post(sh.url(i, "/api/ReportGameRoomsNumber"))
        .json(&json!({"vmId": vm, "rooms": rooms}));
    let answer = sh.call("ReportGameRoomsNumber", req, timeout).await;
    sh.event(format_args!(
        "report {vm} rooms {rooms} on vmpool {i}: {}",
        answer.label()
    ));
    let fate = match answer.status() {
        Some(200..=299) => Fate::Recorded,
        Some(400..=499) => Fate::Refused,
        _ => Fate::Unknown,
    };
    if let Some(r) = sh
        .model()
        .reports
        .get_mut(vm)
        .and_then(|r| r.get_mut(index))
    {
        r.fate = fate;
    }
    fate == Fate::Recorded
}

/// MarkVMForDeallocation, retried until vmpool gives a definite answer. The hold ends when
/// the first mark is sent (a reclaim may follow at once); the VM stays owned until the
/// marking ends. With `empty` (the match's last report said 0 rooms) its use ends too.
async fn mark(sh: &Shared, id: u64, vm: &str, empty: bool, rng: &mut StdRng) {
    {
        let mut m = sh.model();
        if m.holds.get(vm) == Some(&id) {
            m.holds.remove(vm);
        }
        m.marking.insert(vm.to_owned(), id);
        if empty {
            m.end_use(vm, id);
        }
    }
    for _ in 0..10 {
        let stop = {
            let m = sh.model();
            // Reclaimed by another match after an earlier mark landed: it is theirs now.
            m.deleted_behind.contains(vm) || m.holds.get(vm).is_some_and(|h| *h != id)
        };
        if stop || sh.stopping() {
            break;
        }
        let i = rng.random_range(0..sh.ports.len());
        let req = sh
            .http
            .post(sh.url(i, "/api/MarkVMForDeallocation"))
            .json(&json!({"vmId": vm}));
        let answer = sh
            .call("MarkVMForDeallocation", req, Duration::from_secs(4))
            .await;
        sh.event(format_args!(
            "match {id}: mark {vm} on vmpool {i}: {}",
            answer.label()
        ));
        match answer.status() {
            Some(200 | 404) => break,
            // 409: not in a state that can be marked (yet); anything else: try again.
            _ => tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2500))).await,
        }
    }
    sh.event(format_args!("match {id}: lets go of {vm}"));
    let mut m = sh.model();
    if m.marking.get(vm) == Some(&id) {
        m.marking.remove(vm);
    }
    m.released_at
        .insert(vm.to_owned(), OffsetDateTime::now_utc());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Model;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs)
    }

    fn ask(pool: usize, build: Option<&'static str>) -> Ask {
        Ask {
            pool: crate::POOLS[pool].clone(),
            build,
        }
    }

    #[test]
    fn a_named_pool_and_build_must_be_what_is_handed_out() {
        let none = RolloutWindow::default();
        let eu = ask(0, Some("1.5.0"));
        assert!(judge(&eu, Some("eu"), Some("1.5.0"), at(1), at(2), none).is_ok());
        assert!(judge(&eu, Some("us"), Some("1.5.0"), at(1), at(2), none).is_err());
        assert!(judge(&eu, Some("eu"), Some("1.6.0"), at(1), at(2), none).is_err());
        assert!(judge(&eu, Some("eu"), None, at(1), at(2), none).is_err());
        assert!(judge(&eu, None, Some("1.5.0"), at(1), at(2), none).is_err());
        // Named, the old build stays right after the rollout too.
        let done = RolloutWindow {
            started: Some(at(10)),
            finished: Some(at(20)),
        };
        assert!(judge(&eu, Some("eu"), Some("1.5.0"), at(30), at(31), done).is_ok());
        let new = ask(0, Some("1.6.0"));
        assert!(judge(&new, Some("eu"), Some("1.5.0"), at(30), at(31), done).is_err());
    }

    #[test]
    fn with_no_build_named_either_build_is_right_only_during_the_rolling_restart() {
        let eu = ask(0, None);
        let window = RolloutWindow {
            started: Some(at(10)),
            finished: Some(at(20)),
        };
        let judged = |build, sent, answered| {
            judge(&eu, Some("eu"), Some(build), at(sent), at(answered), window).is_ok()
        };
        // Before: only the old build.
        assert!(judged("1.5.0", 1, 2));
        assert!(!judged("1.6.0", 1, 2));
        // During: either.
        assert!(judged("1.5.0", 12, 13));
        assert!(judged("1.6.0", 12, 13));
        // Sent before the last instance took the new setting, answered after: either.
        assert!(judged("1.5.0", 19, 21));
        // After: only the new build.
        assert!(judged("1.6.0", 21, 22));
        assert!(!judged("1.5.0", 21, 22));
        // Not begun yet: the old build only.
        let before = RolloutWindow::default();
        assert!(judge(&eu, Some("eu"), Some("1.5.0"), at(1), at(2), before).is_ok());
        assert!(judge(&eu, Some("eu"), Some("1.6.0"), at(1), at(2), before).is_err());
        // A pool that is not rolled out has one build throughout.
        let us = ask(1, None);
        assert!(judge(&us, Some("us"), Some("1.5.0"), at(12), at(13), window).is_ok());
        assert!(judge(&us, Some("us"), Some("1.6.0"), at(12), at(13), window).is_err());
    }

    #[test]
    fn a_vm_is_in_use_throughout_only_when_one_match_used_it_over_the_whole_interval() {
        let mut m = Model::default();
        m.in_use.insert(
            "vm-1".into(),
            vec![
                crate::state::Use {
                    id: 1,
                    from: at(0),
                    to: Some(at(10)),
                },
                crate::state::Use {
                    id: 2,
                    from: at(15),
                    to: None,
                },
            ],
        );
        assert_eq!(
            m.used_throughout("vm-1", at(2), at(8)).map(|u| u.id),
            Some(1)
        );
        // The interval reaches past the first use's end, or before the second's start.
        assert!(m.used_throughout("vm-1", at(8), at(12)).is_none());
        assert!(m.used_throughout("vm-1", at(12), at(16)).is_none());
        assert_eq!(
            m.used_throughout("vm-1", at(16), at(99)).map(|u| u.id),
            Some(2)
        );
        assert!(m.used_throughout("vm-2", at(16), at(99)).is_none());
        let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
        assert!(m.used_throughout("vm-1", at(16), later).is_some());
        m.end_use("vm-1", 2);
        assert!(m.used_throughout("vm-1", at(16), later).is_none());
        m.start_use("vm-1", 3);
        m.end_all_uses(Some("vm-2"));
        assert!(m.used_throughout("vm-1", at(16), later).is_none());
        let now = OffsetDateTime::now_utc();
        assert_eq!(m.used_throughout("vm-1", now, later).map(|u| u.id), Some(3));
        m.end_all_uses(None);
        assert!(m.used_throughout("vm-1", now, later).is_none());
    }
}
