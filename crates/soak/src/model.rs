//! The matchmaker model. Each match is a session: it asks for a VM (CreateVM, sometimes with
//! an `Idempotency-Key` and retries of it, sometimes with a client timeout so short that it
//! gives up), waits until the VM is `Running`, reports rooms that rise and fall, and ends by
//! reporting 0 then marking the VM, or by marking it and draining its rooms to 0. The model
//! records who holds which VM and every report, which invariants 1, 3 and 6 judge.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::state::{Answer, Fate, Report, Shared, inv};

/// Most matches at once (the pool holds `VMPOOL_MAX_VMS`; some calls meet a full pool).
const MAX_SESSIONS: usize = 11;

/// Starts matches at random intervals until the traffic stops.
pub async fn launcher(sh: Arc<Shared>, mut rng: StdRng) {
    let mut sessions: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    while !sh.stopping() {
        sessions.retain(|s| !s.is_finished());
        if sessions.len() < MAX_SESSIONS {
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
    let Some((vm, state)) = acquire(&sh, id, &mut rng).await else {
        return;
    };
    hold(&sh, id, &vm);
    let running = state == "Running" || wait_running(&sh, &vm, &mut rng).await;
    if running {
        sh.model().playing.insert(vm.clone());
    }
    if !running || gone(&sh, &vm) {
        mark(&sh, id, &vm, &mut rng).await;
        return;
    }
    // Play: rooms rise and fall.
    let mut rooms: u32 = sh
        .model()
        .rooms
        .get(&vm)
        .copied()
        .unwrap_or(0)
        .max(rng.random_range(1..=4));
    // Players arrive at once: the first report is retried until vmpool records it, so the
    // VM is never taken for one nobody uses.
    for _ in 0..8 {
        if report(&sh, &vm, rooms, &mut rng).await || gone(&sh, &vm) || sh.stopping() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..800))).await;
    }
    let play = Duration::from_millis(rng.random_range(4000..22000));
    let until = tokio::time::Instant::now() + play;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2200))).await;
        if gone(&sh, &vm) {
            return release(&sh, id, &vm);
        }
        let step: i64 = rng.random_range(-2..=2);
        rooms = (i64::from(rooms) + step).clamp(0, 8) as u32;
        report(&sh, &vm, rooms, &mut rng).await;
    }
    if gone(&sh, &vm) {
        return release(&sh, id, &vm);
    }
    if rooms == 0 || rng.random_bool(0.5) {
        // The last room closes, then the VM is given back.
        report(&sh, &vm, 0, &mut rng).await;
        mark(&sh, id, &vm, &mut rng).await;
    } else {
        // Given back while games still run; they end one by one.
        mark(&sh, id, &vm, &mut rng).await;
        while rooms > 0 && !sh.stopping() {
            tokio::time::sleep(Duration::from_millis(rng.random_range(600..1800))).await;
            if gone(&sh, &vm) || sh.model().holds.get(&vm).is_some_and(|h| *h != id) {
                // Gone, or reclaimed by a new match that now reports for it.
                return;
            }
            rooms = rooms.saturating_sub(rng.random_range(1..=2));
            report(&sh, &vm, rooms, &mut rng).await;
        }
    }
}

/// CreateVM until a VM is handed out, or the session gives up.
async fn acquire(sh: &Shared, id: u64, rng: &mut StdRng) -> Option<(String, String)> {
    let key = rng
        .random_bool(0.35)
        .then(|| format!("soak-{}-{id}", sh.settings.seed));
    let kind = if key.is_some() {
        "CreateVM (Idempotency-Key)"
    } else {
        "CreateVM"
    };
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
        let mut req = sh
            .http
            .post(sh.url(i, "/api/CreateVM"))
            .header("content-type", "application/json")
            .body("{}");
        if let Some(key) = &key {
            req = req.header("Idempotency-Key", key);
        }
        let answer = sh.call(kind, req, timeout).await;
        sh.event(format_args!(
            "match {id}: {kind} attempt {attempt} on vmpool {i} (timeout {} ms): {} {}",
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
        let retry = match &answer {
            Answer::Status(200 | 202, body) => {
                let vm = body.pointer("/vm/vmId").and_then(Value::as_str)?;
                let state = body
                    .pointer("/vm/state")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
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

/// Invariant 1: the VM must not be held by another match.
fn hold(sh: &Shared, id: u64, vm: &str) {
    let other = {
        let mut m = sh.model();
        let other = m.holds.get(vm).copied().filter(|h| *h != id);
        m.holds.insert(vm.to_owned(), id);
        m.marking.remove(vm);
        m.playing.remove(vm);
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
/// marking ends.
async fn mark(sh: &Shared, id: u64, vm: &str, rng: &mut StdRng) {
    {
        let mut m = sh.model();
        if m.holds.get(vm) == Some(&id) {
            m.holds.remove(vm);
        }
        m.marking.insert(vm.to_owned(), id);
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
