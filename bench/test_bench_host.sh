#!/bin/bash
# The ctest bench_host_quick: makes a bundle from BUILD_DIR with bench_bundle.sh, runs
# bench_host.sh --quick from it, then bench_report on its output, and checks that the run
# succeeded, that the report has a row for every measure in the JSON lines, and that the parts
# every run takes are there. No timing is checked.
#   bash bench/test_bench_host.sh BUILD_DIR WORK_DIR
set -uo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 BUILD_DIR WORK_DIR" >&2; exit 2; }
build=$1 work=$2
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fail() { echo "test_bench_host: FAILED: $*" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work" || fail "cannot make $work"
bash "$src/bench_bundle.sh" "$build" "$work/bundle" || fail "bench_bundle.sh"
bash "$work/bundle/bench_host.sh" --quick "$work/bench.jsonl" || fail "bench_host.sh --quick (exit status $?; see its skipped lines)"
"$work/bundle/run" bench_report "$work/bench.jsonl" --md "$work/report.md" --svg "$work/report.svg" ||
  fail "bench_report"

head -1 "$work/bench.jsonl" | grep -q '^{"bench":"host","date":"[^"]*","hostname":"[^"]*","nproc":[0-9]*,"commit":"' ||
  fail "the first line is not the host line"
grep -q '^{"bench":"process_counts"' "$work/bench.jsonl" || fail "no process_counts line"
grep -q '^- host ' "$work/report.md" || fail "the report has no host line"
grep -q '</svg>' "$work/report.svg" && grep -q '<polyline' "$work/report.svg" || fail "the chart has no lines"

# A row per measure: "| bench[ workload] | variant |" for every line with seconds.
missing=0
while IFS=$'\t' read -r group variant; do
  grep -qF "| $group | $variant |" "$work/report.md" || { echo "no row for $group $variant" >&2; missing=1; }
done < <(awk '/"seconds":/ {
           b = v = w = ""
           if (match($0, /"bench":"[^"]*"/)) b = substr($0, RSTART + 9, RLENGTH - 10)
           if (match($0, /"variant":"[^"]*"/)) v = substr($0, RSTART + 11, RLENGTH - 12)
           if (match($0, /"workload":"[^"]*"/)) w = " " substr($0, RSTART + 12, RLENGTH - 13)
           print b w "\t" v
         }' "$work/bench.jsonl" | sort -u)
((missing == 0)) || fail "rows missing from the report"

# The parts every run takes (the MPI reference only where it can run).
need=("remotecall | socketpair_rtt" "remotecall | remotecall_fetch_rtt" "remotecall | startup" "pmap | pmap_batch1"
      "pmap | pmap_auto" "scaling advection | processes" "scaling advection | openmp_reference"
      "scaling monte_carlo_pi | processes" "scaling stencil | processes" "stencil | persistent" "stencil | barrier")
if ! head -1 "$work/bench.jsonl" | grep -q '"mpirun":"none"'; then
  need+=("remotecall | mpi_pingpong_rtt")
else
  grep -q '"what":"mpi_pingpong_rtt"' "$work/bench.jsonl" || fail "no MPI here, and no skipped line saying so"
fi
for n in "${need[@]}"; do grep -qF "| $n |" "$work/report.md" || fail "the report has no '$n' row"; done
echo "test_bench_host: ok ($(grep -c '"seconds":' "$work/bench.jsonl") measurements, $(grep -c '^| [a-z]' "$work/report.md") rows)"
