#!/usr/bin/env bash
# The MPI tests again with MPICH (Debian's mpich, libmpich-dev) instead of Open MPI: vscale
# speaks only standard MPI, and this keeps it honest. Builds build-mpich/ (Release, only what
# the MPI tests run: test_mpi and the two examples run under mpiexec) against MPICH's compiler
# wrapper and runs `ctest -L '^mpi$'` there with MPICH's mpiexec. `bash scripts/setup.sh test`
# calls it after the Release suite, where both MPI libraries are installed (Open MPI stays the
# system default: Debian's alternatives prefer it). About 3 minutes on 2 cores.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

for f in /usr/bin/mpicxx.mpich /usr/bin/mpicc.mpich /usr/bin/mpiexec.mpich; do
  if [[ ! -x "$f" ]]; then
    echo "mpich.sh: $f is missing (apt-get install mpich libmpich-dev)" >&2
    exit 1
  fi
done
cmake -S . -B build-mpich -DCMAKE_BUILD_TYPE=Release -DVSCALE_MPI=ON \
  -DMPI_CXX_COMPILER=/usr/bin/mpicxx.mpich -DMPI_C_COMPILER=/usr/bin/mpicc.mpich \
  -DMPIEXEC_EXECUTABLE=/usr/bin/mpiexec.mpich -DVSCALE_MPIEXEC=/usr/bin/mpiexec.mpich
# The library must really be MPICH's, not Open MPI's found by another route.
grep -q 'libmpich' build-mpich/CMakeCache.txt || { echo "mpich.sh: CMake did not take MPICH" >&2; exit 1; }
cmake --build build-mpich -j"$(nproc)" --target test_mpi monte_carlo_pi jobs_results
# ldd's output is read whole first: `ldd | grep -q` under pipefail fails now and then, when grep
# exits at the first match and ldd is still writing (seen on a loaded 2-core machine).
libs="$(ldd build-mpich/tests/test_mpi)"
[[ "$libs" == *libmpich* ]] || { echo "mpich.sh: test_mpi is not linked to MPICH:" >&2; echo "$libs" >&2; exit 1; }
ctest --test-dir build-mpich -L '^mpi$' --output-on-failure
