//! An in-memory VM table that emulates Table Storage's conditional writes faithfully: every
//! write bumps the row's ETag, and a write naming a stale one changes nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;

use super::{
    Continuation, Etag, Page, PageRequest, Record, Rows, StateCounts, StoreError, Versioned,
    VmStore, Written, check_record_key, check_record_value, normalize, zero_counts,
};
use crate::domain::{ClaimKind, VmId, VmRecord};

/// Rows kept in process. Cloning is not offered: share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: Mutex<HashMap<VmId, Versioned>>,
    records: Mutex<HashMap<(String, String), Record>>,
    version: AtomicU64,
    down: AtomicBool,
    writes: AtomicU64,
}

impl MemoryStore {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (or work again), to test how
    /// callers handle an outage.
    pub fn set_unavailable(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// How many writes were attempted (won or lost), to measure contention.
    pub fn write_attempts(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable(
                "the in-memory store is switched off".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn next_etag(&self) -> Etag {
        let n = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        Etag(format!("W/\"{n}\""))
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, Versioned>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> Result<(), StoreError> {
        self.check_up()?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl VmStore for MemoryStore {
    fn describe(&self) -> String {
        "memory (rows are lost when the process stops)".into()
    }

    async fn get(&self, id: &VmId) -> Result<Option<Versioned>, StoreError> {
        self.check_up()?;
        Ok(self.rows().get(id).cloned())
    }

    async fn list(&self, which: Rows<'_>) -> Result<Vec<Versioned>, StoreError> {
        self.check_up()?;
        // In key order, as Table Storage returns a query's entities (by PartitionKey, then
        // RowKey; both are the vmId here).
        let mut rows: Vec<Versioned> = self
            .rows()
            .values()
            .filter(|row| which.selects(row.vm.state))
            .cloned()
            .collect();
        rows.sort_by(|a, b| a.vm.id.as_str().cmp(b.vm.id.as_str()));
        Ok(rows)
    }

    async fn insert(&self, vm: &VmRecord) -> Result<Written, StoreError> {
        self.write()?;
        let vm = &normalize(vm)?;
        let mut rows = self.rows();
        if rows.contains_key(&vm.id) {
            return Ok(Written::LostRace);
        }
        let etag = self.next_etag();
        rows.insert(
            vm.id.clone(),
            Versioned {
                vm: vm.clone(),
                etag: etag.clone(),
            },
        );
        Ok(Written::Done(etag))
    }

    async fn update(&self, vm: &VmRecord, etag: &Etag) -> Result<Written, StoreError> {
        self.write()?;
        let vm = &normalize(vm)?;
        let mut rows = self.rows();
        match rows.get_mut(&vm.id) {
            Some(row) if row.etag == *etag => {
                let etag = self.next_etag();
                *row = Versioned {
                    vm: vm.clone(),
                    etag: etag.clone(),
                };
                Ok(Written::Done(etag))
            }
            _ => Ok(Written::LostRace),
        }
    }

    async fn delete(&self, id: &VmId, etag: &Etag) -> Result<Written, StoreError> {
        self.write()?;
        let mut rows = self.rows();
        match rows.get(id) {
            Some(row) if row.etag == *etag => {
                rows.remove(id);
                Ok(Written::Done(etag.clone()))
            }
            _ => Ok(Written::LostRace),
        }
    }

    async fn list_page(
        &self,
        which: Rows<'_>,
        page: &PageRequest,
    ) -> Result<Page<Versioned>, StoreError> {
        let mut rows = self.list(which).await?;
        rows.sort_by(|a, b| a.vm.id.cmp(&b.vm.id));
        let start = page.after.as_ref().map_or(0, |after| {
            rows.partition_point(|r| r.vm.id.as_str() < after.partition_key.as_str())
        });
        let mut items: Vec<Versioned> = rows.into_iter().skip(start).collect();
        let next = items.get(page.limit).map(|r| Continuation {
            partition_key: r.vm.id.as_str().to_owned(),
            row_key: Some(r.vm.id.as_str().to_owned()),
        });
        items.truncate(page.limit);
        Ok(Page { items, next })
    }

    async fn sample(
        &self,
        kind: ClaimKind,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Versioned>, StoreError> {
        let states = [kind.state()];
        let mut rows: Vec<Versioned> = self
            .list(Rows::InStates(&states))
            .await?
            .into_iter()
            .filter(|r| ClaimKind::of(&r.vm) == Some(kind))
            .collect();
        rows.sort_by(|a, b| a.vm.id.cmp(&b.vm.id));
        // From the first key after `after`, then from the start: what a key-range query
        // and its wrap-round answer.
        let split = rows.partition_point(|r| r.vm.id.as_str() <= after);
        rows.rotate_left(split);
        rows.truncate(limit);
        Ok(rows)
    }

    async fn count_states(&self) -> Result<StateCounts, StoreError> {
        let mut counts = zero_counts();
        for row in self.list(Rows::All).await? {
            *counts.entry(row.vm.state).or_default() += 1;
        }
        Ok(counts)
    }

    /// Memory keeps no index: nothing to repair.
    async fn repair_index(&self, _rows: &[Versioned]) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn get_record(&self, kind: &str, key: &str) -> Result<Option<Record>, StoreError> {
        self.check_up()?;
        check_keys(kind, key)?;
        Ok(self
            .records()
            .get(&(kind.to_owned(), key.to_owned()))
            .cloned())
    }

    async fn insert_record(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<Written, StoreError> {
        self.write()?;
        check_keys(kind, key)?;
        check_record_value(value)?;
        let mut records = self.records();
        let slot = (kind.to_owned(), key.to_owned());
        if records.contains_key(&slot) {
            return Ok(Written::LostRace);
        }
        let etag = self.next_etag();
        records.insert(
            slot,
            Record {
                value: value.to_owned(),
                etag: etag.clone(),
            },
        );
        Ok(Written::Done(etag))
    }

    async fn update_record(
        &self,
        kind: &str,
        key: &str,
        value: &str,
        etag: &Etag,
    ) -> Result<Written, StoreError> {
        self.write()?;
        check_keys(kind, key)?;
        check_record_value(value)?;
        let mut records = self.records();
        match records.get_mut(&(kind.to_owned(), key.to_owned())) {
            Some(record) if record.etag == *etag => {
                let etag = self.next_etag();
                *record = Record {
                    value: value.to_owned(),
                    etag: etag.clone(),
                };
                Ok(Written::Done(etag))
            }
            _ => Ok(Written::LostRace),
        }
    }

    async fn list_records(
        &self,
        kind: &str,
        page: &PageRequest,
    ) -> Result<Page<(String, Record)>, StoreError> {
        self.check_up()?;
        check_record_key("kind", kind)?;
        let mut items: Vec<(String, Record)> = self
            .records()
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|((_, key), record)| (key.clone(), record.clone()))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        // As Table Storage does, the continuation names the first key not yet returned.
        let start = page.after.as_ref().map_or(0, |after| {
            let from = after.row_key.as_deref().unwrap_or_default();
            items.partition_point(|(key, _)| key.as_str() < from)
        });
        let mut items: Vec<(String, Record)> = items.into_iter().skip(start).collect();
        let next = items.get(page.limit).map(|(key, _)| Continuation {
            partition_key: kind.to_owned(),
            row_key: Some(key.clone()),
        });
        items.truncate(page.limit);
        Ok(Page { items, next })
    }

    async fn delete_record(
        &self,
        kind: &str,
        key: &str,
        etag: &Etag,
    ) -> Result<Written, StoreError> {
        self.write()?;
        check_keys(kind, key)?;
        let mut records = self.records();
        let slot = (kind.to_owned(), key.to_owned());
        match records.get(&slot) {
            Some(record) if record.etag == *etag => {
                records.remove(&slot);
                Ok(Written::Done(etag.clone()))
            }
            _ => Ok(Written::LostRace),
        }
    }
}

fn check_keys(kind: &str, key: &str) -> Result<(), StoreError> {
    check_record_key("kind", kind)?;
    check_record_key("key", key)
}
