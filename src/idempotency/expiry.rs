//! Removing key records past their time, so the table does not grow with every key ever
//! used. The reconciler calls [`remove_expired`] once a pass; each call reads a bounded
//! number of pages of the key records, resuming where the last call stopped and starting
//! over at the end, and deletes those [`record::is_expired`] judges past their time. Every
//! delete names the ETag it read: a key used again since (rewritten by a request) is left.

use std::sync::Mutex;

use time::OffsetDateTime;
use tracing::{debug, warn};

use super::record::{self, KIND, Rules};
use crate::store::{
    Continuation, PageRequest, StoreError, VmStore, WRITE_CONCURRENCY, Written, run_bounded,
};

/// Key records read per page.
pub const PAGE: usize = 250;
/// Pages read per call: at most `PAGE * PAGES_PER_PASS` records read and deleted per pass.
pub const PAGES_PER_PASS: usize = 4;

/// Where the next call resumes reading the key records (in this process; a new process, or
/// another instance taking over the reconciler, starts from the first key).
#[derive(Debug, Default)]
pub struct Cursor(Mutex<Option<Continuation>>);

impl Cursor {
    fn get(&self) -> Option<Continuation> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, next: Option<Continuation>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = next;
    }
}

/// What one call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Key records deleted.
    pub removed: u32,
    /// Key records rewritten between the read and the delete (used again): left alone.
    pub lost_races: u32,
    /// Deletes that failed (storage faults); the record is looked at again next round.
    pub errors: u32,
}

