//! The pool's rules: VM names, the seven states, the VM record and every transition, as
//! plain functions with no I/O. The HTTP layer, the store and the reconciler call these; a
//! transition that the rules refuse comes back as [`Refused`], never as a panic.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The pool that the single-pool settings define, and that rows written before pools existed
/// belong to.
pub const DEFAULT_POOL: &str = "default";

/// A VM name, which is also the table key. Azure VM naming rules: 1-64 ASCII letters, digits,
/// `-`, `_` and `.`, not ending in `.`. So it never holds `/`, `'` or anything a table
/// filter or a URL path would need escaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct VmId(String);

/// Why a string is not a valid [`VmId`]; the text tells the caller what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidVmId(String);

impl VmId {
    /// The longest VM name Azure accepts.
    pub const MAX_LEN: usize = 64;

    /// Checks `raw` against the Azure VM naming rules.
    pub fn parse(raw: &str) -> Result<Self, InvalidVmId> {
        if raw.is_empty() {
            return Err(InvalidVmId("vmId must not be empty".into()));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(InvalidVmId(format!(
                "vmId is {} characters long; at most {} are allowed",
                raw.len(),
                Self::MAX_LEN
            )));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(InvalidVmId(format!(
                "vmId contains {bad:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
            )));
        }
        if raw.ends_with('.') {
            return Err(InvalidVmId("vmId must not end with '.'".into()));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VmId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        VmId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The state of a VM, stored in `VM_State` by exactly these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VmState {
    /// An ARM create or start was accepted (or is about to be issued); not usable yet.
    Creating,
    /// Usable by the matchmaker, which asked for it.
    Running,
    /// The matchmaker no longer needs it; its rooms drain.
    MarkedForDeallocation,
    /// An ARM deallocate is in flight (for a VM of a pool's previous build, an ARM delete:
    /// operation `Delete`); nobody may take it.
    Deallocating,
    /// Stopped in Azure (no compute billing); can be started again.
    Deallocated,
    /// Warm buffer: running in Azure but not yet handed to the matchmaker.
    Standby,
    /// An ARM operation failed or timed out; the error is recorded.
    Failed,
}

impl VmState {
    /// Every state, in the README's order.
    pub const ALL: [VmState; 7] = [
        VmState::Creating,
        VmState::Running,
        VmState::MarkedForDeallocation,
        VmState::Deallocating,
        VmState::Deallocated,
        VmState::Standby,
        VmState::Failed,
    ];

    /// The name stored in `VM_State`.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "Creating",
            VmState::Running => "Running",
            VmState::MarkedForDeallocation => "MarkedForDeallocation",
            VmState::Deallocating => "Deallocating",
            VmState::Deallocated => "Deallocated",
            VmState::Standby => "Standby",
            VmState::Failed => "Failed",
        }
    }

    /// Parses a stored state name.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether a VM in this state counts against `VMPOOL_MAX_VMS` (it may cost money).
    /// `Failed` VMs count until they are cleaned up: they may still exist in Azure.
    pub fn counts_against_max(self) -> bool {
        self != VmState::Deallocated
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a VM is being made ready for while it is `Creating`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Purpose {
    /// The matchmaker asked for it: it becomes `Running`.
    Matchmaker,
    /// The warm buffer: it becomes `Standby`.
    Buffer,
}

impl Purpose {
    /// The name stored in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Matchmaker => "Matchmaker",
            Purpose::Buffer => "Buffer",
        }
    }

    /// Parses a stored purpose name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "Matchmaker" => Some(Purpose::Matchmaker),
            "Buffer" => Some(Purpose::Buffer),
            _ => None,
        }
    }
}

/// The ARM operation a row's state asked for, so the reconciler knows what to confirm or
/// re-issue after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// PUT of a new VM.
    Create,
    /// POST start of a deallocated VM.
    Start,
    /// POST deallocate.
    Deallocate,
    /// DELETE of a failed VM, or of an idle or drained VM of a pool's previous build.
    Delete,
}

impl Operation {
    /// The name stored in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "Create",
            Operation::Start => "Start",
            Operation::Deallocate => "Deallocate",
            Operation::Delete => "Delete",
        }
    }

    /// Parses a stored operation name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "Create" => Some(Operation::Create),
            "Start" => Some(Operation::Start),
            "Deallocate" => Some(Operation::Deallocate),
            "Delete" => Some(Operation::Delete),
            _ => None,
        }
    }
}

/// Everything vmpool remembers about one VM: one table row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    /// The VM name and table key.
    pub id: VmId,
    /// The one state the VM is in.
    pub state: VmState,
    /// Who a `Creating` VM is for; kept afterwards as a record of how it was made ready.
    pub purpose: Purpose,
    /// The ARM operation the current state waits for, if any.
    pub operation: Option<Operation>,
    /// Full ARM resource ID of the VM.
    pub resource_id: String,
    /// Public IP address, once ARM reports one.
    pub public_ip: Option<String>,
    /// Game rooms the VM hosts, as last reported.
    pub rooms: u32,
    /// When rooms were last reported.
    pub last_report_at: Option<OffsetDateTime>,
    /// When the state last changed, or the current operation was last issued again.
    pub state_changed_at: OffsetDateTime,
    /// When the current operation was first issued: its timeout and attempts count from
    /// here, however often it is issued again. `None` with no operation (and on rows written
    /// before this was kept, which count from `state_changed_at`).
    pub operation_since: Option<OffsetDateTime>,
    /// When the row was first written.
    pub created_at: OffsetDateTime,
    /// When the VM was last handed to the matchmaker (feeds the demand estimate).
    pub claimed_at: Option<OffsetDateTime>,
    /// How many times the current operation was issued.
    pub attempts: u32,
    /// The last ARM error, kept for `Failed` VMs and as history.
    pub last_error: Option<String>,
    /// The pool the VM belongs to (rows written before pools existed belong to `default`).
    pub pool: String,
    /// The build the VM runs: the build label of the image it was created from. `None` until
    /// known (rows written before builds were kept, until ARM's image for the VM is read);
    /// a VM of unknown build is never handed out.
    pub build: Option<String>,
    /// Why the VM is unhealthy, if it is: running, but ARM's provisioning state says the
    /// last operation on its model failed (a VM extension, for one). It may host games, so
    /// it is neither deleted nor deallocated, and CreateVM never hands it out.
    pub unhealthy: Option<String>,
    /// The ordering field of the last rooms report applied (the game server's report time
    /// or sequence number), if it carried one: an older report changes nothing. Cleared when
    /// the VM is started or created again (its game server starts afresh).
    pub report_order: Option<ReportOrder>,
    /// Why vmpool stopped calling ARM for this VM (its operation ran out of attempts): an
    /// operator must look at it. Cleared when ARM shows the operation done.
    pub attention: Option<String>,
}

