//! Every setting in one place: its variable, what it means, its default and how its value is
//! read. The README's configuration table shows exactly `name`, `doc` and the default of each
//! (a test compares them), so adding a setting is one entry here, one line where
//! [`Config`](super::Config) is assembled, and the row the test prints.

use std::net::IpAddr;
use std::time::Duration;

use super::{ComputeKind, LogFormat};
use crate::compute::arm::settings as arm_rules;
use crate::compute::arm::settings::Image;
use crate::secret::Secret;
use crate::store::identity;

/// What a setting is when it is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// This value, read by the same rule as a value that is set.
    Value(&'static str),
    /// No value; the text says what that means (the README shows it).
    Unset(&'static str),
    /// It must be set when this holds.
    Required(&'static str),
}

/// A setting's description, without its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct About {
    /// The environment variable.
    pub name: &'static str,
    /// What it means, as the README's table says it.
    pub doc: &'static str,
    /// What it is when not set.
    pub default: Fallback,
}

impl About {
    /// The README's table row for this setting.
    pub fn readme_row(&self) -> String {
        let default = match self.default {
            Fallback::Value("") => "empty".to_owned(),
            Fallback::Value(v) => format!("`{v}`"),
            Fallback::Unset(text) => text.to_owned(),
            Fallback::Required(when) => format!("required when {when}"),
        };
        format!("| `{}` | {} | {default} |", self.name, self.doc)
    }
}

/// One setting read as a `T`.
#[derive(Debug, Clone, Copy)]
pub struct Setting<T: 'static> {
    /// The environment variable.
    pub name: &'static str,
    /// What it means, as the README's table says it.
    pub doc: &'static str,
    /// What it is when not set.
    pub default: Fallback,
    /// The rule: the (trimmed) value, or a message saying what is expected.
    pub parse: fn(&str) -> Result<T, String>,
}

impl<T> Setting<T> {
    /// The description without the type.
    pub const fn about(&self) -> About {
        About {
            name: self.name,
            doc: self.doc,
            default: self.default,
        }
    }

    fn parsed(&self, raw: &str) -> Result<T, super::ConfigError> {
        (self.parse)(raw.trim()).map_err(|message| super::invalid(self.name, message))
    }

    /// The value, if it is set.
    pub fn given(&self, src: &dyn super::Source) -> Result<Option<T>, super::ConfigError> {
        src.get(self.name).map(|raw| self.parsed(&raw)).transpose()
    }

    /// The value if set, else the default value; a required setting that is unset is an error.
    pub fn read(&self, src: &dyn super::Source) -> Result<T, super::ConfigError> {
        if let Some(value) = self.given(src)? {
            return Ok(value);
        }
        match self.default {
            Fallback::Value(raw) => self.parsed(raw),
            Fallback::Required(when) => Err(super::invalid(
                self.name,
                format!("is required when {}", when.replace('`', "")),
            )),
            Fallback::Unset(_) => Err(super::invalid(self.name, "is not set")),
        }
    }
}

// ---- Rules shared by several settings ----

fn whole<T>(raw: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let value: T = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a whole number"))?;
    if value < min || value > max {
        return Err(format!("{value} is outside {min}..={max}"));
    }
    Ok(value)
}

/// Whole seconds from `min` up to a week.
fn seconds(raw: &str, min: u64) -> Result<Duration, String> {
    whole(raw, min, 7 * 24 * 3600).map(Duration::from_secs)
}

/// A demand period: `0` (none), or from 10 minutes up to a week.
fn demand_period(raw: &str) -> Result<Duration, String> {
    match whole(raw, 0, 7 * 24 * 3600)? {
        0 => Ok(Duration::ZERO),
        p if p < 600 => Err(format!("{p} is neither 0 nor within 600..=604800")),
        p => Ok(Duration::from_secs(p)),
    }
}

/// Whole seconds up to a day, as the simulated cloud counts them.
fn sim_seconds(raw: &str) -> Result<time::Duration, String> {
    whole(raw, 0, 86_400).map(time::Duration::seconds)
}

fn secret(raw: &str) -> Result<Secret, String> {
    Ok(Secret::new(raw))
}

/// Table names, as the store checks them.
fn table_name(raw: &str) -> Result<String, String> {
    match crate::store::table::check_table_name(raw) {
        Ok(()) => Ok(raw.to_owned()),
        Err(
            crate::store::StoreError::Rejected(why) | crate::store::StoreError::Unavailable(why),
        ) => Err(why),
    }
}

