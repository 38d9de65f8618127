#!/usr/bin/env bash
# Runs schemathesis against a running vmpool: the debug binary on a free loopback port with its
# embedded defaults (in-memory table, simulated ARM with 1 s latencies, the reconcile loop every
# second), driven by the OpenAPI document it serves. Fails on any 5xx but the documented 503
# refusals (scripts/conformance_checks.py) and on any response that does not match the document.
# Expects .venv/ (scripts/test.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=target/conformance-vmpool.log
# VMPOOL_MAX_VMS is raised so that hundreds of generated CreateVM calls never fill the pool:
# a full pool answers 503 CapacityExhausted by design, which the server-error check would count.
VMPOOL_PORT=$port VMPOOL_BIND=127.0.0.1 VMPOOL_MAX_VMS=10000 \
VMPOOL_SIM_CREATE_SECS=1 VMPOOL_SIM_START_SECS=1 VMPOOL_SIM_DEALLOCATE_SECS=1 \
VMPOOL_RECONCILE_SECS=1 RUST_LOG=warn \
  target/debug/vmpool >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do
  .venv/bin/python -c "import urllib.request as u; u.urlopen('$base/', timeout=1)" 2>/dev/null && break
  sleep 0.1
done
SCHEMATHESIS_HOOKS=conformance_checks PYTHONPATH=scripts \
.venv/bin/schemathesis run "$base/api/openapi.json" --url "$base" \
  --checks no_server_error_but_documented_refusals,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance \
  --phases coverage,fuzzing,stateful --max-examples 20 --seed 20260101 --generation-database none \
  --request-timeout 10 --no-color
