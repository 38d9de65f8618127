//! The ARM adapter against the ARM fake over real sockets: every operation, every scripted
//! fault, the wire protocol itself, and vmpool end to end with `VMPOOL_COMPUTE=arm`.
//! Time moves on a `ManualClock` shared by the fake and the pool, so nothing sleeps (only
//! the slow-answer test waits, for a 200 ms client timeout).

use std::time::Duration;

use serde_json::{Value, json};
use time::Duration as Span;
use tokio::net::TcpListener;
use vmpool::compute::arm::ArmCompute;
use vmpool::compute::{Compute, ComputeError, Power, Provisioning};
use vmpool::domain::VmId;
use vmpool_arm_fake::{ArmFake, FakeOp, FakeSettings, HttpFault, validate_vm_body};

use crate::support::arm::{
    Fake, SUB, TOKEN, arm_client, arm_config, fake_settings, quick, spawn_fake, spawn_fake_with,
    spec, statuses,
};
use crate::support::spawn_wired;

fn id(s: &str) -> VmId {
    VmId::parse(s).unwrap()
}

/// Creates `name` for `pool` in the resource group "elsewhere", beside the pool's own.
async fn create_elsewhere(f: &Fake, pool: &str, name: &str) {
    let mut elsewhere = arm_config(&f.base, TOKEN);
    elsewhere.resource_group = "elsewhere".into();
    ArmCompute::new(&elsewhere, pool, quick())
        .unwrap()
        .create(&id(name), &spec())
        .await
        .unwrap();
}

/// Creates `count` VMs (`p-0000`, `p-0001`, ...) 16 at a time; each create's result.
async fn create_numbered(arm: &ArmCompute, count: u32) -> Vec<Result<(), ComputeError>> {
    use futures::StreamExt;
    futures::stream::iter(0..count)
        .map(|n| async move { arm.create(&id(&format!("p-{n:04}")), &spec()).await })
        .buffer_unordered(16)
        .collect()
        .await
}

#[tokio::test]
async fn every_operation_round_trips_through_the_fake() {
    let f = spawn_fake(50).await;
    let arm = arm_client(&f, "pool1");
    let vm = id("pool1-vm1");

    arm.create(&vm, &spec()).await.unwrap();
    let puts = f.fake.accepted(FakeOp::PutVm);
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].status, 201);
    let body = puts[0].body.as_ref().unwrap();
    assert_eq!(validate_vm_body(body, "pool1-vm1"), Ok(()));
    assert_eq!(body["tags"]["vmpool"], "pool1");
    assert!(puts[0].query.contains("api-version=2024-07-01"));

    let s = arm.status(&vm).await.unwrap().unwrap();
    assert_eq!(s.provisioning, Provisioning::Creating);
    assert!(!s.is_up());
    arm.create(&vm, &spec()).await.unwrap();
    assert_eq!(
        f.fake.accepted(FakeOp::PutVm)[1].status,
        200,
        "a repeated PUT"
    );

    f.clock.advance(Span::seconds(150));
    assert!(arm.status(&vm).await.unwrap().unwrap().is_up());
    // The resource group's list: tags and provisioning, no power state.
    let listed = arm.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, vm);
    assert!(listed[0].tagged);
    assert_eq!(listed[0].status.provisioning, Provisioning::Succeeded);
    assert_eq!(listed[0].status.power, Power::Unknown);
    assert!(
        listed[0]
            .resource_id
            .eq_ignore_ascii_case(&arm.resource_id(&vm))
    );
    let list_req = f.fake.accepted(FakeOp::ListVms);
    assert!(
        list_req[0].path.contains("/resourceGroups/games/"),
        "{list_req:?}"
    );
    // The sweep: a Resource Graph query with power states and tags, as they were a few
    // seconds ago.
    let power = arm.list_power().await.unwrap();
    assert_eq!(power.len(), 1);
    assert_eq!(
        power[0].status.provisioning,
        Provisioning::Creating,
        "Resource Graph lags"
    );
    f.clock.advance(Span::seconds(5));
    let power = arm.list_power().await.unwrap();
    assert!(power[0].status.is_up());
    assert!(power[0].tagged);
    let graph = f.fake.accepted(FakeOp::GraphQuery);
    assert_eq!(graph.len(), 2);
    assert_eq!(
        graph[0].path,
        "/providers/Microsoft.ResourceGraph/resources"
    );
    assert!(graph[0].query.contains("api-version=2022-10-01"));
    let sent = graph[0].body.as_ref().unwrap();
    assert_eq!(sent["subscriptions"], json!([SUB]));
    assert_eq!(sent["options"]["$top"], 1000);
    assert_eq!(
        f.fake.accepted(FakeOp::ListVms).len(),
        1,
        "no subscription-wide list"
    );
    // The public IP is found by following IDs, not by guessing names.
    let ip = arm.public_ip(&vm).await.unwrap().unwrap();
    assert_eq!(
        Some(ip.clone()),
        f.fake.cloud().get("pool1-vm1").unwrap().unwrap().public_ip
    );
    let ip_req = f.fake.accepted(FakeOp::GetPublicIp);
    assert!(!ip_req[0].path.contains("pool1-vm1"), "{ip_req:?}");
    assert!(
        !f.fake.accepted(FakeOp::GetNic)[0]
            .path
            .contains("pool1-vm1")
    );

    arm.deallocate(&vm).await.unwrap();
    assert_eq!(f.fake.accepted(FakeOp::Deallocate)[0].status, 202);
    assert_eq!(
        arm.status(&vm).await.unwrap().unwrap().power,
        Power::Deallocating
    );
    f.clock.advance(Span::seconds(60));
    assert!(arm.status(&vm).await.unwrap().unwrap().is_deallocated());
    assert_eq!(
        arm.public_ip(&vm).await.unwrap(),
        Some(ip),
        "a static IP stays"
    );

    arm.start(&vm).await.unwrap();
    assert_eq!(f.fake.accepted(FakeOp::Start)[0].status, 202);
    f.clock.advance(Span::seconds(60));
    assert!(arm.status(&vm).await.unwrap().unwrap().is_up());

    arm.delete(&vm).await.unwrap();
    assert_eq!(
        arm.status(&vm).await.unwrap().unwrap().provisioning,
        Provisioning::Deleting
    );
    f.clock.advance(Span::seconds(30));
    assert_eq!(arm.status(&vm).await.unwrap(), None);
    assert_eq!(
        arm.public_ip(&vm).await.unwrap(),
        None,
        "deleted with the VM"
    );
    assert!(arm.list().await.unwrap().is_empty());
    arm.delete(&vm).await.unwrap();
    assert_eq!(arm.start(&vm).await, Err(ComputeError::NotFound));
    assert!(arm.describe().contains("static token"));
    assert!(!arm.describe().contains(TOKEN));
    assert!(
        arm.resource_id(&vm).ends_with(
            "/resourceGroups/games/providers/Microsoft.Compute/virtualMachines/pool1-vm1"
        )
    );
}

