//! Wiring: from a [`Config`] to the ports, the router and the standalone reconcile loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::{Clock, SystemClock};
use crate::compute::Compute;
use crate::compute::arm::{ArmCompute, ArmOptions};
use crate::compute::sim::{SimCloud, SimulatedCompute};
use crate::config::{ComputeConfig, Config, LogFormat, StorageConfig};
use crate::http::readiness::Readiness;
use crate::http::{AppState, app};
use crate::pool::Pool;
use crate::reconcile::Reconciler;
use crate::store::VmStore;
use crate::store::memory::MemoryStore;
use crate::store::table::{TableOptions, TableStore};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A port could not be set up (a storage setting that cannot work; from [`ports`], also
    /// storage unreachable or refusing the credential).
    #[error("{0}")]
    Port(String),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether an event of `target` at `level` may be written, whatever `RUST_LOG` says. The Azure
/// SDK crates log each request's URL (a SAS signature is in its query) and headers (the
/// `Authorization` bearer token is not redacted) at debug and trace: they stay at info or above.
pub fn allowed_whatever_rust_log_says(target: &str, level: &tracing::Level) -> bool {
    !target.starts_with("azure_") || *level <= tracing::Level::INFO
}

/// Sets up tracing: `RUST_LOG` filter (default `info`), capped for the Azure SDK crates by
/// [`allowed_whatever_rust_log_says`]; text or JSON lines.
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let rust_log = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Both must agree, so no directive in RUST_LOG, however specific, lifts the cap.
    let filter = rust_log.and(filter_fn(|meta| {
        allowed_whatever_rust_log_says(meta.target(), meta.level())
    }));
    // Colours only on a terminal: the Functions host and log collectors capture stdout.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let lines = tracing_subscriber::fmt::layer().with_ansi(ansi);
    let registry = tracing_subscriber::registry();
    let _ = match format {
        LogFormat::Text => registry.with(lines.with_filter(filter)).try_init(),
        LogFormat::Json => registry
            .with(lines.json().flatten_event(true).with_filter(filter))
            .try_init(),
    };
}

/// The ports, built without a call to storage, and what must succeed before they serve.
pub struct Opened {
    /// The VM table.
    pub store: Arc<dyn VmStore>,
    /// The ARM port.
    pub compute: Arc<dyn Compute>,
    /// `None` when the store needs no preparation (the in-memory table).
    pub preparation: Option<Preparation>,
}

/// What start-up must do before the store serves: reach Azure Table Storage with the
/// configured credential and create the tables (see [`TableStore::prepare`]).
pub struct Preparation {
    store: Arc<TableStore>,
    setting: String,
}

impl Preparation {
    /// One attempt; an error names the storage setting and says what storage answered.
    pub async fn attempt(&self) -> Result<(), StartupError> {
        self.store
            .prepare()
            .await
            .map_err(|e| StartupError::Port(format!("{}: {e}", self.setting)))
    }
}

/// Builds the ports from the configuration without calling storage or ARM: only a setting
/// that cannot work fails here.
pub fn open_ports(config: &Config, clock: Arc<dyn Clock>) -> Result<Opened, StartupError> {
    let table = |setting: &str, opened: Result<TableStore, crate::store::StoreError>| {
        opened
            .map(|store| {
                let store = Arc::new(store);
                let preparation = Preparation {
                    store: store.clone(),
                    setting: setting.to_owned(),
                };
                (store as Arc<dyn VmStore>, Some(preparation))
            })
            .map_err(|e| StartupError::Port(format!("{setting}: {e}")))
    };
    let (store, preparation) = match &config.storage {
        StorageConfig::Memory => (Arc::new(MemoryStore::new()) as Arc<dyn VmStore>, None),
        StorageConfig::Azure(secret) => table(
            "VMPOOL_STORAGE",
            TableStore::open(secret.expose(), &config.table, TableOptions::default()),
        )?,
        StorageConfig::Identity(identity) => table(identity.setting, identity.open(&config.table))?,
    };
    let compute: Arc<dyn Compute> = match &config.compute {
        ComputeConfig::Simulated(latencies) => {
            let cloud = Arc::new(SimCloud::new(clock.clone(), *latencies, rand::random()));
            Arc::new(SimulatedCompute::new(cloud, config.table.clone()))
        }
        ComputeConfig::Arm(arm) => Arc::new(
            ArmCompute::new(arm, &config.table, ArmOptions::default())
                .map_err(|e| StartupError::Port(format!("VMPOOL_COMPUTE=arm: {e}")))?,
        ),
    };
    Ok(Opened {
        store,
        compute,
        preparation,
    })
}

