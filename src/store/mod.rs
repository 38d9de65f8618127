//! The VM table port: one row per VM, every change a conditional write on the row's ETag.
//!
//! [`memory::MemoryStore`] keeps rows in process (unit tests, the embedded default);
//! [`table::TableStore`] keeps them in Azure Table Storage, reached with a connection string or
//! with a token ([`identity`]). Both pass the same contract
//! suite in `tests/`.

pub mod identity;
pub mod memory;
pub mod page;
pub mod table;

pub use page::{
    Continuation, Page, PageRequest, StateCounts, WRITE_CONCURRENCY, run_bounded, zero_counts,
};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::domain::{ClaimKind, VmId, VmRecord, VmState};

/// The characters the random part of a new VM name is drawn from, in key order (a sample
/// of an index reads positions in the key space from them).
pub const VM_NAME_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// How many random characters follow the prefix and the dash of a new VM name.
pub const VM_NAME_RANDOM: usize = 10;

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

/// One of the pool's own records (the reconciler's record, its lease, an idempotency key),
/// kept apart from the VM rows, with the version a conditional write must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What the owner of the record stored (JSON, by convention).
    pub value: String,
    /// Its version when it was read.
    pub etag: Etag,
}

/// The longest record value, in characters: Table Storage keeps strings up to 64 KiB of UTF-16.
pub const MAX_RECORD_CHARS: usize = 30_000;

/// Checks a record's kind or key: 1-256 characters, none of `/ \ # ?` or control
/// characters (which Table Storage refuses in keys).
pub fn check_record_key(what: &str, raw: &str) -> Result<(), StoreError> {
    let ok = (1..=256).contains(&raw.chars().count())
        && !raw
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '#' | '?') || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Rejected(format!(
            "record {what} {raw:?} is not a valid key (1-256 characters, no / \\ # ? or control characters)"
        )))
    }
}

/// Checks a record's value fits in one property.
pub fn check_record_value(value: &str) -> Result<(), StoreError> {
    if value.chars().count() <= MAX_RECORD_CHARS {
        Ok(())
    } else {
        Err(StoreError::Rejected(format!(
            "record value of {} characters is over the {MAX_RECORD_CHARS} kept",
            value.chars().count()
        )))
    }
}

/// The longest free text (an ARM error, a reconcile summary) a row keeps, in characters;
/// longer text is cut. Table Storage refuses strings over 64 KiB.
pub const MAX_TEXT_CHARS: usize = 4096;

/// Cuts `text` to [`MAX_TEXT_CHARS`] characters.
pub fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((at, _)) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

/// The row as every store keeps it: times in UTC cut to the 100 ns ticks Table Storage
/// keeps, free text cut to [`MAX_TEXT_CHARS`]. Times outside the years 1601-9999 (which
/// Table Storage cannot hold) are refused. Both stores apply this, so the in-memory one
/// answers exactly as the real one would.
pub fn normalize(vm: &VmRecord) -> Result<VmRecord, StoreError> {
    Ok(VmRecord {
        last_report_at: opt(vm.last_report_at)?,
        state_changed_at: tick(vm.state_changed_at)?,
        operation_since: opt(vm.operation_since)?,
        created_at: tick(vm.created_at)?,
        claimed_at: opt(vm.claimed_at)?,
        last_error: vm.last_error.as_deref().map(truncate),
        attention: vm.attention.as_deref().map(truncate),
        unhealthy: vm.unhealthy.as_deref().map(truncate),
        ..vm.clone()
    })
}

pub(crate) fn tick(t: OffsetDateTime) -> Result<OffsetDateTime, StoreError> {
    let t = t.to_offset(time::UtcOffset::UTC);
    if !(1601..=9999).contains(&t.year()) {
        return Err(StoreError::Rejected(format!(
            "time {t} is outside what table storage keeps (years 1601-9999)"
        )));
    }
    t.replace_nanosecond(t.nanosecond() / 100 * 100)
        .map_err(|e| StoreError::Rejected(format!("time {t}: {e}")))
}

fn opt(t: Option<OffsetDateTime>) -> Result<Option<OffsetDateTime>, StoreError> {
    t.map(tick).transpose()
}

/// A pool and a build (`None`: not known yet), as VMs are grouped for counting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Group {
    /// The pool.
    pub pool: String,
    /// The build.
    pub build: Option<String>,
}

