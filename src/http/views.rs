//! The JSON the API answers with, one type per shape; the OpenAPI document is generated from
//! these same types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::config::{PoolPolicy, PoolSpec};
use crate::domain::{CreateAction, MarkAction, ReportAction, VmRecord, VmState};
use crate::pool::StatusPage;
use crate::reconcile::{PoolMeta, Summary};
use crate::store::GroupCounts;

/// What a vmId looks like: Azure's VM naming rules (1-64 ASCII letters, digits, `-`, `_`
/// and `.`, not ending with `.`).
pub const VM_ID_PATTERN: &str = "^[A-Za-z0-9_.-]{0,63}[A-Za-z0-9_-]$";

/// The seven VM states, for the document (the values [`VmState`] serialises to).
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(as = VmState)]
pub enum StateName {
    /// An ARM create or start was accepted; not usable yet.
    Creating,
    /// Usable by the matchmaker, which asked for it.
    Running,
    /// The matchmaker no longer needs it; its rooms drain.
    MarkedForDeallocation,
    /// An ARM deallocate is in flight (for a VM of a pool's previous build, a delete).
    Deallocating,
    /// Stopped in Azure; can be started again.
    Deallocated,
    /// Warm buffer: running but not yet handed out.
    Standby,
    /// An ARM operation failed or timed out; the error is recorded.
    Failed,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmView {
    /// The VM's name, also its row key.
    #[schema(example = "vmpool-kugvkeie3q")]
    pub vm_id: String,
    /// Its state.
    #[schema(value_type = StateName)]
    pub state: VmState,
    /// Its public IP; `null` until known.
    #[schema(example = "203.0.113.1", required = true)]
    pub public_ip: Option<String>,
    /// The ports the game server listens on (`VMPOOL_GAME_PORTS`).
    pub ports: Vec<u16>,
    /// Rooms last reported.
    pub rooms: u32,
    /// Full ARM resource ID.
    pub resource_id: String,
    /// When the state last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub state_changed_at: OffsetDateTime,
    /// When the VM's row was first written (its age counts from here).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The last ARM error; absent when none is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub last_error: Option<String>,
    /// The pool it belongs to.
    #[schema(example = "default")]
    pub pool: String,
    /// The build it runs; null while not known yet (such a VM is never handed out).
    #[schema(example = "1.5.0", required = true)]
    pub build: Option<String>,
    /// Why vmpool stopped calling ARM for this VM (its operation ran out of attempts), when
    /// it did: an operator must look at it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub needs_attention: Option<String>,
    /// Why the VM is unhealthy, when it is: it runs, but ARM says the last operation on its
    /// model failed (a VM extension). It is kept while a game may be on it and never handed
    /// out by CreateVM.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub unhealthy: Option<String>,
}

impl VmView {
    /// The view of `vm` with its pool's game ports.
    pub fn new(vm: &VmRecord, policy: &PoolPolicy) -> Self {
        let ports = policy
            .pools
            .get(&vm.pool)
            .map_or_else(|| policy.game_ports.clone(), |p| p.game_ports.clone());
        VmView {
            pool: vm.pool.clone(),
            build: vm.build.clone(),
            vm_id: vm.id.to_string(),
            state: vm.state,
            public_ip: vm.public_ip.clone(),
            ports,
            rooms: vm.rooms,
            resource_id: vm.resource_id.clone(),
            state_changed_at: vm.state_changed_at,
            created_at: vm.created_at,
            last_error: vm.last_error.clone(),
            needs_attention: vm.attention.clone(),
            unhealthy: vm.unhealthy.clone(),
        }
    }
}

/// What CreateVM did: the VM handed out, and how it was found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreateVmAnswer {
    /// The VM, `Running` (200) or `Creating` (202).
    pub vm: VmView,
    /// How it was found.
    pub action: CreateAction,
}

/// What ReportGameRoomsNumber did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReportAnswer {
    /// The VM after the report.
    pub vm: VmView,
    /// What happened.
    pub action: ReportAction,
}

/// What MarkVMForDeallocation did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MarkAnswer {
    /// The VM after the mark.
    pub vm: VmView,
    /// What happened.
    pub action: MarkAction,
}

/// One VM.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VmAnswer {
    /// The VM as it is now.
    pub vm: VmView,
}

