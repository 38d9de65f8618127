#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need (Azurite, pinned by
# package-lock.json, into node_modules/), then runs them all. Tests that need Azurite start
# and stop it themselves on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --no-audit --no-fund
cargo test --locked --workspace --all-targets
# The chaos soak: three vmpool processes on one Azurite table and the ARM fake, faults on a
# seeded schedule, invariants checked throughout (about 100 s; see README, "Soak").
cargo build --locked --workspace --bins
target/debug/vmpool-soak
