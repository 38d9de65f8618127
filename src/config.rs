//! Configuration from environment variables (Function App settings arrive as environment
//! variables). Each setting is declared once, in [`settings`]; this module assembles them. A
//! missing or invalid value is a [`ConfigError`] whose one line names the variable; secrets
//! are wrapped in [`Secret`] so they never reach a log.

pub mod pools;
pub mod settings;

use std::net::IpAddr;
use std::time::Duration;

use crate::compute::arm::settings::ArmConfig;
use crate::compute::sim::Latencies;
use crate::secret::Secret;
use crate::store::identity::IdentityStorage;
pub use pools::{DEFAULT_POOL, PoolSpec, Pools};
use settings as s;

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
    /// Azure Table Storage with a token: `AzureWebJobsStorage__accountName` or
    /// `__tableServiceUri`, and no connection string.
    Identity(IdentityStorage),
}

/// Which compute API drives the VMs, as `VMPOOL_COMPUTE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeKind {
    /// `simulated`.
    Simulated,
    /// `arm`.
    Arm,
}

/// Which compute API drives the VMs.
#[derive(Debug, Clone, PartialEq)]
pub enum ComputeConfig {
    /// The simulated ARM, with these latencies.
    Simulated(Latencies),
    /// Real ARM.
    Arm(Box<ArmConfig>),
}

/// The pool's policy: sizes, the warm buffer and the reconciler's timeouts. Its defaults are
/// the settings' defaults ([`settings`]).
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
    /// Demand repeats with this period (zero: no forecast): the buffer covers, ahead of
    /// time, the claims that came one period ago in the time a VM takes to get ready.
    pub demand_period: Duration,
    /// Most ARM creates and starts the reconciler issues per pass.
    pub max_creates_per_pass: u32,
    /// A drained (`MarkedForDeallocation`, 0 rooms) VM with no report for this long is deallocated.
    pub drain_timeout: Duration,
    /// A `Deallocated` VM nobody holds, deallocated this long, is deleted (zero: never).
    pub deallocated_keep: Duration,
    /// A create or start not done after this long fails.
    pub create_timeout: Duration,
    /// A deallocate not done after this long is issued again.
    pub deallocate_timeout: Duration,
    /// After this many creates fail in a row, the buffer stops creating.
    pub breaker_failures: u32,
    /// ... for this long.
    pub breaker_cooldown: Duration,
    /// A CreateVM `Idempotency-Key` answers with the same VM for this long.
    pub idempotency_ttl: Duration,
    /// How long CreateVM may spend retrying a throttled ARM call before it answers 503.
    pub arm_retry_budget: Duration,
    /// How often the reconciler sweeps every VM's power state and adopts untracked pool VMs.
    pub adopt_every: Duration,
    /// When more than this share (percent) of the known VMs, and at least 3, vanish from
    /// one listing, the reconciler acts on none of them.
    pub vanish_brake_percent: u32,
    /// A VM handed out that gets no report nor mark this long after it is `Running` goes
    /// back to `Standby`.
    pub claim_timeout: Duration,
    /// The pools (`VMPOOL_POOLS`, else the pool `default` of the settings above);
    /// `min_standby`, `max_vms` and `game_ports` above are what pools fall back to, and
    /// `max_vms` also caps all pools together.
    pub pools: Pools,
}

/// CreateVM's deadline beyond the ARM retry budget: table calls (5 s each at most) and the ARM
/// adapter's own time limits (20 s a call, 5xx retried twice).
pub const CREATE_DEADLINE_MARGIN: Duration = Duration::from_secs(90);

impl PoolPolicy {
    /// CreateVM's own deadline: past it the work stops and what was written is left to the
    /// reconciler, which re-issues nothing a CreateVM may still be sending before then.
    pub fn create_deadline(&self) -> Duration {
        self.arm_retry_budget + CREATE_DEADLINE_MARGIN
    }

    /// How long a VM whose start failed after CreateVM told its caller it is coming stays
    /// that caller's (deallocated), counted from the claim: CreateVM's deadline and the claim
    /// timeout. A mark from the caller lets it go earlier.
    pub fn failed_start_hold(&self) -> time::Duration {
        time::Duration::try_from(self.create_deadline() + self.claim_timeout)
            .unwrap_or(time::Duration::MAX)
    }

