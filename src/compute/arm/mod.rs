//! The compute port over Azure Resource Manager, with `azure_mgmt_compute` 0.21.
//!
//! Every mutation is sent with `.send()` and returns as soon as ARM accepts it (201/200/202);
//! nothing here polls a long-running operation (in 0.21 `create_or_update(..).await` re-PUTs
//! and misreads `provisioningState`). The reconciler reads outcomes later: [`Compute::list`]
//! is the resource group's paged listing (tags, provisioning state), [`Compute::list_power`]
//! an Azure Resource Graph query scoped to the resource group (power states and tags, one
//! page per 1,000 VMs), [`Compute::status`] a GET with `$expand=instanceView`.
//!
//! Errors: a pipeline policy ([`ArmErrorPolicy`]) turns every non-2xx answer into an
//! [`ArmHttpError`] that keeps the status, ARM's `{"error":{"code","message"}}` and
//! `Retry-After` (azure_core's own `HttpError` hides the headers). [`classify`] maps it:
//! 429 -> [`ComputeError::Throttled`], 5xx -> retried [`ArmOptions::server_error_retries`]
//! times then [`ComputeError::Unavailable`], 404 `ResourceNotFound`/`NotFound` ->
//! [`ComputeError::NotFound`], any other 404 and 401/403 -> [`ComputeError::Suspect`], 409 ->
//! [`ComputeError::Conflict`] (but a quota refusal, which ARM also sends as 409, is
//! [`ComputeError::Rejected`]), any other 4xx -> [`ComputeError::Rejected`]. Every call is
//! bounded by [`ArmOptions::call_timeout`].

pub mod settings;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::auth::{AccessToken, TokenCredential};
use azure_core::error::ErrorKind;
use azure_core::headers::{HeaderName, Headers};
use azure_core::{
    ClientOptions, Context, Method, Pipeline, Request, RetryOptions, TransportOptions,
};
use azure_core::{Policy, PolicyResult};
use azure_mgmt_compute::package_2024_07_01 as compute_api;
use compute_api::models::VirtualMachine;
use futures::StreamExt;
use serde_json::{Value, json};

use super::{
    BUILD_TAG, Compute, ComputeError, Listed, POOL_NAME_TAG, Power, Provisioning, VmSpec, VmStatus,
    tags_for,
};
use crate::domain::VmId;
use crate::secret::Secret;
pub use settings::{ArmConfig, Image};

pub use super::POOL_TAG;

/// The `Microsoft.Network` API version used to read public IPs.
pub const NETWORK_API_VERSION: &str = "2024-05-01";

/// The network API version the VM PUT names so that ARM creates the NIC and public IP
/// (the only value the 2024-07-01 compute API accepts).
pub const VM_NETWORK_API_VERSION: &str = "2020-11-01";

/// The Resource Graph API version of the power sweep: the stable `Resources` operation,
/// `POST /providers/Microsoft.ResourceGraph/resources` (azure-rest-api-specs,
/// `specification/resourcegraph/resource-manager/Microsoft.ResourceGraph/stable/2022-10-01/resourcegraph.json`).
/// The `azure_mgmt_resourcegraph` 0.21 crate offers only preview versions of it, so the
/// sweep is a plain POST through the adapter's own pipeline.
pub const GRAPH_API_VERSION: &str = "2022-10-01";

/// Rows per Resource Graph page: the largest `$top` the specification allows.
pub const GRAPH_PAGE: u32 = 1000;

/// The most pages one sweep reads (a pool is capped far below this many VMs).
const GRAPH_MAX_PAGES: usize = 500;

/// How many 429s in a row a sweep past its first page waits out before it gives up.
const GRAPH_THROTTLED_IN_A_ROW: u32 = 3;

/// `value` as a KQL string literal (single quotes; backslash and quote escaped).
fn kql_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if matches!(c, '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The sweep's Resource Graph query: every VM of `resource_group`, with its tags,
/// provisioning state and power state (`properties.extended.instanceView.powerState.code`,
/// such as `PowerState/running`), ordered by ID so that pages are stable (the
/// specification's "Next page query" example: the `id` column keeps paging sorted).
pub fn sweep_query(resource_group: &str) -> String {
    format!(
        "Resources | where type =~ 'microsoft.compute/virtualmachines' | where resourceGroup =~ {} | project id, name, tags, provisioningState = tostring(properties.provisioningState), powerState = tostring(properties.extended.instanceView.powerState.code) | order by id asc",
        kql_string(resource_group)
    )
}

/// Tunables of the ARM client (the defaults suit Azure; tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmOptions {
    /// Longest one ARM call may take, token included; past it the call is `Unavailable`.
    pub call_timeout: Duration,
    /// How many times a 5xx answer is retried before the call is `Unavailable`.
    pub server_error_retries: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Longest wait, between two pages of one sweep, for Resource Graph's per-user quota to
    /// reset (its window is 5 s).
    pub quota_wait: Duration,
}

impl Default for ArmOptions {
    fn default() -> Self {
        ArmOptions {
            call_timeout: Duration::from_secs(20),
            server_error_retries: 2,
            backoff: Duration::from_millis(500),
            quota_wait: Duration::from_secs(5),
        }
    }
}

/// A non-2xx answer from ARM, with what azure_core's own error hides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ARM answered {status}: {code}: {message}")]
pub struct ArmHttpError {
    /// HTTP status.
    pub status: u16,
    /// ARM's `error.code` (empty when the body had none).
    pub code: String,
    /// ARM's `error.message` (empty when the body had none).
    pub message: String,
    /// `Retry-After`, in seconds (an HTTP date is not used by ARM and reads as absent).
    pub retry_after: Option<Duration>,
}

