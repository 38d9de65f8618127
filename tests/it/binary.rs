//! The real `vmpool` binary. A bad setting stops it with one line naming the variable; what
//! start-up warns about is logged; and no secret reaches a log at any level: it runs with
//! `RUST_LOG=trace`
//! against Azurite (once with a SAS connection string, once with an account key) and the ARM
//! fake (with a bearer token), an API key set, in text and in JSON; a few requests go through
//! every part (CreateVM with an ARM create, a reconcile pass, a refused key), and then its whole
//! output is searched for each secret.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmpool_arm_fake::{FakeOp, FakeSettings};

use crate::support::arm::{Fake, spawn_fake_with};
use crate::support::azurite::{self, ACCOUNT, Azurite, KEY, Persistence};

const API_KEY: &str = "api-key-5b2e8d1f0c7a4e93";
const ARM_TOKEN: &str = "arm-token-7f3c9e2a61d84b05";
const SUBSCRIPTION: &str = "00000000-0000-0000-0000-00000000beef";

/// An account SAS for the Table service, signed with the development key: `(token, sig)`.
/// Built by hand because azure_storage's builder takes one resource type, and a table store
/// needs service, container and object access.
fn account_sas() -> (String, String) {
    let (permissions, services, types, expiry, version) =
        ("racwdlup", "t", "sco", "2099-01-01T00:00:00Z", "2018-11-09");
    let to_sign =
        format!("{ACCOUNT}\n{permissions}\n{services}\n{types}\n\n{expiry}\n\n\n{version}\n");
    let sig = azure_core::hmac::hmac_sha256(&to_sign, &azure_core::auth::Secret::new(KEY)).unwrap();
    let token = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", version)
        .append_pair("ss", services)
        .append_pair("srt", types)
        .append_pair("se", expiry)
        .append_pair("sp", permissions)
        .append_pair("sig", &sig)
        .finish();
    (token, sig)
}

fn sas_connection_string(azurite: &Azurite, token: &str) -> String {
    format!(
        "TableEndpoint=http://127.0.0.1:{}/{ACCOUNT};SharedAccessSignature={token}",
        azurite.port()
    )
}

async fn arm_fake() -> Fake {
    let settings = FakeSettings {
        token: ARM_TOKEN.into(),
        subscription_id: SUBSCRIPTION.into(),
        ..FakeSettings::default()
    };
    spawn_fake_with(settings, 5).await
}

