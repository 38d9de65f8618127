//! Azure Resource Graph's `Resources` operation, `POST
//! /providers/Microsoft.ResourceGraph/resources` (azure-rest-api-specs,
//! `specification/resourcegraph/resource-manager/Microsoft.ResourceGraph/stable/2022-10-01/resourcegraph.json`
//! and its `ResourcesFirstPageQuery` / `ResourcesNextPageQuery` examples), as far as vmpool
//! uses it, taking the harsher reading where Azure's behaviour is not pinned down:
//!
//! - The body is `{"subscriptions": [...], "query": "...", "options": {"resultFormat",
//!   "$top", "$skipToken"}}`; the answer `{"totalRecords", "count", "resultTruncated",
//!   "$skipToken"?, "data": [...]}` with `data` an object array. `$top` is 1..=1000 (the
//!   specification's bounds) and defaults to 100 rows; `$skipToken` is opaque and good
//!   only for the query that made it.
//! - Only one query shape is understood: the VMs of one resource group, projected to
//!   columns among `id`, `name`, `type`, `location`, `resourceGroup`, `subscriptionId`,
//!   `tags`, `x = tostring(properties.provisioningState)` and `x =
//!   tostring(properties.extended.instanceView.powerState.code)`, optionally `order by id
//!   asc`. Anything else gets Resource Graph's 400 envelope (`BadRequest` with an
//!   `InvalidQuery` detail, as field reports show it, e.g. azure-powershell #13762). `id`
//!   must be projected: without it Resource Graph cannot page (the "Next page query"
//!   example: "id field is required ... to return the pages in stable sorted fashion").
//! - Results are scoped to the subscriptions named (only the fake's own exists) and to the
//!   resource group in the query; `type` and `resourceGroup` come back lower-cased.
//! - Resource Graph follows ARM with a lag: the answer is the cloud as it was
//!   [`crate::ArmFake::graph_lag_secs`] ago (set per test with
//!   [`crate::ArmFake::set_graph_lag`]), so a VM created in the last seconds is
//!   missing and one deleted since is still there.
//! - Throttling is per user, about 15 queries per 5 s ("Guidance for throttled requests in
//!   Azure Resource Graph"): every answer carries `x-ms-user-quota-remaining` and
//!   `x-ms-user-quota-resets-after` (`hh:mm:ss`); past the quota the answer is 429 with
//!   those headers and no `Retry-After`. Scripted faults ([`crate::FakeOp::GraphQuery`])
//!   answer first, as for every other operation.

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use vmpool::compute::{Power, Provisioning};

use crate::ArmFake;
use crate::cloud::{guid, rfc3339};
use crate::wire::json_answer;

/// The most rows one page may hold (`$top`'s maximum in the specification).
pub const GRAPH_MAX_TOP: i64 = 1000;

/// Rows per page when the request names no `$top`.
pub const GRAPH_DEFAULT_TOP: i64 = 100;

/// Resource Graph's quota window.
const QUOTA_WINDOW_SECS: i64 = 5;

/// A column the fake can project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Id,
    Name,
    Type,
    Location,
    ResourceGroup,
    SubscriptionId,
    Tags,
    ProvisioningState,
    PowerState,
}

/// The one query shape the fake understands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VmQuery {
    resource_group: String,
    columns: Vec<(String, Column)>,
}

/// Collapses runs of whitespace to one space.
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A whole KQL string literal (single or double quotes, backslash escapes).
fn string_literal(s: &str) -> Option<String> {
    let mut chars = s.chars();
    let quote = chars.next().filter(|q| matches!(q, '\'' | '"'))?;
    let mut out = String::new();
    let mut escaped = false;
    let mut closed = false;
    for c in chars {
        if closed {
            return None;
        }
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            closed = true;
        } else {
            out.push(c);
        }
    }
    closed.then_some(out)
}