/// Where a rooms report stands among the reports of its VM: the game server's report time, or
/// a sequence number it increases with each report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOrder {
    /// The game server's report time (RFC 3339 on the wire).
    At(OffsetDateTime),
    /// A per-VM sequence number.
    Seq(u64),
}

impl ReportOrder {
    /// Whether this report is older than `last`, the last applied one. Orders of different
    /// kinds cannot be compared: the newer kind wins, so a game server may switch kinds.
    pub fn is_older_than(&self, last: &ReportOrder) -> bool {
        match (self, last) {
            (ReportOrder::At(a), ReportOrder::At(b)) => a < b,
            (ReportOrder::Seq(a), ReportOrder::Seq(b)) => a < b,
            _ => false,
        }
    }

    /// The text the table keeps: `seq:<n>` or `at:<RFC 3339>`.
    pub fn to_text(&self) -> String {
        match self {
            ReportOrder::Seq(n) => format!("seq:{n}"),
            ReportOrder::At(t) => format!(
                "at:{}",
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            ),
        }
    }

    /// Reads [`ReportOrder::to_text`]'s text.
    pub fn parse_text(raw: &str) -> Option<Self> {
        if let Some(n) = raw.strip_prefix("seq:") {
            return n.parse().ok().map(ReportOrder::Seq);
        }
        let at = raw.strip_prefix("at:")?;
        OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(ReportOrder::At)
    }
}

impl VmRecord {
    /// A new row for a VM about to be created in ARM.
    pub fn new_creating(
        id: VmId,
        resource_id: String,
        purpose: Purpose,
        now: OffsetDateTime,
    ) -> Self {
        VmRecord {
            id,
            state: VmState::Creating,
            purpose,
            operation: Some(Operation::Create),
            resource_id,
            public_ip: None,
            rooms: 0,
            last_report_at: None,
            state_changed_at: now,
            operation_since: Some(now),
            created_at: now,
            claimed_at: (purpose == Purpose::Matchmaker).then_some(now),
            attempts: 1,
            last_error: None,
            pool: DEFAULT_POOL.to_owned(),
            build: None,
            report_order: None,
            attention: None,
            unhealthy: None,
        }
    }

    /// The same record placed in `pool`, running `build`.
    pub fn placed(self, pool: &str, build: &str) -> Self {
        VmRecord {
            pool: pool.to_owned(),
            build: Some(build.to_owned()),
            ..self
        }
    }

    /// Whether the VM is of `pool` and known to run `build`.
    pub fn is_of(&self, pool: &str, build: &str) -> bool {
        self.pool == pool && self.build.as_deref() == Some(build)
    }

    /// Whether the VM's build is known and is not `current` (its pool's current build): a
    /// VM of a previous build, or of one rolled back from.
    pub fn is_of_a_build_but(&self, current: &str) -> bool {
        self.build.as_deref().is_some_and(|b| b != current)
    }

    fn moved(&self, state: VmState, operation: Option<Operation>, now: OffsetDateTime) -> Self {
        VmRecord {
            state,
            operation,
            state_changed_at: now,
            operation_since: operation.map(|_| now),
            attempts: if operation.is_some() { 1 } else { 0 },
            attention: None,
            ..self.clone()
        }
    }

    /// When the current operation was first issued.
    pub fn issued_at(&self) -> OffsetDateTime {
        self.operation_since.unwrap_or(self.state_changed_at)
    }

    /// Whether the VM's last report said 0 rooms and came after it was last handed out: its
    /// rooms are known to be empty. A VM never reported on since it was handed out (or
    /// adopted) has unknown rooms.
    pub fn reported_empty(&self) -> bool {
        self.rooms == 0
            && self
                .last_report_at
                .is_some_and(|at| self.claimed_at.is_none_or(|c| at >= c))
    }

    /// Whether this `Deallocated` VM was claimed for a caller whose start then failed, less
    /// than `hold` ago: that caller may still hold its vmId and wait for it, so nobody else
    /// starts it (until the caller marks it for deallocation, which lets it go).
    pub fn held_for_caller(&self, now: OffsetDateTime, hold: time::Duration) -> bool {
        self.state == VmState::Deallocated
            && self.purpose == Purpose::Matchmaker
            && self.claimed_at.is_some_and(|c| now - c < hold)
    }

    /// Whether a game may run on this VM: it reported rooms, or it was handed to the
    /// matchmaker (or adopted) and has not reported 0 rooms since. A buffer VM nobody took
    /// hosts none.
    pub fn may_host_games(&self) -> bool {
        self.rooms > 0 || (self.purpose == Purpose::Matchmaker && !self.reported_empty())
    }

    /// Whether the pool itself may deallocate or delete this VM without destroying a game:
    /// a `Standby` VM that reports no rooms, or any other VM known to be empty.
    pub fn may_be_emptied(&self) -> bool {
        match self.state {
            VmState::Standby => self.rooms == 0,
            _ => self.reported_empty(),
        }
    }
}

/// A transition the rules do not allow from the VM's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("VM {id} is {state}; {what} needs it to be {needs}")]
pub struct Refused {
    /// The VM.
    pub id: VmId,
    /// The state it is in.
    pub state: VmState,
    /// The operation that was asked for.
    pub what: &'static str,
    /// The states that would have allowed it.
    pub needs: &'static str,
}

fn refuse(vm: &VmRecord, what: &'static str, needs: &'static str) -> Refused {
    Refused {
        id: vm.id.clone(),
        state: vm.state,
        what,
        needs,
    }
}

/// How CreateVM may take an existing VM, in its order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClaimKind {
    /// A `MarkedForDeallocation` VM goes back to `Running`; its rooms are kept.
    Reclaim,
    /// A `Standby` VM is handed out at once.
    Standby,
    /// A `Creating` VM meant for the buffer is claimed for the matchmaker.
    ClaimCreating,
    /// A `Deallocated` VM is started.
    Start,
}

impl ClaimKind {
    /// The order in which CreateVM tries the kinds.
    pub const ORDER: [ClaimKind; 4] = [
        ClaimKind::Reclaim,
        ClaimKind::Standby,
        ClaimKind::ClaimCreating,
        ClaimKind::Start,
    ];