/// The binary, started with exactly `vars` (nothing inherited), its output in `dir`.
struct Binary {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Binary {
    /// Listens on a free port given in `port_var` (`VMPOOL_PORT`, or the host's variable).
    fn start(vars: &[(&str, String)], port_var: &str) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_vmpool"))
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .env(port_var, port.to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        Binary {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Waits until it answers the probe with `status` (`ok` once storage answers).
    async fn wait_for_probe(&mut self, http: &reqwest::Client, status: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(res) = http.get(format!("{}/", self.base)).send().await {
                assert_eq!(res.status(), 200);
                let body: serde_json::Value = res.json().await.unwrap();
                if body["status"] == status {
                    return body;
                }
            }
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!("vmpool exited with {exit}:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "vmpool did not answer the probe with {status:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every route serves.
    async fn wait_until_up(&mut self, http: &reqwest::Client) {
        self.wait_for_probe(http, "ok").await;
    }

    fn output(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap();
        format!("{}{}", read("stdout"), read("stderr"))
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output()
    }
}

/// Runs the binary with `vars` plus the API key, the ARM settings and `RUST_LOG=trace`, drives
/// it, and returns everything it wrote.
async fn run_and_drive(fake: &Fake, table: &str, vars: &[(&str, String)]) -> String {
    let mut all: Vec<(&str, String)> = vec![
        ("RUST_LOG", "trace".into()),
        ("VMPOOL_TABLE", table.into()),
        ("VMPOOL_API_KEY", API_KEY.into()),
        ("VMPOOL_RECONCILE_SECS", "0".into()),
        ("VMPOOL_COMPUTE", "arm".into()),
        ("VMPOOL_ARM_ENDPOINT", fake.base.clone()),
        ("VMPOOL_ARM_TOKEN", ARM_TOKEN.into()),
        ("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION.into()),
        ("VMPOOL_RESOURCE_GROUP", "games".into()),
        ("VMPOOL_LOCATION", "westeurope".into()),
        (
            "VMPOOL_SUBNET_ID",
            format!(
                "/subscriptions/{SUBSCRIPTION}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default"
            ),
        ),
        (
            "VMPOOL_SSH_PUBLIC_KEY",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILogs logs".into(),
        ),
    ];
    all.extend(vars.iter().cloned());
    let http = reqwest::Client::new();
    let mut binary = Binary::start(&all, "VMPOOL_PORT");
    binary.wait_until_up(&http).await;
    let base = &binary.base;
    let puts_before = fake.fake.accepted(FakeOp::PutVm).len();

    let created = http
        .post(format!("{base}/api/CreateVM"))
        .header("x-functions-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202, "{}", binary.output());
    // The key in the query string, on a path typed in another case.
    let status = http
        .get(format!("{base}/api/getpoolstatus?code={API_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let status: serde_json::Value = status.json().await.unwrap();
    assert_eq!(
        status["counts"]["Creating"], 1,
        "the row is in Azurite: {status}"
    );
    let reconciled = http
        .post(format!("{base}/ReconcilePool?code={API_KEY}"))
        .json(&serde_json::json!({"Data": {"timer": {"IsPastDue": false}}, "Metadata": {}}))
        .send()
        .await
        .unwrap();
    let reconciled: serde_json::Value = reconciled.json().await.unwrap();
    assert_eq!(reconciled["ReturnValue"]["ok"], true, "{reconciled}");
    let refused = http
        .post(format!("{base}/api/CreateVM?code={API_KEY}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        fake.fake.accepted(FakeOp::PutVm).len(),
        puts_before + 1,
        "the ARM fake received the create, with the token"
    );
    binary.stop()
}

fn assert_no_secret(output: &str, secrets: &[(&str, &str)]) {
    for (what, secret) in secrets {
        assert!(!secret.is_empty());
        assert!(
            !output.contains(secret),
            "the {what} is in the log ({} bytes of output)",
            output.len()
        );
    }
}

#[tokio::test]
async fn no_secret_reaches_the_log_at_trace_level_in_text_or_json() {
    let azurite = Azurite::shared();
    let fake = arm_fake().await;
    let (sas, sig) = account_sas();
    let sig_in_url: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
    let sas_storage = sas_connection_string(azurite, &sas);
    let key_storage = azurite.connection_string();
    let secrets = [
        ("SAS token", sas.as_str()),
        ("SAS signature", sig.as_str()),
        ("SAS signature as sent in the URL", sig_in_url.as_str()),
        ("account key", KEY),
        ("API key", API_KEY),
        ("ARM token", ARM_TOKEN),
    ];

    // Text, the table reached with the SAS (the account key is set too, for the host).
    let text = run_and_drive(
        &fake,
        &azurite::table_name("logsas"),
        &[
            ("VMPOOL_STORAGE", sas_storage.clone()),
            ("AzureWebJobsStorage", key_storage.clone()),
        ],
    )
    .await;
    // JSON, the table reached with the account key (the SAS is set too).
    let json = run_and_drive(
        &fake,
        &azurite::table_name("logkey"),
        &[
            ("VMPOOL_LOG_FORMAT", "json".into()),
            ("VMPOOL_STORAGE", key_storage),
            ("AzureWebJobsStorage", sas_storage),
        ],
    )
    .await;

    // Both runs logged at trace level, requests included, so the search means something.
    assert!(
        text.contains("vmpool listening on") && text.contains("TRACE"),
        "{text}"
    );
    assert!(text.contains("/api/CreateVM"), "{text}");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "TRACE"));
    assert!(lines.iter().any(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("vmpool listening on"))
    }));
    assert_no_secret(&text, &secrets);
    assert_no_secret(&json, &secrets);
}

/// The binary with nothing inherited and the ARM settings a deployment gives it (no storage),
/// on a port it never reaches.
fn binary_with_arm_settings() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmpool"));
    command
        .env_clear()
        .env("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
        .env("VMPOOL_RESOURCE_GROUP", "games")
        .env("VMPOOL_LOCATION", "westeurope")
        .env(
            "VMPOOL_SUBNET_ID",
            format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default"),
        )
        .env("VMPOOL_SSH_PUBLIC_KEY", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILogs logs")
        .env("VMPOOL_PORT", "1");
    command
}

#[test]
fn arm_without_a_storage_setting_does_not_start() {
    let output = binary_with_arm_settings().output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "vmpool: configuration error: VMPOOL_STORAGE: is required when VMPOOL_COMPUTE=arm"
        ),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn bad_pool_definitions_stop_start_up_with_one_line_naming_pool_and_field() {
    let fake = arm_fake().await;
    let ok = r#""location": "westeurope", "image": "Canonical:ubuntu-24_04-lts:server:latest", "build": "1""#;
    let cases: Vec<(String, &str)> = vec![
        (
            format!(r#"{{"eu": {{{ok}, "vmsize": "Standard_D2s_v5"}}}}"#),
            r#"pool "eu": definition: unknown field "vmsize""#,
        ),
        (
            format!(r#"{{"eu": {{{ok}}}, "eu": {{{ok}}}}}"#),
            r#"pool "eu" is defined twice"#,
        ),
        (
            format!(r#"{{"eu_west": {{{ok}}}}}"#),
            r#"pool "eu_west": "eu_west" is not a pool name"#,
        ),
        (
            format!(r#"{{"eu": {{{ok}, "minStandby": 9, "maxVms": 4}}}}"#),
            r#"pool "eu": minStandby: 9 is more than maxVms (4)"#,
        ),
        (
            r#"{"eu": {"location": "westeurope", "image": "ubuntu:latest", "build": "1"}}"#.into(),
            r#"pool "eu": image:"#,
        ),
        (
            r#"{"eu": {"location": "westeurope", "image": "a:b:c:1"}}"#.into(),
            r#"pool "eu": build:"#,
        ),
    ];
    for (pools, says) in cases {
        let output = binary_with_arm_settings()
            .env("VMPOOL_COMPUTE", "arm")
            .env("VMPOOL_ARM_ENDPOINT", &fake.base)
            .env("VMPOOL_ARM_TOKEN", ARM_TOKEN)
            .env("VMPOOL_STORAGE", "UseDevelopmentStorage=true")
            .env("VMPOOL_POOLS", &pools)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{pools}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("vmpool: configuration error: VMPOOL_POOLS: ")
                && stderr.contains(says),
            "{pools}: {stderr}"
        );
        assert!(output.stdout.is_empty());
    }
    assert!(
        fake.fake.requests().is_empty(),
        "nothing reaches ARM from a pool definition start-up refused"
    );
}

#[tokio::test]
async fn under_the_host_an_api_key_is_ignored_and_start_up_says_so() {
    let http = reqwest::Client::new();
    let mut binary = Binary::start(
        &[
            ("VMPOOL_API_KEY", API_KEY.to_owned()),
            ("VMPOOL_LOG_FORMAT", "json".to_owned()),
        ],
        "FUNCTIONS_CUSTOMHANDLER_PORT",
    );
    binary.wait_until_up(&http).await;
    // The host has checked its function key; vmpool asks for none.
    let created = http
        .post(format!("{}/api/CreateVM", binary.base))
        .header("x-functions-key", "the-hosts-function-key")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202);
    let output = binary.stop();
    let warnings: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["level"] == "WARN")
        .collect();
    assert_eq!(warnings.len(), 1, "{output}");
    assert_eq!(
        warnings[0]["message"],
        "VMPOOL_API_KEY is ignored under the Functions host, which checks function keys itself"
    );
    assert!(output.contains("under the Functions host, which checks function keys"));
    assert!(!output.contains(API_KEY));
}

/// In the first minutes of a deployment storage refuses the app's identity (its roles are
/// still propagating) or cannot be reached. vmpool must not exit, or the host restarts it in a
/// loop and the app looks dead: it listens at once, answers the probe, answers every other
/// route 503 with `Retry-After` and the reason, and serves once storage answers, without a
/// restart. Here storage is an Azurite that starts after vmpool, on the port vmpool was given.
#[tokio::test]
async fn started_before_storage_it_answers_503_with_the_reason_then_serves_without_a_restart() {
    let mut azurite = Azurite::unstarted(Persistence::InMemory);
    let http = reqwest::Client::new();
    let mut binary = Binary::start(
        &[
            ("VMPOOL_STORAGE", azurite.connection_string()),
            ("VMPOOL_TABLE", azurite::table_name("early")),
            ("VMPOOL_RECONCILE_SECS", "1".into()),
            ("VMPOOL_LOG_FORMAT", "json".into()),
        ],
        "FUNCTIONS_CUSTOMHANDLER_PORT",
    );
    let base = binary.base.clone();

    // The probe is answered at once, and says why the rest is not served yet.
    let probe = binary.wait_for_probe(&http, "starting").await;
    let reason = probe["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("table storage"), "{probe}");
    assert!(!reason.contains(KEY), "{probe}");

    for (method, path) in [
        (reqwest::Method::POST, "/api/CreateVM"),
        (reqwest::Method::GET, "/api/GetPoolStatus"),
        (reqwest::Method::GET, "/api/Metrics"),
        (reqwest::Method::POST, "/ReconcilePool"),
    ] {
        let res = http
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 503, "{method} {path}");
        let retry_after: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=15).contains(&retry_after), "{retry_after}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "Unavailable", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("starting") && message.contains("table storage"),
            "{message}"
        );
    }

    // Storage comes up; the same process serves.
    azurite.restart();
    binary.wait_until_up(&http).await;
    let created = http
        .post(format!("{base}/api/CreateVM"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202, "{}", binary.output());
    let status: serde_json::Value = http
        .get(format!("{base}/api/GetPoolStatus"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["counts"]["Creating"], 1, "in Azurite: {status}");
    assert!(binary.child.try_wait().unwrap().is_none(), "never exited");

    // The reconcile loop runs once storage answers; its pass line is what the README's
    // Application Insights queries parse.
    let deadline = Instant::now() + Duration::from_secs(30);
    let measured = loop {
        let passed = binary
            .output()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "reconcile pass measured" && l["ok"] == true);
        if let Some(line) = passed {
            break line;
        }
        assert!(Instant::now() < deadline, "no pass:\n{}", binary.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = binary.stop();
    assert!(
        output.contains("table storage does not answer yet"),
        "{output}"
    );
    assert!(output.contains("table storage answers now"), "{output}");
    readme_queries_parse(&measured);
}

/// The Functions host logs each line vmpool writes as the plain message of a trace in the
/// category `Host.Function.Console` (azure-functions-host, `WorkerConsoleLogService`): it does
/// not parse JSON, so nothing of the line is in `customDimensions`. The README's queries parse
/// the message, and every field they read is one the pass line has.
fn readme_queries_parse(measured: &serde_json::Value) {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let queries: Vec<&str> = readme
        .split("```kusto")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert!(queries.len() >= 3, "{queries:?}");
    let field = regex::Regex::new(r"\bline\.([A-Za-z_]+)").unwrap();
    for query in &queries {
        assert!(
            query.contains(r#"customDimensions.Category == "Host.Function.Console""#),
            "{query}"
        );
        assert!(
            query.contains("extend line = parse_json(message)"),
            "{query}"
        );
        let dimensions = query.matches("customDimensions.").count();
        assert_eq!(dimensions, 1, "only the category is a dimension: {query}");
        for name in field.captures_iter(query) {
            assert!(
                measured.get(&name[1]).is_some(),
                "line.{} is not a field of {measured}",
                &name[1]
            );
        }
    }
    let alert = queries
        .iter()
        .find(|q| q.contains("ago(5m)"))
        .expect("the alert query");
    assert!(alert.contains(r#"tostring(line.ok) == "true""#), "{alert}");
    assert!(alert.contains(r#"tostring(line.message) == "reconcile pass measured""#));
    assert_eq!(measured["ok"].to_string(), "true");
}