    /// The policy `src` describes; unset settings take their defaults.
    pub fn from_source(src: &dyn Source) -> Result<PoolPolicy, ConfigError> {
        let fallbacks = pools::Fallbacks {
            location: s::LOCATION.given(src)?,
            vm_size: s::VM_SIZE.read(src)?,
            image: s::IMAGE.read(src)?,
            build: s::BUILD.given(src)?,
            subnet_id: s::SUBNET_ID.given(src)?,
            min_standby: s::MIN_STANDBY.read(src)?,
            max_vms: s::MAX_VMS.read(src)?,
            game_ports: s::GAME_PORTS.read(src)?,
        };
        let pools = match s::POOLS.given(src)? {
            Some(raw) => {
                pools::parse(&raw, &fallbacks).map_err(|why| invalid(s::POOLS.name, why))?
            }
            None => Pools::single(&fallbacks),
        };
        let policy = PoolPolicy {
            min_standby: fallbacks.min_standby,
            max_vms: fallbacks.max_vms,
            game_ports: fallbacks.game_ports,
            vm_prefix: s::VM_PREFIX.read(src)?,
            demand_window: s::DEMAND_WINDOW_SECS.read(src)?,
            buffer_cooldown: s::BUFFER_COOLDOWN_SECS.read(src)?,
            ready_estimate: s::READY_ESTIMATE_SECS.read(src)?,
            demand_period: s::DEMAND_PERIOD_SECS.read(src)?,
            max_creates_per_pass: s::MAX_CREATES_PER_PASS.read(src)?,
            drain_timeout: s::DRAIN_TIMEOUT_SECS.read(src)?,
            deallocated_keep: s::DEALLOCATED_KEEP_SECS.read(src)?,
            create_timeout: s::CREATE_TIMEOUT_SECS.read(src)?,
            deallocate_timeout: s::DEALLOCATE_TIMEOUT_SECS.read(src)?,
            breaker_failures: s::BREAKER_FAILURES.read(src)?,
            breaker_cooldown: s::BREAKER_COOLDOWN_SECS.read(src)?,
            idempotency_ttl: s::IDEMPOTENCY_TTL_SECS.read(src)?,
            arm_retry_budget: s::ARM_RETRY_BUDGET_SECS.read(src)?,
            adopt_every: s::ADOPT_EVERY_SECS.read(src)?,
            vanish_brake_percent: s::VANISH_BRAKE_PERCENT.read(src)?,
            claim_timeout: s::CLAIM_TIMEOUT_SECS.read(src)?,
            pools,
        };
        if policy.min_standby > policy.max_vms {
            return Err(invalid(
                s::MIN_STANDBY.name,
                format!(
                    "{} is more than {} ({})",
                    policy.min_standby,
                    s::MAX_VMS.name,
                    policy.max_vms
                ),
            ));
        }
        Ok(policy)
    }
}

impl PoolPolicy {
    /// This policy with one pool, `default`, of its own `min_standby`, `max_vms` and
    /// `game_ports` and the default image (for tools and tests that set those fields).
    pub fn single_pool(self) -> PoolPolicy {
        let default = Self::default();
        let spec = &default.pools.all()[0];
        let pools = Pools::single(&pools::Fallbacks {
            location: spec.location.clone(),
            vm_size: spec.vm_size.clone(),
            image: spec.image.clone(),
            build: Some(spec.build.clone()),
            subnet_id: spec.subnet_id.clone(),
            min_standby: self.min_standby,
            max_vms: self.max_vms,
            game_ports: self.game_ports.clone(),
        });
        PoolPolicy { pools, ..self }
    }
}

