//! The HTTP layer: the routes the README lists, translating requests into pool
//! operations and pool outcomes into JSON. It holds no rules of its own.

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod input;
pub mod limits;
pub mod openapi;
pub mod readiness;
pub mod routing;
pub mod views;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use tower_http::trace::TraceLayer;
use tracing::{error, info};

use crate::clock::Clock;
use crate::config::PoolPolicy;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::reconcile::{ReconcileError, Reconciler, Summary};
use crate::secret::Secret;
pub use error::{ApiError, ErrorEnvelope};
use extract::{
    FreshCounts, IdempotencyHeader, ListFilter, Paging, Placement, QueryVmId, RoomsReport,
    TimerInvocation, VmTarget, WithVms,
};
pub use limits::Limits;
use views::{
    CreateVmAnswer, MarkAnswer, PassResult, PoolStatusView, Probe, ReportAnswer, TimerAnswer,
    VmAnswer, VmList, VmView,
};

/// The most a request body may hold.
const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The pool's operations.
    pub pool: Arc<Pool>,
    /// The reconciler, for the timer invocation.
    pub reconciler: Reconciler,
    /// The pool's rules (game ports, limits), for the views.
    pub policy: Arc<PoolPolicy>,
    /// The clock, for what "now" is in the views.
    pub clock: Arc<dyn Clock>,
    /// This instance's counters, served at `/api/Metrics`.
    pub metrics: Arc<Metrics>,
    /// Standalone API key for `/api/*`.
    pub api_key: Option<Secret>,
    /// How long and how many `/api/*` requests are served.
    pub limits: Limits,
    /// Whether storage answers yet; until it does, every route but `GET /` is 503.
    pub readiness: readiness::Readiness,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("pool", &self.pool)
            .field("policy", &self.policy)
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// One reconcile pass, measured and logged (the timer and the standalone loop both call
    /// this).
    pub async fn reconcile_pass(&self) -> Result<Summary, ReconcileError> {
        crate::metrics::reconcile_pass(&self.reconciler, &self.metrics).await
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the host's probe, the OpenAPI document): see [`auth::ANONYMOUS`].
    Anonymous,
    /// Callers with a function key (`x-functions-key` or `?code=`); standalone, the key is
    /// `VMPOOL_API_KEY` when set.
    FunctionKey,
}

/// One route of the router.
#[derive(Debug)]
pub struct Route {
    /// The operation's name: the Functions' name, the OpenAPI `operationId` and the
    /// `operation` label of `vmpool_requests_total`.
    pub name: &'static str,
    /// The path.
    pub path: &'static str,
    /// The one method it answers.
    pub method: Method,
    /// Who may call it.
    pub access: Access,
    handler: MethodRouter<AppState>,
}

/// Every route the router serves; the OpenAPI document covers exactly these.
pub fn routes() -> Vec<Route> {
    use Access::{Anonymous, FunctionKey};
    let route = |name, path, method, access, handler| Route {
        name,
        path,
        method,
        access,
        handler,
    };
    vec![
        route("Probe", "/", Method::GET, Anonymous, get(probe)),
        route(
            "ReconcilePool",
            "/ReconcilePool",
            Method::POST,
            FunctionKey,
            post(reconcile_timer),
        ),
        route(
            "OpenApi",
            "/api/openapi.json",
            Method::GET,
            Anonymous,
            get(openapi::serve),
        ),
        route(
            "CreateVM",
            "/api/CreateVM",
            Method::POST,
            FunctionKey,
            post(create_vm),
        ),
        route(
            "ReportGameRoomsNumber",
            "/api/ReportGameRoomsNumber",
            Method::POST,
            FunctionKey,
            post(report_rooms),
        ),
        route(
            "MarkVMForDeallocation",
            "/api/MarkVMForDeallocation",
            Method::POST,
            FunctionKey,
            post(mark),
        ),
        route("GetVM", "/api/GetVM", Method::GET, FunctionKey, get(get_vm)),
        route(
            "GetAvailableVMs",
            "/api/GetAvailableVMs",
            Method::GET,
            FunctionKey,
            get(available),
        ),
        route(
            "GetPoolStatus",
            "/api/GetPoolStatus",
            Method::GET,
            FunctionKey,
            get(pool_status),
        ),
        route(
            "Metrics",
            "/api/Metrics",
            Method::GET,
            FunctionKey,
            get(metrics),
        ),
        route(
            "Dashboard",
            "/api/Dashboard",
            Method::GET,
            FunctionKey,
            get(dashboard::serve),
        ),
    ]
}

