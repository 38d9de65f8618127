#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need (Azurite, playwright-core,
# Redocly's CLI, openapi-typescript, openapi-fetch and TypeScript, pinned by package-lock.json,
# into node_modules/; schemathesis, checkov, openapi-spec-validator and openapi-python-client,
# pinned by requirements-test.txt, into .venv/; Debian's chromium when it is missing; the musl
# target and Debian's musl-tools through scripts/package.sh), then runs them all.
# Tests that need Azurite start and stop it themselves on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --no-audit --no-fund

# The deployment package, static (musl), as the package test (tests/it/package.rs) builds it:
# built here first so that the test finds it built and its compilation does not compete for
# the cores with the timed tests running beside it.
VMPOOL_PACKAGE_PROFILE=package-check ./scripts/package.sh target/package-check

# Unit, router, host-contract, Azurite, ARM-fake and template tests, the package test and the
# real binary started before its storage.
cargo test --locked --workspace --all-targets

# Python tools, in a local virtual environment.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-test.txt

# The Bicep template: checkov's static analysis (findings are fixed or skipped with a reason
# in the template). --skip-download: no call to checkov's online service. A file checkov cannot
# parse is not checked at all, yet checkov still exits 0: that fails here.
checkov_out=$(.venv/bin/checkov --directory infra --framework bicep --compact --quiet --skip-download) \
  || { echo "$checkov_out"; exit 1; }
echo "$checkov_out"
if grep -q "Parsing errors" <<<"$checkov_out"; then
  echo "checkov could not parse a file of infra/" >&2
  exit 1
fi

# The binaries the remaining checks run (the service, the ARM fake, the soak).
cargo build --locked --workspace --bins

# The API against its OpenAPI document, on the running service.
./scripts/conformance.sh

# The document as client generators read it: Redocly's recommended rules, the OpenAPI
# validator, a generated Python client, and the typed TypeScript matchmaker example run
# through a match's whole life against the service.
./scripts/clients.sh

# The dashboard in headless Chromium.
if [ ! -x /usr/bin/chromium ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
node --test tests/browser/

# The chaos soak: three vmpool processes on one Azurite table and the ARM fake, two pools and
# a rollout of one of them, faults on a seeded schedule, invariants checked throughout (about
# 110 s; see README, "Soak").
target/debug/vmpool-soak
