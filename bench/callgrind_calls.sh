#!/bin/bash
# Instructions per call, by process and function, from callgrind (the method of bench/RESULTS.md,
# "where a round trip's time goes"): bench_callprobe runs N1 and N2 calls under
# `valgrind --tool=callgrind --trace-children=yes` (VSCALE_WORKER_EXE makes the worker run under
# the tool too), and each function's count is (at N2 - at N1) / (N2 - N1).
#
#   bench/callgrind_calls.sh BUILD_DIR [fetch|do|chan] [N1 N2] [TOP]
#
# Prints, for the master and for the worker, the total per call and the TOP functions. Wait
# loops (empty polls, the idle spin) are included: they depend on scheduling, not on the code
# path alone. Needs valgrind and python3.
set -euo pipefail
build=${1:?usage: callgrind_calls.sh BUILD_DIR [fetch|do|chan] [N1 N2] [TOP]}
mode=${2:-fetch}
n1=${3:-2000}
n2=${4:-12000}
top=${5:-30}
exe=$(cd "$build" && pwd)/bench/bench_callprobe
[ -x "$exe" ] || { echo "callgrind_calls.sh: $exe is missing (build the bench_callprobe target)" >&2; exit 2; }
command -v valgrind > /dev/null || { echo "callgrind_calls.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for n in "$n1" "$n2"; do
  # Small segment (VSCALE_MAX_PROCS, VSCALE_BULK_MB): the tool is slow to map a large one.
  VSCALE_WORKER_EXE="$exe" VSCALE_MAX_PROCS=4 VSCALE_BULK_MB=16 \
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/cg.$n.%p" \
    "$exe" -p 1 --mode "$mode" --calls "$n" > /dev/null 2> "$out/log.$n" ||
    { echo "callgrind_calls.sh: the probe failed at $n calls:" >&2; tail -5 "$out/log.$n" >&2; exit 1; }
done
python3 - "$out" "$n1" "$n2" "$top" << 'PY'
import collections, glob, os, re, subprocess, sys
out, n1, n2, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def load(f):
    text = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", f],
                          capture_output=True, text=True, check=True).stdout
    d = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
        if m: d[m.group(2).strip()] += int(m.group(1).replace(",", ""))
    return d
def by_pid(n):  # the lower pid is the master: it starts the worker
    return sorted(glob.glob(f"{out}/cg.{n}.*"), key=lambda f: int(f.rsplit(".", 1)[1]))
for role, a, b in zip(("master", "worker"), by_pid(n1), by_pid(n2)):
    da, db = load(a), load(b)
    per = {k: (db[k] - da.get(k, 0)) / (n2 - n1) for k in db}
    total = per.pop("PROGRAM TOTALS", 0.0)
    print(f"== {role}: {total:.0f} instructions per call")
    for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
        if abs(v) >= 5: print(f"{v:8.0f}  {k[:140]}")
PY
