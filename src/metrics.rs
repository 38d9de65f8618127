//! What the pool does, counted for Prometheus: each instance keeps its own registry
//! ([`Metrics`]), served at `/api/Metrics`.
//!
//! - ARM and table calls are counted by decorators ([`MeteredCompute`], [`MeteredStore`])
//!   that wrap the ports and implement the same traits, so the adapters know nothing of it.
//! - CreateVM outcomes are counted by the handler; reconcile passes by [`reconcile_pass`],
//!   which both the Functions timer and the standalone loop call, and which also writes one
//!   log event per pass with the same figures (JSON fields under `VMPOOL_LOG_FORMAT=json`).
//! - The gauges (VMs by state, buffer target, breaker) are read from the pool at scrape time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::compute::{Compute, ComputeError, Image, Listed, VmSpec, VmStatus};
use crate::domain::{ClaimKind, VmId, VmRecord, VmState};
use crate::pool::{Created, PoolError};
use crate::reconcile::{PoolMeta, ReconcileError, Reconciler, Summary};
use crate::store::{
    Etag, GroupCounts, Page, PageRequest, Record, Rows, StateCounts, StoreError, Versioned,
    VmStore, Written,
};

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Histogram buckets, in seconds: from a table call (milliseconds) to a slow ARM call.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One instance's metrics registry.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The pools and builds a scrape has shown: one that is gone reads 0 afterwards.
    shown: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, (*v).to_owned()))
        .collect()
}

