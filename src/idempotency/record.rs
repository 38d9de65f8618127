//! An idempotency key's record in the pool's own records (kind [`KIND`], the key as its key):
//! written `pending` before the VM is claimed, `done` with the VM and action once CreateVM
//! has answered, removed when the attempt failed. Every write is conditional on the record's
//! ETag, so of any number of concurrent requests with one key, on any number of instances,
//! exactly one holds it at a time.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{debug, warn};

use super::IdempotencyKey;
use crate::clock::Clock;
use crate::domain::{CreateAction, VmId};
use crate::store::{Etag, StoreError, VmStore, Written};

/// The record kind of idempotency keys.
pub const KIND: &str = "idempotency";

/// How often a request waits between two reads of a key another request holds.
const POLL: Duration = Duration::from_millis(200);

/// What a key's record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
enum Entry {
    /// A request holds the key and is claiming a VM since `since`.
    #[serde(rename_all = "camelCase")]
    Pending {
        #[serde(with = "time::serde::rfc3339")]
        since: OffsetDateTime,
    },
    /// CreateVM answered with this VM and action at `at`.
    #[serde(rename_all = "camelCase")]
    Done {
        vm_id: VmId,
        action: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl Entry {
    fn json(&self) -> Result<String, StoreError> {
        serde_json::to_string(self).map_err(|e| StoreError::Rejected(format!("key record: {e}")))
    }

    /// Whether the record no longer binds its key at `now`: an answer past its TTL, or a
    /// holder past the take-over age (it died).
    fn expired(&self, now: OffsetDateTime, rules: Rules) -> bool {
        match self {
            Entry::Done { at, .. } => now >= *at + rules.ttl,
            Entry::Pending { since } => now >= *since + rules.take_over_after,
        }
    }
}

/// Whether the key record `value` is past its time at `now` under `rules` (what [`begin`]
/// would take over for that reason), so removing it changes no answer. A record that cannot
/// be read is not judged expired: it is left alone.
pub fn is_expired(value: &str, now: OffsetDateTime, rules: Rules) -> bool {
    serde_json::from_str::<Entry>(value).is_ok_and(|entry| entry.expired(now, rules))
}

/// The rules a key's record follows.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A `done` record answers for this long (`VMPOOL_IDEMPOTENCY_TTL_SECS`).
    pub ttl: Duration,
    /// A `pending` record older than this belongs to a request that died (CreateVM's own
    /// deadline): another request may take the key over.
    pub take_over_after: Duration,
    /// How long a request with a key another request holds waits for its answer.
    pub wait: Duration,
}

/// What [`begin`] found.
#[derive(Debug)]
pub enum Begun {
    /// This request holds the key: claim a VM, then [`finish`] or [`abandon`].
    Holder(Held),
    /// An earlier request with this key answered: the same VM and action.
    Answered {
        /// The VM it handed out.
        vm_id: VmId,
        /// The action it answered with.
        action: CreateAction,
        /// The record's version, to [`forget`] it if the VM is gone.
        etag: Etag,
    },
}

/// A key this request holds.
#[derive(Debug)]
pub struct Held {
    key: IdempotencyKey,
    etag: Etag,
}

/// Why [`begin`] did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Another request with this key is still claiming a VM.
    #[error(
        "another request with this Idempotency-Key is still in progress; retry with the same key"
    )]
    InFlight,
    /// Table storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Takes `key` for this request, or finds what an earlier request with it answered. While
/// another live request holds it, waits up to `rules.wait` for its answer; a record whose
/// holder died (older than `rules.take_over_after`), a `done` record past its TTL, a
/// record that cannot be read, and a key whose holder gave up are taken over.
pub async fn begin(
    store: &dyn VmStore,
    clock: &dyn Clock,
    key: &IdempotencyKey,
    rules: Rules,
) -> Result<Begun, KeyError> {
    let waiting_since = tokio::time::Instant::now();
    let mut rounds = 0u32;
    loop {
        // Every round but the first follows a lost race or a wait: give up past the wait.
        if rounds > 0 && waiting_since.elapsed() >= rules.wait {
            return Err(KeyError::InFlight);
        }
        rounds += 1;
        let now = clock.now();
        let pending = Entry::Pending { since: now }.json()?;
        if let Written::Done(etag) = store.insert_record(KIND, key.as_str(), &pending).await? {
            return Ok(Begun::Holder(Held {
                key: key.clone(),
                etag,
            }));
        }
        let Some(record) = store.get_record(KIND, key.as_str()).await? else {
            // The holder gave up between our insert and our read: try again.
            continue;
        };
        let live = match serde_json::from_str::<Entry>(&record.value) {
            Ok(entry) if entry.expired(now, rules) => false,
            Ok(Entry::Done { vm_id, action, .. }) => {
                // A record keeps the action as its word.
                if let Some(action) = CreateAction::parse(&action) {
                    return Ok(Begun::Answered {
                        vm_id,
                        action,
                        etag: record.etag,
                    });
                }
                false
            }
            Ok(Entry::Pending { .. }) => true,
            Err(e) => {
                warn!(key = %key, error = %e, "unreadable idempotency record; taking it over");
                false
            }
        };
        if live {
            if waiting_since.elapsed() >= rules.wait {
                return Err(KeyError::InFlight);
            }
            tokio::time::sleep(POLL.min(rules.wait.saturating_sub(waiting_since.elapsed()))).await;
            continue;
        }
        if let Written::Done(etag) = store
            .update_record(KIND, key.as_str(), &pending, &record.etag)
            .await?
        {
            debug!(key = %key, "took over an expired or abandoned idempotency key");
            return Ok(Begun::Holder(Held {
                key: key.clone(),
                etag,
            }));
        }
    }
}

