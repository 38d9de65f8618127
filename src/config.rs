//! Configuration from environment variables (Function App settings arrive as environment
//! variables). A missing or invalid value is a [`ConfigError`] whose one line names the
//! variable; secrets are wrapped in [`Secret`] so they never reach a log.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::compute::arm::settings::{self as arm_rules, ArmConfig, DEFAULT_IMAGE, DEFAULT_VM_SIZE};
use crate::compute::sim::Latencies;
use crate::secret::Secret;
use crate::store::StoreError;

/// A setting that stops start-up: the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it and what is expected.
    pub message: String,
}

fn invalid(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Where the VM table lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// In process; lost on exit.
    Memory,
    /// Azure Table Storage (or Azurite) from a connection string.
    Azure(Secret),
}

/// Which compute API drives the VMs.
#[derive(Debug, Clone, PartialEq)]
pub enum ComputeConfig {
    /// The simulated ARM, with these latencies.
    Simulated(Latencies),
    /// Real ARM.
    Arm(Box<ArmConfig>),
}

/// The pool's policy: sizes, the warm buffer and the reconciler's timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPolicy {
    /// Warm VMs kept in `Standby` (or `Creating` for the buffer) at least.
    pub min_standby: u32,
    /// Most VMs not `Deallocated` at once.
    pub max_vms: u32,
    /// Ports the game server listens on, returned with each VM.
    pub game_ports: Vec<u16>,
    /// Prefix of generated VM names.
    pub vm_prefix: String,
    /// CreateVM demand is measured over this window to raise the buffer target.
    pub demand_window: Duration,
    /// A raised buffer target (and surplus Standby VMs) is kept this long after demand falls.
    pub buffer_cooldown: Duration,
    /// How long a VM takes to become ready; demand over this time is what the buffer covers.
    pub ready_estimate: Duration,
    /// Most ARM creates and starts the reconciler issues per pass.
    pub max_creates_per_pass: u32,
    /// A drained (`MarkedForDeallocation`, 0 rooms) VM with no report for this long is deallocated.
    pub drain_timeout: Duration,
    /// A create or start not done after this long fails.
    pub create_timeout: Duration,
    /// A deallocate not done after this long is issued again.
    pub deallocate_timeout: Duration,
    /// After this many creates fail in a row, the buffer stops creating.
    pub breaker_failures: u32,
    /// ... for this long.
    pub breaker_cooldown: Duration,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            min_standby: 0,
            max_vms: 20,
            game_ports: Vec::new(),
            vm_prefix: "vmpool".into(),
            demand_window: Duration::from_secs(300),
            buffer_cooldown: Duration::from_secs(600),
            ready_estimate: Duration::from_secs(180),
            max_creates_per_pass: 5,
            drain_timeout: Duration::from_secs(900),
            create_timeout: Duration::from_secs(900),
            deallocate_timeout: Duration::from_secs(600),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(600),
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (Application Insights reads it).
    Json,
}

/// Everything vmpool is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on.
    pub bind: IpAddr,
    /// Port to listen on.
    pub port: u16,
    /// Where the VM table lives.
    pub storage: StorageConfig,
    /// Table name.
    pub table: String,
    /// Which compute API drives the VMs.
    pub compute: ComputeConfig,
    /// Standalone reconcile interval; `None` when the Functions timer drives reconciling
    /// (the default under the Functions host, which sets `FUNCTIONS_WORKER_RUNTIME`).
    pub reconcile_every: Option<Duration>,
    /// The pool's policy.
    pub policy: PoolPolicy,
    /// Standalone API key, checked on `/api/*`; ignored under the Functions host.
    pub api_key: Option<Secret>,
    /// Log format.
    pub log_format: LogFormat,
}

/// Reads settings by name; [`std::env::var`] in production, a map in tests.
pub trait Source {
    /// The value of `name`, if set (an empty value counts as unset).
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl<const N: usize> Source for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
            .filter(|v| !v.trim().is_empty())
    }
}

impl Source for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
}