impl ArmHttpError {
    /// Reads status, headers and body of an error answer.
    pub fn from_parts(status: u16, retry_after: Option<&str>, body: &[u8]) -> Self {
        let envelope: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let text = |key: &str| {
            envelope
                .get("error")
                .and_then(|e| e.get(key))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        ArmHttpError {
            status,
            code: text("code"),
            message: text("message"),
            retry_after: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        }
    }
}

/// 409 codes that mean "this will not work however long you wait" rather than "another
/// operation is in progress": ARM sends quota refusals as 409 `OperationNotAllowed`.
const PERMANENT_CONFLICT_CODES: &[&str] = crate::compute::REFUSAL_CODES;

/// 404 codes that say the resource itself does not exist.
const VM_NOT_FOUND_CODES: &[&str] = &["ResourceNotFound", "NotFound"];

/// Maps an ARM error answer to the port's error; `true` when it is worth retrying at once.
pub fn classify(e: &ArmHttpError) -> (ComputeError, bool) {
    let described = || {
        if e.message.is_empty() {
            format!("HTTP {}", e.status)
        } else {
            e.message.clone()
        }
    };
    match e.status {
        429 => (
            ComputeError::Throttled {
                retry_after: e.retry_after.unwrap_or(Duration::from_secs(30)),
            },
            false,
        ),
        // Only "this resource does not exist" says the VM is gone. ARM answers 404 for a
        // missing resource group (`ResourceGroupNotFound`), subscription
        // (`SubscriptionNotFound`, also sent instead of 403 when the caller has no role on it)
        // or parent (`ParentResourceNotFound`) too ("Resolve errors for resource not found",
        // learn.microsoft.com/azure/azure-resource-manager/troubleshooting/error-not-found):
        // those are about configuration or access, as are 401 and 403.
        404 if VM_NOT_FOUND_CODES.contains(&e.code.as_str()) => (ComputeError::NotFound, false),
        401 | 403 | 404 => (
            ComputeError::Suspect {
                code: code_or_status(e),
                message: described(),
            },
            false,
        ),
        409 if PERMANENT_CONFLICT_CODES.contains(&e.code.as_str()) => (
            ComputeError::Rejected {
                code: e.code.clone(),
                message: described(),
            },
            false,
        ),
        409 => (ComputeError::Conflict(described()), false),
        500..=599 => (
            ComputeError::Unavailable(format!(
                "ARM answered {}{}",
                e.status,
                if e.code.is_empty() {
                    String::new()
                } else {
                    format!(" {}: {}", e.code, e.message)
                }
            )),
            true,
        ),
        _ => (
            ComputeError::Rejected {
                code: code_or_status(e),
                message: described(),
            },
            false,
        ),
    }
}

/// The longest server-error `Retry-After` the client waits before its next try.
const MAX_ASKED_WAIT: Duration = Duration::from_secs(5);

/// The `Retry-After` ARM sent with an error answer, if any.
/// ARM's error code, or `HTTP<status>` when the answer named none.
fn code_or_status(e: &ArmHttpError) -> String {
    if e.code.is_empty() {
        format!("HTTP{}", e.status)
    } else {
        e.code.clone()
    }
}

fn asked_wait(e: &azure_core::Error) -> Option<Duration> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(http) = err.downcast_ref::<ArmHttpError>() {
            return http.retry_after;
        }
        source = err.source();
    }
    None
}

/// Maps any error of an azure_core call; `true` when it is worth retrying at once.
fn map_error(e: &azure_core::Error) -> (ComputeError, bool) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(http) = err.downcast_ref::<ArmHttpError>() {
            return classify(http);
        }
        source = err.source();
    }
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code } => classify(&ArmHttpError {
            status: u16::from(*status),
            code: error_code.clone().unwrap_or_default(),
            message: String::new(),
            retry_after: None,
        }),
        ErrorKind::Credential => (
            ComputeError::Unavailable(format!("cannot get a token for ARM: {e}")),
            false,
        ),
        ErrorKind::DataConversion => (
            ComputeError::Unavailable(format!("ARM sent an answer that does not parse: {e}")),
            false,
        ),
        _ => (
            ComputeError::Unavailable(format!("cannot reach ARM: {e}")),
            false,
        ),
    }
}

/// A pipeline policy that turns every non-2xx answer into an [`ArmHttpError`], so the
/// status, ARM's error envelope and `Retry-After` survive up to [`classify`].
#[derive(Debug, Default)]
pub struct ArmErrorPolicy;

#[async_trait]
impl Policy for ArmErrorPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let Some((first, rest)) = next.split_first() else {
            return Err(azure_core::Error::message(
                ErrorKind::Other,
                "ArmErrorPolicy must not be the last policy",
            ));
        };
        let response = first.send(ctx, request, rest).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let (status, headers, body) = response.deconstruct();
        let body = body.collect().await.unwrap_or_default();
        let retry_after = retry_after(&headers);
        let err = ArmHttpError::from_parts(u16::from(status), retry_after.as_deref(), &body);
        let code = (!err.code.is_empty()).then(|| err.code.clone());
        Err(azure_core::Error::new(
            ErrorKind::http_response(status, code),
            err,
        ))
    }
}

/// `Retry-After`, else (Resource Graph) `x-ms-user-quota-resets-after` (`hh:mm:ss`) in whole
/// seconds, rounded up.
fn retry_after(headers: &Headers) -> Option<String> {
    headers
        .get_optional_string(&HeaderName::from_static("retry-after"))
        .filter(|v| !v.is_empty())
        .or_else(|| {
            let resets = headers
                .get_optional_string(&HeaderName::from_static("x-ms-user-quota-resets-after"))?;
            quota_resets_after(&resets).map(|d| d.as_secs().to_string())
        })
}

