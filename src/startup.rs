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
use crate::http::{AppState, app};
use crate::pool::Pool;
use crate::reconcile::Reconciler;
use crate::store::VmStore;
use crate::store::memory::MemoryStore;
use crate::store::table::TableStore;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A port could not be set up (storage unreachable at start-up, bad credentials...).
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

/// Sets up tracing: `RUST_LOG` filter (default `info`), text or JSON lines.
pub fn init_tracing(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // azure_core 0.21 logs each request at debug/trace with a Headers Debug that redacts every
    // header except Authorization: keep its pipeline above debug so no bearer token is logged.
    for directive in [
        "azure_core::policies=info",
        "azure_core::policies::transport=info",
        "azure_core::policies::retry_policies=info",
    ] {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    // Colours only on a terminal: the Functions host and log collectors capture stdout.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Builds the ports from the configuration.
pub async fn ports(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<(Arc<dyn VmStore>, Arc<dyn Compute>), StartupError> {
    let store: Arc<dyn VmStore> = match &config.storage {
        StorageConfig::Memory => Arc::new(MemoryStore::new()),
        StorageConfig::Azure(secret) => Arc::new(
            TableStore::connect(secret.expose(), &config.table)
                .await
                .map_err(|e| StartupError::Port(format!("VMPOOL_STORAGE: {e}")))?,
        ),
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
    Ok((store, compute))
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
        reconciler: Reconciler::new(pool.clone()),
        pool,
        policy,
        clock,
        metrics,
        api_key: config.api_key.clone(),
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
    served
}

/// Builds everything from `config` and serves until SIGTERM or Ctrl+C.
pub async fn serve(config: Config) -> Result<(), StartupError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (store, compute) = ports(&config, clock.clone()).await?;
    let addr = std::net::SocketAddr::new(config.bind, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    info!(
        "vmpool listening on http://{addr}; storage: {}; compute: {}; reconcile: {}",
        store.describe(),
        compute.describe(),
        config
            .reconcile_every
            .map_or("by the Functions timer only".to_owned(), |d| format!(
                "every {}s",
                d.as_secs()
            ))
    );
    let state = state(&config, store, compute, clock);
    run(listener, state, config.reconcile_every, shutdown_signal())
        .await
        .map_err(|e| StartupError::Port(format!("server failed: {e}")))
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