    /// The kind of claim this VM is a candidate for, if any. An unhealthy VM is none.
    pub fn of(vm: &VmRecord) -> Option<ClaimKind> {
        if vm.unhealthy.is_some() {
            return None;
        }
        match (vm.state, vm.purpose) {
            (VmState::MarkedForDeallocation, _) => Some(ClaimKind::Reclaim),
            (VmState::Standby, _) => Some(ClaimKind::Standby),
            (VmState::Creating, Purpose::Buffer) => Some(ClaimKind::ClaimCreating),
            (VmState::Deallocated, _) => Some(ClaimKind::Start),
            _ => None,
        }
    }

    /// The state a candidate of this kind is in.
    pub fn state(self) -> VmState {
        match self {
            ClaimKind::Reclaim => VmState::MarkedForDeallocation,
            ClaimKind::Standby => VmState::Standby,
            ClaimKind::ClaimCreating => VmState::Creating,
            ClaimKind::Start => VmState::Deallocated,
        }
    }

    /// The action CreateVM answers with.
    pub fn action(self) -> CreateAction {
        match self {
            ClaimKind::Reclaim => CreateAction::Reclaimed,
            ClaimKind::Standby => CreateAction::Standby,
            ClaimKind::ClaimCreating => CreateAction::ClaimedCreating,
            ClaimKind::Start => CreateAction::Started,
        }
    }

    /// Whether taking this VM adds one to the count of VMs that are not `Deallocated`.
    pub fn needs_capacity(self) -> bool {
        self == ClaimKind::Start
    }
}

/// What CreateVM did: the `action` of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum CreateAction {
    /// A `MarkedForDeallocation` VM went back to `Running` (its rooms kept): 200.
    Reclaimed,
    /// A `Standby` VM was handed out: 200, `Running`.
    Standby,
    /// A `Creating` VM of the warm buffer is now the caller's: 202.
    ClaimedCreating,
    /// A `Deallocated` VM is being started: 202, `Creating`.
    Started,
    /// A new VM is being created: 202, `Creating`.
    Created,
}

impl CreateAction {
    /// Every action, in the order CreateVM tries them.
    pub const ALL: [CreateAction; 5] = [
        CreateAction::Reclaimed,
        CreateAction::Standby,
        CreateAction::ClaimedCreating,
        CreateAction::Started,
        CreateAction::Created,
    ];

    /// The word the answer holds.
    pub fn as_str(self) -> &'static str {
        match self {
            CreateAction::Reclaimed => "reclaimed",
            CreateAction::Standby => "standby",
            CreateAction::ClaimedCreating => "claimedCreating",
            CreateAction::Started => "started",
            CreateAction::Created => "created",
        }
    }

    /// The action a word names, if any.
    pub fn parse(word: &str) -> Option<CreateAction> {
        CreateAction::ALL.into_iter().find(|a| a.as_str() == word)
    }
}

impl fmt::Display for CreateAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What ReportGameRoomsNumber did: the `action` of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReportAction {
    /// The room count was recorded.
    Recorded,
    /// 0 rooms on a `MarkedForDeallocation` VM: it is `Deallocating` (also the answer to a
    /// repeated 0 on a `Deallocating` VM).
    Deallocating,
    /// The report is older (by its `reportedAt` or `sequence`) than the last one applied to
    /// the VM: nothing changed.
    Stale,
}

impl ReportAction {
    /// The word the answer holds.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportAction::Recorded => "recorded",
            ReportAction::Deallocating => "deallocating",
            ReportAction::Stale => "stale",
        }
    }
}

/// What MarkVMForDeallocation did: the `action` of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum MarkAction {
    /// The VM is now marked (a `Creating` VM now completes into the warm buffer).
    Marked,
    /// Nobody holds the VM: no change.
    AlreadyMarked,
}

impl MarkAction {
    /// The word the answer holds.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkAction::Marked => "marked",
            MarkAction::AlreadyMarked => "alreadyMarked",
        }
    }
}

/// CreateVM takes `vm` for the matchmaker with a claim of `kind`.
pub fn claim(vm: &VmRecord, kind: ClaimKind, now: OffsetDateTime) -> Result<VmRecord, Refused> {
    if ClaimKind::of(vm) != Some(kind) {
        return Err(refuse(vm, "CreateVM", kind_needs(kind)));
    }
    let mut next = match kind {
        ClaimKind::Reclaim | ClaimKind::Standby => vm.moved(VmState::Running, None, now),
        // The create is already in flight; only its purpose changes, so the state's clock
        // (which times the operation) keeps running.
        ClaimKind::ClaimCreating => vm.clone(),
        ClaimKind::Start => {
            let mut started = vm.moved(VmState::Creating, Some(Operation::Start), now);
            // A VM that boots again starts empty, with a game server that reports afresh.
            started.rooms = 0;
            started.report_order = None;
            started.last_error = None;
            started
        }
    };
    next.purpose = Purpose::Matchmaker;
    next.claimed_at = Some(now);
    Ok(next)
}

fn kind_needs(kind: ClaimKind) -> &'static str {
    match kind {
        ClaimKind::Reclaim => "MarkedForDeallocation",
        ClaimKind::Standby => "Standby",
        ClaimKind::ClaimCreating => "Creating for the buffer",
        ClaimKind::Start => "Deallocated",
    }
}

/// The reconciler starts a `Deallocated` VM for the warm buffer.
pub fn start_for_buffer(vm: &VmRecord, now: OffsetDateTime) -> Result<VmRecord, Refused> {
    if vm.state != VmState::Deallocated {
        return Err(refuse(vm, "starting for the buffer", "Deallocated"));
    }
    let mut next = vm.moved(VmState::Creating, Some(Operation::Start), now);
    next.purpose = Purpose::Buffer;
    next.rooms = 0;
    next.report_order = None;
    next.last_error = None;
    Ok(next)
}

/// What MarkVMForDeallocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per call, returned and matched at once, never kept in bulk"
)]
pub enum Marked {
    /// The VM changed: a `Running` VM is now `MarkedForDeallocation`; a `Creating` VM is now
    /// meant for the warm buffer (it completes into `Standby`, where it is reclaimable, or
    /// deallocated as surplus).
    Now(VmRecord),
    /// Nothing to do: the VM is already marked, already unowned (`Standby`, `Creating` for the
    /// buffer) or already on its way out (`Deallocating`, `Deallocated`).
    Already,
}