impl Default for PoolPolicy {
    /// Every setting at its default.
    fn default() -> Self {
        // The defaults are constants, and `defaults_need_no_settings` reads every one of them.
        PoolPolicy::from_source(&Unset).expect("the settings' defaults are valid")
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
    /// Runs as an Azure Functions custom handler (`FUNCTIONS_CUSTOMHANDLER_PORT` is set).
    pub functions_host: bool,
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
    /// (the default under the Functions host).
    pub reconcile_every: Option<Duration>,
    /// The pool's policy.
    pub policy: PoolPolicy,
    /// Standalone API key, checked on every route but `GET /`; always `None` under the
    /// Functions host, which checks function keys itself.
    pub api_key: Option<Secret>,
    /// Log format.
    pub log_format: LogFormat,
    /// What start-up should warn about, one line each (settings that are valid but unsafe or
    /// ignored).
    pub warnings: Vec<String>,
    /// Longest an `/api/*` request may take before it is answered 503.
    pub request_timeout: Duration,
    /// Most `/api/*` requests served at once; more are answered 503.
    pub max_concurrent_requests: usize,
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

/// No setting at all: every default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unset;

impl Source for Unset {
    fn get(&self, _name: &str) -> Option<String> {
        None
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

/// Where the table lives as the settings say it: `VMPOOL_STORAGE`, else `AzureWebJobsStorage`;
/// `None` when neither says anything.
fn storage(src: &dyn Source) -> Result<Option<StorageConfig>, ConfigError> {
    let Some(value) = s::STORAGE
        .given(src)?
        .or(s::AZURE_WEB_JOBS_STORAGE.given(src)?)
    else {
        // Then the identity-based form Azure Functions uses without a connection string.
        return IdentityStorage::from_settings(&|name| src.get(name))
            .map(|identity| identity.map(StorageConfig::Identity))
            .map_err(|e| invalid(e.var, e.message));
    };
    Ok(Some(if value.expose().eq_ignore_ascii_case("memory") {
        StorageConfig::Memory
    } else {
        StorageConfig::Azure(value)
    }))
}

fn compute(src: &dyn Source) -> Result<ComputeConfig, ConfigError> {
    let implied = if src.get(s::SUBSCRIPTION_ID.name).is_some() {
        ComputeKind::Arm
    } else {
        ComputeKind::Simulated
    };
    Ok(match s::COMPUTE.given(src)?.unwrap_or(implied) {
        ComputeKind::Simulated => ComputeConfig::Simulated(Latencies {
            create: s::SIM_CREATE_SECS.read(src)?,
            start: s::SIM_START_SECS.read(src)?,
            deallocate: s::SIM_DEALLOCATE_SECS.read(src)?,
            ..Latencies::default()
        }),
        ComputeKind::Arm => ComputeConfig::Arm(Box::new(ArmConfig {
            endpoint: s::ARM_ENDPOINT.read(src)?,
            token: s::ARM_TOKEN.given(src)?,
            subscription_id: s::SUBSCRIPTION_ID.read(src)?,
            resource_group: s::RESOURCE_GROUP.read(src)?,
            location: s::LOCATION.read(src)?,
            subnet_id: s::SUBNET_ID.read(src)?,
            ssh_public_key: s::SSH_PUBLIC_KEY.read(src)?,
            image: s::IMAGE.read(src)?,
            vm_size: s::VM_SIZE.read(src)?,
            admin_username: s::ADMIN_USERNAME.read(src)?,
        })),
    })
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_source(&Env)
    }

    /// Reads the configuration from `src`.
    pub fn from_source(src: &dyn Source) -> Result<Config, ConfigError> {
        // The host always sets its port for the handler; nothing else does.
        let host_port = s::FUNCTIONS_CUSTOMHANDLER_PORT.given(src)?;
        let functions_host = host_port.is_some();
        let port = match host_port {
            Some(port) => port,
            None => s::PORT.read(src)?,
        };
        let bind = s::BIND.read(src)?;
        let table = s::TABLE.read(src)?;
        let compute = compute(src)?;
        let storage = match (storage(src)?, &compute) {
            (Some(storage), _) => storage,
            (None, ComputeConfig::Simulated(_)) => StorageConfig::Memory,
            // Real VMs with a table that dies with the process (and differs per instance)
            // would be orphaned: only an explicit `memory` may do that.
            (None, ComputeConfig::Arm(_)) => {
                return Err(invalid(
                    s::STORAGE.name,
                    "is required when VMPOOL_COMPUTE=arm: a storage connection string (or the identity-based AzureWebJobsStorage__accountName / __tableServiceUri), or `memory` to keep the table in this process only",
                ));
            }
        };
        // Under the Functions host the timer function reconciles; a loop in every instance
        // would only repeat its work.
        let reconcile_every = if functions_host {
            s::RECONCILE_SECS.given(src)?.unwrap_or(Duration::ZERO)
        } else {
            s::RECONCILE_SECS.read(src)?
        };
        let policy = PoolPolicy::from_source(src)?;
        let log_format = s::LOG_FORMAT.read(src)?;
        let given_key = s::API_KEY.given(src)?;
        let mut warnings = Vec::new();
        if functions_host && given_key.is_some() {
            warnings.push(format!(
                "{} is ignored under the Functions host, which checks function keys itself",
                s::API_KEY.name
            ));
        }
        // The host checks function keys itself and forwards them; ours is standalone only.
        let api_key = given_key.filter(|_| !functions_host);
        if !bind.is_loopback() && api_key.is_none() {
            warnings.push(if functions_host {
                format!(
                    "{} is {bind}, not loopback: callers that reach this address directly bypass the Functions host's function keys",
                    s::BIND.name
                )
            } else {
                format!(
                    "{} is {bind}, not loopback, and {} is unset: anyone who reaches this address can call every route",
                    s::BIND.name,
                    s::API_KEY.name
                )
            });
        }
        Ok(Config {
            functions_host,
            bind,
            port,
            storage,
            table,
            compute,
            reconcile_every: (!reconcile_every.is_zero()).then_some(reconcile_every),
            policy,
            api_key,
            log_format,
            warnings,
            request_timeout: s::REQUEST_TIMEOUT_SECS.read(src)?,
            max_concurrent_requests: s::MAX_CONCURRENT_REQUESTS.read(src)?,
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
        assert!(!c.functions_host);
        assert!(c.warnings.is_empty());
        assert_eq!(c.log_format, LogFormat::Text);
        // The policy's defaults are the settings' defaults.
        assert_eq!(c.policy, PoolPolicy::default());
        assert_eq!(c.policy.demand_window, Duration::from_secs(200));
        assert_eq!(c.policy.vm_prefix, "vmpool");
        assert!(c.policy.game_ports.is_empty());
    }

    #[test]
    fn under_the_functions_host_the_timer_reconciles_and_the_host_checks_keys() {
        let c = Config::from_source(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "40123"),
            ("VMPOOL_API_KEY", "k"),
        ])
        .unwrap();
        assert!(c.functions_host);
        assert_eq!(c.port, 40123);
        assert_eq!((c.reconcile_every, c.api_key), (None, None));
        assert_eq!(
            c.warnings,
            [
                "VMPOOL_API_KEY is ignored under the Functions host, which checks function keys itself"
            ]
        );
        let c = Config::from_source(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "40123"),
            ("VMPOOL_RECONCILE_SECS", "30"),
            ("VMPOOL_PORT", "9000"),
        ])
        .unwrap();
        assert_eq!(c.reconcile_every, Some(Duration::from_secs(30)));
        assert_eq!(c.port, 40123, "the host's port wins");
    }

    #[test]
    fn the_host_is_detected_by_its_port_alone() {
        // Flex Consumption may not set FUNCTIONS_WORKER_RUNTIME; it changes nothing either way.
        let standalone = Config::from_source(&[("VMPOOL_API_KEY", "k")]).unwrap();
        let with_runtime = Config::from_source(&[
            ("FUNCTIONS_WORKER_RUNTIME", "custom"),
            ("VMPOOL_API_KEY", "k"),
        ])
        .unwrap();
        assert_eq!(with_runtime, standalone);
        assert!(!standalone.functions_host);
        assert_eq!(standalone.api_key, Some(Secret::new("k")));
        assert_eq!(standalone.reconcile_every, Some(Duration::from_secs(10)));
        let c = Config::from_source(&[("VMPOOL_PORT", "9000")]).unwrap();
        assert_eq!((c.functions_host, c.port), (false, 9000));
    }

    #[test]
    fn a_reachable_address_without_a_key_is_warned_about() {
        let open = Config::from_source(&[("VMPOOL_BIND", "0.0.0.0")]).unwrap();
        assert_eq!(
            open.warnings,
            [
                "VMPOOL_BIND is 0.0.0.0, not loopback, and VMPOOL_API_KEY is unset: anyone who reaches this address can call every route"
            ]
        );
        let keyed =
            Config::from_source(&[("VMPOOL_BIND", "0.0.0.0"), ("VMPOOL_API_KEY", "k")]).unwrap();
        assert!(keyed.warnings.is_empty(), "{:?}", keyed.warnings);
        for loopback in ["127.0.0.1", "127.0.0.2", "::1"] {
            let c = Config::from_source(&[("VMPOOL_BIND", loopback)]).unwrap();
            assert!(c.warnings.is_empty(), "{loopback}: {:?}", c.warnings);
        }
        let host = Config::from_source(&[
            ("VMPOOL_BIND", "::"),
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "40123"),
        ])
        .unwrap();
        assert_eq!(host.warnings.len(), 1);
        assert!(host.warnings[0].starts_with("VMPOOL_BIND is ::, not loopback"));
        assert!(
            host.warnings
                .iter()
                .chain(&open.warnings)
                .all(|w| !w.contains('\n'))
        );
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

    const ARM: [(&str, &str); 5] = [
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
    ];

    fn map(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn arm_keeps_its_table_in_memory_only_when_told_so() {
        // Implied by AZURE_SUBSCRIPTION_ID, or said.
        for extra in [None, Some(("VMPOOL_COMPUTE", "arm"))] {
            let mut src = map(&ARM);
            src.extend(extra.map(|(k, v)| (k.to_owned(), v.to_owned())));
            let err = Config::from_source(&src).unwrap_err();
            assert_eq!(err.var, "VMPOOL_STORAGE", "{err}");
            assert!(!err.to_string().contains('\n'));
            src.insert("VMPOOL_STORAGE".into(), "memory".into());
            let c = Config::from_source(&src).unwrap();
            assert_eq!(c.storage, StorageConfig::Memory);
            assert!(matches!(c.compute, ComputeConfig::Arm(_)));
        }
        let mut src = map(&ARM);
        src.insert(
            "AzureWebJobsStorage".into(),
            "UseDevelopmentStorage=true".into(),
        );
        assert!(matches!(
            Config::from_source(&src).unwrap().storage,
            StorageConfig::Azure(_)
        ));
        // The simulated cloud may keep its table in memory without saying so.
        assert_eq!(
            Config::from_source(&[("VMPOOL_COMPUTE", "simulated")])
                .unwrap()
                .storage,
            StorageConfig::Memory
        );
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("FUNCTIONS_CUSTOMHANDLER_PORT", "http")],
                "FUNCTIONS_CUSTOMHANDLER_PORT",
            ),
            (&[("VMPOOL_PORT", "0")], "VMPOOL_PORT"),
            (&[("VMPOOL_BIND", "localhost")], "VMPOOL_BIND"),
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

    /// The rows of the README's configuration table, as written.
    fn readme_rows() -> Vec<&'static str> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README has a Configuration section");
        section.lines().filter(|l| l.starts_with("| `")).collect()
    }

