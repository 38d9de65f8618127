//! What the ARM adapter is configured with, and Azure's naming rules for those values.
//! Each rule returns the cleaned value or a message saying what is expected; the
//! configuration module names the variable.

use crate::secret::Secret;

/// A VM image: a marketplace reference or an image resource ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// `publisher:offer:sku:version`.
    Marketplace {
        /// Publisher, e.g. `Canonical`.
        publisher: String,
        /// Offer, e.g. `ubuntu-24_04-lts`.
        offer: String,
        /// SKU, e.g. `server`.
        sku: String,
        /// Version, e.g. `latest`.
        version: String,
    },
    /// `/subscriptions/.../images/...` or a gallery image version.
    Id(String),
}

impl Image {
    /// The image as the settings write it: `publisher:offer:sku:version` or the resource ID.
    pub fn text(&self) -> String {
        match self {
            Image::Marketplace {
                publisher,
                offer,
                sku,
                version,
            } => format!("{publisher}:{offer}:{sku}:{version}"),
            Image::Id(id) => id.clone(),
        }
    }

    /// The build label the image names by itself: a marketplace image's version, a gallery
    /// image version's last segment, else the image resource's name (`unlabelled` if that is
    /// not a valid label: 1-64 letters, digits, `.`, `-`, `_` or `+`).
    pub fn label(&self) -> String {
        let label = match self {
            Image::Marketplace { version, .. } => version.as_str(),
            Image::Id(id) => id.trim_end_matches('/').rsplit('/').next().unwrap_or(id),
        };
        let ok = (1..=64).contains(&label.len())
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
        if ok {
            label.to_owned()
        } else {
            "unlabelled".to_owned()
        }
    }

    /// Parses `publisher:offer:sku:version` or a resource ID.
    pub fn parse(raw: &str) -> Option<Image> {
        if raw.starts_with('/') {
            return Some(Image::Id(raw.to_owned()));
        }
        let parts: Vec<&str> = raw.split(':').collect();
        match parts.as_slice() {
            [p, o, s, v] if parts.iter().all(|x| !x.is_empty()) => Some(Image::Marketplace {
                publisher: (*p).to_owned(),
                offer: (*o).to_owned(),
                sku: (*s).to_owned(),
                version: (*v).to_owned(),
            }),
            _ => None,
        }
    }
}

/// Settings of the real ARM compute API.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmConfig {
    /// ARM base URL.
    pub endpoint: url::Url,
    /// Static bearer token for ARM emulators; `None` uses azure_identity's chain.
    pub token: Option<Secret>,
    /// Subscription that holds the pool.
    pub subscription_id: String,
    /// Resource group of the VMs.
    pub resource_group: String,
    /// Azure region.
    pub location: String,
    /// Resource ID of the subnet for the VMs' NICs.
    pub subnet_id: String,
    /// Admin SSH public key.
    pub ssh_public_key: String,
    /// VM image.
    pub image: Image,
    /// VM size.
    pub vm_size: String,
    /// Admin user name.
    pub admin_username: String,
}

/// The default image: Ubuntu 24.04 LTS.
pub const DEFAULT_IMAGE: &str = "Canonical:ubuntu-24_04-lts:server:latest";
/// The default VM size: small general purpose.
pub const DEFAULT_VM_SIZE: &str = "Standard_B2s";

/// The default admin user.
pub const DEFAULT_ADMIN_USERNAME: &str = "azureuser";

/// Names Azure refuses for a Linux admin user.
const RESERVED_USERNAMES: &[&str] = &[
    "root",
    "admin",
    "administrator",
    "user",
    "user1",
    "test",
    "test1",
    "guest",
    "sys",
    "adm",
    "daemon",
    "bin",
    "nobody",
    "sshd",
    "support",
    "owner",
];

/// ARM's base URL: an http(s) URL with a host.
pub fn endpoint(raw: &str) -> Result<url::Url, String> {
    url::Url::parse(raw.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| format!("{raw:?} is not an http(s) URL"))
}

/// A subscription GUID.
pub fn subscription_id(raw: &str) -> Result<String, String> {
    if raw.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        Ok(raw.to_owned())
    } else {
        Err("must be a subscription GUID".into())
    }
}

/// A resource group name: 1-90 letters, digits, `-`, `_`, `.`, `(` and `)`.
pub fn resource_group(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= 90
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("is not a resource group name".into())
    }
}

/// A region name such as `westeurope`.
pub fn location(raw: &str) -> Result<String, String> {
    if raw.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(raw.to_owned())
    } else {
        Err("must be a region name such as westeurope".into())
    }
}

/// A subnet resource ID.
pub fn subnet_id(raw: &str) -> Result<String, String> {
    let lower = raw.to_ascii_lowercase();
    if lower.contains("/providers/microsoft.network/virtualnetworks/")
        && lower.contains("/subnets/")
    {
        Ok(raw.to_owned())
    } else {
        Err(
            "must be a subnet resource ID (/subscriptions/.../virtualNetworks/NAME/subnets/NAME)"
                .into(),
        )
    }
}

/// One OpenSSH public key on one line.
pub fn ssh_public_key(raw: &str) -> Result<String, String> {
    if !(raw.starts_with("ssh-") || raw.starts_with("ecdsa-")) {
        return Err("must be an OpenSSH public key (ssh-rsa ..., ssh-ed25519 ...)".into());
    }
    if raw.contains(['\n', '\r']) || raw.split_whitespace().count() < 2 {
        return Err(
            "must be one OpenSSH public key on one line (type, key data, optional comment)".into(),
        );
    }
    Ok(raw.to_owned())
}

/// `publisher:offer:sku:version` or an image resource ID.
/// An image resource ID names a managed image or a gallery image (version) of
/// `Microsoft.Compute` (`.../providers/Microsoft.Compute/images/NAME` or
/// `.../providers/Microsoft.Compute/galleries/G/images/I[/versions/V]`).
pub fn image(raw: &str) -> Result<Image, String> {
    let image = Image::parse(raw.trim()).ok_or_else(|| {
        format!("{raw:?} is neither publisher:offer:sku:version nor an image resource ID")
    })?;
    if let Image::Id(id) = &image {
        let lower = id.to_ascii_lowercase();
        if !(lower.starts_with("/subscriptions/")
            && lower.contains("/providers/microsoft.compute/")
            && lower.contains("/images/"))
        {
            return Err(format!(
                "{raw:?} is not an image resource ID (/subscriptions/.../providers/Microsoft.Compute/images/NAME or .../galleries/G/images/I/versions/V)"
            ));
        }
    }
    Ok(image)
}

/// A VM size such as `Standard_B2s`.
pub fn vm_size(raw: &str) -> Result<String, String> {
    let size = raw.trim();
    if size.is_empty()
        || size.len() > 64
        || !size.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!("{size:?} is not a VM size such as Standard_B2s"));
    }
    Ok(size.to_owned())
}

/// A Linux admin user name Azure accepts.
pub fn admin_username(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if !ok || RESERVED_USERNAMES.contains(&name) {
        return Err(format!(
            "{name:?} is not allowed: 1-32 lowercase letters, digits, '_' or '-', starting with a letter or '_', and not a reserved name such as root or admin"
        ));
    }
    Ok(name.to_owned())
}