/// The VMs the matchmaker may use.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VmList {
    /// `Running` VMs, sorted by vmId: one page.
    pub vms: Vec<VmView>,
    /// Pass as `?continuation=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub continuation: Option<String>,
}

/// How many VMs are in each state.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
#[expect(missing_docs, reason = "one count per state, named by the state")]
pub struct StateCounts {
    pub creating: u32,
    pub running: u32,
    pub marked_for_deallocation: u32,
    pub deallocating: u32,
    pub deallocated: u32,
    pub standby: u32,
    pub failed: u32,
}

impl StateCounts {
    /// The counts the store made.
    pub fn from_store(counts: &crate::store::StateCounts) -> Self {
        let mut c = StateCounts::default();
        for (state, n) in counts {
            *c.slot(*state) += u32::try_from(*n).unwrap_or(u32::MAX);
        }
        c
    }

    fn slot(&mut self, state: VmState) -> &mut u32 {
        match state {
            VmState::Creating => &mut self.creating,
            VmState::Running => &mut self.running,
            VmState::MarkedForDeallocation => &mut self.marked_for_deallocation,
            VmState::Deallocating => &mut self.deallocating,
            VmState::Deallocated => &mut self.deallocated,
            VmState::Standby => &mut self.standby,
            VmState::Failed => &mut self.failed,
        }
    }

    /// The counts of `vms`.
    pub fn of(vms: &[VmRecord]) -> Self {
        let mut c = StateCounts::default();
        for vm in vms {
            *c.slot(vm.state) += 1;
        }
        c
    }

    /// The count of one state.
    pub fn get(&self, state: VmState) -> u32 {
        match state {
            VmState::Creating => self.creating,
            VmState::Running => self.running,
            VmState::MarkedForDeallocation => self.marked_for_deallocation,
            VmState::Deallocating => self.deallocating,
            VmState::Deallocated => self.deallocated,
            VmState::Standby => self.standby,
            VmState::Failed => self.failed,
        }
    }
}

/// The warm buffer.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BufferView {
    /// The floor: a pool's `minStandby` (`VMPOOL_MIN_STANDBY` unless `VMPOOL_POOLS` says).
    pub min_standby: u32,
    /// The target the reconciler works towards (never below `minStandby`).
    pub target: u32,
}

/// The circuit breaker over VM creation.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    /// Whether the buffer is creating no VMs now.
    pub open: bool,
    /// Until when, while open; `null` while closed.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub open_until: Option<OffsetDateTime>,
    /// Why it opened, while open; `null` while closed.
    #[schema(required = true)]
    pub reason: Option<String>,
    /// Creates that failed in a row since the last success.
    pub consecutive_create_failures: u32,
}

/// Whether the reconciler's view of ARM is trusted (see the README's reconciler section).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservationView {
    /// Too many known VMs vanished from the last listing, or ARM answered about the
    /// subscription, resource group or access rather than about a VM: the reconciler took
    /// no destructive step on what it could not confirm.
    pub suspect: bool,
    /// How many known VMs the last listing lacked.
    pub missing: u32,
    /// What ARM answered that the reconciler did not trust (such as
    /// `ResourceGroupNotFound`), when that is why; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub reason: Option<String>,
}

/// One pool: its settings, counts by build, buffer, breaker and rollout.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    /// Its name.
    #[schema(example = "default")]
    pub name: String,
    /// Its current build: what CreateVM hands out unless a caller names another.
    #[schema(example = "1.5.0")]
    pub build: String,
    /// The image new VMs boot from.
    pub image: String,
    /// Its region (null for the simulated cloud's `default` pool without one).
    #[schema(required = true)]
    pub location: Option<String>,
    /// Its VM size.
    pub vm_size: String,
    /// Its most VMs not `Deallocated` at once.
    pub max_vms: u32,
    /// Its VMs by state.
    pub counts: StateCounts,
    /// Its VMs by build (`unknown`: not read from ARM yet), then by state.
    pub builds: BTreeMap<String, StateCounts>,
    /// Its warm buffer (of the current build).
    pub buffer: BufferView,
    /// Its circuit breaker: refusals in this pool open it, and it stops only this pool's
    /// starts and creates.
    pub circuit_breaker: BreakerView,
    /// VMs of other builds still alive: the rollout is done when there are none.
    pub rollout: RolloutView,
}

