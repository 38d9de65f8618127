//! Test helpers. Every app and rig the tests use is built here:
//!
//! - `apps`: vmpool served over real sockets, on the in-memory store with simulated ARM
//!   (`sim_parts`, `spawn_sim`), on any store such as Azurite's tables with simulated ARM
//!   (`spawn_on`, `spawn_instance`, `table_store`), and with the real ARM client against the
//!   ARM fake (`spawn_arm`, `spawn_wired`);
//! - `rig`: a pool and its reconciler without HTTP, over the same three sets of parts;
//! - `arm`: the ARM fake over HTTP and the ARM client's settings for it;
//! - `azurite`: the storage emulator as a child process;
//! - `log`: a sink that keeps what the log subscriber writes;
//! - `lossy`: a proxy that loses Azurite's answers on demand.
//!
//! This file holds the served app itself, with typed request helpers.

pub mod apps;
pub mod arm;
pub mod azurite;
pub mod log;
pub mod lossy;
pub mod rig;

pub use apps::{
    SimApp, SimParts, config, sim_cloud, sim_parts, spawn_arm, spawn_instance, spawn_on, spawn_sim,
    spawn_wired, table_store, table_store_named,
};
pub use lossy::LossyProxy;
pub use rig::Rig;

use serde_json::Value;
use tokio::net::TcpListener;
use vmpool::http::AppState;

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
