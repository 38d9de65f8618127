//! What the storage benchmarks share: the seeded rows, latency samples, timing, and a raw
//! Table client tuned as `TableStore` tunes its own (with the raw query and conditional
//! update they compare against), so the raw calls and vmpool's are measured alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::{RetryOptions, TransportOptions};
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_data_tables::prelude::{IfMatchCondition, TableClient};
use azure_storage::{CloudLocation, StorageCredentials};
use futures::StreamExt;
use serde_json::{Map, Value};
use time::macros::datetime;
use vmpool::domain::{Operation, Purpose, VmId, VmRecord, VmState};

/// A benchmark's result: any error ends it with its message.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A seeded matchmaker VM named `name`, settled in `state` (only a `Deallocating` one has an
/// operation in flight), with a public IP unless deallocated, hosting `rooms` rooms.
pub fn vm(name: &str, state: VmState, rooms: u32) -> VmRecord {
    let mut vm = VmRecord::new_creating(
        VmId::parse(name).expect("a valid name"),
        format!(
            "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}"
        ),
        Purpose::Matchmaker,
        datetime!(2026-01-01 00:00 UTC),
    );
    vm.state = state;
    vm.operation = (state == VmState::Deallocating).then_some(Operation::Deallocate);
    vm.public_ip = (state != VmState::Deallocated).then(|| "203.0.113.9".to_owned());
    vm.rooms = rooms;
    vm.placed(
        vmpool::config::DEFAULT_POOL,
        &vmpool::config::PoolPolicy::default().pools.all()[0].build,
    )
}

/// Latencies of one measured call.
#[derive(Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Adds one latency.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// The `p`th percentile.
    pub fn pct(&self, p: usize) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }

    /// One printed line: p50, p99 and, beside `raw`, the ratio of the p50s.
    #[allow(dead_code, reason = "not every benchmark prints this way")]
    pub fn line(&self, label: &str, raw: Option<&Samples>) -> String {
        let mut line = format!(
            "  {label:<44} p50 {:>8.2} ms  p99 {:>8.2} ms",
            ms(self.pct(50)),
            ms(self.pct(99))
        );
        if let Some(raw) = raw {
            line.push_str(&format!(
                "  ratio p50 {:.2}",
                self.pct(50).as_secs_f64() / raw.pct(50).as_secs_f64()
            ));
        }
        line
    }
}

/// The samples per figure: `BENCH_ITERATIONS`, or `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends `request` and reads its answer as JSON.
pub async fn json(request: reqwest::RequestBuilder) -> reqwest::Result<Value> {
    request.send().await?.json::<Value>().await
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Awaits `fut` and adds how long it took to `samples`.
pub async fn timed<T>(samples: &mut Samples, fut: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = fut.await;
    samples.push(started.elapsed());
    out
}

/// A client for the raw calls on Azurite at `port`, tuned as `TableStore` tunes its own (no
/// retries, a deadline of `timeout` a call).
pub fn raw_table(port: u16, account: &str, table: &str, timeout: Duration) -> Res<TableClient> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    Ok(TableServiceClientBuilder::with_location(
        CloudLocation::Custom {
            account: account.into(),
            uri: format!("http://127.0.0.1:{port}/{account}"),
        },
        StorageCredentials::emulator(),
    )
    .retry(RetryOptions::none())
    .transport(TransportOptions::new(Arc::new(http)))
    .build()
    .table_client(table))
}

/// Every row of `table` (matching `filter`, if any), all pages.
#[allow(dead_code, reason = "not every benchmark uses it")]
pub async fn raw_query(
    table: &TableClient,
    filter: Option<&'static str>,
) -> Res<Vec<Map<String, Value>>> {
    let mut query = table.query();
    if let Some(filter) = filter {
        query = query.filter(filter);
    }
    let mut pages = query.into_stream::<Map<String, Value>>();
    let mut rows = Vec::new();
    while let Some(page) = pages.next().await {
        rows.extend(page?.entities);
    }
    Ok(rows)
}

/// The raw row for an update: what was read, minus the metadata the service added; and the
/// etag it was read with.
pub fn raw_body(mut row: Map<String, Value>) -> (Value, String) {
    let etag = row
        .get("odata.etag")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    row.retain(|k, _| !k.starts_with("odata.") && k != "Timestamp" && !k.starts_with("Timestamp@"));
    (Value::Object(row), etag)
}

/// Writes `row` back to `table` after `change`, on condition of the etag it was read with;
/// its key and the body written.
#[allow(dead_code, reason = "not every benchmark uses it")]
pub async fn raw_update(
    table: &TableClient,
    row: Map<String, Value>,
    change: impl FnOnce(&mut Value),
) -> Res<(String, Value)> {
    let (mut body, etag) = raw_body(row);
    change(&mut body);
    let key = body["RowKey"].as_str().unwrap_or_default().to_owned();
    table
        .partition_key_client(&key)
        .entity_client(&key)
        .update(&body, IfMatchCondition::Etag(etag.into()))?
        .await?;
    Ok((key, body))
}
