//! The HTTP layer: the routes the README lists, translating requests into pool
//! operations and pool outcomes into JSON. It holds no rules of its own.

pub mod error;
pub mod input;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tower_http::trace::TraceLayer;
use tracing::{error, info};

use crate::config::PoolPolicy;
use crate::domain::{VmRecord, VmState};
use crate::pool::{Changed, Created, Pool};
use crate::reconcile::Reconciler;
use crate::secret::Secret;
pub use error::ApiError;

/// The most a request body may hold.
const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The pool's operations.
    pub pool: Arc<Pool>,
    /// The reconciler, for the timer invocation.
    pub reconciler: Reconciler,
    /// Standalone API key for `/api/*`.
    pub api_key: Option<Secret>,
}

/// A VM as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmView<'a> {
    vm_id: &'a str,
    state: VmState,
    public_ip: Option<&'a str>,
    ports: &'a [u16],
    rooms: u32,
    resource_id: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    state_changed_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<&'a str>,
}

impl<'a> VmView<'a> {
    /// The view of `vm` with the pool's game ports.
    pub fn new(vm: &'a VmRecord, policy: &'a PoolPolicy) -> Self {
        VmView {
            vm_id: vm.id.as_str(),
            state: vm.state,
            public_ip: vm.public_ip.as_deref(),
            ports: &policy.game_ports,
            rooms: vm.rooms,
            resource_id: &vm.resource_id,
            state_changed_at: vm.state_changed_at,
            last_error: vm.last_error.as_deref(),
        }
    }
}

/// The router, with every route, the JSON error mapping and a span per request.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/CreateVM", post(create_vm))
        .route("/api/ReportGameRoomsNumber", post(report_rooms))
        .route("/api/MarkVMForDeallocation", post(mark))
        .route("/api/GetAvailableVMs", get(available))
        .route("/api/GetPoolStatus", get(pool_status))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", get(probe))
        .route("/ReconcilePool", post(reconcile_timer))
        .merge(api)
        .fallback(not_found)
        .layer(middleware::map_response(json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            tracing::info_span!("request", method = %req.method(), route)
        }))
        .with_state(state)
}

/// The router's own answers (405, 413...) come without a body: give them the envelope.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let err = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = res
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            ApiError::MethodNotAllowed(format!("this route accepts {allow}"))
        }
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::NOT_FOUND => ApiError::NotFound("no such route".into()),
        s if s.is_client_error() => ApiError::InvalidInput(format!("the request was refused: {s}")),
        _ => {
            error!(%status, "a response without a body left a handler: this is a bug");
            ApiError::Unavailable {
                message: "the service failed; retry later".into(),
                retry_after: 5,
            }
        }
    };
    let (mut parts, _) = res.into_parts();
    let new = err.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(new.headers().clone());
    Response::from_parts(parts, new.into_body())
}

async fn not_found() -> ApiError {
    ApiError::NotFound(
        "no such route; the routes are /api/CreateVM, /api/ReportGameRoomsNumber, /api/MarkVMForDeallocation, /api/GetAvailableVMs and /api/GetPoolStatus".into(),
    )
}

/// Standalone only: `/api/*` wants the key in `x-functions-key` or `?code=`.
async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(req).await;
    };
    let from_header = req
        .headers()
        .get("x-functions-key")
        .map(|v| v.as_bytes().to_vec());
    let from_query = input::query_pairs(req.uri().query())
        .into_iter()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_bytes());
    let given = from_header.or(from_query).unwrap_or_default();
    if bool::from(given.ct_eq(key.expose().as_bytes())) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

async fn probe() -> Json<Value> {
    Json(json!({"status": "ok", "service": "vmpool"}))
}

fn changed(state: &AppState, outcome: &Changed) -> Json<Value> {
    let policy = state.pool.policy();
    Json(json!({"vm": VmView::new(&outcome.vm, policy), "action": outcome.action}))
}

