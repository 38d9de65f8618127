//! The reconciler's own records in the pool-record table: [`PoolMeta`] (buffer target,
//! breaker, last pass, observation) written with If-Match on its ETag, and the [`Lease`]
//! that lets one instance at a time run a pass.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use tracing::warn;

use std::collections::BTreeMap;

use super::Summary;
use super::forecast::ClaimHistory;
use crate::breaker::{self, Breaker, Breakers};
use crate::config::PoolSpec;
use crate::store::{
    Etag, Group, GroupCounts, MAX_RECORD_CHARS, StateCounts, StoreError, VmStore, Written, truncate,
};

/// The kind and key of the pool's record.
const META: (&str, &str) = ("pool", "meta");
/// The kind and key of the reconcile lease.
const LEASE: (&str, &str) = ("lease", "reconcile");

/// What the reconciler remembers about the pools as a whole (not about one VM): kept beside
/// the VM rows so every instance can report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolMeta {
    /// When the last reconcile pass began.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_reconcile_started_at: Option<OffsetDateTime>,
    /// When the last reconcile pass finished.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_reconcile_at: Option<OffsetDateTime>,
    /// Whether the last pass ran to its end (`None`: no pass recorded its result yet).
    #[serde(default)]
    pub last_reconcile_ok: Option<bool>,
    /// Why the last pass could not run, when it failed.
    #[serde(default)]
    pub last_reconcile_error: Option<String>,
    /// When the last pass that ran to its end finished.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_success_at: Option<OffsetDateTime>,
    /// One line on what the last pass did.
    #[serde(default)]
    pub last_reconcile_summary: String,
    /// What the last pass that ran to its end did, figure by figure.
    #[serde(default)]
    pub last_summary: Option<Summary>,
    /// VMs in each state in the last pass's listing.
    #[serde(default)]
    pub counts: Option<StateCounts>,
    /// VMs in each state per pool and build in the last pass's listing.
    #[serde(default)]
    pub groups: Option<Vec<GroupCount>>,
    /// When that listing began.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub counted_at: Option<OffsetDateTime>,
    /// Each pool's circuit breaker (from the breakers' own record, [`crate::breaker`], which
    /// CreateVM changes too; not saved with this record). A pool with none has a closed one.
    #[serde(skip)]
    pub breakers: Breakers,
    /// When the last sweep (power states of every VM, adoption) ran.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_sweep_at: Option<OffsetDateTime>,
    /// Known VMs missing from the last pass's listing while the brake held (0: the view
    /// was trusted).
    #[serde(default)]
    pub vanished: u32,
    /// VMs marked as needing attention (their operation ran out of attempts) as of the last
    /// pass.
    #[serde(default)]
    pub needs_attention: u32,
    /// Unused claims returned to `Standby` by the claim timeout, over the pool's life.
    #[serde(default)]
    pub claims_timed_out: u64,
    /// Why the last pass did not trust ARM's answers for destructive steps: an answer about
    /// the subscription, resource group or access (`ResourceGroupNotFound`, 403...).
    #[serde(default)]
    pub suspect_reason: Option<String>,
    /// VMs that run while ARM says their provisioning failed (unhealthy, kept while a game
    /// may be on them), as of the last pass.
    #[serde(default)]
    pub unhealthy: u32,
    /// Each pool's warm buffer, by pool name.
    #[serde(default)]
    pub pools: BTreeMap<String, BufferState>,
}

/// One pool's warm buffer, as the reconciler keeps it (its circuit breaker is in the
/// breakers' own record: [`crate::breaker`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BufferState {
    /// The warm-buffer target the last pass worked towards.
    #[serde(default)]
    pub buffer_target: u32,
    /// When the buffer target was last raised by demand (the cool-down counts from here).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub target_raised_at: Option<OffsetDateTime>,
    /// The claims expected soon from one period ago (`VMPOOL_DEMAND_PERIOD_SECS`), as of
    /// the last pass: the target is at least this, for as long as it lasts.
    #[serde(default)]
    pub forecast: u32,
    /// When the forecast last asked for more than demand (surplus waits a cool-down from
    /// here too, so standby VMs launched ahead of a burst stay until it has come).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub forecast_at: Option<OffsetDateTime>,
    /// The pool's claims over the last period.
    #[serde(default, skip_serializing_if = "ClaimHistory::is_empty")]
    pub history: ClaimHistory,
}

