//! Identity-based storage: `AzureWebJobsStorage__*` settings, a token from the App Service
//! managed identity endpoint, and Azurite in OAuth mode over HTTPS.
//!
//! Azurite's `--oauth basic` (its `TableTokenAuthenticator`) accepts a bearer token only over
//! HTTPS, and checks the token's `nbf`/`exp`, an `iss` starting with `https://sts.windows.net/`
//! (or another Azure authority) and an `aud` of `https://storage.azure.com` (or the account's
//! table endpoint); it does not check the signature. So the test makes its own certificate
//! authority and server certificate, runs a managed identity endpoint on loopback that mints
//! such tokens for the resource it is asked for, and trusts its authority in the client.
//!
//! azure_identity 0.21 reads `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` from the process
//! environment only, and this crate forbids the `unsafe` that setting them in process needs:
//! so the test runs itself again as a child process with those variables set, and the child
//! connects through vmpool's configuration and azure_identity's App Service credential.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use vmpool::compute::arm::StaticToken;
use vmpool::config::{Config, StorageConfig};
use vmpool::secret::Secret;
use vmpool::store::identity::{CredentialKind, IdentityStorage};
use vmpool::store::table::{TableOptions, TableStore};
use vmpool::store::{StoreError, VmStore};

use crate::store_contract;
use crate::support::azurite::{ACCOUNT, Azurite, Persistence, table_name};

/// Set in the child process: the path of the test certificate authority (PEM).
const CHILD_CA: &str = "VMPOOL_IT_IDENTITY_CA";
/// The storage resource azure_storage asks tokens for (its scope without `/.default`).
const STORAGE_RESOURCE: &str = "https://storage.azure.com";
/// The issuer Entra ID puts in tokens (`https://sts.windows.net/<tenant>/`).
const ISSUER: &str = "https://sts.windows.net/00000000-0000-0000-0000-00000000000a/";
/// This test's name in the test binary, for the child run.
const THIS_TEST: &str = "identity_storage::managed_identity_reaches_azurite_in_oauth_mode";

fn settings(pairs: &[(&str, &str)]) -> Result<Config, vmpool::config::ConfigError> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::from_source(&map)
}

