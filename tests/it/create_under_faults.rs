//! CreateVM against the real ARM client and the ARM fake, when the caller or ARM misbehaves:
//! a caller who gives up, a throttled or slow ARM, the capacity gate, and the router's
//! request timeout and concurrency limit. Waits here are for real background work (a delayed
//! ARM answer, a spawned CreateVM), each bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmpool::domain::{Purpose, VmState};
use vmpool::store::memory::MemoryStore;
use vmpool::store::{Rows, VmStore};
use vmpool_arm_fake::{FakeOp, HttpFault};

use crate::idempotency::create_with_key;
use crate::support::apps::ArmApp;
use crate::support::arm::statuses;
use crate::support::{Answer, spawn_arm};

/// Waits (at most `within`) until `check` holds.
async fn until<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "not reached within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rows(store: &MemoryStore) -> Vec<vmpool::domain::VmRecord> {
    store
        .list(Rows::All)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.vm)
        .collect()
}

/// The last of the store's rows.
async fn last_row(store: &MemoryStore) -> vmpool::domain::VmRecord {
    rows(store).await.pop().unwrap()
}

/// vmpool against a fresh fake (configured by `vars`) whose next `puts` VM creates are each
/// answered `delay` late.
async fn spawn_with_slow_puts(vars: &[(&str, &str)], puts: u32, delay: Duration) -> ArmApp {
    let a = spawn_arm(vars).await;
    a.fake.fake.delay_next(FakeOp::PutVm, puts, delay);
    a
}

/// A CreateVM (with `key` as its Idempotency-Key, if any) whose caller gives up after
/// `patience`; the error the caller saw.
async fn give_up_on_create(a: &ArmApp, key: Option<&str>, patience: Duration) -> reqwest::Error {
    let impatient = reqwest::Client::builder()
        .timeout(patience)
        .build()
        .unwrap();
    let request = impatient.post(format!("{}/api/CreateVM", a.app.base));
    let request = match key {
        Some(key) => request.header("Idempotency-Key", key),
        None => request,
    };
    request.send().await.unwrap_err()
}

/// A CreateVM spawned in the background.
fn spawn_create(a: &Arc<ArmApp>) -> tokio::task::JoinHandle<Answer> {
    let a = a.clone();
    tokio::spawn(async move { a.app.create_vm().await })
}

/// Waits (at most 2 s) until the store holds `count` rows.
async fn until_rows(a: &ArmApp, count: usize) {
    until(Duration::from_secs(2), || async {
        rows(&a.store).await.len() == count
    })
    .await;
}

/// Waits (at most 10 s) until the fake has accepted one VM create.
async fn until_one_put_accepted(a: &ArmApp) {
    until(Duration::from_secs(10), || async {
        a.fake.fake.accepted(FakeOp::PutVm).len() == 1
    })
    .await;
}

/// Lets ARM finish its creates and runs a reconcile pass.
async fn finish_creates(a: &ArmApp) {
    a.fake.clock.advance(time::Duration::minutes(3));
    a.app.reconcile().await;
}

#[tokio::test]
async fn a_caller_who_gives_up_during_a_slow_create_gets_the_vm_on_retry_with_its_key() {
    let a = spawn_with_slow_puts(&[], 1, Duration::from_secs(2)).await;
    let gave_up = give_up_on_create(&a, Some("slow-1"), Duration::from_millis(300)).await;
    assert!(gave_up.is_timeout(), "{gave_up}");

    // The retry waits for the first attempt, which went on without its caller.
    let retried = create_with_key(&a.app, "slow-1").await;
    assert_eq!(
        (retried.status, retried.json["action"].as_str()),
        (202, Some("created")),
        "{:?}",
        retried.json
    );
    let all = rows(&a.store).await;
    assert_eq!(all.len(), 1, "one VM");
    assert_eq!(retried.json["vm"]["vmId"], all[0].id.as_str());
    assert_eq!(
        a.fake.fake.accepted(FakeOp::PutVm).len(),
        1,
        "one ARM create"
    );

    // It completes for the matchmaker, who now has its vmId.
    finish_creates(&a).await;
    assert_eq!(rows(&a.store).await[0].state, VmState::Running);
}

#[tokio::test]
async fn a_caller_who_gives_up_without_a_key_does_not_stop_the_create() {
    let a = spawn_with_slow_puts(&[], 1, Duration::from_secs(1)).await;
    let gave_up = give_up_on_create(&a, None, Duration::from_millis(200)).await;
    assert!(gave_up.is_timeout(), "{gave_up}");
    until_one_put_accepted(&a).await;
    let vm = last_row(&a.store).await;
    assert_eq!(
        (vm.state, vm.purpose),
        (VmState::Creating, Purpose::Matchmaker)
    );
    finish_creates(&a).await;
    let vm = last_row(&a.store).await;
    assert_eq!(
        vm.state,
        VmState::Running,
        "the VM completes; nothing is orphaned in ARM"
    );
}

