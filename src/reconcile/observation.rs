//! What the reconciler knows of each VM and where it came from. A listing or a Resource Graph
//! sweep ([`Observation`]) is a hint: it lags ARM (Resource Graph by seconds, sometimes
//! minutes) and may miss VMs. A [`PointRead`] (a GET of the VM with its instance view, made
//! this pass) is the only fact a destructive step may rest on; it can only be made by
//! reading ARM ([`PointRead::take`]), so a plan cannot invent one.

use crate::compute::{Compute, ComputeError, VmStatus};
use crate::domain::VmId;

/// Where an [`Observation`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The resource group's listing (provisioning state and tags; no power state over ARM).
    Listing,
    /// The listing, with the power state of the Resource Graph sweep merged in.
    Sweep,
}

/// What a listing or a sweep showed of one VM: a hint, which may only nominate the VM for a
/// point read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The status shown.
    pub status: VmStatus,
    /// Where it came from.
    pub source: Source,
}

impl Observation {
    /// A hint from `source`.
    pub fn new(status: VmStatus, source: Source) -> Self {
        Observation { status, source }
    }
}

/// A point read of one VM this pass: what a GET with the instance view answered. `None`
/// status: ARM answered 404 `ResourceNotFound`, the VM does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointRead {
    id: VmId,
    status: Option<VmStatus>,
}

impl PointRead {
    /// Reads `id` from ARM. An answer about scope or access
    /// ([`ComputeError::Suspect`]), like any other error, is no read.
    pub async fn take(compute: &dyn Compute, id: VmId) -> Result<PointRead, ComputeError> {
        let status = compute.status(&id).await?;
        Ok(PointRead { id, status })
    }

    /// A read as if ARM had answered `status`, for the plan's unit tests.
    #[cfg(test)]
    pub(crate) fn assumed(id: VmId, status: Option<VmStatus>) -> Self {
        PointRead { id, status }
    }

    /// The VM read.
    pub fn id(&self) -> &VmId {
        &self.id
    }

    /// What ARM showed of it; `None` when it does not exist.
    pub fn status(&self) -> Option<&VmStatus> {
        self.status.as_ref()
    }

    /// Whether ARM answered that the VM does not exist.
    pub fn is_gone(&self) -> bool {
        self.status.is_none()
    }
}

impl std::fmt::Display for PointRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.status {
            None => write!(f, "a GET of {} answered 404 ResourceNotFound", self.id),
            Some(s) => write!(
                f,
                "a GET of {} showed provisioning {:?}, power {:?}",
                self.id, s.provisioning, s.power
            ),
        }
    }
}
