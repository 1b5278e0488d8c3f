// Fault injection (ctest label `fault`): 10,000 pmap elements over 4 workers while a helper
// thread kills a random worker with SIGKILL every 200 ms and addprocs replaces it. pmap's
// retries re-run the lost elements on the survivors: every result arrives, is right, and the
// whole run is bounded in time. Run with -p 4.
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include <vscale/vscale.hpp>

#include "test_util.hpp"

using namespace std::chrono_literals;

TEST_CASE("fault.pmap_survives_a_worker_killed_every_200ms") {
  REQUIRE(vscale::nworkers() == 4);
  const long n = 10'000;
  std::vector<long> xs(static_cast<std::size_t>(n));
  for (long i = 0; i < n; ++i) xs[static_cast<std::size_t>(i)] = i;

  std::atomic<bool> done{false};
  std::atomic<int> kills{0};
  std::thread killer([&] {
    std::mt19937 rng(12345);
    while (!done.load()) {
      std::this_thread::sleep_for(200ms);
      if (done.load()) break;
      const auto ws = vscale::workers();
      if (ws.empty() || ws[0] == 1) continue;
      const int victim = ws[std::uniform_int_distribution<std::size_t>(0, ws.size() - 1)(rng)];
      int pid = 0;
      try {
        pid = vscale::remotecall_fetch(victim, [] { return static_cast<int>(::getpid()); });
      } catch (const vscale::ProcessExitedException&) {
        continue;
      }
      ::kill(pid, SIGKILL);
      kills.fetch_add(1);
      // Replace it (the pool picks new workers up while pmap runs).
      try {
        vscale::addprocs(1);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "fault test: addprocs failed: %s\n", e.what());
      }
    }
  });

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<long> r;
  try {
    r = vscale::pmap(
        [](long x) {
          std::this_thread::sleep_for(1ms);  // the run lasts a few seconds
          return 3 * x + 1;
        },
        xs, {.batch_size = 5, .retry_delays = std::vector<std::chrono::duration<double>>(50, 5ms)});
  } catch (...) {
    done = true;
    killer.join();
    throw;
  }
  done = true;
  killer.join();
  const auto took = std::chrono::steady_clock::now() - t0;

  REQUIRE(r.size() == xs.size());
  long wrong = 0;
  for (long i = 0; i < n; ++i) wrong += r[static_cast<std::size_t>(i)] != 3 * i + 1;
  CHECK(wrong == 0);
  CHECK(kills.load() >= 3);  // the faults really happened during the run
  CHECK(took < 300s);
  MESSAGE(kills.load() << " workers killed and replaced during a pmap of " << n << " elements that took "
                       << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  // The cluster is whole afterwards.
  for (int w : vscale::workers()) CHECK(vscale::remotecall_fetch(w, [] { return vscale::myid(); }) == w);
}