/// Builds the ports from the configuration and prepares the store once: an error if storage
/// does not answer now. (The binary does not wait: see [`serve`].)
pub async fn ports(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<(Arc<dyn VmStore>, Arc<dyn Compute>), StartupError> {
    let opened = open_ports(config, clock)?;
    if let Some(preparation) = &opened.preparation {
        preparation.attempt().await?;
    }
    Ok((opened.store, opened.compute))
}

/// How long start-up waits after its `failures`-th failed attempt to reach storage (counting
/// from 0): half a second, doubling, at most 15 s, so a role assignment that takes minutes to
/// apply is noticed within 15 s of it applying.
pub fn retry_delay(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(500);
    const MOST: Duration = Duration::from_secs(15);
    FIRST
        .checked_mul(1u32.checked_shl(failures).unwrap_or(u32::MAX))
        .map_or(MOST, |d| d.min(MOST))
}

/// Tries `preparation` until it succeeds, waiting [`retry_delay`] between attempts; until
/// then `readiness` holds the last failure, which every route but `GET /` answers with.
pub async fn prepare_until_ready(preparation: Preparation, readiness: Readiness) {
    let mut failures = 0u32;
    loop {
        match preparation.attempt().await {
            Ok(()) => {
                readiness.set_ready();
                if failures > 0 {
                    info!(
                        failed_attempts = failures,
                        "table storage answers now; every route serves"
                    );
                }
                return;
            }
            Err(e) => {
                let wait = retry_delay(failures);
                readiness.set_starting(e.to_string(), wait.as_secs_f64().ceil() as u64);
                warn!(
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "table storage does not answer yet (a new role assignment can take minutes to apply); every route but GET / answers 503 until it does"
                );
                failures = failures.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The application state over the given ports.
pub fn state(
    config: &Config,
    store: Arc<dyn VmStore>,
    compute: Arc<dyn Compute>,
    clock: Arc<dyn Clock>,
) -> AppState {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let (store, compute) = crate::metrics::metered(store, compute, &metrics);
    let policy = Arc::new(config.policy.clone());
    let pool = Arc::new(Pool::new(store, compute, clock.clone(), policy.clone()));
    AppState {
        // A few reconcile periods: the loop's, or the Functions timer's (every 10 s).
        reconciler: Reconciler::new(pool.clone()).with_lease_ttl(crate::reconcile::lease_ttl_for(
            config
                .reconcile_every
                .unwrap_or(std::time::Duration::from_secs(10)),
        )),
        pool,
        policy,
        clock,
        metrics,
        api_key: config.api_key.clone(),
        limits: crate::http::Limits {
            request_timeout: config.request_timeout,
            max_concurrent_requests: config.max_concurrent_requests,
        },
        readiness: Readiness::ready(),
    }
}

/// Runs a reconcile pass every `every` until `stop` is cancelled; a pass in progress is
/// finished first.
pub async fn reconcile_loop(state: AppState, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                if !state.readiness.is_ready() {
                    tracing::debug!("reconcile pass skipped: table storage does not answer yet");
                    continue;
                }
                if let Err(e) = state.reconcile_pass().await {
                    warn!(error = %e, "reconcile pass failed; retrying next interval");
                }
            }
        }
    }
}

/// Serves `state` on `listener` until `shutdown` resolves; the standalone reconcile loop
/// runs beside it when `reconcile_every` is set.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    reconcile_every: Option<Duration>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let reconciler = state.reconciler.clone();
    let looper = reconcile_every
        .map(|every| tokio::spawn(reconcile_loop(state.clone(), every, stop.clone())));
    let stop_serving = stop.clone();
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop_serving.cancel();
        })
        .await;
    stop.cancel();
    if let Some(looper) = looper {
        let _ = looper.await;
    }
    // Nothing runs a pass any more: the next instance need not wait for the lease to run out.
    reconciler.release().await;
    served
}

/// Builds everything from `config` and serves until SIGTERM or Ctrl+C. It listens at once:
/// storage is reached in the background (retried with [`retry_delay`]), and until it answers
/// every route but `GET /` answers 503, so the Functions host sees a live handler rather than
/// one that exits and restarts while the app's roles propagate.
pub async fn serve(config: Config) -> Result<(), StartupError> {
    for warning in &config.warnings {
        warn!("{warning}");
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let opened = open_ports(&config, clock.clone())?;
    let addr = std::net::SocketAddr::new(config.bind, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    info!(
        "vmpool listening on http://{addr} ({}); storage: {}; compute: {}; reconcile: {}",
        match (config.functions_host, config.api_key.is_some()) {
            (true, _) => "under the Functions host, which checks function keys",
            (false, true) => "standalone; API key required",
            (false, false) => "standalone; no API key",
        },
        opened.store.describe(),
        opened.compute.describe(),
        config
            .reconcile_every
            .map_or("by the Functions timer only".to_owned(), |d| format!(
                "every {}s",
                d.as_secs()
            ))
    );
    let mut state = state(&config, opened.store, opened.compute, clock);
    let preparing = opened.preparation.map(|preparation| {
        state.readiness = Readiness::starting("table storage has not answered yet");
        tokio::spawn(prepare_until_ready(preparation, state.readiness.clone()))
    });
    let served = run(listener, state, config.reconcile_every, shutdown_signal()).await;
    if let Some(preparing) = preparing {
        preparing.abort();
    }
    served.map_err(|e| StartupError::Port(format!("server failed: {e}")))
}

/// Resolves on SIGTERM (what the Functions host and containers send) or Ctrl+C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn storage_is_tried_again_soon_at_first_and_then_at_most_every_15_seconds() {
        let delays: Vec<u128> = (0..8).map(|n| retry_delay(n).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        for failures in [31, 32, 33, u32::MAX] {
            assert_eq!(retry_delay(failures), Duration::from_secs(15), "{failures}");
        }
    }

    #[test]
    fn the_azure_sdk_never_logs_below_info() {
        for target in [
            "azure_core::http_client::reqwest",
            "azure_core::policies::transport",
            "azure_identity",
            "azure_data_tables::operations",
            "azure_mgmt_compute",
        ] {
            assert!(
                !allowed_whatever_rust_log_says(target, &Level::DEBUG),
                "{target}"
            );
            assert!(
                !allowed_whatever_rust_log_says(target, &Level::TRACE),
                "{target}"
            );
            assert!(
                allowed_whatever_rust_log_says(target, &Level::INFO),
                "{target}"
            );
            assert!(
                allowed_whatever_rust_log_says(target, &Level::WARN),
                "{target}"
            );
        }
        assert!(allowed_whatever_rust_log_says(
            "vmpool::pool",
            &Level::TRACE
        ));
        assert!(allowed_whatever_rust_log_says(
            "tower_http::trace",
            &Level::DEBUG
        ));
    }
}
