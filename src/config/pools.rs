//! The pools: `VMPOOL_POOLS`, a JSON object that maps a pool name to its region, size, image
//! and build label (and optionally its subnet, buffer floor, maximum and game ports), or,
//! when it is unset, the single-pool settings as the pool `default`.
//!
//! Every bad definition stops start-up with one line naming the pool and the field.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::compute::arm::settings::{self as arm_rules, Image};

use crate::compute::VmSpec;
pub use crate::domain::DEFAULT_POOL;

/// The fields a pool definition may have.
pub const FIELDS: [&str; 9] = [
    "location",
    "vmSize",
    "image",
    "build",
    "subnetId",
    "minStandby",
    "maxVms",
    "gamePorts",
    "vmPrefix",
];

/// One pool: where its VMs run, what they run, and its buffer policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// The pool's name (1-32 letters, digits or `-`).
    pub name: String,
    /// Azure region of its VMs; `None` only for the `default` pool of the simulated cloud
    /// when `VMPOOL_LOCATION` is unset.
    pub location: Option<String>,
    /// VM size.
    pub vm_size: String,
    /// The image its new VMs boot from.
    pub image: Image,
    /// The build label matchmakers ask for; the build of every VM created from `image`.
    pub build: String,
    /// Subnet for its VMs' NICs (required with ARM).
    pub subnet_id: Option<String>,
    /// Warm VMs it keeps in `Standby` at least.
    pub min_standby: u32,
    /// Most of its VMs not `Deallocated` at once.
    pub max_vms: u32,
    /// Ports its game server listens on.
    pub game_ports: Vec<u16>,
}

impl PoolSpec {
    /// What a new VM of this pool is: its pool, build, region, size, image and subnet.
    pub fn vm(&self) -> VmSpec {
        VmSpec {
            pool: self.name.clone(),
            build: self.build.clone(),
            location: self.location.clone(),
            vm_size: self.vm_size.clone(),
            image: self.image.clone(),
            subnet_id: self.subnet_id.clone(),
        }
    }
}

/// What the pools fall back to: the single-pool settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallbacks {
    /// `VMPOOL_LOCATION`, if set.
    pub location: Option<String>,
    /// `VMPOOL_VM_SIZE`.
    pub vm_size: String,
    /// `VMPOOL_IMAGE`.
    pub image: Image,
    /// `VMPOOL_BUILD`, if set.
    pub build: Option<String>,
    /// `VMPOOL_SUBNET_ID`, if set.
    pub subnet_id: Option<String>,
    /// `VMPOOL_MIN_STANDBY`.
    pub min_standby: u32,
    /// `VMPOOL_MAX_VMS`.
    pub max_vms: u32,
    /// `VMPOOL_GAME_PORTS`.
    pub game_ports: Vec<u16>,
}

/// The pools, in name order (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pools(Vec<PoolSpec>);

impl Pools {
    /// The single pool `default` that the single-pool settings define.
    pub fn single(fallbacks: &Fallbacks) -> Pools {
        Pools(vec![PoolSpec {
            name: DEFAULT_POOL.to_owned(),
            location: fallbacks.location.clone(),
            vm_size: fallbacks.vm_size.clone(),
            build: fallbacks
                .build
                .clone()
                .unwrap_or_else(|| build_of_image(&fallbacks.image)),
            image: fallbacks.image.clone(),
            subnet_id: fallbacks.subnet_id.clone(),
            min_standby: fallbacks.min_standby,
            max_vms: fallbacks.max_vms,
            game_ports: fallbacks.game_ports.clone(),
        }])
    }

    /// Pools from explicit specs (tests and tools); sorted by name.
    pub fn from_specs(mut specs: Vec<PoolSpec>) -> Pools {
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Pools(specs)
    }

    /// Every pool, in name order.
    pub fn all(&self) -> &[PoolSpec] {
        &self.0
    }

    /// The pool called `name`.
    pub fn get(&self, name: &str) -> Option<&PoolSpec> {
        self.0.iter().find(|p| p.name == name)
    }

    /// The pool CreateVM uses when the caller names none: `default`, or the only pool.
    pub fn implied(&self) -> Option<&PoolSpec> {
        self.get(DEFAULT_POOL).or(match self.0.as_slice() {
            [only] => Some(only),
            _ => None,
        })
    }

