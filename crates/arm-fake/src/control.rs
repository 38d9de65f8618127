//! The `/_fake/` control routes: scripted faults, delays, failed provisioning, failed
//! extensions on running VMs, VMs deleted behind vmpool's back, VMs hidden from listings,
//! pages that end early, a quota window, starts that fail in their operation, Resource
//! Graph's lag, and the requests received.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::wire::{arm_error, invalid_parameter, json_answer};
use crate::{ArmFake, FakeOp, HttpFault};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FaultRequest {
    op: FakeOp,
    #[serde(flatten)]
    fault: HttpFault,
    #[serde(default = "one")]
    times: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DelayRequest {
    op: FakeOp,
    millis: u64,
    #[serde(default = "one")]
    times: u32,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ProvisioningFailureRequest {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HideRequest {
    vm: Option<String>,
    secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShortPagesRequest {
    times: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuotaRequest {
    secs: u64,
}

pub(crate) async fn admin_quota(
    State(fake): State<Arc<ArmFake>>,
    body: axum::body::Bytes,
) -> Response {
    match parse_admin::<QuotaRequest>(&body) {
        Ok(r) => {
            fake.quota_window(r.secs.min(86_400 * 365));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GraphLagRequest {
    secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtensionFailureRequest {
    vm: String,
    #[serde(default = "extension_error")]
    code: String,
    #[serde(default)]
    message: String,
}

fn extension_error() -> String {
    "VMExtensionProvisioningError".into()
}

pub(crate) async fn admin_graph_lag(
    State(fake): State<Arc<ArmFake>>,
    body: axum::body::Bytes,
) -> Response {
    match parse_admin::<GraphLagRequest>(&body) {
        Ok(r) => {
            let most = u64::try_from(vmpool::compute::sim::HISTORY.whole_seconds()).unwrap_or(0);
            fake.set_graph_lag(r.secs.min(most));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

pub(crate) async fn admin_start_failure(
    State(fake): State<Arc<ArmFake>>,
    body: axum::body::Bytes,
) -> Response {
    match parse_admin::<ProvisioningFailureRequest>(&body) {
        Ok(r) => {
            fake.start_fails_next(&r.code, &r.message);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

pub(crate) async fn admin_extension_failure(
    State(fake): State<Arc<ArmFake>>,
    body: axum::body::Bytes,
) -> Response {
    match parse_admin::<ExtensionFailureRequest>(&body) {
        Ok(r) => {
            let message = if r.message.is_empty() {
                format!(
                    "VM has reported a failure when processing extension 'gameserver' on {}.",
                    r.vm
                )
            } else {
                r.message
            };
            if fake.extension_fails(&r.vm, &r.code, &message) {
                StatusCode::NO_CONTENT.into_response()
            } else {
                arm_error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    &format!(
                        "The Resource 'Microsoft.Compute/virtualMachines/{}' was not found.",
                        r.vm
                    ),
                )
            }
        }
        Err(res) => *res,
    }
}

pub(crate) fn one() -> u32 {
    1
}

pub(crate) async fn admin_hide(
    State(fake): State<Arc<ArmFake>>,
    body: axum::body::Bytes,
) -> Response {
    match parse_admin::<HideRequest>(&body) {
        Ok(r) => {
            fake.hide(r.vm.as_deref(), r.secs.min(86_400 * 365));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

pub(crate) async fn admin_short_pages(
    State(fake): State<Arc<ArmFake>>,
    body: axum::body::Bytes,
) -> Response {
    match parse_admin::<ShortPagesRequest>(&body) {
        Ok(r) => {
            fake.short_pages(r.times);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

pub(crate) fn parse_admin<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            &format!("The request content was invalid and could not be deserialized: {e}"),
        ))
    })
}

pub(crate) async fn admin_requests(State(fake): State<Arc<ArmFake>>) -> Response {
    json_answer(StatusCode::OK, &json!({ "requests": fake.requests() }))
}

pub(crate) async fn admin_fault(
    State(fake): State<Arc<ArmFake>>,
    body: axum::body::Bytes,
) -> Response {
    match parse_admin::<FaultRequest>(&body) {
        Ok(r) if StatusCode::from_u16(r.fault.status).is_ok() && r.fault.status >= 400 => {
            fake.fail_next(r.op, r.times, r.fault);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => invalid_parameter("status must be an HTTP error status (400-599)", "status"),
        Err(res) => *res,
    }
}

pub(crate) async fn admin_delay(
    State(fake): State<Arc<ArmFake>>,
    body: axum::body::Bytes,
) -> Response {
    match parse_admin::<DelayRequest>(&body) {
        Ok(r) => {
            fake.delay_next(r.op, r.times, Duration::from_millis(r.millis.min(600_000)));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

pub(crate) async fn admin_provisioning_failure(
    State(fake): State<Arc<ArmFake>>,
    body: axum::body::Bytes,
) -> Response {
    match parse_admin::<ProvisioningFailureRequest>(&body) {
        Ok(r) => {
            fake.provisioning_fails_next(&r.code, &r.message);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(res) => *res,
    }
}

pub(crate) async fn admin_delete_vm(
    State(fake): State<Arc<ArmFake>>,
    Path(name): Path<String>,
) -> Response {
    fake.delete_behind_our_back(&name);
    StatusCode::NO_CONTENT.into_response()
}