/// The VMs of one pool and build in each state, as the pool's record keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupCount {
    /// The pool.
    pub pool: String,
    /// The build (`None`: not known yet).
    #[serde(default)]
    pub build: Option<String>,
    /// VMs in each state.
    pub counts: StateCounts,
}

impl PoolMeta {
    /// The warm buffer of `pool` (all clear for a pool not seen yet).
    pub fn pool(&self, pool: &str) -> BufferState {
        self.pools.get(pool).cloned().unwrap_or_default()
    }

    /// The warm buffer of `pool`, to change.
    pub fn pool_mut(&mut self, pool: &str) -> &mut BufferState {
        self.pools.entry(pool.to_owned()).or_default()
    }

    /// The counts per pool and build of the last pass's listing, if it recorded them.
    pub fn recorded_groups(&self) -> Option<GroupCounts> {
        let groups = self.groups.as_ref()?;
        Some(
            groups
                .iter()
                .map(|g| {
                    (
                        Group {
                            pool: g.pool.clone(),
                            build: g.build.clone(),
                        },
                        g.counts.clone(),
                    )
                })
                .collect(),
        )
    }

    /// Records `groups` as the counts per pool and build (and their total as the counts).
    pub fn record_groups(&mut self, groups: &GroupCounts) {
        self.counts = Some(crate::store::total(groups));
        self.groups = Some(
            groups
                .iter()
                .map(|(g, counts)| GroupCount {
                    pool: g.pool.clone(),
                    build: g.build.clone(),
                    counts: counts.clone(),
                })
                .collect(),
        );
    }

    /// The circuit breaker of `pool` (closed if it has none).
    pub fn breaker(&self, pool: &str) -> Breaker {
        self.breakers.get(pool).cloned().unwrap_or_default()
    }

    /// Whether the circuit breaker of `pool` stops its starts and creates at `now`.
    pub fn breaker_open_at(&self, pool: &str, now: OffsetDateTime) -> bool {
        self.breakers.get(pool).is_some_and(|b| b.open_at(now))
    }

    /// Whether the starts of `pool` are held back at `now` (its breaker is open, or a start
    /// was refused lately).
    pub fn starts_held_at(&self, pool: &str, now: OffsetDateTime) -> bool {
        self.breakers
            .get(pool)
            .is_some_and(|b| b.starts_held_at(now))
    }

    /// Takes the breakers' state from their own record.
    pub fn with_breakers(mut self, breakers: Breakers) -> Self {
        self.breakers = breakers;
        self
    }

    /// Whether the last pass held the brake on mass disappearance, or took no destructive
    /// step because ARM answered about scope or access.
    pub fn observation_suspect(&self) -> bool {
        self.vanished > 0 || self.suspect_reason.is_some()
    }
}

impl BufferState {
    /// The buffer target in force: what the last pass worked towards, never under the
    /// pool's floor nor over its maximum.
    pub fn effective_buffer_target(&self, spec: &PoolSpec) -> u32 {
        self.buffer_target
            .max(self.forecast)
            .max(spec.min_standby)
            .min(spec.max_vms)
    }
}

/// The pool's record, with the breakers' state from their own record, and the
/// version a conditional write must name (`None`: not written yet). A record that cannot be
/// read (written by an older version) counts as absent, with a warning, and is replaced on
/// the next save.
pub async fn load_meta(store: &dyn VmStore) -> Result<(PoolMeta, Option<Etag>), StoreError> {
    let (record, (breakers, _)) =
        tokio::try_join!(store.get_record(META.0, META.1), breaker::load(store))?;
    let Some(record) = record else {
        return Ok((PoolMeta::default().with_breakers(breakers), None));
    };
    match serde_json::from_str::<PoolMeta>(&record.value) {
        Ok(meta) => Ok((meta.with_breakers(breakers), Some(record.etag))),
        Err(e) => {
            warn!(error = %e, "the pool's record is unreadable; starting afresh");
            Ok((
                PoolMeta::default().with_breakers(breakers),
                Some(record.etag),
            ))
        }
    }
}