impl Metrics {
    /// An empty registry, with every metric described.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .map_or_else(
                |_| PrometheusBuilder::new().build_recorder(),
                PrometheusBuilder::build_recorder,
            );
        let handle = recorder.handle();
        let m = Metrics {
            recorder,
            handle,
            shown: std::sync::Mutex::default(),
        };
        let describe: [(&'static str, Option<Unit>, &'static str); 20] = [
            (
                "vmpool_pool_vms",
                None,
                "VMs by pool, build (`unknown` until read from ARM) and state, as the pool's record counted them",
            ),
            (
                "vmpool_pool_buffer_target",
                None,
                "Each pool's warm-buffer target (of its current build)",
            ),
            (
                "vmpool_pool_breaker_open",
                None,
                "1 while the circuit breaker (one for every pool) stops buffer starts and creates",
            ),
            (
                "vmpool_vms_needing_attention",
                None,
                "VMs whose ARM operation ran out of attempts: vmpool stopped calling ARM for them (as of the last reconcile pass)",
            ),
            (
                "vmpool_claims_timed_out_total",
                None,
                "Handed-out VMs that got no rooms report nor mark within VMPOOL_CLAIM_TIMEOUT_SECS and went back to Standby (from the pool's record)",
            ),
            (
                "vmpool_vms",
                None,
                "VMs by state, as the pool's record counted them (see vmpool_pool_counted_at_timestamp_seconds)",
            ),
            ("vmpool_max_vms", None, "VMPOOL_MAX_VMS"),
            (
                "vmpool_buffer_target",
                None,
                "The warm-buffer target the reconciler works towards",
            ),
            (
                "vmpool_breaker_open",
                None,
                "1 while the circuit breaker stops buffer creates",
            ),
            (
                "vmpool_vms_unhealthy",
                None,
                "VMs that run while ARM says their provisioning failed (kept while a game may be on them, never handed out)",
            ),
            (
                "vmpool_observation_suspect",
                None,
                "1 while the reconciler does not trust ARM's view (mass disappearance, or an answer about scope or access) and takes no destructive step on it",
            ),
            (
                "vmpool_pool_status_up",
                None,
                "1 if the table could be read for this scrape (else the pool gauges keep their last values)",
            ),
            (
                "vmpool_createvm_total",
                None,
                "CreateVM answers by action (code=\"OK\") or by error code (action=\"none\")",
            ),
            (
                "vmpool_createvm_duration_seconds",
                Some(Unit::Seconds),
                "CreateVM latency",
            ),
            (
                "vmpool_arm_calls_total",
                None,
                "ARM calls by operation and outcome",
            ),
            (
                "vmpool_arm_call_duration_seconds",
                Some(Unit::Seconds),
                "ARM call latency by operation",
            ),
            (
                "vmpool_table_calls_total",
                None,
                "Table Storage calls by operation and outcome (ok, lost_race, unavailable, rejected)",
            ),
            (
                "vmpool_table_lost_races_total",
                None,
                "Conditional writes that lost a race, by operation",
            ),
            (
                "vmpool_reconcile_passes_total",
                None,
                "Reconcile passes by result (ok, error)",
            ),
            (
                "vmpool_reconcile_duration_seconds",
                Some(Unit::Seconds),
                "Reconcile pass duration",
            ),
        ];
        for (name, unit, help) in describe {
            if name.ends_with("_total") {
                m.recorder.describe_counter(name.into(), unit, help.into());
            } else if name.ends_with("_seconds") {
                m.recorder
                    .describe_histogram(name.into(), unit, help.into());
            } else {
                m.recorder.describe_gauge(name.into(), unit, help.into());
            }
        }
        m.recorder.describe_counter(
            "vmpool_reconcile_actions_total".into(),
            None,
            "What reconcile passes did, summed by kind (the fields of the pass summary)".into(),
        );
        m.recorder.describe_counter(
            "vmpool_requests_total".into(),
            None,
            "Answers of this instance by operation (CreateVM, GetVM...) and HTTP status".into(),
        );
        m.recorder.describe_gauge(
            "vmpool_reconcile_last_success_timestamp_seconds".into(),
            None,
            "Unix time of the last pass that ran, by this instance".into(),
        );
        let pool_wide: [(&'static str, &'static str); 9] = [
            (
                "vmpool_pool_counted_at_timestamp_seconds",
                "When the counts of vmpool_vms were taken (the last pass's listing, or now for a fresh count)",
            ),
            (
                "vmpool_pool_last_pass_start_timestamp_seconds",
                "When the pool's last reconcile pass began, by any instance (the pool's record)",
            ),
            (
                "vmpool_pool_last_pass_end_timestamp_seconds",
                "When the pool's last reconcile pass ended, by any instance (the pool's record)",
            ),
            (
                "vmpool_pool_last_pass_ok",
                "1 if the pool's last reconcile pass ran to its end, 0 if it failed (the pool's record)",
            ),
            (
                "vmpool_pool_last_success_timestamp_seconds",
                "When the pool's last reconcile pass that ran to its end finished, by any instance (the pool's record)",
            ),
            (
                "vmpool_pool_last_pass_actions",
                "What the pool's last successful reconcile pass did, by kind (the pool's record)",
            ),
            (
                "vmpool_pool_breaker_consecutive_failures",
                "Starts and creates refused in a row in each pool since one of its VMs came up (the breakers' record)",
            ),
            (
                "vmpool_pool_observation_suspect",
                "1 while the brake holds: many known VMs vanished from ARM's listing at once (the pool's record)",
            ),
            (
                "vmpool_pool_vanished_vms",
                "Known VMs missing from the last listing while the brake held (the pool's record)",
            ),
        ];
        for (name, help) in pool_wide {
            m.recorder.describe_gauge(name.into(), None, help.into());
        }
        m
    }

    fn count(&self, name: &'static str, pairs: &[(&'static str, &str)], n: u64) {
        let key = Key::from_parts(name, labels(pairs));
        self.recorder.register_counter(&key, &META).increment(n);
    }

    fn observe(&self, name: &'static str, pairs: &[(&'static str, &str)], d: Duration) {
        let key = Key::from_parts(name, labels(pairs));
        self.recorder
            .register_histogram(&key, &META)
            .record(d.as_secs_f64());
    }

    fn set(&self, name: &'static str, pairs: &[(&'static str, &str)], v: f64) {
        let key = Key::from_parts(name, labels(pairs));
        self.recorder.register_gauge(&key, &META).set(v);
    }

    /// Counts one answer of the API's `operation` with `status`.
    pub fn request(&self, operation: &'static str, status: u16) {
        self.count(
            "vmpool_requests_total",
            &[("operation", operation), ("status", &status.to_string())],
            1,
        );
    }

    /// Counts one CreateVM answer and its latency.
    pub fn create_vm(&self, result: &Result<Created, PoolError>, elapsed: Duration) {
        match result {
            Ok(created) => {
                self.count(
                    "vmpool_createvm_total",
                    &[("action", created.action.as_str()), ("code", "OK")],
                    1,
                );
                self.observe(
                    "vmpool_createvm_duration_seconds",
                    &[("result", "ok")],
                    elapsed,
                );
            }
            Err(e) => {
                let code = pool_error_code(e);
                self.count(
                    "vmpool_createvm_total",
                    &[("action", "none"), ("code", code)],
                    1,
                );
                self.observe(
                    "vmpool_createvm_duration_seconds",
                    &[("result", "error")],
                    elapsed,
                );
            }
        }
    }

    /// Counts one ARM call.
    pub fn arm_call(&self, operation: &'static str, outcome: &str, elapsed: Duration) {
        self.count(
            "vmpool_arm_calls_total",
            &[("operation", operation), ("outcome", outcome)],
            1,
        );
        self.observe(
            "vmpool_arm_call_duration_seconds",
            &[("operation", operation)],
            elapsed,
        );
    }

    /// Counts one table call; a lost race is counted twice: as an outcome and as a race.
    pub fn table_call(&self, operation: &'static str, outcome: &str) {
        self.count(
            "vmpool_table_calls_total",
            &[("operation", operation), ("outcome", outcome)],
            1,
        );
        if outcome == "lost_race" {
            self.count(
                "vmpool_table_lost_races_total",
                &[("operation", operation)],
                1,
            );
        }
    }

    /// Records one reconcile pass.
    pub fn reconcile(&self, result: &Result<Summary, ReconcileError>, elapsed: Duration) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.count("vmpool_reconcile_passes_total", &[("result", outcome)], 1);
        self.observe(
            "vmpool_reconcile_duration_seconds",
            &[("result", outcome)],
            elapsed,
        );
        if let Ok(s) = result {
            for (kind, n) in summary_fields(s) {
                self.count(
                    "vmpool_reconcile_actions_total",
                    &[("kind", kind)],
                    u64::from(n),
                );
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.set(
                "vmpool_reconcile_last_success_timestamp_seconds",
                &[],
                now.as_secs_f64(),
            );
        }
    }

    /// Sets the gauges from the pool's status now.
    pub fn set_pool(&self, pool: &PoolGauges) {
        for (state, n) in pool.vms {
            self.set("vmpool_vms", &[("state", state.as_str())], f64::from(n));
        }
        let record = &pool.record;
        let stamp = |name: &'static str, t: Option<OffsetDateTime>| {
            if let Some(t) = t {
                self.set(name, &[], unix_seconds(t));
            }
        };
        stamp(
            "vmpool_pool_counted_at_timestamp_seconds",
            record.counted_at,
        );
        stamp(
            "vmpool_pool_last_pass_start_timestamp_seconds",
            record.last_reconcile_started_at,
        );
        stamp(
            "vmpool_pool_last_pass_end_timestamp_seconds",
            record.last_reconcile_at,
        );
        stamp(
            "vmpool_pool_last_success_timestamp_seconds",
            record.last_success_at,
        );
        if let Some(ok) = record.last_reconcile_ok {
            self.set("vmpool_pool_last_pass_ok", &[], if ok { 1.0 } else { 0.0 });
        }
        if let Some(summary) = &record.last_summary {
            for (kind, n) in summary_fields(summary) {
                self.set(
                    "vmpool_pool_last_pass_actions",
                    &[("kind", kind)],
                    f64::from(n),
                );
            }
        }
        self.set(
            "vmpool_pool_observation_suspect",
            &[],
            if record.observation_suspect() {
                1.0
            } else {
                0.0
            },
        );
        self.set("vmpool_pool_vanished_vms", &[], f64::from(record.vanished));
        self.set("vmpool_max_vms", &[], f64::from(pool.max_vms));
        self.set("vmpool_buffer_target", &[], f64::from(pool.buffer_target));
        self.set(
            "vmpool_breaker_open",
            &[],
            if pool.breaker_open { 1.0 } else { 0.0 },
        );
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let now: std::collections::BTreeSet<(String, String)> = pool
            .pools
            .iter()
            .flat_map(|p| p.builds.iter().map(|(b, _)| (p.name.clone(), b.clone())))
            .collect();
        for (name, build) in shown.difference(&now) {
            for state in VmState::ALL {
                self.set(
                    "vmpool_pool_vms",
                    &[("pool", name), ("build", build), ("state", state.as_str())],
                    0.0,
                );
            }
        }
        for p in &pool.pools {
            for (build, counts) in &p.builds {
                for (state, n) in counts {
                    self.set(
                        "vmpool_pool_vms",
                        &[
                            ("pool", &p.name),
                            ("build", build),
                            ("state", state.as_str()),
                        ],
                        f64::from(*n),
                    );
                }
            }
            self.set(
                "vmpool_pool_buffer_target",
                &[("pool", &p.name), ("build", &p.build)],
                f64::from(p.buffer_target),
            );
            self.set(
                "vmpool_pool_breaker_open",
                &[("pool", &p.name)],
                if p.breaker_open { 1.0 } else { 0.0 },
            );
            self.set(
                "vmpool_pool_breaker_consecutive_failures",
                &[("pool", &p.name)],
                f64::from(p.breaker_failures),
            );
        }
        *shown = now;
        self.set(
            "vmpool_vms_needing_attention",
            &[],
            f64::from(pool.needs_attention),
        );
        // Kept in the pool's record, so every instance shows the pool's count (the pass
        // may run on another instance than the one scraped).
        self.recorder
            .register_counter(&Key::from_name("vmpool_claims_timed_out_total"), &META)
            .absolute(pool.claims_timed_out);
        self.set("vmpool_vms_unhealthy", &[], f64::from(pool.unhealthy));
        self.set(
            "vmpool_observation_suspect",
            &[],
            if pool.observation_suspect { 1.0 } else { 0.0 },
        );
    }

    /// The Prometheus text exposition of what is recorded, without reading the pool.
    pub fn render_counters(&self) -> String {
        self.handle.render()
    }

    /// The Prometheus text exposition, with the gauges set from `view` (the pool's status
    /// now), or marked down when it could not be read.
    pub fn render(&self, pool: Option<&PoolGauges>) -> String {
        match pool {
            Some(pool) => {
                self.set_pool(pool);
                self.set("vmpool_pool_status_up", &[], 1.0);
            }
            None => self.set("vmpool_pool_status_up", &[], 0.0),
        }
        self.handle.render()
    }
}