/// How far a pool's rollout to its current build has come.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// No VM of another (or an unknown) build is left, `Failed` ones apart.
    pub done: bool,
    /// VMs of the current build, `Failed` ones apart.
    pub current: u32,
    /// VMs of other builds in use (`Running`, `MarkedForDeallocation`): they keep their
    /// games and are deleted once drained.
    pub old_in_use: u32,
    /// VMs of other builds idle (`Standby`, `Deallocated`) or on their way out: deleted at
    /// a bounded rate once the new build's buffer is filled.
    pub old_idle: u32,
    /// VMs whose build is not known yet.
    pub unknown: u32,
}

/// Every VM and the pool's own record.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatusView {
    /// VMs by state over every pool (every state, zeros included), as counted at
    /// `countedAt`.
    pub counts: StateCounts,
    /// When the counts were taken: the start of the last reconcile pass's listing, or now for
    /// a fresh count.
    #[serde(with = "time::serde::rfc3339")]
    pub counted_at: OffsetDateTime,
    /// `record`: the counts the last reconcile pass wrote in the pool's record; `fresh`:
    /// every row counted for this answer (`?counts=fresh`, or no pass has counted yet).
    #[schema(example = "record")]
    pub counts_from: String,
    /// VMs sorted by vmId, one page; absent when only counts were asked for (`?vms=false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<VmView>, required = false)]
    pub vms: Option<Vec<VmView>>,
    /// Pass as `?continuation=` for the next page of VMs; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub continuation: Option<String>,
    /// `VMPOOL_MAX_VMS`: most VMs not `Deallocated` over every pool together.
    pub max_vms: u32,
    /// The warm buffer over every pool (floors and targets added up).
    pub buffer: BufferView,
    /// The circuit breaker: open when any pool's is (the first open one is shown).
    pub circuit_breaker: BreakerView,
    /// Each pool, in name order.
    pub pools: Vec<PoolView>,
    /// Whether the last ARM listing was trusted.
    pub observation: ObservationView,
    /// VMs that run while ARM says their provisioning failed, as of the last pass (each
    /// one's `unhealthy` says why).
    pub unhealthy: u32,
    /// VMs whose operation ran out of attempts, as of the last reconcile pass: vmpool
    /// stops calling ARM for them and an operator must look at them (each VM shows
    /// `needsAttention`).
    pub needs_attention: u32,
    /// Handed-out VMs that got no report nor mark within `VMPOOL_CLAIM_TIMEOUT_SECS` and
    /// went back to `Standby`, counted over the pool's life.
    pub claims_timed_out: u64,
    /// When the last reconcile pass began, whichever instance ran it; `null` before the first.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub last_reconcile_started_at: Option<OffsetDateTime>,
    /// When the last reconcile pass finished; `null` before the first.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub last_reconcile_at: Option<OffsetDateTime>,
    /// Whether the last pass ran to its end (`null` before any pass recorded its result).
    #[schema(required = true)]
    pub last_reconcile_ok: Option<bool>,
    /// Why the last pass failed, when it did; `null` otherwise.
    #[schema(required = true)]
    pub last_reconcile_error: Option<String>,
    /// When the last pass that ran to its end finished; `null` before the first.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub last_success_at: Option<OffsetDateTime>,
    /// One line on what the last pass did.
    pub last_reconcile_summary: String,
}

/// The circuit breaker of `pool`, as the breakers' record holds it.
fn breaker_view(meta: &PoolMeta, pool: &str, now: OffsetDateTime) -> BreakerView {
    let breaker = meta.breaker(pool);
    let open = breaker.open_at(now);
    BreakerView {
        open,
        open_until: breaker.open_until.filter(|_| open),
        reason: breaker.reason.filter(|_| open),
        consecutive_create_failures: breaker.consecutive_failures,
    }
}

/// The build name GetPoolStatus shows for VMs whose build is not known yet.
pub const UNKNOWN_BUILD: &str = "unknown";

