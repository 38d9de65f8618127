//! The one API error type and its JSON envelope `{"error": {"code", "message"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::warn;
use utoipa::ToSchema;

use crate::compute::ComputeError;
use crate::pool::PoolError;
use crate::store::StoreError;

/// Every error the API answers with. Each variant documents its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400 `InvalidInput`: the request is malformed; the message says what to fix.
    #[error("{0}")]
    InvalidInput(String),
    /// 401 `Unauthorized`: the API key is missing or wrong.
    #[error(
        "a valid API key is required in the x-functions-key header or the code query parameter"
    )]
    Unauthorized,
    /// 404 `NotFound`.
    #[error("{0}")]
    NotFound(String),
    /// 405 `MethodNotAllowed` (the `Allow` header is set by the router).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409 `Conflict`: the VM's state does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    /// 413 `PayloadTooLarge`.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// 503 `CapacityExhausted`, with `Retry-After`.
    #[error("{message}")]
    CapacityExhausted {
        /// What the caller is told.
        message: String,
        /// Seconds.
        retry_after: u64,
    },
    /// 503 `Unavailable`, with `Retry-After`: storage or ARM cannot be reached. Nothing was
    /// half-done.
    #[error("{message}")]
    Unavailable {
        /// What the caller is told (never an internal detail).
        message: String,
        /// Seconds.
        retry_after: u64,
    },
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::CapacityExhausted { .. } | ApiError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The `code` of the envelope.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    /// The `code` of the envelope, as its type.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ApiError::InvalidInput(_) => ErrorCode::InvalidInput,
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            ApiError::CapacityExhausted { .. } => ErrorCode::CapacityExhausted,
            ApiError::Unavailable { .. } => ErrorCode::Unavailable,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::CapacityExhausted { retry_after, .. }
            | ApiError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// The machine-readable `code` of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum ErrorCode {
    /// 400.
    InvalidInput,
    /// 401.
    Unauthorized,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 409.
    Conflict,
    /// 413.
    PayloadTooLarge,
    /// 503, with `Retry-After`.
    CapacityExhausted,
    /// 503, with `Retry-After`.
    Unavailable,
}

impl ErrorCode {
    /// The name, as the envelope writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "InvalidInput",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::MethodNotAllowed => "MethodNotAllowed",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::PayloadTooLarge => "PayloadTooLarge",
            ErrorCode::CapacityExhausted => "CapacityExhausted",
            ErrorCode::Unavailable => "Unavailable",
        }
    }
}

/// The error envelope every failed request answers with.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "InvalidInput", "message": "rooms must be a whole number from 0 to 100000; got -1"}}))]
pub struct ErrorEnvelope {
    /// What went wrong.
    pub error: ErrorBody,
}

/// The inside of the error envelope.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Which error, for programs.
    pub code: ErrorCode,
    /// What to fix or when to retry, for people.
    pub message: String,
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::NotFound(id) => ApiError::NotFound(format!("no VM with vmId {id}")),
            PoolError::Conflict(refused) => ApiError::Conflict(refused.to_string()),
            PoolError::UnknownPool { .. } => ApiError::InvalidInput(e.to_string()),
            PoolError::PoolFull { ref pool, max } => ApiError::CapacityExhausted {
                message: format!(
                    "pool {pool} has reached its maximum of {max} VMs that are not Deallocated; retry later or mark unused VMs for deallocation"
                ),
                retry_after: 30,
            },
            PoolError::BuildExhausted { .. } => ApiError::CapacityExhausted {
                message: format!(
                    "{e}; ask for the current build (or no build), or retry when a VM of this build is marked for deallocation"
                ),
                retry_after: 30,
            },
            PoolError::CapacityExhausted { max } => ApiError::CapacityExhausted {
                message: format!(
                    "the pool has reached its maximum of {max} VMs that are not Deallocated; retry later or mark unused VMs for deallocation"
                ),
                retry_after: 30,
            },
            PoolError::Refused {
                reason,
                retry_after,
                ..
            } => ApiError::CapacityExhausted {
                message: format!(
                    "{reason}; no VM could be made ready, retry after the Retry-After delay"
                ),
                retry_after: retry_after.as_secs().max(1),
            },
            PoolError::Store(e) => {
                warn!(error = %e, "table storage failed");
                let message = match e {
                    StoreError::Unavailable(_) => {
                        "table storage cannot be reached; nothing was changed, retry later"
                    }
                    StoreError::Rejected(_) => {
                        "table storage refused the request; nothing was changed, retry later"
                    }
                };
                ApiError::Unavailable {
                    message: message.into(),
                    retry_after: 5,
                }
            }
            PoolError::Compute(e) => {
                warn!(error = %e, "ARM failed");
                let retry_after = match &e {
                    ComputeError::Throttled { retry_after } => retry_after.as_secs().max(1),
                    _ => 10,
                };
                let message = match &e {
                    ComputeError::Rejected { code, .. } => format!(
                        "Azure Resource Manager refused the request ({code}); the VM is recorded as Failed, retry later"
                    ),
                    ComputeError::Suspect { code, .. } => format!(
                        "Azure Resource Manager answered about the pool's subscription, resource group or access ({code}); check the configuration and the identity's roles, then retry"
                    ),
                    _ => "Azure Resource Manager cannot be reached or is throttling; the reconciler will finish the operation, retry later".into(),
                };
                ApiError::Unavailable {
                    message,
                    retry_after,
                }
            }
            PoolError::Contention => ApiError::Unavailable {
                message: "the VM is being changed by other callers; retry".into(),
                retry_after: 1,
            },
            PoolError::KeyInFlight => ApiError::Unavailable {
                message: PoolError::KeyInFlight.to_string(),
                retry_after: 2,
            },
            PoolError::Interrupted(why) => {
                warn!(%why, "CreateVM did not finish");
                ApiError::Unavailable {
                    message: "CreateVM did not finish in time; the pool finishes what it started, retry (with the same Idempotency-Key)".into(),
                    retry_after: 5,
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorEnvelope {
            error: ErrorBody {
                code: self.error_code(),
                message: self.to_string(),
            },
        };
        let mut res = (self.status(), axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}
