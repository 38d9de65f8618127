//! Operations routes: Prometheus metrics, the dashboard page, and their function definitions.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use time::Duration;
use vmpool::domain::{Purpose, VmId, VmRecord};
use vmpool::metrics::{MeteredStore, Metrics};
use vmpool::store::memory::MemoryStore;
use vmpool::store::{Etag, VmStore, Written};

use crate::support::log::Captured;
use crate::support::spawn_sim;

async fn text(app: &crate::support::TestApp, path: &str) -> (u16, String, String) {
    let res = app
        .http
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let ctype = res.headers()["content-type"].to_str().unwrap().to_owned();
    (status, ctype, res.text().await.unwrap())
}

/// The value of one sample line `name{labels} value` in the exposition.
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_createvm_arm_table_and_reconcile_and_read_gauges_at_scrape() {
    let sim = spawn_sim(&[("VMPOOL_MAX_VMS", "2"), ("VMPOOL_API_KEY", "k")]).await;
    let app = &sim.app;
    for _ in 0..2 {
        assert_eq!(
            app.send("POST", "/api/CreateVM?code=k", None).await.status,
            202
        );
    }
    let full = app.send("POST", "/api/CreateVM?code=k", None).await;
    assert_eq!(full.status, 503);
    sim.clock.advance(Duration::minutes(5));
    let pass = app
        .send(
            "POST",
            "/ReconcilePool?code=k",
            Some(r#"{"Data":{},"Metadata":{}}"#),
        )
        .await;
    assert_eq!(pass.json["ReturnValue"]["ok"], true);
    let vm_id = pass_vm(app).await;
    for _ in 0..3 {
        let got = app
            .send("GET", &format!("/api/GetVM?vmId={vm_id}&code=k"), None)
            .await;
        assert_eq!(got.status, 200);
    }
    let nobody = app.send("GET", "/api/GetVM?vmId=nobody&code=k", None).await;
    assert_eq!(nobody.status, 404);
    assert_eq!(
        app.send("POST", "/api/getvm?code=k", None).await.status,
        405
    );

    assert_eq!(
        text(app, "/api/Metrics").await.0,
        401,
        "metrics want the key"
    );
    let (status, ctype, m) = text(app, "/api/Metrics?code=k").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");

    assert_eq!(sample(&m, r#"vmpool_vms{state="Running"}"#), 2.0);
    assert_eq!(sample(&m, r#"vmpool_vms{state="Creating"}"#), 0.0);
    assert_eq!(sample(&m, r#"vmpool_vms{state="Failed"}"#), 0.0);
    assert_eq!(sample(&m, "vmpool_max_vms"), 2.0);
    assert_eq!(sample(&m, "vmpool_breaker_open"), 0.0);
    assert!(sample(&m, "vmpool_buffer_target") >= 0.0);
    assert_eq!(sample(&m, "vmpool_pool_status_up"), 1.0);
    assert_eq!(
        sample(&m, r#"vmpool_createvm_total{action="created",code="OK"}"#),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            r#"vmpool_createvm_total{action="none",code="CapacityExhausted"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&m, r#"vmpool_createvm_duration_seconds_count{result="ok"}"#),
        2.0
    );
    assert!(m.contains(r#"vmpool_createvm_duration_seconds_bucket{result="ok",le="0.1"}"#));
    assert_eq!(
        sample(
            &m,
            r#"vmpool_arm_calls_total{operation="create",outcome="ok"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            r#"vmpool_arm_calls_total{operation="list",outcome="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"vmpool_table_calls_total{operation="insert",outcome="ok"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(&m, r#"vmpool_reconcile_passes_total{result="ok"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"vmpool_reconcile_duration_seconds_count{result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&m, r#"vmpool_reconcile_actions_total{kind="completed"}"#),
        2.0
    );
    assert!(m.contains("# HELP vmpool_arm_calls_total ARM calls by operation and outcome"));
    // Every answer by operation and status, the router's own (401, 405) included.
    for (series, want) in [
        (
            r#"vmpool_requests_total{operation="GetVM",status="200"}"#,
            3.0,
        ),
        (
            r#"vmpool_requests_total{operation="GetVM",status="404"}"#,
            1.0,
        ),
        (
            r#"vmpool_requests_total{operation="GetVM",status="405"}"#,
            1.0,
        ),
        (
            r#"vmpool_requests_total{operation="CreateVM",status="202"}"#,
            2.0,
        ),
        (
            r#"vmpool_requests_total{operation="CreateVM",status="503"}"#,
            1.0,
        ),
        (
            r#"vmpool_requests_total{operation="Metrics",status="401"}"#,
            1.0,
        ),
        (
            r#"vmpool_requests_total{operation="ReconcilePool",status="200"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&m, series), want, "{series}");
    }
}

/// The vmId of a Running VM of the pool.
async fn pass_vm(app: &crate::support::TestApp) -> String {
    let available = app.send("GET", "/api/GetAvailableVMs?code=k", None).await;
    available.json["vms"][0]["vmId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_lost_race_is_counted_as_a_table_outcome_and_as_a_race() {
    let metrics = Arc::new(Metrics::new());
    let store = MeteredStore::new(Arc::new(MemoryStore::new()), metrics.clone());
    let id = VmId::parse("vmpool-race").unwrap();
    let vm = VmRecord::new_creating(
        id,
        "/x".into(),
        Purpose::Matchmaker,
        time::OffsetDateTime::UNIX_EPOCH,
    );
    assert!(matches!(store.insert(&vm).await.unwrap(), Written::Done(_)));
    assert_eq!(store.insert(&vm).await.unwrap(), Written::LostRace);
    let stale = Etag("stale".into());
    assert_eq!(store.update(&vm, &stale).await.unwrap(), Written::LostRace);
    let m = metrics.render_counters();
    assert_eq!(
        sample(
            &m,
            r#"vmpool_table_calls_total{operation="insert",outcome="lost_race"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&m, r#"vmpool_table_lost_races_total{operation="insert"}"#),
        1.0
    );
    assert_eq!(
        sample(&m, r#"vmpool_table_lost_races_total{operation="update"}"#),
        1.0
    );
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page_behind_the_key() {
    let sim = spawn_sim(&[("VMPOOL_API_KEY", "k")]).await;
    assert_eq!(text(&sim.app, "/api/Dashboard").await.0, 401);
    let (status, ctype, page) = text(&sim.app, "/api/Dashboard?code=k").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(page.contains("GetPoolStatus"), "it polls GetPoolStatus");
    assert!(page.contains(r#"get("code")"#), "it forwards ?code=");
    for outside in ["http://", "https://", "//cdn", "<link rel=\"stylesheet\""] {
        assert!(!page.contains(outside), "the page loads {outside}");
    }
}

fn definition(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("function-definitions")
        .join(name)
        .join("function.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn the_operations_functions_are_defined_and_routed_as_the_host_forwards_them() {
    let sim = spawn_sim(&[("FUNCTIONS_CUSTOMHANDLER_PORT", "7071")]).await;
    for (name, auth, route, ctype) in [
        ("OpenApi", "anonymous", "openapi.json", "application/json"),
        ("Metrics", "function", "Metrics", "text/plain"),
        ("Dashboard", "function", "Dashboard", "text/html"),
    ] {
        let def = definition(name);
        let trigger = &def["bindings"][0];
        assert_eq!(trigger["type"], "httpTrigger", "{name}");
        assert_eq!(trigger["authLevel"], auth, "{name}");
        assert_eq!(trigger["methods"], serde_json::json!(["get"]), "{name}");
        assert_eq!(def["bindings"][1]["type"], "http", "{name}");
        let defined_route = trigger["route"].as_str().unwrap_or(name);
        assert_eq!(defined_route, route, "{name}");
        let (status, got, _) = text(&sim.app, &format!("/api/{route}?code=host-checked")).await;
        assert_eq!(status, 200, "{name}");
        assert!(got.starts_with(ctype), "{name}: {got}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn each_reconcile_pass_writes_one_json_log_line_with_its_figures() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let parts = crate::support::sim_parts(&[]);
    parts.state.pool.create_vm().await.unwrap();
    parts.clock.advance(Duration::minutes(5));
    let summary = parts.state.reconcile_pass().await.unwrap();
    assert_eq!(summary.completed, 1);

    let text = captured.text();
    let passes: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["message"] == "reconcile pass measured")
        .collect();
    assert_eq!(passes.len(), 1, "{text}");
    let pass = &passes[0];
    assert_eq!(pass["ok"], true);
    assert_eq!(pass["completed"], 1);
    assert_eq!(pass["buffer_target"], summary.buffer_target);
    assert_eq!(pass["errors"], 0);
    assert!(pass["duration_ms"].is_u64());
}

#[tokio::test]
async fn with_storage_down_metrics_still_answer_and_say_so() {
    let sim = spawn_sim(&[]).await;
    assert_eq!(sim.app.create_vm().await.status, 202);
    sim.store.set_unavailable(true);
    assert_eq!(sim.app.create_vm().await.status, 503);
    assert_eq!(sim.app.reconcile().await.json["ReturnValue"]["ok"], false);
    let (status, _, m) = text(&sim.app, "/api/Metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&m, "vmpool_pool_status_up"), 0.0);
    assert_eq!(
        sample(
            &m,
            r#"vmpool_createvm_total{action="none",code="Unavailable"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&m, r#"vmpool_reconcile_passes_total{result="error"}"#),
        1.0
    );
    assert!(
        sample(
            &m,
            r#"vmpool_table_calls_total{operation="list",outcome="unavailable"}"#
        ) >= 1.0
    );
    sim.store.set_unavailable(false);
    let (_, _, m) = text(&sim.app, "/api/Metrics").await;
    assert_eq!(sample(&m, "vmpool_pool_status_up"), 1.0);
    assert_eq!(sample(&m, r#"vmpool_vms{state="Creating"}"#), 1.0);
}

/// The listings reach the store's paged and counting calls through the metered store, never
/// a listing of the whole table (which a decorator falling back to `list` would make).
#[tokio::test]
async fn listings_use_the_stores_pages_and_counts_through_the_metered_store() {
    let sim = spawn_sim(&[]).await;
    let app = &sim.app;
    assert_eq!(app.create_vm().await.status, 202);
    let calls = |m: &str, op: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("vmpool_table_calls_total{")
                    && l.contains(&format!("operation=\"{op}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let (_, _, before) = text(app, "/api/Metrics").await;
    assert_eq!(app.available().await.status, 200);
    assert_eq!(
        app.send("GET", "/api/GetPoolStatus?vms=false", None)
            .await
            .status,
        200
    );
    let (_, _, after) = text(app, "/api/Metrics").await;
    assert_eq!(
        calls(&after, "list_page") - calls(&before, "list_page"),
        1.0,
        "{after}"
    );
    assert_eq!(
        calls(&after, "count_groups") - calls(&before, "count_groups"),
        2.0,
        "GetPoolStatus and the scrape count: {after}"
    );
    assert_eq!(
        calls(&after, "list"),
        calls(&before, "list"),
        "no listing of the table: {after}"
    );
}