#[test]
fn an_explicit_setting_then_a_connection_string_then_the_identity_form_then_memory() {
    let identity = [
        ("AzureWebJobsStorage__accountName", "gamesstore"),
        ("AzureWebJobsStorage__credential", "managedidentity"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut all = identity.to_vec();
        all.extend_from_slice(extra);
        settings(&all).unwrap().storage
    };
    assert_eq!(with(&[("VMPOOL_STORAGE", "memory")]), StorageConfig::Memory);
    assert_eq!(
        with(&[("VMPOOL_STORAGE", "UseDevelopmentStorage=true")]),
        StorageConfig::Azure(Secret::new("UseDevelopmentStorage=true"))
    );
    assert_eq!(
        with(&[("AzureWebJobsStorage", "UseDevelopmentStorage=true")]),
        StorageConfig::Azure(Secret::new("UseDevelopmentStorage=true"))
    );
    assert_eq!(
        with(&[]),
        StorageConfig::Identity(IdentityStorage {
            table_service_uri: "https://gamesstore.table.core.windows.net".into(),
            credential: CredentialKind::ManagedIdentity,
            setting: "AzureWebJobsStorage__accountName",
        })
    );
    assert_eq!(settings(&[]).unwrap().storage, StorageConfig::Memory);
}

#[test]
fn a_user_assigned_identity_stops_start_up_naming_the_setting() {
    let err = settings(&[
        ("AzureWebJobsStorage__accountName", "gamesstore"),
        ("AzureWebJobsStorage__credential", "managedidentity"),
        (
            "AzureWebJobsStorage__clientId",
            "00000000-0000-0000-0000-000000000001",
        ),
    ])
    .unwrap_err();
    assert_eq!(err.var, "AzureWebJobsStorage__clientId");
    let line = err.to_string();
    assert!(line.contains("AzureWebJobsStorage__clientId"), "{line}");
    assert!(line.contains("user-assigned"), "{line}");
    assert!(!line.contains('\n'));
}

/// A certificate authority, and a server certificate for 127.0.0.1 that it signed.
struct Tls {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl Tls {
    fn new() -> Tls {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "vmpool test authority");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Tls {
            dir,
            ca_pem: ca.pem(),
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// An HTTP client that trusts the test authority (and nothing is proxied).
fn trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A JWT with the claims Azurite's basic OAuth mode reads; the signature is not checked there.
fn jwt(aud: &str, iss: &str, lifetime: std::ops::Range<i64>) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        json!({
            "aud": aud,
            "iss": iss,
            "iat": now + lifetime.start,
            "nbf": now + lifetime.start,
            "exp": now + lifetime.end,
            "oid": "00000000-0000-0000-0000-00000000000b",
        })
        .to_string(),
    );
    format!("{header}.{claims}.bm90LWNoZWNrZWQ")
}

/// One request the identity endpoint received.
#[derive(Debug, Clone)]
struct TokenRequest {
    api_version: Option<String>,
    resource: Option<String>,
    client_id: Option<String>,
    header_ok: bool,
}

#[derive(Clone)]
struct Endpoint {
    secret: String,
    seen: Arc<Mutex<Vec<TokenRequest>>>,
}

/// The App Service managed identity endpoint (`IDENTITY_ENDPOINT`, protocol version
/// 2019-08-01): `GET ?api-version=2019-08-01&resource=<resource>` with the `X-IDENTITY-HEADER`
/// secret from `IDENTITY_HEADER`, answering `access_token`, `expires_on` (Unix seconds as a
/// string), `resource` and `token_type`. Requests without the secret are refused.
async fn token(
    State(endpoint): State<Endpoint>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let seen = TokenRequest {
        api_version: query.get("api-version").cloned(),
        resource: query.get("resource").cloned(),
        client_id: query.get("client_id").cloned(),
        header_ok: headers
            .get("x-identity-header")
            .and_then(|v| v.to_str().ok())
            == Some(endpoint.secret.as_str()),
    };
    endpoint.seen.lock().unwrap().push(seen.clone());
    if !seen.header_ok || seen.api_version.as_deref() != Some("2019-08-01") {
        return (
            StatusCode::UNAUTHORIZED,
            "X-IDENTITY-HEADER or api-version is wrong",
        )
            .into_response();
    }
    let Some(resource) = seen.resource else {
        return (StatusCode::BAD_REQUEST, "resource is required").into_response();
    };
    let expires_on = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    axum::Json(json!({
        "access_token": jwt(&resource, ISSUER, -60..3600),
        "expires_on": expires_on.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": "00000000-0000-0000-0000-00000000000c",
    }))
    .into_response()
}

async fn identity_endpoint(secret: &str) -> (SocketAddr, Arc<Mutex<Vec<TokenRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/msi/token", axum::routing::get(token))
        .with_state(Endpoint {
            secret: secret.to_owned(),
            seen: seen.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// vmpool's identity settings for Azurite's HTTPS endpoint.
fn azurite_identity(azurite: &Azurite) -> IdentityStorage {
    let uri = format!("https://127.0.0.1:{}/{ACCOUNT}", azurite.port());
    match settings(&[
        ("AzureWebJobsStorage__tableServiceUri", &uri),
        ("AzureWebJobsStorage__credential", "managedidentity"),
    ])
    .unwrap()
    .storage
    {
        StorageConfig::Identity(identity) => identity,
        other => panic!("expected identity storage, got {other:?}"),
    }
}

async fn connect_with_token(
    identity: &IdentityStorage,
    token: String,
    http: &reqwest::Client,
) -> Result<TableStore, StoreError> {
    identity
        .connect_with(
            Arc::new(StaticToken::new(Secret::new(token))),
            &table_name("oauth"),
            TableOptions::default(),
            Some(http.clone()),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_reaches_azurite_in_oauth_mode() {
    if let Ok(ca) = std::env::var(CHILD_CA) {
        return child(Path::new(&ca)).await;
    }
    let tls = Tls::new();
    let azurite = Azurite::start_with(
        Persistence::InMemory,
        vec![
            "--oauth".into(),
            "basic".into(),
            "--cert".into(),
            tls.path("cert.pem").into(),
            "--key".into(),
            tls.path("key.pem").into(),
        ],
    );
    let http = trusting(&tls.ca_pem);
    let identity = azurite_identity(&azurite);

    // Azurite really checks: no token, a token for another audience, an expired token and a
    // token from an unknown issuer are refused; only then does a good one pass.
    let tables = format!("https://127.0.0.1:{}/{ACCOUNT}/Tables", azurite.port());
    let anonymous = http
        .get(&tables)
        .header("x-ms-version", "2019-02-02")
        .header("accept", "application/json;odata=nometadata")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 403, "a request without a token");
    for (why, token) in [
        (
            "another audience",
            jwt("https://management.azure.com", ISSUER, -60..3600),
        ),
        ("expired", jwt(STORAGE_RESOURCE, ISSUER, -7200..-3600)),
        (
            "another issuer",
            jwt(STORAGE_RESOURCE, "https://issuer.example/", -60..3600),
        ),
    ] {
        match connect_with_token(&identity, token, &http).await {
            Err(StoreError::Rejected(m)) => assert!(m.contains("403"), "{why}: {m}"),
            other => panic!("{why}: expected a refusal, got {:?}", other.map(|_| ())),
        }
    }
    let good = connect_with_token(&identity, jwt(STORAGE_RESOURCE, ISSUER, -60..3600), &http)
        .await
        .expect("a token Azurite accepts");
    assert!(good.describe().contains("managed identity"));

    // The child: vmpool's settings, azure_identity's App Service credential, our endpoint.
    let secret = format!("identity-header-{}", rand::random::<u64>());
    let (endpoint, seen) = identity_endpoint(&secret).await;
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([THIS_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_CA, tls.path("ca.pem"))
        .env("IDENTITY_ENDPOINT", format!("http://{endpoint}/msi/token"))
        .env("IDENTITY_HEADER", &secret)
        .env(
            "AzureWebJobsStorage__tableServiceUri",
            &identity.table_service_uri,
        )
        .env("AzureWebJobsStorage__credential", "managedidentity")
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("VMPOOL_STORAGE")
        .env_remove("AzureWebJobsStorage")
        .env_remove("AzureWebJobsStorage__accountName")
        .env_remove("AzureWebJobsStorage__clientId")
        .env_remove("AZURE_CREDENTIAL_KIND")
        .output()
        .await
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child run failed:\n{printed}");
    assert!(
        printed.contains("1 passed"),
        "the child ran no test:\n{printed}"
    );
    let seen = seen.lock().unwrap().clone();
    // One token per credential (the contract's, then start-up's), cached for every call.
    assert_eq!(seen.len(), 2, "{seen:?}");
    for request in &seen {
        assert!(request.header_ok, "the IDENTITY_HEADER secret was sent");
        assert_eq!(request.api_version.as_deref(), Some("2019-08-01"));
        assert_eq!(request.resource.as_deref(), Some(STORAGE_RESOURCE));
        assert_eq!(request.client_id, None, "the system-assigned identity");
    }
}

/// In the child process: the settings come from the environment as under the Functions host,
/// the credential is azure_identity's, and the store contract runs over it.
async fn child(ca: &Path) {
    let config = Config::from_env().unwrap();
    let StorageConfig::Identity(identity) = &config.storage else {
        panic!("expected identity storage, got {:?}", config.storage);
    };
    assert_eq!(identity.credential, CredentialKind::ManagedIdentity);
    let credential = identity.credential().unwrap();
    let http = trusting(&std::fs::read_to_string(ca).unwrap());
    let connect = || async {
        Arc::new(
            identity
                .connect_with(
                    credential.clone(),
                    &table_name("identity"),
                    TableOptions::default(),
                    Some(http.clone()),
                )
                .await
                .expect("connect with the managed identity"),
        ) as Arc<dyn VmStore>
    };
    store_contract::rows_round_trip_as_normalised(connect().await).await;
    store_contract::inserting_an_existing_key_loses_and_changes_nothing(connect().await).await;
    store_contract::missing_rows_are_none_and_writes_to_them_lose(connect().await).await;
    store_contract::updates_need_the_current_etag(connect().await).await;
    store_contract::deletes_need_the_current_etag(connect().await).await;
    store_contract::one_of_many_concurrent_writers_wins(connect().await).await;
    store_contract::lists_select_by_state_with_usable_etags(connect().await).await;
    store_contract::lists_page_past_a_thousand_rows(connect().await).await;
    store_contract::awkward_but_valid_names_work_everywhere(connect().await).await;
    store_contract::extreme_values_are_kept_or_cut_the_same_way(connect().await).await;
    store_contract::the_pool_record_is_kept_apart(connect().await).await;
    store_contract::records_are_written_conditionally(connect().await).await;

    // Start-up builds the store from the same settings with a credential of its own. It does
    // not trust the test authority, so it stops with one line naming the setting: identity
    // storage was chosen, not the in-memory table.
    let clock: Arc<dyn vmpool::clock::Clock> = Arc::new(vmpool::clock::SystemClock);
    let err = vmpool::startup::ports(&config, clock)
        .await
        .err()
        .expect("start-up cannot trust the test authority");
    let line = err.to_string();
    assert!(
        line.starts_with("AzureWebJobsStorage__tableServiceUri: "),
        "{line}"
    );
    assert!(line.contains("certificate"), "{line}");
    assert!(!line.contains('\n'), "{line}");
}