/// Reads Resource Graph's `x-ms-user-quota-resets-after` (`hh:mm:ss`, maybe with a
/// fraction of a second), rounded up to whole seconds.
pub fn quota_resets_after(value: &str) -> Option<Duration> {
    let mut parts = value.trim().split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let h: u64 = h.parse().ok()?;
    let m: u64 = m.parse().ok()?;
    let s: f64 = s.parse().ok()?;
    if !(0.0..60.0).contains(&s) || m >= 60 {
        return None;
    }
    Some(Duration::from_secs(h * 3600 + m * 60 + s.ceil() as u64))
}

/// A fixed bearer token, for ARM emulators (`VMPOOL_ARM_TOKEN`). Never printed.
pub struct StaticToken(Secret);

impl StaticToken {
    /// Wraps the token.
    pub fn new(token: Secret) -> Self {
        StaticToken(token)
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(..)")
    }
}

#[async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(&self, _scopes: &[&str]) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            self.0.expose().to_owned(),
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        Ok(())
    }
}

/// The names ARM gives the resources a VM PUT creates beside the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmResourceNames {
    /// The NIC.
    pub nic: String,
    /// The NIC's IP configuration.
    pub ip_config: String,
    /// The Standard static public IP.
    pub public_ip: String,
    /// The OS disk.
    pub os_disk: String,
}

impl VmResourceNames {
    /// Deterministic names derived from the VM name, so a repeated PUT names the same things.
    pub fn of(vm: &VmId) -> Self {
        VmResourceNames {
            nic: format!("{vm}-nic"),
            ip_config: "ipconfig1".to_owned(),
            public_ip: format!("{vm}-ip"),
            os_disk: format!("{vm}-osdisk"),
        }
    }
}

/// The pool the single-pool settings of `config` describe (its region, size and image).
pub fn single_pool(config: &ArmConfig) -> VmSpec {
    VmSpec {
        pool: crate::domain::DEFAULT_POOL.to_owned(),
        location: Some(config.location.clone()),
        vm_size: config.vm_size.clone(),
        build: config.image.label(),
        image: config.image.clone(),
        subnet_id: Some(config.subnet_id.clone()),
    }
}

/// The VM PUT body for the single pool of `config` ([`vm_body_for`] of [`single_pool`]).
pub fn vm_body(config: &ArmConfig, name: &VmId, table: &str) -> Value {
    vm_body_for(config, name, table, &single_pool(config))
}

/// The VM PUT body: the VM, its NIC and a Standard static public IP, all deleted with the
/// VM, in `spec`'s region, size, image and subnet (the settings' own where the pool has
/// none), tagged as a member of the table's pool `table`, of the pool `spec` and its build.
pub fn vm_body_for(config: &ArmConfig, name: &VmId, table: &str, spec: &VmSpec) -> Value {
    let names = VmResourceNames::of(name);
    let location = spec.location.as_deref().unwrap_or(&config.location);
    let subnet_id = spec.subnet_id.as_deref().unwrap_or(&config.subnet_id);
    let image = match &spec.image {
        Image::Marketplace {
            publisher,
            offer,
            sku,
            version,
        } => json!({"publisher": publisher, "offer": offer, "sku": sku, "version": version}),
        Image::Id(id) => json!({ "id": id }),
    };
    json!({
        "location": location,
        "tags": tags_for(table, spec),
        "properties": {
            "hardwareProfile": { "vmSize": spec.vm_size },
            "storageProfile": {
                "imageReference": image,
                "osDisk": {
                    "name": names.os_disk,
                    "createOption": "FromImage",
                    "caching": "ReadWrite",
                    "managedDisk": { "storageAccountType": "StandardSSD_LRS" },
                    "deleteOption": "Delete"
                }
            },
            "osProfile": {
                "computerName": name.as_str(),
                "adminUsername": config.admin_username,
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {
                        "publicKeys": [{
                            "path": format!("/home/{}/.ssh/authorized_keys", config.admin_username),
                            "keyData": config.ssh_public_key
                        }]
                    }
                }
            },
            "networkProfile": {
                "networkApiVersion": VM_NETWORK_API_VERSION,
                "networkInterfaceConfigurations": [{
                    "name": names.nic,
                    "properties": {
                        "primary": true,
                        "deleteOption": "Delete",
                        "ipConfigurations": [{
                            "name": names.ip_config,
                            "properties": {
                                "primary": true,
                                "subnet": { "id": subnet_id },
                                "publicIPAddressConfiguration": {
                                    "name": names.public_ip,
                                    "sku": { "name": "Standard", "tier": "Regional" },
                                    "properties": {
                                        "publicIPAllocationMethod": "Static",
                                        "deleteOption": "Delete"
                                    }
                                }
                            }
                        }]
                    }
                }]
            }
        }
    })
}

/// [`vm_body`] as the SDK's model.
pub fn vm_model(config: &ArmConfig, name: &VmId, table: &str) -> Result<VirtualMachine, String> {
    vm_model_for(config, name, table, &single_pool(config))
}

/// [`vm_body_for`] as the SDK's model (what `create_or_update` sends).
pub fn vm_model_for(
    config: &ArmConfig,
    name: &VmId,
    table: &str,
    spec: &VmSpec,
) -> Result<VirtualMachine, String> {
    serde_json::from_value(vm_body_for(config, name, table, spec))
        .map_err(|e| format!("the VM body does not fit the compute API model: {e}"))
}

/// The image a VM's model names (`storageProfile.imageReference`): its resource ID, else
/// its marketplace reference as written in the PUT (`version`, not `exactVersion`: the two
/// differ only when the PUT asked for `latest`).
pub fn image_of(vm: &VirtualMachine) -> Option<Image> {
    let reference = vm
        .properties
        .as_ref()?
        .storage_profile
        .as_ref()?
        .image_reference
        .as_ref()?;
    if let Some(id) = reference
        .sub_resource
        .id
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        return Some(Image::Id(id.to_owned()));
    }
    match (
        &reference.publisher,
        &reference.offer,
        &reference.sku,
        &reference.version,
    ) {
        (Some(publisher), Some(offer), Some(sku), Some(version)) => Some(Image::Marketplace {
            publisher: publisher.clone(),
            offer: offer.clone(),
            sku: sku.clone(),
            version: version.clone(),
        }),
        _ => None,
    }
}