/// MarkVMForDeallocation: `Running` -> `MarkedForDeallocation`; a `Creating` VM for the
/// matchmaker is handed to the warm buffer; a VM nobody holds is no change. Only a `Failed`
/// VM is refused (the matchmaker should hear that it failed).
pub fn mark_for_deallocation(vm: &VmRecord, now: OffsetDateTime) -> Result<Marked, Refused> {
    match (vm.state, vm.purpose) {
        (VmState::Running, _) => Ok(Marked::Now(vm.moved(
            VmState::MarkedForDeallocation,
            None,
            now,
        ))),
        // The create or start goes on (its clock keeps running); only who it is for changes.
        (VmState::Creating, Purpose::Matchmaker) => Ok(Marked::Now(VmRecord {
            purpose: Purpose::Buffer,
            ..vm.clone()
        })),
        // A start that failed after the caller was told the VM is coming: the caller lets go.
        (VmState::Deallocated, Purpose::Matchmaker) => Ok(Marked::Now(VmRecord {
            purpose: Purpose::Buffer,
            ..vm.clone()
        })),
        (
            VmState::MarkedForDeallocation
            | VmState::Creating
            | VmState::Standby
            | VmState::Deallocating
            | VmState::Deallocated,
            _,
        ) => Ok(Marked::Already),
        (VmState::Failed, _) => Err(refuse(vm, "MarkVMForDeallocation", "any state but Failed")),
    }
}

/// What ReportGameRoomsNumber does to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The count is recorded; the state stays.
    Recorded(VmRecord),
    /// Zero rooms on a `MarkedForDeallocation` VM: it goes `Deallocating` and the ARM
    /// deallocate must be issued.
    Deallocate(VmRecord),
    /// Zero rooms on a VM already `Deallocating`: a repeated report, nothing changes.
    AlreadyDeallocating,
    /// The report is older than the last one applied (by its report time or sequence
    /// number): it arrived late or was sent again, and changes nothing.
    Stale,
}

/// ReportGameRoomsNumber: records `rooms` on a VM that hosts rooms or is about to.
/// Rooms on a `Creating` VM make it the matchmaker's; rooms on a `Standby` VM make it
/// `Running` (someone uses it, so it is never handed out as empty); zero rooms on a
/// `MarkedForDeallocation` VM start its deallocation.
pub fn report_rooms(vm: &VmRecord, rooms: u32, now: OffsetDateTime) -> Result<Report, Refused> {
    report_rooms_ordered(vm, rooms, None, now)
}

/// [`report_rooms`] with the report's ordering field: a report older than the last one
/// applied to this VM is [`Report::Stale`] and changes nothing; an applied one keeps its
/// order. Without an order, every report applies (in the order it arrives).
pub fn report_rooms_ordered(
    vm: &VmRecord,
    rooms: u32,
    order: Option<ReportOrder>,
    now: OffsetDateTime,
) -> Result<Report, Refused> {
    if let (Some(order), Some(last)) = (order, vm.report_order)
        && order.is_older_than(&last)
    {
        return Ok(Report::Stale);
    }
    let vm = &VmRecord {
        report_order: order.or(vm.report_order),
        ..vm.clone()
    };
    let recorded = |vm: VmRecord| {
        Report::Recorded(VmRecord {
            rooms,
            last_report_at: Some(now),
            ..vm
        })
    };
    match vm.state {
        VmState::Running => Ok(recorded(vm.clone())),
        VmState::Creating if rooms > 0 => Ok(recorded(VmRecord {
            purpose: Purpose::Matchmaker,
            ..vm.clone()
        })),
        VmState::Creating => Ok(recorded(vm.clone())),
        VmState::Standby if rooms > 0 => {
            let mut next = vm.moved(VmState::Running, None, now);
            next.purpose = Purpose::Matchmaker;
            Ok(recorded(next))
        }
        VmState::Standby => Ok(recorded(vm.clone())),
        VmState::MarkedForDeallocation if rooms == 0 => {
            let mut next = vm.moved(VmState::Deallocating, Some(Operation::Deallocate), now);
            next.rooms = 0;
            next.last_report_at = Some(now);
            Ok(Report::Deallocate(next))
        }
        VmState::MarkedForDeallocation => Ok(recorded(vm.clone())),
        VmState::Deallocating if rooms == 0 => Ok(Report::AlreadyDeallocating),
        VmState::Deallocating | VmState::Deallocated | VmState::Failed => Err(refuse(
            vm,
            "ReportGameRoomsNumber",
            "Creating, Standby, Running or MarkedForDeallocation (or 0 rooms on Deallocating)",
        )),
    }
}

/// The reconciler moves a `Creating` VM that ARM reports up and running to `Running` (for
/// the matchmaker) or `Standby` (for the buffer), with its public IP. The rooms were zeroed
/// when the create or start was issued (a VM that boots starts empty); reports that came
/// after that are kept.
///
/// `unhealthy` says why, when ARM shows it running but its provisioning failed (a VM
/// extension): it is completed all the same, for whoever holds it, and never handed out.
pub fn complete_creating(
    vm: &VmRecord,
    public_ip: Option<String>,
    unhealthy: Option<String>,
    now: OffsetDateTime,
) -> Result<VmRecord, Refused> {
    if vm.state != VmState::Creating {
        return Err(refuse(vm, "completing a create or start", "Creating"));
    }
    let state = match vm.purpose {
        Purpose::Matchmaker => VmState::Running,
        Purpose::Buffer => VmState::Standby,
    };
    let mut next = vm.moved(state, None, now);
    next.public_ip = public_ip.or_else(|| vm.public_ip.clone());
    next.last_error = None;
    next.unhealthy = unhealthy;
    Ok(next)
}

/// The reconciler fills in a public IP that ARM did not show when the VM completed.
pub fn found_public_ip(vm: &VmRecord, public_ip: String) -> VmRecord {
    VmRecord {
        public_ip: Some(public_ip),
        ..vm.clone()
    }
}

