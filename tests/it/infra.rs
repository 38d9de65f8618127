//! The Bicep template sets what vmpool needs on Azure: every setting `arm` compute requires,
//! identity-based storage (never the in-memory table), the custom-handler runtime, the roles,
//! and the game ports in the NSG. checkov parses the same files in `scripts/test.sh`.

use std::collections::BTreeMap;
use std::path::Path;

fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The app settings of `main.bicep`: name -> value expression.
fn app_settings() -> BTreeMap<String, String> {
    let bicep = read("infra/main.bicep");
    let block = bicep
        .split_once("appSettings: [")
        .expect("main.bicep has appSettings")
        .1;
    let re = regex::Regex::new(r"name: '([A-Za-z0-9_]+)'\s*\n\s*value: ([^\n]+)").unwrap();
    re.captures_iter(block)
        .map(|c| (c[1].to_owned(), c[2].trim().to_owned()))
        .collect()
}

#[test]
fn the_template_sets_every_setting_arm_compute_requires() {
    let settings = app_settings();
    for required in [
        "AZURE_SUBSCRIPTION_ID",
        "VMPOOL_RESOURCE_GROUP",
        "VMPOOL_LOCATION",
        "VMPOOL_SUBNET_ID",
        "VMPOOL_SSH_PUBLIC_KEY",
    ] {
        assert!(
            settings.contains_key(required),
            "{required} is not set: {settings:?}"
        );
    }
    assert_eq!(settings["VMPOOL_COMPUTE"], "'arm'");
    assert_eq!(settings["VMPOOL_LOG_FORMAT"], "'json'");
    // Storage: the host's identity-based AzureWebJobsStorage, which vmpool uses too.
    assert_eq!(settings["AzureWebJobsStorage__accountName"], "storage.name");
    assert_eq!(
        settings["AzureWebJobsStorage__credential"],
        "'managedidentity'"
    );
    assert!(
        !settings.contains_key("AzureWebJobsStorage"),
        "no connection string (shared keys are disabled)"
    );
    if let Some(storage) = settings.get("VMPOOL_STORAGE") {
        assert!(!storage.contains("memory"), "VMPOOL_STORAGE={storage}");
    }
    // Flex Consumption names the runtime in functionAppConfig, not in app settings.
    assert!(!settings.contains_key("FUNCTIONS_WORKER_RUNTIME"));
    let bicep = read("infra/main.bicep");
    assert!(bicep.contains("tier: 'FlexConsumption'"));
    assert!(
        bicep.contains("name: 'custom'"),
        "the custom-handler runtime"
    );
    assert!(bicep.contains("type: 'SystemAssigned'"));
}

#[test]
fn every_vmpool_setting_the_template_sets_is_one_the_readme_documents() {
    let readme = read("README.md");
    for name in app_settings().keys() {
        if name.starts_with("VMPOOL_") || name == "AZURE_SUBSCRIPTION_ID" {
            assert!(
                readme.contains(&format!("| `{name}`")) || readme.contains(&format!("`{name}`,")),
                "{name} is not in the README's settings table"
            );
        }
    }
}

#[test]
fn the_identity_gets_the_roles_vmpool_needs_where_it_needs_them() {
    let main = read("infra/main.bicep");
    let pool = read("infra/pool.bicep");
    let pool_roles = read("infra/pool-roles.bicep");
    // Built-in role definition IDs.
    let storage_table_data_contributor = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3";
    let virtual_machine_contributor = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c";
    let network_contributor = "4d97b98b-1d4f-4787-a291-c67834d212e7";
    assert!(main.contains(storage_table_data_contributor));
    assert!(pool_roles.contains(virtual_machine_contributor));
    assert!(pool_roles.contains(network_contributor));
    assert!(
        main.matches("scope: resourceGroup(poolResourceGroupName)")
            .count()
            == 2,
        "the network and the roles are in the pool's resource group"
    );
    // The subnet the app settings name is the one the pool network creates.
    assert_eq!(
        app_settings()["VMPOOL_SUBNET_ID"],
        "pool.outputs.vmSubnetId"
    );
    assert!(pool.contains("output vmSubnetId string = '${vnet.id}/subnets/servers'"));
    // The reconciler reads power states through Resource Graph, which answers with what the
    // identity may read: its roles on the pool's resource group suffice, none at the
    // subscription's scope.
    assert!(!main.contains("scope: subscription()"));
    // The NSG opens exactly VMPOOL_GAME_PORTS.
    assert!(main.contains("gamePorts: split(gamePorts, ',')"));
    assert_eq!(app_settings()["VMPOOL_GAME_PORTS"], "gamePorts");
    assert!(pool.contains("destinationPortRanges: gamePorts"));
}

