//! The OpenAPI document: generated from the code, served anonymously, and covering exactly the
//! routes the router serves.

use std::collections::BTreeSet;

use serde_json::Value;
use vmpool::domain::{VmId, VmState};
use vmpool::http::openapi::document;
use vmpool::http::{Access, routes};

use crate::support::spawn_sim;

/// (path, method) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (path.clone(), m.to_ascii_uppercase()))
        })
        .collect()
}

#[test]
fn every_route_of_the_router_is_in_the_document_and_nothing_else() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let served: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.path.to_owned(), r.method.as_str().to_owned()))
        .collect();
    let documented = documented(doc);
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(extra.is_empty(), "documented but not served: {extra:?}");
}

#[test]
fn keyed_routes_declare_the_function_key_and_every_error_uses_the_envelope() {
    let doc = document();
    for route in routes() {
        let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
        let secured = op["security"]
            .as_array()
            .is_some_and(|requirements| !requirements.is_empty());
        assert_eq!(
            secured,
            route.access == Access::FunctionKey,
            "{} {}",
            route.method,
            route.path
        );
        if route.access == Access::FunctionKey {
            assert!(op["responses"].get("401").is_some(), "{}", route.path);
        }
        for (status, response) in op["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorEnvelope",
                    "{} {status}",
                    route.path
                );
            }
            if status == "503" {
                assert!(
                    response["headers"].get("Retry-After").is_some(),
                    "{} 503 without Retry-After",
                    route.path
                );
            }
        }
    }
    let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    assert_eq!(codes.as_array().unwrap().len(), 8, "{codes}");
}

#[test]
fn the_documented_states_and_vm_id_rule_are_the_code_s() {
    let doc = document();
    let states: Vec<&str> = doc["components"]["schemas"]["VmState"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let names: Vec<&str> = VmState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(states, names);

    let body = &doc["components"]["schemas"]["VmIdInput"]["properties"]["vmId"];
    let pattern = body["pattern"].as_str().unwrap();
    assert_eq!(pattern, vmpool::http::views::VM_ID_PATTERN);
    let query =
        doc["paths"]["/api/MarkVMForDeallocation"]["post"]["parameters"][0]["schema"]["pattern"]
            .as_str()
            .unwrap();
    assert_eq!(query, pattern);
    let re = regex::Regex::new(pattern).unwrap();
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(&"[a-zA-Z0-9_.\\-/' ]{0,70}", |s| {
            proptest::prop_assert_eq!(re.is_match(&s), VmId::parse(&s).is_ok(), "{:?}", s);
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn the_document_is_served_without_a_key() {
    let sim = spawn_sim(&[("VMPOOL_API_KEY", "s3cret")]).await;
    let got = sim.app.send("GET", "/api/openapi.json", None).await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.json, document());
    let keyed = sim.app.send("GET", "/api/GetPoolStatus", None).await;
    assert_eq!(keyed.status, 401, "the other routes still want the key");
}

#[test]
fn every_http_function_of_the_functions_app_is_in_the_document() {
    let documented = documented(document());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("function-definitions");
    let mut seen = 0;
    for dir in std::fs::read_dir(root).unwrap() {
        let dir = dir.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let def: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("function.json")).unwrap())
                .unwrap();
        let trigger = &def["bindings"][0];
        let path = if trigger["type"] == "httpTrigger" {
            format!("/api/{}", trigger["route"].as_str().unwrap_or(&name))
        } else {
            // The timer: the host POSTs the invocation to /<Name>.
            format!("/{name}")
        };
        let methods: Vec<String> = trigger["methods"].as_array().map_or_else(
            || vec!["POST".to_owned()],
            |m| {
                m.iter()
                    .map(|m| m.as_str().unwrap().to_ascii_uppercase())
                    .collect()
            },
        );
        for method in methods {
            assert!(
                documented.contains(&(path.clone(), method.clone())),
                "{name}: {method} {path} is not in the document"
            );
            seen += 1;
        }
    }
    assert!(seen >= 9, "{seen}");
}

#[tokio::test]
async fn the_router_serves_every_route_of_the_list() {
    use tower::ServiceExt;
    let parts = crate::support::sim_parts(&[]);
    for route in routes() {
        let req = axum::http::Request::builder()
            .method(route.method.clone())
            .uri(route.path)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = vmpool::http::app(parts.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = res.status().as_u16();
        assert!(
            status != 404 && status != 405 && status < 500,
            "{} {} answered {status}",
            route.method,
            route.path
        );
    }
}

/// The `action` values the document allows in `path`'s answer with `status`.
pub fn documented_actions(path: &str, status: &str) -> Vec<Value> {
    let doc = document();
    let answer = doc["paths"][path]["post"]["responses"][status]["content"]["application/json"]
        ["schema"]["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("{path} {status} has no JSON answer"));
    let answer = &doc["components"]["schemas"][answer.trim_start_matches("#/components/schemas/")];
    let action = answer["properties"]["action"]["$ref"].as_str().unwrap();
    doc["components"]["schemas"][action.trim_start_matches("#/components/schemas/")]["enum"]
        .as_array()
        .unwrap()
        .clone()
}

/// Every operation of the document: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .iter()
                .map(move |(method, op)| (path.clone(), method.clone(), op))
        })
        .collect()
}

