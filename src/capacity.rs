//! The capacity ledger: how `VMPOOL_MAX_VMS` is kept without counting the table.
//!
//! One record in the pool-record table, written only with If-Match on its ETag, holds:
//! - `counted`: the VMs that count against the maximum (every state but `Deallocated`) at
//!   the reconciler's last listing, by pool;
//! - `reservations`: one per VM that a claim (a start of a `Deallocated` VM, a new VM) has
//!   taken a place for since, with the VM's name and the time it was taken.
//!
//! The places in use are `counted` plus the reservations, over every pool together and for
//! each pool (its own `maxVms`). A claim takes its place first (a conditional write that
//! fails if any other claim or count changed the record since it was read, and that is
//! refused when no place is left in all pools together or in the claim's pool), then writes
//! the VM's row; a claim whose
//! row write fails gives its place back. Each reconcile pass counts its own listing, keeps
//! the reservations whose VM the listing did not yet show counting, and writes the record
//! conditionally on the version it read after the listing:
//! - a reservation whose row landed before the listing is counted once, by the listing;
//! - one whose row landed after the listing is kept, so it is counted once, by itself;
//! - one taken after the record was read makes the pass's write lose (the next pass counts
//!   again), so no place is ever dropped.
//!
//! A reservation is dropped unseen only after [`RESERVATION_TTL`] from before the listing
//! began; a claim writes its row within half of that or gives the place back, so by then any
//! row it wrote is in the listing. Places are freed late (a VM deallocated since the listing
//! still counts until the next pass), never early, so the pool can fall short of its maximum
//! for one pass but never exceed it, with any number of instances.
//!
//! Claims that take no place (a reclaim, a standby VM, a buffer VM still creating) never
//! touch the ledger. The cost of a claim is one read and one conditional write of one small
//! record, whatever the size of the table.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::warn;

use crate::domain::VmId;
use crate::store::{Etag, StoreError, Versioned, VmStore, Written};

/// The kind and key of the ledger record.
pub const LEDGER: (&str, &str) = ("pool", "capacity");
pub use crate::domain::DEFAULT_POOL;
/// How long a reservation counts without its VM being seen by a listing.
pub const RESERVATION_TTL: Duration = Duration::from_secs(600);
/// The most reservations the record holds (a record value holds 30,000 characters); past
/// that, claims wait for the next pass to fold them into the count.
pub const MAX_RESERVATIONS: usize = 300;
/// How many times a claim re-reads the record after another writer changed it.
const TRIES: usize = 32;

/// One place taken by a claim since the last count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The claim that holds the place ([`new_claim`]): two claims that try the same VM hold
    /// a place each.
    pub claim: String,
    /// The VM the place is for now.
    pub vm: String,
    /// Its pool.
    pub pool: String,
    /// When the place was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The ledger record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// VMs counting against the maximum at the last count, by pool.
    #[serde(default)]
    pub counted: BTreeMap<String, u32>,
    /// When the listing of the last count began.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub counted_at: Option<OffsetDateTime>,
    /// Places taken since.
    #[serde(default)]
    pub reservations: Vec<Reservation>,
}

impl Ledger {
    /// The places in use: the count plus the reservations.
    pub fn used(&self) -> u64 {
        self.counted.values().map(|n| u64::from(*n)).sum::<u64>() + self.reservations.len() as u64
    }

    /// The places in use by `pool`: its count plus its reservations.
    pub fn used_by(&self, pool: &str) -> u64 {
        u64::from(self.counted.get(pool).copied().unwrap_or(0))
            + self.reservations.iter().filter(|r| r.pool == pool).count() as u64
    }

    fn drop_claim(&mut self, claim: &str) {
        self.reservations.retain(|r| r.claim != claim);
    }
}

/// A fresh claim token: one per CreateVM (or buffer fill) that may take a place.
pub fn new_claim() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(12)
        .map(char::from)
        .collect()
}

/// What a claim's request for a place got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// The place is the claim's.
    Done,
    /// All pools together are at the maximum.
    Full,
    /// The claim's pool is at its own maximum.
    PoolFull,
    /// The record holds [`MAX_RESERVATIONS`] places not yet counted: try again after the
    /// next pass.
    Busy,
}

