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
//! - `statusOnly=true` lists carry the instance view but no tags and no network profile
//!   (the harsher reading of field reports; [`FakeSettings::status_only_tags`] restores
//!   them), and `$expand=instanceView` on a resource group's list without `$filter` is a 400.
//! - Every request needs `Authorization: Bearer <token>` and a known `api-version`; a PUT body
//!   must carry what ARM requires (location, size, image, OS profile with an SSH key when
//!   password authentication is off, a network profile), or it gets ARM's 400 envelope.
//!   Paths are matched case-insensitively, as ARM does. No input makes it panic.
//! - Scripted faults ([`ArmFake::fail_next`], [`ArmFake::delay_next`],
//!   [`ArmFake::provisioning_fails_next`], [`ArmFake::delete_behind_our_back`],
//!   [`ArmFake::hide`], [`ArmFake::short_pages`]), also reachable over HTTP under `/_fake/`
//!   (`POST /_fake/hide` `{"vm": "<name>" | null, "secs": N}`: missing from list responses
//!   for N seconds of the fake's clock while point GETs still find it; `POST
//!   /_fake/short-pages` `{"times": N}`: the next N list responses end early, their last VMs
//!   and their nextLink dropped); every request is recorded ([`ArmFake::requests`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use vmpool::compute::sim::{Fault, SimCloud, SimVmView};
use vmpool::compute::{ComputeError, Power, Provisioning};

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

    /// 409 `OperationNotAllowed`: the subscription's core quota would be exceeded.
    pub fn quota_exceeded() -> Self {
        HttpFault {
            status: 409,
            code: "OperationNotAllowed".into(),
            message: "Operation could not be completed as it results in exceeding approved Total Regional Cores quota.".into(),
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
        }
    }
}

#[derive(Debug, Clone)]
enum Scripted {
    Fault(HttpFault),
    Delay(Duration),
}

#[derive(Debug, Clone)]
struct StoredVm {
    name: String,
    resource_group: String,
    location: String,
    body: Value,
    vm_id: String,
    created: OffsetDateTime,
    /// The NICs ARM created from the body's `networkInterfaceConfigurations`, under names
    /// of its own (Azure does not document them, so nothing may guess them).
    nics: Vec<CreatedNic>,
}

/// A NIC the fake created for a VM, with the IP configuration and public IP under it.
#[derive(Debug, Clone)]
struct CreatedNic {
    name: String,
    ip_config: String,
    public_ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Create,
    Start,
    Deallocate,
    PowerOff,
    Delete,
}

#[derive(Debug, Clone)]
struct Operation {
    vm: String,
    kind: OpKind,
    started: OffsetDateTime,
}

#[derive(Debug, Default)]
struct FakeState {
    vms: HashMap<String, StoredVm>,
    ops: HashMap<String, Operation>,
    next_op: u64,
    scripts: Vec<(FakeOp, Scripted)>,
    requests: Vec<Recorded>,
    /// VMs (by lowercase name; `None`: every VM) missing from list responses until then.
    hidden: Vec<(Option<String>, OffsetDateTime)>,
    /// List responses still to end early.
    short_pages: u32,
}

/// A name ARM might give: a prefix and random letters and digits nothing can derive.
fn unguessable(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let tail: String = (0..12)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect();
    format!("{prefix}-{tail}")
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

/// An ARM answer under construction.
type Answer = Response;

fn arm_error(status: StatusCode, code: &str, message: &str) -> Answer {
    let body = json!({"error": {"code": code, "message": message}});
    (status, json_headers(), body.to_string()).into_response()
}

fn invalid_parameter(message: &str, target: &str) -> Answer {
    let body = json!({"error": {"code": "InvalidParameter", "message": message, "target": target}});
    (StatusCode::BAD_REQUEST, json_headers(), body.to_string()).into_response()
}

fn json_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    )]
}

fn json_answer(status: StatusCode, body: &Value) -> Answer {
    (status, json_headers(), body.to_string()).into_response()
}

fn from_sim_error(e: &ComputeError) -> Answer {
    match e {
        ComputeError::Throttled { retry_after } => {
            let mut res = arm_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "The request is being throttled.",
            );
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs()),
            );
            res
        }
        ComputeError::Unavailable(m) => {
            arm_error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", m)
        }
        ComputeError::NotFound => arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The Resource was not found.",
        ),
        ComputeError::Conflict(m) => arm_error(StatusCode::CONFLICT, "Conflict", m),
        ComputeError::Rejected { code, message } => {
            let status = if code == "OperationNotAllowed" || code == "QuotaExceeded" {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            };
            arm_error(status, code, message)
        }
    }
}

fn not_found(kind: &str, name: &str, rg: &str) -> Answer {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!("The Resource '{kind}/{name}' under resource group '{rg}' was not found."),
    )
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A stable GUID-shaped ID from a name and a counter.
fn guid(seed: &str, n: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let x = h ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (x >> 32) as u32,
        (x >> 16) as u16,
        (x & 0xfff) as u16,
        ((x >> 20) & 0xfff) as u16,
        x.rotate_left(17) & 0xffff_ffff_ffff
    )
}