/// One pool as the gauges show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnePoolGauges {
    /// The pool.
    pub name: String,
    /// Its current build.
    pub build: String,
    /// Its VMs by build, then by state.
    pub builds: Vec<(String, Vec<(VmState, u32)>)>,
    /// Its buffer target.
    pub buffer_target: u32,
    /// Whether its breaker is open.
    pub breaker_open: bool,
    /// Starts and creates refused in a row in it.
    pub breaker_failures: u32,
}

fn unix_seconds(t: OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// The pool's state as the gauges show it, read at scrape time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolGauges {
    /// Each pool.
    pub pools: Vec<OnePoolGauges>,
    /// VMs in each state.
    pub vms: [(VmState, u32); VmState::ALL.len()],
    /// `VMPOOL_MAX_VMS`.
    pub max_vms: u32,
    /// The warm buffer's target.
    pub buffer_target: u32,
    /// Whether the circuit breaker is open.
    pub breaker_open: bool,
    /// The pool's record: the last pass (of whichever instance ran it), the breaker, the
    /// brake.
    pub record: PoolMeta,
    /// VMs needing attention, as of the last reconcile pass.
    pub needs_attention: u32,
    /// Unused claims returned to `Standby`, over the pool's life.
    pub claims_timed_out: u64,
    /// VMs that run while ARM says their provisioning failed.
    pub unhealthy: u32,
    /// Whether the last pass did not trust ARM's view.
    pub observation_suspect: bool,
}

