//! The state index: for each state CreateVM looks for ([`INDEXED`]), a table beside the VM
//! table holding one entry per VM in that state, so a claim reads only its candidates instead
//! of scanning every row.
//!
//! An entry is the row's copy, with the row's ETag in `RowEtag`: a listing from the index
//! hands out rows a conditional write can name at once. The VM table stays the system of
//! record; the index is maintained by the same write that changes a row (row first, then
//! index) and may lag it:
//! - a copy older than its row costs a claim one lost race (the row's ETag has moved on);
//! - an entry missing after a crash between the two writes hides that VM from claims until
//!   [`TableStore::repair`] (called by the reconciler every pass) puts it back;
//! - an entry left in the wrong state's table is removed by the same repair.
//!
//! A table per state (rather than a partition per state in one table) keeps a query's cost
//! proportional to the entries of that state on the emulator too, which scans a whole table
//! for any query. Each entry is its own partition (vmId, as in the VM table), because one
//! partition serves about 2,000 entities a second
//! (<https://learn.microsoft.com/azure/storage/tables/scalability-targets>): a partition per
//! state would cap the pool's state changes at that rate, at the cost of index writes that
//! cannot be batched into entity group transactions.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use azure_data_tables::prelude::{IfMatchCondition, TableClient};
use futures::StreamExt;
use serde_json::{Map, Value};
use tracing::warn;

use super::row::{self, ROW_ETAG, RowFields, parse_row, to_entity};
use super::{Fault, TableStore, classify, is_missing_row, lost_race};
use crate::domain::{ClaimKind, Purpose, VmId, VmRecord, VmState};
use crate::store::{
    Etag, StoreError, VM_NAME_ALPHABET as NAME_ALPHABET, VM_NAME_RANDOM as NAME_RANDOM, Versioned,
    WRITE_CONCURRENCY, run_bounded,
};

/// The states with an index table: those CreateVM claims from.
pub const INDEXED: [VmState; 4] = [
    VmState::MarkedForDeallocation,
    VmState::Standby,
    VmState::Creating,
    VmState::Deallocated,
];

/// The longest table name Azure accepts.
const MAX_TABLE_NAME: usize = 63;

/// The index table of `state` for `table`: `<table>ix<State>` (the table's name shortened
/// to fit 63 characters).
pub fn index_table_name(table: &str, state: VmState) -> String {
    let suffix = format!("ix{}", state.as_str());
    let kept: String = table.chars().take(MAX_TABLE_NAME - suffix.len()).collect();
    format!("{kept}{suffix}")
}

/// Whether `state` has an index table.
pub fn is_indexed(state: VmState) -> bool {
    INDEXED.contains(&state)
}

/// The states rows were last seen in, by row version, so a write knows which index entry it
/// replaces. Bounded: when full it starts afresh, and a write whose old state is unknown
/// removes the VM's entry from every other index table.
#[derive(Debug, Default)]
pub(super) struct Known {
    states: Mutex<HashMap<u64, VmState>>,
}

/// How a sample of each kind queries its index table: the ranges, in order, and what the
/// answers teach about how many candidates there are (see
/// [`TableStore::sample_indexed`]). Public so a benchmark can make exactly the same queries.
#[derive(Debug, Default)]
pub struct Sampler {
    /// Candidates of each kind among the names of the sampled key space, as the last samples
    /// suggest; a hint for the next sample's [`Window`], never a count anything else uses.
    candidates: Mutex<HashMap<ClaimKind, f64>>,
}

/// The queries of one sample: `filters` in turn, each with `$top` of what is still wanted,
/// until the sample is full.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplePlan {
    /// The bound of the first query, if it has one.
    pub window: Option<Window>,
    /// The `$filter` of each query.
    pub filters: Vec<String>,
}

/// About how many entries a sample's first query is bounded to, when the kind's index holds
/// many more: enough that a stretch of the key space seldom holds fewer than a sample (a
/// sample is 16), few enough that sorting them costs nothing.
pub const WINDOW_ENTRIES: f64 = 48.0;
/// The characters of the random part a position is read from (36^8 fits an f64 exactly).
const POSITION_DIGITS: usize = 8;

/// The upper bound of a sample's first query: the name `upto`, `width` of the key space
/// after the sample's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The first name past the stretch.
    pub upto: String,
    /// The share of the key space the stretch covers.
    pub width: f64,
}