/// A VM handed to the matchmaker that got neither a rooms report nor a mark within the claim
/// timeout after it was `Running` (or whose last report said 0 rooms and was that long ago)
/// is not used: it goes back to the buffer as `Standby`, or, reclaimed from
/// `MarkedForDeallocation` with an earlier game's rooms and no report since, back to
/// draining. One whose last report since it was handed out said rooms > 0 is in use.
pub fn unclaimed(vm: &VmRecord, now: OffsetDateTime) -> Result<VmRecord, Refused> {
    // In use: a report of rooms since it was handed out. A last report of 0 rooms keeps it
    // only while reports keep coming (the reconciler judges the silence).
    let in_use = vm.rooms > 0
        && vm
            .last_report_at
            .is_some_and(|at| vm.claimed_at.is_none_or(|c| at >= c));
    if vm.state != VmState::Running || vm.claimed_at.is_none() || in_use {
        return Err(refuse(
            vm,
            "returning an unused claim",
            "Running, handed out by CreateVM and never reported on",
        ));
    }
    if vm.rooms > 0 {
        // Reclaimed from `MarkedForDeallocation` with the earlier game's rooms: that claim is
        // undone, and the VM drains again as it did (its rooms are never taken as empty).
        return Ok(vm.moved(VmState::MarkedForDeallocation, None, now));
    }
    let mut next = vm.moved(VmState::Standby, None, now);
    next.purpose = Purpose::Buffer;
    Ok(next)
}

/// Drift repair: the row follows the state ARM shows (`Deallocated`, or `Standby` for a VM
/// started outside vmpool, which is billed and so joins the buffer).
pub fn correct(vm: &VmRecord, to: VmState, now: OffsetDateTime) -> VmRecord {
    let mut next = vm.moved(to, None, now);
    next.rooms = 0;
    // A VM corrected to Standby or Deallocated is nobody's.
    next.purpose = Purpose::Buffer;
    next.unhealthy = None;
    next.last_error = Some(format!(
        "ARM showed the VM {to} while the row said {}",
        vm.state
    ));
    next
}

/// The reconciler deletes a `Failed` VM in ARM (with its NIC, disk and IP): the row records
/// the delete before it is sent. A delete issued again keeps its first issue time.
pub fn begin_delete(vm: &VmRecord, now: OffsetDateTime) -> VmRecord {
    if vm.operation == Some(Operation::Delete) {
        reissue(vm, now)
    } else {
        VmRecord {
            operation: Some(Operation::Delete),
            operation_since: Some(now),
            state_changed_at: now,
            attempts: 1,
            ..vm.clone()
        }
    }
}

/// The reconciler records what a point read showed of a running VM's health: `Some(reason)`
/// when ARM says the last operation on its model failed while it runs, `None` once ARM
/// says it succeeded again.
pub fn health(vm: &VmRecord, unhealthy: Option<String>) -> VmRecord {
    VmRecord {
        unhealthy,
        ..vm.clone()
    }
}

/// What ARM showed of a pool VM that had no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptedAs {
    /// ARM says its provisioning failed.
    ProvisioningFailed,
    /// Deallocated.
    Deallocated,
    /// Provisioned and running.
    Running,
    /// Running, but the last operation on its model failed (ARM's error): it may host
    /// games, so it is adopted as `Running` and unhealthy, never as `Failed`.
    RunningUnhealthy,
    /// Anything else (being created or started).
    InFlight,
}

/// The row for a pool VM that ARM has and the table does not. Nobody knows what a running
/// one hosts, so it is adopted as `Running` with unknown rooms: CreateVM never hands out a
/// `Running` VM, the reconciler never deallocates one, and vmpool never handed it out, so
/// the claim timeout does not apply. Its game servers' reports and the matchmaker's mark
/// then drive it like any other VM. One on its way up completes as `Running` too.
pub fn adopt(
    id: VmId,
    resource_id: String,
    seen: AdoptedAs,
    error: Option<&str>,
    now: OffsetDateTime,
) -> VmRecord {
    let mut vm = VmRecord::new_creating(id, resource_id, Purpose::Matchmaker, now);
    vm.claimed_at = None;
    vm.last_error =
        Some("adopted: the VM had no row; its rooms are unknown until it reports".into());
    match seen {
        AdoptedAs::ProvisioningFailed => {
            vm = fail(
                &vm,
                &format!(
                    "adopted: provisioning failed: {}",
                    error.unwrap_or("unknown")
                ),
                now,
            );
        }
        AdoptedAs::Deallocated => {
            vm = vm.moved(VmState::Deallocated, None, now);
            vm.purpose = Purpose::Buffer;
        }
        AdoptedAs::Running => vm = vm.moved(VmState::Running, None, now),
        AdoptedAs::RunningUnhealthy => {
            vm = vm.moved(VmState::Running, None, now);
            vm.unhealthy = Some(format!(
                "provisioning failed while running: {}",
                error.unwrap_or("unknown")
            ));
        }
        AdoptedAs::InFlight => vm = vm.moved(VmState::Creating, Some(Operation::Start), now),
    }
    vm
}

/// Starts a deallocation from any state that may be deallocated by the pool itself:
/// `MarkedForDeallocation` (drained: a report of 0 rooms since it was handed out), `Standby`
/// (surplus buffer, reporting no rooms), `Running`/`Creating` never (they belong to someone).
pub fn begin_deallocate(vm: &VmRecord, now: OffsetDateTime) -> Result<VmRecord, Refused> {
    match vm.state {
        VmState::MarkedForDeallocation | VmState::Standby if !vm.may_be_emptied() => Err(refuse(
            vm,
            "deallocating",
            "known to host no rooms (a report of 0 rooms since it was handed out)",
        )),
        VmState::MarkedForDeallocation | VmState::Standby => {
            let mut next = vm.moved(VmState::Deallocating, Some(Operation::Deallocate), now);
            next.rooms = 0;
            Ok(next)
        }
        _ => Err(refuse(
            vm,
            "deallocating",
            "MarkedForDeallocation or Standby",
        )),
    }
}

/// A VM of a pool's previous build leaves for good: `Standby` reporting no rooms, drained
/// `MarkedForDeallocation` (a report of 0 rooms since it was handed out), or `Deallocated`
/// and nobody's, goes `Deallocating` with operation `Delete`, and the ARM delete must be
/// issued (starting it again would bring the old build back). The row is removed once a
/// GET answers 404. Any other VM is refused: it belongs to someone or may host a game.
pub fn begin_retire(vm: &VmRecord, now: OffsetDateTime) -> Result<VmRecord, Refused> {
    let idle = match vm.state {
        VmState::Standby | VmState::MarkedForDeallocation => vm.may_be_emptied(),
        VmState::Deallocated => vm.purpose == Purpose::Buffer,
        _ => false,
    };
    if !idle {
        return Err(refuse(
            vm,
            "deleting a VM of a previous build",
            "Standby or MarkedForDeallocation known to host no rooms, or Deallocated and nobody's",
        ));
    }
    let mut next = vm.moved(VmState::Deallocating, Some(Operation::Delete), now);
    next.rooms = 0;
    next.purpose = Purpose::Buffer;
    Ok(next)
}