/// The envelope code a pool error answers with.
fn pool_error_code(e: &PoolError) -> &'static str {
    match e {
        PoolError::NotFound(_) => "NotFound",
        PoolError::Conflict(_) => "Conflict",
        PoolError::CapacityExhausted { .. }
        | PoolError::PoolFull { .. }
        | PoolError::BuildExhausted { .. }
        | PoolError::Refused { .. } => "CapacityExhausted",
        PoolError::UnknownPool { .. } => "InvalidInput",
        PoolError::Store(_)
        | PoolError::Compute(_)
        | PoolError::Contention
        | PoolError::KeyInFlight
        | PoolError::Interrupted(_) => "Unavailable",
    }
}

fn summary_fields(s: &Summary) -> [(&'static str, u32); 18] {
    [
        ("completed", s.completed),
        ("deallocated", s.deallocated),
        ("failed", s.failed),
        ("reissued", s.reissued),
        ("started", s.started),
        ("created", s.created),
        ("deallocating", s.deallocating),
        ("corrected", s.corrected),
        ("deleted", s.deleted),
        ("forgotten", s.forgotten),
        ("retired", s.retired),
        ("adopted", s.adopted),
        ("unclaimed", s.unclaimed),
        ("start_refusals", s.start_refusals),
        ("needs_attention", s.needs_attention),
        ("keys_expired", s.keys_expired),
        ("lost_races", s.lost_races),
        ("errors", s.errors),
    ]
}

/// One reconcile pass: runs it, records it in `metrics`, and writes one log event
/// (`vmpool::metrics` target, message `reconcile pass measured`) whose fields are the pass's figures.
pub async fn reconcile_pass(
    reconciler: &Reconciler,
    metrics: &Metrics,
) -> Result<Summary, ReconcileError> {
    let started = Instant::now();
    let result = reconciler.run_once().await;
    let elapsed = started.elapsed();
    metrics.reconcile(&result, elapsed);
    let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    match &result {
        Ok(s) => info!(
            ok = true,
            duration_ms,
            completed = s.completed,
            deallocated = s.deallocated,
            failed = s.failed,
            reissued = s.reissued,
            started = s.started,
            created = s.created,
            deallocating = s.deallocating,
            corrected = s.corrected,
            deleted = s.deleted,
            forgotten = s.forgotten,
            retired = s.retired,
            adopted = s.adopted,
            unclaimed = s.unclaimed,
            start_refusals = s.start_refusals,
            needs_attention = s.needs_attention,
            keys_expired = s.keys_expired,
            buffer_target = s.buffer_target,
            lost_races = s.lost_races,
            errors = s.errors,
            "reconcile pass measured"
        ),
        Err(e) => warn!(ok = false, duration_ms, error = %e, "reconcile pass measured"),
    }
    result
}

fn compute_outcome<T>(result: &Result<T, ComputeError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ComputeError::Throttled { .. }) => "throttled",
        Err(ComputeError::Unavailable(_)) => "unavailable",
        Err(ComputeError::NotFound) => "not_found",
        Err(ComputeError::Conflict(_)) => "conflict",
        Err(ComputeError::Rejected { .. }) => "rejected",
        Err(ComputeError::Suspect { .. }) => "suspect",
    }
}