impl PoolView {
    /// The view of pool `spec` from the table's counts, its buffer state and the breaker
    /// (one for every pool) in `meta`.
    pub fn new(
        spec: &PoolSpec,
        groups: &GroupCounts,
        meta: &PoolMeta,
        now: OffsetDateTime,
    ) -> Self {
        let state = meta.pool(&spec.name);
        let mut builds: BTreeMap<String, StateCounts> = BTreeMap::new();
        let mut counts = StateCounts::default();
        let mut rollout = RolloutView {
            done: true,
            current: 0,
            old_in_use: 0,
            old_idle: 0,
            unknown: 0,
        };
        for (group, by_state) in groups.iter().filter(|(g, _)| g.pool == spec.name) {
            let name = group.build.clone().unwrap_or_else(|| UNKNOWN_BUILD.into());
            let these = StateCounts::from_store(by_state);
            let slot = builds.entry(name).or_default();
            for state in VmState::ALL {
                *slot.slot(state) += these.get(state);
                *counts.slot(state) += these.get(state);
            }
            let alive = VmState::ALL
                .into_iter()
                .filter(|s| *s != VmState::Failed)
                .map(|s| these.get(s))
                .sum::<u32>();
            match group.build.as_deref() {
                Some(b) if b == spec.build => rollout.current += alive,
                None => rollout.unknown += alive,
                Some(_) => {
                    let in_use =
                        these.get(VmState::Running) + these.get(VmState::MarkedForDeallocation);
                    rollout.old_in_use += in_use;
                    rollout.old_idle += alive - in_use;
                }
            }
        }
        rollout.done = rollout.old_in_use + rollout.old_idle + rollout.unknown == 0;
        PoolView {
            name: spec.name.clone(),
            build: spec.build.clone(),
            image: spec.image.text(),
            location: spec.location.clone(),
            vm_size: spec.vm_size.clone(),
            max_vms: spec.max_vms,
            counts,
            builds,
            buffer: BufferView {
                min_standby: spec.min_standby,
                target: state.effective_buffer_target(spec),
            },
            circuit_breaker: breaker_view(meta, &spec.name, now),
            rollout,
        }
    }
}

impl PoolStatusView {
    /// The view of one page of the pool's status and the reconciler's record `meta` at `now`.
    pub fn new(
        status: &StatusPage,
        meta: &PoolMeta,
        policy: &PoolPolicy,
        now: OffsetDateTime,
    ) -> Self {
        let pools: Vec<PoolView> = policy
            .pools
            .all()
            .iter()
            .map(|spec| PoolView::new(spec, &status.groups, meta, now))
            .collect();
        // The first pool's whose breaker is open, else the most refusals in a row of any.
        let circuit_breaker = pools
            .iter()
            .map(|p| p.circuit_breaker.clone())
            .find(|b| b.open)
            .unwrap_or_else(|| BreakerView {
                open: false,
                open_until: None,
                reason: None,
                consecutive_create_failures: pools
                    .iter()
                    .map(|p| p.circuit_breaker.consecutive_create_failures)
                    .max()
                    .unwrap_or(0),
            });
        PoolStatusView {
            counts: StateCounts::from_store(&status.counts),
            counted_at: status.counted_at,
            counts_from: status.counts_from.as_str().to_owned(),
            vms: status.vms.as_ref().map(|page| {
                page.items
                    .iter()
                    .map(|vm| VmView::new(vm, policy))
                    .collect()
            }),
            continuation: status
                .vms
                .as_ref()
                .and_then(|page| page.next.as_ref())
                .map(|next| next.token()),
            max_vms: policy.max_vms,
            buffer: BufferView {
                min_standby: pools.iter().map(|p| p.buffer.min_standby).sum(),
                target: pools.iter().map(|p| p.buffer.target).sum(),
            },
            circuit_breaker,
            pools,
            observation: ObservationView {
                suspect: meta.observation_suspect(),
                missing: meta.vanished,
                reason: meta.suspect_reason.clone(),
            },
            unhealthy: meta.unhealthy,
            needs_attention: meta.needs_attention,
            claims_timed_out: meta.claims_timed_out,
            last_reconcile_started_at: meta.last_reconcile_started_at,
            last_reconcile_at: meta.last_reconcile_at,
            last_reconcile_ok: meta.last_reconcile_ok,
            last_reconcile_error: meta.last_reconcile_error.clone(),
            last_success_at: meta.last_success_at,
            last_reconcile_summary: meta.last_reconcile_summary.clone(),
        }
    }
}