/// Writes the pool's record if it is still at `etag` (inserts it when `etag` is `None`):
/// [`Written::LostRace`] if another writer changed it since it was read.
pub async fn save_meta(
    store: &dyn VmStore,
    meta: &PoolMeta,
    etag: Option<&Etag>,
) -> Result<Written, StoreError> {
    let mut meta = meta.clone();
    meta.last_reconcile_summary = truncate(&meta.last_reconcile_summary);
    meta.last_reconcile_error = meta.last_reconcile_error.as_deref().map(truncate);
    let text = |meta: &PoolMeta| {
        serde_json::to_string(meta).map_err(|e| StoreError::Rejected(format!("pool record: {e}")))
    };
    let mut value = text(&meta)?;
    if value.chars().count() > MAX_RECORD_CHARS {
        // Many pools with a demand period: the record keeps going without their claim
        // histories, and each pass counts the last period again from the rows' claims.
        warn!(
            chars = value.chars().count(),
            "the pool's record is too long to keep the pools' claim histories; each pass counts them again from the rows"
        );
        for pool in meta.pools.values_mut() {
            pool.history = ClaimHistory::default();
        }
        value = text(&meta)?;
    }
    match etag {
        Some(etag) => store.update_record(META.0, META.1, &value, etag).await,
        None => store.insert_record(META.0, META.1, &value).await,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseValue {
    holder: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

impl LeaseValue {
    /// `holder`'s lease until `now + ttl`, and the text it is stored as.
    fn until(
        holder: &str,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<(LeaseValue, String), StoreError> {
        let value = LeaseValue {
            holder: holder.to_owned(),
            expires_at: now + ttl,
        };
        let text = serde_json::to_string(&value)
            .map_err(|e| StoreError::Rejected(format!("lease: {e}")))?;
        Ok((value, text))
    }
}

/// The reconcile lease as this instance holds it.
#[derive(Debug, Clone)]
pub struct Lease {
    etag: Etag,
    /// When it runs out unless renewed.
    pub expires_at: OffsetDateTime,
}

impl Lease {
    /// The lease held once `value` was `written`: `None` if the write lost a race.
    fn written(written: Written, value: &LeaseValue) -> Option<Lease> {
        match written {
            Written::Done(etag) => Some(Lease {
                etag,
                expires_at: value.expires_at,
            }),
            Written::LostRace => None,
        }
    }
}

/// Takes or renews the lease for `holder` until `now + ttl`: it is free (absent, expired) or
/// already `holder`'s. `None` when another holder has it, or won the race for it.
pub async fn acquire_lease(
    store: &dyn VmStore,
    holder: &str,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<Option<Lease>, StoreError> {
    let (value, text) = LeaseValue::until(holder, now, ttl)?;
    let written = match store.get_record(LEASE.0, LEASE.1).await? {
        None => store.insert_record(LEASE.0, LEASE.1, &text).await?,
        Some(record) => {
            let held = serde_json::from_str::<LeaseValue>(&record.value).ok();
            let free = held
                .as_ref()
                .is_none_or(|l| l.holder == holder || l.expires_at <= now);
            if !free {
                return Ok(None);
            }
            store
                .update_record(LEASE.0, LEASE.1, &text, &record.etag)
                .await?
        }
    };
    Ok(Lease::written(written, &value))
}

/// Renews a held lease, conditionally on its ETag: `None` if it was lost meanwhile.
pub async fn renew_lease(
    store: &dyn VmStore,
    holder: &str,
    lease: &Lease,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<Option<Lease>, StoreError> {
    let (value, text) = LeaseValue::until(holder, now, ttl)?;
    let written = store
        .update_record(LEASE.0, LEASE.1, &text, &lease.etag)
        .await?;
    Ok(Lease::written(written, &value))
}

/// Gives up `holder`'s lease at `now` (a graceful stop), so another instance takes the next
/// pass at once rather than after the lease runs out: it is marked run out, conditionally on
/// its ETag. True if it was `holder`'s and is now free; a lease of another holder, or one
/// changed meanwhile, is left as it is.
pub async fn release_lease(
    store: &dyn VmStore,
    holder: &str,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let Some(record) = store.get_record(LEASE.0, LEASE.1).await? else {
        return Ok(false);
    };
    let held = serde_json::from_str::<LeaseValue>(&record.value).ok();
    if !held.is_some_and(|l| l.holder == holder && l.expires_at > now) {
        return Ok(false);
    }
    let (_, text) = LeaseValue::until(holder, now, Duration::ZERO)?;
    let written = store
        .update_record(LEASE.0, LEASE.1, &text, &record.etag)
        .await?;
    Ok(matches!(written, Written::Done(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn a_released_lease_is_free_at_once_and_only_its_holder_releases_it() {
        let store = MemoryStore::new();
        let ttl = Duration::seconds(60);
        acquire_lease(&store, "a", t0(), ttl)
            .await
            .unwrap()
            .unwrap();
        assert!(!release_lease(&store, "b", t0()).await.unwrap());
        assert!(
            acquire_lease(&store, "b", t0(), ttl)
                .await
                .unwrap()
                .is_none()
        );
        assert!(release_lease(&store, "a", t0()).await.unwrap());
        assert!(
            acquire_lease(&store, "b", t0(), ttl)
                .await
                .unwrap()
                .is_some()
        );
        assert!(!release_lease(&store, "a", t0()).await.unwrap(), "b's now");
    }

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00 UTC)
    }

    /// Pools enough that their claim histories would take the record over what a record
    /// keeps: it is saved without them, and the rest of it is kept.
    #[tokio::test]
    async fn a_record_too_long_for_the_claim_histories_is_saved_without_them() {
        let store = MemoryStore::new();
        let history = ClaimHistory {
            period_secs: 86_400,
            counted_until: Some(t0()),
            counts: vec![1234; super::super::forecast::SLOTS],
        };
        let mut meta = PoolMeta::default();
        for i in 0..60 {
            let pool = meta.pool_mut(&format!("pool-{i}"));
            pool.buffer_target = 3;
            pool.history = history.clone();
        }
        assert!(serde_json::to_string(&meta).unwrap().len() > MAX_RECORD_CHARS);
        save_meta(&store, &meta, None).await.unwrap();
        let (saved, etag) = load_meta(&store).await.unwrap();
        assert_eq!(saved.pools.len(), 60);
        assert!(saved.pools.values().all(|p| p.buffer_target == 3));
        assert!(saved.pools.values().all(|p| p.history.is_empty()));
        // A few pools keep theirs.
        let mut few = PoolMeta::default();
        few.pool_mut("eu").history = history.clone();
        save_meta(&store, &few, etag.as_ref()).await.unwrap();
        assert_eq!(
            load_meta(&store).await.unwrap().0.pool("eu").history,
            history
        );
    }

    #[tokio::test]
    async fn one_holder_at_a_time_until_the_lease_expires() {
        let store = MemoryStore::new();
        let ttl = Duration::seconds(30);
        let a = acquire_lease(&store, "a", t0(), ttl)
            .await
            .unwrap()
            .unwrap();
        assert!(
            acquire_lease(&store, "b", t0(), ttl)
                .await
                .unwrap()
                .is_none()
        );
        // Renewed by its holder, still refused to the other.
        let a = renew_lease(&store, "a", &a, t0() + Duration::seconds(20), ttl)
            .await
            .unwrap()
            .unwrap();
        assert!(
            acquire_lease(&store, "b", t0() + Duration::seconds(40), ttl)
                .await
                .unwrap()
                .is_none()
        );
        // Expired: the other takes it, and the old holder's renewal loses.
        let b = acquire_lease(&store, "b", t0() + Duration::seconds(51), ttl)
            .await
            .unwrap();
        assert!(b.is_some());
        assert!(
            renew_lease(&store, "a", &a, t0() + Duration::seconds(52), ttl)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_pool_record_is_written_with_if_match() {
        let store = MemoryStore::new();
        let (meta, etag) = load_meta(&store).await.unwrap();
        assert_eq!((meta.clone(), etag.clone()), (PoolMeta::default(), None));
        let mut next = meta;
        next.pool_mut("eu").buffer_target = 3;
        let Written::Done(first) = save_meta(&store, &next, None).await.unwrap() else {
            panic!("first write")
        };
        // A second writer that read before the first wrote loses.
        assert_eq!(
            save_meta(&store, &next, None).await.unwrap(),
            Written::LostRace
        );
        assert!(matches!(
            save_meta(&store, &next, Some(&first)).await.unwrap(),
            Written::Done(_)
        ));
        assert_eq!(
            save_meta(&store, &next, Some(&first)).await.unwrap(),
            Written::LostRace
        );
        let loaded = load_meta(&store).await.unwrap().0;
        assert_eq!(
            (
                loaded.pool("eu").buffer_target,
                loaded.pool("us").buffer_target
            ),
            (3, 0)
        );
    }

    #[test]
    fn the_effective_target_stays_between_the_floor_and_the_maximum() {
        let spec = PoolSpec {
            min_standby: 2,
            max_vms: 5,
            ..crate::config::PoolPolicy::default().pools.all()[0].clone()
        };
        let at = |t| {
            BufferState {
                buffer_target: t,
                ..BufferState::default()
            }
            .effective_buffer_target(&spec)
        };
        assert_eq!((at(0), at(3), at(9)), (2, 3, 5));
    }
}
