//! ARM's wire protocol: which resource a method and path name (matched case-insensitively),
//! the token and `api-version` checks, ARM's error envelope, and the fallback route that
//! hands each request to the fake cloud and records it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use vmpool::compute::ComputeError;

use crate::{
    ArmFake, COMPUTE_API_VERSIONS, FakeOp, GRAPH_API_VERSIONS, HttpFault, MAX_BODY,
    NETWORK_API_VERSIONS, Recorded,
};

/// An ARM answer under construction.
pub(crate) type Answer = Response;

pub(crate) fn arm_error(status: StatusCode, code: &str, message: &str) -> Answer {
    let body = json!({"error": {"code": code, "message": message}});
    (status, json_headers(), body.to_string()).into_response()
}

pub(crate) fn invalid_parameter(message: &str, target: &str) -> Answer {
    let body = json!({"error": {"code": "InvalidParameter", "message": message, "target": target}});
    (StatusCode::BAD_REQUEST, json_headers(), body.to_string()).into_response()
}

pub(crate) fn json_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    )]
}

pub(crate) fn json_answer(status: StatusCode, body: &Value) -> Answer {
    (status, json_headers(), body.to_string()).into_response()
}

pub(crate) fn from_sim_error(e: &ComputeError) -> Answer {
    match e {
        ComputeError::Throttled { retry_after } => {
            let mut res = arm_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "The request is being throttled.",
            );
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs()),
            );
            res
        }
        ComputeError::Unavailable(m) => {
            arm_error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", m)
        }
        ComputeError::NotFound => arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The Resource was not found.",
        ),
        ComputeError::Conflict(m) => arm_error(StatusCode::CONFLICT, "Conflict", m),
        ComputeError::Rejected { code, message } => {
            let status = if code == "OperationNotAllowed" || code == "QuotaExceeded" {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            };
            arm_error(status, code, message)
        }
        ComputeError::Suspect { code, message } => {
            let status = if code.ends_with("NotFound") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::FORBIDDEN
            };
            arm_error(status, code, message)
        }
    }
}

pub(crate) fn not_found(kind: &str, name: &str, rg: &str) -> Answer {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!("The Resource '{kind}/{name}' under resource group '{rg}' was not found."),
    )
}

/// What a request is, from its method and path (segments compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Vm {
        sub: String,
        rg: String,
        name: String,
    },
    InstanceView {
        sub: String,
        rg: String,
        name: String,
    },
    Action {
        sub: String,
        rg: String,
        name: String,
        op: FakeOp,
    },
    List {
        sub: String,
        rg: Option<String>,
    },
    OperationStatus {
        sub: String,
        id: String,
    },
    PublicIp {
        sub: String,
        rg: String,
        name: String,
    },
    Nic {
        sub: String,
        rg: String,
        name: String,
    },
    /// A Resource Graph query (tenant-level path; the subscriptions are in the body).
    Graph,
}

impl Target {
    fn parse(method: &Method, path: &str) -> Option<Target> {
        let segs: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        let s = |i: usize| segs.get(i).cloned().unwrap_or_default();
        match l.as_slice() {
            ["providers", "microsoft.resourcegraph", "resources"] if method == Method::POST => {
                Some(Target::Graph)
            }
            [
                "subscriptions",
                _,
                "providers",
                "microsoft.compute",
                "virtualmachines",
            ] if method == Method::GET => Some(Target::List {
                sub: s(1),
                rg: None,
            }),
            [
                "subscriptions",
                _,
                "providers",
                "microsoft.compute",
                "locations",
                _,
                "operations",
                _,
            ] if method == Method::GET => Some(Target::OperationStatus {
                sub: s(1),
                id: s(7),
            }),
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.compute",
                "virtualmachines",
            ] if method == Method::GET => Some(Target::List {
                sub: s(1),
                rg: Some(s(3)),
            }),
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.compute",
                "virtualmachines",
                _,
            ] => Some(Target::Vm {
                sub: s(1),
                rg: s(3),
                name: s(7),
            }),
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.compute",
                "virtualmachines",
                _,
                action,
            ] => {
                let (sub, rg, name) = (s(1), s(3), s(7));
                match *action {
                    "instanceview" if method == Method::GET => {
                        Some(Target::InstanceView { sub, rg, name })
                    }
                    "start" if method == Method::POST => Some(Target::Action {
                        sub,
                        rg,
                        name,
                        op: FakeOp::Start,
                    }),
                    "deallocate" if method == Method::POST => Some(Target::Action {
                        sub,
                        rg,
                        name,
                        op: FakeOp::Deallocate,
                    }),
                    "poweroff" if method == Method::POST => Some(Target::Action {
                        sub,
                        rg,
                        name,
                        op: FakeOp::PowerOff,
                    }),
                    _ => None,
                }
            }
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.network",
                "publicipaddresses",
                _,
            ] if method == Method::GET => Some(Target::PublicIp {
                sub: s(1),
                rg: s(3),
                name: s(7),
            }),
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.network",
                "networkinterfaces",
                _,
            ] if method == Method::GET => Some(Target::Nic {
                sub: s(1),
                rg: s(3),
                name: s(7),
            }),
            _ => None,
        }
    }

    fn op(&self, method: &Method) -> Option<FakeOp> {
        Some(match self {
            Target::Vm { .. } => match *method {
                Method::PUT => FakeOp::PutVm,
                Method::GET => FakeOp::GetVm,
                Method::DELETE => FakeOp::DeleteVm,
                _ => return None,
            },
            Target::InstanceView { .. } => FakeOp::GetVm,
            Target::Action { op, .. } => *op,
            Target::List { .. } => FakeOp::ListVms,
            Target::OperationStatus { .. } => FakeOp::OperationStatus,
            Target::PublicIp { .. } => FakeOp::GetPublicIp,
            Target::Nic { .. } => FakeOp::GetNic,
            Target::Graph => FakeOp::GraphQuery,
        })
    }

    fn subscription(&self) -> Option<&str> {
        match self {
            Target::Vm { sub, .. }
            | Target::InstanceView { sub, .. }
            | Target::Action { sub, .. }
            | Target::List { sub, .. }
            | Target::OperationStatus { sub, .. }
            | Target::PublicIp { sub, .. }
            | Target::Nic { sub, .. } => Some(sub),
            Target::Graph => None,
        }
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

pub(crate) fn query_map(query: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect()
}

pub(crate) fn authorized(headers: &HeaderMap, token: &str) -> Result<(), Box<Answer>> {
    let Some(got) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        let mut res = arm_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        );
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer authorization_uri=\"https://login.microsoftonline.com/common\", error=\"invalid_token\""),
        );
        return Err(Box::new(res));
    };
    let expected = format!("Bearer {token}");
    if bool::from(got.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(Box::new(arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        )))
    }
}