fn vm_prefix(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= 40
        && raw.starts_with(|c: char| c.is_ascii_alphanumeric())
        && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "{raw:?} must be 1-40 letters, digits or '-', starting with a letter or digit"
        ))
    }
}

/// A comma-separated list of ports.
pub fn parse_ports(raw: &str) -> Result<Vec<u16>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        })
        .collect()
}

// ---- Where vmpool runs ----

/// Set by the Functions host, and only by it: vmpool takes it as the sign that it runs as a
/// custom handler (the host always sets it; `FUNCTIONS_WORKER_RUNTIME` may be absent).
pub const FUNCTIONS_CUSTOMHANDLER_PORT: Setting<u16> = Setting {
    name: "FUNCTIONS_CUSTOMHANDLER_PORT",
    doc: "port to listen on, set by the Functions host; when set, vmpool runs as a custom handler (see [Running under Azure Functions](#running-under-azure-functions))",
    default: Fallback::Unset("unset: standalone"),
    parse: |raw| whole(raw, 1, u16::MAX),
};

/// Standalone port.
pub const PORT: Setting<u16> = Setting {
    name: "VMPOOL_PORT",
    doc: "port to listen on standalone (`FUNCTIONS_CUSTOMHANDLER_PORT` wins when set)",
    default: Fallback::Value("7071"),
    parse: |raw| whole(raw, 1, u16::MAX),
};

/// Listen address.
pub const BIND: Setting<IpAddr> = Setting {
    name: "VMPOOL_BIND",
    doc: "address to listen on; start-up warns when it is not loopback and no API key guards it",
    default: Fallback::Value("127.0.0.1"),
    parse: |raw| {
        raw.parse()
            .map_err(|_| format!("{raw:?} is not an IP address"))
    },
};

/// Standalone API key.
pub const API_KEY: Setting<Secret> = Setting {
    name: "VMPOOL_API_KEY",
    doc: "standalone only: required in `x-functions-key` or `?code=` on every route but `GET /`; ignored under the Functions host, which checks function keys itself",
    default: Fallback::Unset("unset"),
    parse: secret,
};

/// Log format.
pub const LOG_FORMAT: Setting<LogFormat> = Setting {
    name: "VMPOOL_LOG_FORMAT",
    doc: "`text` or `json` (one JSON object per line, for Application Insights)",
    default: Fallback::Value("text"),
    parse: |raw| match raw {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is neither text nor json")),
    },
};

/// Read by the log filter, not by [`Config`](super::Config).
pub const RUST_LOG: About = About {
    name: "RUST_LOG",
    doc: "log filter, e.g. `vmpool=debug`; the Azure SDK's own logs stay at `info` or above whatever it says, since they would print request URLs and headers",
    default: Fallback::Value("info"),
};

// ---- The table ----

/// Where the table lives.
pub const STORAGE: Setting<Secret> = Setting {
    name: "VMPOOL_STORAGE",
    doc: "`memory`, or an Azure Storage connection string (`UseDevelopmentStorage=true` is Azurite)",
    default: Fallback::Unset(
        "`AzureWebJobsStorage` if set, else the identity-based settings below, else `memory`; with `arm`, `memory` must be said explicitly",
    ),
    parse: secret,
};

/// The Functions host's own storage, vmpool's when `VMPOOL_STORAGE` is unset.
pub const AZURE_WEB_JOBS_STORAGE: Setting<Secret> = Setting {
    name: "AzureWebJobsStorage",
    doc: "the Functions app's storage connection string; vmpool's table lives there when `VMPOOL_STORAGE` is unset",
    default: Fallback::Unset("unset"),
    parse: secret,
};

/// The identity-based storage settings, read and checked by
/// [`IdentityStorage`](crate::store::identity::IdentityStorage) when no connection string is set.
pub const IDENTITY_STORAGE: [About; 5] = [
    About {
        name: identity::TABLE_SERVICE_URI,
        doc: "identity-based storage: the Table service's `https` URI (any cloud or custom DNS); used when neither `VMPOOL_STORAGE` nor `AzureWebJobsStorage` is set",
        default: Fallback::Unset("unset"),
    },
    About {
        name: identity::ACCOUNT_NAME,
        doc: "identity-based storage in global Azure: the endpoint is `https://<account>.table.core.windows.net` (`__tableServiceUri` wins when both are set)",
        default: Fallback::Unset("unset"),
    },
    About {
        name: identity::CREDENTIAL,
        doc: "`managedidentity`: the app's system-assigned managed identity; unset: the credential chain (environment service principal, managed identity, Azure CLI)",
        default: Fallback::Unset("unset"),
    },
    About {
        name: identity::CLIENT_ID,
        doc: "a user-assigned identity's client ID: not supported, start-up stops naming the setting",
        default: Fallback::Unset("unset"),
    },
    About {
        name: identity::MANAGED_IDENTITY_RESOURCE_ID,
        doc: "a user-assigned identity's resource ID: not supported, start-up stops naming the setting",
        default: Fallback::Unset("unset"),
    },
];