/// Checks a VM PUT body for what ARM requires; `Err` is the 400 answer.
pub fn validate_vm_body(body: &Value, name: &str) -> Result<(), (String, String, String)> {
    let bad = |code: &str, message: String, target: &str| {
        Err((code.to_owned(), message, target.to_owned()))
    };
    let text = |v: &Value, ptr: &str| {
        v.pointer(ptr)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if !body.is_object() {
        return bad(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.".into(),
            "",
        );
    }
    if text(body, "/location").is_none() {
        return bad(
            "LocationRequired",
            "The location property is required for this definition.".into(),
            "location",
        );
    }
    if let Some(tags) = body.get("tags")
        && !(tags.is_null()
            || tags
                .as_object()
                .is_some_and(|t| t.values().all(Value::is_string)))
    {
        return bad(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: 'tags' must map names to strings.".into(),
            "tags",
        );
    }
    if text(body, "/properties/hardwareProfile/vmSize").is_none() {
        return bad(
            "InvalidParameter",
            "Required parameter 'hardwareProfile.vmSize' is missing (null).".into(),
            "vmSize",
        );
    }
    let image = body.pointer("/properties/storageProfile/imageReference");
    let by_id = image.is_some_and(|i| text(i, "/id").is_some());
    let marketplace = image.is_some_and(|i| {
        ["/publisher", "/offer", "/sku", "/version"]
            .iter()
            .all(|p| text(i, p).is_some())
    });
    if !(by_id || marketplace) {
        return bad(
            "InvalidParameter",
            "Required parameter 'storageProfile.imageReference' is missing or incomplete (publisher, offer, sku and version, or id).".into(),
            "imageReference",
        );
    }
    let Some(computer_name) = text(body, "/properties/osProfile/computerName") else {
        return bad(
            "InvalidParameter",
            "Required parameter 'osProfile.computerName' is missing (null).".into(),
            "computerName",
        );
    };
    if computer_name.len() > 64 {
        return bad(
            "InvalidParameter",
            "Linux host name cannot exceed 64 characters in length.".into(),
            "computerName",
        );
    }
    let Some(admin) = text(body, "/properties/osProfile/adminUsername") else {
        return bad(
            "InvalidParameter",
            "Required parameter 'osProfile.adminUsername' is missing (null).".into(),
            "adminUsername",
        );
    };
    let no_password = body
        .pointer("/properties/osProfile/linuxConfiguration/disablePasswordAuthentication")
        .and_then(Value::as_bool)
        == Some(true);
    if no_password {
        let keys = body
            .pointer("/properties/osProfile/linuxConfiguration/ssh/publicKeys")
            .and_then(Value::as_array);
        let Some(keys) = keys.filter(|k| !k.is_empty()) else {
            return bad(
                "InvalidParameter",
                "Authentication using either SSH or by user name and password must be enabled in Linux profile.".into(),
                "linuxConfiguration",
            );
        };
        let expected_path = format!("/home/{admin}/.ssh/authorized_keys");
        for key in keys {
            let data = text(key, "/keyData").unwrap_or_default();
            if !(data.starts_with("ssh-") || data.starts_with("ecdsa-")) {
                return bad(
                    "InvalidParameter",
                    "The value of parameter linuxConfiguration.ssh.publicKeys.keyData is invalid."
                        .into(),
                    "linuxConfiguration.ssh.publicKeys.keyData",
                );
            }
            if text(key, "/path").as_deref() != Some(expected_path.as_str()) {
                return bad(
                    "InvalidParameter",
                    format!(
                        "Destination path for SSH public keys is currently limited to its default value {expected_path} due to a known issue in Linux provisioning agent."
                    ),
                    "linuxConfiguration.ssh.publicKeys.path",
                );
            }
        }
    } else if text(body, "/properties/osProfile/adminPassword").is_none() {
        return bad(
            "InvalidParameter",
            "Required parameter 'adminPassword' is missing (null).".into(),
            "adminPassword",
        );
    }
    let network = body.pointer("/properties/networkProfile");
    let nics = network
        .and_then(|n| n.get("networkInterfaces"))
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty());
    let configs = network
        .and_then(|n| n.get("networkInterfaceConfigurations"))
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty());
    match (nics, configs) {
        (None, None) => {
            return bad(
                "InvalidParameter",
                "Required parameter 'networkProfile' is missing (null).".into(),
                "networkProfile",
            );
        }
        (Some(nics), _) => {
            if nics.iter().any(|n| text(n, "/id").is_none()) {
                return bad(
                    "InvalidParameter",
                    "Each network interface reference needs an id.".into(),
                    "networkProfile.networkInterfaces",
                );
            }
        }
        (None, Some(configs)) => {
            if network
                .and_then(|n| text(n, "/networkApiVersion"))
                .is_none()
            {
                return bad(
                    "InvalidParameter",
                    "networkApiVersion must be specified when networkInterfaceConfigurations are used.".into(),
                    "networkProfile.networkApiVersion",
                );
            }
            for nic in configs {
                if text(nic, "/name").is_none() {
                    return bad(
                        "InvalidParameter",
                        "Required parameter 'networkInterfaceConfigurations.name' is missing (null).".into(),
                        "networkInterfaceConfigurations.name",
                    );
                }
                let ipcs = nic
                    .pointer("/properties/ipConfigurations")
                    .and_then(Value::as_array)
                    .filter(|a| !a.is_empty());
                let Some(ipcs) = ipcs else {
                    return bad(
                        "InvalidParameter",
                        "Required parameter 'ipConfigurations' is missing (null).".into(),
                        "networkInterfaceConfigurations.ipConfigurations",
                    );
                };
                for ipc in ipcs {
                    if text(ipc, "/name").is_none() || text(ipc, "/properties/subnet/id").is_none()
                    {
                        return bad(
                            "InvalidParameter",
                            "Each IP configuration needs a name and properties.subnet.id.".into(),
                            "ipConfigurations.subnet",
                        );
                    }
                    if let Some(pip) = ipc.pointer("/properties/publicIPAddressConfiguration") {
                        if text(pip, "/name").is_none() {
                            return bad(
                                "InvalidParameter",
                                "Required parameter 'publicIPAddressConfiguration.name' is missing (null).".into(),
                                "publicIPAddressConfiguration.name",
                            );
                        }
                        let standard = text(pip, "/sku/name")
                            .is_some_and(|s| s.eq_ignore_ascii_case("Standard"));
                        let dynamic = text(pip, "/properties/publicIPAllocationMethod")
                            .is_some_and(|m| m.eq_ignore_ascii_case("Dynamic"));
                        if standard && dynamic {
                            return bad(
                                "InvalidParameter",
                                "Standard sku public IP addresses must use the Static allocation method.".into(),
                                "publicIPAddressConfiguration.properties.publicIPAllocationMethod",
                            );
                        }
                    }
                }
            }
        }
    }
    if name.is_empty() || name.len() > 64 {
        return bad(
            "InvalidParameter",
            "The VM name must be 1-64 characters.".into(),
            "vmName",
        );
    }
    Ok(())
}