/// Whether the row's VM is leaving for good: an ARM delete of it is in flight.
pub fn is_retiring(vm: &VmRecord) -> bool {
    vm.state == VmState::Deallocating && vm.operation == Some(Operation::Delete)
}

/// The reconciler moves a `Deallocating` VM that ARM reports deallocated to `Deallocated`.
pub fn complete_deallocating(vm: &VmRecord, now: OffsetDateTime) -> Result<VmRecord, Refused> {
    if vm.state != VmState::Deallocating {
        return Err(refuse(vm, "completing a deallocate", "Deallocating"));
    }
    let mut next = vm.moved(VmState::Deallocated, None, now);
    next.rooms = 0;
    // A deallocated VM is nobody's.
    next.purpose = Purpose::Buffer;
    Ok(next)
}

/// An ARM operation failed or timed out: the VM goes `Failed` with the error (and the
/// attempts made) recorded.
pub fn fail(vm: &VmRecord, error: &str, now: OffsetDateTime) -> VmRecord {
    let mut next = vm.moved(VmState::Failed, None, now);
    next.last_error = Some(error.to_owned());
    // Kept as history: how often the failed operation was issued.
    next.attempts = vm.attempts;
    next
}

/// ARM refused to start the VM, or the start failed without the VM coming up (quota, SKU,
/// allocation): it is as it was, `Deallocated`, with the refusal recorded; it can be started
/// again later. Only a VM whose own provisioning never succeeded becomes `Failed`. Whom it was
/// started for stays: a caller that was told it is coming may still wait for it, so it is
/// not started for anyone else until that claim has timed out ([`VmRecord::held_for_caller`]).
pub fn start_refused(vm: &VmRecord, error: &str, now: OffsetDateTime) -> VmRecord {
    let mut next = vm.moved(VmState::Deallocated, None, now);
    next.rooms = 0;
    next.last_error = Some(format!("start refused: {error}"));
    next
}

/// The reconciler stops calling ARM for a VM whose operation ran out of attempts: the row
/// stays as it is, marked for an operator with the reason.
pub fn needs_attention(vm: &VmRecord, why: &str) -> VmRecord {
    VmRecord {
        attention: Some(why.to_owned()),
        last_error: Some(why.to_owned()),
        ..vm.clone()
    }
}

/// An ARM create or start issued after its row was written did not go through. A call that
/// may work later keeps its intent but is handed to the warm buffer (the reconciler re-issues
/// it, and the caller, who was told it failed, is not left with a VM it never heard of); a
/// refused call fails the VM with ARM's error.
pub fn call_failed(vm: &VmRecord, transient: bool, error: &str, now: OffsetDateTime) -> VmRecord {
    if transient {
        VmRecord {
            purpose: Purpose::Buffer,
            ..vm.clone()
        }
    } else {
        fail(vm, error, now)
    }
}