#[test]
fn the_parameters_example_names_only_parameters_of_the_template() {
    let main = read("infra/main.bicep");
    let example: serde_json::Value =
        serde_json::from_str(&read("infra/main.parameters.example.json")).unwrap();
    for name in example["parameters"].as_object().unwrap().keys() {
        assert!(main.contains(&format!("param {name} ")), "{name}");
    }
    for required in ["appName", "sshPublicKey"] {
        assert!(example["parameters"].get(required).is_some(), "{required}");
    }
}

/// The keys of the `siteConfig` block of `main.bicep` (its own level only).
fn site_config_keys() -> Vec<String> {
    let bicep = read("infra/main.bicep");
    let block = bicep
        .split_once("siteConfig: {")
        .expect("main.bicep has siteConfig")
        .1;
    let mut keys = Vec::new();
    let mut depth = 0usize;
    for line in block.lines() {
        let line = line.trim();
        if depth == 0 && line.starts_with('}') {
            break;
        }
        if depth == 0 {
            if let Some((key, _)) = line.split_once(':') {
                if !key.starts_with("//") {
                    keys.push(key.trim().to_owned());
                }
            }
        }
        depth += line.matches(['{', '[']).count();
        depth -= line.matches(['}', ']']).count();
    }
    keys
}

/// Flex Consumption refuses these site properties ("Flex Consumption plan deprecations" in
/// Microsoft's app settings reference for Azure Functions); ARM answers that the site
/// configuration properties are invalid for Flex Consumption sites.
#[test]
fn the_flex_app_sets_no_site_property_flex_consumption_refuses() {
    let refused = [
        "ftpsState",
        "use32BitWorkerProcess",
        "isReserved",
        "IsXenon",
        "windowsFxVersion",
        "alwaysOn",
        "preWarmedInstanceCount",
        "functionAppScaleLimit",
        "containerSize",
        "javaVersion",
        "powerShellVersion",
        "netFrameworkVersion",
        "linuxFxVersion",
    ];
    let keys = site_config_keys();
    assert!(keys.contains(&"appSettings".to_owned()), "{keys:?}");
    for key in &keys {
        assert!(
            !refused.iter().any(|r| r.eq_ignore_ascii_case(key)),
            "siteConfig.{key} is refused on Flex Consumption"
        );
    }
    let bicep = read("infra/main.bicep");
    for setting in [
        "FUNCTIONS_WORKER_RUNTIME",
        "FUNCTIONS_EXTENSION_VERSION",
        "WEBSITE_RUN_FROM_PACKAGE",
        "WEBSITE_CONTENTSHARE",
        "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
        "WEBSITE_NODE_DEFAULT_VERSION",
        "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    ] {
        assert!(
            !app_settings().contains_key(setting),
            "{setting} is not an app setting on Flex Consumption"
        );
        assert!(!bicep.contains(&format!("'{setting}'")), "{setting}");
    }
}

/// Flex Consumption takes a maximumInstanceCount from 40 to 1000: the parameter allows exactly
/// that range, and its default is in it.
#[test]
fn the_instance_maximum_is_one_flex_consumption_accepts() {
    let bicep = read("infra/main.bicep");
    let (before, after) = bicep
        .split_once("param maximumInstanceCount int = ")
        .expect("the maximumInstanceCount parameter");
    let decorators: Vec<&str> = before.lines().rev().take(3).collect();
    assert!(decorators.contains(&"@minValue(40)"), "{decorators:?}");
    assert!(decorators.contains(&"@maxValue(1000)"), "{decorators:?}");
    let default: u32 = after.lines().next().unwrap().trim().parse().unwrap();
    assert!((40..=1000).contains(&default), "{default}");
    assert!(bicep.contains("maximumInstanceCount: maximumInstanceCount"));
}