/// Table name.
pub const TABLE: Setting<String> = Setting {
    name: "VMPOOL_TABLE",
    doc: "table name (3-63 letters and digits); also the `vmpool` tag value on the pool's VMs",
    default: Fallback::Value("vmpool"),
    parse: table_name,
};

// ---- The compute API ----

/// Simulated or real ARM.
pub const COMPUTE: Setting<ComputeKind> = Setting {
    name: "VMPOOL_COMPUTE",
    doc: "`simulated` or `arm`",
    default: Fallback::Unset("`arm` if `AZURE_SUBSCRIPTION_ID` is set, else `simulated`"),
    parse: |raw| match raw {
        "simulated" => Ok(ComputeKind::Simulated),
        "arm" => Ok(ComputeKind::Arm),
        other => Err(format!("{other:?} is neither simulated nor arm")),
    },
};

/// Simulated create latency.
pub const SIM_CREATE_SECS: Setting<time::Duration> = Setting {
    name: "VMPOOL_SIM_CREATE_SECS",
    doc: "simulated ARM: seconds a create takes",
    default: Fallback::Value("150"),
    parse: sim_seconds,
};

/// Simulated start latency.
pub const SIM_START_SECS: Setting<time::Duration> = Setting {
    name: "VMPOOL_SIM_START_SECS",
    doc: "simulated ARM: seconds a start takes",
    default: Fallback::Value("60"),
    parse: sim_seconds,
};

/// Simulated deallocate latency.
pub const SIM_DEALLOCATE_SECS: Setting<time::Duration> = Setting {
    name: "VMPOOL_SIM_DEALLOCATE_SECS",
    doc: "simulated ARM: seconds a deallocate takes",
    default: Fallback::Value("60"),
    parse: sim_seconds,
};

/// ARM base URL.
pub const ARM_ENDPOINT: Setting<url::Url> = Setting {
    name: "VMPOOL_ARM_ENDPOINT",
    doc: "ARM base URL",
    default: Fallback::Value("https://management.azure.com"),
    parse: arm_rules::endpoint,
};

/// Static ARM token for emulators.
pub const ARM_TOKEN: Setting<Secret> = Setting {
    name: "VMPOOL_ARM_TOKEN",
    doc: "static bearer token, for ARM emulators only",
    default: Fallback::Unset("unset: azure_identity credential chain"),
    parse: secret,
};

const FOR_ARM: Fallback = Fallback::Required("`VMPOOL_COMPUTE=arm`");

/// The subscription.
pub const SUBSCRIPTION_ID: Setting<String> = Setting {
    name: "AZURE_SUBSCRIPTION_ID",
    doc: "subscription that holds the pool",
    default: FOR_ARM,
    parse: arm_rules::subscription_id,
};

/// The resource group.
pub const RESOURCE_GROUP: Setting<String> = Setting {
    name: "VMPOOL_RESOURCE_GROUP",
    doc: "resource group of the VMs",
    default: FOR_ARM,
    parse: arm_rules::resource_group,
};

/// The region.
pub const LOCATION: Setting<String> = Setting {
    name: "VMPOOL_LOCATION",
    doc: "Azure region, e.g. `westeurope`",
    default: FOR_ARM,
    parse: arm_rules::location,
};

/// The subnet.
pub const SUBNET_ID: Setting<String> = Setting {
    name: "VMPOOL_SUBNET_ID",
    doc: "resource ID of an existing subnet for the VMs' NICs",
    default: FOR_ARM,
    parse: arm_rules::subnet_id,
};

/// The admin SSH key.
pub const SSH_PUBLIC_KEY: Setting<String> = Setting {
    name: "VMPOOL_SSH_PUBLIC_KEY",
    doc: "admin SSH public key (one line)",
    default: FOR_ARM,
    parse: arm_rules::ssh_public_key,
};