/// The compute port, with every ARM call counted.
pub struct MeteredCompute {
    inner: Arc<dyn Compute>,
    metrics: Arc<Metrics>,
}

impl MeteredCompute {
    /// Counts `inner`'s calls in `metrics`.
    pub fn new(inner: Arc<dyn Compute>, metrics: Arc<Metrics>) -> Self {
        MeteredCompute { inner, metrics }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, ComputeError>>,
    ) -> Result<T, ComputeError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .arm_call(operation, compute_outcome(&result), started.elapsed());
        result
    }
}

#[async_trait]
impl Compute for MeteredCompute {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn resource_id(&self, name: &VmId) -> String {
        self.inner.resource_id(name)
    }

    async fn create(&self, name: &VmId, pool: &VmSpec) -> Result<(), ComputeError> {
        self.timed("create", self.inner.create(name, pool)).await
    }

    async fn start(&self, name: &VmId) -> Result<(), ComputeError> {
        self.timed("start", self.inner.start(name)).await
    }

    async fn deallocate(&self, name: &VmId) -> Result<(), ComputeError> {
        self.timed("deallocate", self.inner.deallocate(name)).await
    }

    async fn delete(&self, name: &VmId) -> Result<(), ComputeError> {
        self.timed("delete", self.inner.delete(name)).await
    }

    async fn status(&self, name: &VmId) -> Result<Option<VmStatus>, ComputeError> {
        self.timed("status", self.inner.status(name)).await
    }

    async fn list(&self) -> Result<Vec<Listed>, ComputeError> {
        self.timed("list", self.inner.list()).await
    }

    async fn list_power(&self) -> Result<Vec<Listed>, ComputeError> {
        self.timed("list_power", self.inner.list_power()).await
    }

    async fn public_ip(&self, name: &VmId) -> Result<Option<String>, ComputeError> {
        self.timed("public_ip", self.inner.public_ip(name)).await
    }

    async fn image(&self, name: &VmId) -> Result<Option<Image>, ComputeError> {
        self.timed("image", self.inner.image(name)).await
    }
}

fn store_outcome<T>(result: &Result<T, StoreError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::Rejected(_)) => "rejected",
    }
}

fn written_outcome(result: &Result<Written, StoreError>) -> &'static str {
    match result {
        Ok(Written::LostRace) => "lost_race",
        other => store_outcome(other),
    }
}

/// The VM table port, with every table call counted (lost races apart).
pub struct MeteredStore {
    inner: Arc<dyn VmStore>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Counts `inner`'s calls in `metrics`.
    pub fn new(inner: Arc<dyn VmStore>, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }
}