/// The host's probe answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Probe {
    /// `ok` when every route serves; `starting` while storage does not answer yet (every
    /// route but this one then answers 503 `Unavailable`).
    #[schema(example = "ok")]
    pub status: String,
    /// Always `vmpool`.
    #[schema(example = "vmpool")]
    pub service: String,
    /// While `starting`: what the last attempt to reach storage met; absent once `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub reason: Option<String>,
}

/// CreateVM's input: empty, or a JSON object with an optional `pool` and `build` (each may
/// instead come from the query string; other fields are ignored).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct PlacementInput {
    /// The pool; default: `default`, or the only pool.
    #[schema(
        value_type = String,
        required = false,
        example = "eu",
        min_length = 1,
        max_length = 32,
        pattern = "^[A-Za-z0-9-]+$"
    )]
    pub pool: Option<String>,
    /// The build; default: the pool's current build. Another build is served only from its
    /// VMs still alive.
    #[schema(
        value_type = String,
        required = false,
        example = "1.5.0",
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9._+-]+$"
    )]
    pub build: Option<String>,
}

/// The OpenAPI document itself (a JSON object).
#[derive(Debug, Clone, Copy)]
pub struct OpenApiDocument;

impl utoipa::PartialSchema for OpenApiDocument {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        free_object("An OpenAPI 3.1 document.")
    }
}

impl ToSchema for OpenApiDocument {}

/// A JSON object with any properties (`additionalProperties: true`), so that client
/// generators type it as an open map rather than as an object that holds nothing.
fn free_object(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .into()
}

/// The input of ReportGameRoomsNumber: both fields are required, each either here or in the
/// query string (`?vmId=&rooms=`); if both give one, they must agree. Send no body when both
/// come from the query string.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomsInput {
    /// The VM.
    #[schema(
        example = "vmpool-kugvkeie3q",
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.-]{0,63}[A-Za-z0-9_-]$"
    )]
    pub vm_id: String,
    /// Its open rooms: a JSON number (not a string), whole, 0 to 100000; `3.0` counts as 3.
    #[schema(minimum = 0, maximum = 100_000, example = 3)]
    pub rooms: u32,
    /// Optional: when the game server made this report. A report older than the last one
    /// applied to the VM answers `stale` and changes nothing. Give this or `sequence`, not
    /// both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = DateTime, required = false, example = "2026-01-01T12:00:00.250Z")]
    pub reported_at: Option<String>,
    /// Optional: a number the game server raises with each report of this VM (0 to 2^53). A
    /// report with a lower number than the last one applied answers `stale` and changes
    /// nothing. It starts afresh when the VM is started or created again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = u64, required = false, minimum = 0, maximum = 9_007_199_254_740_992_u64, example = 42)]
    pub sequence: Option<u64>,
}

/// The input of MarkVMForDeallocation: `vmId` is required, here or in the query string
/// (`?vmId=`); send no body when it comes from the query string.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmIdInput {
    /// The VM.
    #[schema(
        example = "vmpool-kugvkeie3q",
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.-]{0,63}[A-Za-z0-9_-]$"
    )]
    pub vm_id: String,
}

/// The Functions timer's invocation (read leniently: any JSON object will do).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct TimerInput {
    /// `{"<binding>": {"IsPastDue": bool, ...}}`.
    #[schema(value_type = HashMap<String, Value>, required = false)]
    pub data: Option<serde_json::Value>,
    /// The host's metadata.
    #[schema(value_type = HashMap<String, Value>, required = false)]
    pub metadata: Option<serde_json::Value>,
}

/// The timer's answer: the Functions invocation envelope.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimerAnswer {
    /// No output bindings: always `{}`.
    #[serde(rename = "Outputs")]
    pub outputs: EmptyOutputs,
    /// Lines for the host's log.
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    /// What the pass did.
    #[serde(rename = "ReturnValue")]
    pub return_value: PassResult,
}

/// `{}`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EmptyOutputs {}

impl utoipa::PartialSchema for EmptyOutputs {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Always `{}`: the timer has no output bindings."))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for EmptyOutputs {}

/// One reconcile pass's result.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PassResult {
    /// Whether the pass ran.
    pub ok: bool,
    /// What it did, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Summary, required = false)]
    pub summary: Option<Summary>,
    /// Why it could not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub error: Option<String>,
}