    /// The pools' names, comma-separated (for messages).
    pub fn names(&self) -> String {
        self.0
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The build of a VM that ARM reports was made from `image`: the build of the pool
    /// whose image it is (the VM's own pool first), else the version the image names.
    pub fn build_of(&self, pool: &str, image: &Image) -> String {
        self.get(pool)
            .into_iter()
            .chain(&self.0)
            .find(|p| same_image(&p.image, image))
            .map_or_else(|| build_of_image(image), |p| p.build.clone())
    }
}

/// Whether two images are the same one (ARM compares resource IDs without case).
pub fn same_image(a: &Image, b: &Image) -> bool {
    match (a, b) {
        (Image::Id(a), Image::Id(b)) => a.eq_ignore_ascii_case(b),
        (
            Image::Marketplace {
                publisher: p1,
                offer: o1,
                sku: s1,
                version: v1,
            },
            Image::Marketplace {
                publisher: p2,
                offer: o2,
                sku: s2,
                version: v2,
            },
        ) => {
            p1.eq_ignore_ascii_case(p2)
                && o1.eq_ignore_ascii_case(o2)
                && s1.eq_ignore_ascii_case(s2)
                && v1.eq_ignore_ascii_case(v2)
        }
        _ => false,
    }
}

/// The build label an image names by itself: a marketplace image's version, a gallery image
/// version's last segment, else the image resource's name.
pub fn build_of_image(image: &Image) -> String {
    image.label()
}

/// A pool name: 1-32 letters, digits or `-`.
pub fn pool_name(raw: &str) -> Result<String, String> {
    let ok =
        (1..=32).contains(&raw.len()) && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "{raw:?} is not a pool name (1-32 letters, digits or '-')"
        ))
    }
}

/// A build label: 1-64 letters, digits, `.`, `-`, `_` or `+` (`1.5.0`, `2026.12.06-rc1`).
pub fn build(raw: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "{raw:?} is not a build label (1-64 letters, digits, '.', '-', '_' or '+')"
        ))
    }
}

/// The top-level object with its keys in order and duplicates kept (a JSON object parsed
/// into a map would keep only the last of two equal names).
struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object mapping pool names to pool definitions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses `VMPOOL_POOLS`. The error is one line naming the pool and the field.
pub fn parse(raw: &str, fallbacks: &Fallbacks) -> Result<Pools, String> {
    let Entries(entries) = serde_json::from_str(raw).map_err(|e| {
        format!("is not a JSON object of pool definitions ({e}); e.g. {{\"eu\": {{\"location\": \"westeurope\", \"image\": \"...\", \"build\": \"1.5.0\"}}}}")
    })?;
    if entries.is_empty() {
        return Err("defines no pool".into());
    }
    let mut seen = HashSet::new();
    let mut specs = Vec::new();
    for (name, value) in entries {
        let shown = name.chars().take(40).collect::<String>();
        pool_name(&name).map_err(|why| format!("pool {shown:?}: {why}"))?;
        if !seen.insert(name.clone()) {
            return Err(format!("pool {name:?} is defined twice"));
        }
        let spec = one(&name, &value, fallbacks)
            .map_err(|(field, why)| format!("pool {name:?}: {field}: {why}"))?;
        specs.push(spec);
    }
    Ok(Pools::from_specs(specs))
}

