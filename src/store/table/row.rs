//! The row format: every property of a VM row described once ([`PROPERTIES`]: name, type,
//! whether it is required, and how it is taken from a [`VmRecord`]), and the writer, the
//! query's `$select` and decoder, and the reader all driven by that table.
//!
//! To add a property: add a [`Property`] constant, list it in [`PROPERTIES`], and read it in
//! [`parse_row`]. The round-trip test fails until all three agree.

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::{Operation, Purpose, ReportOrder, VmId, VmRecord, VmState};
use crate::store::{StoreError, check_record_key, check_record_value, tick};

/// A property's type in the table (its `@odata.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Edm {
    /// `Edm.String` (JSON's default; no annotation).
    String,
    /// A count: `Edm.Int32` when it fits, else `Edm.Int64`.
    Int,
    /// `Edm.DateTime`, 100 ns ticks.
    DateTime,
}

/// A property's value in one row, as the writer takes it from a [`VmRecord`].
pub(crate) enum Cell<'a> {
    /// Text.
    Text(&'a str),
    /// Text made from the record.
    Owned(String),
    /// A count.
    Int(u32),
    /// A time.
    Time(OffsetDateTime),
    /// Not set (only for optional properties).
    Absent,
}

/// One property of a VM row.
pub(crate) struct Property {
    /// Its name in the table.
    pub name: &'static str,
    /// Its type.
    pub edm: Edm,
    /// Whether every VM row has it.
    pub required: bool,
    /// Its value in a record.
    get: fn(&VmRecord) -> Cell<'_>,
}

const fn prop(
    name: &'static str,
    edm: Edm,
    required: bool,
    get: fn(&VmRecord) -> Cell<'_>,
) -> Property {
    Property {
        name,
        edm,
        required,
        get,
    }
}

fn text_or_absent(s: Option<&str>) -> Cell<'_> {
    s.map_or(Cell::Absent, Cell::Text)
}

fn time_or_absent<'a>(t: Option<OffsetDateTime>) -> Cell<'a> {
    t.map_or(Cell::Absent, Cell::Time)
}

/// The partition key: the vmId.
pub(crate) const PARTITION_KEY: Property = prop("PartitionKey", Edm::String, true, |vm| {
    Cell::Text(vm.id.as_str())
});
/// The row key: the vmId again.
pub(crate) const ROW_KEY: Property =
    prop("RowKey", Edm::String, true, |vm| Cell::Text(vm.id.as_str()));
/// The state (the name is fixed by the table schema).
pub(crate) const STATE: Property = prop("VM_State", Edm::String, true, |vm| {
    Cell::Text(vm.state.as_str())
});
/// Why the VM exists.
pub(crate) const PURPOSE: Property = prop("Purpose", Edm::String, true, |vm| {
    Cell::Text(vm.purpose.as_str())
});
/// The ARM operation in flight.
pub(crate) const OPERATION: Property = prop("Operation", Edm::String, false, |vm| {
    text_or_absent(vm.operation.map(Operation::as_str))
});
/// The ARM resource ID.
pub(crate) const RESOURCE_ID: Property = prop("ResourceId", Edm::String, true, |vm| {
    Cell::Text(&vm.resource_id)
});
/// The public IP, once known.
pub(crate) const PUBLIC_IP: Property = prop("PublicIp", Edm::String, false, |vm| {
    text_or_absent(vm.public_ip.as_deref())
});
/// Game rooms last reported.
pub(crate) const ROOMS: Property = prop("Rooms", Edm::Int, true, |vm| Cell::Int(vm.rooms));
/// When rooms were last reported.
pub(crate) const LAST_REPORT_AT: Property = prop("LastReportAt", Edm::DateTime, false, |vm| {
    time_or_absent(vm.last_report_at)
});
/// When the state last changed.
pub(crate) const STATE_CHANGED_AT: Property = prop("StateChangedAt", Edm::DateTime, true, |vm| {
    Cell::Time(vm.state_changed_at)
});
/// When the operation in flight was first issued (re-issues keep it).
pub(crate) const OPERATION_SINCE: Property = prop("OperationSince", Edm::DateTime, false, |vm| {
    time_or_absent(vm.operation_since)
});
/// When the row was created.
pub(crate) const CREATED_AT: Property = prop("CreatedAt", Edm::DateTime, true, |vm| {
    Cell::Time(vm.created_at)
});
/// When the matchmaker last claimed the VM.
pub(crate) const CLAIMED_AT: Property = prop("ClaimedAt", Edm::DateTime, false, |vm| {
    time_or_absent(vm.claimed_at)
});
/// ARM attempts for the operation in flight.
pub(crate) const ATTEMPTS: Property = prop("Attempts", Edm::Int, true, |vm| Cell::Int(vm.attempts));
/// The last error ARM reported.
pub(crate) const LAST_ERROR: Property = prop("LastError", Edm::String, false, |vm| {
    text_or_absent(vm.last_error.as_deref())
});