fn number<T>(
    src: &dyn Source,
    var: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let Some(raw) = src.get(var) else {
        return Ok(default);
    };
    let value: T = raw
        .trim()
        .parse()
        .map_err(|_| invalid(var, format!("{raw:?} is not a whole number")))?;
    if value < min || value > max {
        return Err(invalid(var, format!("{value} is outside {min}..={max}")));
    }
    Ok(value)
}

fn seconds(
    src: &dyn Source,
    var: &'static str,
    default: u64,
    min: u64,
) -> Result<Duration, ConfigError> {
    number(src, var, default, min, 7 * 24 * 3600).map(Duration::from_secs)
}

fn required(src: &dyn Source, var: &'static str, why: &str) -> Result<String, ConfigError> {
    src.get(var)
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| invalid(var, format!("is required {why}")))
}

/// Table names, as the store checks them.
fn table_name(raw: &str) -> Result<String, ConfigError> {
    match crate::store::table::check_table_name(raw) {
        Ok(()) => Ok(raw.to_owned()),
        Err(StoreError::Rejected(why) | StoreError::Unavailable(why)) => {
            Err(invalid("VMPOOL_TABLE", why))
        }
    }
}

fn vm_prefix(raw: &str) -> Result<String, ConfigError> {
    let ok = !raw.is_empty()
        && raw.len() <= 40
        && raw.starts_with(|c: char| c.is_ascii_alphanumeric())
        && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(invalid(
            "VMPOOL_VM_PREFIX",
            format!("{raw:?} must be 1-40 letters, digits or '-', starting with a letter or digit"),
        ))
    }
}

fn ports(raw: &str) -> Result<Vec<u16>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| {
                invalid(
                    "VMPOOL_GAME_PORTS",
                    format!("{p:?} is not a port (1-65535)"),
                )
            })
        })
        .collect()
}

