#!/bin/bash
# bench_bundle.sh: makes the folder that bench_host.sh runs from on the bench host: the programs
# it needs with their shared libraries (/work/shared/tools/bundle: DIR/run PROG ARGS runs one),
# bench_host.sh itself, and COMMIT (the git commit of this checkout, "-dirty" when it has
# uncommitted changes).
#
#   bash bench/bench_bundle.sh BUILD_DIR DIR      e.g. bash bench/bench_bundle.sh build benchdir
#   then on the bench host:  bash DIR/bench_host.sh $OUT/bench.jsonl
#
# BUILD_DIR must have the benches built (cmake --build BUILD_DIR --target bench_remotecall
# bench_pmap bench_advection bench_stencil bench_scaling mpi_pingpong bench_report). mpi_pingpong
# is taken where it was built (CMake found MPI); mpirun itself is not bundled: the MPI reference
# runs only on a host with Open MPI installed.
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 BUILD_DIR DIR" >&2; exit 2; }
build=$1 dir=$2
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
progs=()
for p in bench_remotecall bench_pmap bench_advection bench_stencil bench_scaling bench_report; do
  [[ -x "$build/bench/$p" ]] || { echo "bench_bundle.sh: $build/bench/$p is missing: build it first" >&2; exit 1; }
  progs+=("$build/bench/$p")
done
if [[ -x "$build/bench/mpi_pingpong" ]]; then
  progs+=("$build/bench/mpi_pingpong")
else
  echo "bench_bundle.sh: note: no $build/bench/mpi_pingpong (built only where CMake found MPI): the bundle has no MPI reference" >&2
fi
rm -rf "$dir/bin" "$dir/lib"
tool=${VSCALE_BUNDLE_TOOL:-/work/shared/tools/bundle}
if [[ -x "$tool" ]]; then
  "$tool" "$dir" "${progs[@]}"
else
  # A checkout without the project's tools (a fresh clone, CI): the same layout, made here.
  # The host's own C runtime stays out of lib/ (its glibc must match its ld.so).
  echo "bench_bundle.sh: note: no $tool: bundling with ldd here" >&2
  mkdir -p "$dir/bin" "$dir/lib"
  for p in "${progs[@]}"; do
    cp -f "$p" "$dir/bin/"
    ldd "$p" | awk '/=> \// {print $3}' | while read -r lib; do
      case "$(basename "$lib")" in
        libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libgcc_s.so*) ;;
        *) cp -fL "$lib" "$dir/lib/" ;;
      esac
    done
  done
  cat > "$dir/run" <<'RUN'
#!/bin/bash
# usage: run PROGRAM_NAME [ARGS...]: runs bin/PROGRAM_NAME with the bundled libraries
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
prog=$1; shift
exec "$here/bin/$prog" "$@"
RUN
  chmod +x "$dir/run"
fi
cp -f "$src/bench_host.sh" "$dir/bench_host.sh"

# The Open MPI runtime, so that the MPI reference runs on a host without Open MPI: mpirun and
# orted, Open MPI's plugins and help files under DIR/mpi/ompi (the tree below its prefix, as
# installed: OPAL_PREFIX relocates it), PMIx's plugins and help files under DIR/mpi/pmix, and
# every library they load into DIR/lib. bench_host.sh uses it only where the host has no mpirun.
lib_deps() {  # the non-C-runtime libraries FILE... need, into DIR/lib
  for f in "$@"; do ldd "$f" 2> /dev/null | awk '/=> \// {print $3}'; done | sort -u | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libgcc_s.so*) ;;
      *) cp -fL "$lib" "$dir/lib/" ;;
    esac
  done
}
rm -rf "$dir/mpi"
ompi_path() { ompi_info --path all --parsable 2> /dev/null | awk -F: -v k="$1" '$1 == "path" && $2 == k {print $3; exit}'; }
if [[ -x "$build/bench/mpi_pingpong" ]] && command -v orterun > /dev/null && command -v orted > /dev/null &&
   command -v ompi_info > /dev/null; then
  prefix=$(ompi_path prefix) pkglibdir=$(ompi_path pkglibdir) pkgdatadir=$(ompi_path pkgdatadir)
  pmixlib=$(ldd "$pkglibdir"/mca_pmix_ext*.so 2> /dev/null | awk '/libpmix\.so/ {print $3; exit}')
  pmixdir=""
  [[ -n "$pmixlib" ]] && pmixdir=$(dirname "$(readlink -f "$pmixlib")")
  if [[ -n "$prefix" && -d "$pkglibdir" && -d "$pkgdatadir" && "$pkglibdir" == "$prefix"/* && "$pkgdatadir" == "$prefix"/* ]]; then
    ompi="$dir/mpi/ompi"
    mkdir -p "$ompi/bin" "$ompi/${pkglibdir#"$prefix"/}" "$ompi/${pkgdatadir#"$prefix"/}"
    cp -fL "$(command -v orterun)" "$ompi/bin/mpirun"
    cp -fL "$(command -v orted)" "$ompi/bin/orted"
    cp -a "$pkglibdir/." "$ompi/${pkglibdir#"$prefix"/}/"
    cp -a "$pkgdatadir/." "$ompi/${pkgdatadir#"$prefix"/}/"
    plugins=("$ompi/bin/mpirun" "$ompi/bin/orted" "$ompi/${pkglibdir#"$prefix"/}"/*.so)
    if [[ -n "$pmixdir" && -d "$pmixdir/pmix" ]]; then  # an external PMIx (Debian's libpmix2)
      mkdir -p "$dir/mpi/pmix/lib" "$dir/mpi/pmix/share"
      cp -a "$pmixdir/pmix" "$dir/mpi/pmix/lib/"
      [[ -d "$pmixdir/../share/pmix" ]] && cp -a "$pmixdir/../share/pmix" "$dir/mpi/pmix/share/"
      plugins+=("$dir/mpi/pmix/lib/pmix"/*.so)
    fi
    lib_deps "${plugins[@]}"
    echo "bench_bundle.sh: bundled Open MPI's runtime ($(orterun --version 2> /dev/null | head -1)) into $dir/mpi"
  else
    echo "bench_bundle.sh: note: Open MPI's directories are not under its prefix ($prefix): mpirun is not bundled" >&2
  fi
else
  echo "bench_bundle.sh: note: no Open MPI here (orterun, orted, ompi_info): mpirun is not bundled" >&2
fi
commit=$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)
if [[ "$commit" != unknown && -n "$(git -C "$src" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="$commit-dirty"
fi
echo "$commit" > "$dir/COMMIT"
echo "bench_bundle.sh: $dir is ready (commit $commit); on the bench host: bash $dir/bench_host.sh \$OUT/bench.jsonl"