/// Reads provisioning and power state from instance-view status codes
/// (`ProvisioningState/succeeded`, `ProvisioningState/failed/<Code>`, `PowerState/running`...).
/// `fallback` is `properties.provisioningState`, used when the statuses do not say.
pub fn status_from_codes<'a>(
    statuses: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    fallback: Option<&str>,
) -> VmStatus {
    let mut provisioning = None;
    let mut power = Power::Unknown;
    for (code, message) in statuses {
        let lower = code.to_ascii_lowercase();
        if let Some(state) = lower.strip_prefix("provisioningstate/") {
            provisioning = Some(match state.split('/').next().unwrap_or_default() {
                "succeeded" => Provisioning::Succeeded,
                "failed" => {
                    let reason = code.splitn(3, '/').nth(2).unwrap_or("failed");
                    Provisioning::Failed(match message {
                        Some(m) if !m.is_empty() => format!("{reason}: {m}"),
                        _ => reason.to_owned(),
                    })
                }
                "deleting" => Provisioning::Deleting,
                _ => Provisioning::Creating,
            });
        } else if let Some(state) = lower.strip_prefix("powerstate/") {
            power = match state {
                "starting" => Power::Starting,
                "running" => Power::Running,
                "stopping" => Power::Stopping,
                "stopped" => Power::Stopped,
                "deallocating" => Power::Deallocating,
                "deallocated" => Power::Deallocated,
                _ => Power::Unknown,
            };
        }
    }
    let provisioning =
        provisioning.unwrap_or_else(|| match fallback.map(str::to_ascii_lowercase).as_deref() {
            Some("succeeded") => Provisioning::Succeeded,
            Some("failed") => Provisioning::Failed("provisioning failed".into()),
            Some("deleting") => Provisioning::Deleting,
            _ => Provisioning::Creating,
        });
    VmStatus {
        provisioning,
        power,
    }
}

fn status_of(vm: &VirtualMachine) -> VmStatus {
    let props = vm.properties.as_ref();
    let statuses: Vec<(&str, Option<&str>)> = props
        .and_then(|p| p.instance_view.as_ref())
        .map(|iv| {
            iv.statuses
                .iter()
                .filter_map(|s| Some((s.code.as_deref()?, s.message.as_deref())))
                .collect()
        })
        .unwrap_or_default();
    status_from_codes(
        statuses,
        props.and_then(|p| p.provisioning_state.as_deref()),
    )
}

fn in_resource_group(id: Option<&str>, resource_group: &str) -> bool {
    let Some(id) = id else { return false };
    let parts: Vec<&str> = id.split('/').collect();
    parts.windows(2).any(|w| {
        w[0].eq_ignore_ascii_case("resourceGroups") && w[1].eq_ignore_ascii_case(resource_group)
    })
}

/// The compute port over ARM.
pub struct ArmCompute {
    client: compute_api::Client,
    pipeline: Pipeline,
    credential: Arc<dyn TokenCredential>,
    scopes: Vec<String>,
    config: ArmConfig,
    pool: String,
    options: ArmOptions,
    credential_kind: &'static str,
}

