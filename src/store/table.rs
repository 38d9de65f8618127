//! The VM table in Azure Table Storage (or Azurite), over `azure_data_tables` 0.21.
//!
//! One row per VM: `PartitionKey` = `RowKey` = vmId, the state in `VM_State`, the rest in
//! PascalCase properties (the schema is in `docs/storage.md`). Every write is conditional:
//! inserts fail on an existing key, updates and deletes name the row's ETag, and a lost race
//! comes back as [`Written::LostRace`]. Queries by state use filters built only from
//! [`VmState`] names, never from caller input, and page past 1000 rows.
//!
//! Faults are bounded: the SDK does not retry (its default would retry for a minute), every
//! call has a deadline, and anything that is not an answer from the service becomes
//! [`StoreError::Unavailable`] within seconds. The pool's own records ([`super::Record`]) live in
//! a second table, `<table>meta`, so the VM table holds VMs only.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::{RetryOptions, TransportOptions};
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_data_tables::prelude::{IfMatchCondition, TableClient};
use azure_storage::{CloudLocation, ConnectionString, StorageCredentials};
use futures::StreamExt;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::warn;

#[cfg(test)]
use super::MAX_RECORD_CHARS;
use super::{
    Etag, Record, Rows, StoreError, Versioned, VmStore, Written, check_record_key,
    check_record_value, normalize,
};
use crate::domain::{Operation, Purpose, VmId, VmRecord, VmState};

/// How long one call to the service may take before it counts as unavailable.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest table name Azure accepts.
const MAX_TABLE_NAME: usize = 63;
/// The property that holds the state (fixed by the table schema).
pub const STATE_PROPERTY: &str = "VM_State";

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
    describe: String,
    timeout: Duration,
    writes: AtomicU64,
}

/// Where to connect, parsed from a connection string.
struct Target {
    location: CloudLocation,
    credentials: StorageCredentials,
    /// Account and endpoint, for the start-up line; never a key or a token.
    describe: String,
}

