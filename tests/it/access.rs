//! Who may call what, and by which spelling: the standalone API key on every route but
//! `GET /` (the timer's `ReconcilePool` included), and routes matched ignoring case, as the
//! Functions host matches them.

use vmpool::store::{Rows, VmStore};

use crate::support::{SimApp, TestApp, spawn_sim};

const TIMER: &str = r#"{"Data":{"timer":{"IsPastDue":false}},"Metadata":{}}"#;

/// Every route with a method it accepts and a body it accepts.
const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("POST", "/api/CreateVM", None),
    (
        "POST",
        "/api/ReportGameRoomsNumber",
        Some(r#"{"vmId":"vmpool-none","rooms":1}"#),
    ),
    (
        "POST",
        "/api/MarkVMForDeallocation",
        Some(r#"{"vmId":"vmpool-none"}"#),
    ),
    ("GET", "/api/GetVM?vmId=vmpool-none", None),
    ("GET", "/api/GetAvailableVMs", None),
    ("GET", "/api/GetPoolStatus", None),
    ("GET", "/api/Metrics", None),
    ("GET", "/api/Dashboard", None),
    ("POST", "/ReconcilePool", Some(TIMER)),
];

/// No row was written and no reconcile pass recorded.
async fn untouched(sim: &SimApp) -> bool {
    sim.store.list(Rows::All).await.unwrap().is_empty()
        && vmpool::reconcile::load_meta(&*sim.store)
            .await
            .unwrap()
            .1
            .is_none()
}

async fn with_key(app: &TestApp, method: &str, path: &str, body: Option<&str>, key: &str) -> u16 {
    let mut req = app
        .http
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", app.base),
        )
        .header("x-functions-key", key);
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn with_a_key_every_route_but_the_probe_wants_it() {
    let sim = spawn_sim(&[("VMPOOL_API_KEY", "s3cret")]).await;
    let app = &sim.app;
    for (method, path, body) in ROUTES {
        let refused = app.send(method, path, *body).await;
        assert_eq!(refused.status, 401, "{method} {path}: {:?}", refused.json);
        assert_eq!(
            refused.json["error"]["code"], "Unauthorized",
            "{method} {path}"
        );
        for wrong in ["s3cre", "s3cret2", "S3CRET", ""] {
            assert_eq!(
                with_key(app, method, path, *body, wrong).await,
                401,
                "{method} {path} with {wrong:?}"
            );
        }
    }
    // Nothing was done by the refused calls.
    assert!(untouched(&sim).await);
    assert_eq!(
        app.send("GET", "/", None).await.status,
        200,
        "the host's probe"
    );
    // Unknown routes and wrong methods give nothing away without the key either.
    assert_eq!(app.send("GET", "/api/Nothing", None).await.status, 401);
    assert_eq!(app.send("GET", "/api/CreateVM", None).await.status, 401);

    for (method, path, body) in ROUTES {
        let status = with_key(app, method, path, *body, "s3cret").await;
        assert!(
            status != 401 && status < 500,
            "{method} {path} with the key: {status}"
        );
    }
    let by_query = app
        .send("POST", "/ReconcilePool?code=s3cret", Some(TIMER))
        .await;
    assert_eq!(by_query.status, 200, "{:?}", by_query.json);
    assert_eq!(by_query.json["ReturnValue"]["ok"], true);
}

#[tokio::test]
async fn reconcile_pool_without_the_key_is_refused() {
    let sim = spawn_sim(&[("VMPOOL_API_KEY", "s3cret"), ("VMPOOL_MIN_STANDBY", "2")]).await;
    let refused = sim.app.reconcile().await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json["error"]["code"], "Unauthorized");
    // The pass did not run: no buffer VM was created, no pass recorded.
    assert!(untouched(&sim).await);
    let allowed = sim
        .app
        .send("POST", "/ReconcilePool?code=s3cret", Some(TIMER))
        .await;
    assert_eq!(allowed.json["ReturnValue"]["ok"], true);
    assert!(!untouched(&sim).await, "with the key the pass runs");
}

#[tokio::test]
async fn routes_match_in_any_case() {
    let sim = spawn_sim(&[]).await;
    let app = &sim.app;
    let created = app.send("POST", "/api/createvm", None).await;
    assert_eq!(created.status, 202, "{:?}", created.json);
    assert_eq!(created.json["action"], "created");
    let id = created.json["vm"]["vmId"].as_str().unwrap().to_owned();

    let status = app.send("GET", "/API/GETPOOLSTATUS", None).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json["counts"]["Creating"], 1);
    assert_eq!(
        app.send("GET", "/api/getavailablevms", None).await.status,
        200
    );
    sim.clock.advance(time::Duration::minutes(5));
    let timer = app.send("POST", "/reconcilepool", Some(TIMER)).await;
    assert_eq!(timer.json["ReturnValue"]["ok"], true, "{:?}", timer.json);
    assert_eq!(app.available().await.json["vms"][0]["vmId"], id.as_str());
    // The query string survives the respelling.
    let reported = app
        .send(
            "POST",
            &format!("/api/reportgameroomsnumber?vmId={id}&rooms=3"),
            None,
        )
        .await;
    assert_eq!(reported.status, 200, "{:?}", reported.json);
    assert_eq!(reported.json["vm"]["rooms"], 3);
    let marked = app
        .send(
            "POST",
            "/Api/MarkVmForDeallocation",
            Some(&format!(r#"{{"vmId":"{id}"}}"#)),
        )
        .await;
    assert_eq!(marked.json["action"], "marked", "{:?}", marked.json);

    // A wrong method on a respelled route is still vmpool's 405, with Allow.
    let wrong = app.send("GET", "/api/createvm", None).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.headers["allow"], "POST");
    // Unknown paths keep their JSON 404.
    for unknown in [
        "/api/createvms",
        "/api/create",
        "/api/createvm/x",
        "/nothing",
    ] {
        let got = app.send("POST", unknown, None).await;
        assert_eq!(got.status, 404, "{unknown}");
        assert_eq!(got.json["error"]["code"], "NotFound", "{unknown}");
    }
}

#[tokio::test]
async fn every_known_path_is_served() {
    let sim = spawn_sim(&[]).await;
    for path in vmpool::http::routing::PATHS {
        for spelled in [
            path.to_string(),
            path.to_ascii_lowercase(),
            path.to_ascii_uppercase(),
        ] {
            let got = sim.app.send("OPTIONS", &spelled, None).await;
            assert_eq!(got.status, 405, "{spelled} is not routed: {:?}", got.json);
        }
    }
}