/// The image.
pub const IMAGE: Setting<Image> = Setting {
    name: "VMPOOL_IMAGE",
    doc: "`publisher:offer:sku:version`, or an image resource ID",
    default: Fallback::Value(arm_rules::DEFAULT_IMAGE),
    parse: arm_rules::image,
};

/// The VM size.
pub const VM_SIZE: Setting<String> = Setting {
    name: "VMPOOL_VM_SIZE",
    doc: "VM size",
    default: Fallback::Value(arm_rules::DEFAULT_VM_SIZE),
    parse: arm_rules::vm_size,
};

/// The admin user.
pub const ADMIN_USERNAME: Setting<String> = Setting {
    name: "VMPOOL_ADMIN_USERNAME",
    doc: "admin user",
    default: Fallback::Value(arm_rules::DEFAULT_ADMIN_USERNAME),
    parse: arm_rules::admin_username,
};

// ---- The pool's policy ----

/// The standalone reconcile loop.
pub const RECONCILE_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_RECONCILE_SECS",
    doc: "standalone reconcile interval; `0` turns the loop off, which is the default under the Functions host (its timer reconciles)",
    default: Fallback::Value("10"),
    parse: |raw| whole(raw, 0, 86_400).map(Duration::from_secs),
};

/// See [`PoolPolicy::min_standby`](super::PoolPolicy::min_standby).
pub const MIN_STANDBY: Setting<u32> = Setting {
    name: "VMPOOL_MIN_STANDBY",
    doc: "warm VMs kept in `Standby` at least",
    default: Fallback::Value("0"),
    parse: |raw| whole(raw, 0, 10_000),
};

/// See [`PoolPolicy::max_vms`](super::PoolPolicy::max_vms).
pub const MAX_VMS: Setting<u32> = Setting {
    name: "VMPOOL_MAX_VMS",
    doc: "most VMs not `Deallocated` at once",
    default: Fallback::Value("20"),
    parse: |raw| whole(raw, 1, 100_000),
};

/// See [`PoolPolicy::demand_window`](super::PoolPolicy::demand_window).
pub const DEMAND_WINDOW_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_DEMAND_WINDOW_SECS",
    doc: "window over which CreateVM demand is measured",
    default: Fallback::Value("200"),
    parse: |raw| seconds(raw, 1),
};

/// See [`PoolPolicy::ready_estimate`](super::PoolPolicy::ready_estimate).
pub const READY_ESTIMATE_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_READY_ESTIMATE_SECS",
    doc: "how long a VM takes to become ready (scales demand into a buffer target)",
    default: Fallback::Value("180"),
    parse: |raw| seconds(raw, 1),
};

/// See [`PoolPolicy::demand_period`](super::PoolPolicy::demand_period).
pub const DEMAND_PERIOD_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_DEMAND_PERIOD_SECS",
    doc: "demand repeats with this period (an hourly event: `3600`, a daily cycle: `86400`): the buffer is raised ahead of what came one period ago; `0` forecasts nothing",
    default: Fallback::Value("0"),
    parse: demand_period,
};

/// See [`PoolPolicy::buffer_cooldown`](super::PoolPolicy::buffer_cooldown).
pub const BUFFER_COOLDOWN_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_BUFFER_COOLDOWN_SECS",
    doc: "a raised target, and surplus `Standby` VMs, are kept this long after demand falls",
    default: Fallback::Value("120"),
    parse: |raw| seconds(raw, 0),
};

/// See [`PoolPolicy::max_creates_per_pass`](super::PoolPolicy::max_creates_per_pass).
pub const MAX_CREATES_PER_PASS: Setting<u32> = Setting {
    name: "VMPOOL_MAX_CREATES_PER_PASS",
    doc: "most buffer starts + creates per reconcile pass",
    default: Fallback::Value("5"),
    parse: |raw| whole(raw, 1, 1000),
};

/// See [`PoolPolicy::drain_timeout`](super::PoolPolicy::drain_timeout).
pub const DRAIN_TIMEOUT_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_DRAIN_TIMEOUT_SECS",
    doc: "a drained `MarkedForDeallocation` VM silent this long is deallocated",
    default: Fallback::Value("900"),
    parse: |raw| seconds(raw, 1),
};