/// What went wrong with one call, before each operation decides what it means.
enum Fault {
    /// The service answered with an error status.
    Status { status: u16, code: String },
    /// Anything else, already classified.
    Store(StoreError),
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
        check_table_name(table)?;
        let target = parse_connection_string(connection_string)?;
        Self::connect_to(
            target.location,
            target.credentials,
            &target.describe,
            table,
            options,
            None,
        )
        .await
    }

    /// Connects to the Table service at `location` with `credentials` (a key, a SAS or a
    /// bearer-token credential), over `http` when given (else a client with the deadlines of
    /// `options`), and creates `table` and `<table>meta` when absent. `describe` names the
    /// service for the start-up line and must hold no secret.
    pub async fn connect_to(
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
        let store = TableStore {
            vms: service.table_client(table),
            meta: service.table_client(meta_table_name(table)),
            describe: format!("{describe}, table {table}"),
            timeout: options.timeout,
            writes: AtomicU64::new(0),
        };
        store.create_table(&store.vms).await?;
        store.create_table(&store.meta).await?;
        Ok(store)
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

    async fn create_table(&self, table: &TableClient) -> Result<(), StoreError> {
        match self
            .call("create table", table.create().into_future())
            .await
        {
            Ok(_) => Ok(()),
            Err(Fault::Status { status: 409, .. }) => Ok(()),
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
            Err(_) => Err(Fault::Store(StoreError::Unavailable(format!(
                "{what}: no answer within {} ms",
                self.timeout.as_millis()
            )))),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(what, &e)),
        }
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
        self.recreating("list", || self.list_once(which)).await
    }

    async fn insert(&self, vm: &VmRecord) -> Result<Written, StoreError> {
        let vm = normalize(vm)?;
        let body = to_entity(&vm)?;
        self.recreating("insert", || async {
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
        .await
    }

    async fn update(&self, vm: &VmRecord, etag: &Etag) -> Result<Written, StoreError> {
        let vm = normalize(vm)?;
        let body = to_entity(&vm)?;
        self.recreating("update", || async {
            let builder = self
                .vms
                .partition_key_client(vm.id.as_str())
                .entity_client(vm.id.as_str())
                .update(&body, IfMatchCondition::Etag(etag.0.clone().into()))
                .map_err(|e| Fault::Store(StoreError::Rejected(format!("update: {e}"))))?;
            self.count_write();
            match self.call("update", builder.into_future()).await {
                Ok(res) => Ok(Written::Done(Etag(res.etag.to_string()))),
                Err(f) if is_ambiguous(&f) => self.settle(&vm.id, Sent::Update(&vm, etag), f).await,
                Err(f) => lost_race(f),
            }
        })
        .await
    }

    async fn delete(&self, id: &VmId, etag: &Etag) -> Result<Written, StoreError> {
        self.recreating("delete", || async {
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
        .await
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
                self.create_table(&self.vms).await?;
                self.create_table(&self.meta).await?;
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
        let outcome = match (sent, now) {
            (Sent::Insert(_), None) => return Err(fault),
            (Sent::Update(_, named) | Sent::Delete(named), Some(row)) if row.etag == *named => {
                return Err(fault);
            }
            (Sent::Insert(vm) | Sent::Update(vm, _), Some(row)) if row.vm == *vm => {
                Written::Done(row.etag)
            }
            (Sent::Delete(named), None) => Written::Done(named.clone()),
            _ => Written::LostRace,
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
        Ok(Some(Versioned {
            vm,
            etag: Etag(res.etag.to_string()),
        }))
    }

    async fn list_once(&self, which: Rows<'_>) -> Result<Vec<Versioned>, Fault> {
        let mut query = self.vms.query();
        match which {
            Rows::All => {}
            Rows::InStates([]) => return Ok(Vec::new()),
            Rows::InStates(states) => query = query.filter(state_filter(states)),
        }
        let mut pages = query.into_stream::<RowFields>();
        let mut rows = Vec::new();
        loop {
            let page = match tokio::time::timeout(self.timeout, pages.next()).await {
                Err(_) => {
                    return Err(Fault::Store(StoreError::Unavailable(format!(
                        "list: no answer within {} ms",
                        self.timeout.as_millis()
                    ))));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(classify("list", &e)),
                Ok(Some(Ok(page))) => page,
            };
            for entity in &page.entities {
                let etag = entity.etag.as_ref().and_then(Value::as_str);
                match (parse_row(entity), etag) {
                    (Ok(vm), Some(etag)) if which.selects(vm.state) => rows.push(Versioned {
                        vm,
                        etag: Etag(etag.to_owned()),
                    }),
                    (Ok(_), Some(_)) => {}
                    (Ok(vm), None) => {
                        warn!(table = self.vms.table_name(), vm.id = %vm.id, "row without an ETag skipped");
                    }
                    (Err(why), _) => {
                        let key = entity
                            .row_key
                            .as_ref()
                            .and_then(Value::as_str)
                            .unwrap_or("?");
                        warn!(table = self.vms.table_name(), row_key = key, reason = %why, "row that is not a VM skipped");
                    }
                }
            }
        }
        Ok(rows)
    }
}

/// A write whose answer never came, as [`TableStore::settle`] reads it.
#[derive(Clone, Copy)]
enum Sent<'a> {
    Insert(&'a VmRecord),
    Update(&'a VmRecord, &'a Etag),
    Delete(&'a Etag),
}

/// A fault after which a write may or may not have been applied: no answer, a broken
/// connection, a timeout or an internal error of the service.
fn is_ambiguous(f: &Fault) -> bool {
    match f {
        Fault::Store(StoreError::Unavailable(_)) => true,
        Fault::Store(StoreError::Rejected(_)) => false,
        Fault::Status { status, .. } => *status == 408 || *status >= 500,
    }
}

/// A 404 for a row (not for the whole table).
fn is_missing_row(f: &Fault) -> bool {
    matches!(f, Fault::Status { status: 404, code } if code != "TableNotFound")
}

/// What a failed conditional write means: a stale ETag (412), a missing row (404) or an
/// existing key (409) is a lost race; anything else stays a fault.
fn lost_race(f: Fault) -> Result<Written, Fault> {
    match f {
        Fault::Status {
            status: 409 | 412, ..
        } => Ok(Written::LostRace),
        f if is_missing_row(&f) => Ok(Written::LostRace),
        f => Err(f),
    }
}

/// Classifies an SDK error without quoting it whole: its text can hold the request URL, and
/// with a SAS connection string the URL holds the token.
fn classify(what: &'static str, e: &azure_core::Error) -> Fault {
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code } => Fault::Status {
            status: u16::from(*status),
            code: error_code.clone().unwrap_or_default(),
        },
        ErrorKind::Io => Fault::Store(StoreError::Unavailable(format!(
            "{what}: cannot reach table storage ({})",
            root_cause(e)
        ))),
        ErrorKind::Credential => Fault::Store(StoreError::Rejected(format!(
            "{what}: the storage credentials cannot sign the request or get a token ({})",
            root_cause(e)
        ))),
        ErrorKind::DataConversion => Fault::Store(StoreError::Unavailable(format!(
            "{what}: table storage sent an answer that cannot be read"
        ))),
        _ => Fault::Store(StoreError::Unavailable(format!(
            "{what}: the request to table storage failed ({})",
            root_cause(e)
        ))),
    }
}

/// The innermost cause of an error (an OS or protocol error, which holds no URL).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if text.contains("://") {
        "connection failed".to_owned()
    } else {
        text
    }
}

/// The name of the table that holds the pool's record: `<table>meta` (shortened to fit).
pub fn meta_table_name(table: &str) -> String {
    let kept: String = table.chars().take(MAX_TABLE_NAME - 4).collect();
    format!("{kept}meta")
}

fn check_table_name(table: &str) -> Result<(), StoreError> {
    let ok = (3..=MAX_TABLE_NAME).contains(&table.len())
        && table.chars().all(|c| c.is_ascii_alphanumeric())
        && table.starts_with(|c: char| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Rejected(format!(
            "{table:?} is not a table name (3-63 letters and digits, starting with a letter)"
        )))
    }
}

fn parse_connection_string(raw: &str) -> Result<Target, StoreError> {
    // ConnectionString's own errors quote the whole string, key included: never pass them on.
    let cs = ConnectionString::new(raw).map_err(|_| {
        StoreError::Rejected(
            "the storage connection string is malformed: expected `UseDevelopmentStorage=true` or `Key=Value` pairs separated by `;` (AccountName, AccountKey or SharedAccessSignature, TableEndpoint, DefaultEndpointsProtocol, EndpointSuffix)".into(),
        )
    })?;
    if cs.use_development_storage == Some(true) && cs.table_endpoint.is_none() {
        return Ok(Target {
            location: CloudLocation::Emulator {
                address: "127.0.0.1".into(),
                port: 10002,
            },
            credentials: StorageCredentials::emulator(),
            describe: "Azurite at http://127.0.0.1:10002/devstoreaccount1".into(),
        });
    }
    let credentials = if cs.use_development_storage == Some(true) {
        StorageCredentials::emulator()
    } else {
        cs.storage_credentials().map_err(|_| {
            StoreError::Rejected(
                "the storage connection string has no credentials: set AccountName and AccountKey, or SharedAccessSignature".into(),
            )
        })?
    };
    let account = cs
        .account_name
        .map(str::to_owned)
        .or_else(|| {
            (cs.use_development_storage == Some(true))
                .then(|| azure_storage::EMULATOR_ACCOUNT.to_owned())
        })
        .unwrap_or_default();
    let uri = match cs.table_endpoint {
        Some(endpoint) => {
            let url = url::Url::parse(endpoint).map_err(|_| {
                StoreError::Rejected(
                    "TableEndpoint in the storage connection string is not a URL".into(),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https")
                || url.host_str().is_none()
                || url.query().is_some()
            {
                return Err(StoreError::Rejected(
                    "TableEndpoint in the storage connection string must be an http(s) URL without a query".into(),
                ));
            }
            endpoint.trim_end_matches('/').to_owned()
        }
        None => {
            if account.is_empty() {
                return Err(StoreError::Rejected(
                    "the storage connection string needs AccountName or TableEndpoint".into(),
                ));
            }
            let protocol = match cs.default_endpoints_protocol {
                Some(azure_storage::EndpointProtocol::Http) => "http",
                _ => "https",
            };
            let suffix = cs.endpoint_suffix.unwrap_or("core.windows.net");
            format!("{protocol}://{account}.table.{suffix}")
        }
    };
    let shown = if account.is_empty() {
        format!("Azure Table Storage at {uri}")
    } else {
        format!("Azure Table Storage account {account} at {uri}")
    };
    Ok(Target {
        location: CloudLocation::Custom { account, uri },
        credentials,
        describe: shown,
    })
}

/// `VM_State eq 'A' or VM_State eq 'B'`, from the fixed state names only.
fn state_filter(states: &[VmState]) -> String {
    states
        .iter()
        .map(|s| format!("{STATE_PROPERTY} eq '{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The row for `vm` (already normalised), in the schema of `docs/storage.md`.
fn to_entity(vm: &VmRecord) -> Result<Value, StoreError> {
    let mut m = Map::new();
    let key = Value::from(vm.id.as_str());
    m.insert("PartitionKey".into(), key.clone());
    m.insert("RowKey".into(), key);
    m.insert(STATE_PROPERTY.into(), vm.state.as_str().into());
    m.insert("Purpose".into(), vm.purpose.as_str().into());
    if let Some(op) = vm.operation {
        m.insert("Operation".into(), op.as_str().into());
    }
    m.insert("ResourceId".into(), vm.resource_id.clone().into());
    if let Some(ip) = &vm.public_ip {
        m.insert("PublicIp".into(), ip.clone().into());
    }
    put_int(&mut m, "Rooms", vm.rooms);
    put_time(&mut m, "LastReportAt", vm.last_report_at)?;
    put_time(&mut m, "StateChangedAt", Some(vm.state_changed_at))?;
    put_time(&mut m, "OperationSince", vm.operation_since)?;
    put_time(&mut m, "CreatedAt", Some(vm.created_at))?;
    put_time(&mut m, "ClaimedAt", vm.claimed_at)?;
    put_int(&mut m, "Attempts", vm.attempts);
    if let Some(e) = &vm.last_error {
        m.insert("LastError".into(), e.clone().into());
    }
    Ok(Value::Object(m))
}

/// An `Edm.Int32` when it fits, else an `Edm.Int64` (which JSON carries as a string).
fn put_int(m: &mut Map<String, Value>, name: &str, n: u32) {
    if i32::try_from(n).is_ok() {
        m.insert(name.into(), n.into());
    } else {
        m.insert(name.into(), n.to_string().into());
        m.insert(format!("{name}@odata.type"), "Edm.Int64".into());
    }
}

/// An `Edm.DateTime` with 7 fractional digits (the service keeps 100 ns ticks).
fn put_time(
    m: &mut Map<String, Value>,
    name: &str,
    t: Option<OffsetDateTime>,
) -> Result<(), StoreError> {
    if let Some(t) = t {
        m.insert(name.into(), format_time(t)?.into());
        m.insert(format!("{name}@odata.type"), "Edm.DateTime".into());
    }
    Ok(())
}

fn format_time(t: OffsetDateTime) -> Result<String, StoreError> {
    let t = t.to_offset(time::UtcOffset::UTC);
    if !(1601..=9999).contains(&t.year()) {
        return Err(StoreError::Rejected(format!(
            "time {t} is outside what table storage keeps (years 1601-9999)"
        )));
    }
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    ))
}

/// Reads a row as a VM; the error says which property is missing or wrong.
/// Where a row's properties are read from: a whole JSON map (a point read), or the
/// [`RowFields`] a query decodes.
trait Props {
    /// The property `name`, if present.
    fn prop(&self, name: &str) -> Option<&Value>;
}

impl Props for Map<String, Value> {
    fn prop(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// The properties of a VM row and nothing else, so a query does not build a map of every
/// property and annotation it returns. Each is a JSON value, so a row with a wrong type
/// still decodes and is then refused by [`parse_row`] alone (not the whole page).
#[derive(Debug, Default, serde::Deserialize)]
struct RowFields {
    #[serde(rename = "PartitionKey")]
    partition_key: Option<Value>,
    #[serde(rename = "RowKey")]
    row_key: Option<Value>,
    #[serde(rename = "VM_State")]
    state: Option<Value>,
    #[serde(rename = "Purpose")]
    purpose: Option<Value>,
    #[serde(rename = "Operation")]
    operation: Option<Value>,
    #[serde(rename = "ResourceId")]
    resource_id: Option<Value>,
    #[serde(rename = "PublicIp")]
    public_ip: Option<Value>,
    #[serde(rename = "Rooms")]
    rooms: Option<Value>,
    #[serde(rename = "LastReportAt")]
    last_report_at: Option<Value>,
    #[serde(rename = "StateChangedAt")]
    state_changed_at: Option<Value>,
    #[serde(rename = "OperationSince")]
    operation_since: Option<Value>,
    #[serde(rename = "CreatedAt")]
    created_at: Option<Value>,
    #[serde(rename = "ClaimedAt")]
    claimed_at: Option<Value>,
    #[serde(rename = "Attempts")]
    attempts: Option<Value>,
    #[serde(rename = "LastError")]
    last_error: Option<Value>,
    #[serde(rename = "odata.etag")]
    etag: Option<Value>,
}

impl Props for RowFields {
    fn prop(&self, name: &str) -> Option<&Value> {
        match name {
            "PartitionKey" => self.partition_key.as_ref(),
            "RowKey" => self.row_key.as_ref(),
            STATE_PROPERTY => self.state.as_ref(),
            "Purpose" => self.purpose.as_ref(),
            "Operation" => self.operation.as_ref(),
            "ResourceId" => self.resource_id.as_ref(),
            "PublicIp" => self.public_ip.as_ref(),
            "Rooms" => self.rooms.as_ref(),
            "LastReportAt" => self.last_report_at.as_ref(),
            "StateChangedAt" => self.state_changed_at.as_ref(),
            "OperationSince" => self.operation_since.as_ref(),
            "CreatedAt" => self.created_at.as_ref(),
            "ClaimedAt" => self.claimed_at.as_ref(),
            "Attempts" => self.attempts.as_ref(),
            "LastError" => self.last_error.as_ref(),
            "odata.etag" => self.etag.as_ref(),
            _ => None,
        }
    }
}

fn parse_row(m: &impl Props) -> Result<VmRecord, String> {
    let row_key = text(m, "RowKey")?;
    let id = VmId::parse(row_key).map_err(|e| format!("RowKey: {e}"))?;
    if text(m, "PartitionKey")? != row_key {
        return Err("PartitionKey differs from RowKey".into());
    }
    let state = text(m, STATE_PROPERTY)?;
    let state = VmState::parse(state)
        .ok_or_else(|| format!("{STATE_PROPERTY}: unknown state {state:?}"))?;
    let purpose = text(m, "Purpose")?;
    let purpose =
        Purpose::parse(purpose).ok_or_else(|| format!("Purpose: unknown purpose {purpose:?}"))?;
    let operation = match opt_text(m, "Operation")? {
        None => None,
        Some(op) => Some(Operation::parse(op).ok_or_else(|| format!("Operation: unknown {op:?}"))?),
    };
    Ok(VmRecord {
        id,
        state,
        purpose,
        operation,
        resource_id: text(m, "ResourceId")?.to_owned(),
        public_ip: opt_text(m, "PublicIp")?.map(str::to_owned),
        rooms: int(m, "Rooms")?.ok_or("Rooms: missing")?,
        last_report_at: time_of(m, "LastReportAt")?,
        state_changed_at: time_of(m, "StateChangedAt")?.ok_or("StateChangedAt: missing")?,
        operation_since: time_of(m, "OperationSince")?,
        created_at: time_of(m, "CreatedAt")?.ok_or("CreatedAt: missing")?,
        claimed_at: time_of(m, "ClaimedAt")?,
        attempts: int(m, "Attempts")?.ok_or("Attempts: missing")?,
        last_error: opt_text(m, "LastError")?.map(str::to_owned),
    })
}

fn text<'a>(m: &'a impl Props, name: &str) -> Result<&'a str, String> {
    opt_text(m, name)?.ok_or_else(|| format!("{name}: missing"))
}

fn opt_text<'a>(m: &'a impl Props, name: &str) -> Result<Option<&'a str>, String> {
    match m.prop(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{name}: expected a string, found {other}")),
    }
}

fn int(m: &impl Props, name: &str) -> Result<Option<u32>, String> {
    let bad = || format!("{name}: expected a whole number from 0 to {}", u32::MAX);
    match m.prop(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let n = n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX))
                        .map(|f| f as u64)
                })
                .ok_or_else(bad)?;
            u32::try_from(n).map(Some).map_err(|_| bad())
        }
        Some(Value::String(s)) => s.parse::<u32>().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

