//! The OpenAPI 3.1 document, generated from the handlers' annotations and the view types,
//! served anonymously at `/api/openapi.json`.

use std::sync::OnceLock;

use axum::Json;
use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorCode, ErrorEnvelope};
use super::views;

/// The document's source: every route of [`super::routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "vmpool",
        description = "Keeps a pool of Azure VMs for dedicated game servers. Routes under /api/ take a function key in the x-functions-key header or the code query parameter (the Functions host checks it; standalone, VMPOOL_API_KEY does).",
        license(name = "MIT")
    ),
    paths(
        super::probe,
        super::reconcile_timer,
        serve,
        super::create_vm,
        super::report_rooms,
        super::mark,
        super::available,
        super::pool_status,
        super::metrics,
        super::dashboard::serve,
    ),
    components(schemas(ErrorEnvelope, ErrorBody, ErrorCode, views::StateName)),
    modifiers(&FunctionKeys),
    tags(
        (name = "pool", description = "The matchmaker's operations"),
        (name = "operations", description = "The API description, metrics and the dashboard"),
        (name = "host", description = "What the Azure Functions host calls"),
    )
)]
pub struct ApiDoc;

/// The two ways to give a function key.
struct FunctionKeys;

impl Modify for FunctionKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "functionKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-functions-key"))),
        );
        components.add_security_scheme(
            "functionKeyQuery",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("code"))),
        );
    }
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        optional_bodies_are_not_null(&mut doc);
        doc
    })
}

/// utoipa writes an optional request body (`Option<T>`) as `oneOf: [null, T]` and leaves it
/// not required; what vmpool accepts is no body or a `T`, never a JSON `null`. Keep the `T`.
fn optional_bodies_are_not_null(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for op in paths.values_mut().filter_map(Value::as_object_mut) {
        for operation in op.values_mut() {
            let Some(content) = operation
                .pointer_mut("/requestBody/content")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            for media in content.values_mut() {
                let Some(schema) = media.get_mut("schema") else {
                    continue;
                };
                let kept = schema
                    .get("oneOf")
                    .and_then(Value::as_array)
                    .and_then(|items| {
                        let rest: Vec<&Value> = items
                            .iter()
                            .filter(|s| s.get("type") != Some(&Value::from("null")))
                            .collect();
                        (items.len() == 2 && rest.len() == 1).then(|| rest[0].clone())
                    });
                if let Some(kept) = kept {
                    *schema = kept;
                }
            }
        }
    }
}

/// The OpenAPI document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
pub async fn serve() -> Json<&'static Value> {
    Json(document())
}