/// See [`PoolPolicy::deallocated_keep`](super::PoolPolicy::deallocated_keep).
pub const DEALLOCATED_KEEP_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_DEALLOCATED_KEEP_SECS",
    doc: "a `Deallocated` VM nobody holds, deallocated this long, is deleted (its disk is billed while it waits to be started again); `0` keeps every one",
    default: Fallback::Value("3600"),
    parse: |raw| seconds(raw, 0),
};

/// See [`PoolPolicy::create_timeout`](super::PoolPolicy::create_timeout).
pub const CREATE_TIMEOUT_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_CREATE_TIMEOUT_SECS",
    doc: "a create not done this long after it was first issued fails the VM; a start, the VM back to `Deallocated` (or needing attention)",
    default: Fallback::Value("900"),
    parse: |raw| seconds(raw, 1),
};

/// See [`PoolPolicy::deallocate_timeout`](super::PoolPolicy::deallocate_timeout).
pub const DEALLOCATE_TIMEOUT_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_DEALLOCATE_TIMEOUT_SECS",
    doc: "a deallocate not done after this is issued again (3 attempts from the first issue, then the VM needs attention); also the time between deletes of a `Failed` VM",
    default: Fallback::Value("600"),
    parse: |raw| seconds(raw, 1),
};

/// See [`PoolPolicy::breaker_failures`](super::PoolPolicy::breaker_failures).
pub const BREAKER_FAILURES: Setting<u32> = Setting {
    name: "VMPOOL_BREAKER_FAILURES",
    doc: "starts and creates refused or failed in a row (CreateVM's and the reconciler's) that open the circuit breaker",
    default: Fallback::Value("3"),
    parse: |raw| whole(raw, 1, 1000),
};

/// See [`PoolPolicy::breaker_cooldown`](super::PoolPolicy::breaker_cooldown).
pub const BREAKER_COOLDOWN_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_BREAKER_COOLDOWN_SECS",
    doc: "how long the breaker stays open: no start or create is sent to ARM, CreateVM answers 503",
    default: Fallback::Value("600"),
    parse: |raw| seconds(raw, 0),
};

/// See [`PoolPolicy::idempotency_ttl`](super::PoolPolicy::idempotency_ttl).
pub const IDEMPOTENCY_TTL_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_IDEMPOTENCY_TTL_SECS",
    doc: "how long a CreateVM `Idempotency-Key` answers with the same VM",
    default: Fallback::Value("86400"),
    parse: |raw| seconds(raw, 1),
};

/// See [`PoolPolicy::arm_retry_budget`](super::PoolPolicy::arm_retry_budget).
pub const ARM_RETRY_BUDGET_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_ARM_RETRY_BUDGET_SECS",
    doc: "how long CreateVM waits out ARM throttling (`Retry-After` up to 5 s) before it answers 503",
    default: Fallback::Value("10"),
    parse: |raw| seconds(raw, 0),
};

/// See [`Config::request_timeout`](super::Config::request_timeout).
pub const REQUEST_TIMEOUT_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_REQUEST_TIMEOUT_SECS",
    doc: "longest an `/api/*` request may take before it answers 503",
    default: Fallback::Value("30"),
    parse: |raw| seconds(raw, 1),
};

/// See [`Config::max_concurrent_requests`](super::Config::max_concurrent_requests).
pub const MAX_CONCURRENT_REQUESTS: Setting<usize> = Setting {
    name: "VMPOOL_MAX_CONCURRENT_REQUESTS",
    doc: "most `/api/*` requests served at once; more answer 503",
    default: Fallback::Value("256"),
    parse: |raw| whole(raw, 1, 100_000),
};

/// See [`PoolPolicy::adopt_every`](super::PoolPolicy::adopt_every).
pub const ADOPT_EVERY_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_ADOPT_EVERY_SECS",
    doc: "how often the reconciler sweeps every VM's power state (drift) and adopts untracked pool VMs",
    default: Fallback::Value("300"),
    parse: |raw| seconds(raw, 1),
};

/// See [`PoolPolicy::vanish_brake_percent`](super::PoolPolicy::vanish_brake_percent).
pub const VANISH_BRAKE_PERCENT: Setting<u32> = Setting {
    name: "VMPOOL_VANISH_BRAKE_PERCENT",
    doc: "when more than this share (0-100) of the known VMs, and at least 3, vanish from one listing, the reconciler acts on none of them",
    default: Fallback::Value("10"),
    parse: |raw| whole(raw, 0, 100),
};