#[tokio::test]
async fn the_list_pages_and_keeps_to_its_own_resource_group_and_tags_its_pool() {
    let f = spawn_fake(2).await;
    let mine = arm_client(&f, "mine");
    let theirs = arm_client(&f, "theirs");
    for n in 0..5 {
        mine.create(&id(&format!("mine-{n}")), &spec())
            .await
            .unwrap();
    }
    theirs.create(&id("theirs-0"), &spec()).await.unwrap();
    create_elsewhere(&f, "mine", "mine-elsewhere").await;
    f.fake.clear_requests();

    let mut names: Vec<String> = mine
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.tagged)
        .map(|l| l.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["mine-0", "mine-1", "mine-2", "mine-3", "mine-4"]);
    assert_eq!(
        f.fake.accepted(FakeOp::ListVms).len(),
        3,
        "6 VMs of the resource group in pages of 2"
    );
    assert!(f.fake.accepted(FakeOp::GetVm).is_empty(), "no GET per VM");
}

#[tokio::test]
async fn throttling_gives_retry_after() {
    let f = spawn_fake(50).await;
    let arm = arm_client(&f, "p");
    f.fake.fail_next(FakeOp::PutVm, 1, HttpFault::throttled(17));
    assert_eq!(
        arm.create(&id("p-1"), &spec()).await,
        Err(ComputeError::Throttled {
            retry_after: Duration::from_secs(17)
        })
    );
    assert_eq!(f.fake.requests().len(), 1, "a 429 is not retried at once");
    f.fake
        .fail_next(FakeOp::ListVms, 1, HttpFault::throttled(3));
    assert_eq!(
        arm.list().await,
        Err(ComputeError::Throttled {
            retry_after: Duration::from_secs(3)
        })
    );
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let f = spawn_fake(50).await;
    let arm = arm_client(&f, "p");
    arm.create(&id("p-1"), &spec()).await.unwrap();
    f.clock.advance(Span::seconds(150));
    arm.deallocate(&id("p-1")).await.unwrap();
    f.clock.advance(Span::seconds(60));
    f.fake.clear_requests();

    f.fake
        .fail_next(FakeOp::Start, 2, HttpFault::server_error());
    arm.start(&id("p-1")).await.unwrap();
    let starts: Vec<u16> = f.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(starts, [500, 500, 202]);

    f.fake.clear_requests();
    f.fake
        .fail_next(FakeOp::GetVm, 3, HttpFault::server_error());
    let err = arm.status(&id("p-1")).await.unwrap_err();
    assert!(
        matches!(&err, ComputeError::Unavailable(m) if m.contains("500")),
        "{err:?}"
    );
    assert_eq!(f.fake.requests().len(), 3, "one try and two retries");
}