/// Records what CreateVM answered, so later requests with the key get the same VM. A failure
/// here is logged: the caller still gets its VM, and the key is taken over after the
/// deadline.
pub async fn finish(
    store: &dyn VmStore,
    held: Held,
    vm_id: &VmId,
    action: CreateAction,
    at: OffsetDateTime,
) {
    let done = Entry::Done {
        vm_id: vm_id.clone(),
        action: action.as_str().to_owned(),
        at,
    };
    let written = match done.json() {
        Ok(value) => {
            store
                .update_record(KIND, held.key.as_str(), &value, &held.etag)
                .await
        }
        Err(e) => Err(e),
    };
    match written {
        Ok(Written::Done(_)) => {}
        Ok(Written::LostRace) => {
            warn!(key = %held.key, vm.id = %vm_id, "the idempotency key was taken over before CreateVM answered");
        }
        Err(e) => {
            warn!(key = %held.key, vm.id = %vm_id, error = %e, "could not record the idempotency key's answer")
        }
    }
}

/// The attempt failed: the key is released, so a retry with it tries again.
pub async fn abandon(store: &dyn VmStore, held: Held) {
    if let Err(e) = store
        .delete_record(KIND, held.key.as_str(), &held.etag)
        .await
    {
        warn!(key = %held.key, error = %e, "could not release the idempotency key; it is taken over after the deadline");
    }
}

/// Forgets an answer whose VM no longer exists, so the key can be used again.
pub async fn forget(
    store: &dyn VmStore,
    key: &IdempotencyKey,
    etag: &Etag,
) -> Result<(), StoreError> {
    store
        .delete_record(KIND, key.as_str(), etag)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::memory::MemoryStore;

    fn rules() -> Rules {
        Rules {
            ttl: Duration::from_secs(3600),
            take_over_after: Duration::from_secs(120),
            wait: Duration::ZERO,
        }
    }

    fn vm(name: &str) -> VmId {
        VmId::parse(name).unwrap()
    }

    #[tokio::test]
    async fn a_key_is_held_once_then_answers_until_its_ttl() {
        let store = MemoryStore::new();
        let clock = ManualClock::default();
        let key = IdempotencyKey::parse("ticket:1").unwrap();
        let Begun::Holder(held) = begin(&store, &clock, &key, rules()).await.unwrap() else {
            panic!("the first request holds the key")
        };
        assert!(matches!(
            begin(&store, &clock, &key, rules()).await,
            Err(KeyError::InFlight)
        ));
        finish(
            &store,
            held,
            &vm("vm-1"),
            CreateAction::Created,
            clock.now(),
        )
        .await;
        clock.advance(time::Duration::minutes(59));
        match begin(&store, &clock, &key, rules()).await.unwrap() {
            Begun::Answered { vm_id, action, .. } => {
                assert_eq!((vm_id, action), (vm("vm-1"), CreateAction::Created))
            }
            other => panic!("{other:?}"),
        }
        clock.advance(time::Duration::minutes(2));
        assert!(
            matches!(
                begin(&store, &clock, &key, rules()).await.unwrap(),
                Begun::Holder(_)
            ),
            "past the TTL the key is new"
        );
    }

    #[tokio::test]
    async fn a_failed_attempt_or_a_dead_holder_frees_the_key() {
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::default();
        let key = IdempotencyKey::parse("k").unwrap();
        let Begun::Holder(held) = begin(&*store, &clock, &key, rules()).await.unwrap() else {
            panic!()
        };
        abandon(&*store, held).await;
        let Begun::Holder(_dies) = begin(&*store, &clock, &key, rules()).await.unwrap() else {
            panic!("a retry after a failure tries again")
        };
        clock.advance(time::Duration::seconds(119));
        assert!(matches!(
            begin(&*store, &clock, &key, rules()).await,
            Err(KeyError::InFlight)
        ));
        clock.advance(time::Duration::seconds(2));
        assert!(
            matches!(
                begin(&*store, &clock, &key, rules()).await.unwrap(),
                Begun::Holder(_)
            ),
            "a holder past the deadline is taken over"
        );
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_holders_answer() {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::default());
        let key = IdempotencyKey::parse("k").unwrap();
        let Begun::Holder(held) = begin(&*store, &*clock, &key, rules()).await.unwrap() else {
            panic!()
        };
        let waiting = {
            let (store, clock, key) = (store.clone(), clock.clone(), key.clone());
            tokio::spawn(async move {
                let waits = Rules {
                    wait: Duration::from_secs(30),
                    ..rules()
                };
                begin(&*store, &*clock, &key, waits).await
            })
        };
        finish(
            &*store,
            held,
            &vm("vm-2"),
            CreateAction::Standby,
            clock.now(),
        )
        .await;
        match waiting.await.unwrap().unwrap() {
            Begun::Answered { vm_id, action, .. } => {
                assert_eq!((vm_id, action), (vm("vm-2"), CreateAction::Standby))
            }
            other => panic!("{other:?}"),
        }
    }
}