/// The pool the VM belongs to; rows written before pools existed have none and belong to
/// `default`.
pub(crate) const POOL: Property = prop("Pool", Edm::String, false, |vm| Cell::Text(&vm.pool));
/// The build the VM runs; absent while unknown.
pub(crate) const BUILD: Property = prop("Build", Edm::String, false, |vm| {
    text_or_absent(vm.build.as_deref())
});

/// The ordering field of the last rooms report applied (`seq:<n>` or `at:<RFC 3339>`).
pub(crate) const REPORT_ORDER: Property = prop("LastReportOrder", Edm::String, false, |vm| {
    vm.report_order
        .map_or(Cell::Absent, |o| Cell::Owned(o.to_text()))
});
/// Why vmpool stopped calling ARM for the VM (an operator must look at it).
pub(crate) const ATTENTION: Property = prop("NeedsAttention", Edm::String, false, |vm| {
    text_or_absent(vm.attention.as_deref())
});

/// Why a running VM is unhealthy (its provisioning failed while it runs).
pub(crate) const UNHEALTHY: Property = prop("Unhealthy", Edm::String, false, |vm| {
    text_or_absent(vm.unhealthy.as_deref())
});

/// Every property of a VM row, in the order the schema lists them.
pub(crate) const PROPERTIES: [&Property; 20] = [
    &PARTITION_KEY,
    &ROW_KEY,
    &STATE,
    &PURPOSE,
    &OPERATION,
    &RESOURCE_ID,
    &PUBLIC_IP,
    &ROOMS,
    &LAST_REPORT_AT,
    &STATE_CHANGED_AT,
    &OPERATION_SINCE,
    &CREATED_AT,
    &CLAIMED_AT,
    &ATTEMPTS,
    &LAST_ERROR,
    &POOL,
    &BUILD,
    &REPORT_ORDER,
    &ATTENTION,
    &UNHEALTHY,
];

/// The annotation that carries a row's ETag in a query answer.
const ETAG_ANNOTATION: &str = "odata.etag";

/// `$select` for a query: every property of [`PROPERTIES`] and nothing else.
pub(crate) fn select() -> String {
    PROPERTIES
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(",")
}

/// `VM_State eq 'A' or VM_State eq 'B'`, from the fixed state names only.
pub(crate) fn state_filter(states: &[VmState]) -> String {
    states
        .iter()
        .map(|s| format!("{} eq '{}'", STATE.name, s.as_str()))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The row for `vm` (already normalised), in the schema of `docs/storage.md`.
pub(crate) fn to_entity(vm: &VmRecord) -> Result<Map<String, Value>, StoreError> {
    let mut m = Map::new();
    for p in PROPERTIES {
        match (p.edm, (p.get)(vm)) {
            (Edm::String, Cell::Text(s)) => {
                m.insert(p.name.into(), s.into());
            }
            (Edm::String, Cell::Owned(s)) => {
                m.insert(p.name.into(), s.into());
            }
            (Edm::Int, Cell::Int(n)) => put_int(&mut m, p.name, n),
            (Edm::DateTime, Cell::Time(t)) => {
                m.insert(p.name.into(), format_time(t)?.into());
                m.insert(format!("{}@odata.type", p.name), "Edm.DateTime".into());
            }
            (_, Cell::Absent) if !p.required => {}
            _ => {
                return Err(StoreError::Rejected(format!(
                    "property {} does not hold a value of its type",
                    p.name
                )));
            }
        }
    }
    Ok(m)
}

/// An `Edm.Int32` when it fits, else an `Edm.Int64` (which JSON carries as a string).
fn put_int(m: &mut Map<String, Value>, name: &str, n: u32) {
    if i32::try_from(n).is_ok() {
        m.insert(name.into(), n.into());
    } else {
        m.insert(name.into(), n.to_string().into());
        m.insert(format!("{name}@odata.type"), "Edm.Int64".into());
    }
}

/// An `Edm.DateTime` with 7 fractional digits (the service keeps 100 ns ticks).
fn format_time(t: OffsetDateTime) -> Result<String, StoreError> {
    let t = tick(t)?;
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    ))
}