#[tokio::test]
async fn conflicts_quota_and_other_refusals_are_distinct() {
    let f = spawn_fake(50).await;
    let arm = arm_client(&f, "p");
    arm.create(&id("p-1"), &spec()).await.unwrap();

    f.fake
        .fail_next(FakeOp::Deallocate, 1, HttpFault::conflict());
    assert!(matches!(
        arm.deallocate(&id("p-1")).await,
        Err(ComputeError::Conflict(_))
    ));
    // The fake's own model refuses too: a deallocate while the create is still running.
    arm.deallocate(&id("p-1")).await.unwrap_err();

    f.fake
        .fail_next(FakeOp::PutVm, 1, HttpFault::quota_exceeded());
    let err = arm.create(&id("p-2"), &spec()).await.unwrap_err();
    assert!(
        matches!(&err, ComputeError::Rejected { code, message } if code == "OperationNotAllowed" && message.contains("quota")),
        "{err:?}"
    );
    assert!(!err.is_transient(), "recorded on the VM as Failed");

    let mut wrong = arm_config(&f.base, "not-the-token");
    wrong.resource_group = "games".into();
    let intruder = ArmCompute::new(&wrong, "p", quick()).unwrap();
    // 401 is about the caller, not the VM: nothing about the VM may be concluded from it.
    assert!(matches!(
        intruder.create(&id("p-3"), &spec()).await,
        Err(ComputeError::Suspect { code, .. }) if code == "InvalidAuthenticationToken"
    ));
    // So is a 404 for the resource group: only ResourceNotFound says a VM is gone.
    f.fake.fail_next(
        FakeOp::GetVm,
        1,
        HttpFault::resource_group_not_found("games"),
    );
    assert!(matches!(
        arm.status(&id("p-1")).await,
        Err(ComputeError::Suspect { code, .. }) if code == "ResourceGroupNotFound"
    ));
    f.fake
        .fail_next(FakeOp::GetVm, 1, HttpFault::authorization_failed());
    assert!(matches!(
        arm.status(&id("p-1")).await,
        Err(ComputeError::Suspect { code, .. }) if code == "AuthorizationFailed"
    ));
    assert_eq!(
        arm.status(&id("nobody")).await,
        Ok(None),
        "ResourceNotFound"
    );
}

#[tokio::test]
async fn provisioning_that_ends_failed_is_reported_with_its_code() {
    let f = spawn_fake(50).await;
    let arm = arm_client(&f, "p");
    f.fake
        .provisioning_fails_next("AllocationFailed", "no capacity for this size");
    arm.create(&id("p-1"), &spec()).await.unwrap();
    f.clock.advance(Span::seconds(150));
    let s = arm.status(&id("p-1")).await.unwrap().unwrap();
    assert_eq!(
        s.provisioning,
        Provisioning::Failed("AllocationFailed: no capacity for this size".into())
    );
    // The resource group's list says Failed without the instance view's detail.
    let listed = arm.list().await.unwrap();
    assert!(matches!(
        listed[0].status.provisioning,
        Provisioning::Failed(_)
    ));
}

