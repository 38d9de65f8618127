//! What the soak's tasks share: settings, HTTP helpers, the counters of the summary, the
//! matchmaker model's view and the latest table snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The soak's timing and pool settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Replays the same schedule of decisions and faults.
    pub seed: u64,
    /// Wall time of the traffic (warm-up + chaos + quiet).
    pub total: Duration,
    /// Traffic before the first fault.
    pub warmup: Duration,
    /// Faults stop this long before the end.
    pub quiet: Duration,
    /// `VMPOOL_MAX_VMS`.
    pub max_vms: usize,
    /// `VMPOOL_CLAIM_TIMEOUT_SECS`.
    pub claim_timeout_secs: u64,
    /// Invariant 5: once faults stop, a row reaches a stable state within this.
    pub stable_bound: Duration,
    /// Invariant 4: orphans are judged only this long after the faults stop.
    pub orphan_settle: Duration,
    /// Invariant 6: a matchmaker VM nobody holds may stay `Running` this long past the claim
    /// timeout (the lease of a killed reconciler running out, reconcile passes and a storage
    /// restart on the way).
    pub claim_slack_secs: u64,
    /// Invariant 6: more slack for a VM let go of before the rolling restart ended (a
    /// stopped instance's reconcile lease runs out before another takes over).
    pub rollout_slack_secs: u64,
    /// The pools (`VMPOOL_POOLS`), the first one rolled out mid-soak.
    pub pools: Vec<PoolSettings>,
}

/// One pool of `VMPOOL_POOLS` as the soak sets it up.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Its name.
    pub name: &'static str,
    /// Its region.
    pub location: &'static str,
    /// Its VM size.
    pub vm_size: &'static str,
    /// `maxVms`.
    pub max_vms: usize,
    /// `minStandby`.
    pub min_standby: usize,
    /// Its build when the soak starts.
    pub build: &'static str,
    /// The build a rollout brings, if this pool is rolled out.
    pub rollout_to: Option<&'static str>,
}

impl PoolSettings {
    /// Its build now: the new one once the rollout has started (`rolled`).
    pub fn build_at(&self, rolled: bool) -> &'static str {
        match self.rollout_to {
            Some(new) if rolled => new,
            _ => self.build,
        }
    }
}

/// The soak's invariants, in the order the summary lists them.
pub const INVARIANTS: [&str; 12] = [
    "no VM handed to two holders at once",
    "never more than VMPOOL_MAX_VMS not Deallocated (table, ARM)",
    "no VM with rooms > 0 deallocated or deleted",
    "after faults: no VM runs in ARM without a row",
    "after faults: every row stable within the bound",
    "no unowned matchmaker VM older than the claim timeout",
    "one reconcile pass at a time",
    "no VM deleted after a start of it was refused",
    "no ARM DELETE of a running VM whose rooms are > 0 or unknown",
    "no VM handed out of another pool or build than asked",
    "never more than a pool's maxVms not Deallocated (table, ARM)",
    "no ARM DELETE of a VM in use (the rollout keeps games)",
];

/// Invariant numbers (1-based in the output).
pub mod inv {
    /// 1.
    pub const HANDOUT: usize = 0;
    /// 2.
    pub const MAX_VMS: usize = 1;
    /// 3.
    pub const ROOMS: usize = 2;
    /// 4.
    pub const ORPHANS: usize = 3;
    /// 5.
    pub const STABLE: usize = 4;
    /// 6.
    pub const CLAIM: usize = 5;
    /// 7.
    pub const ONE_PASS: usize = 6;
    /// 8.
    pub const NO_DELETE_AFTER_REFUSAL: usize = 7;
    /// 9.
    pub const NO_DELETE_IN_USE: usize = 8;
    /// 10.
    pub const POOL_AND_BUILD: usize = 9;
    /// 11.
    pub const POOL_CAPS: usize = 10;
    /// 12.
    pub const NO_DELETE_HELD: usize = 11;
}

/// One invariant's counters.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    /// Checks made.
    pub checks: u64,
    /// Violations found.
    pub violations: u64,
    /// The first violations, described.
    pub examples: Vec<String>,
    /// Why it could not be observed, if it could not.
    pub not_observable: Option<String>,
}

/// A row of the VM table, as GetPoolStatus shows it.
#[derive(Debug, Clone)]
pub struct Row {
    /// vmId.
    pub vm: String,
    /// Its state.
    pub state: String,
    /// When the state last changed.
    pub state_changed_at: Option<OffsetDateTime>,
    /// Its pool.
    pub pool: String,
    /// Its build (None while vmpool does not know it).
    pub build: Option<String>,
    /// The rooms it shows (0 also when none were reported).
    pub rooms: u64,
}

