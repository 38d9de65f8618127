//! Whether the service can serve yet. vmpool listens at once, so the Functions host's probe
//! (`GET /`) is answered within its start-up window even while storage refuses the app's
//! identity (role assignments take minutes to apply after a deployment). Until storage
//! answers, every other route is `503 Unavailable` with `Retry-After` and the reason, and
//! start-up keeps trying in the background.

use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Why the service is not serving yet, and when it tries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Starting {
    /// What the last attempt met, for callers and operators (never a secret: storage errors
    /// are classified without quoting a URL).
    pub reason: String,
    /// Seconds until the next attempt (at least 1), for `Retry-After`.
    pub retry_after: u64,
}

/// Shared between the router and the start-up task: ready, or starting with a reason.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<RwLock<Option<Starting>>>);

impl Readiness {
    /// Ready from the start (ports that need no preparation, such as the in-memory table).
    pub fn ready() -> Self {
        Readiness::default()
    }

    /// Not ready yet, for `reason`.
    pub fn starting(reason: impl Into<String>) -> Self {
        let readiness = Readiness::default();
        readiness.set_starting(reason, 1);
        readiness
    }

    /// Still not ready: the last attempt met `reason`; the next is in `retry_after` seconds.
    pub fn set_starting(&self, reason: impl Into<String>, retry_after: u64) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(Starting {
            reason: reason.into(),
            retry_after: retry_after.max(1),
        });
    }

    /// Ready: every route serves from now on.
    pub fn set_ready(&self) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// `None` when ready, else why not.
    pub fn starting_now(&self) -> Option<Starting> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether every route serves.
    pub fn is_ready(&self) -> bool {
        self.starting_now().is_none()
    }
}

/// The answer to a request that came too early.
pub fn not_ready(starting: &Starting) -> ApiError {
    ApiError::Unavailable {
        message: format!(
            "vmpool is starting and cannot serve yet: {}; it keeps trying, retry later",
            starting.reason
        ),
        retry_after: starting.retry_after,
    }
}

/// Middleware: until ready, every request but the probe (`GET /`) is answered
/// `503 Unavailable` with the reason.
pub async fn gate(State(readiness): State<Readiness>, req: Request, next: Next) -> Response {
    let probe = req.uri().path() == "/" && matches!(*req.method(), Method::GET | Method::HEAD);
    match readiness.starting_now() {
        Some(starting) if !probe => not_ready(&starting).into_response(),
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_keeps_the_last_reason_and_a_retry_of_at_least_a_second() {
        let readiness = Readiness::starting("first");
        assert!(!readiness.is_ready());
        readiness.set_starting("storage answered 403", 0);
        assert_eq!(
            readiness.starting_now(),
            Some(Starting {
                reason: "storage answered 403".into(),
                retry_after: 1
            })
        );
        let shared = readiness.clone();
        shared.set_ready();
        assert!(readiness.is_ready());
        assert!(Readiness::ready().is_ready());
    }
}
