//! An Azure Resource Manager fake that speaks the wire protocol over real HTTP, for tests
//! and local runs (`cargo run --bin vmpool-arm-fake`).
//!
//! It serves the [`SimCloud`] model (VM states move on its [`vmpool::clock::Clock`]) in ARM's
//! shapes, as in the official examples (`VirtualMachines_CreateOrUpdate`, `_Get`,
//! `_InstanceView`, `_List`, `_ListAll`, `_Start`, `_Deallocate`, `_PowerOff`, `_Delete`,
//! `PublicIPAddresses_Get`):
//!
//! - PUT a VM answers 201 (200 when it exists) with `Azure-AsyncOperation`, `Location` and
//!   `Retry-After`; POST `start`, `deallocate`, `powerOff` and DELETE answer 202 with the
//!   same headers (DELETE of a missing VM 204); the operation URLs answer
//!   `{"status": "InProgress" | "Succeeded" | "Failed", "error": ...}`.
//! - GET a VM (`$expand=instanceView`), its `/instanceView`, the resource-group list and the
//!   subscription list (`statusOnly=true` adds each instance view), paged with `nextLink`.
//! - GET the NIC and the public IP a VM PUT's `networkInterfaceConfigurations` create, under
//!   names of the fake's own (Azure does not document them): follow the VM's
//!   `networkInterfaces[].id`, then the NIC's `ipConfigurations[].publicIPAddress.id`.
//! - POST `/providers/Microsoft.ResourceGraph/resources`: Azure Resource Graph, for the one
//!   query shape vmpool sends (a resource group's VMs with tags and power states), paged
//!   with `$top` and `$skipToken`, answering from the cloud as it was
//!   [`FakeSettings::graph_lag_secs`] ago, with Resource Graph's per-user quota headers and
//!   429 (see `graph`).
//! - `statusOnly=true` lists carry the instance view but no tags and no network profile
//!   (the harsher reading of field reports; [`FakeSettings::status_only_tags`] restores
//!   them), and `$expand=instanceView` on a resource group's list without `$filter` is a 400.
//! - Every request needs `Authorization: Bearer <token>` and a known `api-version`; a PUT body
//!   must carry what ARM requires (location, size, image, OS profile with an SSH key when
//!   password authentication is off, a network profile), or it gets ARM's 400 envelope.
//!   Paths are matched case-insensitively, as ARM does. No input makes it panic.
//! - Scripted faults ([`ArmFake::fail_next`], [`ArmFake::delay_next`],
//!   [`ArmFake::provisioning_fails_next`], [`ArmFake::extension_fails`],
//!   [`ArmFake::set_graph_lag`], [`ArmFake::delete_behind_our_back`],
//!   [`ArmFake::hide`], [`ArmFake::short_pages`]), also reachable over HTTP under `/_fake/`
//!   (`POST /_fake/hide` `{"vm": "<name>" | null, "secs": N}`: missing from list responses
//!   for N seconds of the fake's clock while point GETs still find it; `POST
//!   /_fake/short-pages` `{"times": N}`: the next N list responses end early, their last VMs
//!   and their nextLink dropped; `POST /_fake/quota` `{"secs": N}`: creates and starts
//!   refused for quota for N seconds ([`ArmFake::quota_window`]); `POST
//!   /_fake/start-failures` `{"code", "message"}`: the next start fails in its operation
//!   ([`ArmFake::start_fails_next`]); `POST /_fake/graph-lag` `{"secs": N}`: Resource Graph
//!   answers N seconds behind from now on; `POST /_fake/extension-failures` `{"vm", "code",
//!   "message"}`: a running VM's provisioning state becomes `Failed` while it keeps
//!   running); every request is recorded ([`ArmFake::requests`]).
//!
//! The crate is split by job: `wire` parses ARM's paths and answers in its shapes,
//! `cloud` keeps the fake cloud's state (VMs, NICs, operations, scripts) and serves each
//! resource, `graph` serves Resource Graph queries, [`validate`] checks VM PUT bodies, and
//! `control` serves the `/_fake/` routes.