impl Group {
    /// The group of `vm`.
    pub fn of(vm: &VmRecord) -> Group {
        Group {
            pool: vm.pool.clone(),
            build: vm.build.clone(),
        }
    }
}

/// VMs in each state, per pool and build (only groups with VMs appear).
pub type GroupCounts = std::collections::BTreeMap<Group, StateCounts>;

/// Adds one VM of `group` in `state` to `counts`.
pub fn count_into(counts: &mut GroupCounts, group: Group, state: VmState) {
    *counts
        .entry(group)
        .or_insert_with(zero_counts)
        .entry(state)
        .or_default() += 1;
}

/// The counts of every group added up.
pub fn total(groups: &GroupCounts) -> StateCounts {
    let mut all = zero_counts();
    for counts in groups.values() {
        for (state, n) in counts {
            *all.entry(*state).or_default() += n;
        }
    }
    all
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

    /// One page of the rows `which` selects, in vmId order, resuming where `page.after`
    /// says. Memory stays bounded by the page size, however large the table.
    async fn list_page(
        &self,
        which: Rows<'_>,
        page: &PageRequest,
    ) -> Result<Page<Versioned>, StoreError>;

    /// Up to `limit` candidates for a claim of `kind` ([`ClaimKind::of`]), in vmId order from
    /// the first vmId after `after`, wrapping round to the start of the key space when fewer
    /// follow it. The caller draws `after` at random from the space its VM names live in, so
    /// concurrent callers of several instances are handed different ones; the cost does not
    /// grow with the number of candidates (Table Storage answers a key-range query with
    /// `$top` from where the range starts).
    async fn sample(
        &self,
        kind: ClaimKind,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Versioned>, StoreError>;

    /// How many VMs are in each state, over the whole table. Memory stays bounded: rows are
    /// counted as they arrive.
    async fn count_states(&self) -> Result<StateCounts, StoreError>;

    /// How many VMs are in each state, per pool and build, over the whole table. Memory
    /// stays bounded by the number of groups.
    async fn count_groups(&self) -> Result<GroupCounts, StoreError> {
        let mut counts = GroupCounts::new();
        for row in self.list(Rows::All).await? {
            count_into(&mut counts, Group::of(&row.vm), row.vm.state);
        }
        Ok(counts)
    }

    /// Brings any index the store keeps beside the rows back in line with them, given the
    /// rows as just listed (the reconciler calls this each pass with its own listing). Rows
    /// are the system of record; an index entry that disagrees is rewritten or removed after
    /// reading the row afresh. Returns how many entries were fixed. A store without an index
    /// has nothing to do.
    async fn repair_index(&self, rows: &[Versioned]) -> Result<usize, StoreError>;

    /// Adds a row; [`Written::LostRace`] if a row with that key exists. The row is kept as
    /// [`normalize`] makes it.
    async fn insert(&self, vm: &VmRecord) -> Result<Written, StoreError>;

    /// Replaces a row if it is still at `etag` ([`Written::LostRace`] if it is not, or is
    /// gone). The row is kept as [`normalize`] makes it.
    async fn update(&self, vm: &VmRecord, etag: &Etag) -> Result<Written, StoreError>;

    /// Removes a row if it is still at `etag` ([`Written::LostRace`] if it is not, or is
    /// gone).
    async fn delete(&self, id: &VmId, etag: &Etag) -> Result<Written, StoreError>;

    /// The record `kind`/`key`, if there is one.
    async fn get_record(&self, kind: &str, key: &str) -> Result<Option<Record>, StoreError>;

    /// Adds a record; [`Written::LostRace`] if one with that kind and key exists.
    async fn insert_record(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<Written, StoreError>;

    /// Replaces a record if it is still at `etag` ([`Written::LostRace`] if it is not, or is
    /// gone).
    async fn update_record(
        &self,
        kind: &str,
        key: &str,
        value: &str,
        etag: &Etag,
    ) -> Result<Written, StoreError>;

    /// One page of the records of `kind`, in key order, each with its key, resuming where
    /// `page.after` says (a token from an earlier page of the same kind). Memory stays
    /// bounded by the page size, however many records there are.
    async fn list_records(
        &self,
        kind: &str,
        page: &PageRequest,
    ) -> Result<Page<(String, Record)>, StoreError>;

    /// Removes a record if it is still at `etag` ([`Written::LostRace`] if it is not, or is
    /// gone).
    async fn delete_record(
        &self,
        kind: &str,
        key: &str,
        etag: &Etag,
    ) -> Result<Written, StoreError>;
}