type FieldError = (&'static str, String);

fn one(name: &str, value: &Value, fb: &Fallbacks) -> Result<PoolSpec, FieldError> {
    let Value::Object(fields) = value else {
        return Err(("definition", "must be a JSON object".into()));
    };
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let shown = unknown.chars().take(40).collect::<String>();
        return Err((
            "definition",
            format!(
                "unknown field {shown:?} (known: {})",
                FIELDS[..8].join(", ")
            ),
        ));
    }
    if fields.contains_key("vmPrefix") {
        return Err((
            "vmPrefix",
            "is shared by every pool; set VMPOOL_VM_PREFIX instead".into(),
        ));
    }
    let text = |field: &'static str| -> Result<Option<&str>, FieldError> {
        match fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim())),
            Some(_) => Err((field, "must be a string".into())),
        }
    };
    let count = |field: &'static str, max: u32| -> Result<Option<u32>, FieldError> {
        match fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n <= max)
                .map(Some)
                .ok_or((field, format!("must be a whole number from 0 to {max}"))),
        }
    };
    let required = |field: &'static str| -> Result<&str, FieldError> {
        text(field)?.ok_or((field, "is required".into()))
    };
    let location = arm_rules::location(required("location")?).map_err(|e| ("location", e))?;
    let image = arm_rules::image(required("image")?).map_err(|e| ("image", e))?;
    let build = build(required("build")?).map_err(|e| ("build", e))?;
    let vm_size = match text("vmSize")? {
        Some(raw) => arm_rules::vm_size(raw).map_err(|e| ("vmSize", e))?,
        None => fb.vm_size.clone(),
    };
    let subnet_id = match text("subnetId")? {
        Some(raw) => Some(arm_rules::subnet_id(raw).map_err(|e| ("subnetId", e))?),
        None => fb.subnet_id.clone(),
    };
    let min_standby = count("minStandby", 10_000)?.unwrap_or(fb.min_standby);
    let max_vms = match count("maxVms", 100_000)? {
        Some(0) => return Err(("maxVms", "must be at least 1".into())),
        Some(n) => n,
        None => fb.max_vms,
    };
    if min_standby > max_vms {
        return Err((
            "minStandby",
            format!("{min_standby} is more than maxVms ({max_vms})"),
        ));
    }
    let game_ports = match fields.get("gamePorts") {
        None | Some(Value::Null) => fb.game_ports.clone(),
        Some(Value::String(s)) => super::settings::parse_ports(s).map_err(|e| ("gamePorts", e))?,
        Some(Value::Array(items)) => items
            .iter()
            .map(|p| {
                p.as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or(("gamePorts", format!("{p} is not a port (1-65535)")))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err((
                "gamePorts",
                "must be a list of ports, as a string (\"7777,7778\") or an array".into(),
            ));
        }
    };
    Ok(PoolSpec {
        name: name.to_owned(),
        location: Some(location),
        vm_size,
        image,
        build,
        subnet_id,
        min_standby,
        max_vms,
        game_ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb() -> Fallbacks {
        Fallbacks {
            location: Some("westeurope".into()),
            vm_size: "Standard_B2s".into(),
            image: Image::parse("Canonical:ubuntu-24_04-lts:server:latest").unwrap(),
            build: None,
            subnet_id: Some(SUBNET.into()),
            min_standby: 1,
            max_vms: 20,
            game_ports: vec![7777],
        }
    }

    const SUBNET: &str = "/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/a";
    const GALLERY: &str = "/subscriptions/s/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/server/versions/1.5.0";

    #[test]
    fn two_pools_take_their_own_fields_and_fall_back_for_the_rest() {
        let raw = format!(
            r#"{{"eu": {{"location": "westeurope", "vmSize": "Standard_D2s_v5", "build": "1.5.0",
                 "image": "{GALLERY}", "minStandby": 2, "maxVms": 50, "gamePorts": "7777,7778"}},
                "us": {{"location": "eastus", "image": "Canonical:ubuntu-24_04-lts:server:1.4", "build": "1.4.0",
                 "gamePorts": [9000]}}}}"#
        );
        let pools = parse(&raw, &fb()).unwrap();
        let names: Vec<&str> = pools.all().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["eu", "us"]);
        let eu = pools.get("eu").unwrap();
        assert_eq!(eu.location.as_deref(), Some("westeurope"));
        assert_eq!(eu.vm_size, "Standard_D2s_v5");
        assert_eq!(eu.image, Image::Id(GALLERY.into()));
        assert_eq!((eu.min_standby, eu.max_vms), (2, 50));
        assert_eq!(eu.game_ports, [7777, 7778]);
        assert_eq!(eu.subnet_id.as_deref(), Some(SUBNET), "falls back");
        let us = pools.get("us").unwrap();
        assert_eq!(
            (us.vm_size.as_str(), us.min_standby, us.max_vms),
            ("Standard_B2s", 1, 20)
        );
        assert_eq!(us.game_ports, [9000]);
        assert_eq!(us.build, "1.4.0");
        // Two pools, neither called default: CreateVM must name one.
        assert!(pools.implied().is_none());
        assert_eq!(pools.names(), "eu, us");
    }

    #[test]
    fn unset_the_single_pool_settings_are_the_pool_default() {
        let pools = Pools::single(&fb());
        let only = pools.implied().unwrap();
        assert_eq!(only.name, "default");
        assert_eq!(only.build, "latest", "the image's version labels it");
        assert_eq!((only.min_standby, only.max_vms), (1, 20));
        let mut with_build = fb();
        with_build.build = Some("1.0.0".into());
        assert_eq!(Pools::single(&with_build).all()[0].build, "1.0.0");
        // One pool of another name is implied too.
        let one = parse(
            r#"{"eu": {"location": "westeurope", "image": "a:b:c:1", "build": "1"}}"#,
            &fb(),
        )
        .unwrap();
        assert_eq!(one.implied().unwrap().name, "eu");
    }

    #[test]
    fn each_bad_definition_names_its_pool_and_field_on_one_line() {
        let ok = r#""location": "westeurope", "image": "a:b:c:1", "build": "1""#;
        let cases: Vec<(String, &str)> = vec![
            ("[]".into(), "JSON object"),
            ("{}".into(), "defines no pool"),
            ("{\"eu\": {".into(), "JSON object"),
            (
                format!(r#"{{"eu": {{{ok}, "size": "x"}}}}"#),
                r#"pool "eu": definition: unknown field "size""#,
            ),
            (
                format!(r#"{{"eu": {{{ok}}}, "eu": {{{ok}}}}}"#),
                r#"pool "eu" is defined twice"#,
            ),
            (
                format!(r#"{{"e u": {{{ok}}}}}"#),
                r#"pool "e u": "e u" is not a pool name"#,
            ),
            (
                format!(r#"{{"": {{{ok}}}}}"#),
                r#"pool "": "" is not a pool name"#,
            ),
            (
                format!(r#"{{"{}": {{{ok}}}}}"#, "a".repeat(33)),
                "is not a pool name",
            ),
            (
                format!(r#"{{"eu": {{{ok}, "minStandby": 5, "maxVms": 4}}}}"#),
                r#"pool "eu": minStandby: 5 is more than maxVms (4)"#,
            ),
            (
                r#"{"eu": {"location": "westeurope", "image": "ubuntu", "build": "1"}}"#.into(),
                r#"pool "eu": image:"#,
            ),
            (
                r#"{"eu": {"location": "westeurope", "image": "/not/an/image", "build": "1"}}"#
                    .into(),
                r#"pool "eu": image:"#,
            ),
            (
                r#"{"eu": {"location": "westeurope", "build": "1"}}"#.into(),
                r#"pool "eu": image: is required"#,
            ),
            (
                r#"{"eu": {"image": "a:b:c:1", "build": "1"}}"#.into(),
                r#"pool "eu": location: is required"#,
            ),
            (
                r#"{"eu": {"location": "westeurope", "image": "a:b:c:1"}}"#.into(),
                r#"pool "eu": build: is required"#,
            ),
            (
                r#"{"eu": {"location": "west europe", "image": "a:b:c:1", "build": "1"}}"#.into(),
                r#"pool "eu": location:"#,
            ),
            (
                format!(r#"{{"eu": {{{ok}, "build": "1 2"}}}}"#),
                r#"pool "eu": build:"#,
            ),
            (
                format!(r#"{{"eu": {{{ok}, "maxVms": -1}}}}"#),
                r#"pool "eu": maxVms:"#,
            ),
            (
                format!(r#"{{"eu": {{{ok}, "maxVms": 0}}}}"#),
                r#"pool "eu": maxVms:"#,
            ),
            (
                format!(r#"{{"eu": {{{ok}, "minStandby": "2"}}}}"#),
                r#"pool "eu": minStandby:"#,
            ),
            (
                format!(r#"{{"eu": {{{ok}, "gamePorts": "7777,x"}}}}"#),
                r#"pool "eu": gamePorts:"#,
            ),
            (
                format!(r#"{{"eu": {{{ok}, "gamePorts": [0]}}}}"#),
                r#"pool "eu": gamePorts:"#,
            ),
            (
                format!(r#"{{"eu": {{{ok}, "vmSize": "Standard B2s"}}}}"#),
                r#"pool "eu": vmSize:"#,
            ),
            (
                format!(r#"{{"eu": {{{ok}, "subnetId": "subnet-1"}}}}"#),
                r#"pool "eu": subnetId:"#,
            ),
            (
                format!(r#"{{"eu": {{{ok}, "vmPrefix": "x"}}}}"#),
                r#"pool "eu": vmPrefix:"#,
            ),
            (
                r#"{"eu": "westeurope"}"#.into(),
                r#"pool "eu": definition: must be a JSON object"#,
            ),
        ];
        for (raw, expected) in cases {
            let err = parse(&raw, &fb()).unwrap_err();
            assert!(err.contains(expected), "{raw}: {err}");
            assert!(!err.contains('\n'), "{raw}: {err}");
        }
    }

    #[test]
    fn a_vm_s_build_follows_the_image_arm_reports() {
        let pools = parse(
            &format!(
                r#"{{"eu": {{"location": "westeurope", "image": "{GALLERY}", "build": "1.5.0-eu"}},
                    "us": {{"location": "eastus", "image": "a:b:c:7", "build": "seven"}}}}"#
            ),
            &fb(),
        )
        .unwrap();
        let gallery_upper = Image::Id(GALLERY.to_uppercase());
        assert_eq!(pools.build_of("eu", &gallery_upper), "1.5.0-eu");
        assert_eq!(
            pools.build_of("default", &Image::parse("A:B:C:7").unwrap()),
            "seven"
        );
        // An image no pool uses any more: the version it names.
        let old = Image::Id(GALLERY.replace("1.5.0", "1.4.2"));
        assert_eq!(pools.build_of("eu", &old), "1.4.2");
        assert_eq!(
            pools.build_of("eu", &Image::parse("a:b:c:latest").unwrap()),
            "latest"
        );
    }
}