mod cloud;
mod control;
mod graph;
pub mod validate;
mod wire;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use vmpool::compute::sim::{Fault, SimCloud};

use cloud::{FakeState, Scripted};
pub use validate::{BodyError, validate_vm_body};

/// `Microsoft.Compute` API versions the fake accepts.
pub const COMPUTE_API_VERSIONS: &[&str] = &[
    "2024-11-01",
    "2024-07-01",
    "2024-03-01",
    "2023-09-01",
    "2023-07-01",
    "2023-03-01",
];

/// `Microsoft.Network` API versions the fake accepts.
pub const NETWORK_API_VERSIONS: &[&str] = &[
    "2024-07-01",
    "2024-05-01",
    "2024-03-01",
    "2024-01-01",
    "2023-11-01",
    "2023-09-01",
];

/// `Microsoft.ResourceGraph` API versions the fake accepts (the stable ones).
pub const GRAPH_API_VERSIONS: &[&str] = &["2024-04-01", "2022-10-01", "2021-03-01", "2019-04-01"];

pub use graph::{GRAPH_DEFAULT_TOP, GRAPH_MAX_TOP};

/// The largest request body read.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The ARM operations the fake serves; faults and recordings are keyed by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FakeOp {
    /// PUT a VM.
    PutVm,
    /// GET a VM or its instance view.
    GetVm,
    /// GET the VMs of a resource group or a subscription.
    ListVms,
    /// POST start.
    Start,
    /// POST deallocate.
    Deallocate,
    /// POST powerOff.
    PowerOff,
    /// DELETE a VM.
    DeleteVm,
    /// GET an operation-status URL.
    OperationStatus,
    /// GET a public IP address.
    GetPublicIp,
    /// GET a network interface.
    GetNic,
    /// POST a Resource Graph query.
    GraphQuery,
}

/// An error answer to script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpFault {
    /// HTTP status.
    pub status: u16,
    /// ARM's `error.code`.
    pub code: String,
    /// ARM's `error.message`.
    pub message: String,
    /// `Retry-After` in seconds, if any.
    #[serde(default)]
    pub retry_after: Option<u64>,
}

impl HttpFault {
    /// 429 with `Retry-After`.
    pub fn throttled(retry_after_secs: u64) -> Self {
        HttpFault {
            status: 429,
            code: "TooManyRequests".into(),
            message: "The request is being throttled.".into(),
            retry_after: Some(retry_after_secs),
        }
    }

    /// 500.
    pub fn server_error() -> Self {
        HttpFault {
            status: 500,
            code: "InternalServerError".into(),
            message: "An internal execution error occurred.".into(),
            retry_after: None,
        }
    }

    /// 409: another operation is in progress.
    pub fn conflict() -> Self {
        HttpFault {
            status: 409,
            code: "Conflict".into(),
            message: "Operation 'start' is not allowed while another operation is in progress."
                .into(),
            retry_after: None,
        }
    }

    /// 404 `ResourceGroupNotFound`: ARM's answer for a VM URL whose resource group it does
    /// not find (deleted, mistyped in the configuration, or not yet replicated). It says
    /// nothing about the VM.
    pub fn resource_group_not_found(resource_group: &str) -> Self {
        HttpFault {
            status: 404,
            code: "ResourceGroupNotFound".into(),
            message: format!("Resource group '{resource_group}' could not be found."),
            retry_after: None,
        }
    }

    /// 403 `AuthorizationFailed`: the caller has no role that allows the action (role
    /// assignments take minutes to apply).
    pub fn authorization_failed() -> Self {
        HttpFault {
            status: 403,
            code: "AuthorizationFailed".into(),
            message: "The client does not have authorization to perform action 'Microsoft.Compute/virtualMachines/read' over scope '/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/games'.".into(),
            retry_after: None,
        }
    }