impl std::fmt::Debug for ArmCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmCompute")
            .field("endpoint", &self.config.endpoint.as_str())
            .field("resource_group", &self.config.resource_group)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl ArmCompute {
    /// A client for `config`, tagging its VMs as members of `pool`. The credential is the
    /// static `VMPOOL_ARM_TOKEN` when set, else azure_identity's chain (managed identity in
    /// Azure Functions).
    pub fn new(config: &ArmConfig, pool: &str, options: ArmOptions) -> Result<Self, String> {
        let (credential, kind): (Arc<dyn TokenCredential>, &'static str) = match &config.token {
            Some(token) => (Arc::new(StaticToken::new(token.clone())), "static token"),
            None => (
                azure_identity::create_credential()
                    .map_err(|e| format!("cannot set up the Azure credential chain: {e}"))?,
                "azure_identity credential chain",
            ),
        };
        Self::with_credential(config, pool, credential, kind, options)
    }

    /// A client with an explicit credential.
    pub fn with_credential(
        config: &ArmConfig,
        pool: &str,
        credential: Arc<dyn TokenCredential>,
        credential_kind: &'static str,
        options: ArmOptions,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(options.call_timeout.min(Duration::from_secs(10)))
            .timeout(options.call_timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let client_options = ClientOptions::new(TransportOptions::new(Arc::new(http)))
            .retry(RetryOptions::none())
            .per_retry_policies(vec![Arc::new(ArmErrorPolicy) as Arc<dyn Policy>]);
        let scope = config
            .endpoint
            .join(azure_core::auth::DEFAULT_SCOPE_SUFFIX)
            .map_err(|e| format!("VMPOOL_ARM_ENDPOINT: cannot derive the token scope: {e}"))?
            .to_string();
        let client = compute_api::Client::new(
            config.endpoint.clone(),
            credential.clone(),
            vec![scope.clone()],
            client_options.clone(),
        );
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            client_options,
            Vec::new(),
            Vec::new(),
        );
        // A configuration the compute model cannot carry fails now, not at the first create.
        let probe = VmId::parse("vmpool-probe").map_err(|e| e.to_string())?;
        vm_model(config, &probe, pool)?;
        Ok(ArmCompute {
            client,
            pipeline,
            credential,
            scopes: vec![scope],
            config: config.clone(),
            pool: pool.to_owned(),
            options,
            credential_kind,
        })
    }

    fn vms(&self) -> compute_api::virtual_machines::Client {
        self.client.virtual_machines_client()
    }

    /// Runs `call` within the time limit, retrying 5xx answers with backoff.
    async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, ComputeError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        let mut retries = 0;
        loop {
            let mut asked = None;
            let (err, retry) = match tokio::time::timeout(self.options.call_timeout, call()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => {
                    asked = asked_wait(&e);
                    map_error(&e)
                }
                Err(_) => (
                    ComputeError::Unavailable(format!(
                        "ARM did not answer {what} within {}s",
                        self.options.call_timeout.as_secs_f64()
                    )),
                    false,
                ),
            };
            if !retry || retries >= self.options.server_error_retries {
                return Err(err);
            }
            tracing::debug!(error = %err, retries, "{what}: retrying");
            // A 5xx's own Retry-After is honoured when it is short; a longer one is capped.
            let backoff = self.options.backoff * 2u32.saturating_pow(retries);
            tokio::time::sleep(backoff.max(asked.unwrap_or_default().min(MAX_ASKED_WAIT))).await;
            retries += 1;
        }
    }

    /// GETs a `Microsoft.Network` resource by the ID ARM gave for it.
    async fn get_by_id(&self, id: &str) -> azure_core::Result<Value> {
        if !id.starts_with('/') || id.contains("..") || id.contains('?') {
            return Err(azure_core::Error::message(
                ErrorKind::DataConversion,
                format!("ARM gave a resource ID that is not a path: {id}"),
            ));
        }
        self.send_json(Method::Get, id, NETWORK_API_VERSION, None)
            .await
    }

    /// Sends an authenticated request to `path` at `api_version` through the adapter's
    /// pipeline (so [`ArmErrorPolicy`] maps its errors) and reads the JSON answer.
    async fn send_json(
        &self,
        method: Method,
        path: &str,
        api_version: &str,
        body: Option<&Value>,
    ) -> azure_core::Result<Value> {
        Ok(self.send(method, path, api_version, body).await?.1)
    }

    /// [`Self::send_json`], with the answer's headers.
    async fn send(
        &self,
        method: Method,
        path: &str,
        api_version: &str,
        body: Option<&Value>,
    ) -> azure_core::Result<(Headers, Value)> {
        let mut url = self.config.endpoint.clone();
        url.set_path(path);
        url.set_query(None);
        url.query_pairs_mut()
            .append_pair("api-version", api_version);
        let mut req = Request::new(url, method);
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        let token = self.credential.get_token(&scopes).await?;
        req.insert_header(
            azure_core::headers::AUTHORIZATION,
            format!("Bearer {}", token.token.secret()),
        );
        match body {
            Some(body) => {
                req.insert_header(azure_core::headers::CONTENT_TYPE, "application/json");
                req.set_body(serde_json::to_vec(body)?);
            }
            None => req.set_body(azure_core::EMPTY_BODY),
        }
        let (_, headers, body) = self
            .pipeline
            .send(&Context::default(), &mut req)
            .await?
            .deconstruct();
        let body = body.collect().await?;
        Ok((headers, serde_json::from_slice(&body)?))
    }

    /// One page of the sweep's Resource Graph query, with how long to wait before the next
    /// when the answer says the user's quota is spent (`x-ms-user-quota-remaining: 0`).
    async fn graph_page(&self, body: &Value) -> azure_core::Result<(Value, Option<Duration>)> {
        let (headers, page) = self
            .send(
                Method::Post,
                "/providers/Microsoft.ResourceGraph/resources",
                GRAPH_API_VERSION,
                Some(body),
            )
            .await?;
        let spent = headers
            .get_optional_string(&HeaderName::from_static("x-ms-user-quota-remaining"))
            .is_some_and(|v| v.trim() == "0");
        let wait = spent.then(|| {
            headers
                .get_optional_string(&HeaderName::from_static("x-ms-user-quota-resets-after"))
                .and_then(|v| quota_resets_after(&v))
                .unwrap_or(Duration::from_secs(5))
        });
        if !page.get("data").is_some_and(Value::is_array) {
            return Err(azure_core::Error::message(
                ErrorKind::DataConversion,
                "Resource Graph answered without a `data` array (objectArray)",
            ));
        }
        Ok((page, wait))
    }
}

#[async_trait]
impl Compute for ArmCompute {
    fn describe(&self) -> String {
        format!(
            "Azure Resource Manager at {} (subscription {}, resource group {}, {}; {})",
            self.config.endpoint,
            self.config.subscription_id,
            self.config.resource_group,
            self.config.location,
            self.credential_kind
        )
    }