/// What a request is, from its method and path (segments compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Vm {
        sub: String,
        rg: String,
        name: String,
    },
    InstanceView {
        sub: String,
        rg: String,
        name: String,
    },
    Action {
        sub: String,
        rg: String,
        name: String,
        op: FakeOp,
    },
    List {
        sub: String,
        rg: Option<String>,
    },
    OperationStatus {
        sub: String,
        id: String,
    },
    PublicIp {
        sub: String,
        rg: String,
        name: String,
    },
    Nic {
        sub: String,
        rg: String,
        name: String,
    },
}

impl Target {
    fn parse(method: &Method, path: &str) -> Option<Target> {
        let segs: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        let s = |i: usize| segs.get(i).cloned().unwrap_or_default();
        match l.as_slice() {
            [
                "subscriptions",
                _,
                "providers",
                "microsoft.compute",
                "virtualmachines",
            ] if method == Method::GET => Some(Target::List {
                sub: s(1),
                rg: None,
            }),
            [
                "subscriptions",
                _,
                "providers",
                "microsoft.compute",
                "locations",
                _,
                "operations",
                _,
            ] if method == Method::GET => Some(Target::OperationStatus {
                sub: s(1),
                id: s(7),
            }),
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.compute",
                "virtualmachines",
            ] if method == Method::GET => Some(Target::List {
                sub: s(1),
                rg: Some(s(3)),
            }),
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.compute",
                "virtualmachines",
                _,
            ] => Some(Target::Vm {
                sub: s(1),
                rg: s(3),
                name: s(7),
            }),
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.compute",
                "virtualmachines",
                _,
                action,
            ] => {
                let (sub, rg, name) = (s(1), s(3), s(7));
                match *action {
                    "instanceview" if method == Method::GET => {
                        Some(Target::InstanceView { sub, rg, name })
                    }
                    "start" if method == Method::POST => Some(Target::Action {
                        sub,
                        rg,
                        name,
                        op: FakeOp::Start,
                    }),
                    "deallocate" if method == Method::POST => Some(Target::Action {
                        sub,
                        rg,
                        name,
                        op: FakeOp::Deallocate,
                    }),
                    "poweroff" if method == Method::POST => Some(Target::Action {
                        sub,
                        rg,
                        name,
                        op: FakeOp::PowerOff,
                    }),
                    _ => None,
                }
            }
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.network",
                "publicipaddresses",
                _,
            ] if method == Method::GET => Some(Target::PublicIp {
                sub: s(1),
                rg: s(3),
                name: s(7),
            }),
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.network",
                "networkinterfaces",
                _,
            ] if method == Method::GET => Some(Target::Nic {
                sub: s(1),
                rg: s(3),
                name: s(7),
            }),
            _ => None,
        }
    }

    fn op(&self, method: &Method) -> Option<FakeOp> {
        Some(match self {
            Target::Vm { .. } => match *method {
                Method::PUT => FakeOp::PutVm,
                Method::GET => FakeOp::GetVm,
                Method::DELETE => FakeOp::DeleteVm,
                _ => return None,
            },
            Target::InstanceView { .. } => FakeOp::GetVm,
            Target::Action { op, .. } => *op,
            Target::List { .. } => FakeOp::ListVms,
            Target::OperationStatus { .. } => FakeOp::OperationStatus,
            Target::PublicIp { .. } => FakeOp::GetPublicIp,
            Target::Nic { .. } => FakeOp::GetNic,
        })
    }

    fn subscription(&self) -> &str {
        match self {
            Target::Vm { sub, .. }
            | Target::InstanceView { sub, .. }
            | Target::Action { sub, .. }
            | Target::List { sub, .. }
            | Target::OperationStatus { sub, .. }
            | Target::PublicIp { sub, .. }
            | Target::Nic { sub, .. } => sub,
        }
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

fn query_map(query: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect()
}

enum Outcome {
    InProgress,
    Succeeded,
    Failed(String, String),
}

fn failure_parts(text: &str) -> (String, String) {
    match text.split_once(": ") {
        Some((code, message)) => (code.to_owned(), message.to_owned()),
        None => (text.to_owned(), text.to_owned()),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
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
            .route("/_fake/requests", get(admin_requests))
            .route("/_fake/faults", post(admin_fault))
            .route("/_fake/delays", post(admin_delay))
            .route(
                "/_fake/provisioning-failures",
                post(admin_provisioning_failure),
            )
            .route("/_fake/vms/{name}", delete(admin_delete_vm))
            .route("/_fake/hide", post(admin_hide))
            .route("/_fake/short-pages", post(admin_short_pages))
            .fallback(dispatch)
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

    fn take_scripts(&self, op: FakeOp) -> (Option<Duration>, Option<HttpFault>) {
        let mut state = self.lock();
        let mut delay = None;
        if let Some(at) = state
            .scripts
            .iter()
            .position(|(o, s)| *o == op && matches!(s, Scripted::Delay(_)))
            && let (_, Scripted::Delay(d)) = state.scripts.remove(at)
        {
            delay = Some(d);
        }
        let mut fault = None;
        if let Some(at) = state
            .scripts
            .iter()
            .position(|(o, s)| *o == op && matches!(s, Scripted::Fault(_)))
            && let (_, Scripted::Fault(f)) = state.scripts.remove(at)
        {
            fault = Some(f);
        }
        (delay, fault)
    }

    fn new_operation(&self, vm: &str, kind: OpKind) -> String {
        let mut state = self.lock();
        state.next_op += 1;
        let id = guid(vm, state.next_op);
        state.ops.insert(
            id.clone(),
            Operation {
                vm: vm.to_owned(),
                kind,
                started: self.cloud.clock().now(),
            },
        );
        id
    }

    fn operation_headers(&self, base: &str, op_id: &str, res: &mut Response) {
        let s = &self.settings;
        let url = format!(
            "{base}/subscriptions/{}/providers/Microsoft.Compute/locations/{}/operations/{op_id}",
            s.subscription_id, s.location
        );
        let headers = res.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!("{url}?api-version=2024-07-01")) {
            headers.insert("azure-asyncoperation", v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("{url}?monitor=true&api-version=2024-07-01"))
        {
            headers.insert(header::LOCATION, v);
        }
        headers.insert(header::RETRY_AFTER, HeaderValue::from(s.retry_after_secs));
    }

    fn stored(&self, rg: &str, name: &str) -> Option<StoredVm> {
        self.lock()
            .vms
            .get(&name.to_ascii_lowercase())
            .filter(|vm| vm.resource_group.eq_ignore_ascii_case(rg))
            .cloned()
    }

    fn vm_id(&self, vm: &StoredVm) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            self.settings.subscription_id, vm.resource_group, vm.name
        )
    }

    fn instance_view(&self, vm: &StoredVm, view: &SimVmView) -> Value {
        let now = rfc3339(self.cloud.clock().now());
        let mut statuses = Vec::new();
        match &view.status.provisioning {
            Provisioning::Failed(text) => {
                let (code, message) = failure_parts(text);
                statuses.push(json!({
                    "code": format!("ProvisioningState/failed/{code}"),
                    "level": "Error",
                    "displayStatus": "Provisioning failed",
                    "message": message,
                    "time": now
                }));
            }
            p => {
                let (code, display) = match p {
                    Provisioning::Creating => ("creating", "Creating"),
                    Provisioning::Deleting => ("deleting", "Deleting"),
                    _ => ("succeeded", "Provisioning succeeded"),
                };
                statuses.push(json!({
                    "code": format!("ProvisioningState/{code}"),
                    "level": "Info",
                    "displayStatus": display,
                    "time": now
                }));
            }
        }
        let power = match view.status.power {
            Power::Starting => Some(("starting", "VM starting")),
            Power::Running => Some(("running", "VM running")),
            Power::Stopping => Some(("stopping", "VM stopping")),
            Power::Stopped => Some(("stopped", "VM stopped")),
            Power::Deallocating => Some(("deallocating", "VM deallocating")),
            Power::Deallocated => Some(("deallocated", "VM deallocated")),
            Power::Unknown => None,
        };
        if let Some((code, display)) = power {
            statuses.push(json!({
                "code": format!("PowerState/{code}"),
                "level": "Info",
                "displayStatus": display
            }));
        }
        json!({
            "computerName": vm.body.pointer("/properties/osProfile/computerName").cloned().unwrap_or(Value::Null),
            "osName": "ubuntu",
            "statuses": statuses
        })
    }

    fn vm_json(&self, vm: &StoredVm, view: &SimVmView, with_instance_view: bool) -> Value {
        self.vm_json_as(vm, view, with_instance_view, false)
    }

    /// A VM as ARM shows it; `status_only` as the `statusOnly=true` list shows it: the
    /// instance view and little else (no tags, no network profile), unless the settings
    /// keep them.
    fn vm_json_as(
        &self,
        vm: &StoredVm,
        view: &SimVmView,
        with_instance_view: bool,
        status_only: bool,
    ) -> Value {
        let mut props: Map<String, Value> = vm
            .body
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(os) = props.get_mut("osProfile").and_then(Value::as_object_mut) {
            os.remove("adminPassword");
            os.insert("secrets".into(), json!([]));
        }
        let nic_ids: Vec<Value> = vm
            .nics
            .iter()
            .map(|nic| &nic.name)
            .map(|nic| {
                json!({
                    "id": format!(
                        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/networkInterfaces/{nic}",
                        self.settings.subscription_id, vm.resource_group
                    ),
                    "properties": {"primary": true, "deleteOption": "Delete"}
                })
            })
            .collect();
        if !nic_ids.is_empty()
            && let Some(net) = props
                .get_mut("networkProfile")
                .and_then(Value::as_object_mut)
        {
            net.insert("networkInterfaces".into(), Value::Array(nic_ids));
        }
        let provisioning = match &view.status.provisioning {
            Provisioning::Creating => "Creating",
            Provisioning::Succeeded => "Succeeded",
            Provisioning::Failed(_) => "Failed",
            Provisioning::Deleting => "Deleting",
        };
        props.insert("provisioningState".into(), json!(provisioning));
        props.insert("vmId".into(), json!(vm.vm_id));
        props.insert("timeCreated".into(), json!(rfc3339(vm.created)));
        if with_instance_view {
            props.insert("instanceView".into(), self.instance_view(vm, view));
        }
        let tags: Map<String, Value> = view
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        if status_only && !self.settings.status_only_tags {
            props
                .retain(|k, _| matches!(k.as_str(), "instanceView" | "vmId" | "provisioningState"));
            return json!({
                "name": vm.name,
                "id": self.vm_id(vm),
                "type": "Microsoft.Compute/virtualMachines",
                "location": vm.location,
                "properties": props
            });
        }
        json!({
            "name": vm.name,
            "id": self.vm_id(vm),
            "type": "Microsoft.Compute/virtualMachines",
            "location": vm.location,
            "tags": tags,
            "properties": props
        })
    }

    fn view(&self, name: &str) -> Result<Option<SimVmView>, Box<Answer>> {
        self.cloud
            .get(name)
            .map_err(|e| Box::new(from_sim_error(&e)))
    }

    async fn handle(
        &self,
        target: Target,
        method: &Method,
        query: &HashMap<String, String>,
        body: &[u8],
        base: &str,
    ) -> Answer {
        match target {
            Target::Vm { rg, name, .. } => match *method {
                Method::PUT => self.put_vm(&rg, &name, body, base),
                Method::GET => self.get_vm(&rg, &name, query),
                Method::DELETE => self.delete_vm(&rg, &name, base),
                _ => arm_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    &format!("The requested method '{method}' is not supported for this resource."),
                ),
            },
            Target::InstanceView { rg, name, .. } => match self.existing(&rg, &name) {
                Ok((vm, view)) => json_answer(StatusCode::OK, &self.instance_view(&vm, &view)),
                Err(res) => *res,
            },
            Target::Action { rg, name, op, .. } => self.action(&rg, &name, op, base),
            Target::List { rg, .. } => self.list(rg.as_deref(), query, base),
            Target::OperationStatus { id, .. } => self.operation_status(&id, query, base),
            Target::PublicIp { rg, name, .. } => self.public_ip(&rg, &name),
            Target::Nic { rg, name, .. } => self.nic(&rg, &name),
        }
    }

    fn existing(&self, rg: &str, name: &str) -> Result<(StoredVm, SimVmView), Box<Answer>> {
        let view = self.view(name)?;
        match (self.stored(rg, name), view) {
            (Some(vm), Some(view)) => Ok((vm, view)),
            _ => Err(Box::new(not_found(
                "Microsoft.Compute/virtualMachines",
                name,
                rg,
            ))),
        }
    }

    fn put_vm(&self, rg: &str, name: &str, body: &[u8], base: &str) -> Answer {
        let Ok(parsed) = serde_json::from_slice::<Value>(body) else {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                "The request content was invalid and could not be deserialized.",
            );
        };
        if let Err((code, message, target)) = validate_vm_body(&parsed, name) {
            return if code == "InvalidParameter" {
                invalid_parameter(&message, &target)
            } else {
                arm_error(StatusCode::BAD_REQUEST, &code, &message)
            };
        }
        if let Some(other) = self.lock().vms.get(&name.to_ascii_lowercase())
            && !other.resource_group.eq_ignore_ascii_case(rg)
            && self.cloud.get(name).ok().flatten().is_some()
        {
            return arm_error(
                StatusCode::CONFLICT,
                "Conflict",
                "A VM of that name exists in another resource group of this fake.",
            );
        }
        let tags: BTreeMap<String, String> = parsed
            .get("tags")
            .and_then(Value::as_object)
            .map(|t| {
                t.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let created = match self.cloud.create(name, tags) {
            Ok(created) => created,
            Err(e) => return from_sim_error(&e),
        };
        let now = self.cloud.clock().now();
        let location = parsed
            .get("location")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let stored = {
            let mut state = self.lock();
            let n = state.next_op;
            let entry = state
                .vms
                .entry(name.to_ascii_lowercase())
                .or_insert_with(|| StoredVm {
                    name: name.to_owned(),
                    resource_group: rg.to_owned(),
                    location: location.clone(),
                    body: Value::Null,
                    vm_id: guid(name, n),
                    created: now,
                    nics: Vec::new(),
                });
            if created || entry.nics.is_empty() {
                entry.nics = public_ips(&parsed)
                    .into_iter()
                    .map(|(_, ip_config, pip)| CreatedNic {
                        name: unguessable("nic"),
                        ip_config,
                        public_ip: (!pip.is_empty()).then(|| unguessable("pip")),
                    })
                    .collect();
            }
            if created {
                entry.vm_id = guid(name, n + 1000);
                entry.created = now;
                entry.name = name.to_owned();
                entry.resource_group = rg.to_owned();
            }
            entry.location = location;
            entry.body = parsed;
            entry.clone()
        };
        let view = match self.view(name) {
            Ok(Some(view)) => view,
            Ok(None) => return not_found("Microsoft.Compute/virtualMachines", name, rg),
            Err(res) => return *res,
        };
        let op = self.new_operation(name, OpKind::Create);
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let mut res = json_answer(status, &self.vm_json(&stored, &view, false));
        self.operation_headers(base, &op, &mut res);
        res
    }

    fn get_vm(&self, rg: &str, name: &str, query: &HashMap<String, String>) -> Answer {
        let (vm, view) = match self.existing(rg, name) {
            Ok(found) => found,
            Err(res) => return *res,
        };
        let expand = query.get("$expand").map(|e| e.to_ascii_lowercase());
        match expand.as_deref() {
            None | Some("") => json_answer(StatusCode::OK, &self.vm_json(&vm, &view, false)),
            Some("instanceview") => json_answer(StatusCode::OK, &self.vm_json(&vm, &view, true)),
            Some("userdata") => json_answer(StatusCode::OK, &self.vm_json(&vm, &view, false)),
            Some(other) => invalid_parameter(
                &format!(
                    "The value '{other}' of parameter '$expand' is not valid; use instanceView or userData."
                ),
                "$expand",
            ),
        }
    }

    fn delete_vm(&self, rg: &str, name: &str, base: &str) -> Answer {
        match self.existing(rg, name) {
            Ok(_) => {}
            Err(res) if res.status() == StatusCode::NOT_FOUND => {
                return StatusCode::NO_CONTENT.into_response();
            }
            Err(res) => return *res,
        }
        if let Err(e) = self.cloud.delete(name) {
            return from_sim_error(&e);
        }
        let op = self.new_operation(name, OpKind::Delete);
        let mut res = StatusCode::ACCEPTED.into_response();
        self.operation_headers(base, &op, &mut res);
        res
    }

    fn action(&self, rg: &str, name: &str, op: FakeOp, base: &str) -> Answer {
        if let Err(res) = self.existing(rg, name) {
            return *res;
        }
        let (done, kind) = match op {
            FakeOp::Start => (self.cloud.start(name), OpKind::Start),
            FakeOp::PowerOff => (self.cloud.power_off(name), OpKind::PowerOff),
            _ => (self.cloud.deallocate(name), OpKind::Deallocate),
        };
        if let Err(e) = done {
            return from_sim_error(&e);
        }
        let op = self.new_operation(name, kind);
        let mut res = StatusCode::ACCEPTED.into_response();
        self.operation_headers(base, &op, &mut res);
        res
    }

    fn list(&self, rg: Option<&str>, query: &HashMap<String, String>, base: &str) -> Answer {
        let status_only = query
            .get("statusonly")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let expand = query
            .get("$expand")
            .is_some_and(|v| v.eq_ignore_ascii_case("instanceView"));
        if expand && rg.is_some() && !query.contains_key("$filter") {
            return invalid_parameter(
                "$expand=instanceView on a resource group's VMs requires a $filter; use the subscription list with statusOnly=true.",
                "$expand",
            );
        }
        let views = match self.cloud.list() {
            Ok(views) => views,
            Err(e) => return from_sim_error(&e),
        };
        let now = self.cloud.clock().now();
        let (stored, hidden, short) = {
            let mut state = self.lock();
            state.hidden.retain(|(_, until)| *until > now);
            let short = state.short_pages > 0;
            if short {
                state.short_pages -= 1;
            }
            (state.vms.clone(), state.hidden.clone(), short)
        };
        let all: Vec<(StoredVm, SimVmView)> = views
            .into_iter()
            .filter(|view| {
                let name = view.name.to_ascii_lowercase();
                !hidden
                    .iter()
                    .any(|(vm, _)| vm.as_ref().is_none_or(|vm| *vm == name))
            })
            .filter_map(|view| {
                let vm = stored.get(&view.name.to_ascii_lowercase())?.clone();
                if let Some(rg) = rg
                    && !vm.resource_group.eq_ignore_ascii_case(rg)
                {
                    return None;
                }
                Some((vm, view))
            })
            .collect();
        let skip: usize = query
            .get("$skiptoken")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let size = self.settings.page_size.max(1);
        let mut page: Vec<Value> = all
            .iter()
            .skip(skip)
            .take(size)
            .map(|(vm, view)| self.vm_json_as(vm, view, status_only || expand, status_only))
            .collect();
        if short {
            // The page ends early: its last VMs and its nextLink are dropped.
            page.truncate(page.len() / 2);
        }
        let mut body = json!({ "value": page });
        if !short && skip.saturating_add(size) < all.len() {
            let path = match rg {
                Some(rg) => format!(
                    "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines",
                    self.settings.subscription_id
                ),
                None => format!(
                    "/subscriptions/{}/providers/Microsoft.Compute/virtualMachines",
                    self.settings.subscription_id
                ),
            };
            let mut next = url::form_urlencoded::Serializer::new(String::new());
            next.append_pair(
                "api-version",
                query
                    .get("api-version")
                    .map_or("2024-07-01", String::as_str),
            );
            if status_only {
                next.append_pair("statusOnly", "true");
            }
            next.append_pair("$skiptoken", &(skip + size).to_string());
            body["nextLink"] = json!(format!("{base}{path}?{}", next.finish()));
        }
        json_answer(StatusCode::OK, &body)
    }

    fn outcome(&self, op: &Operation) -> Result<Outcome, Box<Answer>> {
        let view = self.view(&op.vm)?;
        Ok(match (op.kind, view) {
            (OpKind::Delete, None) => Outcome::Succeeded,
            (OpKind::Delete, Some(_)) => Outcome::InProgress,
            (_, None) => Outcome::Failed(
                "ResourceNotFound".into(),
                format!("The VM '{}' no longer exists.", op.vm),
            ),
            (_, Some(view)) => match (&view.status.provisioning, op.kind, view.status.power) {
                (Provisioning::Failed(text), _, _) => {
                    let (code, message) = failure_parts(text);
                    Outcome::Failed(code, message)
                }
                (Provisioning::Succeeded, OpKind::Create, _) => Outcome::Succeeded,
                (_, OpKind::Start, Power::Running) => Outcome::Succeeded,
                (_, OpKind::Deallocate, Power::Deallocated) => Outcome::Succeeded,
                (_, OpKind::PowerOff, Power::Stopped | Power::Deallocated) => Outcome::Succeeded,
                _ => Outcome::InProgress,
            },
        })
    }

    fn operation_status(&self, id: &str, query: &HashMap<String, String>, base: &str) -> Answer {
        let Some(op) = self.lock().ops.get(id).cloned() else {
            return arm_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("The operation '{id}' was not found."),
            );
        };
        let outcome = match self.outcome(&op) {
            Ok(outcome) => outcome,
            Err(res) => return *res,
        };
        let monitor = query
            .get("monitor")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if monitor {
            return match outcome {
                Outcome::InProgress => {
                    let mut res = StatusCode::ACCEPTED.into_response();
                    self.operation_headers(base, id, &mut res);
                    res
                }
                Outcome::Succeeded => StatusCode::OK.into_response(),
                Outcome::Failed(code, message) => {
                    arm_error(StatusCode::BAD_REQUEST, &code, &message)
                }
            };
        }
        let now = rfc3339(self.cloud.clock().now());
        let mut body = json!({
            "name": id,
            "startTime": rfc3339(op.started),
        });
        match outcome {
            Outcome::InProgress => body["status"] = json!("InProgress"),
            Outcome::Succeeded => {
                body["status"] = json!("Succeeded");
                body["endTime"] = json!(now);
            }
            Outcome::Failed(code, message) => {
                body["status"] = json!("Failed");
                body["endTime"] = json!(now);
                body["error"] = json!({"code": code, "message": message});
            }
        }
        json_answer(StatusCode::OK, &body)
    }

    /// The VM and NIC that own a NIC or public IP of this name in `rg`.
    fn owner(&self, rg: &str, is: impl Fn(&CreatedNic) -> bool) -> Option<(StoredVm, CreatedNic)> {
        self.lock().vms.values().find_map(|vm| {
            if !vm.resource_group.eq_ignore_ascii_case(rg) {
                return None;
            }
            vm.nics
                .iter()
                .find(|nic| is(nic))
                .map(|nic| (vm.clone(), nic.clone()))
        })
    }

    fn nic(&self, rg: &str, name: &str) -> Answer {
        let Some((vm, nic)) = self.owner(rg, |nic| nic.name.eq_ignore_ascii_case(name)) else {
            return not_found("Microsoft.Network/networkInterfaces", name, rg);
        };
        if !matches!(self.view(&vm.name), Ok(Some(_))) {
            return not_found("Microsoft.Network/networkInterfaces", name, rg);
        }
        let sub = &self.settings.subscription_id;
        let base = format!(
            "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Network",
            vm.resource_group
        );
        let mut ipc_props = json!({
            "privateIPAddress": "10.0.0.4",
            "privateIPAllocationMethod": "Dynamic",
            "primary": true,
            "provisioningState": "Succeeded"
        });
        if let Some(pip) = &nic.public_ip {
            ipc_props["publicIPAddress"] = json!({"id": format!("{base}/publicIPAddresses/{pip}")});
        }
        json_answer(
            StatusCode::OK,
            &json!({
                "name": nic.name,
                "id": format!("{base}/networkInterfaces/{}", nic.name),
                "location": vm.location,
                "type": "Microsoft.Network/networkInterfaces",
                "properties": {
                    "provisioningState": "Succeeded",
                    "ipConfigurations": [{
                        "name": nic.ip_config,
                        "id": format!("{base}/networkInterfaces/{}/ipConfigurations/{}", nic.name, nic.ip_config),
                        "properties": ipc_props
                    }],
                    "virtualMachine": {"id": self.vm_id(&vm)},
                    "primary": true
                }
            }),
        )
    }

    fn public_ip(&self, rg: &str, name: &str) -> Answer {
        let owner = self
            .owner(rg, |nic| {
                nic.public_ip
                    .as_deref()
                    .is_some_and(|p| p.eq_ignore_ascii_case(name))
            })
            .and_then(|(vm, nic)| {
                let pip = nic.public_ip.clone()?;
                Some((vm, nic.name, nic.ip_config, pip))
            });
        let Some((vm, nic, ipc, pip)) = owner else {
            return not_found("Microsoft.Network/publicIPAddresses", name, rg);
        };
        let view = match self.view(&vm.name) {
            Ok(Some(view)) => view,
            Ok(None) => return not_found("Microsoft.Network/publicIPAddresses", name, rg),
            Err(res) => return *res,
        };
        let sub = &self.settings.subscription_id;
        let mut props = json!({
            "provisioningState": "Succeeded",
            "publicIPAddressVersion": "IPv4",
            "publicIPAllocationMethod": "Static",
            "idleTimeoutInMinutes": 4,
            "ipTags": [],
            "ipConfiguration": {
                "id": format!("/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Network/networkInterfaces/{nic}/ipConfigurations/{ipc}", vm.resource_group)
            }
        });
        if let Some(ip) = &view.public_ip {
            props["ipAddress"] = json!(ip);
        }
        json_answer(
            StatusCode::OK,
            &json!({
                "name": pip,
                "id": format!("/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Network/publicIPAddresses/{pip}", vm.resource_group),
                "location": vm.location,
                "sku": {"name": "Standard", "tier": "Regional"},
                "properties": props,
                "type": "Microsoft.Network/publicIPAddresses"
            }),
        )
    }

    fn record(&self, entry: Recorded) {
        self.lock().requests.push(entry);
    }
}