    #[test]
    fn the_readme_table_shows_every_setting_as_declared() {
        let rows = readme_rows();
        let expected: Vec<String> = settings::ALL.iter().map(|a| a.readme_row()).collect();
        let table = expected.join("\n");
        for (about, row) in settings::ALL.iter().zip(&expected) {
            assert!(
                rows.contains(&row.as_str()),
                "the README's configuration table lacks (or differs from) the row of {}:\n{row}\n\nthe table should read:\n{table}",
                about.name
            );
        }
        for row in &rows {
            let name = row
                .trim_start_matches("| `")
                .split('`')
                .next()
                .unwrap_or_default();
            assert!(
                settings::ALL.iter().any(|a| a.name == name),
                "the README documents {name}, which is not a setting:\n{row}"
            );
        }
        assert_eq!(rows.len(), settings::ALL.len(), "one row per setting");
    }

    #[test]
    fn every_declared_default_is_valid() {
        // Every setting at its default: the simulated cloud, then ARM with the required ones.
        Config::from_source(&Unset).unwrap();
        let mut src = map(&ARM);
        src.insert("VMPOOL_STORAGE".into(), "memory".into());
        let c = Config::from_source(&src).unwrap();
        let ComputeConfig::Arm(arm) = c.compute else {
            panic!("arm")
        };
        assert_eq!(arm.endpoint.as_str(), "https://management.azure.com/");
        assert_eq!(arm.vm_size, "Standard_B2s");
    }

