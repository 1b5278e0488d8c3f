#!/usr/bin/env bash
# The master of an MPI job is killed with SIGKILL: within 2 s no process of the job (leaders,
# workers on every "node", mpirun) is left. Usage: master_killed.sh MPIRUN TEST_MPI
set -u
mpirun=$1
prog=$2
# The job's processes: mpirun, the ranks and their workers (a worker's command line starts
# with the program's path too); zombies do not count.
job_procs() {
  ps -eo pid=,stat=,args= | awk -v p="$prog" '$2 !~ /^Z/ && index($0, p) && !index($0, "master_killed.sh")'
}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$mpirun" --bind-to none -n 3 "$prog" -p 2 -tc=mpi.idle_master --no-skip >"$out" 2>&1 &
job=$!
for _ in $(seq 1 600); do
  grep -q '^mpi-idle-ready' "$out" && break
  sleep 0.1
done
if ! grep -q '^mpi-idle-ready' "$out"; then
  echo "FAIL: the job did not start within 60 s"; cat "$out"
  kill -9 "$job" 2>/dev/null; job_procs | awk '{print $1}' | xargs -r kill -9; exit 1
fi
master=$(awk '/^mpi-idle-ready/ {print $2; exit}' "$out")
echo "job up: $(job_procs | wc -l) processes; killing the master (pid $master)"
kill -9 "$master"
for i in $(seq 1 20); do
  sleep 0.1
  if [[ -z "$(job_procs)" ]]; then
    echo "PASS: nothing left $(( i * 100 )) ms after the master was killed"
    exit 0
  fi
done
echo "FAIL: 2 s after the master was killed, still running:"
job_procs
cat "$out"
job_procs | awk '{print $1}' | xargs -r kill -9
exit 1
