//! The VM table in Azure Table Storage (or Azurite), over `azure_data_tables` 0.21.
//!
//! One row per VM: `PartitionKey` = `RowKey` = vmId, the state in `VM_State`, the rest in
//! PascalCase properties (the schema is in `docs/storage.md`; each property is described once
//! in `row.rs`). Every write is conditional: inserts fail on an existing key, updates and
//! deletes name the row's ETag, and a lost race comes back as [`Written::LostRace`]. Queries
//! by state use filters built only from [`crate::domain::VmState`] names, never from caller
//! input, and page past 1000 rows.
//!
//! The parts: `connection.rs` (where to connect), `faults.rs` (what a failed call means),
//! `row.rs` (the row format), and this file (the [`VmStore`] implementation).
//!
//! Faults are bounded: the SDK does not retry (its default would retry for a minute), every
//! call has a deadline, and anything that is not an answer from the service becomes
//! [`StoreError::Unavailable`] within seconds. The pool's own records ([`super::Record`]) live in
//! a second table, `<table>meta`, so the VM table holds VMs only.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

mod connection;
mod faults;
mod index;
mod row;

use async_trait::async_trait;
use azure_core::{RetryOptions, TransportOptions};
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_data_tables::prelude::{IfMatchCondition, TableClient};
use azure_storage::{CloudLocation, StorageCredentials};
use futures::StreamExt;
use serde_json::{Map, Value};
use tracing::warn;

use connection::parse_connection_string;
pub use connection::{check_table_name, meta_table_name};
use faults::{Fault, Sent, classify, is_ambiguous, is_missing_row, lost_race};
pub use index::{INDEXED, SamplePlan, Sampler, WINDOW_ENTRIES, Window, index_table_name};
use row::{
    RECORD_VALUE, RecordFields, RowFields, check_keys, opt_text, parse_row, record_entity,
    to_entity,
};

use super::{
    Continuation, Etag, GroupCounts, Page, PageRequest, Record, Rows, StateCounts, StoreError,
    Versioned, VmStore, Written, count_into, normalize, zero_counts,
};
use crate::domain::{ClaimKind, VmId, VmRecord, VmState};
use azure_core::Continuable;

/// How long one call to the service may take before it counts as unavailable.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Tuning for [`TableStore::connect_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableOptions {
    /// Deadline for one call (one page of a query); past it the call fails with
    /// [`StoreError::Unavailable`].
    pub timeout: Duration,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The VM table in Azure Table Storage. Cheap to share behind an `Arc`; every call is
/// independent, so any number of instances may serve one table at once.
#[derive(Debug)]
pub struct TableStore {
    vms: TableClient,
    meta: TableClient,
    /// The state index: a table per indexed state (see `index.rs`).
    index: Vec<(VmState, TableClient)>,
    known: index::Known,
    sampler: Sampler,
    describe: String,
    timeout: Duration,
    writes: AtomicU64,
    /// An index table was created and the index is not built yet (see `prepare`).
    index_unbuilt: AtomicBool,
}

impl TableStore {
    /// Connects with the default [`TableOptions`] and creates the tables when absent.
    pub async fn connect(connection_string: &str, table: &str) -> Result<Self, StoreError> {
        Self::connect_with(connection_string, table, TableOptions::default()).await
    }

    /// Connects to the account in `connection_string` (`UseDevelopmentStorage=true`, or
    /// `AccountName`/`AccountKey` or `SharedAccessSignature` with an optional
    /// `TableEndpoint`), and creates `table` and `<table>meta` when absent. Fails with
    /// [`StoreError::Unavailable`] when the service cannot be reached, and with
    /// [`StoreError::Rejected`] for a connection string or table name that cannot work.
    pub async fn connect_with(
        connection_string: &str,
        table: &str,
        options: TableOptions,
    ) -> Result<Self, StoreError> {
        let store = Self::open(connection_string, table, options)?;
        store.prepare().await?;
        Ok(store)
    }

    /// The store for the account in `connection_string`, without a call to the service:
    /// [`TableStore::prepare`] must succeed before it is used. Fails only for a connection
    /// string or table name that cannot work.
    pub fn open(
        connection_string: &str,
        table: &str,
        options: TableOptions,
    ) -> Result<Self, StoreError> {
        check_table_name(table)?;
        let target = parse_connection_string(connection_string)?;
        Self::open_to(
            target.location,
            target.credentials,
            &target.describe,
            table,
            options,
            None,
        )
    }

