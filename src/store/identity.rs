//! Identity-based access to the Table service: `AzureWebJobsStorage` as Azure Functions sets
//! it without a connection string, and bearer tokens from azure_identity instead of a key.
//!
//! Azure Functions documents these settings for host storage with an identity
//! ("Connecting to host storage with an identity" and "Common properties for identity-based
//! connections" in the Functions developer reference):
//!
//! - `AzureWebJobsStorage__tableServiceUri`: the Table service's data-plane URI, HTTPS
//!   (`https://<account>.table.core.windows.net`); any cloud or custom DNS.
//! - `AzureWebJobsStorage__accountName`: the account name alone, for global Azure only; the
//!   endpoint is inferred as `https://<account>.table.core.windows.net`. When both are set the
//!   URI is used.
//! - `AzureWebJobsStorage__credential`: `managedidentity` for the app's managed identity;
//!   unset, the host uses a credential chain (environment, managed identity, developer sign-in).
//! - `AzureWebJobsStorage__clientId` (or `__managedIdentityResourceId`): a user-assigned
//!   identity. azure_identity 0.21 asks the managed identity endpoint for the system-assigned
//!   identity only (its client-ID variant is private and never built), so these settings stop
//!   start-up with a one-line error instead of silently using another identity.
//!
//! Tokens are requested for `https://storage.azure.com/.default` (azure_storage's scope); the
//! identity needs a data role on the account, such as Storage Table Data Contributor.

use std::sync::Arc;

use azure_core::auth::TokenCredential;
use azure_identity::{
    AppServiceManagedIdentityCredential, TokenCredentialOptions,
    VirtualMachineManagedIdentityCredential,
};
use azure_storage::{CloudLocation, StorageCredentials};

use super::StoreError;
use super::table::{TableOptions, TableStore};

/// The account name, for global Azure (`https://<account>.table.core.windows.net`).
pub const ACCOUNT_NAME: &str = "AzureWebJobsStorage__accountName";
/// The Table service's data-plane URI.
pub const TABLE_SERVICE_URI: &str = "AzureWebJobsStorage__tableServiceUri";
/// How a token is obtained: `managedidentity`, or unset for the credential chain.
pub const CREDENTIAL: &str = "AzureWebJobsStorage__credential";
/// A user-assigned managed identity's client ID (not supported; see the module docs).
pub const CLIENT_ID: &str = "AzureWebJobsStorage__clientId";
/// A user-assigned managed identity's resource ID (not supported; see the module docs).
pub const MANAGED_IDENTITY_RESOURCE_ID: &str = "AzureWebJobsStorage__managedIdentityResourceId";

/// The App Service / Functions managed identity endpoint, set by the platform.
const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";

/// How the bearer token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// `__credential=managedidentity`: the app's system-assigned managed identity, from
    /// `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (App Service, Functions) when set, else from the
    /// VM's instance metadata endpoint.
    ManagedIdentity,
    /// `__credential` unset: azure_identity's credential chain (environment service principal,
    /// managed identity, Azure CLI), or the one kind `AZURE_CREDENTIAL_KIND` names.
    Chain,
}

/// Where the Table service is and how to get a token for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityStorage {
    /// The Table service endpoint: an `https` URL without query or trailing `/`.
    pub table_service_uri: String,
    /// How the token is obtained.
    pub credential: CredentialKind,
    /// The setting the endpoint came from, for start-up errors.
    pub setting: &'static str,
}

/// A setting that cannot work; the message does not repeat the variable's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

fn bad(var: &'static str, message: impl Into<String>) -> SettingError {
    SettingError {
        var,
        message: message.into(),
    }
}

