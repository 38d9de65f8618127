//! The Functions host contract: reads `host.json` and every
//! `function-definitions/*/function.json`, then does exactly what the host would do with each
//! request (match the route ignoring case, answer 404 itself for an unknown route or a method
//! the function does not list, otherwise forward the request with the path as the caller typed
//! it; the timer's `{"Data", "Metadata"}` POST) and checks the answers. A renamed folder, a
//! wrong method or a broken function.json fails here.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use time::Duration;

use crate::support::spawn_sim;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every function definition by name.
fn definitions() -> BTreeMap<String, Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("function-definitions");
    std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            (name, read_json(&dir.join("function.json")))
        })
        .collect()
}

#[test]
fn host_json_forwards_http_to_the_vmpool_binary() {
    let host = read_json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("host.json"));
    assert_eq!(host["version"], "2.0");
    let handler = &host["customHandler"];
    assert_eq!(handler["enableForwardingHttpRequest"], true);
    assert_eq!(handler["description"]["defaultExecutablePath"], "vmpool");
    assert_eq!(
        env!("CARGO_PKG_NAME"),
        "vmpool",
        "the binary the host starts"
    );
    let settings = read_json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("local.settings.json"));
    assert_eq!(settings["Values"]["FUNCTIONS_WORKER_RUNTIME"], "custom");
    assert_eq!(
        settings["Values"]["AzureWebJobsStorage"],
        "UseDevelopmentStorage=true"
    );
}

#[test]
fn every_function_of_the_design_is_defined_with_valid_bindings() {
    let defs = definitions();
    let names: Vec<&str> = defs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "CreateVM",
            "Dashboard",
            "GetAvailableVMs",
            "GetPoolStatus",
            "GetVM",
            "MarkVMForDeallocation",
            "Metrics",
            "OpenApi",
            "ReconcilePool",
            "ReportGameRoomsNumber"
        ]
    );
    for (name, def) in &defs {
        let bindings = def["bindings"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no bindings"));
        let types: Vec<&str> = bindings
            .iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect();
        if name == "ReconcilePool" {
            assert_eq!(types, ["timerTrigger"], "{name}");
            let schedule = bindings[0]["schedule"].as_str().unwrap();
            assert_eq!(
                schedule.split_whitespace().count(),
                6,
                "six-field NCRONTAB: {schedule}"
            );
        } else {
            // Forwarding needs exactly one httpTrigger in and one http out.
            assert_eq!(types, ["httpTrigger", "http"], "{name}");
            assert_eq!(bindings[0]["direction"], "in");
            assert_eq!(bindings[1]["direction"], "out");
            // The OpenAPI document is public, at a route a function name cannot spell.
            let (auth, route) = if name == "OpenApi" {
                ("anonymous", Some("openapi.json"))
            } else {
                ("function", None)
            };
            assert_eq!(bindings[0]["authLevel"], auth, "{name}");
            assert_eq!(
                bindings[0]["route"].as_str(),
                route,
                "{name}: the route is the folder name"
            );
        }
    }
}

/// What the host answers a caller.
#[derive(Debug, PartialEq)]
enum HostAnswer {
    /// The host's own 404: no function has this route, or it does not list this method.
    /// vmpool never sees the request.
    HostNotFound,
    /// The request was forwarded; vmpool's status and JSON body.
    Forwarded(u16, Value),
}