pub(crate) fn api_version_ok(
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<(), Box<Answer>> {
    let Some(version) = query.get("api-version") else {
        return Err(Box::new(arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )));
    };
    let known = match target {
        Target::PublicIp { .. } | Target::Nic { .. } => NETWORK_API_VERSIONS,
        Target::Graph => GRAPH_API_VERSIONS,
        _ => COMPUTE_API_VERSIONS,
    };
    if known.contains(&version.as_str()) {
        Ok(())
    } else {
        Err(Box::new(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{version}' is invalid. The supported versions are '{}'.",
                known.join(",")
            ),
        )))
    }
}

pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

pub(crate) async fn dispatch(
    State(fake): State<Arc<ArmFake>>,
    req: axum::extract::Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let query = query_map(&raw_query);
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return arm_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "The request body is too large.",
            );
        }
    };
    let target = Target::parse(&method, &path);
    let op = target.as_ref().and_then(|t| t.op(&method));
    let res = match (target, op) {
        (Some(target), Some(op)) => {
            let (delay, fault) = fake.take_scripts(op);
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            answer(&fake, target, &method, &query, &body, &parts.headers, fault).await
        }
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            &format!("The resource type could not be found for {method} {path}."),
        ),
    };
    fake.record(Recorded {
        op,
        method: method.to_string(),
        path,
        query: raw_query,
        body: serde_json::from_slice(&body).ok(),
        status: res.status().as_u16(),
    });
    res
}

pub(crate) async fn answer(
    fake: &ArmFake,
    target: Target,
    method: &Method,
    query: &HashMap<String, String>,
    body: &[u8],
    headers: &HeaderMap,
    fault: Option<HttpFault>,
) -> Response {
    if let Err(res) = authorized(headers, &fake.settings.token) {
        return *res;
    }
    if let Err(res) = api_version_ok(&target, query) {
        return *res;
    }
    if let Some(sub) = target.subscription()
        && !sub.eq_ignore_ascii_case(&fake.settings.subscription_id)
    {
        return arm_error(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            &format!("The subscription '{sub}' could not be found."),
        );
    }
    if let Some(f) = fault {
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = arm_error(status, &f.code, &f.message);
        if let Some(secs) = f.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return res;
    }
    fake.handle(target, method, query, body, &base_url(headers))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_case_insensitively_and_nonsense_is_none() {
        assert_eq!(
            Target::parse(
                &Method::POST,
                "/providers/microsoft.resourcegraph/RESOURCES"
            ),
            Some(Target::Graph)
        );
        assert_eq!(
            Target::parse(&Method::GET, "/providers/Microsoft.ResourceGraph/resources"),
            None
        );
        let t = Target::parse(
            &Method::POST,
            "/SUBSCRIPTIONS/s/resourcegroups/RG/providers/Microsoft.Compute/virtualMachines/vm1/Deallocate",
        );
        assert_eq!(
            t,
            Some(Target::Action {
                sub: "s".into(),
                rg: "RG".into(),
                name: "vm1".into(),
                op: FakeOp::Deallocate
            })
        );
        for path in [
            "",
            "/",
            "//x//",
            "/subscriptions",
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v/explode",
        ] {
            assert_eq!(Target::parse(&Method::POST, path), None, "{path}");
        }
    }
}
