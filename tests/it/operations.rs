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

    // The counts are the pool's record's: the pass's listing and what the pass changed.
    assert_eq!(sample(&m, r#"vmpool_vms{state="Running"}"#), 2.0);
    assert_eq!(sample(&m, r#"vmpool_vms{state="Creating"}"#), 0.0);
    assert!(sample(&m, "vmpool_pool_counted_at_timestamp_seconds") > 0.0);
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
            r#"vmpool_table_calls_total{operation="sample",outcome="unavailable"}"#
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

/// Unix seconds of an RFC 3339 time in a JSON answer.
fn unix(v: &Value) -> f64 {
    let t = time::OffsetDateTime::parse(
        v.as_str().unwrap_or_else(|| panic!("not a time: {v}")),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    t.unix_timestamp_nanos() as f64 / 1e9
}

#[tokio::test]
async fn an_instance_that_never_reconciles_shows_the_pools_passes_from_the_record() {
    use vmpool::compute::ComputeError;
    use vmpool::compute::sim::{Fault, SimOp};

    use crate::support::{config, sim_cloud, spawn_instance, table_store};

    // Two instances of one pool, as Flex runs them: the timer's, which reconciles, and an
    // HTTP one, which never does and answers the scrapes and the dashboard.
    let store = table_store().await;
    let other: Arc<dyn VmStore> = Arc::new(
        vmpool::store::table::TableStore::connect(
            &crate::support::azurite::Azurite::shared().connection_string(),
            store.table_name(),
        )
        .await
        .unwrap(),
    );
    let vars = [("VMPOOL_MAX_VMS", "5")];
    let clock = Arc::new(vmpool::clock::ManualClock::default());
    let cloud = sim_cloud(&config(&vars), clock.clone());
    let timer = spawn_instance(store.clone(), &vars, clock.clone(), cloud.clone()).await;
    let http = spawn_instance(other, &vars, clock.clone(), cloud.clone()).await;

    for _ in 0..2 {
        assert_eq!(http.app.create_vm().await.status, 202);
    }
    clock.advance(Duration::minutes(5));
    let pass = timer.app.reconcile().await;
    assert_eq!(pass.json["ReturnValue"]["ok"], true, "{:?}", pass.json);

    let status = http.app.status().await.json;
    assert_eq!(status["lastReconcileOk"], true, "{status}");
    assert!(status["lastReconcileStartedAt"].is_string(), "{status}");
    assert_eq!(status["lastSuccessAt"], status["lastReconcileAt"]);
    assert_eq!(status["countsFrom"], "record");
    assert_eq!(status["countedAt"], status["lastReconcileStartedAt"]);
    let (code, _, page) = text(&http.app, "/api/Dashboard").await;
    assert_eq!(code, 200);
    for shown in ["lastReconcileOk", "lastReconcileStartedAt", "countedAt"] {
        assert!(page.contains(shown), "the dashboard shows {shown}");
    }

    let (_, _, m) = text(&http.app, "/api/Metrics").await;
    assert_eq!(sample(&m, "vmpool_pool_last_pass_ok"), 1.0);
    assert_eq!(
        sample(&m, "vmpool_pool_last_pass_start_timestamp_seconds"),
        unix(&status["lastReconcileStartedAt"])
    );
    assert_eq!(
        sample(&m, "vmpool_pool_last_pass_end_timestamp_seconds"),
        unix(&status["lastReconcileAt"])
    );
    let success = sample(&m, "vmpool_pool_last_success_timestamp_seconds");
    assert_eq!(success, unix(&status["lastSuccessAt"]));
    assert_eq!(
        sample(&m, r#"vmpool_pool_last_pass_actions{kind="completed"}"#),
        2.0,
        "the timer's pass completed the two VMs"
    );
    assert_eq!(
        sample(&m, r#"vmpool_vms{state="Running"}"#),
        2.0,
        "counted by the timer's pass"
    );
    for (state, n) in status["counts"].as_object().unwrap() {
        let series = format!("vmpool_vms{{state=\"{state}\"}}");
        assert_eq!(sample(&m, &series), n.as_f64().unwrap(), "{state}");
    }
    assert_eq!(sample(&m, "vmpool_pool_observation_suspect"), 0.0);
    assert_eq!(sample(&m, "vmpool_breaker_open"), 0.0);
    assert!(
        !m.contains("vmpool_reconcile_passes_total{"),
        "this instance ran no pass of its own"
    );
    let (_, _, own) = text(&timer.app, "/api/Metrics").await;
    assert_eq!(
        sample(&own, r#"vmpool_reconcile_passes_total{result="ok"}"#),
        1.0
    );

    // A pass that fails is recorded too.
    clock.advance(Duration::minutes(1));
    cloud.inject(Fault::Refuse(
        SimOp::Read,
        ComputeError::Unavailable("ARM is down".into()),
    ));
    let failed = timer.app.reconcile().await;
    assert_eq!(failed.json["ReturnValue"]["ok"], false, "{:?}", failed.json);
    let status = http.app.status().await.json;
    assert_eq!(status["lastReconcileOk"], false, "{status}");
    assert!(
        status["lastReconcileError"]
            .as_str()
            .unwrap()
            .contains("ARM is down"),
        "{status}"
    );
    let (_, _, m) = text(&http.app, "/api/Metrics").await;
    assert_eq!(sample(&m, "vmpool_pool_last_pass_ok"), 0.0);
    assert_eq!(
        sample(&m, "vmpool_pool_last_success_timestamp_seconds"),
        success,
        "the last success is still the first pass"
    );
    assert!(sample(&m, "vmpool_pool_last_pass_end_timestamp_seconds") > success);
}