    /// 409 `OperationNotAllowed`: the subscription's core quota would be exceeded, in the
    /// words of Azure's answer (Microsoft Learn, "Resolve errors for resource quotas":
    /// `Code=OperationNotAllowed`, "Operation results in exceeding quota limits of Core.
    /// Maximum allowed: 4, Current in use: 4, Additional requested: 2.").
    pub fn quota_exceeded() -> Self {
        HttpFault {
            status: 409,
            code: "OperationNotAllowed".into(),
            message: "Operation could not be completed as it results in exceeding approved Total Regional Cores quota. Additional details - Location: westeurope, Current Limit: 24, Current Usage: 24, Additional Required: 2, (Minimum) New Limit Required: 26.".into(),
            retry_after: None,
        }
    }
}

/// One request the fake received, with the status it answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recorded {
    /// What it was, when the path is one the fake serves.
    pub op: Option<FakeOp>,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// The JSON body, if it had one that parses.
    pub body: Option<Value>,
    /// The status the fake answered.
    pub status: u16,
}

/// How the fake is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSettings {
    /// The bearer token every request must carry.
    pub token: String,
    /// The one subscription that exists.
    pub subscription_id: String,
    /// Where operation-status URLs say the operations run.
    pub location: String,
    /// VMs per list page.
    pub page_size: usize,
    /// `Retry-After` on accepted long-running operations, in seconds.
    pub retry_after_secs: u64,
    /// Whether `statusOnly=true` lists carry tags and the network profile. Field reports
    /// say they do not (azure-sdk-for-go #18565), so by default they do not; this switch
    /// keeps the older, kinder behaviour for a test that needs it.
    pub status_only_tags: bool,
    /// How far Resource Graph's answers lag behind the cloud, in seconds of the fake's clock
    /// (Resource Graph follows ARM's changes with a delay; at most
    /// [`vmpool::compute::sim::HISTORY`]).
    pub graph_lag_secs: u64,
    /// Resource Graph queries allowed per user in each 5-second window (Azure documents
    /// about 15).
    pub graph_quota: u32,
}

impl Default for FakeSettings {
    fn default() -> Self {
        FakeSettings {
            token: "fake-arm-token".into(),
            subscription_id: "00000000-0000-0000-0000-000000000001".into(),
            location: "westeurope".into(),
            page_size: 50,
            retry_after_secs: 10,
            status_only_tags: false,
            graph_lag_secs: 5,
            graph_quota: 15,
        }
    }
}

/// The fake: a [`SimCloud`] served in ARM's shapes.
pub struct ArmFake {
    cloud: Arc<SimCloud>,
    settings: FakeSettings,
    state: Mutex<FakeState>,
}

impl std::fmt::Debug for ArmFake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmFake")
            .field("subscription_id", &self.settings.subscription_id)
            .finish_non_exhaustive()
    }
}

impl ArmFake {
    /// A fake over `cloud`.
    pub fn new(cloud: Arc<SimCloud>, settings: FakeSettings) -> Self {
        ArmFake {
            cloud,
            settings,
            state: Mutex::new(FakeState::default()),
        }
    }

    /// The simulated cloud behind it.
    pub fn cloud(&self) -> &Arc<SimCloud> {
        &self.cloud
    }