#[test]
fn operation_ids_are_unique_and_are_the_function_names() {
    let doc = document();
    let ids: Vec<&str> = operations(doc)
        .iter()
        .map(|(_, _, op)| op["operationId"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicated operation IDs: {ids:?}");
    // Each is the name of its function (the folder under function-definitions/, and the
    // operation's name in the README); the host's probe is the one route with no function.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut functions: BTreeSet<String> = std::fs::read_dir(root.join("function-definitions"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    functions.insert("Probe".into());
    let unique: BTreeSet<String> = unique.into_iter().map(str::to_owned).collect();
    assert_eq!(unique, functions);
    for route in routes() {
        let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
        assert_eq!(op["operationId"], route.name, "{}", route.path);
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for id in &unique {
        if id != "Probe" {
            assert!(
                readme.contains(&format!("| `{id}` |")),
                "the README's API table has no operation `{id}`"
            );
        }
    }
}

#[test]
fn each_operation_lists_exactly_its_own_actions() {
    let want = |words: &[&str]| words.iter().map(|w| Value::from(*w)).collect::<Vec<_>>();
    let created: Vec<&str> = vmpool::domain::CreateAction::ALL
        .iter()
        .map(|a| a.as_str())
        .collect();
    for status in ["200", "202"] {
        assert_eq!(documented_actions("/api/CreateVM", status), want(&created));
    }
    assert_eq!(
        documented_actions("/api/ReportGameRoomsNumber", "200"),
        want(&["recorded", "deallocating", "stale"])
    );
    assert_eq!(
        documented_actions("/api/MarkVMForDeallocation", "200"),
        want(&["marked", "alreadyMarked"])
    );
}

/// Every schema object in `v`, with where it is.
fn schemas<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(map) => {
            if map.contains_key("type") || map.contains_key("properties") {
                out.push((at.clone(), v));
            }
            for (k, child) in map {
                schemas(child, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                schemas(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn nullable(schema: &Value) -> bool {
    schema["type"]
        .as_array()
        .is_some_and(|types| types.contains(&Value::from("null")))
        || schema["oneOf"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["type"] == "null"))
}

#[test]
fn null_only_where_a_field_is_always_sent_and_every_object_says_what_it_holds() {
    let doc = document();
    let mut all = Vec::new();
    schemas(&doc["components"], "#/components".into(), &mut all);
    schemas(&doc["paths"], "#/paths".into(), &mut all);
    let mut checked = 0;
    for (at, schema) in all {
        let Some(props) = schema["properties"].as_object() else {
            if schema["type"] == "object" {
                assert!(
                    schema.get("additionalProperties").is_some(),
                    "{at}: an object with neither properties nor additionalProperties"
                );
            }
            continue;
        };
        let required: Vec<&Value> = schema["required"]
            .as_array()
            .map(|r| r.iter().collect())
            .unwrap_or_default();
        for (name, prop) in props {
            checked += 1;
            if nullable(prop) {
                assert!(
                    required.contains(&&Value::from(name.as_str())),
                    "{at}.{name}: nullable, so it must be required (sent as null), not optional"
                );
            }
        }
    }
    assert!(checked > 40, "{checked}");
    // The parameters: a header or query parameter is never null (absent is how it is left out).
    for (path, method, op) in operations(doc) {
        for param in op["parameters"].as_array().into_iter().flatten() {
            assert!(
                !nullable(&param["schema"]),
                "{method} {path}: parameter {} is nullable",
                param["name"]
            );
        }
    }
}

#[test]
fn every_timestamp_is_a_date_time() {
    let doc = document();
    let mut all = Vec::new();
    schemas(&doc["components"], "#/components".into(), &mut all);
    let mut seen = 0;
    for (at, schema) in all {
        for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
            if name.ends_with("At") || name.ends_with("Until") {
                seen += 1;
                assert_eq!(prop["format"], "date-time", "{at}.{name}");
            }
        }
    }
    assert!(seen >= 4, "{seen}");
}

#[test]
fn inputs_require_what_the_service_requires() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["RoomsInput"]["required"],
        serde_json::json!(["vmId", "rooms"])
    );
    assert_eq!(
        schemas["VmIdInput"]["required"],
        serde_json::json!(["vmId"])
    );
    // The body is optional only because the query string may carry the fields instead; the
    // description says so.
    for path in ["/api/ReportGameRoomsNumber", "/api/MarkVMForDeallocation"] {
        let op = &doc["paths"][path]["post"];
        assert_ne!(op["requestBody"]["required"], true, "{path}");
        assert!(
            op["description"].as_str().unwrap().contains("query string"),
            "{path}"
        );
    }
    let get_vm = &doc["paths"]["/api/GetVM"]["get"]["parameters"][0];
    assert_eq!(
        (&get_vm["name"], &get_vm["required"]),
        (&Value::from("vmId"), &Value::from(true))
    );
    let key = &doc["paths"]["/api/CreateVM"]["post"]["parameters"][0];
    assert_eq!(key["name"], "Idempotency-Key");
    assert_eq!(key["required"], false);
    assert_eq!(
        key["schema"]["type"], "string",
        "a plain string, never null"
    );
}

#[test]
fn every_route_lists_what_the_router_itself_answers() {
    let doc = document();
    assert!(
        doc["servers"].as_array().is_some_and(|s| !s.is_empty()),
        "a servers entry"
    );
    for route in routes() {
        let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
        let responses = &op["responses"];
        assert!(responses.get("405").is_some(), "{} without 405", route.path);
        assert!(
            responses["405"]["headers"].get("Allow").is_some(),
            "{} 405 without Allow",
            route.path
        );
        // Every route but the probe answers 503 while vmpool starts, /api/ routes also past
        // the request limits.
        if route.path != "/" {
            assert!(responses.get("503").is_some(), "{} without 503", route.path);
        }
        if route.access == Access::Anonymous {
            assert_eq!(op["security"], serde_json::json!([]), "{}", route.path);
        }
    }
}