/// Where a row's properties are read from: a whole JSON map (a point read), or the
/// [`RowFields`] a query decodes.
pub(crate) trait Props {
    /// The property `name`, if present.
    fn prop(&self, name: &str) -> Option<&Value>;
}

impl Props for Map<String, Value> {
    fn prop(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// The properties of a VM row (those of [`PROPERTIES`]) and its ETag, nothing else, so a
/// query does not build a map of every property and annotation it returns. Each is a JSON
/// value, so a row with a wrong type still decodes and is then refused by [`parse_row`]
/// alone (not the whole page).
#[derive(Debug, Default)]
pub(crate) struct RowFields {
    values: [Option<Value>; PROPERTIES.len()],
    etag: Option<Value>,
    row_etag: Option<Value>,
}

/// The property of an index entry that holds the ETag of the row it copies.
pub(crate) const ROW_ETAG: &str = "RowEtag";

impl RowFields {
    /// The ETag of what was read, if the answer carried one.
    pub(crate) fn etag(&self) -> Option<&str> {
        self.etag.as_ref().and_then(Value::as_str)
    }

    /// For an index entry: the ETag of the row it copies.
    pub(crate) fn row_etag(&self) -> Option<&str> {
        self.row_etag.as_ref().and_then(Value::as_str)
    }
}

impl Props for RowFields {
    fn prop(&self, name: &str) -> Option<&Value> {
        if name == ETAG_ANNOTATION {
            return self.etag.as_ref();
        }
        let at = PROPERTIES.iter().position(|p| p.name == name)?;
        self.values[at].as_ref()
    }
}

impl<'de> serde::Deserialize<'de> for RowFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = RowFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table entity")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RowFields, A::Error> {
                let mut row = RowFields::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == ETAG_ANNOTATION {
                        row.etag = Some(map.next_value()?);
                    } else if key == ROW_ETAG {
                        row.row_etag = Some(map.next_value()?);
                    } else if let Some(at) = PROPERTIES.iter().position(|p| p.name == key) {
                        row.values[at] = Some(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(row)
            }
        }
        d.deserialize_map(Fields)
    }
}

/// The state of a row, if it has a known one.
pub(crate) fn state_of(m: &impl Props) -> Option<VmState> {
    STATE.opt_text(m).ok().flatten().and_then(VmState::parse)
}

/// The state and the pool and build of a row, if it has a known state (rows written before
/// pools belong to `default`, with an unknown build).
pub(crate) fn group_of(m: &impl Props) -> Option<(VmState, crate::store::Group)> {
    let state = state_of(m)?;
    let pool = POOL
        .opt_text(m)
        .ok()
        .flatten()
        .unwrap_or(crate::domain::DEFAULT_POOL)
        .to_owned();
    let build = BUILD.opt_text(m).ok().flatten().map(str::to_owned);
    Some((state, crate::store::Group { pool, build }))
}

