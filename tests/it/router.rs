//! Router tests without a socket: every route and every error mapping, through `oneshot`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use time::Duration;
use tower::ServiceExt;
use vmpool::compute::ComputeError;
use vmpool::compute::sim::{Fault, SimOp};
use vmpool::domain::{Purpose, VmId, VmRecord, VmState};
use vmpool::store::{Rows, VmStore};

use crate::support::{SimParts, sim_parts};

struct Got {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
}

async fn call(parts: &SimParts, method: &str, uri: &str, body: &str) -> Got {
    call_with(parts, Request::builder().method(method).uri(uri), body).await
}

async fn call_with(parts: &SimParts, req: axum::http::request::Builder, body: &str) -> Got {
    let app = vmpool::http::app(parts.state.clone());
    let res = app
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{status} not JSON: {:?}", String::from_utf8_lossy(&bytes)));
    Got {
        status,
        headers,
        json,
    }
}

fn assert_error(got: &Got, status: u16, code: &str) {
    assert_eq!(got.status.as_u16(), status, "{}", got.json);
    assert_eq!(got.json["error"]["code"], code, "{}", got.json);
    assert!(!got.json["error"]["message"].as_str().unwrap().is_empty());
}

/// A snapshot of the table, to prove a refused request changed nothing.
async fn table(parts: &SimParts) -> Vec<(String, VmState, u32, String)> {
    let mut rows: Vec<_> = parts
        .store
        .list(Rows::All)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.vm.id.to_string(), r.vm.state, r.vm.rooms, r.etag.0))
        .collect();
    rows.sort();
    rows
}

async fn seed(parts: &SimParts, name: &str, state: VmState, rooms: u32) -> VmId {
    let id = VmId::parse(name).unwrap();
    let mut vm = VmRecord::new_creating(
        id.clone(),
        format!("/x/{name}"),
        Purpose::Matchmaker,
        parts.clock_now(),
    );
    vm.state = state;
    vm.rooms = rooms;
    vm.operation = None;
    let vm = vm.placed(
        "default",
        &vmpool::config::PoolPolicy::default().pools.all()[0].build,
    );
    parts.store.insert(&vm).await.unwrap();
    id
}

trait Now {
    fn clock_now(&self) -> time::OffsetDateTime;
}
impl Now for SimParts {
    fn clock_now(&self) -> time::OffsetDateTime {
        use vmpool::clock::Clock;
        self.clock.now()
    }
}