#[tokio::test]
async fn two_throttles_with_retry_after_1_are_waited_out() {
    let a = spawn_arm(&[]).await;
    a.fake
        .fake
        .fail_next(FakeOp::PutVm, 2, HttpFault::throttled(1));
    let got = a.app.create_vm().await;
    assert_eq!(
        (got.status, got.json["action"].as_str()),
        (202, Some("created")),
        "{:?}",
        got.json
    );
    let puts = statuses(&a.fake.fake, FakeOp::PutVm);
    assert_eq!(puts, [429, 429, 201]);
    let vm = last_row(&a.store).await;
    assert_eq!(
        (vm.state, vm.purpose),
        (VmState::Creating, Purpose::Matchmaker)
    );
}

#[tokio::test]
async fn server_errors_with_a_short_retry_after_are_waited_out_by_the_arm_client() {
    let a = spawn_arm(&[]).await;
    a.fake.fake.fail_next(
        FakeOp::PutVm,
        2,
        HttpFault {
            retry_after: Some(1),
            ..HttpFault::server_error()
        },
    );
    let started = Instant::now();
    let got = a.app.create_vm().await;
    assert_eq!(
        (got.status, got.json["action"].as_str()),
        (202, Some("created")),
        "{:?}",
        got.json
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "each Retry-After was honoured"
    );
    let puts = statuses(&a.fake.fake, FakeOp::PutVm);
    assert_eq!(
        puts,
        [500, 500, 201],
        "retried by the client only, not again on top"
    );
}

#[tokio::test]
async fn a_throttle_past_the_budget_answers_503_and_hands_the_row_to_the_buffer() {
    for (budget, retry_after) in [("0", 1), ("10", 30)] {
        let a = spawn_arm(&[("VMPOOL_ARM_RETRY_BUDGET_SECS", budget)]).await;
        a.fake
            .fake
            .fail_next(FakeOp::PutVm, 1, HttpFault::throttled(retry_after));
        let got = a.app.create_vm().await;
        assert_eq!(got.status, 503, "{:?}", got.json);
        assert_eq!(got.json["error"]["code"], "Unavailable");
        assert_eq!(got.headers["retry-after"], retry_after.to_string().as_str());
        let vm = last_row(&a.store).await;
        assert_eq!((vm.state, vm.purpose), (VmState::Creating, Purpose::Buffer));
        assert_eq!(a.fake.fake.requests().len(), 1, "no retry past the budget");
    }
}

#[tokio::test]
async fn the_capacity_gate_is_not_held_while_arm_is_slow() {
    let a = Arc::new(spawn_with_slow_puts(&[], 2, Duration::from_secs(3)).await);
    let first = spawn_create(&a);
    until_rows(&a, 1).await;
    let second = spawn_create(&a);
    // Both intents are written while the first ARM call is still waiting.
    until_rows(&a, 2).await;
    assert!(!first.is_finished() && !second.is_finished());
    for done in [first.await.unwrap(), second.await.unwrap()] {
        assert_eq!(done.status, 202, "{:?}", done.json);
    }
    assert_eq!(a.fake.fake.accepted(FakeOp::PutVm).len(), 2);
}

#[tokio::test]
async fn the_request_timeout_answers_503_and_the_create_goes_on() {
    let a = spawn_with_slow_puts(
        &[("VMPOOL_REQUEST_TIMEOUT_SECS", "1")],
        1,
        Duration::from_secs(2),
    )
    .await;
    let got = a.app.create_vm().await;
    assert_eq!(got.status, 503, "{:?}", got.json);
    assert_eq!(got.json["error"]["code"], "Unavailable");
    assert!(got.headers.contains_key("retry-after"));
    until_one_put_accepted(&a).await;
    let vm = last_row(&a.store).await;
    assert_eq!(
        (vm.state, vm.purpose),
        (VmState::Creating, Purpose::Matchmaker)
    );
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_get_503_at_once() {
    let a = Arc::new(
        spawn_with_slow_puts(
            &[("VMPOOL_MAX_CONCURRENT_REQUESTS", "1")],
            1,
            Duration::from_secs(2),
        )
        .await,
    );
    let slow = spawn_create(&a);
    until_rows(&a, 1).await;
    let refused = a.app.available().await;
    assert_eq!(refused.status, 503, "{:?}", refused.json);
    assert_eq!(refused.json["error"]["code"], "Unavailable");
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(slow.await.unwrap().status, 202);
    assert_eq!(
        a.app.available().await.status,
        200,
        "served again once it is free"
    );
}
