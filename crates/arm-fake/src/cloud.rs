//! The fake cloud's state: the VMs as ARM stored them (body, ID, the NICs and public IPs it
//! created under names of its own), the long-running operations, the scripted faults and the
//! recorded requests; and each resource served in ARM's shapes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use vmpool::compute::sim::SimVmView;
use vmpool::compute::{Power, Provisioning};

use crate::validate::validate_vm_body;
use crate::wire::{
    Answer, Target, arm_error, from_sim_error, invalid_parameter, json_answer, not_found,
};
use crate::{ArmFake, FakeOp, HttpFault, Recorded};

#[derive(Debug, Clone)]
pub(crate) enum Scripted {
    Fault(HttpFault),
    Delay(Duration),
}

#[derive(Debug, Clone)]
pub(crate) struct StoredVm {
    pub(crate) name: String,
    pub(crate) resource_group: String,
    pub(crate) location: String,
    pub(crate) body: Value,
    pub(crate) vm_id: String,
    pub(crate) created: OffsetDateTime,
    /// The NICs ARM created from the body's `networkInterfaceConfigurations`, under names
    /// of its own (Azure does not document them, so nothing may guess them).
    pub(crate) nics: Vec<CreatedNic>,
}

/// A NIC the fake created for a VM, with the IP configuration and public IP under it.
#[derive(Debug, Clone)]
pub(crate) struct CreatedNic {
    pub(crate) name: String,
    pub(crate) ip_config: String,
    pub(crate) public_ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Create,
    Start,
    Deallocate,
    PowerOff,
    Delete,
}

#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub(crate) vm: String,
    pub(crate) kind: OpKind,
    pub(crate) started: OffsetDateTime,
}

#[derive(Debug, Default)]
pub(crate) struct FakeState {
    pub(crate) vms: HashMap<String, StoredVm>,
    pub(crate) ops: HashMap<String, Operation>,
    pub(crate) next_op: u64,
    pub(crate) scripts: Vec<(FakeOp, Scripted)>,
    pub(crate) requests: Vec<Recorded>,
    /// VMs (by lowercase name; `None`: every VM) missing from list responses until then.
    pub(crate) hidden: Vec<(Option<String>, OffsetDateTime)>,
    /// List responses still to end early.
    pub(crate) short_pages: u32,
    /// Where each VM ever PUT lives (lowercase name -> resource group, location), kept after
    /// it is gone so that a lagging Resource Graph answer can still show it.
    pub(crate) placed: HashMap<String, (String, String)>,
    /// The Resource Graph quota window: when it started and how many queries it spent.
    pub(crate) graph_quota: Option<(OffsetDateTime, u32)>,
    /// Until then, the regional core quota is used up: creates of new VMs and starts are
    /// refused.
    pub(crate) quota_until: Option<OffsetDateTime>,
    /// Resource Graph's lag as set at run time (it replaces
    /// [`crate::FakeSettings::graph_lag_secs`]).
    pub(crate) graph_lag_secs: Option<u64>,
}

/// A name ARM might give: a prefix and random letters and digits nothing can derive.
pub(crate) fn unguessable(prefix: &str) -> String {
    use rand::Rng;
    let tail: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(12)
        .map(|b| char::from(b).to_ascii_lowercase())
        .collect();
    format!("{prefix}-{tail}")
}

pub(crate) enum Outcome {
    InProgress,
    Succeeded,
    Failed(String, String),
}

pub(crate) fn failure_parts(text: &str) -> (String, String) {
    match text.split_once(": ") {
        Some((code, message)) => (code.to_owned(), message.to_owned()),
        None => (text.to_owned(), text.to_owned()),
    }
}

impl ArmFake {
    pub(crate) fn take_scripts(&self, op: FakeOp) -> (Option<Duration>, Option<HttpFault>) {
        let mut state = self.lock();
        let mut delay = None;
        if let Some(at) = state
            .scripts
            .iter()
            .position(|(o, s)| *o == op && matches!(s, Scripted::Delay(_)))
            && let (_, Scripted::Delay(d)) = state.scripts.remove(at)
        {
            delay = Some(d);
        }
        let mut fault = None;
        if let Some(at) = state
            .scripts
            .iter()
            .position(|(o, s)| *o == op && matches!(s, Scripted::Fault(_)))
            && let (_, Scripted::Fault(f)) = state.scripts.remove(at)
        {
            fault = Some(f);
        }
        (delay, fault)
    }