/// Reads a row as a VM; the error says which property is missing or wrong.
pub(crate) fn parse_row(m: &impl Props) -> Result<VmRecord, String> {
    let row_key = ROW_KEY.text(m)?;
    let id = VmId::parse(row_key).map_err(|e| format!("{}: {e}", ROW_KEY.name))?;
    if PARTITION_KEY.text(m)? != row_key {
        return Err("PartitionKey differs from RowKey".into());
    }
    let state = STATE.text(m)?;
    let state =
        VmState::parse(state).ok_or_else(|| format!("{}: unknown state {state:?}", STATE.name))?;
    let purpose = PURPOSE.text(m)?;
    let purpose = Purpose::parse(purpose)
        .ok_or_else(|| format!("{}: unknown purpose {purpose:?}", PURPOSE.name))?;
    let operation = match OPERATION.opt_text(m)? {
        None => None,
        Some(op) => Some(
            Operation::parse(op).ok_or_else(|| format!("{}: unknown {op:?}", OPERATION.name))?,
        ),
    };
    Ok(VmRecord {
        id,
        state,
        purpose,
        operation,
        resource_id: RESOURCE_ID.text(m)?.to_owned(),
        public_ip: PUBLIC_IP.opt_text(m)?.map(str::to_owned),
        rooms: ROOMS.int(m)?,
        last_report_at: LAST_REPORT_AT.opt_time(m)?,
        state_changed_at: STATE_CHANGED_AT.time(m)?,
        operation_since: OPERATION_SINCE.opt_time(m)?,
        created_at: CREATED_AT.time(m)?,
        claimed_at: CLAIMED_AT.opt_time(m)?,
        attempts: ATTEMPTS.int(m)?,
        last_error: LAST_ERROR.opt_text(m)?.map(str::to_owned),
        pool: POOL
            .opt_text(m)?
            .unwrap_or(crate::domain::DEFAULT_POOL)
            .to_owned(),
        build: BUILD.opt_text(m)?.map(str::to_owned),
        report_order: match REPORT_ORDER.opt_text(m)? {
            None => None,
            Some(raw) => Some(
                ReportOrder::parse_text(raw)
                    .ok_or_else(|| format!("{}: unreadable {raw:?}", REPORT_ORDER.name))?,
            ),
        },
        attention: ATTENTION.opt_text(m)?.map(str::to_owned),
        unhealthy: UNHEALTHY.opt_text(m)?.map(str::to_owned),
    })
}

impl Property {
    fn missing(&self) -> String {
        format!("{}: missing", self.name)
    }

    fn text<'a>(&self, m: &'a impl Props) -> Result<&'a str, String> {
        self.opt_text(m)?.ok_or_else(|| self.missing())
    }

    fn opt_text<'a>(&self, m: &'a impl Props) -> Result<Option<&'a str>, String> {
        opt_text(m, self.name)
    }

    fn int(&self, m: &impl Props) -> Result<u32, String> {
        let bad = || {
            format!(
                "{}: expected a whole number from 0 to {}",
                self.name,
                u32::MAX
            )
        };
        match m.prop(self.name) {
            None | Some(Value::Null) => Err(self.missing()),
            Some(Value::Number(n)) => {
                let n = n
                    .as_u64()
                    .or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX))
                            .map(|f| f as u64)
                    })
                    .ok_or_else(bad)?;
                u32::try_from(n).map_err(|_| bad())
            }
            Some(Value::String(s)) => s.parse::<u32>().map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    fn time(&self, m: &impl Props) -> Result<OffsetDateTime, String> {
        self.opt_time(m)?.ok_or_else(|| self.missing())
    }

    fn opt_time(&self, m: &impl Props) -> Result<Option<OffsetDateTime>, String> {
        match self.opt_text(m)? {
            None => Ok(None),
            Some(s) => OffsetDateTime::parse(s, &Rfc3339)
                .map(Some)
                .map_err(|_| format!("{}: {s:?} is not a date and time", self.name)),
        }
    }
}

/// The text property `name`, if present.
pub(crate) fn opt_text<'a>(m: &'a impl Props, name: &str) -> Result<Option<&'a str>, String> {
    match m.prop(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{name}: expected a string, found {other}")),
    }
}

/// The property that holds a record's value.
pub(crate) const RECORD_VALUE: &str = "Value";