    /// Its settings.
    pub fn settings(&self) -> &FakeSettings {
        &self.settings
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `times` requests of kind `op` get `fault` (after auth and api-version checks).
    pub fn fail_next(&self, op: FakeOp, times: u32, fault: HttpFault) {
        let mut state = self.lock();
        for _ in 0..times {
            state.scripts.push((op, Scripted::Fault(fault.clone())));
        }
    }

    /// The next `times` requests of kind `op` are answered only after `delay`.
    pub fn delay_next(&self, op: FakeOp, times: u32, delay: Duration) {
        let mut state = self.lock();
        for _ in 0..times {
            state.scripts.push((op, Scripted::Delay(delay)));
        }
    }

    /// The next VM create is accepted, but its provisioning ends `Failed` with ARM's `code`.
    pub fn provisioning_fails_next(&self, code: &str, message: &str) {
        self.cloud
            .inject(Fault::ProvisioningFails(format!("{code}: {message}")));
    }

    /// For `secs` seconds of the fake's clock the region's core quota is used up: every PUT
    /// that would create a VM and every start answers 409 `OperationNotAllowed`
    /// ([`HttpFault::quota_exceeded`]); VMs that exist keep running.
    pub fn quota_window(&self, secs: u64) {
        let until = self.cloud.clock().now()
            + time::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2));
        self.lock().quota_until = Some(until);
    }

    /// The next start is accepted (202), then fails in its operation with `code` (such as
    /// `AllocationFailed`): the operation URL answers `Failed` with that error, and the VM
    /// stays deallocated with `ProvisioningState/failed/<code>`, as Azure leaves a VM whose
    /// start found no capacity. It can be started again.
    pub fn start_fails_next(&self, code: &str, message: &str) {
        self.cloud
            .inject(Fault::StartFails(format!("{code}: {message}")));
    }

    /// A VM extension of `vm` fails: its provisioning state becomes `Failed` with ARM's
    /// `code` (such as `VMExtensionProvisioningError`) while it keeps running and serving.
    /// On Azure the provisioning state is the outcome of the last operation on the VM's
    /// model, not a power state ("States and billing status of Azure Virtual Machines",
    /// learn.microsoft.com/azure/virtual-machines/states-billing: the instance view shows
    /// `ProvisioningState/failed/<code>` beside `PowerState/running`). Returns whether the
    /// VM exists.
    pub fn extension_fails(&self, vm: &str, code: &str, message: &str) -> bool {
        self.cloud
            .model_fails(&vm.to_ascii_lowercase(), &format!("{code}: {message}"))
    }

    /// How far Resource Graph's answers lag behind the cloud now, in seconds.
    pub fn graph_lag_secs(&self) -> u64 {
        self.lock()
            .graph_lag_secs
            .unwrap_or(self.settings.graph_lag_secs)
    }

    /// Sets how far Resource Graph's answers lag behind the cloud from now on (at most
    /// [`vmpool::compute::sim::HISTORY`]): a backend disruption can hold it back for
    /// minutes.
    pub fn set_graph_lag(&self, secs: u64) {
        self.lock().graph_lag_secs = Some(secs);
    }

    /// Deletes a VM at once, with its NIC and public IP, as someone in the portal would.
    pub fn delete_behind_our_back(&self, name: &str) {
        self.cloud.remove_behind_our_back(name);
        self.lock().vms.remove(&name.to_ascii_lowercase());
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The requests of kind `op` that were accepted (answered 2xx).
    pub fn accepted(&self, op: FakeOp) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.op == Some(op) && (200..300).contains(&r.status))
            .cloned()
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Hides `vm` (`None`: every VM) from list responses for `secs` seconds of the fake's
    /// clock; point GETs still find it.
    pub fn hide(&self, vm: Option<&str>, secs: u64) {
        let until = self.cloud.clock().now()
            + time::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2));
        self.lock()
            .hidden
            .push((vm.map(str::to_ascii_lowercase), until));
    }

    /// The next `times` list responses end early: their last VMs and their nextLink are
    /// dropped.
    pub fn short_pages(&self, times: u32) {
        self.lock().short_pages = times;
    }

    /// The router: ARM's paths (as a fallback, matched case-insensitively) and `/_fake/`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/_fake/requests", get(control::admin_requests))
            .route("/_fake/faults", post(control::admin_fault))
            .route("/_fake/delays", post(control::admin_delay))
            .route(
                "/_fake/provisioning-failures",
                post(control::admin_provisioning_failure),
            )
            .route("/_fake/vms/{name}", delete(control::admin_delete_vm))
            .route("/_fake/hide", post(control::admin_hide))
            .route("/_fake/quota", post(control::admin_quota))
            .route("/_fake/start-failures", post(control::admin_start_failure))
            .route("/_fake/short-pages", post(control::admin_short_pages))
            .route("/_fake/graph-lag", post(control::admin_graph_lag))
            .route(
                "/_fake/extension-failures",
                post(control::admin_extension_failure),
            )
            .fallback(wire::dispatch)
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}
