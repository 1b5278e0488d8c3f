#!/usr/bin/env bash
# Installs what vscale needs on Debian 12 (only what is missing), builds it into build/
# (Release), then:
#   scripts/setup.sh demo   runs the demo
#   scripts/setup.sh test   runs the whole ctest suite and exits with its status
#   scripts/setup.sh        only installs and builds
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-}"
case "$mode" in
  ""|demo|test) ;;
  *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac

packages=(g++ cmake make pkg-config libtbb-dev libboost-dev libeigen3-dev libfmt-dev
          doctest-dev libcereal-dev libhwloc-dev)

missing=()
for pkg in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} > 0)); then
  echo "setup.sh: installing missing packages: ${missing[*]}"
  sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"

case "$mode" in
  demo)
    # For now the demo is the remotecall example; the advection demo replaces it later.
    build/examples/remotecall -p 2
    ;;
  test)
    status=0
    ctest --test-dir build --output-on-failure -j2 || status=$?
    exit "$status"
    ;;
esac