/// A route without its handler.
#[derive(Debug)]
struct RouteInfo {
    name: &'static str,
    path: &'static str,
    method: Method,
}

/// [`routes`] without their handlers, built once: what the layers look up per request.
fn route_table() -> &'static [RouteInfo] {
    static TABLE: std::sync::OnceLock<Vec<RouteInfo>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        routes()
            .into_iter()
            .map(|r| RouteInfo {
                name: r.name,
                path: r.path,
                method: r.method,
            })
            .collect()
    })
}

/// The methods `path` accepts, as a 405 names them: a GET route answers HEAD too, as the
/// router's `Allow` header says.
fn allowed_methods(path: &str) -> String {
    let allowed: Vec<&str> = route_table()
        .iter()
        .filter(|r| r.path == path)
        .flat_map(|r| match r.method {
            Method::GET => vec!["GET", "HEAD"],
            Method::POST => vec!["POST"],
            _ => vec![],
        })
        .collect();
    allowed.join(" and ")
}

/// The router, with every route, the JSON error mapping and a span per request.
pub fn app(state: AppState) -> Router {
    let (mut host, mut api) = (Router::new(), Router::new());
    for r in routes() {
        if r.path.starts_with("/api/") {
            api = api.route(r.path, r.handler);
        } else {
            host = host.route(r.path, r.handler);
        }
    }
    let router = host
        .merge(limits::apply(api, state.limits))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.readiness.clone(),
            readiness::gate,
        ))
        .layer(middleware::from_fn_with_state(
            auth::ApiKey::new(state.api_key.as_ref()),
            auth::require_key,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            count_requests,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            tracing::info_span!("request", method = %req.method(), route)
        }))
        .with_state(state);
    routing::case_insensitive(router)
}

/// The router's own answers (405, 413...) come without a body: give them the envelope. A 405
/// names the methods the route accepts (the router adds its `Allow` header only outside this
/// layer, so they come from [`routes`]).
async fn json_errors(req: Request, next: middleware::Next) -> Response {
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
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
            ApiError::MethodNotAllowed(format!("{path} accepts only {}", allowed_methods(&path)))
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

/// Counts every answer of a known route by operation and status (`vmpool_requests_total`),
/// the router's own answers (401, 405, 503 from the limits) included.
async fn count_requests(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: middleware::Next,
) -> Response {
    let operation = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .and_then(|matched| route_table().iter().find(|r| r.path == matched.as_str()))
        .map(|r| r.name);
    let res = next.run(req).await;
    if let Some(operation) = operation {
        metrics.request(operation, res.status().as_u16());
    }
    res
}

async fn not_found() -> ApiError {
    ApiError::NotFound(
        "no such route; the routes are /api/CreateVM, /api/ReportGameRoomsNumber, /api/MarkVMForDeallocation, /api/GetVM, /api/GetAvailableVMs, /api/GetPoolStatus, /api/Metrics, /api/Dashboard and /api/openapi.json".into(),
    )
}

/// The host's probe: answered as soon as vmpool listens, so the host starts routing to it;
/// `status` says whether the other routes serve yet.
#[utoipa::path(get, path = "/", tag = "host", operation_id = "Probe",
    responses((status = 200, description = "The service is up: `ok`, or `starting` (every other route answers 503 until storage answers) with the reason", body = Probe)))]
async fn probe(State(state): State<AppState>) -> Json<Probe> {
    let starting = state.readiness.starting_now();
    Json(Probe {
        status: if starting.is_some() { "starting" } else { "ok" }.into(),
        service: "vmpool".into(),
        reason: starting.map(|s| s.reason),
    })
}

