//! Test helpers: an app over real sockets with typed request helpers.

pub mod apps;
pub mod azurite;

pub use apps::{config, sim_cloud, spawn_instance, spawn_on};

use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpListener;
use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::Compute;
use vmpool::compute::sim::{Latencies, SimCloud, SimulatedCompute};
use vmpool::config::Config;
use vmpool::http::AppState;
use vmpool::store::VmStore;
use vmpool::store::memory::MemoryStore;

/// A running vmpool on a loopback port.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A plain HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl TestApp {
    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"))
        };
        Answer {
            status,
            headers,
            json,
        }
    }

    pub async fn create_vm(&self) -> Answer {
        self.send("POST", "/api/CreateVM", None).await
    }

    pub async fn mark(&self, vm_id: &str) -> Answer {
        self.send(
            "POST",
            "/api/MarkVMForDeallocation",
            Some(&serde_json::json!({ "vmId": vm_id }).to_string()),
        )
        .await
    }

    pub async fn report(&self, vm_id: &str, rooms: u32) -> Answer {
        self.send(
            "POST",
            "/api/ReportGameRoomsNumber",
            Some(&serde_json::json!({ "vmId": vm_id, "rooms": rooms }).to_string()),
        )
        .await
    }

    pub async fn available(&self) -> Answer {
        self.send("GET", "/api/GetAvailableVMs", None).await
    }

    pub async fn status(&self) -> Answer {
        self.send("GET", "/api/GetPoolStatus", None).await
    }

    pub async fn reconcile(&self) -> Answer {
        self.send(
            "POST",
            "/ReconcilePool",
            Some(r#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}"#),
        )
        .await
    }
}

/// Serves `state` on a free loopback port.
pub async fn serve(state: AppState) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = state.clone();
    tokio::spawn(async move {
        vmpool::startup::run(listener, served, None, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        base,
        http: reqwest::Client::new(),
        state,
        stop: Some(stop),
    }
}

/// The embedded default (memory store, simulated ARM) on a manual clock.
pub struct SimApp {
    pub app: TestApp,
    pub clock: Arc<ManualClock>,
    pub cloud: Arc<SimCloud>,
    pub store: Arc<MemoryStore>,
}

/// The parts of the embedded default, not yet served.
pub struct SimParts {
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub cloud: Arc<SimCloud>,
    pub store: Arc<MemoryStore>,
}

/// vmpool's state over the in-memory store and simulated ARM on a manual clock,
/// configured by `vars`.
pub fn sim_parts(vars: &[(&str, &str)]) -> SimParts {
    let map: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let config = Config::from_source(&map).unwrap();
    let clock = Arc::new(ManualClock::default());
    let latencies = match &config.compute {
        vmpool::config::ComputeConfig::Simulated(l) => *l,
        vmpool::config::ComputeConfig::Arm(_) => Latencies::default(),
    };
    let cloud = Arc::new(SimCloud::new(clock.clone() as Arc<dyn Clock>, latencies, 7));
    let store = Arc::new(MemoryStore::new());
    let compute: Arc<dyn Compute> = Arc::new(SimulatedCompute::new(cloud.clone(), "test"));
    let state = vmpool::startup::state(
        &config,
        store.clone() as Arc<dyn VmStore>,
        compute,
        clock.clone(),
    );
    SimParts {
        state,
        clock,
        cloud,
        store,
    }
}

/// vmpool over the in-memory store and simulated ARM, configured by `vars`, served.
pub async fn spawn_sim(vars: &[(&str, &str)]) -> SimApp {
    let parts = sim_parts(vars);
    SimApp {
        app: serve(parts.state).await,
        clock: parts.clock,
        cloud: parts.cloud,
        store: parts.store,
    }
}