/// A name drawn as CreateVM draws new VM names, split into its fixed part (the
/// prefix and the dash) and its random part.
fn split_name(name: &str) -> Option<(&str, &str)> {
    let at = name.len().checked_sub(NAME_RANDOM)?;
    if !name.is_char_boundary(at) {
        return None;
    }
    let (head, random) = name.split_at(at);
    random
        .bytes()
        .all(|b| NAME_ALPHABET.contains(&b))
        .then_some((head, random))
}

/// Where `key` lies in the key space of names with the fixed part `head`, from 0 to 1 (its
/// random part read as a base-36 fraction); `None` for a key outside it.
fn position(head: &str, key: &str) -> Option<f64> {
    let random = key.strip_prefix(head)?;
    let base = NAME_ALPHABET.len() as u64;
    let mut at: u64 = 0;
    let mut digits = random.bytes();
    for _ in 0..POSITION_DIGITS {
        let digit = match digits.next() {
            Some(b) => NAME_ALPHABET.iter().position(|c| *c == b)? as u64,
            None => 0,
        };
        at = at * base + digit;
    }
    Some(at as f64 / base.pow(POSITION_DIGITS as u32) as f64)
}

/// The name with the fixed part `head` at `at` of the key space (rounded up).
fn name_at(head: &str, at: f64) -> String {
    let base = NAME_ALPHABET.len() as u64;
    let steps = base.pow(POSITION_DIGITS as u32);
    let exact = at * steps as f64;
    // A position read from a name comes back to that name, not to the next one.
    let mut n = if (exact - exact.round()).abs() < 1e-3 {
        exact.round()
    } else {
        exact.ceil()
    } as u64;
    n = n.min(steps - 1);
    let mut digits = vec![b'0'; POSITION_DIGITS];
    for d in digits.iter_mut().rev() {
        *d = NAME_ALPHABET[(n % base) as usize];
        n /= base;
    }
    format!("{head}{}", String::from_utf8_lossy(&digits))
}

/// Row versions remembered at most (about 24 bytes each).
const KNOWN_MAX: usize = 200_000;

fn version_key(id: &VmId, etag: &Etag) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    etag.hash(&mut h);
    h.finish()
}

impl Known {
    pub(super) fn saw(&self, id: &VmId, etag: &Etag, state: VmState) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if states.len() >= KNOWN_MAX {
            states.clear();
        }
        states.insert(version_key(id, etag), state);
    }

    fn state_at(&self, id: &VmId, etag: &Etag) -> Option<VmState> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.get(&version_key(id, etag)).copied()
    }
}

impl Sampler {
    /// The queries of a sample of `kind` starting after `after`: the open range after it and
    /// the wrap-round; or, when a [`Window`] applies, the stretch, the rest after it and the
    /// wrap-round. Together they cover every key once, in the order of an open range.
    pub fn plan(&self, kind: ClaimKind, after: &str) -> SamplePlan {
        // Only a Creating VM meant for the buffer can be claimed: the entry is the row's copy,
        // so its purpose can be filtered on. The purpose names are ours, never input.
        let purpose = match kind {
            ClaimKind::ClaimCreating => format!(
                " and {} eq '{}'",
                row::PURPOSE.name,
                Purpose::Buffer.as_str()
            ),
            _ => String::new(),
        };
        // Keys are VM names (letters, digits, `-`, `_`, `.`); quotes are doubled anyway, as
        // OData string literals need.
        let quote = |key: &str| key.replace('\'', "''");
        let key = quote(after);
        let window = self.window(kind, after);
        let mut ranges = Vec::new();
        match &window {
            Some(w) => {
                let upto = quote(&w.upto);
                ranges.push(format!(
                    "PartitionKey gt '{key}' and PartitionKey lt '{upto}'"
                ));
                ranges.push(format!("PartitionKey ge '{upto}'"));
            }
            None => ranges.push(format!("PartitionKey gt '{key}'")),
        }
        ranges.push(format!("PartitionKey le '{key}'"));
        SamplePlan {
            window,
            filters: ranges
                .into_iter()
                .map(|r| format!("{r}{purpose}"))
                .collect(),
        }
    }

