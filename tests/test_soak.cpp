// Soak (ctest label `soak`): 8 threads on the master and on every worker make remote calls
// and channel operations in a random mix for a bounded time (VSCALE_SOAK_SECONDS, default 20,
// at most 60). Nothing may deadlock (the run ends within a deadline), every answer is right,
// and neither memory (RSS) nor open fds grow in any process between the first third of the
// run and its end. Run with -p 2.
#include <doctest/doctest.h>

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <vscale/vscale.hpp>

using namespace std::chrono_literals;

namespace {

constexpr int kThreads = 8;

long open_fds() {
  long n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (auto* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
  }
  return n;
}

long rss_kib() {
  std::ifstream st("/proc/self/status");
  for (std::string line; std::getline(st, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  return -1;
}

int soak_seconds() {
  const char* e = std::getenv("VSCALE_SOAK_SECONDS");
  const int s = e ? std::atoi(e) : 20;
  return std::clamp(s, 2, 60);
}

// What one process reports: operations done, wrong answers, and fds / RSS at a third of the
// run and at its end.
struct Report {
  long ops = 0, wrong = 0;
  long fds_early = 0, fds_late = 0, rss_early = 0, rss_late = 0;
};

// 8 threads, each a random mix of: remotecall_fetch to a random process, remotecall + fetch,
// remote_do, and a put followed by a take on the shared channel (capacity large enough that
// a put never waits forever: every thread puts at most one value before taking one).
Report soak_here(vscale::RemoteChannel<long> ch, int seconds, unsigned seed) {
  std::atomic<long> ops{0}, wrong{0};
  const auto t0 = std::chrono::steady_clock::now();
  const auto until = t0 + std::chrono::seconds(seconds);
  Report rep;
  std::atomic<bool> early_taken{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      std::mt19937 rng(seed * 131u + static_cast<unsigned>(t));
      const auto ps = vscale::procs();
      while (std::chrono::steady_clock::now() < until) {
        const int p = ps[std::uniform_int_distribution<std::size_t>(0, ps.size() - 1)(rng)];
        const long x = std::uniform_int_distribution<long>(0, 1'000'000)(rng);
        switch (std::uniform_int_distribution<int>(0, 3)(rng)) {
          case 0:
            if (vscale::remotecall_fetch(p, [](long v) { return v + vscale::myid(); }, x) != x + p) wrong.fetch_add(1);
            break;
          case 1: {
            auto f = vscale::remotecall(p, [](long v) { return std::vector<long>(static_cast<std::size_t>(v % 64), v); }, x);
            auto v = f.fetch();
            if (v.size() != static_cast<std::size_t>(x % 64) || (!v.empty() && v[0] != x)) wrong.fetch_add(1);
            break;
          }
          case 2:
            vscale::remote_do(p, [](long) {}, x);
            break;
          default:
            ch.put(x);
            (void)ch.take();
        }
        ops.fetch_add(1);
        if (t == 0 && !early_taken.load() && std::chrono::steady_clock::now() - t0 > std::chrono::seconds(seconds) / 3) {
          rep.fds_early = open_fds();
          rep.rss_early = rss_kib();
          early_taken = true;
        }
      }
    });
  for (auto& t : ts) t.join();
  std::this_thread::sleep_for(300ms);  // let the last releases of values and handles settle
  rep.fds_late = open_fds();
  rep.rss_late = rss_kib();
  rep.ops = ops.load();
  rep.wrong = wrong.load();
  return rep;
}

}  // namespace

TEST_CASE("soak.calls_and_channels_from_8_threads_everywhere") {
  REQUIRE(vscale::nworkers() >= 2);
  const int seconds = soak_seconds();
  vscale::RemoteChannel<long> ch(static_cast<std::size_t>(kThreads * vscale::nprocs() + 1));
  std::vector<vscale::Future<Report>> remote;
  for (int w : vscale::workers())
    remote.push_back(vscale::remotecall(w, [](vscale::RemoteChannel<long> c, int s, unsigned seed) { return soak_here(c, s, seed); },
                                        ch, seconds, static_cast<unsigned>(w)));
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::pair<int, Report>> reports;
  reports.emplace_back(1, soak_here(ch, seconds, 1u));
  for (std::size_t k = 0; k < remote.size(); ++k) reports.emplace_back(vscale::workers()[k], remote[k].fetch());
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took < std::chrono::seconds(seconds) + 60s);  // no deadlock: everyone came back
  long total = 0;
  for (const auto& [id, r] : reports) {
    INFO("process " << id << ": " << r.ops << " ops, fds " << r.fds_early << " -> " << r.fds_late << ", RSS "
                    << r.rss_early << " -> " << r.rss_late << " KiB");
    CHECK(r.wrong == 0);
    CHECK(r.ops > 100);
    CHECK(r.fds_early > 0);
    CHECK(r.fds_late <= r.fds_early);
    // Allocator noise and lazily grown pools are fine; a leak per operation is not (tens of
    // thousands of operations happen after the early sample). Under a sanitizer, freed memory
    // sits in a quarantine for a while, so RSS says nothing there (LeakSanitizer checks leaks).
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    CHECK(r.rss_late - r.rss_early < 16 * 1024);
#endif
    total += r.ops;
  }
  MESSAGE(total << " operations in " << seconds << " s over " << reports.size() << " processes x " << kThreads
                << " threads");
  CHECK(!ch.isready());
}