fn arm(src: &dyn Source) -> Result<ArmConfig, ConfigError> {
    let why = "when VMPOOL_COMPUTE=arm";
    let rule = |var: &'static str, value: String, check: fn(&str) -> Result<String, String>| {
        check(value.trim()).map_err(|m| invalid(var, m))
    };
    let endpoint_raw = src
        .get("VMPOOL_ARM_ENDPOINT")
        .unwrap_or_else(|| "https://management.azure.com".into());
    let endpoint =
        arm_rules::endpoint(&endpoint_raw).map_err(|m| invalid("VMPOOL_ARM_ENDPOINT", m))?;
    let subscription_id = rule(
        "AZURE_SUBSCRIPTION_ID",
        required(src, "AZURE_SUBSCRIPTION_ID", why)?,
        arm_rules::subscription_id,
    )?;
    let resource_group = rule(
        "VMPOOL_RESOURCE_GROUP",
        required(src, "VMPOOL_RESOURCE_GROUP", why)?,
        arm_rules::resource_group,
    )?;
    let location = rule(
        "VMPOOL_LOCATION",
        required(src, "VMPOOL_LOCATION", why)?,
        arm_rules::location,
    )?;
    let subnet_id = rule(
        "VMPOOL_SUBNET_ID",
        required(src, "VMPOOL_SUBNET_ID", why)?,
        arm_rules::subnet_id,
    )?;
    let ssh_public_key = rule(
        "VMPOOL_SSH_PUBLIC_KEY",
        required(src, "VMPOOL_SSH_PUBLIC_KEY", why)?,
        arm_rules::ssh_public_key,
    )?;
    let image = arm_rules::image(
        &src.get("VMPOOL_IMAGE")
            .unwrap_or_else(|| DEFAULT_IMAGE.into()),
    )
    .map_err(|m| invalid("VMPOOL_IMAGE", m))?;
    let vm_size = rule(
        "VMPOOL_VM_SIZE",
        src.get("VMPOOL_VM_SIZE")
            .unwrap_or_else(|| DEFAULT_VM_SIZE.into()),
        arm_rules::vm_size,
    )?;
    let admin_username = rule(
        "VMPOOL_ADMIN_USERNAME",
        src.get("VMPOOL_ADMIN_USERNAME")
            .unwrap_or_else(|| arm_rules::DEFAULT_ADMIN_USERNAME.into()),
        arm_rules::admin_username,
    )?;
    Ok(ArmConfig {
        endpoint,
        token: src.get("VMPOOL_ARM_TOKEN").map(Secret::new),
        subscription_id,
        resource_group,
        location,
        subnet_id,
        ssh_public_key,
        image,
        vm_size,
        admin_username,
    })
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_source(&Env)
    }

    /// Reads the configuration from `src`.
    pub fn from_source(src: &dyn Source) -> Result<Config, ConfigError> {
        let port = number(src, "FUNCTIONS_CUSTOMHANDLER_PORT", 7071u16, 1, u16::MAX)?;
        let bind = match src.get("VMPOOL_BIND") {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|_| invalid("VMPOOL_BIND", format!("{raw:?} is not an IP address")))?,
        };
        let storage = match src
            .get("VMPOOL_STORAGE")
            .or_else(|| src.get("AzureWebJobsStorage"))
        {
            None => StorageConfig::Memory,
            Some(v) if v.trim().eq_ignore_ascii_case("memory") => StorageConfig::Memory,
            Some(v) => StorageConfig::Azure(Secret::new(v.trim())),
        };
        let table = table_name(&src.get("VMPOOL_TABLE").unwrap_or_else(|| "vmpool".into()))?;
        let compute_kind = src.get("VMPOOL_COMPUTE").unwrap_or_else(|| {
            if src.get("AZURE_SUBSCRIPTION_ID").is_some() {
                "arm".into()
            } else {
                "simulated".into()
            }
        });
        let compute = match compute_kind.trim() {
            "simulated" => ComputeConfig::Simulated(Latencies {
                create: time::Duration::seconds(number(
                    src,
                    "VMPOOL_SIM_CREATE_SECS",
                    150,
                    0,
                    86_400,
                )?),
                start: time::Duration::seconds(number(
                    src,
                    "VMPOOL_SIM_START_SECS",
                    60,
                    0,
                    86_400,
                )?),
                deallocate: time::Duration::seconds(number(
                    src,
                    "VMPOOL_SIM_DEALLOCATE_SECS",
                    60,
                    0,
                    86_400,
                )?),
                ..Latencies::default()
            }),
            "arm" => ComputeConfig::Arm(Box::new(arm(src)?)),
            other => {
                return Err(invalid(
                    "VMPOOL_COMPUTE",
                    format!("{other:?} is neither simulated nor arm"),
                ));
            }
        };
        // Under the Functions host the timer function reconciles; a loop in every instance
        // would only repeat its work.
        let under_host = src.get("FUNCTIONS_WORKER_RUNTIME").is_some();
        let reconcile_secs = number(
            src,
            "VMPOOL_RECONCILE_SECS",
            if under_host { 0 } else { 10u64 },
            0,
            86_400,
        )?;
        let defaults = PoolPolicy::default();
        let policy = PoolPolicy {
            min_standby: number(src, "VMPOOL_MIN_STANDBY", 0u32, 0, 10_000)?,
            max_vms: number(src, "VMPOOL_MAX_VMS", 20u32, 1, 100_000)?,
            game_ports: ports(&src.get("VMPOOL_GAME_PORTS").unwrap_or_default())?,
            vm_prefix: vm_prefix(
                &src.get("VMPOOL_VM_PREFIX")
                    .unwrap_or_else(|| "vmpool".into()),
            )?,
            demand_window: seconds(
                src,
                "VMPOOL_DEMAND_WINDOW_SECS",
                defaults.demand_window.as_secs(),
                1,
            )?,
            buffer_cooldown: seconds(
                src,
                "VMPOOL_BUFFER_COOLDOWN_SECS",
                defaults.buffer_cooldown.as_secs(),
                0,
            )?,
            ready_estimate: seconds(
                src,
                "VMPOOL_READY_ESTIMATE_SECS",
                defaults.ready_estimate.as_secs(),
                1,
            )?,
            max_creates_per_pass: number(
                src,
                "VMPOOL_MAX_CREATES_PER_PASS",
                defaults.max_creates_per_pass,
                1,
                1000,
            )?,
            drain_timeout: seconds(
                src,
                "VMPOOL_DRAIN_TIMEOUT_SECS",
                defaults.drain_timeout.as_secs(),
                1,
            )?,
            create_timeout: seconds(
                src,
                "VMPOOL_CREATE_TIMEOUT_SECS",
                defaults.create_timeout.as_secs(),
                1,
            )?,
            deallocate_timeout: seconds(
                src,
                "VMPOOL_DEALLOCATE_TIMEOUT_SECS",
                defaults.deallocate_timeout.as_secs(),
                1,
            )?,
            breaker_failures: number(
                src,
                "VMPOOL_BREAKER_FAILURES",
                defaults.breaker_failures,
                1,
                1000,
            )?,
            breaker_cooldown: seconds(
                src,
                "VMPOOL_BREAKER_COOLDOWN_SECS",
                defaults.breaker_cooldown.as_secs(),
                0,
            )?,
        };
        if policy.min_standby > policy.max_vms {
            return Err(invalid(
                "VMPOOL_MIN_STANDBY",
                format!(
                    "{} is more than VMPOOL_MAX_VMS ({})",
                    policy.min_standby, policy.max_vms
                ),
            ));
        }
        let log_format = match src.get("VMPOOL_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "VMPOOL_LOG_FORMAT",
                    format!("{other:?} is neither text nor json"),
                ));
            }
        };
        Ok(Config {
            bind,
            port,
            storage,
            table,
            compute,
            reconcile_every: (reconcile_secs > 0).then(|| Duration::from_secs(reconcile_secs)),
            policy,
            // The host checks function keys itself and forwards them; ours is standalone only.
            api_key: src
                .get("VMPOOL_API_KEY")
                .filter(|_| !under_host)
                .map(Secret::new),
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::arm::Image;

    #[test]
    fn defaults_need_no_settings() {
        let c = Config::from_source(&[]).unwrap();
        assert_eq!(c.port, 7071);
        assert_eq!(c.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.storage, StorageConfig::Memory);
        assert_eq!(c.table, "vmpool");
        assert!(
            matches!(c.compute, ComputeConfig::Simulated(l) if l.create.whole_seconds() == 150)
        );
        assert_eq!(c.reconcile_every, Some(Duration::from_secs(10)));
        assert_eq!((c.policy.min_standby, c.policy.max_vms), (0, 20));
        assert_eq!(c.api_key, None);
    }

    #[test]
    fn under_the_functions_host_the_timer_reconciles_and_the_host_checks_keys() {
        let c = Config::from_source(&[
            ("FUNCTIONS_WORKER_RUNTIME", "custom"),
            ("VMPOOL_API_KEY", "k"),
        ])
        .unwrap();
        assert_eq!((c.reconcile_every, c.api_key), (None, None));
        let c = Config::from_source(&[
            ("FUNCTIONS_WORKER_RUNTIME", "custom"),
            ("VMPOOL_RECONCILE_SECS", "30"),
        ])
        .unwrap();
        assert_eq!(c.reconcile_every, Some(Duration::from_secs(30)));
    }

    #[test]
    fn storage_falls_back_to_azure_web_jobs_storage() {
        let c =
            Config::from_source(&[("AzureWebJobsStorage", "UseDevelopmentStorage=true")]).unwrap();
        assert_eq!(
            c.storage,
            StorageConfig::Azure(Secret::new("UseDevelopmentStorage=true"))
        );
        let c = Config::from_source(&[
            ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
            ("VMPOOL_STORAGE", "memory"),
        ])
        .unwrap();
        assert_eq!(c.storage, StorageConfig::Memory);
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("FUNCTIONS_CUSTOMHANDLER_PORT", "http")],
                "FUNCTIONS_CUSTOMHANDLER_PORT",
            ),
            (&[("VMPOOL_MAX_VMS", "0")], "VMPOOL_MAX_VMS"),
            (&[("VMPOOL_MIN_STANDBY", "-1")], "VMPOOL_MIN_STANDBY"),
            (&[("VMPOOL_MIN_STANDBY", "30")], "VMPOOL_MIN_STANDBY"),
            (&[("VMPOOL_TABLE", "vm-pool")], "VMPOOL_TABLE"),
            (&[("VMPOOL_COMPUTE", "aws")], "VMPOOL_COMPUTE"),
            (&[("VMPOOL_GAME_PORTS", "7777,x")], "VMPOOL_GAME_PORTS"),
            (&[("VMPOOL_VM_PREFIX", "a/b")], "VMPOOL_VM_PREFIX"),
            (
                &[("VMPOOL_SIM_CREATE_SECS", "1.5")],
                "VMPOOL_SIM_CREATE_SECS",
            ),
            (&[("VMPOOL_LOG_FORMAT", "xml")], "VMPOOL_LOG_FORMAT"),
            (&[("VMPOOL_COMPUTE", "arm")], "AZURE_SUBSCRIPTION_ID"),
        ];
        for (src, var) in cases {
            let err = Config::from_source(&HashMapSource::from(*src)).unwrap_err();
            assert_eq!(err.var, *var, "{err}");
            assert!(err.to_string().contains(var), "{err}");
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn arm_settings_are_validated_and_secrets_stay_hidden() {
        let full = [
            (
                "AZURE_SUBSCRIPTION_ID",
                "00000000-0000-0000-0000-000000000001",
            ),
            ("VMPOOL_RESOURCE_GROUP", "games"),
            ("VMPOOL_LOCATION", "westeurope"),
            (
                "VMPOOL_SUBNET_ID",
                "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default",
            ),
            ("VMPOOL_SSH_PUBLIC_KEY", "ssh-ed25519 AAAA test"),
            ("VMPOOL_ARM_TOKEN", "super-secret-token"),
            ("VMPOOL_API_KEY", "another-secret"),
            (
                "VMPOOL_STORAGE",
                "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0",
            ),
        ];
        let c = Config::from_source(&full).unwrap();
        let ComputeConfig::Arm(arm) = &c.compute else {
            panic!("AZURE_SUBSCRIPTION_ID selects arm");
        };
        assert_eq!(arm.admin_username, "azureuser");
        assert!(
            matches!(arm.image, Image::Marketplace { ref publisher, .. } if publisher == "Canonical")
        );
        let printed = format!("{c:?}");
        for secret in ["super-secret-token", "another-secret", "c2VjcmV0"] {
            assert!(!printed.contains(secret), "{secret} leaked into {printed}");
        }
        for (var, bad) in [
            ("VMPOOL_SUBNET_ID", "subnet-1"),
            ("VMPOOL_SSH_PUBLIC_KEY", "hunter2"),
            ("VMPOOL_IMAGE", "Canonical:ubuntu"),
            ("VMPOOL_ARM_ENDPOINT", "ftp://x"),
            ("VMPOOL_LOCATION", "west europe"),
            ("VMPOOL_VM_SIZE", "Standard B2s"),
            ("VMPOOL_ADMIN_USERNAME", "root"),
            ("VMPOOL_ADMIN_USERNAME", "Azure User"),
            ("VMPOOL_SSH_PUBLIC_KEY", "ssh-ed25519"),
        ] {
            let mut src: std::collections::HashMap<String, String> = full
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            src.insert(var.to_owned(), bad.to_owned());
            assert_eq!(Config::from_source(&src).unwrap_err().var, var);
        }
    }

    struct HashMapSource(std::collections::HashMap<String, String>);
    impl From<&[(&str, &str)]> for HashMapSource {
        fn from(pairs: &[(&str, &str)]) -> Self {
            HashMapSource(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        }
    }
    impl Source for HashMapSource {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }
}
