//! The compute port: what vmpool asks of Azure Resource Manager.
//!
//! Every mutation returns once ARM has accepted it; the reconciler confirms the outcome later
//! from [`Compute::list`], [`Compute::list_power`] and [`Compute::status`]. [`sim::SimulatedCompute`] is a simulated ARM
//! with realistic latencies (the embedded default); [`arm::ArmCompute`] is the real client.

pub mod arm;
pub mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::VmId;
pub use arm::Image;

/// The tag that marks a VM as a member of a pool; its value is the pool's name (the table).
pub const POOL_TAG: &str = "vmpool";

/// The tag that names the VM's pool within the deployment (`VMPOOL_POOLS`), so adoption
/// puts a VM back in its pool.
pub const POOL_NAME_TAG: &str = "vmpool-pool";

/// The tag that names the build the VM was created with.
pub const BUILD_TAG: &str = "vmpool-build";

/// What a new VM is: the pool it belongs to and the build it runs, and where and from what
/// it is made (a pool's settings make one: `PoolSpec::vm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The pool.
    pub pool: String,
    /// The build its image carries.
    pub build: String,
    /// Its region; `None`: the compute API's own.
    pub location: Option<String>,
    /// Its size.
    pub vm_size: String,
    /// Its image.
    pub image: Image,
    /// Its NIC's subnet; `None`: the compute API's own.
    pub subnet_id: Option<String>,
}

/// The tags a VM is created with: the table's membership tag, its pool and its build.
pub fn tags_for(table: &str, spec: &VmSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (POOL_TAG.to_owned(), table.to_owned()),
        (POOL_NAME_TAG.to_owned(), spec.pool.clone()),
        (BUILD_TAG.to_owned(), spec.build.clone()),
    ])
}

/// ARM's provisioning state of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioning {
    /// The create (or an update) is in progress.
    Creating,
    /// The last operation on the VM's model succeeded.
    Succeeded,
    /// The last operation failed; ARM's error text.
    Failed(String),
    /// The VM is being deleted.
    Deleting,
}

/// ARM's power state of a VM (`PowerState/...` in the instance view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Booting.
    Starting,
    /// Running (billed).
    Running,
    /// Shutting down but still allocated.
    Stopping,
    /// Stopped but still allocated (billed).
    Stopped,
    /// Being deallocated.
    Deallocating,
    /// Deallocated (not billed for compute).
    Deallocated,
    /// ARM did not say.
    Unknown,
}

/// What ARM says about one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    /// Provisioning state.
    pub provisioning: Provisioning,
    /// Power state.
    pub power: Power,
}

impl VmStatus {
    /// Provisioned and running: a `Creating` VM is ready.
    pub fn is_up(&self) -> bool {
        self.provisioning == Provisioning::Succeeded && self.power == Power::Running
    }

    /// Deallocated: a `Deallocating` VM is done.
    pub fn is_deallocated(&self) -> bool {
        self.power == Power::Deallocated
    }
}

/// One VM of the pool's resource group as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its name.
    pub name: VmId,
    /// Its full resource ID as ARM spells it (compare case-insensitively).
    pub resource_id: String,
    /// What the listing says of it. The resource-group listing carries no power state
    /// ([`Power::Unknown`]); a point read or [`Compute::list_power`] gives it.
    pub status: VmStatus,
    /// Whether it carries this pool's [`POOL_TAG`] (both listings carry tags).
    pub tagged: bool,
    /// Its [`POOL_NAME_TAG`], if it has one.
    pub pool: Option<String>,
    /// Its [`BUILD_TAG`], if it has one.
    pub build: Option<String>,
}

/// The pool and build a VM's tags name ([`POOL_NAME_TAG`], [`BUILD_TAG`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    /// The pool, if tagged.
    pub pool: Option<String>,
    /// The build, if tagged.
    pub build: Option<String>,
}

impl Listed {
    /// The pool and build its tags name.
    pub fn tags(&self) -> Tags {
        Tags {
            pool: self.pool.clone(),
            build: self.build.clone(),
        }
    }
}