/// See [`PoolPolicy::claim_timeout`](super::PoolPolicy::claim_timeout).
pub const CLAIM_TIMEOUT_SECS: Setting<Duration> = Setting {
    name: "VMPOOL_CLAIM_TIMEOUT_SECS",
    doc: "a VM handed out that gets no rooms report nor mark this long after it is `Running` goes back to `Standby` (counted and logged with its vmId)",
    default: Fallback::Value("600"),
    parse: |raw| seconds(raw, 1),
};

/// See [`PoolPolicy::game_ports`](super::PoolPolicy::game_ports).
pub const GAME_PORTS: Setting<Vec<u16>> = Setting {
    name: "VMPOOL_GAME_PORTS",
    doc: "ports the game server listens on, returned with each VM (`7777,7778`)",
    default: Fallback::Value(""),
    parse: parse_ports,
};

/// See [`PoolPolicy::vm_prefix`](super::PoolPolicy::vm_prefix).
pub const VM_PREFIX: Setting<String> = Setting {
    name: "VMPOOL_VM_PREFIX",
    doc: "prefix of generated VM names (`<prefix>-<10 random chars>`)",
    default: Fallback::Value("vmpool"),
    parse: vm_prefix,
};

/// See [`PoolSpec::build`](super::pools::PoolSpec::build).
pub const BUILD: Setting<String> = Setting {
    name: "VMPOOL_BUILD",
    doc: "build label of the `default` pool's image (what CreateVM's `build` names) when `VMPOOL_POOLS` is unset",
    default: Fallback::Unset(
        "the version `VMPOOL_IMAGE` names (a gallery image version's last segment, or a marketplace image's version)",
    ),
    parse: super::pools::build,
};

/// The pools ([`super::pools`]).
pub const POOLS: Setting<String> = Setting {
    name: "VMPOOL_POOLS",
    doc: "JSON object mapping pool names to `{location, image, build, vmSize, subnetId, minStandby, maxVms, gamePorts}`; the first three are required, the others fall back to the single-pool settings (see [Pools and builds](#pools-and-builds))",
    default: Fallback::Unset("unset: the single-pool settings define the pool `default`"),
    parse: |raw| Ok(raw.to_owned()),
};

/// Every setting, in the README's order.
pub const ALL: &[About] = &[
    FUNCTIONS_CUSTOMHANDLER_PORT.about(),
    PORT.about(),
    BIND.about(),
    API_KEY.about(),
    LOG_FORMAT.about(),
    RUST_LOG,
    STORAGE.about(),
    AZURE_WEB_JOBS_STORAGE.about(),
    IDENTITY_STORAGE[0],
    IDENTITY_STORAGE[1],
    IDENTITY_STORAGE[2],
    IDENTITY_STORAGE[3],
    IDENTITY_STORAGE[4],
    TABLE.about(),
    COMPUTE.about(),
    SIM_CREATE_SECS.about(),
    SIM_START_SECS.about(),
    SIM_DEALLOCATE_SECS.about(),
    ARM_ENDPOINT.about(),
    ARM_TOKEN.about(),
    SUBSCRIPTION_ID.about(),
    RESOURCE_GROUP.about(),
    LOCATION.about(),
    SUBNET_ID.about(),
    SSH_PUBLIC_KEY.about(),
    IMAGE.about(),
    VM_SIZE.about(),
    ADMIN_USERNAME.about(),
    RECONCILE_SECS.about(),
    MIN_STANDBY.about(),
    MAX_VMS.about(),
    DEMAND_WINDOW_SECS.about(),
    READY_ESTIMATE_SECS.about(),
    BUFFER_COOLDOWN_SECS.about(),
    DEMAND_PERIOD_SECS.about(),
    MAX_CREATES_PER_PASS.about(),
    DRAIN_TIMEOUT_SECS.about(),
    DEALLOCATED_KEEP_SECS.about(),
    CREATE_TIMEOUT_SECS.about(),
    DEALLOCATE_TIMEOUT_SECS.about(),
    BREAKER_FAILURES.about(),
    BREAKER_COOLDOWN_SECS.about(),
    IDEMPOTENCY_TTL_SECS.about(),
    ARM_RETRY_BUDGET_SECS.about(),
    REQUEST_TIMEOUT_SECS.about(),
    MAX_CONCURRENT_REQUESTS.about(),
    ADOPT_EVERY_SECS.about(),
    VANISH_BRAKE_PERCENT.about(),
    CLAIM_TIMEOUT_SECS.about(),
    GAME_PORTS.about(),
    VM_PREFIX.about(),
    BUILD.about(),
    POOLS.about(),
];