/// CreateVM: capacity for the matchmaker.
#[utoipa::path(post, path = "/api/CreateVM", tag = "pool", operation_id = "CreateVM",
    description = "Hands out a VM: a MarkedForDeallocation VM (reclaimed), a Standby VM, a Creating buffer VM, a Deallocated VM started again, or a new VM.",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "One key per match or ticket: retries with the same key within VMPOOL_IDEMPOTENCY_TTL_SECS get the same VM and action, from any instance", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$"),
        ("pool" = Option<String>, Query, description = "The pool, if not in the body; default: `default`, or the only pool", min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9-]+$"),
        ("build" = Option<String>, Query, description = "The build, if not in the body; default: the pool's current build", min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._+-]+$"),
    ),
    request_body(content = Option<views::PlacementInput>, description = "Empty, or a JSON object with optional `pool` and `build`"),
    responses(
        (status = 200, description = "A Running VM, usable now (`reclaimed` or `standby`)", body = CreateVmAnswer),
        (status = 202, description = "A VM that is Creating (`claimedCreating`, `started` or `created`): it is yours; poll GetVM until it is Running", body = CreateVmAnswer),
        (status = 400, description = "The body is not empty nor a JSON object, the Idempotency-Key is malformed, or the pool is unknown (the message names the pools)", body = ErrorEnvelope),
        (status = 401, description = "No valid function key", body = ErrorEnvelope),
        (status = 413, description = "The body is over 64 KiB", body = ErrorEnvelope),
        (status = 503, description = "CapacityExhausted (the pool is at its maxVms, all pools are at VMPOOL_MAX_VMS, or no idle VM of a build other than the current one is left) or Unavailable (storage or ARM, a request with the same Idempotency-Key still in progress, or the request limits)", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("functionKey" = []), ("functionKeyQuery" = [])))]