/// One ReportGameRoomsNumber the model sent.
#[derive(Debug, Clone)]
pub struct Report {
    /// When it was sent.
    pub sent: OffsetDateTime,
    /// The rooms it said.
    pub rooms: u32,
    /// What became of it.
    pub fate: Fate,
}

/// Whether a report landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// No answer yet.
    Pending,
    /// 200.
    Recorded,
    /// A 4xx: it changed nothing.
    Refused,
    /// A timeout, a dropped connection or a 5xx: it may have landed.
    Unknown,
}

/// The matchmaker's own view.
#[derive(Debug, Default)]
pub struct Model {
    /// Who holds each VM now (session number).
    pub holds: HashMap<String, u64>,
    /// VMs whose session is still marking them (still owned).
    pub marking: HashMap<String, u64>,
    /// When each VM was last let go of.
    pub released_at: HashMap<String, OffsetDateTime>,
    /// Every rooms report, per VM.
    pub reports: HashMap<String, Vec<Report>>,
    /// The rooms the matchmaker's games have on each VM now.
    pub rooms: HashMap<String, u32>,
    /// VMs the faults deleted in ARM behind vmpool's back.
    pub deleted_behind: HashSet<String>,
    /// VMs the match holding them saw `Running` (so they run in ARM, a game may be on them).
    pub playing: HashSet<String>,
    /// When each VM was in use, per match: from the CreateVM answer until the match has
    /// marked it with 0 rooms reported last (or let go of it).
    pub in_use: HashMap<String, Vec<Use>>,
    /// Hand-outs by (pool, build asked for or `-`, build handed out).
    pub handouts: BTreeMap<(String, String, String), u64>,
    /// CreateVMs for a pool's current build refused for capacity while `Standby` VMs of its
    /// old build were in the table.
    pub refused_beside_old_idle: u64,
}

/// One match's use of a VM.
#[derive(Debug, Clone)]
pub struct Use {
    /// The match.
    pub id: u64,
    /// When the CreateVM answer came.
    pub from: OffsetDateTime,
    /// When the match stopped using it (None: still in use).
    pub to: Option<OffsetDateTime>,
}

impl Model {
    /// Whether the matchmaker holds (or is still letting go of) `vm`.
    pub fn owned(&self, vm: &str) -> bool {
        self.holds.contains_key(vm) || self.marking.contains_key(vm)
    }

    /// Match `id` starts using `vm`.
    pub fn start_use(&mut self, vm: &str, id: u64) {
        self.in_use.entry(vm.to_owned()).or_default().push(Use {
            id,
            from: OffsetDateTime::now_utc(),
            to: None,
        });
    }

    /// Match `id` stops using `vm` (no-op when it already has).
    pub fn end_use(&mut self, vm: &str, id: u64) {
        let now = OffsetDateTime::now_utc();
        for u in self.in_use.get_mut(vm).into_iter().flatten() {
            if u.id == id && u.to.is_none() {
                u.to = Some(now);
            }
        }
    }

    /// Every use of every VM ends now (the traffic stopped, or a fault deleted `vm`).
    pub fn end_all_uses(&mut self, only: Option<&str>) {
        let now = OffsetDateTime::now_utc();
        for (vm, uses) in &mut self.in_use {
            if only.is_some_and(|o| o != vm) {
                continue;
            }
            for u in uses.iter_mut().filter(|u| u.to.is_none()) {
                u.to = Some(now);
            }
        }
    }

    /// The match that used `vm` over all of `[from, to]`, if one did.
    pub fn used_throughout(
        &self,
        vm: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Option<&Use> {
        self.in_use
            .get(vm)?
            .iter()
            .find(|u| u.from <= from && u.to.is_none_or(|end| end >= to))
    }
}

/// An HTTP answer, or why there was none.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A status and the JSON body (Null when it had none).
    Status(u16, Value),
    /// The client gave up.
    Timeout,
    /// Nothing listened, or the connection broke.
    Connect,
    /// Anything else.
    Error,
}

impl Answer {
    /// How the summary names it.
    pub fn label(&self) -> String {
        match self {
            Answer::Status(s, body) => match body.pointer("/error/code").and_then(Value::as_str) {
                Some(code) => format!("{s} {code}"),
                None => s.to_string(),
            },
            Answer::Timeout => "client timeout".into(),
            Answer::Connect => "connection failed".into(),
            Answer::Error => "other error".into(),
        }
    }

    /// The status, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Status(s, _) => Some(*s),
            _ => None,
        }
    }
}

