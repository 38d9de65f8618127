//! The reconcile pass's log line, as a soak harness reads it from JSON logs: one
//! `reconcile pass` line per pass that ran, with `pass_started_at` and `pass_finished_at` in
//! RFC 3339, and a debug line for a pass skipped because another instance holds the lease.
//!
//! A binary of its own: it installs the process's global log subscriber, which tests sharing
//! a process with others could not do reliably.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use vmpool::clock::{Clock, ManualClock};
use vmpool::compute::sim::{Latencies, SimCloud, SimulatedCompute};
use vmpool::config::PoolPolicy;
use vmpool::pool::Pool;
use vmpool::reconcile::Reconciler;
use vmpool::store::memory::MemoryStore;

#[path = "it/support/log.rs"]
mod log;

use log::Captured;

#[tokio::test]
async fn each_pass_that_ran_logs_its_start_and_end_and_a_skipped_one_says_so() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();

    let clock = Arc::new(ManualClock::default());
    let cloud = Arc::new(SimCloud::new(
        clock.clone() as Arc<dyn Clock>,
        Latencies::default(),
        1,
    ));
    let pool = Arc::new(Pool::new(
        Arc::new(MemoryStore::new()),
        Arc::new(SimulatedCompute::new(cloud, "test")),
        clock.clone(),
        Arc::new(PoolPolicy {
            min_standby: 1,
            ..PoolPolicy::default()
        }),
    ));
    let one = Reconciler::new(pool.clone());
    let other = Reconciler::new(pool);
    assert!(!one.run_once().await.unwrap().skipped);
    clock.advance(time::Duration::seconds(10));
    assert!(!one.run_once().await.unwrap().skipped);
    assert!(other.run_once().await.unwrap().skipped);

    let text = captured.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let passes: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "reconcile pass")
        .collect();
    assert_eq!(passes.len(), 2, "one line per pass that ran: {text}");
    let at = |pass: &Value, field: &str| {
        OffsetDateTime::parse(pass["fields"][field].as_str().unwrap(), &Rfc3339).unwrap()
    };
    for pass in &passes {
        assert!(at(pass, "pass_started_at") <= at(pass, "pass_finished_at"));
    }
    assert!(at(passes[0], "pass_finished_at") <= at(passes[1], "pass_started_at"));
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("another instance holds the reconcile lease"))),
        "the skipped pass says so at debug level: {text}"
    );
}