/// The VM's operation is issued once more (after a crash, a lost ARM request or a timeout).
/// Its first issue time stays, so its timeout and attempts still count from there. Whom the
/// VM is for does not change: a row claimed for a caller stays the caller's (a CreateVM
/// whose ARM call failed already handed its row to the buffer).
pub fn reissue(vm: &VmRecord, now: OffsetDateTime) -> VmRecord {
    VmRecord {
        attempts: vm.attempts.saturating_add(1),
        operation_since: Some(vm.issued_at()),
        state_changed_at: now,
        ..vm.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00 UTC)
    }

    fn vm(state: VmState, purpose: Purpose) -> VmRecord {
        let mut vm = VmRecord::new_creating(
            VmId::parse("vm-1").unwrap(),
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm-1"
                .into(),
            purpose,
            t0(),
        );
        vm.state = state;
        vm.rooms = 3;
        vm
    }

    #[test]
    fn vm_ids_follow_azure_naming_rules() {
        for ok in ["a", "vm-1", "A_b.c-9", &"x".repeat(64)] {
            assert!(VmId::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "a/b",
            "o'brien",
            "ends.",
            "sp ace",
            "é",
            &"x".repeat(65),
            "a%2Fb",
        ] {
            assert!(VmId::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_either_a_valid_name_or_refused(raw in "\\PC{0,80}") {
            let valid = !raw.is_empty()
                && raw.len() <= VmId::MAX_LEN
                && raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !raw.ends_with('.');
            proptest::prop_assert_eq!(VmId::parse(&raw).is_ok(), valid);
        }

        #[test]
        fn valid_names_round_trip(raw in "[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}[A-Za-z0-9_-]") {
            proptest::prop_assert_eq!(VmId::parse(&raw).map(|id| id.to_string()), Ok(raw.clone()));
        }
    }

    #[test]
    fn states_round_trip_by_name() {
        for s in VmState::ALL {
            assert_eq!(VmState::parse(s.as_str()), Some(s));
        }
        assert_eq!(VmState::parse("running"), None);
    }

    #[test]
    fn claim_kinds_follow_the_order_of_preference() {
        let cases = [
            (
                VmState::MarkedForDeallocation,
                Purpose::Matchmaker,
                Some(ClaimKind::Reclaim),
            ),
            (VmState::Standby, Purpose::Buffer, Some(ClaimKind::Standby)),
            (
                VmState::Creating,
                Purpose::Buffer,
                Some(ClaimKind::ClaimCreating),
            ),
            (VmState::Creating, Purpose::Matchmaker, None),
            (
                VmState::Deallocated,
                Purpose::Matchmaker,
                Some(ClaimKind::Start),
            ),
            (VmState::Running, Purpose::Matchmaker, None),
            (VmState::Deallocating, Purpose::Matchmaker, None),
            (VmState::Failed, Purpose::Buffer, None),
        ];
        for (state, purpose, want) in cases {
            assert_eq!(
                ClaimKind::of(&vm(state, purpose)),
                want,
                "{state} {purpose:?}"
            );
        }
    }

    #[test]
    fn claims_move_to_the_right_state() {
        let now = t0() + time::Duration::minutes(5);
        let r = claim(
            &vm(VmState::MarkedForDeallocation, Purpose::Matchmaker),
            ClaimKind::Reclaim,
            now,
        )
        .unwrap();
        assert_eq!((r.state, r.rooms, r.operation), (VmState::Running, 3, None));
        assert_eq!(r.claimed_at, Some(now));

        let s = claim(
            &vm(VmState::Standby, Purpose::Buffer),
            ClaimKind::Standby,
            now,
        )
        .unwrap();
        assert_eq!(
            (s.state, s.purpose),
            (VmState::Running, Purpose::Matchmaker)
        );

        let c = claim(
            &vm(VmState::Creating, Purpose::Buffer),
            ClaimKind::ClaimCreating,
            now,
        )
        .unwrap();
        assert_eq!(
            (c.state, c.purpose),
            (VmState::Creating, Purpose::Matchmaker)
        );
        assert_eq!(c.state_changed_at, t0(), "the create's clock keeps running");

        let st = claim(
            &vm(VmState::Deallocated, Purpose::Buffer),
            ClaimKind::Start,
            now,
        )
        .unwrap();
        assert_eq!(
            (st.state, st.purpose, st.operation, st.rooms),
            (
                VmState::Creating,
                Purpose::Matchmaker,
                Some(Operation::Start),
                0
            )
        );
    }

    #[test]
    fn claims_are_refused_from_any_other_state() {
        for kind in ClaimKind::ORDER {
            for state in VmState::ALL {
                for purpose in [Purpose::Matchmaker, Purpose::Buffer] {
                    let v = vm(state, purpose);
                    let allowed = ClaimKind::of(&v) == Some(kind);
                    assert_eq!(claim(&v, kind, t0()).is_ok(), allowed, "{kind:?} {state}");
                }
            }
        }
    }

    #[test]
    fn marking_moves_running_and_creating_and_leaves_unowned_vms_alone() {
        for purpose in [Purpose::Matchmaker, Purpose::Buffer] {
            for state in VmState::ALL {
                let before = vm(state, purpose);
                let got = mark_for_deallocation(&before, t0() + time::Duration::minutes(1));
                match (state, purpose) {
                    (VmState::Running, _) => assert!(
                        matches!(got, Ok(Marked::Now(ref v)) if v.state == VmState::MarkedForDeallocation && v.rooms == 3)
                    ),
                    (VmState::Creating, Purpose::Matchmaker) => {
                        let Ok(Marked::Now(v)) = got else {
                            panic!("{got:?}")
                        };
                        assert_eq!(
                            (v.state, v.purpose, v.operation, v.state_changed_at),
                            (
                                VmState::Creating,
                                Purpose::Buffer,
                                Some(Operation::Create),
                                t0()
                            ),
                            "only who it is for changes"
                        );
                    }
                    (VmState::Failed, _) => {
                        let err = got.unwrap_err();
                        assert!(err.to_string().contains("Failed"), "{err}");
                    }
                    (VmState::Deallocated, Purpose::Matchmaker) => {
                        let Ok(Marked::Now(v)) = got else {
                            panic!("{got:?}")
                        };
                        assert_eq!(
                            (v.state, v.purpose),
                            (VmState::Deallocated, Purpose::Buffer),
                            "a caller lets go of a VM whose start failed"
                        );
                    }
                    _ => assert_eq!(got, Ok(Marked::Already), "{state} {purpose:?}"),
                }
            }
        }
    }

    #[test]
    fn reports_record_rooms_wherever_rooms_are_hosted_or_about_to_be() {
        let now = t0() + time::Duration::seconds(1);
        let recorded = |state, purpose, rooms| match report_rooms(&vm(state, purpose), rooms, now) {
            Ok(Report::Recorded(v)) => {
                assert_eq!((v.rooms, v.last_report_at), (rooms, Some(now)));
                v
            }
            other => panic!("{state} {rooms}: {other:?}"),
        };
        let v = recorded(VmState::Running, Purpose::Matchmaker, 7);
        assert_eq!(v.state, VmState::Running);
        assert_eq!(
            recorded(VmState::Running, Purpose::Matchmaker, 0).state,
            VmState::Running
        );
        let v = recorded(VmState::MarkedForDeallocation, Purpose::Matchmaker, 2);
        assert_eq!(v.state, VmState::MarkedForDeallocation);

        let v = recorded(VmState::Creating, Purpose::Buffer, 2);
        assert_eq!(
            (v.state, v.purpose),
            (VmState::Creating, Purpose::Matchmaker)
        );
        assert_eq!(v.state_changed_at, t0(), "the create's clock keeps running");
        let v = recorded(VmState::Creating, Purpose::Buffer, 0);
        assert_eq!((v.state, v.purpose), (VmState::Creating, Purpose::Buffer));

        let v = recorded(VmState::Standby, Purpose::Buffer, 4);
        assert_eq!(
            (v.state, v.purpose, v.state_changed_at),
            (VmState::Running, Purpose::Matchmaker, now),
            "a used VM is never handed out as empty"
        );
        let v = recorded(VmState::Standby, Purpose::Buffer, 0);
        assert_eq!(v.state, VmState::Standby);

        match report_rooms(
            &vm(VmState::MarkedForDeallocation, Purpose::Matchmaker),
            0,
            now,
        )
        .unwrap()
        {
            Report::Deallocate(v) => {
                assert_eq!(
                    (v.state, v.operation),
                    (VmState::Deallocating, Some(Operation::Deallocate))
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            report_rooms(&vm(VmState::Deallocating, Purpose::Matchmaker), 0, now),
            Ok(Report::AlreadyDeallocating)
        );
        for state in [VmState::Deallocated, VmState::Failed] {
            for rooms in [0, 1] {
                assert!(
                    report_rooms(&vm(state, Purpose::Matchmaker), rooms, now).is_err(),
                    "{state}"
                );
            }
        }
        assert!(report_rooms(&vm(VmState::Deallocating, Purpose::Matchmaker), 1, now).is_err());
    }

    #[test]
    fn a_failed_call_hands_the_vm_to_the_buffer_or_fails_it() {
        let creating = vm(VmState::Creating, Purpose::Matchmaker);
        let later = call_failed(&creating, true, "ARM is unavailable", t0());
        assert_eq!(
            (later.state, later.purpose, later.operation),
            (VmState::Creating, Purpose::Buffer, Some(Operation::Create))
        );
        let refused = call_failed(&creating, false, "QuotaExceeded: no cores", t0());
        assert_eq!(
            (refused.state, refused.last_error.as_deref()),
            (VmState::Failed, Some("QuotaExceeded: no cores"))
        );
    }

    #[test]
    fn completion_follows_purpose_and_keeps_reports_made_after_the_issue() {
        let done = complete_creating(
            &vm(VmState::Creating, Purpose::Matchmaker),
            Some("203.0.113.9".into()),
            None,
            t0(),
        )
        .unwrap();
        assert_eq!(
            (done.state, done.public_ip.as_deref()),
            (VmState::Running, Some("203.0.113.9"))
        );
        // Rooms were zeroed when the operation was issued; a report since then is kept.
        let mut reported = vm(VmState::Creating, Purpose::Buffer);
        reported.last_report_at = Some(t0());
        let kept = complete_creating(&reported, None, None, t0()).unwrap();
        assert_eq!((kept.rooms, kept.last_report_at), (3, Some(t0())));
        let buf =
            complete_creating(&vm(VmState::Creating, Purpose::Buffer), None, None, t0()).unwrap();
        assert_eq!(buf.state, VmState::Standby);
        for state in VmState::ALL.into_iter().filter(|s| *s != VmState::Creating) {
            assert!(complete_creating(&vm(state, Purpose::Buffer), None, None, t0()).is_err());
        }
        let d =
            complete_deallocating(&vm(VmState::Deallocating, Purpose::Matchmaker), t0()).unwrap();
        assert_eq!(d.state, VmState::Deallocated);
        for state in VmState::ALL
            .into_iter()
            .filter(|s| *s != VmState::Deallocating)
        {
            assert!(complete_deallocating(&vm(state, Purpose::Buffer), t0()).is_err());
        }
    }

    #[test]
    fn the_pool_deallocates_only_drained_or_standby_vms() {
        for state in VmState::ALL {
            let mut empty = vm(state, Purpose::Buffer);
            empty.rooms = 0;
            empty.last_report_at = Some(t0());
            let ok = begin_deallocate(&empty, t0()).is_ok();
            assert_eq!(
                ok,
                matches!(state, VmState::MarkedForDeallocation | VmState::Standby),
                "{state}"
            );
        }
        // Never a VM with rooms, nor a drained one whose rooms are unknown since it was
        // handed out.
        assert!(begin_deallocate(&vm(VmState::Standby, Purpose::Buffer), t0()).is_err());
        let mut unknown = vm(VmState::MarkedForDeallocation, Purpose::Matchmaker);
        unknown.rooms = 0;
        assert!(begin_deallocate(&unknown, t0()).is_err());
        unknown.last_report_at = Some(t0() - time::Duration::seconds(1));
        assert!(
            begin_deallocate(&unknown, t0()).is_err(),
            "reported before it was handed out"
        );
        let s = start_for_buffer(&vm(VmState::Deallocated, Purpose::Matchmaker), t0()).unwrap();
        assert_eq!((s.state, s.purpose), (VmState::Creating, Purpose::Buffer));
        assert!(start_for_buffer(&vm(VmState::Standby, Purpose::Buffer), t0()).is_err());
    }

    #[test]
    fn failing_records_the_error_and_reissue_counts_attempts() {
        let f = fail(
            &vm(VmState::Creating, Purpose::Buffer),
            "QuotaExceeded: no cores",
            t0(),
        );
        assert_eq!(
            (f.state, f.last_error.as_deref()),
            (VmState::Failed, Some("QuotaExceeded: no cores"))
        );
        let mut claimed = vm(VmState::Creating, Purpose::Matchmaker);
        claimed.operation = Some(Operation::Start);
        let later = t0() + time::Duration::seconds(90);
        let r = reissue(&claimed, later);
        // The first issue time stays; whom the VM is for does not change.
        assert_eq!(
            (r.attempts, r.operation_since, r.state_changed_at, r.purpose),
            (2, Some(t0()), later, Purpose::Matchmaker)
        );
        let again = reissue(&r, later + time::Duration::seconds(90));
        assert_eq!((again.attempts, again.issued_at()), (3, t0()));
    }

    #[test]
    fn unused_claims_go_back_to_standby_and_used_ones_never() {
        let mut handed = vm(VmState::Running, Purpose::Matchmaker);
        handed.rooms = 0;
        let back = unclaimed(&handed, t0()).unwrap();
        assert_eq!(
            (back.state, back.purpose),
            (VmState::Standby, Purpose::Buffer)
        );
        let mut reported = handed.clone();
        reported.last_report_at = Some(t0());
        reported.rooms = 1;
        assert!(unclaimed(&reported, t0()).is_err());
        // A last report of 0 rooms: idle; the reconciler returns it once reports stop.
        reported.rooms = 0;
        assert!(unclaimed(&reported, t0()).is_ok());
        // Reclaimed with an earlier game's rooms and never reported on since: it drains again.
        let mut reclaimed = handed.clone();
        reclaimed.rooms = 2;
        reclaimed.last_report_at = Some(t0() - time::Duration::seconds(5));
        let back = unclaimed(&reclaimed, t0()).unwrap();
        assert_eq!(
            (back.state, back.rooms),
            (VmState::MarkedForDeallocation, 2)
        );
        let mut adopted = handed.clone();
        adopted.claimed_at = None;
        assert!(
            unclaimed(&adopted, t0()).is_err(),
            "vmpool never handed it out"
        );
        assert!(
            unclaimed(
                &vm(VmState::MarkedForDeallocation, Purpose::Matchmaker),
                t0()
            )
            .is_err()
        );
    }

    #[test]
    fn adopted_vms_have_unknown_rooms_and_are_never_empty_buffer() {
        let id = VmId::parse("ghost").unwrap();
        for (seen, state) in [
            (AdoptedAs::Running, VmState::Running),
            (AdoptedAs::Deallocated, VmState::Deallocated),
            (AdoptedAs::InFlight, VmState::Creating),
            (AdoptedAs::ProvisioningFailed, VmState::Failed),
            (AdoptedAs::RunningUnhealthy, VmState::Running),
        ] {
            let vm = adopt(id.clone(), "/x/ghost".into(), seen, Some("E"), t0());
            assert_eq!(
                vm.unhealthy.is_some(),
                seen == AdoptedAs::RunningUnhealthy,
                "{seen:?}"
            );
            if state != VmState::Deallocated {
                assert!(vm.may_host_games(), "{seen:?}");
                assert_eq!(ClaimKind::of(&vm), None, "{seen:?}");
            }
            assert_eq!(vm.state, state);
            assert_eq!(vm.claimed_at, None);
            assert!(!vm.reported_empty());
            assert_ne!(vm.state, VmState::Standby);
        }
        let up = adopt(id, "/x/ghost".into(), AdoptedAs::InFlight, None, t0());
        assert_eq!(up.purpose, Purpose::Matchmaker, "completes as Running");
    }
}