/// Everything the tasks share.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub settings: Settings,
    /// One client; every URL is on 127.0.0.1.
    pub http: reqwest::Client,
    /// vmpool instances' ports.
    pub ports: Vec<u16>,
    /// `http://127.0.0.1:<fake>`.
    pub fake_base: String,
    /// Instances killed and not yet back.
    pub down: Mutex<HashSet<usize>>,
    /// Set once the faults have stopped and everything is back up.
    pub quiet_since: Mutex<Option<OffsetDateTime>>,
    /// Operations by (kind, outcome).
    pub ops: Mutex<BTreeMap<(String, String), u64>>,
    /// Latencies of answered operations, by kind.
    pub latencies: Mutex<BTreeMap<String, Vec<Duration>>>,
    /// Faults by kind: (injected, not injected).
    pub faults: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Why a fault kind was not injected.
    pub fault_notes: Mutex<BTreeMap<String, String>>,
    /// The invariants' counters.
    pub invariants: Mutex<Vec<Counter>>,
    /// The matchmaker's view.
    pub model: Mutex<Model>,
    /// The latest read of the table.
    pub snapshot: Mutex<Vec<Row>>,
    /// Set when the traffic should stop.
    pub stopping: AtomicBool,
    /// The model's and the faults' events, one line each, for reading a violation's story.
    pub events: Mutex<Option<std::fs::File>>,
    /// The rollout's window.
    pub rollout: Mutex<RolloutWindow>,
    /// Each pool's buffer target, as the latest GetPoolStatus showed it.
    pub targets: Mutex<HashMap<String, u64>>,
}

/// When the rolling restart with the new build ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct RolloutWindow {
    /// When the first instance was stopped to take the new setting.
    pub started: Option<OffsetDateTime>,
    /// When the last instance was back with it.
    pub finished: Option<OffsetDateTime>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Examples kept per invariant.
const EXAMPLES: usize = 6;

impl Shared {
    /// A new shared state.
    pub fn new(
        settings: Settings,
        ports: Vec<u16>,
        fake_port: u16,
        events: &std::path::Path,
    ) -> Result<Shared, String> {
        let events = std::fs::File::create(events)
            .map_err(|e| format!("cannot create {}: {e}", events.display()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Shared {
            settings,
            http,
            ports,
            fake_base: format!("http://127.0.0.1:{fake_port}"),
            down: Mutex::default(),
            quiet_since: Mutex::default(),
            ops: Mutex::default(),
            latencies: Mutex::default(),
            faults: Mutex::default(),
            fault_notes: Mutex::default(),
            invariants: Mutex::new(vec![Counter::default(); INVARIANTS.len()]),
            model: Mutex::default(),
            snapshot: Mutex::default(),
            stopping: AtomicBool::new(false),
            events: Mutex::new(Some(events)),
            rollout: Mutex::default(),
            targets: Mutex::default(),
        })
    }

    /// Appends a line to the events file.
    pub fn event(&self, what: std::fmt::Arguments<'_>) {
        use std::io::Write;
        if let Some(file) = locked(&self.events).as_mut() {
            let _ = writeln!(file, "{} {what}", now_text());
        }
    }

    /// The model, locked.
    pub fn model(&self) -> MutexGuard<'_, Model> {
        locked(&self.model)
    }

    /// Each pool's buffer target, as the latest GetPoolStatus showed it.
    pub fn targets(&self) -> HashMap<String, u64> {
        locked(&self.targets).clone()
    }

    /// The latest table snapshot.
    pub fn snapshot(&self) -> Vec<Row> {
        locked(&self.snapshot).clone()
    }

    /// Replaces the table snapshot.
    pub fn set_snapshot(&self, rows: Vec<Row>) {
        *locked(&self.snapshot) = rows;
    }

    /// The rollout's window so far.
    pub fn rollout(&self) -> RolloutWindow {
        *locked(&self.rollout)
    }

    /// Records the rollout's start (`finished` false) or end.
    pub fn set_rollout(&self, finished: bool) {
        let now = OffsetDateTime::now_utc();
        let mut r = locked(&self.rollout);
        if finished {
            r.finished = Some(now);
        } else {
            r.started = Some(now);
        }
    }