    /// The bound of a sample of `kind` that starts after `after`, when the kind's index is
    /// known to hold many more than [`WINDOW_ENTRIES`] candidates and the stretch ends before
    /// the key space does; else none (the first query is the open range).
    pub fn window(&self, kind: ClaimKind, after: &str) -> Option<Window> {
        let candidates = *self
            .candidates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&kind)?;
        let (head, _) = split_name(after)?;
        let from = position(head, after)?;
        let width = WINDOW_ENTRIES / candidates;
        (width < 0.5 && from + width < 1.0).then(|| Window {
            upto: name_at(head, from + width),
            width,
        })
    }

    /// Learns from the first query of a sample of `kind` after `after` (bounded by `window`,
    /// if it was) how many candidates of the kind there are: `limit` of them between `after`
    /// and the last key of a full answer; else as many as the stretch held.
    pub fn learn(
        &self,
        kind: ClaimKind,
        after: &str,
        window: Option<&Window>,
        first: &[&str],
        limit: usize,
    ) {
        let Some((head, _)) = split_name(after) else {
            return;
        };
        let estimate = match (first.last(), window) {
            (Some(last), _) if first.len() >= limit => {
                let span = position(head, last)
                    .zip(position(head, after))
                    .map(|(to, from)| to - from)
                    .filter(|span| *span > 0.0);
                span.map(|span| limit as f64 / span)
            }
            (_, Some(window)) => Some(first.len().max(1) as f64 / window.width),
            _ => None,
        };
        if let Some(estimate) = estimate {
            self.candidates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(kind, estimate);
        }
    }

    /// A sample read every range of `kind` and found `n` candidates in all.
    pub fn counted(&self, kind: ClaimKind, n: usize) {
        self.candidates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind, n as f64);
    }
}

/// An index entry: the row's properties (same keys) and the row's ETag.
fn entry(vm: &VmRecord, etag: &Etag) -> Result<Map<String, Value>, StoreError> {
    let mut m = to_entity(vm)?;
    m.insert(ROW_ETAG.into(), etag.0.clone().into());
    Ok(m)
}

/// What the repair found for one VM.
struct Listed {
    state: VmState,
    row_etag: Option<String>,
    entry_etag: Option<String>,
}

