//! Several pools and builds: each pool's VMs reach ARM in its own region, size and image;
//! CreateVM hands out only the pool and build asked for, on every path; rows written before
//! pools existed learn their build from the image ARM reports; adoption puts a VM back in
//! its pool.

use serde_json::Value;
use vmpool::domain::{CreateAction, Purpose, VmId, VmRecord, VmState};
use vmpool::pool::PoolError;
use vmpool_arm_fake::{FakeOp, HttpFault, validate_vm_body};

use crate::support::{Rig, serve};

const GALLERY: &str = "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/images/providers/Microsoft.Compute/galleries/games/images/server/versions/1.5.0";

/// Two pools: `eu` in West Europe on a D-series size from a gallery image, `us` in East US
/// on an F-series size from a marketplace image.
fn two_pools() -> String {
    format!(
        r#"{{"eu": {{"location": "westeurope", "vmSize": "Standard_D2s_v5", "image": "{GALLERY}",
                    "build": "1.5.0", "minStandby": 1, "maxVms": 5, "gamePorts": "7777"}},
            "us": {{"location": "eastus", "vmSize": "Standard_F4s_v2",
                    "image": "Canonical:ubuntu-24_04-lts:server:24.04.202612010", "build": "2.0",
                    "minStandby": 1, "maxVms": 2, "gamePorts": [9000, 9001]}}}}"#
    )
}

fn vm(name: &str, state: VmState, pool: &str, build: Option<&str>) -> VmRecord {
    let mut vm = VmRecord::new_creating(
        VmId::parse(name).unwrap(),
        format!("/x/{name}"),
        Purpose::Buffer,
        time::macros::datetime!(2026-01-01 00:00 UTC),
    );
    vm.state = state;
    vm.operation = None;
    vm.public_ip = Some("203.0.113.5".into());
    vm.pool = pool.into();
    vm.build = build.map(str::to_owned);
    vm
}

