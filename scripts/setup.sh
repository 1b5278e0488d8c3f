#!/usr/bin/env bash
# Installs what vscale needs on Debian 12 (only what is missing), builds it into build/
# (Release), then:
#   scripts/setup.sh demo   runs the demo
#   scripts/setup.sh test   runs the whole ctest suite, its MPI tests again with MPICH
#                           (scripts/mpich.sh), then the suite under the sanitizers
#                           (scripts/sanitizers.sh), and exits non-zero if any of it fails
#   scripts/setup.sh        only installs and builds
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-}"
case "$mode" in
  ""|demo|test) ;;
  *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac

packages=(g++ cmake make pkg-config libtbb-dev libeigen3-dev libfmt-dev
          doctest-dev libcereal-dev libhwloc-dev libopenmpi-dev openmpi-bin
          python3-yaml)
# The test command also runs the MPI tests with MPICH (scripts/mpich.sh).
if [[ "$mode" == test ]]; then
  packages+=(mpich libmpich-dev)
fi

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
    # The advection benchmark sized to this machine: 1 process and every usable core (nproc,
    # capped by a cgroup CPU quota), and the largest N <= 500 for which the two N^3 arrays of
    # doubles take at most a quarter of the available memory (MemAvailable, capped by a
    # cgroup memory limit).
    cores="$(nproc)"
    if [[ -r /sys/fs/cgroup/cpu.max ]]; then
      read -r quota period < /sys/fs/cgroup/cpu.max || true
      if [[ "${quota:-max}" != max && "${period:-0}" -gt 0 ]]; then
        quota_cores=$(((quota + period - 1) / period))
        if ((quota_cores < cores)); then cores=$quota_cores; fi
      fi
    fi
    if ((cores < 1)); then cores=1; fi
    avail=$(($(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) * 1024))
    if [[ -r /sys/fs/cgroup/memory.max && -r /sys/fs/cgroup/memory.current ]]; then
      limit="$(cat /sys/fs/cgroup/memory.max)"
      if [[ "$limit" != max ]]; then
        room=$((limit - $(cat /sys/fs/cgroup/memory.current)))
        if ((room < avail)); then avail=$room; fi
      fi
    fi
    n="$(awk -v b="$avail" 'BEGIN { n = int((b / 4 / 16) ^ (1 / 3) + 1e-9); if (n > 500) n = 500; if (n < 16) n = 16; print n }')"
    procs=1
    if ((cores > 1)); then procs="1,$cores"; fi
    echo "demo: advection on ${n}^3 doubles, process counts $procs ($cores cores, $((avail >> 20)) MiB available)"
    build/bench/bench_advection --n "$n" --procs "$procs" -t "$cores" --reps 3 --svg build/advection.svg
    echo "demo: the chart (time per variant and process count) is in $(pwd)/build/advection.svg"
    ;;
  test)
    # The suite in the Release build, then again under ASan+UBSan and (a subset) under TSan
    # (scripts/sanitizers.sh, about 15 more minutes on 2 cores; VSCALE_SKIP_SANITIZERS=1 skips
    # it for a quick local run). The status is the first failure's.
    # A line per part at the end, so that the tail of a long log says which part failed.
    status=0
    summary=()
    part() {  # part NAME COMMAND...: runs it, records its outcome, keeps the first failure
      local rc=0
      "${@:2}" || rc=$?
      if ((rc == 0)); then summary+=("  $1: ok"); else summary+=("  $1: FAILED (exit $rc)"); fi
      if ((status == 0)); then status=$rc; fi
    }
    part "Release suite (ctest in build/)" ctest --test-dir build --output-on-failure -j2
    part "MPI tests with MPICH (scripts/mpich.sh)" bash scripts/mpich.sh
    if [[ "${VSCALE_SKIP_SANITIZERS:-0}" != 1 ]]; then
      part "sanitizers (scripts/sanitizers.sh)" bash scripts/sanitizers.sh
    else
      summary+=("  sanitizers: skipped (VSCALE_SKIP_SANITIZERS=1)")
    fi
    echo "======== setup.sh test: summary ========"
    printf '%s\n' "${summary[@]}"
    exit "$status"
    ;;
esac