impl IdentityStorage {
    /// Reads the identity-based settings through `get` (which treats empty values as unset).
    /// `Ok(None)` when none of them is set. Called only when no connection string is set.
    pub fn from_settings(
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<IdentityStorage>, SettingError> {
        let uri = get(TABLE_SERVICE_URI).map(|v| v.trim().to_owned());
        let account = get(ACCOUNT_NAME).map(|v| v.trim().to_owned());
        let credential = get(CREDENTIAL).map(|v| v.trim().to_owned());
        for var in [CLIENT_ID, MANAGED_IDENTITY_RESOURCE_ID] {
            if get(var).is_some() {
                return Err(bad(
                    var,
                    "a user-assigned identity is not supported (vmpool's Azure SDK, azure_identity 0.21, gets tokens for the system-assigned managed identity only); remove it and give the app's system-assigned identity a Storage Table Data role, or set VMPOOL_STORAGE to a connection string",
                ));
            }
        }
        let (endpoint, setting) = match (uri, account) {
            (Some(uri), _) => (table_service_uri(&uri)?, TABLE_SERVICE_URI),
            (None, Some(account)) => {
                check_account_name(&account)?;
                (
                    format!("https://{account}.table.core.windows.net"),
                    ACCOUNT_NAME,
                )
            }
            (None, None) => {
                return match get(CREDENTIAL).map(|_| CREDENTIAL) {
                    None => Ok(None),
                    Some(var) => Err(bad(
                        TABLE_SERVICE_URI,
                        format!(
                            "is required with {var}: vmpool keeps its tables in the Table service; set it (https://<account>.table.core.windows.net) or {ACCOUNT_NAME}"
                        ),
                    )),
                };
            }
        };
        let credential = match credential {
            None => CredentialKind::Chain,
            Some(c) if c.eq_ignore_ascii_case("managedidentity") => CredentialKind::ManagedIdentity,
            Some(other) => {
                return Err(bad(
                    CREDENTIAL,
                    format!(
                        "{other:?} is not supported: set managedidentity, or leave it unset for the credential chain"
                    ),
                ));
            }
        };
        Ok(Some(IdentityStorage {
            table_service_uri: endpoint,
            credential,
            setting,
        }))
    }

    /// The azure_identity credential this configuration asks for. It reads the process
    /// environment (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`, `AZURE_*`) as azure_identity does.
    pub fn credential(&self) -> Result<Arc<dyn TokenCredential>, StoreError> {
        match self.credential {
            CredentialKind::ManagedIdentity if std::env::var_os(IDENTITY_ENDPOINT).is_some() => {
                AppServiceManagedIdentityCredential::create(TokenCredentialOptions::default())
                    .map(|c| Arc::new(c) as Arc<dyn TokenCredential>)
                    .map_err(|_| {
                        StoreError::Rejected(format!(
                            "{IDENTITY_ENDPOINT} is not a URL, so the managed identity cannot be used"
                        ))
                    })
            }
            CredentialKind::ManagedIdentity => Ok(Arc::new(
                VirtualMachineManagedIdentityCredential::new(TokenCredentialOptions::default()),
            )),
            CredentialKind::Chain => azure_identity::create_credential().map_err(|e| {
                StoreError::Rejected(format!("no Azure credential is available: {e}"))
            }),
        }
    }

    /// Which identity is used, for the start-up line.
    pub fn describe(&self) -> String {
        let how = match self.credential {
            CredentialKind::ManagedIdentity => "managed identity",
            CredentialKind::Chain => "azure_identity credential chain",
        };
        format!("Azure Table Storage at {} ({how})", self.table_service_uri)
    }

    /// Connects with [`IdentityStorage::credential`] and the default [`TableOptions`], and
    /// creates the tables when absent.
    pub async fn connect(&self, table: &str) -> Result<TableStore, StoreError> {
        self.connect_with(self.credential()?, table, TableOptions::default(), None)
            .await
    }

    /// The store with [`IdentityStorage::credential`] and the default [`TableOptions`],
    /// without a call to the service or the identity endpoint: [`TableStore::prepare`] must
    /// succeed before it is used.
    pub fn open(&self, table: &str) -> Result<TableStore, StoreError> {
        TableStore::open_to(
            self.location(),
            StorageCredentials::token_credential(self.credential()?),
            &self.describe(),
            table,
            TableOptions::default(),
            None,
        )
    }

    fn location(&self) -> CloudLocation {
        CloudLocation::Custom {
            account: account_of(&self.table_service_uri),
            uri: self.table_service_uri.clone(),
        }
    }

    /// Connects with `credential`, over `http` when given (for a private certificate
    /// authority), and creates `table` and `<table>meta` when absent.
    pub async fn connect_with(
        &self,
        credential: Arc<dyn TokenCredential>,
        table: &str,
        options: TableOptions,
        http: Option<reqwest::Client>,
    ) -> Result<TableStore, StoreError> {
        TableStore::connect_to(
            self.location(),
            StorageCredentials::token_credential(credential),
            &self.describe(),
            table,
            options,
            http,
        )
        .await
    }
}

/// Checks a Table service URI: `https` (a bearer token never travels in clear), a host, no
/// credentials, query or fragment. A path is kept (emulators serve `/<account>`).
fn table_service_uri(raw: &str) -> Result<String, SettingError> {
    let url = url::Url::parse(raw)
        .map_err(|_| bad(TABLE_SERVICE_URI, format!("{raw:?} is not a URL")))?;
    if url.scheme() != "https" {
        return Err(bad(
            TABLE_SERVICE_URI,
            format!(
                "{raw:?} must use https: bearer tokens are sent over HTTPS only (for Azurite over HTTP, use VMPOOL_STORAGE=UseDevelopmentStorage=true)"
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty)
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(bad(
            TABLE_SERVICE_URI,
            format!(
                "{raw:?} must be the service's address alone, like https://<account>.table.core.windows.net"
            ),
        ));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// Storage account names: 3-24 lowercase letters and digits.
fn check_account_name(raw: &str) -> Result<(), SettingError> {
    let ok = (3..=24).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(bad(
            ACCOUNT_NAME,
            format!("{raw:?} is not a storage account name (3-24 lowercase letters and digits)"),
        ))
    }
}

/// The account an endpoint serves: the first label of `<account>.table.<suffix>`, or the first
/// path segment of an emulator's `https://host:port/<account>`. Only shared-key signing reads
/// it, and a bearer token does not sign, so a guess does no harm.
fn account_of(uri: &str) -> String {
    let Ok(url) = url::Url::parse(uri) else {
        return String::new();
    };
    match url.host() {
        Some(url::Host::Domain(host)) if host.contains(".table.") => {
            host.split('.').next().unwrap_or_default().to_owned()
        }
        _ => url
            .path_segments()
            .and_then(|mut s| s.next())
            .unwrap_or_default()
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Option<IdentityStorage>, SettingError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        IdentityStorage::from_settings(&|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn nothing_set_is_no_identity_storage() {
        assert_eq!(read(&[]), Ok(None));
    }

    #[test]
    fn an_account_name_means_the_global_table_endpoint() {
        let s = read(&[(ACCOUNT_NAME, "mygamesstore")]).unwrap().unwrap();
        assert_eq!(
            s.table_service_uri,
            "https://mygamesstore.table.core.windows.net"
        );
        assert_eq!(s.credential, CredentialKind::Chain);
    }

    #[test]
    fn the_table_service_uri_wins_over_the_account_name() {
        let s = read(&[
            (ACCOUNT_NAME, "ignored"),
            (
                TABLE_SERVICE_URI,
                "https://gov1.table.core.usgovcloudapi.net/",
            ),
            (CREDENTIAL, "ManagedIdentity"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            s,
            IdentityStorage {
                table_service_uri: "https://gov1.table.core.usgovcloudapi.net".into(),
                credential: CredentialKind::ManagedIdentity,
                setting: TABLE_SERVICE_URI,
            }
        );
        assert_eq!(account_of(&s.table_service_uri), "gov1");
        assert_eq!(
            account_of("https://127.0.0.1:10002/devstoreaccount1"),
            "devstoreaccount1"
        );
    }

    #[test]
    fn each_setting_that_cannot_work_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(ACCOUNT_NAME, "My_Account")], ACCOUNT_NAME),
            (&[(ACCOUNT_NAME, "ab")], ACCOUNT_NAME),
            (
                &[(TABLE_SERVICE_URI, "http://a.table.core.windows.net")],
                TABLE_SERVICE_URI,
            ),
            (
                &[(TABLE_SERVICE_URI, "a.table.core.windows.net")],
                TABLE_SERVICE_URI,
            ),
            (
                &[(TABLE_SERVICE_URI, "https://a.table.core.windows.net?sv=1")],
                TABLE_SERVICE_URI,
            ),
            (
                &[(TABLE_SERVICE_URI, "https://u:p@a.table.core.windows.net")],
                TABLE_SERVICE_URI,
            ),
            (
                &[(ACCOUNT_NAME, "acct"), (CREDENTIAL, "secret")],
                CREDENTIAL,
            ),
            (
                &[
                    (ACCOUNT_NAME, "acct"),
                    (CREDENTIAL, "managedidentity"),
                    (CLIENT_ID, "00000000-0000-0000-0000-000000000001"),
                ],
                CLIENT_ID,
            ),
            (
                &[
                    (ACCOUNT_NAME, "acct"),
                    (MANAGED_IDENTITY_RESOURCE_ID, "/subscriptions/x"),
                ],
                MANAGED_IDENTITY_RESOURCE_ID,
            ),
            (&[(CREDENTIAL, "managedidentity")], TABLE_SERVICE_URI),
        ];
        for (pairs, var) in cases {
            let err = read(pairs).unwrap_err();
            assert_eq!(err.var, *var, "{pairs:?}: {err:?}");
            assert!(!err.message.contains('\n'));
        }
    }

    #[test]
    fn the_description_names_the_endpoint_and_the_identity() {
        let s = read(&[(ACCOUNT_NAME, "acct"), (CREDENTIAL, "managedidentity")])
            .unwrap()
            .unwrap();
        assert_eq!(
            s.describe(),
            "Azure Table Storage at https://acct.table.core.windows.net (managed identity)"
        );
    }
}