impl TableStore {
    fn index_table(&self, state: VmState) -> Option<&TableClient> {
        self.index
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, client)| client)
    }

    /// After a row write landed: the row at `old` (its previous version, if any) is now
    /// `new` at `etag` (or gone). Puts the entry in the new state's table and removes it
    /// from the old one. Failures are logged, not returned: the row is written, and the
    /// reconciler's repair restores the index.
    pub(super) async fn reindex(
        &self,
        id: &VmId,
        old: Option<&Etag>,
        new: Option<(&VmRecord, &Etag)>,
    ) {
        let new_state = new.map(|(vm, _)| vm.state);
        if let Some((vm, etag)) = new {
            self.known.saw(id, etag, vm.state);
        }
        let stale: Vec<VmState> = match old.map(|etag| self.known.state_at(id, etag)) {
            None => Vec::new(),
            Some(Some(state)) => vec![state],
            Some(None) => INDEXED.to_vec(),
        };
        let removals = stale
            .into_iter()
            .filter(|s| is_indexed(*s) && Some(*s) != new_state)
            .filter_map(|s| self.index_table(s).map(|t| (s, t)))
            .map(|(state, table)| async move {
                let delete = table
                    .partition_key_client(id.as_str())
                    .entity_client(id.as_str())
                    .delete()
                    .if_match(IfMatchCondition::Any);
                match self.call("unindex", delete.into_future()).await {
                    Ok(_) => Ok(()),
                    Err(f) if is_missing_row(&f) => Ok(()),
                    Err(f) => Err((state, self.fail("unindex", f))),
                }
            });
        let addition = async {
            let Some((vm, etag)) = new.filter(|(vm, _)| is_indexed(vm.state)) else {
                return Ok(());
            };
            let Some(table) = self.index_table(vm.state) else {
                return Ok(());
            };
            let body = entry(vm, etag).map_err(|e| (vm.state, e))?;
            let put = table
                .partition_key_client(id.as_str())
                .entity_client(id.as_str())
                .insert_or_replace(&body)
                .map_err(|e| (vm.state, StoreError::Rejected(format!("index: {e}"))))?;
            self.call("index", put.into_future())
                .await
                .map(|_| ())
                .map_err(|f| (vm.state, self.fail("index", f)))
        };
        let (added, removed) = tokio::join!(addition, futures::future::join_all(removals));
        for result in std::iter::once(added).chain(removed) {
            if let Err((state, e)) = result {
                warn!(vm.id = %id, index = %state, error = %e, "index not updated; the reconciler repairs it");
            }
        }
    }

    /// Every entry of the index tables of `states`, as rows with the row's ETag.
    pub(super) async fn list_indexed(
        &self,
        states: &[VmState],
        filter: Option<String>,
        top: Option<u32>,
    ) -> Result<Vec<Versioned>, Fault> {
        let lists = states
            .iter()
            .filter_map(|s| self.index_table(*s))
            .map(|table| {
                let filter = filter.clone();
                async move {
                    let mut query = table.query();
                    if let Some(filter) = filter {
                        query = query.filter(filter);
                    }
                    if let Some(top) = top {
                        query = query.top(top);
                    }
                    let mut pages = query.into_stream::<RowFields>();
                    let mut rows = Vec::new();
                    loop {
                        let page = match tokio::time::timeout(self.timeout, pages.next()).await {
                            Err(_) => return Err(self.no_answer("index list")),
                            Ok(None) => break,
                            Ok(Some(Err(e))) => return Err(classify("index list", &e)),
                            Ok(Some(Ok(page))) => page,
                        };
                        for e in page.entities {
                            match (parse_row(&e), e.row_etag()) {
                                (Ok(vm), Some(etag)) => {
                                    let etag = Etag(etag.to_owned());
                                    self.known.saw(&vm.id, &etag, vm.state);
                                    rows.push(Versioned { vm, etag });
                                }
                                _ => warn!(
                                    table = table.table_name(),
                                    "unreadable index entry skipped"
                                ),
                            }
                        }
                        if top.is_some_and(|top| rows.len() >= top as usize) {
                            break;
                        }
                    }
                    Ok(rows)
                }
            });
        let mut all = Vec::new();
        for rows in futures::future::join_all(lists).await {
            all.extend(rows?);
        }
        Ok(all)
    }

    /// Up to `limit` candidates for a claim of `kind`, from the first key after `after` in the
    /// index table of its state, wrapping round to the start (see
    /// [`crate::store::VmStore::sample`]): key-range queries with `$top`, which Table Storage
    /// answers from where the range starts, in key order
    /// (<https://learn.microsoft.com/rest/api/storageservices/query-timeout-and-pagination>),
    /// so the cost does not grow with the entries of that state.
    ///
    /// Once this store has seen the kind's index hold many entries, the first query also has
    /// an upper bound ([`Window`]): a stretch of the key space expected to hold about
    /// [`WINDOW_ENTRIES`] entries. Azurite evaluates a query against every entry of the table
    /// and sorts all the matches before it applies `$top` (`queryTableEntities` in Azurite's
    /// `src/table/persistence/LokiTableMetadataStore.ts`: `.where(queryWhere)`, `.sort(..)`,
    /// then `.limit(maxResults + 1)`), so an open range sorts half the table; the bound leaves
    /// it a few dozen to sort. Table Storage stops at the bound. When the stretch holds fewer
    /// than `limit`, the rest of the range and then the wrap-round are read as without a
    /// bound, so the answer is the same either way.
    pub(super) async fn sample_indexed(
        &self,
        kind: ClaimKind,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Versioned>, Fault> {
        let states = [kind.state()];
        let plan = self.sampler.plan(kind, after);
        let mut rows = Vec::new();
        for (n, filter) in plan.filters.iter().enumerate() {
            let want = limit - rows.len();
            let top = u32::try_from(want).unwrap_or(u32::MAX);
            let more = self
                .list_indexed(&states, Some(filter.clone()), Some(top))
                .await?;
            if n == 0 {
                let keys: Vec<&str> = more.iter().map(|r| r.vm.id.as_str()).collect();
                self.sampler
                    .learn(kind, after, plan.window.as_ref(), &keys, limit);
            }
            rows.extend(more);
            if rows.len() >= limit {
                break;
            }
        }
        if rows.len() < limit {
            // Every range was read: that is all the kind's entries.
            self.sampler.counted(kind, rows.len());
        }
        rows.retain(|r| ClaimKind::of(&r.vm) == Some(kind));
        rows.truncate(limit);
        Ok(rows)
    }

    /// Brings the index back in line with `rows` (the VM table as just listed): see
    /// [`crate::store::VmStore::repair_index`]. Every disagreement is settled against the
    /// row read afresh, so a write that lands during the repair is never undone.
    pub(super) async fn repair(&self, rows: &[Versioned]) -> Result<usize, StoreError> {
        let mut listed: HashMap<String, Vec<Listed>> = HashMap::new();
        for state in INDEXED {
            let Some(table) = self.index_table(state) else {
                continue;
            };
            let mut pages = table
                .query()
                .select(format!(
                    "{},{},{ROW_ETAG}",
                    row::PARTITION_KEY.name,
                    row::ROW_KEY.name
                ))
                .into_stream::<Map<String, Value>>();
            loop {
                let page = match tokio::time::timeout(self.timeout, pages.next()).await {
                    Err(_) => return Err(self.fail("repair", self.no_answer("repair"))),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(self.fail("repair", classify("repair", &e))),
                    Ok(Some(Ok(page))) => page,
                };
                for e in page.entities {
                    let text = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
                    if let Some(key) = text(row::ROW_KEY.name) {
                        listed.entry(key).or_default().push(Listed {
                            state,
                            row_etag: text(ROW_ETAG),
                            entry_etag: text("odata.etag"),
                        });
                    }
                }
            }
        }
        // The VMs whose entries disagree with their row: a row in an indexed state without an
        // exact entry, or an entry that is not exactly its row.
        let mut suspects: HashSet<String> = HashSet::new();
        let by_id: HashMap<&str, &Versioned> = rows.iter().map(|r| (r.vm.id.as_str(), r)).collect();
        for r in rows {
            let entries = listed.get(r.vm.id.as_str());
            let agrees = if is_indexed(r.vm.state) {
                entries.is_some_and(|entries| {
                    entries.len() == 1
                        && entries[0].state == r.vm.state
                        && entries[0].row_etag.as_deref() == Some(r.etag.0.as_str())
                })
            } else {
                entries.is_none()
            };
            if !agrees {
                suspects.insert(r.vm.id.as_str().to_owned());
            }
        }
        for id in listed.keys() {
            if !by_id.contains_key(id.as_str()) {
                suspects.insert(id.clone());
            }
        }
        let fixes = run_bounded(
            suspects.into_iter().map(|id| {
                let entries = listed.remove(&id).unwrap_or_default();
                async move { self.repair_one(&id, entries).await }
            }),
            WRITE_CONCURRENCY,
        )
        .await;
        let mut fixed = 0;
        for result in fixes {
            fixed += result?;
        }
        if fixed > 0 {
            warn!(fixed, "index entries repaired");
        }
        Ok(fixed)
    }

    /// Settles one VM's index entries against its row read afresh.
    async fn repair_one(&self, id: &str, entries: Vec<Listed>) -> Result<usize, StoreError> {
        let Ok(vm_id) = VmId::parse(id) else {
            // Not a VM name: no row can ever match it.
            return self.drop_entries(id, &entries, None).await;
        };
        let row = self
            .get_once(&vm_id)
            .await
            .map_err(|f| self.fail("repair", f))?;
        let mut fixed = self
            .drop_entries(id, &entries, row.as_ref().map(|r| r.vm.state))
            .await?;
        if let Some(row) = row.filter(|r| is_indexed(r.vm.state)) {
            let exact = entries.iter().any(|e| {
                e.state == row.vm.state && e.row_etag.as_deref() == Some(row.etag.0.as_str())
            });
            if !exact {
                self.reindex(&vm_id, None, Some((&row.vm, &row.etag))).await;
                fixed += 1;
            }
        }
        Ok(fixed)
    }

    /// Removes the entries not in `keep`'s table, each only if unchanged since listed.
    async fn drop_entries(
        &self,
        id: &str,
        entries: &[Listed],
        keep: Option<VmState>,
    ) -> Result<usize, StoreError> {
        let mut dropped = 0;
        for e in entries.iter().filter(|e| Some(e.state) != keep) {
            let (Some(table), Some(etag)) = (self.index_table(e.state), &e.entry_etag) else {
                continue;
            };
            let delete = table
                .partition_key_client(id)
                .entity_client(id)
                .delete()
                .if_match(IfMatchCondition::Etag(etag.clone().into()));
            match self.call("repair", delete.into_future()).await.map(|_| ()) {
                Ok(()) => dropped += 1,
                Err(f) => {
                    lost_race(f).map_err(|f| self.fail("repair", f))?;
                }
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_key_order_and_names_at_them_land_right() {
        let head = "vmpool-";
        use rand::Rng;
        let mut rng = rand::rng();
        let mut names: Vec<String> = (0..200)
            .map(|_| {
                let random: String = (0..NAME_RANDOM)
                    .map(|_| char::from(NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())]))
                    .collect();
                format!("vmpool-{random}")
            })
            .collect();
        names.sort();
        let at: Vec<f64> = names.iter().map(|n| position(head, n).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] <= w[1]), "in key order");
        assert!(at.iter().all(|p| (0.0..1.0).contains(p)));
        assert_eq!(position(head, "vmpool-0000000000"), Some(0.0));
        assert_eq!(position(head, "other-0000000000"), None);
        assert_eq!(position(head, "vmpool-ABCDEFGHIJ"), None);
        for (name, p) in names.iter().zip(&at) {
            // A bound at a name's position sorts at or after every key before it and at or
            // before the name itself (the bound has fewer characters).
            let bound = name_at(head, *p);
            assert!(bound.as_str() <= name.as_str(), "{bound} <= {name}");
            assert!(position(head, &bound).unwrap() >= *p - 1e-12);
        }
        assert_eq!(name_at(head, 0.5), "vmpool-i0000000");
        assert_eq!(split_name("vmpool-abc"), None);
        assert_eq!(
            split_name("vmpool-0123456789"),
            Some(("vmpool-", "0123456789"))
        );
    }

    #[test]
    fn a_sample_is_bounded_only_once_many_candidates_were_seen_and_learns_from_each_answer() {
        let sampler = Sampler::default();
        let after = "vmpool-h000000000";
        let plan = sampler.plan(ClaimKind::Start, after);
        assert_eq!(plan.window, None, "nothing known yet: the open range");
        assert_eq!(
            plan.filters,
            [
                "PartitionKey gt 'vmpool-h000000000'",
                "PartitionKey le 'vmpool-h000000000'"
            ]
        );
        // A full answer of 16 spanning 1/360 of the key space: about 5,760 candidates.
        let from = position("vmpool-", after).unwrap();
        let last = name_at("vmpool-", from + 1.0 / 360.0);
        let keys: Vec<&str> = std::iter::repeat_n(last.as_str(), 16).collect();
        sampler.learn(ClaimKind::Start, after, None, &keys, 16);
        let plan = sampler.plan(ClaimKind::Start, after);
        let window = plan.window.clone().expect("bounded now");
        assert!(
            (window.width - WINDOW_ENTRIES / 5760.0).abs() < 1e-6,
            "{window:?}"
        );
        assert_eq!(
            plan.filters,
            [
                format!(
                    "PartitionKey gt '{after}' and PartitionKey lt '{}'",
                    window.upto
                ),
                format!("PartitionKey ge '{}'", window.upto),
                format!("PartitionKey le '{after}'"),
            ]
        );
        // Other kinds are not bounded by what one kind taught; a Creating sample keeps its
        // purpose filter on every query.
        assert_eq!(sampler.plan(ClaimKind::Standby, after).window, None);
        let creating = sampler.plan(ClaimKind::ClaimCreating, after);
        assert!(
            creating
                .filters
                .iter()
                .all(|f| f.ends_with(" and Purpose eq 'Buffer'"))
        );
        // A stretch that held only 2: the next one is wider.
        sampler.learn(ClaimKind::Start, after, Some(&window), &["x", "y"], 16);
        let wider = sampler.plan(ClaimKind::Start, after).window.unwrap();
        assert!(wider.width > window.width * 10.0, "{wider:?}");
        // A sample that read every range and found few: the open range again.
        sampler.counted(ClaimKind::Start, 20);
        assert_eq!(sampler.plan(ClaimKind::Start, after).window, None);
        // Near the end of the key space the stretch would run past it: the open range.
        sampler.counted(ClaimKind::Start, 10_000);
        assert!(sampler.plan(ClaimKind::Start, after).window.is_some());
        assert_eq!(
            sampler.plan(ClaimKind::Start, "vmpool-zzzzzzzzzz").window,
            None
        );
        // A start that is not a VM name of this shape: the open range.
        assert_eq!(sampler.plan(ClaimKind::Start, "smp-d04").window, None);
    }

    #[test]
    fn index_table_names_stay_valid_and_distinct() {
        let names: HashSet<String> = INDEXED
            .iter()
            .map(|s| index_table_name("vmpool", *s))
            .collect();
        assert_eq!(names.len(), INDEXED.len());
        assert!(names.contains("vmpoolixStandby"));
        for s in INDEXED {
            let long = index_table_name(&"a".repeat(63), s);
            assert_eq!(long.len(), 63);
            crate::store::table::check_table_name(&long).unwrap();
        }
    }
}