async fn create_vm(
    State(state): State<AppState>,
    IdempotencyHeader(key): IdempotencyHeader,
    placement: Placement,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let wanted = state
        .pool
        .wanted(placement.pool.as_deref(), placement.build.as_deref())?;
    let created = state.pool.create_vm_detached(key, wanted).await;
    state.metrics.create_vm(&created, started.elapsed());
    let created = created?;
    let status = if created.vm.state == crate::domain::VmState::Running {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let body = CreateVmAnswer {
        vm: VmView::new(&created.vm, &state.policy),
        action: created.action,
    };
    Ok((status, Json(body)).into_response())
}

/// ReportGameRoomsNumber: a VM's open rooms.
#[utoipa::path(post, path = "/api/ReportGameRoomsNumber", tag = "pool", operation_id = "ReportGameRoomsNumber",
    description = "Records a VM's open rooms. On a MarkedForDeallocation VM, 0 rooms starts its deallocation. `vmId` and `rooms` are both required: in the JSON body, or in the query string (`?vmId=...&rooms=N`, with no body); if both give one, they must agree.",
    params(
        ("vmId" = Option<String>, Query, description = "The VM, if not in the body", min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{0,63}[A-Za-z0-9_-]$"),
        ("rooms" = Option<u32>, Query, description = "Open rooms, 0 to 100000, if not in the body", minimum = 0, maximum = 100_000),
        ("reportedAt" = Option<String>, Query, description = "Optional, if not in the body: the game server's report time (RFC 3339); an older report than the last applied one answers `stale`", format = DateTime),
        ("sequence" = Option<u64>, Query, description = "Optional, if not in the body, instead of reportedAt: the report's sequence number for this VM; a lower one than the last applied answers `stale`", minimum = 0, maximum = 9_007_199_254_740_992_u64),
    ),
    request_body(content = Option<views::RoomsInput>, description = "vmId and rooms; no body when both come from the query string"),
    responses(
        (status = 200, description = "`recorded`, `deallocating`, or `stale` (older than the last applied report; nothing changed)", body = ReportAnswer),
        (status = 400, description = "vmId or rooms missing or invalid, or reportedAt or sequence invalid or both given", body = ErrorEnvelope),
        (status = 401, description = "No valid function key", body = ErrorEnvelope),
        (status = 404, description = "No VM with that vmId", body = ErrorEnvelope),
        (status = 409, description = "The VM's state does not take room reports", body = ErrorEnvelope),
        (status = 413, description = "The body is over 64 KiB", body = ErrorEnvelope),
        (status = 503, description = "Storage or ARM unavailable", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("functionKey" = []), ("functionKeyQuery" = [])))]
async fn report_rooms(
    State(state): State<AppState>,
    report: RoomsReport,
) -> Result<Json<ReportAnswer>, ApiError> {
    let changed = state
        .pool
        .report_rooms_ordered(&report.vm_id, report.rooms, report.order)
        .await?;
    Ok(Json(ReportAnswer {
        vm: VmView::new(&changed.vm, &state.policy),
        action: changed.action,
    }))
}

/// MarkVMForDeallocation: the matchmaker no longer needs a VM.
#[utoipa::path(post, path = "/api/MarkVMForDeallocation", tag = "pool", operation_id = "MarkVMForDeallocation",
    description = "Marks a VM the matchmaker no longer needs; it is deallocated once its rooms close, unless CreateVM reclaims it first. `vmId` is required: in the JSON body, or in the query string (`?vmId=...`, with no body); if both give it, they must agree.",
    params(("vmId" = Option<String>, Query, description = "The VM, if not in the body", min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{0,63}[A-Za-z0-9_-]$")),
    request_body(content = Option<views::VmIdInput>, description = "vmId; no body when it comes from the query string"),
    responses(
        (status = 200, description = "`marked` or `alreadyMarked`", body = MarkAnswer),
        (status = 400, description = "vmId missing or invalid", body = ErrorEnvelope),
        (status = 401, description = "No valid function key", body = ErrorEnvelope),
        (status = 404, description = "No VM with that vmId", body = ErrorEnvelope),
        (status = 409, description = "The VM's state cannot be marked", body = ErrorEnvelope),
        (status = 413, description = "The body is over 64 KiB", body = ErrorEnvelope),
        (status = 503, description = "Storage or ARM unavailable", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("functionKey" = []), ("functionKeyQuery" = [])))]
async fn mark(
    State(state): State<AppState>,
    target: VmTarget,
) -> Result<Json<MarkAnswer>, ApiError> {
    let changed = state.pool.mark_for_deallocation(&target.vm_id).await?;
    Ok(Json(MarkAnswer {
        vm: VmView::new(&changed.vm, &state.policy),
        action: changed.action,
    }))
}

/// GetVM: one VM, so a matchmaker can follow the VM CreateVM gave it.
#[utoipa::path(get, path = "/api/GetVM", tag = "pool", operation_id = "GetVM",
    description = "One VM as it is now, whatever its state: poll it after a 202 from CreateVM until the VM is Running (its publicIp is then known).",
    params(("vmId" = String, Query, description = "The VM", min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{0,63}[A-Za-z0-9_-]$")),
    responses(
        (status = 200, description = "The VM", body = VmAnswer),
        (status = 400, description = "vmId missing or invalid", body = ErrorEnvelope),
        (status = 401, description = "No valid function key", body = ErrorEnvelope),
        (status = 404, description = "No VM with that vmId", body = ErrorEnvelope),
        (status = 503, description = "Storage unavailable", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("functionKey" = []), ("functionKeyQuery" = [])))]
async fn get_vm(
    State(state): State<AppState>,
    QueryVmId(id): QueryVmId,
) -> Result<Json<VmAnswer>, ApiError> {
    let vm = state.pool.get_vm(&id).await?;
    Ok(Json(VmAnswer {
        vm: VmView::new(&vm, &state.policy),
    }))
}

/// GetAvailableVMs: the Running VMs, a page at a time.
#[utoipa::path(get, path = "/api/GetAvailableVMs", tag = "pool", operation_id = "GetAvailableVMs",
    params(
        ("limit" = Option<u32>, Query, description = "VMs per page, 1 to 1000 (default 1000)", minimum = 1, maximum = 1000),
        ("continuation" = Option<String>, Query, description = "The `continuation` of the previous page"),
        ("pool" = Option<String>, Query, description = "Only this pool's VMs", min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9-]+$"),
        ("build" = Option<String>, Query, description = "Only VMs of this build", min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._+-]+$"),
    ),
    responses(
        (status = 200, description = "Running VMs, sorted by vmId; `continuation` when more follow (a page may hold fewer VMs than asked for when filtered)", body = VmList),
        (status = 400, description = "limit or continuation invalid", body = ErrorEnvelope),
        (status = 401, description = "No valid function key", body = ErrorEnvelope),
        (status = 503, description = "Storage unavailable", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("functionKey" = []), ("functionKeyQuery" = [])))]
async fn available(
    State(state): State<AppState>,
    Paging(page): Paging,
    ListFilter(filter): ListFilter,
) -> Result<Json<VmList>, ApiError> {
    let vms = state.pool.available_page_of(&page, &filter).await?;
    Ok(Json(VmList {
        vms: vms
            .items
            .iter()
            .map(|vm| VmView::new(vm, &state.policy))
            .collect(),
        continuation: vms.next.map(|next| next.token()),
    }))
}

/// GetPoolStatus: counts, the VMs a page at a time, and the reconciler's record.
#[utoipa::path(get, path = "/api/GetPoolStatus", tag = "pool", operation_id = "GetPoolStatus",
    params(
        ("limit" = Option<u32>, Query, description = "VMs per page, 1 to 1000 (default 1000)", minimum = 1, maximum = 1000),
        ("continuation" = Option<String>, Query, description = "The `continuation` of the previous page"),
        ("vms" = Option<bool>, Query, description = "`false`: counts and the pool's record only, no VMs"),
        ("counts" = Option<String>, Query, description = "`record` (default): the counts the last reconcile pass wrote in the pool's record, with `countedAt`; `fresh`: every row counted now (reads the whole table)"),
    ),
    responses(
        (status = 200, description = "Counts by state, a page of VMs, the buffer, the breaker, the observation and the last pass", body = PoolStatusView),
        (status = 400, description = "limit, continuation, vms or counts invalid", body = ErrorEnvelope),
        (status = 401, description = "No valid function key", body = ErrorEnvelope),
        (status = 503, description = "Storage unavailable", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("functionKey" = []), ("functionKeyQuery" = [])))]
async fn pool_status(
    State(state): State<AppState>,
    Paging(page): Paging,
    WithVms(with_vms): WithVms,
    FreshCounts(fresh): FreshCounts,
) -> Result<Json<PoolStatusView>, ApiError> {
    Ok(Json(
        pool_status_view(&state, &page, with_vms, fresh).await?.0,
    ))
}

/// One page of the pool's status and the reconciler's record, as GetPoolStatus shows them.
/// The counts are the record's unless `fresh` is asked for or no pass has counted yet.
async fn pool_status_view(
    state: &AppState,
    page: &crate::store::PageRequest,
    with_vms: bool,
    fresh: bool,
) -> Result<(PoolStatusView, crate::reconcile::PoolMeta), ApiError> {
    let meta = state
        .reconciler
        .record()
        .await
        .map_err(crate::pool::PoolError::from)?;
    let recorded = match (meta.recorded_groups(), meta.counted_at) {
        (Some(groups), Some(at)) if !fresh => Some((groups, at)),
        _ => None,
    };
    let status = state.pool.status_page(page, with_vms, recorded).await?;
    let view = PoolStatusView::new(&status, &meta, &state.policy, state.clock.now());
    Ok((view, meta))
}

/// Metrics: the Prometheus text exposition.
#[utoipa::path(get, path = "/api/Metrics", tag = "operations", operation_id = "Metrics",
    description = "Prometheus text exposition. Pool-wide series (`vmpool_vms`, `vmpool_pool_*`, buffer target, breaker) come from the pool's record, the same from every instance; per-process series (CreateVM outcomes and latency, ARM and table calls, this process's reconcile passes) are this instance's own.",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 401, description = "No valid function key", body = ErrorEnvelope),
    ),
    security(("functionKey" = []), ("functionKeyQuery" = [])))]
