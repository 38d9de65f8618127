//! The JSON the API answers with, one type per shape; the OpenAPI document is generated from
//! these same types.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::config::PoolPolicy;
use crate::domain::{VmRecord, VmState};
use crate::pool::StatusPage;
use crate::reconcile::{PoolMeta, Summary};

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
    /// An ARM deallocate is in flight.
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
    /// Its public IP, once known.
    #[schema(example = "203.0.113.1")]
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
    /// The last ARM error, when one is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why the VM is unhealthy, when it is: it runs, but ARM says the last operation on its
    /// model failed (a VM extension). It is kept while a game may be on it and never handed
    /// out by CreateVM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<String>,
}

impl VmView {
    /// The view of `vm` with the pool's game ports.
    pub fn new(vm: &VmRecord, policy: &PoolPolicy) -> Self {
        VmView {
            vm_id: vm.id.to_string(),
            state: vm.state,
            public_ip: vm.public_ip.clone(),
            ports: policy.game_ports.clone(),
            rooms: vm.rooms,
            resource_id: vm.resource_id.clone(),
            state_changed_at: vm.state_changed_at,
            created_at: vm.created_at,
            last_error: vm.last_error.clone(),
            unhealthy: vm.unhealthy.clone(),
        }
    }
}

/// What an operation did to one VM.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VmOutcome {
    /// The VM after the operation.
    pub vm: VmView,
    /// What happened. CreateVM: `reclaimed`, `standby`, `claimedCreating`, `started` or
    /// `created`; ReportGameRoomsNumber: `recorded` or `deallocating`;
    /// MarkVMForDeallocation: `marked` or `alreadyMarked`.
    #[schema(example = "created")]
    pub action: String,
}

/// The VMs the matchmaker may use.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VmList {
    /// `Running` VMs, sorted by vmId: one page.
    pub vms: Vec<VmView>,
    /// Pass as `?continuation=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
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
    /// `VMPOOL_MIN_STANDBY`.
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
    /// Until when, while open (RFC 3339).
    pub open_until: Option<String>,
    /// Why it opened, while open.
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
    /// `ResourceGroupNotFound`), when that is why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every VM and the pool's own record.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatusView {
    /// VMs by state (every state, zeros included).
    pub counts: StateCounts,
    /// VMs sorted by vmId, one page; absent when only counts were asked for (`?vms=false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vms: Option<Vec<VmView>>,
    /// Pass as `?continuation=` for the next page of VMs; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
    /// `VMPOOL_MAX_VMS`.
    pub max_vms: u32,
    /// The warm buffer.
    pub buffer: BufferView,
    /// The circuit breaker.
    pub circuit_breaker: BreakerView,
    /// Whether the last ARM listing was trusted.
    pub observation: ObservationView,
    /// VMs that run while ARM says their provisioning failed, as of the last pass (each
    /// one's `unhealthy` says why).
    pub unhealthy: u32,
    /// When the last reconcile pass finished (RFC 3339).
    pub last_reconcile_at: Option<String>,
    /// One line on what the last pass did.
    pub last_reconcile_summary: String,
}

fn rfc3339(t: Option<OffsetDateTime>) -> Option<String> {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
}

impl PoolStatusView {
    /// The view of one page of the pool's status and the reconciler's record `meta` at `now`.
    pub fn new(
        status: &StatusPage,
        meta: &PoolMeta,
        policy: &PoolPolicy,
        now: OffsetDateTime,
    ) -> Self {
        let open = meta.breaker_open_at(now);
        PoolStatusView {
            counts: StateCounts::from_store(&status.counts),
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
                min_standby: policy.min_standby,
                target: meta.effective_buffer_target(policy),
            },
            observation: ObservationView {
                suspect: meta.observation_suspect(),
                missing: meta.vanished,
                reason: meta.suspect_reason.clone(),
            },
            unhealthy: meta.unhealthy,
            circuit_breaker: BreakerView {
                open,
                open_until: if open {
                    rfc3339(meta.breaker_open_until)
                } else {
                    None
                },
                reason: if open {
                    meta.breaker_reason.clone()
                } else {
                    None
                },
                consecutive_create_failures: meta.consecutive_create_failures,
            },
            last_reconcile_at: rfc3339(meta.last_reconcile_at),
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
    /// While `starting`: what the last attempt to reach storage met.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A body that is empty or any JSON object (CreateVM takes no input).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct EmptyObject {}

/// The input of ReportGameRoomsNumber; each field may instead come from the query string
/// (if both give one, they must agree).
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
    pub vm_id: Option<String>,
    /// Its open rooms: a JSON number (not a string), whole, 0 to 100000; `3.0` counts as 3.
    #[schema(minimum = 0, maximum = 100_000, example = 3)]
    pub rooms: Option<u32>,
}

/// The input of MarkVMForDeallocation; `vmId` may instead come from the query string.
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
    pub vm_id: Option<String>,
}

/// The Functions timer's invocation (read leniently: any JSON object will do).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct TimerInput {
    /// `{"<binding>": {"IsPastDue": bool, ...}}`.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    /// The host's metadata.
    #[schema(value_type = Option<Object>)]
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
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct EmptyOutputs {}

/// One reconcile pass's result.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PassResult {
    /// Whether the pass ran.
    pub ok: bool,
    /// What it did, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub summary: Option<Summary>,
    /// Why it could not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