/// Why ARM did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    /// 429: try again after the delay ARM gave.
    #[error("ARM is throttling requests; retry after {}s", retry_after.as_secs())]
    Throttled {
        /// ARM's `Retry-After`.
        retry_after: Duration,
    },
    /// ARM could not be reached, timed out, or kept answering 5xx.
    #[error("ARM is unavailable: {0}")]
    Unavailable(String),
    /// The VM does not exist: a 404 whose code says so (`ResourceNotFound`, `NotFound`).
    /// Only this confirms that a VM is gone.
    #[error("the VM does not exist in ARM")]
    NotFound,
    /// An answer about the scope or the caller, not about the VM: a 404 for the resource
    /// group, the subscription or a parent resource (`ResourceGroupNotFound`,
    /// `SubscriptionNotFound`, `ParentResourceNotFound`, or a 404 with no code), or 401/403.
    /// These come from configuration, role assignments or replication lag; nothing about
    /// the VM may be concluded from them, and the reconciler takes no destructive step
    /// while it gets them.
    #[error("ARM answered about its scope or access, not about the VM: {code}: {message}")]
    Suspect {
        /// ARM's error code, or `HTTP<status>` when it gave none.
        code: String,
        /// ARM's message.
        message: String,
    },
    /// 409: another operation on the VM is in progress.
    #[error("ARM refused because another operation is in progress: {0}")]
    Conflict(String),
    /// A 4xx that a retry will not fix (quota, bad request, authorization...).
    #[error("ARM refused the request: {code}: {message}")]
    Rejected {
        /// ARM's error code, such as `QuotaExceeded`.
        code: String,
        /// ARM's message.
        message: String,
    },
}

/// ARM error codes that refuse a start or create for capacity: the region's or the VM
/// family's core quota (409 `OperationNotAllowed`, "Operation results in exceeding quota
/// limits of Core", per Microsoft Learn's "Resolve errors for resource quotas"), a size not
/// offered there (`SkuNotAvailable`), or no hardware free (`AllocationFailed`,
/// `ZonalAllocationFailed`, `OverconstrainedAllocationRequest`, per Microsoft Learn's
/// "Troubleshoot allocation failures"). They say nothing about the VM itself: it stays as it
/// was and can be started later.
pub const REFUSAL_CODES: &[&str] = &[
    "OperationNotAllowed",
    "QuotaExceeded",
    "SkuNotAvailable",
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest",
];

/// Whether an ARM error code (or a `Code: message` text) is one of [`REFUSAL_CODES`].
pub fn is_refusal_code(code_or_text: &str) -> bool {
    let code = code_or_text.split(':').next().unwrap_or_default().trim();
    REFUSAL_CODES.iter().any(|c| c.eq_ignore_ascii_case(code))
}

impl ComputeError {
    /// Whether ARM refused for capacity (quota, SKU, allocation): see [`REFUSAL_CODES`].
    pub fn is_refusal(&self) -> bool {
        matches!(self, ComputeError::Rejected { code, .. } if is_refusal_code(code))
    }

    /// Whether the request may work if sent again later (as opposed to a permanent refusal).
    /// An answer about scope or access counts: role assignments and new resource groups
    /// take minutes to propagate.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ComputeError::Throttled { .. }
                | ComputeError::Unavailable(_)
                | ComputeError::Conflict(_)
                | ComputeError::Suspect { .. }
        )
    }
}

/// The compute API.
#[async_trait]
pub trait Compute: Send + Sync + 'static {
    /// What this is and where it points, for the start-up line (never a secret).
    fn describe(&self) -> String;

    /// The full ARM resource ID of the VM called `name`.
    fn resource_id(&self, name: &VmId) -> String;

    /// Creates the VM (with its NIC and public IP) in `pool`'s region, size, image and
    /// subnet, tagged with its pool and build; idempotent for the same name.
    async fn create(&self, name: &VmId, pool: &VmSpec) -> Result<(), ComputeError>;

    /// Starts a deallocated VM.
    async fn start(&self, name: &VmId) -> Result<(), ComputeError>;

    /// Deallocates a VM.
    async fn deallocate(&self, name: &VmId) -> Result<(), ComputeError>;

    /// Deletes a VM with its NIC, disk and public IP.
    async fn delete(&self, name: &VmId) -> Result<(), ComputeError>;

    /// The status of one VM; `None` if ARM does not know it.
    async fn status(&self, name: &VmId) -> Result<Option<VmStatus>, ComputeError>;

    /// Every VM in the pool's resource group, with its provisioning state and tags (one
    /// page per ARM page of VMs). A listing may lag or miss VMs: absence is not deletion.
    async fn list(&self) -> Result<Vec<Listed>, ComputeError>;

    /// The power state of every VM in the pool's resource group, with its tags: a sweep run
    /// every few minutes for drift and adoption. Over ARM it is a Resource Graph query,
    /// which follows ARM with a lag of seconds: it never confirms the state of one VM.
    async fn list_power(&self) -> Result<Vec<Listed>, ComputeError>;

    /// The VM's public IP address, once it has one.
    async fn public_ip(&self, name: &VmId) -> Result<Option<String>, ComputeError>;

    /// The image ARM reports the VM was created from (`storageProfile.imageReference`, a
    /// point read); `None` if ARM does not know the VM or reports no image.
    async fn image(&self, name: &VmId) -> Result<Option<Image>, ComputeError>;
}