/// The ledger and its version, if it was ever written. A record that cannot be read counts
/// as absent (with a warning) and is replaced on the next write.
pub async fn load(store: &dyn VmStore) -> Result<Option<(Ledger, Etag)>, StoreError> {
    let Some(record) = store.get_record(LEDGER.0, LEDGER.1).await? else {
        return Ok(None);
    };
    match serde_json::from_str(&record.value) {
        Ok(ledger) => Ok(Some((ledger, record.etag))),
        Err(e) => {
            warn!(error = %e, "the capacity ledger is unreadable; it is counted afresh");
            Ok(Some((Ledger::default(), record.etag)))
        }
    }
}

async fn save(
    store: &dyn VmStore,
    ledger: &Ledger,
    etag: Option<&Etag>,
) -> Result<Written, StoreError> {
    let value = serde_json::to_string(ledger)
        .map_err(|e| StoreError::Rejected(format!("capacity ledger: {e}")))?;
    match etag {
        Some(etag) => store.update_record(LEDGER.0, LEDGER.1, &value, etag).await,
        None => store.insert_record(LEDGER.0, LEDGER.1, &value).await,
    }
}

/// The ledger as it is now, or (never written, or unreadable) a fresh count of the table:
/// the only time a claim counts rows, once in the life of a table.
async fn current(
    store: &dyn VmStore,
    now: OffsetDateTime,
) -> Result<(Ledger, Option<Etag>), StoreError> {
    match load(store).await? {
        Some((ledger, etag)) if ledger.counted_at.is_some() => Ok((ledger, Some(etag))),
        found => {
            let groups = store.count_groups().await?;
            let mut counted = BTreeMap::<String, u32>::new();
            for (group, counts) in &groups {
                let active: usize = counts
                    .iter()
                    .filter(|(s, _)| s.counts_against_max())
                    .map(|(_, n)| n)
                    .sum();
                let n = counted.entry(group.pool.clone()).or_default();
                *n = n.saturating_add(u32::try_from(active).unwrap_or(u32::MAX));
            }
            let ledger = Ledger {
                counted,
                counted_at: Some(now),
                reservations: Vec::new(),
            };
            Ok((ledger, found.map(|(_, etag)| etag)))
        }
    }
}

/// A short random pause after losing a race for the record, so two instances do not keep
/// colliding in step.
async fn back_off(attempt: usize) {
    let ms = rand::rng().random_range(0..=(2 * attempt.min(10) as u64 + 1));
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The maximum of every pool together and of the pool a claim is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits<'a> {
    /// `VMPOOL_MAX_VMS`: all pools together.
    pub max: u32,
    /// The claim's pool.
    pub pool: &'a str,
    /// That pool's `maxVms`.
    pub pool_max: u32,
}

/// Takes a place for `claim`, for the VM `id` of `limits.pool`, at `now`, if all pools
/// together have one under `limits.max` and the pool has one under its own maximum. A claim
/// that holds a place already (it lost its first candidate) moves it to `id`, which needs no
/// new room; one whose place a count has folded in (its VM was seen counting) takes a new
/// one.
pub async fn reserve(
    store: &dyn VmStore,
    claim: &str,
    id: &VmId,
    now: OffsetDateTime,
    limits: Limits<'_>,
) -> Result<Reserved, StoreError> {
    for attempt in 0..TRIES {
        let (mut ledger, etag) = current(store, now).await?;
        // A place held in another pool does not move: it is given back and a new one taken.
        let moved = ledger
            .reservations
            .iter()
            .any(|r| r.claim == claim && r.pool == limits.pool);
        ledger.drop_claim(claim);
        if !moved {
            if ledger.used() >= u64::from(limits.max) {
                return Ok(Reserved::Full);
            }
            if ledger.used_by(limits.pool) >= u64::from(limits.pool_max) {
                return Ok(Reserved::PoolFull);
            }
            if ledger.reservations.len() >= MAX_RESERVATIONS {
                return Ok(Reserved::Busy);
            }
        }
        ledger.reservations.push(Reservation {
            claim: claim.to_owned(),
            vm: id.as_str().to_owned(),
            pool: limits.pool.to_owned(),
            at: now,
        });
        match save(store, &ledger, etag.as_ref()).await? {
            Written::Done(_) => return Ok(Reserved::Done),
            Written::LostRace => back_off(attempt).await,
        }
    }
    Err(StoreError::Unavailable(
        "the capacity ledger kept changing under this claim".into(),
    ))
}

/// Gives back the place `claim` holds (it wrote no row). If the record cannot be written,
/// the place stays taken until a pass drops it ([`RESERVATION_TTL`]): the pool holds one VM
/// fewer meanwhile, never one more.
pub async fn release(store: &dyn VmStore, claim: &str) {
    release_where(store, |r| r.claim == claim).await;
}

