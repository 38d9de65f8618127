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
        license(name = "MIT", identifier = "MIT")
    ),
    servers(
        (url = "https://{functionApp}.azurewebsites.net", description = "The Function App (its defaultHostName; the template's output apiBaseUrl less /api). Standalone (`cargo run`), vmpool serves the same paths at http://localhost:7071.",
            variables(("functionApp" = (default = "mygame-vmpool", description = "The Function App's name")))),
    ),
    paths(
        super::probe,
        super::reconcile_timer,
        serve,
        super::create_vm,
        super::report_rooms,
        super::mark,
        super::get_vm,
        super::available,
        super::pool_status,
        super::metrics,
        super::dashboard::serve,
    ),
    components(schemas(ErrorEnvelope, ErrorBody, ErrorCode, views::StateName)),
    modifiers(&FunctionKeys, &RouterAnswers),
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

/// What the router's own layers answer on every route, whatever the handler: 405 for another
/// method (every route), 401 without the key (keyed routes), 503 while vmpool starts and from
/// the request limits (every route but the probe); and who may call each route
/// (`security: []` on anonymous ones). Read from [`super::routes`], so a new route gets them
/// too.
struct RouterAnswers;

impl Modify for RouterAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{Object, Type};
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::{Content, HeaderBuilder, Ref, ResponseBuilder};
        let error = |description: &str, header: Option<(&str, &str, Type)>| {
            let mut b = ResponseBuilder::new().description(description).content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorEnvelope"))),
            );
            if let Some((name, about, kind)) = header {
                b = b.header(
                    name,
                    HeaderBuilder::new()
                        .schema(Object::with_type(kind))
                        .description(Some(about))
                        .build(),
                );
            }
            b.build()
        };
        for route in super::routes() {
            let Some(item) = openapi.paths.paths.get_mut(route.path) else {
                continue;
            };
            let op = match route.method {
                axum::http::Method::GET => item.get.as_mut(),
                axum::http::Method::POST => item.post.as_mut(),
                _ => None,
            };
            let Some(op) = op else { continue };
            let responses = &mut op.responses.responses;
            responses.entry("405".into()).or_insert_with(|| {
                error(
                    &format!(
                        "MethodNotAllowed: {} accepts only {}",
                        route.path,
                        super::allowed_methods(route.path)
                    ),
                    Some(("Allow", "The methods this route accepts", Type::String)),
                )
                .into()
            });
            match route.access {
                super::Access::Anonymous => op.security = Some(Vec::new()),
                super::Access::FunctionKey => {
                    responses
                        .entry("401".into())
                        .or_insert_with(|| error("No valid function key", None).into());
                    if op.security.as_ref().is_none_or(Vec::is_empty) {
                        op.security = Some(vec![
                            SecurityRequirement::new::<_, _, &str>("functionKey", []),
                            SecurityRequirement::new::<_, _, &str>("functionKeyQuery", []),
                        ]);
                    }
                }
            }
            // Every route but the probe: while vmpool starts (storage does not answer yet),
            // and on /api/ routes past the request limits.
            if route.path != "/" {
                responses.entry("503".into()).or_insert_with(|| {
                    error(
                        "Unavailable: vmpool is starting (storage does not answer yet), or the request is past the limits (a time-out, too many requests in progress); retry after Retry-After",
                        Some(("Retry-After", "Seconds to wait", Type::Integer)),
                    )
                    .into()
                });
            }
        }
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
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations", operation_id = "OpenApi",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = views::OpenApiDocument)))]
pub async fn serve() -> Json<&'static Value> {
    Json(document())
}