#[tokio::test]
async fn slow_answers_within_the_limit_succeed_and_beyond_it_are_unavailable() {
    let f = spawn_fake(50).await;
    let mut options = quick();
    options.call_timeout = Duration::from_millis(200);
    let arm = ArmCompute::new(&arm_config(&f.base, TOKEN), "p", options).unwrap();
    arm.create(&id("p-1"), &spec()).await.unwrap();

    f.fake
        .delay_next(FakeOp::GetVm, 1, Duration::from_millis(20));
    assert!(arm.status(&id("p-1")).await.unwrap().is_some());

    f.fake.delay_next(FakeOp::Start, 1, Duration::from_secs(3));
    let started = std::time::Instant::now();
    let err = arm.start(&id("p-1")).await.unwrap_err();
    assert!(matches!(err, ComputeError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded in time"
    );
}

#[tokio::test]
async fn a_vm_deleted_behind_our_back_is_not_found() {
    let f = spawn_fake(50).await;
    let arm = arm_client(&f, "p");
    arm.create(&id("p-1"), &spec()).await.unwrap();
    f.clock.advance(Span::seconds(150));
    f.fake.delete_behind_our_back("p-1");
    assert_eq!(arm.status(&id("p-1")).await, Ok(None));
    assert_eq!(
        arm.deallocate(&id("p-1")).await,
        Err(ComputeError::NotFound)
    );
    assert_eq!(arm.start(&id("p-1")).await, Err(ComputeError::NotFound));
    assert_eq!(arm.public_ip(&id("p-1")).await, Ok(None));
    assert!(arm.list().await.unwrap().is_empty());
    assert_eq!(arm.delete(&id("p-1")).await, Ok(()));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let arm = ArmCompute::new(&arm_config(&base, TOKEN), "p", quick()).unwrap();
    assert!(matches!(
        arm.create(&id("p-1"), &spec()).await,
        Err(ComputeError::Unavailable(_))
    ));
}

/// One request spoken by hand and what ARM answers it.
struct Check {
    /// What the row checks.
    what: &'static str,
    method: &'static str,
    /// Path and query, after the fake's base URL; `{vm}` is the VM's URL path.
    path: &'static str,
    body: Body,
    /// Whether the request carries the bearer token.
    auth: bool,
    /// Seconds the fake's clock moves before the request.
    advance: i64,
    status: u16,
    /// ARM's `error.code`, or a JSON pointer and the value it must hold.
    expect: Expect,
}

enum Body {
    None,
    /// The adapter's own PUT body.
    Good,
    /// The PUT body with no SSH key.
    NoKey,
    Raw(&'static str),
}

enum Expect {
    Nothing,
    Code(&'static str),
    Field(&'static str, &'static str),
    Header(&'static str),
}

/// The wire protocol, spoken by hand: every row is a request and its answer, in order (the
/// fake's state carries from row to row).
#[tokio::test]
async fn the_fake_speaks_arm() {
    use Body::{Good, NoKey, Raw};
    use Expect::{Code, Field, Header, Nothing};
    let f = spawn_fake(50).await;
    let http = reqwest::Client::new();
    let vm_path = format!(
        "/subscriptions/{SUB}/resourceGroups/games/providers/Microsoft.Compute/virtualMachines/hand-1"
    );
    let good = serde_json::to_value(
        vmpool::compute::arm::vm_model(&arm_config(&f.base, TOKEN), &id("hand-1"), "p").unwrap(),
    )
    .unwrap();
    let mut no_key = good.clone();
    no_key["properties"]["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"] = json!([]);
    let checks = [
        Check {
            what: "no token",
            method: "PUT",
            path: "{vm}?api-version=2024-07-01",
            body: Good,
            auth: false,
            advance: 0,
            status: 401,
            expect: Code("AuthenticationFailed"),
        },
        Check {
            what: "no api-version",
            method: "PUT",
            path: "{vm}",
            body: Good,
            auth: true,
            advance: 0,
            status: 400,
            expect: Code("MissingApiVersionParameter"),
        },
        Check {
            what: "unknown api-version",
            method: "GET",
            path: "{vm}?api-version=1999-01-01",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 400,
            expect: Code("InvalidApiVersionParameter"),
        },
        Check {
            what: "a body that is not JSON",
            method: "PUT",
            path: "{vm}?api-version=2024-07-01",
            body: Raw("{not json"),
            auth: true,
            advance: 0,
            status: 400,
            expect: Code("InvalidRequestContent"),
        },
        Check {
            what: "no SSH key with passwords off",
            method: "PUT",
            path: "{vm}?api-version=2024-07-01",
            body: NoKey,
            auth: true,
            advance: 0,
            status: 400,
            expect: Code("InvalidParameter"),
        },
        Check {
            what: "a create",
            method: "PUT",
            path: "{vm}?api-version=2024-07-01",
            body: Good,
            auth: true,
            advance: 0,
            status: 201,
            expect: Field("/properties/provisioningState", "Creating"),
        },
        Check {
            what: "the operation header",
            method: "PUT",
            path: "{vm}?api-version=2024-07-01",
            body: Good,
            auth: true,
            advance: 0,
            status: 200,
            expect: Header("azure-asyncoperation"),
        },
        Check {
            what: "the resource type",
            method: "GET",
            path: "{vm}?api-version=2024-07-01",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 200,
            expect: Field("/type", "Microsoft.Compute/virtualMachines"),
        },
        Check {
            what: "provisioned after the create's latency",
            method: "GET",
            path: "{vm}/instanceView?api-version=2024-07-01",
            body: Body::None,
            auth: true,
            advance: 150,
            status: 200,
            expect: Field("/statuses/1/code", "PowerState/running"),
        },
        Check {
            what: "a power-off",
            method: "POST",
            path: "{vm}/powerOff?api-version=2024-07-01",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 202,
            expect: Header("location"),
        },
        Check {
            what: "stopped",
            method: "GET",
            path: "{vm}?api-version=2024-07-01&$expand=instanceView",
            body: Body::None,
            auth: true,
            advance: 60,
            status: 200,
            expect: Field(
                "/properties/instanceView/statuses/1/code",
                "PowerState/stopped",
            ),
        },
        Check {
            what: "the listing of the resource group has tags",
            method: "GET",
            path: "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/games/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 200,
            expect: Field("/value/0/tags/vmpool", "p"),
        },
        Check {
            what: "instanceView on a resource group's list needs a $filter",
            method: "GET",
            path: "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/games/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01&$expand=instanceView",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 400,
            expect: Code("InvalidParameter"),
        },
        Check {
            what: "statusOnly carries the power state",
            method: "GET",
            path: "/subscriptions/00000000-0000-0000-0000-0000000000aa/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01&statusOnly=true",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 200,
            expect: Field(
                "/value/0/properties/instanceView/statuses/1/code",
                "PowerState/stopped",
            ),
        },
        Check {
            what: "a guessed public IP name",
            method: "GET",
            path: "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/games/providers/Microsoft.Network/publicIPAddresses/hand-1-ip?api-version=2024-05-01",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 404,
            expect: Code("ResourceNotFound"),
        },
        Check {
            what: "a guessed NIC name",
            method: "GET",
            path: "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/games/providers/Microsoft.Network/networkInterfaces/hand-1-nic?api-version=2024-05-01",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 404,
            expect: Code("ResourceNotFound"),
        },
        Check {
            what: "a delete",
            method: "DELETE",
            path: "{vm}?api-version=2024-07-01",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 202,
            expect: Header("azure-asyncoperation"),
        },
        Check {
            what: "deleting what is gone",
            method: "DELETE",
            path: "{vm}?api-version=2024-07-01",
            body: Body::None,
            auth: true,
            advance: 30,
            status: 204,
            expect: Nothing,
        },
        Check {
            what: "a VM that is gone",
            method: "GET",
            path: "{vm}?api-version=2024-07-01",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 404,
            expect: Code("ResourceNotFound"),
        },
        Check {
            what: "a path ARM does not have",
            method: "GET",
            path: "/nothing/here",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 404,
            expect: Code("InvalidResourceType"),
        },
        Check {
            what: "another subscription",
            method: "GET",
            path: "/subscriptions/ffffffff-0000-0000-0000-000000000000/resourceGroups/games/providers/Microsoft.Compute/virtualMachines/hand-1?api-version=2024-07-01",
            body: Body::None,
            auth: true,
            advance: 0,
            status: 404,
            expect: Code("SubscriptionNotFound"),
        },
    ];
    for c in checks {
        f.clock.advance(Span::seconds(c.advance));
        let url = format!("{}{}", f.base, c.path.replace("{vm}", &vm_path));
        let mut req = http.request(
            reqwest::Method::from_bytes(c.method.as_bytes()).unwrap(),
            url,
        );
        if c.auth {
            req = req.bearer_auth(TOKEN);
        }
        req = match c.body {
            Body::None => req,
            Good => req.json(&good),
            NoKey => req.json(&no_key),
            Raw(text) => req.header("content-type", "application/json").body(text),
        };
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let json: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap_or(Value::Null);
        assert_eq!(status, c.status, "{}: {json}", c.what);
        match c.expect {
            Nothing => {}
            Code(code) => assert_eq!(json["error"]["code"], code, "{}", c.what),
            Field(ptr, want) => {
                assert_eq!(json.pointer(ptr), Some(&json!(want)), "{}: {json}", c.what)
            }
            Header(name) => assert!(headers.contains_key(name), "{}: {headers:?}", c.what),
        }
    }
}

/// Long-running operations: the `Azure-AsyncOperation` URL reports progress, the `Location`
/// URL answers 202 while in progress.
#[tokio::test]
async fn operation_urls_report_progress() {
    let f = spawn_fake(50).await;
    let http = reqwest::Client::new();
    let vm_url = format!(
        "{}/subscriptions/{SUB}/resourceGroups/games/providers/Microsoft.Compute/virtualMachines/hand-1",
        f.base
    );
    let good = serde_json::to_value(
        vmpool::compute::arm::vm_model(&arm_config(&f.base, TOKEN), &id("hand-1"), "p").unwrap(),
    )
    .unwrap();
    let res = http
        .put(format!("{vm_url}?api-version=2024-07-01"))
        .bearer_auth(TOKEN)
        .json(&good)
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("retry-after"));
    let op_url = res.headers()["azure-asyncoperation"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(op_url.starts_with(&f.base), "{op_url}");
    let status = |url: String| {
        let req = http.get(url).bearer_auth(TOKEN);
        async move {
            let res = req.send().await.unwrap();
            let code = res.status().as_u16();
            let json: Value = res.json().await.unwrap_or(Value::Null);
            (code, json)
        }
    };
    assert_eq!(status(op_url.clone()).await.1["status"], "InProgress");
    f.clock.advance(Span::seconds(150));
    assert_eq!(status(op_url).await.1["status"], "Succeeded");
    let res = http
        .post(format!("{vm_url}/powerOff?api-version=2024-07-01"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let monitor = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(monitor.contains("monitor=true"));
    assert_eq!(status(monitor.clone()).await.0, 202, "in progress");
    f.clock.advance(Span::seconds(60));
    assert_eq!(status(monitor).await.0, 200);
}

/// The NIC and public IP have names of ARM's own: the IDs ARM returns lead to them.
#[tokio::test]
async fn the_public_ip_is_reached_by_the_ids_arm_returns() {
    let f = spawn_fake(50).await;
    let http = reqwest::Client::new();
    let arm = arm_client(&f, "p");
    arm.create(&id("hand-1"), &spec()).await.unwrap();
    f.clock.advance(Span::seconds(150));
    let get = |url: String| {
        let req = http.get(url).bearer_auth(TOKEN);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let vm = get(format!(
        "{}/subscriptions/{SUB}/resourceGroups/games/providers/Microsoft.Compute/virtualMachines/hand-1?api-version=2024-07-01",
        f.base
    ))
    .await;
    let nic_id = vm["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!nic_id.contains("hand-1"), "{nic_id}");
    let nic = get(format!("{}{nic_id}?api-version=2024-05-01", f.base)).await;
    let ip_id = nic["properties"]["ipConfigurations"][0]["properties"]["publicIPAddress"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ip = get(format!("{}{ip_id}?api-version=2024-05-01", f.base)).await;
    assert_eq!(ip["properties"]["publicIPAllocationMethod"], "Static");
    assert!(ip["properties"]["ipAddress"].is_string());
    assert_eq!(
        ip["properties"]["ipAddress"].as_str().map(str::to_owned),
        f.fake.cloud().get("hand-1").unwrap().unwrap().public_ip
    );
}

/// Scripted faults and the request log over HTTP.
#[tokio::test]
async fn the_control_routes_script_faults_and_show_requests() {
    let f = spawn_fake(50).await;
    let http = reqwest::Client::new();
    let post = |route: &str, body: Value| {
        http.post(format!("{}/_fake/{route}", f.base))
            .json(&body)
            .send()
    };
    let list = format!(
        "{}/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01&statusOnly=true",
        f.base
    );
    let get_list = || http.get(list.clone()).bearer_auth(TOKEN).send();
    let res = post("faults", json!({"op": "ListVms", "status": 429, "code": "TooManyRequests", "message": "slow down", "retryAfter": 9})).await.unwrap();
    assert_eq!(res.status(), 204);
    let res = get_list().await.unwrap();
    assert_eq!(
        (
            res.status().as_u16(),
            res.headers()["retry-after"].to_str().unwrap()
        ),
        (429, "9")
    );
    let res = get_list().await.unwrap();
    assert_eq!(res.status(), 200);
    // Hidden VMs and short pages.
    let arm = arm_client(&f, "p");
    for n in 0..4 {
        arm.create(&id(&format!("p-{n}")), &spec()).await.unwrap();
    }
    assert_eq!(
        post("hide", json!({"vm": "p-1", "secs": 120}))
            .await
            .unwrap()
            .status(),
        204
    );
    let names = |l: Vec<vmpool::compute::Listed>| {
        l.into_iter()
            .map(|l| l.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(arm.list().await.unwrap()), ["p-0", "p-2", "p-3"]);
    assert!(
        arm.status(&id("p-1")).await.unwrap().is_some(),
        "a GET still finds it"
    );
    assert_eq!(
        post("hide", json!({"vm": null, "secs": 60}))
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(arm.list().await.unwrap().is_empty());
    f.clock.advance(Span::seconds(121));
    assert_eq!(arm.list().await.unwrap().len(), 4, "back after their time");
    assert_eq!(
        post("short-pages", json!({"times": 1}))
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(arm.list().await.unwrap().len(), 2, "the page ended early");
    assert_eq!(arm.list().await.unwrap().len(), 4);
    for bad in [json!({"secs": "x"}), json!({"vm": 1, "secs": 1}), json!([])] {
        assert_eq!(post("hide", bad).await.unwrap().status(), 400);
    }
    assert_eq!(
        post("short-pages", json!({"times": -1}))
            .await
            .unwrap()
            .status(),
        400
    );
    let res = http
        .post(format!("{}/_fake/faults", f.base))
        .body("nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let recorded: Value = http
        .get(format!("{}/_fake/requests", f.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(recorded["requests"].as_array().unwrap().len() > 5);
}

/// The end-to-end flow: vmpool (memory store) with `VMPOOL_COMPUTE=arm` pointed at the
/// fake, wired by `startup::ports` exactly as the binary is.
#[tokio::test]
async fn vmpool_drives_the_fake_end_to_end() {
    let f = spawn_fake(50).await;
    let (app, config) = spawn_wired(&f).await;

    let created = app.create_vm().await;
    assert_eq!(created.status, 202, "{:?}", created.json);
    assert_eq!(created.json["action"], "created");
    let vm = created.json["vm"]["vmId"].as_str().unwrap().to_owned();
    assert!(
        created.json["vm"]["resourceId"]
            .as_str()
            .unwrap()
            .ends_with(&format!(
                "/resourceGroups/games/providers/Microsoft.Compute/virtualMachines/{vm}"
            ))
    );
    let puts = f.fake.accepted(FakeOp::PutVm);
    assert_eq!(puts.len(), 1, "the fake received one PUT");
    assert!(puts[0].path.ends_with(&format!("/virtualMachines/{vm}")));
    assert_eq!(
        validate_vm_body(puts[0].body.as_ref().unwrap(), &vm),
        Ok(())
    );
    assert_eq!(
        puts[0].body.as_ref().unwrap()["tags"]["vmpool"],
        config.table.as_str()
    );

    assert_eq!(app.reconcile().await.status, 200);
    assert_eq!(
        app.available().await.json["vms"].as_array().unwrap().len(),
        0
    );
    f.clock.advance(Span::minutes(3));
    assert_eq!(app.reconcile().await.status, 200);
    let available = app.available().await;
    assert_eq!(available.json["vms"][0]["vmId"], vm.as_str());
    assert_eq!(available.json["vms"][0]["state"], "Running");
    let fake_ip = f.fake.cloud().get(&vm).unwrap().unwrap().public_ip.unwrap();
    assert_eq!(available.json["vms"][0]["publicIp"], fake_ip.as_str());

    assert_eq!(
        app.mark(&vm).await.json["vm"]["state"],
        "MarkedForDeallocation"
    );
    let report = app.report(&vm, 0).await;
    assert_eq!(report.json["action"], "deallocating", "{:?}", report.json);
    let deallocates = f.fake.accepted(FakeOp::Deallocate);
    assert_eq!(deallocates.len(), 1, "the fake received a deallocate");
    assert!(
        deallocates[0]
            .path
            .ends_with(&format!("/virtualMachines/{vm}/deallocate"))
    );

    f.clock.advance(Span::minutes(2));
    app.reconcile().await;
    let status = app.status().await;
    assert_eq!(status.json["counts"]["Deallocated"], 1, "{:?}", status.json);

    let started = app.create_vm().await;
    assert_eq!(started.status, 202, "{:?}", started.json);
    assert_eq!(started.json["action"], "started");
    assert_eq!(started.json["vm"]["vmId"], vm.as_str());
    let starts = f.fake.accepted(FakeOp::Start);
    assert_eq!(starts.len(), 1, "the fake received a start");
    assert!(
        starts[0]
            .path
            .ends_with(&format!("/virtualMachines/{vm}/start"))
    );
    assert_eq!(f.fake.accepted(FakeOp::PutVm).len(), 1, "no second VM");
    let gets: std::collections::HashSet<String> = f
        .fake
        .accepted(FakeOp::GetVm)
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert!(
        gets.iter().all(|p| p.contains(&vm)),
        "the reconciler lists, and GETs only the VM in flight: {gets:?}"
    );
}

/// ARM refusing a create records a Failed VM; the caller gets the refusal.
#[tokio::test]
async fn a_quota_refusal_is_recorded_on_the_vm() {
    let f = spawn_fake(50).await;
    let (app, _) = spawn_wired(&f).await;

    f.fake
        .fail_next(FakeOp::PutVm, 1, HttpFault::quota_exceeded());
    let refused = app.create_vm().await;
    assert_eq!(refused.status, 503, "{:?}", refused.json);
    assert!(
        refused.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("OperationNotAllowed")
    );
    let status = app.status().await;
    assert_eq!(status.json["counts"]["Failed"], 1, "{:?}", status.json);
}

/// Nothing a client sends makes the fake fail: every answer is an ARM answer, never a 500
/// or a dropped connection.
#[tokio::test]
async fn the_fake_answers_junk_with_arm_errors() {
    let f = spawn_fake(50).await;
    let http = reqwest::Client::new();
    let vm = format!(
        "/subscriptions/{SUB}/resourceGroups/games/providers/Microsoft.Compute/virtualMachines"
    );
    let bodies: [&[u8]; 7] = [
        b"",
        b"null",
        b"[]",
        b"{\"location\": {}}",
        b"{\"properties\": [1]}",
        b"{\"location\":\"x\",\"tags\":{\"a\":1}}",
        b"\xff\xfe\x00garbage",
    ];
    let paths = [
        format!("{vm}/a?api-version=2024-07-01"),
        format!("{vm}/a%2Fb?api-version=2024-07-01"),
        format!("{vm}/a/start?api-version=2024-07-01&api-version=x"),
        format!("{vm}?api-version=2024-07-01&$skiptoken=-1&statusOnly=maybe"),
        format!("{vm}/a?api-version=2024-07-01&$expand=everything"),
        format!(
            "/subscriptions/{SUB}/providers/Microsoft.Compute/locations/x/operations/nope?api-version=2024-07-01"
        ),
        "/_fake/vms/x/y".to_owned(),
        "/%%%?%%%".to_owned(),
        "/providers/Microsoft.ResourceGraph/resources?api-version=2022-10-01".to_owned(),
    ];
    for path in &paths {
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            for body in bodies {
                let res = http
                    .request(
                        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                        format!("{}{path}", f.base),
                    )
                    .bearer_auth(TOKEN)
                    .body(body.to_vec())
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                assert!(status < 500, "{method} {path}: {status}");
                if status >= 400 {
                    let text = res.text().await.unwrap();
                    if !text.is_empty() {
                        let json: Value = serde_json::from_str(&text)
                            .unwrap_or_else(|_| panic!("{method} {path}: {text}"));
                        assert!(json["error"]["code"].is_string(), "{method} {path}: {text}");
                    }
                }
            }
        }
    }
}

/// POSTs `body` to the fake's Resource Graph endpoint.
async fn graph(f: &Fake, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{}/providers/Microsoft.ResourceGraph/resources?api-version=2022-10-01",
            f.base
        ))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Resource Graph as the fake serves it: scoped to the subscription and the resource group
/// of the query, paged with `$top` and `$skipToken`, lagging, throttled per user, and
/// refusing any query but the sweep's with its 400 envelope.
#[tokio::test]
async fn resource_graph_scopes_pages_lags_and_throttles() {
    let f = spawn_fake(50).await;
    let arm = arm_client(&f, "p");
    for n in 0..5 {
        arm.create(&id(&format!("p-{n}")), &spec()).await.unwrap();
    }
    create_elsewhere(&f, "p", "p-elsewhere").await;
    let query = vmpool::compute::arm::sweep_query("games");
    let ask = |top: u32, token: Option<&str>, subs: Value| {
        let mut options = json!({"resultFormat": "objectArray", "$top": top});
        if let Some(token) = token {
            options["$skipToken"] = json!(token);
        }
        json!({"subscriptions": subs, "query": query, "options": options})
    };
    // Created this instant: not in the index yet.
    assert!(
        arm.list_power().await.unwrap().is_empty(),
        "Resource Graph lags"
    );
    f.clock.advance(Span::seconds(6));
    let res = graph(&f, ask(2, None, json!([SUB]))).await;
    assert_eq!(res.status(), 200);
    let remaining: u32 = res.headers()["x-ms-user-quota-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 15);
    assert!(res.headers().contains_key("x-ms-user-quota-resets-after"));
    let first: Value = res.json().await.unwrap();
    assert_eq!(
        (first["totalRecords"].as_u64(), first["count"].as_u64()),
        (Some(5), Some(2))
    );
    assert_eq!(first["resultTruncated"], "false");
    let mut names: Vec<String> = Vec::new();
    let mut page = first;
    loop {
        for row in page["data"].as_array().unwrap() {
            assert_eq!(row["powerState"], "PowerState/starting", "{row}");
            assert_eq!(row["tags"]["vmpool"], "p");
            names.push(row["name"].as_str().unwrap().to_owned());
        }
        let Some(token) = page["$skipToken"].as_str().map(str::to_owned) else {
            break;
        };
        page = graph(&f, ask(2, Some(&token), json!([SUB])))
            .await
            .json()
            .await
            .unwrap();
    }
    assert_eq!(
        names,
        ["p-0", "p-1", "p-2", "p-3", "p-4"],
        "one resource group, in order"
    );
    // Another subscription holds nothing of ours; a token is good only for its query.
    let other: Value = graph(
        &f,
        ask(1000, None, json!(["00000000-0000-0000-0000-0000000000bb"])),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(other["data"], json!([]));
    let res = graph(&f, ask(2, Some("1.0000000000000000"), json!([SUB]))).await;
    assert_eq!(res.status(), 400);
    // Any other query, or a $top out of bounds, gets Resource Graph's 400 envelope.
    for bad in [
        json!({"subscriptions": [SUB], "query": "Resources | project id, properties"}),
        json!({"subscriptions": [SUB], "query": query, "options": {"$top": 1001}}),
        json!({"subscriptions": [SUB], "query": query, "options": {"resultFormat": "table"}}),
        json!({"query": query}),
    ] {
        let res = graph(&f, bad.clone()).await;
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "BadRequest", "{bad}");
        assert_eq!(body["error"]["details"][0]["code"], "InvalidQuery", "{bad}");
    }
    // A VM deleted behind our back is still in the index for a few seconds.
    f.fake.delete_behind_our_back("p-0");
    assert_eq!(arm.list_power().await.unwrap().len(), 5);
    // Past the per-user quota: 429 with the quota headers only, read as Throttled.
    let mut throttled = None;
    for _ in 0..20 {
        match arm.list_power().await {
            Ok(_) => {}
            Err(e) => {
                throttled = Some(e);
                break;
            }
        }
    }
    let Some(ComputeError::Throttled { retry_after }) = throttled else {
        panic!("never throttled: {throttled:?}");
    };
    assert!((1..=5).contains(&retry_after.as_secs()), "{retry_after:?}");
    f.clock.advance(Span::seconds(5));
    let swept = arm.list_power().await.unwrap();
    assert_eq!(swept.len(), 4, "the deletion reached the index");
    // A scripted fault answers first.
    f.fake
        .fail_next(FakeOp::GraphQuery, 1, HttpFault::throttled(7));
    assert_eq!(
        arm.list_power().await,
        Err(ComputeError::Throttled {
            retry_after: Duration::from_secs(7)
        })
    );
}

/// More VMs than one page holds are read in pages of 1,000, following `$skipToken`.
#[tokio::test]
async fn the_sweep_follows_skip_tokens() {
    let f = spawn_fake(50).await;
    let arm = arm_client(&f, "p");
    let created = create_numbered(&arm, 1001).await;
    assert!(created.iter().all(Result::is_ok));
    f.clock.advance(Span::seconds(200));
    f.fake.clear_requests();
    let swept = arm.list_power().await.unwrap();
    assert_eq!(swept.len(), 1001);
    assert!(swept.iter().all(|l| l.tagged && l.status.is_up()));
    let pages = f.fake.accepted(FakeOp::GraphQuery);
    assert_eq!(pages.len(), 2, "1,001 VMs in pages of 1,000");
    assert!(pages[1].body.as_ref().unwrap()["options"]["$skipToken"].is_string());
}

/// A sweep of many pages waits for Resource Graph's per-user quota between pages instead of
/// failing: here the quota is one query per window, and the window resets (on the fake's
/// clock) once the fake has answered 429.
#[tokio::test]
async fn a_long_sweep_waits_for_the_quota_between_pages() {
    let f = spawn_fake_with(
        FakeSettings {
            graph_quota: 1,
            ..fake_settings(50)
        },
        3,
    )
    .await;
    let arm = arm_client(&f, "p");
    let created = create_numbered(&arm, 1001).await;
    assert!(created.iter().all(Result::is_ok));
    f.clock.advance(Span::seconds(200));
    f.fake.clear_requests();
    let throttled = |fake: &ArmFake| {
        fake.requests()
            .iter()
            .any(|r| r.op == Some(FakeOp::GraphQuery) && r.status == 429)
    };
    let sweep = arm.list_power();
    let resets = async {
        while !throttled(&f.fake) {
            tokio::task::yield_now().await;
        }
        f.clock.advance(Span::seconds(5));
    };
    let (swept, ()) = tokio::join!(sweep, resets);
    assert_eq!(swept.unwrap().len(), 1001, "both pages, after waiting");
    let statuses = statuses(&f.fake, FakeOp::GraphQuery);
    assert_eq!(statuses.first(), Some(&200));
    assert_eq!(statuses.last(), Some(&200));
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2);
}
