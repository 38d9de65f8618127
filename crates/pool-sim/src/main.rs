//! Replays matchmaker demand traces on virtual time through vmpool (the real pool rules and
//! reconcile plan) and through the reference fixed-buffer pool, and prints a comparison.
//!
//! `cargo run --release -p vmpool-sim -- [N [MIN_STANDBY [READY_SECS [COOLDOWN_SECS]]]]`
//!
//! N is the fixed buffer's size (default 5, the smallest that keeps up with the steady
//! trace); vmpool runs with its defaults (or the given overrides), and once more with
//! `VMPOOL_MIN_STANDBY=N` to show what a fixed floor costs.

use vmpool::config::PoolPolicy;
use vmpool_sim::{Outcome, run_fixed, run_vmpool, standard_traces};

fn row(trace: &str, policy: &str, o: &Outcome) {
    println!(
        "| {trace:<7} | {policy:<22} | {:>6} | {:>10.1} | {:>8} | {:>8} | {:>8.1} | {:>8} |",
        o.served,
        o.total_wait as f64 / 60.0,
        o.p95_wait,
        o.max_wait,
        o.vm_hours,
        o.peak_vms
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let arg = |i: usize| std::env::args().nth(i).and_then(|a| a.parse::<u64>().ok());
    let defaults = PoolPolicy::default();
    let policy = PoolPolicy {
        min_standby: arg(2).map_or(defaults.min_standby, |v| v as u32),
        ready_estimate: arg(3).map_or(defaults.ready_estimate, std::time::Duration::from_secs),
        buffer_cooldown: arg(4).map_or(defaults.buffer_cooldown, std::time::Duration::from_secs),
        max_vms: 500,
        ..defaults
    };
    println!(
        "| trace   | policy                 | served | wait (min) | p95 (s)  | max (s)  | VM-hours | peak VMs |"
    );
    println!(
        "|---------|------------------------|--------|------------|----------|----------|----------|----------|"
    );
    for (i, trace) in standard_traces().iter().enumerate() {
        let seed = 100 + i as u64;
        let fixed = run_fixed(trace, n, seed);
        row(trace.name, &format!("fixed buffer N={n}"), &fixed);
        let pool = run_vmpool(trace, policy.clone(), seed).await;
        row(
            trace.name,
            &format!("vmpool min standby {}", policy.min_standby),
            &pool,
        );
        let floor = PoolPolicy {
            min_standby: u32::try_from(n).unwrap_or(5),
            ..policy.clone()
        };
        let floored = run_vmpool(trace, floor, seed).await;
        row(trace.name, &format!("vmpool min standby {n}"), &floored);
        if trace.name == "spike" {
            let wait_ratio = pool.total_wait as f64 / fixed.total_wait.max(1) as f64;
            let hours_ratio = pool.vm_hours / fixed.vm_hours;
            println!(
                "spike: vmpool's total wait is {:.1}% of the fixed buffer's, its VM-hours {:.1}% (target: at most 50% and 100%)",
                wait_ratio * 100.0,
                hours_ratio * 100.0
            );
        }
    }
}
