//! Request-body validation: what ARM requires of a VM PUT body, as in the official examples.

use serde_json::Value;

/// Why ARM refuses a VM PUT body: its 400 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// ARM's `error.code`, such as `InvalidParameter`.
    pub code: String,
    /// ARM's `error.message`.
    pub message: String,
    /// ARM's `error.target`: the property at fault.
    pub target: String,
}

/// Checks a VM PUT body for what ARM requires; `Err` is the 400 answer.
pub fn validate_vm_body(body: &Value, name: &str) -> Result<(), BodyError> {
    let bad = |code: &str, message: String, target: &str| {
        Err(BodyError {
            code: code.to_owned(),
            message,
            target: target.to_owned(),
        })
    };
    let text = |v: &Value, ptr: &str| {
        v.pointer(ptr)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if !body.is_object() {
        return bad(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.".into(),
            "",
        );
    }
    if text(body, "/location").is_none() {
        return bad(
            "LocationRequired",
            "The location property is required for this definition.".into(),
            "location",
        );
    }
    if let Some(tags) = body.get("tags")
        && !(tags.is_null()
            || tags
                .as_object()
                .is_some_and(|t| t.values().all(Value::is_string)))
    {
        return bad(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: 'tags' must map names to strings.".into(),
            "tags",
        );
    }
    if text(body, "/properties/hardwareProfile/vmSize").is_none() {
        return bad(
            "InvalidParameter",
            "Required parameter 'hardwareProfile.vmSize' is missing (null).".into(),
            "vmSize",
        );
    }
    let image = body.pointer("/properties/storageProfile/imageReference");
    let by_id = image.is_some_and(|i| text(i, "/id").is_some());
    let marketplace = image.is_some_and(|i| {
        ["/publisher", "/offer", "/sku", "/version"]
            .iter()
            .all(|p| text(i, p).is_some())
    });
    if !(by_id || marketplace) {
        return bad(
            "InvalidParameter",
            "Required parameter 'storageProfile.imageReference' is missing or incomplete (publisher, offer, sku and version, or id).".into(),
            "imageReference",
        );
    }
    let Some(computer_name) = text(body, "/properties/osProfile/computerName") else {
        return bad(
            "InvalidParameter",
            "Required parameter 'osProfile.computerName' is missing (null).".into(),
            "computerName",
        );
    };
    if computer_name.len() > 64 {
        return bad(
            "InvalidParameter",
            "Linux host name cannot exceed 64 characters in length.".into(),
            "computerName",
        );
    }
    let Some(admin) = text(body, "/properties/osProfile/adminUsername") else {
        return bad(
            "InvalidParameter",
            "Required parameter 'osProfile.adminUsername' is missing (null).".into(),
            "adminUsername",
        );
    };
    let no_password = body
        .pointer("/properties/osProfile/linuxConfiguration/disablePasswordAuthentication")
        .and_then(Value::as_bool)
        == Some(true);
    if no_password {
        let keys = body
            .pointer("/properties/osProfile/linuxConfiguration/ssh/publicKeys")
            .and_then(Value::as_array);
        let Some(keys) = keys.filter(|k| !k.is_empty()) else {
            return bad(
                "InvalidParameter",
                "Authentication using either SSH or by user name and password must be enabled in Linux profile.".into(),
                "linuxConfiguration",
            );
        };
        let expected_path = format!("/home/{admin}/.ssh/authorized_keys");
        for key in keys {
            let data = text(key, "/keyData").unwrap_or_default();
            if !(data.starts_with("ssh-") || data.starts_with("ecdsa-")) {
                return bad(
                    "InvalidParameter",
                    "The value of parameter linuxConfiguration.ssh.publicKeys.keyData is invalid."
                        .into(),
                    "linuxConfiguration.ssh.publicKeys.keyData",
                );
            }
            if text(key, "/path").as_deref() != Some(expected_path.as_str()) {
                return bad(
                    "InvalidParameter",
                    format!(
                        "Destination path for SSH public keys is currently limited to its default value {expected_path} due to a known issue in Linux provisioning agent."
                    ),
                    "linuxConfiguration.ssh.publicKeys.path",
                );
            }
        }
    } else if text(body, "/properties/osProfile/adminPassword").is_none() {
        return bad(
            "InvalidParameter",
            "Required parameter 'adminPassword' is missing (null).".into(),
            "adminPassword",
        );
    }
    let network = body.pointer("/properties/networkProfile");
    let nics = network
        .and_then(|n| n.get("networkInterfaces"))
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty());
    let configs = network
        .and_then(|n| n.get("networkInterfaceConfigurations"))
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty());
    match (nics, configs) {
        (None, None) => {
            return bad(
                "InvalidParameter",
                "Required parameter 'networkProfile' is missing (null).".into(),
                "networkProfile",
            );
        }
        (Some(nics), _) => {
            if nics.iter().any(|n| text(n, "/id").is_none()) {
                return bad(
                    "InvalidParameter",
                    "Each network interface reference needs an id.".into(),
                    "networkProfile.networkInterfaces",
                );
            }
        }
        (None, Some(configs)) => {
            if network
                .and_then(|n| text(n, "/networkApiVersion"))
                .is_none()
            {
                return bad(
                    "InvalidParameter",
                    "networkApiVersion must be specified when networkInterfaceConfigurations are used.".into(),
                    "networkProfile.networkApiVersion",
                );
            }
            for nic in configs {
                if text(nic, "/name").is_none() {
                    return bad(
                        "InvalidParameter",
                        "Required parameter 'networkInterfaceConfigurations.name' is missing (null).".into(),
                        "networkInterfaceConfigurations.name",
                    );
                }
                let ipcs = nic
                    .pointer("/properties/ipConfigurations")
                    .and_then(Value::as_array)
                    .filter(|a| !a.is_empty());
                let Some(ipcs) = ipcs else {
                    return bad(
                        "InvalidParameter",
                        "Required parameter 'ipConfigurations' is missing (null).".into(),
                        "networkInterfaceConfigurations.ipConfigurations",
                    );
                };
                for ipc in ipcs {
                    if text(ipc, "/name").is_none() || text(ipc, "/properties/subnet/id").is_none()
                    {
                        return bad(
                            "InvalidParameter",
                            "Each IP configuration needs a name and properties.subnet.id.".into(),
                            "ipConfigurations.subnet",
                        );
                    }
                    if let Some(pip) = ipc.pointer("/properties/publicIPAddressConfiguration") {
                        if text(pip, "/name").is_none() {
                            return bad(
                                "InvalidParameter",
                                "Required parameter 'publicIPAddressConfiguration.name' is missing (null).".into(),
                                "publicIPAddressConfiguration.name",
                            );
                        }
                        let standard = text(pip, "/sku/name")
                            .is_some_and(|s| s.eq_ignore_ascii_case("Standard"));
                        let dynamic = text(pip, "/properties/publicIPAllocationMethod")
                            .is_some_and(|m| m.eq_ignore_ascii_case("Dynamic"));
                        if standard && dynamic {
                            return bad(
                                "InvalidParameter",
                                "Standard sku public IP addresses must use the Static allocation method.".into(),
                                "publicIPAddressConfiguration.properties.publicIPAllocationMethod",
                            );
                        }
                    }
                }
            }
        }
    }
    if name.is_empty() || name.len() > 64 {
        return bad(
            "InvalidParameter",
            "The VM name must be 1-64 characters.".into(),
            "vmName",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good_body() -> Value {
        let config = vmpool::compute::arm::ArmConfig {
            endpoint: url::Url::parse("http://127.0.0.1:1").unwrap(),
            token: None,
            subscription_id: "s".into(),
            resource_group: "rg".into(),
            location: "westeurope".into(),
            subnet_id: "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v/subnets/d".into(),
            ssh_public_key: "ssh-ed25519 AAAA k".into(),
            image: vmpool::compute::arm::Image::parse(vmpool::compute::arm::settings::DEFAULT_IMAGE).unwrap(),
            vm_size: "Standard_B2s".into(),
            admin_username: "azureuser".into(),
        };
        let id = vmpool::domain::VmId::parse("vm1").unwrap();
        vmpool::compute::arm::vm_body(&config, &id, "p")
    }

    #[test]
    fn the_adapter_body_passes_and_each_missing_part_is_named() {
        assert_eq!(validate_vm_body(&good_body(), "vm1"), Ok(()));
        let cases = [
            ("/location", "LocationRequired"),
            ("/properties/hardwareProfile/vmSize", "vmSize"),
            (
                "/properties/storageProfile/imageReference/sku",
                "imageReference",
            ),
            ("/properties/osProfile/computerName", "computerName"),
            ("/properties/osProfile/adminUsername", "adminUsername"),
            (
                "/properties/osProfile/linuxConfiguration/ssh/publicKeys/0/keyData",
                "keyData",
            ),
            (
                "/properties/networkProfile/networkApiVersion",
                "networkApiVersion",
            ),
            (
                "/properties/networkProfile/networkInterfaceConfigurations/0/properties/ipConfigurations/0/properties/subnet/id",
                "subnet",
            ),
        ];
        for (ptr, expect) in cases {
            let mut body = good_body();
            *body.pointer_mut(ptr).unwrap() = Value::Null;
            let BodyError {
                code,
                message,
                target,
            } = validate_vm_body(&body, "vm1").unwrap_err();
            assert!(
                code.contains(expect) || target.contains(expect),
                "{ptr}: {code} {message} {target}"
            );
        }
        let mut body = good_body();
        body["properties"]["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] =
            json!(false);
        assert_eq!(
            validate_vm_body(&body, "vm1").unwrap_err().target,
            "adminPassword"
        );
        assert!(validate_vm_body(&json!([1, 2]), "vm1").is_err());
        assert!(validate_vm_body(&json!({"location": 5}), "vm1").is_err());
    }
}