    pub(crate) fn new_operation(&self, vm: &str, kind: OpKind) -> String {
        let mut state = self.lock();
        state.next_op += 1;
        let id = guid(vm, state.next_op);
        state.ops.insert(
            id.clone(),
            Operation {
                vm: vm.to_owned(),
                kind,
                started: self.cloud.clock().now(),
            },
        );
        id
    }

    pub(crate) fn operation_headers(&self, base: &str, op_id: &str, res: &mut Response) {
        let s = &self.settings;
        let url = format!(
            "{base}/subscriptions/{}/providers/Microsoft.Compute/locations/{}/operations/{op_id}",
            s.subscription_id, s.location
        );
        let headers = res.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!("{url}?api-version=2024-07-01")) {
            headers.insert("azure-asyncoperation", v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("{url}?monitor=true&api-version=2024-07-01"))
        {
            headers.insert(header::LOCATION, v);
        }
        headers.insert(header::RETRY_AFTER, HeaderValue::from(s.retry_after_secs));
    }

    pub(crate) fn stored(&self, rg: &str, name: &str) -> Option<StoredVm> {
        self.lock()
            .vms
            .get(&name.to_ascii_lowercase())
            .filter(|vm| vm.resource_group.eq_ignore_ascii_case(rg))
            .cloned()
    }