#[tokio::test]
async fn two_pools_reach_arm_in_their_own_region_size_image_and_tags() {
    let pools = two_pools();
    let rig = Rig::arm(&[("VMPOOL_POOLS", &pools), ("VMPOOL_MAX_VMS", "10")]).await;
    let s = rig.pass().await;
    assert_eq!(s.created, 2, "one buffer VM per pool: {}", s.line());
    let puts = rig.fake().accepted(FakeOp::PutVm);
    assert_eq!(puts.len(), 2);
    let rows = rig.rows().await;
    for put in &puts {
        let body = put.body.as_ref().unwrap();
        let name = put.path.rsplit('/').next().unwrap();
        assert_eq!(validate_vm_body(body, name), Ok(()));
        let row = rows.iter().find(|r| r.id.as_str() == name).unwrap();
        let image = &body["properties"]["storageProfile"]["imageReference"];
        let size = &body["properties"]["hardwareProfile"]["vmSize"];
        match row.pool.as_str() {
            "eu" => {
                assert_eq!(body["location"], "westeurope");
                assert_eq!(size, "Standard_D2s_v5");
                assert_eq!(image["id"], GALLERY);
                assert_eq!(row.build.as_deref(), Some("1.5.0"));
            }
            "us" => {
                assert_eq!(body["location"], "eastus");
                assert_eq!(size, "Standard_F4s_v2");
                assert_eq!(image["version"], "24.04.202612010");
                assert!(image.get("id").is_none());
                assert_eq!(row.build.as_deref(), Some("2.0"));
            }
            other => panic!("unexpected pool {other}"),
        }
        assert_eq!(body["tags"]["vmpool-pool"], row.pool.as_str());
        assert_eq!(
            body["tags"]["vmpool-build"],
            row.build.as_deref().unwrap_or_default()
        );
        assert_eq!(body["tags"]["vmpool"], "vmpool");
    }

    // Each caller gets a VM of the pool it named, with that pool's ports.
    let app = serve(rig.state.clone()).await;
    let eu = app
        .send("POST", "/api/CreateVM", Some(r#"{"pool": "eu"}"#))
        .await;
    assert_eq!(eu.status, 202, "{:?}", eu.json);
    assert_eq!(eu.json["action"], "claimedCreating");
    assert_eq!(
        (&eu.json["vm"]["pool"], &eu.json["vm"]["build"]),
        (&Value::from("eu"), &Value::from("1.5.0"))
    );
    assert_eq!(eu.json["vm"]["ports"], serde_json::json!([7777]));
    let us = app.send("POST", "/api/CreateVM?pool=us", None).await;
    assert_eq!(us.json["vm"]["pool"], "us", "{:?}", us.json);
    assert_eq!(us.json["vm"]["ports"], serde_json::json!([9000, 9001]));

    // Per-pool counts and the pools' settings in GetPoolStatus.
    let status = app.status().await.json;
    let pools = status["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2);
    assert_eq!(pools[0]["name"], "eu");
    assert_eq!(pools[0]["location"], "westeurope");
    assert_eq!(pools[0]["builds"]["1.5.0"]["Creating"], 1);
    assert_eq!(pools[1]["vmSize"], "Standard_F4s_v2");
    assert_eq!(pools[1]["maxVms"], 2);
    assert_eq!(pools[1]["rollout"]["done"], true);

    // The metrics carry pool and build labels.
    let metrics = app
        .http
        .get(format!("{}/api/Metrics", app.base))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    for line in [
        r#"vmpool_pool_vms{pool="eu",build="1.5.0",state="Creating"} 1"#,
        r#"vmpool_pool_vms{pool="us",build="2.0",state="Creating"} 1"#,
        r#"vmpool_pool_buffer_target{pool="eu",build="1.5.0"} 1"#,
        r#"vmpool_pool_breaker_open{pool="us"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }
}

#[tokio::test]
async fn createvm_hands_out_only_the_pool_and_build_asked_for_on_every_path() {
    let pools = two_pools();
    let rig = Rig::sim(&[("VMPOOL_POOLS", &pools), ("VMPOOL_MAX_VMS", "8")]);
    for vm in [
        vm("eu-old-standby", VmState::Standby, "eu", Some("1.4.0")),
        vm(
            "eu-old-marked",
            VmState::MarkedForDeallocation,
            "eu",
            Some("1.4.0"),
        ),
        vm("eu-unknown", VmState::Standby, "eu", None),
        vm("eu-old-off", VmState::Deallocated, "eu", Some("1.4.0")),
        vm("us-standby", VmState::Standby, "us", Some("2.0")),
    ] {
        rig.store.insert(&vm).await.unwrap();
    }
    let want = |pool: Option<&str>, build: Option<&str>| rig.pool.wanted(pool, build);

    // eu's current build: nothing idle of it (old builds, an unknown one and another pool's
    // VM are never taken), so a new VM is created, in eu, of 1.5.0.
    let got = rig
        .pool
        .create_vm_for(&want(Some("eu"), None).unwrap())
        .await
        .unwrap();
    assert_eq!(got.action, CreateAction::Created);
    assert_eq!(
        (got.vm.pool.as_str(), got.vm.build.as_deref()),
        ("eu", Some("1.5.0"))
    );

    // The old build, named: served from its live VMs only (reclaim first, then standby).
    let old = want(Some("eu"), Some("1.4.0")).unwrap();
    let first = rig.pool.create_vm_for(&old).await.unwrap();
    assert_eq!(
        (first.vm.id.as_str(), first.action),
        ("eu-old-marked", CreateAction::Reclaimed)
    );
    let second = rig.pool.create_vm_for(&old).await.unwrap();
    assert_eq!(
        (second.vm.id.as_str(), second.action),
        ("eu-old-standby", CreateAction::Standby)
    );
    // None left alive: never a start of the deallocated one, never a create.
    let calls_before = rig.cloud.calls();
    let err = rig.pool.create_vm_for(&old).await.unwrap_err();
    assert!(matches!(err, PoolError::BuildExhausted { .. }), "{err}");
    assert_eq!(
        rig.cloud.calls(),
        calls_before,
        "no ARM call for an old build"
    );
    assert_eq!(
        rig.store
            .get(&VmId::parse("eu-old-off").unwrap())
            .await
            .unwrap()
            .unwrap()
            .vm
            .state,
        VmState::Deallocated
    );

    // us: its standby VM.
    let us = rig
        .pool
        .create_vm_for(&want(Some("us"), None).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (us.vm.id.as_str(), us.action),
        ("us-standby", CreateAction::Standby)
    );
    // us is at its maxVms of 2 once one more is made.
    rig.pool
        .create_vm_for(&want(Some("us"), None).unwrap())
        .await
        .unwrap();
    let full = rig
        .pool
        .create_vm_for(&want(Some("us"), None).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(full, PoolError::PoolFull { max: 2, .. }), "{full}");

    // Over HTTP: an unknown pool is 400 naming the pools; no pool with two pools and no
    // `default` is too; an exhausted old build is 503 CapacityExhausted.
    let app = serve(rig.state.clone()).await;
    let unknown = app
        .send("POST", "/api/CreateVM", Some(r#"{"pool": "asia"}"#))
        .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json["error"]["code"], "InvalidInput");
    let message = unknown.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("asia") && message.contains("eu, us"),
        "{message}"
    );
    let unnamed = app.create_vm().await;
    assert_eq!(unnamed.status, 400, "{:?}", unnamed.json);
    let bad = app.send("POST", "/api/CreateVM?build=1%202", None).await;
    assert_eq!(bad.status, 400);
    let exhausted = app
        .send("POST", "/api/CreateVM?pool=eu&build=1.4.0", None)
        .await;
    assert_eq!(exhausted.status, 503);
    assert_eq!(exhausted.json["error"]["code"], "CapacityExhausted");
    assert!(exhausted.headers.contains_key("retry-after"));

    // GetAvailableVMs filters by pool and build.
    let ids = |a: &crate::support::Answer| -> Vec<String> {
        a.json["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["vmId"].as_str().unwrap().to_owned())
            .collect()
    };
    let running_eu_old = app
        .send("GET", "/api/GetAvailableVMs?pool=eu&build=1.4.0", None)
        .await;
    assert_eq!(
        ids(&running_eu_old),
        ["eu-old-marked", "eu-old-standby"],
        "{:?}",
        running_eu_old.json
    );
    let running_us = app.send("GET", "/api/GetAvailableVMs?pool=us", None).await;
    assert_eq!(ids(&running_us), ["us-standby"]);
    let everyone = app.available().await;
    assert_eq!(ids(&everyone).len(), 3);
    assert!(
        everyone.json["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["pool"].is_string() && v.get("build").is_some())
    );
}

#[tokio::test]
async fn rows_written_before_pools_learn_their_build_from_arm_before_they_are_handed_out() {
    let rig = Rig::arm(&[]).await;
    let spec = rig.pool.policy().pools.all()[0].clone();
    let old = VmId::parse("vmpool-before").unwrap();
    rig.compute.create(&old, &spec.vm()).await.unwrap();
    rig.advance(180);
    // The row as a version without pools wrote it: pool `default`, no build.
    let row = vm("vmpool-before", VmState::Standby, "default", None);
    let row = VmRecord {
        resource_id: rig.compute.resource_id(&old),
        ..row
    };
    rig.store.insert(&row).await.unwrap();
    // Not handed out while its build is unknown: a new VM is created instead.
    let first = rig.pool.create_vm().await.unwrap();
    assert_ne!(first.vm.id, old);
    assert_eq!(first.action, CreateAction::Created);
    // A pass reads the image ARM reports for it: the default pool's image, so its build.
    rig.advance(1);
    let s = rig.pass().await;
    assert_eq!(s.builds_read, 1, "{}", s.line());
    let learnt = rig.store.get(&old).await.unwrap().unwrap().vm;
    assert_eq!(learnt.build.as_deref(), Some(spec.build.as_str()));
    assert_eq!(learnt.pool, "default");
    let second = rig.pool.create_vm().await.unwrap();
    assert_eq!((second.vm.id, second.action), (old, CreateAction::Standby));
}

#[tokio::test]
async fn adoption_puts_a_vm_back_in_its_pool_with_its_build() {
    let pools = two_pools();
    let rig = Rig::arm(&[("VMPOOL_POOLS", &pools)]).await;
    let us = rig.pool.policy().pools.get("us").unwrap().clone();
    let ghost = VmId::parse("vmpool-ghost").unwrap();
    rig.compute.create(&ghost, &us.vm()).await.unwrap();
    rig.advance(180);
    let s = rig.pass().await;
    assert_eq!(s.adopted, 1, "{}", s.line());
    let adopted = rig.store.get(&ghost).await.unwrap().unwrap().vm;
    assert_eq!(
        (adopted.pool.as_str(), adopted.build.as_deref()),
        ("us", Some("2.0"))
    );
    let put = rig.fake().accepted(FakeOp::PutVm);
    assert_eq!(put[0].body.as_ref().unwrap()["location"], "eastus");
}

const IMAGE_1: &str = "Canonical:ubuntu-24_04-lts:server:24.04.202611010";
const IMAGE_2: &str = "Canonical:ubuntu-24_04-lts:server:24.04.202612010";

/// Pool `eu` on `build` and `image`, beside a pool `us` that no rollout touches.
fn eu_on(build: &str, image: &str) -> String {
    format!(
        r#"{{"eu": {{"location": "westeurope", "vmSize": "Standard_D2s_v5", "image": "{image}",
                    "build": "{build}", "minStandby": 2, "maxVms": 12}},
            "us": {{"location": "eastus", "vmSize": "Standard_F4s_v2", "image": "{IMAGE_1}",
                    "build": "7", "minStandby": 1, "maxVms": 3}}}}"#
    )
}

/// Passes, three minutes apart (long enough for any create, start, deallocate or delete).
async fn passes(rig: &Rig, n: usize) {
    for _ in 0..n {
        rig.advance(180);
        rig.pass().await;
    }
}

/// The names of the VMs ARM was asked to delete (accepted), in order.
fn deleted_in_arm(rig: &Rig) -> Vec<String> {
    rig.fake()
        .accepted(FakeOp::DeleteVm)
        .iter()
        .map(|r| r.path.rsplit('/').next().unwrap().to_owned())
        .collect()
}

/// A pool of build 1 with a VM in every state, when the operator restarts it on build 2.
struct Fleet {
    extra: VmId,
    in_use: VmId,
    draining: VmId,
    drained_later: VmId,
    deallocating: VmId,
    deallocated: VmId,
    standby: Vec<VmId>,
    creating: VmId,
    failed: VmId,
    us: Vec<VmId>,
}

async fn fleet_on_build_1(rig: &Rig) -> Fleet {
    passes(rig, 2).await;
    let eu = |rig: &Rig| rig.pool.wanted(Some("eu"), None).unwrap();
    let claim = async |rig: &Rig| rig.pool.create_vm_for(&eu(rig)).await.unwrap().vm.id;
    // Claimed: one hosts a game, two drain, one is drained and deallocating, one
    // deallocated; the buffer is filled again between claims.
    let mut claimed = Vec::new();
    for rooms in [3, 2, 1, 1, 1] {
        let id = claim(rig).await;
        rig.pool.report_rooms(&id, rooms).await.unwrap();
        claimed.push(id);
        passes(rig, 1).await;
    }
    let [in_use, draining, drained_later, deallocating, deallocated] =
        <[VmId; 5]>::try_from(claimed).unwrap();
    passes(rig, 2).await;
    // One more claim leaves the buffer short, so the next pass creates for it: a VM of
    // build 1 still `Creating` at the restart.
    let extra = rig.pool.create_vm_for(&eu(rig)).await.unwrap();
    assert_eq!(extra.action, CreateAction::Standby);
    rig.pool.report_rooms(&extra.vm.id, 1).await.unwrap();
    for id in [&draining, &drained_later, &deallocating, &deallocated] {
        rig.pool.mark_for_deallocation(id).await.unwrap();
    }
    rig.pool.report_rooms(&deallocated, 0).await.unwrap();
    rig.advance(80);
    rig.pass().await;
    rig.pool.report_rooms(&deallocating, 0).await.unwrap();
    let rows = rig.rows().await;
    let of = |state: VmState| -> Vec<VmId> {
        rows.iter()
            .filter(|r| r.pool == "eu" && r.state == state && r.purpose == Purpose::Buffer)
            .map(|r| r.id.clone())
            .collect()
    };
    let standby = of(VmState::Standby);
    let creating = of(VmState::Creating);
    let brief: Vec<_> = rows
        .iter()
        .map(|r| (r.id.as_str(), &r.pool, r.state, r.purpose, r.rooms))
        .collect();
    assert!(!standby.is_empty() && creating.len() == 1, "{brief:?}");
    // A failed VM of build 1, as a create that ARM failed leaves it.
    let spec = rig.pool.policy().pools.get("eu").unwrap().clone();
    let failed = VmId::parse("vmpool-failed1").unwrap();
    rig.compute.create(&failed, &spec.vm()).await.unwrap();
    let mut row = vm("vmpool-failed1", VmState::Failed, "eu", Some("1"));
    row.resource_id = rig.compute.resource_id(&failed);
    row.last_error = Some("OSProvisioningTimedOut".into());
    rig.store.insert(&row).await.unwrap();
    let state_of = |id: &VmId| rows.iter().find(|r| r.id == *id).unwrap().state;
    assert_eq!(state_of(&in_use), VmState::Running);
    assert_eq!(state_of(&draining), VmState::MarkedForDeallocation);
    assert_eq!(state_of(&deallocating), VmState::Deallocating);
    assert_eq!(state_of(&deallocated), VmState::Deallocated);
    let us = rows
        .iter()
        .filter(|r| r.pool == "us")
        .map(|r| r.id.clone())
        .collect();
    Fleet {
        extra: extra.vm.id,
        in_use: in_use.clone(),
        draining,
        drained_later,
        deallocating,
        deallocated,
        standby,
        creating: creating[0].clone(),
        failed,
        us,
    }
}

#[tokio::test]
async fn a_rollout_replaces_idle_vms_of_every_state_keeps_games_and_deletes_drained_vms() {
    let v1 = eu_on("1", IMAGE_1);
    let rig = Rig::arm(&[("VMPOOL_POOLS", &v1), ("VMPOOL_MAX_VMS", "20")]).await;
    let fleet = fleet_on_build_1(&rig).await;
    let before = rig.fake().accepted(FakeOp::PutVm).len();

    // The operator ships build 2: a new image, the app restarted.
    let v2 = eu_on("2", IMAGE_2);
    let rig = rig.restarted(&[("VMPOOL_POOLS", &v2), ("VMPOOL_MAX_VMS", "20")]);
    let eu = rig.pool.wanted(Some("eu"), None).unwrap();
    // A caller that names no build gets build 2, never an idle VM of build 1: a new VM.
    let first = rig.pool.create_vm_for(&eu).await.unwrap();
    assert_eq!(first.action, CreateAction::Created);
    assert_eq!(first.vm.build.as_deref(), Some("2"));
    let put = &rig.fake().accepted(FakeOp::PutVm)[before];
    let image = &put.body.as_ref().unwrap()["properties"]["storageProfile"]["imageReference"];
    assert_eq!(
        image["version"], "24.04.202612010",
        "new VMs boot the new image"
    );
    // A caller that names build 1 is served from what is alive of it (a VM marked for
    // deallocation first, as always), and only that.
    let one = rig.pool.wanted(Some("eu"), Some("1")).unwrap();
    let old = rig.pool.create_vm_for(&one).await.unwrap();
    assert_eq!(old.vm.build.as_deref(), Some("1"));
    assert_eq!(old.action, CreateAction::Reclaimed);
    assert!([&fleet.draining, &fleet.drained_later].contains(&&old.vm.id));
    rig.pool.report_rooms(&old.vm.id, 1).await.unwrap();
    let still_draining = if old.vm.id == fleet.draining {
        fleet.drained_later.clone()
    } else {
        fleet.draining.clone()
    };
    // The reconciler fills build 2's buffer first: until it is ready, nothing of build 1
    // is deleted (the failed VM apart, deleted as any failed VM). (The instance before the
    // restart held the reconcile lease: it runs out first.)
    rig.advance(61);
    rig.pass().await;
    assert_eq!(deleted_in_arm(&rig), [fleet.failed.to_string()]);
    let mut seen_ready = false;
    for _ in 0..6 {
        rig.advance(180);
        rig.pass().await;
        let rows = rig.rows().await;
        let ready = rows
            .iter()
            .filter(|r| r.pool == "eu" && r.build.as_deref() == Some("2"))
            .filter(|r| r.state == VmState::Standby)
            .count();
        seen_ready |= ready >= 2;
        // Every caller that names no build gets build 2, on every pass.
        for r in rows
            .iter()
            .filter(|r| r.pool == "eu" && r.state == VmState::Running)
        {
            assert!(
                r.build.as_deref() == Some("2")
                    || [&fleet.in_use, &fleet.extra, &old.vm.id].contains(&&r.id),
                "{r:?}"
            );
        }
    }
    assert!(seen_ready);

    // Idle VMs of build 1 (standby, deallocated, the one created before the restart, the
    // drained one) are deleted in ARM and their rows go; games in progress stay.
    let deleted = deleted_in_arm(&rig);
    let rows = rig.rows().await;
    for id in fleet
        .standby
        .iter()
        .chain([&fleet.deallocated, &fleet.deallocating, &fleet.creating])
    {
        assert!(
            deleted.contains(&id.to_string()),
            "{id} not deleted: {deleted:?}"
        );
        assert!(rows.iter().all(|r| r.id != *id), "{id} still has a row");
    }
    for id in [
        &fleet.in_use,
        &fleet.draining,
        &fleet.drained_later,
        &fleet.extra,
        &old.vm.id,
    ] {
        assert!(
            !deleted.contains(&id.to_string()),
            "{id} has a game: {deleted:?}"
        );
        let row = rows.iter().find(|r| r.id == *id).unwrap();
        assert_eq!(row.build.as_deref(), Some("1"));
    }
    // Pool `us` is untouched.
    for id in &fleet.us {
        assert!(!deleted.contains(&id.to_string()));
    }
    let app = serve(rig.state.clone()).await;
    let status = app.status().await.json;
    let eu_view = &status["pools"][0];
    assert_eq!(eu_view["name"], "eu");
    assert_eq!(eu_view["rollout"]["done"], false);
    assert_eq!(eu_view["rollout"]["oldInUse"], 4, "{eu_view}");
    assert_eq!(eu_view["rollout"]["oldIdle"], 0, "{eu_view}");
    assert_eq!(eu_view["builds"]["1"]["Running"], 3, "{eu_view}");

    // A drained VM of build 1 is deleted, not deallocated, as soon as it reports 0 rooms.
    let answer = app
        .send(
            "POST",
            "/api/ReportGameRoomsNumber",
            Some(&format!(r#"{{"vmId": "{still_draining}", "rooms": 0}}"#)),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(
        deleted_in_arm(&rig).last(),
        Some(&still_draining.to_string())
    );
    let deallocates = rig.fake().accepted(FakeOp::Deallocate);
    assert!(
        !deallocates
            .iter()
            .any(|r| r.path.contains(still_draining.as_str())),
        "a VM of the old build is never deallocated to be started again"
    );
    rig.advance(180);
    rig.pass().await;
    assert!(rig.store.get(&still_draining).await.unwrap().is_none());
    // The last games end: the rollout is done.
    for id in [&fleet.in_use, &fleet.extra, &old.vm.id] {
        rig.pool.mark_for_deallocation(id).await.unwrap();
        rig.pool.report_rooms(id, 0).await.unwrap();
    }
    passes(&rig, 1).await;
    let status = app.status().await.json;
    assert_eq!(status["pools"][0]["rollout"]["done"], true, "{status}");
    assert!(
        rig.rows()
            .await
            .iter()
            .filter(|r| r.pool == "eu")
            .all(|r| r.build.as_deref() == Some("2"))
    );
}

#[tokio::test]
async fn a_rollback_makes_the_previous_build_current_again_and_deletes_none_of_it() {
    let v1 = eu_on("1", IMAGE_1);
    let rig = Rig::arm(&[("VMPOOL_POOLS", &v1), ("VMPOOL_MAX_VMS", "20")]).await;
    let fleet = fleet_on_build_1(&rig).await;
    let v2 = eu_on("2", IMAGE_2);
    let rig = rig.restarted(&[("VMPOOL_POOLS", &v2), ("VMPOOL_MAX_VMS", "20")]);
    // One pass on build 2: its buffer is being created, nothing of build 1 deleted yet.
    // (The instance before the restart held the reconcile lease: it runs out first.)
    rig.advance(61);
    rig.pass().await;
    let creating_2: Vec<VmId> = rig
        .rows()
        .await
        .iter()
        .filter(|r| r.build.as_deref() == Some("2"))
        .map(|r| r.id.clone())
        .collect();
    assert!(!creating_2.is_empty());

    // Build 2 is bad: the operator sets build 1 back.
    let rig = rig.restarted(&[("VMPOOL_POOLS", &v1), ("VMPOOL_MAX_VMS", "20")]);
    let eu = rig.pool.wanted(Some("eu"), None).unwrap();
    let got = rig.pool.create_vm_for(&eu).await.unwrap();
    assert_eq!(
        got.vm.build.as_deref(),
        Some("1"),
        "build 1 is current again"
    );
    assert_ne!(
        got.action,
        CreateAction::Created,
        "served from what is alive of build 1"
    );
    rig.pool.report_rooms(&got.vm.id, 1).await.unwrap();
    passes(&rig, 6).await;
    let deleted = deleted_in_arm(&rig);
    let rows = rig.rows().await;
    for id in fleet
        .standby
        .iter()
        .chain([&fleet.in_use, &fleet.deallocated])
    {
        assert!(
            !deleted.contains(&id.to_string()),
            "{id} of build 1 deleted"
        );
        assert!(rows.iter().any(|r| r.id == *id));
    }
    // Build 2's VMs are the old ones now: once idle, they go.
    for id in &creating_2 {
        assert!(
            deleted.contains(&id.to_string()),
            "{id} of build 2 kept: {deleted:?}"
        );
    }
    assert!(
        rows.iter()
            .filter(|r| r.pool == "eu")
            .all(|r| r.build.as_deref() == Some("1"))
    );
}

#[tokio::test]
async fn refusals_in_one_pool_open_its_breaker_and_leave_the_other_pools_creating() {
    let pools = two_pools();
    let rig = Rig::arm(&[
        ("VMPOOL_POOLS", &pools),
        ("VMPOOL_MAX_VMS", "10"),
        ("VMPOOL_BREAKER_FAILURES", "2"),
    ])
    .await;
    let eu = rig.pool.wanted(Some("eu"), None).unwrap();
    let us = rig.pool.wanted(Some("us"), None).unwrap();
    // West Europe is out of quota: two creates there are refused.
    rig.fake()
        .fail_next(FakeOp::PutVm, 2, HttpFault::quota_exceeded());
    for _ in 0..2 {
        let refused = rig.pool.create_vm_for(&eu).await;
        assert!(
            matches!(refused, Err(PoolError::Refused { .. })),
            "{refused:?}"
        );
    }
    let puts = rig
        .fake()
        .requests()
        .iter()
        .filter(|r| r.op == Some(FakeOp::PutVm))
        .count();
    // Its breaker is open: the next CreateVM there is answered without calling ARM.
    let held = rig.pool.create_vm_for(&eu).await;
    assert!(
        matches!(&held, Err(PoolError::Refused { reason, .. }) if reason.contains("pool eu")),
        "{held:?}"
    );
    assert_eq!(
        rig.fake()
            .requests()
            .iter()
            .filter(|r| r.op == Some(FakeOp::PutVm))
            .count(),
        puts
    );
    // East US is not refused: it creates as before, and its buffer is filled.
    let created = rig.pool.create_vm_for(&us).await.unwrap();
    assert_eq!(created.action, CreateAction::Created);
    assert_eq!(created.vm.pool, "us");
    rig.advance(1);
    let s = rig.pass().await;
    let rows = rig.rows().await;
    assert!(
        rows.iter()
            .any(|r| r.pool == "us" && r.purpose == Purpose::Buffer),
        "{}",
        s.line()
    );
    assert!(
        !rows
            .iter()
            .any(|r| r.pool == "eu" && r.state == VmState::Creating)
    );
    let app = serve(rig.state.clone()).await;
    let status = app.status().await.json;
    assert_eq!(
        status["pools"][0]["circuitBreaker"]["open"], true,
        "{status}"
    );
    assert_eq!(
        status["pools"][1]["circuitBreaker"]["open"], false,
        "{status}"
    );
    assert_eq!(
        status["circuitBreaker"]["open"], true,
        "any pool's open breaker shows"
    );
}