    /// A source that remembers every name asked for.
    struct Recorder(
        std::collections::HashMap<String, String>,
        std::cell::RefCell<std::collections::BTreeSet<String>>,
    );
    impl Source for Recorder {
        fn get(&self, name: &str) -> Option<String> {
            self.1.borrow_mut().insert(name.to_owned());
            self.0.get(name).cloned()
        }
    }

    #[test]
    fn every_variable_read_is_a_declared_setting() {
        let mut arm = map(&ARM);
        arm.insert("FUNCTIONS_CUSTOMHANDLER_PORT".into(), "7000".into());
        arm.insert(
            "AzureWebJobsStorage".into(),
            "UseDevelopmentStorage=true".into(),
        );
        let mut asked = std::collections::BTreeSet::new();
        for src in [std::collections::HashMap::new(), arm] {
            let recorder = Recorder(src, Default::default());
            Config::from_source(&recorder).unwrap();
            asked.extend(recorder.1.into_inner());
        }
        for name in &asked {
            assert!(
                settings::ALL.iter().any(|a| a.name == name),
                "{name} is read but not declared in config::settings"
            );
        }
        assert!(asked.contains("VMPOOL_SSH_PUBLIC_KEY") && asked.contains("VMPOOL_SIM_START_SECS"));
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
