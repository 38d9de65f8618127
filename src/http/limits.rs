//! The request timeout and the concurrency limit of `/api/*`: past either, the answer is
//! 503 `Unavailable` with `Retry-After`, in the JSON envelope.

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::{BoxError, Router};
use tracing::error;

use super::{ApiError, AppState};

/// How long one `/api/*` request may take and how many are served at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `VMPOOL_REQUEST_TIMEOUT_SECS`.
    pub request_timeout: Duration,
    /// `VMPOOL_MAX_CONCURRENT_REQUESTS`.
    pub max_concurrent_requests: usize,
}

/// Puts `limits` on every route of `routes`. The concurrency limit is one count shared by
/// all of them; a request over it is refused at once rather than queued, so callers back off
/// instead of piling up behind a slow table or ARM.
pub fn apply(routes: Router<AppState>, limits: Limits) -> Router<AppState> {
    routes.layer(
        tower::ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |err: BoxError| async move {
                over_limit(&err, limits)
            }))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                limits.max_concurrent_requests,
            ))
            .timeout(limits.request_timeout),
    )
}

/// The answer when a request passes a bound.
fn over_limit(err: &BoxError, limits: Limits) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::Unavailable {
            message: format!(
                "the request took longer than {}s; retry (a CreateVM goes on, and its Idempotency-Key gets its answer)",
                limits.request_timeout.as_secs()
            ),
            retry_after: 5,
        }
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Unavailable {
            message: format!(
                "more than {} requests are in progress; retry",
                limits.max_concurrent_requests
            ),
            retry_after: 1,
        }
    } else {
        error!(error = %err, "a request failed in the router's limits");
        ApiError::Unavailable {
            message: "the service failed; retry later".into(),
            retry_after: 5,
        }
    }
}
