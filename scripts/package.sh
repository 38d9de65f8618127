#!/usr/bin/env bash
# Assembles the folder that `func start` and `func azure functionapp publish` expect:
# host.json, one folder per function with its function.json, and the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist/functionapp}"
cargo build --release --locked --bin vmpool
rm -rf "$out"
mkdir -p "$out"
cp host.json "$out/"
[ -f local.settings.json ] && cp local.settings.json "$out/"
for dir in function-definitions/*/; do
  name=$(basename "$dir")
  mkdir -p "$out/$name"
  cp "$dir/function.json" "$out/$name/"
done
cp target/release/vmpool "$out/vmpool"
echo "packaged into $out:"
(cd "$out" && find . -type f | sort)