fn time_of(m: &impl Props, name: &str) -> Result<Option<OffsetDateTime>, String> {
    match opt_text(m, name)? {
        None => Ok(None),
        Some(s) => OffsetDateTime::parse(s, &Rfc3339)
            .map(Some)
            .map_err(|_| format!("{name}: {s:?} is not a date and time")),
    }
}

/// The property that holds a record's value.
const RECORD_VALUE: &str = "Value";

fn check_keys(kind: &str, key: &str) -> Result<(), StoreError> {
    check_record_key("kind", kind)?;
    check_record_key("key", key)
}

/// A record as a meta-table entity: its kind is the partition, its key the row.
fn record_entity(kind: &str, key: &str, value: &str) -> Result<Value, StoreError> {
    check_keys(kind, key)?;
    check_record_value(value)?;
    let mut m = Map::new();
    m.insert("PartitionKey".into(), kind.into());
    m.insert("RowKey".into(), key.into());
    m.insert(RECORD_VALUE.into(), value.into());
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmRecord {
        let mut vm = VmRecord::new_creating(
            VmId::parse("vm-1").unwrap(),
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm-1"
                .into(),
            Purpose::Buffer,
            time::macros::datetime!(2026-01-02 03:04:05.123456789 UTC),
        );
        vm.public_ip = Some("203.0.113.4".into());
        vm.last_error = Some("it's \"quoted\"".into());
        vm
    }

    #[test]
    fn rows_round_trip_through_the_schema() {
        let vm = normalize(&vm()).unwrap();
        let entity = to_entity(&vm).unwrap();
        assert_eq!(entity["VM_State"], "Creating");
        assert_eq!(entity["CreatedAt"], "2026-01-02T03:04:05.1234567Z");
        assert_eq!(entity["CreatedAt@odata.type"], "Edm.DateTime");
        assert!(entity.get("ClaimedAt").is_none());
        let fields: RowFields = serde_json::from_value(entity.clone()).unwrap();
        assert_eq!(parse_row(&fields).unwrap(), vm, "as a query decodes it");
        let Value::Object(m) = entity else {
            panic!("not an object")
        };
        assert_eq!(parse_row(&m).unwrap(), vm, "as a point read decodes it");
    }

    #[test]
    fn large_counts_go_as_int64() {
        let mut big = normalize(&vm()).unwrap();
        big.rooms = u32::MAX;
        let entity = to_entity(&big).unwrap();
        assert_eq!(entity["Rooms"], u32::MAX.to_string());
        assert_eq!(entity["Rooms@odata.type"], "Edm.Int64");
        let Value::Object(m) = entity else {
            panic!("not an object")
        };
        assert_eq!(parse_row(&m).unwrap().rooms, u32::MAX);
    }

    #[test]
    fn foreign_rows_are_named_not_panicked_on() {
        let good = match to_entity(&normalize(&vm()).unwrap()).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let cases: [(&str, Value); 6] = [
            ("VM_State", "running".into()),
            ("RowKey", "a/b".into()),
            ("Rooms", (-1).into()),
            ("Rooms", 1.5.into()),
            ("CreatedAt", "yesterday".into()),
            ("Purpose", 3.into()),
        ];
        for (name, value) in cases {
            let mut m = good.clone();
            m.insert(name.into(), value);
            let err = parse_row(&m).unwrap_err();
            assert!(
                err.contains(name) || err.contains("PartitionKey"),
                "{name}: {err}"
            );
            let fields: RowFields = serde_json::from_value(Value::Object(m)).unwrap();
            assert_eq!(
                parse_row(&fields).unwrap_err(),
                err,
                "a query decodes it too"
            );
        }
        let mut m = good.clone();
        m.remove("StateChangedAt");
        assert!(parse_row(&m).unwrap_err().contains("StateChangedAt"));
    }

    #[test]
    fn filters_name_states_only() {
        assert_eq!(
            state_filter(&[VmState::MarkedForDeallocation, VmState::Standby]),
            "VM_State eq 'MarkedForDeallocation' or VM_State eq 'Standby'"
        );
    }

    #[test]
    fn connection_strings_are_parsed_without_quoting_secrets() {
        let dev = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert!(dev.describe.contains("127.0.0.1:10002"));
        let key = "c2VjcmV0LWtleQ==";
        let custom = parse_connection_string(&format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};TableEndpoint=http://127.0.0.1:41234/devstoreaccount1/;"
        ))
        .unwrap();
        assert_eq!(
            custom.describe,
            "Azure Table Storage account devstoreaccount1 at http://127.0.0.1:41234/devstoreaccount1"
        );
        let real = parse_connection_string(&format!(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"
        ))
        .unwrap();
        assert_eq!(
            real.describe,
            "Azure Table Storage account acct at https://acct.table.core.windows.net"
        );
        for bad in [
            format!("AccountName=acct;AccountKey={key};Bogus=1"),
            format!("AccountKey={key}"),
            "AccountName=acct".to_owned(),
            format!("AccountName=acct;AccountKey={key};TableEndpoint=not a url"),
        ] {
            let err = match parse_connection_string(&bad) {
                Ok(_) => panic!("{bad} should be refused"),
                Err(e) => e.to_string(),
            };
            assert!(!err.contains(key), "{err}");
        }
    }

    #[test]
    fn meta_table_names_stay_valid() {
        assert_eq!(meta_table_name("vmpool"), "vmpoolmeta");
        let long = "a".repeat(63);
        assert_eq!(meta_table_name(&long).len(), 63);
        assert!(check_table_name("vmpool").is_ok());
        assert!(check_table_name("vm-pool").is_err());
    }

    #[test]
    fn records_are_meta_rows_keyed_by_kind_and_key() {
        let Value::Object(m) = record_entity("lease", "reconcile", "{}").unwrap() else {
            panic!("not an object")
        };
        assert_eq!(m["PartitionKey"], "lease");
        assert_eq!(m["RowKey"], "reconcile");
        assert_eq!(m[RECORD_VALUE], "{}");
        assert!(record_entity("a/b", "k", "").is_err());
        assert!(record_entity("k", "", "").is_err());
        assert!(record_entity("k", "k", &"x".repeat(MAX_RECORD_CHARS + 1)).is_err());
    }
}