    pub(crate) fn vm_id(&self, vm: &StoredVm) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            self.settings.subscription_id, vm.resource_group, vm.name
        )
    }

    pub(crate) fn instance_view(&self, vm: &StoredVm, view: &SimVmView) -> Value {
        let now = rfc3339(self.cloud.clock().now());
        let mut statuses = Vec::new();
        match &view.status.provisioning {
            Provisioning::Failed(text) => {
                let (code, message) = failure_parts(text);
                statuses.push(json!({
                    "code": format!("ProvisioningState/failed/{code}"),
                    "level": "Error",
                    "displayStatus": "Provisioning failed",
                    "message": message,
                    "time": now
                }));
            }
            p => {
                let (code, display) = match p {
                    Provisioning::Creating => ("creating", "Creating"),
                    Provisioning::Deleting => ("deleting", "Deleting"),
                    _ => ("succeeded", "Provisioning succeeded"),
                };
                statuses.push(json!({
                    "code": format!("ProvisioningState/{code}"),
                    "level": "Info",
                    "displayStatus": display,
                    "time": now
                }));
            }
        }
        let power = match view.status.power {
            Power::Starting => Some(("starting", "VM starting")),
            Power::Running => Some(("running", "VM running")),
            Power::Stopping => Some(("stopping", "VM stopping")),
            Power::Stopped => Some(("stopped", "VM stopped")),
            Power::Deallocating => Some(("deallocating", "VM deallocating")),
            Power::Deallocated => Some(("deallocated", "VM deallocated")),
            Power::Unknown => None,
        };
        if let Some((code, display)) = power {
            statuses.push(json!({
                "code": format!("PowerState/{code}"),
                "level": "Info",
                "displayStatus": display
            }));
        }
        json!({
            "computerName": vm.body.pointer("/properties/osProfile/computerName").cloned().unwrap_or(Value::Null),
            "osName": "ubuntu",
            "statuses": statuses
        })
    }

    pub(crate) fn vm_json(
        &self,
        vm: &StoredVm,
        view: &SimVmView,
        with_instance_view: bool,
    ) -> Value {
        self.vm_json_as(vm, view, with_instance_view, false)
    }

    /// A VM as ARM shows it; `status_only` as the `statusOnly=true` list shows it: the
    /// instance view and little else (no tags, no network profile), unless the settings
    /// keep them.
    pub(crate) fn vm_json_as(
        &self,
        vm: &StoredVm,
        view: &SimVmView,
        with_instance_view: bool,
        status_only: bool,
    ) -> Value {
        let mut props: Map<String, Value> = vm
            .body
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(os) = props.get_mut("osProfile").and_then(Value::as_object_mut) {
            os.remove("adminPassword");
            os.insert("secrets".into(), json!([]));
        }
        let nic_ids: Vec<Value> = vm
            .nics
            .iter()
            .map(|nic| &nic.name)
            .map(|nic| {
                json!({
                    "id": format!(
                        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/networkInterfaces/{nic}",
                        self.settings.subscription_id, vm.resource_group
                    ),
                    "properties": {"primary": true, "deleteOption": "Delete"}
                })
            })
            .collect();
        if !nic_ids.is_empty()
            && let Some(net) = props
                .get_mut("networkProfile")
                .and_then(Value::as_object_mut)
        {
            net.insert("networkInterfaces".into(), Value::Array(nic_ids));
        }
        let provisioning = match &view.status.provisioning {
            Provisioning::Creating => "Creating",
            Provisioning::Succeeded => "Succeeded",
            Provisioning::Failed(_) => "Failed",
            Provisioning::Deleting => "Deleting",
        };
        props.insert("provisioningState".into(), json!(provisioning));
        props.insert("vmId".into(), json!(vm.vm_id));
        props.insert("timeCreated".into(), json!(rfc3339(vm.created)));
        if with_instance_view {
            props.insert("instanceView".into(), self.instance_view(vm, view));
        }
        let tags: Map<String, Value> = view
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        if status_only && !self.settings.status_only_tags {
            props
                .retain(|k, _| matches!(k.as_str(), "instanceView" | "vmId" | "provisioningState"));
            return json!({
                "name": vm.name,
                "id": self.vm_id(vm),
                "type": "Microsoft.Compute/virtualMachines",
                "location": vm.location,
                "properties": props
            });
        }
        json!({
            "name": vm.name,
            "id": self.vm_id(vm),
            "type": "Microsoft.Compute/virtualMachines",
            "location": vm.location,
            "tags": tags,
            "properties": props
        })
    }

    pub(crate) fn view(&self, name: &str) -> Result<Option<SimVmView>, Box<Answer>> {
        self.cloud
            .get(name)
            .map_err(|e| Box::new(from_sim_error(&e)))
    }

    pub(crate) async fn handle(
        &self,
        target: Target,
        method: &Method,
        query: &HashMap<String, String>,
        body: &[u8],
        base: &str,
    ) -> Answer {
        match target {
            Target::Vm { rg, name, .. } => match *method {
                Method::PUT => self.put_vm(&rg, &name, body, base),
                Method::GET => self.get_vm(&rg, &name, query),
                Method::DELETE => self.delete_vm(&rg, &name, base),
                _ => arm_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    &format!("The requested method '{method}' is not supported for this resource."),
                ),
            },
            Target::InstanceView { rg, name, .. } => match self.existing(&rg, &name) {
                Ok((vm, view)) => json_answer(StatusCode::OK, &self.instance_view(&vm, &view)),
                Err(res) => *res,
            },
            Target::Action { rg, name, op, .. } => self.action(&rg, &name, op, base),
            Target::List { rg, .. } => self.list(rg.as_deref(), query, base),
            Target::OperationStatus { id, .. } => self.operation_status(&id, query, base),
            Target::PublicIp { rg, name, .. } => self.public_ip(&rg, &name),
            Target::Nic { rg, name, .. } => self.nic(&rg, &name),
            Target::Graph => self.graph_query(body),
        }
    }

    pub(crate) fn existing(
        &self,
        rg: &str,
        name: &str,
    ) -> Result<(StoredVm, SimVmView), Box<Answer>> {
        let view = self.view(name)?;
        match (self.stored(rg, name), view) {
            (Some(vm), Some(view)) => Ok((vm, view)),
            _ => Err(Box::new(not_found(
                "Microsoft.Compute/virtualMachines",
                name,
                rg,
            ))),
        }
    }

    pub(crate) fn put_vm(&self, rg: &str, name: &str, body: &[u8], base: &str) -> Answer {
        let Ok(parsed) = serde_json::from_slice::<Value>(body) else {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                "The request content was invalid and could not be deserialized.",
            );
        };
        if let Err(e) = validate_vm_body(&parsed, name) {
            return if e.code == "InvalidParameter" {
                invalid_parameter(&e.message, &e.target)
            } else {
                arm_error(StatusCode::BAD_REQUEST, &e.code, &e.message)
            };
        }
        if let Some(other) = self.lock().vms.get(&name.to_ascii_lowercase())
            && !other.resource_group.eq_ignore_ascii_case(rg)
            && self.cloud.get(name).ok().flatten().is_some()
        {
            return arm_error(
                StatusCode::CONFLICT,
                "Conflict",
                "A VM of that name exists in another resource group of this fake.",
            );
        }
        if self.cloud.get(name).ok().flatten().is_none()
            && let Some(refused) = self.over_quota()
        {
            return refused;
        }
        let tags: BTreeMap<String, String> = parsed
            .get("tags")
            .and_then(Value::as_object)
            .map(|t| {
                t.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let created = match self.cloud.create(name, tags) {
            Ok(created) => created,
            Err(e) => return from_sim_error(&e),
        };
        let now = self.cloud.clock().now();
        let location = parsed
            .get("location")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let stored = {
            let mut state = self.lock();
            state
                .placed
                .insert(name.to_ascii_lowercase(), (rg.to_owned(), location.clone()));
            let n = state.next_op;
            let entry = state
                .vms
                .entry(name.to_ascii_lowercase())
                .or_insert_with(|| StoredVm {
                    name: name.to_owned(),
                    resource_group: rg.to_owned(),
                    location: location.clone(),
                    body: Value::Null,
                    vm_id: guid(name, n),
                    created: now,
                    nics: Vec::new(),
                });
            if created || entry.nics.is_empty() {
                entry.nics = public_ips(&parsed)
                    .into_iter()
                    .map(|(_, ip_config, pip)| CreatedNic {
                        name: unguessable("nic"),
                        ip_config,
                        public_ip: (!pip.is_empty()).then(|| unguessable("pip")),
                    })
                    .collect();
            }
            if created {
                entry.vm_id = guid(name, n + 1000);
                entry.created = now;
                entry.name = name.to_owned();
                entry.resource_group = rg.to_owned();
            }
            entry.location = location;
            entry.body = parsed;
            entry.clone()
        };
        let view = match self.view(name) {
            Ok(Some(view)) => view,
            Ok(None) => return not_found("Microsoft.Compute/virtualMachines", name, rg),
            Err(res) => return *res,
        };
        let op = self.new_operation(name, OpKind::Create);
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let mut res = json_answer(status, &self.vm_json(&stored, &view, false));
        self.operation_headers(base, &op, &mut res);
        res
    }

    pub(crate) fn get_vm(&self, rg: &str, name: &str, query: &HashMap<String, String>) -> Answer {
        let (vm, view) = match self.existing(rg, name) {
            Ok(found) => found,
            Err(res) => return *res,
        };
        let expand = query.get("$expand").map(|e| e.to_ascii_lowercase());
        match expand.as_deref() {
            None | Some("") => json_answer(StatusCode::OK, &self.vm_json(&vm, &view, false)),
            Some("instanceview") => json_answer(StatusCode::OK, &self.vm_json(&vm, &view, true)),
            Some("userdata") => json_answer(StatusCode::OK, &self.vm_json(&vm, &view, false)),
            Some(other) => invalid_parameter(
                &format!(
                    "The value '{other}' of parameter '$expand' is not valid; use instanceView or userData."
                ),
                "$expand",
            ),
        }
    }

    pub(crate) fn delete_vm(&self, rg: &str, name: &str, base: &str) -> Answer {
        match self.existing(rg, name) {
            Ok(_) => {}
            Err(res) if res.status() == StatusCode::NOT_FOUND => {
                return StatusCode::NO_CONTENT.into_response();
            }
            Err(res) => return *res,
        }
        if let Err(e) = self.cloud.delete(name) {
            return from_sim_error(&e);
        }
        let op = self.new_operation(name, OpKind::Delete);
        let mut res = StatusCode::ACCEPTED.into_response();
        self.operation_headers(base, &op, &mut res);
        res
    }

    pub(crate) fn action(&self, rg: &str, name: &str, op: FakeOp, base: &str) -> Answer {
        if let Err(res) = self.existing(rg, name) {
            return *res;
        }
        if op == FakeOp::Start
            && let Some(refused) = self.over_quota()
        {
            return refused;
        }
        let (done, kind) = match op {
            FakeOp::Start => (self.cloud.start(name), OpKind::Start),
            FakeOp::PowerOff => (self.cloud.power_off(name), OpKind::PowerOff),
            _ => (self.cloud.deallocate(name), OpKind::Deallocate),
        };
        if let Err(e) = done {
            return from_sim_error(&e);
        }
        let op = self.new_operation(name, kind);
        let mut res = StatusCode::ACCEPTED.into_response();
        self.operation_headers(base, &op, &mut res);
        res
    }

    pub(crate) fn list(
        &self,
        rg: Option<&str>,
        query: &HashMap<String, String>,
        base: &str,
    ) -> Answer {
        let status_only = query
            .get("statusonly")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let expand = query
            .get("$expand")
            .is_some_and(|v| v.eq_ignore_ascii_case("instanceView"));
        if expand && rg.is_some() && !query.contains_key("$filter") {
            return invalid_parameter(
                "$expand=instanceView on a resource group's VMs requires a $filter; use the subscription list with statusOnly=true.",
                "$expand",
            );
        }
        let views = match self.cloud.list() {
            Ok(views) => views,
            Err(e) => return from_sim_error(&e),
        };
        let now = self.cloud.clock().now();
        let (stored, hidden, short) = {
            let mut state = self.lock();
            state.hidden.retain(|(_, until)| *until > now);
            let short = state.short_pages > 0;
            if short {
                state.short_pages -= 1;
            }
            (state.vms.clone(), state.hidden.clone(), short)
        };
        let all: Vec<(StoredVm, SimVmView)> = views
            .into_iter()
            .filter(|view| {
                let name = view.name.to_ascii_lowercase();
                !hidden
                    .iter()
                    .any(|(vm, _)| vm.as_ref().is_none_or(|vm| *vm == name))
            })
            .filter_map(|view| {
                let vm = stored.get(&view.name.to_ascii_lowercase())?.clone();
                if let Some(rg) = rg
                    && !vm.resource_group.eq_ignore_ascii_case(rg)
                {
                    return None;
                }
                Some((vm, view))
            })
            .collect();
        let skip: usize = query
            .get("$skiptoken")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let size = self.settings.page_size.max(1);
        let mut page: Vec<Value> = all
            .iter()
            .skip(skip)
            .take(size)
            .map(|(vm, view)| self.vm_json_as(vm, view, status_only || expand, status_only))
            .collect();
        if short {
            // The page ends early: its last VMs and its nextLink are dropped.
            page.truncate(page.len() / 2);
        }
        let mut body = json!({ "value": page });
        if !short && skip.saturating_add(size) < all.len() {
            let path = match rg {
                Some(rg) => format!(
                    "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines",
                    self.settings.subscription_id
                ),
                None => format!(
                    "/subscriptions/{}/providers/Microsoft.Compute/virtualMachines",
                    self.settings.subscription_id
                ),
            };
            let mut next = url::form_urlencoded::Serializer::new(String::new());
            next.append_pair(
                "api-version",
                query
                    .get("api-version")
                    .map_or("2024-07-01", String::as_str),
            );
            if status_only {
                next.append_pair("statusOnly", "true");
            }
            next.append_pair("$skiptoken", &(skip + size).to_string());
            body["nextLink"] = json!(format!("{base}{path}?{}", next.finish()));
        }
        json_answer(StatusCode::OK, &body)
    }

    pub(crate) fn outcome(&self, op: &Operation) -> Result<Outcome, Box<Answer>> {
        let view = self.view(&op.vm)?;
        Ok(match (op.kind, view) {
            (OpKind::Delete, None) => Outcome::Succeeded,
            (OpKind::Delete, Some(_)) => Outcome::InProgress,
            (_, None) => Outcome::Failed(
                "ResourceNotFound".into(),
                format!("The VM '{}' no longer exists.", op.vm),
            ),
            (_, Some(view)) => match (&view.status.provisioning, op.kind, view.status.power) {
                (Provisioning::Failed(text), _, _) => {
                    let (code, message) = failure_parts(text);
                    Outcome::Failed(code, message)
                }
                (Provisioning::Succeeded, OpKind::Create, _) => Outcome::Succeeded,
                (_, OpKind::Start, Power::Running) => Outcome::Succeeded,
                (_, OpKind::Deallocate, Power::Deallocated) => Outcome::Succeeded,
                (_, OpKind::PowerOff, Power::Stopped | Power::Deallocated) => Outcome::Succeeded,
                _ => Outcome::InProgress,
            },
        })
    }

    pub(crate) fn operation_status(
        &self,
        id: &str,
        query: &HashMap<String, String>,
        base: &str,
    ) -> Answer {
        let Some(op) = self.lock().ops.get(id).cloned() else {
            return arm_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("The operation '{id}' was not found."),
            );
        };
        let outcome = match self.outcome(&op) {
            Ok(outcome) => outcome,
            Err(res) => return *res,
        };
        let monitor = query
            .get("monitor")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if monitor {
            return match outcome {
                Outcome::InProgress => {
                    let mut res = StatusCode::ACCEPTED.into_response();
                    self.operation_headers(base, id, &mut res);
                    res
                }
                Outcome::Succeeded => StatusCode::OK.into_response(),
                Outcome::Failed(code, message) => {
                    arm_error(StatusCode::BAD_REQUEST, &code, &message)
                }
            };
        }
        let now = rfc3339(self.cloud.clock().now());
        let mut body = json!({
            "name": id,
            "startTime": rfc3339(op.started),
        });
        match outcome {
            Outcome::InProgress => body["status"] = json!("InProgress"),
            Outcome::Succeeded => {
                body["status"] = json!("Succeeded");
                body["endTime"] = json!(now);
            }
            Outcome::Failed(code, message) => {
                body["status"] = json!("Failed");
                body["endTime"] = json!(now);
                body["error"] = json!({"code": code, "message": message});
            }
        }
        json_answer(StatusCode::OK, &body)
    }

    /// The VM and NIC that own a NIC or public IP of this name in `rg`.
    pub(crate) fn owner(
        &self,
        rg: &str,
        is: impl Fn(&CreatedNic) -> bool,
    ) -> Option<(StoredVm, CreatedNic)> {
        self.lock().vms.values().find_map(|vm| {
            if !vm.resource_group.eq_ignore_ascii_case(rg) {
                return None;
            }
            vm.nics
                .iter()
                .find(|nic| is(nic))
                .map(|nic| (vm.clone(), nic.clone()))
        })
    }

    pub(crate) fn nic(&self, rg: &str, name: &str) -> Answer {
        let Some((vm, nic)) = self.owner(rg, |nic| nic.name.eq_ignore_ascii_case(name)) else {
            return not_found("Microsoft.Network/networkInterfaces", name, rg);
        };
        if !matches!(self.view(&vm.name), Ok(Some(_))) {
            return not_found("Microsoft.Network/networkInterfaces", name, rg);
        }
        let sub = &self.settings.subscription_id;
        let base = format!(
            "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Network",
            vm.resource_group
        );
        let mut ipc_props = json!({
            "privateIPAddress": "10.0.0.4",
            "privateIPAllocationMethod": "Dynamic",
            "primary": true,
            "provisioningState": "Succeeded"
        });
        if let Some(pip) = &nic.public_ip {
            ipc_props["publicIPAddress"] = json!({"id": format!("{base}/publicIPAddresses/{pip}")});
        }
        json_answer(
            StatusCode::OK,
            &json!({
                "name": nic.name,
                "id": format!("{base}/networkInterfaces/{}", nic.name),
                "location": vm.location,
                "type": "Microsoft.Network/networkInterfaces",
                "properties": {
                    "provisioningState": "Succeeded",
                    "ipConfigurations": [{
                        "name": nic.ip_config,
                        "id": format!("{base}/networkInterfaces/{}/ipConfigurations/{}", nic.name, nic.ip_config),
                        "properties": ipc_props
                    }],
                    "virtualMachine": {"id": self.vm_id(&vm)},
                    "primary": true
                }
            }),
        )
    }

    pub(crate) fn public_ip(&self, rg: &str, name: &str) -> Answer {
        let owner = self
            .owner(rg, |nic| {
                nic.public_ip
                    .as_deref()
                    .is_some_and(|p| p.eq_ignore_ascii_case(name))
            })
            .and_then(|(vm, nic)| {
                let pip = nic.public_ip.clone()?;
                Some((vm, nic.name, nic.ip_config, pip))
            });
        let Some((vm, nic, ipc, pip)) = owner else {
            return not_found("Microsoft.Network/publicIPAddresses", name, rg);
        };
        let view = match self.view(&vm.name) {
            Ok(Some(view)) => view,
            Ok(None) => return not_found("Microsoft.Network/publicIPAddresses", name, rg),
            Err(res) => return *res,
        };
        let sub = &self.settings.subscription_id;
        let mut props = json!({
            "provisioningState": "Succeeded",
            "publicIPAddressVersion": "IPv4",
            "publicIPAllocationMethod": "Static",
            "idleTimeoutInMinutes": 4,
            "ipTags": [],
            "ipConfiguration": {
                "id": format!("/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Network/networkInterfaces/{nic}/ipConfigurations/{ipc}", vm.resource_group)
            }
        });
        if let Some(ip) = &view.public_ip {
            props["ipAddress"] = json!(ip);
        }
        json_answer(
            StatusCode::OK,
            &json!({
                "name": pip,
                "id": format!("/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Network/publicIPAddresses/{pip}", vm.resource_group),
                "location": vm.location,
                "sku": {"name": "Standard", "tier": "Regional"},
                "properties": props,
                "type": "Microsoft.Network/publicIPAddresses"
            }),
        )
    }

    /// The refusal a create or start gets while the quota window is open, as Azure words it:
    /// 409 `OperationNotAllowed`, "Operation could not be completed as it results in
    /// exceeding approved Total Regional Cores quota" with the figures (Microsoft Learn,
    /// "Resolve errors for resource quotas" and "vCPU quotas"). Azure checks the quota when
    /// a VM is created and when a deallocated VM is started (it allocates cores again).
    pub(crate) fn over_quota(&self) -> Option<Answer> {
        let now = self.cloud.clock().now();
        let until = self.lock().quota_until?;
        (until > now).then(|| {
            let fault = HttpFault::quota_exceeded();
            arm_error(StatusCode::CONFLICT, &fault.code, &fault.message)
        })
    }

    pub(crate) fn record(&self, entry: Recorded) {
        self.lock().requests.push(entry);
    }
}