#[async_trait]
impl VmStore for MeteredStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, id: &VmId) -> Result<Option<Versioned>, StoreError> {
        let r = self.inner.get(id).await;
        self.metrics.table_call("get", store_outcome(&r));
        r
    }

    async fn list(&self, which: Rows<'_>) -> Result<Vec<Versioned>, StoreError> {
        let r = self.inner.list(which).await;
        self.metrics.table_call("list", store_outcome(&r));
        r
    }

    async fn insert(&self, vm: &VmRecord) -> Result<Written, StoreError> {
        let r = self.inner.insert(vm).await;
        self.metrics.table_call("insert", written_outcome(&r));
        r
    }

    async fn update(&self, vm: &VmRecord, etag: &Etag) -> Result<Written, StoreError> {
        let r = self.inner.update(vm, etag).await;
        self.metrics.table_call("update", written_outcome(&r));
        r
    }

    async fn delete(&self, id: &VmId, etag: &Etag) -> Result<Written, StoreError> {
        let r = self.inner.delete(id, etag).await;
        self.metrics.table_call("delete", written_outcome(&r));
        r
    }

    async fn list_page(
        &self,
        which: Rows<'_>,
        page: &PageRequest,
    ) -> Result<Page<Versioned>, StoreError> {
        let r = self.inner.list_page(which, page).await;
        self.metrics.table_call("list_page", store_outcome(&r));
        r
    }

    async fn sample(
        &self,
        kind: ClaimKind,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Versioned>, StoreError> {
        let r = self.inner.sample(kind, after, limit).await;
        self.metrics.table_call("sample", store_outcome(&r));
        r
    }

    async fn count_states(&self) -> Result<StateCounts, StoreError> {
        let r = self.inner.count_states().await;
        self.metrics.table_call("count_states", store_outcome(&r));
        r
    }

    async fn count_groups(&self) -> Result<GroupCounts, StoreError> {
        let r = self.inner.count_groups().await;
        self.metrics.table_call("count_groups", store_outcome(&r));
        r
    }

    async fn repair_index(&self, rows: &[Versioned]) -> Result<usize, StoreError> {
        let r = self.inner.repair_index(rows).await;
        self.metrics.table_call("repair_index", store_outcome(&r));
        r
    }

    async fn get_record(&self, kind: &str, key: &str) -> Result<Option<Record>, StoreError> {
        let r = self.inner.get_record(kind, key).await;
        self.metrics.table_call("get_record", store_outcome(&r));
        r
    }

    async fn insert_record(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<Written, StoreError> {
        let r = self.inner.insert_record(kind, key, value).await;
        self.metrics
            .table_call("insert_record", written_outcome(&r));
        r
    }

    async fn update_record(
        &self,
        kind: &str,
        key: &str,
        value: &str,
        etag: &Etag,
    ) -> Result<Written, StoreError> {
        let r = self.inner.update_record(kind, key, value, etag).await;
        self.metrics
            .table_call("update_record", written_outcome(&r));
        r
    }

    async fn list_records(
        &self,
        kind: &str,
        page: &PageRequest,
    ) -> Result<Page<(String, Record)>, StoreError> {
        let r = self.inner.list_records(kind, page).await;
        self.metrics.table_call("list_records", store_outcome(&r));
        r
    }

    async fn delete_record(
        &self,
        kind: &str,
        key: &str,
        etag: &Etag,
    ) -> Result<Written, StoreError> {
        let r = self.inner.delete_record(kind, key, etag).await;
        self.metrics
            .table_call("delete_record", written_outcome(&r));
        r
    }
}

/// Wraps both ports so that every call is counted in `metrics`.
pub fn metered(
    store: Arc<dyn VmStore>,
    compute: Arc<dyn Compute>,
    metrics: &Arc<Metrics>,
) -> (Arc<dyn VmStore>, Arc<dyn Compute>) {
    (
        Arc::new(MeteredStore::new(store, metrics.clone())),
        Arc::new(MeteredCompute::new(compute, metrics.clone())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_prometheus_text() {
        let m = Metrics::new();
        m.table_call("update", "lost_race");
        m.arm_call("create", "throttled", Duration::from_millis(20));
        let text = m.handle.render();
        assert!(
            text.contains(r#"vmpool_table_lost_races_total{operation="update"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"vmpool_arm_calls_total{operation="create",outcome="throttled"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"vmpool_arm_call_duration_seconds_bucket{operation="create",le="0.025"} 1"#
            ),
            "{text}"
        );
    }
}
