#!/usr/bin/env bash
# Checks the OpenAPI document the way a matchmaker team uses it, against a running vmpool (the
# debug binary on a free loopback port, in-memory table, simulated ARM with 1 s latencies, the
# reconcile loop every second, a function key required):
#   - Redocly's recommended rules find no error; openapi-spec-validator accepts it;
#   - openapi-python-client generates a client that keeps every operation;
#   - openapi-typescript types it, the matchmaker example (examples/matchmaker) compiles with
#     tsc --strict against those types, and runs a match's whole life against the service.
# Expects node_modules/ (npm ci) and .venv/ (scripts/test.sh makes both).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/clients
rm -rf "$out" examples/matchmaker/generated target/matchmaker
mkdir -p "$out" examples/matchmaker/generated
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key=clients-test-key
VMPOOL_PORT=$port VMPOOL_BIND=127.0.0.1 VMPOOL_API_KEY=$key \
VMPOOL_SIM_CREATE_SECS=1 VMPOOL_SIM_START_SECS=1 VMPOOL_SIM_DEALLOCATE_SECS=1 \
VMPOOL_RECONCILE_SECS=1 VMPOOL_GAME_PORTS=7777 RUST_LOG=warn \
  target/debug/vmpool >"$out/vmpool.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do
  .venv/bin/python -c "import urllib.request as u; u.urlopen('$base/', timeout=1)" 2>/dev/null && break
  sleep 0.1
done
# The live document, as a client generator fetches it (anonymous).
.venv/bin/python -c "import urllib.request as u, sys; sys.stdout.buffer.write(u.urlopen('$base/api/openapi.json', timeout=5).read())" >"$out/openapi.json"

echo "== Redocly lint (recommended rules)"
npx --no-install redocly lint --extends recommended "$out/openapi.json"
echo "== openapi-spec-validator"
.venv/bin/openapi-spec-validator "$out/openapi.json"

echo "== openapi-python-client"
(cd "$out" && PATH="$PWD/../../.venv/bin:$PATH" ../../.venv/bin/openapi-python-client generate \
  --path openapi.json --meta none --output-path vmpool_client) 2>&1 | tee "$out/python-client.log"
.venv/bin/python - "$out" <<'PY'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
doc = json.loads((out / "openapi.json").read_text())
ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
modules = {p.stem for p in (out / "vmpool_client" / "api").glob("*/*.py") if p.stem != "__init__"}
log = (out / "python-client.log").read_text()
dropped = re.findall(r".*(?:will not be generated|Warning\(s\) encountered).*", log)
if dropped or len(modules) != len(ids):
    sys.exit(f"the Python client lost operations: {len(modules)} modules for {len(ids)} operations {ids}; {dropped}")
print(f"Python client: {len(modules)} operations of {len(ids)}: {sorted(modules)}")
PY

echo "== openapi-typescript, tsc --strict, the matchmaker example"
npx --no-install openapi-typescript "$out/openapi.json" -o examples/matchmaker/generated/vmpool.d.ts
npx --no-install tsc -p examples/matchmaker
node target/matchmaker/matchmaker.mjs "$base" "$key"