/// What the host does with one HTTP request to the app, `path` as the caller typed it: the
/// function whose `api/<Name>` route matches ignoring case, and whose `methods` list the
/// method, gets the original request forwarded; anything else gets the host's 404.
async fn host_request(
    app: &crate::support::TestApp,
    defs: &BTreeMap<String, Value>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> HostAnswer {
    let function = defs.iter().find(|(name, def)| {
        def["bindings"][0]["type"] == "httpTrigger"
            && path.eq_ignore_ascii_case(&format!("/api/{name}"))
    });
    let Some((_, def)) = function else {
        return HostAnswer::HostNotFound;
    };
    let listed = def["bindings"][0]["methods"].as_array().unwrap();
    if !listed
        .iter()
        .any(|m| m.as_str().unwrap().eq_ignore_ascii_case(method))
    {
        return HostAnswer::HostNotFound;
    }
    let url = format!("{}{path}?code=host-checked-key", app.base);
    let mut req = app
        .http
        .request(
            reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
            url,
        )
        .header("x-functions-key", "host-checked-key")
        .header("x-ms-client-request-id", "c0ffee")
        .header("x-forwarded-for", "203.0.113.200:5555");
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    HostAnswer::Forwarded(status, res.json().await.unwrap())
}

fn forwarded(answer: HostAnswer) -> (u16, Value) {
    match answer {
        HostAnswer::Forwarded(status, json) => (status, json),
        HostAnswer::HostNotFound => panic!("the host did not forward the request"),
    }
}

#[tokio::test]
async fn the_host_can_drive_every_function_as_defined() {
    // The host sets its port; a VMPOOL_API_KEY left over from standalone use is ignored (the
    // host checks function keys and forwards them, with its own key, as sent here).
    let sim = spawn_sim(&[
        ("FUNCTIONS_CUSTOMHANDLER_PORT", "7071"),
        ("VMPOOL_API_KEY", "standalone-only"),
    ])
    .await;
    let app = &sim.app;
    let defs = definitions();

    // The host probes GET / before it sends work.
    let probe = app.send("GET", "/", None).await;
    assert_eq!(probe.status, 200);

    let methods = |name: &str| -> Vec<String> {
        defs[name]["bindings"][0]["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_owned())
            .collect()
    };

    // CreateVM, then the timer finishes it, then every other function on that VM.
    let [create] = methods("CreateVM").try_into().unwrap();
    // The host forwards the path as the caller typed it.
    let (status, created) =
        forwarded(host_request(app, &defs, &create, "/api/createvm", None).await);
    assert_eq!(status, 202, "{created}");
    let id = created["vm"]["vmId"].as_str().unwrap().to_owned();

    sim.clock.advance(Duration::minutes(5));
    let timer_binding = defs["ReconcilePool"]["bindings"][0]["name"]
        .as_str()
        .unwrap();
    let invocation = json!({
        "Data": {
            timer_binding: {
                "Schedule": {"AdjustForDST": true},
                "ScheduleStatus": {
                    "Last": "2026-01-01T00:04:50+00:00",
                    "Next": "2026-01-01T00:05:00+00:00",
                    "LastUpdated": "2026-01-01T00:04:50+00:00"
                },
                "IsPastDue": false
            }
        },
        "Metadata": {"sys": {"MethodName": "ReconcilePool", "UtcNow": "2026-01-01T00:05:00Z", "RandGuid": "5b1c"}}
    });
    let res = app
        .http
        .post(format!("{}/ReconcilePool", app.base))
        .json(&invocation)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["Outputs"], json!({}));
    assert!(
        out["Logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("1 completed")),
        "{out}"
    );
    assert_eq!(out["ReturnValue"]["ok"], true);

    let [get] = methods("GetAvailableVMs").try_into().unwrap();
    let (status, available) =
        forwarded(host_request(app, &defs, &get, "/API/GETAVAILABLEVMS", None).await);
    assert_eq!(
        (status, available["vms"][0]["vmId"].as_str()),
        (200, Some(id.as_str()))
    );

    let [get] = methods("GetPoolStatus").try_into().unwrap();
    let (status, pool) =
        forwarded(host_request(app, &defs, &get, "/api/GetPoolStatus", None).await);
    assert_eq!((status, &pool["counts"]["Running"]), (200, &json!(1)));

    let [post] = methods("ReportGameRoomsNumber").try_into().unwrap();
    let (status, reported) = forwarded(
        host_request(
            app,
            &defs,
            &post,
            "/api/reportGameRoomsNumber",
            Some(json!({"vmId": id, "rooms": 4})),
        )
        .await,
    );
    assert_eq!(
        (status, reported["action"].as_str()),
        (200, Some("recorded"))
    );

    let [post] = methods("MarkVMForDeallocation").try_into().unwrap();
    let (status, marked) = forwarded(
        host_request(
            app,
            &defs,
            &post,
            "/api/markvmfordeallocation",
            Some(json!({"vmId": id})),
        )
        .await,
    );
    assert_eq!(
        (status, marked["vm"]["state"].as_str()),
        (200, Some("MarkedForDeallocation"))
    );

    // A method the definition does not list gets the host's own 404: vmpool never sees it.
    // Standalone, vmpool answers such a request itself with 405 and an Allow header.
    for (name, def) in &defs {
        if name == "ReconcilePool" {
            continue;
        }
        let listed = methods(name);
        let other = if listed.contains(&"get".to_owned()) {
            "DELETE"
        } else {
            "GET"
        };
        let path = format!(
            "/api/{}",
            def["bindings"][0]["route"].as_str().unwrap_or(name)
        );
        assert_eq!(
            host_request(app, &defs, other, &path, None).await,
            HostAnswer::HostNotFound,
            "{name} {other}"
        );
        let standalone = app.send(other, &path, None).await;
        assert_eq!(standalone.status, 405, "{name} {other}");
        let allow = standalone.headers["allow"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        for m in &listed {
            assert!(
                allow.contains(m.as_str()),
                "{name}: Allow {allow} lacks {m}"
            );
        }
        assert_eq!(
            standalone.json["error"]["code"], "MethodNotAllowed",
            "{def}"
        );
    }
    // A route no function has is the host's 404 too.
    assert_eq!(
        host_request(app, &defs, "post", "/api/CreateVMs", None).await,
        HostAnswer::HostNotFound
    );
}