/// (NIC, IP configuration, public IP) names a VM body asks ARM to create.
pub(crate) fn public_ips(body: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let nics = body
        .pointer("/properties/networkProfile/networkInterfaceConfigurations")
        .and_then(Value::as_array);
    for nic in nics.into_iter().flatten() {
        let nic_name = nic.get("name").and_then(Value::as_str).unwrap_or_default();
        let ipcs = nic
            .pointer("/properties/ipConfigurations")
            .and_then(Value::as_array);
        for ipc in ipcs.into_iter().flatten() {
            let ipc_name = ipc.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some(pip) = ipc
                .pointer("/properties/publicIPAddressConfiguration/name")
                .and_then(Value::as_str)
            {
                out.push((nic_name.to_owned(), ipc_name.to_owned(), pip.to_owned()));
            }
        }
    }
    out
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A stable GUID-shaped ID from a name and a counter.
pub(crate) fn guid(seed: &str, n: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let x = h ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (x >> 32) as u32,
        (x >> 16) as u16,
        (x & 0xfff) as u16,
        ((x >> 20) & 0xfff) as u16,
        x.rotate_left(17) & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_look_like_guids() {
        let g = guid("vm", 3);
        assert_eq!(g.len(), 36, "{g}");
        assert_ne!(g, guid("vm", 4));
    }
}