/// Gives back every place held for the VM `id`, for a tool that put a claimed VM back as it
/// was (the benchmark does).
pub async fn release_vm(store: &dyn VmStore, id: &VmId) {
    release_where(store, |r| r.vm == id.as_str()).await;
}

async fn release_where(store: &dyn VmStore, which: impl Fn(&Reservation) -> bool) {
    for attempt in 0..TRIES {
        let outcome = match load(store).await {
            Ok(Some((mut ledger, etag))) if ledger.reservations.iter().any(&which) => {
                ledger.reservations.retain(|r| !which(r));
                save(store, &ledger, Some(&etag)).await
            }
            Ok(_) => return,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Written::Done(_)) => return,
            Ok(Written::LostRace) => back_off(attempt).await,
            Err(e) => {
                warn!(error = %e, "a place in the capacity ledger could not be given back; the next passes drop it");
                return;
            }
        }
    }
}

/// The reconciler's count: `rows` is its listing, begun at `listed_at`. The record is read
/// after the listing and written on that version only ([`Written::LostRace`] if a claim took
/// a place meanwhile: the next pass counts again).
pub async fn recount(
    store: &dyn VmStore,
    rows: &[Versioned],
    listed_at: OffsetDateTime,
) -> Result<Written, StoreError> {
    let (ledger, etag) = match load(store).await? {
        Some((ledger, etag)) => (ledger, Some(etag)),
        None => (Ledger::default(), None),
    };
    let counting: HashSet<&str> = rows
        .iter()
        .filter(|r| r.vm.state.counts_against_max())
        .map(|r| r.vm.id.as_str())
        .collect();
    let mut counted = BTreeMap::<String, u32>::new();
    for row in rows.iter().filter(|r| r.vm.state.counts_against_max()) {
        let n = counted.entry(row.vm.pool.clone()).or_default();
        *n = n.saturating_add(1);
    }
    let expired_before = listed_at - RESERVATION_TTL;
    let reservations = ledger
        .reservations
        .into_iter()
        .filter(|r| !counting.contains(r.vm.as_str()) && r.at > expired_before)
        .collect();
    let next = Ledger {
        counted,
        counted_at: Some(listed_at),
        reservations,
    };
    save(store, &next, etag.as_ref()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Purpose, VmRecord, VmState};
    use crate::store::memory::MemoryStore;

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00 UTC)
    }

    fn id(name: &str) -> VmId {
        VmId::parse(name).unwrap()
    }

    fn row(name: &str, state: VmState) -> VmRecord {
        let mut vm = VmRecord::new_creating(id(name), format!("/r/{name}"), Purpose::Buffer, t0());
        vm.state = state;
        vm
    }

    fn only(max: u32) -> Limits<'static> {
        Limits {
            max,
            pool: DEFAULT_POOL,
            pool_max: max,
        }
    }

    async fn insert(store: &MemoryStore, vm: &VmRecord) {
        assert!(matches!(store.insert(vm).await.unwrap(), Written::Done(_)));
    }

    #[tokio::test]
    async fn places_are_taken_up_to_the_maximum_and_given_back() {
        let store = MemoryStore::new();
        insert(&store, &row("a", VmState::Running)).await;
        insert(&store, &row("b", VmState::Deallocated)).await;
        assert_eq!(
            reserve(&store, "c1", &id("n1"), t0(), only(3))
                .await
                .unwrap(),
            Reserved::Done
        );
        assert_eq!(
            reserve(&store, "c2", &id("n2"), t0(), only(3))
                .await
                .unwrap(),
            Reserved::Done
        );
        assert_eq!(
            reserve(&store, "c3", &id("n3"), t0(), only(3))
                .await
                .unwrap(),
            Reserved::Full,
            "one running and two places taken"
        );
        // Moving a place needs no room.
        assert_eq!(
            reserve(&store, "c2", &id("n3"), t0(), only(3))
                .await
                .unwrap(),
            Reserved::Done
        );
        release(&store, "c1").await;
        let (ledger, _) = load(&store).await.unwrap().unwrap();
        assert_eq!(ledger.used(), 2);
        assert_eq!(ledger.reservations.len(), 1);
        assert_eq!(ledger.reservations[0].vm, "n3");
    }

    #[tokio::test]
    async fn two_claims_that_try_one_vm_hold_a_place_each() {
        let store = MemoryStore::new();
        // Both claims picked the same deallocated VM; one wins its row, the other moves on.
        for claim in ["a", "b"] {
            assert_eq!(
                reserve(&store, claim, &id("x"), t0(), only(2))
                    .await
                    .unwrap(),
                Reserved::Done
            );
        }
        assert_eq!(
            reserve(&store, "b", &id("y"), t0(), only(2)).await.unwrap(),
            Reserved::Done,
            "the loser moves its own place"
        );
        assert_eq!(
            reserve(&store, "c", &id("z"), t0(), only(2)).await.unwrap(),
            Reserved::Full,
            "x and y hold the two places"
        );
        let (ledger, _) = load(&store).await.unwrap().unwrap();
        let vms: Vec<&str> = ledger.reservations.iter().map(|r| r.vm.as_str()).collect();
        assert_eq!(vms, ["x", "y"]);
    }

    #[tokio::test]
    async fn a_count_keeps_the_places_its_listing_did_not_see() {
        let store = MemoryStore::new();
        insert(&store, &row("a", VmState::Running)).await;
        for name in ["seen", "unseen", "old"] {
            reserve(&store, name, &id(name), t0(), only(10))
                .await
                .unwrap();
        }
        // The row of `seen` landed before the listing; `unseen`'s has not yet; `old`'s
        // claim gave up without giving its place back, long ago.
        insert(&store, &row("seen", VmState::Creating)).await;
        let listing = store.list(crate::store::Rows::All).await.unwrap();
        let later = t0() + RESERVATION_TTL / 2;
        let mut ledger = load(&store).await.unwrap().unwrap().0;
        ledger.reservations.retain(|r| r.vm != "old");
        ledger.reservations.push(Reservation {
            claim: "old".into(),
            vm: "old".into(),
            pool: DEFAULT_POOL.into(),
            at: later - RESERVATION_TTL - time::Duration::seconds(1),
        });
        let etag = load(&store).await.unwrap().unwrap().1;
        save(&store, &ledger, Some(&etag)).await.unwrap();

        assert!(matches!(
            recount(&store, &listing, later).await.unwrap(),
            Written::Done(_)
        ));
        let (ledger, _) = load(&store).await.unwrap().unwrap();
        assert_eq!(ledger.counted[DEFAULT_POOL], 2, "a and seen");
        let kept: Vec<&str> = ledger.reservations.iter().map(|r| r.vm.as_str()).collect();
        assert_eq!(kept, ["unseen"]);
        assert_eq!(ledger.used(), 3);
    }

    #[tokio::test]
    async fn a_count_loses_to_a_place_taken_after_it_read_the_record() {
        let store = MemoryStore::new();
        reserve(&store, "first", &id("first"), t0(), only(10))
            .await
            .unwrap();
        let (_, etag) = load(&store).await.unwrap().unwrap();
        reserve(&store, "second", &id("second"), t0(), only(10))
            .await
            .unwrap();
        // A count that read the record before `second` took its place names a stale version.
        let stale = Ledger::default();
        assert_eq!(
            save(&store, &stale, Some(&etag)).await.unwrap(),
            Written::LostRace
        );
        assert_eq!(load(&store).await.unwrap().unwrap().0.used(), 2);
    }

    #[tokio::test]
    async fn each_pool_keeps_its_own_maximum_under_the_maximum_of_all() {
        let store = MemoryStore::new();
        insert(&store, &row("a", VmState::Running).placed("eu", "1")).await;
        let eu = Limits {
            max: 4,
            pool: "eu",
            pool_max: 2,
        };
        let us = Limits {
            max: 4,
            pool: "us",
            pool_max: 3,
        };
        assert_eq!(
            reserve(&store, "e1", &id("e1"), t0(), eu).await.unwrap(),
            Reserved::Done
        );
        assert_eq!(
            reserve(&store, "e2", &id("e2"), t0(), eu).await.unwrap(),
            Reserved::PoolFull,
            "a and e1 fill eu"
        );
        assert_eq!(
            reserve(&store, "u1", &id("u1"), t0(), us).await.unwrap(),
            Reserved::Done
        );
        assert_eq!(
            reserve(&store, "u2", &id("u2"), t0(), us).await.unwrap(),
            Reserved::Done
        );
        assert_eq!(
            reserve(&store, "u3", &id("u3"), t0(), us).await.unwrap(),
            Reserved::Full,
            "four places in all"
        );
        let listing = store.list(crate::store::Rows::All).await.unwrap();
        recount(&store, &listing, t0()).await.unwrap();
        let (ledger, _) = load(&store).await.unwrap().unwrap();
        assert_eq!((ledger.used_by("eu"), ledger.used_by("us")), (2, 2));
    }
}