#[tokio::test]
async fn probe_and_every_route_answer() {
    let parts = sim_parts(&[("VMPOOL_GAME_PORTS", "7777,7778")]);
    assert_eq!(call(&parts, "GET", "/", "").await.status, 200);

    let created = call(&parts, "POST", "/api/CreateVM", "").await;
    assert_eq!(created.status, 202);
    assert_eq!(created.json["vm"]["ports"], json!([7777, 7778]));
    assert_eq!(created.json["vm"]["publicIp"], Value::Null);
    assert_eq!(
        call(&parts, "POST", "/api/CreateVM", "{}").await.status,
        202
    );
    for key in [
        "vmId",
        "state",
        "publicIp",
        "ports",
        "rooms",
        "resourceId",
        "stateChangedAt",
    ] {
        assert!(created.json["vm"].get(key).is_some(), "VM lacks {key}");
    }
    time::OffsetDateTime::parse(
        created.json["vm"]["stateChangedAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    let none = call(&parts, "GET", "/api/GetAvailableVMs", "").await;
    assert_eq!(none.json, json!({"vms": []}));

    parts.clock.advance(Duration::minutes(3));
    let timer = call(
        &parts,
        "POST",
        "/ReconcilePool",
        r#"{"Data":{"timer":{"IsPastDue":true}},"Metadata":{}}"#,
    )
    .await;
    assert_eq!(timer.status, 200);
    assert_eq!(timer.json["ReturnValue"]["summary"]["completed"], 2);
    assert_eq!(timer.json["Logs"][0], "timer is past due");

    let pool = call(&parts, "GET", "/api/GetPoolStatus", "").await;
    assert_eq!(pool.json["counts"]["Running"], 2);
    assert_eq!(pool.json["counts"]["Failed"], 0);
    assert_eq!(pool.json["counts"].as_object().unwrap().len(), 7);
    assert!(pool.json["lastReconcileAt"].is_string());

    let id = created.json["vm"]["vmId"].as_str().unwrap();
    let one = call(&parts, "GET", &format!("/api/GetVM?vmId={id}"), "").await;
    assert_eq!(one.status, 200, "{:?}", one.json);
    assert_eq!(one.json.as_object().unwrap().len(), 1, "{:?}", one.json);
    assert_eq!(one.json["vm"]["vmId"], id);
    assert_eq!(one.json["vm"]["state"], "Running");
    assert!(one.json["vm"]["publicIp"].is_string(), "{:?}", one.json);
    let q = call(
        &parts,
        "POST",
        &format!("/api/ReportGameRoomsNumber?vmId={id}&rooms=5"),
        "",
    )
    .await;
    assert_eq!(
        (q.status.as_u16(), q.json["vm"]["rooms"].as_u64()),
        (200, Some(5))
    );
    let m = call(
        &parts,
        "POST",
        &format!("/api/MarkVMForDeallocation?vmId={id}"),
        "",
    )
    .await;
    assert_eq!(m.json["action"], "marked");
    let again = call(
        &parts,
        "POST",
        "/api/MarkVMForDeallocation",
        &json!({"vmId": id}).to_string(),
    )
    .await;
    assert_eq!(
        (again.status.as_u16(), again.json["action"].as_str()),
        (200, Some("alreadyMarked"))
    );
}

#[tokio::test]
async fn bad_input_gets_400_and_changes_nothing() {
    let parts = sim_parts(&[]);
    seed(&parts, "vm-a", VmState::Running, 2).await;
    let before = table(&parts).await;
    let long = "x".repeat(65);
    let cases: Vec<(&str, String)> = vec![
        (
            "/api/ReportGameRoomsNumber",
            r#"{"vmId": "vm-a", "rooms": "#.into(),
        ),
        (
            "/api/ReportGameRoomsNumber",
            r#"{"vmId": "vm-a", "rooms": -1}"#.into(),
        ),
        (
            "/api/ReportGameRoomsNumber",
            r#"{"vmId": "vm-a", "rooms": 2.5}"#.into(),
        ),
        (
            "/api/ReportGameRoomsNumber",
            r#"{"vmId": "vm-a", "rooms": "2"}"#.into(),
        ),
        (
            "/api/ReportGameRoomsNumber",
            r#"{"vmId": "vm-a", "rooms": 100001}"#.into(),
        ),
        ("/api/ReportGameRoomsNumber", r#"{"vmId": "vm-a"}"#.into()),
        ("/api/ReportGameRoomsNumber", r#"{"rooms": 1}"#.into()),
        (
            "/api/ReportGameRoomsNumber",
            format!(r#"{{"vmId": "{long}", "rooms": 1}}"#),
        ),
        (
            "/api/ReportGameRoomsNumber",
            r#"{"vmId": "vm/a", "rooms": 1}"#.into(),
        ),
        (
            "/api/ReportGameRoomsNumber",
            r#"{"vmId": "vm'a", "rooms": 1}"#.into(),
        ),
        (
            "/api/ReportGameRoomsNumber",
            r#"{"vmId": "", "rooms": 1}"#.into(),
        ),
        ("/api/MarkVMForDeallocation", r#"{"vmId": null}"#.into()),
        ("/api/MarkVMForDeallocation", "not json".into()),
        ("/api/MarkVMForDeallocation", "[]".into()),
        ("/api/CreateVM", "{".into()),
        ("/api/CreateVM", "42".into()),
        ("/ReconcilePool", "{{".into()),
    ];
    for (uri, body) in cases {
        let got = call(&parts, "POST", uri, &body).await;
        assert_error(&got, 400, "InvalidInput");
    }
    let q = call(
        &parts,
        "POST",
        "/api/ReportGameRoomsNumber?vmId=vm-a&rooms=-3",
        "",
    )
    .await;
    assert_error(&q, 400, "InvalidInput");
    for uri in [
        "/api/GetVM",
        "/api/GetVM?vmId=",
        "/api/GetVM?vmId=vm%2Fa",
        "/api/GetVM?vmId=vm-a&vmId=vm-b",
    ] {
        let got = call(&parts, "GET", uri, "").await;
        assert_error(&got, 400, "InvalidInput");
        assert!(
            got.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("vmId"),
            "{uri}: {:?}",
            got.json
        );
    }
    assert_eq!(
        table(&parts).await,
        before,
        "a refused request changed the table"
    );
    assert!(
        parts.cloud.list().unwrap().is_empty(),
        "a refused request reached ARM"
    );
}

#[tokio::test]
async fn unknown_vms_routes_and_methods() {
    let parts = sim_parts(&[]);
    assert_error(
        &call(
            &parts,
            "POST",
            "/api/MarkVMForDeallocation",
            r#"{"vmId":"nobody"}"#,
        )
        .await,
        404,
        "NotFound",
    );
    assert_error(
        &call(
            &parts,
            "POST",
            "/api/ReportGameRoomsNumber",
            r#"{"vmId":"nobody","rooms":0}"#,
        )
        .await,
        404,
        "NotFound",
    );
    assert_error(
        &call(&parts, "GET", "/api/NoSuchFunction", "").await,
        404,
        "NotFound",
    );
    let nobody = call(&parts, "GET", "/api/GetVM?vmId=nobody", "").await;
    assert_error(&nobody, 404, "NotFound");
    assert_eq!(nobody.json["error"]["message"], "no VM with vmId nobody");
    let wrong = call(&parts, "GET", "/api/CreateVM", "").await;
    assert_error(&wrong, 405, "MethodNotAllowed");
    assert!(wrong.headers["allow"].to_str().unwrap().contains("POST"));
    assert_eq!(
        wrong.json["error"]["message"],
        "/api/CreateVM accepts only POST"
    );
    let wrong = call(&parts, "POST", "/api/GetAvailableVMs", "").await;
    assert_error(&wrong, 405, "MethodNotAllowed");
    assert!(wrong.headers["allow"].to_str().unwrap().contains("GET"));
    assert_eq!(
        wrong.json["error"]["message"],
        "/api/GetAvailableVMs accepts only GET and HEAD"
    );
    // Respelled, the message names the route as the router knows it.
    let wrong = call(&parts, "DELETE", "/api/getvm", "").await;
    assert_error(&wrong, 405, "MethodNotAllowed");
    assert_eq!(
        wrong.json["error"]["message"],
        "/api/GetVM accepts only GET and HEAD"
    );
    let big = format!(r#"{{"vmId":"a","pad":"{}"}}"#, "x".repeat(100_000));
    assert_error(
        &call(&parts, "POST", "/api/MarkVMForDeallocation", &big).await,
        413,
        "PayloadTooLarge",
    );
}

#[tokio::test]
async fn operations_the_state_forbids_get_409_naming_the_state() {
    let parts = sim_parts(&[]);
    seed(&parts, "vm-f", VmState::Failed, 0).await;
    seed(&parts, "vm-d", VmState::Deallocated, 0).await;
    let before = table(&parts).await;
    let got = call(
        &parts,
        "POST",
        "/api/MarkVMForDeallocation",
        r#"{"vmId":"vm-f"}"#,
    )
    .await;
    assert_error(&got, 409, "Conflict");
    assert!(
        got.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Failed")
    );
    let got = call(
        &parts,
        "POST",
        "/api/ReportGameRoomsNumber",
        r#"{"vmId":"vm-d","rooms":3}"#,
    )
    .await;
    assert_error(&got, 409, "Conflict");
    assert!(
        got.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Deallocated")
    );
    assert_eq!(table(&parts).await, before);
}

#[tokio::test]
async fn api_key_guards_api_routes_only() {
    let parts = sim_parts(&[("VMPOOL_API_KEY", "s3cret")]);
    assert_error(
        &call(&parts, "GET", "/api/GetAvailableVMs", "").await,
        401,
        "Unauthorized",
    );
    let wrong = Request::builder()
        .method("GET")
        .uri("/api/GetAvailableVMs")
        .header("x-functions-key", "nope");
    assert_error(&call_with(&parts, wrong, "").await, 401, "Unauthorized");
    let ok = Request::builder()
        .method("GET")
        .uri("/api/GetAvailableVMs")
        .header("x-functions-key", "s3cret");
    assert_eq!(call_with(&parts, ok, "").await.status, 200);
    assert_eq!(
        call(&parts, "GET", "/api/GetAvailableVMs?code=s3cret", "")
            .await
            .status,
        200
    );
    assert_eq!(
        call(&parts, "GET", "/", "").await.status,
        200,
        "the host's probe needs no key"
    );
}

#[tokio::test]
async fn a_full_pool_answers_capacity_exhausted_with_retry_after() {
    let parts = sim_parts(&[("VMPOOL_MAX_VMS", "1")]);
    assert_eq!(call(&parts, "POST", "/api/CreateVM", "").await.status, 202);
    let before = table(&parts).await;
    let full = call(&parts, "POST", "/api/CreateVM", "").await;
    assert_error(&full, 503, "CapacityExhausted");
    assert!(
        full.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(table(&parts).await, before);
}

#[tokio::test]
async fn storage_down_answers_unavailable_with_retry_after_and_changes_nothing() {
    let parts = sim_parts(&[]);
    seed(&parts, "vm-a", VmState::Running, 1).await;
    parts.store.set_unavailable(true);
    for (method, uri, body) in [
        ("POST", "/api/CreateVM", ""),
        (
            "POST",
            "/api/ReportGameRoomsNumber",
            r#"{"vmId":"vm-a","rooms":2}"#,
        ),
        ("POST", "/api/MarkVMForDeallocation", r#"{"vmId":"vm-a"}"#),
        ("GET", "/api/GetAvailableVMs", ""),
        ("GET", "/api/GetPoolStatus", ""),
        ("GET", "/api/GetVM?vmId=vm-a", ""),
    ] {
        let got = call(&parts, method, uri, body).await;
        assert_error(&got, 503, "Unavailable");
        assert!(got.headers.contains_key("retry-after"), "{uri}");
    }
    let timer = call(&parts, "POST", "/ReconcilePool", "{}").await;
    assert_eq!(
        (timer.status.as_u16(), &timer.json["ReturnValue"]["ok"]),
        (200, &json!(false))
    );
    parts.store.set_unavailable(false);
    assert_eq!(
        table(&parts).await[0].2,
        1,
        "nothing changed while storage was down"
    );
    assert!(
        parts.cloud.list().unwrap().is_empty(),
        "no VM was created without its row"
    );
}

#[tokio::test]
async fn arm_down_answers_unavailable_and_the_reconciler_finishes_the_create() {
    let parts = sim_parts(&[]);
    parts.cloud.inject(Fault::Refuse(
        SimOp::Create,
        ComputeError::Throttled {
            retry_after: std::time::Duration::from_secs(17),
        },
    ));
    let got = call(&parts, "POST", "/api/CreateVM", "").await;
    assert_error(&got, 503, "Unavailable");
    assert_eq!(got.headers["retry-after"], "17");
    // The intent is kept for the warm buffer; the reconciler re-issues the create.
    let rows = parts.store.list(Rows::All).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].vm.state, rows[0].vm.purpose),
        (VmState::Creating, Purpose::Buffer)
    );
    parts.clock.advance(Duration::seconds(61));
    call(&parts, "POST", "/ReconcilePool", "{}").await;
    parts.clock.advance(Duration::minutes(3));
    call(&parts, "POST", "/ReconcilePool", "{}").await;
    let pool = call(&parts, "GET", "/api/GetPoolStatus", "").await;
    assert_eq!(pool.json["counts"]["Standby"], 1, "{}", pool.json);
    // The next CreateVM takes it at once.
    let next = call(&parts, "POST", "/api/CreateVM", "").await;
    assert_eq!(
        (next.status.as_u16(), next.json["action"].as_str()),
        (200, Some("standby"))
    );

    // A refusal for quota records the failure on the never-provisioned VM, and the pool
    // answers that it has no capacity.
    parts.cloud.inject(Fault::Refuse(
        SimOp::Create,
        ComputeError::Rejected {
            code: "QuotaExceeded".into(),
            message: "no cores left".into(),
        },
    ));
    let got = call(&parts, "POST", "/api/CreateVM", "").await;
    assert_error(&got, 503, "CapacityExhausted");
    assert!(got.headers.contains_key("retry-after"));
    assert!(
        got.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("QuotaExceeded")
    );
    let failed: Vec<_> = parts
        .store
        .list(Rows::InStates(&[VmState::Failed]))
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]
            .vm
            .last_error
            .as_deref()
            .unwrap()
            .contains("no cores left")
    );
}

#[tokio::test]
async fn fifty_concurrent_creates_over_ten_reclaimable_vms() {
    let parts = Arc::new(sim_parts(&[("VMPOOL_MAX_VMS", "100")]));
    for i in 0..10 {
        seed(
            &parts,
            &format!("marked-{i}"),
            VmState::MarkedForDeallocation,
            1,
        )
        .await;
    }
    let calls = (0..50).map(|_| {
        let parts = parts.clone();
        tokio::spawn(async move { call(&parts, "POST", "/api/CreateVM", "").await.json })
    });
    let answers: Vec<Value> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut ids: Vec<&str> = answers
        .iter()
        .map(|a| a["vm"]["vmId"].as_str().unwrap())
        .collect();
    let reclaimed = answers
        .iter()
        .filter(|a| a["action"] == "reclaimed")
        .count();
    assert_eq!(reclaimed, 10);
    assert!(
        answers
            .iter()
            .filter(|a| a["action"] == "reclaimed")
            .all(|a| a["vm"]["vmId"].as_str().unwrap().starts_with("marked-"))
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50, "a VM was handed out twice");
    let rows = parts.store.list(Rows::All).await.unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(
        rows.iter()
            .filter(|r| r.vm.state == VmState::Running)
            .count(),
        10
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.vm.state == VmState::Creating)
            .count(),
        40
    );
}

#[tokio::test]
async fn pool_status_reports_the_buffer_target_breaker_and_last_pass() {
    let parts = sim_parts(&[("VMPOOL_MIN_STANDBY", "2")]);
    let now = parts.clock_now();
    vmpool::reconcile::save_meta(
        parts.store.as_ref(),
        &vmpool::reconcile::PoolMeta {
            last_reconcile_at: Some(now),
            last_reconcile_summary: "reconciled: 1 completed".into(),
            pools: [(
                "default".to_owned(),
                vmpool::reconcile::BufferState {
                    buffer_target: 6,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    // The breaker keeps a record of its own, which CreateVM changes too.
    let policy = vmpool::config::PoolPolicy {
        breaker_failures: 3,
        ..Default::default()
    };
    for _ in 0..3 {
        vmpool::breaker::update(parts.store.as_ref(), "default", |b| {
            b.refused(
                vmpool::breaker::Refused::Create,
                "QuotaExceeded",
                now,
                &policy,
            );
        })
        .await
        .unwrap();
    }
    let got = call(&parts, "GET", "/api/GetPoolStatus", "").await;
    assert_eq!(got.json["buffer"], json!({"minStandby": 2, "target": 6}));
    assert_eq!(got.json["circuitBreaker"]["open"], true);
    assert_eq!(got.json["circuitBreaker"]["consecutiveCreateFailures"], 3);
    assert!(
        got.json["circuitBreaker"]["reason"]
            .as_str()
            .unwrap()
            .contains("QuotaExceeded")
    );
    assert_eq!(got.json["lastReconcileSummary"], "reconciled: 1 completed");
    // Once the cool-down has passed the breaker reads closed.
    parts.clock.advance(Duration::minutes(11));
    let got = call(&parts, "GET", "/api/GetPoolStatus", "").await;
    assert_eq!(got.json["circuitBreaker"]["open"], false);
    assert_eq!(got.json["circuitBreaker"]["reason"], Value::Null);
}

/// Until storage has answered once (start-up while the app's roles propagate), the probe is
/// answered and says why; every other route, the timer's included, is 503 `Unavailable` with
/// `Retry-After` and the reason, after the key check; nothing changes. Then everything serves.
#[tokio::test]
async fn until_storage_answers_only_the_probe_is_served_and_the_rest_is_503_with_the_reason() {
    let parts = sim_parts(&[("VMPOOL_API_KEY", "s3cret")]);
    let reason = "VMPOOL_STORAGE: table storage refused the request: create table on vmpool: HTTP 403 AuthorizationPermissionMismatch";
    parts.state.readiness.set_starting(reason, 4);

    let probe = call(&parts, "GET", "/", "").await;
    assert_eq!(probe.status, 200);
    assert_eq!(probe.json["status"], "starting", "{}", probe.json);
    assert_eq!(probe.json["reason"], reason);
    assert_error(
        &call(&parts, "GET", "/api/GetAvailableVMs", "").await,
        401,
        "Unauthorized",
    );
    let mut paths: Vec<(String, String)> = vmpool::http::routes()
        .into_iter()
        .filter(|r| r.path != "/")
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    paths.push(("GET".into(), "/api/NoSuchRoute".into()));
    for (method, path) in &paths {
        let got = call(&parts, method, &format!("{path}?code=s3cret"), "{}").await;
        assert_error(&got, 503, "Unavailable");
        assert_eq!(got.headers["retry-after"], "4", "{method} {path}");
        let message = got.json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("starting") && message.contains(reason),
            "{method} {path}: {message}"
        );
    }
    assert!(table(&parts).await.is_empty(), "nothing changed");

    parts.state.readiness.set_ready();
    let probe = call(&parts, "GET", "/", "").await;
    assert_eq!(probe.json, json!({"status": "ok", "service": "vmpool"}));
    let created = call(&parts, "POST", "/api/CreateVM?code=s3cret", "").await;
    assert_eq!(created.status, 202, "{}", created.json);
}