/// Reads up to [`PAGES_PER_PASS`] pages of key records from `cursor` and deletes those
/// past their time at `now`, conditionally on the ETag read. Fails only if the first page
/// cannot be read; a later page that cannot be read ends the call with what was done (one
/// more error). Either way the cursor stays at the page not read.
pub async fn remove_expired(
    store: &dyn VmStore,
    now: OffsetDateTime,
    rules: Rules,
    cursor: &Cursor,
) -> Result<Removed, StoreError> {
    let mut done = Removed::default();
    for read in 0..PAGES_PER_PASS {
        let request = PageRequest {
            limit: PAGE,
            after: cursor.get(),
        };
        let page = match store.list_records(KIND, &request).await {
            Ok(page) => page,
            // What earlier pages removed is still reported; the next call resumes here.
            Err(e) if read > 0 => {
                warn!(error = %e, "could not read more idempotency keys; the next pass resumes here");
                done.errors += 1;
                break;
            }
            Err(e) => return Err(e),
        };
        let expired = page
            .items
            .into_iter()
            .filter(|(_, r)| record::is_expired(&r.value, now, rules));
        let outcomes = run_bounded(
            expired.map(|(key, r)| async move {
                let outcome = store.delete_record(KIND, &key, &r.etag).await;
                (key, outcome)
            }),
            WRITE_CONCURRENCY,
        )
        .await;
        for (key, outcome) in outcomes {
            match outcome {
                Ok(Written::Done(_)) => {
                    debug!(key, "expired idempotency key removed");
                    done.removed += 1;
                }
                Ok(Written::LostRace) => done.lost_races += 1,
                Err(e) => {
                    warn!(key, error = %e, "could not remove an expired idempotency key; tried again later");
                    done.errors += 1;
                }
            }
        }
        let last = page.next.is_none();
        cursor.set(page.next);
        if last {
            break;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::macros::datetime;

    use super::*;
    use crate::store::memory::MemoryStore;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn rules() -> Rules {
        Rules {
            ttl: Duration::from_secs(3600),
            take_over_after: Duration::from_secs(120),
            wait: Duration::ZERO,
        }
    }

    fn done_at(at: OffsetDateTime) -> String {
        serde_json::json!({"status": "done", "vmId": "vm-1", "action": "created", "at": at.format(&time::format_description::well_known::Rfc3339).unwrap()}).to_string()
    }

    fn pending_since(since: OffsetDateTime) -> String {
        serde_json::json!({"status": "pending", "since": since.format(&time::format_description::well_known::Rfc3339).unwrap()}).to_string()
    }

    async fn keys(store: &MemoryStore) -> Vec<String> {
        let page = PageRequest {
            limit: 1000,
            after: None,
        };
        let page = store.list_records(KIND, &page).await.unwrap();
        page.items.into_iter().map(|(k, _)| k).collect()
    }

    #[tokio::test]
    async fn only_records_past_their_time_are_removed() {
        let store = MemoryStore::new();
        let now = T0 + time::Duration::hours(2);
        for (key, value) in [
            ("answered-long-ago", done_at(T0)),
            (
                "answered-at-the-ttl",
                done_at(now - time::Duration::hours(1)),
            ),
            (
                "answered-recently",
                done_at(now - time::Duration::minutes(59)),
            ),
            (
                "holder-died",
                pending_since(now - time::Duration::seconds(120)),
            ),
            (
                "holder-working",
                pending_since(now - time::Duration::seconds(119)),
            ),
            ("unreadable", "not a key record".to_owned()),
        ] {
            store.insert_record(KIND, key, &value).await.unwrap();
        }
        store
            .insert_record("lease", "old", &done_at(T0))
            .await
            .unwrap();
        let done = remove_expired(&store, now, rules(), &Cursor::default())
            .await
            .unwrap();
        assert_eq!(
            done,
            Removed {
                removed: 3,
                ..Removed::default()
            }
        );
        assert_eq!(
            keys(&store).await,
            ["answered-recently", "holder-working", "unreadable"]
        );
        assert!(
            store.get_record("lease", "old").await.unwrap().is_some(),
            "other kinds are not touched"
        );
    }

    #[tokio::test]
    async fn each_call_reads_a_bounded_number_of_pages_and_resumes_where_it_stopped() {
        let store = MemoryStore::new();
        let per_call = PAGE * PAGES_PER_PASS;
        // Expired keys after live ones, so a call that always started over would never
        // reach them.
        for i in 0..per_call {
            store
                .insert_record(
                    KIND,
                    &format!("a{i:05}"),
                    &done_at(T0 + time::Duration::hours(2)),
                )
                .await
                .unwrap();
        }
        for i in 0..per_call + 10 {
            store
                .insert_record(KIND, &format!("b{i:05}"), &done_at(T0))
                .await
                .unwrap();
        }
        let now = T0 + time::Duration::hours(2);
        let cursor = Cursor::default();
        let first = remove_expired(&store, now, rules(), &cursor).await.unwrap();
        assert_eq!(first.removed, 0, "the first call reads only the live keys");
        let second = remove_expired(&store, now, rules(), &cursor).await.unwrap();
        assert_eq!(second.removed as usize, per_call);
        let third = remove_expired(&store, now, rules(), &cursor).await.unwrap();
        assert_eq!(third.removed, 10, "the rest, then the end of the kind");
        assert_eq!(keys(&store).await.len(), per_call);
        store
            .insert_record(KIND, "a-late", &done_at(T0))
            .await
            .unwrap();
        let wrapped = remove_expired(&store, now, rules(), &cursor).await.unwrap();
        assert_eq!(
            wrapped.removed, 1,
            "after the end, the next call starts over"
        );
    }

    #[tokio::test]
    async fn a_failed_read_leaves_the_cursor_and_reports_the_fault() {
        let store = MemoryStore::new();
        store.insert_record(KIND, "k", &done_at(T0)).await.unwrap();
        store.set_unavailable(true);
        let cursor = Cursor::default();
        let now = T0 + time::Duration::hours(2);
        assert!(matches!(
            remove_expired(&store, now, rules(), &cursor).await,
            Err(StoreError::Unavailable(_))
        ));
        store.set_unavailable(false);
        let done = remove_expired(&store, now, rules(), &cursor).await.unwrap();
        assert_eq!(done.removed, 1);
    }
}
