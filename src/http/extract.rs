//! Typed extractors: each handler names the input it needs, and a request that does not
//! provide it is refused with an [`ApiError`] before the handler runs. The rules themselves
//! (what a valid `vmId` or `rooms` is, body or query string) live in [`super::input`].
//!
//! Bodies are read whatever their `Content-Type` (`curl -d` sends a form type), up to the
//! router's 64 KiB limit; an empty body counts as `{}`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::input;
use crate::config::pools;
use crate::domain::VmId;
use crate::idempotency::IdempotencyKey;
use crate::pool::Filter;
use crate::store::PageRequest;

/// A request's JSON object body (empty counts as `{}`) and its query-string pairs.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// The body's fields.
    pub body: Map<String, Value>,
    /// The query string's pairs, in order.
    pub query: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequest<S> for Input {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let query = input::query_pairs(req.uri().query());
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                _ => ApiError::InvalidInput(format!("the body cannot be read: {}", e.body_text())),
            })?;
        Ok(Input {
            body: input::object(&bytes)?,
            query,
        })
    }
}

/// CreateVM's optional `pool` and `build`, from a body that is empty or a JSON object, or
/// the query string (other fields are ignored).
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The pool asked for.
    pub pool: Option<String>,
    /// The build asked for.
    pub build: Option<String>,
}

impl<S: Send + Sync> FromRequest<S> for Placement {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Input { body, query } = Input::from_request(req, state).await?;
        Ok(Placement {
            pool: input::optional_text(&body, &query, "pool", pools::pool_name)?,
            build: input::optional_text(&body, &query, "build", pools::build)?,
        })
    }
}

/// GetAvailableVMs' optional `?pool=` and `?build=`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter(pub Filter);

impl<S: Send + Sync> FromRequestParts<S> for ListFilter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = input::query_pairs(parts.uri.query());
        let empty = Map::new();
        Ok(ListFilter(Filter {
            pool: input::optional_text(&empty, &query, "pool", pools::pool_name)?,
            build: input::optional_text(&empty, &query, "build", pools::build)?,
        }))
    }
}

/// CreateVM's optional `Idempotency-Key` header.
#[derive(Debug, Clone)]
pub struct IdempotencyHeader(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        IdempotencyKey::from_headers(&parts.headers)
            .map(IdempotencyHeader)
            .map_err(|e| ApiError::InvalidInput(e.to_string()))
    }
}

/// `?limit=` and `?continuation=` of a paged listing.
#[derive(Debug, Clone)]
pub struct Paging(pub PageRequest);

impl<S: Send + Sync> FromRequestParts<S> for Paging {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = input::query_pairs(parts.uri.query());
        PageRequest::parse(param(&query, "limit"), param(&query, "continuation"))
            .map(Paging)
            .map_err(ApiError::InvalidInput)
    }
}

/// GetPoolStatus's `?vms=`: `false` answers with counts only.
#[derive(Debug, Clone, Copy)]
pub struct WithVms(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for WithVms {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match param(&input::query_pairs(parts.uri.query()), "vms") {
            None | Some("true") => Ok(WithVms(true)),
            Some("false") => Ok(WithVms(false)),
            Some(other) => Err(ApiError::InvalidInput(format!(
                "vms must be true or false; got {other:?}"
            ))),
        }
    }
}

/// GetPoolStatus's `?counts=`: `record` (the default) reads the counts the last reconcile
/// pass wrote in the pool's record; `fresh` counts every row now.
#[derive(Debug, Clone, Copy)]
pub struct FreshCounts(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for FreshCounts {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match param(&input::query_pairs(parts.uri.query()), "counts") {
            None | Some("record") => Ok(FreshCounts(false)),
            Some("fresh") => Ok(FreshCounts(true)),
            Some(other) => Err(ApiError::InvalidInput(format!(
                "counts must be record or fresh; got {other:?}"
            ))),
        }
    }
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `vmId` from the body or the query string.
#[derive(Debug, Clone)]
pub struct VmTarget {
    /// The VM.
    pub vm_id: VmId,
}

impl<S: Send + Sync> FromRequest<S> for VmTarget {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Input { body, query } = Input::from_request(req, state).await?;
        Ok(VmTarget {
            vm_id: input::vm_id(&body, &query)?,
        })
    }
}

/// `?vmId=`, required and valid (GetVM).
#[derive(Debug, Clone)]
pub struct QueryVmId(pub VmId);

impl<S: Send + Sync> FromRequestParts<S> for QueryVmId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = input::query_pairs(parts.uri.query());
        input::query_vm_id(&query).map(QueryVmId)
    }
}

/// `vmId` and `rooms` from the body or the query string.
#[derive(Debug, Clone)]
pub struct RoomsReport {
    /// The VM.
    pub vm_id: VmId,
    /// Its open rooms, 0 to [`input::MAX_ROOMS`].
    pub rooms: u32,
    /// The report's ordering field (`reportedAt` or `sequence`), if given.
    pub order: Option<crate::domain::ReportOrder>,
}

impl<S: Send + Sync> FromRequest<S> for RoomsReport {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Input { body, query } = Input::from_request(req, state).await?;
        Ok(RoomsReport {
            vm_id: input::vm_id(&body, &query)?,
            rooms: input::rooms(&body, &query)?,
            order: input::report_order(&body, &query)?,
        })
    }
}

/// The Functions timer's invocation, `{"Data": {"<binding>": {...}}, "Metadata": {...}}`,
/// read leniently: any JSON object will do.
#[derive(Debug, Clone, Copy)]
pub struct TimerInvocation {
    /// Whether the host says the timer is past due.
    pub past_due: bool,
}

impl<S: Send + Sync> FromRequest<S> for TimerInvocation {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Input { body, .. } = Input::from_request(req, state).await?;
        let past_due = body
            .get("Data")
            .and_then(Value::as_object)
            .and_then(|d| d.values().find_map(|t| t.get("IsPastDue")))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(TimerInvocation { past_due })
    }
}
