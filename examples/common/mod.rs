//! What the storage benchmarks share: latency samples, timing, and a raw Table client tuned
//! as `TableStore` tunes its own, so the raw calls and vmpool's are measured alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::{RetryOptions, TransportOptions};
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_data_tables::prelude::TableClient;
use azure_storage::{CloudLocation, StorageCredentials};

/// A benchmark's result: any error ends it with its message.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

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