    fn resource_id(&self, name: &VmId) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            self.config.subscription_id, self.config.resource_group, name
        )
    }

    async fn create(&self, name: &VmId, pool: &VmSpec) -> Result<(), ComputeError> {
        let model = vm_model_for(&self.config, name, &self.pool, pool).map_err(|message| {
            ComputeError::Rejected {
                code: "InvalidConfiguration".into(),
                message,
            }
        })?;
        let c = &self.config;
        self.call("the VM PUT", || {
            self.vms()
                .create_or_update(
                    &c.resource_group,
                    name.as_str(),
                    model.clone(),
                    &c.subscription_id,
                )
                .send()
        })
        .await
        .map(|_| ())
    }

    async fn start(&self, name: &VmId) -> Result<(), ComputeError> {
        let c = &self.config;
        self.call("start", || {
            self.vms()
                .start(&c.resource_group, name.as_str(), &c.subscription_id)
                .send()
        })
        .await
        .map(|_| ())
    }

    async fn deallocate(&self, name: &VmId) -> Result<(), ComputeError> {
        let c = &self.config;
        self.call("deallocate", || {
            self.vms()
                .deallocate(&c.resource_group, name.as_str(), &c.subscription_id)
                .send()
        })
        .await
        .map(|_| ())
    }

    async fn delete(&self, name: &VmId) -> Result<(), ComputeError> {
        let c = &self.config;
        match self
            .call("delete", || {
                self.vms()
                    .delete(&c.resource_group, name.as_str(), &c.subscription_id)
                    .send()
            })
            .await
        {
            Ok(_) | Err(ComputeError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn status(&self, name: &VmId) -> Result<Option<VmStatus>, ComputeError> {
        let c = &self.config;
        let got = self
            .call("the VM GET", || async {
                self.vms()
                    .get(&c.resource_group, name.as_str(), &c.subscription_id)
                    .expand("instanceView")
                    .send()
                    .await?
                    .into_body()
                    .await
            })
            .await;
        match got {
            Ok(vm) => Ok(Some(status_of(&vm))),
            Err(ComputeError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<Listed>, ComputeError> {
        // The resource group's list (`VirtualMachines_List`) carries tags and the model's
        // `provisioningState` but no instance view: `$expand=instanceView` on a list is only
        // allowed with a `$filter`, and the only documented filter names a scale set
        // (azure-rest-api-specs #42411; azure-sdk-for-java #31382: "service behavior").
        let c = &self.config;
        let vms = self
            .call("the VM list", || async {
                let mut pages = self
                    .vms()
                    .list(&c.resource_group, &c.subscription_id)
                    .into_stream();
                let mut all = Vec::new();
                while let Some(page) = pages.next().await {
                    all.extend(page?.value);
                }
                Ok(all)
            })
            .await?;
        Ok(vms
            .iter()
            .filter_map(|vm| {
                let mut listed = listed(vm, &c.resource_group)?;
                let tag = |name: &str| {
                    vm.resource
                        .tags
                        .as_ref()
                        .and_then(|t| t.get(name))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                listed.tagged = tag(POOL_TAG).as_deref() == Some(self.pool.as_str());
                listed.pool = tag(POOL_NAME_TAG);
                listed.build = tag(BUILD_TAG);
                Some(listed)
            })
            .collect())
    }

    async fn list_power(&self) -> Result<Vec<Listed>, ComputeError> {
        // An Azure Resource Graph query scoped to the subscription and the resource group:
        // one page per 1,000 of the group's VMs, however many VMs the subscription holds
        // (the subscription's `statusOnly` list reads them all and carries no tags).
        // Request and answer follow the stable `Resources` operation (see
        // [`GRAPH_API_VERSION`]): `{"subscriptions", "query", "options": {"resultFormat",
        // "$top", "$skipToken"}}` -> `{"totalRecords", "count", "data", "$skipToken"}`.
        // Resource Graph follows ARM with a lag of seconds and pages may shift while it
        // updates, so its answer is read only as a sweep: nothing destructive is concluded
        // from it, and the reconciler confirms VMs in flight with point GETs. Throttling is
        // per user (about 15 queries per 5 s), answered 429 with `x-ms-user-quota-resets-after`
        // ("Guidance for throttled requests in Azure Resource Graph").
        let c = &self.config;
        let query = sweep_query(&c.resource_group);
        let mut token: Option<String> = None;
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        let mut throttled_in_a_row = 0;
        let mut pages = 0;
        while pages < GRAPH_MAX_PAGES {
            let mut options = json!({"resultFormat": "objectArray", "$top": GRAPH_PAGE});
            if let Some(token) = &token {
                options["$skipToken"] = json!(token);
            }
            let body = json!({
                "subscriptions": [c.subscription_id],
                "query": query,
                "options": options,
            });
            // A sweep of many pages spends the per-user quota (about 15 queries per 5 s):
            // past the first page it waits for the quota instead of starting over next pass.
            let (page, wait) = match self
                .call("the Resource Graph query", || self.graph_page(&body))
                .await
            {
                Ok(answer) => answer,
                Err(ComputeError::Throttled { retry_after })
                    if pages > 0 && throttled_in_a_row < GRAPH_THROTTLED_IN_A_ROW =>
                {
                    throttled_in_a_row += 1;
                    tokio::time::sleep(retry_after.min(self.options.quota_wait)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            throttled_in_a_row = 0;
            pages += 1;
            for row in page
                .get("data")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(listed) = graph_row(row, &c.resource_group, &self.pool)
                    && seen.insert(listed.resource_id.to_ascii_lowercase())
                {
                    out.push(listed);
                }
            }
            token = page
                .get("$skipToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
            if let Some(wait) = wait {
                tokio::time::sleep(wait.min(self.options.quota_wait)).await;
            }
        }
        Err(ComputeError::Unavailable(format!(
            "Resource Graph kept paging past {GRAPH_MAX_PAGES} pages"
        )))
    }

    async fn image(&self, name: &VmId) -> Result<Option<Image>, ComputeError> {
        let c = &self.config;
        match self
            .call("the VM GET", || async {
                self.vms()
                    .get(&c.resource_group, name.as_str(), &c.subscription_id)
                    .send()
                    .await?
                    .into_body()
                    .await
            })
            .await
        {
            Ok(vm) => Ok(image_of(&vm)),
            Err(ComputeError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn public_ip(&self, name: &VmId) -> Result<Option<String>, ComputeError> {
        // Azure does not document the names of the NIC and public IP it creates from
        // `networkInterfaceConfigurations`, so follow the IDs ARM returns:
        // VM -> its NIC -> the NIC's IP configuration -> the public IP.
        let c = &self.config;
        let vm = match self
            .call("the VM GET", || async {
                self.vms()
                    .get(&c.resource_group, name.as_str(), &c.subscription_id)
                    .send()
                    .await?
                    .into_body()
                    .await
            })
            .await
        {
            Ok(vm) => vm,
            Err(ComputeError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let nics: Vec<String> = vm
            .properties
            .as_ref()
            .and_then(|p| p.network_profile.as_ref())
            .map(|n| {
                n.network_interfaces
                    .iter()
                    .filter_map(|nic| nic.sub_resource.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for nic in nics {
            let nic = match self.call("the NIC GET", || self.get_by_id(&nic)).await {
                Ok(nic) => nic,
                Err(ComputeError::NotFound) => continue,
                Err(e) => return Err(e),
            };
            let ip_ids: Vec<String> = nic
                .pointer("/properties/ipConfigurations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|ipc| {
                    ipc.pointer("/properties/publicIPAddress/id")?
                        .as_str()
                        .map(str::to_owned)
                })
                .collect();
            for id in ip_ids {
                match self.call("the public IP GET", || self.get_by_id(&id)).await {
                    Ok(ip) => {
                        if let Some(address) = ip
                            .pointer("/properties/ipAddress")
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                        {
                            return Ok(Some(address.to_owned()));
                        }
                    }
                    Err(ComputeError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(None)
    }
}

/// One row of the sweep's Resource Graph answer, if it is a VM of `resource_group`.
fn graph_row(row: &Value, resource_group: &str, pool: &str) -> Option<Listed> {
    let id = row.get("id")?.as_str()?;
    if !in_resource_group(Some(id), resource_group) {
        return None;
    }
    let name = id.rsplit('/').next()?;
    let text = |key: &str| {
        row.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let power = text("powerState").map(|code| (code, None));
    let tag = |name: &str| {
        row.get("tags")
            .and_then(|t| t.get(name))
            .and_then(Value::as_str)
    };
    Some(Listed {
        name: VmId::parse(name).ok()?,
        resource_id: id.to_owned(),
        status: status_from_codes(power, text("provisioningState")),
        tagged: tag(POOL_TAG) == Some(pool),
        pool: tag(POOL_NAME_TAG).map(str::to_owned),
        build: tag(BUILD_TAG).map(str::to_owned),
    })
}

/// A listed VM of `resource_group` (compared case-insensitively, as ARM does), by the name
/// its resource ID ends in; anything else in the list is not the pool's.
fn listed(vm: &VirtualMachine, resource_group: &str) -> Option<Listed> {
    let id = vm.resource.id.as_deref()?;
    if !in_resource_group(Some(id), resource_group) {
        return None;
    }
    let name = id.rsplit('/').next()?;
    Some(Listed {
        name: VmId::parse(name).ok()?,
        resource_id: id.to_owned(),
        status: status_of(vm),
        tagged: false,
        pool: None,
        build: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ArmConfig {
        ArmConfig {
            endpoint: url::Url::parse("http://127.0.0.1:1").unwrap(),
            token: Some(Secret::new("t")),
            subscription_id: "00000000-0000-0000-0000-000000000001".into(),
            resource_group: "games".into(),
            location: "westeurope".into(),
            subnet_id: "/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/default".into(),
            ssh_public_key: "ssh-ed25519 AAAA test".into(),
            image: Image::parse(settings::DEFAULT_IMAGE).unwrap(),
            vm_size: "Standard_B2s".into(),
            admin_username: "azureuser".into(),
        }
    }

    fn err(status: u16, code: &str, retry_after: Option<&str>) -> ArmHttpError {
        let body = json!({"error": {"code": code, "message": "why"}}).to_string();
        ArmHttpError::from_parts(status, retry_after, body.as_bytes())
    }

    #[test]
    fn each_status_maps_to_its_documented_outcome() {
        assert_eq!(
            classify(&err(429, "TooManyRequests", Some("17"))),
            (
                ComputeError::Throttled {
                    retry_after: Duration::from_secs(17)
                },
                false
            )
        );
        assert_eq!(
            classify(&err(429, "TooManyRequests", None)).0,
            ComputeError::Throttled {
                retry_after: Duration::from_secs(30)
            }
        );
        assert_eq!(
            classify(&err(404, "ResourceNotFound", None)).0,
            ComputeError::NotFound
        );
        assert_eq!(
            classify(&err(409, "Conflict", None)).0,
            ComputeError::Conflict("why".into())
        );
        assert_eq!(
            classify(&err(409, "OperationNotAllowed", None)).0,
            ComputeError::Rejected {
                code: "OperationNotAllowed".into(),
                message: "why".into()
            }
        );
        let (e, retry) = classify(&err(503, "ServiceUnavailable", None));
        assert!(matches!(e, ComputeError::Unavailable(_)) && retry);
        assert_eq!(
            classify(&err(400, "InvalidParameter", None)).0,
            ComputeError::Rejected {
                code: "InvalidParameter".into(),
                message: "why".into()
            }
        );
        let bare = ArmHttpError::from_parts(403, None, b"not json");
        assert_eq!(
            classify(&bare).0,
            ComputeError::Suspect {
                code: "HTTP403".into(),
                message: "HTTP 403".into()
            }
        );
        for code in [
            "ResourceGroupNotFound",
            "SubscriptionNotFound",
            "ParentResourceNotFound",
            "",
        ] {
            assert!(
                matches!(
                    classify(&err(404, code, None)).0,
                    ComputeError::Suspect { .. }
                ),
                "{code}"
            );
        }
        assert_eq!(
            classify(&err(404, "NotFound", None)).0,
            ComputeError::NotFound
        );
        assert!(matches!(
            classify(&err(401, "InvalidAuthenticationToken", None)).0,
            ComputeError::Suspect { .. }
        ));
    }

    #[test]
    fn the_error_policy_survives_azure_core_wrapping() {
        let inner = azure_core::Error::new(
            ErrorKind::http_response(azure_core::StatusCode::TooManyRequests, None),
            err(429, "TooManyRequests", Some("5")),
        );
        let wrapped = inner.context("retry policy gave up");
        assert_eq!(
            map_error(&wrapped).0,
            ComputeError::Throttled {
                retry_after: Duration::from_secs(5)
            }
        );
        let io = azure_core::Error::message(ErrorKind::Io, "connection refused");
        assert!(matches!(
            map_error(&io),
            (ComputeError::Unavailable(_), false)
        ));
    }

    #[test]
    fn the_body_carries_what_arm_requires_and_survives_the_model() {
        let id = VmId::parse("vmpool-abc").unwrap();
        let model = vm_model(&config(), &id, "pool1").unwrap();
        let mut sent = serde_json::to_value(&model).unwrap();
        // The 0.21 model always writes the read-only `timeCreated`, as null; ARM ignores it.
        let time_created = sent["properties"]
            .as_object_mut()
            .unwrap()
            .remove("timeCreated");
        assert_eq!(time_created, Some(Value::Null));
        assert_eq!(
            sent,
            vm_body(&config(), &id, "pool1"),
            "the model dropped a field"
        );
        assert_eq!(
            sent,
            vm_body(&config(), &id, "pool1"),
            "the model dropped a field"
        );
        assert_eq!(sent["location"], "westeurope");
        assert_eq!(sent["tags"]["vmpool"], "pool1");
        let p = &sent["properties"];
        assert_eq!(p["hardwareProfile"]["vmSize"], "Standard_B2s");
        assert_eq!(
            p["storageProfile"]["imageReference"]["publisher"],
            "Canonical"
        );
        assert_eq!(p["storageProfile"]["osDisk"]["deleteOption"], "Delete");
        assert_eq!(p["osProfile"]["computerName"], "vmpool-abc");
        assert_eq!(
            p["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["path"],
            "/home/azureuser/.ssh/authorized_keys"
        );
        let nic = &p["networkProfile"]["networkInterfaceConfigurations"][0];
        assert_eq!(nic["name"], "vmpool-abc-nic");
        assert_eq!(nic["properties"]["deleteOption"], "Delete");
        let ip = &nic["properties"]["ipConfigurations"][0]["properties"];
        assert!(
            ip["subnet"]["id"]
                .as_str()
                .unwrap()
                .ends_with("/subnets/default")
        );
        let pip = &ip["publicIPAddressConfiguration"];
        assert_eq!(pip["name"], "vmpool-abc-ip");
        assert_eq!(pip["sku"]["name"], "Standard");
        assert_eq!(pip["properties"]["publicIPAllocationMethod"], "Static");
        assert_eq!(pip["properties"]["deleteOption"], "Delete");

        let mut by_id = config();
        by_id.image = Image::Id(
            "/subscriptions/s/resourceGroups/img/providers/Microsoft.Compute/images/game".into(),
        );
        let sent = serde_json::to_value(vm_model(&by_id, &id, "p").unwrap()).unwrap();
        assert!(sent["properties"]["storageProfile"]["imageReference"]["id"].is_string());
    }

    #[test]
    fn instance_view_statuses_read_as_vm_status() {
        let s = status_from_codes(
            [
                ("ProvisioningState/succeeded", None),
                ("PowerState/running", None),
            ],
            None,
        );
        assert!(s.is_up());
        let s = status_from_codes([("PowerState/deallocated", None)], Some("Succeeded"));
        assert!(s.is_deallocated());
        assert_eq!(s.provisioning, Provisioning::Succeeded);
        let s = status_from_codes(
            [(
                "ProvisioningState/failed/AllocationFailed",
                Some("no capacity"),
            )],
            None,
        );
        assert_eq!(
            s.provisioning,
            Provisioning::Failed("AllocationFailed: no capacity".into())
        );
        let s = status_from_codes([("ProvisioningState/updating", None)], None);
        assert_eq!(
            (s.provisioning, s.power),
            (Provisioning::Creating, Power::Unknown)
        );
        let s = status_from_codes([], Some("Deleting"));
        assert_eq!(s.provisioning, Provisioning::Deleting);
    }

    #[test]
    fn only_the_resource_group_in_the_id_counts() {
        let id =
            "/subscriptions/s/resourceGroups/Games/providers/Microsoft.Compute/virtualMachines/a";
        assert!(in_resource_group(Some(id), "games"));
        assert!(!in_resource_group(Some(id), "other"));
        assert!(!in_resource_group(None, "games"));
    }

    #[test]
    fn resource_graph_rows_and_headers_read_as_azure_writes_them() {
        assert_eq!(quota_resets_after("00:00:03"), Some(Duration::from_secs(3)));
        assert_eq!(
            quota_resets_after("00:01:02.5"),
            Some(Duration::from_secs(63))
        );
        assert_eq!(quota_resets_after("3"), None);
        assert_eq!(quota_resets_after("00:99:00"), None);
        let q = sweep_query("it's\\x");
        assert!(q.contains(r"resourceGroup =~ 'it\'s\\x'"), "{q}");
        let row = json!({
            "id": "/subscriptions/s/resourceGroups/Games/providers/Microsoft.Compute/virtualMachines/vm-1",
            "name": "vm-1",
            "tags": {"vmpool": "pool1"},
            "provisioningState": "Succeeded",
            "powerState": "PowerState/deallocated"
        });
        let l = graph_row(&row, "games", "pool1").unwrap();
        assert!(l.tagged && l.status.is_deallocated());
        assert_eq!(l.status.provisioning, Provisioning::Succeeded);
        assert!(!graph_row(&row, "games", "other").unwrap().tagged);
        assert!(graph_row(&row, "elsewhere", "pool1").is_none());
        let creating = json!({"id": row["id"], "tags": null, "provisioningState": "Creating", "powerState": ""});
        let l = graph_row(&creating, "games", "pool1").unwrap();
        assert_eq!(
            (l.status.provisioning, l.status.power, l.tagged),
            (Provisioning::Creating, Power::Unknown, false)
        );
    }

    #[tokio::test]
    async fn the_static_token_is_served_and_never_printed() {
        let t = StaticToken::new(Secret::new("s3cret"));
        assert_eq!(t.get_token(&["x"]).await.unwrap().token.secret(), "s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