fn column(expr: &str) -> Option<Column> {
    Some(match expr {
        "id" => Column::Id,
        "name" => Column::Name,
        "type" => Column::Type,
        "location" => Column::Location,
        "resourceGroup" => Column::ResourceGroup,
        "subscriptionId" => Column::SubscriptionId,
        "tags" => Column::Tags,
        "tostring(properties.provisioningState)" => Column::ProvisioningState,
        "tostring(properties.extended.instanceView.powerState.code)" => Column::PowerState,
        _ => return None,
    })
}

fn parse_query(query: &str) -> Result<VmQuery, String> {
    let stages: Vec<String> = query.split('|').map(squeeze).collect();
    let [table, of_type, in_group, project, rest @ ..] = stages.as_slice() else {
        return Err(
            "expected: Resources | where type =~ ... | where resourceGroup =~ ... | project ..."
                .into(),
        );
    };
    if !table.eq_ignore_ascii_case("resources") {
        return Err(format!("unknown table '{table}'"));
    }
    let type_literal = of_type
        .strip_prefix("where type =~ ")
        .and_then(string_literal)
        .ok_or_else(|| format!("unsupported filter '{of_type}'"))?;
    if !type_literal.eq_ignore_ascii_case("microsoft.compute/virtualmachines") {
        return Err(format!("unsupported resource type '{type_literal}'"));
    }
    let resource_group = in_group
        .strip_prefix("where resourceGroup =~ ")
        .and_then(string_literal)
        .ok_or_else(|| format!("unsupported filter '{in_group}'"))?;
    let list = project
        .strip_prefix("project ")
        .ok_or_else(|| format!("unsupported operator '{project}'"))?;
    let mut columns = Vec::new();
    for item in list.split(',').map(str::trim) {
        let (alias, expr) = match item.split_once('=') {
            Some((alias, expr)) => (alias.trim(), expr.trim()),
            None => (item, item),
        };
        let valid_alias = !alias.is_empty()
            && alias.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !alias.starts_with(|c: char| c.is_ascii_digit());
        let col = column(expr).filter(|_| valid_alias);
        match col {
            Some(col) => columns.push((alias.to_owned(), col)),
            None => return Err(format!("unsupported projection '{item}'")),
        }
    }
    if !columns
        .iter()
        .any(|(alias, c)| *c == Column::Id && alias == "id")
    {
        return Err("the projection must keep the 'id' column for paging".into());
    }
    match rest {
        [] => {}
        [order] if order == "order by id asc" || order == "sort by id asc" => {}
        [other, ..] => return Err(format!("unsupported operator '{other}'")),
    }
    Ok(VmQuery {
        resource_group,
        columns,
    })
}

/// Resource Graph's 400: `BadRequest` with an `InvalidQuery` detail.
fn bad_request(now: OffsetDateTime, detail_code: &str, detail: &str) -> Response {
    let body = json!({"error": {
        "code": "BadRequest",
        "message": format!(
            "Please provide below info when asking for support: timestamp = {}, correlationId = {}.",
            rfc3339(now),
            guid(detail, 0)
        ),
        "details": [
            {
                "code": "InvalidQuery",
                "message": "Query is invalid. Please refer to the documentation for the Azure Resource Graph service and fix the error before retrying."
            },
            {"code": detail_code, "message": detail}
        ]
    }});
    json_answer(StatusCode::BAD_REQUEST, &body)
}

/// A cheap stable hash, to tie a skip token to its query.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn skip_token(offset: usize, key: u64) -> String {
    format!("{offset:x}.{key:016x}")
}

fn read_skip_token(token: &str, key: u64) -> Option<usize> {
    let (offset, for_key) = token.split_once('.')?;
    (u64::from_str_radix(for_key, 16).ok()? == key)
        .then(|| usize::from_str_radix(offset, 16).ok())
        .flatten()
}

fn quota_headers(res: &mut Response, remaining: u32, resets_after_secs: i64) {
    let headers = res.headers_mut();
    headers.insert("x-ms-user-quota-remaining", HeaderValue::from(remaining));
    let secs = resets_after_secs.clamp(0, 59);
    if let Ok(v) = HeaderValue::from_str(&format!("00:00:{secs:02}")) {
        headers.insert("x-ms-user-quota-resets-after", v);
    }
}

