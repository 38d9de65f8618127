//! The circuit breakers on ARM refusals, one per pool (a region out of cores or a size out of
//! quota stops only the pools it serves), shared by CreateVM and the reconciler on every
//! instance: one record of their own in the pool-record table, from pool name to breaker,
//! changed with If-Match on its ETag.
//!
//! A start or create that ARM refuses for capacity (quota, SKU, allocation) or that fails
//! outright counts toward it, whoever issued it. At `VMPOOL_BREAKER_FAILURES` refusals in a
//! row it opens for `VMPOOL_BREAKER_COOLDOWN_SECS`: CreateVM answers `503 CapacityExhausted`
//! at once and the reconciler issues no starts or creates. After the cool-down the next
//! refusal opens it again at once (half-open); a VM that comes up closes it. A refused start
//! also holds every start back for a while (30 s, doubling with each start refused in a row,
//! at most the cool-down), since a region out of cores refuses the next start too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use tracing::warn;

use crate::config::PoolPolicy;
use crate::store::{Etag, StoreError, VmStore, Written, truncate};

/// The kind and key of the breaker's record.
const RECORD: (&str, &str) = ("pool", "breaker");

/// How often a change to the breaker is tried again after losing a race.
const TRIES: usize = 8;

/// The first hold on starts after a refused start; it doubles with each one in a row.
pub const START_BACKOFF: Duration = Duration::seconds(30);

/// What ARM refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A start of a deallocated VM.
    Start,
    /// A create of a new VM.
    Create,
}

/// Every pool's breaker, by pool name (a pool with none has a closed one).
pub type Breakers = BTreeMap<String, Breaker>;

/// One pool's breaker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Breaker {
    /// Starts and creates refused in a row since a VM last came up.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// While set and in the future, no start or create is sent to ARM.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub open_until: Option<OffsetDateTime>,
    /// Why it opened (the last refusal).
    #[serde(default)]
    pub reason: Option<String>,
    /// Starts refused in a row (the hold on starts doubles with each).
    #[serde(default)]
    pub start_refusals: u32,
    /// While set and in the future, no start is sent to ARM.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub starts_held_until: Option<OffsetDateTime>,
}

fn to_time(d: std::time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::MAX)
}

impl Breaker {
    /// Whether starts and creates are stopped at `now`.
    pub fn open_at(&self, now: OffsetDateTime) -> bool {
        self.open_until.is_some_and(|until| until > now)
    }

    /// Whether starts are held back at `now` (the breaker is open, or a start was refused
    /// lately).
    pub fn starts_held_at(&self, now: OffsetDateTime) -> bool {
        self.open_at(now) || self.starts_held_until.is_some_and(|until| until > now)
    }

    /// How long until a start (`start`) or a create may be tried again; zero if now.
    pub fn wait(&self, start: bool, now: OffsetDateTime) -> std::time::Duration {
        let mut until = self.open_until;
        if start {
            until = until.max(self.starts_held_until);
        }
        until
            .map(|u| u - now)
            .filter(|d| d.is_positive())
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .unwrap_or_default()
    }

    /// ARM refused a start or create: counts toward the breaker, which opens at the
    /// configured number in a row; a refused start also holds starts back.
    pub fn refused(
        &mut self,
        what: Refused,
        error: &str,
        now: OffsetDateTime,
        policy: &PoolPolicy,
    ) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let cooldown = to_time(policy.breaker_cooldown);
        if what == Refused::Start {
            self.start_refusals = self.start_refusals.saturating_add(1);
            let doublings = self.start_refusals.saturating_sub(1).min(16);
            let hold = (START_BACKOFF * 2_i32.pow(doublings)).min(cooldown);
            self.starts_held_until = Some(now + hold);
        }
        if !self.open_at(now) && self.consecutive_failures >= policy.breaker_failures {
            self.open_until = Some(now + cooldown);
            self.reason = Some(truncate(&format!(
                "{} starts or creates refused in a row; last: {error}",
                self.consecutive_failures
            )));
        }
    }

    /// A VM came up: the breaker closes and starts are no longer held.
    pub fn succeeded(&mut self) {
        *self = Breaker::default();
    }

    /// Whether there is anything to close.
    pub fn is_clear(&self) -> bool {
        *self == Breaker::default()
    }
}