async fn metrics(State(state): State<AppState>) -> Response {
    let view = pool_status_view(&state, &crate::store::PageRequest::default(), false, false).await;
    if let Err(e) = &view {
        tracing::warn!(error = %e, "metrics: the pool status could not be read");
    }
    let gauges = view.ok().map(|(v, record)| crate::metrics::PoolGauges {
        vms: crate::domain::VmState::ALL.map(|s| (s, v.counts.get(s))),
        max_vms: v.max_vms,
        buffer_target: v.buffer.target,
        breaker_open: v.circuit_breaker.open,
        pools: v
            .pools
            .iter()
            .map(|p| crate::metrics::OnePoolGauges {
                name: p.name.clone(),
                build: p.build.clone(),
                builds: p
                    .builds
                    .iter()
                    .map(|(b, c)| {
                        (
                            b.clone(),
                            crate::domain::VmState::ALL
                                .into_iter()
                                .map(|s| (s, c.get(s)))
                                .collect(),
                        )
                    })
                    .collect(),
                buffer_target: p.buffer.target,
                breaker_open: p.circuit_breaker.open,
                breaker_failures: p.circuit_breaker.consecutive_create_failures,
            })
            .collect(),
        record,
        needs_attention: v.needs_attention,
        claims_timed_out: v.claims_timed_out,
        unhealthy: v.unhealthy,
        observation_suspect: v.observation.suspect,
    });
    let text = state.metrics.render(gauges.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// ReconcilePool: the Functions timer.
#[utoipa::path(post, path = "/ReconcilePool", tag = "host", operation_id = "ReconcilePool",
    description = "The Functions timer invocation. Always 200 once admitted: a failed pass has `ok: false` and the error in Logs. Standalone with VMPOOL_API_KEY set, it wants the key like every route but the probe and this document.",
    request_body(content = Option<views::TimerInput>, description = "The timer invocation; any JSON object will do"),
    responses(
        (status = 200, description = "The invocation envelope", body = TimerAnswer),
        (status = 400, description = "The body is not empty nor a JSON object", body = ErrorEnvelope),
        (status = 401, description = "Standalone with VMPOOL_API_KEY set: no valid key", body = ErrorEnvelope),
        (status = 413, description = "The body is over 64 KiB", body = ErrorEnvelope),
    ),
    security(("functionKey" = []), ("functionKeyQuery" = [])))]
async fn reconcile_timer(
    State(state): State<AppState>,
    invocation: TimerInvocation,
) -> Json<TimerAnswer> {
    let mut logs = Vec::new();
    if invocation.past_due {
        logs.push("timer is past due".to_owned());
    }
    let return_value = match state.reconcile_pass().await {
        Ok(summary) => {
            logs.push(summary.line());
            PassResult {
                ok: true,
                summary: Some(summary),
                error: None,
            }
        }
        Err(e) => {
            error!(error = %e, "reconcile pass failed");
            logs.push(format!("reconcile pass failed: {e}"));
            PassResult {
                ok: false,
                summary: None,
                error: Some(e.to_string()),
            }
        }
    };
    info!(past_due = invocation.past_due, "timer invocation");
    Json(TimerAnswer {
        outputs: views::EmptyOutputs {},
        logs,
        return_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_layer_and_the_case_insensitive_paths_know_every_route() {
        for r in routes() {
            assert_eq!(
                auth::ANONYMOUS.contains(&r.path),
                r.access == Access::Anonymous,
                "{}",
                r.path
            );
            assert_eq!(routing::canonical_path(r.path), Some(r.path));
        }
        assert_eq!(routing::PATHS.len(), routes().len());
    }
}
