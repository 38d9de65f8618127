//! The VM table port: one row per VM, every change a conditional write on the row's ETag.
//!
//! [`memory::MemoryStore`] keeps rows in process (unit tests, the embedded default);
//! [`table::TableStore`] keeps them in Azure Table Storage. Both pass the same contract
//! suite in `tests/`.

pub mod memory;
pub mod table;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{VmId, VmRecord, VmState};

/// An opaque row version; a write that names a stale one changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Etag(pub String);

/// A row as read, with the version a conditional write must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The row.
    pub vm: VmRecord,
    /// Its version when it was read.
    pub etag: Etag,
}

/// The outcome of a conditional write. Losing a race is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The write happened; the row now has this version.
    Done(Etag),
    /// Someone else got there first: the ETag was stale, the row was gone, or (for an
    /// insert) the row already existed. Nothing changed.
    LostRace,
}

/// Storage could not answer. Nothing was changed by a call that failed with it, as far as
/// the caller can know; a retry is safe because every write is conditional.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The service is unreachable, timed out or answered 5xx.
    #[error("table storage is unavailable: {0}")]
    Unavailable(String),
    /// The service refused the request for a reason a retry will not fix.
    #[error("table storage refused the request: {0}")]
    Rejected(String),
}

/// Which rows a listing returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows<'a> {
    /// Every row.
    All,
    /// Rows in one of these states.
    InStates(&'a [VmState]),
}

impl Rows<'_> {
    /// Whether a row in `state` is selected.
    pub fn selects(&self, state: VmState) -> bool {
        match self {
            Rows::All => true,
            Rows::InStates(states) => states.contains(&state),
        }
    }
}

/// What the reconciler remembers about the pool as a whole (not about one VM): kept beside
/// the VM rows so every instance can report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolMeta {
    /// When the last reconcile pass finished.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_reconcile_at: Option<OffsetDateTime>,
    /// One line on what the last pass did.
    #[serde(default)]
    pub last_reconcile_summary: String,
    /// The warm-buffer target the last pass worked towards.
    #[serde(default)]
    pub buffer_target: u32,
    /// When the buffer target was last raised by demand (the cool-down counts from here).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub target_raised_at: Option<OffsetDateTime>,
    /// Creates that failed in a row since the last success.
    #[serde(default)]
    pub consecutive_create_failures: u32,
    /// While set and in the future, the buffer creates no VMs.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub breaker_open_until: Option<OffsetDateTime>,
    /// Why the breaker opened.
    #[serde(default)]
    pub breaker_reason: Option<String>,
}

/// The VM table.
#[async_trait]
pub trait VmStore: Send + Sync + 'static {
    /// Where the rows live, for the start-up line (never a secret).
    fn describe(&self) -> String;

    /// The row of `id`, if there is one.
    async fn get(&self, id: &VmId) -> Result<Option<Versioned>, StoreError>;

    /// The rows `which` selects, in no particular order. Rows that cannot be read as a VM
    /// (written by something else) are skipped with a warning.
    async fn list(&self, which: Rows<'_>) -> Result<Vec<Versioned>, StoreError>;

    /// Adds a row; [`Written::LostRace`] if a row with that key exists.
    async fn insert(&self, vm: &VmRecord) -> Result<Written, StoreError>;

    /// Replaces a row if it is still at `etag`.
    async fn update(&self, vm: &VmRecord, etag: &Etag) -> Result<Written, StoreError>;

    /// Removes a row if it is still at `etag`.
    async fn delete(&self, id: &VmId, etag: &Etag) -> Result<Written, StoreError>;

    /// The pool's own record, if written yet.
    async fn load_meta(&self) -> Result<Option<PoolMeta>, StoreError>;

    /// Writes the pool's own record (only the reconciler writes it, one pass at a time).
    async fn save_meta(&self, meta: &PoolMeta) -> Result<(), StoreError>;
}