    /// Instances killed and not back yet.
    pub fn down(&self) -> MutexGuard<'_, HashSet<usize>> {
        locked(&self.down)
    }

    /// When the faults stopped, if they have.
    pub fn quiet_since(&self) -> Option<OffsetDateTime> {
        *locked(&self.quiet_since)
    }

    /// Marks the start of the quiet phase.
    pub fn set_quiet(&self) {
        *locked(&self.quiet_since) = Some(OffsetDateTime::now_utc());
    }

    /// Whether the traffic should stop.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sends a vmpool request, counts its outcome and, when it was answered, its latency.
    pub async fn call(
        &self,
        kind: &str,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Answer {
        let started = std::time::Instant::now();
        let answer = self.send(req, timeout).await;
        let elapsed = started.elapsed();
        *locked(&self.ops)
            .entry((kind.to_owned(), answer.label()))
            .or_default() += 1;
        if answer.status().is_some() {
            locked(&self.latencies)
                .entry(kind.to_owned())
                .or_default()
                .push(elapsed);
        }
        answer
    }

    /// Counts a fault: injected or not (with why).
    pub fn fault(&self, kind: &str, injected: bool, why_not: Option<String>) {
        let mut faults = locked(&self.faults);
        let entry = faults.entry(kind.to_owned()).or_default();
        if injected {
            entry.0 += 1;
        } else {
            entry.1 += 1;
            if let Some(why) = why_not {
                locked(&self.fault_notes).insert(kind.to_owned(), why);
            }
        }
    }

    /// Counts `n` checks of invariant `i`.
    pub fn checked(&self, i: usize, n: u64) {
        if let Some(c) = locked(&self.invariants).get_mut(i) {
            c.checks += n;
        }
    }

    /// Records a violation of invariant `i`.
    pub fn violation(&self, i: usize, what: String) {
        self.event(format_args!("VIOLATION of invariant {}: {what}", i + 1));
        eprintln!(
            "[{}] VIOLATION of invariant {} ({}): {what}",
            now_text(),
            i + 1,
            INVARIANTS.get(i).copied().unwrap_or("?")
        );
        if let Some(c) = locked(&self.invariants).get_mut(i) {
            c.violations += 1;
            if c.examples.len() < EXAMPLES {
                c.examples.push(what);
            }
        }
    }

    /// Says why invariant `i` could not be observed.
    pub fn not_observable(&self, i: usize, why: String) {
        if let Some(c) = locked(&self.invariants).get_mut(i) {
            c.not_observable = Some(why);
        }
    }

    /// A copy of the counters.
    pub fn counters(&self) -> Vec<Counter> {
        locked(&self.invariants).clone()
    }

    /// The operations table.
    pub fn ops_table(&self) -> BTreeMap<(String, String), u64> {
        locked(&self.ops).clone()
    }

    /// Latencies of answered operations, by kind, sorted.
    pub fn latencies(&self) -> BTreeMap<String, Vec<Duration>> {
        let mut all = locked(&self.latencies).clone();
        for v in all.values_mut() {
            v.sort();
        }
        all
    }

    /// The faults table and the notes.
    pub fn faults_table(&self) -> (BTreeMap<String, (u64, u64)>, BTreeMap<String, String>) {
        (
            locked(&self.faults).clone(),
            locked(&self.fault_notes).clone(),
        )
    }

    /// A vmpool route on instance `i`.
    pub fn url(&self, i: usize, path: &str) -> String {
        let port = self.ports.get(i).copied().unwrap_or(0);
        format!("http://127.0.0.1:{port}{path}")
    }

    /// Sends a request with a client timeout and classifies the answer.
    pub async fn send(&self, req: reqwest::RequestBuilder, timeout: Duration) -> Answer {
        match req.timeout(timeout).send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                let body = match tokio::time::timeout(timeout, res.bytes()).await {
                    Ok(Ok(bytes)) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    Ok(Err(e)) if e.is_timeout() => return Answer::Timeout,
                    Ok(Err(_)) => return Answer::Connect,
                    Err(_) => return Answer::Timeout,
                };
                Answer::Status(status, body)
            }
            Err(e) if e.is_timeout() => Answer::Timeout,
            Err(e) if e.is_connect() || e.is_request() => Answer::Connect,
            Err(_) => Answer::Error,
        }
    }

    /// Reads the whole table through GetPoolStatus on the first instance that answers.
    pub async fn read_table(&self) -> Option<Vec<Row>> {
        let down = self.down().clone();
        for i in (0..self.ports.len()).filter(|i| !down.contains(i)) {
            let req = self.http.get(self.url(i, "/api/GetPoolStatus"));
            if let Answer::Status(200, body) = self.send(req, Duration::from_secs(4)).await {
                let targets = body
                    .get("pools")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        let name = p.get("name")?.as_str()?.to_owned();
                        Some((name, p.pointer("/buffer/target")?.as_u64()?))
                    })
                    .collect();
                *locked(&self.targets) = targets;
                let rows = body
                    .get("vms")
                    .and_then(Value::as_array)
                    .map(|vms| vms.iter().filter_map(row).collect())
                    .unwrap_or_default();
                return Some(rows);
            }
        }
        None
    }
}

fn row(v: &Value) -> Option<Row> {
    Some(Row {
        vm: v.get("vmId")?.as_str()?.to_owned(),
        state: v.get("state")?.as_str()?.to_owned(),
        state_changed_at: v
            .get("stateChangedAt")
            .and_then(Value::as_str)
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
        pool: v.get("pool")?.as_str()?.to_owned(),
        build: v.get("build").and_then(Value::as_str).map(str::to_owned),
        rooms: v.get("rooms").and_then(Value::as_u64).unwrap_or_default(),
    })
}

/// The time now, for log lines.
pub fn now_text() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A time as RFC 3339.
pub fn rfc(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}