/// The pools' breakers as stored, and the version a conditional write must name (`None`:
/// not written yet). A record written when there was one breaker for the one pool is that of
/// the pool `default`. An unreadable record counts as closed breakers, with a warning.
pub async fn load(store: &dyn VmStore) -> Result<(Breakers, Option<Etag>), StoreError> {
    let Some(record) = store.get_record(RECORD.0, RECORD.1).await? else {
        return Ok((Breakers::new(), None));
    };
    let breakers = serde_json::from_str::<Breakers>(&record.value)
        .or_else(|_| {
            serde_json::from_str::<Breaker>(&record.value)
                .map(|one| Breakers::from([(crate::domain::DEFAULT_POOL.to_owned(), one)]))
        })
        .unwrap_or_else(|e| {
            warn!(error = %e, "the breakers' record is unreadable; counting them as closed");
            Breakers::new()
        });
    Ok((breakers, Some(record.etag)))
}

/// Changes the stored breaker of `pool` with `change`, conditionally on the record's ETag,
/// reading it again after a lost race; returns that breaker as written. Nothing is written
/// when `change` leaves it as it was.
pub async fn update(
    store: &dyn VmStore,
    pool: &str,
    change: impl Fn(&mut Breaker),
) -> Result<Breaker, StoreError> {
    for _ in 0..TRIES {
        let (mut breakers, etag) = load(store).await?;
        let breaker = breakers.entry(pool.to_owned()).or_default();
        let before = breaker.clone();
        change(breaker);
        let after = breaker.clone();
        if after == before {
            return Ok(after);
        }
        breakers.retain(|_, b| !b.is_clear());
        let value = serde_json::to_string(&breakers)
            .map_err(|e| StoreError::Rejected(format!("breaker record: {e}")))?;
        let written = match &etag {
            Some(etag) => {
                store
                    .update_record(RECORD.0, RECORD.1, &value, etag)
                    .await?
            }
            None => store.insert_record(RECORD.0, RECORD.1, &value).await?,
        };
        if let Written::Done(_) = written {
            return Ok(after);
        }
    }
    Err(StoreError::Unavailable(
        "the breakers' record kept changing under other writers".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00 UTC)
    }

    #[test]
    fn refusals_open_it_and_refused_starts_hold_starts_back_longer_each_time() {
        let policy = PoolPolicy {
            breaker_failures: 3,
            ..PoolPolicy::default()
        };
        let mut b = Breaker::default();
        b.refused(Refused::Start, "OperationNotAllowed", t0(), &policy);
        assert!(!b.open_at(t0()));
        assert!(b.starts_held_at(t0() + Duration::seconds(29)));
        assert!(!b.starts_held_at(t0() + Duration::seconds(30)));
        assert_eq!(b.wait(true, t0()), std::time::Duration::from_secs(30));
        assert_eq!(b.wait(false, t0()), std::time::Duration::ZERO);
        b.refused(Refused::Start, "AllocationFailed", t0(), &policy);
        assert!(b.starts_held_at(t0() + Duration::seconds(59)));
        b.refused(Refused::Create, "OperationNotAllowed", t0(), &policy);
        assert!(b.open_at(t0()));
        assert!(b.reason.as_deref().unwrap().contains("3 starts or creates"));
        // After the cool-down one more refusal opens it again.
        let later = t0() + Duration::seconds(601);
        assert!(!b.open_at(later));
        b.refused(Refused::Create, "OperationNotAllowed", later, &policy);
        assert!(b.open_at(later));
        b.succeeded();
        assert!(b.is_clear() && !b.starts_held_at(later));
    }

    #[tokio::test]
    async fn updates_are_conditional_and_shared() {
        let store = MemoryStore::new();
        let policy = PoolPolicy {
            breaker_failures: 2,
            ..PoolPolicy::default()
        };
        let refuse = |b: &mut Breaker| b.refused(Refused::Create, "quota", t0(), &policy);
        let (a, b, c) = tokio::join!(
            update(&store, "eu", refuse),
            update(&store, "eu", refuse),
            update(&store, "us", refuse)
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        let (stored, _) = load(&store).await.unwrap();
        assert_eq!(stored["eu"].consecutive_failures, 2, "both counted");
        assert!(stored["eu"].open_at(t0()));
        assert!(!stored["us"].open_at(t0()), "each pool has its own");
        update(&store, "eu", Breaker::succeeded).await.unwrap();
        let (stored, _) = load(&store).await.unwrap();
        assert!(!stored.contains_key("eu") && stored["us"].consecutive_failures == 1);
    }

    #[tokio::test]
    async fn a_record_of_the_one_breaker_before_pools_is_the_default_pools() {
        let store = MemoryStore::new();
        let one =
            r#"{"consecutiveFailures":3,"openUntil":"2026-01-01T00:10:00Z","reason":"quota"}"#;
        store.insert_record("pool", "breaker", one).await.unwrap();
        let (stored, _) = load(&store).await.unwrap();
        assert!(stored["default"].open_at(t0()));
        assert_eq!(stored.len(), 1);
    }
}
