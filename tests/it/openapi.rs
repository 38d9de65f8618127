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
        let secured = op.get("security").is_some();
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
