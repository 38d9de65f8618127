#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, then runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --all-targets