    /// Connects to the Table service at `location` with `credentials` (a key, a SAS or a
    /// bearer-token credential), over `http` when given (else a client with the deadlines of
    /// `options`), and creates the tables when absent. `describe` names the service for the
    /// start-up line and must hold no secret.
    pub async fn connect_to(
        location: CloudLocation,
        credentials: StorageCredentials,
        describe: &str,
        table: &str,
        options: TableOptions,
        http: Option<reqwest::Client>,
    ) -> Result<Self, StoreError> {
        let store = Self::open_to(location, credentials, describe, table, options, http)?;
        store.prepare().await?;
        Ok(store)
    }

    /// [`TableStore::connect_to`] without a call to the service: [`TableStore::prepare`] must
    /// succeed before the store is used.
    pub fn open_to(
        location: CloudLocation,
        credentials: StorageCredentials,
        describe: &str,
        table: &str,
        options: TableOptions,
        http: Option<reqwest::Client>,
    ) -> Result<Self, StoreError> {
        check_table_name(table)?;
        let http = match http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT.min(options.timeout))
                .timeout(options.timeout)
                .pool_idle_timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| StoreError::Rejected(format!("cannot build an HTTP client: {e}")))?,
        };
        let service = TableServiceClientBuilder::with_location(location, credentials)
            .retry(RetryOptions::none())
            .transport(TransportOptions::new(Arc::new(http)))
            .build();
        Ok(TableStore {
            vms: service.table_client(table),
            meta: service.table_client(meta_table_name(table)),
            index: INDEXED
                .iter()
                .map(|s| (*s, service.table_client(index_table_name(table, *s))))
                .collect(),
            known: index::Known::default(),
            sampler: Sampler::default(),
            describe: format!("{describe}, table {table}"),
            timeout: options.timeout,
            writes: AtomicU64::new(0),
            index_unbuilt: AtomicBool::new(false),
        })
    }

    /// Makes the store ready to serve: creates the VM table, the meta table and the index
    /// tables when absent, and builds the index of a table written before the index existed.
    /// The first call to the service, so the first to need the credential: it fails with
    /// what storage answered (unreachable, or 403 while a role assignment propagates) and may
    /// be called again until it succeeds.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        if self.create_tables().await? {
            self.index_unbuilt.store(true, Ordering::SeqCst);
        }
        if self.index_unbuilt.load(Ordering::SeqCst) {
            // A table that existed before the index did: build the index from its rows. A
            // failure leaves the flag set, so the next call builds it (the index tables then
            // exist already).
            let rows = self
                .list_once(Rows::All)
                .await
                .map_err(|f| self.fail("build index", f))?;
            if !rows.is_empty() {
                self.repair(&rows).await?;
            }
            self.index_unbuilt.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Creates the VM table, the meta table and the index tables when absent; true if an
    /// index table was created.
    async fn create_tables(&self) -> Result<bool, StoreError> {
        self.create_table(&self.vms).await?;
        self.create_table(&self.meta).await?;
        let mut created = false;
        for (_, table) in &self.index {
            created |= self.create_table(table).await?;
        }
        Ok(created)
    }

    /// How this store plans its samples (what it has learned of each kind's candidates).
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The names of the state index tables.
    pub fn index_table_names(&self) -> Vec<&str> {
        self.index.iter().map(|(_, t)| t.table_name()).collect()
    }

    /// How many VM-table writes (insert, update, delete; won or lost) this store attempted,
    /// to measure contention.
    pub fn write_attempts(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// The name of the VM table.
    pub fn table_name(&self) -> &str {
        self.vms.table_name()
    }

    /// The name of the table that holds the pool's own record.
    pub fn meta_table_name(&self) -> &str {
        self.meta.table_name()
    }

    /// Creates `table`; true if it did not exist.
    async fn create_table(&self, table: &TableClient) -> Result<bool, StoreError> {
        match self
            .call("create table", table.create().into_future())
            .await
        {
            Ok(_) => Ok(true),
            Err(Fault::Status { status: 409, .. }) => Ok(false),
            Err(f) => Err(self.fail("create table", f)),
        }
    }

    /// Runs one call against the deadline and classifies its failure.
    async fn call<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = azure_core::Result<T>>,
    ) -> Result<T, Fault> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(self.no_answer(what)),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(what, &e)),
        }
    }

    /// The fault of a call that passed its deadline.
    fn no_answer(&self, what: &str) -> Fault {
        Fault::Store(StoreError::Unavailable(format!(
            "{what}: no answer within {} ms",
            self.timeout.as_millis()
        )))
    }

    /// The error for a fault that the operation has no special meaning for.
    fn fail(&self, what: &'static str, fault: Fault) -> StoreError {
        match fault {
            Fault::Store(e) => e,
            Fault::Status { status, code } => {
                let detail = format!("{what} on {}: HTTP {status} {code}", self.vms.table_name());
                if status == 408 || status == 429 || status >= 500 {
                    StoreError::Unavailable(detail)
                } else {
                    StoreError::Rejected(detail)
                }
            }
        }
    }

    fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl VmStore for TableStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn get(&self, id: &VmId) -> Result<Option<Versioned>, StoreError> {
        self.recreating("get", || self.get_once(id)).await
    }

    async fn list(&self, which: Rows<'_>) -> Result<Vec<Versioned>, StoreError> {
        match which {
            Rows::InStates(states) if states.iter().all(|s| index::is_indexed(*s)) => {
                self.recreating("list", || self.list_indexed(states, None, None))
                    .await
            }
            _ => self.recreating("list", || self.list_once(which)).await,
        }
    }

    async fn list_page(
        &self,
        which: Rows<'_>,
        page: &PageRequest,
    ) -> Result<Page<Versioned>, StoreError> {
        self.recreating("list page", || self.page_once(which, page))
            .await
    }

    async fn sample(
        &self,
        kind: ClaimKind,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Versioned>, StoreError> {
        self.recreating("sample", || self.sample_indexed(kind, after, limit))
            .await
    }

    async fn count_states(&self) -> Result<StateCounts, StoreError> {
        self.recreating("count", || self.count_once()).await
    }

    async fn count_groups(&self) -> Result<GroupCounts, StoreError> {
        self.recreating("count", || self.count_groups_once()).await
    }

    async fn repair_index(&self, rows: &[Versioned]) -> Result<usize, StoreError> {
        self.repair(rows).await
    }

    async fn insert(&self, vm: &VmRecord) -> Result<Written, StoreError> {
        let vm = normalize(vm)?;
        let body = to_entity(&vm)?;
        let written = self
            .recreating("insert", || async {
                let builder = self
                    .vms
                    .insert::<_, Value>(&body)
                    .map_err(|e| Fault::Store(StoreError::Rejected(format!("insert: {e}"))))?;
                self.count_write();
                match self.call("insert", builder.into_future()).await {
                    Ok(res) => Ok(Written::Done(Etag(res.etag.to_string()))),
                    Err(Fault::Status { status: 409, .. }) => Ok(Written::LostRace),
                    Err(f) if is_ambiguous(&f) => self.settle(&vm.id, Sent::Insert(&vm), f).await,
                    Err(f) => Err(f),
                }
            })
            .await?;
        if let Written::Done(new) = &written {
            self.reindex(&vm.id, None, Some((&vm, new))).await;
        }
        Ok(written)
    }

    async fn update(&self, vm: &VmRecord, etag: &Etag) -> Result<Written, StoreError> {
        let vm = normalize(vm)?;
        let body = to_entity(&vm)?;
        let written = self
            .recreating("update", || async {
                let builder = self
                    .vms
                    .partition_key_client(vm.id.as_str())
                    .entity_client(vm.id.as_str())
                    .update(&body, IfMatchCondition::Etag(etag.0.clone().into()))
                    .map_err(|e| Fault::Store(StoreError::Rejected(format!("update: {e}"))))?;
                self.count_write();
                match self.call("update", builder.into_future()).await {
                    Ok(res) => Ok(Written::Done(Etag(res.etag.to_string()))),
                    Err(f) if is_ambiguous(&f) => {
                        self.settle(&vm.id, Sent::Update(&vm, etag), f).await
                    }
                    Err(f) => lost_race(f),
                }
            })
            .await?;
        if let Written::Done(new) = &written {
            self.reindex(&vm.id, Some(etag), Some((&vm, new))).await;
        }
        Ok(written)
    }

    async fn delete(&self, id: &VmId, etag: &Etag) -> Result<Written, StoreError> {
        let written = self
            .recreating("delete", || async {
                let builder = self
                    .vms
                    .partition_key_client(id.as_str())
                    .entity_client(id.as_str())
                    .delete()
                    .if_match(IfMatchCondition::Etag(etag.0.clone().into()));
                self.count_write();
                match self.call("delete", builder.into_future()).await {
                    Ok(_) => Ok(Written::Done(etag.clone())),
                    Err(f) if is_ambiguous(&f) => self.settle(id, Sent::Delete(etag), f).await,
                    Err(f) => lost_race(f),
                }
            })
            .await?;
        if let Written::Done(_) = &written {
            self.reindex(id, Some(etag), None).await;
        }
        Ok(written)
    }

    async fn get_record(&self, kind: &str, key: &str) -> Result<Option<Record>, StoreError> {
        check_keys(kind, key)?;
        self.recreating("get record", || async {
            let client = self.meta.partition_key_client(kind).entity_client(key);
            match self
                .call(
                    "get record",
                    client.get::<Map<String, Value>>().into_future(),
                )
                .await
            {
                Ok(res) => Ok(Some(Record {
                    value: opt_text(&res.entity, RECORD_VALUE)
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                        .to_owned(),
                    etag: Etag(res.etag.to_string()),
                })),
                Err(f) if is_missing_row(&f) => Ok(None),
                Err(f) => Err(f),
            }
        })
        .await
    }

    async fn insert_record(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<Written, StoreError> {
        let body = record_entity(kind, key, value)?;
        self.recreating("insert record", || async {
            let builder = self
                .meta
                .insert::<_, Value>(&body)
                .map_err(|e| Fault::Store(StoreError::Rejected(format!("insert record: {e}"))))?;
            match self.call("insert record", builder.into_future()).await {
                Ok(res) => Ok(Written::Done(Etag(res.etag.to_string()))),
                Err(f) => lost_race(f),
            }
        })
        .await
    }

    async fn update_record(
        &self,
        kind: &str,
        key: &str,
        value: &str,
        etag: &Etag,
    ) -> Result<Written, StoreError> {
        let body = record_entity(kind, key, value)?;
        self.recreating("update record", || async {
            let builder = self
                .meta
                .partition_key_client(kind)
                .entity_client(key)
                .update(&body, IfMatchCondition::Etag(etag.0.clone().into()))
                .map_err(|e| Fault::Store(StoreError::Rejected(format!("update record: {e}"))))?;
            match self.call("update record", builder.into_future()).await {
                Ok(res) => Ok(Written::Done(Etag(res.etag.to_string()))),
                Err(f) => lost_race(f),
            }
        })
        .await
    }

    async fn list_records(
        &self,
        kind: &str,
        page: &PageRequest,
    ) -> Result<Page<(String, Record)>, StoreError> {
        super::check_record_key("kind", kind)?;
        self.recreating("list records", || self.records_once(kind, page))
            .await
    }

    async fn delete_record(
        &self,
        kind: &str,
        key: &str,
        etag: &Etag,
    ) -> Result<Written, StoreError> {
        check_keys(kind, key)?;
        self.recreating("delete record", || async {
            let builder = self
                .meta
                .partition_key_client(kind)
                .entity_client(key)
                .delete()
                .if_match(IfMatchCondition::Etag(etag.0.clone().into()));
            match self.call("delete record", builder.into_future()).await {
                Ok(_) => Ok(Written::Done(etag.clone())),
                Err(f) => lost_race(f),
            }
        })
        .await
    }
}

impl TableStore {
    /// Runs `op`; if a table has gone (an emulator restarted without persistence, someone
    /// deleted it), creates the tables and runs it once more.
    async fn recreating<T, Fut>(
        &self,
        what: &'static str,
        op: impl Fn() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, Fault>>,
    {
        match op().await {
            Err(Fault::Status { status: 404, code }) if code == "TableNotFound" => {
                warn!(
                    table = self.vms.table_name(),
                    "the table is missing; creating it"
                );
                self.create_tables().await?;
                op().await.map_err(|f| self.fail(what, f))
            }
            other => other.map_err(|f| self.fail(what, f)),
        }
    }

    /// After a write whose answer never came (a timeout, a broken connection, a 5xx that
    /// may or may not have been applied), reads the row once to learn what happened, so the
    /// caller is never told "failed" about a change that in fact landed:
    /// - the row is at the version we named (or absent, for an insert): nothing changed, and
    ///   the original fault stands;
    /// - the row is exactly what we wrote (or gone, for a delete): our write landed, `Done`;
    /// - anything else: someone else's write won, `LostRace`.
    ///
    /// If the row cannot be read either, the fault stands (the outcome stays unknown).
    async fn settle(&self, id: &VmId, sent: Sent<'_>, fault: Fault) -> Result<Written, Fault> {
        let Ok(now) = self.get_once(id).await else {
            return Err(fault);
        };
        let Some(outcome) = faults::settled(sent, now) else {
            return Err(fault);
        };
        warn!(vm.id = %id, outcome = ?outcome, "a write's answer was lost; the row was read back to settle it");
        Ok(outcome)
    }

    async fn get_once(&self, id: &VmId) -> Result<Option<Versioned>, Fault> {
        let client = self
            .vms
            .partition_key_client(id.as_str())
            .entity_client(id.as_str());
        let res = match self
            .call("get", client.get::<Map<String, Value>>().into_future())
            .await
        {
            Ok(res) => res,
            Err(f) if is_missing_row(&f) => return Ok(None),
            Err(f) => return Err(f),
        };
        let unreadable = |why: String| {
            Fault::Store(StoreError::Rejected(format!(
                "the row {id} in table {} cannot be read as a VM: {why}",
                self.vms.table_name()
            )))
        };
        let vm = parse_row(&res.entity).map_err(unreadable)?;
        if vm.id != *id {
            return Err(unreadable("it names another VM".into()));
        }
        let etag = Etag(res.etag.to_string());
        self.known.saw(&vm.id, &etag, vm.state);
        Ok(Some(Versioned { vm, etag }))
    }

    /// The VM-table query for `which`: only the row's properties, filtered by state.
    fn query(&self, which: Rows<'_>) -> azure_data_tables::operations::QueryEntityBuilder {
        let query = self.vms.query().select(row::select());
        match which {
            Rows::InStates(states) if !states.is_empty() => query.filter(row::state_filter(states)),
            _ => query,
        }
    }

    async fn list_once(&self, which: Rows<'_>) -> Result<Vec<Versioned>, Fault> {
        if which == Rows::InStates(&[]) {
            return Ok(Vec::new());
        }
        let mut pages = self.query(which).into_stream::<RowFields>();
        let mut rows = Vec::new();
        loop {
            let page = match tokio::time::timeout(self.timeout, pages.next()).await {
                Err(_) => return Err(self.no_answer("list")),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(classify("list", &e)),
                Ok(Some(Ok(page))) => page,
            };
            self.decode(&page.entities, which, &mut rows);
        }
        Ok(rows)
    }

    /// One page: Table Storage may answer a filtered query with fewer rows than asked for
    /// (and a continuation), so this asks again for the rest until the page is full or the
    /// table ends.
    async fn page_once(
        &self,
        which: Rows<'_>,
        page: &PageRequest,
    ) -> Result<Page<Versioned>, Fault> {
        let mut rows = Vec::new();
        let mut next = page.after.clone();
        if which == Rows::InStates(&[]) {
            return Ok(Page {
                items: rows,
                next: None,
            });
        }
        loop {
            let want = page.limit - rows.len();
            let mut query = self
                .query(which)
                .top(u32::try_from(want).unwrap_or(u32::MAX));
            if let Some(after) = next.take() {
                query = query.initial_partition_key(after.partition_key);
                if let Some(row_key) = after.row_key {
                    query = query.initial_row_key(row_key);
                }
            }
            let mut pages = query.into_stream::<RowFields>();
            let answer = match tokio::time::timeout(self.timeout, pages.next()).await {
                Err(_) => return Err(self.no_answer("list page")),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(classify("list page", &e)),
                Ok(Some(Ok(answer))) => answer,
            };
            self.decode(&answer.entities, which, &mut rows);
            next = answer
                .continuation()
                .map(|(partition_key, row_key)| Continuation {
                    partition_key,
                    row_key,
                });
            if next.is_none() || rows.len() >= page.limit {
                break;
            }
        }
        Ok(Page { items: rows, next })
    }

    /// One page of the records of `kind`: a query on the kind's partition, reading only the
    /// key and the value, asked again (like [`TableStore::page_once`]) while the service
    /// answers with fewer entities than asked for and a continuation.
    async fn records_once(
        &self,
        kind: &str,
        page: &PageRequest,
    ) -> Result<Page<(String, Record)>, Fault> {
        let mut items = Vec::new();
        let mut next = page.after.clone();
        loop {
            let want = page.limit - items.len();
            let mut query = self
                .meta
                .query()
                .filter(row::kind_filter(kind))
                .select(row::RECORD_SELECT)
                .top(u32::try_from(want).unwrap_or(u32::MAX));
            if let Some(after) = next.take() {
                query = query.initial_partition_key(after.partition_key);
                if let Some(row_key) = after.row_key {
                    query = query.initial_row_key(row_key);
                }
            }
            let mut pages = query.into_stream::<RecordFields>();
            let answer = match tokio::time::timeout(self.timeout, pages.next()).await {
                Err(_) => return Err(self.no_answer("list records")),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(classify("list records", &e)),
                Ok(Some(Ok(answer))) => answer,
            };
            for entity in &answer.entities {
                match (&entity.value, &entity.etag) {
                    (Value::String(value), Some(etag)) => items.push((
                        entity.key.clone(),
                        Record {
                            value: value.clone(),
                            etag: Etag(etag.clone()),
                        },
                    )),
                    _ => {
                        warn!(table = self.meta.table_name(), kind, key = %entity.key, "record without a text value or an ETag skipped");
                    }
                }
            }
            next = answer
                .continuation()
                .map(|(partition_key, row_key)| Continuation {
                    partition_key,
                    row_key,
                });
            if next.is_none() || items.len() >= page.limit {
                break;
            }
        }
        Ok(Page { items, next })
    }

    /// Counts rows by state, pool and build, reading only those of each, page by page.
    async fn count_groups_once(&self) -> Result<GroupCounts, Fault> {
        let mut pages = self
            .vms
            .query()
            .select(format!(
                "{},{},{}",
                row::STATE.name,
                row::POOL.name,
                row::BUILD.name
            ))
            .into_stream::<RowFields>();
        let mut counts = GroupCounts::new();
        loop {
            let page = match tokio::time::timeout(self.timeout, pages.next()).await {
                Err(_) => return Err(self.no_answer("count")),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(classify("count", &e)),
                Ok(Some(Ok(page))) => page,
            };
            for entity in &page.entities {
                if let Some((state, group)) = row::group_of(entity) {
                    count_into(&mut counts, group, state);
                }
            }
        }
        Ok(counts)
    }

    /// Counts rows by state, reading only the state of each, page by page.
    async fn count_once(&self) -> Result<StateCounts, Fault> {
        let mut pages = self
            .vms
            .query()
            .select(row::STATE.name)
            .into_stream::<RowFields>();
        let mut counts = zero_counts();
        loop {
            let page = match tokio::time::timeout(self.timeout, pages.next()).await {
                Err(_) => return Err(self.no_answer("count")),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(classify("count", &e)),
                Ok(Some(Ok(page))) => page,
            };
            for entity in &page.entities {
                if let Some(state) = row::state_of(entity) {
                    *counts.entry(state).or_default() += 1;
                }
            }
        }
        Ok(counts)
    }

    /// Adds the VM rows of a page that `which` selects to `rows`; skips others with a
    /// warning.
    fn decode(&self, entities: &[RowFields], which: Rows<'_>, rows: &mut Vec<Versioned>) {
        for entity in entities {
            match (parse_row(entity), entity.etag()) {
                (Ok(vm), Some(etag)) if which.selects(vm.state) => {
                    let etag = Etag(etag.to_owned());
                    self.known.saw(&vm.id, &etag, vm.state);
                    rows.push(Versioned { vm, etag });
                }
                (Ok(_), Some(_)) => {}
                (Ok(vm), None) => {
                    warn!(table = self.vms.table_name(), vm.id = %vm.id, "row without an ETag skipped");
                }
                (Err(why), _) => {
                    let key = opt_text(entity, row::ROW_KEY.name)
                        .ok()
                        .flatten()
                        .unwrap_or("?");
                    warn!(table = self.vms.table_name(), row_key = key, reason = %why, "row that is not a VM skipped");
                }
            }
        }
    }
}