async fn create_vm(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    input::object(&body)?;
    let Created { vm, action } = state.pool.create_vm().await?;
    let status = if vm.state == VmState::Running {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let policy = state.pool.policy();
    Ok((
        status,
        Json(json!({"vm": VmView::new(&vm, policy), "action": action})),
    )
        .into_response())
}

async fn report_rooms(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = input::object(&body)?;
    let query = input::query_pairs(query.as_deref());
    let id = input::vm_id(&body, &query)?;
    let rooms = input::rooms(&body, &query)?;
    let outcome = state.pool.report_rooms(&id, rooms).await?;
    Ok(changed(&state, &outcome))
}

async fn mark(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = input::object(&body)?;
    let query = input::query_pairs(query.as_deref());
    let id = input::vm_id(&body, &query)?;
    let outcome = state.pool.mark_for_deallocation(&id).await?;
    Ok(changed(&state, &outcome))
}

/// `?limit=` and `?continuation=` of a paged listing.
fn page_request(query: &[(String, String)]) -> Result<crate::store::PageRequest, ApiError> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    crate::store::PageRequest::parse(get("limit"), get("continuation"))
        .map_err(ApiError::InvalidInput)
}

async fn available(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    let page = page_request(&input::query_pairs(query.as_deref()))?;
    let vms = state.pool.available_page(&page).await?;
    let policy = state.pool.policy();
    let views: Vec<VmView<'_>> = vms.items.iter().map(|vm| VmView::new(vm, policy)).collect();
    let mut body = json!({ "vms": views });
    if let Some(next) = vms.next {
        body["continuation"] = json!(next.token());
    }
    Ok(Json(body))
}

async fn pool_status(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    let query = input::query_pairs(query.as_deref());
    let page = page_request(&query)?;
    let with_vms = match query
        .iter()
        .find(|(k, _)| k == "vms")
        .map(|(_, v)| v.as_str())
    {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::InvalidInput(format!(
                "vms must be true or false; got {other:?}"
            )));
        }
    };
    let status = state.pool.status_page(&page, with_vms).await?;
    let policy = state.pool.policy();
    let counts: serde_json::Map<String, Value> = status
        .counts
        .iter()
        .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
        .collect();
    let views: Option<Vec<VmView<'_>>> = status.vms.as_ref().map(|page| {
        page.items
            .iter()
            .map(|vm| VmView::new(vm, policy))
            .collect()
    });
    let continuation = status
        .vms
        .as_ref()
        .and_then(|p| p.next.as_ref())
        .map(|c| c.token());
    let meta = &status.meta;
    let now = state.pool.clock().now();
    let breaker_open = meta.breaker_open_until.is_some_and(|until| until > now);
    let fmt = |t: Option<OffsetDateTime>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
    };
    let mut body = json!({
        "counts": counts,
        "maxVms": policy.max_vms,
        "buffer": {
            "minStandby": policy.min_standby,
            "target": meta.buffer_target.max(policy.min_standby),
        },
        "circuitBreaker": {
            "open": breaker_open,
            "openUntil": if breaker_open { fmt(meta.breaker_open_until) } else { None },
            "reason": if breaker_open { meta.breaker_reason.clone() } else { None },
            "consecutiveCreateFailures": meta.consecutive_create_failures,
        },
        "lastReconcileAt": fmt(meta.last_reconcile_at),
        "lastReconcileSummary": meta.last_reconcile_summary,
    });
    if let Some(views) = views {
        body["vms"] = json!(views);
    }
    if let Some(next) = continuation {
        body["continuation"] = json!(next);
    }
    Ok(Json(body))
}

/// The Functions timer: `{"Data": {"timer": {...}}, "Metadata": {...}}` in, the invocation
/// envelope out. The timer's payload is read leniently; any JSON object will do.
async fn reconcile_timer(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let invocation = input::object(&body)?;
    let past_due = invocation
        .get("Data")
        .and_then(|d| d.as_object())
        .and_then(|d| d.values().find_map(|t| t.get("IsPastDue")))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut logs = Vec::new();
    if past_due {
        logs.push("timer is past due".to_owned());
    }
    let return_value = match state.reconciler.run_once().await {
        Ok(summary) => {
            logs.push(summary.line());
            json!({"ok": true, "summary": summary})
        }
        Err(e) => {
            error!(error = %e, "reconcile pass failed");
            logs.push(format!("reconcile pass failed: {e}"));
            json!({"ok": false, "error": e.to_string()})
        }
    };
    info!(past_due, "timer invocation");
    Ok(Json(
        json!({"Outputs": {}, "Logs": logs, "ReturnValue": return_value}),
    ))
}