/// (NIC, IP configuration, public IP) names a VM body asks ARM to create.
fn public_ips(body: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let nics = body
        .pointer("/properties/networkProfile/networkInterfaceConfigurations")
        .and_then(Value::as_array);
    for nic in nics.into_iter().flatten() {
        let nic_name = nic.get("name").and_then(Value::as_str).unwrap_or_default();
        let ipcs = nic
            .pointer("/properties/ipConfigurations")
            .and_then(Value::as_array);
        for ipc in ipcs.into_iter().flatten() {
            let ipc_name = ipc.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some(pip) = ipc
                .pointer("/properties/publicIPAddressConfiguration/name")
                .and_then(Value::as_str)
            {
                out.push((nic_name.to_owned(), ipc_name.to_owned(), pip.to_owned()));
            }
        }
    }
    out
}

fn authorized(headers: &HeaderMap, token: &str) -> Result<(), Box<Answer>> {
    let Some(got) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        let mut res = arm_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        );
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer authorization_uri=\"https://login.microsoftonline.com/common\", error=\"invalid_token\""),
        );
        return Err(Box::new(res));
    };
    let expected = format!("Bearer {token}");
    if bool::from(got.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(Box::new(arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        )))
    }
}

fn api_version_ok(target: &Target, query: &HashMap<String, String>) -> Result<(), Box<Answer>> {
    let Some(version) = query.get("api-version") else {
        return Err(Box::new(arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )));
    };
    let known = match target {
        Target::PublicIp { .. } | Target::Nic { .. } => NETWORK_API_VERSIONS,
        _ => COMPUTE_API_VERSIONS,
    };
    if known.contains(&version.as_str()) {
        Ok(())
    } else {
        Err(Box::new(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{version}' is invalid. The supported versions are '{}'.",
                known.join(",")
            ),
        )))
    }
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

