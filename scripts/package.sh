#!/usr/bin/env bash
# Assembles the folder that `func start` and `func azure functionapp publish` expect: host.json,
# one folder per function with its function.json, and the vmpool executable, built as a static
# x86_64 Linux binary (target x86_64-unknown-linux-musl), so it runs on every Functions Linux
# image whatever the C library of the machine that built it.
#
#   scripts/package.sh [OUT]          OUT defaults to dist/functionapp
#
# How it builds (VMPOOL_PACKAGE_BUILDER):
#   cargo     cargo with the musl target (the default on Linux x86_64); installs the rustup
#             target, and Debian's musl-tools (the C compiler ring needs) when missing
#   zigbuild  cargo-zigbuild, with zig as the C compiler and linker (the default elsewhere,
#             macOS included): `pip install ziglang cargo-zigbuild`, or
#             `brew install zig && cargo install --locked cargo-zigbuild`
#   cross     cross, building in a container (needs Docker or Podman):
#             `cargo install --locked cross`
# VMPOOL_PACKAGE_PROFILE picks the cargo profile (default release).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist/functionapp}"
target=x86_64-unknown-linux-musl
profile="${VMPOOL_PACKAGE_PROFILE:-release}"
if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
  builder="${VMPOOL_PACKAGE_BUILDER:-cargo}"
else
  builder="${VMPOOL_PACKAGE_BUILDER:-zigbuild}"
fi

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "package.sh: run as root or install sudo to install: ${*: -1}" >&2; return 1
  fi
}

if [ "$builder" != cross ] && command -v rustup >/dev/null \
  && ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi
case "$builder" in
  cargo)
    # ring compiles C and assembly for the target: it needs a musl C compiler.
    if ! command -v musl-gcc >/dev/null && ! command -v x86_64-linux-musl-gcc >/dev/null; then
      if command -v apt-get >/dev/null; then
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y musl-tools
      else
        echo "package.sh: no musl C compiler (musl-gcc); install musl-tools, or set VMPOOL_PACKAGE_BUILDER=zigbuild or cross" >&2
        exit 1
      fi
    fi
    cargo build --locked --profile "$profile" --target "$target" --bin vmpool
    ;;
  zigbuild)
    cargo zigbuild --locked --profile "$profile" --target "$target" --bin vmpool
    ;;
  cross)
    cross build --locked --profile "$profile" --target "$target" --bin vmpool
    ;;
  *)
    echo "package.sh: VMPOOL_PACKAGE_BUILDER must be cargo, zigbuild or cross; got $builder" >&2
    exit 2
    ;;
esac
case "$profile" in
  dev) dir=debug ;;
  *) dir="$profile" ;;
esac

rm -rf "$out"
mkdir -p "$out"
cp host.json "$out/"
[ -f local.settings.json ] && cp local.settings.json "$out/"
for dir_ in function-definitions/*/; do
  name=$(basename "$dir_")
  mkdir -p "$out/$name"
  cp "$dir_/function.json" "$out/$name/"
done
# The name host.json gives the executable (customHandler.description.defaultExecutablePath).
cp "target/$target/$dir/vmpool" "$out/vmpool"
echo "packaged into $out:"
(cd "$out" && find . -type f | sort)