/// Checks a record's kind and key.
pub(crate) fn check_keys(kind: &str, key: &str) -> Result<(), StoreError> {
    check_record_key("kind", kind)?;
    check_record_key("key", key)
}

/// `$select` for a listing of records: the key, the value, nothing else (the ETag comes
/// with every entity).
pub(crate) const RECORD_SELECT: &str = "RowKey,Value";

/// `PartitionKey eq '<kind>'`, the kind quoted as OData quotes a string (a `'` doubled), as
/// "Querying tables and entities" (Constructing filter strings) in the Table service REST
/// reference says and as the .NET Tables SDK's `TableOdataFilter` does.
pub(crate) fn kind_filter(kind: &str) -> String {
    format!("{} eq '{}'", PARTITION_KEY.name, kind.replace('\'', "''"))
}

/// A record as a listing returns it: its key, its value and its ETag. The value is read as
/// any JSON, so one entity written by something else does not fail the whole page.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct RecordFields {
    /// The record's key.
    #[serde(rename = "RowKey")]
    pub(crate) key: String,
    /// The record's value (a string, unless something else wrote it).
    #[serde(rename = "Value", default)]
    pub(crate) value: Value,
    /// The record's version.
    #[serde(rename = "odata.etag", default)]
    pub(crate) etag: Option<String>,
}