async fn dispatch(State(fake): State<Arc<ArmFake>>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let query = query_map(&raw_query);
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return arm_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "The request body is too large.",
            );
        }
    };
    let target = Target::parse(&method, &path);
    let op = target.as_ref().and_then(|t| t.op(&method));
    let res = match (target, op) {
        (Some(target), Some(op)) => {
            let (delay, fault) = fake.take_scripts(op);
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            answer(&fake, target, &method, &query, &body, &parts.headers, fault).await
        }
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            &format!("The resource type could not be found for {method} {path}."),
        ),
    };
    fake.record(Recorded {
        op,
        method: method.to_string(),
        path,
        query: raw_query,
        body: serde_json::from_slice(&body).ok(),
        status: res.status().as_u16(),
    });
    res
}

async fn answer(
    fake: &ArmFake,
    target: Target,
    method: &Method,
    query: &HashMap<String, String>,
    body: &[u8],
    headers: &HeaderMap,
    fault: Option<HttpFault>,
) -> Response {
    if let Err(res) = authorized(headers, &fake.settings.token) {
        return *res;
    }
    if let Err(res) = api_version_ok(&target, query) {
        return *res;
    }
    if !target
        .subscription()
        .eq_ignore_ascii_case(&fake.settings.subscription_id)
    {
        return arm_error(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            &format!(
                "The subscription '{}' could not be found.",
                target.subscription()
            ),
        );
    }
    if let Some(f) = fault {
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = arm_error(status, &f.code, &f.message);
        if let Some(secs) = f.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return res;
    }
    fake.handle(target, method, query, body, &base_url(headers))
        .await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FaultRequest {
    op: FakeOp,
    #[serde(flatten)]
    fault: HttpFault,
    #[serde(default = "one")]
    times: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DelayRequest {
    op: FakeOp,
    millis: u64,
    #[serde(default = "one")]
    times: u32,
}

#[derive(Debug, Deserialize)]
struct ProvisioningFailureRequest {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HideRequest {
    vm: Option<String>,
    secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShortPagesRequest {
    times: u32,
}

fn one() -> u32 {
    1
}

async fn admin_hide(State(fake): State<Arc<ArmFake>>, body: axum::body::Bytes) -> Response {
    match parse_admin::<HideRequest>(&body) {
        Ok(r) => {
            fake.hide(r.vm.as_deref(), r.secs.min(86_400 * 365));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

async fn admin_short_pages(State(fake): State<Arc<ArmFake>>, body: axum::body::Bytes) -> Response {
    match parse_admin::<ShortPagesRequest>(&body) {
        Ok(r) => {
            fake.short_pages(r.times);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

fn parse_admin<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            &format!("The request content was invalid and could not be deserialized: {e}"),
        ))
    })
}

async fn admin_requests(State(fake): State<Arc<ArmFake>>) -> Response {
    json_answer(StatusCode::OK, &json!({ "requests": fake.requests() }))
}

async fn admin_fault(State(fake): State<Arc<ArmFake>>, body: axum::body::Bytes) -> Response {
    match parse_admin::<FaultRequest>(&body) {
        Ok(r) if StatusCode::from_u16(r.fault.status).is_ok() && r.fault.status >= 400 => {
            fake.fail_next(r.op, r.times, r.fault);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => invalid_parameter("status must be an HTTP error status (400-599)", "status"),
        Err(res) => *res,
    }
}

async fn admin_delay(State(fake): State<Arc<ArmFake>>, body: axum::body::Bytes) -> Response {
    match parse_admin::<DelayRequest>(&body) {
        Ok(r) => {
            fake.delay_next(r.op, r.times, Duration::from_millis(r.millis.min(600_000)));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

async fn admin_provisioning_failure(
    State(fake): State<Arc<ArmFake>>,
    body: axum::body::Bytes,
) -> Response {
    match parse_admin::<ProvisioningFailureRequest>(&body) {
        Ok(r) => {
            fake.provisioning_fails_next(&r.code, &r.message);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

async fn admin_delete_vm(State(fake): State<Arc<ArmFake>>, Path(name): Path<String>) -> Response {
    fake.delete_behind_our_back(&name);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_body() -> Value {
        let config = vmpool::compute::arm::ArmConfig {
            endpoint: url::Url::parse("http://127.0.0.1:1").unwrap(),
            token: None,
            subscription_id: "s".into(),
            resource_group: "rg".into(),
            location: "westeurope".into(),
            subnet_id: "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v/subnets/d".into(),
            ssh_public_key: "ssh-ed25519 AAAA k".into(),
            image: vmpool::compute::arm::Image::parse(vmpool::compute::arm::settings::DEFAULT_IMAGE).unwrap(),
            vm_size: "Standard_B2s".into(),
            admin_username: "azureuser".into(),
        };
        let id = vmpool::domain::VmId::parse("vm1").unwrap();
        vmpool::compute::arm::vm_body(&config, &id, "p")
    }

    #[test]
    fn the_adapter_body_passes_and_each_missing_part_is_named() {
        assert_eq!(validate_vm_body(&good_body(), "vm1"), Ok(()));
        let cases = [
            ("/location", "LocationRequired"),
            ("/properties/hardwareProfile/vmSize", "vmSize"),
            (
                "/properties/storageProfile/imageReference/sku",
                "imageReference",
            ),
            ("/properties/osProfile/computerName", "computerName"),
            ("/properties/osProfile/adminUsername", "adminUsername"),
            (
                "/properties/osProfile/linuxConfiguration/ssh/publicKeys/0/keyData",
                "keyData",
            ),
            (
                "/properties/networkProfile/networkApiVersion",
                "networkApiVersion",
            ),
            (
                "/properties/networkProfile/networkInterfaceConfigurations/0/properties/ipConfigurations/0/properties/subnet/id",
                "subnet",
            ),
        ];
        for (ptr, expect) in cases {
            let mut body = good_body();
            *body.pointer_mut(ptr).unwrap() = Value::Null;
            let (code, message, target) = validate_vm_body(&body, "vm1").unwrap_err();
            assert!(
                code.contains(expect) || target.contains(expect),
                "{ptr}: {code} {message} {target}"
            );
        }
        let mut body = good_body();
        body["properties"]["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] =
            json!(false);
        assert_eq!(
            validate_vm_body(&body, "vm1").unwrap_err().2,
            "adminPassword"
        );
        assert!(validate_vm_body(&json!([1, 2]), "vm1").is_err());
        assert!(validate_vm_body(&json!({"location": 5}), "vm1").is_err());
    }

    #[test]
    fn paths_parse_case_insensitively_and_nonsense_is_none() {
        let t = Target::parse(
            &Method::POST,
            "/SUBSCRIPTIONS/s/resourcegroups/RG/providers/Microsoft.Compute/virtualMachines/vm1/Deallocate",
        );
        assert_eq!(
            t,
            Some(Target::Action {
                sub: "s".into(),
                rg: "RG".into(),
                name: "vm1".into(),
                op: FakeOp::Deallocate
            })
        );
        for path in [
            "",
            "/",
            "//x//",
            "/subscriptions",
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v/explode",
        ] {
            assert_eq!(Target::parse(&Method::POST, path), None, "{path}");
        }
    }

    #[test]
    fn guids_look_like_guids() {
        let g = guid("vm", 3);
        assert_eq!(g.len(), 36, "{g}");
        assert_ne!(g, guid("vm", 4));
    }
}
