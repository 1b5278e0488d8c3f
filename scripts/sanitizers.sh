#!/usr/bin/env bash
# The test suite under sanitizers: build-asan/ (AddressSanitizer + UndefinedBehaviorSanitizer,
# LeakSanitizer at exit) and build-tsan/ (ThreadSanitizer, a subset: see below), with the
# CMake option VSCALE_SANITIZE. `bash scripts/setup.sh test` (the README's test command, run
# by .ci/run) calls it after the Release suite; alone, after `bash scripts/setup.sh` has
# installed what is missing:   bash scripts/sanitizers.sh
# Exits non-zero if a build fails, a test fails, or any sanitizer report shows up in a test's
# output. About 15 minutes on the 2-core VM (builds 12, tests 3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A header before each phase, its time after it, and a summary line per phase for the end.
summary=()
phase_name=""
phase_t0=0
begin_phase() {
  phase_name="$1"
  phase_t0=$SECONDS
  echo
  echo "======== sanitizers.sh: $phase_name ========"
}
end_phase() {  # end_phase STATUS
  local took=$((SECONDS - phase_t0)) verdict=ok line
  if (($1 != 0)); then verdict="FAILED (status $1)"; fi
  line="$(printf '%-46s %s in %dm%02ds' "$phase_name" "$verdict" $((took / 60)) $((took % 60)))"
  echo "======== sanitizers.sh: $line ========"
  summary+=("$line")
}

status=0
# The suite in two sanitizer trees (CMake option VSCALE_SANITIZE): build-asan/
# (AddressSanitizer + UndefinedBehaviorSanitizer, LeakSanitizer at exit) and build-tsan/
# (ThreadSanitizer). RelWithDebInfo with "-O1 -g": line numbers in the reports, and no
# NDEBUG, so the debug-only checks (SharedArray bounds) are built and tested there. No
# benchmarks; compile-fail tests (only the compiler runs) and the install test are left out.
sanitizer_build() {  # sanitizer_build DIR VSCALE_SANITIZE
  cmake -S . -B "$1" -DVSCALE_SANITIZE="$2" -DVSCALE_MPI=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DVSCALE_BUILD_BENCH=OFF &&
    cmake --build "$1" -j"$(nproc)"
}
# A report can leave its test green: a worker's report kills only that worker, which some
# tests expect to die, and TSan's exit code (66) only replaces the status of a process that
# returns from main, which workers never do (they _exit). So every test's whole output is
# kept (--test-output-size-passed) and searched for reports. Reports of a deadly signal
# ("SEGV on unknown address" and the like) are left to the tests: several kill workers
# with signals on purpose, and an unexpected death fails its test anyway.
ctest_output_args=(--test-output-size-passed 100000000 --test-output-size-failed 100000000)
sanitizer_reports() {  # sanitizer_reports DIR: prints "test: line" for every report
  local log="$1/Testing/Temporary/LastTest.log"
  [[ -r "$log" ]] || return 0
  awk '/^[0-9]+\/[0-9]+ Test: / { test = $3 }
       /ERROR: (AddressSanitizer|LeakSanitizer):|WARNING: ThreadSanitizer:|: runtime error: / &&
       !/Sanitizer: [A-Z]+ on unknown address/ { print test ": " $0 }' "$log"
}
# sanitizer_tests DIR: runs ctest (the extra arguments after DIR) and the report search.
sanitizer_tests() {
  local dir="$1" rc=0 reports
  shift
  "$@" --test-dir "$dir" --output-on-failure -j2 -LE 'compile_fail|install' \
    "${ctest_output_args[@]}" || rc=$?
  reports="$(sanitizer_reports "$dir")"
  if [[ -n "$reports" ]]; then
    echo "sanitizers.sh: sanitizer reports in the output of these tests (full text in" \
      "$dir/Testing/Temporary/LastTest.log):"
    printf '%s\n' "$reports" | head -n 60
    if ((rc == 0)); then rc=1; fi
  fi
  return "$rc"
}

# ASan + UBSan. handle_segv stays on (a wild access gets ASan's report), except for
# test_errors, whose errors.exited.segfault needs a worker to die of SIGSEGV itself: its
# ctest entry appends handle_segv=0 (tests/CMakeLists.txt).
begin_phase "ASan+UBSan build (build-asan/)"
asan_status=0
sanitizer_build build-asan address || asan_status=$?
end_phase "$asan_status"
begin_phase "ASan+UBSan tests (ctest in build-asan/)"
if ((asan_status == 0)); then
  sanitizer_tests build-asan env \
    ASAN_OPTIONS=detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:strict_string_checks=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest || asan_status=$?
  end_phase "$asan_status"
else
  echo "sanitizers.sh: not run, the build failed"
  end_phase "$asan_status"
fi
if ((asan_status != 0 && status == 0)); then status=$asan_status; fi

# TSan, on a subset: every test except those that run TBB algorithms on several threads of
# one process (-t T > 1, or an arena made for the call): TSan only sees synchronisation in
# instrumented code, and Debian's libtbb is not instrumented, so every task handed from one
# TBB thread to another (parallel_for, parallel_reduce, task_arena::enqueue, the join at the
# end) shows as a race in our code and in TBB's headers alike; a suppression broad enough
# to hide them would hide real races in the same calls. What remains covers the runtime's
# own threads (poller, executor, progress and launcher threads, output forwarding, futures
# and channels used from several threads), which synchronise with std::mutex and atomics.
# Each process runs under its own TSan and sees nothing of the others, so shared memory
# written by another process shows no race at all: the rings are checked within a process.
# The order the rings give across processes (a reply sent, the next call received) is
# handed to TSan as a per-process clock that every send releases and every receive acquires
# (lib/runtime.cpp), or two calls run one after the other on different executors would show
# as racing.
tsan_exclude='^(test_threads|example_threads|test_heat)$'
begin_phase "TSan build (build-tsan/)"
tsan_status=0
sanitizer_build build-tsan thread || tsan_status=$?
end_phase "$tsan_status"
begin_phase "TSan tests (ctest in build-tsan/, subset)"
if ((tsan_status == 0)); then
  echo "sanitizers.sh: TSan runs every test but these (TBB threads; see the comment above): $tsan_exclude"
  # GCC 12's TSan needs the classic address-space layout; kernels with more mmap
  # randomisation (vm.mmap_rnd_bits > 28) make it stop at start with "unexpected memory
  # mapping". Address randomisation is turned off for the TSan tests where allowed.
  no_aslr=()
  if setarch "$(uname -m)" -R true >/dev/null 2>&1; then
    no_aslr=(setarch "$(uname -m)" -R)
  else
    echo "sanitizers.sh: setarch -R is not permitted here; TSan runs with address randomisation"
  fi
  sanitizer_tests build-tsan "${no_aslr[@]}" env \
    TSAN_OPTIONS=second_deadlock_stack=1:history_size=4:halt_on_error=0 \
    ctest -E "$tsan_exclude" || tsan_status=$?
  end_phase "$tsan_status"
else
  echo "sanitizers.sh: not run, the build failed"
  end_phase "$tsan_status"
fi
if ((tsan_status != 0 && status == 0)); then status=$tsan_status; fi

echo
echo "======== sanitizers.sh: summary ========"
printf '  %s\n' "${summary[@]}"
exit "$status"