/// A record as a meta-table entity: its kind is the partition, its key the row.
pub(crate) fn record_entity(kind: &str, key: &str, value: &str) -> Result<Value, StoreError> {
    check_keys(kind, key)?;
    check_record_value(value)?;
    let mut m = Map::new();
    m.insert(PARTITION_KEY.name.into(), kind.into());
    m.insert(ROW_KEY.name.into(), key.into());
    m.insert(RECORD_VALUE.into(), value.into());
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MAX_RECORD_CHARS, normalize};

    fn vm() -> VmRecord {
        let mut vm = VmRecord::new_creating(
            VmId::parse("vm-1").unwrap(),
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm-1"
                .into(),
            Purpose::Buffer,
            time::macros::datetime!(2026-01-02 03:04:05.123456789 UTC),
        );
        vm.public_ip = Some("203.0.113.4".into());
        vm.last_error = Some("it's \"quoted\"".into());
        vm
    }

    /// A record with every optional property set, so every property is written.
    fn full() -> VmRecord {
        let mut vm = normalize(&vm()).unwrap();
        let t = time::macros::datetime!(2026-01-02 03:04:06.5 UTC);
        vm.operation = Some(Operation::Create);
        vm.last_report_at = Some(t);
        vm.claimed_at = Some(t);
        vm.pool = "eu".into();
        vm.build = Some("1.5.0".into());
        vm.report_order = Some(ReportOrder::At(t));
        vm.attention = Some("the delete did not take after 3 attempts".into());
        vm.unhealthy = Some("provisioning failed while running: E".into());
        vm
    }

    #[test]
    fn rows_written_before_pools_belong_to_default_with_an_unknown_build() {
        let mut m = to_entity(&full()).unwrap();
        m.remove(POOL.name);
        m.remove(BUILD.name);
        let vm = parse_row(&m).unwrap();
        assert_eq!((vm.pool.as_str(), vm.build), ("default", None));
        let written = to_entity(&full()).unwrap();
        assert_eq!(
            (&written["Pool"], &written["Build"]),
            (&Value::from("eu"), &Value::from("1.5.0"))
        );
    }

    #[test]
    fn rows_round_trip_through_the_schema() {
        let vm = normalize(&vm()).unwrap();
        let entity = Value::Object(to_entity(&vm).unwrap());
        assert_eq!(entity["VM_State"], "Creating");
        assert_eq!(entity["CreatedAt"], "2026-01-02T03:04:05.1234567Z");
        assert_eq!(entity["CreatedAt@odata.type"], "Edm.DateTime");
        assert!(entity.get("ClaimedAt").is_none());
        let fields: RowFields = serde_json::from_value(entity.clone()).unwrap();
        assert_eq!(parse_row(&fields).unwrap(), vm, "as a query decodes it");
        let Value::Object(m) = entity else {
            panic!("not an object")
        };
        assert_eq!(parse_row(&m).unwrap(), vm, "as a point read decodes it");
    }

    #[test]
    fn writer_select_and_reader_name_the_same_properties() {
        let vm = full();
        let m = to_entity(&vm).unwrap();
        let written: Vec<&str> = m
            .keys()
            .map(String::as_str)
            .filter(|k| !k.contains('@'))
            .collect();
        let described: Vec<&str> = PROPERTIES.iter().map(|p| p.name).collect();
        assert_eq!(
            written
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            described.iter().copied().collect(),
            "the writer writes every described property and no other"
        );
        assert_eq!(select().split(',').collect::<Vec<_>>(), described);
        for p in PROPERTIES {
            let typed = m.get(&format!("{}@odata.type", p.name));
            match p.edm {
                Edm::String => assert!(m[p.name].is_string() && typed.is_none(), "{}", p.name),
                Edm::Int => assert!(m[p.name].is_number(), "{}", p.name),
                Edm::DateTime => assert_eq!(typed.unwrap(), "Edm.DateTime", "{}", p.name),
            }
            if p.required {
                continue;
            }
            // Every optional property is read back: dropping it changes the record.
            let mut less = m.clone();
            less.remove(p.name);
            assert_ne!(parse_row(&less).unwrap(), vm, "{} is not read", p.name);
        }
        let fields: RowFields = serde_json::from_value(Value::Object(m.clone())).unwrap();
        assert_eq!(parse_row(&fields).unwrap(), vm);
        assert_eq!(parse_row(&m).unwrap(), vm);
    }

    #[test]
    fn large_counts_go_as_int64() {
        let mut big = normalize(&vm()).unwrap();
        big.rooms = u32::MAX;
        let m = to_entity(&big).unwrap();
        assert_eq!(m["Rooms"], u32::MAX.to_string());
        assert_eq!(m["Rooms@odata.type"], "Edm.Int64");
        assert_eq!(parse_row(&m).unwrap().rooms, u32::MAX);
    }

    #[test]
    fn foreign_rows_are_named_not_panicked_on() {
        let good = to_entity(&normalize(&vm()).unwrap()).unwrap();
        let cases: [(&str, Value); 6] = [
            ("VM_State", "running".into()),
            ("RowKey", "a/b".into()),
            ("Rooms", (-1).into()),
            ("Rooms", 1.5.into()),
            ("CreatedAt", "yesterday".into()),
            ("Purpose", 3.into()),
        ];
        for (name, value) in cases {
            let mut m = good.clone();
            m.insert(name.into(), value);
            let err = parse_row(&m).unwrap_err();
            assert!(
                err.contains(name) || err.contains("PartitionKey"),
                "{name}: {err}"
            );
            let fields: RowFields = serde_json::from_value(Value::Object(m)).unwrap();
            assert_eq!(
                parse_row(&fields).unwrap_err(),
                err,
                "a query decodes it too"
            );
        }
        let mut m = good.clone();
        m.remove("StateChangedAt");
        assert!(parse_row(&m).unwrap_err().contains("StateChangedAt"));
    }

    #[test]
    fn filters_name_states_only() {
        assert_eq!(
            state_filter(&[VmState::MarkedForDeallocation, VmState::Standby]),
            "VM_State eq 'MarkedForDeallocation' or VM_State eq 'Standby'"
        );
    }

    #[test]
    fn records_are_meta_rows_keyed_by_kind_and_key() {
        let Value::Object(m) = record_entity("lease", "reconcile", "{}").unwrap() else {
            panic!("not an object")
        };
        assert_eq!(m["PartitionKey"], "lease");
        assert_eq!(m["RowKey"], "reconcile");
        assert_eq!(m[RECORD_VALUE], "{}");
        assert!(record_entity("a/b", "k", "").is_err());
        assert!(record_entity("k", "", "").is_err());
        assert!(record_entity("k", "k", &"x".repeat(MAX_RECORD_CHARS + 1)).is_err());
    }
}
