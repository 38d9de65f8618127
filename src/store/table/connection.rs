//! Where to connect: a connection string parsed into an endpoint and credentials, and the
//! rules for table names. Other ways to connect (an identity instead of a key) sit in files
//! beside this one and produce the same [`Target`].

use azure_storage::{CloudLocation, ConnectionString, StorageCredentials};

use crate::store::StoreError;

/// The longest table name Azure accepts.
const MAX_TABLE_NAME: usize = 63;

/// Where to connect, and with what.
pub(crate) struct Target {
    /// The endpoint.
    pub location: CloudLocation,
    /// How requests are signed.
    pub credentials: StorageCredentials,
    /// Account and endpoint, for the start-up line; never a key or a token.
    pub describe: String,
}

/// The name of the table that holds the pool's record: `<table>meta` (shortened to fit).
pub fn meta_table_name(table: &str) -> String {
    let kept: String = table.chars().take(MAX_TABLE_NAME - 4).collect();
    format!("{kept}meta")
}

pub fn check_table_name(table: &str) -> Result<(), StoreError> {
    let ok = (3..=MAX_TABLE_NAME).contains(&table.len())
        && table.chars().all(|c| c.is_ascii_alphanumeric())
        && table.starts_with(|c: char| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Rejected(format!(
            "{table:?} is not a table name (3-63 letters and digits, starting with a letter)"
        )))
    }
}

pub(crate) fn parse_connection_string(raw: &str) -> Result<Target, StoreError> {
    // ConnectionString's own errors quote the whole string, key included: never pass them on.
    let cs = ConnectionString::new(raw).map_err(|_| {
        StoreError::Rejected(
            "the storage connection string is malformed: expected `UseDevelopmentStorage=true` or `Key=Value` pairs separated by `;` (AccountName, AccountKey or SharedAccessSignature, TableEndpoint, DefaultEndpointsProtocol, EndpointSuffix)".into(),
        )
    })?;
    if cs.use_development_storage == Some(true) && cs.table_endpoint.is_none() {
        return Ok(Target {
            location: CloudLocation::Emulator {
                address: "127.0.0.1".into(),
                port: 10002,
            },
            credentials: StorageCredentials::emulator(),
            describe: "Azurite at http://127.0.0.1:10002/devstoreaccount1".into(),
        });
    }
    let credentials = if cs.use_development_storage == Some(true) {
        StorageCredentials::emulator()
    } else {
        cs.storage_credentials().map_err(|_| {
            StoreError::Rejected(
                "the storage connection string has no credentials: set AccountName and AccountKey, or SharedAccessSignature".into(),
            )
        })?
    };
    let account = cs
        .account_name
        .map(str::to_owned)
        .or_else(|| {
            (cs.use_development_storage == Some(true))
                .then(|| azure_storage::EMULATOR_ACCOUNT.to_owned())
        })
        .unwrap_or_default();
    let uri = match cs.table_endpoint {
        Some(endpoint) => {
            let url = url::Url::parse(endpoint).map_err(|_| {
                StoreError::Rejected(
                    "TableEndpoint in the storage connection string is not a URL".into(),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https")
                || url.host_str().is_none()
                || url.query().is_some()
            {
                return Err(StoreError::Rejected(
                    "TableEndpoint in the storage connection string must be an http(s) URL without a query".into(),
                ));
            }
            endpoint.trim_end_matches('/').to_owned()
        }
        None => {
            if account.is_empty() {
                return Err(StoreError::Rejected(
                    "the storage connection string needs AccountName or TableEndpoint".into(),
                ));
            }
            let protocol = match cs.default_endpoints_protocol {
                Some(azure_storage::EndpointProtocol::Http) => "http",
                _ => "https",
            };
            let suffix = cs.endpoint_suffix.unwrap_or("core.windows.net");
            format!("{protocol}://{account}.table.{suffix}")
        }
    };
    let shown = if account.is_empty() {
        format!("Azure Table Storage at {uri}")
    } else {
        format!("Azure Table Storage account {account} at {uri}")
    };
    Ok(Target {
        location: CloudLocation::Custom { account, uri },
        credentials,
        describe: shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_are_parsed_without_quoting_secrets() {
        let dev = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert!(dev.describe.contains("127.0.0.1:10002"));
        let key = "c2VjcmV0LWtleQ==";
        let custom = parse_connection_string(&format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};TableEndpoint=http://127.0.0.1:41234/devstoreaccount1/;"
        ))
        .unwrap();
        assert_eq!(
            custom.describe,
            "Azure Table Storage account devstoreaccount1 at http://127.0.0.1:41234/devstoreaccount1"
        );
        let real = parse_connection_string(&format!(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"
        ))
        .unwrap();
        assert_eq!(
            real.describe,
            "Azure Table Storage account acct at https://acct.table.core.windows.net"
        );
        for bad in [
            format!("AccountName=acct;AccountKey={key};Bogus=1"),
            format!("AccountKey={key}"),
            "AccountName=acct".to_owned(),
            format!("AccountName=acct;AccountKey={key};TableEndpoint=not a url"),
        ] {
            let err = match parse_connection_string(&bad) {
                Ok(_) => panic!("{bad} should be refused"),
                Err(e) => e.to_string(),
            };
            assert!(!err.contains(key), "{err}");
        }
    }

    #[test]
    fn meta_table_names_stay_valid() {
        assert_eq!(meta_table_name("vmpool"), "vmpoolmeta");
        let long = "a".repeat(63);
        assert_eq!(meta_table_name(&long).len(), 63);
        assert!(check_table_name("vmpool").is_ok());
        assert!(check_table_name("vm-pool").is_err());
    }
}