impl ArmFake {
    /// Spends one query of the user's quota: `Ok` with (remaining, seconds to reset), or
    /// `Err` with the seconds to wait.
    fn spend_quota(&self, now: OffsetDateTime) -> Result<(u32, i64), i64> {
        let window = time::Duration::seconds(QUOTA_WINDOW_SECS);
        let mut state = self.lock();
        let (start, used) = match state.graph_quota {
            Some((start, used)) if now < start + window => (start, used),
            _ => (now, 0),
        };
        let resets = (start + window - now).whole_seconds().max(1);
        let quota = self.settings.graph_quota;
        if used >= quota {
            state.graph_quota = Some((start, used));
            return Err(resets);
        }
        state.graph_quota = Some((start, used + 1));
        Ok((quota - used - 1, resets))
    }

    /// Serves one Resource Graph query.
    pub(crate) fn graph_query(&self, body: &[u8]) -> Response {
        let now = self.cloud.clock().now();
        let (remaining, resets) = match self.spend_quota(now) {
            Ok(left) => left,
            Err(wait) => {
                let mut res = json_answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({"error": {
                        "code": "RateLimiting",
                        "message": "Client application has been throttled and should not attempt to repeat the request until an amount of time has elapsed."
                    }}),
                );
                quota_headers(&mut res, 0, wait);
                return res;
            }
        };
        let mut res = self.graph_answer(body, now);
        quota_headers(&mut res, remaining, resets);
        res
    }

    fn graph_answer(&self, body: &[u8], now: OffsetDateTime) -> Response {
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return bad_request(
                now,
                "InvalidRequestContent",
                "The request content could not be deserialized.",
            );
        };
        let Some(query) = request.get("query").and_then(Value::as_str) else {
            return bad_request(now, "MissingQuery", "The 'query' property is required.");
        };
        let subscriptions: Vec<&str> = request
            .get("subscriptions")
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if subscriptions.is_empty() || request.get("managementGroups").is_some() {
            return bad_request(
                now,
                "UnsupportedScope",
                "This fake answers subscription-scoped queries only.",
            );
        }
        let options = request.get("options").cloned().unwrap_or(json!({}));
        let Some(options) = options.as_object() else {
            return bad_request(now, "InvalidOptions", "'options' must be an object.");
        };
        if let Some(format) = options.get("resultFormat")
            && format.as_str() != Some("objectArray")
        {
            return bad_request(
                now,
                "UnsupportedResultFormat",
                "This fake answers resultFormat 'objectArray' only.",
            );
        }
        if options.contains_key("$skip") {
            return bad_request(now, "UnsupportedOption", "This fake does not serve $skip.");
        }
        let top = match options.get("$top") {
            None => GRAPH_DEFAULT_TOP,
            Some(top) => match top.as_i64() {
                Some(top) if (1..=GRAPH_MAX_TOP).contains(&top) => top,
                _ => {
                    return bad_request(
                        now,
                        "InvalidParameter",
                        "'$top' must be an integer from 1 to 1000.",
                    );
                }
            },
        };
        let parsed = match parse_query(query) {
            Ok(parsed) => parsed,
            Err(detail) => return bad_request(now, "ParserFailure", &detail),
        };
        let mut scope: Vec<String> = subscriptions
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        scope.sort();
        let key = fnv(&[&squeeze(query), &scope.join(",")]);
        let offset = match options.get("$skipToken") {
            None => 0,
            Some(token) => match token.as_str().and_then(|t| read_skip_token(t, key)) {
                Some(offset) => offset,
                None => {
                    return bad_request(
                        now,
                        "InvalidSkipToken",
                        "The $skipToken is not valid for this query.",
                    );
                }
            },
        };
        let sub = &self.settings.subscription_id;
        let in_scope = subscriptions.iter().any(|s| s.eq_ignore_ascii_case(sub));
        let lag =
            time::Duration::seconds(i64::try_from(self.graph_lag_secs()).unwrap_or(i64::MAX / 2))
                .min(vmpool::compute::sim::HISTORY);
        let views = match self.cloud.list_as_of(now - lag) {
            Ok(views) => views,
            Err(e) => return crate::wire::from_sim_error(&e),
        };
        let placed = self.lock().placed.clone();
        let mut rows: Vec<(String, Value)> = Vec::new();
        for view in views.iter().filter(|_| in_scope) {
            let Some((rg, location)) = placed.get(&view.name.to_ascii_lowercase()) else {
                continue;
            };
            if !rg.eq_ignore_ascii_case(&parsed.resource_group) {
                continue;
            }
            let id = format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{}",
                view.name
            );
            let mut row = Map::new();
            for (alias, col) in &parsed.columns {
                let value = match col {
                    Column::Id => json!(id),
                    Column::Name => json!(view.name),
                    Column::Type => json!("microsoft.compute/virtualmachines"),
                    Column::Location => json!(location),
                    Column::ResourceGroup => json!(rg.to_ascii_lowercase()),
                    Column::SubscriptionId => json!(sub),
                    Column::Tags => json!(view.tags),
                    Column::ProvisioningState => json!(match &view.status.provisioning {
                        Provisioning::Creating => "Creating",
                        Provisioning::Succeeded => "Succeeded",
                        Provisioning::Failed(_) => "Failed",
                        Provisioning::Deleting => "Deleting",
                    }),
                    // `tostring()` of an absent power state is the empty string.
                    Column::PowerState => json!(match view.status.power {
                        Power::Starting => "PowerState/starting",
                        Power::Running => "PowerState/running",
                        Power::Stopping => "PowerState/stopping",
                        Power::Stopped => "PowerState/stopped",
                        Power::Deallocating => "PowerState/deallocating",
                        Power::Deallocated => "PowerState/deallocated",
                        Power::Unknown => "",
                    }),
                };
                row.insert(alias.clone(), value);
            }
            rows.push((id.to_ascii_lowercase(), Value::Object(row)));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let total = rows.len();
        let size = usize::try_from(top).unwrap_or(1);
        let page: Vec<Value> = rows
            .into_iter()
            .skip(offset)
            .take(size)
            .map(|(_, row)| row)
            .collect();
        let mut answer = json!({
            "totalRecords": total,
            "count": page.len(),
            "resultTruncated": "false",
            "facets": [],
            "data": page,
        });
        if offset.saturating_add(size) < total {
            answer["$skipToken"] = json!(skip_token(offset + size, key));
        }
        json_answer(StatusCode::OK, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMPOOL: &str = "Resources | where type =~ 'microsoft.compute/virtualmachines' | where resourceGroup =~ 'games' | project id, name, tags, provisioningState = tostring(properties.provisioningState), powerState = tostring(properties.extended.instanceView.powerState.code) | order by id asc";

    #[test]
    fn the_vm_query_parses_and_anything_else_is_refused() {
        let q = parse_query(VMPOOL).unwrap();
        assert_eq!(q.resource_group, "games");
        assert_eq!(q.columns.len(), 5);
        let spaced = VMPOOL.replace(" | ", "\n|   ");
        assert_eq!(parse_query(&spaced).unwrap(), q);
        let quoted = VMPOOL.replace("'games'", r"'it\'s'");
        assert_eq!(parse_query(&quoted).unwrap().resource_group, "it's");
        for bad in [
            "",
            "Resources",
            "Resources | project id",
            &VMPOOL.replace("virtualmachines", "disks"),
            &VMPOOL.replace("project id, ", "project "),
            &VMPOOL.replace("order by id asc", "limit 5"),
            &VMPOOL.replace("tags,", "tags, secret = properties.osProfile,"),
            &VMPOOL.replace("'games'", "'games"),
        ] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn skip_tokens_hold_only_for_their_query() {
        let t = skip_token(1000, 7);
        assert_eq!(read_skip_token(&t, 7), Some(1000));
        assert_eq!(read_skip_token(&t, 8), None);
        assert_eq!(read_skip_token("nonsense", 7), None);
    }
}
